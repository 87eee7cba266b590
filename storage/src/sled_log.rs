//! `SledLog`: records packed in chunks (same format as segment chunks) stored as values of a sled tree.
//!
//! ```text
//! DIR/sled/   one sled db: tree "chunks" (first_seq big-endian -> chunk bytes), plus the manifest's trees
//! ```
//!
//! sled recovers its own log on open; our chunk checksums catch damage sled
//! does not see. Memory: sled keeps live values of its recent log in memory
//! whatever `cache_capacity` says (see storage-measurements.md), which is why
//! this backend is not the default.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::batch::{Backing, LogStats, LostRange, ReadBatch, RecoveryReport, SeqRange};
use crate::config::{Backend, Durability, LogConfig};
use crate::error::{AppendError, Corruption, OpenError, ReadError, StorageError};
use crate::flusher::{self, Flushable, Flusher};
use crate::manifest::Manifest;
use crate::record::{self, ChunkHeader, CHUNK_HEADER_BYTES};
use crate::SpillLog;

/// The alternative log: chunks of records inside a sled tree.
#[derive(Debug)]
pub struct SledLog {
    inner: Arc<Mutex<Inner>>,
    recovery: RecoveryReport,
    flusher: Option<Flusher>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    config: LogConfig,
    manifest: Manifest,
    chunks: sled::Tree,
    next_seq: u64,
    consumed_seq: u64,
    payload_bytes: u64,
    dirty: bool,
    durable_next_seq: Arc<AtomicU64>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SledLog {
    /// Opens or creates a sled-backed log in `dir`.
    ///
    /// # Errors
    /// See [`crate::open`].
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, OpenError> {
        config.validate()?;
        if config.backend != Backend::Sled {
            return Err(crate::ConfigError::Invalid {
                field: "backend",
                reason: "SledLog::open needs backend = sled".into(),
            }
            .into());
        }
        let path = dir.join("sled");
        let manifest = Manifest::open(
            &path,
            config.sled_cache_bytes,
            Backend::Sled,
            config.positions_max,
        )?;
        let chunks = manifest
            .db()
            .open_tree("chunks")
            .map_err(StorageError::sled(&path))?;
        let consumed_seq = manifest.consumed_seq()?;
        let last = chunks.last().map_err(StorageError::sled(&path))?;
        let mut recovery = RecoveryReport::default();
        let mut next_seq = match last {
            Some((key, value)) => match chunk_header(&key, &value, &path) {
                Ok(header) => header.next_seq(),
                // Its record count is unknown: at least its key's seq is taken.
                Err(_) => key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0) + 1,
            },
            None => consumed_seq,
        };
        next_seq = next_seq.max(consumed_seq);
        // Payload of stored chunks: known from the headers without reading record bytes beyond them.
        let mut payload_bytes = 0;
        let mut keys = chunks.iter().peekable();
        while let Some(item) = keys.next() {
            let (key, value) = item.map_err(StorageError::sled(&path))?;
            match chunk_header(&key, &value, &path) {
                Ok(header) => payload_bytes += payload_estimate(&header),
                Err(StorageError::Corrupt(c)) => {
                    let first = key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                    let next = match keys.peek() {
                        Some(Ok((k, _))) => k
                            .as_ref()
                            .try_into()
                            .map(u64::from_be_bytes)
                            .unwrap_or(next_seq),
                        _ => next_seq,
                    };
                    tracing::warn!(location = %c.location, first_seq = first, next_seq = next, reason = %c.reason, "a damaged chunk in the sled spill log: its records are lost");
                    recovery.lost.push(LostRange {
                        seqs: SeqRange { first, next },
                        location: c.location,
                        offset: 0,
                        reason: c.reason,
                    });
                }
                Err(other) => return Err(other.into()),
            }
        }
        let inner = Inner {
            path: path.clone(),
            config,
            manifest,
            chunks,
            next_seq,
            consumed_seq,
            payload_bytes,
            dirty: false,
            durable_next_seq: Arc::new(AtomicU64::new(next_seq)),
        };
        let durability = inner.config.durability;
        let inner = Arc::new(Mutex::new(inner));
        let flusher = flusher::for_durability(durability, &inner, &path)?;
        Ok(SledLog {
            inner,
            recovery,
            flusher,
        })
    }
}

