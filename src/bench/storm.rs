//! One simulated machine's boot, as a PXE ROM and the iPXE it loads do it: DHCP (PXE options) →
//! TFTP of the network boot program → DHCP again as iPXE → HTTP: the iPXE script, then every
//! file it names. The protocol work is the sans-IO client cores of `stampede-proto`; this module
//! only moves their datagrams and bytes through tokio sockets and records when each stage ran.
use std::{
    cell::RefCell,
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use stampede_proto::{
    dhcp::{ClientConfig as DhcpConfig, ClientLease, ClientState, DhcpClient},
    http::{FetchRequest, HttpClient},
    ipxe::{expand_settings, script_downloads},
    tftp::{ClientConfig as TftpConfig, Expected, TftpClient},
};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpSocket, TcpStream, UdpSocket},
    sync::mpsc::UnboundedReceiver,
    time::sleep_until,
};

use super::net::LocalNet;

/// Length and digest of a file a machine must receive byte for byte, and with `--verify
/// compare` its content (HTTP downloads are then compared with it instead of hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub len: u64,
    pub sha256: [u8; 32],
    pub content: Option<bytes::Bytes>,
}

/// The stages of one boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// DISCOVER to ACK, as the PXE ROM.
    Dhcp,
    /// The network boot program over TFTP.
    Tftp,
    /// DISCOVER to ACK again, as iPXE.
    IpxeDhcp,
    /// The iPXE script over HTTP.
    Script,
    /// Every file the script names (kernel, initrds), over HTTP.
    Files,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Dhcp,
        Stage::Tftp,
        Stage::IpxeDhcp,
        Stage::Script,
        Stage::Files,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp",
            Stage::Tftp => "tftp",
            Stage::IpxeDhcp => "ipxe_dhcp",
            Stage::Script => "script",
            Stage::Files => "files",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One stage as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: Stage,
    /// Since the storm started.
    pub started_ms: f64,
    pub duration_ms: f64,
    pub bytes: u64,
    /// Messages sent again (DHCP retransmissions, TFTP RRQ/ACK retransmissions).
    pub retransmits: u64,
}

/// Where and why a machine did not boot.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub stage: Stage,
    pub reason: String,
}

/// One simulated machine's run.
#[derive(Debug, Clone, Serialize)]
pub struct MachineRecord {
    pub index: usize,
    pub mac: String,
    pub arch: &'static str,
    /// Power-on, since the storm started.
    pub started_ms: f64,
    pub stages: Vec<StageRecord>,
    /// Power-on to the last byte of the last file, if it booted.
    pub boot_ms: Option<f64>,
    pub failure: Option<Failure>,
}

/// Machines currently in each stage, and finished ones: what the progress line shows.
#[derive(Debug, Default)]
pub struct Progress {
    pub in_stage: [AtomicU64; 5],
    pub booted: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
    /// TFTP datagrams held back and delivered out of order (`--reorder`).
    pub reordered: AtomicU64,
}

