//! The listening core and a running transfer fed arbitrary datagrams: never a panic, and the
//! transfer only ever emits packets that parse.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use stampede_proto::{
    files::{BootFile, MemoryCatalog},
    tftp::{Repr, Request, ServerConfig, TftpServer},
};

fuzz_target!(|data: &[u8]| {
    let mut catalog = MemoryCatalog::new();
    catalog.insert("undionly.kpxe", BootFile::new(vec![0x5a; 5000]));
    let server = TftpServer::new(ServerConfig::default(), catalog);
    let client = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 50), 2070));
    let start = Instant::now();
    let mut buf = vec![0u8; 70_000];
    // First the input as a request, then a real request whose transfer gets the input.
    let _ = server.handle_request(start, client, data, &mut buf);
    let rrq = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00windowsize\x004\x00";
    let Request::Accepted(mut transfer) = server.handle_request(start, client, rrq, &mut buf)
    else {
        panic!("a valid request was not accepted");
    };
    let mut now = start;
    for chunk in data.chunks(64) {
        let _ = transfer.handle_datagram(now, client, chunk);
        while let Some(transmit) = transfer.poll_transmit(now, &mut buf) {
            if let Err(err) = Repr::parse_bytes(&buf[..transmit.len]) {
                panic!("the transfer emitted a packet that does not parse: {err}");
            }
        }
        now += Duration::from_millis(700);
        transfer.handle_timeout(now);
        if transfer.is_finished().is_some() {
            break;
        }
    }
});
