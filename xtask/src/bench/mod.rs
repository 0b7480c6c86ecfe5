//! `cargo xtask bench <storm|dhcp|tftp|http|flood>`: the same load against Stampede and against
//! peers from Debian's packages, in one run, on one lab link whose ceiling is measured first.
//!
//! The lab is two namespaces joined by a veth: the server side (198.19.0.1/16) runs the server
//! under test, the client side runs the load: `stampede bench storm` (simulated PXE machines;
//! see `src/bench`), and independent generators from Debian: Kea's `perfdhcp` for DHCP rates
//! ([`perfdhcp`]) and `wrk` for HTTP ([`http`]). Peers: dnsmasq for DHCP and TFTP (the usual
//! open-source boot server), tftpd-hpa and atftpd for TFTP, nginx for HTTP. Each run writes its
//! JSON (and the storm's SVG) under `target/bench/<date>/` and a summary with ratios, the exact
//! commands, the date and the machine.
//!
//! Bounded: every storm has a machine count and a deadline; servers are stopped after each run;
//! namespaces, processes and the neighbour-table setting are restored on drop, also on failure.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use stampede_lab::{Netns, Process, pseudo_random, veth_pair};

mod http;
mod perfdhcp;
mod root;
mod rootfs_format;
mod server;

use server::{
    Server, known_only_config, start_dnsmasq, start_nginx, start_nginx_at, start_peers,
    start_stampede, start_tftp_peer,
};

const USAGE: &str = "\
usage: cargo xtask bench <storm|dhcp|tftp|http|flood> [--clients N[,N..]] [--deadline SECS] [--peers LIST]
       cargo xtask bench root-format [--trees small,debian] [--runs N]
       cargo xtask bench root [--clients N,..] [--size-mib MIB] [--parallel K,..] [--deadline SECS]

  storm  the whole boot: DHCP, TFTP of a 1 MiB boot program, DHCP as iPXE, script, 32 MiB over HTTP
  dhcp   DORA only (the storm stopped after DHCP)
  tftp   DHCP then the 1 MiB boot program over TFTP; with --windowsize 1,16,64
  http   wrk with --connections keep-alive connections fetching one 32 MiB file for --duration
         seconds, from Stampede and from nginx (sendfile), same number of workers
  flood  the storm alone, then again while a flood of DISCOVERs from random MACs runs on the same
         link; Stampede runs with XDP in known-only mode (the storm's machines are its fleet)
  root   diskless machines fetch a 128 MiB root at once: manifest and chunks from `stampede boot
         --root`, verified; the same image as one file from nginx (`cargo xtask bench root --help`)
  root-format  a diskless root as Stampede's erofs, mkfs.erofs (plain, lz4hc) and squashfs
         (gzip, xz, zstd, lz4): size, build time, node CPU of a cold read (no lab link)
options:
  --clients N,..    machine counts, one storm each (default: storm 100,1000; dhcp 1000,10000; tftp 64)
  --deadline SECS   per storm (default 300)
  --peers LIST      servers to run (default all): storm, dhcp, flood: stampede,dnsmasq;
                    tftp: stampede,dnsmasq,tftpd-hpa,atftpd (the last two get DHCP from
                    dnsmasq; tftpd-hpa grants no windowsize: its clients go lock-step);
                    http: stampede,nginx
  --connections N   `http`: wrk's connections (default 1000)
  --duration SECS   `http`: seconds per server (default 15)
  --workers N       `http`: server workers (default: one per core)
  --windowsize W,.. TFTP windowsizes for `tftp` (default 1,16,64)
  --loss P          lose this share of DHCP/TFTP datagrams each way (0.05 = 5%; this kernel has no
                    netem, so the simulated machines drop them)
  --reorder P       deliver this share of the TFTP datagrams machines receive after the next one";

const SERVER_IP: &str = "198.19.0.1";
const CLIENT_PROBE_IP: &str = "198.19.255.254";
const BOOT_PROGRAM: usize = 1 << 20;
const KERNEL: usize = 16 << 20;
const INITRD: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Storm,
    Dhcp,
    Tftp,
    Http,
    Flood,
}

