//! Open-time recovery of a segment log, as named steps, and the chunk scans they use.
//!
//! [`recover`] is the recipe:
//! 1. [`load_manifest`]: open the manifest and check that it agrees with the files;
//!    a manifest that fails to open, holds a malformed value, is missing beside
//!    segment files, or disagrees with them is rebuilt by [`rebuild_manifest`] from
//!    the self-describing segment files (the damaged one is moved aside, never deleted);
//! 2. [`reconcile_listed_segments`]: listed segments whose file is gone;
//! 3. [`adopt_or_set_aside_unlisted_files`]: an interrupted roll's new file is adopted,
//!    a fully consumed reclaim leftover removed, anything else moved aside;
//! 4. [`recover_segment`] for each listed segment: a sealed one is trusted when its
//!    size matches the manifest (reads check every chunk), else scanned; the active one
//!    is scanned from the manifest's tail checkpoint. Bytes past the synced end that
//!    fail their checks are a torn tail and are cut. Damage below the synced end (a
//!    file shorter than what was synced, a damaged chunk) loses records: they are
//!    reported with their seq range, never renumbered: the damaged segment is sealed
//!    at its intact end and the log goes on at the synced `next_seq`, the gap recorded
//!    in the manifest for reads to report;
//! 5. [`ensure_active_segment`]: a new active segment where the log ends.
//!
//! The tail scan's work is bounded by what was written since the last sync, and by
//! one segment (`segment_bytes_max`) at worst, whatever the log's size; a full scan
//! of every file happens only when the manifest is rebuilt.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{LostRange, RecoveryReport, SeqRange};
use crate::config::{Backend, LogConfig};
use crate::error::{Corruption, OpenError, StorageError};
use crate::fs::{Cursor, Filesystem, ReadAt};
use crate::manifest::{Manifest, SealedInfo, SegmentEntry, TailCheckpoint};
use crate::record::{
    self, ChunkHeader, FormatFault, CHUNK_ALIGN_BYTES, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::segment::{self, ActiveSegment};

/// Bytes read at a time while scanning.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;
/// Where files that hold nothing readable are moved, inside the log directory.
pub(crate) const DAMAGED_DIR: &str = "damaged";

/// What recovery hands the segment log.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub manifest: Manifest,
    /// Sealed segments, oldest first: first seq, totals, file.
    pub sealed: Vec<(u64, SealedInfo, PathBuf)>,
    pub active: ActiveSegment,
    pub consumed_seq: u64,
    /// Recorded ranges of records that are in no file, for reads to report.
    pub gaps: Vec<LostRange>,
    pub report: RecoveryReport,
}

/// The manifest's state once it is trusted.
#[derive(Debug)]
pub(crate) struct ManifestState {
    /// The file layer every segment-file operation goes through.
    pub fs: Arc<dyn Filesystem>,
    pub manifest: Manifest,
    pub consumed_seq: u64,
    pub entries: BTreeMap<u64, SegmentEntry>,
    pub checkpoint: Option<TailCheckpoint>,
    pub gaps: Vec<LostRange>,
    pub files: BTreeMap<u64, PathBuf>,
}

/// Opens the segment log in `dir`: the recipe in the module docs.
pub(crate) fn recover(
    fs: &Arc<dyn Filesystem>,
    dir: &Path,
    config: &LogConfig,
) -> Result<Recovered, OpenError> {
    let segments_dir = dir.join("segments");
    fs.create_dir_all(&segments_dir)
        .map_err(StorageError::io(&segments_dir))?;
    let mut report = RecoveryReport::default();
    let mut state = match load_manifest(fs, dir, config)? {
        Ok(state) => state,
        Err(reason) => rebuild_manifest(fs, dir, config, &reason, &mut report)?,
    };
    // The entries of segments/ and manifest/ must outlive a power loss like the files
    // in them (without this a power loss after the first open could keep the manifest
    // listing a segment and lose the directory holding it).
    segment::sync_dir(&**fs, dir)?;
    reconcile_listed_segments(&mut state, &mut report)?;
    adopt_or_set_aside_unlisted_files(dir, &mut state, &mut report)?;

    let (sealed, active, next_seq_floor) = recover_listed_segments(&mut state, &mut report)?;
    let active = ensure_active_segment(&*state.fs, dir, &state.manifest, active, next_seq_floor)?;
    record_gaps(&mut state, &sealed, &report)?;
    if state.consumed_seq > active.next_seq {
        return Err(StorageError::Corrupt(Corruption {
            location: format!("{} key meta/consumed_seq", state.manifest.path().display()),
            offset: 0,
            reason: format!(
                "consumed position {} is beyond the log's end {}",
                state.consumed_seq, active.next_seq
            ),
        })
        .into());
    }
    state.manifest.flush()?;
    Ok(Recovered {
        manifest: state.manifest,
        sealed,
        active,
        consumed_seq: state.consumed_seq,
        gaps: state.gaps,
        report,
    })
}

