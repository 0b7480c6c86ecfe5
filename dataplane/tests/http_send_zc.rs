//! Plain `SENDMSG` against `SENDMSG_ZC` for the HTTP boot server: throughput and CPU for a
//! 64 MiB body, over loopback and over a veth pair between two network namespaces. Ignored by
//! default (it measures, it does not check); run as root with
//!
//! ```text
//! cargo test --release -p stampede-dataplane --test http_send_zc -- --ignored --nocapture
//! ```
//!
//! `ZC_RUNS` sets the runs per configuration (default 5); the table shows the median of each
//! column over the runs. CPU is read as utime + stime deltas: of the server's worker threads
//! (`/proc/self/task/*/stat`, comm `http-*`), of the whole process (`/proc/self/stat`, clients
//! included) and of the whole machine (`/proc/stat`, non-idle, which also catches
//! softirq work done outside this process), each per GiB delivered.
//!
//! Loopback always copies zero-copy payloads (kernel Documentation/networking/msg_zerocopy.rst,
//! "Loopback"); a veth pair hands the packet to a socket in the peer namespace, which is local
//! delivery too. The `copied` column shows what the kernel reported (`IORING_NOTIF_USAGE_ZC_COPIED`).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use stampede_dataplane::{
    engine::http::{HttpServer, HttpServerConfig},
    sys::{uring, uring_tcp::TcpWorkerConfig},
};
use stampede_lab::TwoHosts;
use stampede_proto::files::{BootFile, MemoryCatalog};

const MIB: usize = 1024 * 1024;
const FILE_MIB: usize = 64;

/// Downloads `/big.bin` `times` times over one keep-alive connection; returns body bytes read.
fn download(addr: SocketAddr, times: usize) -> usize {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    for _ in 0..times {
        write!(stream, "GET /big.bin HTTP/1.1\r\nHost: bench\r\n\r\n").expect("request");
        let mut got = Vec::new();
        let head_end = loop {
            let n = stream.read(&mut buf).expect("head");
            assert!(n > 0, "closed in head");
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let mut body = got.len() - head_end;
        while body < FILE_MIB * MIB {
            let n = stream.read(&mut buf).expect("body");
            assert!(n > 0, "closed in body");
            body += n;
        }
        assert_eq!(body, FILE_MIB * MIB);
        total += body;
    }
    total
}

/// CPU seconds: (server worker threads, whole process, whole machine).
fn cpu_now() -> (f64, f64, f64) {
    let tick = 1.0 / 100.0; // USER_HZ; getconf CLK_TCK is 100 on Linux x86-64
    // utime and stime are fields 14 and 15 of proc_pid_stat(5), the 12th and 13th after the
    // parenthesised comm; for /proc/self/stat they include threads that have exited.
    let ticks = |stat: &str| -> Option<(String, u64)> {
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
        Some((stat[open + 1..close].to_owned(), ticks))
    };
    let mut server = 0.0;
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let Ok(stat) = std::fs::read_to_string(task.expect("task").path().join("stat")) else {
            continue; // the thread ended
        };
        if let Some((comm, t)) = ticks(&stat)
            && comm.starts_with("http-")
        {
            server += t as f64 * tick;
        }
    }
    let (_, process) = ticks(&std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat"))
        .expect("process stat");
    let process = process as f64 * tick;
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("number"))
        .collect();
    // user nice system idle iowait irq softirq steal (proc_stat(5)): busy is user, nice,
    // system, irq and softirq; steal is the hypervisor's, not ours.
    let busy: u64 = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6];
    (server, process, busy as f64 * tick)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    mib_per_s: f64,
    server_cpu_per_gib: f64,
    process_cpu_per_gib: f64,
    machine_cpu_per_gib: f64,
}

