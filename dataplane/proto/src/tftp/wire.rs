//! TFTP packets on the wire: RFC 1350 §5 (RRQ, WRQ, DATA, ACK, ERROR) and RFC 2347 (options in
//! requests, OACK).
//!
//! [`Packet`] is a zero-copy view over a datagram; [`Repr`] is its parsed form. `Repr::parse`
//! never panics, whatever the input; `Repr::emit` writes into a buffer the caller lends, which must
//! be at least `Repr::buffer_len()` long.
//!
//! ```text
//!  RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
//!  DATA     | 03    | block #  | data (0..blksize bytes)
//!  ACK      | 04    | block #  |
//!  ERROR    | 05    | code     | message | 0 |
//!  OACK     | 06    | opt1 | 0 | value1 | 0 | ...
//! ```
pub use super::error::WireError;
use super::options::{MAX_BLKSIZE, OptionSet, RawOptions};

/// TFTP opcode (RFC 1350 §5, RFC 2347 for OACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    Rrq,
    Wrq,
    Data,
    Ack,
    Error,
    Oack,
    Unknown(u16),
}

impl From<u16> for Opcode {
    fn from(value: u16) -> Self {
        match value {
            1 => Self::Rrq,
            2 => Self::Wrq,
            3 => Self::Data,
            4 => Self::Ack,
            5 => Self::Error,
            6 => Self::Oack,
            other => Self::Unknown(other),
        }
    }
}

impl From<Opcode> for u16 {
    fn from(value: Opcode) -> Self {
        match value {
            Opcode::Rrq => 1,
            Opcode::Wrq => 2,
            Opcode::Data => 3,
            Opcode::Ack => 4,
            Opcode::Error => 5,
            Opcode::Oack => 6,
            Opcode::Unknown(other) => other,
        }
    }
}

/// Error codes (RFC 1350 appendix, RFC 2347 for 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1
    FileNotFound,
    /// 2
    AccessViolation,
    /// 3
    DiskFull,
    /// 4
    IllegalOperation,
    /// 5
    UnknownTid,
    /// 6
    FileExists,
    /// 7
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionRefused,
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(value: u16) -> Self {
        match value {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            other => Self::Unknown(other),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(value: ErrorCode) -> Self {
        match value {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Unknown(other) => other,
        }
    }
}

/// Transfer mode (RFC 1350 §1). "mail" is obsolete and parsed as [`Mode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Octet,
    Netascii,
    Unknown,
}

impl Mode {
    /// Mode names are case-insensitive (RFC 1350 §5).
    pub fn parse(raw: &[u8]) -> Self {
        if raw.eq_ignore_ascii_case(b"octet") {
            Self::Octet
        } else if raw.eq_ignore_ascii_case(b"netascii") {
            Self::Netascii
        } else {
            Self::Unknown
        }
    }

    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::Octet => b"octet",
            Self::Netascii => b"netascii",
            Self::Unknown => b"unknown",
        }
    }
}

/// Length of the DATA/ACK/ERROR header: opcode + block number or error code.
pub const HEADER_LEN: usize = 4;

mod field {
    use core::ops::{Range, RangeFrom};

    pub const OPCODE: Range<usize> = 0..2;
    /// DATA and ACK block number, ERROR code.
    pub const BLOCK: Range<usize> = 2..4;
    pub const ERROR_CODE: Range<usize> = 2..4;
    /// DATA payload, ERROR message.
    pub const PAYLOAD: RangeFrom<usize> = 4..;
    /// RRQ/WRQ filename onwards, OACK options.
    pub const STRINGS: RangeFrom<usize> = 2..;
}

