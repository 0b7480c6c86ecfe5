//! What the swarm core ([`super::swarm::PeerSwarm`]) and its driver say to each other: the
//! names of connections and pieces, the tuning, the events the driver acts on, and the counters
//! (every dropped connection or refused message has a [`DropReason`]).
use std::net::IpAddr;
use std::time::Duration;

/// A connection, named by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

/// One piece: its length and the SHA-256 it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceSpec {
    pub len: u32,
    pub sha256: [u8; 32],
}

/// Tuning; every default says what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Blocks requested and not yet received, per peer: 16 x 16 KiB = 256 KiB in flight, a
    /// 1 Gbit/s link's worth at 2 ms round trip (a rack's switch is well under that).
    pub pipeline: usize,
    /// Peers uploaded to at once. A private rack swarm has no free riders to punish (BEP 3's
    /// tit-for-tat), so this only bounds how many share this machine's uplink: 16.
    pub max_unchoked: usize,
    /// Requests from one peer queued for upload; more are refused (counted): 64 blocks, 1 MiB.
    pub max_peer_requests: usize,
    /// A block not received this long after its request is asked of another peer (or the
    /// web seed), and its piece may go to the web seed: 10 s.
    pub request_timeout: Duration,
    /// How long the web seed leaves pieces to peers that may still connect: 2 s.
    pub web_seed_grace: Duration,
    /// A keep-alive after this long without sending (BEP 3: peers drop after two minutes).
    pub keepalive: Duration,
    /// A connection that says nothing for this long is closed: 3 min.
    pub idle_timeout: Duration,
    /// The peer's handshake must arrive within 10 s of connecting.
    pub handshake_timeout: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            pipeline: 16,
            max_unchoked: 16,
            max_peer_requests: 64,
            request_timeout: Duration::from_secs(10),
            web_seed_grace: Duration::from_secs(2),
            keepalive: Duration::from_secs(90),
            idle_timeout: Duration::from_secs(180),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was closed or a message refused; each is a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a BitTorrent handshake, or a frame over the length limit or malformed.
    Protocol,
    /// A handshake for another torrent.
    WrongTorrent,
    /// Our own peer id (the tracker listed us to ourselves).
    SelfConnection,
    /// A bitfield of the wrong length or with spare bits set, or a `have` out of range.
    BadBitfield,
    /// A request outside the torrent or for a piece not verified here (refused, not closed).
    BadRequest,
    /// More queued requests than [`SwarmConfig::max_peer_requests`] (refused, not closed).
    TooManyRequests,
    /// A block never requested, or already received (ignored, not closed).
    Unrequested,
    /// A peer whose blocks made a piece that failed its SHA-256.
    Banned,
    /// No handshake within [`SwarmConfig::handshake_timeout`].
    HandshakeTimeout,
    /// Silent for [`SwarmConfig::idle_timeout`].
    Idle,
    /// The driver saw the connection end.
    Closed,
}

impl DropReason {
    pub const ALL: [Self; 11] = [
        Self::Protocol,
        Self::WrongTorrent,
        Self::SelfConnection,
        Self::BadBitfield,
        Self::BadRequest,
        Self::TooManyRequests,
        Self::Unrequested,
        Self::Banned,
        Self::HandshakeTimeout,
        Self::Idle,
        Self::Closed,
    ];

    /// Stable short name, a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Protocol => "protocol",
            Self::WrongTorrent => "wrong_torrent",
            Self::SelfConnection => "self_connection",
            Self::BadBitfield => "bad_bitfield",
            Self::BadRequest => "bad_request",
            Self::TooManyRequests => "too_many_requests",
            Self::Unrequested => "unrequested",
            Self::Banned => "banned",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Idle => "idle",
            Self::Closed => "closed",
        }
    }
}

/// Where a verified piece came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceSource {
    Peers,
    WebSeed,
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmEvent {
    /// A verified piece: store it. The core has announced it and will ask for its blocks
    /// through [`PeerSwarm::poll_upload`].
    PieceVerified {
        piece: u32,
        data: Vec<u8>,
        from: PieceSource,
    },
    /// A piece failed its SHA-256; the peers that sent its blocks are banned.
    PeerBanned {
        peer: PeerKey,
        addr: IpAddr,
        piece: u32,
    },
    /// The web seed's copy of a piece failed its SHA-256 (not banned: the driver decides).
    WebSeedCorrupt { piece: u32 },
    /// Close this connection: the core has forgotten it.
    Close { peer: PeerKey, reason: DropReason },
    /// Every piece is verified.
    Complete,
}

/// Byte and piece counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmStats {
    pub bytes_from_peers: u64,
    pub bytes_from_web_seed: u64,
    pub pieces_from_peers: u64,
    pub pieces_from_web_seed: u64,
    pub bytes_uploaded: u64,
    /// Blocks received twice (endgame) or after a timeout: bytes paid for nothing.
    pub wasted_bytes: u64,
    pub corrupt_pieces: u64,
    /// Drops and refusals by [`DropReason::as_str`], in [`DropReason::ALL`]'s order.
    pub drops: [u64; DropReason::ALL.len()],
}

impl SwarmStats {
    pub fn drops(&self, reason: DropReason) -> u64 {
        let at = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[at]
    }

    pub(super) fn count(&mut self, reason: DropReason) {
        if let Some(at) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.drops[at] += 1;
        }
    }
}
