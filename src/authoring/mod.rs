//! Publishing DAG folders as generations and keeping the store tidy: the publish protocol, the sync daemon and its watcher, imports, the plain mirror, gc.
//!
//! - [`publish`]: the publish protocol (upload, compare-and-swap commit, rebase);
//! - [`sync`]: the `dagfs sync` daemon, its status file and single-instance lock;
//! - [`watch`]: watching a DAG folder and debouncing its changes;
//! - [`import`]: turning a plain DAG folder (the NFS-gateway setup) into a generation;
//! - [`mirror`]: the plain copy of the head for `hadoop fs` and NFS-gateway readers;
//! - [`gc`]: removal of old generations and unreferenced objects;

pub mod gc;
pub mod import;
pub mod mirror;
pub mod publish;
pub mod sync;
pub mod watch;
