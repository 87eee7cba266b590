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
    /// One rsky `StreamEvent` JSON object per record operation, `#account` event and
    /// `#identity` event that carries a handle (field `event`).
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
        (
            OutputFormat::Rsky,
            Decoded::Identity {
                seq,
                did,
                handle: Some(handle),
                ..
            },
        ) if filter.wants_did(did) => {
            let mut line = String::with_capacity(160);
            let _ = write!(
                line,
                "{{\"type\":\"identity\",\"seq\":{seq},\"time\":\"{}\",\"did\":",
                rfc3339_utc(received_at_us)
            );
            push_str(&mut line, did, Dialect::Ascii);
            line.push_str(",\"handle\":");
            push_str(&mut line, handle, Dialect::Ascii);
            line.push('}');
            out.push(line);
        }
        (
            OutputFormat::Rsky,
            Decoded::Account {
                seq,
                did,
                active,
                status,
                ..
            },
        ) if filter.wants_did(did) => {
            let mut line = String::with_capacity(160);
            let _ = write!(
                line,
                "{{\"type\":\"account\",\"seq\":{seq},\"time\":\"{}\",\"did\":",
                rfc3339_utc(received_at_us)
            );
            push_str(&mut line, did, Dialect::Ascii);
            let _ = write!(line, ",\"active\":{active},\"status\":");
            match status {
                Some(status) => push_str(&mut line, rsky_account_status(status), Dialect::Ascii),
                None => line.push_str("null"),
            }
            line.push('}');
            out.push(line);
        }
        // rsky wrote no line for an `#identity` without a handle; Jetstream and rsky events
        // of unwanted DIDs are skipped.
        _ => {}
    }
    Ok(out.len() - before)
}

/// An `#account` status as the rsky ingester writes it: it parses the lexicon's lower-case
/// value into rsky-lexicon's `AccountStatus` and writes that enum's `Debug` form, the
/// variant name (`takendown` becomes `Takendown`).
///
/// A value that enum does not know makes the ingester drop the whole frame; here it is
/// written as received, so the account's `active` change still reaches the stream.
fn rsky_account_status(status: &str) -> &str {
    match status {
        "takendown" => "Takendown",
        "suspended" => "Suspended",
        "deleted" => "Deleted",
        "deactivated" => "Deactivated",
        "desynchronized" => "Desynchronized",
        "throttled" => "Throttled",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CBOR text string (short enough for a one- or two-byte head).
    fn text(out: &mut Vec<u8>, s: &str) {
        match s.len() {
            len @ 0..=23 => out.push(0x60 | len as u8),
            len => out.extend([0x78, len as u8]),
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// A message frame `{op: 1, t}` `{seq, did, time, ...fields}`; a field is text, or a
    /// bool when its value is `"true"` or `"false"`.
    fn frame(kind: &str, seq: u64, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = vec![0xa2];
        text(&mut out, "op");
        out.push(0x01);
        text(&mut out, "t");
        text(&mut out, kind);
        out.push(0xa0 | (3 + fields.len()) as u8);
        text(&mut out, "seq");
        out.push(0x1b);
        out.extend(seq.to_be_bytes());
        text(&mut out, "did");
        text(&mut out, "did:plc:hqvhxrowqbemo5e4wjnj6zao");
        text(&mut out, "time");
        text(&mut out, "2026-07-04T14:38:07.877Z");
        for (key, value) in fields {
            text(&mut out, key);
            match *value {
                "true" => out.push(0xf5),
                "false" => out.push(0xf4),
                value => text(&mut out, value),
            }
        }
        out
    }

    fn rsky(frame: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        render(
            frame,
            1_783_175_888_000_000,
            OutputFormat::Rsky,
            &Filter::default(),
            1 << 20,
            &mut lines,
        )
        .expect("decodes");
        lines
    }

    #[test]
    fn rsky_writes_account_statuses_as_the_ingesters_debug_names_and_null_without_one() {
        let time = "\"time\":\"2026-07-04T14:38:08.000000000+00:00\"";
        let did = "\"did\":\"did:plc:hqvhxrowqbemo5e4wjnj6zao\"";
        for (status, written) in [
            ("takendown", "\"Takendown\""),
            ("suspended", "\"Suspended\""),
            ("deleted", "\"Deleted\""),
            ("deactivated", "\"Deactivated\""),
            ("desynchronized", "\"Desynchronized\""),
            ("throttled", "\"Throttled\""),
            ("someday", "\"someday\""),
        ] {
            let lines = rsky(&frame(
                "#account",
                7,
                &[("active", "false"), ("status", status)],
            ));
            assert_eq!(
                lines,
                [format!(
                    "{{\"type\":\"account\",\"seq\":7,{time},{did},\"active\":false,\"status\":{written}}}"
                )]
            );
        }
        assert_eq!(
            rsky(&frame("#account", 8, &[("active", "true")])),
            [format!(
                "{{\"type\":\"account\",\"seq\":8,{time},{did},\"active\":true,\"status\":null}}"
            )]
        );
    }

    #[test]
    fn rsky_writes_an_identity_with_a_handle_and_nothing_for_one_without() {
        assert_eq!(
            rsky(&frame("#identity", 9, &[("handle", "alice.bsky.social")])),
            ["{\"type\":\"identity\",\"seq\":9,\"time\":\"2026-07-04T14:38:08.000000000+00:00\",\"did\":\"did:plc:hqvhxrowqbemo5e4wjnj6zao\",\"handle\":\"alice.bsky.social\"}"]
        );
        assert!(rsky(&frame("#identity", 10, &[])).is_empty());
    }
}
