//! Diskless machines: real firmware boots into an OCI image's own root, served by
//! `stampede boot --root oci:LAYOUT:TAG` in a namespace lab.
//!
//! The image (`stampede_lab::root_image`) is a real two-layer OCI layout made with umoci:
//! busybox, Debian's kernel with the modules a root needs, and an `/sbin/init` that prints what
//! it sees and powers off. A machine passes only when that init, as PID 1 of the image, prints
//! its marker: the node agent fetched the signed manifest, verified every chunk, mounted the
//! erofs root under a RAM overlay and switched into it.
//!
//! - SeaBIOS + iPXE and OVMF: two machines boot the same image at once; each writes a file on
//!   `/`, and a reboot finds it gone (the overlay lives in RAM).
//! - A chunk corrupted in the store after the root was built is caught on the machine
//!   (`root_failed`, never switched into), and the boot goes through once the chunk is right.
use std::{
    fs,
    time::{Duration, Instant},
};

use stampede_lab::{
    qemu::{BootLab, Firmware, MachineSpec, QemuMachine, WorkDir},
    require,
    root_image::{self, ROOT_LINE_PREFIX},
    wait_for,
};

mod support;

use support::lab_appliance::{Appliance, BENCH_API, BENCH_TOKEN};

/// A diskless boot under TCG: firmware, kernel, the agent's DHCP and the root's chunks.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The root is built before `ready` (pull, flatten, erofs, initramfs).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

const PROGRAMS: &[&str] = &[
    "qemu-system-x86_64",
    "umoci",
    "skopeo",
    "depmod",
    "apt-get",
    "dpkg-deb",
];

fn image() -> root_image::SmallImage {
    root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"))
}

fn dhcp_range(lab: &BootLab) -> String {
    let (low, high) = lab.dhcp_range();
    format!("{low}-{high}")
}

/// `stampede boot --root` on the lab, with the API on, up and ready.
fn start(lab: &BootLab, work: &WorkDir, marker: &str) -> Appliance {
    let image = image();
    let args: Vec<String> = [
        "boot",
        "--iface",
        &lab.server_if,
        "--dhcp-range",
        &dhcp_range(lab),
        "--xdp-mode",
        "off",
        "--cmdline",
        &format!("console=ttyS0 panic=-1 stampede.marker={marker}"),
        "--root",
        &image.source(),
    ]
    .map(str::to_owned)
    .into();
    Appliance::start_waiting(lab, work, &args, Some(BENCH_API), READY_TIMEOUT)
}

/// The `root ...` line `stampede boot --root` prints before `ready`.
fn root_line(appliance: &Appliance) -> String {
    let out = fs::read_to_string(&appliance.stdout).unwrap_or_default();
    out.lines()
        .find(|l| l.starts_with("root "))
        .unwrap_or_else(|| panic!("no root line in:\n{}", appliance.log()))
        .to_owned()
}

/// Lines the image's init printed.
fn root_lines(machine: &QemuMachine) -> Vec<String> {
    machine
        .console()
        .lines()
        .filter_map(|l| {
            l.find(ROOT_LINE_PREFIX)
                .map(|at| l[at + ROOT_LINE_PREFIX.len()..].trim().to_owned())
        })
        .collect()
}

