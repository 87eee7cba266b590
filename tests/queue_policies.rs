//! A full disk budget under each policy, bad configuration values, and ack misuse.

mod common;

use std::time::Duration;

use spillway::queue::{
    Event, FullPolicy, PushFailure, QueueConfig, QueueConfigError, QueueError, SpillMode,
    SpillQueue,
};

/// A queue whose disk budget holds about three 16 KiB segments of 1 KiB events.
fn tight(policy: FullPolicy) -> QueueConfig {
    let mut config = common::small_queue_config(4096);
    config.full_policy = policy;
    config.spill_mode = SpillMode::WriteThrough;
    config.log.disk_budget_bytes = 48 * 1024;
    config
}

fn event(p: u64) -> Event {
    Event::new(p, vec![p as u8; 1000])
}

/// Pushes one event at a time until a push does not fully go in; returns how many went in.
async fn fill(queue: &SpillQueue) -> u64 {
    let mut p = 0;
    loop {
        p += 1;
        let pushed = tokio::time::timeout(Duration::from_secs(5), queue.push(event(p))).await;
        match pushed {
            Ok(Ok(report)) if report.dropped.is_empty() => continue,
            _ => return p - 1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_hands_the_refused_events_back_and_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SpillQueue::open(dir.path(), tight(FullPolicy::DropNewest)).expect("open");
    let mut consumer = queue.consumer("c").expect("consumer");
    let accepted = fill(&queue).await;
    assert!(accepted > 10);
    let report = queue
        .push_batch(vec![event(1000), event(1001)])
        .await
        .expect("push");
    assert_eq!(
        report.dropped,
        vec![event(1000), event(1001)],
        "the refused events come back"
    );
    let stats = queue.stats();
    assert!(stats.dropped_newest_total >= 2);
    assert_eq!(stats.disk_events, accepted, "nothing accepted was dropped");
    // The consumer still gets every accepted event, in order.
    let mut p = 1;
    while p <= accepted {
        for d in consumer.next_batch(100, 1 << 20).await.expect("read") {
            assert_eq!(d.position, p);
            p += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_makes_room_by_dropping_the_oldest_file_and_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SpillQueue::open(dir.path(), tight(FullPolicy::DropOldest)).expect("open");
    let mut consumer = queue.consumer("c").expect("consumer");
    let total = 200;
    for p in 1..=total {
        let report = queue.push(event(p)).await.expect("push");
        assert!(
            report.dropped.is_empty(),
            "drop_oldest keeps the newest event"
        );
    }
    let stats = queue.stats();
    assert!(stats.dropped_oldest_total > 0);
    assert!(stats.disk_bytes <= 48 * 1024);
    // What is left is the newest events, in order, ending with the last one pushed.
    let mut seen = Vec::new();
    loop {
        let batch = consumer.try_next_batch(100, 1 << 20).expect("read");
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().map(|d| d.position));
    }
    assert_eq!(seen.last(), Some(&total));
    assert!(
        seen.windows(2).all(|w| w[0] + 1 == w[1]),
        "the survivors are one contiguous, ordered run"
    );
    assert_eq!(
        seen.len() as u64 + stats.dropped_oldest_total,
        total,
        "every event is delivered or counted as dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_waits_for_the_consumer_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SpillQueue::open(dir.path(), tight(FullPolicy::Block)).expect("open");
    let mut consumer = queue.consumer("c").expect("consumer");
    let accepted = fill(&queue).await;
    assert!(
        queue.stats().blocked_pushes_total > 0,
        "the last push blocked"
    );
    // A producer that keeps pushing is held back until the consumer acks.
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for p in accepted + 1..=accepted + 100 {
                queue.push(event(p)).await.expect("push");
            }
        })
    };
    let mut p = 1;
    while p <= accepted + 100 {
        let batch = consumer.next_batch(20, 1 << 20).await.expect("read");
        for d in &batch {
            assert_eq!(d.position, p, "in order, nothing lost");
            p += 1;
        }
        consumer.ack(batch.last().expect("batch").seq).expect("ack");
    }
    producer.await.expect("producer");
    assert_eq!(
        queue.stats().dropped_newest_total + queue.stats().dropped_oldest_total,
        0
    );
}

#[tokio::test]
async fn an_event_over_the_size_limit_is_handed_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SpillQueue::open(dir.path(), common::small_queue_config(4096)).expect("open");
    let big = Event::new(1, vec![0u8; 5000]);
    let error = queue
        .push_batch(vec![Event::new(0, vec![1u8]), big.clone()])
        .await
        .expect_err("too large");
    assert!(matches!(
        error.reason,
        PushFailure::EventTooLarge { len: 5000, .. }
    ));
    assert_eq!(error.events.len(), 2, "the whole batch comes back");
    assert_eq!(queue.stats().pushed_events_total, 0);
}

