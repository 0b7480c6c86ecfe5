//! One torrent's download and upload across many peer connections, sans-IO.
//!
//! The driver owns the sockets and the clock. It names each connection with a [`PeerKey`] of
//! its choosing and calls [`PeerSwarm::add_peer`], then feeds what it reads to
//! [`PeerSwarm::handle_input`], writes what [`PeerSwarm::poll_transmit`] gives it, answers
//! [`PeerSwarm::poll_upload`] with the block's bytes ([`PeerSwarm::send_block`]: the core keeps
//! no piece it has verified, the driver stores them), calls [`PeerSwarm::handle_timeout`] at
//! [`PeerSwarm::poll_timeout`], and acts on [`PeerSwarm::poll_event`]: write a verified piece,
//! close a connection the core gave up on, report a ban.
//!
//! Policy:
//! - Every piece is checked against its SHA-256 (the chunk's, from the signed manifest) before
//!   it is handed out, announced with `have` or uploaded. The peers whose blocks made a bad
//!   piece are banned by address for the life of the swarm, and their connections closed.
//! - Rarest first among the pieces a peer has; blocks of pieces already begun first, so pieces
//!   complete (and can be uploaded) early; [`SwarmConfig::pipeline`] blocks in flight per peer.
//! - Endgame: once every missing block is requested, a peer with free pipeline slots also asks
//!   for blocks in flight elsewhere; the first copy wins and the others are cancelled.
//! - The web seed (BEP 19, the appliance) takes the pieces no unchoking peer has, after
//!   [`SwarmConfig::web_seed_grace`] (time for peers to connect), and pieces whose download from
//!   peers stalled for [`SwarmConfig::request_timeout`] ([`PeerSwarm::claim_web_piece`]).
//! - Upload: up to [`SwarmConfig::max_unchoked`] interested peers are unchoked, in the order
//!   they became interested; requests for pieces not verified here are refused.
//! - Every dropped connection and refused message has a [`DropReason`], counted.
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use sha2::{Digest as _, Sha256};

pub use super::vocabulary::{
    DropReason, PeerKey, PieceSource, PieceSpec, SwarmConfig, SwarmEvent, SwarmStats,
};
use super::wire::{BLOCK_LEN, BlockRef, Frame, FrameDecoder, Handshake, MAX_FRAME, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    Open,
    /// Requested of this many peers (more than one in endgame).
    Requested(u8),
    Received,
}

#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    blocks: Vec<BlockState>,
    contributors: HashSet<PeerKey>,
    last_progress: Instant,
}

#[derive(Debug)]
struct Peer {
    addr: IpAddr,
    decoder: FrameDecoder,
    out: Vec<u8>,
    handshake_sent: bool,
    handshake_seen: bool,
    /// Pieces the peer has.
    has: Vec<bool>,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    /// Our requests in flight, with when they were sent.
    requested: Vec<(BlockRef, Instant)>,
    /// Its requests, to upload.
    uploads: VecDeque<BlockRef>,
    connected_at: Instant,
    last_sent: Instant,
    last_heard: Instant,
}

impl Peer {
    fn send(&mut self, now: Instant, message: Message<'_>) {
        message.emit(&mut self.out);
        self.last_sent = now;
    }
}

/// A torrent's swarm as seen from one machine. See the module docs.
#[derive(Debug)]
pub struct PeerSwarm {
    config: SwarmConfig,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    pieces: Vec<PieceSpec>,
    have: Vec<bool>,
    missing: usize,
    /// Connected peers with the piece.
    availability: Vec<u32>,
    partials: BTreeMap<u32, Partial>,
    /// Pieces the web seed is fetching.
    web: HashSet<u32>,
    peers: BTreeMap<PeerKey, Peer>,
    /// Upload slots in the order peers became interested.
    interested_queue: VecDeque<PeerKey>,
    banned: HashSet<IpAddr>,
    events: VecDeque<SwarmEvent>,
    stats: SwarmStats,
    started: Instant,
    grace_over: bool,
}

