//! A child process appends and is killed with SIGKILL at a random moment, many times;
//! after each kill the reopened log holds every record acknowledged as durable, in order.
//!
//! The child is this same test binary, re-run with `SPILLWAY_CRASH_CHILD` set: it
//! appends forever and prints `durable <next_seq>` whenever more records became durable.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spillway_storage::{open, Backend, Durability, LogConfig};

const CHILD_ENV: &str = "SPILLWAY_CRASH_CHILD";
const ROUNDS_PER_CASE: usize = 6;

fn config(backend: Backend, durability: Durability) -> LogConfig {
    let mut config = common::small_config(backend);
    config.durability = durability;
    config.segment_bytes_max = 64 * 1024;
    config
}

fn cases() -> Vec<(&'static str, Backend, Durability)> {
    vec![
        (
            "segment-every-batch",
            Backend::Segment,
            Durability::EveryBatch,
        ),
        (
            "segment-periodic",
            Backend::Segment,
            Durability::Periodic { interval_ms: 5 },
        ),
        ("sled-every-batch", Backend::Sled, Durability::EveryBatch),
    ]
}

/// The child's side: append batches forever, reporting what is durable.
fn child(dir: &Path, case: &str) -> ! {
    let (_, backend, durability) = cases()
        .into_iter()
        .find(|c| c.0 == case)
        .expect("known case");
    let log = open(dir, config(backend, durability)).expect("child open");
    let mut rng = Rng(log.stats().next_seq.wrapping_add(0x9e3779b97f4a7c15));
    let mut reported = 0;
    loop {
        let next = log.stats().next_seq;
        let count = 1 + rng.next() % 40;
        let records: Vec<Vec<u8>> = (next..next + count).map(common::payload).collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        log.append(&refs).expect("child append");
        // Consume some of the older records now and then, to exercise reclaim under crashes.
        if rng.next().is_multiple_of(16) {
            let stats = log.stats();
            log.consume_until(stats.first_seq + (stats.next_seq - stats.first_seq) / 2)
                .expect("child consume");
        }
        let durable = log.stats().durable_next_seq;
        if durable > reported {
            println!("durable {durable}");
            reported = durable;
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_mid_append_loses_nothing_acknowledged_as_durable() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (case, dir) = spec.split_once('=').expect("case=dir");
        child(Path::new(dir), case);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    for (case, backend, durability) in cases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut acknowledged = 0u64;
        for round in 0..ROUNDS_PER_CASE {
            let spec = format!("{case}={}", dir.path().display());
            let mut child = Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "sigkill_mid_append_loses_nothing_acknowledged_as_durable",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(n) = line
                        .strip_prefix("durable ")
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        let _ = tx.send(n);
                    }
                }
            });
            // Wait for the child to make progress, then kill it at a random moment.
            let first_ack = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the child acknowledged nothing");
            acknowledged = acknowledged.max(first_ack);
            let deadline = Instant::now() + Duration::from_millis(20 + rng.next() % 300);
            while Instant::now() < deadline {
                if let Ok(n) = rx.recv_timeout(Duration::from_millis(1)) {
                    acknowledged = acknowledged.max(n);
                }
            }
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            reader.join().expect("reader");
            while let Ok(n) = rx.try_recv() {
                acknowledged = acknowledged.max(n);
            }

            let log = open(dir.path(), config(backend, durability)).expect("reopen after kill");
            let stats = log.stats();
            assert!(stats.next_seq >= acknowledged, "{case} round {round}: log ends at {} but {acknowledged} were durable (seed {seed})", stats.next_seq);
            let mut seen = 0u64;
            for (seq, bytes) in common::read_all(log.as_ref(), stats.first_seq) {
                assert_eq!(
                    bytes,
                    common::payload(seq),
                    "{case} round {round}: record {seq} (seed {seed})"
                );
                seen += 1;
            }
            assert_eq!(seen, stats.next_seq - stats.first_seq);
            // The log accepts new appends after recovery.
            let next = stats.next_seq;
            let more: Vec<Vec<u8>> = (next..next + 3).map(common::payload).collect();
            let refs: Vec<&[u8]> = more.iter().map(|r| r.as_slice()).collect();
            assert_eq!(
                log.append(&refs).expect("append after recovery").first,
                next
            );
            log.flush().expect("flush");
            acknowledged = acknowledged.max(next + 3);
            println!(
                "{case} round {round}: {} records intact, {} acknowledged, recovery {:?}",
                seen,
                acknowledged,
                log.recovery_report()
            );
        }
    }
}

/// Holds the log in use so a second opener is refused rather than corrupting it.
#[test]
fn a_second_open_of_a_live_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    let second = open(dir.path(), common::small_config(Backend::Segment));
    assert!(
        second.is_err(),
        "a second open must fail while the first holds the log"
    );
    drop(log);
}
