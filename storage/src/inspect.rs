//! Offline, read-only inspection and verification of a log directory.
//!
//! Nothing in the directory is written. sled writes on open, so the manifest
//! (or the sled backend's store) is copied to a temporary directory, at most
//! [`InspectOptions::copy_bytes_max`] bytes, and opened there; segment files are
//! opened read-only and read through a bounded buffer. That is what lets
//! `inspect` run on a directory a live process holds: it sees the manifest as of
//! the copy, and the live tail that was not synced yet may show as a torn tail.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::batch::RecoveryReport;
use crate::config::{Backend, LogConfig};
use crate::error::{InspectError, OpenError, StorageError};
use crate::fs::RealFs;
use crate::manifest::{Manifest, SegmentEntry, TailCheckpoint};
use crate::record::{self, ChunkHeader, CHUNK_HEADER_BYTES, FORMAT_VERSION, SEGMENT_HEADER_BYTES};
use crate::recovery::{self, ScanStart};
use crate::segment;

/// Default bound on the bytes `inspect` copies to open the manifest read-only.
pub const COPY_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Bytes read at a time while verifying a segment.
const VERIFY_BUFFER_BYTES: usize = 1024 * 1024;
/// sled's cache while the copy is open: small, we read each key once.
const INSPECT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Bounds of an inspection.
#[derive(Debug, Clone, Copy)]
pub struct InspectOptions {
    /// The most bytes copied to open the sled store read-only; a larger store is refused.
    pub copy_bytes_max: u64,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            copy_bytes_max: COPY_BYTES_MAX_DEFAULT,
        }
    }
}

/// One segment file as the manifest lists it and the disk holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Its first record's sequence number.
    pub first_seq: u64,
    /// The sequence number after its last intact record (`None` if unreadable).
    pub next_seq: Option<u64>,
    /// Its size on disk (`None` if the file is missing).
    pub file_bytes: Option<u64>,
    /// Whether it is sealed (no append reaches it again).
    pub sealed: bool,
}

/// A log directory's state, read without changing it.
#[derive(Debug)]
pub struct Inspection {
    /// The log directory.
    pub dir: PathBuf,
    /// The backend that wrote it.
    pub backend: Backend,
    /// Its format version (always this build's: another version is refused).
    pub format_version: u32,
    /// Whether a running process holds the directory's lock right now.
    pub held_by_process: bool,
    /// Every record below this is consumed (its space may not be reclaimed yet).
    pub consumed_seq: u64,
    /// The sequence number the next append gets, as far as the disk shows.
    pub next_seq: u64,
    /// Segment files, oldest first (empty for the sled backend).
    pub segments: Vec<SegmentInfo>,
    /// Segment files in the directory that the manifest does not list (left by an interrupted roll,
    /// or listed by a damaged manifest); the next open adopts them, or rebuilds the manifest.
    pub unlisted_files: Vec<PathBuf>,
    /// Why the manifest cannot be trusted (it fails to open, holds a malformed value, is
    /// missing beside segment files, or disagrees with them); the next open rebuilds it.
    pub manifest_damage: Option<String>,
    /// Named positions (consumers, watermarks), sorted by name.
    pub positions: Vec<(String, u64)>,
    /// Bytes of segment files, or of the sled store.
    pub disk_bytes: u64,
    /// What the tail scan saw past the last synced chunk, if anything is off there.
    pub tail_note: Option<String>,
    /// The synced end of the active segment the manifest recorded: first seq, next seq, file bytes.
    synced_end: Option<(u64, u64, u64)>,
    /// Segment files listed before the manifest was copied.
    files_before_copy: BTreeMap<u64, PathBuf>,
    // Field order matters: the sled handles close before the copy is removed.
    chunks: Option<sled::Tree>,
    manifest: Option<Manifest>,
    _copy: Option<TempCopy>,
}

