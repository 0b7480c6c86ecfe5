//! TFTP: the sans-IO server and client cores (RFC 1350, options RFC 2347/2348/2349, windowsize
//! RFC 7440).
//!
//! # Wire ([`wire`], [`options`])
//! [`Packet`] is a zero-copy view, [`Repr`] the parsed packet: `Repr::parse_bytes(bytes)` (never
//! panics; the fuzzing entry point), `repr.buffer_len()`, `repr.emit(buf)`. [`OptionSet`] is the
//! typed form of the options (blksize, tsize, timeout, windowsize); names are case-insensitive.
//! The packet reads its options, never the other way; both fail with a [`WireError`]
//! ([`error`]).
//! Modes octet and netascii ([`netascii`]: LF → CR LF, CR → CR NUL on the fly).
//!
//! # Server
//! * [`TftpServer::handle_request`]`(now, from, datagram, buf)` at the listening port returns
//!   [`Request::Accepted`] with a [`TftpTransfer`], [`Request::Refused`] with the [`Refusal`]
//!   reason and an ERROR already in `buf` (1 not found, 2 refused name with the
//!   [`crate::bootpath::PathRejection`], 4 WRQ / bad mode / malformed request), or
//!   [`Request::Dropped`] with a [`RequestDrop`] reason.
//! * The engine gives each [`TftpTransfer`] its own local port (its TID, RFC 1350 §4) and drives
//!   it with `handle_datagram(now, from, bytes)`, `poll_transmit(now, buf) -> Option<Transmit>`
//!   (DATA is built straight into `buf` from the shared [`bytes::Bytes`] of the file),
//!   `poll_timeout()`, `handle_timeout(now)` and `is_finished() -> Option<Outcome>` (result,
//!   bytes, packets, retransmits, duration). Packets from another address or port get ERROR 5
//!   without disturbing the transfer. Dropped packets come back as a [`TransferDrop`] reason.
//! * Negotiation: blksize clamped to [`ServerConfig::max_blksize`] (from the path MTU), tsize
//!   answered with the size, timeout 1..=255 s accepted as asked, windowsize clamped to
//!   [`ServerConfig::max_windowsize`] (≤ 64), unknown or invalid options ignored; an OACK only
//!   when something was accepted, and DATA 1 only after ACK 0.
//! * Until the client answers (ACK 0 or ACK 1) only the first datagram goes out, resent at most
//!   [`TransferLimits::max_unverified_retries`] times and never followed by an ERROR: a spoofed
//!   request draws little (issue 19). A timeout resends the window's first block only; the next
//!   ACK reopens the window.
//! * Block numbers wrap from 65535 to 0. Retransmission on timeout, doubling up to
//!   [`TransferLimits::max_backoff`], at most [`TransferLimits::max_retries`] in a row; idle and
//!   total-duration limits. Duplicate ACKs never cause a send (RFC 1123 §4.2.3.1).
//! * The timeout is the client's (RFC 2349 `timeout`) or measured from the transfer's round
//!   trips ([`RttEstimator`], RFC 6298, Karn's algorithm) with a floor of
//!   [`TransferLimits::min_timeout`]; before the first ACK, [`TransferLimits::default_timeout`]
//!   for DATA 1 and the longer [`TransferLimits::oack_timeout`] for an OACK, since atftp aborts
//!   on a duplicated OACK (issue 18).
//! * A client repeating its RRQ at the listening port must not get a second transfer: the
//!   engine keys live transfers by client address and hands the repeat to
//!   [`TftpTransfer::handle_repeated_request`], which resends the first datagram if the client
//!   has not answered yet (it evidently lost it).
//!
//! # Client ([`TftpClient`])
//! For the benchmark harness: sends a RRQ with the [`ClientConfig`] options (presets
//! [`ClientConfig::edk2`], [`ClientConfig::ipxe`], [`ClientConfig::plain`]), follows the
//! server's new TID, checks and acknowledges the OACK (ERROR 8 if the server granted something
//! not asked for), acknowledges each window, retransmits on timeout, dallies after the last ACK,
//! hashes the file with SHA-256 as it arrives (keeps it only if asked) and verifies tsize,
//! length and digest. Same driving methods as the transfer, outcome in [`ClientOutcome`].
pub mod client;
pub mod error;
pub mod netascii;
pub mod options;
pub mod rtt;
pub mod server;
pub mod transfer;
pub mod wire;

#[cfg(test)]
mod scenarios;

use std::net::SocketAddr;

pub use client::{ClientConfig, ClientDrop, ClientFailure, ClientOutcome, Expected, TftpClient};
pub use options::{OptionSet, RawOptions};
pub use rtt::RttEstimator;
pub use server::{Refusal, Request, RequestDrop, ServerConfig, TftpServer};
pub use transfer::{
    Outcome, TftpTransfer, TransferDrop, TransferFailure, TransferLimits, TransferParams,
};
pub use wire::{ErrorCode, Mode, Opcode, Options, Packet, Repr, RequestKind, WireError};

/// The well-known server port (RFC 1350 §4).
pub const SERVER_PORT: u16 = 69;

/// A datagram written into the caller's buffer: `buf[..len]` goes to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub len: usize,
}
