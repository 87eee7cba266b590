//! Idempotent Redis writes (`redis_idempotent_ids`): entry IDs `<seq>-<n>` from the relay
//! seq, so a batch written again (a retry, a replay after a restart) adds nothing, while
//! without the option it adds every event twice; batches split into several `MULTI`/`EXEC`
//! transactions in flight; the configurations where seq IDs are unsafe refused, naming
//! the key. The kill -9 run of the binary is `killed_binary_with_idempotent_ids_writes_every_seq_once`.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis_server::{take_seqs, RedisServer};
use spillway::config::Config;
use spillway::decode::OutputFormat;
use spillway::queue::Delivery;
use spillway::sink::redis::{RedisSink, RedisSinkConfig, RedisSinkError};
use spillway::sink::SinkStats;
use spillway::source::relay::LoopbackRelay;

const STREAM: &str = "firehose_live";
const HOST: &str = "relay.test";

/// The fixture's real frames as deliveries, positions their seqs.
fn deliveries(count: usize) -> Vec<Delivery> {
    let capture = common::fixture::frames_bin();
    let frames = spillway::source::frame::split_capture(&capture, usize::MAX).expect("frames");
    frames
        .iter()
        .take(count)
        .enumerate()
        .map(|(index, frame)| {
            let seq = spillway::source::frame::decode(frame, usize::MAX)
                .expect("a fixture frame decodes")
                .seq()
                .expect("a fixture frame has a seq");
            Delivery {
                seq: index as u64 + 1,
                position: seq,
                pushed_at_us: 1_700_000_000_000_000,
                payload: Bytes::copy_from_slice(frame),
            }
        })
        .collect()
}

fn sink_config(redis: &RedisServer, idempotent_ids: bool) -> RedisSinkConfig {
    let mut config = RedisSinkConfig::new(redis.url());
    config.high_water_events = 0;
    config.idempotent_ids = idempotent_ids;
    // Small transactions, several in flight: a batch of 40 is five transactions.
    config.multi_events_max = 8;
    config.transactions_in_flight_max = 3;
    config.retry_delay_min_ms = 10;
    config
}

async fn write(sink: &mut RedisSink, batch: &[Delivery]) {
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let written = sink
        .write(batch, &SinkStats::default(), &stop)
        .await
        .expect("the write is not refused");
    assert!(written, "written before any stop");
}

fn stream_ids_and_seqs(c: &mut redis::Connection) -> Vec<(String, u64)> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(c)
        .expect("XRANGE");
    reply
        .ids
        .iter()
        .map(|entry| (entry.id.clone(), entry.get("seq").expect("seq field")))
        .collect()
}

#[tokio::test]
async fn a_batch_written_twice_lands_once_with_seq_ids_and_twice_without() {
    let batch = deliveries(40);
    for (idempotent_ids, copies) in [(true, 1usize), (false, 2)] {
        let redis = RedisServer::start();
        let mut sink = RedisSink::new(sink_config(&redis, idempotent_ids), HOST).expect("sink");
        write(&mut sink, &batch).await;
        // The replay of a batch whose ack was lost: its first half again, then all of it.
        write(&mut sink, &batch[..20]).await;
        let mut last_written = &batch[..20];
        if idempotent_ids {
            write(&mut sink, &batch).await;
            last_written = &batch;
        }
        let entries = stream_ids_and_seqs(&mut redis.connection());
        let mut expected: Vec<u64> = batch.iter().map(|d| d.position).collect();
        if !idempotent_ids {
            expected.extend(batch[..20].iter().map(|d| d.position));
        }
        let seqs: Vec<u64> = entries.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, expected, "idempotent_ids = {idempotent_ids}");
        assert_eq!(entries.len(), 40 + 20 * (copies - 1));
        if idempotent_ids {
            for (id, seq) in &entries {
                assert_eq!(id, &format!("{seq}-0"), "the entry ID is the relay seq");
            }
        }
        let cursor: u64 = redis::cmd("GET")
            .arg(format!("{STREAM}:cursor:{HOST}"))
            .query(&mut redis.connection())
            .expect("cursor key");
        assert_eq!(
            cursor,
            last_written.last().expect("events").position,
            "the last transaction leaves the cursor key at the last batch's last seq"
        );
    }
}

