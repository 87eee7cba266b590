//! The labeler source end to end on loopback: `subscribeLabels` frames built from the
//! lexicon with our own CBOR writer, served by the loopback relay, through the pipeline
//! into a real redis-server. Every `label_live` entry must equal what the rsky ingester
//! writes, which these tests build with its own serde definitions.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::labels::{label_frames, start_labeler};
use common::redis_server::RedisServer;
use spillway::config::Config;
use spillway::pipeline::{Lane, Pipeline};
use spillway::source::relay::{Fault, LoopbackRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LABEL_FRAMES: u64 = 300;
const RELAY_BASE_SEQ: u64 = 90_000_000_000;
const RELAY_EVENTS: u64 = 20;

fn config(
    dir: &std::path::Path,
    relay: &LoopbackRelay,
    labeler: &LoopbackRelay,
    redis: &RedisServer,
) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        relays: vec![relay.url()],
        start_cursor: Some(RELAY_BASE_SEQ - 1),
        labelers: vec![labeler.labels_url()],
        output_format: "rsky".into(),
        redis_url: redis.url(),
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    }
}

fn lane<'a>(pipeline: &'a Pipeline, host: &str) -> &'a Lane {
    pipeline
        .lanes
        .iter()
        .find(|l| l.host == host)
        .unwrap_or_else(|| panic!("no lane {host}"))
}

/// Reads and deletes `label_live` entries from its head until `count` arrived: their `labels` fields.
fn drain_labels(url: &str, count: u64, timeout: Duration) -> Vec<String> {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connection");
    let started = Instant::now();
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        assert!(
            started.elapsed() < timeout,
            "only {} of {count} label entries arrived within {timeout:?}",
            out.len()
        );
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("label_live")
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query(&mut c)
            .expect("XRANGE");
        if entries.ids.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut ids = Vec::new();
        for entry in &entries.ids {
            assert_eq!(entry.map.len(), 1, "one field per entry, as rsky writes");
            let labels: String = entry.get("labels").expect("field labels");
            out.push(labels);
            ids.push(entry.id.clone());
        }
        let _: u64 = redis::cmd("XDEL")
            .arg("label_live")
            .arg(&ids)
            .query(&mut c)
            .expect("XDEL");
    }
    out
}

fn assert_entries(got: &[String], expected: &[String]) {
    assert_eq!(got.len(), expected.len(), "one entry per #labels frame");
    for (seq, (got, want)) in (1..).zip(got.iter().zip(expected)) {
        assert_eq!(got, want, "the label_live entry of seq {seq}");
    }
}

