//! The coordinator on the store: a chain of heartbeat files `failover/beats/<seq>`.
//!
//! A claim of version `seq` writes the whole record to a staging file and renames it to
//! `beats/<seq>` without overwrite ([`Store::put`] with [`Overwrite::Deny`]): the NameNode
//! lets exactly one writer have each name, and a name is never visible before its content
//! (an unreadable beat can only be one rewritten behind the protocol's back).
//!
//! Names are deleted (old beats are pruned; an operator may empty the directory), so winning
//! a name proves nothing by itself: a claimant with a stale view could win a name that was
//! deleted long ago. Every won name is therefore **verified** by a listing made after the
//! write: the claim counts only if its name is the newest in the directory and the version
//! it expected is still there, unchanged (same length and modification time). A claimant
//! whose verification fails deletes its orphan and has lost. `docs/DESIGN.md` ("Failover
//! protocol") has the argument.

use async_trait::async_trait;
use bytes::Bytes;

use super::coordinator::{Beat, Claimed, Coordinator, CoordinatorError, Snapshot, Version};
use crate::store::{list_if_exists, EntryInfo, ErrorKind, Overwrite, Store};

/// Directory of the heartbeat chain, under the store root.
pub const BEATS_DIR: &str = "failover/beats";

/// How many of the newest beats a leader keeps (older ones are deleted as it renews). At
/// least 2: the newest and its predecessor are what a claim is verified against.
const BEATS_KEPT: u64 = 4;

/// The highest sequence number taken from a name: larger names (crafted, or garbage) are
/// ignored, so arithmetic on sequence numbers cannot overflow. At one beat a second it lasts
/// for a few billion years.
const MAX_SEQ: u64 = u64::MAX / 4;

/// Key of beat number `seq`.
pub fn beat_key(seq: u64) -> String {
    format!("{BEATS_DIR}/{seq:020}")
}

/// The [`Coordinator`] on a [`Store`].
#[derive(Debug)]
pub struct StoreCoordinator<'a> {
    store: &'a dyn Store,
    /// The last record read, by version: a standby reads a beat's content only when the
    /// newest version changed.
    cache: std::sync::Mutex<Option<(Version, Option<Beat>)>>,
}

impl<'a> StoreCoordinator<'a> {
    /// The chain under `store`'s root.
    pub fn new(store: &'a dyn Store) -> Self {
        StoreCoordinator {
            store,
            cache: std::sync::Mutex::new(None),
        }
    }

    /// The beats present, as (version, key), ascending by sequence number.
    async fn chain(&self) -> Result<Vec<Version>, CoordinatorError> {
        let mut chain: Vec<Version> = list_if_exists(self.store, BEATS_DIR)
            .await?
            .iter()
            .filter_map(|e| {
                Some(Version {
                    seq: e.name().parse().ok().filter(|&seq| seq <= MAX_SEQ)?,
                    tag: tag(e),
                })
            })
            .collect();
        chain.sort_unstable_by_key(|v| v.seq);
        Ok(chain)
    }

    async fn read_beat(&self, seq: u64) -> Result<Option<Beat>, CoordinatorError> {
        match self.store.read(&beat_key(seq)).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, seq: u64) {
        if let Err(e) = self.store.delete(&beat_key(seq), false).await {
            tracing::debug!(error = %e, seq, "could not delete a heartbeat");
        }
    }

    /// Whether the chain, listed after our write of `seq`, shows that write as the newest,
    /// directly after the expected version; returns our version then.
    async fn verify(
        &self,
        expected: Option<Version>,
        seq: u64,
    ) -> Result<Option<Version>, CoordinatorError> {
        let chain = self.chain().await?;
        let Some(ours) = chain.last().copied().filter(|v| v.seq == seq) else {
            return Ok(None);
        };
        let follows = match expected {
            Some(expected) => chain.contains(&expected),
            // Claimed over an empty chain: nothing else may have appeared meanwhile.
            None => chain.len() == 1,
        };
        Ok(follows.then_some(ours))
    }
}

/// The identity of one write of a beat file: its length and modification time (a name
/// deleted and written again gets another). Of the directory: its modification time, which
/// every create, rename into and delete in it changes.
fn tag(entry: &EntryInfo) -> u64 {
    let nanos = entry
        .modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ entry.len.rotate_left(48)
}

fn same_writer(a: &Beat, b: &Beat) -> bool {
    a.owner == b.owner && a.pid == b.pid && a.instance == b.instance && a.epoch == b.epoch
}

#[async_trait]
impl Coordinator for StoreCoordinator<'_> {
    fn url(&self) -> &str {
        self.store.url()
    }

    async fn read(&self) -> Result<Snapshot, CoordinatorError> {
        // The directory first: a change between the two calls then shows as a changed
        // marker on the next read, never as a missed one.
        let marker = match self.store.stat(BEATS_DIR).await {
            Ok(dir) => tag(&dir),
            // A missing directory has no modification time to watch: one deleted with all
            // its beats would look like one that never existed. Create it, and watch that.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.store.mkdirs(BEATS_DIR).await?;
                tag(&self.store.stat(BEATS_DIR).await?)
            }
            Err(e) => return Err(e.into()),
        };
        let chain = self.chain().await?;
        let Some(&newest) = chain.last() else {
            return Ok(Snapshot {
                version: None,
                beat: None,
                marker,
            });
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(v, _)| *v == newest);
        let beat = match cached {
            Some((_, beat)) => beat,
            None => {
                let beat = self.read_beat(newest.seq).await?;
                *self.cache.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((newest, beat.clone()));
                beat
            }
        };
        Ok(Snapshot {
            version: Some(newest),
            beat,
            marker,
        })
    }

    async fn claim(
        &self,
        expected: Option<Version>,
        seq: u64,
        beat: &Beat,
    ) -> Result<Claimed, CoordinatorError> {
        let data = Bytes::from(serde_json::to_vec(beat).expect("a beat serialises"));
        let landed_earlier = match self.store.put(&beat_key(seq), data, Overwrite::Deny).await {
            Ok(()) => false,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                match self.read_beat(seq).await? {
                    // Ours: an earlier attempt whose reply was lost.
                    Some(found) if same_writer(&found, beat) => true,
                    other => return Ok(Claimed::Lost(other)),
                }
            }
            Err(e) => return Err(e.into()),
        };
        match self.verify(expected, seq).await? {
            Some(ours) if landed_earlier => Ok(Claimed::Landed(ours)),
            Some(ours) => Ok(Claimed::Won(ours)),
            None => {
                // A stale claim of a deleted name, or the chain changed under us: remove
                // the orphan so it never stands in anyone's way.
                self.delete(seq).await;
                Ok(Claimed::Lost(None))
            }
        }
    }

    async fn tidy(&self, newest: Version, full: bool) {
        if !full {
            if newest.seq > BEATS_KEPT {
                self.delete(newest.seq - BEATS_KEPT).await;
            }
            return;
        }
        let Ok(chain) = self.chain().await else {
            return;
        };
        for old in chain.iter().filter(|v| v.seq + BEATS_KEPT <= newest.seq) {
            self.delete(old.seq).await;
        }
    }
}