#[tokio::test]
async fn decoded_lines_of_one_frame_get_ids_seq_0_seq_1_and_a_replay_adds_none() {
    let redis = RedisServer::start();
    let mut config = sink_config(&redis, true);
    config.output.format = OutputFormat::Jetstream;
    let mut sink = RedisSink::new(config, HOST).expect("sink");
    let batch = deliveries(150);
    write(&mut sink, &batch).await;
    write(&mut sink, &batch[50..]).await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(&mut redis.connection())
        .expect("XRANGE");
    let mut per_seq: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for entry in &reply.ids {
        let (seq, n) = entry.id.split_once('-').expect("an ID ms-n");
        per_seq
            .entry(seq.parse().expect("seq"))
            .or_default()
            .push(n.parse().expect("n"));
        let _: String = entry.get("event").expect("the JSON line in field event");
    }
    assert!(!per_seq.is_empty(), "some frames render lines");
    for (seq, ns) in &per_seq {
        let expected: Vec<u64> = (0..ns.len() as u64).collect();
        assert_eq!(
            ns, &expected,
            "the lines of seq {seq} are numbered from 0, once each"
        );
    }
    let positions: Vec<u64> = batch.iter().map(|d| d.position).collect();
    assert!(per_seq.keys().all(|seq| positions.contains(seq)));
}

