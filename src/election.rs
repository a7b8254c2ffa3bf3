//! Leader election on the store alone: a numbered chain of heartbeat files, each name
//! claimed exactly once by an exclusive create.
//!
//! The leader renews by creating `failover/beats/<seq + 1>`; a standby that has seen the
//! newest beat `<seq>` unchanged for `takeover_after` on its own clock takes over by creating
//! that same next name. The NameNode lets exactly one of them succeed, so a deposed leader
//! learns it on its next renewal (`AlreadyExists`) and can never extend its lease past a
//! takeover. Each beat carries the **epoch** (fencing token) of its writer: a takeover writes
//! the previous epoch + 1. `docs/DESIGN.md` ("Failover protocol") has the safety argument.
//!
//! Time is passed in by the caller as [`Clock`] readings (`CLOCK_BOOTTIME`, which keeps
//! counting while a process is stopped or the host is suspended) and only ever compared with
//! readings of the same host.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{list_if_exists, ErrorKind, Store, StoreError};

/// Directory of the heartbeat chain, under the store root.
pub const BEATS_DIR: &str = "failover/beats";

/// How many of the newest beats the leader keeps (older ones are deleted as it renews).
const BEATS_KEPT: u64 = 4;

/// Why an election step failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The store failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The step did not finish within its time bound.
    #[error("{op} on {url} did not finish within {}", humantime::format_duration(*.bound))]
    TimedOut {
        /// What was being done.
        op: &'static str,
        /// The store.
        url: String,
        /// The bound.
        bound: Duration,
    },
}

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
        Clock(self.0 + d)
    }
}

/// The content of one heartbeat file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// Fencing token of the writer's term.
    pub epoch: u64,
    /// The writer's candidate id (`--id`, the host name by default).
    pub owner: String,
    /// The writer's host name.
    pub host: String,
    /// The writer's process id.
    pub pid: u32,
    /// The writer stopped its commands and gave up leadership: take over at once.
    pub released: bool,
    /// The generation the leader's commands run against, once started.
    pub generation: Option<u64>,
    /// Its tree id.
    pub tree_id: Option<String>,
}

/// Key of beat number `seq`.
pub fn beat_key(seq: u64) -> String {
    format!("{BEATS_DIR}/{seq:020}")
}

/// The beat numbers present in the store, ascending.
pub async fn beats(store: &dyn Store) -> Result<Vec<u64>, StoreError> {
    let mut seqs: Vec<u64> = list_if_exists(store, BEATS_DIR)
        .await?
        .iter()
        .filter_map(|e| e.name().parse().ok())
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Reads beat `seq`; `None` if it is not (yet) readable: a beat is visible under its name
/// while its writer still writes it.
pub async fn read_beat(store: &dyn Store, seq: u64) -> Option<Beat> {
    let bytes = store.read(&beat_key(seq)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a claim of a beat name won.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    Won,
    Taken,
}

async fn claim(store: &dyn Store, seq: u64, beat: &Beat) -> Result<Claim, StoreError> {
    let data = Bytes::from(serde_json::to_vec(beat).expect("a beat serialises"));
    match store.create_exclusive(&beat_key(seq), data).await {
        Ok(()) => Ok(Claim::Won),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Claim::Taken),
        Err(e) => Err(e),
    }
}

/// Election timing (see [`crate::config::FailoverConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Renewal period, and the bound on each election step.
    pub interval: Duration,
    /// Lease length from the start of the last successful renewal.
    pub fence_after: Duration,
    /// Silence after which a standby takes over.
    pub takeover_after: Duration,
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
}

/// A term as leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The fencing token.
    pub epoch: u64,
    /// The newest beat this leader wrote.
    pub seq: u64,
    /// The commands must be stopped by this time unless a renewal extends it.
    pub lease_until: Clock,
}

/// The newest beat a standby has seen, and since when (on its own clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its number (`None`: the chain is empty).
    pub seq: Option<u64>,
    /// Its content, once readable.
    pub beat: Option<Beat>,
    /// The epoch a takeover would claim: one more than any epoch the chain can hold.
    pub next_epoch: u64,
    /// When this candidate first saw it.
    pub since: Clock,
}

