//! `spillway bench`: prints each scenario beside its same-run baseline, with ratios.

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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

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

/// Arguments of `spillway bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eBenchArgs {
    /// Events sent by the loopback relay (the real frames, looped).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// The redis-server binary to start on a free loopback port.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// The redis-benchmark binary that measures the sink's ceiling.
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark: String,
    /// The queue's memory budget in MiB.
    #[arg(long, default_value_t = 64)]
    pub budget_mib: u64,
    /// Run the loopback relay in this process instead of its own (a real relay is remote).
    #[arg(long)]
    pub relay_in_process: bool,
    /// Events per sink batch (`sink_batch_events_max`).
    #[arg(long, default_value_t = spillway::config::Config::default().sink_batch_events_max)]
    pub sink_batch_events_max: u64,
    /// Events per Redis MULTI/EXEC transaction (`redis_multi_events_max`).
    #[arg(long, default_value_t = spillway::config::Config::default().redis_multi_events_max)]
    pub redis_multi_events_max: u64,
    /// Redis transactions in flight (`redis_transactions_in_flight_max`; 1: one at a time).
    #[arg(long, default_value_t = spillway::config::Config::default().redis_transactions_in_flight_max)]
    pub redis_transactions_in_flight_max: u64,
    /// Entry IDs from the relay seq (`redis_idempotent_ids`).
    #[arg(long)]
    pub redis_idempotent_ids: bool,
    /// Run only the spilling row, not the second one under a budget nothing spills under.
    #[arg(long)]
    pub spilling_only: bool,
}

/// Arguments of the hidden relay child of `spillway bench e2e`.
#[derive(Debug, clap::Args)]
pub struct RelayPhaseArgs {
    /// Events the relay sends.
    #[arg(long)]
    pub events: u64,
    /// The first seq.
    #[arg(long)]
    pub base_seq: u64,
}

/// Serves the loopback relay, printing its URL, until stdin closes.
pub fn run_relay_phase(args: &RelayPhaseArgs) -> std::io::Result<()> {
    use spillway::source::relay::{LoopbackRelay, RelayConfig};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config = RelayConfig::from_capture(super::FIXTURE_CAPTURE, args.base_seq)
            .map_err(std::io::Error::other)?;
        config.total_events = Some(args.events);
        let relay = LoopbackRelay::start(config).await?;
        println!("{}", relay.url());
        // The parent closes our stdin (or dies) when it is done.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .map_err(std::io::Error::other)??;
        Ok(())
    })
}

/// Arguments of the hidden forwarder child of `spillway bench e2e`.
#[derive(Debug, clap::Args)]
pub struct FloorPhaseArgs {
    /// The relay's `ws://` URL, cursor included.
    #[arg(long)]
    pub relay_url: String,
    /// The loopback port of redis-server.
    #[arg(long)]
    pub redis_port: u16,
    /// Frames to forward.
    #[arg(long)]
    pub events: u64,
    /// Frames read before they are written.
    #[arg(long)]
    pub sink_batch_events_max: u64,
    /// `XADD`s per MULTI/EXEC transaction.
    #[arg(long)]
    pub redis_multi_events_max: u64,
}

/// Forwards the relay's frames to Redis with nothing in between, once a line arrives on stdin.
pub fn run_floor_phase(args: &FloorPhaseArgs) -> std::io::Result<()> {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = super::bench_floor::FloorConfig {
        events: args.events,
        batch_events_max: args.sink_batch_events_max as usize,
        multi_events_max: args.redis_multi_events_max as usize,
        reply_bytes_max: 64 << 20,
    };
    runtime.block_on(super::bench_floor::forward(
        &args.relay_url,
        args.redis_port,
        &config,
    ))
}

