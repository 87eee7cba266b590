//! Wiring: for each relay, source -> its own queue -> a sink consuming it; and shutdown.
//!
//! On shutdown the sources stop reading and save their cursors, the sinks finish the
//! batch in hand (or leave it unacked), and the queues flush.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::queue::{LostEvents, QueueError, Read, SpillQueue};
use crate::sink::jsonl::{JsonlOptions, JsonlSink, JsonlTarget};
use crate::sink::redis::RedisSink;
use crate::sink::SinkStats;
use crate::source::cursor::CursorFile;
use crate::source::firehose::{self, FirehoseConfig, SourceStats};
use crate::source::refetch::{RangeFetch, RefetchEnd, RefetchLimits};

/// The consumer name sinks read with.
pub const SINK_CONSUMER: &str = "sink";

/// One relay's running parts.
#[derive(Clone)]
pub struct Lane {
    /// The relay host.
    pub host: String,
    /// Its queue.
    pub queue: SpillQueue,
    /// Its source's counters.
    pub source: Arc<SourceStats>,
    /// Its sink's counters.
    pub sink: Arc<SinkStats>,
}

/// Why the pipeline could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A queue failed to open.
    #[error("opening the queue of {host}: {source}")]
    Queue {
        /// The relay host.
        host: String,
        /// Why.
        source: QueueError,
    },
    /// A source stopped for good.
    #[error(transparent)]
    Source(#[from] firehose::SourceError),
    /// The sink failed for good.
    #[error("sink: {0}")]
    Sink(String),
    /// The data directory could not be created or locked.
    #[error("data_dir {}: {source}", path.display())]
    DataDir {
        /// The data directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process runs on the same data directory.
    #[error(transparent)]
    Locked(crate::data_dir_lock::LockError),
    /// `/metrics` and `/health` could not listen.
    #[error("metrics_listen {address}: {source}")]
    MetricsListen {
        /// The address configured.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A started pipeline.
pub struct Pipeline {
    /// Per relay.
    pub lanes: Vec<Lane>,
    /// Where `/metrics` and `/health` listen, if they do.
    pub metrics_addr: Option<std::net::SocketAddr>,
    tasks: tokio::task::JoinSet<Result<(), PipelineError>>,
    stop: watch::Sender<bool>,
    /// Held while the pipeline lives: one process per data directory.
    _lock: crate::data_dir_lock::DataDirLock,
}

impl Pipeline {
    /// Opens the queues and starts a source and a sink task per relay.
    ///
    /// # Errors
    /// A queue that cannot open, or a sink that cannot be created.
    pub fn start(config: &Config, sink_events_per_sec_max: u64) -> Result<Self, PipelineError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut lanes = Vec::new();
        let lock = lock_data_dir(&config.data_dir)?;
        for index in 0..config.relays.len() {
            let firehose = config.firehose_config(index);
            let host = firehose.host();
            let relay = firehose.relay_id();
            let dir = config.data_dir.join(format!("queue-{}", relay.file_name()));
            let queue = SpillQueue::open(&dir, config.queue_config(index)).map_err(|source| {
                PipelineError::Queue {
                    host: host.clone(),
                    source,
                }
            })?;
            let source_stats = Arc::new(SourceStats::default());
            let sink_stats = Arc::new(SinkStats::default());
            let cursor_file = CursorFile::for_relay(&config.data_dir, &relay);
            // Settled before any task runs: the sink never reads stored events ahead of the replay.
            let cursor = firehose::resume_point(&firehose, &queue, &cursor_file)?;
            {
                let (queue, stats, stopped) =
                    (queue.clone(), Arc::clone(&source_stats), stopped.clone());
                let span = tracing::info_span!("source", relay = %host);
                tasks.spawn(
                    async move {
                        firehose::run(firehose, queue, cursor_file, cursor, stats, stopped)
                            .await
                            .map_err(PipelineError::from)
                    }
                    .instrument(span),
                );
            }
            let mut consumer =
                queue
                    .consumer(SINK_CONSUMER)
                    .map_err(|source| PipelineError::Queue {
                        host: host.clone(),
                        source,
                    })?;
            let (batch_events, batch_bytes) = (
                config.sink_batch_events_max as usize,
                config.sink_batch_bytes_max,
            );
            let (stats, mut stopped) = (Arc::clone(&sink_stats), stopped.clone());
            let refetch_source = config.firehose_config(index);
            let mut sink = if config.sink == "redis" {
                AnySink::Redis(Box::new(
                    RedisSink::new(config.redis_config(), &host)
                        .map_err(|e| PipelineError::Sink(e.to_string()))?,
                ))
            } else {
                let target = if config.jsonl_path == "-" {
                    JsonlTarget::Stdout
                } else {
                    JsonlTarget::File(config.jsonl_path.clone().into())
                };
                AnySink::Jsonl(
                    JsonlSink::open(
                        &target,
                        JsonlOptions {
                            output: config.output_options(),
                            events_per_sec_max: sink_events_per_sec_max,
                        },
                    )
                    .map_err(|e| PipelineError::Sink(format!("opening {target:?}: {e}")))?,
                )
            };
            let span = tracing::info_span!("sink", relay = %host, kind = %config.sink);
            tasks.spawn(
                async move {
                    loop {
                        let read = tokio::select! {
                            b = consumer.next_read(batch_events, batch_bytes) => b.map_err(|e| PipelineError::Sink(e.to_string()))?,
                            _ = stopped.changed() => return Ok(()),
                        };
                        let batch = match read {
                            Read::Events(batch) => batch,
                            Read::Lost(lost) => {
                                if !repair_lost(&lost, &refetch_source, &mut sink, &stats, &stopped).await? {
                                    return Ok(());
                                }
                                consumer
                                    .ack_lost(&lost)
                                    .map_err(|e| PipelineError::Sink(format!("acking a lost range: {e}")))?;
                                continue;
                            }
                        };
                        if !sink.write(&batch, &stats, &stopped).await? {
                            return Ok(());
                        }
                        ack(&consumer, &batch, &stats)?;
                    }
                }
                .instrument(span),
            );
            lanes.push(Lane {
                host,
                queue,
                source: source_stats,
                sink: sink_stats,
            });
        }
        let metrics_addr = if config.metrics_listen.is_empty() {
            None
        } else {
            let bound = std::net::TcpListener::bind(&config.metrics_listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| PipelineError::MetricsListen {
                    address: config.metrics_listen.clone(),
                    source,
                })?;
            let addr = bound.local_addr().ok();
            tracing::info!(address = ?addr, "serving /metrics and /health");
            tokio::spawn(crate::metrics::serve(
                bound,
                Arc::new(lanes.clone()),
                config.health_rules(),
                stopped.clone(),
            ));
            addr
        };
        Ok(Pipeline {
            lanes,
            metrics_addr,
            tasks,
            stop,
            _lock: lock,
        })
    }

    /// A handle that stops the pipeline from elsewhere (a signal handler, a timer).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Waits for the first task to end with an error, or for all of them after a stop.
    pub async fn join(mut self) -> Result<(), PipelineError> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined
                .map_err(|e| PipelineError::Sink(format!("a task panicked: {e}")))
                .and_then(|r| r);
            if let Err(error) = result {
                tracing::error!(%error, "pipeline task failed; stopping the others");
                let _ = self.stop.send(true);
                first_error.get_or_insert(error);
            }
        }
        for lane in &self.lanes {
            if let Err(error) = lane.queue.flush() {
                tracing::error!(%error, host = %lane.host, "flushing the queue on shutdown failed");
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Creates the data directory and takes its lock (one process per directory).
fn lock_data_dir(
    dir: &std::path::Path,
) -> Result<crate::data_dir_lock::DataDirLock, PipelineError> {
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    crate::data_dir_lock::DataDirLock::acquire(dir).map_err(|error| match error {
        crate::data_dir_lock::LockError::Io { path, source, .. } => {
            PipelineError::DataDir { path, source }
        }
        held => PipelineError::Locked(held),
    })
}

fn ack(
    consumer: &crate::queue::Consumer,
    batch: &[crate::queue::Delivery],
    stats: &SinkStats,
) -> Result<(), PipelineError> {
    if let Some(last) = batch.last() {
        consumer
            .ack(last.seq)
            .map_err(|e| PipelineError::Sink(format!("acking: {e}")))?;
        stats
            .events_total
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.batches_total.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The sink a lane writes to.
enum AnySink {
    Redis(Box<RedisSink>),
    Jsonl(JsonlSink),
}

impl AnySink {
    /// Writes a batch; `Ok(false)` when stopped before it was written (it is then not acked).
    async fn write(
        &mut self,
        batch: &[crate::queue::Delivery],
        stats: &SinkStats,
        stopped: &watch::Receiver<bool>,
    ) -> Result<bool, PipelineError> {
        match self {
            AnySink::Redis(sink) => Ok(sink.write(batch, stats, stopped).await),
            AnySink::Jsonl(sink) => sink
                .write(batch, stats)
                .await
                .map(|()| true)
                .map_err(|e| PipelineError::Sink(format!("writing JSON lines: {e}"))),
        }
    }
}

/// Fetches from the relay the attempts at one lost range at most, with backoff in between.
const REFETCH_ATTEMPTS_MAX: u32 = 5;
/// First delay between refetch attempts, doubled per failure.
const REFETCH_RETRY_MS: u64 = 1_000;

/// Writes what the relay still holds of a lost range, in its place; counts the rest as lost.
///
/// Returns `Ok(false)` when stopped before it finished (the range is then reported again
/// after a restart, since it is not acked).
async fn repair_lost(
    lost: &LostEvents,
    source: &FirehoseConfig,
    sink: &mut AnySink,
    stats: &SinkStats,
    stopped: &watch::Receiver<bool>,
) -> Result<bool, PipelineError> {
    stats
        .damaged_events_total
        .fetch_add(lost.log_records, Ordering::Relaxed);
    let lose = |counter: &std::sync::atomic::AtomicU64, events: u64, why: &str| {
        counter.fetch_add(events, Ordering::Relaxed);
        stats
            .last_loss_ms
            .store(crate::sink::now_ms(), Ordering::Relaxed);
        tracing::error!(
            log_first = lost.log_first,
            log_next = lost.log_next,
            after_position = ?lost.after_position,
            before_position = ?lost.before_position,
            location = %lost.location,
            offset = lost.offset,
            events,
            "events lost for good: {why}"
        );
    };
    let Some((after, before)) = lost.refetchable() else {
        lose(
            &stats.lost_position_unknown_total,
            lost.log_records,
            "no source position bounds the damaged range, so it cannot be fetched again",
        );
        return Ok(true);
    };
    let mut written = 0u64;
    // A retry resumes after the last event written, so nothing is written twice.
    let mut resume_after = after;
    let mut failures = 0u32;
    loop {
        let outcome = refetch_into(
            source,
            before,
            sink,
            stats,
            stopped,
            &mut resume_after,
            &mut written,
        )
        .await;
        match outcome {
            Ok(None) => return Ok(false),
            Ok(Some(RefetchEnd::Complete)) => {
                tracing::info!(
                    after,
                    before,
                    refetched = written,
                    log_records = lost.log_records,
                    "a lost range was fetched again from the relay and written in its place"
                );
                return Ok(true);
            }
            Ok(Some(RefetchEnd::OutsideWindow { first_seq })) => {
                let missing = lost.log_records.saturating_sub(written).max(1);
                lose(
                    &stats.lost_outside_window_total,
                    missing,
                    &format!(
                        "the relay no longer holds seqs {after}..{} (it resumed at {first_seq:?})",
                        first_seq.unwrap_or(before)
                    ),
                );
                return Ok(true);
            }
            Err(error) => {
                failures += 1;
                if failures >= REFETCH_ATTEMPTS_MAX {
                    let missing = lost.log_records.saturating_sub(written).max(1);
                    lose(
                        &stats.lost_refetch_failed_total,
                        missing,
                        &format!("fetching the range again failed {failures} times; last: {error}"),
                    );
                    return Ok(true);
                }
                let delay = std::time::Duration::from_millis(REFETCH_RETRY_MS << (failures - 1));
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "refetching a lost range failed; retrying");
                let mut stopped = stopped.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.changed() => return Ok(false),
                }
            }
        }
    }
}

/// One refetch attempt from `resume_after` (moved past every event written); `Ok(None)` when stopped.
async fn refetch_into(
    source: &FirehoseConfig,
    before: u64,
    sink: &mut AnySink,
    stats: &SinkStats,
    stopped: &watch::Receiver<bool>,
    resume_after: &mut u64,
    written: &mut u64,
) -> Result<Option<RefetchEnd>, crate::source::refetch::RefetchError> {
    let after = *resume_after;
    let limits = RefetchLimits::default();
    let mut fetch = RangeFetch::start(source, after, before, limits).await?;
    while let Some(events) = fetch.next_batch().await? {
        if events.is_empty() {
            continue;
        }
        let pushed_at_us = crate::queue::envelope::now_us();
        let batch: Vec<crate::queue::Delivery> = events
            .into_iter()
            .map(|e| crate::queue::Delivery {
                seq: 0,
                position: e.position,
                pushed_at_us,
                payload: e.payload,
            })
            .collect();
        match sink.write(&batch, stats, stopped).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(error) => {
                return Err(crate::source::refetch::RefetchError::Stream {
                    url: source.url.clone(),
                    after,
                    before,
                    reason: format!("writing the refetched events: {error}"),
                })
            }
        }
        *written += batch.len() as u64;
        *resume_after = batch.last().map_or(after, |d| d.position);
        stats
            .refetched_events_total
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Ok(Some(fetch.end()))
}
