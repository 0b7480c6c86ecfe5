//! One io_uring per worker thread, driving a UDP socket for the sans-IO protocol cores.
//!
//! The shape follows tokio-rs/io-uring and monoio: building a submission entry is safe; pushing
//! it is the one `unsafe` point, because whatever it points at (a `msghdr`, a payload, a
//! `timespec`, the provided buffers) must stay valid until the kernel posts the completion. Here
//! every such thing is owned by the [`UdpWorker`] and kept until its completion arrives (also
//! when the operation is cancelled), and dropping a worker cancels and drains its operations
//! before freeing any memory.
//!
//! Receiving uses one multishot `IORING_OP_RECVMSG` (kernel 6.0, commit 9bb66906f23e
//! "io_uring: support multishot in recvmsg") drawing from a provided-buffer ring
//! (`IORING_REGISTER_PBUF_RING`, 5.19, commit c7fb19428d67 "io_uring: add support for ring mapped
//! supplied buffers"): the kernel picks a buffer per datagram and writes an
//! `io_uring_recvmsg_out` header, the source address and the payload into it; we hand the buffer
//! back to the ring once the datagram has been handled. See io_uring_register_buf_ring(3) and
//! io_uring_prep_recvmsg_multishot(3).
use std::{
    collections::VecDeque,
    io,
    mem::ManuallyDrop,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use io_uring::{
    cqueue, opcode,
    register::Probe,
    types::{self, BufRingEntry},
};

pub use super::ring::UringError;
use super::{
    mmap::Mapping,
    ring::{Completion, Ring},
};

/// What this kernel's io_uring can do, found by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub recvmsg: bool,
    /// Multishot `RECVMSG` with provided buffers (6.0), checked by receiving a datagram.
    pub recvmsg_multishot: bool,
    pub sendmsg: bool,
    pub recv: bool,
    pub send: bool,
    pub accept: bool,
    /// Multishot `ACCEPT` (5.19), checked by accepting a connection.
    pub accept_multishot: bool,
    pub splice: bool,
    pub timeout: bool,
    pub timeout_remove: bool,
    pub async_cancel: bool,
    pub provide_buffers: bool,
    /// `IORING_REGISTER_PBUF_RING` (5.19), checked by registering one.
    pub buf_ring: bool,
    /// Zero-copy send (6.0). Optional: the engine falls back to plain send without it.
    pub send_zc: bool,
    /// Zero-copy sendmsg (6.1). Optional, like `send_zc`.
    pub sendmsg_zc: bool,
}

impl Capabilities {
    /// Names of the required capabilities that are missing; empty when the engine can run.
    pub fn missing(&self) -> Vec<&'static str> {
        let required = [
            (self.recvmsg, "RecvMsg"),
            (self.recvmsg_multishot, "RecvMsg (multishot)"),
            (self.sendmsg, "SendMsg"),
            (self.recv, "Recv"),
            (self.send, "Send"),
            (self.accept, "Accept"),
            (self.accept_multishot, "Accept (multishot)"),
            (self.splice, "Splice"),
            (self.timeout, "Timeout"),
            (self.timeout_remove, "TimeoutRemove"),
            (self.async_cancel, "AsyncCancel"),
            (self.provide_buffers, "ProvideBuffers"),
            (
                self.buf_ring,
                "buffer ring registration (IORING_REGISTER_PBUF_RING)",
            ),
        ];
        required
            .into_iter()
            .filter(|(present, _)| !present)
            .map(|(_, name)| name)
            .collect()
    }

    /// Names of the optional capabilities that are missing (the engine degrades without them).
    pub fn missing_optional(&self) -> Vec<&'static str> {
        [(self.send_zc, "SendZc"), (self.sendmsg_zc, "SendMsgZc")]
            .into_iter()
            .filter(|(present, _)| !present)
            .map(|(_, name)| name)
            .collect()
    }
}

/// Checks at start-up that this kernel's io_uring has everything the engine needs.
///
/// Opcodes come from `IORING_REGISTER_PROBE`; what an opcode probe cannot show (multishot flags,
/// buffer-ring registration) is checked by doing it once on loopback: a buffer ring is registered,
/// a UDP datagram sent to ourselves on 127.0.0.1 is received through multishot recvmsg, and a TCP
/// connection to ourselves is accepted through multishot accept.
pub fn probe() -> Result<Capabilities, UringError> {
    let ring = Ring::new(8, 16).map_err(UringError::io(
        "creating an io_uring (is io_uring disabled by the kernel.io_uring_disabled sysctl?)",
    ))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringError::io("IORING_REGISTER_PROBE"))?;
    let has = |code: u8| probe.is_supported(code);
    let mut caps = Capabilities {
        recvmsg: has(opcode::RecvMsg::CODE),
        sendmsg: has(opcode::SendMsg::CODE),
        recv: has(opcode::Recv::CODE),
        send: has(opcode::Send::CODE),
        accept: has(opcode::Accept::CODE),
        splice: has(opcode::Splice::CODE),
        timeout: has(opcode::Timeout::CODE),
        timeout_remove: has(opcode::TimeoutRemove::CODE),
        async_cancel: has(opcode::AsyncCancel::CODE),
        provide_buffers: has(opcode::ProvideBuffers::CODE),
        send_zc: has(opcode::SendZc::CODE),
        sendmsg_zc: has(opcode::SendMsgZc::CODE),
        ..Capabilities::default()
    };
    drop(ring);

    caps.buf_ring = BufRing::new(2, 64)
        .and_then(|bufs| {
            let ring = Ring::new(2, 4)?;
            bufs.register(&ring, 0)?;
            ring.submitter().unregister_buf_ring(0)
        })
        .is_ok();
    if caps.buf_ring && caps.recvmsg && caps.timeout && caps.async_cancel {
        caps.recvmsg_multishot = probe_recvmsg_multishot().is_ok();
    }
    if caps.accept && caps.async_cancel {
        caps.accept_multishot = probe_accept_multishot().unwrap_or(false);
    }
    let missing = caps.missing();
    if missing.is_empty() {
        Ok(caps)
    } else {
        Err(UringError::Unsupported { missing })
    }
}