/// One run: `clients` parallel connections, each downloading the file `times` times.
fn run(addr: SocketAddr, clients: usize, times: usize, lab: Option<&TwoHosts>) -> Sample {
    let go = move || {
        let handles: Vec<_> = (0..clients)
            .map(|_| thread::spawn(move || download(addr, times)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .sum::<usize>()
    };
    let before = cpu_now();
    let start = Instant::now();
    let bytes = match lab {
        // Threads spawned inside the namespace thread inherit its namespace.
        Some(hosts) => hosts.client.in_namespace(go).expect("client namespace"),
        None => go(),
    };
    let elapsed = start.elapsed().as_secs_f64();
    let after = cpu_now();
    let gib = bytes as f64 / (1024.0 * MIB as f64);
    Sample {
        mib_per_s: bytes as f64 / MIB as f64 / elapsed,
        server_cpu_per_gib: (after.0 - before.0) / gib,
        process_cpu_per_gib: (after.1 - before.1) / gib,
        machine_cpu_per_gib: (after.2 - before.2) / gib,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn start_server(
    catalog: &Arc<MemoryCatalog>,
    zero_copy: bool,
    lab: Option<&TwoHosts>,
) -> HttpServer {
    let config = HttpServerConfig {
        tcp: TcpWorkerConfig {
            zero_copy_min_len: zero_copy.then_some(16 * 1024),
            ..TcpWorkerConfig::default()
        },
        ..HttpServerConfig::default()
    };
    let catalog = catalog.clone();
    match lab {
        Some(hosts) => {
            let address = SocketAddr::from((hosts.server_ip(), 0));
            // The listeners are made inside the server namespace; the worker threads inherit it.
            hosts
                .server
                .in_namespace(move || HttpServer::bind(address, config, catalog, None))
                .expect("server namespace")
                .expect("server")
        }
        None => HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config, catalog, None)
            .expect("server"),
    }
}

#[test]
#[ignore = "measurement; run as root in release with --ignored --nocapture"]
fn sendmsg_vs_sendmsg_zc() {
    let caps = match uring::probe() {
        Ok(caps) => caps,
        Err(e) => {
            eprintln!("skipping: io_uring unusable: {e}");
            return;
        }
    };
    assert!(caps.sendmsg_zc, "this kernel lacks IORING_OP_SENDMSG_ZC");
    if !stampede_lab::require!(&["ip"]) {
        return;
    }
    let runs: usize = std::env::var("ZC_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let hosts = TwoHosts::new().expect("lab");
    hosts
        .client
        .ip(&[
            "addr",
            "add",
            &hosts.subnet.cidr(2),
            "dev",
            &hosts.client_if,
        ])
        .expect("client address");
    let data: Vec<u8> = (0..FILE_MIB * MIB)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let mut catalog = MemoryCatalog::new();
    catalog.insert("big.bin", BootFile::new(data));
    let catalog = Arc::new(catalog);
    let workers = HttpServerConfig::default().workers;
    println!(
        "{FILE_MIB} MiB body, {workers} server workers, {runs} runs per row, medians; \
         1 connection = 8 downloads, 16 parallel = 2 downloads each"
    );
    println!(
        "| path | send | connections | MiB/s | server CPU s/GiB | process CPU s/GiB | machine CPU s/GiB | ZC sends | copied |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (path, lab) in [("loopback", None), ("veth", Some(&hosts))] {
        for zero_copy in [false, true] {
            let server = start_server(&catalog, zero_copy, lab);
            let addr = server.local_addr();
            run(addr, 1, 1, lab); // warm-up
            for (clients, times) in [(1, 8), (16, 2)] {
                let before = server.stats();
                let samples: Vec<Sample> =
                    (0..runs).map(|_| run(addr, clients, times, lab)).collect();
                // Stats are published every PUBLISH_INTERVAL; let the last batch land.
                thread::sleep(Duration::from_millis(300));
                let after = server.stats();
                let pick = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
                let all: Vec<String> = samples
                    .iter()
                    .map(|s| format!("{:.0}", s.mib_per_s))
                    .collect();
                println!(
                    "| {path} | {} | {clients} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                    if zero_copy { "SENDMSG_ZC" } else { "SENDMSG" },
                    pick(|s| s.mib_per_s),
                    pick(|s| s.server_cpu_per_gib),
                    pick(|s| s.process_cpu_per_gib),
                    pick(|s| s.machine_cpu_per_gib),
                    after.zero_copy_sends - before.zero_copy_sends,
                    after.zero_copy_copied - before.zero_copy_copied,
                );
                eprintln!("  runs MiB/s: {}", all.join(" "));
            }
            server.stop(Instant::now() + Duration::from_secs(5));
        }
    }
}