/// Everything the machines share.
#[derive(Debug)]
pub struct Ctx {
    pub epoch: Instant,
    pub deadline: Instant,
    pub dhcp: UdpSocket,
    pub net: LocalNet,
    pub tftp: TftpConfig,
    /// The last stage machines run.
    pub until: Stage,
    /// Share of DHCP and TFTP datagrams lost, each way (`--loss`): a lossy link played by the
    /// machines themselves, since this kernel has no netem. TCP is left alone.
    pub loss: f64,
    /// Share of received TFTP datagrams delivered after the next one (`--reorder`).
    pub reorder: f64,
    pub references: HashMap<String, Reference>,
    pub progress: Progress,
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

/// Runs one machine to the end (booted, failed, or out of time).
pub async fn run(
    ctx: Arc<Ctx>,
    machine: Machine,
    mut replies: UnboundedReceiver<Vec<u8>>,
) -> MachineRecord {
    sleep_until(machine.start.into()).await;
    let mut record = MachineRecord {
        index: machine.index,
        mac: stampede_proto::ipxe::format_mac(&machine.mac),
        arch: if machine.bios { "bios" } else { "efi64" },
        started_ms: ms(machine.start - ctx.epoch),
        stages: Vec::new(),
        boot_ms: None,
        failure: None,
    };
    let mut stage = Stage::Dhcp;
    let outcome = tokio::time::timeout_at(
        ctx.deadline.into(),
        boot(&ctx, &machine, &mut replies, &mut record, &mut stage),
    )
    .await;
    ctx.progress.in_stage[stage.index()].fetch_sub(1, Ordering::Relaxed);
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(_) => Some("deadline passed".to_owned()),
    };
    match failure {
        None => {
            record.boot_ms = Some(ms(machine.start.elapsed()));
            ctx.progress.booted.fetch_add(1, Ordering::Relaxed);
        }
        Some(reason) => {
            record.failure = Some(Failure { stage, reason });
            ctx.progress.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    record
}

/// Moves the progress counters and the current stage on.
fn enter(ctx: &Ctx, current: &mut Stage, next: Stage, first: bool) {
    if !first {
        ctx.progress.in_stage[current.index()].fetch_sub(1, Ordering::Relaxed);
    }
    ctx.progress.in_stage[next.index()].fetch_add(1, Ordering::Relaxed);
    *current = next;
}

fn push(ctx: &Ctx, record: &mut MachineRecord, stage: Stage, t: Instant, bytes: u64, re: u64) {
    record.stages.push(StageRecord {
        stage,
        started_ms: ms(t - ctx.epoch),
        duration_ms: ms(t.elapsed()),
        bytes,
        retransmits: re,
    });
}

async fn boot(
    ctx: &Ctx,
    machine: &Machine,
    replies: &mut UnboundedReceiver<Vec<u8>>,
    record: &mut MachineRecord,
    stage: &mut Stage,
) -> Result<(), String> {
    let xid = (machine.seed as u32) ^ 0x5354_0000;
    let pxe = if machine.bios {
        DhcpConfig::bios_pxe(machine.mac, xid, machine.seed)
    } else {
        DhcpConfig::uefi_pxe(machine.mac, xid, machine.seed)
    };
    let mut pxe = pxe;
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&machine.seed.to_be_bytes());
    uuid[8..14].copy_from_slice(&machine.mac);
    pxe.uuid = Some(uuid);

    enter(ctx, stage, Stage::Dhcp, true);
    let t = Instant::now();
    let mut rng = machine.seed ^ 0x6c6f_7373;
    let (lease, re) = dhcp(ctx, replies, pxe.clone(), &mut rng).await?;
    push(ctx, record, Stage::Dhcp, t, 0, re);
    if ctx.until == Stage::Dhcp {
        return Ok(());
    }
    let servers = [&[lease.server_id, lease.next_server][..], &lease.routers].concat();
    ctx.net
        .make_local(lease.ip, lease.subnet_mask, &servers)
        .await
        .map_err(|e| format!("making {} local: {e:#}", lease.ip))?;
    let file = lease
        .boot_file
        .clone()
        .ok_or("the answer named no boot file")?;
    if file.contains("://") {
        return Err(format!(
            "boot file {file:?} is a URL: this client boots by TFTP"
        ));
    }
    let reference = ctx
        .references
        .get(basename(&file))
        .cloned()
        .ok_or_else(|| format!("no reference copy of {file:?} to verify it against"))?;

    enter(ctx, stage, Stage::Tftp, false);
    let t = Instant::now();
    let server = if lease.next_server.is_unspecified() {
        lease.server_id
    } else {
        lease.next_server
    };
    let (bytes, re) = tftp(ctx, lease.ip, server, &file, reference, &mut rng).await?;
    push(ctx, record, Stage::Tftp, t, bytes, re);
    if ctx.until == Stage::Tftp {
        return Ok(());
    }

    enter(ctx, stage, Stage::IpxeDhcp, false);
    let t = Instant::now();
    let (lease, re) = dhcp(ctx, replies, DhcpConfig::ipxe(&pxe), &mut rng).await?;
    push(ctx, record, Stage::IpxeDhcp, t, 0, re);
    if ctx.until == Stage::IpxeDhcp {
        return Ok(());
    }
    let servers = [&[lease.server_id, lease.next_server][..], &lease.routers].concat();
    ctx.net
        .make_local(lease.ip, lease.subnet_mask, &servers)
        .await
        .map_err(|e| format!("making {} local: {e:#}", lease.ip))?;
    let script_url = lease
        .boot_file
        .clone()
        .ok_or("iPXE's answer named no script")?;

    enter(ctx, stage, Stage::Script, false);
    let t = Instant::now();
    let mut connection: Option<Http> = None;
    // What iPXE would put in `${...}`: the chained script URLs of an architecture probe use them.
    let settings = |name: &str| -> Option<String> {
        Some(match name {
            "ip" | "net0/ip" => lease.ip.to_string(),
            "mac" | "net0/mac" => stampede_proto::ipxe::format_mac(&machine.mac),
            "platform" => (if machine.bios { "pcbios" } else { "efi" }).to_owned(),
            "buildarch" => (if machine.bios { "i386" } else { "x86_64" }).to_owned(),
            "uuid" => stampede_proto::ipxe::format_uuid(&uuid),
            _ => return None,
        })
    };
    let mut script_url = expand_settings(&script_url, settings);
    let mut script_bytes = 0;
    let mut files = Vec::new();
    // Scripts may chain to scripts; iPXE has no limit, a simulated machine stops at 8.
    for hop in 0.. {
        if hop == 8 {
            return Err("more than 8 chained scripts".into());
        }
        let script = fetch(ctx, &mut connection, lease.ip, &script_url, None).await?;
        script_bytes += script.len() as u64;
        let script = expand_settings(&String::from_utf8_lossy(&script), settings);
        let mut next = None;
        for item in script_downloads(&script, &script_url) {
            // A chained image with a reference copy is a binary to verify; otherwise a script.
            if item.chain && !ctx.references.contains_key(basename(&item.url)) {
                next = Some(item.url);
                break;
            }
            files.push(item.url);
        }
        match next {
            Some(url) => script_url = url,
            None => break,
        }
    }
    push(ctx, record, Stage::Script, t, script_bytes, 0);
    if ctx.until == Stage::Script {
        return Ok(());
    }
    if files.is_empty() {
        return Err("the script names nothing to download".into());
    }

    enter(ctx, stage, Stage::Files, false);
    let t = Instant::now();
    let mut total = 0;
    for url in &files {
        let reference = ctx
            .references
            .get(basename(url))
            .cloned()
            .ok_or_else(|| format!("no reference copy of {url} to verify it against"))?;
        total += reference.len;
        fetch(ctx, &mut connection, lease.ip, url, Some(reference)).await?;
    }
    push(ctx, record, Stage::Files, t, total, 0);
    Ok(())
}

/// One DORA; returns the lease and the retransmissions it took.
async fn dhcp(
    ctx: &Ctx,
    replies: &mut UnboundedReceiver<Vec<u8>>,
    config: DhcpConfig,
    rng: &mut u64,
) -> Result<(ClientLease, u64), String> {
    let mut client = DhcpClient::new(config, Instant::now());
    let mut buf = [0u8; 1500];
    let mut messages = 0u64;
    loop {
        let now = Instant::now();
        while let Some(tx) = client.poll_transmit(now, &mut buf) {
            messages += 1;
            let dst = SocketAddr::from((tx.dst_ip, tx.dst_port));
            if lost(ctx.loss, rng) {
                continue;
            }
            if let Err(err) = ctx.dhcp.send_to(&buf[..tx.len], dst).await {
                // A full send queue is a lost datagram, like on a wire: the timer resends it.
                if err.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(format!("sending DHCP: {err}"));
                }
            }
        }
        if client.state() == ClientState::Bound {
            let lease = client.lease().cloned().ok_or("bound without a lease")?;
            // Two messages per DORA when nothing was lost.
            return Ok((lease, messages.saturating_sub(2)));
        }
        let wake = client
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            reply = replies.recv() => match reply {
                Some(reply) => {
                    if !lost(ctx.loss, rng) {
                        client.handle_datagram(Instant::now(), &reply);
                    }
                }
                None => return Err("DHCP dispatcher stopped".into()),
            },
            () = sleep_until(wake.into()) => client.handle_timeout(Instant::now()),
        }
    }
}

