//! A sans-IO DHCP client doing a PXE-style DORA, for the benchmark harness that plays thousands
//! of machines.
//!
//! It sends what a PXE ROM or iPXE sends (options 60, 77, 93, 94, 97), retransmits with the
//! exponential backoff of RFC 2131 §4.1 (4 s, 8 s, 16 s ... capped at 64 s, each randomised by
//! ±1 s) and reports the lease and boot file once bound. Randomness is a seed in the config, never
//! a global RNG, so a simulated run replays exactly.
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::options::{ClientArch, ClientUuid, MessageType};
use super::server::{CLIENT_PORT, SERVER_PORT, Transmit};
use super::wire::{FLAG_BROADCAST, OpCode, Repr};

/// SplitMix64: the client's source of jitter. Public so tests can replay a seed.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Retransmission schedule (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Uniform randomisation either side of each delay.
    pub jitter: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(4),
            max: Duration::from_secs(64),
            jitter: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The wait after transmission number `attempt` (0-based), randomised by `random`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let base = self
            .initial
            .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        let span = self.jitter.as_millis() as u64;
        if span == 0 {
            return base;
        }
        let offset = random % (2 * span + 1);
        (base + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(span))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub mac: [u8; 6],
    pub xid: u32,
    pub arch: Option<ClientArch>,
    /// Option 60, e.g. `PXEClient:Arch:00007:UNDI:003016`.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77, e.g. `iPXE`.
    pub user_class: Option<Vec<u8>>,
    pub uuid: Option<[u8; 16]>,
    /// Option 94: interface type, major, minor (UNDI 3.16 is `[1, 3, 16]`).
    pub ndi: Option<[u8; 3]>,
    /// Option 175, iPXE's encapsulated feature list (servers match on its presence).
    pub ipxe_encap: Option<Vec<u8>>,
    /// Seed of the jitter generator.
    pub seed: u64,
    pub backoff: Backoff,
    /// REQUEST transmissions before starting over with DISCOVER (RFC 2131 §3.1 step 5).
    pub request_attempts: u32,
}

