//! A root image as a BitTorrent torrent: hybrid v1/v2 (BEP 52), one file, private (BEP 27).
//!
//! Pieces are the manifest's chunks (piece length = `chunk_size`, 1 MiB), so a piece a peer
//! sends can be checked three ways: the chunk's SHA-256 in the signed manifest, the v2 piece
//! hash (a SHA-256 merkle tree over 16 KiB blocks) under the `pieces root` the manifest also
//! carries, and the v1 SHA-1 that Debian 12's aria2c and transmission still need.
//!
//! The `info` dictionary is derived from the manifest alone plus the per-piece hashes: the file
//! is named after the image digest (`<hex>.erofs`), its length is the manifest's `size`. Its
//! hashes go into the signed manifest ([`SwarmInfo`]), so a node that trusts the manifest trusts
//! a torrent whose `info` hashes to them, wherever it got it. What is not in `info` (`announce`,
//! `url-list`: the appliance's address) is added when the torrent is served
//! ([`with_endpoints`]).
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use stampede_proto::bencode::Value;

use crate::manifest::{ManifestError, Sha256Digest};

/// BEP 52 leaf size: every merkle tree is built over 16 KiB blocks.
pub const BLOCK_SIZE: usize = 16 * 1024;

/// What the signed manifest says about the root's torrent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmInfo {
    /// SHA-1 of the bencoded `info` dictionary, hex: what v1 clients announce.
    pub info_hash_v1: String,
    /// SHA-256 of the same dictionary (v2 clients announce its first 20 bytes).
    pub info_hash_v2: Sha256Digest,
    /// The v2 merkle root of the image over 16 KiB blocks (`pieces root`): the piece layer
    /// (one hash per chunk) is checked against it.
    pub pieces_root: Sha256Digest,
    /// SHA-1 of the `info` dictionary of the same torrent without its v2 keys ([`v1_only`]),
    /// hex: for v1-only clients that cannot take the hybrid.
    pub v1_only_info_hash: String,
}

impl SwarmInfo {
    /// The hashes of an `info` dictionary built by [`info_dict`].
    pub fn of(info: &Value, pieces_root: [u8; 32]) -> Self {
        let bytes = info.to_bytes();
        let v1_only = v1_only_info(info).to_bytes();
        Self {
            info_hash_v1: hex::encode(Sha1::digest(&bytes)),
            info_hash_v2: Sha256Digest(Sha256::digest(&bytes).into()),
            pieces_root: Sha256Digest(pieces_root),
            v1_only_info_hash: hex::encode(Sha1::digest(&v1_only)),
        }
    }

    /// Checks that the v1 hashes are 40 hex digits.
    pub fn check(&self) -> Result<(), ManifestError> {
        for (name, text) in [
            ("info_hash_v1", &self.info_hash_v1),
            ("v1_only_info_hash", &self.v1_only_info_hash),
        ] {
            let mut out = [0u8; 20];
            hex::decode_to_slice(text, &mut out)
                .map_err(|_| ManifestError::Layout(format!("swarm.{name} is not 40 hex digits")))?;
        }
        Ok(())
    }
}

/// SHA-1 and v2 hashes of every piece, fed piece by piece.
#[derive(Debug, Clone)]
pub struct PieceHashes {
    piece_length: usize,
    size: u64,
    sha1: Vec<[u8; 20]>,
    v2: Vec<[u8; 32]>,
    /// The first piece's block hashes: a file of one piece has its root over those alone.
    first_blocks: Vec<[u8; 32]>,
}

impl PieceHashes {
    /// `piece_length` must be a power of two of at least [`BLOCK_SIZE`] (BEP 52).
    pub fn new(piece_length: u64) -> Self {
        assert!(
            piece_length.is_power_of_two() && piece_length >= BLOCK_SIZE as u64,
            "BEP 52 piece length"
        );
        Self {
            piece_length: piece_length as usize,
            size: 0,
            sha1: Vec::new(),
            v2: Vec::new(),
            first_blocks: Vec::new(),
        }
    }

