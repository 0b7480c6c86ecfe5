//! BitTorrent peer wire (BEP 3), sans-IO: the node agents' side of a root's swarm.
//!
//! [`wire`] parses and writes the handshake and messages with strict length limits;
//! [`swarm`] is the download and upload core over many connections ([`PeerSwarm`]): rarest
//! first, pipelined requests, endgame, pieces verified against the signed manifest's SHA-256
//! before use, bad peers banned, a web seed for the pieces no peer supplies. No sockets and no
//! clock: the node agent drives it over blocking TCP, the tests over in-memory pipes.
pub mod swarm;
pub mod vocabulary;
pub mod wire;

pub use swarm::{
    DropReason, PeerKey, PeerSwarm, PieceSource, PieceSpec, SwarmConfig, SwarmEvent, SwarmStats,
};
pub use wire::{BLOCK_LEN, BlockRef, Handshake, MAX_FRAME, Message, WireError};