/// Waits for the machine's marker (`<marker>-pid1`: the image's init is PID 1) and checks what
/// the init saw: the flattened image, a fresh overlay, a write that worked.
fn assert_diskless_boot(
    machine: &mut QemuMachine,
    appliance: &Appliance,
    marker: &str,
    what: &str,
) {
    let seen = machine.wait_for_marker(BOOT_TIMEOUT).unwrap_or_else(|err| {
        panic!(
            "{what}: no marker: {err}\n{}\n--- stampede log ---\n{}",
            machine.console_tail(40),
            appliance.log()
        )
    });
    assert_eq!(
        seen.value,
        format!("{marker}-pid1"),
        "{what}: the marker must come from the image's init as PID 1\n{}",
        machine.console_tail(40)
    );
    let lines = root_lines(machine);
    let first = lines.first().map(String::as_str).unwrap_or_default();
    assert!(
        first.starts_with("pid=1 image=small-v2 "),
        "{what}: layer 2 changed /etc/stampede-image: {lines:?}"
    );
    assert!(
        first.contains("machine_id=") && !first.ends_with("machine_id="),
        "{what}: the node wrote /etc/machine-id: {lines:?}"
    );
    // The node agent holds IPv6 off while it fetches (netconf::Ipv6Pause) and gives it back.
    assert!(
        lines.iter().any(|l| l == "ipv6_off=0"),
        "{what}: the image's init must find IPv6 as the kernel had it: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l == "whiteout-ignored"),
        "{what}: layer 2's whiteout must delete the file: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "fresh") && lines.iter().any(|l| l == "wrote"),
        "{what}: a fresh, writable root: {lines:?}"
    );
    eprintln!(
        "{what}: power-on to the image's marker {:.1} s",
        seen.elapsed_since_start.as_secs_f64()
    );
}

/// The machine's boot session as `stampede ctl sessions MAC` shows it.
fn session(lab: &BootLab, mac: &str) -> String {
    let url = format!("http://{BENCH_API}");
    let out = lab
        .server
        .run(
            support::appliance::STAMPEDE,
            &[
                "ctl",
                "--url",
                &url,
                "--token",
                BENCH_TOKEN,
                "sessions",
                mac,
            ],
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("ctl sessions: {e}"));
    format!("{}{}", out.stdout, out.stderr)
}

fn assert_session_has_root_steps(lab: &BootLab, mac: &str, what: &str) {
    let shown = wait_for(Duration::from_secs(10), || {
        let text = session(lab, mac);
        [
            "root_manifest",
            "root_chunks",
            "root_mounted",
            "switch_root",
        ]
        .iter()
        .all(|s| text.contains(s))
        .then_some(text)
    });
    assert!(
        shown.is_some(),
        "{what}: the session shows the diskless steps:\n{}",
        session(lab, mac)
    );
}

/// Two machines (SeaBIOS and OVMF) boot the same image at once, then the first boots again and
/// finds nothing of what it wrote.
#[test]
fn seabios_and_ovmf_boot_diskless_into_one_oci_image_and_a_reboot_is_fresh() {
    let test = stampede_lab::test_name!();
    if !require(test, PROGRAMS) {
        return;
    }
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new("root-two").expect("work dir");
    let marker = format!("diskless-{}", std::process::id());
    let appliance = start(&lab, &work, &marker);
    let line = root_line(&appliance);
    assert!(line.contains(" chunks="), "{line}");

    let bios_tap = lab.add_tap().expect("tap");
    let uefi_tap = lab.add_tap().expect("tap");
    let bios_spec = MachineSpec::network(Firmware::Bios, &bios_tap, work.join("bios.log"));
    let uefi_spec = MachineSpec::network(Firmware::UefiPxe, &uefi_tap, work.join("uefi.log"));
    let bios_mac = bios_spec.mac.clone();
    let uefi_mac = uefi_spec.mac.clone();
    {
        let _slots = (
            stampede_lab::qemu::machine_slot(),
            stampede_lab::qemu::machine_slot(),
        );
        let mut bios = lab.start_machine(bios_spec.clone()).expect("qemu starts");
        let mut uefi = lab.start_machine(uefi_spec).expect("qemu starts");
        assert_diskless_boot(&mut bios, &appliance, &marker, "seabios");
        assert_diskless_boot(&mut uefi, &appliance, &marker, "ovmf");
        // The root has a torrent: both joined its swarm (each other and the appliance's web
        // seed), every piece checked against the signed manifest.
        for (machine, what) in [(&bios, "seabios"), (&uefi, "ovmf")] {
            let console = machine.console();
            let fetched = console
                .lines()
                .find(|l| l.contains("root fetched by the swarm: "))
                .unwrap_or_else(|| panic!("{what}: not fetched by the swarm:\n{console}"));
            eprintln!("{what}: {fetched}");
        }
    }
    assert_session_has_root_steps(&lab, &bios_mac, "seabios");
    assert_session_has_root_steps(&lab, &uefi_mac, "ovmf");

    // The same machine again: what it wrote on / lived in RAM.
    let reboot_spec = MachineSpec {
        serial_log: work.join("bios-again.log"),
        ..bios_spec
    };
    {
        let _slot = stampede_lab::qemu::machine_slot();
        let mut again = lab.start_machine(reboot_spec).expect("qemu starts");
        assert_diskless_boot(&mut again, &appliance, &marker, "seabios again");
        assert!(
            !root_lines(&again)
                .iter()
                .any(|l| l.starts_with("persisted")),
            "nothing written survives a reboot: {:?}",
            root_lines(&again)
        );
    }
    let stats = appliance.stop();
    assert!(
        stats.get("http_sendfile_bytes").copied().unwrap_or(0) > 0,
        "the root's chunks went out by sendfile: {stats:?}"
    );
}

