//! `cargo xtask bench http`: GB/s and CPU per GB of Stampede's HTTP boot server against nginx
//! with sendfile, both serving the same 32 MiB file to `wrk` (Debian's HTTP load generator, not
//! ours) with 1,000 keep-alive connections from the client namespace over the lab's veth.
//!
//! Server CPU is the utime + stime of the server's processes (Stampede; nginx's master and
//! workers) read from `/proc` before and after the run; the client's is wrk's, from
//! `getrusage(RUSAGE_CHILDREN)` around it, so a run where wrk was the bottleneck shows as one.
//! Over a veth both ends' TCP work runs in softirq context on whichever CPU sends, and is
//! charged to whatever process runs there: the split between server and wrk says where the
//! kernel happened to do the work, not only who caused it. The whole machine's busy time
//! (`/proc/stat`) over the run is reported too, per GB: the total cost of serving and receiving
//! (on a shared machine it includes other load).
use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use super::{Files, Lab, SERVER_IP, Server, pseudo_random, start_nginx, start_stampede};

/// The file both servers serve: the size of a kernel plus initrd.
const PAYLOAD: usize = 32 << 20;
const PAYLOAD_NAME: &str = "http.bin";

/// wrk's Lua `done` hook: the run's totals and latency percentiles as one JSON line, so nothing
/// is parsed out of its human-readable table.
const WRK_REPORT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

#[derive(Debug, Clone, Copy)]
pub(super) struct HttpOptions {
    pub connections: usize,
    pub duration: u64,
    /// Server workers: Stampede's `--workers` and nginx's `worker_processes`.
    pub workers: usize,
}

#[derive(Debug)]
pub(super) struct HttpResult {
    server: String,
    seconds: f64,
    bytes: u64,
    requests: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: String,
    server_cpu: f64,
    client_cpu: f64,
    machine_cpu: f64,
    command: String,
}

impl HttpResult {
    fn gb_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }

    fn cpu_per_gb(&self) -> f64 {
        self.server_cpu / (self.bytes as f64 / 1e9)
    }

    fn machine_cpu_per_gb(&self) -> f64 {
        self.machine_cpu / (self.bytes as f64 / 1e9)
    }
}

/// CPU seconds (user + system) used so far by `pids` (each a whole process, all its threads, and
/// the children it has reaped).
pub(super) fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let mut ticks = 0.0;
    for pid in pids {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("server process {pid} is gone"))?;
        // Fields after the parenthesised command name (which may contain spaces): utime,
        // stime, cutime and cstime are the 14th to 17th of the line (proc(5)).
        let rest = &stat[stat.rfind(')').context("/proc stat")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in 11..15 {
            ticks += fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .context("/proc stat: utime/stime")?;
        }
    }
    Ok(ticks / hz)
}

/// Busy CPU seconds of the whole machine so far, all cores (`/proc/stat`: everything but idle
/// and iowait).
pub(super) fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no cpu line")?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("/proc/stat"))
        .collect::<anyhow::Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: f64 = values
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(busy / hz)
}

/// CPU seconds of this process's waited-for children (and theirs), so far.
pub(super) fn children_cpu() -> anyhow::Result<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(usage.user_time()) + secs(usage.system_time()))
}

/// The client namespace's own address on the lab link while `wrk` or `perfdhcp` runs (the
/// simulated machines use leased addresses instead); removed on drop.
pub(super) struct ClientAddress<'a> {
    lab: &'a Lab,
    cidr: String,
}

impl<'a> ClientAddress<'a> {
    pub fn add(lab: &'a Lab) -> anyhow::Result<Self> {
        let cidr = format!("{}/16", super::CLIENT_PROBE_IP);
        lab.client
            .ip(&["addr", "add", &cidr, "dev", &lab.client_if])?;
        Ok(Self { lab, cidr })
    }
}

impl Drop for ClientAddress<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .client
            .ip(&["addr", "del", &self.cidr, "dev", &self.lab.client_if]);
    }
}

fn wrk(
    lab: &Lab,
    script: &Path,
    url: &str,
    connections: usize,
    threads: usize,
    seconds: u64,
) -> anyhow::Result<(serde_json::Value, String)> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let args = vec![
        format!("--nofile={hard}:{hard}"),
        "wrk".to_owned(),
        "--threads".to_owned(),
        threads.min(connections).to_string(),
        "--connections".to_owned(),
        connections.to_string(),
        "--duration".to_owned(),
        format!("{seconds}s"),
        // A 32 MiB response shared by a thousand connections takes seconds; wrk's default
        // timeout (2 s) would count most of them as errors.
        "--timeout".to_owned(),
        "120s".to_owned(),
        "--latency".to_owned(),
        "--script".to_owned(),
        script.display().to_string(),
        url.to_owned(),
    ];
    let command = format!("prlimit {}", args.join(" "));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab
        .client
        .run("prlimit", &refs, Duration::from_secs(seconds + 150))
        .with_context(|| format!("{command} (run `cargo xtask setup`)"))?
        .ok()?;
    let json = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .with_context(|| format!("wrk printed no report:\n{}", out.stdout))?;
    Ok((serde_json::from_str(json).context("wrk's report")?, command))
}

