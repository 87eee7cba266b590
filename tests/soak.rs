//! The soak: the `spillway` binary under every fault at once for minutes, then every seq
//! checked. `cargo test` skips it (ignored); `scripts/soak` runs it in release.
//!
//! One run, all at once:
//! - a loopback relay paced at `SOAK_EVENTS_PER_SEC` that drops the connection every
//!   `SOAK_DROP_EVERY_SECS` of production (a `Fault::DropConnection` per interval, each fired once);
//! - a real redis-server, read by a thread slower than the relay in alternating windows,
//!   so the sink's high-water mark holds it back and the backlog spills to disk;
//! - `SOAK_KILL_CYCLES` SIGKILLs of the binary, 1-4 s apart, each restarted on the same data dir;
//! - the redis-server SIGSTOPped for `SOAK_REDIS_OUTAGE_SECS` (a hung server: connections
//!   open, nothing answers; the harder case for a client, and Redis keeps its data);
//! - the data dir on a tmpfs filled to its last byte for `SOAK_DISK_FULL_SECS`, then freed
//!   (skipped, with the reason printed, where `mount -t tmpfs` is refused).
//!
//! Then the relay stops producing, the reader runs flat out, and one table says what was
//! expected, delivered, lost and duplicated. The test fails on any lost seq, and on
//! duplicates above the bound `duplicates_bound` derives. Every wait has a deadline; the
//! whole run stops at `SOAK_SECONDS_MAX`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use spillway::bench::rss::{disk_usage_bytes, proc_kib_field};
use spillway::source::relay::{Fault, LoopbackRelay};

const BASE_SEQ: u64 = 70_000_000_000;
const STREAM: &str = "firehose_live";
/// The binary's cursor save interval (`FirehoseConfig::cursor_save_interval_ms`).
const CURSOR_SAVE_MS: u64 = 250;
/// The durability the children run with, and its interval.
const DURABILITY: &str = "periodic:100";
const DURABILITY_MS: u64 = 100;
/// The children's sink batch (`sink_batch_events_max`).
const SINK_BATCH_EVENTS: u64 = 500;
/// Entries the reader takes in one XRANGE at most.
const READ_COUNT_MAX: u64 = 2_000;
/// Timeout of each of the reader's Redis calls: a stopped server must not hang it.
const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait before restarting a child that exited on its own (a full disk can refuse every start).
const RESTART_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Reads kept going after every seq arrived, to count late duplicates.
const LATE_DUPLICATES_WAIT: Duration = Duration::from_secs(2);

/// The run's settings, each from `SOAK_<NAME>` in the environment.
#[derive(Debug, Clone)]
struct Knobs {
    kill_cycles: u64,
    seconds_max: u64,
    redis_outage_secs: u64,
    /// Seconds before the outage, and between the outage and the full disk.
    phase_gap_secs: u64,
    /// Kill cycles during the outage and the full disk too (`SOAK_FAULTS_OVERLAP=1`), not before them.
    faults_overlap: bool,
    events_per_sec: u64,
    kill_ms_min: u64,
    kill_ms_max: u64,
    drop_every_secs: u64,
    /// The reader's pace in its slow windows.
    reader_events_per_sec: u64,
    reader_slow_secs: u64,
    reader_fast_secs: u64,
    high_water_events: u64,
    disk_full_secs: u64,
    /// 0: derived from the outage's backlog.
    tmpfs_bytes: u64,
    memory_budget_bytes: u64,
    segment_bytes_max: u64,
    /// Time kept for the final drain out of `seconds_max`.
    drain_secs: u64,
    seed: u64,
}

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Self {
        let events_per_sec = knob("SOAK_EVENTS_PER_SEC", 4_000).max(1);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        let knobs = Knobs {
            kill_cycles: knob("SOAK_KILL_CYCLES", 100),
            seconds_max: knob("SOAK_SECONDS_MAX", 900),
            redis_outage_secs: knob("SOAK_REDIS_OUTAGE_SECS", 60),
            phase_gap_secs: knob("SOAK_PHASE_GAP_SECS", 15),
            faults_overlap: knob("SOAK_FAULTS_OVERLAP", 0) != 0,
            events_per_sec,
            kill_ms_min: knob("SOAK_KILL_MS_MIN", 1_000),
            kill_ms_max: knob("SOAK_KILL_MS_MAX", 4_000),
            drop_every_secs: knob("SOAK_DROP_EVERY_SECS", 5).max(1),
            reader_events_per_sec: knob("SOAK_READER_EVENTS_PER_SEC", events_per_sec / 2),
            reader_slow_secs: knob("SOAK_READER_SLOW_SECS", 20),
            reader_fast_secs: knob("SOAK_READER_FAST_SECS", 10),
            high_water_events: knob("SOAK_HIGH_WATER_EVENTS", 10_000).max(2),
            disk_full_secs: knob("SOAK_DISK_FULL_SECS", 15),
            tmpfs_bytes: knob("SOAK_TMPFS_BYTES", 0),
            memory_budget_bytes: knob("SOAK_MEMORY_BUDGET_BYTES", 32 << 20),
            segment_bytes_max: knob("SOAK_SEGMENT_BYTES_MAX", 16 << 20),
            drain_secs: knob("SOAK_DRAIN_SECS", 180),
            seed: knob("SOAK_SEED", seed) | 1,
        };
        assert!(
            knobs.kill_ms_min >= 1 && knobs.kill_ms_min <= knobs.kill_ms_max,
            "SOAK_KILL_MS_MIN must be at least 1 and at most SOAK_KILL_MS_MAX"
        );
        assert!(
            knobs.drain_secs < knobs.seconds_max,
            "SOAK_DRAIN_SECS must leave time for the faults within SOAK_SECONDS_MAX"
        );
        knobs
    }
}

