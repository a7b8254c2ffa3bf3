//! The election against the store coordinator on a local directory, with a hand-moved clock.
//! The protocol under faults and arbitrary interleavings is attacked by the simulation in
//! `tests/failover_sim.rs`.

use super::*;
use crate::store::faulty::{pause_until, Action, FaultyStore, Op, Rule};
use crate::store::{ErrorKind, LocalStore, Overwrite, Store};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const TIMING: Timing = Timing {
    interval: Duration::from_secs(1),
    fence_after: Duration::from_secs(3),
    kill_grace: Duration::from_secs(1),
    safety_margin: Duration::from_secs(1),
    takeover_after: Duration::from_secs(5),
};

/// A leader's settings during a rolling change: a longer lease than `TIMING`'s standbys know.
const SLOW: Timing = Timing {
    interval: Duration::from_secs(10),
    fence_after: Duration::from_secs(30),
    kill_grace: Duration::from_secs(10),
    safety_margin: Duration::from_secs(5),
    takeover_after: Duration::from_secs(45),
};

fn me(id: &str) -> Identity {
    Identity {
        id: id.into(),
        host: "host".into(),
        pid: 7,
        instance: id.len() as u64,
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

fn candidate<'a>(
    coordinator: &'a dyn Coordinator,
    id: &str,
    timing: Timing,
    clock: &FakeClock,
) -> Candidate<'a> {
    Candidate::new(coordinator, me(id), timing).with_clock(clock.source())
}

/// A store on a temporary directory, for one test, behind a fault injector (no faults until
/// a test adds a rule).
struct Bed {
    _dir: tempfile::TempDir,
    store: FaultyStore,
    clock: FakeClock,
}

impl Bed {
    async fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::open(dir.path().to_path_buf()).await.unwrap();
        Bed {
            _dir: dir,
            store: FaultyStore::new(Arc::new(local)),
            clock: FakeClock::default(),
        }
    }

    /// The store (its faults under the test's control), a coordinator on it, the clock (a
    /// handle on the bed's).
    fn parts(&self) -> (&FaultyStore, StoreCoordinator<'_>, FakeClock) {
        (
            &self.store,
            StoreCoordinator::new(&self.store),
            self.clock.clone(),
        )
    }
}

/// Candidate "a" with `timing`, elected over the empty register: it looks at t = 0 and
/// takes over once its wait is over, at t = `takeover_after`.
async fn first_leader<'a>(
    coordinator: &'a dyn Coordinator,
    timing: Timing,
    clock: &FakeClock,
) -> (Candidate<'a>, Term) {
    let mut a = candidate(coordinator, "a", timing, clock);
    assert!(is_following(&mut a).await);
    clock.set(timing.takeover_after.as_secs());
    let term = elect(&mut a).await;
    (a, term)
}

/// [`first_leader`] `a` at `timing`, and `b` (at [`TIMING`]) following it.
async fn leader_and_follower<'a>(
    coordinator: &'a dyn Coordinator,
    timing: Timing,
    clock: &FakeClock,
) -> (Candidate<'a>, Term, Candidate<'a>) {
    let (a, term) = first_leader(coordinator, timing, clock).await;
    let mut b = candidate(coordinator, "b", TIMING, clock);
    assert!(is_following(&mut b).await);
    (a, term, b)
}

/// Whether `candidate` follows when it looks at `secs`.
async fn following_at(candidate: &mut Candidate<'_>, clock: &FakeClock, secs: u64) -> bool {
    clock.set(secs);
    is_following(candidate).await
}

/// `candidate`'s term, elected when it looks at `secs`.
async fn elected_at(candidate: &mut Candidate<'_>, clock: &FakeClock, secs: u64) -> Term {
    clock.set(secs);
    elect(candidate).await
}

/// `leader` renews `term` (without changing its settings); `store`'s faults so far are
/// printed if not.
async fn assert_renewed(leader: &mut Candidate<'_>, term: &mut Term, store: &FaultyStore) {
    let renewal = leader.renew(term, None, None).await.unwrap();
    assert_eq!(renewal, Renewal::Renewed, "faults: {:?}", store.fired());
}

/// Writes `bytes` at `key` behind the protocol's back, as an operator or another program
/// might.
async fn write_behind_the_back(store: &FaultyStore, key: &str, bytes: &'static [u8]) {
    let bytes = Bytes::from_static(bytes);
    store.put(key, bytes, Overwrite::Allow).await.unwrap();
}