fn chunk_header(key: &[u8], value: &[u8], path: &Path) -> Result<ChunkHeader, StorageError> {
    let key_seq = key.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
    let corrupt = |reason: String| {
        StorageError::Corrupt(Corruption {
            location: format!("{} chunk {key_seq}", path.display()),
            offset: 0,
            reason,
        })
    };
    let header = ChunkHeader::decode(value).map_err(|f| corrupt(f.to_string()))?;
    if header.first_seq != key_seq {
        return Err(corrupt(format!(
            "chunk header says seq {}, its key says {key_seq}",
            header.first_seq
        )));
    }
    Ok(header)
}

/// A chunk's payload bytes from its header alone (within 3 bytes of alignment), so open reads no record bytes.
fn payload_estimate(header: &ChunkHeader) -> u64 {
    u64::from(header.body_bytes)
        .saturating_sub(record::RECORD_OVERHEAD_BYTES as u64 * u64::from(header.record_count) + 8)
}

impl Drop for SledLog {
    fn drop(&mut self) {
        drop(self.flusher.take());
        if let Err(error) = lock(&self.inner).flush() {
            tracing::error!(%error, "flushing the sled log on close failed");
        }
    }
}

impl Inner {
    fn append(&mut self, records: &[&[u8]]) -> Result<SeqRange, AppendError> {
        self.config.check_record_sizes(records)?;
        let first = self.next_seq;
        if records.is_empty() {
            return Ok(SeqRange { first, next: first });
        }
        let mut batch = sled::Batch::default();
        let mut needed = 0u64;
        let mut seq = first;
        let mut rest = records;
        let mut payload = 0;
        while !rest.is_empty() {
            let take = record::records_for_chunk(rest, self.config.chunk_bytes_target);
            let mut value = Vec::new();
            let header = record::encode_chunk(&mut value, seq, &rest[..take]);
            needed += value.len() as u64;
            payload += payload_estimate(&header);
            batch.insert(&seq.to_be_bytes(), value);
            seq = header.next_seq();
            rest = &rest[take..];
        }
        let used = self
            .manifest
            .db()
            .size_on_disk()
            .map_err(StorageError::sled(&self.path))?;
        let budget = self.config.disk_budget_bytes;
        if used + needed > budget {
            return Err(AppendError::Full {
                needed_bytes: needed,
                available_bytes: budget.saturating_sub(used),
                budget_bytes: budget,
            });
        }
        self.chunks
            .apply_batch(batch)
            .map_err(StorageError::sled(&self.path))?;
        self.next_seq = seq;
        self.payload_bytes += payload;
        self.dirty = true;
        if self.config.durability == Durability::EveryBatch {
            self.flush()?;
        }
        Ok(SeqRange { first, next: seq })
    }

    fn flush(&mut self) -> Result<u64, StorageError> {
        self.manifest.flush()?;
        self.dirty = false;
        self.durable_next_seq
            .fetch_max(self.next_seq, Ordering::AcqRel);
        Ok(self.next_seq)
    }

