//! Diskless roots through the control plane and the configuration file.
//!
//! - [`RootImporter`] is the control plane's [`RootBuilder`]: `POST /api/v1/images/imports`
//!   with an OCI source (`stampede ctl images import oci-archive:FILE`) pulls the image into the
//!   root cache's blob cache with its progress reported, then builds the root with
//!   [`roots::build`] (which finds every blob verified in the cache) on the import's thread.
//! - [`resolve`] turns every profile that names a root (`root = "NAME"` or
//!   `"sha256:DIGEST"`, from the file or the API) into an ordinary profile before the
//!   configuration is validated, at start and at every reload: the root's kernel (or the
//!   profile's own, when it is the same release) and node initramfs, served as boot files, and
//!   the manifest's URL and `BOOTIF={bootif}` on the command line. An unknown root is an error
//!   naming the profile and the root, so a reload is refused and the previous plan kept.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use stampede_control::FleetSnapshot;
use stampede_control::imports::{
    BuiltRootRecord, RootBuildError, RootBuildProgress, RootBuildRequest, RootBuilder,
};
use stampede_control::model::RootImage;
use stampede_dataplane::config::{defaults, wire};
use stampede_rootfs::manifest::ManifestSigningKey;
use stampede_rootfs::oci;

use crate::roots::{self, RootCache};

/// Builds roots for the control plane's imports, one at a time: two builds of one image would
/// share its staging directory, and each is CPU and disk bound anyway.
pub struct RootImporter {
    cache: RootCache,
    key: ManifestSigningKey,
    building: Mutex<()>,
}

impl std::fmt::Debug for RootImporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootImporter")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl RootImporter {
    pub fn new(cache: RootCache, key: ManifestSigningKey) -> Self {
        Self {
            cache,
            key,
            building: Mutex::new(()),
        }
    }

    fn build_root(
        &self,
        request: &RootBuildRequest<'_>,
        progress: &dyn Fn(RootBuildProgress),
    ) -> anyhow::Result<BuiltRootRecord> {
        let source = oci::Source::parse(request.source)?;
        // The CA goes to the pull as a file; it lives as long as the build.
        let ca_file = match request.ca_pem {
            Some(pem) => {
                let mut file = tempfile::Builder::new()
                    .prefix("stampede-registry-ca-")
                    .tempfile()
                    .context("writing the registry CA to a temporary file")?;
                std::io::Write::write_all(&mut file, pem.as_bytes())?;
                Some(file)
            }
            None => None,
        };
        let pull = roots::PullSettings {
            credentials: request.credentials.clone(),
            ca_file: ca_file.as_ref().map(|f| f.path().to_owned()),
            plain_http: request.plain_http,
        };
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        // The pull proper, with its progress: every blob verified into the cache (an
        // interrupted pull resumes from there). `roots::build` then reads the same image from
        // the cache, checking each blob again, without fetching.
        let report = |p: oci::Progress| {
            progress(RootBuildProgress::Pulling {
                done: p.done,
                total: p.total,
            });
        };
        let mut options = oci::PullOptions::new(self.cache.blobs());
        options.credentials = pull.credentials.clone();
        options.ca_file = pull.ca_file.clone();
        options.plain_http = pull.plain_http;
        options.progress = &report;
        oci::pull(&source, &options).with_context(|| format!("importing {}", request.source))?;
        progress(RootBuildProgress::Building);
        let built = roots::build(&self.cache, &self.key, request.source, None, &pull)?;
        Ok(BuiltRootRecord {
            image: built.manifest.image.clone(),
            root_id: built.id.clone(),
            kernel_release: built.kernel_release.clone(),
            chunks: built.manifest.chunks.len() as u64,
            bytes: built.manifest.size,
            initrd_bytes: built.initrd_bytes,
            kernel: built.kernel.clone(),
            initrd: built.initrd.clone(),
            roots_dir: self.cache.serve(),
        })
    }
}

impl RootBuilder for RootImporter {
    fn check_source(&self, source: &str) -> Result<String, String> {
        let parsed = oci::Source::parse(source).map_err(|e| e.to_string())?;
        Ok(default_name(&parsed))
    }

