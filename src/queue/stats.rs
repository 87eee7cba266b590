//! What a queue reports about itself: counters and sizes ([`QueueStats`]), each
//! consumer's position and lag ([`ConsumerStats`]), the durable source watermark and
//! the memory budget's split.

use super::budget::MemoryBudget;
use super::envelope;
use super::shared::{Core, State};
use super::SpillQueue;

/// Counters and sizes of a queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Events in the memory tier (including delivered, unacked ones).
    pub memory_events: u64,
    /// Bytes the memory tier charges against the budget.
    pub memory_bytes: u64,
    /// What the memory tier may hold.
    pub memory_tier_bytes: u64,
    /// The configured total memory budget.
    pub memory_budget_bytes: u64,
    /// Unconsumed records in the log.
    pub disk_events: u64,
    /// Payload bytes in the log's live files.
    pub disk_payload_bytes: u64,
    /// Bytes the log takes on disk.
    pub disk_bytes: u64,
    /// The configured disk budget.
    pub disk_budget_bytes: u64,
    /// The disk budget as the filesystem's free space caps it (at most the configured one).
    pub disk_budget_bytes_effective: u64,
    /// Whether new events go to the log.
    pub spilling: bool,
    /// Events accepted since open.
    pub pushed_events_total: u64,
    /// Events written to the log since open.
    pub spilled_events_total: u64,
    /// Events read back from the log since open.
    pub read_back_events_total: u64,
    /// Events delivered to consumers since open.
    pub delivered_events_total: u64,
    /// Events refused under `drop_newest` since open.
    pub dropped_newest_total: u64,
    /// Events dropped under `drop_oldest` since open.
    pub dropped_oldest_total: u64,
    /// Pushes that waited for disk space since open.
    pub blocked_pushes_total: u64,
    /// Log records skipped because a source replay delivers them again, since open.
    pub superseded_events_total: u64,
    /// Log records met as lost (damaged or missing) by a consumer, since open.
    pub lost_events_total: u64,
    /// Each consumer's position and lag.
    pub consumers: Vec<ConsumerStats>,
    /// Whether a backlog alert threshold is crossed.
    pub backlog_alert: bool,
    /// The durable source watermark.
    pub durable_watermark: Option<u64>,
}

/// One consumer's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Its name.
    pub name: String,
    /// Events pushed but not yet delivered to it.
    pub lag_events: u64,
    /// Events delivered but not acked.
    pub unacked_events: u64,
    /// How long ago the newest event delivered to it was pushed, while it still lags
    /// (0 when caught up): the age of the backlog it is reading, in milliseconds.
    pub lag_ms: u64,
    /// Everything below this seq is acked.
    pub acked_seq_next: u64,
    /// Whether a handle is attached.
    pub attached: bool,
}

impl SpillQueue {
    /// The highest source position below which every event is acked or durably in the log.
    pub fn durable_watermark(&self) -> Option<u64> {
        let mut state = self.core.lock();
        self.core.watermark(&mut state)
    }

    /// Counters, sizes, consumers and the backlog alert.
    pub fn stats(&self) -> QueueStats {
        let mut state = self.core.lock();
        let log = self.core.log.stats();
        let watermark = self.core.watermark(&mut state);
        let now_us = envelope::now_us();
        let consumers: Vec<ConsumerStats> = state
            .cursors
            .iter()
            .map(|(name, c)| ConsumerStats {
                name: name.clone(),
                lag_events: state.next_seq.saturating_sub(c.seq_next),
                unacked_events: c.seq_next.saturating_sub(c.acked_seq_next),
                lag_ms: if state.next_seq > c.seq_next {
                    now_us.saturating_sub(
                        c.newest_delivered_pushed_us
                            .unwrap_or(self.core.opened_at_us),
                    ) / 1000
                } else {
                    0
                },
                acked_seq_next: c.acked_seq_next,
                attached: c.attached,
            })
            .collect();
        let max_lag = consumers
            .iter()
            .map(|c| c.lag_events + c.unacked_events)
            .max()
            .unwrap_or(0);
        let backlog_bytes = state.memory.payload_bytes() + log.payload_bytes;
        let config = &self.core.config;
        let backlog_alert = (config.backlog_alert_events > 0
            && max_lag > config.backlog_alert_events)
            || (config.backlog_alert_bytes > 0 && backlog_bytes > config.backlog_alert_bytes);
        let c = &state.counters;
        QueueStats {
            memory_events: state.memory.len() as u64,
            memory_bytes: state.memory.bytes(),
            memory_tier_bytes: self.core.budget.memory_tier_bytes,
            memory_budget_bytes: self.core.budget.total_bytes,
            disk_events: log.records(),
            disk_payload_bytes: log.payload_bytes,
            disk_bytes: log.disk_bytes,
            disk_budget_bytes: config.log.disk_budget_bytes,
            disk_budget_bytes_effective: log.disk_budget_bytes_effective,
            spilling: state.spilling,
            pushed_events_total: c.pushed,
            spilled_events_total: c.spilled,
            read_back_events_total: c.read_back,
            delivered_events_total: c.delivered,
            dropped_newest_total: c.dropped_newest,
            dropped_oldest_total: c.dropped_oldest,
            blocked_pushes_total: c.blocked,
            superseded_events_total: c.superseded,
            lost_events_total: c.lost,
            consumers,
            backlog_alert,
            durable_watermark: watermark,
        }
    }

    /// The memory budget's split.
    pub fn budget(&self) -> MemoryBudget {
        self.core.budget
    }
}

impl Core {
    /// The durable source watermark: the oldest memory event and the log's durable end hold it back.
    fn watermark(&self, state: &mut State) -> Option<u64> {
        let oldest_memory = state.memory.front().map(|e| e.position);
        state
            .watermark
            .current(oldest_memory, self.log.stats().durable_next_seq)
    }
}
