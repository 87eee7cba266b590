//! The on-disk format: segment header, chunk header, rkyv chunk body.
//!
//! ```text
//! segment file  = segment header (32 B) , chunk*
//! segment header: magic "SPWYSEG\0" | format_version u32 | header_bytes u32 | first_seq u64 | reserved u32 | header_crc u32
//! chunk         = chunk header (32 B) , body (body_bytes) , zero padding to a multiple of 8
//! chunk header  : magic "SPCK" | body_bytes u32 | first_seq u64 | record_count u32 | body_crc u32 | reserved u32 | header_crc u32
//! body          = rkyv archive of ChunkBody { records: Vec<Box<[u8]>> }
//! ```
//!
//! All integers are little-endian. `header_crc` is CRC32C of the header's first
//! 28 bytes, `body_crc` of the body. A chunk is validated before it is written
//! (structure) and after it is read (both checksums, then rkyv's bytecheck),
//! so a record is handed out only when every check passed.
//!
//! WARNING: these layouts are persisted. Do not change a field, its order or
//! its size without bumping [`FORMAT_VERSION`].

use rkyv::rancor;
use rkyv::with::InlineAsBox;
use rkyv::{Archive, Serialize};

/// The format version written in every segment header and in the manifest.
pub const FORMAT_VERSION: u32 = 1;
/// Size of a segment file's header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a chunk's header.
pub const CHUNK_HEADER_BYTES: usize = 32;
/// Chunks start at multiples of this many bytes, so rkyv bodies are aligned in mapped memory.
pub const CHUNK_ALIGN_BYTES: usize = 8;
/// Bytes a chunk adds to its records besides 8 per record: header, rkyv root, alignment slack.
pub const CHUNK_OVERHEAD_BYTES: usize = CHUNK_HEADER_BYTES + 8 + 3 + CHUNK_ALIGN_BYTES;
/// Bytes each record adds inside a chunk body (rkyv's relative pointer and length).
pub const RECORD_OVERHEAD_BYTES: usize = 8;
/// The largest record the format can hold (a chunk body's length is a `u32`).
pub const RECORD_BYTES_LIMIT: u32 = 1 << 30;

const SEGMENT_MAGIC: [u8; 8] = *b"SPWYSEG\0";
const CHUNK_MAGIC: [u8; 4] = *b"SPCK";

/// One record inside a chunk body, archived as a boxed byte slice (zero-copy on read).
#[derive(Archive, Serialize)]
struct RecordRef<'a> {
    #[rkyv(with = InlineAsBox)]
    bytes: &'a [u8],
}

/// A chunk's body. WARNING: persisted; see the module docs.
///
/// Only read through its archived form outside tests: [`encode_chunk`] writes the same bytes by hand.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Archive, Serialize)]
struct ChunkBody<'a> {
    records: Vec<RecordRef<'a>>,
}

/// A check on persisted bytes that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatFault {
    /// Fewer bytes than a header needs.
    Short,
    /// The magic bytes are wrong: not a header, or zeroed space.
    BadMagic,
    /// The header's own checksum does not match.
    HeaderChecksum,
    /// The header is intact but describes an impossible chunk.
    BadHeader(&'static str),
    /// The body's checksum does not match.
    BodyChecksum,
    /// The body passed its checksum but not rkyv's validation.
    BadBody(String),
    /// The segment's format version is not ours.
    Version(u32),
}

impl std::fmt::Display for FormatFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatFault::Short => write!(f, "truncated header"),
            FormatFault::BadMagic => write!(f, "bad magic bytes"),
            FormatFault::HeaderChecksum => write!(f, "header checksum mismatch"),
            FormatFault::BadHeader(why) => write!(f, "invalid header: {why}"),
            FormatFault::BodyChecksum => write!(f, "body checksum mismatch"),
            FormatFault::BadBody(why) => write!(f, "body failed validation: {why}"),
            FormatFault::Version(v) => write!(f, "format version {v}, expected {FORMAT_VERSION}"),
        }
    }
}

/// Rounds `len` up to the chunk alignment.
pub fn padded(len: usize) -> usize {
    len.div_ceil(CHUNK_ALIGN_BYTES) * CHUNK_ALIGN_BYTES
}

/// Upper bound of a chunk's size on disk holding `record_count` records of `payload_bytes` in all.
pub fn chunk_bytes_for(record_count: u64, payload_bytes: u64) -> u64 {
    CHUNK_OVERHEAD_BYTES as u64 + record_count * RECORD_OVERHEAD_BYTES as u64 + payload_bytes
}

