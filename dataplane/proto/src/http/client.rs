//! A sans-IO HTTP/1.1 client that fetches boot files the way iPXE does: `GET` (optionally with a
//! single `Range`), one request at a time over a kept-alive connection, bodies framed by
//! `Content-Length`. The benchmark harness runs thousands of these to simulate machines.
//!
//! Use: [`HttpClient::fetch`] queues requests; [`HttpClient::poll_transmit`] gives bytes to
//! write; [`HttpClient::handle_input`] takes received bytes (body bytes are hashed straight from
//! the caller's slice, never buffered); [`HttpClient::poll_result`] yields one
//! [`FetchResult`] or [`ClientError`] per request, in order. A connection that failed, or that the
//! server closes, is not reused ([`HttpClient::is_reusable`]).
use std::collections::VecDeque;

use bytes::Bytes;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::request::{ByteRange, RequestRepr};
use super::response::{ParsedResponse, ResponseError};

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Request target: `/path?query`, already percent-encoded.
    pub target: String,
    pub range: Option<ByteRange>,
    /// Checked against the received body of a 2xx response, if set.
    pub expect_len: Option<u64>,
    /// Checked against the SHA-256 of the received body of a 2xx response, if set.
    pub expect_sha256: Option<[u8; 32]>,
    /// Keep the body (at most this many bytes, else [`ClientError::BodyTooLarge`]) in
    /// [`FetchResult::body`]: for scripts the caller reads, never for images.
    pub keep_body: Option<usize>,
    /// Compare the body byte for byte with this reference instead of hashing it: as strict as
    /// the digest (any difference fails), several times cheaper, for a benchmark that verifies
    /// thousands of downloads on the cores the server under test also uses. Needs
    /// `expect_sha256` (the reference's digest): a body identical to the reference has that
    /// digest, which [`FetchResult::sha256`] then reports.
    pub expect_content: Option<Bytes>,
    /// The body is these pieces in order, `(length, SHA-256)`, each checked as soon as its last
    /// byte arrives (a run of a root's chunks fetched with one `Range`): a bad piece fails the
    /// fetch naming it, before the rest arrives. The whole body is then not hashed again.
    pub expect_pieces: Vec<(u64, [u8; 32])>,
    /// Hash the body (for [`FetchResult::sha256`] and `expect_sha256`); off for a caller that
    /// checks the kept body itself (the node agent, chunk by chunk), so no byte is hashed twice.
    pub hash_body: bool,
}

impl FetchRequest {
    pub fn get(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            range: None,
            expect_len: None,
            expect_sha256: None,
            keep_body: None,
            expect_content: None,
            expect_pieces: Vec::new(),
            hash_body: true,
        }
    }

    /// Do not hash the body: [`FetchResult::sha256`] is then all zeros. For a caller that keeps
    /// the body and checks it itself.
    pub fn unhashed(mut self) -> Self {
        self.hash_body = false;
        self
    }

    /// Expect the body to be `pieces` in order, each `(length, SHA-256)` checked as it
    /// completes (see [`FetchRequest::expect_pieces`]); sets the expected length to their sum.
    pub fn expecting_pieces(mut self, pieces: Vec<(u64, [u8; 32])>) -> Self {
        self.expect_len = Some(pieces.iter().map(|(len, _)| len).sum());
        self.expect_pieces = pieces;
        self
    }

    /// Expect exactly `reference`, whose SHA-256 is `sha256`, compared byte for byte.
    pub fn comparing(mut self, reference: Bytes, sha256: [u8; 32]) -> Self {
        self.expect_len = Some(reference.len() as u64);
        self.expect_sha256 = Some(sha256);
        self.expect_content = Some(reference);
        self
    }

    /// Keep a body of at most `limit` bytes for the caller (an iPXE script).
    pub fn keeping_body(mut self, limit: usize) -> Self {
        self.keep_body = Some(limit);
        self
    }

    pub fn with_range(mut self, range: ByteRange) -> Self {
        self.range = Some(range);
        self
    }

    /// Expect this exact body (its length and SHA-256).
    pub fn expecting(mut self, body: &[u8]) -> Self {
        self.expect_len = Some(body.len() as u64);
        self.expect_sha256 = Some(Sha256::digest(body).into());
        self
    }
}

