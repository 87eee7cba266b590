//! Storage faults made for real on a real data directory (a flipped chunk in a sealed
//! segment, an active segment cut below what was synced), then every seq checked: each
//! one delivered (the damaged range fetched again from the relay, in its place), or
//! counted lost with its reason and reported by `/health` when the relay no longer has it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spillway::config::Config;
use spillway::pipeline::Pipeline;
use spillway::source::relay::LoopbackRelay;

const BASE_SEQ: u64 = 70_000_000_000;
const TOTAL: u64 = 3_000;

/// Phase one: every event spilled to the log (write-through), none consumed (Redis unreachable).
fn filling_config(data: &Path, relay_url: String) -> Config {
    Config {
        data_dir: data.to_path_buf(),
        relays: vec![relay_url],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        spill_mode: "write-through".into(),
        durability: "every-batch".into(),
        segment_bytes_max: 2 * 1024 * 1024,
        frame_bytes_max: 512 * 1024,
        sink: "redis".into(),
        // Nothing listens on port 1: the sink retries and consumes nothing.
        redis_url: "redis://127.0.0.1:1".into(),
        metrics_listen: String::new(),
        ..Config::default()
    }
}

/// Phase two: the same directory, resumed from its saved cursor, into a JSON-lines file.
fn draining_config(data: &Path, relay_url: String, out: &Path) -> Config {
    Config {
        start_cursor: None,
        sink: "jsonl".into(),
        jsonl_path: out.display().to_string(),
        metrics_listen: "127.0.0.1:0".into(),
        ..filling_config(data, relay_url)
    }
}

async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(90), done).await
}

/// Runs phase one to its end: every event of the relay durably in the log.
async fn fill(data: &Path, relay: &LoopbackRelay) {
    let pipeline = Pipeline::start(&filling_config(data, relay.url()), 0).expect("pipeline");
    let (stop, source) = (pipeline.stopper(), pipeline.lanes[0].source.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("every event pushed", || {
        source.frames_total.load(Ordering::Relaxed) >= TOTAL
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
}

/// The queue's segment files, oldest first.
fn segments(data: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for queue in std::fs::read_dir(data).expect("data dir").flatten() {
        if !queue.file_name().to_string_lossy().starts_with("queue-") {
            continue;
        }
        for file in std::fs::read_dir(queue.path().join("segments"))
            .expect("segments dir")
            .flatten()
        {
            if file.path().extension().is_some_and(|e| e == "seg") {
                found.push(file.path());
            }
        }
    }
    found.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    found
}

fn flip_bytes(path: &Path, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, at).expect("read");
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    file.write_all_at(&bytes, at).expect("write");
    file.sync_all().expect("sync");
}

struct Drained {
    seqs: Vec<u64>,
    sink: std::sync::Arc<spillway::sink::SinkStats>,
    health: String,
    metrics: String,
}

/// Phase two: drains the damaged directory until `expected` distinct seqs are out, then stops.
async fn drain(data: &Path, relay_url: String, out: &Path, expected: u64) -> Drained {
    let pipeline = Pipeline::start(&draining_config(data, relay_url, out), 0).expect("pipeline");
    let addr = pipeline.metrics_addr.expect("metrics address");
    let (stop, sink) = (pipeline.stopper(), pipeline.lanes[0].sinks[0].stats.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("every deliverable seq in the file", || {
        common::jsonl_seqs(out)
            .iter()
            .collect::<BTreeSet<_>>()
            .len() as u64
            >= expected
    })
    .await;
    let health = http_get(addr, "/health").await;
    let metrics = http_get(addr, "/metrics").await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
    Drained {
        seqs: common::jsonl_seqs(out),
        sink,
        health,
        metrics,
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

fn assert_every_seq_once_in_order(seqs: &[u64], expected: impl Iterator<Item = u64>) {
    let expected: Vec<u64> = expected.collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order and no duplicates (first disorder at {:?})",
        seqs.windows(2).find(|w| w[0] >= w[1])
    );
    let got: BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = expected
        .iter()
        .filter(|s| !got.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} seqs missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got.len(), expected.len(), "nothing but the expected seqs");
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("spillway=info")
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_in_a_sealed_segment_is_fetched_again_from_the_relay_in_its_place() {
    init_logs();
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, TOTAL))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fill(&data, &relay).await;
    let files = segments(&data);
    assert!(files.len() >= 4, "several segments: {files:?}");
    let sealed = &files[files.len() / 2];
    let len = std::fs::metadata(sealed).expect("segment").len();
    flip_bytes(sealed, len / 2, 64);

    let out = dir.path().join("out.jsonl");
    let drained = drain(&data, relay.url(), &out, TOTAL).await;
    assert_every_seq_once_in_order(&drained.seqs, BASE_SEQ..BASE_SEQ + TOTAL);
    let damaged = drained.sink.damaged_events_total.load(Ordering::Relaxed);
    let refetched = drained.sink.refetched_events_total.load(Ordering::Relaxed);
    assert!(damaged > 0, "the damaged chunk was met");
    assert_eq!(
        refetched, damaged,
        "each damaged record came again from the relay"
    );
    let line = drained
        .metrics
        .lines()
        .find(|l| l.starts_with("spillway_refetched_events_total{"))
        .expect("the refetch metric");
    assert!(line.ends_with(&format!(" {refetched}")), "{line}");
    assert!(
        drained.health.contains("\"healthy\":true"),
        "{}",
        drained.health
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_segment_cut_below_its_synced_end_is_fetched_again_not_dropped_silently() {
    init_logs();
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, TOTAL))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fill(&data, &relay).await;
    let files = segments(&data);
    let active = files.last().expect("an active segment");
    let len = std::fs::metadata(active).expect("segment").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(active)
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    file.sync_all().expect("sync");

    let out = dir.path().join("out.jsonl");
    let drained = drain(&data, relay.url(), &out, TOTAL).await;
    assert_every_seq_once_in_order(&drained.seqs, BASE_SEQ..BASE_SEQ + TOTAL);
    let damaged = drained.sink.damaged_events_total.load(Ordering::Relaxed);
    assert!(
        damaged > 0,
        "the cut was reported as lost records, not a torn tail"
    );
    assert_eq!(
        drained.sink.refetched_events_total.load(Ordering::Relaxed),
        damaged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_range_the_relay_no_longer_holds_is_counted_lost_and_health_says_so() {
    init_logs();
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, TOTAL))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fill(&data, &relay).await;
    let files = segments(&data);
    let sealed = &files[1];
    let len = std::fs::metadata(sealed).expect("segment").len();
    flip_bytes(sealed, len / 2, 64);

    // The relay comes back on the same address holding only the newest events: the
    // damaged range is outside its window now.
    let addr = relay.addr();
    drop(relay);
    let window_start = BASE_SEQ + TOTAL - 100;
    let mut config = common::fixture::relay_config(window_start, 100);
    config.base_seq = window_start;
    let relay = restart_relay(config, addr).await;

    let out = dir.path().join("out.jsonl");
    let pipeline =
        Pipeline::start(&draining_config(&data, relay.url(), &out), 0).expect("pipeline");
    let metrics_addr = pipeline.metrics_addr.expect("metrics address");
    let (stop, sink) = (pipeline.stopper(), pipeline.lanes[0].sinks[0].stats.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("the loss counted and the last seq out", || {
        sink.lost_outside_window_total.load(Ordering::Relaxed) > 0
            && common::jsonl_seqs(&out).last() == Some(&(BASE_SEQ + TOTAL - 1))
    })
    .await;
    let health = http_get(metrics_addr, "/health").await;
    let metrics = http_get(metrics_addr, "/metrics").await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");

    let lost = sink.lost_outside_window_total.load(Ordering::Relaxed);
    let damaged = sink.damaged_events_total.load(Ordering::Relaxed);
    assert_eq!(lost, damaged, "every damaged record is counted lost");
    let seqs = common::jsonl_seqs(&out);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    assert_eq!(
        seqs.len() as u64,
        TOTAL - lost,
        "everything but the lost range was delivered"
    );
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("events lost"), "{health}");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("spillway_lost_events_total")
                && l.contains("reason=\"outside_relay_window\"")
        })
        .expect("the lost metric");
    assert!(line.ends_with(&format!(" {lost}")), "{line}");
}

