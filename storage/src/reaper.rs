//! The thread that lets go of reclaimed segments off the log's lock.
//!
//! Removing a segment's directory entry is cheap; what costs is the last reference to
//! the file going away (its handle closed, its mapped window unmapped): only then does
//! the kernel evict the inode and free its page cache, about a millisecond per 8 MiB
//! of cached data. Reclaim removes the entries and syncs the directory under the lock,
//! in crash order (see `segment_log.rs`), then hands the last references here, so a
//! consumer's ack does not wait for the eviction.
//!
//! Bounded: at most one hand-off waits while another is being dropped; past that,
//! reclaim drops inline. Until a hand-off is dropped its files' space is not free yet:
//! a refused append first waits for the reaper ([`Reaper::wait_idle`]) and measures again.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};

use crate::fs::FileHandle;

/// The last references to reclaimed (already unlinked) segment files.
#[derive(Debug, Default)]
pub(crate) struct Remains {
    pub handles: Vec<Arc<dyn FileHandle>>,
    pub windows: Vec<Arc<memmap2::Mmap>>,
}

impl Remains {
    fn is_empty(&self) -> bool {
        self.handles.is_empty() && self.windows.is_empty()
    }
}

/// Hand-offs sent and not yet dropped, and the signal that the count fell to zero.
type Pending = Arc<(Mutex<u64>, Condvar)>;

fn lock_pending(pending: &Mutex<u64>) -> std::sync::MutexGuard<'_, u64> {
    // The count is consistent at every instant it is unlocked.
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts one hand-off dropped, waking [`Reaper::wait_idle`] at zero.
fn finished(pending: &Pending) {
    let (count, idle) = &**pending;
    let mut count = lock_pending(count);
    *count = count.saturating_sub(1);
    if *count == 0 {
        idle.notify_all();
    }
}

/// The reaper thread, started at the first hand-off.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    sender: Option<Sender<Remains>>,
    thread: Option<JoinHandle<()>>,
    pending: Pending,
}

impl Reaper {
    /// Drops `remains` on the reaper thread, or here when the thread is busy or cannot start.
    pub(crate) fn hand_off(&mut self, remains: Remains) {
        if remains.is_empty() {
            return;
        }
        if self.sender.is_none() && !self.start() {
            return;
        }
        let Some(sender) = &self.sender else { return };
        // Counted before the send, so the thread never takes the count below zero.
        *lock_pending(&self.pending.0) += 1;
        if let Err(TrySendError::Full(remains) | TrySendError::Disconnected(remains)) =
            sender.try_send(remains)
        {
            finished(&self.pending);
            drop(remains);
        }
    }

    fn start(&mut self) -> bool {
        // One hand-off waits while the thread drops the previous one.
        let (sender, receiver) = bounded::<Remains>(1);
        let pending = Arc::clone(&self.pending);
        let spawned = std::thread::Builder::new()
            .name("spillway-reaper".into())
            .spawn(move || {
                for remains in receiver {
                    drop(remains);
                    finished(&pending);
                }
            });
        match spawned {
            Ok(thread) => {
                self.sender = Some(sender);
                self.thread = Some(thread);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "could not start the reaper thread; reclaimed segments are released inline");
                false
            }
        }
    }

    /// Waits until every hand-off so far is dropped (its files' space freed).
    pub(crate) fn wait_idle(&self) {
        let (count, idle) = &*self.pending;
        let mut count = lock_pending(count);
        while *count > 0 {
            count = idle
                .wait(count)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Whether a hand-off is still being dropped.
    pub(crate) fn is_busy(&self) -> bool {
        *lock_pending(&self.pending.0) > 0
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the reaper thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Filesystem, RealFs};

    #[test]
    fn wait_idle_returns_once_every_handed_off_reference_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone.seg");
        let file = RealFs.create_new(&path).expect("create");
        file.write_all_at(&[7u8; 4096], 0).expect("write");
        let map = Arc::new(file.map(0, 4096).expect("map"));
        let (weak_file, weak_map) = (Arc::downgrade(&file), Arc::downgrade(&map));
        RealFs.remove_file(&path).expect("unlink");
        let mut reaper = Reaper::default();
        for _ in 0..3 {
            // More hand-offs than the channel holds: the surplus is dropped inline.
            reaper.hand_off(Remains {
                handles: vec![Arc::clone(&file)],
                windows: vec![Arc::clone(&map)],
            });
        }
        drop((file, map));
        reaper.wait_idle();
        assert!(!reaper.is_busy());
        assert!(weak_file.upgrade().is_none(), "the file handle is closed");
        assert!(weak_map.upgrade().is_none(), "the window is unmapped");
    }
}
