//! Free space on the log's filesystem: the reserve file, the free-space check before
//! an append, and the effective disk budget.
//!
//! A full disk is a full budget, not a crash: an append that would not fit in the
//! free space (less a margin kept for the sled manifest) is refused with
//! `AppendError::NoSpace` before anything is written, so ENOSPC itself is rare.
//! `DIR/reserve` holds `reserve_bytes` of zeros while space allows; when opening
//! or consuming meets ENOSPC the reserve is removed and the step retried once, so
//! a log on a full disk can still open and drain (draining frees space, and the
//! reserve is made again once it fits).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::StorageError;
use crate::fs::Filesystem;

/// The reserve file's name inside the log directory.
pub(crate) const RESERVE_FILE_NAME: &str = "reserve";

/// How long a `statvfs` result is trusted before it is taken again.
const SPACE_REFRESH: Duration = Duration::from_secs(1);

/// The reserve file of a log directory.
#[derive(Debug, Clone)]
pub(crate) struct Reserve {
    dir: PathBuf,
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    pub(crate) fn new(dir: &Path, bytes: u64) -> Self {
        Reserve {
            dir: dir.to_path_buf(),
            path: dir.join(RESERVE_FILE_NAME),
            bytes,
        }
    }

    /// Makes the reserve file hold `reserve_bytes` when the filesystem has room for
    /// it plus `margin_bytes`; returns whether the reserve is in place.
    ///
    /// Allocated with `posix_fallocate` (a sparse `set_len` would reserve nothing), then synced.
    pub(crate) fn ensure(
        &self,
        fs: &dyn Filesystem,
        margin_bytes: u64,
    ) -> Result<bool, StorageError> {
        if self.bytes == 0 {
            return Ok(true);
        }
        let io = StorageError::io(&self.path);
        let (file, len) = match fs.open(&self.path, true) {
            Ok(file) => {
                let len = file.len().map_err(StorageError::io(&self.path))?;
                (Some(file), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(io(e)),
        };
        if len >= self.bytes {
            return Ok(true);
        }
        let missing = self.bytes - len;
        let free = fs
            .space(&self.dir)
            .map_err(StorageError::io(&self.dir))?
            .free_bytes;
        if free < missing.saturating_add(margin_bytes) {
            // Debug: reclaims try again after every freed segment; open warns once.
            tracing::debug!(
                path = %self.path.display(),
                reserve_bytes = self.bytes,
                free_bytes = free,
                "not enough free space for the reserve file yet"
            );
            return Ok(false);
        }
        let created = file.is_none();
        let file = match file {
            Some(file) => file,
            None => fs
                .create_new(&self.path)
                .map_err(StorageError::io(&self.path))?,
        };
        let written = file
            .allocate(len, self.bytes)
            .and_then(|()| file.sync_all());
        if let Err(error) = written {
            // Half a reserve is still space held back from the log; give it back.
            drop(file);
            self.release(fs)?;
            if crate::fs::is_no_space(&error) {
                tracing::warn!(path = %self.path.display(), "the disk filled while writing the reserve file; removed it");
                return Ok(false);
            }
            return Err(StorageError::io(&self.path)(error));
        }
        if created {
            fs.sync_dir(&self.dir)
                .map_err(StorageError::io(&self.dir))?;
        }
        Ok(true)
    }

    /// Whether the reserve file is missing or short (a full disk took it), so the next
    /// [`Reserve::ensure`] needs free space. A failed look counts as missing.
    pub(crate) fn is_missing(&self, fs: &dyn Filesystem) -> bool {
        self.bytes > 0
            && fs
                .open(&self.path, false)
                .and_then(|file| file.len())
                .map_or(true, |len| len < self.bytes)
    }

    /// Removes the reserve file, freeing its space; returns whether there was one.
    pub(crate) fn release(&self, fs: &dyn Filesystem) -> Result<bool, StorageError> {
        if self.bytes == 0 {
            return Ok(false);
        }
        match fs.remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StorageError::io(&self.path)(e)),
        }
        fs.sync_dir(&self.dir)
            .map_err(StorageError::io(&self.dir))?;
        tracing::warn!(
            path = %self.path.display(),
            reserve_bytes = self.bytes,
            "the disk is full: removed the reserve file so the log can open and drain"
        );
        Ok(true)
    }
}

