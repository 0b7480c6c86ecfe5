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
use crate::files::{BootFile, FileCatalog, OpenError};

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
/// of the catalog's [`Bytes`], not a copy), so an engine backed by a file descriptor can
/// `sendfile` the same range; [`Body::bytes`] gives the slice for a plain write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    pub data: Bytes,
    pub offset: u64,
    pub len: u64,
}

impl Body {
    fn whole(data: Bytes) -> Self {
        let len = data.len() as u64;
        Self {
            data,
            offset: 0,
            len,
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
}

#[derive(Debug)]
struct Pending {
    status: Status,
    head: Vec<u8>,
    body: Body,
    close: bool,
    rejection: Option<Rejection>,
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
                    respond(&self.catalog, self.route.as_deref(), &req)
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
    let text = Bytes::from(format!("{} {}\n", status.0, status.reason()));
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
    }
}