    fn read(&self, from: u64, max_records: usize, max_bytes: u64) -> Result<ReadBatch, ReadError> {
        if from < self.consumed_seq || from > self.next_seq {
            return Err(ReadError::OutOfRange {
                requested: from,
                first_seq: self.consumed_seq,
                next_seq: self.next_seq,
            });
        }
        let mut batch = ReadBatch::new(from);
        if from == self.next_seq || max_records == 0 {
            return Ok(batch);
        }
        let sled_err = StorageError::sled(&self.path);
        let start = match self.chunks.range(..=from.to_be_bytes()).next_back() {
            Some(item) => item.map_err(sled_err)?.0,
            None => {
                let next = self.next_key_after(from)?.unwrap_or(self.next_seq);
                return Ok(ReadBatch::lost_only(self.lost(
                    from,
                    next,
                    self.path.display().to_string(),
                    format!("no chunk holds seq {from}"),
                )));
            }
        };
        let mut seq = from;
        for item in self.chunks.range(start..) {
            let (key, value) = item.map_err(StorageError::sled(&self.path))?;
            let key_seq = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            let location = format!("{} chunk {key_seq}", self.path.display());
            let header = match chunk_header(&key, &value, &self.path) {
                Ok(header) if header.next_seq() > seq => header,
                Ok(_) | Err(_) if !batch.is_empty() => return Ok(batch),
                Ok(header) => {
                    let next = self.next_key_after(key_seq)?.unwrap_or(self.next_seq);
                    let reason = format!("chunk ends at seq {}, before {seq}", header.next_seq());
                    return Ok(ReadBatch::lost_only(
                        self.lost(from, next, location, reason),
                    ));
                }
                Err(error) => {
                    let next = self.next_key_after(key_seq)?.unwrap_or(self.next_seq);
                    return Ok(ReadBatch::lost_only(self.lost(
                        from,
                        next,
                        location,
                        error.to_string(),
                    )));
                }
            };
            if header.first_seq > seq {
                if !batch.is_empty() {
                    return Ok(batch);
                }
                let reason = format!("gap: seqs {seq}..{} are in no chunk", header.first_seq);
                return Ok(ReadBatch::lost_only(self.lost(
                    from,
                    header.first_seq,
                    location,
                    reason,
                )));
            }
            let body_range = CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + header.body_bytes as usize;
            // rkyv needs the body 4-byte aligned; sled's buffers usually are, else copy once.
            let backing = if (value.as_ptr() as usize + CHUNK_HEADER_BYTES).is_multiple_of(4) {
                Backing::Sled(value)
            } else {
                let mut copy = rkyv::util::AlignedVec::<16>::new();
                copy.extend_from_slice(&value);
                Backing::Aligned(copy)
            };
            let index = batch.add_backing(backing);
            let bytes = batch.backing_bytes(index);
            let view = match record::check_body(&header, bytes.get(body_range).unwrap_or_default())
            {
                Ok(view) => view,
                Err(_) if !batch.is_empty() => return Ok(batch),
                Err(fault) => {
                    // The header is intact: its chunk is skipped as a whole, to the next key.
                    let next = self.next_key_after(key_seq)?.unwrap_or(header.next_seq());
                    return Ok(ReadBatch::lost_only(self.lost(
                        from,
                        next,
                        location,
                        fault.to_string(),
                    )));
                }
            };
            let skip = (seq - header.first_seq) as usize;
            let base = bytes.as_ptr() as usize;
            let spans: Vec<(usize, usize)> = (skip..view.len())
                .map(|i| view.record(i))
                .map(|r| (r.as_ptr() as usize - base, r.len()))
                .collect();
            for (start, len) in spans {
                batch.push_span(index, start, len);
                seq += 1;
                if batch.len() >= max_records || batch.payload_bytes() >= max_bytes {
                    return Ok(batch);
                }
            }
        }
        Ok(batch)
    }

    /// The first chunk key after `seq`: where reading resumes past a damaged chunk.
    fn next_key_after(&self, seq: u64) -> Result<Option<u64>, StorageError> {
        let Some(start) = seq.checked_add(1) else {
            return Ok(None);
        };
        match self.chunks.range(start.to_be_bytes()..).next() {
            Some(item) => {
                let (key, _) = item.map_err(StorageError::sled(&self.path))?;
                Ok(key.as_ref().try_into().map(u64::from_be_bytes).ok())
            }
            None => Ok(None),
        }
    }

    fn lost(&self, from: u64, next: u64, location: String, reason: String) -> LostRange {
        let next = next.max(from + 1).min(self.next_seq);
        tracing::warn!(%location, first_seq = from, next_seq = next, %reason, "a read skips damaged records of the sled spill log");
        LostRange {
            seqs: SeqRange { first: from, next },
            location,
            offset: 0,
            reason,
        }
    }

