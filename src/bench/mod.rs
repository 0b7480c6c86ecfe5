//! `stampede bench`: measure a boot server the way a deployment would load it.
//!
//! `storm` simulates N PXE machines powering on at once (or over a ramp) on one interface: each
//! runs the real DHCP, TFTP and HTTP client cores, finds the server by broadcast, downloads its
//! network boot program, its iPXE script and every file the script names, and verifies each file
//! byte for byte (SHA-256) against a reference copy. It works against any server (Stampede or a
//! peer such as dnsmasq + nginx), is bounded by a machine count and a deadline, and exits 0 only
//! when every machine booted.
use std::{
    collections::HashMap,
    io::{IsTerminal as _, Read as _},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use sha2::{Digest as _, Sha256};
use stampede_proto::tftp::{ClientConfig as TftpConfig, OptionSet};
use tokio::sync::mpsc;

mod net;
mod report;
mod storm;

pub use report::Summary;
use storm::{Ctx, Machine, Progress, Reference};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A boot storm: N simulated PXE machines boot at once from the server on IFACE.
    Storm(StormArgs),
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
    /// Runtime threads driving the machines.
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
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
    let (records, elapsed, reordered) = runtime.block_on(async {
        let dhcp = net::dhcp_socket(&args.iface)?;
        let epoch = Instant::now();
        let ctx = Arc::new(Ctx {
            epoch,
            deadline: epoch + Duration::from_secs_f64(args.deadline),
            dhcp,
            net: net::LocalNet::new(&args.iface),
            tftp,
            until: args.until,
            loss: args.loss,
            reorder: args.reorder,
            references,
            progress: Progress::default(),
        });
        // Replies are demultiplexed by chaddr to the machine that owns it.
        let mut routes = HashMap::with_capacity(args.clients);
        let mut machines = Vec::with_capacity(args.clients);
        let mut rng = 0x5354_414d_5045_4445u64 ^ u64::from(args.mac_prefix[2]);
        for index in 0..args.clients {
            let mac = storm::machine_mac(args.mac_prefix, index);
            let (tx, rx) = mpsc::unbounded_channel();
            routes.insert(mac, tx);
            let seed = stampede_proto::dhcp::splitmix64(&mut rng);
            let offset = if args.clients > 1 {
                args.ramp * index as f64 / (args.clients - 1) as f64
            } else {
                0.0
            };
            let machine = Machine {
                index,
                mac,
                bios: (index as f64 + 0.5) / (args.clients as f64) < args.bios_share,
                start: epoch + Duration::from_secs_f64(offset),
                seed,
            };
            machines.push((machine, rx));
        }
        let dispatcher = tokio::spawn(dispatch(ctx.clone(), routes));
        let ticker = tokio::spawn(progress(ctx.clone(), args.clients));
        let handles: Vec<_> = machines
            .into_iter()
            .map(|(m, rx)| tokio::spawn(storm::run(ctx.clone(), m, rx)))
            .collect();
        let mut records = Vec::with_capacity(handles.len());
        for h in handles {
            records.push(h.await.context("a simulated machine panicked")?);
        }
        let elapsed = epoch.elapsed().as_secs_f64();
        dispatcher.abort();
        ticker.abort();
        let _ = dispatcher.await;
        let _ = ticker.await;
        let reordered = ctx.progress.reordered.load(Ordering::Relaxed);
        // The last reference: dropping it removes the routes (LocalNet's Drop).
        drop(ctx);
        anyhow::Ok((records, elapsed, reordered))
    })?;
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
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, summary.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// Hands each DHCP reply to the machine whose `chaddr` it carries; replies for no machine (or
/// malformed ones) are counted nowhere and dropped, like a NIC filtering on its MAC.
async fn dispatch(ctx: Arc<Ctx>, routes: HashMap<[u8; 6], mpsc::UnboundedSender<Vec<u8>>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, _)) = ctx.dhcp.recv_from(&mut buf).await else {
            continue;
        };
        // BOOTP: op(1) htype(1) hlen(1) hops(1) xid(4) secs(2) flags(2) 4 addresses, chaddr.
        if n < 240 || buf[0] != 2 {
            continue;
        }
        let mac: [u8; 6] = buf[28..34].try_into().expect("6 bytes");
        if let Some(tx) = routes.get(&mac) {
            let _ = tx.send(buf[..n].to_vec());
        }
    }
}

/// A progress bar on a terminal, a line every 5 s otherwise.
async fn progress(ctx: Arc<Ctx>, total: usize) {
    let p = &ctx.progress;
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
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
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
                ctx.epoch.elapsed().as_secs_f64()
            );
        }
    }
}
