//! A loopback relay that speaks `subscribeRepos` framing: it replays captured frames in a
//! loop with rewritten `seq`, honours `cursor`, paces to a rate, drops consumers that read
//! too slowly (as a real relay does), and can inject faults. Used by `spillway demo` and the tests.
//!
//! It serves the same on any path, and any frames whose body has an 8-byte `seq`: given
//! `#labels` frames it is a loopback labeler (`subscribeLabels` frames the same way).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::frame;

/// A misbehaviour injected once, when the stream reaches `at_seq`.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Send random-looking bytes instead of the frame.
    Garbage,
    /// Send the frame cut in half.
    Truncated,
    /// Send a frame of this many bytes.
    Oversized(usize),
    /// Send an error frame with this name and close.
    ErrorFrame(String),
    /// Drop the TCP connection without a close frame.
    DropConnection,
}

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Frames to replay in a loop (their `seq` is rewritten).
    pub frames: Arc<Vec<Bytes>>,
    /// The first seq the relay holds.
    pub base_seq: u64,
    /// Events it will ever produce (`None`: endless).
    pub total_events: Option<u64>,
    /// Events produced per second (`None`: all at once).
    pub events_per_sec: Option<u64>,
    /// A consumer whose send waits longer than this is dropped with `ConsumerTooSlow`.
    pub slow_consumer_ms: u64,
    /// Faults by seq, each fired once.
    pub faults: Vec<(u64, Fault)>,
}

impl RelayConfig {
    /// Replays the frames of a capture (`[u32 LE len][frame]...`) from `base_seq`.
    pub fn from_capture(capture: &[u8], base_seq: u64) -> Result<Self, frame::FrameError> {
        let frames = frame::split_capture(capture, usize::MAX)?
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect();
        Ok(RelayConfig {
            frames: Arc::new(frames),
            base_seq,
            total_events: None,
            events_per_sec: None,
            slow_consumer_ms: 5_000,
            faults: Vec::new(),
        })
    }
}

/// What the relay saw.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Frames sent.
    pub frames_sent: AtomicU64,
    /// Consumers dropped for reading too slowly.
    pub consumer_too_slow: AtomicU64,
    /// Longest wait in one send, in milliseconds.
    pub max_send_wait_ms: AtomicU64,
    /// Cursors clients asked for, the last one.
    pub last_cursor: AtomicU64,
}

/// A running loopback relay; stops when dropped.
pub struct LoopbackRelay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
    stop: watch::Sender<bool>,
}

