//! The background thread behind `Durability::Periodic`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::config::Durability;
use crate::error::StorageError;

/// A log's state that the periodic flusher syncs.
pub(crate) trait Flushable: Send + 'static {
    /// Whether anything appended or saved is not yet durable.
    fn is_dirty(&self) -> bool;
    /// Makes everything durable.
    fn flush_now(&mut self) -> Result<u64, StorageError>;
}

/// Starts the flusher `durability` asks for: a thread under `Periodic`, none otherwise.
pub(crate) fn for_durability<T: Flushable>(
    durability: Durability,
    shared: &Arc<Mutex<T>>,
    path: &Path,
) -> Result<Option<Flusher>, StorageError> {
    let Durability::Periodic { interval_ms } = durability else {
        return Ok(None);
    };
    let weak = Arc::downgrade(shared);
    // Failures in a row; a full disk fails every interval, so only some are logged.
    let failures = std::sync::atomic::AtomicU64::new(0);
    let flusher = Flusher::start(Duration::from_millis(interval_ms), move || {
        let Some(shared) = weak.upgrade() else { return };
        // A panic elsewhere leaves the state as consistent as the disk: keep syncing.
        let mut state = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !state.is_dirty() {
            return;
        }
        match state.flush_now() {
            Ok(_) => {
                let failed = failures.swap(0, std::sync::atomic::Ordering::Relaxed);
                if failed > 0 {
                    tracing::info!(failed_flushes = failed, "periodic flush of the spill log succeeds again");
                }
            }
            Err(error) => {
                let failed = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if failed.is_power_of_two() {
                    tracing::error!(%error, failed_flushes = failed, disk_full = error.is_disk_full(), "periodic flush of the spill log failed; retrying next interval");
                }
            }
        }
    })
    .map_err(StorageError::io(path))?;
    Ok(Some(flusher))
}

/// Runs `tick` every `interval` on its own thread until dropped.
#[derive(Debug)]
pub(crate) struct Flusher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(
        interval: Duration,
        tick: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        // Capacity 1: the only message ever sent is the single stop signal.
        let (stop, stopped) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("spillway-flusher".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => tick(),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the periodic flusher thread panicked");
            }
        }
    }
}