/// A damaged range found by [`Inspection::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The file (or sled chunk) holding it.
    pub location: String,
    /// Byte offset of the first bad byte in that file.
    pub offset: u64,
    /// Sequence numbers that cannot be read, `start..end` (`end` is `None` when unknown).
    pub seqs: (u64, Option<u64>),
    /// What check failed.
    pub reason: String,
}

/// What [`Inspection::verify`] checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks whose checksums and structure passed.
    pub chunks_ok: u64,
    /// Records in those chunks.
    pub records_ok: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Damaged ranges; empty when the log is sound.
    pub damage: Vec<Damage>,
    /// A torn tail of the newest segment: an interrupted write the next open cuts, or a live process's unsynced tail.
    pub torn_tail: Option<Damage>,
}

/// Reads the state of the log in `dir` without writing to it.
///
/// # Errors
/// [`InspectError::NotALog`], a store over the copy bound, another format
/// version, or an I/O failure.
pub fn inspect(dir: &Path, options: InspectOptions) -> Result<Inspection, InspectError> {
    // Listed before the manifest is copied: with the listing after it, a live process's
    // reclaim or roll in between cannot make a sound manifest look damaged.
    let files_before_copy = recovery::list_segment_files(&RealFs, &dir.join("segments"))?;
    let has_segments = !files_before_copy.is_empty();
    let (backend, store) = if dir.join("manifest").is_dir() || has_segments {
        (Backend::Segment, dir.join("manifest"))
    } else if dir.join("sled").is_dir() {
        (Backend::Sled, dir.join("sled"))
    } else {
        return Err(InspectError::NotALog {
            path: dir.to_path_buf(),
        });
    };
    let mut inspection = Inspection {
        dir: dir.to_path_buf(),
        backend,
        format_version: FORMAT_VERSION,
        held_by_process: is_locked(&store.join("db")),
        consumed_seq: 0,
        next_seq: 0,
        segments: Vec::new(),
        unlisted_files: Vec::new(),
        manifest_damage: None,
        positions: Vec::new(),
        disk_bytes: 0,
        tail_note: None,
        synced_end: None,
        files_before_copy,
        chunks: None,
        manifest: None,
        _copy: None,
    };
    if !store.is_dir() {
        inspection.manifest_damage = Some(format!(
            "{} is missing beside segment files",
            store.display()
        ));
        inspection.describe_files_alone()?;
        return Ok(inspection);
    }
    let copy = TempCopy::of(&store, options.copy_bytes_max)?;
    inspection.disk_bytes = copy.bytes;
    let opened = Manifest::open(&copy.path, INSPECT_CACHE_BYTES, backend, u32::MAX);
    inspection._copy = Some(copy);
    let manifest = match opened {
        Ok(manifest) => manifest,
        // Name the real directory, not the copy.
        Err(OpenError::UnsupportedVersion {
            found, supported, ..
        }) => {
            return Err(OpenError::UnsupportedVersion {
                path: store.clone(),
                found,
                supported,
            }
            .into())
        }
        Err(OpenError::Storage(error))
            if backend == Backend::Segment && recovery::is_damage(&error) =>
        {
            inspection.manifest_damage =
                Some(format!("{} cannot be opened: {error}", store.display()));
            inspection.describe_files_alone()?;
            return Ok(inspection);
        }
        Err(other) => return Err(other.into()),
    };
    let values = (|| -> Result<_, StorageError> {
        let mut positions = manifest.positions()?;
        positions.sort();
        Ok((manifest.consumed_seq()?, positions))
    })();
    let (consumed_seq, positions) = match values {
        Ok(values) => values,
        Err(StorageError::Corrupt(c)) if backend == Backend::Segment => {
            inspection.manifest_damage = Some(real_store_name(&c.to_string(), &store));
            inspection.describe_files_alone()?;
            return Ok(inspection);
        }
        Err(other) => return Err(other.into()),
    };
    inspection.consumed_seq = consumed_seq;
    inspection.next_seq = consumed_seq;
    inspection.positions = positions;
    if backend == Backend::Segment && manifest.created() && has_segments {
        inspection.manifest_damage = Some(format!(
            "{} holds no format version (an empty or damaged store) beside segment files",
            store.display()
        ));
        inspection.describe_files_alone()?;
        return Ok(inspection);
    }
    inspection.manifest = Some(manifest);
    match backend {
        Backend::Segment => inspection.read_segments()?,
        Backend::Sled => {
            let Some(manifest) = &inspection.manifest else {
                unreachable!("set above")
            };
            let chunks = manifest
                .db()
                .open_tree("chunks")
                .map_err(StorageError::sled(&store))?;
            if let Some((key, _)) = chunks.last().map_err(StorageError::sled(&store))? {
                let value = chunks
                    .get(&key)
                    .map_err(StorageError::sled(&store))?
                    .unwrap_or_default();
                if let Ok(header) = ChunkHeader::decode(&value) {
                    inspection.next_seq = header.next_seq();
                }
            }
            inspection.chunks = Some(chunks);
        }
    }
    Ok(inspection)
}

