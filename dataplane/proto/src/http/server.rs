//! The per-connection HTTP/1.1 server state machine (see the [module docs](super) for the
//! engine contract).
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::request::{Limits, Method, ParseError, Parsed, RangeRequest, Request, Version};
use super::response::{ResponseHead, Status, content_type_for, format_http_date, parse_http_date};
use super::{percent_decode, request::list_items};
use crate::bootpath::{BootPath, PathRejection};
use crate::files::{BootFile, FileCatalog, OpenError, SealedFile};

/// Server settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub limits: Limits,
    /// A kept-alive connection with no request in progress is closed after this long
    /// (RFC 9112 §9.5 allows closing idle connections at any time).
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte arrived, or the client
    /// gets 408 and the connection closes (slowloris defence, RFC 9110 §15.5.9).
    pub header_timeout: Duration,
    /// Most responses queued or in flight; pipelined requests beyond this wait in the engine's
    /// buffer (back-pressure).
    pub max_pending: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_pending: 16,
        }
    }
}

/// Generated content: asked before the catalog for every well-formed `GET`/`HEAD`. Returns
/// `None` to let the catalog answer. Gets the query string (percent-encoded, without `?`), e.g.
/// to render `boot.ipxe?mac=..` per machine.
pub trait Route {
    fn route(&self, path: &BootPath, query: Option<&str>) -> Option<Result<BootFile, OpenError>>;

    /// [`Route::route`] for a request from `client`, for routes that answer by who asks (the
    /// swarm tracker lists a peer at the address its announce came from). An engine that knows
    /// the client calls this; the default ignores the address.
    fn route_from(
        &self,
        client: std::net::SocketAddr,
        path: &BootPath,
        query: Option<&str>,
    ) -> Option<Result<BootFile, OpenError>> {
        let _ = client;
        self.route(path, query)
    }
}

impl<F> Route for F
where
    F: Fn(&BootPath, Option<&str>) -> Option<Result<BootFile, OpenError>>,
{
    fn route(&self, path: &BootPath, query: Option<&str>) -> Option<Result<BootFile, OpenError>> {
        self(path, query)
    }
}

/// Why a request was not answered with the file (each a counted reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The head was malformed or over a limit (400/414/431/505).
    Parse(ParseError),
    /// Not `GET`/`HEAD` (405).
    MethodNotAllowed,
    /// The request had a body (413).
    BodyNotAllowed,
    /// A `%` escape in the path was malformed (400).
    BadPercentEncoding,
    /// The decoded path was refused by [`BootPath::parse`] (404).
    Path(PathRejection),
    /// No such file (404).
    NotFound,
    /// The catalog refused to open the file (404, or 500 if unreadable).
    Open(OpenErrorKind),
    /// The byte range lies outside the file (416).
    RangeNotSatisfiable,
    /// The head did not arrive within [`ServerConfig::header_timeout`] (408).
    HeaderTimeout,
}

/// [`OpenError`] without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenErrorKind {
    OutsideRoot,
    NotAFile,
    Unreadable,
}

impl Rejection {
    /// Stable short name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Parse(e) => e.as_str(),
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyNotAllowed => "body_not_allowed",
            Self::BadPercentEncoding => "bad_percent_encoding",
            Self::Path(r) => match r {
                PathRejection::Empty => "path_empty",
                PathRejection::TooLong => "path_too_long",
                PathRejection::NotUtf8 => "path_not_utf8",
                PathRejection::Nul => "path_nul",
                PathRejection::ControlChar => "path_control_char",
                PathRejection::Backslash => "path_backslash",
                PathRejection::Absolute => "path_absolute",
                PathRejection::ParentDir => "path_parent_dir",
            },
            Self::NotFound => "not_found",
            Self::Open(OpenErrorKind::OutsideRoot) => "outside_root",
            Self::Open(OpenErrorKind::NotAFile) => "not_a_file",
            Self::Open(OpenErrorKind::Unreadable) => "unreadable",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::HeaderTimeout => "header_timeout",
        }
    }
}

/// A response body: `len` bytes at `offset` of `data`. `data` is the whole shared file (a clone
/// of the catalog's [`Bytes`], not a copy), and `file`, when the catalog has one, holds the same
/// bytes, so an engine can `sendfile` the range from it; [`Body::bytes`] gives the slice for a
/// plain write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    pub data: Bytes,
    pub offset: u64,
    pub len: u64,
    pub file: Option<SealedFile>,
}