impl Kind {
    /// The servers this kind can run, the default set.
    fn peers(self) -> &'static [&'static str] {
        match self {
            Kind::Http => &["stampede", "nginx"],
            Kind::Tftp => &["stampede", "dnsmasq", "tftpd-hpa", "atftpd"],
            _ => &["stampede", "dnsmasq"],
        }
    }
}

#[derive(Debug)]
struct Options {
    kind: Kind,
    clients: Vec<usize>,
    deadline: u64,
    peers: Vec<String>,
    windowsizes: Vec<u16>,
    loss: Option<f64>,
    reorder: Option<f64>,
    connections: usize,
    duration: u64,
    workers: usize,
}

fn list<T: std::str::FromStr>(text: &str, what: &str) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("bad {what}: {v:?}"))
        })
        .collect()
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let kind = match args.first().map(String::as_str) {
        Some("storm") => Kind::Storm,
        Some("dhcp") => Kind::Dhcp,
        Some("tftp") => Kind::Tftp,
        Some("flood") => Kind::Flood,
        Some("http") => Kind::Http,
        _ => bail!("{USAGE}"),
    };
    let mut o = Options {
        kind,
        clients: match kind {
            Kind::Storm => vec![100, 1000],
            Kind::Dhcp => vec![1000, 10000],
            Kind::Tftp => vec![64],
            Kind::Flood => vec![200],
            Kind::Http => vec![1],
        },
        deadline: 300,
        peers: kind.peers().iter().map(|p| p.to_string()).collect(),
        windowsizes: vec![1, 16, 64],
        loss: None,
        reorder: None,
        connections: 1000,
        duration: 15,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--clients" => o.clients = list(value, "machine count")?,
            "--deadline" => o.deadline = value.parse().context("--deadline")?,
            "--peers" => o.peers = list(value, "peer")?,
            "--windowsize" => o.windowsizes = list(value, "windowsize")?,
            "--loss" => o.loss = Some(value.parse().context("--loss")?),
            "--reorder" => o.reorder = Some(value.parse().context("--reorder")?),
            "--connections" => o.connections = value.parse().context("--connections")?,
            "--duration" => o.duration = value.parse().context("--duration")?,
            "--workers" => o.workers = value.parse().context("--workers")?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if o.clients.iter().any(|&n| n == 0 || n > 60_000) {
        bail!("--clients: 1 to 60000 machines (the lab's /16 pool)");
    }
    for p in &o.peers {
        if !kind.peers().contains(&p.as_str()) {
            bail!("unknown peer {p:?} ({})", kind.peers().join(", "));
        }
    }
    if o.connections == 0 || o.duration == 0 || o.duration > 600 || o.workers == 0 {
        bail!("--connections, --workers: at least 1; --duration: 1 to 600 s");
    }
    Ok(o)
}

/// Host limits a storm on a veth outgrows. The ARP table must hold every simulated machine: the
/// default `gc_thresh3` of 1024 drops the server's replies to the 1025th machine ("neighbour
/// table overflow"). And a veth hands every frame to the receiving CPU's backlog queue, which
/// drops beyond `netdev_max_backlog` (1000 by default; `/proc/net/softnet_stat`'s second column):
/// a thousand HTTP transfers at once overflow it, the losses make TCP retransmit and BBR slow a
/// flow to a crawl, and a storm's last machine waited over a minute for it (2026-12-07). Both are
/// global, not per namespace; the old values come back on drop.
struct NeighbourTable {
    saved: Vec<(String, String)>,
}

impl NeighbourTable {
    fn raise(machines: usize) -> anyhow::Result<Self> {
        let mut saved = Vec::new();
        let want = (machines * 2 + 4096) as u64;
        let neigh = "/proc/sys/net/ipv4/neigh/default";
        for (path, value) in [
            (format!("{neigh}/gc_thresh1"), want / 4),
            (format!("{neigh}/gc_thresh2"), want / 2),
            (format!("{neigh}/gc_thresh3"), want),
            ("/proc/sys/net/core/netdev_max_backlog".to_owned(), 65536),
        ] {
            let old = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            if old.trim().parse::<u64>().unwrap_or(0) < value {
                fs::write(&path, value.to_string()).with_context(|| format!("writing {path}"))?;
                saved.push((path, old.trim().to_owned()));
            }
        }
        Ok(Self { saved })
    }
}

