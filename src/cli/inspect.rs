//! `spillway inspect DATA_DIR`: the queues, consumers, segments and cursors of a data directory, offline and read-only.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spillway::queue::inspect::{inspect, QueueInspection};
use spillway::source::cursor::CursorFile;
use spillway::source::repo_listing::{ListingPosition, PositionFile};
use spillway_storage::inspect::{InspectOptions, VerifyReport, COPY_BYTES_MAX_DEFAULT};

/// Arguments of `spillway inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A data directory (`data_dir` of the config: `queue-<host>/` and `cursor-<host>`), or one queue directory.
    pub data_dir: PathBuf,
    /// Also read every chunk and check its checksums; reports each damaged range. Exits non-zero on damage.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bytes: the most inspect copies to open a queue's sled manifest read-only.
    #[arg(long, default_value_t = COPY_BYTES_MAX_DEFAULT)]
    pub copy_bytes_max: u64,
    /// Repair each queue so `spillway run` opens it: segment files with no intact chunk are
    /// moved into `<queue>/damaged/`, a damaged or missing manifest is rebuilt from the
    /// segment files (the old one moved aside), lost ranges are recorded. Deletes nothing.
    /// Writes to the directory: refused while a `spillway run` holds it.
    #[arg(long, conflicts_with = "verify")]
    pub repair: bool,
}

/// Segments printed per queue in text output (first and last halves); JSON lists all.
const SEGMENTS_SHOWN_MAX: usize = 20;
/// How often the progress line is redrawn on a terminal, or logged otherwise.
const PROGRESS_EVERY_TTY: Duration = Duration::from_millis(100);
const PROGRESS_EVERY_LOG: Duration = Duration::from_secs(2);

/// Runs `spillway inspect`.
///
/// # Errors
/// No queue in the directory, an unreadable queue, or (with `--verify`) damage found.
pub fn run_inspect(args: &InspectArgs) -> std::io::Result<()> {
    let queues = queue_dirs(&args.data_dir)?;
    if queues.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} holds no queue (no manifest/, sled/ or segments/ in it, and no queue-*/ directory)",
            args.data_dir.display()
        )));
    }
    if args.repair {
        return repair(&args.data_dir, &queues);
    }
    let options = InspectOptions {
        copy_bytes_max: args.copy_bytes_max,
    };
    let mut damaged = 0;
    let mut json_queues = Vec::new();
    for dir in &queues {
        let queue = inspect(dir, options)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
        let report = if args.verify {
            Some(verify_with_progress(&queue)?)
        } else {
            None
        };
        damaged += report.as_ref().map_or(0, |r| r.damage.len());
        if args.json {
            json_queues.push(queue_json(&queue, report.as_ref()));
        } else {
            print_queue(&queue, report.as_ref());
        }
    }
    let cursors = cursor_files(&args.data_dir)?;
    let bad_cursors: Vec<String> = cursors
        .iter()
        .filter_map(|(_, value)| value.as_ref().err().cloned())
        .collect();
    let shown = |value: &Result<u64, String>| match value {
        Ok(cursor) => cursor.to_string(),
        Err(error) => format!("UNREADABLE: {error}"),
    };
    if args.json {
        let cursors: Vec<_> = cursors
            .iter()
            .map(|(name, value)| match value {
                Ok(cursor) => serde_json::json!({"file": name, "cursor": cursor.to_string()}),
                Err(error) => serde_json::json!({"file": name, "cursor": null, "error": error}),
            })
            .collect();
        let holder = spillway::data_dir_lock::DataDirLock::holder(&args.data_dir);
        let listings: Vec<_> = listing_positions(&args.data_dir)?
            .into_iter()
            .map(|(name, value)| match value {
                Ok(p) => {
                    serde_json::json!({"file": name, "ordinal": p.ordinal, "cursor": p.cursor})
                }
                Err(error) => serde_json::json!({"file": name, "ordinal": null, "error": error}),
            })
            .collect();
        let out = serde_json::json!({"queues": json_queues, "relay_cursors": cursors, "listing_positions": listings, "held_by_pid": holder});
        println!("{out:#}");
    } else if !cursors.is_empty() {
        println!("relay and labeler (cursor-labels-*) cursors (the durable watermark a restart resumes from):");
        for (name, value) in &cursors {
            println!("  {name}: {}", shown(value));
        }
    }
    if !args.json {
        let listings = listing_positions(&args.data_dir)?;
        if !listings.is_empty() {
            println!(
                "repo listing positions (a restart lists from the cursor, after the ordinal):"
            );
            for (name, value) in &listings {
                match value {
                    Ok(p) => println!("  {name}: ordinal {} cursor {:?}", p.ordinal, p.cursor),
                    Err(error) => println!("  {name}: UNREADABLE: {error}"),
                }
            }
        }
    }
    if let Some(pid) = spillway::data_dir_lock::DataDirLock::holder(&args.data_dir) {
        if !args.json {
            println!("held by a running spillway (pid {pid}): figures may move while read");
        }
    }
    if args.verify && !bad_cursors.is_empty() {
        return Err(std::io::Error::other(format!(
            "verify found {} bad relay cursor file(s): {}",
            bad_cursors.len(),
            bad_cursors.join("; ")
        )));
    }
    if damaged > 0 {
        return Err(std::io::Error::other(format!(
            "verify found {damaged} damaged range(s); the records in them cannot be read"
        )));
    }
    Ok(())
}

