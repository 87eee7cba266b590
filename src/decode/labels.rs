//! Labeler frames (`com.atproto.label.subscribeLabels` `#labels`) as the rsky ingester's
//! `label_live` entries: its `LabelStreamEvent` through `serde_json`, byte for byte.
//!
//! ```text
//! {"seq":42,"labels":[{"src":"did:plc:…","uri":"at://…","cid":null,"val":"spam","neg":null,"cts":"2024-01-02 03:04:05.123 UTC"}]}
//! ```
//!
//! Field order and value forms are its struct's: `seq` a number; each label's `src`, `uri`,
//! `val` strings; `cid` a string or `null`; `neg` `true`, `false` or `null`; `cts` not the
//! frame's RFC 3339 text but chrono's `Display` of the `DateTime<Utc>` rsky-lexicon parses
//! it into (`2024-01-02 03:04:05.123 UTC`: UTC, a space, the fraction as 3, 6 or 9 digits
//! or none, then ` UTC`), which is why chrono itself does the parsing and printing here.
//! Strings are escaped as every rsky entry of ours is ([`Dialect::Ascii`]).
//!
//! Where we differ on purpose: rsky drops the whole frame when a field it never writes is
//! missing or malformed (a label without `sig`, which its `serde_bytes` field makes
//! required; an `exp` that is no date; a `ver` over 255). We write such labels: only what
//! the entry holds must be well formed. A frame whose entry cannot be written (no `seq`,
//! a label without `src`, `uri`, `val` or a readable `cts`, a value of the wrong type) is
//! an error, which the sink logs, counts and skips, as rsky does.

use std::fmt::Write as _;

use super::json::{push_str, Dialect};
use crate::cbor::{Budget, FrameError, Reader, Value};

/// Why a `#labels` frame cannot become an entry; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelsError {
    /// The frame is not well-formed DAG-CBOR, or over the size limit.
    #[error("labels frame: {0}")]
    Frame(#[from] FrameError),
    /// The body's `seq` or `labels` is missing or of the wrong type.
    #[error("labels frame: the body's {field} {problem}")]
    Body {
        /// `seq` or `labels`.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A label's field is missing, of the wrong type, or (`cts`) not a date.
    #[error("labels frame seq {seq}: label {index}: {field} {problem}")]
    Label {
        /// The frame's seq.
        seq: i128,
        /// The label's index in `labels`.
        index: usize,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The entry rsky writes for `frame`: `Some` for a `#labels` message, `None` for any other
/// frame (an `#info`, an error frame, a type this build does not know: rsky writes none).
///
/// # Errors
/// [`LabelsError`] for a frame over `frame_bytes_max`, malformed, or whose entry cannot be
/// written (see the module's notes).
pub fn render_rsky(frame: &[u8], frame_bytes_max: usize) -> Result<Option<String>, LabelsError> {
    if frame.len() > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: frame_bytes_max,
        }
        .into());
    }
    // The decoded tree borrows the frame's strings; its arrays and maps are charged to a
    // budget of the frame limit, so no frame makes it take more.
    let mut budget = Budget::new(frame_bytes_max);
    let mut reader = Reader::new(frame);
    let header = reader.value(0, &mut budget).map_err(FrameError::from)?;
    let body = reader.value(0, &mut budget).map_err(FrameError::from)?;
    if reader.at != frame.len() {
        return Err(FrameError::TrailingBytes(frame.len() - reader.at).into());
    }
    let is_labels = matches!(header.get("op"), Some(Value::Int(1)))
        && header.get("t").and_then(Value::as_text) == Some("#labels");
    if !is_labels {
        return Ok(None);
    }
    let seq = match body.get("seq") {
        Some(Value::Int(seq)) => *seq,
        Some(_) => return Err(body_error("seq", "is not an integer")),
        None => return Err(body_error("seq", "is missing")),
    };
    let labels = match body.get("labels") {
        Some(Value::Array(labels)) => labels,
        Some(_) => return Err(body_error("labels", "is not an array")),
        None => return Err(body_error("labels", "is missing")),
    };
    let mut line = String::with_capacity(32 + labels.len() * 256);
    let _ = write!(line, "{{\"seq\":{seq},\"labels\":[");
    for (index, label) in labels.iter().enumerate() {
        if index > 0 {
            line.push(',');
        }
        push_label(&mut line, label, seq, index)?;
    }
    line.push_str("]}");
    Ok(Some(line))
}

