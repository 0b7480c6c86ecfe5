//! A real Debian root for the demo and the benchmarks: `debootstrap --variant=minbase` of
//! bookworm with systemd as init, Debian's kernel package (the one the lab boots) with its whole
//! module tree, and a unit that reports on the console once `multi-user.target` is reached and
//! powers off. Packed as a one-layer OCI image layout with `umoci` under [`DEBIAN_TAG`].
//!
//! Built once into the lab cache and reused (a few minutes and about 100 MB of downloads the
//! first time, from the Debian mirror this machine's apt already uses):
//!
//! ```text
//! <lab-cache>/debian-root-<stamp>/bundle/rootfs   the debootstrap tree (what the layer holds)
//! <lab-cache>/debian-root-<stamp>/layout          the OCI image layout, tag "debian"
//! ```
//!
//! `<stamp>` hashes everything the build depends on (suite, packages, mirror, kernel package,
//! the marker unit), so a changed input builds a new root beside the old one. The directory is
//! built under a temporary name and renamed into place, so a crashed or concurrent build never
//! leaves a half-made root where a reader looks.
//!
//! On the console of a machine that boots it:
//!
//! ```text
//! STAMPEDE-ROOT image=debian-minbase pid1=systemd hostname=.. machine_id=..
//! STAMPEDE-MARKER <stampede.marker>
//! ```
//!
//! The root password is locked (`*` in `/etc/shadow`, as debootstrap leaves it); there is no
//! network configuration: the node agent configures the boot NIC before `switch_root`.
use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{
    LabError, Output,
    guest::{PayloadError, cache_dir, kernel_package},
    next_seq, run_with_timeout,
};

/// The image's tag in its layout.
pub const DEBIAN_TAG: &str = "debian";

/// The Debian release bootstrapped: the one this machine runs (Debian 12).
pub const SUITE: &str = "bookworm";

/// Packages added to minbase: systemd as PID 1, udev (without it the serial getty waits 90 s for
/// a device unit that never appears), kmod (modules loaded by the root itself).
pub const INCLUDE: &[&str] = &["systemd-sysv", "udev", "kmod"];

/// What the image calls itself in its `STAMPEDE-ROOT` line.
pub const IMAGE_NAME: &str = "debian-minbase";

/// Where the marker script lives in the image.
const MARKER_SCRIPT_PATH: &str = "usr/local/sbin/stampede-marker";
const MARKER_UNIT_NAME: &str = "stampede-marker.service";

/// Prints the image's report and the marker from the kernel command line on the console.
pub const MARKER_SCRIPT: &str = r#"#!/bin/sh
marker=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    stampede.marker=*) marker="${word#stampede.marker=}" ;;
  esac
done
{
  echo "STAMPEDE-ROOT image=debian-minbase pid1=$(cat /proc/1/comm) hostname=$(cat /etc/hostname 2>/dev/null) machine_id=$(cat /etc/machine-id 2>/dev/null)"
  echo "STAMPEDE-MARKER $marker"
} > /dev/console
"#;

/// Runs the marker script once `multi-user.target` is reached, then powers off.
///
/// `DefaultDependencies=no` is what makes `After=multi-user.target` legal for a unit that
/// target wants: a target adds `After=` on the units it wants only when they keep default
/// dependencies (systemd.target(5), "Automatic Dependencies"), which would be an ordering cycle.
/// `FailureAction=` too, so a machine under test never hangs on a failed marker.
pub const MARKER_UNIT: &str = "\
[Unit]
Description=Stampede: report on the console once multi-user.target is reached, then power off
DefaultDependencies=no
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/stampede-marker

[Install]
WantedBy=multi-user.target
";

/// Changes to how the root is made that the stamp must see (bump on any change below).
const BUILD_REVISION: u32 = 1;

