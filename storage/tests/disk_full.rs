//! A full disk is a full budget, not a crash: ENOSPC injected at a write, an fsync, a
//! roll and a manifest flush, the free-space check, the reserve file, and a real
//! full tmpfs (skipped, with the reason printed, where mounting is not permitted).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use spillway_storage::testing::{FailingFs, Op};
use spillway_storage::{AppendError, Backend, Durability, LogConfig, SegmentLog, SpillLog};

fn config(durability: Durability) -> LogConfig {
    let mut config = common::small_config(Backend::Segment);
    config.durability = durability;
    config.reserve_bytes = 64 * 1024;
    config.disk_free_margin_bytes = 4 * 1024;
    config
}

fn open(dir: &Path, durability: Durability, fs: &FailingFs) -> SegmentLog {
    SegmentLog::open_with(dir, config(durability), Arc::new(fs.clone())).expect("open")
}

fn batch(from: u64, count: u64) -> Vec<Vec<u8>> {
    (from..from + count).map(common::payload).collect()
}

fn append(log: &SegmentLog, records: &[Vec<u8>]) -> Result<u64, AppendError> {
    let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
    log.append(&refs).map(|range| range.first)
}

/// Every record 0..count reads back as `payload(seq)`, densely.
fn assert_records(log: &dyn SpillLog, count: u64) {
    let read = common::read_all(log, 0);
    assert_eq!(read.len() as u64, count, "record count");
    for (seq, bytes) in read {
        assert_eq!(bytes, common::payload(seq), "record {seq}");
    }
}