/// What a standby step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Another candidate leads (or may still); the newest beat is as shown.
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
    /// Another candidate took over: stop the commands at once.
    Deposed(Option<Beat>),
}

/// Where a candidate reads the time: [`Clock::now`], or a test's hand-moved clock.
pub type ClockSource = Box<dyn Fn() -> Clock + Send + Sync>;

/// One candidate's view of the election, and the steps it takes on the store.
pub struct Candidate<'a> {
    store: &'a dyn Store,
    me: Identity,
    timing: Timing,
    seen: Option<Seen>,
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
    /// A candidate that has seen nothing yet: it waits a full `takeover_after` from its first
    /// look before it may take over a chain that does not change.
    pub fn new(store: &'a dyn Store, me: Identity, timing: Timing) -> Self {
        Candidate {
            store,
            me,
            timing,
            seen: None,
            clock: Box::new(Clock::now),
        }
    }

    /// The same candidate reading time from `clock` (tests).
    pub fn with_clock(mut self, clock: ClockSource) -> Self {
        self.clock = clock;
        self
    }

    /// The newest beat seen, if any look succeeded yet.
    pub fn seen(&self) -> Option<&Seen> {
        self.seen.as_ref()
    }

    /// Bounds `step` by the election interval (or less): a step that hangs counts as failed.
    async fn bounded<T>(
        &self,
        op: &'static str,
        bound: Duration,
        step: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ElectionError> {
        match tokio::time::timeout(bound, step).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ElectionError::TimedOut {
                op,
                url: self.store.url().to_string(),
                bound,
            }),
        }
    }

    /// Looks at the chain (one listing, plus reading a beat when a new one appeared). A new
    /// beat's `since` is read *after* the listing answered, so it is never earlier than the
    /// moment its writer started writing it: the standby's wait never starts early.
    async fn observe(&mut self) -> Result<&Seen, ElectionError> {
        let store = self.store;
        let seqs = self
            .bounded("listing the heartbeats", self.timing.interval, beats(store))
            .await?;
        let now = (self.clock)();
        let newest = seqs.last().copied();
        let changed = self.seen.as_ref().is_none_or(|s| s.seq != newest);
        let unread = self
            .seen
            .as_ref()
            .is_some_and(|s| s.seq.is_some() && s.beat.is_none());
        if changed || unread {
            let since = match &self.seen {
                Some(seen) if !changed => seen.since,
                _ => now,
            };
            // The newest readable beat bounds the epochs: each beat raises it by at most one.
            let mut beat = None;
            let mut next_epoch = 1;
            for (unreadable, &seq) in seqs.iter().rev().enumerate() {
                if let Some(found) = self.read_bounded(seq).await {
                    next_epoch = found.epoch + unreadable as u64 + 1;
                    if unreadable == 0 {
                        beat = Some(found);
                    }
                    break;
                }
            }
            self.seen = Some(Seen {
                seq: newest,
                beat,
                next_epoch,
                since,
            });
        }
        Ok(self.seen.as_ref().expect("just set"))
    }

    /// One standby step: look at the chain, and take over when the newest beat is a
    /// release, the chain is empty, or it has not changed for `takeover_after`, and
    /// `eligible` (healthy, mount current) allows it.
    pub async fn standby_step(&mut self, eligible: bool) -> Result<Standing, ElectionError> {
        let seen = self.observe().await?.clone();
        let released = seen.beat.as_ref().is_some_and(|b| b.released);
        let now = (self.clock)();
        let silent = now.since(seen.since) >= self.timing.takeover_after;
        let vacant = seen.seq.is_none() || released || silent;
        if !vacant {
            return Ok(Standing::Following(seen));
        }
        if !eligible {
            return Ok(Standing::Vacant(seen));
        }
        let seq = seen.seq.map_or(1, |s| s + 1);
        let beat = self.beat(seen.next_epoch, false, None, None);
        match self
            .bounded(
                "taking over",
                self.timing.interval,
                claim(self.store, seq, &beat),
            )
            .await?
        {
            Claim::Won => {
                tracing::info!(epoch = beat.epoch, seq, "took over leadership");
                self.sweep(seq).await;
                Ok(Standing::Elected(Term {
                    epoch: beat.epoch,
                    seq,
                    lease_until: now.after(self.timing.fence_after),
                }))
            }
            Claim::Taken => {
                // Someone renewed or took over in between: that is a change, look again.
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
            released,
            generation,
            tree_id,
        }
    }

    fn is_mine(&self, beat: &Beat, term: &Term) -> bool {
        beat.epoch == term.epoch && beat.owner == self.me.id && beat.pid == self.me.pid
    }

    /// Writes the next beat of `term`. The lease runs from when the step began, never from
    /// the (later) moment the NameNode answered. The step is bounded by the interval and by
    /// what is left of the lease.
    pub async fn renew(
        &mut self,
        term: &mut Term,
        generation: Option<u64>,
        tree_id: Option<String>,
    ) -> Result<Renewal, ElectionError> {
        let started = (self.clock)();
        let bound = self
            .timing
            .interval
            .min(term.lease_until.since(started))
            .max(Duration::from_millis(1));
        let beat = self.beat(term.epoch, false, generation, tree_id);
        loop {
            let seq = term.seq + 1;
            match self
                .bounded(
                    "renewing the heartbeat",
                    bound,
                    claim(self.store, seq, &beat),
                )
                .await?
            {
                Claim::Won => {
                    term.seq = seq;
                    term.lease_until = started.after(self.timing.fence_after);
                    self.prune(seq).await;
                    return Ok(Renewal::Renewed);
                }
                Claim::Taken => {
                    // Ours if an earlier renewal landed after it had been given up for lost.
                    let found = self.read_bounded(seq).await;
                    match found {
                        Some(beat) if self.is_mine(&beat, term) => term.seq = seq,
                        other => return Ok(Renewal::Deposed(other)),
                    }
                }
            }
        }
    }

    /// Gives leadership up after the commands have stopped: a released beat lets a standby
    /// take over at once. Best effort: without it, standbys take over after the timeout.
    pub async fn release(&mut self, term: &Term) -> Result<(), ElectionError> {
        let beat = self.beat(term.epoch, true, None, None);
        self.bounded(
            "releasing leadership",
            self.timing.interval,
            claim(self.store, term.seq + 1, &beat),
        )
        .await?;
        Ok(())
    }

    /// Deletes the beat that fell out of the newest [`BEATS_KEPT`] with beat `newest` (one
    /// call, no listing); failures only leave garbage for [`Candidate::sweep`].
    async fn prune(&self, newest: u64) {
        if newest > BEATS_KEPT {
            self.delete_beat(newest - BEATS_KEPT).await;
        }
    }

    /// Deletes every beat older than the newest [`BEATS_KEPT`] (once per term: leftovers of
    /// earlier terms and failed deletes).
    async fn sweep(&self, newest: u64) {
        let list = tokio::time::timeout(self.timing.interval, beats(self.store));
        let Ok(Ok(seqs)) = list.await else {
            return;
        };
        for seq in seqs.into_iter().filter(|&s| s + BEATS_KEPT <= newest) {
            self.delete_beat(seq).await;
        }
    }

    async fn delete_beat(&self, seq: u64) {
        let key = beat_key(seq);
        let delete = self.store.delete(&key, false);
        match tokio::time::timeout(self.timing.interval, delete).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, seq, "could not delete an old heartbeat"),
            Err(_) => tracing::debug!(seq, "deleting an old heartbeat timed out"),
        }
    }

    /// [`read_beat`] bounded by the interval (unreadable when it takes longer).
    async fn read_bounded(&self, seq: u64) -> Option<Beat> {
        let read = read_beat(self.store, seq);
        tokio::time::timeout(self.timing.interval, read)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, Overwrite};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const TIMING: Timing = Timing {
        interval: Duration::from_secs(1),
        fence_after: Duration::from_secs(3),
        takeover_after: Duration::from_secs(5),
    };

    fn me(id: &str) -> Identity {
        Identity {
            id: id.into(),
            host: "host".into(),
            pid: 7,
        }
    }

    /// A clock the test moves by hand, in whole seconds.
    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn set(&self, secs: u64) -> &Self {
            self.0.store(secs, Ordering::SeqCst);
            self
        }

        fn source(&self) -> ClockSource {
            let secs = self.0.clone();
            Box::new(move || Clock(Duration::from_secs(secs.load(Ordering::SeqCst))))
        }
    }

    fn candidate<'a>(store: &'a dyn Store, id: &str, clock: &FakeClock) -> Candidate<'a> {
        Candidate::new(store, me(id), TIMING).with_clock(clock.source())
    }

    async fn elect(candidate: &mut Candidate<'_>) -> Term {
        match candidate.standby_step(true).await.unwrap() {
            Standing::Elected(term) => term,
            other => panic!("not elected: {other:?}"),
        }
    }

    #[tokio::test]
    async fn first_candidate_leads_and_standby_waits_for_silence() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().to_path_buf()).await.unwrap();
        let clock = FakeClock::default();
        let mut a = candidate(&store, "a", &clock);
        let mut b = candidate(&store, "b", &clock);

        let mut term = elect(&mut a).await;
        assert_eq!((term.epoch, term.seq), (1, 1));
        assert!(matches!(
            b.standby_step(true).await.unwrap(),
            Standing::Following(_)
        ));
        // The leader renews every second: b never sees five silent seconds.
        for t in 1..10 {
            clock.set(t);
            assert_eq!(
                a.renew(&mut term, Some(3), None).await.unwrap(),
                Renewal::Renewed
            );
            assert_eq!(term.lease_until, Clock(Duration::from_secs(t + 3)));
            assert!(matches!(
                b.standby_step(true).await.unwrap(),
                Standing::Following(_)
            ));
        }
        assert_eq!(beats(&store).await.unwrap().len(), BEATS_KEPT as usize);
        // Silence: b takes over with the next epoch, 5 s after it last saw a change.
        clock.set(13);
        assert!(matches!(
            b.standby_step(true).await.unwrap(),
            Standing::Following(_)
        ));
        clock.set(14);
        assert!(matches!(
            b.standby_step(false).await.unwrap(),
            Standing::Vacant(_)
        ));
        let b_term = elect(&mut b).await;
        assert_eq!(b_term.epoch, 2);
        // The old leader's next renewal fails on the name b claimed: it is deposed.
        clock.set(15);
        match a.renew(&mut term, None, None).await.unwrap() {
            Renewal::Deposed(Some(beat)) => {
                assert_eq!((beat.owner.as_str(), beat.epoch), ("b", 2))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn release_hands_over_at_once_and_racing_standbys_elect_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().to_path_buf()).await.unwrap();
        let clock = FakeClock::default();
        let mut a = candidate(&store, "a", &clock);
        let term = elect(&mut a).await;
        let mut b = candidate(&store, "b", &clock);
        let mut c = candidate(&store, "c", &clock);
        b.standby_step(true).await.unwrap();
        c.standby_step(true).await.unwrap();
        a.release(&term).await.unwrap();
        clock.set(1);
        let (rb, rc) = tokio::join!(b.standby_step(true), c.standby_step(true));
        let elected: Vec<_> = [rb.unwrap(), rc.unwrap()]
            .into_iter()
            .filter_map(|s| match s {
                Standing::Elected(term) => Some(term),
                _ => None,
            })
            .collect();
        assert_eq!(elected.len(), 1, "exactly one standby takes over");
        assert_eq!(elected[0].epoch, 2);
    }

    #[tokio::test]
    async fn a_renewal_that_landed_late_is_recognised_and_unreadable_beats_raise_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().to_path_buf()).await.unwrap();
        let clock = FakeClock::default();
        let mut a = candidate(&store, "a", &clock);
        let mut term = elect(&mut a).await;
        // A renewal the leader gave up on, which landed anyway.
        let late = a.beat(term.epoch, false, None, None);
        claim(&store, 2, &late).await.unwrap();
        clock.set(1);
        assert_eq!(
            a.renew(&mut term, None, None).await.unwrap(),
            Renewal::Renewed
        );
        assert_eq!(term.seq, 3);
        // A half-written beat (a writer died mid-create) still bounds the next epoch.
        store
            .put(&beat_key(4), Bytes::from_static(b"{\"epo"), Overwrite::Deny)
            .await
            .unwrap();
        let mut b = candidate(&store, "b", &clock);
        clock.set(2);
        b.standby_step(true).await.unwrap();
        clock.set(7);
        let b_term = elect(&mut b).await;
        assert_eq!((b_term.epoch, b_term.seq), (3, 5));
    }
}