impl LoopbackRelay {
    /// Starts the relay on a free loopback port.
    pub async fn start(config: RelayConfig) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the relay on `addr` (a relay that comes up late, or again on the same port).
    pub async fn start_on(config: RelayConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let (stop, stopped) = watch::channel(false);
        let fired: Arc<Vec<AtomicBool>> = Arc::new(
            config
                .faults
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
        );
        let started = Instant::now();
        let config = Arc::new(config);
        {
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let mut stopped_accept = stopped.clone();
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = stopped_accept.changed() => return,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let generation = stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    let (config, stats, fired, stopped) = (
                        Arc::clone(&config),
                        Arc::clone(&stats),
                        Arc::clone(&fired),
                        stopped.clone(),
                    );
                    tokio::spawn(async move {
                        if let Err(error) = serve(
                            stream, &config, &stats, &fired, started, stopped, generation,
                        )
                        .await
                        {
                            tracing::debug!(%error, "loopback relay connection ended");
                        }
                    });
                }
            });
        }
        Ok(LoopbackRelay { addr, stats, stop })
    }

    /// The `ws://` URL of its `subscribeRepos` endpoint.
    pub fn url(&self) -> String {
        format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", self.addr)
    }

    /// The `ws://` URL of its `subscribeLabels` endpoint (for a relay serving `#labels` frames).
    pub fn labels_url(&self) -> String {
        format!("ws://{}{}", self.addr, super::cursor::LABELS_PATH)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn head(config: &RelayConfig, started: Instant) -> u64 {
    let produced = match config.events_per_sec {
        Some(rate) => (started.elapsed().as_secs_f64() * rate as f64) as u64,
        None => u64::MAX,
    };
    config.base_seq + produced.min(config.total_events.unwrap_or(u64::MAX))
}

// The handshake callback's error type is tungstenite's `ErrorResponse`, which is large; it is theirs to size.
#[allow(clippy::result_large_err)]
async fn serve(
    stream: tokio::net::TcpStream,
    config: &RelayConfig,
    stats: &RelayStats,
    fired: &[AtomicBool],
    started: Instant,
    mut stopped: watch::Receiver<bool>,
    generation: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut cursor: Option<u64> = None;
    let callback = |request: &Request, response: Response| {
        cursor = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("cursor=")))
            .and_then(|v| v.parse().ok());
        Ok(response)
    };
    let mut socket = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
    if let Some(c) = cursor {
        stats.last_cursor.store(c, Ordering::Relaxed);
    }
    let mut seq = match cursor {
        // A cursor at or past the head names an event never produced.
        Some(c) if c >= head(config, started) => {
            socket
                .send(Message::Binary(
                    frame::encode_error_frame("FutureCursor", "Cursor in the future.").into(),
                ))
                .await?;
            socket.close(None).await?;
            return Ok(());
        }
        Some(c) if c + 1 < config.base_seq => {
            socket
                .send(Message::Binary(
                    frame::encode_info_frame(
                        "OutdatedCursor",
                        "Requested cursor exceeded limit. Possibly missing events",
                    )
                    .into(),
                ))
                .await?;
            config.base_seq
        }
        Some(c) => c + 1,
        None => head(config, started),
    };
    const CLOSE_CHECK_FRAMES: u64 = 64;
    let slow = Duration::from_millis(config.slow_consumer_ms);
    loop {
        if *stopped.borrow() {
            return Ok(());
        }
        let limit = head(config, started);
        if seq >= limit {
            if config
                .total_events
                .is_some_and(|t| seq >= config.base_seq + t)
            {
                // Everything sent: stay connected and idle, like a quiet relay.
                tokio::select! {
                    _ = stopped.changed() => return Ok(()),
                    m = socket.next() => if m.is_none() { return Ok(()) } else { continue },
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        // A client that closed (or vanished) ends this connection: a stale sender must not
        // run ahead, and must not use up the faults meant for the live connection. Checked
        // every CLOSE_CHECK_FRAMES frames: each poll of the reader zeroes its 128 KiB buffer.
        if seq % CLOSE_CHECK_FRAMES == 0 {
            match futures_util::FutureExt::now_or_never(socket.next()) {
                Some(None) | Some(Some(Err(_))) | Some(Some(Ok(Message::Close(_)))) => {
                    return Ok(())
                }
                _ => {}
            }
        }
        let template =
            &config.frames[((seq - config.base_seq) % config.frames.len() as u64) as usize];
        let mut bytes = template.to_vec();
        frame::rewrite_seq(&mut bytes, seq)?;
        // Faults belong to the newest connection: an older one still sending after its
        // client left must not use them up.
        let newest = stats.connections.load(Ordering::Relaxed) == generation;
        let mut corrupt = false;
        if let Some(i) = config.faults.iter().position(|(at, _)| *at == seq) {
            if newest && !fired[i].swap(true, Ordering::SeqCst) {
                match &config.faults[i].1 {
                    Fault::Garbage => {
                        bytes = (0..200u32)
                            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                            .collect();
                        corrupt = true;
                    }
                    Fault::Truncated => {
                        bytes.truncate(bytes.len() / 2);
                        corrupt = true;
                    }
                    Fault::Oversized(len) => bytes.resize(*len, 0),
                    Fault::ErrorFrame(name) => {
                        socket
                            .send(Message::Binary(
                                frame::encode_error_frame(name, "injected by the loopback relay")
                                    .into(),
                            ))
                            .await?;
                        socket.close(None).await?;
                        return Ok(());
                    }
                    Fault::DropConnection => return Ok(()),
                }
            }
        }
        let began = Instant::now();
        let sent = tokio::time::timeout(slow, socket.send(Message::Binary(bytes.into()))).await;
        let waited = began.elapsed().as_millis() as u64;
        stats.max_send_wait_ms.fetch_max(waited, Ordering::Relaxed);
        match sent {
            Ok(result) => result?,
            Err(_) => {
                stats.consumer_too_slow.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    socket.send(Message::Binary(
                        frame::encode_error_frame("ConsumerTooSlow", "Stream consumer too slow")
                            .into(),
                    )),
                )
                .await;
                return Ok(());
            }
        }
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        if corrupt {
            // The client drops a connection that sent a corrupt frame; end it here too, so
            // this sender does not run ahead into the faults meant for the next connection.
            return Ok(());
        }
        seq += 1;
    }
}
