//! The listening side: [`TftpServer`] turns a request that reached port 69 into a
//! [`TftpTransfer`], or refuses it with an ERROR written into the caller's buffer.
//!
//! Stateless: the engine gives each accepted transfer its own local port (its TID, RFC 1350 §4)
//! and drives it from there. Refusals are sent from the listening port.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Transmit;
use super::options::{DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE, OptionSet};
use super::transfer::{TftpTransfer, TransferLimits, TransferParams, emit_error};
use super::wire::{ErrorCode, Mode, Opcode, Packet, Repr, RequestKind, WireError};
use crate::bootpath::{BootPath, PathRejection};
use crate::files::{FileCatalog, OpenError};

/// Largest windowsize the server grants (RFC 7440 allows up to 65535; 64 bounds bursts).
pub const MAX_SERVER_WINDOWSIZE: u16 = 64;

/// Server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest blksize granted (RFC 2348); derive it from the path MTU with
    /// [`ServerConfig::for_path_mtu`] so that DATA never fragments.
    pub max_blksize: u16,
    /// Largest windowsize granted (RFC 7440), 1..=[`MAX_SERVER_WINDOWSIZE`].
    pub max_windowsize: u16,
    pub limits: TransferLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::for_path_mtu(1500)
    }
}

impl ServerConfig {
    /// `max_blksize = mtu - 20 (IPv4) - 8 (UDP) - 4 (TFTP)`, within RFC 2348's 8..=65464.
    pub fn for_path_mtu(mtu: u16) -> Self {
        Self {
            max_blksize: mtu
                .saturating_sub(20 + 8 + 4)
                .clamp(MIN_BLKSIZE, MAX_BLKSIZE),
            max_windowsize: MAX_SERVER_WINDOWSIZE,
            limits: TransferLimits::default(),
        }
    }
}

/// Why a request was refused with an ERROR. Each variant is a counted reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Error 1.
    #[error("file not found")]
    FileNotFound,
    /// Error 2: the name failed [`BootPath`] checks.
    #[error("refused file name: {0}")]
    PathRejected(PathRejection),
    /// Error 2: the catalog found the name outside its root or not a regular file.
    #[error("access violation: {0}")]
    NotServable(OpenError),
    /// Error 0: the catalog could not read the file.
    #[error("file unreadable")]
    Unreadable,
    /// Error 4: this server only serves (RFC 1350 §2 WRQ).
    #[error("write request refused")]
    WriteRequest,
    /// Error 4: "mail" or an unknown mode.
    #[error("unsupported transfer mode")]
    UnsupportedMode,
    /// Error 4: a request that does not parse.
    #[error("malformed request: {0}")]
    Malformed(WireError),
}

impl Refusal {
    /// Stable short name, used as a metrics label. Refused names carry the
    /// [`PathRejection`] reason: `path_rejected_parent_dir` and so on.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::FileNotFound => "file_not_found",
            Self::PathRejected(reason) => match reason {
                PathRejection::Empty => "path_rejected_empty",
                PathRejection::TooLong => "path_rejected_too_long",
                PathRejection::NotUtf8 => "path_rejected_not_utf8",
                PathRejection::Nul => "path_rejected_nul",
                PathRejection::ControlChar => "path_rejected_control_char",
                PathRejection::Backslash => "path_rejected_backslash",
                PathRejection::Absolute => "path_rejected_absolute",
                PathRejection::ParentDir => "path_rejected_parent_dir",
            },
            Self::NotServable(OpenError::OutsideRoot) => "outside_root",
            Self::NotServable(_) => "not_a_file",
            Self::Unreadable => "unreadable",
            Self::WriteRequest => "write_request",
            Self::UnsupportedMode => "unsupported_mode",
            Self::Malformed(_) => "malformed_request",
        }
    }

    /// The TFTP error code sent.
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::FileNotFound => ErrorCode::FileNotFound,
            Self::PathRejected(_) | Self::NotServable(_) => ErrorCode::AccessViolation,
            Self::Unreadable => ErrorCode::NotDefined,
            Self::WriteRequest | Self::UnsupportedMode | Self::Malformed(_) => {
                ErrorCode::IllegalOperation
            }
        }
    }

    /// The ERROR message: fixed text, never the client's input echoed back.
    pub const fn message(&self) -> &'static str {
        match self {
            Self::FileNotFound => "File not found",
            Self::PathRejected(_) => "Access violation: refused file name",
            Self::NotServable(_) => "Access violation",
            Self::Unreadable => "File unreadable",
            Self::WriteRequest => "Write requests are refused",
            Self::UnsupportedMode => "Unsupported mode",
            Self::Malformed(_) => "Malformed request",
        }
    }
}

/// Why a datagram at the listening port got no answer at all. Counted by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestDrop {
    #[error("malformed packet: {0}")]
    Malformed(WireError),
    /// DATA, ACK, ERROR or OACK at the listening port (late packets of some transfer).
    #[error("not a request")]
    NotARequest,
    /// The reply buffer cannot hold the ERROR (a caller bug).
    #[error("transmit buffer too small")]
    BufferTooSmall,
}

impl RequestDrop {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(e) => e.as_str(),
            Self::NotARequest => "not_a_request",
            Self::BufferTooSmall => "buffer_too_small",
        }
    }
}

/// What became of a datagram at the listening port.
#[derive(Debug)]
pub enum Request {
    /// A read transfer to run from a new local port.
    Accepted(Box<TftpTransfer>),
    /// Refused: the ERROR is in the buffer, to send to `reply.dst` from the listening port.
    Refused { reason: Refusal, reply: Transmit },
    /// Nothing to send.
    Dropped(RequestDrop),
}

