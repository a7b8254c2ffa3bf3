//! The failover controller (`dagfs failover`): one per scheduler host. It takes part in the
//! election ([`crate::election`]), and while it leads it runs the unit of commands
//! ([`crate::supervise`]) once the local mount serves the head generation (the identity
//! gate), restarts them, steps down when they keep failing, and publishes what it is doing
//! in a state file for `dagfs status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::config::FailoverConfig;
use crate::election::{Beat, Candidate, Clock, Identity, Renewal, Standing, Term, Timing};
use crate::generations;
use crate::metrics::Registry;
use crate::mount::state::StateDir;
use crate::runtime::{now_ms, write_json};
use crate::store::Store;
use crate::supervise::{health_check, AfterFailure, MemberInfo, RestartPolicy, Unit, UnitSpec};

/// What a controller is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Following another leader, or waiting to take over.
    Standby,
    /// Leading (or active), waiting for the local mount to serve the head generation.
    WaitingForMount,
    /// Leading (or active), the commands run.
    Running,
    /// Leading (or active), the commands failed and will be restarted after a delay.
    Restarting,
    /// Stepped down after repeated failures; does not lead until the cooldown ends.
    CoolingDown,
    /// Shutting down.
    Stopped,
}

/// The leader as a controller last saw it in the heartbeat chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// Candidate id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Its epoch.
    pub epoch: u64,
    /// The generation its commands run against, once started.
    pub generation: Option<u64>,
    /// Whether it has released leadership.
    pub released: bool,
    /// How long the heartbeat has been unchanged, as this controller measured it.
    pub heartbeat_age_ms: u64,
}

/// A controller's published state: `failover-<hash>.json` in the runtime directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerState {
    /// Process id of the controller.
    pub pid: u32,
    /// Candidate id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Store URL.
    pub store: String,
    /// The mountpoint gating the commands.
    pub mountpoint: PathBuf,
    /// `true` with `--all-active` (no election).
    pub all_active: bool,
    /// What it is doing.
    pub role: Role,
    /// Its epoch while it leads.
    pub epoch: Option<u64>,
    /// Milliseconds left of its lease while it leads.
    pub lease_remaining_ms: Option<u64>,
    /// The leader as seen in the heartbeat chain (standbys).
    pub leader: Option<LeaderInfo>,
    /// The generation and tree id its commands were started against.
    pub generation: Option<u64>,
    /// Tree id of that generation.
    pub tree_id: Option<String>,
    /// The running commands.
    pub children: Vec<MemberInfo>,
    /// Restarts in the current window.
    pub restarts: u32,
    /// When the cooldown ends, milliseconds since the Unix epoch.
    pub cooldown_until_ms: Option<u64>,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// When this state was written, milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// File name of the state of the controller for `store` in the runtime directory.
pub fn state_file(runtime_dir: &Path, store: &str) -> PathBuf {
    let hash = blake3::hash(store.as_bytes());
    runtime_dir.join(format!("failover-{}.json", &hash.to_hex()[..16]))
}

impl ControllerState {
    /// Every controller state in `runtime_dir` (normally one per store), skipping files of
    /// controllers that no longer run; sorted by store.
    pub fn read_all(runtime_dir: &Path) -> std::io::Result<Vec<ControllerState>> {
        let mut states = Vec::new();
        let entries = match std::fs::read_dir(runtime_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(states),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with("failover-") && name.ends_with(".json")) {
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            if let Ok(state) = serde_json::from_slice::<ControllerState>(&text) {
                if Path::new(&format!("/proc/{}", state.pid)).exists() {
                    states.push(state);
                }
            }
        }
        states.sort_by(|a, b| a.store.cmp(&b.store));
        Ok(states)
    }

    fn write(&self, runtime_dir: &Path) -> std::io::Result<()> {
        write_json(&state_file(runtime_dir, &self.store), self)
    }
}

/// A controller that cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// No command to supervise.
    #[error("no command to run; give one or more with --run 'COMMAND'")]
    NoCommand,
    /// The runtime directory is not writable.
    #[error("cannot write the controller state in {dir}: {source}; set DAGFS_RUNTIME_DIR to a writable directory")]
    State {
        /// The runtime directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How to run a controller.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// Candidate id (unique among the candidates; the host name by default).
    pub id: String,
    /// The mount whose state gates the commands.
    pub mountpoint: PathBuf,
    /// The commands, run as one unit.
    pub commands: Vec<String>,
    /// Supervise and gate on every host, without election (Airflow 2+ with several
    /// schedulers).
    pub all_active: bool,
    /// Timing and supervision settings (validated).
    pub config: FailoverConfig,
    /// Where the mount's and the controller's state files are.
    pub runtime_dir: PathBuf,
    /// The `dagfs` executable that runs the guards.
    pub guard_exe: PathBuf,
    /// Where the metrics go (served on `--metrics` when given).
    pub metrics: FailoverMetrics,
}

