//! Named consumers: attaching one (new ones start at the oldest retained event, known
//! ones resume at their last durable ack), removing one, and the [`Consumer`] handle
//! that reads batches and acks them.

use std::sync::Arc;

use super::cursor::{position_keys, CursorState};
use super::error::QueueError;
use super::event::Delivery;
use super::lost::{LostEvents, Read};
use super::read::GAP_MERGES_MAX;
use super::shared::{blocking, Core};
use super::SpillQueue;

impl SpillQueue {
    /// Attaches the named consumer, creating it at the oldest retained event if new.
    ///
    /// # Errors
    /// [`QueueError::ConsumerBusy`] if a handle is attached, [`QueueError::TooManyConsumers`].
    pub fn consumer(&self, name: &str) -> Result<Consumer, QueueError> {
        self.core.attach(name)?;
        Ok(Consumer {
            core: Arc::clone(&self.core),
            name: name.to_string(),
        })
    }

    /// The names of every consumer the queue keeps a position for (attached or not), sorted.
    pub fn consumer_names(&self) -> Vec<String> {
        self.core.lock().cursors.keys().cloned().collect()
    }

    /// Forgets a consumer (detached) so it no longer holds back reclaim.
    ///
    /// # Errors
    /// [`QueueError::ConsumerBusy`] while a handle is attached, or a storage error
    /// removing its saved position.
    pub fn remove_consumer(&self, name: &str) -> Result<(), QueueError> {
        let mut state = self.core.lock();
        if state.cursors.get(name).is_some_and(|c| c.attached) {
            return Err(QueueError::ConsumerBusy(name.to_string()));
        }
        state.cursors.remove(name);
        let (seq_key, log_key) = position_keys(name);
        self.core.log.remove_position(&seq_key)?;
        self.core.log.remove_position(&log_key)?;
        self.core.release(&mut state)?;
        Ok(())
    }
}

/// A named consumer's handle: reads batches and acks them.
pub struct Consumer {
    core: Arc<Core>,
    name: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .finish()
    }
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for events and returns at most `max_records` of them and about `max_bytes`
    /// (at least one event, so a large event never stalls the consumer).
    ///
    /// A lost range of the backlog (damaged or missing records) is logged, counted in
    /// [`QueueStats::lost_events_total`](super::QueueStats::lost_events_total) and skipped; use [`Consumer::next_read`] to
    /// see it in place and fetch its events again from their source.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes delivers nothing.
    ///
    /// # Errors
    /// A storage error reading the backlog, or too many unacked stretches.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        loop {
            match self.next_read(max_records, max_bytes).await? {
                Read::Events(events) => return Ok(events),
                Read::Lost(lost) => self.ack_lost(&lost)?,
            }
        }
    }

    /// Waits for events, or for a lost range of the backlog met where its records stood.
    ///
    /// Returns [`Read::Events`] with at least one event (none only when `max_records` is
    /// 0), or [`Read::Lost`]: the events after the range come with the next read. After
    /// writing whatever of the range it could fetch again, call [`Consumer::ack_lost`].
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes delivers nothing.
    ///
    /// # Errors
    /// A storage error reading the backlog, or too many unacked stretches.
    pub async fn next_read(
        &mut self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Read, QueueError> {
        loop {
            let ready = self.core.data_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let read = if self.core.read_may_touch_disk(&self.name) {
                blocking(|| self.core.try_read(&self.name, max_records, max_bytes))?
            } else {
                self.core.try_read(&self.name, max_records, max_bytes)?
            };
            match read {
                None => ready.await,
                // A superseded range moved the cursor without events: read on.
                Some(Read::Events(events)) if events.is_empty() && max_records > 0 => {}
                Some(read) => return Ok(read),
            }
        }
    }

    /// Like [`Consumer::next_batch`] but returns an empty batch at once when nothing is ready.
    pub fn try_next_batch(
        &mut self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        for _ in 0..GAP_MERGES_MAX {
            match blocking(|| self.core.try_read(&self.name, max_records, max_bytes))? {
                None => return Ok(Vec::new()),
                Some(Read::Events(events)) if events.is_empty() && max_records > 0 => {}
                Some(Read::Events(events)) => return Ok(events),
                Some(Read::Lost(lost)) => self.ack_lost(&lost)?,
            }
        }
        Ok(Vec::new())
    }

    /// Declares a lost range dealt with (fetched again and written, or given up): the
    /// consumer's durable position moves past it once nothing before it is unacked, so
    /// a restart does not report it again.
    ///
    /// # Errors
    /// A storage error saving the position.
    pub fn ack_lost(&self, lost: &LostEvents) -> Result<(), QueueError> {
        blocking(|| self.core.ack_lost(&self.name, lost))
    }

    /// Acknowledges every delivered event with `seq <= up_to_seq`; durable per the log's durability.
    ///
    /// # Errors
    /// [`QueueError::AckBeyondDelivered`], or a storage error saving the position.
    pub fn ack(&self, up_to_seq: u64) -> Result<(), QueueError> {
        blocking(|| self.core.ack(&self.name, up_to_seq))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.core.detach(&self.name);
    }
}

