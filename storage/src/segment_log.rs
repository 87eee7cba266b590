//! `SegmentLog`: records in append-only segment files, the manifest in sled.
//!
//! ```text
//! DIR/manifest/                 sled: format version, backend, consumed seq, segments, named positions
//! DIR/segments/<first_seq>.seg  segment files, oldest first; the newest is the active one
//! ```
//!
//! Ordering rules that make a crash safe at any instant:
//! - a new segment file is created and synced (with its directory) before the
//!   manifest lists it; open adopts the one newest file the manifest does not list yet;
//! - a segment is synced before the manifest calls it sealed;
//! - every flush syncs the data before the manifest records the tail checkpoint (the
//!   last synced chunk and the synced end: `next_seq` and file length), so open tells
//!   a torn tail (bytes past the synced end that fail their checks: cut) from damage
//!   (a file shorter than its synced end, a bad chunk below it: the records are
//!   reported lost, the seq space is kept, the gap recorded in the manifest);
//! - the consumed position is flushed to the manifest, after syncing the data it
//!   covers, before any file it frees is removed (the removal itself is durable with
//!   the next flush); open removes an unlisted file only when
//!   the consumed position proves every record in it consumed, and moves any other
//!   file it cannot use into `DIR/damaged/`: recovery never deletes a record;
//! - a manifest that cannot be opened or read, or disagrees with the files, is moved
//!   aside (`manifest.damaged-<unix_secs>`) and rebuilt from the segment files;
//! - a failed append is undone before it returns (the batch's bytes cut from the
//!   file and the buffer and the cut synced, segments it created forgotten by the
//!   manifest before their files go), so an append that returned an error leaves no
//!   record visible; where the undo itself fails the log refuses writes until reopened.
//!
//! Every segment-file and directory operation goes through a [`Filesystem`]
//! ([`RealFs`] unless [`SegmentLog::open_with`] is given another), so tests can
//! fail any of them or drop unsynced bytes. A full disk is handled in `space.rs`.
//!
//! Memory: the write buffer (`write_buffer_bytes` plus one chunk), one cached
//! read window of at most `read_window_bytes` mapped (plus windows still held by
//! live `ReadBatch`es), sled's `cache_capacity`, and one small entry per segment.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::batch::{Backing, LogStats, LostRange, ReadBatch, RecoveryReport, SeqRange};
use crate::config::{Backend, Durability, LogConfig};
use crate::error::{AppendError, OpenError, ReadError, StorageError};
use crate::flusher::{self, Flushable, Flusher};
use crate::fs::{FileHandle, Filesystem, ReadAt, RealFs};
use crate::manifest::{Manifest, SealedInfo, SegmentEntry, TailCheckpoint};
use crate::reaper::{Reaper, Remains};
use crate::record::{
    self, ChunkHeader, RecordBytes, RecordParts, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::recovery::{self, Recovered};
use crate::segment::{self, ActiveSegment, AppendMark};
use crate::space::{Reserve, SpaceGauge};
use crate::SpillLog;

/// Read positions remembered so sequential readers skip the header walk.
const READ_HINTS_MAX: usize = 8;
/// Record slots a read reserves up front (more grow as needed).
const READ_SPANS_RESERVED: usize = 1024;

/// The default log: segment files read through a bounded mmap window, sled for the manifest.
#[derive(Debug)]
pub struct SegmentLog {
    inner: Arc<Mutex<Inner>>,
    recovery: RecoveryReport,
    // Declared last: dropped (and joined) before the final flush in `Drop`.
    flusher: Option<Flusher>,
}

#[derive(Debug)]
struct SealedSegment {
    first_seq: u64,
    info: SealedInfo,
    path: PathBuf,
    reader: Option<Arc<dyn FileHandle>>,
}

#[derive(Debug, Clone, Copy)]
struct ReadHint {
    segment_first_seq: u64,
    chunk_offset: u64,
    chunk_first_seq: u64,
}

/// The segment a read goes to.
struct SegmentRef {
    first_seq: u64,
    /// Offset after its last chunk.
    end: u64,
    /// The first seq after it: the next segment's first, or the log's end.
    next_seq: u64,
    reader: Arc<dyn FileHandle>,
    path: PathBuf,
}

impl SegmentRef {
    fn lost(&self, from: u64, next: u64, offset: u64, reason: String) -> LostRange {
        // Never empty: a reader must always make progress past damage.
        let next = next.max(from + 1);
        tracing::warn!(
            path = %self.path.display(),
            offset,
            first_seq = from,
            next_seq = next,
            %reason,
            "a read skips damaged records of the spill log"
        );
        LostRange {
            seqs: SeqRange { first: from, next },
            location: self.path.display().to_string(),
            offset,
            reason,
        }
    }
}

/// Where reading a seq starts: its chunk, or the damage met before it.
enum Located {
    Chunk(u64),
    Damaged {
        offset: u64,
        reason: String,
        /// The first seq of the next intact chunk, if the segment has one.
        resume_seq: Option<u64>,
    },
}

/// Walks chunk headers from `(offset, seq)` to the chunk holding `target`, stepping over
/// damaged chunks to the next intact one. Bounded by the segment's size.
fn locate_chunk<F: ReadAt + ?Sized>(
    file: &F,
    path: &Path,
    mut offset: u64,
    mut seq: u64,
    target: u64,
    end: u64,
) -> Result<Located, StorageError> {
    while offset < end {
        let mut bytes = [0u8; CHUNK_HEADER_BYTES];
        let decoded = if offset + CHUNK_HEADER_BYTES as u64 <= end {
            file.read_exact_at(&mut bytes, offset)
                .map_err(StorageError::io(path))?;
            ChunkHeader::decode(&bytes)
        } else {
            Err(record::FormatFault::Short)
        };
        let fault = match decoded {
            Ok(header) if header.first_seq == seq => {
                if target < header.next_seq() {
                    return Ok(Located::Chunk(offset));
                }
                offset += header.chunk_bytes() as u64;
                seq = header.next_seq();
                continue;
            }
            Ok(header) => format!("chunk starts at seq {}, expected {seq}", header.first_seq),
            Err(fault) => fault.to_string(),
        };
        match recovery::next_intact_chunk(file, path, offset, end, seq)? {
            Some((later, header)) if header.first_seq <= target => {
                offset = later;
                seq = header.first_seq;
            }
            resume => {
                return Ok(Located::Damaged {
                    offset,
                    reason: fault,
                    resume_seq: resume.map(|(_, h)| h.first_seq),
                })
            }
        }
    }
    Ok(Located::Damaged {
        offset,
        reason: format!("seq {target} not found before the segment's end"),
        resume_seq: None,
    })
}

#[derive(Debug)]
struct CachedWindow {
    segment_first_seq: u64,
    offset: u64,
    map: Arc<memmap2::Mmap>,
    /// The last chunk of this mapping that passed every check, so a read resuming inside
    /// it does not check it again: a mapping's bytes are checked once, not once per read.
    checked: Option<CheckedChunk>,
}

/// A chunk of a mapped window that passed both checksums and rkyv's validation.
#[derive(Debug)]
struct CheckedChunk {
    /// Its offset in the segment file.
    offset: u64,
    header: ChunkHeader,
    /// Its records as `(start, len)` in the window's bytes.
    spans: Vec<(usize, usize)>,
}

impl CheckedChunk {
    /// Adds its records from `seq` on to `batch`, moving `seq` past each; true once the
    /// batch is full (`max_records` records or `max_bytes` of payload).
    fn push_from(
        &self,
        seq: &mut u64,
        batch: &mut ReadBatch,
        backing: u32,
        max_records: usize,
        max_bytes: u64,
    ) -> bool {
        let skip = (*seq - self.header.first_seq) as usize;
        for &(start, len) in &self.spans[skip..] {
            batch.push_span(backing, start, len);
            *seq += 1;
            if batch.len() >= max_records || batch.payload_bytes() >= max_bytes {
                return true;
            }
        }
        false
    }
}

/// A segment file whose reads inside a mapped window come from the mapping (no syscall);
/// for walking chunk headers, which are checked as they are decoded whatever they came from.
struct WindowedFile<'a> {
    file: &'a dyn FileHandle,
    window: Option<(u64, &'a [u8])>,
}

impl ReadAt for WindowedFile<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if let Some((start, bytes)) = self.window {
            let inside = offset
                .checked_sub(start)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| bytes.get(at..at.checked_add(buf.len())?));
            if let Some(inside) = inside {
                buf.copy_from_slice(inside);
                return Ok(buf.len());
            }
        }
        self.file.read_at(buf, offset)
    }
}

