//! How a queue event is stored as a log record: `[seq u64 LE][position u64 LE][pushed_at_us u64 LE][payload]`.
//!
//! WARNING: persisted. A change needs a new [`ENVELOPE_VERSION`]; the queue refuses
//! a log written with another one.

use bytes::Bytes;

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

/// Writes the envelope of one event into `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, position: u64, pushed_at_us: u64, payload: &[u8]) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&pushed_at_us.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a record; `None` if it is shorter than an envelope.
pub fn decode(record: &[u8]) -> Option<Envelope> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(record.get(i..i + 8)?.try_into().ok()?))
    };
    Some(Envelope {
        seq: word(0)?,
        position: word(8)?,
        pushed_at_us: word(16)?,
        payload: Bytes::copy_from_slice(&record[ENVELOPE_BYTES..]),
    })
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
