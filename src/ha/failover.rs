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

use crate::config::{FailoverConfig, FailoverMode};
use crate::election::{Beat, Candidate, Clock, Coordinator, Identity, Renewal, Standing, Term};
use crate::generations;
use crate::metrics::{register_metrics, Health, Registry};
use crate::mount::state::{MountState, StateDir};
use crate::running::{Floor, RunningRecord};
use crate::runtime::{now_ms, ClaimError, StateFile};
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
            // Alive means holding the file's lock: a pid that exists proves nothing after a
            // crash (pids are reused).
            if let Ok(Some((state, true))) = StateFile::<ControllerState>::read_live(&path) {
                states.push(state);
            }
        }
        states.sort_by(|a, b| a.store.cmp(&b.store));
        Ok(states)
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
    /// Another controller for the same store runs on this host.
    #[error("another dagfs failover for this store runs on this host: {0}; stop it first")]
    Running(ClaimError),
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
    /// Mode, timing and supervision settings (validated).
    pub config: FailoverConfig,
    /// Where the mount's and the controller's state files are.
    pub runtime_dir: PathBuf,
    /// The `dagfs` executable that runs the guards.
    pub guard_exe: PathBuf,
    /// Where the metrics go (served on `--metrics` when given).
    pub metrics: FailoverMetrics,
    /// What `/healthz` answers (see [`health_problem`]).
    pub health: Health,
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
        register_metrics!(registry, "dagfs_failover",
            "leader", "1 while this controller holds leadership (or runs --all-active)"
                => metrics.leader;
            "running", "1 while the supervised commands run" => metrics.running;
            "epoch", "Fencing epoch of this controller's leadership (0 when standby)"
                => metrics.epoch;
            "generation", "Generation the commands were started on" => metrics.generation;
            "cooling_down", "1 while stepped down after repeated failures" => metrics.cooling_down;
            "leader_heartbeat_age_seconds",
                "Seconds since a standby saw the leader's heartbeat change (its own clock)"
                => metrics.heartbeat_age;
            "restarts", "Restarts of the supervised commands" => metrics.restarts;
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

/// The generation and tree id the commands may start on, or why they may not.
type GateResult = Result<(Option<u64>, Option<String>), String>;

/// The identity gate: reads the local mount's state and the store's head (bounded by
/// `bound`; a timeout counts as unreadable) and applies [`admit`].
async fn gate(
    store: &dyn Store,
    states: &StateDir,
    mountpoint: &Path,
    bound: Duration,
    floor: Option<&Floor>,
) -> GateResult {
    let mount = states.read(mountpoint).map_err(|e| e.to_string())?;
    let head = match tokio::time::timeout(bound, generations::head(store)).await {
        Ok(Ok(head)) => Ok(head),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(bound)
        )),
    };
    admit(&mount, head, floor)
}

