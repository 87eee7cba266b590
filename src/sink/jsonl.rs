//! The JSON-lines sink: one object per event to a file or stdout, for runs without Redis.
//!
//! Format `raw`: `{"seq":N,"type":"#commit","did":"did:plc:...","frame":"<base64 of the raw frame>"}`;
//! `jetstream` and `rsky`: the decoded events (see [`crate::decode`]), one per line.

use std::io::Write;
use std::path::PathBuf;

use super::{EventFields, OutputOptions, SinkStats};
use crate::decode::json::{base64_std, json_string};
use crate::queue::Delivery;

/// Its line of `spillway run --help`: the key of the JSON-lines sink.
pub const CONFIG_HELP: &str = "  jsonl_path = \"-\"                      - for stdout, or a file
";

/// Checks the `jsonl_path` key.
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_path(path: &str) -> Result<(), (&'static str, String)> {
    if path.is_empty() {
        return Err(("jsonl_path", "must not be empty (- for stdout)".into()));
    }
    Ok(())
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonlTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl std::fmt::Display for JsonlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonlTarget::Stdout => f.write_str("stdout"),
            JsonlTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A JSON-lines target that could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonlError {
    /// Opening the file failed.
    #[error("opening the JSON-lines target {target}: {source}")]
    Open {
        /// The target.
        target: JsonlTarget,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing or flushing a batch failed.
    #[error("writing JSON lines to {target}: {source}")]
    Write {
        /// The target.
        target: JsonlTarget,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the JSON-lines sink writes and how fast.
#[derive(Debug, Clone, Default)]
pub struct JsonlOptions {
    /// The format and its filter.
    pub output: OutputOptions,
    /// Most events written per second (0: no limit); the demo uses it to play a slow sink.
    pub events_per_sec_max: u64,
}

/// The JSON-lines writer.
pub struct JsonlSink {
    target: JsonlTarget,
    out: Box<dyn Write + Send>,
    options: JsonlOptions,
    line: String,
    decoded: Vec<String>,
}

/// The `raw` line of one frame.
pub fn raw_line(fields: &EventFields, frame: &[u8], out: &mut String) {
    out.push_str(&format!(
        "{{\"seq\":{},\"type\":{},\"did\":{},\"frame\":\"",
        fields.seq,
        json_string(&fields.kind),
        json_string(&fields.did)
    ));
    base64_std(frame, true, out);
    out.push_str("\"}");
}

impl JsonlSink {
    /// Opens the target.
    ///
    /// # Errors
    /// [`JsonlError::Open`] when the file cannot be opened for appending.
    pub fn open(target: &JsonlTarget, options: JsonlOptions) -> Result<Self, JsonlError> {
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
                    .open(path)
                    .map_err(|source| JsonlError::Open {
                        target: target.clone(),
                        source,
                    })?,
            )),
        };
        Ok(JsonlSink {
            target: target.clone(),
            out,
            options,
            line: String::new(),
            decoded: Vec::new(),
        })
    }

    /// Writes a batch and flushes it; paced when a rate limit is set.
    ///
    /// # Errors
    /// [`JsonlError::Write`] when writing or flushing fails.
    pub async fn write(&mut self, batch: &[Delivery], stats: &SinkStats) -> Result<(), JsonlError> {
        let started = std::time::Instant::now();
        self.write_lines(batch, stats)
            .map_err(|source| JsonlError::Write {
                target: self.target.clone(),
                source,
            })?;
        if self.options.events_per_sec_max > 0 {
            let due = std::time::Duration::from_secs_f64(
                batch.len() as f64 / self.options.events_per_sec_max as f64,
            );
            if let Some(rest) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        Ok(())
    }

    /// Writes the batch's lines and flushes them.
    fn write_lines(&mut self, batch: &[Delivery], stats: &SinkStats) -> std::io::Result<()> {
        if self.options.output.writes_raw_frames() {
            for delivery in batch {
                self.line.clear();
                raw_line(
                    &EventFields::of(delivery),
                    &delivery.payload,
                    &mut self.line,
                );
                self.line.push('\n');
                self.out.write_all(self.line.as_bytes())?;
            }
        } else {
            self.options
                .output
                .render_batch(batch, stats, &mut self.decoded);
            for line in &self.decoded {
                self.out.write_all(line.as_bytes())?;
                self.out.write_all(b"\n")?;
            }
        }
        self.out.flush()
    }
}

impl super::Sink for JsonlSink {
    fn write<'a>(
        &'a mut self,
        batch: &'a [Delivery],
        stats: &'a SinkStats,
        _stop: &'a tokio::sync::watch::Receiver<bool>,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, super::SinkError>> {
        Box::pin(async move {
            JsonlSink::write(self, batch, stats).await?;
            Ok(true)
        })
    }
}
