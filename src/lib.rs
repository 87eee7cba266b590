//! Spillway: a disk-spilling event queue with a memory budget in bytes.
//!
//! - [`queue`]: the spilling queue, its cursors, acks and watermark.
//! - [`storage`]: the durable spill log (the `spillway-storage` crate).
//! - [`source`]: the relay firehose source and its frame decoding.
//! - [`decode`]: frames decoded in full to Jetstream or rsky JSON, with filters.
//! - [`cbor`]: the bounded DAG-CBOR reader and the frame error, below `source` and `decode`.
//! - [`sink`]: the Redis stream and JSON-lines sinks.
//! - [`pipeline`]: source -> queue -> sink wiring and shutdown; [`config`]: its settings;
//!   [`metrics`]: `/metrics` and `/health`.
//! - [`bench`]: the benchmarks behind `spillway bench`.
#![deny(missing_docs)]

pub mod bench;
pub mod cbor;
pub mod config;
pub mod data_dir_lock;
pub mod decode;
pub mod lane;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod sink;
pub mod source;
pub use spillway_storage as storage;

pub use queue::{Consumer, Delivery, Event, QueueConfig, SpillQueue};
