//! The state every handle shares: [`Core`] holds the configuration, the budget, the log
//! and the locked [`State`]; the paths (push, spill, read, ack, ...) are `impl Core`
//! blocks in their own files, so this file is the one they all stand on.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use spillway_storage::SpillLog;
use tokio::sync::Notify;

use super::budget::MemoryBudget;
use super::config::QueueConfig;
use super::cursor::CursorState;
use super::memory::MemoryTier;
use super::replay::ReplayRule;
use super::watermark::Watermark;

/// What happened since open: the `_total` figures of `QueueStats`, and the warnings' pacing.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) pushed: u64,
    pub(super) spilled: u64,
    pub(super) read_back: u64,
    pub(super) delivered: u64,
    pub(super) dropped_newest: u64,
    pub(super) dropped_oldest: u64,
    pub(super) blocked: u64,
    pub(super) superseded: u64,
    pub(super) lost: u64,
    /// Appends the filesystem refused for want of space.
    pub(super) no_space: u64,
    pub(super) last_warn: Option<Instant>,
    pub(super) unwarned_drops: u64,
}

/// Everything that changes behind the lock.
#[derive(Debug)]
pub(super) struct State {
    pub(super) next_seq: u64,
    pub(super) spilling: bool,
    pub(super) memory: MemoryTier,
    pub(super) cursors: BTreeMap<String, CursorState>,
    pub(super) watermark: Watermark,
    pub(super) counters: Counters,
    /// Log records below `seq_end` with a position above `position` are superseded by a replay.
    pub(super) replays: Vec<ReplayRule>,
}

/// The queue itself, shared by [`super::SpillQueue`] and its [`super::Consumer`]s.
pub(super) struct Core {
    pub(super) config: QueueConfig,
    pub(super) budget: MemoryBudget,
    pub(super) log: Box<dyn SpillLog>,
    pub(super) state: Mutex<State>,
    /// Wakes consumers waiting for events.
    pub(super) data_ready: Notify,
    /// Wakes producers waiting for disk space.
    pub(super) space_freed: Notify,
    /// When this process opened the queue: the lag age of consumers that have not read since.
    pub(super) opened_at_us: u64,
}

impl Core {
    /// The state, even after a panic elsewhere.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Every step writes the log before it changes memory state, so a panic in
        // another thread leaves a state no worse than a crash would: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs storage work that may block: off the async worker where the runtime allows it.
pub(super) fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
