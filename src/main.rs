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
    /// Offline and read-only: a data directory's queues, consumers, segments and relay
    /// cursors; `--verify` checks every checksum and names each damaged range.
    Inspect(cli::inspect::InspectArgs),
    /// Benchmarks, each beside a baseline measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
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
    /// End to end: loopback relay -> spillway -> redis-server against redis-benchmark's ceiling.
    E2e(cli::bench::E2eBenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `run` sets up logs itself, once its configuration (which may ask for JSON) is read.
    if !matches!(cli.command, Command::Run(_)) {
        cli::init_logs(std::env::var("SPILLWAY_LOG_FORMAT").is_ok_and(|v| v == "json"));
    }
    let result = match &cli.command {
        Command::Run(args) => cli::run::run(args).map_err(std::io::Error::other),
        Command::Demo(args) => cli::run::demo(args).map_err(std::io::Error::other),
        Command::Inspect(args) => cli::inspect::run_inspect(args),
        Command::Bench(BenchCommand::Log(args)) => cli::bench::run_log(args),
        Command::Bench(BenchCommand::LogPhase(args)) => cli::bench::run_log_phase(args),
        Command::Bench(BenchCommand::Queue(args)) => cli::bench::run_queue(args),
        Command::Bench(BenchCommand::QueuePhase(args)) => cli::bench::run_queue_phase(args),
        Command::Bench(BenchCommand::E2e(args)) => cli::bench::run_e2e(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spillway: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
