//! Test images made by real tools: umoci builds an OCI layout of two layers (the second deletes
//! a file, a whiteout), skopeo copies it to an oci-archive and a docker-archive.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use stampede_rootfs::oci::PulledImage;

pub const TAG: &str = "base";
/// The same image with an arm64 config, in the same layout.
pub const ARM_TAG: &str = "arm";
/// Bytes of the incompressible file in the first layer (large enough to interrupt midway).
pub const BIG_FILE_BYTES: usize = 3 << 20;

/// Is every program here? Under CI a missing one fails the test; elsewhere it is skipped.
pub fn tools(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| stampede_lab::which(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "not installed: {} (run `cargo xtask setup`)",
        missing.join(", ")
    );
    if stampede_lab::in_ci() {
        panic!("{test}: cannot run under CI: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

pub fn run(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// The images, built once per test.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// `oci:` layout with tags `base` and `arm`.
    pub layout: PathBuf,
    pub oci_archive: PathBuf,
    pub docker_archive: PathBuf,
}

impl Fixture {
    pub fn build() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        let image = format!("{}:{TAG}", s(&layout));
        run("umoci", &["init", "--layout", s(&layout)]);
        run("umoci", &["new", "--image", &image]);
        run(
            "umoci",
            &["unpack", "--rootless", "--image", &image, s(&bundle)],
        );
        let etc = bundle.join("rootfs/etc");
        fs::create_dir_all(&etc).expect("mkdir etc");
        fs::write(etc.join("greeting"), "hello\n").expect("write");
        fs::write(etc.join("doomed"), "deleted by the second layer\n").expect("write");
        fs::write(
            bundle.join("rootfs/big.bin"),
            stampede_lab::pseudo_random(BIG_FILE_BYTES, 42),
        )
        .expect("write");
        run(
            "umoci",
            &["repack", "--refresh-bundle", "--image", &image, s(&bundle)],
        );
        fs::remove_file(etc.join("doomed")).expect("rm");
        run("umoci", &["repack", "--image", &image, s(&bundle)]);
        run(
            "umoci",
            &[
                "config",
                "--image",
                &image,
                "--config.env",
                "FOO=bar",
                "--config.entrypoint",
                "/bin/sh",
                "--config.cmd",
                "-c",
                "--config.workingdir",
                "/srv",
                "--os",
                "linux",
                "--architecture",
                "amd64",
            ],
        );
        run(
            "umoci",
            &[
                "config",
                "--image",
                &image,
                "--tag",
                ARM_TAG,
                "--architecture",
                "arm64",
            ],
        );
        let oci_archive = dir.path().join("image.oci.tar");
        let docker_archive = dir.path().join("image.docker.tar");
        run(
            "skopeo",
            &[
                "copy",
                "-q",
                &format!("oci:{image}"),
                &format!("oci-archive:{}:{TAG}", s(&oci_archive)),
            ],
        );
        run(
            "skopeo",
            &[
                "copy",
                "-q",
                &format!("oci:{image}"),
                &format!("docker-archive:{}:example/img:{TAG}", s(&docker_archive)),
            ],
        );
        Self {
            dir,
            layout,
            oci_archive,
            docker_archive,
        }
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.layout.join("blobs/sha256").join(hex)
    }

    pub fn index(&self) -> Value {
        read_json(&self.layout.join("index.json"))
    }

    /// The manifest digest `index.json` lists for `tag`.
    pub fn manifest_digest(&self, tag: &str) -> String {
        self.index()["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag}"))["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }

    pub fn manifest(&self, tag: &str) -> Value {
        read_json(&self.blob(&self.manifest_digest(tag)))
    }

    pub fn config(&self, tag: &str) -> Value {
        read_json(&self.blob(self.manifest(tag)["config"]["digest"].as_str().unwrap()))
    }

    /// Writes `manifest` as a blob and points `tag` in index.json at it (a new tag if new).
    pub fn put_manifest(&self, tag: &str, manifest: &Value, media_type: &str) -> String {
        let bytes = serde_json::to_vec(manifest).expect("json");
        let digest = self.put_blob(&bytes);
        let mut index = self.index();
        let manifests = index["manifests"].as_array_mut().expect("manifests");
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
        manifests.push(serde_json::json!({
            "mediaType": media_type,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        fs::write(
            self.layout.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("write index.json");
        digest
    }

    pub fn put_blob(&self, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        fs::write(self.blob(&digest), bytes).expect("write blob");
        digest
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of a gzip stream's content (a layer's diff_id), computed here independently.
pub fn gunzip_digest(path: &Path) -> String {
    let mut decoder = flate2::read::GzDecoder::new(fs::File::open(path).expect("open"));
    let mut bytes = Vec::new();
    decoder.read_to_end(&mut bytes).expect("gunzip");
    format!("sha256:{}", sha256_hex(&bytes))
}

/// Names in a layer tar (decompressed when gzip).
pub fn layer_entries(path: &Path) -> Vec<String> {
    let bytes = fs::read(path).expect("read layer");
    let reader: Box<dyn std::io::Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(&bytes[..]))
    } else {
        Box::new(&bytes[..])
    };
    tar::Archive::new(reader)
        .entries()
        .expect("tar")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}

/// Every file in the cache is a verified blob named by its SHA-256: no partial or temporary
/// files, nothing damaged.
pub fn assert_cache_verified(blob_dir: &Path) {
    let dir = blob_dir.join("sha256");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = fs::read(entry.path()).expect("read cached blob");
        assert_eq!(
            sha256_hex(&bytes),
            name,
            "{name} in the cache is not a verified blob"
        );
    }
}

/// What every source of the fixture image must yield.
pub fn assert_is_base_image(image: &PulledImage, fixture: &Fixture) {
    let config = fixture.config(TAG);
    assert_eq!(image.config.architecture, "amd64");
    assert_eq!(image.config.os, "linux");
    assert_eq!(image.config.env, ["FOO=bar"]);
    assert_eq!(
        image.config.entrypoint.as_deref(),
        Some(&["/bin/sh".to_owned()][..])
    );
    assert_eq!(image.config.cmd.as_deref(), Some(&["-c".to_owned()][..]));
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    let diff_ids: Vec<String> = image
        .config
        .diff_ids
        .iter()
        .map(|d| format!("sha256:{d}"))
        .collect();
    assert_eq!(
        diff_ids,
        config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(image.layers.len(), 2);
    for (layer, diff_id) in image.layers.iter().zip(&image.config.diff_ids) {
        assert_eq!(layer.diff_id, *diff_id);
        let bytes = fs::read(&layer.path).expect("cached layer");
        assert_eq!(bytes.len() as u64, layer.size);
        assert_eq!(sha256_hex(&bytes), layer.digest.to_hex());
    }
    let first = layer_entries(&image.layers[0].path);
    assert!(first.iter().any(|e| e.ends_with("etc/doomed")), "{first:?}");
    assert!(first.iter().any(|e| e.ends_with("big.bin")), "{first:?}");
    let second = layer_entries(&image.layers[1].path);
    assert!(
        second.iter().any(|e| e.ends_with("etc/.wh.doomed")),
        "the second layer's whiteout: {second:?}"
    );
}
