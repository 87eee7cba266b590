//! The write path's overflow: a batch that does not go to memory is appended to the log
//! whole, or, when the disk budget or the filesystem is full, the full policy decides:
//! block the producer, drop the oldest stored events, or refuse the newest.

use std::time::{Duration, Instant};

use spillway_storage::{AppendError, RecordParts};

use super::config::FullPolicy;
use super::cursor::position_keys;
use super::envelope;
use super::error::{PushError, PushFailure};
use super::event::Event;
use super::shared::{Core, State};

/// Interval between repeated warnings of the same kind (drops, a blocked producer).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Files dropped under `drop_oldest` for one batch at most, before its events are refused instead.
const DROP_OLDEST_ATTEMPTS_MAX: u32 = 64;

/// What spilling a batch did.
pub(super) enum Spilled {
    /// This many events are in the log.
    Stored(usize),
    /// Refused under a drop policy, counted, handed back to the caller.
    Dropped(Vec<Event>),
    /// The disk is full under `block`: wait and retry with these events.
    Blocked(Vec<Event>),
    /// Refused for good; the events are in the error.
    Failed(PushError),
}

/// What the full policy says when the log refused a batch for want of space.
enum WhenFull {
    /// Hold the batch: the producer waits.
    Block,
    /// The oldest stored events were dropped: append again.
    Retry,
    /// Refuse the batch.
    DropNewest,
}

impl Core {
    /// Appends `events` to the log in one batch, under the full policy.
    pub(super) fn spill(&self, state: &mut State, events: Vec<Event>) -> Spilled {
        let first_seq = state.next_seq;
        let pushed_at_us = envelope::now_us();
        // Each record is its envelope header and the payload as the source handed it over:
        // the log copies both once, into its write buffer, with no joined copy first.
        let headers: Vec<[u8; envelope::ENVELOPE_BYTES]> = events
            .iter()
            .enumerate()
            .map(|(i, event)| envelope::header(first_seq + i as u64, event.position, pushed_at_us))
            .collect();
        let records: Vec<RecordParts<'_>> = headers
            .iter()
            .zip(&events)
            .map(|(head, event)| RecordParts {
                head,
                tail: &event.payload,
            })
            .collect();
        let mut attempts = 0;
        let outcome = loop {
            match self.log.append_parts(&records) {
                Err(AppendError::Full {
                    needed_bytes,
                    budget_bytes,
                    ..
                }) if needed_bytes > budget_bytes => {
                    break Spilled::Failed(PushError {
                        reason: PushFailure::BatchOverBudget {
                            needed_bytes,
                            budget_bytes,
                        },
                        events,
                    });
                }
                Err(AppendError::Full { .. }) => match self.when_full(state, &mut attempts) {
                    WhenFull::Retry => {}
                    WhenFull::Block => {
                        state.counters.blocked += 1;
                        self.warn_rate_limited(
                            state,
                            "disk budget full: the producer is blocked until consumers ack",
                        );
                        break Spilled::Blocked(events);
                    }
                    WhenFull::DropNewest => {
                        break self.drop_newest(
                            state,
                            events,
                            "disk budget full: dropping the newest events",
                        )
                    }
                },
                // The filesystem is full (not the budget): the same rule as a full budget, since
                // the log refused the batch whole; space freed by the consumers' acks or from
                // outside is found by the producer's wake-up or its timed retry.
                Err(AppendError::NoSpace {
                    path,
                    needed_bytes,
                    free_bytes,
                }) => {
                    match self.when_full(state, &mut attempts) {
                        WhenFull::Retry => {}
                        WhenFull::Block => {
                            state.counters.blocked += 1;
                            state.counters.no_space += 1;
                            if state.counters.no_space.is_power_of_two() {
                                tracing::warn!(
                                    path = %path.display(),
                                    needed_bytes,
                                    free_bytes,
                                    refusals = state.counters.no_space,
                                    "the filesystem of the spill log is full: the producer is blocked until space frees"
                                );
                            }
                            break Spilled::Blocked(events);
                        }
                        WhenFull::DropNewest => break self.drop_newest(
                            state,
                            events,
                            "the filesystem of the spill log is full: dropping the newest events",
                        ),
                    }
                }
                Err(AppendError::RecordTooLarge { len, max, .. }) => {
                    break Spilled::Failed(PushError {
                        reason: PushFailure::EventTooLarge {
                            len,
                            max: u64::from(max),
                        },
                        events,
                    });
                }
                Err(AppendError::Storage(error)) => {
                    tracing::error!(%error, "spilling to the log failed; the events are handed back");
                    break Spilled::Failed(PushError {
                        reason: PushFailure::Storage(error),
                        events,
                    });
                }
                // A refusal this build does not know by name: handed back as it came.
                Err(other) => {
                    break Spilled::Failed(PushError {
                        reason: PushFailure::Append(other),
                        events,
                    });
                }
                Ok(range) => {
                    let count = events.len();
                    state.next_seq += count as u64;
                    state.counters.pushed += count as u64;
                    state.counters.spilled += count as u64;
                    let first_position = events.first().map_or(0, |e| e.position);
                    let last_position = events.last().map_or(0, |e| e.position);
                    state
                        .watermark
                        .on_spill(range.next, first_position, last_position);
                    self.data_ready.notify_waiters();
                    break Spilled::Stored(count);
                }
            }
        };
        outcome
    }

