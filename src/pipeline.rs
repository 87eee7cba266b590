//! Wiring: for each source, source -> its own queue -> a sink consuming it; and shutdown.
//!
//! The pipeline names no concrete source or sink: it takes the members of the
//! [`Source`](crate::source::Source) and [`Sink`] families that [`kinds`] makes of the configuration.
//!
//! On shutdown the sources stop reading and save their cursors, the sinks finish the
//! batch in hand (or leave it unacked), and the queues flush.

pub mod kinds;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::queue::{LostEvents, QueueError, Read, SpillQueue};
use crate::sink::{Sink, SinkError, SinkStats};
use crate::source::{Refetch, RefetchEnd, RefetchError, SourceError, SourceStats};

pub use crate::lane::Lane;

/// The consumer name sinks read with.
pub const SINK_CONSUMER: &str = "sink";

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
    Source(#[from] SourceError),
    /// The sink of `host` could not be created or failed for good.
    #[error("the sink of {host}: {source}")]
    Sink {
        /// The source whose events it writes.
        host: String,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// The sink of `host` could not read from or ack to its queue.
    #[error("the sink of {host}: {doing}: {source}")]
    Consumer {
        /// The source whose queue it is.
        host: String,
        /// What the sink asked of the queue.
        doing: &'static str,
        /// The queue's error.
        #[source]
        source: QueueError,
    },
    /// A task panicked.
    #[error("a pipeline task panicked: {0}")]
    Task(#[source] tokio::task::JoinError),
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
        for (index, mut source) in kinds::sources(config).into_iter().enumerate() {
            let host = source.label();
            let dir = config
                .data_dir
                .join(format!("queue-{}", source.file_name()));
            let queue = SpillQueue::open(&dir, config.queue_config(index)).map_err(|source| {
                PipelineError::Queue {
                    host: host.clone(),
                    source,
                }
            })?;
            let source_stats = Arc::new(SourceStats::default());
            let sink_stats = Arc::new(SinkStats::default());
            // Settled before any task runs: the sink never reads stored events ahead of the replay.
            let cursor = source.resume_point(&queue)?;
            let refetcher = source.refetcher();
            let family = source.family();
            {
                let (queue, stats, stopped) =
                    (queue.clone(), Arc::clone(&source_stats), stopped.clone());
                let span = tracing::info_span!("source", relay = %host);
                tasks.spawn(
                    async move {
                        source
                            .run(queue, cursor, stats, stopped)
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
            let mut sink =
                kinds::sink(config, &host, family, sink_events_per_sec_max).map_err(|source| {
                    PipelineError::Sink {
                        host: host.clone(),
                        source,
                    }
                })?;
            let span = tracing::info_span!("sink", relay = %host, kind = %config.sink);
            let sink_host = host.clone();
            tasks.spawn(
                async move {
                    let host = sink_host;
                    let consumer_error = |doing: &'static str| {
                        let host = host.clone();
                        move |source| PipelineError::Consumer { host, doing, source }
                    };
                    loop {
                        let read = tokio::select! {
                            b = consumer.next_read(batch_events, batch_bytes) => b.map_err(consumer_error("reading its queue"))?,
                            _ = stopped.changed() => return Ok(()),
                        };
                        let batch = match read {
                            Read::Events(batch) => batch,
                            Read::Lost(lost) => {
                                if !repair_lost(&lost, refetcher.as_deref(), sink.as_mut(), &stats, &stopped).await? {
                                    return Ok(());
                                }
                                consumer
                                    .ack_lost(&lost)
                                    .map_err(consumer_error("acking a lost range"))?;
                                continue;
                            }
                        };
                        let written = sink
                            .write(&batch, &stats, &stopped)
                            .await
                            .map_err(|source| PipelineError::Sink {
                                host: host.clone(),
                                source,
                            })?;
                        if !written {
                            return Ok(());
                        }
                        ack(&consumer, &batch, &stats).map_err(consumer_error("acking"))?;
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
            let result = joined.map_err(PipelineError::Task).and_then(|r| r);
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
) -> Result<(), QueueError> {
    if let Some(last) = batch.last() {
        consumer.ack(last.seq)?;
        stats
            .events_total
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.batches_total.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Why one attempt at repairing a lost range failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum RepairError {
    /// Fetching the range from the source failed.
    #[error(transparent)]
    Fetch(#[from] RefetchError),
    /// Writing the fetched events failed.
    #[error("writing the refetched events of seqs {after}..{before}: {source}")]
    Write {
        /// Exclusive lower bound of the attempt.
        after: u64,
        /// Exclusive upper bound.
        before: u64,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
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
    refetcher: Option<&dyn Refetch>,
    sink: &mut dyn Sink,
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
    let Some(refetcher) = refetcher else {
        lose(
            &stats.lost_refetch_failed_total,
            lost.log_records,
            "the source cannot fetch a range again",
        );
        return Ok(true);
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
            refetcher,
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
    refetcher: &dyn Refetch,
    before: u64,
    sink: &mut dyn Sink,
    stats: &SinkStats,
    stopped: &watch::Receiver<bool>,
    resume_after: &mut u64,
    written: &mut u64,
) -> Result<Option<RefetchEnd>, RepairError> {
    let after = *resume_after;
    let mut fetch = refetcher.fetch(after, before).await?;
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
            Err(source) => {
                return Err(RepairError::Write {
                    after,
                    before,
                    source,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Delivery, Event};
    use crate::source::RangeBatches;
    use futures_util::future::BoxFuture;

    /// A sink that keeps what it is given: a member of the family in a dozen lines.
    #[derive(Default)]
    struct Kept(Vec<u64>);

    impl Sink for Kept {
        fn write<'a>(
            &'a mut self,
            batch: &'a [Delivery],
            _stats: &'a SinkStats,
            _stop: &'a watch::Receiver<bool>,
        ) -> BoxFuture<'a, Result<bool, SinkError>> {
            self.0.extend(batch.iter().map(|d| d.position));
            Box::pin(async { Ok(true) })
        }
    }

    /// A source's refetch that holds positions `held` and hands them over in one batch.
    struct Holding(Vec<u64>);

    struct Batches(Option<Vec<Event>>);

    impl Refetch for Holding {
        fn fetch(
            &self,
            after: u64,
            before: u64,
        ) -> BoxFuture<'_, Result<Box<dyn RangeBatches>, RefetchError>> {
            let events = self
                .0
                .iter()
                .filter(|&&p| p > after && p < before)
                .map(|&p| Event::new(p, bytes::Bytes::from_static(b"x")))
                .collect();
            Box::pin(async move { Ok(Box::new(Batches(Some(events))) as Box<dyn RangeBatches>) })
        }
    }

    impl RangeBatches for Batches {
        fn next_batch(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, RefetchError>> {
            let next = self.0.take();
            Box::pin(async move { Ok(next) })
        }

        fn end(&self) -> RefetchEnd {
            RefetchEnd::Complete
        }
    }

    fn lost(after: u64, before: u64) -> LostEvents {
        LostEvents {
            log_records: before - after - 1,
            log_first: 10,
            log_next: 10 + before - after - 1,
            after_position: Some(after),
            before_position: Some(before),
            location: "segment-0".into(),
            offset: 0,
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn a_lost_range_is_fetched_again_from_any_source_that_can_and_written_in_place() {
        let (_stop, stopped) = watch::channel(false);
        let (mut sink, stats) = (Kept::default(), SinkStats::default());
        let source = Holding((1..=20).collect());
        let done = repair_lost(&lost(5, 9), Some(&source), &mut sink, &stats, &stopped).await;
        assert!(matches!(done, Ok(true)));
        assert_eq!(sink.0, vec![6, 7, 8]);
        assert_eq!(stats.refetched_events_total.load(Ordering::Relaxed), 3);
        assert_eq!(stats.damaged_events_total.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_source_that_cannot_fetch_again_loses_the_range_for_good() {
        let (_stop, stopped) = watch::channel(false);
        let (mut sink, stats) = (Kept::default(), SinkStats::default());
        let done = repair_lost(&lost(5, 9), None, &mut sink, &stats, &stopped).await;
        assert!(matches!(done, Ok(true)));
        assert!(sink.0.is_empty());
        assert_eq!(stats.lost_refetch_failed_total.load(Ordering::Relaxed), 3);
        assert_ne!(stats.last_loss_ms.load(Ordering::Relaxed), 0);
    }
}
