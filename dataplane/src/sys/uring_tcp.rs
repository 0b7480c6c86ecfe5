//! One io_uring per worker thread, driving a TCP listener and its connections.
//!
//! Same ownership rules as [`super::uring`] (and tokio-rs/io-uring, monoio): building an entry is
//! safe, pushing it is the one `unsafe` point, and everything an entry points at (a receive
//! buffer, a `msghdr` and the head and body it describes, a `timespec`) is owned by the
//! [`TcpWorker`] until the kernel posts that entry's completion, also when it is cancelled. A
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
//! - Deadlines: one `IORING_OP_TIMEOUT` at the caller's earliest deadline, replaced (with
//!   `IORING_OP_TIMEOUT_REMOVE`) when the deadline changes.
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
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use bytes::Bytes;
use io_uring::{cqueue, opcode, types};
use socket2::{Domain, Socket, Type};
use stampede_proto::files::SealedFile;

use super::ring::{Completion, Ring, UringError};

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

/// What follows a response head: bytes from memory, written with `SENDMSG`, or a range of a
/// sealed file, handed to the kernel with `sendfile(2)` (page references, no copy).
#[derive(Debug)]
enum Payload {
    Bytes(Bytes),
    File(FileRange),
}

/// `len` bytes of `file` from `offset`, still to send.
#[derive(Debug)]
struct FileRange {
    file: SealedFile,
    offset: u64,
    remaining: u64,
}

impl Payload {
    fn file(file: SealedFile, offset: u64, len: u64) -> Self {
        Self::File(FileRange {
            file,
            offset,
            remaining: len,
        })
    }
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

/// `IORING_SEND_ZC_REPORT_USAGE` (include/uapi/linux/io_uring.h, 6.2, "io_uring/net:
/// introduce IORING_SEND_ZC_REPORT_USAGE flag"), set in the SQE's `ioprio`.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's result when the data was copied.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
/// Finished zero-copy sends one connection may hold while waiting for notifications; past it
/// the connection sends with plain `SENDMSG` until they catch up. Each held send is a head
/// `Vec` and a `Bytes` handle (the file itself is shared), so 64 is a few KiB; it only fills
/// when a client pipelines many requests and acknowledges slowly.
const MAX_ZERO_COPY_HELD: usize = 64;

fn op_data(conn: ConnId, kind: u64) -> u64 {
    kind | (u64::from(conn.generation) << 32) | u64::from(conn.index)
}

fn op_conn(user_data: u64) -> ConnId {
    ConnId {
        index: user_data as u32,
        generation: ((user_data >> 32) as u32) & GENERATION_MASK,
    }
}

/// One response being sent: a `sendmsg` of the head and body the kernel reads, with the iovecs
/// and header pointing at them at a stable heap address until the completion; then, for a file
/// body, `sendfile` calls, with a `POLLOUT` poll in flight whenever the socket's buffer is full.
struct SendOp {
    head: Vec<u8>,
    body: Bytes,
    /// Bytes of head + body already taken by the kernel.
    done: usize,
    /// Every submission of this send is a `SENDMSG_ZC`.
    zero_copy: bool,
    /// The file body, sent after head and `body` (which is then empty).
    file: Option<FileRange>,
    /// The operation in flight is a `POLLOUT` poll, not a `sendmsg`.
    polling: bool,
    iov: [libc::iovec; 2],
    msg: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `msg` point into this same boxed value and into the
// `Vec`/`Bytes` it owns, whose heap memory does not move when the box moves to another thread.
unsafe impl Send for SendOp {}

impl std::fmt::Debug for SendOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendOp")
            .field("head", &self.head.len())
            .field("body", &self.body.len())
            .field("done", &self.done)
            .field("zero_copy", &self.zero_copy)
            .field("file", &self.file)
            .finish()
    }
}

impl SendOp {
    fn new(head: Vec<u8>, payload: Payload, zero_copy: bool) -> Box<Self> {
        let (body, file) = match payload {
            Payload::Bytes(body) => (body, None),
            Payload::File(range) => (Bytes::new(), Some(range)),
        };
        let mut op = Box::new(Self {
            head,
            body,
            done: 0,
            zero_copy: zero_copy && file.is_none(),
            file,
            polling: false,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
            msg: unsafe { std::mem::zeroed() },
        });
        op.aim();
        op
    }