/// Runs [`recover_segment`] on every listed segment, oldest first; returns the sealed ones,
/// the active one if it survived, and the seq the next append must get (never below what was synced).
#[allow(clippy::type_complexity)] // three results of one walk, named at the one call site
fn recover_listed_segments(
    state: &mut ManifestState,
    report: &mut RecoveryReport,
) -> Result<(Vec<(u64, SealedInfo, PathBuf)>, Option<ActiveSegment>, u64), OpenError> {
    let mut sealed = Vec::new();
    let mut active = None;
    let mut next_seq_floor = state.consumed_seq;
    let count = state.entries.len();
    for (index, entry) in std::mem::take(&mut state.entries).into_values().enumerate() {
        let path = state.files[&entry.first_seq].clone();
        let is_last = index + 1 == count;
        match recover_segment(state, entry, path, is_last, report)? {
            Segment::Sealed(first_seq, info, path, changed) => {
                if changed {
                    state.manifest.put_segment(SegmentEntry {
                        first_seq,
                        sealed: Some(info),
                    })?;
                }
                next_seq_floor = next_seq_floor.max(info.next_seq);
                sealed.push((first_seq, info, path));
            }
            Segment::Active(segment) => active = Some(segment),
        }
    }
    // Records lost below the synced end keep their seqs.
    for lost in &report.lost {
        next_seq_floor = next_seq_floor.max(lost.seqs.next);
    }
    Ok((sealed, active, next_seq_floor))
}

/// Opens the manifest and reads every value; `Ok(Err(why))` when it cannot be trusted.
///
/// # Errors
/// Another format version or backend, or an I/O failure (a held lock, a full disk):
/// those are not damage, and moving the manifest aside would make things worse.
pub(crate) fn load_manifest(
    fs: &Arc<dyn Filesystem>,
    dir: &Path,
    config: &LogConfig,
) -> Result<Result<ManifestState, String>, OpenError> {
    let segments_dir = dir.join("segments");
    let files = list_segment_files(&**fs, &segments_dir)?;
    let path = dir.join("manifest");
    if !path.exists() && !files.is_empty() {
        return Ok(Err(format!(
            "{} is missing beside {} segment files",
            path.display(),
            files.len()
        )));
    }
    let manifest = match Manifest::open_with(
        &path,
        config.sled_cache_bytes,
        Backend::Segment,
        config.positions_max,
        Some(Arc::clone(fs)),
    ) {
        Ok(manifest) => manifest,
        Err(OpenError::Storage(error)) if is_damage(&error) => {
            return Ok(Err(format!("the manifest cannot be opened: {error}")))
        }
        Err(other) => return Err(other),
    };
    if manifest.created() && !files.is_empty() {
        return Ok(Err(format!(
            "{} holds no format version (an empty or damaged store) beside {} segment files",
            path.display(),
            files.len()
        )));
    }
    let read = |manifest: &Manifest| -> Result<_, StorageError> {
        Ok((
            manifest.consumed_seq()?,
            manifest.segments()?,
            manifest.tail_checkpoint()?,
            manifest.lost_ranges()?,
            manifest.positions()?,
        ))
    };
    let (consumed_seq, entries, checkpoint, gaps, _positions) = match read(&manifest) {
        Ok(values) => values,
        Err(error) if is_damage(&error) => return Ok(Err(error.to_string())),
        Err(other) => return Err(other.into()),
    };
    let entries: BTreeMap<u64, SegmentEntry> =
        entries.into_iter().map(|e| (e.first_seq, e)).collect();
    if let Some(why) = disagreement(&entries, &files, consumed_seq, checkpoint, &segments_dir) {
        return Ok(Err(why));
    }
    Ok(Ok(ManifestState {
        fs: Arc::clone(fs),
        manifest,
        consumed_seq,
        entries,
        checkpoint,
        gaps,
        files,
    }))
}

/// Whether a store error means damaged data (rebuild) rather than an I/O failure (report it).
pub(crate) fn is_damage(error: &StorageError) -> bool {
    match error {
        StorageError::Corrupt(_) => true,
        StorageError::Sled { source, .. } => match source {
            sled::Error::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ),
            sled::Error::Corruption { .. }
            | sled::Error::ReportableBug(_)
            | sled::Error::Unsupported(_)
            | sled::Error::CollectionNotFound(_) => true,
        },
        _ => false,
    }
}

