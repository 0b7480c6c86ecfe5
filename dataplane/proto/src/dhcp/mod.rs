//! DHCPv4 and PXE (RFC 2131, RFC 2132, RFC 3046, RFC 3396, RFC 4578, PXE 2.1): wire format, a
//! server core and a client core, all sans-IO.
//!
//! # Layers
//! - [`wire`]: [`Packet`] (zero-copy view, `new_checked`) and [`Repr`] (`parse`, `buffer_len`,
//!   `emit`); option 52 overload and RFC 3396 long options are handled there.
//! - [`options`]: [`DhcpOptions`] (typed 1, 3, 6, 12, 43, 50-61, 66, 67, 77, 82, 93, 94, 97, 175;
//!   anything else kept raw in `other`), [`MessageType`], [`ClientArch`], [`PxeVendorOptions`].
//!   The message reads its options; the options never import the message.
//! - [`error`]: [`Error`], what the message and its options fail with.
//! - [`boot`]: [`decide`], the pure function from a [`BootClient`] to a [`BootDecision`] (PXE ROM
//!   → iPXE by TFTP, iPXE → script by HTTP, UEFI HTTP Boot → iPXE by HTTP).
//! - [`lease`]: the [`LeaseStore`] trait and [`MemoryLeaseStore`].
//! - [`server`]: [`DhcpServer`], proxy or authoritative.
//! - [`client`]: [`DhcpClient`], a simulated PXE machine for the benchmark harness.
//!
//! # Server call pattern (one worker, one io_uring)
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::Instant;
//! use stampede_proto::dhcp::{BootConfig, DhcpServer, MemoryLeaseStore, ServerConfig};
//!
//! let ip = Ipv4Addr::new(198, 18, 0, 1);
//! let mut server = DhcpServer::new(ServerConfig::proxy(ip, BootConfig::new(ip, "http://198.18.0.1")))
//!     .expect("valid config");
//! let mut store = MemoryLeaseStore::new();
//! # let datagram = [0u8; 8];
//! let now = Instant::now();
//! // For each received datagram: its source, and the address/port it was sent to (IP_PKTINFO).
//! let _ = server.handle_datagram(
//!     now,
//!     SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
//!     SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
//!     &datagram,
//!     &mut store,
//! );
//! let mut buf = [0u8; 1500]; // a registered buffer or an AF_XDP frame
//! while let Some(t) = server.poll_transmit(now, &mut buf) {
//!     // send buf[..t.len] from port t.src_port to t.dst_ip:t.dst_port; when t.dst_mac is set
//!     // the client has no address yet: address the frame to that MAC without ARP.
//!     let _ = (t.dst_ip, t.dst_port, t.dst_mac, t.broadcast);
//! }
//! assert_eq!(server.stats().dropped(stampede_proto::dhcp::DropReason::Malformed), 1);
//! ```
//! Every dropped datagram is counted under a [`DropReason`] (`stats().drops()`, labels from
//! `as_str()`). ACKs wait for their lease write to be durable: see [`lease`] for the contract and
//! [`DhcpServer::handle_lease_durable`]. The server needs no timers (`poll_timeout()` is `None`).
//!
//! # Client call pattern
//! `DhcpClient::new(config, now)`, then loop: `poll_transmit(now, buf)` (broadcast to port 67),
//! `handle_datagram(now, bytes)` for each reply, `handle_timeout(now)` at `poll_timeout()`, until
//! `state()` is `Bound` and `lease()` holds the address, next-server and boot file.
pub mod admission;
pub mod boot;
pub mod client;
pub mod error;
pub mod lease;
pub mod options;
pub mod server;
pub mod wire;

pub use admission::{Admission, Refusal};
pub use boot::{
    BootClient, BootConfig, BootDecision, BootProfile, Firmware, Loaders, NoBoot, decide,
};
pub use client::{Backoff, ClientConfig, ClientLease, ClientState, DhcpClient, splitmix64};
pub use lease::{
    ClientKey, CommitSeq, Lease, LeaseChange, LeaseState, LeaseStore, LeaseStoreError,
    MemoryLeaseStore,
};
pub use options::{ClientArch, ClientUuid, DhcpOptions, MessageType, OptionCode, PxeVendorOptions};
pub use server::{
    CLIENT_PORT, ConfigError, DhcpServer, DropReason, Handled, PXE_PORT, Pool, RequestState,
    SERVER_PORT, ServerConfig, ServerEvent, ServerMode, ServerStats, Transmit,
};
pub use wire::{Error, OpCode, Packet, Repr};