/// The Debian root: its OCI layout, the tree it was packed from and its kernel.
#[derive(Debug, Clone)]
pub struct DebianRoot {
    /// `<lab-cache>/debian-root-<stamp>`.
    pub dir: PathBuf,
    /// The OCI image layout, holding the image under [`DEBIAN_TAG`].
    pub layout: PathBuf,
    /// The debootstrap tree the layer was made from (read-only by convention: the layer's bytes).
    pub tree: PathBuf,
    /// `uname -r` of the kernel in `/boot/vmlinuz-<release>` and `/lib/modules/<release>`.
    pub kernel_release: String,
}

impl DebianRoot {
    /// `oci:<layout>:debian`, as `stampede boot --root` takes it.
    pub fn source(&self) -> String {
        format!("oci:{}:{DEBIAN_TAG}", self.layout.display())
    }

    pub fn tag(&self) -> &'static str {
        DEBIAN_TAG
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.tree
            .join(format!("boot/vmlinuz-{}", self.kernel_release))
    }
}

/// Builds the Debian root once into the lab cache (debootstrap and umoci, as root) and returns
/// it. Offline, or without apt lists, the newest root built earlier is returned instead.
pub fn debian_root() -> Result<DebianRoot, PayloadError> {
    static DONE: Mutex<Option<DebianRoot>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(root) = done.as_ref() {
        return Ok(root.clone());
    }
    let (package, mirror) = match (kernel_package(), debian_mirror(SUITE)) {
        (Ok(package), Ok(mirror)) => (package, mirror),
        (Err(err), _) | (_, Err(err)) => return newest_cached().ok_or(err),
    };
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let stamp = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (BUILD_REVISION, SUITE, INCLUDE, &mirror, &package).hash(&mut h);
        (MARKER_SCRIPT, MARKER_UNIT).hash(&mut h);
        h.finish()
    };
    let dir = cache_dir().join(format!("debian-root-{stamp:016x}"));
    if !dir.join("layout/index.json").is_file() {
        let work = cache_dir().join(format!(
            "debian-root-{stamp:016x}.tmp-{}-{}",
            std::process::id(),
            next_seq()
        ));
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = build(&mirror, &package, &release, &work);
        if result.is_ok() {
            // rename(2) is atomic: a concurrent build either finds the finished root or none;
            // if another process won the race, its root is just as good.
            let _ = fs::rename(&work, &dir);
        }
        remove_work(&work)?;
        result?;
    }
    let root = DebianRoot {
        layout: dir.join("layout"),
        tree: dir.join("bundle/rootfs"),
        dir,
        kernel_release: release,
    };
    *done = Some(root.clone());
    Ok(root)
}

fn newest_cached() -> Option<DebianRoot> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(cache_dir())
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("debian-root-") && !n.contains(".tmp-"))
        })
        .filter_map(|dir| {
            let modified = fs::metadata(dir.join("layout/index.json"))
                .ok()?
                .modified()
                .ok()?;
            Some((modified, dir))
        })
        .collect();
    found.sort();
    let (_, dir) = found.pop()?;
    let tree = dir.join("bundle/rootfs");
    let kernel_release = fs::read_dir(tree.join("lib/modules"))
        .ok()?
        .flatten()
        .find_map(|e| e.file_name().to_str().map(str::to_owned))?;
    Some(DebianRoot {
        layout: dir.join("layout"),
        tree,
        dir,
        kernel_release,
    })
}

/// The mirror this machine's apt uses for `suite` (main), from `/etc/apt/sources.list` and
/// `/etc/apt/sources.list.d/` (one-line `.list` and deb822 `.sources` files).
pub fn debian_mirror(suite: &str) -> Result<String, PayloadError> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|path| {
            let text = fs::read_to_string(path).ok()?;
            match path.extension().and_then(|e| e.to_str()) {
                Some("sources") => mirror_in_deb822(&text, suite),
                Some("list") | None => mirror_in_one_line(&text, suite),
                _ => None,
            }
        })
        .next()
        .ok_or_else(|| {
            PayloadError::Lab(LabError::BadName(format!(
                "no Debian mirror for {suite} main in /etc/apt/sources.list or sources.list.d"
            )))
        })
}

