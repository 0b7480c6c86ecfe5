//! `docker://` pulls against Debian's docker-registry (distribution 2.8) in a network namespace
//! of the test's own, at 198.18.200.1 on its loopback: TLS from a test CA, htpasswd (Basic)
//! auth, token (Bearer) auth with a token service in the test, and plain http. skopeo pushes
//! the umoci image; the pull runs on a thread inside the namespace.
//!
//! Then a registry emulated in the test on 127.0.0.1 for what a real one will not do on
//! demand: a blob download cut off midway (the next pull resumes it with Range), blobs
//! redirected to another host (the token must not follow), a body longer than its descriptor,
//! a missing blob.
mod oci_support;

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use oci_support::{Fixture, TAG, assert_cache_verified, assert_is_base_image, tools};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SigningKey as _};
use stampede_lab::{Netns, Process};
use stampede_rootfs::oci::{self, ImportError, PullOptions, PulledImage, Source};

const REGISTRY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const USER: &str = "stampede";
const PASSWORD: &str = "correct horse";
const REPO: &str = "stampede/test";
const SERVICE: &str = "stampede-test-registry";
const ISSUER: &str = "stampede-test-issuer";

/// Ports inside the namespace: htpasswd + TLS, plain http, token auth + TLS, token service.
const PORT_BASIC: u16 = 5000;
const PORT_PLAIN: u16 = 5001;
const PORT_TOKEN: u16 = 5002;
const PORT_TOKEN_SERVICE: u16 = 5003;

/// The token service's signing key and its certificate (signed by the test CA).
struct TokenSigner {
    key: KeyPair,
    cert_der: Vec<u8>,
}

/// A test CA, the registry's certificate for 198.18.200.1, a token-signing certificate, and a
/// CA that signed none of them.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
    token: Arc<TokenSigner>,
    /// skopeo's `--dest-cert-dir`: the CA as `ca.crt`.
    cert_dir: PathBuf,
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn make_pki(dir: &Path) -> Pki {
    let ca = make_ca("stampede registry test CA");
    let other = make_ca("some other CA");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec![REGISTRY_IP.to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let token_key = KeyPair::generate().expect("token key");
    let mut token_params = CertificateParams::new(Vec::<String>::new()).expect("token params");
    token_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stampede token signer");
    let token_cert = token_params
        .signed_by(&token_key, &ca)
        .expect("token certificate");
    let cert_dir = dir.join("certs.d");
    fs::create_dir_all(&cert_dir).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("registry.pem"),
        key: dir.join("registry.key"),
        server_cert_der: server.der().to_vec(),
        server_key_der: server_key.serialize_der(),
        token: Arc::new(TokenSigner {
            cert_der: token_cert.der().to_vec(),
            key: token_key,
        }),
        cert_dir,
    };
    fs::write(&pki.ca, ca.pem()).unwrap();
    fs::write(pki.cert_dir.join("ca.crt"), ca.pem()).unwrap();
    fs::write(&pki.other_ca, other.pem()).unwrap();
    fs::write(&pki.cert, server.pem()).unwrap();
    fs::write(&pki.key, server_key.serialize_pem()).unwrap();
    pki
}

