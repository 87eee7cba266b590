//! Whole DAG-CBOR values as a tree borrowing from the input, charged to a [`Budget`].

use super::reader::Reader;
use super::{CborError, CBOR_DEPTH_MAX};

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

    /// Charges `count` items of `T`, or refuses with [`CborError::TooManyValues`].
    pub fn charge<T>(&mut self, count: u64) -> Result<(), CborError> {
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(std::mem::size_of::<T>()))
            .ok_or(CborError::TooManyValues)?;
        self.bytes_left = self
            .bytes_left
            .checked_sub(bytes)
            .ok_or(CborError::TooManyValues)?;
        Ok(())
    }
}

impl<'a> Reader<'a> {
    /// Reads one whole value. Its arrays and maps are allocated at their exact size after
    /// being charged to `budget`, so the tree's heap never exceeds what the budget had.
    pub fn value(&mut self, depth: usize, budget: &mut Budget) -> Result<Value<'a>, CborError> {
        if depth > CBOR_DEPTH_MAX {
            return Err(CborError::TooDeep);
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
                    std::str::from_utf8(bytes).map_err(|_| CborError::NotUtf8 { at: head.at })?,
                )
            }
            4 => {
                // Each item takes at least one byte: a count beyond what is left is truncated input.
                if head.arg > left {
                    return Err(CborError::Truncated {
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
                    return Err(CborError::Truncated {
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
                    return Err(CborError::WrongType {
                        what: "CID link",
                        at: inner.at,
                    });
                }
                let bytes = self.take(inner.arg)?;
                // A binary CID in DAG-CBOR carries the identity multibase prefix 0x00.
                match bytes.split_first() {
                    Some((0, cid)) => Value::Link(cid),
                    _ => return Err(CborError::Malformed { at: inner.at }),
                }
            }
            6 => {
                return Err(CborError::UnsupportedTag {
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
                _ => return Err(CborError::Malformed { at: head.at }),
            },
            _ => return Err(CborError::Malformed { at: head.at }),
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
