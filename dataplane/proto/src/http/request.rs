//! HTTP/1.1 request heads (RFC 9112 §2–§5): a zero-copy [`Request`] view and an owned
//! [`RequestRepr`].
//!
//! Guarantees of [`Request::parse`]:
//! - It never panics, on any input, and never reads past the end of the head it returns.
//! - The returned [`Request`] borrows the input buffer; nothing is copied.
//! - Everything is validated up front, so no accessor of a successfully parsed request panics or
//!   fails: `method`, `target`, `path`, `query`, `headers()`, the extracted well-known fields.
//! - Errors are reported as soon as the bytes that prove them have arrived (a bad request line
//!   is refused before the headers come in); limits are enforced on partial input, so a peer
//!   cannot make the caller buffer more than [`Limits::max_head`] bytes.
//!
//! Strictness (all allowed by RFC 9112): lines end in CRLF (a bare LF is refused, §2.2), single
//! spaces in the request line (§3), no whitespace between a field name and its colon (§5.1),
//! no obsolete line folding (§5.2). Empty lines before the request line are skipped (§2.2).
use std::fmt;

use super::is_tchar;

/// Size limits of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (without its CRLF); longer gets 414 (RFC 9112 §3, RFC 9110 §15.5.15).
    pub max_request_line: usize,
    /// Longest head: request line, fields and the blank line; longer gets 431 (RFC 6585 §5).
    pub max_head: usize,
    /// Most header fields; more gets 431.
    pub max_headers: usize,
}

impl Default for Limits {
    /// Boot clients send short heads (iPXE: four lines); these are generous for them and tight
    /// for anyone else.
    fn default() -> Self {
        Self {
            max_request_line: 2048,
            max_head: 8192,
            max_headers: 64,
        }
    }
}

/// Request method (RFC 9110 §9). Only `GET` and `HEAD` are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Get,
    Head,
    /// Any other syntactically valid method token.
    Other(&'a str),
}

impl<'a> Method<'a> {
    /// Methods are case-sensitive (RFC 9110 §9.1).
    fn from_token(token: &'a str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            other => Self::Other(other),
        }
    }

    pub fn as_str(&self) -> &'a str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Other(token) => token,
        }
    }
}

/// Protocol version of a request (RFC 9112 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
        }
    }
}

/// One header field line, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// As sent (field names are case-insensitive, RFC 9110 §5.1).
    pub name: &'a str,
    /// Without surrounding whitespace. May hold obs-text (bytes >= 0x80), hence bytes.
    pub value: &'a [u8],
}

/// Why a request head was refused. Each is a counted reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    #[error("malformed request line")]
    BadRequestLine,
    #[error("line not terminated by CRLF")]
    BadLineEnding,
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("malformed request target")]
    BadTarget,
    #[error("request line too long")]
    UriTooLong,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("malformed header field")]
    BadHeader,
    #[error("obsolete line folding")]
    ObsFold,
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("invalid Content-Length")]
    BadContentLength,
}

impl ParseError {
    pub const ALL: [Self; 12] = [
        Self::BadRequestLine,
        Self::BadLineEnding,
        Self::UnsupportedVersion,
        Self::BadTarget,
        Self::UriTooLong,
        Self::HeadTooLarge,
        Self::TooManyHeaders,
        Self::BadHeader,
        Self::ObsFold,
        Self::MissingHost,
        Self::DuplicateHost,
        Self::BadContentLength,
    ];

    /// Stable short name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequestLine => "bad_request_line",
            Self::BadLineEnding => "bad_line_ending",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadTarget => "bad_target",
            Self::UriTooLong => "uri_too_long",
            Self::HeadTooLarge => "head_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::BadHeader => "bad_header",
            Self::ObsFold => "obs_fold",
            Self::MissingHost => "missing_host",
            Self::DuplicateHost => "duplicate_host",
            Self::BadContentLength => "bad_content_length",
        }
    }

    /// The status code the server answers with.
    pub const fn status(self) -> u16 {
        match self {
            Self::UnsupportedVersion => 505,                  // RFC 9110 §15.6.6
            Self::UriTooLong => 414,                          // RFC 9110 §15.5.15
            Self::HeadTooLarge | Self::TooManyHeaders => 431, // RFC 6585 §5
            _ => 400,                                         // RFC 9110 §15.5.1, RFC 9112 §3.2, §5
        }
    }
}

