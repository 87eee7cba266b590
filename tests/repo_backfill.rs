//! The listRepos backfill against a loopback listRepos server and a real `redis-server`:
//! entries byte for byte as rsky's ingester writes them, the cursor key never past what is
//! written and `!ingester-done` at the end, failed pages retried, and a SIGKILL in the
//! middle of a large listing while the Redis reader is stalled: every repo arrives, the
//! listing resumes from its checkpoint, and the child's memory stays within its budget.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::list_repos_server::{expected_entry, Fault, ListReposServer};
use common::redis_server::RedisServer;
use spillway::config::Config;
use spillway::pipeline::Pipeline;
use spillway::source::repo_listing::{
    ListReposClient, PositionFile, RepoListingConfig, DONE_CURSOR,
};

const STREAM: &str = "repo_backfill";

fn cursor_key(server: &ListReposServer) -> String {
    format!("{STREAM}:cursor:{}", server.addr)
}

fn listing_config(server: &ListReposServer, redis: &RedisServer, data: &std::path::Path) -> Config {
    Config {
        data_dir: data.to_path_buf(),
        relays: Vec::new(),
        repo_listing_hosts: vec![server.url()],
        redis_url: redis.url(),
        redis_high_water_events: 0,
        metrics_listen: String::new(),
        ..Config::default()
    }
}

fn get_key(c: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(c).expect("GET")
}