/// Why the manifest's entries cannot describe the files in `files`, if they cannot.
///
/// A listed segment holding unconsumed records must exist; a file the manifest does
/// not list must be either the one new file of an interrupted roll (newer than every
/// entry) or a reclaim leftover whose every record is consumed; and the consumed
/// position cannot be past what was synced.
pub(crate) fn disagreement(
    entries: &BTreeMap<u64, SegmentEntry>,
    files: &BTreeMap<u64, PathBuf>,
    consumed_seq: u64,
    checkpoint: Option<TailCheckpoint>,
    segments_dir: &Path,
) -> Option<String> {
    for entry in entries.values() {
        let consumed = entry.sealed.is_some_and(|s| s.next_seq <= consumed_seq);
        if !files.contains_key(&entry.first_seq) && !consumed {
            return Some(format!(
                "the manifest lists {} (records from seq {}), which is missing",
                segments_dir
                    .join(segment::file_name(entry.first_seq))
                    .display(),
                entry.first_seq
            ));
        }
    }
    let newest_listed = entries.keys().next_back().copied();
    let mut newer_unlisted = 0;
    for (&first_seq, path) in files {
        if entries.contains_key(&first_seq) {
            continue;
        }
        if newest_listed.is_none_or(|newest| first_seq > newest) {
            newer_unlisted += 1;
            continue;
        }
        if !proven_consumed(first_seq, entries, files, consumed_seq) {
            return Some(format!(
                "{} holds records from seq {first_seq} that the manifest neither lists nor counts as consumed",
                path.display()
            ));
        }
    }
    // An interrupted roll leaves exactly one new file behind.
    if newer_unlisted > 1 {
        return Some(format!(
            "{newer_unlisted} segment files are newer than every segment the manifest lists"
        ));
    }
    if let Some(&newest) = entries.keys().next_back() {
        let synced = checkpoint
            .filter(|c| c.segment_first_seq == newest)
            .map_or(newest, |c| c.synced_next_seq.max(newest));
        if consumed_seq > synced {
            return Some(format!(
                "the consumed position {consumed_seq} is past the synced end {synced}"
            ));
        }
    }
    None
}

/// Whether every record of the file starting at `first_seq` is below the consumed position:
/// the next file (listed or not) starts at or below it.
fn proven_consumed(
    first_seq: u64,
    entries: &BTreeMap<u64, SegmentEntry>,
    files: &BTreeMap<u64, PathBuf>,
    consumed_seq: u64,
) -> bool {
    let next_listed = entries.range(first_seq + 1..).next().map(|(&s, _)| s);
    let next_file = files.range(first_seq + 1..).next().map(|(&s, _)| s);
    let next = match (next_listed, next_file) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => match a.or(b) {
            Some(next) => next,
            None => return false,
        },
    };
    next <= consumed_seq
}

/// Moves the damaged manifest aside and writes a new one from a full scan of every segment file.
///
/// The consumed position becomes the oldest intact record's seq (re-delivery is the safe
/// direction); named positions are lost, which the report says.
pub(crate) fn rebuild_manifest(
    fs: &Arc<dyn Filesystem>,
    dir: &Path,
    config: &LogConfig,
    reason: &str,
    report: &mut RecoveryReport,
) -> Result<ManifestState, OpenError> {
    let path = dir.join("manifest");
    let moved = if path.exists() {
        Some(move_manifest_aside(&**fs, dir)?)
    } else {
        None
    };
    tracing::warn!(
        manifest = %path.display(),
        moved_to = ?moved,
        %reason,
        "the manifest is damaged or missing; rebuilding it from the segment files (named positions are lost)"
    );
    let manifest = Manifest::open_with(
        &path,
        config.sled_cache_bytes,
        Backend::Segment,
        config.positions_max,
        Some(Arc::clone(fs)),
    )?;
    let segments_dir = dir.join("segments");
    let mut files = list_segment_files(&**fs, &segments_dir)?;
    let mut entries = BTreeMap::new();
    let mut consumed_seq = None;
    let mut scanned = Vec::new();
    for (&first_seq, file_path) in files.clone().iter() {
        let len = fs
            .open(file_path, false)
            .and_then(|file| file.len())
            .map_err(StorageError::io(file_path))?;
        let scan = scan_whole_file(&**fs, file_path, first_seq)?
            // Bytes but no intact chunk: listing it would let the consumed position pass it
            // and a reclaim delete it; it is kept aside instead.
            .filter(|scan| scan.first_intact_seq.is_some() || len <= SEGMENT_HEADER_BYTES as u64);
        let Some(scan) = scan else {
            set_aside(&**fs, dir, file_path, report)?;
            files.remove(&first_seq);
            continue;
        };
        report.scanned_bytes += scan.valid_end;
        if consumed_seq.is_none() {
            consumed_seq = scan.first_intact_seq;
        }
        report.lost.extend(scan.damaged.iter().cloned());
        scanned.push((first_seq, scan));
    }
    // Seqs between one file's intact end and the next file's start are in no file: lost.
    for pair in scanned.windows(2) {
        let (end, next) = (pair[0].1.next_seq, pair[1].0);
        lose(
            report,
            &files[&next],
            0,
            end..next,
            "the records are in no segment file (a file is missing or ends early)".into(),
        );
    }
    let count = scanned.len();
    for (index, (first_seq, scan)) in scanned.into_iter().enumerate() {
        // The newest file is the active one; recovery cuts its torn tail as usual.
        let sealed = (index + 1 < count).then_some(SealedInfo {
            next_seq: scan.next_seq,
            payload_bytes: scan.payload_bytes,
            file_bytes: scan.valid_end,
        });
        let entry = SegmentEntry { first_seq, sealed };
        manifest.put_segment(entry)?;
        entries.insert(first_seq, entry);
    }
    let consumed_seq = consumed_seq.unwrap_or_else(|| entries.keys().next().copied().unwrap_or(0));
    manifest.set_consumed_seq(consumed_seq)?;
    manifest.flush()?;
    report.manifest_rebuilt = Some(format!(
        "{reason}; rebuilt from {} segment files{}; named positions were lost, \
         consumers resume from the oldest record (seq {consumed_seq})",
        entries.len(),
        moved.map_or(String::new(), |m| format!(
            ", the damaged manifest moved to {}",
            m.display()
        )),
    ));
    Ok(ManifestState {
        fs: Arc::clone(fs),
        manifest,
        consumed_seq,
        entries,
        checkpoint: None,
        gaps: Vec::new(),
        files,
    })
}

