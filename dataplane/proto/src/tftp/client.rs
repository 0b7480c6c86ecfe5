//! A sans-IO TFTP read client, for the benchmark harness that plays thousands of booting
//! machines (and for testing the server).
//!
//! It sends a RRQ to the server's well-known port, then talks only to the TID the first answer
//! came from (RFC 1350 §4). An OACK is checked against what was asked (RFC 2347: a server may
//! only grant smaller blksize/windowsize, echo timeout, and answer tsize) and acknowledged with
//! ACK 0; a plain DATA 1 means the server ignored the options. Every `windowsize` blocks, or at
//! the last (short) block, it sends an ACK (RFC 7440). A block after a gap is discarded and the
//! last in-order block acknowledged once, so the server resends from there. On timeout the last
//! RRQ/ACK goes again, with doubling timeouts. After the last ACK the client dallies (RFC 1350
//! §6) to acknowledge a repeated last block in case that ACK was lost.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Transmit;
use super::netascii::Decoder;
use super::options::{DEFAULT_BLKSIZE, OptionSet};
use super::transfer::emit_error;
use super::wire::{ErrorCode, Mode, Options, Repr, RequestKind, WireError};

/// What the downloaded file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expected {
    pub len: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

/// Client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Options put in the RRQ.
    pub options: OptionSet,
    /// `Mode::Octet` or `Mode::Netascii` (netascii is decoded before hashing).
    pub mode: Mode,
    /// Retransmission timeout (doubled per consecutive timeout up to 8×).
    pub timeout: Duration,
    /// Consecutive timeouts before giving up.
    pub max_retries: u32,
    /// How long to stay after the last ACK to answer a repeated last block.
    pub dally: Duration,
    pub expected: Expected,
    /// Keep the file in memory (`TftpClient::data`); otherwise only its hash is kept.
    pub keep_data: bool,
}

impl ClientConfig {
    /// No options, octet: what a plain RFC 1350 client sends.
    pub fn plain() -> Self {
        Self {
            options: OptionSet::default(),
            mode: Mode::Octet,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            dally: Duration::from_secs(2),
            expected: Expected::default(),
            keep_data: false,
        }
    }

    /// Like EDK2's UEFI PXE: blksize 1468, tsize, windowsize 1.
    pub fn edk2() -> Self {
        Self {
            options: OptionSet {
                blksize: Some(1468),
                tsize: Some(0),
                timeout: None,
                windowsize: Some(1),
            },
            ..Self::plain()
        }
    }

    /// Like iPXE: blksize 1432 and tsize.
    pub fn ipxe() -> Self {
        Self {
            options: OptionSet {
                blksize: Some(1432),
                tsize: Some(0),
                timeout: None,
                windowsize: None,
            },
            ..Self::plain()
        }
    }
}

/// Why a download failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFailure {
    #[error("server sent error {0:?}")]
    ServerError(ErrorCode),
    #[error("no answer after the last retransmission")]
    TimedOut,
    /// The OACK granted something not asked for (ERROR 8 sent, RFC 2347).
    #[error("unacceptable OACK")]
    BadOack,
    /// A DATA block longer than the agreed blksize (ERROR 4 sent).
    #[error("DATA longer than the block size")]
    OversizedBlock,
    #[error("received {got} bytes, tsize said {tsize}")]
    TsizeMismatch { tsize: u64, got: u64 },
    #[error("file is {got} bytes, expected {want}")]
    LengthMismatch { want: u64, got: u64 },
    #[error("SHA-256 differs from the expected digest")]
    DigestMismatch,
}

impl ClientFailure {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ServerError(_) => "server_error",
            Self::TimedOut => "timed_out",
            Self::BadOack => "bad_oack",
            Self::OversizedBlock => "oversized_block",
            Self::TsizeMismatch { .. } => "tsize_mismatch",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::DigestMismatch => "digest_mismatch",
        }
    }
}

/// Why a packet reaching the client was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientDrop {
    #[error("malformed packet: {0}")]
    Malformed(WireError),
    #[error("packet from an unknown transfer ID")]
    UnknownTid,
    #[error("unexpected packet")]
    Unexpected,
    #[error("block already received")]
    DuplicateBlock,
    #[error("block after a gap")]
    OutOfOrder,
    #[error("download already over")]
    Finished,
}

