//! Where boot files come from: a served directory ([`BootRoot`]) and a content-addressed store
//! ([`ContentStore`]).
//!
//! Both read each file into memory once and hand out [`Bytes`]: a thousand machines fetching the
//! same kernel share one buffer, and a transfer never touches the file system after it starts.
//! The buffer is a sealed memfd ([`crate::sys::memfile`]) mapped into memory, so HTTP can
//! `sendfile` the same pages instead of copying them into every socket, and no write to the
//! served directory can reach a file already loaded. A directory whose files are never written
//! in place (the root cache) is served as it is on disk instead ([`BootRoot::in_place`]).
//! Lookups happen when a transfer starts, not per packet, so a lock around each cache is fine.
use std::{
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use stampede_proto::{
    bootpath::BootPath,
    files::{BootFile, FileCatalog, OpenError, SealedFile},
};

use crate::sys::memfile;

/// How many times a load is retried when the file changes while it is being read (an operator
/// copying a new image in place). After that the request fails as unreadable rather than serving
/// a torn file.
const LOAD_ATTEMPTS: usize = 3;

/// Errors setting up a store or importing into it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the content to import failed")]
    ImportSource(#[source] io::Error),
    #[error("object {0} is not in the store")]
    NotFound(Digest),
    /// The imported bytes are not the ones the caller named; nothing was stored.
    #[error("content hashes to {actual}, not the expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The bytes on disk no longer hash to their name: disk corruption or tampering.
    #[error("object {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
}

impl StoreError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// What identifies one version of a file on disk. A file replaced by rename gets a new inode; one
/// rewritten in place gets a new size or mtime (nanosecond resolution on every file system the
/// appliance uses), so an unchanged identity means the cached bytes are still the file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_sec: i64,
    mtime_nsec: i64,
}

impl FileIdentity {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Debug, Clone)]
struct CachedFile {
    identity: FileIdentity,
    file: BootFile,
}

/// A directory served as a [`FileCatalog`].
///
/// Names are [`BootPath`]s, so they cannot leave the root lexically; symlinks are resolved and the
/// result must still be inside the root (canonical paths compared), so a link to `/etc/shadow` is
/// refused even though it is a perfectly good name. Cloning shares the cache.
#[derive(Debug, Clone)]
pub struct BootRoot {
    inner: Arc<BootRootInner>,
    max_file_size: Option<u64>,
    /// Files are mapped where they are instead of copied ([`BootRoot::in_place`]).
    in_place: bool,
}

#[derive(Debug)]
struct BootRootInner {
    /// Canonical (symlink-free, absolute) path of the served directory.
    root: PathBuf,
    cache: RwLock<HashMap<PathBuf, CachedFile>>,
    loads: AtomicU64,
}

