//! The `spillway` binary.

mod cli;

use clap::{Parser, Subcommand};

/// Spillway: a disk-spilling event queue with a memory budget in bytes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline: relay firehose -> spilling queue -> Redis stream (or JSON lines).
    Run(cli::run::RunArgs),
    /// The embedded default: a loopback relay replaying real frames into a slow sink under a
    /// small memory budget, showing the spill at work. Needs nothing installed.
    Demo(cli::run::DemoArgs),
    /// A capture file decoded to JSON lines (jetstream, rsky or raw) on stdout, for debugging.
    Decode(cli::decode::DecodeArgs),
    /// Records a relay's live stream to a capture file (`[u32 LE length][frame]`...).
    Capture(cli::decode::CaptureArgs),
    /// Offline and read-only: a data directory's queues, consumers, segments and relay
    /// cursors; `--verify` checks every checksum and names each damaged range.
    Inspect(cli::inspect::InspectArgs),
    /// Benchmarks, each beside a baseline measured in the same run. With no scenario
    /// named: every scenario once, as one table.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    scenario: Option<BenchCommand>,
    #[command(flatten)]
    all: cli::bench_all::AllBenchArgs,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The spill log: append, open and read-back against a plain file append/read.
    Log(cli::bench::LogBenchArgs),
    /// One phase of `bench log` in its own process (used by `bench log` itself).
    #[command(hide = true)]
    LogPhase(cli::bench::LogPhaseArgs),
    /// The queue: in-memory path against tokio mpsc, spill and read-back against a plain
    /// file, peak RSS over growing backlogs, reopen time, and the CDC replay case.
    Queue(cli::bench::QueueBenchArgs),
    /// One phase of `bench queue` in its own process (used by `bench queue` itself).
    #[command(hide = true)]
    QueuePhase(cli::bench::QueuePhaseArgs),
    /// End to end: loopback relay -> spillway -> redis-server against redis-benchmark's ceiling, with each process's CPU per event beside a bare forwarder's.
    E2e(cli::bench_e2e::E2eBenchArgs),
    /// Decode throughput on one core (Jetstream, rsky, the filter) beside the raw pass-through.
    Decode(cli::bench::DecodeBenchArgs),
    /// The loopback relay of `bench e2e` in its own process (used by `bench e2e` itself).
    #[command(hide = true)]
    RelayPhase(cli::bench_e2e::RelayPhaseArgs),
    /// The bare forwarder of `bench e2e` in its own process (used by `bench e2e` itself).
    #[command(hide = true)]
    FloorPhase(cli::bench_e2e::FloorPhaseArgs),
}

/// Heap bytes counted for `bench` and the memory figures (relaxed atomics per call).
#[global_allocator]
static ALLOCATOR: spillway::bench::heap::CountingAllocator =
    spillway::bench::heap::CountingAllocator;

/// glibc malloc arenas: its default (8 per core) let freed event buffers linger in
/// per-thread arenas; `bench e2e` measured peak RSS 157 MiB with the default and
/// 88-102 MiB with 1-2 arenas, for a 64 MiB budget. One arena, against two, since frames
/// are allocated on one thread and freed on another: peak RSS 56.3-57.8 MiB in 11 runs
/// against 57.3-81.5 MiB (two of 16 over budget + 16 MiB), and 8-13% less CPU per event
/// (9.6-9.8 against 10.9-11.1 µs spilling; 8.0-8.4 against 9.4-10.1 in memory).
const MALLOC_ARENAS_MAX: i32 = 1;

fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it runs before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS_MAX);
    }
}

fn main() -> std::process::ExitCode {
    bound_malloc_arenas();
    let cli = Cli::parse();
    // `run` sets up logs itself, once its configuration (which may ask for JSON) is read.
    if !matches!(cli.command, Command::Run(_)) {
        cli::init_logs(
            std::env::var("SPILLWAY_LOG_FORMAT").is_ok_and(|v| v == "json"),
            &std::env::var("SPILLWAY_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
        );
    }
    let result = match &cli.command {
        Command::Run(args) => return run_outcome(cli::run::run(args)),
        Command::Demo(args) => return run_outcome(cli::run::demo(args)),
        Command::Inspect(args) => cli::inspect::run_inspect(args),
        Command::Decode(args) => cli::decode::run_decode(args),
        Command::Capture(args) => cli::decode::run_capture(args),
        Command::Bench(bench) => match &bench.scenario {
            None => cli::bench_all::run_all(&bench.all),
            Some(BenchCommand::Log(args)) => cli::bench::run_log(args),
            Some(BenchCommand::LogPhase(args)) => cli::bench::run_log_phase(args),
            Some(BenchCommand::Queue(args)) => cli::bench::run_queue(args),
            Some(BenchCommand::QueuePhase(args)) => cli::bench::run_queue_phase(args),
            Some(BenchCommand::E2e(args)) => cli::bench_e2e::run_e2e(args),
            Some(BenchCommand::Decode(args)) => cli::bench::run_decode_bench(args),
            Some(BenchCommand::RelayPhase(args)) => cli::bench_e2e::run_relay_phase(args),
            Some(BenchCommand::FloorPhase(args)) => cli::bench_e2e::run_floor_phase(args),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spillway: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reports how `run` or `demo` ended: its own exit status says whether a restart can help.
fn run_outcome(result: Result<(), cli::run::RunError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spillway: {}", error.message);
            std::process::ExitCode::from(error.exit_code)
        }
    }
}
