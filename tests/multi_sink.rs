//! Several sinks on one queue (`sinks = ["redis", "jsonl"]`): the configuration key, a
//! lagging consumer at the queue level (memory stays within the tier, the rest spills,
//! the watermark waits for it), and the pipeline with a real redis-server and the
//! loopback relay: both sinks get every seq; Redis paused above its high-water mark while
//! JSON lines keep going, across a restart in the middle; Redis then catches up.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::counting_alloc::{self, CountingAlloc};
use common::redis_server::{drain_seqs, RedisServer};
use common::{jsonl_seqs, small_queue_config, wait_until};
use spillway::config::{Config, ConfigError};
use spillway::pipeline::Pipeline;
use spillway::queue::{Event, SpillQueue};
use spillway::source::relay::LoopbackRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// The pipeline tests run one at a time, so the heap peak measured is one pipeline's.
static PIPELINES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const STREAM: &str = "firehose_live";

fn load(toml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spillway.toml");
    std::fs::write(&path, toml).expect("write the config");
    Config::load(Some(&path), std::iter::empty())
}

fn refusal(toml: &str) -> String {
    match load(toml) {
        Ok(config) => panic!("{toml:?} was accepted: {:?}", config.sink_kinds()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn sinks_is_a_list_and_sink_stays_a_one_element_list() {
    let both = load("sinks = [\"redis\", \"jsonl\"]").expect("two sinks");
    assert_eq!(both.sink_kinds(), vec!["redis", "jsonl"]);
    let one = load("sink = \"jsonl\"").expect("one sink");
    assert_eq!(one.sink_kinds(), vec!["jsonl"]);
    assert_eq!(load("").expect("defaults").sink_kinds(), vec!["redis"]);
    let same = load("sink = \"jsonl\"\nsinks = [\"jsonl\"]").expect("the same sink twice over");
    assert_eq!(same.sink_kinds(), vec!["jsonl"]);
    let from_env = Config::load(
        None,
        [(
            "SPILLWAY_SINKS".to_string(),
            "[\"jsonl\", \"redis\"]".to_string(),
        )],
    )
    .expect("sinks from the environment");
    assert_eq!(from_env.sink_kinds(), vec!["jsonl", "redis"]);
}

#[test]
fn sink_and_sinks_set_to_different_sinks_are_refused_naming_both() {
    for toml in [
        "sink = \"redis\"\nsinks = [\"jsonl\"]",
        "sink = \"jsonl\"\nsinks = [\"redis\", \"jsonl\"]",
    ] {
        let error = refusal(toml);
        assert!(
            error.contains("sinks") && error.contains("both sink"),
            "{error}"
        );
    }
}

#[test]
fn a_sink_listed_twice_or_unknown_is_refused() {
    let twice = refusal("sinks = [\"redis\", \"jsonl\", \"redis\"]");
    assert!(
        twice.contains("sinks") && twice.contains("twice"),
        "{twice}"
    );
    let unknown = refusal("sinks = [\"redis\", \"kafka\"]");
    assert!(
        unknown.contains("sinks") && unknown.contains("kafka"),
        "{unknown}"
    );
    let unknown = refusal("sink = \"kafka\"");
    assert!(
        unknown.contains("invalid sink:") && unknown.contains("kafka"),
        "{unknown}"
    );
}

/// One consumer acks everything at once, the other reads nothing: the memory tier stays
/// within its share (the lagging consumer pins at most that), the rest spills, and the
/// watermark stays below the oldest event the lagging one has not acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_consumer_pins_at_most_the_memory_tier_and_the_rest_spills() {
    const EVENTS: u64 = 5_000;
    const BATCH: u64 = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SpillQueue::open(dir.path(), small_queue_config(64 * 1024)).expect("open");
    let mut fast = queue.consumer("jsonl").expect("fast consumer");
    let mut slow = queue.consumer("redis").expect("slow consumer");
    let mut fast_positions = Vec::new();
    for start in (1..=EVENTS).step_by(BATCH as usize) {
        let batch = (start..start + BATCH)
            .map(|p| Event::new(p, common::payload(p)))
            .collect();
        let report = queue.push_batch(batch).await.expect("push");
        assert!(report.dropped.is_empty());
        // The fast consumer keeps up: it reads and acks what was just pushed.
        while (fast_positions.len() as u64) < start + BATCH - 1 {
            let read = fast.next_batch(1_000, 1 << 20).await.expect("fast read");
            fast.ack(read.last().expect("non-empty").seq)
                .expect("fast ack");
            fast_positions.extend(read.iter().map(|d| d.position));
        }
        let stats = queue.stats();
        assert!(
            stats.memory_bytes <= stats.memory_tier_bytes,
            "memory {} over the tier {}",
            stats.memory_bytes,
            stats.memory_tier_bytes
        );
    }
    assert_eq!(fast_positions, (1..=EVENTS).collect::<Vec<_>>());
    let stats = queue.stats();
    assert!(stats.spilling, "the slow consumer's backlog spilled");
    assert!(stats.disk_events > 0 && stats.disk_bytes > 0, "{stats:?}");
    println!(
        "slow consumer behind by {EVENTS}: {} events ({} B) in memory (tier {} B), {} on disk",
        stats.memory_events, stats.memory_bytes, stats.memory_tier_bytes, stats.disk_events
    );
    assert_eq!(stats.memory_events + stats.disk_events, EVENTS);
    let by_name = |name: &str| {
        stats
            .consumers
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .expect("consumer stats")
    };
    assert_eq!(by_name("jsonl").lag_events, 0);
    assert_eq!(by_name("redis").lag_events, EVENTS);
    // Position 1 is only in memory and the slow consumer has not acked it: a relay
    // cursor saved now must not pass it.
    assert_eq!(queue.durable_watermark(), Some(0));

    let mut slow_positions = Vec::new();
    while (slow_positions.len() as u64) < EVENTS {
        let read = slow.next_batch(500, 1 << 20).await.expect("slow read");
        slow.ack(read.last().expect("non-empty").seq)
            .expect("slow ack");
        slow_positions.extend(read.iter().map(|d| d.position));
    }
    assert_eq!(slow_positions, (1..=EVENTS).collect::<Vec<_>>());
    let drained = queue.stats();
    assert_eq!(queue.durable_watermark(), Some(EVENTS));
    assert_eq!(drained.memory_events, 0);
    assert_eq!(
        drained.disk_events, 0,
        "every consumer acked: the log is consumed"
    );
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

fn two_sinks(data: &std::path::Path, relay: &LoopbackRelay, redis: &RedisServer) -> Config {
    Config {
        data_dir: data.join("data"),
        relays: vec![relay.url()],
        sinks: vec!["redis".into(), "jsonl".into()],
        jsonl_path: data.join("out.jsonl").display().to_string(),
        redis_url: redis.url(),
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    }
}

/// Every seq of `range`, in order, at least once; duplicates only where a restart replayed.
fn assert_every_seq_in_order(what: &str, seqs: &[u64], range: std::ops::Range<u64>) {
    let mut expected = range.start;
    for &seq in seqs {
        assert!(
            seq <= expected,
            "{what}: seq {seq} came when {expected} was due"
        );
        if seq == expected {
            expected += 1;
        }
    }
    assert_eq!(expected, range.end, "{what}: seqs from {expected} missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_jsonl_each_get_every_seq() {
    const BASE_SEQ: u64 = 90_000_000_000;
    const EVENTS: u64 = 3_000;
    let _one_at_a_time = PIPELINES.lock().await;
    let redis = RedisServer::start();
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, EVENTS))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        ..two_sinks(dir.path(), &relay, &redis)
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, lane) = (pipeline.stopper(), pipeline.lanes[0].clone());
    let kinds: Vec<(&str, &str)> = lane
        .sinks
        .iter()
        .map(|s| (s.kind.as_str(), s.consumer.as_str()))
        .collect();
    assert_eq!(kinds, vec![("redis", "redis"), ("jsonl", "jsonl")]);
    let running = tokio::spawn(pipeline.join());
    let url = redis.url();
    let in_redis = tokio::task::spawn_blocking(move || {
        drain_seqs(&url, STREAM, EVENTS, Duration::from_secs(120))
    })
    .await
    .expect("drain");
    assert_eq!(in_redis, (BASE_SEQ..BASE_SEQ + EVENTS).collect::<Vec<_>>());
    let out = std::path::PathBuf::from(&config.jsonl_path);
    wait_until(
        "every seq in the JSON lines",
        Duration::from_secs(60),
        || jsonl_seqs(&out).len() as u64 >= EVENTS,
    )
    .await;
    assert_eq!(
        jsonl_seqs(&out),
        (BASE_SEQ..BASE_SEQ + EVENTS).collect::<Vec<_>>()
    );
    for sink in &lane.sinks {
        wait_until("both sinks acked", Duration::from_secs(30), || {
            sink.stats.events_total.load(Ordering::Relaxed) == EVENTS
        })
        .await;
    }
    let _ = stop.send(true);
    running.await.expect("join").expect("a clean stop");
}

/// Memory and slack as in `e2e_redis.rs`: beyond the queue's budget, the relay's send
/// buffers, one Redis batch in hand (~3 MiB, held twice while encoding), one JSON-lines
/// batch (~3 MiB rendered), the test's XRANGE replies (2,000 frames, ~11 MiB), tokio.
const MEMORY_BUDGET_BYTES: u64 = 32 * 1024 * 1024;
const SLACK_BYTES: u64 = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_spills_its_backlog_while_jsonl_goes_on_and_catches_up_after_a_restart() {
    const BASE_SEQ: u64 = 91_000_000_000;
    const EVENTS: u64 = 14_000;
    const HIGH_WATER: u64 = 1_000;
    let _one_at_a_time = PIPELINES.lock().await;
    let redis = RedisServer::start();
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, EVENTS);
    // Paced, so the restart below falls in the middle of the relay's stream.
    relay_config.events_per_sec = Some(4_000);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: MEMORY_BUDGET_BYTES,
        redis_high_water_events: HIGH_WATER,
        redis_low_water_events: HIGH_WATER / 2,
        ..two_sinks(dir.path(), &relay, &redis)
    };
    let out = std::path::PathBuf::from(&config.jsonl_path);
    let baseline = counting_alloc::live_bytes() as u64;
    counting_alloc::reset_peak();

    // Phase one: Redis fills to its high-water mark and pauses; JSON lines go on. Stop
    // in the middle of the relay's stream.
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, lane) = (pipeline.stopper(), pipeline.lanes[0].clone());
    let running = tokio::spawn(pipeline.join());
    // Counters, not the file: reading the growing file would itself cost the heap measured.
    let jsonl_stats = lane.sink_stats("jsonl").expect("jsonl sink").clone();
    wait_until("a third in the JSON lines", Duration::from_secs(60), || {
        jsonl_stats.events_total.load(Ordering::Relaxed) >= EVENTS / 3
    })
    .await;
    let redis_stats = lane.sink_stats("redis").expect("redis sink").clone();
    wait_until("redis paused", Duration::from_secs(60), || {
        redis_stats.backpressure.load(Ordering::Relaxed) == 1
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("a clean stop");
    let cursor_file = std::fs::read_dir(&config.data_dir)
        .expect("data_dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("cursor-"))
        .expect("a cursor file")
        .path();
    let saved: u64 = std::fs::read_to_string(&cursor_file)
        .expect("cursor file")
        .trim()
        .parse()
        .expect("a decimal cursor");
    let redis_len: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query(&mut redis.connection())
        .expect("XLEN");
    println!(
        "stopped in the middle: relay cursor saved {saved} ({} events in), Redis holds {redis_len}, JSON lines {}, queue log {} events",
        saved + 1 - BASE_SEQ,
        jsonl_stats.events_total.load(Ordering::Relaxed),
        lane.queue.stats().disk_events
    );
    assert!(
        saved < BASE_SEQ + EVENTS - 1,
        "stopped before the relay's end"
    );
    // The cursor passes what Redis has written only by events the queue's log holds
    // for it (memory events it had not acked hold the cursor back: they are replayed).
    let on_disk = lane.queue.stats().disk_events;
    assert!(
        (saved + 1 - BASE_SEQ).saturating_sub(redis_len) <= on_disk,
        "cursor {saved} passes Redis's {redis_len} events by more than the {on_disk} on disk"
    );
    drop((lane, redis_stats, jsonl_stats));

    // Phase two: restarted from the saved cursor (start_cursor unset). JSON lines get
    // everything while Redis stays paused; its backlog is on disk, memory within budget.
    let config = Config {
        start_cursor: None,
        ..config
    };
    let pipeline = Pipeline::start(&config, 0).expect("restart");
    let (stop, lane) = (pipeline.stopper(), pipeline.lanes[0].clone());
    let metrics_addr = pipeline.metrics_addr.expect("metrics");
    let running = tokio::spawn(pipeline.join());
    let jsonl_done = || {
        let stats = lane.queue.stats();
        lane.source.last_seq.load(Ordering::Relaxed) == BASE_SEQ + EVENTS - 1
            && stats
                .consumers
                .iter()
                .any(|c| c.name == "jsonl" && c.lag_events + c.unacked_events == 0)
    };
    wait_until(
        "every seq through the JSON lines",
        Duration::from_secs(120),
        jsonl_done,
    )
    .await;
    let redis_stats = lane.sink_stats("redis").expect("redis sink").clone();
    wait_until("redis paused again", Duration::from_secs(60), || {
        redis_stats.backpressure.load(Ordering::Relaxed) == 1
    })
    .await;
    let stats = lane.queue.stats();
    let lag = |name: &str| {
        let c = stats
            .consumers
            .iter()
            .find(|c| c.name == name)
            .expect("consumer");
        c.lag_events + c.unacked_events
    };
    println!(
        "jsonl done, redis paused: queue {} events / {} B on disk, memory {} B of tier {} B; lag redis {}, jsonl {}",
        stats.disk_events,
        stats.disk_bytes,
        stats.memory_bytes,
        stats.memory_tier_bytes,
        lag("redis"),
        lag("jsonl")
    );
    assert_eq!(lag("jsonl"), 0, "jsonl is not held back by redis");
    assert!(lag("redis") > 0);
    assert!(
        stats.disk_events > 0 && stats.disk_bytes > 0,
        "redis's backlog spilled: {stats:?}"
    );
    assert!(stats.memory_bytes <= stats.memory_tier_bytes);
    let metrics = get(metrics_addr, "/metrics").await;
    let host = &lane.host;
    for line in [
        format!("spillway_sink_backpressure{{host=\"{host}\",source=\"firehose\",sink=\"redis\"}} 1"),
        format!("spillway_sink_backpressure{{host=\"{host}\",source=\"firehose\",sink=\"jsonl\"}} 0"),
        format!("spillway_consumer_lag_events{{host=\"{host}\",source=\"firehose\",consumer=\"jsonl\"}} 0"),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "spillway_sink_events_total{{host=\"{host}\",source=\"firehose\",sink=\"jsonl\"}}"
        )),
        "{metrics}"
    );

    println!(
        "heap peak before Redis is drained: {:.1} MiB",
        (counting_alloc::peak_bytes() as u64 - baseline) as f64 / 1048576.0
    );
    // Phase three: Redis drained like a downstream reader: it catches up, every seq.
    let url = redis.url();
    let in_redis = tokio::task::spawn_blocking(move || {
        drain_seqs(&url, STREAM, EVENTS, Duration::from_secs(300))
    })
    .await
    .expect("drain");
    assert_every_seq_in_order("redis", &in_redis, BASE_SEQ..BASE_SEQ + EVENTS);
    let peak = counting_alloc::peak_bytes() as u64 - baseline;
    println!(
        "redis caught up: {} entries for {EVENTS} seqs; heap peak {:.1} MiB (budget {:.0} + slack {:.0})",
        in_redis.len(),
        peak as f64 / 1048576.0,
        MEMORY_BUDGET_BYTES as f64 / 1048576.0,
        SLACK_BYTES as f64 / 1048576.0
    );
    assert!(
        peak <= MEMORY_BUDGET_BYTES + SLACK_BYTES,
        "heap peak {peak} B over budget + slack"
    );
    assert_every_seq_in_order("jsonl", &jsonl_seqs(&out), BASE_SEQ..BASE_SEQ + EVENTS);
    let _ = stop.send(true);
    running.await.expect("join").expect("a clean stop");
}

