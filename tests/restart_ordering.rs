//! A restart with a stored backlog above the saved relay cursor: the sink never reads a
//! stored event ahead of the replayed ones, however late the source's task runs or its
//! relay answers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use spillway::config::Config;
use spillway::pipeline::{Pipeline, SINK_CONSUMER};
use spillway::queue::{Event, SpillMode, SpillQueue};
use spillway::source::cursor::{CursorFile, RelayId};
use spillway::source::frame;
use spillway::source::relay::LoopbackRelay;

const BASE_SEQ: u64 = 70_000_000_000;
/// Stored in the log before the restart: positions STORED_FIRST..STORED_END.
const STORED_FIRST: u64 = BASE_SEQ + 500;
const STORED_END: u64 = BASE_SEQ + 3_000;
/// The saved relay cursor: stored events above it must wait for the replay.
const CURSOR: u64 = BASE_SEQ + 999;
/// The relay holds BASE_SEQ..RELAY_END.
const RELAY_END: u64 = BASE_SEQ + 4_000;

async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(60), done).await
}

/// The backlog a crash leaves: real frames (seq rewritten) stored in the lane's queue
/// directory, unacked by the sink, and a cursor file saved before they were stored.
async fn store_backlog(config: &Config) {
    let mut queue_config = config.queue_config(spillway::source::EventFamily::Firehose);
    queue_config.spill_mode = SpillMode::WriteThrough;
    let relay = RelayId::of_url(&config.relays[0]);
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let dir = config.data_dir.join(format!("queue-{}", relay.file_name()));
    let queue = SpillQueue::open(&dir, queue_config).expect("open the queue");
    drop(queue.consumer(SINK_CONSUMER).expect("the sink's consumer"));
    let templates = common::fixture::relay_config(BASE_SEQ, 1).frames;
    let events: Vec<Event> = (STORED_FIRST..STORED_END)
        .map(|seq| {
            let mut bytes = templates[(seq - BASE_SEQ) as usize % templates.len()].to_vec();
            frame::rewrite_seq(&mut bytes, seq).expect("rewrite seq");
            Event::new(seq, bytes)
        })
        .collect();
    queue.push_batch(events).await.expect("store the backlog");
    queue.flush().expect("flush");
    CursorFile::for_relay(&config.data_dir, &relay)
        .save(CURSOR)
        .expect("save the cursor");
}

// One thread: a task spawned by `Pipeline::start` runs only when this test awaits, so the
// probe below reads the queue before any source task has run at all.
#[tokio::test(flavor = "current_thread")]
async fn stored_events_above_the_cursor_wait_for_a_relay_that_answers_late() {
    let relay_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let config = Config {
        data_dir: dir.path().join("data"),
        relays: vec![format!(
            "ws://{relay_addr}/xrpc/com.atproto.sync.subscribeRepos"
        )],
        memory_budget_bytes: 32 * 1024 * 1024,
        sink: "jsonl".into(),
        jsonl_path: out.display().to_string(),
        metrics_listen: String::new(),
        ..Config::default()
    };
    store_backlog(&config).await;

    let pipeline = Pipeline::start(&config, 0).expect("pipeline");
    let queue = pipeline.lanes[0].queue.clone();
    {
        let mut probe = queue.consumer("probe").expect("probe");
        let mut seen = Vec::new();
        loop {
            let batch = probe.try_next_batch(10_000, u64::MAX).expect("read");
            if batch.is_empty() {
                break;
            }
            seen.extend(batch.iter().map(|d| d.position));
        }
        assert_eq!(
            seen.iter().find(|&&seq| seq > CURSOR),
            None,
            "before any task ran, a reader gets no stored event above the cursor"
        );
        assert!(
            seen == (STORED_FIRST..=CURSOR).collect::<Vec<_>>(),
            "the stored events up to the cursor, in order: {} of them, {:?}..{:?}",
            seen.len(),
            seen.first(),
            seen.last()
        );
    }
    queue.remove_consumer("probe").expect("remove the probe");

    let (stop, source) = (pipeline.stopper(), pipeline.lanes[0].source.clone());
    let running = tokio::spawn(pipeline.join());
    wait_for("the stored events up to the cursor", || {
        common::jsonl_seqs(&out).len() as u64 == CURSOR + 1 - STORED_FIRST
    })
    .await;
    // The relay is still down: the source keeps failing to connect, and the sink, having
    // nothing it may write, writes nothing more.
    wait_for("a refused connection or two", || {
        source
            .reconnects_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    })
    .await;
    let before = common::jsonl_seqs(&out);
    assert!(
        before.iter().all(|&seq| seq <= CURSOR),
        "no stored event above the cursor before the replay: {:?}",
        before.iter().find(|&&seq| seq > CURSOR)
    );

    let relay = start_relay_on(relay_addr).await;
    wait_for("every seq up to the relay's end", || {
        common::jsonl_seqs(&out).last() == Some(&(RELAY_END - 1))
    })
    .await;
    let _ = stop.send(true);
    running.await.expect("join").expect("clean stop");
    let seqs = common::jsonl_seqs(&out);
    assert!(
        seqs == (STORED_FIRST..RELAY_END).collect::<Vec<_>>(),
        "every seq once, in order (the stored ones up to the cursor, then the replay); got {} from {:?}, first out of order after {:?}",
        seqs.len(),
        seqs.first(),
        seqs.windows(2).find(|w| w[1] != w[0] + 1).map(|w| w[0])
    );
    assert!(
        relay
            .stats()
            .last_cursor
            .load(std::sync::atomic::Ordering::Relaxed)
            == CURSOR,
        "the relay was asked to replay from the saved cursor"
    );
}

async fn start_relay_on(addr: SocketAddr) -> LoopbackRelay {
    let config = common::fixture::relay_config(BASE_SEQ, RELAY_END - BASE_SEQ);
    LoopbackRelay::start_on(config, addr)
        .await
        .expect("the relay on its port")
}

#[test]
fn the_resume_point_is_start_cursor_then_the_file_then_the_queues_record() {
    use spillway::source::firehose::{resume_point, FirehoseConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let queue = SpillQueue::open(
        &dir.path().join("queue"),
        config.queue_config(spillway::source::EventFamily::Firehose),
    )
    .expect("open");
    let file = CursorFile::at(dir.path().join("cursor-x"));
    let mut firehose = FirehoseConfig::new(config.relays[0].clone());
    assert_eq!(
        resume_point(&firehose, &queue, &file).expect("fresh"),
        None,
        "live"
    );

    queue.save_source_position(700).expect("record");
    assert_eq!(
        resume_point(&firehose, &queue, &file).expect("record"),
        Some(700)
    );
    assert_eq!(
        file.load().expect("load"),
        Some(700),
        "the file is written again"
    );

    file.save(800).expect("save");
    assert_eq!(
        resume_point(&firehose, &queue, &file).expect("file"),
        Some(800),
        "the file wins over the record"
    );

    firehose.start_cursor = Some(900);
    assert_eq!(
        resume_point(&firehose, &queue, &file).expect("start"),
        Some(900)
    );
    assert_eq!(file.load().expect("load"), Some(900));
    drop(queue);
    let reopened = SpillQueue::open(
        &dir.path().join("queue"),
        config.queue_config(spillway::source::EventFamily::Firehose),
    )
    .expect("reopen");
    assert_eq!(
        reopened.source_position().expect("read"),
        Some(700),
        "the record is durable in the log"
    );
}
