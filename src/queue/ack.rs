//! Acks: a consumer's durable position moves (seq first, then log record), and what
//! every consumer has acked is released: memory events freed, log files reclaimed,
//! blocked producers woken.

use super::cursor::position_keys;
use super::error::QueueError;
use super::lost::LostEvents;
use super::shared::{Core, State};

impl Core {
    /// Acknowledges the consumer's deliveries up to `seq` (inclusive) and saves its position.
    pub(super) fn ack(&self, name: &str, seq: u64) -> Result<(), QueueError> {
        let mut state = self.lock();
        let cursor = state
            .cursors
            .get_mut(name)
            .ok_or_else(|| QueueError::ConsumerBusy(name.to_string()))?;
        if seq >= cursor.seq_next {
            return Err(QueueError::AckBeyondDelivered {
                name: name.to_string(),
                seq,
                delivered_next: cursor.seq_next,
            });
        }
        if !cursor.ack(seq) {
            return Ok(());
        }
        let (acked_seq, acked_log) = (cursor.acked_seq_next, cursor.acked_log_next);
        let (seq_key, log_key) = position_keys(name);
        // Seq first: a crash between the two leaves an older log position, so more is redelivered, never less.
        self.log.save_position(&seq_key, acked_seq)?;
        self.log.save_position(&log_key, acked_log)?;
        self.release(&mut state)
    }

    /// Moves a consumer's durable position past a lost range once nothing before it is unacked.
    pub(super) fn ack_lost(&self, name: &str, lost: &LostEvents) -> Result<(), QueueError> {
        let mut state = self.lock();
        let cursor = state
            .cursors
            .get_mut(name)
            .ok_or_else(|| QueueError::ConsumerBusy(name.to_string()))?;
        // With stretches unacked, their acks carry the position past the range later.
        if !cursor.unacked.is_empty()
            || cursor.acked_log_next < lost.log_first
            || cursor.acked_log_next >= lost.log_next
        {
            return Ok(());
        }
        cursor.acked_log_next = lost.log_next;
        let (_, log_key) = position_keys(name);
        self.log.save_position(&log_key, lost.log_next)?;
        self.release(&mut state)
    }

    /// Frees memory events and log records every consumer has acked.
    pub(super) fn release(&self, state: &mut State) -> Result<(), QueueError> {
        let Some(min_seq) = state.cursors.values().map(|c| c.acked_seq_next).min() else {
            return Ok(());
        };
        let min_log = state
            .cursors
            .values()
            .map(|c| c.acked_log_next)
            .min()
            .unwrap_or(0);
        state.memory.release_below(min_seq);
        self.log.consume_until(min_log)?;
        self.space_freed.notify_waiters();
        Ok(())
    }
}
