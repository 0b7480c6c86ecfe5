//! Bencode (BEP 3 "bencoding"): the encoding of `.torrent` files and tracker responses.
//!
//! Written here rather than taken from a crate: the serde-based crates (`serde_bencode`,
//! `serde_bencoded`) encode `[u8]` as a list of integers unless every byte field is wrapped in
//! `serde_bytes`, and BEP 52 torrents need dictionaries keyed by raw 32-byte hashes (`piece
//! layers`) and by the empty string (`file tree`), which serde maps express badly. Four types,
//! keys kept sorted by a `BTreeMap`: the whole codec is smaller than the glue a crate would need.
//!
//! [`Value::decode`] is strict (BEP 3 canonical form: dictionary keys sorted and unique, no
//! leading zeros, no `-0`), so a decoded value encodes back to exactly the bytes it came from,
//! which is what makes an info hash computed from a re-encoded `info` dictionary trustworthy.
use std::collections::BTreeMap;

/// Nesting deeper than this is refused (a torrent's `file tree` for one file is 4 deep).
pub const MAX_DEPTH: usize = 32;

/// One bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why bytes are not canonical bencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bencode ends early")]
    Truncated,
    #[error("unexpected byte at offset {0}")]
    Unexpected(usize),
    #[error("integer at offset {0} is not canonical or out of range")]
    BadInt(usize),
    #[error("dictionary key at offset {0} is not sorted or repeated")]
    UnsortedKey(usize),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("bytes after the value at offset {0}")]
    Trailing(usize),
}

impl Value {
    /// A byte string from text.
    pub fn text(s: &str) -> Self {
        Self::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs (keys sorted by the map).
    pub fn dict<K: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Self {
        Self::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_vec(), v))
                .collect(),
        )
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(n) => {
                out.push(b'i');
                out.extend_from_slice(n.to_string().as_bytes());
                out.push(b'e');
            }
            Self::Bytes(b) => encode_bytes(b, out),
            Self::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode(out);
                }
                out.push(b'e');
            }
            Self::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one canonical value filling `input`.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut at = 0;
        let value = decode_at(input, &mut at, 0)?;
        if at != input.len() {
            return Err(DecodeError::Trailing(at));
        }
        Ok(value)
    }

    /// The value under `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Dict(map) => map.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// The digits of a canonical integer: no leading zeros, no `-0`.
fn parse_int(digits: &[u8], at: usize) -> Result<i64, DecodeError> {
    let (negative, body) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let canonical = !body.is_empty()
        && body.iter().all(u8::is_ascii_digit)
        && (body == b"0" || body[0] != b'0')
        && !(negative && body == b"0");
    if !canonical {
        return Err(DecodeError::BadInt(at));
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(DecodeError::BadInt(at))
}

fn decode_at(input: &[u8], at: &mut usize, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let start = *at;
    match *input.get(start).ok_or(DecodeError::Truncated)? {
        b'i' => {
            let len = input[start + 1..]
                .iter()
                .position(|b| *b == b'e')
                .ok_or(DecodeError::Truncated)?;
            let n = parse_int(&input[start + 1..start + 1 + len], start)?;
            *at = start + len + 2;
            Ok(Value::Int(n))
        }
        b'0'..=b'9' => decode_bytes(input, at).map(|b| Value::Bytes(b.to_vec())),
        b'l' => {
            *at += 1;
            let mut items = Vec::new();
            loop {
                match input.get(*at) {
                    None => return Err(DecodeError::Truncated),
                    Some(b'e') => break,
                    Some(_) => items.push(decode_at(input, at, depth + 1)?),
                }
            }
            *at += 1;
            Ok(Value::List(items))
        }
        b'd' => {
            *at += 1;
            let mut map = BTreeMap::new();
            let mut last: Option<&[u8]> = None;
            loop {
                match input.get(*at) {
                    None => return Err(DecodeError::Truncated),
                    Some(b'e') => break,
                    Some(_) => {
                        let key_at = *at;
                        let key = decode_bytes(input, at)?;
                        if last.is_some_and(|l| l >= key) {
                            return Err(DecodeError::UnsortedKey(key_at));
                        }
                        last = Some(key);
                        let value = decode_at(input, at, depth + 1)?;
                        map.insert(key.to_vec(), value);
                    }
                }
            }
            *at += 1;
            Ok(Value::Dict(map))
        }
        _ => Err(DecodeError::Unexpected(start)),
    }
}

fn decode_bytes<'a>(input: &'a [u8], at: &mut usize) -> Result<&'a [u8], DecodeError> {
    let start = *at;
    let colon = input[start..]
        .iter()
        .position(|b| *b == b':')
        .ok_or(DecodeError::Truncated)?;
    let len = parse_int(&input[start..start + colon], start)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::BadInt(start))?;
    let from = start + colon + 1;
    let to = from.checked_add(len).ok_or(DecodeError::BadInt(start))?;
    let bytes = input.get(from..to).ok_or(DecodeError::Truncated)?;
    *at = to;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bep3_examples_encode_and_decode() {
        let cases: [(&[u8], Value); 6] = [
            (b"4:spam", Value::text("spam")),
            (b"i3e", Value::Int(3)),
            (b"i-3e", Value::Int(-3)),
            (b"i0e", Value::Int(0)),
            (
                b"l4:spam4:eggse",
                Value::List(vec![Value::text("spam"), Value::text("eggs")]),
            ),
            (
                b"d3:cow3:moo4:spam4:eggse",
                Value::dict([("spam", Value::text("eggs")), ("cow", Value::text("moo"))]),
            ),
        ];
        for (bytes, value) in cases {
            assert_eq!(value.to_bytes(), bytes);
            assert_eq!(Value::decode(bytes), Ok(value));
        }
    }

    #[test]
    fn keys_are_sorted_as_raw_bytes_and_may_be_binary() {
        let v = Value::dict([
            (&b"\xff\x00"[..], Value::Int(1)),
            (b"", Value::Int(2)),
            (b"a", Value::Int(3)),
        ]);
        assert_eq!(v.to_bytes(), b"d0:i2e1:ai3e2:\xff\x00i1ee");
        assert_eq!(Value::decode(&v.to_bytes()), Ok(v));
    }

    #[test]
    fn non_canonical_input_is_refused() {
        for bad in [
            &b"i03e"[..],
            b"i-0e",
            b"ie",
            b"i1",
            b"03:abc",
            b"4:abc",
            b"d1:b0:1:a0:e",
            b"d1:a0:1:a0:e",
            b"l",
            b"x",
            b"i1ei2e",
        ] {
            assert!(
                Value::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = [vec![b'l'; MAX_DEPTH + 2], vec![b'e'; MAX_DEPTH + 2]].concat();
        assert_eq!(Value::decode(&deep), Err(DecodeError::TooDeep));
    }
}
