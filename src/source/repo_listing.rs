//! The repo backfill as a member of the [`Source`](crate::source::Source) family: the pages
//! of `com.atproto.sync.listRepos` from one host, each repo one queue event, written by the
//! sink as the rsky ingester's `BackfillEvent` in stream `repo_backfill`, field `repo`.
//!
//! # What it promises
//!
//! - **The cursor key moves only past what is written.** rsky's ingester SETs
//!   `repo_backfill:cursor:<host>` as soon as a page is listed, before its repos reach
//!   Redis, so a crash skips them. Here the last repo of each page carries that page's
//!   next cursor in its payload, and the Redis sink SETs the key in the same `MULTI`/`EXEC`
//!   as the batch that holds it ([`cursor_of`]); the end of the listing is a marker event
//!   that writes no entry and sets `!ingester-done`.
//! - **A restart neither re-lists from the start nor skips.** Every event's position is a
//!   running ordinal (1, 2, ...). The source saves, in its position file
//!   (`listing-repos-<host>` in the data directory), the ordinal of the last repo of the
//!   newest page whose events are all at or below the queue's durable watermark, and that
//!   page's next cursor. A restart lists from that cursor and tells the queue to replay
//!   from that ordinal ([`SpillQueue::begin_replay`]), so the stored copies of the pages
//!   listed again are skipped: what comes twice is at most what was in flight (written to
//!   Redis but not yet acked, or pushed after the last checkpoint and written before the kill).
//! - **The queue writes through.** The configuration gives these queues
//!   [`SpillMode::WriteThrough`](crate::queue::SpillMode::WriteThrough): a repo held only
//!   in memory would hold the watermark back while Redis is stalled, and a restart would
//!   list again everything above it (a page is a round trip to the host; a network holds
//!   tens of millions of repos).
//! - **`!ingester-done` ends it, as for rsky.** At start the source reads the Redis cursor
//!   key (when the sink is Redis): `!ingester-done` means a listing finished and was
//!   written, so it lists nothing. A position file that says done does the same.
//!   Without a position file, a cursor in that key (left by rsky's ingester, or by a data
//!   directory that was lost) is where the listing resumes.
//!
//! # Differences from the ingester's entries
//!
//! `host` is the base URL's scheme and authority: `https://<host>` for a bare host name, as
//! rsky writes it; a host configured as `http://...` (a loopback test server) keeps
//! `http://`, where rsky would write `https://` whatever it was given.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{SourceError, SourceStats};
use crate::queue::{Event, SpillQueue};

/// The cursor value rsky's ingester sets when a listing is complete.
pub const DONE_CURSOR: &str = "!ingester-done";

/// The XRPC path of the listing.
pub const LIST_REPOS_PATH: &str = "/xrpc/com.atproto.sync.listRepos";

/// Its lines of `spillway run --help`: the keys of the repo listing source.
pub const CONFIG_HELP: &str = "  repo_listing_hosts = []               listRepos backfill, one source + queue each (https://host, http://host:port, or a bare host: https)
  repo_listing_page_bytes_max = 8388608 largest listRepos page accepted; a larger one is an error naming the host (retried)
  redis_repo_stream = \"repo_backfill\"  its stream (field `repo`); cursor key <stream>:cursor:<host>
";

/// The repo listing's settings, every bound explicit.
#[derive(Debug, Clone)]
pub struct RepoListingConfig {
    /// `https://HOST[:PORT]` or `http://HOST[:PORT]` (see [`normalize_base_url`]).
    pub base_url: String,
    /// Repos asked per page (`limit`; rsky asks 1000, the lexicon's maximum).
    pub page_repos_max: u32,
    /// Largest response body accepted, in bytes.
    pub page_bytes_max: usize,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout_ms: u64,
    /// Longest wait for one response, head and body.
    pub read_timeout_ms: u64,
    /// First delay after a failed page, doubled per failure up to the max.
    pub retry_delay_min_ms: u64,
    /// Longest delay between attempts.
    pub retry_delay_max_ms: u64,
    /// Longest `Retry-After` honoured; a longer one waits this long.
    pub retry_after_max_ms: u64,
    /// Interval between checkpoints (the position file).
    pub checkpoint_interval_ms: u64,
    /// Interval between progress log lines.
    pub progress_interval_ms: u64,
    /// Where the sink's cursor key is, when the sink is Redis: read at start.
    pub redis_cursor: Option<RedisCursorKey>,
}

/// The Redis key rsky keeps the listing cursor in.
#[derive(Debug, Clone)]
pub struct RedisCursorKey {
    /// `redis://...` (printed redacted).
    pub url: String,
    /// `repo_backfill:cursor:<host>`.
    pub key: String,
}

