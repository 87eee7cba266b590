//! The Redis sink on a Redis Cluster of three masters (`redis_url` of comma-separated
//! seeds): batches land in order in the hash-tagged stream, with their cursor key in the
//! same slot; a stream name without a hash tag is refused naming `redis_stream`.

mod common;

use bytes::Bytes;
use common::redis_server::RedisCluster;
use spillway::queue::Delivery;
use spillway::sink::redis::{RedisSink, RedisSinkConfig, RedisSinkError};
use spillway::sink::SinkStats;

const HOST: &str = "relay.test";

fn deliveries(count: usize) -> Vec<Delivery> {
    let capture = common::fixture::frames_bin();
    let frames = spillway::source::frame::split_capture(&capture, usize::MAX).expect("frames");
    frames
        .iter()
        .take(count)
        .enumerate()
        .map(|(index, frame)| Delivery {
            seq: index as u64 + 1,
            position: spillway::source::frame::decode(frame, usize::MAX)
                .expect("decodes")
                .seq()
                .expect("seq"),
            pushed_at_us: 0,
            payload: Bytes::copy_from_slice(frame),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_land_in_order_on_a_three_node_cluster_with_idempotent_ids() {
    let cluster = RedisCluster::start(3);
    let stream = "{firehose_live}";
    let mut config = RedisSinkConfig::new(cluster.url());
    config.stream = stream.into();
    config.cursor_key_prefix = format!("{stream}:cursor:");
    config.high_water_events = 1_000_000;
    config.low_water_events = 10;
    config.multi_events_max = 25;
    config.idempotent_ids = true;
    let mut sink = RedisSink::new(config.clone(), HOST).expect("sink");
    let batch = deliveries(120);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    for part in [&batch[..], &batch[..60], &batch[..]] {
        assert!(sink
            .write(part, &SinkStats::default(), &stop)
            .await
            .expect("not refused"));
    }
    let client =
        redis::cluster::ClusterClient::new(vec![cluster.url().split(',').next().expect("a seed")])
            .expect("cluster client");
    let mut c = client.get_connection().expect("cluster connection");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("XRANGE");
    let seqs: Vec<u64> = reply
        .ids
        .iter()
        .map(|entry| entry.get("seq").expect("seq"))
        .collect();
    let expected: Vec<u64> = batch.iter().map(|d| d.position).collect();
    assert_eq!(seqs, expected, "every event once, in order, across replays");
    let cursor: u64 = redis::cmd("GET")
        .arg(format!("{stream}:cursor:{HOST}"))
        .query(&mut c)
        .expect("cursor key");
    assert_eq!(cursor, expected[expected.len() - 1]);

    config.stream = "firehose_live".into();
    let error = RedisSink::new(config, HOST).err().expect("no hash tag");
    assert!(
        matches!(
            error,
            RedisSinkError::Refused {
                key: "redis_stream",
                ..
            }
        ),
        "{error}"
    );
}
