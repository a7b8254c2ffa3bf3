//! dagfs against a secured HDFS: a MiniDFS with an in-process KDC, Kerberos RPC and SASL
//! `privacy` on every block transfer (`tests/minidfs`, `--secure`).
//!
//! - Every command logs in with a keytab and with a ticket cache (`kinit`, `KRB5CCNAME`).
//! - Push and checkout also work with the two weaker data-transfer protections,
//!   `integrity` and `authentication` (a cluster each).
//! - A wrong principal, a missing keytab, a missing and an expired ticket are each one line
//!   naming the principal and the fix, with a non-zero exit; daemons report it as degraded
//!   (`dagfs status`, metrics, `/healthz`) and the mount keeps serving its cache, also when
//!   it starts while logged out.
//! - Daemons logged in with a keytab stay logged in across ticket expiry (a KDC issuing
//!   short tickets, NameNode failovers forcing new connections after each expiry); with a
//!   ticket cache they warn ahead of expiry.
//!
//! Waits poll what they assert with a deadline; waiting for a ticket to expire polls
//! `klist -s` on a ticket issued at the same time.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use support::host::{until, write, Host};
use support::http_get;
use support::minidfs::{Kerberos, MiniDfs, MiniDfsOptions};
use support::mount::{dagfs, Folders};
/// The ticket lifetime of the short-ticket cluster, in seconds.
const SHORT_LIFETIME: u32 = 12;

/// The secure cluster shared by the tests that need no faults and no short tickets.
fn secure() -> &'static MiniDfs {
    static CLUSTER: OnceLock<MiniDfs> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        MiniDfs::start(MiniDfsOptions {
            secure: true,
            ..MiniDfsOptions::default()
        })
    })
}

/// A secure HA cluster whose KDC issues [`SHORT_LIFETIME`] tickets; one test at a time
/// (they fail its NameNodes over).
fn short_tickets() -> (std::sync::MutexGuard<'static, ()>, &'static MiniDfs) {
    static SERIAL: Mutex<()> = Mutex::new(());
    static CLUSTER: OnceLock<MiniDfs> = OnceLock::new();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = CLUSTER.get_or_init(|| {
        MiniDfs::start(MiniDfsOptions {
            secure: true,
            ha: true,
            ticket_lifetime: Some(SHORT_LIFETIME),
            ..MiniDfsOptions::default()
        })
    });
    (guard, cluster)
}

fn kerberos(cluster: &MiniDfs) -> &Kerberos {
    cluster.kerberos().expect("a secure cluster")
}

/// How a `dagfs` process logs in.
#[derive(Clone, Copy, Debug)]
enum Login<'a> {
    /// `store.kerberos_principal` + `store.kerberos_keytab`.
    Keytab,
    /// The ticket cache at this path (`KRB5CCNAME`), no principal configured.
    Cache(&'a Path),
}

fn command(cluster: &MiniDfs, runtime: &Path, login: Login, args: &[&str]) -> Command {
    let mut command = dagfs(cluster, runtime, args);
    if let Login::Cache(ccache) = login {
        kerberos(cluster).login_with_cache(&mut command, ccache);
    }
    command
}

