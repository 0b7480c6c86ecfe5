//! The HTTP boot server: the sans-IO [`HttpConnection`] core driven over io_uring
//! ([`TcpWorker`]), one worker thread and one ring per core.
//!
//! Each worker owns a `SO_REUSEPORT` listener on the shared address, so the kernel spreads
//! connections across workers and nothing is shared on the hot path: a connection lives and dies
//! on the worker that accepted it. Per connection the worker feeds received bytes to the core,
//! hands each [`Transmit`] (head bytes plus a slice of the shared file, never copied) to the ring,
//! calls `transmit_done` when the kernel has taken all of it, and closes the socket when the core
//! says so. The core's `poll_timeout` deadlines (keep-alive idle, request-head slowloris
//! deadline) go into a per-worker heap; the worker's one timeout SQE is armed at the earliest.
//!
//! Counters are kept per worker in plain integers and published to a per-worker mutex at most
//! every [`PUBLISH_INTERVAL`] and when the worker exits, so reading them never slows a worker.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use stampede_proto::{
    bootpath::BootPath,
    files::{BootFile, FileCatalog, OpenError, SealedFile},
    http::{HttpConnection, Route, ServerConfig},
};

use crate::sys::{
    uring::UringError,
    uring_tcp::{
        CloseReason, ConnId, TcpEvent, TcpOutbox, TcpWorker, TcpWorkerConfig, TcpWorkerStats,
        reuseport_listener,
    },
};

/// How often a worker publishes its counters and checks for a stop request while otherwise
/// idle. 100 ms bounds both the staleness of [`HttpServer::stats`] and the delay before a stop
/// takes effect, at ten wakeups a second per idle worker.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum HttpServerError {
    #[error("binding {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the io_uring of worker {worker}")]
    Worker {
        worker: usize,
        #[source]
        source: UringError,
    },
    #[error("spawning worker thread {worker}")]
    Spawn {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("invalid server configuration: {0}")]
    Config(&'static str),
}

/// Server tuning; every default says what it is sized for.
#[derive(Debug, Clone)]
pub struct HttpServerConfig {
    /// Worker threads, each with its own ring and listener. Default: one per available CPU.
    pub workers: usize,
    /// Connections one worker serves at once; more are accepted and closed at once, counted as
    /// `refused`. 4096 per worker covers a rack of machines booting at the same moment per core,
    /// at 4 KiB receive buffer each (16 MiB per worker).
    pub max_connections_per_worker: usize,
    /// `listen(2)` backlog per worker listener (capped by `net.core.somaxconn`). 1024 absorbs a
    /// burst of connection attempts between two wakeups.
    pub backlog: i32,
    /// Received bytes held for a connection beyond what its core takes (pipelined requests while
    /// `max_pending` responses are queued). Past this the connection is closed and counted as
    /// `pipeline_overflow`: 64 KiB is dozens of pipelined boot requests, far beyond any firmware.
    pub max_unconsumed: usize,
    pub http: ServerConfig,
    pub tcp: TcpWorkerConfig,
    /// Where each response is reported (the control plane's boot sessions).
    pub events: stampede_proto::events::Events,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            max_connections_per_worker: 4096,
            backlog: 1024,
            max_unconsumed: 64 * 1024,
            http: ServerConfig::default(),
            tcp: TcpWorkerConfig::default(),
            events: stampede_proto::events::Events::default(),
        }
    }
}

