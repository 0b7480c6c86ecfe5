//! Safety at start (issue 18): what would have the appliance serve wrongly is refused, or said,
//! before `ready`: a second appliance on the same interface, another DHCP server on the link, a
//! DHCP range off the link, a profile's missing kernel or initrd (and a reload losing one).
mod support;

use std::{path::Path, process::Stdio, time::Duration};

use nix::sys::signal::Signal;
use stampede_lab::{Netns, Output, Process, TwoHosts, require, run_with_timeout, wait_for};
use support::appliance::{
    ADMIN_TOKEN, API, Payload, STAMPEDE, serve_command, spawn_appliance, start_boot, stop,
    tftp_bound, wait_for_api,
};

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
    if !require!(&["ss"]) {
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
    // Nor may the classifier alone take over its XDP hook.
    let mut command = lab.server.command(STAMPEDE);
    command.args(["serve", "--iface", &lab.server_if]);
    let out = run_with_timeout(command, Duration::from_secs(30)).expect("stampede serve runs");
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains(&format!("{} is already served", lab.server_if)),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    stop(first);
}

#[test]
fn another_dhcp_server_on_the_link_is_named_at_an_authoritative_start() {
    if !require!(&["ss"]) {
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
    if !require!(&[]) {
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

/// `stampede serve --config CONFIG` in `ns`, its API on [`API`], up once TFTP is bound.
fn start_serve(ns: &Netns, config: &Path, payload: &Payload) -> Process {
    let command = serve_command(ns, config, payload.dir.path());
    spawn_appliance(command, "stampede serve", || tftp_bound(ns))
}

/// `/api/v1/health` of the appliance in `ns`.
fn health(ns: &Netns) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let url = format!("{API}/api/v1/health");
    let out = ns
        .run("curl", &["-sf", "-H", &auth, &url], Duration::from_secs(10))
        .expect("curl runs");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn a_missing_kernel_or_initrd_is_refused_at_start_and_on_reload_naming_profile_and_path() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");

    // Quick mode: the start is refused.
    let payload = Payload::new(4096, 4096);
    std::fs::remove_file(&payload.initrd).expect("remove the initrd");
    let out = boot_refused(&lab.server, &lab.server_if, &["--api", "off"], &payload);
    let expected = format!(
        "profile \"quick\" boots initrd.img ({}): no such file",
        payload.initrd.display()
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);

    // A file: the start is refused, then a reload that loses a file.
    let payload = Payload::new(4096, 4096);
    let config = payload.dir.path().join("stampede.toml");
    let write = |initrd: &Path| {
        let text = format!(
            "[server]\ninterfaces = [\"{}\"]\n\
             [boot]\nfiles = {{ \"vmlinuz\" = \"{}\", \"initrd.img\" = \"{}\" }}\n\
             default_profile = \"live\"\n\
             [[profiles]]\nname = \"live\"\nkernel = \"vmlinuz\"\ninitrds = [\"initrd.img\"]\n\
             [xdp]\nmode = \"off\"\n",
            lab.server_if,
            payload.kernel.display(),
            initrd.display(),
        );
        std::fs::write(&config, text).expect("write config");
    };
    let gone = payload.dir.path().join("gone.img");
    write(&gone);
    let mut command = lab.server.command(STAMPEDE);
    command
        .args(["serve", "--api", "off", "--config"])
        .arg(&config)
        .arg("--state")
        .arg(payload.dir.path().join("refused/state.redb"));
    let out = run_with_timeout(command, Duration::from_secs(30)).expect("serve runs");
    assert!(!out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let expected = format!(
        "profile \"live\" boots initrd.img ({}): no such file",
        gone.display()
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);

    write(&payload.initrd);
    let serve = start_serve(&lab.server, &config, &payload);
    wait_for_api(&lab.server);
    assert_eq!(health(&lab.server)["status"], "ok");
    write(&gone);
    serve.signal(Signal::SIGHUP).expect("SIGHUP");
    let refused = wait_for(Duration::from_secs(10), || {
        let h = health(&lab.server);
        (h["status"] == "degraded").then_some(h)
    })
    .expect("the reload is refused and health says so");
    let why = refused["reload_error"].as_str().unwrap_or_default();
    assert!(why.contains(&expected), "{refused}");
    let (out, _) = stop(serve);
    assert!(
        out.stderr.contains("reload refused") && out.stderr.contains(&expected),
        "{}",
        out.stderr
    );
}

#[test]
fn a_busy_api_port_refuses_the_start_naming_the_address() {
    if !require!(&[]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(4096, 4096);
    let _taken = lab
        .server
        .in_namespace(|| std::net::TcpListener::bind("127.0.0.1:7070"))
        .expect("enter the namespace")
        .expect("take the API port");
    let out = boot_refused(
        &lab.server,
        &lab.server_if,
        &["--api", "127.0.0.1:7070"],
        &payload,
    );
    assert!(
        out.stderr
            .contains("the control API cannot listen on 127.0.0.1:7070"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("admin token"),
        "no token is printed by a start that fails:\n{}",
        out.stdout
    );
}

#[test]
fn a_hostname_in_the_quick_mode_command_line_is_refused() {
    if !require!(&[]) {
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
            "--cmdline",
            "console=ttyS0 hostname={hostname}",
        ],
        &payload,
    );
    assert!(
        out.stderr
            .contains("--cmdline: {hostname} needs each machine's host name"),
        "{}",
        out.stderr
    );
}

/// `stampede serve --check --config FILE`: its status, stdout and stderr.
fn check(config: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(STAMPEDE)
        .args(["serve", "--check", "--config"])
        .arg(config)
        .env_remove("STAMPEDE_ADMIN_TOKEN")
        .output()
        .expect("stampede runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_check_lists_every_error_and_touches_no_network() {
    // No lab: an interface that does not exist, no root, no state. Nothing is opened but files.
    let payload = Payload::new(4096, 4096);
    let config = payload.dir.path().join("stampede.toml");
    let write = |profiles_and_machines: &str| {
        let text = format!(
            "[server]\ninterfaces = [\"stampede-none0\"]\n\
             [boot]\nfiles = {{ \"vmlinuz\" = \"{}\", \"initrd.img\" = \"{}\" }}\n\
             default_profile = \"live\"\n{profiles_and_machines}",
            payload.kernel.display(),
            payload.initrd.display(),
        );
        std::fs::write(&config, text).expect("write config");
    };

    write(
        "[[profiles]]\nname = \"live\"\nkernel = \"vmlinuz\"\ncmdline = \"{macc}\"\n\
         [[profiles]]\nname = \"rescue\"\nkernel = \"vmlinuz\"\ninitrds = [\"/abs\"]\n\
         [[machines]]\nmac = \"52:54:00:00:00:zz\"\n\
         [[machines]]\nmac = \"52:54:00:00:00:02\"\nprofile = \"nope\"\n\
         [tftp]\nmax_blksize = 1\n",
    );
    let (ok, stdout, stderr) = check(&config);
    assert!(!ok, "refused:\n{stdout}{stderr}");
    for error in [
        "profiles[0].cmdline: unknown placeholder {macc}",
        "profiles[1].initrds[0]",
        "machines[0].mac",
        "machines[1].profile: no profile named \"nope\"",
        "tftp.max_blksize",
        ": 5 errors",
    ] {
        assert!(stderr.contains(error), "{error:?} missing from:\n{stderr}");
    }
    assert!(!stdout.contains("config ok"), "{stdout}");

    write(
        "[[profiles]]\nname = \"live\"\nkernel = \"vmlinuz\"\ninitrds = [\"missing.img\"]\n\
         files = 1\n",
    );
    let (ok, _, stderr) = check(&config);
    assert!(!ok && stderr.contains("line "), "a syntax error:\n{stderr}");

    write("[[profiles]]\nname = \"live\"\nkernel = \"vmlinuz\"\ninitrds = [\"initrd.img\"]\n");
    std::fs::rename(&payload.initrd, payload.dir.path().join("away")).expect("move the initrd");
    let (ok, _, stderr) = check(&config);
    assert!(
        !ok && stderr.contains(&format!(
            "profile \"live\" boots initrd.img ({}): no such file",
            payload.initrd.display()
        )) && stderr.contains(": 1 error"),
        "{stderr}"
    );

    std::fs::rename(payload.dir.path().join("away"), &payload.initrd).expect("put it back");
    let (ok, stdout, stderr) = check(&config);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("config ok"), "{stdout}");
}
