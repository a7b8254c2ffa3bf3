//! Deterministic simulation of `dagfs failover` (single-active mode): several candidates,
//! each with its own clock, settings, controller, guard and unit, over an in-memory store
//! (or lease row) that answers the real [`StoreCoordinator`] (or [`DatabaseCoordinator`])
//! and the real [`Candidate`] one operation at a time in a seeded order, with faults:
//!
//! - pauses of any length: the whole process tree (`SIGSTOP`, the clock keeps counting) or
//!   the whole host frozen with its clock (a VM stopped and continued);
//! - crashes of a controller (its guard sees its stdin close) or of the whole host, restarts,
//!   candidates joining late and leaving;
//! - store calls that fail before doing the work, that do the work and lose the reply, and
//!   that take longer than the caller waits (and land later);
//! - the heartbeat directory emptied, a beat deleted or rewritten with garbage behind the
//!   protocol's back (the database: the row deleted, or rewritten with garbage);
//! - with the database coordinator, statements the caller gave up on are aborted by the
//!   server's statement timeout once they are older than the host's interval, or (half of
//!   them: delayed on the network before the server saw them) land later anyway;
//! - a different valid `[failover]` per candidate (a rolling change).
//!
//! Store calls never time out by the caller's clock here (the runtime's timer is never
//! turned): a slow call is one the scheduler answers late, or answers with a timeout while
//! it stays in flight and lands later.
//!
//! Checked after every step: no guard asked to start a unit while one runs on its host, and
//! never two units executing at once, except a unit whose host has just resumed, within the
//! bound `docs/DESIGN.md` states (one guard tick for a process pause; for a host frozen with
//! its clock, its lease + kill grace on its own clock, which one check normally cuts short). Liveness: once faults stop and one healthy candidate remains,
//! it runs the unit within its takeover wait + 2 intervals + 1 s.
//!
//! One test per coordinator. `DAGFS_SIM_SCHEDULES` (default 10,000 each) sets the number of
//! schedules, `DAGFS_SIM_BASE_SEED` the first seed; a failure prints its seed and test, and
//! `DAGFS_SIM_SEED=<seed>` replays exactly that schedule with its event trace.
//!
//! `DAGFS_SIM_TAMPER_ONLY=1` runs another family of schedules: no pauses, freezes or crashes,
//! the heartbeats (the row) still deleted and rewritten, and no allowance for the tampering:
//! it attacks the claim that tampering under running controllers never runs two units, which
//! holds only in part (`docs/DESIGN.md`, "Stated bounds"), so it is not in the suite.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use dagfs::election::{
    Candidate, Clock, Coordinator, CoordinatorError, DatabaseCoordinator, Identity, LeaseRow,
    LeaseTable, Renewal, Standing, StoreCoordinator, Timing, Version, BEATS_DIR,
};
use dagfs::store::{EntryInfo, EntryKind, ErrorKind, Overwrite, Store, StoreError, StoreResult};
use dagfs::supervise::kill_deadline;

/// Simulated time per step.
const STEP: Duration = Duration::from_millis(50);
/// Length of one schedule, and of its fault phase.
const RUN: Duration = Duration::from_secs(90);
const FAULTS_UNTIL: Duration = Duration::from_secs(60);

/// A small deterministic generator (SplitMix64), so a seed means the same schedule on every
/// machine and every version of any crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

// ---------------------------------------------------------------------------------------
// The store: a map of files, and a queue of operations waiting for the scheduler.

#[derive(Clone, Debug)]
enum Op {
    Put(String, Bytes),
    Read(String),
    List(String),
    Delete(String),
    Stat(String),
    Mkdirs,
    /// The database coordinator's statements on the lease row.
    Select,
    Insert(LeaseRow),
    Update(Version, LeaseRow),
}

impl Op {
    fn is_statement(&self) -> bool {
        matches!(self, Op::Select | Op::Insert(_) | Op::Update(..))
    }
}

struct Pending {
    host: usize,
    op: Op,
    reply: Option<oneshot::Sender<StoreResult<Answer>>>,
    /// Simulated time it was sent, and the host's statement timeout (its interval).
    sent: Duration,
    statement_timeout: Duration,
}

enum Answer {
    Done,
    Bytes(Bytes),
    List(Vec<EntryInfo>),
    Deleted(bool),
    Stat(EntryInfo),
    Row(Option<LeaseRow>),
    Applied(bool),
}

#[derive(Default)]
struct Files {
    files: BTreeMap<String, (Bytes, u64)>,
    writes: u64,
    /// The beats directory's modification time: the write counter at its last change.
    dir_changed: u64,
    /// Whether the beats directory exists.
    dir_exists: bool,
    /// The database coordinator's lease row.
    row: Option<LeaseRow>,
}

