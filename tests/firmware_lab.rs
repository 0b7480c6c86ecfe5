//! Real firmware booting the lab's tiny Linux from Stampede: QEMU (`-accel tcg`) with its NIC on a
//! tap bridged to the server namespace's veth, where `stampede boot --dhcp-range` (or
//! `stampede serve --config`) is the only DHCP, TFTP and HTTP server, or `stampede boot` the
//! ProxyDHCP server beside the LAN's own DHCP server.
//!
//! - SeaBIOS + QEMU's iPXE ROM: DHCP, then the iPXE script, kernel and initrd over HTTP.
//! - SeaBIOS two-stage (`--chainload`): the ROM's iPXE fetches `undionly.kpxe` over TFTP, and
//!   undionly's iPXE (told apart from the ROM by the server) gets the script.
//! - OVMF's own PXE client: `snponly.efi` over TFTP, then iPXE over HTTP.
//! - OVMF UEFI HTTP Boot: `snponly.efi` over HTTP, then iPXE over HTTP.
//! - SeaBIOS and OVMF PXE from `stampede boot` in ProxyDHCP mode beside the LAN's own DHCP
//!   server (dnsmasq, addresses only).
//! - SeaBIOS and OVMF PXE from `serve --config` with a per-MAC profile whose command line
//!   (`stampede.marker=profile-{hostname}`) decides the marker.
//! - SeaBIOS + QEMU's iPXE ROM with the initrd missing at first: the script's retry path, then
//!   the boot.
//!
//! A test passes only when the guest's serial console shows its own marker. On failure the panic
//! message carries the console tail and the appliance's log. At most two QEMUs run at once (TCG on
//! two cores); every wait is bounded. Each boot prints its power-on-to-marker time.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use stampede_control::sessions::SessionTimeline;
use stampede_lab::{
    Process,
    guest::{INITRD_NAME, MARKER_PARAM, Payload},
    qemu::{BootLab, Firmware, MachineSpec, QemuMachine, WorkDir},
    require, wait_for,
};

mod support;

use support::appliance::STAMPEDE;

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

use support::lab_appliance::{Appliance, BENCH_API, BENCH_TOKEN};

/// `tcpdump` on the server veth for datagrams to UDP port 4011, the PXE boot server port a
/// client turns to for boot server discovery or a ProxyDHCP REQUEST. Answers that let a client go
/// on at once leave it silent.
struct BootServerPortWatch {
    _tcpdump: Process,
    out: PathBuf,
}

impl BootServerPortWatch {
    fn start(lab: &BootLab, work: &WorkDir) -> Self {
        let out = work.join("port4011.txt");
        let err = work.join("port4011.err");
        let mut tcpdump = lab.server.command("tcpdump");
        tcpdump
            .args(["--immediate-mode", "-l", "-n", "-i", &lab.server_if])
            .args(["udp", "dst", "port", "4011"])
            .stdout(Stdio::from(fs::File::create(&out).expect("tcpdump out")))
            .stderr(Stdio::from(fs::File::create(&err).expect("tcpdump err")));
        let tcpdump = Process::spawn(tcpdump).unwrap_or_else(|e| panic!("tcpdump: {e}"));
        let listening = wait_for(Duration::from_secs(10), || {
            let text = fs::read_to_string(&err).ok()?;
            text.contains("listening on").then_some(())
        });
        assert!(listening.is_some(), "tcpdump did not start");
        Self {
            _tcpdump: tcpdump,
            out,
        }
    }

