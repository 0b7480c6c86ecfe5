//! `cargo xtask bench root`: diskless machines fetching a 128 MiB root at once, from Stampede and
//! from nginx, in one lab run (issue 16, "Measure").
//!
//! - The root: an OCI image layout (umoci, as root, cached in the lab cache) made of the lab's
//!   small image (`stampede_lab::root_image::small_image`: Debian's kernel, the modules a root
//!   needs, busybox, an init) plus a layer of pseudo-random (incompressible) files of mixed
//!   sizes, so the erofs image Stampede builds from it is `--size-mib` MiB.
//! - Stampede: `stampede boot --root oci:LAYOUT:bench` (release build) in the lab's server
//!   namespace; it builds the erofs image, cuts it into 1 MiB chunks and signs the manifest
//!   (kept between runs in the lab cache: a rebuild only when the image or the node agent
//!   changes). Machines run `stampede bench root`: the signed manifest, verified with the
//!   appliance's key, then every chunk over 6 kept-alive connections, each chunk's SHA-256
//!   checked.
//! - The peer, Warewulf's way: nginx (sendfile, one worker per core, like Stampede's workers)
//!   serving the same erofs image as one file (Stampede's chunks concatenated in manifest
//!   order), which every machine downloads over one connection and checks against its SHA-256.
//!
//! Server CPU is read from `/proc` for the server's process tree over each run; the bench's
//! own CPU beside it (both share the machine's cores). Reports, the exact commands and ratios in
//! `target/bench/<date>-root/`.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use stampede_lab::{Process, pseudo_random, root_image, wait_for};

use super::{Lab, NeighbourTable, SERVER_IP, Server, ceiling, lab, start_nginx_at, tempdir};

const USAGE: &str = "\
usage: cargo xtask bench root [--clients N,..] [--size-mib MIB] [--parallel K,..] [--run R,..]
                              [--deadline SECS] [--peers stampede,nginx]

  Simulated diskless machines fetch a root at once: from `stampede boot --root` the signed
  manifest and every 1 MiB chunk (K in flight per machine, each verified), from nginx the same
  erofs image as one file (verified), same machines, one lab run.
