//! The real fixture frames decoded to Jetstream v1 and rsky JSON match what those
//! servers published for the same frames, byte for byte but for the receive times.

mod common;

use spillway::decode::{render, Filter, OutputFormat};
use spillway::source::frame::split_capture;

const FRAME_BYTES_MAX: usize = 4 << 20;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(common::fixture::path(name)).expect("fixture")
}

fn decode_all(format: OutputFormat, filter: &Filter) -> Vec<String> {
    let bytes = common::fixture::frames_bin();
    let frames = split_capture(&bytes, FRAME_BYTES_MAX).expect("capture");
    let mut lines = Vec::new();
    for frame in frames {
        render(
            frame,
            1_783_175_888_000_000,
            format,
            filter,
            FRAME_BYTES_MAX,
            &mut lines,
        )
        .expect("every fixture frame decodes");
    }
    lines
}

/// `line` with the value after `"key":` at its first occurrence replaced by `X`.
fn without(line: &str, key: &str) -> String {
    let marker = format!("\"{key}\":");
    let Some(start) = line.find(&marker) else {
        return line.to_string();
    };
    let value_start = start + marker.len();
    let rest = &line[value_start..];
    let value_len = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map_or(rest.len(), |end| end + 2)
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    format!("{}X{}", &line[..value_start], &rest[value_len..])
}

#[test]
fn jetstream_output_matches_a_production_jetstream_server_for_all_152_events() {
    let ours = decode_all(OutputFormat::Jetstream, &Filter::default());
    let theirs: Vec<String> = fixture("expected_v1.jsonl")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ours.len(), 152);
    assert_eq!(theirs.len(), 152);
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            without(a, "time_us"),
            without(b, "time_us"),
            "event {index}"
        );
    }
}

#[test]
fn rsky_output_matches_the_rsky_ingesters_stream_entries() {
    let filter = Filter::new(&["app.bsky.*".into(), "chat.bsky.*".into()], &[]).expect("filter");
    let ours = decode_all(OutputFormat::Rsky, &filter);
    let theirs: Vec<String> = fixture("rsky_firehose_live.sample.jsonl")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(theirs.len(), 40);
    // The sample stops at seq 31527015362; up to there we write exactly its 40 entries.
    let up_to_sample = ours
        .iter()
        .filter(|l| {
            let seq: u64 = l["{\"type\":\"".len()..]
                .split("\"seq\":")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.parse().ok())
                .expect("seq");
            seq <= 31_527_015_362
        })
        .count();
    assert_eq!(up_to_sample, 40);
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(without(a, "time"), without(b, "time"), "entry {index}");
    }
}
