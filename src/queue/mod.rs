//! The spilling queue: a memory tier bounded in bytes, overflow to the spill log,
//! lazy bounded read-back through named cursors, durable acks and a source watermark.
//!
//! # Invariants
//!
//! - **One memory budget.** `memory_budget_bytes` = the log's own buffers (write
//!   buffer, one chunk, mapped read window, sled cache; see [`budget`]) + the memory
//!   tier. The tier charges each event its payload plus [`budget::EVENT_OVERHEAD_BYTES`]
//!   and never exceeds its share. Nothing else holds event bytes: a read from the log
//!   copies at most `max_bytes` (plus one record) out of a bounded mapped window.
//! - **Order.** Every accepted event gets the next queue seq. An event goes to memory
//!   only while the queue is not spilling and it fits; otherwise to the log. Once
//!   spilling, every later event goes to the log until every cursor has read the log
//!   to its end ("the backlog drained"). A memory event remembers the log's end when
//!   it was pushed (`log_before`); a cursor delivers log records below that before it,
//!   so each cursor sees seqs in increasing order across the memory/disk boundary.
//! - **Retention.** A memory event is freed once every consumer acked it; a log
//!   prefix is consumed (and its files reclaimed) once every consumer acked past it.
//!   The budget therefore also bounds delivered-but-unacked memory events.
//! - **Durability.** Acks are saved as two log positions per consumer (next seq,
//!   next log record) and are durable with the log's durability setting. After a
//!   restart a consumer resumes at its last durable ack: at least once, never a gap
//!   in what the log held. Memory events are lost by a crash; a source that can
//!   replay checkpoints [`SpillQueue::durable_watermark`] and replays them. With
//!   [`SpillMode::WriteThrough`] every event is in the log before the push returns.
//! - **Restart.** Opening reads no backlog: the log scans only its tail segment, the
//!   queue reads one record (the last, for its seq). The backlog is read lazily.
//!
//! # Cancel safety
//!
//! [`Consumer::next_batch`] is cancel-safe: it changes state only after its wait
//! ends, synchronously, so dropping the future loses no event. [`SpillQueue::push_batch`]
//! is cancel-safe while it waits under [`FullPolicy::Block`]: the events not yet
//! accepted are dropped with the future, and none of them were enqueued; the accepted
//! ones stay enqueued. Each push method states its own ([`SpillQueue::push`]).
//!
//! # Architecture
//!
//! [`SpillQueue`] and [`Consumer`] are handles on one shared core (`shared.rs`: the
//! configuration, the budget, the log and the locked state); each path through it is
//! its own file, as tokio's `mpsc` splits its handles from its channel:
//!
//! - `open.rs`: opening, the envelope layout check, consumers and replay rules restored;
//! - `push.rs`: a push, the memory path, the wait under `block`;
//! - `spill.rs`: the overflow to the log and the full policies;
//! - `read.rs`: a consumer's next stretch in seq order, lost ranges bounded;
//! - `ack.rs`: acks made durable, what all consumers acked released;
//! - `consumer.rs`: attaching, removing, the [`Consumer`] handle;
//! - `replay.rs`: a source's replay superseding stored copies;
//! - `stats.rs`: counters, lag, the watermark and the budget reported.
//!
//! Below them stand the pieces of the state, which know nothing of the core: the memory
//! tier (`memory.rs`), a consumer's cursor (`cursor.rs`), the watermark
//! (`watermark.rs`), the record envelope (`envelope.rs`), the budget's split
//! (`budget.rs`, from plain numbers) and the configuration (`config.rs`).

pub mod budget;
pub mod config;
pub mod cursor;
pub mod envelope;
pub mod error;
pub mod inspect;
pub mod lost;
pub mod memory;
pub mod source_position;
pub mod watermark;

mod ack;
mod consumer;
mod event;
mod open;
mod push;
mod read;
mod replay;
mod shared;
mod spill;
mod stats;

use std::sync::Arc;

pub use budget::MemoryBudget;
pub use config::{FullPolicy, QueueConfig, SpillMode, QUEUE_OWN_POSITIONS};
pub use consumer::Consumer;
pub use error::{PushError, PushFailure, QueueConfigError, QueueError};
pub use event::{Delivery, Event};
pub use lost::{LostEvents, Read};
pub use push::PushReport;
pub use replay::REPLAY_RULES_MAX;
pub use stats::{ConsumerStats, QueueStats};

use shared::{blocking, Core};

/// The spilling queue. Cheap to clone: clones share one queue.
#[derive(Clone)]
pub struct SpillQueue {
    core: Arc<Core>,
}

impl std::fmt::Debug for SpillQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillQueue")
            .field("budget", &self.core.budget)
            .finish_non_exhaustive()
    }
}

impl SpillQueue {
    /// Makes every event in the log and every ack durable now.
    ///
    /// # Errors
    /// A storage error flushing the log.
    pub fn flush(&self) -> Result<(), QueueError> {
        blocking(|| self.core.log.flush())?;
        Ok(())
    }
}
