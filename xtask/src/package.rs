//! `cargo xtask package`: the Debian package, `target/package/stampede_<version>_<arch>.deb`.
//!
//! Staged as a tree and built with `dpkg-deb --build` (every Debian machine has it) rather than
//! with cargo-deb: the completions and manual pages come from the built binary itself
//! (`stampede completions`, `stampede man`), so something has to run it before any packager
//! sees the files, and the maintainer scripts must not enable or start the unit, which
//! cargo-deb's systemd support does by default.
//!
//! Also compiled into the root crate's tests/package.rs (`#[path]`), which packages the debug
//! binary and installs the result: std and anyhow only.
#![allow(
    dead_code,
    reason = "shared with tests/package.rs, and each side uses a different part"
)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// What the package is made of.
#[derive(Debug)]
pub struct PackageInputs<'a> {
    /// The repository (packaging/, docs/).
    pub workspace: &'a Path,
    /// The `stampede` binary to ship (and to ask for its completions and manual pages).
    pub binary: &'a Path,
    pub version: &'a str,
    /// Where the staging tree and the `.deb` go.
    pub out_dir: &'a Path,
    pub compression: Compression,
}

/// `dpkg-deb`'s compression of the data archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// xz, Debian's default: the release package.
    Xz,
    /// gzip -1: fast, for tests that package a 50 MB debug binary.
    Fast,
}

/// The unit's user, made by postinst.
pub const USER: &str = "stampede";

/// Files the package installs (besides the manual pages), relative to `/`.
pub const BINARY: &str = "usr/bin/stampede";
pub const UNIT: &str = "lib/systemd/system/stampede.service";
pub const CONFIG: &str = "etc/stampede/stampede.toml";
pub const BASH_COMPLETION: &str = "usr/share/bash-completion/completions/stampede";
pub const ZSH_COMPLETION: &str = "usr/share/zsh/vendor-completions/_stampede";
pub const FISH_COMPLETION: &str = "usr/share/fish/vendor_completions.d/stampede.fish";
pub const MAN_DIR: &str = "usr/share/man/man1";
pub const DOC_DIR: &str = "usr/share/doc/stampede";
/// Grafana dashboards (`*.json` in packaging/grafana/).
pub const DASHBOARD_DIR: &str = "usr/share/stampede/grafana";

