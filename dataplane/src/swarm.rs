//! The appliance's side of a root's swarm, answered by the HTTP workers: the BitTorrent
//! tracker (the sans-IO [`Tracker`] core) at `/stampede/swarm/announce`, and each root's
//! torrent at `/roots/<id>/image.torrent`, with this appliance's tracker as `announce` and the
//! root's image (`/roots/<id>/image`, served with Range by the same workers) as its BEP 19 web
//! seed.
//!
//! A root build stores its torrent without endpoints as `roots/<id>/torrent` under
//! `boot.roots_dir` (its `info` is derived from the signed manifest, which names its hashes);
//! [`SwarmRoute`] reads those files, tracks exactly their info hashes (v1, and v2 truncated as
//! v2 clients announce it) and adds the endpoints when serving. Roots built while the appliance
//! runs (imports) are found by a new scan when an unknown hash or root is asked for, at most
//! every [`RESCAN_INTERVAL`].
//!
//! Announces are rare next to chunk requests (one per machine per tracker interval), so one
//! mutex around the tracker, shared by the workers, is not on any hot path.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stampede_proto::bencode::Value;
use stampede_proto::bootpath::BootPath;
use stampede_proto::dhcp::{
    ClientKey, CommitSeq, Lease, LeaseChange, LeaseState, LeaseStore, LeaseStoreError,
};
use stampede_proto::files::{BootFile, OpenError};
use stampede_proto::http::Route;
use stampede_proto::tracker::{Announce, InfoHash, Tracker, TrackerConfig, TrackerStats};
use stampede_rootfs::torrent;

/// Where clients announce (BEP 3 convention: the path ends in `announce`).
pub const ANNOUNCE_PATH: &str = "stampede/swarm/announce";

/// A root's torrent as its build stores it, without endpoints: `roots/<id>/torrent`.
pub const STORED_TORRENT: &str = "torrent";

/// A root's torrent as served, with endpoints: `roots/<id>/image.torrent`.
pub const SERVED_TORRENT: &str = "image.torrent";

/// The same torrent without its v2 keys, for v1-only clients ([`torrent::v1_only`]):
/// `roots/<id>/image.v1.torrent`.
pub const SERVED_V1_TORRENT: &str = "image.v1.torrent";

/// Scans of `boot.roots_dir` for new roots happen at most this often: a burst of announces for
/// a hash that is not ours costs one directory listing, not one per request.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Decides whether a client may join a swarm (issue 17: only machines holding a lease from
/// this appliance get peers).
pub type Admission = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

#[derive(Debug)]
struct SwarmState {
    tracker: Tracker,
    /// Stored torrents by root id.
    torrents: HashMap<String, Value>,
    scanned: Option<Instant>,
}

/// The swarm's [`Route`], asked before `inner` (the boot plan's scripts).
pub struct SwarmRoute {
    inner: Option<Arc<dyn Route + Send + Sync>>,
    /// `boot.roots_dir`: roots under `roots/<id>/`.
    roots_dir: Option<PathBuf>,
    /// `http://<address>:<port>`, what clients reach the HTTP workers at.
    base_url: String,
    admission: Option<Admission>,
    state: Mutex<SwarmState>,
}

