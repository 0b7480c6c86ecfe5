//! `stampede bench storm` against a real `stampede boot` in a namespace lab: every simulated
//! machine does DHCP, TFTP, DHCP as iPXE, the script and every file it names, verified; the
//! report says so (table, JSON, SVG), a corrupted reference is caught and blamed on the right
//! stage, and the bench leaves the client namespace's routes as it found them.
mod support;

use std::time::Duration;

use stampede_lab::{TwoHosts, require};
use support::appliance::*;

const CLIENTS: usize = 40;

fn storm(lab: &TwoHosts, args: &[&str]) -> stampede_lab::Output {
    let mut all = vec!["bench", "storm", "--iface", &lab.client_if];
    all.extend_from_slice(args);
    lab.client
        .run(STAMPEDE, &all, Duration::from_secs(120))
        .expect("the storm runs")
}

fn local_routes(lab: &TwoHosts) -> String {
    lab.client
        .ip(&["route", "show", "table", "local"])
        .expect("ip route")
}

#[test]
fn storm_boots_every_simulated_machine_and_catches_a_corrupt_file() {
    if !require!(&["ip", "ss"]) {
        return;
    }
    let payload = Payload::new(2 << 20, 1 << 20);
    let dir = payload.dir.path().to_path_buf();
    let ipxe = dir.join("ipxe");
    let verify = dir.join("verify");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::create_dir_all(&verify).unwrap();
    let programs = [
        ("snponly.efi", pseudo_random(300 << 10, 3)),
        ("undionly.kpxe", pseudo_random(200 << 10, 4)),
    ];
    for (name, bytes) in &programs {
        std::fs::write(ipxe.join(name), bytes).unwrap();
        std::fs::write(verify.join(name), bytes).unwrap();
    }
    std::fs::copy(&payload.kernel, verify.join("vmlinuz")).unwrap();
    std::fs::copy(&payload.initrd, verify.join("initrd.img")).unwrap();

    let ApplianceLab {
        lab,
        payload: _payload,
        server,
    } = LabBoot::with_payload(payload)
        .dhcp_range(20, 250)
        .args(&[
            "--ipxe-dir",
            ipxe.to_str().unwrap(),
            "--api",
            "off",
            "--router-advertisements",
            "off",
        ])
        .start();
    let pid = server.id().expect("server pid").to_string();
    let routes_before = local_routes(&lab);
    let json = dir.join("storm.json");
    let svg = dir.join("storm.svg");
    let clients = CLIENTS.to_string();
    let out = storm(
        &lab,
        &[
            "--clients",
            &clients,
            "--bios-share",
            "0.3",
            "--deadline",
            "90",
            "--verify-dir",
            verify.to_str().unwrap(),
            "--server-pid",
            &pid,
            "--label",
            "stampede",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "storm failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .contains(&format!("{CLIENTS} machines, {CLIENTS} booted, 0 failed")),
        "{}",
        out.stdout
    );
    assert_eq!(
        local_routes(&lab),
        routes_before,
        "the bench's routes are gone"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("JSON report");
    assert_eq!(report["booted"], CLIENTS);
    assert_eq!(report["failed"], 0);
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["dhcp", "tftp", "ipxe_dhcp", "script", "files"]);
    let bios = 12; // 30% of 40
    let want_tftp = bios * (200 << 10) + (CLIENTS - bios) * (300 << 10);
    assert_eq!(report["stages"][1]["bytes"], want_tftp as u64);
    assert_eq!(report["stages"][4]["bytes"], (CLIENTS * (3 << 20)) as u64);
    assert!(report["server"]["cpu_s"].as_f64().unwrap() > 0.0);
    let machines = report["machines"].as_array().unwrap();
    assert_eq!(machines.len(), CLIENTS);
    assert!(
        machines
            .iter()
            .all(|m| m["stages"].as_array().unwrap().len() == 5 && m["boot_ms"].is_number())
    );
    let leases: std::collections::HashSet<&str> = machines
        .iter()
        .map(|m| m["mac"].as_str().unwrap())
        .collect();
    assert_eq!(leases.len(), CLIENTS, "distinct machines");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    // A reference that differs from what the server serves: every machine fails in `files`,
    // whether it hashes or compares.
    let mut initrd = std::fs::read(verify.join("initrd.img")).unwrap();
    initrd[12345] ^= 1;
    std::fs::write(verify.join("initrd.img"), &initrd).unwrap();
    for mode in ["sha256", "compare"] {
        let out = storm(
            &lab,
            &[
                "--clients",
                "4",
                "--deadline",
                "60",
                "--verify",
                mode,
                "--mac-prefix",
                "02:53:7f",
                "--verify-dir",
                verify.to_str().unwrap(),
            ],
        );
        assert!(
            !out.status.success(),
            "{mode}: a corrupt file went unnoticed"
        );
        assert!(
            out.stdout.contains("failed in files: 4"),
            "{mode}: {}",
            out.stdout
        );
        let why = if mode == "sha256" {
            "SHA-256 differs"
        } else {
            "differs from the reference at byte 12345"
        };
        assert!(out.stdout.contains(why), "{mode}: {}", out.stdout);
        assert!(
            out.stderr.contains("4 of 4 machines did not boot"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(local_routes(&lab), routes_before);

    // One protocol at a time: machines stop after TFTP (the report has only those stages), on a
    // link that delivers a fifth of the windowed datagrams out of order.
    let json = dir.join("tftp.json");
    let out = storm(
        &lab,
        &[
            "--clients",
            "6",
            "--until",
            "tftp",
            "--windowsize",
            "8",
            "--reorder",
            "0.2",
            "--mac-prefix",
            "02:53:7e",
            "--verify-dir",
            verify.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("JSON report");
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["dhcp", "tftp"]);
    assert_eq!(report["booted"], 6);
    // About 0.2 × 6 × 210 blocks (300 KiB) were held back; every boot program still hashed right.
    let reordered = report["reordered_datagrams"].as_u64().unwrap();
    assert!(reordered > 100, "reordered {reordered}");

    let (out, stats) = stop(server);
    // 40 + 2×4 + 6 machines, one boot program each.
    assert_eq!(
        stats["tftp_completed"],
        (CLIENTS + 14) as u64,
        "{}",
        out.stdout
    );
    let log = out.stderr;
    let bios_fetches = log
        .lines()
        .filter(|l| l.contains("tftp transfer started") && l.contains("undionly.kpxe"))
        .count();
    assert_eq!(
        bios_fetches, bios,
        "BIOS machines got the BIOS boot program"
    );
    let windowed = log
        .lines()
        .filter(|l| l.contains("tftp transfer started") && l.contains("windowsize=8"))
        .count();
    assert_eq!(windowed, 6, "the storm's windowsize reached the server");
}