fn probe_recvmsg_multishot() -> Result<(), UringError> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let socket = UdpSocket::bind(loopback).map_err(UringError::io("binding probe socket"))?;
    let address = socket
        .local_addr()
        .map_err(UringError::io("probe socket address"))?;
    let sender = UdpSocket::bind(loopback).map_err(UringError::io("binding probe socket"))?;
    let config = UdpWorkerConfig {
        ring_entries: 8,
        buffer_count: 2,
        buffer_size: 256,
        ..UdpWorkerConfig::default()
    };
    let mut worker = UdpWorker::new(socket, config)?;
    sender
        .send_to(b"probe", address)
        .map_err(UringError::io("sending probe datagram"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = false;
    while !got && Instant::now() < deadline {
        worker.run_once(Some(deadline), |d, _| got |= d.payload == b"probe")?;
    }
    if got {
        Ok(())
    } else {
        Err(UringError::Unsupported {
            missing: vec!["RecvMsg (multishot)"],
        })
    }
}

/// Arms a multishot accept on a loopback listener and connects to it once. A kernel without
/// `IORING_ACCEPT_MULTISHOT` fails the request with `EINVAL`.
fn probe_accept_multishot() -> Result<bool, UringError> {
    const ACCEPT: u64 = 1;
    const CANCEL: u64 = 2;
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(UringError::io("binding probe listener"))?;
    let mut ring = Ring::new(4, 8).map_err(UringError::io("creating an io_uring"))?;
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    // SAFETY: multishot accept points at no user memory (no address buffer); the listener fd
    // outlives the request because the ring is dropped (cancelling the request) before it.
    unsafe { ring.push(&accept)? };
    ring.submit(0)?;
    let _client = listener
        .local_addr()
        .and_then(std::net::TcpStream::connect)
        .map_err(UringError::io("connecting to the probe listener"))?;
    ring.submit(1)?;
    ring.reap();
    let cqe = ring.pop().ok_or_else(|| UringError::Io {
        op: "probing multishot accept",
        source: io::Error::other("no accept completion"),
    })?;
    if cqe.result < 0 {
        // EINVAL: the kernel does not know IORING_ACCEPT_MULTISHOT. The request is over.
        return Ok(false);
    }
    // SAFETY: a non-negative accept result is a new file descriptor the kernel gave us and
    // nobody else owns; OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(cqe.result) });
    if !cqueue::more(cqe.flags) {
        return Ok(false);
    }
    let cancel = opcode::AsyncCancel::new(ACCEPT).build().user_data(CANCEL);
    // SAFETY: async cancel refers to no memory.
    unsafe { ring.push(&cancel)? };
    // The cancel's completion and the accept's final one (ECANCELED).
    ring.submit(2)?;
    Ok(true)
}

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

/// Space for the source address in each received buffer: a `sockaddr_in6` holds either family.
pub(super) const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();

/// `CMSG_SPACE(sizeof(u32))` for the `SO_RXQ_OVFL` drop counter, plus
/// `CMSG_SPACE(sizeof(struct in_pktinfo))` for `IP_PKTINFO` (the address a datagram was sent to:
/// a DHCP server must tell a broadcast from a unicast, RFC 2131 §4.3.2).
const CONTROL_LEN: usize = cmsg_align(size_of::<libc::cmsghdr>())
    + cmsg_align(size_of::<u32>())
    + cmsg_align(size_of::<libc::cmsghdr>())
    + cmsg_align(size_of::<libc::in_pktinfo>());

const fn cmsg_align(len: usize) -> usize {
    (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

/// Bytes of each received buffer taken before the payload.
const RECV_HEADER_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN;

/// `struct io_uring_recvmsg_out`: four u32s (include/uapi/linux/io_uring.h).
pub(super) const RECVMSG_OUT_LEN: usize = 16;

/// Tuning of one worker. Defaults are sized for one core serving TFTP/DHCP on a 1500-byte MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpWorkerConfig {
    /// Submission queue entries; the completion queue gets four times as many, since one
    /// multishot receive posts many completions. 256 covers a batch of replies per wakeup.
    pub ring_entries: u32,
    /// Receive buffers (a power of two, at most 32768). 1024 absorbs a burst of 1024 datagrams
    /// between two wakeups; beyond that the socket's receive queue holds them.
    pub buffer_count: u16,
    /// Bytes per receive buffer, including the 16-byte `io_uring_recvmsg_out` header, the source
    /// address and control data ([`UdpWorkerConfig::max_payload`] says what is left). 2048 fits
    /// a full 1500-byte frame.
    pub buffer_size: u32,
    /// Buffer group id of this worker's buffer ring (unique per ring).
    pub buffer_group: u16,
}

impl Default for UdpWorkerConfig {
    fn default() -> Self {
        Self {
            ring_entries: 256,
            buffer_count: 1024,
            buffer_size: 2048,
            buffer_group: 0,
        }
    }
}

impl UdpWorkerConfig {
    /// Largest payload received whole; longer datagrams are dropped as truncated.
    pub fn max_payload(&self) -> usize {
        (self.buffer_size as usize).saturating_sub(RECV_HEADER_LEN)
    }
}

/// One datagram, borrowed from a receive buffer for the duration of the callback.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Index of the worker's socket it arrived on (order given to [`UdpWorker::with_sockets`]).
    pub socket: usize,
    pub source: SocketAddr,
    /// The address it was sent to (`IP_PKTINFO`): a unicast address of this host, or a
    /// broadcast. `None` for IPv6 sockets.
    pub destination: Option<Ipv4Addr>,
    pub payload: &'a [u8],
    /// Longer than a receive buffer ([`UdpWorkerConfig::max_payload`]): `payload` is only its
    /// start. Handed over so the service it was for counts the drop under its own name.
    pub truncated: bool,
}

/// Replies collected while handling a batch; sent when the batch is done.
#[derive(Debug, Default)]
pub struct Outbox {
    datagrams: Vec<(usize, SocketAddr, Bytes)>,
    /// Socket of the datagram being handled: where [`Outbox::send_to`] replies from.
    current: usize,
}

impl Outbox {
    /// An empty outbox whose [`Outbox::send_to`] replies from socket `current`: for engines
    /// that drive the same handlers without a ring (the AF_XDP path).
    pub fn replying_from(current: usize) -> Self {
        Self {
            datagrams: Vec::new(),
            current,
        }
    }

    /// Takes every queued datagram: (socket index, destination, payload).
    pub fn drain(&mut self) -> std::vec::Drain<'_, (usize, SocketAddr, Bytes)> {
        self.datagrams.drain(..)
    }

    /// Replies from the socket the datagram being handled arrived on.
    pub fn send_to(&mut self, destination: SocketAddr, payload: impl Into<Bytes>) {
        self.datagrams
            .push((self.current, destination, payload.into()));
    }

    /// Sends from the worker's socket `socket` (e.g. a TFTP transfer port answering a request
    /// that arrived on port 69).
    pub fn send_from(&mut self, socket: usize, destination: SocketAddr, payload: impl Into<Bytes>) {
        self.datagrams.push((socket, destination, payload.into()));
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

/// Counters of one worker, cumulative since it started. Every drop has its own counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub received: u64,
    pub sent: u64,
    /// Sends the kernel failed (the completion's errno); the datagram is lost.
    pub send_errors: u64,
    /// Times the multishot receive ended and was re-armed.
    pub recv_rearms: u64,
    /// Of those, times it ended because every buffer was in use (`ENOBUFS`). Datagrams are not
    /// lost by this: they wait in the socket's receive queue until the receive is re-armed.
    pub buffer_exhaustions: u64,
    /// Datagrams larger than a buffer, dropped.
    pub truncated: u64,
    /// Datagrams whose source address could not be read, dropped.
    pub bad_source: u64,
    /// The kernel's count of datagrams dropped because the socket's receive queue was full
    /// (`SO_RXQ_OVFL`), as of the last datagram received.
    pub kernel_drops: u64,
}

/// What one [`UdpWorker::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub received: usize,
    pub sent: usize,
    /// The deadline passed (the timeout SQE fired, or it was already past).
    pub timer_fired: bool,
}