/// Parses `bytes`, emits the result and parses again; panics if the two parses differ or emit
/// fails. Input that does not parse is fine (returns `false`). The entry point for the fuzz target.
pub fn roundtrip_check(bytes: &[u8]) -> bool {
    let Ok(first) = Repr::parse_bytes(bytes) else {
        return false;
    };
    let mut buf = vec![0u8; first.buffer_len()];
    let len = first
        .emit_bytes(&mut buf)
        .unwrap_or_else(|e| panic!("emit of a parsed message failed: {e}"));
    let second = Repr::parse_bytes(&buf[..len])
        .unwrap_or_else(|e| panic!("emitted message does not parse: {e}"));
    assert_eq!(first, second, "parse(emit(parse(x))) != parse(x)");
    true
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::{Duration, Instant};

    use super::client::splitmix64;
    use super::*;

    const FIXTURES: [&[u8]; 24] = [
        include_bytes!("../../fixtures/dhcp/dhclient_ack.bin"),
        include_bytes!("../../fixtures/dhcp/dhclient_discover.bin"),
        include_bytes!("../../fixtures/dhcp/dhclient_offer.bin"),
        include_bytes!("../../fixtures/dhcp/dhclient_request.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_http_ack.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_http_discover.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_http_offer.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_http_request.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_pxe_ack.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_pxe_discover.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_pxe_offer.bin"),
        include_bytes!("../../fixtures/dhcp/ovmf_pxe_request.bin"),
        include_bytes!("../../fixtures/dhcp/qemu_ipxe_ack.bin"),
        include_bytes!("../../fixtures/dhcp/qemu_ipxe_discover.bin"),
        include_bytes!("../../fixtures/dhcp/qemu_ipxe_offer.bin"),
        include_bytes!("../../fixtures/dhcp/qemu_ipxe_request.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_ack.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_discover.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_offer.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_request.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_uefi_ack.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_uefi_discover.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_uefi_offer.bin"),
        include_bytes!("../../fixtures/dhcp/udhcpc_uefi_request.bin"),
    ];

    #[test]
    fn every_fixture_round_trips() {
        for (i, f) in FIXTURES.iter().enumerate() {
            assert!(roundtrip_check(f), "fixture {i} does not parse");
        }
    }

    /// Mutated fixtures (bit flips, option-area bytes, truncation, extension) through the parser,
    /// the round trip and both server modes: nothing may panic.
    #[test]
    fn mutated_input_never_panics() {
        let now = Instant::now();
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        let boot = BootConfig::new(ip, "http://198.18.0.1");
        let pool = Pool {
            subnet: Ipv4Addr::new(198, 18, 0, 0),
            prefix_len: 24,
            first: Ipv4Addr::new(198, 18, 0, 100),
            last: Ipv4Addr::new(198, 18, 0, 200),
            routers: vec![ip],
            dns_servers: vec![],
            lease_time: Duration::from_secs(60),
            reservations: Default::default(),
        };
        let mut servers = [
            DhcpServer::new(ServerConfig::proxy(ip, boot.clone())).expect("config"),
            DhcpServer::new(ServerConfig::authoritative(ip, boot, vec![pool])).expect("config"),
        ];
        let mut store = MemoryLeaseStore::new();
        let mut rng = 0x5eed_u64;
        let mut parsed = 0;
        let mut buf = [0u8; 1500];
        for round in 0..20_000u32 {
            let base = FIXTURES[(splitmix64(&mut rng) % FIXTURES.len() as u64) as usize];
            let mut bytes = base.to_vec();
            for _ in 0..=(splitmix64(&mut rng) % 8) {
                let r = splitmix64(&mut rng);
                if bytes.is_empty() {
                    bytes.push(0);
                }
                let at = (r >> 8) as usize % bytes.len().max(1);
                match r % 6 {
                    0 => bytes[at] ^= 1 << ((r >> 32) % 8),
                    1 => bytes[at] = (r >> 40) as u8,
                    // Aim at the options area, where the lengths are.
                    2 => {
                        let at = 240 + (r >> 16) as usize % bytes.len().saturating_sub(240).max(1);
                        if at < bytes.len() {
                            bytes[at] = (r >> 40) as u8;
                        }
                    }
                    3 => bytes.truncate(at),
                    4 => bytes.extend((0..(r >> 48) % 300).map(|i| (r >> (i % 56)) as u8)),
                    _ => bytes[at] = [0, 52, 255, 43, 82, 93, 97, 53][(r >> 20) as usize % 8],
                }
            }
            if roundtrip_check(&bytes) {
                parsed += 1;
            }
            let server = &mut servers[round as usize % 2];
            let port = if round % 7 == 0 {
                PXE_PORT
            } else {
                SERVER_PORT
            };
            let _ = server.handle_datagram(
                now,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
                SocketAddrV4::new(Ipv4Addr::BROADCAST, port),
                &bytes,
                &mut store,
            );
            while server.poll_transmit(now, &mut buf).is_some() {}
        }
        assert!(
            parsed > 5_000,
            "mutations too destructive: only {parsed} parsed"
        );
    }
}
