//! Why bytes are not a DHCP message, or a message does not fit its buffer. Its own module because
//! the message ([`super::wire`]) and its options ([`super::options`]) both fail with it, and the
//! message reads its options: the options never need the message (smoltcp keeps its `Error` apart
//! from each packet view the same way).

/// Errors from parsing or emitting a message. Each maps to the `malformed` drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("message of {len} bytes is shorter than the {min}-byte BOOTP header and cookie")]
    Truncated { len: usize, min: usize },
    #[error("magic cookie is {0:#010x}, not 0x63825363 (RFC 2131 §3)")]
    BadCookie(u32),
    #[error("option {code} claims {len} bytes past the end of its area")]
    OptionOverrun { code: u8, len: usize },
    #[error("buffer of {have} bytes is too small for a {need}-byte message")]
    BufferTooSmall { have: usize, need: usize },
}

pub type Result<T> = std::result::Result<T, Error>;