impl ClientDrop {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(e) => e.as_str(),
            Self::UnknownTid => "unknown_tid",
            Self::Unexpected => "unexpected",
            Self::DuplicateBlock => "duplicate_block",
            Self::OutOfOrder => "out_of_order",
            Self::Finished => "finished",
        }
    }
}

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOutcome {
    pub result: Result<(), ClientFailure>,
    /// File bytes after netascii decoding.
    pub len: u64,
    /// Bytes received as DATA payload, in order.
    pub wire_bytes: u64,
    pub sha256: [u8; 32],
    /// What the OACK said, if it had tsize.
    pub tsize: Option<u64>,
    pub blksize: u16,
    pub windowsize: u16,
    pub packets_sent: u64,
    /// RRQs and ACKs sent again on timeout.
    pub retransmits: u64,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// RRQ sent, no answer yet.
    Requesting,
    Receiving,
    /// Last ACK sent; answering repeats until the dally deadline.
    Dallying,
    Closed,
}

/// One download. Per-client state is a hasher, counters and the window position.
#[derive(Debug)]
pub struct TftpClient {
    server: SocketAddr,
    /// The server's TID, learned from its first answer.
    peer: Option<SocketAddr>,
    filename: Box<[u8]>,
    config: ClientConfig,
    state: State,
    blksize: u16,
    windowsize: u16,
    tsize: Option<u64>,
    /// Next block wanted (absolute, from 1).
    expected: u64,
    /// In-order blocks since the last ACK.
    in_window: u16,
    rrq_due: bool,
    /// ACK to send (absolute block number).
    ack_due: Option<u64>,
    /// A gap or repeat was answered already since the last progress.
    gap_acked: bool,
    /// ERROR 5 to a stranger, or ERROR to the server before failing.
    stray: Option<SocketAddr>,
    farewell: Option<(ErrorCode, &'static str)>,
    retries: u32,
    deadline: Option<Instant>,
    started: Instant,
    wire_bytes: u64,
    len: u64,
    hasher: Sha256,
    decoder: Option<Decoder>,
    data: Option<Vec<u8>>,
    packets_sent: u64,
    retransmits: u64,
    outcome: Option<ClientOutcome>,
}

impl TftpClient {
    /// Prepares a download of `filename` from `server` (normally port 69); the RRQ goes out at
    /// the first `poll_transmit`.
    pub fn new(now: Instant, server: SocketAddr, filename: &str, config: ClientConfig) -> Self {
        Self {
            server,
            peer: None,
            filename: filename.as_bytes().into(),
            config,
            state: State::Requesting,
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            tsize: None,
            expected: 1,
            in_window: 0,
            rrq_due: true,
            ack_due: None,
            gap_acked: false,
            stray: None,
            farewell: None,
            retries: 0,
            deadline: None,
            started: now,
            wire_bytes: 0,
            len: 0,
            hasher: Sha256::new(),
            decoder: (config.mode == Mode::Netascii).then(Decoder::default),
            data: config.keep_data.then(Vec::new),
            packets_sent: 0,
            retransmits: 0,
            outcome: None,
        }
    }

    /// `Some` once the download is decided (complete and verified, or failed). The client may
    /// still want to run until [`TftpClient::is_closed`] (dallying after the last ACK).
    pub fn is_finished(&self) -> Option<ClientOutcome> {
        self.outcome
    }

    /// Nothing more to send or wait for.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The file, when `keep_data` was set.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// Largest datagram this client sends (the RRQ).
    pub fn max_datagram_len(&self) -> usize {
        self.rrq().buffer_len().max(64)
    }

    fn rrq(&self) -> Repr<'_> {
        Repr::Request {
            kind: RequestKind::Read,
            filename: &self.filename,
            mode: self.config.mode.as_bytes(),
            options: Options::Set(self.config.options),
        }
    }

    fn rto(&self) -> Duration {
        self.config.timeout * (1u32 << self.retries.min(3))
    }

    fn finish(&mut self, now: Instant, result: Result<(), ClientFailure>) {
        let sha256: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        self.outcome = Some(ClientOutcome {
            result,
            len: self.len,
            wire_bytes: self.wire_bytes,
            sha256,
            tsize: self.tsize,
            blksize: self.blksize,
            windowsize: self.windowsize,
            packets_sent: self.packets_sent,
            retransmits: self.retransmits,
            duration: now.saturating_duration_since(self.started),
        });
    }

    fn fail(&mut self, now: Instant, failure: ClientFailure) {
        self.finish(now, Err(failure));
        self.state = State::Closed;
        self.deadline = None;
        self.ack_due = None;
        self.rrq_due = false;
    }

