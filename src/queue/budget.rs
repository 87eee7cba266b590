//! The memory budget: one number of bytes, split between the log's buffers and the memory tier.

use spillway_storage::LogConfig;

use super::error::QueueConfigError;

/// Bytes charged per event in memory besides its payload: the deque slot (64 B) and
/// the shared buffer's header (32 B); a test checks the slot's size.
pub const EVENT_OVERHEAD_BYTES: u64 = 96;
/// Heap that sled takes per open database whatever its `cache_capacity`: its page table
/// allocates fixed 2 MiB nodes. Measured 6.5-7.0 MB with a 1 MiB cache (sled 0.34.7).
pub const SLED_FIXED_BYTES: u64 = 8 * 1024 * 1024;
/// The memory tier must hold at least this much, or the budget is refused.
pub const MEMORY_TIER_BYTES_MIN: u64 = 4 * 1024;

/// How `memory_budget_bytes` is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The configured total.
    pub total_bytes: u64,
    /// Reserved for the log: write buffer (plus one chunk), mapped read window, sled cache and sled's fixed structures.
    pub log_reserved_bytes: u64,
    /// What the memory tier may hold.
    pub memory_tier_bytes: u64,
}

impl MemoryBudget {
    /// Splits `total_bytes` (a queue's `memory_budget_bytes`) between the buffers of a log
    /// with settings `log` and the memory tier, refusing a budget too small for the log.
    pub fn new(total_bytes: u64, log: &LogConfig) -> Result<Self, QueueConfigError> {
        let log_reserved_bytes = u64::from(log.write_buffer_bytes)
            + log.chunk_bytes_max()
            + u64::from(log.read_window_bytes)
            + log.sled_cache_bytes
            + SLED_FIXED_BYTES;
        let needed = log_reserved_bytes + MEMORY_TIER_BYTES_MIN;
        if total_bytes < needed {
            return Err(QueueConfigError::Invalid {
                field: "memory_budget_bytes",
                reason: format!(
                    "{} is below the minimum of {needed}: the log's buffers take {log_reserved_bytes} (write buffer + largest chunk + read window + sled cache + sled's fixed structures) and the memory tier needs {MEMORY_TIER_BYTES_MIN}",
                    total_bytes
                ),
            });
        }
        Ok(MemoryBudget {
            total_bytes,
            log_reserved_bytes,
            memory_tier_bytes: total_bytes - log_reserved_bytes,
        })
    }
}

/// What one event costs in the memory tier.
pub fn event_cost(payload_len: usize) -> u64 {
    payload_len as u64 + EVENT_OVERHEAD_BYTES
}
