//! The stalled-consumer scenario with a restart in the middle: after the reopen the
//! consumer resumes right after its last ack (the unacked events come again, nothing
//! else repeats, nothing is missing), and memory stays within budget + slack throughout.

mod common;

use common::counting_alloc::{self, CountingAlloc};
use common::memory_case::*;
use spillway::queue::{Event, SpillQueue};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

const ACKED_BEFORE_RESTART: u64 = EVENTS / 2;
const UNACKED_BEFORE_RESTART: u64 = 3 * BATCH as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_after_the_last_ack_within_budget() {
    warm_up_process();
    let dir = tempfile::tempdir().expect("tempdir");
    let baseline = counting_alloc::live_bytes() as u64;
    counting_alloc::reset_peak();
    let checkpoint;
    {
        let queue = SpillQueue::open(dir.path(), config()).expect("open");
        let mut consumer = queue.consumer("restarting").expect("consumer");
        for start in (1..=EVENTS).step_by(BATCH) {
            let batch: Vec<Event> = (start..start + BATCH as u64)
                .map(|p| Event::new(p, payload(p)))
                .collect();
            queue.push_batch(batch).await.expect("push");
        }
        println!(
            "push phase peak {} B",
            counting_alloc::peak_bytes() as u64 - baseline
        );
        let mut expected = 1;
        while expected <= ACKED_BEFORE_RESTART + UNACKED_BEFORE_RESTART {
            let batch = consumer.next_batch(BATCH, 1024 * 1024).await.expect("read");
            for d in &batch {
                assert_eq!(d.position, expected);
                expected += 1;
                if d.position == ACKED_BEFORE_RESTART {
                    consumer.ack(d.seq).expect("ack");
                }
            }
        }
        println!(
            "read phase peak {} B, live {} B",
            counting_alloc::peak_bytes() as u64 - baseline,
            counting_alloc::live_bytes() as u64 - baseline
        );
        // What the source would have checkpointed; then the process goes away.
        checkpoint = queue.durable_watermark().expect("a watermark after pushes");
        drop(consumer);
        drop(queue);
    }
    let before_restart_peak = counting_alloc::peak_bytes() as u64 - baseline;

    counting_alloc::reset_peak();
    let queue = SpillQueue::open(dir.path(), config()).expect("reopen");
    let mut consumer = queue.consumer("restarting").expect("consumer");
    // The source replays everything above its checkpoint (nothing, when all was on disk).
    queue.begin_replay(checkpoint).expect("begin replay");
    if checkpoint < EVENTS {
        for start in (checkpoint + 1..=EVENTS).step_by(BATCH) {
            let end = (start + BATCH as u64).min(EVENTS + 1);
            queue
                .push_batch((start..end).map(|p| Event::new(p, payload(p))).collect())
                .await
                .expect("replay");
        }
    }
    let mut expected = ACKED_BEFORE_RESTART + 1;
    let mut redelivered = 0;
    while expected <= EVENTS {
        let batch = consumer.next_batch(BATCH, 1024 * 1024).await.expect("read");
        for d in &batch {
            assert_eq!(
                d.position, expected,
                "after the restart: a gap or a repeat of an acked event"
            );
            assert_eq!(position_of(&d.payload), expected);
            if expected <= ACKED_BEFORE_RESTART + UNACKED_BEFORE_RESTART {
                redelivered += 1;
            }
            expected += 1;
        }
        consumer
            .ack(batch.last().expect("non-empty").seq)
            .expect("ack");
    }
    let after_restart_peak = counting_alloc::peak_bytes() as u64 - baseline;
    println!("checkpoint {checkpoint}; redelivered {redelivered} unacked events; heap peak {before_restart_peak} B before, {after_restart_peak} B after the restart");
    assert_eq!(
        redelivered, UNACKED_BEFORE_RESTART,
        "exactly the unacked events come again"
    );
    assert!(before_restart_peak <= MEMORY_BUDGET_BYTES + SLACK_BYTES);
    assert!(after_restart_peak <= MEMORY_BUDGET_BYTES + SLACK_BYTES);
    assert!(consumer.try_next_batch(10, 1024).expect("read").is_empty());
    assert_eq!(queue.stats().disk_events, 0);
}