impl Files {
    fn apply(&mut self, op: &Op) -> StoreResult<Answer> {
        match op {
            Op::Put(key, data) => {
                if self.files.contains_key(key) {
                    return Err(StoreError::new(
                        ErrorKind::AlreadyExists,
                        "put",
                        key,
                        "exists",
                    ));
                }
                self.changed();
                self.dir_exists = true;
                self.files.insert(key.clone(), (data.clone(), self.writes));
                Ok(Answer::Done)
            }
            Op::Read(key) => match self.files.get(key) {
                Some((data, _)) => Ok(Answer::Bytes(data.clone())),
                None => Err(StoreError::new(ErrorKind::NotFound, "read", key, "missing")),
            },
            Op::List(dir) => {
                let prefix = format!("{dir}/");
                let entries = self
                    .files
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, (data, written))| EntryInfo {
                        key: k.clone(),
                        kind: EntryKind::File,
                        len: data.len() as u64,
                        modified: UNIX_EPOCH + Duration::from_millis(*written),
                        mode: 0o644,
                    })
                    .collect();
                Ok(Answer::List(entries))
            }
            Op::Delete(key) => {
                let existed = self.files.remove(key).is_some();
                if existed {
                    self.changed();
                }
                Ok(Answer::Deleted(existed))
            }
            Op::Mkdirs => {
                if !self.dir_exists {
                    self.dir_exists = true;
                    self.changed();
                }
                Ok(Answer::Done)
            }
            Op::Select => Ok(Answer::Row(self.row.clone())),
            Op::Insert(row) => {
                let inserted = self.row.is_none();
                if inserted {
                    self.row = Some(row.clone());
                }
                Ok(Answer::Applied(inserted))
            }
            Op::Update(expected, row) => {
                let matched = self
                    .row
                    .as_ref()
                    .is_some_and(|r| r.seq == expected.seq && r.tag == expected.tag);
                if matched {
                    self.row = Some(row.clone());
                }
                Ok(Answer::Applied(matched))
            }
            Op::Stat(key) => {
                if !self.dir_exists {
                    return Err(StoreError::new(ErrorKind::NotFound, "stat", key, "missing"));
                }
                Ok(Answer::Stat(EntryInfo {
                    key: key.clone(),
                    kind: EntryKind::Dir,
                    len: 0,
                    modified: UNIX_EPOCH + Duration::from_millis(self.dir_changed),
                    mode: 0o755,
                }))
            }
        }
    }

    fn changed(&mut self) {
        self.writes += 1;
        self.dir_changed = self.writes;
    }

    /// Writes behind the protocol's back (an operator, a restore).
    fn overwrite(&mut self, key: &str, data: Bytes) {
        self.changed();
        self.files.insert(key.to_string(), (data, self.writes));
    }

    /// Deletes behind the protocol's back.
    fn remove(&mut self, key: &str) {
        if self.files.remove(key).is_some() {
            self.changed();
        }
    }
}

#[derive(Default)]
struct Shared {
    files: Files,
    pending: Vec<Pending>,
    /// Simulated time, for statement timeouts.
    now: Duration,
    /// What the controllers did, for the trace (kept only while tracing).
    notes: Vec<String>,
    tracing: bool,
}

type World = Arc<Mutex<Shared>>;

fn lock(world: &World) -> MutexGuard<'_, Shared> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

/// One host's view of the simulated store (and lease row): every call waits until the
/// scheduler answers it.
#[derive(Debug)]
struct SimStore {
    world: WorldRef,
    host: usize,
    statement_timeout: Duration,
}

#[derive(Clone)]
struct WorldRef(World);

impl std::fmt::Debug for WorldRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sim")
    }
}

impl SimStore {
    async fn call(&self, op: Op) -> StoreResult<Answer> {
        let (tx, rx) = oneshot::channel();
        {
            let mut world = lock(&self.world.0);
            let sent = world.now;
            world.pending.push(Pending {
                host: self.host,
                op,
                reply: Some(tx),
                sent,
                statement_timeout: self.statement_timeout,
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::new(
                ErrorKind::Unavailable,
                "call",
                "",
                "dropped",
            ))
        })
    }
}

fn unsupported<T>() -> StoreResult<T> {
    Err(StoreError::new(
        ErrorKind::Other,
        "sim",
        "",
        "not simulated",
    ))
}

#[async_trait]
impl Store for SimStore {
    fn url(&self) -> &str {
        "sim://"
    }
    async fn put(&self, key: &str, data: Bytes, overwrite: Overwrite) -> StoreResult<()> {
        assert_eq!(overwrite, Overwrite::Deny, "the election never overwrites");
        self.call(Op::Put(key.into(), data)).await.map(|_| ())
    }
    async fn create_exclusive(&self, _: &str, _: Bytes) -> StoreResult<()> {
        unsupported()
    }
    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        match self.call(Op::Read(key.into())).await? {
            Answer::Bytes(b) => Ok(b),
            _ => unreachable!(),
        }
    }
    async fn read_range(&self, _: &str, _: u64, _: u64) -> StoreResult<Bytes> {
        unsupported()
    }
    async fn stat(&self, key: &str) -> StoreResult<EntryInfo> {
        match self.call(Op::Stat(key.into())).await? {
            Answer::Stat(e) => Ok(e),
            _ => unreachable!(),
        }
    }
    async fn list(&self, key: &str) -> StoreResult<Vec<EntryInfo>> {
        match self.call(Op::List(key.into())).await? {
            Answer::List(l) => Ok(l),
            _ => unreachable!(),
        }
    }
    async fn rename(&self, _: &str, _: &str, _: Overwrite) -> StoreResult<()> {
        unsupported()
    }
    async fn delete(&self, key: &str, _: bool) -> StoreResult<bool> {
        match self.call(Op::Delete(key.into())).await? {
            Answer::Deleted(d) => Ok(d),
            _ => unreachable!(),
        }
    }
    async fn mkdirs(&self, key: &str) -> StoreResult<()> {
        assert_eq!(key, BEATS_DIR);
        self.call(Op::Mkdirs).await.map(|_| ())
    }
}