    /// Hashes the next piece: `piece_length` bytes, or fewer for the last.
    pub fn push(&mut self, piece: &[u8]) {
        assert!(
            !piece.is_empty() && piece.len() <= self.piece_length,
            "a piece is 1..=piece_length bytes"
        );
        self.sha1.push(Sha1::digest(piece).into());
        let blocks: Vec<[u8; 32]> = piece
            .chunks(BLOCK_SIZE)
            .map(|b| Sha256::digest(b).into())
            .collect();
        // Every piece's subtree has piece_length / 16 KiB leaves; blocks past the end of the
        // file are zero hashes (BEP 52, "pieces root").
        self.v2.push(merkle_root(
            &blocks,
            self.piece_length / BLOCK_SIZE,
            [0; 32],
        ));
        if self.first_blocks.is_empty() {
            self.first_blocks = blocks;
        }
        self.size += piece.len() as u64;
    }

    /// Hashes of a whole image in memory.
    pub fn of_image(image: &[u8], piece_length: u64) -> Self {
        let mut hashes = Self::new(piece_length);
        for piece in image.chunks(piece_length as usize) {
            hashes.push(piece);
        }
        hashes
    }

    /// The file's `pieces root`.
    pub fn pieces_root(&self) -> [u8; 32] {
        if self.v2.len() <= 1 {
            // No piece layer: the tree is as wide as the file's blocks, rounded up to a power
            // of two.
            return merkle_root(
                &self.first_blocks,
                self.first_blocks.len().next_power_of_two(),
                [0; 32],
            );
        }
        // The piece layer padded with roots of all-zero subtrees of one piece's height.
        let mut pad = [0u8; 32];
        for _ in 0..(self.piece_length / BLOCK_SIZE).trailing_zeros() {
            pad = hash_pair(&pad, &pad);
        }
        merkle_root(&self.v2, self.v2.len().next_power_of_two(), pad)
    }

    /// The piece layer (BEP 52 `piece layers` value): the v2 piece hashes, concatenated.
    pub fn piece_layer(&self) -> Vec<u8> {
        self.v2.concat()
    }

