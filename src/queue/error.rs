//! The queue's typed errors.

use spillway_storage::{AppendError, ConfigError, OpenError, ReadError, StorageError};

use super::event::Event;

/// A configuration the queue refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueConfigError {
    /// A queue setting is out of range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field of `QueueConfig`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A log setting is out of range.
    #[error("invalid log setting: {0}")]
    Log(#[from] ConfigError),
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] QueueConfigError),
    /// The log could not be opened.
    #[error("opening the spill log: {0}")]
    Open(#[from] OpenError),
    /// The log failed.
    #[error("spill log: {0}")]
    Storage(#[from] StorageError),
    /// Reading the backlog failed (damaged data names its file and offset).
    #[error("reading the backlog: {0}")]
    Read(#[from] ReadError),
    /// A record in the log is not a queue envelope.
    #[error("record {log_seq} in the spill log is not a queue event: {reason}")]
    BadEnvelope {
        /// Its log sequence number.
        log_seq: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The log holds events in another envelope layout than this build's.
    #[error("the spill log holds events in envelope layout {found}; this build reads layout {supported} only: drain it with the build that wrote it, or move the directory aside")]
    EnvelopeVersion {
        /// The layout found.
        found: u64,
        /// The layout this build reads and writes.
        supported: u64,
    },
    /// The consumer name is attached already.
    #[error("consumer {0:?} is attached already")]
    ConsumerBusy(String),
    /// No more consumers may be added.
    #[error("cannot add consumer {name:?}: the limit of {consumers_max} consumers is reached")]
    TooManyConsumers {
        /// The new name.
        name: String,
        /// The configured limit.
        consumers_max: u32,
    },
    /// An ack names a sequence number not delivered to this consumer.
    #[error("consumer {name:?} acked seq {seq}, but only up to {delivered_next} (exclusive) was delivered")]
    AckBeyondDelivered {
        /// The consumer.
        name: String,
        /// The seq acked.
        seq: u64,
        /// One past the last delivered seq.
        delivered_next: u64,
    },
    /// The consumer holds too many unacknowledged stretches.
    #[error("consumer {name:?} holds {unacked} unacknowledged stretches; ack before reading more")]
    TooManyUnacked {
        /// The consumer.
        name: String,
        /// Stretches held.
        unacked: u32,
    },
    /// A task the queue ran beside the caller's (a blocking storage step) failed to finish.
    #[error("the queue's task {task} failed: {source}")]
    Task {
        /// What the task was doing.
        task: &'static str,
        /// Why it did not finish (it panicked or was cancelled).
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A push that was refused; the events are handed back, nothing is lost silently.
#[derive(Debug, thiserror::Error)]
#[error("push of {} events refused: {reason}", events.len())]
pub struct PushError {
    /// Why.
    #[source]
    pub reason: PushFailure,
    /// The events, untouched.
    pub events: Vec<Event>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushFailure {
    /// An event exceeds the largest event the log accepts.
    #[error("an event of {len} bytes exceeds the limit of {max} bytes")]
    EventTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u64,
    },
    /// The batch alone is larger than the whole disk budget; it could never fit.
    #[error(
        "the batch needs {needed_bytes} bytes, more than the whole disk budget of {budget_bytes}"
    )]
    BatchOverBudget {
        /// Encoded size.
        needed_bytes: u64,
        /// `disk_budget_bytes`.
        budget_bytes: u64,
    },
    /// The log failed (a full disk, an I/O error).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The log refused the batch for a reason the queue does not handle by name.
    #[error("the spill log refused the batch: {0}")]
    Append(#[source] AppendError),
}
