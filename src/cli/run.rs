//! `spillway run` and `spillway demo`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spillway::config::Config;
use spillway::pipeline::{Pipeline, PipelineError};
use spillway::source::relay::{LoopbackRelay, RelayConfig};
use spillway::source::SourceError;

/// Arguments of `spillway run`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = spillway::config::help())]
pub struct RunArgs {
    /// A TOML configuration file (keys below); `SPILLWAY_<KEY>` environment variables override it.
    #[arg(long, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print a progress line every N seconds (0: never).
    #[arg(long, default_value_t = 10)]
    pub progress_secs: u64,
}

/// Arguments of `spillway demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Events per second the loopback relay sends.
    #[arg(long, default_value_t = 20_000)]
    pub relay_events_per_sec: u64,
    /// Events per second the deliberately slow JSON-lines sink writes.
    #[arg(long, default_value_t = 4_000)]
    pub sink_events_per_sec: u64,
    /// The queue's memory budget in MiB.
    #[arg(long, default_value_t = 32)]
    pub memory_budget_mib: u64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Data directory (default: a fresh temporary one, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the sink writes its JSON lines (default: /dev/null, the demo is about the queue).
    #[arg(long, default_value = "/dev/null")]
    pub jsonl_path: String,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Exit status of `spillway run` when retrying cannot help and an operator must act
/// (the relay answered `FutureCursor`); systemd: `RestartPreventExitStatus=3`.
pub const EXIT_NEEDS_OPERATOR: u8 = 3;

/// Exit status of `spillway run` when another process holds the data directory (its
/// `DATA_DIR/lock`); the one running is left alone.
pub const EXIT_DATA_DIR_HELD: u8 = 4;

/// Why `run` or `demo` stopped with an error, and the exit status to report.
#[derive(Debug)]
pub struct RunError {
    /// What went wrong, with context.
    pub message: String,
    /// 1, [`EXIT_NEEDS_OPERATOR`] or [`EXIT_DATA_DIR_HELD`].
    pub exit_code: u8,
}

impl From<String> for RunError {
    fn from(message: String) -> Self {
        RunError {
            message,
            exit_code: 1,
        }
    }
}

impl From<PipelineError> for RunError {
    fn from(error: PipelineError) -> Self {
        use spillway::queue::QueueError;
        use spillway_storage::OpenError;
        let exit_code = match &error {
            PipelineError::Source(SourceError::FutureCursor { .. }) => EXIT_NEEDS_OPERATOR,
            PipelineError::Locked(_) => EXIT_DATA_DIR_HELD,
            // Another build's data: restarting cannot help.
            PipelineError::Queue {
                source:
                    QueueError::Open(
                        OpenError::UnsupportedVersion { .. } | OpenError::WrongBackend { .. },
                    )
                    | QueueError::EnvelopeVersion { .. },
                ..
            } => EXIT_NEEDS_OPERATOR,
            _ => 1,
        };
        let mut message = error.to_string();
        if let PipelineError::Queue { .. } = &error {
            // Open repairs what it can by itself; what it cannot, the operator can, with one command.
            message.push_str(
                "\nIf this repeats: `spillway inspect --verify DATA_DIR` names the damage, and \
                 `spillway inspect --repair DATA_DIR` moves damaged files aside and rebuilds the \
                 manifest, keeping every intact event (nothing needs deleting by hand).",
            );
        }
        RunError { message, exit_code }
    }
}

/// Runs the pipeline until a signal, a fatal error or `deadline`, printing progress.
async fn drive(
    pipeline: Pipeline,
    progress: Duration,
    deadline: Option<Duration>,
    relay: Option<&LoopbackRelay>,
) -> Result<(), RunError> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(if progress.is_zero() {
        Duration::from_secs(3600)
    } else {
        progress
    });
    tick.tick().await;
    // Per lane: frames received and each sink's events written at the last tick.
    let mut last_counts: Vec<(u64, Vec<u64>)> = pipeline
        .lanes
        .iter()
        .map(|lane| (0, vec![0; lane.sinks.len()]))
        .collect();
    let mut last_at = Instant::now();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let lanes = pipeline.lanes.clone();
    let stop = pipeline.stopper();
    let join = pipeline.join();
    tokio::pin!(join);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = &mut join => return result.map_err(RunError::from),
            _ = &mut signal, if !stopping => {
                tracing::info!("signal received; stopping: sources stop reading, cursors are saved, queues flushed");
                stopping = true;
                let _ = stop.send(true);
            }
            _ = tick.tick() => {
                let elapsed = last_at.elapsed().as_secs_f64().max(1e-3);
                for (lane, last) in lanes.iter().zip(&mut last_counts) {
                    let (host, queue, source) = (&lane.host, &lane.queue, &lane.source);
                    let stats = queue.stats();
                    let frames = source.frames_total.load(Ordering::Relaxed);
                    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / elapsed;
                    // One `out` rate per sink, named when there are several.
                    let mut out = String::new();
                    let mut paused = Vec::new();
                    for (sink, written_before) in lane.sinks.iter().zip(&mut last.1) {
                        let written = sink.stats.events_total.load(Ordering::Relaxed);
                        let name = if lane.sinks.len() > 1 { format!("{} ", sink.kind) } else { String::new() };
                        out.push_str(&format!("  out {name}{:>7.0}/s", rate(written, *written_before)));
                        *written_before = written;
                        if sink.stats.backpressure.load(Ordering::Relaxed) == 1 {
                            paused.push(sink.kind.as_str());
                        }
                    }
                    println!(
                        "{:>6.1}s {host}: in {:>7.0}/s{out}  memory tier {:>5.1}/{:.1} MiB (budget {:.0} MiB, process RSS {:.0} MiB)  disk backlog {:>8} events {:>7.1} MiB  lag {:>8}  last seq {}{}{}",
                        started.elapsed().as_secs_f64(),
                        rate(frames, last.0),
                        mib(stats.memory_bytes),
                        mib(stats.memory_tier_bytes),
                        mib(stats.memory_budget_bytes),
                        mib(spillway::bench::rss::current_bytes()),
                        stats.disk_events,
                        mib(stats.disk_payload_bytes),
                        stats.consumers.iter().map(|c| c.lag_events).max().unwrap_or(0),
                        source.last_seq.load(Ordering::Relaxed),
                        if paused.is_empty() { String::new() } else { format!("  [sink paused: backpressure: {}]", paused.join(", ")) },
                        if source.connected.load(Ordering::Relaxed) == 0 { "  [relay disconnected]" } else { "" },
                    );
                    last.0 = frames;
                }
                if let Some(relay) = relay {
                    if relay.stats().consumer_too_slow.load(Ordering::Relaxed) > 0 {
                        println!("        the relay dropped us as too slow {} times", relay.stats().consumer_too_slow.load(Ordering::Relaxed));
                    }
                }
                last_at = Instant::now();
                if deadline.is_some_and(|d| started.elapsed() >= d) && !stopping {
                    stopping = true;
                    let _ = stop.send(true);
                }
            }
        }
    }
}

