//! `cargo xtask setup`: installs what building and testing Stampede needs, idempotently.
//!
//! When everything is present it only asks dpkg, rustup and bpf-linker what they have (a couple
//! of seconds). When something is missing it installs it; when it cannot, it says exactly what
//! and why.
use std::process::Command;

use anyhow::{Context as _, bail};

/// Debian packages, each with the reason it is needed.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links eBPF objects with LLVM 22"),
    (
        "libpolly-22-dev",
        "LLVM 22's static libraries reference Polly",
    ),
    ("libzstd-dev", "bpf-linker links LLVM, which needs zstd"),
    ("zlib1g-dev", "bpf-linker links LLVM, which needs zlib"),
    (
        "iproute2",
        "the namespace lab (ip netns, veth, bridge, tuntap)",
    ),
    ("procps", "sysctl inside lab namespaces"),
    ("iputils-ping", "lab self-test: reachability across a veth"),
    (
        "busybox-static",
        "udhcpc, a real DHCP client, in tests and the demo",
    ),
    ("curl", "a real HTTP and TFTP client in tests and the demo"),
    ("isc-dhcp-client", "dhclient, a second real DHCP client"),
    (
        "tftp-hpa",
        "a TFTP client that sends no options (512-byte lock-step)",
    ),
    ("atftp", "a TFTP client with blksize, tsize and windowsize"),
    (
        "ethtool",
        "turns off veth checksum offload so lab frames carry real UDP checksums (AF_XDP tests)",
    ),
    (
        "dnsmasq-base",
        "the LAN's own DHCP server beside ProxyDHCP; the peer in firmware labs",
    ),
    (
        "tcpdump",
        "captures what reaches a test machine's interface",
    ),
    (
        "ipxe",
        "undionly.kpxe and snponly.efi, the iPXE builds handed to firmware",
    ),
    (
        "qemu-system-x86",
        "real firmware (SeaBIOS, OVMF) booting in the lab",
    ),
    ("seabios", "QEMU's BIOS"),
    ("ipxe-qemu", "the iPXE option ROM of QEMU's NICs"),
    ("ovmf", "UEFI firmware for QEMU"),
    (
        "nginx",
        "the HTTP peer in `cargo xtask bench` (and the HTTP server benchmark)",
    ),
    (
        "iperf3",
        "`cargo xtask bench` measures the lab link's ceiling with it",
    ),
    (
        "util-linux",
        "prlimit: the bench raises dnsmasq's open-file limit; setpriv: the service test",
    ),
    (
        "binutils",
        "strip and objdump for `cargo xtask package` (the Debian package)",
    ),
    (
        "wrk",
        "`cargo xtask bench http`: an independent HTTP load generator (1,000 connections)",
    ),
    (
        "kea-admin",
        "perfdhcp, Kea's DHCP load generator, in `cargo xtask bench dhcp` and its test",
    ),
    (
        "tftpd-hpa",
        "in.tftpd, a TFTP peer in `cargo xtask bench tftp` (its service is not started)",
    ),
    (
        "libpcre2-8-0",
        "atftpd (extracted beside tftpd-hpa, which conflicts with its package) links it",
    ),
    (
        "libwrap0",
        "atftpd (extracted beside tftpd-hpa, which conflicts with its package) links it",
    ),
    (
        "python3-venv",
        "the virtualenv schemathesis is installed into",
    ),
    ("cpio", "initramfs archives for the lab's tiny Linux"),
    (
        "kmod",
        "depmod: modules.dep for the test images' kernel modules",
    ),
    (
        "skopeo",
        "copies test images between OCI layouts, archives and the registry",
    ),
    (
        "umoci",
        "builds OCI image layouts for the diskless-root tests",
    ),
    (
        "docker-registry",
        "a real OCI distribution registry for the import tests (its service is not started)",
    ),
    (
        "apache2-utils",
        "htpasswd: bcrypt credentials for the test registry",
    ),
    (
        "erofs-utils",
        "fsck.erofs checks the root images Stampede writes; mkfs.erofs is measured against them",
    ),
    (
        "squashfs-tools",
        "mksquashfs, measured against erofs for root images",
    ),
    (
        "debootstrap",
        "a real Debian root (minbase) for the demo and the root benchmark",
    ),
    (
        "aria2",
        "aria2c, a real BitTorrent client (v1) fetching roots from the appliance's swarm",
    ),
    (
        "python3-libtorrent",
        "libtorrent (a BitTorrent v2 implementation) checks the roots' v2 hashes and piece layers",
    ),
];

