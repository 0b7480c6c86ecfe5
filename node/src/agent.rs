//! The boot, step by step. Each step prints what it does; each failure says why, is reported
//! to the appliance when the network is up, and is retried after [`StepBackoff`].
//!
//! Initramfs layout the agent expects (the appliance builds it):
//!
//! ```text
//! /init                       this binary (static, musl)
//! /dev/console                character device 5:1, so the kernel gives PID 1 a console
//! /stampede/manifest.pub      the appliance's ed25519 public key, hex
//! /stampede/modules           modules to load, relative to /, dependencies first
//! /lib/modules/<release>/...  the .ko files it names (uncompressed)
//! ```
use std::{
    convert::Infallible,
    fs,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use stampede_rootfs::manifest::{
    Chunk, MAX_MANIFEST_BYTES, ManifestVerifyingKey, RootManifest, SignedManifest,
    verifying_key_from_hex,
};

use crate::{
    assemble::{
        self, ChunkFetcher, ChunkNote, ChunkRetry, ChunkSource, FetchPlan, FileSink, RunError,
    },
    backoff::StepBackoff,
    cmdline::{BootParams, MacAddr},
    console,
    dhcp::{self, DhcpNote, Lease, Nic, Session},
    events::{EventReporter, NodeEvent},
    http::{HttpConnection, HttpError, HttpUrl},
    machine_files::{self, LeaseRecord, NodeConfig},
    memory,
    modules::{self, ModuleEntry, ModulePlan},
    netconf::{Ipv6Pause, Rtnl},
    root,
};

pub const KEY_FILE: &str = "/stampede/manifest.pub";
const SYS_CLASS_NET: &str = "/sys/class/net";
const PROC_SYS_NET: &str = "/proc/sys/net";
/// How long to wait for the boot NIC's driver to register it before saying so (and waiting on).
const NIC_WAIT: Duration = Duration::from_secs(10);
/// How long a NIC just brought up may take to report carrier before DHCP starts regardless.
const CARRIER_WAIT: Duration = Duration::from_secs(5);
/// Chunks fetched with one `Range` request on the whole image (`/roots/<id>/image`): 16 MiB.
/// Long enough that a root is a handful of requests (the appliance spent 1.7 times the CPU per
/// GB serving a root as 128 chunk requests over 6 connections as it did streaming one file),
/// short enough that a run that fails costs little to fetch again chunk by chunk, and that the
/// two runs in flight (held whole while their chunks are checked) fit the memory margin.
/// Runs of 64 (the image in two halves) were measured no cheaper for the appliance and no
/// faster (docs/benchmarks/root.md, 2026-12-08).
const RUN_CHUNKS: usize = 16;
/// Connections fetching runs: one streams while the other's next request is on its way, and a
/// rack of machines opens two connections each to the appliance, not six.
const RUN_WORKERS: usize = 2;
/// Chunk fetchers when the appliance serves no image (older than ranges): enough to hide one
/// connection's round trips, few enough that a rack of machines does not open thousands of
/// connections to one appliance.
const CHUNK_WORKERS: usize = 6;
/// Between bytes of a response; a chunk is 1 MiB, a run 16.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything learned before the root step.
struct Booted {
    params: BootParams,
    key: ManifestVerifyingKey,
    modules: ModulePlan,
    lease: Lease,
    reporter: EventReporter,
    /// IPv6 off on the boot NICs until `switch_root`.
    ipv6: Ipv6Pause,
}

/// The agent's life. Returns only by panicking (caught in `main`).
pub fn run() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut backoff = StepBackoff::new(seed);
    retry(
        &mut backoff,
        "mounting /proc, /sys, /dev, /run",
        root::mount_api_filesystems,
    );
    console::attach();
    say!(
        "Stampede node agent {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let params = match read_params() {
        Ok(p) => p,
        Err(err) => fatal(&format!("{err:#}")),
    };
    console::set_debug(params.debug);
    say!("manifest {} server {}", params.manifest, params.server);
    let key = match read_key() {
        Ok(k) => k,
        Err(err) => fatal(&format!("{err:#}")),
    };
    let modules = load_modules();
    let nics = wait_for_nics(params.boot_mac);
    // The MAC spreads a rack's retries apart even if every clock reads the same.
    let seed = nics.iter().fold(seed, |acc, nic| {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&nic.mac.0);
        acc ^ u64::from_le_bytes(b)
    });
    let names: Vec<&str> = nics.iter().map(|nic| nic.name.as_str()).collect();
    let ipv6 = Ipv6Pause::hold(Path::new(PROC_SYS_NET), &names);
    if !ipv6.is_empty() {
        debug!(
            "IPv6 held off on {} interface(s) until switch_root",
            ipv6.len()
        );
    }
    let lease = network(&nics, seed);
    let reporter = EventReporter {
        server: params.server.clone(),
        mac: lease.nic.mac,
    };
    let booted = Booted {
        params,
        key,
        modules,
        lease,
        reporter,
        ipv6,
    };
    let mut backoff = StepBackoff::new(seed);
    loop {
        let Err(err) = boot_root(&booted);
        let reason = format!("{err:#}");
        say!("root failed: {reason}");
        booted.reporter.report(&NodeEvent::RootFailed {
            reason: reason.clone(),
        });
        if err.is::<RebootNeeded>() {
            reboot_now(&reason);
        }
        let wait = backoff.next_delay();
        say!("retrying the root in {:.1} s", wait.as_secs_f64());
        std::thread::sleep(wait);
    }
}

