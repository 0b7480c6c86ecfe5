//! One simulated machine's boot, as a PXE ROM and the iPXE it loads do it: DHCP (PXE options) →
//! TFTP of the network boot program → DHCP again as iPXE → HTTP: the iPXE script, then every
//! file it names. The protocol work is the sans-IO client cores of `stampede-proto`; each
//! machine here is a state machine that moves their datagrams and bytes through the sockets of
//! one io_uring ([`ClientRing`]) and records when each stage ran. One thread drives thousands
//! of machines: the bench costs a fraction of the server it measures (docs/benchmarks/storm.md).
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::OwnedFd,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use stampede_dataplane::sys::uring_client::{ClientRing, Event, SockId, Sockets};
use stampede_proto::{
    dhcp::{ClientConfig as DhcpConfig, ClientLease, ClientState, DhcpClient},
    http::{ClientError, FetchRequest, HttpClient},
    ipxe::{expand_settings, script_downloads},
    tftp::{ClientConfig as TftpConfig, Expected, TftpClient},
};

use super::net::LocalNet;

mod record;

pub use record::{Failure, MachineRecord, Progress, Reference, Stage, StageRecord};

/// Everything the machines share.
#[derive(Debug)]
pub struct Ctx {
    pub epoch: Instant,
    pub deadline: Instant,
    pub tftp: TftpConfig,
    /// The last stage machines run.
    pub until: Stage,
    /// Share of DHCP and TFTP datagrams lost, each way (`--loss`): a lossy link played by the
    /// machines themselves, since this kernel has no netem. TCP is left alone.
    pub loss: f64,
    /// Share of received TFTP datagrams delivered after the next one (`--reorder`).
    pub reorder: f64,
    pub references: HashMap<String, Reference>,
    pub progress: Arc<Progress>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The last path segment of a TFTP name or URL, without a query: the key of its reference.
pub fn basename(name: &str) -> &str {
    let path = name.split(['?', '#']).next().unwrap_or(name);
    path.rsplit('/').next().unwrap_or(path)
}

/// A MAC for machine `index`: locally administered, `prefix` then the index.
pub fn machine_mac(prefix: [u8; 3], index: usize) -> [u8; 6] {
    let i = index as u32;
    [
        prefix[0],
        prefix[1],
        prefix[2],
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ]
}

/// How long a datagram held back by `--reorder` waits for a later one to overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(10);

/// Whether the next datagram is lost (or, with the reorder share, held back), drawn from the
/// machine's own generator (a run replays).
fn lost(loss: f64, rng: &mut u64) -> bool {
    let draw = (stampede_proto::dhcp::splitmix64(rng) >> 11) as f64 / ((1u64 << 53) as f64);
    loss > 0.0 && draw < loss
}

/// What a machine is.
#[derive(Debug, Clone)]
pub struct Machine {
    pub index: usize,
    pub mac: [u8; 6],
    pub bios: bool,
    pub start: Instant,
    pub seed: u64,
}

/// What the machines act through while one of them handles an event: the shared context, the
/// ring's sockets, the routes, and which machine owns which socket.
pub struct Env<'a> {
    pub ctx: &'a Ctx,
    pub io: &'a mut Sockets,
    /// The routes, shared by the bench's threads.
    pub net: &'a Mutex<LocalNet>,
    /// Owner of each socket slot: the machine's position in its thread's list.
    pub owners: &'a mut Vec<usize>,
    /// The shared DHCP socket.
    pub dhcp: SockId,
    /// Scratch space for one datagram.
    pub scratch: &'a mut [u8],
}

impl Env<'_> {
    fn own(&mut self, socket: SockId, machine: usize) {
        let i = socket.index();
        if self.owners.len() <= i {
            self.owners.resize(i + 1, usize::MAX);
        }
        self.owners[i] = machine;
    }
}

/// A datagram held back by `--reorder`: its bytes, its source, when it arrived.
#[derive(Debug)]
struct Held {
    data: Vec<u8>,
    from: SocketAddr,
    since: Instant,
}

