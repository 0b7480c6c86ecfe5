//! UDP workers: DHCP (67), ProxyDHCP (4011), TFTP requests (69) and TFTP transfers, each
//! worker on one io_uring.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use stampede_proto::{
    dhcp::{self, DhcpServer, LeaseStore, MemoryLeaseStore},
    events::{BootEvent, BootEventKind, Events, LogBudget, RefusalSampler},
    tftp::{self, TftpServer, TftpTransfer},
};

use super::{EngineConfig, EngineError};

mod report;
mod transfer_port;

use crate::{
    boot::{BootCatalog, BootPlan},
    sys::uring::{Outbox, Received, UdpWorker, UdpWorkerConfig},
};
use report::{DhcpReply, refuses_machine, unix_ms};
pub(super) use transfer_port::reserved_ports;

/// Longest wait in one turn of a worker's loop: how soon it notices a stop or reload request
/// and publishes its counters when nothing else wakes it.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// Receive buffer of each socket. A boot storm arrives in bursts (a rack powering on): the
/// kernel charges each queued datagram's whole buffer (a few KiB for a 300-byte DISCOVER), and
/// with 4 MiB a 10,000-machine storm overflowed a third of its DISCOVERs on a veth. Memory is
/// only taken while datagrams wait.
const SOCKET_RCVBUF: usize = 32 << 20;

/// How often a worker holding DHCP ACKs looks whether their leases became durable. A group
/// commit (one fsync for a batch of leases) takes about a millisecond on an SSD.
pub(super) const HELD_ACK_POLL: Duration = Duration::from_millis(1);

/// Largest datagram a core writes: a TFTP DATA block of the largest blksize (RFC 2348: 65464)
/// plus its 4-byte header.
const TX_BUF_LEN: usize = 65_468;

/// Counters of the UDP side, summed over workers. Every drop has a reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpStats {
    pub dhcp_received: u64,
    pub dhcp_replies: u64,
    /// Kept from the DHCP server by the boot plan (deny list, unknown machines in proxy mode).
    pub dhcp_refused: BTreeMap<&'static str, u64>,
    /// Dropped by the DHCP server, by reason.
    pub dhcp_dropped: BTreeMap<&'static str, u64>,
    pub tftp_requests: u64,
    /// Requests answered with a TFTP ERROR, by reason.
    pub tftp_refused: BTreeMap<&'static str, u64>,
    /// Requests dropped without an answer, by reason.
    pub tftp_dropped: BTreeMap<&'static str, u64>,
    pub tftp_transfers_started: u64,
    pub tftp_transfers_completed: u64,
    /// Transfers that ended without the client having everything, by reason.
    pub tftp_transfers_failed: BTreeMap<&'static str, u64>,
    pub tftp_transfers_active: u64,
    /// Transfer sockets open (one per transfer, and those closing), io_uring path only.
    pub tftp_transfer_sockets: u64,
    /// File bytes clients acknowledged.
    pub tftp_bytes: u64,
    pub tftp_retransmits: u64,
    /// Datagrams at a transfer port that no transfer or no valid packet matched, by reason.
    pub tftp_stray: BTreeMap<&'static str, u64>,
    /// Datagrams the kernel dropped because a socket's queue was full (`SO_RXQ_OVFL`).
    pub kernel_drops: u64,
    /// Datagrams whose source address the kernel did not report readably (none expected).
    pub unreadable: u64,
    /// Sends the kernel failed.
    pub send_errors: u64,
    /// Frames the AF_XDP path received from its sockets (zero on the io_uring path).
    pub afxdp_frames_received: u64,
    /// Frames the AF_XDP path queued for transmission.
    pub afxdp_frames_sent: u64,
    /// ARP requests for the server's address the AF_XDP path answered.
    pub afxdp_arp_replies: u64,
    /// Frames the AF_XDP path dropped, by reason (malformed frames, no TX frame, ...).
    pub afxdp_dropped: BTreeMap<&'static str, u64>,
}

