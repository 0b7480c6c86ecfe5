//! One read transfer on the server side: [`TftpTransfer`] sends a file to one client from its own
//! TID (RFC 1350 §4), with the options agreed at the request.
//!
//! * Blocks are numbered from 1; numbers past 65535 wrap to 0 (the common convention, what
//!   tftpd-hpa, iPXE and EDK2 do: RFC 1350 says nothing). Internally blocks are counted in `u64`,
//!   and a 16-bit ACK number is mapped onto the blocks sent so far.
//! * Lock-step (windowsize 1, RFC 1350 §2) or windowed (RFC 7440): up to `windowsize` blocks
//!   are in flight; an ACK for block n slides the window so that it starts at n + 1, and the
//!   sending resumes from there (blocks after n that were already sent are sent again: the client
//!   discarded them).
//! * An ACK that does not move the window (a duplicate) never causes a send: only the
//!   retransmission timer does (RFC 1123 §4.2.3.1, no Sorcerer's Apprentice).
//! * Retransmission: after the timeout only the window's first block (or the OACK) goes again
//!   (a loss window of one block, as TCP's after a timeout, RFC 5681 §3.1), doubling the timeout
//!   at each consecutive timeout up to `TransferLimits::max_backoff`; the next ACK that moves the
//!   window opens it to the negotiated windowsize again. After `max_retries` timeouts in a row
//!   the transfer fails.
//! * The timeout: the client's own when it asked for one (RFC 2349); otherwise measured per
//!   transfer from the round trips of datagrams sent once ([`RttEstimator`], RFC 6298 with
//!   Karn's algorithm), within `TransferLimits::min_timeout..=default_timeout`. Before the first
//!   sample it is `TransferLimits::default_timeout` for DATA 1 and the longer
//!   `TransferLimits::oack_timeout` for the OACK.
//! * A second OACK kills some clients: atftp 0.8 answers it with ERROR 0 and aborts ("tftp:
//!   unexpected OACK", tftp_file.c), so an OACK resent while its ACK 0 is on the way, or while
//!   a client loaded by a storm of boots has not read it yet, costs a machine (issue 18: 31 of
//!   400 atftp clients lost to a resend after 1 s). The OACK is therefore resent late (atftp
//!   itself repeats its RRQ after 5 s when the OACK was lost), and early only when the client
//!   shows that it has none: it repeats its request ([`TftpTransfer::handle_repeated_request`]).
//!   A repeat that may have crossed our datagram (within `min_timeout` of it) is not answered.
//! * Until the client has answered (ACK 0 of the OACK, or ACK 1 of a plain transfer) it is not
//!   known to be at the address it claims: a spoofed RRQ names a victim. Before that only the
//!   first datagram (the OACK, or DATA 1: the window is one block before the first ACK anyway)
//!   is sent, resent at most `max_unverified_retries` times, and no farewell ERROR follows, so
//!   a spoofed request draws a few datagrams of the size of its own answer and nothing more
//!   (issue 19). An ACK can only come from whoever saw the first datagram, which left from a
//!   port of the transfer's own, unknown off path (RFC 1350 §4 TIDs are meant to be random).
//!
//!   The window does not start at one block and double per ACKed window (TCP's slow start): RFC
//!   7440 §4 receivers (atftp) acknowledge only a full window or on their own timeout, so a
//!   window below the negotiated one stalls each step for the client's timeout (measured with
//!   atftp 0.8: 5 s per doubling, 20 s for 21 blocks). The first ACK is the proof that matters
//!   for amplification; after it the negotiated window is what the client asked for.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Transmit;
use super::netascii;
use super::options::OptionSet;
use super::rtt::RttEstimator;
use super::wire::{ErrorCode, HEADER_LEN, Options, Repr, WireError, emit_data_header};

