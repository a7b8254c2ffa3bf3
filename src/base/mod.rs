//! What everything else stands on: the store, the on-store format, packs and objects, generations, reading a DAG folder, the configuration.
//!
//! - [`store`]: the storage layer, a [`store::Store`] trait over HDFS and local directories;
//! - [`format`]: the on-store format: generation manifests, digests, keys;
//! - [`pack`]: pack files: many objects in one store file, with an index at its end;
//! - [`objects`]: where an object lives (its pack, loose, or a gc run's trash) and reading it;
//! - [`generations`]: reading generations: the head, manifests, tree differences;
//! - [`scan`]: which files of a DAG folder are published, and their digests;
//! - [`config`]: the TOML configuration and its layering;

pub mod config;
pub mod format;
pub mod generations;
pub mod objects;
pub mod pack;
pub mod scan;
pub mod store;