/// Builds the package; returns the `.deb`'s path.
pub fn build_deb(inputs: &PackageInputs<'_>) -> anyhow::Result<PathBuf> {
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?;
    let arch = arch.trim();
    let name = format!("stampede_{}_{arch}", inputs.version);
    let root = inputs.out_dir.join(&name);
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("removing the old staging tree {}", root.display()))?;
    }

    let binary = root.join(BINARY);
    copy(inputs.binary, &binary, 0o755)?;
    // Debug information is for the build tree; symbols stay for backtraces.
    run(Command::new("strip").arg("--strip-debug").arg(&binary))?;
    let glibc = glibc_needed(&binary)?;

    let ws = inputs.workspace;
    copy(
        &ws.join("packaging/stampede.service"),
        &root.join(UNIT),
        0o644,
    )?;
    copy(
        &ws.join("docs/stampede.example.toml"),
        &root.join(CONFIG),
        0o644,
    )?;
    for (shell, path) in [
        ("bash", BASH_COMPLETION),
        ("zsh", ZSH_COMPLETION),
        ("fish", FISH_COMPLETION),
    ] {
        let script = capture(Command::new(inputs.binary).args(["completions", shell]))?;
        write(&root.join(path), script.as_bytes(), 0o644)?;
    }
    let man = root.join(MAN_DIR);
    run(Command::new(inputs.binary)
        .arg("man")
        .arg("--dir")
        .arg(&man))?;
    for page in read_dir(&man)? {
        set_mode(&page, 0o644)?;
        // -n: no name or time stamp inside, so the same pages give the same bytes.
        run(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    let doc = root.join(DOC_DIR);
    copy(
        &ws.join("docs/operations.md"),
        &doc.join("operations.md"),
        0o644,
    )?;
    write(&doc.join("copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    let dashboards = ws.join("packaging/grafana");
    if dashboards.is_dir() {
        for file in read_dir(&dashboards)? {
            if file.extension().is_some_and(|e| e == "json") {
                let name = file.file_name().context("a file name")?;
                copy(&file, &root.join(DASHBOARD_DIR).join(name), 0o644)?;
            }
        }
    }

    let control = root.join("DEBIAN");
    let installed_kib = disk_usage_kib(&root)?;
    write(
        &control.join("control"),
        control_file(inputs.version, arch, &glibc, installed_kib).as_bytes(),
        0o644,
    )?;
    write(
        &control.join("conffiles"),
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;
    write(&control.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&control.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&control.join("postrm"), POSTRM.as_bytes(), 0o755)?;

    let deb = inputs.out_dir.join(format!("{name}.deb"));
    let mut build = Command::new("dpkg-deb");
    build.arg("--root-owner-group");
    match inputs.compression {
        Compression::Xz => build.args(["-Zxz", "-z6"]),
        Compression::Fast => build.args(["-Zgzip", "-z1"]),
    };
    build.arg("--build").arg(&root).arg(&deb);
    run(&mut build)?;
    Ok(deb)
}

fn control_file(version: &str, arch: &str, glibc: &str, installed_kib: u64) -> String {
    format!(
        "Package: stampede\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: Stampede maintainers <maintainers@stampede.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: adduser, libc6 (>= {glibc}), libgcc-s1\n\
         Recommends: ipxe\n\
         Section: net\n\
         Priority: optional\n\
         Description: network-boot appliance: DHCP/PXE, TFTP and HTTP boot for whole racks\n \
         Stampede boots a rack or a data hall at once: DHCP/PXE, TFTP and HTTP boot served by\n \
         io_uring workers, an XDP classifier at the NIC, diskless roots from OCI images and a\n \
         control API that follows every machine's boot.\n \
         .\n \
         The stampede.service unit is installed but not enabled: edit\n \
         /etc/stampede/stampede.toml, then `systemctl enable --now stampede`.\n"
    )
}

/// The highest `GLIBC_x.y` symbol version the binary needs.
fn glibc_needed(binary: &Path) -> anyhow::Result<String> {
    let symbols = capture(Command::new("objdump").arg("-T").arg(binary))?;
    let mut versions: Vec<Vec<u32>> = symbols
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| v.split('.').map(|n| n.parse().ok()).collect())
        .collect();
    versions.sort();
    let newest = versions
        .last()
        .context("the binary names no GLIBC symbol version")?;
    Ok(newest
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

/// Creates the user the unit runs as. The unit is neither enabled nor started: an appliance
/// that answers DHCP on the wrong network hands out addresses there, so the operator starts it
/// once the configuration names the boot network.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd stampede >/dev/null; then
        adduser --quiet --system --group --no-create-home --home /var/lib/stampede \
            --gecos "Stampede network-boot appliance" stampede
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -z "$2" ]; then
            echo "stampede: edit /etc/stampede/stampede.toml, then: systemctl enable --now stampede"
        else
            # An upgrade: a running appliance gets the new binary.
            systemctl try-restart stampede.service >/dev/null || true
        fi
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop stampede.service >/dev/null 2>&1 || true
    fi
    if command -v systemctl >/dev/null; then
        systemctl disable stampede.service >/dev/null 2>&1 || true
    fi
fi
exit 0
"#;

/// Purge removes the state (leases, tokens, audit log, images, roots); the user stays, as
/// Debian's policy has it (files it owned may be left elsewhere).
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/stampede
fi
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
"#;

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: stampede

Files: *
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
";

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

/// `Installed-Size`: KiB of everything but DEBIAN/.
fn disk_usage_kib(root: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for path in read_dir(&dir)? {
            if path == root.join("DEBIAN") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                pending.push(path);
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok(bytes.div_ceil(1024))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    succeed(command).map(drop)
}

/// `command`'s standard output, as text.
fn capture(command: &mut Command) -> anyhow::Result<String> {
    let (shown, stdout) = succeed(command)?;
    String::from_utf8(stdout).with_context(|| format!("{shown}: output is not UTF-8"))
}

/// Runs `command`: how it reads and its standard output, or its standard error in the error
/// when it fails.
fn succeed(command: &mut Command) -> anyhow::Result<(String, Vec<u8>)> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((shown, out.stdout))
}
