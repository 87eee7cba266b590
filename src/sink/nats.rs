//! The NATS JetStream sink: each event published to `<subject_prefix>.<host>` of a stream
//! (created when absent with the configured replicas and duplicate window), pipelined
//! within a bounded window of unacked publishes, acked to the queue only once every
//! `PublishAck` of the batch is back, in order.
//!
//! # Exactly once in the stream
//! Every message carries `Nats-Msg-Id: <host>:<seq>` (plus `:<n>`, the operation index,
//! where one frame renders several JSON lines; other families' ids start with their subject
//! token, `labels:` or `repos:`). The server drops a publish whose id it saw
//! within the stream's duplicate window, so a batch retried after a timeout or a leader
//! failover, a batch replayed after a `kill -9`, and the same event published by the other
//! process of an active-active pair are all stored once. The window is the bound: an
//! outage (or a stopped process) longer than it can leave duplicates.
//!
//! # Why no skip below the stored head
//! On start the sink reads the last message on its subject and logs its seq. It does not
//! skip events at or below it: after a leader failover a later publish of a batch can be
//! stored while an earlier one was lost, and a process killed before the retry would then
//! skip the lost one for good. The dedupe window already drops what is stored.
//!
//! # The ack window
//! `async-nats` holds one slot of `max_ack_inflight` (5,000 here) per ack future not yet
//! awaited, and a publisher that holds them all waits forever; the window
//! (`nats_ack_window_events`, at most [`ACK_WINDOW_EVENTS_MAX`]) stays below it.
//!
//! Secrets (token, password) are never printed: [`Secret`] prints `***`, server URLs go
//! through [`super::redis::redact_url`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;

use super::redis::redact_url;
use super::{retry_delay, EventFields, OutputOptions, SinkStats};
use crate::queue::Delivery;

/// The `async-nats` limit of ack futures not yet awaited (its default, set explicitly).
pub const MAX_ACK_INFLIGHT: usize = 5_000;

/// The largest `nats_ack_window_events`: below [`MAX_ACK_INFLIGHT`], leaving room for the
/// ack futures of a failed attempt, which the client holds until they time out.
pub const ACK_WINDOW_EVENTS_MAX: u64 = 4_000;

/// A secret configuration value (a token, a password): read like a string, printed as `***`
/// by `Debug` and serialization, so no log line, error or report shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    // Any scalar is taken as text: `SPILLWAY_NATS_PASSWORD=1234` parses as a TOML integer,
    // and a type error would print the value.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How the sink authenticates and secures its connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NatsAuth {
    /// A server token (`authorization { token }`).
    pub token: Secret,
    /// A user name, with `password`.
    pub user: String,
    /// The user's password.
    pub password: Secret,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// The CA that signed the servers' certificates (turns TLS on).
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate, with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's key.
    pub tls_key_file: Option<PathBuf>,
}

/// The NATS sink's settings.
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    /// Server URLs (`nats://host:port`, `tls://host:port`), several for a cluster.
    pub urls: Vec<String>,
    /// The JetStream stream.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<host>`; the stream is created over `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// A token between the prefix and the host for a family other than the firehose
    /// (`labels`: `<subject_prefix>.labels.<host>`); empty for none.
    pub subject_family: String,
    /// Whether messages carry `Nats-Msg-Id` (false for sources whose positions are not
    /// stable across runs: those get no dedupe, so retries may store duplicates).
    pub message_ids: bool,
    /// Replicas of a stream this sink creates.
    pub replicas: usize,
    /// The duplicate window of a stream this sink creates, in seconds.
    pub duplicate_window_secs: u64,
    /// Publishes in flight without their ack, at most.
    pub ack_window_events: usize,
    /// Connecting may take this long.
    pub connect_timeout_ms: u64,
    /// A publish ack or a JetStream API request may take this long before it counts as failed.
    pub ack_timeout_ms: u64,
    /// First retry delay after a failure, doubled up to the max.
    pub retry_delay_min_ms: u64,
    /// Longest retry delay.
    pub retry_delay_max_ms: u64,
    /// Interval between repeated log lines about the same outage.
    pub log_interval_ms: u64,
    /// Credentials and TLS.
    pub auth: NatsAuth,
    /// What is written: raw frames or decoded JSON lines.
    pub output: OutputOptions,
}

