//! HTTPS boot (issue 20 item 3) in a namespace lab: curl on the client side fetches boot files
//! from `stampede boot --https-port` byte-exact when it trusts the appliance CA (made in the
//! state directory at first start) or the operator's, and refuses the server with another CA.
mod support;

use std::{path::Path, time::Duration};

use stampede_lab::{Netns, require, wait_for};
use support::appliance::{ApplianceLab, LabBoot, sha256_file, stop};

const HTTPS_PORT: &str = "8443";

/// The appliance in `ns` listens on TCP `port`.
fn tcp_bound(ns: &Netns, port: &str) -> bool {
    ns.run("ss", &["-tlnH"], Duration::from_secs(5))
        .is_ok_and(|out| out.stdout.contains(&format!(":{port} ")))
}

fn wait_https(lab: &ApplianceLab) {
    assert!(
        wait_for(Duration::from_secs(20), || tcp_bound(
            &lab.lab.server,
            HTTPS_PORT
        )
        .then_some(()))
        .is_some(),
        "nothing listens on TCP {HTTPS_PORT}"
    );
}

/// A CA of the test's own (not the appliance's): its certificate's PEM, and a server
/// certificate and key for `ip` it issued, written into `dir`.
fn other_ca(
    dir: &Path,
    ip: std::net::Ipv4Addr,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "an operator's CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(ip.into()));
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let paths = (
        dir.join("operator-ca.pem"),
        dir.join("operator-cert.pem"),
        dir.join("operator-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write CA");
    std::fs::write(&paths.1, cert.pem()).expect("write cert");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

/// curl in the client namespace; its output (failures included).
fn curl(lab: &ApplianceLab, args: &[&str]) -> stampede_lab::Output {
    lab.lab
        .client
        .run("curl", args, Duration::from_secs(30))
        .expect("curl runs")
}

#[test]
fn curl_fetches_boot_files_over_https_trusting_the_appliance_ca_and_refuses_another_ca() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let lab = LabBoot::new(3 << 20, 1 << 20)
        .client_address()
        .api()
        .args(&["--https-port", HTTPS_PORT])
        .start();
    wait_https(&lab);
    let dir = lab.payload.dir.path();
    let ca = dir.join("ca").join("ca.pem");
    assert!(ca.exists(), "no appliance CA at {}", ca.display());
    // `stampede ctl ca show` prints it, offline, from the state directory.
    let shown = stampede_lab::run_with_timeout(
        {
            let mut c = std::process::Command::new(support::appliance::STAMPEDE);
            c.args(["ctl", "ca", "show", "--state"])
                .arg(dir.join("state.redb"));
            c
        },
        Duration::from_secs(10),
    )
    .expect("ctl runs");
    assert!(shown.status.success(), "{}", shown.stderr);
    assert_eq!(
        shown.stdout,
        std::fs::read_to_string(&ca).expect("CA"),
        "ctl ca show prints the stored CA"
    );
    let ip = lab.lab.server_ip();
    let base = format!("https://{ip}:{HTTPS_PORT}");
    let ca_arg = ca.to_str().expect("utf-8 path");

    for (name, want) in [
        ("vmlinuz", &lab.payload.kernel),
        ("initrd.img", &lab.payload.initrd),
    ] {
        let got = dir.join(format!("https.{name}"));
        let out = curl(
            &lab,
            &[
                "-sS",
                "--cacert",
                ca_arg,
                "-o",
                got.to_str().expect("utf-8"),
                &format!("{base}/files/{name}"),
            ],
        );
        assert!(out.status.success(), "curl https {name}: {}", out.stderr);
        assert_eq!(sha256_file(&got), sha256_file(want), "{name} over https");
        std::fs::remove_file(&got).expect("remove");
    }
    // A range, and several requests on one kept-alive TLS connection.
    let out = curl(
        &lab,
        &[
            "-sS",
            "--cacert",
            ca_arg,
            "-r",
            "100-199",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}\n",
            &format!("{base}/files/vmlinuz"),
            "-o",
            "/dev/null",
            &format!("{base}/files/initrd.img"),
        ],
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.starts_with("206 100\n"), "{}", out.stdout);

    // Another CA: curl refuses the server (exit 60, the certificate cannot be verified).
    let (wrong_ca, _, _) = other_ca(dir, ip);
    let out = curl(
        &lab,
        &[
            "-sS",
            "--cacert",
            wrong_ca.to_str().expect("utf-8"),
            "-o",
            "/dev/null",
            &format!("{base}/files/vmlinuz"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl with another CA must fail verification: {}",
        out.stderr
    );

    // Plain HTTP keeps serving beside it.
    let out = curl(
        &lab,
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{ip}:8080/files/vmlinuz"),
        ],
    );
    assert_eq!(out.stdout, "200", "{}", out.stderr);

    // The same counters in /metrics, published once a second.
    let metrics = wait_for(Duration::from_secs(5), || {
        let out = lab
            .lab
            .server
            .run(
                "curl",
                &[
                    "-sf",
                    "-H",
                    &format!("Authorization: Bearer {}", support::appliance::ADMIN_TOKEN),
                    &format!("{}/metrics", support::appliance::API),
                ],
                Duration::from_secs(5),
            )
            .ok()?;
        out.stdout
            .contains("stampede_https_handshake_failures_total 1")
            .then_some(out.stdout)
    });
    let metrics = metrics.expect("/metrics counts the failed HTTPS handshake");
    assert!(
        metrics.contains("stampede_https_responses_total{class=\"2xx\"} 4"),
        "{metrics}"
    );

    let (out, _) = stop(lab.server);
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("final https_stats "))
        .unwrap_or_else(|| panic!("no https stats: {}", out.stdout));
    assert!(line.contains("https_handshake_failures=1"), "{line}");
    assert!(line.contains("https_2xx=4"), "{line}");
}

