//! `stampede serve` attached to a veth in a namespace lab, with real DHCP clients on the other
//! end: what busybox udhcpc sends is what the XDP counters show, and stopping detaches.
mod support;

use std::{process::Command, process::Stdio, time::Duration};

use nix::sys::signal::Signal;
use stampede_lab::{Process, TwoHosts, wait_for};

const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

/// Parses `final counters dhcp_server=3/1026B ...` into (class, packets) pairs.
fn final_counters(stdout: &str) -> Vec<(String, u64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("final counters "))
        .unwrap_or_else(|| panic!("no final counters line in:\n{stdout}"));
    line.split_whitespace()
        .map(|token| {
            let (name, value) = token.split_once('=').expect("name=value");
            let packets = value.split_once('/').expect("packets/bytes").0;
            (name.to_owned(), packets.parse().expect("packet count"))
        })
        .collect()
}

fn xdp_attached(lab: &TwoHosts) -> bool {
    lab.server
        .ip(&["link", "show", "dev", &lab.server_if])
        .is_ok_and(|out| out.contains("xdp"))
}

fn start_serve(lab: &TwoHosts, extra: &[&str]) -> Process {
    let mut command = lab.server.command(STAMPEDE);
    command
        .args([
            "serve",
            "--iface",
            &lab.server_if,
            "--stats-interval",
            "0.5",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let serve = Process::spawn(command).expect("start stampede serve");
    assert!(
        wait_for(Duration::from_secs(15), || xdp_attached(lab).then_some(())).is_some(),
        "stampede serve did not attach XDP to {} within 15 s",
        lab.server_if
    );
    serve
}

#[test]
fn udhcpc_discovers_are_counted_and_sigterm_detaches() {
    if !stampede_lab::require!(&["busybox"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let serve = start_serve(&lab, &[]);

    // IPv6 is off in the lab, so every frame the client interface sends is udhcpc's.
    let tx_before = lab
        .client
        .link_stat(&lab.client_if, "tx_packets")
        .expect("tx stat");
    let rx_before = lab
        .server
        .link_stat(&lab.server_if, "rx_packets")
        .expect("rx stat");
    let udhcpc = support::appliance::udhcpc(
        &lab.client,
        &lab.client_if,
        3,
        std::path::Path::new("/bin/true"),
        &[],
    );
    let sent = lab
        .client
        .link_stat(&lab.client_if, "tx_packets")
        .expect("tx stat")
        - tx_before;
    let announced = udhcpc.stderr.matches("sending discover").count()
        + udhcpc.stderr.matches("broadcasting discover").count();
    assert_eq!(
        sent, 3,
        "udhcpc -t 3 sends three DISCOVERs; it said:\n{}",
        udhcpc.stderr
    );
    assert_eq!(
        announced as u64, sent,
        "udhcpc's log and the link disagree:\n{}",
        udhcpc.stderr
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            let rx = lab.server.link_stat(&lab.server_if, "rx_packets").ok()?;
            (rx - rx_before >= sent).then_some(())
        })
        .is_some(),
        "the server side never received what the client sent"
    );

    serve.signal(Signal::SIGTERM).expect("SIGTERM");
    let out = serve
        .wait_output(Duration::from_secs(10))
        .expect("serve exits after SIGTERM");
    assert!(
        out.status.success(),
        "serve failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    let counters = final_counters(&out.stdout);
    let get = |name: &str| counters.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
    assert_eq!(get("dhcp_server"), Some(sent), "{}", out.stdout);
    for class in ["proxy_dhcp", "tftp", "http", "malformed"] {
        assert_eq!(get(class), Some(0), "{class}: {}", out.stdout);
    }
    assert!(
        out.stdout
            .contains(&format!("detached iface={}", lab.server_if)),
        "{}",
        out.stdout
    );
    assert!(!xdp_attached(&lab), "XDP is still attached after SIGTERM");
}

#[test]
fn sigint_detaches_too() {
    if !stampede_lab::require!(&[]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let serve = start_serve(&lab, &["--xdp-mode", "generic"]);
    serve.signal(Signal::SIGINT).expect("SIGINT");
    let out = serve
        .wait_output(Duration::from_secs(10))
        .expect("serve exits after SIGINT");
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("mode=generic"), "{}", out.stdout);
    assert!(!xdp_attached(&lab), "XDP is still attached after SIGINT");
}

#[test]
fn unknown_interface_is_a_clear_error() {
    if !stampede_lab::require!(&[]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let out = stampede_lab::run_with_timeout(
        {
            let mut c: Command = lab.server.command(STAMPEDE);
            c.args(["serve", "--iface", "nosuchif0"]);
            c
        },
        Duration::from_secs(20),
    )
    .expect("serve runs");
    assert!(
        !out.status.success(),
        "serve on a missing interface must fail"
    );
    assert!(
        out.stderr.contains("nosuchif0"),
        "error does not name the interface: {}",
        out.stderr
    );
}