/// Limits every transfer runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    /// Retransmission timeout of DATA 1 when the client did not ask for one (RFC 2349
    /// `timeout`), before any round trip was measured (RFC 6298 §2.1).
    pub default_timeout: Duration,
    /// First retransmission timeout of an OACK (when the client did not ask for a timeout):
    /// longer, since a duplicated OACK makes atftp abort (see the module documentation).
    pub oack_timeout: Duration,
    /// Floor of the timeout measured from round trips; `default_timeout` is its ceiling.
    pub min_timeout: Duration,
    /// Consecutive timeouts before giving up.
    pub max_retries: u32,
    /// Consecutive timeouts before giving up while the client has not answered yet (it may not
    /// be the sender of the request at all): the first datagram goes out at most this many
    /// times more.
    pub max_unverified_retries: u32,
    /// Cap of the doubled retransmission timeout (never below the negotiated timeout).
    pub max_backoff: Duration,
    /// A transfer without a valid ACK for this long ends.
    pub idle_timeout: Duration,
    /// No transfer runs longer than this.
    pub max_duration: Duration,
}

impl Default for TransferLimits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(1),
            // Below the 5 s after which atftp (and tftp-hpa's client) repeat a request whose
            // answer was lost, and above the 1.1 s by which loaded atftp clients had not
            // acknowledged their OACK (issue 18).
            oack_timeout: Duration::from_secs(4),
            // A LAN round trip is well below a millisecond; 250 ms spares a busy client a
            // resent block (RFC 6298's 1 s floor is for the Internet).
            min_timeout: Duration::from_millis(250),
            max_retries: 5,
            // 1 + 3 datagrams over 1 + 2 + 4 s (an OACK over 4 + 8 + 8 s), then 8 s of silence
            // before giving up: an OACK is no longer than the request it answers plus a tsize
            // value, so a spoofed request with an ACK 0 draws at most about 4x its bytes.
            max_unverified_retries: 3,
            max_backoff: Duration::from_secs(8),
            idle_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(600),
        }
    }
}

/// Why a packet reaching a transfer's port was not used. Counted by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferDrop {
    #[error("malformed packet: {0}")]
    Malformed(WireError),
    /// From another address or port than the client's (RFC 1350 §4); an ERROR 5 is sent back
    /// unless one is already waiting.
    #[error("packet from an unknown transfer ID")]
    UnknownTid,
    #[error("packet type not expected on a read transfer")]
    UnexpectedOpcode,
    /// ACK of the block before the window: ignored (RFC 1123 §4.2.3.1).
    #[error("duplicate ACK")]
    DuplicateAck,
    /// ACK of a block never sent.
    #[error("ACK outside the window")]
    AckOutOfWindow,
    /// An ACK other than ACK 0 while the OACK is unacknowledged.
    #[error("ACK before the OACK was acknowledged")]
    AckBeforeOack,
    #[error("transfer already finished")]
    Finished,
}

impl TransferDrop {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(e) => e.as_str(),
            Self::UnknownTid => "unknown_tid",
            Self::UnexpectedOpcode => "unexpected_opcode",
            Self::DuplicateAck => "duplicate_ack",
            Self::AckOutOfWindow => "ack_out_of_window",
            Self::AckBeforeOack => "ack_before_oack",
            Self::Finished => "finished",
        }
    }
}

/// Why a transfer ended without the last ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferFailure {
    /// The client sent an ERROR (code 8 means it refused the OACK, RFC 2347).
    #[error("client sent error {0:?}")]
    PeerError(ErrorCode),
    #[error("no ACK after the last retransmission")]
    RetriesExhausted,
    #[error("idle for longer than the limit")]
    Idle,
    #[error("transfer took longer than the limit")]
    DurationExceeded,
}

impl TransferFailure {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PeerError(ErrorCode::OptionRefused) => "peer_refused_options",
            Self::PeerError(_) => "peer_error",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Idle => "idle",
            Self::DurationExceeded => "duration_exceeded",
        }
    }

    /// The message sent to the client when the server gives up (none for client errors).
    const fn farewell(self) -> Option<&'static str> {
        match self {
            Self::PeerError(_) => None,
            Self::RetriesExhausted => Some("timed out"),
            Self::Idle => Some("idle timeout"),
            Self::DurationExceeded => Some("transfer time limit exceeded"),
        }
    }
}

/// How a transfer ended, with its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<(), TransferFailure>,
    /// Bytes of file data (as sent: netascii-encoded in netascii mode) the client acknowledged.
    pub file_bytes: u64,
    /// All UDP payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    pub packets_sent: u64,
    /// DATA blocks and OACKs sent again.
    pub retransmits: u64,
    pub duration: Duration,
}

