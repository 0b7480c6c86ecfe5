//! The root's swarm (issue 17): the node agent fetches its root's pieces from the machines
//! booting with it, and uploads to them while it does, with the appliance as tracker and web
//! seed.
//!
//! The protocol is proto's sans-IO [`PeerSwarm`]; this drives it over plain blocking sockets,
//! one thread per connection, all sharing it behind one mutex (a rack's swarm is tens of
//! peers per machine, and the work per message is a copy and, per piece, one SHA-256). The
//! threads:
//! - the tracker: announces to `{server}/stampede/swarm/announce`, dials the peers it lists,
//!   and ticks the core's timers;
//! - a listener on [`SwarmPlan::port`] for peers that dial us;
//! - one per connection: reads into the core, writes what it says, answers uploads from the
//!   storage the verified pieces were written to;
//! - [`WEB_SEED_WORKERS`] web seed fetchers: `Range` requests on the appliance's image for
//!   the pieces no peer offers (after a short grace) or whose peers stalled, so no machine is
//!   stranded when its peers are unreachable.
//!
//! Every piece, from a peer or the web seed, is checked against its chunk's SHA-256 from the
//! signed manifest before it is written, announced or uploaded.
use std::{
    collections::HashSet,
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::fs::FileExt as _,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use stampede_proto::{
    bencode::Value,
    peerwire::{PeerKey, PeerSwarm, PieceSpec, SwarmConfig, SwarmEvent},
};
use stampede_rootfs::manifest::RootManifest;

use crate::http::{HttpConnection, HttpUrl, encode_query_value};

/// The peer port: BitTorrent's customary first one.
pub const DEFAULT_PORT: u16 = 6881;
/// Web seed connections: two, as the plain HTTP path uses (a rack's machines open two each).
pub const WEB_SEED_WORKERS: usize = 2;
/// Pieces fetched from the web seed in one `Range` request: 16 MiB, as the plain HTTP path's
/// runs (the appliance serves a few long ranges for less CPU than many short ones, and a
/// machine's boot session is not flooded with one event per MiB).
pub const WEB_SEED_RUN: usize = 16;
/// How often the tracker thread ticks the core's timers.
const TICK: Duration = Duration::from_millis(100);
/// A peer that does not accept a connection in this long is skipped until the next announce.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Between bytes of a tracker or web seed answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Re-announce while downloading at least this often (the tracker's `min interval` is 10 s):
/// machines that boot a little later are found within it.
const LEECH_ANNOUNCE: Duration = Duration::from_secs(10);
/// Most peers dialed at once.
const MAX_PEERS: usize = 32;

/// What the swarm needs, all from the signed manifest and the appliance's address.
#[derive(Debug, Clone)]
pub struct SwarmPlan {
    pub announce: HttpUrl,
    /// The info hash announced and put in handshakes (the manifest's `swarm`).
    pub info_hash: [u8; 20],
    /// The appliance's image (BEP 19 web seed); `None`: peers only.
    pub web_seed: Option<HttpUrl>,
    pub port: u16,
    /// 20 bytes naming this machine in the swarm.
    pub peer_id: [u8; 20],
}

impl SwarmPlan {
    /// The plan for `manifest` served from `server`: the hybrid torrent's v1 info hash (or its
    /// v1-only twin's, the swarm Debian 12's clients join, with `v1_only`).
    pub fn for_manifest(
        manifest: &RootManifest,
        server: &HttpUrl,
        web_seed: Option<HttpUrl>,
        v1_only: bool,
        peer_id: [u8; 20],
    ) -> Result<Self> {
        let swarm = manifest
            .swarm
            .as_ref()
            .context("the manifest names no torrent")?;
        let hex_hash = if v1_only {
            &swarm.v1_only_info_hash
        } else {
            &swarm.info_hash_v1
        };
        let mut info_hash = [0u8; 20];
        hex_decode(hex_hash, &mut info_hash).context("the manifest's info hash")?;
        Ok(Self {
            announce: server.join("/stampede/swarm/announce"),
            info_hash,
            web_seed,
            port: DEFAULT_PORT,
            peer_id,
        })
    }
}

fn hex_decode(text: &str, out: &mut [u8]) -> Result<()> {
    if text.len() != out.len() * 2 {
        bail!("{text:?} is not {} hex digits", out.len() * 2);
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16)
            .with_context(|| format!("{text:?} is not hex"))?;
    }
    Ok(())
}

