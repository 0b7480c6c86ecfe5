//! The AF_XDP path: the XDP classifier redirects admitted boot frames (UDP to 67, 4011, 69 and to
//! this path's TFTP transfer ports) into one AF_XDP socket per RX queue, and one worker runs the
//! same DHCP and TFTP cores as the io_uring workers ([`super::udp::WorkerState`]) over them.
//!
//! Frames are parsed in place in the UMEM ([`stampede_proto::frame::Udp4Frame`], zero-copy on
//! receive) and handed to the cores as datagrams; replies are written into a TX frame behind
//! headers built by [`stampede_proto::frame::Udp4Repr`] (one copy of the payload, from the
//! core's buffer into the frame). Destination MACs come from the frames received: every client
//! sends before it is answered (DISCOVER, RRQ, ACK), so its MAC is known; a reply to an address
//! never seen goes to the broadcast MAC, counted.
//!
//! One thread serves every queue's socket, so DHCP leases live in one place as on the io_uring
//! path (where worker 0 owns DHCP). ARP requests for the server's address are steered here too
//! and answered ([`ArpRequest`]); every other ARP message stays with the kernel.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use bytes::Bytes;
use stampede_proto::{
    dhcp::{LeaseStore, MemoryLeaseStore},
    frame::{ArpRequest, UDP_PAYLOAD_OFFSET, Udp4Frame, Udp4Repr, is_arp},
};

use super::{
    AfXdpSockets, EngineConfig, EngineError,
    udp::{
        HELD_ACK_POLL, Role, STEERED_PORT_SOCKET, TICK, TransferPorts, UdpWorkerSet, WorkerShared,
        WorkerState, bump,
    },
};
use crate::{
    boot::BootPlan,
    sys::{
        afxdp::{XskSocket, wait_readable},
        uring::{Outbox, Received},
    },
};

/// Frames taken from one socket per turn, so one busy queue cannot starve the timers.
const RX_BUDGET: u32 = 256;
/// Most neighbours remembered; past it the table is cleared (clients answer from their next
/// frame on), which bounds memory under a flood of spoofed sources.
const MAX_NEIGHBOURS: usize = 65_536;

/// The interface the AF_XDP path speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl Link {
    fn subnet_broadcast(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            return Ipv4Addr::BROADCAST;
        }
        let host_bits = u32::MAX >> self.prefix;
        Ipv4Addr::from_bits(self.ip.to_bits() | host_bits)
    }

    fn is_broadcast(&self, ip: Ipv4Addr) -> bool {
        ip == Ipv4Addr::BROADCAST || ip == self.subnet_broadcast()
    }

    /// Frames a socket bound to 0.0.0.0 on this interface would receive.
    fn accepts(&self, dst: Ipv4Addr) -> bool {
        dst == self.ip || self.is_broadcast(dst)
    }
}

/// Everything the AF_XDP worker owns.
pub(super) struct AfXdpWorker {
    state: WorkerState,
    sockets: Vec<XskSocket>,
    link: Link,
    /// UDP port of each of `state.roles`, in the same order.
    role_ports: Vec<u16>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// Kernel sockets holding the service ports, so nothing else on the host takes them; they
    /// see no frame while steering works (the worker state holds the transfers' ports alike).
    _reservations: Vec<UdpSocket>,
}

/// Builds the worker over bound sockets and starts its thread.
pub(super) fn start(
    plan: &Arc<Mutex<Arc<BootPlan>>>,
    config: &EngineConfig,
    stop: &Arc<AtomicBool>,
    leases: Box<dyn LeaseStore + Send>,
    bound: AfXdpSockets,
) -> Result<(UdpWorkerSet, Vec<JoinHandle<()>>), EngineError> {
    let current = Arc::clone(&plan.lock().unwrap_or_else(PoisonError::into_inner));
    let AfXdpSockets {
        sockets,
        link,
        ports,
        transfer_ports,
        iface,
        reservations,
    } = bound;
    let mut roles = Vec::new();
    let mut role_ports = Vec::new();
    if current.dhcp_config().is_some() {
        roles.extend([Role::Dhcp, Role::ProxyDhcp]);
        role_ports.extend([ports.dhcp, ports.proxy_dhcp]);
    }
    roles.push(Role::TftpListen);
    role_ports.push(ports.tftp);
    let leases: Box<dyn LeaseStore + Send> = if roles.contains(&Role::Dhcp) {
        leases
    } else {
        Box::new(MemoryLeaseStore::new())
    };
    let max_transfers = config.max_transfers_per_worker.max(1) * config.workers.max(1);
    let steered = TransferPorts::Steered {
        iface: Some(iface),
        reserved: Arc::new(super::udp::reserved_ports()),
        map: transfer_ports,
    };
    let mut state = WorkerState::new(0, &current, roles, steered, max_transfers, leases)?;
    state.events = config.events.clone();
    let shared = Arc::new(WorkerShared::default());
    let set = UdpWorkerSet::new(vec![Arc::clone(&shared)]);
    let reload = set.reload_generation();
    let mut worker = AfXdpWorker {
        state,
        sockets,
        link,
        role_ports,
        neighbours: HashMap::new(),
        _reservations: reservations,
    };
    let plan = Arc::clone(plan);
    let stop = Arc::clone(stop);
    let thread = std::thread::Builder::new()
        .name("stampede-afxdp".into())
        .spawn(move || {
            if let Err(err) = worker.run(&plan, &stop, &reload, &shared) {
                tracing::error!(error = %err, "AF_XDP worker stopped");
            }
        })
        .map_err(EngineError::Thread)?;
    Ok((set, vec![thread]))
}