impl RepoListingConfig {
    /// Defaults for `base_url` (already normalized).
    pub fn new(base_url: impl Into<String>) -> Self {
        RepoListingConfig {
            base_url: base_url.into(),
            page_repos_max: 1000,
            page_bytes_max: 8 << 20,
            connect_timeout_ms: 10_000,
            read_timeout_ms: 30_000,
            retry_delay_min_ms: 250,
            retry_delay_max_ms: 30_000,
            retry_after_max_ms: 60_000,
            checkpoint_interval_ms: 250,
            progress_interval_ms: 5_000,
            redis_cursor: None,
        }
    }

    /// `host[:port]`: the label of its logs and metrics, and its Redis cursor key's suffix.
    pub fn host(&self) -> String {
        authority(&self.base_url).to_string()
    }

    /// The file-name part of its queue directory and position file: `repos-<host>`, so a
    /// relay on the same host keeps its own.
    pub fn file_name(&self) -> String {
        format!("repos-{}", super::cursor::file_safe(&self.host()))
    }

    /// The `host` field of its entries: the base URL's scheme and authority.
    pub fn host_field(&self) -> String {
        self.base_url.clone()
    }
}

fn authority(base_url: &str) -> &str {
    base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest)
}

/// `text` as a base URL: `https://` implied for a bare host, a trailing `/` dropped.
///
/// # Errors
/// A scheme other than `http`/`https`, credentials, a path, a query, or no host, in words.
pub fn normalize_base_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (scheme, rest.trim_end_matches('/')),
        None => ("https", trimmed.trim_end_matches('/')),
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!(
            "{text:?}: expected https://HOST, http://HOST[:PORT] or a bare host name"
        ));
    }
    if rest.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "{text:?}: give the host only; the path {LIST_REPOS_PATH} is implied"
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "{text:?}: credentials in the URL are not supported"
        ));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Checks the `repo_listing_hosts` key: each a base URL, no two sharing a queue directory.
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_hosts(hosts: &[String]) -> Result<(), (&'static str, String)> {
    let mut names = std::collections::BTreeMap::new();
    for host in hosts {
        let base = normalize_base_url(host).map_err(|reason| ("repo_listing_hosts", reason))?;
        let name = RepoListingConfig::new(base).file_name();
        if let Some(other) = names.insert(name.clone(), host) {
            return Err((
                "repo_listing_hosts",
                format!("{other:?} and {host:?} would share the queue directory queue-{name}"),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The queue payload.

/// A repo's entry (the rendered JSON follows the tag).
const TAG_REPO: u8 = b'r';
/// A page's last repo: `u32` LE length of the JSON, the JSON, then the page's next cursor.
const TAG_REPO_ENDING_PAGE: u8 = b'p';
/// No entry, only a cursor for the key: a page without repos, or [`DONE_CURSOR`].
const TAG_CURSOR: u8 = b'c';

/// One queue event of the listing, as the sink reads it.
///
/// The payload layout is persisted in spill logs: do not change a tag's layout; add a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingEvent<'a> {
    /// A repo: its rendered entry, and the cursor key's new value when it ends a page.
    Repo {
        /// The `BackfillEvent` JSON line.
        json: &'a str,
        /// The page's next cursor, on the page's last repo.
        page_cursor: Option<&'a str>,
    },
    /// No entry; the cursor key's new value.
    Cursor(&'a str),
}

impl ListingEvent<'_> {
    /// The payload of this event.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            ListingEvent::Repo {
                json,
                page_cursor: None,
            } => {
                let mut out = Vec::with_capacity(1 + json.len());
                out.push(TAG_REPO);
                out.extend_from_slice(json.as_bytes());
                out
            }
            ListingEvent::Repo {
                json,
                page_cursor: Some(cursor),
            } => {
                let mut out = Vec::with_capacity(5 + json.len() + cursor.len());
                out.push(TAG_REPO_ENDING_PAGE);
                out.extend_from_slice(&(json.len() as u32).to_le_bytes());
                out.extend_from_slice(json.as_bytes());
                out.extend_from_slice(cursor.as_bytes());
                out
            }
            ListingEvent::Cursor(cursor) => {
                let mut out = Vec::with_capacity(1 + cursor.len());
                out.push(TAG_CURSOR);
                out.extend_from_slice(cursor.as_bytes());
                out
            }
        }
    }

    /// The event in `payload`.
    ///
    /// # Errors
    /// An unknown tag, a length past the end, or text that is not UTF-8, in words.
    pub fn decode(payload: &[u8]) -> Result<ListingEvent<'_>, String> {
        fn utf8(bytes: &[u8]) -> Result<&str, String> {
            std::str::from_utf8(bytes)
                .map_err(|e| format!("not UTF-8 at offset {}", e.valid_up_to()))
        }
        let (&tag, rest) = payload
            .split_first()
            .ok_or_else(|| "an empty listing event".to_string())?;
        match tag {
            TAG_REPO => Ok(ListingEvent::Repo {
                json: utf8(rest)?,
                page_cursor: None,
            }),
            TAG_REPO_ENDING_PAGE => {
                let (len, rest) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| "a page-ending repo without its length".to_string())?;
                let len = u32::from_le_bytes(*len) as usize;
                if len > rest.len() {
                    return Err(format!(
                        "a page-ending repo of {len} bytes in {} bytes",
                        rest.len()
                    ));
                }
                let (json, cursor) = rest.split_at(len);
                Ok(ListingEvent::Repo {
                    json: utf8(json)?,
                    page_cursor: Some(utf8(cursor)?),
                })
            }
            TAG_CURSOR => Ok(ListingEvent::Cursor(utf8(rest)?)),
            other => Err(format!("unknown listing event tag {other:#04x}")),
        }
    }
}

