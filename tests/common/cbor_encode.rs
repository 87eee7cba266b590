//! A small DAG-CBOR writer, so tests build frames from the lexicon rather than from captures.

/// One value to encode.
#[derive(Debug, Clone)]
pub enum Cbor {
    /// An unsigned integer, shortest form.
    Uint(u64),
    /// An unsigned integer in the 8-byte form (relay seqs: the loopback relay rewrites them in place).
    Uint64(u64),
    /// A text string.
    Text(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An array.
    Array(Vec<Cbor>),
    /// A map with text keys, written in the given order.
    Map(Vec<(String, Cbor)>),
}

/// A text value.
pub fn text(value: &str) -> Cbor {
    Cbor::Text(value.to_string())
}

/// A map from `(key, value)` pairs.
pub fn map<const N: usize>(pairs: [(&str, Cbor); N]) -> Cbor {
    Cbor::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

/// Appends `value`'s encoding to `out`.
pub fn encode(out: &mut Vec<u8>, value: &Cbor) {
    match value {
        Cbor::Uint(n) => head(out, 0, *n),
        Cbor::Uint64(n) => {
            out.push(0x1b);
            out.extend(n.to_be_bytes());
        }
        Cbor::Text(t) => {
            head(out, 3, t.len() as u64);
            out.extend(t.as_bytes());
        }
        Cbor::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend(b);
        }
        Cbor::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Cbor::Null => out.push(0xf6),
        Cbor::Array(items) => {
            head(out, 4, items.len() as u64);
            for item in items {
                encode(out, item);
            }
        }
        Cbor::Map(pairs) => {
            head(out, 5, pairs.len() as u64);
            for (key, v) in pairs {
                encode(out, &Cbor::Text(key.clone()));
                encode(out, v);
            }
        }
    }
}

/// A stream frame: header `{t, op: 1}` then `body`.
pub fn message_frame(t: &str, body: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, &map([("t", text(t)), ("op", Cbor::Uint(1))]));
    encode(&mut out, body);
    out
}
