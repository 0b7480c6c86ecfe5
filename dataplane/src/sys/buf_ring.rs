//! Provided-buffer rings (`IORING_REGISTER_PBUF_RING`, 5.19, commit c7fb19428d67 "io_uring: add
//! support for ring mapped supplied buffers"): receive buffers lent to the kernel, which picks
//! one per completion. See io_uring_register_buf_ring(3).
use std::{
    io,
    sync::atomic::{AtomicU16, Ordering},
};

use io_uring::{cqueue, types::BufRingEntry};

use super::{mmap::Mapping, ring::Ring};

/// A provided-buffer ring: `count` buffers of `size` bytes, and the ring of `io_uring_buf`
/// entries through which they are lent to the kernel.
///
/// Each buffer is either lent to the kernel (its entry published in the ring) or held by us
/// (the kernel reported it consumed). Ring entries equal buffers in number, so the ring can
/// never overflow.
#[derive(Debug)]
pub(super) struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    size: u32,
    /// Our copy of the tail: entries below it are published.
    tail: u16,
    consumption: Consumption,
    /// Per buffer: bytes of it the kernel has reported since it was last lent (always 0 with
    /// [`Consumption::Whole`]). The next completion of that buffer starts here.
    consumed: Box<[u32]>,
    /// Buffers lent back to the kernel after use, since the start.
    #[cfg(test)]
    recycled: u64,
}

/// How the kernel fills a [`BufRing`]'s buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consumption {
    /// Each completion takes a buffer of its own, however few bytes it puts in it: one
    /// datagram per buffer.
    Whole,
    /// `IOU_PBUF_RING_INC` (kernel 6.12, commit ae98dbf43d75 "io_uring/kbuf: add support for
    /// incremental buffer consumption"): a receive takes only the bytes it writes, and the next
    /// one (on any socket of the group) continues in the same buffer where it ended. A
    /// completion flagged `IORING_CQE_F_BUF_MORE` leaves the buffer with the kernel; the one
    /// without the flag hands it back. For streams, where short receives are the rule.
    Incremental,
}

/// `IOU_PBUF_RING_INC` (include/uapi/linux/io_uring.h; neither libc nor io-uring export it).
const IOU_PBUF_RING_INC: u16 = 2;