/// The relay child process: killed with the bench.
struct RelayChild(std::process::Child);

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay_child(events: u64, base_seq: u64) -> std::io::Result<(RelayChild, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "relay-phase",
            "--events",
            &events.to_string(),
            "--base-seq",
            &base_seq.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("relay child without stdout"))?;
    let child = RelayChild(child);
    let mut url = String::new();
    std::io::BufReader::new(stdout).read_line(&mut url)?;
    if url.trim().is_empty() {
        return Err(std::io::Error::other("the relay child printed no URL"));
    }
    Ok((child, url.trim().to_string()))
}

/// A redis-server child and its scratch directory (kept alive with it, removed after it).
struct RedisChild(std::process::Child, #[allow(dead_code)] tempfile_like::Dir);

mod tempfile_like {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(binary: &str, port: u16) -> std::io::Result<RedisChild> {
    let dir = std::env::temp_dir().join(format!("spillway-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = std::process::Command::new(binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::other(format!(
                "starting {binary}: {e} (apt-get install redis-server)"
            ))
        })?;
    let redis = RedisChild(child, tempfile_like::Dir(dir));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(redis);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(std::io::Error::other("redis-server did not start"))
}

/// `redis-benchmark -P 64` of XADD with a payload of `payload_bytes`: the sink's ceiling in events/s.
fn redis_ceiling(
    benchmark: &str,
    port: u16,
    events: u64,
    payload_bytes: usize,
) -> std::io::Result<f64> {
    let payload = "x".repeat(payload_bytes);
    let output = std::process::Command::new(benchmark)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            "64",
            "-n",
            &events.to_string(),
            "--csv",
            "XADD",
            "ceiling",
            "*",
            "frame",
            &payload,
        ])
        .output()
        .map_err(|e| {
            std::io::Error::other(format!(
                "running {benchmark}: {e} (apt-get install redis-tools)"
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    // CSV: "test","rps",...; the second line's second field.
    text.lines()
        .nth(1)
        .and_then(|line| line.split(',').nth(1))
        .and_then(|field| field.trim_matches('"').parse::<f64>().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected redis-benchmark output: {text}")))
}

/// CPU seconds each process spent during one end-to-end run (utime + stime from `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct E2eCpu {
    /// This process: the pipeline (source, queue, spill, sink) and its runtime; with
    /// `--relay-in-process`, the relay too.
    pub spillway_seconds: f64,
    /// The redis-server child.
    pub redis_seconds: f64,
    /// The relay child; `None` when it ran in this process (counted in `spillway_seconds`).
    pub relay_seconds: Option<f64>,
}

/// One end-to-end run: the loopback relay -> spillway -> redis-server, all events through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct E2eRun {
    /// The queue's memory budget in this run.
    pub budget_bytes: u64,
    /// Events relay -> Redis per second of wall time.
    pub rate: f64,
    /// Peak RSS of this process during the run.
    pub peak_rss_bytes: u64,
    /// The largest anonymous (heap, stacks) and file-backed (mapped spill log, binary) parts of
    /// the RSS seen while polling every 50 ms; their sum can be below the peak.
    pub rss_anon_file_max_bytes: (u64, u64),
    /// Heap bytes live once the pipeline had started (the counting allocator; 0 without it).
    pub heap_start_bytes: u64,
    /// The most heap bytes live at once during the run.
    pub heap_peak_bytes: u64,
    /// Events the queue wrote to its spill log.
    pub spilled_events: u64,
    /// CPU seconds per process.
    pub cpu: E2eCpu,
}

/// The bare forwarder's run: relay -> this process -> redis-server, no queue or log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FloorRun {
    /// Events relay -> Redis per second of wall time.
    pub rate: f64,
    /// CPU seconds per process (the forwarder is this process).
    pub cpu: E2eCpu,
}

/// What `bench e2e` measured.
pub(crate) struct E2eFigures {
    /// redis-benchmark's XADD events/s.
    pub ceiling: f64,
    /// The run at the configured budget (the backlog spills).
    pub spilling: E2eRun,
    /// The run under a budget large enough that nothing spills (unless skipped).
    pub in_memory: Option<E2eRun>,
    /// The bare forwarder's run (`bench_floor`): what spillway cannot spend less than.
    pub floor: FloorRun,
    /// Mean frame size.
    pub mean_bytes: usize,
    /// Cores the processes shared.
    pub cores: usize,
}

/// Peak RSS allowed above the budget (issue 15's target): runtime, sockets, sink batches.
pub(crate) const RSS_OVER_BUDGET_TARGET_BYTES: u64 = 16 << 20;

fn us_per_event(cpu_seconds: f64, events: u64) -> f64 {
    cpu_seconds * 1e6 / events.max(1) as f64
}

fn print_e2e_run(label: &str, run: &E2eRun, floor: &FloorRun, events: u64, ceiling: f64) {
    let over = run.peak_rss_bytes as f64 - run.budget_bytes as f64;
    println!(
        "{label}: {:.0} events/s = {:.2}x the ceiling; {} events spilled; peak RSS {:.1} MiB = budget {:.0} MiB {:+.1} MiB (target <= +{} MiB)",
        run.rate,
        run.rate / ceiling,
        run.spilled_events,
        mib(run.peak_rss_bytes),
        mib(run.budget_bytes),
        over / (1024.0 * 1024.0),
        RSS_OVER_BUDGET_TARGET_BYTES >> 20,
    );
    println!(
        "  RSS parts (largest seen): anonymous {:.1} MiB, file-backed {:.1} MiB",
        mib(run.rss_anon_file_max_bytes.0),
        mib(run.rss_anon_file_max_bytes.1),
    );
    // sled allocates 41 zeroed histograms of 512 KiB at start: counted live, never resident.
    println!(
        "  heap (counting allocator): {:.1} MiB live once started (sled's zeroed, untouched metrics tables among it), peak {:.1} MiB = {:+.1} MiB during the run",
        mib(run.heap_start_bytes),
        mib(run.heap_peak_bytes),
        mib(run.heap_peak_bytes.saturating_sub(run.heap_start_bytes)),
    );
    print_cpu_table("spillway (source, queue, spill, sink)", &run.cpu, events);
    let floor_us = us_per_event(floor.cpu.spillway_seconds, events);
    let spillway_us = us_per_event(run.cpu.spillway_seconds, events);
    println!(
        "  spillway over the forwarder floor: {:+.2} µs/event, {:.2}x the floor's CPU (the floor alone is {:.2}x redis-server's)",
        spillway_us - floor_us,
        spillway_us / floor_us,
        floor.cpu.spillway_seconds / floor.cpu.redis_seconds,
    );
}

/// Each process's CPU seconds, per event, and against redis-server's in the same run.
fn print_cpu_table(this_process: &str, cpu: &E2eCpu, events: u64) {
    let redis = cpu.redis_seconds;
    let line = |name: &str, seconds: f64| {
        println!(
            "  {name:<40} {seconds:>9.2} {:>12.2} {:>10.2}x",
            us_per_event(seconds, events),
            seconds / redis
        );
    };
    println!(
        "  {:<40} {:>9} {:>12} {:>11}",
        "process", "CPU s", "µs/event", "/ redis"
    );
    line(this_process, cpu.spillway_seconds);
    line("redis-server (the baseline)", redis);
    match cpu.relay_seconds {
        Some(relay) => line("loopback relay (its own process)", relay),
        None => println!("  {:<40} {:>9}", "loopback relay", "in spillway's figure"),
    }
}

/// Relay -> spillway -> Redis on loopback against redis-benchmark's ceiling, measured in the same run.
pub fn run_e2e(args: &E2eBenchArgs) -> std::io::Result<()> {
    let figures = measure_e2e(args)?;
    println!(
        "end to end, loopback relay -> spillway -> redis-server, {} real frames (mean {} B), batches of {} in MULTI/EXEC transactions of {}, {} in flight{}; {} cores shared by every process",
        args.events,
        figures.mean_bytes,
        args.sink_batch_events_max,
        args.redis_multi_events_max,
        args.redis_transactions_in_flight_max,
        if args.redis_idempotent_ids { ", idempotent IDs" } else { "" },
        figures.cores
    );
    println!(
        "redis-benchmark -P 64 XADD (the ceiling): {:.0} events/s",
        figures.ceiling
    );
    println!(
        "forwarder floor (WebSocket in, the same MULTI/EXEC of XADDs out; no queue, no log, one thread): {:.0} events/s = {:.2}x the ceiling",
        figures.floor.rate,
        figures.floor.rate / figures.ceiling,
    );
    print_cpu_table(
        "the forwarder (this process)",
        &figures.floor.cpu,
        args.events,
    );
    print_e2e_run(
        "spilling (the configured budget)",
        &figures.spilling,
        &figures.floor,
        args.events,
        figures.ceiling,
    );
    if let Some(run) = &figures.in_memory {
        print_e2e_run(
            "in memory (a budget nothing spills under)",
            run,
            &figures.floor,
            args.events,
            figures.ceiling,
        );
    }
    nats_rows(args, figures.mean_bytes);
    Ok(())
}

/// A budget under which `events` frames of `mean_bytes` never spill: twice their cost, plus the default.
fn no_spill_budget_bytes(events: u64, mean_bytes: usize, budget_mib: u64) -> u64 {
    let per_event = mean_bytes as u64 + spillway::queue::budget::EVENT_OVERHEAD_BYTES;
    2 * events * per_event + (budget_mib << 20)
}

/// The NATS rows of `bench e2e`: a plain pipelined `async-nats` publisher of the same
/// messages (the ceiling), then relay -> spillway -> JetStream, against one nats-server
/// (`$NATS_SERVER_FOR_TESTS`, else `nats-server` on the PATH) started for the run. Skipped,
/// with the reason, when there is no such server.
fn nats_rows(args: &E2eBenchArgs, mean_bytes: usize) {
    match measure_nats(args) {
        Ok((ceiling, rate, peak_rss)) => {
            println!(
                "{:<44} {:>12.0} {:>7.2}x",
                "async-nats publisher, window 1024 (ceiling)", ceiling, 1.0
            );
            println!(
                "{:<44} {:>12.0} {:>7.2}x   peak RSS {:.1} MiB (same frames, mean {mean_bytes} B)",
                "spillway relay -> queue -> JetStream",
                rate,
                rate / ceiling,
                mib(peak_rss)
            );
        }
        Err(e) => println!("NATS rows skipped: {e}"),
    }
}

/// A JetStream nats-server child on a free port, killed with its directory on drop.
struct NatsChild(std::process::Child, #[allow(dead_code)] tempfile_like::Dir);

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats(tag: &str) -> std::io::Result<(NatsChild, String)> {
    let binary = std::env::var("NATS_SERVER_FOR_TESTS").unwrap_or_else(|_| "nats-server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir =
        std::env::temp_dir().join(format!("spillway-bench-nats-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n",
            dir.join("store")
        ),
    )?;
    let child = std::process::Command::new(&binary)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::other(format!(
                "starting {binary}: {e} (apt-get install nats-server)"
            ))
        })?;
    let nats = NatsChild(child, tempfile_like::Dir(dir));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((nats, format!("nats://127.0.0.1:{port}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(std::io::Error::other("nats-server did not start"))
}

/// The ceiling (events/s of a plain publisher), spillway's events/s, and peak RSS.
fn measure_nats(args: &E2eBenchArgs) -> std::io::Result<(f64, f64, u64)> {
    use async_nats::jetstream;
    use spillway::config::Config;
    use spillway::pipeline::Pipeline;
    use std::sync::atomic::Ordering;

    let frames = fixture_frames()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (ceiling_server, url) = start_nats("ceiling")?;
    let ceiling = runtime.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .map_err(std::io::Error::other)?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: "ceiling".into(),
            subjects: vec!["ceiling.>".into()],
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(std::io::Error::other)?;
        let started = std::time::Instant::now();
        let mut pending: std::collections::VecDeque<jetstream::context::PublishAckFuture> =
            std::collections::VecDeque::with_capacity(1_024);
        for i in 0..args.events {
            if pending.len() >= 1_024 {
                if let Some(ack) = pending.pop_front() {
                    ack.await.map_err(std::io::Error::other)?;
                }
            }
            let frame = frames[(i % frames.len() as u64) as usize];
            let publish = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::from_static(frame))
                .message_id(format!("bench:{i}"))
                .header("seq", i.to_string().as_str())
                .header("type", "#commit");
            let ack = js
                .send_publish("ceiling.bench", publish)
                .await
                .map_err(std::io::Error::other)?;
            pending.push_back(ack);
        }
        while let Some(ack) = pending.pop_front() {
            ack.await.map_err(std::io::Error::other)?;
        }
        Ok::<_, std::io::Error>(args.events as f64 / started.elapsed().as_secs_f64())
    })?;
    drop(ceiling_server);
    let (_nats, url) = start_nats("e2e")?;
    let data = std::env::temp_dir().join(format!("spillway-bench-e2e-nats-{}", std::process::id()));
    let _data = tempfile_like::Dir(data.clone());
    let (rate, peak) = runtime.block_on(async {
        let base = 1_000_000_000;
        let (_relay_child, relay_url) = start_relay_child(args.events, base)?;
        let config = Config {
            data_dir: data.clone(),
            relays: vec![relay_url],
            start_cursor: Some(base - 1),
            memory_budget_bytes: args.budget_mib << 20,
            sink: "nats".into(),
            nats_urls: vec![url],
            metrics_listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        spillway::bench::rss::reset_peak();
        let started = std::time::Instant::now();
        let pipeline = Pipeline::start(&config, 0).map_err(std::io::Error::other)?;
        let (stop, sink) = (pipeline.stopper(), pipeline.lanes[0].sinks[0].stats.clone());
        let running = tokio::spawn(pipeline.join());
        while sink.events_total.load(Ordering::Relaxed) < args.events {
            if started.elapsed() > std::time::Duration::from_secs(600) {
                return Err(std::io::Error::other(
                    "the NATS end-to-end run did not finish in 10 minutes",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let rate = args.events as f64 / started.elapsed().as_secs_f64();
        let peak = spillway::bench::rss::peak_bytes();
        let _ = stop.send(true);
        let _ = running.await;
        Ok::<_, std::io::Error>((rate, peak))
    })?;
    Ok((ceiling, rate, peak))
}

/// Runs the end-to-end scenario and its ceiling.
pub(crate) fn measure_e2e(args: &E2eBenchArgs) -> std::io::Result<E2eFigures> {
    let frames = fixture_frames()?;
    let mean_bytes = frames.iter().map(|f| f.len()).sum::<usize>() / frames.len();
    let port = free_port()?;
    let redis = start_redis(&args.redis_server, port)?;
    let ceiling = redis_ceiling(&args.redis_benchmark, port, args.events, mean_bytes)?;
    drop(redis);
    let floor = measure_floor(args)?;
    let spilling = measure_pipeline(args, args.budget_mib << 20)?;
    let in_memory = if args.spilling_only {
        None
    } else {
        let budget = no_spill_budget_bytes(args.events, mean_bytes, args.budget_mib);
        Some(measure_pipeline(args, budget)?)
    };
    Ok(E2eFigures {
        ceiling,
        spilling,
        in_memory,
        floor,
        mean_bytes,
        cores: spillway::bench::cpu::cores(),
    })
}

/// This process's anonymous and file-backed resident bytes now (0 where `/proc` is not readable).
fn rss_parts_bytes() -> (u64, u64) {
    use spillway::bench::rss::proc_kib_field;
    let field = |name| proc_kib_field("/proc/self/status", name).map_or(0, |kib| kib * 1024);
    (field("RssAnon:"), field("RssFile:"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The CPU clocks of this process, redis-server and the relay child, started together.
struct ProcessClocks {
    this: spillway::bench::cpu::CpuSince,
    redis: spillway::bench::cpu::CpuSince,
    relay: Option<spillway::bench::cpu::CpuSince>,
}

fn unreadable_cpu(what: &str) -> std::io::Error {
    std::io::Error::other(format!("reading {what}'s CPU time from /proc"))
}

impl ProcessClocks {
    fn start(redis_pid: u32, relay_pid: Option<u32>) -> std::io::Result<Self> {
        use spillway::bench::cpu::CpuSince;
        Ok(Self {
            this: CpuSince::start(None).ok_or_else(|| unreadable_cpu("this process"))?,
            redis: CpuSince::start(Some(redis_pid))
                .ok_or_else(|| unreadable_cpu("redis-server"))?,
            relay: match relay_pid {
                Some(pid) => {
                    Some(CpuSince::start(Some(pid)).ok_or_else(|| unreadable_cpu("the relay"))?)
                }
                None => None,
            },
        })
    }

    /// CPU seconds each spent since [`ProcessClocks::start`].
    fn read(&self) -> std::io::Result<E2eCpu> {
        Ok(E2eCpu {
            spillway_seconds: self
                .this
                .elapsed_seconds()
                .ok_or_else(|| unreadable_cpu("this process"))?,
            redis_seconds: self
                .redis
                .elapsed_seconds()
                .ok_or_else(|| unreadable_cpu("redis-server"))?,
            relay_seconds: match &self.relay {
                Some(clock) => Some(
                    clock
                        .elapsed_seconds()
                        .ok_or_else(|| unreadable_cpu("the relay"))?,
                ),
                None => None,
            },
        })
    }
}

/// The bare forwarder (`bench floor-phase`, its own process, so nothing it leaves in the
/// heap counts in spillway's runs) through a fresh redis-server, the relay in its own process.
fn measure_floor(args: &E2eBenchArgs) -> std::io::Result<FloorRun> {
    let port = free_port()?;
    let redis = start_redis(&args.redis_server, port)?;
    let base = 1_000_000_000;
    let (relay, url) = start_relay_child(args.events, base)?;
    let mut forwarder = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "floor-phase",
            "--relay-url",
            &format!("{url}?cursor={}", base - 1),
            "--redis-port",
            &port.to_string(),
            "--events",
            &args.events.to_string(),
            "--sink-batch-events-max",
            &args.sink_batch_events_max.to_string(),
            "--redis-multi-events-max",
            &args.redis_multi_events_max.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let clocks = match ProcessClocks::start(redis.0.id(), Some(relay.0.id())) {
        Ok(clocks) => clocks,
        Err(e) => {
            let _ = forwarder.kill();
            let _ = forwarder.wait();
            return Err(e);
        }
    };
    // The forwarder's CPU is what the kernel adds to this process's waited-for children
    // once it is reaped (exact, and no polling here to count).
    let children_before = children_cpu_seconds();
    let started = std::time::Instant::now();
    // The forwarder waits for a line on stdin, so it connects only once the clocks run.
    if let Some(mut stdin) = forwarder.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"go\n");
    }
    let status = forwarder.wait()?;
    let rate = args.events as f64 / started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "the forwarder floor run failed ({status})"
        )));
    }
    let others = clocks.read()?;
    Ok(FloorRun {
        rate,
        cpu: E2eCpu {
            spillway_seconds: children_cpu_seconds() - children_before,
            ..others
        },
    })
}

/// User + system CPU seconds of every child this process has waited for (`RUSAGE_CHILDREN`).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// One run through a fresh redis-server under `budget_bytes`, with each process's CPU time.
fn measure_pipeline(args: &E2eBenchArgs, budget_bytes: u64) -> std::io::Result<E2eRun> {
    use spillway::config::Config;
    use spillway::pipeline::Pipeline;
    use spillway::source::relay::{LoopbackRelay, RelayConfig};
    use std::sync::atomic::Ordering;

    let port = free_port()?;
    let redis = start_redis(&args.redis_server, port)?;
    let redis_pid = redis.0.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let data = std::env::temp_dir().join(format!(
        "spillway-bench-e2e-{}-{budget_bytes}",
        std::process::id()
    ));
    let _data = tempfile_like::Dir(data.clone());
    runtime.block_on(async {
        let base = 1_000_000_000;
        let (_relay, relay_child, url) = if args.relay_in_process {
            let mut relay_config = RelayConfig::from_capture(super::FIXTURE_CAPTURE, base)
                .map_err(std::io::Error::other)?;
            relay_config.total_events = Some(args.events);
            let relay = LoopbackRelay::start(relay_config).await?;
            let url = relay.url();
            (Some(relay), None, url)
        } else {
            let (child, url) = start_relay_child(args.events, base)?;
            (None, Some(child), url)
        };
        let config = Config {
            data_dir: data.clone(),
            relays: vec![url],
            start_cursor: Some(base - 1),
            memory_budget_bytes: budget_bytes,
            redis_url: format!("redis://127.0.0.1:{port}"),
            redis_high_water_events: 0,
            metrics_listen: "127.0.0.1:0".into(),
            sink_batch_events_max: args.sink_batch_events_max,
            redis_multi_events_max: args.redis_multi_events_max,
            redis_transactions_in_flight_max: args.redis_transactions_in_flight_max,
            redis_idempotent_ids: args.redis_idempotent_ids,
            ..Config::default()
        };
        let relay_pid = relay_child.as_ref().map(|c| c.0.id());
        spillway::bench::rss::reset_peak();
        let clocks = ProcessClocks::start(redis_pid, relay_pid)?;
        let started = std::time::Instant::now();
        let mut rss_parts_max = (0u64, 0u64);
        let mut polls = 0u64;
        let pipeline = Pipeline::start(&config, 0).map_err(std::io::Error::other)?;
        let heap_start_bytes = spillway::bench::heap::live_bytes();
        spillway::bench::heap::reset_peak();
        let lane = &pipeline.lanes[0];
        let (stop, sink, queue) = (
            pipeline.stopper(),
            lane.sinks[0].stats.clone(),
            lane.queue.clone(),
        );
        let running = tokio::spawn(pipeline.join());
        while sink.events_total.load(Ordering::Relaxed) < args.events {
            if started.elapsed() > std::time::Duration::from_secs(600) {
                return Err(std::io::Error::other(
                    "the end-to-end run did not finish in 10 minutes",
                ));
            }
            // Reading /proc/self/status is this process's CPU too (2% of the profile
            // every 5 ms), so the parts are sampled every 50 ms; the peak is the kernel's.
            polls += 1;
            if polls % 10 == 1 {
                let (anon, file) = rss_parts_bytes();
                rss_parts_max = (rss_parts_max.0.max(anon), rss_parts_max.1.max(file));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = clocks.read()?;
        let peak = spillway::bench::rss::peak_bytes();
        let spilled_events = queue.stats().spilled_events_total;
        let _ = stop.send(true);
        let _ = running.await;
        Ok::<_, std::io::Error>(E2eRun {
            budget_bytes,
            rate: args.events as f64 / seconds,
            peak_rss_bytes: peak,
            rss_anon_file_max_bytes: rss_parts_max,
            heap_start_bytes,
            heap_peak_bytes: spillway::bench::heap::peak_bytes(),
            spilled_events,
            cpu,
        })
    })
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
