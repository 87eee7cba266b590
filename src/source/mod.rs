//! Event sources: where events come from, each with a resumable position.
//!
//! A source is a [`Source`]: it settles where it resumes before any task runs
//! ([`Source::resume_point`], which tells the queue of the replay and saves its own
//! position file), then pushes events into its queue until stopped ([`Source::run`]).
//! A source that can fetch a range of positions again, to repair records the spill log
//! lost, says so with [`Source::refetcher`]; one that cannot returns `None`, and a lost
//! range is then counted as lost for good.
//!
//! Members: the AT Protocol relay firehose ([`firehose_source::FirehoseSource`]), a
//! labeler's label stream ([`labeler::LabelerSource`]) and the `listRepos` repo backfill
//! ([`repo_listing::RepoListingSource`]). A new kind is a
//! new file here, its keys in the configuration, and one line in [`crate::pipeline::kinds`].
//!
//! The traits return boxed futures rather than `async fn`: the kind is chosen at run time
//! from the configuration, so the pipeline holds a `Box<dyn Source>` (and the sink task a
//! `Box<dyn Refetch>`), and `async fn` in a trait is not object safe. The box costs one
//! allocation per call, against a connection or a batch of network reads.

pub mod cursor;
pub mod firehose;
pub mod firehose_source;
pub mod frame;
pub mod labeler;
pub mod refetch;
pub mod relay;
pub mod repo_listing;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::queue::{Event, SpillQueue};
pub use refetch::{RefetchEnd, RefetchError};

/// What a source's events are, which decides how a sink writes them: the stream or
/// subject, the field, the rendering and the cursor value (see [`crate::sink::OutputOptions`]).
///
/// Each new family adds a variant here and its arms in `OutputOptions`'s methods and in
/// the configuration's choice of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EventFamily {
    /// Relay firehose frames (`com.atproto.sync.subscribeRepos`): DAG-CBOR frames, the
    /// position is the relay seq.
    #[default]
    Firehose,
    /// Labeler frames (`com.atproto.label.subscribeLabels`): `#labels` DAG-CBOR frames,
    /// the position is the label seq.
    Labels,
    /// Repos listed by `com.atproto.sync.listRepos` (rsky's `repo_backfill`): rendered
    /// JSON entries, the position is a running ordinal (see [`repo_listing`]).
    RepoListing,
}

impl EventFamily {
    /// Its name as the `source` label of metrics gives it.
    pub fn name(self) -> &'static str {
        match self {
            EventFamily::Firehose => "firehose",
            EventFamily::Labels => "labels",
            EventFamily::RepoListing => "repos",
        }
    }
}

/// A source of events with a resumable position (the position each event carries).
pub trait Source: Send {
    /// The source as logs and metrics name it (`host[:port]` for a relay).
    fn label(&self) -> String;

    /// What its events are (the sink writes each family its own way).
    fn family(&self) -> EventFamily {
        EventFamily::Firehose
    }

    /// A name safe in a file name, unique among the configured sources: the queue
    /// directory is `queue-{name}`.
    fn file_name(&self) -> String;

    /// Where the source resumes, settled before any task runs, so no consumer reads
    /// stored events above it ahead of the replayed ones: the queue is told of the
    /// replay ([`SpillQueue::begin_replay`]) and the point saved before the first read.
    ///
    /// # Errors
    /// An unreadable or malformed position file, or a queue error.
    fn resume_point(&mut self, queue: &SpillQueue) -> Result<Option<u64>, SourceError>;

    /// Reads from `resume` (see [`Source::resume_point`]) into `queue` until `stop`
    /// turns true or a fatal error; the saved position never passes the queue's
    /// durable watermark.
    fn run(
        self: Box<Self>,
        queue: SpillQueue,
        resume: Option<u64>,
        stats: Arc<SourceStats>,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'static, Result<(), SourceError>>;

    /// How to fetch a range of positions again, if this source can.
    fn refetcher(&self) -> Option<Box<dyn Refetch>>;
}

/// Fetches a range of a source's positions again.
pub trait Refetch: Send + Sync {
    /// Starts fetching the events with `after < position < before`.
    ///
    /// # Errors
    /// The source cannot be reached.
    fn fetch(
        &self,
        after: u64,
        before: u64,
    ) -> BoxFuture<'_, Result<Box<dyn RangeBatches>, RefetchError>>;
}

/// One running fetch of a range: [`RangeBatches::next_batch`] until it returns `None`.
pub trait RangeBatches: Send {
    /// The next batch of the range's events in source order; `None` when done.
    ///
    /// # Errors
    /// The source went away or sent what it refuses.
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, RefetchError>>;

    /// How the fetch ended (meaningful once `next_batch` returned `None`).
    fn end(&self) -> RefetchEnd;
}

/// Counters of one source, shared with metrics.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Frames received and pushed.
    pub frames_total: AtomicU64,
    /// Bytes of those frames.
    pub bytes_total: AtomicU64,
    /// Frames with a `t` this build does not know (kept).
    pub unknown_type_total: AtomicU64,
    /// Frames that failed to decode (the connection was dropped).
    pub decode_errors_total: AtomicU64,
    /// Frames over `frame_bytes_max` (dropped).
    pub oversized_total: AtomicU64,
    /// Error frames received.
    pub error_frames_total: AtomicU64,
    /// Reconnections.
    pub reconnects_total: AtomicU64,
    /// The last seq pushed.
    pub last_seq: AtomicU64,
    /// Frames the filter did not want (not pushed).
    pub filtered_total: AtomicU64,
    /// The relay's `time` of the last event pushed that had one, ms since the Unix epoch (0: none yet).
    pub last_event_time_ms: AtomicU64,
    /// 1 while connected.
    pub connected: AtomicU64,
}

/// Why the source stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The relay says our cursor is in its future: retrying would loop. An operator must act.
    #[error("relay {host} answered FutureCursor for cursor {cursor:?}: {message}. Not retrying; check the relay, or start once with start_cursor (SPILLWAY_START_CURSOR) set to a seq the relay holds: {cursor_file} and the queue's own record both hold this cursor")]
    FutureCursor {
        /// The relay.
        host: String,
        /// The cursor sent.
        cursor: Option<u64>,
        /// The relay's message.
        message: String,
        /// The cursor file to remove.
        cursor_file: String,
    },
    /// The cursor file is unreadable, malformed or cannot be written (the error names it).
    #[error(transparent)]
    Cursor(#[from] cursor::CursorFileError),
    /// The queue of `host` refused an operation for good (e.g. a failing disk).
    #[error("the queue of {host} refused {doing}: {source}")]
    Queue {
        /// The relay whose queue it is.
        host: String,
        /// What the source asked of it.
        doing: &'static str,
        /// The queue's error.
        #[source]
        source: crate::queue::QueueError,
    },
    /// The repo listing's position file is unreadable, malformed or cannot be written.
    #[error(transparent)]
    RepoListing(#[from] repo_listing::RepoListingError),
    /// The queue of `host` refused a push for good (e.g. a failing disk).
    #[error("the queue of {host} refused events: {source}")]
    Push {
        /// The relay whose queue it is.
        host: String,
        /// Why (the events themselves are dropped: the relay sends them again).
        #[source]
        source: crate::queue::PushFailure,
    },
}
