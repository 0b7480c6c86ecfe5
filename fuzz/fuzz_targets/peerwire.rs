//! The peer wire, as a hostile peer would feed it: the framer and message parser never panic,
//! every message they accept emits back to exactly its frame (ids unknown to BEP 3 aside), and
//! the swarm core given the same bytes never panics nor holds more than one frame.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use libfuzzer_sys::fuzz_target;
use stampede_proto::peerwire::{
    MAX_FRAME, Message, PeerKey, PeerSwarm, PieceSpec, SwarmConfig,
    wire::{Frame, FrameDecoder},
};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut input = data;
    while let Ok((taken, frame)) = decoder.push(input) {
        input = &input[taken..];
        match frame {
            Frame::Partial => break,
            Frame::Handshake => {}
            Frame::Message => {
                let body = decoder.frame();
                assert!(body.len() <= MAX_FRAME);
                if let Ok(message) = Message::parse(body) {
                    if !matches!(message, Message::Unknown(_)) {
                        let mut out = Vec::new();
                        message.emit(&mut out);
                        assert_eq!(&out[4..], body, "emit(parse(x)) != x");
                    }
                }
            }
        }
        decoder.consume();
    }

    // The same bytes as a peer's whole side of a connection, to a seed of three pieces.
    let now = Instant::now();
    let pieces = vec![
        PieceSpec {
            len: 40_000,
            sha256: [0; 32],
        };
        3
    ];
    let mut hash = [0u8; 20];
    if let Some(h) = data.get(28..48) {
        hash.copy_from_slice(h);
    }
    let mut swarm = PeerSwarm::new(now, SwarmConfig::default(), hash, [1; 20], pieces, vec![true; 3]);
    swarm.add_peer(now, PeerKey(1), IpAddr::V4(Ipv4Addr::LOCALHOST), false);
    swarm.handle_input(now, PeerKey(1), data);
    while swarm.poll_upload(PeerKey(1)).is_some() {}
    let mut out = Vec::new();
    swarm.poll_transmit(PeerKey(1), &mut out);
    while swarm.poll_event().is_some() {}
});
