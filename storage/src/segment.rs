//! One append-only segment file: creation, buffered appends, header walks and bounded mapped windows.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use crate::error::StorageError;
use crate::record::{self, SEGMENT_HEADER_BYTES};

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
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(dir))
}

/// Creates a new segment file holding only its header, durably.
pub(crate) fn create(dir: &Path, first_seq: u64) -> Result<ActiveSegment, StorageError> {
    let path = dir.join(file_name(first_seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(StorageError::io(&path))?;
    file.write_all(&record::encode_segment_header(first_seq))
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io(&path))?;
    sync_dir(dir)?;
    Ok(ActiveSegment {
        reader: Arc::new(file.try_clone().map_err(StorageError::io(&path))?),
        file,
        path,
        first_seq,
        next_seq: first_seq,
        file_bytes: SEGMENT_HEADER_BYTES as u64,
        buffer: Vec::new(),
        payload_bytes: 0,
        last_chunk: None,
    })
}

/// The segment appends go to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    file: File,
    /// A handle shared with read windows.
    pub reader: Arc<File>,
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
}

impl ActiveSegment {
    /// Reopens an existing segment for appends after recovery found its valid end.
    pub(crate) fn reopen(
        path: PathBuf,
        first_seq: u64,
        next_seq: u64,
        file_bytes: u64,
        payload_bytes: u64,
    ) -> Result<Self, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(StorageError::io(&path))?;
        Ok(ActiveSegment {
            reader: Arc::new(file.try_clone().map_err(StorageError::io(&path))?),
            file,
            path,
            first_seq,
            next_seq,
            file_bytes,
            buffer: Vec::new(),
            payload_bytes,
            last_chunk: None,
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

    /// Encodes one chunk into the write buffer, writing the buffer out when it passes `write_buffer_bytes`.
    pub(crate) fn append_chunk(
        &mut self,
        records: &[&[u8]],
        write_buffer_bytes: u32,
    ) -> Result<(), StorageError> {
        self.last_chunk = Some((self.len(), self.next_seq, self.payload_bytes));
        let header = record::encode_chunk(&mut self.buffer, self.next_seq, records);
        self.next_seq = header.next_seq();
        self.payload_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
        if self.buffer.len() >= write_buffer_bytes as usize {
            self.write_out()?;
        }
        Ok(())
    }

    /// Hands buffered bytes to the OS (not yet durable).
    pub(crate) fn write_out(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buffer)
            .map_err(StorageError::io(&self.path))?;
        self.file_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes out and syncs: everything appended so far is durable.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        self.write_out()?;
        self.file.sync_data().map_err(StorageError::io(&self.path))
    }
}

/// Maps `len` bytes of `file` from `offset` read-only.
pub(crate) fn map_window(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Mmap, StorageError> {
    // SAFETY: segment files are only appended to while open, and truncated only by
    // recovery before any map exists; the mapped range lies below the length already
    // written. Removing a file keeps existing maps valid. Another process truncating
    // the file would break this, which is why the manifest's lock keeps one owner.
    unsafe { MmapOptions::new().offset(offset).len(len).map(file) }.map_err(StorageError::io(path))
}
