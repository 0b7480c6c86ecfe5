//! Real firmware booting the lab's tiny Linux from Stampede: QEMU (`-accel tcg`) with its NIC on a
//! tap bridged to the server namespace's veth, where `stampede boot --dhcp-range` (or
//! `stampede serve --config`) is the only DHCP, TFTP and HTTP server.
//!
//! - SeaBIOS + QEMU's iPXE ROM: DHCP, then the iPXE script, kernel and initrd over HTTP.
//! - SeaBIOS two-stage (`--chainload`): the ROM's iPXE fetches `undionly.kpxe` over TFTP, and
//!   undionly's iPXE (told apart from the ROM by the server) gets the script.
//! - OVMF's own PXE client: `snponly.efi` over TFTP, then iPXE over HTTP.
//! - OVMF UEFI HTTP Boot: `snponly.efi` over HTTP, then iPXE over HTTP.
//! - SeaBIOS and OVMF PXE from `serve --config` with a per-MAC profile whose command line
//!   (`stampede.marker=profile-{hostname}`) decides the marker.
//!
//! A test passes only when the guest's serial console shows its own marker. On failure the panic
//! message carries the console tail and the appliance's log. At most two QEMUs run at once (TCG on
//! two cores); every wait is bounded. Each boot prints its power-on-to-marker time.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use stampede_lab::{
    Process,
    guest::{INITRD_NAME, MARKER_PARAM, Payload},
    qemu::{BootLab, Firmware, MachineSpec, QemuMachine, WorkDir},
    require, wait_for,
};

const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

/// One boot alone takes 25-45 s under TCG; with two guests sharing two cores UEFI boots were
/// measured at 44-46 s (lab/tests/qemu_lab.rs).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

const PROGRAMS: &[&str] = &[
    "qemu-system-x86_64",
    "busybox",
    "apt-get",
    "dpkg-deb",
    "gzip",
];

fn gate(test: &str, firmware: Firmware) -> bool {
    let mut files: Vec<&str> = vec!["/usr/lib/ipxe/undionly.kpxe", "/usr/lib/ipxe/snponly.efi"];
    if firmware.is_uefi() {
        files.push(stampede_lab::qemu::OVMF_CODE);
    } else {
        files.push("/usr/lib/ipxe/qemu/efi-e1000.rom");
    }
    if !require(test, PROGRAMS) {
        return false;
    }
    if let Some(missing) = files.iter().find(|f| !std::path::Path::new(f).exists()) {
        if stampede_lab::in_ci() {
            panic!("{test}: {missing} is missing (run `cargo xtask setup`)");
        }
        eprintln!("skipping {test}: {missing} is missing");
        return false;
    }
    true
}

/// The payload's command line without `initrd=`: Stampede's script adds `initrd=<name>` itself.
fn cmdline(marker: &str) -> String {
    format!("console=ttyS0 panic=-1 {MARKER_PARAM}={marker}")
}