impl BootRoot {
    /// Serves `dir`, which must exist and be a directory.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let root = fs::canonicalize(dir).map_err(StoreError::io("resolving boot root", dir))?;
        let meta = fs::metadata(&root).map_err(StoreError::io("reading boot root", &root))?;
        if !meta.is_dir() {
            return Err(StoreError::Io {
                op: "serving boot root",
                path: root,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(Self {
            inner: Arc::new(BootRootInner {
                root,
                cache: RwLock::default(),
                loads: AtomicU64::new(0),
            }),
            max_file_size: None,
            in_place: false,
        })
    }

    /// Serves files as they are on disk ([`memfile::map_in_place`]): mapped, not copied, and
    /// sent with `sendfile` from the file itself, so a root image costs its page cache once and
    /// the kernel reads it through the file system's (large) folios.
    ///
    /// Only for a directory whose files are never written in place: the root cache, where
    /// every file is written under a temporary name and renamed into place, and a changed root
    /// or chunk gets a new name (see `src/roots.rs`). A served directory an operator copies
    /// files into (the boot root) keeps the default, a sealed copy that no write can reach.
    pub fn in_place(mut self) -> Self {
        self.in_place = true;
        self
    }

    /// Refuses (as [`OpenError::Unreadable`]) files larger than `bytes`, so a stray disk image
    /// dropped into the root cannot pull gigabytes into memory.
    pub fn with_max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = Some(bytes);
        self
    }

    /// The canonical served directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How many times a file was read from disk (cache misses), for metrics and tests.
    pub fn loads(&self) -> u64 {
        self.inner.loads.load(Ordering::Relaxed)
    }

    /// Number of files held in memory.
    pub fn cached_files(&self) -> usize {
        self.read_cache().len()
    }

    /// Drops cached files that were deleted or changed on disk since they were loaded. Lookups
    /// already reload changed files; this frees the memory of ones nobody asks for any more.
    pub fn prune(&self) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.retain(|path, cached| {
            fs::metadata(path).is_ok_and(|meta| FileIdentity::of(&meta) == cached.identity)
        });
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PathBuf, CachedFile>> {
        // A panic while holding the lock cannot leave the map half-updated (inserts are single
        // calls), so a poisoned cache is still consistent.
        self.inner.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(&self, path: &BootPath) -> Result<PathBuf, OpenError> {
        let joined = self.inner.root.join(path.as_str());
        let canonical = fs::canonicalize(&joined).map_err(|e| open_error(&e))?;
        if !canonical.starts_with(&self.inner.root) {
            return Err(OpenError::OutsideRoot);
        }
        Ok(canonical)
    }

    fn load(&self, canonical: &Path) -> Result<BootFile, OpenError> {
        // O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears;
        // with it the open returns and fstat below refuses the FIFO. O_NOFOLLOW: `canonical` has
        // no symlinks, so one appearing now means the file was swapped after we resolved it.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(canonical)
            .map_err(|e| open_error(&e))?;
        // A directory on the path could have been swapped for a symlink between canonicalize and
        // open; the kernel's own name for the open file settles where we really are.
        if let Ok(actual) = fs::read_link(format!("/proc/self/fd/{}", fd_number(&file)))
            && !actual.starts_with(&self.inner.root)
        {
            return Err(OpenError::OutsideRoot);
        }
        let mut meta = file.metadata().map_err(|e| open_error(&e))?;
        if !meta.is_file() {
            return Err(OpenError::NotAFile);
        }
        for _ in 0..LOAD_ATTEMPTS {
            let identity = FileIdentity::of(&meta);
            if let Some(cached) = self.read_cache().get(canonical)
                && cached.identity == identity
            {
                return Ok(cached.file.clone());
            }
            if let Some(limit) = self.max_file_size
                && identity.size > limit
            {
                return Err(OpenError::Unreadable(format!(
                    "file is {} bytes, over the {limit}-byte limit",
                    identity.size
                )));
            }
            self.inner.loads.fetch_add(1, Ordering::Relaxed);
            let (data, shared) = if self.in_place {
                let own = file.try_clone().map_err(|e| open_error(&e))?;
                memfile::map_in_place(own).map_err(|e| open_error(&e))?
            } else {
                let data = read_all(&file, identity.size).map_err(|e| open_error(&e))?;
                (Bytes::from(data), None)
            };
            let etag = Some(hex::encode(Sha256::digest(&data)));
            meta = file.metadata().map_err(|e| open_error(&e))?;
            if FileIdentity::of(&meta) != identity || data.len() as u64 != identity.size {
                // Written to while we read it: try again rather than cache a torn mix.
                continue;
            }
            let (data, file) = match shared {
                Some(file) => (data, Some(file)),
                None if self.in_place => (data, None),
                None => share(canonical, data),
            };
            let file = BootFile {
                etag,
                modified_unix: mtime_unix(&meta),
                data,
                file,
            };
            // Two transfers racing on a cold file may both load it; the second insert wins and
            // both results are correct, so no per-file lock is worth having.
            self.inner
                .cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    canonical.to_path_buf(),
                    CachedFile {
                        identity,
                        file: file.clone(),
                    },
                );
            return Ok(file);
        }
        Err(OpenError::Unreadable(
            "file kept changing while being read".into(),
        ))
    }
}

/// What the root cache names a file while it writes it, before the rename (`write_file` in
/// `src/roots.rs`): never served in place, where its bytes may still change.
const BEING_WRITTEN: &str = ".part";

impl FileCatalog for BootRoot {
    fn open(&self, path: &BootPath) -> Result<BootFile, OpenError> {
        if self.in_place && path.as_str().ends_with(BEING_WRITTEN) {
            return Err(OpenError::NotFound);
        }
        let canonical = self.resolve(path)?;
        self.load(&canonical)
    }
}

fn fd_number(file: &File) -> i32 {
    use std::os::fd::AsRawFd as _;
    file.as_raw_fd()
}

fn open_error(e: &io::Error) -> OpenError {
    match e.kind() {
        // ENOTDIR: a component of the name is a regular file (`kernel/x` where `kernel` is one).
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => OpenError::NotFound,
        io::ErrorKind::IsADirectory => OpenError::NotAFile,
        _ => OpenError::Unreadable(e.to_string()),
    }
}

fn mtime_unix(meta: &fs::Metadata) -> Option<u64> {
    let modified = meta.modified().ok()?;
    modified
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Moves a loaded file into a sealed memfd (see the module doc), or keeps it on the heap, without
/// `sendfile`, if the kernel refuses (no memfd, out of memory for a second copy while sealing).
fn share(path: &Path, data: Bytes) -> (Bytes, Option<SealedFile>) {
    let name = path.file_name().map(|n| n.to_string_lossy());
    match memfile::seal(name.as_deref().unwrap_or("boot-file"), &data) {
        Ok(shared) => shared,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no sealed memfd for this file; serving it from the heap (HTTP copies it)");
            (data, None)
        }
    }
}

/// Reads the whole file. `expected` sizes the buffer; a file that grew is still read to its end
/// (and then refused by the identity check).
fn read_all(mut file: &File, expected: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// A SHA-256 digest: the name of an object in the [`ContentStore`], and its HTTP `ETag`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("a SHA-256 digest is 64 hex digits, got {0} characters")]
    Length(usize),
    #[error("digest contains a character that is not a hex digit")]
    NotHex,
}

impl Digest {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(DigestParseError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError::NotHex)?;
        Ok(Self(out))
    }
}

