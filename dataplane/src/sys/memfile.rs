//! Sealed in-memory files: one copy of a boot file that both a plain write and `sendfile` serve.
//!
//! The store reads a file once and shares it. Shared as a heap buffer, every HTTP response
//! copies it into a socket (`SENDMSG`), which at 1,000 machines × 32 MiB was the HTTP workers'
//! largest cost (`docs/benchmarks/storm.md`, "Where the time goes"). Kept instead in a memfd
//! (`memfd_create(2)`) sealed against writes and size changes (`F_SEAL_WRITE`, `F_SEAL_GROW`,
//! `F_SEAL_SHRINK`, then `F_SEAL_SEAL`), the same pages serve:
//! - `sendfile(2)` from the descriptor: the kernel queues page references in the socket, as
//!   nginx's `sendfile on` does, and no process copies the body;
//! - [`Bytes`] over a read-only shared mapping of it, for TFTP, checksums and plain writes.
//!
//! The seals are what make both safe: nobody, not even this process, can change or truncate
//! the file while the mapping or a socket refers to its pages.
//!
//! [`map_in_place`] is the other way, for files that never change by construction (the root
//! cache's content-addressed files, written once and renamed into place): no copy at all, the
//! file on disk is mapped and sent as it is. `sendfile` then reads the file system's page cache
//! (`filemap_splice_read`, ext4's large folios) instead of looking up a memfd's shmem pages one
//! by one (`shmem_file_splice_read`, a third of the appliance's CPU serving roots: see
//! docs/benchmarks/root.md), and a root costs its page cache, not a second copy in memory.
use std::{
    io::{self, Write as _},
    num::NonZeroUsize,
    os::fd::{AsFd as _, OwnedFd},
};

use bytes::Bytes;
use nix::{
    fcntl::{FcntlArg, SealFlag, fcntl},
    sys::memfd::{MFdFlags, memfd_create},
};
use stampede_proto::files::SealedFile;

use super::mmap::Mapping;

/// Copies `data` into a new sealed memfd and maps it read-only. Returns the mapping as
/// [`Bytes`] (freed with its last clone) and the descriptor. `name` shows in
/// `/proc/PID/fd` (as `memfd:NAME`) and need not be unique.
///
/// Empty data gets no file (nothing to map or send).
pub fn seal(name: &str, data: &[u8]) -> io::Result<(Bytes, Option<SealedFile>)> {
    let Some(len) = NonZeroUsize::new(data.len()) else {
        return Ok((Bytes::new(), None));
    };
    // A NUL in the name would make it unrepresentable; the name is only for humans.
    let name: String = name.chars().filter(|c| *c != '\0').take(200).collect();
    let fd = memfd_create(
        name.as_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let fd = OwnedFd::from(file);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    // The file is `len` bytes long and sealed against shrinking, so every mapped page stays
    // backed (no SIGBUS); sealed against writes, so the bytes behind the `&[u8]` handed out
    // below never change. `F_SEAL_WRITE` is refused while a writable shared mapping exists, and
    // none can be made after it.
    let mapping = SealedMapping(Mapping::read_only(fd.as_fd(), len.get())?);
    Ok((Bytes::from_owner(mapping), Some(SealedFile::new(fd))))
}

/// Maps `file`, opened read-only, as it is on disk: no copy, no seal. Returns the mapping as
/// [`Bytes`] and the descriptor to `sendfile` from. Empty files get no mapping.
///
/// The caller promises what a seal would enforce: nobody writes to or truncates the file while
/// the returned values live. The root cache keeps that promise by construction: every file in
/// it is written under a temporary name and renamed into place, never written again (a changed
/// root is a new directory, a changed chunk a new name), and removed only by unlinking, which
/// leaves an open file's pages alone. A file truncated anyway would make a read of the mapping
/// past its new end raise `SIGBUS`, and `sendfile` past it fail the connection (`EIO`).
pub fn map_in_place(file: std::fs::File) -> io::Result<(Bytes, Option<SealedFile>)> {
    let size = file.metadata()?.len();
    let len = usize::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
    let Some(len) = NonZeroUsize::new(len) else {
        return Ok((Bytes::new(), None));
    };
    let fd = OwnedFd::from(file);
    let mapping = SealedMapping(Mapping::read_only(fd.as_fd(), len.get())?);
    Ok((Bytes::from_owner(mapping), Some(SealedFile::new(fd))))
}

/// A read-only shared mapping of a sealed memfd, or of a file that never changes (see
/// [`map_in_place`]). The mapping keeps the file's pages alive by
/// itself; the descriptor may be closed before it.
struct SealedMapping(Mapping);

// SAFETY: the mapping is read-only and its contents never change (sealed, or unchanging by the
// promise of `map_in_place`'s caller), so sharing it across threads is like sharing an immutable
// `[u8]`. (`Mapping` is already `Send`.)
unsafe impl Sync for SealedMapping {}

impl AsRef<[u8]> for SealedMapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a live PROT_READ mapping of the whole file (see `seal` and `map_in_place`),
        // unmapped only when `self` drops, after every borrow ended (Bytes drops its owner after
        // the last slice is gone); its contents are sealed against change and truncation, or,
        // mapped in place, never changed or truncated by the promise of `map_in_place`'s caller.
        unsafe { std::slice::from_raw_parts(self.0.ptr().as_ptr(), self.0.len()) }
    }
}

#[cfg(test)]
mod tests {
    use std::os::{
        fd::AsFd as _,
        unix::fs::{FileExt as _, MetadataExt as _},
    };

    use super::*;

    #[test]
    fn sealed_file_holds_the_data_and_refuses_writes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let (bytes, file) = seal("test", &data).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        let file = file.expect("non-empty data has a file");
        let dup = std::fs::File::from(file.as_fd().try_clone_to_owned().unwrap());
        // Reading through the descriptor gives the same bytes.
        let mut read_back = vec![0u8; data.len()];
        dup.read_exact_at(&mut read_back, 0).unwrap();
        assert_eq!(read_back, data);
        // The seals hold: no write, no truncate.
        let refused = dup.write_at(b"x", 0).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
        assert!(dup.set_len(1).is_err(), "shrinking is sealed");
        assert!(
            dup.set_len(data.len() as u64 + 1).is_err(),
            "growing is sealed"
        );
        // Slices outlive the descriptor and each other.
        let tail = bytes.slice(299_990..);
        drop((bytes, file, dup));
        assert_eq!(&tail[..], &data[299_990..]);
    }

    #[test]
    fn a_file_mapped_in_place_is_served_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (bytes, file) = map_in_place(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        let file = file.expect("a non-empty file has a descriptor");
        // The descriptor is the file on disk itself (same inode), not a copy of it.
        let on_disk = std::fs::metadata(&path).unwrap();
        let served = nix::sys::stat::fstat(file.as_fd()).unwrap();
        assert_eq!(served.st_ino, on_disk.ino());
        // Unlinking the name (what garbage collection does) leaves the mapping whole.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&bytes.slice(150_000..)[..], &data[150_000..]);

        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let (empty, none) =
            map_in_place(std::fs::File::open(dir.path().join("empty")).unwrap()).unwrap();
        assert!(empty.is_empty() && none.is_none());
    }

    #[test]
    fn empty_data_has_no_file() {
        let (bytes, file) = seal("empty", b"").unwrap();
        assert!(bytes.is_empty());
        assert!(file.is_none());
    }
}
