//! `stampede bench`: measure a boot server the way a deployment would load it.
//!
//! `storm` simulates N PXE machines powering on at once (or over a ramp) on one interface: each
//! runs the real DHCP, TFTP and HTTP client cores, finds the server by broadcast, downloads its
//! network boot program, its iPXE script and every file the script names, and verifies each file
//! byte for byte (SHA-256) against a reference copy. It works against any server (Stampede or a
//! peer such as dnsmasq + nginx), is bounded by a machine count and a deadline, and exits 0 only
//! when every machine booted.
//!
//! `root` simulates N diskless machines fetching their root at once: the signed manifest and
//! every chunk, each verified, or (`--whole-file`) the whole image as one file (`root.rs`).
use std::{
    collections::HashMap,
    io::{IsTerminal as _, Read as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use sha2::{Digest as _, Sha256};
use stampede_dataplane::sys::uring_client::{ClientRing, ClientRingConfig};
use stampede_proto::tftp::{ClientConfig as TftpConfig, OptionSet};

mod net;
mod plot;
mod report;
mod root;
mod storm;

pub use report::Summary;
use storm::{Ctx, Machine, Progress, Reference};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A boot storm: N simulated PXE machines boot at once from the server on IFACE.
    Storm(StormArgs),
    /// Diskless roots: N simulated machines fetch and verify a signed manifest and its chunks
    /// (or one whole image) from the server at once.
    Root(root::RootArgs),
    /// Draws storms of one run on the same axes (machines booted over time, latency per
    /// stage) from their JSON reports (`bench storm --json`).
    Plot(PlotArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// The SVG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Storm reports, each `REPORT.json` or `LABEL=REPORT.json` (LABEL replaces the report's own;
    /// the last `=` separates them).
    #[arg(required = true)]
    pub reports: Vec<String>,
}

/// The TFTP options a simulated ROM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TftpProfile {
    /// EDK2's UEFI PXE: blksize 1468, tsize, windowsize 1 (lock-step).
    Edk2,
    /// iPXE: blksize 1432, tsize.
    Ipxe,
    /// RFC 1350: no options, 512-byte blocks.
    Plain,
}

/// How downloads are checked against their reference copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verify {
    Sha256,
    Compare,
}