/// A content-addressed store: each object lives at `<root>/sha256/<first 2 hex>/<other 62 hex>`,
/// named by the SHA-256 of its bytes, so importing the same image twice stores it once and a
/// name can never point at different content.
///
/// Imports write to `<root>/tmp` (same file system, so the final `rename(2)` is atomic), fsync the
/// data, then rename: a reader sees either no object or the complete one, and after a crash the
/// object is either absent or whole. Cloning shares the in-memory cache.
#[derive(Debug, Clone)]
pub struct ContentStore {
    inner: Arc<ContentStoreInner>,
}

#[derive(Debug)]
struct ContentStoreInner {
    root: PathBuf,
    cache: RwLock<HashMap<Digest, (Bytes, Option<SealedFile>)>>,
    loads: AtomicU64,
    temp_counter: AtomicU64,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open_dir(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        for dir in [root.join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(StoreError::io("creating store directory", &dir))?;
        }
        Ok(Self {
            inner: Arc::new(ContentStoreInner {
                root,
                cache: RwLock::default(),
                loads: AtomicU64::new(0),
                temp_counter: AtomicU64::new(0),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the object named `digest` lives (whether or not it exists).
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.inner
            .root
            .join("sha256")
            .join(&hex[..2])
            .join(&hex[2..])
    }

    /// How many objects were read from disk (cache misses), for metrics and tests.
    pub fn loads(&self) -> u64 {
        self.inner.loads.load(Ordering::Relaxed)
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.object_path(digest).is_file()
    }

    /// Imports the file at `path`.
    pub fn import_file(&self, path: impl AsRef<Path>) -> Result<Digest, StoreError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(StoreError::io("opening file to import", path))?;
        self.import_reader(file)
    }

    /// Imports everything `source` yields, hashing while copying. On any error nothing appears
    /// under a final name and the temporary file is removed.
    pub fn import_reader(&self, source: impl Read) -> Result<Digest, StoreError> {
        self.import_reader_expecting(source, None)
    }

    /// [`Self::import_reader`], refusing content that does not hash to `expected` (when given):
    /// then nothing appears in the store and the error says what the content hashed to.
    pub fn import_reader_expecting(
        &self,
        mut source: impl Read,
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        let temp_path = self.temp_path();
        let mut temp = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp_path)
            .map_err(StoreError::io("creating temporary object", &temp_path))?;
        let guard = TempFileGuard(Some(temp_path.clone()));

        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::ImportSource(e)),
            };
            hasher.update(&chunk[..n]);
            temp.write_all(&chunk[..n])
                .map_err(StoreError::io("writing temporary object", &temp_path))?;
        }
        let digest = Digest(hasher.finalize().into());
        if let Some(expected) = expected.filter(|e| **e != digest) {
            // The guard removes the temporary copy.
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual: digest,
            });
        }
        let final_path = self.object_path(&digest);
        if final_path.is_file() {
            // Already stored: same name, same bytes. The guard removes our copy.
            return Ok(digest);
        }
        // Objects never change once named; read-only says so to anyone poking at the directory.
        temp.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io("sealing temporary object", &temp_path))?;
        // Data must be durable before the name is, or a crash could leave a named, empty object
        // (ext4's auto_da_alloc hides this for rename-over, not for a new name).
        temp.sync_all()
            .map_err(StoreError::io("syncing temporary object", &temp_path))?;
        drop(temp);
        let dir = final_path.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).map_err(StoreError::io("creating object directory", dir))?;
        fs::rename(&temp_path, &final_path)
            .map_err(StoreError::io("naming object", &final_path))?;
        guard.disarm();
        // The rename itself is durable only once the directory is synced.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("syncing object directory", dir))?;
        Ok(digest)
    }

    /// The object's bytes, read from disk once and then shared. The first load checks the hash,
    /// so a corrupt object is never served.
    pub fn open(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        self.load(digest).map(|(data, _)| data)
    }

    fn load(&self, digest: &Digest) -> Result<(Bytes, Option<SealedFile>), StoreError> {
        if let Some(loaded) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(loaded.clone());
        }
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        let loaded = share(&self.object_path(digest), self.read_checked(digest)?.into());
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        // Another thread may have loaded it meanwhile: keep theirs so every caller shares one
        // buffer.
        Ok(cache.entry(*digest).or_insert(loaded).clone())
    }

    /// The object as a servable file, with its digest as `ETag`.
    pub fn open_boot_file(&self, digest: &Digest) -> Result<BootFile, StoreError> {
        let (data, file) = self.load(digest)?;
        let modified_unix = fs::metadata(self.object_path(digest))
            .ok()
            .as_ref()
            .and_then(mtime_unix);
        Ok(BootFile {
            data,
            etag: Some(digest.to_hex()),
            modified_unix,
            file,
        })
    }

    /// Re-reads the object from disk (not the cache) and checks it still hashes to its name.
    pub fn verify(&self, digest: &Digest) -> Result<(), StoreError> {
        self.read_checked(digest).map(drop)
    }

    fn read_checked(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(digest);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*digest));
            }
            Err(e) => return Err(StoreError::io("reading object", path)(e)),
        };
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(StoreError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(data)
    }

    /// Removes temporary objects left by imports of processes that no longer run (killed in
    /// the middle of an import); returns how many. Those of running processes, this one
    /// included, are left alone, so a store shared by two processes stays safe.
    pub fn remove_stale_temporaries(&self) -> Result<usize, StoreError> {
        let dir = self.inner.root.join("tmp");
        let entries =
            fs::read_dir(&dir).map_err(StoreError::io("listing temporary objects", &dir))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("import-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            if fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.inner.temp_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.inner
            .root
            .join("tmp")
            .join(format!("import-{}-{nanos}-{n}", std::process::id()))
    }
}