    pub fn pieces(&self) -> usize {
        self.sha1.len()
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

fn hash_pair(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of a binary SHA-256 tree over `leaves`, padded with `pad` to `width` (a power of
/// two, at least `leaves.len()`).
fn merkle_root(leaves: &[[u8; 32]], width: usize, pad: [u8; 32]) -> [u8; 32] {
    debug_assert!(width.is_power_of_two() && width >= leaves.len());
    let mut layer: Vec<[u8; 32]> = leaves.to_vec();
    layer.resize(width, pad);
    while layer.len() > 1 {
        layer = layer
            .chunks(2)
            .map(|pair| hash_pair(&pair[0], &pair[1]))
            .collect();
    }
    layer[0]
}

/// The file name in the torrent: the image digest's hex, `.erofs`.
pub fn file_name(image_digest: &str) -> String {
    format!(
        "{}.erofs",
        image_digest.strip_prefix("sha256:").unwrap_or(image_digest)
    )
}

/// The hybrid `info` dictionary: v1 single-file keys (`length`, `pieces`) beside v2's
/// (`file tree`, `meta version`), `private` set (BEP 27: peers from the tracker only, no DHT,
/// no peer exchange).
pub fn info_dict(name: &str, hashes: &PieceHashes) -> Value {
    let size = hashes.size() as i64;
    let file = Value::dict([(
        "",
        Value::dict([
            ("length", Value::Int(size)),
            ("pieces root", Value::Bytes(hashes.pieces_root().to_vec())),
        ]),
    )]);
    Value::dict([
        ("file tree", Value::dict([(name, file)])),
        ("length", Value::Int(size)),
        ("meta version", Value::Int(2)),
        ("name", Value::text(name)),
        ("piece length", Value::Int(hashes.piece_length as i64)),
        ("pieces", Value::Bytes(hashes.sha1.concat())),
        ("private", Value::Int(1)),
    ])
}

/// The torrent without its endpoints: `info`, and `piece layers` when the file is longer
/// than one piece (BEP 52). This is what a build stores.
pub fn torrent(name: &str, hashes: &PieceHashes) -> (Value, SwarmInfo) {
    let info = info_dict(name, hashes);
    let swarm = SwarmInfo::of(&info, hashes.pieces_root());
    let mut top = vec![("created by", Value::text("stampede")), ("info", info)];
    if hashes.pieces() > 1 {
        top.push((
            "piece layers",
            Value::Dict(
                [(
                    hashes.pieces_root().to_vec(),
                    Value::Bytes(hashes.piece_layer()),
                )]
                .into(),
            ),
        ));
    }
    (Value::dict(top), swarm)
}

/// `info` without its v2 keys (`file tree`, `meta version`).
fn v1_only_info(info: &Value) -> Value {
    let mut info = info.clone();
    if let Value::Dict(map) = &mut info {
        map.remove(&b"file tree"[..]);
        map.remove(&b"meta version"[..]);
    }
    info
}

/// The same torrent for v1-only clients: `info` without `file tree` and `meta version`, no
/// `piece layers`. Same pieces, same file, another info hash ([`SwarmInfo::v1_only_info_hash`]).
///
/// The hybrid is what v2 clients take; Debian 12's v1 clients cannot: transmission 3.00 refuses
/// any torrent with `file tree` (its bencode parser fails on the empty key that BEP 52 puts in
/// every file's entry), and aria2c 1.36 drops that empty key when it parses, so the info hash it
/// computes and announces is not the torrent's (and no correct peer would answer it).
pub fn v1_only(torrent: &Value) -> Option<Value> {
    let Value::Dict(top) = torrent else {
        return None;
    };
    let mut top = top.clone();
    top.remove(&b"piece layers"[..]);
    let info = v1_only_info(top.get(&b"info"[..])?);
    top.insert(b"info".to_vec(), info);
    Some(Value::Dict(top))
}

/// A stored torrent with the tracker's `announce` URL and the web seed (BEP 19 `url-list`: the
/// image's URL itself, as the torrent has one file) added, bencoded. `None`: not a torrent
/// dictionary.
pub fn with_endpoints(stored: &Value, announce: &str, web_seed: &str) -> Option<Vec<u8>> {
    let Value::Dict(map) = stored else {
        return None;
    };
    let mut map = map.clone();
    map.insert(b"announce".to_vec(), Value::text(announce));
    map.insert(
        b"url-list".to_vec(),
        Value::List(vec![Value::text(web_seed)]),
    );
    Some(Value::Dict(map).to_bytes())
}

/// `(v1, truncated v2)` info hashes of a torrent's `info` dictionary, as announced to trackers.
pub fn announced_hashes(torrent: &Value) -> Option<([u8; 20], [u8; 20])> {
    let info = torrent.get("info")?.to_bytes();
    let v1: [u8; 20] = Sha1::digest(&info).into();
    let v2: [u8; 32] = Sha256::digest(&info).into();
    let mut short = [0u8; 20];
    short.copy_from_slice(&v2[..20]);
    Some((v1, short))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn a_one_block_file_is_its_own_root() {
        let bytes = image(1000);
        let h = PieceHashes::of_image(&bytes, 1 << 20);
        assert_eq!(h.pieces_root(), <[u8; 32]>::from(Sha256::digest(&bytes)));
        let (t, _) = torrent("x", &h);
        assert!(t.get("piece layers").is_none(), "one piece: no layer");
    }

    #[test]
    fn a_single_piece_file_pads_to_its_own_blocks() {
        // Three blocks: the root is over four leaves (the fourth zero), not sixty-four.
        let bytes = image(2 * BLOCK_SIZE + 5);
        let h = PieceHashes::of_image(&bytes, 1 << 20);
        let leaf = |i: usize| -> [u8; 32] {
            Sha256::digest(&bytes[i * BLOCK_SIZE..((i + 1) * BLOCK_SIZE).min(bytes.len())]).into()
        };
        let expected = hash_pair(
            &hash_pair(&leaf(0), &leaf(1)),
            &hash_pair(&leaf(2), &[0; 32]),
        );
        assert_eq!(h.pieces_root(), expected);
    }

    #[test]
    fn the_piece_layer_hashes_up_to_the_pieces_root() {
        // Three pieces of 32 KiB (two blocks each), the last one short.
        let bytes = image(2 * 32 * 1024 + 100);
        let h = PieceHashes::of_image(&bytes, 32 * 1024);
        assert_eq!(h.pieces(), 3);
        let leaf = |at: usize, len: usize| -> [u8; 32] {
            Sha256::digest(&bytes[at..(at + len).min(bytes.len())]).into()
        };
        let p0 = hash_pair(&leaf(0, BLOCK_SIZE), &leaf(BLOCK_SIZE, BLOCK_SIZE));
        let p1 = hash_pair(
            &leaf(2 * BLOCK_SIZE, BLOCK_SIZE),
            &leaf(3 * BLOCK_SIZE, BLOCK_SIZE),
        );
        let p2 = hash_pair(&leaf(4 * BLOCK_SIZE, 100), &[0; 32]);
        assert_eq!(h.piece_layer(), [p0, p1, p2].concat());
        let zero_piece = hash_pair(&[0; 32], &[0; 32]);
        assert_eq!(
            h.pieces_root(),
            hash_pair(&hash_pair(&p0, &p1), &hash_pair(&p2, &zero_piece))
        );
    }

    #[test]
    fn the_torrent_is_hybrid_private_and_its_hashes_are_the_info_dicts() {
        let bytes = image(3 * (1 << 20) + 7);
        let h = PieceHashes::of_image(&bytes, 1 << 20);
        let name = file_name("sha256:abcd");
        assert_eq!(name, "abcd.erofs");
        let (stored, swarm) = torrent(&name, &h);
        let served = with_endpoints(
            &stored,
            "http://198.18.0.1:8080/a",
            "http://198.18.0.1:8080/i",
        )
        .expect("a dictionary");
        let t = Value::decode(&served).expect("canonical bencode");
        let info = t.get("info").expect("info");
        assert_eq!(info.get("private").and_then(Value::as_int), Some(1));
        assert_eq!(info.get("meta version").and_then(Value::as_int), Some(2));
        assert_eq!(
            info.get("length").and_then(Value::as_int),
            Some(bytes.len() as i64)
        );
        assert_eq!(
            info.get("piece length").and_then(Value::as_int),
            Some(1 << 20)
        );
        let pieces = info
            .get("pieces")
            .and_then(Value::as_bytes)
            .expect("pieces");
        assert_eq!(pieces.len(), 4 * 20);
        assert_eq!(
            &pieces[..20],
            &<[u8; 20]>::from(Sha1::digest(&bytes[..1 << 20]))[..]
        );
        let layer = t
            .get("piece layers")
            .and_then(|l| match l {
                Value::Dict(m) => m.get(&swarm.pieces_root.0[..]),
                _ => None,
            })
            .and_then(Value::as_bytes)
            .expect("the piece layer under the pieces root");
        assert_eq!(layer.len(), 4 * 32);
        let (v1, v2) = announced_hashes(&t).expect("hashes");
        assert_eq!(hex::encode(v1), swarm.info_hash_v1);
        assert_eq!(v2, swarm.info_hash_v2.0[..20]);
        assert_eq!(
            t.get("url-list"),
            Some(&Value::List(vec![Value::text("http://198.18.0.1:8080/i")]))
        );
        let legacy = v1_only(&t).expect("v1 only");
        let legacy_info = legacy.get("info").expect("info");
        assert!(legacy_info.get("file tree").is_none() && legacy.get("piece layers").is_none());
        assert_eq!(legacy_info.get("pieces"), info.get("pieces"));
        let (legacy_v1, _) = announced_hashes(&legacy).unwrap();
        assert_eq!(hex::encode(legacy_v1), swarm.v1_only_info_hash);
        assert_ne!(swarm.v1_only_info_hash, swarm.info_hash_v1);
        // Endpoints are outside `info`: the hashes do not depend on the appliance's address.
        let elsewhere = with_endpoints(&stored, "http://10.0.0.1/a", "http://10.0.0.1/i").unwrap();
        let elsewhere = Value::decode(&elsewhere).unwrap();
        assert_eq!(announced_hashes(&elsewhere), Some((v1, v2)));
    }
}