/// A kept-alive HTTP connection to one server, driven by the sans-IO client.
#[derive(Debug)]
struct Conn {
    server: SocketAddrV4,
    socket: SockId,
    client: HttpClient,
    connected: bool,
}

/// Where a machine is in its boot.
#[derive(Debug)]
enum Phase {
    /// Not powered on yet.
    Off,
    Dhcp {
        client: Box<DhcpClient>,
        messages: u64,
    },
    Tftp {
        client: Box<TftpClient>,
        socket: SockId,
        held: Option<Held>,
    },
    Http(Box<HttpPhase>),
    Finished,
}

/// The HTTP part of a boot: the script (following chains), then every file it names.
#[derive(Debug)]
struct HttpPhase {
    ip: Ipv4Addr,
    conn: Option<Conn>,
    /// The URL being fetched.
    url: String,
    hop: usize,
    script_bytes: u64,
    /// Files named by the script; `Some(i)`: fetching file `i`.
    files: Vec<String>,
    file: Option<usize>,
    total: u64,
}

/// One simulated machine: a state machine moved on by the ring's events and its own timers.
#[derive(Debug)]
pub struct Sim {
    machine: Machine,
    record: MachineRecord,
    stage: Stage,
    stage_started: Instant,
    rng: u64,
    pxe: Option<DhcpConfig>,
    uuid: [u8; 16],
    phase: Phase,
    /// Position in its thread's list of machines: what its sockets are mapped to.
    pos: usize,
    /// When the machine next needs [`Sim::on_timer`].
    pub wake: Option<Instant>,
}

type Step = Result<(), String>;