    fn build(
        &self,
        request: &RootBuildRequest<'_>,
        progress: &dyn Fn(RootBuildProgress),
    ) -> Result<BuiltRootRecord, RootBuildError> {
        // `{:#}`: the whole chain, e.g. "importing oci:..: layer 1 of 2 (sha256:..): ...".
        self.build_root(request, progress)
            .map_err(|e| RootBuildError(format!("{e:#}")))
    }

    fn collect_garbage(&self, keep: &BTreeSet<String>) -> Result<(), RootBuildError> {
        // Not while a build runs here (its root is not recorded yet; the grace period covers
        // builds of other processes).
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        self.cache
            .collect_garbage(keep, roots::GC_GRACE)
            .map(drop)
            .map_err(|e| RootBuildError(format!("{e:#}")))
    }
}

/// The name a root gets when the import gives none: the repository (without Docker Hub's
/// `library/`) and tag of a registry or docker-archive reference, else the file or directory
/// name, with the tag when one is given.
pub fn default_name(source: &oci::Source) -> String {
    let file_name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let with_tag = |name: String, tag: &Option<String>| match tag {
        Some(tag) => format!("{name}:{tag}"),
        None => name,
    };
    match source {
        oci::Source::OciLayout { dir, tag } => with_tag(file_name(dir), tag),
        oci::Source::OciArchive { file, tag } => with_tag(file_name(file), tag),
        oci::Source::DockerArchive {
            reference: Some(reference),
            ..
        } => reference.clone(),
        oci::Source::DockerArchive {
            file,
            reference: None,
        } => file_name(file),
        oci::Source::Registry(r) => {
            let repository = match r.repository.strip_prefix("library/") {
                Some(official) if r.registry == "docker.io" => official,
                _ => &r.repository,
            };
            match &r.reference {
                oci::Reference::Tag(tag) => format!("{repository}:{tag}"),
                oci::Reference::Digest(d) => format!("{repository}@{}", oci::oci_digest(d)),
            }
        }
    }
}

/// What the node agent needs on the kernel command line (the contract of
/// [`roots::BuiltRoot::cmdline`]): the signed manifest's URL and the boot NIC.
fn node_cmdline(http_base: &str, root_id: &str) -> String {
    format!("stampede.manifest={http_base}/roots/{root_id}/manifest BOOTIF={{bootif}}")
}

/// Fills in every profile of `config` that names a root, against `fleet`'s roots; the
/// manifest URL uses the server's address (`server.address`, else `iface`'s) and HTTP port.
pub fn resolve(
    config: &mut wire::Config,
    fleet: &FleetSnapshot,
    iface: &str,
) -> anyhow::Result<()> {
    if config.profiles.iter().all(|p| p.root.is_none()) {
        serve_roots(config, &fleet.roots);
        return Ok(());
    }
    let server = match config.server.address {
        Some(ip) => ip,
        None => {
            stampede_dataplane::engine::interface_ipv4(iface)
                .with_context(|| format!("the address of {iface}, for the root manifests' URLs"))?
                .0
        }
    };
    let port = config.server.http_port.unwrap_or(defaults::HTTP_PORT);
    resolve_with(config, &fleet.roots, server, port)
}

