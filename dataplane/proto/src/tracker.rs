//! The appliance's BitTorrent tracker (BEP 3 HTTP announce, BEP 23 compact peer lists), sans-IO.
//!
//! The driver parses nothing but the HTTP request: it hands the query string and the address
//! the request came from to [`Tracker::handle_announce`]`(now, client, query)` and writes the
//! [`AnnounceReply`] it gets back ([`AnnounceReply::emit`], bencoded) as the response body.
//! There is no socket and no clock here: peers expire when an announce on their swarm finds
//! them older than [`TrackerConfig::peer_timeout`] at the `now` it is given, or when the driver
//! calls [`Tracker::expire`].
//!
//! Policy (each a choice the BEPs leave to the tracker):
//! - Only registered info hashes are tracked ([`Tracker::track`]): the appliance's own roots.
//!   Anything else gets a bencoded `failure reason` (BEP 3), counted as `unknown_torrent`.
//! - A peer's address is the one its request came from; the `ip` parameter is ignored, so no
//!   peer can point the swarm at a third host.
//! - Peer lists are always compact (BEP 23), IPv4 only; peers announcing over IPv6 are kept out
//!   of lists (the boot network is IPv4).
//! - A seed (`left=0`) is given only peers still downloading; a leecher gets seeds and leechers.
//!   Each list starts where the swarm's previous list stopped, so announcers see different
//!   peers rather than all the same first `numwant`.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::bencode::Value;
use crate::http::percent_decode;

/// A v1 info hash (SHA-1 of the `info` dictionary), or a v2 one truncated to 20 bytes as v2
/// clients announce it (BEP 52, "tracker protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

/// The 20 bytes a client names itself with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

/// BEP 3 `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// A regular re-announce (no `event`, or `event=empty`).
    None,
    Started,
    Completed,
    Stopped,
}

/// One announce's parameters, from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: AnnounceEvent,
    pub numwant: Option<u32>,
}

/// Why an announce got a `failure reason` instead of peers; each is a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnnounceRefusal {
    /// `info_hash`, `peer_id` or `port` missing or malformed, or a number that is not one.
    BadRequest,
    /// Not one of this appliance's roots.
    UnknownTorrent,
    /// The client holds no lease from this appliance (the driver's judgement).
    NoLease,
}

impl AnnounceRefusal {
    /// Stable short name, a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownTorrent => "unknown_torrent",
            Self::NoLease => "no_lease",
        }
    }

    /// The `failure reason` a client shows its user.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "malformed announce: info_hash, peer_id and port are required",
            Self::UnknownTorrent => "unknown info_hash: this tracker serves only its own roots",
            Self::NoLease => "no lease from this appliance: peers are for its machines only",
        }
    }
}

impl Announce {
    /// Parses an announce query (percent-encoded, without `?`). Unknown keys are ignored.
    pub fn parse_query(query: &str) -> Result<Self, AnnounceRefusal> {
        let bad = AnnounceRefusal::BadRequest;
        let (mut info_hash, mut peer_id, mut port) = (None, None, None);
        let (mut uploaded, mut downloaded, mut left) = (0, 0, 0);
        let mut event = AnnounceEvent::None;
        let mut numwant = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw.as_bytes()).ok_or(bad)?;
            let number = |v: &[u8]| -> Result<u64, AnnounceRefusal> {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(bad)
            };
            match key {
                "info_hash" => info_hash = Some(InfoHash(value.try_into().map_err(|_| bad)?)),
                "peer_id" => peer_id = Some(PeerId(value.try_into().map_err(|_| bad)?)),
                "port" => port = Some(u16::try_from(number(&value)?).map_err(|_| bad)?),
                "uploaded" => uploaded = number(&value)?,
                "downloaded" => downloaded = number(&value)?,
                "left" => left = number(&value)?,
                "numwant" => numwant = Some(u32::try_from(number(&value)?).unwrap_or(u32::MAX)),
                "event" => {
                    event = match value.as_slice() {
                        b"started" => AnnounceEvent::Started,
                        b"completed" => AnnounceEvent::Completed,
                        b"stopped" => AnnounceEvent::Stopped,
                        _ => AnnounceEvent::None,
                    }
                }
                _ => {}
            }
        }
        let port = port.filter(|p| *p != 0).ok_or(bad)?;
        Ok(Self {
            info_hash: info_hash.ok_or(bad)?,
            peer_id: peer_id.ok_or(bad)?,
            port,
            uploaded,
            downloaded,
            left,
            event,
            numwant,
        })
    }
}

