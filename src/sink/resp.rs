//! The Redis sink's write connection to one server: its transactions encoded once, in
//! RESP2, with each event's bytes written from where they already lie (vectored writes),
//! and the replies read in order with a parser bounded in bytes and depth.
//!
//! Why not the redis crate for these writes: it copies every argument three times on the
//! way out (into its command, into the packed pipeline, into its codec's buffer), each
//! into a freshly grown `Vec`, and parses replies through a general combinator parser;
//! for frames of several KiB that was a third of Spillway's CPU per event. The crate
//! still makes the sink's other connection (authentication and TLS checked there first,
//! the stream's ID checks, `XLEN` polls) and every connection to a Redis Cluster. Over
//! TLS (rustls, as the redis crate configures it) the frames are still handed over in
//! place; rustls then copies them once as it encrypts.
//!
//! One [`Encoded`] transaction is what the sink builds: `MULTI`, its commands, `EXEC`.
//! [`RespConnection::send`] writes it; [`RespConnection::transaction_reply`] reads the
//! `2 + commands` replies that answer it. Several may be sent before the first reply is
//! read: Redis answers in order on one connection.

use std::io::{self, IoSlice};
use std::path::PathBuf;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Arguments shorter than this are copied next to the command heads; longer ones are
/// written from where they lie (one `IoSlice` each), which costs a slice entry instead.
const COPY_BELOW_BYTES: usize = 256;

/// Slices per `writev` call (Linux's `IOV_MAX` is 1024).
const SLICES_PER_WRITE_MAX: usize = 512;

/// Nesting of a reply, at most: a transaction's reply is an array of scalars.
const REPLY_DEPTH_MAX: usize = 4;

/// Elements of one reply array, at most (a transaction of `redis_multi_events_max`
/// commands, plus its cursor key, answers with that many).
const REPLY_ARRAY_LEN_MAX: usize = 1 << 20;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// One argument of a command: `'t` lives while the command is encoded, `'a` while the
/// pipeline is written.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'t, 'a> {
    /// Bytes copied into the pipeline.
    Bytes(&'t [u8]),
    /// Bytes written from where they lie when long (an event's frame or line), so they
    /// must outlive the pipeline.
    Kept(&'a [u8]),
    /// A number, written in decimal.
    Number(u64),
    /// A stream entry ID `<ms>-<n>`.
    Id(u64, u64),
}

/// A pipeline of commands in RESP2: the bytes the sink makes (heads, short arguments) in
/// one buffer, and the long arguments borrowed from the batch.
#[derive(Debug, Default)]
pub struct Encoded<'a> {
    heads: Vec<u8>,
    pieces: Vec<Piece<'a>>,
    commands: usize,
}

#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    /// `heads[start..end]`.
    Head(usize, usize),
    Borrowed(&'a [u8]),
}

