//! dagfs keeps Apache Airflow DAG folders highly available on HDFS.
//!
//! The library holds everything the `dagfs` binary does, in layers, each using only those
//! before it (`tests/layout.rs` checks that):
//!
//! - [`sys`]: plumbing: atomic local files, this host's identity, the runtime directory,
//!   the metrics endpoint, the process table;
//! - [`base`]: the store, the on-store format, packs and objects, generations, scanning a
//!   DAG folder, the configuration;
//! - [`authoring`]: publishing (push, the sync daemon), imports, the mirror, gc;
//! - [`serving`]: the verified cache, the mount, checkouts, verification;
//! - [`ha`]: the election, the metadata database, fenced supervision, the failover
//!   controller;
//! - [`cli`]: the command line.
//!
//! Every module is also re-exported at the crate root (`dagfs::store`, `dagfs::mount`...).
//!
//! `docs/DESIGN.md` describes the formats and protocols; `docs/OPERATIONS.md` how to run it.

pub mod authoring;
pub mod base;
pub mod cli;
pub mod ha;
pub mod serving;
pub mod sys;

pub use authoring::{gc, import, mirror, publish, sync, watch};
pub use base::{config, format, generations, objects, pack, scan, store};
pub use ha::{election, failover, metadb, running, supervise};
pub use serving::{cache, checkout, mount, verify};
pub use sys::{atomic, host, metrics, proc, runtime};

#[cfg(test)]
mod testutil;