/// A zero-copy view of a TFTP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may then panic on short buffers, so use
    /// [`Packet::new_checked`] on untrusted input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the fixed header of the packet's opcode is present, so that the accessors
    /// below cannot panic.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < field::OPCODE.end {
            return Err(WireError::Truncated);
        }
        match self.opcode() {
            Opcode::Data | Opcode::Ack | Opcode::Error if len < HEADER_LEN => {
                Err(WireError::Truncated)
            }
            _ => Ok(()),
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn opcode(&self) -> Opcode {
        let b = &self.buffer.as_ref()[field::OPCODE];
        Opcode::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Block number of DATA and ACK.
    pub fn block(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::BLOCK];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Error code of ERROR.
    pub fn error_code(&self) -> ErrorCode {
        let b = &self.buffer.as_ref()[field::ERROR_CODE];
        ErrorCode::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// DATA payload, or ERROR message with its terminating NUL.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// Everything after the opcode: RRQ/WRQ strings, OACK options.
    pub fn strings(&self) -> &[u8] {
        &self.buffer.as_ref()[field::STRINGS]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_opcode(&mut self, opcode: Opcode) {
        self.buffer.as_mut()[field::OPCODE].copy_from_slice(&u16::from(opcode).to_be_bytes());
    }

    pub fn set_block(&mut self, block: u16) {
        self.buffer.as_mut()[field::BLOCK].copy_from_slice(&block.to_be_bytes());
    }

    pub fn set_error_code(&mut self, code: ErrorCode) {
        self.buffer.as_mut()[field::ERROR_CODE].copy_from_slice(&u16::from(code).to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }

    pub fn strings_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::STRINGS]
    }
}

/// Read or write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Read,
    Write,
}

/// Options of a request or OACK: as received (borrowed, in wire order) or built from an
/// [`OptionSet`] (emitted in the fixed order blksize, tsize, timeout, windowsize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Options<'a> {
    Raw(RawOptions<'a>),
    Set(OptionSet),
}

impl Options<'_> {
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Raw(raw) => raw.as_bytes().len(),
            Self::Set(set) => set.buffer_len(),
        }
    }

    /// Writes the options into `buf` (at least `buffer_len()` long); returns the length.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        match self {
            Self::Raw(raw) => {
                let bytes = raw.as_bytes();
                buf[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            Self::Set(set) => set.emit(buf),
        }
    }

    /// The options as the typed set (for [`Options::Raw`]: interpreted per RFC 2347).
    pub fn to_set(&self) -> OptionSet {
        match self {
            Self::Raw(raw) => OptionSet::from_raw(*raw).0,
            Self::Set(set) => *set,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buffer_len() == 0
    }
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    Request {
        kind: RequestKind,
        /// Raw name; checked with [`crate::bootpath::BootPath`] by the server.
        filename: &'a [u8],
        /// Raw mode string (kept raw so that re-emitting is exact); see [`Repr::mode`].
        mode: &'a [u8],
        options: Options<'a>,
    },
    Data {
        block: u16,
        data: &'a [u8],
    },
    Ack {
        block: u16,
    },
    Error {
        code: ErrorCode,
        /// Without the terminating NUL.
        message: &'a [u8],
    },
    Oack {
        options: Options<'a>,
    },
}

/// Splits a NUL-terminated string off the front of `bytes`.
fn take_cstr(bytes: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Unterminated)?;
    Ok((&bytes[..end], &bytes[end + 1..]))
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// DATA payload or ERROR message, borrowed for the buffer's lifetime.
    pub fn payload_ref(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// RRQ/WRQ strings or OACK options, borrowed for the buffer's lifetime.
    pub fn strings_ref(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::STRINGS]
    }
}

