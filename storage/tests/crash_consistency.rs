//! Failing I/O and power loss, checked against a model that keeps LIVE and DURABLE apart
//! (in the manner of redb's `crash_consistency.rs`).
//!
//! proptest picks a workload (appends of random sizes, flushes, consumes, saved
//! positions), a durability, and a fault: the Nth write, fsync, set_len, read or
//! manifest flush fails once with EIO or ENOSPC (optionally followed, at the end
//! of the workload, by a power loss before the log's closing flush), or the power
//! goes off at the Nth mutating call. N is drawn from the
//! calls a fault-free run of the same workload makes, so the fault always fires.
//! After the fault the log is dropped, the power loss (if any) drops every byte
//! not synced, and the log is reopened on the real filesystem.
//!
//! What must hold (the model):
//! - the reopen succeeds (no state needs a hand-deleted directory);
//! - DURABLE: every record appended before a successful `flush` (or appended
//!   under `EveryBatch` with `Ok`) is present with its bytes and seq; without a
//!   power loss every record whose append returned `Ok` is (the page cache keeps it);
//! - nothing invented, order kept: the record read at seq s is the one appended
//!   with `Ok` at s, or, for seqs past the acknowledged ones, the record at s of
//!   the one append that failed with an error other than `NoSpace` (its undo may
//!   have been cut short by the power loss, so it may or may not survive);
//! - an append that returned `NoSpace` left nothing: right after it, `next_seq`
//!   is unchanged, the workload goes on, and its records never appear later;
//! - the consumed position is never ahead of the largest value ever passed to
//!   `consume_until`, nor behind the last one followed by a successful flush;
//! - a saved position reads back as the last value flushed or a later one saved;
//! - the reopened log takes new appends at dense seqs.

mod common;

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use spillway_storage::testing::{FailingFs, Op};
use spillway_storage::{AppendError, Backend, Durability, LogConfig, SegmentLog, SpillLog};

#[derive(Debug, Clone)]
enum Action {
    /// Records of these sizes, in one batch.
    Append(Vec<u16>),
    Flush,
    /// Consume up to this share (of 256) of the unconsumed records.
    Consume(u8),
    /// Save position "p" at this share (of 256) of the log.
    SavePosition(u8),
    /// Read a few records from this share (of 256) of the unconsumed ones; they must match (LIVE).
    Read(u8),
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The call of `op` numbered at this share (of 1000) of a clean run's calls fails once.
    Fail {
        op: Op,
        errno: i32,
        at_per_mille: u32,
        power_loss_after: bool,
    },
    /// The power goes off at this share (of 1000) of a clean run's mutating calls.
    PowerLoss { at_per_mille: u32 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => prop::collection::vec(prop_oneof![0u16..64, 64u16..700, 700u16..2000], 1..24)
            .prop_map(Action::Append),
        2 => Just(Action::Flush),
        2 => any::<u8>().prop_map(Action::Consume),
        1 => any::<u8>().prop_map(Action::SavePosition),
        2 => any::<u8>().prop_map(Action::Read),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    let op = prop_oneof![
        Just(Op::Write),
        Just(Op::Sync),
        Just(Op::SetLen),
        Just(Op::Read),
        Just(Op::ManifestFlush),
    ];
    let errno = prop_oneof![Just(libc::EIO), Just(libc::ENOSPC)];
    prop_oneof![
        3 => (op, errno, 0u32..1000, any::<bool>()).prop_map(|(op, errno, at_per_mille, power_loss_after)| {
            Fault::Fail { op, errno, at_per_mille, power_loss_after }
        }),
        2 => (0u32..1000).prop_map(|at_per_mille| Fault::PowerLoss { at_per_mille }),
    ]
}

fn config(durability: Durability) -> LogConfig {
    let mut config = common::small_config(Backend::Segment);
    config.durability = durability;
    config.reserve_bytes = 16 * 1024;
    config.disk_free_margin_bytes = 0;
    config
}

/// The bytes of the record at `seq` written by attempt `attempt`: unique per both.
fn record(seq: u64, attempt: u64, len: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + len as usize);
    out.extend(seq.to_le_bytes());
    out.extend(attempt.to_le_bytes());
    out.extend((0..len).map(|i| (seq as u16).wrapping_mul(31).wrapping_add(i) as u8));
    out
}

#[derive(Debug, Default)]
struct Model {
    /// Records whose append returned Ok, by seq.
    acked: Vec<Vec<u8>>,
    /// How many of them are durable for sure.
    durable: usize,
    /// The batch of an append that failed with an error other than NoSpace (it ends the run).
    failed: Vec<Vec<u8>>,
    consumed_acked: u64,
    consumed_durable: u64,
    consumed_requested_max: u64,
    position_durable: Option<u64>,
    /// Positions saved (Ok or not) since the last successful flush.
    positions_since: Vec<u64>,
    /// Appends refused with NoSpace.
    no_space: u64,
}

