//! HTTP/1.1 for boot files: a sans-IO server core and a sans-IO client core.
//!
//! # Server ([`server`])
//!
//! [`HttpConnection`] is one accepted TCP connection. The engine owns the socket and the clock:
//!
//! - [`HttpConnection::handle_input`]`(now, bytes) -> consumed` takes received bytes. Requests
//!   are parsed as soon as their head is complete; pipelined requests are answered in order.
//!   Fewer bytes than offered are consumed only under back-pressure (too many responses waiting)
//!   or once the connection is closing; the engine offers the rest again later.
//! - [`HttpConnection::poll_output`]`(now, buf) -> Option<Transmit>` appends the next response
//!   head to `buf` and describes the body as a [`Body`]: a range of a shared [`bytes::Bytes`]
//!   (the boot file, never copied), so the engine can `sendfile`/`splice`/`SEND_ZC` it.
//!   The engine calls [`HttpConnection::transmit_done`] once it has written a transmit fully.
//! - [`HttpConnection::poll_timeout`] / [`HttpConnection::handle_timeout`]: keep-alive idle
//!   timeout and the request-head deadline (slowloris); [`HttpConnection::is_closed`] says when to
//!   close the socket.
//!
//! Requests resolve through a [`crate::files::FileCatalog`], or through a [`Route`] for
//! generated content (per-machine `boot.ipxe`, which sees the query string).
//!
//! Supported: `GET`, `HEAD` (others: 405 with `Allow`), single byte ranges (RFC 9110 §14),
//! `If-Range`, `If-None-Match`, `If-Modified-Since` (304), keep-alive, HTTP/1.0 (close unless
//! `Connection: keep-alive`). Every refused request carries a [`Rejection`] with a stable
//! [`Rejection::as_str`], for counters.
//!
//! Policy choices (documented here once):
//! - Multiple ranges (`bytes=0-1,5-9`) are answered with the whole file, `200`: RFC 9110 §14.2
//!   lets a server ignore `Range`, and no boot client asks for multipart/byteranges.
//! - Hostile paths (`..`, backslash, NUL, control characters, bad UTF-8 after percent-decoding)
//!   get `404 Not Found` (no hint about the filter), counted as `path_<reason>`.
//! - Request bodies are refused: a non-zero `Content-Length` or any `Transfer-Encoding` gets
//!   `413` and the connection is closed (RFC 9112 §6.3: its framing is then not trusted).
//! - Ranges on an empty file are ignored (`200`, empty body).
//! - No `Date` header: the core has no clock (RFC 9110 §6.6.1 allows this).
//!
//! # Client ([`client`])
//!
//! [`HttpClient`] fetches files over one keep-alive connection as iPXE does (`GET`, optional
//! `Range`), streams each body into SHA-256 without buffering it, and checks length and digest.
//!
//! # Parsing ([`request`], [`response`])
//!
//! [`Request::parse`] is a zero-copy view over the input buffer; [`RequestRepr`] is the owned form
//! that emits what it parsed (parse/emit round trip, for fuzzing).
pub mod client;
pub mod request;
pub mod response;
pub mod server;

pub use client::{ClientError, FetchRequest, FetchResult, HttpClient};
pub use request::{
    ByteRange, Header, Limits, Method, ParseError, Parsed, RangeRequest, Request, RequestRepr,
    Version,
};
pub use response::{
    ParsedResponse, ResponseError, ResponseHead, Status, content_type_for, format_http_date,
    parse_http_date,
};
pub use server::{Body, HttpConnection, OpenErrorKind, Rejection, Route, ServerConfig, Transmit};

/// Percent-decodes a request path (RFC 3986 §2.1). `None` on a malformed escape.
pub fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            let hi = hex_val(*input.get(i + 1)?)?;
            let lo = hex_val(*input.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `tchar` of RFC 9110 §5.6.2.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%2e%2E/b").unwrap(), b"a../b");
        assert_eq!(percent_decode(b"%00").unwrap(), b"\0");
        assert_eq!(percent_decode(b"%"), None, "truncated escape");
        assert_eq!(percent_decode(b"%4"), None, "truncated escape");
        assert_eq!(percent_decode(b"%zz"), None, "non-hex escape");
    }
}