/// Tracker tuning; every default says what it is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// BEP 3 `interval`: how often a client re-announces. 30 s, because a boot storm lasts
    /// minutes: a machine learns of peers that joined after it within one interval.
    pub interval: Duration,
    /// `min interval`: clients should not announce more often than this (10 s).
    pub min_interval: Duration,
    /// A peer not heard from for this long is dropped: three intervals, so one or two lost
    /// announces do not take a live peer out of the swarm.
    pub peer_timeout: Duration,
    /// Peers listed when the client does not say `numwant`: 50, the customary BEP 3 default.
    pub default_numwant: u32,
    /// Most peers listed in one reply, whatever `numwant` asks: 200 (1,200 bytes compact).
    pub max_numwant: u32,
    /// Most peers kept per swarm: past this, new peers are told of the swarm but not added.
    /// 16,384 covers the largest rack storms this appliance is built for, at ~64 B a peer.
    pub max_peers_per_swarm: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(90),
            default_numwant: 50,
            max_numwant: 200,
            max_peers_per_swarm: 16_384,
        }
    }
}

/// What the tracker answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceReply {
    Peers {
        interval: Duration,
        min_interval: Duration,
        /// Seeds in the swarm, the announcer included (BEP 48 `complete`).
        complete: u32,
        /// Peers still downloading, the announcer included.
        incomplete: u32,
        peers: Vec<SocketAddrV4>,
    },
    Refused(AnnounceRefusal),
}

impl AnnounceReply {
    /// The bencoded response body.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let value = match self {
            Self::Refused(why) => Value::dict([("failure reason", Value::text(why.reason()))]),
            Self::Peers {
                interval,
                min_interval,
                complete,
                incomplete,
                peers,
            } => {
                // BEP 23: 4 bytes of address and 2 of port, network order, per peer.
                let mut compact = Vec::with_capacity(peers.len() * 6);
                for peer in peers {
                    compact.extend_from_slice(&peer.ip().octets());
                    compact.extend_from_slice(&peer.port().to_be_bytes());
                }
                Value::dict([
                    ("complete", Value::Int(i64::from(*complete))),
                    ("incomplete", Value::Int(i64::from(*incomplete))),
                    ("interval", Value::Int(interval.as_secs() as i64)),
                    ("min interval", Value::Int(min_interval.as_secs() as i64)),
                    ("peers", Value::Bytes(compact)),
                ])
            }
        };
        value.encode(out);
    }
}

/// Counters; every refusal has its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Announces answered with peers.
    pub announces: u64,
    /// `event=completed` announces: machines that have the whole root.
    pub completed: u64,
    /// Refused announces by [`AnnounceRefusal::as_str`].
    pub refused: HashMap<&'static str, u64>,
    /// Peers dropped for not announcing within [`TrackerConfig::peer_timeout`].
    pub expired: u64,
}