fn body_error(field: &'static str, problem: &'static str) -> LabelsError {
    LabelsError::Body { field, problem }
}

/// Appends one label as rsky's `Label` struct serialises: `src`, `uri`, `cid`, `val`, `neg`, `cts`.
fn push_label(
    line: &mut String,
    label: &Value<'_>,
    seq: i128,
    index: usize,
) -> Result<(), LabelsError> {
    let wrong = |field: &'static str, problem: &str| LabelsError::Label {
        seq,
        index,
        field,
        problem: problem.to_string(),
    };
    if !matches!(label, Value::Map(_)) {
        return Err(wrong("label", "is not a map"));
    }
    let text = |field: &'static str| match label.get(field) {
        Some(Value::Text(text)) => Ok(*text),
        Some(_) => Err(wrong(field, "is not a string")),
        None => Err(wrong(field, "is missing")),
    };
    let (src, uri, val) = (text("src")?, text("uri")?, text("val")?);
    let cid = match label.get("cid") {
        None | Some(Value::Null) => None,
        Some(Value::Text(cid)) => Some(*cid),
        Some(_) => return Err(wrong("cid", "is not a string or null")),
    };
    let neg = match label.get("neg") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(neg)) => Some(*neg),
        Some(_) => return Err(wrong("neg", "is not a boolean or null")),
    };
    let cts = rsky_cts(text("cts")?).map_err(|problem| wrong("cts", &problem))?;
    line.push_str("{\"src\":");
    push_str(line, src, Dialect::Ascii);
    line.push_str(",\"uri\":");
    push_str(line, uri, Dialect::Ascii);
    line.push_str(",\"cid\":");
    match cid {
        Some(cid) => push_str(line, cid, Dialect::Ascii),
        None => line.push_str("null"),
    }
    line.push_str(",\"val\":");
    push_str(line, val, Dialect::Ascii);
    line.push_str(",\"neg\":");
    line.push_str(match neg {
        Some(true) => "true",
        Some(false) => "false",
        None => "null",
    });
    line.push_str(",\"cts\":");
    push_str(line, &cts, Dialect::Ascii);
    line.push('}');
    Ok(())
}

