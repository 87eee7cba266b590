//! Backlog the log could not return: damaged or missing records, reported to consumers in order.
//!
//! A consumer meets a lost range where it would have read those records, so a caller
//! that can fetch them again from their source (a relay that still holds them) can
//! write them in their place before it goes on: order is kept. The source positions
//! that bound the range come from the events on either side of it.

use super::event::Delivery;

/// A range of the backlog whose records are lost, met by a consumer where they stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostEvents {
    /// Log records lost (one event each).
    pub log_records: u64,
    /// First lost log record.
    pub log_first: u64,
    /// The log record after the lost ones.
    pub log_next: u64,
    /// Source position of the event before the range, when known: the lost events are above it.
    pub after_position: Option<u64>,
    /// Source position the lost events are below: the next intact event's, or a source
    /// replay's checkpoint + 1 when the replay delivers everything above it again.
    pub before_position: Option<u64>,
    /// The file (or store key) where the damage is.
    pub location: String,
    /// Byte offset of the damage in that file.
    pub offset: u64,
    /// What check failed.
    pub reason: String,
}

impl LostEvents {
    /// Whether the source positions that bound the range are both known, so it can be fetched again.
    pub fn refetchable(&self) -> Option<(u64, u64)> {
        match (self.after_position, self.before_position) {
            (Some(after), Some(before)) if before > after + 1 => Some((after, before)),
            _ => None,
        }
    }
}

/// What one read of a consumer found.
#[derive(Debug)]
pub enum Read {
    /// Events, in order (at least one).
    Events(Vec<Delivery>),
    /// A lost range; the events after it come with the next read.
    Lost(LostEvents),
}
