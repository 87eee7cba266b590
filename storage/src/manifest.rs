//! The sled-held state: format version, backend, consumed position, segments, named positions.
//!
//! Keys of numeric trees are big-endian so they sort; values are fixed-layout little-endian.
//! A value of the wrong size is one typed [`Corruption`] naming the store and the key,
//! never a silent default: open rebuilds such a manifest from the segment files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::batch::{LostRange, SeqRange};
use crate::config::Backend;
use crate::error::{Corruption, OpenError, StorageError};
use crate::fs::Filesystem;
use crate::record::FORMAT_VERSION;

const KEY_VERSION: &[u8] = b"format_version";
const KEY_BACKEND: &[u8] = b"backend";
const KEY_CONSUMED: &[u8] = b"consumed_seq";
const KEY_TAIL_CHECKPOINT: &[u8] = b"tail_checkpoint";
/// A tail checkpoint written before the synced end was recorded (4 fields).
const TAIL_CHECKPOINT_V1_BYTES: usize = 32;
const TAIL_CHECKPOINT_BYTES: usize = 48;
/// The fixed part of a lost-range value: next seq, offset, location length.
const LOST_FIXED_BYTES: usize = 20;

/// Where the active segment's last synced chunk starts (recovery scans from there) and where its synced data ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TailCheckpoint {
    pub segment_first_seq: u64,
    pub chunk_offset: u64,
    pub chunk_first_seq: u64,
    /// Payload bytes of the segment's records before that chunk.
    pub payload_before: u64,
    /// The seq after the last synced record: every record below it was on disk.
    pub synced_next_seq: u64,
    /// The segment file's length when it was synced.
    pub synced_file_bytes: u64,
}

/// One segment as the manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentEntry {
    pub first_seq: u64,
    /// Filled when the segment is sealed: no append will reach it again.
    pub sealed: Option<SealedInfo>,
}

/// A sealed segment's totals, so open needs not scan it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedInfo {
    pub next_seq: u64,
    pub payload_bytes: u64,
    pub file_bytes: u64,
}

impl SegmentEntry {
    fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        if let Some(s) = self.sealed {
            out[0] = 1;
            out[1..9].copy_from_slice(&s.next_seq.to_le_bytes());
            out[9..17].copy_from_slice(&s.payload_bytes.to_le_bytes());
            out[17..25].copy_from_slice(&s.file_bytes.to_le_bytes());
        }
        out
    }

    fn decode(first_seq: u64, value: &[u8]) -> Option<Self> {
        if value.len() != 25 || value[0] > 1 {
            return None;
        }
        let at = |i: usize| u64::from_le_bytes(value[i..i + 8].try_into().unwrap_or([0; 8]));
        let sealed = (value[0] == 1).then(|| SealedInfo {
            next_seq: at(1),
            payload_bytes: at(9),
            file_bytes: at(17),
        });
        Some(SegmentEntry { first_seq, sealed })
    }
}

/// How long open waits for sled's lock, which sled's background threads release
/// a moment after the previous owner in this process dropped it.
const LOCK_WAIT_MS_MAX: u64 = 2_000;
const LOCK_RETRY_MS: u64 = 20;

fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, StorageError> {
    let mut waited_ms = 0;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // We flush explicitly, in order with the data files; see segment_log.rs.
            .flush_every_ms(None)
            .mode(sled::Mode::LowSpace)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && waited_ms < LOCK_WAIT_MS_MAX =>
            {
                std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
                waited_ms += LOCK_RETRY_MS;
            }
            other => return other.map_err(StorageError::sled(path)),
        }
    }
}

/// The manifest store.
#[derive(Debug)]
pub(crate) struct Manifest {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    segments: sled::Tree,
    positions: sled::Tree,
    /// Ranges of records lost to damage: first seq (big-endian) -> next seq, offset, location, reason.
    /// Bounded: each sits at a segment boundary (records in no file), and goes once consumed.
    lost: sled::Tree,
    positions_max: u32,
    /// Whether this open created the manifest (no format version was stored).
    created: bool,
    /// The file layer's hooks around flushes (sled does its own I/O).
    fs: Option<Arc<dyn Filesystem>>,
    /// Changes that are durable only with the next flush anyway, kept here until it: a
    /// consumer acks every batch, and a sled insert per ack cost more than the read.
    pending: Mutex<Pending>,
}

