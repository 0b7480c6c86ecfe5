//! Diskless roots on the appliance: an OCI image becomes what every machine fetches.
//!
//! `build` pulls the image (every blob verified), flattens its layers into one tree, writes the
//! tree as an erofs image, cuts that into content-addressed chunks, signs a manifest of them
//! with the appliance's key, and builds the node initramfs (the node agent embedded in this
//! binary, the key, the modules the image's kernel needs). Everything lands in the root cache:
//!
//! ```text
//! <cache>/blobs/sha256/<hex>          verified OCI blobs (a pull resumes from here)
//! <cache>/serve/roots/<id>/manifest   the signed manifest, served at /roots/<id>/manifest
//! <cache>/serve/roots/<id>/vmlinuz    the kernel the machines boot
//! <cache>/serve/roots/<id>/node-initrd.img
//! <cache>/serve/roots/<id>/image      the whole erofs image, served at /roots/<id>/image: node
//!                                     agents fetch runs of chunks from it with one Range
//!                                     request each (each chunk still checked against the
//!                                     manifest), falling back to /chunks/<sha256>
//! <cache>/serve/roots/<id>/torrent    the root's hybrid v1/v2 torrent without its endpoints;
//!                                     served with the tracker and the web seed added at
//!                                     /roots/<id>/image.torrent, and without its v2 keys for
//!                                     v1-only clients at /roots/<id>/image.v1.torrent (see
//!                                     `stampede_dataplane::swarm`)
//! <cache>/serve/chunks/<sha256>       chunks of every root, shared, served at /chunks/<sha256>
//! <cache>/tmp/                        flattening spool and images being written
//! ```
//!
//! Every file under `serve/` is written whole under a temporary name (`*.part`, or in `tmp/`)
//! and renamed into place, and never written again: a changed root is a new directory renamed
//! over the old, a chunk's name is its digest. The HTTP workers rely on it: they serve these
//! files as they are on disk (mapped, and `sendfile` from the file itself, no copy), see
//! `stampede_dataplane::store::BootRoot::in_place`. Nothing else may write into `serve/`.
//!
//! `<id>` is the hex of the image manifest's digest. A root is built once per image digest,
//! kernel and node agent: `serve/roots/<id>/stamp` records what it was built from, and a start
//! with the same inputs reuses it (the manifest is signed again, in case the key changed).
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use stampede_rootfs::manifest::{
    CHUNK_SIZE, Chunk, ManifestSigningKey, RootFormat, RootManifest, Sha256Digest, SignedManifest,
    VERSION,
};
use stampede_rootfs::torrent;

/// The root's torrent as built, without `announce` and `url-list` (the HTTP workers add the
/// appliance's address when they serve it): `roots/<id>/torrent`.
pub const TORRENT_FILE: &str = stampede_dataplane::swarm::STORED_TORRENT;

/// The node agent (`node/`), built for x86_64-unknown-linux-musl by build.rs.
pub const NODE_AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stampede-node"));

/// What the node executes in the root when nothing else is said (Warewulf's default too).
pub const DEFAULT_INIT: &str = "/sbin/init";

/// Where roots are built and served from.
#[derive(Debug, Clone)]
pub struct RootCache {
    dir: PathBuf,
}

impl RootCache {
    pub fn open(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let cache = Self { dir: dir.into() };
        for sub in [cache.blobs(), cache.serve(), cache.tmp()] {
            fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        fs::create_dir_all(cache.serve().join("chunks"))?;
        fs::create_dir_all(cache.serve().join("roots"))?;
        Ok(cache)
    }

    pub fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// `boot.roots_dir`: what the HTTP workers serve.
    pub fn serve(&self) -> PathBuf {
        self.dir.join("serve")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn root_dir(&self, id: &str) -> PathBuf {
        self.serve().join("roots").join(id)
    }

    /// Records the root `stampede boot --root` serves (`<cache>/quick-root`), which no state
    /// records, so garbage collection keeps it. The last quick-mode start's root stays pinned
    /// until the next one.
    pub fn pin_quick_root(&self, id: &str) -> anyhow::Result<()> {
        write_file(&self.dir.join("quick-root"), id.as_bytes())
    }

    fn quick_root(&self) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("quick-root")).ok()?;
        let id = text.trim();
        (!id.is_empty()).then(|| id.to_owned())
    }
}

