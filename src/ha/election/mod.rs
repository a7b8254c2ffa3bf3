//! Leader election over a [`Coordinator`]: a register of leadership records (heartbeats)
//! replaced by compare-and-swap, kept in the store or in Airflow's metadata database.
//!
//! The leader renews by claiming the version after its own every `interval`; a standby that
//! has seen the newest version unchanged for long enough on its own clock takes over by
//! claiming the version after it. The coordinator lets exactly one claim from a version win,
//! so a deposed leader learns it on its next renewal and can never extend its lease past a
//! takeover. Each record carries the **epoch** (fencing token) of its writer's term, the
//! sequence number of the claim that started it, and the writer's lease length, which
//! standbys honour whatever their own settings say. `docs/DESIGN.md` ("Failover protocol")
//! has the safety argument.
//!
//! Time is passed in by the caller as [`Clock`] readings (`CLOCK_BOOTTIME`, which keeps
//! counting while a process is stopped or the host is suspended) and only ever compared with
//! readings of the same host.

mod coordinator;
mod database;
mod store;

use std::time::Duration;

pub use coordinator::{Beat, Claimed, Coordinator, CoordinatorError, Snapshot, Version};
pub use database::{
    DatabaseCoordinator, LeaseRow, LeaseTable, SqlCoordinator, SqlLeaseTable, LEASE_TABLE,
    LEASE_TABLE_DDL,
};
pub use store::{beat_key, StoreCoordinator, BEATS_DIR};

/// A reading of this host's `CLOCK_BOOTTIME`: monotonic, never set back, and counting while
/// the process is paused or the host suspended (so a paused leader cannot believe its lease
/// is still young). Readings are never compared across hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Clock(pub Duration);

impl Clock {
    /// Now.
    pub fn now() -> Clock {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Clock(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Clock) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// This reading plus `d`.
    pub fn after(self, d: Duration) -> Clock {
        Clock(self.0.saturating_add(d))
    }
}

/// Election timing (see [`crate::config::FailoverConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Renewal period, and the bound on each election step.
    pub interval: Duration,
    /// Lease length from the start of the last successful renewal.
    pub fence_after: Duration,
    /// Time between SIGTERM and SIGKILL when the unit is stopped.
    pub kill_grace: Duration,
    /// Slack a standby adds on top of the leader's advertised lease and grace.
    pub safety_margin: Duration,
    /// Silence after which a standby takes over (at least the advertised lease + grace +
    /// margin of the leader it waits on).
    pub takeover_after: Duration,
}

impl From<&crate::config::FailoverConfig> for Timing {
    fn from(config: &crate::config::FailoverConfig) -> Timing {
        Timing {
            interval: config.interval,
            fence_after: config.fence_after,
            kill_grace: config.kill_grace,
            safety_margin: config.safety_margin,
            takeover_after: config.takeover_after,
        }
    }
}

impl Timing {
    /// How often a standby looks at the register: twice per interval, so it notices a new
    /// beat at most half an interval late.
    pub fn standby_poll(&self) -> Duration {
        self.interval / 2
    }

    /// How long a standby must see `beat` unchanged before taking over; `widest` is the
    /// longest lease + grace it has seen advertised, for a record it cannot read.
    pub fn wait_on(&self, beat: Option<&Beat>, widest: Duration) -> Duration {
        let hold = beat.and_then(Beat::advertised_hold).unwrap_or(widest);
        self.takeover_after.max(hold + self.safety_margin)
    }
}

/// Who this candidate is.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Candidate id, unique among the candidates.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Random, drawn once per process (see [`Beat::instance`]).
    pub instance: u64,
}

/// A term as leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The fencing token.
    pub epoch: u64,
    /// The newest version this leader wrote.
    pub version: Version,
    /// The unit must be stopped by this time (plus the kill grace) unless a renewal extends
    /// it.
    pub lease_until: Clock,
}

/// The newest record a standby has seen, and since when (on its own clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its version (`None`: the register is empty).
    pub version: Option<Version>,
    /// The register's change marker when it was seen.
    pub marker: u64,
    /// Its content, when readable.
    pub beat: Option<Beat>,
    /// When this candidate first saw this version.
    pub since: Clock,
    /// How long it must stay unchanged before a takeover.
    pub wait: Duration,
}