impl PeerSwarm {
    /// A swarm for `pieces`, of which those with `have[i]` are already verified here.
    pub fn new(
        now: Instant,
        config: SwarmConfig,
        info_hash: [u8; 20],
        peer_id: [u8; 20],
        pieces: Vec<PieceSpec>,
        have: Vec<bool>,
    ) -> Self {
        let mut have = have;
        have.resize(pieces.len(), false);
        let missing = have.iter().filter(|h| !**h).count();
        let availability = vec![0; pieces.len()];
        Self {
            config,
            info_hash,
            peer_id,
            pieces,
            have,
            missing,
            availability,
            partials: BTreeMap::new(),
            web: HashSet::new(),
            peers: BTreeMap::new(),
            interested_queue: VecDeque::new(),
            banned: HashSet::new(),
            events: VecDeque::new(),
            stats: SwarmStats::default(),
            started: now,
            grace_over: false,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    pub fn missing(&self) -> usize {
        self.missing
    }

    pub fn stats(&self) -> &SwarmStats {
        &self.stats
    }

    pub fn is_banned(&self, addr: IpAddr) -> bool {
        self.banned.contains(&addr)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A new connection to `addr`. The core sends its handshake first on `outbound`
    /// connections and answers the peer's on inbound ones. A banned address is closed at once.
    pub fn add_peer(&mut self, now: Instant, key: PeerKey, addr: IpAddr, outbound: bool) {
        if self.banned.contains(&addr) {
            self.stats.count(DropReason::Banned);
            self.events.push_back(SwarmEvent::Close {
                peer: key,
                reason: DropReason::Banned,
            });
            return;
        }
        let mut peer = Peer {
            addr,
            decoder: FrameDecoder::new(MAX_FRAME),
            out: Vec::new(),
            handshake_sent: false,
            handshake_seen: false,
            has: vec![false; self.pieces.len()],
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            requested: Vec::new(),
            uploads: VecDeque::new(),
            connected_at: now,
            last_sent: now,
            last_heard: now,
        };
        if outbound {
            self.greet(now, &mut peer);
        }
        self.peers.insert(key, peer);
    }

    fn greet(&self, now: Instant, peer: &mut Peer) {
        Handshake::new(self.info_hash, self.peer_id).emit(&mut peer.out);
        peer.handshake_sent = true;
        if self.have.iter().any(|h| *h) {
            let bits = bitfield(&self.have);
            peer.send(now, Message::Bitfield(&bits));
        }
    }

    /// Bytes read from `key`'s connection. Protocol errors close it (a [`SwarmEvent::Close`]).
    pub fn handle_input(&mut self, now: Instant, key: PeerKey, mut input: &[u8]) {
        while !input.is_empty() {
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            peer.last_heard = now;
            let (taken, frame) = match peer.decoder.push(input) {
                Ok(found) => found,
                Err(_) => return self.close(now, key, DropReason::Protocol),
            };
            input = &input[taken..];
            match frame {
                Frame::Partial => return,
                Frame::Handshake => {
                    let handshake = Handshake::parse(peer.decoder.frame());
                    peer.decoder.consume();
                    let handshake = match handshake {
                        Ok(h) => h,
                        Err(_) => return self.close(now, key, DropReason::Protocol),
                    };
                    if handshake.info_hash != self.info_hash {
                        return self.close(now, key, DropReason::WrongTorrent);
                    }
                    if handshake.peer_id == self.peer_id {
                        return self.close(now, key, DropReason::SelfConnection);
                    }
                    let Some(mut peer) = self.peers.remove(&key) else {
                        return;
                    };
                    peer.handshake_seen = true;
                    if !peer.handshake_sent {
                        self.greet(now, &mut peer);
                    }
                    self.peers.insert(key, peer);
                }
                Frame::Message => {
                    // Copied out (at most one block and its header) so the swarm can change
                    // while the message borrows it.
                    let body = peer.decoder.frame().to_vec();
                    peer.decoder.consume();
                    match Message::parse(&body) {
                        Ok(message) => {
                            if !self.handle_message(now, key, message) {
                                return;
                            }
                        }
                        Err(_) => return self.close(now, key, DropReason::Protocol),
                    }
                }
            }
        }
        self.fill_requests(now, key);
    }

    /// Returns false when the peer was closed.
    fn handle_message(&mut self, now: Instant, key: PeerKey, message: Message<'_>) -> bool {
        let n = self.pieces.len();
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        match message {
            Message::KeepAlive | Message::Unknown(_) => {}
            Message::Choke => {
                peer.peer_choking = true;
                // BEP 3: a choke discards our requests.
                let dropped: Vec<BlockRef> = peer.requested.drain(..).map(|(b, _)| b).collect();
                for block in dropped {
                    self.unrequest(block);
                }
            }
            Message::Unchoke => peer.peer_choking = false,
            Message::Interested => {
                if !peer.peer_interested {
                    peer.peer_interested = true;
                    self.interested_queue.push_back(key);
                    self.rechoke(now);
                }
            }
            Message::NotInterested => {
                peer.peer_interested = false;
                self.interested_queue.retain(|k| *k != key);
                self.rechoke(now);
            }
            Message::Have(piece) => {
                let Some(slot) = peer.has.get_mut(piece as usize) else {
                    self.close(now, key, DropReason::BadBitfield);
                    return false;
                };
                if !*slot {
                    *slot = true;
                    self.availability[piece as usize] += 1;
                }
                self.update_interest(now, key);
            }
            Message::Bitfield(bits) => {
                if bits.len() != n.div_ceil(8) || spare_bits_set(bits, n) {
                    self.close(now, key, DropReason::BadBitfield);
                    return false;
                }
                for (i, slot) in peer.has.iter_mut().enumerate() {
                    let set = bits[i / 8] & (0x80 >> (i % 8)) != 0;
                    if set && !*slot {
                        self.availability[i] += 1;
                    } else if !set && *slot {
                        self.availability[i] -= 1;
                    }
                    *slot = set;
                }
                self.update_interest(now, key);
            }
            Message::Request(block) => {
                if peer.am_choking {
                    // BEP 3: requests while choked are ignored.
                    return true;
                }
                if !self.valid_block(block) || !self.have[block.piece as usize] {
                    self.stats.count(DropReason::BadRequest);
                    return true;
                }
                let Some(peer) = self.peers.get_mut(&key) else {
                    return false;
                };
                if peer.uploads.len() >= self.config.max_peer_requests {
                    self.stats.count(DropReason::TooManyRequests);
                    return true;
                }
                if !peer.uploads.contains(&block) {
                    peer.uploads.push_back(block);
                }
            }
            Message::Cancel(block) => peer.uploads.retain(|b| *b != block),
            Message::Piece { piece, begin, data } => {
                let block = BlockRef {
                    piece,
                    begin,
                    len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                };
                return self.handle_block(now, key, block, data);
            }
        }
        true
    }

    fn valid_block(&self, block: BlockRef) -> bool {
        let Some(spec) = self.pieces.get(block.piece as usize) else {
            return false;
        };
        block.len > 0
            && block.len <= BLOCK_LEN
            && block.begin.is_multiple_of(BLOCK_LEN)
            && u64::from(block.begin) + u64::from(block.len) <= u64::from(spec.len)
    }

    fn handle_block(&mut self, now: Instant, key: PeerKey, block: BlockRef, data: &[u8]) -> bool {
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        let Some(at) = peer.requested.iter().position(|(b, _)| *b == block) else {
            self.stats.count(DropReason::Unrequested);
            self.stats.wasted_bytes += data.len() as u64;
            return true;
        };
        peer.requested.swap_remove(at);
        let index = (block.begin / BLOCK_LEN) as usize;
        let Some(partial) = self.partials.get_mut(&block.piece) else {
            // Completed meanwhile (endgame, or the web seed).
            self.stats.wasted_bytes += data.len() as u64;
            return true;
        };
        if partial.blocks[index] == BlockState::Received {
            self.stats.wasted_bytes += data.len() as u64;
            return true;
        }
        let begin = block.begin as usize;
        partial.data[begin..begin + data.len()].copy_from_slice(data);
        partial.blocks[index] = BlockState::Received;
        partial.contributors.insert(key);
        partial.last_progress = now;
        self.stats.bytes_from_peers += data.len() as u64;
        // Endgame: the same block asked of others is cancelled.
        for (other_key, other) in &mut self.peers {
            if *other_key == key {
                continue;
            }
            if let Some(at) = other.requested.iter().position(|(b, _)| *b == block) {
                other.requested.swap_remove(at);
                Message::Cancel(block).emit(&mut other.out);
            }
        }
        let done = partial.blocks.iter().all(|b| *b == BlockState::Received);
        if done {
            let partial = self
                .partials
                .remove(&block.piece)
                .unwrap_or_else(|| unreachable!());
            self.finish_piece(
                now,
                block.piece,
                partial.data,
                PieceSource::Peers,
                &partial.contributors,
            );
        }
        self.peers.contains_key(&key)
    }

    /// Checks a piece's bytes and, when right, marks it had, announces it and hands it out.
    fn finish_piece(
        &mut self,
        now: Instant,
        piece: u32,
        data: Vec<u8>,
        from: PieceSource,
        contributors: &HashSet<PeerKey>,
    ) {
        let i = piece as usize;
        if self.have[i] {
            self.stats.wasted_bytes += data.len() as u64;
            return;
        }
        let digest: [u8; 32] = Sha256::digest(&data).into();
        if data.len() != self.pieces[i].len as usize || digest != self.pieces[i].sha256 {
            self.stats.corrupt_pieces += 1;
            match from {
                PieceSource::WebSeed => self.events.push_back(SwarmEvent::WebSeedCorrupt { piece }),
                PieceSource::Peers => {
                    let mut keys: Vec<PeerKey> = contributors.iter().copied().collect();
                    keys.sort();
                    for key in keys {
                        let Some(addr) = self.peers.get(&key).map(|p| p.addr) else {
                            continue;
                        };
                        self.banned.insert(addr);
                        self.events.push_back(SwarmEvent::PeerBanned {
                            peer: key,
                            addr,
                            piece,
                        });
                        self.close(now, key, DropReason::Banned);
                    }
                }
            }
            return;
        }
        self.have[i] = true;
        self.missing -= 1;
        self.web.remove(&piece);
        if self.partials.remove(&piece).is_some() {
            // The web seed won the race: requests still out for it are cancelled.
            for peer in self.peers.values_mut() {
                peer.requested.retain(|(b, _)| {
                    if b.piece == piece {
                        Message::Cancel(*b).emit(&mut peer.out);
                        false
                    } else {
                        true
                    }
                });
            }
        }
        match from {
            PieceSource::Peers => {
                self.stats.pieces_from_peers += 1;
            }
            PieceSource::WebSeed => {
                self.stats.pieces_from_web_seed += 1;
                self.stats.bytes_from_web_seed += data.len() as u64;
            }
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key)
                && peer.handshake_seen
            {
                peer.send(now, Message::Have(piece));
            }
            self.update_interest(now, key);
        }
        self.events
            .push_back(SwarmEvent::PieceVerified { piece, data, from });
        if self.missing == 0 {
            self.events.push_back(SwarmEvent::Complete);
        }
    }

    fn update_interest(&mut self, now: Instant, key: PeerKey) {
        let have = &self.have;
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let wants = peer.has.iter().zip(have).any(|(p, h)| *p && !*h);
        if wants != peer.am_interested && peer.handshake_seen {
            peer.am_interested = wants;
            peer.send(
                now,
                if wants {
                    Message::Interested
                } else {
                    Message::NotInterested
                },
            );
        }
    }

    fn rechoke(&mut self, now: Instant) {
        let slots: Vec<PeerKey> = self
            .interested_queue
            .iter()
            .take(self.config.max_unchoked)
            .copied()
            .collect();
        for (key, peer) in &mut self.peers {
            let unchoke = slots.contains(key);
            if unchoke == peer.am_choking {
                peer.am_choking = !unchoke;
                if unchoke {
                    peer.send(now, Message::Unchoke);
                } else {
                    peer.uploads.clear();
                    peer.send(now, Message::Choke);
                }
            }
        }
    }

    fn unrequest(&mut self, block: BlockRef) {
        if let Some(partial) = self.partials.get_mut(&block.piece) {
            let slot = &mut partial.blocks[(block.begin / BLOCK_LEN) as usize];
            if let BlockState::Requested(n) = *slot {
                *slot = if n <= 1 {
                    BlockState::Open
                } else {
                    BlockState::Requested(n - 1)
                };
            }
        }
    }

    fn block_ref(&self, piece: u32, index: usize) -> BlockRef {
        let begin = index as u32 * BLOCK_LEN;
        BlockRef {
            piece,
            begin,
            len: (self.pieces[piece as usize].len - begin).min(BLOCK_LEN),
        }
    }

    /// Fills `key`'s pipeline: open blocks of begun pieces, then the rarest new piece, then
    /// (endgame) blocks in flight elsewhere.
    fn fill_requests(&mut self, now: Instant, key: PeerKey) {
        loop {
            let Some(peer) = self.peers.get(&key) else {
                return;
            };
            if peer.peer_choking
                || !peer.handshake_seen
                || peer.requested.len() >= self.config.pipeline
            {
                return;
            }
            let Some(block) = self.pick(now, key) else {
                return;
            };
            if let Some(partial) = self.partials.get_mut(&block.piece) {
                let slot = &mut partial.blocks[(block.begin / BLOCK_LEN) as usize];
                *slot = match *slot {
                    BlockState::Requested(n) => BlockState::Requested(n.saturating_add(1)),
                    _ => BlockState::Requested(1),
                };
            }
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            peer.requested.push((block, now));
            peer.send(now, Message::Request(block));
        }
    }

    fn pick(&mut self, now: Instant, key: PeerKey) -> Option<BlockRef> {
        let peer = self.peers.get(&key)?;
        // Blocks of pieces already begun.
        for (&piece, partial) in &self.partials {
            if !peer.has[piece as usize] {
                continue;
            }
            if let Some(index) = partial.blocks.iter().position(|b| *b == BlockState::Open) {
                return Some(self.block_ref(piece, index));
            }
        }
        // The rarest piece nobody has begun; ties broken by a per-peer rotation so peers of
        // one machine do not all start on the same piece.
        let n = self.pieces.len();
        let offset = (key.0 as usize).wrapping_mul(7919) % n.max(1);
        let mut best: Option<(u32, usize)> = None;
        for step in 0..n {
            let i = (offset + step) % n;
            if self.have[i]
                || !peer.has[i]
                || self.partials.contains_key(&(i as u32))
                || self.web.contains(&(i as u32))
            {
                continue;
            }
            let rarity = self.availability[i];
            if best.is_none_or(|(r, _)| rarity < r) {
                best = Some((rarity, i));
            }
        }
        if let Some((_, i)) = best {
            let len = self.pieces[i].len;
            let blocks = len.div_ceil(BLOCK_LEN) as usize;
            self.partials.insert(
                i as u32,
                Partial {
                    data: vec![0; len as usize],
                    blocks: vec![BlockState::Open; blocks],
                    contributors: HashSet::new(),
                    last_progress: now,
                },
            );
            return Some(self.block_ref(i as u32, 0));
        }
        // Endgame: every missing piece this peer has is begun and fully requested.
        let mine: HashSet<BlockRef> = peer.requested.iter().map(|(b, _)| *b).collect();
        for (&piece, partial) in &self.partials {
            if !peer.has[piece as usize] {
                continue;
            }
            for (index, state) in partial.blocks.iter().enumerate() {
                if matches!(state, BlockState::Requested(n) if *n < 2) {
                    let block = self.block_ref(piece, index);
                    if !mine.contains(&block) {
                        return Some(block);
                    }
                }
            }
        }
        None
    }

    /// Forgets `key` and tells the driver to close it.
    fn close(&mut self, now: Instant, key: PeerKey, reason: DropReason) {
        self.stats.count(reason);
        self.forget(now, key);
        self.events
            .push_back(SwarmEvent::Close { peer: key, reason });
    }

    fn forget(&mut self, now: Instant, key: PeerKey) {
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        for (i, has) in peer.has.iter().enumerate() {
            if *has {
                self.availability[i] -= 1;
            }
        }
        for (block, _) in peer.requested {
            self.unrequest(block);
        }
        let was_slot = self.interested_queue.contains(&key);
        self.interested_queue.retain(|k| *k != key);
        if was_slot {
            // Its upload slot goes to the next interested peer.
            self.rechoke(now);
        }
    }

    /// The driver saw `key`'s connection end (EOF, reset, write error).
    pub fn handle_closed(&mut self, now: Instant, key: PeerKey) {
        if self.peers.contains_key(&key) {
            self.stats.count(DropReason::Closed);
            self.forget(now, key);
        }
    }

    /// Appends what to send to `key`.
    pub fn poll_transmit(&mut self, key: PeerKey, out: &mut Vec<u8>) {
        if let Some(peer) = self.peers.get_mut(&key) {
            out.append(&mut peer.out);
        }
    }

    /// The next block `key` asked for: read it from storage and give it to
    /// [`Self::send_block`].
    pub fn poll_upload(&mut self, key: PeerKey) -> Option<BlockRef> {
        let peer = self.peers.get_mut(&key)?;
        if peer.am_choking {
            peer.uploads.clear();
            return None;
        }
        peer.uploads.pop_front()
    }

    /// Sends a block [`Self::poll_upload`] named; `data` must be its bytes, read from where
    /// [`SwarmEvent::PieceVerified`] stored them.
    pub fn send_block(&mut self, now: Instant, key: PeerKey, block: BlockRef, data: &[u8]) {
        if data.len() != block.len as usize
            || !self.have.get(block.piece as usize).is_some_and(|h| *h)
        {
            return;
        }
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.send(
                now,
                Message::Piece {
                    piece: block.piece,
                    begin: block.begin,
                    data,
                },
            );
            self.stats.bytes_uploaded += data.len() as u64;
        }
    }

    /// Lets the web seed start before [`SwarmConfig::web_seed_grace`] ends: the tracker
    /// listed no peer to wait for.
    pub fn end_web_seed_grace(&mut self) {
        self.grace_over = true;
    }

    /// A piece for the web seed to fetch: one no unchoking peer has, once
    /// [`SwarmConfig::web_seed_grace`] has passed, or one whose peers stalled. The web seed
    /// owns it until [`Self::handle_web_piece`] or [`Self::release_web_piece`].
    pub fn claim_web_piece(&mut self, now: Instant) -> Option<u32> {
        if !self.grace_over && now.duration_since(self.started) < self.config.web_seed_grace {
            return None;
        }
        let offered = |i: usize| {
            self.peers
                .values()
                .any(|p| p.has[i] && !p.peer_choking && p.handshake_seen)
        };
        let stalled = |i: u32| {
            self.partials
                .get(&i)
                .is_some_and(|p| now.duration_since(p.last_progress) >= self.config.request_timeout)
        };
        let pick = (0..self.pieces.len()).find(|&i| {
            let piece = i as u32;
            !self.have[i]
                && !self.web.contains(&piece)
                && ((!offered(i) && !self.partials.contains_key(&piece)) || stalled(piece))
        })?;
        self.web.insert(pick as u32);
        Some(pick as u32)
    }

    /// The web seed's bytes for a piece it claimed; checked like any other.
    pub fn handle_web_piece(&mut self, now: Instant, piece: u32, data: Vec<u8>) {
        self.web.remove(&piece);
        if (piece as usize) < self.pieces.len() {
            self.finish_piece(now, piece, data, PieceSource::WebSeed, &HashSet::new());
        }
    }

    /// The web seed could not fetch a piece it claimed; peers may take it again.
    pub fn release_web_piece(&mut self, piece: u32) {
        self.web.remove(&piece);
    }

    /// Timeouts: handshakes, idle peers, requests not answered (asked again elsewhere),
    /// keep-alives.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if !peer.handshake_seen
                && now.duration_since(peer.connected_at) >= self.config.handshake_timeout
            {
                self.close(now, key, DropReason::HandshakeTimeout);
                continue;
            }
            if now.duration_since(peer.last_heard) >= self.config.idle_timeout {
                self.close(now, key, DropReason::Idle);
                continue;
            }
            let timeout = self.config.request_timeout;
            let mut expired = Vec::new();
            peer.requested.retain(|(block, at)| {
                let late = now.duration_since(*at) >= timeout;
                if late {
                    expired.push(*block);
                }
                !late
            });
            for block in &expired {
                Message::Cancel(*block).emit(&mut peer.out);
            }
            if peer.handshake_seen && now.duration_since(peer.last_sent) >= self.config.keepalive {
                peer.send(now, Message::KeepAlive);
            }
            for block in expired {
                self.unrequest(block);
            }
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.fill_requests(now, key);
        }
    }

    /// When [`Self::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let first_request = p.requested.iter().map(|(_, at)| *at).min();
                [
                    (!p.handshake_seen).then(|| p.connected_at + self.config.handshake_timeout),
                    Some(p.last_heard + self.config.idle_timeout),
                    p.handshake_seen
                        .then(|| p.last_sent + self.config.keepalive),
                    first_request.map(|at| at + self.config.request_timeout),
                ]
            })
            .flatten()
            .min()
    }

    /// The next thing the driver must act on.
    pub fn poll_event(&mut self) -> Option<SwarmEvent> {
        self.events.pop_front()
    }
}