impl NatsSinkConfig {
    /// Defaults for `urls`: stream `firehose`, subjects `firehose.<host>`, one replica, a
    /// 2-minute duplicate window, 1,024 publishes in flight.
    pub fn new(urls: Vec<String>) -> Self {
        NatsSinkConfig {
            urls,
            stream: "firehose".into(),
            subject_prefix: "firehose".into(),
            subject_family: String::new(),
            message_ids: true,
            replicas: 1,
            duplicate_window_secs: 120,
            ack_window_events: 1_024,
            connect_timeout_ms: 5_000,
            ack_timeout_ms: 5_000,
            retry_delay_min_ms: 100,
            retry_delay_max_ms: 10_000,
            log_interval_ms: 10_000,
            auth: NatsAuth::default(),
            output: OutputOptions::default(),
        }
    }
}

/// Its lines of `spillway run --help`: the keys of the NATS sink.
pub const CONFIG_HELP: &str = "  nats_urls = [\"nats://127.0.0.1:4222\"]  servers (several for a cluster); tls://host:port for TLS
  nats_stream = \"firehose\"             JetStream stream, created when absent
  nats_subject_prefix = \"firehose\"     subject <prefix>.<relay host, dots as _> (labelers: <prefix>.labels.<host>, repo listings: <prefix>.repos.<host>); the stream takes <prefix>.>
  nats_replicas = 1                     replicas of a created stream (3 for a 3-node cluster)
  nats_duplicate_window_secs = 120      dedupe window of a created stream: the server keeps every msg id
                                        of the window in memory (~100 B each: at 2,000 events/s, 120 s is
                                        ~24 MB); an outage or restart longer than it may store duplicates
  nats_ack_window_events = 1024         publishes awaiting their ack, at most (1..=4000)
  nats_connect_timeout_ms = 5000        connecting may take this long
  nats_ack_timeout_ms = 5000            a publish ack may take this long (a leader failover takes ~7 s)
  nats_token = \"\"                      server token (never printed)
  nats_user = \"\", nats_password = \"\"   user and password (the password never printed)
  nats_creds_file = \"\"                 .creds file (JWT + NKey seed)
  nats_tls_ca_file = \"\"                CA of the servers' certificates (turns TLS on)
  nats_tls_cert_file = \"\", nats_tls_key_file = \"\"  client certificate and key
";

/// The NATS sink's keys, as the configuration reads them, to check.
#[derive(Debug)]
pub struct NatsKeys<'a> {
    /// `nats_urls`.
    pub urls: &'a [String],
    /// `nats_stream`.
    pub stream: &'a str,
    /// `nats_subject_prefix`.
    pub subject_prefix: &'a str,
    /// `nats_replicas`.
    pub replicas: u64,
    /// `nats_duplicate_window_secs`.
    pub duplicate_window_secs: u64,
    /// `nats_ack_window_events`.
    pub ack_window_events: u64,
    /// `nats_connect_timeout_ms`.
    pub connect_timeout_ms: u64,
    /// `nats_ack_timeout_ms`.
    pub ack_timeout_ms: u64,
    /// Credentials and TLS.
    pub auth: &'a NatsAuth,
}