/// The cursor key's value once the event in `payload` is written, if it sets one.
pub fn cursor_of(payload: &[u8]) -> Option<&str> {
    match ListingEvent::decode(payload) {
        Ok(ListingEvent::Repo { page_cursor, .. }) => page_cursor,
        Ok(ListingEvent::Cursor(cursor)) => Some(cursor),
        Err(_) => None,
    }
}

/// rsky's `BackfillEvent`, field for field in its order (serde writes them so).
#[derive(Serialize)]
struct BackfillEvent<'a> {
    did: &'a str,
    host: &'a str,
    rev: &'a str,
    status: Option<&'a str>,
    active: bool,
}

/// The entry rsky's ingester writes for `repo` listed from `host_field` (its `host`).
pub fn render_entry(repo: &Repo, host_field: &str) -> String {
    let event = BackfillEvent {
        did: &repo.did,
        host: host_field,
        rev: &repo.rev,
        status: repo.status.as_deref(),
        // rsky: `repo.active.unwrap_or(true)`.
        active: repo.active.unwrap_or(true),
    };
    // Serializing strings and a bool into a String cannot fail.
    serde_json::to_string(&event).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The HTTP client.

/// One page of the listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// The next page's cursor; `None` on the last page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The repos, in the host's order.
    pub repos: Vec<Repo>,
}

/// One repo of a page (`head` is ignored: rsky does not write it).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Repo {
    /// The DID.
    pub did: String,
    /// The repo's revision.
    pub rev: String,
    /// Whether the account is active (absent: active).
    #[serde(default)]
    pub active: Option<bool>,
    /// The account status, when not active.
    #[serde(default)]
    pub status: Option<String>,
}