/// Result of feeding bytes to [`Request::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned by value and consumed at once; boxing would allocate per request"
)]
pub enum Parsed<'a> {
    /// A complete head; [`Request::len`] bytes of the input belong to it.
    Complete(Request<'a>),
    /// Valid so far, more bytes needed.
    Partial,
}

/// A parsed request head, borrowing the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    len: usize,
    method: Method<'a>,
    target: &'a str,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    version: Version,
    fields: &'a [u8],
    host: Option<&'a [u8]>,
    conn_close: bool,
    conn_keep_alive: bool,
    range: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    if_none_match: Option<&'a [u8]>,
    if_modified_since: Option<&'a [u8]>,
    content_length: Option<u64>,
    transfer_encoding: bool,
}

impl<'a> Request<'a> {
    /// Parses the request head at the start of `buf`. Bytes after the head (a pipelined next
    /// request) are not looked at.
    pub fn parse(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, ParseError> {
        // RFC 9112 §2.2: ignore at least one empty line before the request line.
        let mut start = 0;
        while buf.len() >= start + 2 && &buf[start..start + 2] == b"\r\n" {
            start += 2;
            if start > limits.max_head {
                return Err(ParseError::HeadTooLarge);
            }
        }
        let Some(nl) = find(&buf[start..], b'\n') else {
            if buf.len() - start > limits.max_request_line {
                return Err(ParseError::UriTooLong);
            }
            check_line_prefix(&buf[start..])?;
            return Ok(Parsed::Partial);
        };
        let line = line_without_cr(&buf[start..start + nl])?;
        if line.len() > limits.max_request_line {
            return Err(ParseError::UriTooLong);
        }
        let (method, target, version) = parse_request_line(line)?;
        let (authority, path, query) = split_target(target)?;

        let mut req = Request {
            len: 0,
            method,
            target,
            authority,
            path,
            query,
            version,
            fields: &[],
            host: None,
            conn_close: false,
            conn_keep_alive: false,
            range: None,
            if_range: None,
            if_none_match: None,
            if_modified_since: None,
            content_length: None,
            transfer_encoding: false,
        };
        let fields_start = start + nl + 1;
        let mut pos = fields_start;
        let mut count = 0usize;
        loop {
            let Some(nl) = find(&buf[pos..], b'\n') else {
                if buf.len() - start > limits.max_head {
                    return Err(ParseError::HeadTooLarge);
                }
                return Ok(Parsed::Partial);
            };
            let end = pos + nl + 1;
            if end - start > limits.max_head {
                return Err(ParseError::HeadTooLarge);
            }
            let line = line_without_cr(&buf[pos..pos + nl])?;
            if line.is_empty() {
                req.fields = &buf[fields_start..pos];
                req.len = end;
                break;
            }
            count += 1;
            if count > limits.max_headers {
                return Err(ParseError::TooManyHeaders);
            }
            let header = parse_field_line(line)?;
            req.note_field(header)?;
            pos = end;
        }
        if req.version == Version::Http11 && req.host.is_none() {
            // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host.
            return Err(ParseError::MissingHost);
        }
        Ok(Parsed::Complete(req))
    }

    fn note_field(&mut self, h: Header<'a>) -> Result<(), ParseError> {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if self.host.is_some() {
                return Err(ParseError::DuplicateHost); // RFC 9112 §3.2
            }
            self.host = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            // RFC 9110 §7.6.1: a list of connection options.
            for opt in list_items(h.value) {
                if opt.eq_ignore_ascii_case(b"close") {
                    self.conn_close = true;
                } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                    self.conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: digits only; repeated identical values may be collapsed, differing
            // ones are an error (RFC 9112 §6.3).
            let mut value = None;
            for item in list_items(h.value) {
                let n = parse_u64(item).ok_or(ParseError::BadContentLength)?;
                if value.is_some_and(|v| v != n) {
                    return Err(ParseError::BadContentLength);
                }
                value = Some(n);
            }
            let n = value.ok_or(ParseError::BadContentLength)?;
            if self.content_length.is_some_and(|v| v != n) {
                return Err(ParseError::BadContentLength);
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("range") {
            self.range = Some(h.value);
        } else if name.eq_ignore_ascii_case("if-range") {
            self.if_range = Some(h.value);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            self.if_none_match = Some(h.value);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            self.if_modified_since = Some(h.value);
        }
        Ok(())
    }

    /// Bytes of the input taken by this head, including skipped leading empty lines.
    #[allow(clippy::len_without_is_empty, reason = "a head is never empty")]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn method(&self) -> Method<'a> {
        self.method
    }

    /// The request target exactly as sent (RFC 9112 §3.2).
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The authority of an absolute-form target (`GET http://host/x`), if that form was used.
    pub fn authority(&self) -> Option<&'a str> {
        self.authority
    }

