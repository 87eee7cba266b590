//! `spillway capture` records a relay's stream; `spillway decode` turns a capture into JSON lines.

mod common;

use std::process::{Command, Output};

use spillway::source::relay::{LoopbackRelay, RelayConfig};

const FIRST_SEQ: u64 = 31_527_015_322;

fn spillway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .expect("run spillway")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_the_relay_is_the_fixture_byte_for_byte_and_decodes_like_it() {
    let fixture = common::fixture::frames_bin();
    let mut config = RelayConfig::from_capture(&fixture, FIRST_SEQ).expect("fixture");
    config.total_events = Some(150);
    let relay = LoopbackRelay::start(config).await.expect("relay");
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("capture.bin");
    let (url, path) = (relay.url(), capture.display().to_string());
    let cursor = (FIRST_SEQ - 1).to_string();
    let out = tokio::task::spawn_blocking(move || {
        spillway(&[
            "capture", &url, "--output", &path, "--cursor", &cursor, "--frames", "150",
        ])
    })
    .await
    .expect("capture");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("captured 150 frames"));
    // The relay replays the frames with their own seqs, so the capture is the fixture.
    assert_eq!(std::fs::read(&capture).expect("capture"), fixture);

    let path = capture.display().to_string();
    let decoded = spillway(&["decode", &path]);
    assert!(decoded.status.success(), "{}", text(&decoded.stderr));
    let blank = |l: &str| {
        let at = l.find("\"time_us\":").expect("time_us") + 10;
        let end = at + l[at..].find(',').expect("comma");
        format!("{}0{}", &l[..at], &l[end..])
    };
    let ours: Vec<String> = text(&decoded.stdout).lines().map(blank).collect();
    let expected: Vec<String> = std::fs::read_to_string(common::fixture::path("expected_v1.jsonl"))
        .expect("expected")
        .lines()
        .map(blank)
        .collect();
    assert_eq!(ours, expected);

    let raw = spillway(&["decode", "--format", "raw", &path]);
    assert_eq!(text(&raw.stdout).lines().count(), 150);
    let likes = spillway(&["decode", "--collections", "app.bsky.feed.like", &path]);
    let likes = text(&likes.stdout);
    assert!(likes.lines().count() > 0);
    // As Jetstream does, identity and account events pass a collection filter.
    assert!(likes
        .lines()
        .all(|l| l.contains("\"collection\":\"app.bsky.feed.like\"")
            || l.contains("\"kind\":\"identity\"")
            || l.contains("\"kind\":\"account\"")));
}

#[test]
fn bad_captures_and_frames_get_clear_errors_and_the_rest_is_still_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = common::fixture::frames_bin();
    let truncated = dir.path().join("truncated.bin");
    std::fs::write(&truncated, &fixture[..fixture.len() - 7]).expect("write");
    let out = spillway(&["decode", &truncated.display().to_string()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("capture ends inside the frame"),
        "{}",
        text(&out.stderr)
    );

    // One garbage frame in the middle: an error naming it; the others are decoded.
    let frames = spillway::source::frame::split_capture(&fixture, usize::MAX).expect("split");
    let mut mixed = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let garbage = [0xa2u8, 0x62, b'o', b'p', 0x01, 0xff];
        let bytes: &[u8] = if i == 3 { &garbage } else { frame };
        spillway::source::frame::write_capture_frame(&mut mixed, bytes).expect("write");
    }
    let mixed_path = dir.path().join("mixed.bin");
    std::fs::write(&mixed_path, mixed).expect("write");
    let out = spillway(&["decode", &mixed_path.display().to_string()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1 of 150 frames did not decode"),
        "{stderr}"
    );
    assert!(stderr.contains("frame=3"), "{stderr}");
    assert!(text(&out.stdout).lines().count() >= 149);

    let out = spillway(&[
        "decode",
        "--format",
        "xml",
        &mixed_path.display().to_string(),
    ]);
    assert!(text(&out.stderr).contains("not an output format"));
}
