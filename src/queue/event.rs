//! What goes in and what comes out: an [`Event`] pushed by a source, a [`Delivery`] read by a consumer.

use bytes::Bytes;

/// An event to push: its payload and its source position (relay seq, LSN; 0 if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The source's position, non-decreasing in push order; drives the watermark.
    pub position: u64,
    /// The bytes.
    pub payload: Bytes,
}

impl Event {
    /// An event at `position` carrying `payload`.
    pub fn new(position: u64, payload: impl Into<Bytes>) -> Self {
        Event {
            position,
            payload: payload.into(),
        }
    }
}

/// An event delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue's sequence number: ack up to it.
    pub seq: u64,
    /// The source position it was pushed with.
    pub position: u64,
    /// When the queue accepted it, µs since the Unix epoch (kept through a spill and a restart).
    pub pushed_at_us: u64,
    /// The bytes.
    pub payload: Bytes,
}
