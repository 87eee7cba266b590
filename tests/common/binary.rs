//! The `spillway` binary run as a child process, as the crash and environment tests start it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `spillway run` without progress lines, `env` set on it, stdout dropped and stderr appended to `log`.
pub fn spillway_run(env: &[(&str, String)], log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
    command
        .args(["run", "--progress-secs", "0"])
        .stdout(Stdio::null())
        .stderr(super::append_log(log));
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Spawns `command`; a test without its binary cannot go on.
pub fn spawn(mut command: Command) -> Child {
    command.spawn().expect("spawn the spillway binary")
}

/// One relay into one Redis stream, flushed every 50 ms and never paused at a high-water mark, as the
/// kill -9 tests run it: `first_seq` is where the first run starts (later runs resume from their cursor);
/// `extra_env` adds or overrides keys.
pub fn start_relay_to_redis(
    data: &Path,
    relay: &str,
    redis: &str,
    first_seq: Option<u64>,
    extra_env: &[(&str, String)],
    log: &Path,
) -> Child {
    let mut env = vec![
        ("SPILLWAY_DATA_DIR", data.display().to_string()),
        ("SPILLWAY_RELAYS", format!("[\"{relay}\"]")),
        ("SPILLWAY_REDIS_URL", redis.to_string()),
        ("SPILLWAY_MEMORY_BUDGET_BYTES", (64u64 << 20).to_string()),
        ("SPILLWAY_DURABILITY", "\"periodic:50\"".to_string()),
        ("SPILLWAY_REDIS_HIGH_WATER_EVENTS", "0".to_string()),
        ("SPILLWAY_METRICS_LISTEN", "\"127.0.0.1:0\"".to_string()),
        ("RUST_LOG", "spillway=info".to_string()),
    ];
    if let Some(seq) = first_seq {
        env.push(("SPILLWAY_START_CURSOR", (seq - 1).to_string()));
    }
    env.extend(extra_env.iter().cloned());
    spawn(spillway_run(&env, log))
}
