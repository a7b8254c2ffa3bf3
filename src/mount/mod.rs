//! `dagfs mount`: serves the committed generation of a store as a read-only FUSE filesystem.
//!
//! - [`state`]: the state file other commands read (served generation, head, errors).

pub mod state;
