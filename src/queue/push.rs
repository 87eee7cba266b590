//! The write path's front: a push checks its events, takes the memory path while the
//! queue is not spilling and the events fit, hands the rest to the spill (`spill.rs`), and
//! waits under [`FullPolicy::Block`](super::FullPolicy::Block) until space frees.

use std::time::Duration;

use super::budget;
use super::config::SpillMode;
use super::envelope;
use super::error::{PushError, PushFailure};
use super::event::Event;
use super::memory::MemoryEntry;
use super::shared::{blocking, Core};
use super::spill::Spilled;
use super::SpillQueue;

/// How often a producer blocked on a full disk tries again without a wake-up.
const FULL_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What a push did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Events accepted into memory.
    pub to_memory: usize,
    /// Events accepted into the log.
    pub to_disk: usize,
    /// Events refused under [`FullPolicy::DropNewest`](super::FullPolicy::DropNewest), handed back.
    pub dropped: Vec<Event>,
}

/// Why a push attempt did not finish.
enum Refusal {
    /// The disk is full under `block`: wait and retry with these events.
    Blocked(Vec<Event>),
    /// Refused for good; the events are in the error.
    Failed(PushError),
}

impl SpillQueue {
    /// Pushes one event; see [`SpillQueue::push_batch`].
    ///
    /// # Cancel safety
    /// Cancel-safe: the future waits only while the disk is full under
    /// [`FullPolicy::Block`](super::FullPolicy::Block), and the event is not enqueued until the future completes;
    /// dropping it drops the event, and the queue holds nothing of it.
    ///
    /// # Errors
    /// A [`PushError`] handing the event back; see [`SpillQueue::push_batch`].
    pub async fn push(&self, event: Event) -> Result<PushReport, PushError> {
        self.push_batch(vec![event]).await
    }

    /// Pushes events in order. Never waits for a consumer: it waits only when the
    /// disk budget (or the filesystem) is full under [`FullPolicy::Block`](super::FullPolicy::Block); the wait is
    /// woken by the consumers' acks and retried each second for space freed elsewhere.
    ///
    /// # Cancel safety
    /// Cancel-safe while it waits under [`FullPolicy::Block`](super::FullPolicy::Block): the events accepted
    /// before the wait (always a prefix of the batch, in memory or in the log) stay
    /// enqueued and are delivered; the events not yet accepted are dropped with the
    /// future, and none of them were enqueued. The [`PushReport`] of the accepted ones
    /// is lost with the future: a caller that must know how many were taken pushes one
    /// event at a time, or awaits the future to completion.
    ///
    /// # Errors
    /// A [`PushError`] handing every unaccepted event back: an event over the size
    /// limit, a batch larger than the whole disk budget, or a storage failure.
    pub async fn push_batch(&self, events: Vec<Event>) -> Result<PushReport, PushError> {
        let max =
            u64::from(self.core.config.log.record_bytes_max) - envelope::ENVELOPE_BYTES as u64;
        if let Some(big) = events.iter().find(|e| e.payload.len() as u64 > max) {
            let len = big.payload.len();
            return Err(PushError {
                reason: PushFailure::EventTooLarge { len, max },
                events,
            });
        }
        let mut report = PushReport::default();
        let mut pending = events;
        loop {
            let space = self.core.space_freed.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            // Memory-only pushes skip `block_in_place`; one that may reach the disk takes it.
            // (If another producer fills memory in between, the spill runs inline: correct, briefly blocking.)
            let cost = pending
                .iter()
                .map(|e| budget::event_cost(e.payload.len()))
                .sum();
            let attempt = if self.core.push_may_touch_disk(cost) {
                blocking(|| self.core.try_push(pending, &mut report))
            } else {
                self.core.try_push(pending, &mut report)
            };
            match attempt {
                Ok(()) => return Ok(report),
                Err(Refusal::Blocked(rest)) => {
                    pending = rest;
                    // Consumers' acks wake it; space freed outside this queue (another
                    // queue on the filesystem, an operator) is found by the timed retry.
                    tokio::select! {
                        _ = space => {}
                        _ = tokio::time::sleep(FULL_RETRY_INTERVAL) => {}
                    }
                }
                Err(Refusal::Failed(error)) => return Err(error),
            }
        }
    }
}

impl Core {
    /// Whether a push costing `cost` bytes could write to the log.
    fn push_may_touch_disk(&self, cost: u64) -> bool {
        let state = self.lock();
        self.config.spill_mode == SpillMode::WriteThrough
            || state.spilling
            || !state.memory.fits(cost)
    }

    /// Takes what fits into memory while the queue is not spilling, spills the rest.
    fn try_push(&self, events: Vec<Event>, report: &mut PushReport) -> Result<(), Refusal> {
        if events.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        // The memory path: the prefix that fits while the queue is not spilling.
        let mut to_memory = 0;
        if !state.spilling {
            let mut cost = 0;
            for event in &events {
                cost += budget::event_cost(event.payload.len());
                if !state.memory.fits(cost) {
                    break;
                }
                to_memory += 1;
            }
        }
        let mut events = events;
        let rest = events.split_off(to_memory);
        if to_memory > 0 {
            let log_before = self.log.stats().next_seq;
            let last_position = events.last().map_or(0, |e| e.position);
            let pushed_at_us = envelope::now_us();
            for event in events {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.memory.push(MemoryEntry {
                    seq,
                    position: event.position,
                    log_before,
                    pushed_at_us,
                    payload: super::memory::held_payload(event.payload),
                });
            }
            state.watermark.on_memory_push(last_position);
            state.counters.pushed += to_memory as u64;
            report.to_memory += to_memory;
            self.data_ready.notify_waiters();
        }
        if rest.is_empty() {
            return Ok(());
        }
        if !state.spilling {
            tracing::info!(
                memory_bytes = state.memory.bytes(),
                "memory budget reached; spilling to disk"
            );
            state.spilling = true;
        }
        match self.spill(&mut state, rest) {
            Spilled::Stored(count) => {
                report.to_disk += count;
                Ok(())
            }
            Spilled::Dropped(events) => {
                report.dropped.extend(events);
                Ok(())
            }
            Spilled::Blocked(events) => Err(Refusal::Blocked(events)),
            Spilled::Failed(error) => Err(Refusal::Failed(error)),
        }
    }
}