/// A peer id: `-SN0001-` (Azureus style, BEP 20) and twelve digits from `seed`.
pub fn peer_id(seed: u64) -> [u8; 20] {
    let mut id = *b"-SN0001-000000000000";
    let mut n = seed;
    for byte in &mut id[8..] {
        *byte = b'0' + (n % 10) as u8;
        n /= 10;
    }
    id
}

/// What the swarm tells the agent as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmNote {
    Announced { peers: usize },
    AnnounceFailed { reason: String },
    PeerBanned { addr: IpAddr, piece: u32 },
    WebSeedFailed { piece: u32, reason: String },
}

/// Figures of a fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmReport {
    pub bytes_from_peers: u64,
    pub bytes_from_appliance: u64,
    pub pieces_from_peers: u64,
    pub pieces_from_appliance: u64,
    pub bytes_uploaded: u64,
    pub banned: Vec<IpAddr>,
    pub elapsed: Duration,
}

/// Where verified pieces go and uploads are read from: the RAM disk, or a file.
#[derive(Debug)]
pub struct PieceStore {
    file: File,
    piece_len: u64,
}

type Notify = dyn Fn(SwarmNote) + Send + Sync;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    Running,
    Complete,
    Failed(String),
}

struct Shared {
    swarm: Mutex<PeerSwarm>,
    store: PieceStore,
    plan: SwarmPlan,
    size: u64,
    stop: AtomicBool,
    /// `Done::Complete` when every piece is written, `Done::Failed` when the swarm cannot
    /// finish (the appliance's own image disagrees with its signed manifest).
    done: (Mutex<Done>, Condvar),
    /// Connections the core closed; their threads end.
    closed: Mutex<HashSet<PeerKey>>,
    /// Addresses with a connection (dialed or accepted).
    connected: Mutex<HashSet<SocketAddr>>,
    next_key: AtomicU64,
    banned: Mutex<Vec<IpAddr>>,
    note: Box<Notify>,
}

/// A running swarm. Dropping it stops every thread (after a `stopped` announce).
pub struct SwarmNode {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    started: Instant,
}

impl std::fmt::Debug for SwarmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmNode")
            .field("announce", &self.shared.plan.announce)
            .finish_non_exhaustive()
    }
}