/// BEP 3 bitfield: piece 0 is the high bit of the first byte.
fn bitfield(have: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; have.len().div_ceil(8)];
    for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    bits
}

fn spare_bits_set(bits: &[u8], pieces: usize) -> bool {
    let spare = bits.len() * 8 - pieces;
    spare > 0
        && bits
            .last()
            .is_some_and(|last| last & ((1u8 << spare) - 1) != 0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    const HASH: [u8; 20] = [0x5a; 20];

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Pieces of `piece_len` over `data`, with their SHA-256.
    fn specs(data: &[u8], piece_len: usize) -> Vec<PieceSpec> {
        data.chunks(piece_len)
            .map(|c| PieceSpec {
                len: c.len() as u32,
                sha256: Sha256::digest(c).into(),
            })
            .collect()
    }

    fn id(n: u8) -> [u8; 20] {
        let mut id = *b"-SP0001-000000000000";
        id[19] = n;
        id
    }

    /// Machines in memory: each a swarm, its storage, and connections between them.
    struct Lab {
        now: Instant,
        nodes: Vec<Node>,
        /// (node a, key at a, node b, key at b)
        links: Vec<(usize, PeerKey, usize, PeerKey)>,
        next: u64,
    }

    struct Node {
        swarm: PeerSwarm,
        store: Vec<Option<Vec<u8>>>,
        events: Vec<SwarmEvent>,
        /// Rewrites outgoing `piece` payloads (a hostile peer).
        corrupt: bool,
    }

    impl Lab {
        fn new(data: &[u8], piece_len: usize, nodes: &[bool]) -> Self {
            let now = Instant::now();
            let pieces = specs(data, piece_len);
            let nodes = nodes
                .iter()
                .enumerate()
                .map(|(i, seed)| {
                    let have = vec![*seed; pieces.len()];
                    Node {
                        swarm: PeerSwarm::new(
                            now,
                            SwarmConfig::default(),
                            HASH,
                            id(i as u8),
                            pieces.clone(),
                            have,
                        ),
                        store: data
                            .chunks(piece_len)
                            .map(|c| seed.then(|| c.to_vec()))
                            .collect(),
                        events: Vec::new(),
                        corrupt: false,
                    }
                })
                .collect();
            Self {
                now,
                nodes,
                links: Vec::new(),
                next: 0,
            }
        }

        fn connect(&mut self, a: usize, b: usize) {
            self.next += 1;
            let n = self.next;
            let (ka, kb) = (PeerKey(n * 2), PeerKey(n * 2 + 1));
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + i as u8));
            self.nodes[a].swarm.add_peer(self.now, ka, ip(b), true);
            self.nodes[b].swarm.add_peer(self.now, kb, ip(a), false);
            self.links.push((a, ka, b, kb));
        }

        /// Moves bytes until nothing moves, answering uploads from storage.
        fn run(&mut self) {
            for _ in 0..10_000 {
                let mut moved = false;
                for l in 0..self.links.len() {
                    let (a, ka, b, kb) = self.links[l];
                    for (from, kf, to, kt) in [(a, ka, b, kb), (b, kb, a, ka)] {
                        self.uploads(from, kf);
                        let mut bytes = Vec::new();
                        self.nodes[from].swarm.poll_transmit(kf, &mut bytes);
                        if !bytes.is_empty() {
                            moved = true;
                            self.nodes[to].swarm.handle_input(self.now, kt, &bytes);
                        }
                    }
                }
                for node in &mut self.nodes {
                    while let Some(event) = node.swarm.poll_event() {
                        if let SwarmEvent::PieceVerified { piece, data, .. } = &event {
                            node.store[*piece as usize] = Some(data.clone());
                        }
                        node.events.push(event);
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("the lab never settles");
        }

        fn uploads(&mut self, node: usize, key: PeerKey) {
            while let Some(block) = self.nodes[node].swarm.poll_upload(key) {
                let piece = self.nodes[node].store[block.piece as usize]
                    .clone()
                    .expect("only verified pieces are uploaded");
                let mut data =
                    piece[block.begin as usize..(block.begin + block.len) as usize].to_vec();
                if self.nodes[node].corrupt {
                    data[0] ^= 0xff;
                }
                self.nodes[node]
                    .swarm
                    .send_block(self.now, key, block, &data);
            }
        }

        fn image_of(&self, node: usize) -> Vec<u8> {
            self.nodes[node]
                .store
                .iter()
                .map(|p| p.clone().expect("every piece"))
                .collect::<Vec<_>>()
                .concat()
        }
    }

    #[test]
    fn a_leecher_downloads_everything_from_a_seed_with_pipelined_requests() {
        let data = image(5 * 65536 + 1000);
        let mut lab = Lab::new(&data, 65536, &[true, false]);
        lab.connect(1, 0);
        lab.run();
        assert!(lab.nodes[1].swarm.is_complete());
        assert_eq!(lab.image_of(1), data);
        assert!(lab.nodes[1].events.contains(&SwarmEvent::Complete));
        let stats = lab.nodes[1].swarm.stats();
        assert_eq!(stats.bytes_from_peers, data.len() as u64);
        assert_eq!(stats.pieces_from_peers, 6);
        assert_eq!(lab.nodes[0].swarm.stats().bytes_uploaded, data.len() as u64);
        assert_eq!(stats.wasted_bytes, 0);
    }

    #[test]
    fn leechers_upload_to_each_other_while_downloading() {
        let data = image(32 * 16384);
        // One seed, three leechers meshed; the seed knows only leecher 1.
        let mut lab = Lab::new(&data, 32768, &[true, false, false, false]);
        lab.connect(1, 0);
        lab.connect(2, 1);
        lab.connect(3, 1);
        lab.connect(3, 2);
        lab.run();
        for node in 1..4 {
            assert_eq!(lab.image_of(node), data, "node {node}");
        }
        // Leechers 2 and 3 got it only through leecher 1 (and each other).
        assert!(lab.nodes[1].swarm.stats().bytes_uploaded > 0);
        assert_eq!(lab.nodes[0].swarm.stats().bytes_uploaded, data.len() as u64);
    }

    #[test]
    fn rarest_first_prefers_the_piece_fewest_peers_have() {
        let data = image(4 * 16384);
        let mut swarm = PeerSwarm::new(
            Instant::now(),
            SwarmConfig {
                pipeline: 1,
                ..SwarmConfig::default()
            },
            HASH,
            id(0),
            specs(&data, 16384),
            vec![],
        );
        let now = Instant::now();
        let mut wire = Vec::new();
        Handshake::new(HASH, id(1)).emit(&mut wire);
        Message::Bitfield(&[0b1111_0000]).emit(&mut wire);
        let mut wire2 = Vec::new();
        Handshake::new(HASH, id(2)).emit(&mut wire2);
        Message::Bitfield(&[0b1101_0000]).emit(&mut wire2);
        Message::Unchoke.emit(&mut wire2);
        swarm.add_peer(now, PeerKey(1), IpAddr::V4(Ipv4Addr::LOCALHOST), false);
        swarm.add_peer(
            now,
            PeerKey(2),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            false,
        );
        swarm.handle_input(now, PeerKey(1), &wire);
        swarm.handle_input(now, PeerKey(2), &wire2);
        // Piece 2 is the only one held by one peer; peer 2 does not have it, so it gets
        // one of 0, 1, 3 (each held by both). Peer 1 unchoking then asks for piece 2.
        let mut out = Vec::new();
        swarm.poll_transmit(PeerKey(1), &mut out);
        let mut unchoke = Vec::new();
        Message::Unchoke.emit(&mut unchoke);
        swarm.handle_input(now, PeerKey(1), &unchoke);
        out.clear();
        swarm.poll_transmit(PeerKey(1), &mut out);
        let request = out
            .windows(5)
            .position(|w| w == b"\0\0\0\x0d\x06")
            .expect("a request");
        let piece = u32::from_be_bytes(out[request + 5..request + 9].try_into().unwrap());
        assert_eq!(piece, 2, "{out:?}");
    }

    #[test]
    fn a_peer_sending_a_bad_piece_is_banned_and_the_piece_fetched_again() {
        let data = image(4 * 16384);
        let mut lab = Lab::new(&data, 32768, &[true, false, true]);
        lab.nodes[0].corrupt = true;
        lab.connect(1, 0);
        lab.run();
        let banned: Vec<&SwarmEvent> = lab.nodes[1]
            .events
            .iter()
            .filter(|e| matches!(e, SwarmEvent::PeerBanned { .. }))
            .collect();
        assert_eq!(banned.len(), 1, "{:?}", lab.nodes[1].events);
        assert!(
            lab.nodes[1]
                .swarm
                .is_banned(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)))
        );
        assert!(!lab.nodes[1].swarm.is_complete());
        assert!(
            lab.nodes[1].store.iter().all(Option::is_none),
            "nothing used"
        );
        // It never comes back; an honest peer supplies the root.
        lab.connect(1, 0);
        assert_eq!(lab.nodes[1].swarm.stats().drops(DropReason::Banned), 2);
        lab.connect(1, 2);
        lab.run();
        assert_eq!(lab.image_of(1), data);
    }

    #[test]
    fn the_web_seed_takes_what_no_peer_has_after_the_grace() {
        let data = image(4 * 16384);
        let pieces = specs(&data, 16384);
        let start = Instant::now();
        let mut swarm = PeerSwarm::new(start, SwarmConfig::default(), HASH, id(0), pieces, vec![]);
        assert_eq!(
            swarm.claim_web_piece(start),
            None,
            "peers get a chance first"
        );
        let later = start + Duration::from_secs(3);
        let mut wire = Vec::new();
        Handshake::new(HASH, id(1)).emit(&mut wire);
        Message::Bitfield(&[0b1100_0000]).emit(&mut wire);
        Message::Unchoke.emit(&mut wire);
        swarm.add_peer(later, PeerKey(1), IpAddr::V4(Ipv4Addr::LOCALHOST), true);
        swarm.handle_input(later, PeerKey(1), &wire);
        // Pieces 0 and 1 are the peer's; 2 and 3 go to the web seed.
        assert_eq!(swarm.claim_web_piece(later), Some(2));
        assert_eq!(swarm.claim_web_piece(later), Some(3));
        assert_eq!(swarm.claim_web_piece(later), None);
        let mut bad = data[3 * 16384..].to_vec();
        bad[0] ^= 1;
        swarm.handle_web_piece(later, 3, bad);
        swarm.handle_web_piece(later, 2, data[2 * 16384..3 * 16384].to_vec());
        let events: Vec<SwarmEvent> = std::iter::from_fn(|| swarm.poll_event()).collect();
        assert!(events.contains(&SwarmEvent::WebSeedCorrupt { piece: 3 }));
        assert!(events.iter().any(|e| matches!(
            e,
            SwarmEvent::PieceVerified {
                piece: 2,
                from: PieceSource::WebSeed,
                ..
            }
        )));
        assert_eq!(
            swarm.claim_web_piece(later),
            Some(3),
            "released after corruption"
        );
        // The peer stalls on its pieces: after the request timeout the web seed may take them.
        let stalled = later + Duration::from_secs(11);
        swarm.handle_timeout(stalled);
        assert_eq!(swarm.claim_web_piece(stalled), Some(0));
        assert_eq!(swarm.stats().bytes_from_web_seed, 16384);
    }

    #[test]
    fn endgame_asks_a_second_peer_and_cancels_the_loser() {
        let data = image(2 * 16384);
        let mut lab = Lab::new(&data, 32768, &[true, true, false]);
        // Node 2 meets the slow seed 0 first: it asks 0 for both blocks.
        lab.connect(2, 0);
        let link0 = lab.links[0];
        // Two rounds: handshakes and bitfield, then interested and unchoke. 2's requests
        // that follow are never delivered: 0 is the slow peer.
        for _ in 0..2 {
            let mut bytes = Vec::new();
            lab.nodes[2].swarm.poll_transmit(link0.1, &mut bytes);
            lab.nodes[0].swarm.handle_input(lab.now, link0.3, &bytes);
            bytes.clear();
            lab.nodes[0].swarm.poll_transmit(link0.3, &mut bytes);
            lab.nodes[2].swarm.handle_input(lab.now, link0.1, &bytes);
        }
        // 2 has requested both blocks from 0 (not answered). Now a second seed connects.
        lab.links.clear();
        lab.connect(2, 1);
        lab.run();
        assert_eq!(lab.image_of(2), data);
        // Blocks in flight at 0 were cancelled when 1's copies arrived.
        let mut rest = Vec::new();
        lab.nodes[2].swarm.poll_transmit(link0.1, &mut rest);
        assert!(
            rest.windows(5).any(|w| w == b"\0\0\0\x0d\x08"),
            "a cancel to the loser"
        );
    }

    #[test]
    fn hostile_input_is_a_counted_drop_never_a_panic() {
        let data = image(3 * 16384);
        let now = Instant::now();
        let new = || {
            PeerSwarm::new(
                now,
                SwarmConfig::default(),
                HASH,
                id(0),
                specs(&data, 16384),
                vec![true; 3],
            )
        };
        let handshake = |hash: [u8; 20], peer: [u8; 20]| {
            let mut v = Vec::new();
            Handshake::new(hash, peer).emit(&mut v);
            v
        };
        let cases: Vec<(Vec<u8>, DropReason)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n".repeat(4), DropReason::Protocol),
            (handshake([1; 20], id(1)), DropReason::WrongTorrent),
            (handshake(HASH, id(0)), DropReason::SelfConnection),
            (
                [handshake(HASH, id(1)), u32::MAX.to_be_bytes().to_vec()].concat(),
                DropReason::Protocol,
            ),
            (
                [handshake(HASH, id(1)), b"\0\0\0\x02\x05\xff".to_vec()].concat(),
                DropReason::BadBitfield,
            ),
            (
                [handshake(HASH, id(1)), b"\0\0\0\x05\x04\0\0\0\x03".to_vec()].concat(),
                DropReason::BadBitfield,
            ),
            (
                [handshake(HASH, id(1)), b"\0\0\0\x02\x06\0".to_vec()].concat(),
                DropReason::Protocol,
            ),
        ];
        for (input, reason) in cases {
            let mut swarm = new();
            swarm.add_peer(now, PeerKey(9), IpAddr::V4(Ipv4Addr::LOCALHOST), false);
            swarm.handle_input(now, PeerKey(9), &input);
            assert_eq!(
                swarm.poll_event(),
                Some(SwarmEvent::Close {
                    peer: PeerKey(9),
                    reason
                }),
                "{input:?}"
            );
            assert_eq!(swarm.stats().drops(reason), 1);
            assert_eq!(swarm.peer_count(), 0);
        }
        // Requests outside the torrent, and a piece never asked for: refused, counted, kept.
        let mut swarm = new();
        swarm.add_peer(now, PeerKey(9), IpAddr::V4(Ipv4Addr::LOCALHOST), false);
        let mut wire = handshake(HASH, id(1));
        Message::Interested.emit(&mut wire);
        for block in [
            BlockRef {
                piece: 3,
                begin: 0,
                len: 16384,
            },
            BlockRef {
                piece: 0,
                begin: 16384,
                len: 1,
            },
            BlockRef {
                piece: 0,
                begin: 0,
                len: 32768,
            },
            BlockRef {
                piece: 0,
                begin: 1,
                len: 100,
            },
        ] {
            Message::Request(block).emit(&mut wire);
        }
        Message::Piece {
            piece: 0,
            begin: 0,
            data: &[1; 10],
        }
        .emit(&mut wire);
        swarm.handle_input(now, PeerKey(9), &wire);
        assert_eq!(swarm.poll_event(), None);
        assert_eq!(swarm.stats().drops(DropReason::BadRequest), 4);
        assert_eq!(swarm.stats().drops(DropReason::Unrequested), 1);
        assert_eq!(swarm.poll_upload(PeerKey(9)), None);
        // Silence ends in a timeout.
        swarm.handle_timeout(now + Duration::from_secs(181));
        assert_eq!(
            swarm.poll_event(),
            Some(SwarmEvent::Close {
                peer: PeerKey(9),
                reason: DropReason::Idle
            })
        );
    }
}