enum Auth<'a> {
    None,
    Htpasswd(&'a Path),
    Token { rootcertbundle: &'a Path },
}

/// Starts `docker-registry serve` in `ns` on `port`, serving `storage`; waits until it listens.
fn start_registry(
    ns: &Netns,
    dir: &Path,
    storage: &Path,
    port: u16,
    tls: Option<&Pki>,
    auth: Auth<'_>,
) -> Process {
    let mut config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: {REGISTRY_IP}:{port}\n  secret: stampede-test-only\n",
        storage.display()
    );
    if let Some(pki) = tls {
        config += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            pki.cert.display(),
            pki.key.display()
        );
    }
    match auth {
        Auth::None => {}
        Auth::Htpasswd(path) => {
            config += &format!(
                "auth:\n  htpasswd:\n    realm: stampede-test\n    path: {}\n",
                path.display()
            );
        }
        Auth::Token { rootcertbundle } => {
            config += &format!(
                "auth:\n  token:\n    realm: https://{REGISTRY_IP}:{PORT_TOKEN_SERVICE}/token\n    \
                 service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                rootcertbundle.display()
            );
        }
    }
    let path = dir.join(format!("registry-{port}.yml"));
    fs::write(&path, config).unwrap();
    // Its access log is piped (and dropped with the process), not mixed into the test's output.
    let mut command = ns.command("docker-registry");
    command
        .args(["serve", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let process = Process::spawn(command).expect("docker-registry starts");
    wait_listening(ns, port);
    process
}

fn wait_listening(ns: &Netns, port: u16) {
    let addr = SocketAddr::from((REGISTRY_IP, port));
    let up = stampede_lab::wait_for(Duration::from_secs(20), || {
        ns.in_namespace(move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .expect("enter namespace")
        .then_some(())
    });
    assert!(up.is_some(), "nothing listens on {addr} in {}", ns.name());
}

/// Pulls inside `ns` (the pull's sockets live there) into `cache`.
fn pull_in(
    ns: &Netns,
    source: String,
    cache: PathBuf,
    configure: impl FnOnce(&mut PullOptions<'_>) + Send + 'static,
) -> Result<PulledImage, ImportError> {
    ns.in_namespace(move || {
        let mut options = PullOptions::new(cache);
        configure(&mut options);
        oci::pull(&Source::parse(&source).expect("source"), &options)
    })
    .expect("enter namespace")
}

fn creds() -> Option<(String, String)> {
    Some((USER.to_owned(), PASSWORD.to_owned()))
}

#[test]
fn a_registry_with_tls_and_htpasswd_serves_verified_pulls_and_refuses_the_rest() {
    if !tools(
        "registry_tls_basic",
        &["umoci", "skopeo", "docker-registry", "htpasswd"],
    ) || !stampede_lab::require("registry_tls_basic", &[])
    {
        return;
    }
    let fixture = Fixture::build();
    let dir = fixture.dir.path();
    let pki = make_pki(dir);
    let storage = dir.join("storage");
    let htpasswd = dir.join("htpasswd");
    let line = oci_support::run("htpasswd", &["-Bbn", USER, PASSWORD]);
    fs::write(&htpasswd, line).unwrap();

    let ns = Netns::new("ociregistry").expect("netns");
    ns.ip(&["addr", "add", &format!("{REGISTRY_IP}/32"), "dev", "lo"])
        .expect("address on lo");
    let _basic = start_registry(
        &ns,
        dir,
        &storage,
        PORT_BASIC,
        Some(&pki),
        Auth::Htpasswd(&htpasswd),
    );
    let push = ns
        .run(
            "skopeo",
            &[
                "copy",
                "-q",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                "--dest-cert-dir",
                pki.cert_dir.to_str().unwrap(),
                &format!("oci:{}:{TAG}", fixture.layout.display()),
                &format!("docker://{REGISTRY_IP}:{PORT_BASIC}/{REPO}:{TAG}"),
            ],
            Duration::from_secs(120),
        )
        .expect("skopeo runs");
    assert!(push.status.success(), "skopeo push: {}", push.stderr);

    let source = format!("docker://{REGISTRY_IP}:{PORT_BASIC}/{REPO}:{TAG}");
    let cache = dir.join("cache");

    // The test CA and the password: the image, every blob verified.
    let ca = pki.ca.clone();
    let image = pull_in(&ns, source.clone(), cache.clone(), move |o| {
        o.ca_file = Some(ca);
        o.credentials = creds();
    })
    .expect("pull with CA and credentials");
    assert_is_base_image(&image, &fixture);
    assert_eq!(
        format!("sha256:{}", image.manifest_digest),
        fixture.manifest_digest(TAG),
        "skopeo pushed the layout's manifest unchanged"
    );
    assert_cache_verified(&cache);

    // By digest, the same image.
    let by_digest = format!(
        "docker://{REGISTRY_IP}:{PORT_BASIC}/{REPO}@{}",
        fixture.manifest_digest(TAG)
    );
    let ca = pki.ca.clone();
    let again = pull_in(&ns, by_digest, dir.join("cache-digest"), move |o| {
        o.ca_file = Some(ca);
        o.credentials = creds();
    })
    .expect("pull by digest");
    assert_eq!(again.layers.len(), 2);
    assert_eq!(again.manifest_digest, image.manifest_digest);

    // A CA that did not sign the registry's certificate.
    let other = pki.other_ca.clone();
    let err = pull_in(&ns, source.clone(), dir.join("cache-wrong-ca"), move |o| {
        o.ca_file = Some(other);
        o.credentials = creds();
    })
    .unwrap_err();
    assert!(matches!(err, ImportError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("TLS failure"), "{err}");
    assert!(err.to_string().contains(&REGISTRY_IP.to_string()), "{err}");

    // No credentials: 401, and the message says why.
    let ca = pki.ca.clone();
    let err = pull_in(&ns, source.clone(), dir.join("cache-anon"), move |o| {
        o.ca_file = Some(ca);
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImportError::Unauthorized { .. }), "{text}");
    assert!(
        text.contains("401") && text.contains("Basic") && text.contains("no credentials"),
        "{text}"
    );

    // A wrong password.
    let ca = pki.ca.clone();
    let err = pull_in(&ns, source.clone(), dir.join("cache-wrong"), move |o| {
        o.ca_file = Some(ca);
        o.credentials = Some((USER.into(), "wrong".into()));
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("credentials were refused"),
        "{err}"
    );
    for name in ["cache-wrong-ca", "cache-anon", "cache-wrong"] {
        assert_cache_verified(&dir.join(name));
    }

    // The same storage over plain http: refused unless asked for, then read.
    let _plain = start_registry(&ns, dir, &storage, PORT_PLAIN, None, Auth::None);
    let plain = format!("docker://{REGISTRY_IP}:{PORT_PLAIN}/{REPO}:{TAG}");
    let err = pull_in(&ns, plain.clone(), dir.join("cache-plain"), |_| {}).unwrap_err();
    assert!(matches!(err, ImportError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("plain http"), "{err}");
    let image = pull_in(&ns, plain, dir.join("cache-plain"), |o| o.plain_http = true)
        .expect("plain http when asked");
    assert_is_base_image(&image, &fixture);
}

/// A JWT as distribution's token auth checks it: ES256, signed by a key whose certificate
/// (in `x5c`) chains to the registry's `rootcertbundle`.
fn registry_token(signer: &TokenSigner, subject: &str, scope: &str) -> String {
    let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)],
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // scope is `repository:NAME:ACTIONS`.
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("jti-{now}"),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let der = signer.key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64url(&ecdsa_der_to_fixed(&der)))
}

/// An ECDSA P-256 signature from DER (SEQUENCE of two INTEGERs) to JWS's r || s (RFC 7518 §3.4).
fn ecdsa_der_to_fixed(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "a DER SEQUENCE");
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "a DER INTEGER");
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

/// One HTTP/1.1 request as a test server sees it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some(Request { path, headers })
}

fn respond(stream: &mut impl Write, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn basic_value() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

/// The token service: TLS with the registry's certificate, Basic credentials required; every
/// request's query is recorded.
fn start_token_service(ns: &Netns, pki: &Pki) -> Arc<Mutex<Vec<Request>>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert_der.clone().into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der.clone().into()),
        )
        .expect("token service TLS config");
    let config = Arc::new(config);
    let listener = ns
        .in_namespace(|| TcpListener::bind((REGISTRY_IP, PORT_TOKEN_SERVICE)))
        .expect("enter namespace")
        .expect("bind the token service");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let signer = pki.token.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { return };
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let Some(request) = read_request(&mut tls) else {
                continue;
            };
            log.lock().unwrap().push(request.clone());
            if request.headers.get("authorization") != Some(&basic_value()) {
                respond(
                    &mut tls,
                    "401 Unauthorized",
                    &[],
                    b"{\"details\":\"bad credentials\"}",
                );
                continue;
            }
            let scope = query_param(&request.path, "scope").unwrap_or_default();
            let token = registry_token(&signer, USER, &scope);
            let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
            respond(
                &mut tls,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    seen
}

