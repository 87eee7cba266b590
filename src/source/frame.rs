//! Relay frames of `com.atproto.sync.subscribeRepos`: two concatenated DAG-CBOR values,
//! a header `{op, t}` and a body. This reads the header and, from the body, `seq`,
//! `repo`/`did` and `time`, skipping everything else (CAR blocks included) without
//! allocating; the raw frame stays the event's payload.
//!
//! The reader in [`crate::cbor`] checks every length against the bytes left before it is
//! used, bounds nesting by [`CBOR_DEPTH_MAX`] and refuses indefinite lengths (forbidden in
//! DAG-CBOR), so no input can make this panic, loop or allocate.

use crate::cbor::Reader;
pub use crate::cbor::{FrameError, CBOR_DEPTH_MAX};

/// What a frame says, as far as the queue and the sinks need, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message (`op = 1`): `#commit`, `#sync`, `#identity`, `#account`, `#info` or another type.
    Message {
        /// The header's `t`, e.g. `#commit`.
        kind: &'a str,
        /// The body's `seq`; absent on `#info`.
        seq: Option<u64>,
        /// The body's `repo` (commit, sync) or `did` (identity, account).
        did: Option<&'a str>,
        /// The body's `time`.
        time: Option<&'a str>,
        /// `#info`: its `name` (e.g. `OutdatedCursor`).
        info_name: Option<&'a str>,
    },
    /// An error frame (`op = -1`): `{error, message}`, e.g. `FutureCursor`, `ConsumerTooSlow`.
    Error {
        /// The error name.
        error: &'a str,
        /// Its message, if any.
        message: Option<&'a str>,
    },
}

/// Milliseconds since the Unix epoch of an RFC 3339 time such as the body's `time`
/// (`2024-09-09T19:46:02.102Z`, offsets allowed); `None` if it is not one.
pub fn parse_time_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let digits = (at - start).min(3);
        millis = num(start..start + digits)? * 10_i64.pow(3 - digits as u32);
    }
    let offset_minutes = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let minutes = num(at + 1..at + 3)? * 60 + num(at + 4..at + 6)?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    // Days from the civil date (H. Hinnant's algorithm), proleptic Gregorian.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

impl Frame<'_> {
    /// The message's `seq`, if it has one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Frame::Message { seq, .. } => *seq,
            Frame::Error { .. } => None,
        }
    }
}

/// Where the body's `seq` value starts (its CBOR head), with the decoded frame.
fn decode_at(frame: &[u8], max_bytes: usize) -> Result<(Frame<'_>, Option<usize>), FrameError> {
    if frame.len() > max_bytes {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: max_bytes,
        });
    }
    let mut r = Reader::new(frame);
    let (mut op, mut kind) = (None, None);
    for _ in 0..r.map_len("header")? {
        match r.text("header key")? {
            "op" => op = Some(r.int("op")?),
            "t" => kind = Some(r.text("t")?),
            _ => r.skip(1)?,
        }
    }
    let op = op.ok_or(FrameError::Missing("op in the header"))?;
    let pairs = r.map_len("body")?;
    let decoded = match op {
        1 => {
            let kind = kind.ok_or(FrameError::Missing("t in the header"))?;
            let (mut seq, mut seq_at, mut did, mut time, mut info_name) =
                (None, None, None, None, None);
            for _ in 0..pairs {
                match r.text("body key")? {
                    "seq" => {
                        seq_at = Some(r.at);
                        let head = r.head()?;
                        if head.major != 0 {
                            return Err(FrameError::WrongType {
                                what: "seq",
                                at: head.at,
                            });
                        }
                        seq = Some(head.arg);
                    }
                    "repo" | "did" => did = Some(r.text("repo/did")?),
                    "time" => time = Some(r.text("time")?),
                    "name" if kind == "#info" => info_name = Some(r.text("name")?),
                    _ => r.skip(1)?,
                }
            }
            (
                Frame::Message {
                    kind,
                    seq,
                    did,
                    time,
                    info_name,
                },
                seq_at,
            )
        }
        -1 => {
            let (mut error, mut message) = (None, None);
            for _ in 0..pairs {
                match r.text("body key")? {
                    "error" => error = Some(r.text("error")?),
                    "message" => message = Some(r.text("message")?),
                    _ => r.skip(1)?,
                }
            }
            let error = error.ok_or(FrameError::Missing("error in an error frame"))?;
            (Frame::Error { error, message }, None)
        }
        other => return Err(FrameError::UnknownOp(other)),
    };
    if r.at != frame.len() {
        return Err(FrameError::TrailingBytes(frame.len() - r.at));
    }
    Ok(decoded)
}

