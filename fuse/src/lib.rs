//! The read-only FUSE filesystem behind `dagfs mount`.
//!
//! Filled by the mount work: filesystem logic as a library over a client trait, and a thin
//! `fuser` adapter, after the model of awslabs/mountpoint-s3.