#[derive(Debug, Clone)]
struct PeerEntry {
    /// `None`: announced over IPv6, kept for counts but never listed.
    addr: Option<SocketAddrV4>,
    left: u64,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Swarm {
    peers: HashMap<PeerId, PeerEntry>,
    /// Where the next peer list starts (see the module docs).
    cursor: usize,
}

/// Swarms of the appliance's roots, keyed by info hash.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    swarms: HashMap<InfoHash, Swarm>,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            swarms: HashMap::new(),
            stats: TrackerStats::default(),
        }
    }

    /// Tracks `info_hash` from now on (no effect if it already is).
    pub fn track(&mut self, info_hash: InfoHash) {
        self.swarms.entry(info_hash).or_default();
    }

    /// Whether `info_hash` is tracked.
    pub fn tracks(&self, info_hash: &InfoHash) -> bool {
        self.swarms.contains_key(info_hash)
    }

    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Peers in the swarm of `info_hash` (`None`: not tracked).
    pub fn peers(&self, info_hash: &InfoHash) -> Option<usize> {
        self.swarms.get(info_hash).map(|s| s.peers.len())
    }

    /// Answers one announce. `client` is the address the request came from; `leased` is the
    /// driver's word on whether that address holds a lease from this appliance (`false`
    /// refuses the announce).
    pub fn handle_announce(
        &mut self,
        now: Instant,
        client: IpAddr,
        leased: bool,
        query: &str,
    ) -> AnnounceReply {
        let reply = self.announce(now, client, leased, query);
        match &reply {
            AnnounceReply::Refused(why) => {
                *self.stats.refused.entry(why.as_str()).or_default() += 1
            }
            AnnounceReply::Peers { .. } => self.stats.announces += 1,
        }
        reply
    }

    fn announce(
        &mut self,
        now: Instant,
        client: IpAddr,
        leased: bool,
        query: &str,
    ) -> AnnounceReply {
        let announce = match Announce::parse_query(query) {
            Ok(a) => a,
            Err(why) => return AnnounceReply::Refused(why),
        };
        if !leased {
            return AnnounceReply::Refused(AnnounceRefusal::NoLease);
        }
        let config = self.config;
        let Some(swarm) = self.swarms.get_mut(&announce.info_hash) else {
            return AnnounceReply::Refused(AnnounceRefusal::UnknownTorrent);
        };
        self.stats.expired += expire_swarm(swarm, now, config.peer_timeout);
        let addr = match client {
            IpAddr::V4(ip) => Some(SocketAddrV4::new(ip, announce.port)),
            IpAddr::V6(_) => None,
        };
        match announce.event {
            AnnounceEvent::Stopped => {
                swarm.peers.remove(&announce.peer_id);
            }
            event => {
                if event == AnnounceEvent::Completed {
                    self.stats.completed += 1;
                }
                let room = swarm.peers.len() < config.max_peers_per_swarm;
                if let Some(peer) = swarm.peers.get_mut(&announce.peer_id) {
                    peer.addr = addr;
                    peer.left = announce.left;
                    peer.last_seen = now;
                } else if room {
                    swarm.peers.insert(
                        announce.peer_id,
                        PeerEntry {
                            addr,
                            left: announce.left,
                            last_seen: now,
                        },
                    );
                }
            }
        }
        let complete = swarm.peers.values().filter(|p| p.left == 0).count() as u32;
        let incomplete = swarm.peers.len() as u32 - complete;
        let want = announce
            .numwant
            .unwrap_or(config.default_numwant)
            .min(config.max_numwant) as usize;
        let peers = if announce.event == AnnounceEvent::Stopped {
            Vec::new()
        } else {
            pick_peers(swarm, &announce, want)
        };
        AnnounceReply::Peers {
            interval: config.interval,
            min_interval: config.min_interval,
            complete,
            incomplete,
            peers,
        }
    }

    /// Drops every peer not heard from within [`TrackerConfig::peer_timeout`] before `now`.
    pub fn expire(&mut self, now: Instant) {
        for swarm in self.swarms.values_mut() {
            self.stats.expired += expire_swarm(swarm, now, self.config.peer_timeout);
        }
    }
}

fn expire_swarm(swarm: &mut Swarm, now: Instant, timeout: Duration) -> u64 {
    let before = swarm.peers.len();
    swarm
        .peers
        .retain(|_, p| now.saturating_duration_since(p.last_seen) < timeout);
    (before - swarm.peers.len()) as u64
}

