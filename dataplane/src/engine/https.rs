//! HTTPS boot: TLS (rustls) beside the io_uring HTTP workers, serving the same sans-IO
//! [`HttpConnection`] core, catalog and routes.
//!
//! Why beside and not on the io_uring workers: the plain-HTTP workers hand file pages to the
//! kernel (`sendfile`, zero-copy sends) and never touch the bytes; TLS must encrypt every byte
//! in user space (kTLS would keep `sendfile`, but this kernel build has no `tls` ULP loaded, see
//! `/proc/sys/net/ipv4/tcp_available_ulp`). Putting rustls into the ring's completion path would
//! add a per-connection encryption state and copies to the hot path thousands of plain-HTTP
//! machines use. Here TLS costs nothing unless it is turned on, and a TLS connection is a
//! thread of its own: accept, handshake (bounded by [`HttpsServerConfig::handshake_timeout`]),
//! then requests through the same core, with the body encrypted from the shared mapping in
//! records of at most 16 KiB. The number of such threads is bounded by
//! [`HttpsServerConfig::max_connections`]; more are closed at once and counted as `refused`.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use stampede_proto::http::{HttpConnection, Route, ServerConfig};

use super::http::{Catalog, HttpStats, SharedRoute, report_response};

/// How often an idle connection thread checks for a stop: bounds how long a stop waits for idle
/// keep-alive connections, at ten wakeups a second per idle connection.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Plaintext read from the TLS stream at a time: one TLS record.
const READ_CHUNK: usize = 16 * 1024;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum HttpsServerError {
    #[error("binding {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("spawning the HTTPS accept thread")]
    Spawn(#[source] io::Error),
    #[error("invalid server configuration: {0}")]
    Config(&'static str),
}

/// Server tuning; every default says what it is sized for.
#[derive(Debug, Clone)]
pub struct HttpsServerConfig {
    /// TLS connections served at once, one thread each. 1024 is a rack of machines fetching at
    /// the same moment; each thread holds a 16 KiB read buffer and rustls' buffers.
    pub max_connections: usize,
    /// A handshake not finished by then is dropped (a client that connects and says nothing
    /// must not hold a thread). 10 s is generous for firmware under emulation.
    pub handshake_timeout: Duration,
    /// A response write that makes no progress this long closes the connection: 60 s covers
    /// a firmware busy between reads, and frees the thread of a client that went away.
    pub send_timeout: Duration,
    /// Received bytes held beyond what the core takes (as in [`super::http::HttpServerConfig`]).
    pub max_unconsumed: usize,
    pub http: ServerConfig,
    pub events: stampede_proto::events::Events,
}

impl Default for HttpsServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max_unconsumed: 64 * 1024,
            http: ServerConfig::default(),
            events: stampede_proto::events::Events::default(),
        }
    }
}

/// Counters: the HTTP ones (as the plain server keeps them) and the TLS handshakes that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpsStats {
    pub http: HttpStats,
    /// Connections whose TLS handshake failed or timed out (a client that does not trust the
    /// certificate ends here: the operator must hand it the CA).
    pub handshake_failures: u64,
}

