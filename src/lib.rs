//! dagfs keeps Apache Airflow DAG folders highly available on HDFS.
//!
//! The library holds everything the `dagfs` binary does, one module per concern:
//!
//! - [`store`]: the storage layer, a [`store::Store`] trait over HDFS and local directories;
//! - [`config`]: the TOML configuration and its layering;
//! - [`format`]: the on-store format: generation manifests, digests, keys;
//! - [`scan`]: which files of a DAG folder are published, and their digests;
//! - [`generations`]: reading generations: the head, manifests, tree differences;
//! - [`host`]: this host's name and user (authors, candidate ids, lock holders);
//! - [`publish`]: the publish protocol (upload, compare-and-swap commit, rebase);
//! - [`import`]: turning a plain DAG folder (the NFS-gateway setup) into a generation;
//! - [`metadb`]: Airflow's metadata database: its connection (dagfs config, Airflow's), a pool;
//! - [`mirror`]: the plain copy of the head for `hadoop fs` and NFS-gateway readers;
//! - [`cache`]: the mount's verified local cache of manifests and objects;
//! - [`checkout`]: one generation materialised as a local directory (Airflow workers);
//! - [`mount`]: the read-only FUSE mount of the committed generation, and its state file;
//! - [`gc`]: removal of old generations and unreferenced objects;
//! - [`verify`]: integrity checks of a folder and a store by content hash;
//! - [`watch`]: watching a DAG folder and debouncing its changes;
//! - [`sync`]: the `dagfs sync` daemon, its status file and single-instance lock;
//! - [`election`]: leader election with fencing epochs on the store alone;
//! - [`supervise`]: running the scheduler's commands fenced, in their own process groups;
//! - [`failover`]: the `dagfs failover` controller (election, identity gate, supervision);
//! - [`atomic`]: local files replaced atomically (state files, caches, records);
//! - [`runtime`]: the runtime directory where daemons publish their state files;
//! - [`metrics`]: the optional Prometheus endpoint of the long-running commands;
//! - [`cli`]: the command line.
//!
//! `docs/DESIGN.md` describes the formats and protocols; `docs/OPERATIONS.md` how to run it.

pub mod atomic;
pub mod cache;
pub mod checkout;
pub mod cli;
pub mod config;
pub mod election;
pub mod failover;
pub mod format;
pub mod gc;
pub mod generations;
pub mod host;
pub mod import;
pub mod metadb;
pub mod metrics;
pub mod mirror;
pub mod mount;
pub mod objects;
pub mod pack;

pub mod proc;
pub mod publish;
pub mod running;
pub mod runtime;
pub mod scan;
pub mod store;
pub mod supervise;
pub mod sync;
pub mod verify;
pub mod watch;

#[cfg(test)]
mod testutil;
