//! `spillway bench log` and `bench queue` with their child phases, and what the other
//! bench modules share: the fixture frames, MiB, the RSS target.

use std::path::PathBuf;

use anyhow_like::Context;
use spillway::bench::log::{self as logbench, Figures, Scratch};
use spillway::storage::Backend;

/// Arguments of `spillway bench log`.
#[derive(Debug, clap::Args)]
pub struct LogBenchArgs {
    /// Record counts to run, comma-separated (e.g. 1000000,10000000).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000_000u64])]
    pub records: Vec<u64>,
    /// Record sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![512usize, 4096])]
    pub record_bytes: Vec<usize>,
    /// Backends to run: segment, sled.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["segment".to_string(), "sled".to_string()])]
    pub backends: Vec<String>,
    /// Scratch directory for the data (removed afterwards).
    #[arg(long, default_value = "bench-data")]
    pub dir: PathBuf,
    /// Print one JSON object per scenario instead of the table.
    #[arg(long)]
    pub json: bool,
}

mod anyhow_like {
    /// Adds a human context to an I/O error.
    pub trait Context<T> {
        fn context(self, what: &str) -> std::io::Result<T>;
    }

    impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
        fn context(self, what: &str) -> std::io::Result<T> {
            self.map_err(|e| std::io::Error::other(format!("{what}: {e}")))
        }
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Peak RSS allowed above the budget (issue 15's target): runtime, sockets, sink batches.
pub(crate) const RSS_OVER_BUDGET_TARGET_BYTES: u64 = 16 << 20;

struct Row {
    figures: Figures,
    baseline_mb_per_s: Option<f64>,
    logical_bytes: u64,
    extra: String,
}

fn print_row(row: &Row, json: bool) {
    let f = &row.figures;
    let ratio = row.baseline_mb_per_s.map(|b| f.mb_per_s() / b);
    let disk_ratio = (f.disk_bytes > 0 && row.logical_bytes > 0)
        .then(|| f.disk_bytes as f64 / row.logical_bytes as f64);
    if json {
        println!(
            "{{\"scenario\":\"{}\",\"records\":{},\"seconds\":{:.6},\"mb_per_s\":{:.1},\"records_per_s\":{:.0},\"ratio_to_baseline\":{},\"peak_rss_bytes\":{},\"disk_bytes\":{},\"disk_to_logical\":{}}}",
            f.name,
            f.records,
            f.seconds,
            f.mb_per_s(),
            f.records_per_s(),
            ratio.map_or("null".into(), |r| format!("{r:.3}")),
            f.peak_rss_bytes,
            f.disk_bytes,
            disk_ratio.map_or("null".into(), |r| format!("{r:.3}")),
        );
        return;
    }
    println!(
        "{:<28} {:>11} {:>10.1} {:>11.0} {:>8} {:>10.1} {:>9} {}",
        f.name,
        f.records,
        f.mb_per_s(),
        f.records_per_s(),
        ratio.map_or("-".into(), |r| format!("{r:.2}x")),
        mib(f.peak_rss_bytes),
        disk_ratio.map_or("-".into(), |r| format!("{r:.3}")),
        row.extra,
    );
}

/// Arguments of the hidden per-phase child of `spillway bench log`.
#[derive(Debug, clap::Args)]
pub struct LogPhaseArgs {
    /// plain-append, plain-read, append or open-read.
    #[arg(long)]
    pub phase: String,
    /// The backend (append and open-read).
    #[arg(long, default_value = "segment")]
    pub backend: String,
    /// Records to write.
    #[arg(long)]
    pub records: u64,
    /// Record size in bytes.
    #[arg(long)]
    pub record_bytes: usize,
    /// Data directory of the phase.
    #[arg(long)]
    pub dir: PathBuf,
}

const FIGURES_PREFIX: &str = "figures\t";

fn emit(f: &Figures, extra: &str) {
    println!(
        "{FIGURES_PREFIX}{}\t{}\t{}\t{}\t{}\t{}\t{}",
        f.name, f.records, f.payload_bytes, f.seconds, f.peak_rss_bytes, f.disk_bytes, extra
    );
}

fn parse_figures(line: &str) -> Option<(Figures, String)> {
    let mut parts = line.strip_prefix(FIGURES_PREFIX)?.split('\t');
    let name = parts.next()?.to_string();
    let mut num = || parts.next().and_then(|p| p.parse::<f64>().ok());
    let figures = Figures {
        name,
        records: num()? as u64,
        payload_bytes: num()? as u64,
        seconds: num()?,
        peak_rss_bytes: num()? as u64,
        disk_bytes: num()? as u64,
    };
    Some((figures, parts.next().unwrap_or_default().to_string()))
}

/// Runs one phase in this (fresh) process, so its peak RSS is its own, and prints its figures.
pub fn run_log_phase(args: &LogPhaseArgs) -> std::io::Result<()> {
    let backend = Backend::parse(&args.backend).context("--backend")?;
    let plain_file = args.dir.join("plain.log");
    match args.phase.as_str() {
        "plain-append" => emit(
            &logbench::plain_append(&plain_file, args.records, args.record_bytes)?,
            "baseline",
        ),
        "plain-read" => emit(&logbench::plain_read(&plain_file)?, "baseline"),
        "append" => {
            let step = (args.records / 10).max(1);
            let figures = logbench::log_append(
                backend,
                &args.dir,
                args.records,
                args.record_bytes,
                |done| {
                    if done % step == 0 {
                        tracing::info!(
                            backend = backend.as_str(),
                            done,
                            records = args.records,
                            "appending"
                        );
                    }
                },
            )?;
            emit(&figures, "");
        }
        "open-read" => {
            let (mut open, log) = logbench::log_open(backend, &args.dir)?;
            open.name = format!("{} open (recovery)", backend.as_str());
            open.payload_bytes = 0;
            let extra = format!(
                "open {:.1} ms, {} records, {} B of tail scanned",
                open.seconds * 1e3,
                args.records,
                log.recovery_report().scanned_bytes
            );
            emit(&open, &extra);
            let name = format!("{} read (no consume)", backend.as_str());
            emit(
                &logbench::log_read(log.as_ref(), args.record_bytes, &name)?,
                "",
            );
        }
        other => return Err(std::io::Error::other(format!("unknown phase {other:?}"))),
    }
    Ok(())
}

/// Runs `spillway bench <args>` in a fresh process (so its peak RSS is its own) and collects its figures.
fn run_child(args: &[String], what: &str) -> std::io::Result<Vec<(Figures, String)>> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg("bench")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "bench phase {what} failed: {}",
            output.status
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(parse_figures)
        .collect())
}

