//! The tracker core fed arbitrary announce query strings from a few clients over time: it never
//! panics, every reply is bencode that decodes, and a reply either lists peers or says why not.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stampede_proto::{
    bencode::Value,
    tracker::{InfoHash, Tracker, TrackerConfig},
};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut tracker = Tracker::new(TrackerConfig::default());
    // The hash `%AB` x 20 in the corpus's queries: announces can reach a swarm.
    tracker.track(InfoHash([0xab; 20]));
    // Lines are announces; the first byte of each picks the client, the clock moves on.
    for (i, line) in data.split(|b| *b == b'\n').enumerate().take(256) {
        let Some((&who, query)) = line.split_first() else {
            continue;
        };
        let query = String::from_utf8_lossy(query);
        let client = IpAddr::V4(Ipv4Addr::new(198, 18, 0, who % 8));
        let now = start + Duration::from_secs(i as u64 * u64::from(who % 64));
        let reply = tracker.handle_announce(now, client, who % 16 != 0, &query);
        let mut out = Vec::new();
        reply.emit(&mut out);
        let decoded = Value::decode(&out).expect("the reply is canonical bencode");
        assert!(
            decoded.get("peers").is_some() != decoded.get("failure reason").is_some(),
            "peers or a failure reason: {decoded:?}"
        );
    }
});