    /// The datagrams seen so far, one line each.
    fn seen(&self) -> Vec<String> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// What one boot showed.
struct Booted {
    elapsed: Duration,
    boot_lines: Vec<String>,
    stats: HashMap<String, u64>,
    /// Datagrams to UDP port 4011 during the boot.
    to_port_4011: Vec<String>,
    /// The machine's session from the appliance's API, when it ran with one.
    timeline: Option<SessionTimeline>,
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
    let mac = machine.spec().mac.clone();
    drop(machine);
    let timeline = appliance.api.then(|| session_timeline(lab, &mac));
    let boot_lines = appliance.boot_lines();
    let stats = appliance.stop();
    let booted = Booted {
        elapsed: seen.elapsed_since_start,
        boot_lines,
        stats,
        to_port_4011: Vec::new(),
        timeline,
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
    let appliance = Appliance::start_with_api(&lab, &work, &args, Some(BENCH_API));
    let watch = BootServerPortWatch::start(&lab, &work);
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
    let mut booted = boot_and_wait(&lab, appliance, spec, &marker, what);
    booted.to_port_4011 = watch.seen();
    booted
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

/// The LAN's own DHCP server for ProxyDHCP runs: dnsmasq in the rack namespace, on the bridge at
/// `.2`, handing out addresses only (no boot options). Returns it and its lease file.
fn lan_dhcp(lab: &BootLab, work: &WorkDir) -> (Process, PathBuf) {
    lab.rack
        .ip(&["addr", "add", &lab.subnet.cidr(2), "dev", &lab.bridge])
        .expect("LAN DHCP server address");
    let leases = work.join("lan.leases");
    let (low, high) = lab.dhcp_range();
    let dnsmasq = lab
        .rack
        .spawn(
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                "--no-ping",
                &format!("--interface={}", lab.bridge),
                &format!("--dhcp-range={low},{high},255.255.255.0,10m"),
                &format!("--dhcp-leasefile={}", leases.display()),
            ],
        )
        .expect("dnsmasq");
    (dnsmasq, leases)
}

/// `stampede boot` in ProxyDHCP mode (no `--dhcp-range`) beside the LAN's own DHCP server:
/// dnsmasq in the rack namespace, on the bridge at `.2`, handing out addresses only. Returns
/// what the boot showed and dnsmasq's lease file.
fn proxy_boot(firmware: Firmware, what: &str) -> (Booted, String) {
    let payload = payload();
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new(&format!("fw-proxy-{}", firmware.tag())).expect("work dir");
    let marker = format!("{firmware}-proxy-{}", std::process::id());
    let (lan_dhcp, leases) = lan_dhcp(&lab, &work);
    let args: Vec<String> = [
        "boot",
        "--iface",
        &lab.server_if,
        "--xdp-mode",
        "off",
        "--cmdline",
        &cmdline(&marker),
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([
        payload.kernel.display().to_string(),
        payload.initrd.display().to_string(),
    ])
    .collect();
    let appliance = Appliance::start_with_api(&lab, &work, &args, Some(BENCH_API));
    let watch = BootServerPortWatch::start(&lab, &work);
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
    let mut booted = boot_and_wait(&lab, appliance, spec, &marker, what);
    booted.to_port_4011 = watch.seen();
    drop(lan_dhcp);
    (booted, fs::read_to_string(&leases).unwrap_or_default())
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

/// Option 43 (firmware PXE: "download the file named here, no boot server discovery") and the
/// boot file in the answer itself (iPXE: no ProxyDHCPREQUEST) kept every client off port 4011.
fn assert_no_boot_server_requests(booted: &Booted, what: &str) {
    assert!(
        booted.to_port_4011.is_empty(),
        "{what}: datagrams to the PXE boot server port:\n{}\n{}",
        booted.to_port_4011.join("\n"),
        booted.boot_lines.join("\n")
    );
}

/// The appliance's session for the machine is one boot that went through `steps` in order (each
/// found in an event's description): the loader's own DHCP continued the boot.
fn assert_one_boot_session(booted: &Booted, steps: &[&str]) {
    let timeline = booted.timeline.as_ref().expect("the API was on");
    let events: Vec<String> = timeline
        .timeline
        .iter()
        .map(|e| format!("{} {}", e.event.kind.name(), e.event.kind.describe()))
        .collect();
    assert_eq!(timeline.summary.boot, 1, "{events:#?}");
    let positions: Vec<usize> = steps
        .iter()
        .map(|step| {
            events
                .iter()
                .position(|e| e.contains(step))
                .unwrap_or_else(|| panic!("no {step:?} in {events:#?}"))
        })
        .collect();
    assert!(
        positions.is_sorted(),
        "{steps:?} out of order in {events:#?}"
    );
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
    let test = stampede_lab::test_name!();
    if !gate(test, Firmware::Bios) {
        return;
    }
    let booted = quick_boot(Firmware::Bios, &[], "rom");
    assert_no_tftp(&booted, test);
    assert_no_boot_server_requests(&booted, test);
    assert!(booted.elapsed < BOOT_TIMEOUT);
}

/// A download that fails (here the initrd missing for a moment; in a storm, a connection cut by
/// a restart) sends QEMU's real iPXE down the script's retry path (`|| goto stampede_retry`,
/// `imgfree`, `sleep 5`) and the machine boots on the next attempt, from the script it has.
#[test]
fn seabios_ipxe_rom_retries_a_failed_download_then_boots() {
    let test = stampede_lab::test_name!();
    if !gate(test, Firmware::Bios) {
        return;
    }
    let payload = payload();
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new("fw-retry-bios").expect("work dir");
    let marker = format!("bios-retry-{}", std::process::id());
    // A copy of its own: the shared payload is not touched.
    let initrd = work.join(INITRD_NAME);
    fs::copy(&payload.initrd, &initrd).expect("copy initrd");
    let args: Vec<String> = [
        "boot",
        "--iface",
        &lab.server_if,
        "--dhcp-range",
        &dhcp_range(&lab),
        "--xdp-mode",
        "off",
        "--cmdline",
        &cmdline(&marker),
        &payload.kernel.display().to_string(),
        &initrd.display().to_string(),
    ]
    .map(str::to_owned)
    .into();
    let appliance = Appliance::start(&lab, &work, &args);
    let away = work.join("initrd.away");
    fs::rename(&initrd, &away).expect("hide initrd");
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(Firmware::Bios, &tap, work.join("console.log"));
    let _slot = stampede_lab::qemu::machine_slot();
    let mut machine: QemuMachine = lab.start_machine(spec).expect("qemu starts");
    let initrd_path = format!("path=/files/{INITRD_NAME}");
    let failed = |l: &String| l.contains(&initrd_path) && !l.contains("status=200");
    wait_for(BOOT_TIMEOUT, || {
        appliance.boot_lines().iter().any(failed).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{test}: the initrd was never asked for\n{}\n--- stampede log ---\n{}",
            machine.console_tail(20),
            appliance.log()
        )
    });
    fs::rename(&away, &initrd).expect("restore initrd");
    let seen = machine.wait_for_marker(BOOT_TIMEOUT).unwrap_or_else(|err| {
        panic!(
            "{test}: no boot after the retry: {err}\n{}\n--- stampede log ---\n{}",
            machine.console_tail(30),
            appliance.log()
        )
    });
    assert_eq!(seen.value, marker);
    drop(machine);
    let console = fs::read_to_string(work.join("console.log")).unwrap_or_default();
    assert!(
        console.contains("stampede: download or boot failed, trying again in 5 s"),
        "{test}: iPXE took the retry path\n{console}"
    );
    let lines = appliance.boot_lines();
    let _ = appliance.stop();
    let first_fail = lines.iter().position(failed).expect("a failed fetch");
    let served = lines
        .iter()
        .rposition(|l| l.contains(&initrd_path) && l.contains("status=200"))
        .unwrap_or_else(|| panic!("{test}: no 200 for the initrd\n{}", lines.join("\n")));
    assert!(first_fail < served, "{}", lines.join("\n"));
    let scripts = lines
        .iter()
        .filter(|l| {
            l.contains("status=200") && l.contains("path=/boot.ipxe?") && l.contains("platform=")
        })
        .count();
    assert_eq!(
        scripts,
        1,
        "the retry reuses the script it has\n{}",
        lines.join("\n")
    );
}

#[test]
fn seabios_rom_chainloads_undionly_once_then_boots_over_http() {
    let test = stampede_lab::test_name!();
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
    assert_one_boot_session(&booted, &["undionly.kpxe", "boot.ipxe", INITRD_NAME]);
}

#[test]
fn ovmf_uefi_pxe_boots_snponly_over_tftp_then_http_from_stampede_boot() {
    let test = stampede_lab::test_name!();
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
    assert_no_boot_server_requests(&booted, test);
    assert_one_boot_session(&booted, &["snponly.efi", "boot.ipxe", INITRD_NAME]);
}

#[test]
fn ovmf_uefi_http_boot_boots_over_http_only_from_stampede_boot() {
    let test = stampede_lab::test_name!();
    if !gate(test, Firmware::UefiHttp) {
        return;
    }
    let booted = quick_boot(Firmware::UefiHttp, &[], "http");
    assert_no_tftp(&booted, test);
    assert_one_boot_session(&booted, &["snponly.efi", "boot.ipxe", INITRD_NAME]);
}

/// ProxyDHCP beside the LAN's DHCP server: the address comes from dnsmasq, the boot from
/// Stampede, and iPXE needs no ProxyDHCP request to port 4011 (the offer carries next-server and
/// boot file).
#[test]
fn seabios_ipxe_rom_boots_from_stampede_proxy_beside_the_lans_dhcp() {
    let test = stampede_lab::test_name!();
    if !gate(test, Firmware::Bios) || !require(test, &["dnsmasq"]) {
        return;
    }
    let (booted, leases) = proxy_boot(Firmware::Bios, "proxy");
    assert_no_tftp(&booted, test);
    assert_no_boot_server_requests(&booted, test);
    assert!(
        leases.lines().count() == 1,
        "the LAN's DHCP server leased the address:\n{leases}"
    );
}

/// The same for OVMF's PXE client: it merges the LAN's address offer with Stampede's ProxyDHCP
/// offer and, told by option 43 that the boot file is in the offer, fetches `snponly.efi` over
/// TFTP without asking the boot server port 4011 first; then iPXE as above.
#[test]
fn ovmf_uefi_pxe_boots_from_stampede_proxy_beside_the_lans_dhcp() {
    let test = stampede_lab::test_name!();
    if !gate(test, Firmware::UefiPxe) || !require(test, &["dnsmasq"]) {
        return;
    }
    let (booted, leases) = proxy_boot(Firmware::UefiPxe, "proxy");
    assert_no_boot_server_requests(&booted, test);
    assert_eq!(
        downloads_of(&booted, "snponly.efi"),
        1,
        "{}",
        booted.boot_lines.join("\n")
    );
    assert!(
        leases.lines().count() == 1,
        "the LAN's DHCP server leased the address:\n{leases}"
    );
}

#[test]
fn seabios_boots_its_per_mac_profile_from_serve_config() {
    if !gate(stampede_lab::test_name!(), Firmware::Bios) {
        return;
    }
    profile_boot(Firmware::Bios);
}

#[test]
fn ovmf_uefi_pxe_boots_its_per_mac_profile_from_serve_config() {
    if !gate(stampede_lab::test_name!(), Firmware::UefiPxe) {
        return;
    }
    profile_boot(Firmware::UefiPxe);
}

/// One row of the boot-time benchmark.
struct BootTime {
    firmware: Firmware,
    server: &'static str,
    elapsed: Duration,
    /// Console lines and the server's session events, in time since power-on.
    breakdown: Vec<(Duration, String)>,
}

/// Console lines for the breakdown: the kernel's own messages (`[    0.123456] ..`) are left
/// out but for the first and the last, which mark when Linux started and reached userspace.
fn console_breakdown(lines: &[stampede_lab::console::StampedLine]) -> Vec<(Duration, String)> {
    let is_kernel = |t: &str| {
        t.strip_prefix('[')
            .is_some_and(|r| r.trim_start().starts_with(|c: char| c.is_ascii_digit()))
    };
    let first_kernel = lines.iter().position(|l| is_kernel(&l.text));
    let last_kernel = lines.iter().rposition(|l| is_kernel(&l.text));
    lines
        .iter()
        .enumerate()
        .filter(|(i, l)| !is_kernel(&l.text) || Some(*i) == first_kernel || Some(*i) == last_kernel)
        .map(|(_, l)| {
            let span = l.last.saturating_sub(l.first);
            let text: String = l.text.chars().take(100).collect();
            let text = if span >= Duration::from_millis(200) {
                format!("console {text}  [line took {:.2} s]", span.as_secs_f64())
            } else {
                format!("console {text}")
            };
            (l.first, text)
        })
        .collect()
}

/// The appliance's session timeline for `mac`: `stampede ctl --json sessions MAC` against the
/// API on [`BENCH_API`].
fn session_timeline(lab: &BootLab, mac: &str) -> SessionTimeline {
    let url = format!("http://{BENCH_API}");
    let out = lab
        .server
        .run(
            STAMPEDE,
            &[
                "ctl",
                "--url",
                &url,
                "--token",
                BENCH_TOKEN,
                "--json",
                "sessions",
                mac,
            ],
            Duration::from_secs(10),
        )
        .expect("stampede ctl sessions runs");
    assert!(out.status.success(), "ctl sessions: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|err| panic!("{err}: {}", out.stdout))
}

/// The appliance's session timeline for `mac` as events in time since `power_on`.
fn session_breakdown(lab: &BootLab, mac: &str, power_on: SystemTime) -> Vec<(Duration, String)> {
    let timeline = session_timeline(lab, mac);
    let power_on_ms = power_on
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let mut rows: Vec<(Duration, String)> = timeline
        .timeline
        .iter()
        .map(|e| {
            (
                Duration::from_millis(e.event.at_unix_ms.saturating_sub(power_on_ms)),
                format!(
                    "server  {} {} (+{:.2} s)",
                    e.event.kind.name(),
                    e.event.kind.describe(),
                    e.since_prev_ms as f64 / 1000.0
                ),
            )
        })
        .collect();
    let end = timeline.timeline.last().map_or(Duration::ZERO, |e| {
        Duration::from_millis(e.event.at_unix_ms.saturating_sub(power_on_ms))
    });
    for gap in &timeline.gaps {
        rows.push((
            end,
            format!(
                "server  gap {} -> {}: {:.2} s",
                gap.from,
                gap.to,
                gap.gap_ms as f64 / 1000.0
            ),
        ));
    }
    rows
}

/// `stampede boot` with its router advertisements on, the server's IPv6 on as on a real
/// network, and the API up for the session timeline: the only DHCP server (`--dhcp-range`), or
/// with `proxy` the ProxyDHCP server beside the LAN's dnsmasq ([`lan_dhcp`]).
fn stampede_boot_time(
    payload: &Payload,
    firmware: Firmware,
    round: usize,
    proxy: bool,
) -> BootTime {
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
    let mode = if proxy { "proxy" } else { "dhcp" };
    let work = WorkDir::new(&format!("bt-{}-{mode}-{round}", firmware.tag())).expect("work dir");
    let marker = format!("boot-time-{}-{mode}-{round}", firmware.tag());
    let _lan_dhcp = proxy.then(|| lan_dhcp(&lab, &work));
    let range = if proxy {
        Vec::new()
    } else {
        vec!["--dhcp-range".to_owned(), dhcp_range(&lab)]
    };
    let args: Vec<String> = ["boot".into(), "--iface".into(), lab.server_if.clone()]
        .into_iter()
        .chain(range)
        .chain([
            "--xdp-mode".into(),
            "off".into(),
            "--router-advertisements".into(),
            "auto".into(),
            "--cmdline".into(),
            cmdline(&marker),
            payload.kernel.display().to_string(),
            payload.initrd.display().to_string(),
        ])
        .collect();
    let appliance = Appliance::start_with_api(&lab, &work, &args, Some(BENCH_API));
    // The responder listens 3 s for other routers before it answers.
    std::thread::sleep(Duration::from_secs(4));
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));
    let mac = spec.mac.clone();
    let _slot = stampede_lab::qemu::machine_slot();
    let power_on = SystemTime::now();
    let mut machine = lab.start_machine(spec).expect("qemu starts");
    let seen = machine.wait_for_marker(BOOT_TIMEOUT).unwrap_or_else(|err| {
        panic!(
            "{firmware} boot failed: {err}\n--- stampede log ---\n{}",
            appliance.log()
        )
    });
    assert_eq!(seen.value, marker, "{}", machine.console_tail(20));
    let mut breakdown = console_breakdown(&machine.console_lines());
    drop(machine);
    breakdown.extend(session_breakdown(&lab, &mac, power_on));
    breakdown.sort_by_key(|(at, _)| *at);
    let booted = Booted {
        elapsed: seen.elapsed_since_start,
        boot_lines: appliance.boot_lines(),
        stats: appliance.stop(),
        to_port_4011: Vec::new(),
        timeline: None,
    };
    assert_http_boot(&booted, "boot time");
    BootTime {
        firmware,
        server: if proxy {
            "Stampede ProxyDHCP + dnsmasq DHCP"
        } else {
            "Stampede"
        },
        elapsed: booted.elapsed,
        breakdown,
    }
}

/// The peer: dnsmasq (DHCP + TFTP, `--no-ping`), iPXE taking the script, kernel and initrd over
/// TFTP. It sends no router advertisements.
fn dnsmasq_boot_time(payload: &Payload, firmware: Firmware, round: usize) -> BootTime {
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new(&format!("bt-{}-dnsmasq-{round}", firmware.tag())).expect("work dir");
    let marker = format!("boot-time-{}-dnsmasq-{round}", firmware.tag());
    let root = stampede_lab::peers::tftp_root(&work, payload, &marker).expect("tftp root");
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
    BootTime {
        firmware,
        server: "dnsmasq --no-ping",
        elapsed: seen.elapsed_since_start,
        breakdown: console_breakdown(&machine.console_lines()),
    }
}

/// Benchmark, not a test (`--ignored`): power-on to kernel marker per firmware, Stampede and
/// dnsmasq in the same run, one machine at a time (a second VM would share the two cores), with
/// each boot's breakdown: the console lines as they appeared and the appliance's session
/// timeline. `BOOT_TIME_ROUNDS` (default 1) repeats the whole set.
///
/// `cargo test --test firmware_lab boot_time -- --ignored --nocapture --test-threads 1`
#[test]
#[ignore = "benchmark: boots 6 machines per round one after the other (~2.5 min)"]
fn boot_time_stampede_and_dnsmasq() {
    if !gate(stampede_lab::test_name!(), Firmware::UefiPxe)
        || !gate(stampede_lab::test_name!(), Firmware::Bios)
    {
        return;
    }
    let rounds: usize = std::env::var("BOOT_TIME_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let payload = payload();
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for firmware in [Firmware::Bios, Firmware::UefiPxe] {
            for row in [
                stampede_boot_time(&payload, firmware, round, false),
                stampede_boot_time(&payload, firmware, round, true),
                dnsmasq_boot_time(&payload, firmware, round),
            ] {
                eprintln!(
                    "\n== round {round}: {} / {}: power-on to marker {:.1} s",
                    row.firmware,
                    row.server,
                    row.elapsed.as_secs_f64()
                );
                for (at, what) in &row.breakdown {
                    eprintln!("{:7.2}  {what}", at.as_secs_f64());
                }
                rows.push((round, row.firmware, row.server, row.elapsed));
            }
        }
    }
    eprintln!("\n| round | firmware | server | power-on to marker |\n|---|---|---|---|");
    for (round, firmware, server, elapsed) in rows {
        eprintln!(
            "| {round} | {firmware} | {server} | {:.1} s |",
            elapsed.as_secs_f64()
        );
    }
}

/// OVMF UEFI HTTP Boot over HTTPS (issue 20 item 3): `stampede boot --https-port 8443
/// --https-boot-urls` hands the firmware `https://.../snponly.efi`; the firmware trusts the CAs
/// in fw_cfg `etc/edk2/https/cacerts`. `trusted_ca`: give it the appliance CA (from the state
/// directory, made at start), else a CA of the test's own. Returns the boot, or `None` with the
/// appliance's log when no marker came within `wait`.
fn https_boot(trusted_ca: bool, wait: Duration) -> Result<Booted, String> {
    let payload = payload();
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new("fw-uefihttps").expect("work dir");
    let marker = format!("uefihttps-{}", std::process::id());
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
        "--https-port",
        "8443",
        "--https-boot-urls",
    ]
    .map(str::to_owned)
    .into();
    args.push(payload.kernel.display().to_string());
    args.push(payload.initrd.display().to_string());
    let appliance = Appliance::start_with_api(&lab, &work, &args, None);
    let pem = if trusted_ca {
        fs::read_to_string(work.join("ca").join("ca.pem")).expect("the appliance CA")
    } else {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "not the appliance");
        params.self_signed(&key).expect("CA").pem()
    };
    let ders = stampede_lab::edk2::pem_certificates(&pem).expect("PEM");
    let cacerts = work.join("cacerts.esl");
    fs::write(&cacerts, stampede_lab::edk2::signature_lists(&ders)).expect("write cacerts");
    let tap = lab.add_tap().expect("tap");
    let mut spec = MachineSpec::network(Firmware::UefiHttp, &tap, work.join("console.log"));
    spec.extra.extend([
        "-fw_cfg".to_owned(),
        format!("name=etc/edk2/https/cacerts,file={}", cacerts.display()),
    ]);
    let _slot = stampede_lab::qemu::machine_slot();
    let mut machine: QemuMachine = lab.start_machine(spec).expect("qemu starts");
    let seen = machine.wait_for_marker(wait);
    let console = machine.console_tail(30);
    drop(machine);
    let boot_lines = appliance.boot_lines();
    let log = appliance.log();
    let stats = appliance.stop();
    match seen {
        Ok(seen) if seen.value == marker => Ok(Booted {
            elapsed: seen.elapsed_since_start,
            boot_lines,
            stats,
            to_port_4011: Vec::new(),
            timeline: None,
        }),
        other => Err(format!(
            "{other:?}\n--- console ---\n{console}\n--- stampede log ---\n{log}"
        )),
    }
}

/// Blocked here: Debian 12's OVMF (2022.11) is built without elliptic curves, so its TLS offers
/// no ECDHE group, and rustls has no finite-field DHE: the appliance logs `https handshake
/// failed ... NoKxGroupsInCommon` and the firmware says "Could not retrieve NBP file size".
/// Run it (`--ignored`) with an OVMF built with EC (edk2 with `OpensslLibFull`, e.g. Debian 13's).
#[test]
#[ignore = "Debian 12's OVMF offers no ECDHE group (NoKxGroupsInCommon with rustls)"]
fn ovmf_uefi_http_boot_over_https_trusting_the_appliance_ca() {
    let test = stampede_lab::test_name!();
    if !gate(test, Firmware::UefiHttp) {
        return;
    }
    let booted = https_boot(true, BOOT_TIMEOUT).unwrap_or_else(|why| panic!("{test}: {why}"));
    eprintln!(
        "{test}: power-on to marker {:.1} s",
        booted.elapsed.as_secs_f64()
    );
    assert_http_boot(&booted, test);
    assert_no_tftp(&booted, test);
}