impl Drop for NeighbourTable {
    fn drop(&mut self) {
        for (path, old) in self.saved.drain(..).rev() {
            let _ = fs::write(&path, old);
        }
    }
}

struct Files {
    root: PathBuf,
    ipxe: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    verify: PathBuf,
    www: PathBuf,
}

fn files(work: &Path) -> anyhow::Result<Files> {
    let f = Files {
        root: work.to_path_buf(),
        ipxe: work.join("ipxe"),
        kernel: work.join("files/vmlinuz"),
        initrd: work.join("files/initrd.img"),
        verify: work.join("verify"),
        www: work.join("www"),
    };
    for dir in [&f.ipxe, &f.verify, &f.www, &work.join("files")] {
        fs::create_dir_all(dir)?;
    }
    let contents = [
        ("snponly.efi", pseudo_random(BOOT_PROGRAM, 11)),
        ("undionly.kpxe", pseudo_random(BOOT_PROGRAM, 12)),
        ("vmlinuz", pseudo_random(KERNEL, 13)),
        ("initrd.img", pseudo_random(INITRD, 14)),
    ];
    for (name, bytes) in &contents {
        fs::write(f.verify.join(name), bytes)?;
        let home = match *name {
            "vmlinuz" | "initrd.img" => work.join("files"),
            _ => f.ipxe.clone(),
        };
        fs::write(home.join(name), bytes)?;
        if matches!(*name, "vmlinuz" | "initrd.img") {
            fs::write(f.www.join(name), bytes)?;
        }
    }
    // What nginx serves iPXE after dnsmasq's answer names it (relative names, like a real
    // deployment's script).
    fs::write(
        f.www.join("boot.ipxe"),
        "#!ipxe\nkernel vmlinuz initrd=initrd.img console=ttyS0\ninitrd initrd.img\nboot\n",
    )?;
    // dnsmasq and nginx drop privileges: everything must be world-readable.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(work)
        .status()?;
    Ok(f)
}

/// Server and client namespaces joined by a veth.
struct Lab {
    server: Netns,
    client: Netns,
    server_if: String,
    client_if: String,
}

fn lab() -> anyhow::Result<Lab> {
    let server = Netns::new("bsrv")?;
    let client = Netns::new("bcli")?;
    for ns in [&server, &client] {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    let (server_if, client_if) = veth_pair(&server, &client)?;
    server.ip(&["addr", "add", &format!("{SERVER_IP}/16"), "dev", &server_if])?;
    Ok(Lab {
        server,
        client,
        server_if,
        client_if,
    })
}

/// The lab link's ceiling: iperf3, server to client (the direction boot files go), 4 streams.
fn ceiling(lab: &Lab) -> anyhow::Result<f64> {
    let mut command = lab.server.command("iperf3");
    command
        .args(["-s", "-1", "-B", SERVER_IP])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Process::spawn(command).context("iperf3 (run `cargo xtask setup`)")?;
    lab.client.ip(&[
        "addr",
        "add",
        &format!("{CLIENT_PROBE_IP}/16"),
        "dev",
        &lab.client_if,
    ])?;
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.client.run(
        "iperf3",
        &["-c", SERVER_IP, "-R", "-P", "4", "-t", "5", "-J"],
        Duration::from_secs(30),
    );
    lab.client.ip(&[
        "addr",
        "del",
        &format!("{CLIENT_PROBE_IP}/16"),
        "dev",
        &lab.client_if,
    ])?;
    drop(server);
    let out = out?.ok()?;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).context("iperf3 JSON")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")
}

