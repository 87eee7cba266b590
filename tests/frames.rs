//! The real relay frames in `tests/fixtures/frames.bin`, and malformed ones.

use proptest::prelude::*;
use spillway::source::frame::{self, Frame, FrameError};

const MAX: usize = 4 * 1024 * 1024;

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/frames.bin"
    ))
    .expect("fixture")
}

#[test]
fn every_fixture_frame_decodes_with_contiguous_seqs() {
    let bytes = fixture();
    let frames = frame::split_capture(&bytes, MAX).expect("split");
    assert_eq!(frames.len(), 150);
    let mut kinds = std::collections::BTreeMap::new();
    for (i, raw) in frames.iter().enumerate() {
        let decoded = frame::decode(raw, MAX).expect("decode");
        let Frame::Message {
            kind,
            seq,
            did,
            time,
            ..
        } = decoded
        else {
            panic!("frame {i} is an error frame")
        };
        assert_eq!(seq, Some(31527015322 + i as u64));
        assert!(
            did.is_some_and(|d| d.starts_with("did:")),
            "frame {i}: {did:?}"
        );
        assert!(time.is_some_and(|t| t.starts_with("2026-07-04T")));
        *kinds.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(kinds.get("#commit"), Some(&148));
    assert_eq!(kinds.get("#identity"), Some(&1));
    assert_eq!(kinds.get("#account"), Some(&1));
}

#[test]
fn seq_can_be_rewritten_in_place() {
    let bytes = fixture();
    let frames = frame::split_capture(&bytes, MAX).expect("split");
    let mut copy = frames[3].to_vec();
    frame::rewrite_seq(&mut copy, 99_000_000_123).expect("rewrite");
    assert_eq!(
        frame::decode(&copy, MAX).expect("decode").seq(),
        Some(99_000_000_123)
    );
    assert_eq!(copy.len(), frames[3].len());
}

#[test]
fn error_and_info_frames_are_recognised() {
    let error = frame::encode_error_frame("FutureCursor", "Cursor in the future.");
    assert_eq!(
        frame::decode(&error, MAX),
        Ok(Frame::Error {
            error: "FutureCursor",
            message: Some("Cursor in the future.")
        })
    );
    let info = frame::encode_info_frame("OutdatedCursor", "Requested cursor exceeded limit.");
    match frame::decode(&info, MAX).expect("info") {
        Frame::Message {
            kind,
            info_name,
            seq,
            ..
        } => {
            assert_eq!(kind, "#info");
            assert_eq!(info_name, Some("OutdatedCursor"));
            assert_eq!(seq, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_truncation_of_a_real_frame_is_an_error() {
    let bytes = fixture();
    let frames = frame::split_capture(&bytes, MAX).expect("split");
    for raw in frames.iter().take(5) {
        for cut in 0..raw.len() {
            assert!(
                frame::decode(&raw[..cut], MAX).is_err(),
                "a frame cut at {cut} of {} decoded",
                raw.len()
            );
        }
    }
}

#[test]
fn oversized_frames_trailing_bytes_and_indefinite_lengths_are_refused() {
    let bytes = fixture();
    let frames = frame::split_capture(&bytes, MAX).expect("split");
    assert!(matches!(
        frame::decode(frames[0], 100),
        Err(FrameError::TooLarge { .. })
    ));
    let mut trailing = frames[0].to_vec();
    trailing.push(0);
    assert_eq!(
        frame::decode(&trailing, MAX),
        Err(FrameError::TrailingBytes(1))
    );
    assert!(matches!(
        frame::decode(&[0xbf, 0xff], MAX),
        Err(FrameError::Indefinite { at: 0 })
    ));
    // A huge declared length must not allocate or read past the end.
    let huge = [
        0xa2, 0x62, b'o', b'p', 0x01, 0x61, b't', 0x61, b'x', 0xa1, 0x61, b'k', 0x5b, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(matches!(
        frame::decode(&huge, MAX),
        Err(FrameError::Truncated { .. })
    ));
    // Deep nesting is bounded.
    let mut deep = vec![
        0xa2, 0x62, b'o', b'p', 0x01, 0x61, b't', 0x61, b'x', 0xa1, 0x61, b'k',
    ];
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    deep.push(0x00);
    assert_eq!(frame::decode(&deep, MAX), Err(FrameError::TooDeep));
    assert!(matches!(
        frame::split_capture(&[5, 0, 0, 0, 1], MAX),
        Err(FrameError::Truncated { .. })
    ));
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode(&bytes, MAX);
        let _ = frame::peek(&bytes);
    }

    #[test]
    fn flipped_bytes_in_a_real_frame_never_panic(index in 0usize..3000, value in any::<u8>()) {
        let bytes = fixture();
        let frames = frame::split_capture(&bytes, MAX).expect("split");
        let mut raw = frames[1].to_vec();
        let i = index % raw.len();
        raw[i] = value;
        let _ = frame::decode(&raw, MAX);
        let _ = frame::peek(&raw);
    }
}

/// `peek` (what a sink reads per event) gives what `decode` gives, for every real frame,
/// and nothing for error frames or bytes cut inside the header.
#[test]
fn peek_agrees_with_decode_on_every_fixture_frame() {
    let bytes = fixture();
    for raw in frame::split_capture(&bytes, MAX).expect("split") {
        let Frame::Message { kind, seq, did, .. } = frame::decode(raw, MAX).expect("decode") else {
            panic!("a message frame");
        };
        let peek = frame::peek(raw).expect("peek");
        assert_eq!((peek.kind, peek.seq, peek.did), (kind, seq, did));
        let fields = spillway::sink::EventFields::of_frame(raw, 0);
        assert_eq!(
            (fields.kind.as_str(), Some(fields.seq), fields.did.as_str()),
            (kind, seq, did.unwrap_or(""))
        );
        assert_eq!(frame::peek(&raw[..2]), None, "cut inside the header");
    }
    let error = frame::encode_error_frame("FutureCursor", "ahead");
    assert_eq!(frame::peek(&error), None);
    let unknown = spillway::sink::EventFields::of_frame(&error, 7);
    assert_eq!((unknown.seq, unknown.kind.as_str()), (7, "unknown"));
}