/// A manifest error's text with the temporary copy's path replaced by the real store's.
fn real_store_name(text: &str, store: &Path) -> String {
    let copy_prefix = std::env::temp_dir().join("spillway-inspect-");
    match text.find(&*copy_prefix.to_string_lossy()) {
        Some(at) => {
            let rest = &text[at..];
            let end = rest.find(' ').unwrap_or(rest.len());
            format!("{}{}{}", &text[..at], store.display(), &rest[end..])
        }
        None => text.to_string(),
    }
}

/// What [`repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Segment files that held no intact chunk, moved into `DIR/damaged/` (never deleted).
    pub moved_aside: Vec<PathBuf>,
    /// What the open that followed found and repaired: a rebuilt manifest, lost ranges, a cut tail.
    pub recovery: RecoveryReport,
}

/// Repairs a closed log in `dir` so that it opens: moves segment files that hold no
/// intact chunk into `DIR/damaged/`, then opens the log once with `config`, which
/// rebuilds a damaged or missing manifest from the segment files (moving the old one
/// aside), reports lost ranges and cuts a torn tail, and closes it. Nothing intact is
/// removed and no file is deleted.
///
/// # Errors
/// The log is open in another process (its lock is held), another format version or
/// backend, or an I/O failure.
pub fn repair(dir: &Path, config: LogConfig) -> Result<RepairReport, OpenError> {
    let mut report = RepairReport::default();
    if config.backend == Backend::Segment {
        let store = dir.join("manifest");
        if is_locked(&store.join("db")) {
            return Err(StorageError::Io {
                path: store,
                source: std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the log is open in another process; stop it before repairing",
                ),
            }
            .into());
        }
        let mut moved = RecoveryReport::default();
        for (first_seq, path) in recovery::list_segment_files(&RealFs, &dir.join("segments"))? {
            let len = std::fs::metadata(&path)
                .map_err(StorageError::io(&path))?
                .len();
            let unreadable = match recovery::scan_whole_file(&RealFs, &path, first_seq)? {
                None => true,
                // A new segment holding only its header is sound; one with bytes but no intact chunk is not.
                Some(scan) => scan.first_intact_seq.is_none() && len > SEGMENT_HEADER_BYTES as u64,
            };
            if unreadable {
                recovery::set_aside(&RealFs, dir, &path, &mut moved)?;
            }
        }
        report.moved_aside = moved.moved_aside;
    }
    let log = crate::open(dir, config)?;
    report.recovery = log.recovery_report().clone();
    log.flush()?;
    drop(log);
    Ok(report)
}

