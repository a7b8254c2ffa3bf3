//! A fault-injecting [`Store`] wrapper for tests (after mountpoint-s3's failure client).
//!
//! [`FaultyStore`] forwards every call to an inner store, except where a [`Rule`] matches:
//! the Nth call of an operation (optionally only on keys with a prefix) can fail before doing
//! the work, fail *after* doing it (an ambiguous write: the caller sees an error although the
//! store changed), or run an action first: pause until released, delete or rewrite a key
//! behind the caller's back, or run any code against the inner store (a concurrent `gc` or
//! publish at an exact point of a protocol). Unit tests, integration tests and the
//! reference-model test of publish/gc/rollback/mount use it.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use super::{EntryInfo, ErrorKind, Overwrite, Store, StoreError, StoreResult};

/// A store operation, as rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Store::put`].
    Put,
    /// [`Store::create_exclusive`].
    CreateExclusive,
    /// [`Store::read`].
    Read,
    /// [`Store::read_range`].
    ReadRange,
    /// [`Store::stat`].
    Stat,
    /// [`Store::list`].
    List,
    /// [`Store::rename`] (the key is the destination).
    Rename,
    /// [`Store::delete`].
    Delete,
    /// [`Store::mkdirs`].
    Mkdirs,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 9] = [
        Op::Put,
        Op::CreateExclusive,
        Op::Read,
        Op::ReadRange,
        Op::Stat,
        Op::List,
        Op::Rename,
        Op::Delete,
        Op::Mkdirs,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::CreateExclusive => "create_exclusive",
            Op::Read => "read",
            Op::ReadRange => "read_range",
            Op::Stat => "stat",
            Op::List => "list",
            Op::Rename => "rename",
            Op::Delete => "delete",
            Op::Mkdirs => "mkdirs",
        }
    }
}

/// Code run against the inner store before a matching call proceeds; it gets the key.
pub type Action = Arc<dyn Fn(Arc<dyn Store>, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a matching rule does to the call.
#[derive(Clone)]
pub enum Fault {
    /// Fail with this kind without touching the store.
    Fail(ErrorKind),
    /// Do the work, then report failure with this kind.
    FailAfter(ErrorKind),
    /// Run the action, then do the call normally.
    Before(Action),
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Fail(kind) => write!(f, "Fail({kind:?})"),
            Fault::FailAfter(kind) => write!(f, "FailAfter({kind:?})"),
            Fault::Before(_) => f.write_str("Before(..)"),
        }
    }
}

/// When a fault fires: the `nth` (from 1) call of `op` on a key starting with `prefix`,
/// counted from when the rule was added, and the `times - 1` matching calls after it.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The operation (`None`: every operation).
    pub op: Option<Op>,
    /// Only keys starting with this (empty: every key).
    pub prefix: String,
    /// Which matching call fires first (1 = the next one).
    pub nth: usize,
    /// How many matching calls fire, from the `nth` on.
    pub times: usize,
    /// What happens.
    pub fault: Fault,
}

impl Rule {
    /// The `nth` call of `op` (any key) fails with `kind` before doing anything.
    pub fn fail(op: Op, nth: usize, kind: ErrorKind) -> Rule {
        Rule {
            op: Some(op),
            prefix: String::new(),
            nth,
            times: 1,
            fault: Fault::Fail(kind),
        }
    }

    /// The `nth` call of `op` (any key) does its work, then fails with `kind`.
    pub fn fail_after(op: Op, nth: usize, kind: ErrorKind) -> Rule {
        Rule {
            fault: Fault::FailAfter(kind),
            ..Rule::fail(op, nth, kind)
        }
    }

    /// Before the `nth` call of `op` (any key), `action` runs against the inner store.
    pub fn before(op: Op, nth: usize, action: Action) -> Rule {
        Rule {
            op: Some(op),
            prefix: String::new(),
            nth,
            times: 1,
            fault: Fault::Before(action),
        }
    }

    /// Before the `nth` call of any operation, `action` runs against the inner store: walk
    /// `nth` over every call of a protocol to interleave another party at each step.
    pub fn before_any(nth: usize, action: Action) -> Rule {
        Rule {
            op: None,
            ..Rule::before(Op::Read, nth, action)
        }
    }

    /// Only keys starting with `prefix` match (and are counted).
    pub fn on(mut self, prefix: &str) -> Rule {
        self.prefix = prefix.to_string();
        self
    }

    /// Fires for `times` matching calls from the `nth` on.
    pub fn times(mut self, times: usize) -> Rule {
        self.times = times;
        self
    }
}

/// An action that deletes `key` behind the caller's back.
pub fn delete_behind(key: &str) -> Action {
    let key = key.to_string();
    Arc::new(move |store, _| {
        let key = key.clone();
        Box::pin(async move {
            let _ = store.delete(&key, true).await;
        })
    })
}

/// An action that replaces `key` with `bytes` behind the caller's back.
pub fn rewrite_behind(key: &str, bytes: Bytes) -> Action {
    let key = key.to_string();
    Arc::new(move |store, _| {
        let (key, bytes) = (key.clone(), bytes.clone());
        Box::pin(async move {
            let _ = store.put(&key, bytes, Overwrite::Allow).await;
        })
    })
}

/// An action that waits until `gate` is opened ([`tokio::sync::Notify::notify_one`] or
/// `notify_waiters`), pausing the caller.
pub fn pause_until(gate: Arc<tokio::sync::Notify>) -> Action {
    Arc::new(move |_, _| {
        let gate = Arc::clone(&gate);
        Box::pin(async move { gate.notified().await })
    })
}

