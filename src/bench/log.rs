//! The storage benchmark: each backend against a plain `BufWriter` append and a plain
//! sequential read of the same records, measured in the same run.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use spillway_storage::{Backend, Durability, LogConfig, SpillLog};

use super::rss;

/// Records per append call (and per plain-read/append loop step).
pub const BATCH_RECORDS: usize = 1000;
/// Bound of one read call through the log.
pub const READ_BYTES_MAX: u64 = 1024 * 1024;

/// One scenario's figures.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// What ran.
    pub name: String,
    /// Records moved.
    pub records: u64,
    /// Payload bytes moved.
    pub payload_bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak RSS during the scenario, in bytes.
    pub peak_rss_bytes: u64,
    /// Bytes on disk afterwards (0 where not measured).
    pub disk_bytes: u64,
}

impl Figures {
    /// Payload megabytes (1e6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.payload_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// Records per second.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

/// A deterministic record: its seq, then filler.
pub fn fill_record(buf: &mut Vec<u8>, seq: u64, size: usize) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes()[..size.min(8)]);
    buf.resize(size, (seq % 251) as u8);
}

fn measure<T>(
    name: String,
    work: impl FnOnce() -> std::io::Result<(u64, u64, T)>,
) -> std::io::Result<(Figures, T)> {
    rss::reset_peak();
    let started = Instant::now();
    let (records, payload_bytes, out) = work()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        Figures {
            name,
            records,
            payload_bytes,
            seconds,
            peak_rss_bytes: rss::peak_bytes(),
            disk_bytes: 0,
        },
        out,
    ))
}

/// Baseline: `[u32 len][u32 crc]` + record through a 1 MiB `BufWriter`, fdatasync at the end.
pub fn plain_append(path: &Path, records: u64, size: usize) -> std::io::Result<Figures> {
    let (mut figures, ()) = measure(format!("plain append {size} B"), || {
        let mut out = BufWriter::with_capacity(1024 * 1024, File::create(path)?);
        let mut record = Vec::with_capacity(size);
        for seq in 0..records {
            fill_record(&mut record, seq, size);
            out.write_all(&(size as u32).to_le_bytes())?;
            out.write_all(&crc32c::crc32c(&record).to_le_bytes())?;
            out.write_all(&record)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        Ok((records, records * size as u64, ()))
    })?;
    figures.disk_bytes = rss::disk_usage_bytes(path);
    Ok(figures)
}

/// Baseline: reads the plain file back sequentially, checking each record's CRC.
pub fn plain_read(path: &Path) -> std::io::Result<Figures> {
    let (figures, ()) = measure("plain sequential read".into(), || {
        let mut input = BufReader::with_capacity(1024 * 1024, File::open(path)?);
        let mut header = [0u8; 8];
        let mut record = Vec::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        loop {
            match input.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            record.resize(len, 0);
            input.read_exact(&mut record)?;
            if crc32c::crc32c(&record).to_le_bytes() != header[4..8] {
                return Err(std::io::Error::other("plain read: checksum mismatch"));
            }
            records += 1;
            bytes += len as u64;
        }
        Ok((records, bytes, ()))
    })?;
    Ok(figures)
}

/// The configuration the benchmark runs a backend with: defaults, `Manual` durability (one sync at the end, like the baseline).
pub fn bench_config(backend: Backend) -> LogConfig {
    let mut config = LogConfig::new(backend);
    config.durability = Durability::Manual;
    config.disk_budget_bytes = u64::MAX / 2;
    config
}

fn storage_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Appends `records` records of `size` bytes in batches of [`BATCH_RECORDS`], then flushes.
pub fn log_append(
    backend: Backend,
    dir: &Path,
    records: u64,
    size: usize,
    mut progress: impl FnMut(u64),
) -> std::io::Result<Figures> {
    let log = spillway_storage::open(dir, bench_config(backend)).map_err(storage_err)?;
    let (mut figures, ()) = measure(format!("{} append {size} B", backend.as_str()), || {
        let mut batch: Vec<Vec<u8>> = (0..BATCH_RECORDS)
            .map(|_| Vec::with_capacity(size))
            .collect();
        let mut seq = 0;
        while seq < records {
            let n = (records - seq).min(BATCH_RECORDS as u64) as usize;
            for (i, record) in batch.iter_mut().take(n).enumerate() {
                fill_record(record, seq + i as u64, size);
            }
            let refs: Vec<&[u8]> = batch[..n].iter().map(|r| r.as_slice()).collect();
            log.append(&refs).map_err(storage_err)?;
            seq += n as u64;
            progress(seq);
        }
        log.flush().map_err(storage_err)?;
        Ok((records, records * size as u64, ()))
    })?;
    drop(log);
    figures.disk_bytes = rss::disk_usage_bytes(dir);
    Ok(figures)
}

/// Reads every record back through bounded reads without consuming, checking the content.
pub fn log_read(log: &dyn SpillLog, size: usize, name: &str) -> std::io::Result<Figures> {
    let (figures, ()) = measure(name.to_string(), || {
        let end = log.stats().next_seq;
        let mut at = log.stats().first_seq;
        let (mut records, mut bytes) = (0u64, 0u64);
        while at < end {
            let batch = log
                .read(at, BATCH_RECORDS, READ_BYTES_MAX)
                .map_err(storage_err)?;
            for (seq, record) in batch.iter() {
                if record.len() != size || record[..size.min(8)] != seq.to_le_bytes()[..size.min(8)]
                {
                    return Err(std::io::Error::other(format!(
                        "record {seq} read back wrong"
                    )));
                }
                bytes += record.len() as u64;
            }
            records += batch.len() as u64;
            at = batch.next_seq();
        }
        Ok((records, bytes, ()))
    })?;
    Ok(figures)
}

/// Times opening (recovery) of the log in `dir`; returns the figures and the open log.
pub fn log_open(backend: Backend, dir: &Path) -> std::io::Result<(Figures, Box<dyn SpillLog>)> {
    measure(format!("{} open", backend.as_str()), || {
        let log = spillway_storage::open(dir, bench_config(backend)).map_err(storage_err)?;
        let stats = log.stats();
        Ok((stats.records(), stats.payload_bytes, log))
    })
}

/// A scratch directory under `base`, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates `base/name`, emptied first.
    pub fn new(base: &Path, name: &str) -> std::io::Result<Self> {
        let path = base.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
