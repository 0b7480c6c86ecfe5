//! API writes are validated by the appliance's own configuration validation before they are
//! stored (issues 18 and 19): what a reload would refuse is refused by the request, and stored
//! entries an earlier version accepted are quarantined at start instead of stopping it.
mod support;

use std::time::Duration;

use stampede_control::model::{BootPolicy, BootTarget, MacAddr, ProfileSpec};
use stampede_control::{BootProfile, Caller, ControlState, Machine, Metrics, Role};
use stampede_lab::{Netns, require};
use support::appliance::{
    ADMIN_TOKEN, API, ApplianceLab, LabBoot, Payload, STAMPEDE, ServeLab, stop,
};

/// One request with the admin token; status and JSON body (Null when none).
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
    let out = ns
        .run("curl", &args, Duration::from_secs(10))
        .expect("curl runs");
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl printed no status: {}", out.stdout));
    (
        code.parse().expect("an HTTP status"),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn ctl_out(ns: &Netns, args: &[&str]) -> stampede_lab::Output {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["ctl", "--url", API, "--token", ADMIN_TOKEN])
        .args(args);
    stampede_lab::run_with_timeout(command, Duration::from_secs(15)).expect("ctl runs")
}

fn profile(name: &str, kernel: &str, initrds: &[&str], cmdline: &str) -> BootProfile {
    BootProfile::try_from(ProfileSpec {
        name: name.into(),
        root: None,
        default: BootTarget {
            kernel: kernel.into(),
            initrds: initrds.iter().map(|s| (*s).to_owned()).collect(),
            cmdline: cmdline.into(),
        },
        ipxe_template: None,
        variants: Default::default(),
        secure_boot: None,
    })
    .expect("the model alone accepts it, as earlier versions did")
}

fn machine(mac: &str, profile: &str, labels: &[(&str, &str)]) -> Machine {
    Machine {
        mac: mac.parse::<MacAddr>().expect("a MAC"),
        uuid: None,
        arch: None,
        hostname: None,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        profile: Some(profile.into()),
        boot: BootPolicy::Allow,
        ssh_authorized_keys: Vec::new(),
    }
}