/// A completed fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    pub status: u16,
    pub body_len: u64,
    pub sha256: [u8; 32],
    pub content_range: Option<(u64, u64, Option<u64>)>,
    pub etag: Option<String>,
    /// The body, when the request asked to keep it.
    pub body: Option<Vec<u8>>,
}

/// Why a fetch failed. After any of these the connection is not reused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad response head: {0}")]
    Response(#[from] ResponseError),
    #[error("response without Content-Length")]
    MissingContentLength,
    #[error("chunked (or other) transfer coding is not supported")]
    TransferCoding,
    #[error("body length {got}, expected {expected}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("body SHA-256 differs from the expected digest")]
    DigestMismatch,
    #[error("connection closed before the response was complete")]
    Truncated,
    /// A kept-alive connection closed (the server timed it out as idle, say) after the request
    /// went out and before any byte of the response: RFC 9112 §9.3.1 lets a client retry an
    /// idempotent request on a new connection, and iPXE and curl do.
    #[error("kept-alive connection closed before the response began (retry on a new one)")]
    ClosedUnanswered,
    #[error("bytes received with no request outstanding")]
    Unsolicited,
    #[error("no response progress before the timeout")]
    Timeout,
    #[error("connection is closed")]
    Closed,
    #[error("body longer than the {limit} bytes the caller keeps")]
    BodyTooLarge { limit: usize },
    #[error("body differs from the reference at byte {offset}")]
    ContentMismatch { offset: u64 },
    #[error("piece {piece} of the body has another SHA-256 than expected")]
    PieceMismatch { piece: usize },
}

impl ClientError {
    /// Stable short name, used as a metrics label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Response(e) => e.as_str(),
            Self::MissingContentLength => "missing_content_length",
            Self::TransferCoding => "transfer_coding",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::DigestMismatch => "digest_mismatch",
            Self::Truncated => "truncated",
            Self::Unsolicited => "unsolicited",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::ClosedUnanswered => "closed_unanswered",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::ContentMismatch { .. } => "content_mismatch",
            Self::PieceMismatch { .. } => "piece_mismatch",
        }
    }
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per connection, never moved in bulk"
)]
enum State {
    Idle,
    Head(FetchRequest),
    Body {
        req: FetchRequest,
        head: ParsedResponse,
        remaining: u64,
        received: u64,
        /// `None` when the body is compared with `req.expect_content` or checked piece by
        /// piece instead.
        hasher: Option<Sha256>,
        kept: Option<Vec<u8>>,
        /// Piece by piece, when the request names pieces.
        pieces: Option<PieceCheck>,
    },
}

/// Checks a body piece by piece ([`FetchRequest::expect_pieces`]).
#[derive(Debug)]
struct PieceCheck {
    pieces: Vec<(u64, [u8; 32])>,
    /// The piece being received.
    index: usize,
    /// Bytes of it received so far.
    filled: u64,
    hasher: Sha256,
}

impl PieceCheck {
    fn new(pieces: Vec<(u64, [u8; 32])>) -> Self {
        Self {
            pieces,
            index: 0,
            filled: 0,
            hasher: Sha256::new(),
        }
    }

    fn update(&mut self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let Some(&(len, digest)) = self.pieces.get(self.index) else {
                // More body than pieces: the length check reports it.
                return Ok(());
            };
            let take = data
                .len()
                .min(usize::try_from(len - self.filled).unwrap_or(usize::MAX));
            self.hasher.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == len {
                let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                if got != digest {
                    return Err(ClientError::PieceMismatch { piece: self.index });
                }
                self.index += 1;
                self.filled = 0;
            }
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.index == self.pieces.len()
    }
}

