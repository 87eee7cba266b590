//! The Redis sink's write connection (`src/sink/resp.rs`), which sends the transactions
//! in RESP it encodes itself, against a real redis-server: frames land byte for byte with
//! their fields; an ACL user and a database number in the URL reach it; a transaction
//! Redis refuses whole (out of memory) is retried and lands once, in order; a restarted
//! server is reconnected to. And against a loopback server that answers garbage: typed
//! errors, never a panic or an unbounded read.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::{xrange, RedisServer};
use spillway::queue::Delivery;
use spillway::sink::redis::{RedisSink, RedisSinkConfig};
use spillway::sink::resp::{Address, Arg, Encoded, RespConnection, RespError, TransactionReply};
use spillway::sink::{EventFields, SinkStats};

const STREAM: &str = "firehose_live";
const HOST: &str = "relay.test";

fn deliveries(count: usize) -> Vec<Delivery> {
    common::fixture::deliveries(count, 1_700_000_000_000_000)
}

fn sink_config(url: String) -> RedisSinkConfig {
    let mut config = RedisSinkConfig::new(url);
    config.high_water_events = 0;
    config.multi_events_max = 8;
    config.transactions_in_flight_max = 3;
    config.retry_delay_min_ms = 10;
    config.retry_delay_max_ms = 50;
    config.command_timeout_ms = 5_000;
    config
}

async fn write(sink: &mut RedisSink, batch: &[Delivery], stats: &SinkStats) {
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let written = sink
        .write(batch, stats, &stop)
        .await
        .expect("the write is not refused");
    assert!(written, "written before any stop");
}

/// Every entry of the stream: its `seq`, `type`, `did` and `frame` fields.
fn entries(c: &mut redis::Connection) -> Vec<(u64, String, String, Vec<u8>)> {
    xrange(c, STREAM)
        .ids
        .iter()
        .map(|entry| {
            (
                entry.get("seq").expect("seq"),
                entry.get("type").expect("type"),
                entry.get("did").expect("did"),
                entry.get("frame").expect("frame"),
            )
        })
        .collect()
}

fn expected(batch: &[Delivery]) -> Vec<(u64, String, String, Vec<u8>)> {
    batch
        .iter()
        .map(|d| {
            let fields = EventFields::of(d);
            (fields.seq, fields.kind, fields.did, d.payload.to_vec())
        })
        .collect()
}