/// Redis down from the start: its sink retries, JSON lines get everything, `/health`
/// names the failing sink; Redis started on its port: it catches up, every seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_holds_back_neither_jsonl_nor_its_own_catch_up() {
    const BASE_SEQ: u64 = 92_000_000_000;
    const EVENTS: u64 = 2_000;
    let _one_at_a_time = PIPELINES.lock().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, EVENTS))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().join("data"),
        relays: vec![relay.url()],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        sinks: vec!["redis".into(), "jsonl".into()],
        jsonl_path: dir.path().join("out.jsonl").display().to_string(),
        redis_url: format!("redis://127.0.0.1:{port}"),
        metrics_listen: "127.0.0.1:0".into(),
        health_sink_failure_secs: 0,
        ..Config::default()
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, lane) = (pipeline.stopper(), pipeline.lanes[0].clone());
    let metrics_addr = pipeline.metrics_addr.expect("metrics");
    let running = tokio::spawn(pipeline.join());
    let (redis_stats, jsonl_stats) = (
        lane.sink_stats("redis").expect("redis").clone(),
        lane.sink_stats("jsonl").expect("jsonl").clone(),
    );
    wait_until("jsonl writes everything", Duration::from_secs(60), || {
        jsonl_stats.events_total.load(Ordering::Relaxed) == EVENTS
            && redis_stats.failures_total.load(Ordering::Relaxed) > 0
    })
    .await;
    assert_eq!(redis_stats.events_total.load(Ordering::Relaxed), 0);
    let health = get(metrics_addr, "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("the redis sink has failed"),
        "{health}"
    );
    assert!(!health.contains("jsonl sink"), "{health}");

    let redis = RedisServer::start_on(port);
    let url = redis.url();
    let in_redis = tokio::task::spawn_blocking(move || {
        drain_seqs(&url, STREAM, EVENTS, Duration::from_secs(120))
    })
    .await
    .expect("drain");
    assert_every_seq_in_order("redis", &in_redis, BASE_SEQ..BASE_SEQ + EVENTS);
    assert_eq!(
        jsonl_seqs(std::path::Path::new(&config.jsonl_path)),
        (BASE_SEQ..BASE_SEQ + EVENTS).collect::<Vec<_>>()
    );
    let _ = stop.send(true);
    running.await.expect("join").expect("a clean stop");
}