fn cursor_key(redis: &RedisServer, labeler: &LoopbackRelay) -> u64 {
    redis::cmd("GET")
        .arg(format!("label_live:cursor:{}", labeler.addr()))
        .query(&mut redis.connection())
        .expect("the labeler's cursor key")
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

/// Log lines of this test binary (every test's; each looks for its own host).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Capture;
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().expect("logs").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Capture)
            .try_init();
        Mutex::new(Vec::new())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_label_arrives_in_label_live_as_rsky_writes_it_through_backpressure() {
    let redis = RedisServer::start();
    let relay = LoopbackRelay::start(common::fixture::relay_config(RELAY_BASE_SEQ, RELAY_EVENTS))
        .await
        .expect("relay");
    let (frames, expected) = label_frames(LABEL_FRAMES);
    let labeler = start_labeler(frames, Vec::new()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), &relay, &labeler, &redis);
    // Every event through the spill log, and the stream held at its high-water mark until
    // the labeler has sent everything: the backlog waits in our queue, not in Redis.
    config.spill_mode = "write-through".into();
    config.redis_high_water_events = 50;
    config.redis_low_water_events = 25;
    // Small batches, so the sink meets the mark with labels still to write.
    config.sink_batch_events_max = 20;
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let host = labeler.addr().to_string();
    let (queue, source, sink) = {
        let lane = lane(&pipeline, &host);
        (
            lane.queue.clone(),
            lane.source.clone(),
            lane.sinks[0].stats.clone(),
        )
    };
    let metrics = pipeline.metrics_addr.expect("metrics listen");
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());

    let held = Instant::now();
    while !(sink.backpressure.load(Ordering::Relaxed) == 1
        && source.frames_total.load(Ordering::Relaxed) == LABEL_FRAMES)
    {
        assert!(
            held.elapsed() < Duration::from_secs(60),
            "never held with every label received"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = queue.stats();
    assert!(
        stats.spilled_events_total >= LABEL_FRAMES,
        "the labels went through the spill log: {stats:?}"
    );
    let url = redis.url();
    let got = tokio::task::spawn_blocking(move || {
        drain_labels(&url, LABEL_FRAMES, Duration::from_secs(60))
    })
    .await
    .expect("drain");
    assert_entries(&got, &expected);
    while sink.events_total.load(Ordering::Relaxed) < LABEL_FRAMES {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        cursor_key(&redis, &labeler),
        LABEL_FRAMES,
        "label_live:cursor:<host> names the last seq written"
    );
    let firehose_entries: u64 = redis::cmd("XLEN")
        .arg("firehose_live")
        .query(&mut redis.connection())
        .expect("XLEN");
    assert!(
        firehose_entries > 0,
        "the relay's lane runs beside the labeler's"
    );

    let scrape = get(metrics, "/metrics").await;
    for line in [
        format!("spillway_source_events_total{{host=\"{host}\",source=\"labels\"}} {LABEL_FRAMES}"),
        format!("spillway_sink_events_total{{host=\"{host}\",source=\"labels\",sink=\"redis\"}} {LABEL_FRAMES}"),
        format!("spillway_relay_cursor{{host=\"{host}\",source=\"labels\"}} {LABEL_FRAMES}"),
        format!("spillway_source_connected{{host=\"{host}\",source=\"labels\"}} 1"),
    ] {
        assert!(scrape.contains(&line), "/metrics has {line:?}:\n{scrape}");
    }
    assert_eq!(sink.decode_errors_total.load(Ordering::Relaxed), 0);

    let _ = stop.send(true);
    running.await.expect("join").expect("pipeline ends cleanly");
    let name = format!("labels-{}", host.replace(':', "_"));
    assert!(
        dir.path().join(format!("queue-{name}")).is_dir(),
        "its own queue directory"
    );
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("inspect")
        .arg(dir.path())
        .output()
        .expect("spillway inspect");
    let shown = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success(),
        "inspect: {shown} {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(
        shown.contains(&format!("queue-{name}")),
        "inspect shows the labeler's queue:\n{shown}"
    );
    assert!(
        shown.contains(&format!("cursor-{name}: {LABEL_FRAMES}")),
        "inspect shows the labeler's durable cursor:\n{shown}"
    );

    // A restart resumes after the last label, from the cursor file.
    drop(queue);
    let pipeline = Pipeline::start(&config, 0).expect("pipeline again");
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());
    let waited = Instant::now();
    while labeler.stats().connections.load(Ordering::Relaxed) < 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "never reconnected after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        labeler.stats().last_cursor.load(Ordering::Relaxed),
        LABEL_FRAMES
    );
    let _ = stop.send(true);
    running.await.expect("join").expect("pipeline ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_and_an_error_frame_resume_from_the_cursor_with_nothing_missing() {
    let redis = RedisServer::start();
    let relay = LoopbackRelay::start(common::fixture::relay_config(RELAY_BASE_SEQ, RELAY_EVENTS))
        .await
        .expect("relay");
    let (frames, expected) = label_frames(LABEL_FRAMES);
    let faults = vec![
        (120, Fault::DropConnection),
        (240, Fault::ErrorFrame("ConsumerTooSlow".into())),
    ];
    let labeler = start_labeler(frames, faults).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline =
        Pipeline::start(&config(dir.path(), &relay, &labeler, &redis), 0).expect("pipeline");
    let source = lane(&pipeline, &labeler.addr().to_string()).source.clone();
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());

    let url = redis.url();
    let got = tokio::task::spawn_blocking(move || {
        drain_labels(&url, LABEL_FRAMES, Duration::from_secs(60))
    })
    .await
    .expect("drain");
    assert_entries(&got, &expected);
    assert_eq!(
        labeler.stats().connections.load(Ordering::Relaxed),
        3,
        "two reconnects"
    );
    assert_eq!(
        labeler.stats().last_cursor.load(Ordering::Relaxed),
        239,
        "the last reconnect resumed after the last label pushed"
    );
    assert_eq!(source.reconnects_total.load(Ordering::Relaxed), 2);
    assert_eq!(source.error_frames_total.load(Ordering::Relaxed), 1);
    assert_eq!(
        source.frames_total.load(Ordering::Relaxed),
        LABEL_FRAMES,
        "no label pushed twice"
    );
    let _ = stop.send(true);
    running.await.expect("join").expect("pipeline ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_named_in_the_log_and_loses_nothing() {
    let logs = logs();
    let redis = RedisServer::start();
    let relay = LoopbackRelay::start(common::fixture::relay_config(RELAY_BASE_SEQ, RELAY_EVENTS))
        .await
        .expect("relay");
    let (frames, expected) = label_frames(LABEL_FRAMES);
    let faults = vec![(50, Fault::Garbage), (150, Fault::Truncated)];
    let labeler = start_labeler(frames, faults).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline =
        Pipeline::start(&config(dir.path(), &relay, &labeler, &redis), 0).expect("pipeline");
    let host = labeler.addr().to_string();
    let (source, sink) = {
        let lane = lane(&pipeline, &host);
        (lane.source.clone(), lane.sinks[0].stats.clone())
    };
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());

    let url = redis.url();
    let got = tokio::task::spawn_blocking(move || {
        drain_labels(&url, LABEL_FRAMES, Duration::from_secs(60))
    })
    .await
    .expect("drain");
    assert_entries(&got, &expected);
    assert_eq!(
        source.decode_errors_total.load(Ordering::Relaxed),
        2,
        "both bad frames counted"
    );
    assert_eq!(source.reconnects_total.load(Ordering::Relaxed), 2);
    assert_eq!(
        sink.decode_errors_total.load(Ordering::Relaxed),
        0,
        "no bad frame reached the queue"
    );
    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    let named: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("invalid frame") && l.contains(&host))
        .collect();
    assert_eq!(named.len(), 2, "each bad frame has its error line:\n{text}");
    for line in &named {
        assert!(
            line.contains("peer=\"labeler\"") && line.contains("error="),
            "the line says which labeler and why: {line}"
        );
    }
    assert!(named[0].contains("after_seq=Some(49)"), "{}", named[0]);
    assert!(named[1].contains("after_seq=Some(149)"), "{}", named[1]);
    let _ = stop.send(true);
    running.await.expect("join").expect("pipeline ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_range_of_labels_is_fetched_again_from_the_labeler() {
    use spillway::source::labeler::{labeler_config, LabelerSource};
    use spillway::source::{RefetchEnd, Source};
    let (frames, expected) = label_frames(40);
    let labeler = start_labeler(frames, Vec::new()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = LabelerSource::new(labeler_config(labeler.labels_url()), dir.path());
    let refetcher = source
        .refetcher()
        .expect("a labeler takes a cursor, so it can refetch");
    let mut range = refetcher.fetch(10, 21).await.expect("connects");
    let mut events = Vec::new();
    while let Some(batch) = range.next_batch().await.expect("reads") {
        events.extend(batch);
    }
    assert_eq!(range.end(), RefetchEnd::Complete);
    let seqs: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(
        seqs,
        (11..=20).collect::<Vec<u64>>(),
        "exactly the lost range"
    );
    for event in &events {
        let line = spillway::decode::labels::render_rsky(&event.payload, 1 << 20)
            .expect("renders")
            .expect("a #labels frame");
        assert_eq!(line, expected[event.position as usize - 1]);
    }
}

#[test]
fn a_labeler_alone_is_a_configuration_and_no_source_is_refused() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // What the rsky ingester's INGESTER_MODE=labeler with INGESTER_LABELER_HOSTS=mod.bsky.app maps to.
    let config = Config::load(
        None,
        env(&[
            ("SPILLWAY_RELAYS", "[]"),
            (
                "SPILLWAY_LABELERS",
                "[\"wss://mod.bsky.app/xrpc/com.atproto.label.subscribeLabels\"]",
            ),
        ]),
    )
    .expect("a labeler alone is a configuration");
    assert!(config.relays.is_empty());
    assert_eq!(
        config.labelers,
        ["wss://mod.bsky.app/xrpc/com.atproto.label.subscribeLabels"]
    );
    assert_eq!(
        config.queue_count(),
        1,
        "the budgets go to the labeler's queue"
    );
    let sources = spillway::pipeline::kinds::sources(&config);
    assert_eq!(sources.len(), 1);
    assert_eq!(
        sources[0].label(),
        "mod.bsky.app",
        "the host of its label_live:cursor: key"
    );
    let error = Config::load(None, env(&[("SPILLWAY_RELAYS", "[]")]))
        .expect_err("no source")
        .to_string();
    assert!(
        error.contains("relays") && error.contains("no source"),
        "{error}"
    );
    let error = Config::load(
        None,
        env(&[("SPILLWAY_LABELERS", "[\"https://mod.bsky.app\"]")]),
    )
    .expect_err("not a ws URL")
    .to_string();
    assert!(
        error.contains("labelers") && error.contains("https://mod.bsky.app"),
        "{error}"
    );
    let error = Config::load(
        None,
        env(&[
            (
                "SPILLWAY_LABELERS",
                "[\"wss://mod.bsky.app/xrpc/com.atproto.label.subscribeLabels\"]",
            ),
            ("SPILLWAY_REDIS_LABEL_STREAM", "firehose_live"),
        ]),
    )
    .expect_err("one stream for both")
    .to_string();
    assert!(error.contains("redis_label_stream"), "{error}");
}