impl<'a> Encoded<'a> {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Commands encoded so far.
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// Bytes the pipeline writes.
    pub fn len_bytes(&self) -> usize {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Head(start, end) => end - start,
                Piece::Borrowed(bytes) => bytes.len(),
            })
            .sum()
    }

    /// Appends one command (its name is its first argument).
    pub fn command(&mut self, args: &[Arg<'_, 'a>]) {
        self.commands += 1;
        let start = self.heads.len();
        self.heads.push(b'*');
        push_decimal(&mut self.heads, args.len() as u64);
        self.heads.extend_from_slice(b"\r\n");
        let mut head_start = start;
        for arg in args {
            match *arg {
                Arg::Kept(bytes) if bytes.len() >= COPY_BELOW_BYTES => {
                    self.heads.push(b'$');
                    push_decimal(&mut self.heads, bytes.len() as u64);
                    self.heads.extend_from_slice(b"\r\n");
                    self.pieces.push(Piece::Head(head_start, self.heads.len()));
                    self.pieces.push(Piece::Borrowed(bytes));
                    head_start = self.heads.len();
                    self.heads.extend_from_slice(b"\r\n");
                }
                Arg::Bytes(bytes) | Arg::Kept(bytes) => {
                    self.heads.push(b'$');
                    push_decimal(&mut self.heads, bytes.len() as u64);
                    self.heads.extend_from_slice(b"\r\n");
                    self.heads.extend_from_slice(bytes);
                    self.heads.extend_from_slice(b"\r\n");
                }
                Arg::Number(n) => {
                    let mut digits = itoa::Buffer::new();
                    let text = digits.format(n).as_bytes();
                    self.heads.push(b'$');
                    push_decimal(&mut self.heads, text.len() as u64);
                    self.heads.extend_from_slice(b"\r\n");
                    self.heads.extend_from_slice(text);
                    self.heads.extend_from_slice(b"\r\n");
                }
                Arg::Id(ms, n) => {
                    let mut ms_digits = itoa::Buffer::new();
                    let mut n_digits = itoa::Buffer::new();
                    let (ms, n) = (ms_digits.format(ms), n_digits.format(n));
                    self.heads.push(b'$');
                    push_decimal(&mut self.heads, (ms.len() + 1 + n.len()) as u64);
                    self.heads.extend_from_slice(b"\r\n");
                    self.heads.extend_from_slice(ms.as_bytes());
                    self.heads.push(b'-');
                    self.heads.extend_from_slice(n.as_bytes());
                    self.heads.extend_from_slice(b"\r\n");
                }
            }
        }
        self.pieces.push(Piece::Head(head_start, self.heads.len()));
    }

    /// The bytes in order, as the slices a vectored write takes.
    fn slices(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.pieces
            .iter()
            .map(|piece| match *piece {
                Piece::Head(start, end) => &self.heads[start..end],
                Piece::Borrowed(bytes) => bytes,
            })
            .filter(|bytes| !bytes.is_empty())
    }

    /// The whole pipeline in one buffer (tests, and transports without vectored writes).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_bytes());
        for slice in self.slices() {
            out.extend_from_slice(slice);
        }
        out
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// One reply, as RESP2 has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`, `+QUEUED`, ...
    Status(String),
    /// `-ERR ...`: the server refused the command.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` with its bytes (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n` (`None`: the null array, as `EXEC` answers a transaction a `WATCH` aborted).
    Array(Option<Vec<RespValue>>),
}

/// How a transaction was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionReply {
    /// `EXEC` ran it: one reply per command, errors among them (inside a transaction
    /// only the failing command fails; the rest applied).
    Applied(Vec<RespValue>),
    /// Nothing applied: the server refused `MULTI`, a command when queueing it, or
    /// `EXEC` (the first error it gave).
    Refused(String),
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server sent what RESP2 does not allow, or more than the bounds.
    #[error("malformed reply: {0}")]
    Protocol(String),
}

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Address {
    /// `host`, `port`.
    Tcp(String, u16),
    /// `host`, `port`, over TLS with these settings (the server's name checked as `host`).
    Tls(String, u16, std::sync::Arc<rustls::ClientConfig>),
    /// A Unix socket.
    Unix(PathBuf),
}

/// Something to read and write bytes on.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A connection that writes [`Encoded`] pipelines and reads their replies in order.
pub struct RespConnection {
    stream: Box<dyn Stream>,
    /// Bytes read and not yet parsed.
    buffer: BytesMut,
    /// A reply larger than this is refused (the buffer never grows past it).
    reply_bytes_max: usize,
}

