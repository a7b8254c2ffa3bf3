//! Test support shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod airflow;
pub mod database;
pub mod generations;
pub mod host;
pub mod minidfs;
pub mod mount;
pub mod postgres;
pub mod served;

use dagfs::store::Store;

/// The keys `store.list(dir)` returns, in order; panics on error.
pub async fn list_keys(store: &dyn Store, dir: &str) -> Vec<String> {
    let entries = store.list(dir).await.expect("list");
    entries.into_iter().map(|e| e.key).collect()
}

/// `GET path` from `addr` (`host:port`) within 5 s: (status code, body), `None` if it cannot
/// be asked.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(format!("http://{addr}{path}")).call().ok()?;
    let body = response.body_mut().read_to_string().ok()?;
    Some((response.status().as_u16(), body))
}

/// Writes a new object `key` holding `bytes` into `store`; fails the test on any error.
pub async fn put_new(store: &dyn Store, key: &str, bytes: &'static [u8]) {
    let data = bytes::Bytes::from_static(bytes);
    let written = store.put(key, data, dagfs::store::Overwrite::Deny).await;
    written.unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// `GET /metrics` from `addr`, parsed with a Prometheus text parser: samples by metric name.
pub fn scrape_metrics(addr: &str) -> std::collections::BTreeMap<String, f64> {
    let (code, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    scrape
        .samples
        .into_iter()
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some((s.metric, v)),
            _ => None,
        })
        .collect()
}

/// [`damage_object`] in the store at `url` of `cluster`. Blocking.
pub fn corrupt_object(cluster: &minidfs::MiniDfs, url: &str, content: &[u8], bytes: &'static [u8]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let options = cluster.options(None, std::time::Duration::from_secs(20));
    let store = rt.block_on(dagfs::store::open(url, &options)).unwrap();
    rt.block_on(damage_object(&*store, content, bytes));
}

/// Replaces the bytes of the object holding `content` with `bytes` (of the same length)
/// where readers find it: the pack holding it is rewritten with those bytes at the
/// object's range, under the same name (a loose object is replaced). A corrupt object, as
/// a damaged disk or a hand edit leaves it.
pub async fn damage_object(store: &dyn Store, content: &[u8], bytes: &[u8]) {
    assert_eq!(content.len(), bytes.len(), "same-length damage");
    let digest = dagfs::format::Digest::of(content);
    let objects = dagfs::objects::Objects::new(None);
    objects.refresh(store).await.unwrap();
    let (key, damaged) = match objects.locate(&digest) {
        Some(packed) => {
            let key = dagfs::pack::pack_key(&packed.pack);
            let mut pack = store.read(&key).await.unwrap().to_vec();
            let start = packed.span.offset as usize;
            pack[start..start + bytes.len()].copy_from_slice(bytes);
            (key, pack)
        }
        None => (dagfs::format::object_key(&digest), bytes.to_vec()),
    };
    store
        .put(
            &key,
            bytes::Bytes::from(damaged),
            dagfs::store::Overwrite::Allow,
        )
        .await
        .unwrap();
}

/// The length of object `digest` where readers find it outside the gc trash (in a pack
/// under `packs/` or loose under `objects/`); `None` if it is in neither.
pub async fn stored_len(store: &dyn Store, digest: &dagfs::format::Digest) -> Option<u64> {
    let objects = dagfs::objects::Objects::new(None);
    objects.refresh(store).await.unwrap();
    objects.present_len(store, digest).await.unwrap()
}

/// The bytes of object `digest` (packed or loose; not checked).
pub async fn read_object(store: &dyn Store, digest: &dagfs::format::Digest) -> bytes::Bytes {
    let objects = dagfs::objects::Objects::new(None);
    objects.read(store, digest).await.unwrap()
}

/// This build's `dagfs` with `args`, reading no configuration file (`DAGFS_CONFIG` unset):
/// each test passes its settings in the environment.
pub fn dagfs_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dagfs"));
    command.args(args).env_remove("DAGFS_CONFIG");
    command
}

/// The last `lines` lines of the file at `path` (empty when it cannot be read).
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `signal` to the process `pid`; fails the test if it cannot.
pub fn send(pid: u32, signal: rustix::process::Signal) {
    let process = rustix::process::Pid::from_raw(pid as i32).expect("a process id");
    rustix::process::kill_process(process, signal)
        .unwrap_or_else(|e| panic!("cannot send {signal:?} to {pid}: {e}"));
}

/// Stops `child` as a service manager would: SIGCONT (it may be paused), SIGTERM, and waits.
pub fn terminate(mut child: std::process::Child) {
    use rustix::process::Signal;
    for signal in [Signal::CONT, Signal::TERM] {
        let _ = rustix::process::Pid::from_raw(child.id() as i32)
            .map(|pid| rustix::process::kill_process(pid, signal));
    }
    let _ = child.wait();
}

/// Sets the modification time of the file at `path`.
pub fn set_mtime(path: &std::path::Path, mtime: std::time::SystemTime) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(mtime).unwrap();
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `done` every 500 ms until it holds; after `limit`, fails with `what` and `logs()`.
pub fn wait_for(
    what: &str,
    limit: std::time::Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let until = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < until,
            "timed out after {limit:?} waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// How long a test stops the NameNode: `DAGFS_OUTAGE_SECS`, else `default_secs` (the
/// acceptance figure, 180, is for runs by hand).
pub fn outage(default_secs: u64) -> std::time::Duration {
    let secs = std::env::var("DAGFS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    std::time::Duration::from_secs(secs)
}

/// Runs `command`; fails the test with its output unless it starts and succeeds.
pub fn run(command: &mut std::process::Command) -> std::process::Output {
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot start {command:?}: {e} (scripts/install-deps installs the test tools)")
    });
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `command` as [`run`] does; its standard output as text.
pub fn run_stdout(command: &mut std::process::Command) -> String {
    String::from_utf8_lossy(&run(command).stdout).into_owned()
}