/// The controller's Prometheus metrics, under `dagfs_failover_*`. Clones share the series.
#[derive(Clone, Debug, Default)]
pub struct FailoverMetrics {
    leader: Gauge,
    running: Gauge,
    epoch: Gauge,
    generation: Gauge,
    cooling_down: Gauge,
    heartbeat_age: Gauge<f64, AtomicU64>,
    restarts: Counter,
}

impl FailoverMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> FailoverMetrics {
        let metrics = FailoverMetrics::default();
        let r = registry.sub_registry_with_prefix("dagfs_failover");
        r.register(
            "leader",
            "1 while this controller holds leadership (or runs --all-active)",
            metrics.leader.clone(),
        );
        r.register(
            "running",
            "1 while the supervised commands run",
            metrics.running.clone(),
        );
        r.register(
            "epoch",
            "Fencing epoch of this controller's leadership (0 when standby)",
            metrics.epoch.clone(),
        );
        r.register(
            "generation",
            "Generation the commands were started on",
            metrics.generation.clone(),
        );
        r.register(
            "cooling_down",
            "1 while stepped down after repeated failures",
            metrics.cooling_down.clone(),
        );
        r.register(
            "leader_heartbeat_age_seconds",
            "Seconds since a standby saw the leader's heartbeat change (its own clock)",
            metrics.heartbeat_age.clone(),
        );
        r.register(
            "restarts",
            "Restarts of the supervised commands",
            metrics.restarts.clone(),
        );
        metrics
    }

    fn observe(&self, state: &ControllerState) {
        let leading = !matches!(
            state.role,
            Role::Standby | Role::CoolingDown | Role::Stopped
        );
        self.leader.set(i64::from(leading));
        self.running.set(i64::from(state.role == Role::Running));
        self.epoch.set(state.epoch.unwrap_or(0) as i64);
        self.generation.set(state.generation.unwrap_or(0) as i64);
        self.cooling_down
            .set(i64::from(state.role == Role::CoolingDown));
        let age = state
            .leader
            .as_ref()
            .map_or(0.0, |l| l.heartbeat_age_ms as f64 / 1000.0);
        self.heartbeat_age.set(age);
    }
}

/// Why the commands may not start yet.
type GateResult = Result<(Option<u64>, Option<String>), String>;

/// The identity gate: the local mount must be current and serve the store's head (or, when
/// the head cannot be read, at least the generation the previous leader recorded).
async fn gate(
    store: &dyn Store,
    states: &StateDir,
    mountpoint: &Path,
    bound: Duration,
    previous: Option<u64>,
) -> GateResult {
    let mount = states.read(mountpoint).map_err(|e| e.to_string())?;
    if !mount.is_current() {
        return Err(format!(
            "the mount at {} serves generation {} but its head is {}{}",
            mountpoint.display(),
            show(mount.generation),
            show(mount.head),
            if mount.online { "" } else { " (offline)" }
        ));
    }
    let head = match tokio::time::timeout(bound, generations::head(store)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) if mount.generation >= previous && previous.is_some() => {
            tracing::warn!(error = %e, "cannot read the head; the mount serves at least the previous leader's generation");
            mount.generation
        }
        Ok(Err(e)) => return Err(format!("cannot read the head generation: {e}")),
        Err(_) => return Err("reading the head generation timed out".into()),
    };
    if mount.generation != head {
        return Err(format!(
            "the mount at {} serves generation {} but the store's head is {}",
            mountpoint.display(),
            show(mount.generation),
            show(head)
        ));
    }
    Ok((mount.generation, mount.tree_id))
}

fn show(generation: Option<u64>) -> String {
    generation.map_or_else(|| "none".to_string(), |g| g.to_string())
}

/// What the leader's commands are doing.
enum Phase {
    WaitingForMount { since: Clock },
    Running { unit: Unit, health_failures: u32 },
    Restarting { at: Clock },
}

/// Leadership (or, with `--all-active`, activity) of this host.
struct Lead {
    /// `None` with `--all-active`.
    term: Option<Term>,
    phase: Phase,
}

