//! Criterion: spill-log append and read-back of 512 B and 4 KiB records, each group with
//! the plain `BufWriter` append / sequential read of the same records as its baseline.
//! The 1e6..1e7-record figures (peak RSS, open time, disk ratio) come from `spillway bench log`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spillway::bench::log as logbench;
use spillway::storage::Backend;

const BYTES_PER_ITERATION: u64 = 64 * 1024 * 1024;

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for size in [512usize, 4096] {
        let records = BYTES_PER_ITERATION / size as u64;
        group.throughput(Throughput::Bytes(records * size as u64));
        group.bench_function(BenchmarkId::new("plain-bufwriter", size), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let started = Instant::now();
                    logbench::plain_append(&dir.path().join("plain.log"), records, size)
                        .expect("plain append");
                    total += started.elapsed();
                }
                total
            })
        });
        for backend in [Backend::Segment, Backend::Sled] {
            group.bench_function(BenchmarkId::new(backend.as_str(), size), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().expect("tempdir");
                        let started = Instant::now();
                        logbench::log_append(backend, dir.path(), records, size, |_| {})
                            .expect("log append");
                        total += started.elapsed();
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

fn read_back(c: &mut Criterion) {
    let mut group = c.benchmark_group("read-back");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for size in [512usize, 4096] {
        let records = BYTES_PER_ITERATION / size as u64;
        group.throughput(Throughput::Bytes(records * size as u64));
        let plain_dir = tempfile::tempdir().expect("tempdir");
        let plain_file = plain_dir.path().join("plain.log");
        logbench::plain_append(&plain_file, records, size).expect("plain append");
        group.bench_function(BenchmarkId::new("plain-sequential", size), |b| {
            b.iter(|| logbench::plain_read(&plain_file).expect("plain read"))
        });
        for backend in [Backend::Segment, Backend::Sled] {
            let dir = tempfile::tempdir().expect("tempdir");
            logbench::log_append(backend, dir.path(), records, size, |_| {}).expect("log append");
            let (_, log) = logbench::log_open(backend, dir.path()).expect("open");
            group.bench_function(BenchmarkId::new(backend.as_str(), size), |b| {
                b.iter(|| logbench::log_read(log.as_ref(), size, "read").expect("log read"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append, read_back);
criterion_main!(benches);