/// The lease row as the database coordinator sees it: the same calls, answered by the same
/// scheduler with the same faults.
#[async_trait]
impl LeaseTable for SimStore {
    fn url(&self) -> &str {
        "sim-db://"
    }
    async fn select(&self) -> Result<Option<LeaseRow>, CoordinatorError> {
        match self.call(Op::Select).await? {
            Answer::Row(row) => Ok(row),
            _ => unreachable!(),
        }
    }
    async fn insert(&self, row: &LeaseRow) -> Result<bool, CoordinatorError> {
        match self.call(Op::Insert(row.clone())).await? {
            Answer::Applied(done) => Ok(done),
            _ => unreachable!(),
        }
    }
    async fn update(&self, expected: Version, row: &LeaseRow) -> Result<bool, CoordinatorError> {
        match self.call(Op::Update(expected, row.clone())).await? {
            Answer::Applied(done) => Ok(done),
            _ => unreachable!(),
        }
    }
}

/// Which coordinator a schedule runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Store,
    Database,
}

// ---------------------------------------------------------------------------------------
// Hosts: a clock, a guard and a unit (plain state, stepped by the scheduler), and a
// controller (an async task running the real election code).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PauseKind {
    /// SIGSTOP of the whole tree: the boot clock keeps counting.
    Process,
    /// The host frozen with its clock (VM stop/cont).
    Frozen,
}

#[derive(Debug)]
struct Unit {
    epoch: u64,
    /// SIGTERM received at (host clock), and when it would exit by itself.
    exits_at: Option<Clock>,
    /// It ignores SIGTERM this long (a scheduler finishing its loop).
    shutdown: Duration,
}

#[derive(Debug, Default)]
struct Guard {
    lease_until: Option<Clock>,
    /// SIGKILL at (host clock), once stopping.
    kill_at: Option<Clock>,
    unit: Option<Unit>,
}

/// What a controller asks of its guard.
#[derive(Debug)]
enum Ask {
    Start(u64, Clock, Duration),
    Extend(Clock),
    Stop,
    Kill,
}

struct Host {
    timing: Timing,
    clock: Arc<Mutex<Clock>>,
    paused: Option<(PauseKind, Duration)>,
    /// True time of the last resume from each kind of pause.
    resumed: [Option<Duration>; 2],
    guard: Guard,
    asks: Arc<Mutex<Vec<Ask>>>,
    /// Whether the unit runs, as the controller learns it (a guard's exit).
    running: Arc<Mutex<bool>>,
    controller: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// The host will not come back (left the cluster, or the survivor rule of the end).
    gone: bool,
    /// A safety violation the guard saw (a start asked while a unit runs), for
    /// [`Sim::check_safety`] to report with the seed.
    violation: Option<String>,
}

impl Host {
    fn now(&self) -> Clock {
        *self.clock.lock().unwrap()
    }

    fn executing(&self) -> bool {
        self.guard.unit.is_some() && self.paused.is_none()
    }

    /// The guard's work for one step: apply the controller's asks, stop on an expired lease
    /// or a gone controller, kill at the deadline; the unit exits on SIGTERM after its own
    /// shutdown time.
    fn step_guard(&mut self, controller_alive: bool) {
        let now = self.now();
        let grace = self.timing.kill_grace;
        let asks: Vec<Ask> = std::mem::take(&mut *self.asks.lock().unwrap());
        for ask in asks {
            match ask {
                Ask::Start(epoch, lease, shutdown) => {
                    if let Some(running) = &self.guard.unit {
                        // A real guard per start: this would run two units on one host.
                        self.violation.get_or_insert(format!(
                            "a second unit on one host: asked to start epoch {epoch} while the unit of epoch {} runs",
                            running.epoch
                        ));
                        continue;
                    }
                    self.guard = Guard {
                        lease_until: Some(lease),
                        kill_at: None,
                        unit: Some(Unit {
                            epoch,
                            exits_at: None,
                            shutdown,
                        }),
                    };
                }
                Ask::Extend(lease) => self.guard.lease_until = Some(lease),
                Ask::Stop => self.stop(now, kill_deadline(now, self.guard.lease_until, grace)),
                Ask::Kill => self.stop(now, now),
            }
        }
        if self.guard.unit.is_none() {
            return;
        }
        let expired = self.guard.lease_until.is_some_and(|l| now >= l);
        if expired || !controller_alive {
            self.stop(now, kill_deadline(now, self.guard.lease_until, grace));
        }
        let unit = self.guard.unit.as_ref().expect("checked");
        let killed = self.guard.kill_at.is_some_and(|k| now >= k);
        let exited = unit.exits_at.is_some_and(|e| now >= e);
        if killed || exited {
            self.guard = Guard::default();
        }
        *self.running.lock().unwrap() = self.guard.unit.is_some();
    }