struct Armed {
    rule: Rule,
    seen: usize,
}

/// A [`Store`] that injects the faults of its rules and passes everything else through.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    rules: Mutex<Vec<Armed>>,
    fired: Mutex<Vec<String>>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultyStore {
    /// Wraps `inner`, with no rules yet.
    pub fn new(inner: Arc<dyn Store>) -> FaultyStore {
        FaultyStore {
            inner,
            rules: Mutex::new(Vec::new()),
            fired: Mutex::new(Vec::new()),
        }
    }

    /// The wrapped store (calls to it are never faulted).
    pub fn inner(&self) -> Arc<dyn Store> {
        Arc::clone(&self.inner)
    }

    /// Adds a rule; its counting starts now.
    pub fn add(&self, rule: Rule) {
        self.rules
            .lock()
            .expect("no panics under the lock")
            .push(Armed { rule, seen: 0 });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().expect("no panics under the lock").clear();
    }

    /// The faults that fired so far, as `op key: fault` lines (for failure messages).
    pub fn fired(&self) -> Vec<String> {
        self.fired.lock().expect("no panics under the lock").clone()
    }

    /// The fault for this call, if a rule fires.
    fn fault(&self, op: Op, key: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("no panics under the lock");
        let mut hit = None;
        for armed in rules.iter_mut() {
            if armed.rule.op.is_some_and(|o| o != op) || !key.starts_with(&armed.rule.prefix) {
                continue;
            }
            armed.seen += 1;
            let first = armed.rule.nth.max(1);
            if hit.is_none()
                && armed.seen >= first
                && armed.seen < first.saturating_add(armed.rule.times)
            {
                hit = Some(armed.rule.fault.clone());
            }
        }
        if let Some(fault) = &hit {
            self.fired
                .lock()
                .expect("no panics under the lock")
                .push(format!("{} {key}: {fault:?}", op.name()));
        }
        hit
    }

    /// Runs `call` under the rules for (`op`, `key`).
    async fn run<T>(
        &self,
        op: Op,
        key: &str,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let injected = |kind: ErrorKind, when: &str| {
            StoreError::new(kind, op.name(), key, format!("injected fault ({when})"))
        };
        match self.fault(op, key) {
            None => call.await,
            Some(Fault::Fail(kind)) => Err(injected(kind, "before the call")),
            Some(Fault::FailAfter(kind)) => {
                call.await?;
                Err(injected(kind, "after the call did its work"))
            }
            Some(Fault::Before(action)) => {
                action(Arc::clone(&self.inner), key.to_string()).await;
                call.await
            }
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn put(&self, key: &str, data: Bytes, overwrite: Overwrite) -> StoreResult<()> {
        self.run(Op::Put, key, self.inner.put(key, data, overwrite))
            .await
    }

    async fn create_exclusive(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.run(
            Op::CreateExclusive,
            key,
            self.inner.create_exclusive(key, data),
        )
        .await
    }

    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        self.run(Op::Read, key, self.inner.read(key)).await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes> {
        self.run(Op::ReadRange, key, self.inner.read_range(key, offset, len))
            .await
    }

    async fn stat(&self, key: &str) -> StoreResult<EntryInfo> {
        self.run(Op::Stat, key, self.inner.stat(key)).await
    }

    async fn list(&self, key: &str) -> StoreResult<Vec<EntryInfo>> {
        self.run(Op::List, key, self.inner.list(key)).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: Overwrite) -> StoreResult<()> {
        self.run(Op::Rename, to, self.inner.rename(from, to, overwrite))
            .await
    }

    async fn delete(&self, key: &str, recursive: bool) -> StoreResult<bool> {
        self.run(Op::Delete, key, self.inner.delete(key, recursive))
            .await
    }

    async fn mkdirs(&self, key: &str) -> StoreResult<()> {
        self.run(Op::Mkdirs, key, self.inner.mkdirs(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn faults_fire_on_the_nth_matching_call_only() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path().into()).await.unwrap());
        let store = FaultyStore::new(Arc::clone(&inner));
        store.add(Rule::fail(Op::Put, 2, ErrorKind::Unavailable).on("x/"));
        store.add(Rule::fail_after(Op::Delete, 1, ErrorKind::Timeout));
        let put = |key: &'static str| store.put(key, Bytes::from_static(b"1"), Overwrite::Allow);
        put("y/a").await.unwrap(); // another prefix: not counted
        put("x/a").await.unwrap();
        let err = put("x/b").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(inner.stat("x/b").await.is_err(), "failed before the work");
        put("x/c").await.unwrap();
        let err = store.delete("x/a", false).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(inner.stat("x/a").await.is_err(), "failed after the work");

        store.add(Rule::before(
            Op::Read,
            1,
            rewrite_behind("x/c", Bytes::from_static(b"2")),
        ));
        assert_eq!(store.read("x/c").await.unwrap(), Bytes::from_static(b"2"));
        store.add(Rule::before(Op::Stat, 1, delete_behind("x/c")));
        assert_eq!(
            store.stat("x/c").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(store.fired().len(), 4, "{:?}", store.fired());

        // A paused call cannot finish before its gate opens.
        let store = Arc::new(store);
        let gate = Arc::new(tokio::sync::Notify::new());
        store.add(Rule::before(Op::Stat, 1, pause_until(Arc::clone(&gate))));
        let paused = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.stat("x/a").await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!paused.is_finished());
        gate.notify_one();
        assert_eq!(
            paused.await.unwrap().unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