/// One TFTP download from `server`'s port 69, from the machine's own address; returns the bytes
/// and the retransmissions.
async fn tftp(
    ctx: &Ctx,
    local: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    reference: Reference,
    rng: &mut u64,
) -> Result<(u64, u64), String> {
    let socket = UdpSocket::bind((local, 0))
        .await
        .map_err(|e| format!("binding a TFTP socket on {local}: {e}"))?;
    let mut config = ctx.tftp;
    config.expected = Expected {
        len: Some(reference.len),
        sha256: Some(reference.sha256),
    };
    let mut client = TftpClient::new(Instant::now(), (server, 69).into(), file, config);
    let mut out = vec![0u8; client.max_datagram_len().max(1500)];
    // Big enough for any block size a server may grant (RFC 2348 caps it at 65464).
    let mut inbuf = vec![0u8; 65536];
    // A datagram held back by `--reorder`: its bytes, its source, when it arrived.
    let mut held: Option<(Vec<u8>, SocketAddr, Instant)> = None;
    loop {
        let now = Instant::now();
        while let Some(tx) = client.poll_transmit(now, &mut out) {
            if lost(ctx.loss, rng) {
                continue;
            }
            if let Err(err) = socket.send_to(&out[..tx.len], tx.dst).await {
                return Err(format!("sending TFTP: {err}"));
            }
        }
        if let Some(outcome) = client.is_finished() {
            // Like EDK2, go on right after the last ACK instead of dallying.
            return match outcome.result {
                Ok(()) => {
                    ctx.progress.bytes.fetch_add(outcome.len, Ordering::Relaxed);
                    Ok((outcome.len, outcome.retransmits))
                }
                Err(failure) => Err(format!("TFTP {file}: {failure}")),
            };
        }
        let mut wake = client
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        if let Some((_, _, since)) = &held {
            wake = wake.min(*since + REORDER_HOLD);
        }
        tokio::select! {
            received = socket.recv_from(&mut inbuf) => {
                // ICMP errors (port unreachable) surface as errors; the retransmission timer
                // decides what they mean.
                if let Ok((n, from)) = received
                    && !lost(ctx.loss, rng)
                {
                    if held.is_none() && lost(ctx.reorder, rng) {
                        held = Some((inbuf[..n].to_vec(), from, Instant::now()));
                        ctx.progress.reordered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = client.handle_datagram(Instant::now(), from, &inbuf[..n]);
                    if let Some((late, from, _)) = held.take() {
                        let _ = client.handle_datagram(Instant::now(), from, &late);
                    }
                }
            }
            () = sleep_until(wake.into()) => {
                let now = Instant::now();
                // Nothing overtook the held datagram in time: it arrives late.
                if let Some((late, from, _)) = held.take_if(|h| now >= h.2 + REORDER_HOLD) {
                    let _ = client.handle_datagram(now, from, &late);
                }
                client.handle_timeout(now);
            }
        }
    }
}

/// A kept-alive HTTP connection to one server, driven by the sans-IO client.
#[derive(Debug)]
struct Http {
    server: SocketAddrV4,
    stream: TcpStream,
    client: HttpClient,
}

thread_local! {
    /// One receive buffer per runtime thread, not per connection: ten thousand connections must
    /// not pin ten thousand buffers. Reads are `try_read` after readiness, so the buffer is never
    /// held across an await.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
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

/// Fetches `url` over `connection` (opened, or reopened to another server, as needed); returns
/// the body when no reference is given (the script), else verifies it against `reference`.
async fn fetch(
    ctx: &Ctx,
    connection: &mut Option<Http>,
    local: Ipv4Addr,
    url: &str,
    reference: Option<Reference>,
) -> Result<Vec<u8>, String> {
    let (server, authority, target) = split_http_url(url)?;
    let reusable = connection
        .as_ref()
        .is_some_and(|c| c.server == server && c.client.is_reusable());
    if !reusable {
        ctx.net
            .reach(*server.ip())
            .await
            .map_err(|e| format!("{e:#}"))?;
        let socket = TcpSocket::new_v4().map_err(|e| format!("TCP socket: {e}"))?;
        socket
            .bind((local, 0).into())
            .map_err(|e| format!("binding TCP to {local}: {e}"))?;
        let stream = socket
            .connect(server.into())
            .await
            .map_err(|e| format!("connecting to {server}: {e}"))?;
        let _ = stream.set_nodelay(true);
        *connection = Some(Http {
            server,
            stream,
            client: HttpClient::new(&authority),
        });
    }
    let http = connection.as_mut().expect("opened above");
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
    http.client.fetch(Instant::now(), request);
    let mut out = Vec::new();
    loop {
        out.clear();
        http.client.poll_transmit(&mut out);
        if !out.is_empty() {
            http.stream
                .write_all(&out)
                .await
                .map_err(|e| format!("sending to {server}: {e}"))?;
        }
        if let Some(result) = http.client.poll_result() {
            let result = result.map_err(|e| format!("GET {url}: {e}"))?;
            if !(200..300).contains(&result.status) {
                return Err(format!("GET {url}: status {}", result.status));
            }
            return Ok(result.body.unwrap_or_default());
        }
        let wake = http
            .client
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            ready = http.stream.readable() => {
                ready.map_err(|e| format!("reading from {server}: {e}"))?;
                let read = READ_BUF.with_borrow_mut(|buf| {
                    match http.stream.try_read(buf) {
                        Ok(0) => { http.client.handle_eof(Instant::now()); Ok(0) }
                        Ok(n) => {
                            // A protocol error is also queued as the fetch's result.
                            let _ = http.client.handle_input(Instant::now(), &buf[..n]);
                            Ok(n)
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                        Err(e) => Err(format!("reading from {server}: {e}")),
                    }
                })?;
                ctx.progress.bytes.fetch_add(read as u64, Ordering::Relaxed);
            }
            () = sleep_until(wake.into()) => http.client.handle_timeout(Instant::now()),
        }
    }
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
