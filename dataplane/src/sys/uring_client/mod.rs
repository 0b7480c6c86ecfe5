//! One io_uring driving many client sockets: what a load generator (`stampede bench`) needs to
//! play thousands of machines from one thread without a syscall per datagram.
//!
//! The server side ([`super::uring::UdpWorker`], [`super::uring_tcp::TcpWorker`]) owns a fixed
//! set of listening sockets. A client opens and closes sockets all the time: one UDP socket per
//! TFTP transfer, one TCP connection per HTTP server, each from the machine's own address. Here
//! every socket is a slot with a generation ([`SockId`]): UDP sockets receive through one
//! multishot `IORING_OP_RECVMSG` each, TCP connections through one multishot `IORING_OP_RECV`
//! each, both drawing from provided-buffer rings shared by all sockets (so ten thousand idle
//! sockets pin no memory). The TCP ring is consumed incrementally (kernel 6.12): a receive of
//! one 1448-byte segment takes 1448 bytes of a buffer, not the whole buffer, and the next
//! receive on any connection continues behind it. Sends are `IORING_OP_SEND` (with a
//! destination for UDP, kernel 6.0), connects `IORING_OP_CONNECT`. Closing cancels the socket's
//! operations by descriptor (`IORING_ASYNC_CANCEL_FD`, 5.19) and closes it once the last
//! completion is in.
//!
//! The same rule as the workers holds: everything an entry points at (payloads, addresses, the
//! `msghdr`, the buffers) is owned here and kept until its completion is reaped, and dropping
//! the ring cancels and drains every operation before freeing anything.
use std::{
    collections::VecDeque,
    io,
    mem::ManuallyDrop,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use bytes::Bytes;
use io_uring::{
    cqueue, opcode, squeue,
    types::{self, CancelBuilder},
};

use super::{
    buf_ring::BufRing,
    recvmsg::{NAME_LEN, RECVMSG_OUT_LEN, RecvHeader, SockAddrBytes},
    ring::{Completion, Ring, UringError},
};

#[cfg(test)]
mod tests;

/// A socket of a [`ClientRing`]. Stale ids (of a closed socket whose slot was reused) are told
/// apart by their generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockId {
    index: u32,
    generation: u32,
}

impl SockId {
    /// Slot number: dense, below the number of sockets ever open at once (for lookup tables).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// What happened on a socket, handed to [`ClientRing::run_once`]'s callback. Borrowed data lives
/// in a receive buffer that the kernel may refill once the callback returns: keep a copy to keep
/// it.
#[derive(Debug)]
pub enum Event<'a> {
    /// A datagram on a UDP socket.
    Datagram {
        socket: SockId,
        source: SocketAddr,
        payload: &'a [u8],
    },
    /// A TCP connect finished.
    Connected {
        socket: SockId,
        result: io::Result<()>,
    },
    /// Bytes on a TCP connection, in order.
    Stream { socket: SockId, data: &'a [u8] },
    /// The peer closed the connection (`None`) or it failed.
    Closed {
        socket: SockId,
        error: Option<io::Error>,
    },
    /// A send failed (a TCP send that fails also ends the connection's use).
    SendFailed { socket: SockId, error: io::Error },
}

impl Event<'_> {
    /// The socket the event happened on.
    pub fn socket(&self) -> SockId {
        match self {
            Event::Datagram { socket, .. }
            | Event::Connected { socket, .. }
            | Event::Stream { socket, .. }
            | Event::Closed { socket, .. }
            | Event::SendFailed { socket, .. } => *socket,
        }
    }
}

/// Sizes of a [`ClientRing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRingConfig {
    pub ring_entries: u32,
    /// UDP receive buffers (power of two) and their size, header and source address included:
    /// 2048 bytes take a datagram of up to 2004 bytes (a TFTP block of 1468 and more).
    pub udp_buffers: u16,
    pub udp_buffer_size: u32,
    /// TCP receive buffers (power of two) and their size. They are consumed incrementally
    /// (kernel 6.12; whole before): a buffer takes receives until it is full, so the pool holds
    /// about `tcp_buffers × tcp_buffer_size` bytes of in-flight data whatever the receive sizes.
    pub tcp_buffers: u16,
    pub tcp_buffer_size: u32,
}

