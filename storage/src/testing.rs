//! Test layers (feature `testing`, never in release builds): a [`Filesystem`] that
//! fails the Nth write, fsync, set_len or read, and simulates a power loss.
//!
//! [`FailingFs`] runs on the real filesystem and keeps, beside it, what a power
//! loss would leave (the way redb's `crash_consistency` test keeps live and durable
//! contents apart):
//! - a file keeps exactly its content as of its last successful fsync (empty if never synced);
//! - a file created, or a directory made, whose parent directory was not synced
//!   after it vanishes; a file removed or renamed without a directory sync after
//!   comes back (under its old name) with its last synced content;
//! - the sled manifest, which does its own I/O, is copied after every successful
//!   flush (a hook) and the last copy restored.
//!
//! A power loss is armed at the Nth mutating operation: from that operation on,
//! every call through the layer fails with EIO (the machine is off), the test
//! drops the log, and [`FailingFs::apply_power_loss`] rewrites the disk to its
//! durable state before the log is reopened with the real layer.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::Mmap;

use crate::fs::{FileHandle, Filesystem, RealFs, Space};

/// The kinds of operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// A write to a file, or a file creation.
    Write,
    /// An fsync of a file or of a directory.
    Sync,
    /// A file cut or extended.
    SetLen,
    /// A read of a file or a mapped window.
    Read,
    /// A flush of the sled manifest.
    ManifestFlush,
}

const OPS: [Op; 5] = [Op::Write, Op::Sync, Op::SetLen, Op::Read, Op::ManifestFlush];

/// A directory's files and their bytes.
type TreeCopy = Vec<(PathBuf, Vec<u8>)>;

#[derive(Debug, Default)]
struct State {
    /// Calls per kind since the layer was made.
    counts: BTreeMap<Op, u64>,
    /// Mutating calls (every kind but reads) since the layer was made.
    mutations: u64,
    /// One-shot failures: the call of `op` numbered `nth` fails with `errno`.
    failures: Vec<(Op, u64, i32)>,
    /// Power goes off at this mutating call.
    power_loss_at: Option<u64>,
    /// The power is off: every call fails.
    dead: bool,
    /// Faults that fired.
    fired: u64,
    /// What `space` reports as free instead of the truth.
    free_bytes: Option<u64>,
    /// Durable content per file identity.
    durable_content: Vec<Vec<u8>>,
    /// Path -> file identity as the live filesystem has it.
    live: BTreeMap<PathBuf, usize>,
    /// Path -> file identity as a power loss would leave it.
    durable: BTreeMap<PathBuf, usize>,
    /// Directories made through the layer whose entry is not yet durable.
    new_dirs: BTreeSet<PathBuf>,
    /// The manifest's directory and its files after the last successful flush.
    manifest_copy: Option<(PathBuf, TreeCopy)>,
    manifest_dir: Option<PathBuf>,
}