impl ClientConfig {
    /// A UEFI x64 PXE ROM.
    pub fn uefi_pxe(mac: [u8; 6], xid: u32, seed: u64) -> Self {
        Self {
            mac,
            xid,
            arch: Some(ClientArch::EfiX64),
            vendor_class: Some(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
            user_class: None,
            uuid: Some([0x42; 16]),
            ndi: Some([1, 3, 16]),
            ipxe_encap: None,
            seed,
            backoff: Backoff::default(),
            request_attempts: 4,
        }
    }

    /// A legacy BIOS PXE ROM (UNDI 2.1).
    pub fn bios_pxe(mac: [u8; 6], xid: u32, seed: u64) -> Self {
        Self {
            arch: Some(ClientArch::X86Bios),
            vendor_class: Some(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            ndi: Some([1, 2, 1]),
            ..Self::uefi_pxe(mac, xid, seed)
        }
    }

    /// The iPXE that `pxe` (a ROM profile) chainloaded: same identity and architecture, plus
    /// user class `iPXE` and option 175 (priority 0 and the bzImage, HTTP and EFI features, in
    /// iPXE's encoding), so servers hand it a script instead of another network boot program.
    pub fn ipxe(pxe: &Self) -> Self {
        Self {
            user_class: Some(b"iPXE".to_vec()),
            ipxe_encap: Some(vec![1, 1, 0, 0x18, 1, 1, 0x13, 1, 1, 0x24, 1, 1]),
            xid: pxe.xid.wrapping_add(0x1000),
            ..pxe.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Selecting,
    Requesting,
    Bound,
}

/// What the client learned once bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLease {
    pub ip: Ipv4Addr,
    pub server_id: Ipv4Addr,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub lease_time: Option<Duration>,
    /// `siaddr` of the reply that carried the boot file.
    pub next_server: Ipv4Addr,
    pub boot_file: Option<String>,
    /// Option 60 of the server's reply (`PXEClient` / `HTTPClient`).
    pub vendor_class: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BootInfo {
    next_server: Ipv4Addr,
    file: String,
    vendor_class: Option<Vec<u8>>,
}

fn boot_info(reply: &Repr) -> Option<BootInfo> {
    let raw = reply
        .options
        .bootfile
        .as_deref()
        .filter(|f| !f.is_empty())
        .unwrap_or(&reply.file);
    let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
    if raw.is_empty() {
        return None;
    }
    Some(BootInfo {
        next_server: reply.siaddr,
        file: String::from_utf8_lossy(raw).into_owned(),
        vendor_class: reply.options.vendor_class.clone(),
    })
}

#[derive(Debug)]
pub struct DhcpClient {
    config: ClientConfig,
    state: ClientState,
    xid: u32,
    rng: u64,
    started: Instant,
    attempt: u32,
    send_now: bool,
    deadline: Option<Instant>,
    offer: Option<Repr>,
    /// Boot instructions from a ProxyDHCP offer (no address in it).
    proxy_boot: Option<BootInfo>,
    lease: Option<ClientLease>,
    transmissions: u64,
}

impl DhcpClient {
    /// A client in SELECTING, with its first DISCOVER ready for [`DhcpClient::poll_transmit`].
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        Self {
            xid: config.xid,
            rng: config.seed,
            config,
            state: ClientState::Selecting,
            started: now,
            attempt: 0,
            send_now: true,
            deadline: None,
            offer: None,
            proxy_boot: None,
            lease: None,
            transmissions: 0,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn lease(&self) -> Option<&ClientLease> {
        self.lease.as_ref()
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// Messages sent so far, retransmissions included.
    pub fn transmissions(&self) -> u64 {
        self.transmissions
    }

    /// When [`DhcpClient::handle_timeout`] must run next; `None` once bound (no renewal: a
    /// booting machine is done with DHCP long before T1).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        self.deadline = None;
        if self.state == ClientState::Requesting && self.attempt >= self.config.request_attempts {
            self.restart();
        }
        self.send_now = true;
    }

    fn restart(&mut self) {
        self.state = ClientState::Selecting;
        self.xid = self.xid.wrapping_add(1);
        self.attempt = 0;
        self.offer = None;
        self.send_now = true;
        self.deadline = None;
    }

    fn message(&self, now: Instant) -> Repr {
        let mut m = Repr::new(OpCode::BootRequest, self.xid, self.config.mac);
        m.secs = u16::try_from(now.saturating_duration_since(self.started).as_secs())
            .unwrap_or(u16::MAX);
        // PXE ROMs ask for broadcast replies: they cannot receive unicast before configuring IP.
        m.flags = FLAG_BROADCAST;
        let o = &mut m.options;
        o.max_message_size = Some(1472);
        o.parameter_request = vec![1, 3, 6, 43, 54, 60, 66, 67, 97, 175];
        o.vendor_class = self.config.vendor_class.clone();
        o.user_class = self.config.user_class.clone();
        o.client_arch = self.config.arch.into_iter().collect();
        o.client_ndi = self.config.ndi;
        o.client_uuid = self.config.uuid.map(|id| ClientUuid { kind: 0, id });
        o.ipxe_encap = self.config.ipxe_encap.clone();
        let mut id = vec![1];
        id.extend_from_slice(&self.config.mac);
        o.client_id = Some(id);
        match (&self.state, &self.offer) {
            (ClientState::Requesting, Some(offer)) => {
                o.message_type = Some(MessageType::Request);
                o.server_id = offer.options.server_id;
                o.requested_ip = Some(offer.yiaddr);
            }
            _ => o.message_type = Some(MessageType::Discover),
        }
        m
    }

    /// Writes the next message into `buf` (broadcast to port 67) and arms its retransmission.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if !self.send_now || self.state == ClientState::Bound {
            return None;
        }
        let len = self.message(now).emit_bytes(buf).ok()?;
        self.send_now = false;
        let delay = self
            .config
            .backoff
            .delay(self.attempt, splitmix64(&mut self.rng));
        self.deadline = Some(now + delay);
        self.attempt += 1;
        self.transmissions += 1;
        Some(Transmit {
            dst_ip: Ipv4Addr::BROADCAST,
            dst_port: SERVER_PORT,
            src_port: CLIENT_PORT,
            dst_mac: Some([0xff; 6]),
            broadcast: true,
            len,
        })
    }

    /// Takes a datagram from port 67. Returns whether it moved the client on; stray, duplicate
    /// and late replies are ignored.
    pub fn handle_datagram(&mut self, _now: Instant, bytes: &[u8]) -> bool {
        let Ok(reply) = Repr::parse_bytes(bytes) else {
            return false;
        };
        if reply.op != OpCode::BootReply
            || reply.xid != self.xid
            || reply.mac() != Some(self.config.mac)
        {
            return false;
        }
        match (self.state, reply.options.message_type) {
            (ClientState::Selecting, Some(MessageType::Offer)) => {
                if reply.yiaddr.is_unspecified() {
                    // ProxyDHCP: boot instructions only (PXE 2.1 §2.2.3); keep waiting for an
                    // address.
                    self.proxy_boot = boot_info(&reply).or(self.proxy_boot.take());
                    return false;
                }
                if reply.options.server_id.is_none() {
                    return false;
                }
                self.offer = Some(reply);
                self.state = ClientState::Requesting;
                self.attempt = 0;
                self.send_now = true;
                self.deadline = None;
                true
            }
            (ClientState::Requesting, Some(MessageType::Ack)) => {
                let Some(offer) = &self.offer else {
                    return false;
                };
                if reply.options.server_id != offer.options.server_id
                    || reply.yiaddr != offer.yiaddr
                {
                    return false;
                }
                let boot = boot_info(&reply)
                    .or_else(|| boot_info(offer))
                    .or_else(|| self.proxy_boot.clone());
                self.lease = Some(ClientLease {
                    ip: reply.yiaddr,
                    server_id: reply.options.server_id.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    subnet_mask: reply.options.subnet_mask,
                    routers: reply.options.routers.clone(),
                    lease_time: reply
                        .options
                        .lease_time
                        .map(|s| Duration::from_secs(u64::from(s))),
                    next_server: boot
                        .as_ref()
                        .map_or(Ipv4Addr::UNSPECIFIED, |b| b.next_server),
                    boot_file: boot.as_ref().map(|b| b.file.clone()),
                    vendor_class: boot.and_then(|b| b.vendor_class),
                });
                self.state = ClientState::Bound;
                self.deadline = None;
                self.send_now = false;
                true
            }
            (ClientState::Requesting, Some(MessageType::Nak)) => {
                let from_chosen = self
                    .offer
                    .as_ref()
                    .is_some_and(|o| o.options.server_id == reply.options.server_id);
                if from_chosen {
                    self.restart();
                }
                from_chosen
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddrV4;

    use super::*;
    use crate::dhcp::boot::BootConfig;
    use crate::dhcp::lease::MemoryLeaseStore;
    use crate::dhcp::server::{DhcpServer, Pool, ServerConfig};

    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn server(first: u8, last: u8) -> DhcpServer {
        let pool = Pool {
            subnet: Ipv4Addr::new(198, 18, 0, 0),
            prefix_len: 16,
            first: Ipv4Addr::new(198, 18, 1, first),
            last: Ipv4Addr::new(198, 18, 1, last),
            routers: vec![SERVER],
            dns_servers: vec![],
            lease_time: Duration::from_secs(3600),
            reservations: Default::default(),
        };
        DhcpServer::new(ServerConfig::authoritative(
            SERVER,
            BootConfig::new(SERVER, "http://198.18.0.1:8080"),
            vec![pool],
        ))
        .expect("valid config")
    }

    fn to_server(
        server: &mut DhcpServer,
        store: &mut MemoryLeaseStore,
        now: Instant,
        bytes: &[u8],
    ) {
        let _ = server.handle_datagram(
            now,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
            bytes,
            store,
        );
    }

    fn drain(server: &mut DhcpServer, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            out.push(buf[..t.len].to_vec());
        }
        out
    }

    fn send(client: &mut DhcpClient, now: Instant) -> Vec<u8> {
        let mut buf = [0u8; 1500];
        let t = client
            .poll_transmit(now, &mut buf)
            .unwrap_or_else(|| panic!("client in {:?} has nothing to send", client.state()));
        buf[..t.len].to_vec()
    }

    #[test]
    fn backoff_schedule_is_rfc2131() {
        let b = Backoff {
            jitter: Duration::ZERO,
            ..Backoff::default()
        };
        let secs: Vec<u64> = (0..8).map(|a| b.delay(a, 0).as_secs()).collect();
        assert_eq!(secs, [4, 8, 16, 32, 64, 64, 64, 64]);
        let j = Backoff::default();
        for r in 0..5000u64 {
            let d = j.delay(1, splitmix64(&mut r.clone()));
            assert!(
                d >= Duration::from_secs(7) && d <= Duration::from_secs(9),
                "{d:?}"
            );
        }
        assert_eq!(j.delay(0, 0), Duration::from_secs(3));
        assert_eq!(j.delay(0, 2000), Duration::from_secs(5));
    }

    /// Loss, duplication and reordering, one step at a time, with every deadline checked.
    #[test]
    fn dora_survives_loss_duplication_and_reordering() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut config = ClientConfig::uefi_pxe([2, 0, 0, 0, 0, 1], 0x1234, 7);
        config.backoff.jitter = Duration::ZERO;
        let mut client = DhcpClient::new(config, t0);
        let mut srv = server(10, 20);
        let mut store = MemoryLeaseStore::new();

        assert_eq!(
            client.poll_timeout(),
            None,
            "nothing armed before the first send"
        );
        let lost = send(&mut client, t0);
        assert_eq!(client.poll_timeout(), Some(t0 + s(4)));
        assert!(client.poll_transmit(t0 + s(1), &mut [0; 1500]).is_none());
        client.handle_timeout(t0 + s(3));
        assert_eq!(
            client.poll_timeout(),
            Some(t0 + s(4)),
            "early timeout is a no-op"
        );
        client.handle_timeout(t0 + s(4));
        let second = send(&mut client, t0 + s(4));
        assert_eq!(client.poll_timeout(), Some(t0 + s(12)));
        client.handle_timeout(t0 + s(12));
        let third = send(&mut client, t0 + s(12));
        assert_eq!(client.poll_timeout(), Some(t0 + s(28)));

        // The first DISCOVER was lost; the second arrives after the third (reordered) and both are
        // answered: the client sees two offers for the same address.
        drop(lost);
        let now = t0 + s(12);
        to_server(&mut srv, &mut store, now, &third);
        to_server(&mut srv, &mut store, now, &second);
        let offers = drain(&mut srv, now);
        assert_eq!(offers.len(), 2);
        assert!(client.handle_datagram(now, &offers[0]));
        assert_eq!(client.state(), ClientState::Requesting);
        assert!(
            !client.handle_datagram(now, &offers[1]),
            "second offer ignored"
        );
        assert_eq!(
            client.poll_timeout(),
            None,
            "REQUEST due now, timer re-armed on send"
        );

        let lost_request = send(&mut client, now);
        assert_eq!(client.poll_timeout(), Some(now + s(4)));
        drop(lost_request);
        client.handle_timeout(now + s(4));
        let request = send(&mut client, now + s(4));
        assert_eq!(client.poll_timeout(), Some(now + s(12)));

        // Duplicated REQUEST: two ACKs; stale OFFER delivered after them.
        let now = now + s(4);
        to_server(&mut srv, &mut store, now, &request);
        to_server(&mut srv, &mut store, now, &request);
        let acks = drain(&mut srv, now);
        assert_eq!(acks.len(), 2);
        assert!(client.handle_datagram(now, &acks[1]));
        assert!(!client.handle_datagram(now, &acks[0]));
        assert!(!client.handle_datagram(now, &offers[1]));
        assert_eq!(client.state(), ClientState::Bound);
        assert_eq!(client.poll_timeout(), None);
        assert_eq!(client.transmissions(), 5);
        let lease = client.lease().expect("bound");
        assert_eq!(lease.ip, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(lease.server_id, SERVER);
        assert_eq!(lease.boot_file.as_deref(), Some("snponly.efi"));
        assert_eq!(lease.next_server, SERVER);
        assert_eq!(lease.vendor_class.as_deref(), Some(&b"PXEClient"[..]));
        assert_eq!(lease.lease_time, Some(s(3600)));
        assert_eq!(srv.stats().acks, 2);
    }

    #[test]
    fn jittered_deadlines_replay_from_the_seed() {
        let t0 = Instant::now();
        let config = ClientConfig::uefi_pxe([2, 0, 0, 0, 0, 2], 1, 99);
        let backoff = config.backoff;
        let mut client = DhcpClient::new(config, t0);
        let mut rng = 99u64;
        let mut now = t0;
        for attempt in 0..6 {
            send(&mut client, now);
            let want = now + backoff.delay(attempt, splitmix64(&mut rng));
            assert_eq!(client.poll_timeout(), Some(want), "attempt {attempt}");
            now = want;
            client.handle_timeout(now);
        }
    }

    #[test]
    fn nak_and_exhausted_requests_restart_discovery() {
        let t0 = Instant::now();
        let mut config = ClientConfig::uefi_pxe([2, 0, 0, 0, 0, 3], 5, 1);
        config.backoff.jitter = Duration::ZERO;
        let mut client = DhcpClient::new(config, t0);
        let mut srv = server(10, 20);
        let mut store = MemoryLeaseStore::new();
        let discover = send(&mut client, t0);
        to_server(&mut srv, &mut store, t0, &discover);
        let offer = drain(&mut srv, t0).pop().expect("offer");
        assert!(client.handle_datagram(t0, &offer));
        // Every REQUEST lost: after 4 tries (4+8+16+32 s) the client starts over.
        let mut now = t0;
        for wait in [4, 8, 16, 32] {
            send(&mut client, now);
            now += Duration::from_secs(wait);
            assert_eq!(client.poll_timeout(), Some(now));
            client.handle_timeout(now);
        }
        assert_eq!(client.state(), ClientState::Selecting);
        assert_eq!(client.xid(), 6, "a new transaction");
        // A NAK from the chosen server also restarts.
        let discover = send(&mut client, now);
        to_server(&mut srv, &mut store, now, &discover);
        let offer = drain(&mut srv, now).pop().expect("offer");
        assert!(client.handle_datagram(now, &offer));
        let mut nak = Repr::parse_bytes(&offer).expect("offer parses");
        nak.options.message_type = Some(MessageType::Nak);
        let mut buf = [0u8; 600];
        let n = nak.emit_bytes(&mut buf).expect("emit");
        assert!(client.handle_datagram(now, &buf[..n]));
        assert_eq!(client.state(), ClientState::Selecting);
    }

    /// Many machines at once over a lossy, duplicating, reordering network.
    #[test]
    fn crowd_of_clients_all_bind_with_unique_addresses() {
        const N: usize = 200;
        let t0 = Instant::now();
        let mut srv = server(1, 250);
        let mut store = MemoryLeaseStore::new();
        let mut clients: Vec<DhcpClient> = (0..N)
            .map(|i| {
                let mac = [2, 0, 0, 0, (i >> 8) as u8, i as u8];
                let mut c = ClientConfig::uefi_pxe(mac, i as u32 * 7919, i as u64);
                if i % 3 == 0 {
                    c = ClientConfig::bios_pxe(mac, i as u32 * 7919, i as u64);
                }
                DhcpClient::new(c, t0)
            })
            .collect();
        let mut net = 0xdead_beefu64;
        let mut now = t0;
        let mut buf = [0u8; 1500];
        for _round in 0..5000 {
            let mut up = Vec::new();
            for c in &mut clients {
                if let Some(t) = c.poll_transmit(now, &mut buf) {
                    up.push(buf[..t.len].to_vec());
                }
            }
            let mut down = Vec::new();
            for pkt in shuffle_lossy(up, &mut net) {
                to_server(&mut srv, &mut store, now, &pkt);
                down.extend(drain(&mut srv, now));
            }
            for pkt in shuffle_lossy(down, &mut net) {
                let mac_lo = usize::from(pkt[32]) << 8 | usize::from(pkt[33]);
                clients[mac_lo].handle_datagram(now, &pkt);
            }
            if clients.iter().all(|c| c.state() == ClientState::Bound) {
                break;
            }
            let next = clients.iter().filter_map(DhcpClient::poll_timeout).min();
            if clients.iter().all(|c| !c.send_now)
                && let Some(next) = next
            {
                now = next;
            }
            for c in &mut clients {
                c.handle_timeout(now);
            }
        }
        let mut ips = HashSet::new();
        for (i, c) in clients.iter().enumerate() {
            let lease = c.lease().unwrap_or_else(|| {
                panic!(
                    "client {i} not bound: {:?} after {} sends, {:?}",
                    c.state(),
                    c.transmissions(),
                    srv.stats()
                )
            });
            assert!(ips.insert(lease.ip), "address {} given twice", lease.ip);
            let want = if i % 3 == 0 {
                "undionly.kpxe"
            } else {
                "snponly.efi"
            };
            assert_eq!(lease.boot_file.as_deref(), Some(want), "client {i}");
        }
        assert_eq!(srv.stats().total_dropped(), 0, "{:?}", srv.stats());
    }

    /// Drops ~20 %, duplicates ~10 %, then shuffles.
    fn shuffle_lossy(pkts: Vec<Vec<u8>>, rng: &mut u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in pkts {
            match splitmix64(rng) % 10 {
                0 | 1 => {}
                2 => {
                    out.push(p.clone());
                    out.push(p);
                }
                _ => out.push(p),
            }
        }
        for i in (1..out.len()).rev() {
            let j = (splitmix64(rng) % (i as u64 + 1)) as usize;
            out.swap(i, j);
        }
        out
    }
}