/// Every `repo` field in the stream, in order (each entry must have that one field only).
fn all_entries(c: &mut redis::Connection) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(c)
        .expect("XRANGE");
    reply
        .ids
        .iter()
        .map(|entry| {
            assert_eq!(
                entry.map.len(),
                1,
                "one field per entry: {:?}",
                entry.map.keys()
            );
            entry.get::<String>("repo").expect("a repo field")
        })
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_arrives_as_rskys_entries_through_429_and_500_and_ends_at_ingester_done() {
    const REPOS: u64 = 2_345;
    let redis = RedisServer::start();
    let server = ListReposServer::start(REPOS).await;
    server.fault_at(0, Fault::Status(429, Some(1)));
    server.fault_at(2, Fault::Status(500, None));
    server.fault_at(3, Fault::Status(503, None));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        metrics_listen: "127.0.0.1:0".into(),
        ..listing_config(&server, &redis, dir.path())
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let stop = pipeline.stopper();
    let source = pipeline.lanes[0].source.clone();
    let metrics_addr = pipeline.metrics_addr.expect("metrics listen");
    let running = tokio::spawn(pipeline.join());

    let key = cursor_key(&server);
    let mut c = redis.connection();
    wait_for(
        "the cursor key to say done",
        Duration::from_secs(60),
        || get_key(&mut c, &key).as_deref() == Some(DONE_CURSOR),
    )
    .await;
    let entries = all_entries(&mut c);
    let host_field = server.url();
    let expected: Vec<String> = (0..REPOS).map(|i| expected_entry(i, &host_field)).collect();
    assert_eq!(entries.len(), expected.len(), "one entry per repo");
    for (i, (got, want)) in entries.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "entry {i}");
    }
    assert_eq!(
        source.error_frames_total.load(Ordering::Relaxed),
        3,
        "429, 500 and 503 each counted once and retried"
    );
    assert_eq!(source.frames_total.load(Ordering::Relaxed), REPOS);
    let cursors = server.stats.cursors.lock().expect("cursors").clone();
    assert_eq!(
        cursors,
        vec![None, None, Some(1000), Some(1000), Some(1000), Some(2000)],
        "a failed page is asked again with the same cursor, and nothing else is"
    );
    // The position file says done: a restart lists nothing.
    let file = PositionFile::for_source(dir.path(), &RepoListingConfig::new(server.url()));
    wait_for(
        "the position file to say done",
        Duration::from_secs(10),
        || {
            let position = file.load().expect("position file");
            position.is_some_and(|p| p.cursor == DONE_CURSOR && p.ordinal == REPOS + 1)
        },
    )
    .await;
    // Its lane in /metrics, under its host, like a relay's.
    let metrics = http_get(metrics_addr, "/metrics");
    let listed = format!(
        "spillway_source_events_total{{host=\"{}\",source=\"repos\"}} {REPOS}",
        server.addr
    );
    assert!(metrics.contains(&listed), "{listed} in:\n{metrics}");
    stop.send(true).expect("stop");
    running.await.expect("join").expect("pipeline");
    // `spillway inspect` shows its queue and its position.
    let inspected = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("inspect")
        .arg(dir.path())
        .output()
        .expect("spillway inspect");
    let text = String::from_utf8_lossy(&inspected.stdout);
    let queue_dir = format!("queue-repos-127.0.0.1_{}", server.addr.port());
    assert!(text.contains(&queue_dir), "{queue_dir} in:\n{text}");
    let position = format!("ordinal {} cursor \"{DONE_CURSOR}\"", REPOS + 1);
    assert!(text.contains(&position), "{position} in:\n{text}");
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_key_never_passes_the_repos_written_while_the_reader_is_stalled() {
    const REPOS: u64 = 5_000;
    const HIGH_WATER: u64 = 1_500;
    let redis = RedisServer::start();
    let server = ListReposServer::start(REPOS).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        redis_high_water_events: HIGH_WATER,
        redis_low_water_events: HIGH_WATER / 3,
        ..listing_config(&server, &redis, dir.path())
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let stop = pipeline.stopper();
    let (source, sink, queue) = (
        pipeline.lanes[0].source.clone(),
        pipeline.lanes[0].sinks[0].stats.clone(),
        pipeline.lanes[0].queue.clone(),
    );
    let running = tokio::spawn(pipeline.join());
    wait_for(
        "the whole listing queued and the sink paused",
        Duration::from_secs(60),
        || {
            source.frames_total.load(Ordering::Relaxed) == REPOS
                && sink.backpressure.load(Ordering::Relaxed) == 1
        },
    )
    .await;
    let mut c = redis.connection();
    let written = all_entries(&mut c).len() as u64;
    let key = get_key(&mut c, &cursor_key(&server)).expect("a cursor key once a page is written");
    println!(
        "stalled: {written} entries written, cursor key {key:?}, queue {:?} events on disk",
        queue.stats().disk_events
    );
    assert_ne!(
        key, DONE_CURSOR,
        "the listing ended, but its repos are not written"
    );
    let next: u64 = key.parse().expect("the server's cursor");
    assert!(
        next <= written && next > 0,
        "the key ({next}) says every repo below it is written, and {written} are"
    );
    assert!(written < REPOS, "the reader stalled the sink");
    stop.send(true).expect("stop");
    running.await.expect("join").expect("pipeline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_malformed_page_is_an_error_naming_the_host_and_loses_nothing() {
    const REPOS: u64 = 3_000;
    let server = ListReposServer::start(REPOS).await;
    let host = server.addr.to_string();
    let mut small = RepoListingConfig::new(server.url());
    small.page_bytes_max = 10_000;
    let mut client = ListReposClient::new(&small);
    server.fault_at(0, Fault::Oversized(50_000));
    let error = client
        .fetch_page(None)
        .await
        .expect_err("oversized")
        .to_string();
    assert!(
        error.contains(&host) && error.contains("repo_listing_page_bytes_max"),
        "{error}"
    );
    server.fault_at(1, Fault::Malformed);
    let error = client
        .fetch_page(None)
        .await
        .expect_err("malformed")
        .to_string();
    assert!(
        error.contains(&host) && error.contains("malformed"),
        "{error}"
    );
    server.fault_at(2, Fault::Status(500, None));
    let error = client.fetch_page(None).await.expect_err("500").to_string();
    assert!(error.contains(&host) && error.contains("500"), "{error}");
    let unreachable = RepoListingConfig::new("http://127.0.0.1:1");
    let error = ListReposClient::new(&unreachable)
        .fetch_page(None)
        .await
        .expect_err("nothing listens")
        .to_string();
    assert!(error.contains("127.0.0.1:1"), "{error}");
    // https:// to a plain-text server: the TLS handshake fails, named (rustls has its provider).
    let tls = RepoListingConfig::new(format!("https://{host}"));
    let error = ListReposClient::new(&tls)
        .fetch_page(None)
        .await
        .expect_err("no TLS there")
        .to_string();
    assert!(error.contains(&host) && error.contains("TLS"), "{error}");

    // Through the pipeline: the bad pages are retried, and every repo arrives once.
    let redis = RedisServer::start();
    let requests_so_far = server.stats.requests.load(Ordering::SeqCst);
    server.fault_at(requests_so_far + 1, Fault::Oversized(600_000));
    server.fault_at(requests_so_far + 2, Fault::Malformed);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        repo_listing_page_bytes_max: 500_000,
        ..listing_config(&server, &redis, dir.path())
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let stop = pipeline.stopper();
    let source = pipeline.lanes[0].source.clone();
    let running = tokio::spawn(pipeline.join());
    let mut c = redis.connection();
    let key = cursor_key(&server);
    wait_for(
        "the cursor key to say done",
        Duration::from_secs(60),
        || get_key(&mut c, &key).as_deref() == Some(DONE_CURSOR),
    )
    .await;
    let entries = all_entries(&mut c);
    let expected: Vec<String> = (0..REPOS)
        .map(|i| expected_entry(i, &server.url()))
        .collect();
    assert_eq!(entries, expected);
    assert_eq!(source.oversized_total.load(Ordering::Relaxed), 1);
    assert_eq!(source.decode_errors_total.load(Ordering::Relaxed), 1);
    stop.send(true).expect("stop");
    running.await.expect("join").expect("pipeline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_cursor_key_says_where_to_start_and_ingester_done_lists_nothing() {
    const REPOS: u64 = 3_500;
    let redis = RedisServer::start();
    let mut c = redis.connection();

    // rsky's ingester finished this host: nothing is listed.
    let done = ListReposServer::start(REPOS).await;
    let _: () = redis::cmd("SET")
        .arg(cursor_key(&done))
        .arg(DONE_CURSOR)
        .query(&mut c)
        .expect("SET");
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline =
        Pipeline::start(&listing_config(&done, &redis, dir.path()), 0).expect("pipeline");
    let (stop, source) = (pipeline.stopper(), pipeline.lanes[0].source.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for(
        "the source to read the key and idle",
        Duration::from_secs(30),
        || source.connected.load(Ordering::Relaxed) == 1,
    )
    .await;
    assert_eq!(
        done.stats.requests.load(Ordering::SeqCst),
        0,
        "nothing listed"
    );
    stop.send(true).expect("stop");
    running.await.expect("join").expect("pipeline");

    // rsky's ingester stopped after page 2 of this one: the listing goes on from there.
    let halfway = ListReposServer::start(REPOS).await;
    let _: () = redis::cmd("SET")
        .arg(cursor_key(&halfway))
        .arg("2000")
        .query(&mut c)
        .expect("SET");
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline =
        Pipeline::start(&listing_config(&halfway, &redis, dir.path()), 0).expect("pipeline");
    let stop = pipeline.stopper();
    let running = tokio::spawn(pipeline.join());
    let key = cursor_key(&halfway);
    wait_for(
        "the cursor key to say done",
        Duration::from_secs(60),
        || get_key(&mut c, &key).as_deref() == Some(DONE_CURSOR),
    )
    .await;
    let cursors = halfway.stats.cursors.lock().expect("cursors").clone();
    assert_eq!(cursors, vec![Some(2000), Some(3000)]);
    let expected: Vec<String> = (2000..REPOS)
        .map(|i| expected_entry(i, &halfway.url()))
        .collect();
    assert_eq!(all_entries(&mut c), expected);
    stop.send(true).expect("stop");
    running.await.expect("join").expect("pipeline");
}

// ---------------------------------------------------------------------------------------
// The large listing: the binary as a child, a SIGKILL, a restart.

/// The children's memory budget.
const MEMORY_BUDGET_BYTES: u64 = 32 << 20;
/// Beyond the budget: the binary itself, tokio, the Redis client, TLS roots, one page
/// parsed (about 150 KB of body and 1,000 repos) and a sink batch. Nothing here grows
/// with the backlog, which is on disk.
const RSS_SLACK_BYTES: u64 = 24 << 20;
const HIGH_WATER: u64 = 20_000;

fn start_binary(
    data: &std::path::Path,
    listing: &str,
    redis: &str,
    log: &std::path::Path,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--progress-secs", "0"])
        .env("SPILLWAY_DATA_DIR", data)
        .env("SPILLWAY_RELAYS", "[]")
        .env("SPILLWAY_REPO_LISTING_HOSTS", format!("[\"{listing}\"]"))
        .env("SPILLWAY_REDIS_URL", redis)
        .env(
            "SPILLWAY_MEMORY_BUDGET_BYTES",
            MEMORY_BUDGET_BYTES.to_string(),
        )
        .env("SPILLWAY_DURABILITY", "\"periodic:50\"")
        .env("SPILLWAY_REDIS_HIGH_WATER_EVENTS", HIGH_WATER.to_string())
        .env(
            "SPILLWAY_REDIS_LOW_WATER_EVENTS",
            (HIGH_WATER / 2).to_string(),
        )
        .env("SPILLWAY_METRICS_LISTEN", "\"\"")
        .env("RUST_LOG", "spillway=info")
        .stdout(Stdio::null())
        .stderr(common::append_log(log))
        .spawn()
        .expect("spawn the spillway binary")
}

/// Peak resident set of process `pid` (VmHWM), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// Lists `repos` repos, paced at `page_delay` a page so the kill comes mid-listing with
/// the sink paused at its high-water mark for a while.
async fn listing_survives_a_sigkill_with_the_reader_stalled(repos: u64, page_delay: Duration) {
    let redis = RedisServer::start();
    let server = ListReposServer::start_paced(repos, page_delay).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, log) = (dir.path().join("data"), dir.path().join("spillway.log"));
    let started = Instant::now();

    // Run 1: the reader reads nothing; the sink stops at the high-water mark and the
    // listing spills. Killed once about 40% is listed.
    let mut child = start_binary(&data, &server.url(), &redis.url(), &log);
    let kill_at = repos * 2 / 5;
    wait_for("40% listed", Duration::from_secs(120), || {
        server.stats.repos_served.load(Ordering::SeqCst) >= kill_at
    })
    .await;
    let peak_first = peak_rss_bytes(child.id());
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // A request the child sent just before its death may still be in the socket: let the
    // server take it before counting what the first run asked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checkpoint: u64 = PositionFile::for_source(&data, &RepoListingConfig::new(server.url()))
        .load()
        .expect("the position file")
        .expect("a checkpoint before the kill")
        .cursor
        .parse()
        .expect("the server's cursor");
    let requests_before = server.stats.requests.load(Ordering::SeqCst) as usize;
    let served_before = server.stats.repos_served.load(Ordering::SeqCst);
    println!(
        "killed after {served_before} repos listed ({:?})",
        started.elapsed()
    );

    // Run 2: the rest is listed with the reader still stalled, then the reader drains.
    let mut child = start_binary(&data, &server.url(), &redis.url(), &log);
    wait_for("the last page", Duration::from_secs(120), || {
        server.stats.last_page_served.load(Ordering::SeqCst)
    })
    .await;
    println!("listed to the end ({:?})", started.elapsed());
    let mut c = redis.connection();
    let key = cursor_key(&server);
    let mut seen: HashMap<String, u32> = HashMap::with_capacity(repos as usize);
    let mut entries_total = 0u64;
    let mut peak_second = 0;
    let drain_started = Instant::now();
    loop {
        assert!(
            drain_started.elapsed() < Duration::from_secs(180),
            "only {} of {repos} repos arrived",
            seen.len()
        );
        peak_second = peak_second.max(peak_rss_bytes(child.id()));
        // Read the key first: once it says done, everything before the marker is in the stream.
        let done = get_key(&mut c, &key).as_deref() == Some(DONE_CURSOR);
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(5_000)
            .query(&mut c)
            .expect("XRANGE");
        if reply.ids.is_empty() {
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut ids = Vec::with_capacity(reply.ids.len());
        for entry in &reply.ids {
            let json: String = entry.get("repo").expect("repo field");
            let did_start = json.find("did:plc:").expect("a did");
            let did = json[did_start..did_start + 32].to_string();
            let i = u64::from_str_radix(&did[8..], 16).expect("the generated did");
            assert_eq!(json, expected_entry(i, &server.url()), "repo {i}");
            *seen.entry(did).or_default() += 1;
            ids.push(entry.id.clone());
            entries_total += 1;
        }
        let _: u64 = redis::cmd("XDEL")
            .arg(STREAM)
            .arg(&ids)
            .query(&mut c)
            .expect("XDEL");
    }
    let _ = child.kill();
    let _ = child.wait();

    let missing = (0..repos)
        .filter(|i| !seen.contains_key(&common::list_repos_server::repo_did(*i)))
        .count();
    let duplicates = entries_total - seen.len() as u64;
    let mut twice: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(did, _)| u64::from_str_radix(&did[8..], 16).expect("did"))
        .collect();
    twice.sort_unstable();
    println!(
        "repeated: {:?} .. {:?} ({} repos)",
        twice.first(),
        twice.last(),
        twice.len()
    );
    let cursors = server.stats.cursors.lock().expect("cursors").clone();
    let resumed_from = cursors.get(requests_before).copied().flatten();
    let pages = repos.div_ceil(1000);
    let pages_asked = server.stats.pages_served.load(Ordering::SeqCst);
    println!(
        "{repos} repos: {missing} missing, {duplicates} duplicates; resumed at repo {resumed_from:?} after {served_before} were listed; {pages_asked} pages asked for {pages}; peak RSS {} / {} MiB (budget {} MiB); {:?} in all",
        peak_first >> 20,
        peak_second >> 20,
        MEMORY_BUDGET_BYTES >> 20,
        started.elapsed()
    );
    assert_eq!(missing, 0, "every repo arrives");
    // In flight at the kill: the sink's batch in hand (paused, not written) and the pages
    // listed after the last checkpoint (listed again; their stored copies are skipped).
    assert!(duplicates <= 1_000, "{duplicates} duplicates");
    // The restart lists from the checkpoint: not from the start, and nothing skipped.
    assert_eq!(resumed_from, Some(checkpoint), "the restart's first page");
    assert!(
        checkpoint > 0 && checkpoint <= served_before,
        "checkpoint {checkpoint}, {served_before} listed"
    );
    // Pages asked twice: only those listed after the checkpoint.
    let relisted_max = (served_before - checkpoint).div_ceil(1000);
    assert!(
        pages_asked <= pages + relisted_max,
        "{pages_asked} pages asked for {pages}, at most {relisted_max} again"
    );
    for peak in [peak_first, peak_second] {
        assert!(
            peak <= MEMORY_BUDGET_BYTES + RSS_SLACK_BYTES,
            "peak RSS {peak} over the budget {MEMORY_BUDGET_BYTES} + slack {RSS_SLACK_BYTES}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_repos_survive_a_sigkill_with_the_reader_stalled() {
    listing_survives_a_sigkill_with_the_reader_stalled(100_000, Duration::from_millis(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_repos_survive_a_sigkill_with_the_reader_stalled() {
    listing_survives_a_sigkill_with_the_reader_stalled(1_000_000, Duration::from_millis(5)).await;
}

#[test]
fn a_backfill_only_configuration_is_accepted_and_bad_hosts_are_refused_naming_the_key() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let config = Config::load(
        None,
        env(&[
            ("SPILLWAY_RELAYS", "[]"),
            (
                "SPILLWAY_REPO_LISTING_HOSTS",
                "[\"http://127.0.0.1:8080/\"]",
            ),
        ]),
    )
    .expect("backfill only, with no relay");
    assert!(config.relays.is_empty());
    assert_eq!(config.repo_listing_hosts, vec!["http://127.0.0.1:8080/"]);
    assert_eq!(config.redis_repo_stream, STREAM);
    let listing = config.repo_listing_config(0);
    assert_eq!(listing.base_url, "http://127.0.0.1:8080");
    assert_eq!(
        listing.redis_cursor.map(|k| k.key).as_deref(),
        Some("repo_backfill:cursor:127.0.0.1:8080")
    );
    // The rsky ingester's environment in backfill mode gives the same.
    let ingester = Config::load(
        None,
        env(&[
            ("INGESTER_MODE", "backfill"),
            ("INGESTER_RELAY_HOSTS", "http://127.0.0.1:8080"),
        ]),
    )
    .expect("INGESTER_MODE=backfill");
    assert!(ingester.relays.is_empty() && ingester.labelers.is_empty());
    assert_eq!(ingester.repo_listing_hosts, vec!["http://127.0.0.1:8080"]);
    for (key, value) in [
        ("SPILLWAY_REPO_LISTING_HOSTS", "[\"wss://relay.example\"]"),
        (
            "SPILLWAY_REPO_LISTING_HOSTS",
            "[\"https://relay.example/xrpc\"]",
        ),
        (
            "SPILLWAY_REPO_LISTING_HOSTS",
            "[\"a.example\", \"https://a.example\"]",
        ),
        ("SPILLWAY_REPO_LISTING_PAGE_BYTES_MAX", "0"),
        ("SPILLWAY_REDIS_REPO_STREAM", ""),
    ] {
        let error = Config::load(None, env(&[(key, value)]))
            .expect_err("refused")
            .to_string();
        let named = key.trim_start_matches("SPILLWAY_").to_ascii_lowercase();
        assert!(error.contains(&named), "{key}={value}: {error}");
    }
    let error = Config::load(
        None,
        env(&[
            ("SPILLWAY_REPO_LISTING_HOSTS", "[\"bsky.network\"]"),
            ("SPILLWAY_REDIS_REPO_STREAM", "firehose_live"),
        ]),
    )
    .expect_err("one stream for repos and firehose events")
    .to_string();
    assert!(error.contains("redis_repo_stream"), "{error}");
}
