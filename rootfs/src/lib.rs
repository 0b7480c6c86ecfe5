//! Diskless roots: what turns an OCI image into the root filesystem every machine mounts.
//!
//! - [`manifest`]: a root image is cut into content-addressed chunks, described by a manifest
//!   (chunk digests and sizes, the image's digest) signed with the appliance's ed25519 key. The
//!   node agent verifies the signature with the key built into its initramfs, and every chunk's
//!   SHA-256 before it uses it. This module is all the node agent takes from the crate.
pub mod manifest;

/// A root image as a hybrid BitTorrent v1/v2 torrent whose pieces are the manifest's chunks.
pub mod torrent;

/// The node initramfs: the node agent, the manifest key and the modules a root needs.
#[cfg(feature = "build")]
pub mod initramfs;

/// Layer blobs: gzip, zstd or plain tar, told apart by their magic bytes.
#[cfg(feature = "layers")]
pub mod layer;

/// OCI layers applied in order (whiteouts, opaque directories, hard links) into one tree.
#[cfg(feature = "layers")]
pub mod flatten;

/// OCI images read from a layout, an archive or a registry, every blob verified into a cache.
#[cfg(feature = "build")]
pub mod oci;

/// The OCI distribution API v2 client behind `docker://` sources.
#[cfg(feature = "build")]
mod registry;

/// A flattened tree written as an uncompressed erofs image.
#[cfg(feature = "layers")]
pub mod erofs;
