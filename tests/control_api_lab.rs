//! The control API of a real `stampede boot`, driven by real clients: HTTPS with a private CA
//! (curl and `stampede ctl`), image imports with progress, boot sessions in `ctl`, and the
//! OpenAPI document checked against responses by schemathesis.
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use stampede_lab::{Netns, TwoHosts, require};
use support::appliance::{
    ADMIN_TOKEN, API, ApplianceLab, LabBoot, Payload, STAMPEDE, serve_command, stop,
};

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A certificate from another CA, and the key of a third party: the mismatch cases.
    other_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stampede test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("api.pem"),
        key: dir.join("api.key"),
        other_key: dir.join("other.key"),
    };
    std::fs::write(&pki.ca, ca.pem()).expect("write CA");
    std::fs::write(&pki.cert, server.pem()).expect("write cert");
    std::fs::write(&pki.key, server_key.serialize_pem()).expect("write key");
    let other = KeyPair::generate().expect("other key");
    std::fs::write(&pki.other_key, other.serialize_pem()).expect("write other key");
    pki
}

/// `stampede ctl` in `ns` with the admin token and `args`; the whole output.
fn ctl_raw(ns: &Netns, url: &str, args: &[&str]) -> stampede_lab::Output {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["ctl", "--url", url, "--token", ADMIN_TOKEN])
        .args(args)
        .env_remove("STAMPEDE_CACERT");
    stampede_lab::run_with_timeout(command, Duration::from_secs(30)).expect("ctl runs")
}

fn curl(ns: &Netns, args: &[&str]) -> stampede_lab::Output {
    ns.run("curl", args, Duration::from_secs(10))
        .expect("curl runs")
}

#[test]
fn the_api_serves_https_with_a_configured_certificate() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let payload = Payload::new(4096, 4096);
    let pki = make_pki(payload.dir.path());
    let cert = pki.cert.to_str().unwrap();
    let key = pki.key.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    let ApplianceLab {
        lab,
        payload: _payload,
        server,
    } = LabBoot::with_payload(payload)
        .args(&["--api-cert", cert, "--api-key", key])
        .start();
    let https = "https://127.0.0.1:7070";
    let up = stampede_lab::wait_for(Duration::from_secs(10), || {
        let out = lab
            .server
            .run(
                "curl",
                &["-sf", "--cacert", ca, &format!("{https}/api/v1/health")],
                Duration::from_secs(5),
            )
            .ok()?;
        out.status.success().then_some(out.stdout)
    });
    let health = up.expect("curl --cacert reaches /api/v1/health over https");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    // ctl over https, trusting the private CA by flag and by environment.
    let added = ctl_raw(
        &lab.server,
        https,
        &[
            "--cacert",
            ca,
            "machines",
            "add",
            "52:54:00:aa:bb:01",
            "--hostname",
            "tls-node",
        ],
    );
    assert!(added.status.success(), "{}{}", added.stdout, added.stderr);
    let mut command = lab.server.command(STAMPEDE);
    command
        .args([
            "ctl",
            "--url",
            https,
            "--token",
            ADMIN_TOKEN,
            "--json",
            "machines",
            "list",
        ])
        .env("STAMPEDE_CACERT", ca);
    let listed = stampede_lab::run_with_timeout(command, Duration::from_secs(30)).expect("ctl");
    assert!(
        listed.status.success() && listed.stdout.contains("tls-node"),
        "{}{}",
        listed.stdout,
        listed.stderr
    );

    // Without the CA the certificate is not trusted: refused, with the reason.
    let untrusted = ctl_raw(&lab.server, https, &["machines", "list"]);
    assert!(!untrusted.status.success(), "{}", untrusted.stdout);
    let untrusted_curl = curl(&lab.server, &["-s", &format!("{https}/api/v1/health")]);
    assert_eq!(
        untrusted_curl.status.code(),
        Some(60),
        "curl: peer certificate cannot be authenticated"
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = curl(
        &lab.server,
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{API}/api/v1/health"),
        ],
    );
    assert!(
        !plain.status.success(),
        "plain HTTP must fail: {}",
        plain.stdout
    );
    assert_eq!(plain.stdout, "000", "no HTTP status over a TLS port");
    let plain_ctl = ctl_raw(&lab.server, API, &["machines", "list"]);
    assert!(!plain_ctl.status.success(), "{}", plain_ctl.stdout);

    // A bad --cacert file is named.
    let bad_ca = ctl_raw(&lab.server, https, &["--cacert", key, "machines", "list"]);
    assert!(
        !bad_ca.status.success() && bad_ca.stderr.contains("--cacert"),
        "{}",
        bad_ca.stderr
    );
    stop(server);
}