pub(crate) fn run_phase(
    phase: &str,
    backend: &str,
    records: u64,
    size: usize,
    dir: &std::path::Path,
) -> std::io::Result<Vec<(Figures, String)>> {
    let args = [
        "log-phase",
        "--phase",
        phase,
        "--backend",
        backend,
        "--records",
        &records.to_string(),
        "--record-bytes",
        &size.to_string(),
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from);
    run_child(&args, &format!("{phase} ({backend})"))
}

/// Runs the storage benchmark (one process per phase) and prints the table.
pub fn run_log(args: &LogBenchArgs) -> std::io::Result<()> {
    let backends: Vec<Backend> = args
        .backends
        .iter()
        .map(|b| Backend::parse(b))
        .collect::<Result<_, _>>()
        .context("--backends")?;
    std::fs::create_dir_all(&args.dir).context("creating the bench directory")?;
    if !args.json {
        println!(
            "storage bench: batches of {} records, reads of at most {} records / {} MiB; Manual durability + one sync at the end (as the baseline); one process per phase",
            logbench::BATCH_RECORDS,
            logbench::BATCH_RECORDS,
            logbench::READ_BYTES_MAX >> 20
        );
        println!(
            "{:<28} {:>11} {:>10} {:>11} {:>8} {:>10} {:>9} extra",
            "scenario", "records", "MB/s", "records/s", "ratio", "peakRSS MiB", "disk/log"
        );
    }
    for &records in &args.records {
        for &size in &args.record_bytes {
            let logical = records * size as u64;
            let plain = Scratch::new(&args.dir, "plain")?;
            let mut baseline = [0.0f64; 2];
            for (i, phase) in ["plain-append", "plain-read"].iter().enumerate() {
                for (figures, extra) in run_phase(phase, "segment", records, size, &plain.0)? {
                    baseline[i] = figures.mb_per_s();
                    print_row(
                        &Row {
                            figures,
                            baseline_mb_per_s: None,
                            logical_bytes: if i == 0 { logical } else { 0 },
                            extra,
                        },
                        args.json,
                    );
                }
            }
            drop(plain);
            for &backend in &backends {
                let scratch = Scratch::new(&args.dir, backend.as_str())?;
                for (figures, extra) in
                    run_phase("append", backend.as_str(), records, size, &scratch.0)?
                {
                    print_row(
                        &Row {
                            figures,
                            baseline_mb_per_s: Some(baseline[0]),
                            logical_bytes: logical,
                            extra,
                        },
                        args.json,
                    );
                }
                for (figures, extra) in
                    run_phase("open-read", backend.as_str(), records, size, &scratch.0)?
                {
                    let is_read = figures.name.contains("read");
                    print_row(
                        &Row {
                            figures,
                            baseline_mb_per_s: is_read.then_some(baseline[1]),
                            logical_bytes: 0,
                            extra,
                        },
                        args.json,
                    );
                }
            }
        }
    }
    Ok(())
}