/// Arms ENOSPC on the next call of `op` (plus `later` more), appends a batch, and checks the
/// refusal left the log as it was and usable; returns the log's record count after.
fn refuse_then_recover(durability: Durability, op: Op, later: u64, batch_records: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FailingFs::new();
    let log = open(dir.path(), durability, &fs);
    // Some records reach the file, some stay in the write buffer (Manual).
    common::append_records(&log, 0, 95);
    let files = log.stats().files;
    fs.fail_nth(op, fs.count(op) + 1 + later, libc::ENOSPC);
    let refused = append(&log, &batch(95, batch_records));
    assert_eq!(fs.fired(), 1, "the injected ENOSPC did not fire");
    match refused {
        Err(AppendError::NoSpace {
            path, needed_bytes, ..
        }) => {
            assert_eq!(path, dir.path().join("segments"));
            assert!(needed_bytes > 0);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(log.stats().next_seq, 95, "the refused batch left records");
    assert_eq!(log.stats().files, files, "the refused batch left segments");
    assert_records(&log, 95);
    // The fault has cleared: the same seqs go to the next batch, densely.
    assert_eq!(
        append(&log, &batch(95, batch_records)).expect("append after"),
        95
    );
    let end = 95 + batch_records;
    assert_records(&log, end);
    drop(log);
    let reopened = SegmentLog::open(dir.path(), config(durability)).expect("reopen");
    assert_records(&reopened, end);
}

#[test]
fn an_enospc_write_refuses_the_batch_and_keeps_every_buffered_record() {
    refuse_then_recover(Durability::Manual, Op::Write, 0, 30);
}

#[test]
fn an_enospc_fsync_refuses_the_batch_under_every_batch() {
    refuse_then_recover(Durability::EveryBatch, Op::Sync, 0, 30);
}

#[test]
fn an_enospc_after_the_batch_rolled_a_segment_undoes_the_roll() {
    // 120 records of up to 300 bytes pass the 8 KiB segment: the batch rolls, then a later write fails.
    refuse_then_recover(Durability::Manual, Op::Write, 3, 120);
}

#[test]
fn an_enospc_manifest_flush_refuses_the_batch_under_every_batch() {
    refuse_then_recover(Durability::EveryBatch, Op::ManifestFlush, 0, 30);
}

#[test]
fn too_little_free_space_refuses_before_writing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FailingFs::new();
    // Free space is measured at open, then estimated from the log's writes (and measured
    // again at most once a second, or before refusing).
    fs.set_free_bytes(Some(1000));
    let log = open(dir.path(), Durability::Manual, &fs);
    let writes = fs.count(Op::Write);
    match append(&log, &batch(0, 10)) {
        Err(AppendError::NoSpace {
            free_bytes,
            needed_bytes,
            ..
        }) => {
            assert_eq!(free_bytes, 1000);
            assert!(needed_bytes > free_bytes);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(fs.count(Op::Write), writes, "a refused batch was written");
    fs.set_free_bytes(None);
    assert_eq!(
        append(&log, &batch(0, 10)).expect("append once space frees"),
        0
    );
    assert_records(&log, 10);
}

#[test]
fn the_effective_budget_is_capped_by_free_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FailingFs::new();
    fs.set_free_bytes(Some(500_000));
    let log = open(dir.path(), Durability::Manual, &fs);
    let stats = log.stats();
    let margin = config(Durability::Manual).disk_free_margin_bytes;
    assert_eq!(
        stats.disk_budget_bytes_effective,
        stats.disk_bytes + 500_000 - margin
    );
    fs.set_free_bytes(Some(u64::MAX / 4));
    drop(log);
    let log = open(dir.path(), Durability::Manual, &fs);
    assert_eq!(
        log.stats().disk_budget_bytes_effective,
        config(Durability::Manual).disk_budget_bytes
    );
}

#[test]
fn open_on_a_full_disk_gives_up_the_reserve_and_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reserve = dir.path().join("reserve");
    {
        let log = open(dir.path(), Durability::Manual, &FailingFs::new());
        common::append_records(&log, 0, 40);
        log.flush().expect("flush");
    }
    assert_eq!(
        std::fs::metadata(&reserve).expect("reserve").len(),
        config(Durability::Manual).reserve_bytes
    );
    let fs = FailingFs::new();
    // The first sync of the reopen (recovery's) meets a full disk; no room to make the reserve again.
    fs.fail_nth(Op::Sync, 1, libc::ENOSPC);
    fs.set_free_bytes(Some(0));
    let log = open(dir.path(), Durability::Manual, &fs);
    assert_eq!(fs.fired(), 1);
    assert!(!reserve.exists(), "the reserve was not given up");
    assert_records(&log, 40);
    // Draining works on the full disk, and the reserve comes back once space frees.
    fs.set_free_bytes(None);
    log.consume_until(40).expect("consume");
    assert!(
        reserve.exists(),
        "the reserve was not made again after space freed"
    );
}

#[test]
fn consuming_on_a_full_disk_gives_up_the_reserve_and_frees_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FailingFs::new();
    let log = open(dir.path(), Durability::EveryBatch, &fs);
    common::append_records(&log, 0, 200);
    let files = log.stats().files;
    assert!(files > 2, "the test needs sealed segments to reclaim");
    fs.set_free_bytes(Some(0));
    fs.fail_nth(
        Op::ManifestFlush,
        fs.count(Op::ManifestFlush) + 1,
        libc::ENOSPC,
    );
    log.consume_until(150).expect("consume on a full disk");
    assert_eq!(fs.fired(), 1);
    assert!(!dir.path().join("reserve").exists());
    assert!(log.stats().files < files, "nothing was reclaimed");
    assert_eq!(log.stats().first_seq, 150);
    drop(log);
    let reopened = SegmentLog::open(dir.path(), config(Durability::EveryBatch)).expect("reopen");
    assert_eq!(reopened.stats().first_seq, 150);
    assert_eq!(reopened.stats().next_seq, 200);
}

#[test]
fn consuming_on_a_full_disk_without_a_reserve_left_defers_durability_instead_of_failing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FailingFs::new();
    let mut no_reserve = config(Durability::EveryBatch);
    no_reserve.reserve_bytes = 0;
    let log =
        SegmentLog::open_with(dir.path(), no_reserve.clone(), Arc::new(fs.clone())).expect("open");
    common::append_records(&log, 0, 200);
    fs.set_free_bytes(Some(0));
    // Every flush of the manifest and every write fails while the disk is full.
    let (flushes, writes) = (fs.count(Op::ManifestFlush), fs.count(Op::Write));
    for n in 1..=8 {
        fs.fail_nth(Op::ManifestFlush, flushes + n, libc::ENOSPC);
        fs.fail_nth(Op::Write, writes + n, libc::ENOSPC);
    }
    log.consume_until(150)
        .expect("an ack on a full disk is not an error");
    assert!(fs.fired() > 0, "the full disk was met");
    assert_eq!(log.stats().first_seq, 150, "the position stands in memory");
    log.save_position("sink", 150)
        .expect("a position save on a full disk is not an error");
    // Space frees: the next flush makes both durable.
    fs.disarm();
    fs.set_free_bytes(None);
    log.flush().expect("flush once space is back");
    drop(log);
    let reopened = SegmentLog::open(dir.path(), no_reserve).expect("reopen");
    assert_eq!(reopened.stats().first_seq, 150);
    assert_eq!(reopened.position("sink").expect("position"), Some(150));
    assert_eq!(reopened.stats().next_seq, 200);
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(self.dir.path()).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("umount {} failed: {other:?}", self.dir.path().display()),
        }
    }
}

