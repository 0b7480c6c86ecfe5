//! Test images for diskless roots: real OCI image layouts built with `umoci`, holding Debian's
//! kernel, the modules a diskless root needs (with `modules.dep` from `depmod`), busybox-static
//! and an `/sbin/init` that reports on the serial console and powers off.
//!
//! The small image has two layers: the second deletes a file of the first (a whiteout) and
//! changes `/etc/stampede-image`, so a machine that boots it proves the layers were flattened.
//! Its init prints:
//!
//! ```text
//! STAMPEDE-ROOT pid=1 image=small-v2 hostname=.. machine_id=..
//! STAMPEDE-ROOT fresh                     (no file left from an earlier boot)
//! STAMPEDE-ROOT wrote                     (a file written on / through the overlay)
//! STAMPEDE-MARKER <stampede.marker>-pid1  (the image's init is PID 1)
//! ```
use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{
    LabError,
    guest::{BUSYBOX, PayloadError, cache_dir, kernel_package},
    next_seq, run_with_timeout,
};

/// Modules the small image carries: what a diskless root needs on QEMU's e1000 and virtio-net,
/// paths inside the kernel package.
pub const MODULES: &[&str] = &[
    "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/fs/erofs/erofs.ko",
    "kernel/lib/libcrc32c.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/arch/x86/crypto/crc32c-intel.ko",
    "kernel/fs/overlayfs/overlay.ko",
    "kernel/drivers/block/brd.ko",
];

/// The small image's tag in its layout.
pub const SMALL_TAG: &str = "small";

/// What the image's init prints before its marker.
pub const ROOT_LINE_PREFIX: &str = "STAMPEDE-ROOT ";

/// `/sbin/init` of the small image.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
marker=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    stampede.marker=*) marker="${word#stampede.marker=}" ;;
  esac
done
echo "STAMPEDE-ROOT pid=$$ image=$(cat /etc/stampede-image) hostname=$(cat /etc/hostname 2>/dev/null) machine_id=$(cat /etc/machine-id 2>/dev/null)"
echo "STAMPEDE-ROOT ipv6_off=$(cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null || echo none)"
if [ -e /etc/removed-by-layer-2 ]; then echo "STAMPEDE-ROOT whiteout-ignored"; fi
if [ -e /var/written ]; then echo "STAMPEDE-ROOT persisted $(cat /var/written)"; else echo "STAMPEDE-ROOT fresh"; fi
echo "$marker" > /var/written && echo "STAMPEDE-ROOT wrote"
echo "STAMPEDE-MARKER $marker-pid$$"
sync
poweroff -f
"#;

/// Busybox applets the image links (the init script's needs and a shell to look around).
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "mount", "umount", "poweroff", "reboot", "ls", "mkdir", "sleep", "sync",
    "hostname", "ip", "ps", "dmesg",
];

/// Debian's kernel with a subset of its modules: `<dir>/boot/vmlinuz-<release>` and
/// `<dir>/lib/modules/<release>/...` with `modules.dep`.
#[derive(Debug, Clone)]
pub struct KernelTree {
    pub dir: PathBuf,
    pub release: String,
}

impl KernelTree {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.release))
    }
}

/// The kernel package's kernel and [`MODULES`], extracted once into the lab cache.
pub fn kernel_tree() -> Result<KernelTree, PayloadError> {
    static DONE: Mutex<Option<KernelTree>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tree) = done.as_ref() {
        return Ok(tree.clone());
    }
    let package = kernel_package()?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    // A changed module list extracts again.
    let list = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        MODULES.hash(&mut h);
        h.finish()
    };
    let dir = cache_dir()
        .join("kernel-modules")
        .join(format!("{package}-{list:016x}"));
    if !dir
        .join("lib/modules")
        .join(&release)
        .join("modules.dep")
        .is_file()
    {
        let work = cache_dir().join("kernel-modules").join(format!(
            "{package}.tmp-{}-{}",
            std::process::id(),
            next_seq()
        ));
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = extract(&package, &release, &work);
        if result.is_ok() {
            let _ = fs::rename(&work, &dir);
        }
        let _ = fs::remove_dir_all(&work);
        result?;
    }
    let tree = KernelTree { dir, release };
    *done = Some(tree.clone());
    Ok(tree)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PayloadError + '_ {
    move |source| PayloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn lab_err(what: String) -> PayloadError {
    PayloadError::Lab(LabError::BadName(what))
}

