//! Item heads, text, integers and skipping, each length checked against the bytes left.

use super::CborError;

/// Deepest nesting accepted while reading or skipping a value.
pub const CBOR_DEPTH_MAX: usize = 64;

/// A bounded reader over DAG-CBOR bytes: every length is checked against the bytes left.
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    /// The offset of the next unread byte.
    pub at: usize,
}

/// A CBOR item head: major type, argument, and where it started.
#[derive(Clone, Copy)]
pub(crate) struct Head {
    pub major: u8,
    pub arg: u64,
    pub at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes, or [`CborError::Truncated`] if fewer are left.
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(CborError::Truncated {
                at: self.bytes.len(),
            });
        }
        let out = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(out)
    }

    /// The next item head; refuses indefinite lengths and reserved values.
    pub fn head(&mut self) -> Result<Head, CborError> {
        let at = self.at;
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]])),
            26 => {
                let b = self.take(4)?;
                u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            27 => {
                let b = self.take(8)?;
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            31 => return Err(CborError::Indefinite { at }),
            _ => return Err(CborError::Malformed { at }),
        };
        Ok(Head { major, arg, at })
    }

    /// The next item as a text string (`what` names it in the error).
    pub fn text(&mut self, what: &'static str) -> Result<&'a str, CborError> {
        let head = self.head()?;
        if head.major != 3 {
            return Err(CborError::WrongType { what, at: head.at });
        }
        let bytes = self.take(head.arg)?;
        std::str::from_utf8(bytes).map_err(|_| CborError::NotUtf8 { at: head.at })
    }

    /// The next item as an integer that fits an `i64` (`what` names it in the error).
    pub fn int(&mut self, what: &'static str) -> Result<i64, CborError> {
        let head = self.head()?;
        match head.major {
            0 => i64::try_from(head.arg).map_err(|_| CborError::WrongType { what, at: head.at }),
            1 => i64::try_from(head.arg)
                .map(|n| -1 - n)
                .map_err(|_| CborError::WrongType { what, at: head.at }),
            _ => Err(CborError::WrongType { what, at: head.at }),
        }
    }

    /// Skips one value, bounded in depth; lengths are checked before use.
    pub fn skip(&mut self, depth: usize) -> Result<(), CborError> {
        if depth > CBOR_DEPTH_MAX {
            return Err(CborError::TooDeep);
        }
        let head = self.head()?;
        match head.major {
            0 | 1 | 7 => Ok(()),
            2 | 3 => self.take(head.arg).map(|_| ()),
            4 | 5 => {
                let items = if head.major == 5 {
                    head.arg.saturating_mul(2)
                } else {
                    head.arg
                };
                // Each item takes at least one byte: a count beyond what is left is truncated input.
                if items > (self.bytes.len() - self.at) as u64 {
                    return Err(CborError::Truncated {
                        at: self.bytes.len(),
                    });
                }
                for _ in 0..items {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            6 => self.skip(depth + 1),
            _ => Err(CborError::Malformed { at: head.at }),
        }
    }

    /// The next item as a map head: its number of pairs (`what` names it in the error).
    pub fn map_len(&mut self, what: &'static str) -> Result<u64, CborError> {
        let head = self.head()?;
        if head.major != 5 {
            return Err(CborError::WrongType { what, at: head.at });
        }
        Ok(head.arg)
    }
}