/// A `sendmsg` in flight: the payload, address and headers the kernel reads, kept at a stable
/// heap address until the completion.
struct SendOp {
    /// Index of the socket it leaves from (its slot stays until the completion).
    socket: usize,
    _payload: Bytes,
    name: SockAddrBytes,
    iov: libc::iovec,
    msg: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `msg` point into this same boxed value and into the
// `Bytes` it owns, so moving the box (with the worker) to another thread keeps them valid.
unsafe impl Send for SendOp {}

impl std::fmt::Debug for SendOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendOp")
            .field("len", &self.iov.iov_len)
            .finish()
    }
}

/// A socket address in kernel layout.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub(super) struct SockAddrBytes {
    pub(super) bytes: [u8; NAME_LEN],
    pub(super) len: u32,
}

impl SockAddrBytes {
    pub(super) fn new(address: SocketAddr) -> Self {
        let mut bytes = [0u8; NAME_LEN];
        let len = match address {
            SocketAddr::V4(a) => {
                bytes[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                bytes[2..4].copy_from_slice(&a.port().to_be_bytes());
                bytes[4..8].copy_from_slice(&a.ip().octets());
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                bytes[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                bytes[2..4].copy_from_slice(&a.port().to_be_bytes());
                bytes[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                bytes[8..24].copy_from_slice(&a.ip().octets());
                bytes[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            bytes,
            len: len as u32,
        }
    }

    /// Reads a `sockaddr_in`/`sockaddr_in6` as the kernel wrote it.
    pub(super) fn parse(bytes: &[u8]) -> Option<SocketAddr> {
        let family = i32::from(u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?));
        let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
        if family == libc::AF_INET {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        } else if family == libc::AF_INET6 {
            let flowinfo = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(bytes.get(24..28)?.try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope).into())
        } else {
            None
        }
    }
}

/// The `msghdr` of the multishot receive: only `msg_namelen` and `msg_controllen` matter (they
/// size the regions of each buffer); the pointers stay null.
struct RecvHeader(libc::msghdr);

// SAFETY: the msghdr holds only null pointers.
unsafe impl Send for RecvHeader {}

// user_data tags (bit 62 alone is the ring core's). Sends use their slab index (below 2^32).
/// Receives carry the socket index in the low 16 bits.
const RECV: u64 = 1 << 63;
const SOCKET_MASK: u64 = 0xFFFF;
const CONTROL: u64 = 1 << 61;
/// The cancellation of a closed socket's receive, with the socket index in the low 16 bits.
const CLOSE: u64 = 1 << 60;

/// One socket of a worker. A closed socket stays in its slot (its descriptor open, its index
/// not reused) until no operation of the ring refers to it any more: a send or receive
/// submitted later with a reused descriptor number would otherwise reach another socket.
#[derive(Debug)]
struct SocketSlot {
    socket: UdpSocket,
    /// [`UdpWorker::close_socket`] was called: no receive is armed again.
    closing: bool,
    /// The cancellation of its receive is in flight.
    cancelling: bool,
    /// Sends from it in flight.
    sends: usize,
}

impl SocketSlot {
    fn new(socket: UdpSocket) -> Self {
        Self {
            socket,
            closing: false,
            cancelling: false,
            sends: 0,
        }
    }
}

/// One worker's ring driving one or more UDP sockets.
///
/// Drive it in a loop: [`run_once`](Self::run_once) waits for datagrams (or the deadline), hands
/// each to a callback that may queue replies in an [`Outbox`], then submits the replies. A
/// sans-IO core plugs in as `handle(now, datagram)` in the callback and `poll_transmit` into
/// the outbox, with `poll_timeout` as the next deadline.
pub struct UdpWorker {
    // Field order is drop order: the ring goes first (after `Drop` has drained it), so the kernel
    // holds no reference to the buffers, headers or payloads below when they are freed.
    ring: Ring,
    /// Freed by `Drop` only once the kernel is done with it (leaked otherwise).
    buffers: ManuallyDrop<BufRing>,
    recv_header: Box<RecvHeader>,
    sends: Vec<Option<Box<SendOp>>>,
    free_sends: Vec<usize>,
    /// Receive completions reaped but not yet handed to the callback (they own their buffers).
    pending: VecDeque<(usize, i32, u32)>,
    /// Per socket: a multishot receive is armed.
    recv_armed: Vec<bool>,
    control_in_flight: usize,
    stats: WorkerStats,
    config: UdpWorkerConfig,
    /// `None`: a free slot, reused by the next [`UdpWorker::add_socket`].
    sockets: Vec<Option<SocketSlot>>,
    free_slots: Vec<usize>,
}

impl std::fmt::Debug for UdpWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpWorker")
            .field("sockets", &self.sockets)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .field("sends_in_flight", &self.sends_in_flight())
            .finish_non_exhaustive()
    }
}

impl UdpWorker {
    /// Takes over `socket` (bound by the caller) with a new ring and buffer ring.
    pub fn new(socket: UdpSocket, config: UdpWorkerConfig) -> Result<Self, UringError> {
        Self::with_sockets(vec![socket], config)
    }

