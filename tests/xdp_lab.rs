//! The XDP classifier attached (native mode, on veth) in front of a real `stampede serve`, in
//! namespace labs: the drop policy follows the control API and SIGHUP while attached, and a
//! bounded DISCOVER flood from many random MACs dies in XDP while real clients (udhcpc, tftp-hpa)
//! are still served.
mod support;

use std::{collections::HashMap, path::Path, time::Duration};

use nix::sys::signal::Signal;
use stampede_lab::{
    Netns, Process, TwoHosts,
    flood::{FloodConfig, FloodReport},
    require, wait_for,
};
use support::appliance::*;

const MAC_A: &str = "52:54:00:66:00:01";
/// A configuration file: authoritative DHCP on `iface`, one profile, the given `[xdp]` keys and
/// extra `[[machines]]`.
fn write_config(path: &Path, lab: &TwoHosts, payload: &Payload, xdp: &str, machines: &str) {
    let text = format!(
        "[server]\ninterfaces = [\"{iface}\"]\n\
         [dhcp]\nmode = \"authoritative\"\n\
         [[dhcp.pools]]\nrange = \"{first}-{last}\"\nsubnet = \"{subnet}/24\"\n\
         [boot]\nfiles = {{ \"vmlinuz\" = \"{kernel}\", \"initrd.img\" = \"{initrd}\" }}\n\
         default_profile = \"lab\"\n\
         [[profiles]]\nname = \"lab\"\nkernel = \"vmlinuz\"\ninitrds = [\"initrd.img\"]\n\
         {machines}\n\
         [xdp]\n{xdp}\n",
        iface = lab.server_if,
        first = lab.subnet.host(100),
        last = lab.subnet.host(150),
        subnet = lab.subnet.network(),
        kernel = payload.kernel.display(),
        initrd = payload.initrd.display(),
    );
    std::fs::write(path, text).expect("write config");
}

/// Starts `stampede serve --config` in `ns` with the control API on, and waits for the API.
fn start_serve(ns: &Netns, config: &Path, payload: &Payload) -> Process {
    let command = serve_command(ns, config, payload.dir.path());
    spawn_appliance(command, "stampede serve", || api_answers(ns))
}

/// All samples of `/metrics` as `name{labels}` → value.
fn metrics(ns: &Netns) -> HashMap<String, u64> {
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let out = ns
        .run(
            "curl",
            &["-sf", "-H", &auth, &format!("{API}/metrics")],
            Duration::from_secs(5),
        )
        .expect("curl /metrics");
    assert!(out.status.success(), "/metrics: {}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<f64>().ok()? as u64)))
        .collect()
}

fn dropped(m: &HashMap<String, u64>, reason: &str) -> u64 {
    m.get(&format!(
        "stampede_xdp_dropped_total{{reason=\"{reason}\"}}"
    ))
    .copied()
    .unwrap_or(0)
}

fn dhcp_received(m: &HashMap<String, u64>) -> u64 {
    m.get("stampede_dhcp_received_total").copied().unwrap_or(0)
}

/// `/metrics` once it is published with `reason` above `above` (copied in once a second).
fn metrics_after(ns: &Netns, reason: &str, above: u64) -> HashMap<String, u64> {
    wait_for(Duration::from_secs(5), || {
        let m = metrics(ns);
        (dropped(&m, reason) > above).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "xdp drops for {reason} did not rise above {above}: {:?}",
            metrics(ns)
        )
    })
}

/// One udhcpc run from the client; `Some(ip)` when it got a lease. `tries` DISCOVERs, 1 s apart.
fn udhcpc(lab: &TwoHosts, script: &Path, tries: u32) -> Option<String> {
    lab.client
        .ip(&["addr", "flush", "dev", &lab.client_if])
        .expect("flush");
    let out = support::appliance::udhcpc(&lab.client, &lab.client_if, tries, script, UDHCPC_BIOS);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("BOUND "))
        .map(|l| l.to_owned())
}