impl Seen {
    /// When a takeover becomes possible (unless the record is a release: at once).
    pub fn takeover_at(&self) -> Clock {
        if self.beat.as_ref().is_some_and(|b| b.released) {
            self.since
        } else {
            self.since.after(self.wait)
        }
    }
}

/// What a standby step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Another candidate leads (or may still); the newest record is as shown.
    Following(Seen),
    /// The leader is silent or gone, and this candidate was not eligible to take over.
    Vacant(Seen),
    /// This candidate took over.
    Elected(Term),
}

/// What a leader's renewal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is extended.
    Renewed,
    /// Another candidate took over, or the register changed behind this leader's back:
    /// stop the unit at once.
    Deposed(Option<Beat>),
}

/// Where a candidate reads the time: [`Clock::now`], or a test's or simulation's clock.
pub type ClockSource = Box<dyn Fn() -> Clock + Send + Sync>;

/// One candidate's view of the election, and the steps it takes on the coordinator.
pub struct Candidate<'a> {
    coordinator: &'a dyn Coordinator,
    me: Identity,
    timing: Timing,
    seen: Option<Seen>,
    /// The highest sequence number ever seen: a claim over an empty register goes above it.
    highest: u64,
    /// The longest lease + grace ever advertised to this candidate.
    widest: Duration,
    /// Set when this candidate takes over: what it saw before its term says nothing about
    /// the register after it (an empty lease row looks the same before a term and after an
    /// operator deleted it), so its next look counts as a change and its wait starts afresh.
    led: bool,
    clock: ClockSource,
}

impl std::fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("me", &self.me)
            .field("seen", &self.seen)
            .finish()
    }
}

impl<'a> Candidate<'a> {
    /// A candidate that has seen nothing yet: it waits a full takeover wait from its first
    /// look before it may take over, even over an empty register.
    pub fn new(coordinator: &'a dyn Coordinator, me: Identity, timing: Timing) -> Self {
        Candidate {
            coordinator,
            me,
            timing,
            seen: None,
            highest: 0,
            widest: Duration::ZERO,
            led: false,
            clock: Box::new(Clock::now),
        }
    }

    /// The same candidate reading time from `clock`.
    pub fn with_clock(mut self, clock: ClockSource) -> Self {
        self.clock = clock;
        self
    }

    /// The newest record seen, if any look succeeded yet.
    pub fn seen(&self) -> Option<&Seen> {
        self.seen.as_ref()
    }

    /// The timing this candidate runs with.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Bounds `step` by `bound`: a step that hangs counts as failed (and may still take
    /// effect, like any failed claim).
    async fn bounded<T>(
        &self,
        op: &'static str,
        bound: Duration,
        step: impl std::future::Future<Output = Result<T, CoordinatorError>>,
    ) -> Result<T, CoordinatorError> {
        match tokio::time::timeout(bound, step).await {
            Ok(result) => result,
            Err(_) => Err(CoordinatorError::TimedOut {
                op,
                url: self.coordinator.url().to_string(),
                bound,
            }),
        }
    }

    /// Looks at the register. A new version's `since` is read *after* the read answered, so
    /// it is never earlier than the moment its writer started writing it: the standby's wait
    /// never starts early. Any change (a new beat, a deleted one, a rewrite: a new version or
    /// a new marker) restarts the wait, and so does the first look after a term of its own.
    async fn observe(&mut self) -> Result<&Seen, CoordinatorError> {
        let read = self.coordinator.read();
        let snapshot = self
            .bounded("reading the heartbeat", self.timing.interval, read)
            .await?;
        let now = (self.clock)();
        if let Some(version) = snapshot.version {
            self.highest = self.highest.max(version.seq);
        }
        if let Some(hold) = snapshot.beat.as_ref().and_then(Beat::advertised_hold) {
            self.widest = self.widest.max(hold);
        }
        let led = std::mem::take(&mut self.led);
        let changed = led
            || self
                .seen
                .as_ref()
                .is_none_or(|s| s.version != snapshot.version || s.marker != snapshot.marker);
        if changed {
            let wait = self.timing.wait_on(snapshot.beat.as_ref(), self.widest);
            self.seen = Some(Seen {
                version: snapshot.version,
                marker: snapshot.marker,
                beat: snapshot.beat,
                since: now,
                wait,
            });
        }
        Ok(self.seen.as_ref().expect("just set"))
    }

