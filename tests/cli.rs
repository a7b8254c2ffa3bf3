//! The `dagfs` binary as a user meets it: help, and one clear line plus exit 2 for bad config.

use std::io::Write;
use std::process::{Command, Output};

fn dagfs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dagfs"));
    command.args(args).env_remove("DAGFS_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run dagfs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One non-empty line on stderr and exit code 2.
fn assert_one_line_usage_error(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one line expected:\n{text}"
    );
    text
}

#[test]
fn help_lists_every_subcommand() {
    let output = dagfs(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for sub in [
        "sync", "push", "mount", "verify", "failover", "log", "status",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing:\n{help}"
        );
    }
    for flag in ["--config", "--log-format", "--verbose", "--quiet", "--set"] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}

#[test]
fn missing_config_file_is_one_clear_line() {
    let output = dagfs(&["--config", "/nonexistent", "verify"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("/nonexistent") && text.contains("--config"),
        "{text}"
    );
}

#[test]
fn wrong_typed_key_names_key_value_and_expectation() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[store]\ntimeout = 30").unwrap();
    let path = file.path().to_str().unwrap();
    let output = dagfs(&["--config", path, "verify"], &[]);
    let text = assert_one_line_usage_error(&output);
    for part in ["store.timeout", "30", "expected a duration", path] {
        assert!(text.contains(part), "{part:?} missing: {text}");
    }
}

#[test]
fn bad_values_from_env_and_flags_are_attributed() {
    let output = dagfs(&["verify"], &[("DAGFS_LOG_FORMAT", "xml")]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("log.format") && text.contains("xml") && text.contains("environment"),
        "{text}"
    );

    let output = dagfs(&["--set", "store.timeout=soon", "verify"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("store.timeout") && text.contains("soon") && text.contains("flags"),
        "{text}"
    );

    let output = dagfs(&["--set", "nonsense", "verify"], &[]);
    assert_one_line_usage_error(&output);
}

#[test]
fn unknown_key_is_rejected() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[store]\nurll = \"hdfs://x/y\"").unwrap();
    let output = dagfs(&["--config", file.path().to_str().unwrap(), "log"], &[]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("store.urll") && text.contains("url"),
        "{text}"
    );
}

#[test]
fn failover_refuses_unsafe_timing_in_one_line() {
    let args = [
        "failover",
        "--store",
        "/nonexistent",
        "--mount",
        "/mnt",
        "--run",
        "true",
    ];
    let output = dagfs(&args, &[("DAGFS_FAILOVER_TAKEOVER_AFTER", "20s")]);
    let text = assert_one_line_usage_error(&output);
    assert!(
        text.contains("failover.takeover_after") && text.contains("27s"),
        "{text}"
    );
}

#[test]
fn verify_exit_codes_mean_identical_different_could_not_check() {
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir(&dags).unwrap();
    std::fs::write(dags.join("etl.py"), "print('etl')\n").unwrap();
    let (dags, store) = (dags.to_str().unwrap(), dir.path().join("store"));
    let store = store.to_str().unwrap();
    let env = [("XDG_CACHE_HOME", dir.path().to_str().unwrap())];
    assert!(dagfs(&["-q", "push", dags, "--to", store], &env)
        .status
        .success());

    let same = dagfs(
        &["verify", "--local", dags, "--store", store, "--deep"],
        &env,
    );
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));

    std::fs::write(
        std::path::Path::new(dags).join("etl.py"),
        "print('edited')\n",
    )
    .unwrap();
    let differs = dagfs(&["verify", "--local", dags, "--store", store], &env);
    assert_eq!(differs.status.code(), Some(1), "{}", stderr(&differs));
    let out = String::from_utf8_lossy(&differs.stdout);
    assert!(out.contains("changed") && out.contains("etl.py"), "{out}");

    let missing = dir.path().join("no-store");
    let unable = dagfs(&["verify", "--store", missing.to_str().unwrap()], &env);
    let text = assert_one_line_usage_error(&unable);
    assert!(text.contains("no generations"), "{text}");
    assert!(!missing.exists(), "checking a store must not create it");
}

/// The plain mirror is opt-in: a new store gets none, `--mirror` starts one, and from then on
/// every push keeps it up to date without being asked (its NFS / `hadoop fs` readers rely on
/// it); `--no-mirror` skips it once.
#[test]
fn the_mirror_is_opt_in_and_then_kept_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir(&dags).unwrap();
    let (store, env) = (
        dir.path().join("store"),
        [("XDG_CACHE_HOME", dir.path().to_str().unwrap())],
    );
    let push = |version: &str, flags: &[&str]| {
        std::fs::write(dags.join("etl.py"), version).unwrap();
        let mut args = vec!["-q", "push", dags.to_str().unwrap()];
        args.extend(["--to", store.to_str().unwrap()]);
        args.extend(flags);
        let out = dagfs(&args, &env);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let mirrored = || std::fs::read_to_string(store.join("mirror/etl.py")).ok();

    push("v1", &[]);
    assert_eq!(
        mirrored(),
        None,
        "a new store got a mirror nobody asked for"
    );
    push("v2", &["--mirror"]);
    assert_eq!(mirrored().as_deref(), Some("v2"));
    push("v3", &[]);
    assert_eq!(
        mirrored().as_deref(),
        Some("v3"),
        "an existing mirror was left behind"
    );
    push("v4", &["--no-mirror"]);
    assert_eq!(mirrored().as_deref(), Some("v3"));
    push("v5", &[]);
    assert_eq!(mirrored().as_deref(), Some("v5"));
}