/// Renames `DIR/manifest` to `DIR/manifest.damaged-<unix_secs>[-n]`; returns the new path.
fn move_manifest_aside(fs: &dyn Filesystem, dir: &Path) -> Result<PathBuf, StorageError> {
    let from = dir.join("manifest");
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = dir.join(format!("manifest.damaged-{secs}"));
    let mut n = 1;
    while to.exists() {
        to = dir.join(format!("manifest.damaged-{secs}-{n}"));
        n += 1;
    }
    fs.rename(&from, &to).map_err(StorageError::io(&from))?;
    segment::sync_dir(fs, dir)?;
    Ok(to)
}

/// Moves a file into `DIR/damaged/` (never deletes it) and reports it.
pub(crate) fn set_aside(
    fs: &dyn Filesystem,
    dir: &Path,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<PathBuf, StorageError> {
    let damaged = dir.join(DAMAGED_DIR);
    let created = fs
        .create_dir_all(&damaged)
        .map_err(StorageError::io(&damaged))?;
    if created {
        // damaged/ itself must survive a power loss, or the file moved into it would not.
        segment::sync_dir(fs, dir)?;
    }
    let name = path.file_name().unwrap_or_default();
    let to = damaged.join(name);
    tracing::warn!(path = %path.display(), to = %to.display(), "moving a segment file that holds nothing readable aside");
    fs.rename(path, &to).map_err(StorageError::io(path))?;
    segment::sync_dir(fs, &damaged)?;
    if let Some(parent) = path.parent() {
        segment::sync_dir(fs, parent)?;
    }
    report.moved_aside.push(to.clone());
    Ok(to)
}

/// Scans a whole segment file; `None` when its header is damaged (a version mismatch is an error).
pub(crate) fn scan_whole_file(
    fs: &dyn Filesystem,
    path: &Path,
    first_seq: u64,
) -> Result<Option<SegmentScan>, OpenError> {
    let file = fs.open(path, false).map_err(StorageError::io(path))?;
    let len = file.len().map_err(StorageError::io(path))?;
    if !has_intact_header(&*file, path, len, first_seq)? {
        return Ok(None);
    }
    Ok(Some(scan_segment(&*file, path, first_seq, len, None)?))
}

/// Drops listed segments whose file is gone because a reclaim removed it before the manifest.
pub(crate) fn reconcile_listed_segments(
    state: &mut ManifestState,
    report: &mut RecoveryReport,
) -> Result<(), StorageError> {
    let missing: Vec<SegmentEntry> = state
        .entries
        .values()
        .filter(|e| !state.files.contains_key(&e.first_seq))
        .copied()
        .collect();
    for entry in missing {
        // `load_manifest` proved every missing listed segment consumed, unless it rebuilt.
        if let Some(info) = entry.sealed.filter(|s| s.next_seq > state.consumed_seq) {
            report.lost.push(LostRange {
                seqs: SeqRange {
                    first: entry.first_seq.max(state.consumed_seq),
                    next: info.next_seq,
                },
                location: segment::file_name(entry.first_seq),
                offset: 0,
                reason: "the segment file is missing".into(),
            });
        }
        state.manifest.remove_segment(entry.first_seq)?;
        state.entries.remove(&entry.first_seq);
    }
    Ok(())
}

/// Adopts the new file of an interrupted roll; removes a fully consumed reclaim leftover
/// or a file killed before its header reached the disk; moves anything else aside.
pub(crate) fn adopt_or_set_aside_unlisted_files(
    dir: &Path,
    state: &mut ManifestState,
    report: &mut RecoveryReport,
) -> Result<(), OpenError> {
    let newest_listed = state.entries.keys().next_back().copied();
    for (first_seq, path) in state.files.clone() {
        if state.entries.contains_key(&first_seq) {
            continue;
        }
        let file = state
            .fs
            .open(&path, false)
            .map_err(StorageError::io(&path))?;
        let len = file.len().map_err(StorageError::io(&path))?;
        let newest = newest_listed.is_none_or(|newest| first_seq > newest);
        if newest && has_intact_header(&*file, &path, len, first_seq)? {
            let entry = SegmentEntry {
                first_seq,
                sealed: None,
            };
            state.entries.insert(first_seq, entry);
            state.manifest.put_segment(entry)?;
            continue;
        }
        let consumed = proven_consumed(first_seq, &state.entries, &state.files, state.consumed_seq);
        if (newest && len <= SEGMENT_HEADER_BYTES as u64) || (!newest && consumed) {
            // Killed inside its creation (no record in it), or left behind by a reclaim
            // after every record in it was consumed: nothing to keep.
            tracing::warn!(path = %path.display(), "removing a segment file the manifest does not list and that holds no unconsumed record");
            state
                .fs
                .remove_file(&path)
                .map_err(StorageError::io(&path))?;
            report.removed_files += 1;
        } else {
            set_aside(&*state.fs, dir, &path, report)?;
        }
        state.files.remove(&first_seq);
    }
    Ok(())
}

/// One segment after recovery.
#[derive(Debug)]
pub(crate) enum Segment {
    /// Sealed: first seq, totals, file, whether the manifest entry must be rewritten.
    Sealed(u64, SealedInfo, PathBuf, bool),
    /// The active segment, reopened for appends.
    Active(ActiveSegment),
}

/// Recovers one listed segment: the recipe's step 4 (see the module docs).
pub(crate) fn recover_segment(
    state: &ManifestState,
    entry: SegmentEntry,
    path: PathBuf,
    is_last: bool,
    report: &mut RecoveryReport,
) -> Result<Segment, OpenError> {
    let file = state
        .fs
        .open(&path, false)
        .map_err(StorageError::io(&path))?;
    let file_len = file.len().map_err(StorageError::io(&path))?;
    let header_ok = has_intact_header(&*file, &path, file_len, entry.first_seq)?;
    match entry.sealed {
        Some(info) if header_ok && file_len == info.file_bytes => {
            Ok(Segment::Sealed(entry.first_seq, info, path, false))
        }
        Some(info) => {
            let scan = if header_ok {
                scan_segment(&*file, &path, entry.first_seq, file_len, None)?
            } else {
                SegmentScan::empty(entry.first_seq)
            };
            report.scanned_bytes += file_len;
            report.lost.extend(scan.damaged.iter().cloned());
            if scan.next_seq >= info.next_seq {
                // Longer than recorded, every recorded record intact: reads stop at the recorded end.
                return Ok(Segment::Sealed(entry.first_seq, info, path, false));
            }
            let reason = if header_ok {
                format!(
                    "sealed segment is {file_len} bytes, the manifest says {}",
                    info.file_bytes
                )
            } else {
                "segment header damaged".to_string()
            };
            lose(
                report,
                &path,
                scan.valid_end,
                scan.next_seq..info.next_seq,
                reason,
            );
            let intact = SealedInfo {
                next_seq: scan.next_seq,
                payload_bytes: scan.payload_bytes,
                file_bytes: scan.valid_end,
            };
            Ok(Segment::Sealed(entry.first_seq, intact, path, true))
        }
        None => recover_unsealed(
            state,
            entry.first_seq,
            &*file,
            path,
            file_len,
            is_last,
            report,
        ),
    }
}

/// An unsealed segment: the active one (if last) or an interrupted roll's old one.
fn recover_unsealed(
    state: &ManifestState,
    first_seq: u64,
    file: &dyn crate::fs::FileHandle,
    path: PathBuf,
    file_len: u64,
    is_last: bool,
    report: &mut RecoveryReport,
) -> Result<Segment, OpenError> {
    if !has_intact_header(file, &path, file_len, first_seq)? {
        // Nothing in it is readable; the synced end (if known) says what is lost.
        let synced = synced_end(state.checkpoint, first_seq);
        if let Some((synced_next_seq, _)) = synced.filter(|&(n, _)| n > first_seq) {
            lose(
                report,
                &path,
                0,
                first_seq..synced_next_seq,
                "segment header damaged".into(),
            );
        }
        let info = SealedInfo {
            next_seq: first_seq,
            payload_bytes: 0,
            file_bytes: SEGMENT_HEADER_BYTES as u64,
        };
        return Ok(Segment::Sealed(first_seq, info, path, true));
    }
    let synced = synced_end(state.checkpoint, first_seq);
    let start = state
        .checkpoint
        .filter(|c| {
            is_last
                && c.segment_first_seq == first_seq
                && c.chunk_offset < file_len
                && file_len >= c.synced_file_bytes
        })
        .map(|c| ScanStart {
            offset: c.chunk_offset,
            seq: c.chunk_first_seq,
            payload_before: c.payload_before,
        });
    let mut scan = scan_segment(file, &path, first_seq, file_len, start)?;
    if let Some(s) = start {
        if scan.valid_end == s.offset && (scan.torn.is_some() || !scan.damaged.is_empty()) {
            // The checkpointed chunk itself is damaged: scan the whole segment, trusting nothing.
            scan = scan_segment(file, &path, first_seq, file_len, None)?;
        }
    }
    report.scanned_bytes += file_len - start.map_or(0, |s| s.offset);
    report.lost.extend(scan.damaged.iter().cloned());
    let info = SealedInfo {
        next_seq: scan.next_seq,
        payload_bytes: scan.payload_bytes,
        file_bytes: scan.valid_end,
    };
    if let Some((synced_next_seq, synced_file_bytes)) = synced.filter(|&(n, _)| n > scan.next_seq) {
        // Damage below what was synced: keep the file as it is, seal it at its intact end,
        // and go on at the synced next_seq (ensure_active_segment) so no seq is reused.
        let reason = if file_len < synced_file_bytes {
            "truncated below the synced end".to_string()
        } else {
            scan.torn
                .as_ref()
                .map_or("damaged below the synced end".into(), |t| {
                    t.fault.to_string()
                })
        };
        lose(
            report,
            &path,
            scan.valid_end,
            scan.next_seq..synced_next_seq,
            reason,
        );
        return Ok(Segment::Sealed(first_seq, info, path, true));
    }
    if let Some(torn) = &scan.torn {
        cut_torn_tail(&*state.fs, &path, file_len, &scan, torn, report)?;
    }
    if is_last {
        let mut active = ActiveSegment::reopen(
            &*state.fs,
            path,
            first_seq,
            scan.next_seq,
            scan.valid_end,
            scan.payload_bytes,
        )?;
        // The next flush records the synced end of what survived, even before any append.
        active.last_chunk = scan.last_chunk;
        Ok(Segment::Active(active))
    } else {
        // An older segment that was never marked sealed: an interrupted roll.
        Ok(Segment::Sealed(first_seq, info, path, true))
    }
}

/// The synced `(next_seq, file_bytes)` of the segment starting at `first_seq`, if the checkpoint is about it.
fn synced_end(checkpoint: Option<TailCheckpoint>, first_seq: u64) -> Option<(u64, u64)> {
    checkpoint
        .filter(|c| c.segment_first_seq == first_seq)
        .map(|c| (c.synced_next_seq, c.synced_file_bytes))
}

/// Reports records lost to damage: a warning with the file, offset and range, and the report's entry.
fn lose(
    report: &mut RecoveryReport,
    path: &Path,
    offset: u64,
    seqs: std::ops::Range<u64>,
    reason: String,
) {
    if seqs.is_empty() {
        return;
    }
    tracing::warn!(
        path = %path.display(),
        offset,
        first_seq = seqs.start,
        next_seq = seqs.end,
        %reason,
        "records of the spill log are lost to damage below what was synced"
    );
    report.lost.push(LostRange {
        seqs: SeqRange {
            first: seqs.start,
            next: seqs.end,
        },
        location: path.display().to_string(),
        offset,
        reason,
    });
}

/// Cuts bytes past the synced end that fail their checks: an interrupted write.
fn cut_torn_tail(
    fs: &dyn Filesystem,
    path: &Path,
    file_len: u64,
    scan: &SegmentScan,
    torn: &TornTail,
    report: &mut RecoveryReport,
) -> Result<(), StorageError> {
    let cut = file_len - scan.valid_end;
    tracing::warn!(
        path = %path.display(),
        offset = scan.valid_end,
        truncated_bytes = cut,
        dropped_records = torn.dropped_records,
        fault = %torn.fault,
        "cutting a torn tail (written after the last sync) from the spill log"
    );
    let writable = fs.open(path, true).map_err(StorageError::io(path))?;
    writable
        .set_len(scan.valid_end)
        .and_then(|()| writable.sync_all())
        .map_err(StorageError::io(path))?;
    report.truncated_bytes += cut;
    report.dropped_records += torn.dropped_records;
    report.truncated_segment = Some(path.to_path_buf());
    Ok(())
}

/// The active segment recovery found, or a new one starting at `next_seq` (where the log ends).
pub(crate) fn ensure_active_segment(
    fs: &dyn Filesystem,
    dir: &Path,
    manifest: &Manifest,
    active: Option<ActiveSegment>,
    next_seq: u64,
) -> Result<ActiveSegment, StorageError> {
    if let Some(active) = active {
        return Ok(active);
    }
    let active = segment::create(fs, &dir.join("segments"), next_seq)?;
    manifest.put_segment(SegmentEntry {
        first_seq: next_seq,
        sealed: None,
    })?;
    Ok(active)
}

/// Records in the manifest every unconsumed range of seqs that no file holds, so reads report it.
fn record_gaps(
    state: &mut ManifestState,
    sealed: &[(u64, SealedInfo, PathBuf)],
    report: &RecoveryReport,
) -> Result<(), StorageError> {
    for lost in &report.lost {
        let in_no_file = sealed
            .iter()
            .map(|(_, info, _)| info.next_seq)
            .any(|end| end == lost.seqs.first);
        let known = state.gaps.iter().any(|g| g.seqs.first == lost.seqs.first);
        if in_no_file && !known && lost.seqs.next > state.consumed_seq {
            state.manifest.put_lost(lost)?;
            state.gaps.push(lost.clone());
        }
    }
    // Gaps below the consumed position are no longer read.
    let consumed = state.consumed_seq;
    for gap in state.gaps.iter().filter(|g| g.seqs.next <= consumed) {
        state.manifest.remove_lost(gap.seqs.first)?;
    }
    state.gaps.retain(|g| g.seqs.next > consumed);
    state.gaps.sort_by_key(|g| g.seqs.first);
    Ok(())
}

/// Lists `DIR/segments/*.seg` by first seq.
pub(crate) fn list_segment_files(
    fs: &dyn Filesystem,
    dir: &Path,
) -> Result<BTreeMap<u64, PathBuf>, StorageError> {
    let mut files = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    for path in fs.read_dir(dir).map_err(StorageError::io(dir))? {
        let first_seq = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(segment::parse_file_name);
        if let Some(first_seq) = first_seq {
            files.insert(first_seq, path);
        }
    }
    Ok(files)
}

/// Whether a segment file's header is complete and names `first_seq` (a version mismatch is an error).
pub(crate) fn has_intact_header<F: ReadAt + ?Sized>(
    file: &F,
    path: &Path,
    len: u64,
    first_seq: u64,
) -> Result<bool, OpenError> {
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Ok(false);
    }
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact_at(&mut header, 0)
        .map_err(StorageError::io(path))?;
    match record::decode_segment_header(&header) {
        Ok(first) => Ok(first == first_seq),
        Err(FormatFault::Version(found)) => Err(OpenError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: record::FORMAT_VERSION,
        }),
        Err(_) => Ok(false),
    }
}