/// The URI of the first `deb` line for exactly `suite` with the `main` component.
fn mirror_in_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        // `deb [arch=amd64 signed-by=..] URI SUITE COMPONENTS..`
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        let this_suite = words.next()?;
        let components: Vec<&str> = words.collect();
        (this_suite == suite && components.contains(&"main")).then(|| uri.to_owned())
    })
}

/// The first URI of the first deb822 stanza of type `deb` for exactly `suite` with `main`.
fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (!line.starts_with('#') && key.trim().eq_ignore_ascii_case(name))
                    .then(|| value.trim().to_owned())
            })
        };
        let types = field("Types")?;
        let suites = field("Suites")?;
        let components = field("Components")?;
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        (enabled
            && types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == suite)
            && components.split_whitespace().any(|c| c == "main"))
        .then(|| field("URIs"))
        .flatten()
        .and_then(|uris| uris.split_whitespace().next().map(str::to_owned))
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PayloadError + '_ {
    move |source| PayloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn run(command: Command, timeout: Duration) -> Result<Output, PayloadError> {
    run_with_timeout(command, timeout)
        .and_then(Output::ok)
        .map_err(PayloadError::Lab)
}

fn umoci(args: &[&str], dir: &Path) -> Result<(), PayloadError> {
    let mut command = Command::new("umoci");
    command.args(args).current_dir(dir);
    run(command, Duration::from_secs(900)).map(drop)
}

fn build(mirror: &str, package: &str, release: &str, work: &Path) -> Result<(), PayloadError> {
    let image = format!("layout:{DEBIAN_TAG}");
    umoci(&["init", "--layout", "layout"], work)?;
    umoci(&["new", "--image", &image], work)?;
    umoci(&["unpack", "--image", &image, "bundle"], work)?;
    let root = work.join("bundle/rootfs");

    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .arg("--variant=minbase")
        .arg(format!("--include={}", INCLUDE.join(",")))
        .arg("--components=main")
        .arg(SUITE)
        .arg(&root)
        .arg(mirror);
    let bootstrapped = run(debootstrap, Duration::from_secs(1800));
    // debootstrap mounts /proc and /sys in the target while it installs; a failed run may
    // leave them, and nothing may be deleted through them.
    unmount_below(&root)?;
    bootstrapped?;

    install_kernel(package, release, work, &root)?;
    configure(&root)?;

    umoci(&["repack", "--image", &image, "bundle"], work)?;
    umoci(
        &[
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/sbin/init",
            "--os",
            "linux",
            "--architecture",
            "amd64",
        ],
        work,
    )?;
    umoci(&["gc", "--layout", "layout"], work)?;
    Ok(())
}

/// Debian's kernel package, unpacked whole into the root (`/boot/vmlinuz-<release>`,
/// `/lib/modules/<release>`) with `modules.dep` from depmod. Unpacked rather than installed:
/// installing runs its hooks, which want an initramfs generator and would put a ~30 MiB
/// initrd.img into `/boot` that a Stampede node never boots (its initramfs is the agent's).
fn install_kernel(
    package: &str,
    release: &str,
    work: &Path,
    root: &Path,
) -> Result<(), PayloadError> {
    let debs = work.join("debs");
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let mut download = Command::new("apt-get");
    download
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
        .current_dir(&debs);
    run_with_timeout(download, Duration::from_secs(900))
        .and_then(Output::ok)
        .map_err(|source| PayloadError::Download {
            package: package.to_owned(),
            source,
        })?;
    let deb = fs::read_dir(&debs)
        .map_err(io_err(&debs))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| PayloadError::NoKernelImage {
            package: package.to_owned(),
        })?;
    // --keep-directory-symlink: bookworm's root is merged-/usr (`/lib -> usr/lib`); plain tar
    // would replace that link with a directory holding only the modules.
    let mut unpack = Command::new("sh");
    unpack
        .args([
            "-c",
            r#"dpkg-deb --fsys-tarfile "$1" | tar -x -f - -C "$2" --keep-directory-symlink"#,
            "unpack",
        ])
        .arg(&deb)
        .arg(root);
    run_with_timeout(unpack, Duration::from_secs(600))
        .and_then(Output::ok)
        .map_err(|source| PayloadError::Extract {
            deb: deb.clone(),
            source,
        })?;
    fs::remove_dir_all(&debs).map_err(io_err(&debs))?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(PayloadError::NoKernelImage {
            package: package.to_owned(),
        });
    }
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(root).arg(release);
    run(depmod, Duration::from_secs(300)).map(drop)
}

