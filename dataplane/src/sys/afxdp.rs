//! One AF_XDP socket (`AF_XDP`, Documentation/networking/af_xdp.rst): its UMEM, its four rings
//! (fill, completion, RX, TX), bound to one (interface, RX queue), behind a safe [`XskSocket`].
//!
//! Written on `libc` rather than a crate such as `xdpilone`: the kernel interface is four
//! `setsockopt`s, one `getsockopt`, five `mmap`s and a `bind`, and owning it here keeps every
//! `unsafe` of the data plane in one layer the project reviews, with no dependency whose MSRV or
//! memory model has to be tracked besides `libc` (already used by the io_uring layer).
//!
//! Memory: one anonymous mapping holds every frame (the UMEM). Its first half is the RX pool,
//! whose frames circulate fill ring -> kernel -> RX ring -> caller -> fill ring; the second half is
//! the TX pool, whose frames circulate free list -> TX ring -> kernel -> completion ring -> free
//! list. A frame is only touched by user space while it is in neither of the kernel's hands.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::mmap::Mapping;

/// Most TX kicks per flush: 64 kicks of the kernel's 32-frame budget cover the whole TX pool.
const MAX_KICKS: usize = 64;

/// How to bind: zero-copy (the driver DMAs into the UMEM) or copy (the kernel copies frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskBind {
    /// Zero-copy when the driver supports it, copy otherwise.
    Auto,
    /// Zero-copy only: fail if the driver cannot.
    ZeroCopy,
    /// Copy mode: works on every driver, and with XDP in generic mode.
    Copy,
}

/// Sizes of one socket's UMEM and rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per frame: 2048 holds a 1500-byte MTU frame with the kernel's headroom; a power of
    /// two, as aligned chunk mode requires.
    pub frame_size: u32,
    /// Frames in the UMEM, half for RX and half for TX: 4096 frames of 2 KiB are 8 MiB per
    /// queue, enough to absorb a burst of a rack's DISCOVERs while a DATA window is in flight.
    pub frame_count: u32,
    /// Entries of each ring (a power of two); at least `frame_count / 2` so no ring fills before
    /// its pool is spent.
    pub ring_size: u32,
    pub bind: XskBind,
    /// `XDP_USE_NEED_WAKEUP`: the kernel only wants a syscall when it says so, saving one per
    /// batch while it is busy (kernel 5.4, commit 77cd0d7b3f25).
    pub need_wakeup: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frame_count: 4096,
            ring_size: 2048,
            bind: XskBind::Auto,
            need_wakeup: true,
        }
    }
}

/// Errors creating or binding a socket, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("AF_XDP {step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("invalid AF_XDP sizes: {0}")]
    Config(&'static str),
}

fn sys_error(step: &'static str) -> impl FnOnce(io::Error) -> XskError {
    move |source| XskError::Sys { step, source }
}

