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

use crate::config::Backend;
use crate::error::{InspectError, OpenError, StorageError};
use crate::manifest::Manifest;
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
    /// Segment files in the directory that the manifest does not list (left by an interrupted roll).
    pub unlisted_files: Vec<PathBuf>,
    /// Named positions (consumers, watermarks), sorted by name.
    pub positions: Vec<(String, u64)>,
    /// Bytes of segment files, or of the sled store.
    pub disk_bytes: u64,
    /// What the tail scan saw past the last synced chunk, if anything is off there.
    pub tail_note: Option<String>,
    // Field order matters: the sled handles close before the copy is removed.
    chunks: Option<sled::Tree>,
    manifest: Manifest,
    _copy: TempCopy,
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
    let (backend, store) = if dir.join("manifest").is_dir() {
        (Backend::Segment, dir.join("manifest"))
    } else if dir.join("sled").is_dir() {
        (Backend::Sled, dir.join("sled"))
    } else {
        return Err(InspectError::NotALog {
            path: dir.to_path_buf(),
        });
    };
    let held_by_process = is_locked(&store.join("db"));
    let copy = TempCopy::of(&store, options.copy_bytes_max)?;
    let manifest =
        Manifest::open(&copy.path, INSPECT_CACHE_BYTES, backend, u32::MAX).map_err(|error| {
            match error {
                // Name the real directory, not the copy.
                OpenError::UnsupportedVersion {
                    found, supported, ..
                } => OpenError::UnsupportedVersion {
                    path: store.clone(),
                    found,
                    supported,
                },
                other => other,
            }
        })?;
    let consumed_seq = manifest.consumed_seq()?;
    let mut positions = manifest.positions()?;
    positions.sort();
    let mut inspection = Inspection {
        dir: dir.to_path_buf(),
        backend,
        format_version: FORMAT_VERSION,
        held_by_process,
        consumed_seq,
        next_seq: consumed_seq,
        segments: Vec::new(),
        unlisted_files: Vec::new(),
        positions,
        disk_bytes: copy.bytes,
        tail_note: None,
        chunks: None,
        manifest,
        _copy: copy,
    };
    match backend {
        Backend::Segment => inspection.read_segments()?,
        Backend::Sled => {
            let chunks = inspection
                .manifest
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
        let entries = self.manifest.segments()?;
        let checkpoint = self.manifest.tail_checkpoint()?;
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
                        .filter(|c| c.segment_first_seq == entry.first_seq)
                        .map(|c| ScanStart {
                            offset: c.chunk_offset,
                            seq: c.chunk_first_seq,
                            payload_before: c.payload_before,
                        });
                    let file = File::open(&path).map_err(StorageError::io(&path))?;
                    match recovery::scan_tail(&file, &path, entry.first_seq, len, start) {
                        Ok(scan) => {
                            if let Some(torn) = scan.torn {
                                self.tail_note = Some(format!(
                                    "{} bytes after offset {} do not form an intact chunk ({}): \
                                     an interrupted write the next open cuts, or a live process's unsynced tail",
                                    len - scan.valid_end,
                                    scan.valid_end,
                                    torn.fault
                                ));
                            }
                            Some(scan.next_seq)
                        }
                        Err(StorageError::Corrupt(c)) => {
                            self.tail_note =
                                Some(format!("damage at offset {}: {}", c.offset, c.reason));
                            None
                        }
                        Err(other) => return Err(other.into()),
                    }
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
            Err(fault) => match recovery::valid_chunk_after(&file, path, offset, len, seq)? {
                Some(later) => {
                    let resumed = segment::read_chunk_header(&file, path, later)?;
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