    fn stop(&mut self, now: Clock, kill_at: Clock) {
        let Some(unit) = &mut self.guard.unit else {
            return;
        };
        if unit.exits_at.is_none() {
            unit.exits_at = Some(now.after(unit.shutdown));
        }
        self.guard.kill_at = Some(self.guard.kill_at.map_or(kill_at, |k| k.min(kill_at)));
    }
}

/// Sleeps until the host clock reaches `until` (the scheduler polls every step).
async fn sleep_until(clock: &Arc<Mutex<Clock>>, until: Clock) {
    std::future::poll_fn(|_| {
        if *clock.lock().unwrap() >= until {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The controller of `dagfs failover` as `src/ha/failover.rs` runs it, over the real election:
/// standby steps every half interval and exactly at the takeover time; a leader starts the
/// unit with its lease, renews every interval (a quarter after a failure), kills the unit
/// at once when deposed, and lets the guard fence it when the lease runs out.
#[allow(clippy::too_many_arguments)]
async fn controller(
    host: usize,
    timing: Timing,
    clock: Arc<Mutex<Clock>>,
    asks: Arc<Mutex<Vec<Ask>>>,
    running: Arc<Mutex<bool>>,
    world: World,
    instance: u64,
    shutdown: Duration,
    kind: Kind,
) {
    // Leaked: the candidate borrows its coordinator, which borrows its store (a few hundred
    // bytes per controller start).
    let store: &'static SimStore = Box::leak(Box::new(SimStore {
        world: WorldRef(world.clone()),
        host,
        statement_timeout: timing.interval,
    }));
    let coordinator: &'static dyn Coordinator = match kind {
        Kind::Store => Box::leak(Box::new(StoreCoordinator::new(store))),
        Kind::Database => Box::leak(Box::new(DatabaseCoordinator::new(SimStore {
            world: WorldRef(world),
            host,
            statement_timeout: timing.interval,
        }))),
    };
    let me = Identity {
        id: format!("h{host}"),
        host: format!("h{host}"),
        pid: 100 + host as u32,
        instance,
    };
    let source = clock.clone();
    let mut candidate = Candidate::new(coordinator, me, timing)
        .with_clock(Box::new(move || *source.lock().unwrap()));
    let now = || *clock.lock().unwrap();
    let ask = |a: Ask| asks.lock().unwrap().push(a);
    let note = |what: String| {
        let mut world = lock(&store.world.0);
        if world.tracing {
            world.notes.push(format!("h{host} {what}"));
        }
    };
    loop {
        let standing = candidate.standby_step(true).await;
        note(format!("standby step: {standing:?}"));
        let wake = match standing {
            Ok(Standing::Elected(mut term)) => {
                ask(Ask::Start(term.epoch, term.lease_until, shutdown));
                *running.lock().unwrap() = true;
                let mut next = now().after(timing.interval);
                loop {
                    let lease = term.lease_until;
                    sleep_until(&clock, next.min(lease)).await;
                    if now() >= lease {
                        ask(Ask::Stop); // the guard is fencing already
                        break;
                    }
                    let renewal = candidate.renew(&mut term, None, None).await;
                    note(format!("renewal: {renewal:?} {term:?}"));
                    match renewal {
                        Ok(Renewal::Renewed) => {
                            ask(Ask::Extend(term.lease_until));
                            next = now().after(timing.interval);
                            // The unit exited (its guard fenced it during a slow renewal):
                            // the controller restarts it on the renewed lease.
                            if !*running.lock().unwrap() && now() < term.lease_until {
                                ask(Ask::Start(term.epoch, term.lease_until, shutdown));
                            }
                        }
                        Ok(Renewal::Deposed(_)) => {
                            ask(Ask::Kill);
                            break;
                        }
                        Err(_) => next = now().after(timing.interval / 4),
                    }
                    if now() >= term.lease_until {
                        ask(Ask::Stop);
                        break;
                    }
                }
                now()
            }
            Ok(Standing::Following(seen)) | Ok(Standing::Vacant(seen)) => {
                now().after(timing.standby_poll()).min(seen.takeover_at())
            }
            Err(_) => now().after(timing.standby_poll()),
        };
        note(format!("sleeps until {wake:?} (now {:?})", now()));
        sleep_until(&clock, wake).await;
    }
}

// ---------------------------------------------------------------------------------------
// The scheduler.