/// `stampede boot` with these extra flags must refuse to start, saying `want`.
fn refuses_to_start(ns: &Netns, payload: &Payload, extra: &[&str], want: &str) {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["boot", "--iface", "lo", "--xdp-mode", "off"])
        .arg("--state")
        .arg(payload.dir.path().join("refused.redb"))
        .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(extra)
        .arg(&payload.kernel);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(20)).expect("runs");
    assert!(
        !out.status.success(),
        "{extra:?} must not start: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains(want),
        "{extra:?}: expected {want:?} in:\n{}",
        out.stderr
    );
}

#[test]
fn bad_certificate_files_stop_the_start_with_a_clear_error() {
    if !require!(&[]) {
        return;
    }
    let ns = Netns::new("tlsbad").expect("namespace");
    let payload = Payload::new(4096, 4096);
    let pki = make_pki(payload.dir.path());
    let cert = pki.cert.to_str().unwrap();
    let key = pki.key.to_str().unwrap();
    let other_key = pki.other_key.to_str().unwrap();
    let missing = payload.dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    refuses_to_start(
        &ns,
        &payload,
        &["--api-cert", missing, "--api-key", key],
        &format!("API TLS certificate {missing}: No such file"),
    );
    refuses_to_start(
        &ns,
        &payload,
        &["--api-cert", key, "--api-key", key],
        &format!("API TLS certificate {key}: no PEM CERTIFICATE block"),
    );
    refuses_to_start(
        &ns,
        &payload,
        &["--api-cert", cert, "--api-key", cert],
        &format!("API TLS key {cert}: no PEM PRIVATE KEY block"),
    );
    refuses_to_start(
        &ns,
        &payload,
        &["--api-cert", cert, "--api-key", other_key],
        "does not go with the certificate",
    );
    refuses_to_start(&ns, &payload, &["--api-cert", cert], "--api-key");
}

