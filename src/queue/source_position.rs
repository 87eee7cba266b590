//! The source's own position, kept in the queue's log beside the consumers' acks.
//!
//! A source that can replay saves its checkpoint in a file it owns (the relay cursor
//! file). That file can be lost while the log still holds a backlog; a source starting
//! live then would skip or repeat events silently. So every checkpoint is also saved
//! here, durable with the log's positions, and a start without the file resumes from it.

use super::error::QueueError;
use super::shared::blocking;
use super::SpillQueue;

/// The named log position holding the source's checkpoint.
pub const SOURCE_POSITION_KEY: &str = "source.position";

impl SpillQueue {
    /// Records `position` (the watermark the source checkpointed) in the log.
    ///
    /// Durable as the log's positions are (at once under `every-batch`, within the
    /// interval under `periodic`, at the next flush under `manual`).
    ///
    /// # Errors
    /// A storage error saving the position.
    pub fn save_source_position(&self, position: u64) -> Result<(), QueueError> {
        blocking(|| self.core.log.save_position(SOURCE_POSITION_KEY, position))?;
        Ok(())
    }

    /// The last position saved by [`SpillQueue::save_source_position`], if any.
    ///
    /// # Errors
    /// A storage error reading it.
    pub fn source_position(&self) -> Result<Option<u64>, QueueError> {
        Ok(self.core.log.position(SOURCE_POSITION_KEY)?)
    }
}
