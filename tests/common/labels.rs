//! `subscribeLabels` frames built from the lexicon with our own CBOR writer, the entry
//! the rsky ingester writes for each (with its own serde definitions), and a loopback
//! labeler serving them.

use std::sync::Arc;

use bytes::Bytes;
use spillway::source::relay::{Fault, LoopbackRelay, RelayConfig};

use super::cbor_encode::{map, message_frame, text, Cbor};

/// rsky-ingester's `LabelStreamEvent`, as its `lib.rs` declares it.
#[derive(serde::Serialize)]
struct LabelStreamEvent {
    seq: i64,
    labels: Vec<Label>,
}

/// rsky-ingester's `Label`, as its `lib.rs` declares it (`cts` is
/// `rsky_lexicon::com::atproto::label::Label::cts.to_string()`, a chrono `DateTime<Utc>`).
#[derive(serde::Serialize)]
struct Label {
    src: String,
    uri: String,
    cid: Option<String>,
    val: String,
    neg: Option<bool>,
    cts: String,
}

/// A label's `cts` as the frame carries it, and as chrono's `Display` shows the same
/// instant in UTC (worked out by hand here, so the test does not lean on chrono).
pub fn cts_forms(i: u64, j: u64) -> (String, String) {
    let day = 1 + i % 28;
    let (h, m, s) = (10 + j, i % 60, (i * 7) % 60);
    match (i + j) % 4 {
        0 => {
            let ms = 1 + i % 999;
            (
                format!("2024-05-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"),
                format!("2024-05-{day:02} {h:02}:{m:02}:{s:02}.{ms:03} UTC"),
            )
        }
        1 => (
            format!("2024-05-{day:02}T{h:02}:{m:02}:{s:02}Z"),
            format!("2024-05-{day:02} {h:02}:{m:02}:{s:02} UTC"),
        ),
        2 => {
            let us = 123_457 + i;
            assert_ne!(
                us % 1000,
                0,
                "a microsecond fraction that chrono shows in 6 digits"
            );
            (
                format!("2024-05-{day:02}T{h:02}:{m:02}:{s:02}.{us:06}Z"),
                format!("2024-05-{day:02} {h:02}:{m:02}:{s:02}.{us:06} UTC"),
            )
        }
        _ => (
            // An offset: chrono converts to UTC, two hours earlier.
            format!("2024-05-{day:02}T{h:02}:{m:02}:{s:02}.250+02:00"),
            format!("2024-05-{day:02} {:02}:{m:02}:{s:02}.250 UTC", h - 2),
        ),
    }
}

/// `count` `#labels` frames (seq 1..=count, each with 1 to 3 labels of every shape the
/// lexicon allows) and the `label_live` entry rsky writes for each.
pub fn label_frames(count: u64) -> (Vec<Bytes>, Vec<String>) {
    let values = ["spam", "!hide", "porn", "rude"];
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for i in 0..count {
        let seq = i + 1;
        let mut cbor_labels = Vec::new();
        let mut labels = Vec::new();
        for j in 0..1 + i % 3 {
            let src = format!("did:plc:labeler{}", i % 2);
            let uri = if j == 2 {
                format!("did:plc:user{i}")
            } else {
                format!("at://did:plc:user{i}/app.bsky.feed.post/3k{j}")
            };
            let cid =
                (j == 1).then(|| format!("bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxg{i:06}"));
            let neg = match (i + j) % 3 {
                0 => None,
                1 => Some(true),
                _ => Some(false),
            };
            let val = values[((i + j) % 4) as usize].to_string();
            let (cts, shown) = cts_forms(i, j);
            let mut pairs = vec![
                ("ver".to_string(), Cbor::Uint(1)),
                ("src".to_string(), text(&src)),
                ("uri".to_string(), text(&uri)),
                ("val".to_string(), text(&val)),
                ("cts".to_string(), text(&cts)),
                ("sig".to_string(), Cbor::Bytes(vec![i as u8; 64])),
            ];
            if let Some(cid) = &cid {
                pairs.push(("cid".to_string(), text(cid)));
            }
            match neg {
                Some(neg) => pairs.push(("neg".to_string(), Cbor::Bool(neg))),
                // Absent or null: both are `None` to rsky.
                None if i % 2 == 0 => pairs.push(("neg".to_string(), Cbor::Null)),
                None => {}
            }
            if j == 0 && i % 5 == 0 {
                pairs.push(("exp".to_string(), text("2030-01-01T00:00:00Z")));
            }
            cbor_labels.push(Cbor::Map(pairs));
            labels.push(Label {
                src,
                uri,
                cid,
                val,
                neg,
                cts: shown,
            });
        }
        // The 8-byte seq lets the loopback relay rewrite it in place, as it does relay frames.
        let body = map([
            ("seq", Cbor::Uint64(seq)),
            ("labels", Cbor::Array(cbor_labels)),
        ]);
        frames.push(Bytes::from(message_frame("#labels", &body)));
        let event = LabelStreamEvent {
            seq: seq as i64,
            labels,
        };
        expected.push(serde_json::to_string(&event).expect("serialises"));
    }
    (frames, expected)
}

pub async fn start_labeler(frames: Vec<Bytes>, faults: Vec<(u64, Fault)>) -> LoopbackRelay {
    let config = RelayConfig {
        total_events: Some(frames.len() as u64),
        frames: Arc::new(frames),
        base_seq: 1,
        events_per_sec: None,
        slow_consumer_ms: 5_000,
        faults,
    };
    LoopbackRelay::start(config)
        .await
        .expect("loopback labeler")
}