/// The queue directories under `dir`: itself if it is one, else its `queue-*` children.
fn queue_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    // A queue whose manifest is gone still has its segments: that is a queue to verify and repair.
    let is_queue = |d: &Path| {
        d.join("manifest").is_dir() || d.join("sled").is_dir() || d.join("segments").is_dir()
    };
    if is_queue(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?
    {
        let path = entry?.path();
        let named_queue = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("queue-"));
        if named_queue && is_queue(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `cursor-*` files in the data directory with their values, or why each cannot be used
/// (the error names the file).
fn cursor_files(dir: &Path) -> std::io::Result<Vec<(String, Result<u64, String>)>> {
    let mut out = Vec::new();
    if dir.join("manifest").is_dir() || dir.join("sled").is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?
    {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with("cursor-") || name.ends_with(".tmp") {
            continue;
        }
        let value = match CursorFile::at(&path).load() {
            Ok(Some(cursor)) => Ok(cursor),
            // Removed between the listing and the read.
            Ok(None) => continue,
            Err(error) => Err(error.to_string()),
        };
        out.push((name.to_string(), value));
    }
    out.sort();
    Ok(out)
}

/// `listing-*` files (the repo listings' positions) in the data directory, or why each
/// cannot be read (the error names the file).
#[allow(clippy::type_complexity)]
fn listing_positions(
    dir: &Path,
) -> std::io::Result<Vec<(String, Result<ListingPosition, String>)>> {
    let mut out = Vec::new();
    if !dir.is_dir() || dir.join("manifest").is_dir() || dir.join("sled").is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?
    {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with("listing-") || name.ends_with(".tmp") {
            continue;
        }
        let value = match PositionFile::at(&path).load() {
            Ok(Some(position)) => Ok(position),
            Ok(None) => continue,
            Err(error) => Err(error.to_string()),
        };
        out.push((name.to_string(), value));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn verify_with_progress(queue: &QueueInspection) -> std::io::Result<VerifyReport> {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        PROGRESS_EVERY_TTY
    } else {
        PROGRESS_EVERY_LOG
    };
    let dir = queue.log.dir.display().to_string();
    let mut last = Instant::now();
    let mut progress = |done: u64, total: u64| {
        if last.elapsed() < every && done < total {
            return;
        }
        last = Instant::now();
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        if tty {
            let filled = (percent / 5) as usize;
            eprint!(
                "\rverifying {dir} [{}{}] {percent:>3}% {} / {}",
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20)),
                mib(done),
                mib(total)
            );
        } else {
            tracing::info!(queue = %dir, done_bytes = done, total_bytes = total, percent, "verifying");
        }
    };
    let report = queue
        .log
        .verify(&mut progress)
        .map_err(|e| std::io::Error::other(format!("verifying {dir}: {e}")))?;
    if tty {
        eprintln!();
    }
    Ok(report)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_queue(queue: &QueueInspection, report: Option<&VerifyReport>) {
    let log = &queue.log;
    println!(
        "queue {} ({} backend, format v{}){}",
        log.dir.display(),
        log.backend.as_str(),
        log.format_version,
        if log.held_by_process {
            ", held by a running process: read from a copy of its manifest"
        } else {
            ""
        }
    );
    println!(
        "  records on disk: {} unconsumed (log seq {}..{}), {} in {} segment(s)",
        log.unconsumed_records(),
        log.consumed_seq,
        log.next_seq,
        mib(log.disk_bytes),
        log.segments.len()
    );
    if queue.consumers.is_empty() {
        println!("  consumers: none saved");
    }
    for consumer in &queue.consumers {
        println!(
            "  consumer {:?}: acked below queue seq {}, log position {}, {} unacked on disk",
            consumer.name, consumer.acked_seq_next, consumer.log_position, consumer.unacked_on_disk
        );
    }
    if queue.replay_rules > 0 {
        println!("  replay rules: {}", queue.replay_rules);
    }
    let shown = SEGMENTS_SHOWN_MAX / 2;
    for (index, segment) in log.segments.iter().enumerate() {
        if log.segments.len() > SEGMENTS_SHOWN_MAX && index == shown {
            println!("    ... {} more", log.segments.len() - 2 * shown);
        }
        if log.segments.len() > SEGMENTS_SHOWN_MAX
            && index >= shown
            && index < log.segments.len() - shown
        {
            continue;
        }
        let end = segment
            .next_seq
            .map_or_else(|| "?".to_string(), |s| s.to_string());
        let size = segment
            .file_bytes
            .map_or_else(|| "MISSING".to_string(), mib);
        let state = if segment.sealed { "sealed" } else { "active" };
        println!(
            "    {}  seq {}..{end}  {state}  {size}",
            segment.path.display(),
            segment.first_seq
        );
    }
    for file in &log.unlisted_files {
        println!(
            "    {} (not in the manifest: the next open adopts it if it is an interrupted roll's new file, else rebuilds the manifest; it removes none holding unconsumed records)",
            file.display()
        );
    }
    if let Some(why) = &log.manifest_damage {
        println!("  manifest: DAMAGED: {why} (the next open rebuilds it from the segment files; `spillway inspect --repair` does it offline)");
    }
    if let Some(note) = &log.tail_note {
        println!("  tail: {note}");
    }
    if let Some(report) = report {
        println!(
            "  verify: {} chunks, {} records, {} checked; {}",
            report.chunks_ok,
            report.records_ok,
            mib(report.bytes_checked),
            if report.damage.is_empty() {
                "no damage".to_string()
            } else {
                format!("{} DAMAGED range(s):", report.damage.len())
            }
        );
        for damage in &report.damage {
            let end = damage
                .seqs
                .1
                .map_or_else(|| "end of file".to_string(), |s| s.to_string());
            println!(
                "    {} at offset {}: log records {}..{end}: {}",
                damage.location, damage.offset, damage.seqs.0, damage.reason
            );
        }
        if let Some(torn) = &report.torn_tail {
            println!(
                "    torn tail in {} at offset {} (records from {}): {} (not damage: never synced, the next open cuts it)",
                torn.location, torn.offset, torn.seqs.0, torn.reason
            );
        }
    }
}

fn queue_json(queue: &QueueInspection, report: Option<&VerifyReport>) -> serde_json::Value {
    let log = &queue.log;
    let damage_json = |d: &spillway_storage::inspect::Damage| {
        serde_json::json!({
            "location": d.location, "offset": d.offset,
            "first_seq": d.seqs.0, "end_seq": d.seqs.1, "reason": d.reason,
        })
    };
    let segments: Vec<_> = log
        .segments
        .iter()
        .map(|s| {
            serde_json::json!({
                "path": s.path, "first_seq": s.first_seq, "next_seq": s.next_seq,
                "file_bytes": s.file_bytes, "sealed": s.sealed,
            })
        })
        .collect();
    serde_json::json!({
        "dir": log.dir,
        "backend": log.backend.as_str(),
        "format_version": log.format_version,
        "held_by_process": log.held_by_process,
        "consumed_seq": log.consumed_seq,
        "next_seq": log.next_seq,
        "unconsumed_records": log.unconsumed_records(),
        "disk_bytes": log.disk_bytes,
        "segments": segments,
        "unlisted_files": log.unlisted_files,
        "tail_note": log.tail_note,
        "manifest_damage": log.manifest_damage,
        "consumers": queue.consumers,
        "replay_rules": queue.replay_rules,
        "verify": report.map(|r| serde_json::json!({
            "chunks_ok": r.chunks_ok, "records_ok": r.records_ok, "bytes_checked": r.bytes_checked,
            "damage": r.damage.iter().map(damage_json).collect::<Vec<_>>(),
            "torn_tail": r.torn_tail.as_ref().map(damage_json),
        })),
    })
}

/// `inspect --repair`: makes every queue of the directory open again, keeping every intact record.
fn repair(data_dir: &Path, queues: &[PathBuf]) -> std::io::Result<()> {
    let holders = [Some(data_dir), data_dir.parent()];
    if let Some(pid) = holders
        .into_iter()
        .flatten()
        .find_map(spillway::data_dir_lock::DataDirLock::holder)
    {
        return Err(std::io::Error::other(format!(
            "another spillway (pid {pid}) holds {}; stop it before repairing",
            data_dir.display()
        )));
    }
    for dir in queues {
        let mut config = spillway::queue::QueueConfig::new();
        if dir.join("sled").is_dir() {
            config.log.backend = spillway_storage::Backend::Sled;
        }
        let report = spillway_storage::inspect::repair(dir, config.log.clone())
            .map_err(|e| std::io::Error::other(format!("repairing {}: {e}", dir.display())))?;
        if report.recovery.manifest_rebuilt.is_some() {
            // The rebuilt manifest lost the queue's named positions, its envelope-layout
            // marker among them; the records are this build's layout (see SpillQueue::open).
            let log = spillway_storage::open(dir, config.log.clone())
                .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
            log.save_position(
                spillway::queue::envelope::ENVELOPE_VERSION_KEY,
                spillway::queue::envelope::ENVELOPE_VERSION,
            )
            .and_then(|()| log.flush().map(|_| ()))
            .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
        }
        // The queue above the log opens too (its envelope marker, its consumers).
        let queue = spillway::queue::SpillQueue::open(dir, config).map_err(|e| {
            std::io::Error::other(format!(
                "{} was repaired but its queue does not open: {e}",
                dir.display()
            ))
        })?;
        queue
            .flush()
            .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))?;
        drop(queue);
        println!("{}: repaired", dir.display());
        for moved in &report.moved_aside {
            println!("  moved aside (no intact record): {}", moved.display());
        }
        if let Some(why) = &report.recovery.manifest_rebuilt {
            println!("  manifest rebuilt from the segment files: {why}");
        }
        for lost in &report.recovery.lost {
            println!(
                "  lost log records {}..{} ({} at byte {}: {}); `spillway run` fetches them again from the relay where it can",
                lost.seqs.first, lost.seqs.next, lost.location, lost.offset, lost.reason
            );
        }
        if report.recovery.truncated_bytes > 0 {
            println!(
                "  cut a torn tail of {} bytes (never synced) from {}",
                report.recovery.truncated_bytes,
                report
                    .recovery
                    .truncated_segment
                    .as_ref()
                    .map_or_else(String::new, |p| p.display().to_string())
            );
        }
    }
    Ok(())
}