impl UdpStats {
    fn add(&mut self, other: &Self) {
        self.afxdp_frames_received += other.afxdp_frames_received;
        self.afxdp_frames_sent += other.afxdp_frames_sent;
        self.afxdp_arp_replies += other.afxdp_arp_replies;
        self.dhcp_received += other.dhcp_received;
        self.dhcp_replies += other.dhcp_replies;
        self.tftp_requests += other.tftp_requests;
        self.tftp_transfers_started += other.tftp_transfers_started;
        self.tftp_transfers_completed += other.tftp_transfers_completed;
        self.tftp_transfers_active += other.tftp_transfers_active;
        self.tftp_transfer_sockets += other.tftp_transfer_sockets;
        self.tftp_bytes += other.tftp_bytes;
        self.tftp_retransmits += other.tftp_retransmits;
        self.kernel_drops += other.kernel_drops;
        self.unreadable += other.unreadable;
        self.send_errors += other.send_errors;
        for (mine, theirs) in [
            (&mut self.dhcp_refused, &other.dhcp_refused),
            (&mut self.dhcp_dropped, &other.dhcp_dropped),
            (&mut self.tftp_refused, &other.tftp_refused),
            (&mut self.tftp_dropped, &other.tftp_dropped),
            (
                &mut self.tftp_transfers_failed,
                &other.tftp_transfers_failed,
            ),
            (&mut self.tftp_stray, &other.tftp_stray),
            (&mut self.afxdp_dropped, &other.afxdp_dropped),
        ] {
            for (reason, n) in theirs {
                *mine.entry(reason).or_default() += n;
            }
        }
    }
}

pub(super) fn bump(map: &mut BTreeMap<&'static str, u64>, reason: &'static str) {
    *map.entry(reason).or_default() += 1;
}

/// What one worker shares with the rest of the process: its published counters and the reload
/// generation it has seen. Nothing here is touched per packet.
#[derive(Debug, Default)]
pub(super) struct WorkerShared {
    pub(super) stats: Mutex<UdpStats>,
}

/// The UDP workers of an engine, for reading counters and requesting reloads.
#[derive(Debug, Clone)]
pub struct UdpWorkerSet {
    workers: Vec<Arc<WorkerShared>>,
    reload: Arc<AtomicU64>,
}

impl UdpWorkerSet {
    pub(super) fn new(workers: Vec<Arc<WorkerShared>>) -> Self {
        Self {
            workers,
            reload: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(super) fn reload_generation(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reload)
    }

    pub fn stats(&self) -> UdpStats {
        let mut total = UdpStats::default();
        for worker in &self.workers {
            total.add(&worker.stats.lock().unwrap_or_else(PoisonError::into_inner));
        }
        total
    }

    pub(super) fn notify_reload(&self) {
        self.reload.fetch_add(1, Ordering::Relaxed);
    }
}

/// What each service socket of a worker is for. Transfer sockets come and go after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Dhcp,
    ProxyDhcp,
    TftpListen,
}

/// Where transfers' datagrams leave from: each transfer has a server port of its own, chosen
/// unpredictably (RFC 1350 §4: the TID is random), so only a client that saw the transfer's
/// first datagram can answer it, and a request spoofed from a victim's address cannot be
/// acknowledged into a flood (issue 19).
#[derive(Debug, Clone)]
pub(super) enum TransferPorts {
    /// io_uring: a socket per transfer, bound to a port drawn at random from all unprivileged
    /// ports (1024-65535, [`TRANSFER_PORT_FIRST`](transfer_port::TRANSFER_PORT_FIRST)) on the
    /// address the request was sent to and registered with the ring while the transfer runs. Not the kernel's ephemeral range:
    /// that is 28,232 ports by default, and an attacker's guess should hit one transfer in about
    /// 65,536. Ports the host reserves (`net.ipv4.ip_local_reserved_ports`) are skipped.
    Sockets {
        iface: Option<String>,
        reserved: Arc<Vec<(u16, u16)>>,
    },
    /// AF_XDP: a port drawn the same way, held by a kernel socket bound to it (which sees no
    /// frame: the XDP program takes them first) and marked in the program's port map while the
    /// transfer runs. The worker sees such a port as socket [`STEERED_PORT_SOCKET`] + port.
    Steered {
        iface: Option<String>,
        reserved: Arc<Vec<(u16, u16)>>,
        map: crate::xdp::AfXdpPorts,
    },
}

/// Socket index standing for port `p` of a [`TransferPorts::Steered`]: `STEERED_PORT_SOCKET + p`.
pub(super) const STEERED_PORT_SOCKET: usize = 1 << 20;

/// A transfer: the server port it runs from (its TID) and the client's address and port.
type TransferKey = (u16, SocketAddr);

