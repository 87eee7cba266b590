//! `inspect` and `verify`: read-only, exact about what is damaged, usable on a live directory.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use spillway_storage::inspect::{inspect, InspectOptions, VerifyReport};
use spillway_storage::record::{ChunkHeader, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use spillway_storage::{open, Backend, InspectError};

/// Every file under `dir` with its bytes: to show that inspecting wrote nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in fs::read_dir(&at).expect("read dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path(), fs::read(entry.path()).expect("read"));
            }
        }
    }
    out
}

fn verify(dir: &Path) -> VerifyReport {
    let inspection = inspect(dir, InspectOptions::default()).expect("inspect");
    let mut calls = 0u64;
    let mut last = (0, 0);
    let report = inspection
        .verify(&mut |done, total| {
            assert!(done <= total, "progress {done} of {total}");
            assert!(done >= last.0, "progress went backwards");
            last = (done, total);
            calls += 1;
        })
        .expect("verify");
    assert!(calls > 0, "verify reported no progress");
    report
}

#[test]
fn a_sound_log_is_described_and_verified_without_being_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    common::append_records(log.as_ref(), 0, 500);
    log.save_position("seq.sink", 120).expect("position");
    log.consume_until(100).expect("consume");
    log.flush().expect("flush");
    drop(log);
    let before = snapshot(dir.path());

    let inspection = inspect(dir.path(), InspectOptions::default()).expect("inspect");
    assert_eq!(inspection.backend, Backend::Segment);
    assert!(!inspection.held_by_process);
    assert_eq!(inspection.next_seq, 500);
    assert!(inspection.consumed_seq <= 100);
    assert_eq!(inspection.positions, vec![("seq.sink".to_string(), 120)]);
    assert!(
        inspection.segments.len() > 1,
        "the small config rolls segments"
    );
    assert!(inspection.tail_note.is_none());
    let report = inspection.verify(&mut |_, _| {}).expect("verify");
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    assert!(report.torn_tail.is_none());
    let first = inspection.segments[0].first_seq;
    assert_eq!(report.records_ok, 500 - first);
    drop(inspection);

    assert_eq!(
        snapshot(dir.path()),
        before,
        "inspect changed the directory"
    );
}

#[test]
fn verify_names_each_damaged_range_and_keeps_checking_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    assert!(files.len() >= 3);
    // Damage the second chunk of the first segment, and the third of the second.
    let mut expected = Vec::new();
    for (file, chunk_index) in [(&files[0], 1), (&files[1], 2)] {
        let bytes = fs::read(file).expect("read");
        let mut at = SEGMENT_HEADER_BYTES;
        for _ in 0..chunk_index {
            at += ChunkHeader::decode(&bytes[at..])
                .expect("chunk")
                .chunk_bytes();
        }
        let header = ChunkHeader::decode(&bytes[at..]).expect("chunk");
        let handle = OpenOptions::new().write(true).open(file).expect("open");
        handle
            .write_all_at(
                &[bytes[at + CHUNK_HEADER_BYTES + 3] ^ 0xff],
                (at + CHUNK_HEADER_BYTES + 3) as u64,
            )
            .expect("flip");
        expected.push((
            file.display().to_string(),
            at as u64,
            header.first_seq,
            header.next_seq(),
        ));
    }

    let report = verify(dir.path());
    let found: Vec<(String, u64, u64, Option<u64>)> = report
        .damage
        .iter()
        .map(|d| (d.location.clone(), d.offset, d.seqs.0, d.seqs.1))
        .collect();
    let wanted: Vec<(String, u64, u64, Option<u64>)> = expected
        .into_iter()
        .map(|(file, offset, first, next)| (file, offset, first, Some(next)))
        .collect();
    assert_eq!(found, wanted);
    assert!(report.damage.iter().all(|d| d.reason.contains("checksum")));
    // Everything else was checked: 600 records minus the two damaged chunks.
    let damaged: u64 = wanted.iter().map(|w| w.3.unwrap_or(0) - w.2).sum();
    assert_eq!(report.records_ok, 600 - damaged);
}