struct Sim {
    kind: Kind,
    rng: Rng,
    world: World,
    hosts: Vec<Host>,
    time: Duration,
    trace: Vec<String>,
    verbose: bool,
    survivor: Option<usize>,
    /// When the survivor was chosen.
    faults_ended: Option<Duration>,
    /// When an operator last deleted or rewrote heartbeats.
    tampered: Option<Duration>,
    /// `DAGFS_SIM_TAMPER_ONLY`: no pauses, freezes or crashes (every controller runs), and
    /// no allowance for tampering: the claim that deleting heartbeats by hand under running
    /// controllers never runs two units, checked strictly.
    tamper_only: bool,
}

fn timings(rng: &mut Rng) -> Timing {
    // Valid per host (as config validation requires), different across hosts.
    // Fast and slow settings, so that a rolling change from one to the other is common.
    let interval = if rng.chance(0.5) {
        rng.millis(500, 1000)
    } else {
        rng.millis(2000, 5000)
    };
    let fence_after = interval * 2 + rng.millis(0, 2000);
    let kill_grace = rng.millis(200, 2000);
    let safety_margin = rng.millis(1000, 1500);
    let takeover_after = fence_after + kill_grace + safety_margin + rng.millis(0, 3000);
    Timing {
        interval,
        fence_after,
        kill_grace,
        safety_margin,
        takeover_after,
    }
}

/// The tightest valid setting with an interval in `interval_ms` and a kill grace in
/// `grace_ms`: fence_after = 2 x interval, takeover_after = fence_after + grace + 1 s.
fn tightest_timing(rng: &mut Rng, interval_ms: (u64, u64), grace_ms: (u64, u64)) -> Timing {
    let interval = rng.millis(interval_ms.0, interval_ms.1);
    let fence_after = interval * 2;
    let kill_grace = rng.millis(grace_ms.0, grace_ms.1);
    let safety_margin = Duration::from_secs(1);
    Timing {
        interval,
        fence_after,
        kill_grace,
        safety_margin,
        takeover_after: fence_after + kill_grace + safety_margin,
    }
}

impl Sim {
    fn new(seed: u64, trace: Trace, kind: Kind) -> Sim {
        let mut rng = Rng(seed);
        let world: World = Arc::default();
        lock(&world).tracing = trace != Trace::Off;
        let verbose = trace == Trace::Print;
        let count = 2 + rng.below(3) as usize;
        // One setting for all, a different one each, or a rolling change caught half-way:
        // the first host (which starts first, so usually leads) slow, the others at the
        // fastest timing they may validly have.
        let plan = rng.below(4);
        let shared = timings(&mut rng);
        let hosts = (0..count)
            .map(|h| {
                let timing = match plan {
                    0 => shared,
                    1 if h == 0 => tightest_timing(&mut rng, (4000, 5000), (1000, 2000)),
                    1 => tightest_timing(&mut rng, (500, 700), (200, 400)),
                    _ => timings(&mut rng),
                };
                Host {
                    timing,
                    clock: Arc::new(Mutex::new(Clock(Duration::from_secs(1000)))),
                    paused: None,
                    resumed: [None, None],
                    guard: Guard::default(),
                    asks: Arc::default(),
                    running: Arc::default(),
                    controller: None,
                    gone: false,
                    violation: None,
                }
            })
            .collect();
        let mut sim = Sim {
            kind,
            rng,
            world,
            hosts,
            time: Duration::ZERO,
            trace: Vec::new(),
            verbose,
            survivor: None,
            faults_ended: None,
            tampered: None,
            tamper_only: std::env::var_os("DAGFS_SIM_TAMPER_ONLY").is_some(),
        };
        for h in 0..sim.hosts.len() {
            // Some candidates join late.
            if h == 0 || sim.rng.chance(0.7) {
                sim.start_controller(h);
            }
        }
        sim
    }

