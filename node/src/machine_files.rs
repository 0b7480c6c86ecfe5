//! Per-machine files written into the root before it starts (Warewulf calls these overlays):
//! host name, machine id, resolver, SSH keys, and a record of the lease.
//!
//! Writing into an image's tree must never leave it. An image's `/etc/resolv.conf` is often a
//! symlink (`/run/systemd/resolve/stub-resolv.conf`); followed from the initramfs that would
//! write the initramfs's own `/run`. The rules:
//! * directories on the way are resolved *inside* the root, as `openat2(RESOLVE_IN_ROOT)` does:
//!   an absolute link target starts again at the root, `..` stops at the root (so an image whose
//!   `/root` links to `/var/roothome` gets its keys there);
//! * the file itself is replaced, never followed: the new content goes to a temporary file in
//!   the same directory, renamed over the old name (`rename(2)` replaces a symlink, it does not
//!   write through it). So `/etc/resolv.conf` becomes a plain file holding the lease's servers.
//!
//! Nothing else runs in the initramfs while the agent writes, so checking and then writing is
//! not a race here.
use std::{
    collections::VecDeque,
    ffi::OsString,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
};

use nix::fcntl::OFlag;
use serde::Deserialize;

use crate::cmdline::MacAddr;

/// Symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// `GET {server}/stampede/node/config?mac=MAC` as served: every field optional, unknown fields
/// ignored so the appliance can add some before nodes know them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NodeConfigWire {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Option<Vec<String>>,
}

/// A validated per-machine configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub hostname: Option<String>,
    /// 32 lowercase hex digits (`machine-id(5)`).
    pub machine_id: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the config is not JSON of the expected shape: {0}")]
    Syntax(String),
    #[error("hostname {0:?} is not a valid host name (RFC 1123 labels, at most 64 characters)")]
    Hostname(String),
    #[error("machine_id {0:?} is not 32 hex digits")]
    MachineId(String),
    #[error("SSH key {0} spans lines or is empty")]
    SshKey(usize),
}

/// RFC 1123 §2.1 labels, at most 64 characters in all (the kernel's `__NEW_UTS_LEN`).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl TryFrom<NodeConfigWire> for NodeConfig {
    type Error = ConfigError;

    fn try_from(wire: NodeConfigWire) -> Result<Self, ConfigError> {
        let hostname = match wire.hostname {
            Some(h) if !valid_hostname(&h) => return Err(ConfigError::Hostname(h)),
            h => h,
        };
        let machine_id = match wire.machine_id {
            Some(id) => {
                let lower = id.to_ascii_lowercase();
                if lower.len() != 32 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ConfigError::MachineId(id));
                }
                Some(lower)
            }
            None => None,
        };
        let keys = wire.ssh_authorized_keys.unwrap_or_default();
        for (i, key) in keys.iter().enumerate() {
            if key.trim().is_empty() || key.contains(['\n', '\r']) {
                return Err(ConfigError::SshKey(i));
            }
        }
        Ok(Self {
            hostname,
            machine_id,
            ssh_authorized_keys: keys.iter().map(|k| k.trim().to_owned()).collect(),
        })
    }
}

impl NodeConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let wire: NodeConfigWire =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Self::try_from(wire)
    }
}

/// What the lease gave this machine, as the files record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub mac: MacAddr,
    pub interface: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    /// DHCP option 12.
    pub hostname: Option<String>,
    /// The DHCP server that leased the address.
    pub dhcp_server: Ipv4Addr,
    /// The appliance base URL (`stampede.server`).
    pub server: String,
}

