//! A tiny Linux payload for firmware boot tests: Debian's stock kernel and a busybox initramfs
//! that prints a marker from its command line on the serial console and powers off.
//!
//! ```text
//! let payload = Payload::prepare()?;          // cached under <target>/lab-cache/
//! let append = payload.cmdline("boot-42");    // "console=ttyS0 panic=-1 initrd=initrd.gz stampede.marker=boot-42"
//! // QEMU: -kernel payload.kernel -initrd payload.initrd -append "$append", or serve both files
//! // over TFTP/HTTP and let firmware load them. The serial console then shows
//! //   STAMPEDE-CMDLINE <the whole kernel command line>
//! //   STAMPEDE-MARKER boot-42
//! // and QEMU (with -no-reboot) exits on the guest's `poweroff -f`.
//! ```
//!
//! * [`Payload::prepare`] returns the kernel and initramfs paths. The kernel comes from the `.deb`
//!   the `linux-image-amd64` metapackage currently depends on (`apt-get download`, never
//!   installed), extracted once into [`cache_dir`]; the initramfs is rebuilt from
//!   `/bin/busybox` (busybox-static) once per process. Both are fast when cached.
//! * [`marker_line`] / [`parse_marker`] are the two sides of the serial-console protocol.
//! * [`newc_archive`] writes a newc cpio archive (exposed for tests that need other initramfs
//!   contents).
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{LabError, next_seq, run_with_timeout};

/// What the initramfs prints, followed by a space and the marker value.
pub const MARKER_PREFIX: &str = "STAMPEDE-MARKER ";
/// Kernel command-line key the initramfs reads the marker from.
pub const MARKER_PARAM: &str = "stampede.marker";
/// File name of the initramfs; the kernel's EFI stub needs `initrd=<this>` when iPXE loads it.
pub const INITRD_NAME: &str = "initrd.gz";
/// The metapackage whose dependency names the kernel package to download.
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Errors preparing the payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "cannot find the kernel package `{KERNEL_METAPACKAGE}` depends on ({detail}); \
         run `apt-get update`"
    )]
    KernelVersion { detail: String },
    #[error(
        "downloading {package} failed: {source}\n\
         (the lab needs a reachable Debian mirror once; the kernel is cached afterwards)"
    )]
    Download {
        package: String,
        #[source]
        source: LabError,
    },
    #[error("extracting {deb} failed: {source}")]
    Extract {
        deb: PathBuf,
        #[source]
        source: LabError,
    },
    #[error("{package} holds no boot/vmlinuz-*")]
    NoKernelImage { package: String },
    #[error("{package} holds no {path}")]
    NotInPackage { package: String, path: String },
    #[error("{BUSYBOX} is missing: install busybox-static")]
    NoBusybox,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lab(#[from] LabError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PayloadError + '_ {
    move |source| PayloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Kernel and initramfs of the marker payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Payload {
    /// Downloads and extracts the kernel unless cached; builds the initramfs once per process.
    pub fn prepare() -> Result<Self, PayloadError> {
        // Tests call this from parallel threads: one of them does the work, the rest reuse it.
        static PREPARED: Mutex<Option<Payload>> = Mutex::new(None);
        let mut prepared = PREPARED.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(payload) = prepared.as_ref() {
            return Ok(payload.clone());
        }
        let payload = Self {
            kernel: kernel()?,
            initrd: initramfs()?,
        };
        *prepared = Some(payload.clone());
        Ok(payload)
    }

    /// The kernel command line that prints `marker`: serial console, reboot (so QEMU with
    /// `-no-reboot` exits) should `/init` ever die, and the `initrd=` the EFI stub wants.
    pub fn cmdline(&self, marker: &str) -> String {
        format!("console=ttyS0 panic=-1 initrd={INITRD_NAME} {MARKER_PARAM}={marker}")
    }
}

/// The lab's download and build cache: `$CARGO_TARGET_DIR/lab-cache` or the workspace's
/// `target/lab-cache` (git ignores `target/`, and the cache survives between runs).
pub fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let lab = Path::new(env!("CARGO_MANIFEST_DIR"));
            lab.parent().unwrap_or(lab).join("target")
        });
    // No `..` in the result: dnsmasq refuses TFTP paths containing `/../`, its root included.
    let target = fs::canonicalize(&target).unwrap_or(target);
    target.join("lab-cache")
}

