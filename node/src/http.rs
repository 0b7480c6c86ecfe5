//! Plain HTTP/1.1 GETs to the appliance: manifest, chunks, runs of chunks out of the whole
//! image (one `Range` each), per-machine config, events.
//!
//! The wire work is proto's sans-IO [`HttpClient`] (the one the benchmark's simulated machines
//! use), driven here over a blocking [`TcpStream`]. Chosen over `ureq`: no new dependency in a
//! binary that must stay small, keep-alive per worker thread for free, and the same parser the
//! appliance is already tested against. Its limits are the appliance's framing: bodies carry
//! `Content-Length` (no chunked coding), and there is no TLS (the manifest's signature and the
//! chunks' digests are what make the root trustworthy, not the transport).
use std::{
    fmt,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use stampede_proto::http::{
    ByteRange,
    client::{ClientError, FetchRequest, HttpClient},
};

/// `http://host[:port][/path]`, the only kind of URL the agent fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?}: only http:// URLs are fetched (no TLS in the node agent yet)")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} has a bad port")]
    Port(String),
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| UrlError::Scheme(text.into()))?;
        let (authority, target) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| UrlError::Port(text.into()))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(text.into()));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            target: target.to_owned(),
        })
    }

    /// Scheme, host and port: the base other paths join onto.
    pub fn origin(&self) -> Self {
        Self {
            target: "/".into(),
            ..self.clone()
        }
    }

    /// `path` (starting with `/`) under this URL's path, which is taken as a directory.
    pub fn join(&self, path: &str) -> Self {
        let base = self.target.trim_end_matches('/');
        Self {
            target: format!("{base}{path}"),
            ..self.clone()
        }
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = if self.target == "/" { "" } else { &self.target };
        write!(f, "http://{}:{}{target}", self.host, self.port)
    }
}

