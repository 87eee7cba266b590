//! Every limit of the log, with its unit in its name.

use crate::error::ConfigError;
use crate::record;

/// The largest `reserve_bytes` accepted: 1 GiB.
pub const RESERVE_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Which implementation stores the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Append-only segment files read through a bounded mmap window; sled holds the manifest.
    Segment,
    /// Records packed in chunks stored as values of a sled tree.
    Sled,
}

impl Backend {
    /// The name stored in the manifest and accepted in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Segment => "segment",
            Backend::Sled => "sled",
        }
    }

    /// Parses the configuration name of a backend.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name {
            "segment" => Ok(Backend::Segment),
            "sled" => Ok(Backend::Sled),
            other => Err(ConfigError::Invalid {
                field: "backend",
                reason: format!("unknown backend {other:?}; expected \"segment\" or \"sled\""),
            }),
        }
    }
}

/// When appended records become durable, and so what a crash (kill -9, power loss) can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns only after the batch is synced (fdatasync / sled flush):
    /// a crash loses nothing that `append` returned for.
    EveryBatch,
    /// A background thread syncs every `interval_ms`: a crash loses at most the
    /// records appended during the last interval (plus one sync's duration).
    Periodic {
        /// Time between syncs, in milliseconds (>= 1).
        interval_ms: u64,
    },
    /// Only an explicit `flush` syncs: a crash can lose everything appended since
    /// the last `flush` (the OS may have written some of it back on its own).
    Manual,
}

impl Durability {
    /// Parses `every-batch`, `periodic:<ms>` or `manual`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "durability",
            reason,
        };
        match text {
            "every-batch" => Ok(Durability::EveryBatch),
            "manual" => Ok(Durability::Manual),
            other => {
                let ms = other.strip_prefix("periodic:").ok_or_else(|| {
                    invalid(format!(
                        "{other:?}: expected \"every-batch\", \"periodic:<ms>\" or \"manual\""
                    ))
                })?;
                let interval_ms = ms
                    .parse::<u64>()
                    .map_err(|e| invalid(format!("periodic interval {ms:?}: {e}")))?;
                Ok(Durability::Periodic { interval_ms })
            }
        }
    }
}

/// The log's configuration: every buffer and file has an explicit bound here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Which implementation stores the records.
    pub backend: Backend,
    /// When appends become durable.
    pub durability: Durability,
    /// Most bytes the log's record files may take on disk; an append past it fails with `Full`.
    pub disk_budget_bytes: u64,
    /// Largest record accepted, in bytes.
    pub record_bytes_max: u32,
    /// Records are packed into chunks of about this many bytes (a single larger record makes a larger chunk).
    pub chunk_bytes_target: u32,
    /// Segment backend: a segment file is sealed and a new one started past this size.
    pub segment_bytes_max: u64,
    /// Segment backend: bytes buffered in memory before a write to the segment file.
    pub write_buffer_bytes: u32,
    /// Segment backend: the largest file range mapped for one read.
    pub read_window_bytes: u32,
    /// sled's `cache_capacity`: the manifest (segment backend) or the whole store (sled backend).
    pub sled_cache_bytes: u64,
    /// Most named consumer positions the log keeps.
    pub positions_max: u32,
    /// Segment backend: bytes of `DIR/reserve`, a file kept so a full disk can still
    /// open and drain the log (it is removed when open or a consume meets ENOSPC,
    /// and made again when space allows); 0 disables it.
    pub reserve_bytes: u64,
    /// Segment backend: free space an append leaves on the filesystem (for the sled
    /// manifest and other writers); an append that would leave less is refused with
    /// `AppendError::NoSpace`, and the effective disk budget is capped to the log's
    /// bytes plus the free space minus this margin.
    pub disk_free_margin_bytes: u64,
}

