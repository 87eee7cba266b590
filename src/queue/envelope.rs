//! How a queue event is stored as a log record: `[seq u64 LE][position u64 LE][payload]`.
//!
//! WARNING: persisted. Changing it needs a new log format version.

use bytes::Bytes;

/// Bytes the envelope adds to a payload.
pub const ENVELOPE_BYTES: usize = 16;

/// Writes the envelope of one event into `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, position: u64, payload: &[u8]) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A decoded envelope: seq, position, payload copied out of the log's mapped memory.
pub fn decode(record: &[u8]) -> Option<(u64, u64, Bytes)> {
    let seq = u64::from_le_bytes(record.get(0..8)?.try_into().ok()?);
    let position = u64::from_le_bytes(record.get(8..16)?.try_into().ok()?);
    Some((
        seq,
        position,
        Bytes::copy_from_slice(&record[ENVELOPE_BYTES..]),
    ))
}