#[test]
fn a_missing_segment_is_damage_with_its_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    let starts: Vec<u64> = files
        .iter()
        .map(|f| common::intact_chunks(f)[0].1.first_seq)
        .collect();
    fs::remove_file(&files[1]).expect("remove");

    let report = verify(dir.path());
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.reason.contains("damaged manifest")
                && d.reason.contains(&files[1].display().to_string())),
        "{:?}",
        report.damage
    );
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.seqs == (starts[1], Some(starts[2]))),
        "the missing records {}..{} are named: {:?}",
        starts[1],
        starts[2],
        report.damage
    );
    assert!(report.torn_tail.is_none());
}

#[test]
fn a_file_shorter_than_its_synced_end_is_damage_and_bytes_past_it_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    let last = files.last().expect("segment");
    let (offset, header) = *common::intact_chunks(last).last().expect("a chunk");
    common::truncate_by(last, 5);

    let report = verify(dir.path());
    assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
    let damage = &report.damage[0];
    assert_eq!(damage.location, last.display().to_string());
    assert_eq!(damage.offset, offset);
    assert_eq!(damage.seqs, (header.first_seq, Some(600)));
    assert!(
        damage.reason.contains("below the synced end"),
        "{}",
        damage.reason
    );
    assert!(
        report.torn_tail.is_none(),
        "below the synced end it is not a torn tail"
    );

    // Bytes past the synced end that fail their checks are a torn tail, not damage.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    let last = files.last().expect("segment");
    let len = fs::metadata(last).expect("meta").len();
    OpenOptions::new()
        .append(true)
        .open(last)
        .expect("open")
        .write_all_at(b"SPCK and the rest never reached the disk", len)
        .expect("append");
    let report = verify(dir.path());
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    let torn = report.torn_tail.expect("a torn tail");
    assert_eq!(
        (torn.location, torn.offset),
        (last.display().to_string(), len)
    );
}

#[test]
fn a_live_directory_is_inspected_from_a_copy_while_its_owner_keeps_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    common::append_records(log.as_ref(), 0, 300);
    log.flush().expect("flush");

    let inspection = inspect(dir.path(), InspectOptions::default()).expect("inspect live");
    assert!(inspection.held_by_process);
    assert_eq!(inspection.next_seq, 300);
    let report = inspection.verify(&mut |_, _| {}).expect("verify");
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    drop(inspection);

    // The owner is undisturbed.
    common::append_records(log.as_ref(), 300, 400);
    log.flush().expect("flush");
    assert_eq!(common::read_all(log.as_ref(), 0).len(), 400);
}

#[test]
fn the_sled_backend_is_verified_chunk_by_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), common::small_config(Backend::Sled)).expect("open");
    common::append_records(log.as_ref(), 0, 300);
    log.flush().expect("flush");
    drop(log);
    let inspection = inspect(dir.path(), InspectOptions::default()).expect("inspect");
    assert_eq!(inspection.backend, Backend::Sled);
    assert_eq!(inspection.next_seq, 300);
    let report = inspection.verify(&mut |_, _| {}).expect("verify");
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    assert_eq!(report.records_ok, 300);
}

#[test]
fn refusals_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = inspect(dir.path(), InspectOptions::default()).expect_err("empty dir");
    assert!(matches!(error, InspectError::NotALog { .. }), "{error}");
    assert!(error.to_string().contains("not a spill log directory"));

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    common::append_records(log.as_ref(), 0, 10);
    drop(log);
    let error = inspect(dir.path(), InspectOptions { copy_bytes_max: 10 }).expect_err("bound");
    assert!(
        matches!(error, InspectError::StoreTooLarge { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("copy bound"), "{error}");
}
