//! Binary CIDs: their length inside a byte stream, and their text form (base32 `b...` for CIDv1).

use crate::cbor::CborError;

/// The longest digest accepted in a multihash (sha2-512 is 64 bytes).
const DIGEST_BYTES_MAX: u64 = 128;

/// Reads an unsigned LEB128 varint of at most 9 bytes; returns it and its length.
pub(crate) fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(9).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The length of the binary CID at the start of `bytes` (v1: version, codec, multihash; v0: a bare sha2-256 multihash).
///
/// # Errors
/// [`CborError::Malformed`] (with `at` = `offset`) for anything else.
pub fn cid_len(bytes: &[u8], offset: usize) -> Result<usize, CborError> {
    let bad = CborError::Malformed { at: offset };
    if bytes.starts_with(&[0x12, 0x20]) {
        return if bytes.len() >= 34 { Ok(34) } else { Err(bad) };
    }
    let mut at = 0;
    let mut next = || -> Result<u64, CborError> {
        let (value, len) = varint(bytes.get(at..).unwrap_or_default()).ok_or(bad.clone())?;
        at += len;
        Ok(value)
    };
    let version = next()?;
    let _codec = next()?;
    let _hash = next()?;
    let digest = next()?;
    if version != 1 || digest > DIGEST_BYTES_MAX || at + digest as usize > bytes.len() {
        return Err(CborError::Malformed { at: offset });
    }
    Ok(at + digest as usize)
}

/// The text form of a binary CID: multibase base32 lower (`b...`) for CIDv1, base58btc (`Qm...`) for CIDv0.
pub fn cid_string(cid: &[u8]) -> String {
    if cid.len() == 34 && cid.starts_with(&[0x12, 0x20]) {
        return base58btc(cid);
    }
    let mut out = String::with_capacity(1 + cid.len().div_ceil(5) * 8);
    out.push('b');
    base32_lower(cid, &mut out);
    out
}

/// RFC 4648 base32, lower case, without padding.
fn base32_lower(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
}

/// Base58 (Bitcoin alphabet) of a short byte string.
fn base58btc(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(
            digits
                .iter()
                .rev()
                .map(|&d| char::from(ALPHABET[d as usize])),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            let mut out = String::new();
            base32_lower(input.as_bytes(), &mut out);
            assert_eq!(out, expected, "{input}");
        }
    }

    #[test]
    fn cids_render_and_measure() {
        // bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm: dag-cbor, sha2-256.
        let mut cid = vec![0x01, 0x71, 0x12, 0x20];
        cid.extend([0u8; 32]);
        assert_eq!(cid_len(&cid, 0), Ok(36));
        assert!(cid_string(&cid).starts_with("bafyrei"));
        assert_eq!(cid_len(&cid[..20], 0), Err(CborError::Malformed { at: 0 }));
        let mut v0 = vec![0x12, 0x20];
        v0.extend([0u8; 32]);
        assert_eq!(cid_len(&v0, 0), Ok(34));
        assert!(cid_string(&v0).starts_with("Qm"));
    }
}