#[derive(Debug)]
struct Inner {
    segments_dir: PathBuf,
    config: LogConfig,
    manifest: Manifest,
    sealed: VecDeque<SealedSegment>,
    active: ActiveSegment,
    consumed_seq: u64,
    /// Bytes of sealed segment files.
    sealed_bytes: u64,
    sealed_payload_bytes: u64,
    /// Whether anything appended or saved is not yet durable.
    dirty: bool,
    hints: VecDeque<ReadHint>,
    window: Option<CachedWindow>,
    durable_next_seq: Arc<AtomicU64>,
    /// Unconsumed ranges of records that no file holds (lost to damage), oldest first.
    gaps: Vec<LostRange>,
    fs: Arc<dyn Filesystem>,
    /// Free space and the effective disk budget.
    space: SpaceGauge,
    reserve: Reserve,
    /// Set when an undo failed: the active segment's end is unknown, writes are refused.
    poisoned: Option<String>,
    /// Consumes and position saves whose durability waited for a full disk, since open.
    deferred_on_full_disk: u64,
    /// Drops the last references to reclaimed files off the lock.
    reaper: Reaper,
    /// Whether segment files were removed since the directory was last synced: the
    /// removals become durable with the next flush (open removes a consumed file that
    /// comes back), so a reclaim does not wait for a directory sync.
    removals_unsynced: bool,
    /// Whether the tail checkpoint in the manifest's cache points at synced bytes (false
    /// once an undo cut the active segment, until the next flush records a new one).
    checkpoint_synced: bool,
}

impl SegmentLog {
    /// Opens or creates a segment log in `dir`, recovering its tail.
    ///
    /// # Errors
    /// See [`crate::open`].
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, OpenError> {
        Self::open_with(dir, config, Arc::new(RealFs))
    }

