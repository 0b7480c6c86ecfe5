//! The HTTP boot server end to end on 127.0.0.1: curl and raw `TcpStream` clients against
//! [`HttpServer`] serving a temporary directory.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use stampede_dataplane::{
    engine::http::{HttpServer, HttpServerConfig, HttpStats},
    store::BootRoot,
    sys::uring,
};
use stampede_proto::http::ServerConfig;
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;

/// Whether io_uring tests can run (as in `sys::uring`): outside CI a kernel without the features
/// is a skip; under `CI=true` a failure.
fn uring_available() -> bool {
    match uring::probe() {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping io_uring test: {e}");
            false
        }
        Err(e) => panic!("CI=true and io_uring is not usable: {e}"),
    }
}

/// Deterministic, non-repeating-looking content so a misplaced chunk cannot pass.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = stampede_lab::rng::TestRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // Eight bytes per step: debug builds are slow per byte.
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

struct Fixture {
    dir: TempDir,
    server: Option<HttpServer>,
}

const FILES: [(&str, usize); 4] = [
    ("empty.bin", 0),
    ("one.bin", 1),
    ("mib.bin", MIB),
    ("big.bin", 64 * MIB),
];

impl Fixture {
    fn start(config: HttpServerConfig) -> Self {
        let dir = tempfile::tempdir().expect("temporary boot root");
        for (i, (name, len)) in FILES.iter().enumerate() {
            std::fs::write(dir.path().join(name), content(*len, i as u64 + 1))
                .expect("writing a fixture file");
        }
        let root = BootRoot::new(dir.path()).expect("boot root");
        let server = HttpServer::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            Arc::new(root),
            None,
        )
        .expect("starting the HTTP server");
        Self {
            dir,
            server: Some(server),
        }
    }

    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).expect("reading fixture back")
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").local_addr()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    fn stop(&mut self, within: Duration) -> HttpStats {
        self.server
            .take()
            .expect("running")
            .stop(Instant::now() + within)
    }
}

fn small_config() -> HttpServerConfig {
    HttpServerConfig {
        workers: 2,
        ..HttpServerConfig::default()
    }
}

/// Runs curl; returns (stdout, the `--write-out` text is part of stdout when used).
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Body and status code of one curl request.
fn curl_body(args: &[&str]) -> (Vec<u8>, u16) {
    let dir = tempfile::tempdir().expect("curl output dir");
    let path = dir.path().join("body");
    let path = path.to_str().expect("utf-8 temp path");
    let mut all = vec!["--output", path, "--write-out", "%{http_code}"];
    all.extend_from_slice(args);
    let code = String::from_utf8(curl(&all)).expect("status code text");
    let code = code.trim().parse().expect("numeric status code");
    (std::fs::read(path).expect("curl's output file"), code)
}

#[test]
fn get_head_and_range_are_byte_exact() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    for (name, len) in FILES {
        let want = fx.file(name);
        assert_eq!(want.len(), len);
        let (body, code) = curl_body(&[&fx.url(&format!("/{name}"))]);
        assert_eq!(code, 200, "GET /{name}");
        assert_eq!(body.len(), len, "GET /{name} length");
        assert!(
            sha256(&body) == sha256(&want),
            "GET /{name} SHA-256 differs"
        );

        let head = String::from_utf8(curl(&["--head", &fx.url(&format!("/{name}"))]))
            .expect("HEAD response is text");
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "HEAD /{name} status: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {len}\r\n")),
            "HEAD /{name} announces the length: {head}"
        );
    }
    let big = fx.file("big.bin");
    for (range, start, end) in [
        ("0-0", 0, 1),
        ("100-199", 100, 200),
        ("67108000-", 67_108_000, 64 * MIB),
        ("-4096", 64 * MIB - 4096, 64 * MIB),
        ("1000000-33554431", 1_000_000, 32 * MIB),
    ] {
        let (body, code) = curl_body(&["--range", range, &fx.url("/big.bin")]);
        assert_eq!(code, 206, "range {range}");
        assert!(
            body == big[start..end],
            "range {range}: {} bytes, want {}",
            body.len(),
            end - start
        );
    }
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!(stats.responses_by_class[2], 8 + 5, "{stats:?}");
    assert_eq!(stats.accepted, stats.closed, "{stats:?}");
    // One whole big.bin (HEAD sends no body) and 31 MiB of ranges, plus smaller files.
    assert!(
        stats.bytes_sent > (95 * MIB) as u64,
        "bodies were sent: {stats:?}"
    );
    // Bodies of 16 KiB and more came from the files' sealed memfds by sendfile, not copied:
    // mib.bin, big.bin and the one long range.
    assert_eq!(
        stats.sendfile_bytes,
        (MIB + 64 * MIB + (32 * MIB - 1_000_000)) as u64,
        "{stats:?}"
    );
}

