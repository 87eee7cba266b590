//! Random append / read / consume / flush / reopen sequences against a `VecDeque` model, for both backends.

mod common;

use std::collections::VecDeque;

use proptest::prelude::*;
use spillway_storage::{open, Backend, ReadError, SpillLog};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u16>),
    Read {
        offset: u16,
        max_records: u8,
        max_bytes: u16,
    },
    Consume(u16),
    Flush,
    Reopen,
    SavePosition(u8, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0u16..900, 0..40).prop_map(Op::Append),
        4 => (any::<u16>(), 0u8..20, 0u16..3000).prop_map(|(offset, max_records, max_bytes)| Op::Read { offset, max_records, max_bytes }),
        2 => any::<u16>().prop_map(Op::Consume),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => (0u8..4, any::<u16>()).prop_map(|(n, s)| Op::SavePosition(n, s)),
    ]
}

fn record_for(seq: u64, len: u16) -> Vec<u8> {
    (0..len as usize)
        .map(|i| (seq as usize * 31 + i) as u8)
        .collect()
}

fn run(backend: Backend, ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::small_config(backend);
    let mut log: Box<dyn SpillLog> = open(dir.path(), config.clone()).expect("open");
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut first: u64 = 0;
    let mut positions = std::collections::BTreeMap::new();
    for op in ops {
        match op {
            Op::Append(lens) => {
                let next = first + model.len() as u64;
                let records: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| record_for(next + i as u64, l))
                    .collect();
                let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
                let range = log.append(&refs).expect("append");
                assert_eq!(
                    (range.first, range.next),
                    (next, next + records.len() as u64)
                );
                model.extend(records);
            }
            Op::Read {
                offset,
                max_records,
                max_bytes,
            } => {
                let span = model.len() as u64 + 1;
                let from = first + u64::from(offset) % span;
                let batch = log
                    .read(from, max_records as usize, u64::from(max_bytes))
                    .expect("read");
                let available = (first + model.len() as u64 - from) as usize;
                if max_records > 0 && available > 0 {
                    assert!(!batch.is_empty(), "read from {from} returned nothing");
                }
                assert!(batch.len() <= max_records as usize);
                assert_eq!(batch.first_seq(), from);
                let mut bytes_before_last = 0u64;
                for (i, (seq, bytes)) in batch.iter().enumerate() {
                    assert_eq!(seq, from + i as u64);
                    assert_eq!(bytes, &model[(seq - first) as usize][..], "record {seq}");
                    if i + 1 < batch.len() {
                        bytes_before_last += bytes.len() as u64;
                    }
                }
                // Byte bound: the batch stops at the first record that reaches max_bytes.
                assert!(bytes_before_last < u64::from(max_bytes).max(1) || batch.len() <= 1);
            }
            Op::Consume(n) => {
                let upto = first + u64::from(n) % (model.len() as u64 + 1);
                log.consume_until(upto).expect("consume");
                while first < upto {
                    model.pop_front();
                    first += 1;
                }
                if first > 0 {
                    match log.read(first - 1, 1, 1) {
                        Err(ReadError::OutOfRange { .. }) => {}
                        other => panic!("reading a consumed seq gave {other:?}"),
                    }
                }
            }
            Op::Flush => {
                let durable = log.flush().expect("flush");
                assert_eq!(durable, first + model.len() as u64);
            }
            Op::Reopen => {
                drop(log);
                log = open(dir.path(), config.clone()).expect("reopen");
                assert!(
                    !log.recovery_report().repaired(),
                    "a clean close needs no repair: {:?}",
                    log.recovery_report()
                );
            }
            Op::SavePosition(name, seq) => {
                let name = format!("consumer-{name}");
                log.save_position(&name, u64::from(seq))
                    .expect("save position");
                positions.insert(name, u64::from(seq));
            }
        }
        let stats = log.stats();
        assert_eq!(stats.first_seq, first);
        assert_eq!(stats.next_seq, first + model.len() as u64);
        let stored: std::collections::BTreeMap<String, u64> =
            log.positions().expect("positions").into_iter().collect();
        assert_eq!(stored, positions);
    }
    let all = common::read_all(log.as_ref(), first);
    assert_eq!(all.len(), model.len());
    for ((seq, bytes), expected) in all.iter().zip(model.iter()) {
        assert_eq!(&bytes[..], &expected[..], "record {seq}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn segment_log_matches_a_vecdeque(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::Segment, ops);
    }

    #[test]
    fn sled_log_matches_a_vecdeque(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::Sled, ops);
    }
}
