//! Finding the boot NIC and leasing an address on it with proto's sans-IO [`DhcpClient`].
//!
//! The client is driven as the benchmark drives it: transmit what it polls, feed it what
//! arrives with `now`, run its timeout. The socket is UDP bound to `0.0.0.0:68` on one device
//! (`SO_BINDTODEVICE`), broadcast allowed; the client asks for broadcast replies (RFC 2131
//! §4.1), since an interface without an address cannot take a unicast one.
use std::{
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use stampede_proto::dhcp::{Backoff, ClientConfig, ClientState, DhcpClient, Repr};

use crate::{cmdline::MacAddr, netconf::prefix_len};

/// What identifies the agent to DHCP servers (option 60), so the appliance can tell a node
/// agent from firmware asking for a boot file.
pub const VENDOR_CLASS: &[u8] = b"stampede-node";

/// ARP hardware type of Ethernet in `/sys/class/net/*/type`.
const ARPHRD_ETHER: u32 = 1;

/// A network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
}

/// Ethernet interfaces under `sys_class_net` (`/sys/class/net`), sorted by name.
pub fn ethernet_nics(sys_class_net: &Path) -> Vec<Nic> {
    let Ok(entries) = fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut nics: Vec<Nic> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
            let kind: u32 = read("type")?.trim().parse().ok()?;
            if kind != ARPHRD_ETHER {
                return None;
            }
            let mac: MacAddr = read("address")?.trim().parse().ok()?;
            // Loopback is type 772, but a zero MAC is never a real NIC either.
            if mac.0 == [0; 6] {
                return None;
            }
            Some(Nic {
                name: entry.file_name().to_string_lossy().into_owned(),
                index: read("ifindex")?.trim().parse().ok()?,
                mac,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// The NICs to lease on: the one with `boot_mac`, or every Ethernet NIC without it.
pub fn choose(nics: Vec<Nic>, boot_mac: Option<MacAddr>) -> Vec<Nic> {
    match boot_mac {
        Some(mac) => nics.into_iter().filter(|n| n.mac == mac).collect(),
        None => nics,
    }
}

/// Whether the link reports carrier (for messages: "no answer, and no cable").
pub fn carrier(sys_class_net: &Path, nic: &str) -> Option<bool> {
    let text = fs::read_to_string(sys_class_net.join(nic).join("carrier")).ok()?;
    Some(text.trim() == "1")
}

/// An address leased to a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub nic: Nic,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub server_id: Ipv4Addr,
    pub lease_time: Option<Duration>,
}

/// RFC 2131 leaves a missing subnet mask to the client; RFC 1122 §3.3.1.1's classful default
/// is the conventional answer.
fn classful_prefix(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Builds the lease from the ACK that bound the client (the client keeps only what PXE needs;
/// DNS servers and host name come from the ACK itself).
pub fn lease_from_ack(nic: &Nic, ack: &[u8]) -> Option<Lease> {
    let reply = Repr::parse_bytes(ack).ok()?;
    let options = &reply.options;
    let prefix = options
        .subnet_mask
        .and_then(prefix_len)
        .unwrap_or_else(|| classful_prefix(reply.yiaddr));
    Some(Lease {
        nic: nic.clone(),
        ip: reply.yiaddr,
        prefix_len: prefix,
        routers: options.routers.clone(),
        dns_servers: options.dns_servers.clone(),
        hostname: options
            .hostname
            .as_deref()
            .map(|h| String::from_utf8_lossy(h).trim_end_matches('\0').to_owned())
            .filter(|h| !h.is_empty()),
        server_id: options.server_id.unwrap_or(reply.siaddr),
        lease_time: options
            .lease_time
            .map(|s| Duration::from_secs(u64::from(s))),
    })
}

/// The client's identity and pacing for the agent.
pub fn client_config(mac: MacAddr, seed: u64) -> ClientConfig {
    ClientConfig {
        mac: mac.0,
        xid: (seed as u32) ^ 0x5354_4e44,
        arch: None,
        vendor_class: Some(VENDOR_CLASS.to_vec()),
        user_class: None,
        uuid: None,
        ndi: None,
        ipxe_encap: None,
        seed,
        // Faster than RFC 2131's 4 s first wait: the link may still be negotiating when the
        // first DISCOVER leaves, and a booting machine has nothing else to do. Capped at 32 s.
        backoff: Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(32),
            jitter: Duration::from_millis(500),
        },
        request_attempts: 4,
    }
}

/// The DHCP socket of one NIC.
pub fn open_socket(nic: &Nic) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // One socket per NIC, all on port 68: each bound to its device.
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(nic.name.as_bytes()))?;
    socket.set_broadcast(true)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        68,
    )))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One NIC's DHCP session.