impl SwarmNode {
    /// Joins the swarm for `manifest`, writing verified pieces into `file` (at least
    /// `manifest.size` long). Fails only when the peer port cannot be opened.
    pub fn start(
        manifest: &RootManifest,
        plan: SwarmPlan,
        file: File,
        note: Box<Notify>,
    ) -> Result<Self> {
        let now = Instant::now();
        let pieces: Vec<PieceSpec> = manifest
            .chunks
            .iter()
            .map(|c| PieceSpec {
                len: u32::try_from(c.size).unwrap_or(u32::MAX),
                sha256: c.sha256.0,
            })
            .collect();
        let core = PeerSwarm::new(
            now,
            SwarmConfig::default(),
            plan.info_hash,
            plan.peer_id,
            pieces,
            Vec::new(),
        );
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, plan.port)))
            .with_context(|| format!("peer port {}", plan.port))?;
        listener.set_nonblocking(true).context("peer port")?;
        let shared = Arc::new(Shared {
            swarm: Mutex::new(core),
            store: PieceStore {
                file,
                piece_len: manifest.chunk_size,
            },
            size: manifest.size,
            plan,
            stop: AtomicBool::new(false),
            done: (Mutex::new(Done::Running), Condvar::new()),
            closed: Mutex::new(HashSet::new()),
            connected: Mutex::new(HashSet::new()),
            next_key: AtomicU64::new(1),
            banned: Mutex::new(Vec::new()),
            note,
        });
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(thread::spawn(move || accept_peers(&s, &listener)));
        let s = Arc::clone(&shared);
        threads.push(thread::spawn(move || track(&s)));
        if shared.plan.web_seed.is_some() {
            for _ in 0..WEB_SEED_WORKERS {
                let s = Arc::clone(&shared);
                threads.push(thread::spawn(move || web_seed(&s)));
            }
        }
        Ok(Self {
            shared,
            threads,
            started: now,
        })
    }

    /// Waits until every piece is verified and written, or `timeout` passes (an error).
    pub fn wait_complete(&self, timeout: Duration) -> Result<SwarmReport> {
        let (lock, cvar) = &self.shared.done;
        let done = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = cvar
            .wait_timeout_while(done, timeout, |done| *done == Done::Running)
            .unwrap_or_else(|e| e.into_inner());
        match done.clone() {
            Done::Complete => {}
            Done::Failed(reason) => bail!("{reason}"),
            Done::Running => {
                drop(done);
                let missing = self.shared.lock().missing();
                bail!("{missing} pieces still missing after {timeout:?}");
            }
        }
        drop(done);
        // The pieces are in the RAM disk's page cache; erofs reads file data with its own
        // bios, straight from brd's pages, so they must be written back before the mount
        // (as the HTTP path's flush does).
        self.shared
            .store
            .file
            .sync_all()
            .context("flushing the root image")?;
        Ok(self.report())
    }

    pub fn report(&self) -> SwarmReport {
        let swarm = self.shared.lock();
        let stats = swarm.stats();
        SwarmReport {
            bytes_from_peers: stats.bytes_from_peers,
            bytes_from_appliance: stats.bytes_from_web_seed,
            pieces_from_peers: stats.pieces_from_peers,
            pieces_from_appliance: stats.pieces_from_web_seed,
            bytes_uploaded: stats.bytes_uploaded,
            banned: self
                .shared
                .banned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for SwarmNode {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PeerSwarm> {
        self.swarm.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn is_complete(&self) -> bool {
        *self.done.0.lock().unwrap_or_else(|e| e.into_inner()) == Done::Complete
    }

    fn finish(&self, done: Done) {
        let (lock, cvar) = &self.done;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        if *state == Done::Running {
            *state = done;
        }
        cvar.notify_all();
    }

    /// Acts on the core's events; call with its lock held.
    fn drain_events(&self, swarm: &mut PeerSwarm) {
        while let Some(event) = swarm.poll_event() {
            match event {
                SwarmEvent::PieceVerified { piece, data, .. } => {
                    let offset = u64::from(piece) * self.store.piece_len;
                    if let Err(err) = self.store.file.write_all_at(&data, offset) {
                        // The RAM disk refused a write: nothing the swarm can do; the fetch
                        // times out and the agent falls back to plain HTTP.
                        say!("writing piece {piece}: {err}");
                    }
                }
                SwarmEvent::PeerBanned { addr, piece, .. } => {
                    self.banned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(addr);
                    (self.note)(SwarmNote::PeerBanned { addr, piece });
                }
                SwarmEvent::WebSeedCorrupt { piece } => {
                    // The appliance's image disagrees with its own signed manifest: no peer
                    // can be expected to have better. The plain HTTP path refetches the chunk
                    // by its own URL and reports it by name.
                    let reason = format!("piece {piece} from the appliance failed its SHA-256");
                    (self.note)(SwarmNote::WebSeedFailed {
                        piece,
                        reason: "SHA-256 mismatch".into(),
                    });
                    self.finish(Done::Failed(reason));
                }
                SwarmEvent::Close { peer, .. } => {
                    self.closed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(peer);
                }
                SwarmEvent::Complete => self.finish(Done::Complete),
            }
        }
    }

    fn new_key(&self) -> PeerKey {
        PeerKey(self.next_key.fetch_add(1, Ordering::SeqCst))
    }
}

fn accept_peers(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, addr)) => {
                let _ = stream.set_nonblocking(false);
                let s = Arc::clone(shared);
                thread::spawn(move || connection(&s, stream, addr, false));
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
    }
}

/// One peer connection, until it closes or the swarm stops.
fn connection(shared: &Arc<Shared>, mut stream: TcpStream, addr: SocketAddr, outbound: bool) {
    let connected = |on: bool| {
        let mut set = shared.connected.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            set.insert(addr)
        } else {
            set.remove(&addr)
        }
    };
    if !connected(true) && !outbound {
        // Already talking to that address and port (both sides dialed): keep one.
        return;
    }
    let key = shared.new_key();
    {
        let mut swarm = shared.lock();
        swarm.add_peer(Instant::now(), key, addr.ip(), outbound);
        shared.drain_events(&mut swarm);
    }
    let _ = stream.set_nodelay(true);
    // Short timeouts both ways: a thread never sits in a write while its peer sits in one too.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(20)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut block = Vec::new();
    loop {
        if shared.stopping()
            || shared
                .closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key)
        {
            break;
        }
        {
            let mut swarm = shared.lock();
            // Uploads, only while little is waiting to be written.
            while pending.len() < 256 * 1024 {
                let Some(b) = swarm.poll_upload(key) else {
                    break;
                };
                block.resize(b.len as usize, 0);
                let offset = u64::from(b.piece) * shared.store.piece_len + u64::from(b.begin);
                if shared.store.file.read_exact_at(&mut block, offset).is_ok() {
                    swarm.send_block(Instant::now(), key, b, &block);
                }
            }
            swarm.poll_transmit(key, &mut pending);
        }
        while !pending.is_empty() {
            match stream.write(&pending) {
                Ok(0) => break,
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    shared.lock().handle_closed(Instant::now(), key);
                    connected(false);
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut swarm = shared.lock();
                swarm.handle_input(Instant::now(), key, &buf[..n]);
                shared.drain_events(&mut swarm);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    shared.lock().handle_closed(Instant::now(), key);
    connected(false);
}

/// The tracker: announces, dials the peers it lists, ticks the core's timers.
fn track(shared: &Arc<Shared>) {
    let plan = &shared.plan;
    let mut conn = HttpConnection::new(&plan.announce, HTTP_TIMEOUT);
    let mut next_announce = Instant::now();
    let mut interval = LEECH_ANNOUNCE;
    let mut event = Some("started");
    let mut told_complete = false;
    while !shared.stopping() {
        let now = Instant::now();
        {
            let mut swarm = shared.lock();
            swarm.handle_timeout(now);
            shared.drain_events(&mut swarm);
        }
        let complete = shared.is_complete();
        if complete && !told_complete {
            told_complete = true;
            event = Some("completed");
            next_announce = now;
        }
        if now >= next_announce {
            match announce(shared, &mut conn, event) {
                Ok((peers, tracker_interval)) => {
                    event = None;
                    (shared.note)(SwarmNote::Announced { peers: peers.len() });
                    if peers.is_empty() {
                        // Nobody to wait for: the web seed starts now.
                        shared.lock().end_web_seed_grace();
                    }
                    interval = if complete {
                        tracker_interval
                    } else {
                        tracker_interval.min(LEECH_ANNOUNCE)
                    };
                    dial(shared, &peers);
                }
                Err(err) => (shared.note)(SwarmNote::AnnounceFailed {
                    reason: format!("{err:#}"),
                }),
            }
            next_announce = now + interval;
        }
        thread::sleep(TICK);
    }
    let _ = announce(shared, &mut conn, Some("stopped"));
}

fn dial(shared: &Arc<Shared>, peers: &[SocketAddrV4]) {
    for &peer in peers {
        let addr = SocketAddr::V4(peer);
        let count = {
            let set = shared.connected.lock().unwrap_or_else(|e| e.into_inner());
            if set.contains(&addr) {
                continue;
            }
            set.len()
        };
        if count >= MAX_PEERS || shared.lock().is_banned(addr.ip()) {
            continue;
        }
        let s = Arc::clone(shared);
        thread::spawn(move || {
            if let Ok(stream) = TcpStream::connect_timeout(&addr, DIAL_TIMEOUT) {
                connection(&s, stream, addr, true);
            }
        });
    }
}

/// One announce; the peers listed and the tracker's interval.
fn announce(
    shared: &Shared,
    conn: &mut HttpConnection,
    event: Option<&str>,
) -> Result<(Vec<SocketAddrV4>, Duration)> {
    let plan = &shared.plan;
    let (downloaded, uploaded, left) = {
        let swarm = shared.lock();
        let s = swarm.stats();
        let left = if swarm.is_complete() {
            0
        } else {
            // Pieces are a chunk each; the last may be shorter, which only makes this high.
            (swarm.missing() as u64 * shared.store.piece_len).min(shared.size)
        };
        (
            s.bytes_from_peers + s.bytes_from_web_seed,
            s.bytes_uploaded,
            left,
        )
    };
    let bytes_param =
        |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("%{b:02X}")).collect() };
    let mut query = format!(
        "info_hash={}&peer_id={}&port={}&uploaded={uploaded}&downloaded={downloaded}&left={left}&compact=1&numwant=50",
        bytes_param(&plan.info_hash),
        encode_query_value(&String::from_utf8_lossy(&plan.peer_id)),
        plan.port,
    );
    if let Some(event) = event {
        query.push_str("&event=");
        query.push_str(event);
    }
    let url = HttpUrl {
        target: format!("{}?{query}", plan.announce.target),
        ..plan.announce.clone()
    };
    let body = conn.get_ok(&url, 64 * 1024)?;
    parse_announce_reply(&body)
}