    fn log(&mut self, line: String) {
        if !lock(&self.world).tracing {
            return;
        }
        let line = format!("{:>8.3}s {line}", self.time.as_secs_f64());
        if self.verbose {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    fn start_controller(&mut self, h: usize) {
        let host = &self.hosts[h];
        let shutdown = if self.rng.chance(0.5) {
            Duration::ZERO
        } else {
            self.rng.millis(0, 6000)
        };
        let future = controller(
            h,
            host.timing,
            host.clock.clone(),
            host.asks.clone(),
            host.running.clone(),
            self.world.clone(),
            self.rng.next(),
            shutdown,
            self.kind,
        );
        // Unconstrained: the scheduler polls every controller within one runtime task that
        // never yields, so tokio's cooperative budget would never be refilled.
        self.hosts[h].controller = Some(Box::pin(tokio::task::unconstrained(future)));
        let timing = self.hosts[h].timing;
        self.log(format!("h{h} controller starts with {timing:?}"));
    }

    fn fault(&mut self) {
        let n = self.hosts.len();
        let h = self.rng.below(n as u64) as usize;
        match self.rng.below(1000) {
            0..=8 if self.tamper_only => {}
            // Pauses of any length, most short, some far past every timeout.
            0..=5 if self.hosts[h].paused.is_none() => {
                let kind = if self.rng.chance(0.5) {
                    PauseKind::Process
                } else {
                    PauseKind::Frozen
                };
                let length = match self.rng.below(3) {
                    0 => self.rng.millis(50, 2000),
                    1 => self.rng.millis(2000, 15000),
                    _ => self.rng.millis(15000, 40000),
                };
                self.hosts[h].paused = Some((kind, self.time + length));
                self.log(format!("h{h} paused ({kind:?}) for {length:?}"));
            }
            6..=7 if self.hosts[h].controller.is_some() => {
                self.hosts[h].controller = None;
                self.log(format!("h{h} controller crashes"));
            }
            8 if self.hosts[h].controller.is_some() => {
                self.hosts[h].controller = None;
                self.hosts[h].guard = Guard::default();
                self.log(format!("h{h} host crashes (unit gone)"));
            }
            9..=13 if self.hosts[h].controller.is_none() && !self.hosts[h].gone => {
                self.start_controller(h);
            }
            14..=16 if self.kind == Kind::Database => {
                let mut world = lock(&self.world);
                let Some(row) = &mut world.files.row else {
                    return;
                };
                self.tampered = Some(self.time);
                if self.rng.chance(0.5) {
                    world.files.row = None;
                    drop(world);
                    self.log("operator deletes the lease row".into());
                } else {
                    row.beat = "{\"epoch\": garbage".into();
                    row.tag = self.rng.next() >> 1;
                    drop(world);
                    self.log("operator rewrites the lease row with garbage".into());
                }
            }
            14 => {
                let mut world = lock(&self.world);
                let prefix = format!("{BEATS_DIR}/");
                world.files.files.retain(|k, _| !k.starts_with(&prefix));
                world.files.dir_exists = false;
                world.files.changed();
                drop(world);
                self.tampered = Some(self.time);
                self.log("operator empties failover/beats".into());
            }
            15..=16 => {
                let mut world = lock(&self.world);
                let keys: Vec<String> = world.files.files.keys().cloned().collect();
                if keys.is_empty() {
                    return;
                }
                let key = keys[self.rng.below(keys.len() as u64) as usize].clone();
                self.tampered = Some(self.time);
                if self.rng.chance(0.5) {
                    world.files.remove(&key);
                    drop(world);
                    self.log(format!("operator deletes {key}"));
                } else {
                    world
                        .files
                        .overwrite(&key, Bytes::from_static(b"{\"epoch\": garbage"));
                    drop(world);
                    self.log(format!("operator rewrites {key} with garbage"));
                }
            }
            _ => {}
        }
    }

    /// Answers the store calls of running hosts in a random order, some late, some failing
    /// before or after the work.
    fn answer(&mut self, faults: bool) {
        let mut world = lock(&self.world);
        let mut pending = std::mem::take(&mut world.pending);
        let mut keep = Vec::new();
        let now = self.time;
        // Shuffle: a random interleaving of the hosts' calls.
        for i in (1..pending.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            pending.swap(i, j);
        }
        let mut lines = Vec::new();
        for mut call in pending {
            let paused = self.hosts[call.host].paused.is_some();
            let abandoned = call.reply.as_ref().is_none_or(|r| r.is_closed());
            // A statement its caller gave up on, older than the statement timeout: the
            // server aborted it, unless the network held it back before the server saw it.
            if abandoned
                && call.op.is_statement()
                && now > call.sent + call.statement_timeout
                && self.rng.chance(0.5)
            {
                lines.push(format!(
                    "h{} {:?} aborted by the statement timeout",
                    call.host, call.op
                ));
                continue;
            }
            // A paused host's calls are stuck in its send buffer, unless already sent.
            if (paused && !abandoned) || !self.rng.chance(0.6) {
                keep.push(call);
                continue;
            }
            let roll = if faults { self.rng.below(100) } else { 99 };
            let result = if roll < 3 {
                Err(StoreError::new(
                    ErrorKind::Unavailable,
                    "sim",
                    "",
                    "refused",
                ))
            } else if roll < 5 && call.reply.is_some() {
                // The caller stops waiting; the call is still on its way and lands later.
                lines.push(format!(
                    "h{} {:?} times out, still in flight",
                    call.host, call.op
                ));
                if let Some(reply) = call.reply.take() {
                    let _ = reply.send(Err(StoreError::new(ErrorKind::Timeout, "sim", "", "slow")));
                }
                keep.push(call);
                continue;
            } else {
                let result = world.files.apply(&call.op);
                if roll < 8 {
                    lines.push(format!("h{} {:?} done, reply lost", call.host, call.op));
                    Err(StoreError::new(ErrorKind::Timeout, "sim", "", "reply lost"))
                } else {
                    if !matches!(
                        call.op,
                        Op::Read(_) | Op::List(_) | Op::Stat(_) | Op::Mkdirs | Op::Select
                    ) {
                        lines.push(format!(
                            "h{} {:?} -> {}",
                            call.host,
                            call.op,
                            result.is_ok()
                        ));
                    }
                    result
                }
            };
            if let Some(reply) = call.reply.take() {
                let _ = reply.send(result);
            }
        }
        world.pending.extend(keep);
        drop(world);
        for line in lines {
            self.log(line);
        }
    }

    fn take_notes(&mut self) {
        let notes = std::mem::take(&mut lock(&self.world).notes);
        for note in notes {
            self.log(note);
        }
    }

    fn poll_controllers(&mut self, cx: &mut Context<'_>) {
        for host in &mut self.hosts {
            if host.paused.is_some() {
                continue;
            }
            if let Some(controller) = &mut host.controller {
                let _ = controller.as_mut().poll(cx);
            }
        }
    }

    fn advance(&mut self) {
        self.time += STEP;
        let time = self.time;
        lock(&self.world).now = time;
        let mut lines = Vec::new();
        for (h, host) in self.hosts.iter_mut().enumerate() {
            match host.paused {
                Some((kind, until)) if time >= until => {
                    host.paused = None;
                    host.resumed[kind as usize] = Some(time);
                    lines.push(format!("h{h} resumes"));
                    if kind == PauseKind::Process {
                        let mut clock = host.clock.lock().unwrap();
                        *clock = clock.after(STEP);
                    }
                }
                Some((PauseKind::Frozen, _)) => {}
                _ => {
                    let mut clock = host.clock.lock().unwrap();
                    *clock = clock.after(STEP);
                }
            }
        }
        for line in lines {
            self.log(line);
        }
    }

    fn step_guards(&mut self) {
        let mut lines = Vec::new();
        for (h, host) in self.hosts.iter_mut().enumerate() {
            if host.paused.is_some() {
                continue;
            }
            let before = host.guard.unit.as_ref().map(|u| u.epoch);
            let alive = host.controller.is_some();
            host.step_guard(alive);
            let after = host.guard.unit.as_ref().map(|u| u.epoch);
            if before != after {
                lines.push(match after {
                    Some(epoch) => format!("h{h} unit starts (epoch {epoch})"),
                    None => format!("h{h} unit gone"),
                });
            }
        }
        for line in lines {
            self.log(line);
        }
    }

    /// Whether a host's unit may still be executing on a stale lease after a resume, within
    /// the bound `docs/DESIGN.md` states for a host frozen with its clock: what was left of
    /// its lease on its own clock plus the kill grace, at most fence_after + kill_grace. A
    /// process pause gets no allowance here: the simulated guard acts in the step its host
    /// resumes, before the check (a real guard within one tick, `supervise::GUARD_TICK`).
    fn excused(&self, h: usize) -> bool {
        let host = &self.hosts[h];
        host.resumed[PauseKind::Frozen as usize].is_some_and(|at| {
            self.time <= at + host.timing.fence_after + host.timing.kill_grace + STEP
        })
    }

    fn check_safety(&self) -> Result<(), String> {
        if let Some((h, violation)) = self
            .hosts
            .iter()
            .enumerate()
            .find_map(|(h, host)| Some((h, host.violation.as_ref()?)))
        {
            return Err(format!(
                "h{h} at {:.3}s: {violation}",
                self.time.as_secs_f64()
            ));
        }
        let executing: Vec<usize> = (0..self.hosts.len())
            .filter(|&h| self.hosts[h].executing())
            .collect();
        if executing.len() < 2 {
            return Ok(());
        }
        if executing.iter().any(|&h| self.excused(h)) {
            return Ok(());
        }
        // Heartbeats deleted by hand while a takeover is in flight can let two claims of
        // one name both win; the leader whose beat was deleted learns it on its next
        // renewal and kills its unit: within its lease + kill grace (docs/DESIGN.md).
        let hold = self
            .hosts
            .iter()
            .map(|h| h.timing.fence_after + h.timing.kill_grace)
            .max()
            .unwrap_or_default();
        if !self.tamper_only
            && self
                .tampered
                .is_some_and(|at| self.time <= at + hold + STEP)
        {
            return Ok(());
        }
        Err(format!(
            "two units executing at {:.3}s: hosts {executing:?}",
            self.time.as_secs_f64()
        ))
    }

    /// After the fault phase: everything resumes, one candidate is kept, the others leave.
    fn end_faults(&mut self) {
        let n = self.hosts.len();
        let survivor = self.rng.below(n as u64) as usize;
        for h in 0..n {
            if let Some((kind, _)) = self.hosts[h].paused.take() {
                self.hosts[h].resumed[kind as usize] = Some(self.time);
            }
            if h == survivor {
                if self.hosts[h].controller.is_none() {
                    self.start_controller(h);
                }
            } else {
                self.hosts[h].gone = true;
                if self.rng.chance(0.5) {
                    self.hosts[h].controller = None;
                    self.hosts[h].guard = Guard::default();
                } else {
                    self.hosts[h].controller = None;
                }
            }
        }
        self.survivor = Some(survivor);
        self.faults_ended = Some(self.time);
        self.log(format!("faults end; h{survivor} is the one candidate left"));
    }

    /// The survivor must run the unit within the longest wait any candidate advertised +
    /// 2 intervals + 1 s of the end of the faults (plus what is left of a frozen lease).
    fn liveness_bound(&self) -> Duration {
        let survivor = &self.hosts[self.survivor.expect("chosen")].timing;
        let widest = self
            .hosts
            .iter()
            .map(|h| h.timing.fence_after + h.timing.kill_grace)
            .max()
            .unwrap_or_default();
        survivor.takeover_after.max(widest + survivor.safety_margin)
            + survivor.interval * 2
            + Duration::from_secs(1)
    }

    fn run(&mut self) -> Result<(), String> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while self.time < RUN {
            let faults = self.time < FAULTS_UNTIL;
            if faults {
                self.fault();
            } else if self.survivor.is_none() {
                self.end_faults();
            }
            self.advance();
            for _ in 0..2 {
                self.step_guards();
                self.poll_controllers(&mut cx);
                self.answer(faults);
                self.poll_controllers(&mut cx);
                self.take_notes();
                self.step_guards();
                self.check_safety()?;
            }
            if let (Some(s), Some(ended)) = (self.survivor, self.faults_ended) {
                if self.hosts[s].guard.unit.is_some() {
                    return Ok(());
                }
                if self.time > ended + self.liveness_bound() {
                    let pending: Vec<String> = lock(&self.world)
                        .pending
                        .iter()
                        .map(|p| format!("h{} {:?} answered={}", p.host, p.op, p.reply.is_none()))
                        .collect();
                    self.log(format!("pending calls: {pending:?}"));
                    for h in 0..self.hosts.len() {
                        let host = &self.hosts[h];
                        let line = format!(
                            "h{h}: clock {:?} paused {:?} controller {} unit {:?}",
                            host.now(),
                            host.paused,
                            host.controller.is_some(),
                            host.guard.unit
                        );
                        self.log(line);
                    }
                    return Err(format!(
                        "liveness: h{s} did not run the unit within {:?} of the end of faults",
                        self.liveness_bound()
                    ));
                }
            }
        }
        Err("the schedule ended before the survivor ran the unit".into())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

/// How much of a schedule to record.
#[derive(Clone, Copy, PartialEq)]
enum Trace {
    Off,
    Keep,
    Print,
}

/// Runs one schedule; on failure, the error and (unless `Off`) the event trace. A schedule
/// is a function of its seed, so a failure is traced by running it again. A panic anywhere
/// in the schedule (the real code's or the harness's) is a failure of that seed too, so
/// that it is reported with its seed and replay line like any other.
fn run_seed(seed: u64, trace: Trace, kind: Kind) -> Result<(), (String, Vec<String>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut sim = Sim::new(seed, trace, kind);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async { sim.run() })
    }));
    let result = outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|m| m.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(format!(
            "panicked at {:.3}s: {message}",
            sim.time.as_secs_f64()
        ))
    });
    result.map_err(|e| (e, std::mem::take(&mut sim.trace)))
}

