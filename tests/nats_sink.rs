//! The NATS JetStream sink against real `nats-server`s on loopback: a 3-replica stream
//! whose leader and then a follower are killed mid-run, the binary killed with -9 and
//! restarted, an active-active pair with one process killed, and TLS with credentials.
//! Each run reads the whole stream back: every seq present, none twice.

mod common;

use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::nats_server::{missing_and_duplicates, stream_seqs, NatsCluster, NatsServer};
use spillway::config::Config;
use spillway::pipeline::Pipeline;
use spillway::queue::Delivery;
use spillway::sink::nats::{NatsAuth, NatsSink, NatsSinkConfig, Secret};
use spillway::sink::SinkStats;
use spillway::source::relay::LoopbackRelay;

use common::wait_until as wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_replica_stream_keeps_every_seq_once_through_a_leader_and_a_follower_kill() {
    const EVENTS: u64 = 30_000;
    const BASE_SEQ: u64 = 70_000_000_000;
    let mut cluster = NatsCluster::start().await;
    let mut relay_config = common::fixture::relay_config(BASE_SEQ, EVENTS);
    relay_config.events_per_sec = Some(2_000);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        relays: vec![relay.url()],
        start_cursor: Some(BASE_SEQ - 1),
        memory_budget_bytes: 48 << 20,
        sink: "nats".into(),
        nats_urls: cluster.urls(),
        nats_replicas: 3,
        // Short, so the leader's death shows as failed attempts, not one long wait.
        nats_ack_timeout_ms: 2_000,
        metrics_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let stop = pipeline.stopper();
    let sink = pipeline.lanes[0].sinks[0].stats.clone();
    let running = tokio::spawn(pipeline.join());

    wait_for("the first 3,000 events", Duration::from_secs(60), || {
        sink.events_total.load(Ordering::Relaxed) >= 3_000
    })
    .await;
    let leader = cluster.stream_leader("firehose").await;
    let written_at_kill = sink.events_total.load(Ordering::Relaxed);
    cluster.node(&leader).kill();
    println!("killed the stream leader {leader} at {written_at_kill} events written");
    wait_for(
        "writes going on after the leader's death",
        Duration::from_secs(60),
        || sink.events_total.load(Ordering::Relaxed) >= written_at_kill + 4_000,
    )
    .await;
    let failures_after_leader = sink.failures_total.load(Ordering::Relaxed);
    cluster.node(&leader).start();
    // The restarted node must catch up before another dies, or two of three are gone.
    cluster.wait_replicas_current("firehose").await;
    let new_leader = cluster.stream_leader("firehose").await;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != new_leader)
        .expect("a follower");
    let written_at_follower = sink.events_total.load(Ordering::Relaxed);
    cluster.node(&follower).kill();
    println!(
        "killed the follower {follower} (leader {new_leader}) at {written_at_follower} events written; {failures_after_leader} failed attempts during the leader's failover"
    );
    wait_for("every event written", Duration::from_secs(120), || {
        sink.events_total.load(Ordering::Relaxed) >= EVENTS
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("pipeline ends cleanly");
    // Read with the whole cluster back, as a consumer would after the repair.
    cluster.node(&follower).start();
    cluster.wait_replicas_current("firehose").await;

    let seen = stream_seqs(
        &cluster.urls(),
        async_nats::ConnectOptions::new(),
        "firehose",
    )
    .await;
    let (missing, duplicates) = missing_and_duplicates(&seen, BASE_SEQ, EVENTS);
    println!(
        "{} distinct seqs of {EVENTS}, {duplicates} duplicates in the stream",
        seen.len()
    );
    assert!(
        missing.is_empty(),
        "missing seqs (first 10): {missing:?}\n{}",
        cluster.log_tails()
    );
    assert_eq!(duplicates, 0, "the stream holds duplicates");
    assert_eq!(seen.len() as u64, EVENTS, "seqs outside the relay's range");
    assert!(
        failures_after_leader > 0,
        "the leader's failover was invisible to the sink's failure count"
    );
}

const BIN_BASE_SEQ: u64 = 80_000_000_000;
const BIN_MEMORY_BUDGET_BYTES: u64 = 64 << 20;
/// Beyond the queue's budget, in the child: its code and the allocator's arenas, the
/// tokio runtime, the relay's socket buffers, a sink batch (500 frames, ~3 MiB) and its
/// messages in the NATS client's write buffer. Fixed: nothing here grows with the backlog.
const BIN_SLACK_BYTES: u64 = 32 << 20;

fn start_binary(
    data: &std::path::Path,
    relay: &str,
    nats: &str,
    first: bool,
    log: &std::path::Path,
) -> Child {
    let mut env = vec![
        ("SPILLWAY_DATA_DIR", data.display().to_string()),
        ("SPILLWAY_RELAYS", format!("[\"{relay}\"]")),
        ("SPILLWAY_SINK", "nats".to_string()),
        ("SPILLWAY_NATS_URLS", format!("[\"{nats}\"]")),
        (
            "SPILLWAY_MEMORY_BUDGET_BYTES",
            BIN_MEMORY_BUDGET_BYTES.to_string(),
        ),
        ("SPILLWAY_DURABILITY", "\"periodic:50\"".to_string()),
        ("SPILLWAY_METRICS_LISTEN", "\"127.0.0.1:0\"".to_string()),
        ("RUST_LOG", "spillway=info".to_string()),
    ];
    if first {
        env.push(("SPILLWAY_START_CURSOR", (BIN_BASE_SEQ - 1).to_string()));
    }
    common::binary::spawn(common::binary::spillway_run(&env, log))
}

/// The kernel's peak RSS of a live child, in bytes.
fn peak_rss_bytes(child: &Child) -> u64 {
    spillway::bench::rss::proc_kib_field(&format!("/proc/{}/status", child.id()), "VmHWM:")
        .unwrap_or(0)
        * 1024
}

fn kill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

/// Waits until `stream` holds `count` messages; panics with the log tail after `timeout`.
async fn wait_stream_messages(
    url: &str,
    stream: &str,
    count: u64,
    timeout: Duration,
    log: &std::path::Path,
) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    loop {
        let held = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if held >= count {
            return;
        }
        if started.elapsed() > timeout {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!(
                "the stream holds {held} of {count} messages after {timeout:?}; binary log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_killed_and_restarted_stores_every_seq_once_within_its_memory_budget() {
    const EVENTS: u64 = 40_000;
    let server = NatsServer::start().await;
    let mut relay_config = common::fixture::relay_config(BIN_BASE_SEQ, EVENTS);
    relay_config.events_per_sec = Some(8_000);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("spillway.log");
    let data = dir.path().join("data");
    let mut peak = 0u64;
    for (kill_index, alive_ms) in [700u64, 1_100, 500].into_iter().enumerate() {
        let mut child = start_binary(&data, &relay.url(), &server.url(), kill_index == 0, &log);
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        peak = peak.max(peak_rss_bytes(&child));
        kill(&mut child);
        println!(
            "kill {kill_index} after {alive_ms} ms; relay sent {} frames so far",
            relay.stats().frames_sent.load(Ordering::Relaxed)
        );
    }
    let mut last = start_binary(&data, &relay.url(), &server.url(), false, &log);
    wait_stream_messages(
        &server.url(),
        "firehose",
        EVENTS,
        Duration::from_secs(90),
        &log,
    )
    .await;
    peak = peak.max(peak_rss_bytes(&last));
    kill(&mut last);
    let seen = stream_seqs(
        &[server.url()],
        async_nats::ConnectOptions::new(),
        "firehose",
    )
    .await;
    let (missing, duplicates) = missing_and_duplicates(&seen, BIN_BASE_SEQ, EVENTS);
    println!(
        "{} distinct seqs of {EVENTS}, {duplicates} duplicates after 3 kills; peak RSS {:.1} MiB (budget {} + slack {} MiB)",
        seen.len(),
        peak as f64 / 1048576.0,
        BIN_MEMORY_BUDGET_BYTES >> 20,
        BIN_SLACK_BYTES >> 20
    );
    assert!(missing.is_empty(), "missing seqs (first 10): {missing:?}");
    assert_eq!(duplicates, 0, "a replay after kill -9 stored duplicates");
    assert!(peak > 0, "the child's VmHWM was read");
    assert!(
        peak <= BIN_MEMORY_BUDGET_BYTES + BIN_SLACK_BYTES,
        "peak RSS {peak} B over budget + slack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_active_pair_stores_every_seq_once_when_one_process_dies() {
    const EVENTS: u64 = 30_000;
    let server = NatsServer::start().await;
    let mut relay_config = common::fixture::relay_config(BIN_BASE_SEQ, EVENTS);
    relay_config.events_per_sec = Some(6_000);
    let relay = LoopbackRelay::start(relay_config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let log_a = dir.path().join("a.log");
    let log_b = dir.path().join("b.log");
    let mut a = start_binary(
        &dir.path().join("a"),
        &relay.url(),
        &server.url(),
        true,
        &log_a,
    );
    let mut b = start_binary(
        &dir.path().join("b"),
        &relay.url(),
        &server.url(),
        true,
        &log_b,
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    kill(&mut a);
    println!(
        "killed one of the pair; relay sent {} frames so far",
        relay.stats().frames_sent.load(Ordering::Relaxed)
    );
    wait_stream_messages(
        &server.url(),
        "firehose",
        EVENTS,
        Duration::from_secs(90),
        &log_b,
    )
    .await;
    // Anything the survivor still had to publish would land as a duplicate now: give it time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&mut b);
    let seen = stream_seqs(
        &[server.url()],
        async_nats::ConnectOptions::new(),
        "firehose",
    )
    .await;
    let (missing, duplicates) = missing_and_duplicates(&seen, BIN_BASE_SEQ, EVENTS);
    println!(
        "{} distinct seqs of {EVENTS}, {duplicates} duplicates",
        seen.len()
    );
    assert!(missing.is_empty(), "missing seqs (first 10): {missing:?}");
    assert_eq!(duplicates, 0, "both processes' publishes were stored");
}

/// A CA, and a server certificate for `localhost` and 127.0.0.1 signed by it, as PEM files.
fn make_certificates(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("spillway test CA {name}"),
    );
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let ca_file = dir.join(format!("{name}-ca.pem"));
    let cert_file = dir.join(format!("{name}-server.pem"));
    let key_file = dir.join(format!("{name}-server-key.pem"));
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    std::fs::write(&cert_file, server_cert.pem()).expect("write cert");
    std::fs::write(&key_file, server_key.serialize_pem()).expect("write key");
    (ca_file, cert_file, key_file)
}

fn deliveries(count: u64) -> Vec<Delivery> {
    (0..count)
        .map(|i| Delivery {
            seq: i + 1,
            position: 1_000 + i,
            pushed_at_us: 0,
            payload: bytes::Bytes::from(format!("event {i}")),
        })
        .collect()
}

fn sink_config(url: &str, auth: NatsAuth) -> NatsSinkConfig {
    let mut config = NatsSinkConfig::new(vec![url.to_string()]);
    config.auth = auth;
    config.connect_timeout_ms = 3_000;
    config
}

/// Connects with `auth`, which the server must refuse: the error, checked to name `server`.
async fn refusal(url: &str, auth: NatsAuth, server: &str, what: &str) -> String {
    let mut sink = NatsSink::new(sink_config(url, auth), "relay.example");
    let error = sink
        .connect()
        .await
        .expect_err(&format!("{what} is refused"))
        .to_string();
    println!("{what}: {error}");
    assert!(error.contains(server), "names the server: {error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_credentials_connect_and_wrong_ones_are_refused_clearly() {
    const PASSWORD: &str = "pa55-Word-of-the-test";
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_certificates(certs.path(), "good");
    let (other_ca, _, _) = make_certificates(certs.path(), "other");
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?} }}\nauthorization {{ user: spillway, password: {PASSWORD:?} }}"
    ));
    let url = format!("tls://localhost:{}", server.node.port);
    let good = NatsAuth {
        user: "spillway".into(),
        password: Secret::from(PASSWORD),
        tls_ca_file: Some(ca.clone()),
        ..NatsAuth::default()
    };
    common::nats_server::wait_ready(
        &url,
        async_nats::ConnectOptions::with_user_and_password("spillway".into(), PASSWORD.into())
            .add_root_certificates(ca.clone())
            .require_tls(true),
    )
    .await;

    // The right CA and password: a batch is published and acked.
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let stats = SinkStats::default();
    let mut sink = NatsSink::new(sink_config(&url, good.clone()), "relay.example");
    let batch = deliveries(50);
    assert!(
        sink.write(&batch, &stats, &stop).await,
        "published over TLS"
    );
    assert_eq!(stats.failures_total.load(Ordering::Relaxed), 0);

    // A CA that did not sign the server's certificate.
    let wrong_ca = NatsAuth {
        tls_ca_file: Some(other_ca),
        ..good.clone()
    };
    let server_name = format!("localhost:{}", server.node.port);
    let error = refusal(&url, wrong_ca, &server_name, "an unknown CA").await;
    assert!(
        error.to_lowercase().contains("certificate")
            || error.contains("UnknownIssuer")
            || error.to_lowercase().contains("tls"),
        "says it is the certificate: {error}"
    );

    // A wrong password: refused, and the error shows neither password.
    let wrong_password = NatsAuth {
        password: Secret::from("not-the-pa55word"),
        ..good.clone()
    };
    let error = refusal(&url, wrong_password, &server_name, "a wrong password").await;
    assert!(
        error.to_lowercase().contains("authorization"),
        "says it is the credentials: {error}"
    );
    assert!(
        !error.contains("not-the-pa55word") && !error.contains(PASSWORD),
        "{error}"
    );

    // A token server: the right token publishes, a wrong one is refused without showing it.
    let token_server = NatsServer::start_with("authorization { token: \"t0ken-of-the-test\" }");
    let token_url = token_server.url();
    common::nats_server::wait_ready(
        &token_url,
        async_nats::ConnectOptions::with_token("t0ken-of-the-test".into()),
    )
    .await;
    let token = |t: &str| NatsAuth {
        token: Secret::from(t),
        ..NatsAuth::default()
    };
    let mut sink = NatsSink::new(
        sink_config(&token_url, token("t0ken-of-the-test")),
        "relay.example",
    );
    assert!(
        sink.write(&batch, &stats, &stop).await,
        "published with a token"
    );
    let token_server_name = format!("127.0.0.1:{}", token_server.node.port);
    let error = refusal(
        &token_url,
        token("wr0ng-t0ken"),
        &token_server_name,
        "a wrong token",
    )
    .await;
    assert!(!error.contains("wr0ng-t0ken"), "{error}");

    // The stream on the TLS server holds the batch once, with its headers.
    let seen = stream_seqs(
        std::slice::from_ref(&url),
        async_nats::ConnectOptions::with_user_and_password("spillway".into(), PASSWORD.into())
            .add_root_certificates(ca)
            .require_tls(true),
        "firehose",
    )
    .await;
    let (missing, duplicates) = missing_and_duplicates(&seen, 1_000, 50);
    assert!(
        missing.is_empty() && duplicates == 0,
        "missing {missing:?}, {duplicates} duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_lines_get_one_message_each_and_a_retried_batch_adds_none() {
    const BASE_SEQ: u64 = 90_000_000_000;
    let server = NatsServer::start().await;
    let capture = common::fixture::frames_bin();
    let frames = spillway::source::frame::split_capture(&capture, usize::MAX).expect("capture");
    let batch: Vec<Delivery> = frames
        .iter()
        .take(300)
        .enumerate()
        .map(|(i, frame)| {
            let mut bytes = frame.to_vec();
            spillway::source::frame::rewrite_seq(&mut bytes, BASE_SEQ + i as u64).expect("seq");
            Delivery {
                seq: i as u64 + 1,
                position: BASE_SEQ + i as u64,
                pushed_at_us: 1_700_000_000_000_000,
                payload: bytes.into(),
            }
        })
        .collect();
    let mut config = sink_config(&server.url(), NatsAuth::default());
    config.output.format = spillway::decode::OutputFormat::Jetstream;
    // A window smaller than the batch, so acks are awaited while publishing goes on.
    config.ack_window_events = 16;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let stats = SinkStats::default();
    let mut sink = NatsSink::new(config.clone(), "relay.example");
    assert!(sink.write(&batch, &stats, &stop).await);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stored = js
        .get_stream("firehose")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    // The same batch again, from a new sink (a restart replaying it): all duplicates.
    let mut again = NatsSink::new(config, "relay.example");
    assert!(again.write(&batch, &stats, &stop).await);
    let after = js
        .get_stream("firehose")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    println!("{} frames became {stored} JSON lines", batch.len());
    assert!(
        stored > batch.len() as u64 / 2,
        "the frames rendered into lines ({stored})"
    );
    assert_eq!(after, stored, "a replayed batch added messages");
    let seen = stream_seqs(
        &[server.url()],
        async_nats::ConnectOptions::new(),
        "firehose",
    )
    .await;
    assert_eq!(seen.values().map(|n| u64::from(*n)).sum::<u64>(), stored);
    assert!(
        seen.values().any(|n| *n > 1),
        "some frame renders several lines, each its own message"
    );
}