/// A tracker's bencoded reply: compact peers (BEP 23) and `interval`, or its `failure reason`.
pub fn parse_announce_reply(body: &[u8]) -> Result<(Vec<SocketAddrV4>, Duration)> {
    let reply = Value::decode(body).map_err(|e| anyhow::anyhow!("tracker reply: {e:?}"))?;
    if let Some(reason) = reply.get("failure reason").and_then(Value::as_bytes) {
        bail!("tracker: {}", String::from_utf8_lossy(reason));
    }
    let interval = reply
        .get("interval")
        .and_then(Value::as_int)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    let compact = reply
        .get("peers")
        .and_then(Value::as_bytes)
        .context("tracker reply without compact peers")?;
    let peers = compact
        .chunks_exact(6)
        .map(|p| {
            SocketAddrV4::new(
                Ipv4Addr::new(p[0], p[1], p[2], p[3]),
                u16::from_be_bytes([p[4], p[5]]),
            )
        })
        .collect();
    Ok((peers, interval))
}

/// A web seed worker: fetches the pieces the core gives it by `Range` on the image, runs of
/// consecutive ones ([`WEB_SEED_RUN`]) in one request, as the plain HTTP path does.
fn web_seed(shared: &Arc<Shared>) {
    let Some(image) = shared.plan.web_seed.clone() else {
        return;
    };
    let mut conn = HttpConnection::new(&image, HTTP_TIMEOUT);
    while !shared.stopping() && !shared.is_complete() {
        let mut run: Vec<u32> = Vec::new();
        {
            let mut swarm = shared.lock();
            while run.len() < WEB_SEED_RUN {
                let Some(piece) = swarm.claim_web_piece(Instant::now()) else {
                    break;
                };
                if run.last().is_some_and(|last| piece != last + 1) {
                    swarm.release_web_piece(piece);
                    break;
                }
                run.push(piece);
            }
        }
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else {
            thread::sleep(TICK);
            continue;
        };
        let piece_len = shared.store.piece_len;
        let offset = u64::from(first) * piece_len;
        let end = (u64::from(last) + 1)
            .saturating_mul(piece_len)
            .min(shared.size);
        let len = end - offset;
        let fetched = conn
            .get_range(&image, offset, end - 1, len as usize)
            .map_err(|e| e.to_string())
            .and_then(|r| match (r.status, r.content_range) {
                (206, Some((a, b, _))) if a == offset && b == end - 1 => Ok(r.body),
                (200, _) if offset == 0 && len == shared.size => Ok(r.body),
                (status, range) => Err(format!("HTTP {status} {range:?}")),
            })
            .and_then(|body| {
                if body.len() as u64 == len {
                    Ok(body)
                } else {
                    Err(format!("{} bytes, not {len}", body.len()))
                }
            });
        let mut swarm = shared.lock();
        match fetched {
            Ok(body) => {
                // Each piece written before the next is copied out: a run costs its body and
                // one piece, as the HTTP path's runs do.
                for (piece, bytes) in run.iter().zip(body.chunks(piece_len as usize)) {
                    swarm.handle_web_piece(Instant::now(), *piece, bytes.to_vec());
                    shared.drain_events(&mut swarm);
                }
            }
            Err(reason) => {
                for piece in &run {
                    swarm.release_web_piece(*piece);
                }
                (shared.note)(SwarmNote::WebSeedFailed {
                    piece: first,
                    reason,
                });
                drop(swarm);
                thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        shared.drain_events(&mut swarm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_replies_give_peers_and_interval_or_the_failure() {
        let reply = Value::dict([
            ("interval", Value::Int(30)),
            ("peers", Value::Bytes(vec![198, 18, 0, 5, 0x1a, 0xe1])),
        ])
        .to_bytes();
        let (peers, interval) = parse_announce_reply(&reply).expect("reply");
        assert_eq!(peers, vec!["198.18.0.5:6881".parse().unwrap()]);
        assert_eq!(interval, Duration::from_secs(30));
        let refused = Value::dict([("failure reason", Value::text("no lease"))]).to_bytes();
        assert!(format!("{:#}", parse_announce_reply(&refused).unwrap_err()).contains("no lease"));
        assert!(parse_announce_reply(b"garbage").is_err());
    }

    #[test]
    fn peer_ids_are_azureus_style() {
        let id = peer_id(1234);
        assert_eq!(&id[..8], b"-SN0001-");
        assert!(id[8..].iter().all(u8::is_ascii_digit));
        assert_ne!(peer_id(1), peer_id(2));
    }
}