/// The client is served within a few attempts (a policy change lands within one event-loop turn
/// of the appliance, so the first attempt may still see the old lists).
fn served(lab: &TwoHosts, script: &Path, why: &str) -> String {
    wait_for(Duration::from_secs(20), || udhcpc(lab, script, 3))
        .unwrap_or_else(|| panic!("{why}: udhcpc got no lease"))
}

/// The client is refused (after a policy change lands), and a further attempt is dropped in XDP
/// under `reason` while the engine receives no DHCP at all.
fn refused_at_nic(lab: &TwoHosts, script: &Path, reason: &str, why: &str) {
    let refused = wait_for(Duration::from_secs(20), || {
        udhcpc(lab, script, 2).is_none().then_some(())
    });
    assert!(refused.is_some(), "{why}: udhcpc is still served");
    // The counters reach /metrics once a second: let the last attempt's land first.
    std::thread::sleep(Duration::from_millis(1200));
    let before = metrics(&lab.server);
    if let Some(bound) = udhcpc(lab, script, 2) {
        panic!("{why}: udhcpc was served: {bound}");
    }
    let after = metrics_after(&lab.server, reason, dropped(&before, reason));
    assert_eq!(
        dhcp_received(&after),
        dhcp_received(&before),
        "{why}: the engine saw DHCP that XDP should have dropped"
    );
}

#[test]
fn xdp_policy_follows_the_control_api_and_sighup_while_attached() {
    if !require!(&["busybox", "curl", "ss"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    lab.client
        .ip(&["link", "set", "dev", &lab.client_if, "address", MAC_A])
        .expect("mac");
    let payload = Payload::new(4096, 4096);
    let dir = payload.dir.path();
    let config = dir.join("stampede.toml");
    let xdp = "mode = \"native\"\npolicy = \"known-only\"";
    write_config(&config, &lab, &payload, xdp, "");
    let server = start_serve(&lab.server, &config, &payload);
    let script = udhcpc_script(dir);
    let ctl = |args: &[&str]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        ctl(&lab.server, &args)
    };

    // Unknown in known-only mode: dropped at the NIC, the engine never sees a DISCOVER.
    refused_at_nic(
        &lab,
        &script,
        "unknown_mac",
        "unknown MAC in known-only mode",
    );

    // Registered through the API: on the allow list, served.
    ctl(&["machines", "add", MAC_A, "--hostname", "node-a"]);
    served(&lab, &script, "registered through the API");

    // Denied through the API: the deny list, counted as denied_mac.
    ctl(&["machines", "add", MAC_A, "--deny"]);
    refused_at_nic(&lab, &script, "denied_mac", "denied through the API");

    // Allowed again: served.
    ctl(&["machines", "add", MAC_A]);
    served(&lab, &script, "allowed again");

    // Removed: unknown again.
    ctl(&["machines", "rm", MAC_A]);
    refused_at_nic(&lab, &script, "unknown_mac", "removed through the API");

    // SIGHUP: the file now knows the machine.
    let machine = format!("[[machines]]\nmac = \"{MAC_A}\"\n");
    write_config(&config, &lab, &payload, xdp, &machine);
    server.signal(Signal::SIGHUP).expect("SIGHUP");
    served(&lab, &script, "known from the file after SIGHUP");

    // SIGHUP: the file's own deny list wins over the machine entry.
    let deny = format!("{xdp}\ndeny = [\"{MAC_A}\"]");
    write_config(&config, &lab, &payload, &deny, &machine);
    server.signal(Signal::SIGHUP).expect("SIGHUP");
    refused_at_nic(&lab, &script, "denied_mac", "on xdp.deny after SIGHUP");

    // SIGHUP back to open mode without the deny: served without being known.
    write_config(&config, &lab, &payload, "mode = \"native\"", "");
    server.signal(Signal::SIGHUP).expect("SIGHUP");
    served(&lab, &script, "open mode after SIGHUP");

    let (out, _) = stop(server);
    assert!(
        out.stderr.contains("XDP classifier attached") && out.stderr.contains("mode=native"),
        "attached natively: {}",
        out.stderr
    );
    assert!(
        out.stderr.matches("XDP policy applied").count() >= 8,
        "start, 4 API changes, 3 reloads: {}",
        out.stderr
    );
}

/// `key=N` of a `name a=N/xB b=...` counter line the appliance prints at stop.
fn counter_line(stdout: &str, prefix: &str) -> HashMap<String, u64> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            let packets = v.split('/').next().unwrap_or(v);
            (k.to_owned(), packets.parse().expect("a count"))
        })
        .collect()
}

