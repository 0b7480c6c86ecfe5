//! One io_uring per worker thread, driving a TCP listener and its connections.
//!
//! Built on the ring core (`sys::ring`), with its ownership rule (as in tokio-rs/io-uring and
//! monoio): building an entry is safe, pushing it is the one `unsafe` point, and everything an
//! entry points at (a receive buffer, a `msghdr` and the head and body it describes) is owned by
//! the [`TcpWorker`] until the kernel posts that entry's completion, also when it is cancelled. A
//! connection's socket is closed (its `TcpStream` dropped) only once none of its operations is in
//! flight, so the kernel never works on a reused descriptor number. Dropping the worker cancels
//! and drains everything before freeing memory.
//!
//! - Accepting: one multishot `IORING_OP_ACCEPT` (`IORING_ACCEPT_MULTISHOT`, 5.19, commit
//!   390ed29b5e42 "io_uring: add IORING_ACCEPT_MULTISHOT for accept"), re-armed whenever the kernel
//!   ends it. Listeners are made with `SO_REUSEPORT` ([`reuseport_listener`]) so each worker owns
//!   one listener on the shared port and the kernel spreads connections across them (socket(7)):
//!   thread-per-core with no shared accept queue.
//! - Receiving: one single-shot `IORING_OP_RECV` per connection into a small buffer the
//!   connection owns. Boot clients send one short request head and then read megabytes, so a
//!   receive is rare and small; a per-connection buffer keeps the ownership story trivial (the
//!   buffer lives in the connection, the connection outlives its operations). The cost is
//!   `recv_buffer_size` bytes per connection (4 KiB by default: 40 MiB for 10 000 connections);
//!   a multishot receive over a shared provided-buffer ring (as the UDP worker does) would cut
//!   that and is the next step if memory per connection matters.
//! - Sending: one `IORING_OP_SENDMSG` per connection at a time, with two iovecs (response head,
//!   body slice) so a response is one submission and the body is never copied. The head `Vec`
//!   and the body [`Bytes`] live in the boxed operation until its completion. A short write
//!   (normal for a stream socket once its send buffer fills) is resubmitted from where it
//!   stopped. `MSG_NOSIGNAL` keeps a peer reset from raising `SIGPIPE` (send(2)). Further sends
//!   queue behind the one in flight, which keeps responses in order.
//! - Deadlines: the ring core's timer, one `IORING_OP_TIMEOUT` at the caller's earliest
//!   deadline, replaced (with `IORING_OP_TIMEOUT_REMOVE`) when the deadline changes.
//! - Zero-copy sending (opt-in, [`TcpWorkerConfig::zero_copy_min_len`]): bodies at least that
//!   long go out with `IORING_OP_SENDMSG_ZC` (6.1, "io_uring/net: zerocopy sendmsg").
//!   The kernel then posts two completions per submission: the result (with
//!   `IORING_CQE_F_MORE`) and later a notification (`IORING_CQE_F_NOTIF`) once the network
//!   stack has released the pages, which for TCP is when the data is acknowledged
//!   (io_uring_prep_send_zc(3)). The payload must live until the notification, not just the
//!   result, so a finished zero-copy send moves into the connection's `ZeroCopyHold` and is
//!   freed when every notification of that connection has arrived; a connection closed before
//!   that leaves its hold behind in `lingering` until it has. `IORING_SEND_ZC_REPORT_USAGE`
//!   (6.2) makes the notification say whether the kernel copied after all
//!   ([`TcpWorkerStats::zero_copy_copied`]).
//!
//! - File bodies ([`TcpWorker::send_file`]): the head goes out with `SENDMSG`, then the body
//!   with `sendfile(2)` from a sealed memfd ([`super::memfile`]), called directly on the
//!   worker's thread: the kernel queues references to the file's pages, nothing is copied.
//!   Accepted sockets are non-blocking so a full socket buffer returns at once; the connection
//!   then waits with a one-shot `IORING_OP_POLL_ADD` for `POLLOUT`, which counts as its send in
//!   flight (cancelled and drained like one). io_uring has `IORING_OP_SPLICE`, but it runs
//!   every splice on a kernel worker thread that would block on a full socket; `sendfile` on a
//!   non-blocking socket never blocks. `sendfile` has no `MSG_NOSIGNAL`: a peer reset raises
//!   `SIGPIPE`, which Rust programs ignore (the runtime sets it to `SIG_IGN` before `main`); a
//!   host program that restores the default must ignore it again.
//!
//! For bodies from memory, plain `SENDMSG` is the default: measured in
//! `docs/benchmarks/http_server.md`, zero-copy send did not pay on loopback or on a veth pair
//! (the kernel copies for local delivery) and costs an extra completion per send; it is kept for
//! machines whose NIC can transmit from user pages.
use std::{
    collections::VecDeque,
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use bytes::Bytes;
use io_uring::{opcode, types};
use socket2::{Domain, Socket, Type};
use stampede_proto::files::SealedFile;

use self::send::{Payload, SendOp, ZeroCopyHold};
use super::ring::{Completion, Ring, UringError};

mod completion;
mod send;
#[cfg(test)]
mod tests;

/// Identifies one connection of one worker. Ids are not reused while the connection lives, and
/// a stale id (of a closed connection whose slot was reused) is recognised as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// A small number for logs and maps (the slot; reused after close).
    pub fn index(self) -> u32 {
        self.index
    }
}

