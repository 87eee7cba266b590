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

/// The queue's segment files, oldest first.
fn segment_files(queue_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(queue_dir.join("segments"))
        .expect("segments")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn repair_rebuilds_a_garbled_manifest_sets_a_ruined_segment_aside_and_keeps_every_intact_event() {
    let (data, queue_dir) = data_dir_with_queue(2_000);
    // A ruined segment: every byte after its header overwritten.
    let files = segment_files(&queue_dir);
    assert!(files.len() >= 4, "several segments: {}", files.len());
    let ruined = files[files.len() / 2].clone();
    let len = fs::metadata(&ruined).expect("segment").len();
    let file = OpenOptions::new().write(true).open(&ruined).expect("open");
    file.write_all_at(
        &vec![0xA5u8; (len - SEGMENT_HEADER_BYTES as u64) as usize],
        SEGMENT_HEADER_BYTES as u64,
    )
    .expect("ruin");
    // A garbled manifest: 200 bytes XOR-ed in its middle.
    let db = queue_dir.join("manifest").join("db");
    let db_len = fs::metadata(&db).expect("db").len();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db)
        .expect("db");
    let mut bytes = vec![0u8; 200];
    file.read_exact_at(&mut bytes, db_len / 2).expect("read");
    bytes.iter_mut().for_each(|b| *b ^= 0xFF);
    file.write_all_at(&bytes, db_len / 2).expect("write");

    let before = inspect(data.path(), &["--verify"]);
    assert!(!before.status.success(), "verify fails on the damage");

    // Refused while a run holds the directory.
    {
        let _held = spillway::data_dir_lock::DataDirLock::acquire(data.path()).expect("lock");
        let refused = inspect(data.path(), &["--repair"]);
        assert!(!refused.status.success());
        assert!(
            text(&refused.stderr).contains("another spillway (pid"),
            "{}",
            text(&refused.stderr)
        );
    }
    let repaired = inspect(data.path(), &["--repair"]);
    let out = text(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "{out}\n{}",
        text(&repaired.stderr)
    );
    assert!(out.contains("moved aside"), "{out}");
    assert!(
        queue_dir
            .join("damaged")
            .join(ruined.file_name().expect("name"))
            .exists(),
        "the ruined segment is kept aside, not deleted"
    );

    // Every event outside the ruined segment is there, in order, none twice.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let positions = runtime.block_on(async {
        let queue = SpillQueue::open(&queue_dir, common::small_queue_config(4096)).expect("open");
        let mut consumer = queue.consumer("check").expect("consumer");
        let mut positions = Vec::new();
        loop {
            let batch = consumer.try_next_batch(500, 1 << 20).expect("read");
            if batch.is_empty() {
                break;
            }
            positions.extend(batch.iter().map(|d| d.position));
        }
        positions
    });
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    let missing = 2_000 - positions.len() as u64;
    assert!(missing > 0, "the ruined segment's events are gone");
    let ruined_first: u64 = ruined
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("segment name");
    assert!(
        positions.iter().any(|&p| p > ruined_first),
        "events after the ruined segment are delivered"
    );
    assert_eq!(positions.last(), Some(&1_999), "up to the last event");
}