/// The package `linux-image-amd64` depends on now, e.g. `linux-image-6.1.0-56-amd64`.
pub fn kernel_package() -> Result<String, PayloadError> {
    let mut command = Command::new("apt-cache");
    command.args(["depends", KERNEL_METAPACKAGE]);
    let out = run_with_timeout(command, Duration::from_secs(30))
        .and_then(crate::Output::ok)
        .map_err(|err| PayloadError::KernelVersion {
            detail: err.to_string(),
        })?;
    out.stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|dep| dep.starts_with("linux-image-") && !dep.starts_with('<'))
        .map(str::to_owned)
        .ok_or_else(|| PayloadError::KernelVersion {
            detail: format!("no linux-image-* dependency in: {}", out.stdout.trim()),
        })
}

/// Path of the cached kernel image, downloading and extracting it first if needed.
pub fn kernel() -> Result<PathBuf, PayloadError> {
    let kernels = cache_dir().join("kernel");
    let package = match kernel_package() {
        Ok(package) => package,
        // Offline or without apt lists: any kernel cached earlier boots the payload just as well.
        Err(err) => return newest_cached_kernel(&kernels).ok_or(err),
    };
    let image = kernels.join(&package).join("vmlinuz");
    if image.is_file() {
        return Ok(image);
    }
    let work = kernels.join(format!(
        "{package}.tmp-{}-{}",
        std::process::id(),
        next_seq()
    ));
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = download_and_extract(&package, &work);
    if result.is_ok() {
        // rename(2) is atomic: a concurrent test process either sees the finished directory or
        // none; if another process won the race, its copy is just as good.
        let _ = fs::rename(&work, kernels.join(&package));
    }
    let _ = fs::remove_dir_all(&work);
    result?;
    if image.is_file() {
        Ok(image)
    } else {
        Err(PayloadError::NoKernelImage { package })
    }
}

/// Debian's Secure Boot chain, as the packages install it: the Microsoft-signed shim and the
/// Debian-signed GRUB netboot image (which verifies the kernel through shim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChain {
    pub shim: PathBuf,
    pub grub: PathBuf,
}

/// The package of Debian's Microsoft-signed shim.
pub const SHIM_PACKAGE: &str = "shim-signed";
/// The package of Debian's signed GRUB images.
pub const GRUB_PACKAGE: &str = "grub-efi-amd64-signed";

impl SignedChain {
    /// Fetches both packages with `apt-get download` and unpacks them with `dpkg -x` under
    /// [`cache_dir`]`/secure-boot`, unless cached. Never installed: their maintainer scripts
    /// run grub-install on the host.
    pub fn prepare() -> Result<Self, PayloadError> {
        Ok(Self {
            shim: package_file(SHIM_PACKAGE, "usr/lib/shim/shimx64.efi.signed")?,
            grub: package_file(
                GRUB_PACKAGE,
                "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
            )?,
        })
    }
}

/// `inner` (a path in `package`) from the package unpacked under the cache.
fn package_file(package: &str, inner: &str) -> Result<PathBuf, PayloadError> {
    let cache = cache_dir().join("secure-boot");
    let file = cache.join(package).join(inner);
    if file.is_file() {
        return Ok(file);
    }
    let work = cache.join(format!(
        "{package}.tmp-{}-{}",
        std::process::id(),
        next_seq()
    ));
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = download_and_unpack(package, &work);
    if result.is_ok() {
        // Atomic, as for the kernel: a concurrent process sees all of it or nothing.
        let _ = fs::rename(&work, cache.join(package));
    }
    let _ = fs::remove_dir_all(&work);
    result?;
    if file.is_file() {
        Ok(file)
    } else {
        Err(PayloadError::NotInPackage {
            package: package.to_owned(),
            path: inner.to_owned(),
        })
    }
}

/// `apt-get download PACKAGE` into `work`; the `.deb` it wrote.
fn download_deb(package: &str, work: &Path) -> Result<PathBuf, PayloadError> {
    let mut download = Command::new("apt-get");
    download.args(["download", "-q", package]).current_dir(work);
    run_with_timeout(download, Duration::from_secs(600))
        .and_then(crate::Output::ok)
        .map_err(|source| PayloadError::Download {
            package: package.to_owned(),
            source,
        })?;
    fs::read_dir(work)
        .map_err(io_err(work))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| PayloadError::Download {
            package: package.to_owned(),
            source: LabError::BadName(format!("no .deb in {}", work.display())),
        })
}

