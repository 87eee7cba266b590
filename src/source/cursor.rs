//! The relay cursor persisted per relay: the queue's durable watermark, saved atomically,
//! and the names a relay's files take in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::firehose::Subscription;

/// The path every relay serves the firehose on; a relay URL with it keeps the short names.
pub const STANDARD_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";

/// The path every labeler serves its labels on; a labeler URL with it keeps the short names.
pub const LABELS_PATH: &str = "/xrpc/com.atproto.label.subscribeLabels";

/// Prefix of a labeler's file names (`queue-labels-<host>`, `cursor-labels-<host>`), so a
/// labeler and a relay on one host keep their own queue and cursor.
pub const LABELS_FILE_PREFIX: &str = "labels-";

/// Characters of a non-standard path kept readable in a file name (a hash follows them).
const PATH_TAG_CHARS_MAX: usize = 24;

/// `host` with every character but ASCII letters, digits, `.` and `-` replaced by `_`, for file names.
pub fn file_safe(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One relay as the data directory and the metrics tell it apart from the others.
///
/// Two relays differ by host, port or path. The names keep the ones used before paths
/// counted (`relay.example`, `relay.example_8443`: the authority as written), so existing
/// data directories keep working; a path other than [`STANDARD_PATH`] adds a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayId {
    /// `host[:port]` as written in the URL, without any `user:password@`.
    authority: String,
    /// Everything after the authority (path and query), when it is not the standard one.
    path: Option<String>,
    /// What the endpoint streams (decides the standard path and the file names).
    subscription: Subscription,
}

impl RelayId {
    /// The relay of `url` (`wss://HOST[:PORT]/PATH`).
    pub fn of_url(url: &str) -> Self {
        Self::of_subscription_url(url, Subscription::Repos)
    }

    /// The server of `url` streaming `subscription` (a relay, or a labeler whose names
    /// start with [`LABELS_FILE_PREFIX`]).
    pub fn of_subscription_url(url: &str, subscription: Subscription) -> Self {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        // Credentials never reach a file name, a log line or a metric label.
        let authority = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        RelayId {
            authority: authority.to_string(),
            path: (path != subscription.standard_path()).then(|| path.to_string()),
            subscription,
        }
    }

    /// `host[:port][/path]`: the label of its logs and metrics, and its Redis cursor key.
    pub fn label(&self) -> String {
        match &self.path {
            None => self.authority.clone(),
            Some(path) => format!("{}{path}", self.authority),
        }
    }

    /// The file-name part of its queue directory and cursor file (`relay.example_8443`).
    pub fn file_name(&self) -> String {
        let mut name = match self.subscription {
            Subscription::Repos => String::new(),
            Subscription::Labels => LABELS_FILE_PREFIX.to_string(),
        };
        name.push_str(&file_safe(&self.authority));
        if let Some(path) = &self.path {
            let readable = path
                .strip_suffix(self.subscription.standard_path())
                .unwrap_or(path);
            let readable: String = file_safe(readable.trim_matches('/'))
                .chars()
                .take(PATH_TAG_CHARS_MAX)
                .collect();
            let readable = if readable.is_empty() {
                "path"
            } else {
                &readable
            };
            name.push_str(&format!("_{readable}-{:08x}", fnv1a_32(path.as_bytes())));
        }
        name
    }
}

/// FNV-1a: a hash fixed by its definition, so a file name stays the same across builds
/// (std's hashers promise no such thing).
fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Why a cursor file could not be read or written; it always names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CursorFileError {
    /// The file exists but could not be read, or could not be written.
    #[error("cursor file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold one decimal number.
    #[error("cursor file {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
}

/// A cursor file: one decimal number, replaced atomically (write, fsync, rename, fsync dir).
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The cursor file of relay `id` in `data_dir`.
    pub fn for_relay(data_dir: &Path, id: &RelayId) -> Self {
        CursorFile {
            path: data_dir.join(format!("cursor-{}", id.file_name())),
        }
    }

    /// The cursor file of relay `host` (`host[:port]`, standard path) in `data_dir`.
    pub fn for_host(data_dir: &Path, host: &str) -> Self {
        CursorFile {
            path: data_dir.join(format!("cursor-{}", file_safe(host))),
        }
    }

    /// The cursor file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        CursorFile { path: path.into() }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved cursor, if any (`None`: no file).
    ///
    /// # Errors
    /// An unreadable file, or content that is not one decimal number; both name the file.
    pub fn load(&self) -> Result<Option<u64>, CursorFileError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CursorFileError::Io {
                    path: self.path.clone(),
                    what: "reading",
                    source,
                })
            }
        };
        parse_cursor(&bytes)
            .map(Some)
            .map_err(|reason| CursorFileError::Malformed {
                path: self.path.clone(),
                reason,
            })
    }

    /// Where `save` writes before renaming: this file's whole name plus `.tmp`.
    fn temporary_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        self.path.with_file_name(name)
    }

    /// Saves `cursor` durably, replacing the old value atomically.
    ///
    /// # Errors
    /// Any step of the write, naming the file.
    pub fn save(&self, cursor: u64) -> Result<(), CursorFileError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| CursorFileError::Io { path, what, source }
        };
        // The whole name plus `.tmp`: `with_extension` would cut `cursor-127.0.0.1_8443` at
        // its last dot, and two relays on one host would share `cursor-127.0.0.tmp`.
        let tmp = self.temporary_path();
        let mut file = std::fs::File::create(&tmp).map_err(io("creating its temporary copy"))?;
        writeln!(file, "{cursor}").map_err(io("writing its temporary copy"))?;
        file.sync_all().map_err(io("syncing its temporary copy"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("renaming its temporary copy over it"))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing its directory"))?;
        }
        Ok(())
    }
}