impl Body {
    fn whole(data: Bytes) -> Self {
        let len = data.len() as u64;
        Self {
            data,
            offset: 0,
            len,
            file: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes to send (a reference-counted slice, no copy).
    pub fn bytes(&self) -> Bytes {
        // offset + len <= data.len() by construction.
        self.data
            .slice(self.offset as usize..(self.offset + self.len) as usize)
    }
}

/// One response for the engine to write: `head_len` bytes appended to its buffer, then `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub status: Status,
    pub head_len: usize,
    pub body: Body,
    /// Close the connection after this response (the core also reports it via
    /// [`HttpConnection::is_closed`] once [`HttpConnection::transmit_done`] is called).
    pub close: bool,
    /// Set when the request was refused; count it by [`Rejection::as_str`].
    pub rejection: Option<Rejection>,
    /// The request target as received (at most [`MAX_LOGGED_TARGET`] bytes), for the log;
    /// empty when the request did not parse.
    pub target: String,
}

/// Longest request target kept for the log.
pub const MAX_LOGGED_TARGET: usize = 256;

#[derive(Debug)]
struct Pending {
    status: Status,
    head: Vec<u8>,
    body: Body,
    close: bool,
    rejection: Option<Rejection>,
    target: String,
}

/// One HTTP/1.1 server connection (sans-IO).
pub struct HttpConnection<C> {
    catalog: C,
    route: Option<Box<dyn Route + Send + Sync>>,
    config: ServerConfig,
    /// Received bytes not yet parsed into a request (a partial head, or pipelined heads waiting
    /// for room in the queue). Bounded by twice `max_head`.
    inbuf: Vec<u8>,
    queue: VecDeque<Pending>,
    in_flight: usize,
    /// A response that closes the connection is queued: no further requests are read.
    closing: bool,
    closed: bool,
    /// When the connection last became idle (creation, or the last transmit done).
    idle_since: Instant,
    /// When the first byte of the request head being received arrived.
    head_started: Option<Instant>,
}

impl<C> fmt::Debug for HttpConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnection")
            .field("buffered", &self.inbuf.len())
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight)
            .field("closing", &self.closing)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<C: FileCatalog> HttpConnection<C> {
    /// A connection accepted at `now`.
    pub fn new(now: Instant, catalog: C, config: ServerConfig) -> Self {
        Self {
            catalog,
            route: None,
            config,
            inbuf: Vec::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            closing: false,
            closed: false,
            idle_since: now,
            head_started: None,
        }
    }

    /// Adds a [`Route`] for generated content, asked before the catalog.
    pub fn with_route(mut self, route: impl Route + Send + Sync + 'static) -> Self {
        self.route = Some(Box::new(route));
        self
    }

    /// Takes received bytes; returns how many were consumed. The rest (back-pressure: too many
    /// responses pending) must be offered again later. Once the connection is closing, input is
    /// discarded (all of it reported consumed).
    pub fn handle_input(&mut self, now: Instant, input: &[u8]) -> usize {
        if self.closing || self.closed {
            return input.len();
        }
        let cap = (2 * self.config.limits.max_head).saturating_sub(self.inbuf.len());
        let take = input.len().min(cap);
        self.inbuf.extend_from_slice(&input[..take]);
        self.process(now);
        take
    }

    /// Parses and answers buffered requests while there is room in the queue.
    fn process(&mut self, now: Instant) {
        let mut off = 0;
        while !self.closing && self.queue.len() + self.in_flight < self.config.max_pending {
            let parsed = Request::parse(&self.inbuf[off..], &self.config.limits);
            let pending = match parsed {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete(req)) => {
                    off += req.len();
                    let mut pending = respond(&self.catalog, self.route.as_deref(), &req);
                    let target = req.target();
                    let mut end = target.len().min(MAX_LOGGED_TARGET);
                    while !target.is_char_boundary(end) {
                        end -= 1;
                    }
                    pending.target = target[..end].to_owned();
                    pending
                }
                Err(e) => {
                    off = self.inbuf.len();
                    error_response(Status(e.status()), Rejection::Parse(e), true, false)
                }
            };
            self.head_started = None;
            self.closing |= pending.close;
            self.queue.push_back(pending);
        }
        if self.closing {
            off = self.inbuf.len();
        }
        self.inbuf.drain(..off);
        if self.inbuf.is_empty() {
            self.head_started = None;
        } else if self.head_started.is_none() {
            self.head_started = Some(now);
        }
    }

    /// Appends the next response head to `buf` and describes it; `None` if nothing is ready.
    pub fn poll_output(&mut self, _now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let p = self.queue.pop_front()?;
        buf.extend_from_slice(&p.head);
        self.in_flight += 1;
        Some(Transmit {
            status: p.status,
            head_len: p.head.len(),
            body: p.body,
            close: p.close,
            rejection: p.rejection,
            target: p.target,
        })
    }

    /// The engine has written one [`Transmit`] (head and body) completely.
    pub fn transmit_done(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 && self.queue.is_empty() {
            self.idle_since = now;
            if self.closing {
                self.closed = true;
                return;
            }
        }
        // Room again: answer pipelined requests that waited.
        self.process(now);
    }

    /// When [`Self::handle_timeout`] must next be called, if at all. `None` while responses are
    /// being written (send timeouts are the engine's business) and once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.in_flight > 0 || !self.queue.is_empty() {
            return None;
        }
        Some(match self.head_started {
            Some(t) => t + self.config.header_timeout,
            None => self.idle_since + self.config.idle_timeout,
        })
    }

    /// Fires an expired timer: an idle connection closes silently; a request head that did not
    /// complete in time gets 408 and the connection closes after it.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        if self.head_started.take().is_some() {
            self.inbuf.clear();
            self.closing = true;
            self.queue.push_back(error_response(
                Status::REQUEST_TIMEOUT,
                Rejection::HeaderTimeout,
                true,
                false,
            ));
        } else {
            self.closed = true;
        }
    }

    /// The engine should close the socket (after a response that closes the connection has
    /// been written, or on idle timeout).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// A short text body naming the status, so humans with curl see why.