impl AfXdpWorker {
    fn run(
        &mut self,
        plan: &Mutex<Arc<BootPlan>>,
        stop: &AtomicBool,
        reload: &AtomicU64,
        shared: &WorkerShared,
    ) -> Result<(), crate::sys::afxdp::XskError> {
        let mut seen_reload = reload.load(Ordering::Relaxed);
        let mut next_publish = Instant::now();
        let mut pending: Vec<(usize, SocketAddr, Bytes)> = Vec::new();
        let mut arp_replies: Vec<ArpRequest> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let generation = reload.load(Ordering::Relaxed);
            if generation != seen_reload {
                seen_reload = generation;
                let new = Arc::clone(&plan.lock().unwrap_or_else(PoisonError::into_inner));
                self.state.apply_plan(new);
            }
            let now = Instant::now();
            let mut deadline = self
                .state
                .earliest_deadline()
                .map_or(now + TICK, |d| d.min(now + TICK));
            if self.state.holds_dhcp_replies() || self.sockets.iter().any(|s| s.tx_in_flight() > 0)
            {
                deadline = deadline.min(now + HELD_ACK_POLL);
            }
            wait_readable(&self.sockets, deadline.saturating_duration_since(now))?;

            let Self {
                state,
                sockets,
                link,
                role_ports,
                neighbours,
                ..
            } = self;
            for socket in sockets.iter_mut() {
                socket.receive(RX_BUDGET, |frame| {
                    if is_arp(frame) {
                        on_arp(state, link, neighbours, frame, &mut arp_replies);
                    } else {
                        let ports = Ports { roles: role_ports };
                        on_frame(state, link, &ports, neighbours, frame, &mut pending);
                    }
                });
            }
            let now = Instant::now();
            state.handle_timeouts(now);
            state.send_dhcp_replies(now);
            pending.append(&mut state.deferred);
            // Replies leave through the first queue's socket: the TX queue does not matter to
            // the peer, and one socket keeps the TX frames in one pool.
            if let Some(tx) = sockets.first_mut() {
                for request in arp_replies.drain(..) {
                    if tx.transmit(|frame| request.emit_reply(link.mac, frame).ok()) {
                        state.stats.afxdp_frames_sent += 1;
                        state.stats.afxdp_arp_replies += 1;
                    } else {
                        bump(&mut state.stats.afxdp_dropped, "no_tx_frame");
                    }
                }
                for (role, destination, payload) in pending.drain(..) {
                    transmit(
                        tx,
                        state,
                        link,
                        &Ports { roles: role_ports },
                        neighbours,
                        role,
                        destination,
                        &payload,
                    );
                }
                tx.flush()?;
            }
            pending.clear();
            arp_replies.clear();
            if Instant::now() >= next_publish {
                self.publish(shared);
                next_publish = Instant::now() + TICK;
            }
        }
        self.publish(shared);
        Ok(())
    }

    fn publish(&mut self, shared: &WorkerShared) {
        self.state.stats.tftp_transfers_active = self.state.active_transfers() as u64;
        let mut kernel_drops = 0;
        for socket in &self.sockets {
            let s = socket.stats();
            kernel_drops += s.kernel_rx_dropped + s.kernel_rx_ring_full;
        }
        self.state.stats.kernel_drops = kernel_drops;
        *shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.state.stats.clone();
    }
}

/// The path's service ports, by role index (transfers' ports are the worker state's).
struct Ports<'a> {
    roles: &'a [u16],
}

impl Ports<'_> {
    /// The worker's socket index for a destination port: a service's, or a running transfer's.
    fn socket_of(&self, state: &WorkerState, port: u16) -> Option<usize> {
        if let Some(role) = self.roles.iter().position(|p| *p == port) {
            return Some(role);
        }
        state
            .holds_port(port)
            .then(|| STEERED_PORT_SOCKET + usize::from(port))
    }

    /// The source port of a socket index.
    fn port_of(&self, socket: usize) -> Option<u16> {
        match socket.checked_sub(STEERED_PORT_SOCKET) {
            Some(port) => u16::try_from(port).ok(),
            None => self.roles.get(socket).copied(),
        }
    }
}