    fn total(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Points the iovecs at what is still unsent.
    fn aim(&mut self) {
        let head_done = self.done.min(self.head.len());
        let body_done = self.done - head_done;
        let head = &self.head[head_done..];
        let body = &self.body[body_done..];
        let mut n = 0;
        for part in [head, body] {
            if !part.is_empty() {
                self.iov[n] = libc::iovec {
                    iov_base: part.as_ptr().cast_mut().cast(),
                    iov_len: part.len(),
                };
                n += 1;
            }
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n as _;
    }
}

/// Zero-copy sends of one connection whose pages the kernel may still read.
///
/// Notifications name only the connection (the user_data of every send on it is the same), and
/// the kernel does not promise they arrive in submission order, so the hold counts submissions
/// whose notification is outstanding and frees its finished sends only when that count is zero.
#[derive(Debug, Default)]
struct ZeroCopyHold {
    /// `SENDMSG_ZC` submissions pushed whose notification has not arrived (a result without
    /// `IORING_CQE_F_MORE` means none will, and is counted off then).
    pending: u32,
    /// Finished sends kept for the kernel: their results arrived, notifications may not have.
    #[expect(
        clippy::vec_box,
        reason = "sends arrive boxed (an in-flight SendOp's msghdr points into itself); only \
                  the head and body heap memory must stay put, and unboxing would just move them"
    )]
    held: Vec<Box<SendOp>>,
}

impl ZeroCopyHold {
    /// Takes a finished (or abandoned) send: kept while notifications are outstanding.
    fn retire(&mut self, op: Box<SendOp>) {
        if op.zero_copy && self.pending > 0 {
            self.held.push(op);
        }
    }

    /// One submission is settled (notified, or completed without a notification to come).
    fn settle(&mut self) -> Result<(), UringError> {
        self.pending = self.pending.checked_sub(1).ok_or_else(|| UringError::Io {
            op: "reaping completions",
            source: io::Error::other("zero-copy notification without a send"),
        })?;
        if self.pending == 0 {
            self.held.clear();
        }
        Ok(())
    }
}

fn wants_zero_copy(min_len: Option<usize>, hold: &ZeroCopyHold, payload: &Payload) -> bool {
    let Payload::Bytes(body) = payload else {
        return false;
    };
    min_len.is_some_and(|min| body.len() >= min) && hold.held.len() < MAX_ZERO_COPY_HELD
}

/// How far a file body got.
enum FileProgress {
    /// All of it is in the socket.
    Finished,
    /// The socket's buffer is full: wait for `POLLOUT`.
    Blocked,
    /// The socket failed (the errno), or the file ended early (`EIO`).
    Failed(i32),
}

