//! Retry timing shared by sources and sinks: a bounded exponential backoff and the wall clock.

/// Bounded exponential backoff for retries: `min_ms`, doubling, capped at `max_ms`.
pub fn retry_delay(min_ms: u64, max_ms: u64, attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(min_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