/// One received frame: parsed in place, checked against the interface, handed to the core of
/// its port. Every frame that goes no further is counted under a reason.
fn on_frame(
    state: &mut WorkerState,
    link: &Link,
    ports: &Ports<'_>,
    neighbours: &mut HashMap<Ipv4Addr, [u8; 6]>,
    frame: &[u8],
    pending: &mut Vec<(usize, SocketAddr, Bytes)>,
) {
    state.stats.afxdp_frames_received += 1;
    let parsed = match Udp4Frame::parse(frame) {
        Ok(parsed) => parsed,
        Err(reason) => {
            bump(&mut state.stats.afxdp_dropped, reason.as_str());
            return;
        }
    };
    if !link.accepts(parsed.dst_ip) {
        bump(&mut state.stats.afxdp_dropped, "not_for_this_host");
        return;
    }
    let Some(role) = ports.socket_of(state, parsed.dst_port) else {
        bump(&mut state.stats.afxdp_dropped, "no_service_on_port");
        return;
    };
    remember(neighbours, link, parsed.src_ip, parsed.src_mac);
    let mut outbox = Outbox::replying_from(role);
    state.handle(
        Received {
            socket: role,
            source: SocketAddrV4::new(parsed.src_ip, parsed.src_port).into(),
            destination: Some(parsed.dst_ip),
            payload: parsed.payload,
            truncated: false,
        },
        &mut outbox,
    );
    pending.extend(outbox.drain());
}

/// One ARP frame: a request for the server's address is answered (and its sender remembered);
/// anything else the program steered is counted.
fn on_arp(
    state: &mut WorkerState,
    link: &Link,
    neighbours: &mut HashMap<Ipv4Addr, [u8; 6]>,
    frame: &[u8],
    replies: &mut Vec<ArpRequest>,
) {
    state.stats.afxdp_frames_received += 1;
    let request = match ArpRequest::parse(frame) {
        Ok(request) => request,
        Err(reason) => {
            bump(&mut state.stats.afxdp_dropped, reason.as_str());
            return;
        }
    };
    if request.target_ip != link.ip {
        bump(&mut state.stats.afxdp_dropped, "arp_not_for_this_host");
        return;
    }
    remember(neighbours, link, request.sender_ip, request.sender_mac);
    replies.push(request);
}

/// Remembers which MAC `ip` sent from, bounded by [`MAX_NEIGHBOURS`].
fn remember(neighbours: &mut HashMap<Ipv4Addr, [u8; 6]>, link: &Link, ip: Ipv4Addr, mac: [u8; 6]) {
    if ip.is_unspecified() || link.is_broadcast(ip) {
        return;
    }
    if neighbours.len() >= MAX_NEIGHBOURS && !neighbours.contains_key(&ip) {
        neighbours.clear();
    }
    neighbours.insert(ip, mac);
}

/// Puts one datagram of a core into a TX frame.
#[expect(
    clippy::too_many_arguments,
    reason = "the worker's fields, split so the sockets can be borrowed apart from the state"
)]
fn transmit(
    socket: &mut XskSocket,
    state: &mut WorkerState,
    link: &Link,
    ports: &Ports<'_>,
    neighbours: &HashMap<Ipv4Addr, [u8; 6]>,
    role: usize,
    destination: SocketAddr,
    payload: &[u8],
) {
    let stats = &mut state.stats;
    let (SocketAddr::V4(destination), Some(src_port)) = (destination, ports.port_of(role)) else {
        bump(&mut stats.afxdp_dropped, "unroutable_reply");
        return;
    };
    let dst_ip = *destination.ip();
    let dst_mac = if link.is_broadcast(dst_ip) {
        [0xFF; 6]
    } else if let Some(mac) = neighbours.get(&dst_ip) {
        *mac
    } else {
        // Still delivered: the peer's IP stack takes a unicast IP packet in a broadcast frame.
        bump(&mut stats.afxdp_dropped, "unknown_neighbour_sent_broadcast");
        [0xFF; 6]
    };
    let len = payload.len();
    if Udp4Repr::frame_len(len) > socket.frame_capacity() {
        bump(&mut stats.afxdp_dropped, "reply_larger_than_frame");
        return;
    }
    let repr = Udp4Repr {
        dst_mac,
        src_mac: link.mac,
        src_ip: link.ip,
        dst_ip,
        src_port,
        dst_port: destination.port(),
    };
    let queued = socket.transmit(|frame| {
        frame[UDP_PAYLOAD_OFFSET..][..len].copy_from_slice(payload);
        repr.emit(frame, len).ok()
    });
    if queued {
        stats.afxdp_frames_sent += 1;
    } else {
        bump(&mut stats.afxdp_dropped, "no_tx_frame");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_broadcasts_follow_the_prefix() {
        let link = Link {
            mac: [2, 0, 0, 0, 0, 1],
            ip: Ipv4Addr::new(198, 18, 5, 1),
            prefix: 24,
        };
        assert!(link.accepts(Ipv4Addr::new(198, 18, 5, 255)));
        assert!(link.accepts(Ipv4Addr::BROADCAST));
        assert!(link.accepts(link.ip));
        assert!(!link.accepts(Ipv4Addr::new(198, 18, 5, 2)));
        let host = Link { prefix: 32, ..link };
        assert_eq!(host.subnet_broadcast(), Ipv4Addr::BROADCAST);
    }
}
