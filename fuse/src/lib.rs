//! The read-only filesystem behind `dagfs mount`.
//!
//! Modelled on mountpoint-s3: the filesystem logic ([`fs::DagFs`]) is a plain library over a
//! [`ContentSource`] trait (where file bytes come from), tested without FUSE; a thin adapter
//! ([`fuse`]) maps `fuser` requests onto it. The crate knows nothing about HDFS or the dagfs
//! store format: the `dagfs` crate gives it trees of [`FileSpec`]s and a content source backed
//! by its verified local cache.
//!
//! Semantics (see `docs/DESIGN.md`, "Mount semantics"): the mount shows exactly one tree at a
//! time and switches to the next atomically for a sequential observer; a file's inode is
//! immutable (same path, new content = new inode, like an editor's atomic save), so an open
//! file keeps reading what it opened and the kernel may cache file pages and attributes freely.

pub mod fs;
pub mod fuse;
pub mod tree;

pub use fs::{
    ContentSource, DagFs, FsError, Invalidator, MountOptions, ServeError, Shown, ShownBefore,
};
pub use tree::{ContentId, FileSpec, TreeLabel};
