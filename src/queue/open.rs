//! Opening a queue: the log opened, its envelope layout checked, the next seq found with
//! one read, the consumers and replay rules restored from the log's named positions.
//! Reads no backlog, so a restart is bounded in time and memory whatever the log holds.

use std::path::Path;
use std::sync::{Arc, Mutex};

use spillway_storage::{LogStats, SpillLog};
use tokio::sync::Notify;

use super::config::{QueueConfig, SpillMode};
use super::cursor::saved_cursors;
use super::envelope;
use super::error::QueueError;
use super::memory::MemoryTier;
use super::replay::saved_rules;
use super::shared::{Core, Counters, State};
use super::watermark::Watermark;
use super::SpillQueue;

impl SpillQueue {
    /// Opens (or creates) the queue in `dir`. Reads no backlog: bounded in time and memory.
    ///
    /// # Errors
    /// A refused configuration, or the log's open errors (damage, another version, ...).
    pub fn open(dir: &Path, config: QueueConfig) -> Result<Self, QueueError> {
        config.validate()?;
        let budget = config.memory_budget()?;
        let log = spillway_storage::open(dir, config.log.clone())?;
        let stats = log.stats();
        // Restore every saved consumer; they hold back reclaim until removed.
        let positions = log.positions()?;
        check_envelope_version(log.as_ref(), &stats)?;
        let next_seq_stored = next_seq_after_log(log.as_ref(), &stats)?;
        let cursors = saved_cursors(&positions, stats.first_seq, stats.next_seq);
        let next_seq = cursors
            .values()
            .map(|c| c.acked_seq_next)
            .fold(next_seq_stored, u64::max);
        let spilling =
            stats.next_seq > stats.first_seq || config.spill_mode == SpillMode::WriteThrough;
        let state = State {
            next_seq,
            spilling,
            memory: MemoryTier::new(budget.memory_tier_bytes),
            cursors,
            watermark: Watermark::default(),
            counters: Counters::default(),
            replays: saved_rules(&positions),
        };
        tracing::info!(
            backlog_events = stats.records(),
            consumers = state.cursors.len(),
            memory_tier_bytes = budget.memory_tier_bytes,
            "spill queue opened"
        );
        Ok(SpillQueue {
            core: Arc::new(Core {
                config,
                budget,
                log,
                state: Mutex::new(state),
                data_ready: Notify::new(),
                space_freed: Notify::new(),
                opened_at_us: envelope::now_us(),
            }),
        })
    }
}

/// Refuses a log written with another envelope layout; marks a new log with ours.
fn check_envelope_version(log: &dyn SpillLog, stats: &LogStats) -> Result<(), QueueError> {
    match log.position(envelope::ENVELOPE_VERSION_KEY)? {
        Some(envelope::ENVELOPE_VERSION) => Ok(()),
        // A manifest rebuilt from the segment files has lost its named positions, the
        // marker among them; the records were written by a build of this layout or the
        // one before, and this build only ever wrote this one since the marker exists.
        None if log.recovery_report().manifest_rebuilt.is_some() => {
            tracing::warn!(
                layout = envelope::ENVELOPE_VERSION,
                "the spill log's manifest was rebuilt; taking its records as this build's envelope layout"
            );
            log.save_position(envelope::ENVELOPE_VERSION_KEY, envelope::ENVELOPE_VERSION)?;
            log.flush()?;
            Ok(())
        }
        // A log without the marker and without records is new (or drained): take it. The
        // marker is made durable now, before any record of ours can be.
        None if stats.records() == 0 => {
            log.save_position(envelope::ENVELOPE_VERSION_KEY, envelope::ENVELOPE_VERSION)?;
            log.flush()?;
            Ok(())
        }
        found => Err(QueueError::EnvelopeVersion {
            found: found.unwrap_or(1),
            supported: envelope::ENVELOPE_VERSION,
        }),
    }
}

/// The queue seq after the log's last record: one read, or a few when the tail is lost.
///
/// A lost tail hides the last seqs used; the nearest intact record before it plus
/// the records after it is a floor. A seq of a lost record may be given again: no
/// consumer can hold it, since the record was never read back.
fn next_seq_after_log(log: &dyn SpillLog, stats: &LogStats) -> Result<u64, QueueError> {
    if stats.next_seq == stats.first_seq {
        return Ok(0);
    }
    let mut probe = stats.next_seq - 1;
    let mut step = 1u64;
    for _ in 0..64 {
        let batch = log.read(probe, 1, 0)?;
        if let Some(last) = batch.get(0).and_then(envelope::decode) {
            return Ok(last.seq + (stats.next_seq - probe));
        }
        if probe == stats.first_seq {
            break;
        }
        probe = probe.saturating_sub(step).max(stats.first_seq);
        step = step.saturating_mul(2);
    }
    Ok(stats.next_seq)
}
