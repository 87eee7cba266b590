//! The Redis sink's settings: its configuration, the checks of its keys, and the one
//! printable form of a Redis URL.

use std::path::PathBuf;

use crate::sink::OutputOptions;

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
    /// Entry IDs `<seq>-<n>` from the relay seq, so a retried batch adds no duplicate.
    pub idempotent_ids: bool,
    /// Events in one `MULTI`/`EXEC` transaction at most.
    pub multi_events_max: usize,
    /// Transactions sent before the reply of the first is read, at most (1: one at a time).
    pub transactions_in_flight_max: usize,
    /// Certificates for `rediss://` URLs.
    pub tls: RedisTlsFiles,
}

/// PEM files for TLS (`rediss://`): each `None` when its key is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// The CA that signed the server's certificate (`redis_tls_ca_file`); `None` trusts Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain (`redis_tls_cert_file`), for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    /// Its private key (`redis_tls_key_file`).
    pub key_file: Option<PathBuf>,
}

impl RedisTlsFiles {
    /// True when no file is named.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
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
            idempotent_ids: false,
            multi_events_max: MULTI_EVENTS_MAX_DEFAULT,
            transactions_in_flight_max: TRANSACTIONS_IN_FLIGHT_MAX_DEFAULT,
            tls: RedisTlsFiles::default(),
        }
    }
}

/// Default of `redis_multi_events_max`: half the default sink batch, so a batch is two transactions in flight.
pub const MULTI_EVENTS_MAX_DEFAULT: usize = 250;
/// Largest `redis_multi_events_max` accepted: one transaction's reply is held whole in memory.
pub const MULTI_EVENTS_MAX_LIMIT: u64 = 100_000;
/// Default of `redis_transactions_in_flight_max`.
pub const TRANSACTIONS_IN_FLIGHT_MAX_DEFAULT: usize = 4;
/// Largest `redis_transactions_in_flight_max` accepted.
pub const TRANSACTIONS_IN_FLIGHT_MAX_LIMIT: u64 = 64;

/// Its lines of `spillway run --help`: the keys of the Redis sink.
pub const CONFIG_HELP: &str = "  redis_url = \"redis://127.0.0.1:6379\"  redis[s]://[user:]PASSWORD@host:port/db (rediss: TLS); printed as redis://user:***@...;
                                        several comma-separated: a Redis Cluster (redis_stream then needs a {hash tag})
  redis_stream = \"firehose_live\"       cursor key: <stream>:cursor:<host>
  redis_high_water_events = 100000      pause writing at this XLEN (0: never)
  redis_low_water_events = 50000        resume below it
  redis_idempotent_ids = false          entry IDs <seq>-<n>: a retried or replayed batch adds no duplicate.
                                        Costs: IDs no longer map to time (no XTRIM MINID / XRANGE by time;
                                        trim by MAXLEN), one relay per stream, a stream never written without it
  redis_multi_events_max = 250          events per MULTI/EXEC transaction
  redis_transactions_in_flight_max = 4  transactions sent before the first reply is read (1: one at a time);
                                        without idempotent IDs a retry after a lost reply may duplicate them all
  redis_tls_ca_file = \"\"                PEM CA of the server's certificate for rediss:// (empty: Mozilla's roots)
  redis_tls_cert_file = \"\"              PEM client certificate for rediss:// (with redis_tls_key_file)
  redis_tls_key_file = \"\"               PEM private key of redis_tls_cert_file
";

/// The Redis keys beyond the URL, stream and water marks, for [`check_more_keys`].
#[derive(Debug, Clone, Copy)]
pub struct RedisKeyChecks<'a> {
    /// `redis_url`.
    pub url: &'a str,
    /// `redis_stream`.
    pub stream: &'a str,
    /// `redis_idempotent_ids`.
    pub idempotent_ids: bool,
    /// How many sources write the stream (`relays` into `redis_stream`).
    pub stream_writers: usize,
    /// `redis_multi_events_max`.
    pub multi_events_max: u64,
    /// `redis_transactions_in_flight_max`.
    pub transactions_in_flight_max: u64,
    /// `redis_tls_ca_file`, `redis_tls_cert_file`, `redis_tls_key_file` (empty: none).
    pub tls_files: [&'a str; 3],
}

