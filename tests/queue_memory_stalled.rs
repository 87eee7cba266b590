//! 1e6 events of 1 KiB pushed under a 16 MiB budget with the consumer stalled: heap
//! bytes at peak stay within budget + a fixed slack; then the consumer drains it all,
//! in order, and the log's space is reclaimed.

mod common;

use common::counting_alloc::{self, CountingAlloc};
use common::memory_case::*;
use spillway::queue::{Event, SpillQueue};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_never_costs_more_than_the_budget() {
    warm_up_process();
    let dir = tempfile::tempdir().expect("tempdir");
    let baseline = counting_alloc::live_bytes() as u64;
    counting_alloc::reset_peak();
    // Opening counts: the queue's sled manifest is part of its budget.
    let queue = SpillQueue::open(dir.path(), config()).expect("open");
    let mut consumer = queue.consumer("stalled").expect("consumer");

    for start in (1..=EVENTS).step_by(BATCH) {
        let batch: Vec<Event> = (start..start + BATCH as u64)
            .map(|p| Event::new(p, payload(p)))
            .collect();
        let report = queue.push_batch(batch).await.expect("push");
        assert!(report.dropped.is_empty());
    }
    let stats = queue.stats();
    let push_peak = counting_alloc::peak_bytes() as u64 - baseline;
    println!(
        "pushed {EVENTS} x {EVENT_BYTES} B: heap peak {push_peak} B from before open (budget {MEMORY_BUDGET_BYTES} + slack {SLACK_BYTES}); memory tier {} B in {} events, {} on disk",
        stats.memory_bytes, stats.memory_events, stats.disk_events
    );
    assert!(stats.spilling, "a 1 GB backlog cannot fit a 16 MiB budget");
    assert_eq!(stats.memory_events + stats.disk_events, EVENTS);
    assert!(stats.memory_bytes <= stats.memory_tier_bytes);
    assert!(
        push_peak <= MEMORY_BUDGET_BYTES + SLACK_BYTES,
        "heap peak {push_peak} B while pushing exceeds budget + slack"
    );

    counting_alloc::reset_peak();
    let mut expected = 1u64;
    while expected <= EVENTS {
        let batch = consumer.next_batch(BATCH, 1024 * 1024).await.expect("read");
        for delivery in &batch {
            assert_eq!(
                position_of(&delivery.payload),
                expected,
                "out of order or gap"
            );
            assert_eq!(delivery.position, expected);
            expected += 1;
        }
        consumer
            .ack(batch.last().expect("non-empty").seq)
            .expect("ack");
    }
    let drain_peak = counting_alloc::peak_bytes() as u64 - baseline;
    let stats = queue.stats();
    println!(
        "drained in order: heap peak {drain_peak} B; log after drain: {} events, {} B on disk",
        stats.disk_events, stats.disk_bytes
    );
    assert!(
        drain_peak <= MEMORY_BUDGET_BYTES + SLACK_BYTES,
        "heap peak {drain_peak} B while draining exceeds budget + slack"
    );
    assert_eq!(stats.disk_events, 0);
    assert_eq!(stats.memory_events, 0);
    // Every sealed segment is reclaimed; at most the active one (under segment_bytes_max) remains.
    assert!(
        stats.disk_bytes < config().log.segment_bytes_max,
        "log not reclaimed: {} B",
        stats.disk_bytes
    );
    assert!(consumer.try_next_batch(10, 1024).expect("read").is_empty());
}
