//! Spillway: a disk-spilling event queue with a memory budget in bytes.
//!
//! - [`queue`]: the spilling queue, its cursors, acks and watermark.
//! - [`storage`]: the durable spill log (the `spillway-storage` crate).
//! - [`source`]: the relay firehose source and its frame decoding.
//! - [`bench`]: the benchmarks behind `spillway bench`.
#![deny(missing_docs)]

pub mod bench;
pub mod queue;
pub mod source;
pub use spillway_storage as storage;

pub use queue::{Consumer, Delivery, Event, QueueConfig, SpillQueue};