/// One storm's summary, from its JSON.
#[derive(Debug)]
struct Result_ {
    server: String,
    clients: usize,
    booted: u64,
    time_to_last: Option<f64>,
    elapsed: f64,
    p50_boot: Option<f64>,
    p99_boot: Option<f64>,
    mib_s: f64,
    server_cpu: Option<f64>,
    bench_cpu: f64,
    failures: String,
    command: String,
    /// The storm's JSON report.
    json: PathBuf,
}

#[allow(clippy::too_many_arguments, reason = "one call site per bench kind")]
fn run_storm(
    lab: &Lab,
    f: &Files,
    binary: &Path,
    out: &Path,
    server: &Server,
    label: &str,
    clients: usize,
    deadline: u64,
    extra: &[String],
) -> anyhow::Result<Result_> {
    // Options other than the MAC prefix name the files: `stampede-1000-until-tftp-windowsize-16`.
    let variant: Vec<&str> = extra
        .iter()
        .take(extra.len().saturating_sub(2))
        .map(|a| a.trim_start_matches('-'))
        .collect();
    let tag = [label.replace('+', "-"), clients.to_string()]
        .into_iter()
        .chain(variant.iter().map(|v| v.to_string()))
        .collect::<Vec<_>>()
        .join("-");
    let json = out.join(format!("{tag}.json"));
    let svg = out.join(format!("{tag}.svg"));
    let mut args: Vec<String> = vec![
        "bench".into(),
        "storm".into(),
        "--iface".into(),
        lab.client_if.clone(),
        "--clients".into(),
        clients.to_string(),
        "--deadline".into(),
        deadline.to_string(),
        "--verify-dir".into(),
        f.verify.display().to_string(),
        "--verify".into(),
        "compare".into(),
        "--label".into(),
        label.into(),
        "--json".into(),
        json.display().to_string(),
        "--plot".into(),
        svg.display().to_string(),
    ];
    for pid in &server.pids {
        args.push("--server-pid".into());
        args.push(pid.to_string());
    }
    args.extend(extra.iter().cloned());
    let command = format!("stampede {}", args.join(" "));
    let what = format!("bench: {label}, {clients} machines");
    let report = run_bench(lab, binary, &args, &json, deadline, &what)?;
    let failures = joined_counts(&report["failures_by_stage"]);
    Ok(Result_ {
        server: label.to_owned(),
        clients,
        booted: report["booted"].as_u64().unwrap_or(0),
        time_to_last: report["time_to_last_boot_s"].as_f64(),
        elapsed: report["elapsed_s"].as_f64().unwrap_or(0.0),
        p50_boot: report["boot"]["p50_ms"].as_f64(),
        p99_boot: report["boot"]["p99_ms"].as_f64(),
        mib_s: report["throughput_mib_s"].as_f64().unwrap_or(0.0),
        server_cpu: report["server"]["cpu_s"].as_f64(),
        bench_cpu: report["client_cpu_s"].as_f64().unwrap_or(0.0),
        failures,
        command,
        json,
    })
}

fn fmt_opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{:.*}", digits, v * scale))
}

/// Runs `stampede <args>` (a bench that writes its JSON report to `json`) in the lab's client
/// namespace, prints its table and returns the report. The storm and root benches share it.
fn run_bench(
    lab: &Lab,
    binary: &Path,
    args: &[String],
    json: &Path,
    deadline: u64,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    eprintln!("xtask: {what}: stampede {}", args.join(" "));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = lab.client.run(
        binary.to_str().context("UTF-8")?,
        &arg_refs,
        Duration::from_secs(deadline + 120),
    )?;
    println!("{}", result.stdout.trim_end());
    Ok(serde_json::from_slice(&fs::read(json).with_context(
        || format!("no report: {}", result.stderr),
    )?)?)
}