/// `candidate` elected when it looks at `secs`, with an epoch above the `before` leader's:
/// epochs never repeat.
async fn succeeds_at(candidate: &mut Candidate<'_>, clock: &FakeClock, secs: u64, before: &Term) {
    let term = elected_at(candidate, clock, secs).await;
    assert!(term.epoch > before.epoch, "{term:?} after {before:?}");
}

async fn elect(candidate: &mut Candidate<'_>) -> Term {
    match candidate.standby_step(true).await.unwrap() {
        Standing::Elected(term) => term,
        other => panic!("not elected: {other:?}"),
    }
}

async fn is_following(candidate: &mut Candidate<'_>) -> bool {
    matches!(
        candidate.standby_step(true).await.unwrap(),
        Standing::Following(_)
    )
}

async fn seqs(store: &dyn Store) -> Vec<u64> {
    crate::store::list_if_exists(store, BEATS_DIR)
        .await
        .unwrap()
        .iter()
        .map(|e| e.name().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn first_candidate_waits_then_leads_and_standby_waits_for_silence() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let [mut a, mut b] = ["a", "b"].map(|id| candidate(&coordinator, id, TIMING, &clock));

    // Even an empty register is taken over only after a full wait: a leader may be renewing
    // right now into a directory an operator just emptied.
    assert!(is_following(&mut a).await);
    let mut term = elected_at(&mut a, &clock, 5).await;
    assert_eq!((term.epoch, term.version.seq), (1, 1));
    assert!(is_following(&mut b).await);
    for t in 6..15 {
        clock.set(t);
        assert_eq!(
            a.renew(&mut term, Some(3), None).await.unwrap(),
            Renewal::Renewed
        );
        assert_eq!(term.lease_until, Clock(Duration::from_secs(t + 3)));
        assert!(is_following(&mut b).await);
    }
    assert_eq!(seqs(store).await.len(), 4, "old beats are pruned");
    // Silence: b takes over 5 s after it last saw a change, with the claim's number as epoch.
    assert!(following_at(&mut b, &clock, 18).await);
    clock.set(19);
    assert!(matches!(
        b.standby_step(false).await.unwrap(),
        Standing::Vacant(_)
    ));
    let b_term = elect(&mut b).await;
    assert_eq!(b_term.epoch, 11);
    // The old leader's next renewal, as if its host had been frozen with its clock (so it
    // believes its lease valid), fails on the name b claimed: it is deposed.
    clock.set(20);
    term.lease_until = Clock(Duration::from_secs(30));
    match a.renew(&mut term, None, None).await.unwrap() {
        Renewal::Deposed(Some(beat)) => assert_eq!((beat.owner.as_str(), beat.epoch), ("b", 11)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn release_hands_over_at_once_and_racing_standbys_elect_one() {
    let bed = Bed::new().await;
    let (_, coordinator, clock) = bed.parts();
    let (mut a, term) = first_leader(&coordinator, TIMING, &clock).await;
    let mut b = candidate(&coordinator, "b", TIMING, &clock);
    let mut c = candidate(&coordinator, "c", TIMING, &clock);
    b.standby_step(true).await.unwrap();
    c.standby_step(true).await.unwrap();
    a.release(&term).await.unwrap();
    clock.set(6);
    let (rb, rc) = tokio::join!(b.standby_step(true), c.standby_step(true));
    let elected: Vec<_> = [rb.unwrap(), rc.unwrap()]
        .into_iter()
        .filter_map(|s| match s {
            Standing::Elected(term) => Some(term),
            _ => None,
        })
        .collect();
    assert_eq!(elected.len(), 1, "exactly one standby takes over");
    assert_eq!(elected[0].epoch, 3);
}

/// Bug 1: a claimant with a stale view wins a name the leader pruned long ago. It must lose,
/// and leave nothing in anyone's way.
#[tokio::test]
async fn a_stale_claim_of_a_deleted_name_loses() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let (mut a, mut term) = first_leader(&coordinator, TIMING, &clock).await;
    let stale = coordinator.read().await.unwrap();
    for t in 6..12 {
        clock.set(t);
        a.renew(&mut term, None, None).await.unwrap();
    }
    assert!(!seqs(store).await.contains(&2), "beat 2 was pruned");
    // A standby that was paused between its read (version 1) and its claim (of 2).
    let beat = Beat {
        owner: "b".into(),
        ..stale.beat.clone().unwrap()
    };
    let claimed = coordinator.claim(stale.version, 2, &beat).await.unwrap();
    assert_eq!(claimed, Claimed::Lost(None));
    assert!(!seqs(store).await.contains(&2), "the orphan is removed");
    assert_renewed(&mut a, &mut term, store).await;
}

/// Bug 1, the operator's way: `failover/beats` emptied under a running leader. Nobody may
/// take over early, the leader cannot renew into a chain it no longer recognises, and the
/// next term's epoch is above every epoch seen.
#[tokio::test]
async fn an_emptied_chain_deposes_the_leader_and_nobody_takes_over_early() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let [mut a, mut b] = ["a", "b"].map(|id| candidate(&coordinator, id, TIMING, &clock));
    a.standby_step(true).await.unwrap();
    let mut term = elected_at(&mut a, &clock, 5).await;
    for t in 6..10 {
        clock.set(t);
        a.renew(&mut term, None, None).await.unwrap();
        assert!(is_following(&mut b).await);
    }
    store.delete(BEATS_DIR, true).await.unwrap();
    clock.set(10);
    assert!(is_following(&mut b).await, "an empty register is a change");
    assert!(matches!(
        a.renew(&mut term, None, None).await.unwrap(),
        Renewal::Deposed(_)
    ));
    assert!(seqs(store).await.is_empty(), "the deposed claim is removed");
    // Removing it changed the directory: b's wait starts again from its next look.
    assert!(following_at(&mut b, &clock, 14).await);
    assert!(following_at(&mut b, &clock, 18).await);
    succeeds_at(&mut b, &clock, 19, &term).await;
}

/// Bug 2: settings differ across hosts (a rolling change). The standby waits for the
/// leader's advertised lease + grace, not only its own `takeover_after`.
#[tokio::test]
async fn a_standby_honours_the_leaders_advertised_lease() {
    let bed = Bed::new().await;
    let (_, coordinator, clock) = bed.parts();
    let (_a, _term) = first_leader(&coordinator, SLOW, &clock).await;
    let mut b = candidate(&coordinator, "b", TIMING, &clock);
    assert!(is_following(&mut b).await);
    // b's own takeover_after (5 s) has long passed; a's lease + grace + b's margin has not.
    assert!(following_at(&mut b, &clock, 85).await);
    clock.set(86);
    assert!(matches!(
        b.standby_step(true).await.unwrap(),
        Standing::Elected(_)
    ));
}

/// Bug 6, a lost reply: the renewal's write landed but the leader saw an error (a NameNode
/// failover after the rename). A failed renewal extends nothing; the next one finds the name
/// taken by its own write and carries on, never deposed. A standby watching meanwhile is held
/// exactly its documented wait from the last change it saw, no longer.
#[tokio::test]
async fn a_renewal_whose_reply_was_lost_carries_on() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let (mut a, mut term, mut b) = leader_and_follower(&coordinator, TIMING, &clock).await;
    store.add(Rule::fail_after(Op::Put, 1, ErrorKind::Timeout).on(BEATS_DIR));
    clock.set(6);
    a.renew(&mut term, None, None).await.unwrap_err();
    assert_eq!(seqs(store).await, [1, 2], "the write landed");
    assert_eq!(
        (term.version.seq, term.lease_until),
        (1, Clock(Duration::from_secs(8)))
    );
    assert!(is_following(&mut b).await);
    clock.set(7);
    assert_renewed(&mut a, &mut term, store).await;
    assert_eq!(
        (term.version.seq, term.lease_until),
        (3, Clock(Duration::from_secs(10)))
    );
    // a dies now. b saw beat 3 at 7: its wait is max(5, 3 + 1 + 1) = 5 s, which covers a's
    // lease and grace (10 + 1), and it takes over at 7 + 5, not later.
    assert!(is_following(&mut b).await);
    assert!(following_at(&mut b, &clock, 11).await);
    clock.set(12);
    assert_eq!(elect(&mut b).await.epoch, 4);
}

/// Bug 6, an ambiguous renewal whose resolution fails: the old code read its own beat back
/// with errors taken as "not mine" and stepped a healthy unit down. Neither a failed read-back
/// after `AlreadyExists` nor a failed verification listing after a write may depose the
/// leader (nor delete its beat): they are errors, and the next attempt resolves them.
#[tokio::test]
async fn a_failed_read_back_or_verification_is_an_error_not_a_deposition() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let (mut a, mut term) = first_leader(&coordinator, TIMING, &clock).await;
    clock.set(6);
    for (fault, what) in [
        (
            Rule::fail_after(Op::Put, 1, ErrorKind::Timeout),
            "the reply to the write",
        ),
        (
            Rule::fail(Op::Read, 1, ErrorKind::Unavailable),
            "the read-back",
        ),
        (
            Rule::fail(Op::List, 1, ErrorKind::Unavailable),
            "the verification",
        ),
    ] {
        store.add(fault.on(BEATS_DIR));
        match a.renew(&mut term, None, None).await {
            Err(_) => {}
            other => panic!("{what} failed: {other:?}; faults: {:?}", store.fired()),
        }
        assert_eq!(seqs(store).await, [1, 2], "{what} failed: beat 2 stays");
        store.clear();
    }
    assert_renewed(&mut a, &mut term, store).await;
    assert_eq!(term.version.seq, 3);
}

