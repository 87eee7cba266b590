//! Damaged files on disk: each case gives its documented outcome and loses nothing intact.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::io::Write;

use spillway_storage::record::{
    encode_chunk, ChunkHeader, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use spillway_storage::{open, Backend, Durability, OpenError, SpillLog};

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
fn bytes_past_the_synced_end_are_a_torn_tail_and_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let len = fs::metadata(last).expect("meta").len();
    // An interrupted write after the last sync: half of the next chunk reached the disk.
    let mut chunk = Vec::new();
    let header = encode_chunk(
        &mut chunk,
        200,
        &[common::payload(200), common::payload(201)],
    );
    let torn = &chunk[..chunk.len() / 2];
    OpenOptions::new()
        .append(true)
        .open(last)
        .expect("open")
        .write_all(torn)
        .expect("append torn bytes");

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    let report = log.recovery_report().clone();
    assert_eq!(report.truncated_bytes, torn.len() as u64);
    assert_eq!(report.dropped_records, u64::from(header.record_count));
    assert_eq!(report.truncated_segment.as_deref(), Some(last.as_path()));
    assert!(report.lost.is_empty(), "{:?}", report.lost);
    assert_eq!(fs::metadata(last).expect("meta").len(), len);
    assert_eq!(log.stats().next_seq, 200);
    assert_records(log.as_ref(), 200);
    let next = log.append(&[b"after the cut".as_slice()]).expect("append");
    assert_eq!(next.first, 200);
}

/// Every record of `0..count` is read back except `lost`, which one read reports exactly.
fn assert_all_but(log: &dyn SpillLog, count: u64, lost: std::ops::Range<u64>, location: &Path) {
    let (records, ranges) = common::read_with_losses(log, 0);
    common::assert_every_seq(&records, std::slice::from_ref(&lost), 0, count);
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].seqs.first..ranges[0].seqs.next, lost);
    assert_eq!(ranges[0].location, location.display().to_string());
}

#[test]
fn a_truncated_active_segment_loses_the_synced_records_it_no_longer_holds_and_keeps_its_seqs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::small_config(Backend::Segment);
    config.durability = Durability::EveryBatch;
    config.segment_bytes_max = 1024 * 1024;
    let log = open(dir.path(), config.clone()).expect("open");
    common::append_records(log.as_ref(), 0, 300);
    drop(log);
    let active = common::segment_files(dir.path()).pop().expect("segment");
    let len = fs::metadata(&active).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let intact_next = common::intact_chunks(&active)
        .last()
        .map_or(0, |(_, h)| h.next_seq());
    assert!(intact_next > 0 && intact_next < 300);

    let log = open(dir.path(), config).expect("reopen");
    let lost = &log.recovery_report().lost;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].seqs.first..lost[0].seqs.next, intact_next..300);
    assert_eq!(lost[0].location, active.display().to_string());
    assert_eq!(lost[0].reason, "truncated below the synced end");
    assert_eq!(log.stats().next_seq, 300, "the seq space is kept");
    assert_all_but(log.as_ref(), 300, intact_next..300, &active);
    // Appends go on at the old next_seq.
    let next = log
        .append(&[common::payload(300).as_slice()])
        .expect("append");
    assert_eq!(next.first, 300);
    assert_eq!(
        log.read(300, 1, u64::MAX).expect("read").get(0),
        Some(common::payload(300).as_slice())
    );
    // Consuming past the lost range works, and the loss is durable across opens.
    drop(log);
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    assert!(log.recovery_report().lost.is_empty());
    let batch = log.read(intact_next, 10, u64::MAX).expect("read the gap");
    assert_eq!(
        batch.lost().map(|l| (l.seqs.first, l.seqs.next)),
        Some((intact_next, 300))
    );
    log.consume_until(301).expect("consume");
    assert_eq!(log.stats().first_seq, 301);
}

#[test]
fn flipped_bytes_in_the_synced_tail_chunk_are_reported_lost_and_the_seqs_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let (offset, header) = *chunks(last).last().expect("a chunk");
    flip_byte(last, offset + CHUNK_HEADER_BYTES as u64 + 3);

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    let lost = &log.recovery_report().lost;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(
        (lost[0].seqs.first, lost[0].seqs.next),
        (header.first_seq, 200)
    );
    assert_eq!(lost[0].offset, offset);
    assert_eq!(log.recovery_report().truncated_bytes, 0);
    assert_all_but(log.as_ref(), 200, header.first_seq..200, last);
    assert_eq!(
        log.append(&[b"next".as_slice()]).expect("append").first,
        200
    );
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
fn without_a_checkpoint_damage_before_intact_chunks_is_reported_lost_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let last = files.last().expect("a segment");
    let all = chunks(last);
    assert!(
        all.len() >= 3,
        "the test needs chunks after the damaged one"
    );
    let (offset, header) = all[1];
    flip_byte(last, offset + CHUNK_HEADER_BYTES as u64 + 1);
    forget_tail_checkpoint(dir.path());
    let before = fs::read(last).expect("read");

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    let lost = &log.recovery_report().lost;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].location, last.display().to_string());
    assert_eq!(lost[0].offset, offset);
    assert_eq!(
        (lost[0].seqs.first, lost[0].seqs.next),
        (header.first_seq, header.next_seq())
    );
    assert_eq!(
        fs::read(last).expect("read"),
        before,
        "damage in the middle must not modify the file"
    );
    assert_all_but(log.as_ref(), 200, header.first_seq..header.next_seq(), last);
}