options:
  --clients N,..   machine counts, one run each per server (default 100,1000)
  --size-mib MIB   size of the root image (default 128)
  --parallel K,..  requests in flight per machine, one Stampede run each (default 2, the node
                   agent's)
  --run R,..       chunks per request, one run each with every K: 1 fetches /chunks/<sha256>,
                   more fetches runs from /roots/<id>/image with Range (default 16, the node
                   agent's)
  --deadline SECS  per run (default 600)
  --peers LIST     servers to run (default stampede,nginx); nginx-chunks: nginx serving
                   Stampede's own manifest and chunk files, fetched exactly as from Stampede
                   (same requests, same parallelism), to tell the server from the shape";

/// Machines are 198.19.1.1 and up, on the lab's /16 with the server at 198.19.0.1.
const SOURCES: &str = "198.19.1.1/16";
/// `stampede boot`'s HTTP port (dataplane `config::defaults::HTTP_PORT`).
const STAMPEDE_HTTP_PORT: u16 = 8080;
/// The bench image's tag in its layout.
const BENCH_TAG: &str = "bench";

#[derive(Debug)]
struct Options {
    clients: Vec<usize>,
    size_mib: usize,
    parallel: Vec<usize>,
    run: Vec<usize>,
    deadline: u64,
    peers: Vec<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        clients: vec![100, 1000],
        size_mib: 128,
        parallel: vec![2],
        run: vec![16],
        deadline: 600,
        peers: vec!["stampede".into(), "nginx".into()],
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if matches!(flag.as_str(), "-h" | "--help") {
            bail!("{USAGE}");
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--clients" => o.clients = super::list(value, "machine count")?,
            "--size-mib" => o.size_mib = value.parse().context("--size-mib")?,
            "--parallel" => o.parallel = super::list(value, "--parallel")?,
            "--run" => o.run = super::list(value, "--run")?,
            "--deadline" => o.deadline = value.parse().context("--deadline")?,
            "--peers" => o.peers = super::list(value, "peer")?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if o.clients.iter().any(|&n| n == 0 || n > 60_000) {
        bail!("--clients: 1 to 60000 machines (the lab's /16)");
    }
    if !(16..=4096).contains(&o.size_mib) {
        bail!("--size-mib: 16 to 4096 (the small image alone is about 10 MiB)");
    }
    if o.parallel.iter().any(|k| !(1..=64).contains(k)) || o.deadline == 0 {
        bail!("--parallel: 1 to 64; --deadline: at least 1 s");
    }
    if o.run.iter().any(|r| !(1..=4096).contains(r)) {
        bail!("--run: 1 to 4096 chunks per request");
    }
    for p in &o.peers {
        if !["stampede", "nginx", "nginx-chunks"].contains(&p.as_str()) {
            bail!("unknown peer {p:?} (stampede, nginx, nginx-chunks)");
        }
    }
    Ok(o)
}

/// Sizes of the filler files, cycled: many small files, some of a few MiB, a few large ones,
/// none a multiple of the chunk size, so chunks cut across files as in a real root.
const FILE_SIZES: &[usize] = &[
    3_000, 17_000, 65_536, 200_000, 900_000, 2_500_000, 12_000, 5_000_000, 40_000, 9_000_000,
];

/// The bench's OCI layout, `size_mib` MiB of root, built once into the lab cache.
fn bench_image(size_mib: usize) -> anyhow::Result<PathBuf> {
    let small = root_image::small_image().map_err(|e| anyhow::anyhow!("the small image: {e}"))?;
    let cache = stampede_lab::guest::cache_dir().join("root-images");
    let base = small
        .layout
        .file_name()
        .and_then(|n| n.to_str())
        .context("small image layout name")?
        .to_owned();
    let layout = cache.join(format!("bench-{size_mib}m-{base}"));
    if layout.join("index.json").is_file() {
        return Ok(layout);
    }
    eprintln!(
        "xtask: bench root: building a {size_mib} MiB root image (once) into {}",
        layout.display()
    );
    let work = cache.join(format!("bench-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = build_bench_image(&small.layout, &work, size_mib);
    if result.is_ok() {
        fs::rename(work.join("layout"), &layout)
            .with_context(|| format!("moving the layout to {}", layout.display()))?;
    }
    let _ = fs::remove_dir_all(&work);
    result.map(|()| layout)
}

fn umoci(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let mut command = Command::new("umoci");
    command.args(args).current_dir(dir);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(600))?;
    out.ok().map(drop).map_err(Into::into)
}

fn build_bench_image(small: &Path, work: &Path, size_mib: usize) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(small)
        .arg(work.join("layout"))
        .status()?;
    if !status.success() {
        bail!("copying {}", small.display());
    }
    let small_tag = format!("layout:{}", root_image::SMALL_TAG);
    umoci(&["unpack", "--image", &small_tag, "bundle"], work)?;
    let rootfs = work.join("bundle/rootfs");
    let du = Command::new("du").args(["-sb"]).arg(&rootfs).output()?;
    let have: usize = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du of the small image")?;
    let want = (size_mib << 20).saturating_sub(have);
    let data = rootfs.join("srv/bench");
    fs::create_dir_all(&data)?;
    let (mut written, mut i) = (0usize, 0usize);
    while written < want {
        let len = FILE_SIZES[i % FILE_SIZES.len()].min(want - written);
        let dir = data.join(format!("{:02}", i % 16));
        fs::create_dir_all(&dir)?;
        fs::write(
            dir.join(format!("file-{i:05}.bin")),
            pseudo_random(len, 0x524f_4f54 + i as u64),
        )?;
        written += len;
        i += 1;
    }
    let tag = format!("layout:{BENCH_TAG}");
    umoci(&["repack", "--image", &tag, "bundle"], work)?;
    umoci(&["gc", "--layout", "layout"], work)?;
    Ok(())
}

/// What `stampede boot --root` printed about the root it built.
#[derive(Debug)]
struct BuiltRoot {
    id: String,
    chunks: u64,
    bytes: u64,
}

fn parse_root_line(stdout: &str) -> Option<BuiltRoot> {
    let line = stdout.lines().find(|l| l.starts_with("root "))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some(BuiltRoot {
        id: line.split_whitespace().nth(1)?.to_owned(),
        chunks: field("chunks=")?,
        bytes: field("bytes=")?,
    })
}

/// `stampede boot --root` in the server namespace, up and `ready`; its state (and so the built
/// root and the signing key) lives in `state_dir`.
fn start_stampede_root(
    lab: &Lab,
    binary: &Path,
    layout: &Path,
    state_dir: &Path,
) -> anyhow::Result<(Server, BuiltRoot)> {
    fs::create_dir_all(state_dir)?;
    let state = state_dir.join("stampede.redb");
    let _ = fs::remove_file(&state);
    let stdout = state_dir.join("stampede.out");
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let mut command = lab.server.command("prlimit");
    command
        .arg(format!("--nofile={hard}:{hard}"))
        .arg(binary)
        .args(["boot", "--iface", &lab.server_if])
        .arg("--root")
        .arg(format!("oci:{}:{BENCH_TAG}", layout.display()))
        .args(["--api", "off", "--router-advertisements", "off"])
        .args(["--xdp-mode", "auto", "--stats-interval", "3600"])
        .arg("--state")
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(fs::File::create(&stdout)?))
        .stderr(Stdio::from(fs::File::create(
            state_dir.join("stampede.log"),
        )?));
    let mut process = Process::spawn(command)?;
    // A first start builds the root (pull, flatten, erofs, chunks, initramfs).
    let ready = wait_for(Duration::from_secs(600), || {
        if process.try_status().is_some() {
            return Some(false);
        }
        let out = fs::read_to_string(&stdout).ok()?;
        out.lines().any(|l| l.starts_with("ready ")).then_some(true)
    });
    let out = fs::read_to_string(&stdout).unwrap_or_default();
    if ready != Some(true) {
        bail!(
            "stampede did not come up:\n{out}{}",
            fs::read_to_string(state_dir.join("stampede.log")).unwrap_or_default()
        );
    }
    let root = parse_root_line(&out).with_context(|| format!("no `root` line in:\n{out}"))?;
    let pid = process.id().context("stampede pid")?;
    Ok((
        Server {
            processes: vec![process],
            pids: vec![pid],
        },
        root,
    ))
}

/// Stampede's root image as one file for the peer: its chunks, concatenated in the manifest's
/// order, and the file's SHA-256 (from `sha256sum`; the bench checks it on every machine).
fn whole_image(state_dir: &Path, root: &BuiltRoot, www: &Path) -> anyhow::Result<String> {
    let serve = state_dir.join("roots/serve");
    let envelope: serde_json::Value = serde_json::from_slice(&fs::read(
        serve.join("roots").join(&root.id).join("manifest"),
    )?)?;
    let manifest: serde_json::Value = serde_json::from_str(
        envelope["manifest"]
            .as_str()
            .context("the envelope has no manifest")?,
    )?;
    let chunks = manifest["chunks"].as_array().context("no chunks")?;
    fs::create_dir_all(www)?;
    let path = www.join("root.img");
    let mut out = fs::File::create(&path)?;
    // The chunk files and the manifest too, at Stampede's paths, for `nginx-chunks`.
    let manifest_dir = www.join("roots").join(&root.id);
    fs::create_dir_all(&manifest_dir)?;
    fs::create_dir_all(www.join("chunks"))?;
    fs::copy(
        serve.join("roots").join(&root.id).join("manifest"),
        manifest_dir.join("manifest"),
    )?;
    for chunk in chunks {
        let digest = chunk["sha256"].as_str().context("chunk digest")?;
        let source = serve.join("chunks").join(digest);
        let mut file = fs::File::open(&source)?;
        std::io::copy(&mut file, &mut out)?;
        fs::copy(&source, www.join("chunks").join(digest))?;
    }
    drop(out);
    fs::hard_link(&path, manifest_dir.join("image"))?;
    let len = fs::metadata(&path)?.len();
    if len != root.bytes || chunks.len() as u64 != root.chunks {
        bail!(
            "the concatenated image is {len} bytes in {} chunks; stampede said {} in {}",
            chunks.len(),
            root.bytes,
            root.chunks
        );
    }
    let sum = Command::new("sha256sum").arg(&path).output()?;
    let hex = String::from_utf8(sum.stdout)?
        .split_whitespace()
        .next()
        .context("sha256sum")?
        .to_owned();
    Ok(hex)
}

/// One run's figures, from the bench's JSON.
#[derive(Debug)]
struct RootResult {
    server: String,
    clients: usize,
    verified: u64,
    time_to_last: Option<f64>,
    elapsed: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    bytes: u64,
    server_cpu: Option<f64>,
    cpu_per_gb: Option<f64>,
    bench_cpu: f64,
    retries: u64,
    /// The node agent's retries the bench played: runs failed / chunks again / root steps again.
    agent_retries: [u64; 3],
    host_busy: Option<f64>,
    failures: String,
    command: String,
    /// The run's JSON report.
    json: PathBuf,
}

/// The runs of a server that serves Stampede's manifest, chunks and image at `base`: one per
/// `--parallel` and `--run` pair, as (bench arguments, label).
fn chunk_variants(
    options: &Options,
    base: &str,
    root_id: &str,
    state_dir: &Path,
    server: &str,
) -> Vec<(Vec<String>, String)> {
    let mut variants = Vec::new();
    for &k in &options.parallel {
        for &run in &options.run {
            let fetch = vec![
                "--server".into(),
                base.to_owned(),
                "--manifest".into(),
                format!("/roots/{root_id}/manifest"),
                "--key-file".into(),
                state_dir.join("manifest.key").display().to_string(),
                "--parallel".into(),
                k.to_string(),
                "--run".into(),
                run.to_string(),
            ];
            let label = if run > 1 {
                format!("{server}-p{k}-r{run}")
            } else {
                format!("{server}-p{k}")
            };
            variants.push((fetch, label));
        }
    }
    variants
}

#[expect(clippy::too_many_arguments, reason = "one call site")]
fn run_bench(
    lab: &Lab,
    binary: &Path,
    out: &Path,
    label: &str,
    server_pid: u32,
    clients: usize,
    deadline: u64,
    fetch: &[String],
) -> anyhow::Result<RootResult> {
    let tag = format!("root-{label}-{clients}");
    let json = out.join(format!("{tag}.json"));
    let svg = out.join(format!("{tag}.svg"));
    let mut args: Vec<String> = [
        "bench",
        "root",
        "--iface",
        &lab.client_if,
        "--sources",
        SOURCES,
        "--clients",
        &clients.to_string(),
        "--deadline",
        &deadline.to_string(),
        "--server-pid",
        &server_pid.to_string(),
        "--label",
        label,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(fetch.iter().cloned());
    args.extend([
        "--json".into(),
        json.display().to_string(),
        "--plot".into(),
        svg.display().to_string(),
    ]);
    let command = format!("stampede {}", args.join(" "));
    let what = format!("bench root: {label}, {clients} machines");
    let report = super::run_bench(lab, binary, &args, &json, deadline, &what)?;
    let failures = super::joined_counts(&report["failures_by_phase"]);
    Ok(RootResult {
        server: label.to_owned(),
        clients,
        verified: report["verified"].as_u64().unwrap_or(0),
        time_to_last: report["time_to_last_root_s"].as_f64(),
        elapsed: report["elapsed_s"].as_f64().unwrap_or(0.0),
        p50: report["time_to_root"]["p50_ms"].as_f64(),
        p99: report["time_to_root"]["p99_ms"].as_f64(),
        max: report["time_to_root"]["max_ms"].as_f64(),
        bytes: report["bytes"].as_u64().unwrap_or(0),
        server_cpu: report["server"]["cpu_s"].as_f64(),
        cpu_per_gb: report["server_cpu_s_per_gb"].as_f64(),
        bench_cpu: report["client_cpu_s"].as_f64().unwrap_or(0.0),
        retries: report["http_retries"].as_u64().unwrap_or(0),
        agent_retries: ["runs_failed", "chunk_retries", "root_restarts"]
            .map(|k| report[k].as_u64().unwrap_or(0)),
        host_busy: report["host_busy_cpu_s"].as_f64(),
        failures,
        command,
        json,
    })
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    if let Some(reason) = stampede_lab::unavailable_reason() {
        bail!("the bench runs a network-namespace lab: {reason}");
    }
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "stampede"]);
    crate::run(build)?;
    let binary = crate::workspace_root().join("target/release/stampede");
    let layout = bench_image(options.size_mib)?;
    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H%MZ"])
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let out = crate::workspace_root()
        .join("target/bench")
        .join(format!("{date}-root"));
    fs::create_dir_all(&out)?;
    // The appliance's state, built root and key, kept between runs beside the image.
    let state_dir = stampede_lab::guest::cache_dir()
        .join("root-bench")
        .join(format!("appliance-{}m", options.size_mib));
    let work = tempdir()?;
    let largest = options.clients.iter().copied().max().unwrap_or(1);
    let _neigh = NeighbourTable::raise(largest)?;
    let lab = lab()?;
    let ceiling_bps = ceiling(&lab)?;
    println!(
        "lab link ceiling (iperf3 -R -P 4, server to client): {:.2} Gbit/s",
        ceiling_bps / 1e9
    );

    // Stampede first: it builds the image the peer serves.
    let (server, root) = start_stampede_root(&lab, &binary, &layout, &state_dir)?;
    println!(
        "root {}: {} chunks, {} bytes ({:.1} MiB)",
        root.id,
        root.chunks,
        root.bytes,
        root.bytes as f64 / 1048576.0
    );
    let www = work.path().join("www");
    let sha256 = whole_image(&state_dir, &root, &www)?;
    // nginx's workers drop privileges: everything it serves must be world-readable.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(work.path())
        .status()?;
    let mut results = Vec::new();
    let mut server = Some(server);
    for peer in &options.peers {
        // (what the machines fetch, the label of the run) per run against this server.
        let (running, variants) = if peer == "stampede" {
            let running = match server.take() {
                Some(s) => s,
                None => start_stampede_root(&lab, &binary, &layout, &state_dir)?.0,
            };
            let base = format!("http://{SERVER_IP}:{STAMPEDE_HTTP_PORT}");
            let variants = chunk_variants(&options, &base, &root.id, &state_dir, "stampede");
            (running, variants)
        } else {
            if let Some(s) = server.take() {
                s.stop();
            }
            let connections = (largest * options.parallel.iter().max().unwrap_or(&1)) as u64;
            let running = start_nginx_at(&lab, work.path(), &www, None, connections + 1000)?;
            let variants = if peer == "nginx-chunks" {
                let base = format!("http://{SERVER_IP}:80");
                chunk_variants(&options, &base, &root.id, &state_dir, "nginx-chunks")
            } else {
                let fetch = vec![
                    "--whole-file".into(),
                    format!("http://{SERVER_IP}/root.img"),
                    "--sha256".into(),
                    sha256.clone(),
                ];
                vec![(fetch, "nginx".to_owned())]
            };
            (running, variants)
        };
        // Stampede's pid, or nginx's master: the bench counts it and its workers (its tree).
        let pid = running.pids[0];
        for &clients in &options.clients {
            for (fetch, label) in &variants {
                let r = run_bench(
                    &lab,
                    &binary,
                    &out,
                    label,
                    pid,
                    clients,
                    options.deadline,
                    fetch,
                );
                match r {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        eprintln!("xtask: bench root: {label}, {clients} machines: {e:#}");
                    }
                }
            }
        }
        running.stop();
    }
    drop(server);

    let mut md = summary(&options, &date, ceiling_bps, &root, &results);
    let rows: Vec<(usize, &str, &Path)> = results
        .iter()
        .map(|r| (r.clients, r.server.as_str(), r.json.as_path()))
        .collect();
    super::plots(&mut md, &binary, &out, "root", &rows);
    fs::write(out.join("summary.md"), &md)?;
    println!("\n{md}");
    println!("reports: {}", out.display());
    Ok(())
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{:.*}", digits, v * scale))
}