/// Checks the transaction bounds, that idempotent IDs are safe (one relay into the
/// stream), and that TLS files go with a `rediss://` URL (a certificate with its key).
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_more_keys(keys: &RedisKeyChecks<'_>) -> Result<(), (&'static str, String)> {
    if keys.multi_events_max == 0 || keys.multi_events_max > MULTI_EVENTS_MAX_LIMIT {
        return Err((
            "redis_multi_events_max",
            format!(
                "{} is not in 1..={MULTI_EVENTS_MAX_LIMIT}",
                keys.multi_events_max
            ),
        ));
    }
    if keys.transactions_in_flight_max == 0
        || keys.transactions_in_flight_max > TRANSACTIONS_IN_FLIGHT_MAX_LIMIT
    {
        return Err((
            "redis_transactions_in_flight_max",
            format!(
                "{} is not in 1..={TRANSACTIONS_IN_FLIGHT_MAX_LIMIT}",
                keys.transactions_in_flight_max
            ),
        ));
    }
    if seed_urls(keys.url).len() > 1 && !has_hash_tag(keys.stream) {
        return Err((
            "redis_stream",
            format!(
                "{:?} has no hash tag: on a Redis Cluster (several URLs) the stream and its cursor key must share a slot for MULTI/EXEC; name it {{{}}}",
                keys.stream, keys.stream
            ),
        ));
    }
    if keys.idempotent_ids && keys.stream_writers > 1 {
        return Err((
            "redis_idempotent_ids",
            format!(
                "{} sources (relays, or labelers) would write one stream with seq-derived IDs, and their seqs would collide or interleave (an entry of one refused as already written by another): run one source per spillway with its own stream, or turn it off",
                keys.stream_writers
            ),
        ));
    }
    let [ca, cert, key] = keys.tls_files;
    let tls = keys.url.starts_with("rediss://");
    for (name, value) in [
        ("redis_tls_ca_file", ca),
        ("redis_tls_cert_file", cert),
        ("redis_tls_key_file", key),
    ] {
        if !value.is_empty() && !tls {
            return Err((
                name,
                format!(
                    "{value}: TLS files need a rediss:// URL, not {}",
                    redact_url(keys.url)
                ),
            ));
        }
    }
    if cert.is_empty() != key.is_empty() {
        return Err((
            if cert.is_empty() {
                "redis_tls_cert_file"
            } else {
                "redis_tls_key_file"
            },
            if cert.is_empty() {
                "a private key needs its client certificate file too".into()
            } else {
                "a client certificate needs its private key file too".into()
            },
        ));
    }
    Ok(())
}

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
    for seed in seed_urls(url) {
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(seed) {
            return Err((
                "redis_url",
                format!(
                    "{}: {e} (expected redis[s]://[user:password@]host:port[/db], several comma-separated for a Redis Cluster)",
                    redact_url(seed)
                ),
            ));
        }
    }
    Ok(())
}

/// `url` with any password replaced by `***` (`redis://user:***@host:port/db`), for
/// every log line, error and report: the only form of a Redis URL that may be printed.
/// Each seed of a cluster's comma-separated URLs is redacted on its own.
pub fn redact_url(url: &str) -> String {
    seed_urls(url)
        .into_iter()
        .map(redact_one_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one_url(url: &str) -> String {
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

/// The seed URLs of a `redis_url`: several, comma-separated, for a Redis Cluster. A comma
/// only separates where the next URL begins, so a password may hold commas.
pub fn seed_urls(url: &str) -> Vec<&str> {
    let mut seeds = Vec::new();
    let mut rest = url;
    loop {
        let next = ["redis://", "rediss://"]
            .iter()
            .filter_map(|scheme| rest[1..].find(&format!(",{scheme}")).map(|at| at + 1))
            .min();
        match next {
            Some(at) => {
                seeds.push(&rest[..at]);
                rest = &rest[at + 1..];
            }
            None => {
                seeds.push(rest);
                return seeds;
            }
        }
    }
}

/// True when the stream name has a hash tag (`{...}` with something inside), so keys
/// made by appending to it share its cluster slot.
pub(super) fn has_hash_tag(stream: &str) -> bool {
    stream
        .find('{')
        .and_then(|open| stream[open + 1..].find('}'))
        .is_some_and(|length| length > 0)
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
                "redis://app:s3,cret@a:7000,rediss://app:s3cret@b:7001",
                "redis://app:***@a:7000,rediss://app:***@b:7001",
            ),
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