/// One client connection (sans-IO).
#[derive(Debug)]
pub struct HttpClient {
    host: String,
    user_agent: String,
    max_head: usize,
    timeout: Duration,
    queue: VecDeque<FetchRequest>,
    state: State,
    head_buf: Vec<u8>,
    out: Vec<u8>,
    results: VecDeque<Result<FetchResult, ClientError>>,
    closed: bool,
    server_closes: bool,
    deadline: Option<Instant>,
    /// Complete responses received on this connection.
    responses: u64,
}

impl HttpClient {
    /// A client for a connection to `host` (sent as `Host`, e.g. `10.0.0.1:8080`).
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            user_agent: "stampede-bench/0.1 (iPXE-like)".to_owned(),
            max_head: 16 * 1024,
            timeout: Duration::from_secs(30),
            queue: VecDeque::new(),
            state: State::Idle,
            head_buf: Vec::new(),
            out: Vec::new(),
            results: VecDeque::new(),
            closed: false,
            server_closes: false,
            deadline: None,
            responses: 0,
        }
    }

    /// Time allowed between progress events while a response is awaited.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Queues a fetch; requests go out one at a time, each after the previous response.
    pub fn fetch(&mut self, now: Instant, req: FetchRequest) {
        if self.closed {
            self.results.push_back(Err(ClientError::Closed));
            return;
        }
        self.queue.push_back(req);
        self.start_next(now);
    }

    fn start_next(&mut self, now: Instant) {
        if !matches!(self.state, State::Idle) || self.closed {
            return;
        }
        let Some(req) = self.queue.pop_front() else {
            self.deadline = None;
            return;
        };
        let range = req.range.map(|r| format!("bytes={r}"));
        // Same fields, same order as iPXE (src/net/tcp/httpcore.c).
        let mut fields = vec![
            ("Connection", "keep-alive"),
            ("User-Agent", self.user_agent.as_str()),
            ("Host", self.host.as_str()),
        ];
        if let Some(r) = &range {
            fields.push(("Range", r));
        }
        RequestRepr::new("GET", &req.target, &fields).emit(&mut self.out);
        self.state = State::Head(req);
        self.deadline = Some(now + self.timeout);
    }

    /// Appends request bytes to write to `buf`; returns how many.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        buf.append(&mut self.out);
        n
    }

    /// Takes received bytes (always all of them). An error fails the current fetch (also
    /// reported by [`Self::poll_result`]) and closes the connection.
    pub fn handle_input(&mut self, now: Instant, mut input: &[u8]) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        while !input.is_empty() {
            match self.step(now, input) {
                Ok(n) => input = &input[n..],
                Err(e) => {
                    self.fail(e.clone());
                    return Err(e);
                }
            }
        }
        if !matches!(self.state, State::Idle) {
            self.deadline = Some(now + self.timeout);
        }
        Ok(())
    }

    /// Consumes a prefix of `input` for the current state.
    fn step(&mut self, now: Instant, input: &[u8]) -> Result<usize, ClientError> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => Err(ClientError::Unsolicited),
            State::Head(req) => {
                let before = self.head_buf.len();
                let take = input
                    .len()
                    .min(self.max_head + 1 - before.min(self.max_head));
                self.head_buf.extend_from_slice(&input[..take]);
                let Some(head) = ParsedResponse::parse(&self.head_buf, self.max_head)? else {
                    self.state = State::Head(req);
                    return Ok(take);
                };
                let used = head.head_len - before;
                self.head_buf.clear();
                if head.chunked {
                    return Err(ClientError::TransferCoding);
                }
                // RFC 9112 §6.3: 1xx/204/304 have no body. (1xx interim responses are not
                // expected from a boot server and are treated as final here.)
                let remaining = if head.status == 204 || head.status == 304 || head.status < 200 {
                    0
                } else {
                    head.content_length
                        .ok_or(ClientError::MissingContentLength)?
                };
                self.server_closes |= head.close;
                let checked = (200..300).contains(&head.status) && !req.expect_pieces.is_empty();
                let pieces = checked.then(|| PieceCheck::new(req.expect_pieces.clone()));
                let hasher = (req.expect_content.is_none()
                    && pieces.is_none()
                    && (req.hash_body || req.expect_sha256.is_some()))
                .then(Sha256::new);
                let kept = match req.keep_body {
                    Some(limit) if remaining > limit as u64 => {
                        return Err(ClientError::BodyTooLarge { limit });
                    }
                    Some(_) => Some(Vec::with_capacity(remaining as usize)),
                    None => None,
                };
                self.state = State::Body {
                    req,
                    head,
                    remaining,
                    received: 0,
                    hasher,
                    kept,
                    pieces,
                };
                self.finish_if_done(now)?;
                Ok(used)
            }
            State::Body {
                req,
                head,
                remaining,
                received,
                mut hasher,
                mut kept,
                mut pieces,
            } => {
                let n = input
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                if let Some(pieces) = &mut pieces {
                    pieces.update(&input[..n])?;
                }
                match (&mut hasher, &req.expect_content) {
                    (Some(hasher), _) => hasher.update(&input[..n]),
                    (None, Some(reference)) if (200..300).contains(&head.status) => {
                        let at = usize::try_from(received).unwrap_or(usize::MAX);
                        let want = reference.get(at..).unwrap_or_default();
                        let got = &input[..n];
                        let common = n.min(want.len());
                        // Slice equality is a vectorised memcmp; looking for the first differing
                        // byte one at a time, on every byte, made this the bench's hottest loop.
                        if got[..common] != want[..common] {
                            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                            return Err(ClientError::ContentMismatch {
                                offset: received + i as u64,
                            });
                        }
                        if want.len() < n {
                            return Err(ClientError::ContentMismatch {
                                offset: received + want.len() as u64,
                            });
                        }
                    }
                    (None, _) => {}
                }
                if let Some(kept) = &mut kept {
                    kept.extend_from_slice(&input[..n]);
                }
                self.state = State::Body {
                    req,
                    head,
                    remaining: remaining - n as u64,
                    received: received + n as u64,
                    hasher,
                    kept,
                    pieces,
                };
                self.finish_if_done(now)?;
                Ok(n)
            }
        }
    }

    fn finish_if_done(&mut self, now: Instant) -> Result<(), ClientError> {
        let State::Body { remaining: 0, .. } = self.state else {
            return Ok(());
        };
        let State::Body {
            req,
            head,
            received,
            hasher,
            kept,
            pieces,
            ..
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return Ok(());
        };
        // Compared byte for byte (every byte matched, the length is checked below): the body's
        // digest is the reference's.
        let sha256: [u8; 32] = match hasher {
            Some(hasher) => hasher.finalize().into(),
            None => req.expect_sha256.unwrap_or_default(),
        };
        if (200..300).contains(&head.status) {
            if let Some(expected) = req.expect_len
                && expected != received
            {
                return Err(ClientError::LengthMismatch {
                    expected,
                    got: received,
                });
            }
            if let Some(pieces) = pieces
                && !pieces.is_complete()
            {
                return Err(ClientError::LengthMismatch {
                    expected: req.expect_pieces.iter().map(|(len, _)| len).sum(),
                    got: received,
                });
            }
            if req.expect_sha256.is_some_and(|d| d != sha256) {
                return Err(ClientError::DigestMismatch);
            }
        }
        self.responses += 1;
        self.results.push_back(Ok(FetchResult {
            status: head.status,
            body_len: received,
            sha256,
            content_range: head.content_range,
            etag: head.etag,
            body: kept,
        }));
        if self.server_closes {
            self.close_with(ClientError::Closed);
        } else {
            self.start_next(now);
        }
        Ok(())
    }

    fn fail(&mut self, e: ClientError) {
        self.state = State::Idle;
        self.results.push_back(Err(e));
        self.close_with(ClientError::Closed);
    }

    /// Marks the connection closed; queued fetches fail with `err`.
    fn close_with(&mut self, err: ClientError) {
        self.closed = true;
        self.deadline = None;
        for _ in self.queue.drain(..) {
            self.results.push_back(Err(err.clone()));
        }
    }

    /// The server closed the connection (read returned 0). Also for a reset: the fetch fails
    /// either way, and [`ClientError::ClosedUnanswered`] says when it is safe to retry.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.unanswered_on_reused() {
            self.fail(ClientError::ClosedUnanswered);
        } else if !matches!(self.state, State::Idle) {
            self.fail(ClientError::Truncated);
        } else {
            self.close_with(ClientError::Closed);
        }
    }

    /// A request is out on a connection that already carried a response, and no byte of its
    /// own response has arrived: if the connection closes now, the server never saw or never
    /// answered it (RFC 9112 §9.3.1).
    pub fn unanswered_on_reused(&self) -> bool {
        self.responses > 0 && matches!(self.state, State::Head(_)) && self.head_buf.is_empty()
    }

    /// Next finished fetch, in request order.
    pub fn poll_result(&mut self) -> Option<Result<FetchResult, ClientError>> {
        self.results.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.fail(ClientError::Timeout);
        }
    }

    /// No fetch queued or in progress.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.queue.is_empty()
    }

    /// The connection can carry further fetches.
    pub fn is_reusable(&self) -> bool {
        !self.closed && !self.server_closes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn kept_bodies_come_back_whole_and_capped_ones_fail() {
        let now = Instant::now();
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/s").keeping_body(64));
        let mut out = Vec::new();
        assert!(c.poll_transmit(&mut out) > 0);
        // Split across reads: the body must be reassembled in order.
        let bytes = response("#!ipxe\nkernel k\n");
        let (a, b) = bytes.split_at(bytes.len() - 5);
        c.handle_input(now, a.as_bytes()).unwrap();
        c.handle_input(now, b.as_bytes()).unwrap();
        let result = c.poll_result().unwrap().unwrap();
        assert_eq!(result.body.as_deref(), Some(&b"#!ipxe\nkernel k\n"[..]));

        c.fetch(now, FetchRequest::get("/big").keeping_body(4));
        assert_eq!(
            c.handle_input(now, response("too long").as_bytes()),
            Err(ClientError::BodyTooLarge { limit: 4 })
        );
        // Bodies not asked for are hashed, not kept.
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/k"));
        c.handle_input(now, response("abc").as_bytes()).unwrap();
        assert_eq!(c.poll_result().unwrap().unwrap().body, None);
    }

    /// A close before any response byte is retryable only on a connection that already
    /// carried a response (the server may have timed it out as idle); on a new connection, or
    /// once response bytes arrived, it is a failure.
    #[test]
    fn only_an_unanswered_request_on_a_reused_connection_may_be_retried() {
        let now = Instant::now();
        let mut out = Vec::new();
        // New connection, nothing answered yet.
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/a"));
        assert!(!c.unanswered_on_reused());
        c.handle_eof(now);
        assert_eq!(c.poll_result(), Some(Err(ClientError::Truncated)));
        // Reused connection, second request unanswered.
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/a"));
        c.handle_input(now, response("one").as_bytes()).unwrap();
        assert!(c.poll_result().unwrap().is_ok());
        c.fetch(now, FetchRequest::get("/b"));
        c.poll_transmit(&mut out);
        assert!(c.unanswered_on_reused());
        c.handle_eof(now);
        assert_eq!(c.poll_result(), Some(Err(ClientError::ClosedUnanswered)));
        assert!(!c.is_reusable());
        // Reused connection, the response had begun: truncated, not retryable.
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/a"));
        c.handle_input(now, response("one").as_bytes()).unwrap();
        c.fetch(now, FetchRequest::get("/b"));
        c.handle_input(now, b"HTTP/1.1 2").unwrap();
        assert!(!c.unanswered_on_reused());
        c.handle_eof(now);
        let _ = c.poll_result();
        assert_eq!(c.poll_result(), Some(Err(ClientError::Truncated)));
    }

    #[test]
    fn an_unhashed_body_is_kept_and_not_hashed() {
        let now = Instant::now();
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/c").keeping_body(16).unhashed());
        c.handle_input(now, response("abc").as_bytes()).unwrap();
        let result = c.poll_result().unwrap().unwrap();
        assert_eq!(result.body.as_deref(), Some(&b"abc"[..]));
        assert_eq!(result.sha256, [0; 32]);
        // An expected digest is still checked.
        let mut c = HttpClient::new("h");
        let mut req = FetchRequest::get("/c").unhashed();
        req.expect_sha256 = Some([1; 32]);
        c.fetch(now, req);
        assert_eq!(
            c.handle_input(now, response("abc").as_bytes()),
            Err(ClientError::DigestMismatch)
        );
    }

    #[test]
    fn pieces_are_checked_as_each_completes_across_reads() {
        let now = Instant::now();
        let digest = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        let pieces = vec![(3, digest(b"abc")), (0, digest(b"")), (4, digest(b"defg"))];
        let mut c = HttpClient::new("h");
        c.fetch(
            now,
            FetchRequest::get("/img").expecting_pieces(pieces.clone()),
        );
        let bytes = response("abcdefg");
        for part in bytes.as_bytes().chunks(2) {
            c.handle_input(now, part).unwrap();
        }
        assert_eq!(c.poll_result().unwrap().unwrap().body_len, 7);
        // The second piece is wrong: the fetch fails naming it, before the body ends.
        let mut c = HttpClient::new("h");
        c.fetch(
            now,
            FetchRequest::get("/img").expecting_pieces(pieces.clone()),
        );
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nabcdefX";
        assert_eq!(
            c.handle_input(now, head.as_bytes()),
            Err(ClientError::PieceMismatch { piece: 2 })
        );
        // A body shorter than the pieces is a length mismatch.
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/img").expecting_pieces(pieces));
        assert_eq!(
            c.handle_input(now, response("abcd").as_bytes()),
            Err(ClientError::LengthMismatch {
                expected: 7,
                got: 4
            })
        );
    }

    #[test]
    fn compared_bodies_fail_at_the_first_differing_byte() {
        let now = Instant::now();
        let reference = Bytes::from_static(b"kernel bytes");
        let digest: [u8; 32] = Sha256::digest(&reference).into();
        let mut c = HttpClient::new("h");
        c.fetch(
            now,
            FetchRequest::get("/k").comparing(reference.clone(), digest),
        );
        let bytes = response("kernel bytes");
        for chunk in bytes.as_bytes().chunks(3) {
            c.handle_input(now, chunk).unwrap();
        }
        assert_eq!(c.poll_result().unwrap().unwrap().sha256, digest);

        let mut c = HttpClient::new("h");
        c.fetch(
            now,
            FetchRequest::get("/k").comparing(reference.clone(), digest),
        );
        assert_eq!(
            c.handle_input(now, response("kernel bytEs").as_bytes()),
            Err(ClientError::ContentMismatch { offset: 10 })
        );
        // Shorter than the reference: the length check catches it.
        let mut c = HttpClient::new("h");
        c.fetch(now, FetchRequest::get("/k").comparing(reference, digest));
        assert!(matches!(
            c.handle_input(now, response("kernel").as_bytes()),
            Err(ClientError::LengthMismatch { .. })
        ));
    }
}