/// A label's `cts` as rsky writes it: parsed as its `DateTime<Utc>` is deserialised
/// (chrono's relaxed RFC 3339, any offset converted to UTC) and shown with `to_string()`
/// (`2024-01-02 03:04:05.123 UTC`).
///
/// # Errors
/// Text chrono does not read as a date and time, with chrono's reason.
pub fn rsky_cts(text: &str) -> Result<String, String> {
    text.parse::<chrono::DateTime<chrono::FixedOffset>>()
        .map(|time| time.with_timezone(&chrono::Utc).to_string())
        .map_err(|e| format!("{text:?} is not an RFC 3339 date and time ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal DAG-CBOR writer for these tests (the integration tests have their own).
    enum C<'a> {
        U(u64),
        T(&'a str),
        B(bool),
        Null,
        Bytes(&'a [u8]),
        A(Vec<C<'a>>),
        M(Vec<(&'a str, C<'a>)>),
    }

    fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend([m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend(n.to_be_bytes());
            }
        }
    }

    fn enc(out: &mut Vec<u8>, c: &C<'_>) {
        match c {
            C::U(n) => head(out, 0, *n),
            C::T(t) => {
                head(out, 3, t.len() as u64);
                out.extend(t.as_bytes());
            }
            C::B(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
            C::Null => out.push(0xf6),
            C::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend(*b);
            }
            C::A(items) => {
                head(out, 4, items.len() as u64);
                items.iter().for_each(|i| enc(out, i));
            }
            C::M(pairs) => {
                head(out, 5, pairs.len() as u64);
                for (k, v) in pairs {
                    enc(out, &C::T(k));
                    enc(out, v);
                }
            }
        }
    }

    fn frame(t: &str, body: C<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        enc(&mut out, &C::M(vec![("t", C::T(t)), ("op", C::U(1))]));
        enc(&mut out, &body);
        out
    }

    fn label<'a>(extra: Vec<(&'a str, C<'a>)>) -> C<'a> {
        let mut pairs = vec![
            ("ver", C::U(1)),
            ("src", C::T("did:plc:labeler")),
            ("uri", C::T("at://did:plc:alice/app.bsky.feed.post/3k")),
            ("val", C::T("spam")),
            ("cts", C::T("2024-01-02T03:04:05.123Z")),
            ("sig", C::Bytes(&[1, 2, 3])),
        ];
        pairs.extend(extra);
        C::M(pairs)
    }

    fn render(bytes: &[u8]) -> Result<Option<String>, LabelsError> {
        render_rsky(bytes, 1 << 20)
    }

    #[test]
    fn labels_render_as_rskys_serde_json_of_label_stream_event() {
        let bytes = frame(
            "#labels",
            C::M(vec![
                ("seq", C::U(42)),
                (
                    "labels",
                    C::A(vec![
                        label(vec![]),
                        label(vec![
                            (
                                "cid",
                                C::T("bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5kpqcsgz7soqv4"),
                            ),
                            ("neg", C::B(true)),
                            ("exp", C::T("2025-01-01T00:00:00Z")),
                        ]),
                        label(vec![("neg", C::B(false)), ("cid", C::Null)]),
                    ]),
                ),
            ]),
        );
        // Written by hand from rsky-ingester's `LabelStreamEvent { seq, labels: Vec<Label> }`
        // and `Label { src, uri, cid: Option<String>, val, neg: Option<bool>, cts: String }`:
        // serde_json writes fields in declaration order, `None` as `null`, no spaces.
        let expected = concat!(
            r#"{"seq":42,"labels":["#,
            r#"{"src":"did:plc:labeler","uri":"at://did:plc:alice/app.bsky.feed.post/3k","cid":null,"val":"spam","neg":null,"cts":"2024-01-02 03:04:05.123 UTC"},"#,
            r#"{"src":"did:plc:labeler","uri":"at://did:plc:alice/app.bsky.feed.post/3k","cid":"bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5kpqcsgz7soqv4","val":"spam","neg":true,"cts":"2024-01-02 03:04:05.123 UTC"},"#,
            r#"{"src":"did:plc:labeler","uri":"at://did:plc:alice/app.bsky.feed.post/3k","cid":null,"val":"spam","neg":false,"cts":"2024-01-02 03:04:05.123 UTC"}"#,
            "]}"
        );
        assert_eq!(render(&bytes).expect("renders").as_deref(), Some(expected));
        let empty = frame(
            "#labels",
            C::M(vec![("seq", C::U(7)), ("labels", C::A(vec![]))]),
        );
        assert_eq!(
            render(&empty).expect("renders").as_deref(),
            Some(r#"{"seq":7,"labels":[]}"#)
        );
    }

    #[test]
    fn cts_is_chronos_display_of_the_utc_time() {
        for (cts, shown) in [
            ("2024-01-02T03:04:05Z", "2024-01-02 03:04:05 UTC"),
            ("2024-01-02T03:04:05.100Z", "2024-01-02 03:04:05.100 UTC"),
            ("2024-01-02T03:04:05.1Z", "2024-01-02 03:04:05.100 UTC"),
            (
                "2024-01-02T03:04:05.123456Z",
                "2024-01-02 03:04:05.123456 UTC",
            ),
            (
                "2024-01-02T03:04:05.1234Z",
                "2024-01-02 03:04:05.123400 UTC",
            ),
            (
                "2024-01-02T03:04:05.123456789Z",
                "2024-01-02 03:04:05.123456789 UTC",
            ),
            ("2024-01-02T03:04:05.000Z", "2024-01-02 03:04:05 UTC"),
            (
                "2024-01-02T03:04:05.500+02:00",
                "2024-01-02 01:04:05.500 UTC",
            ),
            ("2024-01-01T00:30:00-01:00", "2024-01-01 01:30:00 UTC"),
            ("2024-01-02 03:04:05z", "2024-01-02 03:04:05 UTC"),
        ] {
            assert_eq!(rsky_cts(cts).as_deref(), Ok(shown), "{cts}");
        }
        for bad in ["", "yesterday", "2024-01-02", "2024-13-02T03:04:05Z"] {
            let error = rsky_cts(bad).expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn strings_escape_as_our_other_rsky_entries() {
        let custom = C::M(vec![
            ("src", C::T("did:plc:x")),
            ("uri", C::T("at://did:plc:x")),
            ("val", C::T("é\"\n")),
            ("cts", C::T("2024-01-02T03:04:05Z")),
        ]);
        let bytes = frame(
            "#labels",
            C::M(vec![("seq", C::U(1)), ("labels", C::A(vec![custom]))]),
        );
        let line = render(&bytes).expect("renders").expect("a line");
        assert!(line.contains(r#""val":"\u00e9\"\n""#), "{line}");
    }

    #[test]
    fn other_frames_write_nothing_and_broken_ones_name_the_field() {
        let info = frame("#info", C::M(vec![("name", C::T("OutdatedCursor"))]));
        assert_eq!(render(&info), Ok(None));
        let error = crate::source::frame::encode_error_frame("FutureCursor", "no");
        assert_eq!(render(&error), Ok(None));
        let no_seq = frame("#labels", C::M(vec![("labels", C::A(vec![]))]));
        assert_eq!(
            render(&no_seq),
            Err(LabelsError::Body {
                field: "seq",
                problem: "is missing"
            })
        );
        let bad_cts = frame(
            "#labels",
            C::M(vec![
                ("seq", C::U(9)),
                (
                    "labels",
                    C::A(vec![
                        label(vec![]),
                        C::M(vec![
                            ("src", C::T("did:plc:x")),
                            ("uri", C::T("at://x")),
                            ("val", C::T("v")),
                            ("cts", C::T("soon")),
                        ]),
                    ]),
                ),
            ]),
        );
        let error = render(&bad_cts).expect_err("cts").to_string();
        assert!(
            error.contains("seq 9") && error.contains("label 1") && error.contains("cts"),
            "{error}"
        );
        let no_src = frame(
            "#labels",
            C::M(vec![
                ("seq", C::U(9)),
                ("labels", C::A(vec![C::M(vec![("uri", C::T("at://x"))])])),
            ]),
        );
        assert!(render(&no_src)
            .expect_err("src")
            .to_string()
            .contains("src is missing"));
        let mut truncated = frame(
            "#labels",
            C::M(vec![
                ("seq", C::U(1)),
                ("labels", C::A(vec![label(vec![])])),
            ]),
        );
        truncated.truncate(truncated.len() - 5);
        assert!(matches!(
            render(&truncated),
            Err(LabelsError::Frame(FrameError::Truncated { .. }))
        ));
        assert!(matches!(
            render_rsky(&truncated, 10),
            Err(LabelsError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn a_label_rsky_would_drop_for_a_missing_sig_is_written() {
        let unsigned = C::M(vec![
            ("src", C::T("did:plc:x")),
            ("uri", C::T("at://did:plc:x")),
            ("val", C::T("!hide")),
            ("cts", C::T("2024-01-02T03:04:05Z")),
            ("exp", C::T("not a date")),
            ("ver", C::U(999)),
        ]);
        let bytes = frame(
            "#labels",
            C::M(vec![("seq", C::U(3)), ("labels", C::A(vec![unsigned]))]),
        );
        assert_eq!(
            render(&bytes).expect("renders").as_deref(),
            Some(
                r#"{"seq":3,"labels":[{"src":"did:plc:x","uri":"at://did:plc:x","cid":null,"val":"!hide","neg":null,"cts":"2024-01-02 03:04:05 UTC"}]}"#
            )
        );
    }
}
