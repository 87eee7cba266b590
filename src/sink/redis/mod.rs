//! The Redis stream sink: a batch goes out as `MULTI`/`EXEC` transactions of at most
//! `redis_multi_events_max` events (an `XADD` per event with fields `seq`, `type`, `did`,
//! `frame`, or with the decoded JSON in field `event`, plus the host's cursor key with
//! the transaction's own last seq), up to `redis_transactions_in_flight_max` of them in
//! flight on one connection, their replies read in order; then the ack.
//!
//! Two connections per sink to a single server: the redis crate's (authentication and
//! TLS checked there first, the stream's ID checks, `XLEN` polls), and a write
//! connection of our own ([`super::resp`]; TCP, TLS with the same CA and client
//! certificate, or a Unix socket) that encodes each transaction once and writes the
//! frames from the batch's own bytes. To a Redis Cluster, and over TLS without host
//! name checks (`#insecure`), the transactions go through the redis crate's connection.
//!
//! Backpressure as the story's ingester meant it, done right: when `XLEN` reaches the
//! high-water mark the sink stops writing and polls until it falls below the low-water
//! mark, **holding the batch in hand** (the original dropped it). Events keep spilling
//! to disk meanwhile. A Redis that is down or failing is retried with bounded
//! exponential backoff; events stay in the queue; one log line per interval says so.
//!
//! # Idempotent entry IDs (`redis_idempotent_ids`)
//!
//! Off by default, entries get server time IDs (`*`), and a retry of a transaction
//! whose reply was lost (a timeout, a dropped connection, a kill -9 before the ack)
//! writes its events again. On, each entry's ID is `<seq>-<n>` (the relay seq; `n` the
//! line's index where one frame renders several lines, else 0), and an `XADD` that Redis
//! refuses as "equal or smaller than the target stream top item" counts as already
//! written: inside `MULTI`/`EXEC` only that `XADD` fails, the rest applies, so every
//! reply is read command by command. A retried or replayed batch then adds nothing twice.
//!
//! It costs: entry IDs no longer say when an entry was written (`XRANGE` by time and
//! `XTRIM MINID <ms>` mean seqs, not times; trim by `MAXLEN` instead); the stream must
//! hold seq IDs of one relay only (two relays' seqs would collide or interleave, so
//! the configuration refuses several relays into one stream, and the sink marks the
//! stream with `<stream>:idempotent-ids` = its relay and refuses a stream marked by
//! another relay or already holding entries written without the option); and only
//! families whose queue position is the relay seq can use it.
//!
//! Transactions in flight are sent in order on one connection, so Redis applies them in
//! order; a transaction confirmed is never sent again. After a failed or timed-out reply
//! no later reply is read on that connection (it could be taken for the wrong
//! transaction), and before a new write connection sends anything it ends the abandoned
//! one on the server (`CLIENT KILL ID`), so a transaction of the old one cannot apply
//! after its own retry, where a seq ID out of order would make earlier events look
//! already written. Found by a server frozen with `SIGSTOP` mid-window
//! (`tests/redis_idempotent.rs`), which lost one transaction in about one run of three
//! without both. A transaction refused as a whole
//! (a queue-time error such as OOM) while a later one in flight applied is the one case
//! where order cannot be kept: its events are written again after the later ones, with
//! `*` IDs, and logged as an error.
//!
//! A Redis with `requirepass` or ACL users that refuses us says so in the error
//! ("authentication required by HOST:PORT", "authentication failed for HOST:PORT"), and
//! the URL is printed with its password replaced by `***` everywhere (see
//! [`redact_url`]). `rediss://` URLs use TLS (rustls), trusting Mozilla's roots or the
//! CA of `redis_tls_ca_file`, with a client certificate when `redis_tls_cert_file` and
//! `redis_tls_key_file` name one.
//!
//! # Redis Cluster
//!
//! A `redis_url` of several comma-separated URLs (`redis://a:7000,redis://b:7001`) is a
//! Redis Cluster, reached through its seed nodes. A transaction must stay in one hash
//! slot, so the stream name needs a hash tag (`{firehose_live}`): its cursor and marker
//! keys (`{firehose_live}:cursor:<host>`) then share its slot. The cluster connection
//! may redirect and retry requests on its own, which could reorder transactions in
//! flight, so there they go one at a time (`redis_transactions_in_flight_max` is 1).

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::RedisFuture;

mod settings;
mod write_target;

pub use settings::*;
use write_target::{TlsPems, WriteTarget};

use super::resp::{self, Arg, RespConnection, RespValue, TransactionReply};
use super::{retry_delay, EventFieldsRef, SinkStats};
use crate::queue::Delivery;

