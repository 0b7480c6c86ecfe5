//! Interface configuration over rtnetlink: link up, address, default route. The one place the
//! agent talks to the kernel's network configuration (the DHCP socket is in [`crate::dhcp`]).
use std::{io, net::Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkFlags, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// An rtnetlink socket sending one request at a time and waiting for its acknowledgement.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

/// The broadcast address of `ip/prefix_len`.
pub fn broadcast(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let host_bits = 32 - u32::from(prefix_len.min(32));
    let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) | !mask)
}

/// Prefix length of a netmask (`255.255.255.0` is 24); `None` if the ones are not contiguous.
pub fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sets `IFF_UP` on link `index`.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Adds (or refreshes) `ip/prefix_len` on link `index`.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        addr.header.prefix_len = prefix_len;
        addr.header.scope = AddressScope::Universe;
        addr.header.index = index;
        addr.attributes = vec![
            AddressAttribute::Local(ip.into()),
            AddressAttribute::Address(ip.into()),
            AddressAttribute::Broadcast(broadcast(ip, prefix_len)),
        ];
        self.request(
            RouteNetlinkMessage::NewAddress(addr),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Sets the default route through `gateway` on link `index` (replacing any other).
    pub fn set_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = 0;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Dhcp;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
        ];
        self.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        loop {
            let mut reply: Vec<u8> = Vec::with_capacity(16 * 1024);
            self.socket.recv(&mut reply, 0)?;
            let mut at = 0;
            while at < reply.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = message.header.length as usize;
                if message.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(err) = &message.payload
                {
                    return match err.code {
                        None => Ok(()),
                        Some(_) => Err(err.to_io()),
                    };
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_broadcasts() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 254, 0, 0)), Some(15));
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(
            broadcast(Ipv4Addr::new(198, 18, 4, 100), 24),
            Ipv4Addr::new(198, 18, 4, 255)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(198, 18, 4, 100), 15),
            Ipv4Addr::new(198, 19, 255, 255)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(1, 2, 3, 4), 32),
            Ipv4Addr::new(1, 2, 3, 4)
        );
        assert_eq!(broadcast(Ipv4Addr::new(1, 2, 3, 4), 0), Ipv4Addr::BROADCAST);
    }
}
