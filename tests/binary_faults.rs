//! Operator faults around the `spillway` binary, each made for real: a lost or garbled
//! cursor file, a Redis with a password, a data directory or metrics address that cannot
//! be used, two processes on one data directory, and several relays on one host.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::redis_server::{drain_seqs_blocking, RedisServer};
use spillway::source::relay::{LoopbackRelay, RelayConfig};

const BASE_SEQ: u64 = 80_000_000_000;
const WAIT: Duration = Duration::from_secs(60);

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `spillway run` with `env` (values in TOML syntax where they are strings: `"\"jsonl\""`),
/// its stderr appended to `log`.
fn spillway_run(data: &Path, env: &[(&str, String)], log: &Path) -> Command {
    let defaults = [
        ("SPILLWAY_DATA_DIR", data.display().to_string()),
        ("SPILLWAY_METRICS_LISTEN", "\"\"".to_string()),
        ("SPILLWAY_REDIS_HIGH_WATER_EVENTS", "0".to_string()),
    ];
    let mut command = common::binary::spillway_run(&defaults, log);
    command.env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn relays_env(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("[{}]", quoted.join(","))
}

/// SIGTERM, then the exit status (a clean stop is 0).
fn stop(mut child: Child) -> Option<i32> {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(started.elapsed() < WAIT, "spillway did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    common::wait_until(what, WAIT, done).await
}

fn metric_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A loopback relay on `addr`, retried while the previous one on that port lets it go.
async fn relay_on(config: RelayConfig, addr: SocketAddr) -> LoopbackRelay {
    let started = Instant::now();
    loop {
        match LoopbackRelay::start_on(config.clone(), addr).await {
            Ok(relay) => return relay,
            Err(e) if started.elapsed() < WAIT => {
                tracing::debug!(%e, "port still held");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind the relay to {addr}: {e}"),
        }
    }
}

fn relay_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_cursor_file_resumes_from_the_queues_own_record_and_warns() {
    let first_total = 3_000;
    let total = 4_000;
    let relay_addr = free_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, log) = (dir.path().join("data"), dir.path().join("spillway.log"));
    let cursor_file = data.join(format!("cursor-127.0.0.1_{}", relay_addr.port()));

    // First run: Redis is down, so everything the relay sends stays in the queue (written
    // through to the log); a clean stop saves the cursor.
    let relay = relay_on(
        common::fixture::relay_config(BASE_SEQ, first_total),
        relay_addr,
    )
    .await;
    let env = |redis: String| {
        vec![
            ("SPILLWAY_RELAYS", relays_env(&[relay_url(relay_addr)])),
            ("SPILLWAY_REDIS_URL", redis),
            ("SPILLWAY_SPILL_MODE", "\"write-through\"".to_string()),
        ]
    };
    let mut first_env = env(format!("redis://{}", free_addr()));
    first_env.push(("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string()));
    let first = spillway_run(&data, &first_env, &log)
        .spawn()
        .expect("spawn");
    wait_for("the relay to send everything", || {
        relay.stats().frames_sent.load(Ordering::Relaxed) == first_total
    })
    .await;
    // Whatever the first run pushed before the stop, the replay brings the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stop(first), Some(0), "{}", read_text(&log));
    drop(relay);
    let saved: u64 = read_text(&cursor_file)
        .trim()
        .parse()
        .expect("the first run saved its cursor");
    assert!(saved >= BASE_SEQ, "some events were stored: cursor {saved}");

    // The cursor file is lost; the backlog is not.
    std::fs::remove_file(&cursor_file).expect("delete the cursor file");
    let redis = RedisServer::start();
    let relay = relay_on(common::fixture::relay_config(BASE_SEQ, total), relay_addr).await;
    let second = spillway_run(&data, &env(redis.url()), &log)
        .spawn()
        .expect("spawn");
    let url = redis.url();
    let seqs = drain_seqs_blocking(url, "firehose_live", total, Duration::from_secs(30)).await;
    assert_eq!(stop(second), Some(0));
    let text = read_text(&log);
    assert!(
        seqs == (BASE_SEQ..BASE_SEQ + total).collect::<Vec<_>>(),
        "every seq once, in order: the stored ones, then the relay's replay from the queue's record ({} seqs)",
        seqs.len()
    );
    assert_eq!(
        relay.stats().last_cursor.load(Ordering::Relaxed),
        saved,
        "the relay was asked to replay from the position the queue recorded"
    );
    let warning = text
        .lines()
        .find(|l| l.contains("cursor file is missing"))
        .unwrap_or_else(|| panic!("no warning about the missing cursor file:\n{text}"));
    assert!(
        warning.contains(&cursor_file.display().to_string())
            && warning.contains(&format!("position={saved}")),
        "the warning names the missing file and the position used: {warning}"
    );
    assert_eq!(
        read_text(&cursor_file).trim(),
        (BASE_SEQ + total - 1).to_string(),
        "the cursor file is kept again"
    );
}

#[test]
fn a_garbled_cursor_file_is_named_by_run_and_by_inspect_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, log) = (dir.path().join("data"), dir.path().join("spillway.log"));
    let relay = format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", free_addr());
    let config = spillway::config::Config {
        data_dir: data.clone(),
        relays: vec![relay.clone()],
        ..spillway::config::Config::default()
    };
    let id = spillway::source::cursor::RelayId::of_url(&relay);
    std::fs::create_dir_all(&data).expect("data dir");
    drop(
        spillway::queue::SpillQueue::open(
            &data.join(format!("queue-{}", id.file_name())),
            config.queue_config(spillway::source::EventFamily::Firehose),
        )
        .expect("a queue"),
    );
    let cursor = data.join(format!("cursor-{}", id.file_name()));
    std::fs::write(&cursor, b"12\xff\xfe34\n").expect("write");

    let output = spillway_run(&data, &[("SPILLWAY_RELAYS", relays_env(&[relay]))], &log)
        .output()
        .expect("run");
    let stderr = read_text(&log);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&cursor.display().to_string()) && last.contains("not UTF-8"),
        "the error names the file and why: {last}"
    );

    let inspect = |verify: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_spillway"));
        command.arg("inspect").arg(&data);
        if verify {
            command.arg("--verify");
        }
        command.output().expect("inspect")
    };
    let listed = inspect(false);
    assert!(listed.status.success(), "inspect alone only lists");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("UNREADABLE"));
    let verified = inspect(true);
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(
        !verified.status.success(),
        "verify fails on a bad cursor file"
    );
    assert!(
        stderr.contains(&cursor.display().to_string()) && stderr.contains("not UTF-8"),
        "{stderr}"
    );
    std::fs::write(&cursor, b"1234\n").expect("write");
    assert!(inspect(true).status.success(), "a good cursor file passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_requirepass_gives_the_reason_and_never_the_password() {
    const PASSWORD: &str = "s3cret-FOR-TEST";
    const WRONG: &str = "wrong-pw-LEAK-CHECK";
    let total = 200;
    let redis = RedisServer::start_with_password(PASSWORD);
    let relay = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, total))
        .await
        .expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let address = format!("127.0.0.1:{}", redis.port);
    let cases = [
        (
            format!("redis://:{WRONG}@{address}"),
            format!("authentication failed for {address}"),
        ),
        (
            format!("redis://{address}"),
            format!("authentication required by {address}"),
        ),
        (
            format!("redis://spillway:{WRONG}@{address}/0"),
            format!("authentication failed for {address}"),
        ),
    ];
    for (index, (url, reason)) in cases.iter().enumerate() {
        let (data, log) = (
            dir.path().join(format!("data{index}")),
            dir.path().join(format!("{index}.log")),
        );
        let metrics = free_addr();
        let child = spillway_run(
            &data,
            &[
                ("SPILLWAY_RELAYS", relays_env(&[relay.url()])),
                ("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string()),
                ("SPILLWAY_REDIS_URL", url.clone()),
                ("SPILLWAY_METRICS_LISTEN", format!("{metrics:?}")),
                ("RUST_LOG", "debug".to_string()),
            ],
            &log,
        )
        .spawn()
        .expect("spawn");
        wait_for("the authentication reason in the log", || {
            read_text(&log).contains(reason.as_str())
        })
        .await;
        let scraped = common::http::get_blocking(metrics, "/metrics");
        assert!(
            metric_sum(&scraped, "spillway_sink_failures_total") > 0,
            "counted as sink failures"
        );
        assert_eq!(stop(child), Some(0));
        let text = read_text(&log) + &scraped;
        assert!(!text.contains(WRONG), "the password leaked: {url}");
        assert!(
            text.contains("redis://"),
            "the URL is still named, redacted"
        );
    }

    // The right password works, and is not printed either.
    let (data, log) = (dir.path().join("data-ok"), dir.path().join("ok.log"));
    let child = spillway_run(
        &data,
        &[
            ("SPILLWAY_RELAYS", relays_env(&[relay.url()])),
            ("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string()),
            ("SPILLWAY_REDIS_URL", redis.url()),
            ("RUST_LOG", "debug".to_string()),
        ],
        &log,
    )
    .spawn()
    .expect("spawn");
    let url = redis.url();
    let seqs = drain_seqs_blocking(url, "firehose_live", total, WAIT).await;
    assert_eq!(seqs.len() as u64, total);
    assert_eq!(stop(child), Some(0));
    assert!(!read_text(&log).contains(PASSWORD), "the password leaked");
}

#[test]
fn data_dir_and_metrics_listen_failures_are_named_for_what_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relays_env(&[relay_url(free_addr())]);
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let log = dir.path().join("data_dir.log");
    let output = spillway_run(&not_a_dir, &[("SPILLWAY_RELAYS", relay.clone())], &log)
        .output()
        .expect("run");
    let stderr = read_text(&log);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("spillway: data_dir {}:", not_a_dir.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("sink:"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("addr");
    let log = dir.path().join("metrics.log");
    let output = spillway_run(
        &dir.path().join("data"),
        &[
            ("SPILLWAY_RELAYS", relay),
            (
                "SPILLWAY_METRICS_LISTEN",
                format!("{:?}", address.to_string()),
            ),
            ("SPILLWAY_SINK", "\"jsonl\"".into()),
            (
                "SPILLWAY_JSONL_PATH",
                format!("{:?}", dir.path().join("out.jsonl")),
            ),
        ],
        &log,
    )
    .output()
    .expect("run");
    let stderr = read_text(&log);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("spillway: metrics_listen {address}:")),
        "{stderr}"
    );
    assert!(!stderr.contains("sink:"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_one_data_dir_is_refused_and_the_first_keeps_running() {
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, 1_000_000);
    relay_config.events_per_sec = Some(2_000);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, out) = (dir.path().join("data"), dir.path().join("out.jsonl"));
    let env = [
        ("SPILLWAY_RELAYS", relays_env(&[relay.url()])),
        ("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string()),
        ("SPILLWAY_SINK", "\"jsonl\"".into()),
        ("SPILLWAY_JSONL_PATH", format!("{out:?}")),
    ];
    let first = spillway_run(&data, &env, &dir.path().join("first.log"))
        .spawn()
        .expect("spawn");
    let pid = first.id();
    let lock = data.join("lock");
    wait_for("the first run to hold the lock", || {
        read_text(&lock).trim() == pid.to_string()
    })
    .await;

    let log = dir.path().join("second.log");
    let second = spillway_run(&data, &env, &log).output().expect("run");
    let stderr = read_text(&log);
    assert_eq!(
        second.status.code(),
        Some(4),
        "the documented status for a held data directory: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "another spillway (pid {pid}) holds {}",
            data.display()
        )),
        "{stderr}"
    );

    let lines = || read_text(&out).lines().count();
    let before = lines();
    wait_for("the first run to keep writing", || lines() > before + 100).await;
    let inspect = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("inspect")
        .arg(&data)
        .output()
        .expect("inspect");
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success(),
        "inspect reads a live directory: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(
        stdout.contains(&format!("held by a running spillway (pid {pid})")),
        "{stdout}"
    );
    assert_eq!(stop(first), Some(0), "the first run was never disturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_one_host_get_their_own_queue_cursor_and_label() {
    let total = 300;
    let one = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, total))
        .await
        .expect("relay");
    let two = LoopbackRelay::start(common::fixture::relay_config(BASE_SEQ, total))
        .await
        .expect("relay");
    // The loopback relay serves any path: one relay, two paths, and a second port.
    let mirror = one.url().replace("/xrpc/", "/mirror/xrpc/");
    let urls = [one.url(), mirror.clone(), two.url()];
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, log) = (dir.path().join("data"), dir.path().join("spillway.log"));
    let metrics = free_addr();
    let child = spillway_run(
        &data,
        &[
            ("SPILLWAY_RELAYS", relays_env(&urls)),
            ("SPILLWAY_START_CURSOR", (BASE_SEQ - 1).to_string()),
            ("SPILLWAY_REDIS_URL", redis.url()),
            (
                "SPILLWAY_METRICS_LISTEN",
                format!("{:?}", metrics.to_string()),
            ),
        ],
        &log,
    )
    .spawn()
    .expect("spawn");
    let url = redis.url();
    let seqs = drain_seqs_blocking(url, "firehose_live", 3 * total, WAIT).await;
    let scraped = common::http::get_blocking(metrics, "/metrics");
    assert_eq!(stop(child), Some(0), "{}", read_text(&log));

    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for seq in seqs {
        *counts.entry(seq).or_default() += 1;
    }
    assert_eq!(counts.len() as u64, total);
    assert!(
        counts.values().all(|&n| n == 3),
        "each relay's lane delivered every seq once"
    );

    let port = |relay: &LoopbackRelay| {
        relay
            .url()
            .split(':')
            .nth(2)
            .and_then(|p| p.split('/').next())
            .unwrap_or_default()
            .to_string()
    };
    let (p1, p2) = (port(&one), port(&two));
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .expect("data dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mirror_tag = names
        .iter()
        .find(|n| n.starts_with(&format!("queue-127.0.0.1_{p1}_mirror-")))
        .unwrap_or_else(|| panic!("no queue for the mirror path: {names:?}"))
        .trim_start_matches("queue-")
        .to_string();
    for name in [
        format!("127.0.0.1_{p1}"),
        mirror_tag,
        format!("127.0.0.1_{p2}"),
    ] {
        assert!(
            names.contains(&format!("queue-{name}")),
            "queue-{name} in {names:?}"
        );
        assert!(
            names.contains(&format!("cursor-{name}")),
            "cursor-{name} in {names:?}"
        );
    }
    let mut c = redis.connection();
    for label in [
        format!("127.0.0.1:{p1}"),
        format!("127.0.0.1:{p1}/mirror/xrpc/com.atproto.sync.subscribeRepos"),
        format!("127.0.0.1:{p2}"),
    ] {
        assert!(
            scraped.contains(&format!(
                "spillway_sink_events_total{{host=\"{label}\",source=\"firehose\",sink=\"redis\"}} {total}"
            )),
            "a metrics lane per relay: {label}\n{scraped}"
        );
        let cursor: Option<u64> = redis::cmd("GET")
            .arg(format!("firehose_live:cursor:{label}"))
            .query(&mut c)
            .expect("GET");
        assert_eq!(
            cursor,
            Some(BASE_SEQ + total - 1),
            "the Redis cursor key of {label}"
        );
    }
}