/// Runs the schedules (or replays `DAGFS_SIM_SEED`) over coordinator `kind`; `test` names
/// the test for the replay line.
fn run_schedules(kind: Kind, test: &str) {
    if let Some(seed) = env_u64("DAGFS_SIM_SEED") {
        if let Err((error, _)) = run_seed(seed, Trace::Print, kind) {
            panic!("seed {seed}: {error}");
        }
        return;
    }
    let schedules = env_u64("DAGFS_SIM_SCHEDULES").unwrap_or(10_000);
    let base = env_u64("DAGFS_SIM_BASE_SEED").unwrap_or(1);
    let started = SystemTime::now();
    for seed in base..base + schedules {
        if let Err((error, _)) = run_seed(seed, Trace::Off, kind) {
            let (_, trace) = run_seed(seed, Trace::Keep, kind).expect_err("a schedule replays");
            let tail = trace[trace.len().saturating_sub(60)..].join("\n");
            let mode = match std::env::var_os("DAGFS_SIM_TAMPER_ONLY") {
                Some(_) => "DAGFS_SIM_TAMPER_ONLY=1 ",
                None => "",
            };
            panic!(
                "seed {seed} ({kind:?} coordinator): {error}\nlast events:\n{tail}\nreplay: {mode}DAGFS_SIM_SEED={seed} cargo test --test failover_sim {test} -- --nocapture"
            );
        }
    }
    eprintln!(
        "{kind:?} coordinator: {schedules} schedules (seeds {base}..{}), 0 violations, in {:?}",
        base + schedules,
        started.elapsed().unwrap_or_default()
    );
}

#[test]
fn simulated_schedules_never_run_two_units_and_a_survivor_leads() {
    run_schedules(
        Kind::Store,
        "simulated_schedules_never_run_two_units_and_a_survivor_leads",
    );
}

/// The same schedules over the database coordinator's lease row. Seed 5008 found a leader
/// whose term had ended taking over again at once over a row deleted by hand, while its
/// own unit was still stopping (attacked alone by `election::tests::
/// a_candidate_whose_term_ended_waits_again_over_a_row_deleted_by_hand`).
#[test]
fn database_coordinator_schedules_never_run_two_units_and_a_survivor_leads() {
    run_schedules(
        Kind::Database,
        "database_coordinator_schedules_never_run_two_units_and_a_survivor_leads",
    );
}