impl Drop for Manifest {
    fn drop(&mut self) {
        // As before the changes were kept here: sled writes what its cache holds when
        // dropped, so a log dropped without a flush loses no more than it did.
        if let Err(error) = self.write_pending() {
            tracing::warn!(path = %self.path.display(), %error, "writing pending manifest changes on close failed");
        }
    }
}

/// Position saves (`Some`) and removals (`None`), and the consumed seq, not yet in sled.
/// Bounded: one entry per name, and names are bounded by `positions_max`.
#[derive(Debug, Default)]
struct Pending {
    positions: BTreeMap<String, Option<u64>>,
    consumed_seq: Option<u64>,
}

impl Manifest {
    /// Opens or creates the manifest, refusing another format version or backend.
    pub(crate) fn open(
        path: &Path,
        cache_bytes: u64,
        backend: Backend,
        positions_max: u32,
    ) -> Result<Self, OpenError> {
        Self::open_with(path, cache_bytes, backend, positions_max, None)
    }

    /// [`Manifest::open`], calling `fs`'s manifest hooks around every flush.
    pub(crate) fn open_with(
        path: &Path,
        cache_bytes: u64,
        backend: Backend,
        positions_max: u32,
        fs: Option<Arc<dyn Filesystem>>,
    ) -> Result<Self, OpenError> {
        let db = open_sled(path, cache_bytes)?;
        let tree = |name: &str| db.open_tree(name).map_err(StorageError::sled(path));
        let mut manifest = Manifest {
            path: path.to_path_buf(),
            meta: tree("meta")?,
            segments: tree("segments")?,
            positions: tree("positions")?,
            lost: tree("lost")?,
            db,
            positions_max,
            created: false,
            fs,
            pending: Mutex::default(),
        };
        manifest.created = manifest.check_or_init(backend)?;
        Ok(manifest)
    }

    /// Whether this open found no stored format version and created the manifest.
    pub(crate) fn created(&self) -> bool {
        self.created
    }

