//! Typed errors, one enum per family of operations, and an umbrella [`Error`].

use std::path::PathBuf;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The field's value is out of range or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The configuration field, as named in `LogConfig`.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// Data on disk that failed a check; it is never returned as a record.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("corrupt data in {location} at byte offset {offset}: {reason}")]
pub struct Corruption {
    /// The segment file, or the sled chunk key, holding the damaged data.
    pub location: String,
    /// Byte offset of the damaged chunk inside that file (0 for a sled value).
    pub offset: u64,
    /// What check failed.
    pub reason: String,
}

/// A failure of the disk or of the embedded store, or damaged data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O call failed on `path`.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// sled failed (the manifest, or the sled backend's store).
    #[error("sled store at {path}: {source}")]
    Sled {
        /// The sled directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A checksum or structure check failed.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    /// Too many named positions are stored already.
    #[error(
        "cannot store position {name:?}: the limit of {positions_max} named positions is reached"
    )]
    TooManyPositions {
        /// The new name.
        name: String,
        /// The configured limit.
        positions_max: u32,
    },
    /// An earlier failure left the log's end unknown; it refuses writes until reopened.
    #[error("the spill log at {path} refuses writes until it is reopened: {reason}")]
    Poisoned {
        /// The file whose state is unknown.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { path, source }
    }

    pub(crate) fn sled(path: impl Into<PathBuf>) -> impl FnOnce(sled::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Sled { path, source }
    }

    /// Whether the disk (not the configured budget) ran out of space or quota (ENOSPC, EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => crate::fs::is_no_space(source),
            StorageError::Sled {
                source: sled::Error::Io(source),
                ..
            } => crate::fs::is_no_space(source),
            _ => false,
        }
    }
}

/// Why `inspect` could not read a log directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The directory holds neither a `manifest/` nor a `sled/` store.
    #[error("{path} is not a spill log directory (it has no manifest/ or sled/ store)")]
    NotALog {
        /// The directory.
        path: PathBuf,
    },
    /// Opening the store read-only needs a copy larger than allowed.
    #[error("the store at {path} is {bytes} bytes, over the {bytes_max}-byte copy bound inspect opens it through; raise the bound, or stop the process and inspect a copy")]
    StoreTooLarge {
        /// The sled store.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The bound.
        bytes_max: u64,
    },
    /// The store could not be opened (another version, damage).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An I/O or sled failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration was refused before touching the disk.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The directory was written by a format version this build cannot read.
    #[error("{path} has format version {found}; this build reads version {supported} only")]
    UnsupportedVersion {
        /// The file holding the version.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The directory holds a log of the other backend.
    #[error("{path} holds a {found:?} log, but the configuration asks for {expected:?}")]
    WrongBackend {
        /// The log directory.
        path: PathBuf,
        /// The backend recorded in the manifest.
        found: String,
        /// The configured backend.
        expected: String,
    },
    /// An I/O or store failure (damage is recovered from, not refused; see [`crate::open`]).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why an append was refused; the caller's batch is untouched (it was only borrowed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// Appending the batch would exceed `disk_budget_bytes`.
    #[error("disk budget full: the batch needs {needed_bytes} bytes, {available_bytes} of {budget_bytes} are free")]
    Full {
        /// Encoded size of the refused batch.
        needed_bytes: u64,
        /// Budget left.
        available_bytes: u64,
        /// The configured `disk_budget_bytes`.
        budget_bytes: u64,
    },
    /// The filesystem is out of space (or quota): nothing of the batch was written.
    ///
    /// The log is as it was before the batch and stays usable: an append succeeds
    /// again once space frees (consuming records frees it). Treat it like
    /// [`AppendError::Full`]: hold the batch and retry later.
    #[error("the filesystem holding {path} has {free_bytes} bytes free, the batch needs {needed_bytes}; nothing of the batch was written; it is refused until space frees")]
    NoSpace {
        /// The log's segment directory.
        path: PathBuf,
        /// Encoded size of the refused batch, plus the free-space margin the log keeps.
        needed_bytes: u64,
        /// Free bytes on that filesystem when the batch was refused (0 if unknown).
        free_bytes: u64,
    },
    /// A record exceeds `record_bytes_max`.
    #[error("record {index} of the batch is {len} bytes, over the limit of {max} bytes")]
    RecordTooLarge {
        /// Its index in the batch.
        index: usize,
        /// Its length.
        len: usize,
        /// The configured `record_bytes_max`.
        max: u32,
    },
    /// The disk or the store failed; nothing of the batch is acknowledged.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a read returned no records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The sequence number is outside `[first_seq, next_seq]`.
    #[error("seq {requested} is outside the log's range {first_seq}..={next_seq}")]
    OutOfRange {
        /// The seq asked for.
        requested: u64,
        /// The first unconsumed seq.
        first_seq: u64,
        /// The seq the next append will get.
        next_seq: u64,
    },
    /// The disk or the store failed (damaged data is skipped and reported by `ReadBatch::lost`, not an error).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Any error of the storage crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An append failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Flushing, consuming or positions failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A configuration value was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
}