/// What [`RootCache::collect_garbage`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Root directories (`serve/roots/<id>`) removed.
    pub roots: usize,
    /// Chunk files no kept root names, removed.
    pub chunks: usize,
    /// Bytes of files removed.
    pub bytes: u64,
}

/// How long a root or chunk written to the cache is kept although nothing names it yet: a root
/// being built writes its chunks before its directory appears, and an import records its root
/// in the state only once the build returns (as git's `gc.pruneExpire` protects new objects).
pub const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl RootCache {
    /// Removes the roots not in `keep` (root ids) and older than `grace`, then the chunks no
    /// remaining root's manifest names and older than `grace`. A root directory whose
    /// `root.json` cannot be read is kept, and then no chunk is removed: it may name any.
    /// The OCI blob cache is left alone (a pull resumes from it).
    pub fn collect_garbage(
        &self,
        keep: &std::collections::BTreeSet<String>,
        grace: std::time::Duration,
    ) -> anyhow::Result<GcReport> {
        let now = std::time::SystemTime::now();
        let young = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < grace)
        };
        let mut report = GcReport::default();
        let mut keep = keep.clone();
        keep.extend(self.quick_root());
        let keep = &keep;
        let roots_dir = self.serve().join("roots");
        let mut kept = Vec::new();
        for entry in
            fs::read_dir(&roots_dir).with_context(|| format!("reading {}", roots_dir.display()))?
        {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if keep.contains(&id) || young(&meta) || !meta.is_dir() {
                kept.push(entry.path());
                continue;
            }
            let bytes = dir_bytes(&entry.path());
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            tracing::info!(root = %id, bytes, "removed a root nothing boots");
            report.roots += 1;
            report.bytes += bytes;
        }
        let mut named = std::collections::HashSet::new();
        for dir in &kept {
            if !dir.is_dir() {
                continue;
            }
            let manifest = fs::read(dir.join("root.json"))
                .ok()
                .and_then(|text| serde_json::from_slice::<RootManifest>(&text).ok());
            let Some(manifest) = manifest else {
                tracing::warn!(
                    dir = %dir.display(),
                    "a root without a readable root.json is kept, and so is every chunk"
                );
                return Ok(report);
            };
            named.extend(manifest.chunks.iter().map(|c| c.sha256.to_hex()));
        }
        let chunks_dir = self.serve().join("chunks");
        for entry in fs::read_dir(&chunks_dir)
            .with_context(|| format!("reading {}", chunks_dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            if named.contains(&name) || young(&meta) || !meta.is_file() {
                continue;
            }
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            report.chunks += 1;
            report.bytes += meta.len();
        }
        if report.roots + report.chunks > 0 {
            tracing::info!(
                roots = report.roots,
                chunks = report.chunks,
                bytes = report.bytes,
                "root cache collected"
            );
        }
        Ok(report)
    }
}

/// Bytes of the regular files under `dir` (not following links).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// How to reach a registry (`docker://` sources).
#[derive(Debug, Clone, Default)]
pub struct PullSettings {
    pub credentials: Option<(String, String)>,
    pub ca_file: Option<PathBuf>,
    pub plain_http: bool,
}

/// A root ready to serve.
#[derive(Debug, Clone)]
pub struct BuiltRoot {
    /// Hex of the image manifest's digest.
    pub id: String,
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_release: String,
    pub manifest: RootManifest,
    /// Bytes of the node initramfs, and of the part of it that is not modules.
    pub initrd_bytes: u64,
}

