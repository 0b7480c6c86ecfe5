//! A server connection fed arbitrary bytes in arbitrary chunks: it never panics, always makes
//! progress or closes, and every response it produces is well-formed enough to start with a
//! status line.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stampede_proto::{
    files::{BootFile, MemoryCatalog},
    http::{HttpConnection, ServerConfig},
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut catalog = MemoryCatalog::new();
    catalog.insert("boot/vmlinuz", BootFile::new(vec![7u8; 3000]));
    let start = Instant::now();
    let mut conn = HttpConnection::new(start, catalog, ServerConfig::default());
    let mut out = Vec::new();
    let mut pending = input;
    let mut now = start;
    for _ in 0..10_000 {
        if conn.is_closed() {
            break;
        }
        let take = pending.len().min(chunk);
        let consumed = conn.handle_input(now, &pending[..take]);
        assert!(consumed <= take);
        pending = &pending[consumed..];
        while let Some(transmit) = conn.poll_output(now, &mut out) {
            assert!(out.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&out));
            let _ = transmit;
            out.clear();
            conn.transmit_done(now);
        }
        if consumed == 0 {
            // Stalled (waiting for more, or back-pressured): let time pass instead.
            now += Duration::from_secs(1);
            conn.handle_timeout(now);
            if pending.is_empty() && conn.poll_timeout().is_none() {
                break;
            }
        }
    }
});