/// schemathesis checks the OpenAPI document against the real server's answers
/// (tests/control_api_lab.rs). 4.32.5 runs on Debian 12's Python 3.11.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Its virtualenv, outside the repository so every worktree and CI clone shares one install.
/// tests/control_api_lab.rs looks for `bin/schemathesis` here.
const TOOLS_VENV: &str = "/opt/stampede-tools/venv";

/// cargo-fuzz release used for the fuzz targets in `fuzz/` (builds with stable 1.95).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// bpf-linker release known to build against Debian's LLVM 22 with this machine's stable Rust.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    debian_packages()?;
    extracted_packages()?;
    rust_toolchains()?;
    bpf_linker()?;
    cargo_fuzz()?;
    schemathesis()?;
    eprintln!("xtask: setup complete in {:.1?}", start.elapsed());
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running `{program} {}`", args.join(" ")))
}

fn debian_packages() -> anyhow::Result<()> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
    let mut args = vec!["-W", "-f", "${Package} ${db:Status-Status}\n"];
    args.extend(&names);
    // dpkg-query exits non-zero when some package is unknown to it; the output still lists the
    // known ones, which is all we need.
    let listing = output("dpkg-query", &args)?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            !listing
                .lines()
                .any(|line| line == format!("{name} installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for name in &missing {
        let why = DEBIAN_PACKAGES
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, w)| *w);
        eprintln!("xtask: setup: missing Debian package {name} ({why})");
    }
    if !nix_is_root() {
        bail!(
            "installing Debian packages needs root; run as root or install them yourself: \
             apt-get install -y {}",
            missing.join(" ")
        );
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    crate::run(update).context("apt-get update failed: is a Debian mirror reachable?")?;
    // Packages with a service (nginx, tftpd-hpa) must not start it on the host: the lab runs its own
    // copies in namespaces. policy-rc.d (exit 101) tells invoke-rc.d not to start anything
    // while we install; it is removed afterwards unless it was already there.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no services during install\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let result =
        crate::run(install).with_context(|| format!("apt-get install {}", missing.join(" ")));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// Debian packages that conflict with an installed one (atftpd with tftpd-hpa: both ship a
/// TFTP service) are unpacked with `dpkg -x` into their own directory under
/// `/opt/stampede-tools`, never installed: nothing of theirs runs unless the bench starts it.
/// (package, the binary inside the package, why)
const EXTRACTED_PACKAGES: &[(&str, &str, &str)] = &[(
    "atftpd",
    "usr/sbin/atftpd",
    "a TFTP peer with windowsize (RFC 7440) in `cargo xtask bench tftp`",
)];

/// Where [`EXTRACTED_PACKAGES`] are unpacked: `<dir>/<package>/<binary>`.
pub const EXTRACTED_DIR: &str = "/opt/stampede-tools";

fn extracted_packages() -> anyhow::Result<()> {
    for (package, binary, why) in EXTRACTED_PACKAGES {
        let dir = std::path::Path::new(EXTRACTED_DIR).join(package);
        if dir.join(binary).exists() {
            continue;
        }
        eprintln!(
            "xtask: setup: unpacking Debian's {package} into {} ({why})",
            dir.display()
        );
        let scratch = std::env::temp_dir().join(format!("stampede-setup-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let mut download = Command::new("apt-get");
        // The scratch directory is root's: fetch as root rather than as `_apt`.
        download
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(&scratch);
        let shown = format!("apt-get download {package}");
        let status = download.status().with_context(|| shown.clone())?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&scratch);
            bail!("{shown} failed ({status}): is a Debian mirror reachable?");
        }
        let deb = std::fs::read_dir(&scratch)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("{shown} left no .deb"))?;
        std::fs::create_dir_all(&dir)?;
        let mut extract = Command::new("dpkg");
        extract.arg("-x").arg(&deb).arg(&dir);
        let result = crate::run(extract);
        let _ = std::fs::remove_dir_all(&scratch);
        result?;
        if !dir.join(binary).exists() {
            bail!("{package}'s package has no {binary}");
        }
    }
    Ok(())
}