/// Checks the NATS sink's keys: URLs that parse, a stream name and subject prefix NATS
/// accepts, bounds, one kind of credentials, files that exist.
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_keys(keys: &NatsKeys<'_>) -> Result<(), (&'static str, String)> {
    if keys.urls.is_empty() {
        return Err(("nats_urls", "must name at least one server".into()));
    }
    for url in keys.urls {
        if let Err(e) = url.parse::<async_nats::ServerAddr>() {
            return Err((
                "nats_urls",
                format!(
                    "{}: {e} (expected nats://host:port or tls://host:port)",
                    redact_url(url)
                ),
            ));
        }
    }
    let bad_name = |s: &str| {
        s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    };
    if bad_name(keys.stream) {
        return Err((
            "nats_stream",
            format!(
                "{:?}: must be non-empty, without spaces, '.', '*', '>', '/'",
                keys.stream
            ),
        ));
    }
    let prefix = keys.subject_prefix;
    if prefix.is_empty()
        || prefix.starts_with('.')
        || prefix.ends_with('.')
        || prefix.contains("..")
        || prefix
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
    {
        return Err((
            "nats_subject_prefix",
            format!(
                "{prefix:?}: must be subject tokens separated by '.', without spaces or wildcards"
            ),
        ));
    }
    if !(1..=5).contains(&keys.replicas) {
        return Err((
            "nats_replicas",
            format!("{} is not in 1..=5 (JetStream's limit)", keys.replicas),
        ));
    }
    if keys.duplicate_window_secs == 0 {
        return Err((
            "nats_duplicate_window_secs",
            "must be greater than zero: retries and restarts are deduplicated within it".into(),
        ));
    }
    if keys.ack_window_events == 0 || keys.ack_window_events > ACK_WINDOW_EVENTS_MAX {
        return Err((
            "nats_ack_window_events",
            format!(
                "{} is not in 1..={ACK_WINDOW_EVENTS_MAX} (the client blocks for good past its max_ack_inflight of {MAX_ACK_INFLIGHT})",
                keys.ack_window_events
            ),
        ));
    }
    if keys.connect_timeout_ms == 0 {
        return Err((
            "nats_connect_timeout_ms",
            "must be greater than zero".into(),
        ));
    }
    if keys.ack_timeout_ms == 0 {
        return Err(("nats_ack_timeout_ms", "must be greater than zero".into()));
    }
    check_auth(keys.auth)
}

fn check_auth(auth: &NatsAuth) -> Result<(), (&'static str, String)> {
    let kinds = [
        !auth.token.is_empty(),
        !auth.user.is_empty() || !auth.password.is_empty(),
        auth.creds_file.is_some(),
    ];
    if kinds.iter().filter(|set| **set).count() > 1 {
        return Err((
            "nats_token",
            "set one of nats_token, nats_user/nats_password and nats_creds_file".into(),
        ));
    }
    // Each message names its own key only: the configuration's errors name one key.
    if auth.password.is_empty() && !auth.user.is_empty() {
        return Err(("nats_user", "a user name without its password".into()));
    }
    if auth.user.is_empty() && !auth.password.is_empty() {
        return Err(("nats_password", "a password without its user name".into()));
    }
    if auth.tls_cert_file.is_some() && auth.tls_key_file.is_none() {
        return Err((
            "nats_tls_cert_file",
            "a client certificate without its key".into(),
        ));
    }
    if auth.tls_key_file.is_some() && auth.tls_cert_file.is_none() {
        return Err((
            "nats_tls_key_file",
            "a client key without its certificate".into(),
        ));
    }
    let files = [
        ("nats_creds_file", &auth.creds_file),
        ("nats_tls_ca_file", &auth.tls_ca_file),
        ("nats_tls_cert_file", &auth.tls_cert_file),
        ("nats_tls_key_file", &auth.tls_key_file),
    ];
    for (key, file) in files {
        if let Some(path) = file {
            if !path.is_file() {
                return Err((key, format!("{} is not a readable file", path.display())));
            }
        }
    }
    Ok(())
}

