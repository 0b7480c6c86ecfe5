//! Stampede as a service: started as an unprivileged user, with no capabilities it refuses at
//! once, naming what is missing; with exactly packaging/stampede.service's capabilities it
//! boots a machine (DHCP, TFTP, the iPXE script and the kernel over HTTP) with XDP attached.
mod support;

use std::{path::Path, process::Stdio, time::Duration};

use stampede_lab::{Netns, Process, TwoHosts, require, run_with_timeout, wait_for};
use support::appliance::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/stampede.service");

/// The unprivileged user the tests run the appliance as (the package's `stampede` user is made
/// by its maintainer scripts, which tests/package.rs runs).
const USER: &str = "nobody";
const GROUP: &str = "nogroup";

/// The capabilities the unit grants, as setpriv spells them (`net_bind_service`), checked to
/// be the same list in `AmbientCapabilities=` and `CapabilityBoundingSet=`.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).expect("packaging/stampede.service");
    let list = |key: &str| -> Vec<String> {
        let mut caps: Vec<String> = unit
            .lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(str::split_whitespace)
            .map(|c| {
                c.strip_prefix("CAP_")
                    .unwrap_or_else(|| panic!("{key} {c}: not a capability"))
                    .to_ascii_lowercase()
            })
            .collect();
        caps.sort();
        caps
    };
    let ambient = list("AmbientCapabilities=");
    assert!(!ambient.is_empty(), "the unit grants no capabilities");
    assert_eq!(
        ambient,
        list("CapabilityBoundingSet="),
        "the unit's ambient and bounding sets differ"
    );
    ambient
}

/// The `CapEff` mask of these capabilities (linux/capability.h numbers).
fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "net_bind_service" => 10,
            "net_admin" => 12,
            "net_raw" => 13,
            "perfmon" => 38,
            "bpf" => 39,
            other => panic!("capability {other} has no number here; add it"),
        })
        .fold(0, |mask, bit| mask | 1u64 << bit)
}

/// `setpriv` as `nobody` with exactly `caps` (inheritable, ambient and bounding), or none.
fn setpriv(ns: &Netns, caps: &[String]) -> std::process::Command {
    let mut command = ns.command("setpriv");
    command.args([
        &format!("--reuid={USER}"),
        &format!("--regid={GROUP}"),
        "--clear-groups",
    ]);
    if caps.is_empty() {
        command.args(["--inh-caps=-all", "--bounding-set=-all"]);
    } else {
        let plus: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
        let plus = plus.join(",");
        command.args([
            format!("--inh-caps=-all,{plus}"),
            format!("--ambient-caps=-all,{plus}"),
            format!("--bounding-set=-all,{plus}"),
        ]);
    }
    // The unit's NoNewPrivileges=yes.
    command.arg("--no-new-privs");
    command
}

/// Gives `dir` and everything in it to `nobody`: the appliance reads the payload and writes its
/// state there.
fn give_to_nobody(dir: &Path) {
    let user = nix::unistd::User::from_name(USER)
        .expect("users")
        .unwrap_or_else(|| panic!("no user {USER}"));
    let group = nix::unistd::Group::from_name(GROUP)
        .expect("groups")
        .unwrap_or_else(|| panic!("no group {GROUP}"));
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(group.gid.as_raw()))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
}

#[test]
fn without_capabilities_the_start_is_refused_naming_them_before_any_token() {
    if !require!(&["setpriv"]) {
        return;
    }
    let ns = Netns::new("nocaps").expect("namespace");
    let payload = Payload::new(4096, 4096);
    give_to_nobody(payload.dir.path());
    let state = payload.dir.path().join("state.redb");
    let mut command = setpriv(&ns, &[]);
    command
        .arg(STAMPEDE)
        .args(["boot", "--iface", "lo", "--xdp-mode", "auto"])
        .arg("--state")
        .arg(&state)
        .arg(&payload.kernel)
        .arg(&payload.initrd);
    let out = run_with_timeout(command, Duration::from_secs(20)).expect("stampede runs");
    assert_eq!(
        out.status.code(),
        Some(77),
        "EX_NOPERM, which the unit does not restart on\n{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stderr.trim_end(),
        "stampede: missing CAP_NET_BIND_SERVICE (bind DHCP port 67 and TFTP port 69); run as \
         root or grant it (see packaging/stampede.service)",
        "one sentence, and nothing else before it"
    );
    assert!(
        !out.stdout.contains("token"),
        "no token printed:\n{}",
        out.stdout
    );
    assert!(!state.exists(), "the state was not opened");
}

