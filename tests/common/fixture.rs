//! The real relay frames.

pub fn frames_bin() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/frames.bin"
    ))
    .expect("tests/fixtures/frames.bin")
}