fn nix_is_root() -> bool {
    output("id", &["-u"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn rust_toolchains() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])
        .context("rustup is needed to manage the nightly toolchain the eBPF build uses")?;
    let toolchains = String::from_utf8_lossy(&toolchains.stdout);
    if !toolchains.lines().any(|l| l.starts_with("nightly-")) {
        eprintln!("xtask: setup: installing the nightly toolchain (the eBPF build needs it)");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        crate::run(install)?;
    }
    ensure_components(
        "nightly",
        &["rust-src"],
        "eBPF programs build core with -Z build-std",
    )?;
    ensure_components(
        "stable",
        &["clippy", "rustfmt"],
        "`cargo xtask test` lints and checks format",
    )?;
    ensure_target(
        "stable",
        NODE_AGENT_TARGET,
        "the node agent is a static binary for the node initramfs",
    )
}

/// The target the node agent (PID 1 of the node initramfs) is built for: static, no libc needed
/// on the node.
pub const NODE_AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

fn ensure_target(toolchain: &str, target: &str, why: &str) -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["target", "list", "--installed", "--toolchain", toolchain],
    )?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("xtask: setup: adding target {target} to {toolchain} ({why})");
    let mut add = Command::new("rustup");
    add.args(["target", "add", "--toolchain", toolchain, target]);
    crate::run(add)
}

fn ensure_components(toolchain: &str, components: &[&str], why: &str) -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", toolchain],
    )?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.split('-').next() == Some(c) || l.starts_with(c))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: setup: adding {} to {toolchain} ({why})",
        missing.join(", ")
    );
    let mut add = Command::new("rustup");
    add.args(["component", "add", "--toolchain", toolchain])
        .args(&missing);
    crate::run(add)
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Ok(out) = output("bpf-linker", &["--version"])
        && String::from_utf8_lossy(&out.stdout).trim() == format!("bpf-linker {BPF_LINKER_VERSION}")
    {
        return Ok(());
    }
    eprintln!(
        "xtask: setup: building bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} \
         (a few minutes, once)"
    );
    let mut install = crate::cargo();
    install
        .args([
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        // Without LLVM_PREFIX the build links against a libLLVM that Debian does not ship.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    crate::run(install).context(
        "bpf-linker could not be built; it needs Debian's llvm-22-dev, libpolly-22-dev, \
         libzstd-dev and zlib1g-dev (installed above) and crates.io",
    )
}

fn cargo_fuzz() -> anyhow::Result<()> {
    if let Ok(out) = output("cargo", &["fuzz", "--version"])
        && String::from_utf8_lossy(&out.stdout).trim() == format!("cargo-fuzz {CARGO_FUZZ_VERSION}")
    {
        return Ok(());
    }
    eprintln!(
        "xtask: setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (the fuzz targets in fuzz/)"
    );
    let mut install = crate::cargo();
    install.args([
        "install",
        "--locked",
        "--force",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    crate::run(install).context("cargo-fuzz could not be installed from crates.io")
}

fn schemathesis() -> anyhow::Result<()> {
    let bin = format!("{TOOLS_VENV}/bin/schemathesis");
    if let Ok(out) = output(&bin, &["--version"])
        && String::from_utf8_lossy(&out.stdout).trim()
            == format!("schemathesis, version {SCHEMATHESIS_VERSION}")
    {
        return Ok(());
    }
    eprintln!(
        "xtask: setup: installing schemathesis {SCHEMATHESIS_VERSION} into {TOOLS_VENV} \
         (checks the OpenAPI document against the server)"
    );
    if !std::path::Path::new(&format!("{TOOLS_VENV}/bin/pip")).exists() {
        let mut venv = Command::new("python3");
        venv.args(["-m", "venv", TOOLS_VENV]);
        crate::run(venv).context("python3 -m venv failed (Debian's python3-venv is needed)")?;
    }
    let mut install = Command::new(format!("{TOOLS_VENV}/bin/pip"));
    install.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
    ]);
    crate::run(install).context("pip could not install schemathesis from PyPI")
}
