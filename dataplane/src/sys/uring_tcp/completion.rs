//! What the TCP worker does with each completion: in `run_once`, turned into events; in `Drop`,
//! only counted off.
use std::{
    net::{Shutdown, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
};

use io_uring::cqueue;

use super::{
    ACCEPT, CONTROL, CONTROL_CLOSE, CloseReason, Completion, Conn, ConnId, KIND_MASK, KIND_RECV,
    KIND_SEND, TcpEvent, TcpOutbox, TcpWorker, UringError, op_conn,
    send::{FileProgress, SendOp, pump_file, wants_zero_copy},
    slot, unknown,
};

impl TcpWorker {
    /// Handles one completion; returns how many events it produced.
    pub(super) fn complete(
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
    pub(super) fn finish_close(
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
    pub(super) fn release(&mut self, conn: ConnId, mut c: Conn) {
        // Best effort FIN before close; the kernel would send one anyway, but shutdown makes
        // it explicit even if a clone of the descriptor existed.
        let _ = c.stream.shutdown(Shutdown::Both);
        if c.zero_copy.pending > 0 {
            self.lingering
                .push((conn, std::mem::take(&mut c.zero_copy)));
        }
        drop(c);
    }

    /// Bookkeeping of a completion during Drop: marks the operation finished, no events.
    pub(super) fn retire(
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