/// The marker unit, enabled; what debootstrap copied from this machine removed; caches emptied.
fn configure(root: &Path) -> Result<(), PayloadError> {
    let write = |rel: &str, bytes: &[u8], mode: u32| -> Result<(), PayloadError> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::write(&path, bytes).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))
    };
    write(MARKER_SCRIPT_PATH, MARKER_SCRIPT.as_bytes(), 0o755)?;
    write(
        &format!("etc/systemd/system/{MARKER_UNIT_NAME}"),
        MARKER_UNIT.as_bytes(),
        0o644,
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(io_err(&wants))?;
    let link = wants.join(MARKER_UNIT_NAME);
    let _ = fs::remove_file(&link);
    symlink(format!("/etc/systemd/system/{MARKER_UNIT_NAME}"), &link).map_err(io_err(&link))?;
    write("etc/hostname", format!("{IMAGE_NAME}\n").as_bytes(), 0o644)?;
    // Empty: every machine gets its own (the node agent writes one; systemd would make one).
    write("etc/machine-id", b"", 0o444)?;
    for rel in ["var/lib/dbus/machine-id", "etc/resolv.conf"] {
        let _ = fs::remove_file(root.join(rel));
    }
    for rel in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = root.join(rel);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }
    Ok(())
}

/// Unmounts everything mounted at or below `dir`, deepest first (`/proc/self/mountinfo`).
fn unmount_below(dir: &Path) -> Result<(), PayloadError> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let mut umount = Command::new("umount");
        umount.arg("--lazy").arg(&point);
        run(umount, Duration::from_secs(60))?;
    }
    Ok(())
}

/// Removes a build directory, never through a mount left inside it.
fn remove_work(work: &Path) -> Result<(), PayloadError> {
    if !work.exists() {
        return Ok(());
    }
    unmount_below(work)?;
    fs::remove_dir_all(work).map_err(io_err(work))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";

    #[test]
    fn deb822_mirror_is_the_stanza_with_the_exact_suite() {
        assert_eq!(
            mirror_in_deb822(DEB822, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_in_deb822(DEB822, "bookworm-security").as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(mirror_in_deb822(DEB822, "trixie"), None);
        let disabled = DEB822.replacen("Types: deb\n", "Types: deb\nEnabled: no\n", 1);
        assert_eq!(mirror_in_deb822(&disabled, "bookworm"), None);
    }

    #[test]
    fn one_line_mirror_skips_other_suites_sources_and_options() {
        let text = "\
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian bookworm main contrib
";
        assert_eq!(
            mirror_in_one_line(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_in_one_line("deb http://m.example/debian bookworm contrib\n", "bookworm"),
            None,
            "main is required"
        );
    }

    #[test]
    fn marker_unit_is_ordered_after_multi_user_without_a_cycle() {
        assert!(MARKER_UNIT.contains("DefaultDependencies=no"));
        assert!(MARKER_UNIT.contains("After=multi-user.target"));
        assert!(MARKER_UNIT.contains(&format!("ExecStart=/{MARKER_SCRIPT_PATH}")));
        assert!(MARKER_SCRIPT.contains(crate::guest::MARKER_PREFIX));
        assert!(MARKER_SCRIPT.contains(crate::guest::MARKER_PARAM));
    }
}