#[derive(Debug, clap::Args)]
pub struct StormArgs {
    /// Interface the simulated machines are on (run the bench in the namespace that has it).
    #[arg(long)]
    pub iface: String,
    /// Machines to simulate.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Seconds after which every machine still booting counts as failed.
    #[arg(long, default_value_t = 120.0)]
    pub deadline: f64,
    /// Spread power-on evenly over this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// Share of machines that are legacy BIOS PXE (the rest are UEFI x64), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub bios_share: f64,
    /// TFTP options the ROMs ask for.
    #[arg(long, value_enum, default_value = "edk2")]
    pub tftp: TftpProfile,
    /// Ask for this TFTP windowsize (RFC 7440) instead of the profile's.
    #[arg(long)]
    pub windowsize: Option<u16>,
    /// Reference copies of the files the machines download (matched by file name); every
    /// download is verified against its copy's length and SHA-256.
    #[arg(long)]
    pub verify_dir: PathBuf,
    /// How downloads are verified: `sha256` hashes every byte; `compare` checks HTTP downloads
    /// byte for byte against the reference copy held in memory (as strict, much cheaper: on a
    /// small machine hashing thousands of kernels would make the bench its own bottleneck).
    /// TFTP downloads are always hashed.
    #[arg(long, value_enum, default_value = "sha256")]
    pub verify: Verify,
    /// The server's processes (repeat for several, e.g. dnsmasq and nginx's workers): their
    /// CPU time and memory over the storm are reported, summed.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Lose this share (0 to 0.5) of DHCP and TFTP datagrams in each direction, as a lossy link
    /// would (the machines drop them; TCP is not touched).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Reorder this share (0 to 0.5) of the TFTP datagrams machines receive: each one drawn is
    /// held back and delivered after the next datagram (or 10 ms later if none comes first), as
    /// netem's `reorder` would on a link (this kernel has no netem).
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Stop each machine after this stage (`dhcp`: DORA only; `tftp`: through the boot
    /// program) to measure one protocol; default: the whole boot.
    #[arg(long, value_enum, default_value = "files")]
    pub until: storm::Stage,
    /// Name of this run in the report (e.g. the server under test).
    #[arg(long, default_value = "server")]
    pub label: String,
    /// First three bytes of the machines' MACs (the index fills the rest).
    #[arg(long, default_value = "02:53:00", value_parser = parse_prefix)]
    pub mac_prefix: [u8; 3],
    /// Threads driving the machines, each with its own io_uring (machine i runs on thread
    /// i % threads). One keeps up with a storm's DHCP and TFTP; verifying HTTP bodies at link
    /// speed takes about a core per 1.5 GB/s.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Write the report (summary and every machine's stages) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw completions over time and per-stage latency as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn parse_prefix(text: &str) -> Result<[u8; 3], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?}: want three hex bytes like 02:53:00"))?;
    let prefix: [u8; 3] = bytes
        .try_into()
        .map_err(|_| format!("{text:?}: want exactly three bytes"))?;
    if prefix[0] & 1 != 0 {
        return Err(format!("{text:?} is a multicast prefix"));
    }
    Ok(prefix)
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Storm(args) => {
            let summary = storm(&args)?;
            if summary.failed > 0 {
                bail!(
                    "{} of {} machines did not boot",
                    summary.failed,
                    summary.clients
                );
            }
            Ok(())
        }
        BenchCommand::Plot(args) => {
            let mut series = Vec::new();
            for spec in &args.reports {
                let (label, path) = match spec.rsplit_once('=') {
                    Some((label, path)) if !Path::new(spec).exists() => (Some(label), path),
                    _ => (None, spec.as_str()),
                };
                let text = std::fs::read(path).with_context(|| format!("reading {path}"))?;
                let report: serde_json::Value = serde_json::from_slice(&text)
                    .with_context(|| format!("{path} is not a JSON report"))?;
                let mut one = plot::StormSeries::from_json(&report)
                    .with_context(|| format!("{path} is not a storm report"))?;
                if let Some(label) = label {
                    one.label = label.to_owned();
                }
                series.push(one);
            }
            std::fs::write(&args.out, plot::storm_svg(&series)?)
                .with_context(|| format!("writing {}", args.out.display()))
        }
        BenchCommand::Root(args) => {
            let summary = root::root(&args)?;
            if summary.failed > 0 {
                bail!(
                    "{} of {} machines did not verify their root",
                    summary.failed,
                    summary.clients
                );
            }
            Ok(())
        }
    }
}

/// Length and SHA-256 of every regular file in `dir`, by name.
fn references(dir: &Path, keep: bool) -> anyhow::Result<HashMap<String, Reference>> {
    let mut refs = HashMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut file = std::fs::File::open(entry.path())
            .with_context(|| format!("opening {}", entry.path().display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        let mut content = Vec::new();
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if keep {
                content.extend_from_slice(&buf[..n]);
            }
            len += n as u64;
        }
        refs.insert(
            entry.file_name().to_string_lossy().into_owned(),
            Reference {
                len,
                sha256: hasher.finalize().into(),
                content: keep.then(|| content.into()),
            },
        );
    }
    if refs.is_empty() {
        bail!(
            "{}: no reference files to verify downloads against",
            dir.display()
        );
    }
    Ok(refs)
}