impl<'a> Repr<'a> {
    /// Parses a packet. Never panics, whatever the bytes.
    ///
    /// Lenient where real clients are sloppy: bytes after an ERROR message's NUL and after an
    /// ACK's block number are ignored, and an ERROR without the NUL is accepted (its message is
    /// then the rest of the datagram).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self, WireError> {
        packet.check_len()?;
        match packet.opcode() {
            opcode @ (Opcode::Rrq | Opcode::Wrq) => {
                let kind = if opcode == Opcode::Rrq {
                    RequestKind::Read
                } else {
                    RequestKind::Write
                };
                let (filename, rest) = take_cstr(packet.strings_ref())?;
                let (mode, rest) = take_cstr(rest)?;
                Ok(Self::Request {
                    kind,
                    filename,
                    mode,
                    options: Options::Raw(RawOptions::parse(rest)?),
                })
            }
            Opcode::Data => {
                let data = packet.payload_ref();
                if data.len() > usize::from(MAX_BLKSIZE) {
                    return Err(WireError::DataTooLong);
                }
                Ok(Self::Data {
                    block: packet.block(),
                    data,
                })
            }
            Opcode::Ack => Ok(Self::Ack {
                block: packet.block(),
            }),
            Opcode::Error => {
                let payload = packet.payload_ref();
                let message = take_cstr(payload).map_or(payload, |(message, _)| message);
                Ok(Self::Error {
                    code: packet.error_code(),
                    message,
                })
            }
            Opcode::Oack => Ok(Self::Oack {
                options: Options::Raw(RawOptions::parse(packet.strings_ref())?),
            }),
            Opcode::Unknown(_) => Err(WireError::UnknownOpcode),
        }
    }

    /// Parses a datagram: `parse(&Packet::new_unchecked(bytes))`. The entry point for fuzzing.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, WireError> {
        Self::parse(&Packet::new_unchecked(bytes))
    }

    /// The mode of a request, interpreted.
    pub fn mode(&self) -> Option<Mode> {
        match self {
            Self::Request { mode, .. } => Some(Mode::parse(mode)),
            _ => None,
        }
    }

    /// Length of the emitted packet.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Request {
                filename,
                mode,
                options,
                ..
            } => 2 + filename.len() + 1 + mode.len() + 1 + options.buffer_len(),
            Self::Data { data, .. } => HEADER_LEN + data.len(),
            Self::Ack { .. } => HEADER_LEN,
            Self::Error { message, .. } => HEADER_LEN + message.len() + 1,
            Self::Oack { options } => 2 + options.buffer_len(),
        }
    }

    /// Writes the packet into `buf`, which must be at least [`Repr::buffer_len`] long (shorter
    /// buffers panic: that is a caller bug, not an input). Returns the length written.
    ///
    /// Emitting a request or error whose strings contain NUL produces a packet that parses
    /// differently; the cores never do that (file names are [`crate::bootpath::BootPath`]s,
    /// messages are fixed text).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        let mut packet = Packet::new_unchecked(&mut *buf);
        match *self {
            Self::Request {
                kind,
                filename,
                mode,
                options,
            } => {
                packet.set_opcode(match kind {
                    RequestKind::Read => Opcode::Rrq,
                    RequestKind::Write => Opcode::Wrq,
                });
                let out = packet.strings_mut();
                let mut at = put_cstr(out, 0, filename);
                at = put_cstr(out, at, mode);
                options.emit(&mut out[at..]);
            }
            Self::Data { block, data } => {
                packet.set_opcode(Opcode::Data);
                packet.set_block(block);
                packet.payload_mut().copy_from_slice(data);
            }
            Self::Ack { block } => {
                packet.set_opcode(Opcode::Ack);
                packet.set_block(block);
            }
            Self::Error { code, message } => {
                packet.set_opcode(Opcode::Error);
                packet.set_error_code(code);
                put_cstr(packet.payload_mut(), 0, message);
            }
            Self::Oack { options } => {
                packet.set_opcode(Opcode::Oack);
                options.emit(packet.strings_mut());
            }
        }
        len
    }
}

/// Writes `text` and a NUL at `at`; returns the position after the NUL.
fn put_cstr(out: &mut [u8], at: usize, text: &[u8]) -> usize {
    out[at..at + text.len()].copy_from_slice(text);
    out[at + text.len()] = 0;
    at + text.len() + 1
}

/// Writes a DATA header for `block` into `buf[..4]`; the caller fills the payload after it
/// (straight from the shared file, no intermediate copy).
pub fn emit_data_header(buf: &mut [u8], block: u16) {
    let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
    packet.set_opcode(Opcode::Data);
    packet.set_block(block);
}

#[cfg(test)]
mod tests {
    use stampede_lab::rng::TestRng;

    use super::*;