fn query_param(path: &str, key: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_registry_with_token_auth_is_pulled_with_a_bearer_token() {
    if !tools(
        "registry_bearer",
        &["umoci", "skopeo", "docker-registry", "htpasswd"],
    ) || !stampede_lab::require("registry_bearer", &[])
    {
        return;
    }
    let fixture = Fixture::build();
    let dir = fixture.dir.path();
    let pki = make_pki(dir);
    let storage = dir.join("storage");
    let ns = Netns::new("ocitoken").expect("netns");
    ns.ip(&["addr", "add", &format!("{REGISTRY_IP}/32"), "dev", "lo"])
        .expect("address on lo");
    let seen = start_token_service(&ns, &pki);
    let _registry = start_registry(
        &ns,
        dir,
        &storage,
        PORT_TOKEN,
        Some(&pki),
        Auth::Token {
            rootcertbundle: &pki.ca,
        },
    );
    // skopeo goes through the same token dance to push.
    let push = ns
        .run(
            "skopeo",
            &[
                "copy",
                "-q",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                "--dest-cert-dir",
                pki.cert_dir.to_str().unwrap(),
                &format!("oci:{}:{TAG}", fixture.layout.display()),
                &format!("docker://{REGISTRY_IP}:{PORT_TOKEN}/{REPO}:{TAG}"),
            ],
            Duration::from_secs(120),
        )
        .expect("skopeo runs");
    assert!(
        push.status.success(),
        "skopeo push with a token: {}",
        push.stderr
    );
    seen.lock().unwrap().clear();

    let source = format!("docker://{REGISTRY_IP}:{PORT_TOKEN}/{REPO}:{TAG}");
    let cache = dir.join("cache");
    let ca = pki.ca.clone();
    let image = pull_in(&ns, source.clone(), cache.clone(), move |o| {
        o.ca_file = Some(ca);
        o.credentials = creds();
    })
    .expect("pull with a Bearer token");
    assert_is_base_image(&image, &fixture);
    assert_cache_verified(&cache);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        1,
        "one token for the whole pull: {requests:?}"
    );
    assert_eq!(
        query_param(&requests[0].path, "scope").as_deref(),
        Some(&*format!("repository:{REPO}:pull"))
    );
    assert_eq!(
        query_param(&requests[0].path, "service").as_deref(),
        Some(SERVICE)
    );

    // Without credentials the token service says no, and the error names it.
    let ca = pki.ca.clone();
    let err = pull_in(&ns, source, dir.join("cache-anon"), move |o| {
        o.ca_file = Some(ca);
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImportError::Unauthorized { .. }), "{text}");
    assert!(
        text.contains(&format!("{PORT_TOKEN_SERVICE}/token")) && text.contains("no credentials"),
        "{text}"
    );
}

