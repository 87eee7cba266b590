//! The durable source position: every event at or below it is acked by every consumer or durably in the log.
//!
//! Events are pushed in non-decreasing source position. An event is *unsafe* while
//! it is only in memory and not acked by everyone, or in the log but not yet synced.
//! The watermark is one below the oldest unsafe event's position, or the highest
//! position pushed when nothing is unsafe. A source that checkpoints only the
//! watermark replays, after a crash, everything the crash could have lost.

use std::collections::VecDeque;

/// Appended-but-not-durable batches tracked at most; past it the newest entries merge.
pub const NONDURABLE_BATCHES_MAX: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Watermark {
    highest_pushed: Option<u64>,
    /// `(log end after the batch, first position in it)` of batches not yet known durable.
    nondurable: VecDeque<(u64, u64)>,
}

impl Watermark {
    pub fn on_memory_push(&mut self, last_position: u64) {
        self.highest_pushed = Some(
            self.highest_pushed
                .map_or(last_position, |h| h.max(last_position)),
        );
    }

    /// Records a batch appended to the log.
    ///
    /// At [`NONDURABLE_BATCHES_MAX`] entries the batch joins the newest entry instead
    /// (its end moves, its first position stays): conservative, since the merged entry
    /// counts as unsafe until its last record is durable, and bounded without a sync.
    pub fn on_spill(&mut self, log_end: u64, first_position: u64, last_position: u64) {
        self.on_memory_push(last_position);
        let full = self.nondurable.len() >= NONDURABLE_BATCHES_MAX;
        match self.nondurable.back_mut() {
            Some(newest) if full => newest.0 = log_end,
            _ => self.nondurable.push_back((log_end, first_position)),
        }
    }

    /// The watermark, given the oldest unacked memory event's position and the log's durable end.
    pub fn current(
        &mut self,
        oldest_memory_position: Option<u64>,
        durable_next_seq: u64,
    ) -> Option<u64> {
        while self
            .nondurable
            .front()
            .is_some_and(|&(end, _)| end <= durable_next_seq)
        {
            self.nondurable.pop_front();
        }
        let oldest_disk = self.nondurable.front().map(|&(_, position)| position);
        let oldest_unsafe = match (oldest_memory_position, oldest_disk) {
            (Some(m), Some(d)) => Some(m.min(d)),
            (m, d) => m.or(d),
        };
        match oldest_unsafe {
            Some(position) => position.checked_sub(1),
            None => self.highest_pushed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_tracker_merges_conservatively() {
        let mut w = Watermark::default();
        for i in 0..NONDURABLE_BATCHES_MAX as u64 + 10 {
            w.on_spill(i + 1, i * 10 + 1, i * 10 + 10);
        }
        assert_eq!(w.nondurable.len(), NONDURABLE_BATCHES_MAX);
        let last_separate = NONDURABLE_BATCHES_MAX as u64 - 1;
        // Durable up to just before the merged tail: the watermark stops below the merged entry's first position.
        assert_eq!(w.current(None, last_separate), Some(last_separate * 10));
        assert_eq!(
            w.current(None, NONDURABLE_BATCHES_MAX as u64 + 10),
            Some((NONDURABLE_BATCHES_MAX as u64 + 9) * 10 + 10)
        );
    }

    #[test]
    fn watermark_stays_below_the_oldest_unsafe_event() {
        let mut w = Watermark::default();
        assert_eq!(w.current(None, 0), None);
        w.on_memory_push(10);
        assert_eq!(w.current(Some(5), 0), Some(4), "memory event at 5 unacked");
        assert_eq!(w.current(None, 0), Some(10), "all acked");
        w.on_spill(3, 11, 20);
        assert_eq!(w.current(None, 2), Some(10), "log not durable up to 3");
        assert_eq!(w.current(None, 3), Some(20), "durable");
        w.on_spill(6, 21, 25);
        assert_eq!(
            w.current(Some(15), 6),
            Some(14),
            "older memory event still unacked"
        );
    }
}
