//! OCI images read from where an operator names them, every byte verified.
//!
//! A [`Source`] is written in skopeo's transport syntax:
//!
//! - `oci:DIR[:TAG]`: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`). TAG is
//!   matched against `org.opencontainers.image.ref.name` in `index.json`; without one the layout
//!   must hold exactly one image.
//! - `oci-archive:FILE[:TAG]`: that layout as a tar.
//! - `docker-archive:FILE[:NAME:TAG]`: what `docker save` and `podman save` write (`manifest.json`
//!   with `Config`, `RepoTags`, `Layers`). When the archive also holds an OCI layout (Docker 25
//!   and later write both) the layout is read, so the manifest digest is the registry's.
//! - `docker://REGISTRY/REPO[:TAG|@sha256:HEX]`: the OCI distribution API v2 (see `registry`).
//!
//! [`pull`] resolves an image index to one platform, then copies the config and the layers into a
//! content-addressed blob cache (`BLOB_DIR/sha256/<hex>`). Trust flows from the manifest: its
//! digest is computed over its exact bytes (and must equal the one asked for or listed in the
//! index), and every blob it names is checked against its descriptor's size and SHA-256 before it
//! is used or renamed into the cache. A blob in the cache was verified when it was written; only
//! its size is checked again. A registry download interrupted midway stays as `<hex>.partial` and
//! resumes with an HTTP Range request on the next pull; local copies are never left partial.
//!
//! A pull has no cancellation: it runs to completion or to an error on the caller's thread. A
//! process killed mid-pull leaves only verified blobs and `.partial` files, and the next pull
//! continues from them.
//!
//! Layers are not unpacked here. A layer's `diff_id` (the SHA-256 of its uncompressed tar) comes
//! from the config; for uncompressed layers it is checked here (it equals the digest), for
//! compressed ones it is checked by whoever decompresses the layer.
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::manifest::Sha256Digest;

mod archive;
mod blob;
mod document;
mod source;

use archive::{LayoutFiles, OciLayout, Selector, TarIndex, pull_docker_archive};
pub(crate) use blob::{BlobCache, BlobSource};
pub(crate) use document::{Document, resolve};
pub use source::{ImageReference, Platform, Reference, Source};

/// Largest manifest, index or config read (the whole document is held in memory and parsed).
/// Real manifests are a few KiB; an index of every platform or a config with a long history is
/// well under 1 MiB. The same bound as containerd's and the distribution spec's suggestion.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Most layers an image may have. Docker refuses to build past 127 (overlayfs' stacking limit);
/// this leaves room for images assembled by other tools while bounding what a manifest can ask.
pub const MAX_LAYERS: usize = 256;

/// Image indexes nested deeper than this are refused (an index of indexes is legal but rare).
const MAX_INDEX_DEPTH: usize = 4;

/// Progress is reported at least once per this many bytes of a blob.
const PROGRESS_STEP: u64 = 1 << 20;

pub mod media_type {
    //! The media types an import reads (OCI image spec v1.1, Docker image manifest v2 schema 2).
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

// ---------------------------------------------------------------------------------------------
// Sources

/// How far a pull is: reported as each blob starts, about every MiB, and as it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The blob being read (the config or a layer).
    pub blob: Sha256Digest,
    pub blob_done: u64,
    pub blob_size: u64,
    /// Bytes of the image's config and layers done so far (cached blobs count as done) and in
    /// all; known once the manifest is read.
    pub done: u64,
    pub total: u64,
}

fn no_progress(_: Progress) {}

/// What [`pull`] needs besides the source.
pub struct PullOptions<'a> {
    /// The blob cache: verified blobs at `sha256/<hex>`, interrupted downloads at
    /// `sha256/<hex>.partial`. Created if missing; several pulls may share it.
    pub blob_dir: PathBuf,
    /// Default linux/amd64.
    pub platform: Platform,
    /// Registry user name and password (HTTP Basic, or traded for a Bearer token).
    pub credentials: Option<(String, String)>,
    /// A PEM file of CA certificates trusted for https besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Speak plain http to the registry. Off by default: https only, and a redirect or token
    /// service on http is refused.
    pub plain_http: bool,
    pub progress: &'a dyn Fn(Progress),
}

