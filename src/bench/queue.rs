//! Queue scenarios: the in-memory path against tokio's mpsc, the spill path and read-back,
//! peak RSS over growing backlogs, reopen-to-first-event, and the CDC replay case.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use crate::bench::log::Figures;
use crate::bench::rss;
use crate::queue::{Event, QueueConfig, SpillMode, SpillQueue};
use crate::storage::Durability;

/// Events per push and per read in every queue scenario.
pub const BATCH_EVENTS: usize = 100;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The queue configuration the benchmarks use: defaults with `memory_budget_bytes` and `manual` durability.
pub fn bench_config(memory_budget_bytes: u64) -> QueueConfig {
    let mut config = QueueConfig::new();
    config.memory_budget_bytes = memory_budget_bytes;
    config.log.durability = Durability::Manual;
    config.log.disk_budget_bytes = u64::MAX / 2;
    config.spill_mode = SpillMode::MemoryFirst;
    config
}

/// A batch of events `first..first + count`, each `size` bytes starting with its position.
pub fn events(first: u64, count: usize, size: usize) -> Vec<Event> {
    (first..first + count as u64)
        .map(|p| {
            let mut payload = vec![(p % 251) as u8; size];
            payload[..8.min(size)].copy_from_slice(&p.to_le_bytes()[..8.min(size)]);
            Event {
                position: p,
                payload: Bytes::from(payload),
            }
        })
        .collect()
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn figures(name: String, records: u64, size: usize, started: Instant) -> Figures {
    Figures {
        name,
        records,
        payload_bytes: records * size as u64,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: rss::peak_bytes(),
        disk_bytes: 0,
    }
}

/// The batches a producer sends, made as it sends them: each payload in an allocation of
/// its own, as a source delivers events (making them costs every contender the same).
/// Clones of one shared batch would not do: the queue's memory tier copies a payload it
/// cannot tell is alone in its allocation (`queue::memory::held_payload`), a channel does not.
fn batches_as_sent(total: u64, size: usize) -> impl Iterator<Item = Vec<Event>> + Send + 'static {
    (0..total / BATCH_EVENTS as u64)
        .map(move |i| events(i * BATCH_EVENTS as u64, BATCH_EVENTS, size))
}

/// Events the in-memory scenario's producer may be ahead of the consumer's acks: the same
/// bound as the mpsc baseline's capacity, so both hold as much in flight.
pub const IN_FLIGHT_EVENTS_MAX: usize = 1024;

/// Our in-memory path: a producer task pushes batches, a consumer task reads and acks them.
/// A push never waits for the consumer (past the budget it spills), so the producer keeps
/// at most [`IN_FLIGHT_EVENTS_MAX`] events ahead of the acks itself, as the bounded mpsc
/// makes its producer do; the budget holds the whole run all the same, so nothing spills
/// and this scenario measures the memory path only.
pub fn memory_path(dir: &Path, total: u64, size: usize) -> std::io::Result<Figures> {
    runtime()?.block_on(async {
        let headroom = 64 * 1024 * 1024;
        let budget = total * (size as u64 + crate::queue::budget::EVENT_OVERHEAD_BYTES) + headroom;
        let queue = SpillQueue::open(dir, bench_config(budget)).map_err(io_err)?;
        let mut consumer = queue.consumer("bench").map_err(io_err)?;
        let batches = batches_as_sent(total, size);
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_EVENTS_MAX));
        rss::reset_peak();
        let started = Instant::now();
        let producer = {
            let (queue, in_flight) = (queue.clone(), in_flight.clone());
            tokio::spawn(async move {
                for batch in batches {
                    in_flight
                        .acquire_many(batch.len() as u32)
                        .await
                        .map_err(io_err)?
                        .forget();
                    queue.push_batch(batch).await.map_err(io_err)?;
                }
                Ok::<_, std::io::Error>(())
            })
        };
        let mut received = 0u64;
        while received < total {
            let batch = consumer
                .next_batch(BATCH_EVENTS, u64::MAX)
                .await
                .map_err(io_err)?;
            received += batch.len() as u64;
            if let Some(last) = batch.last() {
                consumer.ack(last.seq).map_err(io_err)?;
            }
            in_flight.add_permits(batch.len());
        }
        producer.await.map_err(io_err)??;
        let f = figures("queue in-memory path".into(), total, size, started);
        if queue.stats().spilled_events_total > 0 {
            return Err(io_err("the in-memory scenario spilled; raise its budget"));
        }
        Ok(f)
    })
}