    /// The full policy's answer to a refused append; under `drop_oldest` it drops the
    /// oldest file first, `DROP_OLDEST_ATTEMPTS_MAX` times at most for one batch.
    fn when_full(&self, state: &mut State, attempts: &mut u32) -> WhenFull {
        match self.config.full_policy {
            FullPolicy::Block => WhenFull::Block,
            FullPolicy::DropOldest
                if *attempts < DROP_OLDEST_ATTEMPTS_MAX && self.drop_oldest(state) =>
            {
                *attempts += 1;
                WhenFull::Retry
            }
            FullPolicy::DropNewest | FullPolicy::DropOldest => WhenFull::DropNewest,
        }
    }

    /// Refuses the batch: counted, warned about, handed back.
    fn drop_newest(&self, state: &mut State, events: Vec<Event>, message: &'static str) -> Spilled {
        state.counters.dropped_newest += events.len() as u64;
        state.counters.unwarned_drops += events.len() as u64;
        self.warn_rate_limited(state, message);
        Spilled::Dropped(events)
    }

    /// Drops the oldest log file's records for every consumer; false when there is nothing to drop.
    fn drop_oldest(&self, state: &mut State) -> bool {
        let stats = self.log.stats();
        let end = self.log.oldest_file_end_seq();
        if end <= stats.first_seq {
            return false;
        }
        if let Err(error) = self.log.consume_until(end) {
            tracing::error!(%error, "dropping the oldest events failed");
            return false;
        }
        let dropped = end - stats.first_seq;
        state.counters.dropped_oldest += dropped;
        state.counters.unwarned_drops += dropped;
        for (name, cursor) in state.cursors.iter_mut() {
            cursor.skip_dropped(end);
            let (_, log_key) = position_keys(name);
            if let Err(error) = self.log.save_position(&log_key, cursor.acked_log_next) {
                tracing::error!(%error, consumer = %name, "saving a consumer position failed");
            }
        }
        self.warn_rate_limited(state, "disk budget full: dropping the oldest events");
        true
    }

    fn warn_rate_limited(&self, state: &mut State, message: &'static str) {
        let now = Instant::now();
        if state
            .counters
            .last_warn
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            let c = &state.counters;
            tracing::warn!(
                dropped_newest_total = c.dropped_newest,
                dropped_oldest_total = c.dropped_oldest,
                dropped_since_last_warning = c.unwarned_drops,
                blocked_pushes_total = c.blocked,
                disk_budget_bytes = self.config.log.disk_budget_bytes,
                "{message}"
            );
            state.counters.last_warn = Some(now);
            state.counters.unwarned_drops = 0;
        }
    }
}
