//! Random push / next_batch / ack / reopen / crash sequences with several consumers against a model.
//!
//! The model is the source: it numbers events by position, replays everything above
//! the queue's durable watermark after each restart (as a relay would from its
//! cursor), and checks every consumer's deliveries: in order within a run, the
//! right bytes, resuming no later than the last ack, and in the end every
//! position delivered at least once.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use spillway::queue::{Consumer, Event, SpillMode, SpillQueue};

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    Read {
        consumer: usize,
        max_records: u8,
        max_bytes: u16,
    },
    Ack {
        consumer: usize,
        fraction: u8,
    },
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u8..30).prop_map(Op::Push),
        5 => (0usize..2, 1u8..25, 1u16..3000).prop_map(|(consumer, max_records, max_bytes)| Op::Read { consumer, max_records, max_bytes }),
        3 => (0usize..2, 0u8..=4).prop_map(|(consumer, fraction)| Op::Ack { consumer, fraction }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

const NAMES: [&str; 2] = ["indexer", "archiver"];

#[derive(Debug, Default)]
struct ConsumerModel {
    /// Every position delivered, with its seq, in order, this run.
    delivered_this_run: Vec<(u64, u64)>,
    /// Highest position such that it and all before it were acked.
    acked_through: Option<u64>,
    /// Positions ever delivered.
    seen: BTreeMap<u64, u32>,
}

struct Harness {
    dir: tempfile::TempDir,
    mode: SpillMode,
    queue: Option<SpillQueue>,
    consumers: Vec<Consumer>,
    models: Vec<ConsumerModel>,
    next_position: u64,
    memory_tier_bytes: u64,
    /// What the source has persisted: the highest watermark seen; never moves back.
    checkpoint: Option<u64>,
}

impl Harness {
    fn open(&mut self) {
        let mut config = common::small_queue_config(self.memory_tier_bytes);
        config.spill_mode = self.mode;
        let queue = SpillQueue::open(self.dir.path(), config).expect("open");
        self.consumers = NAMES
            .iter()
            .map(|n| queue.consumer(n).expect("attach"))
            .collect();
        for m in &mut self.models {
            m.delivered_this_run.clear();
        }
        self.queue = Some(queue);
    }

    fn queue(&self) -> &SpillQueue {
        self.queue.as_ref().expect("open queue")
    }

    async fn push(&mut self, count: u64) {
        let events: Vec<Event> = (self.next_position..self.next_position + count)
            .map(|p| Event::new(p, common::payload(p)))
            .collect();
        let report = self.queue().push_batch(events).await.expect("push");
        assert!(report.dropped.is_empty());
        assert_eq!((report.to_memory + report.to_disk) as u64, count);
        self.next_position += count;
        let stats = self.queue().stats();
        assert!(
            stats.memory_bytes <= stats.memory_tier_bytes,
            "memory tier over its budget: {stats:?}"
        );
        if self.mode == SpillMode::WriteThrough {
            assert_eq!(stats.memory_events, 0);
        }
    }

    fn read(&mut self, consumer: usize, max_records: usize, max_bytes: u64) {
        let batch = self.consumers[consumer]
            .try_next_batch(max_records, max_bytes)
            .expect("read");
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!(
                "{} read {:?} stats {:?}",
                NAMES[consumer],
                batch
                    .iter()
                    .map(|d| (d.seq, d.position))
                    .collect::<Vec<_>>(),
                self.queue().stats()
            );
        }
        assert!(batch.len() <= max_records);
        let model = &mut self.models[consumer];
        for (i, d) in batch.iter().enumerate() {
            assert_eq!(
                &d.payload[..],
                &common::payload(d.position)[..],
                "payload of position {}",
                d.position
            );
            if let Some(&(last_seq, last_pos)) = model.delivered_this_run.last() {
                assert!(
                    d.seq > last_seq,
                    "{}: seq {} after {last_seq}",
                    NAMES[consumer],
                    d.seq
                );
                // The replay after a restart supersedes stored copies, so positions stay in order too.
                assert!(
                    d.position > last_pos,
                    "{}: position {} after {last_pos}",
                    NAMES[consumer],
                    d.position
                );
            } else if let Some(acked) = model.acked_through {
                // The first delivery of a run resumes no later than the last ack.
                assert!(
                    d.position <= acked + 1,
                    "{}: resumed at {} after acking through {acked}",
                    NAMES[consumer],
                    d.position
                );
            }
            if i == 0 && model.delivered_this_run.is_empty() && model.acked_through.is_none() {
                assert!(
                    d.position <= 1 || model.seen.contains_key(&(d.position - 1)),
                    "gap before {}",
                    d.position
                );
            }
            model.delivered_this_run.push((d.seq, d.position));
            *model.seen.entry(d.position).or_default() += 1;
        }
    }

    fn ack(&mut self, consumer: usize, fraction: u8) {
        let model = &mut self.models[consumer];
        if model.delivered_this_run.is_empty() || fraction == 0 {
            return;
        }
        let index = (model.delivered_this_run.len() * fraction as usize).div_ceil(4) - 1;
        let (seq, position) = model.delivered_this_run[index];
        self.consumers[consumer].ack(seq).expect("ack");
        // Delivered positions are consecutive within a run once the run started at a gapless point.
        model.acked_through = Some(model.acked_through.map_or(position, |a| a.max(position)));
    }

    /// Restarts the queue; the source replays from the watermark it could have checkpointed.
    async fn restart(&mut self, clean: bool) {
        let queue = self.queue.take().expect("open queue");
        if let Some(w) = queue.durable_watermark() {
            assert!(
                self.checkpoint.is_none_or(|c| w >= c),
                "the watermark moved back from {:?} to {w}",
                self.checkpoint
            );
            self.checkpoint = Some(w);
        }
        let checkpoint = self.checkpoint;
        if clean {
            queue.flush().expect("flush");
        }
        self.consumers.clear();
        drop(queue);
        self.open();
        // The source resumes after its checkpoint (a relay replays `cursor=checkpoint`).
        let from = checkpoint.map_or(1, |c| c + 1);
        self.queue().begin_replay(from - 1).expect("begin replay");
        let end = self.next_position;
        self.next_position = from;
        if end > from {
            self.push(end - from).await;
        }
    }

    fn drain_all(&mut self) {
        for consumer in 0..NAMES.len() {
            for _ in 0..100_000 {
                let before = self.models[consumer].delivered_this_run.len();
                self.read(consumer, 64, 1 << 20);
                self.ack(consumer, 4);
                if self.models[consumer].delivered_this_run.len() == before {
                    break;
                }
            }
        }
    }
}