fn summary(
    options: &Options,
    date: &str,
    ceiling_bps: f64,
    root: &BuiltRoot,
    results: &[RootResult],
) -> String {
    let mut md = String::new();
    let machine = Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "`cargo xtask bench root --clients {} --size-mib {} --parallel {} --run {} --deadline {}` \
         on {date} ({} cores, {machine})\n",
        options
            .clients
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        options.size_mib,
        options
            .parallel
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        options
            .run
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        options.deadline,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let _ = writeln!(
        md,
        "Lab link ceiling (iperf3, server to client, 4 streams): {:.2} Gbit/s. Root {}: {} chunks, \
         {:.1} MiB.\n",
        ceiling_bps / 1e9,
        root.id,
        root.chunks,
        root.bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        md,
        "| server | machines | roots verified | time to last root (s) | p50 (ms) | p99 (ms) | max (ms) | GiB served | server CPU (s) | server CPU per GB (s) | bench CPU (s) | host CPU busy (s) | retries | agent retries (runs / chunks / roots) | failures |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {:.1} | {} | {} | {} / {} / {} | {} |",
            r.server,
            r.clients,
            r.verified,
            r.time_to_last
                .map_or(format!("- (ran {:.0})", r.elapsed), |t| format!("{t:.2}")),
            opt(r.p50, 1.0, 0),
            opt(r.p99, 1.0, 0),
            opt(r.max, 1.0, 0),
            r.bytes as f64 / (1u64 << 30) as f64,
            opt(r.server_cpu, 1.0, 2),
            opt(r.cpu_per_gb, 1.0, 3),
            r.bench_cpu,
            opt(r.host_busy, 1.0, 1),
            r.retries,
            r.agent_retries[0],
            r.agent_retries[1],
            r.agent_retries[2],
            if r.failures.is_empty() {
                "-"
            } else {
                &r.failures
            },
        );
    }
    let _ = writeln!(md);
    for s in results.iter().filter(|r| r.server.starts_with("stampede")) {
        for p in results
            .iter()
            .filter(|r| !r.server.starts_with("stampede") && r.clients == s.clients)
        {
            if let (Some(a), Some(b)) = (s.cpu_per_gb, p.cpu_per_gb) {
                let _ = writeln!(
                    md,
                    "- {} machines: server CPU per GB, {}/{}: {:.2}x",
                    s.clients,
                    s.server,
                    p.server,
                    a / b
                );
            }
            if let (Some(a), Some(b)) = (s.p50, p.p50) {
                let _ = writeln!(
                    md,
                    "- {} machines: p50 time to root, {}/{}: {:.2}x",
                    s.clients,
                    s.server,
                    p.server,
                    a / b
                );
            }
            if let (Some(a), Some(b)) = (s.time_to_last, p.time_to_last) {
                let _ = writeln!(
                    md,
                    "- {} machines: time to last root, {}/{}: {:.2}x",
                    s.clients,
                    s.server,
                    p.server,
                    a / b
                );
            }
        }
    }
    let _ = writeln!(md, "\nCommands (in the client namespace):\n");
    for r in results {
        let _ = writeln!(md, "    {}", r.command);
    }
    md
}