impl LeaseRecord {
    /// `/run/stampede/lease`: `key=value` lines a shell can source.
    pub fn to_key_values(&self) -> String {
        let mut out = format!(
            "mac={}\ninterface={}\nip={}\nprefix={}\n",
            self.mac, self.interface, self.ip, self.prefix_len
        );
        if let Some(router) = self.router {
            out.push_str(&format!("router={router}\n"));
        }
        if !self.dns_servers.is_empty() {
            let dns: Vec<String> = self.dns_servers.iter().map(Ipv4Addr::to_string).collect();
            out.push_str(&format!("dns=\"{}\"\n", dns.join(" ")));
        }
        if let Some(hostname) = &self.hostname
            && valid_hostname(hostname)
        {
            out.push_str(&format!("hostname={hostname}\n"));
        }
        out.push_str(&format!(
            "dhcp_server={}\nserver={}\n",
            self.dhcp_server, self.server
        ));
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: more than {MAX_LINKS} symlinks")]
    Loop(PathBuf),
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Resolves directory `rel` inside `root` (symlinks confined to `root`), creating missing
/// directories with `mode`. Returns the real path, under `root`.
pub fn resolve_dir_in_root(root: &Path, rel: &Path, mode: u32) -> Result<PathBuf, FilesError> {
    resolve_in_root(root, rel, Some(mode))
}

/// Resolves `rel` inside `root` as the kernel would after `chroot(root)`: every symlink, the
/// last component's included, confined to `root`. Fails if anything on the way is missing.
pub fn resolve_existing_in_root(root: &Path, rel: &Path) -> Result<PathBuf, FilesError> {
    resolve_in_root(root, rel, None)
}

/// With `create`, missing components become directories of that mode and every component must
/// be a directory; without, the last component may be any file and nothing is created.
fn resolve_in_root(root: &Path, rel: &Path, create: Option<u32>) -> Result<PathBuf, FilesError> {
    let mut pending: VecDeque<OsString> = components(rel).into();
    let mut current: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            current.pop();
            continue;
        }
        let path = joined(root, &current).join(&name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(FilesError::Loop(path));
                }
                let target = fs::read_link(&path).map_err(io_err(&path))?;
                if target.is_absolute() {
                    current.clear();
                }
                for (i, part) in components(&target).into_iter().enumerate() {
                    pending.insert(i, part);
                }
            }
            Ok(meta) if meta.is_dir() => current.push(name),
            Ok(_) if create.is_none() && pending.is_empty() => current.push(name),
            Ok(_) => return Err(FilesError::NotADirectory(path)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let Some(mode) = create else {
                    return Err(io_err(&path)(err));
                };
                fs::DirBuilder::new()
                    .mode(mode)
                    .create(&path)
                    .map_err(io_err(&path))?;
                // The mode asked for, whatever the umask.
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&path))?;
                current.push(name);
            }
            Err(err) => return Err(io_err(&path)(err)),
        }
    }
    Ok(joined(root, &current))
}

/// The normal components of `path` and its `..`, as names (`/` and `.` dropped).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn joined(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

/// Writes `contents` at `rel` inside `root` with `mode`, replacing whatever is there (a symlink
/// included) without following it; directories created on the way get `dir_mode`.
pub fn write_in_root(
    root: &Path,
    rel: &Path,
    contents: &[u8],
    mode: u32,
    dir_mode: u32,
) -> Result<PathBuf, FilesError> {
    let name = rel
        .file_name()
        .ok_or_else(|| FilesError::NotADirectory(rel.to_path_buf()))?;
    let parent = resolve_dir_in_root(root, rel.parent().unwrap_or(Path::new("")), dir_mode)?;
    let target = parent.join(name);
    if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        return Err(io_err(&target)(io::ErrorKind::IsADirectory.into()));
    }
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".stampede-new");
    let tmp = parent.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io_err(&target))?;
    Ok(target)
}

