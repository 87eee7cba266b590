//! One append-only segment file: creation, buffered appends, header walks and bounded mapped windows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::StorageError;
use crate::fs::{FileHandle, Filesystem};
use crate::record::{self, RecordBytes, SEGMENT_HEADER_BYTES};

/// The file name of the segment whose first record is `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first sequence number encoded in a segment file name, if it is one.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Syncs a directory so that file creations and removals in it are durable.
pub(crate) fn sync_dir(fs: &dyn Filesystem, dir: &Path) -> Result<(), StorageError> {
    fs.sync_dir(dir).map_err(StorageError::io(dir))
}

/// Creates a new segment file holding only its header, durably.
///
/// A failure removes the new file again (best effort), so a full disk leaves no
/// headerless file behind for the next open to sort out.
pub(crate) fn create(
    fs: &dyn Filesystem,
    dir: &Path,
    first_seq: u64,
) -> Result<ActiveSegment, StorageError> {
    let path = dir.join(file_name(first_seq));
    let file = fs.create_new(&path).map_err(StorageError::io(&path))?;
    let written = file
        .write_all_at(&record::encode_segment_header(first_seq), 0)
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io(&path))
        .and_then(|()| sync_dir(fs, dir));
    if let Err(error) = written {
        if let Err(cleanup) = fs.remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %cleanup, "removing a segment file whose creation failed");
        }
        return Err(error);
    }
    Ok(ActiveSegment {
        reader: Arc::clone(&file),
        path,
        first_seq,
        next_seq: first_seq,
        file_bytes: SEGMENT_HEADER_BYTES as u64,
        buffer: Vec::new(),
        payload_bytes: 0,
        last_chunk: None,
        writeback_from: 0,
    })
}

/// The segment appends go to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    /// The handle appends write through, shared with read windows.
    pub reader: Arc<dyn FileHandle>,
    pub path: PathBuf,
    pub first_seq: u64,
    pub next_seq: u64,
    /// Bytes already handed to the OS.
    pub file_bytes: u64,
    /// Encoded chunks not yet written; bounded by `write_buffer_bytes` plus one chunk.
    buffer: Vec<u8>,
    pub payload_bytes: u64,
    /// The newest chunk: its offset, first seq, and the payload bytes before it.
    pub last_chunk: Option<(u64, u64, u64)>,
    /// Where the next writeback hint starts (bytes below it were handed to the disk).
    writeback_from: u64,
}

/// Writeback hints cover whole pages of this size.
const WRITEBACK_PAGE_BYTES: u64 = 4096;

/// The state of the active segment before a batch, to undo the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppendMark {
    /// The segment the batch started in.
    pub first_seq: u64,
    pub next_seq: u64,
    pub payload_bytes: u64,
    pub last_chunk: Option<(u64, u64, u64)>,
    /// The segment's logical length (file plus buffer) before the batch.
    pub len: u64,
}

impl ActiveSegment {
    /// Reopens an existing segment for appends after recovery found its valid end.
    pub(crate) fn reopen(
        fs: &dyn Filesystem,
        path: PathBuf,
        first_seq: u64,
        next_seq: u64,
        file_bytes: u64,
        payload_bytes: u64,
    ) -> Result<Self, StorageError> {
        let file = fs.open(&path, true).map_err(StorageError::io(&path))?;
        Ok(ActiveSegment {
            reader: file,
            path,
            first_seq,
            next_seq,
            file_bytes,
            buffer: Vec::new(),
            payload_bytes,
            last_chunk: None,
            writeback_from: file_bytes,
        })
    }

    /// Size of the segment including buffered bytes.
    pub(crate) fn len(&self) -> u64 {
        self.file_bytes + self.buffer.len() as u64
    }

    /// Whether the segment holds any record.
    pub(crate) fn has_records(&self) -> bool {
        self.next_seq > self.first_seq
    }

    /// Where a batch starts, to undo it with [`ActiveSegment::rollback`].
    pub(crate) fn mark(&self) -> AppendMark {
        AppendMark {
            first_seq: self.first_seq,
            next_seq: self.next_seq,
            payload_bytes: self.payload_bytes,
            last_chunk: self.last_chunk,
            len: self.len(),
        }
    }

    /// Undoes every append after `mark` (taken in this segment): buffered bytes past it are
    /// dropped and the file is cut back to what it held, so earlier records are kept.
    ///
    /// The cut is synced before this returns.
    pub(crate) fn rollback(&mut self, mark: AppendMark) -> Result<(), StorageError> {
        debug_assert_eq!(mark.first_seq, self.first_seq, "a mark of another segment");
        let keep_file_bytes = self.file_bytes.min(mark.len);
        // Bytes below the mark that are still buffered stay buffered; the rest goes.
        self.buffer
            .truncate(mark.len.saturating_sub(keep_file_bytes) as usize);
        // A failed write may have left part of the buffer in the file past file_bytes.
        // Synced at once: a batch refused as unwritten must not come back after a power loss.
        self.reader
            .set_len(keep_file_bytes)
            .and_then(|()| self.reader.sync_data())
            .map_err(StorageError::io(&self.path))?;
        self.file_bytes = keep_file_bytes;
        self.writeback_from = self.writeback_from.min(keep_file_bytes);
        self.next_seq = mark.next_seq;
        self.payload_bytes = mark.payload_bytes;
        self.last_chunk = mark.last_chunk;
        Ok(())
    }