#[test]
fn a_machine_boots_from_the_appliance_running_under_the_units_capabilities() {
    if !require!(&["setpriv", "busybox", "curl", "ss"]) {
        return;
    }
    let caps = unit_capabilities();
    let lab = TwoHosts::new().expect("lab");
    // IPv6 on the server's side only (a link-local address at once, no DAD), so the router
    // advertisement responder, the one user of CAP_NET_RAW, starts.
    let v6 = |key: &str, value: &str| {
        let key = format!("net.ipv6.conf.{}.{key}", lab.server_if);
        lab.server.sysctl(&key, value).expect("sysctl");
    };
    v6("accept_dad", "0");
    v6("disable_ipv6", "0");
    let payload = Payload::new(3 << 20, 1 << 20);
    give_to_nobody(payload.dir.path());
    let range = format!("{}-{}", lab.subnet.host(100), lab.subnet.host(150));
    let mut command = setpriv(&lab.server, &caps);
    command
        .arg(STAMPEDE)
        .args(["boot", "--iface", &lab.server_if, "--dhcp-range", &range])
        .args(["--xdp-mode", "auto", "--stats-interval", "60"])
        .arg("--state")
        .arg(payload.dir.path().join("state.redb"))
        .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg(&payload.kernel)
        .arg(&payload.initrd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Process::spawn(command).expect("start stampede boot under setpriv");
    let pid = server.id().expect("pid");
    let up = wait_for(Duration::from_secs(20), || {
        if server.try_status().is_some() {
            return Some(false);
        }
        let out = lab
            .server
            .run("ss", &["-ulnH"], Duration::from_secs(5))
            .ok()?;
        out.stdout.contains(":69 ").then_some(true)
    });
    if up != Some(true) {
        let out = server.wait_output(Duration::from_secs(5)).ok();
        panic!(
            "stampede boot did not come up under {caps:?}: {:?}",
            out.map(|o| format!("{}\n{}", o.stdout, o.stderr))
        );
    }
    // setpriv and `ip netns exec` exec (same pid): this is the appliance, as nobody with
    // exactly the unit's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .trim()
            .to_owned()
    };
    let nobody = nix::unistd::User::from_name(USER)
        .expect("users")
        .expect(USER);
    assert_eq!(
        field("Uid:").split_whitespace().next(),
        Some(nobody.uid.to_string().as_str()),
        "runs as {USER}"
    );
    let want = format!("{:016x}", cap_mask(&caps));
    assert_eq!(field("CapEff:"), want, "effective capabilities");
    assert_eq!(field("CapBnd:"), want, "bounding set");
    assert_eq!(field("NoNewPrivs:"), "1");

    // The machine: a lease and its boot file as iPXE asks for them, then the script and the
    // kernel over HTTP, and iPXE's loader over TFTP (port 69) as a PXE ROM fetches it.
    let script = udhcpc_script(payload.dir.path());
    let out = udhcpc(&lab.client, &lab.client_if, 4, &script, UDHCPC_IPXE);
    let lease = bound(&out.combined());
    let base = format!("http://{}:8080", lab.server_ip());
    assert!(
        lease["boot_file"].starts_with(&format!("{base}/boot.ipxe?mac=")),
        "iPXE gets its script URL: {lease:?}"
    );
    let dir = payload.dir.path();
    let curl = |args: &[&str]| {
        let out = lab
            .client
            .run("curl", args, Duration::from_secs(30))
            .expect("curl runs");
        assert!(out.status.success(), "curl {args:?}: {}", out.stderr);
        out.stdout
    };
    let probe = curl(&["-sS", &lease["boot_file"]]);
    let chain = probe
        .lines()
        .find_map(|l| l.strip_prefix("chain "))
        .unwrap_or_else(|| panic!("no chain line: {probe}"))
        .replace("${platform}", "pcbios")
        .replace("${buildarch}", "i386")
        .replace("${ip}", &lease["ip"]);
    let ipxe = curl(&["-sS", &chain]);
    assert!(
        ipxe.contains(&format!("kernel {base}/files/vmlinuz")),
        "{ipxe}"
    );
    let got = dir.join("got.vmlinuz");
    curl(&[
        "-sS",
        "-o",
        got.to_str().expect("utf-8"),
        &format!("{base}/files/vmlinuz"),
    ]);
    assert_eq!(
        sha256_file(&got),
        sha256_file(&payload.kernel),
        "the kernel"
    );
    let loader = dir.join("got.kpxe");
    curl(&[
        "-sS",
        "-o",
        loader.to_str().expect("utf-8"),
        &format!("tftp://{}/undionly.kpxe", lab.server_ip()),
    ]);
    assert_eq!(
        sha256_file(&loader),
        sha256_file(Path::new("/usr/lib/ipxe/undionly.kpxe")),
        "undionly.kpxe over TFTP"
    );

    let (out, stats) = stop(server);
    assert!(
        !out.stderr.contains("running without"),
        "the unit's capabilities are all the appliance uses:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("XDP classifier attached"),
        "XDP attached (auto) under the unit's capabilities:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("listening for IPv6 routers"),
        "the router-advertisement responder started (CAP_NET_RAW):\n{}",
        out.stderr
    );
    let xdp = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("xdp "))
        .unwrap_or_else(|| panic!("no xdp counters:\n{}", out.stdout));
    assert!(
        !xdp.contains("dhcp_server=0/"),
        "the classifier saw the DHCP exchange: {xdp}"
    );
    assert!(stats["dhcp_replies"] >= 2, "{}", out.stdout);
    assert_eq!(stats["tftp_completed"], 1, "{}", out.stdout);
    assert!(stats["http_2xx"] >= 3, "{}", out.stdout);
}