/// Upper bounds in seconds of the response-time buckets: a script or a small file leaves in
/// milliseconds; a kernel or an initrd of hundreds of megabytes takes seconds, more in a storm.
pub const RESPONSE_SECONDS_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Counters, summed over workers. Every refused request and dropped connection has a reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpStats {
    pub accepted: u64,
    /// Connections closed (by us, by the peer, on error), refused ones excluded.
    pub closed: u64,
    /// Connections closed at once because the worker was at `max_connections_per_worker`.
    pub refused: u64,
    /// Of `closed`: ended by a receive or send error (reset by the peer, ...).
    pub closed_on_error: u64,
    /// Of `closed`: the peer closed before we did.
    pub closed_by_peer: u64,
    /// Of `closed`: kept-alive connections closed after `idle_timeout`.
    pub idle_timeouts: u64,
    /// Of `closed`: cut at the stop deadline with a response still being written.
    pub aborted_at_stop: u64,
    /// Responses by status class: index 1 = 1xx, ..., 5 = 5xx (index 0 unused).
    pub responses_by_class: [u64; 6],
    /// Bytes written to sockets (heads and bodies).
    pub bytes_sent: u64,
    /// Of `bytes_sent`, body bytes sent with `sendfile` from sealed files (no copy).
    pub sendfile_bytes: u64,
    /// Times a `sendfile` filled a socket's buffer and its connection waited for `POLLOUT`.
    pub sendfile_waits: u64,
    /// Receives and sends io_uring completed with `EAGAIN` (resubmitted).
    pub eagain_retries: u64,
    /// Sends made with `SENDMSG_ZC` ([`TcpWorkerConfig::zero_copy_min_len`]).
    pub zero_copy_sends: u64,
    /// Zero-copy notifications saying the kernel copied after all (loopback, veth).
    pub zero_copy_copied: u64,
    /// Refused requests by [`stampede_proto::http::Rejection::as_str`], plus
    /// `pipeline_overflow` for connections closed past `max_unconsumed`.
    pub rejections: BTreeMap<&'static str, u64>,
    /// Responses by time from the head being queued to the last byte taken by the kernel,
    /// counted per bucket of [`RESPONSE_SECONDS_BOUNDS`] (not cumulative; the last is `+Inf`).
    pub response_seconds: [u64; RESPONSE_SECONDS_BOUNDS.len() + 1],
    /// The sum of those times, in microseconds.
    pub response_micros_sum: u64,
}

impl HttpStats {
    pub(crate) fn add(&mut self, other: &Self) {
        self.accepted += other.accepted;
        self.closed += other.closed;
        self.refused += other.refused;
        self.closed_on_error += other.closed_on_error;
        self.closed_by_peer += other.closed_by_peer;
        self.idle_timeouts += other.idle_timeouts;
        self.aborted_at_stop += other.aborted_at_stop;
        for (sum, n) in self
            .responses_by_class
            .iter_mut()
            .zip(other.responses_by_class)
        {
            *sum += n;
        }
        self.bytes_sent += other.bytes_sent;
        self.sendfile_bytes += other.sendfile_bytes;
        self.sendfile_waits += other.sendfile_waits;
        self.eagain_retries += other.eagain_retries;
        self.zero_copy_sends += other.zero_copy_sends;
        self.zero_copy_copied += other.zero_copy_copied;
        for (reason, n) in &other.rejections {
            *self.rejections.entry(reason).or_default() += n;
        }
        for (sum, n) in self.response_seconds.iter_mut().zip(other.response_seconds) {
            *sum += n;
        }
        self.response_micros_sum += other.response_micros_sum;
    }

    /// Counts one response that took `took` to send.
    pub(crate) fn observe_response(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = RESPONSE_SECONDS_BOUNDS.partition_point(|bound| *bound < secs);
        self.response_seconds[at] += 1;
        self.response_micros_sum += took.as_micros() as u64;
    }

    /// Responses of all classes.
    pub fn responses(&self) -> u64 {
        self.responses_by_class.iter().sum()
    }
}

/// A [`Route`] shared by every connection of every worker, asked on behalf of one
/// connection's client ([`Route::route_from`]).
pub(crate) struct SharedRoute(
    pub(crate) Arc<dyn Route + Send + Sync>,
    pub(crate) SocketAddr,
);

impl Route for SharedRoute {
    fn route(&self, path: &BootPath, query: Option<&str>) -> Option<Result<BootFile, OpenError>> {
        self.0.route_from(self.1, path, query)
    }
}

pub(crate) type Catalog = Arc<dyn FileCatalog + Send + Sync>;

/// A running server: worker threads serving one address. Dropping it stops the workers at once
/// (in-flight responses are cut); [`stop`](Self::stop) lets them finish.
pub struct HttpServer {
    local_addr: SocketAddr,
    workers: Vec<WorkerHandle>,
}

