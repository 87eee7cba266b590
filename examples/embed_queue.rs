//! Embeds the spilling queue with the lean library (`--no-default-features`): pushes past
//! the memory budget so it spills, reads back through a consumer cursor in bounded
//! batches with acks, is killed with SIGKILL, and reopens with every unacked event there.
//!
//! `cargo run --example embed_queue --no-default-features`
//!
//! The crash is real: the program runs itself as a child process (`EMBED_QUEUE_DIR` set),
//! which fills and reads the queue; the parent kills it mid-run and reopens the directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use spillway::queue::{Event, QueueConfig, SpillQueue};
use spillway::storage::Durability;

/// Events pushed, at source positions 1..=EVENTS.
const EVENTS: u64 = 3_000;
/// Payload of each event.
const PAYLOAD_BYTES: usize = 1024;
/// Events the child acks before the crash.
const ACKED_BEFORE_CRASH: u64 = 1_000;

fn config() -> QueueConfig {
    let mut config = QueueConfig::new();
    // Small log buffers, so a small budget leaves the memory tier a few hundred KiB.
    config.log.record_bytes_max = 16 * 1024;
    config.log.chunk_bytes_target = 16 * 1024;
    config.log.write_buffer_bytes = 64 * 1024;
    config.log.read_window_bytes = 256 * 1024;
    // Every append and ack is synced before it returns: a crash loses nothing acknowledged.
    config.log.durability = Durability::EveryBatch;
    config.memory_budget_bytes = 10 * 1024 * 1024;
    config
}

/// The child: fills the queue past its budget, acks part of it, then waits to be killed.
async fn child(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let queue = SpillQueue::open(dir, config())?;
    let budget = queue.budget();
    println!(
        "opened: budget {} B = log buffers {} B + memory tier {} B",
        budget.total_bytes, budget.log_reserved_bytes, budget.memory_tier_bytes
    );
    let (mut to_memory, mut to_disk) = (0, 0);
    for first in (1..=EVENTS).step_by(100) {
        let batch = (first..first + 100).map(|p| Event::new(p, vec![p as u8; PAYLOAD_BYTES]));
        let report = queue.push_batch(batch.collect()).await?;
        (to_memory, to_disk) = (to_memory + report.to_memory, to_disk + report.to_disk);
    }
    println!("pushed {EVENTS} events: {to_memory} held in memory, {to_disk} spilled to disk");

    let mut consumer = queue.consumer("reader")?;
    let mut acked = 0;
    while acked < ACKED_BEFORE_CRASH {
        // Bounded: at most 256 events and about 64 KiB per batch, from memory or the log.
        let batch = consumer.next_batch(256, 64 * 1024).await?;
        let last = batch.last().ok_or("an empty batch")?;
        consumer.ack(last.seq)?;
        acked = last.position;
    }
    // Delivered but not acked: it comes again after the crash (at least once).
    let unacked = consumer.next_batch(256, 64 * 1024).await?;
    // A crash loses the memory tier's events; the acks freed them all, so the durable
    // watermark (what a replaying source would checkpoint) is the last position pushed.
    let stats = queue.stats();
    println!(
        "acked through position {acked}, {} more delivered unacked; {} events in memory, {} in the log; durable watermark {}",
        unacked.len(),
        stats.memory_events,
        stats.disk_events,
        stats.durable_watermark.unwrap_or(0),
    );
    println!("acked={acked}");
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = std::env::var_os("EMBED_QUEUE_DIR") {
        return child(Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir()?;
    println!("queue directory: {}", dir.path().display());
    let mut run = Command::new(std::env::current_exe()?)
        .env("EMBED_QUEUE_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = BufReader::new(run.stdout.take().ok_or("no child stdout")?);
    let acked = stdout.lines().map_while(Result::ok).find_map(|line| {
        println!("  child: {line}");
        line.strip_prefix("acked=").map(str::to_owned)
    });
    run.kill()?; // SIGKILL: no destructor, no flush, no clean close.
    run.wait()?;
    let acked: u64 = acked.ok_or("the child stopped before it acked")?.parse()?;
    println!("killed the child (SIGKILL)");

    let queue = SpillQueue::open(dir.path(), config())?;
    let mut consumer = queue.consumer("reader")?;
    let mut positions = Vec::new();
    loop {
        let batch = consumer.try_next_batch(256, 64 * 1024)?;
        let Some(last) = batch.last() else { break };
        consumer.ack(last.seq)?;
        positions.extend(batch.iter().map(|d| d.position));
    }
    let expected: Vec<u64> = (acked + 1..=EVENTS).collect();
    println!(
        "reopened: read back {} events, positions {}..={}",
        positions.len(),
        positions.first().unwrap_or(&0),
        positions.last().unwrap_or(&0)
    );
    if positions != expected {
        return Err(format!("expected positions {}..={EVENTS} in order", acked + 1).into());
    }
    println!("every unacked event survived the crash, in order, none twice");
    Ok(())
}