/// Bug 6, a claim cut off mid-write (at the step's bound, or by a NameNode failover that
/// hdfs-native does not retry): after its first RPC, a write in place (`create`) leaves the
/// name taken and empty, which the leader then read as "deposed by another" and standbys
/// waited on. The claim's write is cut off after its first RPC whatever it is; the beat
/// name must not be left empty, and the leader's next renewal wins.
#[tokio::test]
async fn a_renewal_cut_off_mid_write_leaves_no_empty_beat() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let (mut a, mut term, mut b) = leader_and_follower(&coordinator, TIMING, &clock).await;
    let never = Arc::new(tokio::sync::Notify::new());
    // A staged write's first RPC creates the staging file: nothing under the beat's name.
    store.add(Rule::before(Op::Put, 1, pause_until(Arc::clone(&never))).on(&beat_key(2)));
    // A write in place creates the name, empty.
    let created_empty_then_cut: Action = {
        let never = Arc::clone(&never);
        Arc::new(move |inner, key| {
            let never = Arc::clone(&never);
            Box::pin(async move {
                let _ = inner.create_exclusive(&key, Bytes::new()).await;
                never.notified().await;
            })
        })
    };
    store.add(Rule::before(Op::CreateExclusive, 1, created_empty_then_cut).on(&beat_key(2)));
    clock.set(6);
    assert!(matches!(
        a.renew(&mut term, None, None).await,
        Err(CoordinatorError::TimedOut { .. })
    ));
    clock.set(7);
    assert_renewed(&mut a, &mut term, store).await;
    assert!(is_following(&mut b).await);
    let seen = b.seen().unwrap();
    assert_eq!(
        seen.beat.as_ref().map(|beat| beat.owner.as_str()),
        Some("a"),
        "{seen:?}"
    );
}