#[test]
fn bad_configuration_values_are_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::small_queue_config(4096);
    let cases: Vec<(&str, QueueConfig)> = vec![
        (
            "memory_budget_bytes",
            QueueConfig {
                memory_budget_bytes: 0,
                ..base.clone()
            },
        ),
        (
            "memory_budget_bytes",
            QueueConfig {
                memory_budget_bytes: 1024 * 1024,
                log: spillway::storage::LogConfig::default(),
                ..base.clone()
            },
        ),
        (
            "consumers_max",
            QueueConfig {
                consumers_max: 0,
                ..base.clone()
            },
        ),
        (
            "consumers_max",
            QueueConfig {
                consumers_max: 1000,
                ..base.clone()
            },
        ),
        (
            "unacked_stretches_max",
            QueueConfig {
                unacked_stretches_max: 0,
                ..base.clone()
            },
        ),
    ];
    for (field, config) in cases {
        match SpillQueue::open(dir.path(), config) {
            Err(QueueError::Config(QueueConfigError::Invalid { field: f, reason })) => {
                assert_eq!(f, field);
                assert!(!reason.is_empty());
            }
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
    let mut zero_disk = base.clone();
    zero_disk.log.disk_budget_bytes = 0;
    assert!(matches!(
        SpillQueue::open(dir.path(), zero_disk),
        Err(QueueError::Config(QueueConfigError::Log(_)))
    ));
    assert!(FullPolicy::parse("drop_everything").is_err());
}

#[tokio::test]
async fn acks_beyond_what_was_delivered_are_refused_and_names_are_exclusive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SpillQueue::open(dir.path(), common::small_queue_config(4096)).expect("open");
    let mut consumer = queue.consumer("c").expect("consumer");
    assert!(matches!(
        queue.consumer("c"),
        Err(QueueError::ConsumerBusy(_))
    ));
    queue
        .push_batch((1..=3).map(|p| Event::new(p, vec![p as u8])).collect())
        .await
        .expect("push");
    let batch = consumer.next_batch(2, 1024).await.expect("read");
    assert_eq!(batch.len(), 2);
    assert!(matches!(
        consumer.ack(batch[1].seq + 1),
        Err(QueueError::AckBeyondDelivered { .. })
    ));
    consumer.ack(batch[1].seq).expect("ack what was delivered");
    drop(consumer);
    let _again = queue
        .consumer("c")
        .expect("a dropped handle frees the name");
}

#[tokio::test]
async fn the_backlog_alert_flips_when_a_consumer_lags_past_the_threshold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::small_queue_config(4096);
    config.backlog_alert_events = 10;
    let queue = SpillQueue::open(dir.path(), config).expect("open");
    let mut consumer = queue.consumer("slow").expect("consumer");
    queue
        .push_batch((1..=10).map(|p| Event::new(p, vec![1u8])).collect())
        .await
        .expect("push");
    assert!(!queue.stats().backlog_alert);
    queue.push(Event::new(11, vec![1u8])).await.expect("push");
    assert!(
        queue.stats().backlog_alert,
        "11 events behind crosses the threshold of 10"
    );
    let batch = consumer.next_batch(100, 1 << 20).await.expect("read");
    consumer.ack(batch.last().expect("batch").seq).expect("ack");
    assert!(!queue.stats().backlog_alert, "caught up");
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

#[tokio::test]
async fn push_time_survives_a_spill_and_a_restart_and_ages_the_lag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::small_queue_config(4096);
    config.spill_mode = SpillMode::WriteThrough;
    let before = now_us();
    let pushed_at = {
        let queue = SpillQueue::open(dir.path(), config.clone()).expect("open");
        let mut consumer = queue.consumer("c").expect("consumer");
        queue
            .push_batch(
                (1..=20)
                    .map(|p| Event::new(p, vec![p as u8; 100]))
                    .collect(),
            )
            .await
            .expect("push");
        let after = now_us();
        let first = consumer.next_batch(5, 1 << 20).await.expect("read");
        assert!(first
            .iter()
            .all(|d| (before..=after).contains(&d.pushed_at_us)));
        let lagging = &queue.stats().consumers[0];
        assert_eq!(lagging.lag_events, 15);
        assert!(lagging.lag_ms <= (now_us() - before) / 1000 + 1);
        first[0].pushed_at_us
    };
    let queue = SpillQueue::open(dir.path(), config).expect("reopen");
    let mut consumer = queue.consumer("c").expect("consumer");
    let again = consumer.next_batch(100, 1 << 20).await.expect("read");
    assert_eq!(again.len(), 20, "nothing was acked");
    assert_eq!(again[0].pushed_at_us, pushed_at, "the push time is on disk");
    consumer.ack(again[19].seq).expect("ack");
    assert_eq!(queue.stats().consumers[0].lag_ms, 0, "caught up");
}

#[test]
fn a_log_in_another_envelope_layout_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::small_queue_config(4096);
    {
        // A log written without the envelope marker: the layout before push times.
        let log = spillway_storage::open(dir.path(), config.log.clone()).expect("log");
        log.append(&[&[0u8; 20]]).expect("append");
        log.flush().expect("flush");
    }
    let error = SpillQueue::open(dir.path(), config.clone()).expect_err("refused");
    assert!(
        matches!(
            error,
            QueueError::EnvelopeVersion {
                found: 1,
                supported: 2
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("envelope layout 1"), "{error}");

    // Drained, the old log holds nothing in the old layout: it is taken and marked.
    {
        let log = spillway_storage::open(dir.path(), config.log.clone()).expect("log");
        log.consume_until(1).expect("consume");
        log.flush().expect("flush");
    }
    let queue = SpillQueue::open(dir.path(), config).expect("a drained log is taken");
    drop(queue);
}