impl BuiltRoot {
    /// The manifest's path under `boot.roots_dir` (and its HTTP path).
    pub fn manifest_path(&self) -> String {
        format!("roots/{}/manifest", self.id)
    }

    /// What the node agent needs on the kernel command line: where the signed manifest is,
    /// and which NIC booted (`{bootif}` is filled in per machine).
    pub fn cmdline(&self, http_base: &str) -> String {
        format!(
            "stampede.manifest={http_base}/{} BOOTIF={{bootif}}",
            self.manifest_path()
        )
    }
}

/// The appliance's manifest signing key: `<dir>/manifest.key` (32 bytes, hex, mode 0600),
/// made at the first start. Nodes trust it because it is built into their initramfs.
pub fn appliance_key(dir: &Path) -> anyhow::Result<ManifestSigningKey> {
    let path = dir.join("manifest.key");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .with_context(|| format!("{} is not a 64-digit hex key", path.display()))?;
            Ok(ManifestSigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .context("reading /dev/urandom for a new manifest key")?;
            fs::create_dir_all(dir)?;
            let tmp = dir.join("manifest.key.tmp");
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                writeln!(f, "{}", hex::encode(seed))?;
                f.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            let key = ManifestSigningKey::from_bytes(&seed);
            tracing::info!(
                path = %path.display(),
                public = %hex::encode(key.verifying_key().as_bytes()),
                "made the appliance's manifest signing key"
            );
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Builds (or reuses) the root for `source`.
pub fn build(
    cache: &RootCache,
    key: &ManifestSigningKey,
    source: &str,
    kernel_override: Option<&Path>,
    pull: &PullSettings,
) -> anyhow::Result<BuiltRoot> {
    use stampede_rootfs::oci;
    let parsed = oci::Source::parse(source).with_context(|| format!("--root {source:?}"))?;
    let started = std::time::Instant::now();
    let last_report = std::cell::Cell::new(std::time::Instant::now());
    let progress = |p: oci::Progress| {
        if last_report.get().elapsed() >= std::time::Duration::from_secs(1) {
            last_report.set(std::time::Instant::now());
            tracing::info!(done = p.done, total = p.total, "pulling the root image");
        }
    };
    let mut options = oci::PullOptions::new(cache.blobs());
    options.credentials = pull.credentials.clone();
    options.ca_file = pull.ca_file.clone();
    options.plain_http = pull.plain_http;
    options.progress = &progress;
    let image = oci::pull(&parsed, &options).with_context(|| format!("importing {source}"))?;
    let id = image.manifest_digest.to_hex();
    let image_digest = oci::oci_digest(&image.manifest_digest);
    let name = source.to_owned();
    tracing::info!(
        image = %image_digest,
        layers = image.layers.len(),
        seconds = started.elapsed().as_secs_f64(),
        "root image pulled and verified"
    );

    let kernel_given = match kernel_override {
        Some(path) => {
            Some(fs::read(path).with_context(|| format!("reading the kernel {}", path.display()))?)
        }
        None => None,
    };
    let stamp = {
        let mut h = Sha256::new();
        h.update(NODE_AGENT);
        h.update(key.verifying_key().as_bytes());
        h.update(kernel_given.as_deref().unwrap_or(b"image kernel"));
        hex::encode(h.finalize())
    };
    let dir = cache.root_dir(&id);
    if let Some(built) = reuse(&dir, &id, &stamp, key)? {
        tracing::info!(root = %id, "root already built from these inputs: reused");
        return Ok(built);
    }

    // Flatten the layers (each checked against its diff_id as it is read).
    let spool = tempfile::tempdir_in(cache.tmp()).context("making a spool directory")?;
    let mut tree = stampede_rootfs::flatten::Tree::new(spool.path())?;
    for (i, layer) in image.layers.iter().enumerate() {
        let label = format!("layer {i} (sha256:{})", layer.digest);
        let file = fs::File::open(&layer.path)
            .with_context(|| format!("opening {label} at {}", layer.path.display()))?;
        let mut hashing = HashingReader::new(stampede_rootfs::layer::decompressed(file)?);
        tree.apply_layer(&label, &mut hashing)
            .with_context(|| format!("flattening {label} of {source}"))?;
        io::copy(&mut hashing, &mut io::sink())?;
        let diff_id = Sha256Digest(hashing.finish());
        if diff_id != layer.diff_id {
            bail!(
                "{label} of {source} unpacks to sha256:{diff_id}, but the image config says \
                 sha256:{}: the layer is not the one the image describes",
                layer.diff_id
            );
        }
    }

    // The kernel, and its modules in the image.
    let (kernel_bytes, release) = match kernel_given {
        Some(bytes) => {
            let release = bzimage_release(&bytes).with_context(|| {
                format!(
                    "{} is not a Linux kernel image (bzImage)",
                    kernel_override
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            })?;
            if list_dir(&tree, &format!("/lib/modules/{release}")).is_none() {
                bail!(
                    "the kernel {} is release {release}, whose modules are not in the image \
                     (no /lib/modules/{release}): use the image's own kernel, or an image with \
                     that kernel's modules",
                    kernel_override
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            (bytes, release)
        }
        None => image_kernel(&tree).with_context(|| format!("finding the kernel of {source}"))?,
    };
    let init = DEFAULT_INIT.to_owned();
    if tree.resolve(&init).is_none() {
        bail!("the image {source} has no {init}: a root needs an init to start");
    }

    // The node initramfs: modules from the image, for its kernel.
    // Through symlinks inside the image: a merged-/usr root (Debian 12) has /lib -> usr/lib.
    let read = |p: &str| {
        tree.resolve(p)
            .and_then(|at| tree.read_file(&at))
            .and_then(Result::ok)
    };
    let modules = stampede_rootfs::initramfs::choose_modules(&release, &read)
        .with_context(|| format!("choosing the node's kernel modules from {source}"))?;
    let public = hex::encode(key.verifying_key().as_bytes());
    let initrd = stampede_rootfs::initramfs::build(
        &stampede_rootfs::initramfs::NodeInitramfs {
            agent: NODE_AGENT,
            manifest_key_hex: &public,
            kernel_release: &release,
        },
        &modules,
    );

    // The erofs image, cut into chunks.
    let mut image_file = tempfile::NamedTempFile::new_in(cache.tmp())?;
    let size = stampede_rootfs::erofs::write_erofs(&tree, image_file.as_file_mut())
        .with_context(|| format!("writing the root file system of {source}"))?;
    drop(tree);
    drop(spool);
    let (chunks, pieces) = cut_chunks(image_file.as_file_mut(), &cache.serve().join("chunks"))?;
    let (torrent, swarm) = torrent::torrent(&torrent::file_name(&image_digest), &pieces);
    let manifest = RootManifest {
        version: VERSION,
        name: name.clone(),
        image: image_digest.clone(),
        format: RootFormat::Erofs,
        size,
        chunk_size: CHUNK_SIZE,
        chunks,
        init,
        kernel_release: Some(release.clone()),
        swarm: Some(swarm),
    };
    manifest
        .check_layout()
        .context("the root's own manifest does not add up")?;

    // Into place: a directory written whole, then renamed over the old one.
    let staging = cache.tmp().join(format!("root-{id}"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    write_file(&staging.join("vmlinuz"), &kernel_bytes)?;
    write_file(&staging.join("node-initrd.img"), &initrd)?;
    write_file(
        &staging.join("root.json"),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    write_file(
        &staging.join("manifest"),
        &SignedManifest::sign(&manifest, key).to_bytes(),
    )?;
    write_file(&staging.join(TORRENT_FILE), &torrent.to_bytes())?;
    image_file.as_file().sync_all()?;
    image_file
        .persist(staging.join("image"))
        .context("keeping the root's image")?;
    write_file(&staging.join("stamp"), stamp.as_bytes())?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir).with_context(|| format!("moving the root to {}", dir.display()))?;
    let module_bytes: usize = modules.iter().map(|m| m.bytes.len()).sum();
    tracing::info!(
        root = %id,
        kernel = %release,
        root_bytes = size,
        chunks = manifest.chunks.len(),
        initrd_bytes = initrd.len(),
        modules = modules.len(),
        module_bytes,
        seconds = started.elapsed().as_secs_f64(),
        "root built"
    );
    Ok(BuiltRoot {
        id: id.clone(),
        name,
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("node-initrd.img"),
        kernel_release: release,
        manifest,
        initrd_bytes: initrd.len() as u64,
    })
}

/// A root built before from the same inputs, with its manifest signed again by `key`.
fn reuse(
    dir: &Path,
    id: &str,
    stamp: &str,
    key: &ManifestSigningKey,
) -> anyhow::Result<Option<BuiltRoot>> {
    let Ok(found) = fs::read_to_string(dir.join("stamp")) else {
        return Ok(None);
    };
    if found != stamp {
        return Ok(None);
    }
    let Ok(text) = fs::read(dir.join("root.json")) else {
        return Ok(None);
    };
    let Ok(manifest) = serde_json::from_slice::<RootManifest>(&text) else {
        return Ok(None);
    };
    let chunks = dir
        .parent()
        .and_then(Path::parent)
        .map(|s| s.join("chunks"));
    let all_chunks = chunks.is_some_and(|c| {
        manifest
            .chunks
            .iter()
            .all(|k| c.join(k.sha256.to_hex()).is_file())
    });
    // Roots built before the whole image was kept are built again (the image is what node
    // agents fetch runs of chunks from), and so are roots built before they had a torrent.
    let image_whole = fs::metadata(dir.join("image")).is_ok_and(|m| m.len() == manifest.size);
    let has_torrent = manifest.swarm.is_some() && dir.join(TORRENT_FILE).is_file();
    if !all_chunks || !image_whole || !has_torrent || manifest.check_layout().is_err() {
        return Ok(None);
    }
    write_file(
        &dir.join("manifest"),
        &SignedManifest::sign(&manifest, key).to_bytes(),
    )?;
    let initrd = dir.join("node-initrd.img");
    Ok(Some(BuiltRoot {
        id: id.to_owned(),
        name: manifest.name.clone(),
        kernel: dir.join("vmlinuz"),
        initrd_bytes: fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0),
        initrd,
        kernel_release: manifest.kernel_release.clone().unwrap_or_default(),
        manifest,
    }))
}

/// The image's own kernel: `/boot/vmlinuz-<release>` whose `/lib/modules/<release>` is in the
/// image too; of several, the highest release.
fn image_kernel(tree: &stampede_rootfs::flatten::Tree) -> anyhow::Result<(Vec<u8>, String)> {
    let boot = list_dir(tree, "/boot").unwrap_or_default();
    let mut candidates: Vec<String> = boot
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    if candidates.is_empty() {
        bail!(
            "the image has no kernel (/boot/vmlinuz-<release>): give one on the command line,              or add the distribution's kernel package to the image"
        );
    }
    candidates.sort_by_key(|r| version_key(r));
    let with_modules: Vec<&String> = candidates
        .iter()
        .filter(|r| list_dir(tree, &format!("/lib/modules/{r}")).is_some())
        .collect();
    let Some(release) = with_modules.last() else {
        bail!(
            "the image's kernel{} ({}) has no modules in the image (/lib/modules/<release>)",
            if candidates.len() > 1 { "s" } else { "" },
            candidates.join(", ")
        );
    };
    let path = format!("/boot/vmlinuz-{release}");
    let bytes = tree
        .resolve(&path)
        .and_then(|at| tree.read_file(&at))
        .with_context(|| format!("{path} is not a regular file in the image"))?
        .with_context(|| format!("reading {path} from the image"))?;
    Ok((bytes, (*release).clone()))
}

/// A directory of the image, found through symlinks inside it (`/lib` -> `usr/lib` in a
/// merged-/usr root).
fn list_dir(tree: &stampede_rootfs::flatten::Tree, path: &str) -> Option<Vec<String>> {
    tree.resolve(path).and_then(|at| tree.list_dir(&at))
}

/// Sorts releases numerically where they are numbers (`6.1.0-10` after `6.1.0-9`).
fn version_key(release: &str) -> Vec<(u64, String)> {
    release
        .split(['.', '-', '+', '~'])
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_owned()),
        })
        .collect()
}

/// The release of a bzImage (`6.1.0-28-amd64`), from its setup header: `HdrS` at 0x202 and
/// the offset of the version string (minus 0x200) at 0x20e (Documentation/arch/x86/boot.rst).
pub fn bzimage_release(kernel: &[u8]) -> Option<String> {
    if kernel.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let at = u16::from_le_bytes([*kernel.get(0x20e)?, *kernel.get(0x20f)?]) as usize + 0x200;
    let text = kernel.get(at..at.checked_add(256)?.min(kernel.len()))?;
    let end = text.iter().position(|b| *b == 0 || *b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// Reads the image file in [`CHUNK_SIZE`] steps, storing each chunk once under its digest;
/// each chunk is a piece of the root's torrent, hashed for it on the way.
fn cut_chunks(
    image: &mut fs::File,
    chunk_dir: &Path,
) -> anyhow::Result<(Vec<Chunk>, torrent::PieceHashes)> {
    use std::io::Seek as _;
    image.seek(io::SeekFrom::Start(0))?;
    let mut chunks = Vec::new();
    let mut pieces = torrent::PieceHashes::new(CHUNK_SIZE);
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match image.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        let bytes = &buf[..filled];
        let sha256 = Sha256Digest::of(bytes);
        let path = chunk_dir.join(sha256.to_hex());
        if !path.is_file() {
            write_file(&path, bytes)?;
        }
        chunks.push(Chunk {
            sha256,
            size: filled as u64,
        });
        pieces.push(bytes);
        if filled < buf.len() {
            break;
        }
    }
    Ok((chunks, pieces))
}

/// Writes a file whole (temporary name, fsync, rename): a reader never sees half of it.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("part");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// SHA-256 of what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: io::Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
        }
    }

    fn finish(self) -> [u8; 32] {
        self.hash.finalize().into()
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root in the cache as a build leaves it: chunk files and `roots/<id>/root.json`.
    fn fake_root(cache: &RootCache, id: &str, image: &[u8]) {
        let manifest = RootManifest::describe(
            id,
            "sha256:00",
            RootFormat::Erofs,
            image,
            "/sbin/init",
            None,
        );
        for (i, chunk) in manifest.chunks.iter().enumerate() {
            let at = manifest.offset(i) as usize;
            let bytes = &image[at..at + chunk.size as usize];
            fs::write(
                cache.serve().join("chunks").join(chunk.sha256.to_hex()),
                bytes,
            )
            .unwrap();
        }
        let dir = cache.root_dir(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("root.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    }

    fn age_everything(dir: &Path, by: std::time::Duration) {
        let then = std::time::SystemTime::now() - by;
        for entry in fs::read_dir(dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                age_everything(&entry.path(), by);
            }
            fs::File::open(entry.path())
                .unwrap()
                .set_modified(then)
                .unwrap();
        }
    }

    #[test]
    fn garbage_collection_keeps_named_and_young_roots_and_their_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RootCache::open(dir.path()).unwrap();
        let shared: Vec<u8> = (0..CHUNK_SIZE as usize).map(|i| (i % 251) as u8).collect();
        let mut kept_image = shared.clone();
        kept_image.extend_from_slice(b"kept's own tail");
        let mut gone_image = shared.clone();
        gone_image.extend_from_slice(b"gone's own tail, longer");
        fake_root(&cache, "kept", &kept_image);
        fake_root(&cache, "gone", &gone_image);
        let keep: std::collections::BTreeSet<String> = ["kept".to_owned()].into();
        // Everything is young: nothing goes, whatever names it.
        let none = cache.collect_garbage(&keep, GC_GRACE).unwrap();
        assert_eq!(none, GcReport::default());
        age_everything(&cache.serve(), std::time::Duration::from_secs(3600));
        // A root being built now: its chunk is young and nothing names it yet.
        let building = cache.serve().join("chunks").join("f".repeat(64));
        fs::write(&building, b"in progress").unwrap();
        let report = cache.collect_garbage(&keep, GC_GRACE).unwrap();
        assert_eq!((report.roots, report.chunks), (1, 1), "{report:?}");
        assert!(!cache.root_dir("gone").exists());
        assert!(cache.root_dir("kept").join("root.json").is_file());
        assert!(building.is_file(), "a young chunk is kept");
        let left: Vec<_> = fs::read_dir(cache.serve().join("chunks"))
            .unwrap()
            .collect();
        assert_eq!(
            left.len(),
            3,
            "the shared chunk, kept's tail, the young one"
        );
        // A root whose root.json is unreadable keeps every chunk.
        fs::write(cache.root_dir("kept").join("root.json"), b"{").unwrap();
        age_everything(&cache.serve(), std::time::Duration::from_secs(3600));
        let report = cache.collect_garbage(&keep, GC_GRACE).unwrap();
        assert_eq!(report.chunks, 0);
    }

    /// Debian 12's merged /usr: `/lib` is a symlink to `usr/lib`, and the kernel's modules are
    /// found through it.
    #[test]
    fn the_image_kernel_is_found_through_a_merged_usr() {
        let mut layer = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_size(data.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            if let Some(target) = link {
                header.set_link_name(target).expect("link name");
            }
            layer.append_data(&mut header, path, data).expect("append");
        };
        add(
            "usr/lib/modules/6.1.0-t/",
            tar::EntryType::Directory,
            b"",
            None,
        );
        add(
            "usr/lib/modules/6.1.0-t/modules.dep",
            tar::EntryType::Regular,
            b"",
            None,
        );
        add("lib", tar::EntryType::Symlink, b"", Some("usr/lib"));
        add(
            "boot/vmlinuz-6.1.0-t",
            tar::EntryType::Regular,
            b"kernel",
            None,
        );
        let bytes = layer.into_inner().expect("tar");
        let spool = tempfile::tempdir().expect("spool");
        let mut tree = stampede_rootfs::flatten::Tree::new(spool.path()).expect("tree");
        tree.apply_layer("layer 0", bytes.as_slice())
            .expect("layer");
        let (kernel, release) = image_kernel(&tree).expect("kernel found");
        assert_eq!(
            (kernel.as_slice(), release.as_str()),
            (&b"kernel"[..], "6.1.0-t")
        );
    }

    #[test]
    fn releases_sort_numerically() {
        let mut r = vec!["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-30-amd64"];
        r.sort_by_key(|r| version_key(r));
        assert_eq!(r, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]);
    }

    #[test]
    fn a_bzimage_header_names_its_release() {
        let mut k = vec![0u8; 0x1000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        k[0x500..0x500 + 20].copy_from_slice(b"6.1.0-57-amd64 (deb)");
        assert_eq!(bzimage_release(&k).as_deref(), Some("6.1.0-57-amd64"));
        k[0x202] = b'X';
        assert_eq!(bzimage_release(&k), None);
        assert_eq!(bzimage_release(b"short"), None);
    }
}