impl std::fmt::Debug for SwarmRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmRoute")
            .field("roots_dir", &self.roots_dir)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl SwarmRoute {
    /// Tracks the roots found under `roots_dir` now and later; everything else goes to `inner`.
    pub fn new(
        inner: Option<Arc<dyn Route + Send + Sync>>,
        roots_dir: Option<PathBuf>,
        base_url: String,
        config: TrackerConfig,
    ) -> Self {
        let route = Self {
            inner,
            roots_dir,
            base_url,
            admission: None,
            state: Mutex::new(SwarmState {
                tracker: Tracker::new(config),
                torrents: HashMap::new(),
                scanned: None,
            }),
        };
        route.rescan(&mut route.lock(), Instant::now());
        route
    }

    /// Gives peers only to clients `admission` accepts (by default every client).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// The announce URL clients are given.
    pub fn announce_url(&self) -> String {
        format!("{}/{ANNOUNCE_PATH}", self.base_url)
    }

    /// The tracker's counters.
    pub fn stats(&self) -> TrackerStats {
        self.lock().tracker.stats().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SwarmState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads every stored torrent not read yet and tracks its hashes.
    fn rescan(&self, state: &mut SwarmState, now: Instant) {
        if state
            .scanned
            .is_some_and(|at| now.saturating_duration_since(at) < RESCAN_INTERVAL)
        {
            return;
        }
        state.scanned = Some(now);
        let Some(dir) = &self.roots_dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir.join("roots")) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if state.torrents.contains_key(&id) {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path().join(STORED_TORRENT)) else {
                continue;
            };
            let parsed = Value::decode(&bytes).ok().and_then(|t| {
                let (v1, v2) = torrent::announced_hashes(&t)?;
                let (legacy, _) = torrent::announced_hashes(&torrent::v1_only(&t)?)?;
                Some((t, [v1, v2, legacy]))
            });
            let Some((stored, hashes)) = parsed else {
                tracing::warn!(root = %id, "a root's stored torrent does not parse: not tracked");
                continue;
            };
            for hash in hashes {
                state.tracker.track(InfoHash(hash));
            }
            tracing::info!(
                root = %id,
                info_hash_v1 = %hex::encode(hashes[0]),
                info_hash_v2 = %hex::encode(hashes[1]),
                v1_only_info_hash = %hex::encode(hashes[2]),
                "tracking a root's swarm"
            );
            state.torrents.insert(id, stored);
        }
    }

    fn announce(&self, client: SocketAddr, query: &str) -> BootFile {
        let now = Instant::now();
        let ip = client.ip().to_canonical();
        let leased = self.admission.as_ref().is_none_or(|admit| admit(ip));
        let mut state = self.lock();
        if let Ok(a) = Announce::parse_query(query)
            && !state.tracker.tracks(&a.info_hash)
        {
            self.rescan(&mut state, now);
        }
        let reply = state.tracker.handle_announce(now, ip, leased, query);
        drop(state);
        let mut body = Vec::new();
        reply.emit(&mut body);
        BootFile::new(body)
    }

    fn torrent(&self, id: &str, v1_only: bool) -> Result<BootFile, OpenError> {
        let mut state = self.lock();
        if !state.torrents.contains_key(id) {
            self.rescan(&mut state, Instant::now());
        }
        let stored = state.torrents.get(id).ok_or(OpenError::NotFound)?;
        let legacy;
        let stored = if v1_only {
            legacy = torrent::v1_only(stored).ok_or(OpenError::NotFound)?;
            &legacy
        } else {
            stored
        };
        let web_seed = format!("{}/roots/{id}/image", self.base_url);
        torrent::with_endpoints(stored, &self.announce_url(), &web_seed)
            .map(BootFile::new)
            .ok_or_else(|| OpenError::Unreadable("the stored torrent is not a dictionary".into()))
    }
}

impl Route for SwarmRoute {
    fn route(&self, path: &BootPath, query: Option<&str>) -> Option<Result<BootFile, OpenError>> {
        // Without the client's address there is no peer to list: only the torrents answer.
        if path.as_str() == ANNOUNCE_PATH {
            return Some(Err(OpenError::NotFound));
        }
        self.route_from(SocketAddr::from(([0, 0, 0, 0], 0)), path, query)
    }

    fn route_from(
        &self,
        client: SocketAddr,
        path: &BootPath,
        query: Option<&str>,
    ) -> Option<Result<BootFile, OpenError>> {
        if path.as_str() == ANNOUNCE_PATH {
            return Some(Ok(self.announce(client, query.unwrap_or(""))));
        }
        if let Some(rest) = path.as_str().strip_prefix("roots/") {
            for (name, v1_only) in [(SERVED_TORRENT, false), (SERVED_V1_TORRENT, true)] {
                if let Some(id) = rest.strip_suffix(name).and_then(|r| r.strip_suffix('/'))
                    && !id.contains('/')
                {
                    return Some(self.torrent(id, v1_only));
                }
            }
        }
        self.inner
            .as_ref()
            .and_then(|inner| inner.route_from(client, path, query))
    }
}

/// Who holds a bound lease from this appliance now: a read-only view the HTTP workers can ask
/// while the lease store itself belongs to the DHCP worker ([`LeaseMirror`] keeps it current).
#[derive(Debug, Clone, Default)]
pub struct BoundLeases(Arc<std::sync::RwLock<HashMap<Ipv4Addr, Instant>>>);

impl BoundLeases {
    /// A view of `leases` as they are now.
    pub fn of<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> Self {
        let view = Self::default();
        for lease in leases {
            view.set(lease.ip, Some(lease));
        }
        view
    }

