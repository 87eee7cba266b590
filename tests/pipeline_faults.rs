//! Bad input from the relay and an unreachable Redis: a clear log line or error each, and
//! nothing lost that the relay can give again.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::redis_server::{drain_seqs_blocking, RedisServer};
use spillway::config::Config;
use spillway::pipeline::{Pipeline, PipelineError};
use spillway::source::firehose::SourceError;
use spillway::source::relay::{Fault, LoopbackRelay, RelayConfig};

const BASE_SEQ: u64 = 50_000_000_000;

fn jsonl_config(dir: &std::path::Path, relay: &LoopbackRelay, out: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        relays: vec![relay.url()],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        sink: "jsonl".into(),
        jsonl_path: out.display().to_string(),
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    }
}

async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(60), done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_dropped_connections_lose_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("spillway=info")
        .with_test_writer()
        .try_init();
    let total = 3_000;
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, total);
    relay_config.faults = vec![
        (BASE_SEQ + 500, Fault::Garbage),
        (BASE_SEQ + 1_200, Fault::Truncated),
        (BASE_SEQ + 1_800, Fault::DropConnection),
        (
            BASE_SEQ + 2_400,
            Fault::ErrorFrame("ConsumerTooSlow".into()),
        ),
    ];
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let mut config = jsonl_config(dir.path(), &relay, &out);
    config.data_dir = dir.path().join("data");
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, source) = (pipeline.stopper(), pipeline.lanes[0].source.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("every event in the file", || {
        common::jsonl_seqs(&out).len() as u64 >= total
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
    let seqs = common::jsonl_seqs(&out);
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len() as u64, total, "every seq arrived");
    assert_eq!(unique.first(), Some(&BASE_SEQ));
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: the source resumes after the last frame it pushed"
    );
    assert_eq!(
        source.decode_errors_total.load(Ordering::Relaxed),
        2,
        "garbage and truncation were seen"
    );
    assert_eq!(source.error_frames_total.load(Ordering::Relaxed), 1);
    let reconnects = source.reconnects_total.load(Ordering::Relaxed);
    println!(
        "reconnects {reconnects}, relay connections {}",
        relay.stats().connections.load(Ordering::Relaxed)
    );
    assert!(reconnects >= 4, "each fault cost a reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_dropped_counted_and_the_rest_arrives() {
    let total = 400;
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, total);
    relay_config.faults = vec![(BASE_SEQ + 100, Fault::Oversized(200_000))];
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let mut config = jsonl_config(dir.path(), &relay, &out);
    config.frame_bytes_max = 100_000;
    config.data_dir = dir.path().join("data");
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, source) = (pipeline.stopper(), pipeline.lanes[0].source.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("the frames after the oversized one", || {
        common::jsonl_seqs(&out).last() == Some(&(BASE_SEQ + total - 1))
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
    let seqs: BTreeSet<u64> = common::jsonl_seqs(&out).into_iter().collect();
    assert_eq!(source.oversized_total.load(Ordering::Relaxed), 1);
    assert!(
        !seqs.contains(&(BASE_SEQ + 100)),
        "the oversized frame is dropped (and logged with its seq)"
    );
    assert_eq!(seqs.len() as u64, total - 1, "everything else arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_cursor_stops_the_source_with_an_error_naming_the_cursor_file() {
    let mut relay_config =
        RelayConfig::from_capture(&common::fixture::frames_bin(), BASE_SEQ).expect("fixture");
    relay_config.total_events = Some(10);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let mut config = jsonl_config(dir.path(), &relay, &out);
    config.start_cursor = Some(BASE_SEQ + 1_000);
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let outcome = tokio::time::timeout(Duration::from_secs(30), pipeline.join())
        .await
        .expect("it stops by itself");
    match outcome {
        Err(PipelineError::Source(SourceError::FutureCursor {
            cursor,
            cursor_file,
            ..
        })) => {
            assert_eq!(cursor, Some(BASE_SEQ + 1_000));
            assert!(cursor_file.contains("cursor-"), "{cursor_file}");
        }
        other => panic!("expected FutureCursor, got {other:?}"),
    }
    assert_eq!(
        relay.stats().connections.load(Ordering::Relaxed),
        1,
        "not retried in a loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_keeps_events_queued_until_it_comes_up() {
    let total = 5_000;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let relay_config = common::fixture::relay_config(BASE_SEQ, total);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        relays: vec![relay.url()],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        redis_url: format!("redis://127.0.0.1:{port}"),
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, queue, source, sink) = (
        pipeline.stopper(),
        pipeline.lanes[0].queue.clone(),
        pipeline.lanes[0].source.clone(),
        pipeline.lanes[0].sinks[0].stats.clone(),
    );
    let running = tokio::spawn(pipeline.join());
    wait_for("every frame received while Redis is down", || {
        source.frames_total.load(Ordering::Relaxed) == total
    })
    .await;
    wait_for("a failed write", || {
        sink.failures_total.load(Ordering::Relaxed) > 0
    })
    .await;
    assert_eq!(
        sink.events_total.load(Ordering::Relaxed),
        0,
        "nothing acked while Redis is down"
    );
    assert!(sink.failing_since_ms.load(Ordering::Relaxed) > 0);
    assert_eq!(queue.stats().consumers[0].acked_seq_next, 0);

    let redis = RedisServer::start_on(port);
    let url = redis.url();
    let seqs = drain_seqs_blocking(url, "firehose_live", total, Duration::from_secs(60)).await;
    assert_eq!(
        seqs,
        (BASE_SEQ..BASE_SEQ + total).collect::<Vec<_>>(),
        "every event, in order, once"
    );
    assert_eq!(
        sink.failing_since_ms.load(Ordering::Relaxed),
        0,
        "recovered"
    );
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
}

#[test]
fn bad_configuration_values_are_refused_with_the_key_named() {
    let cases = [
        ("SPILLWAY_FULL_POLICY", "sometimes", "full_policy"),
        ("SPILLWAY_SINK", "kafka", "sink"),
        ("SPILLWAY_RELAYS", "[\"http://example\"]", "relays"),
        (
            "SPILLWAY_REDIS_LOW_WATER_EVENTS",
            "200000",
            "redis_low_water_events",
        ),
        (
            "SPILLWAY_MEMORY_BUDGET_BYTES",
            "1000",
            "memory_budget_bytes",
        ),
        ("SPILLWAY_DURABILITY", "sometimes", "durability"),
        (
            "SPILLWAY_MEMORY_BUDGET_BYTES",
            "lots",
            "memory_budget_bytes",
        ),
        ("SPILLWAY_NO_SUCH_KEY", "1", "no_such_key"),
        ("SPILLWAY_OUTPUT_FORMAT", "xml", "output_format"),
        ("SPILLWAY_LOG_LEVEL", "spillway=loud", "log_level"),
        (
            "SPILLWAY_WANTED_COLLECTIONS",
            "[\"app.*.post\"]",
            "wanted_collections",
        ),
        ("SPILLWAY_WANTED_DIDS", "[\"alice\"]", "wanted_dids"),
    ];
    for (name, value, key) in cases {
        let error = Config::load(None, [(name.to_string(), value.to_string())])
            .expect_err(name)
            .to_string();
        assert!(error.contains(key), "{name}={value}: {error}");
    }
    let ok = Config::load(
        None,
        [(
            "SPILLWAY_MEMORY_BUDGET_BYTES".to_string(),
            "134217728".to_string(),
        )],
    )
    .expect("valid");
    assert_eq!(ok.memory_budget_bytes, 134_217_728);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spillway.toml");
    std::fs::write(&file, "sink = \"jsonl\"\nmemory_budget_bytes = 100000000\n").expect("write");
    let from_file = Config::load(
        Some(&file),
        [(
            "SPILLWAY_MEMORY_BUDGET_BYTES".to_string(),
            "90000000".to_string(),
        )],
    )
    .expect("file + env");
    assert_eq!(
        (from_file.sink.as_str(), from_file.memory_budget_bytes),
        ("jsonl", 90_000_000),
        "the environment overrides the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_with_status_3_on_a_future_cursor_so_supervisors_do_not_loop() {
    let mut relay_config =
        RelayConfig::from_capture(&common::fixture::frames_bin(), BASE_SEQ).expect("fixture");
    relay_config.total_events = Some(10);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--progress-secs", "0"])
        .env("SPILLWAY_DATA_DIR", dir.path().join("data"))
        .env("SPILLWAY_RELAYS", format!("[\"{}\"]", relay.url()))
        .env("SPILLWAY_START_CURSOR", (BASE_SEQ + 1_000).to_string())
        .env("SPILLWAY_SINK", "\"jsonl\"")
        .env(
            "SPILLWAY_JSONL_PATH",
            format!("{:?}", dir.path().join("out.jsonl")),
        )
        .env("SPILLWAY_METRICS_LISTEN", "\"127.0.0.1:0\"")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("it stops by itself")
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("FutureCursor"), "{stderr}");
}

/// Every key of the configuration with a value it must refuse: the error names that key.
#[test]
fn every_key_refuses_a_bad_value_naming_that_key() {
    let cases: &[(&str, &str)] = &[
        ("data_dir", "\"\""),
        ("relays", "[]"),
        ("start_cursor", "-1"),
        ("labelers", "[\"https://mod.example\"]"),
        ("memory_budget_bytes", "1000"),
        ("disk_budget_bytes", "0"),
        ("durability", "periodic:0"),
        ("full_policy", "sometimes"),
        ("spill_mode", "fast"),
        ("frame_bytes_max", "0"),
        ("sink", "kafka"),
        ("sinks", "[\"redis\", \"redis\"]"),
        ("output_format", "xml"),
        ("wanted_collections", "[\"app.*.post\"]"),
        ("wanted_dids", "[\"alice\"]"),
        ("redis_url", "redis://:pw-in-error@127.0.0.1:port"),
        ("redis_stream", "\"\""),
        ("redis_label_stream", "\"\""),
        ("redis_high_water_events", "many"),
        ("redis_low_water_events", "200000"),
        ("nats_urls", "[\"nats://u:pw-in-error@127.0.0.1:port\"]"),
        ("nats_stream", "a.b"),
        ("nats_subject_prefix", "a..b"),
        ("nats_replicas", "7"),
        ("nats_duplicate_window_secs", "0"),
        ("nats_ack_window_events", "5000"),
        ("nats_connect_timeout_ms", "0"),
        ("nats_ack_timeout_ms", "0"),
        ("nats_token", "[1]"),
        ("nats_user", "spillway"),
        ("nats_password", "pw-in-error"),
        ("nats_creds_file", "/nonexistent/spillway.creds"),
        ("nats_tls_ca_file", "/nonexistent/ca.pem"),
        ("nats_tls_cert_file", "/nonexistent/cert.pem"),
        ("nats_tls_key_file", "/nonexistent/key.pem"),
        ("redis_idempotent_ids", "maybe"),
        ("redis_multi_events_max", "0"),
        ("redis_transactions_in_flight_max", "0"),
        ("redis_tls_ca_file", "/ca.pem"),
        ("redis_tls_cert_file", "/cert.pem"),
        ("redis_tls_key_file", "/key.pem"),
        ("jsonl_path", "\"\""),
        ("sink_batch_events_max", "0"),
        ("sink_batch_bytes_max", "0"),
        ("backlog_alert_events", "lots"),
        ("heap_trim_interval_ms", "5"),
        ("log_format", "xml"),
        ("log_level", "spillway=loud"),
        ("metrics_listen", "localhost"),
        ("health_sink_failure_secs", "soon"),
        ("health_disk_full_ratio", "1.5"),
        ("health_lost_events_secs", "soon"),
        ("segment_bytes_max", "4096"),
        ("disk_reserve_bytes", "4294967296"),
        ("disk_free_margin_bytes", "99999999999999"),
        ("repo_listing_hosts", "[\"wss://relay.example\"]"),
        ("repo_listing_page_bytes_max", "0"),
        ("redis_repo_stream", "\"\""),
    ];
    // The table covers every key the configuration has.
    let every_key: std::collections::BTreeSet<String> = toml::Value::try_from(Config {
        start_cursor: Some(1),
        ..Config::default()
    })
    .expect("serialize")
    .as_table()
    .expect("a table")
    .keys()
    .cloned()
    .collect();
    let covered: std::collections::BTreeSet<String> =
        cases.iter().map(|(key, _)| key.to_string()).collect();
    assert_eq!(covered, every_key, "a bad value for every key");
    for (key, value) in cases {
        let name = format!("SPILLWAY_{}", key.to_ascii_uppercase());
        let error = Config::load(None, [(name, value.to_string())])
            .expect_err(key)
            .to_string();
        assert!(error.contains(key), "{key}={value}: {error}");
        for other in &every_key {
            // A key whose name holds another's (`sink` in `sink_batch_...`) is not a miss.
            if other != key && !other.contains(key) && !key.contains(other.as_str()) {
                let names_other = error.contains(other.as_str())
                    && !(*key == "redis_low_water_events" && other == "redis_high_water_events");
                assert!(!names_other, "{key}={value} names {other}: {error}");
            }
        }
        assert!(
            !error.contains("pw-in-error"),
            "a password in an error: {error}"
        );
    }
    let error = Config::load(
        None,
        [("SPILLWAY_FRAME_BYTES_MAX".into(), (1u64 << 40).to_string())],
    )
    .expect_err("a frame larger than the log's record limit")
    .to_string();
    assert!(error.contains("frame_bytes_max"), "{error}");
}