/// A failure the agent cannot undo in place (the initramfs is gone, or a RAM disk is too small).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RebootNeeded(String);

fn retry<T>(backoff: &mut StepBackoff, what: &str, mut step: impl FnMut() -> Result<T>) -> T {
    loop {
        match step() {
            Ok(value) => {
                backoff.reset();
                return value;
            }
            Err(err) => {
                let wait = backoff.next_delay();
                say!(
                    "{what} failed: {err:#}; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
            }
        }
    }
}

/// A configuration error no retry can fix: say it, and keep saying it.
fn fatal(reason: &str) -> ! {
    loop {
        say!("cannot boot: {reason}");
        say!("fix the appliance's boot configuration and reset this machine");
        std::thread::sleep(Duration::from_secs(300));
    }
}

/// Reboots after a pause long enough to read the reason on the console.
pub fn reboot_now(reason: &str) -> ! {
    say!("rebooting in 30 s: {reason}");
    std::thread::sleep(Duration::from_secs(30));
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).unwrap_err();
    fatal(&format!("reboot failed: {err}"))
}

fn read_params() -> Result<BootParams> {
    let cmdline = fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    Ok(BootParams::parse(&cmdline)?)
}

fn read_key() -> Result<ManifestVerifyingKey> {
    let text = fs::read_to_string(KEY_FILE)
        .with_context(|| format!("{KEY_FILE} (the appliance key) is missing from the initramfs"))?;
    verifying_key_from_hex(&text).context(KEY_FILE)
}

fn load_modules() -> ModulePlan {
    let list = match fs::read_to_string(modules::MODULE_LIST) {
        Ok(text) => modules::parse_list(&text),
        Err(err) => {
            say!(
                "no module list ({}: {err}); relying on built-in drivers",
                modules::MODULE_LIST
            );
            Vec::new()
        }
    };
    let plan = modules::plan(list);
    for entry in &plan.early {
        // A module that fails may not matter (another NIC's driver); the steps that need it
        // will say what is missing.
        match modules::load(entry, "") {
            Ok(modules::Loaded::Now) => debug!("loaded {}", entry.name()),
            Ok(modules::Loaded::Already) => debug!("{} already loaded", entry.name()),
            Err(err) => say!("module {}: {err}", entry.name()),
        }
    }
    say!("{} modules loaded", plan.early.len());
    plan
}

