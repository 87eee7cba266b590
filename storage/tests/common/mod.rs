//! Helpers shared by the storage tests.
#![allow(dead_code)]

use spillway_storage::{Backend, Durability, LogConfig};

/// A small configuration so segment rolls, windows and chunk splits happen with tiny inputs.
pub fn small_config(backend: Backend) -> LogConfig {
    let mut config = LogConfig::new(backend);
    config.durability = Durability::Manual;
    config.record_bytes_max = 2048;
    config.chunk_bytes_target = 256;
    config.segment_bytes_max = 8 * 1024;
    config.write_buffer_bytes = 512;
    config.read_window_bytes = 4096;
    config.disk_budget_bytes = 64 * 1024 * 1024;
    config
}

/// The payload a test writes for `seq`: its length and bytes follow from the number.
pub fn payload(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2654435761) % 300) as usize;
    let mut out = seq.to_le_bytes().to_vec();
    out.extend((0..len).map(|i| (seq as usize + i) as u8));
    out
}

/// Appends the records `from..to` (payload(seq)) in batches of 10.
pub fn append_records(log: &dyn spillway_storage::SpillLog, from: u64, to: u64) {
    for start in (from..to).step_by(10) {
        let records: Vec<Vec<u8>> = (start..(start + 10).min(to)).map(payload).collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        log.append(&refs).expect("append");
    }
}

/// Writes `count` records into a new segment log in `dir`, flushes and closes it; returns its segment files.
pub fn write_closed_log(dir: &std::path::Path, count: u64) -> Vec<std::path::PathBuf> {
    let log = spillway_storage::open(dir, small_config(Backend::Segment)).expect("open");
    append_records(log.as_ref(), 0, count);
    log.flush().expect("flush");
    drop(log);
    segment_files(dir)
}

/// Cuts the last `bytes` bytes off a file.
pub fn truncate_by(path: &std::path::Path, bytes: u64) {
    let len = std::fs::metadata(path).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len - bytes)
        .expect("truncate");
}

/// The segment files of a segment log in `dir`, oldest first.
pub fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("segments"))
        .expect("segments dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// Reads every record from `from` to the end through bounded reads.
pub fn read_all(log: &dyn spillway_storage::SpillLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = from;
    let end = log.stats().next_seq;
    while at < end {
        let batch = log.read(at, 7, 1000).expect("read");
        assert!(
            !batch.is_empty(),
            "a read below next_seq returned nothing at {at}"
        );
        for (seq, bytes) in batch.iter() {
            out.push((seq, bytes.to_vec()));
        }
        at = batch.next_seq();
    }
    out
}

/// Reads from `from` to the end, keeping records and the lost ranges reads reported, in order.
pub fn read_with_losses(
    log: &dyn spillway_storage::SpillLog,
    from: u64,
) -> (Vec<(u64, Vec<u8>)>, Vec<spillway_storage::LostRange>) {
    let mut records = Vec::new();
    let mut lost = Vec::new();
    let mut at = from;
    let end = log.stats().next_seq;
    while at < end {
        let batch = log.read(at, 7, 1000).expect("read");
        if let Some(range) = batch.lost() {
            assert!(batch.is_empty(), "a batch reporting a loss holds no record");
            assert_eq!(
                range.seqs.first, at,
                "a lost range starts at the read's seq"
            );
            assert_eq!(batch.next_seq(), range.seqs.next);
            lost.push(range.clone());
        } else {
            assert!(
                !batch.is_empty(),
                "a read below next_seq returned nothing at {at}"
            );
        }
        for (seq, bytes) in batch.iter() {
            records.push((seq, bytes.to_vec()));
        }
        assert!(batch.next_seq() > at, "reads make progress");
        at = batch.next_seq();
    }
    (records, lost)
}

/// Checks that `records` are exactly the seqs of `from..to` outside `lost`, each with its payload.
pub fn assert_every_seq(
    records: &[(u64, Vec<u8>)],
    lost: &[std::ops::Range<u64>],
    from: u64,
    to: u64,
) {
    let expected: Vec<u64> = (from..to)
        .filter(|seq| !lost.iter().any(|r| r.contains(seq)))
        .collect();
    let got: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(got, expected, "delivered seqs");
    for (seq, bytes) in records {
        assert_eq!(bytes, &payload(*seq), "record {seq}");
    }
}

/// Offsets and headers of a segment file's chunks up to the first that fails its checks.
pub fn intact_chunks(path: &std::path::Path) -> Vec<(u64, spillway_storage::record::ChunkHeader)> {
    use spillway_storage::record::{
        check_body, ChunkHeader, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    };
    let bytes = std::fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while let Ok(header) = ChunkHeader::decode(bytes.get(at..).unwrap_or_default()) {
        let body_at = at + CHUNK_HEADER_BYTES;
        let Some(body) = bytes.get(body_at..body_at + header.body_bytes as usize) else {
            break;
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(body);
        if check_body(&header, &aligned).is_err() {
            break;
        }
        out.push((at as u64, header));
        at += header.chunk_bytes();
    }
    out
}

/// XORs `len` bytes of a file from `offset` with 0x5a.
pub fn flip_bytes(path: &std::path::Path, offset: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for write");
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset).expect("read bytes");
    for byte in &mut bytes {
        *byte ^= 0x5a;
    }
    file.write_all_at(&bytes, offset).expect("write bytes");
}
