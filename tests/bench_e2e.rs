//! `spillway bench e2e` runs whole at a small size: the ceiling, the bare forwarder (the
//! floor: every frame through, or the bench fails), the spilling run, and the CPU table of
//! every process. Figures are printed, not judged here (no timing assertions).
#![cfg(feature = "cli")]

use std::process::Command;

/// The CPU table row `name` of the section that starts with `section`: (CPU s, µs/event).
fn cpu_row(stdout: &str, section: &str, name: &str) -> (f64, f64) {
    let rest = &stdout[stdout
        .find(section)
        .unwrap_or_else(|| panic!("no section {section:?} in:\n{stdout}"))..];
    let line = rest
        .lines()
        .find(|line| line.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?} after {section:?} in:\n{stdout}"));
    let numbers: Vec<f64> = line[line.find(name).map_or(0, |at| at + name.len())..]
        .split_whitespace()
        .filter_map(|word| word.trim_end_matches('x').parse().ok())
        .collect();
    assert!(numbers.len() >= 2, "row without figures: {line}");
    (numbers[0], numbers[1])
}

#[test]
fn bench_e2e_measures_the_forwarder_floor_beside_spillway() {
    let redis_server =
        std::env::var("REDIS_SERVER_FOR_TESTS").unwrap_or_else(|_| "redis-server".into());
    // Debian ships redis-benchmark beside redis-server (redis-tools).
    let redis_benchmark = std::path::Path::new(&redis_server)
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(
            || "redis-benchmark".to_string(),
            |dir| dir.join("redis-benchmark").display().to_string(),
        );
    // Its scratch directories (redis-server's, the queue's, nats-server's) go here, to
    // check that none is left behind, a failed start (the missing nats-server) included.
    let scratch = tempfile::tempdir().expect("tempdir");
    // 8,000 frames of 5.4 KB (42 MiB) against a 32 MiB budget, of which the log's buffers
    // take 22 MiB: the backlog spills.
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args([
            "bench",
            "e2e",
            "--events",
            "8000",
            "--budget-mib",
            "32",
            "--spilling-only",
            "--redis-server",
            &redis_server,
            "--redis-benchmark",
            &redis_benchmark,
        ])
        // The NATS rows are another test's business (tests/nats_sink.rs).
        .env("NATS_SERVER_FOR_TESTS", "/nonexistent/nats-server")
        .env("TMPDIR", scratch.path())
        .output()
        .expect("running spillway bench e2e");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench e2e failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let floor = "forwarder floor";
    let (floor_cpu_s, floor_us) = cpu_row(&stdout, floor, "the forwarder (this process)");
    let (redis_cpu_s, _) = cpu_row(&stdout, floor, "redis-server (the baseline)");
    let (relay_cpu_s, _) = cpu_row(&stdout, floor, "loopback relay (its own process)");
    // Each process was measured: a forwarder that wrote nothing would cost redis-server nothing.
    assert!(floor_cpu_s > 0.0 && floor_us > 0.0, "{stdout}");
    assert!(redis_cpu_s > 0.0 && relay_cpu_s > 0.0, "{stdout}");

    let spilling = "spilling (the configured budget)";
    let (spillway_cpu_s, _) = cpu_row(&stdout, spilling, "spillway (source, queue, spill, sink)");
    assert!(spillway_cpu_s > 0.0, "{stdout}");
    let spilled: u64 = stdout[stdout.find(spilling).expect("spilling row")..]
        .split("; ")
        .find_map(|part| part.strip_suffix(" events spilled"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no spilled count in:\n{stdout}"));
    assert!(
        spilled > 0,
        "a 32 MiB budget under 42 MiB of frames must spill:\n{stdout}"
    );
    assert!(
        stdout.contains("spillway over the forwarder floor:"),
        "{stdout}"
    );
    assert!(stdout.contains("NATS rows skipped"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("reading the scratch directory")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "scratch directories left behind: {left:?}");
}