fn download_and_unpack(package: &str, work: &Path) -> Result<(), PayloadError> {
    let deb = download_deb(package, work)?;
    let mut extract = Command::new("dpkg");
    extract.arg("-x").arg(&deb).arg(work);
    run_with_timeout(extract, Duration::from_secs(120))
        .and_then(crate::Output::ok)
        .map_err(|source| PayloadError::Extract {
            deb: deb.clone(),
            source,
        })?;
    let _ = fs::remove_file(&deb);
    Ok(())
}

fn newest_cached_kernel(kernels: &Path) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(kernels)
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("vmlinuz"))
        .filter_map(|image| Some((fs::metadata(&image).ok()?.modified().ok()?, image)))
        .collect();
    found.sort();
    found.pop().map(|(_, image)| image)
}

fn download_and_extract(package: &str, work: &Path) -> Result<(), PayloadError> {
    let deb = download_deb(package, work)?;
    // Only ./boot: `dpkg -x` would also unpack ~400 MB of modules the payload does not use.
    let root = work.join("root");
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let mut extract = Command::new("sh");
    extract.args([
        "-c",
        r#"dpkg-deb --fsys-tarfile "$1" | tar -x -f - -C "$2" --wildcards './boot/vmlinuz-*'"#,
        "extract",
    ]);
    extract.arg(&deb).arg(&root);
    run_with_timeout(extract, Duration::from_secs(120))
        .and_then(crate::Output::ok)
        .map_err(|source| PayloadError::Extract {
            deb: deb.clone(),
            source,
        })?;
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .map_err(io_err(&boot))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| PayloadError::NoKernelImage {
            package: package.to_owned(),
        })?;
    let image = work.join("vmlinuz");
    fs::rename(&vmlinuz, &image).map_err(io_err(&vmlinuz))?;
    fs::write(work.join("SOURCE"), format!("{}\n", deb.display())).map_err(io_err(work))?;
    let _ = fs::remove_file(&deb);
    let _ = fs::remove_dir_all(&root);
    Ok(())
}

/// `/init` of the payload. busybox applets are called by full path: the initramfs has no links.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
cmdline="$(/bin/busybox cat /proc/cmdline)"
marker=""
for word in $cmdline; do
  case "$word" in
    stampede.marker=*) marker="${word#stampede.marker=}" ;;
  esac
done
echo "STAMPEDE-CMDLINE $cmdline"
if [ -n "$marker" ]; then
  echo "STAMPEDE-MARKER $marker"
else
  echo "STAMPEDE-NO-MARKER"
fi
/bin/busybox poweroff -f
"#;

/// The line the payload prints for `value`.
pub fn marker_line(value: &str) -> String {
    format!("{MARKER_PREFIX}{value}")
}