/// Arguments of `spillway bench queue`.
#[derive(Debug, clap::Args)]
pub struct QueueBenchArgs {
    /// Events for the in-memory and spill-path scenarios.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Event size in bytes for those scenarios.
    #[arg(long, default_value_t = 512)]
    pub event_bytes: usize,
    /// Backlog sizes (events of `--event-bytes`) for the peak-RSS table, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100_000u64, 1_000_000])]
    pub backlogs: Vec<u64>,
    /// Memory budget for the spill and RSS scenarios, in MiB.
    #[arg(long, default_value_t = 64)]
    pub budget_mib: u64,
    /// Skip the CDC replay case (140,416 events of 18 KB, 2.5 GB on disk).
    #[arg(long)]
    pub no_cdc: bool,
    /// Scratch directory (removed afterwards).
    #[arg(long, default_value = "bench-data")]
    pub dir: PathBuf,
    /// Print one JSON object per scenario instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of the hidden per-phase child of `spillway bench queue`.
#[derive(Debug, clap::Args)]
pub struct QueuePhaseArgs {
    /// memory, mpsc-event, mpsc-batch, spill, reopen (no ack), reopen-drain.
    #[arg(long)]
    pub phase: String,
    /// Events.
    #[arg(long)]
    pub events: u64,
    /// Event size in bytes.
    #[arg(long)]
    pub event_bytes: usize,
    /// Memory budget in bytes.
    #[arg(long)]
    pub budget_bytes: u64,
    /// Data directory.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Runs one queue phase in this process and prints its figures.
pub fn run_queue_phase(args: &QueuePhaseArgs) -> std::io::Result<()> {
    use spillway::bench::queue as qbench;
    let (n, size) = (args.events, args.event_bytes);
    match args.phase.as_str() {
        "memory" => emit(&qbench::memory_path(&args.dir, n, size)?, ""),
        "mpsc-event" => emit(&qbench::mpsc_per_event(n, size)?, "baseline"),
        "mpsc-batch" => emit(&qbench::mpsc_per_batch(n, size)?, "baseline"),
        "spill" => {
            let step_log = |done| tracing::info!(done, events = n, "spilling");
            emit(
                &qbench::spill_write(&args.dir, n, size, args.budget_bytes, step_log)?,
                "",
            )
        }
        "reopen-drain" | "reopen" => {
            let drain = args.phase == "reopen-drain";
            let (reopen, drained) =
                qbench::reopen_and_drain(&args.dir, size, args.budget_bytes, drain)?;
            emit(
                &reopen,
                &format!(
                    "{:.1} ms to the first event of a {n}-event backlog",
                    reopen.seconds * 1e3
                ),
            );
            if let Some(drained) = drained {
                emit(&drained, "");
            }
        }
        other => return Err(std::io::Error::other(format!("unknown phase {other:?}"))),
    }
    Ok(())
}

pub(crate) fn run_queue_phase_child(
    phase: &str,
    events: u64,
    size: usize,
    budget_bytes: u64,
    dir: &std::path::Path,
) -> std::io::Result<Vec<(Figures, String)>> {
    let args = [
        "queue-phase",
        "--phase",
        phase,
        "--events",
        &events.to_string(),
        "--event-bytes",
        &size.to_string(),
        "--budget-bytes",
        &budget_bytes.to_string(),
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from);
    run_child(&args, phase)
}

/// `(<= +16 MiB)` when the peak meets issue 15's target, `(over +16 MiB)` when not.
fn rss_target_mark(peak_rss_bytes: u64, budget_bytes: u64) -> String {
    let target = RSS_OVER_BUDGET_TARGET_BYTES >> 20;
    if peak_rss_bytes <= budget_bytes + RSS_OVER_BUDGET_TARGET_BYTES {
        format!("(<= +{target} MiB)")
    } else {
        format!("(over +{target} MiB)")
    }
}

fn rss_row(figures: Figures, budget_bytes: u64, extra: &str, json: bool) {
    let peak = figures.peak_rss_bytes;
    let extra = format!(
        "{extra}peak RSS {:.1} MiB = budget {:.0} MiB {:+.1} MiB {}",
        mib(peak),
        mib(budget_bytes),
        mib(peak) - mib(budget_bytes),
        rss_target_mark(peak, budget_bytes)
    );
    print_row(
        &Row {
            figures,
            baseline_mb_per_s: None,
            logical_bytes: 0,
            extra,
        },
        json,
    );
}

/// Runs the queue benchmark and prints the table.
pub fn run_queue(args: &QueueBenchArgs) -> std::io::Result<()> {
    std::fs::create_dir_all(&args.dir).context("creating the bench directory")?;
    let (n, size) = (args.events, args.event_bytes);
    let budget = args.budget_mib * 1024 * 1024;
    if !args.json {
        println!("queue bench: batches of {} events, {n} x {size} B, budget {} MiB, manual durability (one sync at the end); one process per phase", spillway::bench::queue::BATCH_EVENTS, args.budget_mib);
        println!(
            "{:<28} {:>11} {:>10} {:>11} {:>8} {:>10} {:>9} extra",
            "scenario", "events", "MB/s", "events/s", "ratio", "peakRSS MiB", "disk/log"
        );
    }
    // 1. In-memory path against tokio's mpsc.
    let scratch = Scratch::new(&args.dir, "queue-memory")?;
    let mut mpsc_rates = Vec::new();
    for phase in ["mpsc-event", "mpsc-batch"] {
        for (figures, extra) in run_queue_phase_child(phase, n, size, budget, &scratch.0)? {
            mpsc_rates.push((figures.name.clone(), figures.mb_per_s()));
            print_row(
                &Row {
                    figures,
                    baseline_mb_per_s: None,
                    logical_bytes: 0,
                    extra,
                },
                args.json,
            );
        }
    }
    for (figures, _) in run_queue_phase_child("memory", n, size, budget, &scratch.0)? {
        let extra = mpsc_rates
            .iter()
            .map(|(name, rate)| format!("{:.2}x {name}", figures.mb_per_s() / rate))
            .collect::<Vec<_>>()
            .join(", ");
        print_row(
            &Row {
                figures,
                baseline_mb_per_s: mpsc_rates.first().map(|r| r.1),
                logical_bytes: 0,
                extra,
            },
            args.json,
        );
    }
    drop(scratch);
    // 2. Spill + reopen + drain for each backlog size, each against a plain file append
    //    and read of the same events (writing 5 GB costs more per byte than 0.5 GB).
    let mut sizes: Vec<u64> = args.backlogs.clone();
    if !sizes.contains(&n) {
        sizes.push(n);
    }
    sizes.sort_unstable();
    for &backlog in &sizes {
        let plain = Scratch::new(&args.dir, "plain")?;
        let mut baseline = [0.0f64; 2];
        for (i, phase) in ["plain-append", "plain-read"].iter().enumerate() {
            for (figures, extra) in run_phase(phase, "segment", backlog, size, &plain.0)? {
                baseline[i] = figures.mb_per_s();
                print_row(
                    &Row {
                        figures,
                        baseline_mb_per_s: None,
                        logical_bytes: 0,
                        extra,
                    },
                    args.json,
                );
            }
        }
        drop(plain);
        let scratch = Scratch::new(&args.dir, "queue-spill")?;
        for (figures, _) in run_queue_phase_child("spill", backlog, size, budget, &scratch.0)? {
            let logical = backlog * size as u64;
            let extra = format!(
                "backlog {backlog}: peak RSS {:+.1} MiB vs budget {}; ",
                mib(figures.peak_rss_bytes) - mib(budget),
                rss_target_mark(figures.peak_rss_bytes, budget)
            );
            print_row(
                &Row {
                    figures,
                    baseline_mb_per_s: Some(baseline[0]),
                    logical_bytes: logical,
                    extra,
                },
                args.json,
            );
        }
        for (figures, extra) in
            run_queue_phase_child("reopen-drain", backlog, size, budget, &scratch.0)?
        {
            if figures.name.contains("reopen") {
                rss_row(figures, budget, &format!("{extra}; "), args.json);
            } else {
                let extra = format!(
                    "backlog {backlog}: peak RSS {:+.1} MiB vs budget {}",
                    mib(figures.peak_rss_bytes) - mib(budget),
                    rss_target_mark(figures.peak_rss_bytes, budget)
                );
                print_row(
                    &Row {
                        figures,
                        baseline_mb_per_s: Some(baseline[1]),
                        logical_bytes: 0,
                        extra,
                    },
                    args.json,
                );
            }
        }
    }
    // 4. The CDC replay case from the background doc: 140,416 events of 18 KB, 128 MiB budget.
    if !args.no_cdc {
        let (cdc_events, cdc_size, cdc_budget) = (140_416u64, 18 * 1024usize, 128 * 1024 * 1024u64);
        let scratch = Scratch::new(&args.dir, "queue-cdc")?;
        for (mut figures, _) in
            run_queue_phase_child("spill", cdc_events, cdc_size, cdc_budget, &scratch.0)?
        {
            figures.name = "CDC backlog write".into();
            rss_row(figures, cdc_budget, "", args.json);
        }
        for (mut figures, extra) in
            run_queue_phase_child("reopen-drain", cdc_events, cdc_size, cdc_budget, &scratch.0)?
        {
            figures.name = if figures.name.contains("reopen") {
                "CDC restart to first event".into()
            } else {
                "CDC replay drain".into()
            };
            rss_row(
                figures,
                cdc_budget,
                &format!("{extra} (the story's service: 1509 MB vs 512 MB); "),
                args.json,
            );
        }
    }
    Ok(())
}

/// Arguments of `spillway bench decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeBenchArgs {
    /// Passes over the 150 fixture frames.
    #[arg(long, default_value_t = 200)]
    pub rounds: u64,
}

/// The fixture frames compiled into the binary.
pub(crate) fn fixture_frames() -> std::io::Result<Vec<&'static [u8]>> {
    spillway::source::frame::split_capture(super::FIXTURE_CAPTURE, usize::MAX)
        .map_err(std::io::Error::other)
}

/// Decode throughput on one core, each way beside the raw pass-through.
pub fn run_decode_bench(args: &DecodeBenchArgs) -> std::io::Result<()> {
    let frames = fixture_frames()?;
    let results = spillway::bench::decode::decode_throughput(&frames, args.rounds)?;
    let raw = results.first().map_or(1.0, |f| f.records_per_s());
    println!(
        "decode, one core, the 150 fixture frames x {} rounds (mean {} B)",
        args.rounds,
        frames.iter().map(|f| f.len()).sum::<usize>() / frames.len()
    );
    println!(
        "{:<48} {:>12} {:>10} {:>8}",
        "", "frames/s", "MB/s", "ratio"
    );
    for f in &results {
        println!(
            "{:<48} {:>12.0} {:>10.1} {:>7.2}x",
            f.name,
            f.records_per_s(),
            f.mb_per_s(),
            f.records_per_s() / raw
        );
    }
    Ok(())
}