/// What a scan of a segment's chunks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    /// Offset after the last intact chunk.
    pub valid_end: u64,
    /// Sequence number after the last intact record.
    pub next_seq: u64,
    /// Payload bytes of the intact records.
    pub payload_bytes: u64,
    /// The first intact record's seq, if any.
    pub first_intact_seq: Option<u64>,
    /// The last intact chunk: its offset, first seq, and the payload bytes before it.
    pub last_chunk: Option<(u64, u64, u64)>,
    /// Damaged chunks with intact chunks after them (reads skip them).
    pub damaged: Vec<LostRange>,
    /// Bytes after the last intact chunk that fail their checks, with the records their headers claimed.
    pub torn: Option<TornTail>,
}

impl SegmentScan {
    fn empty(first_seq: u64) -> Self {
        SegmentScan {
            valid_end: SEGMENT_HEADER_BYTES as u64,
            next_seq: first_seq,
            payload_bytes: 0,
            first_intact_seq: None,
            last_chunk: None,
            damaged: Vec::new(),
            torn: None,
        }
    }
}

/// Where a scan begins: the segment's first chunk, or a checkpointed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanStart {
    pub offset: u64,
    pub seq: u64,
    pub payload_before: u64,
}

/// A tail that fails its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    pub fault: FormatFault,
    pub dropped_records: u64,
}