impl Model {
    fn flushed(&mut self) {
        self.durable = self.acked.len();
        self.consumed_durable = self.consumed_acked;
        if let Some(&last) = self.positions_since.last() {
            self.position_durable = Some(last);
        }
        self.positions_since.clear();
    }
}

/// Runs the workload until an error other than NoSpace, or the end; returns the model.
fn run(
    log: &SegmentLog,
    actions: &[Action],
    durability: Durability,
    fs: &FailingFs,
    mut model: Model,
) -> Model {
    for (attempt, action) in (1u64..).zip(actions) {
        let next = model.acked.len() as u64;
        match action {
            Action::Append(sizes) => {
                let records: Vec<Vec<u8>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| record(next + i as u64, attempt, len))
                    .collect();
                let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
                match log.append(&refs) {
                    Ok(range) => {
                        assert_eq!(range.first, next, "append got a seq gap");
                        model.acked.extend(records);
                        if durability == Durability::EveryBatch {
                            model.flushed();
                        }
                    }
                    Err(AppendError::NoSpace { .. }) => {
                        model.no_space += 1;
                        assert_eq!(
                            log.stats().next_seq,
                            next,
                            "an append refused with NoSpace left records visible"
                        );
                    }
                    Err(_) => {
                        model.failed = records;
                        return model;
                    }
                }
            }
            Action::Flush => match log.flush() {
                Ok(durable_next) => {
                    assert_eq!(durable_next, next);
                    model.flushed();
                }
                Err(_) => return model,
            },
            Action::Consume(share) => {
                let first = model.consumed_acked;
                let to = first + (next - first) * u64::from(*share) / 256;
                model.consumed_requested_max = model.consumed_requested_max.max(to);
                let fired = fs.fired();
                match log.consume_until(to) {
                    Ok(()) => {
                        model.consumed_acked = model.consumed_acked.max(to);
                        // A full disk met on the way defers durability to the next flush
                        // that gets through (the call still succeeds: consuming frees space).
                        if durability == Durability::EveryBatch && fs.fired() == fired {
                            model.consumed_durable = model.consumed_acked;
                        }
                    }
                    Err(_) => return model,
                }
            }
            Action::Read(share) => {
                let first = model.consumed_acked;
                let from = first + (next - first) * u64::from(*share) / 256;
                match log.read(from, 5, u64::MAX) {
                    Ok(batch) => {
                        assert_eq!(batch.first_seq(), from);
                        assert!(from == next || !batch.is_empty(), "an empty read at {from}");
                        for (seq, bytes) in batch.iter() {
                            assert_eq!(
                                bytes,
                                model.acked[seq as usize].as_slice(),
                                "live read of record {seq}"
                            );
                        }
                    }
                    Err(_) => return model,
                }
            }
            Action::SavePosition(share) => {
                let seq = next * u64::from(*share) / 256;
                model.positions_since.push(seq);
                let fired = fs.fired();
                match log.save_position("p", seq) {
                    // As for a consume: a full disk defers durability to the next flush.
                    Ok(()) if durability == Durability::EveryBatch && fs.fired() == fired => {
                        model.position_durable = Some(seq);
                        model.positions_since.clear();
                    }
                    Ok(()) => {}
                    Err(_) => return model,
                }
            }
        }
        if fs.is_dead() {
            return model;
        }
    }
    model
}

/// `only_durable`: a power loss, or a closing flush that failed, may have taken what was
/// acknowledged but not yet durable.
fn check_reopened(dir: &Path, model: &Model, durability: Durability, only_durable: bool) {
    let log = SegmentLog::open(dir, config(durability))
        .unwrap_or_else(|e| panic!("reopen after the fault failed: {e}"));
    let stats = log.stats();
    let acked = model.acked.len() as u64;
    let must_have = if only_durable {
        model.durable as u64
    } else {
        acked
    };
    assert!(
        stats.next_seq >= must_have,
        "lost records: next_seq {} after reopen, {must_have} were durable (only durable ones kept: {only_durable})",
        stats.next_seq
    );
    assert!(
        stats.next_seq <= acked + model.failed.len() as u64,
        "invented records: next_seq {} after reopen, {acked} acknowledged + {} of a failed append",
        stats.next_seq,
        model.failed.len()
    );
    let consumed_floor = model.consumed_durable.min(stats.next_seq);
    assert!(
        stats.first_seq >= consumed_floor && stats.first_seq <= model.consumed_requested_max,
        "consumed position {} outside [{consumed_floor}, {}]",
        stats.first_seq,
        model.consumed_requested_max
    );
    for (seq, bytes) in common::read_all(&log, stats.first_seq) {
        let expected = if seq < acked {
            &model.acked[seq as usize]
        } else {
            &model.failed[(seq - acked) as usize]
        };
        assert_eq!(
            &bytes, expected,
            "record {seq} is not what was appended at {seq}"
        );
    }
    let position = log.position("p").expect("position");
    let allowed: Vec<Option<u64>> = std::iter::once(model.position_durable)
        .chain(model.positions_since.iter().map(|&p| Some(p)))
        .collect();
    assert!(
        allowed.contains(&position),
        "position {position:?} is none of {allowed:?}"
    );
    // The reopened log goes on at dense seqs.
    let extra = record(stats.next_seq, u64::MAX, 10);
    let range = log.append(&[&extra]).expect("append after reopen");
    assert_eq!(range.first, stats.next_seq);
    log.flush().expect("flush after reopen");
    let read = log
        .read(range.first, 1, u64::MAX)
        .expect("read after reopen");
    assert_eq!(read.get(0), Some(extra.as_slice()));
}

