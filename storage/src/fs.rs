//! The file layer every segment-file and directory operation of the log goes through.
//!
//! [`RealFs`] is the default and calls the OS. Tests plug in a layer that fails
//! the Nth write, fsync or read, or simulates a power loss (`testing::FailingFs`,
//! built with the `testing` feature only, so not linked here), in the manner of redb's
//! `StorageBackend` and Vector's disk_v2 `Filesystem`.
//!
//! The trait works at file granularity: the hot append path pays one dynamic call
//! per `write_buffer_bytes` write (1 MiB by default), not per record. Reads map
//! windows through [`FileHandle::map`], so the mapped bytes come from the same
//! handle the layer opened.
//!
//! The sled manifest does its own I/O and cannot go through the layer; the
//! `manifest_*` hooks let a test layer fail its flushes and snapshot it.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

/// One open file of the log.
pub trait FileHandle: Send + Sync + Debug {
    /// Reads at `offset`; returns the bytes read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (positioned: a retry overwrites a partial write).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and its size) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Maps `len` bytes from `offset` read-only.
    fn map(&self, offset: u64, len: usize) -> io::Result<Mmap>;
    /// Asks the kernel to start writing bytes `offset..offset + len` to the disk, without
    /// waiting: a hint so the next sync has less left to wait for. Durability is only
    /// ever claimed after [`FileHandle::sync_data`]; the default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Allocates disk blocks for bytes `from..to` (zeros), so the space is held, not sparse.
    fn allocate(&self, from: u64, to: u64) -> io::Result<()> {
        const PIECE_BYTES: u64 = 256 * 1024;
        let zeros = vec![0u8; PIECE_BYTES.min(to.saturating_sub(from)) as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(PIECE_BYTES) as usize;
            self.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Space on the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    /// The filesystem's size in bytes.
    pub total_bytes: u64,
}

/// The operations the log needs from the filesystem.
pub trait Filesystem: Send + Sync + Debug {
    /// Creates a directory and its parents; returns whether `path` was created (it did not exist).
    fn create_dir_all(&self, path: &Path) -> io::Result<bool>;
    /// Creates a new file for reading and writing; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    /// Opens an existing file, for reading, and for writing when `writable`.
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn FileHandle>>;
    /// Removes a file (durable after [`Filesystem::sync_dir`] of its directory).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file or directory (durable after [`Filesystem::sync_dir`] of both parents).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// The paths of the entries of a directory, in no order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Makes creations and removals in a directory durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Free and total space of the filesystem holding `path` (`statvfs`).
    fn space(&self, path: &Path) -> io::Result<Space>;
    /// Called before the sled manifest in `dir` flushes; an error refuses the flush.
    fn manifest_flushing(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    /// Called after the sled manifest in `dir` flushed successfully.
    fn manifest_flushed(&self, _dir: &Path) {}
}

/// The operating system's filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

/// A file of [`RealFs`].
#[derive(Debug)]
pub struct RealFile(File);

impl RealFile {
    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.0
    }
}

impl FileHandle for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn allocate(&self, from: u64, to: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = to.saturating_sub(from);
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(len))
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        // SAFETY: the descriptor is open for writing for as long as `self` lives.
        match unsafe { libc::posix_fallocate(self.0.as_raw_fd(), offset, len) } {
            0 => Ok(()),
            // Filesystems without fallocate: write the zeros.
            libc::EOPNOTSUPP | libc::EINVAL => {
                let zeros = vec![0u8; 256 * 1024];
                let mut at = from;
                while at < to {
                    let n = (to - at).min(zeros.len() as u64) as usize;
                    self.0.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Ok(());
        };
        // SAFETY: the descriptor is open for as long as `self` lives; the call only starts
        // writeback of dirty pages in the range and touches no memory of ours.
        match unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    fn map(&self, offset: u64, len: usize) -> io::Result<Mmap> {
        // SAFETY: segment files are only appended to while open, and cut only by
        // recovery before any map exists or by an append's rollback past every byte
        // a read was handed (reads map below the length already written); removing a
        // file keeps existing maps valid. Another process truncating the file would
        // break this, which is why the manifest's lock keeps one owner.
        unsafe { MmapOptions::new().offset(offset).len(len).map(&self.0) }
    }
}

impl Filesystem for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<bool> {
        if path.is_dir() {
            return Ok(false);
        }
        std::fs::create_dir_all(path)?;
        Ok(true)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn FileHandle>> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn space(&self, path: &Path) -> io::Result<Space> {
        statvfs(path)
    }
}

/// `statvfs(2)` of the filesystem holding `path`.
// The field types are u64 on 64-bit Linux but narrower elsewhere: `u64::from` widens portably.
#[allow(clippy::useless_conversion)]
pub(crate) fn statvfs(path: &Path) -> io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is NUL-terminated and stat points to writable memory of the right type.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    let block = u64::from(stat.f_frsize);
    Ok(Space {
        free_bytes: u64::from(stat.f_bavail).saturating_mul(block),
        total_bytes: u64::from(stat.f_blocks).saturating_mul(block),
    })
}

/// Whether an I/O error means the filesystem is out of space (ENOSPC) or quota (EDQUOT).
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

/// Positioned reads, for code that reads both plain files (inspect) and layer handles.
pub(crate) trait ReadAt {
    /// Reads at `offset`; returns the bytes read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills `buf` from `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for dyn FileHandle + '_ {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileHandle::read_at(self, buf, offset)
    }
}

/// A `Read + Seek` cursor over a [`ReadAt`], for buffered sequential scans.
pub(crate) struct Cursor<'a, F: ReadAt + ?Sized> {
    file: &'a F,
    offset: u64,
}

impl<'a, F: ReadAt + ?Sized> Cursor<'a, F> {
    pub(crate) fn new(file: &'a F) -> Self {
        Cursor { file, offset: 0 }
    }
}

impl<F: ReadAt + ?Sized> io::Read for Cursor<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl<F: ReadAt + ?Sized> io::Seek for Cursor<'_, F> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        match pos {
            io::SeekFrom::Start(at) => self.offset = at,
            io::SeekFrom::Current(delta) => {
                self.offset = self.offset.checked_add_signed(delta).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
                })?
            }
            io::SeekFrom::End(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "seek from the end",
                ))
            }
        }
        Ok(self.offset)
    }
}
