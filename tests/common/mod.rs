//! Helpers shared by the queue's integration tests.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod binary;
pub mod cbor_encode;
pub mod counting_alloc;
#[cfg(feature = "pipeline")]
pub mod fixture;
#[cfg(feature = "pipeline")]
pub mod http;
#[cfg(feature = "pipeline")]
pub mod labels;
#[cfg(feature = "pipeline")]
pub mod list_repos_server;
pub mod memory_case;
#[cfg(feature = "pipeline")]
pub mod nats_server;
#[cfg(feature = "pipeline")]
pub mod redis_server;

use spillway::queue::{QueueConfig, SpillMode};
use spillway::storage::{Backend, Durability};

/// A queue configuration with tiny log limits, so chunk splits, segment rolls and spills happen with few events.
pub fn small_queue_config(memory_tier_bytes: u64) -> QueueConfig {
    let mut config = QueueConfig::new();
    let log = &mut config.log;
    log.backend = Backend::Segment;
    log.durability = Durability::EveryBatch;
    log.record_bytes_max = 4096;
    log.chunk_bytes_target = 512;
    log.segment_bytes_max = 16 * 1024;
    log.write_buffer_bytes = 1024;
    log.read_window_bytes = 8192;
    log.sled_cache_bytes = 64 * 1024;
    log.disk_budget_bytes = 256 * 1024 * 1024;
    config.spill_mode = SpillMode::MemoryFirst;
    let reserved = spillway::queue::MemoryBudget::new(u64::MAX / 4, &config.log)
        .expect("budget")
        .log_reserved_bytes;
    config.memory_budget_bytes = reserved + memory_tier_bytes;
    config
}

/// The payload the tests push for source position `position`.
pub fn payload(position: u64) -> Vec<u8> {
    let len = 1 + (position.wrapping_mul(2654435761) % 200) as usize;
    let mut out = position.to_le_bytes().to_vec();
    out.extend((0..len).map(|i| (position as usize + i) as u8));
    out
}

/// The `seq` of every complete line of a raw-format JSON-lines sink file (none while it does not exist).
pub fn jsonl_seqs(out: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    // A line still being written (no newline yet) is left for the next look.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|line| {
            let rest = line
                .strip_prefix("{\"seq\":")
                .expect("a JSON line starting with seq");
            rest[..rest.find(',').expect("comma")].parse().expect("seq")
        })
        .collect()
}

/// Polls `done` until it holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A xorshift generator seeded from the clock: kill times that differ from run to run
/// without a random-number crate.
pub fn clock_seeded_rng() -> impl FnMut() -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        | 1;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Environment pairs as `Config::load` takes them.
pub fn env_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `path` opened for a child's stderr: created if missing, appended to across restarts.
pub fn append_log(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening the log {}: {e}", path.display()))
}