/// The marker value in a serial console transcript, if the payload printed one.
pub fn parse_marker(console: &str) -> Option<String> {
    console.lines().find_map(|line| {
        // Kernel messages may share a line with the script's output on a busy console.
        let at = line.find(MARKER_PREFIX)?;
        let value = line[at + MARKER_PREFIX.len()..].trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// One member of a newc cpio archive.
#[derive(Debug, Clone)]
pub enum CpioEntry<'a> {
    Dir {
        path: &'a str,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
    CharDevice {
        path: &'a str,
        major: u32,
        minor: u32,
    },
}

/// Writes a newc ("070701") cpio archive, the format the kernel unpacks as initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
///
/// Built here rather than with `cpio -o -H newc` so that device nodes (`/dev/console`, which
/// the kernel needs before `/init` runs to give it a console) go into the archive without
/// `mknod`, and owners and times are fixed (root, epoch 0) so the archive is reproducible.
pub fn newc_archive(entries: &[CpioEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, entry) in (1..).zip(entries) {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match *entry {
            CpioEntry::Dir { path } => (path, 0o040_755, &[], (0, 0)),
            CpioEntry::File { path, mode, data } => (path, 0o100_000 | mode, data, (0, 0)),
            CpioEntry::Symlink { path, target } => (path, 0o120_777, target.as_bytes(), (0, 0)),
            CpioEntry::CharDevice { path, major, minor } => (path, 0o020_600, &[], (major, minor)),
        };
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        newc_member(&mut out, ino, mode, nlink, path, data, rdev);
    }
    newc_member(&mut out, 0, 0, 1, "TRAILER!!!", &[], (0, 0));
    out
}

fn newc_member(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    path: &str,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) {
    let path = path.trim_start_matches('/');
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).expect("initramfs member under 4 GiB"),
        0, // dev major
        0, // dev minor
        rdev_major,
        rdev_minor,
        u32::try_from(path.len() + 1).expect("short path"),
        0, // check (only for the "070702" CRC format)
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Builds the marker initramfs (gzip'd newc cpio) into the cache and returns its path.
pub fn initramfs() -> Result<PathBuf, PayloadError> {
    let busybox = fs::read(BUSYBOX).map_err(|_| PayloadError::NoBusybox)?;
    let archive = newc_archive(&[
        CpioEntry::Dir { path: "bin" },
        CpioEntry::Dir { path: "dev" },
        CpioEntry::Dir { path: "proc" },
        CpioEntry::Dir { path: "sys" },
        CpioEntry::CharDevice {
            path: "dev/console",
            major: 5,
            minor: 1,
        },
        CpioEntry::File {
            path: "bin/busybox",
            mode: 0o755,
            data: &busybox,
        },
        CpioEntry::Symlink {
            path: "bin/sh",
            target: "busybox",
        },
        CpioEntry::File {
            path: "init",
            mode: 0o755,
            data: INIT_SCRIPT.as_bytes(),
        },
    ]);
    let dir = cache_dir().join("initramfs");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp = dir.join(format!("initrd.cpio.{}-{}", std::process::id(), next_seq()));
    fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(&archive))
        .map_err(io_err(&tmp))?;
    // gzip(1) is Essential in Debian; a Rust deflate would add a dependency for a 1 MiB file.
    let mut gzip = Command::new("gzip");
    gzip.args(["-n", "-6", "-f"]).arg(&tmp);
    let gzipped = run_with_timeout(gzip, Duration::from_secs(60)).and_then(crate::Output::ok);
    let tmp_gz = PathBuf::from(format!("{}.gz", tmp.display()));
    if let Err(err) = gzipped {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&tmp_gz);
        return Err(err.into());
    }
    let initrd = dir.join(INITRD_NAME);
    fs::rename(&tmp_gz, &initrd).map_err(io_err(&tmp_gz))?;
    Ok(initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_members_are_aligned_and_terminated() {
        let archive = newc_archive(&[
            CpioEntry::Dir { path: "bin" },
            CpioEntry::File {
                path: "/init",
                mode: 0o755,
                data: b"abc",
            },
            CpioEntry::CharDevice {
                path: "dev/console",
                major: 5,
                minor: 1,
            },
        ]);
        assert!(archive.len().is_multiple_of(4));
        assert!(archive.starts_with(b"070701"));
        // Second member starts right after the first, padded: 110-byte header + "bin\0" = 114 -> 116.
        assert_eq!(&archive[116..122], b"070701");
        let init = &archive[116..];
        assert_eq!(&init[14..22], b"000081ED", "regular file, 0755");
        assert_eq!(&init[54..62], b"00000003", "file size");
        assert_eq!(&init[94..102], b"00000005", "name size includes the NUL");
        assert_eq!(&init[110..115], b"init\0", "leading slash stripped");
        let console = archive
            .windows(12)
            .position(|w| w == b"dev/console\0")
            .expect("console member");
        let header = &archive[console - 110..console];
        assert_eq!(&header[14..22], b"00002180", "character device, 0600");
        assert_eq!(&header[78..86], b"00000005", "rdev major");
        assert_eq!(&header[86..94], b"00000001", "rdev minor");
        assert!(archive.windows(11).any(|w| w == b"TRAILER!!!\0"), "trailer");
    }

    #[test]
    fn marker_round_trips_through_a_console_transcript() {
        let console = format!(
            "[    1.234] Run /init as init process\r\nSTAMPEDE-CMDLINE console=ttyS0 \
             stampede.marker=bios-7\r\n{}\r\n[    1.300] reboot: Power down\r\n",
            marker_line("bios-7")
        );
        assert_eq!(parse_marker(&console).as_deref(), Some("bios-7"));
        assert_eq!(parse_marker("STAMPEDE-NO-MARKER\n"), None);
        assert_eq!(parse_marker("STAMPEDE-MARKER \n"), None);
    }

    #[test]
    fn cmdline_carries_console_marker_and_efi_initrd_name() {
        let payload = Payload {
            kernel: "k".into(),
            initrd: "i".into(),
        };
        let cmdline = payload.cmdline("x1");
        assert!(cmdline.contains("console=ttyS0"));
        assert!(cmdline.contains("initrd=initrd.gz"));
        assert!(cmdline.ends_with("stampede.marker=x1"));
    }
}