/// A registry emulated on loopback: Bearer challenges and a token endpoint wanting Basic
/// credentials, blobs redirected (307) to a storage server on another port, whose first answer
/// for the largest blob stops after `cut_after` bytes.
struct FakeRegistry {
    registry: SocketAddr,
    /// (server, request): "registry" or "storage".
    log: Arc<Mutex<Vec<(&'static str, Request)>>>,
}

const FAKE_TOKEN: &str = "tok-123";

fn start_fake_registry(fixture: &Fixture, cut_after: usize) -> FakeRegistry {
    let mut blobs = HashMap::new();
    for entry in fs::read_dir(fixture.layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        blobs.insert(
            entry.file_name().to_string_lossy().into_owned(),
            fs::read(entry.path()).unwrap(),
        );
    }
    let biggest = blobs
        .iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .map(|(hex, _)| hex.clone())
        .unwrap();
    let mut manifests = HashMap::new();
    let base = fixture.manifest(TAG);
    manifests.insert("v1".to_owned(), serde_json::to_vec(&base).unwrap());
    let mut long = base.clone();
    long["layers"][1]["size"] = (long["layers"][1]["size"].as_u64().unwrap() - 1).into();
    manifests.insert("long".to_owned(), serde_json::to_vec(&long).unwrap());
    let mut missing = base.clone();
    missing["layers"][1]["digest"] =
        format!("sha256:{}", oci_support::sha256_hex(b"no such blob")).into();
    manifests.insert("missing".to_owned(), serde_json::to_vec(&missing).unwrap());

    let registry = TcpListener::bind("127.0.0.1:0").unwrap();
    let storage = TcpListener::bind("127.0.0.1:0").unwrap();
    let registry_addr = registry.local_addr().unwrap();
    let storage_addr = storage.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let blobs = Arc::new(blobs);

    let registry_log = log.clone();
    let registry_blobs = blobs.clone();
    thread::spawn(move || {
        for stream in registry.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some(request) = read_request(&mut stream) else {
                continue;
            };
            registry_log
                .lock()
                .unwrap()
                .push(("registry", request.clone()));
            let auth = request.headers.get("authorization").cloned();
            if request.path.starts_with("/token") {
                if auth.as_deref() == Some(&*basic_value()) {
                    let body = format!("{{\"access_token\":\"{FAKE_TOKEN}\"}}");
                    respond(&mut stream, "200 OK", &[], body.as_bytes());
                } else {
                    respond(&mut stream, "401 Unauthorized", &[], b"");
                }
                continue;
            }
            if auth.as_deref() != Some(&*format!("Bearer {FAKE_TOKEN}")) {
                let challenge = format!(
                    "Bearer realm=\"http://{registry_addr}/token\",service=\"fake-registry\",\
                     scope=\"repository:fake/app:pull\""
                );
                respond(
                    &mut stream,
                    "401 Unauthorized",
                    &[("WWW-Authenticate", challenge)],
                    b"",
                );
                continue;
            }
            if let Some(tag) = request.path.strip_prefix("/v2/fake/app/manifests/") {
                match manifests.get(tag) {
                    Some(bytes) => respond(
                        &mut stream,
                        "200 OK",
                        &[("Content-Type", oci::media_type::OCI_MANIFEST.into())],
                        bytes,
                    ),
                    None => respond(&mut stream, "404 Not Found", &[], b""),
                }
            } else if let Some(digest) = request.path.strip_prefix("/v2/fake/app/blobs/sha256:") {
                if registry_blobs.contains_key(digest) {
                    let location = format!("http://{storage_addr}/storage/{digest}");
                    respond(
                        &mut stream,
                        "307 Temporary Redirect",
                        &[("Location", location)],
                        b"",
                    );
                } else {
                    let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#;
                    respond(&mut stream, "404 Not Found", &[], body);
                }
            } else {
                respond(&mut stream, "404 Not Found", &[], b"");
            }
        }
    });

