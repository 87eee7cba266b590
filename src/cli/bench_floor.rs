//! The forwarder floor of `bench e2e`: the relay's frames read over the WebSocket and
//! written to Redis exactly as spillway's sink writes them (the same `XADD` fields, the
//! same MULTI/EXEC transactions on the same RESP connection), with no queue, no log, no
//! acknowledgement and one thread. What any relay -> Redis forwarder spends per event on
//! this machine, measured in the same run as spillway, so spillway's figure reads against
//! what it cannot avoid as well as against redis-server's.

use spillway::sink::redis::raw_frame_xadd;
use spillway::sink::resp::{Address, Arg, Encoded, RespConnection, TransactionReply};
use spillway::sink::EventFieldsRef;
use std::io;
use tokio_tungstenite::tungstenite::Message;

/// The bounds of one forwarder run (spillway's own defaults are passed in).
pub(crate) struct FloorConfig {
    /// Frames to forward; the run ends when all are written.
    pub events: u64,
    /// Frames read before they are written (`sink_batch_events_max`).
    pub batch_events_max: usize,
    /// `XADD`s per MULTI/EXEC transaction (`redis_multi_events_max`).
    pub multi_events_max: usize,
    /// A reply larger than this is refused.
    pub reply_bytes_max: usize,
}

/// Forwards `config.events` frames from the relay at `relay_url` to the stream `floor` of
/// the Redis on loopback `redis_port`, batch by batch: each batch's transactions written
/// in one go, then their replies read.
///
/// # Errors
/// Either connection failed, the relay closed early, or Redis refused a transaction.
pub(crate) async fn forward(
    relay_url: &str,
    redis_port: u16,
    config: &FloorConfig,
) -> io::Result<()> {
    use futures_util::StreamExt;
    let address = Address::Tcp("127.0.0.1".into(), redis_port);
    let mut redis = RespConnection::connect(&address, None, None, 0, config.reply_bytes_max)
        .await
        .map_err(|e| io::Error::other(format!("redis at 127.0.0.1:{redis_port}: {e}")))?;
    let (mut socket, _) = tokio_tungstenite::connect_async(relay_url)
        .await
        .map_err(|e| io::Error::other(format!("relay at {relay_url}: {e}")))?;
    let batch_max = config.batch_events_max.max(1);
    let multi_max = config.multi_events_max.max(1);
    let mut frames: Vec<bytes::Bytes> = Vec::with_capacity(batch_max);
    let mut forwarded = 0u64;
    while forwarded < config.events {
        frames.clear();
        let wanted = (config.events - forwarded).min(batch_max as u64) as usize;
        while frames.len() < wanted {
            match socket.next().await {
                Some(Ok(Message::Binary(frame))) => frames.push(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(io::Error::other(format!("relay at {relay_url}: {e}"))),
                None => {
                    return Err(io::Error::other(format!(
                        "relay at {relay_url} closed after {} frames",
                        forwarded + frames.len() as u64
                    )))
                }
            }
        }
        let mut transactions = Vec::with_capacity(frames.len().div_ceil(multi_max));
        for chunk in frames.chunks(multi_max) {
            let mut encoded = Encoded::new();
            encoded.command(&[Arg::Bytes(b"MULTI")]);
            for frame in chunk {
                let fields = EventFieldsRef::of_frame(frame, 0);
                encoded.command(&raw_frame_xadd(b"floor", Arg::Bytes(b"*"), &fields, frame));
            }
            encoded.command(&[Arg::Bytes(b"EXEC")]);
            redis.send(&encoded).await?;
            transactions.push(encoded.commands());
        }
        for commands in transactions {
            match redis.transaction_reply(commands).await {
                Ok(TransactionReply::Applied(_)) => {}
                Ok(TransactionReply::Refused(reason)) => {
                    return Err(io::Error::other(format!(
                        "redis at 127.0.0.1:{redis_port} refused a transaction: {reason}"
                    )))
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "redis at 127.0.0.1:{redis_port}: {e}"
                    )))
                }
            }
        }
        forwarded += frames.len() as u64;
    }
    Ok(())
}
