//! The real relay frames.

pub fn frames_bin() -> Vec<u8> {
    std::fs::read(path("frames.bin")).expect("tests/fixtures/frames.bin")
}

/// A file in `tests/fixtures/`.
pub fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A loopback relay replaying the real frames from `base_seq`, `total` of them.
pub fn relay_config(base_seq: u64, total: u64) -> spillway::source::relay::RelayConfig {
    let mut config = spillway::source::relay::RelayConfig::from_capture(&frames_bin(), base_seq)
        .expect("tests/fixtures/frames.bin");
    config.total_events = Some(total);
    config
}

/// The fixture's first `count` real frames as deliveries numbered from 1, each positioned at its seq.
pub fn deliveries(count: usize, pushed_at_us: u64) -> Vec<spillway::queue::Delivery> {
    let capture = frames_bin();
    let frames = spillway::source::frame::split_capture(&capture, usize::MAX).expect("frames");
    frames
        .iter()
        .take(count)
        .enumerate()
        .map(|(index, frame)| spillway::queue::Delivery {
            seq: index as u64 + 1,
            position: spillway::source::frame::decode(frame, usize::MAX)
                .expect("a fixture frame decodes")
                .seq()
                .expect("a fixture frame has a seq"),
            pushed_at_us,
            payload: bytes::Bytes::copy_from_slice(frame),
        })
        .collect()
}
