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
//! accepted are dropped with the future, and none of them were enqueued.

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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spillway_storage::{AppendError, SpillLog};
use tokio::sync::Notify;

pub use budget::MemoryBudget;
pub use config::{FullPolicy, QueueConfig, SpillMode};
pub use error::{PushError, PushFailure, QueueConfigError, QueueError};
pub use lost::{LostEvents, Read};

use cursor::{CursorState, Origin, Stretch};
use memory::{MemoryEntry, MemoryTier};
use watermark::Watermark;

/// Named log positions the queue keeps for itself: the envelope layout and the source position.
pub const QUEUE_OWN_POSITIONS: u32 = 2;

/// How often a producer blocked on a full disk tries again without a wake-up.
const FULL_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Interval between repeated warnings of the same kind (drops, a blocked producer).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// An event to push: its payload and its source position (relay seq, LSN; 0 if none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The source's position, non-decreasing in push order; drives the watermark.
    pub position: u64,
    /// The bytes.
    pub payload: Bytes,
}

impl Event {
    /// An event at `position` carrying `payload`.
    pub fn new(position: u64, payload: impl Into<Bytes>) -> Self {
        Event {
            position,
            payload: payload.into(),
        }
    }
}

/// An event delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The queue's sequence number: ack up to it.
    pub seq: u64,
    /// The source position it was pushed with.
    pub position: u64,
    /// When the queue accepted it, µs since the Unix epoch (kept through a spill and a restart).
    pub pushed_at_us: u64,
    /// The bytes.
    pub payload: Bytes,
}

/// What a push did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Events accepted into memory.
    pub to_memory: usize,
    /// Events accepted into the log.
    pub to_disk: usize,
    /// Events refused under [`FullPolicy::DropNewest`], handed back.
    pub dropped: Vec<Event>,
}

/// Counters and sizes of a queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Events in the memory tier (including delivered, unacked ones).
    pub memory_events: u64,
    /// Bytes the memory tier charges against the budget.
    pub memory_bytes: u64,
    /// What the memory tier may hold.
    pub memory_tier_bytes: u64,
    /// The configured total memory budget.
    pub memory_budget_bytes: u64,
    /// Unconsumed records in the log.
    pub disk_events: u64,
    /// Payload bytes in the log's live files.
    pub disk_payload_bytes: u64,
    /// Bytes the log takes on disk.
    pub disk_bytes: u64,
    /// The configured disk budget.
    pub disk_budget_bytes: u64,
    /// The disk budget as the filesystem's free space caps it (at most the configured one).
    pub disk_budget_bytes_effective: u64,
    /// Whether new events go to the log.
    pub spilling: bool,
    /// Events accepted since open.
    pub pushed_events_total: u64,
    /// Events written to the log since open.
    pub spilled_events_total: u64,
    /// Events read back from the log since open.
    pub read_back_events_total: u64,
    /// Events delivered to consumers since open.
    pub delivered_events_total: u64,
    /// Events refused under `drop_newest` since open.
    pub dropped_newest_total: u64,
    /// Events dropped under `drop_oldest` since open.
    pub dropped_oldest_total: u64,
    /// Pushes that waited for disk space since open.
    pub blocked_pushes_total: u64,
    /// Log records skipped because a source replay delivers them again, since open.
    pub superseded_events_total: u64,
    /// Log records met as lost (damaged or missing) by a consumer, since open.
    pub lost_events_total: u64,
    /// Each consumer's position and lag.
    pub consumers: Vec<ConsumerStats>,
    /// Whether a backlog alert threshold is crossed.
    pub backlog_alert: bool,
    /// The durable source watermark.
    pub durable_watermark: Option<u64>,
}

/// One consumer's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Its name.
    pub name: String,
    /// Events pushed but not yet delivered to it.
    pub lag_events: u64,
    /// Events delivered but not acked.
    pub unacked_events: u64,
    /// How long ago the newest event delivered to it was pushed, while it still lags
    /// (0 when caught up): the age of the backlog it is reading, in milliseconds.
    pub lag_ms: u64,
    /// Everything below this seq is acked.
    pub acked_seq_next: u64,
    /// Whether a handle is attached.
    pub attached: bool,
}

#[derive(Debug, Default)]
struct Counters {
    pushed: u64,
    spilled: u64,
    read_back: u64,
    delivered: u64,
    dropped_newest: u64,
    dropped_oldest: u64,
    blocked: u64,
    superseded: u64,
    lost: u64,
    /// Appends the filesystem refused for want of space.
    no_space: u64,
    last_warn: Option<Instant>,
    unwarned_drops: u64,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    spilling: bool,
    memory: MemoryTier,
    cursors: BTreeMap<String, CursorState>,
    watermark: Watermark,
    counters: Counters,
    /// Log records below `seq_end` with a position above `position` are superseded by a replay.
    replays: Vec<ReplayRule>,
    /// Envelopes of the batch being spilled; cleared after each append.
    scratch: Vec<u8>,
}

struct Core {
    config: QueueConfig,
    budget: MemoryBudget,
    log: Box<dyn SpillLog>,
    state: Mutex<State>,
    /// Wakes consumers waiting for events.
    data_ready: Notify,
    /// Wakes producers waiting for disk space.
    space_freed: Notify,
    /// When this process opened the queue: the lag age of consumers that have not read since.
    opened_at_us: u64,
}

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

