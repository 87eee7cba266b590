//! Spillway's durable spill log: an append-only log of opaque records addressed by
//! `u64` sequence numbers, read back through bounded reads.
//!
//! Two backends implement [`SpillLog`]: [`SegmentLog`] (the default: segment files,
//! mmap reads through a bounded window, a sled manifest) and [`SledLog`] (records
//! packed in chunks inside a sled tree). See `README.md` for why the default is
//! the default, and [`record`] for the on-disk format.
#![deny(missing_docs)]

mod batch;
pub mod config;
pub mod error;
mod flusher;
pub mod fs;
pub mod inspect;
mod manifest;
mod reaper;
pub mod record;
mod recovery;
mod segment;
mod segment_log;
mod sled_log;
mod space;
#[cfg(feature = "testing")]
pub mod testing;

pub use batch::{LogStats, LostRange, ReadBatch, RecoveryReport, SeqRange};
pub use config::{Backend, Durability, LogConfig};
pub use error::{
    AppendError, ConfigError, Corruption, Error, InspectError, OpenError, ReadError, StorageError,
};
pub use fs::{FileHandle, Filesystem, RealFs};
pub use record::RecordParts;
pub use segment_log::SegmentLog;
pub use sled_log::SledLog;

use std::path::Path;

/// An append-only, durable log of opaque records.
///
/// Sequence numbers are dense: the first record gets the log's `next_seq` at
/// creation (0), and each append numbers its records consecutively. Methods take
/// `&self` and serialise internally, so one log can be shared by a producer and
/// consumers.
pub trait SpillLog: Send + Sync + std::fmt::Debug {
    /// Appends a batch and returns the sequence numbers it got.
    ///
    /// # Durability
    /// Under [`Durability::EveryBatch`] the batch is on disk when this returns;
    /// otherwise it is durable after the next periodic or explicit [`SpillLog::flush`].
    ///
    /// # Errors
    /// [`AppendError::Full`] past `disk_budget_bytes`, [`AppendError::NoSpace`] when the
    /// filesystem is full (segment backend: the log is left as before the batch and an
    /// append succeeds again once space frees), [`AppendError::RecordTooLarge`], or a
    /// storage failure. On any error nothing of the batch was acknowledged, and the
    /// segment backend undoes whatever of it was written.
    fn append(&self, records: &[&[u8]]) -> Result<SeqRange, AppendError>;

    /// Appends a batch of records each given as two parts stored back to back; otherwise
    /// exactly [`SpillLog::append`]. The segment backend copies each part once, into its
    /// write buffer; the default joins each record first.
    ///
    /// # Errors
    /// As [`SpillLog::append`].
    fn append_parts(&self, records: &[RecordParts<'_>]) -> Result<SeqRange, AppendError> {
        let joined: Vec<Vec<u8>> = records.iter().map(|r| [r.head, r.tail].concat()).collect();
        let slices: Vec<&[u8]> = joined.iter().map(Vec::as_slice).collect();
        self.append(&slices)
    }

    /// Reads up to `max_records` records and about `max_bytes` payload bytes from `from_seq`.
    ///
    /// Returns at least one record whenever `from_seq < next_seq` and `max_records > 0`,
    /// even if that record alone exceeds `max_bytes`, so a reader never stalls.
    /// May return fewer records than asked (a read stops at a segment or window
    /// end); read again from [`ReadBatch::next_seq`].
    ///
    /// # Damage
    /// Damaged or missing data is skipped, never returned and never an error. A read
    /// that meets damage before returning any record returns a batch of no record whose
    /// [`ReadBatch::lost`] names the file, offset, reason and the lost seqs
    /// `from_seq..next`, where `next` is the first seq readable after the damage (the
    /// next intact chunk, else the next segment's first seq, else a recorded gap's end);
    /// [`ReadBatch::next_seq`] is `next`. A read that meets damage after some intact
    /// records returns those records only, and the next read reports the damage. A
    /// chunk whose header is intact but whose body is damaged is skipped as a whole.
    /// Consuming past a lost range works like any consume.
    ///
    /// # Errors
    /// [`ReadError::OutOfRange`] outside `first_seq..=next_seq`, or an I/O or store
    /// failure; never [`Corruption`].
    fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<ReadBatch, ReadError>;

    /// Makes every appended record and every saved position durable; returns the durable `next_seq`.
    fn flush(&self) -> Result<u64, StorageError>;

    /// Marks every record below `first_unconsumed_seq` consumed so its space can be reclaimed.
    ///
    /// Values beyond `next_seq` are clamped to it; values below the current
    /// `first_seq` change nothing. Durable like positions (see [`SpillLog::save_position`]).
    fn consume_until(&self, first_unconsumed_seq: u64) -> Result<(), StorageError>;

    /// Stores a named position (a consumer's next sequence number to read).
    ///
    /// Durable at once under [`Durability::EveryBatch`], else with the next flush; on a
    /// full disk (the manifest flush meets ENOSPC) with the next flush that gets through.
    fn save_position(&self, name: &str, seq: u64) -> Result<(), StorageError>;

    /// A named position saved earlier.
    fn position(&self, name: &str) -> Result<Option<u64>, StorageError>;

    /// Every named position (at most `positions_max`).
    fn positions(&self) -> Result<Vec<(String, u64)>, StorageError>;

    /// Forgets a named position.
    fn remove_position(&self, name: &str) -> Result<(), StorageError>;

    /// The seq after the oldest file's last record: consuming up to it frees that file's space.
    fn oldest_file_end_seq(&self) -> u64;

    /// Counters and sizes as of now.
    fn stats(&self) -> LogStats;

    /// What recovery found and repaired when the log was opened.
    fn recovery_report(&self) -> &RecoveryReport;
}

/// Opens (or creates) the log in `dir` with the configured backend.
///
/// # Errors
/// A refused configuration, a directory of another backend or format version, or an
/// I/O failure. Damage is not a reason to refuse: damaged or missing records are
/// reported in [`SpillLog::recovery_report`] (`lost`), and a damaged or missing
/// manifest is rebuilt from the segment files (`manifest_rebuilt`).
pub fn open(dir: &Path, config: LogConfig) -> Result<Box<dyn SpillLog>, OpenError> {
    Ok(match config.backend {
        Backend::Segment => Box::new(SegmentLog::open(dir, config)?),
        Backend::Sled => Box::new(SledLog::open(dir, config)?),
    })
}
