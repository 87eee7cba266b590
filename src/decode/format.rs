//! Output formats of the sinks, collection and DID filters, and one frame rendered as JSON lines.

use std::fmt::Write as _;

use super::cid::cid_string;
use super::event::{decode_frame, Decoded};
use super::json::{push_str, push_value, rfc3339_utc, Dialect};
use crate::cbor::{Budget, FrameError, Reader, Value};

/// What a sink writes for each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The frame as received (Redis fields `seq`, `type`, `did`, `frame`).
    Raw,
    /// One Jetstream v1 JSON object per record operation, identity or account event.
    Jetstream,
    /// One rsky `StreamEvent` JSON object per record operation (field `event`).
    Rsky,
}

impl OutputFormat {
    /// Parses `raw`, `jetstream` or `rsky`.
    ///
    /// # Errors
    /// Any other name, with the accepted ones.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "raw" => Ok(OutputFormat::Raw),
            "jetstream" => Ok(OutputFormat::Jetstream),
            "rsky" => Ok(OutputFormat::Rsky),
            other => Err(format!(
                "{other:?} is not an output format: raw, jetstream or rsky"
            )),
        }
    }
}

/// Collections the rsky ingester kept: what the `rsky` format filters to when no collections are configured.
pub const RSKY_DEFAULT_COLLECTIONS: [&str; 2] = ["app.bsky.*", "chat.bsky.*"];
/// The most collection patterns and DIDs a filter takes.
pub const FILTER_ENTRIES_MAX: usize = 10_000;

/// Wanted collections (exact NSIDs or `prefix.*`) and wanted DIDs; empty lists want everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    exact: Vec<String>,
    prefixes: Vec<String>,
    dids: Vec<String>,
}

impl Filter {
    /// A filter from patterns like `app.bsky.feed.post` or `app.bsky.feed.*`, and DIDs.
    ///
    /// # Errors
    /// A pattern with `*` anywhere but a trailing `.*`, an empty entry, a DID not starting
    /// with `did:`, or more than [`FILTER_ENTRIES_MAX`] entries.
    pub fn new(collections: &[String], dids: &[String]) -> Result<Self, String> {
        if collections.len() + dids.len() > FILTER_ENTRIES_MAX {
            return Err(format!(
                "{} filter entries; at most {FILTER_ENTRIES_MAX}",
                collections.len() + dids.len()
            ));
        }
        let mut filter = Filter::default();
        for pattern in collections {
            match pattern.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('.') && !prefix[..prefix.len() - 1].contains('*') => {
                    filter.prefixes.push(prefix.to_string());
                }
                None if !pattern.is_empty() && !pattern.contains('*') => {
                    filter.exact.push(pattern.clone());
                }
                _ => {
                    return Err(format!(
                        "collection {pattern:?}: use an NSID (app.bsky.feed.post) or a prefix ending in .* (app.bsky.feed.*)"
                    ))
                }
            }
        }
        for did in dids {
            if !did.starts_with("did:") {
                return Err(format!("{did:?} is not a DID (did:plc:..., did:web:...)"));
            }
            filter.dids.push(did.clone());
        }
        filter.exact.sort();
        filter.dids.sort();
        Ok(filter)
    }

    /// The filter a sink of `format` applies: `collections` and `dids`, with rsky's
    /// collections ([`RSKY_DEFAULT_COLLECTIONS`]) when that format gets none.
    ///
    /// # Errors
    /// As [`Filter::new`].
    pub fn for_format(
        format: OutputFormat,
        collections: &[String],
        dids: &[String],
    ) -> Result<Self, String> {
        if format == OutputFormat::Rsky && collections.is_empty() {
            let defaults = RSKY_DEFAULT_COLLECTIONS.map(String::from);
            return Filter::new(&defaults, dids);
        }
        Filter::new(collections, dids)
    }

    /// Whether it wants everything.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.dids.is_empty()
    }

    /// Whether it has collection patterns.
    pub fn has_collections(&self) -> bool {
        !self.exact.is_empty() || !self.prefixes.is_empty()
    }

    /// Whether an operation on `collection` is wanted.
    pub fn wants_collection(&self, collection: &str) -> bool {
        !self.has_collections()
            || self
                .exact
                .binary_search_by(|e| e.as_str().cmp(collection))
                .is_ok()
            || self
                .prefixes
                .iter()
                .any(|p| collection.starts_with(p.as_str()))
    }

    /// Whether events of `did` are wanted.
    pub fn wants_did(&self, did: &str) -> bool {
        self.dids.is_empty() || self.dids.binary_search_by(|d| d.as_str().cmp(did)).is_ok()
    }

    /// Whether a frame is wanted, from its body alone (no CAR block is decoded): its DID,
    /// and for a `#commit`, whether any operation's collection is. Other frames pass on their DID.
    ///
    /// # Errors
    /// A malformed frame.
    pub fn wants_frame(&self, frame: &[u8], frame_bytes_max: usize) -> Result<bool, FrameError> {
        if self.is_empty() {
            return Ok(true);
        }
        let mut budget = Budget::new(frame_bytes_max);
        let mut reader = Reader::new(frame);
        let header = reader.value(0, &mut budget)?;
        let body = reader.value(0, &mut budget)?;
        let did = body
            .get("repo")
            .or_else(|| body.get("did"))
            .and_then(Value::as_text);
        if did.is_some_and(|d| !self.wants_did(d)) {
            return Ok(false);
        }
        if header.get("t").and_then(Value::as_text) != Some("#commit") || !self.has_collections() {
            return Ok(true);
        }
        Ok(match body.get("ops") {
            Some(Value::Array(ops)) => ops.iter().any(|op| {
                op.get("path")
                    .and_then(Value::as_text)
                    .and_then(|p| p.split_once('/'))
                    .is_some_and(|(collection, _)| self.wants_collection(collection))
            }),
            _ => false,
        })
    }
}