impl RespConnection {
    /// Connects (no delay on TCP) and authenticates (`AUTH`), then selects `db`.
    ///
    /// # Errors
    /// The connection failed, or the server refused `AUTH`/`SELECT` (its error in
    /// [`io::ErrorKind::PermissionDenied`] / [`io::ErrorKind::Other`]).
    pub async fn connect(
        address: &Address,
        username: Option<&str>,
        password: Option<&str>,
        db: i64,
        reply_bytes_max: usize,
    ) -> Result<Self, RespError> {
        let stream: Box<dyn Stream> = match address {
            Address::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Address::Tls(host, port, tls) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                Box::new(connector.connect(name, stream).await?)
            }
            Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        };
        let mut connection = RespConnection {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            reply_bytes_max,
        };
        let mut handshake = Encoded::new();
        if let Some(password) = password {
            match username {
                Some(user) => handshake.command(&[
                    Arg::Bytes(b"AUTH"),
                    Arg::Bytes(user.as_bytes()),
                    Arg::Bytes(password.as_bytes()),
                ]),
                None => handshake.command(&[Arg::Bytes(b"AUTH"), Arg::Bytes(password.as_bytes())]),
            }
        }
        if db != 0 {
            handshake.command(&[Arg::Bytes(b"SELECT"), Arg::Bytes(db.to_string().as_bytes())]);
        }
        if handshake.commands() > 0 {
            connection.send(&handshake).await?;
            for _ in 0..handshake.commands() {
                if let RespValue::Error(error) = connection.reply().await? {
                    let kind = if error.starts_with("WRONGPASS") || error.starts_with("NOAUTH") {
                        io::ErrorKind::PermissionDenied
                    } else {
                        io::ErrorKind::Other
                    };
                    return Err(RespError::Io(io::Error::new(kind, error)));
                }
            }
        }
        Ok(connection)
    }

    /// Writes the pipeline whole. Not cancel safe: a write cut short leaves part of a
    /// command on the connection, which must then be dropped.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn send(&mut self, encoded: &Encoded<'_>) -> io::Result<()> {
        let slices: Vec<&[u8]> = encoded.slices().collect();
        let mut index = 0;
        let mut offset = 0;
        let mut batch: Vec<IoSlice<'_>> = Vec::with_capacity(SLICES_PER_WRITE_MAX);
        while index < slices.len() {
            batch.clear();
            batch.push(IoSlice::new(&slices[index][offset..]));
            batch.extend(
                slices[index + 1..]
                    .iter()
                    .take(SLICES_PER_WRITE_MAX - 1)
                    .map(|s| IoSlice::new(s)),
            );
            let mut written = self.stream.write_vectored(&batch).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let left = slices[index].len() - offset;
                if written >= left {
                    written -= left;
                    index += 1;
                    offset = 0;
                } else {
                    offset += written;
                    written = 0;
                }
            }
        }
        self.stream.flush().await
    }

    /// Reads the replies to one transaction of `commands` commands (`MULTI`, each
    /// command's `QUEUED`, then `EXEC`'s), all of them, so the next transaction's follow.
    ///
    /// # Errors
    /// The connection failed or the replies were not what a transaction gets.
    pub async fn transaction_reply(
        &mut self,
        commands: usize,
    ) -> Result<TransactionReply, RespError> {
        let mut refused: Option<String> = None;
        // MULTI, then the queued commands (EXEC not counted among them).
        for _ in 0..commands.saturating_sub(1) {
            match self.reply().await? {
                RespValue::Status(_) => {}
                RespValue::Error(error) => {
                    refused.get_or_insert(error);
                }
                other => {
                    return Err(RespError::Protocol(format!(
                        "expected +OK or +QUEUED inside MULTI, got {other:?}"
                    )))
                }
            }
        }
        match self.reply().await? {
            RespValue::Array(Some(items)) if refused.is_none() => {
                Ok(TransactionReply::Applied(items))
            }
            RespValue::Error(error) => Ok(TransactionReply::Refused(refused.unwrap_or(error))),
            RespValue::Array(None) => Ok(TransactionReply::Refused(
                refused.unwrap_or_else(|| "EXEC aborted the transaction".into()),
            )),
            other => match refused {
                Some(error) => Ok(TransactionReply::Refused(error)),
                None => Err(RespError::Protocol(format!(
                    "expected EXEC's array of replies, got {other:?}"
                ))),
            },
        }
    }

    /// Reads one reply.
    ///
    /// # Errors
    /// The connection failed or closed, or the reply is malformed or over the bounds.
    pub async fn reply(&mut self) -> Result<RespValue, RespError> {
        loop {
            if let Some((value, used)) = parse(&self.buffer, 0, self.reply_bytes_max)? {
                self.buffer.advance(used);
                return Ok(value);
            }
            if self.buffer.len() >= self.reply_bytes_max {
                return Err(RespError::Protocol(format!(
                    "a reply longer than {} bytes",
                    self.reply_bytes_max
                )));
            }
            let room = (self.reply_bytes_max - self.buffer.len()).min(READ_CHUNK_BYTES);
            self.buffer.reserve(room);
            let read = (&mut self.stream)
                .take(room as u64)
                .read_buf(&mut self.buffer)
                .await?;
            if read == 0 {
                return Err(RespError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// Parses one value at the start of `bytes`: `Ok(None)` when more bytes are needed.
fn parse(
    bytes: &[u8],
    depth: usize,
    bytes_max: usize,
) -> Result<Option<(RespValue, usize)>, RespError> {
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    if newline == 0 || bytes[newline - 1] != b'\r' {
        return Err(RespError::Protocol("a line not ended by CRLF".into()));
    }
    let line_end = newline - 1;
    let Some((&kind, line)) = bytes[..line_end].split_first() else {
        return Err(RespError::Protocol("an empty line".into()));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, RespError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RespError::Protocol(format!("{:?} is not a number", text())))
    };
    let after = line_end + 2;
    match kind {
        b'+' => Ok(Some((RespValue::Status(text()), after))),
        b'-' => Ok(Some((RespValue::Error(text()), after))),
        b':' => Ok(Some((RespValue::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((RespValue::Bulk(None), after)));
            }
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > bytes_max {
                return Err(RespError::Protocol(format!(
                    "a bulk string of {len} bytes, over {bytes_max}"
                )));
            }
            if bytes.len() < after + len + 2 {
                return Ok(None);
            }
            if &bytes[after + len..after + len + 2] != b"\r\n" {
                return Err(RespError::Protocol("a bulk string without its CRLF".into()));
            }
            Ok(Some((
                RespValue::Bulk(Some(bytes[after..after + len].to_vec())),
                after + len + 2,
            )))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((RespValue::Array(None), after)));
            }
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > REPLY_ARRAY_LEN_MAX {
                return Err(RespError::Protocol(format!(
                    "an array of {len} elements, over {REPLY_ARRAY_LEN_MAX}"
                )));
            }
            if depth >= REPLY_DEPTH_MAX {
                return Err(RespError::Protocol(format!(
                    "arrays nested deeper than {REPLY_DEPTH_MAX}"
                )));
            }
            // Each element takes at least 3 bytes: do not reserve for what cannot be there yet.
            let mut items = Vec::with_capacity(len.min((bytes.len() - after) / 3));
            let mut at = after;
            for _ in 0..len {
                match parse(&bytes[at..], depth + 1, bytes_max)? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((RespValue::Array(Some(items)), at)))
        }
        other => Err(RespError::Protocol(format!(
            "a reply starting with byte {other:#04x}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_as_resp2_with_long_arguments_borrowed() {
        let frame = vec![7u8; 1000];
        let mut encoded = Encoded::new();
        encoded.command(&[Arg::Bytes(b"MULTI")]);
        encoded.command(&[
            Arg::Bytes(b"XADD"),
            Arg::Bytes(b"s"),
            Arg::Id(42, 0),
            Arg::Bytes(b"seq"),
            Arg::Number(42),
            Arg::Bytes(b"frame"),
            Arg::Kept(&frame),
        ]);
        encoded.command(&[Arg::Bytes(b"EXEC")]);
        let mut expected = b"*1\r\n$5\r\nMULTI\r\n*7\r\n$4\r\nXADD\r\n$1\r\ns\r\n$4\r\n42-0\r\n$3\r\nseq\r\n$2\r\n42\r\n$5\r\nframe\r\n$1000\r\n".to_vec();
        expected.extend_from_slice(&frame);
        expected.extend_from_slice(b"\r\n*1\r\n$4\r\nEXEC\r\n");
        assert_eq!(encoded.to_vec(), expected);
        assert_eq!(encoded.len_bytes(), expected.len());
        assert_eq!(encoded.commands(), 3);
        assert!(encoded
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Borrowed(b) if b.as_ptr() == frame.as_ptr())));
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let reply = b"*3\r\n$3\r\n1-0\r\n-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n+OK\r\n";
        let (value, used) = parse(reply, 0, 1 << 20).unwrap().unwrap();
        assert_eq!(used, reply.len());
        assert_eq!(
            value,
            RespValue::Array(Some(vec![
                RespValue::Bulk(Some(b"1-0".to_vec())),
                RespValue::Error(
                    "ERR The ID specified in XADD is equal or smaller than the target stream top item"
                        .into()
                ),
                RespValue::Status("OK".into()),
            ]))
        );
        for cut in 0..reply.len() {
            assert!(parse(&reply[..cut], 0, 1 << 20).unwrap().is_none(), "{cut}");
        }
        assert_eq!(
            parse(b":-5\r\n$-1\r\n", 0, 10).unwrap(),
            Some((RespValue::Integer(-5), 5))
        );
        assert_eq!(
            parse(b"*-1\r\n", 0, 10).unwrap(),
            Some((RespValue::Array(None), 5))
        );
    }

    #[test]
    fn malformed_or_oversized_replies_are_refused() {
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"$20\r\n",
            b"*2000000\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"$2\r\nabcd\r\n",
            b"\r\n",
        ] {
            assert!(
                parse(bad, 0, 10).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