/// Why a connection went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The worker's owner called [`TcpWorker::close`].
    Local,
    /// The peer closed its side (a receive returned 0).
    PeerClosed,
    /// A receive or send failed with this errno (e.g. `ECONNRESET`, `EPIPE`).
    Error(i32),
}

/// What happened, handed to the callback of [`TcpWorker::run_once`].
#[derive(Debug)]
pub enum TcpEvent<'a> {
    /// A new connection; a receive is armed on it after the callback returns unless the callback
    /// closes it (e.g. over a connection limit).
    Accepted { conn: ConnId, peer: SocketAddr },
    /// Bytes received, borrowed from the connection's buffer for the duration of the callback.
    /// The next receive is armed after the callback returns.
    Data { conn: ConnId, data: &'a [u8] },
    /// One [`TcpWorker::send`] (head and body) was written completely.
    Sent { conn: ConnId },
    /// The connection is gone: every operation on it completed and its socket is closed. Sends
    /// still queued were dropped. The id is dead from now on.
    Closed { conn: ConnId, reason: CloseReason },
}

/// Sends and closes requested from inside the callback, applied in order right after it returns.
#[derive(Debug, Default)]
pub struct TcpOutbox {
    commands: Vec<Command>,
}

#[derive(Debug)]
enum Command {
    Send(ConnId, Vec<u8>, Payload),
    Close(ConnId),
}

impl TcpOutbox {
    pub fn send(&mut self, conn: ConnId, head: Vec<u8>, body: Bytes) {
        self.commands
            .push(Command::Send(conn, head, Payload::Bytes(body)));
    }

    /// Like [`send`](Self::send), with a body of `len` bytes of `file` from `offset`, sent with
    /// `sendfile(2)` (see [`TcpWorker::send_file`]).
    pub fn send_file(
        &mut self,
        conn: ConnId,
        head: Vec<u8>,
        file: SealedFile,
        offset: u64,
        len: u64,
    ) {
        self.commands
            .push(Command::Send(conn, head, Payload::file(file, offset, len)));
    }

    pub fn close(&mut self, conn: ConnId) {
        self.commands.push(Command::Close(conn));
    }
}

/// Tuning of one worker. Defaults are sized for one core serving HTTP boot to a few thousand
/// clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpWorkerConfig {
    /// Submission queue entries; the completion queue gets four times as many (multishot accept
    /// and a burst of receives and sends per wakeup). 1024 covers a wakeup in which a thousand
    /// connections each complete one operation; a full queue is submitted, not an error.
    pub ring_entries: u32,
    /// Receive buffer per connection. 4096 holds a typical request head (iPXE and UEFI HTTP
    /// boot send a few hundred bytes); longer heads arrive in several receives.
    pub recv_buffer_size: u32,
    /// Send bodies of at least this many bytes with `SENDMSG_ZC` instead of `SENDMSG`; `None`
    /// (the default) never does. Off by default because it did not pay where it was measured
    /// (loopback and veth, `docs/benchmarks/http_server.md`); the kernel's msg_zerocopy
    /// documentation puts the break-even around 10 KB per send on a real NIC. Ignored (with a
    /// warning) on kernels without `IORING_OP_SENDMSG_ZC`.
    pub zero_copy_min_len: Option<usize>,
    /// Send file-backed bodies (a sealed file from the store) of at least this many bytes with
    /// `sendfile(2)` instead of copying them; `None` never does. The engine decides per
    /// response ([`TcpWorker::send_file`]); this is its threshold. 16 KiB by default: below
    /// it, one `SENDMSG` of head and body costs less than a `SENDMSG` and a `sendfile`.
    pub sendfile_min_len: Option<usize>,
}

