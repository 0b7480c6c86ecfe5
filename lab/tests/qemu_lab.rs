//! Real firmware against a known-good peer: the payload boots, and SeaBIOS + iPXE ROM, OVMF's
//! UEFI PXE client and OVMF's UEFI HTTP Boot (with busybox httpd) boot it from dnsmasq over the
//! bridged [`BootLab`] topology.
//!
//! `BOOT_TIMEOUT` is 90 s although one boot alone takes 25-36 s: with two guests sharing the
//! two cores under TCG the UEFI boots were measured at 44-46 s.
//!
//! Each test takes a machine slot first (at most two QEMUs at once: TCG on two cores) and bounds
//! every wait. On failure the panic message carries the console tail and dnsmasq's log.
use std::{
    fs,
    time::{Duration, Instant},
};

use stampede_lab::{
    Process,
    guest::{INITRD_NAME, Payload},
    peers,
    qemu::{BootLab, Firmware, MachineError, MachineSpec, QemuMachine, WorkDir},
    require,
};

/// Each boot must finish well inside this under TCG (LAB.md: ~24 s BIOS, ~31 s UEFI).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

const PROGRAMS: &[&str] = &[
    "qemu-system-x86_64",
    "busybox",
    "apt-get",
    "dpkg-deb",
    "gzip",
];

fn payload() -> Payload {
    Payload::prepare().unwrap_or_else(|err| panic!("payload: {err}"))
}

#[test]
fn payload_boots_directly_and_prints_its_marker() {
    if !require("payload_boots_directly_and_prints_its_marker", PROGRAMS) {
        return;
    }
    let payload = payload();
    let work = WorkDir::new("direct").expect("work dir");
    let ns = stampede_lab::Netns::new("direct").expect("netns");
    let _slot = stampede_lab::qemu::machine_slot();
    let spec = MachineSpec::direct_kernel(
        &payload,
        &payload.cmdline("direct-1"),
        work.join("console.log"),
    );
    let mut machine = QemuMachine::start(&ns, spec).expect("qemu starts");
    let seen = machine
        .wait_for_marker(BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("direct boot: {err}"));
    assert_eq!(seen.value, "direct-1");
    assert!(
        machine.console().contains("STAMPEDE-CMDLINE console=ttyS0"),
        "{}",
        machine.console_tail(20)
    );
    let status = machine.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "the payload powers off and QEMU exits: {}",
        machine.console_tail(10)
    );
    eprintln!(
        "direct kernel boot: marker after {:.1} s",
        seen.elapsed_since_start.as_secs_f64()
    );
}

#[test]
fn a_guest_without_marker_is_reported_with_its_console() {
    if !require(
        "a_guest_without_marker_is_reported_with_its_console",
        PROGRAMS,
    ) {
        return;
    }
    let payload = payload();
    let work = WorkDir::new("nomarker").expect("work dir");
    let ns = stampede_lab::Netns::new("nomarker").expect("netns");
    let _slot = stampede_lab::qemu::machine_slot();
    // The payload's command line minus the marker: /init prints STAMPEDE-NO-MARKER, powers off.
    let cmdline = format!("console=ttyS0 panic=-1 initrd={INITRD_NAME}");
    let spec = MachineSpec::direct_kernel(&payload, &cmdline, work.join("console.log"));
    let mut machine = QemuMachine::start(&ns, spec).expect("qemu starts");
    match machine.wait_for_marker(BOOT_TIMEOUT) {
        Err(MachineError::ExitedWithoutMarker { tail, .. }) => {
            assert!(tail.contains("STAMPEDE-NO-MARKER"), "{tail}");
        }
        other => panic!("expected ExitedWithoutMarker, got {other:?}"),
    }
}

/// Boots one machine with `firmware` from dnsmasq and returns the time from QEMU start to marker.
fn pxe_boot_from_dnsmasq(firmware: Firmware) -> Duration {
    let payload = payload();
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new(firmware.tag()).expect("work dir");
    let marker = format!("{firmware}-{}", std::process::id());
    let root = peers::tftp_root(&work, &payload, &marker).expect("tftp root");
    // UEFI HTTP Boot fetches snponly.efi over HTTP, and iPXE then takes the script (and with
    // it kernel and initramfs) from the same web server; the other paths stay on TFTP.
    let httpd_log = work.join("httpd.log");
    let (_httpd, ipxe_script) = if firmware == Firmware::UefiHttp {
        let listen = format!("{}:80", lab.server_ip());
        let log = fs::File::create(&httpd_log).expect("httpd log");
        let mut httpd = lab.server.command("busybox");
        httpd
            .args(["httpd", "-f", "-vv", "-p", &listen, "-h"])
            .arg(&root)
            .stdout(log.try_clone().expect("httpd log"))
            .stderr(log);
        let httpd = Process::spawn(httpd).unwrap_or_else(|err| panic!("busybox httpd: {err}"));
        (Some(httpd), format!("http://{}/boot.ipxe", lab.server_ip()))
    } else {
        (None, "boot.ipxe".to_owned())
    };
    let dnsmasq = peers::Dnsmasq::start(&lab, &work, &root, &ipxe_script).expect("dnsmasq");
    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(firmware, &tap, work.join("console.log"));

    let queued = Instant::now();
    let _slot = stampede_lab::qemu::machine_slot();
    let mut machine = lab.start_machine(spec).expect("qemu starts");
    let seen = machine.wait_for_marker(BOOT_TIMEOUT).unwrap_or_else(|err| {
        panic!(
            "{firmware} boot from dnsmasq failed: {err}\n--- dnsmasq log ---\n{}\n\
             --- httpd log ---\n{}",
            dnsmasq.log(),
            fs::read_to_string(&httpd_log).unwrap_or_default(),
        )
    });
    assert_eq!(seen.value, marker, "{}", machine.console_tail(20));
    eprintln!(
        "{firmware} network boot from dnsmasq (--no-ping, no RA): QEMU start to marker {:.1} s \
         (slot wait {:.1} s)",
        seen.elapsed_since_start.as_secs_f64(),
        (queued.elapsed() - machine.elapsed()).as_secs_f64(),
    );
    seen.elapsed_since_start
}

#[test]
fn seabios_ipxe_rom_boots_the_payload_from_dnsmasq() {
    if !require(
        "seabios_ipxe_rom_boots_the_payload_from_dnsmasq",
        &[PROGRAMS, &["dnsmasq"]].concat(),
    ) {
        return;
    }
    pxe_boot_from_dnsmasq(Firmware::Bios);
}

#[test]
fn ovmf_uefi_pxe_boots_snponly_then_the_payload_from_dnsmasq() {
    if !require(
        "ovmf_uefi_pxe_boots_snponly_then_the_payload_from_dnsmasq",
        &[PROGRAMS, &["dnsmasq"]].concat(),
    ) {
        return;
    }
    pxe_boot_from_dnsmasq(Firmware::UefiPxe);
}

#[test]
fn ovmf_uefi_http_boot_loads_snponly_over_http_then_the_payload() {
    if !require(
        "ovmf_uefi_http_boot_loads_snponly_over_http_then_the_payload",
        &[PROGRAMS, &["dnsmasq"]].concat(),
    ) {
        return;
    }
    pxe_boot_from_dnsmasq(Firmware::UefiHttp);
}
