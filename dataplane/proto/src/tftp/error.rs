//! Why a datagram is not a TFTP packet. Its own module because the packet ([`super::wire`]) and
//! its options ([`super::options`]) both fail with it, and the packet reads its options: the
//! options never need the packet (smoltcp keeps its `Error` apart from each packet view the same
//! way).

/// Why a datagram is not a TFTP packet. Each variant is a counted drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    #[error("datagram shorter than its fixed header")]
    Truncated,
    #[error("unknown opcode")]
    UnknownOpcode,
    #[error("string field not NUL-terminated")]
    Unterminated,
    #[error("option without a value")]
    OddOptions,
    #[error("DATA payload longer than the largest block size")]
    DataTooLong,
}

impl WireError {
    pub const ALL: [Self; 5] = [
        Self::Truncated,
        Self::UnknownOpcode,
        Self::Unterminated,
        Self::OddOptions,
        Self::DataTooLong,
    ];

    /// Stable short name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::UnknownOpcode => "unknown_opcode",
            Self::Unterminated => "unterminated",
            Self::OddOptions => "odd_options",
            Self::DataTooLong => "data_too_long",
        }
    }
}
