//! Fixtures shared by the filesystem's tests.
#![allow(dead_code)] // each test binary uses its own part

use std::io;

use dagfs_fuse::{Invalidator, TreeLabel};

/// The label of generation `g`, with a tree id derived from it.
pub fn label(g: u64) -> TreeLabel {
    TreeLabel {
        generation: g,
        tree_id: format!("{g:064x}"),
    }
}

/// An invalidator for a filesystem no kernel mounts: driven through its API alone.
pub struct NoKernel;

impl Invalidator for NoKernel {
    fn inval_entry(&self, _: u64, _: &str) -> io::Result<()> {
        Ok(())
    }
    fn inval_inode(&self, _: u64) -> io::Result<()> {
        Ok(())
    }
}