pub(super) fn udp_socket(
    port: u16,
    iface: Option<&str>,
    reuse_port: bool,
    what: &'static str,
) -> Result<UdpSocket, EngineError> {
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let bind_err = |source| EngineError::Bind {
        what,
        addr: addr.into(),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(bind_err)?;
    }
    // DHCP replies to machines without an address go to 255.255.255.255.
    socket.set_broadcast(true).map_err(bind_err)?;
    if let Some(iface) = iface {
        // Bound to the boot interface: broadcasts leave through it, and only its traffic is
        // seen (socket(7) SO_BINDTODEVICE).
        socket
            .bind_device(Some(iface.as_bytes()))
            .map_err(bind_err)?;
    }
    set_receive_buffer(&socket, SOCKET_RCVBUF);
    socket.bind(&addr.into()).map_err(bind_err)?;
    Ok(socket.into())
}

/// Asks for `bytes` of receive buffer. With CAP_NET_ADMIN (the appliance runs as root)
/// `SO_RCVBUFFORCE` goes past `net.core.rmem_max`, whose usual default (208 KiB) holds only a few
/// hundred DISCOVERs; without it `SO_RCVBUF`, capped by that limit. Best effort: a smaller
/// buffer only means earlier drops, which are counted (`SO_RXQ_OVFL`).
pub(super) fn set_receive_buffer(socket: &Socket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    if setsockopt(socket, RcvBufForce, &bytes).is_err() {
        let _ = socket.set_recv_buffer_size(bytes);
    }
}

/// Binds every socket, then starts one thread per worker.
pub(super) fn start(
    plan: &Arc<Mutex<Arc<BootPlan>>>,
    config: &EngineConfig,
    stop: &Arc<AtomicBool>,
    leases: Box<dyn LeaseStore + Send>,
) -> Result<(UdpWorkerSet, Vec<JoinHandle<()>>), EngineError> {
    let mut leases = Some(leases);
    let current = Arc::clone(&plan.lock().unwrap_or_else(PoisonError::into_inner));
    let workers = config.workers.max(1);
    let iface = config.iface.as_deref();
    let mut bound = Vec::with_capacity(workers);
    for index in 0..workers {
        let mut sockets = Vec::new();
        let mut roles = Vec::new();
        if index == 0 && current.dhcp_config().is_some() {
            sockets.push(udp_socket(
                config.ports.dhcp,
                iface,
                false,
                "the DHCP port",
            )?);
            roles.push(Role::Dhcp);
            sockets.push(udp_socket(
                config.ports.proxy_dhcp,
                iface,
                false,
                "the PXE port",
            )?);
            roles.push(Role::ProxyDhcp);
        }
        sockets.push(udp_socket(config.ports.tftp, iface, true, "the TFTP port")?);
        roles.push(Role::TftpListen);
        let ring = UdpWorker::with_sockets(
            sockets,
            UdpWorkerConfig {
                buffer_group: index as u16,
                ..UdpWorkerConfig::default()
            },
        )?;
        bound.push((ring, roles));
    }
    let reload = Arc::new(AtomicU64::new(0));
    let mut shared = Vec::new();
    let mut threads = Vec::new();
    let per_worker_transfers = (config.max_transfers_per_worker).max(1);
    let reserved = Arc::new(reserved_ports());
    for (index, (ring, roles)) in bound.into_iter().enumerate() {
        let worker_shared = Arc::new(WorkerShared::default());
        shared.push(Arc::clone(&worker_shared));
        // The DHCP worker gets the appliance's store; the others serve no DHCP.
        let store: Box<dyn LeaseStore + Send> = if roles.contains(&Role::Dhcp) {
            leases
                .take()
                .unwrap_or_else(|| Box::new(MemoryLeaseStore::new()))
        } else {
            Box::new(MemoryLeaseStore::new())
        };
        let ports = TransferPorts::Sockets {
            iface: config.iface.clone(),
            reserved: reserved.clone(),
        };
        let mut state =
            WorkerState::new(index, &current, roles, ports, per_worker_transfers, store)?;
        state.events = config.events.clone();
        let plan = Arc::clone(plan);
        let stop = Arc::clone(stop);
        let reload = Arc::clone(&reload);
        let thread = std::thread::Builder::new()
            .name(format!("stampede-udp-{index}"))
            .spawn(move || {
                if let Err(err) = state.run(ring, &plan, &stop, &reload, &worker_shared) {
                    tracing::error!(worker = index, error = %err, "UDP worker stopped");
                }
            })
            .map_err(EngineError::Thread)?;
        threads.push(thread);
    }
    Ok((
        UdpWorkerSet {
            workers: shared,
            reload,
        },
        threads,
    ))
}