#[test]
fn the_appliance_ca_survives_a_restart_and_operator_certificates_replace_it() {
    if !require!(&["curl", "ss", "busybox"]) {
        return;
    }
    let lab = LabBoot::new(1 << 16, 1 << 16)
        .client_address()
        .args(&["--https-port", HTTPS_PORT])
        .start();
    wait_https(&lab);
    let ca = lab.payload.dir.path().join("ca").join("ca.pem");
    let first = std::fs::read_to_string(&ca).expect("CA");
    let ApplianceLab {
        lab: hosts,
        payload,
        server,
    } = lab;
    stop(server);

    // The same state directory: the same CA, so firmware handed it once keeps working.
    let ip = hosts.server_ip();
    let (operator_ca, cert, key) = other_ca(payload.dir.path(), ip);
    let range = format!("{}-{}", hosts.subnet.host(100), hosts.subnet.host(110));
    let server = support::appliance::start_boot(
        &hosts.server,
        &hosts.server_if,
        &[
            "--dhcp-range",
            &range,
            "--https-port",
            HTTPS_PORT,
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--https-boot-urls",
        ],
        &payload,
    );
    let again = ApplianceLab {
        lab: hosts,
        payload,
        server,
    };
    wait_https(&again);
    assert_eq!(std::fs::read_to_string(&ca).expect("CA"), first);
    let base = format!("https://{ip}:{HTTPS_PORT}");
    let fetch = |ca: &Path| {
        curl(
            &again,
            &[
                "-sS",
                "--cacert",
                ca.to_str().expect("utf-8"),
                &format!("{base}/boot.ipxe?mac=52-54-00-12-34-56"),
            ],
        )
    };
    let out = fetch(&operator_ca);
    assert!(out.status.success(), "{}", out.stderr);
    // iPXE stays on HTTP even with --https-boot-urls (Debian's iPXE has no HTTPS).
    assert!(
        out.stdout.contains(&format!("chain http://{ip}:8080/")),
        "{}",
        out.stdout
    );
    // --https-boot-urls: a UEFI HTTP Boot client (option 60 HTTPClient, arch 16) is told to
    // fetch its loader by https.
    let script = support::appliance::udhcpc_script(again.payload.dir.path());
    let dhcp = support::appliance::udhcpc(
        &again.lab.client,
        &again.lab.client_if,
        3,
        &script,
        &["-V", "HTTPClient:Arch:00016:UNDI:003001", "-x", "0x5d:0010"],
    );
    let bound = support::appliance::bound(&dhcp.stdout);
    assert_eq!(
        bound.get("boot_file").map(String::as_str),
        Some(format!("{base}/snponly.efi").as_str()),
        "{}",
        dhcp.stdout
    );
    let out = fetch(&ca);
    assert_eq!(
        out.status.code(),
        Some(60),
        "the appliance CA no longer signs: {}",
        out.stderr
    );
    stop(again.server);
}

#[test]
fn a_missing_operator_key_is_a_clear_error() {
    if !require!(&["ss"]) {
        return;
    }
    let hosts = stampede_lab::TwoHosts::new().expect("lab");
    let payload = support::appliance::Payload::new(1 << 12, 1 << 12);
    let cert = payload.dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").expect("write");
    let mut command = hosts.server.command(support::appliance::STAMPEDE);
    command
        .args(["boot", "--iface", &hosts.server_if, "--xdp-mode", "off"])
        .arg("--state")
        .arg(payload.dir.path().join("state.redb"))
        .args(["--https-port", HTTPS_PORT, "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(payload.dir.path().join("no-such-key.pem"))
        .arg(&payload.kernel)
        .arg(&payload.initrd);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(30)).expect("runs");
    assert!(
        !out.status.success(),
        "must refuse to start: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("cert.pem") && out.stderr.contains("no PEM CERTIFICATE"),
        "{}",
        out.stderr
    );
}