impl Default for TcpWorkerConfig {
    fn default() -> Self {
        Self {
            ring_entries: 1024,
            recv_buffer_size: 4096,
            zero_copy_min_len: None,
            sendfile_min_len: Some(16 * 1024),
        }
    }
}

/// Counters of one worker, cumulative since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpWorkerStats {
    pub accepted: u64,
    /// Accept completions with an error (e.g. `EMFILE` when out of descriptors); the multishot
    /// accept is re-armed.
    pub accept_errors: u64,
    pub closed: u64,
    /// Of `closed`, connections that ended on a receive or send error.
    pub closed_on_error: u64,
    /// Bytes the kernel took from completed and partial sends (`SENDMSG` and `sendfile`).
    pub bytes_sent: u64,
    /// Of `bytes_sent`, bytes sent with `sendfile(2)` from sealed files.
    pub sendfile_bytes: u64,
    /// Times a `sendfile` filled the socket's buffer and the connection waited for `POLLOUT`.
    pub sendfile_waits: u64,
    /// Receives and sends that completed with `EAGAIN` and were resubmitted. Sockets are
    /// non-blocking (for `sendfile`); io_uring waits for readiness itself, but an operation it
    /// runs on a worker thread sees the flag and returns `EAGAIN` (a handful under load is normal).
    pub eagain_retries: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Sends that came back short and were resubmitted for the rest.
    pub short_writes: u64,
    /// Submissions made with `SENDMSG_ZC` (a short write resubmitted counts again).
    pub zero_copy_sends: u64,
    /// Zero-copy notifications received: the kernel released the pages of one submission.
    pub zero_copy_notifications: u64,
    /// Of `zero_copy_notifications`, those saying the kernel copied the data after all
    /// (`IORING_NOTIF_USAGE_ZC_COPIED`: loopback, veth, a device without scatter-gather).
    pub zero_copy_copied: u64,
}

/// What one [`TcpWorker::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpRunReport {
    /// Events handed to the callback.
    pub events: usize,
    /// The deadline passed (the timeout SQE fired, or it was already past).
    pub timer_fired: bool,
}

// user_data layout. Connection operations: bits 0..32 the slot, 32..56 the generation, 56..58
// the kind. Bits 63 and 61 tag the worker's own operations (bit 62 alone is the ring core's).
const ACCEPT: u64 = 1 << 63;
const CONTROL: u64 = 1 << 61;
const KIND_RECV: u64 = 1 << 56;
const KIND_SEND: u64 = 2 << 56;
const KIND_MASK: u64 = 3 << 56;
const GENERATION_MASK: u32 = (1 << 24) - 1;

fn op_data(conn: ConnId, kind: u64) -> u64 {
    kind | (u64::from(conn.generation) << 32) | u64::from(conn.index)
}

fn op_conn(user_data: u64) -> ConnId {
    ConnId {
        index: user_data as u32,
        generation: ((user_data >> 32) as u32) & GENERATION_MASK,
    }
}

struct Conn {
    generation: u32,
    stream: TcpStream,
    recv_buf: Box<[u8]>,
    recv_in_flight: bool,
    send: Option<Box<SendOp>>,
    queued: VecDeque<(Vec<u8>, Payload)>,
    zero_copy: ZeroCopyHold,
    /// Set once the connection is being closed: no new operations, cancels pushed.
    closing: Option<CloseReason>,
}

impl Conn {
    fn idle(&self) -> bool {
        !self.recv_in_flight && self.send.is_none()
    }
}

