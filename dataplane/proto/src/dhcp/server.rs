//! The DHCP/PXE server core: datagrams in, replies out, leases through a [`LeaseStore`].
//!
//! Two modes. **Proxy** (PXE 2.1 §2.2.3, "ProxyDHCP") runs beside the LAN's own DHCP server and
//! answers only PXE clients, with boot instructions and no address, on port 67 (DISCOVER → OFFER)
//! and port 4011 (REQUEST → ACK). **Authoritative** hands out addresses from pools as well.
//!
//! The server has no timers: lease and offer expiry is evaluated lazily against the `now` each
//! call brings, so [`DhcpServer::poll_timeout`] is always `None` and exists for symmetry with the
//! other cores.
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::Admission;
use super::boot::{BootClient, BootConfig, BootDecision, NoBoot, decide};
use super::lease::{ClientKey, CommitSeq, Lease, LeaseChange, LeaseState, LeaseStore};
use super::options::{MessageType, PxeVendorOptions, ipxe, pxe};
use super::wire::{FLAG_BROADCAST, OpCode, Repr};

mod report;

pub use report::{DropReason, ServerEvent, ServerStats, Transmit};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server port (PXE 2.1 §2.2.4).
pub const PXE_PORT: u16 = 4011;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// An address pool on one subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Network address of the subnet.
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    /// First and last address handed out (inclusive), inside the subnet.
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub lease_time: Duration,
    /// Fixed addresses by MAC. They may lie outside `first..=last` but must be in the subnet.
    pub reservations: HashMap<[u8; 6], Ipv4Addr>,
}