/// A file rewritten in place while a download of it is under way: the download gets the old
/// bytes, whole (the server sends from a sealed copy, never a torn mix); the next gets the new.
#[test]
fn a_file_rewritten_during_a_download_is_served_whole() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    let old = fx.file("big.bin");
    let mut stream = TcpStream::connect(fx.addr()).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("request");
    // Some of the body arrives: the server has loaded the file and is sending it.
    let mut first = vec![0u8; 64 * 1024];
    stream.read_exact(&mut first).expect("first bytes");
    let new = content(64 * MIB, 99);
    {
        // In place: same inode, same length, every byte rewritten.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(fx.dir.path().join("big.bin"))
            .expect("open for rewrite");
        file.write_all(&new).expect("rewrite");
        file.sync_all().expect("sync");
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("rest of the response");
    let mut response = first;
    response.extend_from_slice(&rest);
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(
        sha256(&response[head_end..]) == sha256(&old),
        "the download in flight got the old file, whole ({} body bytes)",
        response.len() - head_end
    );
    let (_, body) = raw_get(fx.addr(), "/big.bin", true);
    assert!(
        sha256(&body) == sha256(&new),
        "a new download gets the new file"
    );
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!(stats.sendfile_bytes, 2 * (64 * MIB) as u64, "{stats:?}");
}

#[test]
fn keep_alive_reuses_one_connection() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    let out = curl(&[
        "--output",
        "/dev/null",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{num_connects}\n",
        &fx.url("/mib.bin"),
        &fx.url("/one.bin"),
    ]);
    let out = String::from_utf8(out).expect("write-out text");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["200 1", "200 0"],
        "second request reused the connection"
    );
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!(stats.accepted, 1, "{stats:?}");
}

#[test]
fn unsatisfiable_range_and_hostile_paths_are_refused() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    let (_, code) = curl_body(&["--range", "2000000-2000010", &fx.url("/mib.bin")]);
    assert_eq!(code, 416, "range past the end of a 1 MiB file");
    for path in [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/mib.bin/../../etc/passwd",
        "/..%2fetc%2fpasswd",
    ] {
        let (body, code) = curl_body(&["--path-as-is", &fx.url(path)]);
        assert_eq!(code, 404, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("root:"),
            "{path} leaked a file"
        );
    }
    let (_, code) = curl_body(&[&fx.url("/no-such-file")]);
    assert_eq!(code, 404);
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!(
        stats.rejections.get("range_not_satisfiable"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.rejections.get("not_found"), Some(&1), "{stats:?}");
    let path_refusals: u64 = stats
        .rejections
        .iter()
        .filter(|(k, _)| k.starts_with("path_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(path_refusals, 5, "{stats:?}");
    assert_eq!(stats.responses_by_class[4], 7, "{stats:?}");
}

/// Sends a raw GET and reads the whole response; returns (head, body).
fn raw_get(addr: SocketAddr, path: &str, close: bool) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n"
    )
    .expect("sending the request");
    read_response(&mut stream)
}

fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).expect("reading the head");
        assert!(n > 0, "connection closed before the head ended");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("head is text");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().expect("numeric content-length"))
        })
        .expect("response has a content-length");
    let mut body = buf[head_end..].to_vec();
    body.reserve(len.saturating_sub(body.len()));
    while body.len() < len {
        let n = stream.read(&mut chunk).expect("reading the body");
        assert!(n > 0, "closed after {} of {len} body bytes", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "no bytes beyond content-length");
    (head, body)
}

#[test]
fn two_hundred_parallel_downloads_are_all_correct() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    let addr = fx.addr();
    let want = sha256(&fx.file("mib.bin"));
    let clients: Vec<_> = (0..200)
        .map(|i| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let (head, body) = raw_get(addr, "/mib.bin", i % 2 == 0);
                    assert!(head.starts_with("HTTP/1.1 200"), "client {i}: {head}");
                    assert!(sha256(&body) == want, "client {i}: body differs");
                })
                .expect("spawning a client")
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        c.join()
            .unwrap_or_else(|_| panic!("client {i} failed (see its panic above)"));
    }
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!(stats.accepted, 200, "{stats:?}");
    assert_eq!(stats.responses_by_class[2], 200, "{stats:?}");
    assert_eq!(stats.refused + stats.closed_on_error, 0, "{stats:?}");
}

