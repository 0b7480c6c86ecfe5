//! Issue 18 against a real `stampede boot` and real DHCP clients: a refused machine leaves a
//! record (`ctl sessions MAC`, `ctl watch`, the log), boot sessions survive a restart with their
//! times, and `ctl backup` taken while serving restores (`ctl restore`, offline) into the
//! machines, profiles, leases and tokens of the moment it was taken.
mod support;

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use stampede_lab::{Netns, TwoHosts, require};
use support::appliance::{
    ADMIN_TOKEN, API, ApplianceLab, LabBoot, STAMPEDE, ServeLab, start_boot, stop, wait_for_api,
};

const DENIED: &str = "52:54:00:18:00:02";

fn ctl(ns: &Netns, args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    support::appliance::ctl(ns, &args)
}

/// udhcpc as a PXE ROM on the client's link; its output.
fn udhcpc(lab: &TwoHosts, script: &std::path::Path, tries: u32) -> stampede_lab::Output {
    support::appliance::udhcpc(
        &lab.client,
        &lab.client_if,
        tries,
        script,
        support::appliance::UDHCPC_BIOS,
    )
}

/// (address, MAC) of every lease.
fn leases(ns: &Netns) -> Vec<(String, String)> {
    let list: serde_json::Value =
        serde_json::from_str(&ctl(ns, &["--json", "leases", "list"])).expect("leases JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|l| (l["ip"].to_string(), l["mac"].to_string()))
        .collect()
}

fn sessions_json(ns: &Netns) -> serde_json::Value {
    serde_json::from_str(&ctl(ns, &["--json", "sessions"])).expect("sessions JSON")
}

#[test]
fn refusals_are_recorded_sessions_survive_a_restart_and_a_backup_restores() {
    if !require!(&["busybox", "curl", "ss", "ip"]) {
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
    let state = payload.dir.path().join("state.redb");
    // The same arguments for the restarts.
    let range = format!("{}-{}", lab.subnet.host(100), lab.subnet.host(150));
    let extra = ["--dhcp-range", range.as_str()];
    let script = support::appliance::udhcpc_script(payload.dir.path());

    // A machine boots.
    let lease = support::appliance::bound(&udhcpc(&lab, &script, 4).stdout);
    let link = lab
        .client
        .run(
            "ip",
            &["-br", "link", "show", "dev", &lab.client_if],
            Duration::from_secs(5),
        )
        .expect("ip link");
    let booted = link
        .stdout
        .split_whitespace()
        .nth(2)
        .expect("ip -br link prints the MAC")
        .to_owned();

    // A denied machine asks: watched live, and on record afterwards.
    ctl(&lab.server, &["machines", "add", DENIED, "--deny"]);
    let watch = {
        let mut command = lab.server.command(STAMPEDE);
        command
            .args(["ctl", "--url", API, "--token", ADMIN_TOKEN, "watch"])
            .args(["--mac", DENIED, "--count", "1", "--timeout", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        stampede_lab::Process::spawn(command).expect("ctl watch")
    };
    // The watcher connects and subscribes before the machine asks.
    std::thread::sleep(Duration::from_secs(1));
    lab.client
        .run(
            "ip",
            &["link", "set", "dev", &lab.client_if, "address", DENIED],
            Duration::from_secs(5),
        )
        .expect("set the client's MAC");
    let refused = udhcpc(&lab, &script, 2);
    assert!(
        !refused.stdout.contains("BOUND"),
        "a denied machine gets no lease:\n{}",
        refused.stdout
    );
    let watched = watch
        .wait_output(Duration::from_secs(25))
        .expect("ctl watch ends");
    assert!(
        watched.stdout.contains("refused") && watched.stdout.contains("denied"),
        "ctl watch shows the refusal:\n{}\n{}",
        watched.stdout,
        watched.stderr
    );
    let timeline = ctl(&lab.server, &["sessions", DENIED]);
    assert!(
        timeline.contains("refused") && timeline.contains("by dhcp: denied"),
        "{timeline}"
    );

    // A backup while serving, then a change it does not hold.
    let backup = payload.dir.path().join("backup.redb");
    let said = ctl(&lab.server, &["backup", backup.to_str().expect("utf-8")]);
    assert!(said.contains("backup written"), "{said}");
    ctl(
        &lab.server,
        &["tokens", "create", "after-backup", "--role", "read"],
    );
    let before = sessions_json(&lab.server);
    let leases_before = leases(&lab.server);
    assert!(
        !leases_before.is_empty(),
        "the booted machine holds a lease"
    );

    // Restore refuses the state file the running appliance holds.
    let mut command = lab.server.command(STAMPEDE);
    command
        .args(["ctl", "restore", "--state"])
        .arg(&state)
        .arg(&backup);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(15)).expect("ctl runs");
    assert!(
        !out.status.success() && out.stderr.contains("running appliance"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    // Restarted: the sessions are back, times and all.
    let (output, _) = stop(server);
    assert!(
        output.stderr.contains("dhcp refused") || output.stdout.contains("dhcp refused"),
        "the refusal is logged:\n{}",
        output.stderr
    );
    let server = start_boot(&lab.server, &lab.server_if, &extra, &payload);
    wait_for_api(&lab.server);
    let after = sessions_json(&lab.server);
    let pick = |list: &serde_json::Value, mac: &str| {
        list.as_array()
            .expect("a list")
            .iter()
            .find(|s| s["mac"] == mac)
            .cloned()
            .unwrap_or_else(|| panic!("{mac} in {list}"))
    };
    for mac in [booted.as_str(), DENIED] {
        let (b, a) = (pick(&before, mac), pick(&after, mac));
        assert_eq!(a["first_unix_ms"], b["first_unix_ms"], "{mac}: {a}");
        assert_eq!(a["events"], b["events"], "{mac}: {a}");
        assert_eq!(a["last_event"], b["last_event"], "{mac}: {a}");
    }
    assert_eq!(pick(&after, booted.as_str())["ip"], lease["ip"].as_str());
    let (_, _) = stop(server);

    // Restored offline: the state as of the backup.
    let mut command = lab.server.command(STAMPEDE);
    command
        .args(["ctl", "restore", "--state"])
        .arg(&state)
        .arg(&backup);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(15)).expect("ctl runs");
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("restored"), "{}", out.stdout);
    let server = start_boot(&lab.server, &lab.server_if, &extra, &payload);
    wait_for_api(&lab.server);
    let machines = ctl(&lab.server, &["machines", "list"]);
    assert!(machines.contains(DENIED), "{machines}");
    assert_eq!(leases(&lab.server), leases_before, "the same leases");
    let tokens = ctl(&lab.server, &["tokens", "list"]);
    assert!(
        !tokens.contains("after-backup"),
        "a token made after the backup is not in it:\n{tokens}"
    );
    let timeline = ctl(&lab.server, &["sessions", DENIED]);
    assert!(timeline.contains("by dhcp: denied"), "{timeline}");
    stop(server);
}

/// The XDP program drops a denied machine's DHCP before user space sees it; the ring buffer's
/// sample still puts the refusal in the machine's session.
#[test]
fn a_machine_the_xdp_program_refuses_is_on_record() {
    if !require!(&["busybox", "curl", "ss", "ip"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(64 << 10, 64 << 10)
        .dhcp_range(100, 150)
        .xdp_mode("generic")
        .api()
        .start();
    let script = support::appliance::udhcpc_script(payload.dir.path());
    ctl(&lab.server, &["machines", "add", DENIED, "--deny"]);
    lab.client
        .run(
            "ip",
            &["link", "set", "dev", &lab.client_if, "address", DENIED],
            Duration::from_secs(5),
        )
        .expect("set the client's MAC");
    // The deny list reaches the program with the reload the change starts; until then user
    // space refuses the machine itself.
    let timeline = stampede_lab::wait_for(Duration::from_secs(30), || {
        let refused = udhcpc(&lab, &script, 1);
        assert!(!refused.stdout.contains("BOUND"), "{}", refused.stdout);
        std::thread::sleep(Duration::from_millis(500));
        // The list, not the timeline: no session at all is not an error yet.
        let listed = sessions_json(&lab.server).to_string();
        listed
            .contains("by xdp: denied_mac")
            .then(|| ctl(&lab.server, &["sessions", DENIED]))
    })
    .expect("the XDP program's refusal is in the session");
    assert!(timeline.contains("refused"), "{timeline}");
    let (output, counters) = stop(server);
    assert!(
        output.stderr.contains("dhcp refused by the XDP program")
            || output.stdout.contains("dhcp refused by the XDP program"),
        "the refusal is logged:\n{}",
        output.stderr
    );
    let _ = counters;
}

/// ProxyDHCP stays silent to a machine it has no entry for (no default profile): the machine's
/// session says so, with the reason.
#[test]
fn an_unknown_machine_refused_by_proxy_dhcp_is_on_record() {
    if !require!(&["busybox", "curl", "ss", "ip"]) {
        return;
    }
    let fixture = ServeLab::new();
    let (lab, dir) = (&fixture.lab, fixture.payload.dir.path());
    fixture.write(
        "[dhcp]\nmode = \"proxy\"\n\
         [boot]\nfiles = { \"vmlinuz\" = \"{kernel}\" }\n\
         [[profiles]]\nname = \"live\"\nkernel = \"vmlinuz\"\n\
         [[machines]]\nmac = \"52:54:00:60:00:01\"\nprofile = \"live\"",
    );
    let server = fixture.serve();
    let script = support::appliance::udhcpc_script(dir);
    let unknown = stampede_lab::wait_for(Duration::from_secs(20), || {
        udhcpc(lab, &script, 1);
        let listed = sessions_json(&lab.server).to_string();
        listed
            .contains("by dhcp: unknown_machine")
            .then_some(listed)
    })
    .expect("the refusal is in a session");
    let sessions: serde_json::Value = serde_json::from_str(&unknown).expect("json");
    let row = sessions
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| {
            s["last_event"]
                .as_str()
                .is_some_and(|e| e.contains("unknown_machine"))
        })
        .expect("the refused machine");
    assert_eq!(row["outcome"], "failed", "{row}");
    let mac = row["mac"].as_str().expect("a MAC");
    let timeline = ctl(&lab.server, &["sessions", mac]);
    assert!(
        timeline.contains("refused") && timeline.contains("by dhcp: unknown_machine"),
        "{timeline}"
    );
    stop(server);
}