/// Hands the kernel as much of `range` as the socket's buffer takes: one `sendfile(2)`, which
/// queues references to the file's pages (no copy), and more only while each call took all it was
/// offered. Safe: the socket is non-blocking, and nix wraps the call.
fn pump_file(
    socket: &TcpStream,
    range: &mut FileRange,
    stats: &mut TcpWorkerStats,
) -> FileProgress {
    // sendfile moves at most 0x7ffff000 bytes per call (sendfile(2)).
    const MAX_PER_CALL: u64 = 0x7fff_f000;
    while range.remaining > 0 {
        let want = range.remaining.min(MAX_PER_CALL);
        let Ok(mut offset) = libc::off_t::try_from(range.offset) else {
            return FileProgress::Failed(libc::EOVERFLOW);
        };
        match nix::sys::sendfile::sendfile(socket, &range.file, Some(&mut offset), want as usize) {
            // The sealed file cannot shrink, so this is a range past its end: a caller's bug,
            // but the connection, not the worker, pays for it.
            Ok(0) => return FileProgress::Failed(libc::EIO),
            Ok(n) => {
                let n = n as u64;
                range.offset += n;
                range.remaining -= n;
                stats.bytes_sent += n;
                stats.sendfile_bytes += n;
                if n < want {
                    // The socket's buffer is full; another call would only say EAGAIN.
                    break;
                }
            }
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return FileProgress::Failed(e as i32),
        }
    }
    if range.remaining == 0 {
        FileProgress::Finished
    } else {
        stats.sendfile_waits += 1;
        FileProgress::Blocked
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
            .map_err(io_error("listener address"))?;
        let ring = Ring::new(config.ring_entries, config.ring_entries.saturating_mul(4))
            .map_err(io_error("creating the worker's io_uring"))?;
        let zero_copy_min_len = match config.zero_copy_min_len {
            Some(min) => {
                let mut probe = io_uring::Probe::new();
                ring.submitter()
                    .register_probe(&mut probe)
                    .map_err(io_error("IORING_REGISTER_PROBE"))?;
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

    fn send_payload(
        &mut self,
        conn: ConnId,
        head: Vec<u8>,
        body: Payload,
    ) -> Result<bool, UringError> {
        let min_len = self.zero_copy_min_len;
        let Some(c) = self.conn_mut(conn) else {
            return Ok(false);
        };
        if c.closing.is_some() {
            return Ok(false);
        }
        if c.send.is_some() {
            c.queued.push_back((head, body));
            return Ok(true);
        }
        let zero_copy = wants_zero_copy(min_len, &c.zero_copy, &body);
        c.send = Some(SendOp::new(head, body, zero_copy));
        self.push_send(conn)?;
        Ok(true)
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

    /// Handles one completion; returns how many events it produced.
    fn complete(
        &mut self,
        user_data: u64,
        result: i32,
        flags: u32,
        on_event: &mut impl FnMut(TcpEvent<'_>, &mut TcpOutbox),
    ) -> Result<usize, UringError> {
        if user_data == ACCEPT {
            if !cqueue::more(flags) {
                self.accept_armed = false;
                if !self.listening {
                    // The kernel is done with the listener: close it.
                    self.listener = None;
                }
            }
            if result < 0 {
                if -result != libc::ECANCELED {
                    self.stats.accept_errors += 1;
                }
                return Ok(0);
            }
            // SAFETY: a non-negative accept result is a new descriptor the kernel gave us and
            // nobody else owns; the TcpStream closes it.
            let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(result) });
            if !self.listening {
                // Accepted in the window between stop_accepting and the cancellation.
                drop(stream);
                return Ok(0);
            }
            self.stats.accepted += 1;
            // Responses are one sendmsg each; without NODELAY the tail segment of a response
            // can wait for the peer's delayed ACK (tcp(7), Nagle), stalling keep-alive clients.
            let _ = stream.set_nodelay(true);
            // Non-blocking for sendfile, which must never stall the worker on a full socket
            // buffer. io_uring's own receives and sends still wait for readiness (it polls
            // before retrying); see `TcpWorkerStats::eagain_retries`.
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!(error = %e, "could not make an accepted socket non-blocking; dropped");
                self.stats.accept_errors += 1;
                return Ok(0);
            }
            let peer = match stream.peer_addr() {
                Ok(peer) => peer,
                // ENOTCONN: the peer already reset it. Nothing to serve.
                Err(_) => return Ok(0),
            };
            let conn = self.insert(stream);
            on_event(TcpEvent::Accepted { conn, peer }, &mut self.outbox);
            self.apply_outbox()?;
            self.arm_recv(conn)?;
            return Ok(1);
        }
        if user_data == CONTROL {
            self.control_in_flight -= 1;
            return Ok(0);
        }
        let conn = op_conn(user_data);
        let mut events = 0;
        match user_data & KIND_MASK {
            KIND_RECV => {
                let Some(c) = slot(&mut self.conns, conn) else {
                    return Err(unknown(user_data));
                };
                c.recv_in_flight = false;
                if c.closing.is_none() {
                    if result > 0 {
                        let n = result as usize;
                        self.stats.bytes_received += n as u64;
                        let Some(Some(c)) = self.conns.get(conn.index as usize) else {
                            return Err(unknown(user_data));
                        };
                        on_event(
                            TcpEvent::Data {
                                conn,
                                data: &c.recv_buf[..n],
                            },
                            &mut self.outbox,
                        );
                        events += 1;
                        self.apply_outbox()?;
                        self.arm_recv(conn)?;
                    } else if result == 0 {
                        self.begin_close(conn, CloseReason::PeerClosed)?;
                    } else if matches!(-result, libc::EINTR | libc::EAGAIN) {
                        if -result == libc::EAGAIN {
                            self.stats.eagain_retries += 1;
                        }
                        self.arm_recv(conn)?;
                    } else {
                        self.begin_close(conn, CloseReason::Error(-result))?;
                    }
                }
            }
            KIND_SEND if cqueue::notif(flags) => self.zero_copy_notified(conn, result)?,
            KIND_SEND => {
                let min_len = self.zero_copy_min_len;
                let Some(c) = slot(&mut self.conns, conn) else {
                    return Err(unknown(user_data));
                };
                let Some(mut op) = c.send.take() else {
                    return Err(unknown(user_data));
                };
                if op.zero_copy && !cqueue::more(flags) {
                    // No notification follows this one (io_uring_prep_send_zc(3)).
                    c.zero_copy.settle()?;
                }
                if c.closing.is_some() {
                    c.zero_copy.retire(op);
                } else {
                    if result >= 0 {
                        if op.polling {
                            // POLLOUT (or an error condition the next sendfile reports).
                            op.polling = false;
                        } else {
                            let n = result as usize;
                            op.done += n;
                            self.stats.bytes_sent += n as u64;
                        }
                        let progress = if op.done < op.total() {
                            None
                        } else if let Some(range) = op.file.as_mut() {
                            Some(pump_file(&c.stream, range, &mut self.stats))
                        } else {
                            Some(FileProgress::Finished)
                        };
                        match progress {
                            None => {
                                // Short write: the socket buffer filled. Send the rest.
                                self.stats.short_writes += 1;
                                op.aim();
                                c.send = Some(op);
                                self.push_send(conn)?;
                            }
                            Some(FileProgress::Finished) => {
                                c.zero_copy.retire(op);
                                if let Some((head, body)) = c.queued.pop_front() {
                                    let zero_copy = wants_zero_copy(min_len, &c.zero_copy, &body);
                                    c.send = Some(SendOp::new(head, body, zero_copy));
                                    self.push_send(conn)?;
                                }
                                on_event(TcpEvent::Sent { conn }, &mut self.outbox);
                                events += 1;
                                self.apply_outbox()?;
                            }
                            Some(FileProgress::Blocked) => {
                                op.polling = true;
                                c.send = Some(op);
                                self.push_send(conn)?;
                            }
                            Some(FileProgress::Failed(errno)) => {
                                self.begin_close(conn, CloseReason::Error(errno))?;
                            }
                        }
                    } else if matches!(-result, libc::EINTR | libc::EAGAIN) {
                        if -result == libc::EAGAIN {
                            self.stats.eagain_retries += 1;
                        }
                        c.send = Some(op);
                        self.push_send(conn)?;
                    } else if -result == libc::EINVAL && op.zero_copy && self.zero_copy_report_usage
                    {
                        // 6.1 has SENDMSG_ZC but not IORING_SEND_ZC_REPORT_USAGE: drop the flag.
                        c.send = Some(op);
                        self.zero_copy_report_usage = false;
                        self.push_send(conn)?;
                    } else {
                        c.zero_copy.retire(op);
                        self.begin_close(conn, CloseReason::Error(-result))?;
                    }
                }
            }
            // A connection closed with nothing in flight (see begin_close).
            CONTROL_CLOSE => {}
            _ => return Err(unknown(user_data)),
        }
        events += self.finish_close(conn, on_event)?;
        Ok(events)
    }

    /// Closes the socket of a closing connection once nothing is in flight on it.
    fn finish_close(
        &mut self,
        conn: ConnId,
        on_event: &mut impl FnMut(TcpEvent<'_>, &mut TcpOutbox),
    ) -> Result<usize, UringError> {
        let Some(c) = self.conn_mut(conn) else {
            return Ok(0);
        };
        let Some(reason) = c.closing else {
            return Ok(0);
        };
        if !c.idle() {
            return Ok(0);
        }
        let c = self.conns[conn.index as usize]
            .take()
            .expect("checked above");
        self.release(conn, c);
        self.free.push(conn.index);
        self.live -= 1;
        self.stats.closed += 1;
        if matches!(reason, CloseReason::Error(_)) {
            self.stats.closed_on_error += 1;
        }
        on_event(TcpEvent::Closed { conn, reason }, &mut self.outbox);
        self.apply_outbox()?;
        Ok(1)
    }

    /// Closes the socket of a connection with nothing in flight. Zero-copy pages the kernel may
    /// still read (queued in the now orphaned socket until acknowledged) stay held in
    /// `lingering` until their notifications arrive.
    fn release(&mut self, conn: ConnId, mut c: Conn) {
        // Best effort FIN before close; the kernel would send one anyway, but shutdown makes
        // it explicit even if a clone of the descriptor existed.
        let _ = c.stream.shutdown(Shutdown::Both);
        if c.zero_copy.pending > 0 {
            self.lingering
                .push((conn, std::mem::take(&mut c.zero_copy)));
        }
        drop(c);
    }

    /// A zero-copy notification for `conn`, live or closed.
    fn zero_copy_notified(&mut self, conn: ConnId, result: i32) -> Result<(), UringError> {
        self.stats.zero_copy_notifications += 1;
        if result as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
            self.stats.zero_copy_copied += 1;
        }
        if let Some(c) = slot(&mut self.conns, conn) {
            return c.zero_copy.settle();
        }
        let Some(i) = self.lingering.iter().position(|(id, _)| *id == conn) else {
            return Err(unknown(op_data(conn, KIND_SEND)));
        };
        self.lingering[i].1.settle()?;
        if self.lingering[i].1.pending == 0 {
            self.lingering.swap_remove(i);
        }
        Ok(())
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

    fn push_send(&mut self, conn: ConnId) -> Result<(), UringError> {
        let report_usage = if self.zero_copy_report_usage {
            SEND_ZC_REPORT_USAGE
        } else {
            0
        };
        let Some(c) = slot(&mut self.conns, conn) else {
            return Ok(());
        };
        let fd = types::Fd(c.stream.as_raw_fd());
        let Some(op) = c.send.as_deref() else {
            return Ok(());
        };
        // A head whose body follows from a file: MSG_MORE holds it for the body's first
        // segment (as nginx's `tcp_nopush` does), instead of a small segment of its own per
        // response; sendfile's last piece, sent without it, pushes everything out.
        let more = if op.file.is_some() { libc::MSG_MORE } else { 0 };
        let flags = (libc::MSG_NOSIGNAL | more) as u32;
        let entry = if op.polling {
            // One-shot: the file body goes on with sendfile when the socket takes more.
            opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
        } else if op.zero_copy {
            // Counted before the push: an overcount only keeps buffers longer.
            c.zero_copy.pending += 1;
            self.stats.zero_copy_sends += 1;
            opcode::SendMsgZc::new(fd, &raw const op.msg)
                .ioprio(report_usage)
                .flags(flags)
                .build()
        } else {
            opcode::SendMsg::new(fd, &raw const op.msg)
                .flags(flags)
                .build()
        };
        let entry = entry.user_data(op_data(conn, KIND_SEND));
        // SAFETY: a poll points at no memory. For the sends, the msghdr, iovecs, head and body
        // live in the boxed SendOp held in `c.send` until this entry's completion is reaped
        // (finish_close waits for it); the fd
        // is the connection's stream, dropped only then too. For SENDMSG_ZC the kernel may read
        // the head and body until the notification: the finished SendOp then moves into the
        // connection's ZeroCopyHold (and with it into `lingering` if the connection closes),
        // freed only once every notification counted in `pending` has arrived.
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

fn io_error(op: &'static str) -> impl FnOnce(io::Error) -> UringError {
    move |source| UringError::Io { op, source }
}

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

impl TcpWorker {
    /// Bookkeeping of a completion during Drop: marks the operation finished, no events.
    fn retire(
        &mut self,
        Completion {
            user_data,
            result,
            flags,
        }: Completion,
    ) {
        if user_data == ACCEPT {
            if !cqueue::more(flags) {
                self.accept_armed = false;
            }
            if result >= 0 {
                // SAFETY: a new descriptor nobody owns; closed at once.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
        } else if user_data == CONTROL {
            self.control_in_flight -= 1;
        } else {
            let conn = op_conn(user_data);
            if user_data & KIND_MASK == KIND_SEND && cqueue::notif(flags) {
                let _ = self.zero_copy_notified(conn, result);
            } else if let Some(c) = self.conn_mut(conn) {
                match user_data & KIND_MASK {
                    KIND_RECV => c.recv_in_flight = false,
                    KIND_SEND => {
                        if let Some(op) = c.send.take() {
                            if op.zero_copy && !cqueue::more(flags) {
                                let _ = c.zero_copy.settle();
                            }
                            c.zero_copy.retire(op);
                        }
                    }
                    _ => {}
                }
            }
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn uring_available() -> bool {
        match super::super::uring::probe() {
            Ok(_) => true,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping io_uring test: {e}");
                false
            }
            Err(e) => panic!("CI=true and io_uring is not usable: {e}"),
        }
    }

    /// Runs the worker until `until` returns true for an event, collecting the events' kinds.
    fn run_until(
        worker: &mut TcpWorker,
        mut on: impl FnMut(&TcpEvent<'_>, &mut TcpOutbox) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut done = false;
        while !done {
            assert!(Instant::now() < deadline, "event did not arrive in time");
            worker
                .run_once(Some(deadline), |event, outbox| done |= on(&event, outbox))
                .expect("run_once");
        }
    }

    #[test]
    fn echo_close_and_stale_ids() {
        if !uring_available() {
            return;
        }
        let listener =
            reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
        let address = listener.local_addr().expect("address");
        // SO_REUSEPORT: a second listener on the same port is allowed. Closed again before the
        // client connects, or the kernel could hand the connection to it.
        drop(reuseport_listener(address, 16).expect("second listener, same port"));
        let mut worker = TcpWorker::new(listener, TcpWorkerConfig::default()).expect("worker");
        let mut client = TcpStream::connect(address).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let client_addr = client.local_addr().expect("client address");
        let mut conn = None;
        run_until(&mut worker, |event, _| match event {
            TcpEvent::Accepted { conn: c, peer } => {
                assert_eq!(*peer, client_addr, "peer address");
                conn = Some(*c);
                true
            }
            other => panic!("unexpected {other:?}"),
        });
        let conn = conn.expect("accepted");
        client.write_all(b"hello").expect("client write");
        run_until(&mut worker, |event, outbox| match event {
            TcpEvent::Data { conn: c, data } => {
                assert_eq!((*c, *data), (conn, &b"hello"[..]));
                // Head and body as two iovecs of one sendmsg.
                outbox.send(*c, b"he".to_vec(), Bytes::from_static(b"llo"));
                false
            }
            TcpEvent::Sent { conn: c } => {
                assert_eq!(*c, conn);
                true
            }
            other => panic!("unexpected {other:?}"),
        });
        let mut echo = [0u8; 5];
        client.read_exact(&mut echo).expect("echo");
        assert_eq!(&echo, b"hello");
        assert_eq!(worker.stats().bytes_sent, 5);

        assert!(worker.close(conn).expect("close"), "live id closes");
        run_until(&mut worker, |event, _| match event {
            TcpEvent::Closed { conn: c, reason } => {
                assert_eq!((*c, *reason), (conn, CloseReason::Local));
                true
            }
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(client.read(&mut echo).expect("EOF after close"), 0);
        assert_eq!(worker.connections(), 0);
        assert!(
            !worker.send(conn, Vec::new(), Bytes::new()).expect("send"),
            "a dead id is refused"
        );
        assert!(!worker.close(conn).expect("close"), "a dead id is refused");

        // A new connection reuses the slot with a new generation: the old id stays dead.
        let _client2 = TcpStream::connect(address).expect("connect");
        let mut conn2 = None;
        run_until(&mut worker, |event, _| match event {
            TcpEvent::Accepted { conn: c, .. } => {
                conn2 = Some(*c);
                true
            }
            other => panic!("unexpected {other:?}"),
        });
        let conn2 = conn2.expect("accepted");
        assert_eq!(conn2.index(), conn.index(), "slot reused");
        assert_ne!(conn2, conn, "new generation");
        assert!(!worker.close(conn).expect("close"), "old id still dead");
        // Dropping with a receive in flight cancels and drains it.
        drop(worker);
    }

    /// File bodies go out with sendfile from a sealed memfd: byte-exact ranges, in order behind
    /// one another, through socket buffers far smaller than the body (so the worker waits for
    /// POLLOUT), and a range past the file's end closes the connection instead of hanging it.
    #[test]
    fn send_file_streams_ranges_through_full_sockets() {
        if !uring_available() {
            return;
        }
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
        let (_, file) = super::super::memfile::seal("send-file-test", &data).expect("seal");
        let file = file.expect("a file");
        let listener =
            reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
        let address = listener.local_addr().expect("address");
        let mut worker = TcpWorker::new(listener, TcpWorkerConfig::default()).expect("worker");
        // Per client: the ranges sent to it, one after another on one connection. The last
        // runs 90 bytes past the end of the file.
        let plans: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, 4_000_000)],
            vec![(1_234_567, 2_000_000), (17, 1)],
            vec![(3_999_000, 1_000), (0, 300_000)],
            vec![(3_999_990, 100)],
        ];
        let past_end = plans.len() - 1;
        let mut peers = Vec::new();
        let clients: Vec<_> = plans
            .iter()
            .map(|plan| {
                let expected: Vec<u8> = plan
                    .iter()
                    .flat_map(|&(offset, len)| {
                        let end = (offset + len).min(data.len() as u64);
                        let mut part = b"HEAD".to_vec();
                        part.extend_from_slice(&data[offset as usize..end as usize]);
                        part
                    })
                    .collect();
                let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                // A small receive window keeps the server's socket buffer full.
                client.set_recv_buffer_size(8192).expect("SO_RCVBUF");
                client.connect(&address.into()).expect("connect");
                let mut client = TcpStream::from(client);
                peers.push(client.local_addr().expect("client address"));
                client
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    // Until EOF, or a reset (the past-the-end connection may be cut so).
                    let _ = client.read_to_end(&mut got);
                    (got.len(), got == expected)
                })
            })
            .collect();
        // Connection of each plan, matched by the client's address.
        let mut conns: Vec<Option<ConnId>> = vec![None; plans.len()];
        run_until(&mut worker, |event, _| match event {
            TcpEvent::Accepted { conn, peer } => {
                let i = peers.iter().position(|p| p == peer).expect("a test client");
                conns[i] = Some(*conn);
                conns.iter().all(Option::is_some)
            }
            other => panic!("unexpected {other:?}"),
        });
        let conns: Vec<ConnId> = conns.into_iter().flatten().collect();
        // Idle connections with receives armed on non-blocking sockets: io_uring must wait for
        // data, not bounce EAGAIN back at us.
        let idle_until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < idle_until {
            worker
                .run_once(Some(idle_until), |event, _| panic!("unexpected {event:?}"))
                .expect("run_once");
        }
        assert_eq!(worker.stats().eagain_retries, 0, "idle receives spun");
        for (conn, plan) in conns.iter().zip(&plans) {
            for &(offset, len) in plan {
                assert!(
                    worker
                        .send_file(*conn, b"HEAD".to_vec(), file.clone(), offset, len)
                        .expect("send_file")
                );
            }
        }
        let mut sent = vec![0; plans.len()];
        let mut closed = 0;
        run_until(&mut worker, |event, outbox| {
            let i = match event {
                TcpEvent::Sent { conn } | TcpEvent::Closed { conn, .. } => {
                    conns.iter().position(|c| c == conn).expect("known")
                }
                other => panic!("unexpected {other:?}"),
            };
            match event {
                TcpEvent::Sent { conn } => {
                    assert_ne!(i, past_end, "a range past the end is never complete");
                    sent[i] += 1;
                    if sent[i] == plans[i].len() {
                        outbox.close(*conn);
                    }
                }
                TcpEvent::Closed { reason, .. } => {
                    let expected = if i == past_end {
                        CloseReason::Error(libc::EIO)
                    } else {
                        CloseReason::Local
                    };
                    assert_eq!(*reason, expected, "connection {i}");
                    closed += 1;
                }
                _ => unreachable!(),
            }
            closed == plans.len()
        });
        for (i, client) in clients.into_iter().enumerate() {
            let (len, exact) = client.join().expect("client thread");
            assert!(exact, "client {i} got {len} bytes, not exactly its ranges");
        }
        let stats = worker.stats();
        let body_bytes: u64 = plans.iter().flatten().map(|&(_, len)| len).sum::<u64>() - 90;
        assert_eq!(stats.sendfile_bytes, body_bytes);
        assert!(stats.sendfile_waits > 0, "socket buffers filled: {stats:?}");
    }

    #[test]
    fn peer_close_is_reported() {
        if !uring_available() {
            return;
        }
        let listener =
            reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
        let address = listener.local_addr().expect("address");
        let mut worker = TcpWorker::new(listener, TcpWorkerConfig::default()).expect("worker");
        let client = TcpStream::connect(address).expect("connect");
        run_until(&mut worker, |event, _| {
            matches!(event, TcpEvent::Accepted { .. })
        });
        drop(client);
        run_until(&mut worker, |event, _| match event {
            TcpEvent::Closed { reason, .. } => {
                assert_eq!(*reason, CloseReason::PeerClosed);
                true
            }
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(worker.stats().closed, 1);
    }

    #[test]
    fn zero_copy_transfer_is_byte_exact() {
        if !uring_available() {
            return;
        }
        let caps = super::super::uring::probe().expect("probe");
        if !caps.sendmsg_zc {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true and the kernel lacks IORING_OP_SENDMSG_ZC"
            );
            eprintln!("skipping: no IORING_OP_SENDMSG_ZC");
            return;
        }
        let listener =
            reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
        let address = listener.local_addr().expect("address");
        let config = TcpWorkerConfig {
            zero_copy_min_len: Some(4096),
            ..TcpWorkerConfig::default()
        };
        let mut worker = TcpWorker::new(listener, config).expect("worker");
        assert!(worker.zero_copy_enabled());
        // 8 MiB overflows the socket buffer, so zero-copy short writes are resubmitted; the
        // second, short body goes out with plain SENDMSG behind it on the same connection.
        let big: Vec<u8> = (0..8 << 20)
            .map(|i: usize| (i * 31 + i / 997) as u8)
            .collect();
        let mut expected = b"head-1".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"head-2tail");
        let want = expected.len();
        let reader = std::thread::spawn(move || {
            let mut client = TcpStream::connect(address).expect("connect");
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut got = vec![0u8; want];
            client.read_exact(&mut got).expect("read all");
            got
        });
        let mut conn = None;
        let mut sent = 0;
        run_until(&mut worker, |event, outbox| match event {
            TcpEvent::Accepted { conn: c, .. } => {
                conn = Some(*c);
                outbox.send(*c, b"head-1".to_vec(), Bytes::from(big.clone()));
                outbox.send(*c, b"head-2".to_vec(), Bytes::from_static(b"tail"));
                false
            }
            TcpEvent::Sent { .. } => {
                sent += 1;
                sent == 2
            }
            other => panic!("unexpected {other:?}"),
        });
        let got = reader.join().expect("reader");
        assert!(got == expected, "bytes differ from what was sent");
        let conn = conn.expect("accepted");
        // Close at once: notifications still outstanding linger past the connection.
        assert!(worker.close(conn).expect("close"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut closed = false;
        loop {
            let stats = worker.stats();
            if closed && stats.zero_copy_notifications == stats.zero_copy_sends {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "notifications missing: {stats:?}"
            );
            worker
                .run_once(
                    Some(Instant::now() + Duration::from_millis(50)),
                    |event, _| match event {
                        TcpEvent::Closed { conn: c, .. } => closed |= c == conn,
                        other => panic!("unexpected {other:?}"),
                    },
                )
                .expect("run_once");
        }
        let stats = worker.stats();
        assert_eq!(stats.bytes_sent, want as u64);
        assert!(stats.zero_copy_sends >= 1, "{stats:?}");
        assert!(
            stats.short_writes >= 1,
            "8 MiB fits no socket buffer: {stats:?}"
        );
        // Loopback delivers to a local socket, which always copies (kernel
        // Documentation/networking/msg_zerocopy.rst, "Loopback").
        if worker.zero_copy_report_usage {
            assert_eq!(stats.zero_copy_copied, stats.zero_copy_notifications);
        }
        assert!(worker.lingering.is_empty(), "every hold released");
    }

    #[test]
    fn worker_can_move_to_its_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<TcpWorker>();
    }
}