impl Sim {
    pub fn new(ctx: &Ctx, machine: Machine) -> Self {
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&machine.seed.to_be_bytes());
        uuid[8..14].copy_from_slice(&machine.mac);
        Self {
            record: MachineRecord {
                index: machine.index,
                mac: stampede_proto::MacAddr(machine.mac).to_string(),
                arch: if machine.bios { "bios" } else { "efi64" },
                started_ms: ms(machine.start - ctx.epoch),
                stages: Vec::new(),
                boot_ms: None,
                failure: None,
            },
            stage: Stage::Dhcp,
            stage_started: machine.start,
            rng: machine.seed ^ 0x6c6f_7373,
            pxe: None,
            uuid,
            phase: Phase::Off,
            pos: 0,
            wake: Some(machine.start),
            machine,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.machine.mac
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    pub fn into_record(self) -> MachineRecord {
        self.record
    }

    /// Runs `step` and, if it failed, ends the boot there.
    fn guard(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        step: impl FnOnce(&mut Self, &mut Env<'_>) -> Step,
    ) {
        if self.is_finished() {
            return;
        }
        let result = step(self, env).and_then(|()| self.pump(env, now));
        if let Err(reason) = result {
            let _ = self.finish(env, now, Some(reason));
        }
    }

    /// A timer of the machine's is due (or power-on).
    pub fn on_timer(&mut self, env: &mut Env<'_>, now: Instant) {
        self.wake = None;
        self.guard(env, now, |sim, env| {
            match &mut sim.phase {
                Phase::Off => return sim.power_on(env, now),
                Phase::Dhcp { client, .. } => client.handle_timeout(now),
                Phase::Tftp { client, held, .. } => {
                    // Nothing overtook the held datagram in time: it arrives late.
                    if let Some(h) = held.take_if(|h| now >= h.since + REORDER_HOLD) {
                        let _ = client.handle_datagram(now, h.from, &h.data);
                    }
                    client.handle_timeout(now);
                }
                Phase::Http(http) => {
                    if let Some(conn) = &mut http.conn {
                        conn.client.handle_timeout(now);
                    }
                }
                Phase::Finished => {}
            }
            Ok(())
        });
    }

    /// A DHCP reply carrying this machine's MAC.
    pub fn on_dhcp(&mut self, env: &mut Env<'_>, now: Instant, reply: &[u8]) {
        self.guard(env, now, |sim, env| {
            if let Phase::Dhcp { client, .. } = &mut sim.phase
                && !lost(env.ctx.loss, &mut sim.rng)
            {
                client.handle_datagram(now, reply);
            }
            Ok(())
        });
    }

    /// An event on one of this machine's own sockets.
    pub fn on_event(&mut self, env: &mut Env<'_>, now: Instant, event: Event<'_>) {
        self.guard(env, now, |sim, env| sim.handle(env, now, event));
    }

    fn handle(&mut self, env: &mut Env<'_>, now: Instant, event: Event<'_>) -> Step {
        match (&mut self.phase, event) {
            (
                Phase::Tftp {
                    client,
                    socket,
                    held,
                },
                Event::Datagram {
                    socket: s,
                    source,
                    payload,
                },
            ) if s == *socket => {
                if lost(env.ctx.loss, &mut self.rng) {
                    return Ok(());
                }
                if held.is_none() && lost(env.ctx.reorder, &mut self.rng) {
                    *held = Some(Held {
                        data: payload.to_vec(),
                        from: source,
                        since: now,
                    });
                    env.ctx.progress.reordered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let _ = client.handle_datagram(now, source, payload);
                if let Some(h) = held.take() {
                    let _ = client.handle_datagram(now, h.from, &h.data);
                }
                Ok(())
            }
            (Phase::Http(http), event) => {
                let Some(conn) = http.conn.as_mut() else {
                    return Ok(());
                };
                let server = conn.server;
                match event {
                    Event::Connected { socket, result } if socket == conn.socket => {
                        result.map_err(|e| format!("connecting to {server}: {e}"))?;
                        conn.connected = true;
                    }
                    Event::Stream { socket, data } if socket == conn.socket => {
                        env.ctx
                            .progress
                            .bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        // A protocol error is also queued as the fetch's result.
                        let _ = conn.client.handle_input(now, data);
                    }
                    Event::Closed { socket, error } if socket == conn.socket => match error {
                        None => conn.client.handle_eof(now),
                        // A reset of a kept-alive connection before the response began is a
                        // close like any other (the retry follows in `pump`).
                        Some(_) if conn.client.unanswered_on_reused() => {
                            conn.client.handle_eof(now);
                        }
                        Some(e) => return Err(format!("reading from {server}: {e}")),
                    },
                    Event::SendFailed { socket, error } if socket == conn.socket => {
                        return Err(format!("sending to {server}: {error}"));
                    }
                    _ => {}
                }
                Ok(())
            }
            // Late events of a socket this machine no longer uses.
            _ => Ok(()),
        }
    }

    fn enter(&mut self, ctx: &Ctx, next: Stage, now: Instant, first: bool) {
        let p = &ctx.progress;
        if !first {
            p.in_stage[self.stage.index()].fetch_sub(1, Ordering::Relaxed);
        }
        p.in_stage[next.index()].fetch_add(1, Ordering::Relaxed);
        self.stage = next;
        self.stage_started = now;
    }

    /// Records the current stage as done; true when it was the last one asked for.
    fn end_stage(&mut self, ctx: &Ctx, now: Instant, bytes: u64, retransmits: u64) -> bool {
        self.record.stages.push(StageRecord {
            stage: self.stage,
            started_ms: ms(self.stage_started - ctx.epoch),
            duration_ms: ms(now - self.stage_started),
            bytes,
            retransmits,
        });
        ctx.until == self.stage
    }

    fn power_on(&mut self, env: &mut Env<'_>, now: Instant) -> Step {
        let m = &self.machine;
        let xid = (m.seed as u32) ^ 0x5354_0000;
        let mut pxe = if m.bios {
            DhcpConfig::bios_pxe(m.mac, xid, m.seed)
        } else {
            DhcpConfig::uefi_pxe(m.mac, xid, m.seed)
        };
        pxe.uuid = Some(self.uuid);
        self.enter(env.ctx, Stage::Dhcp, now, true);
        self.phase = Phase::Dhcp {
            client: Box::new(DhcpClient::new(pxe.clone(), now)),
            messages: 0,
        };
        self.pxe = Some(pxe);
        Ok(())
    }

    /// Sends what the current client has to send, moves on when it is done, and sets the next
    /// wake-up.
    fn pump(&mut self, env: &mut Env<'_>, now: Instant) -> Step {
        loop {
            match &mut self.phase {
                Phase::Off | Phase::Finished => return Ok(()),
                Phase::Dhcp { client, messages } => {
                    while let Some(tx) = client.poll_transmit(now, env.scratch) {
                        *messages += 1;
                        if lost(env.ctx.loss, &mut self.rng) {
                            continue;
                        }
                        let dst = SocketAddr::from((tx.dst_ip, tx.dst_port));
                        let payload = Bytes::copy_from_slice(&env.scratch[..tx.len]);
                        env.io
                            .send_to(env.dhcp, dst, payload)
                            .map_err(|e| format!("sending DHCP: {e}"))?;
                    }
                    if client.state() != ClientState::Bound {
                        self.wake = Some(
                            client
                                .poll_timeout()
                                .unwrap_or(now + Duration::from_secs(1)),
                        );
                        return Ok(());
                    }
                    let lease = client.lease().cloned().ok_or("bound without a lease")?;
                    // Two messages per DORA when nothing was lost.
                    let retransmits = messages.saturating_sub(2);
                    self.bound(env, now, lease, retransmits)?;
                }
                Phase::Tftp {
                    client,
                    socket,
                    held,
                } => {
                    while let Some(tx) = client.poll_transmit(now, env.scratch) {
                        if lost(env.ctx.loss, &mut self.rng) {
                            continue;
                        }
                        let payload = Bytes::copy_from_slice(&env.scratch[..tx.len]);
                        env.io
                            .send_to(*socket, tx.dst, payload)
                            .map_err(|e| format!("sending TFTP: {e}"))?;
                    }
                    let Some(outcome) = client.is_finished() else {
                        let mut wake = client
                            .poll_timeout()
                            .unwrap_or(now + Duration::from_secs(1));
                        if let Some(h) = held {
                            wake = wake.min(h.since + REORDER_HOLD);
                        }
                        self.wake = Some(wake);
                        return Ok(());
                    };
                    // Like EDK2, go on right after the last ACK instead of dallying.
                    let _ = env.io.close(*socket);
                    if let Err(failure) = outcome.result {
                        return Err(format!("TFTP: {failure}"));
                    }
                    let p = &env.ctx.progress;
                    p.bytes.fetch_add(outcome.len, Ordering::Relaxed);
                    if self.end_stage(env.ctx, now, outcome.len, outcome.retransmits) {
                        return self.finish(env, now, None);
                    }
                    let pxe = self.pxe.as_ref().ok_or("no PXE configuration")?;
                    let ipxe = DhcpConfig::ipxe(pxe);
                    self.enter(env.ctx, Stage::IpxeDhcp, now, false);
                    self.phase = Phase::Dhcp {
                        client: Box::new(DhcpClient::new(ipxe, now)),
                        messages: 0,
                    };
                }
                Phase::Http(http) => {
                    let Some(conn) = &mut http.conn else {
                        return Ok(());
                    };
                    if conn.connected {
                        let mut out = Vec::new();
                        conn.client.poll_transmit(&mut out);
                        if !out.is_empty() {
                            env.io
                                .send(conn.socket, out.into())
                                .map_err(|e| format!("sending to {}: {e}", conn.server))?;
                        }
                    }
                    let Some(result) = conn.client.poll_result() else {
                        self.wake = conn.client.poll_timeout();
                        return Ok(());
                    };
                    let url = http.url.clone();
                    if let Err(ClientError::ClosedUnanswered) = result {
                        // Once per request: a new connection has answered nothing before, so
                        // its close is a failure.
                        env.ctx
                            .progress
                            .http_retries
                            .fetch_add(1, Ordering::Relaxed);
                        let reference = match http.file {
                            Some(_) => env.ctx.references.get(basename(&url)).cloned(),
                            None => None,
                        };
                        self.fetch(env, now, &url, reference)?;
                        continue;
                    }
                    let result = result.map_err(|e| format!("GET {url}: {e}"))?;
                    if !(200..300).contains(&result.status) {
                        return Err(format!("GET {url}: status {}", result.status));
                    }
                    self.fetched(env, now, result.body.unwrap_or_default())?;
                }
            }
        }
    }

    /// A DORA finished: on to TFTP (as the PXE ROM) or HTTP (as iPXE).
    fn bound(&mut self, env: &mut Env<'_>, now: Instant, lease: ClientLease, re: u64) -> Step {
        if self.end_stage(env.ctx, now, 0, re) {
            return self.finish(env, now, None);
        }
        let servers = [&[lease.server_id, lease.next_server][..], &lease.routers].concat();
        lock(env.net)
            .make_local(lease.ip, lease.subnet_mask, &servers)
            .map_err(|e| format!("making {} local: {e:#}", lease.ip))?;
        let file = lease.boot_file.clone();
        if self.stage == Stage::Dhcp {
            let file = file.ok_or("the answer named no boot file")?;
            if file.contains("://") {
                return Err(format!(
                    "boot file {file:?} is a URL: this client boots by TFTP"
                ));
            }
            let reference = env
                .ctx
                .references
                .get(basename(&file))
                .ok_or_else(|| format!("no reference copy of {file:?} to verify it against"))?;
            let server = if lease.next_server.is_unspecified() {
                lease.server_id
            } else {
                lease.next_server
            };
            let socket = UdpSocket::bind((lease.ip, 0))
                .map_err(|e| format!("binding a TFTP socket on {}: {e}", lease.ip))?;
            let socket = env
                .io
                .add_udp(socket)
                .map_err(|e| format!("TFTP socket: {e}"))?;
            env.own(socket, self.pos);
            let mut config = env.ctx.tftp;
            config.expected = Expected {
                len: Some(reference.len),
                sha256: Some(reference.sha256),
            };
            self.enter(env.ctx, Stage::Tftp, now, false);
            let client = TftpClient::new(now, (server, 69).into(), &file, config);
            self.phase = Phase::Tftp {
                client: Box::new(client),
                socket,
                held: None,
            };
            return Ok(());
        }
        let url = file.ok_or("iPXE's answer named no script")?;
        self.enter(env.ctx, Stage::Script, now, false);
        let url = expand_settings(&url, |name| self.setting(lease.ip, name));
        self.phase = Phase::Http(Box::new(HttpPhase {
            ip: lease.ip,
            conn: None,
            url: url.clone(),
            hop: 0,
            script_bytes: 0,
            files: Vec::new(),
            file: None,
            total: 0,
        }));
        self.fetch(env, now, &url, None)
    }

    /// What iPXE would put in `${...}`: the chained script URLs of an architecture probe use them.
    fn setting(&self, ip: Ipv4Addr, name: &str) -> Option<String> {
        let bios = self.machine.bios;
        Some(match name {
            "ip" | "net0/ip" => ip.to_string(),
            "mac" | "net0/mac" => stampede_proto::MacAddr(self.machine.mac).to_string(),
            "platform" => (if bios { "pcbios" } else { "efi" }).to_owned(),
            "buildarch" => (if bios { "i386" } else { "x86_64" }).to_owned(),
            "uuid" => stampede_proto::ipxe::format_uuid(&self.uuid),
            _ => return None,
        })
    }

    /// A fetch finished: the script (follow its chain or start on its files) or a file.
    fn fetched(&mut self, env: &mut Env<'_>, now: Instant, body: Vec<u8>) -> Step {
        let Phase::Http(http) = &mut self.phase else {
            return Ok(());
        };
        if let Some(i) = http.file {
            if i + 1 < http.files.len() {
                http.file = Some(i + 1);
                let url = http.files[i + 1].clone();
                return self.fetch_file(env, now, &url);
            }
            let total = http.total;
            self.end_stage(env.ctx, now, total, 0);
            return self.finish(env, now, None);
        }
        http.script_bytes += body.len() as u64;
        let ip = http.ip;
        let url = http.url.clone();
        let script = String::from_utf8_lossy(&body).into_owned();
        let script = expand_settings(&script, |name| self.setting(ip, name));
        let Phase::Http(http) = &mut self.phase else {
            return Ok(());
        };
        let mut next = None;
        for item in script_downloads(&script, &url) {
            // A chained image with a reference copy is a binary to verify; otherwise a script.
            if item.chain && !env.ctx.references.contains_key(basename(&item.url)) {
                next = Some(item.url);
                break;
            }
            http.files.push(item.url);
        }
        if let Some(next) = next {
            // Scripts may chain to scripts; iPXE has no limit, a simulated machine stops at 8.
            http.hop += 1;
            if http.hop == 8 {
                return Err("more than 8 chained scripts".into());
            }
            return self.fetch(env, now, &next, None);
        }
        let script_bytes = http.script_bytes;
        let no_files = http.files.is_empty();
        if self.end_stage(env.ctx, now, script_bytes, 0) {
            return self.finish(env, now, None);
        }
        if no_files {
            return Err("the script names nothing to download".into());
        }
        self.enter(env.ctx, Stage::Files, now, false);
        let Phase::Http(http) = &mut self.phase else {
            return Ok(());
        };
        http.file = Some(0);
        let url = http.files[0].clone();
        self.fetch_file(env, now, &url)
    }

    fn fetch_file(&mut self, env: &mut Env<'_>, now: Instant, url: &str) -> Step {
        let reference = env
            .ctx
            .references
            .get(basename(url))
            .cloned()
            .ok_or_else(|| format!("no reference copy of {url} to verify it against"))?;
        if let Phase::Http(http) = &mut self.phase {
            http.total += reference.len;
        }
        self.fetch(env, now, url, Some(reference))
    }

    /// Starts fetching `url` over the machine's connection (opened, or reopened to another
    /// server, as needed); the body is kept when no reference is given (a script), else
    /// verified against `reference`.
    fn fetch(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        url: &str,
        reference: Option<Reference>,
    ) -> Step {
        let pos = self.pos;
        let Phase::Http(http) = &mut self.phase else {
            return Ok(());
        };
        http.url = url.to_owned();
        let (server, authority, target) = split_http_url(url)?;
        let reusable = http
            .conn
            .as_ref()
            .is_some_and(|c| c.server == server && c.client.is_reusable());
        if !reusable {
            if let Some(old) = http.conn.take() {
                let _ = env.io.close(old.socket);
            }
            lock(env.net)
                .reach(*server.ip())
                .map_err(|e| format!("{e:#}"))?;
            let socket =
                tcp_socket(http.ip).map_err(|e| format!("binding TCP to {}: {e}", http.ip))?;
            let socket = env
                .io
                .connect(socket, server.into())
                .map_err(|e| format!("connecting to {server}: {e}"))?;
            env.own(socket, pos);
            http.conn = Some(Conn {
                server,
                socket,
                client: HttpClient::new(&authority),
                connected: false,
            });
        }
        let conn = http.conn.as_mut().expect("opened above");
        let request = match reference {
            Some(Reference {
                sha256,
                content: Some(content),
                ..
            }) => FetchRequest::get(&target).comparing(content, sha256),
            Some(r) => {
                let mut req = FetchRequest::get(&target);
                req.expect_len = Some(r.len);
                req.expect_sha256 = Some(r.sha256);
                req
            }
            None => FetchRequest::get(&target).keeping_body(1 << 20),
        };
        conn.client.fetch(now, request);
        Ok(())
    }

    /// Ends the boot: booted (`None`) or failed where it stands.
    fn finish(&mut self, env: &mut Env<'_>, now: Instant, failure: Option<String>) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::Tftp { socket, .. } => {
                let _ = env.io.close(socket);
            }
            Phase::Http(http) => {
                if let Some(conn) = http.conn {
                    let _ = env.io.close(conn.socket);
                }
            }
            _ => {}
        }
        self.wake = None;
        let p = &env.ctx.progress;
        p.in_stage[self.stage.index()].fetch_sub(1, Ordering::Relaxed);
        match failure {
            None => {
                self.record.boot_ms = Some(ms(now - self.machine.start));
                p.booted.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                self.record.failure = Some(Failure {
                    stage: self.stage,
                    reason,
                });
                p.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The deadline passed with the machine still booting.
    pub fn expire(&mut self, env: &mut Env<'_>, now: Instant) {
        if !self.is_finished() {
            if matches!(self.phase, Phase::Off) {
                // Never powered on (a ramp longer than the run): failed before its first stage.
                self.enter(env.ctx, Stage::Dhcp, now, true);
            }
            let _ = self.finish(env, now, Some("deadline passed".to_owned()));
        }
    }
}

/// The routes, also if another thread panicked while holding them (their state stays valid:
/// every change is one `ip route` command, recorded after it succeeded).
fn lock(net: &Mutex<LocalNet>) -> MutexGuard<'_, LocalNet> {
    net.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A TCP socket bound to the machine's own address, not yet connected.
pub(super) fn tcp_socket(local: Ipv4Addr) -> std::io::Result<OwnedFd> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SocketAddrV4::new(local, 0).into())?;
    Ok(socket.into())
}

/// Runs `machines` on one ring, on this thread, until all have finished or the deadline
/// passed. Events go to the machine owning the socket (DHCP replies: the machine whose MAC is
/// the reply's `chaddr`, as a NIC filters on its address); timers come from one heap.
pub fn drive(
    ctx: &Ctx,
    ring: &mut ClientRing,
    net: &Mutex<LocalNet>,
    dhcp: SockId,
    machines: Vec<Machine>,
) -> anyhow::Result<Vec<MachineRecord>> {
    let mut sims: Vec<Sim> = machines
        .into_iter()
        .enumerate()
        .map(|(pos, m)| Sim {
            pos,
            ..Sim::new(ctx, m)
        })
        .collect();
    let by_mac: HashMap<[u8; 6], usize> =
        sims.iter().enumerate().map(|(i, s)| (s.mac(), i)).collect();
    let mut owners = Vec::new();
    let mut scratch = vec![0u8; 65536];
    // Timers: (when, machine); an entry is live while it equals the machine's `wake`.
    let mut timers = BinaryHeap::new();
    let mut queued: Vec<Option<Instant>> = sims.iter().map(|s| s.wake).collect();
    for (i, s) in sims.iter().enumerate() {
        if let Some(w) = s.wake {
            timers.push(Reverse((w, i)));
        }
    }
    let mut counted = vec![false; sims.len()];
    let mut remaining = sims.len();
    let mut touched = Vec::new();
    // What a machine acts through, over `io` (the ring's sockets, or the callback's borrow).
    macro_rules! env {
        ($io:expr) => {
            Env {
                ctx,
                io: $io,
                net,
                owners: &mut owners,
                dhcp,
                scratch: &mut scratch,
            }
        };
    }
    while remaining > 0 {
        if Instant::now() >= ctx.deadline {
            let now = Instant::now();
            let mut env = env!(ring.sockets());
            for sim in &mut sims {
                sim.expire(&mut env, now);
            }
            break;
        }
        let next = timers
            .peek()
            .map_or(ctx.deadline, |Reverse((t, _))| *t)
            .min(ctx.deadline);
        ring.run_once(Some(next), |event, io| {
            let now = Instant::now();
            let socket = event.socket();
            let owner = match &event {
                Event::Datagram { payload, .. } if socket == dhcp => {
                    // BOOTP: op(1) htype(1) hlen(1) hops(1) xid(4) secs(2) flags(2) 4
                    // addresses, then chaddr; malformed replies and other MACs are dropped.
                    if payload.len() < 240 || payload[0] != 2 {
                        return;
                    }
                    let mac: [u8; 6] = payload[28..34].try_into().expect("6 bytes");
                    by_mac.get(&mac).copied()
                }
                _ => owners.get(socket.index()).copied(),
            };
            let Some(i) = owner.filter(|&i| i < sims.len()) else {
                return;
            };
            let mut env = env!(io);
            match event {
                Event::Datagram { payload, .. } if socket == dhcp => {
                    sims[i].on_dhcp(&mut env, now, payload);
                }
                event => sims[i].on_event(&mut env, now, event),
            }
            touched.push(i);
        })
        .context("driving the machines' sockets")?;
        let now = Instant::now();
        while let Some(&Reverse((t, i))) = timers.peek() {
            if t > now {
                break;
            }
            timers.pop();
            if queued[i] == Some(t) {
                queued[i] = None;
            }
            if sims[i].wake == Some(t) {
                let mut env = env!(ring.sockets());
                sims[i].on_timer(&mut env, now);
                touched.push(i);
            }
        }
        for i in touched.drain(..) {
            if sims[i].is_finished() {
                if !counted[i] {
                    counted[i] = true;
                    remaining -= 1;
                }
            } else if let Some(w) = sims[i].wake
                && queued[i] != Some(w)
            {
                queued[i] = Some(w);
                timers.push(Reverse((w, i)));
            }
        }
    }
    Ok(sims.into_iter().map(Sim::into_record).collect())
}

/// Splits `http://host[:port]/target` into the server address and the target.
pub fn split_http_url(url: &str) -> Result<(SocketAddrV4, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are fetched"))?;
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
        None => (authority, 80u16),
    };
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| format!("{url:?}: the host must be an IPv4 address (no DNS in the lab)"))?;
    Ok((SocketAddrV4::new(ip, port), authority.to_owned(), target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(basename("http://h/a/vmlinuz?mac=1"), "vmlinuz");
        assert_eq!(basename("snponly.efi"), "snponly.efi");
        assert_eq!(basename("pxe/undionly.kpxe"), "undionly.kpxe");
        let (addr, host, target) = split_http_url("http://198.18.0.1:8080/boot.ipxe?m=1").unwrap();
        assert_eq!(addr, "198.18.0.1:8080".parse().unwrap());
        assert_eq!(host, "198.18.0.1:8080");
        assert_eq!(target, "/boot.ipxe?m=1");
        assert_eq!(split_http_url("http://10.0.0.1").unwrap().0.port(), 80);
        assert!(split_http_url("https://10.0.0.1/").is_err());
        assert!(split_http_url("http://name/").is_err());
        assert!(split_http_url("http://10.0.0.1:x/").is_err());
        assert_eq!(machine_mac([2, 0x53, 0], 0x01_0203), [2, 0x53, 0, 1, 2, 3]);
    }

    #[test]
    fn loss_is_the_asked_share_and_replays() {
        let mut rng = 7;
        let n = 100_000;
        let lost_count = (0..n).filter(|_| lost(0.05, &mut rng)).count();
        assert!((4_500..5_500).contains(&lost_count), "{lost_count}");
        let mut rng = 7;
        assert!((0..n).all(|_| !lost(0.0, &mut rng)));
        let (mut a, mut b) = (9, 9);
        let first: Vec<bool> = (0..64).map(|_| lost(0.3, &mut a)).collect();
        let again: Vec<bool> = (0..64).map(|_| lost(0.3, &mut b)).collect();
        assert_eq!(first, again);
    }
}
