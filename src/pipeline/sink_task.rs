//! One sink's task: it reads its own consumer of a lane's queue, repairs lost ranges from
//! the source, writes, and acks; several run on one queue, each at its own pace.
//!
//! A sink that stalls (failing, paused above its high-water mark) holds back only its own
//! consumer: the queue frees a memory event once every consumer acked it, so the stalled
//! one keeps at most the memory tier's share pinned and the queue spills the rest to its
//! log, which every consumer reads at its own position. The relay cursor is the queue's
//! durable watermark, over all consumers: it never passes an event that one sink has not
//! written unless the log holds it durably.
//!
//! The disk is shared: the log is reclaimed below the slowest consumer only, so a sink
//! stalled long enough fills the disk budget, and then `full_policy` applies to every
//! sink alike (`block` stops the source and so the other sinks' new events too;
//! `drop_oldest` drops the stalled sink's oldest events).

use std::sync::atomic::Ordering;

use tokio::sync::watch;

use std::sync::Arc;

use tracing::Instrument;

use super::{kinds, PipelineError};
use crate::config::Config;
use crate::lane::LaneSink;
use crate::queue::{Consumer, LostEvents, QueueError, Read, SpillQueue};
use crate::sink::{Sink, SinkError, SinkStats};
use crate::source::{Refetch, RefetchEnd, RefetchError, Source};

/// The consumer name a lone sink reads with, as it did before `sinks` existed, so
/// existing data directories keep their position.
pub const SINK_CONSUMER: &str = "sink";

/// The consumer name of the sink of `kind` among `kinds`: [`SINK_CONSUMER`] for a lone
/// sink, else its kind.
pub fn consumer_name<'a>(kinds: &[&'a str], kind: &'a str) -> &'a str {
    if kinds.len() == 1 {
        SINK_CONSUMER
    } else {
        kind
    }
}