/// A chunk rewritten in the store after the build (and the same bytes of the whole image, which
/// the machine reads first): the machine fetches it, finds its SHA-256 wrong, reports
/// `root_failed` and never switches into the root; once the chunk is right again, its retry
/// boots.
#[test]
fn a_chunk_corrupted_in_the_store_is_caught_on_the_machine_and_never_used() {
    let test = stampede_lab::test_name!();
    if !require(test, PROGRAMS) {
        return;
    }
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new("root-corrupt").expect("work dir");
    let marker = format!("corrupt-{}", std::process::id());
    let appliance = start(&lab, &work, &marker);
    // The test hook: the served copy of the root's first chunk, changed by one byte.
    let manifest_dir = work.join("roots/serve/roots");
    let id = fs::read_dir(&manifest_dir)
        .expect("roots dir")
        .flatten()
        .next()
        .expect("a built root")
        .file_name();
    let root_json =
        fs::read_to_string(manifest_dir.join(&id).join("root.json")).expect("root.json");
    let first_chunk = root_json
        .split("\"sha256\": \"")
        .nth(1)
        .and_then(|r| r.get(..64))
        .expect("a chunk digest")
        .to_owned();
    let chunk_path = work.join("roots/serve/chunks").join(&first_chunk);
    let good = fs::read(&chunk_path).expect("chunk");
    let mut bad = good.clone();
    bad[100] ^= 0x40;
    fs::write(&chunk_path, &bad).expect("corrupt the chunk");
    // The machine reads runs of chunks from the whole image first (one Range each), falling
    // back to the chunk's own URL: the same byte of the first chunk, at the same offset of the
    // image, changed in place (the file keeps its size, as a bit flip on disk would).
    let image_path = manifest_dir.join(&id).join("image");
    let set_image_byte = |byte: u8| {
        use std::os::unix::fs::FileExt as _;
        fs::OpenOptions::new()
            .write(true)
            .open(&image_path)
            .and_then(|f| f.write_all_at(&[byte], 100))
            .expect("write the image's byte 100");
    };
    assert_eq!(
        fs::read(&image_path)
            .expect("the root's image")
            .get(..good.len()),
        Some(&good[..]),
        "the image starts with its first chunk"
    );
    set_image_byte(bad[100]);

    let tap = lab.add_tap().expect("tap");
    let spec = MachineSpec::network(Firmware::Bios, &tap, work.join("console.log"));
    let mac = spec.mac.clone();
    let _slot = stampede_lab::qemu::machine_slot();
    let mut machine = lab.start_machine(spec).expect("qemu starts");
    let caught = wait_for(BOOT_TIMEOUT, || {
        let console = machine.console();
        console.contains(&first_chunk[..16]).then_some(console)
    });
    let console = caught.unwrap_or_else(|| {
        panic!(
            "the machine must name the corrupt chunk\n{}\n--- stampede log ---\n{}",
            machine.console_tail(40),
            appliance.log()
        )
    });
    assert!(
        !console.contains(ROOT_LINE_PREFIX),
        "never switched into a root with a corrupt chunk:\n{console}"
    );
    let reported = wait_for(Duration::from_secs(60), || {
        session(&lab, &mac).contains("root_failed").then_some(())
    });
    assert!(
        reported.is_some(),
        "the failure is an event of the machine's session:\n{}",
        session(&lab, &mac)
    );
    // The store is right again: the agent's next attempt boots.
    let fixed_at = Instant::now();
    fs::write(&chunk_path, &good).expect("restore the chunk");
    set_image_byte(good[100]);
    assert_diskless_boot(&mut machine, &appliance, &marker, "after the fix");
    let console = machine.console();
    // The root has a torrent, so the agent joins its swarm first; alone in it, it gets every
    // piece from the appliance's web seed, by Range on the image as the plain HTTP path does.
    let assembled = console
        .lines()
        .find(|l| l.contains("root assembled:") || l.contains("root fetched by the swarm:"))
        .unwrap_or_default();
    assert!(
        (assembled.contains(" by range in ") && !assembled.contains(": 0 by range"))
            || (assembled.contains("root fetched by the swarm:")
                && !assembled.contains(" 0 from the appliance")),
        "the chunks came by range from the image: {assembled:?}"
    );
    eprintln!(
        "booted {:.1} s after the chunk was restored",
        fixed_at.elapsed().as_secs_f64()
    );
    drop(machine);
    appliance.stop();
}