/// A NATS failure, naming the servers (URLs without passwords) and what was being done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsSinkError {
    /// Connecting failed (unreachable, TLS refused, credentials refused).
    #[error("nats at {servers}: connecting: {reason}")]
    Connect {
        /// The server URLs as they may be printed.
        servers: String,
        /// The client's error in words (its source chain).
        reason: String,
    },
    /// A credentials file could not be read.
    #[error("nats: reading nats_creds_file {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JetStream request (the stream, a publish, its ack) failed.
    #[error("nats at {servers}: {what} (stream {stream}): {reason}")]
    JetStream {
        /// The server URLs as they may be printed.
        servers: String,
        /// The stream.
        stream: String,
        /// What was being done.
        what: &'static str,
        /// The client's error in words.
        reason: String,
    },
}

/// An error and its sources in one line (`async-nats` keeps the detail, such as a TLS
/// refusal, in the source).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The subject token of relay `host`: characters NATS gives a meaning are replaced by `_`.
pub fn subject_token(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '.' | '*' | '>') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// One message to publish: its id, headers and payload.
struct Outgoing {
    id: String,
    seq: u64,
    kind: String,
    did: String,
    payload: Bytes,
}

/// The sink.
pub struct NatsSink {
    config: NatsSinkConfig,
    /// The server URLs as they may be printed.
    servers: String,
    host: String,
    subject: String,
    jetstream: Option<jetstream::Context>,
    /// The batch in hand as messages, built once before its first attempt.
    outgoing: Vec<Outgoing>,
    /// Rendering buffer for one delivery's lines.
    lines: Vec<String>,
}

