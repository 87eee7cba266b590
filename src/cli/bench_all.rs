//! `spillway bench` with no scenario named: every scenario once, each beside its same-run
//! baseline, as one table (or `--json`).

use std::path::PathBuf;

use spillway::bench::log::{Figures, Scratch};

use super::bench::{run_phase, run_queue_phase_child};
use super::bench_e2e::{measure_e2e, E2eBenchArgs};

/// Passes over the fixture frames in the decode scenario.
const DECODE_ROUNDS: u64 = 200;

/// Reopens timed per backlog size in the restart scenario (the median is shown).
const REOPEN_RUNS: usize = 3;

/// Arguments of `spillway bench` (every scenario).
#[derive(Debug, clap::Args)]
pub struct AllBenchArgs {
    /// Events for the in-memory, spill and read-back scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Event size in bytes for those scenarios.
    #[arg(long, default_value_t = 512)]
    pub event_bytes: usize,
    /// Backlog (events) of the restart scenario; its baseline is a 100,000-event backlog.
    #[arg(long, default_value_t = 1_000_000)]
    pub large_backlog: u64,
    /// Memory budget of the queue scenarios, in MiB.
    #[arg(long, default_value_t = 64)]
    pub budget_mib: u64,
    /// Skip the CDC replay case (writes 2.5 GB).
    #[arg(long)]
    pub no_cdc: bool,
    /// Skip the end-to-end case (needs redis-server and redis-benchmark).
    #[arg(long)]
    pub no_e2e: bool,
    /// Events of the end-to-end case.
    #[arg(long, default_value_t = 100_000)]
    pub e2e_events: u64,
    /// The redis-server binary for the end-to-end case.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// The redis-benchmark binary for the end-to-end case's ceiling.
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark: String,
    /// Scratch directory (removed afterwards).
    #[arg(long, default_value = "bench-data")]
    pub dir: PathBuf,
    /// Print the rows as one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One scenario beside its baseline.
#[derive(Debug, serde::Serialize)]
struct Row {
    scenario: String,
    value: f64,
    unit: &'static str,
    baseline: String,
    baseline_value: Option<f64>,
    /// value / baseline_value.
    ratio: Option<f64>,
    /// Whether a ratio above 1 is the good direction.
    higher_is_better: bool,
    peak_rss_bytes: Option<u64>,
    budget_bytes: Option<u64>,
    note: String,
}

impl Row {
    fn new(scenario: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Row {
            scenario: scenario.into(),
            value,
            unit,
            baseline: String::new(),
            baseline_value: None,
            ratio: None,
            higher_is_better: true,
            peak_rss_bytes: None,
            budget_bytes: None,
            note: String::new(),
        }
    }

    fn against(mut self, baseline: impl Into<String>, value: f64) -> Self {
        self.baseline = baseline.into();
        self.baseline_value = Some(value);
        self.ratio = (value > 0.0).then(|| self.value / value);
        self
    }