    let storage_log = log.clone();
    thread::spawn(move || {
        let mut cut_done = false;
        for stream in storage.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some(request) = read_request(&mut stream) else {
                continue;
            };
            storage_log
                .lock()
                .unwrap()
                .push(("storage", request.clone()));
            let hex = request.path.trim_start_matches("/storage/");
            let Some(bytes) = blobs.get(hex) else {
                respond(&mut stream, "404 Not Found", &[], b"");
                continue;
            };
            let start = request
                .headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            match start {
                Some(start) => {
                    let range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
                    respond(
                        &mut stream,
                        "206 Partial Content",
                        &[("Content-Range", range)],
                        &bytes[start..],
                    );
                }
                None if *hex == biggest && !cut_done => {
                    // Promise the whole blob, send part of it, hang up.
                    cut_done = true;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&bytes[..cut_after]);
                    let _ = stream.flush();
                }
                None => respond(&mut stream, "200 OK", &[], bytes),
            }
        }
    });
    FakeRegistry {
        registry: registry_addr,
        log,
    }
}

fn pull_fake(
    fake: &FakeRegistry,
    tag: &str,
    cache: &Path,
    with_creds: bool,
) -> Result<PulledImage, ImportError> {
    let mut options = PullOptions::new(cache);
    options.plain_http = true;
    if with_creds {
        options.credentials = creds();
    }
    let source = format!("docker://{}/fake/app:{tag}", fake.registry);
    oci::pull(&Source::parse(&source).unwrap(), &options)
}

