//! A damaged or missing manifest: `verify` calls it damage, `open` rebuilds it from the
//! segment files (moving the old one aside), `repair` fixes it offline; no segment is removed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use spillway_storage::inspect::{inspect, repair, InspectOptions};
use spillway_storage::{open, Backend, SpillLog};

const RECORDS: u64 = 600;
const CONSUMED: u64 = 100;

/// A closed log of `RECORDS` records, `CONSUMED` consumed, a named position saved; its segment files.
fn closed_log(dir: &Path) -> Vec<PathBuf> {
    let log = open(dir, common::small_config(Backend::Segment)).expect("open");
    common::append_records(log.as_ref(), 0, RECORDS);
    log.save_position("seq.sink", CONSUMED).expect("position");
    log.consume_until(CONSUMED).expect("consume");
    log.flush().expect("flush");
    drop(log);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let files = common::segment_files(dir);
    assert!(files.len() >= 3, "the test needs several segments");
    files
}

fn remove_manifest(dir: &Path) {
    fs::remove_dir_all(dir.join("manifest")).expect("remove manifest");
}

fn truncate_manifest(dir: &Path) {
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join("manifest").join("db"))
        .expect("open db")
        .set_len(100)
        .expect("truncate db");
}

fn xor_manifest(dir: &Path) {
    let db = dir.join("manifest").join("db");
    let len = fs::metadata(&db).expect("meta").len();
    for at in [len / 5, len / 2, len * 4 / 5] {
        let at = at.min(len.saturating_sub(200));
        common::flip_bytes(&db, at, 200);
    }
}

fn damaged_manifests(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("manifest.damaged-"))
        })
        .collect()
}

/// Every unconsumed record reads back from the oldest kept one, and every file is still there.
fn assert_everything_readable(log: &dyn SpillLog, files: &[PathBuf], dir: &Path) {
    let first = log.stats().first_seq;
    assert!(
        first <= CONSUMED,
        "first_seq {first} skips unconsumed records"
    );
    let (records, lost) = common::read_with_losses(log, first);
    assert!(lost.is_empty(), "{lost:?}");
    common::assert_every_seq(&records, &[], first, RECORDS);
    for file in files.iter().filter(|f| {
        // Files reclaimed by the consume before the damage are gone legitimately.
        common::segment_files(dir).contains(f)
    }) {
        assert!(file.exists());
    }
    let now = common::segment_files(dir);
    assert!(
        files.iter().filter(|f| !now.contains(f)).count() == 0,
        "a segment was removed: before {files:?}, after {now:?}"
    );
}

/// A way to damage the manifest of a closed log.
type Damage = fn(&Path);

fn check_open_rebuilds(damage: Damage, expect_moved: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = closed_log(dir.path());
    damage(dir.path());

    let report = inspect(dir.path(), InspectOptions::default())
        .expect("inspect a damaged manifest")
        .verify(&mut |_, _| {})
        .expect("verify");
    assert!(
        report
            .damage
            .iter()
            .any(|d| d.reason.contains("damaged manifest")),
        "verify must call a damaged manifest damage: {:?}",
        report.damage
    );

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open rebuilds");
    let why = log
        .recovery_report()
        .manifest_rebuilt
        .clone()
        .expect("the rebuild is reported");
    assert!(why.contains("named positions were lost"), "{why}");
    assert_everything_readable(log.as_ref(), &files, dir.path());
    assert_eq!(
        damaged_manifests(dir.path()).len(),
        usize::from(expect_moved)
    );
    // The rebuilt manifest is sound: the next open trusts it, and the log goes on.
    common::append_records(log.as_ref(), RECORDS, RECORDS + 10);
    drop(log);
    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    assert!(log.recovery_report().manifest_rebuilt.is_none());
    assert_eq!(log.stats().next_seq, RECORDS + 10);
}

#[test]
fn a_removed_manifest_is_rebuilt_from_the_segment_files() {
    check_open_rebuilds(remove_manifest, false);
}

#[test]
fn a_manifest_truncated_to_100_bytes_is_moved_aside_and_rebuilt() {
    check_open_rebuilds(truncate_manifest, true);
}

#[test]
fn a_manifest_with_200_bytes_xored_at_three_offsets_is_moved_aside_and_rebuilt() {
    check_open_rebuilds(xor_manifest, true);
}

fn set_consumed_value(dir: &Path, value: &[u8]) {
    let db = sled::open(dir.join("manifest")).expect("manifest");
    db.open_tree("meta")
        .expect("meta")
        .insert("consumed_seq", value)
        .expect("insert");
    db.flush().expect("flush");
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(50));
}

