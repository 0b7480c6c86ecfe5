//! Root manifests: a root filesystem image cut into content-addressed chunks, described by a
//! document signed with the appliance's ed25519 key.
//!
//! The signed document is the manifest's JSON text itself, carried as a string inside an
//! envelope, so the signature covers exact bytes and no canonical form of JSON is needed:
//!
//! ```json
//! {"manifest": "{\"version\":1,...}", "key": "<hex public key>", "signature": "<hex>"}
//! ```
//!
//! A node holds the appliance's public key (built into its initramfs), verifies the envelope with
//! [`SignedManifest::verify`] before it reads a field, and checks every chunk with
//! [`Chunk::check`] before the chunk touches its root. Chunks are named by their SHA-256 alone, so
//! two images that share bytes share chunks, in the store and on the wire.
use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest format this code writes and reads.
pub const VERSION: u32 = 1;

/// Chunk size: 1 MiB. Small enough that a lost or corrupt chunk costs little to fetch again
/// and that a node keeps many in flight; large enough that a 1 GiB root is 1,024 requests and a
/// manifest of about 100 KiB. A power of two, so a chunk can later be a BitTorrent v2 piece
/// (BEP 52 wants powers of two of at least 16 KiB).
pub const CHUNK_SIZE: u64 = 1 << 20;

/// A manifest larger than this is refused before parsing (a 1 GiB root at [`CHUNK_SIZE`] needs
/// about 100 KiB; this leaves room for roots of tens of GiB).
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;

/// The file system a root image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFormat {
    Erofs,
}