#[tokio::test]
async fn seq_ids_are_refused_on_a_stream_with_time_ids_and_time_ids_on_a_marked_stream() {
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("seq")
        .arg(1)
        .query(&mut c)
        .expect("XADD");
    let mut sink = RedisSink::new(sink_config(&redis, true), HOST).expect("sink");
    let error = sink.check().await.expect_err("time IDs above every seq");
    assert!(
        matches!(
            error,
            RedisSinkError::Refused {
                key: "redis_idempotent_ids",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("already holds entries"),
        "{error}"
    );

    // A fresh stream is marked by its first seq writer; another relay and a time-ID
    // writer are then refused, and the first writer is welcome again.
    let _: u64 = redis::cmd("DEL").arg(STREAM).query(&mut c).expect("DEL");
    let mut first = RedisSink::new(sink_config(&redis, true), HOST).expect("sink");
    first.check().await.expect("a fresh stream takes seq IDs");
    let marker: String = redis::cmd("GET")
        .arg(format!("{STREAM}:idempotent-ids"))
        .query(&mut c)
        .expect("marker");
    assert_eq!(marker, HOST);
    let mut other = RedisSink::new(sink_config(&redis, true), "other.relay").expect("sink");
    let error = other
        .check()
        .await
        .expect_err("another relay's seqs collide");
    assert!(error.to_string().contains("other.relay"), "{error}");
    let mut time_ids = RedisSink::new(sink_config(&redis, false), HOST).expect("sink");
    let error = time_ids
        .check()
        .await
        .expect_err("time IDs on a seq stream");
    assert!(
        error.to_string().contains("redis_idempotent_ids"),
        "{error}"
    );
    let mut again = RedisSink::new(sink_config(&redis, true), HOST).expect("sink");
    again.check().await.expect("the same relay again");
}

#[test]
fn unsafe_or_inconsistent_settings_are_refused_at_load_naming_the_key() {
    let load = |pairs: &[(&str, &str)]| {
        Config::load(
            None,
            pairs
                .iter()
                .map(|(k, v)| (format!("SPILLWAY_{k}"), (*v).to_string())),
        )
    };
    let cases: [(&[(&str, &str)], &str); 8] = [
        (
            &[
                ("REDIS_IDEMPOTENT_IDS", "true"),
                ("REPO_LISTING_HOSTS", "[\"http://127.0.0.1:8080/\"]"),
            ],
            "redis_idempotent_ids",
        ),
        (
            &[(
                "REDIS_URL",
                "redis://app:s3cret@a:7000,redis://app:s3cret@b:7001",
            )],
            "redis_stream",
        ),
        (
            &[
                ("REDIS_IDEMPOTENT_IDS", "true"),
                ("RELAYS", "[\"ws://a.example/\", \"ws://b.example/\"]"),
            ],
            "redis_idempotent_ids",
        ),
        (&[("REDIS_MULTI_EVENTS_MAX", "0")], "redis_multi_events_max"),
        (
            &[("REDIS_TRANSACTIONS_IN_FLIGHT_MAX", "1000")],
            "redis_transactions_in_flight_max",
        ),
        (&[("REDIS_TLS_CA_FILE", "/ca.pem")], "redis_tls_ca_file"),
        (
            &[
                ("REDIS_URL", "rediss://app:s3cret@h:6380"),
                ("REDIS_TLS_CERT_FILE", "/c.pem"),
            ],
            "redis_tls_key_file",
        ),
        (
            &[
                ("REDIS_URL", "redis://app:s3cret@h:6380"),
                ("REDIS_TLS_KEY_FILE", "/k.pem"),
            ],
            "redis_tls_key_file",
        ),
    ];
    for (pairs, key) in cases {
        let error = load(pairs).expect_err("refused").to_string();
        assert!(error.contains(key), "{pairs:?}: {error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
    let config = load(&[
        ("REDIS_IDEMPOTENT_IDS", "true"),
        ("REDIS_URL", "rediss://app:s3cret@h:6380"),
        ("REDIS_TLS_CA_FILE", "/ca.pem"),
    ])
    .expect("one relay with idempotent IDs over TLS");
    assert!(config.redis_idempotent_ids);
    let defaults = Config::default();
    assert!(!defaults.redis_idempotent_ids);
    assert_eq!(defaults.redis_multi_events_max, 250);
    assert_eq!(defaults.redis_transactions_in_flight_max, 4);
}

const EVENTS: u64 = 30_000;
const BASE_SEQ: u64 = 70_000_000_000;
const RATE: u64 = 10_000;
const KILLS: usize = 4;

fn start_binary(
    data: &std::path::Path,
    relay: &str,
    redis: &str,
    first: bool,
    log: &std::path::Path,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
    command
        .args(["run", "--progress-secs", "0"])
        .env("SPILLWAY_DATA_DIR", data)
        .env("SPILLWAY_RELAYS", format!("[\"{relay}\"]"))
        .env("SPILLWAY_REDIS_URL", redis)
        .env("SPILLWAY_REDIS_IDEMPOTENT_IDS", "true")
        .env("SPILLWAY_REDIS_MULTI_EVENTS_MAX", "100")
        .env("SPILLWAY_MEMORY_BUDGET_BYTES", (64u64 << 20).to_string())
        .env("SPILLWAY_DURABILITY", "\"periodic:50\"")
        .env("SPILLWAY_REDIS_HIGH_WATER_EVENTS", "0")
        .env("SPILLWAY_METRICS_LISTEN", "\"127.0.0.1:0\"")
        .env("RUST_LOG", "spillway=info")
        .stdout(Stdio::null())
        .stderr(common::append_log(log));
    if first {
        command.env("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string());
    }
    command.spawn().expect("spawn the spillway binary")
}

/// Runs the binary with idempotent IDs through `KILLS` kill -9s and a last run; returns how often each seq
/// reached the stream and how many frames the relay sent (more than `EVENTS`: replays).
async fn killed_runs() -> (BTreeMap<u64, u32>, u64) {
    let redis = RedisServer::start();
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, EVENTS);
    relay_config.events_per_sec = Some(RATE);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("spillway.log");
    let data = dir.path().join("data");
    let url = redis.url();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut c = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("connection");
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        let started = Instant::now();
        loop {
            // Entries are read and deleted as a consumer would: the stream's last ID
            // stays, so seq IDs below it are still refused.
            let got = take_seqs(&mut c, STREAM, 2_000);
            for seq in &got {
                *seen.entry(*seq).or_default() += 1;
            }
            if seen.len() as u64 == EVENTS && got.is_empty() && done_rx.try_recv().is_ok()
                || started.elapsed() > Duration::from_secs(90)
            {
                return seen;
            }
            if got.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        | 1;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for kill in 0..KILLS {
        let mut child = start_binary(&data, &relay.url(), &redis.url(), kill == 0, &log);
        tokio::time::sleep(Duration::from_millis(300 + next() % 600)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let mut last = start_binary(&data, &relay.url(), &redis.url(), false, &log);
    // Wait until the last seq is in the stream (its ID), then a moment for any stray
    // rewrite to show up.
    let url = redis.url();
    let last_id = format!("{}-0", BASE_SEQ + EVENTS - 1);
    tokio::task::spawn_blocking(move || {
        let mut c = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("connection");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let info: Option<redis::streams::StreamInfoStreamReply> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(STREAM)
                .query(&mut c)
                .ok();
            if info.is_some_and(|info| info.last_generated_id == last_id) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = done_tx.send(());
    let seen = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    let _ = last.kill();
    let _ = last.wait();
    let sent = relay.stats().frames_sent.load(Ordering::Relaxed);
    if seen.len() as u64 != EVENTS {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        panic!(
            "{} of {EVENTS} seqs arrived ; binary log tail:\n{}",
            seen.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    (seen, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_binary_with_idempotent_ids_writes_every_seq_once() {
    let (seen, sent) = killed_runs().await;
    let duplicates: u64 = seen.values().map(|n| u64::from(n - 1)).sum();
    println!(
        "idempotent IDs: {} distinct seqs of {EVENTS}, {duplicates} duplicates, relay sent {sent} frames after {KILLS} kills",
        seen.len()
    );
    assert!(
        sent > EVENTS,
        "the kills made the relay replay ({sent} frames sent for {EVENTS} events)"
    );
    assert_eq!(duplicates, 0, "no seq twice with idempotent IDs");
    assert!(
        (BASE_SEQ..BASE_SEQ + EVENTS).all(|seq| seen.get(&seq) == Some(&1)),
        "every seq exactly once"
    );
}

/// `count` deliveries with positions `1..=count`, the fixture's frames cycled as payloads.
fn numbered(count: u64) -> Vec<Delivery> {
    let frames = deliveries(150);
    (1..=count)
        .map(|position| Delivery {
            seq: position,
            position,
            pushed_at_us: 0,
            payload: frames[(position % 150) as usize].payload.clone(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_frozen_mid_window_leaves_every_event_once_in_order_after_the_retries() {
    let redis = RedisServer::start();
    let mut config = sink_config(&redis, true);
    config.multi_events_max = 10;
    config.transactions_in_flight_max = 4;
    config.command_timeout_ms = 200;
    config.retry_delay_max_ms = 100;
    let mut sink = RedisSink::new(config, HOST).expect("sink");
    let events = numbered(6_000);
    let pid = redis.pid() as libc::pid_t;
    let freezer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        // SAFETY: signals to the redis-server child this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        tokio::time::sleep(Duration::from_millis(700)).await;
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
    let stats = SinkStats::default();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // Batches of 100 new events, each sent with the 50 before it again (a replay).
    for start in (0..events.len()).step_by(100) {
        let batch = &events[start.saturating_sub(50)..(start + 100).min(events.len())];
        assert!(sink.write(batch, &stats, &stop).await.expect("not refused"));
    }
    freezer.await.expect("freezer");
    let ids: Vec<String> = {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg("-")
            .arg("+")
            .query(&mut redis.connection())
            .expect("XRANGE");
        reply.ids.into_iter().map(|entry| entry.id).collect()
    };
    let expected: Vec<String> = (1..=6_000u64).map(|p| format!("{p}-0")).collect();
    println!(
        "{} entries after {} failed attempts",
        ids.len(),
        stats.failures_total.load(Ordering::Relaxed)
    );
    assert_eq!(ids.len(), expected.len(), "every event once");
    assert_eq!(ids, expected, "in order");
}
