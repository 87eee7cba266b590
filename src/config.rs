//! The binary's configuration: a TOML file, then `SPILLWAY_<KEY>` environment overrides.
//!
//! Every key is optional; the defaults are safe (bounded memory and disk, durable cursors).
//! Unknown keys and out-of-range values are refused with the key named.
//!
//! The keys stay one flat table (their names and `SPILLWAY_<KEY>` forms are the
//! interface), but each component checks its own and owns its `--help` lines: the relay
//! source's in [`crate::source::firehose`], the sinks' in [`crate::sink::redis`] and
//! [`crate::sink::jsonl`], `/metrics` and `/health`'s in [`crate::metrics`]. This file
//! composes them, and checks what belongs to no single component (the budgets shared
//! between queues, the frame limit that queue, source and decoder share).

pub mod ingester_env;

use std::path::PathBuf;

use serde::Deserialize;

use crate::decode::{Filter, OutputFormat};
use crate::queue::{FullPolicy, QueueConfig, SpillMode};
use crate::sink::nats::{NatsAuth, NatsSinkConfig, Secret};
use crate::sink::redis::RedisSinkConfig;
use crate::sink::OutputOptions;
use crate::source::firehose::FirehoseConfig;
use crate::source::repo_listing::{RedisCursorKey as RepoListingCursorKey, RepoListingConfig};
use crate::source::EventFamily;
use crate::storage::{Backend, Durability};

/// Largest `repo_listing_page_bytes_max` accepted: a page is held whole while parsed.
pub const REPO_LISTING_PAGE_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

/// The sink kinds the `sink` and `sinks` keys accept (each served by an arm of [`crate::pipeline::kinds::sink`]).
pub const SINK_KINDS: &[&str] = &["redis", "nats", "jsonl"];

/// The `sink` key's default.
pub const DEFAULT_SINK: &str = "redis";

/// Smallest `segment_bytes_max` accepted: smaller segments would mostly be headers and file churn.
pub const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;

