//! A bounded DAG-CBOR reader: item heads, strings, skipping, and whole values as a
//! tree that borrows from the input.
//!
//! Every length is checked against the bytes left before it is used, nesting is
//! bounded by [`CBOR_DEPTH_MAX`], indefinite lengths (forbidden in DAG-CBOR) are
//! refused, and every array and map is charged to a [`Budget`] in bytes before it is
//! allocated, so the memory a decode takes is bounded by the caller, whatever the input.

use crate::source::frame::FrameError;

/// Deepest nesting accepted while reading or skipping a value.
pub const CBOR_DEPTH_MAX: usize = 64;
/// The CBOR tag DAG-CBOR uses for CID links.
const TAG_CID: u64 = 42;

/// One DAG-CBOR value, borrowing strings and bytes from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer (CBOR's range is -2^64..2^64).
    Int(i128),
    /// A float (the atproto data model forbids them; kept if present).
    Float(f64),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A text string.
    Text(&'a str),
    /// An array.
    Array(Vec<Value<'a>>),
    /// A map with text keys, in the input's order.
    Map(Vec<(&'a str, Value<'a>)>),
    /// A CID link (tag 42): the binary CID without its multibase prefix.
    Link(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The value under `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(pairs) => pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text, if this is one.
    pub fn as_text(&self) -> Option<&'a str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}

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

    pub fn take(&mut self, n: u64) -> Result<&'a [u8], FrameError> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(FrameError::Truncated {
                at: self.bytes.len(),
            });
        }
        let out = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(out)
    }

    pub fn head(&mut self) -> Result<Head, FrameError> {
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
            31 => return Err(FrameError::Indefinite { at }),
            _ => return Err(FrameError::Malformed { at }),
        };
        Ok(Head { major, arg, at })
    }

    pub fn text(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let head = self.head()?;
        if head.major != 3 {
            return Err(FrameError::WrongType { what, at: head.at });
        }
        let bytes = self.take(head.arg)?;
        std::str::from_utf8(bytes).map_err(|_| FrameError::NotUtf8 { at: head.at })
    }

    pub fn int(&mut self, what: &'static str) -> Result<i64, FrameError> {
        let head = self.head()?;
        match head.major {
            0 => i64::try_from(head.arg).map_err(|_| FrameError::WrongType { what, at: head.at }),
            1 => i64::try_from(head.arg)
                .map(|n| -1 - n)
                .map_err(|_| FrameError::WrongType { what, at: head.at }),
            _ => Err(FrameError::WrongType { what, at: head.at }),
        }
    }

    /// Skips one value, bounded in depth; lengths are checked before use.
    pub fn skip(&mut self, depth: usize) -> Result<(), FrameError> {
        if depth > CBOR_DEPTH_MAX {
            return Err(FrameError::TooDeep);
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
                    return Err(FrameError::Truncated {
                        at: self.bytes.len(),
                    });
                }
                for _ in 0..items {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            6 => self.skip(depth + 1),
            _ => Err(FrameError::Malformed { at: head.at }),
        }
    }

    pub fn map_len(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let head = self.head()?;
        if head.major != 5 {
            return Err(FrameError::WrongType { what, at: head.at });
        }
        Ok(head.arg)
    }
}

/// Heap bytes a decode may still allocate; each allocation is charged before it is made.
#[derive(Debug)]
pub struct Budget {
    bytes_left: usize,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Budget { bytes_left: bytes }
    }

    /// Charges `count` items of `T`, or refuses with [`FrameError::TooManyValues`].
    pub fn charge<T>(&mut self, count: u64) -> Result<(), FrameError> {
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(std::mem::size_of::<T>()))
            .ok_or(FrameError::TooManyValues)?;
        self.bytes_left = self
            .bytes_left
            .checked_sub(bytes)
            .ok_or(FrameError::TooManyValues)?;
        Ok(())
    }
}

impl<'a> Reader<'a> {
    /// Reads one whole value. Its arrays and maps are allocated at their exact size after
    /// being charged to `budget`, so the tree's heap never exceeds what the budget had.
    pub fn value(&mut self, depth: usize, budget: &mut Budget) -> Result<Value<'a>, FrameError> {
        if depth > CBOR_DEPTH_MAX {
            return Err(FrameError::TooDeep);
        }
        let head = self.head()?;
        let left = (self.bytes.len() - self.at) as u64;
        Ok(match head.major {
            0 => Value::Int(i128::from(head.arg)),
            1 => Value::Int(-1 - i128::from(head.arg)),
            2 => Value::Bytes(self.take(head.arg)?),
            3 => {
                let bytes = self.take(head.arg)?;
                Value::Text(
                    std::str::from_utf8(bytes).map_err(|_| FrameError::NotUtf8 { at: head.at })?,
                )
            }
            4 => {
                // Each item takes at least one byte: a count beyond what is left is truncated input.
                if head.arg > left {
                    return Err(FrameError::Truncated {
                        at: self.bytes.len(),
                    });
                }
                budget.charge::<Value>(head.arg)?;
                let mut items = Vec::with_capacity(head.arg as usize);
                for _ in 0..head.arg {
                    items.push(self.value(depth + 1, budget)?);
                }
                Value::Array(items)
            }
            5 => {
                if head.arg.saturating_mul(2) > left {
                    return Err(FrameError::Truncated {
                        at: self.bytes.len(),
                    });
                }
                budget.charge::<(&str, Value)>(head.arg)?;
                let mut pairs = Vec::with_capacity(head.arg as usize);
                for _ in 0..head.arg {
                    let key = self.text("map key")?;
                    pairs.push((key, self.value(depth + 1, budget)?));
                }
                Value::Map(pairs)
            }
            6 if head.arg == TAG_CID => {
                let inner = self.head()?;
                if inner.major != 2 {
                    return Err(FrameError::WrongType {
                        what: "CID link",
                        at: inner.at,
                    });
                }
                let bytes = self.take(inner.arg)?;
                // A binary CID in DAG-CBOR carries the identity multibase prefix 0x00.
                match bytes.split_first() {
                    Some((0, cid)) => Value::Link(cid),
                    _ => return Err(FrameError::Malformed { at: inner.at }),
                }
            }
            6 => {
                return Err(FrameError::UnsupportedTag {
                    tag: head.arg,
                    at: head.at,
                })
            }
            7 => match (head.arg, self.bytes[head.at] & 0x1f) {
                (20, _) => Value::Bool(false),
                (21, _) => Value::Bool(true),
                (22, _) => Value::Null,
                (bits, 25) => Value::Float(half_to_f64(bits as u16)),
                (bits, 26) => Value::Float(f64::from(f32::from_bits(bits as u32))),
                (bits, 27) => Value::Float(f64::from_bits(bits)),
                _ => return Err(FrameError::Malformed { at: head.at }),
            },
            _ => return Err(FrameError::Malformed { at: head.at }),
        })
    }
}

/// An IEEE 754 half-precision float's value.
fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    sign * match exponent {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}