pub(super) fn run(
    lab: &Lab,
    f: &Files,
    binary: &Path,
    out: &Path,
    peers: &[String],
    options: HttpOptions,
) -> anyhow::Result<Vec<HttpResult>> {
    let payload = pseudo_random(PAYLOAD, 15);
    fs::write(f.kernel.with_file_name(PAYLOAD_NAME), &payload)?;
    fs::write(f.www.join(PAYLOAD_NAME), &payload)?;
    drop(payload);
    let script = f.root.join("wrk-report.lua");
    fs::write(&script, WRK_REPORT)?;
    let _address = ClientAddress::add(lab)?;
    let mut results = Vec::new();
    for peer in peers {
        let (server, url, label) = match peer.as_str() {
            "stampede" => {
                let extra = [
                    f.kernel.with_file_name(PAYLOAD_NAME).display().to_string(),
                    "--workers".to_owned(),
                    options.workers.to_string(),
                ];
                (
                    start_stampede(lab, f, binary, "http", None, &extra)?,
                    format!("http://{SERVER_IP}:8080/files/{PAYLOAD_NAME}"),
                    "stampede",
                )
            }
            "nginx" => (
                start_nginx(
                    lab,
                    f,
                    Some(options.workers),
                    options.connections as u64 + 100,
                )?,
                format!("http://{SERVER_IP}/{PAYLOAD_NAME}"),
                "nginx (sendfile)",
            ),
            other => bail!("{other} serves no HTTP"),
        };
        let result = measure(lab, &server, &script, &url, label, options);
        let _ = server.stop();
        let result = result?;
        let json = serde_json::json!({
            "server": result.server,
            "url": url,
            "connections": options.connections,
            "workers": options.workers,
            "seconds": result.seconds,
            "bytes": result.bytes,
            "requests": result.requests,
            "gb_per_s": result.gb_s(),
            "requests_per_s": result.requests as f64 / result.seconds,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "errors": result.errors,
            "server_cpu_s": result.server_cpu,
            "server_cpu_s_per_gb": result.cpu_per_gb(),
            "client_cpu_s": result.client_cpu,
            "machine_cpu_s": result.machine_cpu,
            "machine_cpu_s_per_gb": result.machine_cpu_per_gb(),
            "command": result.command,
        });
        fs::write(
            out.join(format!("http-{peer}-{}.json", options.connections)),
            serde_json::to_string_pretty(&json)?,
        )?;
        results.push(result);
    }
    Ok(results)
}

fn measure(
    lab: &Lab,
    server: &Server,
    script: &Path,
    url: &str,
    label: &str,
    options: HttpOptions,
) -> anyhow::Result<HttpResult> {
    // One request first: the file is read into the server's cache (Stampede's store, the page
    // cache for nginx) before anything is measured.
    wrk(lab, script, url, 1, 1, 1).context("warm-up request")?;
    let cpu_before = cpu_seconds(&server.pids)?;
    let client_before = children_cpu()?;
    let machine_before = machine_busy_seconds()?;
    eprintln!(
        "xtask: bench: http: {label}, {} connections for {} s: {url}",
        options.connections, options.duration
    );
    let (report, command) = wrk(
        lab,
        script,
        url,
        options.connections,
        std::thread::available_parallelism().map_or(2, |n| n.get()),
        options.duration,
    )?;
    let server_cpu = cpu_seconds(&server.pids)? - cpu_before;
    let client_cpu = children_cpu()? - client_before;
    let machine_cpu = machine_busy_seconds()? - machine_before;
    let n = |key: &str| report[key].as_u64().unwrap_or(0);
    let errors: Vec<String> = ["connect", "read", "write", "status", "timeout"]
        .into_iter()
        .filter(|k| n(k) > 0)
        .map(|k| format!("{k} {}", n(k)))
        .collect();
    let requests = n("requests");
    let latency = |key: &str| (requests > 0).then(|| n(key) as f64 / 1e3);
    Ok(HttpResult {
        server: label.to_owned(),
        seconds: n("duration_us") as f64 / 1e6,
        bytes: n("bytes"),
        requests,
        p50_ms: latency("p50_us"),
        p99_ms: latency("p99_us"),
        errors: errors.join(", "),
        server_cpu,
        client_cpu,
        machine_cpu,
        command,
    })
}

/// The summary's section: a table, the ratio, the commands.
pub(super) fn summary(md: &mut String, results: &[HttpResult], options: HttpOptions) {
    let _ = writeln!(
        md,
        "HTTP: one {} MiB file, {} keep-alive connections from wrk for {} s, {} server workers\n",
        PAYLOAD >> 20,
        options.connections,
        options.duration,
        options.workers
    );
    let _ = writeln!(
        md,
        "| server | GB/s | responses | requests/s | p50 (ms) | p99 (ms) | server CPU (s) | server CPU s per GB | wrk CPU (s) | machine CPU s per GB | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {} | {:.1} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {} |",
            r.server,
            r.gb_s(),
            r.requests,
            r.requests as f64 / r.seconds,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.server_cpu,
            r.cpu_per_gb(),
            r.client_cpu,
            r.machine_cpu_per_gb(),
            if r.errors.is_empty() { "-" } else { &r.errors },
        );
    }
    let _ = writeln!(md);
    if let (Some(s), Some(p)) = (
        results.iter().find(|r| r.server == "stampede"),
        results.iter().find(|r| r.server != "stampede"),
    ) {
        let _ = writeln!(
            md,
            "- Stampede/{}: {:.2}x the GB/s, {:.2}x the server CPU per GB, {:.2}x the machine's CPU per GB",
            p.server,
            s.gb_s() / p.gb_s(),
            s.cpu_per_gb() / p.cpu_per_gb(),
            s.machine_cpu_per_gb() / p.machine_cpu_per_gb()
        );
    }
    let _ = writeln!(
        md,
        "\nGB/s counts every byte wrk read, finished responses or not; responses, requests/s and \
         latency count finished 32 MiB responses only. Server CPU: utime + stime of the server's \
         processes; machine CPU: all cores' busy time (includes wrk, the kernel's work for both \
         ends, and anything else running)."
    );
    let _ = writeln!(md, "\nCommands (in the client namespace):\n");
    for r in results {
        let _ = writeln!(md, "    {}", r.command);
    }
}