#[test]
fn damage_in_synced_data_of_the_tail_segment_is_skipped_by_reads_with_file_and_offset() {
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
    let batch = log.read(header.first_seq, 10, u64::MAX).expect("read");
    let lost = batch.lost().expect("the damage is reported");
    assert_eq!(lost.location, last.display().to_string());
    assert_eq!(lost.offset, offset);
    assert_eq!(
        (lost.seqs.first, lost.seqs.next),
        (header.first_seq, header.next_seq())
    );
    assert!(lost.reason.contains("checksum"), "{}", lost.reason);
    assert_all_but(log.as_ref(), 200, header.first_seq..header.next_seq(), last);
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
fn flipped_bytes_in_a_sealed_segment_are_skipped_by_reads_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 400);
    assert!(files.len() >= 3, "the test needs sealed segments");
    let victim = &files[1];
    let (offset, header) = chunks(victim)[2];
    flip_byte(victim, offset + CHUNK_HEADER_BYTES as u64 + 10);

    let log = open(dir.path(), common::small_config(Backend::Segment))
        .expect("open: only the tail is scanned");
    let batch = log.read(header.first_seq, 10, u64::MAX).expect("read");
    let lost = batch.lost().expect("the damage is reported");
    assert_eq!(lost.location, victim.display().to_string());
    assert_eq!(lost.offset, offset);
    assert_all_but(
        log.as_ref(),
        400,
        header.first_seq..header.next_seq(),
        victim,
    );
}

#[test]
fn sixty_four_flipped_bytes_in_a_sealed_segment_lose_exactly_that_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    assert!(files.len() >= 4, "the test needs several sealed segments");
    let victim = &files[1];
    // A chunk whose body holds 64 bytes well inside it.
    let (offset, header) = chunks(victim)
        .into_iter()
        .skip(1)
        .find(|(_, h)| h.body_bytes >= 128)
        .expect("a chunk with a large body");
    flip_bytes_in_body(victim, offset, &header);

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    assert_all_but(
        log.as_ref(),
        600,
        header.first_seq..header.next_seq(),
        victim,
    );
    // Consuming past the lost range works like any consume.
    log.consume_until(header.next_seq()).expect("consume");
    let (records, lost) = common::read_with_losses(log.as_ref(), header.next_seq());
    assert!(lost.is_empty());
    common::assert_every_seq(&records, &[], header.next_seq(), 600);
}

fn flip_bytes_in_body(path: &Path, offset: u64, header: &ChunkHeader) {
    let middle = offset + CHUNK_HEADER_BYTES as u64 + u64::from(header.body_bytes) / 2 - 32;
    common::flip_bytes(path, middle, 64);
}

#[test]
fn sixty_four_flipped_bytes_in_a_sled_chunk_lose_exactly_that_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path(), common::small_config(Backend::Sled)).expect("open");
    common::append_records(log.as_ref(), 0, 300);
    log.flush().expect("flush");
    drop(log);
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Damage one chunk's body through sled itself (its own log has no checksum of our bodies).
    let (first, next) = {
        let db = sled::open(dir.path().join("sled")).expect("sled");
        let chunks = db.open_tree("chunks").expect("chunks");
        let (key, value) = chunks
            .iter()
            .map(|item| item.expect("item"))
            .filter(|(_, v)| ChunkHeader::decode(v).is_ok_and(|h| h.body_bytes >= 128))
            .nth(3)
            .expect("a chunk with a large body");
        let header = ChunkHeader::decode(&value).expect("header");
        let mut damaged = value.to_vec();
        let middle = CHUNK_HEADER_BYTES + header.body_bytes as usize / 2 - 32;
        for byte in &mut damaged[middle..middle + 64] {
            *byte ^= 0x5a;
        }
        chunks.insert(key, damaged).expect("insert");
        db.flush().expect("flush");
        (header.first_seq, header.next_seq())
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let log = open(dir.path(), common::small_config(Backend::Sled)).expect("reopen");
    let (records, lost) = common::read_with_losses(log.as_ref(), 0);
    common::assert_every_seq(&records, std::slice::from_ref(&(first..next)), 0, 300);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].seqs.first, lost[0].seqs.next), (first, next));
    assert!(
        lost[0].location.ends_with(&format!("chunk {first}")),
        "{}",
        lost[0].location
    );
    log.consume_until(next).expect("consume past the damage");
    assert_eq!(log.stats().first_seq, next);
}