/// The identity gate's rule.
/// - The store's head is readable: the mount is online and serves it.
/// - It is not (HDFS down): the mount serves at least `floor`, the newest generation any host
///   has run (recorded in the metadata database, or in the previous leader's heartbeat), so
///   no host ever goes back to older code and hosts whose cache lacks the newest stay out.
///   With no floor known, nothing starts.
fn admit(
    mount: &MountState,
    head: Result<Option<u64>, String>,
    floor: Option<&Floor>,
) -> GateResult {
    let here = mount.mountpoint.display();
    match head {
        Ok(head) if mount.is_current() && mount.generation == head => {
            Ok((mount.generation, mount.tree_id.clone()))
        }
        Ok(_) if !mount.is_current() => Err(format!(
            "the mount at {here} serves generation {} but its head is {}{}",
            show(mount.generation),
            show(mount.head),
            if mount.online { "" } else { " (offline)" }
        )),
        Ok(head) => Err(format!(
            "the mount at {here} serves generation {} but the store's head is {}",
            show(mount.generation),
            show(head),
        )),
        Err(e) => match (floor, mount.generation) {
            (Some(floor), Some(served)) if served >= floor.generation => {
                tracing::warn!(error = %e, served, floor = floor.generation, "cannot read the head; the mount serves the newest generation any host has run");
                Ok((mount.generation, mount.tree_id.clone()))
            }
            (Some(floor), served) => Err(format!(
                "cannot read the head generation ({e}), and {} runs generation {} while the mount at {here} serves {}: staying out until the mount can fetch it",
                floor.candidate,
                floor.generation,
                show(served)
            )),
            (None, _) => Err(format!(
                "cannot read the head generation ({e}), and no host has recorded the generation it runs (the metadata database is not configured or not readable)"
            )),
        },
    }
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

/// Leadership (or, all-active, activity) of this host.
struct Lead {
    /// `None` when all-active.
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
    /// Where the generation this host runs is recorded (the metadata database).
    record: Option<&'a dyn RunningRecord>,
    /// Since when every election call failed (`None`: the last one succeeded).
    failing_since: Option<Clock>,
    /// This controller's state file, claimed (locked) for its life.
    state_file: StateFile<ControllerState>,
    /// When the leader renews next (every interval; sooner after a failed renewal).
    next_renewal: Clock,
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
/// commands and hands leadership over. `coordinator` holds the election (single-active);
/// `store` is read for the head generation; `record` (the metadata database) keeps hosts on
/// one generation while the store cannot be read.
pub async fn run(
    store: &dyn Store,
    coordinator: &dyn Coordinator,
    record: Option<&dyn RunningRecord>,
    options: FailoverOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FailoverError> {
    if options.commands.is_empty() {
        return Err(FailoverError::NoCommand);
    }
    let config = &options.config;
    let timing = crate::election::Timing::from(config);
    let me = Identity {
        id: options.id.clone(),
        host: crate::host::host_name(),
        pid: std::process::id(),
        instance: fastrand::u64(..),
    };
    if let Err(e) = crate::supervise::adopt_orphans() {
        tracing::warn!(error = %e, "cannot adopt the orphans of guards that die (prctl)");
    }
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
    let state_path = state_file(&options.runtime_dir, store.url());
    let state_file = StateFile::claim(&state_path).map_err(|e| match e {
        ClaimError::Io(source) => FailoverError::State {
            dir: options.runtime_dir.display().to_string(),
            source,
        },
        held => FailoverError::Running(held),
    })?;
    let mut controller = Controller {
        store,
        record,
        failing_since: None,
        state_file,
        next_renewal: Clock::now(),
        candidate: Candidate::new(coordinator, me, timing),
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
        all_active = controller.all_active(),
        "failover controller started"
    );
    controller.run(shutdown).await
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
    fn all_active(&self) -> bool {
        self.options.config.mode == FailoverMode::AllActive
    }

    async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), FailoverError> {
        let mut tick = tokio::time::interval(self.candidate.timing().standby_poll());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let lease = self.lead.as_ref().and_then(Lead::lease_until);
            // A standby wakes exactly when a takeover becomes possible, not a poll later.
            let takeover = match self.lead {
                None => self.candidate.seen().map(|s| s.takeover_at()),
                Some(_) => None,
            };
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
                () = sleep_until(takeover) => self.step().await,
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
        let mount = self.mount_usable().await;
        let eligible = !self.cooling_down() && mount.is_ok();
        if self.all_active() {
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
        let standing = self.candidate.standby_step(eligible).await;
        self.reached(standing.is_ok());
        match standing {
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

    /// Whether the local mount could pass the gate (a standby with a lagging mount does not
    /// take leadership it could not use): it serves its head, or, offline, at least the
    /// newest generation any host has run.
    async fn mount_usable(&mut self) -> Result<(), String> {
        let mount = self
            .mounts
            .read(&self.options.mountpoint)
            .map_err(|e| e.to_string())?;
        if mount.is_current() {
            return Ok(());
        }
        if !mount.online {
            let floor = self.floor().await;
            let unreadable = Err("the mount is offline".to_string());
            return admit(&mount, unreadable, floor.as_ref()).map(|_| ());
        }
        Err(format!(
            "the mount at {} serves generation {} but its head is {}",
            self.options.mountpoint.display(),
            show(mount.generation),
            show(mount.head)
        ))
    }

    async fn lead_step(&mut self) {
        // Renew first: the lease matters more than anything the commands do.
        if let Some(Lead {
            term: Some(term), ..
        }) = &mut self.lead
        {
            if Clock::now() < self.next_renewal {
                return self.phase_step().await;
            }
            let mut renewed = term.clone();
            let result = self
                .candidate
                .renew(&mut renewed, self.generation, self.tree_id.clone())
                .await;
            *term = renewed.clone();
            self.reached(result.is_ok());
            let interval = self.options.config.interval;
            self.next_renewal = Clock::now().after(match result {
                Ok(Renewal::Renewed) => interval,
                _ => interval / 4,
            });
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
                    self.error(format!("deposed by {by}: killing the commands at once"));
                    if let Some(lead) = self.lead.take() {
                        if let Phase::Running { unit, .. } = lead.phase {
                            unit.kill().await;
                        }
                    }
                    self.generation = None;
                    self.tree_id = None;
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
        self.phase_step().await;
    }

    /// The commands' part of a leader's step: start them, restart them, check their health.
    async fn phase_step(&mut self) {
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
            Phase::Running { .. } => {
                if self.follow().await {
                    self.check_health().await;
                }
            }
        }
    }

    /// The newest generation any host has run, as far as this host can tell: the record in
    /// the metadata database, and (single-active) the previous leader's heartbeat.
    async fn floor(&mut self) -> Option<Floor> {
        let previous = self
            .candidate
            .seen()
            .and_then(|s| s.beat.as_ref())
            .and_then(|b| {
                Some(Floor {
                    generation: b.generation?,
                    candidate: b.owner.clone(),
                })
            });
        let recorded = match self.record {
            Some(record) => match record.floor().await {
                Ok(floor) => floor,
                Err(e) => {
                    self.error(format!("cannot read the generations other hosts run: {e}"));
                    None
                }
            },
            None => None,
        };
        [previous, recorded]
            .into_iter()
            .flatten()
            .max_by_key(|f| f.generation)
    }

    /// Records the generation the unit runs (before it starts on it); an unrecorded
    /// generation is not run, so the floor never lags behind a running unit.
    async fn record_running(
        &self,
        generation: Option<u64>,
        tree_id: Option<&str>,
    ) -> Result<(), String> {
        match (self.record, generation, tree_id) {
            (Some(record), Some(generation), Some(tree_id)) => record
                .record(&self.options.id, generation, tree_id)
                .await
                .map_err(|e| {
                    format!("cannot record generation {generation} as running in the metadata database: {e}")
                }),
            _ => Ok(()),
        }
    }

    /// A running unit follows its mount: a generation the mount switched to is recorded;
    /// a mount that is offline and behind the newest generation another host runs stops
    /// the unit until it can fetch that generation (two hosts never parse different
    /// generations for longer than a mount takes to follow a publish). Returns whether the
    /// unit still runs.
    async fn follow(&mut self) -> bool {
        let Ok(mount) = self.mounts.read(&self.options.mountpoint) else {
            return true;
        };
        if mount.generation > self.generation {
            match self
                .record_running(mount.generation, mount.tree_id.as_deref())
                .await
            {
                Ok(()) => {
                    tracing::info!(generation = ?mount.generation, "the mount switched; the commands run the new generation");
                    self.generation = mount.generation;
                    self.tree_id = mount.tree_id.clone();
                }
                Err(e) => self.error(e),
            }
        }
        if mount.online {
            return true;
        }
        let Some(floor) = self.floor().await else {
            return true;
        };
        if mount.generation >= Some(floor.generation) {
            return true;
        }
        self.fall_behind(&mount, &floor).await;
        false
    }

    /// Stops the unit of a host whose mount cannot fetch the generation another host runs.
    async fn fall_behind(&mut self, mount: &MountState, floor: &Floor) {
        self.error(format!(
            "{} runs generation {} and the mount at {} serves {} and is offline: stopping the commands until it can fetch it",
            floor.candidate,
            floor.generation,
            mount.mountpoint.display(),
            show(mount.generation)
        ));
        let Some(lead) = &mut self.lead else {
            return;
        };
        let phase = std::mem::replace(
            &mut lead.phase,
            Phase::WaitingForMount {
                since: Clock::now(),
            },
        );
        self.health = None;
        if !stop_phase(phase).await {
            self.fence("the commands did not stop").await;
        }
    }

    /// Starts the unit if the gate is open; steps down when it stayed shut too long.
    async fn try_start(&mut self, waiting_since: Clock) {
        let floor = self.floor().await;
        let config = &self.options.config;
        let admitted = match gate(
            self.store,
            &self.mounts,
            &self.options.mountpoint,
            config.interval,
            floor.as_ref(),
        )
        .await
        {
            Ok((generation, tree_id)) => self
                .record_running(generation, tree_id.as_deref())
                .await
                .map(|()| (generation, tree_id)),
            Err(reason) => Err(reason),
        };
        match admitted {
            Ok((generation, tree_id)) => {
                let Some(lead) = &mut self.lead else {
                    return;
                };
                let epoch = lead.term.as_ref().map_or(0, |t| t.epoch);
                if lead
                    .lease_until()
                    .is_some_and(|until| Clock::now() >= until)
                {
                    // The gate took longer than the lease: never start on an expired one.
                    self.fence("the lease expired while the gate was checked")
                        .await;
                    return;
                }
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
                // An all-active host has nobody to hand over to: it waits as long as it takes
                // (an HDFS outage can outlast any timeout) instead of cooling down after it.
                if waited >= config.gate_timeout && !self.all_active() {
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
        if !stop_phase(phase).await {
            // Something of the unit survived SIGKILL: never start a second one beside it.
            self.fence("the commands did not stop").await;
            return;
        }
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
        let gone = stop_phase(lead.phase).await;
        self.generation = None;
        self.tree_id = None;
        if let Some(term) = lead.term {
            // Only after the commands are gone: a release lets a standby start at once.
            if !gone {
                self.error("the commands did not stop; not releasing leadership (standbys take over after the lease)".into());
            } else if Clock::now() < term.lease_until {
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

    /// Notes whether an election call reached the coordinator.
    fn reached(&mut self, ok: bool) {
        if ok {
            self.failing_since = None;
        } else if self.failing_since.is_none() {
            self.failing_since = Some(Clock::now());
        }
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
            host: crate::host::host_name(),
            store: self.store.url().to_string(),
            mountpoint: self.options.mountpoint.clone(),
            all_active: self.all_active(),
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
        let failing = self.failing_since.map(|since| now.since(since));
        match health_problem(&state, failing, self.options.config.fence_after) {
            Some(problem) => self.options.health.set_unhealthy(problem),
            None => self.options.health.set_healthy(),
        }
        self.state_file
            .write(&state)
            .map_err(|source| FailoverError::State {
                dir: self.options.runtime_dir.display().to_string(),
                source,
            })
    }
}

/// Why a controller is unhealthy (`/healthz` answers 503 with it), if it is:
/// - it has not reached the coordinator for `fence_after` (a leader has fenced itself by then,
///   a standby cannot take over);
/// - it stepped down after repeated failures of the commands and is cooling down.
///
/// A healthy standby is healthy: following is its job.
pub fn health_problem(
    state: &ControllerState,
    failing_for: Option<Duration>,
    fence_after: Duration,
) -> Option<String> {
    if let Some(failing) = failing_for.filter(|&f| f >= fence_after) {
        return Some(format!(
            "the coordinator has not answered for {}: {}",
            humantime::format_duration(Duration::from_secs(failing.as_secs())),
            state.last_error.as_deref().unwrap_or("no error recorded")
        ));
    }
    if state.role == Role::CoolingDown {
        return Some(format!(
            "stepped down after repeated failures; cooling down: {}",
            state.last_error.as_deref().unwrap_or("no error recorded")
        ));
    }
    None
}

/// Stops the unit of `phase`, if it runs; returns whether nothing of it is left.
async fn stop_phase(phase: Phase) -> bool {
    match phase {
        Phase::Running { unit, .. } => unit.stop().await,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::state::MountState;
    use crate::store::LocalStore;

    fn mount_state(mountpoint: &Path, generation: Option<u64>, head: Option<u64>) -> MountState {
        let store = "file:///x".to_string();
        let mut state = MountState::started(mountpoint.into(), store, Duration::from_secs(1));
        state.generation = generation;
        state.tree_id = generation.map(|g| format!("{g:064}"));
        state.head = head;
        state.poll_succeeded();
        state.updated_ms = now_ms();
        state
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

    /// Issue 16: with HDFS down every host used to refuse to start (the gate wanted the
    /// store's head), so a crash of a scheduler during an outage stopped scheduling. Now a
    /// mount serving at least the newest generation any host ran is admitted; one serving
    /// less stays out, and so does every host when nobody recorded what it runs.
    #[test]
    fn an_unreadable_store_admits_only_the_newest_generation_any_host_ran() {
        let mnt = Path::new("/mnt/dags");
        let offline = |generation| MountState {
            online: false,
            ..mount_state(mnt, Some(generation), Some(generation))
        };
        let down = || Err::<Option<u64>, _>("connection refused".to_string());
        let floor = |generation| Floor {
            generation,
            candidate: "b".into(),
        };
        assert_eq!(
            admit(&offline(2), down(), Some(&floor(2))).unwrap().0,
            Some(2)
        );
        assert_eq!(
            admit(&offline(3), down(), Some(&floor(2))).unwrap().0,
            Some(3)
        );
        let err = admit(&offline(1), down(), Some(&floor(2))).unwrap_err();
        assert!(
            err.contains("b runs generation 2") && err.contains("serves 1"),
            "{err}"
        );
        let err = admit(&offline(2), down(), None).unwrap_err();
        assert!(err.contains("no host has recorded"), "{err}");
        // With the head readable, the head decides, whatever the record says.
        assert!(admit(&offline(2), Ok(Some(2)), Some(&floor(2)))
            .unwrap_err()
            .contains("offline"));
        let current = mount_state(mnt, Some(2), Some(2));
        assert_eq!(admit(&current, Ok(Some(2)), None).unwrap().0, Some(2));
        assert!(admit(&current, Ok(Some(3)), Some(&floor(3))).is_err());
    }

    /// /healthz of failover: 503 while the coordinator is unreachable for fence_after, and
    /// while cooling down; 200 for a healthy standby or leader.
    #[test]
    fn health_turns_bad_on_an_unreachable_coordinator_and_while_cooling_down() {
        let mut state = controller_state();
        let fence = Duration::from_secs(20);
        assert_eq!(health_problem(&state, None, fence), None);
        assert_eq!(
            health_problem(&state, Some(Duration::from_secs(19)), fence),
            None
        );
        state.last_error = Some("heartbeat not renewed: timed out".into());
        let problem = health_problem(&state, Some(Duration::from_secs(21)), fence).unwrap();
        assert!(
            problem.contains("21s") && problem.contains("timed out"),
            "{problem}"
        );
        state.role = Role::CoolingDown;
        assert!(health_problem(&state, None, fence)
            .unwrap()
            .contains("cooling down"));
        state.role = Role::Standby;
        assert_eq!(health_problem(&state, None, fence), None);
    }

    /// Bug 8: the gate believed a mount alive when its pid existed; after a crash the pid
    /// belongs to another process and the dead mount's "current" state passed.
    #[tokio::test]
    async fn gate_refuses_a_dead_mounts_state_whose_pid_was_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let states = StateDir::at(dir.path().join("run"));
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let mnt = dir.path().join("mnt");
        crate::testutil::publish_files(&store, dir.path(), &[("a.py", "x")]).await;
        // Written by a mount that crashed: the file is there, its lock is held by nobody,
        // and its pid is a live process (this one).
        crate::runtime::write_json(&states.path(&mnt), &mount_state(&mnt, Some(1), Some(1)))
            .unwrap();
        let err = gate(&store, &states, &mnt, Duration::from_secs(5), None)
            .await
            .unwrap_err();
        assert!(
            err.contains("exited") || err.contains("not running"),
            "{err}"
        );
    }

    fn controller_state() -> ControllerState {
        ControllerState {
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
        }
    }

    #[test]
    fn state_files_of_running_controllers_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let state = controller_state();
        let path = state_file(dir.path(), &state.store);
        let owned = StateFile::<ControllerState>::claim(&path).unwrap();
        owned.write(&state).unwrap();
        assert_eq!(
            ControllerState::read_all(dir.path()).unwrap(),
            vec![state.clone()]
        );
        // A crashed controller whose pid now belongs to another process (here: this one)
        // is not listed: it no longer holds the lock.
        drop(owned);
        assert!(ControllerState::read_all(dir.path()).unwrap().is_empty());
    }
}