/// The arguments of the `XADD` that writes one raw frame: `seq`, `type`, `did` and the
/// frame itself, under entry ID `id` (`*`, or `<seq>-0` for idempotent writes).
pub fn raw_frame_xadd<'t, 'a>(
    stream: &'t [u8],
    id: Arg<'t, 'a>,
    fields: &EventFieldsRef<'t>,
    frame: &'a [u8],
) -> [Arg<'t, 'a>; 11] {
    [
        Arg::Bytes(b"XADD"),
        Arg::Bytes(stream),
        id,
        Arg::Bytes(b"seq"),
        Arg::Number(fields.seq),
        Arg::Bytes(b"type"),
        Arg::Bytes(fields.kind.as_bytes()),
        Arg::Bytes(b"did"),
        Arg::Bytes(fields.did.as_bytes()),
        Arg::Bytes(b"frame"),
        Arg::Kept(frame),
    ]
}

/// What Redis answers an `XADD` whose explicit ID is not above the stream's last one.
const ID_NOT_ABOVE_TOP: &str = "equal or smaller than the target stream top item";

/// A Redis error in words, with authentication and TLS refusals named as such for `address`.
fn describe(error: &redis::RedisError, address: &str) -> String {
    // A refusal inside a MULTI/EXEC reply carries no top-level code: its text still does.
    let text = error.to_string();
    let auth_failed = error.kind() == redis::ErrorKind::AuthenticationFailed;
    describe_text(&text, error.code(), auth_failed, address)
}

/// [`describe`] of an error's text and code (a server error's first word).
fn describe_text(text: &str, code: Option<&str>, auth_failed: bool, address: &str) -> String {
    let code_is = |name: &str| code == Some(name) || text.contains(name);
    if auth_failed || code_is("WRONGPASS") {
        return format!(
            "authentication failed for {address}: the server refused the user name or password in redis_url"
        );
    }
    if code_is("NOAUTH") {
        return format!(
            "authentication required by {address}: the server has a password and redis_url gives none (redis://:PASSWORD@host:port)"
        );
    }
    if text.contains("CertificateRequired") {
        return format!(
            "TLS with {address} failed: {text} (the server asks for a client certificate: set redis_tls_cert_file and redis_tls_key_file)"
        );
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return format!(
            "TLS with {address} failed: {text} (the server's certificate must be signed by redis_tls_ca_file, or by a public CA when that is empty, for the host name of redis_url)"
        );
    }
    text.to_string()
}

/// One server, or a Redis Cluster reached through several seed nodes.
// One per sink, made once: the size of the larger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to one server (multiplexed), or to a cluster (routed by slot).
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The key that marks a stream as written with seq IDs, holding the relay that writes it.
fn marker_key(stream: &str) -> String {
    format!("{stream}:idempotent-ids")
}

/// The sink.
pub struct RedisSink {
    config: RedisSinkConfig,
    /// The URL as it may be printed: see [`redact_url`].
    url_redacted: String,
    /// `host:port` of the server.
    address: String,
    client: Client,
    connection: Option<Connection>,
    /// Where the transactions go on a connection of their own ([`resp`]): a single
    /// server over TCP, TLS or a Unix socket; `None` (a cluster, `#insecure` TLS) sends
    /// them through the redis crate's connection.
    write_target: Option<WriteTarget>,
    write_connection: Option<RespConnection>,
    /// A write connection given up with transactions whose outcome is unknown: the
    /// server may still run them, after a retry sent on a new connection, and a seq ID
    /// applied out of order makes the earlier ones look already written. Ended on the
    /// server (`CLIENT KILL ID`) before the new connection writes anything.
    abandoned_write_client: Option<i64>,
    host: String,
    /// The batch in hand rendered in a decoded format, once, before its first attempt.
    lines: Vec<String>,
    /// For each event of the batch in hand, its lines in `lines` (decoded formats).
    line_ranges: Vec<Range<usize>>,
    /// The lines of one event while it is rendered.
    rendered: Vec<String>,
}

