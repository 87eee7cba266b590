//! The spill path side by side with yaque (a disk-backed queue users pick today) and a
//! plain file, same records, same batch size, same durability (none inside the timed
//! region: yaque never fsyncs; ours runs with `manual` durability and is not flushed).
//! Every event goes to disk: ours runs write-through, as yaque does. Median of 3 rounds.
//!
//! `cargo bench --bench queue_vs_yaque` (env `EVENTS`, default 1000000 x 512 B; `ROUNDS`,
//! default 3; `ONLY=spillway` runs our queue alone, for profiling its read-back).

use std::time::Instant;

use spillway::bench::log as logbench;
use spillway::bench::queue::{bench_config, events, BATCH_EVENTS};
use spillway::queue::{SpillMode, SpillQueue};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn ours(total: u64, size: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = bench_config(64 * 1024 * 1024);
    config.spill_mode = SpillMode::WriteThrough;
    let queue = SpillQueue::open(dir.path(), config).expect("open");
    let mut consumer = queue.consumer("bench").expect("consumer");
    let template = events(0, BATCH_EVENTS, size);
    let started = Instant::now();
    for _ in 0..total / BATCH_EVENTS as u64 {
        queue.push_batch(template.clone()).await.expect("push");
    }
    let write = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut received = 0;
    while received < total {
        let batch = consumer
            .next_batch(BATCH_EVENTS, u64::MAX)
            .await
            .expect("read");
        received += batch.len() as u64;
        consumer.ack(batch.last().expect("batch").seq).expect("ack");
    }
    (write, started.elapsed().as_secs_f64())
}

async fn yaque(total: u64, size: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sender, mut receiver) = yaque::channel(dir.path().join("q")).expect("yaque channel");
    let template: Vec<Vec<u8>> = events(0, BATCH_EVENTS, size)
        .into_iter()
        .map(|e| e.payload.to_vec())
        .collect();
    let started = Instant::now();
    for _ in 0..total / BATCH_EVENTS as u64 {
        sender.send_batch(template.iter()).await.expect("send");
    }
    let write = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut received = 0;
    while received < total {
        let guard = receiver.recv_batch(BATCH_EVENTS).await.expect("recv");
        received += guard.len() as u64;
        guard.commit().expect("commit");
    }
    (write, started.elapsed().as_secs_f64())
}

fn main() {
    let total: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let size = 512usize;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let only_ours = std::env::var("ONLY").is_ok_and(|v| v == "spillway");
    let mb = (total * size as u64) as f64 / 1e6;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut ours_w, mut ours_r, mut yaque_w, mut yaque_r, mut plain_w, mut plain_r) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let (w, r) = runtime.block_on(ours(total, size));
        ours_w.push(mb / w);
        ours_r.push(mb / r);
        if only_ours {
            eprintln!(
                "round {round}: spillway write {:.1} MB/s, read-back + ack {:.1} MB/s",
                mb / w,
                mb / r
            );
            continue;
        }
        let (w, r) = runtime.block_on(yaque(total, size));
        yaque_w.push(mb / w);
        yaque_r.push(mb / r);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain.log");
        plain_w.push(
            logbench::plain_append(&file, total, size)
                .expect("plain append")
                .mb_per_s(),
        );
        plain_r.push(logbench::plain_read(&file).expect("plain read").mb_per_s());
        eprintln!("round {round} done");
    }
    if only_ours {
        return;
    }
    let (ow, or, yw, yr, pw, pr) = (
        median(ours_w),
        median(ours_r),
        median(yaque_w),
        median(yaque_r),
        median(plain_w),
        median(plain_r),
    );
    println!("spill path, {total} x {size} B, batches of {BATCH_EVENTS}, no fsync in the timed region, median of {rounds}");
    println!(
        "{:<34} {:>10} {:>12} {:>10} {:>10}",
        "", "MB/s", "events/s", "vs yaque", "vs plain"
    );
    let row = |name: &str, rate: f64, yaque: f64, plain: f64| {
        println!(
            "{name:<34} {rate:>10.1} {:>12.0} {:>9.2}x {:>9.2}x",
            rate * 1e6 / size as f64,
            rate / yaque,
            rate / plain
        );
    };
    row("spillway write (write-through)", ow, yw, pw);
    row("yaque send_batch", yw, yw, pw);
    row("plain BufWriter append", pw, yw, pw);
    row("spillway read-back + ack", or, yr, pr);
    row("yaque recv_batch + commit", yr, yr, pr);
    row("plain sequential read", pr, yr, pr);
}
