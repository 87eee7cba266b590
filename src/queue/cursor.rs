//! A consumer's position: what it has read, what it has acked, and how acks map to log positions.

use std::collections::{BTreeMap, VecDeque};

/// Where a stretch of delivered events came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// From memory, read while the cursor's log position was `log_at`.
    Memory { log_at: u64 },
    /// From the log, records `log_first..` (one per seq, seqs dense).
    Disk { log_first: u64 },
}

/// Delivered, unacknowledged events with dense seqs from one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stretch {
    pub seq_first: u64,
    pub seq_next: u64,
    pub origin: Origin,
}

impl Stretch {
    /// The log position a consumer may resume from once everything up to `seq` (inclusive) is acked.
    fn log_after(&self, seq: u64) -> u64 {
        match self.origin {
            Origin::Memory { log_at } => log_at,
            Origin::Disk { log_first } => log_first + (seq + 1 - self.seq_first),
        }
    }
}

/// One consumer's state.
#[derive(Debug, Clone)]
pub(crate) struct CursorState {
    /// Next seq to deliver.
    pub seq_next: u64,
    /// Next log record to read.
    pub log_next: u64,
    /// Everything below is acked.
    pub acked_seq_next: u64,
    /// After a restart, reading resumes here.
    pub acked_log_next: u64,
    pub unacked: VecDeque<Stretch>,
    /// Whether a `Consumer` handle is live.
    pub attached: bool,
    /// Push time of the newest event delivered since open, for the lag age.
    pub newest_delivered_pushed_us: Option<u64>,
    /// Source position of the last event delivered since open: bounds a lost range after it.
    pub last_position: Option<u64>,
}

impl CursorState {
    /// A cursor whose next unacked event is `seq` and next log record `log`.
    pub fn at(seq: u64, log: u64) -> Self {
        CursorState {
            seq_next: seq,
            log_next: log,
            acked_seq_next: seq,
            acked_log_next: log,
            unacked: VecDeque::new(),
            attached: false,
            newest_delivered_pushed_us: None,
            last_position: None,
        }
    }

    /// Records a delivery; merges with the previous stretch where it continues it.
    pub fn delivered(&mut self, stretch: Stretch) {
        if let Some(last) = self.unacked.back_mut() {
            let continues = last.seq_next == stretch.seq_first
                && match (last.origin, stretch.origin) {
                    (Origin::Memory { log_at: a }, Origin::Memory { log_at: b }) => a == b,
                    (Origin::Disk { log_first: a }, Origin::Disk { log_first: b }) => {
                        a + (last.seq_next - last.seq_first) == b
                    }
                    _ => false,
                };
            if continues {
                last.seq_next = stretch.seq_next;
                return;
            }
        }
        self.unacked.push_back(stretch);
    }

    /// Acks every delivered seq `<= seq`; returns whether the acked position moved.
    pub fn ack(&mut self, seq: u64) -> bool {
        if seq < self.acked_seq_next {
            return false;
        }
        while let Some(first) = self.unacked.front_mut() {
            if seq < first.seq_first {
                break;
            }
            let last_acked = seq.min(first.seq_next - 1);
            self.acked_log_next = first.log_after(last_acked);
            self.acked_seq_next = last_acked + 1;
            if last_acked + 1 == first.seq_next {
                self.unacked.pop_front();
            } else {
                if let Origin::Disk { log_first } = &mut first.origin {
                    *log_first += last_acked + 1 - first.seq_first;
                }
                first.seq_first = last_acked + 1;
                break;
            }
        }
        // Seqs between stretches (dropped or lost before a restart) count as acked too.
        if self.unacked.is_empty() {
            self.acked_seq_next = self.acked_seq_next.max(seq + 1).min(self.seq_next);
        }
        true
    }

    /// Moves every position past log records dropped below `log_first`.
    pub fn skip_dropped(&mut self, log_first: u64) {
        self.log_next = self.log_next.max(log_first);
        self.acked_log_next = self.acked_log_next.max(log_first);
        while let Some(first) = self.unacked.front_mut() {
            match first.origin {
                Origin::Disk { log_first: start } if start < log_first => {
                    let dropped = (log_first - start).min(first.seq_next - first.seq_first);
                    first.seq_first += dropped;
                    first.origin = Origin::Disk {
                        log_first: start + dropped,
                    };
                    if first.seq_first == first.seq_next {
                        self.unacked.pop_front();
                        continue;
                    }
                    break;
                }
                _ => break,
            }
        }
    }
}

/// The named log positions holding a consumer's durable ack: `seq.{name}` (the queue
/// seq after it) and `log.{name}` (the log record after it).
pub(crate) fn position_keys(consumer: &str) -> (String, String) {
    (format!("seq.{consumer}"), format!("log.{consumer}"))
}

/// The consumers saved among the log's named positions, each at its last durable ack,
/// its log position kept within the log's live range `first_seq..=next_seq`.
pub(crate) fn saved_cursors(
    positions: &[(String, u64)],
    first_seq: u64,
    next_seq: u64,
) -> BTreeMap<String, CursorState> {
    let mut saved: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
    for (name, value) in positions {
        if let Some(consumer) = name.strip_prefix("seq.") {
            saved.entry(consumer.to_string()).or_default().0 = Some(*value);
        } else if let Some(consumer) = name.strip_prefix("log.") {
            saved.entry(consumer.to_string()).or_default().1 = Some(*value);
        }
    }
    saved
        .into_iter()
        .map(|(name, (seq, log))| {
            let log = log.unwrap_or(first_seq).clamp(first_seq, next_seq);
            (name, CursorState::at(seq.unwrap_or(0), log))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_map_to_resume_positions_across_memory_and_disk_stretches() {
        let mut c = CursorState::at(0, 0);
        c.delivered(Stretch {
            seq_first: 0,
            seq_next: 5,
            origin: Origin::Memory { log_at: 0 },
        });
        c.delivered(Stretch {
            seq_first: 5,
            seq_next: 10,
            origin: Origin::Disk { log_first: 0 },
        });
        c.delivered(Stretch {
            seq_first: 10,
            seq_next: 15,
            origin: Origin::Disk { log_first: 5 },
        });
        assert_eq!(c.unacked.len(), 2, "contiguous disk stretches merge");
        c.seq_next = 15;
        c.ack(3);
        assert_eq!((c.acked_seq_next, c.acked_log_next), (4, 0));
        c.ack(7);
        assert_eq!((c.acked_seq_next, c.acked_log_next), (8, 3));
        c.ack(14);
        assert_eq!((c.acked_seq_next, c.acked_log_next), (15, 10));
        assert!(c.unacked.is_empty());
        assert!(!c.ack(2), "an old ack changes nothing");
    }
}