    const TFTP_HPA_RRQ: &[u8] = include_bytes!("../../fixtures/tftp/tftp-hpa-rrq-netascii.bin");
    const ATFTP_RRQ: &[u8] =
        include_bytes!("../../fixtures/tftp/atftp-rrq-blksize-tsize-windowsize.bin");
    const CURL_RRQ: &[u8] = include_bytes!("../../fixtures/tftp/curl-rrq-blksize.bin");
    const HPA_OACK_ATFTP: &[u8] = include_bytes!("../../fixtures/tftp/tftpd-hpa-oack-atftp.bin");
    const HPA_OACK_CURL: &[u8] = include_bytes!("../../fixtures/tftp/tftpd-hpa-oack-curl.bin");
    const HPA_ACK1: &[u8] = include_bytes!("../../fixtures/tftp/tftp-hpa-ack1.bin");

    pub(crate) const FIXTURES: [&[u8]; 6] = [
        TFTP_HPA_RRQ,
        ATFTP_RRQ,
        CURL_RRQ,
        HPA_OACK_ATFTP,
        HPA_OACK_CURL,
        HPA_ACK1,
    ];

    fn set(bytes: &[u8]) -> OptionSet {
        match Repr::parse_bytes(bytes).expect("fixture parses") {
            Repr::Request { options, .. } | Repr::Oack { options } => options.to_set(),
            other => panic!("not a packet with options: {other:?}"),
        }
    }

    #[test]
    fn tftp_hpa_request_is_netascii_without_options() {
        let repr = Repr::parse_bytes(TFTP_HPA_RRQ).expect("tftp-hpa RRQ parses");
        let Repr::Request {
            kind,
            filename,
            options,
            ..
        } = repr
        else {
            panic!("not a request: {repr:?}");
        };
        assert_eq!(kind, RequestKind::Read);
        assert_eq!(filename, b"boot.efi");
        assert_eq!(repr.mode(), Some(Mode::Netascii));
        assert!(options.is_empty(), "tftp-hpa sends no options by default");
    }

    #[test]
    fn atftp_and_curl_requests_carry_their_options() {
        assert_eq!(
            set(ATFTP_RRQ),
            OptionSet {
                blksize: Some(1468),
                tsize: Some(0),
                timeout: None,
                windowsize: Some(16),
            },
            "atftp asked blksize 1468, tsize 0, windowsize 16"
        );
        assert_eq!(
            set(CURL_RRQ),
            OptionSet {
                blksize: Some(1468),
                tsize: Some(0),
                timeout: Some(6),
                windowsize: None,
            },
            "curl asks blksize, tsize 0 and timeout 6"
        );
        assert_eq!(
            Repr::parse_bytes(CURL_RRQ).unwrap().mode(),
            Some(Mode::Octet)
        );
    }

    #[test]
    fn tftpd_hpa_oacks_parse() {
        assert_eq!(
            set(HPA_OACK_ATFTP),
            OptionSet {
                blksize: Some(1468),
                tsize: Some(200_000),
                ..OptionSet::default()
            }
        );
        assert_eq!(set(HPA_OACK_CURL).timeout, Some(6));
        assert_eq!(
            Repr::parse_bytes(HPA_ACK1),
            Ok(Repr::Ack { block: 1 }),
            "tftp-hpa ACK 1"
        );
    }

    #[test]
    fn emit_reproduces_fixture_bytes() {
        for fixture in FIXTURES {
            let repr = Repr::parse_bytes(fixture).expect("fixture parses");
            assert_eq!(repr.buffer_len(), fixture.len(), "{repr:?}");
            let mut buf = vec![0u8; repr.buffer_len()];
            assert_eq!(repr.emit(&mut buf), fixture.len());
            assert_eq!(buf, fixture, "byte-exact re-emit of {repr:?}");
        }
    }

    #[test]
    fn emit_builds_known_packets() {
        let mut buf = [0u8; 64];
        let n = Repr::Error {
            code: ErrorCode::FileNotFound,
            message: b"File not found",
        }
        .emit(&mut buf);
        assert_eq!(&buf[..n], b"\x00\x05\x00\x01File not found\x00");
        let n = Repr::Oack {
            options: Options::Set(OptionSet {
                blksize: Some(1468),
                tsize: Some(200_000),
                ..OptionSet::default()
            }),
        }
        .emit(&mut buf);
        assert_eq!(&buf[..n], b"\x00\x06blksize\x001468\x00tsize\x00200000\x00");
        let n = Repr::Data {
            block: 0x1234,
            data: b"ab",
        }
        .emit(&mut buf);
        assert_eq!(&buf[..n], b"\x00\x03\x12\x34ab");
    }