/// Scans a segment's chunks from `start` (default: its first chunk) to `file_len`,
/// checking both checksums and the numbering; a damaged chunk followed by an intact
/// one is noted and skipped, failing bytes after the last intact chunk are the torn tail.
pub(crate) fn scan_segment<F: ReadAt + ?Sized>(
    file: &F,
    path: &Path,
    first_seq: u64,
    file_len: u64,
    start: Option<ScanStart>,
) -> Result<SegmentScan, StorageError> {
    use std::io::Seek;
    let start = start.unwrap_or(ScanStart {
        offset: SEGMENT_HEADER_BYTES as u64,
        seq: first_seq,
        payload_before: 0,
    });
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, Cursor::new(file));
    reader
        .seek(std::io::SeekFrom::Start(start.offset))
        .map_err(StorageError::io(path))?;
    let mut scan = SegmentScan {
        valid_end: start.offset,
        next_seq: start.seq,
        payload_bytes: start.payload_before,
        first_intact_seq: None,
        last_chunk: None,
        damaged: Vec::new(),
        torn: None,
    };
    let mut offset = start.offset;
    let mut seq = start.seq;
    let mut body = rkyv::util::AlignedVec::<16>::new();
    let mut header_bytes = [0u8; CHUNK_HEADER_BYTES];
    while offset < file_len {
        let outcome = next_chunk(
            &mut reader,
            path,
            file_len - offset,
            seq,
            &mut header_bytes,
            &mut body,
        )?;
        match outcome {
            Ok((header, payload)) => {
                scan.first_intact_seq.get_or_insert(header.first_seq);
                scan.last_chunk = Some((offset, header.first_seq, scan.payload_bytes));
                offset += header.chunk_bytes() as u64;
                seq = header.next_seq();
                scan.payload_bytes += payload;
                scan.valid_end = offset;
                scan.next_seq = seq;
            }
            Err(fault) => match next_intact_chunk(file, path, offset, file_len, seq)? {
                Some((later, header)) => {
                    scan.damaged.push(LostRange {
                        seqs: SeqRange {
                            first: seq,
                            next: header.first_seq,
                        },
                        location: path.display().to_string(),
                        offset,
                        reason: fault.to_string(),
                    });
                    offset = later;
                    seq = header.first_seq;
                    reader
                        .seek(std::io::SeekFrom::Start(later))
                        .map_err(StorageError::io(path))?;
                }
                None => {
                    let claimed = ChunkHeader::decode(&header_bytes)
                        .map(|h| u64::from(h.record_count))
                        .unwrap_or(0);
                    scan.torn = Some(TornTail {
                        fault,
                        dropped_records: claimed,
                    });
                    break;
                }
            },
        }
    }
    Ok(scan)
}

