//! The simulated machines' side of the lab link: one DHCP socket for all of them, and the leased
//! addresses made local to this namespace so each machine's TFTP and HTTP traffic leaves from
//! its own address, as a real machine's would.
//!
//! A real machine configures its address on its NIC. Ten thousand addresses added one by one
//! would cost ten thousand netlink round trips, so the bench uses Linux's "AnyIP": one `local`
//! route for the leased subnet in the `local` table (every address in it is this host's), with a
//! more specific `unicast` route for each server address in the subnet (longest prefix wins, so
//! those stay remote). The kernel then answers ARP for every leased address on the bench's
//! interface, accepts their traffic and lets sockets bind to them. The routes are removed when
//! the bench ends, also on error.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

use anyhow::{Context as _, bail};
use std::net::UdpSocket;

/// The broadcast DHCP socket every simulated machine shares (replies are demultiplexed by
/// `chaddr`): `0.0.0.0:68`, bound to the interface, broadcast allowed, like a PXE ROM's.
pub fn dhcp_socket(iface: &str) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("creating the DHCP client socket")?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket
        .bind_device(Some(iface.as_bytes()))
        .with_context(|| format!("binding the DHCP socket to {iface} (needs CAP_NET_RAW)"))?;
    // A storm's replies arrive in bursts; a large queue keeps them until the dispatcher runs:
    // 10,000 replies take some 12 MiB of socket memory. As root SO_RCVBUFFORCE goes past
    // net.core.rmem_max (208 KiB by default, a few hundred replies); otherwise the kernel caps
    // SO_RCVBUF at it, and what overflows is lost and retransmitted, as on a wire.
    let want: usize = 32 << 20;
    if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &want).is_err()
    {
        let _ = socket.set_recv_buffer_size(want);
    }
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .context("binding 0.0.0.0:68 (is a DHCP client running in this namespace?)")?;
    Ok(socket.into())
}

/// The routes that make leased addresses local; removed on drop.
#[derive(Debug)]
pub struct LocalNet {
    iface: String,
    state: State,
}

#[derive(Debug, Default)]
struct State {
    subnet: Option<(Ipv4Addr, u8)>,
    /// Addresses kept remote inside the subnet (servers), and /32s made local outside it.
    remote: HashSet<Ipv4Addr>,
    local: HashSet<Ipv4Addr>,
    /// `ip route` arguments added, to delete in reverse order.
    added: Vec<Vec<String>>,
}

fn prefix_len(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn contains(subnet: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    network(ip, subnet.1) == subnet.0
}

fn ip_route(args: &[String]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .arg("route")
        .args(args)
        .output()
        .context("running `ip route` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip route {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl LocalNet {
    pub fn new(iface: &str) -> Self {
        Self {
            iface: iface.to_owned(),
            state: State::default(),
        }
    }

    fn add(state: &mut State, args: Vec<String>) -> anyhow::Result<()> {
        let mut cmd = vec!["replace".to_owned()];
        cmd.extend(args.iter().cloned());
        ip_route(&cmd)?;
        state.added.push(args);
        Ok(())
    }

    fn keep_remote(iface: &str, state: &mut State, ip: Ipv4Addr) -> anyhow::Result<()> {
        if ip.is_unspecified() || ip.is_broadcast() || !state.remote.insert(ip) {
            return Ok(());
        }
        let args = vec![
            format!("{ip}/32"),
            "dev".into(),
            iface.to_owned(),
            "table".into(),
            "local".into(),
        ];
        Self::add(state, args)
    }

    /// Makes `lease` local to this namespace, keeping `servers` (DHCP server, next server,
    /// routers) reachable through the interface.
    pub fn make_local(
        &mut self,
        lease: Ipv4Addr,
        mask: Option<Ipv4Addr>,
        servers: &[Ipv4Addr],
    ) -> anyhow::Result<()> {
        let state = &mut self.state;
        if state.subnet.is_none() {
            let prefix = mask.map_or(24, prefix_len).clamp(8, 30);
            let subnet = (network(lease, prefix), prefix);
            state.subnet = Some(subnet);
            // Servers first: once the subnet is local, an unprotected server address would be
            // unreachable.
            for &server in servers {
                if contains(subnet, server) {
                    Self::keep_remote(&self.iface, state, server)?;
                }
            }
            let args = vec![
                "local".into(),
                format!("{}/{}", subnet.0, subnet.1),
                "dev".into(),
                "lo".into(),
                "table".into(),
                "local".into(),
            ];
            Self::add(state, args)?;
        }
        let subnet = state.subnet.expect("set above");
        for &server in servers {
            if contains(subnet, server) {
                Self::keep_remote(&self.iface, state, server)?;
            }
        }
        if state.remote.contains(&lease) {
            bail!("leased address {lease} is one of the servers' addresses");
        }
        if !contains(subnet, lease) && state.local.insert(lease) {
            let args = vec![
                "local".into(),
                format!("{lease}/32"),
                "dev".into(),
                "lo".into(),
                "table".into(),
                "local".into(),
            ];
            Self::add(state, args)?;
        }
        Ok(())
    }

    /// Keeps `ip` (e.g. the HTTP server of a boot URL) reachable through the interface.
    pub fn reach(&mut self, ip: Ipv4Addr) -> anyhow::Result<()> {
        match self.state.subnet {
            Some(subnet) if contains(subnet, ip) => {
                Self::keep_remote(&self.iface, &mut self.state, ip)
            }
            _ => Ok(()),
        }
    }
}

impl Drop for LocalNet {
    fn drop(&mut self) {
        let state = &mut self.state;
        for args in state.added.drain(..).rev() {
            let mut cmd = vec!["del".to_owned()];
            cmd.extend(args);
            if let Err(err) = ip_route(&cmd) {
                eprintln!("stampede bench: cleaning up: {err:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_arithmetic() {
        let ip = Ipv4Addr::new(198, 19, 3, 7);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 0, 0)), 16);
        assert_eq!(network(ip, 16), Ipv4Addr::new(198, 19, 0, 0));
        assert!(contains((Ipv4Addr::new(198, 19, 0, 0), 16), ip));
        assert!(!contains((Ipv4Addr::new(198, 19, 0, 0), 24), ip));
        assert_eq!(network(ip, 0), Ipv4Addr::UNSPECIFIED);
    }
}