/// The free space last measured, and the effective disk budget it gives.
#[derive(Debug)]
pub(crate) struct SpaceGauge {
    dir: PathBuf,
    budget_bytes: u64,
    margin_bytes: u64,
    /// When `free_bytes` was measured (None: never, or the measure failed).
    measured_at: Option<Instant>,
    free_bytes: u64,
    /// The log's bytes on disk when `free_bytes` was measured.
    disk_bytes_at_measure: u64,
    effective_budget_bytes: u64,
    warned_cap: bool,
}

impl SpaceGauge {
    pub(crate) fn new(dir: &Path, budget_bytes: u64, margin_bytes: u64) -> Self {
        SpaceGauge {
            dir: dir.to_path_buf(),
            budget_bytes,
            margin_bytes,
            measured_at: None,
            free_bytes: u64::MAX,
            disk_bytes_at_measure: 0,
            effective_budget_bytes: budget_bytes,
            warned_cap: false,
        }
    }

    /// Takes `statvfs` again and recomputes the effective budget.
    ///
    /// A failing `statvfs` (an unusual filesystem) leaves the space unknown, so
    /// nothing is refused for it: ENOSPC itself is still handled.
    pub(crate) fn measure(&mut self, fs: &dyn Filesystem, disk_bytes: u64) {
        match fs.space(&self.dir) {
            Ok(space) => {
                self.free_bytes = space.free_bytes;
                self.disk_bytes_at_measure = disk_bytes;
                self.measured_at = Some(Instant::now());
                let capped = disk_bytes
                    .saturating_add(space.free_bytes.saturating_sub(self.margin_bytes))
                    .min(self.budget_bytes);
                if capped < self.budget_bytes && !self.warned_cap {
                    self.warned_cap = true;
                    tracing::warn!(
                        dir = %self.dir.display(),
                        disk_budget_bytes = self.budget_bytes,
                        disk_budget_bytes_effective = capped,
                        free_bytes = space.free_bytes,
                        "disk_budget_bytes {} capped to {capped} by the free space on {}",
                        self.budget_bytes,
                        self.dir.display()
                    );
                }
                self.effective_budget_bytes = capped;
            }
            Err(error) => {
                tracing::debug!(dir = %self.dir.display(), %error, "statvfs failed; free space unknown");
                self.measured_at = None;
                self.free_bytes = u64::MAX;
                self.effective_budget_bytes = self.budget_bytes;
            }
        }
    }

    /// Measures again if the last measure is older than a second.
    pub(crate) fn refresh(&mut self, fs: &dyn Filesystem, disk_bytes: u64) {
        if self
            .measured_at
            .is_none_or(|at| at.elapsed() >= SPACE_REFRESH)
        {
            self.measure(fs, disk_bytes);
        }
    }

    /// Free bytes now, estimated from the last measure and what the log wrote since.
    pub(crate) fn free_bytes_estimate(&self, disk_bytes: u64) -> u64 {
        self.free_bytes
            .saturating_sub(disk_bytes.saturating_sub(self.disk_bytes_at_measure))
    }

    /// `Err(free_bytes)` when `needed_bytes` plus the margin does not fit in the free
    /// space; measured again before refusing, so a refusal is never on a stale figure.
    pub(crate) fn check_fits(
        &mut self,
        fs: &dyn Filesystem,
        disk_bytes: u64,
        needed_bytes: u64,
    ) -> Result<(), u64> {
        self.refresh(fs, disk_bytes);
        let wanted = needed_bytes.saturating_add(self.margin_bytes);
        if self.free_bytes_estimate(disk_bytes) >= wanted {
            return Ok(());
        }
        self.measure(fs, disk_bytes);
        let free = self.free_bytes_estimate(disk_bytes);
        if free >= wanted {
            Ok(())
        } else {
            Err(free)
        }
    }

    /// The last free-space figure (u64::MAX when unknown).
    pub(crate) fn last_free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// `min(disk_budget_bytes, log bytes + free bytes - margin)` as of the last measure.
    pub(crate) fn effective_budget_bytes(&self) -> u64 {
        self.effective_budget_bytes
    }

    /// The free-space margin an append leaves.
    pub(crate) fn margin_bytes(&self) -> u64 {
        self.margin_bytes
    }
}