impl PullOptions<'_> {
    pub fn new(blob_dir: impl Into<PathBuf>) -> Self {
        PullOptions {
            blob_dir: blob_dir.into(),
            platform: Platform::default(),
            credentials: None,
            ca_file: None,
            plain_http: false,
            progress: &no_progress,
        }
    }
}

impl fmt::Debug for PullOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullOptions")
            .field("blob_dir", &self.blob_dir)
            .field("platform", &self.platform)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "<redacted>")),
            )
            .field("ca_file", &self.ca_file)
            .field("plain_http", &self.plain_http)
            .finish_non_exhaustive()
    }
}

/// An image whose config and layers are verified and in the blob cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// SHA-256 of the exact manifest bytes (for a `docker-archive` without an OCI layout, of
    /// the OCI manifest written for it, see [`Source::DockerArchive`]).
    pub manifest_digest: Sha256Digest,
    pub config_digest: Sha256Digest,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
}

/// What an image's config says that a root needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `rootfs.diff_ids`: the SHA-256 of each layer's uncompressed tar, bottom first.
    pub diff_ids: Vec<Sha256Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Sha256Digest,
    pub media_type: LayerMediaType,
    pub size: u64,
    /// The verified blob, `BLOB_DIR/sha256/<hex>`.
    pub path: PathBuf,
    pub diff_id: Sha256Digest,
}

/// The layer media types an import accepts. Foreign and non-distributable layers (blobs
/// fetched from elsewhere than the registry) are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerMediaType {
    OciTar,
    OciTarGzip,
    OciTarZstd,
    DockerTarGzip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl LayerMediaType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            media_type::OCI_LAYER => Some(Self::OciTar),
            media_type::OCI_LAYER_GZIP => Some(Self::OciTarGzip),
            media_type::OCI_LAYER_ZSTD => Some(Self::OciTarZstd),
            media_type::DOCKER_LAYER_GZIP => Some(Self::DockerTarGzip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OciTar => media_type::OCI_LAYER,
            Self::OciTarGzip => media_type::OCI_LAYER_GZIP,
            Self::OciTarZstd => media_type::OCI_LAYER_ZSTD,
            Self::DockerTarGzip => media_type::DOCKER_LAYER_GZIP,
        }
    }

    pub fn compression(self) -> Compression {
        match self {
            Self::OciTar => Compression::None,
            Self::OciTarGzip | Self::DockerTarGzip => Compression::Gzip,
            Self::OciTarZstd => Compression::Zstd,
        }
    }

    fn of_compression(compression: Compression) -> Self {
        match compression {
            Compression::None => Self::OciTar,
            Compression::Gzip => Self::OciTarGzip,
            Compression::Zstd => Self::OciTarZstd,
        }
    }
}

