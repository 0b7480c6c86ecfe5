//! Mounts: the initramfs's own (`/proc`, `/sys`, `/dev`, `/run`), the root in RAM
//! (erofs on `/dev/ram0`, a tmpfs for writes, overlay at `/sysroot`), and the switch into it.
//! The one place the agent mounts, moves mounts and executes the next init.
use std::{
    convert::Infallible,
    ffi::CString,
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    errno::Errno,
    mount::{MsFlags, mount},
    unistd::{chdir, chroot, execv},
};

/// The RAM disk `brd` creates with `rd_nr=1`.
pub const RAM_DISK: &str = "/dev/ram0";
/// Where the next root is assembled.
pub const SYSROOT: &str = "/sysroot";
/// The image's file system, read-only.
pub const LOWER: &str = "/run/stampede/lower";
/// tmpfs holding the overlay's `upper/` and `work/`.
pub const RW: &str = "/run/stampede/rw";

/// The initramfs's API file systems; moved into the root at switch time, in this order.
pub const API_MOUNTS: [(&str, &str, &str); 4] = [
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
    ("tmpfs", "/run", "tmpfs"),
];

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("mkdir {target}"))?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already there: a retry of a step that mounted it before failing later.
        Err(Errno::EBUSY) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("mount -t {fstype} {source} {target}")),
    }
}

fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (fs::metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev())
}

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run` (tmpfs), skipping any already mounted
/// (the kernel mounts devtmpfs itself with `CONFIG_DEVTMPFS_MOUNT`, but not in an initramfs).
pub fn mount_api_filesystems() -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (source, target, fstype) in API_MOUNTS {
        if is_mount_point(Path::new(target)) {
            continue;
        }
        let (flags, data) = match fstype {
            "devtmpfs" => (MsFlags::MS_NOSUID, Some("mode=0755")),
            "tmpfs" => (MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
            _ => (nosuid, None),
        };
        mount_fs(source, target, fstype, flags, data)?;
    }
    Ok(())
}

/// Undoes [`mount_root`] after a failed attempt, so the next one starts clean (and the RAM
/// disk is not written while mounted). Errors mean "was not mounted" and are ignored.
pub fn unmount_root() {
    for target in [SYSROOT, RW, LOWER] {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts the image read-only, a tmpfs for writes and the overlay of both at [`SYSROOT`].
pub fn mount_root(fstype: &str) -> Result<()> {
    mount_fs(RAM_DISK, LOWER, fstype, MsFlags::MS_RDONLY, None)
        .with_context(|| format!("the root image on {RAM_DISK} does not mount as {fstype}"))?;
    mount_fs(
        "tmpfs",
        RW,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    for dir in ["upper", "work"] {
        let path = Path::new(RW).join(dir);
        fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        // The upper directory's mode becomes the mode of the merged root directory.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    let options = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mount_fs(
        "overlay",
        SYSROOT,
        "overlay",
        MsFlags::empty(),
        Some(&options),
    )
}

/// Resolves `init` inside `sysroot` as the kernel will after `chroot` (symlinks confined to
/// the root) and checks it is an executable file. Returns the host path checked.
pub fn check_init(sysroot: &Path, init: &str) -> Result<PathBuf> {
    let path = crate::machine_files::resolve_existing_in_root(sysroot, Path::new(init))
        .with_context(|| format!("{init} does not exist in the root"))?;
    let meta = fs::metadata(&path).with_context(|| format!("{init} does not exist in the root"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{init} is not an executable file in the root");
    }
    Ok(path)
}

/// Removes what the initramfs no longer needs, to give its RAM back: everything on the
/// initramfs's own file system except `keep` (the mount points in use). Errors are ignored:
/// this only frees memory.
pub fn free_initramfs(keep: &[&str]) -> u64 {
    let Ok(root) = fs::metadata("/") else {
        return 0;
    };
    let mut freed = 0;
    let Ok(entries) = fs::read_dir("/") else {
        return 0;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if keep.iter().any(|k| Path::new(k) == path) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        // Never cross into another file system.
        if meta.dev() != root.dev() {
            continue;
        }
        freed += tree_size(&path, root.dev());
        if meta.is_dir() {
            let _ = fs::remove_dir_all(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    freed
}

fn tree_size(path: &Path, dev: u64) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.dev() != dev {
        return 0;
    }
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path(), dev)).sum())
        .unwrap_or(0)
}

/// Moves the API file systems into [`SYSROOT`]. After this the initramfs has no `/proc`.
pub fn move_api_filesystems() -> Result<()> {
    for (_, target, _) in API_MOUNTS {
        let to = format!("{SYSROOT}{target}");
        fs::create_dir_all(&to).with_context(|| format!("mkdir {to}"))?;
        mount(
            Some(target),
            to.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("mount --move {target} {to}"))?;
    }
    Ok(())
}

/// `chdir /sysroot; mount --move . /; chroot .; chdir /`: the overlay becomes `/`.
pub fn enter_sysroot() -> Result<()> {
    chdir(SYSROOT).context("chdir /sysroot")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("mount --move /sysroot /")?;
    chroot(".").context("chroot")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

/// Executes `init` as the new PID 1, `argv[0]` = `init`. Returns only on failure.
pub fn exec_init(init: &str) -> Result<Infallible> {
    let path = CString::new(init).context("init path has a NUL byte")?;
    let err = execv(&path, std::slice::from_ref(&path)).unwrap_err();
    Err(err).with_context(|| format!("exec {init}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn init_must_be_an_executable_file_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("lib/systemd")).expect("dir");
        fs::create_dir_all(root.join("sbin")).expect("dir");
        fs::write(root.join("lib/systemd/systemd"), "#!/bin/sh\n").expect("file");
        fs::set_permissions(
            root.join("lib/systemd/systemd"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        symlink("/lib/systemd/systemd", root.join("sbin/init")).expect("link");
        fs::write(root.join("sbin/plain"), "").expect("file");
        assert_eq!(
            check_init(root, "/sbin/init").expect("init"),
            root.join("lib/systemd/systemd")
        );
        let missing = check_init(root, "/sbin/nope").expect_err("missing");
        assert!(format!("{missing:#}").contains("/sbin/nope does not exist in the root"));
        let plain = check_init(root, "/sbin/plain").expect_err("not executable");
        assert!(format!("{plain:#}").contains("not an executable file"));
        assert!(check_init(root, "/sbin").is_err(), "a directory");
    }
}