impl Lead {
    fn lease_until(&self) -> Option<Clock> {
        self.term.as_ref().map(|t| t.lease_until)
    }
}

/// The controller's loop state.
struct Controller<'a> {
    store: &'a dyn Store,
    options: FailoverOptions,
    spec: UnitSpec,
    candidate: Candidate<'a>,
    mounts: StateDir,
    lead: Option<Lead>,
    policy: RestartPolicy,
    cooldown_until: Option<Clock>,
    generation: Option<u64>,
    tree_id: Option<String>,
    health: Option<tokio::task::JoinHandle<Result<(), String>>>,
    last_error: Option<String>,
}

/// Runs the controller until `shutdown` resolves (SIGTERM/SIGINT at the CLI), then stops the
/// commands and hands leadership over.
pub async fn run(
    store: &dyn Store,
    options: FailoverOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FailoverError> {
    if options.commands.is_empty() {
        return Err(FailoverError::NoCommand);
    }
    let config = &options.config;
    let timing = Timing {
        interval: config.interval,
        fence_after: config.fence_after,
        takeover_after: config.takeover_after,
    };
    let me = Identity {
        id: options.id.clone(),
        host: host_name(),
        pid: std::process::id(),
    };
    let spec = UnitSpec {
        commands: options.commands.clone(),
        kill_grace: config.kill_grace,
        guard_exe: options.guard_exe.clone(),
        env: vec![
            // Not DAGFS_<SECTION>_*: those are configuration keys.
            ("DAGFS_CANDIDATE".into(), options.id.clone()),
            ("DAGFS_STORE".into(), store.url().to_string()),
        ],
    };
    let mut controller = Controller {
        store,
        candidate: Candidate::new(store, me, timing),
        mounts: StateDir::at(&options.runtime_dir),
        lead: None,
        policy: RestartPolicy::new(
            config.restart_limit,
            config.restart_window,
            config.restart_backoff,
        ),
        cooldown_until: None,
        generation: None,
        tree_id: None,
        health: None,
        last_error: None,
        spec,
        options,
    };
    controller.publish(Role::Standby)?;
    tracing::info!(
        id = %controller.options.id,
        store = %store.url(),
        all_active = controller.options.all_active,
        "failover controller started"
    );
    controller.run(shutdown).await
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Sleeps until `clock` (this host's boot clock); forever for `None`.
async fn sleep_until(clock: Option<Clock>) {
    match clock {
        Some(until) => tokio::time::sleep(until.since(Clock::now())).await,
        None => std::future::pending().await,
    }
}

/// Waits for the next exit of a running unit; forever otherwise.
async fn unit_exit(lead: &mut Option<Lead>) -> crate::supervise::MemberExit {
    match lead {
        Some(Lead {
            phase: Phase::Running { unit, .. },
            ..
        }) => unit.exited().await,
        _ => std::future::pending().await,
    }
}

impl<'a> Controller<'a> {
    async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), FailoverError> {
        let mut tick = tokio::time::interval(self.options.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let lease = self.lead.as_ref().and_then(Lead::lease_until);
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutting down: stopping the commands and handing over");
                    self.step_down(None).await;
                    self.publish(Role::Stopped)?;
                    return Ok(());
                }
                exit = unit_exit(&mut self.lead) => {
                    tracing::warn!(command = %exit.command, code = ?exit.code, "command exited");
                    self.failed(format!("{} exited with {}", exit.command, exit.code.map_or("an unknown status".into(), |c| c.to_string()))).await;
                }
                () = sleep_until(lease) => self.fence("the lease expired before a renewal succeeded").await,
                _ = tick.tick() => self.step().await,
            }
            let role = self.role();
            self.publish(role)?;
        }
    }

    fn role(&self) -> Role {
        match &self.lead {
            Some(Lead { phase, .. }) => match phase {
                Phase::WaitingForMount { .. } => Role::WaitingForMount,
                Phase::Running { .. } => Role::Running,
                Phase::Restarting { .. } => Role::Restarting,
            },
            None if self.cooling_down() => Role::CoolingDown,
            None => Role::Standby,
        }
    }

    fn cooling_down(&self) -> bool {
        self.cooldown_until
            .is_some_and(|until| Clock::now() < until)
    }

    /// Records the last error; logs it as a warning when it is new (a standby repeating
    /// the same reason every interval would flood the log).
    fn error(&mut self, error: String) {
        if self.last_error.as_deref() == Some(&error) {
            tracing::debug!(error = %error);
        } else {
            tracing::warn!(error = %error);
        }
        self.last_error = Some(error);
    }

    /// One interval's work.
    async fn step(&mut self) {
        if self.lead.is_none() {
            self.stand_by().await;
        }
        if self.lead.is_some() {
            self.lead_step().await;
        }
    }

    async fn stand_by(&mut self) {
        let mount = self.mount_current();
        let eligible = !self.cooling_down() && mount.is_ok();
        if self.options.all_active {
            if !self.cooling_down() {
                self.lead = Some(Lead {
                    term: None,
                    phase: Phase::WaitingForMount {
                        since: Clock::now(),
                    },
                });
            }
            return;
        }
        match self.candidate.standby_step(eligible).await {
            Ok(Standing::Elected(term)) => {
                self.policy.reset();
                self.lead = Some(Lead {
                    term: Some(term),
                    phase: Phase::WaitingForMount {
                        since: Clock::now(),
                    },
                });
            }
            Ok(Standing::Vacant(_)) if !self.cooling_down() => {
                if let Err(reason) = mount {
                    self.error(format!("leadership is vacant; not taking over: {reason}"));
                }
            }
            Ok(_) => {}
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Whether the local mount claims to serve its head (the cheap, local part of the gate;
    /// a standby with a lagging mount does not take leadership it could not use).
    fn mount_current(&self) -> Result<(), String> {
        let mount = self
            .mounts
            .read(&self.options.mountpoint)
            .map_err(|e| e.to_string())?;
        if mount.is_current() {
            Ok(())
        } else {
            Err(format!(
                "the mount at {} serves generation {} but its head is {}",
                self.options.mountpoint.display(),
                show(mount.generation),
                show(mount.head)
            ))
        }
    }

    async fn lead_step(&mut self) {
        // Renew first: the lease matters more than anything the commands do.
        if let Some(Lead {
            term: Some(term), ..
        }) = &mut self.lead
        {
            let mut renewed = term.clone();
            let result = self
                .candidate
                .renew(&mut renewed, self.generation, self.tree_id.clone())
                .await;
            *term = renewed.clone();
            match result {
                Ok(Renewal::Renewed) => {
                    if let Some(Lead {
                        phase: Phase::Running { unit, .. },
                        ..
                    }) = &mut self.lead
                    {
                        unit.extend(renewed.lease_until).await;
                    }
                }
                Ok(Renewal::Deposed(by)) => {
                    let by = by.map_or("another candidate".to_string(), |b| {
                        format!("{} (epoch {})", b.owner, b.epoch)
                    });
                    self.error(format!("deposed by {by}: stopping the commands at once"));
                    if let Some(lead) = self.lead.take() {
                        stop_phase(lead.phase).await;
                    }
                    return;
                }
                Err(e) => self.error(format!("heartbeat not renewed: {e}")),
            }
            if Clock::now() >= renewed.lease_until {
                self.fence("the lease expired before a renewal succeeded")
                    .await;
                return;
            }
        }
        let Some(lead) = &mut self.lead else {
            return;
        };
        match &mut lead.phase {
            Phase::WaitingForMount { since } => {
                let since = *since;
                self.try_start(since).await;
            }
            Phase::Restarting { at } => {
                if Clock::now() >= *at {
                    let now = Clock::now();
                    self.try_start(now).await;
                }
            }
            Phase::Running { .. } => self.check_health().await,
        }
    }

    /// Starts the unit if the gate is open; steps down when it stayed shut too long.
    async fn try_start(&mut self, waiting_since: Clock) {
        let previous = self
            .candidate
            .seen()
            .and_then(|s| s.beat.as_ref())
            .and_then(|b| b.generation);
        let config = &self.options.config;
        match gate(
            self.store,
            &self.mounts,
            &self.options.mountpoint,
            config.interval,
            previous,
        )
        .await
        {
            Ok((generation, tree_id)) => {
                let Some(lead) = &mut self.lead else {
                    return;
                };
                let epoch = lead.term.as_ref().map_or(0, |t| t.epoch);
                match Unit::start(&self.spec, epoch, generation, lead.lease_until()).await {
                    Ok(unit) => {
                        tracing::info!(epoch, generation = ?generation, tree_id = ?tree_id, "commands started on the head generation");
                        lead.phase = Phase::Running {
                            unit,
                            health_failures: 0,
                        };
                        self.generation = generation;
                        self.tree_id = tree_id;
                    }
                    Err(e) => {
                        self.failed(format!("cannot start the commands: {e}")).await;
                    }
                }
            }
            Err(reason) => {
                let waited = Clock::now().since(waiting_since);
                self.last_error = Some(format!("not starting: {reason}"));
                if waited >= config.gate_timeout {
                    let why = format!(
                        "the mount did not serve the head within gate_timeout ({}): {reason}",
                        humantime::format_duration(config.gate_timeout)
                    );
                    self.give_up(why).await;
                } else {
                    tracing::info!(reason = %reason, "waiting for the mount before starting the commands");
                }
            }
        }
    }

    async fn check_health(&mut self) {
        let Some(command) = self.options.config.health_command.clone() else {
            return;
        };
        let verdict = match &self.health {
            Some(task) if task.is_finished() => self.health.take().expect("some").await.ok(),
            Some(_) => None,
            None => None,
        };
        if let Some(verdict) = verdict {
            let limit = self.options.config.health_failures;
            let failures = match &mut self.lead {
                Some(Lead {
                    phase:
                        Phase::Running {
                            health_failures, ..
                        },
                    ..
                }) => {
                    *health_failures = if verdict.is_ok() {
                        0
                    } else {
                        *health_failures + 1
                    };
                    *health_failures
                }
                _ => return,
            };
            if let Err(e) = verdict {
                self.error(format!("health check failed ({failures}/{limit}): {e}"));
                if failures >= limit {
                    self.failed(format!("{limit} health checks failed in a row"))
                        .await;
                    return;
                }
            }
        }
        if self.health.is_none() {
            let timeout = self.options.config.health_timeout;
            self.health = Some(tokio::spawn(async move {
                health_check(&command, timeout).await
            }));
        }
    }

    /// The unit failed: stop what is left of it, then restart or give up.
    async fn failed(&mut self, why: String) {
        self.error(why.clone());
        let Some(lead) = &mut self.lead else {
            return;
        };
        let phase = std::mem::replace(&mut lead.phase, Phase::Restarting { at: Clock::now() });
        stop_phase(phase).await;
        self.health = None;
        match self.policy.on_failure(Clock::now()) {
            AfterFailure::RestartIn(delay) => {
                self.options.metrics.restarts.inc();
                tracing::info!(delay = %humantime::format_duration(delay), restarts = self.policy.restarts(), "restarting the commands");
                if let Some(lead) = &mut self.lead {
                    lead.phase = Phase::Restarting {
                        at: Clock::now().after(delay),
                    };
                }
            }
            AfterFailure::GiveUp => {
                let limit = self.options.config.restart_limit;
                self.give_up(format!(
                    "the commands failed {} times within restart_window ({why})",
                    limit + 1
                ))
                .await;
            }
        }
    }

    /// Steps down and stays out of leadership for the cooldown.
    async fn give_up(&mut self, why: String) {
        let cooldown = self.options.config.cooldown;
        tracing::error!(reason = %why, cooldown = %humantime::format_duration(cooldown), "stepping down; unhealthy for the cooldown");
        self.last_error = Some(format!("stepped down: {why}"));
        self.step_down(Some(Clock::now().after(cooldown))).await;
    }

    /// Stops the unit, then releases leadership so a standby takes over at once.
    async fn step_down(&mut self, cooldown_until: Option<Clock>) {
        self.cooldown_until = cooldown_until;
        self.policy.reset();
        let Some(lead) = self.lead.take() else {
            return;
        };
        stop_phase(lead.phase).await;
        self.generation = None;
        self.tree_id = None;
        if let Some(term) = lead.term {
            // Only after the commands are gone: a release lets a standby start at once.
            if Clock::now() < term.lease_until {
                if let Err(e) = self.candidate.release(&term).await {
                    self.error(format!("could not release leadership (standbys take over after takeover_after): {e}"));
                }
            }
        }
    }

    /// The lease ran out: the guards are stopping the commands; this host no longer leads.
    async fn fence(&mut self, why: &str) {
        self.error(format!("fencing: {why}; stopping the commands"));
        if let Some(lead) = self.lead.take() {
            stop_phase(lead.phase).await;
        }
        self.generation = None;
        self.tree_id = None;
    }

    fn publish(&self, role: Role) -> Result<(), FailoverError> {
        let lead_term = self.lead.as_ref().and_then(|l| l.term.as_ref());
        let leader = self.candidate.seen().and_then(|seen| {
            let beat: &Beat = seen.beat.as_ref()?;
            Some(LeaderInfo {
                id: beat.owner.clone(),
                host: beat.host.clone(),
                epoch: beat.epoch,
                generation: beat.generation,
                released: beat.released,
                heartbeat_age_ms: Clock::now().since(seen.since).as_millis() as u64,
            })
        });
        let children = match &self.lead {
            Some(Lead {
                phase: Phase::Running { unit, .. },
                ..
            }) => unit.members(),
            _ => Vec::new(),
        };
        let now = Clock::now();
        let state = ControllerState {
            pid: std::process::id(),
            id: self.options.id.clone(),
            host: host_name(),
            store: self.store.url().to_string(),
            mountpoint: self.options.mountpoint.clone(),
            all_active: self.options.all_active,
            role,
            epoch: lead_term.map(|t| t.epoch),
            lease_remaining_ms: lead_term.map(|t| t.lease_until.since(now).as_millis() as u64),
            leader: if lead_term.is_some() { None } else { leader },
            generation: self.generation,
            tree_id: self.tree_id.clone(),
            children,
            restarts: self.policy.restarts(),
            cooldown_until_ms: self
                .cooldown_until
                .filter(|&until| now < until)
                .map(|until| now_ms() + until.since(now).as_millis() as u64),
            last_error: self.last_error.clone(),
            updated_ms: now_ms(),
        };
        self.options.metrics.observe(&state);
        state
            .write(&self.options.runtime_dir)
            .map_err(|source| FailoverError::State {
                dir: self.options.runtime_dir.display().to_string(),
                source,
            })
    }
}

async fn stop_phase(phase: Phase) {
    if let Phase::Running { unit, .. } = phase {
        unit.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::state::MountState;
    use crate::store::LocalStore;

    fn mount_state(mountpoint: &Path, generation: Option<u64>, head: Option<u64>) -> MountState {
        MountState {
            pid: std::process::id(),
            mountpoint: mountpoint.to_path_buf(),
            store: "file:///x".into(),
            generation,
            tree_id: generation.map(|g| format!("{g:064}")),
            manifest_id: None,
            head,
            pinned: None,
            online: true,
            last_poll_ok_ms: Some(now_ms()),
            last_error: None,
            poll_interval_ms: 1000,
            started_ms: now_ms(),
            updated_ms: now_ms(),
            views: Vec::new(),
        }
    }

    #[tokio::test]
    async fn gate_opens_only_on_a_current_mount_serving_the_store_head() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let states = StateDir::at(dir.path().join("run"));
        let mnt = dir.path().join("mnt");
        let bound = Duration::from_secs(5);
        let err = gate(&store, &states, &mnt, bound, None).await.unwrap_err();
        assert!(err.contains("no dagfs mount"), "{err}");

        crate::testutil::publish_files(&store, dir.path(), &[("a.py", "x")]).await;
        states.write(&mount_state(&mnt, Some(1), Some(1))).unwrap();
        assert_eq!(
            gate(&store, &states, &mnt, bound, None).await.unwrap().0,
            Some(1)
        );
        // The mount lags behind a head it has seen, or behind one it has not seen yet.
        states.write(&mount_state(&mnt, Some(1), Some(2))).unwrap();
        let err = gate(&store, &states, &mnt, bound, None).await.unwrap_err();
        assert!(
            err.contains("serves generation 1 but its head is 2"),
            "{err}"
        );
        crate::testutil::publish_files(&store, dir.path(), &[("a.py", "y")]).await;
        states.write(&mount_state(&mnt, Some(1), Some(1))).unwrap();
        let err = gate(&store, &states, &mnt, bound, None).await.unwrap_err();
        assert!(err.contains("store's head is 2"), "{err}");
    }

    #[test]
    fn state_files_of_running_controllers_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ControllerState {
            pid: std::process::id(),
            id: "a".into(),
            host: "h".into(),
            store: "hdfs://ns/dagfs".into(),
            mountpoint: "/mnt".into(),
            all_active: false,
            role: Role::Running,
            epoch: Some(3),
            lease_remaining_ms: Some(100),
            leader: None,
            generation: Some(2),
            tree_id: None,
            children: vec![],
            restarts: 0,
            cooldown_until_ms: None,
            last_error: None,
            updated_ms: now_ms(),
        };
        state.write(dir.path()).unwrap();
        assert_eq!(
            ControllerState::read_all(dir.path()).unwrap(),
            vec![state.clone()]
        );
        state.pid = 99_999_999;
        state.write(dir.path()).unwrap();
        assert!(ControllerState::read_all(dir.path()).unwrap().is_empty());
    }
}