    fn consume_until(&mut self, seq: u64) -> Result<(), StorageError> {
        let seq = seq.min(self.next_seq);
        if seq <= self.consumed_seq {
            return Ok(());
        }
        self.consumed_seq = seq;
        self.manifest.set_consumed_seq(seq)?;
        // In sled before the chunks it lets go, so it never reaches the disk after them.
        self.manifest.write_pending()?;
        // A chunk can go once the next chunk starts at or below the consumed position.
        let mut doomed: Option<(sled::IVec, u64)> = None;
        for item in self.chunks.range(..=seq.to_be_bytes()) {
            let (key, value) = item.map_err(StorageError::sled(&self.path))?;
            if let Some((prev, prev_payload)) = doomed.take() {
                self.chunks
                    .remove(prev)
                    .map_err(StorageError::sled(&self.path))?;
                self.payload_bytes = self.payload_bytes.saturating_sub(prev_payload);
            }
            // A damaged chunk's extent is unknown: it goes once the next key is consumed.
            let (payload, ends_after) = match chunk_header(&key, &value, &self.path) {
                Ok(header) => (payload_estimate(&header), header.next_seq() > seq),
                Err(_) => (0, false),
            };
            doomed = Some((key, payload));
            if ends_after {
                doomed = None;
                break;
            }
        }
        if let Some((key, payload)) = doomed {
            self.chunks
                .remove(key)
                .map_err(StorageError::sled(&self.path))?;
            self.payload_bytes = self.payload_bytes.saturating_sub(payload);
        }
        self.dirty = true;
        if self.config.durability == Durability::EveryBatch {
            self.flush()?;
        }
        Ok(())
    }

    fn stats(&self) -> LogStats {
        LogStats {
            first_seq: self.consumed_seq,
            next_seq: self.next_seq,
            durable_next_seq: self.durable_next_seq.load(Ordering::Acquire),
            payload_bytes: self.payload_bytes,
            disk_bytes: self.manifest.db().size_on_disk().unwrap_or(0),
            files: self.chunks.len() as u64,
            disk_budget_bytes_effective: self.config.disk_budget_bytes,
        }
    }

    fn after_position_change(&mut self) -> Result<(), StorageError> {
        self.dirty = true;
        if self.config.durability == Durability::EveryBatch {
            self.flush()?;
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

impl SpillLog for SledLog {
    fn append(&self, records: &[&[u8]]) -> Result<SeqRange, AppendError> {
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
        match inner.chunks.first() {
            Ok(Some((key, value))) => {
                chunk_header(&key, &value, &inner.path).map_or(inner.next_seq, |h| h.next_seq())
            }
            _ => inner.next_seq,
        }
    }

    fn stats(&self) -> LogStats {
        lock(&self.inner).stats()
    }

    fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
    }

    /// sled's background flusher may persist what was written so far at any moment, our
    /// flush or not: the files copied right after it are what a kill -9 then leaves.
    /// The chunks a consume lets go must not be on disk without the consumed position.
    #[test]
    fn consumed_chunks_never_reach_the_disk_ahead_of_the_consumed_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = LogConfig::new(Backend::Sled);
        config.durability = Durability::Manual;
        config.chunk_bytes_target = 1024;
        let log = SledLog::open(dir.path(), config.clone()).expect("open");
        let payload = vec![7u8; 200];
        for _ in 0..50 {
            let records: Vec<&[u8]> = (0..10).map(|_| payload.as_slice()).collect();
            log.append(&records).expect("append");
        }
        log.flush().expect("flush");
        log.consume_until(300).expect("consume");
        lock(&log.inner)
            .manifest
            .db()
            .flush()
            .expect("sled's own flush");
        let image = dir.path().join("image");
        copy_dir(&dir.path().join("sled"), &image.join("sled"));

        let reopened = SledLog::open(&image, config).expect("reopen the image");
        let stats = reopened.stats();
        assert_eq!(stats.next_seq, 500);
        let mut at = stats.first_seq;
        while at < stats.next_seq {
            let batch = reopened.read(at, 50, 1 << 20).expect("read");
            assert!(
                !batch.is_empty(),
                "the log begins at {} but record {at} is gone",
                stats.first_seq
            );
            at = batch.next_seq();
        }
    }
}