async fn restart_relay(
    config: spillway::source::relay::RelayConfig,
    addr: std::net::SocketAddr,
) -> LoopbackRelay {
    let started = Instant::now();
    loop {
        match LoopbackRelay::start_on(config.clone(), addr).await {
            Ok(relay) => return relay,
            Err(error) if started.elapsed() < Duration::from_secs(10) => {
                tracing::debug!(%error, "the old relay still holds the port");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("restarting the relay on {addr}: {error}"),
        }
    }
}

/// The queue directory of the only relay.
fn queue_dir(data: &Path) -> PathBuf {
    std::fs::read_dir(data)
        .expect("data dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("queue-"))
        })
        .expect("a queue directory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_or_truncated_manifest_is_rebuilt_from_the_segments_and_nothing_is_lost() {
    init_logs();
    for damage in ["removed", "truncated to 100 bytes"] {
        let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, TOTAL))
            .await
            .expect("relay");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fill(&data, &relay).await;
        let manifest = queue_dir(&data).join("manifest");
        if damage == "removed" {
            std::fs::remove_dir_all(&manifest).expect("remove the manifest");
        } else {
            let db = std::fs::OpenOptions::new()
                .write(true)
                .open(manifest.join("db"))
                .expect("manifest/db");
            db.set_len(100).expect("truncate");
        }

        let out = dir.path().join("out.jsonl");
        let drained = drain(&data, relay.url(), &out, TOTAL).await;
        assert_every_seq_once_in_order(&drained.seqs, BASE_SEQ..BASE_SEQ + TOTAL);
        assert_eq!(
            drained.sink.damaged_events_total.load(Ordering::Relaxed),
            0,
            "manifest {damage}: every record was kept"
        );
    }
}