/// Renders a frame as JSON lines of `format` (not [`OutputFormat::Raw`]) into `out`;
/// returns how many lines it added (0 for frames with nothing wanted).
///
/// `received_at_us` is our receive time (Jetstream's `time_us`, rsky's `time`).
///
/// # Errors
/// A malformed frame, CAR file or record.
pub fn render(
    frame: &[u8],
    received_at_us: u64,
    format: OutputFormat,
    filter: &Filter,
    frame_bytes_max: usize,
    out: &mut Vec<String>,
) -> Result<usize, FrameError> {
    let before = out.len();
    let decoded = decode_frame(frame, frame_bytes_max)?;
    match (format, &decoded) {
        (OutputFormat::Raw, _) | (_, Decoded::Other) => {}
        (OutputFormat::Jetstream, Decoded::Commit(commit)) if filter.wants_did(commit.repo) => {
            for op in commit
                .ops
                .iter()
                .filter(|op| filter.wants_collection(op.collection))
            {
                let mut line = String::with_capacity(256);
                line.push_str("{\"did\":");
                push_str(&mut line, commit.repo, Dialect::Go);
                let _ = write!(
                    line,
                    ",\"time_us\":{received_at_us},\"kind\":\"commit\",\"commit\":{{\"rev\":"
                );
                push_str(&mut line, commit.rev, Dialect::Go);
                line.push_str(",\"operation\":");
                push_str(&mut line, op.action, Dialect::Go);
                line.push_str(",\"collection\":");
                push_str(&mut line, op.collection, Dialect::Go);
                line.push_str(",\"rkey\":");
                push_str(&mut line, op.rkey, Dialect::Go);
                if op.action != "delete" {
                    if let Some(record) = &op.record {
                        line.push_str(",\"record\":");
                        push_value(&mut line, record, Dialect::Go);
                    }
                    if let Some(cid) = op.cid {
                        let _ = write!(line, ",\"cid\":\"{}\"", cid_string(cid));
                    }
                }
                line.push_str("}}");
                out.push(line);
            }
        }
        (
            OutputFormat::Jetstream,
            Decoded::Identity {
                seq,
                did,
                time,
                handle,
            },
        ) if filter.wants_did(did) => {
            let mut line = String::with_capacity(160);
            line.push_str("{\"did\":");
            push_str(&mut line, did, Dialect::Go);
            let _ = write!(
                line,
                ",\"time_us\":{received_at_us},\"kind\":\"identity\",\"identity\":{{\"did\":"
            );
            push_str(&mut line, did, Dialect::Go);
            if let Some(handle) = handle {
                line.push_str(",\"handle\":");
                push_str(&mut line, handle, Dialect::Go);
            }
            let _ = write!(line, ",\"seq\":{seq},\"time\":");
            push_str(&mut line, time, Dialect::Go);
            line.push_str("}}");
            out.push(line);
        }
        (
            OutputFormat::Jetstream,
            Decoded::Account {
                seq,
                did,
                time,
                active,
                status,
            },
        ) if filter.wants_did(did) => {
            let mut line = String::with_capacity(160);
            line.push_str("{\"did\":");
            push_str(&mut line, did, Dialect::Go);
            let _ = write!(line, ",\"time_us\":{received_at_us},\"kind\":\"account\",\"account\":{{\"active\":{active},\"did\":");
            push_str(&mut line, did, Dialect::Go);
            let _ = write!(line, ",\"seq\":{seq}");
            if let Some(status) = status {
                line.push_str(",\"status\":");
                push_str(&mut line, status, Dialect::Go);
            }
            line.push_str(",\"time\":");
            push_str(&mut line, time, Dialect::Go);
            line.push_str("}}");
            out.push(line);
        }
        (OutputFormat::Rsky, Decoded::Commit(commit)) if filter.wants_did(commit.repo) => {
            let time = rfc3339_utc(received_at_us);
            for op in commit
                .ops
                .iter()
                .filter(|op| filter.wants_collection(op.collection))
            {
                let mut line = String::with_capacity(256);
                line.push_str("{\"type\":");
                push_str(&mut line, op.action, Dialect::Ascii);
                let _ = write!(line, ",\"seq\":{},\"time\":\"{time}\",\"did\":", commit.seq);
                push_str(&mut line, commit.repo, Dialect::Ascii);
                if let Some(cid) = commit.commit {
                    let _ = write!(line, ",\"commit\":\"{}\"", cid_string(cid));
                }
                line.push_str(",\"rev\":");
                push_str(&mut line, commit.rev, Dialect::Ascii);
                line.push_str(",\"collection\":");
                push_str(&mut line, op.collection, Dialect::Ascii);
                line.push_str(",\"rkey\":");
                push_str(&mut line, op.rkey, Dialect::Ascii);
                if op.action != "delete" {
                    if let Some(cid) = op.cid {
                        let _ = write!(line, ",\"cid\":\"{}\"", cid_string(cid));
                    }
                    if let Some(record) = &op.record {
                        line.push_str(",\"record\":");
                        push_value(&mut line, record, Dialect::Ascii);
                    }
                }
                line.push('}');
                out.push(line);
            }
        }
        // rsky wrote record operations only; Jetstream events of unwanted DIDs are skipped.
        _ => {}
    }
    Ok(out.len() - before)
}