struct WorkerHandle {
    stop: Sender<Instant>,
    stats: Arc<Mutex<HttpStats>>,
    thread: Option<JoinHandle<Result<(), UringError>>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl HttpServer {
    /// Binds `address` once per worker (port 0 picks one port for all) and starts the workers.
    pub fn bind(
        address: SocketAddr,
        config: HttpServerConfig,
        catalog: Catalog,
        route: Option<Arc<dyn Route + Send + Sync>>,
    ) -> Result<Self, HttpServerError> {
        if config.workers == 0 {
            return Err(HttpServerError::Config("workers must be at least 1"));
        }
        if config.max_connections_per_worker == 0 {
            return Err(HttpServerError::Config(
                "max_connections_per_worker must be at least 1",
            ));
        }
        let mut local_addr = address;
        let mut rings = Vec::with_capacity(config.workers);
        for worker in 0..config.workers {
            let listener = reuseport_listener(local_addr, config.backlog).map_err(|source| {
                HttpServerError::Bind {
                    address: local_addr,
                    source,
                }
            })?;
            // The first bind resolves port 0; the others join that port.
            local_addr = listener
                .local_addr()
                .map_err(|source| HttpServerError::Bind { address, source })?;
            let ring = TcpWorker::new(listener, config.tcp)
                .map_err(|source| HttpServerError::Worker { worker, source })?;
            rings.push(ring);
        }
        let mut workers = Vec::with_capacity(config.workers);
        for (index, ring) in rings.into_iter().enumerate() {
            let (stop, stop_rx) = mpsc::channel();
            let stats = Arc::new(Mutex::new(HttpStats::default()));
            let mut state = WorkerState::new(
                catalog.clone(),
                route.clone(),
                config.clone(),
                stop_rx,
                stats.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("http-{index}"))
                .spawn(move || state.run(ring))
                .map_err(|source| HttpServerError::Spawn {
                    worker: index,
                    source,
                })?;
            workers.push(WorkerHandle {
                stop,
                stats,
                thread: Some(thread),
            });
        }
        Ok(Self {
            local_addr,
            workers,
        })
    }

    /// The bound address (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters summed over workers, at most [`PUBLISH_INTERVAL`] old.
    pub fn stats(&self) -> HttpStats {
        let mut sum = HttpStats::default();
        for worker in &self.workers {
            let stats = worker.stats.lock().unwrap_or_else(|e| e.into_inner());
            sum.add(&stats);
        }
        sum
    }

    /// Graceful stop: listeners close at once (new connections are refused), idle connections
    /// are closed, responses being written may finish until `deadline`; then everything left is
    /// closed. Returns the final counters once every worker has exited.
    pub fn stop(mut self, deadline: Instant) -> HttpStats {
        self.shutdown(deadline);
        self.stats()
    }

    fn shutdown(&mut self, deadline: Instant) {
        for worker in &self.workers {
            // A worker that already exited (ring error) has dropped its receiver; nothing to stop.
            let _ = worker.stop.send(deadline);
        }
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let Some(thread) = worker.thread.take() else {
                continue;
            };
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(worker = index, error = %e, "HTTP worker failed"),
                Err(_) => tracing::error!(worker = index, "HTTP worker panicked"),
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown(Instant::now());
    }
}

/// One connection's core and what the engine tracks beside it.
struct Session {
    http: HttpConnection<Catalog>,
    /// Received bytes the core did not take yet (back-pressure), offered again after each
    /// transmit completes.
    unconsumed: Vec<u8>,
    /// Transmits handed to the ring and not yet reported sent.
    sending: usize,
    /// When each of those was queued, oldest first (a connection's sends complete in order).
    queued_at: std::collections::VecDeque<Instant>,
    /// The deadline this session has in the timer heap, if any.
    timer: Option<Instant>,
    /// Close requested; events until `Closed` are ignored.
    closing: bool,
    /// The client, for the log.
    peer: SocketAddr,
}

enum Action {
    Send(ConnId, Vec<u8>, stampede_proto::http::server::Body),
    Close(ConnId),
}

/// A worker thread's state: the sessions of its ring and its counters.
struct WorkerState {
    catalog: Catalog,
    route: Option<Arc<dyn Route + Send + Sync>>,
    config: HttpServerConfig,
    sessions: HashMap<ConnId, Session>,
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Sends and closes decided while handling an event, applied through the outbox (inside the
    /// ring's callback) or the worker (outside it).
    actions: Vec<Action>,
    stop: Receiver<Instant>,
    stop_deadline: Option<Instant>,
    stats: HttpStats,
    shared: Arc<Mutex<HttpStats>>,
    published: Instant,
}

impl WorkerState {
    fn new(
        catalog: Catalog,
        route: Option<Arc<dyn Route + Send + Sync>>,
        config: HttpServerConfig,
        stop: Receiver<Instant>,
        shared: Arc<Mutex<HttpStats>>,
    ) -> Self {
        Self {
            catalog,
            route,
            config,
            sessions: HashMap::new(),
            timers: BinaryHeap::new(),
            actions: Vec::new(),
            stop,
            stop_deadline: None,
            stats: HttpStats::default(),
            shared,
            published: Instant::now(),
        }
    }