fn run(cluster: &MiniDfs, runtime: &Path, login: Login, args: &[&str]) -> Output {
    command(cluster, runtime, login, args).output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `out` failed with exactly one line on stderr containing every one of
/// `needles`, and returns that line.
fn one_line_failure(out: Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
    assert!(
        !lines[0].contains("GssMajorCodes"),
        "a debug dump is no clear line:\n{stderr}"
    );
    lines[0].to_string()
}

/// Waits until a ticket issued now by `cluster`'s KDC has expired: a probe ticket is
/// issued at once and `klist -s` polled until it is no longer valid.
fn wait_for_ticket_expiry(cluster: &MiniDfs, scratch: &Path) {
    let probe = scratch.join("probe-ccache");
    kerberos(cluster).kinit(&probe, None);
    until("the probe ticket to expire", || {
        (!kerberos(cluster).ticket_valid(&probe)).then_some(())
    });
}

#[test]
fn one_shot_commands_log_in_with_a_keytab_and_with_a_ticket_cache() {
    let cluster = secure();
    let folders = Folders::new();
    let (dags, _, run_dir, _) = folders.paths();
    let ccache = folders.root.join("ccache");
    kerberos(cluster).kinit(&ccache, None);
    for (name, login) in [("keytab", Login::Keytab), ("cache", Login::Cache(&ccache))] {
        write(&dags, "a.py", &format!("print('{name}')\n"));
        write(&dags, "sub/b.py", "print('b')\n");
        let url = cluster.unique_root(name);
        let dags_arg = dags.to_str().unwrap();
        ok(
            run(
                cluster,
                &run_dir,
                login,
                &["push", dags_arg, "--to", &url, "--mirror"],
            ),
            "push",
        );
        let log = ok(
            run(cluster, &run_dir, login, &["log", "--store", &url]),
            "log",
        );
        assert!(log.contains('1'), "{log}");
        ok(
            run(
                cluster,
                &run_dir,
                login,
                &["verify", "--local", dags_arg, "--store", &url, "--deep"],
            ),
            "verify",
        );
        let out = folders.root.join(format!("checkout-{name}"));
        ok(
            run(
                cluster,
                &run_dir,
                login,
                &["checkout", out.to_str().unwrap(), "--store", &url],
            ),
            "checkout",
        );
        assert_eq!(
            std::fs::read_to_string(out.join("a.py")).unwrap(),
            format!("print('{name}')\n")
        );
        // The mirror push --mirror wrote is a plain folder: import it into a second store.
        let imported = format!("{url}-imported");
        ok(
            run(
                cluster,
                &run_dir,
                login,
                &["import", &format!("{url}/mirror"), "--to", &imported],
            ),
            "import",
        );
        // An import keeps no modification times: check the store itself, deeply.
        ok(
            run(
                cluster,
                &run_dir,
                login,
                &["verify", "--store", &imported, "--deep"],
            ),
            "verify of the import",
        );
    }
}

#[test]
fn push_and_checkout_work_with_integrity_and_authentication_protection() {
    for protection in ["integrity", "authentication"] {
        let cluster = MiniDfs::start(MiniDfsOptions {
            secure: true,
            protection: Some(protection),
            ..MiniDfsOptions::default()
        });
        let conf = std::fs::read_to_string(cluster.conf_dir().join("hdfs-site.xml")).unwrap();
        assert!(
            conf.contains(&format!(
                "<name>dfs.data.transfer.protection</name><value>{protection}</value>"
            )),
            "the client configuration does not carry {protection}:\n{conf}"
        );
        let folders = Folders::new();
        let (dags, _, run_dir, _) = folders.paths();
        write(&dags, "a.py", &format!("print('{protection}')\n"));
        let url = cluster.unique_root(protection);
        let dags_arg = dags.to_str().unwrap();
        ok(
            run(
                &cluster,
                &run_dir,
                Login::Keytab,
                &["push", dags_arg, "--to", &url],
            ),
            &format!("push with {protection}"),
        );
        let out = folders.root.join("checkout");
        ok(
            run(
                &cluster,
                &run_dir,
                Login::Keytab,
                &["checkout", out.to_str().unwrap(), "--store", &url],
            ),
            &format!("checkout with {protection}"),
        );
        assert_eq!(
            std::fs::read_to_string(out.join("a.py")).unwrap(),
            format!("print('{protection}')\n")
        );
    }
}

/// `dagfs status` of `runtime`, as text.
fn status(cluster: &MiniDfs, runtime: &Path) -> String {
    let out = dagfs(cluster, runtime, &["status"]).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sets `command` up for `login` (the support code's default is the keytab).
fn logged_in<'a>(cluster: &'a MiniDfs, login: Login<'a>) -> impl Fn(&mut Command) + 'a {
    move |command: &mut Command| {
        if let Login::Cache(ccache) = login {
            kerberos(cluster).login_with_cache(command, ccache);
        }
    }
}

#[test]
fn daemons_log_in_with_a_keytab_and_with_a_ticket_cache() {
    let cluster = secure();
    for name in ["keytab", "cache"] {
        let folders = Folders::new();
        let ccache = folders.root.join("ccache");
        kerberos(cluster).kinit(&ccache, None);
        let login = if name == "keytab" {
            Login::Keytab
        } else {
            Login::Cache(&ccache)
        };
        let (dags, ..) = folders.paths();
        write(&dags, "a.py", "print(0)\n");
        let url = cluster.unique_root(&format!("daemons-{name}"));
        let mut host = Host::start(cluster, &folders, &url, &logged_in(cluster, login));
        host.edit_and_see("a.py", "print(1)\n");
        host.wait_unit_started();
        host.edit_and_see("a.py", "print(2)\n");
        host.failover.assert_running();
        assert_eq!(host.unit_starts(), 1, "{}", host.failover.log());
    }
}

#[test]
fn a_wrong_principal_a_missing_keytab_and_a_missing_or_expired_ticket_are_one_line_each() {
    let cluster = secure();
    let k = kerberos(cluster);
    let folders = Folders::new();
    let (dags, _, run_dir, _) = folders.paths();
    write(&dags, "a.py", "print(1)\n");
    let url = cluster.unique_root("errors");
    let dags_arg = dags.to_str().unwrap();
    let push = |configure: &dyn Fn(&mut Command)| {
        let mut command = dagfs(cluster, &run_dir, &["push", dags_arg, "--to", &url]);
        configure(&mut command);
        command.output().unwrap()
    };

    // A principal the keytab does not hold.
    let keytab = k.keytab.to_str().unwrap();
    one_line_failure(
        push(&|c| {
            c.env("DAGFS_STORE_KERBEROS_PRINCIPAL", "nobody@EXAMPLE.COM");
        }),
        &["nobody@EXAMPLE.COM", &format!("klist -kt {keytab}")],
    );
    // A keytab that is not there.
    let missing = folders.root.join("gone.keytab");
    one_line_failure(
        push(&|c| {
            c.env("DAGFS_STORE_KERBEROS_KEYTAB", &missing);
        }),
        &[
            &k.principal,
            missing.to_str().unwrap(),
            "store.kerberos_keytab",
        ],
    );
    // No ticket at all in the cache.
    let ccache = folders.root.join("ccache");
    let kinit = format!("kinit {}", k.principal);
    one_line_failure(
        push(&|c| {
            k.login_with_cache(c, &ccache);
            c.env("DAGFS_STORE_KERBEROS_PRINCIPAL", &k.principal);
        }),
        &[&kinit, ccache.to_str().unwrap()],
    );
    // An expired ticket: the principal comes from the cache itself.
    k.kinit(&ccache, Some("20s"));
    until("the 20 s ticket to expire", || {
        (!k.ticket_valid(&ccache)).then_some(())
    });
    one_line_failure(
        push(&|c| k.login_with_cache(c, &ccache)),
        &["expired", &kinit],
    );
}

#[test]
fn a_lost_login_degrades_the_daemons_and_the_mount_keeps_serving() {
    let (_serial, cluster) = short_tickets();
    let k = kerberos(cluster);
    let folders = Folders::new();
    let (dags, _, run_dir, _) = folders.paths();
    write(&dags, "a.py", "print(0)\n");
    let ccache = folders.root.join("ccache");
    k.kinit(&ccache, None);
    let url = cluster.unique_root("lost-login");
    let mut host = Host::start(
        cluster,
        &folders,
        &url,
        &logged_in(cluster, Login::Cache(&ccache)),
    );
    host.edit_and_see("a.py", "print(1)\n");
    // The ticket-cache daemons warn ahead of expiry, naming the principal and the fix.
    let warning = format!("run `kinit {}`", k.principal);
    until("the sync daemon to warn ahead of expiry", || {
        host.sync.log().contains(&warning).then_some(())
    });
    wait_for_ticket_expiry(cluster, &folders.root);
    // A NameNode failover forces new connections, which need a valid ticket.
    cluster.transition_to_standby(0);
    cluster.transition_to_active(1);
    write(&dags, "a.py", "print(2)\n");
    let healthz = until("the sync daemon's /healthz to say 503", || {
        let (code, body) = http_get(&host.sync_metrics, "/healthz")?;
        (code == 503 && body.contains("expired")).then_some(body)
    });
    assert!(healthz.contains(&kinit_of(k)), "{healthz}");
    until("dagfs status to show the expired login", || {
        let shown = status(cluster, &run_dir);
        (shown.contains("expired") && shown.contains(&k.principal)).then_some(())
    });
    let (_, metrics) = http_get(&host.sync_metrics, "/metrics").unwrap();
    assert!(
        metrics.contains("permission"),
        "no error counted:\n{metrics}"
    );
    // The mount keeps serving what it has.
    assert_eq!(
        std::fs::read_to_string(host.mnt.join("a.py")).unwrap(),
        "print(1)\n"
    );
    // A new ticket: the three daemons, none restarted, recover.
    k.kinit(&ccache, None);
    until("the mount to serve the edit made while logged out", || {
        (std::fs::read_to_string(host.mnt.join("a.py")).ok()? == "print(2)\n").then_some(())
    });
    until("the sync daemon's /healthz to say 200", || {
        let (code, _) = http_get(&host.sync_metrics, "/healthz")?;
        (code == 200).then_some(())
    });
    host.mount()
        .wait_for("the mount to be online", |s| s.online);
    host.failover.assert_running();
    // A mount that starts while logged out (a reboot) starts from its cache, and follows the
    // store once a ticket is back.
    wait_for_ticket_expiry(cluster, &folders.root);
    host.restart_mount();
    let state = host
        .mount()
        .wait_for("the mount to start from its cache", |s| {
            s.generation.is_some()
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("expired"))
        });
    assert!(!state.online, "{state:?}");
    assert_eq!(
        std::fs::read_to_string(host.mnt.join("a.py")).unwrap(),
        "print(2)\n"
    );
    k.kinit(&ccache, None);
    host.edit_and_see("a.py", "print(3)\n");
    host.failover.assert_running();
    cluster.transition_to_standby(1);
    cluster.transition_to_active(0);
}

fn kinit_of(k: &Kerberos) -> String {
    format!("kinit {}", k.principal)
}

#[test]
fn keytab_daemons_stay_logged_in_across_ticket_expiry() {
    let (_serial, cluster) = short_tickets();
    let folders = Folders::new();
    let (dags, ..) = folders.paths();
    write(&dags, "a.py", "print(0)\n");
    let url = cluster.unique_root("expiry");
    let mut host = Host::start(cluster, &folders, &url, &|_: &mut Command| {});
    host.edit_and_see("a.py", "print(1)\n");
    host.wait_unit_started();
    // Two expiries, each followed by a failover that forces new NameNode connections.
    for (round, (from, to)) in [(0, 1), (1, 0)].into_iter().enumerate() {
        wait_for_ticket_expiry(cluster, &folders.root);
        cluster.transition_to_standby(from);
        cluster.transition_to_active(to);
        host.edit_and_see("a.py", &format!("print('round {round}')\n"));
    }
    host.failover.assert_running();
    assert_eq!(host.unit_starts(), 1, "{}", host.failover.log());
    assert!(!host.sync.log().contains("expired"), "{}", host.sync.log());
}