/// Whether another process holds sled's exclusive lock on `db_file`.
fn is_locked(db_file: &Path) -> bool {
    File::open(db_file).is_ok_and(|file| {
        matches!(
            file.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    })
}

impl Inspection {
    fn read_segments(&mut self) -> Result<(), InspectError> {
        let dir = self.dir.join("segments");
        let mut on_disk: BTreeMap<u64, PathBuf> = BTreeMap::new();
        if dir.is_dir() {
            for entry in std::fs::read_dir(&dir).map_err(StorageError::io(&dir))? {
                let entry = entry.map_err(StorageError::io(&dir))?;
                if let Some(first_seq) = entry
                    .file_name()
                    .to_str()
                    .and_then(segment::parse_file_name)
                {
                    on_disk.insert(first_seq, entry.path());
                }
            }
        }
        let Some(manifest) = &self.manifest else {
            return self.describe_files_alone();
        };
        let read = || -> Result<_, StorageError> {
            Ok((
                manifest.segments()?,
                manifest.tail_checkpoint()?,
                manifest.lost_ranges()?,
            ))
        };
        let (entries, checkpoint) = match read() {
            Ok((entries, checkpoint, _lost)) => (entries, checkpoint),
            Err(StorageError::Corrupt(c)) => {
                let store = self.dir.join("manifest");
                self.manifest_damage = Some(real_store_name(&c.to_string(), &store));
                return self.describe_files_alone();
            }
            Err(other) => return Err(other.into()),
        };
        let listed: BTreeMap<u64, SegmentEntry> =
            entries.iter().map(|e| (e.first_seq, *e)).collect();
        let mut seen = self.files_before_copy.clone();
        seen.extend(on_disk.iter().map(|(&seq, path)| (seq, path.clone())));
        if let Some(why) =
            recovery::disagreement(&listed, &seen, self.consumed_seq, checkpoint, &dir)
        {
            self.manifest_damage = Some(why);
            return self.describe_files_alone();
        }
        self.synced_end = checkpoint
            .filter(|c| {
                entries
                    .last()
                    .is_some_and(|e| e.first_seq == c.segment_first_seq)
            })
            .map(|c: TailCheckpoint| (c.segment_first_seq, c.synced_next_seq, c.synced_file_bytes));
        self.disk_bytes = 0;
        for entry in &entries {
            let path = dir.join(segment::file_name(entry.first_seq));
            on_disk.remove(&entry.first_seq);
            let file_bytes = std::fs::metadata(&path).ok().map(|m| m.len());
            self.disk_bytes += file_bytes.unwrap_or(0);
            let next_seq = match (entry.sealed, file_bytes) {
                (Some(sealed), _) => Some(sealed.next_seq),
                (None, None) => None,
                (None, Some(len)) => {
                    let start = checkpoint
                        .filter(|c| {
                            c.segment_first_seq == entry.first_seq
                                && c.chunk_offset < len
                                && len >= c.synced_file_bytes
                        })
                        .map(|c| ScanStart {
                            offset: c.chunk_offset,
                            seq: c.chunk_first_seq,
                            payload_before: c.payload_before,
                        });
                    let file = File::open(&path).map_err(StorageError::io(&path))?;
                    let scan = recovery::scan_segment(&file, &path, entry.first_seq, len, start)?;
                    let synced = self
                        .synced_end
                        .filter(|s| s.0 == entry.first_seq && s.1 > scan.next_seq);
                    if let Some((_, synced_next_seq, synced_file_bytes)) = synced {
                        self.tail_note = Some(format!(
                            "damage below the synced end: the file holds records up to {}, \
                             {synced_next_seq} were synced ({len} of {synced_file_bytes} bytes); \
                             the next open reports them lost",
                            scan.next_seq
                        ));
                    } else if let Some(torn) = scan.torn {
                        self.tail_note = Some(format!(
                            "{} bytes after offset {} do not form an intact chunk ({}): \
                             an interrupted write past the synced end the next open cuts, or a live process's unsynced tail",
                            len - scan.valid_end,
                            scan.valid_end,
                            torn.fault
                        ));
                    }
                    if let Some(d) = scan.damaged.first() {
                        self.tail_note =
                            Some(format!("damage at offset {}: {}", d.offset, d.reason));
                    }
                    Some(scan.next_seq)
                }
            };
            self.segments.push(SegmentInfo {
                path,
                first_seq: entry.first_seq,
                next_seq,
                file_bytes,
                sealed: entry.sealed.is_some(),
            });
        }
        self.unlisted_files = on_disk.into_values().collect();
        if let Some(last) = self.segments.last() {
            self.next_seq = last
                .next_seq
                .unwrap_or(last.first_seq)
                .max(self.consumed_seq);
        }
        Ok(())
    }

    /// Describes the segment files from their own headers and chunks, as a rebuild would.
    fn describe_files_alone(&mut self) -> Result<(), InspectError> {
        let files = recovery::list_segment_files(&RealFs, &self.dir.join("segments"))?;
        self.disk_bytes = 0;
        self.segments.clear();
        let count = files.len();
        for (index, (first_seq, path)) in files.into_iter().enumerate() {
            let file_bytes = std::fs::metadata(&path).ok().map(|m| m.len());
            self.disk_bytes += file_bytes.unwrap_or(0);
            let next_seq = recovery::scan_whole_file(&RealFs, &path, first_seq)
                .map_err(|e| match e {
                    OpenError::Storage(s) => InspectError::Storage(s),
                    other => InspectError::Open(other),
                })?
                .map(|scan| scan.next_seq);
            if index == 0 {
                self.consumed_seq = first_seq;
            }
            self.segments.push(SegmentInfo {
                path,
                first_seq,
                next_seq,
                file_bytes,
                sealed: index + 1 < count,
            });
        }
        if let Some(last) = self.segments.last() {
            self.next_seq = last.next_seq.unwrap_or(last.first_seq);
        }
        Ok(())
    }

    /// Records on disk not yet consumed.
    pub fn unconsumed_records(&self) -> u64 {
        self.next_seq.saturating_sub(self.consumed_seq)
    }

    /// Checks every chunk's checksums and structure, and the sequence numbering
    /// across chunks and segments; `progress(bytes_done, bytes_total)` is called
    /// after each chunk.
    ///
    /// # Errors
    /// Only I/O or sled failures; damage is reported in the [`VerifyReport`].
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, StorageError> {
        match &self.chunks {
            Some(chunks) => verify_sled(chunks, &self.dir, self.disk_bytes, progress),
            None => self.verify_segments(progress),
        }
    }

    fn verify_segments(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, StorageError> {
        let total: u64 = self.segments.iter().filter_map(|s| s.file_bytes).sum();
        let mut report = VerifyReport::default();
        if let Some(why) = &self.manifest_damage {
            report.damage.push(Damage {
                location: self.dir.join("manifest").display().to_string(),
                offset: 0,
                seqs: (self.consumed_seq, None),
                reason: format!(
                    "damaged manifest: {why}; the next open (or inspect --repair) rebuilds it \
                     from the segment files, which are all kept, and named positions are lost"
                ),
            });
        }
        let mut expected_seq: Option<u64> = None;
        for (index, info) in self.segments.iter().enumerate() {
            let location = info.path.display().to_string();
            if let Some(expected) = expected_seq.filter(|&e| e != info.first_seq) {
                report.damage.push(Damage {
                    location: location.clone(),
                    offset: 0,
                    seqs: (expected, Some(info.first_seq)),
                    reason: format!(
                        "records {expected}..{} are in no segment (the previous one ends early)",
                        info.first_seq
                    ),
                });
            }
            let Some(len) = info.file_bytes else {
                report.damage.push(Damage {
                    location,
                    offset: 0,
                    seqs: (info.first_seq, info.next_seq),
                    reason: "the segment file is missing".into(),
                });
                expected_seq = info.next_seq;
                continue;
            };
            let is_tail = index + 1 == self.segments.len() && !info.sealed;
            let before = bytes_before(&self.segments[..index]);
            let end = verify_segment(info, len, is_tail, &mut report, &mut |done| {
                progress(before + done, total)
            })?;
            let synced = self
                .synced_end
                .filter(|s| is_tail && s.0 == info.first_seq && s.1 > end);
            if let Some((_, synced_next_seq, synced_file_bytes)) = synced {
                // Below the synced end it is damage, not a torn tail.
                let torn = report.torn_tail.take();
                report.damage.push(Damage {
                    location: location.clone(),
                    offset: torn.map_or(len, |t| t.offset),
                    seqs: (end, Some(synced_next_seq)),
                    reason: if len < synced_file_bytes {
                        format!("truncated below the synced end: {len} of {synced_file_bytes} synced bytes")
                    } else {
                        "damaged below the synced end".into()
                    },
                });
            }
            if let (true, Some(sealed_end)) = (info.sealed, info.next_seq) {
                if end < sealed_end && !report.damage.iter().any(|d| d.location == location) {
                    report.damage.push(Damage {
                        location: location.clone(),
                        offset: len,
                        seqs: (end, Some(sealed_end)),
                        reason: format!(
                            "the file ends at record {end}; the manifest says it holds records up to {sealed_end}"
                        ),
                    });
                }
            }
            expected_seq = Some(info.next_seq.filter(|_| info.sealed).unwrap_or(end));
        }
        report.bytes_checked = total;
        Ok(report)
    }
}

fn bytes_before(segments: &[SegmentInfo]) -> u64 {
    segments.iter().filter_map(|s| s.file_bytes).sum()
}

/// Walks one segment's chunks; returns the seq after its last intact record.
fn verify_segment(
    info: &SegmentInfo,
    len: u64,
    is_tail: bool,
    report: &mut VerifyReport,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, StorageError> {
    let path = &info.path;
    let location = path.display().to_string();
    let file = File::open(path).map_err(StorageError::io(path))?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let header_fault = if len < SEGMENT_HEADER_BYTES as u64 {
        Some(record::FormatFault::Short.to_string())
    } else {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut header, 0)
            .map_err(StorageError::io(path))?;
        match record::decode_segment_header(&header) {
            Ok(first) if first == info.first_seq => None,
            Ok(first) => Some(format!(
                "segment header says first seq {first}, its name says {}",
                info.first_seq
            )),
            Err(fault) => Some(fault.to_string()),
        }
    };
    if let Some(reason) = header_fault {
        report.damage.push(Damage {
            location,
            offset: 0,
            seqs: (info.first_seq, info.next_seq),
            reason: format!("segment header: {reason}"),
        });
        return Ok(info.first_seq);
    }
    let mut reader = BufReader::with_capacity(VERIFY_BUFFER_BYTES, &file);
    reader
        .seek(SeekFrom::Start(SEGMENT_HEADER_BYTES as u64))
        .map_err(StorageError::io(path))?;
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    let mut seq = info.first_seq;
    let mut chunk_header = [0u8; CHUNK_HEADER_BYTES];
    let mut body = rkyv::util::AlignedVec::<16>::new();
    while offset < len {
        let outcome = recovery::next_chunk(
            &mut reader,
            path,
            len - offset,
            seq,
            &mut chunk_header,
            &mut body,
        )?;
        match outcome {
            Ok((header, _)) => {
                report.chunks_ok += 1;
                report.records_ok += u64::from(header.record_count);
                offset += header.chunk_bytes() as u64;
                seq = header.next_seq();
                progress(offset);
            }
            Err(fault) => match recovery::next_intact_chunk(&file, path, offset, len, seq)? {
                Some((later, resumed)) => {
                    report.damage.push(Damage {
                        location: location.clone(),
                        offset,
                        seqs: (seq, Some(resumed.first_seq)),
                        reason: fault.to_string(),
                    });
                    offset = later;
                    seq = resumed.first_seq;
                    reader
                        .seek(SeekFrom::Start(later))
                        .map_err(StorageError::io(path))?;
                }
                None => {
                    let damage = Damage {
                        location: location.clone(),
                        offset,
                        seqs: (seq, None),
                        reason: format!("{fault}; {} bytes to the end of the file", len - offset),
                    };
                    if is_tail {
                        report.torn_tail = Some(damage);
                    } else {
                        report.damage.push(damage);
                    }
                    progress(len);
                    break;
                }
            },
        }
    }
    Ok(seq)
}

fn verify_sled(
    chunks: &sled::Tree,
    dir: &Path,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, StorageError> {
    let path = dir.join("sled");
    let mut report = VerifyReport::default();
    let mut expected: Option<u64> = None;
    let mut done = 0u64;
    let mut body = rkyv::util::AlignedVec::<16>::new();
    for item in chunks.iter() {
        let (key, value) = item.map_err(StorageError::sled(&path))?;
        let key_seq = key
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(u64::MAX);
        let location = format!("{} chunk {key_seq}", path.display());
        done += value.len() as u64;
        let checked = ChunkHeader::decode(&value).and_then(|header| {
            if header.first_seq != key_seq {
                return Err(record::FormatFault::BadHeader(
                    "chunk seq differs from its key",
                ));
            }
            let body_bytes = value
                .get(CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + header.body_bytes as usize)
                .ok_or(record::FormatFault::Short)?;
            body.clear();
            body.extend_from_slice(body_bytes);
            record::check_body(&header, &body).map(|_| header)
        });
        match checked {
            Ok(header) => {
                if let Some(e) = expected.filter(|&e| e != key_seq) {
                    report.damage.push(Damage {
                        location: location.clone(),
                        offset: 0,
                        seqs: (e, Some(key_seq)),
                        reason: format!("records {e}..{key_seq} are in no chunk"),
                    });
                }
                report.chunks_ok += 1;
                report.records_ok += u64::from(header.record_count);
                expected = Some(header.next_seq());
            }
            Err(fault) => {
                report.damage.push(Damage {
                    location,
                    offset: 0,
                    seqs: (key_seq, None),
                    reason: fault.to_string(),
                });
                expected = None;
            }
        }
        progress(done, total.max(done));
    }
    report.bytes_checked = done;
    Ok(report)
}

/// A copy of a sled directory in the temp directory, removed on drop.
#[derive(Debug)]
struct TempCopy {
    path: PathBuf,
    bytes: u64,
}

static COPY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempCopy {
    fn of(store: &Path, bytes_max: u64) -> Result<Self, InspectError> {
        let bytes = dir_bytes(store)?;
        if bytes > bytes_max {
            return Err(InspectError::StoreTooLarge {
                path: store.to_path_buf(),
                bytes,
                bytes_max,
            });
        }
        let path = std::env::temp_dir().join(format!(
            "spillway-inspect-{}-{}",
            std::process::id(),
            COPY_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let copy = TempCopy { path, bytes };
        copy_dir(store, &copy.path)?;
        Ok(copy)
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove inspect's manifest copy");
        }
    }
}

/// Bytes of the files under `dir` (sled's store is a flat directory plus `blobs/`).
fn dir_bytes(dir: &Path) -> Result<u64, StorageError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(StorageError::io(dir))? {
        let entry = entry.map_err(StorageError::io(dir))?;
        let meta = entry.metadata().map_err(StorageError::io(entry.path()))?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StorageError> {
    std::fs::create_dir(to).map_err(StorageError::io(to))?;
    for entry in std::fs::read_dir(from).map_err(StorageError::io(from))? {
        let entry = entry.map_err(StorageError::io(from))?;
        let target = to.join(entry.file_name());
        if entry
            .file_type()
            .map_err(StorageError::io(entry.path()))?
            .is_dir()
        {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(StorageError::io(entry.path()))?;
        }
    }
    Ok(())
}