    /// [`SegmentLog::open`] with every segment-file and directory operation going through `fs`.
    ///
    /// When opening meets a full disk (ENOSPC or EDQUOT), the reserve file
    /// (`reserve_bytes`) is removed and the open retried once.
    ///
    /// # Errors
    /// See [`crate::open`].
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        fs: Arc<dyn Filesystem>,
    ) -> Result<Self, OpenError> {
        config.validate()?;
        if config.backend != Backend::Segment {
            return Err(crate::ConfigError::Invalid {
                field: "backend",
                reason: "SegmentLog::open needs backend = segment".into(),
            }
            .into());
        }
        let reserve = Reserve::new(dir, config.reserve_bytes);
        let (mut inner, recovery) = match Self::open_once(dir, &config, &fs, &reserve) {
            Err(OpenError::Storage(error)) if error.is_disk_full() && reserve.release(&*fs)? => {
                tracing::warn!(dir = %dir.display(), %error, "opening the spill log met a full disk; retrying without the reserve");
                Self::open_once(dir, &config, &fs, &reserve)?
            }
            other => other?,
        };
        // Best effort: a log on a full disk opens without its reserve and makes it once space frees.
        match reserve.ensure(&*fs, config.disk_free_margin_bytes) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                dir = %dir.display(),
                reserve_bytes = config.reserve_bytes,
                "not enough free space for the reserve file; it is made once space frees"
            ),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "could not make the reserve file")
            }
        }
        let disk_bytes = inner.disk_bytes();
        inner.space.measure(&*fs, disk_bytes);
        let durability = inner.config.durability;
        let inner = Arc::new(Mutex::new(inner));
        let flusher = flusher::for_durability(durability, &inner, dir)?;
        Ok(SegmentLog {
            inner,
            recovery,
            flusher,
        })
    }

    fn open_once(
        dir: &Path,
        config: &LogConfig,
        fs: &Arc<dyn Filesystem>,
        reserve: &Reserve,
    ) -> Result<(Inner, RecoveryReport), OpenError> {
        let recovered = recovery::recover(fs, dir, config)?;
        Inner::from_recovered(
            Arc::clone(fs),
            dir.join("segments"),
            config.clone(),
            reserve.clone(),
            recovered,
        )
    }

    /// Syncs everything and closes the log, reporting a failure that `Drop` could only log.
    pub fn close(mut self) -> Result<(), StorageError> {
        drop(self.flusher.take());
        let result = lock(&self.inner).flush().map(|_| ());
        result
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves the state as consistent as the disk
    // (every step writes the disk before memory), so continuing is safe.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        drop(self.flusher.take());
        if let Err(error) = lock(&self.inner).flush() {
            tracing::error!(%error, "flushing the spill log on close failed");
        }
    }
}

impl Inner {
    fn from_recovered(
        fs: Arc<dyn Filesystem>,
        segments_dir: PathBuf,
        config: LogConfig,
        reserve: Reserve,
        recovered: Recovered,
    ) -> Result<(Self, RecoveryReport), OpenError> {
        let sealed: VecDeque<SealedSegment> = recovered
            .sealed
            .into_iter()
            .map(|(first_seq, info, path)| SealedSegment {
                first_seq,
                info,
                path,
                reader: None,
            })
            .collect();
        let sealed_bytes = sealed.iter().map(|s| s.info.file_bytes).sum();
        let sealed_payload_bytes = sealed.iter().map(|s| s.info.payload_bytes).sum();
        let durable = Arc::new(AtomicU64::new(recovered.active.next_seq));
        let space = SpaceGauge::new(
            &segments_dir,
            config.disk_budget_bytes,
            config.disk_free_margin_bytes,
        );
        let mut inner = Inner {
            fs,
            space,
            reserve,
            poisoned: None,
            deferred_on_full_disk: 0,
            reaper: Reaper::default(),
            checkpoint_synced: false,
            removals_unsynced: false,
            segments_dir,
            config,
            manifest: recovered.manifest,
            sealed,
            active: recovered.active,
            consumed_seq: recovered.consumed_seq,
            sealed_bytes,
            sealed_payload_bytes,
            dirty: false,
            hints: VecDeque::new(),
            window: None,
            durable_next_seq: durable,
            gaps: recovered.gaps,
        };
        // Records that survived in the page cache of a killed process are made durable now,
        // and the tail checkpoint records the synced end recovery found.
        inner.flush()?;
        inner.reclaim()?;
        Ok((inner, recovered.report))
    }

    fn disk_bytes(&self) -> u64 {
        self.sealed_bytes + self.active.len()
    }

    fn append<R: RecordBytes>(&mut self, records: &[R]) -> Result<SeqRange, AppendError> {
        self.config.check_record_sizes(records)?;
        self.check_writable()?;
        let first = self.active.next_seq;
        if records.is_empty() {
            return Ok(SeqRange { first, next: first });
        }
        let needed = self.planned_bytes(records);
        let budget = self.config.disk_budget_bytes;
        let used = self.disk_bytes();
        if used + needed > budget {
            return Err(AppendError::Full {
                needed_bytes: needed,
                available_bytes: budget.saturating_sub(used),
                budget_bytes: budget,
            });
        }
        let mut fits = self.space.check_fits(&*self.fs, used, needed);
        if fits.is_err() && self.reaper.is_busy() {
            // Reclaimed files whose space is not free until the reaper lets go of them.
            self.reaper.wait_idle();
            self.space.measure(&*self.fs, used);
            fits = self.space.check_fits(&*self.fs, used, needed);
        }
        if let Err(free_bytes) = fits {
            return Err(AppendError::NoSpace {
                path: self.segments_dir.clone(),
                needed_bytes: needed + self.space.margin_bytes(),
                free_bytes,
            });
        }
        let mark = self.active.mark();
        let written = self.append_chunks(records).and_then(|()| {
            self.dirty = true;
            if self.config.durability == Durability::EveryBatch {
                self.flush()?;
            }
            Ok(())
        });
        if let Err(error) = written {
            return Err(self.undo_batch(mark, needed, error));
        }
        Ok(SeqRange {
            first,
            next: self.active.next_seq,
        })
    }