#[derive(Debug)]
pub struct Session {
    pub nic: Nic,
    socket: UdpSocket,
    client: DhcpClient,
    offered: bool,
    /// Messages of the current kind sent (DISCOVERs while selecting, REQUESTs after an offer).
    sent_of_kind: (&'static str, u64),
}

/// Something worth a console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpNote {
    Sent {
        nic: String,
        kind: &'static str,
        count: u64,
    },
    Offered {
        nic: String,
        ip: Ipv4Addr,
        server: Ipv4Addr,
    },
    SendFailed {
        nic: String,
        error: String,
    },
}

impl Session {
    pub fn new(nic: Nic, seed: u64, now: Instant) -> std::io::Result<Self> {
        let socket = open_socket(&nic)?;
        let client = DhcpClient::new(client_config(nic.mac, seed), now);
        Ok(Self {
            nic,
            socket,
            client,
            offered: false,
            sent_of_kind: ("", 0),
        })
    }

    /// Sends, receives and runs timers once; returns the lease when bound.
    pub fn step(&mut self, now: Instant, notes: &mut Vec<DhcpNote>) -> Option<Lease> {
        let mut buf = [0u8; 1500];
        let kind = match self.client.state() {
            ClientState::Selecting => "DISCOVER",
            _ => "REQUEST",
        };
        while let Some(tx) = self.client.poll_transmit(now, &mut buf) {
            let to = SocketAddrV4::new(tx.dst_ip, tx.dst_port);
            if self.sent_of_kind.0 != kind {
                self.sent_of_kind = (kind, 0);
            }
            self.sent_of_kind.1 += 1;
            match self.socket.send_to(&buf[..tx.len], to) {
                Ok(_) => notes.push(DhcpNote::Sent {
                    nic: self.nic.name.clone(),
                    kind,
                    count: self.sent_of_kind.1,
                }),
                Err(err) => notes.push(DhcpNote::SendFailed {
                    nic: self.nic.name.clone(),
                    error: err.to_string(),
                }),
            }
        }
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _from)) => {
                    if !self.client.handle_datagram(now, &buf[..n]) {
                        continue;
                    }
                    match self.client.state() {
                        ClientState::Bound => return lease_from_ack(&self.nic, &buf[..n]),
                        ClientState::Requesting if !self.offered => {
                            self.offered = true;
                            if let Ok(offer) = Repr::parse_bytes(&buf[..n]) {
                                notes.push(DhcpNote::Offered {
                                    nic: self.nic.name.clone(),
                                    ip: offer.yiaddr,
                                    server: offer.options.server_id.unwrap_or(offer.siaddr),
                                });
                            }
                        }
                        ClientState::Selecting => self.offered = false,
                        ClientState::Requesting => {}
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.client.handle_timeout(now);
        None
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }
}

#[cfg(test)]
mod tests {
    use stampede_proto::dhcp::{MessageType, OpCode};

    use super::*;