#[test]
fn an_interrupted_blob_resumes_with_range_and_tokens_stay_off_other_hosts() {
    if !tools("registry_resume", &["umoci", "skopeo"]) {
        return;
    }
    let fixture = Fixture::build();
    let cut_after = 1_000_000;
    let fake = start_fake_registry(&fixture, cut_after);
    let cache = fixture.dir.path().join("cache");
    let big = fixture.manifest(TAG)["layers"][0]["digest"]
        .as_str()
        .unwrap()[7..]
        .to_owned();
    let partial = cache.join("sha256").join(format!("{big}.partial"));

    let err = pull_fake(&fake, "v1", &cache, true).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::Transfer { .. } | ImportError::ShortBlob { .. }
        ),
        "{err}"
    );
    let kept = fs::metadata(&partial)
        .expect("the partial download is kept")
        .len();
    assert!(kept > 0 && kept <= cut_after as u64, "{kept}");
    assert!(!cache.join("sha256").join(&big).exists());

    let image = pull_fake(&fake, "v1", &cache, true).expect("the second pull completes");
    assert_is_base_image(&image, &fixture);
    assert!(!partial.exists());
    assert_cache_verified(&cache);

    let log = fake.log.lock().unwrap().clone();
    let storage: Vec<&Request> = log
        .iter()
        .filter(|(server, r)| *server == "storage" && r.path.ends_with(&big))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(storage.len(), 2, "{storage:?}");
    assert_eq!(storage[0].headers.get("range"), None);
    assert_eq!(
        storage[1].headers.get("range").map(String::as_str),
        Some(&*format!("bytes={kept}-")),
        "the second pull asks only for the rest"
    );
    // The registry's token went to the registry only: the redirect to storage dropped it.
    for (server, request) in &log {
        if *server == "storage" {
            assert_eq!(request.headers.get("authorization"), None, "{request:?}");
        }
    }
    let token_requests: Vec<&Request> = log
        .iter()
        .filter(|(_, r)| r.path.starts_with("/token"))
        .map(|(_, r)| r)
        .collect();
    assert!(!token_requests.is_empty());
    assert_eq!(
        query_param(&token_requests[0].path, "scope").as_deref(),
        Some("repository:fake/app:pull")
    );
    assert_eq!(
        query_param(&token_requests[0].path, "service").as_deref(),
        Some("fake-registry")
    );

    // A blob longer than its descriptor is cut off and refused; nothing partial is kept.
    let other = fixture.dir.path().join("cache-long");
    let err = pull_fake(&fake, "long", &other, true).unwrap_err();
    assert!(matches!(err, ImportError::TooLarge { .. }), "{err}");
    assert_cache_verified(&other);

    // A blob the registry does not have, named with its digest.
    let err = pull_fake(&fake, "missing", &other, true).unwrap_err();
    assert!(matches!(err, ImportError::MissingBlob { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&oci_support::sha256_hex(b"no such blob")),
        "{err}"
    );

    // No credentials: the token endpoint says no.
    let err = pull_fake(&fake, "v1", &other, false).unwrap_err();
    assert!(matches!(err, ImportError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("/token"), "{err}");
    assert_cache_verified(&other);
}