/// An unreadable beat (only ever one rewritten behind the protocol's back, e.g. emptied by
/// hand) holds a standby for the longest lease + grace it has seen advertised plus its margin,
/// whatever its own settings say, and deposes the leader whose beat it was.
#[tokio::test]
async fn an_unreadable_beat_holds_standbys_for_the_widest_lease_and_deposes_its_leader() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let (mut a, mut term, mut b) = leader_and_follower(&coordinator, SLOW, &clock).await;
    write_behind_the_back(store, &beat_key(1), b"").await;
    assert!(following_at(&mut b, &clock, 46).await);
    assert_eq!(b.seen().unwrap().beat, None);
    // b's own takeover_after (5 s) is over; a's lease + grace (40 s) + b's margin is not.
    clock.set(51);
    assert!(is_following(&mut b).await, "{:?}", b.seen());
    clock.set(52);
    assert_eq!(
        a.renew(&mut term, None, None).await.unwrap(),
        Renewal::Deposed(None)
    );
    // Removing the deposed claim's orphan changed the directory, so b may wait afresh from
    // 52 (the directory's time may not have moved, on a coarse clock); either way, 41 s.
    assert!(is_following(&mut b).await);
    assert!(following_at(&mut b, &clock, 86).await);
    clock.set(93);
    assert!(elect(&mut b).await.epoch > term.epoch);
}