#[test]
fn writes_the_appliance_cannot_serve_are_refused_and_stored_ones_quarantined() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let payload = Payload::new(4096, 4096);
    // What an earlier version stored through its API: a profile reading /etc/shadow, a machine
    // booting it, and servable entries next to them.
    {
        let state = ControlState::open(payload.dir.path().join("state.redb"), Metrics::new())
            .expect("open the state file");
        let admin = Caller {
            name: "earlier-version".into(),
            role: Role::Admin,
        };
        for p in [
            profile("good", "vmlinuz", &["initrd.img"], "console=ttyS0"),
            profile("shadow", "../../etc/shadow", &[], ""),
        ] {
            state.put_profile(&admin, p, true).expect("stored");
        }
        for m in [
            machine("52:54:00:00:00:01", "good", &[("rack", "r1")]),
            machine("52:54:00:00:00:02", "shadow", &[]),
        ] {
            state.put_machine(&admin, m, true).expect("stored");
        }
    }
    let ApplianceLab {
        lab,
        payload: _payload,
        server,
    } = LabBoot::with_payload(payload).api().start();

    let (status, health) = api(&lab.server, "GET", "/api/v1/health", None);
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["quarantined"], 2, "{health}");
    let profiles = ctl_out(&lab.server, &["profiles", "list"]);
    assert!(profiles.status.success(), "{}", profiles.stderr);
    let shadow = profiles
        .stdout
        .lines()
        .find(|l| l.starts_with("shadow"))
        .unwrap_or_else(|| panic!("shadow listed: {}", profiles.stdout));
    assert!(
        shadow.contains("quarantined") && shadow.contains("../../etc/shadow"),
        "{shadow}"
    );
    let machines = ctl_out(&lab.server, &["machines", "list"]);
    for (mac, state) in [
        ("52:54:00:00:00:01", "serving"),
        ("52:54:00:00:00:02", "quarantined"),
    ] {
        let line = machines
            .stdout
            .lines()
            .find(|l| l.starts_with(mac))
            .unwrap_or_else(|| panic!("{mac} listed: {}", machines.stdout));
        assert!(line.contains(state), "{mac} is {state}: {line}");
    }

    // What the configuration refuses, the API refuses, naming why, and stores nothing.
    let hostile = [
        (r#"{"name":"h","kernel":"../../etc/shadow"}"#, "kernel"),
        (r#"{"name":"h","kernel":"/etc/shadow"}"#, "kernel"),
        (r#"{"name":"h","kernel":"boot\\vmlinuz"}"#, "kernel"),
        (
            r#"{"name":"h","kernel":"vmlinuz","initrds":["../x"]}"#,
            "initrd",
        ),
        (
            r#"{"name":"h","kernel":"vmlinuz","cmdline":"a=$b"}"#,
            "cmdline",
        ),
        (
            r#"{"name":"h","kernel":"vmlinuz","cmdline":"a=\"b"}"#,
            "cmdline",
        ),
    ];
    for (body, key) in hostile {
        let (status, answer) = api(&lab.server, "POST", "/api/v1/profiles", Some(body));
        assert_eq!(status, 422, "{body} is refused: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(key),
            "{body}: the reason names {key}: {error}"
        );
        let (status, _) = api(&lab.server, "GET", "/api/v1/profiles/h", None);
        assert_eq!(status, 404, "{body} was not stored");
    }
    let (status, answer) = api(
        &lab.server,
        "PUT",
        "/api/v1/profiles/good",
        Some(r#"{"name":"good","kernel":"/etc/shadow"}"#),
    );
    assert_eq!(status, 422, "an update is checked too: {answer}");
    let (_, good) = api(&lab.server, "GET", "/api/v1/profiles/good", None);
    assert_eq!(
        good["kernel"], "vmlinuz",
        "the stored profile is unchanged: {good}"
    );

    // Secure Boot is a profile setting through the API as in the file (issue 20). "shim" needs
    // Debian's signed shim and GRUB on the appliance: with them the profile is stored and the
    // shim served by name; without them the request is refused, naming the package (a stored
    // profile whose files the reload cannot open would stop every later change).
    let chain_installed = [
        "/usr/lib/shim/shimx64.efi.signed",
        "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    ]
    .iter()
    .all(|f| std::path::Path::new(f).is_file());
    let (status, answer) = api(
        &lab.server,
        "POST",
        "/api/v1/profiles",
        Some(r#"{"name":"sb","kernel":"vmlinuz","initrds":["initrd.img"],"secure_boot":"shim"}"#),
    );
    if chain_installed {
        assert_eq!(status, 201, "{answer}");
        let (_, sb) = api(&lab.server, "GET", "/api/v1/profiles/sb", None);
        assert_eq!(sb["secure_boot"], "shim", "{sb}");
        let shim = format!("tftp://{}/shimx64.efi", lab.server_ip());
        let served = stampede_lab::wait_for(Duration::from_secs(5), || {
            let out = lab
                .server
                .run(
                    "curl",
                    &["-s", "-o", "/dev/null", "--max-time", "2", &shim],
                    Duration::from_secs(5),
                )
                .ok()?;
            out.status.success().then_some(())
        });
        assert!(
            served.is_some(),
            "the API's secure_boot profile reached the appliance: {shim}"
        );
    } else {
        assert_eq!(status, 422, "{answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("shim-signed") && error.contains("\"sb\""),
            "the refusal names the profile and the package: {error}"
        );
        let (status, _) = api(&lab.server, "GET", "/api/v1/profiles/sb", None);
        assert_eq!(status, 404, "nothing stored");
    }
    let (status, answer) = api(
        &lab.server,
        "POST",
        "/api/v1/profiles",
        Some(r#"{"name":"sb2","kernel":"vmlinuz","secure_boot":"tpm"}"#),
    );
    assert!(
        (400..500).contains(&status) && answer.to_string().contains("tpm"),
        "an unknown chain is refused, named: {status} {answer}"
    );
    let (status, _) = api(&lab.server, "GET", "/api/v1/profiles/sb2", None);
    assert_eq!(status, 404, "nothing stored");

    // ctl's help shows --label key=value; that form is served.
    let help = ctl_out(&lab.server, &["machines", "add", "--help"]);
    assert!(help.stdout.contains("key=value"), "{}", help.stdout);
    let added = ctl_out(
        &lab.server,
        &[
            "machines",
            "add",
            "52:54:00:00:00:03",
            "--profile",
            "good",
            "--label",
            "rack=r1",
        ],
    );
    assert!(added.status.success(), "{}{}", added.stdout, added.stderr);

    // A diskless machine's SSH keys: ctl's --ssh-key reaches what the node agent reads
    // (`/stampede/node/config`, default HTTP port 8080); a line the configuration refuses (no
    // key type) is refused by the API, naming the key.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRFU1QtS0VZ ops@lab";
    let added = ctl_out(
        &lab.server,
        &[
            "machines",
            "add",
            "52:54:00:00:00:04",
            "--profile",
            "good",
            "--ssh-key",
            key,
        ],
    );
    assert!(added.status.success(), "{}{}", added.stdout, added.stderr);
    let node_config = format!(
        "http://{}:8080/stampede/node/config?mac=52-54-00-00-00-04",
        lab.server_ip()
    );
    let served = stampede_lab::wait_for(Duration::from_secs(5), || {
        let out = lab
            .server
            .run("curl", &["-sf", &node_config], Duration::from_secs(5))
            .ok()?;
        out.stdout.contains(key).then_some(out.stdout)
    });
    assert!(served.is_some(), "{node_config} carries the key");
    let (status, answer) = api(
        &lab.server,
        "POST",
        "/api/v1/machines",
        Some(
            r#"{"mac":"52:54:00:00:00:05","profile":"good","ssh_authorized_keys":["just words"]}"#,
        ),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("ssh_authorized_keys")),
        "{answer}"
    );

    // Replacing the quarantined profile with a servable one lifts its quarantine and its
    // machine's.
    let (status, answer) = api(
        &lab.server,
        "PUT",
        "/api/v1/profiles/shadow",
        Some(r#"{"name":"shadow","kernel":"vmlinuz"}"#),
    );
    assert_eq!(status, 200, "{answer}");
    let healthy = stampede_lab::wait_for(Duration::from_secs(5), || {
        let (_, health) = api(&lab.server, "GET", "/api/v1/health", None);
        (health["status"] == "ok").then_some(())
    });
    let (_, health) = api(&lab.server, "GET", "/api/v1/health", None);
    assert!(healthy.is_some(), "health is ok again: {health}");
    let metrics = lab
        .server
        .run(
            "curl",
            &[
                "-sf",
                "-H",
                &format!("Authorization: Bearer {ADMIN_TOKEN}"),
                &format!("{API}/metrics"),
            ],
            Duration::from_secs(5),
        )
        .expect("curl runs");
    assert!(
        metrics.stdout.contains("stampede_reload_failures_total 0"),
        "no reload was refused: {}",
        metrics.stdout
    );

    let (out, _) = stop(server);
    assert!(
        out.stderr.contains("quarantined") && out.stderr.contains("../../etc/shadow"),
        "the start logged the quarantined entries and why: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("reload refused"), "{}", out.stderr);
}

/// Health and `/metrics` while a SIGHUP reload is refused, and after one succeeds.
fn health_and_failures(ns: &Netns) -> (serde_json::Value, String) {
    let (_, health) = api(ns, "GET", "/api/v1/health", None);
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let metrics = ns
        .run(
            "curl",
            &["-sf", "-H", &auth, &format!("{API}/metrics")],
            Duration::from_secs(5),
        )
        .expect("curl runs")
        .stdout;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("stampede_reload_failures_total "))
        .unwrap_or_default()
        .to_owned();
    (health, failures)
}

#[test]
fn a_refused_reload_shows_in_health_and_metrics() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let fixture = ServeLab::new();
    let lab = &fixture.lab;
    let write = |kernel: &str| {
        fixture.write(&format!(
            "[boot]\nfiles = {{ \"vmlinuz\" = \"{{kernel}}\" }}\ndefault_profile = \"lab\"\n\
             [[profiles]]\nname = \"lab\"\nkernel = \"{kernel}\""
        ));
    };
    write("vmlinuz");
    let server = fixture.serve();
    let (health, failures) = health_and_failures(&lab.server);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(failures, "stampede_reload_failures_total 0");

    write("../x");
    server
        .signal(nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let degraded = stampede_lab::wait_for(Duration::from_secs(10), || {
        let (health, failures) = health_and_failures(&lab.server);
        (health["status"] == "degraded").then_some((health, failures))
    });
    let (health, failures) = degraded.expect("health turns degraded after a refused reload");
    let reason = health["reload_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("kernel") && reason.contains("../x"),
        "{health}"
    );
    assert_eq!(failures, "stampede_reload_failures_total 1");

    write("vmlinuz");
    server
        .signal(nix::sys::signal::Signal::SIGHUP)
        .expect("SIGHUP");
    let ok = stampede_lab::wait_for(Duration::from_secs(10), || {
        let (health, _) = health_and_failures(&lab.server);
        (health["status"] == "ok").then_some(())
    });
    assert!(ok.is_some(), "a reload that succeeds clears it");
    server
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let out = server
        .wait_output(Duration::from_secs(15))
        .expect("serve exits");
    assert!(out.status.success(), "{}", out.stderr);
}

/// Issue 18: a control-API profile whose kernel or initrd is not on disk was stored ("created")
/// and handed to machines, which then failed to download it. With a `boot.root` (where quick
/// mode has none, and refuses any name it does not serve already), a write naming a file
/// the root does not hold is refused, naming the profile and the file, and nothing is stored;
/// through ctl as through the API. A write that leaves a profile's files alone is not held up.
#[test]
fn profiles_naming_files_not_on_disk_are_refused_at_write() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let fixture = ServeLab::new();
    let (lab, dir) = (&fixture.lab, fixture.payload.dir.path());
    fixture.write(&format!(
        "[boot]\nroot = \"{}\"\n[[profiles]]\nname = \"file\"\nkernel = \"vmlinuz\"",
        dir.display()
    ));
    // A link out of the boot root is not a file the appliance serves either.
    std::os::unix::fs::symlink("/etc/hostname", dir.join("escape")).expect("symlink");
    std::fs::create_dir(dir.join("subdir")).expect("a directory");
    let server = fixture.serve();

    let (status, answer) = api(
        &lab.server,
        "POST",
        "/api/v1/profiles",
        Some(r#"{"name":"good","kernel":"vmlinuz","initrds":["initrd.img"]}"#),
    );
    assert_eq!(status, 201, "files in the boot root: {answer}");
    for (body, missing) in [
        (r#"{"name":"typo","kernel":"vmlinux"}"#, "vmlinux"),
        (
            r#"{"name":"typo","kernel":"vmlinuz","initrds":["initrd.img","extra.cpio"]}"#,
            "extra.cpio",
        ),
        (r#"{"name":"typo","kernel":"escape"}"#, "escape"),
        (r#"{"name":"typo","kernel":"subdir"}"#, "subdir"),
    ] {
        let (status, answer) = api(&lab.server, "POST", "/api/v1/profiles", Some(body));
        assert_eq!(status, 422, "{body} is refused: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("\"typo\"") && error.contains(missing),
            "{body}: the reason names the profile and {missing}: {error}"
        );
        let (status, _) = api(&lab.server, "GET", "/api/v1/profiles/typo", None);
        assert_eq!(status, 404, "{body} was not stored");
    }
    let (status, answer) = api(
        &lab.server,
        "PUT",
        "/api/v1/profiles/good",
        Some(r#"{"name":"good","kernel":"vmlinuz","initrds":["gone.img"]}"#),
    );
    assert_eq!(status, 422, "an update is checked too: {answer}");
    let added = ctl_out(
        &lab.server,
        &["profiles", "add", "typo", "--kernel", "vmlinux"],
    );
    assert!(
        !added.status.success() && added.stderr.contains("vmlinux"),
        "ctl says why: {}{}",
        added.stdout,
        added.stderr
    );

    // A stored profile whose file goes away later does not block writes that do not touch it
    // (the reload warns of it): a machine for it is still added.
    std::fs::remove_file(&fixture.payload.initrd).expect("remove the initrd");
    let added = ctl_out(
        &lab.server,
        &["machines", "add", "52:54:00:70:00:01", "--profile", "good"],
    );
    assert!(added.status.success(), "{}{}", added.stdout, added.stderr);
    let (_, good) = api(&lab.server, "GET", "/api/v1/profiles/good", None);
    assert_eq!(good["initrds"][0], "initrd.img", "unchanged: {good}");
    let (out, _) = stop(server);
    assert!(out.status.success());
}