impl LogConfig {
    /// The defaults for `backend`; the disk budget is 10 GiB.
    pub fn new(backend: Backend) -> Self {
        let chunk_bytes_target = match backend {
            // 64 KiB amortises per-chunk work; reads touch at most one window.
            Backend::Segment => 64 * 1024,
            // sled's memory grows with value size (storage-measurements.md): 16 KiB values stayed flattest.
            Backend::Sled => 16 * 1024,
        };
        LogConfig {
            backend,
            durability: Durability::Periodic { interval_ms: 100 },
            disk_budget_bytes: 10 * 1024 * 1024 * 1024,
            record_bytes_max: 4 * 1024 * 1024,
            chunk_bytes_target,
            segment_bytes_max: 64 * 1024 * 1024,
            write_buffer_bytes: 1024 * 1024,
            read_window_bytes: 8 * 1024 * 1024,
            sled_cache_bytes: match backend {
                Backend::Segment => 1024 * 1024,
                Backend::Sled => 16 * 1024 * 1024,
            },
            positions_max: 128,
            reserve_bytes: 4 * 1024 * 1024,
            disk_free_margin_bytes: 1024 * 1024,
        }
    }

    /// The largest chunk this configuration can write, header and padding included.
    pub fn chunk_bytes_max(&self) -> u64 {
        let one_record = record::chunk_bytes_for(1, u64::from(self.record_bytes_max));
        one_record.max(u64::from(self.chunk_bytes_target) + record::CHUNK_OVERHEAD_BYTES as u64)
    }

    /// Refuses a batch holding a record over `record_bytes_max`, naming the first one.
    pub fn check_record_sizes<R: crate::record::RecordBytes>(
        &self,
        records: &[R],
    ) -> Result<(), crate::AppendError> {
        let max = self.record_bytes_max;
        match records
            .iter()
            .enumerate()
            .find(|(_, r)| r.byte_len() > max as usize)
        {
            Some((index, r)) => Err(crate::AppendError::RecordTooLarge {
                index,
                len: r.byte_len(),
                max,
            }),
            None => Ok(()),
        }
    }

    /// Checks every value; the error names the field and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn positive(field: &'static str, value: u64) -> Result<(), ConfigError> {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be greater than zero".into(),
                });
            }
            Ok(())
        }
        positive("disk_budget_bytes", self.disk_budget_bytes)?;
        positive("record_bytes_max", self.record_bytes_max.into())?;
        positive("write_buffer_bytes", self.write_buffer_bytes.into())?;
        positive("sled_cache_bytes", self.sled_cache_bytes)?;
        positive("positions_max", self.positions_max.into())?;
        if self.chunk_bytes_target < 64 {
            return Err(ConfigError::Invalid {
                field: "chunk_bytes_target",
                reason: format!("{} is below the minimum of 64", self.chunk_bytes_target),
            });
        }
        if self.record_bytes_max > record::RECORD_BYTES_LIMIT {
            return Err(ConfigError::Invalid {
                field: "record_bytes_max",
                reason: format!(
                    "{} exceeds the format's limit of {}",
                    self.record_bytes_max,
                    record::RECORD_BYTES_LIMIT
                ),
            });
        }
        if let Durability::Periodic { interval_ms: 0 } = self.durability {
            return Err(ConfigError::Invalid {
                field: "durability",
                reason: "periodic interval must be at least 1 ms".into(),
            });
        }
        let chunk_max = self.chunk_bytes_max();
        if self.backend == Backend::Segment {
            let segment_min = chunk_max + record::SEGMENT_HEADER_BYTES as u64;
            if self.segment_bytes_max < segment_min {
                return Err(ConfigError::Invalid {
                    field: "segment_bytes_max",
                    reason: format!(
                        "{} cannot hold the largest chunk ({segment_min} bytes with the segment header)",
                        self.segment_bytes_max
                    ),
                });
            }
            if u64::from(self.read_window_bytes) < chunk_max {
                return Err(ConfigError::Invalid {
                    field: "read_window_bytes",
                    reason: format!(
                        "{} is smaller than the largest chunk ({chunk_max} bytes); raise it or lower record_bytes_max",
                        self.read_window_bytes
                    ),
                });
            }
            if self.reserve_bytes > RESERVE_BYTES_MAX {
                return Err(ConfigError::Invalid {
                    field: "reserve_bytes",
                    reason: format!(
                        "{} is over the limit of {RESERVE_BYTES_MAX} (a reserve only needs room for the manifest and one segment header)",
                        self.reserve_bytes
                    ),
                });
            }
            if self.disk_budget_bytes < segment_min {
                return Err(ConfigError::Invalid {
                    field: "disk_budget_bytes",
                    reason: format!(
                        "{} cannot hold one segment with the largest chunk ({segment_min} bytes)",
                        self.disk_budget_bytes
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::new(Backend::Segment)
    }
}