#[test]
fn a_missing_segment_rebuilds_the_manifest_and_reports_its_records_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 400);
    let missing = chunks(&files[1])[0].1.first_seq..chunks(&files[2])[0].1.first_seq;
    fs::remove_file(&files[1]).expect("remove");
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    let report = log.recovery_report();
    let why = report.manifest_rebuilt.as_deref().expect("rebuilt");
    assert!(why.contains(&files[1].display().to_string()), "{why}");
    assert_eq!(report.lost.len(), 1, "{:?}", report.lost);
    assert_eq!(report.lost[0].seqs.first..report.lost[0].seqs.next, missing);
    let (records, lost) = common::read_with_losses(log.as_ref(), 0);
    common::assert_every_seq(&records, std::slice::from_ref(&missing), 0, 400);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].seqs.first..lost[0].seqs.next, missing);
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

#[test]
fn a_sealed_segment_shorter_than_the_manifest_says_keeps_its_intact_chunks_and_reports_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    assert!(files.len() >= 4, "the test needs sealed segments");
    let victim = &files[1];
    let next_file_first = chunks(&files[2])[0].1.first_seq;
    let len = fs::metadata(victim).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(victim)
        .expect("open")
        .set_len(len * 2 / 3)
        .expect("truncate");
    let intact_next = common::intact_chunks(victim)
        .last()
        .expect("an intact chunk")
        .1
        .next_seq();

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    let lost = &log.recovery_report().lost;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(
        lost[0].seqs.first..lost[0].seqs.next,
        intact_next..next_file_first
    );
    assert_eq!(lost[0].location, victim.display().to_string());
    assert_all_but(log.as_ref(), 600, intact_next..next_file_first, victim);
    // The next open finds the same state and reports nothing new; reads still report the gap.
    drop(log);
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    assert!(
        log.recovery_report().lost.is_empty(),
        "{:?}",
        log.recovery_report().lost
    );
    assert_all_but(log.as_ref(), 600, intact_next..next_file_first, victim);
}

/// Reads that resume inside a chunk the cached window already checked hand out the same
/// records, and a chunk the window has not checked yet is still checked: damage to it,
/// made after the window was mapped, is reported when a read reaches it.
#[test]
fn a_read_resuming_in_a_checked_chunk_still_checks_the_next_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    let first = files.first().expect("a segment").clone();
    let layout = chunks(&first);
    assert!(layout.len() >= 3, "the test needs three chunks: {layout:?}");
    let (_, chunk0) = layout[0];
    let (offset1, chunk1) = layout[1];
    assert!(
        chunk0.record_count >= 2,
        "the first chunk holds two records"
    );

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    // Maps the window and checks the first chunk.
    let head = log.read(0, 1, u64::MAX).expect("read");
    assert_eq!(head.get(0), Some(common::payload(0).as_slice()));
    // The second chunk is damaged after the mapping: its check must still run.
    flip_byte(&first, offset1 + CHUNK_HEADER_BYTES as u64 + 3);

    let mut seq = 1;
    let mut met = None;
    while seq < 200 {
        let batch = log.read(seq, 1000, u64::MAX).expect("read");
        if let Some(lost) = batch.lost() {
            met = Some(lost.clone());
            break;
        }
        for (at, bytes) in batch.iter() {
            assert_eq!(bytes, common::payload(at).as_slice(), "record {at}");
        }
        seq = batch.next_seq();
    }
    let lost = met.expect("the damaged chunk is reported");
    assert_eq!(
        seq,
        chunk0.next_seq(),
        "every record before the damage was handed out"
    );
    assert_eq!(lost.seqs.first, chunk1.first_seq);
    assert_eq!(lost.seqs.next, chunk1.next_seq());
    assert_eq!(lost.offset, offset1);
    assert!(lost.reason.contains("checksum"), "{}", lost.reason);
}

/// Reclaim's crash order: the manifest forgets a consumed segment before its file goes.
/// A crash between the two leaves the file unlisted, and open removes it (every record
/// in it is consumed) without reporting anything lost.
#[test]
fn a_consumed_segment_whose_removal_never_reached_the_disk_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 600);
    assert!(files.len() >= 3, "the test needs three segments: {files:?}");
    let oldest = files[0].clone();
    let saved = fs::read(&oldest).expect("read oldest");
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    let end = log.oldest_file_end_seq();
    log.consume_until(end).expect("consume");
    assert!(!oldest.exists(), "reclaim removed the consumed segment");
    drop(log);
    // As if killed after the manifest flush, before the unlink reached the disk.
    fs::write(&oldest, &saved).expect("restore the file");

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    let report = log.recovery_report().clone();
    assert_eq!(report.removed_files, 1, "{report:?}");
    assert!(report.lost.is_empty(), "{:?}", report.lost);
    assert!(!oldest.exists());
    assert_eq!(log.stats().first_seq, end);
    let rest = common::read_all(log.as_ref(), end);
    assert_eq!(rest.len() as u64, 600 - end);
    for (seq, bytes) in rest {
        assert_eq!(bytes, common::payload(seq), "record {seq}");
    }
}