/// `stampede boot --root` with what cannot make a root: it stops before serving, saying why.
fn refused(args: &[&str]) -> String {
    let work = tempfile::tempdir().expect("temp dir");
    let state = work.path().join("state.redb");
    let out = std::process::Command::new(support::appliance::STAMPEDE)
        .args(["boot", "--iface", "lo", "--api", "off", "--xdp-mode", "off"])
        .arg("--state")
        .arg(&state)
        .args(args)
        .output()
        .expect("stampede runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "accepted {args:?}:\n{text}");
    assert!(
        !text.contains("ready "),
        "never ready without a root:\n{text}"
    );
    text
}

/// A kernel given after `--root` must have its modules in the image; the refusal names its
/// release. A missing image and an unknown transport are refused by name too.
#[test]
fn a_root_that_cannot_boot_is_refused_before_serving() {
    let test = stampede_lab::test_name!();
    if !require(test, PROGRAMS) {
        return;
    }
    let image = image();
    // A bzImage header whose version string names a release the image has no modules for.
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel = dir.path().join("vmlinuz-other");
    let mut bytes = vec![0u8; 0x1000];
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
    bytes[0x500..0x516].copy_from_slice(b"9.9.9-other-amd64 (x)\0");
    fs::write(&kernel, &bytes).expect("write kernel");
    let text = refused(&[
        "--root",
        &image.source(),
        kernel.to_str().expect("utf-8 path"),
    ]);
    assert!(
        text.contains("9.9.9-other-amd64") && text.contains("modules are not in the image"),
        "{text}"
    );

    let missing = dir.path().join("no-such-layout");
    let text = refused(&["--root", &format!("oci:{}:small", missing.display())]);
    assert!(text.contains("no-such-layout"), "{text}");

    let text = refused(&["--root", "ftp://example.invalid/image"]);
    assert!(text.contains("ftp://example.invalid/image"), "{text}");

    let text = refused(&[
        "--root",
        &image.source(),
        kernel.to_str().expect("utf-8 path"),
        kernel.to_str().expect("utf-8 path"),
    ]);
    assert!(text.contains("no INITRD"), "{text}");
}

/// A real distribution's root: Debian 12 minbase with systemd as init (debootstrap, packed with
/// umoci, `stampede_lab::debian_root`), booted diskless by SeaBIOS through `stampede boot
/// --root` with the image's own kernel. The marker comes from a systemd unit once
/// `multi-user.target` is reached: systemd ran as PID 1 of the image, after the node agent's
/// `switch_root`, and brought the system up.
#[test]
fn a_debian_root_with_systemd_boots_diskless_to_multi_user() {
    let test = stampede_lab::test_name!();
    let mut programs = PROGRAMS.to_vec();
    programs.push("debootstrap");
    if !require(test, &programs) {
        return;
    }
    let root =
        stampede_lab::debian_root::debian_root().unwrap_or_else(|e| panic!("debian root: {e}"));
    let mut lab = BootLab::new().expect("boot lab");
    let work = WorkDir::new("root-debian").expect("work dir");
    let marker = format!("debian-{}", std::process::id());
    let args: Vec<String> = [
        "boot",
        "--iface",
        &lab.server_if,
        "--dhcp-range",
        &dhcp_range(&lab),
        "--xdp-mode",
        "off",
        "--cmdline",
        &format!("console=ttyS0 panic=-1 stampede.marker={marker}"),
        "--root",
        &root.source(),
    ]
    .map(str::to_owned)
    .into();
    let appliance = Appliance::start_waiting(&lab, &work, &args, Some(BENCH_API), READY_TIMEOUT);
    let line = root_line(&appliance);
    assert!(
        line.contains(&format!("kernel={}", root.kernel_release)),
        "the image's own kernel: {line}"
    );
    let tap = lab.add_tap().expect("tap");
    let mut spec = MachineSpec::network(Firmware::Bios, &tap, work.join("debian.log"));
    // The root (about 550 MiB) lives in the machine's RAM, under a RAM overlay.
    spec.memory_mb = 2048;
    let mac = spec.mac.clone();
    let _slot = stampede_lab::qemu::machine_slot();
    let mut machine = lab.start_machine(spec).expect("qemu starts");
    let seen = machine
        .wait_for_marker(Duration::from_secs(420))
        .unwrap_or_else(|err| {
            panic!(
                "no marker from systemd: {err}\n{}\n--- stampede log ---\n{}",
                machine.console_tail(60),
                appliance.log()
            )
        });
    assert_eq!(seen.value, marker, "{}", machine.console_tail(40));
    let console = machine.console();
    let report = console
        .lines()
        .find(|l| l.contains("STAMPEDE-ROOT image=debian-minbase"))
        .unwrap_or_else(|| panic!("no image report:\n{}", machine.console_tail(40)));
    assert!(report.contains("pid1=systemd"), "{report}");
    assert!(
        report.contains("machine_id=") && !report.trim_end().ends_with("machine_id="),
        "the node agent wrote /etc/machine-id: {report}"
    );
    eprintln!(
        "debian: power-on to multi-user.target {:.1} s",
        seen.elapsed_since_start.as_secs_f64()
    );
    assert_session_has_root_steps(&lab, &mac, "debian");
}

/// Benchmark, not a test (`--ignored`): power-on to marker of one SeaBIOS machine (iPXE ROM,
/// e1000, 512 MiB), the small image's kernel either way: diskless (`stampede boot --root`, the
/// node agent fetching and verifying the root) against kernel + busybox initramfs (`stampede
/// boot KERNEL INITRD`), alternating, one machine at a time, each in a fresh lab with IPv6 on and
/// router advertisements answered (iPXE's IPv6 wait out of both). `BOOT_TIME_ROUNDS` (default 3)
/// rounds; prints each boot, the medians and their ratio.
///
/// `cargo test --test root_lab diskless_boot_time -- --ignored --nocapture --test-threads 1`
#[test]
#[ignore = "benchmark: boots 2 machines per round one after the other (~1 min per round)"]
fn diskless_boot_time_against_kernel_and_initrd() {
    if !require!(PROGRAMS) {
        return;
    }
    let rounds: usize = std::env::var("BOOT_TIME_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let payload = stampede_lab::guest::Payload::prepare().unwrap_or_else(|e| panic!("{e}"));
    let image = image();
    let boot = |diskless: bool, round: usize| -> f64 {
        let mut lab = BootLab::new().expect("boot lab");
        for key in [
            format!("net.ipv6.conf.{}.accept_dad", lab.server_if),
            "net.ipv6.conf.all.disable_ipv6".to_owned(),
            format!("net.ipv6.conf.{}.disable_ipv6", lab.server_if),
        ] {
            lab.server.sysctl(&key, "0").expect("IPv6 on the server");
        }
        let kind = if diskless { "diskless" } else { "initrd" };
        let work = WorkDir::new(&format!("bt-{kind}-{round}")).expect("work dir");
        let marker = format!("bt-{kind}-{round}-{}", std::process::id());
        let mut args: Vec<String> = [
            "boot",
            "--iface",
            &lab.server_if,
            "--dhcp-range",
            &dhcp_range(&lab),
            "--xdp-mode",
            "off",
            "--router-advertisements",
            "auto",
            "--cmdline",
            &format!(
                "console=ttyS0 panic=-1 stampede.marker={marker}{}",
                if std::env::var_os("BOOT_TIME_CONSOLE").is_some() {
                    " stampede.debug"
                } else {
                    ""
                }
            ),
        ]
        .map(str::to_owned)
        .into();
        if diskless {
            args.extend(["--root".to_owned(), image.source()]);
        } else {
            args.extend([
                payload.kernel.display().to_string(),
                payload.initrd.display().to_string(),
            ]);
        }
        let appliance =
            Appliance::start_waiting(&lab, &work, &args, Some(BENCH_API), READY_TIMEOUT);
        let tap = lab.add_tap().expect("tap");
        let spec = MachineSpec::network(Firmware::Bios, &tap, work.join("machine.log"));
        let _slot = stampede_lab::qemu::machine_slot();
        let mut machine = lab.start_machine(spec).expect("qemu starts");
        let seen = machine.wait_for_marker(BOOT_TIMEOUT).unwrap_or_else(|err| {
            panic!(
                "{kind}: {err}\n{}\n{}",
                machine.console_tail(30),
                appliance.log()
            )
        });
        assert!(seen.value.starts_with(&marker), "{kind}: {}", seen.value);
        let secs = seen.elapsed_since_start.as_secs_f64();
        eprintln!("round {round}: {kind}: power-on to marker {secs:.1} s");
        if diskless && std::env::var_os("BOOT_TIME_CONSOLE").is_some() {
            // Where the diskless seconds go: the kernel's and the node agent's lines.
            for line in machine.console().lines().filter(|l| {
                l.contains("Run /init") || l.contains("stampede") || l.contains("root ")
            }) {
                eprintln!("    {line}");
            }
            for line in appliance.log().lines().filter(|l| l.contains("dhcp")) {
                eprintln!("  | {line}");
            }
        }
        drop(machine);
        appliance.stop();
        secs
    };
    let (mut initrd, mut diskless) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternating, and the order flips each round, so drift on a shared machine is spread.
        if round % 2 == 1 {
            initrd.push(boot(false, round));
            diskless.push(boot(true, round));
        } else {
            diskless.push(boot(true, round));
            initrd.push(boot(false, round));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mi, md) = (median(&mut initrd), median(&mut diskless));
    eprintln!(
        "\n| boot | runs (s) | median |\n|---|---|---|\n| kernel + initramfs | {initrd:.1?} | \
         {mi:.1} s |\n| diskless | {diskless:.1?} | {md:.1} s |\n\ndiskless / kernel+initrd: \
         {:.2}x",
        md / mi
    );
}