/// A report's `{"reason": count, ..}` object as `reason count, ..`.
fn joined_counts(counts: &serde_json::Value) -> String {
    counts
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.first().is_some_and(|a| a == "root-format") {
        return rootfs_format::run(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "root") {
        return root::run(&args[1..]);
    }
    let options = parse(args)?;
    if let Some(reason) = stampede_lab::unavailable_reason() {
        bail!("the bench runs a network-namespace lab: {reason}");
    }
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "stampede"]);
    crate::run(build)?;
    let binary = crate::workspace_root().join("target/release/stampede");
    let date = String::from_utf8(
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%dT%H%MZ")
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let out = crate::workspace_root().join("target/bench").join(&date);
    fs::create_dir_all(&out)?;
    let work = tempdir()?;
    let f = files(work.path())?;
    let largest = options.clients.iter().copied().max().unwrap_or(1);
    let _neigh = NeighbourTable::raise(largest)?;
    let lab = lab()?;
    let ceiling_bps = ceiling(&lab)?;
    println!(
        "lab link ceiling (iperf3 -R -P 4, server to client): {:.2} Gbit/s",
        ceiling_bps / 1e9
    );

    let mut md = String::new();
    let machine = String::from_utf8(Command::new("uname").arg("-srm").output()?.stdout)?;
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l[13..].trim().to_owned())
        })
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "`cargo xtask bench {}` on {date} ({} cores, {cpu}, {})\n",
        args.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        machine.trim()
    );
    let _ = writeln!(
        md,
        "Lab link ceiling (iperf3, server to client, 4 streams): {:.2} Gbit/s = {:.0} MiB/s\n",
        ceiling_bps / 1e9,
        ceiling_bps / 8.0 / 1048576.0
    );

    if options.kind == Kind::Http {
        let http_options = http::HttpOptions {
            connections: options.connections,
            duration: options.duration,
            workers: options.workers,
        };
        let results = http::run(&lab, &f, &binary, &out, &options.peers, http_options)?;
        http::summary(&mut md, &results, http_options);
        return finish(&out, &md);
    }

    let mut results = Vec::new();
    // (storm options, with a flood beside it)
    let runs: Vec<(Vec<String>, bool)> = match options.kind {
        Kind::Storm | Kind::Http => vec![(vec![], false)],
        Kind::Flood => vec![(vec![], false), (vec![], true)],
        Kind::Dhcp => vec![(vec!["--until".into(), "dhcp".into()], false)],
        Kind::Tftp => options
            .windowsizes
            .iter()
            .map(|w| {
                let extra = vec![
                    "--until".into(),
                    "tftp".into(),
                    "--windowsize".into(),
                    w.to_string(),
                ];
                (extra, false)
            })
            .collect(),
    };
    let mut prefix = 0u8;
    for &clients in &options.clients {
        for peer in &options.peers {
            // The storm without a flood, for the flood's duration.
            let mut baseline: Option<f64> = None;
            for (extra, flooding) in &runs {
                prefix = prefix.wrapping_add(1);
                let mut extra = extra.clone();
                if let Some(loss) = options.loss {
                    extra.extend(["--loss".into(), loss.to_string()]);
                }
                if let Some(reorder) = options.reorder {
                    extra.extend(["--reorder".into(), reorder.to_string()]);
                }
                extra.extend(["--mac-prefix".into(), format!("02:53:{prefix:02x}")]);
                let config = if options.kind == Kind::Flood && peer == "stampede" {
                    let macs: Vec<String> = (0..clients)
                        .map(|i| {
                            format!(
                                "02:53:{prefix:02x}:{:02x}:{:02x}:{:02x}",
                                (i >> 16) as u8,
                                (i >> 8) as u8,
                                i as u8
                            )
                        })
                        .collect();
                    Some(known_only_config(&lab, &f, &macs)?)
                } else {
                    None
                };
                let server = if peer == "stampede" {
                    start_stampede(
                        &lab,
                        &f,
                        &binary,
                        &format!("{clients}-{prefix}"),
                        config.as_deref(),
                        &[],
                    )?
                } else if peer == "dnsmasq" {
                    start_peers(&lab, &f, clients)?
                } else {
                    // TFTP-only peers: DHCP from dnsmasq, which names this server's TFTP.
                    let dhcp = start_dnsmasq(&lab, &f, clients, false)?;
                    dhcp.with(start_tftp_peer(&lab, &f, peer, clients)?)
                };
                let label = match peer.as_str() {
                    "dnsmasq" => "dnsmasq+nginx".to_owned(),
                    other => other.to_owned(),
                };
                // The flood outlasts the storm it disturbs (twice the undisturbed time), bounded
                // by the deadline; it stops by itself.
                let flood_for = Duration::from_secs_f64(
                    (baseline.unwrap_or(options.deadline as f64) * 2.0 + 3.0)
                        .min(options.deadline as f64),
                );
                let (r, flood) = std::thread::scope(|scope| {
                    let flood = flooding.then(|| {
                        scope.spawn(|| {
                            lab.client.flood(stampede_lab::flood::FloodConfig::new(
                                &lab.client_if,
                                u64::MAX / 2,
                                flood_for,
                            ))
                        })
                    });
                    let r = run_storm(
                        &lab,
                        &f,
                        &binary,
                        &out,
                        &server,
                        &label,
                        clients,
                        options.deadline,
                        &extra,
                    );
                    (r, flood.map(|h| h.join()))
                });
                let server_out = server.stop();
                let mut r = r?;
                if *flooding {
                    let report = flood
                        .context("flood thread")?
                        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
                    let drops = server_out
                        .lines()
                        .find_map(|l| l.strip_prefix("xdp_drops "))
                        .unwrap_or("(no XDP)")
                        .to_owned();
                    r.server = format!(
                        "{label} under a flood ({:.0}k DISCOVERs/s from random MACs; XDP drops: {drops})",
                        report.packets_per_sec() / 1e3
                    );
                } else {
                    baseline = r.time_to_last.or(baseline);
                    if options.kind == Kind::Flood {
                        r.server = format!("{label} (no flood)");
                        if let Some(loss) = options.loss {
                            r.server = format!("{label} (no flood) --loss {loss}");
                        }
                    } else if extra.len() > 2 {
                        r.server = format!("{label} {}", extra[..extra.len() - 2].join(" "));
                    }
                }
                results.push(r);
            }
        }
    }

    // DORA/s from an independent load generator, against each DHCP server on its own.
    let mut dora = Vec::new();
    if options.kind == Kind::Dhcp {
        for peer in &options.peers {
            let server = if peer == "stampede" {
                start_stampede(&lab, &f, &binary, "perfdhcp", None, &[])?
            } else {
                start_dnsmasq(&lab, &f, perfdhcp::CLIENTS as usize, false)?
            };
            let result = perfdhcp::search(&lab, &out, peer);
            let stopped = server.stop();
            let mut result = result?;
            // Stampede's own count of what reached it and what it answered.
            result.server_counters = stopped
                .lines()
                .find_map(|l| l.strip_prefix("final stats "))
                .map(|line| {
                    line.split_whitespace()
                        .filter(|kv| {
                            [
                                "dhcp_received=",
                                "dhcp_replies=",
                                "kernel_drops=",
                                "dhcp_dropped",
                            ]
                            .iter()
                            .any(|k| kv.starts_with(k))
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                });
            dora.push(result);
        }
    }

    let per_machine = match options.kind {
        Kind::Storm | Kind::Flood => (BOOT_PROGRAM + KERNEL + INITRD) as f64,
        Kind::Tftp => BOOT_PROGRAM as f64,
        Kind::Dhcp | Kind::Http => 0.0,
    };
    let _ = writeln!(
        md,
        "| server | machines | booted | time to last (s) | ceiling time (s) | p50 boot (ms) | p99 boot (ms) | MiB/s | server CPU (s) | bench CPU (s) | failures |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let ceiling_time = per_machine * r.clients as f64 / (ceiling_bps / 8.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.1} | {} |",
            r.server,
            r.clients,
            r.booted,
            r.time_to_last
                .map_or(format!("- (ran {:.0})", r.elapsed), |t| format!("{t:.2}")),
            if per_machine > 0.0 {
                format!("{ceiling_time:.2}")
            } else {
                "-".into()
            },
            fmt_opt(r.p50_boot, 1.0, 0),
            fmt_opt(r.p99_boot, 1.0, 0),
            r.mib_s,
            // tftpd-hpa serves each transfer from a child it does not wait for (SIGCHLD
            // ignored), so the kernel never adds the children's CPU to the parent's.
            if r.server.starts_with("tftpd-hpa") {
                "not counted (children)".to_owned()
            } else {
                fmt_opt(r.server_cpu, 1.0, 1)
            },
            r.bench_cpu,
            if r.failures.is_empty() {
                "-"
            } else {
                &r.failures
            },
        );
    }
    // Ratios, same machine count and same options: Stampede's time over each peer's.
    let _ = writeln!(md);
    for s in results.iter().filter(|r| r.server.starts_with("stampede")) {
        let suffix = s.server.trim_start_matches("stampede");
        for p in results.iter().filter(|r| {
            r.clients == s.clients
                && !r.server.starts_with("stampede")
                && r.server.ends_with(suffix)
        }) {
            match (s.time_to_last, p.time_to_last) {
                (Some(a), Some(b)) => {
                    let _ = writeln!(
                        md,
                        "- {} machines{suffix}: Stampede {a:.2} s, {} {b:.2} s: {:.2}x faster",
                        s.clients,
                        p.server.trim_end_matches(suffix),
                        b / a
                    );
                }
                (Some(a), None) => {
                    let _ = writeln!(
                        md,
                        "- {} machines{suffix}: Stampede {a:.2} s; {} did not boot every machine ({} of {}; {})",
                        s.clients,
                        p.server.trim_end_matches(suffix),
                        p.booted,
                        p.clients,
                        p.failures
                    );
                }
                _ => {}
            }
        }
        if per_machine > 0.0
            && let Some(a) = s.time_to_last
        {
            let ceiling_time = per_machine * s.clients as f64 / (ceiling_bps / 8.0);
            let _ = writeln!(
                md,
                "- {} machines{suffix}: Stampede at {:.2}x the link ceiling's time",
                s.clients,
                a / ceiling_time
            );
        }
    }
    let rows: Vec<(usize, &str, &Path)> = results
        .iter()
        .map(|r| (r.clients, r.server.as_str(), r.json.as_path()))
        .collect();
    plots(&mut md, &binary, &out, "storm", &rows);
    let _ = writeln!(md, "\nCommands (in the client namespace):\n");
    for r in &results {
        let _ = writeln!(md, "    {}", r.command);
    }
    if !dora.is_empty() {
        perfdhcp::summary(&mut md, &dora);
    }
    finish(&out, &md)
}

