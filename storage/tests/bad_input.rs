//! Edge inputs: empty and oversized records, tiny reads, a full disk budget, bad configuration.

mod common;

use spillway_storage::{open, AppendError, Backend, ConfigError, Durability, LogConfig, OpenError};

const BACKENDS: [Backend; 2] = [Backend::Segment, Backend::Sled];

/// One bad edit of a valid configuration.
type ConfigChange = Box<dyn Fn(&mut LogConfig)>;

#[test]
fn zero_length_records_round_trip() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), common::small_config(backend)).expect("open");
        let range = log.append(&[b"".as_slice(), b"x", b""]).expect("append");
        assert_eq!((range.first, range.next), (0, 3));
        let batch = log.read(0, 10, 1000).expect("read");
        let got: Vec<Vec<u8>> = batch.iter().map(|(_, b)| b.to_vec()).collect();
        assert_eq!(got, vec![vec![], b"x".to_vec(), vec![]], "{backend:?}");
    }
}

#[test]
fn a_record_over_the_limit_is_refused_and_nothing_of_its_batch_is_written() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = common::small_config(backend);
        let log = open(dir.path(), config.clone()).expect("open");
        let big = vec![1u8; config.record_bytes_max as usize + 1];
        match log.append(&[b"ok".as_slice(), &big]) {
            Err(AppendError::RecordTooLarge { index: 1, len, max }) => {
                assert_eq!(len, big.len());
                assert_eq!(max, config.record_bytes_max);
            }
            other => panic!("{backend:?}: expected RecordTooLarge, got {other:?}"),
        }
        assert_eq!(log.stats().next_seq, 0);
        let at_limit = vec![2u8; config.record_bytes_max as usize];
        log.append(&[at_limit.as_slice()])
            .expect("a record at the limit fits");
        assert_eq!(
            log.read(0, 1, 1).expect("read").get(0),
            Some(at_limit.as_slice())
        );
    }
}

#[test]
fn a_read_smaller_than_one_record_returns_that_record() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), common::small_config(backend)).expect("open");
        let record = vec![9u8; 1000];
        log.append(&[record.as_slice(), record.as_slice()])
            .expect("append");
        let batch = log.read(0, 10, 1).expect("read");
        assert_eq!(batch.len(), 1, "{backend:?}");
        assert_eq!(batch.get(0), Some(record.as_slice()));
        let batch = log.read(0, 10, 0).expect("read with zero bytes");
        assert_eq!(
            batch.len(),
            1,
            "{backend:?}: a zero byte budget still yields one record"
        );
        assert!(log.read(0, 0, 1000).expect("zero records").is_empty());
    }
}

#[test]
fn a_full_disk_budget_refuses_appends_until_space_is_reclaimed() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = common::small_config(backend);
        config.disk_budget_bytes = match backend {
            Backend::Segment => 32 * 1024,
            // sled's own files start at several hundred KiB.
            Backend::Sled => 4 * 1024 * 1024,
        };
        let log = open(dir.path(), config.clone()).expect("open");
        let record = vec![3u8; 1000];
        let mut appended = 0u64;
        let full = loop {
            match log.append(&[record.as_slice(), record.as_slice()]) {
                Ok(range) => appended = range.next,
                Err(e) => break e,
            }
            assert!(
                appended < 100_000,
                "{backend:?}: the budget was never reached"
            );
        };
        match full {
            AppendError::Full {
                needed_bytes,
                available_bytes,
                budget_bytes,
            } => {
                assert_eq!(budget_bytes, config.disk_budget_bytes);
                assert!(needed_bytes > available_bytes);
            }
            other => panic!("{backend:?}: expected Full, got {other:?}"),
        }
        assert_eq!(
            log.stats().next_seq,
            appended,
            "a refused batch adds nothing"
        );
        if backend == Backend::Segment {
            assert!(log.stats().disk_bytes <= config.disk_budget_bytes);
            log.consume_until(appended).expect("consume");
            log.append(&[record.as_slice()])
                .expect("space was reclaimed");
        }
        // Everything accepted before the refusal is intact.
        let from = log.stats().first_seq;
        for (seq, bytes) in common::read_all(log.as_ref(), from) {
            assert!(seq >= appended || bytes == record.as_slice());
        }
    }
}

#[test]
fn bad_configuration_values_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, ConfigChange)> = vec![
        ("disk_budget_bytes", Box::new(|c| c.disk_budget_bytes = 0)),
        ("record_bytes_max", Box::new(|c| c.record_bytes_max = 0)),
        ("write_buffer_bytes", Box::new(|c| c.write_buffer_bytes = 0)),
        ("chunk_bytes_target", Box::new(|c| c.chunk_bytes_target = 1)),
        (
            "durability",
            Box::new(|c| c.durability = Durability::Periodic { interval_ms: 0 }),
        ),
        ("read_window_bytes", Box::new(|c| c.read_window_bytes = 16)),
        ("segment_bytes_max", Box::new(|c| c.segment_bytes_max = 100)),
        (
            "record_bytes_max",
            Box::new(|c| c.record_bytes_max = u32::MAX),
        ),
    ];
    for (field, mutate) in cases {
        let mut config = LogConfig::new(Backend::Segment);
        mutate(&mut config);
        match open(dir.path(), config) {
            Err(OpenError::Config(ConfigError::Invalid { field: f, .. })) => assert_eq!(f, field),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
    assert!(Durability::parse("periodic:abc").is_err());
    assert!(Backend::parse("rocksdb").is_err());
    assert_eq!(
        Durability::parse("periodic:25"),
        Ok(Durability::Periodic { interval_ms: 25 })
    );
}

#[test]
fn positions_are_bounded_in_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::small_config(Backend::Segment);
    config.positions_max = 2;
    let log = open(dir.path(), config).expect("open");
    log.save_position("a", 1).expect("a");
    log.save_position("b", 2).expect("b");
    log.save_position("a", 3)
        .expect("updating a known name is fine");
    assert!(log.save_position("c", 4).is_err());
    log.remove_position("b").expect("remove");
    log.save_position("c", 4).expect("room again");
}