impl RootFormat {
    /// The name `mount(2)` knows it by.
    pub fn fstype(self) -> &'static str {
        match self {
            Self::Erofs => "erofs",
        }
    }
}

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case); `sha256:` in front is accepted.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        let mut out = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
            return Err(ManifestError::BadDigest(text.chars().take(80).collect()));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One chunk of the root image: bytes `offset..offset + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub sha256: Sha256Digest,
    pub size: u64,
}

impl Chunk {
    /// Checks bytes fetched for this chunk: length, then SHA-256.
    pub fn check(&self, bytes: &[u8]) -> Result<(), ChunkError> {
        if bytes.len() as u64 != self.size {
            return Err(ChunkError::Length {
                chunk: self.sha256,
                expected: self.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Sha256Digest::of(bytes);
        if actual != self.sha256 {
            return Err(ChunkError::Digest {
                chunk: self.sha256,
                actual,
            });
        }
        Ok(())
    }
}

/// What a node needs to assemble, verify and start a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootManifest {
    pub version: u32,
    /// The image's name as imported (`debian:12`), for people.
    pub name: String,
    /// The OCI image manifest's digest the root was built from (`sha256:...`).
    pub image: String,
    pub format: RootFormat,
    /// Bytes in the root image; the chunks add up to it.
    pub size: u64,
    /// Every chunk but the last is this long.
    pub chunk_size: u64,
    pub chunks: Vec<Chunk>,
    /// What the node executes as PID 1 of the root (`/sbin/init`).
    pub init: String,
    /// The kernel release whose modules the image holds (`6.1.0-28-amd64`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// The root's torrent (its pieces are the chunks): info hashes and v2 `pieces root`, so
    /// that a node trusts a torrent or a piece layer because this signed manifest names them.
    /// Absent in manifests written before roots had torrents; those still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<crate::torrent::SwarmInfo>,
}

impl RootManifest {
    /// Cuts `image` into [`CHUNK_SIZE`] chunks and describes it.
    pub fn describe(
        name: &str,
        image_digest: &str,
        format: RootFormat,
        image: &[u8],
        init: &str,
        kernel_release: Option<String>,
    ) -> Self {
        let (_, swarm) = crate::torrent::torrent(
            &crate::torrent::file_name(image_digest),
            &crate::torrent::PieceHashes::of_image(image, CHUNK_SIZE),
        );
        let chunks = image
            .chunks(CHUNK_SIZE as usize)
            .map(|bytes| Chunk {
                sha256: Sha256Digest::of(bytes),
                size: bytes.len() as u64,
            })
            .collect();
        Self {
            version: VERSION,
            name: name.to_owned(),
            image: image_digest.to_owned(),
            format,
            size: image.len() as u64,
            chunk_size: CHUNK_SIZE,
            chunks,
            init: init.to_owned(),
            kernel_release,
            swarm: (!image.is_empty()).then_some(swarm),
        }
    }

    /// Byte offset of chunk `index` in the image.
    pub fn offset(&self, index: usize) -> u64 {
        index as u64 * self.chunk_size
    }

    /// Checks that the chunks describe exactly `size` bytes in `chunk_size` steps, so a node can
    /// place each chunk without trusting anything but the manifest's own arithmetic.
    pub fn check_layout(&self) -> Result<(), ManifestError> {
        if self.version != VERSION {
            return Err(ManifestError::Version(self.version));
        }
        if self.chunk_size == 0 || !self.chunk_size.is_power_of_two() {
            return Err(ManifestError::Layout(format!(
                "chunk_size {} is not a power of two",
                self.chunk_size
            )));
        }
        let mut total = 0u64;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let last = i + 1 == self.chunks.len();
            let fits = if last {
                chunk.size > 0 && chunk.size <= self.chunk_size
            } else {
                chunk.size == self.chunk_size
            };
            if !fits {
                return Err(ManifestError::Layout(format!(
                    "chunk {i} is {} bytes with chunk_size {}",
                    chunk.size, self.chunk_size
                )));
            }
            total = total.saturating_add(chunk.size);
        }
        if total != self.size {
            return Err(ManifestError::Layout(format!(
                "chunks add up to {total} bytes, the image is {}",
                self.size
            )));
        }
        if let Some(swarm) = &self.swarm {
            swarm.check()?;
        }
        if !self.init.starts_with('/') {
            return Err(ManifestError::Layout(format!(
                "init {:?} is not an absolute path",
                self.init
            )));
        }
        Ok(())
    }
}

/// The envelope a node fetches: the manifest's text, the key that signed it and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest's JSON text, exactly as signed.
    pub manifest: String,
    /// The signer's ed25519 public key, hex. Informational: a node verifies with its own copy.
    pub key: String,
    /// ed25519 signature over the bytes of `manifest`, hex.
    pub signature: String,
}

impl SignedManifest {
    /// Signs `manifest` with `key`.
    pub fn sign(manifest: &RootManifest, key: &SigningKey) -> Self {
        let text = serde_json::to_string(manifest).expect("a manifest always serialises");
        let signature = key.sign(text.as_bytes());
        Self {
            manifest: text,
            key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// The envelope as the bytes served to nodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an envelope always serialises")
    }

    /// Parses an envelope (not yet trusted).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))
    }

    /// Verifies the signature with `trusted` and only then parses and checks the manifest.
    pub fn verify(&self, trusted: &VerifyingKey) -> Result<RootManifest, ManifestError> {
        let mut raw = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut raw).map_err(|_| ManifestError::BadSignature)?;
        let signature = Signature::from_bytes(&raw);
        trusted
            .verify(self.manifest.as_bytes(), &signature)
            .map_err(|_| ManifestError::BadSignature)?;
        let manifest: RootManifest = serde_json::from_str(&self.manifest)
            .map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.check_layout()?;
        Ok(manifest)
    }
}

/// Parses a hex ed25519 public key (as written into the node initramfs).
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, ManifestError> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut raw).map_err(|_| ManifestError::BadKey)?;
    VerifyingKey::from_bytes(&raw).map_err(|_| ManifestError::BadKey)
}

pub use ed25519_dalek::{SigningKey as ManifestSigningKey, VerifyingKey as ManifestVerifyingKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is {0} bytes, more than a manifest may be")]
    TooLarge(usize),
    #[error("the manifest is not valid JSON: {0}")]
    Syntax(String),
    #[error("the manifest's signature does not verify with this node's appliance key")]
    BadSignature,
    #[error("not an ed25519 public key in hex")]
    BadKey,
    #[error("manifest version {0} is not supported (this node reads version {VERSION})")]
    Version(u32),
    #[error("the manifest's chunks do not add up: {0}")]
    Layout(String),
    #[error("{0:?} is not a SHA-256 digest")]
    BadDigest(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {chunk} came with {actual} bytes, not {expected}")]
    Length {
        chunk: Sha256Digest,
        expected: u64,
        actual: u64,
    },
    #[error("chunk {chunk} hashes to {actual}: corrupt")]
    Digest {
        chunk: Sha256Digest,
        actual: Sha256Digest,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn manifest(len: usize) -> RootManifest {
        RootManifest::describe(
            "small",
            "sha256:00",
            RootFormat::Erofs,
            &image(len),
            "/sbin/init",
            None,
        )
    }

    #[test]
    fn chunks_cover_the_image_and_check_their_bytes() {
        let bytes = image(2 * CHUNK_SIZE as usize + 5);
        let m = manifest(bytes.len());
        assert_eq!(m.chunks.len(), 3);
        assert_eq!(m.chunks[2].size, 5);
        m.check_layout().expect("layout");
        for (i, chunk) in m.chunks.iter().enumerate() {
            let start = m.offset(i) as usize;
            let part = &bytes[start..start + chunk.size as usize];
            chunk.check(part).expect("own bytes");
            let mut bad = part.to_vec();
            bad[0] ^= 1;
            assert!(matches!(chunk.check(&bad), Err(ChunkError::Digest { .. })));
            assert!(matches!(
                chunk.check(&part[1..]),
                Err(ChunkError::Length { .. })
            ));
        }
    }

    #[test]
    fn a_signed_manifest_verifies_only_with_its_key_and_unchanged() {
        let m = manifest(3000);
        let signed = SignedManifest::sign(&m, &key(1));
        let parsed = SignedManifest::from_bytes(&signed.to_bytes()).expect("parses");
        assert_eq!(parsed.verify(&key(1).verifying_key()), Ok(m.clone()));
        assert_eq!(
            parsed.verify(&key(2).verifying_key()),
            Err(ManifestError::BadSignature)
        );
        let mut changed = parsed.clone();
        changed.manifest = changed.manifest.replace("/sbin/init", "/bin/shhhh");
        assert_eq!(
            changed.verify(&key(1).verifying_key()),
            Err(ManifestError::BadSignature)
        );
        let mut garbled = parsed;
        garbled.signature = "zz".into();
        assert_eq!(
            garbled.verify(&key(1).verifying_key()),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn a_signed_manifest_whose_chunks_do_not_add_up_is_refused() {
        let mut m = manifest(3000);
        m.size += 1;
        let signed = SignedManifest::sign(&m, &key(1));
        assert!(matches!(
            signed.verify(&key(1).verifying_key()),
            Err(ManifestError::Layout(_))
        ));
    }

    #[test]
    fn a_manifest_from_before_torrents_still_verifies() {
        let mut m = manifest(3000);
        assert!(m.swarm.is_some(), "new manifests name their torrent");
        m.swarm = None;
        let signed = SignedManifest::sign(&m, &key(1));
        assert!(!signed.manifest.contains("swarm"), "{}", signed.manifest);
        assert_eq!(signed.verify(&key(1).verifying_key()), Ok(m));
    }

    #[test]
    fn digests_parse_with_or_without_their_prefix() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(Sha256Digest::parse(&d.to_hex()), Ok(d));
        assert_eq!(Sha256Digest::parse(&format!("sha256:{d}")), Ok(d));
        assert!(Sha256Digest::parse("sha256:xyz").is_err());
    }
}
