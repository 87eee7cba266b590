//! The command line: argument definitions and one module per subcommand.

/// The real relay frames of `tests/fixtures/frames.bin`, compiled in: the demo's relay
/// and the benchmarks replay them.
pub const FIXTURE_CAPTURE: &[u8] = include_bytes!("../../tests/fixtures/frames.bin");

pub mod bench;
pub mod bench_all;
pub mod bench_e2e;
mod bench_floor;
pub mod decode;
pub mod inspect;
pub mod run;

/// Logs to stderr through `tracing`, levels from `RUST_LOG`, else `level`, as text or JSON.
pub fn init_logs(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: logs redirected to files and journals stay plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}
