//! Decoded output through the whole pipeline: the real frames from a loopback relay,
//! written as rsky entries to a real Redis stream and as filtered Jetstream lines to a file.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use spillway::config::Config;
use spillway::decode::{render, Filter, OutputFormat};
use spillway::pipeline::Pipeline;
use spillway::source::frame::split_capture;
use spillway::source::relay::{LoopbackRelay, RelayConfig};

/// The fixture's own first seq: the relay replays the frames with their original seqs.
const FIRST_SEQ: u64 = 31_527_015_322;
const FRAMES: u64 = 150;

/// What decoding the fixture gives, with `time`/`time_us` blanked.
fn expected(format: OutputFormat, filter: &Filter) -> Vec<String> {
    let bytes = common::fixture::frames_bin();
    let mut lines = Vec::new();
    for frame in split_capture(&bytes, 4 << 20).expect("capture") {
        render(frame, 0, format, filter, 4 << 20, &mut lines).expect("decodes");
    }
    lines.iter().map(|l| blank_times(l)).collect()
}

/// The top-level receive time (rsky `time` after `seq`, Jetstream `time_us`) replaced by 0.
fn blank_times(line: &str) -> String {
    let mut out = line.to_string();
    for (marker, end) in [(",\"time\":\"", '"'), (",\"time_us\":", ',')] {
        if let Some(start) = out.find(marker) {
            let from = start + marker.len();
            if let Some(len) = out[from..].find(end) {
                out.replace_range(from..from + len, "0");
            }
        }
    }
    out
}

async fn relay() -> LoopbackRelay {
    let mut config =
        RelayConfig::from_capture(&common::fixture::frames_bin(), FIRST_SEQ).expect("fixture");
    config.total_events = Some(FRAMES);
    LoopbackRelay::start(config).await.expect("relay")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsky_entries_in_redis_are_what_the_rsky_ingester_wrote() {
    let redis = RedisServer::start();
    let relay = relay().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        relays: vec![relay.url()],
        start_cursor: Some(FIRST_SEQ - 1),
        redis_url: redis.url(),
        output_format: "rsky".into(),
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let rsky_filter = Filter::for_format(OutputFormat::Rsky, &[], &[]).expect("filter");
    let want = expected(OutputFormat::Rsky, &rsky_filter);
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, lane) = (pipeline.stopper(), pipeline.lanes[0].clone());
    let running = tokio::spawn(pipeline.join());
    let mut c = redis.connection();
    let cursor_key = format!("firehose_live:cursor:{}", lane.host);
    wait_until("every entry and the cursor arrive", || {
        let cursor: Option<u64> = redis::cmd("GET")
            .arg(&cursor_key)
            .query(&mut c)
            .expect("GET");
        cursor == Some(FIRST_SEQ + FRAMES - 1)
    })
    .await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("firehose_live")
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("XRANGE");
    let got: Vec<String> = entries
        .ids
        .iter()
        .map(|e| blank_times(&e.get::<String>("event").expect("field event")))
        .collect();
    assert_eq!(got, want);
    // Frames with no app.bsky.* / chat.bsky.* operation never entered the queue.
    let filtered = lane.source.filtered_total.load(Ordering::Relaxed);
    assert!(filtered > 0);
    assert_eq!(
        lane.source.frames_total.load(Ordering::Relaxed) + filtered,
        FRAMES
    );
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_lines_keep_only_the_wanted_collections_and_dids() {
    let relay = relay().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let config = Config {
        data_dir: dir.path().join("data"),
        relays: vec![relay.url()],
        start_cursor: Some(FIRST_SEQ - 1),
        sink: "jsonl".into(),
        jsonl_path: out.display().to_string(),
        output_format: "jetstream".into(),
        wanted_collections: vec!["app.bsky.feed.*".into()],
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let filter = Filter::new(&["app.bsky.feed.*".into()], &[]).expect("filter");
    let want = expected(OutputFormat::Jetstream, &filter);
    assert!(want
        .iter()
        .all(|l| l.contains("\"collection\":\"app.bsky.feed.")
            || l.contains("\"kind\":\"identity\"")
            || l.contains("\"kind\":\"account\"")));
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let (stop, lane) = (pipeline.stopper(), pipeline.lanes[0].clone());
    let running = tokio::spawn(pipeline.join());
    wait_until("the sink writes every wanted frame", || {
        lane.sinks[0].stats.events_total.load(Ordering::Relaxed)
            == lane.source.frames_total.load(Ordering::Relaxed)
            && lane.source.frames_total.load(Ordering::Relaxed)
                + lane.source.filtered_total.load(Ordering::Relaxed)
                == FRAMES
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
    let got: Vec<String> = std::fs::read_to_string(&out)
        .expect("output")
        .lines()
        .map(blank_times)
        .collect();
    assert_eq!(got, want);

    // A DID filter keeps one account's events only.
    let did = "did:plc:hqvhxrowqbemo5e4wjnj6zao";
    let one = Filter::new(&[], &[did.into()]).expect("filter");
    let lines = expected(OutputFormat::Jetstream, &one);
    assert_eq!(lines.len(), 2, "its identity and account events");
    assert!(lines
        .iter()
        .all(|l| l.starts_with(&format!("{{\"did\":\"{did}\""))));
}
