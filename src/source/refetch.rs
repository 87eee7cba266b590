//! Fetching a lost range of events again from the relay that sent them.
//!
//! When the spill log loses records (a damaged chunk, a file cut below what was
//! synced), the sink meets the range where it stood, bounded by the source positions
//! of the events on either side. The relay still holds it if it is within the
//! relay's replay window: one more connection with `cursor = after` streams the
//! events from there, and the fetch stops at the first one at or past `before`.
//! A relay that answers `#info OutdatedCursor` resumes from its oldest event: the
//! part below that is outside its window and lost for good.
//!
//! Bounds: the fetch never holds more than one batch (`batch_events_max` frames,
//! `batch_bytes_max` bytes) before handing it to the caller, reads at most
//! `frames_max` frames, and gives up after `timeout_ms` in all.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::firehose::{self, FirehoseConfig, Handled};
use super::frame;
use super::SourceStats;
use crate::queue::Event;

/// Limits of one refetch.
#[derive(Debug, Clone, Copy)]
pub struct RefetchLimits {
    /// Frames handed over in one batch at most.
    pub batch_events_max: usize,
    /// Bytes of frames in one batch at most (one frame may exceed it alone).
    pub batch_bytes_max: u64,
    /// Frames read from the relay at most, whatever their seqs.
    pub frames_max: u64,
    /// The whole fetch, connection included, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RefetchLimits {
    fn default() -> Self {
        RefetchLimits {
            batch_events_max: 500,
            batch_bytes_max: 4 * 1024 * 1024,
            frames_max: 1_000_000,
            timeout_ms: 120_000,
        }
    }
}

/// Why a refetch could not get the whole range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefetchError {
    /// Connecting to the relay failed.
    #[error("refetching seqs {after}..{before} from {url}: connecting: {source}")]
    Connect {
        /// The relay URL (no secrets: relays take none).
        url: String,
        /// Exclusive lower bound.
        after: u64,
        /// Exclusive upper bound.
        before: u64,
        /// The WebSocket error.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// Reading from the relay failed.
    #[error("refetching seqs {after}..{before} from {url}: reading: {source}")]
    Read {
        /// The relay URL.
        url: String,
        /// Exclusive lower bound.
        after: u64,
        /// Exclusive upper bound.
        before: u64,
        /// The WebSocket error.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The relay sent a frame the source refuses for good (e.g. `FutureCursor`).
    #[error("refetching seqs {after}..{before} from {url}: {source}")]
    Refused {
        /// The relay URL.
        url: String,
        /// Exclusive lower bound.
        after: u64,
        /// Exclusive upper bound.
        before: u64,
        /// The source's error.
        #[source]
        source: Box<super::SourceError>,
    },
    /// The relay went away, went silent, or sent something the source refuses.
    #[error("refetching seqs {after}..{before} from {url}: {reason}")]
    Stream {
        /// The relay URL.
        url: String,
        /// Exclusive lower bound.
        after: u64,
        /// Exclusive upper bound.
        before: u64,
        /// What happened.
        reason: String,
    },
}

/// How a finished refetch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefetchEnd {
    /// Every event of the range that the relay has was handed over.
    Complete,
    /// The relay no longer holds the start of the range (`#info OutdatedCursor`): events
    /// below `first_seq` (the first it sent, if any in the range) are outside its window.
    OutsideWindow {
        /// The first seq the relay sent.
        first_seq: Option<u64>,
    },
}

/// One running refetch: call [`RangeFetch::next_batch`] until it returns `None`.
pub struct RangeFetch {
    url: String,
    config: FirehoseConfig,
    limits: RefetchLimits,
    after: u64,
    before: u64,
    socket: Option<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
    deadline: Instant,
    cursor: Option<u64>,
    frames_read: u64,
    outdated: bool,
    first_seq: Option<u64>,
    done: bool,
    stats: SourceStats,
}

impl std::fmt::Debug for RangeFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeFetch")
            .field("url", &self.url)
            .field("after", &self.after)
            .field("before", &self.before)
            .finish_non_exhaustive()
    }
}