    /// Checks the stored version and backend, or stores them; returns whether it stored them.
    fn check_or_init(&self, backend: Backend) -> Result<bool, OpenError> {
        let sled_err = StorageError::sled(&self.path);
        match self.meta.get(KEY_VERSION).map_err(sled_err)? {
            Some(raw) => {
                let found = raw
                    .as_ref()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .map_err(|_| self.bad_value("meta", "format_version", "not 4 bytes"))?;
                if found != FORMAT_VERSION {
                    return Err(OpenError::UnsupportedVersion {
                        path: self.path.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                let stored = self
                    .meta
                    .get(KEY_BACKEND)
                    .map_err(StorageError::sled(&self.path))?
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                if stored != Backend::Segment.as_str() && stored != Backend::Sled.as_str() {
                    return Err(self
                        .bad_value("meta", "backend", &format!("unknown backend {stored:?}"))
                        .into());
                }
                if stored != backend.as_str() {
                    return Err(OpenError::WrongBackend {
                        path: self.path.clone(),
                        found: stored,
                        expected: backend.as_str().into(),
                    });
                }
            }
            None => {
                self.meta
                    .insert(KEY_BACKEND, backend.as_str())
                    .map_err(StorageError::sled(&self.path))?;
                self.meta
                    .insert(KEY_VERSION, &FORMAT_VERSION.to_le_bytes())
                    .map_err(StorageError::sled(&self.path))?;
                self.flush()?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Every change leaves `Pending` consistent; a panic elsewhere cannot tear it.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the pending changes into sled (not yet durable); they leave `pending` once written.
    ///
    /// Called before any write that removes what the consumed position vouches for
    /// (a segment entry, a lost range, the sled backend's chunks): sled's background
    /// flusher persists writes in the order they were made, so a removal can never
    /// reach the disk ahead of the position that makes it safe. (Deferred, the
    /// consumed seq could stay behind on disk while the removal did not, and after a
    /// kill -9 the log began at records that were gone: `tests/crash.rs`, sled backend.)
    pub(crate) fn write_pending(&self) -> Result<(), StorageError> {
        let mut pending = self.pending();
        let sled_err = |e| StorageError::sled(&self.path)(e);
        if let Some(seq) = pending.consumed_seq {
            self.meta
                .insert(KEY_CONSUMED, &seq.to_le_bytes())
                .map_err(&sled_err)?;
            pending.consumed_seq = None;
        }
        // Removals first, so the stored names never exceed `positions_max` on the way.
        let removed: Vec<String> = pending
            .positions
            .iter()
            .filter(|(_, seq)| seq.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in removed {
            self.positions.remove(name.as_str()).map_err(&sled_err)?;
            pending.positions.remove(&name);
        }
        while let Some((name, seq)) = pending.positions.pop_first() {
            if let Some(seq) = seq {
                if let Err(error) = self.positions.insert(name.as_str(), &seq.to_le_bytes()) {
                    pending.positions.insert(name, Some(seq));
                    return Err(sled_err(error));
                }
            }
        }
        Ok(())
    }

    /// Makes every change so far durable.
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        if let Some(fs) = &self.fs {
            fs.manifest_flushing(&self.path)
                .map_err(|e| StorageError::sled(&self.path)(sled::Error::Io(e)))?;
        }
        self.write_pending()?;
        self.db.flush().map_err(StorageError::sled(&self.path))?;
        if let Some(fs) = &self.fs {
            fs.manifest_flushed(&self.path);
        }
        Ok(())
    }

    /// The consumed position (0 when none was stored yet).
    pub(crate) fn consumed_seq(&self) -> Result<u64, StorageError> {
        if let Some(seq) = self.pending().consumed_seq {
            return Ok(seq);
        }
        match self
            .meta
            .get(KEY_CONSUMED)
            .map_err(StorageError::sled(&self.path))?
        {
            None => Ok(0),
            Some(raw) => raw
                .as_ref()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| self.bad_value("meta", "consumed_seq", "not 8 bytes")),
        }
    }

    /// A typed corruption naming this store and the key whose value is malformed.
    fn bad_value(&self, tree: &str, key: &str, reason: &str) -> StorageError {
        StorageError::Corrupt(Corruption {
            location: format!("{} key {tree}/{key}", self.path.display()),
            offset: 0,
            reason: format!("malformed manifest value: {reason}"),
        })
    }

    /// Sets the consumed position; durable with the next flush.
    pub(crate) fn set_consumed_seq(&self, seq: u64) -> Result<(), StorageError> {
        self.pending().consumed_seq = Some(seq);
        Ok(())
    }

    /// Records the tail checkpoint; durable with the next manifest flush.
    pub(crate) fn set_tail_checkpoint(&self, c: TailCheckpoint) -> Result<(), StorageError> {
        let mut value = [0u8; TAIL_CHECKPOINT_BYTES];
        for (i, v) in [
            c.segment_first_seq,
            c.chunk_offset,
            c.chunk_first_seq,
            c.payload_before,
            c.synced_next_seq,
            c.synced_file_bytes,
        ]
        .iter()
        .enumerate()
        {
            value[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        self.meta
            .insert(KEY_TAIL_CHECKPOINT, &value[..])
            .map_err(StorageError::sled(&self.path))?;
        Ok(())
    }

    /// The last recorded tail checkpoint, if any.
    pub(crate) fn tail_checkpoint(&self) -> Result<Option<TailCheckpoint>, StorageError> {
        let Some(raw) = self
            .meta
            .get(KEY_TAIL_CHECKPOINT)
            .map_err(StorageError::sled(&self.path))?
        else {
            return Ok(None);
        };
        if raw.len() != TAIL_CHECKPOINT_BYTES && raw.len() != TAIL_CHECKPOINT_V1_BYTES {
            return Err(self.bad_value(
                "meta",
                "tail_checkpoint",
                &format!("{} bytes, not {TAIL_CHECKPOINT_BYTES}", raw.len()),
            ));
        }
        let at = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let legacy = raw.len() == TAIL_CHECKPOINT_V1_BYTES;
        Ok(Some(TailCheckpoint {
            segment_first_seq: at(0),
            chunk_offset: at(1),
            chunk_first_seq: at(2),
            payload_before: at(3),
            // An older checkpoint knew only that the last synced chunk started there.
            synced_next_seq: if legacy { at(2) } else { at(4) },
            synced_file_bytes: if legacy { at(1) } else { at(5) },
        }))
    }

    /// Records a range of records lost to damage; durable with the next flush.
    pub(crate) fn put_lost(&self, lost: &LostRange) -> Result<(), StorageError> {
        let location = lost.location.as_bytes();
        let mut value = Vec::with_capacity(LOST_FIXED_BYTES + location.len() + lost.reason.len());
        value.extend_from_slice(&lost.seqs.next.to_le_bytes());
        value.extend_from_slice(&lost.offset.to_le_bytes());
        value.extend_from_slice(
            &u32::try_from(location.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        value.extend_from_slice(location);
        value.extend_from_slice(lost.reason.as_bytes());
        self.lost
            .insert(lost.seqs.first.to_be_bytes(), value)
            .map_err(StorageError::sled(&self.path))?;
        Ok(())
    }

    /// Every recorded lost range, oldest first.
    pub(crate) fn lost_ranges(&self) -> Result<Vec<LostRange>, StorageError> {
        let mut out = Vec::new();
        for item in self.lost.iter() {
            let (key, value) = item.map_err(StorageError::sled(&self.path))?;
            let bad = || self.bad_value("lost", &format!("{key:?}"), "malformed lost range");
            let first = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| bad())?;
            if value.len() < LOST_FIXED_BYTES {
                return Err(bad());
            }
            let u64_at =
                |i: usize| u64::from_le_bytes(value[i..i + 8].try_into().unwrap_or([0; 8]));
            let location_len =
                u32::from_le_bytes(value[16..20].try_into().unwrap_or([0; 4])) as usize;
            let rest = &value[LOST_FIXED_BYTES..];
            if location_len > rest.len() || u64_at(0) <= first {
                return Err(bad());
            }
            out.push(LostRange {
                seqs: SeqRange {
                    first,
                    next: u64_at(0),
                },
                location: String::from_utf8_lossy(&rest[..location_len]).into_owned(),
                offset: u64_at(8),
                reason: String::from_utf8_lossy(&rest[location_len..]).into_owned(),
            });
        }
        Ok(out)
    }

    /// Forgets a lost range (once it is consumed).
    pub(crate) fn remove_lost(&self, first_seq: u64) -> Result<(), StorageError> {
        self.write_pending()?;
        self.lost
            .remove(first_seq.to_be_bytes())
            .map_err(StorageError::sled(&self.path))?;
        Ok(())
    }

    /// All segment entries, oldest first (their count is bounded by disk budget / segment size).
    pub(crate) fn segments(&self) -> Result<Vec<SegmentEntry>, StorageError> {
        let mut out = Vec::new();
        for item in self.segments.iter() {
            let (key, value) = item.map_err(StorageError::sled(&self.path))?;
            let first_seq = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| self.bad_value("segments", &format!("{key:?}"), "key not 8 bytes"))?;
            let entry = SegmentEntry::decode(first_seq, &value).ok_or_else(|| {
                self.bad_value(
                    "segments",
                    &first_seq.to_string(),
                    "entry of the wrong size",
                )
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    pub(crate) fn put_segment(&self, entry: SegmentEntry) -> Result<(), StorageError> {
        self.segments
            .insert(entry.first_seq.to_be_bytes(), &entry.encode())
            .map_err(StorageError::sled(&self.path))?;
        Ok(())
    }

    pub(crate) fn remove_segment(&self, first_seq: u64) -> Result<(), StorageError> {
        self.write_pending()?;
        self.segments
            .remove(first_seq.to_be_bytes())
            .map_err(StorageError::sled(&self.path))?;
        Ok(())
    }

    /// Saves a named position; durable with the next flush.
    pub(crate) fn save_position(&self, name: &str, seq: u64) -> Result<(), StorageError> {
        let mut pending = self.pending();
        if let Some(saved @ Some(_)) = pending.positions.get_mut(name) {
            *saved = Some(seq);
            return Ok(());
        }
        let sled_err = |e| StorageError::sled(&self.path)(e);
        let stored = self.positions.contains_key(name).map_err(&sled_err)?;
        let removed = pending.positions.contains_key(name);
        if !stored || removed {
            // A new name: count the names there will be once the pending changes are written.
            let mut count = self.positions.len();
            for (other, seq) in &pending.positions {
                let in_sled = self.positions.contains_key(other).map_err(&sled_err)?;
                match (seq, in_sled) {
                    (Some(_), false) => count += 1,
                    (None, true) => count -= 1,
                    _ => {}
                }
            }
            if count >= self.positions_max as usize {
                return Err(StorageError::TooManyPositions {
                    name: name.into(),
                    positions_max: self.positions_max,
                });
            }
        }
        pending.positions.insert(name.to_string(), Some(seq));
        Ok(())
    }

    /// A named position, saved or removed since the last flush or stored before.
    pub(crate) fn position(&self, name: &str) -> Result<Option<u64>, StorageError> {
        if let Some(&saved) = self.pending().positions.get(name) {
            return Ok(saved);
        }
        match self
            .positions
            .get(name)
            .map_err(StorageError::sled(&self.path))?
        {
            None => Ok(None),
            Some(raw) => raw
                .as_ref()
                .try_into()
                .map(|bytes| Some(u64::from_le_bytes(bytes)))
                .map_err(|_| self.bad_value("positions", name, "not 8 bytes")),
        }
    }

    /// Every named position, in name order, the pending changes applied.
    pub(crate) fn positions(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out = BTreeMap::new();
        // Bounded: save_position refuses more than positions_max names.
        for item in self.positions.iter() {
            let (key, value) = item.map_err(StorageError::sled(&self.path))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let seq = value
                .as_ref()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| self.bad_value("positions", &name, "not 8 bytes"))?;
            out.insert(name, seq);
        }
        for (name, seq) in &self.pending().positions {
            match seq {
                Some(seq) => out.insert(name.clone(), *seq),
                None => out.remove(name),
            };
        }
        Ok(out.into_iter().collect())
    }

    /// Forgets a named position; durable with the next flush.
    pub(crate) fn remove_position(&self, name: &str) -> Result<(), StorageError> {
        self.pending().positions.insert(name.to_string(), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_positions_count_against_the_limit_and_are_stored_by_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("manifest");
        {
            let manifest = Manifest::open(&path, 1 << 20, Backend::Segment, 2).expect("open");
            manifest.save_position("a", 1).expect("a");
            manifest.save_position("b", 2).expect("b");
            manifest.flush().expect("flush");
            manifest.save_position("a", 3).expect("a again");
            assert!(matches!(
                manifest.save_position("c", 4),
                Err(StorageError::TooManyPositions { .. })
            ));
            manifest.remove_position("a").expect("remove a");
            manifest.save_position("c", 5).expect("c once a is gone");
            assert!(matches!(
                manifest.save_position("a", 6),
                Err(StorageError::TooManyPositions { .. })
            ));
            assert_eq!(manifest.position("a").expect("a"), None);
            assert_eq!(manifest.position("c").expect("c"), Some(5));
            manifest.set_consumed_seq(9).expect("consumed");
            assert_eq!(manifest.consumed_seq().expect("consumed"), 9);
            let expected = vec![("b".to_string(), 2), ("c".to_string(), 5)];
            assert_eq!(manifest.positions().expect("positions"), expected);
            manifest.flush().expect("flush");
        }
        let manifest = Manifest::open(&path, 1 << 20, Backend::Segment, 2).expect("reopen");
        let expected = vec![("b".to_string(), 2), ("c".to_string(), 5)];
        assert_eq!(manifest.positions().expect("positions"), expected);
        assert_eq!(manifest.consumed_seq().expect("consumed"), 9);
    }
}