/// Parameters agreed for a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferParams {
    pub blksize: u16,
    pub windowsize: u16,
    /// Retransmission timeout before backoff.
    pub timeout: Duration,
    pub netascii: bool,
    /// The options to acknowledge in an OACK (RFC 2347); empty means no OACK, DATA 1 first.
    pub oack: OptionSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// ERROR 5 to a stranger (RFC 1350 §4).
    UnknownTid(SocketAddr),
    /// Last words to the client before failing.
    Farewell(TransferFailure),
}

/// A read transfer in progress. See the module documentation for the rules it follows.
#[derive(Debug)]
pub struct TftpTransfer {
    peer: SocketAddr,
    file: Bytes,
    params: TransferParams,
    limits: TransferLimits,
    /// Number of the last block (the short one, possibly empty).
    last_block: u64,
    /// Encoded length of the file.
    wire_len: u64,
    /// OACK not acknowledged yet.
    oack_pending: bool,
    /// OACK due for (re)transmission.
    oack_due: bool,
    /// The client has answered from its address (any valid ACK).
    verified: bool,
    /// After a timeout: send only the window's first block until an ACK moves the window.
    loss_window: bool,
    /// First unacknowledged block.
    base: u64,
    /// Next block to send.
    next: u64,
    /// One past the highest block ever sent (to tell retransmissions apart).
    sent_high: u64,
    /// Netascii encoder position at `base` and at `next`.
    base_cursor: netascii::Cursor,
    next_cursor: netascii::Cursor,
    retries: u32,
    /// Round trips measured on this transfer.
    rtt: RttEstimator,
    /// The datagram being timed for a round-trip sample: its block (0 for the OACK) and when it
    /// went out. Cleared on a timeout: a retransmitted datagram gives no sample (Karn).
    timed: Option<(u64, Instant)>,
    /// When the last datagram went out.
    last_sent: Instant,
    deadline: Option<Instant>,
    started: Instant,
    last_progress: Instant,
    pending: Pending,
    bytes_sent: u64,
    packets_sent: u64,
    retransmits: u64,
    outcome: Option<Outcome>,
}

impl TftpTransfer {
    /// Starts a transfer of `file` to `peer`. Normally made by [`super::TftpServer`].
    pub fn new(
        now: Instant,
        peer: SocketAddr,
        file: Bytes,
        params: TransferParams,
        limits: TransferLimits,
    ) -> Self {
        let wire_len = if params.netascii {
            netascii::encoded_len(&file)
        } else {
            file.len() as u64
        };
        let blksize = u64::from(params.blksize.max(1));
        let oack = !params.oack.is_empty();
        Self {
            peer,
            file,
            params: TransferParams {
                blksize: params.blksize.max(1),
                windowsize: params.windowsize.max(1),
                ..params
            },
            limits,
            last_block: wire_len / blksize + 1,
            wire_len,
            oack_pending: oack,
            oack_due: oack,
            verified: false,
            loss_window: false,
            base: 1,
            next: 1,
            sent_high: 1,
            base_cursor: netascii::Cursor::default(),
            next_cursor: netascii::Cursor::default(),
            retries: 0,
            rtt: RttEstimator::default(),
            timed: None,
            last_sent: now,
            deadline: None,
            started: now,
            last_progress: now,
            pending: Pending::None,
            bytes_sent: 0,
            packets_sent: 0,
            retransmits: 0,
            outcome: None,
        }
    }