/// The fields a sink writes beside a message frame, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek<'a> {
    /// The header's `t`.
    pub kind: &'a str,
    /// The body's `seq`.
    pub seq: Option<u64>,
    /// The body's `repo` or `did`.
    pub did: Option<&'a str>,
}

/// Reads a message frame's `t`, `seq` and `repo`/`did` without allocating, and only as far
/// into the body as they lie (keys come sorted by length, so before the CAR blocks).
/// For frames the source already checked whole ([`decode`]): a sink reads them again
/// for each event it writes. `None` for an error frame or bytes that do not get that far.
pub fn peek(frame: &[u8]) -> Option<Peek<'_>> {
    let mut r = Reader::new(frame);
    let (mut op, mut kind) = (None, None);
    for _ in 0..r.map_len("header").ok()? {
        match r.text("header key").ok()? {
            "op" => op = Some(r.int("op").ok()?),
            "t" => kind = Some(r.text("t").ok()?),
            _ => r.skip(1).ok()?,
        }
    }
    if op != Some(1) {
        return None;
    }
    let mut peek = Peek {
        kind: kind?,
        seq: None,
        did: None,
    };
    for _ in 0..r.map_len("body").ok()? {
        match r.text("body key").ok()? {
            "seq" => {
                let head = r.head().ok()?;
                if head.major != 0 {
                    return None;
                }
                peek.seq = Some(head.arg);
            }
            "repo" | "did" => peek.did = Some(r.text("repo/did").ok()?),
            _ => r.skip(1).ok()?,
        }
        if peek.seq.is_some() && peek.did.is_some() {
            break;
        }
    }
    Some(peek)
}

/// Decodes a frame's header and the body fields the pipeline needs.
///
/// # Errors
/// A [`FrameError`] for anything that is not a well-formed frame of at most `max_bytes`.
pub fn decode(frame: &[u8], max_bytes: usize) -> Result<Frame<'_>, FrameError> {
    decode_at(frame, max_bytes).map(|(f, _)| f)
}

/// Rewrites the body's `seq` in place (it must be an 8-byte unsigned integer, as relay seqs are).
///
/// # Errors
/// The frame's decoding errors, [`FrameError::Missing`] without a seq, or [`FrameError::SeqNotRewritable`].
pub fn rewrite_seq(frame: &mut [u8], seq: u64) -> Result<(), FrameError> {
    let (_, at) = decode_at(frame, usize::MAX)?;
    let at = at.ok_or(FrameError::Missing("seq"))?;
    if frame[at] != 0x1b {
        return Err(FrameError::SeqNotRewritable);
    }
    frame[at + 1..at + 9].copy_from_slice(&seq.to_be_bytes());
    Ok(())
}

/// Encodes an error frame `{op: -1}` `{error, message}`, as a relay sends it.
pub fn encode_error_frame(error: &str, message: &str) -> Vec<u8> {
    let mut out = vec![0xa1];
    push_text(&mut out, "op");
    out.push(0x20); // -1
    out.push(0xa2);
    push_text(&mut out, "error");
    push_text(&mut out, error);
    push_text(&mut out, "message");
    push_text(&mut out, message);
    out
}