/// Attaches the consumers `names` to `queue`, then removes the saved consumers that are
/// not among them (logged), so a sink taken out of the configuration no longer pins the
/// log. New consumers are attached first: they start at the oldest position still held,
/// which a removed consumer (`sink` becoming `redis` and `jsonl`) hands over to them.
///
/// # Errors
/// The queue's, naming the consumer.
pub fn attach_consumers(
    queue: &SpillQueue,
    names: &[&str],
) -> Result<Vec<Consumer>, (String, QueueError)> {
    let consumers = names
        .iter()
        .map(|name| queue.consumer(name).map_err(|e| (name.to_string(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    for stale in queue.consumer_names() {
        if names.contains(&stale.as_str()) {
            continue;
        }
        queue
            .remove_consumer(&stale)
            .map_err(|e| (stale.clone(), e))?;
        tracing::warn!(
            consumer = %stale,
            "removed a queue consumer no sink is configured for any more; its unread events are released"
        );
    }
    Ok(consumers)
}

/// Creates the configured sinks for the events of `source` (labelled `host`), attaches
/// their consumers to its `queue` (removing the consumers of sinks no longer configured)
/// and spawns a task per sink into `tasks`; returns what the metrics read of each.
///
/// # Errors
/// A sink that cannot be created, or a consumer that cannot attach or be removed.
pub fn spawn_all(
    config: &Config,
    host: &str,
    queue: &SpillQueue,
    source: &dyn Source,
    sink_events_per_sec_max: u64,
    stopped: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<Result<(), PipelineError>>,
) -> Result<Vec<LaneSink>, PipelineError> {
    let sinks = kinds::sinks(config, host, source.family(), sink_events_per_sec_max).map_err(
        |(kind, error)| PipelineError::Sink {
            host: host.to_string(),
            kind,
            source: Box::new(error),
        },
    )?;
    let kinds: Vec<&str> = sinks.iter().map(|(kind, _)| kind.as_str()).collect();
    let names: Vec<&str> = kinds
        .iter()
        .map(|kind| consumer_name(&kinds, kind))
        .collect();
    let consumers =
        attach_consumers(queue, &names).map_err(|(consumer, error)| PipelineError::Consumer {
            host: host.to_string(),
            kind: consumer,
            doing: "attaching or removing queue consumers (the kind is the consumer named)",
            source: Box::new(error),
        })?;
    let mut lane_sinks = Vec::with_capacity(sinks.len());
    for ((kind, sink), consumer) in sinks.into_iter().zip(consumers) {
        let stats = Arc::new(SinkStats::default());
        lane_sinks.push(LaneSink {
            kind: kind.clone(),
            consumer: consumer.name().to_string(),
            stats: Arc::clone(&stats),
        });
        let span = tracing::info_span!("sink", relay = %host, kind = %kind);
        let task = SinkTask {
            host: host.to_string(),
            kind,
            consumer,
            sink,
            refetcher: source.refetcher(),
            stats,
            batch_events_max: config.sink_batch_events_max as usize,
            batch_bytes_max: config.sink_batch_bytes_max,
        };
        tasks.spawn(task.run(stopped.clone()).instrument(span));
    }
    Ok(lane_sinks)
}

/// One sink reading one queue.
pub struct SinkTask {
    /// The source whose events it writes.
    pub host: String,
    /// Its kind (`redis`, `jsonl`).
    pub kind: String,
    /// Its own consumer of the queue.
    pub consumer: Consumer,
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Fetches a lost range again from the source, if the source can.
    pub refetcher: Option<Box<dyn Refetch>>,
    /// Its counters.
    pub stats: Arc<SinkStats>,
    /// Events per batch at most.
    pub batch_events_max: usize,
    /// Payload bytes per batch, about.
    pub batch_bytes_max: u64,
}

impl SinkTask {
    /// Reads, writes and acks until `stopped` turns true or a fatal error.
    ///
    /// # Errors
    /// The sink failed for good, or the queue could not be read or acked.
    pub async fn run(mut self, mut stopped: watch::Receiver<bool>) -> Result<(), PipelineError> {
        loop {
            let read = tokio::select! {
                read = self.consumer.next_read(self.batch_events_max, self.batch_bytes_max) => {
                    read.map_err(|e| self.consumer_error("reading its queue", e))?
                }
                _ = stopped.changed() => return Ok(()),
            };
            let batch = match read {
                Read::Events(batch) => batch,
                Read::Lost(lost) => {
                    let refetcher = self.refetcher.as_deref();
                    let repaired =
                        repair_lost(&lost, refetcher, self.sink.as_mut(), &self.stats, &stopped);
                    if !repaired.await? {
                        return Ok(());
                    }
                    self.consumer
                        .ack_lost(&lost)
                        .map_err(|e| self.consumer_error("acking a lost range", e))?;
                    continue;
                }
            };
            let written = self.sink.write(&batch, &self.stats, &stopped).await;
            match written {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(source) => {
                    return Err(PipelineError::Sink {
                        host: self.host.clone(),
                        kind: self.kind.clone(),
                        source: Box::new(source),
                    })
                }
            }
            ack(&self.consumer, &batch, &self.stats)
                .map_err(|e| self.consumer_error("acking", e))?;
        }
    }

    fn consumer_error(&self, doing: &'static str, source: QueueError) -> PipelineError {
        PipelineError::Consumer {
            host: self.host.clone(),
            kind: self.kind.clone(),
            doing,
            source: Box::new(source),
        }
    }
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
    use crate::queue::QueueConfig;
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

    #[tokio::test]
    async fn a_lone_sink_keeps_the_old_consumer_and_a_dropped_sink_stops_pinning_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = SpillQueue::open(dir.path(), QueueConfig::new()).expect("open");
        assert_eq!(consumer_name(&["jsonl"], "jsonl"), SINK_CONSUMER);
        assert_eq!(consumer_name(&["redis", "jsonl"], "jsonl"), "jsonl");
        let mut lone = attach_consumers(&queue, &[SINK_CONSUMER]).expect("attach");
        let events = (1..=10)
            .map(|p| Event::new(p, bytes::Bytes::from_static(b"event")))
            .collect();
        queue.push_batch(events).await.expect("push");
        let read = lone[0].next_batch(4, 1 << 20).await.expect("read");
        lone[0].ack(read[3].seq).expect("ack");
        drop(lone);

        // Two sinks now: both start where the lone one stopped, which is then removed.
        let mut both = attach_consumers(&queue, &["redis", "jsonl"]).expect("attach");
        assert_eq!(queue.consumer_names(), vec!["jsonl", "redis"]);
        for consumer in &mut both {
            let read = consumer.next_batch(100, 1 << 20).await.expect("read");
            let positions: Vec<u64> = read.iter().map(|d| d.position).collect();
            assert_eq!(
                positions,
                (5..=10).collect::<Vec<_>>(),
                "{}",
                consumer.name()
            );
        }
        // `jsonl` acks everything, `redis` nothing: redis alone holds the events.
        both[1].ack(9).expect("ack");
        assert_eq!(
            queue.stats().memory_events,
            6,
            "redis has acked none of them"
        );
        drop(both);

        // Back to redis alone (consumer `sink`): jsonl's and redis's positions go away.
        let lone = attach_consumers(&queue, &[SINK_CONSUMER]).expect("attach");
        assert_eq!(queue.consumer_names(), vec![SINK_CONSUMER]);
        assert_eq!(
            queue.stats().memory_events,
            6,
            "the new consumer starts at the oldest position held (redis's): nothing skipped"
        );
        drop(lone);
        attach_consumers(&queue, &["jsonl", "redis"]).expect("attach");
        assert_eq!(queue.consumer_names(), vec!["jsonl", "redis"]);
    }
}