fn check(ret: libc::c_int, step: &'static str) -> Result<(), XskError> {
    if ret < 0 {
        Err(sys_error(step)(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// One single-producer single-consumer ring shared with the kernel. `T` is `u64` (fill and
/// completion: frame addresses) or `libc::xdp_desc` (RX and TX).
#[derive(Debug)]
struct Ring<T> {
    /// Owns the memory the pointers below point into; unmapped when the ring is dropped.
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
}

impl<T: Copy> Ring<T> {
    fn new(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
    ) -> Result<Self, XskError> {
        let len = off.desc as usize + size as usize * size_of::<T>();
        let map = Mapping::shared(fd, len, pgoff).map_err(sys_error("mmap of a ring"))?;
        let at = |offset: u64| -> Result<NonNull<u8>, XskError> {
            if offset as usize >= len {
                return Err(XskError::Config(
                    "the kernel's ring offsets lie past the ring",
                ));
            }
            // SAFETY: `offset < len`, so the pointer stays inside the mapping.
            Ok(unsafe { map.ptr().add(offset as usize) })
        };
        let producer = at(off.producer)?.cast();
        let consumer = at(off.consumer)?.cast();
        let flags = at(off.flags)?.cast();
        let descs = at(off.desc)?.cast();
        Ok(Self {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            mask: size - 1,
            size,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the kernel places the producer index, a u32 aligned to 4, at this offset of the
        // mapping, which lives as long as `self`; it is only accessed atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`: the flags word of the ring, read atomically.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask < size`, and the mapping holds `size` descriptors from `descs`.
        unsafe { self.descs.as_ptr().add((index & self.mask) as usize) }
    }

    /// Entries the kernel produced that we have not consumed, and the consumer index.
    fn readable(&self) -> (u32, u32) {
        let cons = self.consumer().load(Ordering::Relaxed);
        // Acquire: the entries up to `prod` are written before we read them.
        let prod = self.producer().load(Ordering::Acquire);
        (prod.wrapping_sub(cons), cons)
    }

    fn read(&self, index: u32) -> T {
        // SAFETY: `slot` is inside the ring, and the caller only reads indexes in
        // `[cons, prod)`, which the kernel wrote before publishing `prod` (Acquire above).
        unsafe { self.slot(index).read_volatile() }
    }

    fn release(&self, count: u32) {
        let cons = self.consumer().load(Ordering::Relaxed);
        // Release: our reads of the entries happen before the kernel may overwrite them.
        self.consumer()
            .store(cons.wrapping_add(count), Ordering::Release);
    }

    /// Free entries we may produce, and the producer index.
    fn writable(&self) -> (u32, u32) {
        let prod = self.producer().load(Ordering::Relaxed);
        let cons = self.consumer().load(Ordering::Acquire);
        (self.size - prod.wrapping_sub(cons), prod)
    }

    fn write(&self, index: u32, value: T) {
        // SAFETY: `slot` is inside the ring, and the caller only writes indexes in
        // `[prod, cons + size)`, entries the kernel has consumed (Acquire in `writable`).
        unsafe { self.slot(index).write_volatile(value) }
    }

    fn submit(&self, count: u32) {
        let prod = self.producer().load(Ordering::Relaxed);
        // Release: the entries are written before the kernel sees them.
        self.producer()
            .store(prod.wrapping_add(count), Ordering::Release);
    }
}

// SAFETY: a ring is a mapping owned by one socket; moving it to another thread moves the sole
// user-space owner (nothing is shared with other threads, only with the kernel).
unsafe impl<T: Send> Send for Ring<T> {}

/// Counters of one socket: the kernel's (`XDP_STATISTICS`) and ours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames to send dropped because every TX frame was in flight.
    pub tx_no_frame: u64,
    /// Frames the kernel dropped for this socket (no RX ring space or no fill frame).
    pub kernel_rx_dropped: u64,
    pub kernel_rx_ring_full: u64,
    pub kernel_fill_ring_empty: u64,
    pub kernel_invalid_descs: u64,
}

/// One AF_XDP socket bound to one RX queue, with its UMEM. Dropping it unbinds it (the kernel
/// removes it from every XSKMAP) and frees the memory.
#[derive(Debug)]
pub struct XskSocket {
    // Field order is drop order: rings and UMEM are unmapped before the socket closes.
    fill: Ring<u64>,
    completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    umem: Mapping,
    fd: OwnedFd,
    frame_size: u32,
    /// TX frames not in the kernel's hands.
    tx_free: Vec<u64>,
    /// Size of the TX pool.
    tx_total: usize,
    zero_copy: bool,
    queue: u32,
    stats: XskStats,
}

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    name: libc::c_int,
    value: &T,
    step: &'static str,
) -> Result<(), XskError> {
    // SAFETY: `value` points to a live `T` of the given size for the duration of the call.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(ret, step)
}

impl XskSocket {
    /// Creates the socket and its UMEM, fills the fill ring, and binds to `(ifindex, queue)`.
    pub fn bind(ifindex: u32, queue: u32, config: XskConfig) -> Result<Self, XskError> {
        let XskConfig {
            frame_size,
            frame_count,
            ring_size,
            ..
        } = config;
        if !frame_size.is_power_of_two() || !(2048..=4096).contains(&frame_size) {
            return Err(XskError::Config("frame_size must be 2048 or 4096"));
        }
        if !ring_size.is_power_of_two() || frame_count < 2 || ring_size < frame_count / 2 {
            return Err(XskError::Config(
                "ring_size must be a power of two of at least frame_count / 2",
            ));
        }
        // SAFETY: creating a socket has no memory preconditions; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw, "socket(AF_XDP)")?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let umem_len = frame_size as usize * frame_count as usize;
        let umem = Mapping::anonymous(umem_len).map_err(sys_error("mmap of the UMEM"))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr().as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fd.as_fd(), libc::XDP_UMEM_REG, &reg, "UMEM registration")?;
        setsockopt(
            fd.as_fd(),
            libc::XDP_UMEM_FILL_RING,
            &ring_size,
            "fill ring size",
        )?;
        setsockopt(
            fd.as_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &ring_size,
            "completion ring size",
        )?;
        setsockopt(fd.as_fd(), libc::XDP_RX_RING, &ring_size, "RX ring size")?;
        setsockopt(fd.as_fd(), libc::XDP_TX_RING, &ring_size, "TX ring size")?;

        // SAFETY: an all-zero `xdp_mmap_offsets` is a valid value (plain integers).
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` and `len` are live and `len` is `off`'s size; the kernel writes at most
        // `len` bytes.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        check(ret, "ring offsets")?;
        if len as usize != size_of::<libc::xdp_mmap_offsets>() {
            // Kernels before 5.4 have no flags word, which need-wakeup relies on.
            return Err(XskError::Config(
                "kernel too old: no ring flags (need 5.4+)",
            ));
        }
        let fill = Ring::new(
            fd.as_fd(),
            &off.fr,
            ring_size,
            libc::XDP_UMEM_PGOFF_FILL_RING,
        )?;
        let completion = Ring::new(
            fd.as_fd(),
            &off.cr,
            ring_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Ring::new(
            fd.as_fd(),
            &off.rx,
            ring_size,
            libc::XDP_PGOFF_RX_RING as u64,
        )?;
        let tx = Ring::new(
            fd.as_fd(),
            &off.tx,
            ring_size,
            libc::XDP_PGOFF_TX_RING as u64,
        )?;

        let half = frame_count / 2;
        let (room, prod) = fill.writable();
        let rx_frames = half.min(room);
        for i in 0..rx_frames {
            fill.write(prod.wrapping_add(i), u64::from(i) * u64::from(frame_size));
        }
        fill.submit(rx_frames);
        let tx_free: Vec<u64> = (half..frame_count)
            .map(|i| u64::from(i) * u64::from(frame_size))
            .collect();
        let tx_total = tx_free.len();

        let mut this = Self {
            fill,
            completion,
            rx,
            tx,
            umem,
            fd,
            frame_size,
            tx_free,
            tx_total,
            zero_copy: false,
            queue,
            stats: XskStats::default(),
        };
        let wakeup = if config.need_wakeup {
            libc::XDP_USE_NEED_WAKEUP
        } else {
            0
        };
        match config.bind {
            XskBind::Copy => this.bind_to(ifindex, queue, libc::XDP_COPY | wakeup)?,
            XskBind::ZeroCopy => {
                this.bind_to(ifindex, queue, libc::XDP_ZEROCOPY | wakeup)?;
                this.zero_copy = true;
            }
            XskBind::Auto => {
                if this
                    .bind_to(ifindex, queue, libc::XDP_ZEROCOPY | wakeup)
                    .is_ok()
                {
                    this.zero_copy = true;
                } else {
                    this.bind_to(ifindex, queue, libc::XDP_COPY | wakeup)?;
                }
            }
        }
        Ok(this)
    }

    fn bind_to(&self, ifindex: u32, queue: u32, flags: u16) -> Result<(), XskError> {
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a live `sockaddr_xdp` and the length is its size.
        let ret = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        check(ret, "bind")
    }

    /// Whether the driver DMAs straight into the UMEM (zero-copy) or the kernel copies.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Hands every received frame (up to `budget`) to `each`, then gives the frames back to the
    /// kernel through the fill ring. Returns how many frames were handled.
    pub fn receive(&mut self, budget: u32, mut each: impl FnMut(&[u8])) -> u32 {
        let (ready, cons) = self.rx.readable();
        let count = ready.min(budget);
        if count == 0 {
            return 0;
        }
        let (room, prod) = self.fill.writable();
        // The fill ring is as large as the RX pool, so every frame we took has a slot.
        debug_assert!(room >= count);
        let mut refilled = 0;
        for i in 0..count {
            let desc = self.rx.read(cons.wrapping_add(i));
            if let Some(frame) = self.frame(desc.addr, desc.len) {
                each(frame);
            }
            if refilled < room {
                // Aligned mode: the chunk start is the address with the offset bits cleared.
                let chunk = desc.addr & !u64::from(self.frame_size - 1);
                self.fill.write(prod.wrapping_add(refilled), chunk);
                refilled += 1;
            }
        }
        self.rx.release(count);
        self.fill.submit(refilled);
        self.stats.rx_frames += u64::from(count);
        count
    }

    /// The bytes of a frame the kernel handed us, if its descriptor lies inside the UMEM.
    fn frame(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        if end > self.umem.len() {
            return None;
        }
        // SAFETY: `[start, end)` is inside the UMEM mapping (checked above), which lives as long
        // as `self`; the frame is ours until we put it back on the fill ring, which happens only
        // after this borrow ends (the caller's closure cannot keep it).
        Some(unsafe {
            std::slice::from_raw_parts(self.umem.ptr().as_ptr().add(start), len as usize)
        })
    }

    /// Takes back TX frames the kernel has sent.
    fn reclaim(&mut self) {
        let (done, cons) = self.completion.readable();
        for i in 0..done {
            self.tx_free
                .push(self.completion.read(cons.wrapping_add(i)));
        }
        self.completion.release(done);
    }

    /// Writes one frame with `build` (given the whole frame buffer; returns the length used, or
    /// `None` to send nothing) and queues it on the TX ring. Returns whether a frame was queued;
    /// `false` with no free frame is counted in [`XskStats::tx_no_frame`]. Call [`Self::flush`]
    /// after a batch.
    pub fn transmit(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        self.reclaim();
        let (room, prod) = self.tx.writable();
        let Some(addr) = self.tx_free.pop().filter(|_| room > 0) else {
            self.stats.tx_no_frame += 1;
            return false;
        };
        let start = addr as usize;
        // SAFETY: TX frames are `frame_size` chunks inside the UMEM (built in `bind`, returned by
        // the completion ring); this one is off every ring, so neither the kernel nor another
        // borrow touches it until we queue it below.
        let frame = unsafe {
            std::slice::from_raw_parts_mut(
                self.umem.ptr().as_ptr().add(start),
                self.frame_size as usize,
            )
        };
        match build(frame) {
            Some(len) if len > 0 && len <= self.frame_size as usize => {
                self.tx.write(
                    prod,
                    libc::xdp_desc {
                        addr,
                        len: len as u32,
                        options: 0,
                    },
                );
                self.tx.submit(1);
                self.stats.tx_frames += 1;
                true
            }
            _ => {
                self.tx_free.push(addr);
                false
            }
        }
    }

    /// TX frames queued or being sent, not yet back from the completion ring.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_total - self.tx_free.len()
    }

    /// Largest frame [`Self::transmit`] can send.
    pub fn frame_capacity(&self) -> usize {
        self.frame_size as usize
    }

    /// Tells the kernel about queued TX frames when it asks for it (or always in copy mode,
    /// where transmission happens in this syscall), and about refilled RX frames when the fill
    /// ring wants a wakeup.
    pub fn flush(&mut self) -> Result<(), XskError> {
        // In copy mode each kick sends a bounded batch (the kernel's per-call TX budget), so kick
        // until the queue is empty or the kernel stops making progress.
        for _ in 0..MAX_KICKS {
            self.reclaim();
            let in_flight = self.tx_in_flight();
            if in_flight == 0 || (self.zero_copy && !self.tx.needs_wakeup()) {
                break;
            }
            // SAFETY: a zero-length `sendto` with no buffer and no address is the documented TX
            // kick for AF_XDP; no memory is passed.
            let ret = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                // The kernel is busy sending or out of buffers: the frames stay queued and go
                // with the next kick.
                match err.raw_os_error() {
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => break,
                    _ => return Err(sys_error("TX kick")(err)),
                }
            }
            self.reclaim();
            if self.tx_in_flight() >= in_flight {
                break;
            }
        }
        Ok(())
    }

    /// Whether the fill ring asks for a syscall to get the driver going again.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Counters, with the kernel's read now.
    pub fn stats(&self) -> XskStats {
        let mut out = self.stats;
        // SAFETY: an all-zero `xdp_statistics` is a valid value (plain integers).
        let mut kernel: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `kernel` and `len` are live and `len` is `kernel`'s size.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut kernel as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if ret == 0 {
            out.kernel_rx_dropped = kernel.rx_dropped;
            out.kernel_rx_ring_full = kernel.rx_ring_full;
            out.kernel_fill_ring_empty = kernel.rx_fill_ring_empty_descs;
            out.kernel_invalid_descs = kernel.rx_invalid_descs + kernel.tx_invalid_descs;
        }
        out
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until one of `sockets` has frames to read, or `timeout` passes. Interrupted waits
/// return early (the caller's loop looks at its deadlines again).
pub fn wait_readable(sockets: &[XskSocket], timeout: Duration) -> Result<(), XskError> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up: a deadline 0.4 ms away must not become a busy loop of zero-timeout polls.
    let millis =
        libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live array of `fds.len()` pollfd structures.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(sys_error("poll")(err));
        }
    }
    Ok(())
}
