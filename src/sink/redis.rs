//! The Redis stream sink: one `MULTI`/`EXEC` round trip per batch (an `XADD` per event
//! with fields `seq`, `type`, `did`, `frame`, or with the decoded JSON in field `event`,
//! plus the host's cursor key), then the ack.
//!
//! Backpressure as the story's ingester meant it, done right: when `XLEN` reaches the
//! high-water mark the sink stops writing and polls until it falls below the low-water
//! mark, **holding the batch in hand** (the original dropped it). Events keep spilling
//! to disk meanwhile. A Redis that is down or failing is retried with bounded
//! exponential backoff; events stay in the queue; one log line per interval says so.
//!
//! A Redis with `requirepass` that refuses us says so in the error ("authentication
//! required by HOST:PORT", "authentication failed for HOST:PORT"), and the URL is
//! printed with its password replaced by `***` everywhere (see [`redact_url`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::{now_ms, retry_delay, EventFields, OutputOptions, SinkStats};
use crate::queue::Delivery;

/// The Redis sink's settings.
#[derive(Debug, Clone)]
pub struct RedisSinkConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// The stream written to.
    pub stream: String,
    /// The key holding the last seq written, `{cursor_key_prefix}{host}`.
    pub cursor_key_prefix: String,
    /// Stop writing at this `XLEN` (0: no backpressure).
    pub high_water_events: u64,
    /// Resume below this `XLEN`.
    pub low_water_events: u64,
    /// Interval between `XLEN` polls while paused.
    pub backpressure_poll_ms: u64,
    /// First retry delay after a failure, doubled up to the max.
    pub retry_delay_min_ms: u64,
    /// Longest retry delay.
    pub retry_delay_max_ms: u64,
    /// One round trip may take this long before it counts as failed.
    pub command_timeout_ms: u64,
    /// Interval between repeated log lines about the same outage or pause.
    pub log_interval_ms: u64,
    /// `raw` frames (fields `seq`, `type`, `did`, `frame`), or decoded JSON in field `event`.
    pub output: OutputOptions,
}

impl RedisSinkConfig {
    /// Defaults for `url`: stream `firehose_live`, high/low water 100,000 / 50,000.
    pub fn new(url: impl Into<String>) -> Self {
        RedisSinkConfig {
            url: url.into(),
            stream: "firehose_live".into(),
            cursor_key_prefix: "firehose_live:cursor:".into(),
            high_water_events: 100_000,
            low_water_events: 50_000,
            backpressure_poll_ms: 200,
            retry_delay_min_ms: 100,
            retry_delay_max_ms: 10_000,
            command_timeout_ms: 10_000,
            log_interval_ms: 10_000,
            output: OutputOptions::default(),
        }
    }
}

/// Its lines of `spillway run --help`: the keys of the Redis sink.
pub const CONFIG_HELP: &str = "  redis_url = \"redis://127.0.0.1:6379\"  redis://:PASSWORD@host:port/db; printed as redis://:***@...
  redis_stream = \"firehose_live\"       cursor key: <stream>:cursor:<host>
  redis_high_water_events = 100000      pause writing at this XLEN (0: never)
  redis_low_water_events = 50000        resume below it
";

/// Checks the Redis sink's keys: the low-water mark below the high-water mark (when
/// there is one), a stream name, and a URL the client can parse (printed redacted).
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_keys(
    url: &str,
    stream: &str,
    high_water_events: u64,
    low_water_events: u64,
) -> Result<(), (&'static str, String)> {
    if high_water_events > 0 && low_water_events >= high_water_events {
        return Err((
            "redis_low_water_events",
            format!(
                "{low_water_events} must be below redis_high_water_events ({high_water_events})"
            ),
        ));
    }
    if stream.is_empty() {
        return Err(("redis_stream", "must not be empty".into()));
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
        return Err((
            "redis_url",
            format!(
                "{}: {e} (expected redis://[user:password@]host:port[/db])",
                redact_url(url)
            ),
        ));
    }
    Ok(())
}

/// `url` with any password replaced by `***` (`redis://user:***@host:port/db`), for
/// every log line, error and report: the only form of a Redis URL that may be printed.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let prefix = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    // The last `@` ends the user info: a password may hold an unescaped `@` or `/`, and
    // taking too much as user info only hides more.
    let (userinfo, location) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let userinfo = userinfo.map(|info| match info.split_once(':') {
        Some((user, _password)) => format!("{user}:***@"),
        // A lone user info is a user name by the URL rules, but people write passwords there.
        None => "***@".to_string(),
    });
    let location = match location.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if matches!(key, "password" | "pass") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => location.to_string(),
    };
    format!("{prefix}{}{location}", userinfo.unwrap_or_default())
}

/// A Redis error in words, with authentication refusals named as such for `address`.
fn describe(error: &redis::RedisError, address: &str) -> String {
    // A refusal inside a MULTI/EXEC reply carries no top-level code: its text still does.
    let text = error.to_string();
    let code_is = |code: &str| error.code() == Some(code) || text.contains(code);
    if error.kind() == redis::ErrorKind::AuthenticationFailed || code_is("WRONGPASS") {
        return format!(
            "authentication failed for {address}: the server refused the user name or password in redis_url"
        );
    }
    if code_is("NOAUTH") {
        return format!(
            "authentication required by {address}: the server has a password and redis_url gives none (redis://:PASSWORD@host:port)"
        );
    }
    text
}