    /// Takes over several sockets (bound by the caller), all received through one ring and one
    /// buffer ring: a worker serves DHCP, ProxyDHCP, TFTP requests and TFTP transfers together.
    pub fn with_sockets(
        sockets: Vec<UdpSocket>,
        config: UdpWorkerConfig,
    ) -> Result<Self, UringError> {
        if sockets.is_empty() || sockets.len() > SOCKET_MASK as usize {
            return Err(UringError::Config("a worker needs 1 to 65535 sockets"));
        }
        if config.max_payload() == 0 {
            return Err(UringError::Config(
                "buffer_size leaves no room for a payload after the recvmsg header",
            ));
        }
        if !config.buffer_count.is_power_of_two() || config.buffer_count > 32768 {
            return Err(UringError::Config(
                "buffer_count must be a power of two, at most 32768 (io_uring_register_buf_ring(3))",
            ));
        }
        if config.ring_entries == 0 {
            return Err(UringError::Config("ring_entries must be at least 1"));
        }
        let ring = Ring::new(config.ring_entries, config.ring_entries.saturating_mul(4))
            .map_err(UringError::io("creating the worker's io_uring"))?;
        let buffers = BufRing::new(config.buffer_count, config.buffer_size)
            .map_err(UringError::io("allocating receive buffers"))?;
        buffers
            .register(&ring, config.buffer_group)
            .map_err(UringError::io("registering the buffer ring"))?;
        for socket in &sockets {
            enable_control_data(socket)?;
        }
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_namelen = NAME_LEN as u32;
        header.msg_controllen = CONTROL_LEN;
        Ok(Self {
            ring,
            buffers: ManuallyDrop::new(buffers),
            recv_header: Box::new(RecvHeader(header)),
            sends: Vec::new(),
            free_sends: Vec::new(),
            pending: VecDeque::new(),
            recv_armed: vec![false; sockets.len()],
            control_in_flight: 0,
            stats: WorkerStats::default(),
            config,
            sockets: sockets
                .into_iter()
                .map(|s| Some(SocketSlot::new(s)))
                .collect(),
            free_slots: Vec::new(),
        })
    }

    /// Takes over one more socket (bound by the caller) and returns its index; its receive is
    /// armed by the next [`run_once`](Self::run_once). Indices of closed sockets are reused.
    pub fn add_socket(&mut self, socket: UdpSocket) -> Result<usize, UringError> {
        enable_control_data(&socket)?;
        let index = match self.free_slots.pop() {
            Some(index) => index,
            None if self.sockets.len() < SOCKET_MASK as usize => {
                self.sockets.push(None);
                self.recv_armed.push(false);
                self.sockets.len() - 1
            }
            None => return Err(UringError::Config("a worker serves at most 65535 sockets")),
        };
        self.sockets[index] = Some(SocketSlot::new(socket));
        Ok(index)
    }

    /// Stops receiving on socket `index` and closes it once the ring's operations on it have
    /// completed (its receive cancelled, its queued sends done). Sends already queued from it
    /// still leave. Datagrams the kernel delivered before the cancellation are still handed to
    /// the callback.
    pub fn close_socket(&mut self, index: usize) -> Result<(), UringError> {
        let Some(slot) = self.sockets.get_mut(index).and_then(Option::as_mut) else {
            return Ok(());
        };
        if slot.closing {
            return Ok(());
        }
        slot.closing = true;
        if self.recv_armed[index] {
            slot.cancelling = true;
            let entry = opcode::AsyncCancel::new(RECV | index as u64)
                .build()
                .user_data(CLOSE | index as u64);
            // SAFETY: AsyncCancel refers to no memory, only to a user_data value.
            unsafe { self.ring.push(&entry)? };
            self.control_in_flight += 1;
        }
        self.retire_closed();
        Ok(())
    }

    /// Frees the slots of closed sockets nothing refers to any more.
    fn retire_closed(&mut self) {
        for index in 0..self.sockets.len() {
            let idle = self.sockets[index].as_ref().is_some_and(|slot| {
                slot.closing && !slot.cancelling && slot.sends == 0 && !self.recv_armed[index]
            });
            if idle && !self.pending.iter().any(|(socket, ..)| *socket == index) {
                self.sockets[index] = None;
                self.free_slots.push(index);
            }
        }
    }

    /// Sockets open, closing ones included.
    pub fn open_sockets(&self) -> usize {
        self.sockets.iter().filter(|s| s.is_some()).count()
    }

    /// Address of the first socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.local_addr_of(0)
    }