    fn run(&mut self, mut ring: TcpWorker) -> Result<(), UringError> {
        let result = self.serve(&mut ring);
        // Drop the ring (cancelling and draining whatever is left) before the final publish.
        copy_ring_stats(&mut self.stats, ring.stats());
        drop(ring);
        self.publish();
        result
    }

    fn serve(&mut self, ring: &mut TcpWorker) -> Result<(), UringError> {
        loop {
            let now = Instant::now();
            if self.stop_deadline.is_none() {
                match self.stop.try_recv() {
                    Ok(deadline) => self.begin_stop(ring, deadline)?,
                    // The handle is gone without a stop: stop now.
                    Err(mpsc::TryRecvError::Disconnected) => self.begin_stop(ring, now)?,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
            }
            if let Some(deadline) = self.stop_deadline {
                if now >= deadline {
                    self.abort_all();
                    self.apply(ring)?;
                }
                if ring.connections() == 0 && !ring.is_listening() {
                    return Ok(());
                }
            }
            // Anchored at the last publish rather than `now`, so the deadline stays the same
            // across busy iterations and the ring's timeout SQE is not replaced on every call.
            let mut wake = self.published + PUBLISH_INTERVAL;
            if let Some(Reverse((t, _))) = self.timers.peek() {
                wake = wake.min(*t);
            }
            // A stop deadline already passed has been acted on (abort_all); waking for it again
            // would spin until the cancelled connections report closed.
            if let Some(d) = self.stop_deadline.filter(|d| *d > now) {
                wake = wake.min(d);
            }
            let report = ring.run_once(Some(wake), |event, outbox| {
                self.handle_event(event, outbox);
            })?;
            if report.timer_fired || self.timers.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                self.fire_timers(Instant::now());
                self.apply(ring)?;
            }
            if self.published.elapsed() >= PUBLISH_INTERVAL {
                copy_ring_stats(&mut self.stats, ring.stats());
                self.publish();
            }
        }
    }

    fn publish(&mut self) {
        self.published = Instant::now();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.clone_from(&self.stats);
    }

    fn begin_stop(&mut self, ring: &mut TcpWorker, deadline: Instant) -> Result<(), UringError> {
        self.stop_deadline = Some(deadline);
        ring.stop_accepting()?;
        let idle: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.sending == 0 && !s.closing)
            .map(|(id, _)| *id)
            .collect();
        for conn in idle {
            self.close(conn);
        }
        self.apply(ring)
    }

    /// The stop deadline passed: cut every connection still writing.
    fn abort_all(&mut self) {
        let open: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.closing)
            .map(|(id, _)| *id)
            .collect();
        for conn in open {
            if self.sessions.get(&conn).is_some_and(|s| s.sending > 0) {
                self.stats.aborted_at_stop += 1;
            }
            self.close(conn);
        }
    }