    fn rss(mut self, figures: &Figures, budget_bytes: u64) -> Self {
        self.peak_rss_bytes = Some(figures.peak_rss_bytes);
        self.budget_bytes = Some(budget_bytes);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

fn first(figures: Vec<(Figures, String)>, what: &str) -> std::io::Result<Figures> {
    figures
        .into_iter()
        .next()
        .map(|(f, _)| f)
        .ok_or_else(|| std::io::Error::other(format!("{what} printed no figures")))
}

fn named(figures: &[(Figures, String)], part: &str, what: &str) -> std::io::Result<Figures> {
    figures
        .iter()
        .find(|(f, _)| f.name.contains(part))
        .map(|(f, _)| f.clone())
        .ok_or_else(|| std::io::Error::other(format!("{what} printed no {part} figures")))
}

/// Runs every scenario and prints one table.
pub fn run_all(args: &AllBenchArgs) -> std::io::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let (n, size) = (args.events, args.event_bytes);
    let budget = args.budget_mib << 20;
    let mut rows = Vec::new();
    let step = |what: &str| tracing::info!(scenario = what, "bench: running");

    step("in-memory path");
    let scratch = Scratch::new(&args.dir, "all-memory")?;
    let mpsc_event = first(
        run_queue_phase_child("mpsc-event", n, size, budget, &scratch.0)?,
        "mpsc",
    )?;
    let mpsc_batch = first(
        run_queue_phase_child("mpsc-batch", n, size, budget, &scratch.0)?,
        "mpsc",
    )?;
    let memory = first(
        run_queue_phase_child("memory", n, size, budget, &scratch.0)?,
        "memory",
    )?;
    drop(scratch);
    rows.push(
        Row::new(
            format!("in-memory push + read, {n} x {size} B"),
            memory.records_per_s(),
            "events/s",
        )
        .against(
            "tokio mpsc(1024), one event per message",
            mpsc_event.records_per_s(),
        )
        .rss(&memory, budget)
        .note(format!(
            "{:.2}x an mpsc of whole 100-event Vec batches",
            memory.records_per_s() / mpsc_batch.records_per_s()
        )),
    );

    step("spill and read-back");
    let plain = Scratch::new(&args.dir, "all-plain")?;
    let plain_append = first(
        run_phase("plain-append", "segment", n, size, &plain.0)?,
        "plain append",
    )?;
    let plain_read = first(
        run_phase("plain-read", "segment", n, size, &plain.0)?,
        "plain read",
    )?;
    drop(plain);
    let scratch = Scratch::new(&args.dir, "all-spill")?;
    let spill = first(
        run_queue_phase_child("spill", n, size, budget, &scratch.0)?,
        "spill",
    )?;
    let reopened = run_queue_phase_child("reopen-drain", n, size, budget, &scratch.0)?;
    let drain = named(&reopened, "drain", "reopen-drain")?;
    drop(scratch);
    rows.push(
        Row::new(
            format!("spill write, {n} x {size} B"),
            spill.mb_per_s(),
            "MB/s",
        )
        .against("plain file append (BufWriter)", plain_append.mb_per_s())
        .rss(&spill, budget),
    );
    rows.push(
        Row::new(
            format!("read-back after restart, {n} events"),
            drain.mb_per_s(),
            "MB/s",
        )
        .against("plain file read (BufReader)", plain_read.mb_per_s())
        .rss(&drain, budget),
    );

    step("restart with a large backlog");
    let small_backlog = 100_000u64.min(args.large_backlog);
    let mut reopen_ms = Vec::new();
    let mut reopen_large = None;
    for backlog in [small_backlog, args.large_backlog] {
        let scratch = Scratch::new(&args.dir, "all-restart")?;
        run_queue_phase_child("spill", backlog, size, budget, &scratch.0)?;
        // The median of a few reopens (nothing acked in between): the disk is noisy.
        let mut runs = Vec::new();
        for _ in 0..REOPEN_RUNS {
            runs.push(first(
                run_queue_phase_child("reopen", backlog, size, budget, &scratch.0)?,
                "reopen",
            )?);
        }
        runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let median = runs.swap_remove(REOPEN_RUNS / 2);
        reopen_ms.push(median.seconds * 1e3);
        reopen_large = Some(median);
    }
    if let (Some(reopen), [small_ms, large_ms]) = (reopen_large, reopen_ms.as_slice()) {
        let mut row = Row::new(
            format!(
                "restart to first event, {} backlog (median of {REOPEN_RUNS})",
                args.large_backlog
            ),
            *large_ms,
            "ms",
        )
        .against(
            format!("the same with a {small_backlog} backlog"),
            *small_ms,
        )
        .rss(&reopen, budget)
        .note("a ratio near 1: restart time does not grow with the backlog");
        row.higher_is_better = false;
        rows.push(row);
    }

    if !args.no_cdc {
        step("CDC replay");
        let (events, event_bytes, cdc_budget) = (140_416u64, 18 * 1024usize, 128u64 << 20);
        let scratch = Scratch::new(&args.dir, "all-cdc")?;
        run_queue_phase_child("spill", events, event_bytes, cdc_budget, &scratch.0)?;
        let reopened =
            run_queue_phase_child("reopen-drain", events, event_bytes, cdc_budget, &scratch.0)?;
        let drain = named(&reopened, "drain", "reopen-drain")?;
        drop(scratch);
        let backlog_bytes = events * event_bytes as u64;
        let mut row = Row::new(
            "CDC replay: restart + drain 140,416 x 18 KB",
            drain.peak_rss_bytes as f64 / (1u64 << 20) as f64,
            "MiB peak RSS",
        )
        .against(
            "the backlog rehydrated into memory (the story's service)",
            backlog_bytes as f64 / (1u64 << 20) as f64,
        )
        .rss(&drain, cdc_budget)
        .note(format!("drained at {:.0} MB/s", drain.mb_per_s()));
        row.higher_is_better = false;
        rows.push(row);
    }

    step("decode");
    let frames = super::bench::fixture_frames()?;
    let decoded = spillway::bench::decode::decode_throughput(&frames, DECODE_ROUNDS)?;
    if let Some((raw, rest)) = decoded.split_first() {
        for f in rest {
            rows.push(
                Row::new(
                    format!("{}, one core", f.name),
                    f.records_per_s(),
                    "frames/s",
                )
                .against(raw.name.clone(), raw.records_per_s())
                .note(format!("{:.0} MB/s of frames", f.mb_per_s())),
            );
        }
    }

    if !args.no_e2e {
        step("end to end");
        let defaults = spillway::config::Config::default();
        let e2e = E2eBenchArgs {
            events: args.e2e_events,
            redis_server: args.redis_server.clone(),
            redis_benchmark: args.redis_benchmark.clone(),
            budget_mib: args.budget_mib,
            relay_in_process: false,
            sink_batch_events_max: defaults.sink_batch_events_max,
            redis_multi_events_max: defaults.redis_multi_events_max,
            redis_transactions_in_flight_max: defaults.redis_transactions_in_flight_max,
            redis_idempotent_ids: false,
            spilling_only: false,
        };
        match measure_e2e(&e2e) {
            Ok(f) => {
                let events = args.e2e_events as f64;
                let runs = [
                    ("spilling", Some(&f.spilling)),
                    ("nothing spilled", f.in_memory.as_ref()),
                ];
                for (label, run) in runs {
                    let Some(run) = run else { continue };
                    rows.push(Row {
                        peak_rss_bytes: Some(run.peak_rss_bytes),
                        budget_bytes: Some(run.budget_bytes),
                        note: format!(
                            "{} real frames looped, mean {} B, {} spilled; the relay runs in its own process; {} cores shared",
                            args.e2e_events, f.mean_bytes, run.spilled_events, f.cores
                        ),
                        ..Row::new(
                            format!("end to end ({label}): relay -> queue -> Redis stream"),
                            run.rate,
                            "events/s",
                        )
                        .against("redis-benchmark -P 64 XADD, same payload size", f.ceiling)
                    });
                    let mut cpu = Row::new(
                        format!("end to end ({label}): spillway CPU per event"),
                        run.cpu.spillway_seconds * 1e6 / events,
                        "µs",
                    )
                    .against(
                        "redis-server CPU per event, same run",
                        run.cpu.redis_seconds * 1e6 / events,
                    )
                    .note(match run.cpu.relay_seconds {
                        Some(relay) => {
                            format!("the relay: {:.2} µs per event", relay * 1e6 / events)
                        }
                        None => String::new(),
                    });
                    cpu.higher_is_better = false;
                    rows.push(cpu);
                }
                let mut floor = Row::new(
                    "end to end: a bare forwarder's CPU per event (WebSocket in, XADDs out, nothing between)",
                    f.floor.cpu.spillway_seconds * 1e6 / events,
                    "µs",
                )
                .against(
                    "redis-server CPU per event, same run",
                    f.floor.cpu.redis_seconds * 1e6 / events,
                )
                .note("what any relay -> Redis forwarder spends here: the floor under spillway's figure");
                floor.higher_is_better = false;
                rows.push(floor);
            }
            Err(error) => rows.push(
                Row::new(
                    "end to end: relay -> queue -> Redis stream",
                    f64::NAN,
                    "events/s",
                )
                .note(format!("skipped: {error}")),
            ),
        }
    }

    if args.json {
        let json = serde_json::json!({ "machine": machine(), "rows": rows });
        println!("{json:#}");
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("machine: {}", machine());
    println!(
        "{:<48} {:>16}  {:<56} {:>16} {:>8}  {:>20}  note",
        "scenario", "result", "baseline (same run)", "baseline", "ratio", "peak RSS / budget"
    );
    for row in rows {
        let figure = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else if v >= 100.0 {
                format!("{v:.0} {}", short(row.unit))
            } else {
                format!("{v:.1} {}", short(row.unit))
            }
        };
        let ratio = row.ratio.map_or("-".to_string(), |r| {
            format!("{r:.2}x{}", if row.higher_is_better { "" } else { "↓" })
        });
        let rss = match (row.peak_rss_bytes, row.budget_bytes) {
            (Some(p), Some(b)) => format!("{:.1} / {} MiB", p as f64 / 1048576.0, b >> 20),
            _ => "-".into(),
        };
        println!(
            "{:<48} {:>16}  {:<56} {:>16} {:>8}  {:>20}  {}",
            row.scenario,
            figure(row.value),
            row.baseline,
            row.baseline_value.map_or("-".into(), figure),
            ratio,
            rss,
            row.note
        );
    }
    println!("ratio = result / baseline; ↓ marks rows where lower is better.");
}

fn short(unit: &str) -> &str {
    match unit {
        "MiB peak RSS" => "MiB",
        other => other,
    }
}

/// CPU model, core count, memory and kernel, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kib =
        spillway::bench::rss::proc_kib_field("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.1} GiB RAM, Linux {}",
        memory_kib as f64 / 1048576.0,
        kernel.trim()
    )
}