/// The cursor in a file's bytes: one decimal number, surrounding whitespace allowed.
///
/// # Errors
/// What is wrong, in words (the caller adds the path).
pub fn parse_cursor(bytes: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); expected one decimal number",
            e.valid_up_to()
        )
    })?;
    let trimmed = text.trim();
    trimmed
        .parse::<u64>()
        .map_err(|e| format!("{trimmed:?} is not a decimal number ({e})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn relays_on_one_host_save_through_their_own_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = CursorFile::at(dir.path().join("cursor-127.0.0.1_8443"));
        let b = CursorFile::at(dir.path().join("cursor-127.0.0.1_8444"));
        assert_ne!(a.temporary_path(), b.temporary_path());
        a.save(1).expect("save a");
        b.save(2).expect("save b");
        assert_eq!(a.load().expect("load a"), Some(1));
        assert_eq!(b.load().expect("load b"), Some(2));
    }

    use super::*;

    #[test]
    fn the_standard_path_keeps_the_names_data_dirs_already_use() {
        let id = RelayId::of_url("wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos");
        assert_eq!(id.file_name(), "bsky.network");
        assert_eq!(id.label(), "bsky.network");
        let id = RelayId::of_url("ws://127.0.0.1:8443/xrpc/com.atproto.sync.subscribeRepos");
        assert_eq!(id.file_name(), "127.0.0.1_8443");
        assert_eq!(id.label(), "127.0.0.1:8443");
    }

    #[test]
    fn ports_paths_and_queries_give_distinct_names_and_credentials_none() {
        let urls = [
            "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos",
            "wss://relay.example:8443/xrpc/com.atproto.sync.subscribeRepos",
            "wss://relay.example/mirror/xrpc/com.atproto.sync.subscribeRepos",
            "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos?x=1",
            "wss://relay.example/",
            "wss://relay.example",
        ];
        let names: std::collections::BTreeSet<String> = urls
            .iter()
            .map(|u| RelayId::of_url(u).file_name())
            .collect();
        assert_eq!(names.len(), urls.len(), "{names:?}");
        assert!(names.contains("relay.example_8443"), "{names:?}");
        let mirror = RelayId::of_url(urls[2]).file_name();
        assert!(mirror.starts_with("relay.example_mirror-"), "{mirror}");
        let secret = RelayId::of_url("wss://me:hunter2@relay.example/feed");
        assert!(!secret.file_name().contains("hunter2"));
        assert!(!secret.label().contains("hunter2"));
    }

    #[test]
    fn a_labeler_keeps_its_host_as_label_and_its_own_file_names() {
        let labels = |url| RelayId::of_subscription_url(url, Subscription::Labels);
        let id = labels("wss://mod.bsky.app/xrpc/com.atproto.label.subscribeLabels");
        assert_eq!(id.label(), "mod.bsky.app");
        assert_eq!(id.file_name(), "labels-mod.bsky.app");
        let id = labels("ws://127.0.0.1:8443/xrpc/com.atproto.label.subscribeLabels");
        assert_eq!(id.label(), "127.0.0.1:8443");
        assert_eq!(id.file_name(), "labels-127.0.0.1_8443");
        let relay = RelayId::of_url("ws://127.0.0.1:8443/xrpc/com.atproto.sync.subscribeRepos");
        assert_ne!(relay.file_name(), id.file_name());
        let odd = labels("wss://mod.example/labels/xrpc/com.atproto.label.subscribeLabels");
        assert!(
            odd.file_name().starts_with("labels-mod.example_labels-"),
            "{}",
            odd.file_name()
        );
    }

    #[test]
    fn every_cursor_file_error_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = CursorFile::at(dir.path().join("cursor-x"));
        assert_eq!(file.load().expect("missing is fine"), None);
        for bytes in [&b"\xff\xfe12\n"[..], b"twelve\n", b"", b"-1"] {
            std::fs::write(file.path(), bytes).expect("write");
            let error = file.load().expect_err("malformed").to_string();
            assert!(
                error.contains(&file.path().display().to_string()),
                "{error}"
            );
        }
        file.save(42).expect("save");
        assert_eq!(file.load().expect("load"), Some(42));
    }
}