/// A record's bytes: one slice, or parts written back to back.
pub trait RecordBytes {
    /// Length in bytes.
    fn byte_len(&self) -> usize;
    /// Appends the record's bytes to `out`.
    fn write_to(&self, out: &mut Vec<u8>);
}

impl<T: AsRef<[u8]>> RecordBytes for T {
    fn byte_len(&self) -> usize {
        self.as_ref().len()
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_ref());
    }
}

/// A record given as two parts stored back to back (a header and a payload), so the
/// caller need not join them in a buffer of its own before the log copies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordParts<'a> {
    /// The first bytes of the record.
    pub head: &'a [u8],
    /// The bytes after `head`.
    pub tail: &'a [u8],
}

impl RecordBytes for RecordParts<'_> {
    fn byte_len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head);
        out.extend_from_slice(self.tail);
    }
}

/// How many of `records` (at least one) go into the next chunk of about `target_bytes`.
pub fn records_for_chunk<R: RecordBytes>(records: &[R], target_bytes: u32) -> usize {
    let mut size = CHUNK_OVERHEAD_BYTES;
    for (count, record) in records.iter().enumerate() {
        size += RECORD_OVERHEAD_BYTES + record.byte_len();
        if count > 0 && size > target_bytes as usize {
            return count;
        }
    }
    records.len()
}

/// A decoded chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Length of the rkyv body, without padding.
    pub body_bytes: u32,
    /// Sequence number of the chunk's first record.
    pub first_seq: u64,
    /// Records in the chunk (>= 1).
    pub record_count: u32,
    /// CRC32C of the body.
    pub body_crc: u32,
}

impl ChunkHeader {
    /// The chunk's total size on disk: header, body, padding.
    pub fn chunk_bytes(&self) -> usize {
        padded(CHUNK_HEADER_BYTES + self.body_bytes as usize)
    }

    /// The sequence number after the chunk's last record.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.record_count)
    }

    fn encode(&self) -> [u8; CHUNK_HEADER_BYTES] {
        let mut out = [0u8; CHUNK_HEADER_BYTES];
        out[0..4].copy_from_slice(&CHUNK_MAGIC);
        out[4..8].copy_from_slice(&self.body_bytes.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.record_count.to_le_bytes());
        out[20..24].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatFault> {
        let header = bytes.get(..CHUNK_HEADER_BYTES).ok_or(FormatFault::Short)?;
        if header[0..4] != CHUNK_MAGIC {
            return Err(FormatFault::BadMagic);
        }
        if crc32c::crc32c(&header[..28]) != le_u32(&header[28..32]) {
            return Err(FormatFault::HeaderChecksum);
        }
        let parsed = ChunkHeader {
            body_bytes: le_u32(&header[4..8]),
            first_seq: le_u64(&header[8..16]),
            record_count: le_u32(&header[16..20]),
            body_crc: le_u32(&header[20..24]),
        };
        if parsed.record_count == 0 {
            return Err(FormatFault::BadHeader("zero records"));
        }
        if u64::from(parsed.body_bytes)
            < u64::from(parsed.record_count) * RECORD_OVERHEAD_BYTES as u64
        {
            return Err(FormatFault::BadHeader(
                "body too short for its record count",
            ));
        }
        Ok(parsed)
    }
}

