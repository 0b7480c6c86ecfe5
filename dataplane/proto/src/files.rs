//! What the TFTP and HTTP cores serve: boot files looked up by [`BootPath`] in a catalog the
//! caller provides.
//!
//! The cores never open files themselves. The appliance backs the catalog with its
//! content-addressed store (each file mapped once, shared by every transfer); tests and the
//! benchmark use [`MemoryCatalog`]. File contents are [`Bytes`]: cloning one is a reference-count
//! increment, so a thousand transfers of one kernel hold one copy of it.
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use bytes::Bytes;

use crate::bootpath::BootPath;

/// One servable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFile {
    pub data: Bytes,
    /// Strong validator for HTTP (`ETag`, RFC 9110 §8.8.3): the store uses the SHA-256 in hex.
    pub etag: Option<String>,
    /// Last modification, seconds since the Unix epoch (HTTP `Last-Modified`).
    pub modified_unix: Option<u64>,
    /// A descriptor whose contents are exactly `data` and can never change, if the catalog has
    /// one: an engine can then hand the kernel page references (`sendfile`) instead of copying
    /// `data` into every socket. The cores only carry it.
    pub file: Option<SealedFile>,
}

impl BootFile {
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            etag: None,
            modified_unix: None,
            file: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A shared descriptor of an immutable file (the store makes them as sealed memfds: no write,
/// grow or shrink is possible, see `memfd_create(2)` and `F_ADD_SEALS` in `fcntl(2)`; or, for
/// the root cache, whose files are renamed into place and never written again, opens the file
/// on disk itself read-only).
///
/// Whoever builds one promises the file's bytes equal the [`BootFile::data`] it travels with,
/// for as long as the descriptor lives. Equality is identity (the same descriptor).
#[derive(Clone)]
pub struct SealedFile(Arc<OwnedFd>);

impl SealedFile {
    /// Wraps `fd`, which must be sealed against writes and size changes (see the type's doc).
    pub fn new(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }
}

impl AsFd for SealedFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl PartialEq for SealedFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SealedFile {}

impl std::fmt::Debug for SealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd as _;
        f.debug_tuple("SealedFile")
            .field(&self.0.as_raw_fd())
            .finish()
    }
}

/// Why a lookup found nothing servable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no such file")]
    NotFound,
    /// The name resolved outside the served root (a symlink leaving it).
    #[error("file resolves outside the served root")]
    OutsideRoot,
    /// A directory, device, socket or anything else that is not a regular file.
    #[error("not a regular file")]
    NotAFile,
    #[error("file could not be read: {0}")]
    Unreadable(String),
}

/// Source of boot files.
pub trait FileCatalog {
    fn open(&self, path: &BootPath) -> Result<BootFile, OpenError>;
}

/// An in-memory catalog, for tests and simulated clients.
#[derive(Debug, Clone, Default)]
pub struct MemoryCatalog {
    files: HashMap<BootPath, BootFile>,
}

impl MemoryCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a file. Panics if `name` is not a valid [`BootPath`]: catalogs are built
    /// by code, not from client input.
    pub fn insert(&mut self, name: &str, file: BootFile) -> &mut Self {
        let path = BootPath::parse(name.as_bytes())
            .unwrap_or_else(|reason| panic!("catalog name {name:?} is invalid: {reason}"));
        self.files.insert(path, file);
        self
    }
}

impl FileCatalog for MemoryCatalog {
    fn open(&self, path: &BootPath) -> Result<BootFile, OpenError> {
        self.files.get(path).cloned().ok_or(OpenError::NotFound)
    }
}

impl<T: FileCatalog + ?Sized> FileCatalog for &T {
    fn open(&self, path: &BootPath) -> Result<BootFile, OpenError> {
        (**self).open(path)
    }
}

impl<T: FileCatalog + ?Sized> FileCatalog for Arc<T> {
    fn open(&self, path: &BootPath) -> Result<BootFile, OpenError> {
        (**self).open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_catalog_shares_contents() {
        let mut catalog = MemoryCatalog::new();
        catalog.insert("efi/snponly.efi", BootFile::new(vec![1u8, 2, 3]));
        let path = BootPath::parse(b"efi//snponly.efi").unwrap();
        let a = catalog.open(&path).unwrap();
        let b = catalog.open(&path).unwrap();
        assert_eq!(a.data.as_ptr(), b.data.as_ptr(), "clones share one buffer");
        assert_eq!(
            catalog.open(&BootPath::parse(b"nope").unwrap()),
            Err(OpenError::NotFound)
        );
    }
}