/// Up to `want` listable peers other than the announcer, starting at the swarm's cursor.
fn pick_peers(swarm: &mut Swarm, announce: &Announce, want: usize) -> Vec<SocketAddrV4> {
    let seed = announce.left == 0;
    let candidates: Vec<SocketAddrV4> = swarm
        .peers
        .iter()
        .filter(|(id, p)| **id != announce.peer_id && !(seed && p.left == 0))
        .filter_map(|(_, p)| p.addr)
        .collect();
    if candidates.is_empty() || want == 0 {
        return Vec::new();
    }
    let start = swarm.cursor % candidates.len();
    let taken: Vec<SocketAddrV4> = candidates
        .iter()
        .cycle()
        .skip(start)
        .take(want.min(candidates.len()))
        .copied()
        .collect();
    swarm.cursor = start + taken.len();
    taken
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const HASH: InfoHash = InfoHash([0xab; 20]);

    fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("%{b:02X}")).collect()
    }

    fn query(peer: u8, port: u16, left: u64, event: &str) -> String {
        format!(
            "info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}\
             &compact=1{event}",
            encode(&HASH.0),
            encode(&[peer; 20])
        )
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
    }

    fn peers_of(reply: &AnnounceReply) -> Vec<SocketAddrV4> {
        match reply {
            AnnounceReply::Peers { peers, .. } => peers.clone(),
            AnnounceReply::Refused(why) => panic!("refused: {why:?}"),
        }
    }

    fn tracker() -> Tracker {
        let mut t = Tracker::new(TrackerConfig::default());
        t.track(HASH);
        t
    }

    #[test]
    fn aria2c_announce_parses() {
        // What aria2c 1.36 sends (its peer id prefix, `key`, `supportcrypto`, `no_peer_id`).
        let q = format!(
            "info_hash={}&peer_id=A2-1-36-0-%01%02%03%04%05%06%07%08%09%0A&uploaded=0\
             &downloaded=0&left=4194304&compact=1&key=abcd&event=started&numwant=50&no_peer_id=1\
             &port=6881&supportcrypto=1",
            encode(&HASH.0)
        );
        let a = Announce::parse_query(&q).expect("parses");
        assert_eq!(a.info_hash, HASH);
        assert_eq!(&a.peer_id.0[..9], b"A2-1-36-0");
        assert_eq!((a.port, a.left, a.numwant), (6881, 4_194_304, Some(50)));
        assert_eq!(a.event, AnnounceEvent::Started);
    }

    #[test]
    fn malformed_announces_are_refused() {
        for q in [
            String::new(),
            format!("info_hash={}&port=1", encode(&HASH.0)),
            format!("info_hash=%AB&peer_id={}&port=1", encode(&[1; 20])),
            format!(
                "info_hash={}&peer_id={}&port=0",
                encode(&HASH.0),
                encode(&[1; 20])
            ),
            format!(
                "info_hash={}&peer_id={}&port=70000",
                encode(&HASH.0),
                encode(&[1; 20])
            ),
            query(1, 1, 0, "&left=x"),
            query(1, 1, 0, "&info_hash=%G1"),
        ] {
            assert_eq!(
                Announce::parse_query(&q),
                Err(AnnounceRefusal::BadRequest),
                "{q}"
            );
        }
    }

    #[test]
    fn peers_meet_in_their_swarm_and_never_see_themselves() {
        let mut t = tracker();
        let now = Instant::now();
        let first = t.handle_announce(now, ip(10), true, &query(1, 6881, 100, "&event=started"));
        assert_eq!(peers_of(&first), vec![]);
        let second = t.handle_announce(now, ip(11), true, &query(2, 6882, 100, "&event=started"));
        assert_eq!(
            peers_of(&second),
            vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 6881)]
        );
        let again = t.handle_announce(now, ip(10), true, &query(1, 6881, 50, ""));
        assert_eq!(
            peers_of(&again),
            vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 6882)]
        );
        assert_eq!(t.peers(&HASH), Some(2));
        assert_eq!(t.stats().announces, 3);
    }

    #[test]
    fn the_reply_is_bep23_compact_bencode() {
        let mut t = tracker();
        let now = Instant::now();
        t.handle_announce(now, ip(10), true, &query(1, 0x1ae1, 0, "&event=completed"));
        let reply = t.handle_announce(now, ip(11), true, &query(2, 6882, 9, ""));
        let mut out = Vec::new();
        reply.emit(&mut out);
        assert_eq!(
            out,
            b"d8:completei1e10:incompletei1e8:intervali30e12:min intervali10e\
              5:peers6:\xc6\x12\x00\x0a\x1a\xe1e"
        );
        assert_eq!(t.stats().completed, 1);
    }

    #[test]
    fn seeds_get_only_leechers() {
        let mut t = tracker();
        let now = Instant::now();
        t.handle_announce(now, ip(10), true, &query(1, 1000, 0, ""));
        t.handle_announce(now, ip(11), true, &query(2, 1001, 5, ""));
        let seed = t.handle_announce(now, ip(12), true, &query(3, 1002, 0, ""));
        assert_eq!(
            peers_of(&seed),
            vec![SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 1001)]
        );
    }

    #[test]
    fn unknown_hashes_missing_leases_and_garbage_get_a_failure_reason() {
        let mut t = tracker();
        let now = Instant::now();
        let other = query(1, 1, 1, "").replace(&encode(&HASH.0), &encode(&[0xcd; 20]));
        let reply = t.handle_announce(now, ip(10), true, &other);
        assert_eq!(
            reply,
            AnnounceReply::Refused(AnnounceRefusal::UnknownTorrent)
        );
        let mut out = Vec::new();
        reply.emit(&mut out);
        let decoded = Value::decode(&out).expect("bencode");
        assert_eq!(
            decoded.get("failure reason").and_then(Value::as_bytes),
            Some(AnnounceRefusal::UnknownTorrent.reason().as_bytes())
        );
        assert_eq!(
            t.handle_announce(now, ip(10), false, &query(1, 1, 1, "")),
            AnnounceReply::Refused(AnnounceRefusal::NoLease)
        );
        assert_eq!(
            t.handle_announce(now, ip(10), true, "port=1"),
            AnnounceReply::Refused(AnnounceRefusal::BadRequest)
        );
        assert_eq!(
            t.peers(&InfoHash([0xcd; 20])),
            None,
            "nothing tracked for it"
        );
        for reason in ["unknown_torrent", "no_lease", "bad_request"] {
            assert_eq!(t.stats().refused.get(reason), Some(&1), "{reason}");
        }
    }

    #[test]
    fn stopped_peers_leave_and_silent_ones_expire() {
        let mut t = tracker();
        let start = Instant::now();
        t.handle_announce(start, ip(10), true, &query(1, 1000, 5, "&event=started"));
        t.handle_announce(start, ip(11), true, &query(2, 1001, 5, "&event=started"));
        t.handle_announce(start, ip(11), true, &query(2, 1001, 5, "&event=stopped"));
        assert_eq!(t.peers(&HASH), Some(1));
        let late = start + TrackerConfig::default().peer_timeout;
        let reply = t.handle_announce(late, ip(12), true, &query(3, 1002, 5, ""));
        assert_eq!(peers_of(&reply), vec![], "peer 1 expired");
        assert_eq!(t.stats().expired, 1);
        t.expire(late + TrackerConfig::default().peer_timeout);
        assert_eq!(t.peers(&HASH), Some(0));
    }

    #[test]
    fn numwant_is_capped_and_lists_rotate() {
        let mut t = tracker();
        let now = Instant::now();
        for i in 0..10u8 {
            t.handle_announce(now, ip(10 + i), true, &query(i, 1000, 5, ""));
        }
        let a = peers_of(&t.handle_announce(now, ip(99), true, &query(99, 1, 5, "&numwant=3")));
        let b = peers_of(&t.handle_announce(now, ip(99), true, &query(99, 1, 5, "&numwant=3")));
        assert_eq!((a.len(), b.len()), (3, 3));
        assert!(a.iter().all(|p| !b.contains(p)), "{a:?} then {b:?}");
        let all =
            peers_of(&t.handle_announce(now, ip(99), true, &query(99, 1, 5, "&numwant=1000")));
        assert_eq!(all.len(), 10);
    }
}