/// A running TFTP transfer and what the log says about it.
#[derive(Debug)]
struct TransferEntry {
    transfer: Box<TftpTransfer>,
    /// The socket it sends from: a ring socket index, or a range port's stand-in. `None` while
    /// its new socket waits in `opening` to be registered with the ring.
    socket: Option<usize>,
    /// Its new socket, before the ring takes it.
    opening: Option<UdpSocket>,
    file: String,
    /// Deadline of this transfer's live entry in the worker's timer heap (the earliest one
    /// pushed); heap entries for other instants are stale and skipped.
    armed: Option<Instant>,
}

/// One worker's protocol state. Owned by its thread; nothing in it is shared.
pub(super) struct WorkerState {
    index: usize,
    pub(super) roles: Vec<Role>,
    dhcp: Option<DhcpServer>,
    leases: Box<dyn LeaseStore + Send>,
    plan: Arc<BootPlan>,
    tftp: TftpServer<BootCatalog>,
    transfers: HashMap<TransferKey, TransferEntry>,
    /// Server port of each client's running transfer: a repeated request starts no second one.
    peers: HashMap<SocketAddr, u16>,
    /// Ring socket index of each running transfer's port (io_uring path).
    socket_ports: HashMap<usize, u16>,
    /// The sockets holding running transfers' steered ports (AF_XDP path), by port.
    held_ports: HashMap<u16, UdpSocket>,
    ports: TransferPorts,
    /// Transfers whose socket the loop must register with the ring before they send.
    opening: Vec<TransferKey>,
    /// Sockets of finished transfers, closed by the loop after the turn's sends.
    pub(super) closing: Vec<usize>,
    /// Keys for the transfer ports' random choice (SipHash with keys from the OS's randomness).
    random: std::hash::RandomState,
    random_counter: u64,
    /// Transfers' retransmission and dally deadlines, earliest first. A transfer's deadline
    /// moves later with every packet, so an entry is only pushed when it moves earlier; when an
    /// early entry pops, the transfer is re-armed at its real deadline. The worker's turn is
    /// then O(log n) in running transfers instead of a scan of all of them.
    timers: BinaryHeap<Reverse<(Instant, TransferKey)>>,
    max_transfers: usize,
    pub(super) stats: UdpStats,
    buf: Vec<u8>,
    /// Datagrams produced outside a receive callback (timeouts), sent by the loop.
    pub(super) deferred: Vec<(usize, SocketAddr, Bytes)>,
    pub(super) events: Events,
    /// Which DHCP refusals become boot events (per machine and reason, rate-limited).
    refusals: RefusalSampler,
    /// INFO lines for DHCP replies this second; the rest are summed up (issue 21).
    reply_lines: LogBudget,
}

/// DHCP reply lines a worker writes at INFO in a second: a rack's DHCP shows machine by machine,
/// a storm as one summary a second (every reply is still a boot event, and a DEBUG line).
const REPLY_LINES_PER_SECOND: u32 = 20;

impl WorkerState {
    pub(super) fn new(
        index: usize,
        plan: &Arc<BootPlan>,
        roles: Vec<Role>,
        ports: TransferPorts,
        max_transfers: usize,
        leases: Box<dyn LeaseStore + Send>,
    ) -> Result<Self, EngineError> {
        let dhcp = if roles.contains(&Role::Dhcp) {
            plan.dhcp_server()?
        } else {
            None
        };
        Ok(Self {
            index,
            roles,
            dhcp,
            leases,
            plan: Arc::clone(plan),
            tftp: plan.tftp_server(),
            transfers: HashMap::new(),
            peers: HashMap::new(),
            socket_ports: HashMap::new(),
            held_ports: HashMap::new(),
            ports,
            opening: Vec::new(),
            closing: Vec::new(),
            random: std::hash::RandomState::new(),
            random_counter: 0,
            timers: BinaryHeap::new(),
            max_transfers,
            stats: UdpStats::default(),
            buf: vec![0u8; TX_BUF_LEN],
            deferred: Vec::new(),
            events: Events::default(),
            refusals: RefusalSampler::new(),
            reply_lines: LogBudget::new(REPLY_LINES_PER_SECOND),
        })
    }

    /// The transfer port a datagram arrived at, from the socket it arrived on.
    fn transfer_port_of(&self, socket: usize) -> Option<u16> {
        match socket.checked_sub(STEERED_PORT_SOCKET) {
            Some(port) => u16::try_from(port).ok(),
            None => self.socket_ports.get(&socket).copied(),
        }
    }

