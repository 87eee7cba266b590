//! The relay cursor persisted per host: the queue's durable watermark, saved atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// A cursor file: one decimal number, replaced atomically (write, fsync, rename, fsync dir).
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The cursor file of relay `host` in `data_dir`.
    pub fn for_host(data_dir: &Path, host: &str) -> Self {
        CursorFile {
            path: data_dir.join(format!("cursor-{}", file_safe(host))),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved cursor, if any.
    ///
    /// # Errors
    /// An unreadable file, or content that is not a number (named in the error).
    pub fn load(&self) -> std::io::Result<Option<u64>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("cursor file {}: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves `cursor` durably, replacing the old value atomically.
    pub fn save(&self, cursor: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{cursor}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