/// Removes a temporary object unless the import completed.
struct TempFileGuard(Option<PathBuf>);

impl TempFileGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("stampede-store-")
            .tempdir()
            .expect("creating a temporary directory")
    }

    fn path(name: &str) -> BootPath {
        BootPath::parse(name.as_bytes()).unwrap_or_else(|e| panic!("{name:?}: {e}"))
    }

    fn write(dir: &Path, name: &str, data: &[u8]) {
        let file = dir.join(name);
        fs::create_dir_all(file.parent().unwrap()).expect("creating parent directories");
        fs::write(&file, data).unwrap_or_else(|e| panic!("writing {file:?}: {e}"));
    }

    #[test]
    fn serves_nested_files_with_etag_and_mtime() {
        let dir = temp_dir();
        write(dir.path(), "efi/x64/snponly.efi", b"EFI image");
        let root = BootRoot::new(dir.path()).expect("boot root");
        let file = root
            .open(&path("efi/x64/snponly.efi"))
            .expect("nested file");
        assert_eq!(&file.data[..], b"EFI image");
        assert_eq!(
            file.etag.as_deref(),
            Some(Digest::of(b"EFI image").to_hex().as_str()),
            "ETag is the SHA-256 in hex"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mtime = file.modified_unix.expect("mtime is known");
        assert!(
            now.abs_diff(mtime) < 600,
            "mtime {mtime} is about now {now}"
        );
        assert_eq!(root.open(&path("efi/nope")), Err(OpenError::NotFound));
        assert_eq!(
            root.open(&path("efi/x64/snponly.efi/below")),
            Err(OpenError::NotFound),
            "a file used as a directory is simply not found"
        );
    }

    #[test]
    fn symlinks_inside_the_root_are_followed() {
        let dir = temp_dir();
        write(dir.path(), "images/vmlinuz-6.1", b"kernel");
        symlink("images/vmlinuz-6.1", dir.path().join("vmlinuz")).expect("symlink");
        symlink("images", dir.path().join("current")).expect("dir symlink");
        let root = BootRoot::new(dir.path()).expect("boot root");
        let via_link = root
            .open(&path("vmlinuz"))
            .expect("link to a file in the root");
        let via_dir = root
            .open(&path("current/vmlinuz-6.1"))
            .expect("link to a dir");
        assert_eq!(&via_link.data[..], b"kernel");
        assert_eq!(
            via_link.data.as_ptr(),
            via_dir.data.as_ptr(),
            "both names resolve to one canonical file, cached once"
        );
        assert_eq!(root.loads(), 1, "one canonical file, one load");
    }

    #[test]
    fn symlinks_escaping_the_root_are_refused() {
        let outside = temp_dir();
        write(outside.path(), "secret", b"shadow");
        let dir = temp_dir();
        symlink(outside.path().join("secret"), dir.path().join("secret")).expect("symlink");
        symlink(outside.path(), dir.path().join("escape")).expect("dir symlink");
        symlink("../", dir.path().join("up")).expect("relative symlink");
        let root = BootRoot::new(dir.path()).expect("boot root");
        for name in ["secret", "escape/secret", "up"] {
            assert_eq!(
                root.open(&path(name)),
                Err(OpenError::OutsideRoot),
                "{name} resolves outside the root"
            );
        }
        assert_eq!(root.loads(), 0, "nothing outside the root was read");
    }

    #[test]
    fn directories_and_fifos_are_not_files() {
        let dir = temp_dir();
        fs::create_dir(dir.path().join("pxelinux.cfg")).expect("mkdir");
        nix::unistd::mkfifo(
            &dir.path().join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        let root = BootRoot::new(dir.path()).expect("boot root");
        assert_eq!(root.open(&path("pxelinux.cfg")), Err(OpenError::NotAFile));
        // Would hang forever if the store opened the FIFO without O_NONBLOCK.
        assert_eq!(root.open(&path("fifo")), Err(OpenError::NotAFile));
    }

    #[test]
    fn unchanged_files_are_loaded_once_and_shared() {
        let dir = temp_dir();
        write(dir.path(), "undionly.kpxe", &[7u8; 100_000]);
        let root = BootRoot::new(dir.path()).expect("boot root");
        let a = root.open(&path("undionly.kpxe")).expect("first open");
        let b = root
            .clone()
            .open(&path("undionly.kpxe"))
            .expect("second open");
        assert_eq!(a.data.as_ptr(), b.data.as_ptr(), "one shared buffer");
        assert_eq!(root.loads(), 1, "the second open is served from memory");
        assert_eq!(root.cached_files(), 1);
    }

    #[test]
    fn in_place_files_are_sent_from_the_file_on_disk_and_renames_reload() {
        use std::os::fd::AsFd as _;
        let dir = temp_dir();
        let image: Vec<u8> = (0..300_000u32).map(|i| (i ^ (i >> 5)) as u8).collect();
        write(dir.path(), "image", &image);
        let root = BootRoot::new(dir.path()).expect("boot root").in_place();
        let v1 = root.open(&path("image")).expect("open");
        assert_eq!(&v1.data[..], &image[..]);
        assert_eq!(v1.etag, Some(hex::encode(Sha256::digest(&image))));
        // What HTTP sends from is the file on disk (its inode), not a memfd copy.
        let sent = nix::sys::stat::fstat(v1.file.as_ref().expect("a file to send").as_fd())
            .expect("fstat");
        let on_disk = fs::metadata(dir.path().join("image")).expect("stat");
        assert_eq!((sent.st_dev, sent.st_ino), (on_disk.dev(), on_disk.ino()));
        assert_eq!(
            root.open(&path("image")).expect("again").data.as_ptr(),
            v1.data.as_ptr()
        );
        assert_eq!(root.loads(), 1);

        // A new version renamed into place (how the root cache writes): a new inode, reloaded,
        // while a transfer of the old one keeps its bytes.
        write(dir.path(), "image.new", b"the next root");
        fs::rename(dir.path().join("image.new"), dir.path().join("image")).unwrap();
        let v2 = root.open(&path("image")).expect("open v2");
        assert_eq!(&v2.data[..], b"the next root");
        assert_eq!(&v1.data[..], &image[..]);
        assert_eq!(root.loads(), 2);

        write(dir.path(), "empty", b"");
        let empty = root.open(&path("empty")).expect("open empty");
        assert!(empty.data.is_empty() && empty.file.is_none());

        // A chunk still being written under its temporary name is not served.
        write(dir.path(), "0123.part", b"half a chunk");
        assert_eq!(root.open(&path("0123.part")), Err(OpenError::NotFound));
    }

    #[test]
    fn replaced_files_are_reloaded() {
        let dir = temp_dir();
        write(dir.path(), "boot.ipxe", b"#!ipxe\nv1\n");
        let root = BootRoot::new(dir.path()).expect("boot root");
        let old = root.open(&path("boot.ipxe")).expect("open v1");

        // Replace by rename, as deployment tools do: a new inode under the same name.
        write(dir.path(), "boot.ipxe.new", b"#!ipxe\nv2\n");
        fs::rename(
            dir.path().join("boot.ipxe.new"),
            dir.path().join("boot.ipxe"),
        )
        .unwrap();
        let new = root.open(&path("boot.ipxe")).expect("open v2");
        assert_eq!(&new.data[..], b"#!ipxe\nv2\n");
        assert_ne!(old.etag, new.etag, "new content, new ETag");
        assert_eq!(&old.data[..], b"#!ipxe\nv1\n", "running transfers keep v1");
        assert_eq!(root.loads(), 2);

        // Rewritten in place with a different size.
        write(dir.path(), "boot.ipxe", b"#!ipxe\nversion 3\n");
        let v3 = root.open(&path("boot.ipxe")).expect("open v3");
        assert_eq!(&v3.data[..], b"#!ipxe\nversion 3\n");
        assert_eq!(root.loads(), 3);
        root.open(&path("boot.ipxe")).expect("open v3 again");
        assert_eq!(root.loads(), 3, "unchanged since: no reload");

        fs::remove_file(dir.path().join("boot.ipxe")).unwrap();
        root.prune();
        assert_eq!(
            root.cached_files(),
            0,
            "deleted files leave the cache on prune"
        );
    }

    #[test]
    fn size_limit_refuses_large_files() {
        let dir = temp_dir();
        write(dir.path(), "small", &[1; 10]);
        write(dir.path(), "big", &[1; 11]);
        let root = BootRoot::new(dir.path())
            .expect("boot root")
            .with_max_file_size(10);
        root.open(&path("small")).expect("at the limit is fine");
        match root.open(&path("big")) {
            Err(OpenError::Unreadable(why)) => assert!(why.contains("limit"), "{why}"),
            other => panic!("expected a size refusal, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_files_are_reported() {
        let dir = temp_dir();
        write(dir.path(), "locked", b"x");
        fs::set_permissions(dir.path().join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let root = BootRoot::new(dir.path()).expect("boot root");
        let result = root.open(&path("locked"));
        // Root bypasses permission bits (CAP_DAC_OVERRIDE); everyone else must be refused.
        if nix::unistd::geteuid().is_root() {
            assert!(result.is_ok(), "root reads anything: {result:?}");
        } else {
            assert!(
                matches!(result, Err(OpenError::Unreadable(_))),
                "expected unreadable, got {result:?}"
            );
        }
    }

    #[test]
    fn boot_root_must_be_a_directory() {
        let dir = temp_dir();
        write(dir.path(), "file", b"x");
        assert!(BootRoot::new(dir.path().join("file")).is_err());
        assert!(BootRoot::new(dir.path().join("missing")).is_err());
    }

    #[test]
    fn digest_hex_round_trip_and_errors() {
        let d = Digest::of(b"abc");
        let hex = d.to_string();
        assert_eq!(
            hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "FIPS 180-2 test vector"
        );
        assert_eq!(hex.parse::<Digest>(), Ok(d));
        assert_eq!(hex.to_uppercase().parse::<Digest>(), Ok(d));
        assert_eq!("abc".parse::<Digest>(), Err(DigestParseError::Length(3)));
        let bad = format!("{}zz", &hex[..62]);
        assert_eq!(bad.parse::<Digest>(), Err(DigestParseError::NotHex));
    }

    #[test]
    fn import_stores_once_and_opens_shared() {
        let dir = temp_dir();
        let store = ContentStore::open_dir(dir.path().join("store")).expect("store");
        write(dir.path(), "vmlinuz", &[42u8; 300_000]);
        let a = store
            .import_file(dir.path().join("vmlinuz"))
            .expect("import file");
        let b = store
            .import_reader(&[42u8; 300_000][..])
            .expect("import reader");
        assert_eq!(a, b, "same content, same name");
        assert_eq!(a, Digest::of(&[42u8; 300_000]));
        let hex = a.to_hex();
        let expected = dir
            .path()
            .join("store/sha256")
            .join(&hex[..2])
            .join(&hex[2..]);
        assert_eq!(store.object_path(&a), expected);
        assert!(store.contains(&a));
        let objects = fs::read_dir(expected.parent().unwrap()).unwrap().count();
        assert_eq!(objects, 1, "stored once");
        let temps = fs::read_dir(dir.path().join("store/tmp")).unwrap().count();
        assert_eq!(temps, 0, "no temporary files left behind");

        let x = store.open(&a).expect("open");
        let y = store.open(&a).expect("open again");
        assert_eq!(x.as_ptr(), y.as_ptr(), "shared buffer");
        assert_eq!(store.loads(), 1);
        store.verify(&a).expect("intact object verifies");
        let file = store.open_boot_file(&a).expect("boot file");
        assert_eq!(file.etag.as_deref(), Some(hex.as_str()));

        let missing = Digest::of(b"never imported");
        assert!(!store.contains(&missing));
        assert!(matches!(store.open(&missing), Err(StoreError::NotFound(d)) if d == missing));
    }

    #[test]
    fn temporaries_of_dead_processes_are_removed() {
        let dir = temp_dir();
        let store = ContentStore::open_dir(dir.path()).expect("store");
        // pid_max is at most 2^22, so no process has this id.
        let stale = dir.path().join("tmp/import-99999999-1-0");
        let ours = dir
            .path()
            .join(format!("tmp/import-{}-1-0", std::process::id()));
        let other = dir.path().join("tmp/not-an-import");
        for f in [&stale, &ours, &other] {
            fs::write(f, b"partial").unwrap();
        }
        assert_eq!(store.remove_stale_temporaries().expect("cleanup"), 1);
        assert!(!stale.exists());
        assert!(ours.exists(), "a running process's import is left alone");
        assert!(
            other.exists(),
            "files the store did not name are left alone"
        );
    }

    #[test]
    fn an_import_expecting_other_content_stores_nothing() {
        let dir = temp_dir();
        let store = ContentStore::open_dir(dir.path()).expect("store");
        let wanted = Digest::of(b"the kernel the operator meant");
        let err = store
            .import_reader_expecting(&b"something else"[..], Some(&wanted))
            .expect_err("mismatch refused");
        let actual = Digest::of(b"something else");
        assert!(
            matches!(err, StoreError::DigestMismatch { expected, actual: a } if expected == wanted && a == actual),
            "{err}"
        );
        assert!(
            !store.contains(&actual),
            "nothing stored under the real hash"
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let ok = store
            .import_reader_expecting(&b"something else"[..], Some(&actual))
            .expect("matching digest imports");
        assert_eq!(ok, actual);
        assert!(store.contains(&actual));
    }

    #[test]
    fn verify_and_open_detect_corruption() {
        let dir = temp_dir();
        let store = ContentStore::open_dir(dir.path()).expect("store");
        let d = store
            .import_reader(&b"initrd contents"[..])
            .expect("import");
        let object = store.object_path(&d);
        fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&object, b"initrd c0ntents").unwrap();
        match store.verify(&d) {
            Err(StoreError::Corrupt { digest, actual }) => {
                assert_eq!(digest, d);
                assert_eq!(actual, Digest::of(b"initrd c0ntents"));
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(
            matches!(store.open(&d), Err(StoreError::Corrupt { .. })),
            "a corrupt object is never served"
        );
    }

    /// Yields `data` in small chunks, checking at each read that no object is visible under its
    /// final name yet, then optionally fails before the end.
    struct WatchingReader<'a> {
        data: &'a [u8],
        final_path: PathBuf,
        fail_after: Option<usize>,
        served: usize,
    }

    impl Read for WatchingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(
                !self.final_path.exists(),
                "object visible under its final name before the import finished"
            );
            if self.fail_after.is_some_and(|n| self.served >= n) {
                return Err(io::Error::other("source disk went away"));
            }
            let n = buf.len().min(4096).min(self.data.len() - self.served);
            buf[..n].copy_from_slice(&self.data[self.served..self.served + n]);
            self.served += n;
            Ok(n)
        }
    }

    #[test]
    fn imports_are_atomic() {
        let dir = temp_dir();
        let store = ContentStore::open_dir(dir.path()).expect("store");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);

        let failing = WatchingReader {
            data: &data,
            final_path: store.object_path(&digest),
            fail_after: Some(50_000),
            served: 0,
        };
        match store.import_reader(failing) {
            Err(StoreError::ImportSource(e)) => assert!(e.to_string().contains("went away")),
            other => panic!("expected the source error, got {other:?}"),
        }
        assert!(!store.contains(&digest), "a failed import names nothing");
        let temps = fs::read_dir(dir.path().join("tmp")).unwrap().count();
        assert_eq!(temps, 0, "a failed import cleans up its temporary file");

        let whole = WatchingReader {
            data: &data,
            final_path: store.object_path(&digest),
            fail_after: None,
            served: 0,
        };
        assert_eq!(store.import_reader(whole).expect("import"), digest);
        assert_eq!(&store.open(&digest).expect("open")[..], &data[..]);
        let mode = fs::metadata(store.object_path(&digest))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444, "objects are read-only");
    }
}
