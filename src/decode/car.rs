//! CAR v1 files as a `#commit` frame's `blocks` carries them: a header, then (CID, block) sections.

use std::collections::HashMap;

use super::cid::{cid_len, varint};
use crate::cbor::{Budget, CborError, Reader, Value};

/// Heap the CAR header's value may take (`{version: 1, roots: [cid, ...]}`).
const HEADER_BYTES_MAX: usize = 4096;

/// The blocks of a CAR file, borrowed from it, by binary CID (hashed: a frame may carry many).
#[derive(Debug)]
pub struct Car<'a> {
    blocks: HashMap<&'a [u8], &'a [u8]>,
}

impl<'a> Car<'a> {
    /// Reads the header and indexes every section (charging the index to `budget`); reads no block's content.
    ///
    /// # Errors
    /// A truncated or malformed section, a header that is not CAR v1, a bad CID, or an
    /// index over the budget.
    pub fn parse(bytes: &'a [u8], budget: &mut Budget) -> Result<Self, CborError> {
        let (header_len, at) = varint(bytes).ok_or(CborError::Malformed { at: 0 })?;
        let header = bytes
            .get(at..)
            .and_then(|rest| rest.get(..usize::try_from(header_len).ok()?))
            .ok_or(CborError::Truncated { at: bytes.len() })?;
        let parsed = Reader::new(header).value(0, &mut Budget::new(HEADER_BYTES_MAX))?;
        if !matches!(parsed.get("version"), Some(Value::Int(1))) {
            return Err(CborError::WrongType {
                what: "CAR header version (only v1 is read)",
                at,
            });
        }
        let sections_start = at + header.len();
        // Count first, so the index is charged and allocated once at its size.
        let mut count = 0u64;
        Self::walk(bytes, sections_start, |_, _| count += 1)?;
        // A hash table slot per block, plus its control byte and the load factor's slack.
        budget.charge::<(&[u8], &[u8], u64)>(count * 2)?;
        let mut blocks = HashMap::with_capacity(count as usize);
        Self::walk(bytes, sections_start, |cid, block| {
            blocks.entry(cid).or_insert(block);
        })?;
        Ok(Car { blocks })
    }

    /// Calls `each(cid, block)` for every section from `offset`.
    fn walk(
        bytes: &'a [u8],
        mut offset: usize,
        mut each: impl FnMut(&'a [u8], &'a [u8]),
    ) -> Result<(), CborError> {
        while offset < bytes.len() {
            let (section_len, len_bytes) =
                varint(&bytes[offset..]).ok_or(CborError::Malformed { at: offset })?;
            let start = offset + len_bytes;
            let section = usize::try_from(section_len)
                .ok()
                .and_then(|len| bytes.get(start..start.checked_add(len)?))
                .ok_or(CborError::Truncated { at: bytes.len() })?;
            let cid_bytes = cid_len(section, start)?;
            each(&section[..cid_bytes], &section[cid_bytes..]);
            offset = start + section.len();
        }
        Ok(())
    }

    /// The block whose binary CID is `cid`.
    pub fn block(&self, cid: &[u8]) -> Option<&'a [u8]> {
        self.blocks.get(cid).copied()
    }

    /// How many blocks the file holds.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}
