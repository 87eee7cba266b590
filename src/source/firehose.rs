//! The relay client: connect, resume from the durable cursor, read at full speed into the
//! queue, reconnect with bounded backoff, ping, and detect a silent connection.
//!
//! The read loop never waits for a sink: a push waits only when the disk budget is
//! full under the `block` policy (the queue logs it). The cursor saved for a restart
//! is the queue's durable watermark, never ahead of what is durable; within one run a
//! reconnect resumes after the last frame pushed.

use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub use super::cursor::Subscription;
use super::cursor::{CursorFile, RelayId};
use super::frame::{self, Frame};
use crate::queue::{Event, SpillQueue};

/// The relay client's settings, every bound explicit.
#[derive(Debug, Clone)]
pub struct FirehoseConfig {
    /// `wss://HOST/xrpc/com.atproto.sync.subscribeRepos` (or `ws://` on loopback).
    pub url: String,
    /// Start here instead of the saved cursor (`None`: the saved cursor, else live).
    pub start_cursor: Option<u64>,
    /// Largest frame accepted, in bytes; a larger one is dropped, counted and logged.
    pub frame_bytes_max: usize,
    /// The WebSocket's read buffer, in bytes: each socket read fills at most this much,
    /// and received frames are slices of it, handed to the queue without a copy.
    pub read_buffer_bytes: usize,
    /// Frames gathered into one push at most (only those already received: no waiting).
    pub push_batch_frames_max: usize,
    /// First reconnect delay, doubled per failure up to the max, with jitter.
    pub reconnect_delay_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_delay_max_ms: u64,
    /// Interval between pings.
    pub ping_interval_ms: u64,
    /// A connection silent this long is dropped and reconnected.
    pub idle_timeout_ms: u64,
    /// Interval between saves of the durable cursor.
    pub cursor_save_interval_ms: u64,
    /// Frames this filter does not want are counted and never enter the queue.
    pub filter: crate::decode::Filter,
    /// What the endpoint streams: repo events from a relay, or labels from a labeler.
    pub subscription: Subscription,
    /// Where to start with no saved cursor and no `start_cursor` (`None`: live).
    pub initial_cursor: Option<u64>,
}

impl FirehoseConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        FirehoseConfig {
            url: url.into(),
            start_cursor: None,
            frame_bytes_max: 4 * 1024 * 1024,
            read_buffer_bytes: READ_BUFFER_BYTES_DEFAULT,
            filter: crate::decode::Filter::default(),
            push_batch_frames_max: 256,
            reconnect_delay_min_ms: 250,
            reconnect_delay_max_ms: 30_000,
            ping_interval_ms: 15_000,
            idle_timeout_ms: 60_000,
            cursor_save_interval_ms: 250,
            subscription: Subscription::Repos,
            initial_cursor: None,
        }
    }

    /// The relay as logs and metrics name it: `host[:port]`, plus the path when it is
    /// not the standard one (see [`RelayId::label`]).
    pub fn host(&self) -> String {
        self.relay_id().label()
    }

    /// The relay as the data directory tells it apart from others.
    pub fn relay_id(&self) -> RelayId {
        RelayId::of_subscription_url(&self.url, self.subscription)
    }
}

pub use super::SourceStats;

/// The default WebSocket read buffer: tungstenite's own default. Frames are copied out of
/// it into allocations of their own size (see `own_allocation`), so it is reused in place.
pub const READ_BUFFER_BYTES_DEFAULT: usize = 128 * 1024;

/// The frame in an allocation of its own size. tungstenite hands each frame over as a
/// slice of its read buffer, and a slice keeps that whole buffer alive. The memory tier
/// would copy such a slice anyway (`queue::memory::held_payload`), but copying every
/// frame here, spilled ones too, lets tungstenite reuse its buffer in place instead of
/// allocating and zero-filling a new 128 KiB one every few frames: the source's share of
/// the CPU profile was 21.8% this way against 26.9% copying only what memory keeps.
fn own_allocation(frame: &Bytes) -> Bytes {
    Bytes::copy_from_slice(frame)
}

/// Its lines of `spillway run --help`: the keys of the relay firehose source.
pub const CONFIG_HELP: &str = "  relays = [\"wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos\"]   one source + queue each
  start_cursor = <seq>                  resume here instead of the saved cursor (default: saved, else live)
";

