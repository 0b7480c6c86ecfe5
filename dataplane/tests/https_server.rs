//! The HTTPS boot server (`engine::https`) on 127.0.0.1 with a rustls client: byte-exact bodies
//! over one kept-alive TLS connection, refusals the core decides, a client that never finishes
//! its handshake, the connection limit, and an untrusting client counted as a handshake failure.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use stampede_dataplane::engine::https::{HttpsServer, HttpsServerConfig, HttpsStats};
use stampede_proto::files::{BootFile, MemoryCatalog};

struct Pki {
    ca: CertificateDer<'static>,
    server: rustls::ServerConfig,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test server");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    Pki {
        ca: ca.der().clone(),
        server,
    }
}

fn client_config(trusted: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted).expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 997) as u8).collect()
}

fn start(config: HttpsServerConfig) -> (HttpsServer, Pki, Vec<u8>) {
    let pki = pki();
    let body = content(3 * 1024 * 1024 + 17);
    let mut catalog = MemoryCatalog::new();
    catalog.insert("kernel", BootFile::new(body.clone()));
    let server = HttpsServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
        Arc::new(pki.server.clone()),
        Arc::new(catalog),
        None,
    )
    .expect("server");
    (server, pki, body)
}

/// Reads one response (head and `Content-Length` body) from `tls`.
fn response(tls: &mut impl Read) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).expect("head byte");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).expect("ASCII head");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .expect("number");
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).expect("body");
    (head, body)
}

fn wait_stats(server: &HttpsServer, done: impl Fn(&HttpsStats) -> bool) -> HttpsStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn files_come_byte_exact_over_one_kept_alive_tls_connection() {
    let (server, pki, body) = start(HttpsServerConfig::default());
    let mut conn = rustls::ClientConnection::new(
        client_config(pki.ca.clone()),
        ServerName::try_from("127.0.0.1").expect("name"),
    )
    .expect("client");
    let mut tcp = TcpStream::connect(server.local_addr()).expect("connect");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(
        b"GET /kernel HTTP/1.1\r\nHost: t\r\n\r\nGET /missing HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .expect("two pipelined requests");
    let (head, got) = response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(got == body, "the body differs from the file");
    let (head, _) = response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    tls.write_all(b"GET /kernel HTTP/1.1\r\nHost: t\r\nRange: bytes=10-19\r\n\r\n")
        .expect("range request");
    let (head, got) = response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(got, &body[10..20]);
    drop(tcp);
    let stats = wait_stats(&server, |s| s.http.closed == 1);
    assert_eq!(stats.http.accepted, 1);
    assert_eq!(stats.http.responses_by_class[2], 2);
    assert_eq!(stats.http.responses_by_class[4], 1);
    assert_eq!(stats.http.rejections.get("not_found"), Some(&1));
    assert_eq!(stats.handshake_failures, 0);
    server.stop(Instant::now() + Duration::from_secs(5));
}

#[test]
fn a_client_trusting_another_ca_is_a_handshake_failure() {
    let (server, _pki, _) = start(HttpsServerConfig::default());
    let other = pki();
    let mut conn = rustls::ClientConnection::new(
        client_config(other.ca),
        ServerName::try_from("127.0.0.1").expect("name"),
    )
    .expect("client");
    let mut tcp = TcpStream::connect(server.local_addr()).expect("connect");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let err = tls
        .write_all(b"GET /kernel HTTP/1.1\r\nHost: t\r\n\r\n")
        .and_then(|()| tls.read(&mut [0u8; 16]).map(|_| ()))
        .expect_err("the client must refuse the certificate");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    let stats = wait_stats(&server, |s| s.handshake_failures == 1);
    assert_eq!(stats.handshake_failures, 1, "{stats:?}");
    assert_eq!(stats.http.responses(), 0);
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_timeout_and_the_limit_refuses_more() {
    let (server, _pki, _) = start(HttpsServerConfig {
        max_connections: 1,
        handshake_timeout: Duration::from_millis(300),
        ..HttpsServerConfig::default()
    });
    let _silent = TcpStream::connect(server.local_addr()).expect("connect");
    wait_stats(&server, |s| s.http.accepted == 1);
    // The one slot is taken: the next connection is closed at once.
    let mut refused = TcpStream::connect(server.local_addr()).expect("connect");
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(refused.read(&mut [0u8; 1]).expect("closed, not reset"), 0);
    let stats = wait_stats(&server, |s| s.handshake_failures == 1);
    assert_eq!(stats.http.refused, 1, "{stats:?}");
    assert_eq!(
        stats.handshake_failures, 1,
        "the silent client timed out: {stats:?}"
    );
    let stats = server.stop(Instant::now() + Duration::from_secs(5));
    assert_eq!(stats.http.closed, 1, "{stats:?}");
}