fn extract(package: &str, release: &str, work: &Path) -> Result<(), PayloadError> {
    let mut download = Command::new("apt-get");
    download
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
        .current_dir(work);
    run_with_timeout(download, Duration::from_secs(600))
        .and_then(crate::Output::ok)
        .map_err(|source| PayloadError::Download {
            package: package.to_owned(),
            source,
        })?;
    let deb = fs::read_dir(work)
        .map_err(io_err(work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| lab_err(format!("no .deb in {}", work.display())))?;
    let mut members: Vec<String> = vec![format!("./boot/vmlinuz-{release}")];
    for m in MODULES {
        members.push(format!("./lib/modules/{release}/{m}"));
    }
    for f in [
        "modules.builtin",
        "modules.order",
        "modules.builtin.modinfo",
    ] {
        members.push(format!("./lib/modules/{release}/{f}"));
    }
    let mut tar = Command::new("sh");
    tar.args([
        "-c",
        r#"deb="$1"; dir="$2"; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -f - -C "$dir" "$@""#,
        "extract",
    ])
    .arg(&deb)
    .arg(work);
    tar.args(&members);
    run_with_timeout(tar, Duration::from_secs(300))
        .and_then(crate::Output::ok)
        .map_err(|source| PayloadError::Extract {
            deb: deb.clone(),
            source,
        })?;
    let _ = fs::remove_file(&deb);
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(work).arg(release);
    run_with_timeout(depmod, Duration::from_secs(60))
        .and_then(crate::Output::ok)
        .map_err(PayloadError::Lab)?;
    Ok(())
}

/// An OCI image layout holding the small image under [`SMALL_TAG`].
#[derive(Debug, Clone)]
pub struct SmallImage {
    pub layout: PathBuf,
    pub kernel: KernelTree,
}

impl SmallImage {
    /// `oci:<layout>:small`, as `stampede boot --root` takes it.
    pub fn source(&self) -> String {
        format!("oci:{}:{SMALL_TAG}", self.layout.display())
    }
}

/// Builds the small image once into the lab cache (umoci, as root) and returns it.
pub fn small_image() -> Result<SmallImage, PayloadError> {
    static DONE: Mutex<Option<SmallImage>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(image) = done.as_ref() {
        return Ok(image.clone());
    }
    let kernel = kernel_tree()?;
    // The layout is rebuilt when the init script or the module list changes.
    let stamp = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        INIT_SCRIPT.hash(&mut h);
        MODULES.hash(&mut h);
        APPLETS.hash(&mut h);
        kernel.release.hash(&mut h);
        h.finish()
    };
    let layout = cache_dir()
        .join("root-images")
        .join(format!("small-{stamp:016x}"));
    if !layout.join("index.json").is_file() {
        let work = cache_dir().join("root-images").join(format!(
            "build-{}-{}",
            std::process::id(),
            next_seq()
        ));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let result = build_small(&kernel, &work);
        if result.is_ok() {
            let _ = fs::rename(work.join("layout"), &layout);
        }
        let _ = fs::remove_dir_all(&work);
        result?;
    }
    let image = SmallImage { layout, kernel };
    *done = Some(image.clone());
    Ok(image)
}

fn umoci(args: &[&str], dir: &Path) -> Result<(), PayloadError> {
    let mut command = Command::new("umoci");
    command.args(args).current_dir(dir);
    run_with_timeout(command, Duration::from_secs(300))
        .and_then(crate::Output::ok)
        .map_err(PayloadError::Lab)?;
    Ok(())
}

fn build_small(kernel: &KernelTree, work: &Path) -> Result<(), PayloadError> {
    let image = format!("layout:{SMALL_TAG}");
    umoci(&["init", "--layout", "layout"], work)?;
    umoci(&["new", "--image", &image], work)?;
    umoci(&["unpack", "--image", &image, "bundle"], work)?;
    let root = work.join("bundle/rootfs");
    let w = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), PayloadError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::write(path, bytes).map_err(io_err(path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
    };
    // Layer 1: busybox, init, kernel and modules, and a file layer 2 deletes.
    let busybox = fs::read(BUSYBOX).map_err(|_| PayloadError::NoBusybox)?;
    w(&root.join("bin/busybox"), &busybox, 0o755)?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        symlink("busybox", &link).map_err(io_err(&link))?;
    }
    w(&root.join("sbin/init"), INIT_SCRIPT.as_bytes(), 0o755)?;
    for dir in ["proc", "sys", "dev", "run", "tmp", "var", "root"] {
        let d = root.join(dir);
        fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    w(&root.join("etc/stampede-image"), b"small-v1\n", 0o644)?;
    w(&root.join("etc/removed-by-layer-2"), b"gone\n", 0o644)?;
    w(&root.join("etc/hostname"), b"image-default\n", 0o644)?;
    let mut copy = Command::new("cp");
    copy.arg("-a")
        .arg(kernel.dir.join("boot"))
        .arg(kernel.dir.join("lib"))
        .arg(&root);
    run_with_timeout(copy, Duration::from_secs(120))
        .and_then(crate::Output::ok)
        .map_err(PayloadError::Lab)?;
    // --refresh-bundle: the next repack is a diff against this layer, not the empty image.
    umoci(
        &["repack", "--refresh-bundle", "--image", &image, "bundle"],
        work,
    )?;
    // Layer 2: a whiteout and a changed file.
    let removed = root.join("etc/removed-by-layer-2");
    fs::remove_file(&removed).map_err(io_err(&removed))?;
    w(&root.join("etc/stampede-image"), b"small-v2\n", 0o644)?;
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
