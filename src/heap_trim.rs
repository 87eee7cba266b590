//! Gives the allocator's free pages back to the OS on an interval (glibc's
//! `malloc_trim`), so resident memory follows the memory budget, not its high-water mark.
//!
//! glibc keeps freed blocks for reuse, and returns pages only from the top of its heap.
//! Frames leave the memory tier in queue order while newer ones sit above them, so the
//! pages they free stay resident: `bench e2e` (100,000 frames, 64 MiB budget) measured
//! peak RSS at budget +18.5 to +33.2 MiB without trimming and -6.3 to -0.5 MiB with it
//! every 100 ms, at the same CPU per event within the run-to-run noise.

use std::sync::Once;
use std::time::Duration;

/// Default of `heap_trim_interval_ms`.
pub const INTERVAL_MS_DEFAULT: u64 = 100;
/// Shortest `heap_trim_interval_ms` accepted (each trim walks the allocator's free lists).
pub const INTERVAL_MS_MIN: u64 = 10;
/// Longest `heap_trim_interval_ms` accepted.
pub const INTERVAL_MS_MAX: u64 = 60_000;

static STARTED: Once = Once::new();

/// Starts the one trimming thread of this process, every `interval_ms` (0: never). Later
/// calls do nothing: the first pipeline's interval holds for the process.
pub fn start(interval_ms: u64) {
    if interval_ms == 0 || !trims() {
        return;
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("spillway-heap-trim".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(interval_ms));
                trim();
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the heap trimming thread; freed memory stays resident longer");
        }
    });
}

/// True where trimming does something (glibc).
pub fn trims() -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
