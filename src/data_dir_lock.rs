//! One `spillway run` per data directory: an exclusive `flock` on `DATA_DIR/lock`, which
//! holds the owner's pid.
//!
//! The kernel drops a `flock` when its process dies (kill -9 included), so a lock file
//! left behind never blocks a restart. Readers (`spillway inspect`) do not take it.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE_NAME: &str = "lock";

/// Attempts before a held lock is reported: [`DataDirLock::holder`] holds a shared lock
/// for an instant, and a start that meets it must not take it for another process.
const ACQUIRE_ATTEMPTS: u32 = 5;
/// Pause between attempts.
const ACQUIRE_RETRY_MS: u64 = 20;

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    #[error("another spillway (pid {}) holds {}", pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()), dir.display())]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it (`None`: unreadable).
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the exclusive lock of `dir` (which must exist) and writes our pid into it.
    ///
    /// # Errors
    /// [`LockError::Held`] when another process holds it, else an I/O error naming the file.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE_NAME);
        let io = |what| {
            let path = path.clone();
            move |source| LockError::Io { path, what, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening"))?;
        let mut attempt = 1;
        while !try_flock(&file, libc::LOCK_EX).map_err(io("locking"))? {
            if attempt == ACQUIRE_ATTEMPTS {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            attempt += 1;
            std::thread::sleep(std::time::Duration::from_millis(ACQUIRE_RETRY_MS));
        }
        file.set_len(0).map_err(io("truncating"))?;
        file.rewind().map_err(io("rewinding"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing our pid to"))?;
        Ok(DataDirLock { _file: file })
    }

    /// The pid of the process holding `dir`'s lock, if one does (for `inspect`: it writes
    /// nothing, and holds a shared lock only for the instant of the test).
    pub fn holder(dir: &Path) -> Option<u32> {
        let mut file = std::fs::File::open(dir.join(LOCK_FILE_NAME)).ok()?;
        match try_flock(&file, libc::LOCK_SH) {
            // We got it, so nobody holds it; ours goes with the file.
            Ok(true) => None,
            Ok(false) => Some(read_pid(&mut file).unwrap_or(0)),
            Err(_) => None,
        }
    }
}

/// A non-blocking `flock`: `Ok(false)` when another holder has it.
fn try_flock(file: &std::fs::File, operation: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows for the call; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

fn read_pid(file: &mut std::fs::File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first");
        assert_eq!(DataDirLock::holder(dir.path()), Some(std::process::id()));
        let error = DataDirLock::acquire(dir.path()).expect_err("second");
        let text = error.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(first);
        assert_eq!(DataDirLock::holder(dir.path()), None);
        DataDirLock::acquire(dir.path()).expect("free again");
    }
}
