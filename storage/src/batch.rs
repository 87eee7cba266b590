//! What reads, appends, stats and recovery hand back.

use std::path::PathBuf;
use std::sync::Arc;

/// The sequence numbers an append assigned: `first..next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// The batch's first record.
    pub first: u64,
    /// One past the batch's last record.
    pub next: u64,
}

impl SeqRange {
    /// Number of records in the range.
    pub fn len(&self) -> u64 {
        self.next - self.first
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.next == self.first
    }
}

/// Records a read could not return because their data is damaged or missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    /// The log seqs lost: `first..next`.
    pub seqs: SeqRange,
    /// The file (or sled key) where the damage is.
    pub location: String,
    /// Byte offset of the damage in that file (0 for sled).
    pub offset: u64,
    /// What check failed, or "truncated below the synced end".
    pub reason: String,
}

impl std::fmt::Display for LostRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records {}..{} lost: {} at byte offset {}: {}",
            self.seqs.first, self.seqs.next, self.location, self.offset, self.reason
        )
    }
}

/// Counters and sizes of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// The first unconsumed sequence number.
    pub first_seq: u64,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// Every record below this is durable.
    pub durable_next_seq: u64,
    /// Payload bytes of the records still stored (consumed records count until their space is reclaimed).
    pub payload_bytes: u64,
    /// Bytes the log's files take on disk (the sled manifest of the segment backend excluded).
    pub disk_bytes: u64,
    /// Segment files (segment backend) or chunks (sled backend) stored.
    pub files: u64,
    /// `min(disk_budget_bytes, disk_bytes + free space on the filesystem - disk_free_margin_bytes)`,
    /// measured at most once a second (segment backend; the sled backend reports `disk_budget_bytes`).
    pub disk_budget_bytes_effective: u64,
}

impl LogStats {
    /// Unconsumed records.
    pub fn records(&self) -> u64 {
        self.next_seq - self.first_seq
    }
}

/// What open-time recovery found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Records lost with that tail, counted from the chunk headers that were still readable.
    pub dropped_records: u64,
    /// The segment whose tail was cut.
    pub truncated_segment: Option<PathBuf>,
    /// Segment files left over from an interrupted reclaim or roll and removed.
    pub removed_files: u64,
    /// Bytes of the tail that recovery checked.
    pub scanned_bytes: u64,
    /// Records found damaged or missing below what was synced: reads skip them and report them.
    pub lost: Vec<LostRange>,
    /// Why the manifest was rebuilt from the segment files (named positions are lost then), if it was.
    pub manifest_rebuilt: Option<String>,
    /// Files moved aside (never deleted) because they hold nothing readable.
    pub moved_aside: Vec<PathBuf>,
}

impl RecoveryReport {
    /// Whether recovery changed anything on disk.
    pub fn repaired(&self) -> bool {
        self.truncated_bytes > 0
            || self.removed_files > 0
            || !self.lost.is_empty()
            || self.manifest_rebuilt.is_some()
            || !self.moved_aside.is_empty()
    }
}

/// Bytes a [`ReadBatch`] borrows its records from.
#[derive(Debug)]
pub(crate) enum Backing {
    /// A mapped window of a segment file.
    Mapped(Arc<memmap2::Mmap>),
    /// A value owned by sled.
    Sled(sled::IVec),
    /// A copy made where sled's value was not aligned for rkyv.
    Aligned(rkyv::util::AlignedVec<16>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(map) => map,
            Backing::Sled(value) => value,
            Backing::Aligned(copy) => copy,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    backing: u32,
    start: usize,
    len: usize,
}

/// Records read from a log, borrowed zero-copy from mapped or sled-owned memory.
#[derive(Debug)]
pub struct ReadBatch {
    first_seq: u64,
    backings: Vec<Backing>,
    spans: Vec<Span>,
    payload_bytes: u64,
    lost: Option<LostRange>,
}

impl ReadBatch {
    pub(crate) fn new(first_seq: u64) -> Self {
        ReadBatch {
            first_seq,
            backings: Vec::new(),
            spans: Vec::new(),
            payload_bytes: 0,
            lost: None,
        }
    }

    /// An empty batch with room for `records` records before it reallocates.
    pub(crate) fn with_capacity(first_seq: u64, records: usize) -> Self {
        let mut batch = ReadBatch::new(first_seq);
        batch.spans.reserve_exact(records);
        batch.backings.reserve_exact(1);
        batch
    }

    /// A batch of no record that reports `lost`, which starts at the read's `from_seq`.
    pub(crate) fn lost_only(lost: LostRange) -> Self {
        debug_assert!(
            lost.seqs.next > lost.seqs.first,
            "a lost range is not empty"
        );
        let mut batch = ReadBatch::new(lost.seqs.first);
        batch.lost = Some(lost);
        batch
    }

    pub(crate) fn add_backing(&mut self, backing: Backing) -> u32 {
        self.backings.push(backing);
        u32::try_from(self.backings.len() - 1).expect("a read holds few backings")
    }

    /// Adds the record at `start..start + len` of the backing `backing`.
    pub(crate) fn push_span(&mut self, backing: u32, start: usize, len: usize) {
        debug_assert!(start + len <= self.backings[backing as usize].bytes().len());
        self.spans.push(Span {
            backing,
            start,
            len,
        });
        self.payload_bytes += len as u64;
    }

    pub(crate) fn backing_bytes(&self, backing: u32) -> &[u8] {
        self.backings[backing as usize].bytes()
    }

    /// The first record's sequence number.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number after the last record, or after a lost range: where the next read starts.
    pub fn next_seq(&self) -> u64 {
        match &self.lost {
            Some(lost) => lost.seqs.next,
            None => self.first_seq + self.spans.len() as u64,
        }
    }

    /// The damaged or missing records this read met before any intact one, if it did.
    ///
    /// Such a batch holds no record; `first_seq..next_seq` is exactly the lost range,
    /// and reading on from [`ReadBatch::next_seq`] returns what follows the damage.
    pub fn lost(&self) -> Option<&LostRange> {
        self.lost.as_ref()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sum of the records' lengths.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// The record at `index` (0-based within the batch).
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let span = self.spans.get(index)?;
        Some(&self.backings[span.backing as usize].bytes()[span.start..span.start + span.len])
    }

    /// The records with their sequence numbers.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> + '_ {
        self.spans.iter().enumerate().map(move |(i, span)| {
            let bytes =
                &self.backings[span.backing as usize].bytes()[span.start..span.start + span.len];
            (self.first_seq + i as u64, bytes)
        })
    }
}
