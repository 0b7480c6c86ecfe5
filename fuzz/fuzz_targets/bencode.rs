//! Bencode (torrents, tracker replies): decoding never panics, and a value that decodes encodes
//! back to exactly its input (the decoder takes only canonical bencode, which is what makes an
//! info hash of a re-encoded `info` dictionary the torrent's own).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_proto::bencode::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = Value::decode(data) else {
        return;
    };
    assert_eq!(value.to_bytes(), data, "encode(decode(x)) != x");
});