/// One worker's ring driving one listening socket and the connections accepted on it.
///
/// Drive it in a loop with [`run_once`](Self::run_once), which waits for completions (or the
/// deadline) and hands [`TcpEvent`]s to a callback; the callback answers through a
/// [`TcpOutbox`]. Outside the callback, [`send`](Self::send) and [`close`](Self::close) act
/// directly (e.g. after a timer fired).
pub struct TcpWorker {
    // Field order is drop order: the ring goes first (after `Drop` has drained it).
    ring: Ring,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    next_generation: u32,
    live: usize,
    outbox: TcpOutbox,
    accept_armed: bool,
    /// `None` once accepting stopped and the accept's last completion arrived.
    listener: Option<TcpListener>,
    listening: bool,
    control_in_flight: usize,
    stats: TcpWorkerStats,
    config: TcpWorkerConfig,
    /// `config.zero_copy_min_len` if this kernel has `SENDMSG_ZC`.
    zero_copy_min_len: Option<usize>,
    /// Whether zero-copy submissions ask for `IORING_SEND_ZC_REPORT_USAGE`; cleared if the
    /// kernel refuses the flag (6.1).
    zero_copy_report_usage: bool,
    /// Holds of closed connections still waiting for zero-copy notifications, by the id the
    /// notifications carry.
    lingering: Vec<(ConnId, ZeroCopyHold)>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for TcpWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpWorker")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.live)
            .field("listening", &self.listening)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TcpWorker {
    /// Takes over `listener` (bound and listening, e.g. from [`reuseport_listener`]).
    pub fn new(listener: TcpListener, config: TcpWorkerConfig) -> Result<Self, UringError> {
        if config.ring_entries == 0 {
            return Err(UringError::Config("ring_entries must be at least 1"));
        }
        if config.recv_buffer_size == 0 {
            return Err(UringError::Config("recv_buffer_size must be at least 1"));
        }
        let local_addr = listener
            .local_addr()
            .map_err(UringError::io("listener address"))?;
        let ring = Ring::new(config.ring_entries, config.ring_entries.saturating_mul(4))
            .map_err(UringError::io("creating the worker's io_uring"))?;
        let zero_copy_min_len = match config.zero_copy_min_len {
            Some(min) => {
                let mut probe = io_uring::Probe::new();
                ring.submitter()
                    .register_probe(&mut probe)
                    .map_err(UringError::io("IORING_REGISTER_PROBE"))?;
                if probe.is_supported(opcode::SendMsgZc::CODE) {
                    Some(min)
                } else {
                    tracing::warn!("this kernel lacks IORING_OP_SENDMSG_ZC; sending with SENDMSG");
                    None
                }
            }
            None => None,
        };
        Ok(Self {
            ring,
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            live: 0,
            outbox: TcpOutbox::default(),
            accept_armed: false,
            listener: Some(listener),
            listening: true,
            control_in_flight: 0,
            stats: TcpWorkerStats::default(),
            config,
            zero_copy_min_len,
            zero_copy_report_usage: true,
            lingering: Vec::new(),
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> TcpWorkerStats {
        self.stats
    }

    /// Whether bodies of [`TcpWorkerConfig::zero_copy_min_len`] bytes or more go out with
    /// `SENDMSG_ZC` (configured, and the kernel has it).
    pub fn zero_copy_enabled(&self) -> bool {
        self.zero_copy_min_len.is_some()
    }

    /// Connections accepted and not yet reported closed.
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Whether the listener is still open (false once [`stop_accepting`](Self::stop_accepting)
    /// has taken effect).
    pub fn is_listening(&self) -> bool {
        self.listener.is_some()
    }

    /// Stops accepting: cancels the multishot accept and closes the listener once the kernel has
    /// confirmed, so new connections go to other workers' listeners (or are refused).
    pub fn stop_accepting(&mut self) -> Result<(), UringError> {
        if !self.listening {
            return Ok(());
        }
        self.listening = false;
        if self.accept_armed {
            self.push_cancel(ACCEPT)?;
        } else {
            self.listener = None;
        }
        Ok(())
    }

    /// Queues `head` then `body` on `conn`; [`TcpEvent::Sent`] follows once both are written.
    /// Returns false (and drops the data) if the connection is closed or closing.
    pub fn send(&mut self, conn: ConnId, head: Vec<u8>, body: Bytes) -> Result<bool, UringError> {
        self.send_payload(conn, head, Payload::Bytes(body))
    }

    /// Queues `head` then `len` bytes of `file` from `offset` on `conn`, like
    /// [`send`](Self::send). The head goes out with `SENDMSG`, the body with `sendfile(2)`:
    /// the kernel queues references to the sealed file's pages in the socket instead of a copy
    /// (what nginx's `sendfile on` does), and the worker waits for `POLLOUT` whenever the
    /// socket's buffer is full. The range must lie within the file (a range past its end closes
    /// the connection with `EIO` once the file runs out).
    pub fn send_file(
        &mut self,
        conn: ConnId,
        head: Vec<u8>,
        file: SealedFile,
        offset: u64,
        len: u64,
    ) -> Result<bool, UringError> {
        self.send_payload(conn, head, Payload::file(file, offset, len))
    }

    /// Closes `conn`: cancels its receive and any send in flight, drops queued sends, and closes
    /// the socket once every operation has completed ([`TcpEvent::Closed`] with
    /// [`CloseReason::Local`] then). Returns false if the id is dead or already closing.
    ///
    /// Callers that want a response delivered close after its [`TcpEvent::Sent`].
    pub fn close(&mut self, conn: ConnId) -> Result<bool, UringError> {
        self.begin_close(conn, CloseReason::Local)
    }

    /// Submits queued entries without waiting.
    pub fn flush(&mut self) -> Result<(), UringError> {
        self.ring.submit(0)
    }

    /// Waits until something happens or `deadline` passes (forever if `None`), hands every
    /// event to `on_event`, applies what it put in the outbox and submits. One `io_uring_enter`
    /// per wait; the wait is ended by any completion of ours or by the timeout SQE.
    pub fn run_once(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(TcpEvent<'_>, &mut TcpOutbox),
    ) -> Result<TcpRunReport, UringError> {
        self.ring.clear_deadline_fired();
        self.arm_accept()?;
        self.ring.arm_deadline(deadline)?;
        self.ring.submit(0)?;
        self.ring.reap();
        let mut passed = false;
        while !self.ring.has_completions() && !self.ring.deadline_fired() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                passed = true;
                break;
            }
            self.ring.submit(1)?;
            self.ring.reap();
        }
        let mut report = TcpRunReport::default();
        while let Some(Completion {
            user_data,
            result,
            flags,
        }) = self.ring.pop()
        {
            report.events += self.complete(user_data, result, flags, &mut on_event)?;
            // Later completions of this batch may already be queued for the same connections;
            // they are matched by generation, so commands applied now cannot confuse them.
            self.apply_outbox()?;
        }
        self.arm_accept()?;
        self.ring.submit(0)?;
        report.timer_fired = passed || self.ring.deadline_fired();
        Ok(report)
    }

    fn apply_outbox(&mut self) -> Result<(), UringError> {
        // Commands are few per event; take the Vec to avoid borrowing self twice, and give its
        // allocation back afterwards.
        let mut commands = std::mem::take(&mut self.outbox.commands);
        for command in commands.drain(..) {
            match command {
                Command::Send(conn, head, body) => {
                    self.send_payload(conn, head, body)?;
                }
                Command::Close(conn) => {
                    self.begin_close(conn, CloseReason::Local)?;
                }
            }
        }
        if self.outbox.commands.is_empty() {
            self.outbox.commands = commands;
        }
        Ok(())
    }

    fn begin_close(&mut self, conn: ConnId, reason: CloseReason) -> Result<bool, UringError> {
        let Some(c) = self.conn_mut(conn) else {
            return Ok(false);
        };
        if c.closing.is_some() {
            return Ok(false);
        }
        c.closing = Some(reason);
        c.queued.clear();
        let (recv, send, idle) = (c.recv_in_flight, c.send.is_some(), c.idle());
        if recv {
            self.push_cancel(op_data(conn, KIND_RECV))?;
        }
        if send {
            self.push_cancel(op_data(conn, KIND_SEND))?;
        }
        if idle {
            // Nothing in flight: close now, reporting through the next run_once.
            self.ring.push_completion(Completion {
                user_data: CONTROL_CLOSE | op_data(conn, 0),
                result: 0,
                flags: 0,
            });
        }
        Ok(true)
    }

    fn insert(&mut self, stream: TcpStream) -> ConnId {
        let generation = self.next_generation & GENERATION_MASK;
        self.next_generation = self.next_generation.wrapping_add(1);
        let conn = Conn {
            generation,
            stream,
            recv_buf: vec![0; self.config.recv_buffer_size as usize].into_boxed_slice(),
            recv_in_flight: false,
            send: None,
            queued: VecDeque::new(),
            zero_copy: ZeroCopyHold::default(),
            closing: None,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        self.live += 1;
        ConnId { index, generation }
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        slot(&mut self.conns, conn)
    }

    fn arm_recv(&mut self, conn: ConnId) -> Result<(), UringError> {
        let Some(c) = self.conn_mut(conn) else {
            return Ok(());
        };
        if c.recv_in_flight || c.closing.is_some() {
            return Ok(());
        }
        c.recv_in_flight = true;
        let entry = opcode::Recv::new(
            types::Fd(c.stream.as_raw_fd()),
            c.recv_buf.as_mut_ptr(),
            c.recv_buf.len() as u32,
        )
        .build()
        .user_data(op_data(conn, KIND_RECV));
        // SAFETY: the buffer is the connection's boxed slice and the fd its stream; the
        // connection (and so both) is only dropped once this receive's completion is reaped
        // (finish_close checks recv_in_flight), or after Drop has drained the ring.
        unsafe { self.ring.push(&entry) }
    }

    fn push_cancel(&mut self, target: u64) -> Result<(), UringError> {
        let entry = opcode::AsyncCancel::new(target).build().user_data(CONTROL);
        // SAFETY: AsyncCancel refers to no memory, only to a user_data value.
        unsafe { self.ring.push(&entry)? };
        self.control_in_flight += 1;
        Ok(())
    }

    fn arm_accept(&mut self) -> Result<(), UringError> {
        if self.accept_armed || !self.listening {
            return Ok(());
        }
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ACCEPT);
        // SAFETY: multishot accept points at no user memory; the listener is dropped only after
        // the accept's final completion (or after Drop drained the ring).
        unsafe { self.ring.push(&entry)? };
        self.accept_armed = true;
        Ok(())
    }

    fn in_flight(&self) -> usize {
        let conn_ops: usize = self
            .conns
            .iter()
            .flatten()
            .map(|c| {
                usize::from(c.recv_in_flight)
                    + usize::from(c.send.is_some())
                    + c.zero_copy.pending as usize
            })
            .sum();
        let notifications: usize = self
            .lingering
            .iter()
            .map(|(_, hold)| hold.pending as usize)
            .sum();
        conn_ops
            + notifications
            + usize::from(self.accept_armed)
            + self.ring.in_flight()
            + self.control_in_flight
    }
}

/// A completion we make up ourselves for a connection closed with nothing in flight, so its
/// `Closed` event is delivered from `run_once` like every other event.
const CONTROL_CLOSE: u64 = 3 << 56;

/// The live connection `conn` names (borrowing only the slab, so other fields stay usable).
fn slot(conns: &mut [Option<Conn>], conn: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(conn.index as usize)
        .and_then(Option::as_mut)
        .filter(|c| c.generation == conn.generation)
}

fn unknown(user_data: u64) -> UringError {
    UringError::Io {
        op: "reaping completions",
        source: io::Error::other(format!("completion for unknown user_data {user_data:#x}")),
    }
}

impl Drop for TcpWorker {
    /// Cancels every operation and waits for each completion, so the kernel holds no pointer
    /// into memory about to be freed. If the kernel does not finish in time the connections are
    /// leaked rather than freed under it.
    fn drop(&mut self) {
        let mut targets = Vec::new();
        if self.accept_armed {
            targets.push(ACCEPT);
        }
        for (index, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            let id = ConnId {
                index: index as u32,
                generation: c.generation,
            };
            if c.recv_in_flight {
                targets.push(op_data(id, KIND_RECV));
            }
            if c.send.is_some() {
                targets.push(op_data(id, KIND_SEND));
            }
        }
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
            self.ring.reap();
            while let Some(completion) = self.ring.pop() {
                self.retire(completion);
            }
            // Close connections with nothing left in flight, so the orphaned sockets deliver
            // (or time out) what zero-copy sends queued and the notifications come.
            for index in 0..self.conns.len() {
                if self.conns[index].as_ref().is_some_and(Conn::idle) {
                    let c = self.conns[index].take().expect("checked above");
                    let id = ConnId {
                        index: index as u32,
                        generation: c.generation,
                    };
                    self.release(id, c);
                }
            }
        }
        if self.in_flight() > 0 {
            tracing::error!(
                in_flight = self.in_flight(),
                "io_uring operations did not complete on shutdown; leaking their memory"
            );
            std::mem::forget(std::mem::take(&mut self.conns));
            std::mem::forget(std::mem::take(&mut self.lingering));
            std::mem::forget(self.listener.take());
        }
    }
}

/// A TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT` set before `bind`, so several workers
/// can each listen on `address` and the kernel balances connections across them (socket(7),
/// `SO_REUSEPORT`, Linux 3.9). `backlog` is capped by `net.core.somaxconn` (listen(2)).
pub fn reuseport_listener(address: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    // socket2 opens it with SOCK_CLOEXEC, as the workers' accepted sockets are.
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}
