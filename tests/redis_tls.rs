//! The Redis sink over TLS (`rediss://`) and as an ACL user, against a real
//! `redis-server` on TLS only with certificates the test makes: the right CA writes, a
//! wrong CA is refused naming the server, a client certificate is sent when the server
//! asks, and a wrong ACL password is refused without the password anywhere in the error.

mod common;

use bytes::Bytes;
use common::redis_server::{RedisServer, TlsFiles};
use spillway::config::Config;
use spillway::queue::Delivery;
use spillway::sink::redis::RedisSink;
use spillway::sink::SinkStats;
use spillway::source::EventFamily;

const PASSWORD: &str = "pw-Zq81xT";

/// The configuration a user writes: the URL and the TLS keys, through `Config::load`.
fn config(url: &str, ca: &std::path::Path, client_cert: Option<&TlsFiles>) -> Config {
    let mut env = vec![
        ("SPILLWAY_REDIS_URL".to_string(), url.to_string()),
        (
            "SPILLWAY_REDIS_TLS_CA_FILE".to_string(),
            ca.display().to_string(),
        ),
    ];
    if let Some(files) = client_cert {
        env.push((
            "SPILLWAY_REDIS_TLS_CERT_FILE".into(),
            files.cert.display().to_string(),
        ));
        env.push((
            "SPILLWAY_REDIS_TLS_KEY_FILE".into(),
            files.key.display().to_string(),
        ));
    }
    Config::load(None, env).expect("a valid configuration")
}

fn sink(config: &Config) -> RedisSink {
    RedisSink::new(config.redis_config(EventFamily::Firehose), "relay.test").expect("sink")
}

fn one_event() -> Vec<Delivery> {
    let capture = common::fixture::frames_bin();
    let frames = spillway::source::frame::split_capture(&capture, usize::MAX).expect("frames");
    let frame = frames[0];
    let seq = spillway::source::frame::decode(frame, usize::MAX)
        .expect("decodes")
        .seq()
        .expect("seq");
    vec![Delivery {
        seq: 1,
        position: seq,
        pushed_at_us: 0,
        payload: Bytes::copy_from_slice(frame),
    }]
}

#[tokio::test]
async fn tls_with_the_right_ca_writes_and_a_wrong_ca_is_refused_naming_the_server() {
    let redis = RedisServer::start_tls(TlsFiles::make(), false);
    let tls = redis.tls().expect("tls");
    let url = redis.url();
    assert!(url.starts_with("rediss://"));

    let mut good = sink(&config(&url, &tls.ca, None));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let written = good
        .write(&one_event(), &SinkStats::default(), &stop)
        .await
        .expect("not refused");
    assert!(written);
    let length: u64 = redis::cmd("XLEN")
        .arg("firehose_live")
        .query(&mut redis.connection())
        .expect("XLEN");
    assert_eq!(length, 1, "the event went over TLS");

    let mut wrong = sink(&config(&url, &tls.other_ca, None));
    let error = wrong
        .check()
        .await
        .expect_err("a certificate of another CA");
    let text = error.to_string();
    println!("wrong CA: {text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", redis.port)),
        "names the server: {text}"
    );
    assert!(text.contains("TLS with"), "says it is TLS: {text}");
    assert!(
        text.to_ascii_lowercase().contains("certificate"),
        "says it is the certificate: {text}"
    );

    // Plain TCP to a TLS port is no answer at all, not a hang.
    let plain = Config {
        redis_url: url.replace("rediss://", "redis://"),
        ..Config::default()
    };
    let mut plain =
        RedisSink::new(plain.redis_config(EventFamily::Firehose), "relay.test").expect("sink");
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(30), plain.check())
            .await
            .expect("the check ends within its own timeout")
            .is_err(),
        "plain text to a TLS port fails"
    );
}

#[tokio::test]
async fn a_client_certificate_is_sent_when_the_server_asks_for_one() {
    let redis = RedisServer::start_tls(TlsFiles::make(), true);
    let tls = redis.tls().expect("tls");
    let url = redis.url();
    let mut without = sink(&config(&url, &tls.ca, None));
    let error = without
        .check()
        .await
        .expect_err("the server wants a certificate");
    println!("no client certificate: {error}");
    assert!(
        error
            .to_string()
            .contains(&format!("rediss://127.0.0.1:{}", redis.port)),
        "names the server: {error}"
    );
    assert!(
        error.to_string().contains("redis_tls_cert_file"),
        "says which keys to set: {error}"
    );
    let mut with = sink(&config(&url, &tls.ca, Some(tls)));
    with.check()
        .await
        .expect("a certificate of the server's CA is accepted");
    // The sink's write connection (its own TLS, the same CA and certificate) carries the frames.
    let batch = common::fixture::deliveries(40, 1_700_000_000_000_000);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let written = with
        .write(&batch, &SinkStats::default(), &stop)
        .await
        .expect("not refused");
    assert!(written);
    let reply = common::redis_server::xrange(&mut redis.connection(), "firehose_live");
    let frames: Vec<Vec<u8>> = reply
        .ids
        .iter()
        .map(|entry| entry.get("frame").expect("frame"))
        .collect();
    let sent: Vec<Vec<u8>> = batch.iter().map(|d| d.payload.to_vec()).collect();
    assert_eq!(frames, sent, "byte for byte, in order, over TLS");
}

#[tokio::test]
async fn an_acl_user_writes_and_a_wrong_password_is_refused_without_printing_it() {
    let redis = RedisServer::start_tls(TlsFiles::make(), false);
    let tls = redis.tls().expect("tls");
    let _: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("spill")
        .arg("on")
        .arg(format!(">{PASSWORD}"))
        .arg("~firehose_live*")
        .arg("+@all")
        .query(&mut redis.connection())
        .expect("ACL SETUSER");
    let base = format!("127.0.0.1:{}", redis.port);

    let mut user = sink(&config(
        &format!("rediss://spill:{PASSWORD}@{base}"),
        &tls.ca,
        None,
    ));
    user.check().await.expect("the ACL user and its password");
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    assert!(user
        .write(&one_event(), &SinkStats::default(), &stop)
        .await
        .expect("not refused"));

    let wrong_password = "wrong-Qp4s";
    let mut wrong = sink(&config(
        &format!("rediss://spill:{wrong_password}@{base}"),
        &tls.ca,
        None,
    ));
    let error = wrong.check().await.expect_err("a wrong password");
    let text = format!("{error} / {error:?}");
    println!("wrong password: {error}");
    assert!(
        text.contains(&format!("authentication failed for {base}")),
        "{text}"
    );
    assert!(text.contains("rediss://spill:***@"), "{text}");
    assert!(
        !text.contains(wrong_password),
        "the password leaked: {text}"
    );
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
}
