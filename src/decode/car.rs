//! CAR v1 files as a `#commit` frame's `blocks` carries them: a header, then (CID, block) sections.

use std::collections::HashMap;

use super::cbor::Reader;
use super::cid::{cid_len, varint};
use crate::source::frame::FrameError;

/// Values the CAR header may hold (`{version: 1, roots: [cid, ...]}`).
const HEADER_VALUES_MAX: usize = 64;

/// The blocks of a CAR file, borrowed from it, by binary CID (hashed: a frame may carry many).
#[derive(Debug)]
pub struct Car<'a> {
    blocks: HashMap<&'a [u8], &'a [u8]>,
}

impl<'a> Car<'a> {
    /// Reads the header and indexes every section; reads no block's content.
    ///
    /// # Errors
    /// A truncated or malformed section, a header that is not CAR v1, or a bad CID.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let (header_len, at) = varint(bytes).ok_or(FrameError::Malformed { at: 0 })?;
        let header = bytes
            .get(at..)
            .and_then(|rest| rest.get(..usize::try_from(header_len).ok()?))
            .ok_or(FrameError::Truncated { at: bytes.len() })?;
        let mut values_left = HEADER_VALUES_MAX;
        let parsed = Reader::new(header).value(0, &mut values_left)?;
        if !matches!(parsed.get("version"), Some(super::cbor::Value::Int(1))) {
            return Err(FrameError::WrongType {
                what: "CAR header version (only v1 is read)",
                at,
            });
        }
        let mut offset = at + header.len();
        let mut blocks = HashMap::new();
        while offset < bytes.len() {
            let (section_len, len_bytes) =
                varint(&bytes[offset..]).ok_or(FrameError::Malformed { at: offset })?;
            let start = offset + len_bytes;
            let section = usize::try_from(section_len)
                .ok()
                .and_then(|len| bytes.get(start..start.checked_add(len)?))
                .ok_or(FrameError::Truncated { at: bytes.len() })?;
            let cid_bytes = cid_len(section, start)?;
            blocks
                .entry(&section[..cid_bytes])
                .or_insert(&section[cid_bytes..]);
            offset = start + section.len();
        }
        Ok(Car { blocks })
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