/// Bug 7: with the newest beats unreadable (rewritten behind the protocol's back), the next
/// epoch is still above every epoch the chain ever held.
#[tokio::test]
async fn epochs_never_repeat_over_unreadable_beats() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    let (mut a, mut term) = first_leader(&coordinator, TIMING, &clock).await;
    for t in 6..9 {
        clock.set(t);
        a.renew(&mut term, None, None).await.unwrap();
    }
    for seq in seqs(store).await {
        write_behind_the_back(store, &beat_key(seq), b"{\"epo").await;
    }
    let mut b = candidate(&coordinator, "b", TIMING, &clock);
    assert!(is_following(&mut b).await);
    succeeds_at(&mut b, &clock, 20, &term).await;
}

/// Issue 14, bug 9: a beat name read from the store is a number an adversary chooses; the
/// largest one must not make the election overflow.
#[tokio::test]
async fn a_beat_named_with_the_largest_number_is_ignored() {
    let bed = Bed::new().await;
    let (store, coordinator, clock) = bed.parts();
    write_behind_the_back(store, &format!("{BEATS_DIR}/{}", u64::MAX), b"{}").await;
    let mut a = candidate(&coordinator, "a", TIMING, &clock);
    assert!(is_following(&mut a).await);
    let mut term = elected_at(&mut a, &clock, 5).await;
    assert_eq!(term.epoch, 1);
    clock.set(6);
    assert_renewed(&mut a, &mut term, store).await;
}

/// The lease row of the database coordinator, in memory: each statement on its own, as the
/// row lock serialises them (real servers: `tests/metadb.rs`). Clones share the row, so a
/// test can delete it behind the protocol's back.
#[derive(Clone, Debug, Default)]
struct MemoryRow(Arc<std::sync::Mutex<Option<LeaseRow>>>);

#[async_trait::async_trait]
impl LeaseTable for MemoryRow {
    fn url(&self) -> &str {
        "memory://"
    }

    async fn select(&self) -> Result<Option<LeaseRow>, CoordinatorError> {
        Ok(self.0.lock().unwrap().clone())
    }

    async fn insert(&self, row: &LeaseRow) -> Result<bool, CoordinatorError> {
        let mut current = self.0.lock().unwrap();
        let empty = current.is_none();
        if empty {
            *current = Some(row.clone());
        }
        Ok(empty)
    }

    async fn update(&self, expected: Version, row: &LeaseRow) -> Result<bool, CoordinatorError> {
        let mut current = self.0.lock().unwrap();
        let matched = current
            .as_ref()
            .is_some_and(|r| r.seq == expected.seq && r.tag == expected.tag);
        if matched {
            *current = Some(row.clone());
        }
        Ok(matched)
    }
}

/// Issue 16, seed 5008 of the simulation: a leader elected over an empty lease row kept the
/// view it had before its term. Once its term ended and the row was deleted by hand, the
/// empty row looked unchanged since that old look (an empty row has no marker to change),
/// so it took over at once: beside the leader whose row was deleted, and, in the
/// simulation, while its own unit was still stopping. A term ends the candidate's view: its
/// next look starts the wait afresh.
#[tokio::test]
async fn a_candidate_whose_term_ended_waits_again_over_a_row_deleted_by_hand() {
    let row = MemoryRow::default();
    let coordinator = DatabaseCoordinator::new(row.clone());
    let clock = FakeClock::default();
    let (mut a, mut a_term) = first_leader(&coordinator, TIMING, &clock).await;
    let mut b = candidate(&coordinator, "b", TIMING, &clock);
    assert!(is_following(&mut b).await);
    clock.set(6);
    a.renew(&mut a_term, None, None).await.unwrap();
    assert!(is_following(&mut b).await);
    // a is cut off: its lease ends at 9, its guard fences it; b takes over at 6 + 5.
    let mut b_term = elected_at(&mut b, &clock, 11).await;
    // An operator deletes the row; a, back in standby, looks.
    *row.0.lock().unwrap() = None;
    clock.set(12);
    assert!(
        is_following(&mut a).await,
        "a takes over at once, beside b, over a row deleted by hand"
    );
    assert!(matches!(
        b.renew(&mut b_term, None, None).await.unwrap(),
        Renewal::Deposed(None)
    ));
    assert!(following_at(&mut a, &clock, 16).await);
    clock.set(17);
    elect(&mut a).await;
}