/// xorshift64: reproducible with `SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Seconds since `start`, for the timeline.
fn at(start: Instant) -> String {
    format!("[{:7.1} s]", start.elapsed().as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A tmpfs mounted for the run, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path`; the error says why not.
    fn mount(path: &Path, bytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs {}: {} {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // A process still holding a file there (a failed run): detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The spillway binary as the run starts it: same data dir, relay, Redis and settings each time.
struct Binary {
    data: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Binary {
    fn new(
        data: PathBuf,
        log: PathBuf,
        relay: &str,
        redis: &str,
        knobs: &Knobs,
        disk_budget_bytes: u64,
    ) -> Self {
        let env = [
            ("SPILLWAY_DATA_DIR", data.display().to_string()),
            ("SPILLWAY_RELAYS", format!("[\"{relay}\"]")),
            ("SPILLWAY_REDIS_URL", redis.to_string()),
            ("SPILLWAY_REDIS_STREAM", STREAM.to_string()),
            (
                "SPILLWAY_MEMORY_BUDGET_BYTES",
                knobs.memory_budget_bytes.to_string(),
            ),
            ("SPILLWAY_DISK_BUDGET_BYTES", disk_budget_bytes.to_string()),
            (
                "SPILLWAY_SEGMENT_BYTES_MAX",
                knobs.segment_bytes_max.to_string(),
            ),
            ("SPILLWAY_DURABILITY", format!("\"{DURABILITY}\"")),
            (
                "SPILLWAY_SINK_BATCH_EVENTS_MAX",
                SINK_BATCH_EVENTS.to_string(),
            ),
            (
                "SPILLWAY_REDIS_HIGH_WATER_EVENTS",
                knobs.high_water_events.to_string(),
            ),
            (
                "SPILLWAY_REDIS_LOW_WATER_EVENTS",
                (knobs.high_water_events / 2).to_string(),
            ),
            ("SPILLWAY_METRICS_LISTEN", "\"127.0.0.1:0\"".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Binary { data, log, env }
    }

    /// The configuration the children get, as the binary reads it.
    fn config(&self) -> spillway::config::Config {
        spillway::config::Config::load(None, self.env.clone())
            .unwrap_or_else(|e| panic!("the soak's spillway settings are refused: {e}"))
    }

    /// Whether a relay cursor was saved: until then a start must name the first seq (else it starts live).
    fn cursor_saved(&self) -> bool {
        std::fs::read_dir(&self.data).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("cursor-"))
        })
    }

    fn spawn(&self) -> Running {
        let log = common::append_log(&self.log);
        let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
        command
            .args(["run", "--progress-secs", "0"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "spillway=info")
            .stdout(Stdio::null())
            .stderr(log);
        if !self.cursor_saved() {
            command.env("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", env!("CARGO_BIN_EXE_spillway")));
        Running {
            child: Some(child),
            started: Instant::now(),
        }
    }
}

/// A running child, SIGKILLed and reaped when dropped (a failed run leaves no process behind).
struct Running {
    child: Option<Child>,
    started: Instant,
}

impl Running {
    /// The kernel's peak RSS of the child so far, in bytes (0 once it is gone).
    fn peak_rss_bytes(&self) -> u64 {
        self.child.as_ref().map_or(0, |c| {
            proc_kib_field(&format!("/proc/{}/status", c.id()), "VmHWM:").unwrap_or(0) * 1024
        })
    }

    /// Its exit status if it exited on its own.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the run did to the children.
#[derive(Default)]
struct Lifecycle {
    kills: u64,
    restarts: u64,
    /// Exit statuses of children that exited on their own.
    exits: Vec<String>,
    peak_rss_bytes: u64,
    peak_disk_bytes: u64,
}

/// Shared between the main thread and the reader.
#[derive(Default)]
struct ReaderControl {
    /// Read flat out from now on.
    drain: AtomicBool,
    stop: AtomicBool,
    /// Distinct seqs read so far.
    distinct: AtomicU64,
    /// The stream's length at the last look.
    xlen: AtomicU64,
    /// The reader's last failed Redis call (the outage makes them), for the progress line.
    last_error: std::sync::Mutex<String>,
}

impl ReaderControl {
    fn note_error(&self, error: &redis::RedisError) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error.to_string();
        }
    }
}

/// What the reader saw.
#[derive(Default)]
struct Tally {
    /// Reads per seq, indexed by seq - BASE_SEQ.
    counts: Vec<u16>,
    /// Seqs read at least once (kept as it goes: a scan of `counts` per read would cost a core).
    distinct: u64,
    /// Seqs below BASE_SEQ or too far above it to index.
    foreign: Vec<u64>,
    /// Entries whose frame did not decode, or whose `seq` field was not the frame's.
    malformed: u64,
    xlen_peak: u64,
    /// Redis calls that failed or timed out (the outage).
    errors: u64,
}

/// A stream entry id `ms-n` as numbers.
type EntryId = (u64, u64);

/// What one read step got.
struct Step {
    entries: u64,
    last_id: Option<EntryId>,
    /// The stream's length before the read.
    xlen: u64,
}

fn parse_id(id: &str) -> Option<EntryId> {
    let (ms, n) = id.split_once('-')?;
    Some((ms.parse().ok()?, n.parse().ok()?))
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let connection = redis::Client::open(url)?.get_connection_with_timeout(REDIS_CALL_TIMEOUT)?;
    connection.set_read_timeout(Some(REDIS_CALL_TIMEOUT))?;
    connection.set_write_timeout(Some(REDIS_CALL_TIMEOUT))?;
    Ok(connection)
}

/// Reads the stream from its head, paced in slow windows, and counts every seq.
///
/// Entries are read after the last id seen and trimmed below it with `XTRIM MINID`,
/// which is idempotent: a trim sent to a stopped server and run when it resumes
/// removes only what was read, and a read that timed out is read again, never skipped.
fn read_stream(url: &str, knobs: &Knobs, control: &ReaderControl) -> Tally {
    let mut tally = Tally::default();
    let index_max = knobs
        .seconds_max
        .saturating_mul(knobs.events_per_sec)
        .saturating_mul(4);
    let mut connection: Option<redis::Connection> = None;
    let mut last_id: Option<EntryId> = None;
    let started = Instant::now();
    let cycle = Duration::from_secs(knobs.reader_slow_secs + knobs.reader_fast_secs);
    let mut window: Option<(u128, u64)> = None; // (slow window number, entries read in it)
    while !control.stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        let slow_window = if control.drain.load(Ordering::Relaxed) || cycle.is_zero() {
            None
        } else {
            let number = elapsed.as_millis() / cycle.as_millis();
            let into = elapsed.as_millis() % cycle.as_millis();
            (into < u128::from(knobs.reader_slow_secs) * 1000).then_some((number, into))
        };
        let count = match slow_window {
            None => READ_COUNT_MAX,
            Some((number, into_ms)) => {
                if window.is_none_or(|(n, _)| n != number) {
                    window = Some((number, 0));
                }
                let read = window.map_or(0, |(_, read)| read);
                let allowed = (into_ms as u64).saturating_mul(knobs.reader_events_per_sec) / 1000;
                allowed.saturating_sub(read).min(READ_COUNT_MAX)
            }
        };
        if count == 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(c) = connection.as_mut() else {
            match connect(url) {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    tally.errors += 1;
                    control.note_error(&e);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            continue;
        };
        match read_once(c, last_id, count, index_max, &mut tally) {
            Ok(Step {
                entries: got,
                last_id: id,
                xlen,
            }) => {
                if let Some(w) = window.as_mut() {
                    w.1 += got;
                }
                if id.is_some() {
                    last_id = id;
                }
                control.distinct.store(tally.distinct, Ordering::Relaxed);
                control.xlen.store(xlen, Ordering::Relaxed);
                if got == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) => {
                tally.errors += 1;
                control.note_error(&e);
                connection = None;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    tally
}

/// One XLEN, one XRANGE after `last_id`, one XTRIM below what was read.
fn read_once(
    c: &mut redis::Connection,
    last_id: Option<EntryId>,
    count: u64,
    index_max: u64,
    tally: &mut Tally,
) -> redis::RedisResult<Step> {
    let xlen: u64 = redis::cmd("XLEN").arg(STREAM).query(c)?;
    tally.xlen_peak = tally.xlen_peak.max(xlen);
    let start = last_id.map_or("-".to_string(), |(ms, n)| format!("({ms}-{n}"));
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query(c)?;
    let mut last = None;
    for entry in &reply.ids {
        last = parse_id(&entry.id).or(last);
        let seq: Option<u64> = entry.get("seq");
        let frame: Option<Vec<u8>> = entry.get("frame");
        let decoded = frame
            .as_deref()
            .and_then(|f| spillway::source::frame::decode(f, usize::MAX).ok())
            .and_then(|f| f.seq());
        let Some(seq) = seq.filter(|s| decoded == Some(*s)) else {
            tally.malformed += 1;
            continue;
        };
        match seq.checked_sub(BASE_SEQ).filter(|i| *i < index_max) {
            Some(i) => {
                let i = i as usize;
                if tally.counts.len() <= i {
                    tally.counts.resize(i + 1, 0);
                }
                if tally.counts[i] == 0 {
                    tally.distinct += 1;
                }
                tally.counts[i] = tally.counts[i].saturating_add(1);
            }
            None => tally.foreign.push(seq),
        }
    }
    if let Some((ms, n)) = last {
        // Everything up to `last` is counted: trim it. `ms-(n+1)` keeps nothing read.
        let _: u64 = redis::cmd("XTRIM")
            .arg(STREAM)
            .arg("MINID")
            .arg(format!("{ms}-{}", n + 1))
            .query(c)?;
    }
    Ok(Step {
        entries: reply.ids.len() as u64,
        last_id: last,
        xlen,
    })
}

/// The faults the run makes besides the kills, on their own thread, at fixed times.
struct Chaos {
    redis_pid: u32,
    /// The filler file on the tmpfs, if mounted.
    filler: Option<PathBuf>,
    outage_at: Duration,
    outage: Duration,
    disk_full_at: Duration,
    disk_full: Duration,
}

/// What the chaos thread did.
#[derive(Default, Debug)]
struct ChaosReport {
    outage_secs: f64,
    filler_bytes_peak: u64,
    disk_full_secs: f64,
}

/// Resumes a SIGSTOPped server when dropped, so a failed run never leaves it stopped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

/// Writes zeros to `path` until the filesystem refuses (ENOSPC); returns the file's length.
fn fill(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let chunk = vec![0u8; 1 << 20];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e),
        }
    }
    // What was written is in the page cache of a tmpfs: it takes the space already.
    Ok(file.metadata()?.len())
}

impl Chaos {
    /// Makes the faults at their offsets from `base`; `start` dates the timeline.
    fn run(&self, start: Instant, base: Instant) -> ChaosReport {
        let mut report = ChaosReport::default();
        let wait_until = |offset: Duration| {
            let now = base.elapsed();
            if offset > now {
                std::thread::sleep(offset - now);
            }
        };
        if !self.outage.is_zero() {
            wait_until(self.outage_at);
            match signal(self.redis_pid, libc::SIGSTOP) {
                Ok(()) => {
                    let resume = Resume(self.redis_pid);
                    let began = Instant::now();
                    println!(
                        "{} redis-server (pid {}) SIGSTOPped for {} s: a hung server",
                        at(start),
                        self.redis_pid,
                        self.outage.as_secs()
                    );
                    std::thread::sleep(self.outage);
                    drop(resume);
                    report.outage_secs = began.elapsed().as_secs_f64();
                    println!("{} redis-server SIGCONTed", at(start));
                }
                Err(e) => println!(
                    "{} the Redis outage is skipped: SIGSTOP failed: {e}",
                    at(start)
                ),
            }
        }
        if let Some(filler) = &self.filler {
            wait_until(self.disk_full_at);
            let began = Instant::now();
            let mut first = true;
            // Topped up every 500 ms: space the log frees (acked segments) is taken again at once.
            while began.elapsed() < self.disk_full {
                match fill(filler) {
                    Ok(bytes) => {
                        report.filler_bytes_peak = report.filler_bytes_peak.max(bytes);
                        if first {
                            println!(
                                "{} the data dir's tmpfs is full: a filler of {} for {} s",
                                at(start),
                                mib(bytes),
                                self.disk_full.as_secs()
                            );
                            first = false;
                        }
                    }
                    Err(e) => {
                        println!("{} filling {} failed: {e}", at(start), filler.display());
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if let Err(e) = std::fs::remove_file(filler) {
                panic!("removing the filler {}: {e}", filler.display());
            }
            report.disk_full_secs = began.elapsed().as_secs_f64();
            println!(
                "{} the filler is removed: the disk has room again",
                at(start)
            );
        }
        report
    }
}

/// The loopback relay's settings: the real frames looped from BASE_SEQ.
fn relay_config(
    knobs: &Knobs,
    total_events: Option<u64>,
    paced: bool,
) -> spillway::source::relay::RelayConfig {
    let mut config = common::fixture::relay_config(BASE_SEQ, 0);
    config.total_events = total_events;
    config.events_per_sec = paced.then_some(knobs.events_per_sec);
    config
}

/// A DropConnection every `drop_every_secs` of production, over the longest run possible.
fn drop_faults(knobs: &Knobs) -> Vec<(u64, Fault)> {
    let interval = knobs.events_per_sec * knobs.drop_every_secs;
    let count = (knobs.seconds_max * knobs.events_per_sec / interval).min(10_000);
    (1..=count)
        .map(|k| (BASE_SEQ + k * interval, Fault::DropConnection))
        .collect()
}

/// The duplicates the run may show, and how that bound is made.
///
/// A restart resumes from the last saved cursor (the durable watermark) and the
/// consumer's last durable ack, so what reached Redis above those comes again. Per
/// restart that is at most: the sink batch in flight (written, not acked); the events
/// whose acks moved the watermark since the last cursor save and were not yet synced,
/// which are memory-tier events (log events are durable already), so at most the
/// memory tier's content; and what arrived in one cursor-save interval plus one sync
/// interval. The Redis outage adds one batch (a MULTI sent to the stopped server, timed
/// out, retried, and run by the server when it resumes). A full disk can leave a manifest
/// sled cannot open; its rebuild forgets the sink's position, so the records the log kept
/// come again once: at most `rebuild_events`, the spill dir's peak in events.
fn duplicates_bound(
    restarts: u64,
    tier_events: u64,
    rebuild_events: u64,
    knobs: &Knobs,
) -> (u64, String) {
    let interval_events = knobs.events_per_sec * (CURSOR_SAVE_MS + DURABILITY_MS) / 1000;
    let per_restart = SINK_BATCH_EVENTS + tier_events + interval_events;
    let bound = restarts * per_restart + SINK_BATCH_EVENTS + rebuild_events;
    let why = format!(
        "{restarts} restarts x ({SINK_BATCH_EVENTS} batch in flight + {tier_events} memory tier + {interval_events} in {CURSOR_SAVE_MS}+{DURABILITY_MS} ms) + {SINK_BATCH_EVENTS} outage batch + {rebuild_events} kept by the log, if a full disk makes a manifest rebuild"
    );
    (bound, why)
}

#[test]
#[ignore = "soak: run by scripts/soak, not in CI"]
fn soak_kill9_redis_outage_relay_drops_and_a_full_disk_lose_no_seq() {
    let mut soak = Soak::start(Knobs::from_env());
    soak.make_faults();
    soak.stop_production();
    soak.drain();
    let report = soak.finish();
    report.print();
    report.check();
}

/// Everything one run holds. Fields drop in order: the children before their tmpfs,
/// the tmpfs before its directory.
struct Soak {
    knobs: Knobs,
    start: Instant,
    deadline: Instant,
    supervisor: Supervisor,
    control: Arc<ReaderControl>,
    reader: Option<std::thread::JoinHandle<Tally>>,
    relay: LoopbackRelay,
    relay_started: Instant,
    /// Connections the first relay accepted (the second relay counts its own).
    relay_connections_before: u64,
    drops_planned: usize,
    chaos: ChaosReport,
    expected: u64,
    /// Events the memory tier holds at most: part of the duplicates' bound.
    tier_events: u64,
    /// The fixture frames' mean size.
    frame_bytes_avg: u64,
    runtime: tokio::runtime::Runtime,
    redis: RedisServer,
    tmpfs: Result<Tmpfs, String>,
    tmpfs_bytes: u64,
    disk_budget_bytes: u64,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Soak {
    /// Redis, the relay, the data dir (on a tmpfs when it mounts), the reader and the first child.
    fn start(knobs: Knobs) -> Self {
        let start = Instant::now();
        println!("soak settings: {knobs:?}");
        let frame_bytes_avg = {
            let frames = relay_config(&knobs, None, false).frames;
            frames.iter().map(|f| f.len() as u64).sum::<u64>() / frames.len().max(1) as u64
        };
        let redis = RedisServer::start();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the relay");
        let mut first_relay = relay_config(&knobs, None, true);
        first_relay.faults = drop_faults(&knobs);
        let drops_planned = first_relay.faults.len();
        let relay_started = Instant::now();
        let relay = runtime
            .block_on(LoopbackRelay::start(first_relay))
            .expect("starting the loopback relay");

        // Room for the outage's backlog, so the disk fills when the run fills it, not before.
        let dir = tempfile::tempdir().expect("tempdir");
        let tmpfs_bytes = if knobs.tmpfs_bytes > 0 {
            knobs.tmpfs_bytes
        } else {
            let backlog_secs = knobs.redis_outage_secs + knobs.reader_slow_secs;
            (knobs.events_per_sec * backlog_secs * frame_bytes_avg * 3 / 2).max(256 << 20)
        };
        let tmpfs = Tmpfs::mount(&dir.path().join("tmpfs"), tmpfs_bytes);
        let data = match &tmpfs {
            Ok(mount) => {
                println!("data dir on a tmpfs of {}", mib(tmpfs_bytes));
                mount.path.join("data")
            }
            Err(why) => {
                println!("the disk-full phase will be skipped: {why}");
                dir.path().join("data")
            }
        };
        // Larger than the tmpfs: the filesystem fills before the budget does.
        let disk_budget_bytes = tmpfs_bytes * 2;
        let log = dir.path().join("spillway.log");
        let binary = Binary::new(
            data,
            log.clone(),
            &relay.url(),
            &redis.url(),
            &knobs,
            disk_budget_bytes,
        );
        let tier_bytes = binary
            .config()
            .queue_config(spillway::source::EventFamily::Firehose)
            .memory_budget()
            .expect("the memory budget fits the log's buffers")
            .memory_tier_bytes;
        let tier_events =
            tier_bytes / spillway::queue::budget::event_cost(frame_bytes_avg as usize);
        let control = Arc::new(ReaderControl::default());
        let reader = {
            let (url, knobs, control) = (redis.url(), knobs.clone(), Arc::clone(&control));
            std::thread::spawn(move || read_stream(&url, &knobs, &control))
        };
        Soak {
            deadline: start + Duration::from_secs(knobs.seconds_max),
            supervisor: Supervisor::new(binary, start),
            knobs,
            start,
            control,
            reader: Some(reader),
            relay,
            relay_started,
            relay_connections_before: 0,
            drops_planned,
            chaos: ChaosReport::default(),
            expected: 0,
            tier_events,
            frame_bytes_avg,
            runtime,
            redis,
            tmpfs,
            tmpfs_bytes,
            disk_budget_bytes,
            log,
            _dir: dir,
        }
    }

    /// Runs the children until `until`, with a progress line every few seconds.
    fn supervise_until(&mut self, until: Instant) {
        let (start, control, relay) = (self.start, &self.control, &self.relay);
        self.supervisor
            .run_until(until, &|life| progress(start, life, control, relay));
    }

    /// The kill cycles, then (or meanwhile, with `SOAK_FAULTS_OVERLAP=1`) the outage and the full disk.
    fn make_faults(&mut self) {
        let knobs = self.knobs.clone();
        let gap = Duration::from_secs(knobs.phase_gap_secs);
        let outage = Duration::from_secs(knobs.redis_outage_secs);
        let plan = Chaos {
            redis_pid: self.redis.pid(),
            filler: self.tmpfs.as_ref().ok().map(|m| m.path.join("filler")),
            outage_at: gap,
            outage,
            disk_full_at: gap + outage + gap,
            disk_full: Duration::from_secs(knobs.disk_full_secs),
        };
        let chaos_length = plan.disk_full_at + plan.disk_full;
        let faults_deadline = self.deadline - Duration::from_secs(knobs.drain_secs);
        let kills_deadline = if knobs.faults_overlap {
            faults_deadline
        } else {
            faults_deadline
                .checked_sub(chaos_length)
                .unwrap_or(self.start)
        };
        assert!(
            self.start + chaos_length < faults_deadline,
            "the outage and the full disk ({} s) must fit in SOAK_SECONDS_MAX - SOAK_DRAIN_SECS",
            chaos_length.as_secs()
        );
        let start = self.start;
        // Not started yet (`Err`), or running on its own thread.
        let begin = move |plan: Chaos| std::thread::spawn(move || plan.run(start, Instant::now()));
        let chaos = if knobs.faults_overlap {
            Ok(begin(plan))
        } else {
            Err(plan)
        };
        let mut rng = Rng(knobs.seed);
        while self.supervisor.life.kills < knobs.kill_cycles && Instant::now() < kills_deadline {
            let alive = Duration::from_millis(rng.between(knobs.kill_ms_min, knobs.kill_ms_max));
            self.supervise_until((Instant::now() + alive).min(kills_deadline));
            if Instant::now() < kills_deadline {
                self.supervisor.kill_and_restart();
            }
        }
        if self.supervisor.life.kills < knobs.kill_cycles {
            println!(
                "{} only {} of {} kill cycles fit before the other faults and the drain's reserve",
                at(self.start),
                self.supervisor.life.kills,
                knobs.kill_cycles
            );
        }
        let chaos = chaos.unwrap_or_else(|plan| {
            println!(
                "{} kill cycles done; the outage and the full disk follow",
                at(self.start)
            );
            begin(plan)
        });
        while !chaos.is_finished() && Instant::now() < faults_deadline {
            self.supervise_until(Instant::now() + Duration::from_millis(200));
        }
        // Bounded: the plan's own length, which fits before `faults_deadline`.
        self.chaos = chaos.join().expect("the chaos thread");
    }

    /// The relay goes away and comes back on its address holding exactly `expected`
    /// events, served at once. A second above the first relay's head covers a sender
    /// that read the head just before it stopped.
    fn stop_production(&mut self) {
        self.relay_connections_before = self.relay.stats().connections.load(Ordering::Relaxed);
        let addr = self.relay.addr();
        let rate = self.knobs.events_per_sec;
        // A relay that holds nothing stands in for the moment: the old one must be gone
        // (its senders stopped) before `expected` is measured.
        let stand_in = start_relay_on(
            &self.runtime,
            relay_config(&self.knobs, Some(0), false),
            "127.0.0.1:0".parse().expect("an address"),
        );
        drop(std::mem::replace(&mut self.relay, stand_in));
        std::thread::sleep(Duration::from_millis(200));
        self.expected = ((self.relay_started.elapsed().as_secs_f64() + 1.0) * rate as f64) as u64;
        self.relay = start_relay_on(
            &self.runtime,
            relay_config(&self.knobs, Some(self.expected), false),
            addr,
        );
        println!(
            "{} production stopped at {} events; draining with the reader flat out",
            at(self.start),
            self.expected
        );
    }

    /// Until every seq was read (or the deadline), then a little longer for late duplicates.
    fn drain(&mut self) {
        self.control.drain.store(true, Ordering::SeqCst);
        while self.control.distinct.load(Ordering::Relaxed) < self.expected
            && Instant::now() < self.deadline
        {
            self.supervise_until((Instant::now() + Duration::from_millis(200)).min(self.deadline));
        }
        self.supervise_until((Instant::now() + LATE_DUPLICATES_WAIT).min(self.deadline));
    }

    /// Stops the reader and the last child; the figures.
    fn finish(mut self) -> Report {
        self.control.stop.store(true, Ordering::SeqCst);
        let tally = self
            .reader
            .take()
            .map(|r| r.join().expect("the reader thread"))
            .unwrap_or_default();
        let life = self.supervisor.finish();
        let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("soak-spillway.log");
        match std::fs::copy(&self.log, &kept) {
            Ok(_) => println!("the children's log: {}", kept.display()),
            Err(e) => println!("keeping the children's log at {}: {e}", kept.display()),
        }
        let connections =
            self.relay_connections_before + self.relay.stats().connections.load(Ordering::Relaxed);
        Report::new(&self, &tally, &life, connections)
    }
}

/// The run's figures.
struct Report {
    rows: Vec<(&'static str, String)>,
    lost: u64,
    missing: Vec<u64>,
    malformed: u64,
    unexpected: u64,
    duplicates: u64,
    bound: u64,
    why: String,
    log_tail: String,
}

impl Report {
    fn new(soak: &Soak, tally: &Tally, life: &Lifecycle, connections: u64) -> Self {
        let (knobs, expected) = (&soak.knobs, soak.expected);
        let read = |i: u64| tally.counts.get(i as usize).copied().unwrap_or(0);
        let delivered = (0..expected).filter(|i| read(*i) > 0).count() as u64;
        let missing: Vec<u64> = (0..expected)
            .filter(|i| read(*i) == 0)
            .take(10)
            .map(|i| BASE_SEQ + i)
            .collect();
        let lost = expected - delivered;
        let duplicates: u64 = tally
            .counts
            .iter()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum();
        let unexpected = tally
            .counts
            .iter()
            .skip(expected as usize)
            .filter(|n| **n > 0)
            .count() as u64
            + tally.foreign.len() as u64;
        let chaos = &soak.chaos;
        let rebuild_events = if chaos.disk_full_secs > 0.0 {
            life.peak_disk_bytes / soak.frame_bytes_avg.max(1)
        } else {
            0
        };
        let (bound, why) = duplicates_bound(
            life.kills + life.exits.len() as u64,
            soak.tier_events,
            rebuild_events,
            knobs,
        );
        let disk = match &soak.tmpfs {
            Err(why) => format!("skipped: {why}"),
            Ok(_) if chaos.disk_full_secs == 0.0 => "not made (SOAK_DISK_FULL_SECS=0)".into(),
            Ok(_) => format!(
                "{:.0} s full (filler up to {} on a {} tmpfs; disk budget {})",
                chaos.disk_full_secs,
                mib(chaos.filler_bytes_peak),
                mib(soak.tmpfs_bytes),
                mib(soak.disk_budget_bytes)
            ),
        };
        let mut exit_statuses = life.exits.clone();
        exit_statuses.sort();
        exit_statuses.dedup();
        let rows = vec![
            ("seqs expected (the relay produced)", expected.to_string()),
            (
                "delivered (distinct seqs read from Redis)",
                delivered.to_string(),
            ),
            (
                "lost",
                if missing.is_empty() {
                    "0".to_string()
                } else {
                    format!("{lost} (first: {missing:?})")
                },
            ),
            (
                "duplicated (reads beyond one per seq)",
                format!("{duplicates} (bound {bound} = {why})"),
            ),
            (
                "unexpected seqs / malformed entries",
                format!("{unexpected} / {}", tally.malformed),
            ),
            (
                "kill -9 cycles",
                format!("{} of {}", life.kills, knobs.kill_cycles),
            ),
            ("restarts", life.restarts.to_string()),
            (
                "exits on their own",
                format!("{} {exit_statuses:?}", life.exits.len()),
            ),
            (
                "relay connections",
                format!(
                    "{connections} ({} drops planned, one per {} s of production)",
                    soak.drops_planned, knobs.drop_every_secs
                ),
            ),
            (
                "Redis outage (SIGSTOP)",
                format!(
                    "{:.0} s; the reader's failed calls: {}",
                    chaos.outage_secs, tally.errors
                ),
            ),
            ("disk full", disk),
            (
                "stream length peak (high-water mark)",
                format!("{} ({})", tally.xlen_peak, knobs.high_water_events),
            ),
            ("spill dir peak on disk", mib(life.peak_disk_bytes)),
            (
                "peak RSS of the children (VmHWM; memory budget)",
                format!(
                    "{} ({})",
                    mib(life.peak_rss_bytes),
                    mib(knobs.memory_budget_bytes)
                ),
            ),
            (
                "wall time",
                format!("{:.0} s", soak.start.elapsed().as_secs_f64()),
            ),
        ];
        let log_tail = if lost > 0 {
            let text = std::fs::read_to_string(&soak.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        } else {
            String::new()
        };
        Report {
            rows,
            lost,
            missing,
            malformed: tally.malformed,
            unexpected,
            duplicates,
            bound,
            why,
            log_tail,
        }
    }

    fn print(&self) {
        println!("\n| soak | result |\n|---|---|");
        for (name, value) in &self.rows {
            println!("| {name} | {value} |");
        }
        if !self.log_tail.is_empty() {
            println!("\nthe children's log, last lines:\n{}", self.log_tail);
        }
    }

    fn check(&self) {
        assert_eq!(
            self.lost, 0,
            "{} seqs lost; first missing: {:?}",
            self.lost, self.missing
        );
        assert_eq!(
            self.malformed, 0,
            "entries whose frame did not match their seq field"
        );
        assert_eq!(self.unexpected, 0, "seqs the relay never produced");
        assert!(
            self.duplicates <= self.bound,
            "{} duplicates exceed the bound of {} ({})",
            self.duplicates,
            self.bound,
            self.why
        );
    }
}

/// Starts a relay on `addr`, retrying while the old one's listener is still closing.
fn start_relay_on(
    runtime: &tokio::runtime::Runtime,
    config: spillway::source::relay::RelayConfig,
    addr: std::net::SocketAddr,
) -> LoopbackRelay {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runtime.block_on(LoopbackRelay::start_on(config.clone(), addr)) {
            Ok(relay) => return relay,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("restarting the relay on {addr}: {e}"),
        }
    }
}

/// One progress line.
fn progress(start: Instant, life: &Lifecycle, control: &ReaderControl, relay: &LoopbackRelay) {
    println!(
        "{} kills {}, restarts {}, own exits {}, relay sent {} frames over {} connections, read {} distinct seqs, stream length {}, spill dir peak {}{}",
        at(start),
        life.kills,
        life.restarts,
        life.exits.len(),
        relay.stats().frames_sent.load(Ordering::Relaxed),
        relay.stats().connections.load(Ordering::Relaxed),
        control.distinct.load(Ordering::Relaxed),
        control.xlen.load(Ordering::Relaxed),
        mib(life.peak_disk_bytes),
        control
            .last_error
            .lock()
            .ok()
            .filter(|e| !e.is_empty())
            .map(|e| format!(", reader's last Redis error: {e}"))
            .unwrap_or_default(),
    );
}

/// Runs the children: one at a time, sampled, restarted when killed or when it exits on its own.
struct Supervisor {
    binary: Binary,
    child: Running,
    life: Lifecycle,
    start: Instant,
    next_sample: Instant,
    next_progress: Instant,
    /// Children in a row that exited within a second of starting (a refused start): printed sparsely.
    refused_in_a_row: u64,
}

/// Interval between samples of the child's peak RSS and the spill dir's size.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// Interval between progress lines.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// The supervisor's step.
const STEP: Duration = Duration::from_millis(50);

impl Supervisor {
    fn new(binary: Binary, start: Instant) -> Self {
        Supervisor {
            child: binary.spawn(),
            binary,
            life: Lifecycle::default(),
            start,
            next_sample: Instant::now(),
            next_progress: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// Samples, and restarts a child that exited on its own, until `until`.
    fn run_until(&mut self, until: Instant, progress: &dyn Fn(&Lifecycle)) {
        loop {
            let now = Instant::now();
            if now >= self.next_sample {
                self.sample();
                self.next_sample = now + SAMPLE_INTERVAL;
            }
            if now >= self.next_progress {
                progress(&self.life);
                self.next_progress = now + PROGRESS_INTERVAL;
            }
            if let Some(status) = self.child.exited() {
                self.exited(status);
                std::thread::sleep(RESTART_AFTER_EXIT);
                self.child = self.binary.spawn();
                self.life.restarts += 1;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep(STEP.min(until - now));
        }
    }

    fn exited(&mut self, status: std::process::ExitStatus) {
        let ran = self.child.started.elapsed();
        self.refused_in_a_row = if ran < Duration::from_secs(1) {
            self.refused_in_a_row + 1
        } else {
            0
        };
        if self.refused_in_a_row <= 3 || self.refused_in_a_row.is_multiple_of(20) {
            println!(
                "{} the child exited on its own after {:.1} s: {status} ({} in a row within a second of starting)",
                at(self.start),
                ran.as_secs_f64(),
                self.refused_in_a_row
            );
        }
        self.life.exits.push(status.to_string());
    }

    fn sample(&mut self) {
        let life = &mut self.life;
        life.peak_disk_bytes = life
            .peak_disk_bytes
            .max(disk_usage_bytes(&self.binary.data));
        life.peak_rss_bytes = life.peak_rss_bytes.max(self.child.peak_rss_bytes());
    }

    /// SIGKILL (its peak RSS read just before) and a new child on the same data dir.
    fn kill_and_restart(&mut self) {
        self.sample();
        match self.child.exited() {
            None => {
                self.child.kill();
                self.life.kills += 1;
            }
            Some(status) => self.exited(status),
        }
        self.child = self.binary.spawn();
        self.life.restarts += 1;
    }

    /// Stops the last child; what the children did.
    fn finish(&mut self) -> Lifecycle {
        self.sample();
        self.child.kill();
        std::mem::take(&mut self.life)
    }
}
