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