    /// Writes a batch's chunks, rolling to new segments as they fill.
    fn append_chunks<R: RecordBytes>(&mut self, records: &[R]) -> Result<(), StorageError> {
        let mut rest = records;
        while !rest.is_empty() {
            let take = record::records_for_chunk(rest, self.config.chunk_bytes_target);
            let (chunk, tail) = rest.split_at(take);
            let chunk_bytes = record::chunk_bytes_for(
                take as u64,
                chunk.iter().map(|r| r.byte_len() as u64).sum(),
            );
            if self.active.has_records()
                && self.active.len() + chunk_bytes > self.config.segment_bytes_max
            {
                self.roll()?;
            }
            self.active
                .append_chunk(chunk, self.config.write_buffer_bytes)?;
            rest = tail;
        }
        Ok(())
    }

    /// Refuses writes once an undo failed: the active segment's end is unknown.
    fn check_writable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                path: self.active.path.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Undoes a failed batch and says why it failed: `NoSpace` for a full disk.
    fn undo_batch(&mut self, mark: AppendMark, needed: u64, error: StorageError) -> AppendError {
        if self.poisoned.is_some() {
            // A roll left the manifest's view unknown: cutting now could contradict it.
            return error.into();
        }
        if error.is_disk_full() && self.active.first_seq != mark.first_seq {
            // Undoing a roll writes the manifest: make room for it.
            if let Err(release) = self.reserve.release(&*self.fs) {
                tracing::warn!(%release, "could not remove the reserve file");
            }
        }
        if let Err(undo) = self.rollback_to(mark) {
            tracing::error!(
                path = %self.active.path.display(),
                %error,
                %undo,
                "undoing a failed append failed; the log refuses writes until reopened"
            );
            self.poisoned = Some(format!("undoing a failed append ({error}) failed: {undo}"));
            return error.into();
        }
        if !error.is_disk_full() {
            return error.into();
        }
        let disk_bytes = self.disk_bytes();
        self.space.measure(&*self.fs, disk_bytes);
        let free_bytes = match self.space.last_free_bytes() {
            u64::MAX => 0,
            free => free,
        };
        tracing::warn!(
            path = %self.segments_dir.display(),
            %error,
            needed_bytes = needed,
            free_bytes,
            "the disk is full: the batch was refused and undone"
        );
        AppendError::NoSpace {
            path: self.segments_dir.clone(),
            needed_bytes: needed + self.space.margin_bytes(),
            free_bytes,
        }
    }

    /// Brings the log back to `mark`: segments created since are forgotten (the manifest
    /// first, then their files), and the mark's segment is cut back to its length then.
    fn rollback_to(&mut self, mark: AppendMark) -> Result<(), StorageError> {
        self.window = None;
        self.hints.clear();
        self.checkpoint_synced = false;
        if self.active.first_seq != mark.first_seq {
            // The manifest first, memory after: a failure here changes nothing but the manifest's cache.
            let created: Vec<u64> = std::iter::once(self.active.first_seq)
                .chain(
                    self.sealed
                        .iter()
                        .map(|s| s.first_seq)
                        .filter(|&first| first > mark.first_seq),
                )
                .collect();
            if !self.sealed.iter().any(|s| s.first_seq == mark.first_seq) {
                return Err(StorageError::Poisoned {
                    path: self.segments_dir.join(segment::file_name(mark.first_seq)),
                    reason: "the batch's first segment is gone".into(),
                });
            }
            for first_seq in &created {
                self.manifest.remove_segment(*first_seq)?;
            }
            let forgotten = self
                .manifest
                .put_segment(SegmentEntry {
                    first_seq: mark.first_seq,
                    sealed: None,
                })
                .and_then(|()| self.manifest.flush());
            if let Err(error) = forgotten {
                // Put the manifest's cache back as memory has it, so a later flush cannot
                // persist a view the files do not match.
                let listed = self
                    .sealed
                    .iter()
                    .filter(|s| s.first_seq >= mark.first_seq)
                    .map(|s| SegmentEntry {
                        first_seq: s.first_seq,
                        sealed: Some(s.info),
                    })
                    .chain(std::iter::once(SegmentEntry {
                        first_seq: self.active.first_seq,
                        sealed: None,
                    }));
                for entry in listed {
                    if let Err(restore) = self.manifest.put_segment(entry) {
                        tracing::error!(%restore, "restoring a manifest entry failed");
                    }
                }
                return Err(error);
            }
            let mut paths = vec![self.active.path.clone()];
            let mut base = None;
            while let Some(segment) = self.sealed.pop_back() {
                self.sealed_bytes -= segment.info.file_bytes;
                self.sealed_payload_bytes -= segment.info.payload_bytes;
                if segment.first_seq == mark.first_seq {
                    base = Some(segment);
                    break;
                }
                paths.push(segment.path);
            }
            let base = base.ok_or_else(|| StorageError::Poisoned {
                path: self.segments_dir.join(segment::file_name(mark.first_seq)),
                reason: "the batch's first segment is gone".into(),
            })?;
            self.active = ActiveSegment::reopen(
                &*self.fs,
                base.path,
                base.first_seq,
                base.info.next_seq,
                base.info.file_bytes,
                base.info.payload_bytes,
            )?;
            for path in paths {
                self.fs
                    .remove_file(&path)
                    .map_err(StorageError::io(&path))?;
            }
            segment::sync_dir(&*self.fs, &self.segments_dir)?;
        }
        self.active.rollback(mark)?;
        // The cut is durable with the next sync.
        self.dirty = true;
        self.durable_next_seq
            .fetch_min(mark.next_seq, Ordering::AcqRel);
        Ok(())
    }