    fn fake_nic(root: &Path, name: &str, kind: u32, mac: &str, index: u32) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("type"), format!("{kind}\n")).expect("type");
        fs::write(dir.join("address"), format!("{mac}\n")).expect("address");
        fs::write(dir.join("ifindex"), format!("{index}\n")).expect("ifindex");
        fs::write(dir.join("carrier"), "1\n").expect("carrier");
    }

    #[test]
    fn nics_are_found_in_sysfs_and_chosen_by_bootif() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_nic(dir.path(), "lo", 772, "00:00:00:00:00:00", 1);
        fake_nic(dir.path(), "eth1", 1, "52:54:00:00:00:02", 3);
        fake_nic(dir.path(), "eth0", 1, "52:54:00:00:00:01", 2);
        fake_nic(dir.path(), "ib0", 32, "52:54:00:00:00:03", 4);
        let nics = ethernet_nics(dir.path());
        let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        assert_eq!(nics[1].index, 3);
        let boot = "52:54:00:00:00:02".parse().ok();
        let chosen = choose(nics.clone(), boot);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].name, "eth1");
        assert_eq!(choose(nics.clone(), None).len(), 2);
        assert!(choose(nics, "52:54:00:00:00:09".parse().ok()).is_empty());
        assert_eq!(carrier(dir.path(), "eth0"), Some(true));
        assert_eq!(carrier(dir.path(), "eth9"), None);
    }

    #[test]
    fn the_lease_comes_from_the_ack_options() {
        let nic = Nic {
            name: "eth0".into(),
            index: 2,
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
        };
        let mut ack = Repr::new(OpCode::BootReply, 7, nic.mac.0);
        ack.yiaddr = Ipv4Addr::new(198, 18, 4, 100);
        ack.options.message_type = Some(MessageType::Ack);
        ack.options.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
        ack.options.routers = vec![Ipv4Addr::new(198, 18, 4, 1)];
        ack.options.dns_servers = vec![Ipv4Addr::new(198, 18, 4, 53)];
        ack.options.hostname = Some(b"node-9".to_vec());
        ack.options.server_id = Some(Ipv4Addr::new(198, 18, 4, 1));
        ack.options.lease_time = Some(600);
        let mut buf = [0u8; 600];
        let n = ack.emit_bytes(&mut buf).expect("emit");
        let lease = lease_from_ack(&nic, &buf[..n]).expect("lease");
        assert_eq!(lease.ip, Ipv4Addr::new(198, 18, 4, 100));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.routers, [Ipv4Addr::new(198, 18, 4, 1)]);
        assert_eq!(lease.dns_servers, [Ipv4Addr::new(198, 18, 4, 53)]);
        assert_eq!(lease.hostname.as_deref(), Some("node-9"));
        assert_eq!(lease.lease_time, Some(Duration::from_secs(600)));
        // Without a mask: the classful default.
        ack.options.subnet_mask = None;
        let n = ack.emit_bytes(&mut buf).expect("emit");
        assert_eq!(
            lease_from_ack(&nic, &buf[..n]).expect("lease").prefix_len,
            24
        );
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 1, 2, 3)), 8);
        assert_eq!(classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
    }

    #[test]
    fn the_client_asks_for_broadcast_replies_as_the_agent() {
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let mut client = DhcpClient::new(client_config(mac, 1), Instant::now());
        let mut buf = [0u8; 1500];
        let tx = client
            .poll_transmit(Instant::now(), &mut buf)
            .expect("discover");
        assert!(tx.broadcast);
        assert_eq!((tx.dst_ip, tx.dst_port), (Ipv4Addr::BROADCAST, 67));
        let discover = Repr::parse_bytes(&buf[..tx.len]).expect("parses");
        assert_eq!(discover.flags & 0x8000, 0x8000, "BROADCAST flag");
        assert_eq!(discover.options.vendor_class.as_deref(), Some(VENDOR_CLASS));
        assert!(
            discover.options.parameter_request.contains(&6),
            "asks for DNS servers"
        );
    }
}
