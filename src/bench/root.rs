//! `stampede bench root`: N simulated diskless machines fetch their root filesystem at once, as
//! the node agent does (`node/src/agent.rs`): the signed manifest, whose signature is checked
//! with the appliance's key before a field of it is read, then every chunk over K kept-alive
//! connections (the agent's chunk workers), each chunk's length and SHA-256 checked as its bytes
//! arrive. Time to root runs from a machine's first request to its last verified chunk.
//! A request that fails or stalls (10 s without a byte) is retried as the agent retries it
//! ([`NodeRetry`]): a run chunk by chunk, a chunk after a delay, and past a chunk's attempts
//! (or for the manifest) the whole root step after a backoff; only the deadline fails a
//! machine, and every retry is counted in the report.
//!
//! `--whole-file` plays the other way to ship a root (Warewulf's): one GET of the whole image
//! per machine, its SHA-256 checked. Either way the server is any HTTP server (Stampede, or
//! nginx serving the same image), the load is bounded by a machine count and a deadline, and
//! the bench exits 0 only when every machine verified its root.
//!
//! Machines are state machines on io_uring rings ([`ClientRing`]) driven by the same sans-IO
//! HTTP client as the storm's, machine i on thread i mod T; each has an address of its own in
//! the bench's namespace ([`LocalNet`]: one `local` route for the link's subnet, so a thousand
//! addresses cost no thousand address changes), as a real rack's machines would.
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use stampede_dataplane::sys::uring_client::{ClientRing, ClientRingConfig, Event, SockId, Sockets};
use stampede_proto::http::{ByteRange, ClientError, FetchRequest, FetchResult, HttpClient};
use stampede_rootfs::manifest::{
    Chunk, MAX_MANIFEST_BYTES, ManifestSigningKey, ManifestVerifyingKey, SignedManifest,
    verifying_key_from_hex,
};

use super::{
    net::LocalNet,
    report::{self, Percentiles, Usage},
    storm::{split_http_url, tcp_socket},
};

mod drive;
mod retry;
mod setup;
mod summary;
mod usage;

use drive::{drive, show_progress};
use retry::{NODE_RUN_CHUNKS, NODE_RUN_WORKERS, NodeRetry};
use setup::{machine_addresses, mask, parse_sources, source};
pub use summary::RootSummary;
use usage::{host_cpu, tree_usage};