/// Runs storage work that may block: off the async worker where the runtime allows it.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Refuses a log written with another envelope layout; marks a new log with ours.
fn check_envelope_version(
    log: &dyn SpillLog,
    stats: &spillway_storage::LogStats,
) -> Result<(), QueueError> {
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
fn next_seq_after_log(
    log: &dyn SpillLog,
    stats: &spillway_storage::LogStats,
) -> Result<u64, QueueError> {
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

fn position_names(consumer: &str) -> (String, String) {
    (format!("seq.{consumer}"), format!("log.{consumer}"))
}

impl SpillQueue {
    /// Opens (or creates) the queue in `dir`. Reads no backlog: bounded in time and memory.
    ///
    /// # Errors
    /// A refused configuration, or the log's open errors (damage, another version, ...).
    pub fn open(dir: &Path, config: QueueConfig) -> Result<Self, QueueError> {
        config.validate()?;
        let budget = MemoryBudget::new(&config)?;
        let log = spillway_storage::open(dir, config.log.clone())?;
        let stats = log.stats();
        // Restore every saved consumer; they hold back reclaim until removed.
        let mut saved: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
        let mut replay_parts: BTreeMap<usize, (Option<u64>, Option<u64>)> = BTreeMap::new();
        for (name, value) in log.positions()? {
            if let Some(rest) = name.strip_prefix("replay.") {
                let (index, field) = rest.split_once('.').unwrap_or_default();
                if let Ok(index) = index.parse::<usize>() {
                    let entry = replay_parts.entry(index).or_default();
                    match field {
                        "seq_end" => entry.0 = Some(value),
                        _ => entry.1 = Some(value),
                    }
                }
            } else if let Some(consumer) = name.strip_prefix("seq.") {
                saved.entry(consumer.to_string()).or_default().0 = Some(value);
            } else if let Some(consumer) = name.strip_prefix("log.") {
                saved.entry(consumer.to_string()).or_default().1 = Some(value);
            }
        }
        check_envelope_version(log.as_ref(), &stats)?;
        let next_seq_stored = next_seq_after_log(log.as_ref(), &stats)?;
        let mut next_seq = next_seq_stored;
        let mut cursors = BTreeMap::new();
        for (name, (seq, log_pos)) in saved {
            let seq = seq.unwrap_or(0);
            next_seq = next_seq.max(seq);
            let log_pos = log_pos
                .unwrap_or(stats.first_seq)
                .clamp(stats.first_seq, stats.next_seq);
            cursors.insert(name, CursorState::at(seq, log_pos));
        }
        let replays = replay_parts
            .into_values()
            .filter_map(|(seq_end, position)| {
                Some(ReplayRule {
                    seq_end: seq_end?,
                    position: position?,
                })
            })
            .collect();
        let spilling =
            stats.next_seq > stats.first_seq || config.spill_mode == SpillMode::WriteThrough;
        let state = State {
            next_seq,
            spilling,
            memory: MemoryTier::new(budget.memory_tier_bytes),
            cursors,
            watermark: Watermark::default(),
            counters: Counters::default(),
            replays,
            scratch: Vec::new(),
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

    /// Pushes one event; see [`SpillQueue::push_batch`].
    pub async fn push(&self, event: Event) -> Result<PushReport, PushError> {
        self.push_batch(vec![event]).await
    }

    /// Pushes events in order. Never waits for a consumer: it waits only when the
    /// disk budget is full under [`FullPolicy::Block`].
    ///
    /// # Errors
    /// A [`PushError`] handing every unaccepted event back: an event over the size
    /// limit, a batch larger than the whole disk budget, or a storage failure.
    pub async fn push_batch(&self, events: Vec<Event>) -> Result<PushReport, PushError> {
        let max =
            u64::from(self.core.config.log.record_bytes_max) - envelope::ENVELOPE_BYTES as u64;
        if let Some(big) = events.iter().find(|e| e.payload.len() as u64 > max) {
            let len = big.payload.len();
            return Err(PushError {
                reason: PushFailure::EventTooLarge { len, max },
                events,
            });
        }
        let mut report = PushReport::default();
        let mut pending = events;
        loop {
            let space = self.core.space_freed.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            // Memory-only pushes skip `block_in_place`; one that may reach the disk takes it.
            // (If another producer fills memory in between, the spill runs inline: correct, briefly blocking.)
            let cost = pending
                .iter()
                .map(|e| budget::event_cost(e.payload.len()))
                .sum();
            let attempt = if self.core.push_may_touch_disk(cost) {
                blocking(|| self.core.try_push(pending, &mut report))
            } else {
                self.core.try_push(pending, &mut report)
            };
            match attempt {
                Ok(()) => return Ok(report),
                Err(Refusal::Blocked(rest)) => {
                    pending = rest;
                    // Consumers' acks wake it; space freed outside this queue (another
                    // queue on the filesystem, an operator) is found by the timed retry.
                    tokio::select! {
                        _ = space => {}
                        _ = tokio::time::sleep(FULL_RETRY_INTERVAL) => {}
                    }
                }
                Err(Refusal::Failed(error)) => return Err(error),
            }
        }
    }

    /// Attaches the named consumer, creating it at the oldest retained event if new.
    ///
    /// # Errors
    /// [`QueueError::ConsumerBusy`] if a handle is attached, [`QueueError::TooManyConsumers`].
    pub fn consumer(&self, name: &str) -> Result<Consumer, QueueError> {
        self.core.attach(name)?;
        Ok(Consumer {
            core: Arc::clone(&self.core),
            name: name.to_string(),
        })
    }

    /// Forgets a consumer (detached) so it no longer holds back reclaim.
    pub fn remove_consumer(&self, name: &str) -> Result<(), QueueError> {
        let mut state = self.core.lock();
        if state.cursors.get(name).is_some_and(|c| c.attached) {
            return Err(QueueError::ConsumerBusy(name.to_string()));
        }
        state.cursors.remove(name);
        let (seq_key, log_key) = position_names(name);
        self.core.log.remove_position(&seq_key)?;
        self.core.log.remove_position(&log_key)?;
        self.core.release(&mut state)?;
        Ok(())
    }

    /// The highest source position below which every event is acked or durably in the log.
    pub fn durable_watermark(&self) -> Option<u64> {
        let mut state = self.core.lock();
        self.core.watermark(&mut state)
    }

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
            return self.core.save_replays(&state);
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
        self.core.save_replays(&state)?;
        tracing::info!(
            checkpoint,
            log_seq_end = log.next_seq,
            "source replay begins; stored events above the checkpoint are superseded"
        );
        Ok(())
    }

    /// Makes every event in the log and every ack durable now.
    pub fn flush(&self) -> Result<(), QueueError> {
        blocking(|| self.core.log.flush())?;
        Ok(())
    }

    /// Counters, sizes, consumers and the backlog alert.
    pub fn stats(&self) -> QueueStats {
        let mut state = self.core.lock();
        let log = self.core.log.stats();
        let watermark = self.core.watermark(&mut state);
        let now_us = envelope::now_us();
        let consumers: Vec<ConsumerStats> = state
            .cursors
            .iter()
            .map(|(name, c)| ConsumerStats {
                name: name.clone(),
                lag_events: state.next_seq.saturating_sub(c.seq_next),
                unacked_events: c.seq_next.saturating_sub(c.acked_seq_next),
                lag_ms: if state.next_seq > c.seq_next {
                    now_us.saturating_sub(
                        c.newest_delivered_pushed_us
                            .unwrap_or(self.core.opened_at_us),
                    ) / 1000
                } else {
                    0
                },
                acked_seq_next: c.acked_seq_next,
                attached: c.attached,
            })
            .collect();
        let max_lag = consumers
            .iter()
            .map(|c| c.lag_events + c.unacked_events)
            .max()
            .unwrap_or(0);
        let backlog_bytes = state.memory.payload_bytes() + log.payload_bytes;
        let config = &self.core.config;
        let backlog_alert = (config.backlog_alert_events > 0
            && max_lag > config.backlog_alert_events)
            || (config.backlog_alert_bytes > 0 && backlog_bytes > config.backlog_alert_bytes);
        let c = &state.counters;
        QueueStats {
            memory_events: state.memory.len() as u64,
            memory_bytes: state.memory.bytes(),
            memory_tier_bytes: self.core.budget.memory_tier_bytes,
            memory_budget_bytes: self.core.budget.total_bytes,
            disk_events: log.records(),
            disk_payload_bytes: log.payload_bytes,
            disk_bytes: log.disk_bytes,
            disk_budget_bytes: config.log.disk_budget_bytes,
            disk_budget_bytes_effective: log.disk_budget_bytes_effective,
            spilling: state.spilling,
            pushed_events_total: c.pushed,
            spilled_events_total: c.spilled,
            read_back_events_total: c.read_back,
            delivered_events_total: c.delivered,
            dropped_newest_total: c.dropped_newest,
            dropped_oldest_total: c.dropped_oldest,
            blocked_pushes_total: c.blocked,
            superseded_events_total: c.superseded,
            lost_events_total: c.lost,
            consumers,
            backlog_alert,
            durable_watermark: watermark,
        }
    }

    /// The memory budget's split.
    pub fn budget(&self) -> MemoryBudget {
        self.core.budget
    }
}

/// Most replay rules kept; an older one is forgotten past it (its records may then be delivered twice).
pub const REPLAY_RULES_MAX: usize = 16;

/// Log records below `seq_end` (a log seq) with a position above `position` are skipped: a source replays them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplayRule {
    seq_end: u64,
    position: u64,
}

impl ReplayRule {
    fn supersedes(&self, log_seq: u64, position: u64) -> bool {
        log_seq < self.seq_end && position > self.position
    }
}

fn replay_names(index: usize) -> (String, String) {
    (
        format!("replay.{index}.seq_end"),
        format!("replay.{index}.position"),
    )
}

/// Why a push attempt did not finish.
enum Refusal {
    /// The disk is full under `block`: wait and retry with these events.
    Blocked(Vec<Event>),
    Failed(PushError),
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every step writes the log before it changes memory state, so a panic in
        // another thread leaves a state no worse than a crash would: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn save_replays(&self, state: &State) -> Result<(), QueueError> {
        for index in 0..REPLAY_RULES_MAX {
            let (seq_key, position_key) = replay_names(index);
            match state.replays.get(index) {
                Some(rule) => {
                    self.log.save_position(&seq_key, rule.seq_end)?;
                    self.log.save_position(&position_key, rule.position)?;
                }
                None => {
                    self.log.remove_position(&seq_key)?;
                    self.log.remove_position(&position_key)?;
                }
            }
        }
        Ok(())
    }

    /// Whether a push costing `cost` bytes could write to the log.
    fn push_may_touch_disk(&self, cost: u64) -> bool {
        let state = self.lock();
        self.config.spill_mode == SpillMode::WriteThrough
            || state.spilling
            || !state.memory.fits(cost)
    }

    /// Whether the consumer's next read could read the log.
    fn read_may_touch_disk(&self, name: &str) -> bool {
        let state = self.lock();
        let Some(cursor) = state.cursors.get(name) else {
            return true;
        };
        match state
            .memory
            .index_from(cursor.seq_next)
            .and_then(|i| state.memory.get(i))
        {
            // Log records come before that memory event: they are read first.
            Some(next) => next.log_before > cursor.log_next,
            None => cursor.log_next < self.log.stats().next_seq,
        }
    }

    fn watermark(&self, state: &mut State) -> Option<u64> {
        let oldest_memory = state.memory.front().map(|e| e.position);
        state
            .watermark
            .current(oldest_memory, self.log.stats().durable_next_seq)
    }

    fn try_push(&self, events: Vec<Event>, report: &mut PushReport) -> Result<(), Refusal> {
        if events.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        // The memory path: the prefix that fits while the queue is not spilling.
        let mut to_memory = 0;
        if !state.spilling {
            let mut cost = 0;
            for event in &events {
                cost += budget::event_cost(event.payload.len());
                if !state.memory.fits(cost) {
                    break;
                }
                to_memory += 1;
            }
        }
        let mut events = events;
        let rest = events.split_off(to_memory);
        if to_memory > 0 {
            let log_before = self.log.stats().next_seq;
            let last_position = events.last().map_or(0, |e| e.position);
            let pushed_at_us = envelope::now_us();
            for event in events {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.memory.push(MemoryEntry {
                    seq,
                    position: event.position,
                    log_before,
                    pushed_at_us,
                    payload: event.payload,
                });
            }
            state.watermark.on_memory_push(last_position);
            state.counters.pushed += to_memory as u64;
            report.to_memory += to_memory;
            self.data_ready.notify_waiters();
        }
        if rest.is_empty() {
            return Ok(());
        }
        if !state.spilling {
            tracing::info!(
                memory_bytes = state.memory.bytes(),
                "memory budget reached; spilling to disk"
            );
            state.spilling = true;
        }
        self.spill(&mut state, rest, report)
    }

    fn spill(
        &self,
        state: &mut State,
        events: Vec<Event>,
        report: &mut PushReport,
    ) -> Result<(), Refusal> {
        let first_seq = state.next_seq;
        let mut scratch = std::mem::take(&mut state.scratch);
        scratch.clear();
        let mut ends = Vec::with_capacity(events.len());
        let pushed_at_us = envelope::now_us();
        for (i, event) in events.iter().enumerate() {
            envelope::encode(
                &mut scratch,
                first_seq + i as u64,
                event.position,
                pushed_at_us,
                &event.payload,
            );
            ends.push(scratch.len());
        }
        let records: Vec<&[u8]> = ends
            .iter()
            .scan(0, |start, &end| {
                let record = &scratch[*start..end];
                *start = end;
                Some(record)
            })
            .collect();
        let mut attempts = 0;
        let outcome = loop {
            match self.log.append(&records) {
                Err(AppendError::Full {
                    needed_bytes,
                    budget_bytes,
                    ..
                }) if needed_bytes > budget_bytes => {
                    break Err(Refusal::Failed(PushError {
                        reason: PushFailure::BatchOverBudget {
                            needed_bytes,
                            budget_bytes,
                        },
                        events,
                    }));
                }
                Err(AppendError::Full { .. }) => match self.config.full_policy {
                    FullPolicy::Block => {
                        state.counters.blocked += 1;
                        self.warn_rate_limited(
                            state,
                            "disk budget full: the producer is blocked until consumers ack",
                        );
                        break Err(Refusal::Blocked(events));
                    }
                    FullPolicy::DropOldest if attempts < 64 && self.drop_oldest(state) => {
                        attempts += 1
                    }
                    FullPolicy::DropNewest | FullPolicy::DropOldest => {
                        state.counters.dropped_newest += events.len() as u64;
                        state.counters.unwarned_drops += events.len() as u64;
                        self.warn_rate_limited(
                            state,
                            "disk budget full: dropping the newest events",
                        );
                        report.dropped.extend(events);
                        break Ok(());
                    }
                },
                // The filesystem is full (not the budget): the same rule as a full budget, since
                // the log refused the batch whole; space freed by the consumers' acks or from
                // outside is found by the producer's wake-up or its timed retry.
                Err(AppendError::NoSpace {
                    path,
                    needed_bytes,
                    free_bytes,
                }) => match self.config.full_policy {
                    FullPolicy::Block => {
                        state.counters.blocked += 1;
                        state.counters.no_space += 1;
                        if state.counters.no_space.is_power_of_two() {
                            tracing::warn!(
                                path = %path.display(),
                                needed_bytes,
                                free_bytes,
                                refusals = state.counters.no_space,
                                "the filesystem of the spill log is full: the producer is blocked until space frees"
                            );
                        }
                        break Err(Refusal::Blocked(events));
                    }
                    FullPolicy::DropOldest if attempts < 64 && self.drop_oldest(state) => {
                        attempts += 1
                    }
                    FullPolicy::DropNewest | FullPolicy::DropOldest => {
                        state.counters.dropped_newest += events.len() as u64;
                        state.counters.unwarned_drops += events.len() as u64;
                        self.warn_rate_limited(
                            state,
                            "the filesystem of the spill log is full: dropping the newest events",
                        );
                        report.dropped.extend(events);
                        break Ok(());
                    }
                },
                Err(AppendError::RecordTooLarge { len, max, .. }) => {
                    break Err(Refusal::Failed(PushError {
                        reason: PushFailure::EventTooLarge {
                            len,
                            max: u64::from(max),
                        },
                        events,
                    }));
                }
                Err(AppendError::Storage(error)) => {
                    tracing::error!(%error, "spilling to the log failed; the events are handed back");
                    break Err(Refusal::Failed(PushError {
                        reason: PushFailure::Storage(error),
                        events,
                    }));
                }
                Err(other) => {
                    let error = spillway_storage::StorageError::Io {
                        path: Default::default(),
                        source: std::io::Error::other(other.to_string()),
                    };
                    break Err(Refusal::Failed(PushError {
                        reason: PushFailure::Storage(error),
                        events,
                    }));
                }
                Ok(range) => {
                    let count = events.len();
                    state.next_seq += count as u64;
                    state.counters.pushed += count as u64;
                    state.counters.spilled += count as u64;
                    report.to_disk += count;
                    let first_position = events.first().map_or(0, |e| e.position);
                    let last_position = events.last().map_or(0, |e| e.position);
                    state
                        .watermark
                        .on_spill(range.next, first_position, last_position);
                    self.data_ready.notify_waiters();
                    break Ok(());
                }
            }
        };
        drop(records);
        state.scratch = scratch;
        // Keep the scratch from pinning the memory of one huge batch.
        if state.scratch.capacity() > self.config.log.write_buffer_bytes as usize {
            state.scratch = Vec::new();
        }
        outcome
    }

    /// Drops the oldest log file's records for every consumer; false when there is nothing to drop.
    fn drop_oldest(&self, state: &mut State) -> bool {
        let stats = self.log.stats();
        let end = self.log.oldest_file_end_seq();
        if end <= stats.first_seq {
            return false;
        }
        if let Err(error) = self.log.consume_until(end) {
            tracing::error!(%error, "dropping the oldest events failed");
            return false;
        }
        let dropped = end - stats.first_seq;
        state.counters.dropped_oldest += dropped;
        state.counters.unwarned_drops += dropped;
        for (name, cursor) in state.cursors.iter_mut() {
            cursor.skip_dropped(end);
            let (_, log_key) = position_names(name);
            if let Err(error) = self.log.save_position(&log_key, cursor.acked_log_next) {
                tracing::error!(%error, consumer = %name, "saving a consumer position failed");
            }
        }
        self.warn_rate_limited(state, "disk budget full: dropping the oldest events");
        true
    }

    fn warn_rate_limited(&self, state: &mut State, message: &'static str) {
        let now = Instant::now();
        if state
            .counters
            .last_warn
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            let c = &state.counters;
            tracing::warn!(
                dropped_newest_total = c.dropped_newest,
                dropped_oldest_total = c.dropped_oldest,
                dropped_since_last_warning = c.unwarned_drops,
                blocked_pushes_total = c.blocked,
                disk_budget_bytes = self.config.log.disk_budget_bytes,
                "{message}"
            );
            state.counters.last_warn = Some(now);
            state.counters.unwarned_drops = 0;
        }
    }

    fn attach(&self, name: &str) -> Result<(), QueueError> {
        let mut state = self.lock();
        if let Some(cursor) = state.cursors.get_mut(name) {
            if cursor.attached {
                return Err(QueueError::ConsumerBusy(name.to_string()));
            }
            // Resume from the last ack: what was delivered but not acked is delivered again.
            let (seq, log) = (cursor.acked_seq_next, cursor.acked_log_next);
            *cursor = CursorState::at(seq, log);
            cursor.attached = true;
            return Ok(());
        }
        if state.cursors.len() >= self.config.consumers_max as usize {
            return Err(QueueError::TooManyConsumers {
                name: name.to_string(),
                consumers_max: self.config.consumers_max,
            });
        }
        // A new consumer starts at the oldest event still retained.
        let log_first = self.log.stats().first_seq;
        let (seq, log) = state
            .cursors
            .values()
            .map(|c| (c.acked_seq_next, c.acked_log_next))
            .min()
            .unwrap_or_else(|| {
                (
                    state.memory.front().map_or(state.next_seq, |e| e.seq),
                    log_first,
                )
            });
        let mut cursor = CursorState::at(seq, log.max(log_first));
        cursor.attached = true;
        let (seq_key, log_key) = position_names(name);
        self.log.save_position(&seq_key, cursor.acked_seq_next)?;
        self.log.save_position(&log_key, cursor.acked_log_next)?;
        state.cursors.insert(name.to_string(), cursor);
        Ok(())
    }

    fn detach(&self, name: &str) {
        if let Some(cursor) = self.lock().cursors.get_mut(name) {
            cursor.attached = false;
        }
    }

    fn try_read(
        &self,
        name: &str,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<Read>, QueueError> {
        let mut state = self.lock();
        let log_stats = self.log.stats();
        let State {
            cursors,
            memory,
            counters,
            replays,
            ..
        } = &mut *state;
        let cursor = cursors
            .get_mut(name)
            .ok_or_else(|| QueueError::ConsumerBusy(name.to_string()))?;
        if cursor.unacked.len() >= self.config.unacked_stretches_max as usize {
            return Err(QueueError::TooManyUnacked {
                name: name.to_string(),
                unacked: cursor.unacked.len() as u32,
            });
        }
        cursor.skip_dropped(log_stats.first_seq);
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(Some(Read::Events(out)));
        }
        let next_memory = memory.index_from(cursor.seq_next);
        let memory_first = next_memory
            .and_then(|i| memory.get(i))
            .filter(|e| e.log_before <= cursor.log_next);
        if let (Some(start), Some(_)) = (next_memory, memory_first) {
            // Consecutive memory events that no unread log record precedes.
            let log_at = cursor.log_next;
            let mut bytes = 0u64;
            let mut index = start;
            while let Some(entry) = memory.get(index) {
                if entry.log_before > log_at
                    || out.len() >= max_records
                    || (bytes >= max_bytes && !out.is_empty())
                {
                    break;
                }
                if out
                    .last()
                    .is_some_and(|d: &Delivery| d.seq + 1 != entry.seq)
                {
                    break;
                }
                bytes += entry.payload.len() as u64;
                out.push(Delivery {
                    seq: entry.seq,
                    position: entry.position,
                    pushed_at_us: entry.pushed_at_us,
                    payload: entry.payload.clone(),
                });
                index += 1;
            }
            let (first, next) = (out[0].seq, out[out.len() - 1].seq + 1);
            cursor.delivered(Stretch {
                seq_first: first,
                seq_next: next,
                origin: Origin::Memory { log_at },
            });
            cursor.seq_next = next;
            cursor.last_position = out.last().map(|d| d.position);
        } else {
            // Log records before the next memory event, if any; superseded ones are skipped,
            // so keep reading until something is delivered or the stretch ends.
            let log_end = next_memory
                .and_then(|i| memory.get(i))
                .map_or(log_stats.next_seq, |e| e.log_before);
            let mut gap = None;
            while out.is_empty() && cursor.log_next < log_end {
                let take = (max_records as u64).min(log_end - cursor.log_next) as usize;
                let batch = self.log.read(cursor.log_next, take, max_bytes)?;
                if let Some(lost) = batch.lost() {
                    gap = Some(lost.clone());
                    break;
                }
                let mut stopped_at = None;
                for (log_seq, record) in batch.iter() {
                    let Some(envelope::Envelope {
                        seq,
                        position,
                        pushed_at_us,
                        payload,
                    }) = envelope::decode(record)
                    else {
                        // A record that passed its checksums but is no queue event: lost like
                        // a damaged one, reported where it stands (after what was read so far).
                        stopped_at = Some(log_seq);
                        if out.is_empty() {
                            gap = Some(spillway_storage::LostRange {
                                seqs: spillway_storage::SeqRange {
                                    first: log_seq,
                                    next: log_seq + 1,
                                },
                                location: format!("log record {log_seq}"),
                                offset: 0,
                                reason: "shorter than a queue event envelope".into(),
                            });
                        }
                        break;
                    };
                    if replays.iter().any(|r| r.supersedes(log_seq, position)) {
                        counters.superseded += 1;
                        continue;
                    }
                    if seq < cursor.seq_next
                        && cursor.seq_next > 0
                        && out.is_empty()
                        && cursor.unacked.back().is_some_and(|s| s.seq_next > seq)
                    {
                        return Err(QueueError::BadEnvelope {
                            log_seq,
                            reason: "sequence numbers out of order",
                        });
                    }
                    // Dense seqs merge into one stretch; a gap (skipped, or lost before a restart) starts another.
                    cursor.delivered(Stretch {
                        seq_first: seq,
                        seq_next: seq + 1,
                        origin: Origin::Disk { log_first: log_seq },
                    });
                    cursor.seq_next = seq + 1;
                    cursor.last_position = Some(position);
                    out.push(Delivery {
                        seq,
                        position,
                        pushed_at_us,
                        payload,
                    });
                }
                cursor.log_next = stopped_at.unwrap_or(batch.next_seq());
                if stopped_at.is_some() {
                    break;
                }
            }
            counters.read_back += out.len() as u64;
            if let Some(damage) = gap {
                let next_memory_position =
                    next_memory.and_then(|i| memory.get(i)).map(|e| e.position);
                let found = self.lost_range(
                    cursor,
                    replays,
                    damage,
                    log_stats.first_seq,
                    log_end,
                    next_memory_position,
                )?;
                return Ok(match found {
                    GapFound::Lost(lost) => Some({
                        counters.lost += lost.log_records;
                        cursor.log_next = lost.log_next;
                        tracing::warn!(
                            log_first = lost.log_first,
                            log_next = lost.log_next,
                            after_position = ?lost.after_position,
                            before_position = ?lost.before_position,
                            location = %lost.location,
                            offset = lost.offset,
                            reason = %lost.reason,
                            "events in the spill log are lost (damaged or missing)"
                        );
                        Read::Lost(lost)
                    }),
                    GapFound::Superseded { log_next, records } => {
                        counters.superseded += records;
                        cursor.log_next = log_next;
                        // Progress without events: the caller reads again at once.
                        Some(Read::Events(Vec::new()))
                    }
                    GapFound::NotYetBounded => None,
                });
            }
        }
        counters.delivered += out.len() as u64;
        if let Some(last) = out.last() {
            cursor.newest_delivered_pushed_us = Some(last.pushed_at_us);
        }
        self.maybe_stop_spilling(&mut state);
        Ok((!out.is_empty()).then_some(Read::Events(out)))
    }

    /// Bounds a damaged range a consumer met with the source positions around it.
    fn lost_range(
        &self,
        cursor: &CursorState,
        replays: &[ReplayRule],
        damage: spillway_storage::LostRange,
        log_first: u64,
        log_end: u64,
        next_memory_position: Option<u64>,
    ) -> Result<GapFound, QueueError> {
        let after_position = match cursor.last_position {
            Some(position) => Some(position),
            None if damage.seqs.first > log_first => self.position_at(damage.seqs.first - 1)?,
            None => None,
        };
        // The next intact record bounds the range; damage right after it joins the range.
        let mut log_next = damage.seqs.next;
        let mut before_position = None;
        for _ in 0..GAP_MERGES_MAX {
            if log_next >= log_end {
                before_position = next_memory_position;
                break;
            }
            let batch = self.log.read(log_next, 1, 0)?;
            if let Some(more) = batch.lost() {
                log_next = more.seqs.next;
                continue;
            }
            before_position = batch.get(0).and_then(envelope::decode).map(|e| e.position);
            break;
        }
        // A replay that began after these records were stored resends everything above its
        // checkpoint: what lies above it is not lost, and the rest lies below checkpoint + 1.
        let covering = replays
            .iter()
            .filter(|r| damage.seqs.first < r.seq_end && log_next <= r.seq_end)
            .min_by_key(|r| r.position);
        if let Some(rule) = covering {
            if after_position.is_some_and(|after| after >= rule.position) {
                return Ok(GapFound::Superseded {
                    log_next,
                    records: log_next - damage.seqs.first,
                });
            }
            let cap = rule.position + 1;
            before_position = Some(before_position.map_or(cap, |b| b.min(cap)));
        }
        if after_position.is_some() && before_position.is_none() {
            // The range reaches the log's end: its upper bound is the next event pushed.
            return Ok(GapFound::NotYetBounded);
        }
        Ok(GapFound::Lost(LostEvents {
            log_records: log_next - damage.seqs.first,
            log_first: damage.seqs.first,
            log_next,
            after_position,
            before_position,
            location: damage.location,
            offset: damage.offset,
            reason: damage.reason,
        }))
    }

    /// The source position of the log record `log_seq`, if it is intact.
    fn position_at(&self, log_seq: u64) -> Result<Option<u64>, QueueError> {
        let batch = self.log.read(log_seq, 1, 0)?;
        if batch.lost().is_some() {
            return Ok(None);
        }
        Ok(batch.get(0).and_then(envelope::decode).map(|e| e.position))
    }

    /// Moves a consumer's durable position past a lost range once nothing before it is unacked.
    fn ack_lost(&self, name: &str, lost: &LostEvents) -> Result<(), QueueError> {
        let mut state = self.lock();
        let cursor = state
            .cursors
            .get_mut(name)
            .ok_or_else(|| QueueError::ConsumerBusy(name.to_string()))?;
        // With stretches unacked, their acks carry the position past the range later.
        if !cursor.unacked.is_empty()
            || cursor.acked_log_next < lost.log_first
            || cursor.acked_log_next >= lost.log_next
        {
            return Ok(());
        }
        cursor.acked_log_next = lost.log_next;
        let (_, log_key) = position_names(name);
        self.log.save_position(&log_key, lost.log_next)?;
        self.release(&mut state)
    }

    /// Memory takes new events again once every consumer has read the log to its end.
    fn maybe_stop_spilling(&self, state: &mut State) {
        if !state.spilling
            || self.config.spill_mode == SpillMode::WriteThrough
            || state.cursors.is_empty()
        {
            return;
        }
        let end = self.log.stats().next_seq;
        if state.cursors.values().all(|c| c.log_next >= end) {
            tracing::info!("disk backlog drained; new events stay in memory again");
            state.spilling = false;
        }
    }

    fn ack(&self, name: &str, seq: u64) -> Result<(), QueueError> {
        let mut state = self.lock();
        let cursor = state
            .cursors
            .get_mut(name)
            .ok_or_else(|| QueueError::ConsumerBusy(name.to_string()))?;
        if seq >= cursor.seq_next {
            return Err(QueueError::AckBeyondDelivered {
                name: name.to_string(),
                seq,
                delivered_next: cursor.seq_next,
            });
        }
        if !cursor.ack(seq) {
            return Ok(());
        }
        let (acked_seq, acked_log) = (cursor.acked_seq_next, cursor.acked_log_next);
        let (seq_key, log_key) = position_names(name);
        // Seq first: a crash between the two leaves an older log position, so more is redelivered, never less.
        self.log.save_position(&seq_key, acked_seq)?;
        self.log.save_position(&log_key, acked_log)?;
        self.release(&mut state)
    }

    /// Frees memory events and log records every consumer has acked.
    fn release(&self, state: &mut State) -> Result<(), QueueError> {
        let Some(min_seq) = state.cursors.values().map(|c| c.acked_seq_next).min() else {
            return Ok(());
        };
        let min_log = state
            .cursors
            .values()
            .map(|c| c.acked_log_next)
            .min()
            .unwrap_or(0);
        state.memory.release_below(min_seq);
        self.log.consume_until(min_log)?;
        self.space_freed.notify_waiters();
        Ok(())
    }
}