/// Appends one chunk holding `records` (numbered from `first_seq`) to `out`.
///
/// `out.len()` must be a multiple of [`CHUNK_ALIGN_BYTES`] and `out`'s start
/// must map to an aligned file offset; the chunk is padded so the next one is too.
/// Returns the chunk's header.
///
/// The body is written by hand in exactly the bytes rkyv serialises a `ChunkBody`
/// to (a test compares the two on random records, and every read checks the body
/// with rkyv's validation): each record's bytes back to back, zero padding to 4, one
/// `(i32 offset relative to itself, u32 len)` per record, then the root vector's
/// `(i32 relative offset, u32 len)`. Copying each record once, straight from its
/// parts, is what the hand-written form buys over rkyv's serialiser (which needs one
/// contiguous slice per record and a `Vec` of references per chunk).
pub fn encode_chunk<R: RecordBytes>(
    out: &mut Vec<u8>,
    first_seq: u64,
    records: &[R],
) -> ChunkHeader {
    assert!(!records.is_empty(), "a chunk holds at least one record");
    assert_eq!(out.len() % CHUNK_ALIGN_BYTES, 0, "chunks start aligned");
    let payload_bytes: usize = records.iter().map(RecordBytes::byte_len).sum();
    let header_at = out.len();
    let body_at = header_at + CHUNK_HEADER_BYTES;
    let array_at = body_at + payload_bytes.next_multiple_of(4);
    let body_bytes = array_at - body_at + records.len() * RECORD_OVERHEAD_BYTES + 8;
    out.reserve(padded(CHUNK_HEADER_BYTES + body_bytes));
    out.resize(body_at, 0);
    for record in records {
        record.write_to(out);
    }
    out.resize(array_at, 0);
    let mut record_at = body_at;
    for record in records {
        let len = record.byte_len();
        out.extend_from_slice(&relative_offset(out.len(), record_at).to_le_bytes());
        out.extend_from_slice(&archived_len(len).to_le_bytes());
        record_at += len;
    }
    out.extend_from_slice(&relative_offset(out.len(), array_at).to_le_bytes());
    out.extend_from_slice(&archived_len(records.len()).to_le_bytes());
    debug_assert_eq!(out.len() - body_at, body_bytes);
    let header = ChunkHeader {
        body_bytes: u32::try_from(body_bytes).expect("chunk body bounded by record_bytes_max"),
        first_seq,
        record_count: u32::try_from(records.len())
            .expect("chunk record count bounded by chunk size"),
        body_crc: crc32c::crc32c(&out[body_at..]),
    };
    out[header_at..body_at].copy_from_slice(&header.encode());
    out.resize(header_at + header.chunk_bytes(), 0);
    // Paired with the checks after every read: what is about to be written must decode back.
    debug_assert_eq!(ChunkHeader::decode(&out[header_at..]), Ok(header));
    debug_assert!(
        check_body(&header, &out[body_at..body_at + header.body_bytes as usize]).is_ok(),
        "a hand-written chunk body fails rkyv's validation"
    );
    header
}

/// rkyv's relative pointer stored at `from` to `to`: a signed 32-bit distance.
fn relative_offset(from: usize, to: usize) -> i32 {
    // Both lie inside one chunk body, whose length is a u32 bounded by the record limit (1 GiB).
    i32::try_from(to as i64 - from as i64).expect("offsets inside one chunk body")
}

/// rkyv's archived length: a 32-bit count.
fn archived_len(len: usize) -> u32 {
    u32::try_from(len).expect("lengths inside one chunk body")
}

/// The same chunk through rkyv's own serialiser: the oracle of the hand-written body.
#[cfg(test)]
fn encode_chunk_with_rkyv<R: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    first_seq: u64,
    records: &[R],
) -> ChunkHeader {
    let header_at = out.len();
    out.resize(header_at + CHUNK_HEADER_BYTES, 0);
    let body = ChunkBody {
        records: records
            .iter()
            .map(|r| RecordRef { bytes: r.as_ref() })
            .collect(),
    };
    let body_at = out.len();
    let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&body, std::mem::take(out));
    *out = written.expect("rkyv serialisation into a Vec");
    let header = ChunkHeader {
        body_bytes: (out.len() - body_at) as u32,
        first_seq,
        record_count: records.len() as u32,
        body_crc: crc32c::crc32c(&out[body_at..]),
    };
    out[header_at..body_at].copy_from_slice(&header.encode());
    out.resize(header_at + header.chunk_bytes(), 0);
    header
}

/// A chunk's checked body: the records' byte slices, borrowed from the bytes read.
pub struct ChunkView<'a> {
    archived: &'a ArchivedChunkBody<'a>,
}

impl<'a> ChunkView<'a> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.archived.records.len()
    }

    /// Whether the chunk holds no records (never true for a checked chunk).
    pub fn is_empty(&self) -> bool {
        self.archived.records.is_empty()
    }

    /// The record at `index` within the chunk.
    pub fn record(&self, index: usize) -> &'a [u8] {
        self.archived.records[index].bytes.get()
    }
}

/// Checks a chunk body against its header (checksum, then rkyv validation) and views it.
///
/// `body` must be exactly `header.body_bytes` long and 4-byte aligned.
pub fn check_body<'a>(header: &ChunkHeader, body: &'a [u8]) -> Result<ChunkView<'a>, FormatFault> {
    if crc32c::crc32c(body) != header.body_crc {
        return Err(FormatFault::BodyChecksum);
    }
    let archived = rkyv::access::<ArchivedChunkBody, rancor::Error>(body)
        .map_err(|e| FormatFault::BadBody(e.to_string()))?;
    if archived.records.len() != header.record_count as usize {
        return Err(FormatFault::BadBody(format!(
            "{} records in the body, {} in the header",
            archived.records.len(),
            header.record_count
        )));
    }
    Ok(ChunkView { archived })
}

