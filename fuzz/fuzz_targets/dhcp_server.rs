//! Both server modes fed one arbitrary datagram on the server port and on the PXE port: never a
//! panic, and every reply they produce parses as a DHCP message.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use stampede_proto::dhcp::{
    BootConfig, CLIENT_PORT, DhcpServer, MemoryLeaseStore, PXE_PORT, Pool, Repr, SERVER_PORT,
    ServerConfig,
};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    let boot = BootConfig::new(ip, "http://198.18.0.1:8080");
    let pool = Pool {
        subnet: Ipv4Addr::new(198, 18, 0, 0),
        prefix_len: 24,
        first: Ipv4Addr::new(198, 18, 0, 100),
        last: Ipv4Addr::new(198, 18, 0, 200),
        routers: vec![ip],
        dns_servers: vec![],
        lease_time: Duration::from_secs(600),
        reservations: Default::default(),
    };
    let servers = [
        DhcpServer::new(ServerConfig::proxy(ip, boot.clone())),
        DhcpServer::new(ServerConfig::authoritative(ip, boot, vec![pool])),
    ];
    let mut buf = [0u8; 1500];
    for server in servers {
        let mut server = server.expect("fixed config is valid");
        let mut store = MemoryLeaseStore::new();
        for port in [SERVER_PORT, PXE_PORT] {
            let _ = server.handle_datagram(
                now,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
                SocketAddrV4::new(Ipv4Addr::BROADCAST, port),
                data,
                &mut store,
            );
            while let Some(transmit) = server.poll_transmit(now, &mut buf) {
                if let Err(err) = Repr::parse_bytes(&buf[..transmit.len]) {
                    panic!("the server emitted a reply that does not parse: {err}");
                }
            }
        }
    }
});