fn error_response(status: Status, rejection: Rejection, close: bool, head_only: bool) -> Pending {
    error_response_saying(status, rejection, close, head_only, None)
}

/// [`error_response`] with a line saying why after the status (a catalog's reason a file is
/// unreadable, e.g. which fact a machine's script lacks).
fn error_response_saying(
    status: Status,
    rejection: Rejection,
    close: bool,
    head_only: bool,
    why: Option<&str>,
) -> Pending {
    let text = Bytes::from(match why {
        Some(why) => format!("{} {}\n{why}\n", status.0, status.reason()),
        None => format!("{} {}\n", status.0, status.reason()),
    });
    let mut head = Vec::with_capacity(128);
    let mut h = ResponseHead::new(&mut head, status)
        .field("Content-Type", "text/plain; charset=utf-8")
        .field("Content-Length", text.len());
    if status == Status::METHOD_NOT_ALLOWED {
        h = h.field("Allow", "GET, HEAD"); // RFC 9110 §15.5.6
    }
    if close {
        h = h.field("Connection", "close");
    }
    h.finish();
    Pending {
        status,
        head,
        body: if head_only {
            Body::default()
        } else {
            Body::whole(text)
        },
        close,
        rejection: Some(rejection),
        target: String::new(),
    }
}

fn respond(
    catalog: &impl FileCatalog,
    route: Option<&(dyn Route + Send + Sync)>,
    req: &Request<'_>,
) -> Pending {
    let head_only = req.method() == Method::Head;
    let keep_alive = req.keep_alive();
    let reject = |status: Status, rejection: Rejection, close: bool| {
        error_response(status, rejection, close || !keep_alive, head_only)
    };
    // RFC 9110 §9.3.1: a GET body has no meaning; we refuse rather than read one, and close
    // because the body's bytes would otherwise be taken for the next request.
    if req.has_transfer_encoding() || req.content_length().is_some_and(|n| n > 0) {
        return reject(Status::CONTENT_TOO_LARGE, Rejection::BodyNotAllowed, true);
    }
    if !matches!(req.method(), Method::Get | Method::Head) {
        return reject(
            Status::METHOD_NOT_ALLOWED,
            Rejection::MethodNotAllowed,
            false,
        );
    }
    let Some(raw_path) = req.path().strip_prefix('/') else {
        return reject(
            Status::BAD_REQUEST,
            Rejection::Parse(ParseError::BadTarget),
            false,
        );
    };
    let Some(decoded) = percent_decode(raw_path.as_bytes()) else {
        return reject(Status::BAD_REQUEST, Rejection::BadPercentEncoding, false);
    };
    let path = match BootPath::parse(&decoded) {
        Ok(p) => p,
        Err(r) => return reject(Status::NOT_FOUND, Rejection::Path(r), false),
    };
    let opened = route
        .and_then(|r| r.route(&path, req.query()))
        .unwrap_or_else(|| catalog.open(&path));
    let file = match opened {
        Ok(f) => f,
        Err(OpenError::Unreadable(why)) => {
            return error_response_saying(
                Status::INTERNAL_ERROR,
                Rejection::Open(OpenErrorKind::Unreadable),
                !keep_alive,
                head_only,
                Some(&why),
            );
        }
        Err(e) => {
            let (status, rejection) = match e {
                OpenError::NotFound => (Status::NOT_FOUND, Rejection::NotFound),
                OpenError::OutsideRoot => (
                    Status::NOT_FOUND,
                    Rejection::Open(OpenErrorKind::OutsideRoot),
                ),
                OpenError::NotAFile => {
                    (Status::NOT_FOUND, Rejection::Open(OpenErrorKind::NotAFile))
                }
                OpenError::Unreadable(_) => (
                    Status::INTERNAL_ERROR,
                    Rejection::Open(OpenErrorKind::Unreadable),
                ),
            };
            return reject(status, rejection, false);
        }
    };
    serve_file(req, &path, file, keep_alive, head_only)
}

/// `"<etag>"` if the catalog's validator is usable as an entity-tag (RFC 9110 §8.8.3).
fn quoted_etag(file: &BootFile) -> Option<String> {
    let raw = file.etag.as_deref()?;
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    // etagc = %x21 / %x23-7E / obs-text; we keep it to ASCII.
    let ok = !inner.is_empty()
        && inner
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b));
    ok.then(|| format!("\"{inner}\""))
}

/// If-None-Match (RFC 9110 §13.1.2): weak comparison against our (strong) tag; `*` matches.
fn none_match_hits(value: &[u8], etag: Option<&str>) -> bool {
    list_items(value).any(|item| {
        item == b"*"
            || etag.is_some_and(|e| item.strip_prefix(b"W/").unwrap_or(item) == e.as_bytes())
    })
}

