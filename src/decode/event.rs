//! A relay frame decoded in full: a `#commit`'s operations with their records from the
//! CAR blocks, `#identity` and `#account`.

use super::car::Car;
use crate::cbor::{Budget, FrameError, Reader, Value};

/// One record operation of a `#commit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Op<'a> {
    /// `create`, `update` or `delete`.
    pub action: &'a str,
    /// The collection NSID, e.g. `app.bsky.feed.post`.
    pub collection: &'a str,
    /// The record key.
    pub rkey: &'a str,
    /// The record's binary CID (absent on delete).
    pub cid: Option<&'a [u8]>,
    /// The record, decoded from its block (absent on delete, or when the block is missing).
    pub record: Option<Value<'a>>,
}

/// A `#commit` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit<'a> {
    /// The relay seq.
    pub seq: u64,
    /// The repo's DID.
    pub repo: &'a str,
    /// The commit's revision (TID).
    pub rev: &'a str,
    /// The commit object's binary CID.
    pub commit: Option<&'a [u8]>,
    /// The relay's time.
    pub time: &'a str,
    /// Its operations, in frame order.
    pub ops: Vec<Op<'a>>,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<'a> {
    /// `#commit`.
    Commit(Commit<'a>),
    /// `#identity`.
    Identity {
        /// The relay seq.
        seq: u64,
        /// The account.
        did: &'a str,
        /// The relay's time.
        time: &'a str,
        /// The new handle, if the frame carries one.
        handle: Option<&'a str>,
    },
    /// `#account`.
    Account {
        /// The relay seq.
        seq: u64,
        /// The account.
        did: &'a str,
        /// The relay's time.
        time: &'a str,
        /// Whether the account is active.
        active: bool,
        /// Why it is not, if it is not.
        status: Option<&'a str>,
    },
    /// Any other message (`#sync`, `#info`, an unknown type) or an error frame: nothing to output.
    Other,
}

/// Decodes a whole frame of at most `frame_bytes_max` bytes.
///
/// Everything it allocates (value trees of the body and the records, the block index,
/// the operations) is charged to one budget of `frame_bytes_max` bytes, so a decode's
/// memory stays within the frame size limit whatever the input.
///
/// # Errors
/// A [`FrameError`] for anything malformed: the frame, the CAR file, a record block.
pub fn decode_frame(frame: &[u8], frame_bytes_max: usize) -> Result<Decoded<'_>, FrameError> {
    if frame.len() > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: frame_bytes_max,
        });
    }
    let mut budget = Budget::new(frame_bytes_max);
    let mut reader = Reader::new(frame);
    let header = reader.value(0, &mut budget)?;
    let body = reader.value(0, &mut budget)?;
    if reader.at != frame.len() {
        return Err(FrameError::TrailingBytes(frame.len() - reader.at));
    }
    if !matches!(header.get("op"), Some(Value::Int(1))) {
        return Ok(Decoded::Other);
    }
    let seq = || match body.get("seq") {
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| FrameError::Missing("seq")),
        _ => Err(FrameError::Missing("seq")),
    };
    let text = |key: &'static str| body.get(key).and_then(Value::as_text);
    let required = |key: &'static str| text(key).ok_or(FrameError::Missing(key));
    Ok(match header.get("t").and_then(Value::as_text) {
        Some("#commit") => {
            let blocks = match body.get("blocks") {
                Some(Value::Bytes(b)) => *b,
                _ => return Err(FrameError::Missing("blocks")),
            };
            let car = Car::parse(blocks, &mut budget)?;
            let mut ops = Vec::new();
            if let Some(Value::Array(items)) = body.get("ops") {
                budget.charge::<Op>(items.len() as u64)?;
                ops.reserve_exact(items.len());
                for item in items {
                    let path = item
                        .get("path")
                        .and_then(Value::as_text)
                        .ok_or(FrameError::Missing("op path"))?;
                    let (collection, rkey) = path
                        .split_once('/')
                        .ok_or(FrameError::Missing("collection/rkey in an op path"))?;
                    let action = item
                        .get("action")
                        .and_then(Value::as_text)
                        .ok_or(FrameError::Missing("op action"))?;
                    let cid = match item.get("cid") {
                        Some(Value::Link(cid)) => Some(*cid),
                        _ => None,
                    };
                    let record = match cid.and_then(|c| car.block(c)) {
                        Some(block) => Some(Reader::new(block).value(0, &mut budget)?),
                        None => None,
                    };
                    ops.push(Op {
                        action,
                        collection,
                        rkey,
                        cid,
                        record,
                    });
                }
            }
            Decoded::Commit(Commit {
                seq: seq()?,
                repo: required("repo")?,
                rev: required("rev")?,
                commit: match body.get("commit") {
                    Some(Value::Link(cid)) => Some(*cid),
                    _ => None,
                },
                time: required("time")?,
                ops,
            })
        }
        Some("#identity") => Decoded::Identity {
            seq: seq()?,
            did: required("did")?,
            time: required("time")?,
            handle: text("handle"),
        },
        Some("#account") => Decoded::Account {
            seq: seq()?,
            did: required("did")?,
            time: required("time")?,
            active: matches!(body.get("active"), Some(Value::Bool(true))),
            status: text("status"),
        },
        _ => Decoded::Other,
    })
}
