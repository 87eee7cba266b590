//! Damaged files on disk: each case gives its documented outcome and loses nothing intact.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use spillway_storage::record::{ChunkHeader, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use spillway_storage::{open, Backend, OpenError, ReadError, SpillLog, StorageError};

/// Offsets and headers of every chunk in a segment file.
fn chunks(path: &Path) -> Vec<(u64, ChunkHeader)> {
    let bytes = fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at < bytes.len() {
        let header = ChunkHeader::decode(&bytes[at..]).expect("intact chunk");
        out.push((at as u64, header));
        at += header.chunk_bytes();
    }
    out
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for write");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).expect("write byte");
}

fn assert_records(log: &dyn SpillLog, upto: u64) {
    let all = common::read_all(log, 0);
    assert_eq!(all.len() as u64, upto);
    for (seq, bytes) in all {
        assert_eq!(bytes, common::payload(seq), "record {seq}");
    }
}

#[test]
fn truncated_last_record_is_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let (offset, header) = *chunks(last).last().expect("a chunk");
    let len = fs::metadata(last).expect("meta").len();
    common::truncate_by(last, 5);

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    let report = log.recovery_report().clone();
    assert_eq!(report.truncated_bytes, len - 5 - offset);
    assert_eq!(report.dropped_records, u64::from(header.record_count));
    assert_eq!(report.truncated_segment.as_deref(), Some(last.as_path()));
    assert_eq!(log.stats().next_seq, header.first_seq);
    assert_records(log.as_ref(), header.first_seq);
    // The log goes on from the cut.
    let next = log.append(&[b"after the cut".as_slice()]).expect("append");
    assert_eq!(next.first, header.first_seq);
}

#[test]
fn flipped_bytes_in_the_tail_chunk_are_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let (offset, header) = *chunks(last).last().expect("a chunk");
    flip_byte(last, offset + CHUNK_HEADER_BYTES as u64 + 3);

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    assert_eq!(
        log.recovery_report().dropped_records,
        u64::from(header.record_count)
    );
    assert_records(log.as_ref(), header.first_seq);
}

/// Removes the manifest's tail checkpoint, as if the process died before its first sync.
fn forget_tail_checkpoint(dir: &Path) {
    let db = sled::open(dir.join("manifest")).expect("manifest");
    db.open_tree("meta")
        .expect("meta")
        .remove("tail_checkpoint")
        .expect("remove");
    db.flush().expect("flush");
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(50));
}

