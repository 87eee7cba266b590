//! The frame, CAR and record decoders against garbage, truncation, flipped bytes, huge
//! lengths and deep nesting: they never panic, and never allocate beyond the frame limit
//! (counted by a global allocator).

mod common;

use std::sync::OnceLock;

use common::counting_alloc::{self, CountingAlloc};
use proptest::prelude::*;
use spillway::decode::{decode_frame, render, Filter, OutputFormat};
use spillway::source::frame::split_capture;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The frame size limit under test: small, so the bound is tight against the inputs.
const LIMIT: usize = 64 * 1024;

fn frames() -> &'static Vec<Vec<u8>> {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let bytes = common::fixture::frames_bin();
        split_capture(&bytes, LIMIT)
            .expect("capture")
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    })
}

/// Decodes `frame` every way there is; asserts the decode's heap stays within the limit.
fn check(frame: &[u8]) {
    let filter = Filter::new(&["app.bsky.*".into()], &["did:plc:x".into()]).expect("filter");
    let baseline = counting_alloc::live_bytes();
    counting_alloc::reset_peak();
    let decoded = decode_frame(frame, LIMIT);
    let peak = counting_alloc::peak_bytes().saturating_sub(baseline);
    assert!(
        peak <= LIMIT,
        "decoding a {}-byte frame took {peak} heap bytes, over the {LIMIT}-byte limit ({:?})",
        frame.len(),
        decoded.as_ref().err()
    );
    drop(decoded);
    let _ = filter.wants_frame(frame, LIMIT);
    let mut lines = Vec::new();
    for format in [OutputFormat::Jetstream, OutputFormat::Rsky] {
        let _ = render(frame, 0, format, &Filter::default(), LIMIT, &mut lines);
        let _ = render(frame, 0, format, &filter, LIMIT, &mut lines);
    }
}

/// A CBOR head of `major` with argument `arg`.
fn head(major: u8, arg: u64) -> Vec<u8> {
    let m = major << 5;
    match arg {
        0..=23 => vec![m | arg as u8],
        24..=0xff => vec![m | 24, arg as u8],
        0x100..=0xffff => [vec![m | 25], (arg as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![m | 26], (arg as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 27], arg.to_be_bytes().to_vec()].concat(),
    }
}

fn text(t: &str) -> Vec<u8> {
    [head(3, t.len() as u64), t.as_bytes().to_vec()].concat()
}

/// A `#commit` header followed by `body`.
fn commit_with(body: Vec<u8>) -> Vec<u8> {
    [
        vec![0xa2],
        text("op"),
        vec![0x01],
        text("t"),
        text("#commit"),
        body,
    ]
    .concat()
}

/// Frames built to lie: lengths far past the input, nesting far past the limit.
fn crafted() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for claim in [1u64 << 20, 1 << 32, u64::MAX] {
        // An array, a map, a byte string, and ops claiming `claim` items.
        out.push(commit_with(head(4, claim)));
        out.push(commit_with(head(5, claim)));
        out.push(commit_with(
            [vec![0xa1], text("blocks"), head(2, claim)].concat(),
        ));
        out.push(commit_with(
            [vec![0xa1], text("ops"), head(4, claim)].concat(),
        ));
    }
    for depth in [10usize, 64, 65, 1000, 50_000] {
        let mut nested = vec![0x81u8; depth];
        nested.push(0x00);
        out.push(commit_with(nested.clone()));
        let mut maps = Vec::new();
        for _ in 0..depth {
            maps.extend([0xa1, 0x61, b'a']);
        }
        maps.push(0xf6);
        out.push(commit_with(maps));
        // A tag-42 chain and a CID link nested in a record block.
        out.push(commit_with(
            [[0xd8, 0x2a].repeat(depth), vec![0x40]].concat(),
        ));
    }
    // Many small arrays, each within the input, together far past the limit in values.
    let count = 16_000u64;
    let mut wide = head(4, count);
    for _ in 0..count {
        wide.extend(head(4, 3));
        wide.extend([0, 0, 0]);
    }
    out.push(commit_with(wide));
    // A CAR whose section claims more bytes than there are, and a header varint that never ends.
    let car = [
        vec![0x0a],
        vec![0xa1],
        text("version"),
        vec![0x01],
        vec![0xff; 12],
    ]
    .concat();
    out.push(commit_with(
        [vec![0xa1], text("blocks"), head(2, car.len() as u64), car].concat(),
    ));
    out.push(commit_with(
        [vec![0xa1], text("blocks"), head(2, 10), vec![0xff; 10]].concat(),
    ));
    out
}

/// One test, so no other test thread allocates while the heap is counted.
#[test]
fn decoders_never_panic_and_never_allocate_beyond_the_frame_limit() {
    for frame in frames() {
        check(frame);
        assert!(
            decode_frame(frame, LIMIT).is_ok(),
            "a real frame failed to decode"
        );
    }
    for frame in crafted() {
        check(&frame);
        assert!(
            decode_frame(&frame, LIMIT).is_err(),
            "a crafted frame was accepted: {:?}",
            &frame[..frame.len().min(40)]
        );
    }
    let inputs = (
        0usize..150,
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::collection::vec(any::<u8>(), 0..2048),
        0u8..4,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(600));
    runner
        .run(&inputs, |(pick, cut, flips, garbage, mode)| {
            let real = &frames()[pick % frames().len()];
            let frame: Vec<u8> = match mode {
                0 => garbage,
                1 => real[..cut.index(real.len() + 1)].to_vec(),
                2 => {
                    let mut f = real.clone();
                    for (at, byte) in &flips {
                        let i = at.index(f.len());
                        f[i] = *byte;
                    }
                    f
                }
                _ => [real.as_slice(), garbage.as_slice()].concat(),
            };
            check(&frame);
            Ok(())
        })
        .expect("every input decodes or is refused, within the limit");
}