fn run(mode: SpillMode, ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut h = Harness {
            dir: tempfile::tempdir().expect("tempdir"),
            mode,
            queue: None,
            consumers: Vec::new(),
            models: NAMES.iter().map(|_| ConsumerModel::default()).collect(),
            next_position: 1,
            memory_tier_bytes: 6 * 1024,
            checkpoint: None,
        };
        h.open();
        for op in ops {
            match op {
                Op::Push(n) => h.push(u64::from(n)).await,
                Op::Read {
                    consumer,
                    max_records,
                    max_bytes,
                } => h.read(consumer, max_records as usize, u64::from(max_bytes)),
                Op::Ack { consumer, fraction } => h.ack(consumer, fraction),
                Op::Reopen => h.restart(true).await,
                Op::Crash => h.restart(false).await,
            }
        }
        h.drain_all();
        let pushed_through = h.next_position - 1;
        for (i, model) in h.models.iter().enumerate() {
            for position in 1..=pushed_through {
                assert!(
                    model.seen.contains_key(&position),
                    "{} never received position {position} (of {pushed_through})",
                    NAMES[i]
                );
            }
        }
        let stats = h.queue().stats();
        assert_eq!(
            stats.disk_events, 0,
            "everything acked is consumed from the log: {stats:?}"
        );
        assert_eq!(stats.memory_events, 0);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn memory_first_queue_matches_the_model(ops in prop::collection::vec(op(), 1..50)) {
        run(SpillMode::MemoryFirst, ops);
    }

    #[test]
    fn write_through_queue_matches_the_model(ops in prop::collection::vec(op(), 1..50)) {
        run(SpillMode::WriteThrough, ops);
    }
}

/// Found by the model: a restart with events both in memory and spilled.
#[test]
fn restart_with_memory_and_spilled_events_redelivers_without_gap() {
    run(
        SpillMode::MemoryFirst,
        vec![Op::Push(21), Op::Push(15), Op::Reopen],
    );
}
