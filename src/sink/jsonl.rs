//! The JSON-lines sink: one object per event to a file or stdout, for runs without Redis.
//!
//! `{"seq":N,"type":"#commit","did":"did:plc:...","frame":"<base64 of the raw frame>"}`

use std::io::Write;
use std::path::PathBuf;

use super::EventFields;
use crate::queue::Delivery;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonlTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The JSON-lines writer.
pub struct JsonlSink {
    out: Box<dyn Write + Send>,
    /// Most events written per second (0: no limit); the demo uses it to play a slow sink.
    events_per_sec_max: u64,
    line: String,
}

impl JsonlSink {
    /// Opens the target.
    pub fn open(target: &JsonlTarget, events_per_sec_max: u64) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            JsonlTarget::Stdout => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
            JsonlTarget::File(path) => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        };
        Ok(JsonlSink {
            out,
            events_per_sec_max,
            line: String::new(),
        })
    }

    /// Writes a batch and flushes it; paced when a rate limit is set.
    pub async fn write(&mut self, batch: &[Delivery]) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        for delivery in batch {
            let fields = EventFields::of(delivery);
            self.line.clear();
            self.line.push_str(&format!(
                "{{\"seq\":{},\"type\":{},\"did\":{},\"frame\":\"",
                fields.seq,
                json_string(&fields.kind),
                json_string(&fields.did)
            ));
            base64_into(&delivery.payload, &mut self.line);
            self.line.push_str("\"}\n");
            self.out.write_all(self.line.as_bytes())?;
        }
        self.out.flush()?;
        if self.events_per_sec_max > 0 {
            let due = std::time::Duration::from_secs_f64(
                batch.len() as f64 / self.events_per_sec_max as f64,
            );
            if let Some(rest) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        Ok(())
    }
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Standard base64 (with padding) of `bytes`, appended to `out`.
pub fn base64_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            base64_into(input.as_bytes(), &mut out);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
