//! Spillway: a disk-spilling event queue with a memory budget in bytes.
pub use spillway_storage as storage;