/// Checks the `relays` key: each a `ws://` or `wss://` URL, no two sharing a queue
/// directory (each relay owns one, and a cursor file, named after it). None is fine here
/// when another source runs (a labeler alone): the configuration asks for at least one source.
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_relays(urls: &[String]) -> Result<(), (&'static str, String)> {
    let mut names = std::collections::BTreeMap::new();
    for url in urls {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(("relays", format!("{url:?} is not a ws:// or wss:// URL")));
        }
        let name = RelayId::of_url(url).file_name();
        if let Some(other) = names.insert(name.clone(), url) {
            return Err((
                "relays",
                format!("{other:?} and {url:?} would share the queue directory queue-{name}"),
            ));
        }
    }
    Ok(())
}

pub use super::SourceError;

enum Disconnect {
    /// Reconnect after a backoff.
    Retry(String),
    /// Stop: shutdown requested.
    Shutdown,
}

/// Where the source resumes, settled before any task starts: `start_cursor`, else the
/// cursor file, else the queue's own record of the source position (the cursor file was
/// lost: warned), else `initial_cursor` (`None`: live).
///
/// With a resume point, the queue is told of the replay here ([`SpillQueue::begin_replay`]),
/// so no consumer can read stored events above it ahead of the replayed ones, whenever
/// the source's task first runs or connects. The point is saved to the cursor file before
/// the first connection: a crash before the first periodic save resumes here, not live.
///
/// # Errors
/// An unreadable or malformed cursor file, or a storage error.
pub fn resume_point(
    config: &FirehoseConfig,
    queue: &SpillQueue,
    cursor_file: &CursorFile,
) -> Result<Option<u64>, SourceError> {
    let host = config.host();
    let saved = cursor_file.load()?;
    let kept = queue
        .source_position()
        .map_err(|source| SourceError::Queue {
            host: host.clone(),
            doing: "reading its source position",
            source,
        })?;
    let cursor = match (config.start_cursor, saved, kept) {
        (Some(start), _, _) => Some(start),
        (None, Some(saved), _) => Some(saved),
        (None, None, Some(kept)) => {
            tracing::warn!(
                host = %host,
                missing = %cursor_file.path().display(),
                position = kept,
                "the relay cursor file is missing but the queue recorded the source position; resuming from it (start_cursor overrides)"
            );
            Some(kept)
        }
        (None, None, None) => config.initial_cursor,
    };
    if let Some(c) = cursor {
        // Events above the checkpoint that survived in the log come again from the relay.
        queue.begin_replay(c).map_err(|source| SourceError::Queue {
            host: host.clone(),
            doing: "the replay",
            source,
        })?;
        if saved != Some(c) {
            cursor_file.save(c)?;
        }
    }
    Ok(cursor)
}