/// Every command that takes a store names it `--store URL`; the older spellings (`--to` for
/// push, sync and import, `mount URL MOUNTPOINT`) still work, and both at once are refused.
#[test]
fn every_command_names_its_store_with_store_and_the_old_spellings_still_work() {
    for sub in [
        "push", "sync", "import", "mount", "verify", "log", "diff", "rollback", "gc", "checkout",
        "failover", "run",
    ] {
        let help = dagfs(&[sub, "--help"], &[]);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("--store <URL>"),
            "dagfs {sub} --help:\n{text}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dags = tmp.path().join("dags");
    std::fs::create_dir(&dags).unwrap();
    let store = tmp.path().join("store");
    let (dags, store) = (dags.to_str().unwrap(), store.to_str().unwrap());
    for (i, flag) in ["--store", "--to"].iter().enumerate() {
        std::fs::write(format!("{dags}/dag.py"), format!("# {i}\n")).unwrap();
        let out = dagfs(&["-q", "push", dags, flag, store], &[]);
        assert!(out.status.success(), "push {flag}: {}", stderr(&out));
    }
    let log = dagfs(&["log", "--store", store, "--json"], &[]);
    let generations: serde_json::Value = serde_json::from_slice(&log.stdout).unwrap();
    assert_eq!(
        generations.as_array().map(Vec::len),
        Some(2),
        "{generations}"
    );

    // Both mount spellings open the store and then look at the mountpoint.
    let missing = tmp.path().join("no-such-mountpoint");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["mount", "--store", store, missing],
        vec!["mount", store, missing],
    ] {
        let out = dagfs(&args, &[]);
        let text = stderr(&out);
        assert!(
            !out.status.success() && text.contains(missing) && text.contains("does not exist"),
            "{args:?}: {text}"
        );
    }
    let both = dagfs(&["mount", "--store", store, store, missing], &[]);
    assert!(
        !both.status.success() && stderr(&both).contains("two store URLs"),
        "{}",
        stderr(&both)
    );
}

/// `dagfs diff -p` shows what changed inside files between two generations: a unified diff
/// of text, a mode change, a binary file, an added file.
#[test]
fn diff_p_shows_content_changes_between_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let (dags, store) = (tmp.path().join("dags"), tmp.path().join("store"));
    std::fs::create_dir(&dags).unwrap();
    let (dir, url) = (dags.to_str().unwrap(), store.to_str().unwrap());
    let push = || {
        let out = dagfs(&["-q", "push", dir, "--store", url], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    std::fs::write(dags.join("x.py"), "a = 1\nb = 2\nc = 3\n").unwrap();
    std::fs::write(dags.join("blob.bin"), b"\0\x01old").unwrap();
    push();
    std::fs::write(dags.join("x.py"), "a = 1\nb = 20\nc = 3\n").unwrap();
    std::fs::write(dags.join("blob.bin"), b"\0\x01new").unwrap();
    std::fs::set_permissions(
        dags.join("blob.bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dags.join("new.py"), "x = 1\n").unwrap();
    push();
    let out = dagfs(&["diff", "-p", "--store", url, "1", "2"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let patch = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "diff a/x.py b/x.py (generations 1 and 2)\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n a = 1\n-b = 2\n+b = 20\n c = 3\n",
        "diff a/blob.bin b/blob.bin (generations 1 and 2)\nold mode 644\nnew mode 755\nBinary files a/blob.bin and b/blob.bin differ\n",
        "diff a/new.py b/new.py (generations 1 and 2)\nnew file mode 644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x = 1\n",
    ] {
        assert!(patch.contains(expected), "missing:\n{expected}\nin:\n{patch}");
    }
}

/// A publish records `user@host`; without `USER` and `LOGNAME` the user comes from the
/// system's user database through NSS, the name `id -un` prints.
#[test]
fn the_author_without_user_in_the_environment_comes_from_the_user_database() {
    let tmp = tempfile::tempdir().unwrap();
    let (dags, store) = (tmp.path().join("dags"), tmp.path().join("store"));
    std::fs::create_dir(&dags).unwrap();
    std::fs::write(dags.join("a.py"), "").unwrap();
    let (dir, url) = (dags.to_str().unwrap(), store.to_str().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_dagfs"))
        .args(["-q", "push", dir, "--store", url])
        .env_remove("DAGFS_CONFIG")
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = dagfs(&["log", "--store", url, "--json"], &[]);
    let generations: serde_json::Value = serde_json::from_slice(&log.stdout).unwrap();
    let id = Command::new("id").arg("-un").output().unwrap();
    let user = String::from_utf8(id.stdout).unwrap().trim().to_string();
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        generations[0]["author"],
        format!("{user}@{host}"),
        "{generations}"
    );
}

/// Every command that reads a generation, pointed at a store with none, says so in one line
/// naming the store and how to publish, and exits non-zero: verify, checkout and diff alike.
#[test]
fn an_empty_store_is_named_with_how_to_publish_by_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let (store, target) = (store.to_str().unwrap(), dir.path().join("checkout"));
    let env = [("XDG_CACHE_HOME", dir.path().to_str().unwrap())];
    for args in [
        vec![
            "verify",
            "--local",
            dir.path().to_str().unwrap(),
            "--store",
            store,
        ],
        vec!["checkout", target.to_str().unwrap(), "--store", store],
        vec!["diff", "1", "--store", store],
    ] {
        let output = dagfs(&args, &env);
        let text = stderr(&output);
        assert!(!output.status.success(), "{args:?}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{args:?}: {text}");
        assert!(
            text.contains(store)
                && text.contains("has no generations yet; publish one with `dagfs push`"),
            "{args:?}: {text}"
        );
    }
    assert!(!target.exists(), "a failed checkout leaves nothing behind");
}
