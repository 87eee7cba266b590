//! The `spillway` binary killed with SIGKILL mid-stream several times and restarted: the
//! union of what reached Redis covers every seq with no gap; duplicates stay bounded by
//! what a kill can leave unacknowledged (the relay replays from the saved cursor).

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::redis_server::{take_seqs, RedisServer};
use spillway::source::relay::LoopbackRelay;

const EVENTS: u64 = 50_000;
const BASE_SEQ: u64 = 60_000_000_000;
const RATE: u64 = 10_000;
const KILLS: usize = 4;

fn start_binary(
    data: &std::path::Path,
    relay: &str,
    redis: &str,
    first: bool,
    log: &std::path::Path,
) -> Child {
    common::binary::start_relay_to_redis(data, relay, redis, first.then_some(BASE_SEQ), &[], log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_stay_bounded() {
    let redis = RedisServer::start();
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, EVENTS);
    relay_config.events_per_sec = Some(RATE);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("spillway.log");
    let data = dir.path().join("data");

    // A downstream reader drains the stream as it fills.
    let url = redis.url();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut c = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("connection");
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        let started = Instant::now();
        loop {
            let got = take_seqs(&mut c, "firehose_live", 2_000);
            for seq in &got {
                *seen.entry(*seq).or_default() += 1;
            }
            let complete = seen.len() as u64 == EVENTS;
            if complete
                || started.elapsed() > Duration::from_secs(60)
                || (got.is_empty() && done_rx.try_recv().is_ok())
            {
                return seen;
            }
            if got.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });

    let mut next = common::clock_seeded_rng();
    for kill in 0..KILLS {
        let mut child = start_binary(&data, &relay.url(), &redis.url(), kill == 0, &log);
        let alive = Duration::from_millis(150 + next() % 900);
        tokio::time::sleep(alive).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        println!(
            "kill {kill} after {} ms; relay sent {} frames so far",
            alive.as_millis(),
            relay.stats().frames_sent.load(Ordering::Relaxed)
        );
    }
    let mut last = start_binary(&data, &relay.url(), &redis.url(), false, &log);
    let seen = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    let _ = done_tx.send(());
    let _ = last.kill();
    let _ = last.wait();

    let missing: Vec<u64> = (BASE_SEQ..BASE_SEQ + EVENTS)
        .filter(|s| !seen.contains_key(s))
        .take(10)
        .collect();
    let duplicates: u64 = seen.values().map(|n| u64::from(n - 1)).sum();
    println!(
        "{} distinct seqs of {EVENTS}, {duplicates} duplicates after {KILLS} kills",
        seen.len()
    );
    let _ = std::fs::copy(&log, "/tmp/crash_binary.log");
    if !missing.is_empty() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        panic!(
            "missing seqs (first 10) {missing:?}; binary log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // A kill can cost at most what arrived since the last saved cursor (saved every second)
    // plus what sat in the queue's memory tier and the batch in flight: at this rate, about
    // 1.5 s of events per kill.
    let bound = KILLS as u64 * RATE * 3 / 2;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the bound of {bound}"
    );
}
