//! Loopback throughput of the HTTP boot server, and of nginx for comparison when it is
//! installed. Ignored by default (it measures, it does not check); run with
//!
//! ```text
//! cargo test --release -p stampede-dataplane --test http_throughput -- --ignored --nocapture
//! ```
//!
//! Clients are plain threads reading into a 256 KiB buffer and discarding; they share the
//! machine's CPUs with the server, so the figures are a floor for the server alone.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use stampede_dataplane::{
    engine::http::{HttpServer, HttpServerConfig},
    sys::uring,
};
use stampede_proto::files::{BootFile, MemoryCatalog};

const MIB: usize = 1024 * 1024;
const FILE_MIB: usize = 64;

/// Downloads `path` `times` times over one keep-alive connection; returns body bytes read.
fn download(addr: SocketAddr, path: &str, times: usize) -> usize {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    for _ in 0..times {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").expect("request");
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
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .expect("numeric");
        let mut body = got.len() - head_end;
        while body < len {
            let n = stream.read(&mut buf).expect("body");
            assert!(n > 0, "closed in body");
            body += n;
        }
        assert_eq!(body, len);
        total += body;
    }
    total
}

/// MiB/s for `clients` parallel connections each downloading the file `times` times.
fn measure(addr: SocketAddr, path: &'static str, clients: usize, times: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| thread::spawn(move || download(addr, path, times)))
        .collect();
    let bytes: usize = handles.into_iter().map(|h| h.join().expect("client")).sum();
    bytes as f64 / MIB as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, addr: SocketAddr, path: &'static str) {
    // Warm-up (page cache, connection setup paths).
    measure(addr, path, 1, 1);
    let one = measure(addr, path, 1, 16);
    let many = measure(addr, path, 64, 2);
    println!(
        "{name}: 1 download {one:.0} MiB/s, 64 parallel {many:.0} MiB/s (aggregate) of a {FILE_MIB} MiB file"
    );
}

struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: nginx's master stops its workers on TERM, while a killed master
    /// leaves them orphaned and serving.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn start_nginx(dir: &std::path::Path, port: u16, workers: usize) -> Option<Nginx> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes {workers}; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
               client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}; root {d}; }} }}\n",
            d = dir.display()
        ),
    )
    .expect("nginx config");
    let child = Command::new("nginx")
        .args(["-c", conf.to_str().expect("utf-8"), "-p"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let nginx = Nginx(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Some(nginx)
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn loopback_throughput() {
    if uring::probe().is_err() {
        eprintln!("skipping: io_uring unusable");
        return;
    }
    let workers = thread::available_parallelism().map_or(1, usize::from);
    let data: Vec<u8> = (0..FILE_MIB * MIB)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let mut catalog = MemoryCatalog::new();
    catalog.insert("big.bin", BootFile::new(data.clone()));
    let server = HttpServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        HttpServerConfig {
            workers,
            ..HttpServerConfig::default()
        },
        Arc::new(catalog),
        None,
    )
    .expect("server");
    println!("{workers} workers / CPUs");
    report("stampede io_uring", server.local_addr(), "/big.bin");
    let stats = server.stop(Instant::now() + Duration::from_secs(5));
    println!(
        "stampede: {} responses, {} MiB sent",
        stats.responses(),
        stats.bytes_sent / MIB as u64
    );

    let dir = tempfile::tempdir().expect("nginx dir");
    std::fs::write(dir.path().join("big.bin"), &data).expect("nginx file");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("port").port()
    };
    match start_nginx(dir.path(), port, workers) {
        Some(_nginx) => report(
            "nginx (sendfile)",
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/big.bin",
        ),
        None => println!("nginx not started; no comparison"),
    }
}
