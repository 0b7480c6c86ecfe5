//! Memory mappings (mmap(2)), unmapped on drop: the one place `sys` maps memory.
//!
//! Three users, three kinds of mapping:
//! - [`Mapping::anonymous`]: private zero-filled memory, populated up front and page-aligned,
//!   for io_uring provided-buffer rings (`buf_ring`) and the AF_XDP UMEM
//!   ([`super::afxdp`]).
//! - [`Mapping::shared`]: an AF_XDP socket's rings, which live in the kernel and are mapped at the
//!   page offsets it defines (`XDP_PGOFF_*`).
//! - [`Mapping::read_only`]: a sealed memfd's contents ([`super::memfile`]), served as `Bytes`.
//!
//! A `Mapping` hands out a pointer, not a slice: what may be read or written through it, and
//! when, depends on who else (the kernel) uses the memory, and the owner says so at each use.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

/// One mapping of `len` bytes at `ptr`, unmapped when dropped.
#[derive(Debug)]
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Private anonymous memory, readable and writable, its pages faulted in now
    /// (`MAP_POPULATE`) so the hot path takes no page faults. Page-aligned, as buffer rings
    /// and UMEMs require.
    pub(super) fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing aliases no
        // existing memory and has no other preconditions; the result is checked in `checked`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::checked(ptr, len)
    }

    /// `len` bytes of what `fd` exposes at `offset`, shared with the kernel, readable and
    /// writable and populated now: an AF_XDP ring.
    pub(super) fn shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset too large"))?;
        // SAFETY: a shared mapping of a live descriptor at an address of the kernel's choosing
        // aliases no Rust memory; whether the offset and length are valid for the descriptor is
        // the kernel's to check, and the result is checked in `checked`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        Self::checked(ptr, len)
    }

    /// The first `len` bytes of file `fd`, read-only and shared (page cache, no copy).
    ///
    /// Reading them is only sound if nobody can shrink the file (a page past its end raises
    /// `SIGBUS`) or change it under a `&[u8]`: callers map sealed files only.
    pub(super) fn read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // SAFETY: a shared read-only mapping of a live descriptor at an address of the kernel's
        // choosing aliases no Rust memory; the result is checked in `checked`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        Self::checked(ptr, len)
    }

    fn checked(ptr: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        Ok(Self { ptr, len })
    }

    /// Start of the mapping; valid for [`len`](Self::len) bytes while `self` lives.
    pub(super) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly one mapping made by `mmap` and owned by this value,
        // unmapped once, here. Its owners reach the memory only through `self` and drop it only
        // once neither they nor the kernel use it any more (each owner says how).
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap failed");
        }
    }
}

// SAFETY: the mapping is memory owned by this value alone; moving it to another thread moves that
// ownership. (Sharing it between threads is for its owners to allow: see `memfile`.)
unsafe impl Send for Mapping {}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::fd::AsFd as _};

    use super::*;

    #[test]
    fn anonymous_memory_is_zeroed_writable_and_page_aligned() {
        let map = Mapping::anonymous(3 * 4096).expect("mmap");
        assert_eq!(map.len(), 3 * 4096);
        assert_eq!(map.ptr().as_ptr() as usize % 4096, 0, "page-aligned");
        // SAFETY: the mapping is ours alone and `len` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts_mut(map.ptr().as_ptr(), map.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[4097] = 7;
        assert_eq!(bytes[4097], 7);
    }

    #[test]
    fn read_only_maps_a_file() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"mapped bytes").expect("write");
        let map = Mapping::read_only(file.as_fd(), 12).expect("mmap");
        // SAFETY: the file is 12 bytes long and nobody changes it while the test reads.
        let bytes = unsafe { std::slice::from_raw_parts(map.ptr().as_ptr(), map.len()) };
        assert_eq!(bytes, b"mapped bytes");
    }

    #[test]
    fn a_bad_mapping_is_an_error() {
        let file = tempfile::tempfile().expect("tempfile");
        assert!(Mapping::read_only(file.as_fd(), 0).is_err(), "zero length");
    }
}