    /// An unpredictable number (for transfer ports).
    fn random(&mut self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        self.random_counter += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.random_counter);
        hasher.finish()
    }

    /// Registers the sockets of transfers accepted in the last batch with the ring and sends
    /// their first datagram (deferred to the loop's sends).
    fn open_transfers(&mut self, ring: &mut UdpWorker, now: Instant) {
        for key in std::mem::take(&mut self.opening) {
            let Some(socket) = self
                .transfers
                .get_mut(&key)
                .and_then(|entry| entry.opening.take())
            else {
                continue;
            };
            match ring.add_socket(socket) {
                Ok(index) => {
                    self.socket_ports.insert(index, key.0);
                    if let Some(entry) = self.transfers.get_mut(&key) {
                        entry.socket = Some(index);
                    }
                    self.drive_transfer(now, key, None);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a TFTP transfer socket was refused by the ring");
                    self.transfers.remove(&key);
                    self.peers.remove(&key.1);
                    bump(&mut self.stats.tftp_dropped, "no_transfer_socket");
                }
            }
        }
    }

    fn run(
        &mut self,
        mut ring: UdpWorker,
        plan: &Mutex<Arc<BootPlan>>,
        stop: &AtomicBool,
        reload: &AtomicU64,
        shared: &WorkerShared,
    ) -> Result<(), crate::sys::uring::UringError> {
        let mut seen_reload = reload.load(Ordering::Relaxed);
        let mut next_publish = Instant::now();
        // The turn's wake-up bounds are kept until they pass rather than recomputed from `now`
        // each turn: an unchanged deadline leaves the ring's timeout armed, where a deadline
        // that moves every turn would cost a timeout removal, a new timeout and their two
        // completions per datagram (one lock-step TFTP block).
        let mut next_tick = Instant::now() + TICK;
        let mut held_poll: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let generation = reload.load(Ordering::Relaxed);
            if generation != seen_reload {
                seen_reload = generation;
                let new = Arc::clone(&plan.lock().unwrap_or_else(PoisonError::into_inner));
                self.apply_plan(new);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
            }
            let mut deadline = self
                .earliest_deadline()
                .map_or(next_tick, |d| d.min(next_tick));
            if self.dhcp.as_ref().is_some_and(|d| d.queued() > 0) {
                // ACKs wait for their lease to be durable (group commit): look again soon.
                let poll = match held_poll {
                    Some(at) if at > now => at,
                    _ => now + HELD_ACK_POLL,
                };
                held_poll = Some(poll);
                deadline = deadline.min(poll);
            } else {
                held_poll = None;
            }
            ring.run_once(Some(deadline), |datagram, outbox| {
                self.handle(datagram, outbox)
            })?;
            self.open_transfers(&mut ring, Instant::now());
            self.handle_timeouts(Instant::now());
            self.send_dhcp_replies(Instant::now());
            for (socket, destination, payload) in self.deferred.drain(..) {
                ring.send_from(socket, destination, payload)?;
            }
            for socket in self.closing.drain(..) {
                ring.close_socket(socket)?;
            }
            if Instant::now() >= next_publish {
                self.publish(&ring, shared);
                self.summarize_replies(Instant::now());
                next_publish = Instant::now() + TICK;
            }
        }
        self.publish(&ring, shared);
        self.summarize_replies(Instant::now());
        Ok(())
    }

    fn publish(&mut self, ring: &UdpWorker, shared: &WorkerShared) {
        let ring_stats = ring.stats();
        self.stats.kernel_drops = ring_stats.kernel_drops;
        self.stats.unreadable = ring_stats.bad_source;
        self.stats.send_errors = ring_stats.send_errors;
        self.stats.tftp_transfers_active = self.transfers.len() as u64;
        self.stats.tftp_transfer_sockets =
            ring.open_sockets().saturating_sub(self.roles.len()) as u64;
        *shared.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.stats.clone();
    }

    /// A new boot plan: new requests follow it; running transfers keep their files; leases stay.
    pub(super) fn apply_plan(&mut self, plan: Arc<BootPlan>) {
        self.tftp = plan.tftp_server();
        if self.roles.contains(&Role::Dhcp) {
            match plan.dhcp_server() {
                Ok(server) => self.dhcp = server,
                Err(err) => {
                    tracing::error!(error = %err, "reload: DHCP config refused, keeping the old one")
                }
            }
        }
        self.plan = plan;
        tracing::info!(worker = self.index, "boot plan reloaded");
    }

    /// Queues the DHCP replies that may leave: all but ACKs whose lease change is not durable
    /// yet (those wait for the store's group commit). Sent right after the current batch.
    pub(super) fn send_dhcp_replies(&mut self, now: Instant) {
        let Some(server) = self.dhcp.as_mut() else {
            return;
        };
        if server.queued() == 0 {
            return;
        }
        server.handle_lease_durable(self.leases.durable_seq());
        let dhcp_socket = self.roles.iter().position(|r| *r == Role::Dhcp);
        let proxy_socket = self.roles.iter().position(|r| *r == Role::ProxyDhcp);
        while let Some(transmit) = server.poll_transmit(now, &mut self.buf) {
            let reply = &self.buf[..transmit.len];
            // A client without an address cannot answer ARP for the address we unicast to, and
            // a UDP socket cannot name the MAC to send to: broadcast instead, which RFC 2131
            // §4.1 allows ("If unicasting is not possible, the message MAY be sent as an IP
            // broadcast"). The AF_XDP path can unicast at layer 2.
            let destination = if transmit.broadcast || transmit.dst_mac.is_some() {
                Ipv4Addr::BROADCAST
            } else {
                transmit.dst_ip
            };
            let socket = if transmit.src_port == dhcp::PXE_PORT {
                proxy_socket
            } else {
                dhcp_socket
            };
            // The reply the server just wrote, as it reports it (no parse of the bytes).
            while let Some(event) = server.poll_event() {
                if let dhcp::ServerEvent::Replied {
                    message,
                    mac,
                    yiaddr,
                    boot_file,
                } = event
                {
                    let report = DhcpReply {
                        message,
                        mac,
                        yiaddr,
                        boot_file: &boot_file,
                        destination,
                    };
                    let at_info = self.reply_lines.spend(now);
                    report.report(&self.events, at_info);
                }
            }
            let Some(socket) = socket else { continue };
            self.stats.dhcp_replies += 1;
            self.deferred.push((
                socket,
                SocketAddr::new(destination.into(), transmit.dst_port),
                Bytes::copy_from_slice(reply),
            ));
        }
    }

    /// One INFO line for the DHCP replies not logged one by one, once a second at most.
    pub(super) fn summarize_replies(&mut self, now: Instant) {
        if let Some(s) = self.reply_lines.summary(now) {
            tracing::info!(
                target: "stampede::boot",
                worker = self.index,
                replies = s.count,
                seconds = format_args!("{:.1}", now.saturating_duration_since(s.since).as_secs_f64()),
                "dhcp replies not logged one by one (each is a boot event; RUST_LOG=stampede::boot=debug logs them all)"
            );
        }
    }

    /// The earliest timer (possibly stale: waking early is harmless).
    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Makes sure the heap holds an entry no later than `key`'s current deadline.
    fn arm(&mut self, key: TransferKey) {
        let Some(entry) = self.transfers.get_mut(&key) else {
            return;
        };
        let Some(deadline) = entry.transfer.poll_timeout() else {
            return;
        };
        if entry.armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        entry.armed = Some(deadline);
        self.timers.push(Reverse((deadline, key)));
    }

    /// Whether DHCP ACKs wait for their lease to become durable.
    pub(super) fn holds_dhcp_replies(&self) -> bool {
        self.dhcp.as_ref().is_some_and(|d| d.queued() > 0)
    }

    pub(super) fn active_transfers(&self) -> usize {
        self.transfers.len()
    }

    pub(super) fn handle(&mut self, datagram: Received<'_>, outbox: &mut Outbox) {
        let now = Instant::now();
        if datagram.truncated {
            // Larger than any request or ACK of the services (a receive buffer holds a full
            // 1500-byte frame): counted under the service it was sent to, never parsed.
            match self.roles.get(datagram.socket).copied() {
                Some(Role::Dhcp | Role::ProxyDhcp) => {
                    self.stats.dhcp_received += 1;
                    bump(&mut self.stats.dhcp_dropped, "too_large");
                }
                Some(Role::TftpListen) => {
                    self.stats.tftp_requests += 1;
                    bump(&mut self.stats.tftp_dropped, "too_large");
                }
                None => bump(&mut self.stats.tftp_stray, "too_large"),
            }
            return;
        }
        match self.roles.get(datagram.socket).copied() {
            Some(Role::Dhcp) => self.handle_dhcp(now, datagram, dhcp::SERVER_PORT),
            Some(Role::ProxyDhcp) => self.handle_dhcp(now, datagram, dhcp::PXE_PORT),
            Some(Role::TftpListen) => self.handle_tftp_request(now, datagram, outbox),
            None => match self.transfer_port_of(datagram.socket) {
                Some(port) => self.handle_tftp_data(now, port, datagram, outbox),
                // A late datagram at the socket of a transfer that just ended.
                None => bump(&mut self.stats.tftp_stray, "no_transfer"),
            },
        }
    }

    fn handle_dhcp(&mut self, now: Instant, datagram: Received<'_>, protocol_port: u16) {
        self.stats.dhcp_received += 1;
        let SocketAddr::V4(source) = datagram.source else {
            return;
        };
        let Some(server) = self.dhcp.as_mut() else {
            return;
        };
        let local = SocketAddrV4::new(
            datagram.destination.unwrap_or(Ipv4Addr::BROADCAST),
            protocol_port,
        );
        match server.handle_datagram(now, source, local, datagram.payload, &mut self.leases) {
            Ok(_) => {}
            Err(dhcp::DropReason::Refused(refusal)) => {
                bump(&mut self.stats.dhcp_refused, refusal.as_str())
            }
            Err(reason) => bump(&mut self.stats.dhcp_dropped, reason.as_str()),
        }
        // The server reports what it refused on the request it parsed: no second parse here.
        let mut refused = None;
        while let Some(event) = server.poll_event() {
            if let dhcp::ServerEvent::Dropped {
                reason,
                mac: Some(mac),
            } = event
                && refuses_machine(reason)
            {
                refused = Some((mac, reason));
            }
        }
        if let Some((mac, reason)) = refused {
            self.report_refusal(now, mac, source, reason.as_str());
        }
        self.send_dhcp_replies(now);
    }

    fn handle_tftp_request(&mut self, now: Instant, datagram: Received<'_>, outbox: &mut Outbox) {
        self.stats.tftp_requests += 1;
        // The listening core keeps no state: a retransmitted RRQ of a running transfer must not
        // start a second one. The transfer answers it with its first datagram again if the
        // client has not answered that yet: the client evidently lost it.
        if let Some(&port) = self.peers.get(&datagram.source) {
            let key = (port, datagram.source);
            let answered = self
                .transfers
                .get_mut(&key)
                .is_some_and(|entry| entry.transfer.handle_repeated_request(now));
            if answered {
                self.drive_transfer(now, key, Some(outbox));
            } else {
                bump(&mut self.stats.tftp_dropped, "duplicate_request");
            }
            return;
        }
        if self.transfers.len() >= self.max_transfers {
            // The client retransmits its request; by then a slot may be free.
            bump(&mut self.stats.tftp_dropped, "too_many_transfers");
            return;
        }
        match self
            .tftp
            .handle_request(now, datagram.source, datagram.payload, &mut self.buf)
        {
            tftp::Request::Accepted(transfer) => {
                let Some((port, socket, opening)) = self.transfer_port(datagram.destination) else {
                    bump(&mut self.stats.tftp_dropped, "no_transfer_socket");
                    return;
                };
                let file = request_file_name(datagram.payload);
                let params = transfer.params();
                tracing::info!(
                    target: "stampede::boot",
                    client = %datagram.source,
                    file = %file,
                    blksize = params.blksize,
                    windowsize = params.windowsize,
                    "tftp transfer started"
                );
                self.stats.tftp_transfers_started += 1;
                self.events.record(BootEvent {
                    at_unix_ms: unix_ms(),
                    mac: None,
                    client: datagram.source,
                    kind: BootEventKind::TftpStarted {
                        file: file.clone(),
                        blksize: params.blksize,
                        windowsize: params.windowsize,
                    },
                });
                let key = (port, datagram.source);
                let ready = opening.is_none();
                self.transfers.insert(
                    key,
                    TransferEntry {
                        transfer,
                        socket,
                        opening,
                        file,
                        armed: None,
                    },
                );
                self.peers.insert(datagram.source, port);
                if ready {
                    self.drive_transfer(now, key, Some(outbox));
                } else {
                    self.opening.push(key);
                }
            }
            tftp::Request::Refused { reason, reply } => {
                tracing::info!(
                    target: "stampede::boot",
                    client = %datagram.source,
                    file = %request_file_name(datagram.payload),
                    reason = reason.as_str(),
                    "tftp request refused"
                );
                bump(&mut self.stats.tftp_refused, reason.as_str());
                outbox.send_to(reply.dst, Bytes::copy_from_slice(&self.buf[..reply.len]));
            }
            tftp::Request::Dropped(reason) => bump(&mut self.stats.tftp_dropped, reason.as_str()),
        }
    }

    fn handle_tftp_data(
        &mut self,
        now: Instant,
        port: u16,
        datagram: Received<'_>,
        outbox: &mut Outbox,
    ) {
        let key = (port, datagram.source);
        let Some(entry) = self.transfers.get_mut(&key) else {
            // Not the client of the transfer at this port (RFC 1350 §4). Not answered: the
            // source may be spoofed, and an ERROR would go to whoever it names.
            bump(&mut self.stats.tftp_stray, "unknown_tid");
            return;
        };
        if let Err(reason) = entry
            .transfer
            .handle_datagram(now, datagram.source, datagram.payload)
        {
            bump(&mut self.stats.tftp_stray, reason.as_str());
        }
        self.drive_transfer(now, key, Some(outbox));
    }

    pub(super) fn handle_timeouts(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.transfers.get_mut(&key) else {
                continue;
            };
            if entry.armed != Some(at) {
                continue;
            }
            entry.armed = None;
            if entry.transfer.poll_timeout().is_some_and(|d| d <= now) {
                entry.transfer.handle_timeout(now);
                self.drive_transfer(now, key, None);
            }
            self.arm(key);
        }
    }

    /// Sends what the transfer has to send (into `outbox` inside a receive callback, else
    /// deferred to the loop) and retires it when finished.
    fn drive_transfer(&mut self, now: Instant, key: TransferKey, mut outbox: Option<&mut Outbox>) {
        let peer = key.1;
        let Some(entry) = self.transfers.get_mut(&key) else {
            return;
        };
        let Some(socket) = entry.socket else {
            return;
        };
        while let Some(transmit) = entry.transfer.poll_transmit(now, &mut self.buf) {
            let payload = Bytes::copy_from_slice(&self.buf[..transmit.len]);
            match outbox.as_deref_mut() {
                Some(outbox) => outbox.send_from(socket, transmit.dst, payload),
                None => self.deferred.push((socket, transmit.dst, payload)),
            }
        }
        let Some(outcome) = entry.transfer.is_finished() else {
            self.arm(key);
            return;
        };
        let Some(entry) = self.transfers.remove(&key) else {
            return;
        };
        self.peers.remove(&peer);
        self.release_port(socket, key.0);
        self.stats.tftp_bytes += outcome.file_bytes;
        self.stats.tftp_retransmits += outcome.retransmits;
        match outcome.result {
            Ok(()) => {
                self.stats.tftp_transfers_completed += 1;
                self.events.record(BootEvent {
                    at_unix_ms: unix_ms(),
                    mac: None,
                    client: peer,
                    kind: BootEventKind::TftpDone {
                        file: entry.file.clone(),
                        bytes: outcome.file_bytes,
                        retransmits: u32::try_from(outcome.retransmits).unwrap_or(u32::MAX),
                        duration_ms: outcome.duration.as_millis() as u64,
                    },
                });
                tracing::info!(
                    target: "stampede::boot",
                    client = %peer,
                    file = %entry.file,
                    bytes = outcome.file_bytes,
                    retransmits = outcome.retransmits,
                    duration_ms = outcome.duration.as_millis() as u64,
                    "tftp transfer done"
                );
            }
            Err(failure) => {
                bump(&mut self.stats.tftp_transfers_failed, failure.as_str());
                self.events.record(BootEvent {
                    at_unix_ms: unix_ms(),
                    mac: None,
                    client: peer,
                    kind: BootEventKind::TftpFailed {
                        file: entry.file.clone(),
                        bytes: outcome.file_bytes,
                        reason: failure.as_str().into(),
                    },
                });
                tracing::warn!(
                    target: "stampede::boot",
                    client = %peer,
                    file = %entry.file,
                    bytes = outcome.file_bytes,
                    reason = failure.as_str(),
                    "tftp transfer failed"
                );
            }
        }
    }
}

/// The file name of a read request, for the log and the boot events: escaped and bounded, since
/// the client chose it ([`stampede_proto::text::peer_text`]; the core did the real parsing).
fn request_file_name(datagram: &[u8]) -> String {
    let name = datagram.get(2..).unwrap_or_default();
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    stampede_proto::text::peer_text(&name[..end])
}