/// Lost ranges that join into one report at most, so a scan past damage stays bounded.
const GAP_MERGES_MAX: usize = 64;

/// What bounding a damaged range found.
enum GapFound {
    /// Lost events, bounded.
    Lost(LostEvents),
    /// Every record of the range comes again with a source replay.
    Superseded { log_next: u64, records: u64 },
    /// The range reaches the log's end and the next event is not pushed yet.
    NotYetBounded,
}

/// A named consumer's handle: reads batches and acks them.
pub struct Consumer {
    core: Arc<Core>,
    name: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .finish()
    }
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for events and returns at most `max_records` of them and about `max_bytes`
    /// (at least one event, so a large event never stalls the consumer).
    ///
    /// A lost range of the backlog (damaged or missing records) is logged, counted in
    /// [`QueueStats::lost_events_total`] and skipped; use [`Consumer::next_read`] to
    /// see it in place and fetch its events again from their source.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes delivers nothing.
    ///
    /// # Errors
    /// A storage error reading the backlog, or too many unacked stretches.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        loop {
            match self.next_read(max_records, max_bytes).await? {
                Read::Events(events) => return Ok(events),
                Read::Lost(lost) => self.ack_lost(&lost)?,
            }
        }
    }

    /// Waits for events, or for a lost range of the backlog met where its records stood.
    ///
    /// Returns [`Read::Events`] with at least one event (none only when `max_records` is
    /// 0), or [`Read::Lost`]: the events after the range come with the next read. After
    /// writing whatever of the range it could fetch again, call [`Consumer::ack_lost`].
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes delivers nothing.
    ///
    /// # Errors
    /// A storage error reading the backlog, or too many unacked stretches.
    pub async fn next_read(
        &mut self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Read, QueueError> {
        loop {
            let ready = self.core.data_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let read = if self.core.read_may_touch_disk(&self.name) {
                blocking(|| self.core.try_read(&self.name, max_records, max_bytes))?
            } else {
                self.core.try_read(&self.name, max_records, max_bytes)?
            };
            match read {
                None => ready.await,
                // A superseded range moved the cursor without events: read on.
                Some(Read::Events(events)) if events.is_empty() && max_records > 0 => {}
                Some(read) => return Ok(read),
            }
        }
    }

    /// Like [`Consumer::next_batch`] but returns an empty batch at once when nothing is ready.
    pub fn try_next_batch(
        &mut self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<Delivery>, QueueError> {
        for _ in 0..GAP_MERGES_MAX {
            match blocking(|| self.core.try_read(&self.name, max_records, max_bytes))? {
                None => return Ok(Vec::new()),
                Some(Read::Events(events)) if events.is_empty() && max_records > 0 => {}
                Some(Read::Events(events)) => return Ok(events),
                Some(Read::Lost(lost)) => self.ack_lost(&lost)?,
            }
        }
        Ok(Vec::new())
    }

    /// Declares a lost range dealt with (fetched again and written, or given up): the
    /// consumer's durable position moves past it once nothing before it is unacked, so
    /// a restart does not report it again.
    ///
    /// # Errors
    /// A storage error saving the position.
    pub fn ack_lost(&self, lost: &LostEvents) -> Result<(), QueueError> {
        blocking(|| self.core.ack_lost(&self.name, lost))
    }

    /// Acknowledges every delivered event with `seq <= up_to_seq`; durable per the log's durability.
    ///
    /// # Errors
    /// [`QueueError::AckBeyondDelivered`], or a storage error saving the position.
    pub fn ack(&self, up_to_seq: u64) -> Result<(), QueueError> {
        blocking(|| self.core.ack(&self.name, up_to_seq))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.core.detach(&self.name);
    }
}