#[tokio::test]
async fn frames_land_byte_for_byte_for_an_acl_user_in_database_3() {
    let redis = RedisServer::start();
    let mut admin = redis.connection();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("writer")
        .arg("on")
        .arg(">pw-ACL-TEST")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut admin)
        .expect("ACL SETUSER");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("off")
        .query(&mut admin)
        .expect("default user off");
    let url = format!("redis://writer:pw-ACL-TEST@127.0.0.1:{}/3", redis.port);
    let batch = deliveries(40);
    let mut sink = RedisSink::new(sink_config(url.clone()), HOST).expect("sink");
    let stats = SinkStats::default();
    write(&mut sink, &batch, &stats).await;

    let mut db3 = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("db 3");
    assert_eq!(entries(&mut db3), expected(&batch));
    let cursor: String = redis::cmd("GET")
        .arg(format!("firehose_live:cursor:{HOST}"))
        .query(&mut db3)
        .expect("cursor key");
    assert_eq!(cursor, batch.last().expect("last").position.to_string());
    let db0 = format!("redis://writer:pw-ACL-TEST@127.0.0.1:{}/0", redis.port);
    let mut db0 = redis::Client::open(db0.as_str())
        .and_then(|c| c.get_connection())
        .expect("db 0");
    let length: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query(&mut db0)
        .expect("XLEN");
    assert_eq!(length, 0, "nothing written to database 0");
    assert_eq!(stats.failures_total.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_refused_whole_for_memory_is_retried_and_lands_once_in_order() {
    let redis = RedisServer::start();
    let mut admin = redis.connection();
    let batch = deliveries(40);
    // Every write is refused (OOM) while maxmemory is 1 byte: queued XADDs fail, EXEC aborts.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut admin)
        .expect("CONFIG SET");
    let stats = Arc::new(SinkStats::default());
    let writer = {
        let (stats, batch, url) = (stats.clone(), batch.clone(), redis.url());
        tokio::spawn(async move {
            let mut sink = RedisSink::new(sink_config(url), HOST).expect("sink");
            write(&mut sink, &batch, &stats).await;
        })
    };
    let started = Instant::now();
    while stats.failures_total.load(Ordering::Relaxed) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the refused write is retried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!writer.is_finished(), "not written while refused");
    let length: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query(&mut admin)
        .expect("XLEN");
    assert_eq!(length, 0, "a refused transaction applied nothing");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut admin)
        .expect("CONFIG SET");
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("written once memory is back")
        .expect("writer task");
    assert_eq!(entries(&mut admin), expected(&batch), "once each, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_to() {
    let redis = RedisServer::start();
    let port = redis.port;
    let batch = deliveries(48);
    let mut sink = RedisSink::new(sink_config(redis.url()), HOST).expect("sink");
    let stats = SinkStats::default();
    write(&mut sink, &batch[..24], &stats).await;
    drop(redis);
    let redis = RedisServer::start_on(port);
    write(&mut sink, &batch[24..], &stats).await;
    assert!(
        stats.failures_total.load(Ordering::Relaxed) >= 1,
        "the first attempt met the closed connection"
    );
    assert_eq!(entries(&mut redis.connection()), expected(&batch[24..]));
}

/// A loopback server that reads what it is sent and answers `reply` once, then closes.
async fn answering(reply: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(reply).await;
            let _ = socket.shutdown().await;
        }
    });
    address
}

async fn transaction_reply(reply: &'static [u8]) -> Result<TransactionReply, RespError> {
    let address = answering(reply).await;
    let mut connection = RespConnection::connect(
        &Address::Tcp(address.ip().to_string(), address.port()),
        None,
        None,
        0,
        4096,
    )
    .await
    .expect("connect");
    let mut encoded = Encoded::new();
    encoded.command(&[Arg::Bytes(b"MULTI")]);
    encoded.command(&[Arg::Bytes(b"SET"), Arg::Bytes(b"k"), Arg::Number(1)]);
    encoded.command(&[Arg::Bytes(b"EXEC")]);
    connection.send(&encoded).await.expect("send");
    connection.transaction_reply(encoded.commands()).await
}

#[tokio::test]
async fn garbage_oversized_or_cut_replies_are_typed_errors() {
    let ok = transaction_reply(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
    assert_eq!(
        ok.expect("a good reply"),
        TransactionReply::Applied(vec![spillway::sink::resp::RespValue::Status("OK".into())])
    );
    let refused = transaction_reply(
        b"+OK\r\n-OOM command not allowed\r\n-EXECABORT Transaction discarded\r\n",
    )
    .await;
    assert_eq!(
        refused.expect("a refusal is a reply"),
        TransactionReply::Refused("OOM command not allowed".into())
    );
    for (reply, what) in [
        (
            &b"+OK\r\n+QUEUED\r\n?what\r\n"[..],
            "starting with byte 0x3f",
        ),
        (b"+OK\r\n+QUEUED\r\n$999999\r\n", "bytes, over 4096"),
        (b"+OK\r\n+QUEUED\r\n:12\r\n", "expected EXEC's array"),
    ] {
        match transaction_reply(reply).await {
            Err(RespError::Protocol(text)) => assert!(text.contains(what), "{text}"),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(reply)),
        }
    }
    match transaction_reply(b"+OK\r\n+QUEU").await {
        Err(RespError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("a cut reply: {other:?}"),
    }
}