impl BufRing {
    pub(super) fn new(count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768",
            ));
        }
        let entries = Mapping::anonymous(usize::from(count) * size_of::<BufRingEntry>())?;
        let buffers = Mapping::anonymous(usize::from(count) * size as usize)?;
        let mut ring = Self {
            entries,
            buffers,
            count,
            size,
            tail: 0,
            consumption: Consumption::Whole,
            consumed: vec![0; usize::from(count)].into_boxed_slice(),
            #[cfg(test)]
            recycled: 0,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with `ring` as buffer group `group`, each buffer taken whole.
    pub(super) fn register(&self, ring: &Ring, group: u16) -> io::Result<()> {
        debug_assert_eq!(self.consumption, Consumption::Whole);
        self.register_with_flags(ring, group, 0)
    }

    /// Registers the ring with `ring` as buffer group `group` with
    /// [`Consumption::Incremental`]; kernels before 6.12 refuse with `EINVAL` (and register
    /// nothing). Its completions must then be read with [`BufRing::received`] only.
    pub(super) fn register_incremental(&mut self, ring: &Ring, group: u16) -> io::Result<()> {
        self.register_with_flags(ring, group, IOU_PBUF_RING_INC)?;
        self.consumption = Consumption::Incremental;
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn consumption(&self) -> Consumption {
        self.consumption
    }

    fn register_with_flags(&self, ring: &Ring, group: u16, flags: u16) -> io::Result<()> {
        // SAFETY: the entry memory is a page-aligned mapping of `count` entries that lives as
        // long as `self`; every owner of a registered BufRing drops the io_uring (which
        // unregisters it) before the BufRing.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.entries.ptr().as_ptr() as u64,
                self.count,
                group,
                flags,
            )
        }
    }

    /// Writes buffer `bid` into the next ring slot (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot < count`, so the entry is inside the mapping. The kernel only touches
        // entries between its head and the published tail (it reads them, and with incremental
        // consumption writes the address and length of the one at its head). Each buffer id is
        // in the ring at most once and the ring has one slot per buffer; we are pushing a buffer
        // the kernel gave back (or filling the ring before registering it), so at most count-1
        // entries are published and the slot at our tail is not among them.
        let entry = unsafe { &mut *self.entries.ptr().as_ptr().cast::<BufRingEntry>().add(slot) };
        entry.set_addr(self.buffer_ptr(bid) as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed entries visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail field overlays the `resv` of entry 0 (io_uring_buf_ring's layout);
        // it is a u16 aligned to 2, which is all AtomicU16 needs, and the kernel only reads it.
        let tail = unsafe {
            &*BufRingEntry::tail(self.entries.ptr().as_ptr().cast::<BufRingEntry>())
                .cast::<AtomicU16>()
        };
        // Release: the entries written before must be visible before the new tail is
        // (io_uring_buf_ring_advance uses a store-release for the same reason).
        tail.store(self.tail, Ordering::Release);
    }

    fn buffer_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset is inside the buffers mapping.
        unsafe {
            self.buffers
                .ptr()
                .as_ptr()
                .add(usize::from(bid) * self.size as usize)
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has handed back to us. Only for
    /// [`Consumption::Whole`] (see [`BufRing::received`]).
    pub(super) fn filled(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count, "kernel returned unknown buffer id {bid}");
        debug_assert_eq!(self.consumption, Consumption::Whole);
        let len = len.min(self.size as usize);
        // SAFETY: the buffer is inside the mapping (bid < count, len <= size); the kernel
        // returned it in a completion and does not write it again until we recycle it, which
        // needs `&mut self` and so cannot happen while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.buffer_ptr(bid), len) }
    }

    /// Hands `use_bytes` the `len` bytes a completion with `flags` put in buffer `bid`, then
    /// lends the buffer back to the kernel unless the kernel keeps filling it
    /// (`IORING_CQE_F_BUF_MORE`). Works for both kinds of [`Consumption`]; the completions of
    /// one buffer must come here in the order they were reaped.
    pub(super) fn received<R>(
        &mut self,
        bid: u16,
        len: usize,
        flags: u32,
        use_bytes: impl FnOnce(&[u8]) -> R,
    ) -> R {
        assert!(bid < self.count, "kernel returned unknown buffer id {bid}");
        let index = usize::from(bid);
        let start = self.consumed[index] as usize;
        let end = start.saturating_add(len).min(self.size as usize);
        debug_assert_eq!(end - start, len, "a completion overran buffer {bid}");
        let more = self.consumption == Consumption::Incremental && cqueue::buffer_more(flags);
        // SAFETY: `start <= end <= size` and bid < count, so the bytes are inside the mapping.
        // The kernel wrote them before posting the completion and does not write them again
        // until the buffer is lent back (which needs `&mut self`, held for this whole call, and
        // the borrow cannot outlive `use_bytes`). With incremental consumption it may go on
        // writing the same buffer, but only past `end`: each completion of a buffer continues
        // where the previous one ended (io_uring_register_buf_ring(3), IOU_PBUF_RING_INC), which
        // `consumed` tracks, and the buffer was lent from offset 0.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.buffer_ptr(bid).add(start), end - start) };
        let result = use_bytes(bytes);
        if more {
            self.consumed[index] = end as u32;
        } else {
            self.recycle(bid);
        }
        result
    }

    /// Lends buffer `bid` back to the kernel, to be filled from its start.
    pub(super) fn recycle(&mut self, bid: u16) {
        self.consumed[usize::from(bid)] = 0;
        #[cfg(test)]
        {
            self.recycled += 1;
        }
        self.push(bid);
        self.publish();
    }

    /// Buffers lent back after use since the start.
    #[cfg(test)]
    pub(super) fn recycled(&self) -> u64 {
        self.recycled
    }

    /// Bytes the kernel has reported in buffers it still holds (incremental consumption).
    #[cfg(test)]
    pub(super) fn partly_consumed(&self) -> u64 {
        self.consumed.iter().map(|&c| u64::from(c)).sum()
    }
}