#[test]
fn a_malformed_consumed_seq_is_a_corruption_naming_the_key_and_open_rebuilds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = closed_log(dir.path());
    set_consumed_value(dir.path(), b"abc");

    let inspection = inspect(dir.path(), InspectOptions::default()).expect("inspect");
    let why = inspection.manifest_damage.clone().expect("manifest damage");
    assert!(why.contains("meta/consumed_seq"), "{why}");
    assert!(
        why.contains(&dir.path().join("manifest").display().to_string()),
        "names the real store: {why}"
    );
    let report = inspection.verify(&mut |_, _| {}).expect("verify");
    assert!(report
        .damage
        .iter()
        .any(|d| d.reason.contains("consumed_seq")));
    drop(inspection);

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open rebuilds");
    let why = log
        .recovery_report()
        .manifest_rebuilt
        .clone()
        .expect("rebuilt");
    assert!(why.contains("meta/consumed_seq"), "{why}");
    assert_everything_readable(log.as_ref(), &files, dir.path());
    assert_eq!(damaged_manifests(dir.path()).len(), 1);
}

#[test]
fn repair_fixes_each_damaged_state_and_keeps_every_record() {
    let cases: [(&str, Damage); 4] = [
        ("removed", remove_manifest),
        ("truncated", truncate_manifest),
        ("xored", xor_manifest),
        ("malformed", |dir| set_consumed_value(dir, b"abc")),
    ];
    for (name, damage) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = closed_log(dir.path());
        // One more file that holds nothing readable: repair moves it aside.
        let junk = dir
            .path()
            .join("segments")
            .join(format!("{:020}.seg", 7_000_000));
        fs::write(&junk, vec![0x5a; 4096]).expect("junk file");
        damage(dir.path());

        let report = repair(dir.path(), common::small_config(Backend::Segment)).expect("repair");
        assert!(
            report.recovery.manifest_rebuilt.is_some(),
            "{name}: {report:?}"
        );
        assert_eq!(
            report.moved_aside,
            vec![dir
                .path()
                .join("damaged")
                .join(junk.file_name().expect("name"))],
            "{name}"
        );
        assert!(!junk.exists());

        let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
        assert!(
            log.recovery_report().manifest_rebuilt.is_none(),
            "{name}: repaired state opens as is"
        );
        assert_everything_readable(log.as_ref(), &files, dir.path());
        drop(log);
        let verified = inspect(dir.path(), InspectOptions::default())
            .expect("inspect")
            .verify(&mut |_, _| {})
            .expect("verify");
        assert!(verified.damage.is_empty(), "{name}: {:?}", verified.damage);
    }
}

fn set_meta_value(dir: &Path, tree: &str, key: &str, value: &[u8]) {
    let db = sled::open(dir.join("manifest")).expect("manifest");
    db.open_tree(tree)
        .expect("tree")
        .insert(key, value)
        .expect("insert");
    db.flush().expect("flush");
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(50));
}

#[test]
fn a_malformed_position_or_tail_checkpoint_is_a_corruption_naming_the_key_and_open_rebuilds() {
    for (tree, key) in [("positions", "seq.sink"), ("meta", "tail_checkpoint")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = closed_log(dir.path());
        set_meta_value(dir.path(), tree, key, b"too short");

        let inspection = inspect(dir.path(), InspectOptions::default()).expect("inspect");
        let why = inspection.manifest_damage.clone().expect("manifest damage");
        assert!(why.contains(&format!("{tree}/{key}")), "{why}");
        drop(inspection);

        let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
        let why = log
            .recovery_report()
            .manifest_rebuilt
            .clone()
            .expect("rebuilt");
        assert!(why.contains(&format!("{tree}/{key}")), "{why}");
        assert_everything_readable(log.as_ref(), &files, dir.path());
    }
}

#[test]
fn a_sound_manifest_is_never_rebuilt_after_recovery_scanned_past_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::write_closed_log(dir.path(), 200);
    // As if killed before the checkpoint of the last records was written: open scans the whole tail.
    let db = sled::open(dir.path().join("manifest")).expect("manifest");
    db.open_tree("meta")
        .expect("meta")
        .remove("tail_checkpoint")
        .expect("remove");
    db.flush().expect("flush");
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(50));

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("open");
    log.save_position("seq.sink", 199).expect("position");
    // Consuming up to the recovered end: the manifest must know that end is synced.
    log.consume_until(199).expect("consume");
    log.flush().expect("flush");
    drop(log);
    std::thread::sleep(std::time::Duration::from_millis(50));

    let log = open(dir.path(), common::small_config(Backend::Segment)).expect("reopen");
    assert_eq!(log.recovery_report().manifest_rebuilt, None);
    assert_eq!(log.position("seq.sink").expect("position"), Some(199));
    assert_eq!(log.stats().first_seq, 199);
    assert!(files.last().expect("segment").exists());
}