/// The listening core. Cheap to share: it holds the config and the catalog, nothing else.
#[derive(Debug, Clone)]
pub struct TftpServer<C> {
    config: ServerConfig,
    catalog: C,
}

impl<C: FileCatalog> TftpServer<C> {
    pub fn new(mut config: ServerConfig, catalog: C) -> Self {
        config.max_blksize = config.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        config.max_windowsize = config.max_windowsize.clamp(1, MAX_SERVER_WINDOWSIZE);
        Self { config, catalog }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Handles a datagram from `from` at the listening port. `buf` receives the ERROR of a
    /// refusal (a 64-byte buffer is enough).
    pub fn handle_request(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
    ) -> Request {
        match self.decide(now, from, datagram) {
            Ok(transfer) => Request::Accepted(Box::new(transfer)),
            Err(Err(drop)) => Request::Dropped(drop),
            Err(Ok(reason)) => match emit_error(buf, reason.code(), reason.message().as_bytes()) {
                Some(len) => Request::Refused {
                    reason,
                    reply: Transmit { dst: from, len },
                },
                None => Request::Dropped(RequestDrop::BufferTooSmall),
            },
        }
    }

    fn decide(
        &self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<TftpTransfer, Result<Refusal, RequestDrop>> {
        let packet = Packet::new_checked(datagram).map_err(|e| Err(RequestDrop::Malformed(e)))?;
        match packet.opcode() {
            Opcode::Rrq | Opcode::Wrq => {}
            Opcode::Unknown(_) => {
                return Err(Err(RequestDrop::Malformed(WireError::UnknownOpcode)));
            }
            _ => return Err(Err(RequestDrop::NotARequest)),
        }
        let repr = Repr::parse(&packet).map_err(|e| Ok(Refusal::Malformed(e)))?;
        let Repr::Request {
            kind,
            filename,
            mode,
            options,
        } = repr
        else {
            return Err(Err(RequestDrop::NotARequest));
        };
        if kind == RequestKind::Write {
            return Err(Ok(Refusal::WriteRequest));
        }
        let netascii = match Mode::parse(mode) {
            Mode::Octet => false,
            Mode::Netascii => true,
            Mode::Unknown => return Err(Ok(Refusal::UnsupportedMode)),
        };
        // Names are relative to the served root, `/name` too, as dnsmasq and `tftpd -s` take
        // them: GRUB's netboot image asks for `/grub/grub.cfg` and `/vmlinuz`. One slash only:
        // `//etc/passwd` is still absolute.
        let relative = filename.strip_prefix(b"/").unwrap_or(filename);
        let path = BootPath::parse(relative).map_err(|r| Ok(Refusal::PathRejected(r)))?;
        let file = self.catalog.open(&path).map_err(|e| {
            Ok(match e {
                OpenError::NotFound => Refusal::FileNotFound,
                OpenError::Unreadable(_) => Refusal::Unreadable,
                other => Refusal::NotServable(other),
            })
        })?;
        let params = self.negotiate(options.to_set(), &file.data, netascii);
        Ok(TftpTransfer::new(
            now,
            from,
            file.data,
            params,
            self.config.limits,
        ))
    }

    /// RFC 2347 negotiation: accept what is valid, clamp blksize and windowsize to our limits,
    /// answer tsize with the size, ignore the rest. OACK only if something was accepted.
    fn negotiate(&self, asked: OptionSet, data: &[u8], netascii: bool) -> TransferParams {
        let blksize = asked.blksize.map(|b| b.min(self.config.max_blksize));
        let windowsize = asked.windowsize.map(|w| w.min(self.config.max_windowsize));
        // RFC 2349: the size in octets as transferred; in netascii mode that is the encoded size.
        let tsize = asked.tsize.map(|_| {
            if netascii {
                super::netascii::encoded_len(data)
            } else {
                data.len() as u64
            }
        });
        let oack = OptionSet {
            blksize,
            tsize,
            timeout: asked.timeout,
            windowsize,
        };
        TransferParams {
            blksize: blksize.unwrap_or(DEFAULT_BLKSIZE),
            windowsize: windowsize.unwrap_or(1),
            timeout: asked
                .timeout
                .map_or(self.config.limits.default_timeout, |t| {
                    Duration::from_secs(u64::from(t))
                }),
            netascii,
            oack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_mtu_sets_the_largest_block() {
        assert_eq!(ServerConfig::for_path_mtu(1500).max_blksize, 1468);
        assert_eq!(ServerConfig::for_path_mtu(9000).max_blksize, 8968);
        assert_eq!(ServerConfig::for_path_mtu(20).max_blksize, MIN_BLKSIZE);
        assert_eq!(
            ServerConfig::for_path_mtu(u16::MAX).max_blksize,
            MAX_BLKSIZE
        );
    }

    #[test]
    fn refusals_have_codes_and_labels() {
        let all = [
            Refusal::FileNotFound,
            Refusal::PathRejected(PathRejection::ParentDir),
            Refusal::NotServable(OpenError::OutsideRoot),
            Refusal::NotServable(OpenError::NotAFile),
            Refusal::Unreadable,
            Refusal::WriteRequest,
            Refusal::UnsupportedMode,
            Refusal::Malformed(WireError::Unterminated),
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(Refusal::as_str).collect();
        assert_eq!(labels.len(), all.len(), "labels are distinct");
        for reason in PathRejection::ALL {
            let refusal = Refusal::PathRejected(reason);
            assert!(refusal.as_str().ends_with(reason.as_str()), "{refusal:?}");
            assert_eq!(refusal.code(), ErrorCode::AccessViolation);
        }
    }
}