    /// One standby step: look at the register, and take over when the newest record is a
    /// release or has not changed for its wait, and `eligible` (healthy, mount current)
    /// allows it.
    pub async fn standby_step(&mut self, eligible: bool) -> Result<Standing, CoordinatorError> {
        let seen = self.observe().await?.clone();
        let started = (self.clock)();
        if started < seen.takeover_at() {
            return Ok(Standing::Following(seen));
        }
        if !eligible {
            return Ok(Standing::Vacant(seen));
        }
        let seq = seen.version.map_or(self.highest + 1, |v| v.seq + 1);
        let beat = self.beat(seq, false, None, None);
        let claim = self.coordinator.claim(seen.version, seq, &beat);
        match self
            .bounded("taking over", self.timing.interval, claim)
            .await?
        {
            Claimed::Won(version) => {
                tracing::info!(epoch = seq, "took over leadership");
                self.highest = self.highest.max(seq);
                self.led = true;
                self.coordinator.tidy(version, true).await;
                Ok(Standing::Elected(Term {
                    epoch: seq,
                    version,
                    lease_until: started.after(self.timing.fence_after),
                }))
            }
            // A takeover of ours whose reply was lost: its start is not known, so it gives
            // no lease; it is a change like any other, and the wait starts again.
            Claimed::Landed(_) | Claimed::Lost(_) => {
                self.observe().await?;
                Ok(Standing::Following(self.seen.clone().expect("observed")))
            }
        }
    }

    fn beat(
        &self,
        epoch: u64,
        released: bool,
        generation: Option<u64>,
        tree_id: Option<String>,
    ) -> Beat {
        Beat {
            epoch,
            owner: self.me.id.clone(),
            host: self.me.host.clone(),
            pid: self.me.pid,
            instance: self.me.instance,
            released,
            generation,
            tree_id,
            lease_ms: Some(self.timing.fence_after.as_millis() as u64),
            kill_grace_ms: Some(self.timing.kill_grace.as_millis() as u64),
        }
    }

    /// Writes the next record of `term`. The lease runs from when the step began, never from
    /// the (later) moment the coordinator answered, and only a claim made in this step
    /// extends it. The step is bounded by the interval and by what is left of the lease.
    pub async fn renew(
        &mut self,
        term: &mut Term,
        generation: Option<u64>,
        tree_id: Option<String>,
    ) -> Result<Renewal, CoordinatorError> {
        let started = (self.clock)();
        let bound = self
            .timing
            .interval
            .min(term.lease_until.since(started))
            .max(Duration::from_millis(1));
        let beat = self.beat(term.epoch, false, generation, tree_id);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let seq = term.version.seq + 1;
            let claim = self.coordinator.claim(Some(term.version), seq, &beat);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .bounded(
                    "renewing the heartbeat",
                    left.max(Duration::from_millis(1)),
                    claim,
                )
                .await?
            {
                Claimed::Won(version) => {
                    term.version = version;
                    term.lease_until = started.after(self.timing.fence_after);
                    self.highest = self.highest.max(seq);
                    self.coordinator.tidy(version, false).await;
                    return Ok(Renewal::Renewed);
                }
                // An earlier renewal of this term landed after it was given up for lost: the
                // chain is ours, but that beat may be older than this step; claim the next.
                Claimed::Landed(version) => term.version = version,
                Claimed::Lost(found) => return Ok(Renewal::Deposed(found)),
            }
        }
    }

    /// Gives leadership up after the unit has stopped: a released record lets a standby take
    /// over at once. Best effort: without it, standbys take over after their wait.
    pub async fn release(&mut self, term: &Term) -> Result<(), CoordinatorError> {
        let beat = self.beat(term.epoch, true, None, None);
        let seq = term.version.seq + 1;
        let claim = self.coordinator.claim(Some(term.version), seq, &beat);
        self.bounded("releasing leadership", self.timing.interval, claim)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
