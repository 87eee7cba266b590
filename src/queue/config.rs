//! The queue's configuration: one memory budget, the log's settings, policies, alerts.

use spillway_storage::{Backend, LogConfig};

use super::budget::MemoryBudget;
use super::error::QueueConfigError;
use super::replay::REPLAY_RULES_MAX;

/// Named log positions the queue keeps for itself: the envelope layout and the source position.
pub const QUEUE_OWN_POSITIONS: u32 = 2;

/// What a push does when the disk budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// The push waits until consumers free space (the producer slows down; logged).
    Block,
    /// The pushed events are refused, counted and handed back to the caller.
    DropNewest,
    /// The oldest stored events are dropped (counted) to make room.
    DropOldest,
}

impl FullPolicy {
    /// Parses `block`, `drop_newest` or `drop_oldest`.
    pub fn parse(text: &str) -> Result<Self, QueueConfigError> {
        match text {
            "block" => Ok(FullPolicy::Block),
            "drop_newest" => Ok(FullPolicy::DropNewest),
            "drop_oldest" => Ok(FullPolicy::DropOldest),
            other => Err(QueueConfigError::Invalid {
                field: "full_policy",
                reason: format!("{other:?}: expected block, drop_newest or drop_oldest"),
            }),
        }
    }
}

/// Where pushed events go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpillMode {
    /// Memory while the budget allows, the log past it. For sources that can replay
    /// (a relay cursor): they checkpoint the queue's durable watermark.
    MemoryFirst,
    /// Every push is appended to the log before it is accepted. For sources that cannot replay.
    WriteThrough,
}

/// Everything a [`super::SpillQueue`] needs, every bound explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// All event bytes the queue holds in RAM: the memory tier, the log's write
    /// buffer, its mapped read window and sled's cache. One number.
    pub memory_budget_bytes: u64,
    /// The spill log's settings (its `disk_budget_bytes` is the queue's disk budget).
    pub log: LogConfig,
    /// What a push does when the disk budget is full.
    pub full_policy: FullPolicy,
    /// Memory first, or every push to the log.
    pub spill_mode: SpillMode,
    /// A consumer lagging by more events than this flips the health flag (0: off).
    pub backlog_alert_events: u64,
    /// A backlog of more bytes than this (memory + disk payload) flips the health flag (0: off).
    pub backlog_alert_bytes: u64,
    /// Most named consumers.
    pub consumers_max: u32,
    /// Most unacknowledged delivered stretches per consumer (consecutive deliveries merge into one).
    pub unacked_stretches_max: u32,
}

impl QueueConfig {
    /// Defaults: 64 MiB of memory, the segment log with its defaults, `block`, memory first.
    pub fn new() -> Self {
        let mut log = LogConfig::new(Backend::Segment);
        // The read window is part of the memory budget: 8 MiB bounds one mapped read.
        log.read_window_bytes = 8 * 1024 * 1024;
        QueueConfig {
            memory_budget_bytes: 64 * 1024 * 1024,
            log,
            full_policy: FullPolicy::Block,
            spill_mode: SpillMode::MemoryFirst,
            backlog_alert_events: 0,
            backlog_alert_bytes: 0,
            consumers_max: 16,
            unacked_stretches_max: 1024,
        }
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), QueueConfigError> {
        self.log.validate().map_err(QueueConfigError::Log)?;
        if self.consumers_max == 0 {
            return Err(QueueConfigError::Invalid {
                field: "consumers_max",
                reason: "must be greater than zero".into(),
            });
        }
        if self.unacked_stretches_max == 0 {
            return Err(QueueConfigError::Invalid {
                field: "unacked_stretches_max",
                reason: "must be greater than zero".into(),
            });
        }
        // Two per consumer, two per replay rule, and the queue's own keys (envelope layout, source position).
        let positions_needed =
            self.consumers_max * 2 + 2 * REPLAY_RULES_MAX as u32 + QUEUE_OWN_POSITIONS;
        if self.log.positions_max < positions_needed {
            return Err(QueueConfigError::Invalid {
                field: "consumers_max",
                reason: format!("each consumer stores two log positions, replay rules two each and the queue {} of its own; raise log.positions_max to {positions_needed}", QUEUE_OWN_POSITIONS),
            });
        }
        self.memory_budget().map(|_| ())
    }

    /// How `memory_budget_bytes` splits between the log's buffers and the memory tier.
    ///
    /// # Errors
    /// A budget too small for the log's own buffers.
    pub fn memory_budget(&self) -> Result<MemoryBudget, QueueConfigError> {
        MemoryBudget::new(self.memory_budget_bytes, &self.log)
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::new()
    }
}
