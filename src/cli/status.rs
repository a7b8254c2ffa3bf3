//! `dagfs status`: what sync, mount and failover are doing on this host, read from their
//! state files in the runtime directory (`DAGFS_RUNTIME_DIR`, `/run/dagfs` for root...).
//!
//! Each component owns its file through [`crate::runtime::StateFile`]: `sync-*.json`
//! ([`crate::sync::state`]), `mount-*.json` ([`crate::mount::state`]) and `failover-*.json`
//! (the controller's [`crate::failover::ControllerState`], read here as plain JSON so a
//! field added there is shown without a change here). A component runs while it holds its
//! file's lock ([`alive`]); the pid in a file is only shown.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::mount::state::MountState;
use crate::runtime::runtime_dir;
use crate::sync::state::{SyncState, STATE_PREFIX};

/// Arguments of `dagfs status`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 = every component found is running without errors, \
1 = one has exited without cleaning up or reports an error."
)]
pub struct StatusArgs {
    /// Print JSON: every state file's content, with `running` added.
    #[arg(long)]
    json: bool,
}

/// One component's state, as `--json` prints it.
#[derive(Serialize)]
struct Component<T: Serialize> {
    /// The state file.
    file: PathBuf,
    /// Whether the process the file names still runs.
    running: bool,
    /// The file's content, or why it cannot be read.
    #[serde(flatten)]
    state: Readable<T>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Readable<T> {
    State(T),
    Unreadable { error: String },
}

#[derive(Serialize)]
struct HostStatus {
    runtime_dir: PathBuf,
    sync: Vec<Component<SyncState>>,
    mount: Vec<Component<MountState>>,
    failover: Vec<Component<serde_json::Value>>,
}

/// One line of the table.
struct Row {
    kind: &'static str,
    subject: String,
    pid: String,
    state: String,
    generation: String,
    detail: String,
    /// Whether this row makes the exit code 1.
    failing: bool,
}

/// Whether the owner of state file `file` runs: it holds the file's lock
/// ([`crate::runtime::StateFile`]); a pid proves nothing after a crash.
fn alive(file: &Path) -> bool {
    crate::runtime::owner_alive(file).unwrap_or(false)
}

fn generation(g: Option<u64>) -> String {
    g.map_or_else(|| "-".to_string(), |g| g.to_string())
}

impl Row {
    fn unreadable(kind: &'static str, file: &Path, error: &str) -> Row {
        Row {
            kind,
            subject: file.display().to_string(),
            pid: "-".into(),
            state: "unreadable".into(),
            generation: "-".into(),
            detail: error.to_string(),
            failing: true,
        }
    }