fn wait_for_nics(boot_mac: Option<MacAddr>) -> Vec<Nic> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let all = dhcp::ethernet_nics(Path::new(SYS_CLASS_NET));
        let chosen = dhcp::choose(all.clone(), boot_mac);
        if !chosen.is_empty() {
            let names: Vec<String> = chosen
                .iter()
                .map(|n| format!("{} ({})", n.name, n.mac))
                .collect();
            say!("network interface {}", names.join(", "));
            return chosen;
        }
        if !said && started.elapsed() > NIC_WAIT {
            said = true;
            let seen: Vec<String> = all
                .iter()
                .map(|n| format!("{} ({})", n.name, n.mac))
                .collect();
            match boot_mac {
                Some(mac) => say!(
                    "no network interface with BOOTIF's MAC {mac} after {NIC_WAIT:?}; found: [{}]; still waiting",
                    seen.join(", ")
                ),
                None => say!(
                    "no Ethernet interface after {NIC_WAIT:?} (is its driver in /stampede/modules?); still waiting"
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Leases an address on one of `nics` and configures it; retries forever.
fn network(nics: &[Nic], seed: u64) -> Lease {
    let mut backoff = StepBackoff::new(seed);
    loop {
        let lease = lease_on(nics, seed);
        match configure(&lease) {
            Ok(()) => return lease,
            Err(err) => {
                let wait = backoff.next_delay();
                say!(
                    "configuring {}: {err:#}; again in {:.1} s",
                    lease.nic.name,
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
            }
        }
    }
}

fn lease_on(nics: &[Nic], seed: u64) -> Lease {
    let mut backoff = StepBackoff::new(seed);
    loop {
        match try_lease(nics, seed) {
            Ok(lease) => return lease,
            Err(err) => {
                let wait = backoff.next_delay();
                say!("DHCP: {err:#}; again in {:.1} s", wait.as_secs_f64());
                std::thread::sleep(wait);
            }
        }
    }
}

fn try_lease(nics: &[Nic], seed: u64) -> Result<Lease> {
    let mut rtnl = Rtnl::open().context("netlink")?;
    let now = Instant::now();
    let mut sessions = Vec::new();
    for (i, nic) in nics.iter().enumerate() {
        if let Err(err) = rtnl.link_up(nic.index) {
            say!("{}: link up: {err}", nic.name);
            continue;
        }
        match Session::new(nic.clone(), seed.wrapping_add(i as u64), now) {
            Ok(session) => sessions.push(session),
            Err(err) => say!("{}: DHCP socket: {err}", nic.name),
        }
    }
    if sessions.is_empty() {
        bail!("no interface could start DHCP");
    }
    wait_for_carrier(&sessions);
    let mut notes = Vec::new();
    loop {
        let now = Instant::now();
        for session in &mut sessions {
            if let Some(lease) = session.step(now, &mut notes) {
                let via = lease
                    .routers
                    .first()
                    .map_or("no router".into(), |r| format!("router {r}"));
                say!(
                    "{}: leased {}/{} from {} ({via})",
                    lease.nic.name,
                    lease.ip,
                    lease.prefix_len,
                    lease.server_id
                );
                return Ok(lease);
            }
        }
        for note in notes.drain(..) {
            match note {
                DhcpNote::Sent { nic, kind, count } if count > 1 => {
                    let carrier = match dhcp::carrier(Path::new(SYS_CLASS_NET), &nic) {
                        Some(true) => "link up",
                        Some(false) => "NO LINK (cable? switch port?)",
                        None => "link unknown",
                    };
                    say!("{nic}: no DHCP answer yet, {kind} #{count} ({carrier})");
                }
                DhcpNote::Sent { nic, kind, .. } => debug!("{nic}: DHCP {kind}"),
                DhcpNote::Offered { nic, ip, server } => {
                    debug!("{nic}: offer of {ip} from {server}")
                }
                DhcpNote::SendFailed { nic, error } => say!("{nic}: DHCP send failed: {error}"),
            }
        }
        let next = sessions.iter().filter_map(Session::next_timeout).min();
        let wait = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        std::thread::sleep(wait);
    }
}

/// A NIC just set up is still negotiating its link (QEMU's e1000 takes about a second, real
/// switches up to a few): a DISCOVER sent before carrier is dropped and costs a retransmission
/// timeout. Waits for carrier on any of them, at most [`CARRIER_WAIT`].
fn wait_for_carrier(sessions: &[Session]) {
    let started = Instant::now();
    while started.elapsed() < CARRIER_WAIT {
        let up = sessions
            .iter()
            .any(|s| dhcp::carrier(Path::new(SYS_CLASS_NET), &s.nic.name) == Some(true));
        if up {
            debug!("link up after {} ms", started.elapsed().as_millis());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say!("no link on any interface after {CARRIER_WAIT:?}; trying DHCP anyway");
}

fn configure(lease: &Lease) -> Result<()> {
    let mut rtnl = Rtnl::open().context("netlink")?;
    rtnl.add_address(lease.nic.index, lease.ip, lease.prefix_len)
        .with_context(|| format!("adding {}/{}", lease.ip, lease.prefix_len))?;
    if let Some(router) = lease.routers.first() {
        rtnl.set_default_route(lease.nic.index, *router)
            .with_context(|| format!("default route via {router}"))?;
    }
    // The initramfs's own resolver configuration, for a server given by name.
    if !lease.dns_servers.is_empty() {
        let text: String = lease
            .dns_servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        let _ = fs::create_dir_all("/etc");
        let _ = fs::write("/etc/resolv.conf", text);
    }
    Ok(())
}

/// Fetches, verifies, assembles, mounts and starts the root. Returns only on failure.
fn boot_root(booted: &Booted) -> Result<Infallible> {
    root::unmount_root();
    let manifest = fetch_manifest(booted)?;
    booted.reporter.report(&NodeEvent::RootManifest {
        chunks: manifest.chunks.len(),
        bytes: manifest.size,
    });
    say!(
        "root {} ({}): {} chunks, {:.1} MiB, {}",
        manifest.name,
        manifest.image,
        manifest.chunks.len(),
        manifest.size as f64 / (1 << 20) as f64,
        manifest.format.fstype()
    );
    let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let available = memory::mem_available(&meminfo).context("no MemAvailable in /proc/meminfo")?;
    memory::check(manifest.size, available)?;
    let disk = ram_disk(booted.modules.ram_disk.as_ref(), manifest.size)?;
    // The swarm, when the root has one, runs until just before switch_root: the machines
    // still booting fetch from this one while it mounts and writes its files.
    let swarm = if booted.params.swarm && manifest.swarm.is_some() {
        fetch_by_swarm(booted, &manifest, &disk)
    } else {
        None
    };
    if let Some((_, report)) = &swarm {
        let banned: Vec<String> = report.banned.iter().map(ToString::to_string).collect();
        say!(
            "root fetched by the swarm: {} bytes in {} ms: {} from peers ({} pieces), {} from the appliance ({} pieces), {} uploaded{}",
            manifest.size,
            report.elapsed.as_millis(),
            report.bytes_from_peers,
            report.pieces_from_peers,
            report.bytes_from_appliance,
            report.pieces_from_appliance,
            report.bytes_uploaded,
            if banned.is_empty() {
                String::new()
            } else {
                format!(", banned {}", banned.join(" "))
            }
        );
        booted.reporter.report(&NodeEvent::RootChunks {
            bytes: manifest.size,
            ms: report.elapsed.as_millis() as u64,
            by_range: 0,
            by_chunk: 0,
            from_peers: report.bytes_from_peers,
            from_appliance: report.bytes_from_appliance,
            uploaded: report.bytes_uploaded,
            banned: banned.join(" "),
        });
    } else {
        http_root(booted, &manifest, disk)?;
    }
    root::mount_root(manifest.format.fstype())?;
    say!(
        "root mounted at {} (read-only image, writes in RAM)",
        root::SYSROOT
    );
    booted.reporter.report(&NodeEvent::RootMounted);
    machine_files(booted)?;
    let init = booted
        .params
        .init
        .clone()
        .unwrap_or_else(|| manifest.init.clone());
    root::check_init(Path::new(root::SYSROOT), &init)?;
    booted
        .reporter
        .report(&NodeEvent::SwitchRoot { init: init.clone() });
    for (path, err) in booted.ipv6.resume() {
        say!("giving IPv6 back: {}: {err}", path.display());
    }
    // Seeding after switch_root is left for a later slice (docs/swarm.md): leave the swarm
    // (a `stopped` announce) before the initramfs goes.
    drop(swarm);
    say!("switching to the root: exec {init}");
    switch_root(&init)
}

/// How long the swarm may take before the agent gives up on it and fetches the root over
/// plain HTTP: at least 2 min, or the root at 8 MiB/s.
fn swarm_deadline(size: u64) -> Duration {
    Duration::from_secs((size / (8 << 20)).max(120))
}

/// Joins the root's swarm and waits for every piece. `None` (said why) when the swarm
/// cannot be joined or does not finish in time: the caller fetches the root over HTTP.
fn fetch_by_swarm(
    booted: &Booted,
    manifest: &RootManifest,
    disk: &fs::File,
) -> Option<(crate::swarm::SwarmNode, crate::swarm::SwarmReport)> {
    use crate::swarm::{SwarmNode, SwarmNote, SwarmPlan, peer_id};
    let mac = booted.lease.nic.mac.0;
    let mut seed = [0u8; 8];
    seed[..6].copy_from_slice(&mac);
    let seed = u64::from_le_bytes(seed)
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let plan = match SwarmPlan::for_manifest(
        manifest,
        &booted.params.server,
        image_url(&booted.params.manifest),
        false,
        peer_id(seed),
    ) {
        Ok(plan) => plan,
        Err(err) => {
            say!("swarm: {err:#}; fetching over HTTP");
            return None;
        }
    };
    let file = match disk.try_clone() {
        Ok(file) => file,
        Err(err) => {
            say!("swarm: {err}; fetching over HTTP");
            return None;
        }
    };
    say!(
        "joining the root's swarm (tracker {}, peer port {})",
        plan.announce,
        plan.port
    );
    let note = |n: SwarmNote| match n {
        SwarmNote::Announced { peers } => debug!("swarm: {peers} peers listed"),
        SwarmNote::AnnounceFailed { reason } => say!("swarm: announce failed: {reason}"),
        SwarmNote::PeerBanned { addr, piece } => {
            say!("swarm: banned {addr}: piece {piece} failed its SHA-256")
        }
        SwarmNote::WebSeedFailed { piece, reason } => {
            say!("swarm: piece {piece} from the appliance: {reason}")
        }
    };
    let node = match SwarmNode::start(manifest, plan, file, Box::new(note)) {
        Ok(node) => node,
        Err(err) => {
            say!("swarm: {err:#}; fetching over HTTP");
            return None;
        }
    };
    match node.wait_complete(swarm_deadline(manifest.size)) {
        Ok(report) => Some((node, report)),
        Err(err) => {
            say!("swarm: {err:#}; fetching over HTTP");
            None
        }
    }
}

/// The root over plain HTTP: runs of chunks by `Range`, single chunks as the fallback.
fn http_root(booted: &Booted, manifest: &RootManifest, disk: fs::File) -> Result<()> {
    let report = assemble_root(booted, manifest, disk)?;
    say!(
        "root assembled: {} chunks, {} bytes in {} ms: {} by range in {} requests, {} by chunk URL ({} refetched, {} corrupt)",
        report.chunks,
        report.bytes,
        report.elapsed.as_millis(),
        report.by_run,
        report.runs,
        report.by_chunk,
        report.retries,
        report.corrupt
    );
    booted.reporter.report(&NodeEvent::RootChunks {
        bytes: report.bytes,
        ms: report.elapsed.as_millis() as u64,
        by_range: report.by_run,
        by_chunk: report.by_chunk,
        from_peers: 0,
        from_appliance: report.bytes,
        uploaded: 0,
        banned: String::new(),
    });
    Ok(())
}

fn fetch_manifest(booted: &Booted) -> Result<RootManifest> {
    let url = &booted.params.manifest;
    let mut conn = HttpConnection::new(url, FETCH_TIMEOUT);
    let bytes = conn.get_ok(url, MAX_MANIFEST_BYTES)?;
    let signed = SignedManifest::from_bytes(&bytes).with_context(|| format!("manifest {url}"))?;
    // Nothing in the manifest is read before its signature checks out.
    let manifest = signed
        .verify(&booted.key)
        .with_context(|| format!("manifest {url} refused"))?;
    Ok(manifest)
}

/// Loads `brd` sized for the image and opens `/dev/ram0`.
fn ram_disk(module: Option<&ModuleEntry>, image_size: u64) -> Result<fs::File> {
    let kib = memory::ram_disk_kib(image_size);
    match module {
        Some(entry) => {
            let params = format!("rd_nr=1 rd_size={kib} max_part=0");
            match modules::load(entry, &params)? {
                modules::Loaded::Now => say!("RAM disk {} of {kib} KiB", root::RAM_DISK),
                modules::Loaded::Already => debug!("brd already loaded"),
            }
        }
        None if Path::new("/sys/module/brd").exists() => {}
        None => bail!(
            "no brd module in {} and none built in",
            modules::MODULE_LIST
        ),
    }
    // devtmpfs creates the node when the disk registers; give it a moment.
    let started = Instant::now();
    while !Path::new(root::RAM_DISK).exists() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sectors: u64 = fs::read_to_string("/sys/block/ram0/size")
        .context("/sys/block/ram0/size")?
        .trim()
        .parse()
        .context("/sys/block/ram0/size")?;
    if sectors * 512 < image_size {
        return Err(anyhow::Error::new(RebootNeeded(format!(
            "{} holds {} bytes, the root needs {image_size} (brd was loaded for a smaller root)",
            root::RAM_DISK,
            sectors * 512
        ))));
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root::RAM_DISK)
        .with_context(|| format!("opening {}", root::RAM_DISK))
}

/// Chunks over HTTP, one kept-alive connection per worker: runs of them as ranges of the whole
/// image, single ones from `/chunks/<sha256>`.
struct HttpChunks {
    server: HttpUrl,
    /// `/roots/<id>/image` beside the manifest; `None` when the manifest's URL does not end in
    /// `manifest` (nothing to put `image` in place of): chunk by chunk then.
    image: Option<HttpUrl>,
}

struct HttpChunkFetcher {
    server: HttpUrl,
    conn: HttpConnection,
    image: Option<HttpUrl>,
    /// For the image when it is on another server than the chunks.
    image_conn: Option<HttpConnection>,
}

impl ChunkSource for HttpChunks {
    type Fetcher = HttpChunkFetcher;
    fn fetcher(&self) -> HttpChunkFetcher {
        HttpChunkFetcher {
            server: self.server.clone(),
            conn: HttpConnection::new(&self.server, FETCH_TIMEOUT),
            image: self.image.clone(),
            image_conn: None,
        }
    }
}

/// The whole image's URL: the manifest's, its last word `manifest` replaced by `image`.
pub fn image_url(manifest: &HttpUrl) -> Option<HttpUrl> {
    let dir = manifest.target.strip_suffix("manifest")?;
    dir.ends_with('/').then(|| HttpUrl {
        target: format!("{dir}image"),
        ..manifest.clone()
    })
}

/// The bytes of a run from the answer to `Range: bytes=offset-(offset+len-1)`: a 206 holding
/// exactly that range, or a 200 when the run is the whole image. A 404 is an appliance that
/// serves no image; anything else fails this run.
fn run_body(
    response: crate::http::Response,
    offset: u64,
    len: u64,
    image_size: u64,
) -> Result<Vec<u8>, RunError> {
    let last = offset + len - 1;
    match response.status {
        206 => match response.content_range {
            Some((first, end, total))
                if (first, end) == (offset, last) && total.is_none_or(|t| t == image_size) => {}
            Some((first, end, total)) => {
                let total = total.map_or("*".into(), |t| t.to_string());
                return Err(RunError::Failed(format!(
                    "asked bytes {offset}-{last}/{image_size}, got {first}-{end}/{total}"
                )));
            }
            None => return Err(RunError::Failed("206 without Content-Range".into())),
        },
        200 if offset == 0 && len == image_size => {}
        200 => {
            return Err(RunError::Failed(
                "HTTP 200 to a range (the whole image instead)".into(),
            ));
        }
        404 => return Err(RunError::NotServed("HTTP 404".into())),
        status => return Err(RunError::Failed(format!("HTTP {status}"))),
    }
    if response.body.len() as u64 != len {
        return Err(RunError::Failed(format!(
            "{} bytes, not {len}",
            response.body.len()
        )));
    }
    Ok(response.body)
}

impl ChunkFetcher for HttpChunkFetcher {
    fn fetch(&mut self, index: usize, chunk: &Chunk) -> Result<Vec<u8>, String> {
        let url = self
            .server
            .join(&format!("/chunks/{}", chunk.sha256.to_hex()));
        debug!("chunk {index}: GET {url}");
        self.conn
            .get_ok(&url, usize::try_from(chunk.size).unwrap_or(usize::MAX))
            .map_err(|e| e.to_string())
    }

    fn fetch_run(&mut self, offset: u64, len: u64, image_size: u64) -> Result<Vec<u8>, RunError> {
        let Some(url) = &self.image else {
            return Err(RunError::NotServed(
                "the manifest's URL does not end in manifest".into(),
            ));
        };
        let last = offset + len - 1;
        debug!("GET {url} bytes={offset}-{last}");
        let conn = if url.origin() == self.server.origin() {
            &mut self.conn
        } else {
            self.image_conn
                .get_or_insert_with(|| HttpConnection::new(url, FETCH_TIMEOUT))
        };
        let limit = usize::try_from(len).unwrap_or(usize::MAX);
        let response = conn
            .get_range(url, offset, last, limit)
            .map_err(|e| RunError::Failed(e.to_string()))?;
        run_body(response, offset, len, image_size)
    }
}

fn assemble_root(
    booted: &Booted,
    manifest: &RootManifest,
    disk: fs::File,
) -> Result<assemble::AssemblyReport> {
    let source = HttpChunks {
        server: booted.params.server.clone(),
        image: image_url(&booted.params.manifest),
    };
    let sink = FileSink(disk);
    let note = |n: ChunkNote| match n {
        ChunkNote::Corrupt {
            index,
            reason,
            attempt,
        } => say!("chunk {index}: {reason} (try {attempt}); fetching it again"),
        ChunkNote::FetchFailed {
            index,
            reason,
            attempt,
        } => say!("chunk {index}: {reason} (try {attempt}); fetching it again"),
        ChunkNote::RunFailed {
            first,
            last,
            reason,
        } => say!("chunks {first}-{last} by range: {reason}; fetching them one by one"),
        ChunkNote::RunsNotServed { reason } => {
            say!("the image is not served by range ({reason}); fetching chunk by chunk")
        }
    };
    let plan = FetchPlan {
        run_chunks: RUN_CHUNKS,
        run_workers: RUN_WORKERS,
        chunk_workers: CHUNK_WORKERS,
    };
    Ok(assemble::assemble(
        manifest,
        plan,
        &source,
        &sink,
        ChunkRetry::default(),
        &note,
    )?)
}

fn machine_files(booted: &Booted) -> Result<()> {
    let mac = booted.lease.nic.mac;
    let url = booted.params.server.join(&format!(
        "/stampede/node/config?mac={}",
        crate::http::encode_query_value(&mac.to_string())
    ));
    let mut conn = HttpConnection::new(&url, FETCH_TIMEOUT);
    let config = match conn.get_ok(&url, 64 * 1024) {
        Ok(body) => NodeConfig::from_json(&body).unwrap_or_else(|err| {
            say!("machine config {url}: {err}; using defaults");
            NodeConfig::default()
        }),
        Err(HttpError::Status { status: 404, .. }) => NodeConfig::default(),
        Err(err) => {
            say!("machine config: {err}; using defaults");
            NodeConfig::default()
        }
    };
    let lease = &booted.lease;
    let record = LeaseRecord {
        mac,
        interface: lease.nic.name.clone(),
        ip: lease.ip,
        prefix_len: lease.prefix_len,
        router: lease.routers.first().copied(),
        dns_servers: lease.dns_servers.clone(),
        hostname: lease.hostname.clone(),
        dhcp_server: lease.server_id,
        server: booted.params.server.to_string(),
    };
    let written = machine_files::write_machine_files(
        Path::new(root::SYSROOT),
        Path::new("/run"),
        &config,
        &record,
    )?;
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    say!("machine files: {}", names.join(", "));
    Ok(())
}

/// Moves the API mounts into the root, frees the initramfs, makes the root `/` and executes
/// init. A failure before anything moved can be retried; after, only a reboot helps.
fn switch_root(init: &str) -> Result<Infallible> {
    root::move_api_filesystems().map_err(|e| anyhow::Error::new(RebootNeeded(format!("{e:#}"))))?;
    let freed = root::free_initramfs(&["/sysroot", "/proc", "/sys", "/dev", "/run"]);
    debug!("freed {} KiB of initramfs", freed / 1024);
    root::enter_sysroot().map_err(|e| anyhow::Error::new(RebootNeeded(format!("{e:#}"))))?;
    let err = root::exec_init(init).unwrap_err();
    Err(anyhow::Error::new(RebootNeeded(format!("{err:#}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Response;

    #[test]
    fn the_image_is_beside_the_manifest() {
        let m = HttpUrl::parse("http://198.18.0.1:8080/roots/ab12/manifest").expect("url");
        assert_eq!(
            image_url(&m).expect("image").to_string(),
            "http://198.18.0.1:8080/roots/ab12/image"
        );
        for other in ["http://h/roots/ab12/root.json", "http://h/mymanifest"] {
            let url = HttpUrl::parse(other).expect("url");
            assert_eq!(image_url(&url), None, "{other}");
        }
    }

    fn answer(status: u16, content_range: Option<(u64, u64, Option<u64>)>, len: usize) -> Response {
        Response {
            status,
            content_range,
            body: vec![0; len],
        }
    }

    #[test]
    fn a_run_is_exactly_the_range_asked_or_the_whole_image() {
        let ok = |r| run_body(r, 100, 50, 1000).map(|b| b.len());
        assert_eq!(ok(answer(206, Some((100, 149, Some(1000))), 50)), Ok(50));
        assert_eq!(ok(answer(206, Some((100, 149, None)), 50)), Ok(50));
        for wrong in [
            answer(206, Some((100, 148, Some(1000))), 49),
            answer(206, Some((0, 49, Some(1000))), 50),
            answer(206, Some((100, 149, Some(999))), 50),
            answer(206, None, 50),
            answer(206, Some((100, 149, Some(1000))), 49),
            answer(200, None, 50),
            answer(416, None, 0),
            answer(500, None, 0),
        ] {
            assert!(
                matches!(ok(wrong.clone()), Err(RunError::Failed(_))),
                "{wrong:?}"
            );
        }
        assert_eq!(
            ok(answer(404, None, 10)),
            Err(RunError::NotServed("HTTP 404".into()))
        );
        // The whole image as one run: a server that ignores the range answers it right.
        assert_eq!(
            run_body(answer(200, None, 1000), 0, 1000, 1000).map(|b| b.len()),
            Ok(1000)
        );
    }
}