/// Why a page could not be listed, or the source could not keep its position; every
/// variant names the host or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoListingError {
    /// The TCP connection failed.
    #[error("listRepos at {host}: connecting: {source}")]
    Connect {
        /// `host[:port]`.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed, or the host is no valid server name.
    #[error("listRepos at {host}: TLS: {reason}")]
    Tls {
        /// `host[:port]`.
        host: String,
        /// Why.
        reason: String,
    },
    /// HTTP failed (the connection broke, a malformed response head).
    #[error("listRepos at {host}: HTTP: {source}")]
    Http {
        /// `host[:port]`.
        host: String,
        /// Why.
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("listRepos at {host}: {what} took over {timeout_ms} ms")]
    TimedOut {
        /// `host[:port]`.
        host: String,
        /// What was waited for.
        what: &'static str,
        /// The bound.
        timeout_ms: u64,
    },
    /// An answer other than 200 (429 and 5xx are the usual; every one is retried).
    #[error("listRepos at {host}: HTTP {status}: {body}")]
    Status {
        /// `host[:port]`.
        host: String,
        /// The status code.
        status: u16,
        /// `Retry-After` in milliseconds, when given in seconds.
        retry_after_ms: Option<u64>,
        /// The start of the body.
        body: String,
    },
    /// The page is larger than `repo_listing_page_bytes_max`.
    #[error("listRepos at {host}: a page over repo_listing_page_bytes_max ({page_bytes_max} bytes); raise the key if the host's pages are that large")]
    TooLarge {
        /// `host[:port]`.
        host: String,
        /// The bound.
        page_bytes_max: usize,
    },
    /// The page is not a listRepos answer.
    #[error("listRepos at {host}: a malformed page: {reason}")]
    Malformed {
        /// `host[:port]`.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// The position file could not be read or written.
    #[error("listRepos position file {path}: {what}: {reason}")]
    PositionFile {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl RepoListingError {
    /// The delay the host asked for (`Retry-After`), if it did.
    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            RepoListingError::Status { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

/// A keep-alive HTTP/1.1 client of one host's `listRepos`: a connection is opened when
/// needed and reused while it stays open.
pub struct ListReposClient {
    config: RepoListingConfig,
    host: String,
    /// `None` for `http://`; for `https://`, the connector or why it could not be built.
    tls: Option<Result<tokio_rustls::TlsConnector, String>>,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl ListReposClient {
    /// The client of `config.base_url` (no connection yet).
    pub fn new(config: &RepoListingConfig) -> Self {
        let tls = config.base_url.starts_with("https://").then(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
            // ring's defaults always include a protocol version; the error is kept anyway,
            // and every attempt reports it rather than falling back to plain text.
            tls.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
                .map_err(|e| e.to_string())
        });
        ListReposClient {
            host: config.host(),
            config: config.clone(),
            tls,
            sender: None,
        }
    }

    /// Lists the page after `cursor` (`None`: the first).
    ///
    /// # Errors
    /// A connection, TLS, HTTP or timeout failure, a status other than 200, a page over
    /// `page_bytes_max`, or a page that is not a listRepos answer; each names the host.
    pub async fn fetch_page(&mut self, cursor: Option<&str>) -> Result<Page, RepoListingError> {
        let fetched = self.fetch_page_once(cursor).await;
        if fetched.is_err() {
            // The connection may be in any state: the next attempt opens a new one.
            self.sender = None;
        }
        fetched
    }

    async fn fetch_page_once(&mut self, cursor: Option<&str>) -> Result<Page, RepoListingError> {
        let mut path = format!("{LIST_REPOS_PATH}?limit={}", self.config.page_repos_max);
        if let Some(cursor) = cursor {
            path.push_str("&cursor=");
            percent_encode(cursor, &mut path);
        }
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("spillway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| RepoListingError::Malformed {
                host: self.host.clone(),
                reason: format!("building the request: {e}"),
            })?;
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        let read_timeout_ms = self.config.read_timeout_ms;
        let host = self.host.clone();
        let page_bytes_max = self.config.page_bytes_max;
        let http = |source| RepoListingError::Http {
            host: host.clone(),
            source,
        };
        let exchange = async {
            sender.ready().await.map_err(http)?;
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let retry_after_ms = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| secs.saturating_mul(1000));
            let body = Limited::new(response.into_body(), page_bytes_max)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => http(*e),
                    // `Limited`'s only other error: the body passed the bound.
                    Err(_) => RepoListingError::TooLarge {
                        host: host.clone(),
                        page_bytes_max,
                    },
                })?
                .to_bytes();
            Ok::<_, RepoListingError>((status, retry_after_ms, body))
        };
        let (status, retry_after_ms, body) =
            tokio::time::timeout(Duration::from_millis(read_timeout_ms), exchange)
                .await
                .map_err(|_| RepoListingError::TimedOut {
                    host: self.host.clone(),
                    what: "the answer",
                    timeout_ms: read_timeout_ms,
                })??;
        self.sender = Some(sender);
        if status != hyper::StatusCode::OK {
            const BODY_SHOWN_BYTES_MAX: usize = 200;
            let shown = &body[..body.len().min(BODY_SHOWN_BYTES_MAX)];
            return Err(RepoListingError::Status {
                host: self.host.clone(),
                status: status.as_u16(),
                retry_after_ms,
                body: String::from_utf8_lossy(shown).into_owned(),
            });
        }
        serde_json::from_slice::<Page>(&body).map_err(|e| RepoListingError::Malformed {
            host: self.host.clone(),
            reason: e.to_string(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, RepoListingError> {
        let timeout_ms = self.config.connect_timeout_ms;
        let timed_out = |what| RepoListingError::TimedOut {
            host: self.host.clone(),
            what,
            timeout_ms,
        };
        let address = if self.host.contains(':') && !self.host.ends_with(']') {
            self.host.clone()
        } else if self.tls.is_some() {
            format!("{}:443", self.host)
        } else {
            format!("{}:80", self.host)
        };
        let tcp = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            tokio::net::TcpStream::connect(address.as_str()),
        )
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(|source| RepoListingError::Connect {
            host: self.host.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let http = |source| RepoListingError::Http {
            host: self.host.clone(),
            source,
        };
        let sender = match &self.tls {
            Some(Err(reason)) => {
                return Err(RepoListingError::Tls {
                    host: self.host.clone(),
                    reason: format!("no TLS configuration: {reason}"),
                })
            }
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(http)?;
                tokio::spawn(connection);
                sender
            }
            Some(Ok(tls)) => {
                let name = host_name(&self.host);
                let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
                    .map_err(|e| RepoListingError::Tls {
                        host: self.host.clone(),
                        reason: format!("{name:?} is not a server name: {e}"),
                    })?;
                let stream = tokio::time::timeout(
                    Duration::from_millis(timeout_ms),
                    tls.connect(server_name, tcp),
                )
                .await
                .map_err(|_| timed_out("the TLS handshake"))?
                .map_err(|e| RepoListingError::Tls {
                    host: self.host.clone(),
                    reason: e.to_string(),
                })?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(http)?;
                tokio::spawn(connection);
                sender
            }
        };
        Ok(sender)
    }
}

/// `host[:port]` without the port (and without an IPv6 address's brackets).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Appends `text` percent-encoded as a query value (unreserved characters kept).
fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The position file.

/// Where a restart resumes: after `ordinal` (the last repo of a page all durably queued),
/// from `cursor` (that page's next cursor, or [`DONE_CURSOR`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingPosition {
    /// The position of the page's last event.
    pub ordinal: u64,
    /// The cursor to list the next page with, or [`DONE_CURSOR`].
    pub cursor: String,
}

/// The position file of a listing source (`listing-<file name>` in the data directory).
#[derive(Debug, Clone)]
pub struct PositionFile {
    path: PathBuf,
}

impl PositionFile {
    /// The file of `config`'s source in `data_dir`.
    pub fn for_source(data_dir: &Path, config: &RepoListingConfig) -> Self {
        PositionFile {
            path: data_dir.join(format!("listing-{}", config.file_name())),
        }
    }

    /// The file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        PositionFile { path: path.into() }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, what: &'static str, reason: impl ToString) -> RepoListingError {
        RepoListingError::PositionFile {
            path: self.path.clone(),
            what,
            reason: reason.to_string(),
        }
    }

    /// The saved position (`None`: no file).
    ///
    /// # Errors
    /// An unreadable file or one that does not hold a position; both name the file.
    pub fn load(&self) -> Result<Option<ListingPosition>, RepoListingError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("reading", e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.error("parsing", e))
    }

    /// Saves `position` durably (write, fsync, rename, fsync the directory).
    ///
    /// # Errors
    /// Any step of the write, naming the file.
    pub fn save(&self, position: &ListingPosition) -> Result<(), RepoListingError> {
        use std::io::Write;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = self.path.with_file_name(name);
        let text = serde_json::to_string(position).map_err(|e| self.error("encoding", e))?;
        let mut file = std::fs::File::create(&tmp)
            .map_err(|e| self.error("creating its temporary copy", e))?;
        writeln!(file, "{text}").map_err(|e| self.error("writing its temporary copy", e))?;
        file.sync_all()
            .map_err(|e| self.error("syncing its temporary copy", e))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| self.error("renaming its temporary copy over it", e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.error("syncing its directory", e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The source.

/// Where the listing starts, settled by [`crate::source::Source::resume_point`].
#[derive(Debug, Clone, Default)]
struct Start {
    /// The position of the last event before the first one pushed.
    ordinal: u64,
    /// The cursor to list from (`None`: the first page, or the Redis key's cursor).
    cursor: Option<String>,
    /// No position file: a cursor in the Redis key is where to start.
    from_redis_key: bool,
}

/// The `listRepos` backfill of one host as a [`crate::source::Source`].
#[derive(Debug, Clone)]
pub struct RepoListingSource {
    config: RepoListingConfig,
    position_file: PositionFile,
    start: Start,
}

impl RepoListingSource {
    /// The source of `config`, keeping its position file in `data_dir`.
    pub fn new(config: RepoListingConfig, data_dir: &Path) -> Self {
        let position_file = PositionFile::for_source(data_dir, &config);
        RepoListingSource {
            config,
            position_file,
            start: Start::default(),
        }
    }
}

impl crate::source::Source for RepoListingSource {
    fn label(&self) -> String {
        self.config.host()
    }

    fn family(&self) -> crate::source::EventFamily {
        crate::source::EventFamily::RepoListing
    }

    fn file_name(&self) -> String {
        self.config.file_name()
    }

    fn resume_point(&mut self, queue: &SpillQueue) -> Result<Option<u64>, SourceError> {
        let host = self.config.host();
        let saved = self.position_file.load()?;
        let kept = queue
            .source_position()
            .map_err(|source| SourceError::Queue {
                host: host.clone(),
                doing: "reading its source position",
                source,
            })?;
        self.start = match (saved, kept) {
            (Some(saved), _) => Start {
                ordinal: saved.ordinal,
                cursor: Some(saved.cursor),
                from_redis_key: false,
            },
            (None, Some(kept)) => {
                tracing::warn!(
                    host = %host,
                    missing = %self.position_file.path().display(),
                    position = kept,
                    "the listing's position file is missing but its queue holds events; listing again from the Redis cursor key, or from the start (repos may come twice, none is skipped)"
                );
                Start {
                    ordinal: kept,
                    cursor: None,
                    from_redis_key: true,
                }
            }
            (None, None) => Start {
                ordinal: 0,
                cursor: None,
                from_redis_key: true,
            },
        };
        // The stored copies above the checkpoint are listed again: skip them. Without a
        // checkpoint that is every stored copy not yet consumed (the listing starts again
        // from the Redis key, which only passes written pages, or from the start).
        queue
            .begin_replay(self.start.ordinal)
            .map_err(|source| SourceError::Queue {
                host: host.clone(),
                doing: "the replay",
                source,
            })?;
        Ok(Some(self.start.ordinal))
    }

    fn run(
        self: Box<Self>,
        queue: SpillQueue,
        _resume: Option<u64>,
        stats: Arc<SourceStats>,
        stop: watch::Receiver<bool>,
    ) -> futures_util::future::BoxFuture<'static, Result<(), SourceError>> {
        let RepoListingSource {
            config,
            position_file,
            start,
        } = *self;
        Box::pin(async move {
            let mut listing = Listing::new(config, position_file, queue, stats, stop, start);
            listing.run().await
        })
    }

    fn refetcher(&self) -> Option<Box<dyn crate::source::Refetch>> {
        // A lost range of the spill log is listed again only by a restart from an older
        // checkpoint; the listing has no random access by ordinal.
        None
    }
}

/// Pages listed but not yet checkpointed, at most; past it the newest entry is replaced
/// (the checkpoint can then only stop at an older page: conservative, and bounded).
const PAGES_PENDING_MAX: usize = 1024;

/// A page pushed: the position of its last event, and the cursor after it.
#[derive(Debug, Clone)]
struct PageMark {
    last_ordinal: u64,
    cursor: String,
}

/// One run of the listing.
struct Listing {
    config: RepoListingConfig,
    host: String,
    host_field: String,
    position_file: PositionFile,
    queue: SpillQueue,
    stats: Arc<SourceStats>,
    stop: watch::Receiver<bool>,
    /// The position of the last event pushed.
    ordinal: u64,
    /// Where the next page is listed from.
    cursor: Option<String>,
    from_redis_key: bool,
    pending: VecDeque<PageMark>,
    checkpoint: Option<ListingPosition>,
    pages_total: u64,
    repos_total: u64,
    last_checkpoint: Instant,
    last_progress: Instant,
}

impl Listing {
    fn new(
        config: RepoListingConfig,
        position_file: PositionFile,
        queue: SpillQueue,
        stats: Arc<SourceStats>,
        stop: watch::Receiver<bool>,
        start: Start,
    ) -> Self {
        let checkpoint = start.cursor.clone().map(|cursor| ListingPosition {
            ordinal: start.ordinal,
            cursor,
        });
        Listing {
            host: config.host(),
            host_field: config.host_field(),
            config,
            position_file,
            queue,
            stats,
            stop,
            ordinal: start.ordinal,
            cursor: start.cursor,
            from_redis_key: start.from_redis_key,
            pending: VecDeque::new(),
            checkpoint,
            pages_total: 0,
            repos_total: 0,
            last_checkpoint: Instant::now(),
            last_progress: Instant::now(),
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(&mut self) -> Result<(), SourceError> {
        tracing::info!(host = %self.host, ordinal = self.ordinal, cursor = ?self.cursor, "repo listing source starting");
        let Some(redis_cursor) = self.read_redis_cursor().await else {
            return Ok(());
        };
        if redis_cursor.as_deref() == Some(DONE_CURSOR) {
            tracing::info!(host = %self.host, "the Redis cursor key says the listing is complete ({DONE_CURSOR}); not listing");
            return self.idle().await;
        }
        if self.from_redis_key {
            if let Some(cursor) = redis_cursor {
                tracing::info!(host = %self.host, %cursor, "no position file: listing from the cursor in the Redis key");
                self.cursor = Some(cursor);
            }
        }
        if self.cursor.as_deref() == Some(DONE_CURSOR) {
            tracing::info!(host = %self.host, "the position file says the listing is complete; not listing");
            return self.idle().await;
        }
        let mut client = ListReposClient::new(&self.config);
        loop {
            let Some(page) = self.fetch_with_retries(&mut client).await else {
                break;
            };
            let ended = page.cursor.is_none();
            if !self.push_page(page).await? {
                break;
            }
            self.progress(false);
            if self.last_checkpoint.elapsed()
                >= Duration::from_millis(self.config.checkpoint_interval_ms)
            {
                self.save_checkpoint();
            }
            if ended {
                self.progress(true);
                tracing::info!(host = %self.host, repos = self.repos_total, pages = self.pages_total, "the listing is complete; {DONE_CURSOR} is set once its last repos are written");
                return self.idle().await;
            }
        }
        self.save_checkpoint();
        tracing::info!(host = %self.host, "repo listing source stopped");
        Ok(())
    }

    /// Waits for the stop, checkpointing until every page is (the listing is complete).
    async fn idle(&mut self) -> Result<(), SourceError> {
        self.stats.connected.store(1, Ordering::Relaxed);
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms);
        while !self.pending.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.save_checkpoint(),
                _ = self.stop.changed() => break,
            }
        }
        if !self.stopped() {
            let _ = self.stop.changed().await;
        }
        self.save_checkpoint();
        tracing::info!(host = %self.host, "repo listing source stopped");
        Ok(())
    }

    /// The Redis cursor key's value (`Some(None)`: no key, or no Redis sink); `None` when
    /// stopped while Redis could not be reached (retried with backoff until then).
    async fn read_redis_cursor(&mut self) -> Option<Option<String>> {
        let Some(redis_key) = self.config.redis_cursor.clone() else {
            return Some(None);
        };
        let url = crate::sink::redis::redact_url(&redis_key.url);
        let mut failures = 0u32;
        loop {
            let timeout = Duration::from_millis(self.config.connect_timeout_ms);
            let read = async {
                let client = redis::Client::open(redis_key.url.as_str())?;
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("GET")
                    .arg(&redis_key.key)
                    .query_async::<Option<String>>(&mut connection)
                    .await
            };
            let error = match tokio::time::timeout(timeout, read).await {
                Ok(Ok(value)) => return Some(value),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", timeout.as_millis()),
            };
            let delay = self.retry_delay(failures, None);
            failures = failures.saturating_add(1);
            tracing::warn!(host = %self.host, redis = %url, key = %redis_key.key, %error, retry_in_ms = delay.as_millis() as u64, "reading the listing's cursor key failed; the listing waits for it (it may say {DONE_CURSOR})");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return None,
            }
        }
    }

    fn retry_delay(&self, failures: u32, asked_ms: Option<u64>) -> Duration {
        let ms = match asked_ms {
            Some(asked) => asked.min(self.config.retry_after_max_ms),
            None => crate::sink::retry_delay(
                self.config.retry_delay_min_ms,
                self.config.retry_delay_max_ms,
                failures,
            )
            .as_millis() as u64,
        };
        Duration::from_millis(ms)
    }

    /// The next page, retried with backoff (and the host's `Retry-After`); `None` when stopped.
    async fn fetch_with_retries(&mut self, client: &mut ListReposClient) -> Option<Page> {
        let mut failures = 0u32;
        loop {
            if self.stopped() {
                return None;
            }
            let cursor = self.cursor.clone();
            let fetched = tokio::select! {
                fetched = client.fetch_page(cursor.as_deref()) => fetched,
                _ = self.stop.changed() => return None,
            };
            let error = match fetched {
                Ok(page) => {
                    self.stats.connected.store(1, Ordering::Relaxed);
                    return Some(page);
                }
                Err(error) => error,
            };
            self.stats.connected.store(0, Ordering::Relaxed);
            self.stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
            match &error {
                RepoListingError::TooLarge { .. } => {
                    self.stats.oversized_total.fetch_add(1, Ordering::Relaxed);
                }
                RepoListingError::Malformed { .. } => {
                    self.stats
                        .decode_errors_total
                        .fetch_add(1, Ordering::Relaxed);
                }
                RepoListingError::Status { .. } => {
                    self.stats
                        .error_frames_total
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let delay = self.retry_delay(failures, error.retry_after_ms());
            failures = failures.saturating_add(1);
            tracing::warn!(host = %self.host, %error, cursor = ?cursor, retry_in_ms = delay.as_millis() as u64, "listing a page failed; retrying it (nothing is skipped)");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return None,
            }
        }
    }

    /// Pushes a page's repos (and the end marker after the last page); `Ok(false)` when
    /// stopped while the push waited for disk space (nothing of the page counts as listed).
    async fn push_page(&mut self, page: Page) -> Result<bool, SourceError> {
        let next = page
            .cursor
            .clone()
            .unwrap_or_else(|| DONE_CURSOR.to_string());
        let count = page.repos.len();
        let mut events = Vec::with_capacity(count + 1);
        let mut ordinal = self.ordinal;
        let mut bytes_total = 0u64;
        for (index, repo) in page.repos.iter().enumerate() {
            let json = render_entry(repo, &self.host_field);
            let ends_page = index + 1 == count && page.cursor.is_some();
            let payload = ListingEvent::Repo {
                json: &json,
                page_cursor: ends_page.then_some(next.as_str()),
            }
            .encode();
            ordinal += 1;
            bytes_total += payload.len() as u64;
            events.push(Event::new(ordinal, payload));
        }
        if count == 0 || page.cursor.is_none() {
            // No repo carries the cursor: a marker does (the end, or an empty page).
            ordinal += 1;
            events.push(Event::new(ordinal, ListingEvent::Cursor(&next).encode()));
        }
        let pushed = tokio::select! {
            pushed = self.queue.push_batch(events) => pushed,
            _ = self.stop.changed() => return Ok(false),
        };
        match pushed {
            Ok(report) if report.dropped.is_empty() => {}
            Ok(report) => {
                tracing::warn!(host = %self.host, dropped = report.dropped.len(), "the queue dropped listed repos under its full policy")
            }
            Err(error) => {
                return Err(SourceError::Push {
                    host: self.host.clone(),
                    source: error.reason,
                })
            }
        }
        self.ordinal = ordinal;
        self.cursor = page.cursor;
        self.pages_total += 1;
        self.repos_total += count as u64;
        self.stats
            .frames_total
            .fetch_add(count as u64, Ordering::Relaxed);
        self.stats
            .bytes_total
            .fetch_add(bytes_total, Ordering::Relaxed);
        self.stats.last_seq.store(ordinal, Ordering::Relaxed);
        let mark = PageMark {
            last_ordinal: ordinal,
            cursor: next,
        };
        if self.pending.len() >= PAGES_PENDING_MAX {
            if let Some(newest) = self.pending.back_mut() {
                *newest = mark;
            }
        } else {
            self.pending.push_back(mark);
        }
        Ok(true)
    }

    /// Saves the newest page whose events are all at or below the durable watermark.
    /// A failure is logged: the saved position only gets older, nothing is skipped.
    fn save_checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        if self.pending.is_empty() {
            return;
        }
        if let Err(error) = self.queue.flush() {
            tracing::error!(host = %self.host, %error, "flushing the queue before a checkpoint failed");
            return;
        }
        let Some(watermark) = self.queue.durable_watermark() else {
            return;
        };
        let mut newest = None;
        while self
            .pending
            .front()
            .is_some_and(|page| page.last_ordinal <= watermark)
        {
            newest = self.pending.pop_front();
        }
        let Some(page) = newest else {
            return;
        };
        let position = ListingPosition {
            ordinal: page.last_ordinal,
            cursor: page.cursor,
        };
        if let Err(error) = self.queue.save_source_position(position.ordinal) {
            tracing::error!(host = %self.host, %error, "recording the source position in the queue failed");
        }
        match self.position_file.save(&position) {
            Ok(()) => {
                tracing::debug!(host = %self.host, ordinal = position.ordinal, cursor = %position.cursor, "saved the listing position");
                self.checkpoint = Some(position);
            }
            Err(error) => {
                tracing::error!(host = %self.host, %error, "saving the listing position failed")
            }
        }
    }

    fn progress(&mut self, now: bool) {
        if now
            || self.last_progress.elapsed()
                >= Duration::from_millis(self.config.progress_interval_ms)
        {
            self.last_progress = Instant::now();
            tracing::info!(
                host = %self.host,
                repos_listed = self.repos_total,
                pages = self.pages_total,
                ordinal = self.ordinal,
                cursor = ?self.cursor,
                checkpoint = ?self.checkpoint.as_ref().map(|c| c.ordinal),
                "repo listing progress"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_rskys_backfill_event_byte_for_byte() {
        let repo = Repo {
            did: "did:plc:abc".into(),
            rev: "3lxyz".into(),
            active: None,
            status: None,
        };
        assert_eq!(
            render_entry(&repo, "https://bsky.network"),
            r#"{"did":"did:plc:abc","host":"https://bsky.network","rev":"3lxyz","status":null,"active":true}"#
        );
        let repo = Repo {
            active: Some(false),
            status: Some("takendown".into()),
            ..repo
        };
        assert_eq!(
            render_entry(&repo, "https://bsky.network"),
            r#"{"did":"did:plc:abc","host":"https://bsky.network","rev":"3lxyz","status":"takendown","active":false}"#
        );
    }

    #[test]
    fn events_round_trip_and_only_page_ends_and_markers_set_the_cursor() {
        let events = [
            ListingEvent::Repo {
                json: "{}",
                page_cursor: None,
            },
            ListingEvent::Repo {
                json: "{\"a\":1}",
                page_cursor: Some("next page"),
            },
            ListingEvent::Cursor(DONE_CURSOR),
        ];
        for event in events {
            let payload = event.encode();
            assert_eq!(ListingEvent::decode(&payload), Ok(event));
        }
        assert_eq!(cursor_of(&events[0].encode()), None);
        assert_eq!(cursor_of(&events[1].encode()), Some("next page"));
        assert_eq!(cursor_of(&events[2].encode()), Some(DONE_CURSOR));
        assert!(ListingEvent::decode(b"p\xff\xff\xff\x7f{}").is_err());
        assert!(ListingEvent::decode(b"").is_err());
        assert!(ListingEvent::decode(b"x").is_err());
    }

    #[test]
    fn base_urls_imply_https_and_refuse_paths() {
        assert_eq!(
            normalize_base_url("bsky.network").as_deref(),
            Ok("https://bsky.network")
        );
        assert_eq!(
            normalize_base_url("http://127.0.0.1:8080/").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert!(normalize_base_url("wss://bsky.network").is_err());
        assert!(normalize_base_url("https://h/xrpc/x").is_err());
        assert!(normalize_base_url("https://").is_err());
        let config = RepoListingConfig::new("http://127.0.0.1:8080");
        assert_eq!(config.host(), "127.0.0.1:8080");
        assert_eq!(config.file_name(), "repos-127.0.0.1_8080");
        assert!(check_hosts(&["a.example".into(), "https://a.example".into()]).is_err());
    }

    #[test]
    fn cursors_are_percent_encoded() {
        let mut out = String::new();
        percent_encode("did:plc:a b/c", &mut out);
        assert_eq!(out, "did%3Aplc%3Aa%20b%2Fc");
    }

    #[test]
    fn the_position_file_round_trips_and_names_itself_when_malformed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = PositionFile::at(dir.path().join("listing-repos-x"));
        assert_eq!(file.load().expect("missing is fine"), None);
        let position = ListingPosition {
            ordinal: 3000,
            cursor: "did:plc:zzz".into(),
        };
        file.save(&position).expect("save");
        assert_eq!(file.load().expect("load"), Some(position));
        std::fs::write(file.path(), b"3000").expect("write");
        let error = file.load().expect_err("malformed").to_string();
        assert!(error.contains("listing-repos-x"), "{error}");
    }
}
