//! Replay rules: a source that replays from its checkpoint after a crash supersedes the
//! copies of those events still stored in the log, so each consumer gets them once, in order.
//!
//! A rule is kept in the log's named positions as `replay.{index}.seq_end` and
//! `replay.{index}.position`, durable with the consumers' acks.

use std::collections::BTreeMap;

use spillway_storage::SpillLog;

use super::error::QueueError;
use super::SpillQueue;

/// Most replay rules kept; an older one is forgotten past it (its records may then be delivered twice).
pub const REPLAY_RULES_MAX: usize = 16;

/// Log records below `seq_end` (a log seq) with a position above `position` are skipped: a source replays them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayRule {
    /// The log's end when the replay began: only records stored before it are superseded.
    pub(super) seq_end: u64,
    /// The source's checkpoint: the replay resends every event above it.
    pub(super) position: u64,
}

impl ReplayRule {
    /// Whether the log record `log_seq`, holding source position `position`, comes again with the replay.
    pub(super) fn supersedes(&self, log_seq: u64, position: u64) -> bool {
        log_seq < self.seq_end && position > self.position
    }
}

fn replay_names(index: usize) -> (String, String) {
    (
        format!("replay.{index}.seq_end"),
        format!("replay.{index}.position"),
    )
}

/// The rules saved among the log's named positions (a rule missing one of its two keys is dropped).
pub(super) fn saved_rules(positions: &[(String, u64)]) -> Vec<ReplayRule> {
    let mut parts: BTreeMap<usize, (Option<u64>, Option<u64>)> = BTreeMap::new();
    for (name, value) in positions {
        let Some(rest) = name.strip_prefix("replay.") else {
            continue;
        };
        let (index, field) = rest.split_once('.').unwrap_or_default();
        if let Ok(index) = index.parse::<usize>() {
            let entry = parts.entry(index).or_default();
            match field {
                "seq_end" => entry.0 = Some(*value),
                _ => entry.1 = Some(*value),
            }
        }
    }
    parts
        .into_values()
        .filter_map(|(seq_end, position)| {
            Some(ReplayRule {
                seq_end: seq_end?,
                position: position?,
            })
        })
        .collect()
}

/// Saves `rules` over the saved ones: every slot up to [`REPLAY_RULES_MAX`] is written or removed.
fn save(log: &dyn SpillLog, rules: &[ReplayRule]) -> Result<(), QueueError> {
    for index in 0..REPLAY_RULES_MAX {
        let (seq_key, position_key) = replay_names(index);
        match rules.get(index) {
            Some(rule) => {
                log.save_position(&seq_key, rule.seq_end)?;
                log.save_position(&position_key, rule.position)?;
            }
            None => {
                log.remove_position(&seq_key)?;
                log.remove_position(&position_key)?;
            }
        }
    }
    Ok(())
}

impl SpillQueue {
    /// Tells the queue that its source is about to replay every event above `checkpoint`.
    ///
    /// A source that can replay checkpoints [`SpillQueue::durable_watermark`]; after a
    /// restart it resumes from its checkpoint, so events above it that survived in the
    /// log would be delivered twice and out of order. Call this before the replay's
    /// first push: log records already stored with a position above `checkpoint` are
    /// skipped by every consumer, and the replay delivers them once, in order.
    /// Durable with the log's positions.
    ///
    /// # Errors
    /// A storage error saving the rule.
    pub fn begin_replay(&self, checkpoint: u64) -> Result<(), QueueError> {
        let mut state = self.core.lock();
        let log = self.core.log.stats();
        // A rule is spent once every record below its end is consumed, and subsumed by a newer
        // rule with a checkpoint as low (checkpoints only grow, so only equal ones are).
        state
            .replays
            .retain(|r| r.seq_end > log.first_seq && r.position < checkpoint);
        if log.next_seq == log.first_seq {
            return save(self.core.log.as_ref(), &state.replays);
        }
        if state.replays.len() == REPLAY_RULES_MAX {
            tracing::warn!(
                "too many replay rules; forgetting the oldest (its records may be delivered twice)"
            );
            state.replays.remove(0);
        }
        state.replays.push(ReplayRule {
            seq_end: log.next_seq,
            position: checkpoint,
        });
        save(self.core.log.as_ref(), &state.replays)?;
        tracing::info!(
            checkpoint,
            log_seq_end = log.next_seq,
            "source replay begins; stored events above the checkpoint are superseded"
        );
        Ok(())
    }
}