    /// Upper bound of the bytes `records` will take on disk, new segment headers included.
    fn planned_bytes<R: RecordBytes>(&self, records: &[R]) -> u64 {
        let mut total = 0;
        let mut rest = records;
        while !rest.is_empty() {
            let take = record::records_for_chunk(rest, self.config.chunk_bytes_target);
            let payload: u64 = rest[..take].iter().map(|r| r.byte_len() as u64).sum();
            total += record::chunk_bytes_for(take as u64, payload);
            rest = &rest[take..];
        }
        let segments = total.div_ceil(self.config.segment_bytes_max) + 1;
        total + segments * SEGMENT_HEADER_BYTES as u64
    }

    /// Seals the active segment and starts the next one.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.active.sync()?;
        let info = SealedInfo {
            next_seq: self.active.next_seq,
            payload_bytes: self.active.payload_bytes,
            file_bytes: self.active.file_bytes,
        };
        let next = segment::create(&*self.fs, &self.segments_dir, info.next_seq)?;
        let listed = self
            .manifest
            .put_segment(SegmentEntry {
                first_seq: self.active.first_seq,
                sealed: Some(info),
            })
            .and_then(|()| {
                self.manifest.put_segment(SegmentEntry {
                    first_seq: next.first_seq,
                    sealed: None,
                })
            })
            .and_then(|()| self.manifest.flush());
        // The files are consistent whatever the manifest holds (the old segment is synced, the
        // new one created and synced, and open adopts an unlisted newest file), so memory moves
        // on even when listing failed; an append undoes the roll, a consume retries the flush.
        let old = std::mem::replace(&mut self.active, next);
        self.sealed_bytes += info.file_bytes;
        self.sealed_payload_bytes += info.payload_bytes;
        self.sealed.push_back(SealedSegment {
            first_seq: old.first_seq,
            info,
            path: old.path.clone(),
            reader: Some(Arc::clone(&old.reader)),
        });
        self.durable_next_seq
            .fetch_max(info.next_seq, Ordering::AcqRel);
        listed
    }

    fn flush(&mut self) -> Result<u64, StorageError> {
        // Data first, then the manifest: a durable consumed position never runs ahead of
        // durable data, and the tail checkpoint never points past synced bytes.
        self.active.sync()?;
        // Written at every flush, even for a segment without chunks: an undone append may have
        // left a checkpoint past the cut in the manifest's cache, which must not become durable.
        let (chunk_offset, chunk_first_seq, payload_before) = self.active.last_chunk.unwrap_or((
            SEGMENT_HEADER_BYTES as u64,
            self.active.first_seq,
            0,
        ));
        self.manifest.set_tail_checkpoint(TailCheckpoint {
            segment_first_seq: self.active.first_seq,
            chunk_offset,
            chunk_first_seq,
            payload_before,
            synced_next_seq: self.active.next_seq,
            synced_file_bytes: self.active.file_bytes,
        })?;
        self.checkpoint_synced = true;
        self.manifest.flush()?;
        if self.removals_unsynced {
            segment::sync_dir(&*self.fs, &self.segments_dir)?;
            self.removals_unsynced = false;
        }
        self.dirty = false;
        let next = self.active.next_seq;
        self.durable_next_seq.fetch_max(next, Ordering::AcqRel);
        Ok(next)
    }

    /// Consuming frees space, so it must work on a full disk: a step that meets
    /// ENOSPC is retried once after removing the reserve file.
    fn consume_until(&mut self, seq: u64) -> Result<(), StorageError> {
        let seq = seq.min(self.active.next_seq);
        if seq <= self.consumed_seq {
            return Ok(());
        }
        self.consumed_seq = seq;
        self.manifest.set_consumed_seq(seq)?;
        self.dirty = true;
        let persisted = match self.persist_consumed() {
            Err(error) if error.is_disk_full() && self.reserve.release(&*self.fs)? => {
                tracing::warn!(%error, "consuming met a full disk; retrying without the reserve");
                self.persist_consumed()
            }
            other => other,
        };
        match persisted {
            // A consume only frees space: on a full disk the position stands in memory (reads
            // and reclaim go by it) and becomes durable with the next flush that gets through.
            // A crash before then re-delivers, never skips.
            Err(error) if error.is_disk_full() => {
                self.dirty = true;
                self.deferred_on_full_disk += 1;
                if self.deferred_on_full_disk.is_power_of_two() {
                    tracing::warn!(
                        %error,
                        consumed_seq = seq,
                        deferred = self.deferred_on_full_disk,
                        "the disk is full: the consumed position is made durable later"
                    );
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Rolls a fully consumed active segment, reclaims consumed files, and syncs under `EveryBatch`.
    fn persist_consumed(&mut self) -> Result<(), StorageError> {
        let seq = self.consumed_seq;
        // A fully consumed active segment of some size is rolled so its space can go.
        if self.poisoned.is_none()
            && seq == self.active.next_seq
            && self.active.len() >= self.config.segment_bytes_max / 8
        {
            self.roll()?;
        }
        self.reclaim()?;
        if self.config.durability == Durability::EveryBatch {
            self.flush()?;
        }
        Ok(())
    }

    /// Removes sealed segments every record of which is consumed.
    fn reclaim(&mut self) -> Result<(), StorageError> {
        let freed = self
            .sealed
            .iter()
            .take_while(|s| s.info.next_seq <= self.consumed_seq)
            .count();
        if freed == 0 {
            return Ok(());
        }
        for segment in self.sealed.iter().take(freed) {
            self.manifest.remove_segment(segment.first_seq)?;
        }
        let consumed = self.consumed_seq;
        for gap in self.gaps.iter().filter(|g| g.seqs.next <= consumed) {
            self.manifest.remove_lost(gap.seqs.first)?;
        }
        self.gaps.retain(|g| g.seqs.next > consumed);
        if consumed <= self.durable_next_seq.load(Ordering::Acquire) && self.checkpoint_synced {
            // Every record below the consumed position is durable already (sealed segments are
            // synced when they roll) and the manifest's checkpoint points at synced bytes: the
            // manifest alone must be durable before the files go. This spares a data sync (a
            // device cache flush, milliseconds) per reclaimed segment while a producer writes.
            self.manifest.flush()?;
        } else {
            self.flush()?;
        }
        // The last references to the removed files: dropping them is what frees their page
        // cache and disk space, which the reaper does off the lock.
        let mut remains = Remains::default();
        while self
            .sealed
            .front()
            .is_some_and(|s| s.info.next_seq <= consumed)
        {
            let Some(segment) = self.sealed.front() else {
                break;
            };
            self.fs
                .remove_file(&segment.path)
                .map_err(StorageError::io(&segment.path))?;
            tracing::debug!(path = %segment.path.display(), "reclaimed a consumed segment");
            // Durable with the next flush: the removal needs no directory sync now.
            self.removals_unsynced = true;
            self.dirty = true;
            let Some(segment) = self.sealed.pop_front() else {
                break;
            };
            self.sealed_bytes -= segment.info.file_bytes;
            self.sealed_payload_bytes -= segment.info.payload_bytes;
            remains.handles.extend(segment.reader);
        }
        // Hints and the cached window into removed segments are the only stale state;
        // a hint below the consumed position in a live segment still leads reads to their chunk.
        let oldest_live = self
            .sealed
            .front()
            .map_or(self.active.first_seq, |s| s.first_seq);
        self.hints.retain(|h| h.segment_first_seq >= oldest_live);
        if self
            .window
            .as_ref()
            .is_some_and(|w| w.segment_first_seq < oldest_live)
        {
            remains.windows.extend(self.window.take().map(|w| w.map));
        }
        if self.reserve.is_missing(&*self.fs) {
            // A full disk took the reserve: free the space now, so the reserve fits again.
            drop(remains);
            // Space just freed: make the reserve again (best effort).
            if let Err(error) = self
                .reserve
                .ensure(&*self.fs, self.config.disk_free_margin_bytes)
            {
                tracing::warn!(%error, "could not make the reserve file again");
            }
            let disk_bytes = self.disk_bytes();
            self.space.measure(&*self.fs, disk_bytes);
        } else {
            // The last measure stays right: the log's bytes and the free bytes move together
            // (`effective = disk + free`), and an append short of space waits for the reaper.
            self.reaper.hand_off(remains);
        }
        Ok(())
    }

    fn read(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<ReadBatch, ReadError> {
        let next_seq = self.active.next_seq;
        if from < self.consumed_seq || from > next_seq {
            return Err(ReadError::OutOfRange {
                requested: from,
                first_seq: self.consumed_seq,
                next_seq,
            });
        }
        if from == next_seq || max_records == 0 {
            return Ok(ReadBatch::new(from));
        }
        let seg = match self.segment_for(from)? {
            Ok(seg) => seg,
            Err(lost) => return Ok(ReadBatch::lost_only(lost)),
        };
        let window = self
            .window
            .as_ref()
            .filter(|w| w.segment_first_seq == seg.first_seq);
        // The cached window's last checked chunk is the best start when it is at or before `from`.
        let checked_start = window
            .and_then(|w| w.checked.as_ref())
            .filter(|c| c.header.first_seq <= from)
            .map(|c| (c.offset, c.header.first_seq));
        let (start_offset, start_seq) = checked_start
            .into_iter()
            .chain(
                self.hints
                    .iter()
                    .filter(|h| h.segment_first_seq == seg.first_seq && h.chunk_first_seq <= from)
                    .map(|h| (h.chunk_offset, h.chunk_first_seq)),
            )
            .max_by_key(|&(_, first_seq)| first_seq)
            .unwrap_or((SEGMENT_HEADER_BYTES as u64, seg.first_seq));
        let headers = WindowedFile {
            file: &*seg.reader,
            window: window.map(|w| (w.offset, &w.map[..])),
        };
        let chunk_offset =
            match locate_chunk(&headers, &seg.path, start_offset, start_seq, from, seg.end)? {
                Located::Chunk(offset) => offset,
                Located::Damaged {
                    offset,
                    reason,
                    resume_seq,
                } => {
                    return Ok(ReadBatch::lost_only(seg.lost(
                        from,
                        resume_seq.unwrap_or(seg.next_seq),
                        offset,
                        reason,
                    )))
                }
            };
        let mut batch = ReadBatch::with_capacity(from, max_records.min(READ_SPANS_RESERVED));
        let map = self.window_for(
            seg.first_seq,
            &*seg.reader,
            &seg.path,
            chunk_offset,
            seg.end,
        )?;
        let backing = batch.add_backing(Backing::Mapped(Arc::clone(&map.0)));
        let window_start = map.1;
        let window_end = window_start + map.0.len() as u64;
        let mut offset = chunk_offset;
        let mut last_chunk = (chunk_offset, from);
        let mut seq = from;
        // `window_for` returned the cached window: it holds this read's checked chunk.
        let cache = self.window.as_mut().filter(|w| Arc::ptr_eq(&w.map, &map.0));
        let mut checked = cache.and_then(|w| w.checked.take());
        'chunks: while offset < seg.end {
            let at = (offset - window_start) as usize;
            let bytes = batch.backing_bytes(backing);
            if at + CHUNK_HEADER_BYTES > bytes.len() {
                break;
            }
            if let Some(chunk) = checked.as_ref().filter(|c| {
                c.offset == offset && c.header.first_seq <= seq && seq < c.header.next_seq()
            }) {
                // Checked when this mapping first read it: every byte read from disk is checked
                // once per mapping (the log never rewrites bytes it handed to a window).
                let header = chunk.header;
                last_chunk = (offset, header.first_seq);
                if chunk.push_from(&mut seq, &mut batch, backing, max_records, max_bytes) {
                    break 'chunks;
                }
                offset += header.chunk_bytes() as u64;
                continue;
            }
            let mut spans = checked.take().map(|c| c.spans).unwrap_or_default();
            spans.clear();
            let outcome = ChunkHeader::decode(&bytes[at..]).and_then(|header| {
                if at + header.chunk_bytes() > bytes.len() {
                    // Past the mapped window: read on from it next time, unless the chunk
                    // runs past the segment's end, which is damage.
                    return if window_end >= seg.end {
                        Err(record::FormatFault::Short)
                    } else {
                        Ok(None)
                    };
                }
                if header.next_seq() <= seq || header.first_seq > seq {
                    return Err(record::FormatFault::BadHeader(
                        "sequence number out of order",
                    ));
                }
                let body_at = at + CHUNK_HEADER_BYTES;
                let view = record::check_body(
                    &header,
                    &bytes[body_at..body_at + header.body_bytes as usize],
                )?;
                // The slices borrow the mapped window, which the batch owns through `backing`.
                let base = bytes.as_ptr() as usize;
                spans.extend((0..view.len()).map(|i| {
                    let record = view.record(i);
                    (record.as_ptr() as usize - base, record.len())
                }));
                Ok(Some(header))
            });
            let header = match outcome {
                Ok(Some(header)) => header,
                Ok(None) => break,
                // Hand out the intact records read so far; the next read reports the damage.
                Err(_) if !batch.is_empty() => break,
                Err(fault) => {
                    // An intact header numbering this seq: skip its chunk as a whole;
                    // else resume at the next chunk that passes every check.
                    let resume_seq = match ChunkHeader::decode(&bytes[at..]) {
                        Ok(h) if h.first_seq <= seq && seq < h.next_seq() => h.next_seq(),
                        _ => recovery::next_intact_chunk(
                            &*seg.reader,
                            &seg.path,
                            offset,
                            seg.end,
                            seq,
                        )?
                        .map_or(seg.next_seq, |(_, h)| h.first_seq),
                    };
                    let lost = seg.lost(
                        from,
                        resume_seq.min(seg.next_seq),
                        offset,
                        fault.to_string(),
                    );
                    return Ok(ReadBatch::lost_only(lost));
                }
            };
            last_chunk = (offset, header.first_seq);
            let chunk = checked.insert(CheckedChunk {
                offset,
                header,
                spans,
            });
            if chunk.push_from(&mut seq, &mut batch, backing, max_records, max_bytes) {
                break 'chunks;
            }
            offset += header.chunk_bytes() as u64;
        }
        if let Some(w) = self.window.as_mut().filter(|w| Arc::ptr_eq(&w.map, &map.0)) {
            w.checked = checked;
        }
        self.remember(ReadHint {
            segment_first_seq: seg.first_seq,
            chunk_offset: last_chunk.0,
            chunk_first_seq: last_chunk.1,
        });
        Ok(batch)
    }

    /// The segment holding `from`, or the lost range `from` falls in (a recorded gap,
    /// or seqs between segments that no file holds).
    fn segment_for(&mut self, from: u64) -> Result<Result<SegmentRef, LostRange>, StorageError> {
        if let Some(gap) = self
            .gaps
            .iter()
            .find(|g| g.seqs.first <= from && from < g.seqs.next)
        {
            let mut lost = gap.clone();
            lost.seqs.first = from;
            return Ok(Err(lost));
        }
        if from >= self.active.first_seq {
            // Records still in the write buffer must reach the file before it is mapped.
            self.active.write_out()?;
            return Ok(Ok(SegmentRef {
                first_seq: self.active.first_seq,
                end: self.active.file_bytes,
                next_seq: self.active.next_seq,
                reader: Arc::clone(&self.active.reader),
                path: self.active.path.clone(),
            }));
        }
        let at = self.sealed.partition_point(|s| s.first_seq <= from);
        let following = self
            .sealed
            .get(at)
            .map_or(self.active.first_seq, |s| s.first_seq);
        let in_no_file = |location: String| LostRange {
            seqs: SeqRange {
                first: from,
                next: following,
            },
            location,
            offset: 0,
            reason: "the records are in no segment file".into(),
        };
        let Some(seg) = at.checked_sub(1).map(|i| &mut self.sealed[i]) else {
            return Ok(Err(in_no_file(self.segments_dir.display().to_string())));
        };
        if from >= seg.info.next_seq {
            return Ok(Err(in_no_file(seg.path.display().to_string())));
        }
        let reader = match &seg.reader {
            Some(reader) => Arc::clone(reader),
            None => {
                let file = self
                    .fs
                    .open(&seg.path, false)
                    .map_err(StorageError::io(&seg.path))?;
                seg.reader = Some(Arc::clone(&file));
                file
            }
        };
        Ok(Ok(SegmentRef {
            first_seq: seg.first_seq,
            end: seg.info.file_bytes,
            next_seq: following,
            reader,
            path: seg.path.clone(),
        }))
    }

    /// A mapped window of the segment that holds the chunk at `chunk_offset`, and the window's start offset.
    fn window_for(
        &mut self,
        seg_first: u64,
        reader: &dyn FileHandle,
        path: &Path,
        chunk_offset: u64,
        seg_end: u64,
    ) -> Result<(Arc<memmap2::Mmap>, u64), StorageError> {
        if let Some(w) = &self.window {
            let end = w.offset + w.map.len() as u64;
            // Reuse the cached window while the chunk's header lies in it and the window reaches past it.
            if w.segment_first_seq == seg_first
                && w.offset <= chunk_offset
                && chunk_offset + CHUNK_HEADER_BYTES as u64 <= end
            {
                let header_at = (chunk_offset - w.offset) as usize;
                let fits = ChunkHeader::decode(&w.map[header_at..])
                    .is_ok_and(|h| chunk_offset + h.chunk_bytes() as u64 <= end);
                if fits {
                    return Ok((Arc::clone(&w.map), w.offset));
                }
            }
        }
        let len = (seg_end - chunk_offset).min(u64::from(self.config.read_window_bytes)) as usize;
        let map = Arc::new(segment::map_window(reader, path, chunk_offset, len)?);
        self.window = Some(CachedWindow {
            segment_first_seq: seg_first,
            offset: chunk_offset,
            map: Arc::clone(&map),
            checked: None,
        });
        Ok((map, chunk_offset))
    }

    fn remember(&mut self, hint: ReadHint) {
        if let Some(same) = self.hints.iter_mut().find(|h| {
            h.segment_first_seq == hint.segment_first_seq && h.chunk_offset == hint.chunk_offset
        }) {
            *same = hint;
            return;
        }
        if self.hints.len() == READ_HINTS_MAX {
            self.hints.pop_front();
        }
        self.hints.push_back(hint);
    }

    fn stats(&mut self) -> LogStats {
        let disk_bytes = self.disk_bytes();
        // While the reaper holds reclaimed files, their space is neither the log's nor
        // free: the last measure (taken with them counted as the log's) is the right one.
        if !self.reaper.is_busy() {
            self.space.refresh(&*self.fs, disk_bytes);
        }
        LogStats {
            disk_budget_bytes_effective: self.space.effective_budget_bytes(),
            first_seq: self.consumed_seq,
            next_seq: self.active.next_seq,
            durable_next_seq: self.durable_next_seq.load(Ordering::Acquire),
            payload_bytes: self.sealed_payload_bytes + self.active.payload_bytes,
            disk_bytes: self.disk_bytes(),
            files: self.sealed.len() as u64 + 1,
        }
    }

    fn after_position_change(&mut self) -> Result<(), StorageError> {
        self.dirty = true;
        if self.config.durability == Durability::EveryBatch {
            match self.manifest.flush() {
                // As for a consume: durable with the next flush that gets through.
                Err(error) if error.is_disk_full() => {
                    self.deferred_on_full_disk += 1;
                    if self.deferred_on_full_disk.is_power_of_two() {
                        tracing::warn!(%error, deferred = self.deferred_on_full_disk, "the disk is full: a saved position is made durable later");
                    }
                }
                other => other?,
            }
        }
        Ok(())
    }
}

impl Flushable for Inner {
    fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn flush_now(&mut self) -> Result<u64, StorageError> {
        self.flush()
    }
}

impl SpillLog for SegmentLog {
    fn append(&self, records: &[&[u8]]) -> Result<SeqRange, AppendError> {
        lock(&self.inner).append(records)
    }

    fn append_parts(&self, records: &[RecordParts<'_>]) -> Result<SeqRange, AppendError> {
        lock(&self.inner).append(records)
    }

    fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<ReadBatch, ReadError> {
        lock(&self.inner).read(from_seq, max_records, max_bytes)
    }

    fn flush(&self) -> Result<u64, StorageError> {
        lock(&self.inner).flush()
    }

    fn consume_until(&self, first_unconsumed_seq: u64) -> Result<(), StorageError> {
        lock(&self.inner).consume_until(first_unconsumed_seq)
    }

    fn save_position(&self, name: &str, seq: u64) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.manifest.save_position(name, seq)?;
        inner.after_position_change()
    }

    fn position(&self, name: &str) -> Result<Option<u64>, StorageError> {
        lock(&self.inner).manifest.position(name)
    }

    fn positions(&self) -> Result<Vec<(String, u64)>, StorageError> {
        lock(&self.inner).manifest.positions()
    }

    fn remove_position(&self, name: &str) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.manifest.remove_position(name)?;
        inner.after_position_change()
    }

    fn oldest_file_end_seq(&self) -> u64 {
        let inner = lock(&self.inner);
        inner
            .sealed
            .front()
            .map_or(inner.active.next_seq, |s| s.info.next_seq)
    }

    fn stats(&self) -> LogStats {
        lock(&self.inner).stats()
    }

    fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }
}