/// Encodes an `#info` frame `{op: 1, t: "#info"}` `{name, message}`.
pub fn encode_info_frame(name: &str, message: &str) -> Vec<u8> {
    let mut out = vec![0xa2];
    push_text(&mut out, "op");
    out.push(0x01);
    push_text(&mut out, "t");
    push_text(&mut out, "#info");
    out.push(0xa2);
    push_text(&mut out, "name");
    push_text(&mut out, name);
    push_text(&mut out, "message");
    push_text(&mut out, message);
    out
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    let len = text.len() as u64;
    match len {
        0..=23 => out.push(0x60 | len as u8),
        24..=0xff => out.extend([0x78, len as u8]),
        0x100..=0xffff => {
            out.push(0x79);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x7a);
            out.extend((len as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
}

/// Reads a capture (`[u32 LE length][frame]...`) one frame at a time through one reused buffer.
pub struct CaptureReader<R> {
    inner: R,
    frame: Vec<u8>,
    frame_bytes_max: usize,
    /// Byte offset of the next length prefix, for error messages.
    offset: u64,
}

impl<R: std::io::Read> CaptureReader<R> {
    /// A reader refusing frames over `frame_bytes_max`.
    pub fn new(inner: R, frame_bytes_max: usize) -> Self {
        CaptureReader {
            inner,
            frame: Vec::new(),
            frame_bytes_max,
            offset: 0,
        }
    }

    /// The next frame, or `None` at a clean end of the file.
    ///
    /// # Errors
    /// An I/O error, a length over the limit, or a file that ends inside a frame
    /// (`InvalidData`, naming the offset).
    pub fn next_frame(&mut self) -> std::io::Result<Option<&[u8]>> {
        let invalid =
            |message: String| std::io::Error::new(std::io::ErrorKind::InvalidData, message);
        let mut len_bytes = [0u8; 4];
        let mut filled = 0;
        while filled < 4 {
            match self.inner.read(&mut len_bytes[filled..])? {
                0 if filled == 0 => return Ok(None),
                0 => {
                    return Err(invalid(format!(
                        "capture ends inside the length prefix at byte {}",
                        self.offset
                    )))
                }
                n => filled += n,
            }
        }
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > self.frame_bytes_max {
            return Err(invalid(format!(
                "frame at byte {} is {len} bytes, over the limit of {}",
                self.offset, self.frame_bytes_max
            )));
        }
        self.frame.resize(len, 0);
        self.inner.read_exact(&mut self.frame).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                invalid(format!(
                    "capture ends inside the frame at byte {}",
                    self.offset
                ))
            } else {
                e
            }
        })?;
        self.offset += 4 + len as u64;
        Ok(Some(&self.frame))
    }
}

/// Appends one frame to a capture: its length (u32 LE), then its bytes.
///
/// # Errors
/// A frame over `u32::MAX` bytes, or the writer's error.
pub fn write_capture_frame(out: &mut impl std::io::Write, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(frame)
}

/// Splits a capture file (`[u32 LE length][frame]...`) into frames, refusing lengths over `max_bytes`.
pub fn split_capture(bytes: &[u8], max_bytes: usize) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = bytes
            .get(at..at + 4)
            .ok_or(FrameError::Truncated { at: bytes.len() })?;
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        if len > max_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: max_bytes,
            });
        }
        let frame = bytes
            .get(at + 4..at + 4 + len)
            .ok_or(FrameError::Truncated { at: bytes.len() })?;
        out.push(frame);
        at += 4 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_time_ms;

    #[test]
    fn relay_times_parse_to_unix_milliseconds() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time_ms("2024-09-09T19:46:02.102Z"),
            Some(1_725_911_162_102)
        );
        assert_eq!(
            parse_time_ms("2024-09-09T19:46:02.1Z"),
            Some(1_725_911_162_100)
        );
        assert_eq!(
            parse_time_ms("2024-09-09T21:46:02.102123+02:00"),
            Some(1_725_911_162_102)
        );
        assert_eq!(parse_time_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in [
            "",
            "2024-09-09",
            "2024-13-09T19:46:02Z",
            "2024-09-09T19:46:02",
            "2024-09-09T19:46:02.Z",
            "garbage and more text",
        ] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
    }
}