    fn apply(&mut self, ring: &mut TcpWorker) -> Result<(), UringError> {
        for action in self.actions.drain(..) {
            match action {
                Action::Send(conn, head, body) => {
                    match sendfile_range(&self.config.tcp, body) {
                        Ok((file, offset, len)) => ring.send_file(conn, head, file, offset, len)?,
                        Err(bytes) => ring.send(conn, head, bytes)?,
                    };
                }
                Action::Close(conn) => {
                    ring.close(conn)?;
                }
            }
        }
        Ok(())
    }

    fn apply_to_outbox(&mut self, outbox: &mut TcpOutbox) {
        for action in self.actions.drain(..) {
            match action {
                Action::Send(conn, head, body) => match sendfile_range(&self.config.tcp, body) {
                    Ok((file, offset, len)) => outbox.send_file(conn, head, file, offset, len),
                    Err(bytes) => outbox.send(conn, head, bytes),
                },
                Action::Close(conn) => outbox.close(conn),
            }
        }
    }

    fn handle_event(&mut self, event: TcpEvent<'_>, outbox: &mut TcpOutbox) {
        let now = Instant::now();
        match event {
            TcpEvent::Accepted { conn, peer } => {
                if self.sessions.len() >= self.config.max_connections_per_worker
                    || self.stop_deadline.is_some()
                {
                    // Closing at once is the cheapest refusal; a booting client retries, and
                    // the counter tells the operator to add workers or raise the limit.
                    self.stats.refused += 1;
                    outbox.close(conn);
                    return;
                }
                self.stats.accepted += 1;
                let mut http = HttpConnection::new(now, self.catalog.clone(), self.config.http);
                if let Some(route) = &self.route {
                    http = http.with_route(SharedRoute(route.clone(), peer));
                }
                self.sessions.insert(
                    conn,
                    Session {
                        http,
                        unconsumed: Vec::new(),
                        sending: 0,
                        queued_at: std::collections::VecDeque::new(),
                        timer: None,
                        closing: false,
                        peer,
                    },
                );
                self.pump(conn, now);
            }
            TcpEvent::Data { conn, data } => {
                let Some(session) = self.sessions.get_mut(&conn) else {
                    return;
                };
                if session.closing {
                    return;
                }
                if session.unconsumed.is_empty() {
                    let taken = session.http.handle_input(now, data);
                    session.unconsumed.extend_from_slice(&data[taken..]);
                } else {
                    session.unconsumed.extend_from_slice(data);
                }
                if session.unconsumed.len() > self.config.max_unconsumed {
                    *self
                        .stats
                        .rejections
                        .entry("pipeline_overflow")
                        .or_default() += 1;
                    self.close(conn);
                } else {
                    self.pump(conn, now);
                }
            }
            TcpEvent::Sent { conn } => {
                let Some(session) = self.sessions.get_mut(&conn) else {
                    return;
                };
                session.sending -= 1;
                if let Some(queued) = session.queued_at.pop_front() {
                    self.stats
                        .observe_response(now.saturating_duration_since(queued));
                }
                if session.closing {
                    return;
                }
                session.http.transmit_done(now);
                if !session.unconsumed.is_empty() {
                    let taken = session.http.handle_input(now, &session.unconsumed);
                    session.unconsumed.drain(..taken);
                }
                self.pump(conn, now);
            }
            TcpEvent::Closed { conn, reason } => {
                // Refused connections have no session and are not counted as closed.
                if self.sessions.remove(&conn).is_some() {
                    self.stats.closed += 1;
                    match reason {
                        CloseReason::Local => {}
                        CloseReason::PeerClosed => self.stats.closed_by_peer += 1,
                        CloseReason::Error(_) => self.stats.closed_on_error += 1,
                    }
                }
            }
        }
        self.apply_to_outbox(outbox);
    }