fn resolve_with(
    config: &mut wire::Config,
    roots: &BTreeMap<String, RootImage>,
    server: Ipv4Addr,
    port: u16,
) -> anyhow::Result<()> {
    let http_base = format!("http://{server}:{port}");
    let snapshot = FleetSnapshot {
        roots: roots.clone(),
        ..FleetSnapshot::default()
    };
    let mut roots_dir: Option<PathBuf> = None;
    for i in 0..config.profiles.len() {
        let Some(reference) = config.profiles[i].root.clone() else {
            continue;
        };
        let name = config.profiles[i].name.clone();
        let at = format!("profiles[{i}] ({name:?})");
        let root = snapshot.root(&reference).with_context(|| {
            format!(
                "{at}: root {reference:?} is not an imported root image (stampede ctl images \
                 list shows them; stampede ctl images import SOURCE --name NAME makes one)"
            )
        })?;
        for file in [&root.kernel, &root.initrd] {
            if !Path::new(file).is_file() {
                bail!(
                    "{at}: root {reference:?} (image {}) has no {file} any more: import it again",
                    root.image
                );
            }
        }
        let dir = PathBuf::from(&root.roots_dir);
        match &roots_dir {
            Some(d) if *d != dir => bail!(
                "{at}: root {reference:?} is served from {}, other roots from {}: one appliance \
                 serves one root directory (import it again on this appliance)",
                dir.display(),
                d.display()
            ),
            _ => roots_dir = Some(dir),
        }
        let kernel_name = format!("roots/{}/vmlinuz", root.root_id);
        let initrd_name = format!("roots/{}/node-initrd.img", root.root_id);
        config
            .boot
            .files
            .insert(kernel_name.clone(), PathBuf::from(&root.kernel));
        config
            .boot
            .files
            .insert(initrd_name.clone(), PathBuf::from(&root.initrd));
        let root_args = node_cmdline(&http_base, &root.root_id);
        let append = |cmdline: &str| format!("{cmdline} {root_args}").trim().to_owned();

        let profile = config.profiles[i].clone();
        if !profile.initrds.is_empty() {
            bail!(
                "{at}.initrds: a profile with a root boots the root's node initramfs; give no \
                 initrds"
            );
        }
        let kernel = match &profile.kernel {
            Some(kernel) => {
                check_kernel_override(config, &at, kernel, &reference, root)?;
                kernel.clone()
            }
            None => kernel_name.clone(),
        };
        let mut arch = BTreeMap::new();
        for (arch_name, v) in &profile.arch {
            if v.initrds.as_ref().is_some_and(|i| !i.is_empty()) {
                bail!(
                    "{at}.arch.{arch_name}.initrds: a profile with a root boots the root's node \
                     initramfs; give no initrds"
                );
            }
            if let Some(k) = &v.kernel {
                check_kernel_override(
                    config,
                    &format!("{at}.arch.{arch_name}"),
                    k,
                    &reference,
                    root,
                )?;
            }
            arch.insert(
                arch_name.clone(),
                wire::ArchVariant {
                    kernel: v.kernel.clone(),
                    initrds: None,
                    cmdline: v.cmdline.as_deref().map(append),
                },
            );
        }
        config.profiles[i] = wire::Profile {
            name,
            root: None,
            kernel: Some(kernel),
            initrds: vec![initrd_name],
            cmdline: append(&profile.cmdline),
            arch,
            secure_boot: profile.secure_boot.clone(),
        };
        tracing::debug!(profile = %config.profiles[i].name, root = %reference, id = %root.root_id, "profile boots a diskless root");
    }
    let Some(dir) = roots_dir else {
        serve_roots(config, roots);
        return Ok(());
    };
    match &config.boot.roots_dir {
        Some(set) if *set != dir => bail!(
            "boot.roots_dir is {}, but the imported roots profiles name are served from {}: \
             leave boot.roots_dir out",
            set.display(),
            dir.display()
        ),
        _ => config.boot.roots_dir = Some(dir),
    }
    Ok(())
}

/// Imported roots stay served (manifest and chunks) while no profile names them: a machine
/// may be in the middle of fetching one when its profile changes.
fn serve_roots(config: &mut wire::Config, roots: &BTreeMap<String, RootImage>) {
    if config.boot.roots_dir.is_none()
        && let Some(root) = roots.values().next()
    {
        config.boot.roots_dir = Some(PathBuf::from(&root.roots_dir));
    }
}

/// A profile's own kernel with a root: its modules must be the ones the root's node initramfs
/// carries and the image holds, so it must be the image kernel's release.
fn check_kernel_override(
    config: &wire::Config,
    at: &str,
    kernel: &str,
    reference: &str,
    root: &RootImage,
) -> anyhow::Result<()> {
    let path = match config.boot.files.get(kernel) {
        Some(path) => path.clone(),
        None => match &config.boot.root {
            Some(dir) => dir.join(kernel),
            None => bail!("{at}.kernel: {kernel:?} is not in boot.files, and boot.root is not set"),
        },
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("{at}.kernel: reading {}", path.display()))?;
    let release = roots::bzimage_release(&bytes).with_context(|| {
        format!(
            "{at}.kernel: {} is not a Linux kernel image (bzImage)",
            path.display()
        )
    })?;
    if release != root.kernel_release {
        bail!(
            "{at}.kernel: {} is release {release}, but root {reference:?} (image {}) holds the \
             modules of {} in its node initramfs: its modules are not in the root; leave kernel \
             out to boot the image's own, or import an image with that kernel",
            path.display(),
            root.image,
            root.kernel_release
        );
    }
    Ok(())
}