    #[test]
    fn malformed_packets_are_refused_with_reasons() {
        let cases: &[(&[u8], WireError)] = &[
            (b"", WireError::Truncated),
            (b"\x00", WireError::Truncated),
            (b"\x00\x03\x00", WireError::Truncated),
            (b"\x00\x04\x00", WireError::Truncated),
            (b"\x00\x05", WireError::Truncated),
            (b"\x00\x09\x00\x01", WireError::UnknownOpcode),
            (b"\x00\x01boot.efi", WireError::Unterminated),
            (b"\x00\x01boot.efi\x00octet", WireError::Unterminated),
            (b"\x00\x01f\x00octet\x00blksize\x00", WireError::OddOptions),
            (
                b"\x00\x01f\x00octet\x00blksize\x001468",
                WireError::Unterminated,
            ),
            (b"\x00\x06tsize", WireError::Unterminated),
        ];
        for (bytes, want) in cases {
            assert_eq!(Repr::parse_bytes(bytes), Err(*want), "{bytes:?}");
        }
        let mut big = vec![0u8, 3, 0, 1];
        big.resize(HEADER_LEN + usize::from(MAX_BLKSIZE) + 1, 0);
        assert_eq!(Repr::parse_bytes(&big), Err(WireError::DataTooLong));
    }

    #[test]
    fn lenient_error_and_ack() {
        assert_eq!(
            Repr::parse_bytes(b"\x00\x05\x00\x08no options"),
            Ok(Repr::Error {
                code: ErrorCode::OptionRefused,
                message: b"no options"
            }),
            "ERROR without NUL"
        );
        assert_eq!(
            Repr::parse_bytes(b"\x00\x04\x00\x07\x00\x00"),
            Ok(Repr::Ack { block: 7 }),
            "padded ACK"
        );
        assert_eq!(
            Repr::parse_bytes(b"\x00\x01F\x00OCTET\x00").unwrap().mode(),
            Some(Mode::Octet),
            "modes are case-insensitive"
        );
    }

    #[test]
    fn parse_never_panics_and_round_trips_on_mutated_fixtures() {
        let mut rng = TestRng::new(0x5EED_7F7F_0042_1350);
        let mut parsed = 0usize;
        for round in 0..40_000 {
            let base = FIXTURES[round % FIXTURES.len()];
            let mut bytes = base.to_vec();
            for _ in 0..=rng.below(4) {
                match rng.below(5) {
                    0 if !bytes.is_empty() => {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next_u64() as u8;
                    }
                    1 if !bytes.is_empty() => {
                        let i = rng.below(bytes.len());
                        bytes[i] = 0;
                    }
                    2 => bytes.truncate(rng.below(bytes.len() + 1)),
                    3 => {
                        let i = rng.below(bytes.len() + 1);
                        bytes.insert(i, rng.next_u64() as u8);
                    }
                    _ => {
                        if bytes.len() >= 2 {
                            bytes[1] = rng.below(8) as u8;
                        }
                    }
                }
            }
            let Ok(first) = Repr::parse_bytes(&bytes) else {
                continue;
            };
            parsed += 1;
            let mut out = vec![0u8; first.buffer_len()];
            let n = first.emit(&mut out);
            assert_eq!(n, out.len());
            let second = Repr::parse_bytes(&out)
                .unwrap_or_else(|e| panic!("re-emitted {first:?} does not parse: {e}"));
            assert_eq!(
                second, first,
                "parse(emit(parse(x))) != parse(x) for {bytes:?}"
            );
            // The typed interpretation survives too.
            if let Repr::Request { options, .. } | Repr::Oack { options } = first {
                let set = options.to_set();
                let mut again = vec![0u8; set.buffer_len()];
                set.emit(&mut again);
                let raw = RawOptions::parse(&again).expect("emitted options parse");
                assert_eq!(OptionSet::from_raw(raw).0, set, "typed options round trip");
            }
        }
        assert!(
            parsed > 10_000,
            "mutations kept enough valid packets: {parsed}"
        );
    }
}
