//! TFTP transfer ports: each transfer's own port, drawn at random from the unprivileged ports
//! the host does not reserve; on the io_uring path its socket, on the AF_XDP path a socket that
//! only holds it while the XDP program steers its frames to the path.
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use super::{STEERED_PORT_SOCKET, TransferPorts};

use socket2::{Domain, Protocol, Socket, Type};

/// The lowest port a transfer draws from on the io_uring path: every unprivileged port.
pub(super) const TRANSFER_PORT_FIRST: u16 = 1024;

/// How many random ports a new transfer tries before it lets the kernel pick one (a port in
/// use by another socket is refused by `bind`, since no socket here sets `SO_REUSEADDR`).
const TRANSFER_PORT_TRIES: usize = 16;

/// A transfer's socket, bound to the boot interface and to `local` at a port drawn with `draw`
/// from [`TRANSFER_PORT_FIRST`]-65535, skipping `reserved` ranges and ports in use. Without
/// `SO_REUSEADDR`, so no other socket can share the port. After [`TRANSFER_PORT_TRIES`] ports
/// in use (a host nearly out of ports), the kernel's own random ephemeral port. Returns the
/// port.
pub(super) fn transfer_socket(
    local: Ipv4Addr,
    iface: Option<&str>,
    reserved: &[(u16, u16)],
    draw: &mut dyn FnMut() -> u64,
) -> std::io::Result<(UdpSocket, u16)> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(iface) = iface {
        socket.bind_device(Some(iface.as_bytes()))?;
    }
    let span = u64::from(u16::MAX - TRANSFER_PORT_FIRST) + 1;
    let mut bound = false;
    for _ in 0..TRANSFER_PORT_TRIES {
        let port = TRANSFER_PORT_FIRST + (draw() % span) as u16;
        if reserved
            .iter()
            .any(|&(first, last)| (first..=last).contains(&port))
        {
            continue;
        }
        match socket.bind(&SocketAddrV4::new(local, port).into()) {
            Ok(()) => {
                bound = true;
                break;
            }
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(err) => return Err(err),
        }
    }
    if !bound {
        socket.bind(&SocketAddrV4::new(local, 0).into())?;
    }
    let socket: UdpSocket = socket.into();
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}

impl super::WorkerState {
    /// A new transfer's port: `(port, socket index, socket for the ring to take)`, or `None`
    /// when no socket could be made (counted by the caller).
    pub(super) fn transfer_port(
        &mut self,
        request_to: Option<Ipv4Addr>,
    ) -> Option<(u16, Option<usize>, Option<UdpSocket>)> {
        match self.ports.clone() {
            TransferPorts::Sockets { iface, reserved } => {
                // The address the client sent its request to, so the answer comes from it; a
                // broadcast request is answered from any address of the interface.
                let local = request_to
                    .filter(|ip| !ip.is_broadcast() && !ip.is_multicast())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                let mut draw = || self.random();
                match transfer_socket(local, iface.as_deref(), &reserved, &mut draw) {
                    Ok((socket, port)) => Some((port, None, Some(socket))),
                    Err(err) => {
                        tracing::warn!(error = %err, "no socket for a TFTP transfer");
                        None
                    }
                }
            }
            TransferPorts::Steered {
                iface,
                reserved,
                map,
            } => {
                let local = request_to
                    .filter(|ip| !ip.is_broadcast() && !ip.is_multicast())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                let mut draw = || self.random();
                let (socket, port) =
                    match transfer_socket(local, iface.as_deref(), &reserved, &mut draw) {
                        Ok(bound) => bound,
                        Err(err) => {
                            tracing::warn!(error = %err, "no port for a TFTP transfer");
                            return None;
                        }
                    };
                if let Err(err) = map.open(port) {
                    tracing::warn!(error = %err, port, "a TFTP transfer port could not be steered");
                    return None;
                }
                self.held_ports.insert(port, socket);
                Some((port, Some(STEERED_PORT_SOCKET + usize::from(port)), None))
            }
        }
    }

    /// Whether `port` is a running transfer's steered port (AF_XDP path).
    pub(in crate::engine) fn holds_port(&self, port: u16) -> bool {
        self.held_ports.contains_key(&port)
    }

    /// Gives a finished transfer's port back: the ring closes its socket (io_uring), or the
    /// program stops steering it and its holding socket closes (AF_XDP).
    pub(super) fn release_port(&mut self, socket: usize, port: u16) {
        if self.socket_ports.remove(&socket).is_some() {
            self.closing.push(socket);
        }
        if self.held_ports.remove(&port).is_some()
            && let TransferPorts::Steered { map, .. } = &self.ports
            && let Err(err) = map.close(port)
        {
            tracing::warn!(error = %err, port, "a finished TFTP transfer's port is still steered");
        }
    }
}

/// The host's reserved ports (`net.ipv4.ip_local_reserved_ports`: "8080,9000-9100"), which
/// transfers never take; none when the file is missing or unreadable.
pub(in crate::engine) fn reserved_ports() -> Vec<(u16, u16)> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
        .map(|text| parse_port_ranges(&text))
        .unwrap_or_default()
}

/// Parses a kernel port list ("8080,9000-9100"); entries that do not parse are ignored.
fn parse_port_ranges(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|entry| {
            let entry = entry.trim();
            let (first, last) = entry.split_once('-').unwrap_or((entry, entry));
            Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_reserved_port_list_parses() {
        assert_eq!(
            parse_port_ranges("8080,9000-9100, 70000,x-3,\n"),
            vec![(8080, 8080), (9000, 9100)]
        );
        assert!(parse_port_ranges("\n").is_empty());
    }

    #[test]
    fn a_transfer_skips_reserved_and_busy_ports() {
        let busy = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("busy socket");
        let busy_port = busy.local_addr().expect("address").port();
        let offset = |port: u16| u64::from(port - TRANSFER_PORT_FIRST);
        // Draws: a reserved port, the busy one, then a free one (found by binding and closing).
        let free = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("probe")
            .local_addr()
            .expect("address")
            .port();
        let mut draws = vec![offset(5000), offset(busy_port), offset(free)].into_iter();
        let mut draw = || draws.next().expect("no more than three draws");
        let (_socket, port) =
            transfer_socket(Ipv4Addr::LOCALHOST, None, &[(4000, 6000)], &mut draw)
                .expect("a transfer socket");
        assert_eq!(port, free);
        // With every draw refused, the kernel's pick.
        let mut draw = || offset(5000);
        let (_socket, port) =
            transfer_socket(Ipv4Addr::LOCALHOST, None, &[(4000, 6000)], &mut draw)
                .expect("a transfer socket");
        assert!(!(4000..=6000).contains(&port), "{port}");
    }
}
