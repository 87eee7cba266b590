//! Sinks: where delivered events go. Each consumes one queue cursor in bounded batches,
//! writes a batch, and only then acks it, so a failed write loses nothing.
//!
//! A sink is a [`Sink`]: it takes a batch and returns once the batch is durable where it
//! goes (then the pipeline acks it), or once stopped first (then it is not acked and comes
//! again after a restart). Members: Redis streams ([`redis::RedisSink`]), NATS JetStream
//! ([`nats::NatsSink`]) and JSON lines ([`jsonl::JsonlSink`]). A new kind is a new file here, its keys in the configuration,
//! its variant of [`SinkError`], and one line in [`crate::pipeline::kinds`].
//!
//! [`Sink::write`] returns a boxed future rather than being an `async fn`: the kind is
//! chosen at run time from the configuration, so the sink task holds a `Box<dyn Sink>`,
//! and `async fn` in a trait is not object safe. The box costs one allocation per batch,
//! against a round trip or a flush.

pub mod jsonl;
pub mod nats;
pub mod redis;
pub mod resp;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

/// A destination of delivered events.
pub trait Sink: Send {
    /// Writes `batch` (waiting out backpressure and retrying what may pass), counting in
    /// `stats`: `Ok(true)` once it is durable at the destination, `Ok(false)` when `stop`
    /// turned true before (the batch is then not acked).
    ///
    /// # Errors
    /// A failure retrying cannot fix.
    fn write<'a>(
        &'a mut self,
        batch: &'a [Delivery],
        stats: &'a SinkStats,
        stop: &'a watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<bool, SinkError>>;
}

/// Why a sink could not be created or failed for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The Redis sink.
    #[error(transparent)]
    Redis(#[from] redis::RedisSinkError),
    /// The JSON-lines sink.
    #[error(transparent)]
    Jsonl(#[from] jsonl::JsonlError),
    /// Any other member of the family, with its own typed error as the source: a new
    /// sink needs no variant here.
    #[error("{kind} sink: {source}")]
    Other {
        /// The sink's kind, as the `sink` key names it.
        kind: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

use std::sync::atomic::{AtomicU64, Ordering};

use crate::decode::{render, Filter, OutputFormat};
use crate::queue::Delivery;
use crate::source::{frame, repo_listing, EventFamily};

/// Counters of one sink, shared with metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events written and acked.
    pub events_total: AtomicU64,
    /// Batches written.
    pub batches_total: AtomicU64,
    /// Write attempts that failed (retried).
    pub failures_total: AtomicU64,
    /// 1 while paused for backpressure (the stream above its high-water mark).
    pub backpressure: AtomicU64,
    /// Milliseconds since the epoch of the first failure of the current outage (0: healthy).
    pub failing_since_ms: AtomicU64,
    /// Frames that did not decode into the output format (logged and skipped).
    pub decode_errors_total: AtomicU64,
    /// Spill-log records met damaged or missing by this sink.
    pub damaged_events_total: AtomicU64,
    /// Events of damaged ranges fetched again from the relay and written.
    pub refetched_events_total: AtomicU64,
    /// Events lost for good because the relay no longer holds them.
    pub lost_outside_window_total: AtomicU64,
    /// Events lost for good because fetching them again failed past its retries.
    pub lost_refetch_failed_total: AtomicU64,
    /// Events lost for good because no source position bounds their range.
    pub lost_position_unknown_total: AtomicU64,
    /// When events were last lost for good, ms since the Unix epoch (0: never since start).
    pub last_loss_ms: AtomicU64,
}

impl SinkStats {
    /// Counts a failed write attempt and marks the outage's start if none is marked.
    pub fn note_failure(&self) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Ends the outage, if any: true when one was marked (the caller says it recovered).
    pub fn note_success(&self) -> bool {
        self.failing_since_ms.swap(0, Ordering::Relaxed) != 0
    }
}

/// What a sink writes: the format, and for decoded formats the filter and the bound on decoding.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// The output format.
    pub format: OutputFormat,
    /// Operations and DIDs to keep (decoded formats).
    pub filter: Filter,
    /// The frame size limit, which bounds decoding.
    pub frame_bytes_max: usize,
    /// What the events are: decides the field, the rendering and the cursor value.
    pub family: EventFamily,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            format: OutputFormat::Raw,
            filter: Filter::default(),
            frame_bytes_max: 4 << 20,
            family: EventFamily::Firehose,
        }
    }
}

impl OutputOptions {
    /// True when events are written as their frames (fields `seq`, `type`, `did`,
    /// `frame`); false when as rendered JSON lines ([`OutputOptions::render_batch`]) in
    /// field [`OutputOptions::entry_field`].
    pub fn writes_raw_frames(&self) -> bool {
        match self.family {
            EventFamily::Firehose => self.format == OutputFormat::Raw,
            EventFamily::Labels => self.format == OutputFormat::Raw,
            EventFamily::RepoListing => false,
        }
    }

