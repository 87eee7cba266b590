//! The rsky ingester replaced: `spillway run` started with nothing but the ingester's own
//! environment (`REDIS_URL`, `INGESTER_MODE=all`, `INGESTER_RELAY_HOSTS`,
//! `INGESTER_LABELER_HOSTS`, `INGESTER_HIGH_WATER_MARK`, `INGESTER_BATCH_SIZE`) against a
//! real redis-server, a loopback relay, a loopback labeler and a loopback listRepos server.
//! The Redis reader stalls past the high-water mark for a while (the backlog spills), then
//! drains all three streams, and every entry is checked against what the sources sent.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::labels::{label_frames, start_labeler};
use common::list_repos_server::{expected_entry, ListReposServer};
use common::redis_server::RedisServer;
use spillway::decode::{render, Filter, OutputFormat};
use spillway::source::frame::{rewrite_seq, split_capture};
use spillway::source::relay::{LoopbackRelay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FIRST_SEQ: u64 = 40_000_000_000;
const RELAY_EVENTS: u64 = 3_000;
const LABEL_FRAMES: u64 = 400;
const REPOS: u64 = 30_000;
const HIGH_WATER: u64 = 300;
/// Split between the three queues; each needs about 22 MiB for the log's own buffers.
const MEMORY_BUDGET_BYTES: u64 = 72 << 20;
const LISTING_PATH: &str = "/xrpc/com.atproto.sync.listRepos";

/// One address for the relay's WebSocket and its listRepos pages, as a real relay host
/// serves both (the ingester asks the listing of its relay hosts): each connection goes
/// to the listing server or to the relay by its request path.
async fn relay_host(relay: SocketAddr, listing: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split(' ').nth(1).unwrap_or("");
                let backend = if path.starts_with(LISTING_PATH) {
                    listing
                } else {
                    relay
                };
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                if upstream.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    addr
}

/// What the relay sends, rendered as rsky entries with `time` blanked, and the seq of the
/// last frame that renders any.
fn expected_firehose() -> (Vec<String>, u64) {
    let capture = common::fixture::frames_bin();
    let frames = split_capture(&capture, 4 << 20).expect("capture");
    let filter = Filter::for_format(OutputFormat::Rsky, &[], &[]).expect("filter");
    let (mut lines, mut last_seq) = (Vec::new(), 0);
    for seq in FIRST_SEQ..FIRST_SEQ + RELAY_EVENTS {
        let mut frame = frames[((seq - FIRST_SEQ) % frames.len() as u64) as usize].to_vec();
        rewrite_seq(&mut frame, seq).expect("rewrite");
        let before = lines.len();
        render(&frame, 0, OutputFormat::Rsky, &filter, 4 << 20, &mut lines).expect("renders");
        if lines.len() > before {
            last_seq = seq;
        }
    }
    (lines.iter().map(|l| blank_time(l)).collect(), last_seq)
}

/// rsky's top-level `time` (the receive time) replaced by 0.
fn blank_time(line: &str) -> String {
    let mut out = line.to_string();
    let marker = ",\"time\":\"";
    if let Some(start) = out.find(marker) {
        let from = start + marker.len();
        if let Some(len) = out[from..].find('"') {
            out.replace_range(from..from + len, "0");
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_spillway(
    data: &std::path::Path,
    redis: &str,
    relay_host: SocketAddr,
    labeler: SocketAddr,
    metrics_port: u16,
    log: &std::path::Path,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--progress-secs", "0"])
        .env("REDIS_URL", redis)
        .env("INGESTER_MODE", "all")
        .env("INGESTER_RELAY_HOSTS", format!("ws://{relay_host}"))
        .env("INGESTER_LABELER_HOSTS", format!("ws://{labeler}"))
        .env("INGESTER_HIGH_WATER_MARK", HIGH_WATER.to_string())
        .env("INGESTER_BATCH_SIZE", "200")
        .env("INGESTER_BATCH_TIMEOUT_MS", "1000")
        // Ours, beside the ingester's: where to keep the spool, how much memory, and the
        // relay's first seq (a loopback relay has no live head to join).
        .env("SPILLWAY_DATA_DIR", data)
        .env(
            "SPILLWAY_MEMORY_BUDGET_BYTES",
            MEMORY_BUDGET_BYTES.to_string(),
        )
        .env("SPILLWAY_START_CURSOR", (FIRST_SEQ - 1).to_string())
        .env(
            "SPILLWAY_METRICS_LISTEN",
            format!("\"127.0.0.1:{metrics_port}\""),
        )
        .env("RUST_LOG", "spillway=info")
        .stdout(Stdio::null())
        .stderr(common::append_log(log))
        .spawn()
        .expect("spawn the spillway binary")
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Reads and deletes up to 1,000 entries of `stream`: the values of `field`.
fn take(c: &mut redis::Connection, stream: &str, field: &str) -> Vec<String> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1000)
        .query(c)
        .expect("XRANGE");
    if entries.is_empty() {
        return Vec::new();
    }
    let mut del = redis::cmd("XDEL");
    del.arg(stream);
    for (id, _) in &entries {
        del.arg(id);
    }
    let _: u64 = del.query(c).expect("XDEL");
    entries
        .into_iter()
        .map(|(id, mut fields)| {
            fields
                .remove(field)
                .unwrap_or_else(|| panic!("{stream} entry {id} has no field {field}"))
        })
        .collect()
}

fn xlen(c: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(c).expect("XLEN")
}

fn get(c: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(c).expect("GET")
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingester_environment_runs_all_three_sources_and_loses_nothing_past_the_high_water_mark(
) {
    let redis = RedisServer::start();
    let mut relay_config =
        RelayConfig::from_capture(&common::fixture::frames_bin(), FIRST_SEQ).expect("fixture");
    relay_config.total_events = Some(RELAY_EVENTS);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let (label_frames, label_entries) = label_frames(LABEL_FRAMES);
    let labeler = start_labeler(label_frames, Vec::new()).await;
    let listing = ListReposServer::start(REPOS).await;
    let listing_addr: SocketAddr = listing
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("listing address");
    let host = relay_host(relay.addr(), listing_addr).await;
    let (expected_firehose, last_firehose_seq) = expected_firehose();

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("spillway.log");
    let metrics_port = free_port();
    let mut child = start_spillway(
        &dir.path().join("data"),
        &redis.url(),
        host,
        labeler.addr(),
        metrics_port,
        &log,
    );
    let mut c = redis.connection();

    // The reader is stalled: the streams fill to the high-water mark and the sink pauses,
    // while the sources keep going and the firehose backlog spills to disk.
    let firehose_labels = format!("host=\"{host}\",source=\"firehose\"");
    let mut spilled_bytes;
    let started = Instant::now();
    loop {
        let text = metrics(metrics_port);
        spilled_bytes =
            metric(&text, &format!("spillway_disk_bytes{{{firehose_labels}}}")).unwrap_or(0.0);
        let paused = metric(
            &text,
            &format!("spillway_sink_backpressure{{{firehose_labels},sink=\"redis\"}}"),
        ) == Some(1.0);
        if paused && spilled_bytes > 0.0 {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "spillway exited ({status}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the firehose backlog never reached the disk behind a paused sink; /metrics:\n{text}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for stream in ["firehose_live", "label_live", "repo_backfill"] {
        assert!(
            xlen(&mut c, stream) <= HIGH_WATER + 200,
            "{stream} grew past the high-water mark plus one batch"
        );
    }
    // Held a while longer: the listing and the labeler keep queueing behind their paused sinks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "spillway exited while stalled; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The reader catches up and drains all three streams.
    let (mut firehose, mut labels, mut repos) = (Vec::new(), Vec::new(), Vec::new());
    wait_for(
        "every entry of the three streams",
        Duration::from_secs(240),
        || {
            firehose.extend(take(&mut c, "firehose_live", "event"));
            labels.extend(take(&mut c, "label_live", "labels"));
            repos.extend(take(&mut c, "repo_backfill", "repo"));
            firehose.len() >= expected_firehose.len()
                && labels.len() >= label_entries.len()
                && repos.len() >= REPOS as usize
        },
    )
    .await;
    // Anything written after the counts were reached would be a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    firehose.extend(take(&mut c, "firehose_live", "event"));
    labels.extend(take(&mut c, "label_live", "labels"));
    repos.extend(take(&mut c, "repo_backfill", "repo"));

    let firehose: Vec<String> = firehose.iter().map(|l| blank_time(l)).collect();
    assert_eq!(firehose.len(), expected_firehose.len(), "firehose entries");
    for (i, (got, want)) in firehose.iter().zip(&expected_firehose).enumerate() {
        assert_eq!(got, want, "firehose_live entry {i}");
    }
    assert_eq!(labels, label_entries, "label_live entries");
    let expected_repos: Vec<String> = (0..REPOS)
        .map(|i| expected_entry(i, &format!("http://{host}")))
        .collect();
    assert_eq!(repos.len(), expected_repos.len(), "repo_backfill entries");
    for (i, (got, want)) in repos.iter().zip(&expected_repos).enumerate() {
        assert_eq!(got, want, "repo_backfill entry {i}");
    }

    // The cursor keys, as the ingester names them.
    wait_for("the cursor keys", Duration::from_secs(30), || {
        get(&mut c, &format!("firehose_live:cursor:{host}")) == Some(last_firehose_seq.to_string())
            && get(&mut c, &format!("label_live:cursor:{}", labeler.addr()))
                == Some(LABEL_FRAMES.to_string())
            && get(&mut c, &format!("repo_backfill:cursor:{host}")).as_deref()
                == Some("!ingester-done")
    })
    .await;

    let _ = child.kill();
    let _ = child.wait();
    assert!(
        spilled_bytes > 0.0,
        "the firehose backlog never reached the disk"
    );
    // The servers live until here.
    drop((relay, labeler, listing));
}