impl Default for ClientRingConfig {
    fn default() -> Self {
        Self {
            ring_entries: 1024,
            udp_buffers: 4096,
            udp_buffer_size: 2048,
            tcp_buffers: 1024,
            tcp_buffer_size: 64 * 1024,
        }
    }
}

/// Counters of one ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientRingStats {
    pub datagrams: u64,
    pub stream_bytes: u64,
    /// Datagrams longer than a buffer: dropped.
    pub truncated: u64,
    /// Receives ended because every buffer was in use (re-armed; the data waited in the socket).
    pub buffer_exhaustions: u64,
    pub send_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Udp,
    Tcp,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    /// `None`: free.
    fd: Option<OwnedFd>,
    kind: Kind,
    /// A multishot receive is pending in the kernel.
    recv_armed: bool,
    /// A receive should be pending (UDP: from the start; TCP: once connected), unless closing.
    wants_recv: bool,
    /// Sends, connects and cancels pending in the kernel.
    ops: u32,
    closing: bool,
}

impl Slot {
    fn busy(&self) -> bool {
        self.recv_armed || self.ops > 0
    }
}

/// An operation pending in the kernel, and what it points at.
#[derive(Debug)]
enum Op {
    Send {
        payload: Bytes,
        sent: usize,
        to: Option<Box<SockAddrBytes>>,
    },
    /// The address is read by the kernel until the connect completes.
    Connect {
        _addr: Box<SockAddrBytes>,
    },
    Cancel,
}

// user_data: receives have bit 63 set, the slot in the low 32 bits and the generation above;
// operations carry their index in `ops` (so bit 62 is never set alone: that is the ring core's).
const RECV: u64 = 1 << 63;

