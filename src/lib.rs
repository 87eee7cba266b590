//! Spillway: a disk-spilling event queue with a memory budget in bytes.
//!
//! Always built (the lean library, `default-features = false`):
//!
//! - [`queue`]: the spilling queue, its cursors, acks and watermark.
//! - [`storage`]: the durable spill log (the `spillway-storage` crate).
//! - [`data_dir_lock`]: one owner per data directory.
//!
//! With the `pipeline` feature (on by default):
//!
//! - `source`: the relay firehose source and its frame decoding.
//! - `cbor`: the bounded DAG-CBOR reader and the frame error, below `source` and `decode`.
//! - `decode`: frames decoded in full to Jetstream or rsky JSON, with filters.
//! - `sink`: the Redis stream and JSON-lines sinks.
//! - `pipeline`: source -> queue -> sink wiring and shutdown; `config`: its settings;
//!   `metrics`: `/metrics` and `/health`; `lane`: one source's running parts.
//! - `bench`: the benchmarks behind `spillway bench`.
//!
//! `examples/embed_queue.rs` embeds the queue with the lean library alone;
//! `docs/architecture.md` draws the layers and the crash and durability rules.
#![deny(missing_docs)]

#[cfg(feature = "pipeline")]
pub mod backoff;
#[cfg(feature = "pipeline")]
pub mod bench;
#[cfg(feature = "pipeline")]
pub mod cbor;
#[cfg(feature = "pipeline")]
pub mod config;
pub mod data_dir_lock;
#[cfg(feature = "pipeline")]
pub mod decode;
#[cfg(feature = "pipeline")]
pub mod heap_trim;
#[cfg(feature = "pipeline")]
pub mod lane;
#[cfg(feature = "pipeline")]
pub mod metrics;
#[cfg(feature = "pipeline")]
pub mod pipeline;
pub mod queue;
#[cfg(feature = "pipeline")]
pub mod sink;
#[cfg(feature = "pipeline")]
pub mod source;
pub use spillway_storage as storage;

pub use queue::{Consumer, Delivery, Event, QueueConfig, SpillQueue};