/// `spillway run`.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    let config = Config::load(args.config.as_deref(), std::env::vars())
        .map_err(|e| format!("configuration: {e}"))?;
    super::init_logs(config.log_format == "json", &config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async {
        let pipeline = Pipeline::start(&config, 0)?;
        drive(
            pipeline,
            Duration::from_secs(args.progress_secs),
            None,
            None,
        )
        .await
    })
}

/// `spillway demo`.
pub fn demo(args: &DemoArgs) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async {
        let base_seq = 1_000_000;
        let mut relay_config = RelayConfig::from_capture(super::FIXTURE_CAPTURE, base_seq).map_err(|e| format!("demo frames: {e}"))?;
        relay_config.events_per_sec = Some(args.relay_events_per_sec);
        let relay = LoopbackRelay::start(relay_config).await.map_err(|e| format!("starting the loopback relay: {e}"))?;
        let temp = match &args.data_dir {
            Some(_) => None,
            None => Some(tempfile_dir()?),
        };
        let data_dir = args.data_dir.clone().or_else(|| temp.as_ref().map(|t| t.0.clone())).ok_or_else(|| "no data directory".to_string())?;
        let config = Config {
            data_dir: data_dir.clone(),
            relays: vec![relay.url()],
            start_cursor: Some(base_seq - 1),
            memory_budget_bytes: args.memory_budget_mib * 1024 * 1024,
            sink: "jsonl".into(),
            jsonl_path: args.jsonl_path.clone(),
            metrics_listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        println!(
            "spillway demo: a loopback relay sends real firehose frames at {}/s; a JSON-lines sink writes {}/s to {}; memory budget {} MiB; data in {}. Ctrl-C stops.",
            args.relay_events_per_sec, args.sink_events_per_sec, args.jsonl_path, args.memory_budget_mib, data_dir.display()
        );
        let pipeline = Pipeline::start(&config, args.sink_events_per_sec)?;
        let deadline = (args.seconds > 0).then(|| Duration::from_secs(args.seconds));
        let outcome = drive(pipeline, Duration::from_secs(1), deadline, Some(&relay)).await;
        println!(
            "stopped: the relay sent {} frames and dropped us as too slow {} times; its longest send wait was {} ms",
            relay.stats().frames_sent.load(Ordering::Relaxed),
            relay.stats().consumer_too_slow.load(Ordering::Relaxed),
            relay.stats().max_send_wait_ms.load(Ordering::Relaxed)
        );
        drop(temp);
        outcome
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir, String> {
    let path = std::env::temp_dir().join(format!("spillway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    Ok(TempDir(path))
}
