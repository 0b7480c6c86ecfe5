//! HTTPS throughput and server CPU per GiB: Stampede's TLS server (`engine::https`, rustls with
//! ring) against nginx with TLS (OpenSSL), same certificate (ECDSA P-256, made here with rcgen),
//! same cipher suite (the curl clients offer only TLS 1.3 `TLS_AES_128_GCM_SHA256`), same 64 MiB
//! file, in one run; plain HTTP of both as the reference. Ignored by default (it measures, it
//! does not check); run with
//!
//! ```text
//! cargo test --release -p stampede-dataplane --test https_throughput -- --ignored --nocapture
//! ```
//!
//! Clients are `curl` processes (one keep-alive connection each, output to /dev/null), so the
//! server's CPU can be read apart from theirs: Stampede's from this process
//! (`/proc/self/stat`, which holds nothing but the server while curl runs), nginx's from its
//! worker processes. Both share the machine's CPUs with the clients.
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use stampede_dataplane::{
    engine::{
        http::{HttpServer, HttpServerConfig},
        https::{HttpsServer, HttpsServerConfig},
    },
    sys::uring,
};
use stampede_proto::files::{BootFile, MemoryCatalog};

const MIB: u64 = 1024 * 1024;
const FILE_MIB: u64 = 64;
const CIPHER: &str = "TLS_AES_128_GCM_SHA256";

/// Seconds of CPU (user + system) of the process or thread whose `stat` file this is.
fn cpu_seconds(stat: &Path) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

/// The server's CPU seconds so far: this process, or nginx's workers (children of its master).
#[derive(Clone, Copy)]
enum Server {
    ThisProcess,
    Nginx(u32),
}

impl Server {
    fn cpu(self) -> f64 {
        match self {
            Self::ThisProcess => cpu_seconds(Path::new("/proc/self/stat")),
            Self::Nginx(master) => {
                let children =
                    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                        .unwrap_or_default();
                children
                    .split_whitespace()
                    .map(|pid| cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))))
                    .sum()
            }
        }
    }
}

/// `clients` curl processes, each fetching `url` `times` times on one connection. Returns
/// (MiB/s, server CPU seconds per GiB).
fn measure(server: Server, url: &str, ca: &Path, clients: usize, times: usize) -> (f64, f64) {
    let cpu_before = server.cpu();
    let start = Instant::now();
    let children: Vec<Child> = (0..clients)
        .map(|_| {
            let mut curl = Command::new("curl");
            curl.args([
                "-sS",
                "--fail",
                "--tlsv1.3",
                "--tls13-ciphers",
                CIPHER,
                "--cacert",
            ])
            .arg(ca);
            for _ in 0..times {
                curl.args(["-o", "/dev/null", url]);
            }
            curl.stdout(Stdio::null()).spawn().expect("curl")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("curl").success(), "curl {url} failed");
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = server.cpu() - cpu_before;
    let mib = (FILE_MIB * (clients * times) as u64) as f64;
    (mib / secs, cpu / (mib / 1024.0))
}

fn report(name: &str, server: Server, url: &str, ca: &Path) {
    measure(server, url, ca, 1, 1); // warm-up
    let (one, one_cpu) = measure(server, url, ca, 1, 8);
    let (many, many_cpu) = measure(server, url, ca, 16, 2);
    println!("| {name} | {one:.0} | {one_cpu:.2} | {many:.0} | {many_cpu:.2} |",);
}

struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM: nginx's master stops its workers on TERM; a killed master leaves them serving.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn start_nginx(dir: &Path, http: u16, https: u16, workers: usize) -> Option<Nginx> {
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
               server {{ listen 127.0.0.1:{http}; listen 127.0.0.1:{https} ssl; root {d};\n\
                 ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n\
                 ssl_protocols TLSv1.3; }} }}\n",
            d = dir.display()
        ),
    )
    .expect("nginx config");
    let child = Command::new("nginx")
        .args(["-c", conf.to_str().expect("utf-8"), "-p"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], https))).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Some(nginx)
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    probe.local_addr().expect("port").port()
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn https_against_nginx() {
    if uring::probe().is_err() || stampede_lab::which("curl").is_none() {
        eprintln!("skipping: io_uring unusable or no curl");
        return;
    }
    let workers = thread::available_parallelism().map_or(1, usize::from);
    let dir = tempfile::tempdir().expect("bench dir");
    let d = dir.path();

    // One CA and one server certificate for 127.0.0.1, for both servers.
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench server");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    std::fs::write(d.join("ca.pem"), ca_cert.pem()).expect("ca");
    std::fs::write(d.join("server.pem"), cert.pem()).expect("cert");
    std::fs::write(d.join("server.key"), key.serialize_pem()).expect("key");
    let ca = d.join("ca.pem");

    let data: Vec<u8> = (0..FILE_MIB * MIB)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(d.join("big.bin"), &data).expect("file");
    let mut catalog = MemoryCatalog::new();
    catalog.insert("big.bin", BootFile::new(data));
    let catalog = Arc::new(catalog);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("tls config");
    let http = HttpServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        HttpServerConfig {
            workers,
            ..HttpServerConfig::default()
        },
        catalog.clone(),
        None,
    )
    .expect("http server");
    let https = HttpsServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        HttpsServerConfig::default(),
        Arc::new(tls),
        catalog,
        None,
    )
    .expect("https server");
    println!("{workers} CPUs; {FILE_MIB} MiB file; TLS 1.3 {CIPHER}; ECDSA P-256 certificate");
    println!(
        "| server | 1 connection x 8: MiB/s | server CPU s/GiB | 16 connections x 2: MiB/s | server CPU s/GiB |"
    );
    println!("|---|---|---|---|---|");
    let url = |scheme: &str, port: u16| format!("{scheme}://127.0.0.1:{port}/big.bin");
    report(
        "stampede https (rustls/ring, thread per connection)",
        Server::ThisProcess,
        &url("https", https.local_addr().port()),
        &ca,
    );
    report(
        "stampede http (io_uring)",
        Server::ThisProcess,
        &url("http", http.local_addr().port()),
        &ca,
    );
    let stats = https.stop(Instant::now() + Duration::from_secs(5));
    drop(http);
    eprintln!("stampede https: {stats:?}");

    let (http_port, https_port) = (free_port(), free_port());
    match start_nginx(d, http_port, https_port, workers) {
        Some(nginx) => {
            let master = nginx.0.id();
            report(
                "nginx https (OpenSSL)",
                Server::Nginx(master),
                &url("https", https_port),
                &ca,
            );
            report(
                "nginx http (sendfile)",
                Server::Nginx(master),
                &url("http", http_port),
                &ca,
            );
        }
        None => println!("nginx not started; no comparison"),
    }
}