    fn sync(state: &SyncState, running: bool) -> Row {
        let phase = serde_json::to_value(state.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut detail = format!("{} pending", state.pending_changes);
        if state.held_back > 0 {
            detail.push_str(&format!(" ({} still being written)", state.held_back));
        }
        if let Some(error) = &state.last_error {
            detail.push_str(&format!("; last error: {error}"));
        }
        Row {
            kind: "sync",
            subject: format!("{} -> {}", state.dir.display(), state.store),
            pid: state.pid.to_string(),
            state: if running { phase } else { "exited".into() },
            generation: generation(state.generation),
            detail,
            failing: !running || state.last_error.is_some(),
        }
    }

    fn mount(state: &MountState, running: bool) -> Row {
        let status = match (running, state.online, state.is_current()) {
            (false, _, _) => "exited",
            (true, false, _) => "offline",
            (true, true, true) => "current",
            (true, true, false) => "behind",
        };
        let mut detail = format!("head {}", generation(state.head));
        if let Some(pinned) = state.pinned {
            detail.push_str(&format!(", pinned to {pinned}"));
        }
        if let Some(error) = &state.last_error {
            detail.push_str(&format!("; last error: {error}"));
        }
        Row {
            kind: "mount",
            subject: format!("{} <- {}", state.mountpoint.display(), state.store),
            pid: state.pid.to_string(),
            state: status.into(),
            generation: generation(state.generation),
            detail,
            failing: !running || state.last_error.is_some(),
        }
    }

    fn failover(state: &serde_json::Value, file: &Path, running: bool) -> Row {
        let field = |name: &str| {
            state
                .get(name)
                .map(|v| v.to_string().trim_matches('"').to_string())
        };
        // Leading: its epoch; following: whom, and how long the heartbeat has been quiet.
        let leader = state.get("leader").filter(|l| !l.is_null());
        let role = match (field("epoch").filter(|e| e != "null"), leader) {
            (Some(epoch), _) => format!("leading, epoch {epoch}"),
            (None, Some(leader)) => format!(
                "leader {} (epoch {}), heartbeat unchanged for {} ms",
                leader["id"].as_str().unwrap_or("?"),
                leader["epoch"],
                leader["heartbeat_age_ms"]
            ),
            (None, None) => String::new(),
        };
        let error = field("last_error")
            .filter(|e| e != "null")
            .map(|e| format!("last error: {e}"));
        Row {
            kind: "failover",
            subject: field("id").unwrap_or_else(|| file.display().to_string()),
            pid: field("pid").unwrap_or_else(|| "-".into()),
            state: if running {
                field("role").unwrap_or_else(|| "running".into())
            } else {
                "exited".into()
            },
            generation: field("generation").unwrap_or_else(|| "-".into()),
            detail: [Some(role).filter(|r| !r.is_empty()), error]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; "),
            failing: !running,
        }
    }
}

/// State files of one kind (`mount-*.json`...) in `dir`, parsed.
fn read_states<T: serde::de::DeserializeOwned>(
    dir: &Path,
    prefix: &str,
) -> Vec<(PathBuf, Result<T, String>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, Result<T, String>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
        })
        .map(|path| {
            let state = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
            (path, state)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn component<T: Serialize>(file: PathBuf, state: Result<T, String>) -> Component<T> {
    match state {
        Ok(state) => Component {
            running: alive(&file),
            file,
            state: Readable::State(state),
        },
        Err(error) => Component {
            file,
            running: false,
            state: Readable::Unreadable { error },
        },
    }
}

/// `dagfs status`: returns the exit code.
pub fn status(args: StatusArgs) -> Result<u8> {
    let dir = runtime_dir();
    if dir.exists() {
        crate::runtime::check_dir(&dir)?;
    }
    let host = HostStatus {
        sync: read_states(&dir, STATE_PREFIX)
            .into_iter()
            .map(|(file, state)| component::<SyncState>(file, state))
            .collect(),
        mount: read_states(&dir, "mount-")
            .into_iter()
            .map(|(file, state)| component::<MountState>(file, state))
            .collect(),
        failover: read_states(&dir, "failover-")
            .into_iter()
            .map(|(file, state)| component::<serde_json::Value>(file, state))
            .collect(),
        runtime_dir: dir,
    };
    let mut rows = Vec::new();
    for c in &host.sync {
        rows.push(match &c.state {
            Readable::State(s) => Row::sync(s, c.running),
            Readable::Unreadable { error } => Row::unreadable("sync", &c.file, error),
        });
    }
    for c in &host.mount {
        rows.push(match &c.state {
            Readable::State(s) => Row::mount(s, c.running),
            Readable::Unreadable { error } => Row::unreadable("mount", &c.file, error),
        });
    }
    for c in &host.failover {
        rows.push(match &c.state {
            Readable::State(s) => Row::failover(s, &c.file, c.running),
            Readable::Unreadable { error } => Row::unreadable("failover", &c.file, error),
        });
    }
    let code = u8::from(rows.iter().any(|r| r.failing));
    if args.json {
        println!("{}", serde_json::to_string(&host)?);
        return Ok(code);
    }
    if rows.is_empty() {
        println!(
            "no dagfs sync, mount or failover is running on this host (no state files in {})",
            host.runtime_dir.display()
        );
        return Ok(0);
    }
    println!(
        "{:<9} {:<8} {:<11} {:>10}  {:<40} DETAIL",
        "KIND", "PID", "STATE", "GENERATION", "WHAT"
    );
    for r in &rows {
        println!(
            "{:<9} {:<8} {:<11} {:>10}  {:<40} {}",
            r.kind, r.pid, r.state, r.generation, r.subject, r.detail
        );
    }
    Ok(code)
}