/// The whole configuration (see `spillway run --help` and the README for each key).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the queues and cursor files.
    pub data_dir: PathBuf,
    /// Relay URLs, one source task and queue each.
    pub relays: Vec<String>,
    /// Start cursor for every relay (default: the saved cursor, else live).
    pub start_cursor: Option<u64>,
    /// Labeler URLs (`subscribeLabels`), one source task and queue each; empty: none.
    pub labelers: Vec<String>,
    /// All event bytes in RAM, split evenly between relays.
    pub memory_budget_bytes: u64,
    /// Disk for the spill logs, split evenly between relays.
    pub disk_budget_bytes: u64,
    /// `every-batch`, `periodic:<ms>` or `manual`.
    pub durability: String,
    /// `block`, `drop_newest` or `drop_oldest`.
    pub full_policy: String,
    /// `memory-first` or `write-through`.
    pub spill_mode: String,
    /// Largest relay frame, in bytes.
    pub frame_bytes_max: u64,
    /// The one sink, when `sinks` is empty: one of [`SINK_KINDS`].
    pub sink: String,
    /// Several sinks on each queue, each reading with its own consumer (empty: the one `sink`).
    pub sinks: Vec<String>,
    /// What the sink writes: `raw`, `jetstream` or `rsky`.
    pub output_format: String,
    /// Collections to keep (`app.bsky.feed.post`, `app.bsky.feed.*`); empty keeps all
    /// (`rsky` then keeps `app.bsky.*` and `chat.bsky.*`, as the rsky ingester did).
    pub wanted_collections: Vec<String>,
    /// DIDs to keep; empty keeps all.
    pub wanted_dids: Vec<String>,
    /// The Redis URL.
    pub redis_url: String,
    /// The Redis stream.
    pub redis_stream: String,
    /// The Redis stream of labels (rsky's `label_live`).
    pub redis_label_stream: String,
    /// Pause writing at this XLEN (0: never).
    pub redis_high_water_events: u64,
    /// Resume below this XLEN.
    pub redis_low_water_events: u64,
    /// NATS server URLs (several for a cluster).
    pub nats_urls: Vec<String>,
    /// The JetStream stream.
    pub nats_stream: String,
    /// Subjects are `<prefix>.<relay host>`.
    pub nats_subject_prefix: String,
    /// Replicas of a stream the sink creates.
    pub nats_replicas: u64,
    /// Duplicate window of a stream the sink creates, in seconds.
    pub nats_duplicate_window_secs: u64,
    /// Publishes awaiting their ack, at most.
    pub nats_ack_window_events: u64,
    /// Connecting may take this long, in milliseconds.
    pub nats_connect_timeout_ms: u64,
    /// A publish ack may take this long, in milliseconds.
    pub nats_ack_timeout_ms: u64,
    /// A server token (never printed).
    pub nats_token: Secret,
    /// A user name, with `nats_password`.
    pub nats_user: String,
    /// The user's password (never printed).
    pub nats_password: Secret,
    /// A `.creds` file (empty: none).
    pub nats_creds_file: String,
    /// CA of the servers' certificates (empty: no TLS unless a `tls://` URL).
    pub nats_tls_ca_file: String,
    /// Client certificate (empty: none).
    pub nats_tls_cert_file: String,
    /// Client certificate key (empty: none).
    pub nats_tls_key_file: String,
    /// Entry IDs `<seq>-<n>` from the relay seq, so a retried or replayed batch adds no duplicate.
    pub redis_idempotent_ids: bool,
    /// Events per Redis `MULTI`/`EXEC` transaction at most.
    pub redis_multi_events_max: u64,
    /// Redis transactions sent before the first reply is read, at most.
    pub redis_transactions_in_flight_max: u64,
    /// PEM CA of the Redis server's certificate (`rediss://`; empty: Mozilla's roots).
    pub redis_tls_ca_file: String,
    /// PEM client certificate for `rediss://` (empty: none).
    pub redis_tls_cert_file: String,
    /// PEM private key of the client certificate (empty: none).
    pub redis_tls_key_file: String,
    /// `-` for stdout, or a file path.
    pub jsonl_path: String,
    /// Events per sink batch at most.
    pub sink_batch_events_max: u64,
    /// Payload bytes per sink batch, about.
    pub sink_batch_bytes_max: u64,
    /// A consumer lagging more events than this flips the backlog alert (0: off).
    pub backlog_alert_events: u64,
    /// Interval of giving freed heap pages back to the OS (0: never).
    pub heap_trim_interval_ms: u64,
    /// `text` or `json` logs on stderr.
    pub log_format: String,
    /// Log levels as `RUST_LOG` takes them (`info`, `spillway=debug,warn`); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Address of `/metrics` and `/health` (empty: off).
    pub metrics_listen: String,
    /// `/health` turns 503 when a sink has failed for longer than this, in seconds.
    pub health_sink_failure_secs: u64,
    /// `/health` turns 503 when the disk budget is used to this fraction (0 to 1].
    pub health_disk_full_ratio: f64,
    /// `/health` stays 503 this long after events were lost for good, in seconds.
    pub health_lost_events_secs: u64,
    /// Size at which a spill log segment file is sealed and a new one begun, in bytes.
    pub segment_bytes_max: u64,
    /// `listRepos` hosts to backfill from, one source and queue each (`https://host`,
    /// `http://host:port`, or a bare host name: `https://` implied).
    pub repo_listing_hosts: Vec<String>,
    /// Largest `listRepos` page accepted, in bytes.
    pub repo_listing_page_bytes_max: u64,
    /// The Redis stream of the listed repos (rsky's `repo_backfill`, field `repo`).
    pub redis_repo_stream: String,
    /// Space each queue keeps allocated (`<queue>/reserve`) and gives up so it can open and drain on a full disk, in bytes (0: none).
    pub disk_reserve_bytes: u64,
    /// Free space a spill must leave on the filesystem, in bytes; a batch that would not is refused like a full budget.
    pub disk_free_margin_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("spillway-data"),
            relays: vec!["wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos".into()],
            start_cursor: None,
            labelers: Vec::new(),
            memory_budget_bytes: 256 * 1024 * 1024,
            disk_budget_bytes: 20 * 1024 * 1024 * 1024,
            durability: "periodic:100".into(),
            full_policy: "block".into(),
            spill_mode: "memory-first".into(),
            frame_bytes_max: 4 * 1024 * 1024,
            sink: DEFAULT_SINK.into(),
            sinks: Vec::new(),
            output_format: "raw".into(),
            wanted_collections: Vec::new(),
            wanted_dids: Vec::new(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_stream: "firehose_live".into(),
            redis_label_stream: "label_live".into(),
            redis_high_water_events: 100_000,
            redis_low_water_events: 50_000,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            nats_stream: "firehose".into(),
            nats_subject_prefix: "firehose".into(),
            nats_replicas: 1,
            nats_duplicate_window_secs: 120,
            nats_ack_window_events: 1_024,
            nats_connect_timeout_ms: 5_000,
            nats_ack_timeout_ms: 5_000,
            nats_token: Secret::default(),
            nats_user: String::new(),
            nats_password: Secret::default(),
            nats_creds_file: String::new(),
            nats_tls_ca_file: String::new(),
            nats_tls_cert_file: String::new(),
            nats_tls_key_file: String::new(),
            redis_idempotent_ids: false,
            redis_multi_events_max: crate::sink::redis::MULTI_EVENTS_MAX_DEFAULT as u64,
            redis_transactions_in_flight_max: crate::sink::redis::TRANSACTIONS_IN_FLIGHT_MAX_DEFAULT
                as u64,
            redis_tls_ca_file: String::new(),
            redis_tls_cert_file: String::new(),
            redis_tls_key_file: String::new(),
            jsonl_path: "-".into(),
            sink_batch_events_max: 500,
            sink_batch_bytes_max: 4 * 1024 * 1024,
            backlog_alert_events: 0,
            heap_trim_interval_ms: crate::heap_trim::INTERVAL_MS_DEFAULT,
            log_format: "text".into(),
            log_level: "info".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            health_sink_failure_secs: 60,
            health_disk_full_ratio: 0.9,
            health_lost_events_secs: 3600,
            segment_bytes_max: 64 * 1024 * 1024,
            disk_reserve_bytes: 4 * 1024 * 1024,
            disk_free_margin_bytes: 1024 * 1024,
            repo_listing_hosts: Vec::new(),
            repo_listing_page_bytes_max: 8 * 1024 * 1024,
            redis_repo_stream: "repo_backfill".into(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML (after overrides) does not fit the keys and types.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or the environment.
        origin: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The rsky ingester's environment and a Spillway key disagree.
    #[error("{variable} (the rsky ingester's environment) sets {key} = {ingester_value}, but {key} is already {spillway_value} (config file or SPILLWAY_{upper}); set one of the two", upper = key.to_ascii_uppercase())]
    Conflict {
        /// The ingester's variable(s).
        variable: &'static str,
        /// The Spillway key.
        key: &'static str,
        /// The value the ingester's variables give (a URL's password hidden).
        ingester_value: String,
        /// The value the file or `SPILLWAY_*` gave (a URL's password hidden).
        spillway_value: String,
    },
    /// The queue refused its settings; its error names the field.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueConfigError),
    /// The spill log refused its settings; its error names the field.
    #[error(transparent)]
    Log(#[from] crate::storage::ConfigError),
}

/// The environment prefix of overrides: `SPILLWAY_MEMORY_BUDGET_BYTES=...`.
pub const ENV_PREFIX: &str = "SPILLWAY_";

impl Config {
    /// Reads `path` (if any), applies `SPILLWAY_*` overrides from `env`, then the rsky
    /// ingester's variables ([`ingester_env`]), and validates.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let ingester = ingester_env::mapped(&env)?;
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        origin: p.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if matches!(key, "CONFIG" | "LOG") {
                continue;
            }
            let key = key.to_ascii_lowercase();
            // Numbers, booleans and arrays parse as TOML; anything else is a string.
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"));
            table.insert(key, parsed.unwrap_or(toml::Value::String(value)));
        }
        ingester_env::apply(&mut table, ingester)?;
        // Whether `sink` was set at all (the ingester's variables imply `redis`): its
        // default cannot tell an explicit `sink = "redis"`.
        let sink_set = table.contains_key("sink");
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: path.map_or("environment".into(), |p| {
                        format!("{} + environment", p.display())
                    }),
                    message: e.to_string(),
                })?;
        config.check_sink_keys(sink_set)?;
        config.validate()?;
        Ok(config)
    }

    /// The configured sink kinds, in order: `sinks`, or the one `sink` when that is empty.
    pub fn sink_kinds(&self) -> Vec<&str> {
        if self.sinks.is_empty() {
            vec![self.sink.as_str()]
        } else {
            self.sinks.iter().map(String::as_str).collect()
        }
    }

    /// Checks `sink` and `sinks` together: known kinds, no kind twice, and not both keys
    /// set to different sinks (`sink_set`: `sink` was given, even at its default value).
    fn check_sink_keys(&self, sink_set: bool) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let expected = SINK_KINDS.join(", ");
        if !SINK_KINDS.contains(&self.sink.as_str()) {
            return invalid(
                "sink",
                format!("{:?}: expected one of {expected}", self.sink),
            );
        }
        for (index, kind) in self.sinks.iter().enumerate() {
            if !SINK_KINDS.contains(&kind.as_str()) {
                return invalid("sinks", format!("{kind:?}: expected one of {expected}"));
            }
            if self.sinks[..index].contains(kind) {
                return invalid(
                    "sinks",
                    format!("{kind:?} is listed twice: each sink kind reads its queue once"),
                );
            }
        }
        let differ = self.sinks.len() != 1 || self.sinks[0] != self.sink;
        if !self.sinks.is_empty() && differ && (sink_set || self.sink != DEFAULT_SINK) {
            return invalid(
                "sinks",
                format!(
                    "both sink ({:?}) and sinks ({:?}) are set and differ: keep sinks alone (sink = \"x\" is sinks = [\"x\"])",
                    self.sink, self.sinks
                ),
            );
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let component = |checked: Result<(), (&'static str, String)>| {
            checked.map_err(|(key, reason)| ConfigError::Invalid { key, reason })
        };
        component(crate::source::firehose::check_relays(&self.relays))?;
        component(crate::source::labeler::check_labelers(&self.labelers))?;
        if self.queue_count() == 0 {
            return invalid(
                "relays",
                "no source to run: at least one relay, labeler or repo listing host is needed"
                    .into(),
            );
        }
        component(crate::source::repo_listing::check_hosts(
            &self.repo_listing_hosts,
        ))?;
        if self.repo_listing_page_bytes_max == 0
            || self.repo_listing_page_bytes_max > REPO_LISTING_PAGE_BYTES_LIMIT
        {
            return invalid(
                "repo_listing_page_bytes_max",
                format!(
                    "{} is not in 1..={REPO_LISTING_PAGE_BYTES_LIMIT}",
                    self.repo_listing_page_bytes_max
                ),
            );
        }
        if self.redis_repo_stream.is_empty() {
            return invalid("redis_repo_stream", "must not be empty".into());
        }
        if !self.repo_listing_hosts.is_empty()
            && [&self.redis_stream, &self.redis_label_stream].contains(&&self.redis_repo_stream)
        {
            return invalid(
                "redis_repo_stream",
                format!(
                    "{:?} is also redis_stream or redis_label_stream: listed repos and other events, and their cursor keys, would mix in one stream",
                    self.redis_repo_stream
                ),
            );
        }
        if self.redis_label_stream.is_empty() {
            return invalid("redis_label_stream", "must not be empty".into());
        }
        if !self.labelers.is_empty() && self.redis_label_stream == self.redis_stream {
            return invalid(
                "redis_label_stream",
                format!(
                    "{:?} is also redis_stream: labels and firehose events, and their cursor keys, would mix in one stream",
                    self.redis_label_stream
                ),
            );
        }
        self.check_sink_keys(false)?;
        if let Err(reason) = OutputFormat::parse(&self.output_format) {
            return invalid("output_format", reason);
        }
        if let Err(reason) = Filter::new(&self.wanted_collections, &[]) {
            return invalid("wanted_collections", reason);
        }
        if let Err(reason) = Filter::new(&[], &self.wanted_dids) {
            return invalid("wanted_dids", reason);
        }
        component(crate::sink::redis::check_keys(
            &self.redis_url,
            &self.redis_stream,
            self.redis_high_water_events,
            self.redis_low_water_events,
        ))?;
        // Checked whichever sink runs, as the Redis keys are: a wrong key is wrong at once.
        {
            let auth = self.nats_auth();
            component(crate::sink::nats::check_keys(
                &crate::sink::nats::NatsKeys {
                    urls: &self.nats_urls,
                    stream: &self.nats_stream,
                    subject_prefix: &self.nats_subject_prefix,
                    replicas: self.nats_replicas,
                    duplicate_window_secs: self.nats_duplicate_window_secs,
                    ack_window_events: self.nats_ack_window_events,
                    connect_timeout_ms: self.nats_connect_timeout_ms,
                    ack_timeout_ms: self.nats_ack_timeout_ms,
                    auth: &auth,
                },
            ))?;
        }
        if self.redis_idempotent_ids
            && !self.repo_listing_hosts.is_empty()
            && self.sink_kinds().contains(&"redis")
        {
            return invalid(
                "redis_idempotent_ids",
                "repo listings (repo_listing_hosts) number their entries with a running ordinal, not a seq the host gave: another run may number them differently, so they cannot carry seq-derived IDs; turn it off or list repos in another spillway".into(),
            );
        }
        component(crate::sink::redis::check_more_keys(
            &crate::sink::redis::RedisKeyChecks {
                url: &self.redis_url,
                stream: &self.redis_stream,
                idempotent_ids: self.redis_idempotent_ids,
                // Every relay's events go to `redis_stream`, every labeler's to
                // `redis_label_stream` (`redis_stream_for`; the two streams differ).
                stream_writers: if self.sink_kinds().contains(&"redis") {
                    self.relays.len().max(self.labelers.len())
                } else {
                    0
                },
                multi_events_max: self.redis_multi_events_max,
                transactions_in_flight_max: self.redis_transactions_in_flight_max,
                tls_files: [
                    &self.redis_tls_ca_file,
                    &self.redis_tls_cert_file,
                    &self.redis_tls_key_file,
                ],
            },
        ))?;
        if self.sink_batch_events_max == 0 {
            return invalid("sink_batch_events_max", "must be greater than zero".into());
        }
        if self.sink_batch_bytes_max == 0 {
            return invalid("sink_batch_bytes_max", "must be greater than zero".into());
        }
        {
            use crate::heap_trim::{INTERVAL_MS_MAX, INTERVAL_MS_MIN};
            let interval = self.heap_trim_interval_ms;
            if interval != 0 && !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&interval) {
                return invalid(
                    "heap_trim_interval_ms",
                    format!("{interval} is neither 0 (off) nor in {INTERVAL_MS_MIN}..={INTERVAL_MS_MAX}"),
                );
            }
        }
        let frame_limit_bytes = u64::from(crate::storage::record::RECORD_BYTES_LIMIT)
            - crate::queue::envelope::ENVELOPE_BYTES as u64;
        if self.frame_bytes_max == 0 || self.frame_bytes_max > frame_limit_bytes {
            return invalid(
                "frame_bytes_max",
                format!(
                    "{} is not in 1..={frame_limit_bytes} (the spill log's record limit less the queue's envelope)",
                    self.frame_bytes_max
                ),
            );
        }
        let segment_bytes_min = SEGMENT_BYTES_MIN.max(self.frame_bytes_max.saturating_mul(2));
        if self.segment_bytes_max < segment_bytes_min {
            return invalid(
                "segment_bytes_max",
                format!(
                    "{} is below the minimum of {segment_bytes_min} bytes (1 MiB, and twice the frame size limit so a segment holds the largest frame)",
                    self.segment_bytes_max
                ),
            );
        }
        if self.disk_reserve_bytes > crate::storage::config::RESERVE_BYTES_MAX {
            return invalid(
                "disk_reserve_bytes",
                format!(
                    "{} is over the maximum of {} bytes",
                    self.disk_reserve_bytes,
                    crate::storage::config::RESERVE_BYTES_MAX
                ),
            );
        }
        if self.disk_budget_bytes > 0 && self.disk_free_margin_bytes > self.disk_budget_bytes {
            return invalid(
                "disk_free_margin_bytes",
                format!(
                    "{} is more than the whole disk budget",
                    self.disk_free_margin_bytes
                ),
            );
        }
        component(crate::sink::jsonl::check_path(&self.jsonl_path))?;
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid("log_level", format!("{:?}: {e}", self.log_level));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid(
                "log_format",
                format!("{:?}: expected text or json", self.log_format),
            );
        }
        component(crate::metrics::check_listen(&self.metrics_listen))?;
        component(self.health_rules().check())?;
        Durability::parse(&self.durability)?;
        FullPolicy::parse(&self.full_policy)?;
        if !matches!(self.spill_mode.as_str(), "memory-first" | "write-through") {
            return invalid(
                "spill_mode",
                format!(
                    "{:?}: expected memory-first or write-through",
                    self.spill_mode
                ),
            );
        }
        for family in [
            EventFamily::Firehose,
            EventFamily::Labels,
            EventFamily::RepoListing,
        ] {
            self.queue_config(family).validate()?;
        }
        Ok(())
    }

    /// How many queues the budgets are split between: one per relay, one per labeler and
    /// one per repo listing host, in [`crate::pipeline::kinds::sources`]' order.
    pub fn queue_count(&self) -> usize {
        self.relays.len() + self.labelers.len() + self.repo_listing_hosts.len()
    }

    /// The queue configuration of a source of `family`: an even share of the budgets
    /// between all queues. A repo listing's queue writes through (see
    /// [`crate::source::repo_listing`]).
    pub fn queue_config(&self, family: EventFamily) -> QueueConfig {
        let share = self.queue_count().max(1) as u64;
        let mut config = QueueConfig::new();
        config.memory_budget_bytes = self.memory_budget_bytes / share;
        config.log.backend = Backend::Segment;
        config.log.disk_budget_bytes = self.disk_budget_bytes / share;
        config.log.segment_bytes_max = self.segment_bytes_max;
        config.log.reserve_bytes = self.disk_reserve_bytes;
        config.log.disk_free_margin_bytes = self.disk_free_margin_bytes;
        config.log.durability =
            Durability::parse(&self.durability).unwrap_or(Durability::EveryBatch);
        config.log.record_bytes_max =
            u32::try_from(self.frame_bytes_max + crate::queue::envelope::ENVELOPE_BYTES as u64)
                .unwrap_or(u32::MAX)
                .min(crate::storage::record::RECORD_BYTES_LIMIT);
        config.full_policy = FullPolicy::parse(&self.full_policy).unwrap_or(FullPolicy::Block);
        config.spill_mode = if self.spill_mode == "write-through" {
            SpillMode::WriteThrough
        } else {
            SpillMode::MemoryFirst
        };
        config.backlog_alert_events = self.backlog_alert_events;
        if family == EventFamily::RepoListing {
            // A repo held only in memory holds back the durable watermark while the sink is
            // paused, and a restart would list again every page above it.
            config.spill_mode = SpillMode::WriteThrough;
        }
        config
    }

    /// The settings of repo listing host `index` (of `repo_listing_hosts`).
    pub fn repo_listing_config(&self, index: usize) -> RepoListingConfig {
        let given = &self.repo_listing_hosts[index];
        let base = crate::source::repo_listing::normalize_base_url(given)
            .unwrap_or_else(|_| given.clone());
        let mut config = RepoListingConfig::new(base);
        config.page_bytes_max =
            usize::try_from(self.repo_listing_page_bytes_max).unwrap_or(usize::MAX);
        if self.sink_kinds().contains(&"redis") {
            let family = EventFamily::RepoListing;
            config.redis_cursor = Some(RepoListingCursorKey {
                url: self.redis_url.clone(),
                url_redacted: crate::sink::redis::redact_url(&self.redis_url),
                key: format!("{}:cursor:{}", self.redis_stream_for(family), config.host()),
            });
        }
        config
    }

    /// The firehose settings of relay `index`.
    pub fn firehose_config(&self, index: usize) -> FirehoseConfig {
        let mut config = FirehoseConfig::new(self.relays[index].clone());
        config.start_cursor = self.start_cursor;
        config.frame_bytes_max = self.frame_bytes_max as usize;
        config.filter = self.filter().unwrap_or_default();
        config
    }

    /// The settings of labeler `index` (the frame limit shared; no filter: labels carry no collection).
    pub fn labeler_config(&self, index: usize) -> FirehoseConfig {
        let mut config = crate::source::labeler::labeler_config(self.labelers[index].clone());
        config.frame_bytes_max = self.frame_bytes_max as usize;
        config
    }

    /// The filter applied before the queue and again at output: the wanted collections
    /// and DIDs, with rsky's collections when that format is chosen without any.
    ///
    /// # Errors
    /// A malformed pattern or DID.
    pub fn filter(&self) -> Result<Filter, String> {
        let format = OutputFormat::parse(&self.output_format)?;
        Filter::for_format(format, &self.wanted_collections, &self.wanted_dids)
    }

    /// What the sink writes for events of `family`.
    pub fn output_options(&self, family: EventFamily) -> OutputOptions {
        OutputOptions {
            format: OutputFormat::parse(&self.output_format).unwrap_or(OutputFormat::Raw),
            filter: self.filter().unwrap_or_default(),
            frame_bytes_max: self.frame_bytes_max as usize,
            family,
        }
    }

    /// The Redis stream that events of `family` go to.
    pub fn redis_stream_for(&self, family: EventFamily) -> &str {
        match family {
            EventFamily::Firehose => &self.redis_stream,
            EventFamily::RepoListing => &self.redis_repo_stream,
            EventFamily::Labels => &self.redis_label_stream,
        }
    }

    /// The NATS stream that events of `family` go to.
    pub fn nats_stream_for(&self, family: EventFamily) -> &str {
        match family {
            // One stream: labels are told apart by subject (`nats_subject_family_for`).
            EventFamily::Firehose | EventFamily::Labels | EventFamily::RepoListing => {
                &self.nats_stream
            }
        }
    }

    /// The subject token between the prefix and the host for events of `family` (empty: none).
    pub fn nats_subject_family_for(&self, family: EventFamily) -> &'static str {
        match family {
            EventFamily::Firehose => "",
            EventFamily::Labels => "labels",
            EventFamily::RepoListing => "repos",
        }
    }

    /// The NATS credentials and TLS files (an empty path is none).
    pub fn nats_auth(&self) -> NatsAuth {
        let path = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
        NatsAuth {
            token: self.nats_token.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            creds_file: path(&self.nats_creds_file),
            tls_ca_file: path(&self.nats_tls_ca_file),
            tls_cert_file: path(&self.nats_tls_cert_file),
            tls_key_file: path(&self.nats_tls_key_file),
        }
    }

    /// The NATS sink settings for events of `family`.
    pub fn nats_config(&self, family: EventFamily) -> NatsSinkConfig {
        let mut config = NatsSinkConfig::new(self.nats_urls.clone());
        config.stream = self.nats_stream_for(family).to_string();
        config.subject_prefix = self.nats_subject_prefix.clone();
        config.subject_family = self.nats_subject_family_for(family).to_string();
        // A repo listing's positions are a running ordinal another run may number
        // differently: an id from them could drop a different entry as a duplicate.
        config.message_ids = !matches!(family, EventFamily::RepoListing);
        config.replicas = self.nats_replicas as usize;
        config.duplicate_window_secs = self.nats_duplicate_window_secs;
        config.ack_window_events = self.nats_ack_window_events as usize;
        config.connect_timeout_ms = self.nats_connect_timeout_ms;
        config.ack_timeout_ms = self.nats_ack_timeout_ms;
        config.auth = self.nats_auth();
        config.output = self.output_options(family);
        config
    }

    /// When `/health` turns 503.
    pub fn health_rules(&self) -> crate::metrics::HealthRules {
        crate::metrics::HealthRules {
            disk_full_ratio: self.health_disk_full_ratio,
            sink_failure_secs: self.health_sink_failure_secs,
            lost_events_secs: self.health_lost_events_secs,
        }
    }

    /// The Redis sink settings for events of `family`.
    pub fn redis_config(&self, family: EventFamily) -> RedisSinkConfig {
        let mut config = RedisSinkConfig::new(self.redis_url.clone());
        let stream = self.redis_stream_for(family);
        config.stream = stream.to_string();
        config.cursor_key_prefix = format!("{stream}:cursor:");
        config.high_water_events = self.redis_high_water_events;
        config.low_water_events = self.redis_low_water_events;
        config.output = self.output_options(family);
        config.idempotent_ids = self.redis_idempotent_ids;
        config.multi_events_max = self.redis_multi_events_max as usize;
        config.transactions_in_flight_max = self.redis_transactions_in_flight_max as usize;
        let file = |path: &str| (!path.is_empty()).then(|| std::path::PathBuf::from(path));
        config.tls = crate::sink::redis::RedisTlsFiles {
            ca_file: file(&self.redis_tls_ca_file),
            cert_file: file(&self.redis_tls_cert_file),
            key_file: file(&self.redis_tls_key_file),
        };
        config
    }
}

