//! Safety at start (issue 18): what would have the appliance serve wrongly is refused, or said,
//! before `ready`: a second appliance on the same interface, another DHCP server on the link.
mod support;

use std::{process::Stdio, time::Duration};

use stampede_lab::{Netns, Output, TwoHosts, require, run_with_timeout};
use support::appliance::{ADMIN_TOKEN, Payload, STAMPEDE, start_boot, stop};

/// `stampede boot --iface IFACE EXTRA.. KERNEL INITRD` in `ns` with its own state, expected to
/// stop by itself; what it printed.
fn boot_refused(ns: &Netns, iface: &str, extra: &[&str], payload: &Payload) -> Output {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["boot", "--iface", iface, "--xdp-mode", "off"])
        .args(extra)
        .arg("--state")
        .arg(payload.dir.path().join("second/state.redb"))
        .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg(&payload.kernel)
        .arg(&payload.initrd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_with_timeout(command, Duration::from_secs(30)).expect("stampede boot runs");
    assert!(
        !out.status.success() && !out.stdout.lines().any(|l| l.starts_with("ready ")),
        "expected a refusal before ready:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out
}

#[test]
fn a_second_appliance_on_the_same_interface_is_refused_naming_the_first() {
    if !require("start_safety_second_appliance", &["ss"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(4096, 4096);
    let first = start_boot(&lab.server, &lab.server_if, &["--api", "off"], &payload);
    let pid = first.id().expect("running");

    let out = boot_refused(&lab.server, &lab.server_if, &["--api", "off"], &payload);
    assert!(
        out.stderr.contains(&format!(
            "{} is already served by another stampede (pid {pid}",
            lab.server_if
        )),
        "{}",
        out.stderr
    );
    stop(first);
}

#[test]
fn another_dhcp_server_on_the_link_is_named_at_an_authoritative_start() {
    if !require("start_safety_other_dhcp_server", &["ss"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let range = |a: u8, b: u8| format!("{}-{}", lab.subnet.host(a), lab.subnet.host(b));
    let payload = Payload::new(4096, 4096);
    let first = start_boot(
        &lab.server,
        &lab.server_if,
        &["--api", "off", "--dhcp-range", &range(100, 150)],
        &payload,
    );
    // A second authoritative server on the same link, from the other end of the veth.
    lab.client
        .ip(&["addr", "add", &lab.subnet.cidr(2), "dev", &lab.client_if])
        .expect("address the second server");
    let other = Payload::new(4096, 4096);
    let second = start_boot(
        &lab.client,
        &lab.client_if,
        &["--api", "off", "--dhcp-range", &range(160, 200)],
        &other,
    );
    let (out, _) = stop(second);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("another DHCP server answers on this link"))
        .unwrap_or_else(|| panic!("no warning about the other server:\n{}", out.stderr));
    assert!(
        warning.contains(&format!("server={}", lab.server_ip()))
            && warning.contains(&lab.client_if),
        "{warning}"
    );
    let (first_out, _) = stop(first);
    assert!(
        !first_out.stderr.contains("another DHCP server"),
        "alone on the link at its start:\n{}",
        first_out.stderr
    );
}

#[test]
fn a_dhcp_range_of_another_network_is_refused_naming_both() {
    if !require("start_safety_dhcp_range_off_link", &[]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(4096, 4096);
    let out = boot_refused(
        &lab.server,
        &lab.server_if,
        &[
            "--api",
            "off",
            "--dhcp-range",
            "198.19.250.10-198.19.250.50",
        ],
        &payload,
    );
    let expected = format!(
        "--dhcp-range: 198.19.250.10-198.19.250.50 is not in {}'s network {}/24",
        lab.server_if,
        lab.subnet.network()
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
}