/// Baseline: tokio's bounded mpsc (capacity 1024) moving the same batches, one event per message.
pub fn mpsc_per_event(total: u64, size: usize) -> std::io::Result<Figures> {
    runtime()?.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(1024);
        let batches = batches_as_sent(total, size);
        rss::reset_peak();
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for batch in batches {
                for event in batch {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut received = 0u64;
        let mut buffer = Vec::with_capacity(BATCH_EVENTS);
        while received < total {
            let n = rx.recv_many(&mut buffer, BATCH_EVENTS).await;
            if n == 0 {
                break;
            }
            received += n as u64;
            buffer.clear();
        }
        producer.await.map_err(io_err)?;
        Ok(figures(
            "tokio mpsc(1024) per event".into(),
            total,
            size,
            started,
        ))
    })
}

/// Baseline: tokio's bounded mpsc moving whole batches (capacity 1024 / batch size messages).
pub fn mpsc_per_batch(total: u64, size: usize) -> std::io::Result<Figures> {
    runtime()?.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(1024 / BATCH_EVENTS);
        let batches = batches_as_sent(total, size);
        rss::reset_peak();
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for batch in batches {
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let mut received = 0u64;
        while received < total {
            match rx.recv().await {
                Some(batch) => received += batch.len() as u64,
                None => break,
            }
        }
        producer.await.map_err(io_err)?;
        Ok(figures("tokio mpsc batches".into(), total, size, started))
    })
}

/// The spill path: the consumer is stalled, so past the budget every event goes to the log.
/// Events are generated outside the timed region only per batch (as a producer would hold them).
pub fn spill_write(
    dir: &Path,
    total: u64,
    size: usize,
    budget_bytes: u64,
    progress: impl Fn(u64),
) -> std::io::Result<Figures> {
    runtime()?.block_on(async {
        let queue = SpillQueue::open(dir, bench_config(budget_bytes)).map_err(io_err)?;
        let _stalled = queue.consumer("bench").map_err(io_err)?;
        rss::reset_peak();
        let started = Instant::now();
        let step = (total / 10).max(1);
        let mut pushed = 0;
        while pushed < total {
            let n = (total - pushed).min(BATCH_EVENTS as u64) as usize;
            queue
                .push_batch(events(pushed, n, size))
                .await
                .map_err(io_err)?;
            pushed += n as u64;
            if pushed % step == 0 {
                progress(pushed);
            }
        }
        queue.flush().map_err(io_err)?;
        let mut f = figures("queue spill write".into(), total, size, started);
        f.disk_bytes = rss::disk_usage_bytes(dir);
        Ok(f)
    })
}

/// Reopens the queue in `dir` and times the first delivered event, then, if `drain`,
/// drains (acking) and times that; without `drain` nothing is acked, so it can run again.
pub fn reopen_and_drain(
    dir: &Path,
    size: usize,
    budget_bytes: u64,
    drain: bool,
) -> std::io::Result<(Figures, Option<Figures>)> {
    runtime()?.block_on(async {
        rss::reset_peak();
        let started = Instant::now();
        let queue = SpillQueue::open(dir, bench_config(budget_bytes)).map_err(io_err)?;
        let mut consumer = queue.consumer("bench").map_err(io_err)?;
        if queue.stats().disk_events == 0 {
            // Everything fit in memory: nothing was spilled, so there is nothing to read back
            // (memory events are replayed by the source after a restart, not stored).
            return Err(io_err("the backlog never spilled (it fit in the memory budget); use a larger backlog or a smaller budget"));
        }
        let first = consumer.next_batch(1, u64::MAX).await.map_err(io_err)?;
        let reopen = Figures {
            name: "queue reopen to first event".into(),
            records: 1,
            payload_bytes: 0,
            seconds: started.elapsed().as_secs_f64(),
            peak_rss_bytes: rss::peak_bytes(),
            disk_bytes: 0,
        };
        if !drain {
            return Ok((reopen, None));
        }
        let backlog = queue.stats().disk_events + queue.stats().memory_events;
        let started = Instant::now();
        let mut received = first.len() as u64;
        let mut last = first.last().map(|d| d.seq);
        loop {
            let batch = consumer
                .try_next_batch(BATCH_EVENTS * 10, 4 * 1024 * 1024)
                .map_err(io_err)?;
            let Some(end) = batch.last() else { break };
            for d in &batch {
                if d.payload.len() != size {
                    return Err(io_err(format!(
                        "event {} read back with {} bytes",
                        d.seq,
                        d.payload.len()
                    )));
                }
            }
            last = Some(end.seq);
            received += batch.len() as u64;
            consumer.ack(end.seq).map_err(io_err)?;
        }
        if let Some(seq) = last {
            consumer.ack(seq).map_err(io_err)?;
        }
        if received < backlog {
            return Err(io_err(format!("drained {received} of {backlog}")));
        }
        let drain = figures("queue read-back (drain)".into(), received, size, started);
        Ok((reopen, Some(drain)))
    })
}