    /// Handles a datagram that arrived at the client's port from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), ClientDrop> {
        if self.state == State::Closed {
            return Err(ClientDrop::Finished);
        }
        match self.peer {
            Some(peer) if peer != from => {
                self.stray.get_or_insert(from);
                return Err(ClientDrop::UnknownTid);
            }
            // The first answer must come from the server's address (any port: its new TID).
            None if from.ip() != self.server.ip() => return Err(ClientDrop::UnknownTid),
            _ => {}
        }
        let repr = Repr::parse_bytes(datagram).map_err(ClientDrop::Malformed)?;
        if self.peer.is_none() && matches!(repr, Repr::Oack { .. } | Repr::Data { .. }) {
            self.peer = Some(from);
        }
        match repr {
            Repr::Error { code, .. } => {
                if self.state == State::Dallying {
                    self.state = State::Closed;
                    self.deadline = None;
                    return Ok(());
                }
                self.fail(now, ClientFailure::ServerError(code));
                Ok(())
            }
            Repr::Oack { options } => self.handle_oack(now, options.to_set()),
            Repr::Data { block, data } => self.handle_data(now, block, data),
            _ => Err(ClientDrop::Unexpected),
        }
    }

    fn handle_oack(&mut self, now: Instant, granted: OptionSet) -> Result<(), ClientDrop> {
        match self.state {
            State::Requesting => {}
            // Our ACK 0 was lost and the server repeats its OACK: acknowledge again, once.
            State::Receiving if self.expected == 1 && !self.gap_acked => {
                self.gap_acked = true;
                self.ack_due = Some(0);
                return Ok(());
            }
            _ => return Err(ClientDrop::Unexpected),
        }
        let asked = self.config.options;
        // RFC 2347/2348/2349/7440: only options asked for, blksize and windowsize no larger,
        // timeout echoed.
        let acceptable = within(granted.blksize, asked.blksize)
            && within(granted.windowsize, asked.windowsize)
            && (granted.timeout.is_none() || granted.timeout == asked.timeout)
            && (granted.tsize.is_none() || asked.tsize.is_some());
        if !acceptable {
            self.farewell = Some((ErrorCode::OptionRefused, "option negotiation refused"));
            self.fail(now, ClientFailure::BadOack);
            return Ok(());
        }
        self.blksize = granted.blksize.unwrap_or(DEFAULT_BLKSIZE);
        self.windowsize = granted.windowsize.unwrap_or(1);
        self.tsize = granted.tsize;
        self.state = State::Receiving;
        self.ack_due = Some(0);
        self.progress(now);
        Ok(())
    }

    fn progress(&mut self, now: Instant) {
        self.retries = 0;
        self.gap_acked = false;
        self.deadline = Some(now + self.rto());
    }

    fn handle_data(&mut self, now: Instant, block: u16, data: &[u8]) -> Result<(), ClientDrop> {
        match self.state {
            State::Requesting => {
                // The server ignored our options (or we sent none): RFC 1350 defaults.
                self.state = State::Receiving;
            }
            State::Receiving => {}
            State::Dallying => {
                // Our last ACK was lost: say it again.
                if block == (self.expected - 1) as u16 {
                    self.ack_due = Some(self.expected - 1);
                    return Ok(());
                }
                return Err(ClientDrop::DuplicateBlock);
            }
            State::Closed => return Err(ClientDrop::Finished),
        }
        // Blocks wrap past 65535 to 0: compare relative to the block wanted.
        let ahead = block.wrapping_sub(self.expected as u16);
        if ahead != 0 {
            // Behind (a repeat: our ACK was lost) or ahead (a gap): acknowledge the last
            // in-order block once, so that the server resends from the gap.
            let drop = if ahead >= 0x8000 {
                ClientDrop::DuplicateBlock
            } else {
                ClientDrop::OutOfOrder
            };
            if !self.gap_acked {
                self.gap_acked = true;
                self.ack_due = Some(self.expected - 1);
                self.in_window = 0;
            }
            return Err(drop);
        }
        if data.len() > usize::from(self.blksize) {
            self.farewell = Some((ErrorCode::IllegalOperation, "block too long"));
            self.fail(now, ClientFailure::OversizedBlock);
            return Ok(());
        }
        self.consume(data);
        let this = self.expected;
        self.expected += 1;
        self.in_window += 1;
        self.progress(now);
        if data.len() < usize::from(self.blksize) {
            self.ack_due = Some(this);
            self.complete(now);
        } else if self.in_window >= self.windowsize {
            self.ack_due = Some(this);
            self.in_window = 0;
        }
        Ok(())
    }

    fn consume(&mut self, data: &[u8]) {
        self.wire_bytes += data.len() as u64;
        let (hasher, len, kept) = (&mut self.hasher, &mut self.len, &mut self.data);
        let mut sink = |run: &[u8]| {
            hasher.update(run);
            *len += run.len() as u64;
            if let Some(kept) = kept.as_mut() {
                kept.extend_from_slice(run);
            }
        };
        match self.decoder.as_mut() {
            Some(decoder) => decoder.decode(data, &mut sink),
            None => sink(data),
        }
    }

    fn complete(&mut self, now: Instant) {
        if let Some(decoder) = self.decoder.as_mut() {
            let (hasher, len, kept) = (&mut self.hasher, &mut self.len, &mut self.data);
            decoder.finish(|run| {
                hasher.update(run);
                *len += run.len() as u64;
                if let Some(kept) = kept.as_mut() {
                    kept.extend_from_slice(run);
                }
            });
        }
        self.state = State::Dallying;
        self.deadline = Some(now + self.config.dally);
        let sha256: [u8; 32] = self.hasher.clone().finalize().into();
        let expected = self.config.expected;
        let result = if let Some(tsize) = self.tsize.filter(|&t| t != self.wire_bytes) {
            Err(ClientFailure::TsizeMismatch {
                tsize,
                got: self.wire_bytes,
            })
        } else if let Some(want) = expected.len.filter(|&want| want != self.len) {
            Err(ClientFailure::LengthMismatch {
                want,
                got: self.len,
            })
        } else if expected.sha256.is_some_and(|want| want != sha256) {
            Err(ClientFailure::DigestMismatch)
        } else {
            Ok(())
        };
        self.finish(now, result);
    }

    /// Writes the next datagram into `buf` (at least [`TftpClient::max_datagram_len`] long).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(stranger) = self.stray.take() {
            let len = emit_error(buf, ErrorCode::UnknownTid, b"unknown transfer ID")?;
            self.packets_sent += 1;
            return Some(Transmit { dst: stranger, len });
        }
        if let Some((code, message)) = self.farewell.take() {
            let dst = self.peer.unwrap_or(self.server);
            let len = emit_error(buf, code, message.as_bytes())?;
            self.packets_sent += 1;
            return Some(Transmit { dst, len });
        }
        if self.rrq_due {
            let repr = self.rrq();
            if buf.len() < repr.buffer_len() {
                return None;
            }
            let len = repr.emit(buf);
            self.rrq_due = false;
            self.packets_sent += 1;
            self.deadline = Some(now + self.rto());
            return Some(Transmit {
                dst: self.server,
                len,
            });
        }
        let block = self.ack_due?;
        let len = Repr::Ack {
            block: block as u16,
        };
        if buf.len() < len.buffer_len() {
            return None;
        }
        let len = len.emit(buf);
        self.ack_due = None;
        self.packets_sent += 1;
        if self.state == State::Receiving {
            self.deadline = Some(now + self.rto());
        }
        Some(Transmit {
            dst: self.peer.unwrap_or(self.server),
            len,
        })
    }

    /// When [`TftpClient::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            None
        } else {
            self.deadline
        }
    }

    /// Runs the timers: retransmission of the RRQ or the last ACK, end of the dally.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        self.deadline = None;
        match self.state {
            State::Closed => {}
            State::Dallying => self.state = State::Closed,
            State::Requesting | State::Receiving => {
                if self.retries >= self.config.max_retries {
                    return self.fail(now, ClientFailure::TimedOut);
                }
                self.retries += 1;
                self.retransmits += 1;
                self.in_window = 0;
                if self.state == State::Requesting {
                    self.rrq_due = true;
                } else {
                    self.ack_due = Some(self.expected - 1);
                }
            }
        }
    }
}