/// Reads one chunk; the outer error is an I/O failure, the inner one a format fault.
pub(crate) fn next_chunk(
    reader: &mut impl Read,
    path: &Path,
    remaining: u64,
    expected_seq: u64,
    header_bytes: &mut [u8; CHUNK_HEADER_BYTES],
    body: &mut rkyv::util::AlignedVec<16>,
) -> Result<Result<(ChunkHeader, u64), FormatFault>, StorageError> {
    *header_bytes = [0u8; CHUNK_HEADER_BYTES];
    if remaining < CHUNK_HEADER_BYTES as u64 {
        return Ok(Err(FormatFault::Short));
    }
    reader
        .read_exact(header_bytes)
        .map_err(StorageError::io(path))?;
    let header = match ChunkHeader::decode(header_bytes) {
        Ok(h) => h,
        Err(fault) => return Ok(Err(fault)),
    };
    if header.first_seq != expected_seq {
        return Ok(Err(FormatFault::BadHeader("sequence number out of order")));
    }
    let rest = header.chunk_bytes() - CHUNK_HEADER_BYTES;
    if rest as u64 > remaining - CHUNK_HEADER_BYTES as u64 {
        return Ok(Err(FormatFault::Short));
    }
    body.clear();
    body.resize(rest, 0);
    reader.read_exact(body).map_err(StorageError::io(path))?;
    let checked = record::check_body(&header, &body[..header.body_bytes as usize]);
    Ok(checked.map(|view| {
        let payload = (0..view.len()).map(|i| view.record(i).len() as u64).sum();
        (header, payload)
    }))
}

