//! `spillway inspect --verify` on a queue directory: a sound one passes, a damaged one names the damage.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spillway::queue::{Event, SpillMode, SpillQueue};
use spillway_storage::record::{ChunkHeader, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// A data directory holding one queue with `events` spilled events, 100 of them acked by "sink".
fn data_dir_with_queue(events: u64) -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().expect("tempdir");
    let queue_dir = data.path().join("queue-relay.example");
    let mut config = common::small_queue_config(4096);
    config.spill_mode = SpillMode::WriteThrough;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let queue = SpillQueue::open(&queue_dir, config).expect("open");
        let mut consumer = queue.consumer("sink").expect("consumer");
        for p in 0..events {
            queue
                .push(Event::new(p, vec![p as u8; 300]))
                .await
                .expect("push");
        }
        let mut acked = 0;
        while acked < 100 {
            let batch = consumer
                .next_batch((100 - acked).min(10) as usize, 1 << 20)
                .await
                .expect("read");
            acked += batch.len() as u64;
            consumer.ack(acked - 1).expect("ack");
        }
        queue.flush().expect("flush");
    });
    fs::write(data.path().join("cursor-relay.example"), "4242\n").expect("cursor");
    (data, queue_dir)
}

fn inspect(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("inspect")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run spillway inspect")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_sound_directory_verifies_and_reports_its_consumer_and_cursor() {
    let (data, _) = data_dir_with_queue(1000);
    let out = inspect(data.path(), &["--verify", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let queue = &json["queues"][0];
    assert_eq!(queue["backend"], "segment");
    assert_eq!(queue["consumers"][0]["name"], "sink");
    assert_eq!(queue["consumers"][0]["acked_seq_next"], 100);
    assert_eq!(queue["consumers"][0]["unacked_on_disk"], 900);
    assert_eq!(queue["verify"]["damage"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["relay_cursors"][0]["cursor"], "4242");

    let out = inspect(data.path(), &[]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("900 unacked on disk"), "{stdout}");
    assert!(stdout.contains("cursor-relay.example: 4242"), "{stdout}");
}

#[test]
fn a_corrupted_directory_fails_verify_and_names_file_offset_and_records() {
    let (data, queue_dir) = data_dir_with_queue(1000);
    let mut segments: Vec<PathBuf> = fs::read_dir(queue_dir.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    segments.sort();
    let victim = &segments[1];
    let bytes = fs::read(victim).expect("read");
    let first = ChunkHeader::decode(&bytes[SEGMENT_HEADER_BYTES..]).expect("chunk");
    let offset = SEGMENT_HEADER_BYTES + first.chunk_bytes();
    let second = ChunkHeader::decode(&bytes[offset..]).expect("chunk");
    let flip_at = (offset + CHUNK_HEADER_BYTES + 40) as u64;
    OpenOptions::new()
        .write(true)
        .open(victim)
        .expect("open")
        .write_all_at(&[bytes[flip_at as usize] ^ 0x01], flip_at)
        .expect("flip");

    let out = inspect(data.path(), &["--verify"]);
    assert!(!out.status.success(), "damage must fail the command");
    let stdout = text(&out.stdout);
    let expected = format!(
        "{} at offset {offset}: log records {}..{}: body checksum mismatch",
        victim.display(),
        second.first_seq,
        second.next_seq()
    );
    assert!(stdout.contains("1 DAMAGED range"), "{stdout}");
    assert!(
        stdout.contains(&expected),
        "wanted {expected:?} in {stdout}"
    );
    assert!(text(&out.stderr).contains("verify found 1 damaged range"));

    // Inspecting changed nothing: the byte is still flipped, nothing was cut.
    assert_eq!(
        fs::metadata(victim).expect("meta").len(),
        bytes.len() as u64
    );
}

#[test]
fn a_directory_without_a_queue_is_refused_clearly() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = inspect(empty.path(), &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("holds no queue"),
        "{}",
        text(&out.stderr)
    );
}