struct Shared {
    stats: Mutex<HttpsStats>,
    open: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut HttpsStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A running HTTPS server. Dropping it stops accepting at once; connections end at their next
/// idle moment.
pub struct HttpsServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl HttpsServer {
    /// Binds `address` (port 0 picks one) and starts accepting TLS connections.
    pub fn bind(
        address: SocketAddr,
        config: HttpsServerConfig,
        tls: Arc<rustls::ServerConfig>,
        catalog: Catalog,
        route: Option<Arc<dyn Route + Send + Sync>>,
    ) -> Result<Self, HttpsServerError> {
        if config.max_connections == 0 {
            return Err(HttpsServerError::Config(
                "max_connections must be at least 1",
            ));
        }
        let listener = TcpListener::bind(address)
            .map_err(|source| HttpsServerError::Bind { address, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpsServerError::Bind { address, source })?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(HttpsStats::default()),
            open: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("https-accept".into())
            .spawn(move || accept_loop(listener, config, tls, catalog, route, accepting))
            .map_err(HttpsServerError::Spawn)?;
        Ok(Self {
            local_addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The bound address (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Current counters.
    pub fn stats(&self) -> HttpsStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops accepting, lets connections finish the response they are writing until
    /// `deadline`, and returns the counters.
    pub fn stop(mut self, deadline: Instant) -> HttpsStats {
        self.shutdown();
        while self.shared.open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stats()
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            // The accept thread blocks in accept(2): one connection wakes it to see the flag.
            let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
            if acceptor.join().is_err() {
                tracing::error!("HTTPS accept thread panicked");
            }
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: TcpListener,
    config: HttpsServerConfig,
    tls: Arc<rustls::ServerConfig>,
    catalog: Catalog,
    route: Option<Arc<dyn Route + Send + Sync>>,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(error = %e, "HTTPS accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.open.load(Ordering::Acquire) >= config.max_connections {
            shared.update(|s| s.http.refused += 1);
            continue;
        }
        shared.open.fetch_add(1, Ordering::AcqRel);
        let connection = TlsConnection {
            config: config.clone(),
            tls: Arc::clone(&tls),
            catalog: Arc::clone(&catalog),
            route: route.clone(),
            shared: Arc::clone(&shared),
            peer,
        };
        let spawned = std::thread::Builder::new()
            .name("https-conn".into())
            .spawn(move || connection.run(tcp));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for an HTTPS connection");
            shared.open.fetch_sub(1, Ordering::AcqRel);
            shared.update(|s| s.http.refused += 1);
        }
    }
}

/// How a connection ended, for the counters.
enum Ending {
    Local,
    Peer,
    Error,
    Idle,
    Handshake,
}

struct TlsConnection {
    config: HttpsServerConfig,
    tls: Arc<rustls::ServerConfig>,
    catalog: Catalog,
    route: Option<Arc<dyn Route + Send + Sync>>,
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl TlsConnection {
    fn run(self, mut tcp: TcpStream) {
        self.shared.update(|s| s.http.accepted += 1);
        let ending = self.serve(&mut tcp);
        self.shared.update(|s| match ending {
            Ending::Handshake => {
                s.handshake_failures += 1;
                s.http.closed += 1;
                s.http.closed_on_error += 1;
            }
            ending => {
                s.http.closed += 1;
                match ending {
                    Ending::Peer => s.http.closed_by_peer += 1,
                    Ending::Error => s.http.closed_on_error += 1,
                    Ending::Idle => s.http.idle_timeouts += 1,
                    Ending::Local | Ending::Handshake => {}
                }
            }
        });
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn serve(&self, tcp: &mut TcpStream) -> Ending {
        let Ok(mut tls) = rustls::ServerConnection::new(Arc::clone(&self.tls)) else {
            return Ending::Handshake;
        };
        if let Err(e) = self.handshake(&mut tls, tcp) {
            // On the boot timeline: a machine that does not trust the certificate (or speaks
            // no suite in common) stops here, and the operator must see why.
            tracing::info!(
                target: "stampede::boot",
                client = %self.peer,
                error = %e,
                "https handshake failed"
            );
            return Ending::Handshake;
        }
        if tcp
            .set_write_timeout(Some(self.config.send_timeout))
            .is_err()
        {
            return Ending::Error;
        }
        let _ = tcp.set_nodelay(true);
        let now = Instant::now();
        let mut http = HttpConnection::new(now, Arc::clone(&self.catalog), self.config.http);
        if let Some(route) = &self.route {
            http = http.with_route(SharedRoute(Arc::clone(route), self.peer));
        }
        let mut stream = rustls::Stream::new(&mut tls, tcp);
        let mut unconsumed: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut head = Vec::new();
        loop {
            let now = Instant::now();
            while let Some(transmit) = http.poll_output(now, &mut head) {
                let mut stats = HttpStats::default();
                report_response(&mut stats, &self.config.events, self.peer, &transmit);
                let body = transmit.body.bytes();
                let written = stream
                    .write_all(&head)
                    .and_then(|()| stream.write_all(&body))
                    .and_then(|()| stream.flush());
                head.clear();
                let sent = Instant::now();
                stats.observe_response(sent.saturating_duration_since(now));
                self.shared.update(|s| s.http.add(&stats));
                if written.is_err() {
                    return Ending::Error;
                }
                self.shared.update(|s| {
                    s.http.bytes_sent += (transmit.head_len as u64) + transmit.body.len;
                });
                http.transmit_done(sent);
                if !unconsumed.is_empty() {
                    let taken = http.handle_input(sent, &unconsumed);
                    unconsumed.drain(..taken);
                }
            }
            if http.is_closed() {
                stream.conn.send_close_notify();
                let _ = stream.flush();
                return Ending::Local;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return Ending::Local;
            }
            let wait = http
                .poll_timeout()
                .map_or(STOP_CHECK, |t| t.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), STOP_CHECK);
            if stream.sock.set_read_timeout(Some(wait)).is_err() {
                return Ending::Error;
            }
            match stream.read(&mut buf) {
                Ok(0) => return Ending::Peer,
                Ok(n) => {
                    let now = Instant::now();
                    if unconsumed.is_empty() {
                        let taken = http.handle_input(now, &buf[..n]);
                        unconsumed.extend_from_slice(&buf[taken..n]);
                    } else {
                        unconsumed.extend_from_slice(&buf[..n]);
                    }
                    if unconsumed.len() > self.config.max_unconsumed {
                        self.shared.update(|s| {
                            *s.http.rejections.entry("pipeline_overflow").or_default() += 1;
                        });
                        return Ending::Local;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    http.handle_timeout(Instant::now());
                    // An idle keep-alive connection closes without a response; a slow head
                    // gets its 408 from the loop above.
                    if http.is_closed() {
                        return Ending::Idle;
                    }
                }
                // A peer that closes without close_notify (most HTTP clients do, RFC 8446 §6.1
                // lets them) ends the connection as a peer close.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ending::Peer,
                Err(_) => return Ending::Error,
            }
        }
    }

    fn handshake(&self, tls: &mut rustls::ServerConnection, tcp: &mut TcpStream) -> io::Result<()> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        while tls.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake took too long",
                ));
            }
            tcp.set_read_timeout(Some(left))?;
            tcp.set_write_timeout(Some(left))?;
            tls.complete_io(tcp)?;
        }
        // TLS 1.3 session tickets and the last flight go out before the first request.
        while tls.wants_write() {
            tls.write_tls(tcp)?;
        }
        Ok(())
    }
}