/// One plot per machine count with every row of that count on the same axes (`stampede bench
/// plot`), embedded in the summary as `PREFIX-N.svg`; rows are (machines, label, JSON report).
pub(super) fn plots(
    md: &mut String,
    binary: &Path,
    out: &Path,
    prefix: &str,
    rows: &[(usize, &str, &Path)],
) {
    let mut counts: Vec<usize> = rows.iter().map(|r| r.0).collect();
    counts.sort_unstable();
    counts.dedup();
    for clients in counts {
        let name = format!("{prefix}-{clients}.svg");
        let mut plot = Command::new(binary);
        plot.args(["bench", "plot", "--out"]).arg(out.join(&name));
        for (_, label, json) in rows.iter().filter(|r| r.0 == clients) {
            plot.arg(format!("{label}={}", json.display()));
        }
        match plot.output() {
            Ok(done) if done.status.success() => {
                let _ = writeln!(
                    md,
                    "\n![{clients} machines, every server of the run]({name})"
                );
            }
            Ok(done) => eprintln!(
                "xtask: no plot for {clients} machines: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            ),
            Err(err) => eprintln!("xtask: no plot for {clients} machines: {err}"),
        }
    }
}

/// Writes the summary beside the run's reports and prints it.
fn finish(out: &Path, md: &str) -> anyhow::Result<()> {
    fs::write(out.join("summary.md"), md)?;
    println!("\n{md}");
    println!("reports: {}", out.display());
    Ok(())
}

/// A scratch directory under target/ (tmpfs-sized payloads would not fit /tmp on some hosts).
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let dir = crate::workspace_root()
        .join("target/bench/work")
        .join(std::process::id().to_string());
    fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}
