//! Serving generations on scheduler and worker hosts: the verified cache, the mount, checkouts, and verification of what is served.
//!
//! - [`cache`]: the mount's verified local cache of manifests and objects;
//! - [`mount`]: the read-only FUSE mount of the committed generation, and its state file;
//! - [`checkout`]: one generation materialised as a local directory (Airflow workers);
//! - [`verify`]: integrity checks of a folder and a store by content hash;

pub mod cache;
pub mod checkout;
pub mod mount;
pub mod verify;