/// The sink.
pub struct RedisSink {
    config: RedisSinkConfig,
    /// The URL as it may be printed: see [`redact_url`].
    url_redacted: String,
    /// `host:port` of the server.
    address: String,
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    host: String,
    /// The batch in hand rendered in a decoded format, once, before its first attempt.
    lines: Vec<String>,
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
}

impl RedisSink {
    /// Creates the sink for events of relay `host` (the URL is checked, no connection yet).
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(config: RedisSinkConfig, host: &str) -> Result<Self, RedisSinkError> {
        let url_redacted = redact_url(&config.url);
        let client =
            redis::Client::open(config.url.as_str()).map_err(|source| RedisSinkError::Redis {
                url: url_redacted.clone(),
                what: "parsing the URL",
                reason: source.to_string(),
                source,
            })?;
        let address = client.get_connection_info().addr().to_string();
        Ok(RedisSink {
            config,
            url_redacted,
            address,
            client,
            connection: None,
            host: host.to_string(),
            lines: Vec::new(),
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

    async fn connection(&mut self) -> Result<MultiplexedConnection, RedisSinkError> {
        if let Some(c) = &self.connection {
            return Ok(c.clone());
        }
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        let connected =
            tokio::time::timeout(timeout, self.client.get_multiplexed_async_connection()).await;
        let mut connection = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.redis_error("connecting", e)),
            Err(_) => return Err(self.timed_out("connecting")),
        };
        // A server with a password answers NOAUTH to a client that gave none, and closes
        // its connection on a large unauthenticated write ("broken pipe"): ask once, first.
        match tokio::time::timeout(
            timeout,
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(self.redis_error("connecting", e)),
            Err(_) => return Err(self.timed_out("connecting: PING")),
        }
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn xlen(&mut self) -> Result<u64, RedisSinkError> {
        let mut c = self.connection().await?;
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        match tokio::time::timeout(
            timeout,
            redis::cmd("XLEN")
                .arg(&self.config.stream)
                .query_async::<u64>(&mut c),
        )
        .await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.redis_error("XLEN", e)),
            Err(_) => Err(self.timed_out("XLEN")),
        }
    }

    async fn write_once(&mut self, batch: &[Delivery]) -> Result<(), RedisSinkError> {
        let mut c = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if self.config.output.writes_raw_frames() {
            for delivery in batch {
                let fields = EventFields::of(delivery);
                pipe.cmd("XADD")
                    .arg(&self.config.stream)
                    .arg("*")
                    .arg("seq")
                    .arg(fields.seq)
                    .arg("type")
                    .arg(&fields.kind)
                    .arg("did")
                    .arg(&fields.did)
                    .arg("frame")
                    .arg(&delivery.payload[..])
                    .ignore();
            }
        } else {
            for line in &self.lines {
                pipe.cmd("XADD")
                    .arg(&self.config.stream)
                    .arg("*")
                    .arg(self.config.output.entry_field())
                    .arg(line)
                    .ignore();
            }
        }
        if let Some(cursor) = self.config.output.cursor_value(batch) {
            pipe.cmd("SET")
                .arg(format!("{}{}", self.config.cursor_key_prefix, self.host))
                .arg(cursor)
                .ignore();
        }
        let timeout = Duration::from_millis(self.config.command_timeout_ms);
        match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut c)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.redis_error("MULTI/EXEC of XADDs", e)),
            Err(_) => Err(self.timed_out("MULTI/EXEC of XADDs")),
        }
    }

    /// Writes the batch, waiting out backpressure and retrying failures until it is written
    /// or `stop` says so; returns false if stopped before writing (the batch is then not acked).
    pub async fn write(
        &mut self,
        batch: &[Delivery],
        stats: &SinkStats,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let mut attempt = 0u32;
        let mut last_log: Option<Instant> = None;
        let log_every = Duration::from_millis(self.config.log_interval_ms);
        if !self.config.output.writes_raw_frames() {
            let mut lines = std::mem::take(&mut self.lines);
            self.config.output.render_batch(batch, stats, &mut lines);
            self.lines = lines;
        }
        loop {
            if *stop.borrow() {
                return false;
            }
            let outcome = match self.wait_below_high_water(stats, stop).await {
                Ok(true) => self.write_once(batch).await,
                Ok(false) => return false,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    if stats.failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!(stream = %self.config.stream, "redis writes recovered");
                    }
                    return true;
                }
                Err(error) => {
                    stats.failures_total.fetch_add(1, Ordering::Relaxed);
                    let _ = stats.failing_since_ms.compare_exchange(
                        0,
                        now_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    // A broken connection is rebuilt on the next attempt.
                    self.connection = None;
                    let delay = retry_delay(
                        self.config.retry_delay_min_ms,
                        self.config.retry_delay_max_ms,
                        attempt,
                    );
                    if last_log.is_none_or(|at| at.elapsed() >= log_every) {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, batch_events = batch.len(), "redis write failed; the batch stays in the queue and is retried");
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
        Box::pin(async move { Ok(RedisSink::write(self, batch, stats, stop).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_redis_url_is_printed_without_its_password() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "redis://app:s3cret@host:6379/1",
                "redis://app:***@host:6379/1",
            ),
            (
                "rediss://app:s3@c/r:et@host:6380",
                "rediss://app:***@host:6380",
            ),
            ("redis://s3cret@host:6379", "redis://***@host:6379"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
        ];
        for (url, printed) in cases {
            let redacted = redact_url(url);
            assert_eq!(redacted, printed, "{url}");
            assert!(!redacted.contains("s3"), "{redacted}");
        }
    }
}