impl NatsSink {
    /// Creates the sink for events of relay `host` (no connection yet).
    pub fn new(config: NatsSinkConfig, host: &str) -> Self {
        let servers = config
            .urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let subject = if config.subject_family.is_empty() {
            format!("{}.{}", config.subject_prefix, subject_token(host))
        } else {
            format!(
                "{}.{}.{}",
                config.subject_prefix,
                config.subject_family,
                subject_token(host)
            )
        };
        NatsSink {
            config,
            servers,
            host: host.to_string(),
            subject,
            jetstream: None,
            outgoing: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// The subject this sink publishes to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    fn jetstream_error(&self, what: &'static str, error: &dyn std::error::Error) -> NatsSinkError {
        NatsSinkError::JetStream {
            servers: self.servers.clone(),
            stream: self.config.stream.clone(),
            what,
            reason: chain(error),
        }
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions, NatsSinkError> {
        let auth = &self.config.auth;
        let mut options = match &auth.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| NatsSinkError::Credentials {
                    path: path.clone(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if !auth.token.is_empty() {
            options = options.token(auth.token.expose().to_string());
        }
        if !auth.user.is_empty() {
            options = options.user_and_password(auth.user.clone(), auth.password.expose().into());
        }
        if let Some(ca) = &auth.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&auth.tls_cert_file, &auth.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options
            .name(format!("spillway {}", self.host))
            .connection_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .request_timeout(Some(Duration::from_millis(self.config.ack_timeout_ms))))
    }

    /// Connects (once; the client reconnects by itself after), makes sure the stream
    /// exists, and logs the last seq it holds on this sink's subject.
    ///
    /// # Errors
    /// The servers cannot be reached, refuse the TLS handshake or the credentials, or
    /// the stream cannot be found or created.
    pub async fn connect(&mut self) -> Result<jetstream::Context, NatsSinkError> {
        if let Some(context) = &self.jetstream {
            return Ok(context.clone());
        }
        let options = self.options().await?;
        let addresses: Vec<async_nats::ServerAddr> = self
            .config
            .urls
            .iter()
            .filter_map(|u| u.parse().ok())
            .collect();
        let client = options
            .connect(addresses)
            .await
            .map_err(|e| NatsSinkError::Connect {
                servers: self.servers.clone(),
                reason: chain(&e),
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(self.config.ack_timeout_ms))
            .max_ack_inflight(MAX_ACK_INFLIGHT)
            .backpressure_on_inflight(true)
            .build(client);
        let stream = self.ensure_stream(&context).await?;
        self.log_stored_head(stream).await;
        self.jetstream = Some(context.clone());
        Ok(context)
    }

    async fn ensure_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<stream::Stream, NatsSinkError> {
        let wanted = stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            num_replicas: self.config.replicas,
            duplicate_window: Duration::from_secs(self.config.duplicate_window_secs),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = context
            .get_or_create_stream(wanted)
            .await
            .map_err(|e| self.jetstream_error("finding or creating the stream", &e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| self.jetstream_error("reading the stream's settings", &e))?;
        let config = &info.config;
        if config.num_replicas != self.config.replicas
            || config.duplicate_window != Duration::from_secs(self.config.duplicate_window_secs)
        {
            // An existing stream is the operator's: we say how it differs, and change nothing.
            tracing::warn!(stream = %self.config.stream, replicas = config.num_replicas, duplicate_window_secs = config.duplicate_window.as_secs(), wanted_replicas = self.config.replicas, wanted_duplicate_window_secs = self.config.duplicate_window_secs, "the existing stream's replicas or duplicate window differ from the configuration; keeping the stream's");
        }
        Ok(stream)
    }

    /// Reads the last message on this sink's subject and logs its seq header.
    async fn log_stored_head(&self, stream: stream::Stream) {
        match stream.get_last_raw_message_by_subject(&self.subject).await {
            Ok(message) => {
                let seq = message
                    .headers
                    .get("seq")
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                tracing::info!(stream = %self.config.stream, subject = %self.subject, stored_seq = ?seq, stream_sequence = message.sequence, "the stream holds events of this relay up to this seq; events replayed at or below it are deduplicated within the window");
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                tracing::info!(stream = %self.config.stream, subject = %self.subject, "the stream holds no event of this relay yet");
            }
            Err(e) => {
                tracing::warn!(stream = %self.config.stream, subject = %self.subject, error = %chain(&e), "could not read the last message of this relay's subject");
            }
        }
    }

    /// Builds the batch's messages: one per frame (raw), or one per rendered line.
    fn prepare(&mut self, batch: &[Delivery], stats: &SinkStats) {
        self.outgoing.clear();
        let raw = self.config.output.writes_raw_frames();
        for delivery in batch {
            let fields = EventFields::of(delivery);
            // The family token keeps a labeler's ids apart from a relay's on the same host:
            // the stream dedupes by id across all its subjects.
            let id = if self.config.subject_family.is_empty() {
                format!("{}:{}", self.host, delivery.position)
            } else {
                format!(
                    "{}:{}:{}",
                    self.config.subject_family, self.host, delivery.position
                )
            };
            if raw {
                self.outgoing.push(Outgoing {
                    id,
                    seq: fields.seq,
                    kind: fields.kind,
                    did: fields.did,
                    payload: delivery.payload.clone(),
                });
                continue;
            }
            // One delivery at a time, so each line knows its frame and operation index.
            let mut lines = std::mem::take(&mut self.lines);
            self.config
                .output
                .render_batch(std::slice::from_ref(delivery), stats, &mut lines);
            let several = lines.len() > 1;
            for (index, line) in lines.drain(..).enumerate() {
                self.outgoing.push(Outgoing {
                    id: if several {
                        format!("{id}:{index}")
                    } else {
                        id.clone()
                    },
                    seq: fields.seq,
                    kind: fields.kind.clone(),
                    did: fields.did.clone(),
                    payload: Bytes::from(line),
                });
            }
            self.lines = lines;
        }
    }

    /// Publishes the prepared messages within the ack window; returns once every ack is
    /// back, in order, with how many the server found duplicate.
    async fn publish_once(&mut self) -> Result<u64, NatsSinkError> {
        let context = self.connect().await?;
        let window = self.config.ack_window_events.max(1);
        let mut pending: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
        let mut duplicates = 0u64;
        for message in &self.outgoing {
            if pending.len() >= window {
                if let Some(ack) = pending.pop_front() {
                    duplicates += u64::from(self.await_ack(ack).await?);
                }
            }
            let mut publish =
                jetstream::message::PublishMessage::build().payload(message.payload.clone());
            if self.config.message_ids {
                publish = publish.message_id(&message.id);
            }
            publish = publish
                .header("seq", message.seq.to_string().as_str())
                .header("type", message.kind.as_str());
            if !message.did.is_empty() {
                publish = publish.header("did", message.did.as_str());
            }
            let ack = context
                .send_publish(self.subject.clone(), publish)
                .await
                .map_err(|e| self.jetstream_error("publishing", &e))?;
            pending.push_back(ack);
        }
        while let Some(ack) = pending.pop_front() {
            duplicates += u64::from(self.await_ack(ack).await?);
        }
        Ok(duplicates)
    }

    async fn await_ack(&self, ack: PublishAckFuture) -> Result<bool, NatsSinkError> {
        match ack.await {
            Ok(ack) => Ok(ack.duplicate),
            Err(e) => Err(self.jetstream_error("waiting for a publish ack", &e)),
        }
    }

    /// Publishes the batch, retrying failures (the whole batch: its message ids dedupe
    /// what was stored) until every ack is back or `stop` says so; returns false if
    /// stopped first (the batch is then not acked).
    pub async fn write(
        &mut self,
        batch: &[Delivery],
        stats: &SinkStats,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        self.prepare(batch, stats);
        let mut attempt = 0u32;
        let mut last_log: Option<Instant> = None;
        let log_every = Duration::from_millis(self.config.log_interval_ms);
        loop {
            if *stop.borrow() {
                return false;
            }
            let outcome = {
                let mut stop = stop.clone();
                tokio::select! {
                    outcome = self.publish_once() => outcome,
                    _ = stop.changed() => return false,
                }
            };
            match outcome {
                Ok(duplicates) => {
                    if duplicates > 0 {
                        tracing::debug!(subject = %self.subject, duplicates, "the server already held some of the batch (a retry or replay)");
                    }
                    if stats.note_success() {
                        tracing::info!(stream = %self.config.stream, "nats publishes recovered");
                    }
                    return true;
                }
                Err(error) => {
                    stats.note_failure();
                    // A connection never made is tried again; one made reconnects by itself.
                    if matches!(
                        error,
                        NatsSinkError::Connect { .. } | NatsSinkError::Credentials { .. }
                    ) {
                        self.jetstream = None;
                    }
                    let delay = retry_delay(
                        self.config.retry_delay_min_ms,
                        self.config.retry_delay_max_ms,
                        attempt,
                    );
                    if last_log.is_none_or(|at| at.elapsed() >= log_every) {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, batch_events = batch.len(), "nats publish failed; the batch stays in the queue and is published again (its message ids dedupe it)");
                        last_log = Some(Instant::now());
                    }
                    attempt = attempt.saturating_add(1);
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return false,
                    }
                }
            }
        }
    }
}

impl super::Sink for NatsSink {
    fn write<'a>(
        &'a mut self,
        batch: &'a [Delivery],
        stats: &'a SinkStats,
        stop: &'a tokio::sync::watch::Receiver<bool>,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, super::SinkError>> {
        Box::pin(async move { Ok(NatsSink::write(self, batch, stats, stop).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<'a>(urls: &'a [String], auth: &'a NatsAuth) -> NatsKeys<'a> {
        NatsKeys {
            urls,
            stream: "firehose",
            subject_prefix: "firehose",
            replicas: 3,
            duplicate_window_secs: 120,
            ack_window_events: 1024,
            connect_timeout_ms: 5000,
            ack_timeout_ms: 5000,
            auth,
        }
    }

    #[test]
    fn a_secret_is_never_printed() {
        let secret = Secret::from("s3cret");
        assert_eq!(format!("{secret:?}"), "\"***\"");
        let auth = NatsAuth {
            password: secret.clone(),
            token: Secret::from("t0ken"),
            ..NatsAuth::default()
        };
        let printed = format!("{auth:?}");
        assert!(
            !printed.contains("s3cret") && !printed.contains("t0ken"),
            "{printed}"
        );
        assert_eq!(secret.expose(), "s3cret");
    }

    #[test]
    fn the_ack_window_is_refused_at_or_above_the_clients_inflight_limit() {
        let urls = vec!["nats://127.0.0.1:4222".to_string()];
        let auth = NatsAuth::default();
        let mut k = keys(&urls, &auth);
        assert!(check_keys(&k).is_ok());
        k.ack_window_events = ACK_WINDOW_EVENTS_MAX + 1;
        assert_eq!(
            check_keys(&k).map_err(|e| e.0),
            Err("nats_ack_window_events")
        );
        k.ack_window_events = 0;
        assert_eq!(
            check_keys(&k).map_err(|e| e.0),
            Err("nats_ack_window_events")
        );
    }

    #[test]
    fn two_kinds_of_credentials_are_refused() {
        let urls = vec!["nats://127.0.0.1:4222".to_string()];
        let auth = NatsAuth {
            token: Secret::from("t"),
            user: "u".into(),
            password: Secret::from("p"),
            ..NatsAuth::default()
        };
        let refused = check_keys(&keys(&urls, &auth)).expect_err("two kinds");
        assert_eq!(refused.0, "nats_token");
        let lone_user = NatsAuth {
            user: "u".into(),
            ..NatsAuth::default()
        };
        assert_eq!(
            check_keys(&keys(&urls, &lone_user)).map_err(|e| e.0),
            Err("nats_user")
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let urls = vec!["nats://u:s3cret@host:notaport".to_string()];
        let auth = NatsAuth::default();
        let (key, reason) = check_keys(&keys(&urls, &auth)).expect_err("bad url");
        assert_eq!(key, "nats_urls");
        assert!(!reason.contains("s3cret"), "{reason}");
    }

    #[test]
    fn a_relay_host_becomes_one_subject_token() {
        assert_eq!(subject_token("bsky.network"), "bsky_network");
        assert_eq!(subject_token("127.0.0.1_8443"), "127_0_0_1_8443");
        let sink = NatsSink::new(
            NatsSinkConfig::new(vec!["nats://h:1".into()]),
            "relay.example",
        );
        assert_eq!(sink.subject(), "firehose.relay_example");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{Config, ConfigError};

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| (format!("SPILLWAY_{k}"), v.to_string()));
        Config::load(None, env)
    }

    #[test]
    fn the_nats_keys_are_checked_and_name_the_key() {
        let refused = load(&[("SINK", "nats"), ("NATS_ACK_WINDOW_EVENTS", "5000")])
            .expect_err("a window past the client's limit");
        assert!(
            matches!(
                refused,
                ConfigError::Invalid {
                    key: "nats_ack_window_events",
                    ..
                }
            ),
            "{refused}"
        );
        assert!(load(&[("NATS_ACK_WINDOW_EVENTS", "4000")]).is_ok());
        let refused = load(&[("SINK", "nats"), ("NATS_REPLICAS", "7")]).expect_err("replicas");
        assert!(matches!(
            refused,
            ConfigError::Invalid {
                key: "nats_replicas",
                ..
            }
        ));
    }

    #[test]
    fn a_numeric_password_is_read_and_never_printed() {
        let config = load(&[
            ("SINK", "nats"),
            ("NATS_USER", "spillway"),
            ("NATS_PASSWORD", "918273645"),
        ])
        .expect("a password of digits is a password");
        assert_eq!(config.nats_auth().password.expose(), "918273645");
        let printed = format!("{config:?} {}", toml::to_string(&config).expect("toml"));
        assert!(!printed.contains("918273645"), "{printed}");
    }
}