/// `curl` against the plain-HTTP API in `ns` with the admin token: (status, body as JSON).
fn api(ns: &Netns, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let url = format!("{API}{path}");
    let mut args = vec![
        "-s",
        "-X",
        method,
        "-H",
        &auth,
        "-w",
        "\n%{http_code}",
        &url,
    ];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = curl(ns, &args);
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl printed no status: {}", out.stdout));
    let status = code.parse().expect("an HTTP status");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Waits for import `id` to end; its last state.
fn finished_import(ns: &Netns, id: u64) -> serde_json::Value {
    stampede_lab::wait_for(Duration::from_secs(120), || {
        let (status, job) = api(ns, "GET", &format!("/api/v1/images/imports/{id}"), None);
        assert_eq!(status, 200, "{job}");
        (job["state"] != "running").then_some(job)
    })
    .unwrap_or_else(|| panic!("import {id} did not finish"))
}

/// Objects in the content store under `dir` (`sha256/xx/yyyy..`).
fn store_objects(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(prefixes) = std::fs::read_dir(dir.join("sha256")) else {
        return out;
    };
    for prefix in prefixes.flatten() {
        for object in std::fs::read_dir(prefix.path())
            .expect("prefix dir")
            .flatten()
        {
            out.push(format!(
                "{}{}",
                prefix.file_name().to_string_lossy(),
                object.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

fn audit_actions(ns: &Netns, action: &str, target: &str) -> usize {
    let (status, entries) = api(ns, "GET", "/api/v1/audit", None);
    assert_eq!(status, 200);
    entries
        .as_array()
        .expect("audit entries")
        .iter()
        .filter(|e| e["action"] == action && e["target"] == target)
        .count()
}

#[test]
fn a_large_image_imports_in_the_background_with_progress() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(4096, 4096).api().start();
    let store = payload.dir.path().join("images");

    // 96 MiB of incompressible bytes: long enough for progress to show in a debug build.
    let big = payload.dir.path().join("rootfs.img");
    let content = support::appliance::pseudo_random(96 << 20, 7);
    std::fs::write(&big, &content).expect("write image");
    let sha = support::appliance::sha256_file(&big);

    // Follow the event stream while importing.
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let events_url = format!("{API}/api/v1/events");
    let mut follow = lab.server.command("curl");
    follow
        .args(["-sN", "--max-time", "120", "-H", &auth, &events_url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let events = stampede_lab::Process::spawn(follow).expect("curl follows events");
    std::thread::sleep(Duration::from_millis(300));

    let out = ctl_raw(
        &lab.server,
        API,
        &[
            "images",
            "import",
            "rootfs",
            big.to_str().unwrap(),
            "--sha256",
            &sha,
        ],
    );
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("import 1 running: 0/100663296 bytes (0%)")),
        "first line is the start: {}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("import 1 done: 100663296/100663296 bytes (100%)")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "image rootfs sha256 {sha} (100663296 bytes) stored"
        )),
        "{}",
        out.stdout
    );
    let progress_lines = lines.iter().filter(|l| l.contains(" running: ")).count();
    eprintln!("ctl printed {progress_lines} progress lines while running");

    // The job, the image, the object on disk and the audit entry.
    let job = finished_import(&lab.server, 1);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["sha256"], sha.as_str());
    assert_eq!(job["outcome"], "created");
    assert_eq!(job["bytes_done"], 96 << 20);
    let (status, image) = api(&lab.server, "GET", &format!("/api/v1/images/{sha}"), None);
    assert_eq!(status, 200, "{image}");
    assert_eq!(image["name"], "rootfs");
    let object = PathBuf::from(image["path"].as_str().expect("path"));
    assert!(object.starts_with(&store), "{object:?} is in the store");
    assert_eq!(
        support::appliance::sha256_file(&object),
        sha,
        "stored bytes"
    );
    assert_eq!(store_objects(&store), vec![sha.clone()]);
    assert_eq!(audit_actions(&lab.server, "image.import", &sha), 1);

    // The event stream carried the job from start to end, bytes never going back.
    events
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("stop curl");
    let stream = events
        .wait_output(Duration::from_secs(5))
        .expect("curl ends");
    let jobs: Vec<serde_json::Value> = stream
        .stdout
        .split("\n\n")
        .filter(|m| m.contains("event: image_import"))
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).expect("event data is a job"))
        .collect();
    assert!(jobs.len() >= 2, "start and end events: {}", stream.stdout);
    assert_eq!(jobs[0]["state"], "running");
    assert_eq!(jobs[0]["bytes_done"], 0);
    let last = jobs.last().unwrap();
    assert_eq!(
        (&last["state"], &last["sha256"]),
        (&"done".into(), &sha.as_str().into())
    );
    let done: Vec<u64> = jobs
        .iter()
        .map(|j| j["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    eprintln!("{} image_import events", jobs.len());

    // ctl watch shows import progress too; --json is the finished job.
    let again = ctl_raw(
        &lab.server,
        API,
        &[
            "--json",
            "images",
            "import",
            "rootfs-again",
            big.to_str().unwrap(),
        ],
    );
    assert!(again.status.success(), "{}", again.stderr);
    let job: serde_json::Value = serde_json::from_str(&again.stdout).expect("--json is a job");
    assert_eq!(
        (&job["state"], &job["outcome"], &job["sha256"]),
        (&"done".into(), &"unchanged".into(), &sha.as_str().into()),
        "same content: nothing new stored"
    );
    assert_eq!(store_objects(&store), vec![sha.clone()]);
    stop(server);
}

#[test]
fn bad_imports_fail_clearly_and_store_nothing() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(4096, 4096).api().start();
    let store = payload.dir.path().join("images");
    let ns = &lab.server;

    let missing = payload.dir.path().join("no-such.img");
    let missing = missing.to_str().unwrap();
    let body = |name: &str, source: &str| format!(r#"{{"name":"{name}","source":"{source}"}}"#);
    let (status, err) = api(
        ns,
        "POST",
        "/api/v1/images/imports",
        Some(&body("x", missing)),
    );
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("No such file"),
        "{err}"
    );
    let dir = payload.dir.path().to_str().unwrap();
    let (status, err) = api(ns, "POST", "/api/v1/images/imports", Some(&body("x", dir)));
    assert_eq!(
        (
            status,
            err["error"]
                .as_str()
                .unwrap()
                .contains("not a regular file")
        ),
        (422, true),
        "{err}"
    );
    let (status, err) = api(
        ns,
        "POST",
        "/api/v1/images/imports",
        Some(&body("x", "relative.img")),
    );
    assert_eq!(
        (status, err["error"].as_str().unwrap().contains("absolute")),
        (422, true),
        "{err}"
    );
    let (status, err) = api(
        ns,
        "POST",
        "/api/v1/images/imports",
        Some(&format!(
            r#"{{"name":"x","source":"{}","sha256":"abc"}}"#,
            payload.kernel.display()
        )),
    );
    assert_eq!(status, 422, "{err}");

    // ctl says why, and fails.
    let out = ctl_raw(ns, API, &["images", "import", "x", missing]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("No such file"), "{}", out.stderr);

    // A file the kernel refuses to read: opens, then every read fails (EIO).
    let out = ctl_raw(ns, API, &["images", "import", "mem", "/proc/self/mem"]);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("failed") && out.stderr.contains("Input/output error"),
        "{}",
        out.stderr
    );

    // Content that is not what the caller said: the job fails and nothing is stored.
    let real = support::appliance::sha256_file(&payload.kernel);
    let wrong = "00".repeat(32);
    let out = ctl_raw(
        ns,
        API,
        &[
            "images",
            "import",
            "k",
            payload.kernel.to_str().unwrap(),
            "--sha256",
            &wrong,
        ],
    );
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("hashes to {real}, not the expected {wrong}")),
        "{}",
        out.stderr
    );
    assert!(
        store_objects(&store).is_empty(),
        "{:?}",
        store_objects(&store)
    );
    let (_, images) = api(ns, "GET", "/api/v1/images", None);
    assert_eq!(images, serde_json::json!([]));
    assert_eq!(
        std::fs::read_dir(store.join("tmp")).expect("tmp").count(),
        0,
        "no temporary file left behind"
    );

    // Two imports of the same content at once: one object, one image, one audit entry.
    let a = payload.dir.path().join("a.img");
    let b = payload.dir.path().join("b.img");
    let content = support::appliance::pseudo_random(32 << 20, 11);
    std::fs::write(&a, &content).expect("write a");
    std::fs::write(&b, &content).expect("write b");
    let sha = support::appliance::sha256_file(&a);
    let (s1, j1) = api(
        ns,
        "POST",
        "/api/v1/images/imports",
        Some(&body("a", a.to_str().unwrap())),
    );
    let (s2, j2) = api(
        ns,
        "POST",
        "/api/v1/images/imports",
        Some(&body("b", b.to_str().unwrap())),
    );
    assert_eq!((s1, s2), (202, 202), "{j1} {j2}");
    let j1 = finished_import(ns, j1["id"].as_u64().unwrap());
    let j2 = finished_import(ns, j2["id"].as_u64().unwrap());
    for j in [&j1, &j2] {
        assert_eq!(
            (&j["state"], &j["sha256"]),
            (&"done".into(), &sha.as_str().into()),
            "{j}"
        );
    }
    let mut outcomes = [
        j1["outcome"].as_str().unwrap(),
        j2["outcome"].as_str().unwrap(),
    ];
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["created", "unchanged"]);
    assert_eq!(store_objects(&store), vec![sha.clone()]);
    assert_eq!(audit_actions(ns, "image.import", &sha), 1);
    let listed = ctl_raw(ns, API, &["images", "imports"]);
    assert!(
        listed.stdout.contains("failed") && listed.stdout.contains("done"),
        "{}",
        listed.stdout
    );
    stop(server);
}