impl Compression {
    /// Recognises a compressed stream by its magic number (RFC 1952 §2.3.1; RFC 8878 §3.1.1).
    fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }

    /// `reader` decompressed.
    pub fn decoder<'r>(self, reader: impl Read + 'r) -> io::Result<Box<dyn Read + 'r>> {
        Ok(match self {
            Self::None => Box::new(reader),
            Self::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Self::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(reader)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            ),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why an image could not be imported. Messages name the blob, file or URL concerned.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{text:?} is not an image source: {problem}")]
    BadSource { text: String, problem: String },
    #[error("{what} {digest} is missing from {location}")]
    MissingBlob {
        what: String,
        digest: String,
        location: String,
    },
    #[error("{what} from {location}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        location: String,
        expected: String,
        actual: String,
    },
    #[error("digest {digest:?} uses an unsupported algorithm: only sha256 is accepted")]
    UnsupportedDigest { digest: String },
    #[error("{digest:?} is not a digest (sha256: and 64 lowercase hex digits)")]
    BadDigest { digest: String },
    #[error("{what} {digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        what: String,
        digest: String,
        media_type: String,
    },
    #[error("{what} from {location}: media type {listed:?} where the document says {own:?}")]
    MediaTypeMismatch {
        what: String,
        location: String,
        listed: String,
        own: String,
    },
    #[error("{what} from {location} is larger than {limit} bytes")]
    TooLarge {
        what: String,
        location: String,
        limit: u64,
    },
    #[error("{what} from {location}: ended after {actual} of {expected} bytes")]
    ShortBlob {
        what: String,
        location: String,
        expected: u64,
        actual: u64,
    },
    #[error("{archive}: truncated archive: {detail}")]
    TruncatedArchive { archive: PathBuf, detail: String },
    #[error(
        "architecture mismatch: the image is for {found}, this import wants {wanted} \
         (choose the platform or pull another image)"
    )]
    ArchitectureMismatch { wanted: String, found: String },
    #[error("{location}: the image index has no manifest for {wanted} (it has: {available})")]
    NoMatchingPlatform {
        location: String,
        wanted: String,
        available: String,
    },
    #[error("{location}: no image tagged {tag:?} (tags: {available})")]
    TagNotFound {
        location: String,
        tag: String,
        available: String,
    },
    #[error("{location}: {count} images, name one with a tag (tags: {available})")]
    AmbiguousImage {
        location: String,
        count: usize,
        available: String,
    },
    #[error("{location}: malformed {what}: {detail}")]
    Malformed {
        what: String,
        location: String,
        detail: String,
    },
    #[error("the manifest lists {count} layers, more than the limit of {limit}")]
    TooManyLayers { count: usize, limit: usize },
    #[error("{url}: HTTP {status}{detail}")]
    HttpStatus {
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{url}: authentication failed (HTTP 401, the registry asks for {challenge}): {}",
        if *.credentials_given { "the credentials were refused" } else { "no credentials were given" }
    )]
    Unauthorized {
        url: String,
        challenge: String,
        credentials_given: bool,
    },
    #[error("{url}: TLS failure: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url}: plain http refused (https only unless plain_http is set)")]
    PlainHttpRefused { url: String },
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
    #[error("CA file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {what} from {location}: {source}")]
    Transfer {
        what: String,
        location: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `sha256:<hex>`, as OCI writes a digest.
pub fn oci_digest(digest: &Sha256Digest) -> String {
    format!("sha256:{digest}")
}

/// Parses an OCI digest: `sha256:` and 64 lowercase hex digits. Other algorithms (sha512,
/// blake3) are refused by name rather than treated as malformed.
pub fn parse_digest(text: &str) -> Result<Sha256Digest, ImportError> {
    let Some((algorithm, encoded)) = text.split_once(':') else {
        return Err(ImportError::BadDigest {
            digest: text.chars().take(100).collect(),
        });
    };
    if algorithm != "sha256" {
        return Err(ImportError::UnsupportedDigest {
            digest: text.chars().take(100).collect(),
        });
    }
    // OCI image spec (descriptor.md, "SHA-256"): the encoded part is lowercase hex.
    if encoded.len() != 64
        || !encoded
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ImportError::BadDigest {
            digest: text.chars().take(100).collect(),
        });
    }
    Sha256Digest::parse(encoded).map_err(|_| ImportError::BadDigest {
        digest: text.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Wire forms (serde) of the documents, validated into the types above

#[derive(Debug, Deserialize)]
struct DescriptorWire {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    platform: Option<PlatformWire>,
}

#[derive(Debug, Deserialize)]
struct PlatformWire {
    architecture: String,
    os: String,
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IndexWire {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    manifests: Vec<DescriptorWire>,
}

#[derive(Debug, Deserialize)]
struct ManifestWire {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    config: DescriptorWire,
    layers: Vec<DescriptorWire>,
}

/// Just enough of a document to tell an index from a manifest when no media type says so.
#[derive(Debug, Deserialize)]
struct DocumentProbe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct ConfigWire {
    architecture: String,
    os: String,
    variant: Option<String>,
    #[serde(default)]
    config: Option<RunConfigWire>,
    rootfs: RootfsWire,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfigWire {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootfsWire {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A validated descriptor: a blob's media type, digest and exact size.
#[derive(Debug, Clone)]
pub(crate) struct Descriptor {
    pub(crate) media_type: Option<String>,
    pub(crate) digest: Sha256Digest,
    pub(crate) size: u64,
}

impl Descriptor {
    fn from_wire(wire: &DescriptorWire, location: &str) -> Result<Self, ImportError> {
        let size = u64::try_from(wire.size).map_err(|_| ImportError::Malformed {
            what: "descriptor".into(),
            location: location.to_owned(),
            detail: format!("negative size {} for {}", wire.size, wire.digest),
        })?;
        Ok(Self {
            media_type: wire.media_type.clone(),
            digest: parse_digest(&wire.digest)?,
            size,
        })
    }
}

impl TryFrom<ConfigWire> for ImageConfig {
    type Error = ImportError;

    fn try_from(wire: ConfigWire) -> Result<Self, ImportError> {
        let run = wire.config.unwrap_or_default();
        Ok(Self {
            architecture: wire.architecture,
            os: wire.os,
            variant: wire.variant,
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint,
            cmd: run.cmd,
            working_dir: run.working_dir.filter(|d| !d.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            diff_ids: wire
                .rootfs
                .diff_ids
                .iter()
                .map(|d| parse_digest(d))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    location: &str,
) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|e| ImportError::Malformed {
        what: what.to_owned(),
        location: location.to_owned(),
        detail: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// The blob cache

/// Reads the image `source` names into the blob cache, verified (see the module documentation).
pub fn pull(source: &Source, options: &PullOptions<'_>) -> Result<PulledImage, ImportError> {
    let cache = BlobCache::open(&options.blob_dir)?;
    match source {
        Source::OciLayout { dir, tag } => {
            if !dir.is_dir() {
                return Err(ImportError::Io {
                    path: dir.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no such OCI layout directory"),
                });
            }
            let mut layout = OciLayout {
                files: LayoutFiles::Dir(dir.clone()),
            };
            let selector = tag.as_deref().map_or(Selector::Only, Selector::Tag);
            let top = layout.top(selector, &options.platform)?;
            resolve(&mut layout, top, &cache, options)
        }
        Source::OciArchive { file, tag } => {
            let mut layout = OciLayout {
                files: LayoutFiles::Tar(TarIndex::open(file)?),
            };
            let selector = tag.as_deref().map_or(Selector::Only, Selector::Tag);
            let top = layout.top(selector, &options.platform)?;
            resolve(&mut layout, top, &cache, options)
        }
        Source::DockerArchive { file, reference } => {
            pull_docker_archive(file, reference.as_deref(), &cache, options)
        }
        Source::Registry(reference) => crate::registry::pull(reference, &cache, options),
    }
}

#[cfg(test)]
mod tests {
    use super::archive::*;
    use super::blob::*;
    use super::source::*;
    use super::*;

    const HEX: &str = "4d87b6981a657d9231595377c291814d09cf44679edac6a19f2b027ae6012c1a";

    #[test]
    fn sources_parse_in_skopeo_syntax() {
        assert_eq!(
            Source::parse("oci:/srv/img:base").unwrap(),
            Source::OciLayout {
                dir: "/srv/img".into(),
                tag: Some("base".into())
            }
        );
        assert_eq!(
            Source::parse("oci:img").unwrap(),
            Source::OciLayout {
                dir: "img".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("oci-archive:a.tar:v1").unwrap(),
            Source::OciArchive {
                file: "a.tar".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("docker-archive:d.tar:example/img:base").unwrap(),
            Source::DockerArchive {
                file: "d.tar".into(),
                reference: Some("example/img:base".into())
            }
        );
        let Source::Registry(r) = Source::parse("docker://198.18.200.1:5000/team/app:v2").unwrap()
        else {
            panic!("not a registry source");
        };
        assert_eq!(r.registry, "198.18.200.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.reference, Reference::Tag("v2".into()));
        let Source::Registry(r) =
            Source::parse(&format!("docker://ghcr.io/a/b@sha256:{HEX}")).unwrap()
        else {
            panic!("not a registry source");
        };
        assert_eq!(r.reference_text(), format!("sha256:{HEX}"));
        let Source::Registry(r) = Source::parse("docker://debian").unwrap() else {
            panic!("not a registry source");
        };
        assert_eq!(r.to_string(), "docker.io/library/debian:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let Source::Registry(r) = Source::parse("docker://localhost/x").unwrap() else {
            panic!("not a registry source");
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        for text in ["oci:/a:b", "oci-archive:x.tar", "docker://r.example/a/b:c"] {
            assert_eq!(Source::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_sources_say_why() {
        let cases = [
            ("/srv/img", "no transport"),
            ("docker-daemon:x", "not supported"),
            ("ftp:x", "unknown transport"),
            ("oci:", "path is empty"),
            ("oci:dir:", "tag after"),
            ("docker:r.example/a", "two slashes"),
            ("docker://r.example/UPPER", "repository name"),
            ("docker://r.example/a:b@sha512:00", "only sha256"),
            ("docker://r.example/a:-bad", "not a tag"),
        ];
        for (text, needle) in cases {
            let err = Source::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn digests_are_sha256_lowercase_only() {
        assert!(parse_digest(&format!("sha256:{HEX}")).is_ok());
        let upper = format!("sha256:{}", HEX.to_uppercase());
        assert!(matches!(
            parse_digest(&upper),
            Err(ImportError::BadDigest { .. })
        ));
        assert!(matches!(
            parse_digest(&format!("sha512:{HEX}{HEX}")),
            Err(ImportError::UnsupportedDigest { .. })
        ));
        assert!(matches!(
            parse_digest(HEX),
            Err(ImportError::BadDigest { .. })
        ));
        assert!(matches!(
            parse_digest("sha256:abc"),
            Err(ImportError::BadDigest { .. })
        ));
    }

    #[test]
    fn platforms_match_with_arm64_variant_defaults() {
        let amd64 = Platform::default();
        assert!(amd64.matches("linux", "amd64", None));
        assert!(amd64.matches("linux", "amd64", Some("v3")));
        assert!(!amd64.matches("linux", "arm64", None));
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(v8.matches("linux", "arm64", None));
        assert!(v8.matches("linux", "arm64", Some("v8")));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!v7.matches("linux", "arm", Some("v6")));
        assert!(Platform::parse("linux").is_err());
        assert_eq!(v7.to_string(), "linux/arm/v7");
    }

    #[test]
    fn layer_media_types_and_compression() {
        for media_type in [
            media_type::OCI_LAYER,
            media_type::OCI_LAYER_GZIP,
            media_type::OCI_LAYER_ZSTD,
            media_type::DOCKER_LAYER_GZIP,
        ] {
            assert_eq!(
                LayerMediaType::parse(media_type).unwrap().as_str(),
                media_type
            );
        }
        for refused in [
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        ] {
            assert_eq!(LayerMediaType::parse(refused), None, "{refused}");
        }
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn links_in_archives_stay_inside() {
        assert_eq!(resolve_link("abc", "../x.tar"), "x.tar");
        assert_eq!(resolve_link("a/b", "./c"), "a/b/c");
        assert_eq!(resolve_link("a", "../../../etc/passwd"), "etc/passwd");
        assert_eq!(member_name("./blobs/sha256/x"), "blobs/sha256/x");
    }

    #[test]
    fn docker_names_compare_normalised() {
        assert!(docker_names_match(
            "docker.io/example/img:base",
            "example/img:base"
        ));
        assert!(docker_names_match(
            "docker.io/library/debian:latest",
            "debian"
        ));
        assert!(!docker_names_match("example/img:base", "example/img:other"));
        assert!(digest_in_name(&format!("{HEX}.json")).is_some());
        assert!(digest_in_name(&format!("blobs/sha256/{HEX}")).is_some());
        assert!(digest_in_name("layer.tar").is_none());
    }

    /// A source that serves one blob, possibly wrong, and records the offsets asked for.
    struct FakeSource {
        bytes: Vec<u8>,
        asked: Vec<u64>,
        honour_offset: bool,
    }

    impl BlobSource for FakeSource {
        fn location(&self, _: &Sha256Digest) -> String {
            "fake".into()
        }

        fn open_blob(
            &mut self,
            _: &Sha256Digest,
            offset: u64,
        ) -> Result<(Box<dyn Read + '_>, u64), ImportError> {
            self.asked.push(offset);
            let start = if self.honour_offset { offset } else { 0 };
            Ok((Box::new(&self.bytes[start as usize..]), start))
        }

        fn resumable(&self) -> bool {
            true
        }
    }

    fn descriptor(bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: None,
            digest: Sha256Digest::of(bytes),
            size: bytes.len() as u64,
        }
    }

    fn cache_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn blobs_resume_from_partial_files_and_restart_when_the_partial_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let blob = stampede_lab::pseudo_random(300_000, 7);
        let desc = descriptor(&blob);
        // A good partial: only the rest is asked for.
        fs::write(cache.partial_path(&desc.digest), &blob[..1000]).unwrap();
        let mut source = FakeSource {
            bytes: blob.clone(),
            asked: vec![],
            honour_offset: true,
        };
        let path = cache
            .fetch("blob", &desc, &mut source, &mut |_| {})
            .unwrap();
        assert_eq!(source.asked, [1000]);
        assert_eq!(fs::read(path).unwrap(), blob);
        assert_eq!(cache_names(dir.path()), [desc.digest.to_hex()]);

        // A corrupt partial: the resumed blob fails, the second attempt starts from 0.
        let blob2 = stampede_lab::pseudo_random(5000, 8);
        let desc2 = descriptor(&blob2);
        fs::write(cache.partial_path(&desc2.digest), vec![0u8; 100]).unwrap();
        let mut source = FakeSource {
            bytes: blob2.clone(),
            asked: vec![],
            honour_offset: true,
        };
        cache
            .fetch("blob", &desc2, &mut source, &mut |_| {})
            .unwrap();
        assert_eq!(source.asked, [100, 0]);

        // A server ignoring the offset: the whole blob replaces the partial.
        let blob3 = stampede_lab::pseudo_random(5000, 9);
        let desc3 = descriptor(&blob3);
        fs::write(cache.partial_path(&desc3.digest), &blob3[..10]).unwrap();
        let mut source = FakeSource {
            bytes: blob3.clone(),
            asked: vec![],
            honour_offset: false,
        };
        let path = cache
            .fetch("blob", &desc3, &mut source, &mut |_| {})
            .unwrap();
        assert_eq!(fs::read(path).unwrap(), blob3);
    }

    #[test]
    fn blobs_longer_or_different_than_described_are_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let blob = stampede_lab::pseudo_random(4096, 1);
        let mut short = descriptor(&blob[..4000]);
        let mut source = FakeSource {
            bytes: blob.clone(),
            asked: vec![],
            honour_offset: true,
        };
        let err = cache
            .fetch("layer 1 of 1", &short, &mut source, &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(err, ImportError::TooLarge { limit: 4000, .. }),
            "{err}"
        );
        short.digest = Sha256Digest::of(b"other");
        short.size = 4096;
        let err = cache
            .fetch("layer 1 of 1", &short, &mut source, &mut |_| {})
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("digest mismatch") && text.contains("layer 1 of 1"),
            "{text}"
        );
        assert!(
            cache_names(dir.path()).is_empty(),
            "{:?}",
            cache_names(dir.path())
        );
    }

    #[test]
    fn the_cache_keeps_a_short_download_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let blob = stampede_lab::pseudo_random(4096, 2);
        let desc = descriptor(&blob);
        let mut source = FakeSource {
            bytes: blob[..1500].to_vec(),
            asked: vec![],
            honour_offset: true,
        };
        let err = cache
            .fetch("blob", &desc, &mut source, &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(err, ImportError::ShortBlob { actual: 1500, .. }),
            "{err}"
        );
        assert_eq!(
            cache_names(dir.path()),
            [format!("{}.partial", desc.digest.to_hex())]
        );
    }
}
