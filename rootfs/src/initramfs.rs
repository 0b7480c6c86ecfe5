//! The node initramfs: Stampede's node agent as `/init`, the appliance's manifest key, and
//! exactly the kernel modules a diskless root needs, taken from the image's own
//! `/lib/modules/<release>` with their dependencies from `modules.dep`.
//!
//! Layout (what the node agent reads):
//!
//! | path | what |
//! |---|---|
//! | `/init` | the node agent, a static binary |
//! | `/stampede/manifest.pub` | the appliance's ed25519 public key, hex |
//! | `/stampede/modules` | module paths (relative to `/`), one a line, in load order |
//! | `/lib/modules/<release>/...ko` | the modules, decompressed (the agent calls `finit_module` on them as they are) |
//!
//! Modules are decompressed here rather than on the node: the agent then needs no xz or zstd
//! decoder, and the initramfs as a whole is compressed once anyway.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};

/// Modules a diskless root cannot do without: the file system of the root image, the RAM disk
/// it is written to, and the overlay that makes it writable. Built-in modules count as present.
pub const REQUIRED_MODULES: &[&str] = &["erofs", "brd", "overlay"];

/// NIC drivers put in when the image has them. At least one must be there: a node that cannot
/// reach the appliance cannot fetch its root. The common server and virtual NICs; QEMU's e1000
/// and virtio-net first.
pub const NIC_MODULES: &[&str] = &[
    "e1000",
    "e1000e",
    "virtio_net",
    "virtio_pci",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "tg3",
    "bnxt_en",
    "r8169",
    "vmxnet3",
    "mlx4_en",
    "mlx5_core",
];

/// NIC drivers that must be found (the lab's and the demo's machines use them).
pub const REQUIRED_NIC_MODULES: &[&str] = &["e1000", "virtio_net"];

/// What the initramfs is made of.
#[derive(Debug, Clone)]
pub struct NodeInitramfs<'a> {
    /// The node agent binary (static).
    pub agent: &'a [u8],
    /// The appliance's manifest key, hex.
    pub manifest_key_hex: &'a str,
    /// The kernel release whose modules are taken (`6.1.0-28-amd64`).
    pub kernel_release: &'a str,
}

/// A module chosen for the initramfs: its path under `/lib/modules/<release>/` and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenModule {
    pub name: String,
    /// Path relative to `/lib/modules/<release>/`, without any compression suffix.
    pub path: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(
        "the image has no /lib/modules/{release}/modules.dep: its kernel modules are not in the \
         image (a kernel given on the command line needs its modules inside the image)"
    )]
    NoModules { release: String },
    #[error(
        "module {module} is neither in /lib/modules/{release}/modules.dep nor built in: the \
         image's kernel cannot mount a diskless root without it"
    )]
    MissingModule { module: String, release: String },
    #[error(
        "none of the NIC drivers {wanted:?} is in /lib/modules/{release}: a node could not reach \
         the appliance"
    )]
    NoNicDriver {
        wanted: Vec<String>,
        release: String,
    },
    #[error("module file {path} named in modules.dep is missing from the image")]
    MissingModuleFile { path: String },
    #[error("module {path} cannot be decompressed: {reason}")]
    Decompress { path: String, reason: String },
    #[error("modules.dep of {release} has a path that leaves the module directory: {path:?}")]
    BadPath { release: String, path: String },
}

