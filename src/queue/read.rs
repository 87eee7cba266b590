//! The read path: a consumer's next stretch, from memory or from the log in seq order
//! across the boundary, superseded records skipped, and a lost range of the log bounded
//! by the source positions around it.

use super::config::SpillMode;
use super::cursor::{CursorState, Origin, Stretch};
use super::envelope;
use super::error::QueueError;
use super::event::Delivery;
use super::lost::{LostEvents, Read};
use super::memory::MemoryTier;
use super::replay::ReplayRule;
use super::shared::{Core, Counters, State};

/// Lost ranges that join into one report at most, so a scan past damage stays bounded.
pub(super) const GAP_MERGES_MAX: usize = 64;

/// What bounding a damaged range found.
enum GapFound {
    /// Lost events, bounded.
    Lost(LostEvents),
    /// Every record of the range comes again with a source replay.
    Superseded { log_next: u64, records: u64 },
    /// The range reaches the log's end and the next event is not pushed yet.
    NotYetBounded,
}

impl Core {
    /// Whether the consumer's next read could read the log.
    pub(super) fn read_may_touch_disk(&self, name: &str) -> bool {
        let state = self.lock();
        let Some(cursor) = state.cursors.get(name) else {
            return true;
        };
        match state
            .memory
            .index_from(cursor.seq_next)
            .and_then(|i| state.memory.get(i))
        {
            // Log records come before that memory event: they are read first.
            Some(next) => next.log_before > cursor.log_next,
            None => cursor.log_next < self.log.stats().next_seq,
        }
    }

    /// The consumer's next read: a stretch of events, a lost range, or `None` when nothing is ready.
    pub(super) fn try_read(
        &self,
        name: &str,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<Read>, QueueError> {
        let mut state = self.lock();
        let log_stats = self.log.stats();
        let State {
            cursors,
            memory,
            counters,
            replays,
            ..
        } = &mut *state;
        let cursor = cursors
            .get_mut(name)
            .ok_or_else(|| QueueError::ConsumerBusy(name.to_string()))?;
        if cursor.unacked.len() >= self.config.unacked_stretches_max as usize {
            return Err(QueueError::TooManyUnacked {
                name: name.to_string(),
                unacked: cursor.unacked.len() as u32,
            });
        }
        cursor.skip_dropped(log_stats.first_seq);
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(Some(Read::Events(out)));
        }
        let next_memory = memory.index_from(cursor.seq_next);
        let memory_first = next_memory
            .and_then(|i| memory.get(i))
            .filter(|e| e.log_before <= cursor.log_next);
        if let (Some(start), Some(_)) = (next_memory, memory_first) {
            out = read_memory(cursor, memory, start, max_records, max_bytes);
        } else {
            // Log records before the next memory event, if any; superseded ones are skipped,
            // so keep reading until something is delivered or the stretch ends.
            let log_end = next_memory
                .and_then(|i| memory.get(i))
                .map_or(log_stats.next_seq, |e| e.log_before);
            let mut gap = None;
            while out.is_empty() && cursor.log_next < log_end {
                let take = (max_records as u64).min(log_end - cursor.log_next) as usize;
                let batch = self.log.read(cursor.log_next, take, max_bytes)?;
                if let Some(lost) = batch.lost() {
                    gap = Some(lost.clone());
                    break;
                }
                let mut stopped_at = None;
                out.reserve(batch.len());
                // One allocation for the payloads of this read, each event a slice of it.
                let mut payloads = bytes::BytesMut::with_capacity(batch.payload_bytes() as usize);
                for (log_seq, record) in batch.iter() {
                    let Some(envelope::Envelope {
                        seq,
                        position,
                        pushed_at_us,
                        payload,
                    }) = envelope::decode_into(record, &mut payloads)
                    else {
                        // A record that passed its checksums but is no queue event: lost like
                        // a damaged one, reported where it stands (after what was read so far).
                        stopped_at = Some(log_seq);
                        if out.is_empty() {
                            gap = Some(spillway_storage::LostRange {
                                seqs: spillway_storage::SeqRange {
                                    first: log_seq,
                                    next: log_seq + 1,
                                },
                                location: format!("log record {log_seq}"),
                                offset: 0,
                                reason: "shorter than a queue event envelope".into(),
                            });
                        }
                        break;
                    };
                    if replays.iter().any(|r| r.supersedes(log_seq, position)) {
                        counters.superseded += 1;
                        continue;
                    }
                    if seq < cursor.seq_next
                        && cursor.seq_next > 0
                        && out.is_empty()
                        && cursor.unacked.back().is_some_and(|s| s.seq_next > seq)
                    {
                        return Err(QueueError::BadEnvelope {
                            log_seq,
                            reason: "sequence numbers out of order",
                        });
                    }
                    // Dense seqs merge into one stretch; a gap (skipped, or lost before a restart) starts another.
                    cursor.delivered(Stretch {
                        seq_first: seq,
                        seq_next: seq + 1,
                        origin: Origin::Disk { log_first: log_seq },
                    });
                    cursor.seq_next = seq + 1;
                    cursor.last_position = Some(position);
                    out.push(Delivery {
                        seq,
                        position,
                        pushed_at_us,
                        payload,
                    });
                }
                cursor.log_next = stopped_at.unwrap_or(batch.next_seq());
                if stopped_at.is_some() {
                    break;
                }
            }
            counters.read_back += out.len() as u64;
            if let Some(damage) = gap {
                let next_memory_position =
                    next_memory.and_then(|i| memory.get(i)).map(|e| e.position);
                let found = self.lost_range(
                    cursor,
                    replays,
                    damage,
                    log_stats.first_seq,
                    log_end,
                    next_memory_position,
                )?;
                return Ok(settle_gap(found, cursor, counters));
            }
        }
        counters.delivered += out.len() as u64;
        if let Some(last) = out.last() {
            cursor.newest_delivered_pushed_us = Some(last.pushed_at_us);
        }
        self.maybe_stop_spilling(&mut state);
        Ok((!out.is_empty()).then_some(Read::Events(out)))
    }