    /// Writes every response the core has ready, closes if it is done, re-arms its deadline.
    fn pump(&mut self, conn: ConnId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.closing {
            return;
        }
        loop {
            let mut head = Vec::new();
            let Some(transmit) = session.http.poll_output(now, &mut head) else {
                break;
            };
            report_response(
                &mut self.stats,
                &self.config.events,
                session.peer,
                &transmit,
            );
            session.sending += 1;
            session.queued_at.push_back(now);
            self.actions.push(Action::Send(conn, head, transmit.body));
        }
        let done = session.http.is_closed() || self.stop_deadline.is_some();
        if done && session.sending == 0 {
            self.close(conn);
            return;
        }
        let deadline = session.http.poll_timeout();
        if deadline != session.timer {
            session.timer = deadline;
            if let Some(t) = deadline {
                self.timers.push(Reverse((t, conn)));
            }
            self.compact_timers();
        }
    }

    /// Entries are invalidated lazily (a moved deadline leaves its old entry behind), so a
    /// busy keep-alive connection leaves one stale entry per response until it expires. Past
    /// a few per session the heap is rebuilt from the sessions' current deadlines.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.sessions.len() + 64 {
            return;
        }
        self.timers = self
            .sessions
            .iter()
            .filter_map(|(conn, s)| s.timer.map(|t| Reverse((t, *conn))))
            .collect();
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(&conn)
            && !session.closing
        {
            session.closing = true;
            self.actions.push(Action::Close(conn));
        }
    }

    /// Runs every core whose deadline passed. Heap entries whose session moved its deadline
    /// (or is gone) are stale and skipped.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, conn))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if session.timer != Some(t) || session.closing {
                continue;
            }
            session.timer = None;
            session.http.handle_timeout(now);
            if session.http.is_closed() && session.sending == 0 {
                self.stats.idle_timeouts += 1;
            }
            self.pump(conn, now);
        }
    }
}

/// Counts one response and files it: one log line per request (with the DHCP and TFTP lines it
/// is the machine's boot timeline, `stampede::boot`) and one boot event. Shared by the plain
/// and the TLS server, so a machine's timeline reads the same over either.
pub(crate) fn report_response(
    stats: &mut HttpStats,
    events: &stampede_proto::events::Events,
    peer: SocketAddr,
    transmit: &stampede_proto::http::server::Transmit,
) {
    let class = usize::from(transmit.status.0 / 100).min(5);
    stats.responses_by_class[class] += 1;
    if let Some(rejection) = transmit.rejection {
        *stats.rejections.entry(rejection.as_str()).or_default() += 1;
    }
    // The client chose the target: escaped and bounded for the log and the event.
    let path = stampede_proto::text::peer_text(transmit.target.as_bytes());
    tracing::info!(
        target: "stampede::boot",
        client = %peer,
        path = %path,
        status = transmit.status.0,
        bytes = transmit.body.len,
        "http response"
    );
    events.record(stampede_proto::events::BootEvent {
        at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        mac: None,
        client: peer,
        kind: match crate::boot::node_report(&transmit.target) {
            // A diskless node's agent reporting a step: filed as that step.
            Some((step, detail)) if transmit.status.0 == 200 => {
                stampede_proto::events::BootEventKind::NodeStep { step, detail }
            }
            _ => stampede_proto::events::BootEventKind::HttpResponse {
                path,
                status: transmit.status.0,
                bytes: transmit.body.len,
            },
        },
    });
}

/// The sealed file and range to `sendfile` a body from, if it has a file and is long enough
/// ([`TcpWorkerConfig::sendfile_min_len`]); otherwise the bytes to write.
fn sendfile_range(
    tcp: &TcpWorkerConfig,
    body: stampede_proto::http::server::Body,
) -> Result<(SealedFile, u64, u64), bytes::Bytes> {
    let long_enough = tcp
        .sendfile_min_len
        .is_some_and(|min| body.len >= min as u64);
    match body.file {
        Some(ref file) if long_enough => Ok((file.clone(), body.offset, body.len)),
        _ => Err(body.bytes()),
    }
}

fn copy_ring_stats(stats: &mut HttpStats, ring: TcpWorkerStats) {
    stats.bytes_sent = ring.bytes_sent;
    stats.sendfile_bytes = ring.sendfile_bytes;
    stats.sendfile_waits = ring.sendfile_waits;
    stats.eagain_retries = ring.eagain_retries;
    stats.zero_copy_sends = ring.zero_copy_sends;
    stats.zero_copy_copied = ring.zero_copy_copied;
}