/// Installed by `cargo xtask setup` (xtask/src/setup.rs, `TOOLS_VENV`).
const SCHEMATHESIS: &str = "/opt/stampede-tools/venv/bin/schemathesis";

#[test]
fn the_openapi_document_matches_what_the_server_answers() {
    if !require!(&[SCHEMATHESIS, "curl", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(4096, 4096).api().start();
    // Something for the reads to find beside what schemathesis creates itself.
    let _ = api(
        &lab.server,
        "PUT",
        "/api/v1/profiles/base",
        Some(r#"{"name":"base","kernel":"vmlinuz","initrds":["initrd.img"],"cmdline":"quiet"}"#),
    );
    let _ = api(
        &lab.server,
        "PUT",
        "/api/v1/machines/52:54:00:00:00:01",
        Some(r#"{"mac":"52:54:00:00:00:01","hostname":"node-1","profile":"base"}"#),
    );

    let seed = std::env::var("STAMPEDE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let mut command = lab.server.command(SCHEMATHESIS);
    command
        .args(["run", &format!("{API}/api/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        // An SSE stream never ends, so there is no response to check; the stream is tested by
        // tests/boot_lab.rs and control/tests/api.rs.
        .args(["--exclude-path", "/api/v1/events"])
        // Revoking tokens includes the one schemathesis authenticates with (it learns names
        // from GET /api/v1/tokens), which turns the rest of the run into 401s; revocation is
        // tested in control/tests/api.rs.
        .args(["--exclude-path", "/api/v1/tokens/{name}"])
        .args([
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
            "--workers",
            "1",
        ])
        .args(["--seed", &seed])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        // It keeps a cache of examples in `.schemathesis/` under its working directory.
        .current_dir(payload.dir.path());
    // Bounded: a few hundred requests per phase, and a hard stop.
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(300))
        .expect("schemathesis runs within 300 s");
    assert!(
        out.status.success(),
        "schemathesis found responses that do not match the OpenAPI document:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let summary = out
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(" generated"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("schemathesis: {summary}");
    assert!(summary.contains("passed"), "{}", out.stdout);

    // The appliance is unharmed: its audit chain is intact and it stops cleanly.
    let (status, report) = api(&lab.server, "GET", "/api/v1/audit/verify", None);
    assert_eq!(status, 200, "{report}");
    assert!(report["problem"].is_null(), "{report}");
    stop(server);
}

#[test]
fn ctl_sessions_shows_boots_and_one_machines_timeline() {
    if !require!(&["busybox", "curl", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(64 << 10, 64 << 10)
        .dhcp_range(100, 150)
        .api()
        .start();
    let script = support::appliance::udhcpc_script(payload.dir.path());
    let link = lab
        .client
        .run(
            "ip",
            &["-br", "link", "show", "dev", &lab.client_if],
            Duration::from_secs(5),
        )
        .expect("ip link");
    let mac = link
        .stdout
        .split_whitespace()
        .nth(2)
        .expect("ip -br link prints the MAC")
        .to_owned();

    // A real DHCP exchange as iPXE, then the script iPXE would fetch, over real HTTP.
    let out = support::appliance::udhcpc(
        &lab.client,
        &lab.client_if,
        4,
        &script,
        support::appliance::UDHCPC_IPXE,
    );
    let lease = support::appliance::bound(&out.stdout);
    let script_url = lease["boot_file"].clone();
    let fetched = curl(&lab.client, &["-sf", &script_url]);
    assert!(fetched.status.success(), "{script_url}: {}", fetched.stderr);

    let listed = stampede_lab::wait_for(Duration::from_secs(5), || {
        let out = ctl_raw(&lab.server, API, &["sessions"]);
        (out.status.success() && out.stdout.contains("http:")).then_some(out.stdout)
    })
    .expect("the session lists its HTTP stage");
    let header = listed.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("MAC") && header.contains("OUTCOME") && header.contains("STAGES"),
        "{listed}"
    );
    let row = listed
        .lines()
        .find(|l| l.starts_with(&mac))
        .unwrap_or_else(|| panic!("{mac} not in:\n{listed}"));
    assert!(
        row.contains(&lease["ip"]) && row.contains("dhcp:") && row.contains(" ok "),
        "{row}"
    );

    let timeline = ctl_raw(&lab.server, API, &["sessions", &mac]);
    assert!(timeline.status.success(), "{}", timeline.stderr);
    let text = &timeline.stdout;
    assert!(text.starts_with(&mac), "{text}");
    for want in [
        "WAIT",
        "dhcp_reply",
        "offer",
        "ack",
        "http_response",
        "/boot.ipxe",
        "STAGE",
        "longest wait",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }

    let json = ctl_raw(&lab.server, API, &["--json", "sessions", &mac]);
    let t: serde_json::Value = serde_json::from_str(&json.stdout).expect("--json is the timeline");
    assert_eq!(t["mac"], mac.as_str());
    let kinds: Vec<&str> = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["dhcp_reply", "dhcp_reply", "http_response"],
        "{json:?}"
    );
    let list = ctl_raw(&lab.server, API, &["--json", "sessions"]);
    let l: serde_json::Value = serde_json::from_str(&list.stdout).expect("--json is the list");
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .any(|s| s["mac"] == mac.as_str())
    );

    let unknown = ctl_raw(&lab.server, API, &["sessions", "52:54:00:99:99:99"]);
    assert!(
        !unknown.status.success() && unknown.stderr.contains("404"),
        "{}",
        unknown.stderr
    );
    stop(server);
}

#[test]
fn an_image_imports_from_a_url() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(8 << 20, 4096).api().start();
    let ns = &lab.server;
    let store = payload.dir.path().join("images");
    // The appliance's own HTTP boot server is a real HTTP server on the lab network.
    let url = format!("http://{}:8080/files/vmlinuz", lab.server_ip());
    let sha = support::appliance::sha256_file(&payload.kernel);
    let out = ctl_raw(
        ns,
        API,
        &["images", "import", "kernel", &url, "--sha256", &sha],
    );
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("image kernel sha256 {sha} (8388608 bytes) stored")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("done: 8388608/8388608 bytes (100%)"),
        "the server sent Content-Length: {}",
        out.stdout
    );
    assert_eq!(store_objects(&store), vec![sha.clone()]);
    assert_eq!(audit_actions(ns, "image.import", &sha), 1);

    // A URL the server does not have, and one where nothing listens: refused at once.
    let missing = format!("http://{}:8080/files/no-such-file", lab.server_ip());
    let body = format!(r#"{{"name":"x","source":"{missing}"}}"#);
    let (status, err) = api(ns, "POST", "/api/v1/images/imports", Some(&body));
    assert_eq!(status, 422, "{err}");
    assert!(err["error"].as_str().unwrap().contains("404"), "{err}");
    let body = r#"{"name":"x","source":"http://127.0.0.1:9/vmlinuz"}"#;
    let (status, err) = api(ns, "POST", "/api/v1/images/imports", Some(body));
    assert_eq!(status, 422, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{err}"
    );
    stop(server);
}

#[test]
fn running_imports_show_partial_progress_and_are_bounded() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    use std::io::{Read as _, Write as _};
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(4096, 4096).api().start();
    let ns = &lab.server;
    let store = payload.dir.path().join("images");

    // An HTTP server in the lab that sends the first 100 of 1000 bytes and then stalls.
    let listener = ns
        .in_namespace(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("enter namespace")
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let stalling = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..4 {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                .expect("head");
            conn.write_all(&[7u8; 100]).expect("first bytes");
            held.push(conn);
        }
        let _ = released.recv_timeout(Duration::from_secs(60));
        // Dropping the connections ends each body 900 bytes short.
    });

    let mut ids = Vec::new();
    for n in 0..4 {
        let body = format!(r#"{{"name":"stall-{n}","source":"http://127.0.0.1:{port}/{n}"}}"#);
        let (status, job) = api(ns, "POST", "/api/v1/images/imports", Some(&body));
        assert_eq!(status, 202, "{job}");
        assert_eq!(job["bytes_total"], 1000, "{job}");
        ids.push(job["id"].as_u64().expect("id"));
    }
    // Each job reports exactly what has arrived while it waits for the rest.
    for id in &ids {
        let job = stampede_lab::wait_for(Duration::from_secs(10), || {
            let (_, job) = api(ns, "GET", &format!("/api/v1/images/imports/{id}"), None);
            (job["bytes_done"] == 100).then_some(job)
        })
        .unwrap_or_else(|| panic!("import {id} never showed its first 100 bytes"));
        assert_eq!(job["state"], "running", "{job}");
    }
    // A fifth is refused while four run.
    let local = format!(r#"{{"name":"k","source":"{}"}}"#, payload.kernel.display());
    let (status, err) = api(ns, "POST", "/api/v1/images/imports", Some(&local));
    assert_eq!(status, 429, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("4 imports are running"),
        "{err}"
    );

    // The server goes away mid-body: every job fails, nothing is stored.
    release.send(()).expect("release");
    stalling.join().expect("stalling server");
    for id in &ids {
        let job = finished_import(ns, *id);
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{job}"
        );
    }
    assert!(store_objects(&store).is_empty());
    assert_eq!(
        std::fs::read_dir(store.join("tmp")).expect("tmp").count(),
        0
    );
    // The slots are free again.
    let (status, job) = api(ns, "POST", "/api/v1/images/imports", Some(&local));
    assert_eq!(status, 202, "{job}");
    let job = finished_import(ns, job["id"].as_u64().unwrap());
    assert_eq!(job["state"], "done", "{job}");
    stop(server);
}

#[test]
fn serve_takes_the_api_certificate_from_its_config_file() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(4096, 4096);
    let dir = payload.dir.path();
    let pki = make_pki(dir);
    let write = |path: &Path, cert: &Path| {
        let text = format!(
            "[server]\ninterfaces = [\"{}\"]\napi = \"127.0.0.1:7443\"\n\
             api_tls_cert = \"{}\"\napi_tls_key = \"{}\"\n\
             [boot]\nfiles = {{ \"vmlinuz\" = \"{}\" }}\ndefault_profile = \"lab\"\n\
             [[profiles]]\nname = \"lab\"\nkernel = \"vmlinuz\"\n[xdp]\nmode = \"off\"\n",
            lab.server_if,
            cert.display(),
            pki.key.display(),
            payload.kernel.display(),
        );
        std::fs::write(path, text).expect("write config");
    };
    let serve = |config: &Path| {
        let command = serve_command(&lab.server, config, dir);
        stampede_lab::Process::spawn(command).expect("serve")
    };

    // A certificate path that does not exist: the start fails, naming the config's file.
    let broken = dir.join("broken.toml");
    let missing = dir.join("missing.pem");
    write(&broken, &missing);
    let out = serve(&broken)
        .wait_output(Duration::from_secs(20))
        .expect("serve exits");
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("API TLS certificate {}", missing.display())),
        "{}",
        out.stderr
    );

    let config = dir.join("stampede.toml");
    write(&config, &pki.cert);
    let server = serve(&config);
    let ca = pki.ca.to_str().unwrap();
    let health = stampede_lab::wait_for(Duration::from_secs(20), || {
        let out = lab
            .server
            .run(
                "curl",
                &[
                    "-sf",
                    "--cacert",
                    ca,
                    "https://127.0.0.1:7443/api/v1/health",
                ],
                Duration::from_secs(5),
            )
            .ok()?;
        out.status.success().then_some(out.stdout)
    })
    .expect("https from the config's certificate");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    stop(server);
}