    /// Whether `ip` holds a bound lease that has not expired at `now`.
    pub fn holds(&self, ip: IpAddr, now: Instant) -> bool {
        let IpAddr::V4(ip) = ip.to_canonical() else {
            return false;
        };
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&ip).is_some_and(|expires| *expires > now)
    }

    /// Tells the tracker to give peers only to holders of a bound lease.
    pub fn admission(&self) -> Admission {
        let view = self.clone();
        Arc::new(move |ip| view.holds(ip, Instant::now()))
    }

    fn set(&self, ip: Ipv4Addr, lease: Option<&Lease>) {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match lease.filter(|l| l.state == LeaseState::Bound) {
            Some(l) => map.insert(ip, l.expires),
            None => map.remove(&ip),
        };
    }
}

/// A [`LeaseStore`] that keeps a [`BoundLeases`] view in step with the store it wraps: after
/// each change it copies the state of every address the change touched (the address itself,
/// and the client's previous one, which a `Put` for a moving client releases).
#[derive(Debug)]
pub struct LeaseMirror<S> {
    inner: S,
    view: BoundLeases,
}

impl<S: LeaseStore> LeaseMirror<S> {
    pub fn new(inner: S, view: BoundLeases) -> Self {
        Self { inner, view }
    }
}

impl<S: LeaseStore> LeaseStore for LeaseMirror<S> {
    fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.inner.by_ip(ip)
    }

    fn by_client(&self, client: &ClientKey) -> Option<Lease> {
        self.inner.by_client(client)
    }

    fn apply(&mut self, change: LeaseChange) -> Result<CommitSeq, LeaseStoreError> {
        let touched: Vec<Ipv4Addr> = match &change {
            LeaseChange::Put(lease) => std::iter::once(lease.ip)
                .chain(
                    (!lease.client.0.is_empty())
                        .then(|| self.inner.by_client(&lease.client))
                        .flatten()
                        .map(|old| old.ip),
                )
                .collect(),
            LeaseChange::Remove(ip) => vec![*ip],
        };
        let seq = self.inner.apply(change)?;
        for ip in touched {
            self.view.set(ip, self.inner.by_ip(ip).as_ref());
        }
        Ok(seq)
    }

    fn durable_seq(&self) -> CommitSeq {
        self.inner.durable_seq()
    }
}

#[cfg(test)]
mod tests {
    use stampede_rootfs::torrent::PieceHashes;

    use super::*;

    fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("%{b:02x}")).collect()
    }

    fn path(p: &str) -> BootPath {
        BootPath::parse(p.as_bytes()).expect("path")
    }

    /// A roots directory with one root's stored torrent.
    fn roots_dir(id: &str) -> (tempfile::TempDir, Value) {
        let dir = tempfile::tempdir().expect("tempdir");
        let image: Vec<u8> = (0..(3 << 20) + 11).map(|i| (i % 251) as u8).collect();
        let (stored, _) = torrent::torrent("x.erofs", &PieceHashes::of_image(&image, 1 << 20));
        let root = dir.path().join("roots").join(id);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(STORED_TORRENT), stored.to_bytes()).unwrap();
        (dir, stored)
    }

    fn body(answer: Option<Result<BootFile, OpenError>>) -> Value {
        let file = answer.expect("answered").expect("a file");
        Value::decode(&file.data).expect("bencode")
    }

    #[test]
    fn serves_torrents_with_endpoints_and_tracks_their_hashes() {
        let (dir, stored) = roots_dir("abc");
        let route = SwarmRoute::new(
            None,
            Some(dir.path().to_path_buf()),
            "http://198.18.0.1:8080".into(),
            TrackerConfig::default(),
        );
        let client: SocketAddr = "198.18.0.9:40000".parse().unwrap();
        let t = body(route.route_from(client, &path("roots/abc/image.torrent"), None));
        assert_eq!(
            t.get("announce").and_then(Value::as_bytes),
            Some(&b"http://198.18.0.1:8080/stampede/swarm/announce"[..])
        );
        assert_eq!(
            t.get("url-list"),
            Some(&Value::List(vec![Value::text(
                "http://198.18.0.1:8080/roots/abc/image"
            )]))
        );
        assert_eq!(t.get("info"), stored.get("info"));
        assert!(matches!(
            route.route_from(client, &path("roots/nope/image.torrent"), None),
            Some(Err(OpenError::NotFound))
        ));
        assert!(
            route
                .route_from(client, &path("roots/abc/manifest"), None)
                .is_none()
        );

        let legacy = body(route.route_from(client, &path("roots/abc/image.v1.torrent"), None));
        assert!(legacy.get("info").unwrap().get("file tree").is_none());
        assert_eq!(legacy.get("announce"), t.get("announce"));
        let (v1, v2) = torrent::announced_hashes(&stored).unwrap();
        let (legacy, _) = torrent::announced_hashes(&legacy).unwrap();
        for hash in [v1, v2, legacy] {
            let q = format!(
                "info_hash={}&peer_id={}&port=6881&left=0",
                encode(&hash),
                encode(&[7; 20])
            );
            let reply = body(route.route_from(client, &path(ANNOUNCE_PATH), Some(&q)));
            assert_eq!(
                reply.get("complete").and_then(Value::as_int),
                Some(1),
                "{reply:?}"
            );
        }
        let q = format!(
            "info_hash={}&peer_id={}&port=6881",
            encode(&[1; 20]),
            encode(&[7; 20])
        );
        let reply = body(route.route_from(client, &path(ANNOUNCE_PATH), Some(&q)));
        assert!(reply.get("failure reason").is_some(), "{reply:?}");
        assert_eq!(route.stats().refused.get("unknown_torrent"), Some(&1));
    }

    #[test]
    fn clients_without_admission_get_no_peers() {
        let (dir, stored) = roots_dir("abc");
        let route = SwarmRoute::new(
            None,
            Some(dir.path().to_path_buf()),
            "http://198.18.0.1:8080".into(),
            TrackerConfig::default(),
        )
        .with_admission(Arc::new(|ip| ip == IpAddr::from([198, 18, 0, 9])));
        let (v1, _) = torrent::announced_hashes(&stored).unwrap();
        let q = format!(
            "info_hash={}&peer_id={}&port=6881",
            encode(&v1),
            encode(&[7; 20])
        );
        let other: SocketAddr = "198.18.0.10:1".parse().unwrap();
        let reply = body(route.route_from(other, &path(ANNOUNCE_PATH), Some(&q)));
        assert!(reply.get("failure reason").is_some(), "{reply:?}");
        let admitted: SocketAddr = "198.18.0.9:1".parse().unwrap();
        let reply = body(route.route_from(admitted, &path(ANNOUNCE_PATH), Some(&q)));
        assert!(reply.get("peers").is_some(), "{reply:?}");
    }

    #[test]
    fn the_mirror_follows_bound_leases_through_moves_and_removals() {
        use stampede_proto::dhcp::MemoryLeaseStore;
        let now = Instant::now();
        let view = BoundLeases::default();
        let mut store = LeaseMirror::new(MemoryLeaseStore::new(), view.clone());
        let lease = |ip: [u8; 4], state| Lease {
            ip: Ipv4Addr::from(ip),
            client: ClientKey(vec![1, 2, 3]),
            mac: [2, 0, 0, 0, 0, 1],
            state,
            expires: now + Duration::from_secs(60),
        };
        let a = IpAddr::from([198, 18, 0, 20]);
        let b = IpAddr::from([198, 18, 0, 21]);
        store
            .apply(LeaseChange::Put(lease(
                [198, 18, 0, 20],
                LeaseState::Offered,
            )))
            .unwrap();
        assert!(!view.holds(a, now), "an offer is no lease");
        store
            .apply(LeaseChange::Put(lease([198, 18, 0, 20], LeaseState::Bound)))
            .unwrap();
        assert!(view.holds(a, now));
        assert!(!view.holds(a, now + Duration::from_secs(61)), "expired");
        // The same client moves: its old address is released.
        store
            .apply(LeaseChange::Put(lease([198, 18, 0, 21], LeaseState::Bound)))
            .unwrap();
        assert!(!view.holds(a, now) && view.holds(b, now));
        store
            .apply(LeaseChange::Remove(Ipv4Addr::from([198, 18, 0, 21])))
            .unwrap();
        assert!(!view.holds(b, now));
        let loaded = BoundLeases::of(&[lease([198, 18, 0, 22], LeaseState::Bound)]);
        assert!(loaded.holds(IpAddr::from([198, 18, 0, 22]), now));
    }
}