    /// The path, still percent-encoded: `/boot.ipxe` of `/boot.ipxe?mac=..`. `*` for the
    /// asterisk form.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query, without `?`, still percent-encoded.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Every field line in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.fields }
    }

    /// First field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    pub fn host(&self) -> Option<&'a [u8]> {
        self.host
    }

    /// Whether the client wants the connection kept open after the response (RFC 9112 §9.3):
    /// HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.conn_close,
            Version::Http10 => self.conn_keep_alive && !self.conn_close,
        }
    }

    pub fn range(&self) -> Option<&'a [u8]> {
        self.range
    }

    pub fn if_range(&self) -> Option<&'a [u8]> {
        self.if_range
    }

    pub fn if_none_match(&self) -> Option<&'a [u8]> {
        self.if_none_match
    }

    pub fn if_modified_since(&self) -> Option<&'a [u8]> {
        self.if_modified_since
    }

    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether a `Transfer-Encoding` field was present (a body follows, RFC 9112 §6.1).
    pub fn has_transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }
}

/// Iterator over the validated field lines of a [`Request`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        // The section was validated by `parse`: every line ends in CRLF and is a field line, so
        // the `?`s below never fire on a parsed request.
        let nl = find(self.rest, b'\n')?;
        let line = self.rest.get(..nl.checked_sub(1)?)?;
        self.rest = self.rest.get(nl + 1..)?;
        parse_field_line(line).ok()
    }
}

/// Finds `needle`'s first position.
pub(crate) fn find(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// A line up to (not including) LF must end in CR (RFC 9112 §2.2).
pub(crate) fn line_without_cr(line: &[u8]) -> Result<&[u8], ParseError> {
    match line.split_last() {
        Some((b'\r', rest)) => Ok(rest),
        _ => Err(ParseError::BadLineEnding),
    }
}

/// Early refusal of a partial request line: the method must be a token (RFC 9112 §3.1). Catches
/// TLS handshakes and other non-HTTP bytes without waiting for a line end.
fn check_line_prefix(partial: &[u8]) -> Result<(), ParseError> {
    let method_end = find(partial, b' ').unwrap_or(partial.len());
    let method = &partial[..method_end];
    let trailing_cr = method.last() == Some(&b'\r') && method_end == partial.len();
    let method = if trailing_cr {
        &method[..method.len() - 1]
    } else {
        method
    };
    if method.iter().all(|&b| is_tchar(b)) {
        Ok(())
    } else {
        Err(ParseError::BadRequestLine)
    }
}

fn parse_request_line(line: &[u8]) -> Result<(Method<'_>, &str, Version), ParseError> {
    // request-line = method SP request-target SP HTTP-version (RFC 9112 §3)
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadRequestLine);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::BadRequestLine);
    }
    // Visible ASCII only; a fragment is never sent (RFC 9112 §3.2, RFC 3986 §3.5).
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic() && b != b'#') {
        return Err(ParseError::BadTarget);
    }
    let version = parse_version(version)?;
    // All bytes checked as ASCII above.
    let method = std::str::from_utf8(method).map_err(|_| ParseError::BadRequestLine)?;
    let target = std::str::from_utf8(target).map_err(|_| ParseError::BadTarget)?;
    Ok((Method::from_token(method), target, version))
}

/// HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 §2.3). Later 1.x minors are
/// answered as 1.1; other majors get 505.
fn parse_version(v: &[u8]) -> Result<Version, ParseError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
            Ok(Version::Http11)
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ParseError::UnsupportedVersion)
        }
        _ => Err(ParseError::BadRequestLine),
    }
}

/// Splits a target into (authority, path, query). Origin form `/p?q`, absolute form
/// `http://a/p?q` (RFC 9112 §3.2.2: servers must accept it) and `*`.
fn split_target(target: &str) -> Result<(Option<&str>, &str, Option<&str>), ParseError> {
    if target == "*" {
        return Ok((None, "*", None));
    }
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(ParseError::BadTarget);
        };
        let end = after.find(['/', '?']).unwrap_or(after.len());
        if end == 0 {
            return Err(ParseError::BadTarget);
        }
        (Some(&after[..end]), &after[end..])
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((authority, path, query))
}

/// field-line = field-name ":" OWS field-value OWS (RFC 9112 §5).
fn parse_field_line(line: &[u8]) -> Result<Header<'_>, ParseError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(ParseError::ObsFold); // RFC 9112 §5.2
    }
    let colon = find(line, b':').ok_or(ParseError::BadHeader)?;
    let name = &line[..colon];
    // No whitespace allowed between name and colon (RFC 9112 §5.1): not a tchar, so refused.
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::BadHeader);
    }
    let value = trim_ows(&line[colon + 1..]);
    // field-vchar / SP / HTAB (RFC 9110 §5.5); CR, LF, NUL and other controls are refused.
    if !value
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
    {
        return Err(ParseError::BadHeader);
    }
    let name = std::str::from_utf8(name).map_err(|_| ParseError::BadHeader)?;
    Ok(Header { name, value })
}

pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty ones skipped.
pub(crate) fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// 1*DIGIT, refusing overflow.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// One byte range (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteRange {
    /// `first-last`, inclusive.
    FromTo(u64, u64),
    /// `first-`: to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The half-open byte range selected in a representation of `len` bytes, clamped to it;
    /// `None` when unsatisfiable (RFC 9110 §14.1.1: first-pos at or past the end, or a zero
    /// suffix).
    pub fn resolve(self, len: u64) -> Option<std::ops::Range<u64>> {
        match self {
            Self::FromTo(first, last) if first < len => Some(first..last.min(len - 1) + 1),
            Self::From(first) if first < len => Some(first..len),
            Self::Suffix(n) if n > 0 && len > 0 => Some(len - n.min(len)..len),
            _ => None,
        }
    }
}

impl fmt::Display for ByteRange {
    /// The range-spec, as sent in `Range: bytes=<spec>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromTo(a, b) => write!(f, "{a}-{b}"),
            Self::From(a) => write!(f, "{a}-"),
            Self::Suffix(n) => write!(f, "-{n}"),
        }
    }
}

/// What a `Range` field asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeRequest {
    Single(ByteRange),
    /// Several ranges; the first one is kept (the server answers the whole file, see the module
    /// docs).
    Multiple(ByteRange),
    /// Not `bytes`, or malformed: ignored (RFC 9110 §14.2 allows ignoring `Range`).
    Invalid,
}

impl RangeRequest {
    /// Parses `Range` (RFC 9110 §14.2): `bytes=` 1#range-spec.
    pub fn parse(value: &[u8]) -> Self {
        let Some(eq) = find(value, b'=') else {
            return Self::Invalid;
        };
        if !trim_ows(&value[..eq]).eq_ignore_ascii_case(b"bytes") {
            return Self::Invalid;
        }
        let mut first = None;
        let mut count = 0usize;
        for spec in value[eq + 1..].split(|&b| b == b',').map(trim_ows) {
            if spec.is_empty() {
                continue; // empty list elements are allowed (RFC 9110 §5.6.1.2)
            }
            let Some(range) = parse_range_spec(spec) else {
                return Self::Invalid;
            };
            count += 1;
            first.get_or_insert(range);
        }
        match (first, count) {
            (Some(r), 1) => Self::Single(r),
            (Some(r), _) => Self::Multiple(r),
            (None, _) => Self::Invalid,
        }
    }
}

