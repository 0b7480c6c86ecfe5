//! One io_uring per worker thread, driving a UDP socket for the sans-IO protocol cores.
//!
//! Built on the ring core ([`super::ring`]), whose one `unsafe` push requires that whatever an
//! entry points at (a `msghdr`, a payload, the provided buffers) stays valid until the kernel
//! posts the completion. Here every such thing is owned by the [`UdpWorker`] and kept until its
//! completion arrives (also when the operation is cancelled), and dropping a worker cancels and
//! drains its operations before freeing any memory.
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
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use bytes::Bytes;
use io_uring::{cqueue, opcode, types};

use self::control::{CONTROL_LEN, enable_control_data, parse_control};
use super::{
    buf_ring::BufRing,
    recvmsg::{NAME_LEN, RECVMSG_OUT_LEN, RecvHeader, SockAddrBytes},
    ring::{Completion, Ring, UringError},
};

mod control;
#[cfg(test)]
mod tests;

/// Bytes of each received buffer taken before the payload.
const RECV_HEADER_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CONTROL_LEN;

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
        Ok(Self {
            ring,
            buffers: ManuallyDrop::new(buffers),
            recv_header: RecvHeader::new(CONTROL_LEN),
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
        match types::RecvMsgOut::parse(data, self.recv_header.msghdr()) {
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
                self.recv_header.msghdr(),
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
