//! Sending a response: the head and a body from memory with `SENDMSG` (or `SENDMSG_ZC`, holding
//! the pages until the kernel's notification), or a file body with `sendfile(2)` behind it.
use std::{io, net::TcpStream, os::fd::AsRawFd};

use bytes::Bytes;
use io_uring::{opcode, types};
use stampede_proto::files::SealedFile;

use super::{ConnId, KIND_SEND, TcpWorker, TcpWorkerStats, UringError, op_data, slot, unknown};

/// What follows a response head: bytes from memory, written with `SENDMSG`, or a range of a
/// sealed file, handed to the kernel with `sendfile(2)` (page references, no copy).
#[derive(Debug)]
pub(super) enum Payload {
    Bytes(Bytes),
    File(FileRange),
}

/// `len` bytes of `file` from `offset`, still to send.
#[derive(Debug)]
pub(super) struct FileRange {
    pub(super) file: SealedFile,
    pub(super) offset: u64,
    pub(super) remaining: u64,
}

impl Payload {
    pub(super) fn file(file: SealedFile, offset: u64, len: u64) -> Self {
        Self::File(FileRange {
            file,
            offset,
            remaining: len,
        })
    }
}

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

/// One response being sent: a `sendmsg` of the head and body the kernel reads, with the iovecs
/// and header pointing at them at a stable heap address until the completion; then, for a file
/// body, `sendfile` calls, with a `POLLOUT` poll in flight whenever the socket's buffer is full.
pub(super) struct SendOp {
    pub(super) head: Vec<u8>,
    pub(super) body: Bytes,
    /// Bytes of head + body already taken by the kernel.
    pub(super) done: usize,
    /// Every submission of this send is a `SENDMSG_ZC`.
    pub(super) zero_copy: bool,
    /// The file body, sent after head and `body` (which is then empty).
    pub(super) file: Option<FileRange>,
    /// The operation in flight is a `POLLOUT` poll, not a `sendmsg`.
    pub(super) polling: bool,
    pub(super) iov: [libc::iovec; 2],
    pub(super) msg: libc::msghdr,
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
    pub(super) fn new(head: Vec<u8>, payload: Payload, zero_copy: bool) -> Box<Self> {
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

    pub(super) fn total(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Points the iovecs at what is still unsent.
    pub(super) fn aim(&mut self) {
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
pub(super) struct ZeroCopyHold {
    /// `SENDMSG_ZC` submissions pushed whose notification has not arrived (a result without
    /// `IORING_CQE_F_MORE` means none will, and is counted off then).
    pub(super) pending: u32,
    /// Finished sends kept for the kernel: their results arrived, notifications may not have.
    #[expect(
        clippy::vec_box,
        reason = "sends arrive boxed (an in-flight SendOp's msghdr points into itself); only \
                  the head and body heap memory must stay put, and unboxing would just move them"
    )]
    pub(super) held: Vec<Box<SendOp>>,
}

impl ZeroCopyHold {
    /// Takes a finished (or abandoned) send: kept while notifications are outstanding.
    pub(super) fn retire(&mut self, op: Box<SendOp>) {
        if op.zero_copy && self.pending > 0 {
            self.held.push(op);
        }
    }

    /// One submission is settled (notified, or completed without a notification to come).
    pub(super) fn settle(&mut self) -> Result<(), UringError> {
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

pub(super) fn wants_zero_copy(
    min_len: Option<usize>,
    hold: &ZeroCopyHold,
    payload: &Payload,
) -> bool {
    let Payload::Bytes(body) = payload else {
        return false;
    };
    min_len.is_some_and(|min| body.len() >= min) && hold.held.len() < MAX_ZERO_COPY_HELD
}

/// How far a file body got.
pub(super) enum FileProgress {
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
pub(super) fn pump_file(
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

impl TcpWorker {
    pub(super) fn send_payload(
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

    /// A zero-copy notification for `conn`, live or closed.
    pub(super) fn zero_copy_notified(
        &mut self,
        conn: ConnId,
        result: i32,
    ) -> Result<(), UringError> {
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

    pub(super) fn push_send(&mut self, conn: ConnId) -> Result<(), UringError> {
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
}