fn parse_range_spec(spec: &[u8]) -> Option<ByteRange> {
    let dash = find(spec, b'-')?;
    let (a, b) = (&spec[..dash], &spec[dash + 1..]);
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(parse_u64(b)?)),
        (false, true) => Some(ByteRange::From(parse_u64(a)?)),
        (false, false) => {
            let (a, b) = (parse_u64(a)?, parse_u64(b)?);
            // last-pos < first-pos makes the range-spec invalid (RFC 9110 §14.1.1).
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

/// Owned form of a request head: what [`Request::parse`] extracted, and able to emit it again.
/// `parse(emit(r)) == r` for every `r` built from a parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRepr {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestRepr {
    pub fn from_request(req: &Request<'_>) -> Self {
        Self {
            method: req.method().as_str().to_owned(),
            target: req.target().to_owned(),
            version: req.version(),
            headers: req
                .headers()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        }
    }

    /// A `GET` (or other method) for `target` with the given fields.
    pub fn new(method: &str, target: &str, headers: &[(&str, &str)]) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Appends the head to `buf`. Emits exactly what is stored; it is the caller's business to
    /// store valid tokens (a `RequestRepr` from a parsed request always is).
    pub fn emit(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.method.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(self.target.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(self.version.as_str().as_bytes());
        buf.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.emit(&mut buf);
        buf
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/http/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    pub(crate) const FIXTURES: [&str; 8] = [
        "curl-get.txt",
        "curl-head.txt",
        "curl-range.txt",
        "curl-range-suffix.txt",
        "curl-query.txt",
        "curl-http10.txt",
        "curl-if-none-match.txt",
        "ipxe-get.txt",
    ];

    fn complete(buf: &[u8]) -> Request<'_> {
        match Request::parse(buf, &Limits::default()) {
            Ok(Parsed::Complete(r)) => r,
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn curl_fixtures_parse() {
        let get = fixture("curl-get.txt");
        let r = complete(&get);
        assert_eq!(r.len(), get.len(), "whole fixture is one head");
        assert_eq!(r.method(), Method::Get);
        assert_eq!(r.path(), "/boot/vmlinuz");
        assert_eq!(r.query(), None);
        assert_eq!(r.version(), Version::Http11);
        assert_eq!(r.host(), Some(&b"127.0.0.1:18089"[..]));
        assert!(r.keep_alive(), "HTTP/1.1 defaults to persistent");
        let names: Vec<_> = r.headers().map(|h| h.name).collect();
        assert_eq!(names, ["Host", "User-Agent", "Accept"]);
        assert_eq!(r.header("user-agent"), Some(&b"curl/7.88.1"[..]));

        let head = fixture("curl-head.txt");
        assert_eq!(complete(&head).method(), Method::Head);

        let range = fixture("curl-range.txt");
        let r = complete(&range);
        assert_eq!(
            RangeRequest::parse(r.range().expect("Range field")),
            RangeRequest::Single(ByteRange::FromTo(0, 1023))
        );
        let suffix = fixture("curl-range-suffix.txt");
        assert_eq!(
            RangeRequest::parse(complete(&suffix).range().expect("Range field")),
            RangeRequest::Single(ByteRange::Suffix(500))
        );

        let query = fixture("curl-query.txt");
        let r = complete(&query);
        assert_eq!(r.path(), "/boot.ipxe");
        assert_eq!(r.query(), Some("mac=52:54:00:12:34:56&arch=x86_64"));

        let old = fixture("curl-http10.txt");
        let r = complete(&old);
        assert_eq!(r.version(), Version::Http10);
        assert!(!r.keep_alive(), "HTTP/1.0 closes by default");

        let cond = fixture("curl-if-none-match.txt");
        let r = complete(&cond);
        assert_eq!(r.if_none_match(), Some(&b"\"abc123\""[..]));
        assert_eq!(
            r.if_modified_since(),
            Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..])
        );
    }

    #[test]
    fn ipxe_fixture_parses() {
        let buf = fixture("ipxe-get.txt");
        let r = complete(&buf);
        assert_eq!(r.path(), "/boot/vmlinuz");
        assert!(r.keep_alive());
        assert_eq!(r.host(), Some(&b"10.0.0.1:8080"[..]));
    }

    #[test]
    fn every_prefix_is_partial_and_the_whole_is_complete() {
        for name in FIXTURES {
            let buf = fixture(name);
            for cut in 0..buf.len() {
                assert_eq!(
                    Request::parse(&buf[..cut], &Limits::default()),
                    Ok(Parsed::Partial),
                    "{name} cut at {cut}"
                );
            }
            assert_eq!(complete(&buf).len(), buf.len(), "{name}");
        }
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let mut buf = fixture("curl-get.txt");
        buf.extend_from_slice(&fixture("curl-head.txt"));
        let first = complete(&buf);
        assert_eq!(first.method(), Method::Get);
        let second = complete(&buf[first.len()..]);
        assert_eq!(second.method(), Method::Head);
    }

    #[test]
    fn malformed_heads_are_refused_with_their_reason() {
        let cases: &[(&[u8], ParseError)] = &[
            (
                b"GET /x HTTP/1.1\nHost: a\r\n\r\n",
                ParseError::BadLineEnding,
            ),
            (
                b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
                ParseError::BadRequestLine,
            ),
            (
                b"GET /x HTTP/1.1 \r\nHost: a\r\n\r\n",
                ParseError::BadRequestLine,
            ),
            (b"G(T /x HTTP/1.1\r\n\r\n", ParseError::BadRequestLine),
            (b"\x16\x03\x01\x02\x00\x01", ParseError::BadRequestLine),
            (
                b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n",
                ParseError::UnsupportedVersion,
            ),
            (
                b"GET /x http/1.1\r\nHost: a\r\n\r\n",
                ParseError::BadRequestLine,
            ),
            (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", ParseError::BadTarget),
            (
                b"GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n",
                ParseError::BadTarget,
            ),
            (b"GET /x HTTP/1.1\r\n\r\n", ParseError::MissingHost),
            (
                b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                ParseError::DuplicateHost,
            ),
            (
                b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                b"GET /x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                ParseError::ObsFold,
            ),
            (
                b"GET /x HTTP/1.1\r\nHost: a\x00\r\n\r\n",
                ParseError::BadHeader,
            ),
            (b"GET /x HTTP/1.1\r\nnocolon\r\n\r\n", ParseError::BadHeader),
            (
                b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                ParseError::BadContentLength,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                Request::parse(raw, &Limits::default()),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn limits_are_enforced_on_partial_input() {
        let limits = Limits {
            max_request_line: 32,
            max_head: 64,
            max_headers: 2,
        };
        let long_line = [b"GET /".as_slice(), &[b'a'; 40]].concat();
        assert_eq!(
            Request::parse(&long_line, &limits),
            Err(ParseError::UriTooLong)
        );
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend_from_slice(&[b'b'; 60]);
        assert_eq!(Request::parse(&big, &limits), Err(ParseError::HeadTooLarge));
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            Request::parse(many, &limits),
            Err(ParseError::TooManyHeaders)
        );
        let exact = [b"GET /".as_slice(), &[b'a'; 18], b" HTTP/1.0\r\n\r\n"].concat();
        assert!(
            matches!(Request::parse(&exact, &limits), Ok(Parsed::Complete(_))),
            "a 32-byte request line is within the limit"
        );
    }

    #[test]
    fn targets_and_leading_empty_lines() {
        let r = complete(b"\r\n\r\nGET http://srv:8080/a/b?x=1 HTTP/1.1\r\nHost: srv\r\n\r\n");
        assert_eq!(r.authority(), Some("srv:8080"));
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query(), Some("x=1"));
        let r = complete(b"GET HTTP://srv HTTP/1.1\r\nHost: srv\r\n\r\n");
        assert_eq!(r.path(), "/");
        let r = complete(b"OPTIONS * HTTP/1.1\r\nHost: srv\r\n\r\n");
        assert_eq!(r.method(), Method::Other("OPTIONS"));
        assert_eq!(r.path(), "*");
        let r = complete(b"GET /x HTTP/1.9\r\nHost: a\r\nConnection: foo, Close\r\n\r\n");
        assert_eq!(r.version(), Version::Http11, "later 1.x minors are 1.1");
        assert!(!r.keep_alive());
        let r = complete(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive());
    }

    #[test]
    fn range_parsing() {
        use ByteRange::*;
        let cases: &[(&[u8], RangeRequest)] = &[
            (b"bytes=0-499", RangeRequest::Single(FromTo(0, 499))),
            (b"Bytes = 500-", RangeRequest::Single(From(500))),
            (b"bytes=-10", RangeRequest::Single(Suffix(10))),
            (b"bytes=0-1, 5-9", RangeRequest::Multiple(FromTo(0, 1))),
            (b"bytes=,0-1,", RangeRequest::Single(FromTo(0, 1))),
            (b"bytes=5-1", RangeRequest::Invalid),
            (b"bytes=-", RangeRequest::Invalid),
            (b"bytes=a-b", RangeRequest::Invalid),
            (b"items=0-1", RangeRequest::Invalid),
            (b"bytes", RangeRequest::Invalid),
            (b"bytes=", RangeRequest::Invalid),
        ];
        for (raw, want) in cases {
            assert_eq!(
                RangeRequest::parse(raw),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(FromTo(0, 99).resolve(10), Some(0..10));
        assert_eq!(FromTo(10, 20).resolve(10), None);
        assert_eq!(From(9).resolve(10), Some(9..10));
        assert_eq!(Suffix(3).resolve(10), Some(7..10));
        assert_eq!(Suffix(30).resolve(10), Some(0..10));
        assert_eq!(Suffix(0).resolve(10), None);
        assert_eq!(From(0).resolve(0), None);
    }

    #[test]
    fn repr_round_trips_fixtures() {
        for name in FIXTURES {
            let buf = fixture(name);
            let repr = RequestRepr::from_request(&complete(&buf));
            let emitted = repr.to_bytes();
            assert_eq!(emitted, buf, "{name}: fixtures are already canonical");
            assert_eq!(
                RequestRepr::from_request(&complete(&emitted)),
                repr,
                "{name}"
            );
        }
    }

    pub(crate) use stampede_lab::rng::TestRng;

    pub(crate) fn mutate(rng: &mut TestRng, buf: &mut Vec<u8>) {
        const INTERESTING: &[u8] = b"\r\n :/?%.-=,\"\0\t\\*#\x7f\xff";
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(buf.len() + 1);
            match rng.below(5) {
                0 if at < buf.len() => buf[at] = rng.next_u64() as u8,
                1 if at < buf.len() => buf[at] = INTERESTING[rng.below(INTERESTING.len())],
                2 => buf.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                3 if at < buf.len() => {
                    buf.remove(at);
                }
                _ => buf.truncate(at),
            }
        }
    }

    #[test]
    fn mutated_fixtures_never_panic_and_round_trip() {
        let fixtures: Vec<Vec<u8>> = FIXTURES.iter().map(|n| fixture(n)).collect();
        let mut rng = TestRng::new(0x005e_ed0f_b007);
        let limits = Limits::default();
        let mut complete_count = 0;
        for _ in 0..20_000 {
            let mut buf = fixtures[rng.below(fixtures.len())].clone();
            mutate(&mut rng, &mut buf);
            if let Ok(Parsed::Complete(r)) = Request::parse(&buf, &limits) {
                complete_count += 1;
                // Every accessor works on whatever parsed.
                assert!(r.len() <= buf.len(), "head within input");
                let _ = (r.method(), r.path(), r.query(), r.keep_alive(), r.host());
                let _ = r.range().map(RangeRequest::parse);
                let repr = RequestRepr::from_request(&r);
                let emitted = repr.to_bytes();
                match Request::parse(&emitted, &limits) {
                    Ok(Parsed::Complete(again)) => assert_eq!(
                        RequestRepr::from_request(&again),
                        repr,
                        "round trip of {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                    other => panic!(
                        "re-parse of emitted {:?} gave {other:?}",
                        String::from_utf8_lossy(&emitted)
                    ),
                }
            }
        }
        assert!(
            complete_count > 1000,
            "mutations kept enough heads valid: {complete_count}"
        );
    }
}
