//! One appliance per boot interface: `serve --config` and `boot` hold an exclusive `flock` on a
//! file named after the interface and the network namespace for as long as they run, so a
//! second one on the same link is refused at start instead of answering DHCP beside the first
//! with a lease database of its own (issue 18).
//!
//! The lock is the kernel's: it goes with the process, whatever way it ends, so a stale file
//! left by a crash never blocks a start. The holder writes its PID into the file for the
//! refusal to name.
use anyhow::{Context as _, bail};
use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read as _, Seek as _, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Held for the life of the appliance; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InterfaceLock {
    _file: File,
    pub path: PathBuf,
}

/// Where locks go, in order: `/run/stampede` (tmpfs, cleared at boot), the state file's
/// directory (an unprivileged run without `/run` access), and the temporary directory.
pub fn lock_dirs(state_dir: &Path) -> Vec<PathBuf> {
    vec![
        PathBuf::from("/run/stampede"),
        state_dir.to_path_buf(),
        std::env::temp_dir(),
    ]
}

/// The lock file's name: the interface and the inode of this process's network namespace, so
/// appliances in different namespaces (labs, containers) each have their own `eth1`.
pub fn lock_name(iface: &str) -> String {
    let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    // Interface names hold no '/' (dev_valid_name); one given on the command line might.
    let iface = iface.replace('/', "_");
    format!("stampede-{iface}-netns{netns}.lock")
}

impl InterfaceLock {
    /// Takes the lock of `iface` in the first of `dirs` that can hold it.
    pub fn acquire(iface: &str, dirs: &[PathBuf]) -> anyhow::Result<Self> {
        let name = lock_name(iface);
        for dir in dirs {
            if std::fs::create_dir_all(dir).is_err() {
                continue;
            }
            let path = dir.join(&name);
            let Ok(mut file) = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
            else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let holder = if holder.is_empty() { "unknown" } else { holder };
                    bail!(
                        "{iface} is already served by another stampede (pid {holder}, lock {}): \
                         stop it first, or serve another interface",
                        path.display()
                    );
                }
                Err(TryLockError::Error(err)) => {
                    return Err(err).with_context(|| format!("locking {}", path.display()));
                }
            }
            let written = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()));
            written.with_context(|| format!("writing the PID into {}", path.display()))?;
            return Ok(Self { _file: file, path });
        }
        bail!(
            "no directory can hold the lock of {iface} (tried {})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_interface_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = [dir.path().join("missing/../run"), dir.path().to_path_buf()];
        let first = InterfaceLock::acquire("eth7", &dirs).expect("first lock");
        // A file of its own (as a second process would open it): flock is per open file.
        let err = InterfaceLock::acquire("eth7", &dirs).expect_err("second lock");
        let text = err.to_string();
        assert!(text.contains("eth7"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        InterfaceLock::acquire("eth8", &dirs).expect("another interface");
        drop(first);
        InterfaceLock::acquire("eth7", &dirs).expect("free again once dropped");
    }

    #[test]
    fn an_unusable_directory_falls_back_to_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").expect("write");
        let lock = InterfaceLock::acquire("eth9", &[file.join("sub"), dir.path().to_path_buf()])
            .expect("second directory");
        assert!(lock.path.starts_with(dir.path()), "{}", lock.path.display());
    }
}
