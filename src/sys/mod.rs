//! Plumbing any layer uses: local files, this host, the runtime directory, metrics, processes.
//!
//! - [`atomic`]: local files replaced atomically (state files, caches, records);
//! - [`host`]: this host's name and user (authors, candidate ids, lock holders);
//! - [`runtime`]: the runtime directory where daemons publish their state files;
//! - [`metrics`]: the optional Prometheus endpoint of the long-running commands;
//! - [`proc`]: the process table: descendants and process groups of the supervised commands;

pub mod atomic;
pub mod host;
pub mod metrics;
pub mod proc;
pub mod runtime;