/// The first chunk after a damaged one at `bad_offset` that passes every check and is
/// numbered at or after `seq`: where reading resumes. Bounded by the file's size.
pub(crate) fn next_intact_chunk<F: ReadAt + ?Sized>(
    file: &F,
    path: &Path,
    bad_offset: u64,
    file_len: u64,
    seq: u64,
) -> Result<Option<(u64, ChunkHeader)>, StorageError> {
    let mut from = bad_offset;
    let mut body = rkyv::util::AlignedVec::<16>::new();
    while let Some(candidate) = valid_chunk_after(file, path, from, file_len, seq)? {
        let mut header_bytes = [0u8; CHUNK_HEADER_BYTES];
        file.read_exact_at(&mut header_bytes, candidate)
            .map_err(StorageError::io(path))?;
        if let Ok(header) = ChunkHeader::decode(&header_bytes) {
            let end = candidate + header.chunk_bytes() as u64;
            if end <= file_len {
                body.clear();
                body.resize(header.body_bytes as usize, 0);
                file.read_exact_at(&mut body, candidate + CHUNK_HEADER_BYTES as u64)
                    .map_err(StorageError::io(path))?;
                if record::check_body(&header, &body).is_ok() {
                    return Ok(Some((candidate, header)));
                }
            }
        }
        from = candidate;
    }
    Ok(None)
}

/// Looks past a damaged chunk for any valid chunk header numbered at or after `seq`.
pub(crate) fn valid_chunk_after<F: ReadAt + ?Sized>(
    file: &F,
    path: &Path,
    bad_offset: u64,
    file_len: u64,
    seq: u64,
) -> Result<Option<u64>, StorageError> {
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, Cursor::new(file));
    let mut start = bad_offset + CHUNK_ALIGN_BYTES as u64;
    let mut window = vec![0u8; SCAN_BUFFER_BYTES + CHUNK_HEADER_BYTES];
    use std::io::Seek;
    while start + CHUNK_HEADER_BYTES as u64 <= file_len {
        let len = (file_len - start).min(window.len() as u64) as usize;
        reader
            .seek(std::io::SeekFrom::Start(start))
            .map_err(StorageError::io(path))?;
        reader
            .read_exact(&mut window[..len])
            .map_err(StorageError::io(path))?;
        let mut at = 0;
        while at + CHUNK_HEADER_BYTES <= len {
            if let Ok(header) = ChunkHeader::decode(&window[at..]) {
                if header.first_seq >= seq {
                    return Ok(Some(start + at as u64));
                }
            }
            at += CHUNK_ALIGN_BYTES;
        }
        start += at as u64;
    }
    Ok(None)
}