/// `spillway run --help`'s list of keys: this file's, composed with each component's own
/// lines (the source's, the sinks', the metrics'), in the order the file lists the keys.
pub fn help() -> String {
    [
        "Configuration keys (TOML file or SPILLWAY_<KEY> in the environment; units in the names):
  data_dir = \"spillway-data\"          queues, relay cursors and the lock (one run per directory)
",
        crate::source::firehose::CONFIG_HELP,
        crate::source::labeler::CONFIG_HELP,
        "  memory_budget_bytes = 268435456       all event bytes in RAM, split evenly between queues (relays, labelers)
  disk_budget_bytes = 21474836480       spill logs on disk, split evenly between queues
  durability = \"periodic:100\"          every-batch | periodic:<ms> | manual
  full_policy = \"block\"                block | drop_newest | drop_oldest (when the disk budget is full)
  spill_mode = \"memory-first\"          memory-first | write-through
  frame_bytes_max = 4194304             larger relay frames are dropped and logged
  sink = \"redis\"                       redis | nats | jsonl
  sinks = []                            several sinks on each queue, each its own consumer ([\"redis\", \"nats\"]); empty: the one sink
  output_format = \"raw\"                raw (fields seq, type, did, frame) | jetstream | rsky (decoded JSON; Redis field `event`)
  wanted_collections = []               keep only these (app.bsky.feed.post, app.bsky.feed.*); rsky defaults to app.bsky.*, chat.bsky.*
  wanted_dids = []                      keep only these DIDs
",
        crate::sink::redis::CONFIG_HELP,
        crate::sink::nats::CONFIG_HELP,
        crate::source::repo_listing::CONFIG_HELP,
        crate::sink::jsonl::CONFIG_HELP,
        "  sink_batch_events_max = 500           events per sink batch
  sink_batch_bytes_max = 4194304        bytes per sink batch, about
  backlog_alert_events = 0              lag that flips the backlog alert (0: off)
  heap_trim_interval_ms = 100           give freed heap pages back to the OS this often (glibc; 0: never)
  log_format = \"text\"                   text | json
  log_level = \"info\"                    levels as RUST_LOG takes them (spillway=debug,warn); RUST_LOG wins
",
        crate::metrics::CONFIG_HELP,
        "  segment_bytes_max = 67108864          spill log segment file size (at least 1 MiB and 2 x frame_bytes_max)
  disk_reserve_bytes = 4194304          kept allocated per queue, given up to open and drain on a full disk (0: none)
  disk_free_margin_bytes = 1048576      free space a spill leaves on the filesystem; past it the producer blocks
",
        ingester_env::HELP,
    ]
    .concat()
}
