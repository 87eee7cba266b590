//! `/metrics` parsed by a Prometheus text parser, and `/health` through its transitions:
//! healthy, a backlog over the alert threshold (503 + reason), caught up, relay gone.

mod common;

use std::time::{Duration, Instant};

use spillway::config::Config;
use spillway::pipeline::Pipeline;
use spillway::source::relay::LoopbackRelay;

const BASE_SEQ: u64 = 70_000_000_000;
const EVENTS: u64 = 2_000;

fn sample(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .unwrap_or_else(|| panic!("no metric {name}"));
    match found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a number"),
    }
}

async fn wait_for_health(addr: std::net::SocketAddr, status: u16, containing: &str) -> String {
    let started = Instant::now();
    loop {
        let (code, body) = common::http::get_status_and_body(addr, "/health").await;
        if code == status && body.contains(containing) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "health stayed {code} {body}, waiting for {status} with {containing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_health_follows_the_backlog_and_the_relay() {
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, EVENTS))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().join("data"),
        relays: vec![relay.url()],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        sink: "jsonl".into(),
        jsonl_path: dir.path().join("out.jsonl").display().to_string(),
        backlog_alert_events: 500,
        // Every event goes through the log, so the spill and read-back rates move.
        spill_mode: "write-through".into(),
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    // A sink of 1,000 events/s behind a relay that sends 2,000 at once: the backlog crosses 500.
    let pipeline = Pipeline::start(&config, 1_000).expect("pipeline");
    let addr = pipeline.metrics_addr.expect("metrics listen");
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());

    let body = wait_for_health(addr, 503, "backlog alert").await;
    assert!(
        body.starts_with("{\"healthy\":false,\"reasons\":["),
        "{body}"
    );

    // While the sink lags: the lag's age, the rates and the relay cursor's age show it.
    let started = Instant::now();
    loop {
        let (_, text) = common::http::get_status_and_body(addr, "/metrics").await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        let lag_seconds = sample(&scrape, "spillway_consumer_lag_seconds");
        assert!(
            lag_seconds.is_finite() && lag_seconds >= 0.0,
            "{lag_seconds}"
        );
        // The fixture's events are from 2024: the relay cursor is old.
        let cursor_age = sample(&scrape, "spillway_relay_cursor_age_seconds");
        assert!(cursor_age > 86_400.0, "{cursor_age}");
        if lag_seconds > 0.0
            && sample(&scrape, "spillway_spill_events_per_second") > 0.0
            && sample(&scrape, "spillway_read_back_events_per_second") > 0.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "lag age or rates never moved: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Below the threshold again: healthy (the rest still drains).
    wait_for_health(addr, 200, "\"healthy\":true").await;
    let started = Instant::now();
    let scrape = loop {
        let (code, text) = common::http::get_status_and_body(addr, "/metrics").await;
        assert_eq!(code, 200);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        if sample(&scrape, "spillway_sink_events_total") == EVENTS as f64 {
            break scrape;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sink never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&scrape, "spillway_source_events_total"),
        EVENTS as f64
    );
    assert_eq!(sample(&scrape, "spillway_sink_events_total"), EVENTS as f64);
    assert_eq!(
        sample(&scrape, "spillway_relay_cursor"),
        (BASE_SEQ + EVENTS - 1) as f64
    );
    assert_eq!(
        sample(&scrape, "spillway_memory_budget_bytes"),
        (32u64 << 20) as f64
    );
    assert_eq!(sample(&scrape, "spillway_source_connected"), 1.0);
    assert_eq!(sample(&scrape, "spillway_consumer_lag_events"), 0.0);
    assert_eq!(sample(&scrape, "spillway_consumer_lag_seconds"), 0.0);
    assert!(sample(&scrape, "spillway_durable_watermark") <= (BASE_SEQ + EVENTS - 1) as f64);
    for s in &scrape.samples {
        assert!(s.metric.starts_with("spillway_"), "{}", s.metric);
        assert!(
            s.labels.get("host").is_some(),
            "{} has a host label",
            s.metric
        );
        if matches!(s.value, prometheus_parse::Value::Counter(_)) {
            assert!(
                s.metric.ends_with("_total"),
                "counter {} ends in _total",
                s.metric
            );
        }
    }
    let drops: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "spillway_dropped_events_total")
        .collect();
    assert_eq!(drops.len(), 3, "drops by reason: newest, oldest, oversized");

    // The relay goes away: unhealthy, with the reason.
    drop(relay);
    wait_for_health(addr, 503, "relay is disconnected").await;
    assert_eq!(
        common::http::get_status_and_body(addr, "/nothing").await.0,
        404
    );

    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
}

#[test]
fn bad_metrics_and_health_settings_are_refused() {
    for (name, value, key) in [
        (
            "SPILLWAY_METRICS_LISTEN",
            "\"localhost-ish\"",
            "metrics_listen",
        ),
        (
            "SPILLWAY_HEALTH_DISK_FULL_RATIO",
            "1.5",
            "health_disk_full_ratio",
        ),
        (
            "SPILLWAY_HEALTH_DISK_FULL_RATIO",
            "0",
            "health_disk_full_ratio",
        ),
    ] {
        let error = Config::load(None, [(name.to_string(), value.to_string())])
            .expect_err(name)
            .to_string();
        assert!(error.contains(key), "{name}={value}: {error}");
    }
}