impl Pool {
    pub fn mask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.mask());
        u32::from(ip) & mask == u32::from(self.subnet) & mask
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    fn size(&self) -> u32 {
        u32::from(self.last)
            .saturating_sub(u32::from(self.first))
            .saturating_add(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMode {
    Proxy,
    Authoritative { pools: Vec<Pool> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// This server's address: option 54, and source of replies.
    pub server_ip: Ipv4Addr,
    pub mode: ServerMode,
    pub boot: BootConfig,
    /// How long an offered address stays held for its client. 60 s covers a PXE ROM's four
    /// retransmits (4+8+16+32 s is longer, but by then the client restarts with a DISCOVER).
    pub offer_hold: Duration,
    /// Quarantine after DHCPDECLINE. 10 minutes: long enough for the squatter to be found, short
    /// enough that a pool of reboots does not run dry.
    pub decline_quarantine: Duration,
    /// Replies waiting for `poll_transmit`; beyond this new replies are dropped (and counted).
    pub max_queued: usize,
    /// With [`BootConfig::ipxe_chainload`]: how long after an iPXE ROM was told to chainload the
    /// loader the same MAC's iPXE counts as the loader (stage 2) and gets the script. 120 s
    /// covers the download and iPXE's wait for IPv6 autoconfiguration (the second DISCOVER came
    /// ~20 s after the ACK under QEMU TCG); a machine that reboots later chainloads again, and
    /// one that reboots sooner only boots the script from its ROM.
    pub chainload_window: Duration,
    /// Which machines are answered at all; checked on the request as parsed for serving it.
    /// Shared: a fleet's lists are built once and every worker's server holds them.
    pub admission: Arc<Admission>,
}

impl ServerConfig {
    pub fn proxy(server_ip: Ipv4Addr, boot: BootConfig) -> Self {
        Self {
            server_ip,
            mode: ServerMode::Proxy,
            boot,
            offer_hold: Duration::from_secs(60),
            decline_quarantine: Duration::from_secs(600),
            max_queued: 4096,
            chainload_window: Duration::from_secs(120),
            admission: Arc::default(),
        }
    }

    pub fn authoritative(server_ip: Ipv4Addr, boot: BootConfig, pools: Vec<Pool>) -> Self {
        Self {
            mode: ServerMode::Authoritative { pools },
            ..Self::proxy(server_ip, boot)
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let ServerMode::Authoritative { pools } = &self.mode {
            if pools.is_empty() {
                return Err(ConfigError::NoPools);
            }
            for (i, p) in pools.iter().enumerate() {
                if p.prefix_len > 32 || !p.contains(p.first) || !p.contains(p.last) {
                    return Err(ConfigError::RangeOutsideSubnet { pool: i });
                }
                if u32::from(p.first) > u32::from(p.last) {
                    return Err(ConfigError::EmptyRange { pool: i });
                }
                if let Some((_, ip)) = p.reservations.iter().find(|(_, ip)| !p.contains(**ip)) {
                    return Err(ConfigError::ReservationOutsideSubnet { pool: i, ip: *ip });
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("authoritative mode needs at least one pool")]
    NoPools,
    #[error("pool {pool}: range is not inside its subnet")]
    RangeOutsideSubnet { pool: usize },
    #[error("pool {pool}: first address is after the last")]
    EmptyRange { pool: usize },
    #[error("pool {pool}: reservation {ip} is not inside the subnet")]
    ReservationOutsideSubnet { pool: usize, ip: Ipv4Addr },
}

/// What a datagram led to, when it was not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A reply of this type is queued.
    Replied(MessageType),
    /// Accepted without reply (RELEASE, DECLINE).
    Absorbed,
}

/// The state a REQUEST reveals (RFC 2131 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// Server id present: the client picked an offer.
    Selecting,
    /// No server id, no ciaddr, requested address: rebooted, checking its old address.
    InitReboot,
    /// ciaddr set, unicast to us: renewing at T1.
    Renewing,
    /// ciaddr set, broadcast: rebinding at T2.
    Rebinding,
}

impl RequestState {
    /// `local` is where the datagram was addressed: broadcast marks REBINDING.
    pub fn classify(req: &Repr, local: Ipv4Addr) -> Option<Self> {
        if req.options.server_id.is_some() {
            Some(Self::Selecting)
        } else if !req.ciaddr.is_unspecified() {
            Some(if local.is_broadcast() {
                Self::Rebinding
            } else {
                Self::Renewing
            })
        } else if req.options.requested_ip.is_some() {
            Some(Self::InitReboot)
        } else {
            None
        }
    }
}

#[derive(Debug)]
struct Queued {
    reply: Repr,
    to: Transmit,
    /// Held until the store says this write is durable.
    after: Option<CommitSeq>,
}

/// The server core. See the module documentation of [`crate::dhcp`] for the call pattern.
#[derive(Debug)]
pub struct DhcpServer {
    config: ServerConfig,
    /// Next address to try per pool, so allocation is O(1) amortised on a fresh pool.
    cursors: Vec<u32>,
    queue: VecDeque<Queued>,
    durable: CommitSeq,
    stats: ServerStats,
    /// MACs whose iPXE ROM was told to chainload the loader, and when: the per-session marker
    /// that tells stage 2 from stage 1, which send identical DHCP (see [`BootClient::loader_sent`]).
    chainloaded: HashMap<[u8; 6], Instant>,
    /// What happened, oldest first, for [`poll_event`](Self::poll_event).
    events: VecDeque<ServerEvent>,
}

/// Entries in [`DhcpServer::chainloaded`] above which expired ones are swept on insert.
const CHAINLOADED_SWEEP: usize = 4096;

type Outcome = Result<Handled, DropReason>;

impl DhcpServer {
    pub fn new(config: ServerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let pools = match &config.mode {
            ServerMode::Authoritative { pools } => pools.len(),
            ServerMode::Proxy => 0,
        };
        Ok(Self {
            config,
            cursors: vec![0; pools],
            queue: VecDeque::new(),
            durable: 0,
            stats: ServerStats::default(),
            chainloaded: HashMap::new(),
            events: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Always `None`: see the module documentation.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// Tells the server that lease writes up to `seq` are durable, releasing held ACKs.
    pub fn handle_lease_durable(&mut self, seq: CommitSeq) {
        self.durable = self.durable.max(seq);
    }

    /// Handles one UDP datagram. `src` is its source, `local` the address and port it arrived on
    /// (the engine gets the destination from `IP_PKTINFO`; a broadcast destination marks a
    /// rebinding client). Drops are counted and also returned.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        local: SocketAddrV4,
        bytes: &[u8],
        store: &mut impl LeaseStore,
    ) -> Outcome {
        self.stats.received += 1;
        let outcome = match Repr::parse_bytes(bytes) {
            Ok(req) => {
                let outcome = self.dispatch(now, src, local, &req, store);
                if let Err(reason) = outcome {
                    self.note(ServerEvent::Dropped {
                        reason,
                        mac: req.mac(),
                    });
                }
                outcome
            }
            Err(_) => Err(DropReason::Malformed),
        };
        self.durable = self.durable.max(store.durable_seq());
        match outcome {
            Ok(Handled::Replied(mt)) => match mt {
                MessageType::Offer => self.stats.offers += 1,
                MessageType::Ack => self.stats.acks += 1,
                MessageType::Nak => self.stats.naks += 1,
                _ => {}
            },
            Ok(Handled::Absorbed) => {}
            Err(reason) => self.stats.dropped[reason.index()] += 1,
        }
        outcome
    }

    /// Writes the next reply into `buf`. Replies whose lease write is not yet durable stay queued
    /// while later ones (offers, NAKs) may pass them.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let at = self
                .queue
                .iter()
                .position(|q| q.after.is_none_or(|seq| seq <= self.durable))?;
            let q = self.queue.remove(at)?;
            match q.reply.emit_bytes(buf) {
                Ok(len) => {
                    self.stats.transmitted += 1;
                    // The reply is spent: its boot file moves into the event, no copy.
                    let mut reply = q.reply;
                    let boot_file = match reply.options.bootfile.take() {
                        Some(file) => file,
                        None => std::mem::take(&mut reply.file),
                    };
                    self.note(ServerEvent::Replied {
                        message: reply.options.message_type.unwrap_or(MessageType::Ack),
                        mac: reply.mac(),
                        yiaddr: reply.yiaddr,
                        boot_file,
                    });
                    return Some(Transmit { len, ..q.to });
                }
                Err(_) => self.stats.dropped[DropReason::BufferTooSmall.index()] += 1,
            }
        }
    }

    /// The next thing the server did, oldest first. The queue keeps at most
    /// [`ServerConfig::max_queued`] events; older ones are dropped (counted in
    /// [`ServerStats::events_lost`]) when nobody reads them.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn note(&mut self, event: ServerEvent) {
        if self.events.len() >= self.config.max_queued.max(1) {
            self.events.pop_front();
            self.stats.events_lost += 1;
        }
        self.events.push_back(event);
    }

    /// Replies waiting, including those held for durability.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn dispatch(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        local: SocketAddrV4,
        req: &Repr,
        store: &mut impl LeaseStore,
    ) -> Outcome {
        if req.op != OpCode::BootRequest {
            return Err(DropReason::NotARequest);
        }
        let mt = req.options.message_type.ok_or(DropReason::NoMessageType)?;
        let mac = req.mac().ok_or(DropReason::UnsupportedHardware)?;
        if mac == [0; 6] || mac == [0xFF; 6] {
            return Err(DropReason::InvalidClientMac);
        }
        match mt {
            MessageType::Discover
            | MessageType::Request
            | MessageType::Decline
            | MessageType::Release
            | MessageType::Inform => {}
            MessageType::Unknown(_) => return Err(DropReason::UnknownMessageType),
            _ => return Err(DropReason::UnexpectedMessageType),
        }
        self.config
            .admission
            .admit(req)
            .map_err(DropReason::Refused)?;
        if local.port() == PXE_PORT {
            return self.pxe_boot_server(now, src, req, mt);
        }
        match &self.config.mode {
            ServerMode::Proxy => match mt {
                MessageType::Discover => self.proxy_offer(now, req),
                _ => Err(DropReason::NotForProxy),
            },
            ServerMode::Authoritative { .. } => match mt {
                MessageType::Discover => self.discover(now, req, mac, store),
                MessageType::Request => self.request(now, req, mac, local.ip(), store),
                MessageType::Decline => self.decline(now, req, mac, store),
                MessageType::Release => self.release(req, store),
                _ => self.inform(now, req),
            },
        }
    }

    fn enqueue(&mut self, reply: Repr, to: Transmit, after: Option<CommitSeq>) -> Outcome {
        if self.queue.len() >= self.config.max_queued {
            return Err(DropReason::QueueFull);
        }
        let mt = reply.options.message_type.unwrap_or(MessageType::Ack);
        self.queue.push_back(Queued { reply, to, after });
        Ok(Handled::Replied(mt))
    }

    /// A reply skeleton: same transaction, hardware address, flags and relay (RFC 2131 table 3),
    /// our server id, and option 82 echoed verbatim (RFC 3046 §2.2).
    fn reply_to(&self, req: &Repr, mt: MessageType) -> Repr {
        let mut r = Repr::new(OpCode::BootReply, req.xid, [0; 6]);
        r.htype = req.htype;
        r.hlen = req.hlen;
        r.chaddr = req.chaddr;
        r.flags = req.flags;
        r.giaddr = req.giaddr;
        r.options.message_type = Some(mt);
        r.options.server_id = Some(self.config.server_ip);
        r.options.relay_agent_info = req.options.relay_agent_info.clone();
        r
    }

    /// Addressing of RFC 2131 §4.1 ("If the 'giaddr' field ... is nonzero ...").
    fn destination(req: &Repr, reply: &Repr) -> Transmit {
        let base = Transmit {
            dst_ip: Ipv4Addr::BROADCAST,
            dst_port: CLIENT_PORT,
            src_port: SERVER_PORT,
            dst_mac: None,
            broadcast: true,
            len: 0,
        };
        if !req.giaddr.is_unspecified() {
            return Transmit {
                dst_ip: req.giaddr,
                dst_port: SERVER_PORT,
                broadcast: false,
                ..base
            };
        }
        let nak = reply.options.message_type == Some(MessageType::Nak);
        if nak {
            return base;
        }
        if !req.ciaddr.is_unspecified() {
            return Transmit {
                dst_ip: req.ciaddr,
                broadcast: false,
                ..base
            };
        }
        if req.broadcast() || reply.yiaddr.is_unspecified() {
            return Transmit {
                dst_mac: Some(BROADCAST_MAC),
                ..base
            };
        }
        Transmit {
            dst_ip: reply.yiaddr,
            dst_mac: req.mac(),
            broadcast: false,
            ..base
        }
    }

    fn boot_decision(&self, now: Instant, req: &Repr) -> Result<BootDecision, NoBoot> {
        let mut client = BootClient::from_request(req).ok_or(NoBoot::NotBootClient)?;
        client.loader_sent = self
            .chainloaded
            .get(&client.mac)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.config.chainload_window);
        decide(&client, &self.config.boot)
    }

    /// Remembers that `req`'s iPXE was told to chainload the loader (the reply that commits it:
    /// the ACK, or the ProxyDHCP offer), so its next iPXE gets the script.
    fn note_chainload(&mut self, now: Instant, req: &Repr, decision: &BootDecision) {
        let is_ipxe = BootClient::from_request(req).is_some_and(|c| c.is_ipxe);
        let (true, BootDecision::Chainload { .. }, Some(mac)) = (is_ipxe, decision, req.mac())
        else {
            return;
        };
        if self.chainloaded.len() >= CHAINLOADED_SWEEP {
            let window = self.config.chainload_window;
            self.chainloaded
                .retain(|_, at| now.saturating_duration_since(*at) < window);
        }
        self.chainloaded.insert(mac, now);
    }

    /// Adds boot instructions. A PXE ROM gets option 43 with PXE_DISCOVERY_CONTROL bit 3 ("boot
    /// file in this packet, download it") and bits 0-1 (no boot server discovery), so it goes
    /// straight to TFTP instead of asking port 4011 first (PXE 2.1 §2.4.7.2). iPXE, when the
    /// reply carries its address (authoritative mode), gets option 175 with `no-pxedhcp` so it
    /// requests the address at once and takes the script from this answer, whatever ProxyDHCP
    /// servers on the link say. A ProxyDHCP answer (no address) leaves it out: iPXE reads it
    /// only from the offer it requests, which is then the LAN server's.
    fn add_boot(&self, reply: &mut Repr, decision: &BootDecision) {
        let file = decision.boot_file();
        reply.options.vendor_class = Some(decision.vendor_class().to_vec());
        reply.options.bootfile = Some(file.as_bytes().to_vec());
        // The `file` field holds 128 bytes; longer URLs travel in option 67 only.
        if file.len() <= 128 {
            reply.file = file.as_bytes().to_vec();
        }
        match decision {
            BootDecision::Chainload { next_server, .. } => {
                reply.siaddr = *next_server;
                reply.options.vendor_specific = Some(
                    PxeVendorOptions {
                        discovery_control: Some(pxe::DOWNLOAD_BOOT_FILE | pxe::NO_DISCOVERY),
                        other: Vec::new(),
                    }
                    .to_bytes(),
                );
            }
            BootDecision::IpxeScript { .. } => {
                reply.siaddr = self.config.boot.tftp_server;
                if !reply.yiaddr.is_unspecified() {
                    reply.options.ipxe_encap = Some(ipxe::no_pxedhcp());
                }
            }
            BootDecision::HttpBoot { .. } => {
                reply.siaddr = self.config.boot.tftp_server;
            }
        }
    }

    fn proxy_offer(&mut self, now: Instant, req: &Repr) -> Outcome {
        let decision = self.boot_decision(now, req).map_err(|e| match e {
            NoBoot::NotBootClient => DropReason::NotBootClient,
            NoBoot::UnsupportedArch(_) => DropReason::UnsupportedArch,
        })?;
        let mut reply = self.reply_to(req, MessageType::Offer);
        self.add_boot(&mut reply, &decision);
        let to = Self::destination(req, &reply);
        let outcome = self.enqueue(reply, to, None);
        if outcome.is_ok() {
            self.note_chainload(now, req, &decision);
        }
        outcome
    }

    /// Port 4011 (PXE 2.1 §2.2.4): the client already has an address and asks the boot server
    /// directly; the ACK goes back where the request came from.
    fn pxe_boot_server(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        req: &Repr,
        mt: MessageType,
    ) -> Outcome {
        if !matches!(mt, MessageType::Request | MessageType::Inform) {
            return Err(DropReason::UnexpectedMessageType);
        }
        let decision = self.boot_decision(now, req).map_err(|e| match e {
            NoBoot::NotBootClient => DropReason::NotBootClient,
            NoBoot::UnsupportedArch(_) => DropReason::UnsupportedArch,
        })?;
        let mut reply = self.reply_to(req, MessageType::Ack);
        reply.ciaddr = req.ciaddr;
        self.add_boot(&mut reply, &decision);
        let to = Transmit {
            dst_ip: *src.ip(),
            dst_port: src.port(),
            src_port: PXE_PORT,
            dst_mac: None,
            broadcast: false,
            len: 0,
        };
        self.enqueue(reply, to, None)
    }

    fn pools(&self) -> &[Pool] {
        match &self.config.mode {
            ServerMode::Authoritative { pools } => pools,
            ServerMode::Proxy => &[],
        }
    }

    /// The relay's subnet, else the client's address's, else ours (RFC 2131 §4.3.1).
    fn pool_for(&self, req: &Repr) -> Option<usize> {
        let pools = self.pools();
        let key = [req.giaddr, req.ciaddr, self.config.server_ip]
            .into_iter()
            .find(|ip| !ip.is_unspecified())?;
        pools.iter().position(|p| p.contains(key)).or(
            if req.giaddr.is_unspecified() && req.ciaddr.is_unspecified() {
                (!pools.is_empty()).then_some(0)
            } else {
                None
            },
        )
    }

    /// Whether `ip` may be leased to `client` now.
    fn available(
        &self,
        pool: &Pool,
        ip: Ipv4Addr,
        client: &ClientKey,
        mac: [u8; 6],
        now: Instant,
        store: &impl LeaseStore,
    ) -> bool {
        if ip == self.config.server_ip || !pool.contains(ip) {
            return false;
        }
        if pool.reservations.iter().any(|(m, r)| *r == ip && *m != mac) {
            return false;
        }
        match store.by_ip(ip) {
            None => true,
            Some(l) => !l.is_live(now) || (l.client == *client && l.state != LeaseState::Declined),
        }
    }

    fn allocate(
        &mut self,
        pool_idx: usize,
        client: &ClientKey,
        mac: [u8; 6],
        now: Instant,
        store: &impl LeaseStore,
    ) -> Option<Ipv4Addr> {
        let pool = &self.pools()[pool_idx];
        let size = pool.size();
        let start = self.cursors[pool_idx];
        for step in 0..size {
            let offset = (start + step) % size;
            let ip = Ipv4Addr::from(u32::from(pool.first).wrapping_add(offset));
            if self.available(pool, ip, client, mac, now, store) {
                self.cursors[pool_idx] = (offset + 1) % size;
                return Some(ip);
            }
        }
        None
    }

    fn lease_options(reply: &mut Repr, pool: &Pool) {
        let secs = u32::try_from(pool.lease_time.as_secs()).unwrap_or(u32::MAX);
        reply.options.lease_time = Some(secs);
        // RFC 2131 §4.4.5 defaults: T1 = 0.5, T2 = 0.875 of the lease.
        reply.options.renewal_time = Some(secs / 2);
        reply.options.rebinding_time = Some((u64::from(secs) * 7 / 8) as u32);
        Self::subnet_options(reply, pool);
    }

    fn subnet_options(reply: &mut Repr, pool: &Pool) {
        reply.options.subnet_mask = Some(pool.mask());
        reply.options.routers = pool.routers.clone();
        reply.options.dns_servers = pool.dns_servers.clone();
    }

    /// In authoritative mode a non-boot client still gets its address, just no boot file.
    fn add_boot_if_any(&self, now: Instant, reply: &mut Repr, req: &Repr) -> Option<BootDecision> {
        let decision = self.boot_decision(now, req).ok()?;
        self.add_boot(reply, &decision);
        Some(decision)
    }

    /// RFC 2131 §4.3.1: the client's reserved address, else its current binding, else the
    /// address it asks for, else a free one. No ping first: offers never wait.
    fn discover(
        &mut self,
        now: Instant,
        req: &Repr,
        mac: [u8; 6],
        store: &mut impl LeaseStore,
    ) -> Outcome {
        let pool_idx = self.pool_for(req).ok_or(DropReason::NoPool)?;
        let client = ClientKey::from_request(req);
        let pool = &self.pools()[pool_idx];
        let existing = store
            .by_client(&client)
            .filter(|l| l.state != LeaseState::Declined && pool.contains(l.ip));
        let reserved = pool.reservations.get(&mac).copied();
        let candidates = [
            reserved,
            existing.as_ref().map(|l| l.ip),
            req.options.requested_ip.filter(|ip| pool.in_range(*ip)),
        ];
        let chosen = candidates
            .into_iter()
            .flatten()
            .find(|ip| self.available(pool, *ip, &client, mac, now, store));
        let ip = match chosen {
            Some(ip) => ip,
            None => self
                .allocate(pool_idx, &client, mac, now, store)
                .ok_or(DropReason::PoolExhausted)?,
        };
        let pool = &self.pools()[pool_idx];
        let still_bound = existing
            .as_ref()
            .filter(|l| l.ip == ip && l.state == LeaseState::Bound && l.is_live(now));
        if still_bound.is_none() {
            store
                .apply(LeaseChange::Put(Lease {
                    ip,
                    client,
                    mac,
                    state: LeaseState::Offered,
                    expires: now + self.config.offer_hold,
                }))
                .map_err(|_| DropReason::LeaseStoreFailed)?;
        }
        let mut reply = self.reply_to(req, MessageType::Offer);
        reply.yiaddr = ip;
        Self::lease_options(&mut reply, pool);
        self.add_boot_if_any(now, &mut reply, req);
        let to = Self::destination(req, &reply);
        self.enqueue(reply, to, None)
    }

    fn nak(&mut self, req: &Repr, why: &str) -> Outcome {
        let mut reply = self.reply_to(req, MessageType::Nak);
        reply.options.message = Some(why.as_bytes().to_vec());
        // RFC 2131 §4.3.2: through a relay, the NAK asks the relay to broadcast it.
        if !req.giaddr.is_unspecified() {
            reply.flags |= FLAG_BROADCAST;
        }
        let to = Self::destination(req, &reply);
        self.enqueue(reply, to, None)
    }

    fn request(
        &mut self,
        now: Instant,
        req: &Repr,
        mac: [u8; 6],
        local: &Ipv4Addr,
        store: &mut impl LeaseStore,
    ) -> Outcome {
        let state = RequestState::classify(req, *local).ok_or(DropReason::BadRequest)?;
        let client = ClientKey::from_request(req);
        let mine = store.by_client(&client);
        let ip = match state {
            RequestState::Selecting => {
                if req.options.server_id != Some(self.config.server_ip) {
                    // The client took another server's offer: free what we held for it.
                    if let Some(l) = mine.filter(|l| l.state == LeaseState::Offered) {
                        store
                            .apply(LeaseChange::Remove(l.ip))
                            .map_err(|_| DropReason::LeaseStoreFailed)?;
                    }
                    return Err(DropReason::WrongServerId);
                }
                req.options
                    .requested_ip
                    .or(Some(req.ciaddr).filter(|ip| !ip.is_unspecified()))
                    .ok_or(DropReason::BadRequest)?
            }
            RequestState::InitReboot => req.options.requested_ip.ok_or(DropReason::BadRequest)?,
            RequestState::Renewing | RequestState::Rebinding => req.ciaddr,
        };
        let Some(pool_idx) = self.pool_for(req).filter(|i| self.pools()[*i].contains(ip)) else {
            // The client's address belongs to no subnet of ours: it moved (RFC 2131 §4.3.2).
            return self.nak(req, "address not on this network");
        };
        let pool = &self.pools()[pool_idx];
        let holds_it = mine
            .as_ref()
            .is_some_and(|l| l.ip == ip && l.state != LeaseState::Declined);
        if !holds_it {
            if state != RequestState::Selecting && mine.is_none() && store.by_ip(ip).is_none() {
                return Err(DropReason::UnknownClient);
            }
            if !(state == RequestState::Selecting
                && self.available(pool, ip, &client, mac, now, store))
            {
                return self.nak(req, "address not available");
            }
        }
        let lease_time = pool.lease_time;
        let seq = store
            .apply(LeaseChange::Put(Lease {
                ip,
                client,
                mac,
                state: LeaseState::Bound,
                expires: now + lease_time,
            }))
            .map_err(|_| DropReason::LeaseStoreFailed)?;
        let pool = &self.pools()[pool_idx];
        let mut reply = self.reply_to(req, MessageType::Ack);
        reply.ciaddr = req.ciaddr;
        reply.yiaddr = ip;
        Self::lease_options(&mut reply, pool);
        let decision = self.add_boot_if_any(now, &mut reply, req);
        let to = Self::destination(req, &reply);
        let outcome = self.enqueue(reply, to, Some(seq));
        if let (Ok(_), Some(decision)) = (&outcome, decision) {
            self.note_chainload(now, req, &decision);
        }
        outcome
    }

    fn server_id_ok(&self, req: &Repr) -> bool {
        req.options
            .server_id
            .is_none_or(|id| id == self.config.server_ip)
    }

    /// RFC 2131 §4.3.3: the address is in use by someone else. Quarantine it.
    fn decline(
        &mut self,
        now: Instant,
        req: &Repr,
        mac: [u8; 6],
        store: &mut impl LeaseStore,
    ) -> Outcome {
        if !self.server_id_ok(req) {
            return Err(DropReason::WrongServerId);
        }
        let ip = req.options.requested_ip.ok_or(DropReason::BadRequest)?;
        let client = ClientKey::from_request(req);
        if store.by_ip(ip).is_none_or(|l| l.client != client) {
            return Err(DropReason::NotClientsLease);
        }
        store
            .apply(LeaseChange::Put(Lease {
                ip,
                client: ClientKey::nobody(),
                mac,
                state: LeaseState::Declined,
                expires: now + self.config.decline_quarantine,
            }))
            .map_err(|_| DropReason::LeaseStoreFailed)?;
        self.stats.declines += 1;
        Ok(Handled::Absorbed)
    }

    /// RFC 2131 §4.3.4.
    fn release(&mut self, req: &Repr, store: &mut impl LeaseStore) -> Outcome {
        if !self.server_id_ok(req) {
            return Err(DropReason::WrongServerId);
        }
        let client = ClientKey::from_request(req);
        if store.by_ip(req.ciaddr).is_none_or(|l| l.client != client) {
            return Err(DropReason::NotClientsLease);
        }
        store
            .apply(LeaseChange::Remove(req.ciaddr))
            .map_err(|_| DropReason::LeaseStoreFailed)?;
        self.stats.releases += 1;
        Ok(Handled::Absorbed)
    }

    /// RFC 2131 §4.3.5: configuration without an address, unicast to ciaddr.
    fn inform(&mut self, now: Instant, req: &Repr) -> Outcome {
        let mut reply = self.reply_to(req, MessageType::Ack);
        reply.ciaddr = req.ciaddr;
        if let Some(pool) = self.pool_for(req).map(|i| &self.pools()[i]) {
            Self::subnet_options(&mut reply, pool);
        }
        self.add_boot_if_any(now, &mut reply, req);
        self.stats.informs += 1;
        let to = Self::destination(req, &reply);
        self.enqueue(reply, to, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::lease::MemoryLeaseStore;
    use crate::dhcp::options::ClientArch;

    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const UEFI_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/udhcpc_uefi_discover.bin");
    const IPXE_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/qemu_ipxe_discover.bin");
    const PLAIN_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/udhcpc_discover.bin");
    const PLAIN_REQUEST: &[u8] = include_bytes!("../../fixtures/dhcp/udhcpc_request.bin");
    const OVMF_PXE_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/ovmf_pxe_discover.bin");
    const OVMF_HTTP_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/ovmf_http_discover.bin");

    fn boot() -> BootConfig {
        BootConfig::new(SERVER, "http://198.18.0.1:8080")
    }

    fn pool(first: u8, last: u8) -> Pool {
        Pool {
            subnet: Ipv4Addr::new(198, 18, 0, 0),
            prefix_len: 24,
            first: Ipv4Addr::new(198, 18, 0, first),
            last: Ipv4Addr::new(198, 18, 0, last),
            routers: vec![SERVER],
            dns_servers: vec![Ipv4Addr::new(198, 18, 0, 53)],
            lease_time: Duration::from_secs(3600),
            reservations: HashMap::new(),
        }
    }

    fn authoritative(pools: Vec<Pool>) -> DhcpServer {
        DhcpServer::new(ServerConfig::authoritative(SERVER, boot(), pools)).expect("config")
    }

    fn bcast() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)
    }

    fn from_client() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)
    }

    fn emit(r: &Repr) -> Vec<u8> {
        let mut buf = vec![0u8; r.buffer_len()];
        let n = r.emit_bytes(&mut buf).expect("emit");
        buf.truncate(n);
        buf
    }

    fn request(mt: MessageType, mac_last: u8) -> Repr {
        let mut r = Repr::new(
            OpCode::BootRequest,
            0x55 + u32::from(mac_last),
            [2, 0, 0, 0, 0, mac_last],
        );
        r.options.message_type = Some(mt);
        r
    }

    fn next(server: &mut DhcpServer, now: Instant) -> (Transmit, Repr) {
        let mut buf = [0u8; 1500];
        let t = server
            .poll_transmit(now, &mut buf)
            .expect("a reply is queued");
        (t, Repr::parse_bytes(&buf[..t.len]).expect("reply parses"))
    }

    fn handle(
        server: &mut DhcpServer,
        store: &mut MemoryLeaseStore,
        now: Instant,
        r: &Repr,
    ) -> Result<Handled, DropReason> {
        server.handle_datagram(now, from_client(), bcast(), &emit(r), store)
    }

    /// `ipxe_chainload`: QEMU's iPXE ROM and the `undionly.kpxe` it chainloads send identical
    /// DHCP (the fixture is the ROM's), so the server remembers whom it told to chainload. The
    /// ROM's DORA gets the loader, the loader's DORA (20 s later) the script, and the machine
    /// booting again after the window chainloads again.
    #[test]
    fn ipxe_rom_chainloads_the_loader_once_then_gets_the_script() {
        let mut config = boot();
        config.ipxe_chainload = true;
        let mut server = DhcpServer::new(ServerConfig::authoritative(
            SERVER,
            config,
            vec![pool(100, 110)],
        ))
        .expect("config");
        let mut store = MemoryLeaseStore::new();
        let t0 = Instant::now();
        let discover = Repr::parse_bytes(IPXE_DISCOVER).expect("fixture");
        let script = "http://198.18.0.1:8080/boot.ipxe?mac=52-54-00-ab-cd-ef";
        let dora = |server: &mut DhcpServer, store: &mut MemoryLeaseStore, now: Instant| {
            handle(server, store, now, &discover).expect("offer");
            let (_, offer) = next(server, now);
            let mut req = discover.clone();
            req.options.message_type = Some(MessageType::Request);
            req.options.server_id = Some(SERVER);
            req.options.requested_ip = Some(offer.yiaddr);
            handle(server, store, now, &req).expect("ack");
            let (_, ack) = next(server, now);
            assert_eq!(ack.options.message_type, Some(MessageType::Ack));
            let file = |r: &Repr| String::from_utf8(r.options.bootfile.clone().unwrap_or_default());
            (
                file(&offer).expect("utf-8"),
                file(&ack).expect("utf-8"),
                ack.siaddr,
            )
        };
        let (offered, acked, siaddr) = dora(&mut server, &mut store, t0);
        assert_eq!(
            (offered.as_str(), acked.as_str()),
            ("undionly.kpxe", "undionly.kpxe")
        );
        assert_eq!(siaddr, SERVER, "next-server for the TFTP download");
        let stage2 = t0 + Duration::from_secs(20);
        let (offered, acked, _) = dora(&mut server, &mut store, stage2);
        assert_eq!((offered.as_str(), acked.as_str()), (script, script));
        let again = t0 + server.config().chainload_window + Duration::from_secs(1);
        let (offered, _, _) = dora(&mut server, &mut store, again);
        assert_eq!(offered, "undionly.kpxe", "a later boot chainloads again");

        // Without the option the ROM boots the script itself.
        let mut plain = authoritative(vec![pool(100, 110)]);
        let (offered, acked, _) = dora(&mut plain, &mut MemoryLeaseStore::new(), t0);
        assert_eq!((offered.as_str(), acked.as_str()), (script, script));

        // ProxyDHCP: the offer is the only reply, and it commits the chainload.
        let mut config = boot();
        config.ipxe_chainload = true;
        let mut proxy = DhcpServer::new(ServerConfig::proxy(SERVER, config)).expect("config");
        let mut none = MemoryLeaseStore::new();
        for (now, want) in [(t0, "undionly.kpxe"), (stage2, script)] {
            handle(&mut proxy, &mut none, now, &discover).expect("proxy offer");
            let (_, offer) = next(&mut proxy, now);
            assert_eq!(offer.options.bootfile.as_deref(), Some(want.as_bytes()));
        }
    }

    /// Full DORA for one client; returns the bound address.
    fn bind(
        server: &mut DhcpServer,
        store: &mut MemoryLeaseStore,
        now: Instant,
        mac: u8,
    ) -> Ipv4Addr {
        let d = request(MessageType::Discover, mac);
        assert_eq!(
            handle(server, store, now, &d),
            Ok(Handled::Replied(MessageType::Offer))
        );
        let (_, offer) = next(server, now);
        let mut r = request(MessageType::Request, mac);
        r.options.server_id = Some(SERVER);
        r.options.requested_ip = Some(offer.yiaddr);
        assert_eq!(
            handle(server, store, now, &r),
            Ok(Handled::Replied(MessageType::Ack))
        );
        let (_, ack) = next(server, now);
        assert_eq!(ack.yiaddr, offer.yiaddr);
        ack.yiaddr
    }

    #[test]
    fn proxy_offers_boot_file_per_client_kind() {
        let now = Instant::now();
        let mut server = DhcpServer::new(ServerConfig::proxy(SERVER, boot())).expect("config");
        let mut store = MemoryLeaseStore::new();
        let cases: [(&[u8], &str); 2] = [
            (UEFI_DISCOVER, "snponly.efi"),
            (
                IPXE_DISCOVER,
                "http://198.18.0.1:8080/boot.ipxe?mac=52-54-00-ab-cd-ef",
            ),
        ];
        for (bytes, want) in cases {
            let got = server.handle_datagram(now, from_client(), bcast(), bytes, &mut store);
            assert_eq!(got, Ok(Handled::Replied(MessageType::Offer)));
            let (t, offer) = next(&mut server, now);
            assert!(t.broadcast && t.dst_ip == Ipv4Addr::BROADCAST && t.dst_port == CLIENT_PORT);
            assert_eq!(
                offer.yiaddr,
                Ipv4Addr::UNSPECIFIED,
                "proxy gives no address"
            );
            assert_eq!(offer.siaddr, SERVER);
            assert_eq!(offer.options.server_id, Some(SERVER));
            assert_eq!(
                offer.options.vendor_class.as_deref(),
                Some(&b"PXEClient"[..])
            );
            assert_eq!(offer.options.bootfile.as_deref(), Some(want.as_bytes()));
            assert_eq!(offer.file, want.as_bytes());
        }
        // The UEFI ROM got discovery control "download the file in this packet".
        server
            .handle_datagram(now, from_client(), bcast(), UEFI_DISCOVER, &mut store)
            .expect("offer");
        let (_, offer) = next(&mut server, now);
        assert_eq!(
            offer.options.pxe().and_then(|p| p.discovery_control),
            Some(0x0b)
        );
        assert_eq!(offer.options.lease_time, None);

        // A plain DHCP client is the LAN server's business; a REQUEST on 67 too.
        let plain = server.handle_datagram(now, from_client(), bcast(), PLAIN_DISCOVER, &mut store);
        assert_eq!(plain, Err(DropReason::NotBootClient));
        let req = server.handle_datagram(now, from_client(), bcast(), PLAIN_REQUEST, &mut store);
        assert_eq!(req, Err(DropReason::NotForProxy));
        assert_eq!(server.stats().dropped(DropReason::NotBootClient), 1);
        assert_eq!(server.stats().dropped(DropReason::NotForProxy), 1);
        assert!(store.is_empty(), "proxy mode never touches leases");
    }

    #[test]
    fn proxy_answers_port_4011_request_with_unicast_ack() {
        let now = Instant::now();
        let mut server = DhcpServer::new(ServerConfig::proxy(SERVER, boot())).expect("config");
        let mut store = MemoryLeaseStore::new();
        let mut r = Repr::parse_bytes(UEFI_DISCOVER).expect("fixture");
        r.options.message_type = Some(MessageType::Request);
        r.ciaddr = Ipv4Addr::new(198, 18, 0, 157);
        let src = SocketAddrV4::new(r.ciaddr, CLIENT_PORT);
        let local = SocketAddrV4::new(SERVER, PXE_PORT);
        let got = server.handle_datagram(now, src, local, &emit(&r), &mut store);
        assert_eq!(got, Ok(Handled::Replied(MessageType::Ack)));
        let (t, ack) = next(&mut server, now);
        assert_eq!(
            (t.dst_ip, t.dst_port, t.src_port),
            (r.ciaddr, CLIENT_PORT, PXE_PORT)
        );
        assert!(!t.broadcast);
        assert_eq!(ack.file, b"snponly.efi");
    }

    #[test]
    fn http_boot_client_gets_url_and_httpclient_echo() {
        let now = Instant::now();
        let mut server = DhcpServer::new(ServerConfig::proxy(SERVER, boot())).expect("config");
        let mut store = MemoryLeaseStore::new();
        let mut d = request(MessageType::Discover, 9);
        d.options.vendor_class = Some(b"HTTPClient:Arch:00016:UNDI:003001".to_vec());
        d.options.client_arch = vec![ClientArch::EfiX64Http];
        assert!(handle(&mut server, &mut store, now, &d).is_ok());
        let (_, offer) = next(&mut server, now);
        assert_eq!(
            offer.options.vendor_class.as_deref(),
            Some(&b"HTTPClient"[..])
        );
        assert_eq!(
            offer.options.bootfile.as_deref(),
            Some(&b"http://198.18.0.1:8080/snponly.efi"[..])
        );
        assert_eq!(
            offer.options.vendor_specific, None,
            "no PXE menu options for HTTP Boot"
        );
    }

    /// The DISCOVERs of real UEFI firmware (OVMF's PXE client and its HTTP Boot) in proxy mode.
    #[test]
    fn proxy_offers_to_ovmf_pxe_and_http_boot() {
        let now = Instant::now();
        let mut server = DhcpServer::new(ServerConfig::proxy(SERVER, boot())).expect("config");
        let mut store = MemoryLeaseStore::new();
        let cases: [(&[u8], &[u8], &[u8]); 2] = [
            (OVMF_PXE_DISCOVER, b"PXEClient", b"snponly.efi"),
            (
                OVMF_HTTP_DISCOVER,
                b"HTTPClient",
                b"http://198.18.0.1:8080/snponly.efi",
            ),
        ];
        for (bytes, vendor_class, file) in cases {
            let got = server.handle_datagram(now, from_client(), bcast(), bytes, &mut store);
            assert_eq!(got, Ok(Handled::Replied(MessageType::Offer)));
            let (t, offer) = next(&mut server, now);
            assert!(t.broadcast && t.dst_ip == Ipv4Addr::BROADCAST);
            let d = Repr::parse_bytes(bytes).expect("fixture");
            assert_eq!((offer.xid, offer.mac()), (d.xid, d.mac()));
            assert_eq!(offer.options.vendor_class.as_deref(), Some(vendor_class));
            assert_eq!(offer.options.bootfile.as_deref(), Some(file));
            assert_eq!(offer.file, file);
        }
        assert!(store.is_empty());
    }

    /// What a real client sent in the boot-time lab (`tests/firmware_lab.rs`, captured from the
    /// server veth while Stampede answered; see `fixtures/dhcp/README.md`) and what it must get.
    struct LabClient {
        name: &'static str,
        discover: &'static [u8],
        request: &'static [u8],
        /// iPXE (answered with its script's URL) rather than firmware PXE (the loader's TFTP
        /// name).
        ipxe: bool,
    }

    const LAB_CLIENTS: [LabClient; 3] = [
        LabClient {
            name: "SeaBIOS + QEMU e1000 iPXE ROM",
            discover: include_bytes!("../../fixtures/dhcp/lab_ipxe_rom_discover.bin"),
            request: include_bytes!("../../fixtures/dhcp/lab_ipxe_rom_request.bin"),
            ipxe: true,
        },
        LabClient {
            name: "OVMF UEFI PXE",
            discover: include_bytes!("../../fixtures/dhcp/lab_ovmf_pxe_discover.bin"),
            request: include_bytes!("../../fixtures/dhcp/lab_ovmf_pxe_request.bin"),
            ipxe: false,
        },
        LabClient {
            name: "iPXE snponly.efi under OVMF",
            discover: include_bytes!("../../fixtures/dhcp/lab_snponly_discover.bin"),
            request: include_bytes!("../../fixtures/dhcp/lab_snponly_request.bin"),
            ipxe: true,
        },
    ];

    /// The answer a client kind needs to go on at once: firmware PXE the loader by name with
    /// option 43 saying "download it, no boot server discovery" (PXE 2.1 §2.4.7.2); iPXE its
    /// script URL and, when the answer carries its address, option 175 `no-pxedhcp` (no wait
    /// for ProxyDHCP offers); never the other kind's options.
    fn assert_answer_for(
        client: &LabClient,
        server_ip: Ipv4Addr,
        reply: &Repr,
        with_address: bool,
    ) {
        let what = format!("{}: {:?}", client.name, reply.options.message_type);
        let mac = reply.mac().expect("ethernet");
        let mac_text = crate::MacAddr(mac).dashed();
        let want_file = if client.ipxe {
            format!("http://{server_ip}:8080/boot.ipxe?mac={mac_text}")
        } else {
            "snponly.efi".to_owned()
        };
        assert_eq!(reply.file, want_file.as_bytes(), "{what}");
        assert_eq!(
            reply.options.bootfile.as_deref(),
            Some(want_file.as_bytes()),
            "{what}"
        );
        assert_eq!(reply.siaddr, server_ip, "{what}");
        assert_eq!(
            reply.options.vendor_class.as_deref(),
            Some(&b"PXEClient"[..]),
            "{what}"
        );
        let discovery = reply
            .options
            .vendor_specific
            .as_deref()
            .map(PxeVendorOptions::parse)
            .and_then(|v| v.discovery_control);
        let no_pxedhcp = reply
            .options
            .ipxe_encap
            .as_deref()
            .and_then(|e| ipxe::setting_u8(e, ipxe::NO_PXEDHCP));
        if client.ipxe {
            assert_eq!(discovery, None, "{what}: no PXE discovery options for iPXE");
            assert_eq!(no_pxedhcp, with_address.then_some(1), "{what}");
        } else {
            assert_eq!(
                discovery,
                Some(pxe::DOWNLOAD_BOOT_FILE | pxe::NO_DISCOVERY),
                "{what}: bit 3 and no discovery"
            );
            assert_eq!(no_pxedhcp, None, "{what}");
        }
    }

    /// The DISCOVER and REQUEST of each real client of the boot-time lab, as captured, fed to
    /// the server in both modes.
    #[test]
    fn real_firmware_gets_the_answer_that_lets_it_go_on_at_once() {
        let now = Instant::now();
        for client in &LAB_CLIENTS {
            let request = Repr::parse_bytes(client.request).expect("fixture parses");
            let discover = Repr::parse_bytes(client.discover).expect("fixture parses");
            assert_eq!(
                discover.xid, request.xid,
                "{}: one transaction",
                client.name
            );
            let server_ip = request
                .options
                .server_id
                .expect("the REQUEST names its server");
            let asked = request.options.requested_ip.expect("requested address");
            let [a, b, c, _] = server_ip.octets();
            let boot = BootConfig::new(server_ip, format!("http://{server_ip}:8080"));
            let subnet_pool = Pool {
                subnet: Ipv4Addr::new(a, b, c, 0),
                first: Ipv4Addr::new(a, b, c, 100),
                last: Ipv4Addr::new(a, b, c, 199),
                routers: Vec::new(),
                dns_servers: Vec::new(),
                ..pool(100, 199)
            };

            // Authoritative: DISCOVER → OFFER of the address the client then asked for.
            let mut server = DhcpServer::new(ServerConfig::authoritative(
                server_ip,
                boot.clone(),
                vec![subnet_pool],
            ))
            .expect("config");
            let mut store = MemoryLeaseStore::new();
            let got =
                server.handle_datagram(now, from_client(), bcast(), client.discover, &mut store);
            assert_eq!(
                got,
                Ok(Handled::Replied(MessageType::Offer)),
                "{}",
                client.name
            );
            let (_, offer) = next(&mut server, now);
            assert_eq!(offer.yiaddr, asked, "{}", client.name);
            assert_answer_for(client, server_ip, &offer, true);
            let got =
                server.handle_datagram(now, from_client(), bcast(), client.request, &mut store);
            assert_eq!(
                got,
                Ok(Handled::Replied(MessageType::Ack)),
                "{}",
                client.name
            );
            let (_, ack) = next(&mut server, now);
            assert_eq!(ack.yiaddr, asked, "{}", client.name);
            assert_answer_for(client, server_ip, &ack, true);

            // Proxy, beside the LAN's DHCP server: the same boot answer without an address,
            // and nothing for the REQUEST to the LAN server on port 67.
            let mut proxy = DhcpServer::new(ServerConfig::proxy(server_ip, boot)).expect("config");
            let mut store = MemoryLeaseStore::new();
            let got =
                proxy.handle_datagram(now, from_client(), bcast(), client.discover, &mut store);
            assert_eq!(
                got,
                Ok(Handled::Replied(MessageType::Offer)),
                "{}",
                client.name
            );
            let (_, offer) = next(&mut proxy, now);
            assert!(offer.yiaddr.is_unspecified(), "{}", client.name);
            assert_answer_for(client, server_ip, &offer, false);
            let got =
                proxy.handle_datagram(now, from_client(), bcast(), client.request, &mut store);
            assert_eq!(got, Err(DropReason::NotForProxy), "{}", client.name);
            // A PXE client that asks the boot server on port 4011 after all gets the same.
            let mut at_4011 = request.clone();
            at_4011.ciaddr = asked;
            let src = SocketAddrV4::new(asked, CLIENT_PORT);
            let local = SocketAddrV4::new(server_ip, PXE_PORT);
            let got = proxy.handle_datagram(now, src, local, &emit(&at_4011), &mut store);
            assert_eq!(
                got,
                Ok(Handled::Replied(MessageType::Ack)),
                "{}",
                client.name
            );
            let (_, ack) = next(&mut proxy, now);
            assert_answer_for(client, server_ip, &ack, false);
        }
    }

    #[test]
    fn relayed_requests_are_answered_to_the_relay_with_option_82() {
        let now = Instant::now();
        let mut relayed = pool(10, 20);
        relayed.subnet = Ipv4Addr::new(198, 19, 5, 0);
        relayed.first = Ipv4Addr::new(198, 19, 5, 10);
        relayed.last = Ipv4Addr::new(198, 19, 5, 20);
        let mut server = authoritative(vec![pool(100, 200), relayed]);
        let mut store = MemoryLeaseStore::new();
        let mut d = Repr::parse_bytes(UEFI_DISCOVER).expect("fixture");
        d.giaddr = Ipv4Addr::new(198, 19, 5, 1);
        d.hops = 1;
        let agent_info = vec![1, 4, b'p', b'o', b'r', b't', 2, 2, 0xab, 0xcd];
        d.options.relay_agent_info = Some(agent_info.clone());
        assert!(handle(&mut server, &mut store, now, &d).is_ok());
        let (t, offer) = next(&mut server, now);
        assert_eq!(
            (t.dst_ip, t.dst_port, t.broadcast),
            (d.giaddr, SERVER_PORT, false)
        );
        assert_eq!(offer.giaddr, d.giaddr);
        assert_eq!(
            offer.yiaddr,
            Ipv4Addr::new(198, 19, 5, 10),
            "pool of the relay's subnet"
        );
        assert_eq!(offer.options.relay_agent_info, Some(agent_info));
        assert_eq!(offer.file, b"snponly.efi");
        // A relay from a subnet we do not serve.
        d.giaddr = Ipv4Addr::new(198, 19, 9, 1);
        assert_eq!(
            handle(&mut server, &mut store, now, &d),
            Err(DropReason::NoPool)
        );
    }

    #[test]
    fn replies_are_addressed_per_rfc2131_section_4_1() {
        let now = Instant::now();
        let mut server = authoritative(vec![pool(100, 200)]);
        let mut store = MemoryLeaseStore::new();
        let d = request(MessageType::Discover, 1);
        handle(&mut server, &mut store, now, &d).expect("offer");
        let (t, offer) = next(&mut server, now);
        assert_eq!(
            t.dst_ip, offer.yiaddr,
            "no broadcast bit: unicast to yiaddr"
        );
        assert_eq!(t.dst_mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(!t.broadcast);
        let mut d = request(MessageType::Discover, 2);
        d.flags = FLAG_BROADCAST;
        handle(&mut server, &mut store, now, &d).expect("offer");
        let (t, _) = next(&mut server, now);
        assert!(t.broadcast && t.dst_ip == Ipv4Addr::BROADCAST);
        // Non-boot clients still get addresses, without boot fields.
        let (_, offer) = {
            server
                .handle_datagram(now, from_client(), bcast(), PLAIN_DISCOVER, &mut store)
                .expect("offer");
            next(&mut server, now)
        };
        assert!(offer.file.is_empty() && offer.options.vendor_class.is_none());
        assert_eq!(offer.options.lease_time, Some(3600));
        assert_eq!(offer.options.renewal_time, Some(1800));
        assert_eq!(offer.options.rebinding_time, Some(3150));
        assert_eq!(
            offer.options.subnet_mask,
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
    }

    #[test]
    fn request_states_and_naks() {
        let now = Instant::now();
        let mut server = authoritative(vec![pool(100, 200)]);
        let mut store = MemoryLeaseStore::new();
        let ip = bind(&mut server, &mut store, now, 1);

        // INIT-REBOOT of the holder: ACK.
        let mut r = request(MessageType::Request, 1);
        r.options.requested_ip = Some(ip);
        assert_eq!(
            RequestState::classify(&r, Ipv4Addr::BROADCAST),
            Some(RequestState::InitReboot)
        );
        assert_eq!(
            handle(&mut server, &mut store, now, &r),
            Ok(Handled::Replied(MessageType::Ack))
        );
        next(&mut server, now);

        // INIT-REBOOT of another client asking for that address: NAK, broadcast.
        let mut other = request(MessageType::Request, 2);
        other.options.requested_ip = Some(ip);
        assert_eq!(
            handle(&mut server, &mut store, now, &other),
            Ok(Handled::Replied(MessageType::Nak))
        );
        let (t, nak) = next(&mut server, now);
        assert!(t.broadcast);
        assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
        // ... or for an address from another network.
        other.options.requested_ip = Some(Ipv4Addr::new(198, 19, 0, 5));
        assert_eq!(
            handle(&mut server, &mut store, now, &other),
            Ok(Handled::Replied(MessageType::Nak))
        );
        next(&mut server, now);
        // Unknown client, free address: RFC 2131 §4.3.2 says stay silent.
        other.options.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 150));
        assert_eq!(
            handle(&mut server, &mut store, now, &other),
            Err(DropReason::UnknownClient)
        );

        // RENEWING (unicast) and REBINDING (broadcast) extend the lease; the ACK goes to ciaddr.
        let mut renew = request(MessageType::Request, 1);
        renew.ciaddr = ip;
        let later = now + Duration::from_secs(1800);
        let local = SocketAddrV4::new(SERVER, SERVER_PORT);
        assert_eq!(
            RequestState::classify(&renew, SERVER),
            Some(RequestState::Renewing)
        );
        assert_eq!(
            RequestState::classify(&renew, Ipv4Addr::BROADCAST),
            Some(RequestState::Rebinding)
        );
        let src = SocketAddrV4::new(ip, CLIENT_PORT);
        let got = server.handle_datagram(later, src, local, &emit(&renew), &mut store);
        assert_eq!(got, Ok(Handled::Replied(MessageType::Ack)));
        let (t, ack) = next(&mut server, later);
        assert_eq!((t.dst_ip, t.broadcast, t.dst_mac), (ip, false, None));
        assert_eq!(ack.ciaddr, ip);
        assert_eq!(
            store.by_ip(ip).map(|l| l.expires),
            Some(later + Duration::from_secs(3600))
        );

        // SELECTING another server: dropped and counted, our hold released.
        let d = request(MessageType::Discover, 3);
        handle(&mut server, &mut store, now, &d).expect("offer");
        let (_, offer) = next(&mut server, now);
        let mut r = request(MessageType::Request, 3);
        r.options.server_id = Some(Ipv4Addr::new(198, 18, 0, 2));
        r.options.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 77));
        assert_eq!(
            handle(&mut server, &mut store, now, &r),
            Err(DropReason::WrongServerId)
        );
        assert_eq!(store.by_ip(offer.yiaddr), None);
        assert_eq!(server.stats().dropped(DropReason::WrongServerId), 1);
        assert_eq!(server.stats().naks, 2);
    }

    #[test]
    fn release_frees_and_decline_quarantines() {
        let now = Instant::now();
        let mut server = authoritative(vec![pool(100, 101)]);
        let mut store = MemoryLeaseStore::new();
        let a = bind(&mut server, &mut store, now, 1);
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 100));

        let mut release = request(MessageType::Release, 1);
        release.ciaddr = a;
        release.options.server_id = Some(SERVER);
        let mut not_mine = release.clone();
        not_mine.chaddr[5] = 9;
        assert_eq!(
            handle(&mut server, &mut store, now, &not_mine),
            Err(DropReason::NotClientsLease)
        );
        assert_eq!(
            handle(&mut server, &mut store, now, &release),
            Ok(Handled::Absorbed)
        );
        assert!(store.by_ip(a).is_none());
        assert_eq!(server.stats().releases, 1);

        // Client 2 gets .101 and declines it: conflicted for the quarantine.
        let b = bind(&mut server, &mut store, now, 2);
        assert_eq!(b, Ipv4Addr::new(198, 18, 0, 101));
        let mut decline = request(MessageType::Decline, 2);
        decline.options.requested_ip = Some(b);
        decline.options.server_id = Some(SERVER);
        assert_eq!(
            handle(&mut server, &mut store, now, &decline),
            Ok(Handled::Absorbed)
        );
        assert_eq!(server.stats().declines, 1);
        assert_eq!(store.by_ip(b).map(|l| l.state), Some(LeaseState::Declined));

        // Two clients, one free address: the third request is exhaustion, counted.
        assert_eq!(
            bind(&mut server, &mut store, now, 2),
            a,
            "decliner gets the other one"
        );
        let d = request(MessageType::Discover, 3);
        assert_eq!(
            handle(&mut server, &mut store, now, &d),
            Err(DropReason::PoolExhausted)
        );
        assert_eq!(server.stats().dropped(DropReason::PoolExhausted), 1);
        // After the quarantine the declined address is offered again.
        let later = now + Duration::from_secs(601);
        assert!(handle(&mut server, &mut store, later, &d).is_ok());
        assert_eq!(next(&mut server, later).1.yiaddr, b);
    }

    #[test]
    fn reservations_win() {
        let now = Instant::now();
        let mut p = pool(100, 200);
        p.reservations
            .insert([2, 0, 0, 0, 0, 7], Ipv4Addr::new(198, 18, 0, 42));
        let mut server = authoritative(vec![p]);
        let mut store = MemoryLeaseStore::new();
        assert_eq!(
            bind(&mut server, &mut store, now, 7),
            Ipv4Addr::new(198, 18, 0, 42)
        );
        assert_eq!(
            bind(&mut server, &mut store, now, 8),
            Ipv4Addr::new(198, 18, 0, 100)
        );
    }

    /// A store that acknowledges writes only when told, like a group-committing journal.
    #[derive(Debug, Default)]
    struct SlowStore {
        inner: MemoryLeaseStore,
        durable: CommitSeq,
    }

    impl LeaseStore for SlowStore {
        fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
            self.inner.by_ip(ip)
        }
        fn by_client(&self, client: &ClientKey) -> Option<Lease> {
            self.inner.by_client(client)
        }
        fn apply(
            &mut self,
            change: LeaseChange,
        ) -> Result<CommitSeq, crate::dhcp::lease::LeaseStoreError> {
            self.inner.apply(change)
        }
        fn durable_seq(&self) -> CommitSeq {
            self.durable
        }
    }

    #[test]
    fn ack_waits_for_durable_lease_write() {
        let now = Instant::now();
        let mut server = authoritative(vec![pool(100, 200)]);
        let mut store = SlowStore::default();
        let d = emit(&request(MessageType::Discover, 1));
        server
            .handle_datagram(now, from_client(), bcast(), &d, &mut store)
            .expect("offer");
        let mut buf = [0u8; 1500];
        assert!(
            server.poll_transmit(now, &mut buf).is_some(),
            "offers need no durability"
        );
        let mut r = request(MessageType::Request, 1);
        r.options.server_id = Some(SERVER);
        r.options.requested_ip = Some(Ipv4Addr::new(198, 18, 0, 100));
        server
            .handle_datagram(now, from_client(), bcast(), &emit(&r), &mut store)
            .expect("ack");
        assert!(server.poll_transmit(now, &mut buf).is_none(), "ACK held");
        assert_eq!(server.queued(), 1);
        let seq = store.inner.durable_seq();
        server.handle_lease_durable(seq);
        let t = server.poll_transmit(now, &mut buf).expect("ACK released");
        let ack = Repr::parse_bytes(&buf[..t.len]).expect("parses");
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert!(server.poll_transmit(now, &mut [0u8; 10]).is_none());
    }

    /// Issue 19: a chaddr of all zeros or all ones names no machine (a broken or forged client;
    /// a lease keyed on it would be shared by every such client): refused, with a reason.
    #[test]
    fn zero_and_broadcast_client_macs_are_refused() {
        let now = Instant::now();
        let mut server = authoritative(vec![pool(100, 200)]);
        let mut store = MemoryLeaseStore::new();
        for mac in [[0u8; 6], [0xFF; 6]] {
            for port in [SERVER_PORT, PXE_PORT] {
                let mut discover = request(MessageType::Discover, 1);
                discover.chaddr[..6].copy_from_slice(&mac);
                let local = SocketAddrV4::new(Ipv4Addr::BROADCAST, port);
                let result =
                    server.handle_datagram(now, from_client(), local, &emit(&discover), &mut store);
                assert_eq!(
                    result.map_err(DropReason::as_str),
                    Err("invalid_client_mac"),
                    "{mac:02x?} on port {port}"
                );
            }
        }
        assert!(
            server.poll_transmit(now, &mut [0u8; 1500]).is_none(),
            "no offer"
        );
        let ok = server.handle_datagram(
            now,
            from_client(),
            bcast(),
            &emit(&request(MessageType::Discover, 1)),
            &mut store,
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(
            next(&mut server, now).1.options.message_type,
            Some(MessageType::Offer)
        );
    }

    #[test]
    fn junk_is_dropped_with_reasons() {
        let now = Instant::now();
        let mut server = authoritative(vec![pool(100, 200)]);
        let mut store = MemoryLeaseStore::new();
        let mut send =
            |bytes: &[u8]| server.handle_datagram(now, from_client(), bcast(), bytes, &mut store);
        assert_eq!(send(&[0u8; 10]), Err(DropReason::Malformed));
        let mut offer = request(MessageType::Offer, 1);
        assert_eq!(send(&emit(&offer)), Err(DropReason::UnexpectedMessageType));
        offer.op = OpCode::BootReply;
        assert_eq!(send(&emit(&offer)), Err(DropReason::NotARequest));
        assert_eq!(
            send(&emit(&request(MessageType::Unknown(200), 1))),
            Err(DropReason::UnknownMessageType)
        );
        let mut none = request(MessageType::Discover, 1);
        none.options.message_type = None;
        assert_eq!(send(&emit(&none)), Err(DropReason::NoMessageType));
        let mut ib = request(MessageType::Discover, 1);
        ib.htype = 32;
        ib.hlen = 20;
        assert_eq!(send(&emit(&ib)), Err(DropReason::UnsupportedHardware));
        assert_eq!(
            send(&emit(&request(MessageType::Request, 1))),
            Err(DropReason::BadRequest)
        );
        assert_eq!(server.stats().total_dropped(), 7);
        assert!(DropReason::ALL.iter().all(|r| !r.as_str().is_empty()));
    }
}