/// Writes zeros to `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let zeros = vec![0u8; 64 * 1024];
    let mut written = 0;
    // Bounded by the filesystem's size.
    loop {
        match file.write(&zeros) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

#[test]
fn a_real_full_tmpfs_refuses_appends_drains_and_reopens() {
    let mount = match Tmpfs::mount("8m") {
        Ok(mount) => mount,
        Err(reason) => {
            println!("SKIPPED a_real_full_tmpfs_refuses_appends_drains_and_reopens: {reason}");
            return;
        }
    };
    let root = mount.dir.path();
    let dir = root.join("log");
    let mut config = config(Durability::EveryBatch);
    config.disk_budget_bytes = 1024 * 1024 * 1024;
    config.segment_bytes_max = 256 * 1024;
    config.reserve_bytes = 512 * 1024;
    config.disk_free_margin_bytes = 256 * 1024;
    config.sled_cache_bytes = 256 * 1024;
    let log = SegmentLog::open(&dir, config.clone()).expect("open on tmpfs");
    let effective = log.stats().disk_budget_bytes_effective;
    assert!(
        effective < 8 * 1024 * 1024,
        "the 1 GiB budget was not capped by the 8 MiB filesystem: {effective}"
    );

    // Fill the filesystem through the log until it refuses.
    let mut next = 0u64;
    let refused = loop {
        assert!(next < 1_000_000, "the log never refused");
        match append(&log, &batch(next, 50)) {
            Ok(first) => {
                assert_eq!(first, next);
                next += 50;
            }
            Err(error) => break error,
        }
    };
    assert!(
        matches!(refused, AppendError::NoSpace { .. }),
        "expected NoSpace, got {refused:?}"
    );
    assert_records(&log, next);

    // Take the rest of the space too, so the disk is truly full, then drain.
    let filler = root.join("filler");
    fill(&filler);
    let refused = append(&log, &batch(next, 50)).expect_err("append on a full disk");
    assert!(
        matches!(refused, AppendError::NoSpace { .. }),
        "expected NoSpace on a full disk, got {refused:?}"
    );
    log.consume_until(next).expect("consume on a full disk");
    std::fs::remove_file(&filler).expect("remove filler");
    assert_eq!(
        append(&log, &batch(next, 50)).expect("append after space freed"),
        next
    );
    next += 50;
    drop(log);

    // Reopen while the disk is full: the reserve makes room.
    fill(&filler);
    let log = SegmentLog::open(&dir, config).expect("reopen on a full disk");
    println!(
        "reopen on the full tmpfs: reserve file {}",
        if dir.join("reserve").exists() {
            "kept"
        } else {
            "given up"
        }
    );
    assert_eq!(log.stats().next_seq, next);
    let read = common::read_all(&log, log.stats().first_seq);
    assert_eq!(read.len(), 50);
    for (seq, bytes) in read {
        assert_eq!(bytes, common::payload(seq));
    }
    log.consume_until(next).expect("drain after reopen");
    drop(log);
}

#[test]
fn a_reserve_over_its_limit_is_refused_naming_the_field() {
    let mut config = config(Durability::Manual);
    config.reserve_bytes = spillway_storage::config::RESERVE_BYTES_MAX + 1;
    let error = config.validate().expect_err("refused");
    assert!(error.to_string().contains("reserve_bytes"), "{error}");
}

#[test]
fn a_zero_reserve_makes_no_reserve_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(Durability::Manual);
    config.reserve_bytes = 0;
    let log = SegmentLog::open(dir.path(), config).expect("open");
    common::append_records(&log, 0, 10);
    drop(log);
    assert!(!dir.path().join("reserve").exists());
}