/// What a known machine does while the flood runs: DHCP, then a TFTP download, byte-exact.
fn boot_during_flood(lab: &TwoHosts, payload: &Payload, script: &Path) {
    let bound = served(lab, script, "a known machine during the flood");
    let server_ip = lab.server_ip().to_string();
    assert!(bound.contains(&format!("siaddr={server_ip}")), "{bound}");
    let got = payload.dir.path().join("vmlinuz.got");
    let out = lab
        .client
        .run(
            "tftp",
            &[
                &server_ip,
                "-m",
                "binary",
                "-c",
                "get",
                "vmlinuz",
                got.to_str().expect("utf-8"),
            ],
            Duration::from_secs(60),
        )
        .expect("tftp runs");
    assert!(
        out.status.success(),
        "tftp-hpa during the flood: {}",
        out.stderr
    );
    assert_eq!(sha256_file(&got), sha256_file(&payload.kernel));
}

#[test]
fn a_discover_flood_dies_in_xdp_while_real_clients_boot() {
    if !require!(&["busybox", "curl", "ss", "tftp"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    lab.client
        .ip(&["link", "set", "dev", &lab.client_if, "address", MAC_A])
        .expect("mac");
    let payload = Payload::new(1 << 20, 4096);
    let dir = payload.dir.path();
    let config = dir.join("stampede.toml");
    let machine = format!("[[machines]]\nmac = \"{MAC_A}\"\n");
    write_config(
        &config,
        &lab,
        &payload,
        "mode = \"native\"\npolicy = \"known-only\"",
        &machine,
    );
    let server = start_serve(&lab.server, &config, &payload);
    let script = udhcpc_script(dir);

    // A bounded flood from random MACs on the same wire, started before the client and
    // running while it boots.
    let flood_config = FloodConfig::new(&lab.client_if, 3_000_000, Duration::from_secs(10));
    let report: FloodReport = std::thread::scope(|scope| {
        let flood = scope.spawn(|| lab.client.flood(flood_config).expect("flood"));
        std::thread::sleep(Duration::from_millis(500));
        boot_during_flood(&lab, &payload, &script);
        assert!(
            !flood.is_finished(),
            "the flood ended before the client was done: nothing was proven"
        );
        flood.join().expect("flood thread")
    });
    let (out, stats) = stop(server);
    let classes = counter_line(&out.stdout, "xdp ");
    let drops = counter_line(&out.stdout, "xdp_drops ");
    eprintln!(
        "flood: {report:?} ({:.0} frames/s); xdp classes {classes:?}; drops {drops:?}; \
         engine dhcp_received={}",
        report.packets_per_sec(),
        stats["dhcp_received"]
    );
    assert!(
        report.sent >= 10_000,
        "the flood sent too little: {report:?}"
    );
    // Every flood frame reached XDP (veth pushes back on a full ring: the sender waits, no frame
    // is lost on the wire) and was dropped there as unknown; what XDP let through is the
    // client's own DHCP, and that is all the engine received.
    let seen = classes["dhcp_server"];
    let dropped_in_xdp: u64 = drops.values().sum();
    assert_eq!(
        drops["unknown_mac"], dropped_in_xdp,
        "every drop is the flood's: {drops:?}"
    );
    assert_eq!(
        dropped_in_xdp, report.sent,
        "each flood frame sent was dropped in XDP"
    );
    let admitted = seen - dropped_in_xdp;
    assert!(
        (1..=20).contains(&admitted),
        "only the real client's DHCP passes XDP: {admitted}"
    );
    assert_eq!(
        stats["dhcp_received"], admitted,
        "the engine received exactly what XDP admitted"
    );
}