    /// Address of socket `index`.
    pub fn local_addr_of(&self, index: usize) -> io::Result<SocketAddr> {
        self.sockets
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::other(format!("no socket {index}")))?
            .socket
            .local_addr()
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats
    }

    pub fn config(&self) -> &UdpWorkerConfig {
        &self.config
    }

    pub fn sends_in_flight(&self) -> usize {
        self.sends.len() - self.free_sends.len()
    }

    /// Queues one datagram; it is submitted by the next [`run_once`](Self::run_once) (or
    /// [`flush`](Self::flush)). The payload is kept until the kernel reports the send done.
    ///
    /// There is no cap on sends in flight: UDP sends on a local socket complete as soon as the
    /// kernel has queued them, so the slab stays about one batch large. A caller that produces
    /// faster than the NIC drains can watch [`sends_in_flight`](Self::sends_in_flight).
    pub fn send_to(
        &mut self,
        destination: SocketAddr,
        payload: impl Into<Bytes>,
    ) -> Result<(), UringError> {
        self.send_from(0, destination, payload)
    }

    /// Like [`send_to`](Self::send_to), from socket `socket`.
    pub fn send_from(
        &mut self,
        socket: usize,
        destination: SocketAddr,
        payload: impl Into<Bytes>,
    ) -> Result<(), UringError> {
        let fd = match self.sockets.get_mut(socket).and_then(Option::as_mut) {
            Some(slot) => {
                slot.sends += 1;
                slot.socket.as_raw_fd()
            }
            None => return Err(UringError::Config("send_from: no such socket")),
        };
        let payload = payload.into();
        let mut op = Box::new(SendOp {
            socket,
            iov: libc::iovec {
                iov_base: payload.as_ptr().cast_mut().cast(),
                iov_len: payload.len(),
            },
            _payload: payload,
            name: SockAddrBytes::new(destination),
            // SAFETY: msghdr is plain data; all-zero is a valid value, filled in below.
            msg: unsafe { std::mem::zeroed() },
        });
        op.msg.msg_name = (&raw mut op.name.bytes).cast();
        op.msg.msg_namelen = op.name.len;
        op.msg.msg_iov = &raw mut op.iov;
        op.msg.msg_iovlen = 1;
        let msg_ptr = &raw const op.msg;
        let index = match self.free_sends.pop() {
            Some(i) => i,
            None => {
                self.sends.push(None);
                self.sends.len() - 1
            }
        };
        self.sends[index] = Some(op);
        let entry = opcode::SendMsg::new(types::Fd(fd), msg_ptr)
            .build()
            .user_data(index as u64);
        // SAFETY: the msghdr, address, iovec and payload live in the boxed SendOp at
        // `sends[index]`, which is only freed when this entry's completion is reaped (or after
        // Drop has drained the ring); the socket's slot is kept until that completion too.
        unsafe { self.ring.push(&entry) }
    }

    /// Submits queued entries without waiting.
    pub fn flush(&mut self) -> Result<(), UringError> {
        self.ring.submit(0)
    }

    /// Waits until at least one datagram arrives or `deadline` passes (forever if `None`), then
    /// hands every received datagram to `on_datagram` and submits the replies it queued. Returns
    /// without waiting if datagrams are already there. The wait is one `io_uring_enter`, woken by
    /// the multishot receive or by the worker's timeout SQE armed at `deadline`.
    ///
    /// Each datagram's buffer goes back to the kernel as soon as its callback returns. The
    /// multishot receive is re-armed whenever the kernel ends it (no `IORING_CQE_F_MORE`), e.g.
    /// after running out of buffers.
    pub fn run_once(
        &mut self,
        deadline: Option<Instant>,
        mut on_datagram: impl FnMut(Received<'_>, &mut Outbox),
    ) -> Result<RunReport, UringError> {
        self.ring.clear_deadline_fired();
        self.arm_recv()?;
        self.ring.arm_deadline(deadline)?;
        let mut report = RunReport::default();
        self.ring.submit(0)?;
        self.reap()?;
        // Completions of sends and cancellations also wake us; keep waiting until there is a
        // datagram (or a receive error) to handle or the deadline has passed.
        let mut passed = false;
        while self.pending.is_empty() && !self.ring.deadline_fired() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                passed = true;
                break;
            }
            self.ring.submit(1)?;
            self.reap()?;
        }
        let mut outbox = Outbox::default();
        while let Some((socket, result, flags)) = self.pending.pop_front() {
            outbox.current = socket;
            self.handle_recv(
                socket,
                result,
                flags,
                &mut outbox,
                &mut on_datagram,
                &mut report,
            )?;
        }
        report.sent = outbox.len();
        for (socket, destination, payload) in outbox.datagrams {
            self.send_from(socket, destination, payload)?;
        }
        // A receive that ended is re-armed now rather than on the next call, so datagrams keep
        // landing in buffers while the caller works.
        self.arm_recv()?;
        self.ring.submit(0)?;
        self.retire_closed();
        report.timer_fired = passed || self.ring.deadline_fired();
        Ok(report)
    }

    fn handle_recv(
        &mut self,
        socket: usize,
        result: i32,
        flags: u32,
        outbox: &mut Outbox,
        on_datagram: &mut impl FnMut(Received<'_>, &mut Outbox),
        report: &mut RunReport,
    ) -> Result<(), UringError> {
        let Some(bid) = cqueue::buffer_select(flags) else {
            if result >= 0 {
                return Ok(());
            }
            // A failed receive selects no buffer. ENOBUFS: every buffer was in use; the
            // datagram stays in the socket queue and the re-armed receive picks it up.
            if -result == libc::ENOBUFS {
                self.stats.buffer_exhaustions += 1;
                return Ok(());
            }
            // The receive of a closed socket, cancelled.
            if -result == libc::ECANCELED {
                return Ok(());
            }
            return Err(UringError::Io {
                op: "multishot recvmsg",
                source: io::Error::from_raw_os_error(-result),
            });
        };
        let data = self
            .buffers
            .filled(bid, usize::try_from(result).unwrap_or(0));
        match types::RecvMsgOut::parse(data, &self.recv_header.0) {
            Ok(out) => {
                let truncated = out.is_payload_truncated();
                if truncated {
                    self.stats.truncated += 1;
                }
                let control = parse_control(out.control_data());
                if let Some(drops) = control.rxq_overflow {
                    self.stats.kernel_drops = u64::from(drops);
                }
                match SockAddrBytes::parse(out.name_data()) {
                    Some(source) => {
                        self.stats.received += 1;
                        report.received += 1;
                        on_datagram(
                            Received {
                                socket,
                                source,
                                destination: control.destination,
                                payload: out.payload_data(),
                                truncated,
                            },
                            outbox,
                        );
                    }
                    None => self.stats.bad_source += 1,
                }
            }
            // The kernel always writes the header; a short buffer means a config bug.
            Err(()) => self.stats.truncated += 1,
        }
        self.buffers.recycle(bid);
        Ok(())
    }

    fn arm_recv(&mut self) -> Result<(), UringError> {
        for index in 0..self.sockets.len() {
            let Some(slot) = self.sockets[index].as_ref() else {
                continue;
            };
            if self.recv_armed[index] || slot.closing {
                continue;
            }
            let entry = opcode::RecvMsgMulti::new(
                types::Fd(slot.socket.as_raw_fd()),
                &raw const self.recv_header.0,
                self.config.buffer_group,
            )
            .build()
            .user_data(RECV | index as u64);
            // SAFETY: the msghdr is boxed in the worker and the buffer ring registered with it;
            // both outlive the request, which Drop cancels and drains before freeing them; the
            // socket's slot is kept until the request's last completion.
            unsafe { self.ring.push(&entry)? };
            self.recv_armed[index] = true;
        }
        Ok(())
    }

    /// Takes every completion off the ring: sends free their slot, receives are queued for the
    /// callback (the ring core handles the timer's).
    fn reap(&mut self) -> Result<(), UringError> {
        self.ring.reap();
        while let Some(Completion {
            user_data,
            result,
            flags,
        }) = self.ring.pop()
        {
            if user_data & RECV != 0 {
                let index = (user_data & SOCKET_MASK) as usize;
                if !cqueue::more(flags) {
                    if let Some(armed) = self.recv_armed.get_mut(index) {
                        *armed = false;
                    }
                    self.stats.recv_rearms += 1;
                }
                self.pending.push_back((index, result, flags));
            } else if user_data == CONTROL {
                self.control_in_flight -= 1;
            } else if user_data & CLOSE != 0 {
                self.control_in_flight -= 1;
                let index = (user_data & SOCKET_MASK) as usize;
                if let Some(slot) = self.sockets.get_mut(index).and_then(Option::as_mut) {
                    slot.cancelling = false;
                }
            } else {
                let index = usize::try_from(user_data).unwrap_or(usize::MAX);
                match self.sends.get_mut(index).and_then(Option::take) {
                    Some(op) => {
                        if let Some(slot) = self.sockets.get_mut(op.socket).and_then(Option::as_mut)
                        {
                            slot.sends -= 1;
                        }
                        self.free_sends.push(index);
                        if result < 0 {
                            self.stats.send_errors += 1;
                        } else {
                            self.stats.sent += 1;
                        }
                    }
                    None => {
                        return Err(UringError::Io {
                            op: "reaping completions",
                            source: io::Error::other(format!(
                                "completion for unknown user_data {user_data:#x}"
                            )),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.sends_in_flight()
            + self.recv_armed.iter().filter(|a| **a).count()
            + self.ring.in_flight()
            + self.control_in_flight
    }
}

impl Drop for UdpWorker {
    /// Cancels the receive and timers and waits for every operation's completion, so the kernel
    /// holds no pointer into memory about to be freed. If the kernel does not finish in time the
    /// buffers are leaked rather than freed under it.
    fn drop(&mut self) {
        let targets: Vec<u64> = (0..self.sockets.len() as u64)
            .filter(|&i| self.recv_armed[i as usize])
            .map(|i| RECV | i)
            .collect();
        for target in targets {
            let entry = opcode::AsyncCancel::new(target).build().user_data(CONTROL);
            // SAFETY: AsyncCancel refers to no memory.
            if unsafe { self.ring.push(&entry) }.is_ok() {
                self.control_in_flight += 1;
            }
        }
        self.ring.cancel_deadline();
        let give_up = Instant::now() + Duration::from_secs(5);
        while self.in_flight() > 0 && Instant::now() < give_up {
            if self.ring.wait(Some(Duration::from_millis(100))).is_err() {
                break;
            }
            if self.reap().is_err() {
                break;
            }
            // Receives completed during shutdown still own buffers; nobody will read them.
            self.pending.clear();
        }
        if self.in_flight() > 0 {
            tracing::error!(
                in_flight = self.in_flight(),
                "io_uring operations did not complete on shutdown; leaking their memory"
            );
            std::mem::forget(std::mem::take(&mut self.sends));
            return;
        }
        // Nothing in flight: the kernel can no longer pick a buffer, but unregister anyway so
        // the ring holds no address of memory we free (the ring's own teardown would do it too).
        let _ = self
            .ring
            .submitter()
            .unregister_buf_ring(self.config.buffer_group);
        // SAFETY: dropped once, here; no operation is in flight and the buffer ring is
        // unregistered, so the kernel holds no pointer into the buffers.
        unsafe { ManuallyDrop::drop(&mut self.buffers) };
    }
}

/// The control data every socket of a worker delivers with its datagrams.
fn enable_control_data(socket: &UdpSocket) -> Result<(), UringError> {
    enable_drop_counter(socket).map_err(UringError::io("setting SO_RXQ_OVFL"))?;
    if socket.local_addr().is_ok_and(|a| a.is_ipv4()) {
        enable_pktinfo(socket).map_err(UringError::io("setting IP_PKTINFO"))?;
    }
    Ok(())
}

/// Asks the kernel to attach its count of dropped datagrams to each one received
/// (`SO_RXQ_OVFL`, socket(7)).
fn enable_drop_counter(socket: &UdpSocket) -> io::Result<()> {
    enable_int_option(socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL)
}

/// Asks the kernel for each datagram's destination address (`IP_PKTINFO`, ip(7)).
fn enable_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    enable_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO)
}

/// Sets a boolean (`int`) socket option to 1.
fn enable_int_option(socket: &UdpSocket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is a live socket borrowed from `socket`; the option value is a c_int on
    // our stack and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the control messages of one datagram said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Control {
    /// `SO_RXQ_OVFL`: datagrams the socket dropped so far.
    rxq_overflow: Option<u32>,
    /// `IP_PKTINFO`'s `ipi_addr`: the destination address in the IP header.
    destination: Option<Ipv4Addr>,
}

/// Reads the control messages (cmsg(3)) the kernel wrote. Parsed by hand from bytes, not through
/// `CMSG_*` pointer walks, so no unsafe is needed and a short buffer cannot be over-read.
fn parse_control(control: &[u8]) -> Control {
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } (glibc and musl).
    const W: usize = size_of::<usize>();
    let header = size_of::<libc::cmsghdr>();
    let mut out = Control::default();
    let mut rest = control;
    while rest.len() >= header {
        let word = |at: usize, n: usize| rest.get(at..at + n);
        let (Some(len), Some(level), Some(kind)) = (word(0, W), word(W, 4), word(W + 4, 4)) else {
            break;
        };
        let len = usize::from_ne_bytes(len.try_into().unwrap_or([0; W]));
        let level = i32::from_ne_bytes(level.try_into().unwrap_or([0; 4]));
        let kind = i32::from_ne_bytes(kind.try_into().unwrap_or([0; 4]));
        if len < header || len > rest.len() {
            break;
        }
        let data = &rest[header..len];
        if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL && data.len() >= 4 {
            out.rxq_overflow = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
        }
        // struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
        if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO && data.len() >= 12 {
            out.destination = Some(Ipv4Addr::new(data[8], data[9], data[10], data[11]));
        }
        rest = &rest[cmsg_align(len).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::UdpSocket};

    use super::*;

    /// Whether io_uring tests can run. Outside CI a kernel without the features is a skip; under
    /// `CI=true` it is a failure, so a misconfigured CI machine cannot pass by skipping.
    fn uring_available() -> bool {
        match probe() {
            Ok(_) => true,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping io_uring test: {e}");
                false
            }
            Err(e) => panic!("CI=true and io_uring is not usable: {e}"),
        }
    }

    fn loopback_socket() -> UdpSocket {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a loopback UDP socket")
    }

    fn worker(config: UdpWorkerConfig) -> (UdpWorker, SocketAddr) {
        let worker = UdpWorker::new(loopback_socket(), config).expect("creating the worker");
        let address = worker.local_addr().expect("worker address");
        (worker, address)
    }

    /// Runs the worker until `want` datagrams arrived in total or `within` passed, echoing each.
    fn echo_until(
        worker: &mut UdpWorker,
        want: usize,
        within: Duration,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while seen.len() < want && Instant::now() < deadline {
            worker
                .run_once(Some(deadline), |d, out| {
                    seen.push((d.source, d.payload.to_vec()));
                    out.send_to(d.source, d.payload.to_vec());
                })
                .expect("run_once");
        }
        seen
    }

    fn payload(i: usize) -> Vec<u8> {
        // Distinct lengths and contents so a mixed-up buffer cannot pass.
        let len = 1 + (i * 37) % 1400;
        (0..len).map(|j| (i.wrapping_mul(31) + j) as u8).collect()
    }

    #[test]
    fn probe_succeeds_on_this_kernel() {
        match probe() {
            Ok(caps) => {
                assert!(caps.missing().is_empty(), "probe returned Ok with {caps:?}");
                if std::env::var("CI").as_deref() == Ok("true") {
                    assert!(
                        caps.missing_optional().is_empty(),
                        "CI kernels must support zero-copy send: missing {:?}",
                        caps.missing_optional()
                    );
                }
            }
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("io_uring probe failed (not CI, not failing): {e}");
            }
            Err(e) => panic!("io_uring probe failed: {e}"),
        }
    }

    #[test]
    fn missing_capabilities_are_all_named() {
        let caps = Capabilities {
            recvmsg_multishot: false,
            buf_ring: false,
            ..probe().unwrap_or(Capabilities {
                recvmsg: true,
                sendmsg: true,
                recv: true,
                send: true,
                accept: true,
                accept_multishot: true,
                splice: true,
                timeout: true,
                timeout_remove: true,
                async_cancel: true,
                provide_buffers: true,
                send_zc: true,
                sendmsg_zc: true,
                recvmsg_multishot: true,
                buf_ring: true,
            })
        };
        assert_eq!(
            caps.missing(),
            [
                "RecvMsg (multishot)",
                "buffer ring registration (IORING_REGISTER_PBUF_RING)"
            ]
        );
        let error = UringError::Unsupported {
            missing: caps.missing(),
        };
        assert_eq!(
            error.to_string(),
            "this kernel's io_uring lacks RecvMsg (multishot), buffer ring registration \
             (IORING_REGISTER_PBUF_RING)"
        );
    }

    #[test]
    fn udp_echo_of_a_thousand_datagrams() {
        if !uring_available() {
            return;
        }
        let (mut worker, address) = worker(UdpWorkerConfig {
            buffer_count: 256,
            ..UdpWorkerConfig::default()
        });
        let client = loopback_socket();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let client_address = client.local_addr().expect("client address");
        let mut echoed = Vec::new();
        // Rounds of 100, sent 20 at a time and drained before the next 20: that keeps what is in
        // flight well within the socket's receive buffer and the loopback backlog even when other
        // tests burst on loopback at the same moment (CI saw 30 of 100 lost so, on loaded cores),
        // so any loss is the ring's fault. The wait is generous: a lost datagram never comes.
        for round in 0..10 {
            let batch: Vec<usize> = (round * 100..(round + 1) * 100).collect();
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            for part in batch.chunks(20) {
                for &i in part {
                    client.send_to(&payload(i), address).expect("client send");
                }
                let got = echo_until(&mut worker, part.len(), Duration::from_secs(30));
                for _ in 0..got.len() {
                    let (n, from) = client.recv_from(&mut buf).expect("echo arrives");
                    assert_eq!(from, address, "echo comes from the worker's socket");
                    echoed.push(buf[..n].to_vec());
                }
                seen.extend(got);
            }
            assert_eq!(
                seen.len(),
                100,
                "round {round}: worker received {}",
                seen.len()
            );
            for (i, (source, data)) in batch.iter().zip(&seen) {
                assert_eq!(*source, client_address, "source address of datagram {i}");
                assert_eq!(
                    *data,
                    payload(*i),
                    "datagram {i} received byte-exact, in order"
                );
            }
        }
        let want: HashSet<Vec<u8>> = (0..1000).map(payload).collect();
        let got: HashSet<Vec<u8>> = echoed.into_iter().collect();
        assert_eq!(got.len(), 1000, "1000 distinct echoes");
        assert_eq!(got, want, "every echo byte-exact");
        // Let the last sends complete.
        let deadline = Instant::now() + Duration::from_secs(2);
        while worker.sends_in_flight() > 0 && Instant::now() < deadline {
            worker
                .run_once(Some(Instant::now() + Duration::from_millis(10)), |_, _| {})
                .expect("run_once");
        }
        let stats = worker.stats();
        assert_eq!(stats.received, 1000, "{stats:?}");
        assert_eq!(stats.sent, 1000, "{stats:?}");
        assert_eq!(
            stats.send_errors + stats.truncated + stats.kernel_drops,
            0,
            "{stats:?}"
        );
    }

    #[test]
    fn buffer_exhaustion_rearms_and_loses_nothing() {
        if !uring_available() {
            return;
        }
        let (mut worker, address) = worker(UdpWorkerConfig {
            buffer_count: 8,
            buffer_size: 512,
            ..UdpWorkerConfig::default()
        });
        let client = loopback_socket();
        // Queue 64 datagrams for 8 buffers before the receive is even armed.
        for i in 0..64u32 {
            client
                .send_to(&i.to_be_bytes(), address)
                .expect("client send");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 64 && Instant::now() < deadline {
            worker
                .run_once(Some(deadline), |d, _| {
                    got.push(u32::from_be_bytes(d.payload.try_into().expect("4 bytes")));
                })
                .expect("run_once");
        }
        assert_eq!(got, (0..64).collect::<Vec<_>>(), "all datagrams, in order");
        let stats = worker.stats();
        assert!(
            stats.buffer_exhaustions >= 1 && stats.recv_rearms >= stats.buffer_exhaustions,
            "ran out of buffers and re-armed: {stats:?}"
        );
        assert_eq!(
            stats.kernel_drops, 0,
            "the socket queue held the overflow: {stats:?}"
        );
    }

    #[test]
    fn socket_queue_overflow_is_counted() {
        if !uring_available() {
            return;
        }
        let socket = loopback_socket();
        // The smallest receive queue the kernel allows (it doubles and floors the value).
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &1024)
            .expect("SO_RCVBUF");
        let mut worker = UdpWorker::new(
            socket,
            UdpWorkerConfig {
                buffer_count: 4,
                ..UdpWorkerConfig::default()
            },
        )
        .expect("worker");
        let address = worker.local_addr().expect("address");
        let client = loopback_socket();
        for _ in 0..200 {
            client.send_to(&[0u8; 1000], address).expect("client send");
        }
        let mut received = 0u64;
        while worker
            .run_once(Some(Instant::now() + Duration::from_millis(200)), |_, _| {
                received += 1
            })
            .expect("run_once")
            .received
            > 0
        {}
        assert!(
            received < 200,
            "a tiny queue must have overflowed ({received} arrived)"
        );
        // Drop counts ride on datagrams queued after the drops (SO_RXQ_OVFL, socket(7)).
        client.send_to(b"marker", address).expect("marker");
        let got = echo_until(&mut worker, 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "the marker arrives");
        let stats = worker.stats();
        assert_eq!(
            received + 1 + stats.kernel_drops,
            201,
            "every datagram either arrived or was counted as dropped: {stats:?}"
        );
    }

    #[test]
    fn timer_wakes_the_worker_at_its_deadline() {
        if !uring_available() {
            return;
        }
        let (mut worker, address) = worker(UdpWorkerConfig::default());
        let start = Instant::now();
        let report = worker
            .run_once(Some(start + Duration::from_millis(50)), |_, _| {
                panic!("no datagram was sent")
            })
            .expect("run_once");
        let waited = start.elapsed();
        assert!(report.timer_fired, "{report:?}");
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(2),
            "woke after {waited:?}"
        );

        // A datagram before a far deadline returns early without the timer...
        let client = loopback_socket();
        client.send_to(b"hello", address).expect("send");
        let far = Instant::now() + Duration::from_secs(30);
        let report = worker.run_once(Some(far), |_, _| {}).expect("run_once");
        assert_eq!((report.received, report.timer_fired), (1, false));
        // ...and a nearer deadline replaces the far timer rather than waiting for it.
        let start = Instant::now();
        let report = worker
            .run_once(Some(start + Duration::from_millis(20)), |_, _| {})
            .expect("run_once");
        assert!(report.timer_fired, "{report:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // Dropping with the receive armed and timers pending cancels and drains them.
        drop(worker);
    }

    #[test]
    fn oversized_datagrams_are_flagged_and_counted() {
        if !uring_available() {
            return;
        }
        let config = UdpWorkerConfig {
            buffer_count: 4,
            buffer_size: 256,
            ..UdpWorkerConfig::default()
        };
        let max = config.max_payload();
        let (mut worker, address) = worker(config);
        let client = loopback_socket();
        client.send_to(&vec![1u8; max + 1], address).expect("send");
        client.send_to(&vec![2u8; max], address).expect("send");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 2 && Instant::now() < deadline {
            worker
                .run_once(Some(deadline), |d, _| {
                    got.push((d.truncated, d.payload.to_vec()));
                })
                .expect("run_once");
        }
        assert_eq!(
            got,
            [(true, vec![1u8; max]), (false, vec![2u8; max])],
            "the long one flagged with its start (so its service can count it), the one that \
             fits whole"
        );
        assert_eq!(worker.stats().truncated, 1, "{:?}", worker.stats());
    }

    #[test]
    fn sockets_are_added_and_closed_while_the_worker_runs() {
        if !uring_available() {
            return;
        }
        let (mut worker, _) = worker(UdpWorkerConfig::default());
        let extra = worker.add_socket(loopback_socket()).expect("add");
        assert_eq!(extra, 1);
        let address = worker.local_addr_of(extra).expect("address");
        let client = loopback_socket();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(b"hello", address).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.is_empty() && Instant::now() < deadline {
            worker
                .run_once(Some(deadline), |d, out| {
                    seen.push(d.socket);
                    out.send_to(d.source, b"reply".to_vec());
                })
                .expect("run");
        }
        assert_eq!(seen, [extra], "received on the added socket");
        // Closed right after queueing a reply from it: the reply still leaves.
        worker.close_socket(extra).expect("close");
        let deadline = Instant::now() + Duration::from_secs(2);
        while worker.open_sockets() > 1 && Instant::now() < deadline {
            worker
                .run_once(Some(Instant::now() + Duration::from_millis(10)), |_, _| {})
                .expect("run");
        }
        assert_eq!(worker.open_sockets(), 1, "the closed socket is gone");
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).expect("the reply");
        assert_eq!((&buf[..n], from), (&b"reply"[..], address));
        // Its port is free again, and its slot is reused.
        let rebound = UdpSocket::bind(address).expect("the port was released");
        assert_eq!(worker.add_socket(rebound).expect("add"), extra);
        client.send_to(b"again", address).unwrap();
        let got = echo_until(&mut worker, 1, Duration::from_secs(2));
        assert_eq!(got.len(), 1, "the new socket in the reused slot receives");
    }

    #[test]
    fn worker_can_move_to_its_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<UdpWorker>();
    }

    #[test]
    fn bad_configs_are_refused() {
        for (config, why) in [
            (
                UdpWorkerConfig {
                    buffer_count: 100,
                    ..UdpWorkerConfig::default()
                },
                "power of two",
            ),
            (
                UdpWorkerConfig {
                    buffer_size: 64,
                    ..UdpWorkerConfig::default()
                },
                "no room",
            ),
        ] {
            match UdpWorker::new(loopback_socket(), config) {
                Err(UringError::Config(message)) => assert!(message.contains(why), "{message}"),
                other => panic!("expected a config error about {why}, got {other:?}"),
            }
        }
    }

    #[test]
    fn socket_addresses_round_trip_through_kernel_layout() {
        for address in [
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 69)),
            SocketAddr::from(SocketAddrV6::new(
                "2001:db8::1".parse().unwrap(),
                4011,
                0x12345,
                3,
            )),
        ] {
            let raw = SockAddrBytes::new(address);
            let len = raw.len as usize;
            assert_eq!(SockAddrBytes::parse(&raw.bytes[..len]), Some(address));
        }
        assert_eq!(SockAddrBytes::parse(&[0u8; 16]), None, "AF_UNSPEC");
        assert_eq!(SockAddrBytes::parse(&[2, 0, 0]), None, "short");
    }

    #[test]
    fn drop_counter_is_found_in_control_data() {
        let mut control = vec![0u8; CONTROL_LEN];
        let header = size_of::<libc::cmsghdr>();
        control[..8].copy_from_slice(&(header + 4).to_ne_bytes());
        control[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        control[12..16].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        control[16..20].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(parse_control(&control).rxq_overflow, Some(77));
        assert_eq!(parse_control(&control[..10]).rxq_overflow, None, "short");
        assert_eq!(parse_control(&[]).rxq_overflow, None, "absent");
        control[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(
            parse_control(&control).rxq_overflow,
            None,
            "length past the end"
        );
    }

    #[test]
    fn several_sockets_share_one_ring_and_reply_from_the_chosen_one() {
        if !uring_available() {
            return;
        }
        let (a, b) = (loopback_socket(), loopback_socket());
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut worker =
            UdpWorker::with_sockets(vec![a, b], UdpWorkerConfig::default()).expect("worker");
        let client = loopback_socket();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(b"to-a", addr_a).unwrap();
        client.send_to(b"to-b", addr_b).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.len() < 2 && Instant::now() < deadline {
            worker
                .run_once(Some(deadline), |d, out| {
                    seen.push((d.socket, d.destination, d.payload.to_vec()));
                    // Every answer leaves from socket 1, whichever socket the request reached.
                    out.send_from(1, d.source, d.payload.to_vec());
                })
                .expect("run");
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (0, Some(Ipv4Addr::LOCALHOST), b"to-a".to_vec()),
                (1, Some(Ipv4Addr::LOCALHOST), b"to-b".to_vec()),
            ]
        );
        worker.flush().expect("flush");
        let mut buf = [0u8; 16];
        for _ in 0..2 {
            let (_, from) = client.recv_from(&mut buf).expect("reply");
            assert_eq!(from, addr_b, "replies come from the chosen socket");
        }
    }
}