/// The module's name as modprobe knows it: file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module path to its dependencies' paths (all relative to the release dir).
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// Chooses the modules for a node initramfs from an image's `/lib/modules/<release>`, in load
/// order (every dependency before what needs it). `read` returns a file of the image by its
/// absolute path.
pub fn choose_modules(
    release: &str,
    read: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<ChosenModule>, InitramfsError> {
    let base = format!("/lib/modules/{release}");
    let dep_text = read(&format!("{base}/modules.dep")).ok_or(InitramfsError::NoModules {
        release: release.to_owned(),
    })?;
    let deps = parse_modules_dep(&String::from_utf8_lossy(&dep_text));
    let builtin: BTreeSet<String> = read(&format!("{base}/modules.builtin"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(module_name)
                .collect()
        })
        .unwrap_or_default();
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();

    let mut wanted: Vec<&String> = Vec::new();
    for name in REQUIRED_MODULES.iter().chain(REQUIRED_NIC_MODULES) {
        match by_name.get(*name) {
            Some(path) => wanted.push(path),
            None if builtin.contains(*name) => {}
            None => {
                return Err(InitramfsError::MissingModule {
                    module: (*name).to_owned(),
                    release: release.to_owned(),
                });
            }
        }
    }
    let mut nic_found = REQUIRED_NIC_MODULES.iter().any(|n| builtin.contains(*n));
    for name in NIC_MODULES {
        if let Some(path) = by_name.get(*name) {
            nic_found = true;
            if !wanted.contains(path) {
                wanted.push(path);
            }
        } else if builtin.contains(*name) {
            nic_found = true;
        }
    }
    if !nic_found {
        return Err(InitramfsError::NoNicDriver {
            wanted: NIC_MODULES.iter().map(|s| (*s).to_owned()).collect(),
            release: release.to_owned(),
        });
    }

    // Soft dependencies (modules.softdep `pre:`), which modprobe loads first although no symbol
    // ties them: erofs needs libcrc32c, and libcrc32c needs a crc32c implementation
    // (crc32c_generic, crc32c_intel), found by name or through modules.alias.
    let text = |name: &str| {
        read(&format!("{base}/{name}"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let mut soft: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text("modules.softdep").lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(module) = words.next() else { continue };
        let mut pre = false;
        for word in words {
            match word {
                "pre:" => pre = true,
                "post:" => pre = false,
                name if pre => soft
                    .entry(module_name(module))
                    .or_default()
                    .push(module_name(name)),
                _ => {}
            }
        }
    }
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text("modules.alias").lines() {
        let mut words = line.split_whitespace();
        if let (Some("alias"), Some(alias), Some(module)) =
            (words.next(), words.next(), words.next())
        {
            aliases
                .entry(alias.replace('-', "_"))
                .or_default()
                .push(module_name(module));
        }
    }
    let providers = |name: &str| -> Vec<&String> {
        match by_name.get(name) {
            Some(path) => vec![*path],
            None => aliases
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|m| by_name.get(m.as_str()).copied())
                .collect(),
        }
    };

    // Depth-first: modules.dep lists every (transitive) dependency of a module; loading them
    // dependencies-first (soft ones before hard ones), each once, is what modprobe does.
    struct Graph<'g> {
        deps: &'g BTreeMap<String, Vec<String>>,
        soft: &'g BTreeMap<String, Vec<String>>,
        providers: &'g dyn Fn(&str) -> Vec<&'g String>,
    }
    fn visit(
        path: &str,
        graph: &Graph<'_>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 || !seen.insert(path.to_owned()) {
            return;
        }
        for name in graph.soft.get(&module_name(path)).into_iter().flatten() {
            for provider in (graph.providers)(name) {
                visit(provider, graph, seen, order, depth + 1);
            }
        }
        if let Some(list) = graph.deps.get(path) {
            // modules.dep lists a module's dependencies nearest first; load the farthest first.
            for dep in list.iter().rev() {
                visit(dep, graph, seen, order, depth + 1);
            }
        }
        order.push(path.to_owned());
    }
    let graph = Graph {
        deps: &deps,
        soft: &soft,
        providers: &providers,
    };
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for path in wanted {
        visit(path, &graph, &mut seen, &mut order, 0);
    }

    order
        .into_iter()
        .map(|rel| {
            if rel.starts_with('/') || rel.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(InitramfsError::BadPath {
                    release: release.to_owned(),
                    path: rel,
                });
            }
            let raw = read(&format!("{base}/{rel}")).ok_or_else(|| {
                InitramfsError::MissingModuleFile {
                    path: format!("{base}/{rel}"),
                }
            })?;
            let (path, bytes) = decompress_module(&rel, raw)?;
            Ok(ChosenModule {
                name: module_name(&rel),
                path,
                bytes,
            })
        })
        .collect()
}

