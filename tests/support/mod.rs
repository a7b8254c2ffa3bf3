//! Test support shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod minidfs;
pub mod mount;

use dagfs::store::Store;

/// The keys `store.list(dir)` returns, in order; panics on error.
pub async fn list_keys(store: &dyn Store, dir: &str) -> Vec<String> {
    let entries = store.list(dir).await.expect("list");
    entries.into_iter().map(|e| e.key).collect()
}
