//! How a queue event is stored as a log record: `[seq u64 LE][position u64 LE][pushed_at_us u64 LE][payload]`.
//!
//! WARNING: persisted. A change needs a new [`ENVELOPE_VERSION`]; the queue refuses
//! a log written with another one.

use bytes::{Bytes, BytesMut};

/// Bytes the envelope adds to a payload.
pub const ENVELOPE_BYTES: usize = 24;
/// The layout version, saved in the log as the named position [`ENVELOPE_VERSION_KEY`].
/// Version 1 (no marker) lacked `pushed_at_us`.
pub const ENVELOPE_VERSION: u64 = 2;
/// The named log position holding the envelope version.
pub const ENVELOPE_VERSION_KEY: &str = "queue.envelope_version";

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The queue seq.
    pub seq: u64,
    /// The source position.
    pub position: u64,
    /// When the queue accepted the event, µs since the Unix epoch.
    pub pushed_at_us: u64,
    /// The payload, copied out of the log's mapped memory.
    pub payload: Bytes,
}

/// The envelope of one event: the bytes stored before its payload.
pub fn header(seq: u64, position: u64, pushed_at_us: u64) -> [u8; ENVELOPE_BYTES] {
    let mut out = [0u8; ENVELOPE_BYTES];
    out[0..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&position.to_le_bytes());
    out[16..24].copy_from_slice(&pushed_at_us.to_le_bytes());
    out
}

/// Decodes a record; `None` if it is shorter than an envelope.
pub fn decode(record: &[u8]) -> Option<Envelope> {
    decode_into(record, &mut BytesMut::new())
}

/// Decodes a record, copying its payload into `buffer` and splitting it off: one read's
/// payloads share one allocation (reserved by the caller) instead of one each.
pub fn decode_into(record: &[u8], buffer: &mut BytesMut) -> Option<Envelope> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(record.get(i..i + 8)?.try_into().ok()?))
    };
    let (seq, position, pushed_at_us) = (word(0)?, word(8)?, word(16)?);
    buffer.extend_from_slice(&record[ENVELOPE_BYTES..]);
    Some(Envelope {
        seq,
        position,
        pushed_at_us,
        payload: buffer.split().freeze(),
    })
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