    /// Bounds a damaged range a consumer met with the source positions around it.
    fn lost_range(
        &self,
        cursor: &CursorState,
        replays: &[ReplayRule],
        damage: spillway_storage::LostRange,
        log_first: u64,
        log_end: u64,
        next_memory_position: Option<u64>,
    ) -> Result<GapFound, QueueError> {
        let after_position = match cursor.last_position {
            Some(position) => Some(position),
            None if damage.seqs.first > log_first => self.position_at(damage.seqs.first - 1)?,
            None => None,
        };
        // The next intact record bounds the range; damage right after it joins the range.
        let mut log_next = damage.seqs.next;
        let mut before_position = None;
        for _ in 0..GAP_MERGES_MAX {
            if log_next >= log_end {
                before_position = next_memory_position;
                break;
            }
            let batch = self.log.read(log_next, 1, 0)?;
            if let Some(more) = batch.lost() {
                log_next = more.seqs.next;
                continue;
            }
            before_position = batch.get(0).and_then(envelope::decode).map(|e| e.position);
            break;
        }
        // A replay that began after these records were stored resends everything above its
        // checkpoint: what lies above it is not lost, and the rest lies below checkpoint + 1.
        let covering = replays
            .iter()
            .filter(|r| damage.seqs.first < r.seq_end && log_next <= r.seq_end)
            .min_by_key(|r| r.position);
        if let Some(rule) = covering {
            if after_position.is_some_and(|after| after >= rule.position) {
                return Ok(GapFound::Superseded {
                    log_next,
                    records: log_next - damage.seqs.first,
                });
            }
            let cap = rule.position + 1;
            before_position = Some(before_position.map_or(cap, |b| b.min(cap)));
        }
        if after_position.is_some() && before_position.is_none() {
            // The range reaches the log's end: its upper bound is the next event pushed.
            return Ok(GapFound::NotYetBounded);
        }
        Ok(GapFound::Lost(LostEvents {
            log_records: log_next - damage.seqs.first,
            log_first: damage.seqs.first,
            log_next,
            after_position,
            before_position,
            location: damage.location,
            offset: damage.offset,
            reason: damage.reason,
        }))
    }

    /// The source position of the log record `log_seq`, if it is intact.
    fn position_at(&self, log_seq: u64) -> Result<Option<u64>, QueueError> {
        let batch = self.log.read(log_seq, 1, 0)?;
        if batch.lost().is_some() {
            return Ok(None);
        }
        Ok(batch.get(0).and_then(envelope::decode).map(|e| e.position))
    }

    /// Memory takes new events again once every consumer has read the log to its end.
    fn maybe_stop_spilling(&self, state: &mut State) {
        if !state.spilling
            || self.config.spill_mode == SpillMode::WriteThrough
            || state.cursors.is_empty()
        {
            return;
        }
        let end = self.log.stats().next_seq;
        if state.cursors.values().all(|c| c.log_next >= end) {
            tracing::info!("disk backlog drained; new events stay in memory again");
            state.spilling = false;
        }
    }
}

/// Consecutive memory events from `start` that no unread log record precedes, delivered
/// to `cursor` as one stretch (at least one: the caller checked the first).
fn read_memory(
    cursor: &mut CursorState,
    memory: &MemoryTier,
    start: usize,
    max_records: usize,
    max_bytes: u64,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    let log_at = cursor.log_next;
    let mut bytes = 0u64;
    let mut index = start;
    while let Some(entry) = memory.get(index) {
        if entry.log_before > log_at
            || out.len() >= max_records
            || (bytes >= max_bytes && !out.is_empty())
        {
            break;
        }
        if out
            .last()
            .is_some_and(|d: &Delivery| d.seq + 1 != entry.seq)
        {
            break;
        }
        bytes += entry.payload.len() as u64;
        out.push(Delivery {
            seq: entry.seq,
            position: entry.position,
            pushed_at_us: entry.pushed_at_us,
            payload: entry.payload.clone(),
        });
        index += 1;
    }
    let (first, next) = (out[0].seq, out[out.len() - 1].seq + 1);
    cursor.delivered(Stretch {
        seq_first: first,
        seq_next: next,
        origin: Origin::Memory { log_at },
    });
    cursor.seq_next = next;
    cursor.last_position = out.last().map(|d| d.position);
    out
}

/// Moves `cursor` past a bounded damaged range: reported as lost, or skipped when a
/// replay delivers its events again; `None` while the range is not bounded yet.
fn settle_gap(found: GapFound, cursor: &mut CursorState, counters: &mut Counters) -> Option<Read> {
    match found {
        GapFound::Lost(lost) => Some({
            counters.lost += lost.log_records;
            cursor.log_next = lost.log_next;
            tracing::warn!(
                log_first = lost.log_first,
                log_next = lost.log_next,
                after_position = ?lost.after_position,
                before_position = ?lost.before_position,
                location = %lost.location,
                offset = lost.offset,
                reason = %lost.reason,
                "events in the spill log are lost (damaged or missing)"
            );
            Read::Lost(lost)
        }),
        GapFound::Superseded { log_next, records } => {
            counters.superseded += records;
            cursor.log_next = log_next;
            // Progress without events: the caller reads again at once.
            Some(Read::Events(Vec::new()))
        }
        GapFound::NotYetBounded => None,
    }
}
