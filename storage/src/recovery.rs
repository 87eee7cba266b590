//! Open-time recovery of a segment's tail: find the durable end, cut a torn tail, refuse damage before it.
//!
//! The tail segment is read chunk by chunk from its header, checking both
//! checksums and the sequence numbering. At the first chunk that fails:
//! - if a valid chunk header with a later sequence number follows anywhere in
//!   the rest of the file, the damage is in the middle of the log: a typed
//!   [`Corruption`] naming the file and offset, and nothing is changed;
//! - otherwise it is a torn or corrupt tail (an interrupted write): the file is
//!   cut at the last valid chunk and the cut is reported.
//!
//! The scan starts at the last chunk recorded in the manifest's tail checkpoint
//! (written at every sync), so its work is bounded by what was written since the
//! last sync, and by one segment (`segment_bytes_max`) at worst, whatever the
//! log's size. Damage in synced data before that chunk is reported by the read
//! that meets it, like damage in sealed segments.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::fs::{Cursor, ReadAt};

use crate::error::{Corruption, StorageError};
use crate::record::{
    self, ChunkHeader, FormatFault, CHUNK_ALIGN_BYTES, CHUNK_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

/// Bytes read at a time while scanning.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;

/// What a tail scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TailScan {
    /// Offset after the last valid chunk.
    pub valid_end: u64,
    /// Sequence number after the last valid record.
    pub next_seq: u64,
    /// Payload bytes of the valid records.
    pub payload_bytes: u64,
    /// Where the torn tail starts and why, with the records its readable headers claimed.
    pub torn: Option<TornTail>,
}

/// Where a scan begins: the segment's first chunk, or a checkpointed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanStart {
    pub offset: u64,
    pub seq: u64,
    pub payload_before: u64,
}

/// A tail to cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TornTail {
    pub fault: FormatFault,
    pub dropped_records: u64,
}

/// Scans a segment's chunks from its header to `file_len`.
pub(crate) fn scan_tail<F: ReadAt + ?Sized>(
    file: &F,
    path: &Path,
    first_seq: u64,
    file_len: u64,
    start: Option<ScanStart>,
) -> Result<TailScan, StorageError> {
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
    let mut offset = start.offset;
    let mut seq = start.seq;
    let mut payload_bytes = start.payload_before;
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
                offset += header.chunk_bytes() as u64;
                seq = header.next_seq();
                payload_bytes += payload;
            }
            Err(fault) => {
                let claimed = ChunkHeader::decode(&header_bytes)
                    .map(|h| u64::from(h.record_count))
                    .unwrap_or(0);
                if let Some(later) = valid_chunk_after(file, path, offset, file_len, seq)? {
                    return Err(StorageError::Corrupt(Corruption {
                        location: path.display().to_string(),
                        offset,
                        reason: format!(
                            "{fault}, with intact records after it (a chunk at offset {later})"
                        ),
                    }));
                }
                return Ok(TailScan {
                    valid_end: offset,
                    next_seq: seq,
                    payload_bytes,
                    torn: Some(TornTail {
                        fault,
                        dropped_records: claimed,
                    }),
                });
            }
        }
    }
    Ok(TailScan {
        valid_end: offset,
        next_seq: seq,
        payload_bytes,
        torn: None,
    })
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