/// Every machine holds one socket at a time (UDP for TFTP, then TCP for HTTP); the default soft
/// limit of 1024 open files would cap a storm at about a thousand machines.
fn raise_open_files(clients: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = (clients as u64 + 256).max(soft);
    if want > hard {
        eprintln!(
            "bench: {clients} machines may need {want} open files; the hard limit is {hard} \
             (machines beyond it fail with EMFILE)"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard)?;
    Ok(())
}

pub fn storm(args: &StormArgs) -> anyhow::Result<Summary> {
    if args.clients == 0 || args.clients > 1 << 24 {
        bail!("--clients must be 1 to 16777216");
    }
    if !(0.0..=0.5).contains(&args.loss) {
        bail!("--loss must be between 0 and 0.5");
    }
    if !(0.0..=0.5).contains(&args.reorder) {
        bail!("--reorder must be between 0 and 0.5");
    }
    if !(0.0..=1.0).contains(&args.bios_share) {
        bail!("--bios-share must be between 0 and 1");
    }
    let valid = args.deadline.is_finite() && args.ramp.is_finite() && args.ramp >= 0.0;
    if !valid || args.deadline <= args.ramp {
        bail!("--deadline must be positive and longer than --ramp");
    }
    let references = references(&args.verify_dir, args.verify == Verify::Compare)?;
    raise_open_files(args.clients)?;
    let mut tftp = match args.tftp {
        TftpProfile::Edk2 => TftpConfig::edk2(),
        TftpProfile::Ipxe => TftpConfig::ipxe(),
        TftpProfile::Plain => TftpConfig::plain(),
    };
    if let Some(w) = args.windowsize {
        if w == 0 {
            bail!("--windowsize must be at least 1");
        }
        tftp.options = OptionSet {
            windowsize: Some(w),
            ..tftp.options
        };
    }
    let server_before = args
        .server_pid
        .iter()
        .map(|&pid| {
            report::proc_usage(pid)
                .map(|u| u.0)
                .with_context(|| format!("cannot read /proc of server pid {pid}"))
        })
        .sum::<anyhow::Result<f64>>()?;
    let cpu_before = report::proc_usage(std::process::id()).map_or(0.0, |u| u.0);
    // Dropped after every thread's ring has closed its sockets: its Drop removes the routes.
    let local = std::sync::Mutex::new(net::LocalNet::new(&args.iface));
    let threads = args.threads.clamp(1, 64);
    let epoch = Instant::now();
    let ctx = Ctx {
        epoch,
        deadline: epoch + Duration::from_secs_f64(args.deadline),
        tftp,
        until: args.until,
        loss: args.loss,
        reorder: args.reorder,
        references,
        progress: Arc::new(Progress::default()),
    };
    let mut rng = 0x5354_414d_5045_4445u64 ^ u64::from(args.mac_prefix[2]);
    let machines: Vec<Machine> = (0..args.clients)
        .map(|index| {
            let seed = stampede_proto::dhcp::splitmix64(&mut rng);
            let offset = if args.clients > 1 {
                args.ramp * index as f64 / (args.clients - 1) as f64
            } else {
                0.0
            };
            Machine {
                index,
                mac: storm::machine_mac(args.mac_prefix, index),
                bios: (index as f64 + 0.5) / (args.clients as f64) < args.bios_share,
                start: epoch + Duration::from_secs_f64(offset),
                seed,
            }
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (progress, stop) = (ctx.progress.clone(), stop.clone());
        let total = args.clients;
        std::thread::spawn(move || show_progress(&progress, &stop, epoch, total))
    };
    // Machine i runs on thread i % threads, each thread with its own ring and DHCP socket:
    // the machines ask for broadcast replies, which reach every socket bound to port 68, and
    // each thread keeps those for its own machines.
    let mut shares: Vec<Vec<Machine>> = (0..threads).map(|_| Vec::new()).collect();
    for m in machines {
        shares[m.index % threads].push(m);
    }
    let results: Vec<anyhow::Result<(Vec<storm::MachineRecord>, u64)>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .into_iter()
                .map(|share| {
                    let (ctx, local, iface) = (&ctx, &local, &args.iface);
                    scope.spawn(move || run_share(ctx, local, iface, share))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked")))
                })
                .collect()
        });
    let elapsed = epoch.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    drop(local);
    let mut records = Vec::with_capacity(args.clients);
    let mut exhaustions = 0;
    for result in results {
        let (share, n) = result?;
        records.extend(share);
        exhaustions += n;
    }
    records.sort_by_key(|r| r.index);
    let reordered = ctx.progress.reordered.load(Ordering::Relaxed);
    let cpu = report::proc_usage(std::process::id()).map_or(0.0, |u| u.0) - cpu_before;
    let server = if args.server_pid.is_empty() {
        None
    } else {
        let after: Vec<_> = args
            .server_pid
            .iter()
            .filter_map(|&pid| report::proc_usage(pid))
            .collect();
        Some(report::Usage {
            pids: args.server_pid.clone(),
            cpu_s: after.iter().map(|u| u.0).sum::<f64>() - server_before,
            rss_peak_mib: after.iter().map(|u| u.1).sum(),
            rss_end_mib: after.iter().map(|u| u.2).sum(),
        })
    };
    let mut summary = Summary::new(args.label.clone(), records, elapsed, cpu, server);
    summary.reordered_datagrams = reordered;
    summary.client_buffer_exhaustions = exhaustions;
    summary.http_retries = ctx.progress.http_retries.load(Ordering::Relaxed);
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::storm_svg(&[plot::StormSeries::of(&summary)])?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// One bench thread: its own ring and DHCP socket, driving its share of the machines.
fn run_share(
    ctx: &Ctx,
    local: &std::sync::Mutex<net::LocalNet>,
    iface: &str,
    machines: Vec<Machine>,
) -> anyhow::Result<(Vec<storm::MachineRecord>, u64)> {
    // Sized for a storm: a burst of replies for thousands of machines between two turns, and
    // 64 KiB of TCP buffer per machine as before, now as one 128 KiB buffer per two machines (at
    // least 256, at most 4096: 512 MiB). The buffers are consumed incrementally, so a 1448-byte
    // receive takes 1448 bytes instead of a whole buffer; large ones mean fewer receives cut
    // short at a buffer's end. A receive that finds every buffer full ends, and its connection
    // waits for the next turn.
    let tcp_buffers = (machines.len() / 2).next_power_of_two().clamp(256, 4096) as u16;
    let mut ring = ClientRing::new(ClientRingConfig {
        ring_entries: 4096,
        udp_buffers: 16384,
        udp_buffer_size: 2048,
        tcp_buffers,
        tcp_buffer_size: 128 * 1024,
    })
    .context("starting the bench's io_uring")?;
    let dhcp = ring
        .sockets()
        .add_udp(net::dhcp_socket(iface)?)
        .context("the DHCP socket")?;
    let records = storm::drive(ctx, &mut ring, local, dhcp, machines)?;
    let exhaustions = ring.stats().buffer_exhaustions;
    Ok((records, exhaustions))
}

/// A progress bar on a terminal, a line every 5 s otherwise, until `stop`.
fn show_progress(p: &Progress, stop: &AtomicBool, epoch: Instant, total: usize) {
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(total as u64);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} booted {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut ticks = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        ticks += 1;
        let stages: Vec<String> = storm::Stage::ALL
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.name(),
                    p.in_stage[*s as usize].load(Ordering::Relaxed)
                )
            })
            .collect();
        let msg = format!(
            "| {} | failed {} | {:.0} MiB",
            stages.join(" "),
            p.failed.load(Ordering::Relaxed),
            p.bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
        );
        let booted = p.booted.load(Ordering::Relaxed);
        if tty {
            bar.set_position(booted);
            bar.set_message(msg);
        } else if ticks.is_multiple_of(25) {
            eprintln!(
                "bench: {:.0} s: {booted}/{total} booted {msg}",
                epoch.elapsed().as_secs_f64()
            );
        }
    }
    bar.finish_and_clear();
}