/// Writes the per-machine files into `sysroot` and the lease record into `run` (the
/// initramfs's `/run`, which becomes the root's `/run` at switch_root: written into the
/// overlay's `/run` it would be hidden by that mount). Returns the files written.
pub fn write_machine_files(
    sysroot: &Path,
    run: &Path,
    config: &NodeConfig,
    lease: &LeaseRecord,
) -> Result<Vec<PathBuf>, FilesError> {
    let mut written = Vec::new();
    let hostname = config
        .hostname
        .clone()
        .or_else(|| lease.hostname.clone().filter(|h| valid_hostname(h)));
    if let Some(hostname) = hostname {
        written.push(write_in_root(
            sysroot,
            Path::new("etc/hostname"),
            format!("{hostname}\n").as_bytes(),
            0o644,
            0o755,
        )?);
    }
    if let Some(id) = &config.machine_id {
        written.push(write_in_root(
            sysroot,
            Path::new("etc/machine-id"),
            format!("{id}\n").as_bytes(),
            0o444,
            0o755,
        )?);
    }
    if !lease.dns_servers.is_empty() {
        let mut text = String::from("# written by stampede-node from the DHCP lease\n");
        for server in &lease.dns_servers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        written.push(write_in_root(
            sysroot,
            Path::new("etc/resolv.conf"),
            text.as_bytes(),
            0o644,
            0o755,
        )?);
    }
    if !config.ssh_authorized_keys.is_empty() {
        let mut text = config.ssh_authorized_keys.join("\n");
        text.push('\n');
        // Only the last directory gets 0700: /root itself keeps the image's mode if it exists.
        resolve_dir_in_root(sysroot, Path::new("root"), 0o700)?;
        let ssh = resolve_dir_in_root(sysroot, Path::new("root/.ssh"), 0o700)?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700)).map_err(io_err(&ssh))?;
        written.push(write_in_root(
            sysroot,
            Path::new("root/.ssh/authorized_keys"),
            text.as_bytes(),
            0o600,
            0o700,
        )?);
    }
    let dir = run.join("stampede");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    written.push(write_in_root(
        run,
        Path::new("stampede/lease"),
        lease.to_key_values().as_bytes(),
        0o644,
        0o755,
    )?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn lease() -> LeaseRecord {
        LeaseRecord {
            mac: MacAddr([0x52, 0x54, 0, 1, 2, 3]),
            interface: "eth0".into(),
            ip: Ipv4Addr::new(198, 18, 4, 100),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(198, 18, 4, 1)),
            dns_servers: vec![Ipv4Addr::new(198, 18, 4, 1), Ipv4Addr::new(198, 18, 4, 2)],
            hostname: Some("from-dhcp".into()),
            dhcp_server: Ipv4Addr::new(198, 18, 4, 1),
            server: "http://198.18.4.1:8080".into(),
        }
    }

    /// A temp dir holding `sysroot/`, `run/` and `outside/` (which must stay empty).
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sysroot = dir.path().join("sysroot");
        let run = dir.path().join("run");
        let outside = dir.path().join("outside");
        for d in [&sysroot, &run, &outside] {
            fs::create_dir_all(d).expect("mkdir");
        }
        fs::create_dir_all(sysroot.join("etc")).expect("etc");
        (dir, sysroot, run, outside)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn config_json_is_validated() {
        let c = NodeConfig::from_json(
            br#"{"hostname":"node-7.rack-2","machine_id":"0123456789ABCDEF0123456789abcdef",
                "ssh_authorized_keys":["ssh-ed25519 AAAA x@y "], "future": 1}"#,
        )
        .expect("valid");
        assert_eq!(c.hostname.as_deref(), Some("node-7.rack-2"));
        assert_eq!(
            c.machine_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(c.ssh_authorized_keys, ["ssh-ed25519 AAAA x@y"]);
        assert_eq!(NodeConfig::from_json(b"{}"), Ok(NodeConfig::default()));
        assert!(matches!(
            NodeConfig::from_json(br#"{"hostname":"a_b"}"#),
            Err(ConfigError::Hostname(_))
        ));
        assert!(matches!(
            NodeConfig::from_json(br#"{"machine_id":"123"}"#),
            Err(ConfigError::MachineId(_))
        ));
        assert!(matches!(
            NodeConfig::from_json(br#"{"ssh_authorized_keys":["a\nb"]}"#),
            Err(ConfigError::SshKey(0))
        ));
        assert!(matches!(
            NodeConfig::from_json(b"<html>"),
            Err(ConfigError::Syntax(_))
        ));
    }

    #[test]
    fn hostnames_follow_rfc1123() {
        for ok in ["a", "node-1", "n1.example.org", &"x".repeat(63)] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "a/b", &"x".repeat(65)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn files_land_in_the_root_with_their_modes() {
        let (_dir, sysroot, run, _outside) = tree();
        let config = NodeConfig {
            hostname: Some("node-7".into()),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA a".into(), "ssh-rsa BBBB b".into()],
        };
        let written = write_machine_files(&sysroot, &run, &config, &lease()).expect("writes");
        assert_eq!(written.len(), 5);
        let read = |p: &str| fs::read_to_string(sysroot.join(p)).expect(p);
        assert_eq!(read("etc/hostname"), "node-7\n");
        assert_eq!(read("etc/machine-id"), "0123456789abcdef0123456789abcdef\n");
        assert!(
            read("etc/resolv.conf").ends_with("nameserver 198.18.4.1\nnameserver 198.18.4.2\n")
        );
        assert_eq!(
            read("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAA a\nssh-rsa BBBB b\n"
        );
        assert_eq!(mode(&sysroot.join("root/.ssh/authorized_keys")), 0o600);
        assert_eq!(mode(&sysroot.join("root/.ssh")), 0o700);
        let lease_text = fs::read_to_string(run.join("stampede/lease")).expect("lease");
        assert!(lease_text.contains("ip=198.18.4.100\nprefix=24\nrouter=198.18.4.1\n"));
        assert!(lease_text.contains("mac=52:54:00:01:02:03\n"));
        assert!(lease_text.contains("server=http://198.18.4.1:8080\n"));
        // No temporary files left behind.
        let etc: Vec<_> = fs::read_dir(sysroot.join("etc"))
            .expect("etc")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(etc.len(), 3, "{etc:?}");
    }

    #[test]
    fn defaults_take_the_dhcp_hostname_and_skip_what_is_not_given() {
        let (_dir, sysroot, run, _outside) = tree();
        let mut l = lease();
        l.dns_servers.clear();
        let written =
            write_machine_files(&sysroot, &run, &NodeConfig::default(), &l).expect("writes");
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(
            fs::read_to_string(sysroot.join("etc/hostname")).expect("hostname"),
            "from-dhcp\n"
        );
        assert!(!sysroot.join("etc/resolv.conf").exists());
        assert!(!sysroot.join("etc/machine-id").exists());
        assert!(!sysroot.join("root").exists());
    }

    #[test]
    fn a_symlinked_file_is_replaced_not_followed() {
        let (dir, sysroot, run, outside) = tree();
        // Absolute (points into the agent's own /run if followed) and relative escapes.
        let victim = outside.join("stub-resolv.conf");
        fs::write(&victim, "original\n").expect("victim");
        symlink(&victim, sysroot.join("etc/resolv.conf")).expect("link");
        symlink("../../outside/hostname", sysroot.join("etc/hostname")).expect("link");
        write_machine_files(&sysroot, &run, &NodeConfig::default(), &lease()).expect("writes");
        let resolv = sysroot.join("etc/resolv.conf");
        assert!(fs::symlink_metadata(&resolv).expect("stat").is_file());
        assert!(
            fs::read_to_string(&resolv)
                .expect("read")
                .contains("nameserver 198.18.4.1")
        );
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "original\n");
        assert!(
            fs::symlink_metadata(sysroot.join("etc/hostname"))
                .expect("stat")
                .is_file()
        );
        let outside_files: Vec<_> = fs::read_dir(&outside).expect("outside").collect();
        assert_eq!(outside_files.len(), 1, "only the victim, untouched");
        drop(dir);
    }

    #[test]
    fn symlinked_directories_resolve_inside_the_root() {
        let (_dir, sysroot, run, outside) = tree();
        // /root -> /var/roothome (absolute, as in ostree images): taken inside the root.
        fs::create_dir_all(sysroot.join("var/roothome")).expect("roothome");
        symlink("/var/roothome", sysroot.join("root")).expect("link");
        // /etc/ssh -> ../../../outside: `..` stops at the root.
        symlink("../../../../outside", sysroot.join("etc/ssh")).expect("link");
        let config = NodeConfig {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA a".into()],
            ..NodeConfig::default()
        };
        write_machine_files(&sysroot, &run, &config, &lease()).expect("writes");
        assert!(sysroot.join("var/roothome/.ssh/authorized_keys").is_file());
        let written =
            write_in_root(&sysroot, Path::new("etc/ssh/x"), b"x", 0o644, 0o755).expect("x");
        assert_eq!(written, sysroot.join("outside/x"));
        assert_eq!(fs::read_dir(&outside).expect("outside").count(), 0);
    }

    #[test]
    fn existing_paths_resolve_through_final_links() {
        let (_dir, sysroot, _run, _outside) = tree();
        fs::create_dir_all(sysroot.join("lib/systemd")).expect("dir");
        fs::write(sysroot.join("lib/systemd/systemd"), "").expect("file");
        fs::create_dir_all(sysroot.join("sbin")).expect("dir");
        symlink("/lib/systemd/systemd", sysroot.join("sbin/init")).expect("link");
        symlink("../../../lib", sysroot.join("usr")).expect("link");
        assert_eq!(
            resolve_existing_in_root(&sysroot, Path::new("/sbin/init")).expect("init"),
            sysroot.join("lib/systemd/systemd")
        );
        assert_eq!(
            resolve_existing_in_root(&sysroot, Path::new("/usr/systemd/systemd")).expect("usr"),
            sysroot.join("lib/systemd/systemd")
        );
        assert!(matches!(
            resolve_existing_in_root(&sysroot, Path::new("/sbin/nope")),
            Err(FilesError::Io { .. })
        ));
        assert!(!sysroot.join("sbin/nope").exists(), "nothing created");
    }

    #[test]
    fn symlink_loops_and_files_in_the_way_are_errors() {
        let (_dir, sysroot, _run, _outside) = tree();
        symlink("loop2", sysroot.join("loop1")).expect("link");
        symlink("loop1", sysroot.join("loop2")).expect("link");
        assert!(matches!(
            write_in_root(&sysroot, Path::new("loop1/x"), b"", 0o644, 0o755),
            Err(FilesError::Loop(_))
        ));
        fs::write(sysroot.join("etc/notadir"), "").expect("file");
        assert!(matches!(
            write_in_root(&sysroot, Path::new("etc/notadir/x"), b"", 0o644, 0o755),
            Err(FilesError::NotADirectory(_))
        ));
        fs::create_dir(sysroot.join("etc/hostname")).expect("dir");
        assert!(write_in_root(&sysroot, Path::new("etc/hostname"), b"", 0o644, 0o755).is_err());
    }
}
