//! Reading generations from a store: the head, a manifest, the history, tree differences.

use std::collections::BTreeMap;

use crate::format::{
    manifest_key, parse_manifest_name, Entry, FormatError, Manifest, GENERATIONS_DIR, OBJECTS_DIR,
};
use crate::store::{list_if_exists, ErrorKind, Store, StoreError};

/// A generation that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest is damaged or breaks the format; it is never used.
    #[error("generation {generation} in {url}: {source}")]
    Corrupt {
        /// The generation.
        generation: u64,
        /// The store.
        url: String,
        /// What is wrong.
        source: FormatError,
    },
    /// No such generation.
    #[error("generation {generation} does not exist in {url}{}", hint(.head))]
    Missing {
        /// The generation asked for.
        generation: u64,
        /// The store.
        url: String,
        /// The newest generation, if any.
        head: Option<u64>,
    },
    /// The store has no generations.
    #[error("{url} has no generations yet; publish one with `dagfs push`")]
    Empty {
        /// The store.
        url: String,
    },
}

fn hint(head: &Option<u64>) -> String {
    match head {
        Some(head) => format!(" (the newest is {head}; see `dagfs log`)"),
        None => " (it has no generations yet; publish one with `dagfs push`)".to_string(),
    }
}

/// The numbers of all generations in the store, ascending (one listing).
pub async fn list(store: &dyn Store) -> Result<Vec<u64>, StoreError> {
    match store.list(GENERATIONS_DIR).await {
        Ok(entries) => {
            let mut numbers: Vec<u64> = entries
                .iter()
                .filter_map(|e| parse_manifest_name(e.name()))
                .collect();
            numbers.sort_unstable();
            Ok(numbers)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The newest generation's number, or `None` for an empty store.
pub async fn head(store: &dyn Store) -> Result<Option<u64>, StoreError> {
    Ok(list(store).await?.last().copied())
}

/// `generation`, or the head when it is `None`; [`GenerationError::Empty`] for an empty store.
pub async fn given_or_head(
    store: &dyn Store,
    generation: Option<u64>,
) -> Result<u64, GenerationError> {
    match generation {
        Some(generation) => Ok(generation),
        None => head(store).await?.ok_or_else(|| GenerationError::Empty {
            url: store.url().to_string(),
        }),
    }
}

/// Reads and validates generation `generation`.
pub async fn load(store: &dyn Store, generation: u64) -> Result<Manifest, GenerationError> {
    let bytes = match store.read(&manifest_key(generation)).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(GenerationError::Missing {
                generation,
                url: store.url().to_string(),
                head: head(store).await?,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let corrupt = |source| GenerationError::Corrupt {
        generation,
        url: store.url().to_string(),
        source,
    };
    let manifest = Manifest::from_bytes(&bytes).map_err(corrupt)?;
    if manifest.generation != generation {
        return Err(corrupt(FormatError::Corrupt(format!(
            "file of generation {generation} holds generation {}",
            manifest.generation
        ))));
    }
    Ok(manifest)
}

/// The head generation's manifest, or `None` for an empty store.
pub async fn load_head(store: &dyn Store) -> Result<Option<Manifest>, GenerationError> {
    match head(store).await? {
        Some(generation) => Ok(Some(load(store, generation).await?)),
        None => Ok(None),
    }
}

/// Every object file in the store (one listing per fan-out directory).
pub async fn list_objects(store: &dyn Store) -> Result<Vec<crate::store::EntryInfo>, StoreError> {
    let mut objects = Vec::new();
    for fanout in list_if_exists(store, OBJECTS_DIR).await? {
        objects.extend(list_if_exists(store, &fanout.key).await?);
    }
    Ok(objects)
}

/// How one path differs between two trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only in the new tree.
    Added(Entry),
    /// In both, with different content or metadata: (old, new).
    Changed(Entry, Entry),
    /// Only in the old tree.
    Removed(Entry),
}

impl Change {
    /// The path the change is about.
    pub fn path(&self) -> &str {
        match self {
            Change::Added(e) | Change::Removed(e) | Change::Changed(_, e) => &e.path,
        }
    }

    /// The entry after the change, `None` for a removal.
    pub fn new_entry(&self) -> Option<&Entry> {
        match self {
            Change::Added(e) | Change::Changed(_, e) => Some(e),
            Change::Removed(_) => None,
        }
    }
}

/// The changes that turn tree `old` into tree `new`, sorted by path.
pub fn diff(old: &[Entry], new: &[Entry]) -> Vec<Change> {
    let old: BTreeMap<&str, &Entry> = old.iter().map(|e| (e.path.as_str(), e)).collect();
    let new: BTreeMap<&str, &Entry> = new.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut changes = Vec::new();
    for (path, before) in &old {
        match new.get(path) {
            None => changes.push(Change::Removed((*before).clone())),
            Some(after) if after != before => {
                changes.push(Change::Changed((*before).clone(), (*after).clone()))
            }
            Some(_) => {}
        }
    }
    for (path, after) in &new {
        if !old.contains_key(path) {
            changes.push(Change::Added((*after).clone()));
        }
    }
    changes.sort_by(|a, b| a.path().cmp(b.path()));
    changes
}

/// Applies `changes` to `tree`, path by path.
pub fn apply(tree: &[Entry], changes: &[Change]) -> Vec<Entry> {
    let mut map: BTreeMap<String, Entry> =
        tree.iter().map(|e| (e.path.clone(), e.clone())).collect();
    for change in changes {
        match change.new_entry() {
            Some(entry) => map.insert(entry.path.clone(), entry.clone()),
            None => map.remove(change.path()),
        };
    }
    map.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, content: &str) -> Entry {
        crate::testutil::entry_for(path, content.as_bytes())
    }

    #[test]
    fn diff_and_apply_are_inverse() {
        let old = vec![e("a", "1"), e("b", "2"), e("c", "3")];
        let new = vec![e("a", "1"), e("b", "22"), e("d", "4")];
        let changes = diff(&old, &new);
        let paths: Vec<&str> = changes.iter().map(Change::path).collect();
        assert_eq!(paths, ["b", "c", "d"]);
        assert!(matches!(changes[0], Change::Changed(..)));
        assert!(matches!(changes[1], Change::Removed(..)));
        assert!(matches!(changes[2], Change::Added(..)));
        assert_eq!(apply(&old, &changes), new);
        assert!(diff(&new, &new).is_empty());
    }
}