/// Largest module accepted after decompression: the biggest in-tree modules (GPU drivers) are
/// tens of MiB; nothing a root needs comes near this.
const MAX_MODULE_BYTES: u64 = 256 << 20;

fn decompress_module(path: &str, raw: Vec<u8>) -> Result<(String, Vec<u8>), InitramfsError> {
    let fail = |reason: String| InitramfsError::Decompress {
        path: path.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    if let Some(stem) = path.strip_suffix(".xz") {
        let mut input = std::io::BufReader::new(raw.as_slice());
        lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| fail(e.to_string()))?;
        return Ok((stem.to_owned(), out));
    }
    if let Some(stem) = path.strip_suffix(".zst") {
        let decoder = ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| fail(e.to_string()))?;
        decoder
            .take(MAX_MODULE_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        return Ok((stem.to_owned(), out));
    }
    if let Some(stem) = path.strip_suffix(".gz") {
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_MODULE_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        return Ok((stem.to_owned(), out));
    }
    Ok((path.to_owned(), raw))
}

/// Builds the node initramfs: a gzip-compressed newc archive.
pub fn build(spec: &NodeInitramfs<'_>, modules: &[ChosenModule]) -> Vec<u8> {
    let mut archive = NewcWriter::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "sysroot",
        "stampede",
        "lib",
        "lib/modules",
    ] {
        archive.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for PID 1 before /init runs: without the node, a static
    // initramfs gets no console output until devtmpfs is mounted.
    archive.char_device("dev/console", 0o600, (5, 1));
    archive.file("init", 0o755, spec.agent);
    archive.file(
        "stampede/manifest.pub",
        0o644,
        format!("{}\n", spec.manifest_key_hex).as_bytes(),
    );
    let release_dir = format!("lib/modules/{}", spec.kernel_release);
    let mut made: BTreeSet<String> = BTreeSet::new();
    made.insert("lib/modules".into());
    let mut list = String::new();
    for module in modules {
        let full = format!("{release_dir}/{}", module.path);
        // Parent directories, each once, outermost first.
        let mut at = 0;
        while let Some(slash) = full[at..].find('/') {
            let dir = &full[..at + slash];
            if made.insert(dir.to_owned()) {
                archive.dir(dir, 0o755);
            }
            at += slash + 1;
        }
        archive.file(&full, 0o644, &module.bytes);
        list.push_str(&full);
        list.push('\n');
    }
    archive.file("stampede/modules", 0o644, list.as_bytes());
    let raw = archive.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// A newc (`070701`) cpio archive, the format the kernel unpacks initramfs from
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
#[derive(Debug, Default)]
pub struct NewcWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl NewcWriter {
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.member(path, 0o040_000 | perm, 2, &[], (0, 0));
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.member(path, 0o100_000 | perm, 1, data, (0, 0));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.member(path, 0o120_777, 1, target.as_bytes(), (0, 0));
    }

    pub fn char_device(&mut self, path: &str, perm: u32, rdev: (u32, u32)) {
        self.member(path, 0o020_000 | perm, 1, &[], rdev);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = u32::MAX; // the trailer's inode number is never looked at
        self.member("TRAILER!!!", 0, 1, &[], (0, 0));
        self.out
    }

    fn member(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8], rdev: (u32, u32)) {
        let path = path.trim_start_matches('/');
        self.next_ino = self.next_ino.wrapping_add(1);
        let size = u32::try_from(data.len()).expect("an initramfs member is under 4 GiB");
        let name_size = u32::try_from(path.len() + 1).expect("a short path");
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs make the same archive
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name_size,
            0, // check: only the "070702" format has one
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const RELEASE: &str = "6.1.0-test-amd64";

    fn image(files: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(p, b)| (format!("/lib/modules/{RELEASE}/{p}"), b.to_vec()))
            .collect()
    }

    fn standard() -> HashMap<String, Vec<u8>> {
        let dep = "kernel/fs/erofs/erofs.ko:\n\
                   kernel/drivers/block/brd.ko:\n\
                   kernel/fs/overlayfs/overlay.ko:\n\
                   kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n\
                   kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
                   kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
                   kernel/net/core/failover.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko\n\
                   kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
                   kernel/sound/snd.ko:\n";
        image(&[
            ("modules.dep", dep.as_bytes()),
            ("kernel/fs/erofs/erofs.ko", b"erofs"),
            ("kernel/drivers/block/brd.ko", b"brd"),
            ("kernel/fs/overlayfs/overlay.ko", b"overlay"),
            ("kernel/drivers/net/ethernet/intel/e1000/e1000.ko", b"e1000"),
            ("kernel/drivers/net/virtio_net.ko", b"virtio_net"),
            ("kernel/drivers/net/net_failover.ko", b"net_failover"),
            ("kernel/net/core/failover.ko", b"failover"),
            ("kernel/drivers/virtio/virtio_pci.ko", b"virtio_pci"),
            ("kernel/drivers/virtio/virtio_pci_modern_dev.ko", b"vpmd"),
            ("kernel/sound/snd.ko", b"snd"),
        ])
    }

    fn choose(files: &HashMap<String, Vec<u8>>) -> Result<Vec<ChosenModule>, InitramfsError> {
        choose_modules(RELEASE, &|p: &str| files.get(p).cloned())
    }

    #[test]
    fn modules_come_with_their_dependencies_first_and_nothing_else() {
        let chosen = choose(&standard()).expect("chosen");
        let names: Vec<&str> = chosen.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
        };
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
        for n in ["erofs", "brd", "overlay", "e1000"] {
            pos(n);
        }
        assert!(!names.contains(&"snd"), "only what a root needs: {names:?}");
        assert_eq!(names.len(), 9, "each module once: {names:?}");
    }

    #[test]
    fn soft_dependencies_come_first_through_their_aliases() {
        let mut files = standard();
        let dep_path = format!("/lib/modules/{RELEASE}/modules.dep");
        let dep = String::from_utf8(files[&dep_path].clone())
            .expect("utf8")
            .replace(
                "kernel/fs/erofs/erofs.ko:\n",
                "kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko\n\
                 kernel/lib/libcrc32c.ko:\n\
                 kernel/crypto/crc32c_generic.ko:\n\
                 kernel/arch/x86/crypto/crc32c-intel.ko:\n",
            );
        files.insert(dep_path, dep.into_bytes());
        for (p, b) in [
            ("kernel/lib/libcrc32c.ko", "libcrc32c"),
            ("kernel/crypto/crc32c_generic.ko", "crc32c_generic"),
            ("kernel/arch/x86/crypto/crc32c-intel.ko", "crc32c_intel"),
        ] {
            files.insert(format!("/lib/modules/{RELEASE}/{p}"), b.as_bytes().to_vec());
        }
        files.insert(
            format!("/lib/modules/{RELEASE}/modules.softdep"),
            b"# Soft dependencies\nsoftdep libcrc32c pre: crc32c\n".to_vec(),
        );
        files.insert(
            format!("/lib/modules/{RELEASE}/modules.alias"),
            b"alias crypto-crc32c crc32c_intel\nalias crc32c crc32c_intel\n\
              alias crc32c crc32c_generic\nalias crc32c-generic crc32c_generic\n"
                .to_vec(),
        );
        let chosen = choose(&files).expect("chosen");
        let names: Vec<&str> = chosen.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
        };
        assert!(pos("crc32c_intel") < pos("libcrc32c"), "{names:?}");
        assert!(pos("crc32c_generic") < pos("libcrc32c"), "{names:?}");
        assert!(pos("libcrc32c") < pos("erofs"), "{names:?}");
    }

    #[test]
    fn a_missing_required_module_is_named() {
        let mut files = standard();
        files.retain(|p, _| !p.ends_with("brd.ko"));
        let dep_path = format!("/lib/modules/{RELEASE}/modules.dep");
        let dep = String::from_utf8(files[&dep_path].clone())
            .expect("utf8")
            .replace("kernel/drivers/block/brd.ko:\n", "");
        files.insert(dep_path, dep.into_bytes());
        match choose(&files) {
            Err(InitramfsError::MissingModule { module, .. }) => assert_eq!(module, "brd"),
            other => panic!("{other:?}"),
        }
        // Built in counts as present.
        files.insert(
            format!("/lib/modules/{RELEASE}/modules.builtin"),
            b"kernel/drivers/block/brd.ko\n".to_vec(),
        );
        choose(&files).expect("brd built in");
    }

    #[test]
    fn an_image_without_modules_says_so() {
        match choose(&HashMap::new()) {
            Err(e @ InitramfsError::NoModules { .. }) => {
                assert!(e.to_string().contains("not in the image"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compressed_modules_are_unpacked() {
        let mut files = standard();
        let path = format!("/lib/modules/{RELEASE}/kernel/fs/erofs/erofs.ko");
        files.remove(&path);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"erofs-module-bytes").expect("gz");
        files.insert(format!("{path}.gz"), gz.finish().expect("gz"));
        let dep_path = format!("/lib/modules/{RELEASE}/modules.dep");
        let dep = String::from_utf8(files[&dep_path].clone())
            .expect("utf8")
            .replace("erofs.ko:", "erofs.ko.gz:");
        files.insert(dep_path, dep.into_bytes());
        let chosen = choose(&files).expect("chosen");
        let erofs = chosen.iter().find(|m| m.name == "erofs").expect("erofs");
        assert_eq!(erofs.path, "kernel/fs/erofs/erofs.ko");
        assert_eq!(erofs.bytes, b"erofs-module-bytes");
    }

    #[test]
    fn the_archive_lists_init_key_and_modules_in_order() {
        let chosen = choose(&standard()).expect("chosen");
        let gz = build(
            &NodeInitramfs {
                agent: b"\x7fELF-agent",
                manifest_key_hex: "ab12",
                kernel_release: RELEASE,
            },
            &chosen,
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut raw)
            .expect("gunzip");
        // Walk the newc members.
        let mut at = 0;
        let mut members = Vec::new();
        loop {
            assert_eq!(&raw[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&raw[at + 6 + i * 8..at + 14 + i * 8]).expect("hex");
                usize::from_str_radix(s, 16).expect("hex")
            };
            let (mode, size, name_size) = (field(1), field(6), field(11));
            let name_start = at + 110;
            let name = std::str::from_utf8(&raw[name_start..name_start + name_size - 1])
                .expect("name")
                .to_owned();
            let data_start = (name_start + name_size).next_multiple_of(4);
            let data = raw[data_start..data_start + size].to_vec();
            at = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            members.push((name, mode, data));
        }
        let get = |n: &str| {
            members
                .iter()
                .find(|m| m.0 == n)
                .unwrap_or_else(|| panic!("{n} not in archive"))
        };
        assert_eq!(get("init").2, b"\x7fELF-agent");
        assert_eq!(get("init").1, 0o100_755);
        assert_eq!(get("stampede/manifest.pub").2, b"ab12\n");
        assert_eq!(get("dev/console").1, 0o020_600);
        let list = String::from_utf8(get("stampede/modules").2.clone()).expect("utf8");
        let listed: Vec<&str> = list.lines().collect();
        assert_eq!(listed.len(), chosen.len());
        for path in &listed {
            get(path);
        }
        assert!(listed[0].starts_with(&format!("lib/modules/{RELEASE}/")));
        // Every member's parent directory comes before it.
        for (i, (name, _, _)) in members.iter().enumerate() {
            if let Some((parent, _)) = name.rsplit_once('/') {
                let p = members.iter().position(|m| m.0 == parent);
                assert!(p.is_some_and(|p| p < i), "{parent} before {name}");
            }
        }
    }
}