/// A Redis failure, with the server (its URL without password) and what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisSinkError {
    /// The client or the server refused (authentication refusals are named as such).
    #[error("redis at {url}: {what}: {reason}")]
    Redis {
        /// The URL as it may be printed (see [`redact_url`]).
        url: String,
        /// What was being done.
        what: &'static str,
        /// The error in words, naming an authentication refusal and the server's address.
        reason: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// The server did not answer within the command timeout.
    #[error("redis at {url}: {what}: timed out")]
    TimedOut {
        /// The URL as it may be printed (see [`redact_url`]).
        url: String,
        /// What was being done.
        what: &'static str,
    },
    /// A TLS certificate or key file could not be read.
    #[error("redis at {url}: reading {key} {}: {source}", path.display())]
    File {
        /// The URL as it may be printed (see [`redact_url`]).
        url: String,
        /// The key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The settings cannot be used with this stream or these events: retrying cannot help.
    #[error("redis at {url}: {key}: {reason}")]
    Refused {
        /// The URL as it may be printed (see [`redact_url`]).
        url: String,
        /// The key to change.
        key: &'static str,
        /// Why, and what to do.
        reason: String,
    },
    /// A transaction's reply said a command failed.
    #[error("redis at {url}: MULTI/EXEC of XADDs on {stream}: {reason}")]
    Reply {
        /// The URL as it may be printed (see [`redact_url`]).
        url: String,
        /// The stream written.
        stream: String,
        /// The server's error for the command, or what was unexpected in the reply.
        reason: String,
    },
}

/// One transaction's reply on its way: `Err` when the command timeout elapsed first.
type Reply = Pin<
    Box<
        dyn Future<Output = Result<redis::RedisResult<redis::Value>, tokio::time::error::Elapsed>>
            + Send,
    >,
>;

/// How one transaction ended: written, or failed, and then whether Redis surely refused
/// it whole (`definite`: a server error, nothing or part applied) or the reply was lost
/// (a timeout or a dropped connection: it may have applied).
struct Failed {
    definite: bool,
    error: RedisSinkError,
}

fn read_pem(url: &str, key: &'static str, path: &Path) -> Result<Vec<u8>, RedisSinkError> {
    std::fs::read(path).map_err(|source| RedisSinkError::File {
        url: url.to_string(),
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// One transaction's commands, whichever connection takes them.
trait Commands<'a> {
    fn command(&mut self, args: &[Arg<'_, 'a>]);
}

impl<'a> Commands<'a> for resp::Encoded<'a> {
    fn command(&mut self, args: &[Arg<'_, 'a>]) {
        resp::Encoded::command(self, args);
    }
}

impl<'a> Commands<'a> for redis::Pipeline {
    fn command(&mut self, args: &[Arg<'_, 'a>]) {
        let mut command = redis::Cmd::new();
        for arg in args {
            match *arg {
                Arg::Bytes(bytes) | Arg::Kept(bytes) => command.arg(bytes),
                Arg::Number(n) => command.arg(n),
                Arg::Id(ms, n) => command.arg(format!("{ms}-{n}")),
            };
        }
        self.add_command(command);
    }
}

/// The replies of the transactions in flight, settled in order.
#[derive(Default)]
struct Window {
    first_failure: Option<Failed>,
    /// Transactions Redis refused whole.
    refused_whole: Vec<usize>,
    /// `XADD`s refused as already written.
    already_written: u64,
}

/// Reply bytes a transaction may take beyond its commands' (`MULTI`, `EXEC`, headers).
const REPLY_BYTES_BASE: usize = 64 << 10;
/// Reply bytes per command: an entry ID, or an error line.
const REPLY_BYTES_PER_COMMAND: usize = 512;

impl RedisSink {
    /// Creates the sink for events of relay `host` (the URL is checked and the TLS files
    /// read, no connection yet).
    ///
    /// # Errors
    /// A malformed URL, a TLS file that cannot be read, or idempotent IDs for events
    /// whose position is not a relay seq.
    pub fn new(config: RedisSinkConfig, host: &str) -> Result<Self, RedisSinkError> {
        let url_redacted = redact_url(&config.url);
        if config.idempotent_ids && !config.output.position_is_seq() {
            return Err(RedisSinkError::Refused {
                url: url_redacted,
                key: "redis_idempotent_ids",
                reason: format!(
                    "events of the {:?} family have no relay seq to derive entry IDs from; turn it off for this sink",
                    config.output.family
                ),
            });
        }
        let certificates = if config.tls.is_empty() {
            None
        } else {
            let files = &config.tls;
            let client_tls = match (&files.cert_file, &files.key_file) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read_pem(&url_redacted, "redis_tls_cert_file", cert)?,
                    client_key: read_pem(&url_redacted, "redis_tls_key_file", key)?,
                }),
                _ => None,
            };
            let root_cert = match &files.ca_file {
                Some(ca) => Some(read_pem(&url_redacted, "redis_tls_ca_file", ca)?),
                None => None,
            };
            Some(redis::TlsCertificates {
                client_tls,
                root_cert,
            })
        };
        let tls_pems = certificates.as_ref().map(|c| TlsPems {
            ca: c.root_cert.clone(),
            client: c
                .client_tls
                .as_ref()
                .map(|t| (t.client_cert.clone(), t.client_key.clone())),
        });
        let url = config.url.clone();
        let seeds = seed_urls(&url);
        let parse_error = |source: redis::RedisError| RedisSinkError::Redis {
            url: url_redacted.clone(),
            what: "parsing the URL and TLS files",
            reason: source.to_string(),
            source,
        };
        let mut config = config;
        let (client, address) = if seeds.len() > 1 {
            if !has_hash_tag(&config.stream) {
                return Err(RedisSinkError::Refused {
                    url: url_redacted,
                    key: "redis_stream",
                    reason: format!(
                        "{:?} has no hash tag: on a Redis Cluster the stream and its cursor key must share a slot for MULTI/EXEC; name it {{{}}}",
                        config.stream, config.stream
                    ),
                });
            }
            // The cluster connection may redirect and retry on its own: keep order by
            // sending one transaction at a time.
            config.transactions_in_flight_max = 1;
            let mut builder = redis::cluster::ClusterClient::builder(seeds.iter().copied())
                .connection_timeout(Duration::from_millis(config.command_timeout_ms))
                .response_timeout(Duration::from_millis(config.command_timeout_ms));
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(parse_error)?;
            let address = seeds
                .iter()
                .map(|seed| {
                    redis::IntoConnectionInfo::into_connection_info(*seed)
                        .map(|info| info.addr().to_string())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(",");
            (Client::Cluster(client), address)
        } else {
            let client = match certificates {
                None => redis::Client::open(url.as_str()),
                Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates),
            }
            .map_err(parse_error)?;
            let address = client.get_connection_info().addr().to_string();
            (Client::Single(client), address)
        };
        let write_target = match &client {
            Client::Single(client) => {
                WriteTarget::of(client.get_connection_info(), tls_pems.as_ref())
            }
            Client::Cluster(_) => None,
        };
        Ok(RedisSink {
            config,
            url_redacted,
            address,
            write_target,
            client,
            connection: None,
            write_connection: None,
            abandoned_write_client: None,
            host: host.to_string(),
            lines: Vec::new(),
            line_ranges: Vec::new(),
            rendered: Vec::new(),
        })
    }

    fn timed_out(&self, what: &'static str) -> RedisSinkError {
        RedisSinkError::TimedOut {
            url: self.url_redacted.clone(),
            what,
        }
    }

    fn redis_error(&self, what: &'static str, source: redis::RedisError) -> RedisSinkError {
        RedisSinkError::Redis {
            url: self.url_redacted.clone(),
            what,
            reason: describe(&source, &self.address),
            source,
        }
    }

    fn refused(&self, key: &'static str, reason: String) -> RedisSinkError {
        RedisSinkError::Refused {
            url: self.url_redacted.clone(),
            key,
            reason,
        }
    }

    /// Connects (TLS and authentication included), checks the stream can be written with
    /// this sink's IDs, and keeps the connection for the writes.
    ///
    /// # Errors
    /// The server cannot be reached or refuses us (named as such), or the stream is
    /// marked for another kind of IDs ([`RedisSinkError::Refused`]).
    pub async fn check(&mut self) -> Result<(), RedisSinkError> {
        self.connection().await.map(drop)
    }

    async fn connection(&mut self) -> Result<Connection, RedisSinkError> {
        if let Some(c) = &self.connection {
            return Ok(c.clone());
        }
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let connected = match &self.client {
            Client::Single(client) => {
                tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
                    .await
                    .map(|c| c.map(Connection::Single))
            }
            Client::Cluster(client) => tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map(|c| c.map(Connection::Cluster)),
        };
        let mut connection = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.redis_error("connecting", e)),
            Err(_) => return Err(self.timed_out("connecting")),
        };
        // A server with a password answers NOAUTH to a client that gave none, and closes
        // its connection on a large unauthenticated write ("broken pipe"): ask once, first.
        self.query(&mut connection, "connecting: PING", &redis::cmd("PING"))
            .await
            .map(|_: String| ())?;
        self.check_stream_ids(&mut connection).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        connection: &mut Connection,
        what: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, RedisSinkError> {
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        match tokio::time::timeout(timeout, command.query_async::<T>(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.redis_error(what, e)),
            Err(_) => Err(self.timed_out(what)),
        }
    }

    /// Seq IDs and time IDs must not meet in one stream: time IDs (milliseconds since
    /// 1970) sit above every seq, so a seq writer would take each event as already
    /// written. The marker key says which relay writes the stream with seq IDs.
    async fn check_stream_ids(&self, connection: &mut Connection) -> Result<(), RedisSinkError> {
        let stream = &self.config.stream;
        let marker = marker_key(stream);
        let what = "checking the stream's IDs";
        let owner: Option<String> = self
            .query(connection, what, redis::cmd("GET").arg(&marker))
            .await?;
        if !self.config.idempotent_ids {
            return match owner {
                None => Ok(()),
                Some(relay) => Err(self.refused(
                    "redis_idempotent_ids",
                    format!(
                        "stream {stream} is written with seq IDs by relay {relay} (key {marker}); time IDs would sit above every seq and that writer would take each later event as already written: turn redis_idempotent_ids on, or use another redis_stream (or DEL {marker} once nothing writes it with seq IDs)"
                    ),
                )),
            };
        }
        if owner.is_none() {
            let kind: String = self
                .query(connection, what, redis::cmd("TYPE").arg(stream))
                .await?;
            if kind != "none" {
                let info: redis::streams::StreamInfoStreamReply = self
                    .query(
                        connection,
                        what,
                        redis::cmd("XINFO").arg("STREAM").arg(stream),
                    )
                    .await?;
                if info.last_generated_id != "0-0" {
                    return Err(self.refused(
                        "redis_idempotent_ids",
                        format!(
                            "stream {stream} already holds entries written without it (last ID {}): seq IDs below it would all be refused; use a new redis_stream",
                            info.last_generated_id
                        ),
                    ));
                }
            }
            let _: Option<String> = self
                .query(
                    connection,
                    what,
                    redis::cmd("SET").arg(&marker).arg(&self.host).arg("NX"),
                )
                .await?;
        }
        // Read again: another writer may have marked it between our GET and SET NX.
        let owner: Option<String> = self
            .query(connection, what, redis::cmd("GET").arg(&marker))
            .await?;
        match owner {
            Some(relay) if relay == self.host => Ok(()),
            other => Err(self.refused(
                "redis_idempotent_ids",
                format!(
                    "stream {stream} is written with seq IDs by relay {} (key {marker}), and seqs of two relays collide: give relay {} its own redis_stream",
                    other.unwrap_or_default(),
                    self.host
                ),
            )),
        }
    }

    async fn xlen(&mut self) -> Result<u64, RedisSinkError> {
        let mut c = self.connection().await?;
        self.query(&mut c, "XLEN", redis::cmd("XLEN").arg(&self.config.stream))
            .await
    }

    /// The events of transaction `index` of the batch in hand.
    fn transaction_range(&self, index: usize, events: usize) -> Range<usize> {
        let per = self.config.multi_events_max.max(1);
        index * per..((index + 1) * per).min(events)
    }

    /// One transaction's commands into `out`: an `XADD` per entry of `events` (IDs
    /// `<seq>-<n>` when idempotent and not `time_ids`, else `*`), then the cursor key with
    /// its last seq. `MULTI`/`EXEC` around them are the caller's.
    fn transaction_commands<'a>(
        &'a self,
        batch: &'a [Delivery],
        events: Range<usize>,
        time_ids: bool,
        out: &mut impl Commands<'a>,
    ) {
        let seq_ids = self.config.idempotent_ids && !time_ids;
        let id = |seq: u64, n: usize| {
            if seq_ids {
                Arg::Id(seq, n as u64)
            } else {
                Arg::Bytes(b"*")
            }
        };
        let stream = self.config.stream.as_bytes();
        if self.config.output.writes_raw_frames() {
            for delivery in &batch[events.clone()] {
                let fields = EventFieldsRef::of(delivery);
                out.command(&raw_frame_xadd(
                    stream,
                    id(delivery.position, 0),
                    &fields,
                    &delivery.payload,
                ));
            }
        } else {
            let field = self.config.output.entry_field().as_bytes();
            for (delivery, lines) in batch[events.clone()]
                .iter()
                .zip(&self.line_ranges[events.clone()])
            {
                for (n, line) in self.lines[lines.clone()].iter().enumerate() {
                    out.command(&[
                        Arg::Bytes(b"XADD"),
                        Arg::Bytes(stream),
                        id(delivery.position, n),
                        Arg::Bytes(field),
                        Arg::Kept(line.as_bytes()),
                    ]);
                }
            }
        }
        if let Some(cursor) = self.config.output.cursor_value(&batch[events]) {
            let key = format!("{}{}", self.config.cursor_key_prefix, self.host);
            out.command(&[
                Arg::Bytes(b"SET"),
                Arg::Bytes(key.as_bytes()),
                Arg::Bytes(cursor.as_bytes()),
            ]);
        }
    }

    /// One transaction for the redis crate's connection. Replies are kept per command
    /// (`ignore_errors`): only a refused `XADD` fails, the rest applies.
    fn transaction(
        &self,
        batch: &[Delivery],
        events: Range<usize>,
        time_ids: bool,
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        self.transaction_commands(batch, events, time_ids, &mut pipe);
        pipe
    }

    /// One transaction for the write connection, `MULTI` and `EXEC` included.
    fn encoded_transaction<'a>(
        &'a self,
        batch: &'a [Delivery],
        events: Range<usize>,
        time_ids: bool,
    ) -> resp::Encoded<'a> {
        let mut encoded = resp::Encoded::new();
        encoded.command(&[Arg::Bytes(b"MULTI")]);
        self.transaction_commands(batch, events, time_ids, &mut encoded);
        encoded.command(&[Arg::Bytes(b"EXEC")]);
        encoded
    }

    fn reply_error(&self, reason: String) -> RedisSinkError {
        RedisSinkError::Reply {
            url: self.url_redacted.clone(),
            stream: self.config.stream.clone(),
            reason,
        }
    }

    /// Reads a transaction's per-command errors: `Ok` with the number of `XADD`s
    /// refused as already written (idempotent IDs), or the first other refusal.
    fn check_errors<'e>(
        &self,
        errors: impl Iterator<Item = &'e str>,
    ) -> Result<u64, RedisSinkError> {
        let mut already_written = 0u64;
        for text in errors {
            if self.config.idempotent_ids && text.contains(ID_NOT_ABOVE_TOP) {
                already_written += 1;
            } else {
                return Err(self.reply_error(text.to_string()));
            }
        }
        Ok(already_written)
    }

    /// [`Self::check_errors`] of the redis crate's reply.
    fn check_reply(&self, reply: redis::Value) -> Result<u64, RedisSinkError> {
        let redis::Value::Array(items) = reply else {
            return Err(self.reply_error(format!("expected one reply per command, got {reply:?}")));
        };
        let errors: Vec<String> = items
            .iter()
            .filter_map(|item| match item {
                redis::Value::ServerError(error) => Some(error.to_string()),
                _ => None,
            })
            .collect();
        self.check_errors(errors.iter().map(String::as_str))
    }

    /// Takes one transaction's outcome, in order: marks it written, or keeps the first
    /// failure (no later transaction is sent after it).
    fn settle(
        &self,
        window: &mut Window,
        index: usize,
        outcome: Result<u64, Failed>,
        batch: &[Delivery],
        written: &mut [bool],
        time_ids: &mut [bool],
    ) {
        match outcome {
            Ok(refused) => {
                written[index] = true;
                window.already_written += refused;
                for &earlier in window.refused_whole.iter().filter(|&&k| k < index) {
                    if !time_ids[earlier] {
                        time_ids[earlier] = true;
                        let events = &batch[self.transaction_range(earlier, batch.len())];
                        tracing::error!(
                            stream = %self.config.stream,
                            first_seq = events.first().map(|d| d.position),
                            last_seq = events.last().map(|d| d.position),
                            "a transaction was refused while a later one applied: its events are written again after the later ones, out of order, with time IDs"
                        );
                    }
                }
            }
            Err(failed) => {
                if failed.definite {
                    window.refused_whole.push(index);
                }
                window.first_failure.get_or_insert(failed);
            }
        }
    }

    fn finish(&self, window: Window) -> Result<(), RedisSinkError> {
        if window.already_written > 0 {
            tracing::debug!(stream = %self.config.stream, already_written = window.already_written, "entries refused as already in the stream (a replay or a retry)");
        }
        match window.first_failure {
            Some(failed) => Err(failed.error),
            None => Ok(()),
        }
    }

    /// Sends the transactions of the batch not yet `written`, at most
    /// `transactions_in_flight_max` at a time, and reads their replies in order.
    /// Stops sending at the first failure, still reads the replies already due, and
    /// returns that failure; `written` then says which landed. A transaction Redis
    /// refused whole while a later one applied is marked in `time_ids` (see the module
    /// docs).
    async fn write_window(
        &mut self,
        batch: &[Delivery],
        written: &mut [bool],
        time_ids: &mut [bool],
    ) -> Result<(), RedisSinkError> {
        let connection = self.connection().await?;
        if self.write_target.is_some() {
            return self.write_window_resp(batch, written, time_ids).await;
        }
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let in_flight_max = self.config.transactions_in_flight_max.max(1);
        let unwritten: Vec<usize> = (0..written.len()).filter(|&i| !written[i]).collect();
        let mut pending = unwritten.into_iter();
        let mut in_flight: VecDeque<(usize, futures_util::future::MaybeDone<Reply>)> =
            VecDeque::with_capacity(in_flight_max);
        let mut window = Window::default();
        loop {
            while window.first_failure.is_none() && in_flight.len() < in_flight_max {
                let Some(index) = pending.next() else { break };
                let range = self.transaction_range(index, batch.len());
                let pipe = self.transaction(batch, range, time_ids[index]);
                let mut c = connection.clone();
                let reply: Reply = Box::pin(tokio::time::timeout(timeout, async move {
                    pipe.query_async::<redis::Value>(&mut c).await
                }));
                let mut reply = futures_util::future::maybe_done(reply);
                // The first poll hands the request to the connection's queue (first come,
                // first served, also while it waits for room), so the transactions reach
                // Redis, and apply, in the order they were built.
                let _ = futures_util::poll!(Pin::new(&mut reply));
                in_flight.push_back((index, reply));
            }
            let Some((index, mut reply)) = in_flight.pop_front() else {
                break;
            };
            (&mut reply).await;
            let outcome = match Pin::new(&mut reply).take_output() {
                Some(Ok(Ok(value))) => self.check_reply(value).map_err(|error| Failed {
                    definite: true,
                    error,
                }),
                Some(Ok(Err(e))) => Err(Failed {
                    definite: e.code().is_some(),
                    error: self.redis_error("MULTI/EXEC of XADDs", e),
                }),
                Some(Err(_)) | None => Err(Failed {
                    definite: false,
                    error: self.timed_out("MULTI/EXEC of XADDs"),
                }),
            };
            self.settle(&mut window, index, outcome, batch, written, time_ids);
        }
        self.finish(window)
    }

    /// Connects the write connection (the other one has checked the server and stream).
    async fn write_connection(&mut self) -> Result<RespConnection, RedisSinkError> {
        if let Some(connection) = self.write_connection.take() {
            return Ok(connection);
        }
        let Some(target) = &self.write_target else {
            return Err(self.reply_error("no write connection for this URL".into()));
        };
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let reply_bytes_max =
            REPLY_BYTES_BASE + REPLY_BYTES_PER_COMMAND * (self.config.multi_events_max.max(1) + 1);
        let connecting = RespConnection::connect(
            &target.address,
            target.username.as_deref(),
            target.password.as_deref(),
            target.db,
            reply_bytes_max,
        );
        let what = "connecting the write connection";
        let mut connection = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(connection)) => {
                let transport = match &target.address {
                    resp::Address::Tcp(..) => "tcp",
                    resp::Address::Tls(..) => "tls",
                    resp::Address::Unix(..) => "unix",
                };
                tracing::debug!(url = %self.url_redacted, transport, "redis write connection open");
                connection
            }
            Ok(Err(resp::RespError::Io(e))) => return Err(self.redis_error(what, e.into())),
            Ok(Err(e)) => return Err(self.reply_error(format!("{what}: {e}"))),
            Err(_) => return Err(self.timed_out(what)),
        };
        if let Some(abandoned) = self.abandoned_write_client {
            let what = "ending the abandoned write connection (CLIENT KILL ID)";
            match tokio::time::timeout(timeout, connection.end_client(abandoned)).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(refusal))) => tracing::warn!(
                    url = %self.url_redacted,
                    %refusal,
                    "the server refused CLIENT KILL: transactions of the abandoned write connection may still apply after their retry (with redis_idempotent_ids, an event can then be taken as already written); allow the CLIENT command to this user"
                ),
                Ok(Err(resp::RespError::Io(e))) => return Err(self.redis_error(what, e.into())),
                Ok(Err(e)) => return Err(self.reply_error(format!("{what}: {e}"))),
                Err(_) => return Err(self.timed_out(what)),
            }
            self.abandoned_write_client = None;
        }
        Ok(connection)
    }

    /// [`Self::write_window`] on the write connection: each transaction encoded once and
    /// written from the batch's bytes, replies read in order.
    async fn write_window_resp(
        &mut self,
        batch: &[Delivery],
        written: &mut [bool],
        time_ids: &mut [bool],
    ) -> Result<(), RedisSinkError> {
        let mut connection = self.write_connection().await?;
        let what = "MULTI/EXEC of XADDs";
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let in_flight_max = self.config.transactions_in_flight_max.max(1);
        let unwritten: Vec<usize> = (0..written.len()).filter(|&i| !written[i]).collect();
        let mut pending = unwritten.into_iter();
        // (transaction, its commands, MULTI and EXEC included)
        let mut in_flight: VecDeque<(usize, usize)> = VecDeque::with_capacity(in_flight_max);
        let mut window = Window::default();
        // Any failure leaves the connection in an unknown state: it is dropped, not kept.
        let mut healthy = true;
        // A send cut short counts too: its EXEC never left, but earlier bytes did.
        let mut sent_any = false;
        // False after a failed or timed-out read: a late reply would be taken for the next.
        let mut replies_in_step = true;
        loop {
            while window.first_failure.is_none() && in_flight.len() < in_flight_max {
                let Some(index) = pending.next() else { break };
                let range = self.transaction_range(index, batch.len());
                let encoded = self.encoded_transaction(batch, range, time_ids[index]);
                let error = match tokio::time::timeout(timeout, connection.send(&encoded)).await {
                    Ok(Ok(())) => {
                        sent_any = true;
                        in_flight.push_back((index, encoded.commands()));
                        continue;
                    }
                    Ok(Err(e)) => self.redis_error(what, e.into()),
                    Err(_) => self.timed_out(what),
                };
                healthy = false;
                sent_any = true;
                // Part of it may have reached Redis, but never its EXEC: nothing applied.
                window.first_failure = Some(Failed {
                    definite: false,
                    error,
                });
            }
            let Some((index, commands)) = in_flight.pop_front() else {
                break;
            };
            if !replies_in_step {
                // The replies after a failed or timed-out read cannot be told apart (a
                // late one would be taken for the next): these stay unknown, and the
                // connection is ended before anything is sent again. (After a failed
                // send the replies already due are still read: they stay in step.)
                let error = self.reply_error(
                    "reply not read: an earlier reply on this connection failed".into(),
                );
                self.settle(
                    &mut window,
                    index,
                    Err(Failed {
                        definite: false,
                        error,
                    }),
                    batch,
                    written,
                    time_ids,
                );
                continue;
            }
            let outcome =
                match tokio::time::timeout(timeout, connection.transaction_reply(commands)).await {
                    Ok(Ok(TransactionReply::Applied(items))) => self
                        .check_errors(items.iter().filter_map(|item| match item {
                            RespValue::Error(text) => Some(text.as_str()),
                            _ => None,
                        }))
                        .map_err(|error| Failed {
                            definite: true,
                            error,
                        }),
                    Ok(Ok(TransactionReply::Refused(text))) => Err(Failed {
                        definite: true,
                        error: self.reply_error(describe_text(&text, None, false, &self.address)),
                    }),
                    Ok(Err(resp::RespError::Io(e))) => {
                        healthy = false;
                        replies_in_step = false;
                        Err(Failed {
                            definite: false,
                            error: self.redis_error(what, e.into()),
                        })
                    }
                    Ok(Err(e)) => {
                        healthy = false;
                        replies_in_step = false;
                        Err(Failed {
                            definite: false,
                            error: self.reply_error(e.to_string()),
                        })
                    }
                    Err(_) => {
                        healthy = false;
                        replies_in_step = false;
                        Err(Failed {
                            definite: false,
                            error: self.timed_out(what),
                        })
                    }
                };
            self.settle(&mut window, index, outcome, batch, written, time_ids);
        }
        if healthy {
            self.write_connection = Some(connection);
        } else if sent_any {
            self.abandoned_write_client = connection.client_id();
        }
        self.finish(window)
    }

    /// Renders the batch in a decoded format, once, keeping each event's lines apart.
    fn render(&mut self, batch: &[Delivery], stats: &SinkStats) {
        self.lines.clear();
        self.line_ranges.clear();
        if self.config.output.writes_raw_frames() {
            return;
        }
        for delivery in batch {
            self.config.output.render_batch(
                std::slice::from_ref(delivery),
                stats,
                &mut self.rendered,
            );
            let start = self.lines.len();
            self.lines.append(&mut self.rendered);
            self.line_ranges.push(start..self.lines.len());
        }
    }

    /// Writes the batch, waiting out backpressure and retrying failures until it is written
    /// or `stop` says so; `Ok(false)` if stopped before writing (the batch is then not acked).
    ///
    /// # Errors
    /// The settings cannot work with this stream ([`RedisSinkError::Refused`]); any
    /// other failure is retried.
    pub async fn write(
        &mut self,
        batch: &[Delivery],
        stats: &SinkStats,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, RedisSinkError> {
        let mut attempt = 0u32;
        let mut last_log: Option<Instant> = None;
        let log_every = Duration::from_millis(self.config.log_interval_ms);
        self.render(batch, stats);
        let transactions = batch.len().div_ceil(self.config.multi_events_max.max(1));
        let mut written = vec![false; transactions];
        let mut time_ids = vec![false; transactions];
        loop {
            if *stop.borrow() {
                return Ok(false);
            }
            let outcome = match self.wait_below_high_water(stats, stop).await {
                Ok(true) => self.write_window(batch, &mut written, &mut time_ids).await,
                Ok(false) => return Ok(false),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    if stats.note_success() {
                        tracing::info!(stream = %self.config.stream, "redis writes recovered");
                    }
                    return Ok(true);
                }
                Err(error @ RedisSinkError::Refused { .. }) => return Err(error),
                Err(error) => {
                    stats.note_failure();
                    // A broken connection is rebuilt on the next attempt.
                    self.connection = None;
                    let delay = retry_delay(
                        self.config.retry_delay_min_ms,
                        self.config.retry_delay_max_ms,
                        attempt,
                    );
                    if last_log.is_none_or(|at| at.elapsed() >= log_every) {
                        let unwritten = written.iter().filter(|w| !**w).count();
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, batch_events = batch.len(), transactions_unwritten = unwritten, "redis write failed; the batch stays in the queue and is retried");
                        last_log = Some(Instant::now());
                    }
                    attempt = attempt.saturating_add(1);
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(false),
                    }
                }
            }
        }
    }

    /// Waits while `XLEN` is at or above the high-water mark, until it falls below the low-water mark.
    async fn wait_below_high_water(
        &mut self,
        stats: &SinkStats,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, RedisSinkError> {
        if self.config.high_water_events == 0 {
            return Ok(true);
        }
        let mut length = self.xlen().await?;
        if length < self.config.high_water_events {
            return Ok(true);
        }
        stats.backpressure.store(1, Ordering::Relaxed);
        tracing::warn!(stream = %self.config.stream, xlen = length, high_water = self.config.high_water_events, low_water = self.config.low_water_events, "stream above its high-water mark; pausing writes (events keep spilling to disk)");
        let mut last_log = Instant::now();
        while length >= self.config.low_water_events {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.config.backpressure_poll_ms)) => {}
                _ = stop.changed() => { stats.backpressure.store(0, Ordering::Relaxed); return Ok(false) }
            }
            length = self.xlen().await?;
            if last_log.elapsed() >= Duration::from_millis(self.config.log_interval_ms) {
                tracing::info!(stream = %self.config.stream, xlen = length, "still paused for backpressure");
                last_log = Instant::now();
            }
        }
        stats.backpressure.store(0, Ordering::Relaxed);
        tracing::info!(stream = %self.config.stream, xlen = length, "stream below its low-water mark; writing again");
        Ok(true)
    }
}

impl super::Sink for RedisSink {
    fn write<'a>(
        &'a mut self,
        batch: &'a [Delivery],
        stats: &'a SinkStats,
        stop: &'a tokio::sync::watch::Receiver<bool>,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, super::SinkError>> {
        Box::pin(async move {
            RedisSink::write(self, batch, stats, stop)
                .await
                .map_err(super::SinkError::from)
        })
    }
}
