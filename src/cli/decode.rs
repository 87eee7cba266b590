//! `spillway decode FILE`: a capture decoded to JSON lines; `spillway capture`: a live stream recorded to a capture.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use spillway::decode::{render, Filter, OutputFormat};
use spillway::queue::envelope::now_us;
use spillway::sink::jsonl::raw_line;
use spillway::sink::EventFields;
use spillway::source::frame::{write_capture_frame, CaptureReader};
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `spillway decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// A capture: `[u32 little-endian length][frame]`, repeated (what `spillway capture` writes).
    pub file: PathBuf,
    /// raw (seq, type, did, base64 frame), jetstream (Jetstream v1) or rsky (the rsky ingester's StreamEvent).
    #[arg(long, default_value = "jetstream")]
    pub format: String,
    /// Collections to keep, comma-separated (`app.bsky.feed.post`, `app.bsky.feed.*`); rsky defaults to app.bsky.*,chat.bsky.*.
    #[arg(long, value_delimiter = ',')]
    pub collections: Vec<String>,
    /// DIDs to keep, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub dids: Vec<String>,
    /// Bytes: larger frames are refused (and bound the memory decoding takes).
    #[arg(long, default_value_t = 4 << 20)]
    pub frame_bytes_max: usize,
}

/// Runs `spillway decode`.
///
/// # Errors
/// An unreadable or malformed capture, a bad option, or frames that did not decode (counted; the rest are still written).
pub fn run_decode(args: &DecodeArgs) -> std::io::Result<()> {
    match decode_to_stdout(args) {
        // A closed stdout (`spillway decode FILE | head`) is a normal end.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn decode_to_stdout(args: &DecodeArgs) -> std::io::Result<()> {
    let format = OutputFormat::parse(&args.format).map_err(std::io::Error::other)?;
    let filter =
        Filter::for_format(format, &args.collections, &args.dids).map_err(std::io::Error::other)?;
    let file = std::fs::File::open(&args.file)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", args.file.display())))?;
    let mut frames = CaptureReader::new(std::io::BufReader::new(file), args.frame_bytes_max);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut index, mut failed) = (0u64, 0u64);
    let mut lines = Vec::new();
    let mut line = String::new();
    while let Some(frame) = frames
        .next_frame()
        .map_err(|e| std::io::Error::other(format!("{}: {e}", args.file.display())))?
    {
        if format == OutputFormat::Raw {
            if filter
                .wants_frame(frame, args.frame_bytes_max)
                .unwrap_or(true)
            {
                line.clear();
                raw_line(&EventFields::of_frame(frame, 0), frame, &mut line);
                writeln!(out, "{line}")?;
            }
        } else {
            lines.clear();
            match render(
                frame,
                now_us(),
                format,
                &filter,
                args.frame_bytes_max,
                &mut lines,
            ) {
                Ok(_) => {
                    for line in &lines {
                        writeln!(out, "{line}")?;
                    }
                }
                Err(error) => {
                    failed += 1;
                    tracing::error!(frame = index, %error, "frame does not decode; skipped");
                }
            }
        }
        index += 1;
    }
    out.flush()?;
    if failed > 0 {
        return Err(std::io::Error::other(format!(
            "{failed} of {index} frames did not decode (each logged above)"
        )));
    }
    Ok(())
}

/// Arguments of `spillway capture`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The relay's subscribeRepos URL (ws:// or wss://).
    pub relay: String,
    /// Where to write the capture (appended to).
    #[arg(long)]
    pub output: PathBuf,
    /// Start from this relay seq (default: live).
    #[arg(long)]
    pub cursor: Option<u64>,
    /// Stop after this many frames (0: no limit).
    #[arg(long, default_value_t = 10_000)]
    pub frames: u64,
    /// Stop after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Bytes: a larger frame stops the capture with an error.
    #[arg(long, default_value_t = 4 << 20)]
    pub frame_bytes_max: usize,
}

/// A connection silent this long ends the capture.
const CAPTURE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between progress lines.
const CAPTURE_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs `spillway capture` until the frame count, the time limit, Ctrl-C or the relay's close.
///
/// # Errors
/// A failed connection, a write failure, or a frame over the limit.
pub fn run_capture(args: &CaptureArgs) -> std::io::Result<()> {
    let url = match args.cursor {
        Some(cursor) => format!("{}?cursor={cursor}", args.relay),
        None => args.relay.clone(),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", args.output.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let written = runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| std::io::Error::other(format!("connecting to {url}: {e}")))?;
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut written = 0u64;
        let deadline = (args.seconds > 0).then(|| started + Duration::from_secs(args.seconds));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        while args.frames == 0 || written < args.frames {
            let left = deadline.map_or(CAPTURE_IDLE_TIMEOUT, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(CAPTURE_IDLE_TIMEOUT)
            });
            let next = tokio::select! {
                n = tokio::time::timeout(left, socket.next()) => n,
                _ = &mut ctrl_c => break,
            };
            match next {
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => break,
                Err(_) => return Err(std::io::Error::other("the relay sent nothing for 60 s")),
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Err(e))) => {
                    return Err(std::io::Error::other(format!("reading from {url}: {e}")))
                }
                Ok(Some(Ok(Message::Binary(frame)))) => {
                    if frame.len() > args.frame_bytes_max {
                        return Err(std::io::Error::other(format!(
                            "a frame of {} bytes is over --frame-bytes-max {}",
                            frame.len(),
                            args.frame_bytes_max
                        )));
                    }
                    write_capture_frame(&mut out, &frame)?;
                    written += 1;
                }
                Ok(Some(Ok(_))) => {}
            }
            if last_progress.elapsed() >= CAPTURE_PROGRESS_EVERY {
                tracing::info!(
                    frames = written,
                    seconds = started.elapsed().as_secs(),
                    "capturing"
                );
                last_progress = Instant::now();
            }
        }
        Ok::<_, std::io::Error>(written)
    })?;
    out.flush()?;
    out.get_ref().sync_all()?;
    eprintln!("captured {written} frames to {}", args.output.display());
    Ok(())
}