fn serve_file(
    req: &Request<'_>,
    path: &BootPath,
    file: BootFile,
    keep_alive: bool,
    head_only: bool,
) -> Pending {
    let len = file.len();
    let etag = quoted_etag(&file);
    let last_modified = file.modified_unix;

    // Preconditions in RFC 9110 §13.2.2 order (If-Match/If-Unmodified-Since are not
    // supported and ignored): If-None-Match, else If-Modified-Since, then If-Range.
    let not_modified = match (req.if_none_match(), req.if_modified_since()) {
        (Some(inm), _) => none_match_hits(inm, etag.as_deref()),
        (None, Some(ims)) => match (last_modified, parse_http_date(ims)) {
            (Some(m), Some(since)) => m <= since, // RFC 9110 §13.1.3
            _ => false,                           // invalid date: ignore the field
        },
        (None, None) => false,
    };

    let mut status = Status::OK;
    let mut range = 0..len;
    let mut rejection = None;
    if not_modified {
        status = Status::NOT_MODIFIED;
    } else if let (Method::Get, Some(raw_range), true) = (req.method(), req.range(), len > 0) {
        // Range applies to GET only (RFC 9110 §14.2); If-Range gates it (§13.1.5).
        let validator_ok = match req.if_range() {
            None => true,
            Some(v) if v.starts_with(b"\"") || v.starts_with(b"W/") => {
                // Strong comparison: a weak tag never matches.
                etag.as_deref().is_some_and(|e| v == e.as_bytes())
            }
            Some(v) => last_modified.is_some() && parse_http_date(v) == last_modified,
        };
        if validator_ok && let RangeRequest::Single(r) = RangeRequest::parse(raw_range) {
            match r.resolve(len) {
                Some(sel) => {
                    status = Status::PARTIAL_CONTENT;
                    range = sel;
                }
                None => {
                    status = Status::RANGE_NOT_SATISFIABLE;
                    rejection = Some(Rejection::RangeNotSatisfiable);
                }
            }
        }
    }

    let mut head = Vec::with_capacity(256);
    let mut h = ResponseHead::new(&mut head, status);
    let mut body = Body::default();
    match status {
        Status::NOT_MODIFIED => {} // RFC 9110 §15.4.5: no content, validators below
        Status::RANGE_NOT_SATISFIABLE => {
            let text = Bytes::from_static(b"416 Range Not Satisfiable\n");
            h = h
                .field("Content-Type", "text/plain; charset=utf-8")
                .field("Content-Length", text.len())
                .field("Content-Range", format_args!("bytes */{len}")); // RFC 9110 §15.5.17
            body = Body::whole(text);
        }
        _ => {
            h = h
                .field("Content-Type", content_type_for(path.as_str()))
                .field("Content-Length", range.end - range.start);
            if status == Status::PARTIAL_CONTENT {
                // RFC 9110 §14.4
                h = h.field(
                    "Content-Range",
                    format_args!("bytes {}-{}/{len}", range.start, range.end - 1),
                );
            }
            body = Body {
                data: file.data,
                offset: range.start,
                len: range.end - range.start,
                file: file.file,
            };
        }
    }
    h = h.field("Accept-Ranges", "bytes"); // RFC 9110 §14.3
    if let Some(e) = &etag {
        h = h.field("ETag", e);
    }
    if let Some(m) = last_modified {
        h = h.field("Last-Modified", format_http_date(m));
    }
    if !keep_alive {
        h = h.field("Connection", "close");
    } else if req.version() == Version::Http10 {
        h = h.field("Connection", "keep-alive"); // RFC 9112 §9.3 (HTTP/1.0 persistence)
    }
    h.finish();
    if head_only {
        body = Body::default();
    }
    Pending {
        status,
        head,
        body,
        close: !keep_alive,
        rejection,
        target: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::MemoryCatalog;
    use crate::http::client::{ClientError, FetchRequest, HttpClient};
    use crate::http::request::ByteRange;
    use sha2::{Digest, Sha256};

    fn kernel() -> Vec<u8> {
        (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn catalog() -> MemoryCatalog {
        let mut c = MemoryCatalog::new();
        c.insert(
            "boot/vmlinuz",
            BootFile {
                data: kernel().into(),
                etag: Some("abc123".into()),
                modified_unix: Some(784_111_777),
                file: None,
            },
        );
        c.insert("boot/initrd.img", BootFile::new(vec![42u8; 3000]));
        c.insert("empty", BootFile::new(Vec::new()));
        c
    }

    struct Reply {
        t: Transmit,
        head: String,
        body: Bytes,
    }

    fn conn(now: Instant) -> HttpConnection<MemoryCatalog> {
        HttpConnection::new(now, catalog(), ServerConfig::default())
    }

    /// Feeds `raw`, writes out every response (as an engine would) and returns them.
    fn exchange(c: &mut HttpConnection<MemoryCatalog>, now: Instant, raw: &[u8]) -> Vec<Reply> {
        assert_eq!(c.handle_input(now, raw), raw.len(), "all input consumed");
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let Some(t) = c.poll_output(now, &mut buf) else {
                break;
            };
            assert_eq!(buf.len(), t.head_len, "head written into the buffer");
            let head = String::from_utf8(buf).expect("ASCII head");
            let body = t.body.bytes();
            c.transmit_done(now);
            out.push(Reply { t, head, body });
        }
        out
    }

    fn one(raw: &[u8]) -> Reply {
        let now = Instant::now();
        let mut replies = exchange(&mut conn(now), now, raw);
        assert_eq!(
            replies.len(),
            1,
            "one response to {:?}",
            String::from_utf8_lossy(raw)
        );
        replies.remove(0)
    }

    fn get(path: &str, extra: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: srv\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn get_serves_the_file_without_copying_it() {
        let c = catalog();
        let shared = c
            .open(&BootPath::parse(b"boot/vmlinuz").unwrap())
            .unwrap()
            .data;
        let now = Instant::now();
        let mut conn = HttpConnection::new(now, c, ServerConfig::default());
        let r = exchange(&mut conn, now, &get("/boot/vmlinuz", "")).remove(0);
        assert_eq!(r.t.status, Status::OK);
        assert_eq!(
            r.head,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: 100000\r\nAccept-Ranges: bytes\r\nETag: \"abc123\"\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );
        assert_eq!(r.body, kernel());
        assert_eq!(
            r.body.as_ptr(),
            shared.as_ptr(),
            "body is the catalog's buffer"
        );
        assert!(!r.t.close && !conn.is_closed(), "keep-alive by default");
    }

    #[test]
    fn head_has_the_get_head_and_no_body() {
        let r = one(b"HEAD /boot/vmlinuz HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.t.status, Status::OK);
        assert!(r.head.contains("Content-Length: 100000\r\n"), "{}", r.head);
        assert!(r.t.body.is_empty(), "HEAD has no body");
    }

    #[test]
    fn ranges() {
        let k = kernel();
        let r = one(&get("/boot/vmlinuz", "Range: bytes=10-19\r\n"));
        assert_eq!(r.t.status, Status::PARTIAL_CONTENT);
        assert!(
            r.head.contains("Content-Range: bytes 10-19/100000\r\n"),
            "{}",
            r.head
        );
        assert!(r.head.contains("Content-Length: 10\r\n"), "{}", r.head);
        assert_eq!(r.body, k[10..20]);
        assert_eq!(
            (r.t.body.offset, r.t.body.len),
            (10, 10),
            "file range for sendfile"
        );

        let r = one(&get("/boot/vmlinuz", "Range: bytes=99990-\r\n"));
        assert_eq!(r.body, k[99_990..]);
        let r = one(&get("/boot/vmlinuz", "Range: bytes=-5\r\n"));
        assert!(
            r.head
                .contains("Content-Range: bytes 99995-99999/100000\r\n"),
            "{}",
            r.head
        );
        let r = one(&get("/boot/vmlinuz", "Range: bytes=99990-200000\r\n"));
        assert_eq!(r.body, k[99_990..], "last-pos clamped");

        let r = one(&get("/boot/vmlinuz", "Range: bytes=0-1,5-9\r\n"));
        assert_eq!(r.t.status, Status::OK, "multiple ranges: whole file");
        assert_eq!(r.body.len(), 100_000);
        let r = one(&get("/boot/vmlinuz", "Range: bytes=9-1\r\n"));
        assert_eq!(r.t.status, Status::OK, "invalid range ignored");
        let r = one(b"HEAD /boot/vmlinuz HTTP/1.1\r\nHost: a\r\nRange: bytes=0-9\r\n\r\n");
        assert_eq!(r.t.status, Status::OK, "Range ignored for HEAD");

        let r = one(&get("/boot/vmlinuz", "Range: bytes=100000-\r\n"));
        assert_eq!(r.t.status, Status::RANGE_NOT_SATISFIABLE);
        assert!(
            r.head.contains("Content-Range: bytes */100000\r\n"),
            "{}",
            r.head
        );
        assert_eq!(r.t.rejection, Some(Rejection::RangeNotSatisfiable));
        assert!(!r.t.close, "416 keeps the connection");
        let r = one(&get("/empty", "Range: bytes=0-\r\n"));
        assert_eq!(
            r.t.status,
            Status::OK,
            "ranges on an empty file are ignored"
        );
    }

    #[test]
    fn if_range_gates_the_range() {
        let r = one(&get(
            "/boot/vmlinuz",
            "Range: bytes=0-9\r\nIf-Range: \"abc123\"\r\n",
        ));
        assert_eq!(r.t.status, Status::PARTIAL_CONTENT);
        let r = one(&get(
            "/boot/vmlinuz",
            "Range: bytes=0-9\r\nIf-Range: \"old\"\r\n",
        ));
        assert_eq!(r.t.status, Status::OK, "changed file: whole");
        let r = one(&get(
            "/boot/vmlinuz",
            "Range: bytes=0-9\r\nIf-Range: W/\"abc123\"\r\n",
        ));
        assert_eq!(r.t.status, Status::OK, "weak tags never match If-Range");
        let date = "If-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
        let r = one(&get(
            "/boot/vmlinuz",
            &format!("Range: bytes=0-9\r\n{date}"),
        ));
        assert_eq!(r.t.status, Status::PARTIAL_CONTENT);
        let r = one(&get(
            "/boot/initrd.img",
            &format!("Range: bytes=0-9\r\n{date}"),
        ));
        assert_eq!(
            r.t.status,
            Status::OK,
            "no Last-Modified: date never matches"
        );
    }

    #[test]
    fn conditional_gets() {
        let r = one(&get(
            "/boot/vmlinuz",
            "If-None-Match: \"x\", W/\"abc123\"\r\n",
        ));
        assert_eq!(r.t.status, Status::NOT_MODIFIED);
        assert_eq!(
            r.head,
            "HTTP/1.1 304 Not Modified\r\nAccept-Ranges: bytes\r\nETag: \"abc123\"\r\n\
             Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );
        assert!(r.t.body.is_empty());
        assert_eq!(
            one(&get("/boot/vmlinuz", "If-None-Match: *\r\n")).t.status,
            Status::NOT_MODIFIED
        );
        assert_eq!(
            one(&get("/boot/vmlinuz", "If-None-Match: \"x\"\r\n"))
                .t
                .status,
            Status::OK
        );
        let ims = |d: &str| {
            one(&get(
                "/boot/vmlinuz",
                &format!("If-Modified-Since: {d}\r\n"),
            ))
            .t
            .status
        };
        assert_eq!(ims("Sun, 06 Nov 1994 08:49:37 GMT"), Status::NOT_MODIFIED);
        assert_eq!(ims("Sun, 06 Nov 1994 08:49:36 GMT"), Status::OK);
        assert_eq!(ims("garbage"), Status::OK, "invalid date ignored");
        // If-None-Match takes precedence over If-Modified-Since (RFC 9110 §13.2.2).
        let r = one(&get(
            "/boot/vmlinuz",
            "If-None-Match: \"x\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        ));
        assert_eq!(r.t.status, Status::OK);
        // The curl fixture: its tag does match.
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/http/curl-if-none-match.txt"
        ))
        .expect("fixture");
        assert_eq!(one(&raw).t.status, Status::NOT_MODIFIED);
    }

    #[test]
    fn refusals_have_status_reason_and_connection_fate() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(3000));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(9000)
        );
        let cases: Vec<(Vec<u8>, u16, &str, bool)> = vec![
            (long.into_bytes(), 414, "uri_too_long", true),
            (big.into_bytes(), 431, "head_too_large", true),
            (
                b"GET /x HTTP/1.1\r\n\r\n".to_vec(),
                400,
                "missing_host",
                true,
            ),
            (
                b"BREW /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                405,
                "method_not_allowed",
                false,
            ),
            (
                b"GET /x HTTP/3.0\r\nHost: a\r\n\r\n".to_vec(),
                505,
                "unsupported_version",
                true,
            ),
            (get("/nope", ""), 404, "not_found", false),
            (get("/%zz", ""), 400, "bad_percent_encoding", false),
            (get("*", ""), 400, "bad_target", false),
            (get("/../etc/passwd", ""), 404, "path_parent_dir", false),
            (get("/%2e%2e/etc/passwd", ""), 404, "path_parent_dir", false),
            (get("/a%00b", ""), 404, "path_nul", false),
            (get("/a%5cb", ""), 404, "path_backslash", false),
            (get("/%ff", ""), 404, "path_not_utf8", false),
            (get("/", ""), 404, "path_empty", false),
            (
                get("/x", "Content-Length: 5\r\n"),
                413,
                "body_not_allowed",
                true,
            ),
            (
                get("/x", "Transfer-Encoding: chunked\r\n"),
                413,
                "body_not_allowed",
                true,
            ),
        ];
        for (raw, status, reason, close) in cases {
            let r = one(&raw);
            let what = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
            assert_eq!(r.t.status.0, status, "{what}");
            assert_eq!(r.t.rejection.map(Rejection::as_str), Some(reason), "{what}");
            assert_eq!(r.t.close, close, "{what}");
            assert!(
                r.head
                    .contains(&format!("Content-Length: {}\r\n", r.body.len())),
                "{what}: {}",
                r.head
            );
            if status == 405 {
                assert!(r.head.contains("Allow: GET, HEAD\r\n"), "{}", r.head);
            }
        }
        assert_eq!(
            one(&get("/boot/vmlinuz", "Content-Length: 0\r\n")).t.status,
            Status::OK
        );
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let r = one(b"GET /boot/initrd.img HTTP/1.0\r\n\r\n");
        assert!(
            r.t.close && r.head.contains("Connection: close\r\n"),
            "{}",
            r.head
        );
        let r = one(b"GET /boot/initrd.img HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(
            !r.t.close && r.head.contains("Connection: keep-alive\r\n"),
            "{}",
            r.head
        );
        let now = Instant::now();
        let mut c = conn(now);
        exchange(
            &mut c,
            now,
            b"GET /boot/initrd.img HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert!(
            c.is_closed(),
            "closed after the Connection: close response is written"
        );
    }

    #[test]
    fn pipelined_requests_answer_in_order_and_stop_at_close() {
        let now = Instant::now();
        let mut c = conn(now);
        let mut raw = get("/boot/initrd.img", "");
        raw.extend(get("/nope", ""));
        raw.extend(b"HEAD /boot/vmlinuz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        raw.extend(get("/boot/initrd.img", "")); // after close: never answered
        let replies = exchange(&mut c, now, &raw);
        let statuses: Vec<u16> = replies.iter().map(|r| r.t.status.0).collect();
        assert_eq!(statuses, [200, 404, 200]);
        assert!(replies[2].t.close && c.is_closed());
    }

    #[test]
    fn backpressure_holds_pipelined_requests() {
        let now = Instant::now();
        let config = ServerConfig {
            max_pending: 2,
            ..ServerConfig::default()
        };
        let mut c = HttpConnection::new(now, catalog(), config);
        let raw: Vec<u8> = (0..5).flat_map(|_| get("/boot/initrd.img", "")).collect();
        assert_eq!(c.handle_input(now, &raw), raw.len());
        let mut answered = 0;
        let mut buf = Vec::new();
        while let Some(t) = c.poll_output(now, &mut buf) {
            assert!(c.queue.len() + c.in_flight <= 2, "bounded pending");
            assert_eq!(t.status, Status::OK);
            c.transmit_done(now);
            answered += 1;
        }
        assert_eq!(answered, 5);
    }

    #[test]
    fn idle_timeout_fires_exactly_at_the_deadline() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let idle = ServerConfig::default().idle_timeout;
        assert_eq!(c.poll_timeout(), Some(t0 + idle));
        let t1 = t0 + Duration::from_secs(3);
        exchange(&mut c, t1, &get("/boot/initrd.img", ""));
        let deadline = c.poll_timeout().expect("idle timer armed");
        assert_eq!(
            deadline,
            t1 + idle,
            "idle counts from the end of the last response"
        );
        c.handle_timeout(deadline - Duration::from_nanos(1));
        assert!(!c.is_closed(), "not before the deadline");
        c.handle_timeout(deadline);
        assert!(c.is_closed(), "closed at the deadline");
        assert_eq!(c.poll_timeout(), None);
        assert!(
            c.poll_output(deadline, &mut Vec::new()).is_none(),
            "no response on idle close"
        );
    }

    #[test]
    fn slow_head_gets_408_at_the_header_deadline() {
        let t0 = Instant::now();
        let mut c = conn(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.handle_input(t1, b"GET /boot/vm"), 12);
        let deadline = t1 + ServerConfig::default().header_timeout;
        assert_eq!(c.poll_timeout(), Some(deadline));
        c.handle_input(t1 + Duration::from_secs(5), b"linuz HTTP/1.1\r\n");
        assert_eq!(
            c.poll_timeout(),
            Some(deadline),
            "trickling does not extend it"
        );
        c.handle_timeout(deadline);
        let mut buf = Vec::new();
        let t = c.poll_output(deadline, &mut buf).expect("408");
        assert_eq!(t.status, Status::REQUEST_TIMEOUT);
        assert_eq!(t.rejection, Some(Rejection::HeaderTimeout));
        c.transmit_done(deadline);
        assert!(c.is_closed());
    }

    #[test]
    fn routes_answer_generated_content_with_the_query() {
        let now = Instant::now();
        let mut c = conn(now).with_route(|path: &BootPath, query: Option<&str>| {
            (path.as_str() == "boot.ipxe").then(|| {
                Ok(BootFile::new(format!(
                    "#!ipxe\necho {}\n",
                    query.unwrap_or("-")
                )))
            })
        });
        let r = exchange(&mut c, now, &get("/boot.ipxe?mac=52:54:00:12:34:56", "")).remove(0);
        assert_eq!(r.body, &b"#!ipxe\necho mac=52:54:00:12:34:56\n"[..]);
        assert!(
            r.head
                .contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{}",
            r.head
        );
        let r = exchange(&mut c, now, &get("/boot/initrd.img", "")).remove(0);
        assert_eq!(
            r.t.status,
            Status::OK,
            "other paths fall through to the catalog"
        );
    }

    /// Runs a client against a server in memory, moving `chunk` bytes at a time each way.
    fn pump(
        server: &mut HttpConnection<MemoryCatalog>,
        client: &mut HttpClient,
        now: Instant,
        chunk: usize,
    ) {
        let mut to_server = Vec::new();
        let mut to_client: Vec<u8> = Vec::new();
        for _ in 0..1_000_000 {
            client.poll_transmit(&mut to_server);
            if !to_server.is_empty() {
                let n = chunk.min(to_server.len());
                let used = server.handle_input(now, &to_server[..n]);
                to_server.drain(..used);
            }
            let mut head = Vec::new();
            if let Some(t) = server.poll_output(now, &mut head) {
                to_client.extend_from_slice(&head);
                to_client.extend_from_slice(&t.body.bytes());
                server.transmit_done(now);
            }
            if !to_client.is_empty() {
                let n = chunk.min(to_client.len());
                let _ = client.handle_input(now, &to_client[..n]);
                to_client.drain(..n);
            }
            if server.is_closed() && to_client.is_empty() {
                client.handle_eof(now);
            }
            if (client.is_idle() || !client.is_reusable())
                && to_server.is_empty()
                && to_client.is_empty()
            {
                return;
            }
        }
        panic!("client and server did not finish");
    }

    #[test]
    fn client_against_server_in_any_chunk_size() {
        let k = kernel();
        let initrd = vec![42u8; 3000];
        for chunk in [1, 2, 7, 100, 1460, 65_536] {
            let now = Instant::now();
            let mut server = conn(now);
            let mut client = HttpClient::new("10.0.0.1:8080");
            client.fetch(now, FetchRequest::get("/boot/vmlinuz").expecting(&k));
            client.fetch(
                now,
                FetchRequest::get("/boot/initrd.img").expecting(&initrd),
            );
            client.fetch(
                now,
                FetchRequest::get("/boot/vmlinuz")
                    .with_range(ByteRange::FromTo(1000, 1999))
                    .expecting(&k[1000..2000]),
            );
            client.fetch(
                now,
                FetchRequest::get("/boot/vmlinuz")
                    .with_range(ByteRange::Suffix(10))
                    .expecting(&k[k.len() - 10..]),
            );
            client.fetch(now, FetchRequest::get("/missing"));
            pump(&mut server, &mut client, now, chunk);
            let results: Vec<_> = std::iter::from_fn(|| client.poll_result()).collect();
            assert_eq!(results.len(), 5, "chunk {chunk}: {results:?}");
            let ok: Vec<_> = results
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| panic!("chunk {chunk}: {e}")))
                .collect();
            assert_eq!(ok[0].status, 200);
            assert_eq!(ok[0].sha256, <[u8; 32]>::from(Sha256::digest(&k)));
            assert_eq!(ok[0].etag.as_deref(), Some("\"abc123\""));
            assert_eq!(ok[2].status, 206);
            assert_eq!(ok[2].content_range, Some((1000, 1999, Some(100_000))));
            assert_eq!(ok[3].content_range, Some((99_990, 99_999, Some(100_000))));
            assert_eq!(ok[4].status, 404);
            assert!(
                client.is_reusable(),
                "chunk {chunk}: one kept-alive connection"
            );
            assert!(!server.is_closed());
        }
    }

    #[test]
    fn client_detects_digest_mismatch_and_truncation() {
        let now = Instant::now();
        let mut server = conn(now);
        let mut client = HttpClient::new("srv");
        client.fetch(
            now,
            FetchRequest::get("/boot/initrd.img").expecting(b"not it"),
        );
        pump(&mut server, &mut client, now, 512);
        assert_eq!(
            client.poll_result(),
            Some(Err(ClientError::LengthMismatch {
                expected: 6,
                got: 3000
            }))
        );
        assert!(!client.is_reusable());

        let mut client = HttpClient::new("srv");
        let mut want = FetchRequest::get("/boot/initrd.img").expecting(&[42u8; 3000]);
        want.expect_sha256 = Some([0; 32]);
        client.fetch(now, want);
        pump(&mut conn(now), &mut client, now, 512);
        assert_eq!(client.poll_result(), Some(Err(ClientError::DigestMismatch)));

        let mut client = HttpClient::new("srv");
        client.fetch(now, FetchRequest::get("/x"));
        let _ = client.handle_input(now, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        client.handle_eof(now);
        assert_eq!(client.poll_result(), Some(Err(ClientError::Truncated)));

        let mut client = HttpClient::new("srv");
        client.fetch(now, FetchRequest::get("/x"));
        let err = client.handle_input(
            now,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(err, Err(ClientError::TransferCoding));
        let mut client = HttpClient::new("srv");
        client.fetch(now, FetchRequest::get("/x"));
        let err = client.handle_input(now, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(err, Err(ClientError::MissingContentLength));
    }

    #[test]
    fn client_request_matches_ipxe_format() {
        let now = Instant::now();
        let mut client = HttpClient::new("10.0.0.1:8080");
        client.fetch(now, FetchRequest::get("/boot/vmlinuz"));
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        let text = String::from_utf8(out).expect("ASCII");
        assert!(
            text.starts_with(
                "GET /boot/vmlinuz HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: "
            ),
            "{text}"
        );
        assert!(text.ends_with("Host: 10.0.0.1:8080\r\n\r\n"), "{text}");
    }

    #[test]
    fn random_bytes_in_random_chunks_never_panic() {
        use crate::http::request::tests::{FIXTURES, TestRng, mutate};
        let fixtures: Vec<Vec<u8>> = FIXTURES
            .iter()
            .map(|n| {
                std::fs::read(format!("{}/fixtures/http/{n}", env!("CARGO_MANIFEST_DIR")))
                    .expect("fixture")
            })
            .collect();
        let mut rng = TestRng::new(77);
        let t0 = Instant::now();
        for round in 0..3000 {
            let mut c = conn(t0);
            let mut stream = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let mut f = fixtures[rng.below(fixtures.len())].clone();
                mutate(&mut rng, &mut f);
                stream.extend(f);
            }
            let mut at = 0;
            let now = t0 + Duration::from_millis(round);
            while at < stream.len() {
                let n = 1 + rng.below(64).min(stream.len() - at - 1);
                at += c.handle_input(now, &stream[at..at + n]).max(n.min(1));
                let mut buf = Vec::new();
                while let Some(t) = c.poll_output(now, &mut buf) {
                    assert!(
                        t.body.offset + t.body.len <= t.body.data.len() as u64,
                        "body in bounds"
                    );
                    let _ = t.rejection.map(Rejection::as_str);
                    c.transmit_done(now);
                }
            }
            c.handle_timeout(now + Duration::from_secs(3600));
        }
    }
}