#[derive(Debug, clap::Args)]
pub struct RootArgs {
    /// Interface the simulated machines are on (run the bench in the namespace that has it).
    #[arg(long)]
    pub iface: String,
    /// The machines' addresses: machine i has FIRST + i. PREFIX is the link's subnet, which
    /// must hold the server's address (machines and server share one link, as in a rack).
    #[arg(long, value_name = "FIRST/PREFIX")]
    pub sources: String,
    /// The appliance, `http://IP:PORT`: fetch the signed manifest and its chunks from it.
    #[arg(long, requires = "manifest")]
    pub server: Option<String>,
    /// HTTP path of the signed manifest (`/roots/<id>/manifest`).
    #[arg(long, requires = "server")]
    pub manifest: Option<String>,
    /// HTTP path chunks are served under, by SHA-256 (`<path>/<hex>`).
    #[arg(long, default_value = "/chunks")]
    pub chunks_path: String,
    /// The appliance's public key (64 hex digits) every manifest must be signed with: what a
    /// node has in its initramfs.
    #[arg(long, conflicts_with = "key_file")]
    pub key: Option<String>,
    /// The appliance's key file (`manifest.key` beside its state: the private seed in hex); the
    /// bench trusts its public half, as the appliance's node initramfs does.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The other way: every machine downloads this one file (`http://IP:PORT/PATH`, the root
    /// image) and checks its SHA-256.
    #[arg(long, conflicts_with_all = ["server", "manifest", "key", "key_file"], requires = "sha256")]
    pub whole_file: Option<String>,
    /// SHA-256 (hex) the `--whole-file` download must have.
    #[arg(long, requires = "whole_file")]
    pub sha256: Option<String>,
    /// Machines to simulate.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Requests in flight per machine, each on a kept-alive connection of its own (the node
    /// agent runs 2). `--whole-file` always uses one connection.
    #[arg(long, default_value_t = NODE_RUN_WORKERS)]
    pub parallel: usize,
    /// Chunks per request: 1 fetches each chunk from `<chunks-path>/<sha256>`; more fetches
    /// runs of that many consecutive chunks from the whole image beside the manifest
    /// (`/roots/<id>/image`) with one `Range` request each, every chunk checked as its last
    /// byte arrives (the node agent's way, the default: 16 on 2 connections).
    #[arg(long, default_value_t = NODE_RUN_CHUNKS)]
    pub run: usize,
    /// Threads driving the machines, each with its own io_uring. Checking SHA-256 at link
    /// speed takes about a core per 1.5 to 2 GB/s (SHA-NI).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Seconds after which every machine without a verified root counts as failed.
    #[arg(long, default_value_t = 300.0)]
    pub deadline: f64,
    /// The server's process (repeat for several): CPU and memory over the run are reported,
    /// summed over each one and its descendants (nginx's workers).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Name of this run in the report (e.g. the server under test).
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Write the report (summary and every machine's run) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw roots verified over time as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// What every machine fetches, and how it checks it.
#[derive(Debug)]
enum Source {
    /// The signed manifest, then its chunks.
    Chunks {
        manifest: String,
        chunks_path: String,
        key: ManifestVerifyingKey,
    },
    /// One file, its SHA-256 known.
    WholeFile { target: String, sha256: [u8; 32] },
}

/// Everything the machines share.
#[derive(Debug)]
struct Ctx {
    epoch: Instant,
    deadline: Instant,
    server: SocketAddrV4,
    authority: String,
    source: Source,
    parallel: usize,
    /// Chunks per request (`--run`).
    run: usize,
    retry: NodeRetry,
    progress: Progress,
}

#[derive(Debug, Default)]
struct Progress {
    verified: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    /// Requests sent again on a new connection because their kept-alive one closed before the
    /// response began (RFC 9112 §9.3.1), as the node agent and iPXE do.
    http_retries: AtomicU64,
    /// Runs whose request failed or stalled, their chunks then fetched one by one.
    runs_failed: AtomicU64,
    /// Chunks fetched again on their own after a failed or stalled fetch of them.
    chunk_retries: AtomicU64,
    /// Root steps started again (manifest and every chunk) after a failure, after a backoff.
    root_restarts: AtomicU64,
}

/// Where a machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootPhase {
    /// Not started yet.
    Off,
    /// Fetching and verifying the signed manifest.
    Manifest,
    /// Fetching and verifying chunks.
    Chunks,
    /// Fetching the whole image (`--whole-file`).
    WholeFile,
    Finished,
}

impl RootPhase {
    fn name(self) -> &'static str {
        match self {
            RootPhase::Off => "off",
            RootPhase::Manifest => "manifest",
            RootPhase::Chunks => "chunks",
            RootPhase::WholeFile => "whole_file",
            RootPhase::Finished => "finished",
        }
    }
}

/// Where and why a machine has no root.
#[derive(Debug, Clone, Serialize)]
pub struct RootFailure {
    pub phase: RootPhase,
    pub reason: String,
}

/// One simulated machine's run.
#[derive(Debug, Clone, Serialize)]
pub struct RootRecord {
    pub index: usize,
    pub source: Ipv4Addr,
    /// First request, since the run started.
    pub started_ms: f64,
    /// First request to the verified manifest (chunks mode).
    pub manifest_ms: Option<f64>,
    /// First request to the last verified chunk (or the verified file), if it got there.
    pub root_ms: Option<f64>,
    /// Chunks verified.
    pub chunks: usize,
    /// Body bytes received (manifest included).
    pub bytes: u64,
    pub requests: u64,
    /// Runs that failed and were fetched chunk by chunk, chunks fetched again on their own,
    /// root steps started again: the node agent's retries (see [`NodeRetry`]).
    pub runs_failed: u32,
    pub chunk_retries: u32,
    pub root_restarts: u32,
    /// Why the last retried request failed, if any did.
    pub last_retry_reason: Option<String>,
    pub failure: Option<RootFailure>,
}

/// One kept-alive connection of a machine.
#[derive(Debug)]
struct Conn {
    socket: SockId,
    client: HttpClient,
    connected: bool,
    /// The chunk in flight on it (the first of its run, see [`RootSim::run_len`]).
    chunk: Option<usize>,
    /// The request is for that one chunk by its digest (a run's chunk fetched again, or
    /// `--run 1`), its `attempt`th fetch.
    single: bool,
    attempt: u32,
}