    /// The client's address and port (its TID).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn params(&self) -> &TransferParams {
        &self.params
    }

    /// Smallest transmit buffer [`TftpTransfer::poll_transmit`] accepts.
    pub fn max_datagram_len(&self) -> usize {
        (HEADER_LEN + usize::from(self.params.blksize)).max(2 + self.params.oack.buffer_len())
    }

    /// The smoothed round trip measured so far.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// The timeout before backoff: the client's (RFC 2349), else measured, else the initial one.
    fn base_timeout(&self) -> Duration {
        if self.params.oack.timeout.is_some() {
            return self.params.timeout;
        }
        // A measured round trip only ever shortens the timeout. A sample can hold a client's own
        // retransmission timer (its ACK was lost and it repeated it later: the same ACK); a
        // timeout grown from such samples would outlast the client's dally after the last
        // block and wait for an ACK that no longer comes. A resent DATA block costs a slow
        // client nothing: it acknowledges it again, and the server ignores the duplicate ACK.
        let cap = self.limits.default_timeout;
        if let Some(rto) = self.rtt.rto(self.limits.min_timeout.min(cap), cap) {
            rto
        } else if self.oack_pending {
            self.limits.oack_timeout.max(self.params.timeout)
        } else {
            self.params.timeout
        }
    }

    /// The retransmission timeout now: the base timeout doubled per consecutive timeout.
    fn rto(&self) -> Duration {
        let base = self.base_timeout();
        let backed_off = base.saturating_mul(1u32 << self.retries.min(16));
        backed_off.min(self.limits.max_backoff.max(base))
    }

    /// A round trip ends with the ACK of `acked` (0: of the OACK), taken as a sample when it
    /// acknowledges all that was sent. A windowed client acknowledges part of a window only
    /// after its own timeout (RFC 7440 §4): that wait is not a round trip, and counting it would
    /// stretch the timeout past the client's dally after the last block.
    fn measure(&mut self, now: Instant, acked: u64) {
        if let Some((block, at)) = self.timed
            && acked >= block
            && acked + 1 >= self.next
        {
            self.rtt.sample(now.saturating_duration_since(at));
            self.timed = None;
        }
    }

    fn block_offset(&self, block: u64) -> u64 {
        (block - 1) * u64::from(self.params.blksize)
    }

    fn finish(&mut self, now: Instant, result: Result<(), TransferFailure>) {
        let acked_blocks = self.base - 1;
        self.outcome = Some(Outcome {
            result,
            file_bytes: self.block_offset(acked_blocks + 1).min(self.wire_len),
            bytes_sent: self.bytes_sent,
            packets_sent: self.packets_sent,
            retransmits: self.retransmits,
            duration: now.saturating_duration_since(self.started),
        });
        self.deadline = None;
    }

    fn fail(&mut self, now: Instant, failure: TransferFailure) {
        // No last words to an address that never answered: it may be a spoofed victim.
        if failure.farewell().is_some() && self.verified {
            self.pending = Pending::Farewell(failure);
            self.deadline = None;
        } else {
            self.finish(now, Err(failure));
        }
    }

    /// `Some` once the transfer is over (after the last ACK, a client ERROR, or after the error
    /// telling the client the server gave up has been handed out by `poll_transmit`).
    pub fn is_finished(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Handles a datagram that arrived at this transfer's port from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), TransferDrop> {
        if self.outcome.is_some() || matches!(self.pending, Pending::Farewell(_)) {
            return Err(TransferDrop::Finished);
        }
        if from != self.peer {
            // RFC 1350 §4: tell the sender, do not disturb the transfer.
            if self.pending == Pending::None {
                self.pending = Pending::UnknownTid(from);
            }
            return Err(TransferDrop::UnknownTid);
        }
        match Repr::parse_bytes(datagram).map_err(TransferDrop::Malformed)? {
            Repr::Ack { block } => self.handle_ack(now, block),
            Repr::Error { code, .. } => {
                self.finish(now, Err(TransferFailure::PeerError(code)));
                Ok(())
            }
            _ => Err(TransferDrop::UnexpectedOpcode),
        }
    }

    fn handle_ack(&mut self, now: Instant, block: u16) -> Result<(), TransferDrop> {
        if self.oack_pending {
            if block != 0 {
                return Err(TransferDrop::AckBeforeOack);
            }
            self.verified = true;
            self.oack_pending = false;
            self.oack_due = false;
            self.measure(now, 0);
            self.progress(now);
            return Ok(());
        }
        let acked_before = self.base - 1;
        // Map the 16-bit number onto the blocks sent so far (RFC 1350 numbers wrap, see above).
        let ahead = u64::from(block.wrapping_sub(acked_before as u16));
        if ahead == 0 {
            return Err(TransferDrop::DuplicateAck);
        }
        let acked = acked_before + ahead;
        if acked >= self.sent_high {
            return Err(TransferDrop::AckOutOfWindow);
        }
        self.verified = true;
        self.loss_window = false;
        self.measure(now, acked);
        if acked == self.last_block {
            self.base = acked + 1;
            self.finish(now, Ok(()));
            return Ok(());
        }
        // Slide the window to start after `acked`, and send from there (RFC 7440 §4).
        if self.params.netascii {
            let skip = u64::from(self.params.blksize) * (acked + 1 - self.base);
            netascii::skip(&self.file, &mut self.base_cursor, skip);
            self.next_cursor = self.base_cursor;
        }
        self.base = acked + 1;
        self.next = self.base;
        self.progress(now);
        Ok(())
    }

    fn progress(&mut self, now: Instant) {
        self.retries = 0;
        self.deadline = None;
        self.last_progress = now;
    }

    /// Writes the next datagram into `buf` (at least [`TftpTransfer::max_datagram_len`] long,
    /// or nothing is written) and says where it goes. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.outcome.is_some() {
            return None;
        }
        match self.pending {
            Pending::None => {}
            Pending::UnknownTid(stranger) => {
                self.pending = Pending::None;
                let len = emit_error(buf, ErrorCode::UnknownTid, b"unknown transfer ID")?;
                self.count_sent(len);
                return Some(Transmit { dst: stranger, len });
            }
            Pending::Farewell(failure) => {
                let message = failure.farewell().unwrap_or("").as_bytes();
                let len = emit_error(buf, ErrorCode::NotDefined, message)?;
                self.pending = Pending::None;
                self.count_sent(len);
                self.finish(now, Err(failure));
                return Some(Transmit {
                    dst: self.peer,
                    len,
                });
            }
        }
        if self.oack_pending {
            if !self.oack_due {
                return None;
            }
            let repr = Repr::Oack {
                options: Options::Set(self.params.oack),
            };
            if buf.len() < repr.buffer_len() {
                return None;
            }
            let len = repr.emit(buf);
            if self.retries > 0 {
                // Only a timeout or a repeated request makes the OACK due again.
                self.retransmits += 1;
            } else {
                self.timed = Some((0, now));
            }
            self.oack_due = false;
            self.sent(now, len);
            return Some(Transmit {
                dst: self.peer,
                len,
            });
        }
        let window = if self.loss_window {
            1
        } else {
            self.params.windowsize
        };
        let window_end = self.base + u64::from(window);
        if self.next >= window_end || self.next > self.last_block {
            return None;
        }
        let blksize = usize::from(self.params.blksize);
        if buf.len() < HEADER_LEN + blksize {
            return None;
        }
        // RFC 1350 §2 block numbers, wrapping past 65535 to 0.
        emit_data_header(buf, self.next as u16);
        let out = &mut buf[HEADER_LEN..HEADER_LEN + blksize];
        let n = if self.params.netascii {
            netascii::fill(&self.file, &mut self.next_cursor, out)
        } else {
            let offset = self.block_offset(self.next) as usize;
            let chunk = self
                .file
                .get(offset..(offset + blksize).min(self.file.len()))
                .unwrap_or(&[]);
            out[..chunk.len()].copy_from_slice(chunk);
            chunk.len()
        };
        if self.next < self.sent_high {
            self.retransmits += 1;
        } else if self.timed.is_none() {
            self.timed = Some((self.next, now));
        }
        self.next += 1;
        self.sent_high = self.sent_high.max(self.next);
        self.sent(now, HEADER_LEN + n);
        Some(Transmit {
            dst: self.peer,
            len: HEADER_LEN + n,
        })
    }

    fn count_sent(&mut self, len: usize) {
        self.packets_sent += 1;
        self.bytes_sent += len as u64;
    }

    fn sent(&mut self, now: Instant, len: usize) {
        self.count_sent(len);
        self.last_sent = now;
        self.deadline = Some(now + self.rto());
    }

    /// The most timeouts in a row before giving up: fewer while the client has not answered.
    fn max_retries(&self) -> u32 {
        if self.verified {
            self.limits.max_retries
        } else {
            self.limits
                .max_unverified_retries
                .min(self.limits.max_retries)
        }
    }

    /// Makes the datagram at the start of the window (or the OACK) due again.
    fn retransmit(&mut self) {
        self.retries += 1;
        self.deadline = None;
        // Karn: the ACK that follows may answer either copy.
        self.timed = None;
        if self.oack_pending {
            self.oack_due = true;
        } else {
            self.loss_window = true;
            self.next = self.base;
            self.next_cursor = self.base_cursor;
        }
    }

    /// The client sent its request again from the same address and port: until it has
    /// answered, that says it has not got the first datagram (the OACK or DATA 1), which then
    /// goes again now instead of at the timeout. It counts as a timeout: same backoff, same
    /// limit of resends to an address that never answered. Returns whether anything is due;
    /// `false` when the repeat is ignored (the client has answered before, the datagram is due
    /// anyway, the resends are used up, or the repeat came within `min_timeout` of the last
    /// send and may have crossed it on the wire: a second OACK makes atftp abort).
    pub fn handle_repeated_request(&mut self, now: Instant) -> bool {
        if self.verified
            || self.outcome.is_some()
            || matches!(self.pending, Pending::Farewell(_))
            || self.deadline.is_none()
            || now < self.last_sent + self.limits.min_timeout
            || self.retries >= self.max_retries()
        {
            return false;
        }
        self.retransmit();
        true
    }

    /// When [`TftpTransfer::handle_timeout`] must run next: the retransmission deadline, the
    /// idle limit or the duration limit, whichever comes first. `None` when finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() || matches!(self.pending, Pending::Farewell(_)) {
            // Finished, or only the farewell ERROR is left for `poll_transmit`.
            return None;
        }
        let idle = self.last_progress + self.limits.idle_timeout;
        let limit = self.started + self.limits.max_duration;
        Some(self.deadline.map_or(idle, |d| d.min(idle)).min(limit))
    }

    /// Runs the timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() || matches!(self.pending, Pending::Farewell(_)) {
            return;
        }
        if now >= self.started + self.limits.max_duration {
            return self.fail(now, TransferFailure::DurationExceeded);
        }
        if now >= self.last_progress + self.limits.idle_timeout {
            return self.fail(now, TransferFailure::Idle);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            if self.retries >= self.max_retries() {
                return self.fail(now, TransferFailure::RetriesExhausted);
            }
            self.retransmit();
        }
    }
}