impl RangeFetch {
    /// Starts fetching the events with `after < seq < before` from the relay of `config`.
    ///
    /// # Errors
    /// [`RefetchError::Connect`] when the relay cannot be reached.
    pub async fn start(
        config: &FirehoseConfig,
        after: u64,
        before: u64,
        limits: RefetchLimits,
    ) -> Result<Self, RefetchError> {
        let url = format!("{}?cursor={after}", config.url);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.frame_bytes_max.saturating_mul(2)))
            .max_frame_size(Some(config.frame_bytes_max.saturating_mul(2)));
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config), true);
        let connected = tokio::time::timeout(Duration::from_millis(limits.timeout_ms), connect)
            .await
            .map_err(|_| RefetchError::Stream {
                url: config.url.clone(),
                after,
                before,
                reason: format!("no connection within {} ms", limits.timeout_ms),
            })?;
        let (socket, _) = connected.map_err(|source| RefetchError::Connect {
            url: config.url.clone(),
            after,
            before,
            source: Box::new(source),
        })?;
        tracing::info!(relay = %config.url, after, before, "refetching a lost range from the relay");
        Ok(RangeFetch {
            url: config.url.clone(),
            config: config.clone(),
            limits,
            after,
            before,
            socket: Some(socket),
            deadline,
            cursor: Some(after),
            frames_read: 0,
            outdated: false,
            first_seq: None,
            done: false,
            stats: SourceStats::default(),
        })
    }

    fn error(&self, reason: String) -> RefetchError {
        RefetchError::Stream {
            url: self.url.clone(),
            after: self.after,
            before: self.before,
            reason,
        }
    }

    /// The next batch of the range's events, in relay order; `None` when the range is done.
    ///
    /// # Errors
    /// [`RefetchError::Stream`] when the relay disconnects, goes silent past the idle
    /// timeout, sends an invalid frame, or the fetch runs past its limits.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Event>>, RefetchError> {
        if self.done {
            return Ok(None);
        }
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while batch.len() < self.limits.batch_events_max && bytes < self.limits.batch_bytes_max {
            if self.frames_read >= self.limits.frames_max {
                return Err(self.error(format!(
                    "read {} frames without reaching seq {}",
                    self.frames_read, self.before
                )));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.error(format!("not done within {} ms", self.limits.timeout_ms)));
            }
            let Some(socket) = self.socket.as_mut() else {
                break;
            };
            let message = match tokio::time::timeout(idle.min(left), socket.next()).await {
                Err(_) => return Err(self.error("the relay went silent".into())),
                Ok(None) => return Err(self.error("the relay closed the connection".into())),
                Ok(Some(Err(source))) => {
                    return Err(RefetchError::Read {
                        url: self.url.clone(),
                        after: self.after,
                        before: self.before,
                        source: Box::new(source),
                    })
                }
                Ok(Some(Ok(message))) => message,
            };
            self.frames_read += 1;
            if let Message::Binary(bytes) = &message {
                if let Ok(frame::Frame::Message { kind, .. }) =
                    frame::decode(bytes, self.config.frame_bytes_max)
                {
                    if kind == "#info" {
                        self.outdated = true;
                    }
                }
            }
            let handled = firehose::handle(
                &self.config,
                &self.url,
                message,
                &self.stats,
                &mut self.cursor,
            )
            .map_err(|source| RefetchError::Refused {
                url: self.url.clone(),
                after: self.after,
                before: self.before,
                source: Box::new(source),
            })?;
            match handled {
                Handled::Event(event) if event.position >= self.before => {
                    self.finish().await;
                    break;
                }
                Handled::Event(event) => {
                    self.first_seq.get_or_insert(event.position);
                    bytes += event.payload.len() as u64;
                    // Seqs are integers: the one just below `before` is the range's last.
                    let last = event.position + 1 >= self.before;
                    batch.push(event);
                    if last {
                        self.finish().await;
                        break;
                    }
                }
                Handled::Nothing => {
                    // Past `before` without an event in range (filtered): the cursor tells.
                    if self.cursor.is_some_and(|c| c + 1 >= self.before) {
                        self.finish().await;
                        break;
                    }
                }
                Handled::Drop(reason) => return Err(self.error(reason)),
            }
        }
        if batch.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some(batch))
    }

    async fn finish(&mut self) {
        self.done = true;
        if let Some(mut socket) = self.socket.take() {
            let _ = socket.close(None).await;
        }
    }

    /// How the fetch ended (meaningful once [`RangeFetch::next_batch`] returned `None`).
    pub fn end(&self) -> RefetchEnd {
        if self.outdated {
            RefetchEnd::OutsideWindow {
                first_seq: self.first_seq,
            }
        } else {
            RefetchEnd::Complete
        }
    }

    /// Frames the fetch skipped as filtered (the source's filter applies here too).
    pub fn filtered(&self) -> u64 {
        self.stats.filtered_total.load(Ordering::Relaxed)
    }
}

/// The firehose's [`super::Refetch`]: one more connection to the relay per range.
#[derive(Debug, Clone)]
pub struct FirehoseRefetch {
    /// The relay and its limits.
    pub config: FirehoseConfig,
    /// Limits of each fetch.
    pub limits: RefetchLimits,
}

impl super::Refetch for FirehoseRefetch {
    fn fetch(
        &self,
        after: u64,
        before: u64,
    ) -> futures_util::future::BoxFuture<'_, Result<Box<dyn super::RangeBatches>, RefetchError>>
    {
        Box::pin(async move {
            let fetch = RangeFetch::start(&self.config, after, before, self.limits).await?;
            Ok(Box::new(fetch) as Box<dyn super::RangeBatches>)
        })
    }
}

impl super::RangeBatches for RangeFetch {
    fn next_batch(
        &mut self,
    ) -> futures_util::future::BoxFuture<'_, Result<Option<Vec<Event>>, RefetchError>> {
        Box::pin(RangeFetch::next_batch(self))
    }

    fn end(&self) -> RefetchEnd {
        RangeFetch::end(self)
    }
}