#[test]
fn without_a_checkpoint_damage_before_intact_chunks_refuses_to_open_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let all = chunks(last);
    assert!(
        all.len() >= 3,
        "the test needs chunks after the damaged one"
    );
    let (offset, _) = all[1];
    flip_byte(last, offset + CHUNK_HEADER_BYTES as u64 + 1);
    forget_tail_checkpoint(dir.path());
    let before = fs::read(last).expect("read");

    match open(dir.path(), common::small_config(Backend::Segment)) {
        Err(OpenError::Storage(StorageError::Corrupt(c))) => {
            assert_eq!(c.location, last.display().to_string());
            assert_eq!(c.offset, offset);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert_eq!(
        fs::read(last).expect("read"),
        before,
        "a refused open must not modify the file"
    );
}

#[test]
fn damage_in_synced_data_of_the_tail_segment_fails_the_read_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let all = chunks(last);
    let (offset, header) = all[1];
    flip_byte(last, offset + CHUNK_HEADER_BYTES as u64 + 1);
    let before = fs::read(last).expect("read");

    // Open scans only from the last synced chunk: bounded, and it leaves the damage alone.
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    assert!(log.recovery_report().scanned_bytes < before.len() as u64);
    assert_eq!(fs::read(last).expect("read"), before);
    let mut at = log.stats().first_seq;
    while at < header.first_seq {
        let batch = log
            .read(at, 100, u64::MAX)
            .expect("intact records before the damage");
        at = batch.next_seq();
    }
    match log.read(header.first_seq, 10, u64::MAX) {
        Err(ReadError::Storage(StorageError::Corrupt(c))) => {
            assert_eq!(c.location, last.display().to_string());
            assert_eq!(c.offset, offset);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Records after the damaged chunk are still reachable.
    let (_, after) = all[2];
    assert_eq!(
        log.read(after.first_seq, 1, 1).expect("read").get(0),
        Some(common::payload(after.first_seq).as_slice())
    );
}

#[test]
fn recovery_scans_only_what_was_written_since_the_last_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::small_config(Backend::Segment);
    config.segment_bytes_max = 1024 * 1024;
    let log = open(dir.path(), config.clone()).expect("open");
    for seq in (0..2000).step_by(10) {
        let records: Vec<Vec<u8>> = (seq..seq + 10).map(common::payload).collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        log.append(&refs).expect("append");
    }
    drop(log);
    let segment = common::segment_files(dir.path()).pop().expect("segment");
    let size = fs::metadata(&segment).expect("meta").len();
    let log = open(dir.path(), config).expect("reopen");
    let scanned = log.recovery_report().scanned_bytes;
    assert!(
        scanned <= 2 * 1024,
        "scanned {scanned} of a {size}-byte segment"
    );
    assert_eq!(log.stats().next_seq, 2000);
    assert_eq!(
        log.stats().payload_bytes,
        (0..2000)
            .map(|s| common::payload(s).len() as u64)
            .sum::<u64>()
    );
}

#[test]
fn flipped_bytes_in_a_sealed_segment_fail_the_read_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 400);
    assert!(files.len() >= 3, "the test needs sealed segments");
    let victim = &files[1];
    let (offset, header) = chunks(victim)[2];
    flip_byte(victim, offset + CHUNK_HEADER_BYTES as u64 + 10);

    let log = open(dir.path(), common::small_config(Backend::Segment))
        .expect("open: only the tail is scanned");
    // Everything before the damaged chunk reads back.
    let mut at = 0;
    while at < header.first_seq {
        let batch = log.read(at, 100, u64::MAX).expect("intact records");
        for (seq, bytes) in batch.iter() {
            assert_eq!(bytes, common::payload(seq));
        }
        at = batch.next_seq();
    }
    match log.read(header.first_seq, 10, u64::MAX) {
        Err(ReadError::Storage(StorageError::Corrupt(c))) => {
            assert_eq!(c.location, victim.display().to_string());
            assert_eq!(c.offset, offset);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Records after the damaged chunk, in the next segment, are still readable.
    let (_, later) = chunks(&files[2])[0];
    let batch = log
        .read(later.first_seq, 5, u64::MAX)
        .expect("later records");
    assert_eq!(
        batch.get(0),
        Some(common::payload(later.first_seq).as_slice())
    );
}

#[test]
fn a_missing_segment_is_a_typed_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 400);
    fs::remove_file(&files[1]).expect("remove");
    match open(dir.path(), common::small_config(Backend::Segment)) {
        Err(OpenError::MissingSegment { path, .. }) => assert_eq!(path, files[1]),
        other => panic!("expected MissingSegment, got {other:?}"),
    }
    // Nothing else was touched.
    assert_eq!(common::segment_files(dir.path()).len(), files.len() - 1);
}

#[test]
fn a_segment_of_another_format_version_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 50);
    let path = &files[0];
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    file.read_exact_at(&mut header, 0).expect("read header");
    header[8..12].copy_from_slice(&9u32.to_le_bytes());
    let crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0).expect("write header");
    match open(dir.path(), common::small_config(Backend::Segment)) {
        Err(OpenError::UnsupportedVersion {
            path: p,
            found: 9,
            supported: 1,
        }) => assert_eq!(&p, path),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn a_manifest_of_another_format_version_is_refused_for_both_backends() {
    for (backend, sub) in [(Backend::Segment, "manifest"), (Backend::Sled, "sled")] {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), common::small_config(backend)).expect("create"));
        {
            let db = sled::open(dir.path().join(sub)).expect("sled");
            db.open_tree("meta")
                .expect("meta")
                .insert("format_version", &7u32.to_le_bytes())
                .expect("insert");
            db.flush().expect("flush");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        match open(dir.path(), common::small_config(backend)) {
            Err(OpenError::UnsupportedVersion {
                found: 7,
                supported: 1,
                ..
            }) => {}
            other => panic!("{backend:?}: expected UnsupportedVersion, got {other:?}"),
        }
    }
}

#[test]
fn opening_a_directory_of_the_other_backend_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path(), common::small_config(Backend::Sled)).expect("create"));
    // The sled backend keeps its store in DIR/sled; point the segment backend's manifest at it.
    fs::rename(dir.path().join("sled"), dir.path().join("manifest")).expect("rename");
    match open(dir.path(), common::small_config(Backend::Segment)) {
        Err(OpenError::WrongBackend { found, .. }) => assert_eq!(found, "sled"),
        other => panic!("expected WrongBackend, got {other:?}"),
    }
}

#[test]
fn a_new_segment_whose_header_never_reached_the_disk_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    // As if killed inside segment creation: the next segment exists, empty, unlisted.
    let next_seq = 200;
    let torn = dir
        .path()
        .join("segments")
        .join(format!("{next_seq:020}.seg"));
    fs::write(&torn, b"SPWY").expect("torn file");
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    assert_eq!(log.recovery_report().removed_files, 1);
    assert!(!torn.exists());
    assert_records(log.as_ref(), 200);
    assert_eq!(common::segment_files(dir.path()), files);
}