/// Emits an ERROR; `None` if `buf` is too short.
pub(crate) fn emit_error(buf: &mut [u8], code: ErrorCode, message: &[u8]) -> Option<usize> {
    let repr = Repr::Error { code, message };
    (buf.len() >= repr.buffer_len()).then(|| repr.emit(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(len: usize, blksize: u16) -> TftpTransfer {
        TftpTransfer::new(
            Instant::now(),
            "198.18.0.2:50000".parse().expect("address"),
            Bytes::from(vec![7u8; len]),
            TransferParams {
                blksize,
                windowsize: 1,
                timeout: Duration::from_secs(1),
                netascii: false,
                oack: OptionSet::default(),
            },
            TransferLimits::default(),
        )
    }

    #[test]
    fn last_block_is_short_or_empty() {
        assert_eq!(
            transfer(0, 512).last_block,
            1,
            "empty file: one empty block"
        );
        assert_eq!(transfer(511, 512).last_block, 1);
        assert_eq!(
            transfer(512, 512).last_block,
            2,
            "exact multiple: empty block ends it"
        );
        assert_eq!(transfer(1025, 512).last_block, 3);
    }

    #[test]
    fn data_is_written_straight_into_the_lent_buffer() {
        let now = Instant::now();
        let mut t = transfer(600, 512);
        assert_eq!(
            t.poll_transmit(now, &mut [0u8; 515]),
            None,
            "buffer too small"
        );
        let mut buf = [0u8; 516];
        let tx = t.poll_transmit(now, &mut buf).expect("DATA 1");
        assert_eq!(tx.len, 516);
        assert_eq!(&buf[..4], b"\0\x03\0\x01");
        assert!(buf[4..].iter().all(|&b| b == 7));
    }

    #[test]
    fn backoff_caps() {
        let mut t = transfer(10, 512);
        let rtos: Vec<_> = (0..6)
            .map(|retries| {
                t.retries = retries;
                t.rto().as_secs()
            })
            .collect();
        assert_eq!(rtos, [1, 2, 4, 8, 8, 8]);
    }
}
