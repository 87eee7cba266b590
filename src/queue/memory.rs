//! The in-memory tier: events not written to the log, held until every consumer acked them.

use std::collections::VecDeque;

use bytes::Bytes;

use super::budget::event_cost;

/// One event held in memory.
#[derive(Debug, Clone)]
pub(crate) struct MemoryEntry {
    /// Queue sequence number.
    pub seq: u64,
    /// The source's position (relay seq, LSN), for the watermark.
    pub position: u64,
    /// The log's `next_seq` when the event was pushed: log records below it come before
    /// this event, records at or above it after. This orders memory against disk for any cursor.
    pub log_before: u64,
    /// When it was pushed, µs since the Unix epoch.
    pub pushed_at_us: u64,
    pub payload: Bytes,
}

/// Slack over its length an allocation may have and still be held as it is: beyond it
/// the payload is copied into one of its own size.
const HELD_SLACK_BYTES: usize = 64;

/// `payload` as the memory tier holds it: in an allocation of its own size, so the
/// budget, which counts payload lengths, bounds what memory holds. A `Bytes` can be a
/// slice of a larger buffer that it keeps alive whole (tungstenite hands frames over as
/// slices of its 128 KiB read buffer: 57.5 MiB of buffers were live for 44 MiB of
/// frames counted, heaptrack of `bench e2e`); such a payload, or one shared with another
/// holder, is copied. One that owns its allocation alone and fills it is kept without a
/// copy. Spilled events need none of this: the spill write is their copy.
pub(crate) fn held_payload(payload: Bytes) -> Bytes {
    match payload.try_into_mut() {
        Ok(owned) if owned.capacity() <= owned.len() + owned.len() / 8 + HELD_SLACK_BYTES => {
            owned.freeze()
        }
        Ok(owned) => Bytes::copy_from_slice(&owned),
        Err(shared) => Bytes::copy_from_slice(&shared),
    }
}

/// Events in memory, oldest first; their cost never exceeds `capacity_bytes`.
#[derive(Debug)]
pub(crate) struct MemoryTier {
    entries: VecDeque<MemoryEntry>,
    bytes: u64,
    capacity_bytes: u64,
}

impl MemoryTier {
    pub fn new(capacity_bytes: u64) -> Self {
        MemoryTier {
            entries: VecDeque::new(),
            bytes: 0,
            capacity_bytes,
        }
    }

    /// Whether events costing `cost` more bytes fit.
    pub fn fits(&self, cost: u64) -> bool {
        self.bytes + cost <= self.capacity_bytes
    }

    pub fn push(&mut self, entry: MemoryEntry) {
        self.bytes += event_cost(entry.payload.len());
        debug_assert!(self.bytes <= self.capacity_bytes);
        debug_assert!(self.entries.back().is_none_or(|last| last.seq < entry.seq));
        self.entries.push_back(entry);
    }

    /// Index of the first entry with `seq >= from_seq`.
    pub fn index_from(&self, from_seq: u64) -> Option<usize> {
        let index = self.entries.partition_point(|e| e.seq < from_seq);
        (index < self.entries.len()).then_some(index)
    }

    pub fn get(&self, index: usize) -> Option<&MemoryEntry> {
        self.entries.get(index)
    }

    /// Frees every entry with `seq < seq_bound`; returns how many.
    pub fn release_below(&mut self, seq_bound: u64) -> usize {
        let mut freed = 0;
        while self.entries.front().is_some_and(|e| e.seq < seq_bound) {
            if let Some(entry) = self.entries.pop_front() {
                self.bytes -= event_cost(entry.payload.len());
                freed += 1;
            }
        }
        freed
    }

    pub fn front(&self) -> Option<&MemoryEntry> {
        self.entries.front()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes charged against the budget now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Payload bytes of the entries.
    pub fn payload_bytes(&self) -> u64 {
        self.bytes - self.entries.len() as u64 * super::budget::EVENT_OVERHEAD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::{held_payload, MemoryEntry};
    use crate::queue::budget::EVENT_OVERHEAD_BYTES;
    use bytes::Bytes;

    #[test]
    fn the_charged_overhead_covers_an_entry_and_a_shared_buffer_header() {
        let shared_header = 32;
        assert!(std::mem::size_of::<MemoryEntry>() as u64 + shared_header <= EVENT_OVERHEAD_BYTES);
    }

    #[test]
    fn held_payloads_own_an_allocation_of_their_size() {
        // Alone in an allocation it fills: kept, no copy.
        let exact = Bytes::from(vec![1u8; 5000]);
        let at = exact.as_ptr();
        assert_eq!(held_payload(exact).as_ptr(), at);
        // A slice of a larger buffer others still share (a WebSocket read buffer): copied,
        // and the copy equals it.
        let mut buffer = bytes::BytesMut::with_capacity(128 * 1024);
        buffer.extend_from_slice(&[7u8; 20_000]);
        let frame = buffer.split_to(5000).freeze();
        let (at, copy) = (frame.as_ptr(), frame.clone());
        let held = held_payload(frame);
        assert_ne!(held.as_ptr(), at);
        assert_eq!(held, copy);
        // Alone, but in an allocation far larger than itself: copied.
        let mut roomy = Vec::with_capacity(64 * 1024);
        roomy.extend_from_slice(&[3u8; 100]);
        let roomy = Bytes::from(roomy);
        let at = roomy.as_ptr();
        let held = held_payload(roomy);
        assert_ne!(held.as_ptr(), at);
        assert_eq!(&held[..], &[3u8; 100][..]);
    }
}
