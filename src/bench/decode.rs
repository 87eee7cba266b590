//! Decode throughput on the real fixture frames, on one core: the raw pass-through (what
//! the source reads of every frame), the pre-queue filter, and full decoding to each format.

use std::time::Instant;

use super::log::Figures;
use crate::decode::{render, Filter, OutputFormat};
use crate::source::frame;

/// The frame size limit the bench decodes under (the binary's default).
const FRAME_BYTES_MAX: usize = 4 << 20;

/// Runs each way of reading `frames` `rounds` times over and returns their figures,
/// the raw pass-through first.
///
/// # Errors
/// A fixture frame that does not decode.
pub fn decode_throughput(frames: &[&[u8]], rounds: u64) -> std::io::Result<Vec<Figures>> {
    let io = |e: frame::FrameError| std::io::Error::other(e.to_string());
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let rsky = Filter::for_format(OutputFormat::Rsky, &[], &[]).map_err(std::io::Error::other)?;
    let feed = Filter::new(&["app.bsky.feed.*".into()], &[]).map_err(std::io::Error::other)?;
    let none = Filter::default();
    let mut results = Vec::new();
    let mut lines = Vec::new();
    let mut run = |name: &str, each: &mut dyn FnMut(&[u8]) -> Result<u64, frame::FrameError>| {
        let started = Instant::now();
        let mut sink = 0u64;
        for _ in 0..rounds {
            for f in frames {
                sink = sink.wrapping_add(each(f)?);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        results.push(Figures {
            name: name.into(),
            records: rounds * frames.len() as u64,
            payload_bytes: rounds * bytes,
            seconds,
            ..Figures::default()
        });
        Ok::<_, frame::FrameError>(())
    };
    run("raw pass-through (header, seq, did)", &mut |f| {
        frame::decode(f, FRAME_BYTES_MAX).map(|d| d.seq().unwrap_or(0))
    })
    .map_err(io)?;
    run("pre-queue filter (app.bsky.feed.*)", &mut |f| {
        feed.wants_frame(f, FRAME_BYTES_MAX).map(u64::from)
    })
    .map_err(io)?;
    run("decode to Jetstream v1 JSON", &mut |f| {
        lines.clear();
        render(
            f,
            0,
            OutputFormat::Jetstream,
            &none,
            FRAME_BYTES_MAX,
            &mut lines,
        )
        .map(|n| n as u64)
    })
    .map_err(io)?;
    let mut rsky_lines = Vec::new();
    run("decode to rsky JSON (app.bsky.*, chat.bsky.*)", &mut |f| {
        rsky_lines.clear();
        render(
            f,
            0,
            OutputFormat::Rsky,
            &rsky,
            FRAME_BYTES_MAX,
            &mut rsky_lines,
        )
        .map(|n| n as u64)
    })
    .map_err(io)?;
    Ok(results)
}