/// A connection slot: one of the agent's fetch workers.
#[derive(Debug, Default)]
struct Slot {
    conn: Option<Conn>,
    /// Chunks of a failed run, still to fetch one by one, with the fetches already spent on
    /// each: the agent's worker fetches them before it claims another run.
    pending: std::collections::VecDeque<(usize, u32)>,
    /// When the slot's next fetch goes out (a chunk retry waiting its delay).
    retry_at: Option<Instant>,
}

type Step = Result<(), String>;

/// What a machine acts through while it handles an event.
struct Env<'a> {
    ctx: &'a Ctx,
    io: &'a mut Sockets,
    /// Owner of each socket slot: (machine's position in its thread's list, connection slot).
    owners: &'a mut Vec<(usize, usize)>,
}

/// One simulated diskless machine.
#[derive(Debug)]
struct RootSim {
    pos: usize,
    ip: Ipv4Addr,
    phase: RootPhase,
    slots: Vec<Slot>,
    /// When the root step starts again after a failure (see [`NodeRetry`]).
    restart_at: Option<Instant>,
    /// Root steps failed so far, for the backoff; and the jitter's state.
    step_failures: u32,
    rng: u64,
    /// From the verified manifest.
    chunks: Vec<Chunk>,
    next_chunk: usize,
    started: Instant,
    wake: Option<Instant>,
    record: RootRecord,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl RootSim {
    fn new(ctx: &Ctx, index: usize, pos: usize, ip: Ipv4Addr) -> Self {
        let slots = match ctx.source {
            Source::Chunks { .. } => ctx.parallel,
            Source::WholeFile { .. } => 1,
        };
        Self {
            pos,
            ip,
            phase: RootPhase::Off,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            restart_at: None,
            step_failures: 0,
            rng: (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            chunks: Vec::new(),
            next_chunk: 0,
            started: ctx.epoch,
            wake: Some(ctx.epoch),
            record: RootRecord {
                index,
                source: ip,
                started_ms: 0.0,
                manifest_ms: None,
                root_ms: None,
                chunks: 0,
                bytes: 0,
                requests: 0,
                runs_failed: 0,
                chunk_retries: 0,
                root_restarts: 0,
                last_retry_reason: None,
                failure: None,
            },
        }
    }

    fn is_finished(&self) -> bool {
        self.phase == RootPhase::Finished
    }

    /// Runs `step`, then moves the connections on; a failure ends the machine's run there.
    fn guard(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        step: impl FnOnce(&mut Self, &mut Env<'_>) -> Step,
    ) {
        if self.is_finished() {
            return;
        }
        let result = step(self, env).and_then(|()| self.pump(env, now));
        if let Err(reason) = result {
            self.finish(env, now, Some(reason));
        }
    }

    fn on_timer(&mut self, env: &mut Env<'_>, now: Instant) {
        self.wake = None;
        self.guard(env, now, |sim, env| {
            if sim.phase == RootPhase::Off {
                return sim.power_on(env, now);
            }
            if sim.restart_at.is_some_and(|t| t <= now) {
                sim.restart_at = None;
                return sim.start_step(env, now);
            }
            for slot in 0..sim.slots.len() {
                if sim.slots[slot].retry_at.is_some_and(|t| t <= now) {
                    sim.slots[slot].retry_at = None;
                    sim.next_chunk(env, now, slot)?;
                }
            }
            for slot in &mut sim.slots {
                if let Some(conn) = &mut slot.conn {
                    conn.client.handle_timeout(now);
                }
            }
            Ok(())
        });
    }

    fn on_event(&mut self, env: &mut Env<'_>, now: Instant, slot: usize, event: Event<'_>) {
        self.guard(env, now, |sim, env| {
            match sim.take_event(env, now, slot, event) {
                Ok(()) => Ok(()),
                Err(reason) => sim.fetch_failed(env, now, slot, reason),
            }
        });
    }

    /// Hands a socket's event to the slot's HTTP client; an error is the fetch's failure.
    fn take_event(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        slot: usize,
        event: Event<'_>,
    ) -> Step {
        {
            let Some(conn) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut()) else {
                return Ok(());
            };
            if event.socket() != conn.socket {
                // A late event of a connection this slot no longer uses.
                return Ok(());
            }
            let server = env.ctx.server;
            match event {
                Event::Connected { result, .. } => {
                    result.map_err(|e| format!("connecting to {server}: {e}"))?;
                    conn.connected = true;
                }
                Event::Stream { data, .. } => {
                    env.ctx
                        .progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    // A protocol error is also queued as the fetch's result.
                    let _ = conn.client.handle_input(now, data);
                }
                Event::Closed { error, .. } => match error {
                    None => conn.client.handle_eof(now),
                    // A reset of a kept-alive connection before the response began is a close
                    // like any other (the retry follows in `pump`).
                    Some(_) if conn.client.unanswered_on_reused() => conn.client.handle_eof(now),
                    Some(e) => return Err(format!("reading from {server}: {e}")),
                },
                Event::SendFailed { error, .. } => {
                    return Err(format!("sending to {server}: {error}"));
                }
                Event::Datagram { .. } => {}
            }
            Ok(())
        }
    }

    fn power_on(&mut self, env: &mut Env<'_>, now: Instant) -> Step {
        self.started = now;
        self.record.started_ms = ms(now - env.ctx.epoch);
        self.start_step(env, now)
    }

    /// The root step from its start: the manifest (or the whole file), then every chunk.
    fn start_step(&mut self, env: &mut Env<'_>, now: Instant) -> Step {
        self.phase = match env.ctx.source {
            Source::Chunks { .. } => RootPhase::Manifest,
            Source::WholeFile { .. } => RootPhase::WholeFile,
        };
        self.fetch(env, now, 0)
    }

    /// A fetch on `slot` failed or stalled for `reason`: what the node agent does next. A
    /// run's chunks are fetched one by one; a chunk is fetched again after a delay, up to its
    /// attempts; past those, or when the manifest (or the whole file) failed, the root step
    /// starts again after a backoff, from nothing. Only the deadline ends a machine's tries.
    fn fetch_failed(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        slot: usize,
        reason: String,
    ) -> Step {
        let retry = env.ctx.retry;
        let what = self.what(slot);
        self.record.last_retry_reason = Some(format!("{what}: {reason}"));
        let p = &env.ctx.progress;
        let (chunk, single, attempt) = match self.slots[slot].conn.as_ref() {
            Some(c) => (c.chunk, c.single || env.ctx.run <= 1, c.attempt),
            None => (None, false, 0),
        };
        // A failed connection is not used again (the agent's connection drops it too).
        self.close(env, slot);
        match (self.phase, chunk) {
            (RootPhase::Chunks, Some(first)) if !single => {
                p.runs_failed.fetch_add(1, Ordering::Relaxed);
                self.record.runs_failed += 1;
                let end = first + self.run_len(env.ctx, first);
                self.slots[slot]
                    .pending
                    .extend((first..end).map(|i| (i, 0)));
                self.next_chunk(env, now, slot)
            }
            (RootPhase::Chunks, Some(i)) if attempt < retry.chunk_attempts => {
                p.chunk_retries.fetch_add(1, Ordering::Relaxed);
                self.record.chunk_retries += 1;
                // Fetched again (its `attempt + 1`th time) by this slot when the delay is over.
                self.slots[slot].pending.push_front((i, attempt));
                self.slots[slot].retry_at = Some(now + retry.chunk_delay(attempt));
                Ok(())
            }
            _ => {
                // The manifest, the whole file, or a chunk out of attempts: the agent's root
                // step fails, and starts again after its backoff.
                p.root_restarts.fetch_add(1, Ordering::Relaxed);
                self.record.root_restarts += 1;
                self.step_failures += 1;
                for s in 0..self.slots.len() {
                    self.close(env, s);
                    self.slots[s] = Slot::default();
                }
                self.chunks.clear();
                self.next_chunk = 0;
                self.record.chunks = 0;
                let wait = retry.step_delay(self.step_failures, &mut self.rng);
                self.restart_at = Some(now + wait);
                Ok(())
            }
        }
    }

    /// The request slot `slot` makes next, by phase.
    fn request(&self, ctx: &Ctx, slot: usize) -> Result<FetchRequest, String> {
        match (&ctx.source, self.phase) {
            (Source::Chunks { manifest, .. }, RootPhase::Manifest) => {
                Ok(FetchRequest::get(manifest).keeping_body(MAX_MANIFEST_BYTES))
            }
            (Source::Chunks { manifest, .. }, RootPhase::Chunks)
                if ctx.run > 1 && !self.slots[slot].conn.as_ref().is_some_and(|c| c.single) =>
            {
                let i = self.slots[slot]
                    .conn
                    .as_ref()
                    .and_then(|c| c.chunk)
                    .ok_or("no chunk assigned")?;
                let run = &self.chunks[i..i + self.run_len(ctx, i)];
                let first: u64 = self.chunks[..i].iter().map(|c| c.size).sum();
                let len: u64 = run.iter().map(|c| c.size).sum();
                let image = format!("{}image", manifest.trim_end_matches("manifest"));
                Ok(FetchRequest::get(&image)
                    .with_range(ByteRange::FromTo(first, first + len - 1))
                    .expecting_pieces(run.iter().map(|c| (c.size, c.sha256.0)).collect()))
            }
            (Source::Chunks { chunks_path, .. }, RootPhase::Chunks) => {
                let i = self.slots[slot]
                    .conn
                    .as_ref()
                    .and_then(|c| c.chunk)
                    .ok_or("no chunk assigned")?;
                let chunk = self.chunks[i];
                // The client hashes the body as it arrives: the same check as `Chunk::check`
                // (length, then SHA-256) without holding a MiB per request.
                let mut req = FetchRequest::get(&format!(
                    "{}/{}",
                    chunks_path.trim_end_matches('/'),
                    chunk.sha256.to_hex()
                ));
                req.expect_len = Some(chunk.size);
                req.expect_sha256 = Some(chunk.sha256.0);
                Ok(req)
            }
            (Source::WholeFile { target, sha256 }, RootPhase::WholeFile) => {
                let mut req = FetchRequest::get(target);
                req.expect_sha256 = Some(*sha256);
                Ok(req)
            }
            (_, phase) => Err(format!("nothing to fetch in phase {}", phase.name())),
        }
    }

    /// Opens a new connection in slot `slot` (closing the one there), for `chunk`.
    fn connect(
        &mut self,
        env: &mut Env<'_>,
        slot: usize,
        (chunk, single, attempt): (Option<usize>, bool, u32),
    ) -> Step {
        self.close(env, slot);
        let server = env.ctx.server;
        let socket = tcp_socket(self.ip).map_err(|e| format!("binding TCP to {}: {e}", self.ip))?;
        let socket = env
            .io
            .connect(socket, server.into())
            .map_err(|e| format!("connecting to {server}: {e}"))?;
        let i = socket.index();
        if env.owners.len() <= i {
            env.owners.resize(i + 1, (usize::MAX, 0));
        }
        env.owners[i] = (self.pos, slot);
        self.slots[slot].conn = Some(Conn {
            socket,
            client: HttpClient::new(&env.ctx.authority).with_timeout(env.ctx.retry.fetch_timeout),
            connected: false,
            chunk,
            single,
            attempt,
        });
        Ok(())
    }

    /// Puts chunk (or run) `first` on slot `slot`, on its connection or a new one.
    fn assign(
        &mut self,
        env: &mut Env<'_>,
        slot: usize,
        first: usize,
        single: bool,
        attempt: u32,
    ) -> Step {
        match &mut self.slots[slot].conn {
            Some(conn) => {
                conn.chunk = Some(first);
                conn.single = single;
                conn.attempt = attempt;
                Ok(())
            }
            None => self.connect(env, slot, (Some(first), single, attempt)),
        }
    }

    /// Sends slot `slot`'s next request, on its kept-alive connection or a new one.
    fn fetch(&mut self, env: &mut Env<'_>, now: Instant, slot: usize) -> Step {
        let reusable = self.slots[slot]
            .conn
            .as_ref()
            .is_some_and(|c| c.client.is_reusable());
        if !reusable {
            let work = self.slots[slot]
                .conn
                .as_ref()
                .map_or((None, false, 1), |c| (c.chunk, c.single, c.attempt));
            self.connect(env, slot, work)?;
        }
        let req = self.request(env.ctx, slot)?;
        let conn = self.slots[slot].conn.as_mut().expect("connected above");
        conn.client.fetch(now, req);
        self.record.requests += 1;
        Ok(())
    }

    fn close(&mut self, env: &mut Env<'_>, slot: usize) {
        if let Some(conn) = self.slots[slot].conn.take() {
            let _ = env.io.close(conn.socket);
        }
    }

    /// How many chunks the request for the run starting at chunk `first` fetches.
    fn run_len(&self, ctx: &Ctx, first: usize) -> usize {
        ctx.run.max(1).min(self.chunks.len() - first)
    }

    /// Gives slot `slot` the next chunk (or run) nobody has fetched, or closes it when none
    /// is left.
    /// A failed run's chunks on this slot come first, one by one, as the agent's worker
    /// fetches them before it claims another run.
    fn next_chunk(&mut self, env: &mut Env<'_>, now: Instant, slot: usize) -> Step {
        if let Some((i, tried)) = self.slots[slot].pending.pop_front() {
            self.assign(env, slot, i, true, tried + 1)?;
            return self.fetch(env, now, slot);
        }
        if self.next_chunk == self.chunks.len() {
            self.close(env, slot);
            return Ok(());
        }
        let i = self.next_chunk;
        self.next_chunk += self.run_len(env.ctx, i);
        self.assign(env, slot, i, env.ctx.run <= 1, 1)?;
        self.fetch(env, now, slot)
    }

    /// Sends what the connections have to send, takes their results, and sets the next wake-up.
    fn pump(&mut self, env: &mut Env<'_>, now: Instant) -> Step {
        loop {
            let mut progressed = false;
            for slot in 0..self.slots.len() {
                let Some(conn) = self.slots[slot].conn.as_mut() else {
                    continue;
                };
                if conn.connected {
                    let mut out = Vec::new();
                    conn.client.poll_transmit(&mut out);
                    if !out.is_empty() {
                        env.io
                            .send(conn.socket, out.into())
                            .map_err(|e| format!("sending to {}: {e}", env.ctx.server))?;
                    }
                }
                let Some(result) = conn.client.poll_result() else {
                    continue;
                };
                progressed = true;
                self.on_result(env, now, slot, result)?;
                if self.is_finished() {
                    return Ok(());
                }
            }
            if !progressed {
                break;
            }
        }
        self.wake = self
            .slots
            .iter()
            .flat_map(|s| {
                [
                    s.conn.as_ref().and_then(|c| c.client.poll_timeout()),
                    s.retry_at,
                ]
            })
            .chain([self.restart_at])
            .flatten()
            .min();
        Ok(())
    }

    /// What slot `slot` was fetching, for messages.
    fn what(&self, slot: usize) -> String {
        match self.phase {
            RootPhase::Chunks => match self.slots[slot].conn.as_ref() {
                Some(Conn {
                    chunk: Some(i),
                    single: false,
                    ..
                }) => format!("run from chunk {i}"),
                Some(Conn { chunk: Some(i), .. }) => {
                    format!("chunk {i} ({})", self.chunks[*i].sha256)
                }
                _ => "a chunk".to_owned(),
            },
            phase => phase.name().to_owned(),
        }
    }

    fn on_result(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        slot: usize,
        result: Result<FetchResult, ClientError>,
    ) -> Step {
        let result = match result {
            Err(ClientError::ClosedUnanswered) => {
                // The server closed a kept-alive connection as idle just as the request went
                // out: once per request (a new connection never ends this way).
                env.ctx
                    .progress
                    .http_retries
                    .fetch_add(1, Ordering::Relaxed);
                return self.fetch(env, now, slot);
            }
            Err(e) => return self.fetch_failed(env, now, slot, e.to_string()),
            Ok(r) if !(200..300).contains(&r.status) => {
                return self.fetch_failed(env, now, slot, format!("HTTP status {}", r.status));
            }
            Ok(r) => r,
        };
        self.record.bytes += result.body_len;
        match self.phase {
            RootPhase::Manifest => {
                let Source::Chunks { key, .. } = &env.ctx.source else {
                    return Err("a manifest outside chunks mode".into());
                };
                let body = result.body.unwrap_or_default();
                // Verified before any field is read, as the node agent does.
                let manifest =
                    match SignedManifest::from_bytes(&body).and_then(|signed| signed.verify(key)) {
                        Ok(m) => m,
                        Err(e) => return self.fetch_failed(env, now, slot, e.to_string()),
                    };
                self.record.manifest_ms = Some(ms(now - self.started));
                self.chunks = manifest.chunks;
                self.phase = RootPhase::Chunks;
                if self.chunks.is_empty() {
                    return Err("manifest: no chunks".into());
                }
                for s in 0..self.slots.len() {
                    self.next_chunk(env, now, s)?;
                }
                Ok(())
            }
            RootPhase::Chunks => {
                let (first, single) = match self.slots[slot].conn.as_ref() {
                    Some(c) => (c.chunk, c.single),
                    None => (None, true),
                };
                self.record.chunks += match first {
                    Some(i) if !single => self.run_len(env.ctx, i),
                    _ => 1,
                };
                if let Some(conn) = &mut self.slots[slot].conn {
                    conn.chunk = None;
                }
                if self.record.chunks == self.chunks.len() {
                    self.finish(env, now, None);
                    return Ok(());
                }
                self.next_chunk(env, now, slot)
            }
            RootPhase::WholeFile => {
                self.finish(env, now, None);
                Ok(())
            }
            RootPhase::Off | RootPhase::Finished => Ok(()),
        }
    }

    /// Ends the run: a verified root (`None`) or a failure where it stands.
    fn finish(&mut self, env: &mut Env<'_>, now: Instant, failure: Option<String>) {
        for slot in 0..self.slots.len() {
            self.close(env, slot);
        }
        let phase = std::mem::replace(&mut self.phase, RootPhase::Finished);
        self.wake = None;
        let p = &env.ctx.progress;
        match failure {
            None => {
                self.record.root_ms = Some(ms(now - self.started));
                p.verified.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => {
                self.record.failure = Some(RootFailure { phase, reason });
                p.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn expire(&mut self, env: &mut Env<'_>, now: Instant) {
        if !self.is_finished() {
            let reason = match &self.record.last_retry_reason {
                Some(last) => format!("deadline passed; the last failure retried: {last}"),
                None => "deadline passed".to_owned(),
            };
            self.finish(env, now, Some(reason));
        }
    }
}

pub fn root(args: &RootArgs) -> anyhow::Result<RootSummary> {
    if args.clients == 0 || args.clients > 1 << 20 {
        bail!("--clients must be 1 to 1048576");
    }
    if !(1..=64).contains(&args.parallel) {
        bail!("--parallel must be 1 to 64");
    }
    if !(1..=4096).contains(&args.run) {
        bail!("--run must be 1 to 4096 chunks per request");
    }
    if !(args.deadline.is_finite() && args.deadline > 0.0) {
        bail!("--deadline must be positive");
    }
    let (server, authority, source) = source(args)?;
    let (first, prefix) = parse_sources(&args.sources)?;
    let addresses = machine_addresses(first, prefix, *server.ip(), args.clients)?;
    let (mode, parallel) = match source {
        Source::Chunks { .. } if args.run > 1 => ("chunk_runs", args.parallel),
        Source::Chunks { .. } => ("chunks", args.parallel),
        Source::WholeFile { .. } => ("whole_file", 1),
    };
    super::raise_open_files(args.clients * parallel)?;
    // The machines' addresses are local to this namespace, the server's stays on the link;
    // dropped (routes removed) after every ring has closed its sockets.
    let mut local = LocalNet::new(&args.iface);
    local.make_local(first, Some(mask(prefix)), &[*server.ip()])?;
    let server_before = args
        .server_pid
        .iter()
        .map(|&pid| {
            tree_usage(pid)
                .map(|u| u.0)
                .with_context(|| format!("cannot read /proc of server pid {pid}"))
        })
        .sum::<anyhow::Result<f64>>()?;
    let cpu_before = report::proc_usage(std::process::id()).map_or(0.0, |u| u.0);
    let host_before = host_cpu();
    let threads = args.threads.clamp(1, 64);
    let epoch = Instant::now();
    let ctx = Ctx {
        epoch,
        deadline: epoch + Duration::from_secs_f64(args.deadline),
        server,
        authority,
        source,
        parallel,
        run: args.run,
        retry: NodeRetry::AGENT,
        progress: Progress::default(),
    };
    let mut shares: Vec<Vec<(usize, Ipv4Addr)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, ip) in addresses.into_iter().enumerate() {
        shares[i % threads].push((i, ip));
    }
    let stop = AtomicBool::new(false);
    let results: Vec<anyhow::Result<(Vec<RootRecord>, u64)>> = std::thread::scope(|scope| {
        let ticker = scope.spawn(|| show_progress(&ctx.progress, &stop, epoch, args.clients));
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let ctx = &ctx;
                scope.spawn(move || run_share(ctx, share))
            })
            .collect();
        let results = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked")))
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        results
    });
    let elapsed = epoch.elapsed().as_secs_f64();
    drop(local);
    let mut records = Vec::with_capacity(args.clients);
    let mut exhaustions = 0;
    for result in results {
        let (share, n) = result?;
        records.extend(share);
        exhaustions += n;
    }
    records.sort_by_key(|r| r.index);
    let cpu = report::proc_usage(std::process::id()).map_or(0.0, |u| u.0) - cpu_before;
    let server = (!args.server_pid.is_empty()).then(|| {
        let after: Vec<_> = args
            .server_pid
            .iter()
            .filter_map(|&pid| tree_usage(pid))
            .collect();
        Usage {
            pids: after.iter().flat_map(|u| u.3.iter().copied()).collect(),
            cpu_s: after.iter().map(|u| u.0).sum::<f64>() - server_before,
            rss_peak_mib: after.iter().map(|u| u.1).sum(),
            rss_end_mib: after.iter().map(|u| u.2).sum(),
        }
    });
    let mut summary = RootSummary::new(
        args.label.clone(),
        mode,
        (parallel, threads),
        records,
        elapsed,
        cpu,
        server,
    );
    summary.client_buffer_exhaustions = exhaustions;
    if let (Some(before), Some(after)) = (host_before, host_cpu()) {
        summary.host_busy_cpu_s = Some(after.0 - before.0);
        summary.host_softirq_s = Some(after.1 - before.1);
    }
    summary.http_retries = ctx.progress.http_retries.load(Ordering::Relaxed);
    summary.runs_failed = ctx.progress.runs_failed.load(Ordering::Relaxed);
    summary.chunk_retries = ctx.progress.chunk_retries.load(Ordering::Relaxed);
    summary.root_restarts = ctx.progress.root_restarts.load(Ordering::Relaxed);
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(
            path,
            super::plot::storm_svg(&[super::plot::StormSeries::of_root(&summary)])?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// One bench thread: its own ring, driving its share of the machines.
fn run_share(
    ctx: &Ctx,
    machines: Vec<(usize, Ipv4Addr)>,
) -> anyhow::Result<(Vec<RootRecord>, u64)> {
    // One 128 KiB incrementally consumed buffer per two connections, at least 256, at most
    // 4096 (512 MiB), as the storm sizes it for its HTTP phase.
    let connections = machines.len() * ctx.parallel;
    let tcp_buffers = (connections / 2).next_power_of_two().clamp(256, 4096) as u16;
    let mut ring = ClientRing::new(ClientRingConfig {
        ring_entries: 4096,
        udp_buffers: 64,
        udp_buffer_size: 2048,
        tcp_buffers,
        tcp_buffer_size: 128 * 1024,
    })
    .context("starting the bench's io_uring")?;
    let records = drive(ctx, &mut ring, machines)?;
    let exhaustions = ring.stats().buffer_exhaustions;
    Ok((records, exhaustions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_as_the_node_agent_waits() {
        let r = NodeRetry::AGENT;
        // ChunkRetry::default(): 0.5 s, 1 s, 2 s, 4 s, then 4 s.
        let chunk: Vec<_> = (1..=5).map(|n| r.chunk_delay(n)).collect();
        assert_eq!(
            chunk,
            [500, 1000, 2000, 4000, 4000].map(Duration::from_millis)
        );
        // StepBackoff: 2 s doubling to 60 s, less up to a quarter of jitter.
        let mut rng = 7;
        for (failures, base) in [(1, 2), (2, 4), (5, 32), (6, 60), (40, 60)] {
            let base = Duration::from_secs(base);
            let d = r.step_delay(failures, &mut rng);
            assert!(d <= base && d >= base - base / 4, "{failures}: {d:?}");
        }
    }

    #[test]
    fn machine_addresses_stay_on_the_link_and_off_the_server() {
        let server = Ipv4Addr::new(198, 19, 0, 1);
        let ips = machine_addresses(Ipv4Addr::new(198, 19, 1, 0), 16, server, 300).unwrap();
        assert_eq!(ips[0], Ipv4Addr::new(198, 19, 1, 0));
        assert_eq!(ips[299], Ipv4Addr::new(198, 19, 2, 43));
        // Outside the server's subnet, past its end, onto the server, onto the broadcast.
        assert!(machine_addresses(Ipv4Addr::new(10, 0, 0, 1), 16, server, 1).is_err());
        assert!(machine_addresses(Ipv4Addr::new(198, 19, 255, 250), 16, server, 10).is_err());
        assert!(machine_addresses(Ipv4Addr::new(198, 19, 0, 0), 16, server, 2).is_err());
        assert!(parse_sources("198.19.1.1/16").is_ok());
        assert!(parse_sources("198.19.1.1").is_err());
        assert!(parse_sources("198.19.1.1/31").is_err());
    }
}
