//! Test support shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod minidfs;
