//! Spillway: a disk-spilling event queue with a memory budget in bytes.
//!
//! The storage log lives in the `spillway-storage` crate, re-exported as [`storage`].

pub mod bench;
pub use spillway_storage as storage;