    /// The field that holds a rendered JSON line in a stream entry (rsky's names).
    pub fn entry_field(&self) -> &'static str {
        match self.family {
            EventFamily::Firehose => "event",
            // rsky's `label_live` entries.
            EventFamily::Labels => "labels",
            EventFamily::RepoListing => "repo",
        }
    }

    /// The value of the source's cursor key once `batch` is written, or `None` to leave it
    /// as it is (a batch that moves the source's resume point nowhere).
    pub fn cursor_value(&self, batch: &[Delivery]) -> Option<String> {
        match self.family {
            // The source pushes each frame with its relay seq as the position.
            EventFamily::Firehose => batch.last().map(|d| d.position.to_string()),
            // The labeler source pushes each frame with its label seq as the position.
            EventFamily::Labels => batch.last().map(|d| d.position.to_string()),
            // A page's cursor rides on its last repo (or a marker): the key moves past a
            // page only in the batch that writes the page's end.
            EventFamily::RepoListing => batch
                .iter()
                .rev()
                .find_map(|d| repo_listing::cursor_of(&d.payload))
                .map(str::to_string),
        }
    }

    /// True when an event's queue position is its relay seq, so a sink may derive
    /// idempotent IDs from it (`redis_idempotent_ids`); false refuses that option.
    pub fn position_is_seq(&self) -> bool {
        match self.family {
            EventFamily::Firehose => true,
            // The labeler source pushes each frame with its label seq (from 1) as the position.
            EventFamily::Labels => true,
            // A running ordinal of this spillway's listing, not a seq the labeler or relay
            // gave: another run may number the same repos differently.
            EventFamily::RepoListing => false,
        }
    }

    /// Renders a batch in a decoded format into `lines` (cleared first). A frame that does
    /// not decode is logged and counted, and skipped: retrying cannot make it decode.
    pub fn render_batch(&self, batch: &[Delivery], stats: &SinkStats, lines: &mut Vec<String>) {
        lines.clear();
        match self.family {
            EventFamily::Firehose => self.render_firehose(batch, stats, lines),
            EventFamily::Labels => self.render_labels(batch, stats, lines),
            EventFamily::RepoListing => render_repo_listing(batch, stats, lines),
        }
    }

    /// Renders labeler frames as rsky's `LabelStreamEvent` (the one decoded form labels
    /// have: `jetstream` and `rsky` both write it).
    fn render_labels(&self, batch: &[Delivery], stats: &SinkStats, lines: &mut Vec<String>) {
        for delivery in batch {
            match crate::decode::labels::render_rsky(&delivery.payload, self.frame_bytes_max) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => {}
                Err(error) => {
                    stats.decode_errors_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(seq = delivery.position, %error, "skipping a labels frame that does not decode into rsky's entry");
                }
            }
        }
    }

    /// Renders firehose frames in the decoded format (Jetstream or rsky).
    fn render_firehose(&self, batch: &[Delivery], stats: &SinkStats, lines: &mut Vec<String>) {
        for delivery in batch {
            let rendered = render(
                &delivery.payload,
                delivery.pushed_at_us,
                self.format,
                &self.filter,
                self.frame_bytes_max,
                lines,
            );
            if let Err(error) = rendered {
                stats.decode_errors_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(seq = delivery.position, %error, "skipping a frame that does not decode into the output format");
            }
        }
    }
}

/// Copies the listed repos' entries (rendered at listing time); markers write none.
fn render_repo_listing(batch: &[Delivery], stats: &SinkStats, lines: &mut Vec<String>) {
    for delivery in batch {
        match repo_listing::ListingEvent::decode(&delivery.payload) {
            Ok(repo_listing::ListingEvent::Repo { json, .. }) => lines.push(json.to_string()),
            Ok(repo_listing::ListingEvent::Cursor(_)) => {}
            Err(error) => {
                stats.decode_errors_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(position = delivery.position, %error, "skipping a listing event that does not decode");
            }
        }
    }
}

/// The fields every sink writes for an event, read from its frame header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFields {
    /// The relay seq.
    pub seq: u64,
    /// The frame type (`#commit`, ...; `error` for error frames).
    pub kind: String,
    /// `repo`/`did`, empty if absent.
    pub did: String,
}

impl EventFields {
    /// Reads the fields of a delivered frame; a frame that no longer decodes keeps its seq.
    pub fn of(delivery: &Delivery) -> Self {
        Self::of_frame(&delivery.payload, delivery.position)
    }

    /// Reads the fields of a frame; one that does not decode gets `fallback_seq` and type `unknown`.
    pub fn of_frame(payload: &[u8], fallback_seq: u64) -> Self {
        let fields = EventFieldsRef::of_frame(payload, fallback_seq);
        EventFields {
            seq: fields.seq,
            kind: fields.kind.to_string(),
            did: fields.did.to_string(),
        }
    }
}

/// [`EventFields`] borrowed from the frame, for sinks that write them per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFieldsRef<'a> {
    /// The relay seq.
    pub seq: u64,
    /// The frame type (`#commit`, ...; `unknown` for a frame that does not decode).
    pub kind: &'a str,
    /// `repo`/`did`, empty if absent.
    pub did: &'a str,
}

impl<'a> EventFieldsRef<'a> {
    /// The fields of a delivered frame; a frame that no longer decodes keeps its seq.
    pub fn of(delivery: &'a Delivery) -> Self {
        Self::of_frame(&delivery.payload, delivery.position)
    }

    /// The fields of a frame ([`frame::peek`]: only as far as they lie, no allocation). An
    /// error frame or one that does not decode gets `fallback_seq` and type `unknown`.
    pub fn of_frame(payload: &'a [u8], fallback_seq: u64) -> Self {
        match frame::peek(payload) {
            Some(peek) => EventFieldsRef {
                seq: peek.seq.unwrap_or(fallback_seq),
                kind: peek.kind,
                did: peek.did.unwrap_or_default(),
            },
            None => EventFieldsRef {
                seq: fallback_seq,
                kind: "unknown",
                did: "",
            },
        }
    }
}

pub use crate::backoff::{now_ms, retry_delay};
