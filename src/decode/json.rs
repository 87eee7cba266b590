//! JSON text for decoded events, in the two dialects their consumers expect byte for byte:
//! Jetstream's (Go's `encoding/json`) and the rsky ingester's (`serde_json`).

use std::fmt::Write as _;

use super::cid::cid_string;
use crate::cbor::Value;

/// Which encoder's conventions to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Go `encoding/json` (Jetstream): `<`, `>`, `&`, U+2028 and U+2029 escaped;
    /// maps in key order, except blobs, written as Go's blob struct (`$type`, `ref`, `mimeType`, `size`).
    Go,
    /// `serde_json`: only what JSON requires is escaped.
    Serde,
    /// The rsky ingester's stream entries: as `Serde`, and every non-ASCII character as a
    /// `\uXXXX` escape (a surrogate pair beyond the BMP), so entries are pure ASCII.
    Ascii,
}

/// Appends `text` as a JSON string.
pub fn push_str(out: &mut String, text: &str, dialect: Dialect) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if dialect == Dialect::Go => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if !c.is_ascii() && dialect == Dialect::Ascii => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `text` as a JSON string literal, escaped as `serde_json` does.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_str(&mut out, text, Dialect::Serde);
    out
}

/// Appends a record value in the atproto JSON conventions (`$link`, `$bytes`).
pub fn push_value(out: &mut String, value: &Value<'_>, dialect: Dialect) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) if f.is_finite() => {
            out.push_str(
                &serde_json::Number::from_f64(*f).map_or("null".into(), |n| n.to_string()),
            );
        }
        Value::Float(_) => out.push_str("null"),
        Value::Text(t) => push_str(out, t, dialect),
        Value::Bytes(b) => {
            out.push_str("{\"$bytes\":\"");
            base64_std(b, false, out);
            out.push_str("\"}");
        }
        Value::Link(cid) => {
            out.push_str("{\"$link\":\"");
            out.push_str(&cid_string(cid));
            out.push_str("\"}");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item, dialect);
            }
            out.push(']');
        }
        Value::Map(pairs) => {
            let is_blob = matches!(value.get("$type"), Some(Value::Text("blob")));
            let mut ordered: Vec<&(&str, Value<'_>)> = pairs.iter().collect();
            if dialect == Dialect::Go && is_blob {
                const BLOB_ORDER: [&str; 4] = ["$type", "ref", "mimeType", "size"];
                ordered.retain(|(k, _)| BLOB_ORDER.contains(k));
                ordered.sort_by_key(|(k, _)| BLOB_ORDER.iter().position(|o| o == k));
            } else {
                ordered.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            }
            out.push('{');
            for (i, (key, item)) in ordered.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, key, dialect);
                out.push(':');
                push_value(out, item, dialect);
            }
            out.push('}');
        }
    }
}

/// Standard base64 of `bytes` appended to `out`; atproto's `$bytes` is unpadded.
pub fn base64_std(bytes: &[u8], padded: bool, out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        if padded {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
}

/// `time` as rsky writes its receive time: RFC 3339 in UTC with nanoseconds and `+00:00`.
pub fn rfc3339_utc(unix_us: u64) -> String {
    let seconds = unix_us / 1_000_000;
    let nanos = (unix_us % 1_000_000) * 1000;
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_as_each_encoder_does() {
        let mut go = String::new();
        push_str(&mut go, "a<b>&\"\\\n\u{1}é\u{2028}", Dialect::Go);
        assert_eq!(go, r#""a\u003cb\u003e\u0026\"\\\n\u0001é\u2028""#);
        let mut serde = String::new();
        push_str(&mut serde, "a<b>&\"\\\n\u{1}é\u{2028}", Dialect::Serde);
        assert_eq!(serde, "\"a<b>&\\\"\\\\\\n\\u0001é\u{2028}\"");
        let mut ascii = String::new();
        push_str(&mut ascii, "é💦<", Dialect::Ascii);
        assert_eq!(ascii, r#""\u00e9\ud83d\udca6<""#);
    }

    #[test]
    fn bytes_are_unpadded_base64_and_times_are_utc() {
        for (input, unpadded, padded) in [
            ("", "", ""),
            ("f", "Zg", "Zg=="),
            ("fo", "Zm8", "Zm8="),
            ("foo", "Zm9v", "Zm9v"),
            ("foob", "Zm9vYg", "Zm9vYg=="),
            ("fooba", "Zm9vYmE", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            base64_std(input.as_bytes(), false, &mut out);
            assert_eq!(out, unpadded);
            out.clear();
            base64_std(input.as_bytes(), true, &mut out);
            assert_eq!(out, padded);
        }
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000000+00:00");
        assert_eq!(
            rfc3339_utc(1_725_911_162_102_001),
            "2024-09-09T19:46:02.102001000+00:00"
        );
    }
}