/// Writes `count` records (sizes from their seq) with the real layer and closes the log,
/// so the faulted open runs recovery on an existing log; returns the model of them.
fn seed(dir: &Path, durability: Durability, count: u64) -> Model {
    let mut model = Model::default();
    if count == 0 {
        return model;
    }
    let log = SegmentLog::open(dir, config(durability)).expect("seed open");
    for start in (0..count).step_by(16) {
        let records: Vec<Vec<u8>> = (start..(start + 16).min(count))
            .map(|seq| record(seq, 0, (seq * 97 % 900) as u16))
            .collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        log.append(&refs).expect("seed append");
        model.acked.extend(records);
    }
    log.close().expect("seed close");
    model.flushed();
    model
}

/// A layer over a seeded directory: the files and the manifest written before it are durable.
fn layer_for(dir: &Path, seeded: bool) -> FailingFs {
    let fs = FailingFs::new();
    if seeded {
        fs.adopt_manifest(&dir.join("manifest"))
            .expect("adopt the manifest");
    }
    fs
}

fn case(actions: &[Action], durability: Durability, fault: Fault, seed_records: u64) {
    // A clean run counts the calls the workload makes, to place the fault among them.
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let seeded = seed(clean_dir.path(), durability, seed_records);
    let clean_fs = layer_for(clean_dir.path(), seed_records > 0);
    let log = SegmentLog::open_with(
        clean_dir.path(),
        config(durability),
        Arc::new(clean_fs.clone()),
    )
    .expect("clean open");
    let clean = run(&log, actions, durability, &clean_fs, seeded);
    assert!(clean.failed.is_empty(), "the clean run failed");
    let (count, op) = match fault {
        Fault::Fail { op, .. } => (clean_fs.count(op), Some(op)),
        Fault::PowerLoss { .. } => (clean_fs.mutations(), None),
    };
    drop(log);

    let dir = tempfile::tempdir().expect("tempdir");
    let seeded = seed(dir.path(), durability, seed_records);
    let fs = layer_for(dir.path(), seed_records > 0);
    let at_per_mille = match fault {
        Fault::Fail { at_per_mille, .. } | Fault::PowerLoss { at_per_mille } => at_per_mille,
    };
    let nth = 1 + count * u64::from(at_per_mille) / 1000;
    let power_loss = match fault {
        Fault::Fail {
            errno,
            power_loss_after,
            ..
        } => {
            fs.fail_nth(op.expect("op"), nth, errno);
            power_loss_after
        }
        Fault::PowerLoss { .. } => {
            fs.power_loss_at(nth);
            true
        }
    };
    let mut failed_at_close = false;
    let model = match SegmentLog::open_with(dir.path(), config(durability), Arc::new(fs.clone())) {
        Ok(log) => {
            let model = run(&log, actions, durability, &fs, seeded);
            if power_loss {
                // The power goes before the closing flush could sync anything.
                fs.power_off();
            }
            let fired_before_close = fs.fired();
            drop(log);
            // The closing flush met the fault: what was acknowledged but never flushed
            // (manual durability) may be gone, as the log's contract allows; what a
            // flush made durable must still be there.
            failed_at_close = fs.fired() > fired_before_close;
            model
        }
        // The fault hit the open itself: nothing more was acknowledged.
        Err(_) => seeded,
    };
    assert!(
        count == 0 || fs.fired() > 0,
        "the fault (call {nth} of {count}) never fired"
    );
    if power_loss {
        fs.apply_power_loss().expect("apply the power loss");
    }
    check_reopened(
        dir.path(),
        &model,
        durability,
        power_loss || failed_at_close,
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 64 in CI (about 15 s on 2 cores); PROPTEST_CASES raises it for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_fault_or_power_loss_keeps_every_durable_record_and_invents_none(
        actions in prop::collection::vec(action(), 1..40),
        every_batch in any::<bool>(),
        fault in fault(),
        seed_records in prop_oneof![Just(0u64), 1u64..120],
    ) {
        let durability = if every_batch { Durability::EveryBatch } else { Durability::Manual };
        case(&actions, durability, fault, seed_records);
    }
}

/// Appends, flushes and consumes enough to roll segments; a power loss at every
/// mutating call in turn, each followed by the checks above.
#[test]
fn a_power_loss_at_every_call_of_a_short_run_loses_nothing_synced() {
    let actions: Vec<Action> = (0..6)
        .flat_map(|i| {
            [
                Action::Append(vec![600; 8]),
                Action::Append(vec![40; 5]),
                if i % 2 == 0 {
                    Action::Flush
                } else {
                    Action::Consume(200)
                },
            ]
        })
        .collect();
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let clean_fs = FailingFs::new();
    let log = SegmentLog::open_with(
        clean_dir.path(),
        config(Durability::Manual),
        Arc::new(clean_fs.clone()),
    )
    .expect("clean open");
    run(
        &log,
        &actions,
        Durability::Manual,
        &clean_fs,
        Model::default(),
    );
    let mutations = clean_fs.mutations();
    drop(log);
    assert!(
        mutations > 20,
        "the run made only {mutations} mutating calls"
    );
    for nth in 1..=mutations {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FailingFs::new();
        fs.power_loss_at(nth);
        let model = match SegmentLog::open_with(
            dir.path(),
            config(Durability::Manual),
            Arc::new(fs.clone()),
        ) {
            Ok(log) => {
                let model = run(&log, &actions, Durability::Manual, &fs, Model::default());
                drop(log);
                model
            }
            Err(_) => Model::default(),
        };
        fs.apply_power_loss().expect("apply the power loss");
        check_reopened(dir.path(), &model, Durability::Manual, true);
    }
}

/// A reclaim while the active segment holds unsynced records makes only the manifest
/// durable (the consumed records are in sealed, synced segments) and leaves the
/// directory unsynced. A power loss right after it keeps the consumed position and
/// every record flushed before; the reclaimed file comes back and open removes it.
#[test]
fn a_reclaim_with_unsynced_records_in_the_active_segment_survives_a_power_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = seed(dir.path(), Durability::Manual, 200);
    let fs = layer_for(dir.path(), true);
    let log = SegmentLog::open_with(dir.path(), config(Durability::Manual), Arc::new(fs.clone()))
        .expect("open");
    // Unsynced records in the active segment.
    let tail: Vec<Vec<u8>> = (200..210).map(|seq| record(seq, 0, 40)).collect();
    let refs: Vec<&[u8]> = tail.iter().map(|r| r.as_slice()).collect();
    log.append(&refs).expect("append");
    let syncs_before = fs.count(Op::Sync);
    let end = log.oldest_file_end_seq();
    assert!(end < 200, "the oldest segment is sealed");
    log.consume_until(end).expect("consume");
    let oldest = common::segment_files(dir.path());
    assert_eq!(
        fs.count(Op::Sync),
        syncs_before,
        "no sync: the data below `end` was synced at its roll, the removal waits for a flush"
    );
    fs.power_off();
    drop(log);
    fs.apply_power_loss().expect("power loss");

    let log = SegmentLog::open(dir.path(), config(Durability::Manual)).expect("reopen");
    assert_eq!(
        log.stats().first_seq,
        end,
        "the consumed position is durable"
    );
    assert_eq!(log.recovery_report().removed_files, 1, "the file came back");
    assert!(
        log.recovery_report().lost.is_empty(),
        "{:?}",
        log.recovery_report().lost
    );
    assert_eq!(
        common::segment_files(dir.path()),
        oldest,
        "the reclaimed file is gone"
    );
    model.acked.truncate(200);
    for (seq, bytes) in common::read_all(&log, end) {
        if seq < 200 {
            assert_eq!(bytes, model.acked[seq as usize], "record {seq}");
        }
    }
    assert!(log.stats().next_seq >= 200, "every flushed record is kept");
}

/// The shrunk case proptest found: under `EveryBatch` a position save whose manifest
/// flush meets a full disk returns Ok and becomes durable with the next flush that gets
/// through, so a power loss before one may take it (the model once called it durable).
#[test]
fn a_position_saved_on_a_full_disk_is_durable_with_the_next_flush_only() {
    case(
        &[Action::SavePosition(0)],
        Durability::EveryBatch,
        Fault::Fail {
            op: Op::ManifestFlush,
            errno: libc::ENOSPC,
            at_per_mille: 750,
            power_loss_after: true,
        },
        0,
    );
}