#[test]
fn silent_and_slow_clients_are_closed_at_their_deadlines() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(HttpServerConfig {
        workers: 1,
        http: ServerConfig {
            idle_timeout: Duration::from_millis(300),
            header_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        ..HttpServerConfig::default()
    });
    // Connects and sends nothing: closed when the idle deadline passes.
    let start = Instant::now();
    let mut silent = TcpStream::connect(fx.addr()).expect("connecting");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buf = [0u8; 256];
    let n = silent.read(&mut buf).expect("server closes, not a timeout");
    let waited = start.elapsed();
    assert_eq!(n, 0, "closed without a response");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "silent client closed after {waited:?}"
    );

    // Starts a request head and stalls (slowloris): 408, then closed.
    let start = Instant::now();
    let mut slow = TcpStream::connect(fx.addr()).expect("connecting");
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    slow.write_all(b"GET /one.bin HTTP/1.1\r\nHost: x\r\n")
        .expect("partial head");
    let mut response = Vec::new();
    slow.read_to_end(&mut response)
        .expect("server answers then closes");
    let waited = start.elapsed();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "slow client gets 408: {response}"
    );
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
        "slow client closed after {waited:?}"
    );
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!(stats.idle_timeouts, 1, "{stats:?}");
    assert_eq!(
        stats.rejections.get("header_timeout"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.closed, 2, "{stats:?}");
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(HttpServerConfig {
        workers: 1,
        max_connections_per_worker: 2,
        ..HttpServerConfig::default()
    });
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(fx.addr()).expect("connecting"))
        .collect();
    // Let the worker accept those two before the third arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fx.server.as_ref().expect("running").stats().accepted < 2 {
        assert!(Instant::now() < deadline, "two connections accepted");
        thread::sleep(Duration::from_millis(20));
    }
    let mut third = TcpStream::connect(fx.addr()).expect("the kernel completes the handshake");
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let _ = third.write_all(b"GET /one.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("third connection must be closed, got {other:?}"),
    }
    // The held connections still work.
    let mut first = &held[0];
    first
        .write_all(b"GET /one.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request on a held connection");
    let (head, body) = read_response(&mut held[0].try_clone().expect("clone"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 1);
    let stats = fx.stop(Duration::from_secs(5));
    assert_eq!((stats.accepted, stats.refused), (2, 1), "{stats:?}");
}

#[test]
fn graceful_stop_lets_an_in_flight_download_finish() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    let addr = fx.addr();
    let want = sha256(&fx.file("big.bin"));
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    // Read the first bytes so the response is surely in flight, then stop and keep reading
    // slowly enough that the stop request arrives mid-body.
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).expect("first bytes");
    assert!(n > 0, "response started");
    let idle = TcpStream::connect(addr).expect("an idle keep-alive connection");
    let server = fx.server.take().expect("running");
    let stopper = thread::spawn(move || server.stop(Instant::now() + Duration::from_secs(20)));
    thread::sleep(Duration::from_millis(300));
    // New connections are refused once every worker's listener is closed.
    assert!(
        TcpStream::connect(addr).is_err(),
        "listeners are closed during a graceful stop"
    );
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the download runs to the end, then the server closes");
    let mut all = first[..n].to_vec();
    all.extend_from_slice(&rest);
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert_eq!(all.len() - head_end, 64 * MIB, "whole body delivered");
    assert!(sha256(&all[head_end..]) == want, "body intact");
    let mut buf = [0u8; 1];
    let mut idle = idle;
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    assert_eq!(
        idle.read(&mut buf)
            .expect("idle connection closed by the stop"),
        0
    );
    let stats = stopper.join().expect("stop returns");
    assert_eq!(stats.aborted_at_stop, 0, "{stats:?}");
    assert_eq!(stats.accepted, stats.closed, "{stats:?}");
    let _ = stream.shutdown(Shutdown::Both);
}

#[test]
fn stop_deadline_cuts_a_stalled_download() {
    if !uring_available() {
        return;
    }
    let mut fx = Fixture::start(small_config());
    let mut stream = TcpStream::connect(fx.addr()).expect("connecting");
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut first = [0u8; 4096];
    assert!(stream.read(&mut first).expect("first bytes") > 0);
    // The client stops reading: the 64 MiB response can never finish.
    let start = Instant::now();
    let stats = fx.stop(Duration::from_millis(300));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stop returned after {:?}",
        start.elapsed()
    );
    assert_eq!(stats.aborted_at_stop, 1, "{stats:?}");
}
