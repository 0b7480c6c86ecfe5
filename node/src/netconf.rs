//! Interface configuration over rtnetlink: link up, address, default route. The one place the
//! agent talks to the kernel's network configuration (the DHCP socket is in [`crate::dhcp`]).
use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

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

/// IPv6 held off on the boot NICs while the agent works, and given back before `switch_root`.
///
/// The agent speaks only IPv4 (DHCPv4, HTTP to the appliance). Left on, the kernel's IPv6
/// autoconfiguration starts at the moment the link comes up, which is exactly when the DHCP
/// exchange starts: it joins the solicited-node multicast group, and the NIC driver re-programs
/// its receive filter. On QEMU's e1000 model every receive-control write holds received frames
/// back for a second (`flush_queue_timer`), so the appliance's OFFER waited 1.0 s on every
/// diskless boot; on real NICs a filter update can drop frames too. It also keeps a booting rack
/// from sending router solicitations, MLD reports and duplicate-address probes while it fetches
/// its roots. The root's own init gets the setting it would have had without the agent.
#[derive(Debug, Default)]
pub struct Ipv6Pause {
    /// `disable_ipv6` files written, each with the value it held before.
    paused: Vec<(PathBuf, String)>,
}

impl Ipv6Pause {
    /// Disables IPv6 on each of `nics` that has it (`proc_sys_net` is `/proc/sys/net`). A kernel
    /// without IPv6, or a NIC without its `conf` directory, is left as it is.
    pub fn hold(proc_sys_net: &Path, nics: &[&str]) -> Self {
        let mut paused = Vec::new();
        for nic in nics {
            let path = proc_sys_net
                .join("ipv6/conf")
                .join(nic)
                .join("disable_ipv6");
            let Ok(before) = fs::read_to_string(&path) else {
                continue;
            };
            let before = before.trim().to_owned();
            if before == "1" {
                continue;
            }
            if fs::write(&path, "1").is_ok() {
                paused.push((path, before));
            }
        }
        Self { paused }
    }

    /// Interfaces on which IPv6 is held off.
    pub fn len(&self) -> usize {
        self.paused.len()
    }

    /// Whether nothing was held off.
    pub fn is_empty(&self) -> bool {
        self.paused.is_empty()
    }

    /// Puts back each value [`hold`](Self::hold) replaced; returns the files that could not be
    /// written, with the reason.
    pub fn resume(&self) -> Vec<(PathBuf, io::Error)> {
        self.paused
            .iter()
            .filter_map(|(path, before)| {
                fs::write(path, before).err().map(|err| (path.clone(), err))
            })
            .collect()
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

    #[test]
    fn ipv6_is_held_off_on_the_boot_nics_and_given_back() {
        let dir = std::env::temp_dir().join(format!("stampede-ipv6-pause-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (nic, value) in [("eth0", "0\n"), ("eth1", "1\n"), ("eth2", "0\n")] {
            let conf = dir.join("ipv6/conf").join(nic);
            fs::create_dir_all(&conf).expect("conf dir");
            fs::write(conf.join("disable_ipv6"), value).expect("write");
        }
        let read = |nic: &str| {
            fs::read_to_string(dir.join("ipv6/conf").join(nic).join("disable_ipv6"))
                .expect("read")
                .trim()
                .to_owned()
        };
        // eth1 had IPv6 off already, eth3 has no IPv6 conf at all, eth2 is not a boot NIC.
        let pause = Ipv6Pause::hold(&dir, &["eth0", "eth1", "eth3"]);
        assert_eq!(pause.len(), 1);
        assert_eq!(read("eth0"), "1");
        assert_eq!(read("eth1"), "1");
        assert_eq!(read("eth2"), "0");
        assert!(pause.resume().is_empty());
        assert_eq!(read("eth0"), "0");
        assert_eq!(read("eth1"), "1", "was off before the agent: stays off");
        // Without IPv6 in the kernel there is nothing to hold.
        assert!(Ipv6Pause::hold(&dir.join("none"), &["eth0"]).is_empty());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