impl State {
    /// Counts a call and says whether it fails.
    fn check(&mut self, op: Op) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let count = self.counts.entry(op).or_insert(0);
        *count += 1;
        let nth = *count;
        if op != Op::Read {
            self.mutations += 1;
            if self.power_loss_at == Some(self.mutations) {
                self.dead = true;
                self.fired += 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        if let Some(at) = self
            .failures
            .iter()
            .position(|&(o, n, _)| o == op && n == nth)
        {
            let (_, _, errno) = self.failures.remove(at);
            self.fired += 1;
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    /// The identity of `path`, adopting a file that existed before as durable in full.
    fn identity(&mut self, path: &Path) -> io::Result<usize> {
        if let Some(&id) = self.live.get(path) {
            return Ok(id);
        }
        let content = std::fs::read(path)?;
        let id = self.durable_content.len();
        self.durable_content.push(content);
        self.live.insert(path.to_path_buf(), id);
        self.durable.insert(path.to_path_buf(), id);
        Ok(id)
    }
}

/// A [`Filesystem`] over the real one that fails chosen calls and simulates power loss.
///
/// Cloning shares the state: keep a clone to arm faults and apply the power loss
/// after handing one to the log.
#[derive(Debug, Clone, Default)]
pub struct FailingFs {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FailingFs {
    /// A layer with no fault armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `nth` call (1-based, counted since the layer was made) of `op` fail once with `errno`.
    pub fn fail_nth(&self, op: Op, nth: u64, errno: i32) {
        lock(&self.state).failures.push((op, nth, errno));
    }

    /// Turns the power off at the `nth` mutating call (every kind but reads, 1-based).
    pub fn power_loss_at(&self, nth: u64) {
        lock(&self.state).power_loss_at = Some(nth);
    }

    /// Takes the sled manifest in `dir`, written and closed before this layer, as durable as it is.
    ///
    /// # Errors
    /// An I/O failure while copying it.
    pub fn adopt_manifest(&self, dir: &Path) -> io::Result<()> {
        let mut files = Vec::new();
        copy_tree(dir, &mut files)?;
        let mut state = lock(&self.state);
        state.manifest_dir = Some(dir.to_path_buf());
        state.manifest_copy = Some((dir.to_path_buf(), files));
        Ok(())
    }

    /// Turns the power off now: every later call fails with EIO (call before dropping the log,
    /// so its closing flush cannot make anything durable).
    pub fn power_off(&self) {
        lock(&self.state).dead = true;
    }

    /// Makes `space` report `free_bytes` free (None: the truth).
    pub fn set_free_bytes(&self, free_bytes: Option<u64>) {
        lock(&self.state).free_bytes = free_bytes;
    }

    /// Forgets armed faults that have not fired.
    pub fn disarm(&self) {
        let mut state = lock(&self.state);
        state.failures.clear();
        state.power_loss_at = None;
    }

    /// How many armed faults fired.
    pub fn fired(&self) -> u64 {
        lock(&self.state).fired
    }

    /// Whether the power is off.
    pub fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// Calls of `op` so far.
    pub fn count(&self, op: Op) -> u64 {
        lock(&self.state).counts.get(&op).copied().unwrap_or(0)
    }

    /// Mutating calls so far.
    pub fn mutations(&self) -> u64 {
        lock(&self.state).mutations
    }

    /// Calls of every kind so far, for choosing a fault point.
    pub fn counts(&self) -> Vec<(Op, u64)> {
        OPS.iter().map(|&op| (op, self.count(op))).collect()
    }

    /// Rewrites the disk to what survives a power loss now; drop the log first.
    ///
    /// # Errors
    /// An I/O failure while rewriting.
    pub fn apply_power_loss(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.dead = true;
        let paths: BTreeSet<PathBuf> = state
            .live
            .keys()
            .chain(state.durable.keys())
            .cloned()
            .collect();
        for path in paths {
            match state.durable.get(&path) {
                Some(&id) => std::fs::write(&path, &state.durable_content[id])?,
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        for dir in &state.new_dirs {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match (&state.manifest_copy, &state.manifest_dir) {
            (Some((dir, files)), _) => {
                std::fs::remove_dir_all(dir)?;
                for (path, bytes) in files {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(path, bytes)?;
                }
            }
            // Never flushed: nothing of it is durable.
            (None, Some(dir)) => match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            (None, None) => {}
        }
        Ok(())
    }
}

fn copy_tree(dir: &Path, out: &mut TreeCopy) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_tree(&path, out)?;
        } else {
            out.push((path.clone(), std::fs::read(&path)?));
        }
    }
    Ok(())
}

/// A file of [`FailingFs`].
#[derive(Debug)]
struct FailingFile {
    real: Arc<dyn FileHandle>,
    path: PathBuf,
    id: usize,
    state: Arc<Mutex<State>>,
}

impl FailingFile {
    fn check(&self, op: Op) -> io::Result<()> {
        lock(&self.state).check(op)
    }

    fn synced(&self) -> io::Result<()> {
        let content = std::fs::read(&self.path);
        let mut state = lock(&self.state);
        // A file removed while open keeps its identity; its durable content no longer matters.
        if let Ok(content) = content {
            if state.live.get(&self.path) == Some(&self.id) {
                state.durable_content[self.id] = content;
            }
        }
        Ok(())
    }
}

impl FileHandle for FailingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.check(Op::Read)?;
        self.real.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(Op::Write)?;
        self.real.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check(Op::Sync)?;
        self.real.sync_data()?;
        self.synced()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.check(Op::Sync)?;
        self.real.sync_all()?;
        self.synced()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(Op::SetLen)?;
        self.real.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.real.len()
    }

    fn allocate(&self, from: u64, to: u64) -> io::Result<()> {
        self.check(Op::Write)?;
        self.real.allocate(from, to)
    }

    fn map(&self, offset: u64, len: usize) -> io::Result<Mmap> {
        self.check(Op::Read)?;
        self.real.map(offset, len)
    }
}

impl FailingFs {
    fn wrap(&self, real: Arc<dyn FileHandle>, path: &Path, id: usize) -> Arc<dyn FileHandle> {
        Arc::new(FailingFile {
            real,
            path: path.to_path_buf(),
            id,
            state: Arc::clone(&self.state),
        })
    }
}

impl Filesystem for FailingFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<bool> {
        let mut state = lock(&self.state);
        if state.dead {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let created = RealFs.create_dir_all(path)?;
        if created {
            state.new_dirs.insert(path.to_path_buf());
        }
        Ok(created)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let mut state = lock(&self.state);
        state.check(Op::Write)?;
        let real = RealFs.create_new(path)?;
        let id = state.durable_content.len();
        state.durable_content.push(Vec::new());
        state.live.insert(path.to_path_buf(), id);
        drop(state);
        Ok(self.wrap(real, path, id))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn FileHandle>> {
        let mut state = lock(&self.state);
        if state.dead {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let real = RealFs.open(path, writable)?;
        let id = state.identity(path)?;
        drop(state);
        Ok(self.wrap(real, path, id))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check(Op::Write)?;
        // Adopt a file the layer never saw, so a power loss can bring it back.
        if path.exists() {
            state.identity(path)?;
        }
        RealFs.remove_file(path)?;
        state.live.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check(Op::Write)?;
        if from.is_file() {
            // Adopt a file the layer never saw, so a power loss can undo the rename.
            state.identity(from)?;
        }
        RealFs.rename(from, to)?;
        // Files move in the live view only: until both directories are synced a power
        // loss undoes the rename. Directories (the manifest moved aside) are not tracked.
        if let Some(id) = state.live.remove(from) {
            state.live.insert(to.to_path_buf(), id);
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        lock(&self.state).check(Op::Read)?;
        RealFs.read_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check(Op::Sync)?;
        RealFs.sync_dir(path)?;
        let State { live, durable, .. } = &mut *state;
        durable.retain(|p, _| p.parent() != Some(path));
        for (p, id) in live.iter() {
            if p.parent() == Some(path) {
                durable.insert(p.clone(), *id);
            }
        }
        state.new_dirs.retain(|d| d.parent() != Some(path));
        Ok(())
    }

    fn space(&self, path: &Path) -> io::Result<Space> {
        let state = lock(&self.state);
        if state.dead {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let real = RealFs.space(path)?;
        Ok(match state.free_bytes {
            Some(free_bytes) => Space {
                free_bytes,
                total_bytes: real.total_bytes,
            },
            None => real,
        })
    }

    fn manifest_flushing(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.manifest_dir = Some(dir.to_path_buf());
        state.check(Op::ManifestFlush)
    }

    fn manifest_flushed(&self, dir: &Path) {
        let mut files = Vec::new();
        match copy_tree(dir, &mut files) {
            Ok(()) => lock(&self.state).manifest_copy = Some((dir.to_path_buf(), files)),
            // The test then fails on what the copy missed; say why.
            Err(error) => eprintln!(
                "FailingFs: copying the manifest {} failed: {error}",
                dir.display()
            ),
        }
    }
}