/// Runs the source from `cursor` (see [`resume_point`]) until `shutdown` turns true or a
/// fatal error.
///
/// # Errors
/// [`SourceError`] for conditions retrying cannot fix.
pub async fn run(
    config: FirehoseConfig,
    queue: SpillQueue,
    cursor_file: CursorFile,
    mut cursor: Option<u64>,
    stats: Arc<SourceStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let host = config.host();
    let peer = config.subscription.peer();
    tracing::info!(host = %host, peer, cursor = ?cursor, "event stream source starting");
    let mut failures = 0u32;
    let mut last_save = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let url = match cursor {
            Some(c) => format!("{}?cursor={c}", config.url),
            None => config.url.clone(),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_bytes)
            // A little above our own limit, so an oversized frame is read, named and dropped
            // rather than looping on a connection error.
            .max_message_size(Some(config.frame_bytes_max.saturating_mul(2)))
            .max_frame_size(Some(config.frame_bytes_max.saturating_mul(2)));
        let outcome =
            match tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config), true)
                .await
            {
                Ok((socket, _)) => {
                    stats.connected.store(1, Ordering::Relaxed);
                    tracing::info!(host = %host, peer, cursor = ?cursor, "connected");
                    let outcome = read_loop(
                        &config,
                        &host,
                        socket,
                        &queue,
                        &stats,
                        &mut cursor,
                        &cursor_file,
                        &mut last_save,
                        &mut failures,
                        &mut shutdown,
                    )
                    .await;
                    stats.connected.store(0, Ordering::Relaxed);
                    outcome
                }
                Err(e) => Ok(Disconnect::Retry(format!("connecting: {e}"))),
            };
        let outcome = outcome.map_err(|e| match e {
            SourceError::FutureCursor {
                host,
                cursor,
                message,
                ..
            } => SourceError::FutureCursor {
                host,
                cursor,
                message,
                cursor_file: cursor_file.path().display().to_string(),
            },
            other => other,
        });
        match outcome? {
            Disconnect::Shutdown => break,
            Disconnect::Retry(reason) => {
                failures = failures.saturating_add(1);
                stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
                let delay = backoff(&config, failures);
                tracing::warn!(host = %host, peer, reason = %reason, retry_in_ms = delay.as_millis() as u64, cursor = ?cursor, "connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    save_cursor(&queue, &cursor_file, &host);
    tracing::info!(host = %host, peer, "event stream source stopped");
    Ok(())
}

fn save_cursor(queue: &SpillQueue, file: &CursorFile, host: &str) {
    if let Err(error) = queue.flush() {
        tracing::error!(%error, "flushing the queue before saving the cursor failed");
        return;
    }
    if let Some(watermark) = queue.durable_watermark() {
        // The queue keeps its own copy, so a lost cursor file still resumes here.
        if let Err(error) = queue.save_source_position(watermark) {
            tracing::error!(%error, host, "recording the source position in the queue failed");
        }
        if let Err(error) = file.save(watermark) {
            tracing::error!(%error, "saving the relay cursor failed");
        } else {
            tracing::debug!(host, cursor = watermark, "saved the relay cursor");
        }
    }
}

fn backoff(config: &FirehoseConfig, failures: u32) -> Duration {
    let exp = config
        .reconnect_delay_min_ms
        .saturating_mul(1u64 << failures.min(20).saturating_sub(1));
    let capped = exp.min(config.reconnect_delay_max_ms);
    // Jitter in [capped/2, capped], so many clients do not reconnect in step.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    Duration::from_millis(capped / 2 + nanos % (capped / 2 + 1))
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<S>(
    config: &FirehoseConfig,
    host: &str,
    mut socket: tokio_tungstenite::WebSocketStream<S>,
    queue: &SpillQueue,
    stats: &SourceStats,
    cursor: &mut Option<u64>,
    cursor_file: &CursorFile,
    last_save: &mut Instant,
    failures: &mut u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Disconnect, SourceError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut ping = tokio::time::interval(Duration::from_millis(config.ping_interval_ms));
    ping.tick().await;
    let mut batch: Vec<Event> = Vec::with_capacity(config.push_batch_frames_max);
    loop {
        let message = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = socket.close(None).await;
                return Ok(Disconnect::Shutdown);
            }
            _ = ping.tick() => {
                if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                    return Ok(Disconnect::Retry(format!("ping failed: {e}")));
                }
                continue;
            }
            next = tokio::time::timeout(idle, socket.next()) => match next {
                Err(_) => return Ok(Disconnect::Retry(format!("no message for {} ms", config.idle_timeout_ms))),
                Ok(None) => return Ok(Disconnect::Retry("the relay closed the connection".into())),
                Ok(Some(Err(e))) => return Ok(Disconnect::Retry(format!("reading: {e}"))),
                Ok(Some(Ok(m))) => m,
            },
        };
        // Gather what has already arrived into one push, without waiting for more.
        let mut pending = Some(message);
        while let Some(message) = pending.take() {
            match handle(config, host, message, stats, cursor)? {
                Handled::Event(event) => batch.push(event),
                Handled::Nothing => {}
                Handled::Drop(reason) => {
                    let pushed = flush_batch(queue, host, &mut batch, shutdown).await?;
                    let _ = socket.close(None).await;
                    if !pushed {
                        return Ok(Disconnect::Shutdown);
                    }
                    return Ok(Disconnect::Retry(reason));
                }
            }
            if batch.len() < config.push_batch_frames_max {
                if let Some(Some(Ok(next))) = socket.next().now_or_never() {
                    pending = Some(next);
                }
            }
        }
        if !batch.is_empty() {
            if !flush_batch(queue, host, &mut batch, shutdown).await? {
                let _ = socket.close(None).await;
                return Ok(Disconnect::Shutdown);
            }
            *failures = 0;
        }
        if last_save.elapsed() >= Duration::from_millis(config.cursor_save_interval_ms) {
            save_cursor(queue, cursor_file, host);
            *last_save = Instant::now();
        }
    }
}

