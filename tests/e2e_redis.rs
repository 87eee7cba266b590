//! End to end on loopback with real parts: a relay replaying the real frames, the
//! pipeline, a real redis-server. The sink is held above its high-water mark for a
//! while: every seq still arrives in order with no gap, the relay never drops us,
//! and the heap stays within the memory budget (counted).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::counting_alloc::{self, CountingAlloc};
use common::redis_server::{drain_seqs_blocking, RedisServer};
use spillway::config::Config;
use spillway::pipeline::Pipeline;
use spillway::source::relay::LoopbackRelay;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

const EVENTS: u64 = 200_000;
const BASE_SEQ: u64 = 40_000_000_000;
const MEMORY_BUDGET_BYTES: u64 = 48 * 1024 * 1024;
/// Beyond the queue's budget, in this one process: sled's metrics tables (41 zeroed
/// histograms of 512 KiB, 20.5 MiB counted here though never touched, so never resident),
/// the relay's send buffers, the sink batch in hand (500 frames, ~3 MiB), the test's own
/// XRANGE replies (2,000 frames, ~11 MiB), tokio and tracing. Fixed: nothing here grows
/// with the backlog. Measured 55.2 MiB at the peak; frames kept as slices of the
/// WebSocket's read buffers (each keeping the whole buffer alive) measured 64.6 MiB,
/// which this slack refuses.
const SLACK_BYTES: u64 = 14 * 1024 * 1024;
const HIGH_WATER: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_events_arrive_in_order_through_backpressure() {
    let redis = RedisServer::start();
    let relay_config = common::fixture::relay_config(BASE_SEQ, EVENTS);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        relays: vec![relay.url()],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: MEMORY_BUDGET_BYTES,
        redis_url: redis.url(),
        redis_high_water_events: HIGH_WATER,
        redis_low_water_events: HIGH_WATER / 2,
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let baseline = counting_alloc::live_bytes() as u64;
    counting_alloc::reset_peak();
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let stop = pipeline.stopper();
    let (queue, source, sink) = (
        pipeline.lanes[0].queue.clone(),
        pipeline.lanes[0].source.clone(),
        pipeline.lanes[0].sinks[0].stats.clone(),
    );
    let running = tokio::spawn(pipeline.join());

    // Hold the stream above its high-water mark: read nothing until the sink has paused
    // and the relay has sent everything (so the backlog is on disk, not in Redis).
    let held = Instant::now();
    while !(sink.backpressure.load(Ordering::Relaxed) == 1
        && source.frames_total.load(Ordering::Relaxed) == EVENTS)
    {
        assert!(
            held.elapsed() < Duration::from_secs(120),
            "never paused with everything received"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spilled = queue.stats();
    println!(
        "held: sink paused at XLEN >= {HIGH_WATER}; queue: {} events on disk, {} in memory",
        spilled.disk_events, spilled.memory_events
    );
    assert!(
        spilled.disk_events > 0,
        "the backlog spilled to disk while the sink was paused"
    );

    // Now drain the stream like a downstream indexer.
    let mut next = BASE_SEQ;
    let url = redis.url();
    let collected =
        drain_seqs_blocking(url, "firehose_live", EVENTS, Duration::from_secs(300)).await;
    for seq in &collected {
        assert_eq!(*seq, next, "a gap or a reordering in the stream");
        next += 1;
    }
    let peak = counting_alloc::peak_bytes() as u64 - baseline;
    let cursor: u64 = redis::cmd("GET")
        .arg(format!(
            "firehose_live:cursor:{}",
            relay.url().split('/').nth(2).expect("host")
        ))
        .query(&mut redis.connection())
        .expect("cursor key");
    println!(
        "{EVENTS} events in order; heap peak {:.1} MiB (budget {:.0} + slack {:.0}); relay: max send wait {} ms, dropped us {} times; cursor key {cursor}",
        peak as f64 / 1048576.0,
        MEMORY_BUDGET_BYTES as f64 / 1048576.0,
        SLACK_BYTES as f64 / 1048576.0,
        relay.stats().max_send_wait_ms.load(Ordering::Relaxed),
        relay.stats().consumer_too_slow.load(Ordering::Relaxed)
    );
    assert_eq!(
        cursor,
        BASE_SEQ + EVENTS - 1,
        "the cursor key names the last seq written"
    );
    assert_eq!(
        relay.stats().consumer_too_slow.load(Ordering::Relaxed),
        0,
        "the relay never saw us fall behind"
    );
    assert_eq!(source.reconnects_total.load(Ordering::Relaxed), 0);
    assert!(
        peak <= MEMORY_BUDGET_BYTES + SLACK_BYTES,
        "heap peak {peak} B over budget + slack"
    );
    let _ = stop.send(true);
    running.await.expect("join").expect("pipeline ends cleanly");
}