/// Percent-encodes a query value: everything but RFC 3986 §2.3's unreserved characters.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A completed GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// A 206's `Content-Range`: first byte, last byte (inclusive), complete length (`None` for
    /// `*`).
    pub content_range: Option<(u64, u64, Option<u64>)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: cannot resolve: {source}")]
    Resolve {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: connect: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Protocol {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("{url}: no response within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// One kept-alive connection to one server, reopened when the server closes it.
#[derive(Debug)]
pub struct HttpConnection {
    server: HttpUrl,
    /// Connect and progress timeout (the sans-IO client's, between bytes of a response).
    timeout: Duration,
    stream: Option<(TcpStream, HttpClient)>,
}

impl HttpConnection {
    pub fn new(server: &HttpUrl, timeout: Duration) -> Self {
        Self {
            server: server.origin(),
            timeout,
            stream: None,
        }
    }

    /// GETs `url` keeping at most `limit` body bytes. Only its target is used: the connection
    /// goes to the server it was made for.
    pub fn get(&mut self, url: &HttpUrl, limit: usize) -> Result<Response, HttpError> {
        self.request(url, None, limit)
    }

    /// GETs bytes `first..=last` of `url` (`Range: bytes=first-last`) keeping at most `limit`
    /// body bytes. The answer is the server's: a 206 says which range it holds in
    /// [`Response::content_range`], a server without ranges answers 200 with the whole file
    /// (over `limit`, that fails as [`ClientError::BodyTooLarge`] before the body is read);
    /// the caller decides what it accepts.
    pub fn get_range(
        &mut self,
        url: &HttpUrl,
        first: u64,
        last: u64,
        limit: usize,
    ) -> Result<Response, HttpError> {
        self.request(url, Some(ByteRange::FromTo(first, last)), limit)
    }

    fn request(
        &mut self,
        url: &HttpUrl,
        range: Option<ByteRange>,
        limit: usize,
    ) -> Result<Response, HttpError> {
        let reused = self.stream.is_some();
        match self.get_once(url, range, limit) {
            // A kept-alive connection the server closed while idle fails before the response
            // begins (a read of 0 bytes, a reset, or EPIPE on the write); RFC 9112 §9.3.1 allows
            // one retry of the idempotent GET on a new connection.
            Err(
                HttpError::Protocol {
                    source: ClientError::ClosedUnanswered,
                    ..
                }
                | HttpError::Io { .. },
            ) if reused => self.get_once(url, range, limit),
            other => other,
        }
    }

    /// GETs `url` and fails unless the status is 2xx.
    pub fn get_ok(&mut self, url: &HttpUrl, limit: usize) -> Result<Vec<u8>, HttpError> {
        let response = self.get(url, limit)?;
        if !(200..300).contains(&response.status) {
            return Err(HttpError::Status {
                url: url.to_string(),
                status: response.status,
            });
        }
        Ok(response.body)
    }

    fn connect(&self) -> Result<TcpStream, HttpError> {
        let url = &self.server;
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|source| HttpError::Resolve {
                url: url.to_string(),
                source,
            })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(HttpError::Connect {
            url: url.to_string(),
            source: last.unwrap_or_else(|| ErrorKind::NotFound.into()),
        })
    }

    fn get_once(
        &mut self,
        url: &HttpUrl,
        range: Option<ByteRange>,
        limit: usize,
    ) -> Result<Response, HttpError> {
        let result = self.exchange(url, range, limit);
        let reusable = self
            .stream
            .as_ref()
            .is_some_and(|(_, client)| client.is_reusable() && client.is_idle());
        if result.is_err() || !reusable {
            self.stream = None;
        }
        result
    }

    fn exchange(
        &mut self,
        url: &HttpUrl,
        range: Option<ByteRange>,
        limit: usize,
    ) -> Result<Response, HttpError> {
        let io = |source| HttpError::Io {
            url: url.to_string(),
            source,
        };
        let (stream, client) = match self.stream.take() {
            Some(open) => self.stream.insert(open),
            None => {
                let stream = self.connect()?;
                let client = HttpClient::new(&self.server.authority()).with_timeout(self.timeout);
                self.stream.insert((stream, client))
            }
        };
        let started = Instant::now();
        // Kept whole and checked by the caller (each chunk against the manifest): not hashed
        // here too.
        let mut request = FetchRequest::get(&url.target)
            .keeping_body(limit)
            .unhashed();
        request.range = range;
        client.fetch(started, request);
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        stream.write_all(&out).map_err(io)?;
        // Short reads so the client's own progress timeout is checked between them.
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(io)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(result) = client.poll_result() {
                return match result {
                    Ok(fetched) => Ok(Response {
                        status: fetched.status,
                        content_range: fetched.content_range,
                        body: fetched.body.unwrap_or_default(),
                    }),
                    Err(source) => Err(HttpError::Protocol {
                        url: url.to_string(),
                        source,
                    }),
                };
            }
            let now = Instant::now();
            // A server that trickles bytes forever still ends here.
            let ceiling = self.timeout * 10;
            if now.duration_since(started) > ceiling {
                return Err(HttpError::Timeout {
                    url: url.to_string(),
                    timeout: ceiling,
                });
            }
            match stream.read(&mut buf) {
                Ok(0) => client.handle_eof(now),
                Ok(n) => {
                    // Errors also come back through poll_result.
                    let _ = client.handle_input(now, &buf[..n]);
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    client.handle_timeout(Instant::now());
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::ConnectionReset => client.handle_eof(now),
                Err(err) => return Err(io(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, net::TcpListener, thread};

    use super::*;

    #[test]
    fn urls_parse_join_and_print() {
        let u = HttpUrl::parse("http://198.18.0.1:8080/roots/x/manifest").expect("url");
        assert_eq!(u.authority(), "198.18.0.1:8080");
        assert_eq!(u.origin().to_string(), "http://198.18.0.1:8080");
        let base = HttpUrl::parse("http://h:1/pre/").expect("url");
        assert_eq!(base.join("/chunks/ab").target, "/pre/chunks/ab");
        assert_eq!(HttpUrl::parse("http://h").expect("url").target, "/");
        assert!(matches!(
            HttpUrl::parse("http://:80/"),
            Err(UrlError::NoHost(_))
        ));
        assert!(matches!(
            HttpUrl::parse("http://h:0/"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            HttpUrl::parse("http://h:x/"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            HttpUrl::parse("ftp://h/"),
            Err(UrlError::Scheme(_))
        ));
    }

    #[test]
    fn query_values_keep_only_unreserved_characters() {
        assert_eq!(encode_query_value("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(
            encode_query_value("bad sig: x&y=z/é"),
            "bad%20sig%3A%20x%26y%3Dz%2F%C3%A9"
        );
    }

    /// A server answering each request on one kept-alive connection, closing after `close_after`.
    fn serve(bodies: Vec<(u16, Vec<u8>)>, close_after: usize) -> HttpUrl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            let mut bodies = bodies.into_iter();
            while let Ok((stream, _)) = listener.accept() {
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                for _ in 0..close_after {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let Some((status, body)) = bodies.next() else {
                        return;
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
            }
        });
        HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).expect("url")
    }

    #[test]
    fn gets_reuse_and_reopen_connections() {
        let server = serve(
            vec![
                (200, b"one".to_vec()),
                (404, b"nope".to_vec()),
                (200, vec![7; 100_000]),
            ],
            2,
        );
        let mut conn = HttpConnection::new(&server, Duration::from_secs(5));
        assert_eq!(conn.get_ok(&server.join("/a"), 10).expect("a"), b"one");
        assert!(matches!(
            conn.get_ok(&server.join("/b"), 10),
            Err(HttpError::Status { status: 404, .. })
        ));
        // The server closed after two: the third request opens a new connection.
        let big = conn.get_ok(&server.join("/c"), 200_000).expect("c");
        assert_eq!(big.len(), 100_000);
    }

    /// A server answering `Range: bytes=a-b` of `data` with a 206 and its `Content-Range`, and a
    /// request without one with a 200 of everything, on one kept-alive connection.
    fn serve_ranges(data: Vec<u8>) -> HttpUrl {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut stream = stream;
            loop {
                let mut range = None;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(spec) = line.trim_end().strip_prefix("Range: bytes=") {
                        let (a, b) = spec.split_once('-').expect("first-last");
                        range = Some((
                            a.parse::<usize>().expect("a"),
                            b.parse::<usize>().expect("b"),
                        ));
                    }
                }
                let head = match range {
                    Some((a, b)) => format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                        data.len(),
                        b + 1 - a
                    ),
                    None => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len()),
                };
                let body = range.map_or(&data[..], |(a, b)| &data[a..=b]);
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).expect("url")
    }

    #[test]
    fn range_gets_send_the_range_and_report_the_content_range() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let server = serve_ranges(data.clone());
        let mut conn = HttpConnection::new(&server, Duration::from_secs(5));
        let url = server.join("/roots/r/image");
        let part = conn.get_range(&url, 1000, 2999, 2000).expect("range");
        assert_eq!(part.status, 206);
        assert_eq!(part.content_range, Some((1000, 2999, Some(5000))));
        assert_eq!(part.body, data[1000..3000]);
        // Same connection, no range: the whole file, no Content-Range.
        let whole = conn.get(&url, 5000).expect("whole");
        assert_eq!((whole.status, whole.content_range), (200, None));
        assert_eq!(whole.body, data);
        // The limit holds for ranges too: a range larger than it fails before its body.
        assert!(matches!(
            conn.get_range(&url, 0, 4999, 100),
            Err(HttpError::Protocol {
                source: ClientError::BodyTooLarge { limit: 100 },
                ..
            })
        ));
    }

    #[test]
    fn a_body_over_the_limit_fails() {
        let server = serve(vec![(200, vec![1; 50])], 1);
        let mut conn = HttpConnection::new(&server, Duration::from_secs(5));
        assert!(matches!(
            conn.get(&server.join("/x"), 10),
            Err(HttpError::Protocol {
                source: ClientError::BodyTooLarge { .. },
                ..
            })
        ));
    }
}