/// Everything but the receive buffers: the callback of [`ClientRing::run_once`] gets this to
/// open, send on and close sockets while it reads a buffer.
pub struct Sockets {
    ring: Ring,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    ops: Vec<Option<(u32, Op)>>,
    free_ops: Vec<usize>,
    recv_header: Box<RecvHeader>,
    stats: ClientRingStats,
    /// Slots whose receive must be (re-)armed before the next wait, oldest first: a receive that
    /// ran out of buffers goes to the back, so under buffer pressure every socket gets its turn.
    to_arm: VecDeque<u32>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets")
            .field("open", &self.open())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The ring, its sockets and its receive buffers. Single-threaded: one per load-generator thread.
#[derive(Debug)]
pub struct ClientRing {
    // Drop order: `Sockets` (with the ring) is drained by Drop before the buffers are freed.
    sockets: Sockets,
    udp_buffers: ManuallyDrop<BufRing>,
    tcp_buffers: ManuallyDrop<BufRing>,
}

const UDP_GROUP: u16 = 0;
const TCP_GROUP: u16 = 1;

impl ClientRing {
    pub fn new(config: ClientRingConfig) -> Result<Self, UringError> {
        let header_len = (RECVMSG_OUT_LEN + NAME_LEN) as u32;
        if config.udp_buffer_size <= header_len || config.tcp_buffer_size == 0 {
            return Err(UringError::Config("receive buffers too small"));
        }
        if config.ring_entries == 0 {
            return Err(UringError::Config("ring_entries must be at least 1"));
        }
        let ring = Ring::new(config.ring_entries, config.ring_entries.saturating_mul(8))
            .map_err(UringError::io("creating the client io_uring"))?;
        let udp_buffers = BufRing::new(config.udp_buffers, config.udp_buffer_size)
            .map_err(UringError::io("allocating UDP receive buffers"))?;
        let mut tcp_buffers = BufRing::new(config.tcp_buffers, config.tcp_buffer_size)
            .map_err(UringError::io("allocating TCP receive buffers"))?;
        udp_buffers
            .register(&ring, UDP_GROUP)
            .map_err(UringError::io("registering the UDP buffer ring"))?;
        match tcp_buffers.register_incremental(&ring, TCP_GROUP) {
            Ok(()) => {}
            // Before 6.12: every receive takes a whole buffer, however short.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "this kernel cannot consume receive buffers incrementally (6.12); \
                     each short TCP receive takes a whole {} byte buffer",
                    config.tcp_buffer_size
                );
                tcp_buffers
                    .register(&ring, TCP_GROUP)
                    .map_err(UringError::io("registering the TCP buffer ring"))?;
            }
            Err(e) => return Err(UringError::io("registering the TCP buffer ring")(e)),
        }
        Ok(Self {
            sockets: Sockets {
                ring,
                slots: Vec::new(),
                free_slots: Vec::new(),
                ops: Vec::new(),
                free_ops: Vec::new(),
                recv_header: RecvHeader::new(0),
                stats: ClientRingStats::default(),
                to_arm: VecDeque::new(),
            },
            udp_buffers: ManuallyDrop::new(udp_buffers),
            tcp_buffers: ManuallyDrop::new(tcp_buffers),
        })
    }

    /// Opening, sending and closing outside of a callback.
    pub fn sockets(&mut self) -> &mut Sockets {
        &mut self.sockets
    }

    pub fn stats(&self) -> ClientRingStats {
        self.sockets.stats
    }

    /// Submits what is queued, waits until something completes or `deadline` passes, then hands
    /// every event to `on_event`. Returns the number of events.
    pub fn run_once(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(Event<'_>, &mut Sockets),
    ) -> Result<usize, UringError> {
        let s = &mut self.sockets;
        s.arm()?;
        s.ring.submit(0)?;
        s.ring.reap();
        if !s.ring.has_completions() {
            let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if wait != Some(Duration::ZERO) {
                s.ring.wait(wait)?;
                s.ring.reap();
            }
        }
        let mut events = 0;
        while let Some(completion) = self.sockets.ring.pop() {
            events += self.handle(completion, &mut on_event);
        }
        self.sockets.arm()?;
        self.sockets.ring.submit(0)?;
        Ok(events)
    }

    fn handle(
        &mut self,
        Completion {
            user_data,
            result,
            flags,
        }: Completion,
        on_event: &mut impl FnMut(Event<'_>, &mut Sockets),
    ) -> usize {
        let s = &mut self.sockets;
        if user_data & RECV == 0 {
            return s.complete_op(user_data as usize, result, on_event);
        }
        let index = (user_data & u64::from(u32::MAX)) as u32;
        // Slots are never removed, so a receive's slot always exists (an unknown one would
        // leave its buffer unaccounted for).
        let Some(slot) = s.slots.get_mut(index as usize) else {
            return 0;
        };
        let id = SockId {
            index,
            generation: slot.generation,
        };
        let ended = !cqueue::more(flags);
        if ended {
            slot.recv_armed = false;
        }
        let (kind, closing) = (slot.kind, slot.closing);
        let bid = cqueue::buffer_select(flags);
        let mut events = 0;
        match (kind, bid) {
            (Kind::Udp, Some(bid)) => {
                let data = self
                    .udp_buffers
                    .filled(bid, usize::try_from(result).unwrap_or(0));
                match types::RecvMsgOut::parse(data, s.recv_header.msghdr()) {
                    Ok(out) if !out.is_payload_truncated() && !closing => {
                        if let Some(source) = SockAddrBytes::parse(out.name_data()) {
                            s.stats.datagrams += 1;
                            events += 1;
                            on_event(
                                Event::Datagram {
                                    socket: id,
                                    source,
                                    payload: out.payload_data(),
                                },
                                s,
                            );
                        }
                    }
                    Ok(out) if out.is_payload_truncated() => s.stats.truncated += 1,
                    _ => {}
                }
                self.udp_buffers.recycle(bid);
            }
            (Kind::Tcp, bid) => {
                if let Some(bid) = bid {
                    // Every completion of a buffer goes through `received`, also on a closing
                    // socket: with incremental consumption the next one continues where this
                    // one ended.
                    let len = usize::try_from(result).unwrap_or(0);
                    events += self.tcp_buffers.received(bid, len, flags, |data| {
                        if closing || data.is_empty() {
                            return 0;
                        }
                        s.stats.stream_bytes += data.len() as u64;
                        on_event(Event::Stream { socket: id, data }, s);
                        1
                    });
                }
                if -result == libc::ENOBUFS {
                    s.stats.buffer_exhaustions += 1;
                } else if result <= 0 && !closing {
                    // End of stream (0) or an error: the receive is over for good.
                    if let Some(slot) = s.slots.get_mut(index as usize) {
                        slot.wants_recv = false;
                    }
                    let error = (result < 0).then(|| io::Error::from_raw_os_error(-result));
                    events += 1;
                    on_event(Event::Closed { socket: id, error }, s);
                }
            }
            (Kind::Udp, None) if -result == libc::ENOBUFS => s.stats.buffer_exhaustions += 1,
            // UDP receive errors (none expected on an unconnected socket) just re-arm.
            _ => {}
        }
        let s = &mut self.sockets;
        if ended {
            s.after_completion(index);
        }
        events
    }
}

impl Sockets {
    /// Takes over a bound UDP socket and starts receiving on it.
    pub fn add_udp(&mut self, socket: UdpSocket) -> Result<SockId, UringError> {
        socket
            .set_nonblocking(true)
            .map_err(UringError::io("setting O_NONBLOCK"))?;
        Ok(self.add(OwnedFd::from(socket), Kind::Udp, true))
    }

    /// Takes over a TCP socket (created and bound by the caller) and connects it to `remote`;
    /// [`Event::Connected`] tells the outcome, after which it receives.
    pub fn connect(&mut self, socket: OwnedFd, remote: SocketAddr) -> Result<SockId, UringError> {
        let id = self.add(socket, Kind::Tcp, false);
        let fd = self.fd(id).expect("just added");
        let addr = Box::new(SockAddrBytes::new(remote));
        let entry =
            opcode::Connect::new(types::Fd(fd), (&raw const addr.bytes).cast(), addr.len).build();
        // SAFETY: the address is boxed in the op until its completion; the descriptor is closed
        // only once the slot has no operation left.
        unsafe { self.push_op(id.index, Op::Connect { _addr: addr }, entry) }?;
        Ok(id)
    }

    /// Sends a datagram from a UDP socket.
    pub fn send_to(
        &mut self,
        socket: SockId,
        destination: SocketAddr,
        payload: Bytes,
    ) -> Result<(), UringError> {
        self.send_op(
            socket,
            Some(Box::new(SockAddrBytes::new(destination))),
            payload,
        )
    }

    /// Queues bytes on a connected TCP socket (sent whole, in order with earlier sends).
    pub fn send(&mut self, socket: SockId, payload: Bytes) -> Result<(), UringError> {
        self.send_op(socket, None, payload)
    }

    /// Closes a socket: its pending operations are cancelled and it produces no more events.
    /// Unknown or already closed ids are ignored.
    pub fn close(&mut self, socket: SockId) -> Result<(), UringError> {
        let Some(fd) = self.fd(socket) else {
            return Ok(());
        };
        let slot = &mut self.slots[socket.index()];
        slot.closing = true;
        slot.wants_recv = false;
        if !slot.busy() {
            self.release(socket.index);
            return Ok(());
        }
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(types::Fd(fd)).all()).build();
        // SAFETY: a cancellation points at no memory.
        unsafe { self.push_op(socket.index, Op::Cancel, entry) }
    }

    /// Sockets open (closing ones included).
    pub fn open(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    fn fd(&self, socket: SockId) -> Option<RawFd> {
        let slot = self.slots.get(socket.index())?;
        if slot.generation != socket.generation || slot.closing {
            return None;
        }
        slot.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn add(&mut self, fd: OwnedFd, kind: Kind, wants_recv: bool) -> SockId {
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    fd: None,
                    kind,
                    recv_armed: false,
                    wants_recv: false,
                    ops: 0,
                    closing: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.fd = Some(fd);
        slot.kind = kind;
        slot.recv_armed = false;
        slot.wants_recv = wants_recv;
        slot.ops = 0;
        slot.closing = false;
        if wants_recv {
            self.to_arm.push_back(index);
        }
        SockId {
            index,
            generation: slot.generation,
        }
    }

    fn release(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.fd = None;
        slot.generation = slot.generation.wrapping_add(1);
        slot.closing = false;
        self.free_slots.push(index);
    }

    fn send_op(
        &mut self,
        socket: SockId,
        to: Option<Box<SockAddrBytes>>,
        payload: Bytes,
    ) -> Result<(), UringError> {
        let Some(fd) = self.fd(socket) else {
            return Err(UringError::Config("send on a closed socket"));
        };
        let entry = send_entry(fd, &payload, 0, to.as_deref());
        // SAFETY: the payload and address are owned by the op until its completion; the
        // descriptor stays open while the slot has operations.
        unsafe {
            self.push_op(
                socket.index,
                Op::Send {
                    payload,
                    sent: 0,
                    to,
                },
                entry,
            )
        }
    }

    /// # Safety
    /// Everything `entry` points at must be owned by `op`.
    unsafe fn push_op(
        &mut self,
        slot: u32,
        op: Op,
        entry: squeue::Entry,
    ) -> Result<(), UringError> {
        let index = match self.free_ops.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        self.ops[index] = Some((slot, op));
        self.slots[slot as usize].ops += 1;
        let entry = entry.user_data(index as u64);
        // SAFETY: forwarded: what the entry points at lives in `ops[index]` until reaped.
        unsafe { self.ring.push(&entry) }
    }

    fn complete_op(
        &mut self,
        index: usize,
        result: i32,
        on_event: &mut impl FnMut(Event<'_>, &mut Sockets),
    ) -> usize {
        let Some((slot_index, op)) = self.ops.get_mut(index).and_then(Option::take) else {
            return 0;
        };
        let slot = &mut self.slots[slot_index as usize];
        let id = SockId {
            index: slot_index,
            generation: slot.generation,
        };
        let closing = slot.closing;
        let mut events = 0;
        match op {
            Op::Send {
                payload,
                sent,
                to: None,
            } if result > 0 && sent + (result as usize) < payload.len() && !closing => {
                // A short TCP send: the rest goes out with the same op slot.
                let sent = sent + result as usize;
                let fd = slot.fd.as_ref().map(AsRawFd::as_raw_fd).expect("open");
                let entry = send_entry(fd, &payload, sent, None).user_data(index as u64);
                self.ops[index] = Some((
                    slot_index,
                    Op::Send {
                        payload,
                        sent,
                        to: None,
                    },
                ));
                // SAFETY: the payload stays in `ops[index]` until this completion is reaped.
                if unsafe { self.ring.push(&entry) }.is_ok() {
                    return 0;
                }
                self.ops[index] = None;
            }
            Op::Send { .. } if result < 0 => {
                self.stats.send_errors += 1;
                if !closing {
                    events += 1;
                    let error = io::Error::from_raw_os_error(-result);
                    on_event(Event::SendFailed { socket: id, error }, self);
                }
            }
            Op::Connect { .. } if !closing => {
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    let slot = &mut self.slots[slot_index as usize];
                    slot.wants_recv = true;
                    self.to_arm.push_back(slot_index);
                    Ok(())
                };
                events += 1;
                on_event(Event::Connected { socket: id, result }, self);
            }
            _ => {}
        }
        self.free_ops.push(index);
        self.slots[slot_index as usize].ops -= 1;
        self.after_completion(slot_index);
        events
    }

    /// Closes a closing slot once nothing is pending on it; queues a receive that ended.
    fn after_completion(&mut self, index: u32) {
        let slot = &self.slots[index as usize];
        if slot.closing && !slot.busy() && slot.fd.is_some() {
            self.release(index);
        } else if slot.wants_recv && !slot.recv_armed && !slot.closing {
            self.to_arm.push_back(index);
        }
    }

    fn arm(&mut self) -> Result<(), UringError> {
        while let Some(index) = self.to_arm.pop_front() {
            let slot = &mut self.slots[index as usize];
            if slot.recv_armed || !slot.wants_recv || slot.closing {
                continue;
            }
            let Some(fd) = slot.fd.as_ref().map(AsRawFd::as_raw_fd) else {
                continue;
            };
            let user_data = RECV | (u64::from(slot.generation) << 32) | u64::from(index);
            let entry = match slot.kind {
                Kind::Udp => {
                    opcode::RecvMsgMulti::new(types::Fd(fd), self.recv_header.msghdr(), UDP_GROUP)
                        .build()
                }
                Kind::Tcp => opcode::RecvMulti::new(types::Fd(fd), TCP_GROUP).build(),
            };
            slot.recv_armed = true;
            // SAFETY: the msghdr is boxed in `self` and the buffer rings are registered for the
            // ring's lifetime; Drop cancels and drains the receive before freeing either, and
            // the descriptor is closed only once the receive has completed.
            unsafe { self.ring.push(&entry.user_data(user_data)) }?;
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.ops as usize + usize::from(s.recv_armed))
            .sum()
    }
}

fn send_entry(
    fd: RawFd,
    payload: &Bytes,
    from: usize,
    to: Option<&SockAddrBytes>,
) -> squeue::Entry {
    let rest = &payload[from..];
    let mut send = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL);
    if let Some(to) = to {
        send = send
            .dest_addr((&raw const to.bytes).cast())
            .dest_addr_len(to.len);
    }
    send.build()
}

impl Drop for ClientRing {
    /// Cancels every socket's operations and waits for their completions, so the kernel holds no
    /// pointer into memory about to be freed; leaks the buffers if it does not finish in time.
    fn drop(&mut self) {
        let s = &mut self.sockets;
        let open: Vec<u32> = (0..s.slots.len() as u32)
            .filter(|&i| s.slots[i as usize].busy())
            .collect();
        for index in open {
            let slot = &mut s.slots[index as usize];
            slot.closing = true;
            slot.wants_recv = false;
            let Some(fd) = slot.fd.as_ref().map(AsRawFd::as_raw_fd) else {
                continue;
            };
            let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(types::Fd(fd)).all()).build();
            // SAFETY: a cancellation points at no memory.
            let _ = unsafe { s.push_op(index, Op::Cancel, entry) };
        }
        let give_up = Instant::now() + Duration::from_secs(5);
        while s.in_flight() > 0 && Instant::now() < give_up {
            if s.ring.wait(Some(Duration::from_millis(100))).is_err() {
                break;
            }
            s.ring.reap();
            while let Some(Completion {
                user_data,
                result,
                flags,
            }) = s.ring.pop()
            {
                if user_data & RECV != 0 {
                    let index = (user_data & u64::from(u32::MAX)) as usize;
                    if !cqueue::more(flags)
                        && let Some(slot) = s.slots.get_mut(index)
                    {
                        slot.recv_armed = false;
                    }
                } else {
                    s.complete_op(
                        user_data as usize,
                        result,
                        &mut |_: Event<'_>, _: &mut Sockets| {},
                    );
                }
            }
        }
        if s.in_flight() > 0 {
            tracing::error!(
                in_flight = s.in_flight(),
                "client io_uring operations did not complete on shutdown; leaking their memory"
            );
            std::mem::forget(std::mem::take(&mut s.ops));
            return;
        }
        let _ = s.ring.submitter().unregister_buf_ring(UDP_GROUP);
        let _ = s.ring.submitter().unregister_buf_ring(TCP_GROUP);
        // SAFETY: dropped once, here; nothing is in flight and both rings are unregistered, so
        // the kernel holds no pointer into the buffers.
        unsafe {
            ManuallyDrop::drop(&mut self.udp_buffers);
            ManuallyDrop::drop(&mut self.tcp_buffers);
        }
    }
}