/// A tmpfs of `size_mib` mounted on `dir` for the test, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts it, or says why it cannot (not root, no mount permission).
    fn mount(dir: &Path, size_mib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

const FULL_DISK_EVENTS: u64 = 12_000;

/// A test directory with `data/` on a 40 MiB tmpfs, and a relay of `FULL_DISK_EVENTS`;
/// `None` (the skip printed with its reason) where a tmpfs cannot be mounted.
async fn small_disk_with_relay(
    test: &str,
) -> Option<(tempfile::TempDir, PathBuf, SmallDisk, LoopbackRelay)> {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let disk = match SmallDisk::mount(&data, 40) {
        Ok(disk) => disk,
        Err(reason) => {
            println!("SKIPPED {test}: cannot mount a tmpfs: {reason}");
            return None;
        }
    };
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, FULL_DISK_EVENTS))
        .await
        .expect("relay");
    Some((dir, data, disk, relay))
}

/// Every seq of a run onto a small disk: the queue spills past what the filesystem holds.
fn full_disk_config(data: &Path, relay_url: String) -> Config {
    Config {
        data_dir: data.to_path_buf(),
        relays: vec![relay_url],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 32 * 1024 * 1024,
        // Far above the 40 MiB filesystem: the free space is the real limit.
        disk_budget_bytes: 1024 * 1024 * 1024,
        segment_bytes_max: 4 * 1024 * 1024,
        frame_bytes_max: 1024 * 1024,
        sink: "jsonl".into(),
        metrics_listen: String::new(),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_blocks_the_producer_keeps_draining_and_loses_nothing() {
    let Some((dir, data, _disk, relay)) =
        small_disk_with_relay("a_full_filesystem_blocks_the_producer").await
    else {
        return;
    };
    let out = dir.path().join("out.jsonl");
    let config = Config {
        jsonl_path: out.display().to_string(),
        ..full_disk_config(&data, relay.url())
    };
    // The sink writes 2,500 events/s while the relay sends everything at once: the
    // backlog (about 65 MB) outgrows the 40 MiB filesystem.
    let pipeline = Pipeline::start(&config, 2_500).expect("pipeline");
    let (stop, queue) = (pipeline.stopper(), pipeline.lanes[0].queue.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("the filesystem to fill and the producer to block", || {
        queue.stats().blocked_pushes_total > 0
    })
    .await;
    let stats = queue.stats();
    assert!(
        stats.disk_budget_bytes_effective < stats.disk_budget_bytes,
        "the free space caps the budget: {stats:?}"
    );
    wait_for("every seq delivered", || {
        common::jsonl_seqs(&out).len() as u64 >= FULL_DISK_EVENTS
    })
    .await;
    let _ = stop.send(true);
    running
        .await
        .expect("join")
        .expect("the full disk never stopped the pipeline");
    assert_every_seq_once_in_order(
        &common::jsonl_seqs(&out),
        BASE_SEQ..BASE_SEQ + FULL_DISK_EVENTS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_stopped_on_a_full_filesystem_starts_again_while_full_and_drains() {
    let Some((dir, data, _disk, relay)) =
        small_disk_with_relay("a_queue_stopped_on_a_full_filesystem").await
    else {
        return;
    };
    // Phase one: nothing consumes (Redis unreachable) until the filesystem is full.
    let filling = Config {
        sink: "redis".into(),
        redis_url: "redis://127.0.0.1:1".into(),
        ..full_disk_config(&data, relay.url())
    };
    let pipeline = Pipeline::start(&filling, 0).expect("pipeline");
    let (stop, queue) = (pipeline.stopper(), pipeline.lanes[0].queue.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("the filesystem to fill", || {
        queue.stats().blocked_pushes_total > 0
    })
    .await;
    // Whatever else fits goes too: the restart must not rely on a byte left free.
    let filler = data.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024 * 1024]);
    let _ = stop.send(true);
    running
        .await
        .expect("join")
        .expect("a stop while blocked on a full disk is clean");
    drop(queue);

    // Phase two: start on the full filesystem and drain everything.
    let out = dir.path().join("out.jsonl");
    let draining = Config {
        start_cursor: None,
        jsonl_path: out.display().to_string(),
        ..full_disk_config(&data, relay.url())
    };
    let pipeline = Pipeline::start(&draining, 0).expect("the queue opens on a full disk");
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());
    // Space frees as the backlog drains; the filler goes too, as an operator would clear it.
    wait_for("some of the backlog delivered", || {
        !common::jsonl_seqs(&out).is_empty()
    })
    .await;
    let _ = std::fs::remove_file(&filler);
    wait_for("every seq delivered", || {
        common::jsonl_seqs(&out).len() as u64 >= FULL_DISK_EVENTS
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
    assert_every_seq_once_in_order(
        &common::jsonl_seqs(&out),
        BASE_SEQ..BASE_SEQ + FULL_DISK_EVENTS,
    );
}