/// Encodes a segment file's header.
pub fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    out[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a segment header and returns its first sequence number.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, FormatFault> {
    let header = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(FormatFault::Short)?;
    if header[0..8] != SEGMENT_MAGIC {
        return Err(FormatFault::BadMagic);
    }
    if crc32c::crc32c(&header[..28]) != le_u32(&header[28..32]) {
        return Err(FormatFault::HeaderChecksum);
    }
    let version = le_u32(&header[8..12]);
    if version != FORMAT_VERSION {
        return Err(FormatFault::Version(version));
    }
    Ok(le_u64(&header[16..24]))
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned_copy(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn chunk_round_trips_records_of_any_length() {
        let records: Vec<Vec<u8>> = vec![vec![], vec![7u8; 1], vec![9u8; 513]];
        let mut out = Vec::new();
        let header = encode_chunk(&mut out, 42, &records);
        assert_eq!(out.len() % CHUNK_ALIGN_BYTES, 0);
        assert_eq!(out.len(), header.chunk_bytes());
        assert!(out.len() as u64 <= chunk_bytes_for(3, 514));
        let buf = aligned_copy(&out);
        let decoded = ChunkHeader::decode(&buf).expect("header");
        assert_eq!(decoded, header);
        assert_eq!(decoded.first_seq, 42);
        let body = &buf[CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + decoded.body_bytes as usize];
        let view = check_body(&decoded, body).expect("body");
        assert_eq!(view.len(), 3);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(view.record(i), &r[..]);
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let records = vec![b"hello".to_vec(), b"world!".to_vec()];
        let mut out = Vec::new();
        encode_chunk(&mut out, 1, &records);
        let used =
            CHUNK_HEADER_BYTES + ChunkHeader::decode(&out).expect("header").body_bytes as usize;
        for byte in 0..used {
            for bit in 0..8 {
                let mut bad = aligned_copy(&out);
                bad[byte] ^= 1 << bit;
                let outcome = ChunkHeader::decode(&bad).and_then(|h| {
                    let body = bad
                        .get(CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + h.body_bytes as usize)
                        .ok_or(FormatFault::Short)?;
                    check_body(&h, body).map(|_| ())
                });
                assert!(
                    outcome.is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_hand_written_chunk_is_byte_for_byte_what_rkyv_writes(
            records in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..12),
            split in 0usize..40,
            chunks_before in 0usize..3,
        ) {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            // Earlier chunks in the buffer: offsets are relative, the start stays aligned.
            for i in 0..chunks_before {
                encode_chunk(&mut ours, i as u64, &[b"earlier".as_slice()]);
                encode_chunk_with_rkyv(&mut theirs, i as u64, &[b"earlier".as_slice()]);
            }
            let parts: Vec<RecordParts<'_>> = records
                .iter()
                .map(|r| {
                    let (head, tail) = r.split_at(split.min(r.len()));
                    RecordParts { head, tail }
                })
                .collect();
            let header = encode_chunk(&mut ours, 9, &parts);
            let oracle = encode_chunk_with_rkyv(&mut theirs, 9, &records);
            proptest::prop_assert_eq!(header, oracle);
            proptest::prop_assert_eq!(&ours, &theirs);
        }
    }

    #[test]
    fn records_for_chunk_packs_to_target_and_takes_at_least_one() {
        let small = vec![vec![0u8; 100]; 1000];
        let n = records_for_chunk(&small, 4096);
        assert!(n > 1);
        assert!(chunk_bytes_for(n as u64, 100 * n as u64) <= 4096);
        assert!(chunk_bytes_for(n as u64 + 1, 100 * (n as u64 + 1)) > 4096);
        let huge = vec![vec![0u8; 100_000]];
        assert_eq!(records_for_chunk(&huge, 4096), 1);
    }

    #[test]
    fn segment_header_refuses_other_versions() {
        let mut header = encode_segment_header(77);
        assert_eq!(decode_segment_header(&header), Ok(77));
        header[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&header[..28]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&header), Err(FormatFault::Version(2)));
    }
}
