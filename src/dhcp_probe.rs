//! Before an authoritative appliance answers DHCP: is another DHCP server on the link? One
//! DISCOVER from the boot interface (proto's sans-IO [`DhcpClient`], as a PXE ROM without its
//! vendor options would send it) and a bounded wait for OFFERs from anyone else. Two servers
//! handing out addresses on one link give machines whichever answers first (issue 18); the
//! operator is told, by address, and the start goes on (the other server may be meant to be
//! there, e.g. for another VLAN's relay).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use stampede_proto::dhcp::{
    Backoff, ClientConfig, DhcpClient, MessageType, OpCode, Repr, server::CLIENT_PORT,
};

/// How long the probe waits for an OFFER. A server on the same link answers within
/// milliseconds; dnsmasq pings an address before offering it (another few hundred
/// milliseconds on an idle link). Short, because it delays every authoritative start.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// A server that offered to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherServer {
    /// Its server identifier (option 54), else the reply's source address.
    pub address: Ipv4Addr,
    /// The address it offered; `None` for a ProxyDHCP offer (boot instructions only).
    pub offered: Option<Ipv4Addr>,
}

/// The OFFER `datagram` from `source` answers the probe `xid` of `mac`, from a server that is
/// not this one (`own`).
pub fn offer_from_other(
    datagram: &[u8],
    source: Ipv4Addr,
    xid: u32,
    mac: [u8; 6],
    own: Ipv4Addr,
) -> Option<OtherServer> {
    let reply = Repr::parse_bytes(datagram).ok()?;
    if reply.op != OpCode::BootReply
        || reply.xid != xid
        || reply.mac() != Some(mac)
        || reply.options.message_type != Some(MessageType::Offer)
    {
        return None;
    }
    let address = reply.options.server_id.unwrap_or(source);
    if address == own || source == own {
        return None;
    }
    Some(OtherServer {
        address,
        offered: (!reply.yiaddr.is_unspecified()).then_some(reply.yiaddr),
    })
}

/// Sends one DISCOVER from `iface` (whose MAC is `mac`) and collects the OFFERs of other
/// servers until the first arrives or `wait` has passed.
pub fn other_servers(
    iface: &str,
    mac: [u8; 6],
    own: Ipv4Addr,
    wait: Duration,
) -> anyhow::Result<Vec<OtherServer>> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("a UDP socket for the DHCP probe")?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding the DHCP probe to {iface}"))?;
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            CLIENT_PORT,
        )))
        .with_context(|| format!("binding the DHCP probe to port {CLIENT_PORT}"))?;
    let socket = std::net::UdpSocket::from(socket);
    let now = Instant::now();
    // Any value will do as long as it is not another client's; the PID and the clock differ
    // between starts.
    let xid = std::process::id().rotate_left(16)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let mut client = DhcpClient::new(
        ClientConfig {
            mac,
            xid,
            arch: None,
            vendor_class: None,
            user_class: None,
            uuid: None,
            ndi: None,
            ipxe_encap: None,
            seed: u64::from(xid),
            backoff: Backoff::default(),
            request_attempts: 1,
        },
        now,
    );
    let mut buf = [0u8; 1500];
    let transmit = client
        .poll_transmit(now, &mut buf)
        .context("the DHCP client has no DISCOVER to send")?;
    socket
        .send_to(
            &buf[..transmit.len],
            SocketAddrV4::new(transmit.dst_ip, transmit.dst_port),
        )
        .with_context(|| format!("sending the DHCP probe on {iface}"))?;
    let deadline = now + wait;
    let mut found = Vec::new();
    let mut received = [0u8; 1500];
    while found.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let (len, from) = match socket.recv_from(&mut received) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving DHCP probe replies"),
        };
        let source = match from {
            std::net::SocketAddr::V4(a) => *a.ip(),
            std::net::SocketAddr::V6(_) => continue,
        };
        if let Some(other) = offer_from_other(&received[..len], source, xid, mac, own)
            && !found.contains(&other)
        {
            found.push(other);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const OWN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn reply(xid: u32, kind: MessageType, server_id: Option<Ipv4Addr>, yiaddr: [u8; 4]) -> Vec<u8> {
        let mut m = Repr::new(OpCode::BootReply, xid, MAC);
        m.yiaddr = yiaddr.into();
        m.options.message_type = Some(kind);
        m.options.server_id = server_id;
        let mut buf = vec![0u8; 1500];
        let len = m.emit_bytes(&mut buf).expect("emit");
        buf.truncate(len);
        buf
    }

    #[test]
    fn only_offers_to_the_probe_from_another_server_count() {
        let offer = reply(7, MessageType::Offer, Some(OTHER), [198, 18, 0, 50]);
        assert_eq!(
            offer_from_other(&offer, OTHER, 7, MAC, OWN),
            Some(OtherServer {
                address: OTHER,
                offered: Some(Ipv4Addr::new(198, 18, 0, 50)),
            })
        );
        let proxy = reply(7, MessageType::Offer, None, [0; 4]);
        assert_eq!(
            offer_from_other(&proxy, OTHER, 7, MAC, OWN),
            Some(OtherServer {
                address: OTHER,
                offered: None,
            }),
            "a ProxyDHCP offer names its source"
        );
        assert_eq!(
            offer_from_other(&offer, OTHER, 8, MAC, OWN),
            None,
            "other xid"
        );
        assert_eq!(
            offer_from_other(&offer, OTHER, 7, [0; 6], OWN),
            None,
            "other client"
        );
        let own = reply(7, MessageType::Offer, Some(OWN), [198, 18, 0, 50]);
        assert_eq!(offer_from_other(&own, OWN, 7, MAC, OWN), None, "our own");
        let ack = reply(7, MessageType::Ack, Some(OTHER), [198, 18, 0, 50]);
        assert_eq!(
            offer_from_other(&ack, OTHER, 7, MAC, OWN),
            None,
            "not an OFFER"
        );
        assert_eq!(offer_from_other(b"junk", OTHER, 7, MAC, OWN), None);
    }
}