impl Core {
    /// Marks the named consumer attached, restoring or creating its cursor.
    pub(super) fn attach(&self, name: &str) -> Result<(), QueueError> {
        let mut state = self.lock();
        if let Some(cursor) = state.cursors.get_mut(name) {
            if cursor.attached {
                return Err(QueueError::ConsumerBusy(name.to_string()));
            }
            // Resume from the last ack: what was delivered but not acked is delivered again.
            let (seq, log) = (cursor.acked_seq_next, cursor.acked_log_next);
            *cursor = CursorState::at(seq, log);
            cursor.attached = true;
            return Ok(());
        }
        if state.cursors.len() >= self.config.consumers_max as usize {
            return Err(QueueError::TooManyConsumers {
                name: name.to_string(),
                consumers_max: self.config.consumers_max,
            });
        }
        // A new consumer starts at the oldest event still retained.
        let log_first = self.log.stats().first_seq;
        let (seq, log) = state
            .cursors
            .values()
            .map(|c| (c.acked_seq_next, c.acked_log_next))
            .min()
            .unwrap_or_else(|| {
                (
                    state.memory.front().map_or(state.next_seq, |e| e.seq),
                    log_first,
                )
            });
        let mut cursor = CursorState::at(seq, log.max(log_first));
        cursor.attached = true;
        let (seq_key, log_key) = position_keys(name);
        self.log.save_position(&seq_key, cursor.acked_seq_next)?;
        self.log.save_position(&log_key, cursor.acked_log_next)?;
        state.cursors.insert(name.to_string(), cursor);
        Ok(())
    }

    pub(super) fn detach(&self, name: &str) {
        if let Some(cursor) = self.lock().cursors.get_mut(name) {
            cursor.attached = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, QueueConfig, SpillQueue};

    #[tokio::test]
    async fn a_removed_consumer_is_gone_after_a_reopen_and_holds_nothing_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = SpillQueue::open(dir.path(), QueueConfig::new()).expect("open");
        let mut kept = queue.consumer("kept").expect("kept");
        drop(queue.consumer("gone").expect("gone"));
        let events = (1..=5)
            .map(|p| Event::new(p, bytes::Bytes::from_static(b"event")))
            .collect();
        queue.push_batch(events).await.expect("push");
        let read = kept.next_batch(10, 1 << 20).await.expect("read");
        kept.ack(read[4].seq).expect("ack");
        assert_eq!(queue.stats().memory_events, 5, "`gone` has acked nothing");
        assert!(
            queue.remove_consumer("kept").is_err(),
            "an attached consumer stays"
        );
        queue.remove_consumer("gone").expect("remove");
        assert_eq!(
            queue.stats().memory_events,
            0,
            "nothing holds the events any more"
        );
        assert_eq!(queue.consumer_names(), vec!["kept"]);
        drop((kept, queue));
        let reopened = SpillQueue::open(dir.path(), QueueConfig::new()).expect("reopen");
        assert_eq!(reopened.consumer_names(), vec!["kept"]);
    }
}