/// A running appliance in the lab's server namespace, its output going to files so that a
/// failing test can show the log while the appliance still runs.
struct Appliance {
    process: Option<Process>,
    /// `tcpdump --immediate-mode -w $STAMPEDE_LAB_CAPTURE/<work dir name>.pcap` on the server
    /// veth, for debugging (without --immediate-mode short captures come out empty).
    _capture: Option<Process>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Appliance {
    /// Runs `stampede <args> --xdp-mode off --api off --state <work>/state.redb` (the last three
    /// only for `boot`; `serve --config` takes `xdp` from its file) and waits for `ready`.
    fn start(lab: &BootLab, work: &WorkDir, args: &[String]) -> Self {
        let stdout = work.join("stampede.out");
        let stderr = work.join("stampede.log");
        let mut command = lab.server.command(STAMPEDE);
        command
            .args(args)
            .args(["--api", "off", "--stats-interval", "60"])
            .arg("--state")
            .arg(work.join("state.redb"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(fs::File::create(&stdout).expect("stdout file")))
            .stderr(Stdio::from(fs::File::create(&stderr).expect("stderr file")));
        let capture = std::env::var_os("STAMPEDE_LAB_CAPTURE").map(|dir| {
            let name = work.path().file_name().expect("work dir name");
            let file = PathBuf::from(dir).join(name).with_extension("pcap");
            let mut tcpdump = lab.server.command("tcpdump");
            tcpdump
                .args(["--immediate-mode", "-n", "-i", &lab.server_if, "-w"])
                .arg(file)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Process::spawn(tcpdump).unwrap_or_else(|err| panic!("tcpdump: {err}"))
        });
        let process = Process::spawn(command).unwrap_or_else(|err| panic!("stampede: {err}"));
        let mut appliance = Self {
            process: Some(process),
            _capture: capture,
            stdout,
            stderr,
        };
        let ready = wait_for(Duration::from_secs(20), || {
            if appliance
                .process
                .as_mut()
                .and_then(Process::try_status)
                .is_some()
            {
                return Some(false);
            }
            let out = fs::read_to_string(&appliance.stdout).ok()?;
            out.lines().any(|l| l.starts_with("ready ")).then_some(true)
        });
        assert_eq!(
            ready,
            Some(true),
            "stampede did not come up:\n{}",
            appliance.log()
        );
        appliance
    }

    /// stdout then stderr (the `stampede::boot` lines) so far.
    fn log(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// The `stampede::boot` lines so far, without the timestamps' noise.
    fn boot_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("stampede::boot"))
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM, then the `final stats` counters.
    fn stop(mut self) -> HashMap<String, u64> {
        let process = self.process.take().expect("running");
        process.signal(Signal::SIGTERM).expect("SIGTERM");
        let out = process
            .wait_output(Duration::from_secs(15))
            .expect("stampede exits after SIGTERM");
        assert!(out.status.success(), "stampede failed:\n{}", self.log());
        let text = fs::read_to_string(&self.stdout).unwrap_or_default();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("final stats "))
            .unwrap_or_else(|| panic!("no final stats in:\n{text}"));
        line.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }
}

/// What one boot showed.
struct Booted {
    elapsed: Duration,
    boot_lines: Vec<String>,
    stats: HashMap<String, u64>,
}

/// Starts the machine `spec` once a slot is free, waits for `marker` on its console, stops the
/// appliance and reports.
fn boot_and_wait(
    lab: &BootLab,
    appliance: Appliance,
    spec: MachineSpec,
    marker: &str,
    what: &str,
) -> Booted {
    let firmware = spec.firmware;
    let queued = Instant::now();
    let _slot = stampede_lab::qemu::machine_slot();
    let mut machine: QemuMachine = lab.start_machine(spec).expect("qemu starts");
    let seen = machine.wait_for_marker(BOOT_TIMEOUT).unwrap_or_else(|err| {
        panic!(
            "{what}: {firmware} boot failed: {err}\n--- stampede log ---\n{}",
            appliance.log()
        )
    });
    assert_eq!(
        seen.value,
        marker,
        "{what}: wrong marker\n{}\n--- stampede log ---\n{}",
        machine.console_tail(20),
        appliance.log()
    );
    eprintln!(
        "{what}: {firmware} power-on to marker {:.1} s (slot wait {:.1} s)",
        seen.elapsed_since_start.as_secs_f64(),
        (queued.elapsed() - machine.elapsed()).as_secs_f64(),
    );
    drop(machine);
    let boot_lines = appliance.boot_lines();
    let stats = appliance.stop();
    let booted = Booted {
        elapsed: seen.elapsed_since_start,
        boot_lines,
        stats,
    };
    assert_http_boot(&booted, what);
    booted
}

fn payload() -> Payload {
    Payload::prepare().unwrap_or_else(|err| panic!("payload: {err}"))
}

fn dhcp_range(lab: &BootLab) -> String {
    let (low, high) = lab.dhcp_range();
    format!("{low}-{high}")
}

/// `stampede boot --dhcp-range .. [extra] KERNEL INITRD` with `firmware`'s machine; returns what
/// the boot showed.
fn quick_boot(firmware: Firmware, extra: &[&str], what: &str) -> Booted {
    let payload = payload();
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new(&format!("fw-{}", firmware.tag())).expect("work dir");
    let marker = format!(
        "{firmware}-{}-{}",
        what.replace(' ', "-"),
        std::process::id()
    );
    let mut args: Vec<String> = [
        "boot",
        "--iface",
        &lab.server_if,
        "--dhcp-range",
        &dhcp_range(&lab),
        "--xdp-mode",
        "off",
        "--cmdline",
        &cmdline(&marker),
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(payload.kernel.display().to_string());
    args.push(payload.initrd.display().to_string());
    let appliance = Appliance::start(&lab, &work, &args);
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
    boot_and_wait(&lab, appliance, spec, &marker, what)
}

/// `stampede serve --config` with a default profile and a per-MAC profile for the machine: the
/// marker comes from the machine's profile and hostname.
fn profile_boot(firmware: Firmware) -> Booted {
    let payload = payload();
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new(&format!("fw-profile-{}", firmware.tag())).expect("work dir");
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
    let hostname = format!("node-{firmware}-{}", std::process::id());
    let server = lab.server_ip().octets();
    let (low, high) = lab.dhcp_range();
    let config = format!(
        r#"[server]
interfaces = ["{iface}"]

[dhcp]
mode = "authoritative"

[[dhcp.pools]]
range = "{low}-{high}"
subnet = "{a}.{b}.{c}.0/24"

[boot]
files = {{ "vmlinuz" = "{kernel}", "{INITRD_NAME}" = "{initrd}" }}
default_profile = "everyone"

[[profiles]]
name = "everyone"
kernel = "vmlinuz"
initrds = ["{INITRD_NAME}"]
cmdline = "{default_cmdline}"

[[profiles]]
name = "lab"
kernel = "vmlinuz"
initrds = ["{INITRD_NAME}"]
cmdline = "{profile_cmdline}"

[[machines]]
mac = "{mac}"
profile = "lab"
hostname = "{hostname}"

[xdp]
mode = "off"
"#,
        iface = lab.server_if,
        a = server[0],
        b = server[1],
        c = server[2],
        kernel = payload.kernel.display(),
        initrd = payload.initrd.display(),
        default_cmdline = cmdline("default-profile"),
        profile_cmdline = cmdline("profile-{hostname}"),
        mac = spec.mac,
    );
    let config_path = work.join("stampede.toml");
    fs::write(&config_path, config).expect("config");
    let args = vec![
        "serve".to_owned(),
        "--config".to_owned(),
        config_path.display().to_string(),
    ];
    let appliance = Appliance::start(&lab, &work, &args);
    boot_and_wait(
        &lab,
        appliance,
        spec,
        &format!("profile-{hostname}"),
        "serve --config, per-MAC profile",
    )
}

/// Completed TFTP downloads of `file`. (EDK2's PXE client first asks for the size and then
/// aborts that transfer, which the log shows as failed; only the download itself completes.)
fn downloads_of(booted: &Booted, file: &str) -> usize {
    booted
        .boot_lines
        .iter()
        .filter(|l| l.contains("tftp transfer done") && l.contains(&format!("file={file} ")))
        .count()
}

/// The machine fetched its script, kernel and initrd over HTTP (one `http response` log line
/// each, status 200).
fn assert_http_boot(booted: &Booted, what: &str) {
    for path in [
        "/boot.ipxe",
        "/files/vmlinuz",
        &format!("/files/{INITRD_NAME}"),
    ] {
        assert!(
            booted
                .boot_lines
                .iter()
                // The logged target keeps its query (`/boot.ipxe?mac=..`).
                .any(|l| {
                    l.contains("status=200")
                        && (l.contains(&format!("path={path} "))
                            || l.contains(&format!("path={path}?")))
                }),
            "{what}: no 200 for {path}\n{}",
            booted.boot_lines.join("\n")
        );
    }
}

fn assert_no_tftp(booted: &Booted, what: &str) {
    assert_eq!(
        booted.stats.get("tftp_started").copied(),
        Some(0),
        "{what}: everything goes over HTTP\n{}",
        booted.boot_lines.join("\n")
    );
}

#[test]
fn seabios_ipxe_rom_boots_over_http_from_stampede_boot() {
    let test = "seabios_ipxe_rom_boots_over_http_from_stampede_boot";
    if !gate(test, Firmware::Bios) {
        return;
    }
    let booted = quick_boot(Firmware::Bios, &[], "rom");
    assert_no_tftp(&booted, test);
    assert!(booted.elapsed < BOOT_TIMEOUT);
}

#[test]
fn seabios_rom_chainloads_undionly_once_then_boots_over_http() {
    let test = "seabios_rom_chainloads_undionly_once_then_boots_over_http";
    if !gate(test, Firmware::Bios) {
        return;
    }
    let booted = quick_boot(Firmware::Bios, &["--chainload"], "chainload");
    assert_eq!(
        downloads_of(&booted, "undionly.kpxe"),
        1,
        "stage 1 fetches undionly.kpxe once, stage 2 gets the script:\n{}",
        booted.boot_lines.join("\n")
    );
}

#[test]
fn ovmf_uefi_pxe_boots_snponly_over_tftp_then_http_from_stampede_boot() {
    let test = "ovmf_uefi_pxe_boots_snponly_over_tftp_then_http_from_stampede_boot";
    if !gate(test, Firmware::UefiPxe) {
        return;
    }
    let booted = quick_boot(Firmware::UefiPxe, &[], "pxe");
    assert_eq!(
        downloads_of(&booted, "snponly.efi"),
        1,
        "{}",
        booted.boot_lines.join("\n")
    );
}

#[test]
fn ovmf_uefi_http_boot_boots_over_http_only_from_stampede_boot() {
    let test = "ovmf_uefi_http_boot_boots_over_http_only_from_stampede_boot";
    if !gate(test, Firmware::UefiHttp) {
        return;
    }
    let booted = quick_boot(Firmware::UefiHttp, &[], "http");
    assert_no_tftp(&booted, test);
}

#[test]
fn seabios_boots_its_per_mac_profile_from_serve_config() {
    if !gate(
        "seabios_boots_its_per_mac_profile_from_serve_config",
        Firmware::Bios,
    ) {
        return;
    }
    profile_boot(Firmware::Bios);
}

#[test]
fn ovmf_uefi_pxe_boots_its_per_mac_profile_from_serve_config() {
    if !gate(
        "ovmf_uefi_pxe_boots_its_per_mac_profile_from_serve_config",
        Firmware::UefiPxe,
    ) {
        return;
    }
    profile_boot(Firmware::UefiPxe);
}

/// Benchmark, not a test (`--ignored`): power-on to kernel marker with the server's IPv6 on,
/// with Stampede's answer to router solicitations off and on. One machine at a time, so the
/// figures are not skewed by a second VM sharing the two cores.
///
/// `cargo test --test firmware_lab boot_time -- --ignored --nocapture --test-threads 1`
#[test]
#[ignore = "benchmark: boots 6 machines one after the other (~4 min)"]
fn boot_time_with_and_without_router_advertisements() {
    if !gate("boot_time", Firmware::UefiPxe) || !gate("boot_time", Firmware::Bios) {
        return;
    }
    let payload = payload();
    let mut rows = Vec::new();
    for firmware in [Firmware::Bios, Firmware::UefiPxe] {
        for ra in ["off", "auto"] {
            let mut lab = BootLab::new().expect("boot lab");
            for key in [
                format!("net.ipv6.conf.{}.accept_dad", lab.server_if),
                "net.ipv6.conf.all.disable_ipv6".to_owned(),
                format!("net.ipv6.conf.{}.disable_ipv6", lab.server_if),
            ] {
                // accept_dad=0: the link-local address is usable at once.
                lab.server
                    .sysctl(&key, "0")
                    .expect("enable IPv6 on the server");
            }
            let work = WorkDir::new(&format!("bt-{}-{ra}", firmware.tag())).expect("work dir");
            let marker = format!("boot-time-{}-{ra}", firmware.tag());
            let args: Vec<String> = vec![
                "boot".into(),
                "--iface".into(),
                lab.server_if.clone(),
                "--dhcp-range".into(),
                dhcp_range(&lab),
                "--xdp-mode".into(),
                "off".into(),
                "--router-advertisements".into(),
                ra.into(),
                "--cmdline".into(),
                cmdline(&marker),
                payload.kernel.display().to_string(),
                payload.initrd.display().to_string(),
            ];
            let appliance = Appliance::start(&lab, &work, &args);
            // The responder listens 3 s for other routers before it answers.
            std::thread::sleep(Duration::from_secs(4));
            let tap = lab.add_tap().expect("tap");
            let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
            let booted = boot_and_wait(&lab, appliance, spec, &marker, "boot time");
            let server = if ra == "auto" {
                "stampede, RA auto"
            } else {
                "stampede, RA off"
            };
            rows.push((firmware, server, booted.elapsed));
        }
    }
    // The peer, in the same run: dnsmasq (DHCP + TFTP, `--no-ping`), iPXE taking the script,
    // kernel and initrd over TFTP. It sends no router advertisements.
    for firmware in [Firmware::Bios, Firmware::UefiPxe] {
        let mut lab = BootLab::new().expect("boot lab");
        let work = WorkDir::new(&format!("bt-{}-dnsmasq", firmware.tag())).expect("work dir");
        let marker = format!("boot-time-{}-dnsmasq", firmware.tag());
        let root = stampede_lab::peers::tftp_root(&work, &payload, &marker).expect("tftp root");
        let dnsmasq =
            stampede_lab::peers::Dnsmasq::start(&lab, &work, &root, "boot.ipxe").expect("dnsmasq");
        let tap = lab.add_tap().expect("tap");
        let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
        let _slot = stampede_lab::qemu::machine_slot();
        let mut machine = lab.start_machine(spec).expect("qemu starts");
        let seen = machine
            .wait_for_marker(BOOT_TIMEOUT)
            .unwrap_or_else(|err| panic!("dnsmasq boot failed: {err}\n{}", dnsmasq.log()));
        assert_eq!(seen.value, marker);
        rows.push((
            firmware,
            "dnsmasq --no-ping (no RA)",
            seen.elapsed_since_start,
        ));
    }
    eprintln!("\n| firmware | server | power-on to marker |\n|---|---|---|");
    for (firmware, server, elapsed) in rows {
        eprintln!("| {firmware} | {server} | {:.1} s |", elapsed.as_secs_f64());
    }
}