    /// Encodes one chunk into the write buffer, writing the buffer out when it passes `write_buffer_bytes`.
    pub(crate) fn append_chunk<R: RecordBytes>(
        &mut self,
        records: &[R],
        write_buffer_bytes: u32,
    ) -> Result<(), StorageError> {
        self.last_chunk = Some((self.len(), self.next_seq, self.payload_bytes));
        let header = record::encode_chunk(&mut self.buffer, self.next_seq, records);
        self.next_seq = header.next_seq();
        self.payload_bytes += records.iter().map(|r| r.byte_len() as u64).sum::<u64>();
        if self.buffer.len() >= write_buffer_bytes as usize {
            self.write_out()?;
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts writing the full pages written out since the last call to the disk, so the
    /// disk works while the next buffer fills and the sync at the next roll or flush waits
    /// for the tail only. Whole pages only: a page still being filled would be written
    /// again. Best effort: a failed hint costs nothing but time.
    fn start_writeback(&mut self) {
        let end = self.file_bytes / WRITEBACK_PAGE_BYTES * WRITEBACK_PAGE_BYTES;
        if end <= self.writeback_from {
            return;
        }
        if let Err(error) = self
            .reader
            .start_writeback(self.writeback_from, end - self.writeback_from)
        {
            tracing::debug!(path = %self.path.display(), %error, "starting writeback failed");
        }
        self.writeback_from = end;
    }

    /// Hands buffered bytes to the OS (not yet durable).
    ///
    /// Positioned at `file_bytes`: after a failed write, the next one overwrites
    /// whatever part of the buffer reached the file.
    pub(crate) fn write_out(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.reader
            .write_all_at(&self.buffer, self.file_bytes)
            .map_err(StorageError::io(&self.path))?;
        self.file_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes out and syncs: everything appended so far is durable.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        self.write_out()?;
        self.reader
            .sync_data()
            .map_err(StorageError::io(&self.path))
    }
}

/// Maps `len` bytes of `file` from `offset` read-only.
pub(crate) fn map_window(
    file: &dyn FileHandle,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Mmap, StorageError> {
    file.map(offset, len).map_err(StorageError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;
    use std::sync::Mutex;

    /// A segment file that records the writeback hints it gets.
    #[derive(Debug)]
    struct Hinted {
        real: Arc<dyn FileHandle>,
        hints: Mutex<Vec<(u64, u64)>>,
    }

    impl FileHandle for Hinted {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            self.real.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.real.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.real.sync_data()
        }
        fn sync_all(&self) -> std::io::Result<()> {
            self.real.sync_all()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.real.set_len(len)
        }
        fn len(&self) -> std::io::Result<u64> {
            self.real.len()
        }
        fn map(&self, offset: u64, len: usize) -> std::io::Result<Mmap> {
            self.real.map(offset, len)
        }
        fn start_writeback(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.hints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((offset, len));
            Ok(())
        }
    }

    #[test]
    fn writeback_hints_cover_each_whole_page_written_out_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(file_name(0));
        let real = RealFs.create_new(&path).expect("create");
        let file = Arc::new(Hinted {
            real,
            hints: Mutex::new(Vec::new()),
        });
        let mut segment = ActiveSegment {
            reader: Arc::clone(&file) as Arc<dyn FileHandle>,
            path,
            first_seq: 0,
            next_seq: 0,
            file_bytes: SEGMENT_HEADER_BYTES as u64,
            buffer: Vec::new(),
            payload_bytes: 0,
            last_chunk: None,
            writeback_from: 0,
        };
        for _ in 0..40 {
            segment
                .append_chunk(&[vec![1u8; 1000]], 3000)
                .expect("append");
        }
        let hints = file.hints.lock().expect("hints").clone();
        assert!(hints.len() >= 2, "{hints:?}");
        let mut expected_from = 0;
        for &(from, len) in &hints {
            assert_eq!(from, expected_from, "hints are contiguous: {hints:?}");
            assert!(
                len > 0 && (from + len) % WRITEBACK_PAGE_BYTES == 0,
                "{hints:?}"
            );
            expected_from = from + len;
        }
        assert!(
            expected_from <= segment.file_bytes,
            "no hint past what was written out"
        );
    }
}