/// Pushes the batch; `Ok(false)` when a shutdown came while the push waited for disk space.
///
/// A push waits only while the disk is full under the `block` policy. Giving it up on
/// shutdown loses nothing: none of the batch was enqueued (`push_batch` is cancel-safe
/// there), and the saved cursor, the durable watermark, is below it, so the relay sends
/// it again after the restart.
async fn flush_batch(
    queue: &SpillQueue,
    host: &str,
    batch: &mut Vec<Event>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, SourceError> {
    if batch.is_empty() {
        return Ok(true);
    }
    let events = std::mem::take(batch);
    let pushed = tokio::select! {
        pushed = queue.push_batch(events) => pushed,
        _ = shutdown.changed() => return Ok(false),
    };
    match pushed {
        Ok(report) if report.dropped.is_empty() => Ok(true),
        Ok(report) => {
            // drop_newest: the queue counted and logged them; nothing more to do here.
            tracing::debug!(
                dropped = report.dropped.len(),
                "the queue dropped events under its full policy"
            );
            Ok(true)
        }
        Err(error) => Err(SourceError::Push {
            host: host.to_string(),
            source: error.reason,
        }),
    }
}

/// What the source does with one WebSocket message.
pub(crate) enum Handled {
    /// Push it.
    Event(Event),
    /// Nothing to push (a ping, `#info`, a filtered or duplicate frame).
    Nothing,
    /// Drop the connection, for this reason.
    Drop(String),
}

/// Turns one relay message into an event to push, nothing, or a reason to reconnect.
pub(crate) fn handle(
    config: &FirehoseConfig,
    host: &str,
    message: Message,
    stats: &SourceStats,
    cursor: &mut Option<u64>,
) -> Result<Handled, SourceError> {
    let bytes = match message {
        Message::Binary(bytes) => bytes,
        Message::Close(frame) => {
            return Ok(Handled::Drop(format!(
                "the relay closed the connection: {frame:?}"
            )))
        }
        Message::Text(_) => {
            return Ok(Handled::Drop(
                "the relay sent a text message; expected binary frames".into(),
            ))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(Handled::Nothing),
    };
    if bytes.len() > config.frame_bytes_max {
        stats.oversized_total.fetch_add(1, Ordering::Relaxed);
        let seq = frame::decode(&bytes, usize::MAX).ok().and_then(|f| f.seq());
        tracing::error!(
            host,
            seq,
            len = bytes.len(),
            max = config.frame_bytes_max,
            "dropping a frame over frame_bytes_max; raise the limit to keep such frames"
        );
        return Ok(Handled::Nothing);
    }
    match frame::decode(&bytes, config.frame_bytes_max) {
        Ok(Frame::Error { error, message }) => {
            stats.error_frames_total.fetch_add(1, Ordering::Relaxed);
            let message = message.unwrap_or_default();
            if error == "FutureCursor" {
                tracing::error!(host, peer = config.subscription.peer(), cursor = ?cursor, %message, "the server says our cursor is in its future");
                return Err(SourceError::FutureCursor {
                    host: host.to_string(),
                    cursor: *cursor,
                    message: message.to_string(),
                    cursor_file: String::new(),
                });
            }
            tracing::warn!(host, peer = config.subscription.peer(), %error, %message, "the server sent an error frame");
            Ok(Handled::Drop(format!("error frame {error}: {message}")))
        }
        Ok(Frame::Message {
            kind: "#info",
            info_name,
            ..
        }) => {
            tracing::warn!(host, peer = config.subscription.peer(), name = ?info_name, "the server sent #info (OutdatedCursor: it resumes from its oldest event)");
            Ok(Handled::Nothing)
        }
        Ok(Frame::Message {
            kind, seq, time, ..
        }) => {
            let Some(seq) = seq else {
                stats.decode_errors_total.fetch_add(1, Ordering::Relaxed);
                return Ok(Handled::Drop(format!("a {kind} frame without seq")));
            };
            if !config.subscription.known_types().contains(&kind) {
                stats.unknown_type_total.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host, %kind, seq, "keeping a frame of an unknown type");
            }
            if cursor.is_some_and(|c| seq <= c) {
                // Already pushed (a relay replaying from an older point): skip the duplicate.
                return Ok(Handled::Nothing);
            }
            *cursor = Some(seq);
            // The filter reads the body's ops, not the CAR blocks: cheap enough for the read loop.
            match config.filter.wants_frame(&bytes, config.frame_bytes_max) {
                Ok(true) => {}
                Ok(false) => {
                    stats.filtered_total.fetch_add(1, Ordering::Relaxed);
                    return Ok(Handled::Nothing);
                }
                // The frame passed the structural check above; keeping what the filter
                // cannot judge loses nothing (a decoding sink counts it again).
                Err(e) => {
                    stats.decode_errors_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(host, error = %e, seq, "the filter cannot read this frame's body; keeping it");
                }
            }
            stats.frames_total.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes_total
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            stats.last_seq.store(seq, Ordering::Relaxed);
            if let Some(time_ms) = time.and_then(frame::parse_time_ms) {
                stats.last_event_time_ms.store(time_ms, Ordering::Relaxed);
            }
            Ok(Handled::Event(Event {
                position: seq,
                payload: own_allocation(&bytes),
            }))
        }
        Err(e) => {
            stats.decode_errors_total.fetch_add(1, Ordering::Relaxed);
            tracing::error!(host, peer = config.subscription.peer(), error = %e, after_seq = ?cursor, "invalid frame; dropping the connection and resuming after the last seq pushed");
            Ok(Handled::Drop(format!("invalid frame: {e}")))
        }
    }
}