/// For reading `[server]` and `[xdp]` before the state is open: every root profile stands in
/// as a placeholder kernel (nothing is served from this configuration).
pub fn preview(config: &mut wire::Config) {
    *config = std::mem::take(config).with_root_placeholders();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path, name: &str, release: &str) -> RootImage {
        let id = "ab".repeat(32);
        let served = dir.join("serve");
        let root_dir = served.join("roots").join(&id);
        std::fs::create_dir_all(&root_dir).expect("root dir");
        std::fs::write(root_dir.join("vmlinuz"), kernel_of(release)).expect("kernel");
        std::fs::write(root_dir.join("node-initrd.img"), b"initrd").expect("initrd");
        RootImage {
            name: name.into(),
            image: format!("sha256:{id}"),
            root_id: id.clone(),
            source: "oci-archive:/x.tar".into(),
            kernel_release: release.into(),
            chunks: 1,
            bytes: 4096,
            initrd_bytes: 6,
            kernel: root_dir.join("vmlinuz").display().to_string(),
            initrd: root_dir.join("node-initrd.img").display().to_string(),
            roots_dir: served.display().to_string(),
            imported_at_ms: 0,
        }
    }

    /// The smallest bzImage [`roots::bzimage_release`] reads.
    fn kernel_of(release: &str) -> Vec<u8> {
        let mut k = vec![0u8; 0x1000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        k[0x500..0x500 + release.len()].copy_from_slice(release.as_bytes());
        k
    }

    fn config(extra: &str) -> wire::Config {
        wire::Config::from_toml_str(&format!(
            "[boot]\nroot = \"/srv/boot\"\ndefault_profile = \"diskless\"\n{extra}"
        ))
        .expect("wire config")
    }

    #[test]
    fn a_root_profile_boots_the_root_kernel_initramfs_and_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = root(dir.path(), "small", "6.1.0-9-amd64");
        let roots = BTreeMap::from([("small".to_owned(), small.clone())]);
        let mut c = config(
            "[[profiles]]\nname = \"diskless\"\nroot = \"small\"\ncmdline = \"console=ttyS0\"\n\
             [profiles.arch.x86_64-efi]\ncmdline = \"console=ttyS1\"\n",
        );
        resolve_with(&mut c, &roots, Ipv4Addr::new(198, 18, 0, 1), 8080).expect("resolves");
        let p = &c.profiles[0];
        let manifest = format!(
            "stampede.manifest=http://198.18.0.1:8080/roots/{}/manifest BOOTIF={{bootif}}",
            small.root_id
        );
        assert_eq!(p.root, None);
        assert_eq!(p.cmdline, format!("console=ttyS0 {manifest}"));
        assert_eq!(
            p.arch["x86_64-efi"].cmdline.as_deref(),
            Some(&*format!("console=ttyS1 {manifest}"))
        );
        let kernel = p.kernel.clone().expect("kernel");
        assert_eq!(c.boot.files[&kernel], PathBuf::from(&small.kernel));
        assert_eq!(c.boot.files[&p.initrds[0]], PathBuf::from(&small.initrd));
        assert_eq!(c.boot.roots_dir, Some(PathBuf::from(&small.roots_dir)));
        stampede_dataplane::config::ApplianceConfig::try_from(c).expect("validates");

        // By digest, the same.
        let mut c = config(&format!(
            "[[profiles]]\nname = \"diskless\"\nroot = \"{}\"\n",
            small.image
        ));
        resolve_with(&mut c, &roots, Ipv4Addr::LOCALHOST, 80).expect("by digest");
    }

    #[test]
    fn unknown_roots_foreign_kernels_and_initrds_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = root(dir.path(), "small", "6.1.0-9-amd64");
        let roots = BTreeMap::from([("small".to_owned(), small)]);
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(&boot).expect("boot dir");
        std::fs::write(boot.join("same"), kernel_of("6.1.0-9-amd64")).expect("kernel");
        std::fs::write(boot.join("other"), kernel_of("6.12.0-1-amd64")).expect("kernel");
        let with_boot = |profile: &str| {
            wire::Config::from_toml_str(&format!(
                "[boot]\nroot = \"{}\"\n[[profiles]]\nname = \"diskless\"\n{profile}",
                boot.display()
            ))
            .expect("wire config")
        };
        let refused = |mut c: wire::Config| {
            let e = resolve_with(&mut c, &roots, Ipv4Addr::LOCALHOST, 80).expect_err("refused");
            format!("{e:#}")
        };
        let e = refused(with_boot("root = \"big\""));
        assert!(e.contains("\"diskless\"") && e.contains("\"big\""), "{e}");
        let e = refused(with_boot("root = \"small\"\ninitrds = [\"i\"]"));
        assert!(e.contains("initrds"), "{e}");
        let e = refused(with_boot("root = \"small\"\nkernel = \"other\""));
        assert!(
            e.contains("6.12.0-1-amd64") && e.contains("6.1.0-9-amd64"),
            "{e}"
        );
        let e = refused(with_boot("root = \"small\"\nkernel = \"missing\""));
        assert!(e.contains("missing"), "{e}");

        let mut c = with_boot("root = \"small\"\nkernel = \"same\"");
        resolve_with(&mut c, &roots, Ipv4Addr::LOCALHOST, 80).expect("same release");
        assert_eq!(c.profiles[0].kernel.as_deref(), Some("same"));
    }

    #[test]
    fn the_example_file_s_root_profile_resolves_and_validates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = include_str!("../docs/stampede.example.toml");
        let mut c = wire::Config::from_toml_str(text).expect("example parses");
        let names: Vec<String> = c.profiles.iter().filter_map(|p| p.root.clone()).collect();
        assert!(!names.is_empty(), "the example shows a root profile");
        let roots = names
            .iter()
            .map(|n| (n.clone(), root(dir.path(), n, "6.1.0-9-amd64")))
            .collect();
        resolve_with(&mut c, &roots, Ipv4Addr::new(198, 18, 0, 1), 8080).expect("resolves");
        stampede_dataplane::config::ApplianceConfig::try_from(c).expect("validates");
    }

    #[test]
    fn default_names_are_repo_tag_or_file_name() {
        for (source, name) in [
            ("oci-archive:/srv/small.tar", "small.tar"),
            ("oci-archive:/srv/small.tar:v1", "small.tar:v1"),
            ("oci:/srv/layout:small", "layout:small"),
            ("docker-archive:/srv/d.tar", "d.tar"),
            ("docker-archive:/srv/d.tar:team/app:v2", "team/app:v2"),
            ("docker://198.18.0.1:5000/team/app:v2", "team/app:v2"),
            ("docker://debian:12", "debian:12"),
        ] {
            let parsed = oci::Source::parse(source).expect("source");
            assert_eq!(default_name(&parsed), name, "{source}");
        }
    }

    #[test]
    fn the_command_line_is_the_node_agent_contract() {
        use stampede_rootfs::manifest::{RootFormat, RootManifest, VERSION};
        let built = roots::BuiltRoot {
            id: "cd".repeat(32),
            name: "x".into(),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_release: String::new(),
            manifest: RootManifest {
                version: VERSION,
                name: "x".into(),
                image: String::new(),
                format: RootFormat::Erofs,
                size: 0,
                chunk_size: 1,
                chunks: vec![],
                init: "/sbin/init".into(),
                kernel_release: None,
                swarm: None,
            },
            initrd_bytes: 0,
        };
        assert_eq!(
            node_cmdline("http://198.18.0.1:8080", &built.id),
            built.cmdline("http://198.18.0.1:8080")
        );
    }
}
