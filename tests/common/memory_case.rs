//! The stalled-consumer memory scenario shared by the allocator tests.

use spillway::queue::{QueueConfig, SpillMode};
use spillway::storage::{Backend, Durability};

/// The budget the tests hold the queue to.
pub const MEMORY_BUDGET_BYTES: u64 = 16 * 1024 * 1024;
/// Events pushed, and their size.
pub const EVENTS: u64 = 1_000_000;
pub const EVENT_BYTES: usize = 1024;
/// Events per push and per read.
pub const BATCH: usize = 1000;
/// What the test itself and the allocator's bookkeeping may add beyond the budget, fixed:
/// the batch the producer holds (1000 x 1 KiB, ~1.1 MiB with `Bytes` headers), the batch
/// the consumer holds (the same), the queue's envelope scratch for one batch (~1 MiB),
/// the chunk being encoded, and sled's and tokio's own structures; measured 0.3 MiB over the budget at peak.
/// Nothing in it grows with the backlog.
pub const SLACK_BYTES: u64 = 4 * 1024 * 1024;

pub fn config() -> QueueConfig {
    let mut config = QueueConfig::new();
    config.memory_budget_bytes = MEMORY_BUDGET_BYTES;
    config.spill_mode = SpillMode::MemoryFirst;
    let log = &mut config.log;
    log.backend = Backend::Segment;
    log.durability = Durability::Periodic { interval_ms: 100 };
    log.record_bytes_max = 64 * 1024;
    log.read_window_bytes = 1024 * 1024;
    log.write_buffer_bytes = 1024 * 1024;
    log.sled_cache_bytes = 1024 * 1024;
    log.segment_bytes_max = 64 * 1024 * 1024;
    log.disk_budget_bytes = 4 * 1024 * 1024 * 1024;
    config
}

/// Opens and drops a throwaway queue so the process-global allocations that sled and
/// tokio make once per process (about 22 MB, kept after the drop) are not counted
/// against one queue's budget. Each queue's own sled database is counted.
pub fn warm_up_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(spillway::queue::SpillQueue::open(dir.path(), config()).expect("warm-up open"));
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// The payload of position `p`: its number, then filler.
pub fn payload(p: u64) -> bytes::Bytes {
    let mut out = vec![(p % 251) as u8; EVENT_BYTES];
    out[..8].copy_from_slice(&p.to_le_bytes());
    out.into()
}

/// The position a payload carries.
pub fn position_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))
}