/// A granted value is acceptable if asked for and no larger.
fn within<T: PartialOrd>(granted: Option<T>, asked: Option<T>) -> bool {
    match (granted, asked) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(granted), Some(asked)) => granted <= asked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq_bytes(config: ClientConfig) -> Vec<u8> {
        let now = Instant::now();
        let server = "198.18.0.1:69".parse().expect("address");
        let mut client = TftpClient::new(now, server, "boot.efi", config);
        let mut buf = vec![0u8; client.max_datagram_len()];
        let tx = client.poll_transmit(now, &mut buf).expect("RRQ first");
        assert_eq!(tx.dst, server);
        buf.truncate(tx.len);
        buf
    }

    #[test]
    fn presets_send_their_options() {
        assert_eq!(
            rrq_bytes(ClientConfig::edk2()),
            b"\0\x01boot.efi\0octet\0blksize\x001468\0tsize\x000\0windowsize\x001\0"
        );
        assert_eq!(
            rrq_bytes(ClientConfig::ipxe()),
            b"\0\x01boot.efi\0octet\0blksize\x001432\0tsize\x000\0"
        );
        // tftp-hpa's request (fixture) differs only in the mode.
        let hpa = include_bytes!("../../fixtures/tftp/tftp-hpa-rrq-netascii.bin");
        let plain = rrq_bytes(ClientConfig::plain());
        assert_eq!(plain, b"\0\x01boot.efi\0octet\0");
        assert_eq!(plain[..11], hpa[..11]);
    }

    #[test]
    fn oack_acceptance_rules() {
        assert!(within(Some(512u16), Some(1468)));
        assert!(!within(Some(1469u16), Some(1468)), "larger than asked");
        assert!(!within(Some(8u16), None), "not asked");
        assert!(within::<u16>(None, Some(1468)), "ignored is fine");
    }
}
