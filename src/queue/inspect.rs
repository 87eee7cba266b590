//! A queue directory read offline: the log's state with the queue's positions interpreted.

use std::path::Path;

use spillway_storage::inspect::{self, InspectOptions, Inspection};
use spillway_storage::InspectError;

use super::cursor::position_keys;

/// One consumer's saved position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerPosition {
    /// The consumer's name.
    pub name: String,
    /// The queue seq after its last durable ack.
    pub acked_seq_next: u64,
    /// The log record after its last durable ack.
    pub log_position: u64,
    /// Records on disk it has not acked.
    pub unacked_on_disk: u64,
}

/// A queue directory's state, read without writing to it.
#[derive(Debug)]
pub struct QueueInspection {
    /// The log underneath, as the storage crate reads it.
    pub log: Inspection,
    /// Saved consumers, by name.
    pub consumers: Vec<ConsumerPosition>,
    /// Replay rules saved by a replaying source (see `SpillQueue::begin_replay`).
    pub replay_rules: usize,
}

/// Reads the queue in `dir` offline; see [`spillway_storage::inspect`].
///
/// # Errors
/// The directory is not a queue, its store is over the copy bound, or I/O failed.
pub fn inspect(dir: &Path, options: InspectOptions) -> Result<QueueInspection, InspectError> {
    let log = inspect::inspect(dir, options)?;
    let mut consumers = Vec::new();
    let mut replay_rules = 0;
    for (name, value) in &log.positions {
        if let Some(consumer) = name.strip_prefix("seq.") {
            let (_, log_key) = position_keys(consumer);
            let log_position = log
                .positions
                .iter()
                .find(|(n, _)| *n == log_key)
                .map_or(log.consumed_seq, |(_, v)| *v);
            consumers.push(ConsumerPosition {
                name: consumer.to_string(),
                acked_seq_next: *value,
                log_position,
                unacked_on_disk: log.next_seq.saturating_sub(log_position),
            });
        } else if name.starts_with("replay.") && name.ends_with(".seq_end") {
            replay_rules += 1;
        }
    }
    Ok(QueueInspection {
        log,
        consumers,
        replay_rules,
    })
}
