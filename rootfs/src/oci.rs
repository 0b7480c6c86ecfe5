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

/// Where an image is read from, in skopeo's transport syntax (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    /// `reference` is a `NAME:TAG` matched against the archive's `RepoTags`.
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    Registry(ImageReference),
}

/// An image in a registry: `REGISTRY/REPOSITORY` with a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// `host[:port]` as written, e.g. `198.18.200.1:5000` or `docker.io`.
    pub registry: String,
    /// `library/debian`, `team/app`.
    pub repository: String,
    pub reference: Reference,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Sha256Digest),
}

impl ImageReference {
    /// The host the API is spoken to: Docker Hub's name `docker.io` is not its API endpoint.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// The tag or `sha256:...` as it goes into a manifest URL.
    pub fn reference_text(&self) -> String {
        match &self.reference {
            Reference::Tag(tag) => tag.clone(),
            Reference::Digest(digest) => oci_digest(digest),
        }
    }

    /// Parses `REGISTRY/REPO[:TAG|@sha256:HEX]` (what follows `docker://`). As Docker does, a
    /// first component without `.` or `:` (and not `localhost`) is a Docker Hub repository:
    /// `debian` is `docker.io/library/debian:latest`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (text, None),
        };
        let slash_after = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[slash_after..].rfind(':') {
            Some(i) => (&name[..slash_after + i], Some(&name[slash_after + i + 1..])),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if name.contains('/') => ("docker.io".to_owned(), name.to_owned()),
            _ => ("docker.io".to_owned(), format!("library/{name}")),
        };
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(format!("{registry:?} is not a registry host[:port]"));
        }
        if !valid_repository(&repository) {
            return Err(format!(
                "{repository:?} is not a repository name (lowercase letters, digits and \
                 separators `._-` between them, components joined by `/`)"
            ));
        }
        let reference = match (tag, digest) {
            (_, Some(digest)) => {
                Reference::Digest(parse_digest(digest).map_err(|e| e.to_string())?)
            }
            (Some(tag), None) => {
                if !valid_tag(tag) {
                    return Err(format!(
                        "{tag:?} is not a tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
                    ));
                }
                Reference::Tag(tag.to_owned())
            }
            (None, None) => Reference::Tag("latest".to_owned()),
        };
        Ok(Self {
            registry,
            repository,
            reference,
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}/{}:{tag}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "{}/{}@sha256:{d}", self.registry, self.repository),
        }
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').all(|component| {
            let bytes = component.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        })
}

impl Source {
    /// Parses skopeo's `TRANSPORT:DETAILS`. As skopeo does, the path of a local source ends at
    /// its first `:` (what follows is the tag or reference).
    pub fn parse(text: &str) -> Result<Self, ImportError> {
        let bad = |problem: String| ImportError::BadSource {
            text: text.to_owned(),
            problem,
        };
        let (transport, details) = text.split_once(':').ok_or_else(|| {
            bad(
                "no transport: write oci:DIR[:TAG], oci-archive:FILE[:TAG], \
                 docker-archive:FILE or docker://REGISTRY/REPO[:TAG]"
                    .into(),
            )
        })?;
        let path_and_tag = |details: &str| -> Result<(PathBuf, Option<String>), ImportError> {
            let (path, tag) = match details.split_once(':') {
                Some((path, tag)) => (path, Some(tag.to_owned())),
                None => (details, None),
            };
            if path.is_empty() {
                return Err(bad("the path is empty".into()));
            }
            if tag.as_deref().is_some_and(str::is_empty) {
                return Err(bad("the tag after `:` is empty".into()));
            }
            Ok((PathBuf::from(path), tag))
        };
        match transport {
            "oci" => {
                let (dir, tag) = path_and_tag(details)?;
                Ok(Self::OciLayout { dir, tag })
            }
            "oci-archive" => {
                let (file, tag) = path_and_tag(details)?;
                Ok(Self::OciArchive { file, tag })
            }
            "docker-archive" => {
                let (file, reference) = path_and_tag(details)?;
                Ok(Self::DockerArchive { file, reference })
            }
            "docker" => {
                let rest = details.strip_prefix("//").ok_or_else(|| {
                    bad("docker: wants two slashes: docker://REGISTRY/REPO[:TAG]".into())
                })?;
                ImageReference::parse(rest).map(Self::Registry).map_err(bad)
            }
            "docker-daemon" | "containers-storage" | "dir" | "ostree" | "sif" => Err(bad(format!(
                "the {transport}: transport is not supported; copy the image with skopeo to \
                 oci-archive: or a registry first"
            ))),
            other => Err(bad(format!(
                "unknown transport {other:?} (oci, oci-archive, docker-archive, docker)"
            ))),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |f: &mut fmt::Formatter<'_>, t: &str, p: &Path, tag: &Option<String>| {
            write!(f, "{t}:{}", p.display())?;
            tag.as_ref().map_or(Ok(()), |tag| write!(f, ":{tag}"))
        };
        match self {
            Self::OciLayout { dir, tag } => with(f, "oci", dir, tag),
            Self::OciArchive { file, tag } => with(f, "oci-archive", file, tag),
            Self::DockerArchive { file, reference } => with(f, "docker-archive", file, reference),
            Self::Registry(reference) => write!(f, "docker://{reference}"),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = ImportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

// ---------------------------------------------------------------------------------------------
// Options and results

/// The platform an image index is resolved to, and a single-platform image must be for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// `v7`, `v8`: when `None`, any variant of the architecture matches.
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`: the machines Stampede boots.
    pub fn linux_amd64() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// Parses `OS/ARCH[/VARIANT]`, as `--platform` is written.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: parts.get(2).map(|v| (*v).to_owned()),
            }),
            _ => Err(format!("{text:?} is not OS/ARCH[/VARIANT]")),
        }
    }

    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != architecture {
            return false;
        }
        match &self.variant {
            None => true,
            // arm64 images often omit their only variant (OCI image index spec, platform.variant).
            Some(wanted) => {
                variant == Some(wanted.as_str())
                    || (variant.is_none() && architecture == "arm64" && wanted == "v8")
            }
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::linux_amd64()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        self.variant
            .as_ref()
            .map_or(Ok(()), |variant| write!(f, "/{variant}"))
    }
}

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

/// Verified blobs by SHA-256. A blob is written to a temporary or `.partial` file beside its
/// final name, hashed as it is written, and renamed only when its size and digest match.
#[derive(Debug)]
pub(crate) struct BlobCache {
    dir: PathBuf,
}

/// Where a blob's bytes come from: a local layout, an archive member, a registry.
pub(crate) trait BlobSource {
    /// Where blobs are read from, for messages (a path or a URL).
    fn location(&self, digest: &Sha256Digest) -> String;

    /// The blob's bytes from `offset` on. Returns the reader and the offset it really starts
    /// at: `offset`, or 0 when the source cannot resume (a server that ignores Range).
    fn open_blob(
        &mut self,
        digest: &Sha256Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + '_>, u64), ImportError>;

    /// A manifest or index named by digest (registries serve those at `/manifests/`).
    fn open_manifest(&mut self, digest: &Sha256Digest) -> Result<Box<dyn Read + '_>, ImportError> {
        self.open_blob(digest, 0).map(|(reader, _)| reader)
    }

    /// Keep an interrupted download as `.partial` to resume (worth it only over a network).
    fn resumable(&self) -> bool;
}

impl BlobCache {
    pub(crate) fn open(blob_dir: &Path) -> Result<Self, ImportError> {
        let dir = blob_dir.join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self { dir })
    }

    pub(crate) fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join(digest.to_hex())
    }

    fn partial_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{}.partial", digest.to_hex()))
    }

    /// The cached blob, if there is one of the right size. One of another size is not this
    /// blob (a damaged cache): it is removed so it is fetched again.
    fn lookup(&self, digest: &Sha256Digest, size: u64) -> Result<Option<PathBuf>, ImportError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() == size => Ok(Some(path)),
            Ok(_) => {
                fs::remove_file(&path).map_err(io_err(&path))?;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Stores bytes already verified against `digest`.
    fn put(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<PathBuf, ImportError> {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        temp.write_all(bytes).map_err(io_err(temp.path()))?;
        temp.as_file().sync_all().map_err(io_err(temp.path()))?;
        temp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        Ok(path)
    }

    /// Stores a file already verified against `digest` (it is moved, not copied).
    fn put_file(
        &self,
        digest: &Sha256Digest,
        file: tempfile::NamedTempFile,
    ) -> Result<PathBuf, ImportError> {
        let path = self.path(digest);
        file.as_file().sync_all().map_err(io_err(file.path()))?;
        file.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        Ok(path)
    }

    /// Opens and locks `<hex>.partial`. The lock (flock) keeps two pulls sharing the cache from
    /// writing one file; the loop reopens when the file we locked was renamed into the cache or
    /// removed by the previous holder meanwhile.
    fn lock_partial(&self, digest: &Sha256Digest) -> Result<(File, PathBuf), ImportError> {
        let partial = self.partial_path(digest);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial)
                .map_err(io_err(&partial))?;
            file.lock().map_err(io_err(&partial))?;
            let locked = file.metadata().map_err(io_err(&partial))?;
            match fs::metadata(&partial) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    return Ok((file, partial));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&partial)(e)),
            }
        }
    }

    /// Fetches the blob `desc` into the cache (unless it is there), verifying size and digest.
    fn fetch(
        &self,
        what: &str,
        desc: &Descriptor,
        source: &mut dyn BlobSource,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, ImportError> {
        if let Some(path) = self.lookup(&desc.digest, desc.size)? {
            progress(desc.size);
            return Ok(path);
        }
        let (mut file, partial) = self.lock_partial(&desc.digest)?;
        // Another pull may have finished this blob while we waited for the lock; the partial
        // file we hold is then an empty one of our own.
        if let Some(path) = self.lookup(&desc.digest, desc.size)? {
            let _ = fs::remove_file(&partial);
            progress(desc.size);
            return Ok(path);
        }
        let result = self.fill(what, desc, source, &mut file, &partial, progress);
        match result {
            Ok(()) => {
                let path = self.path(&desc.digest);
                fs::rename(&partial, &path).map_err(io_err(&path))?;
                Ok(path)
            }
            Err(err) => {
                let keep = source.resumable()
                    && matches!(
                        err,
                        ImportError::Transfer { .. } | ImportError::ShortBlob { .. }
                    );
                if !keep {
                    let _ = fs::remove_file(&partial);
                }
                Err(err)
            }
        }
    }

    /// Writes the blob into the locked `.partial` file: resumes after what it holds, and starts
    /// over once if a resumed blob does not verify (the earlier bytes may be from a bad server).
    fn fill(
        &self,
        what: &str,
        desc: &Descriptor,
        source: &mut dyn BlobSource,
        file: &mut File,
        partial: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), ImportError> {
        let location = source.location(&desc.digest);
        let mut have = file.metadata().map_err(io_err(partial))?.len();
        if have > desc.size || !source.resumable() {
            have = 0;
        }
        for attempt in 0..2 {
            let resumed_from = have;
            let mut hasher = Sha256::new();
            if have > 0 {
                file.seek(SeekFrom::Start(0)).map_err(io_err(partial))?;
                let copied =
                    io::copy(&mut (&mut *file).take(have), &mut hasher).map_err(io_err(partial))?;
                if copied != have {
                    have = 0;
                    hasher = Sha256::new();
                }
            }
            if have < desc.size {
                let (mut reader, start) = source
                    .open_blob(&desc.digest, have)
                    .map_err(|e| naming(e, what))?;
                if start != have {
                    // The source sent the whole blob: drop what we had.
                    have = 0;
                    hasher = Sha256::new();
                }
                file.set_len(have).map_err(io_err(partial))?;
                file.seek(SeekFrom::Start(have)).map_err(io_err(partial))?;
                progress(have);
                have = copy_bounded(&mut reader, file, &mut hasher, have, desc.size, progress)
                    .map_err(|e| match e {
                        CopyError::Read(source) => ImportError::Transfer {
                            what: what.to_owned(),
                            location: location.clone(),
                            source,
                        },
                        CopyError::Write(source) => io_err(partial)(source),
                        CopyError::TooLong => ImportError::TooLarge {
                            what: what.to_owned(),
                            location: location.clone(),
                            limit: desc.size,
                        },
                    })?;
                if have < desc.size {
                    file.sync_all().map_err(io_err(partial))?;
                    return Err(ImportError::ShortBlob {
                        what: what.to_owned(),
                        location,
                        expected: desc.size,
                        actual: have,
                    });
                }
            } else {
                progress(have);
            }
            let actual = Sha256Digest(hasher.finalize().into());
            if actual == desc.digest {
                file.sync_all().map_err(io_err(partial))?;
                return Ok(());
            }
            if resumed_from == 0 || attempt == 1 {
                return Err(ImportError::DigestMismatch {
                    what: what.to_owned(),
                    location,
                    expected: oci_digest(&desc.digest),
                    actual: oci_digest(&actual),
                });
            }
            have = 0;
        }
        unreachable!("the second attempt returns")
    }
}

/// A missing blob named as what it is to the image ("layer 2 of 3", "config").
fn naming(err: ImportError, what: &str) -> ImportError {
    match err {
        ImportError::MissingBlob {
            digest, location, ..
        } => ImportError::MissingBlob {
            what: what.to_owned(),
            digest,
            location,
        },
        other => other,
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLong,
}

/// Copies from `reader` until `limit` bytes are in `out` (counting `done` already there),
/// hashing as it goes; one byte more from the reader is an error. Returns the bytes in `out`.
fn copy_bounded(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    hasher: &mut Sha256,
    mut done: u64,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut reported = done;
    loop {
        let want = usize::try_from((limit - done).min(buf.len() as u64)).unwrap_or(buf.len());
        if want == 0 {
            // Exactly the size read: a server sending more is cut off here and refused.
            let mut probe = [0u8; 1];
            return match read_retrying(reader, &mut probe).map_err(CopyError::Read)? {
                0 => Ok(done),
                _ => Err(CopyError::TooLong),
            };
        }
        let n = read_retrying(reader, &mut buf[..want]).map_err(CopyError::Read)?;
        if n == 0 {
            progress(done);
            return Ok(done);
        }
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        hasher.update(&buf[..n]);
        done += n as u64;
        if done - reported >= PROGRESS_STEP || done == limit {
            progress(done);
            reported = done;
        }
    }
}

fn read_retrying(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads a whole document of at most `limit` bytes.
fn read_document(
    reader: &mut dyn Read,
    what: &str,
    location: &str,
    limit: u64,
) -> Result<Vec<u8>, ImportError> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImportError::Transfer {
            what: what.to_owned(),
            location: location.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ImportError::TooLarge {
            what: what.to_owned(),
            location: location.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Checks a document's bytes against its descriptor: size first, then digest.
fn verify_document(
    bytes: &[u8],
    desc: &Descriptor,
    what: &str,
    location: &str,
) -> Result<(), ImportError> {
    if bytes.len() as u64 != desc.size {
        if (bytes.len() as u64) < desc.size {
            return Err(ImportError::ShortBlob {
                what: what.to_owned(),
                location: location.to_owned(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        return Err(ImportError::TooLarge {
            what: what.to_owned(),
            location: location.to_owned(),
            limit: desc.size,
        });
    }
    let actual = Sha256Digest::of(bytes);
    if actual != desc.digest {
        return Err(ImportError::DigestMismatch {
            what: what.to_owned(),
            location: location.to_owned(),
            expected: oci_digest(&desc.digest),
            actual: oci_digest(&actual),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resolution: index -> manifest -> config and layers, the same for every source

/// A manifest or index as fetched, with the media type its referrer gave (a descriptor or an
/// HTTP Content-Type), already checked against its digest.
pub(crate) struct Document {
    pub(crate) bytes: Vec<u8>,
    pub(crate) digest: Sha256Digest,
    pub(crate) media_type: Option<String>,
    pub(crate) location: String,
}

enum DocumentKind {
    Index,
    Manifest,
}

fn classify(doc: &Document) -> Result<DocumentKind, ImportError> {
    let probe: DocumentProbe = parse_json(&doc.bytes, "manifest", &doc.location)?;
    if let (Some(listed), Some(own)) = (&doc.media_type, &probe.media_type)
        && listed != own
    {
        // OCI image spec (descriptor.md): the descriptor's media type must match the
        // document's own, or one document could be read as another.
        return Err(ImportError::MediaTypeMismatch {
            what: "manifest".into(),
            location: doc.location.clone(),
            listed: listed.clone(),
            own: own.clone(),
        });
    }
    let media_type = doc.media_type.as_deref().or(probe.media_type.as_deref());
    match media_type {
        Some(media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST) => Ok(DocumentKind::Index),
        Some(media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST) => Ok(DocumentKind::Manifest),
        Some(other) => Err(ImportError::UnsupportedMediaType {
            what: "manifest".into(),
            digest: oci_digest(&doc.digest),
            media_type: other.to_owned(),
        }),
        None if probe.manifests.is_some() => Ok(DocumentKind::Index),
        None if probe.config.is_some() => Ok(DocumentKind::Manifest),
        None => Err(ImportError::Malformed {
            what: "manifest".into(),
            location: doc.location.clone(),
            detail: "neither a manifest nor an index (no mediaType, config or manifests)".into(),
        }),
    }
}

/// Reads the manifest or index `desc` names, verified.
fn fetch_manifest(source: &mut dyn BlobSource, desc: &Descriptor) -> Result<Document, ImportError> {
    let location = source.location(&desc.digest);
    if desc.size > MAX_DOCUMENT_BYTES {
        return Err(ImportError::TooLarge {
            what: "manifest".into(),
            location,
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let mut reader = source.open_manifest(&desc.digest)?;
    let bytes = read_document(&mut reader, "manifest", &location, desc.size)?;
    verify_document(&bytes, desc, "manifest", &location)?;
    Ok(Document {
        bytes,
        digest: desc.digest,
        media_type: desc.media_type.clone(),
        location,
    })
}

/// Picks the manifest for `platform` from an index's entries.
fn choose_platform<'d>(
    entries: &'d [DescriptorWire],
    platform: &Platform,
    location: &str,
) -> Result<&'d DescriptorWire, ImportError> {
    entries
        .iter()
        .find(|entry| {
            entry
                .platform
                .as_ref()
                .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .ok_or_else(|| ImportError::NoMatchingPlatform {
            location: location.to_owned(),
            wanted: platform.to_string(),
            available: list_or_none(entries.iter().filter_map(|entry| {
                entry.platform.as_ref().map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
            })),
        })
}

fn list_or_none(items: impl Iterator<Item = String>) -> String {
    let list: Vec<String> = items.collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// From the top document (a manifest or an index) to a pulled image.
pub(crate) fn resolve(
    source: &mut dyn BlobSource,
    top: Document,
    cache: &BlobCache,
    options: &PullOptions<'_>,
) -> Result<PulledImage, ImportError> {
    let mut doc = top;
    let mut depth = 0;
    loop {
        match classify(&doc)? {
            DocumentKind::Manifest => break,
            DocumentKind::Index => {
                depth += 1;
                if depth > MAX_INDEX_DEPTH {
                    return Err(ImportError::Malformed {
                        what: "image index".into(),
                        location: doc.location,
                        detail: format!("indexes nested more than {MAX_INDEX_DEPTH} deep"),
                    });
                }
                let index: IndexWire = parse_json(&doc.bytes, "image index", &doc.location)?;
                check_schema(index.schema_version, "image index", &doc.location)?;
                let entry = choose_platform(&index.manifests, &options.platform, &doc.location)?;
                let desc = Descriptor::from_wire(entry, &doc.location)?;
                doc = fetch_manifest(source, &desc)?;
            }
        }
    }
    let manifest: ManifestWire = parse_json(&doc.bytes, "manifest", &doc.location)?;
    check_schema(manifest.schema_version, "manifest", &doc.location)?;
    cache.put(&doc.digest, &doc.bytes)?;
    image_from_manifest(source, &doc, &manifest, cache, options)
}

fn check_schema(version: u32, what: &str, location: &str) -> Result<(), ImportError> {
    if version == 2 {
        return Ok(());
    }
    Err(ImportError::Malformed {
        what: what.to_owned(),
        location: location.to_owned(),
        detail: format!(
            "schemaVersion {version}, only 2 is read (Docker schema 1 manifests are obsolete)"
        ),
    })
}

fn image_from_manifest(
    source: &mut dyn BlobSource,
    doc: &Document,
    manifest: &ManifestWire,
    cache: &BlobCache,
    options: &PullOptions<'_>,
) -> Result<PulledImage, ImportError> {
    let config_desc = Descriptor::from_wire(&manifest.config, &doc.location)?;
    match config_desc.media_type.as_deref() {
        Some(media_type::OCI_CONFIG | media_type::DOCKER_CONFIG) => {}
        other => {
            return Err(ImportError::UnsupportedMediaType {
                what: "config".into(),
                digest: oci_digest(&config_desc.digest),
                media_type: other.unwrap_or("(none)").to_owned(),
            });
        }
    }
    if manifest.layers.len() > MAX_LAYERS {
        return Err(ImportError::TooManyLayers {
            count: manifest.layers.len(),
            limit: MAX_LAYERS,
        });
    }
    // Every layer's media type is checked before anything is downloaded.
    let mut layer_descs = Vec::with_capacity(manifest.layers.len());
    for wire in &manifest.layers {
        let desc = Descriptor::from_wire(wire, &doc.location)?;
        let media_type = desc
            .media_type
            .as_deref()
            .and_then(LayerMediaType::parse)
            .ok_or_else(|| ImportError::UnsupportedMediaType {
                what: "layer".into(),
                digest: oci_digest(&desc.digest),
                media_type: desc.media_type.clone().unwrap_or_else(|| "(none)".into()),
            })?;
        layer_descs.push((desc, media_type));
    }

    let config_location = source.location(&config_desc.digest);
    if config_desc.size > MAX_DOCUMENT_BYTES {
        return Err(ImportError::TooLarge {
            what: "config".into(),
            location: config_location,
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let total = config_desc.size + layer_descs.iter().map(|(d, _)| d.size).sum::<u64>();
    let config_bytes = {
        let (mut reader, _) = source
            .open_blob(&config_desc.digest, 0)
            .map_err(|e| naming(e, "config"))?;
        read_document(&mut reader, "config", &config_location, config_desc.size)?
    };
    verify_document(&config_bytes, &config_desc, "config", &config_location)?;
    let config = parse_config(&config_bytes, &config_location, &options.platform)?;
    check_diff_ids(&config, layer_descs.len(), &config_location)?;
    cache.put(&config_desc.digest, &config_bytes)?;
    let mut done = config_desc.size;
    (options.progress)(Progress {
        blob: config_desc.digest,
        blob_done: config_desc.size,
        blob_size: config_desc.size,
        done,
        total,
    });

    let count = layer_descs.len();
    let mut layers = Vec::with_capacity(count);
    for (i, ((desc, media_type), diff_id)) in
        layer_descs.into_iter().zip(&config.diff_ids).enumerate()
    {
        let what = format!("layer {} of {count}", i + 1);
        if media_type.compression() == Compression::None && desc.digest != *diff_id {
            return Err(ImportError::DigestMismatch {
                what: format!("{what}: uncompressed, so its diff_id"),
                location: config_location,
                expected: oci_digest(diff_id),
                actual: oci_digest(&desc.digest),
            });
        }
        let before = done;
        let path = cache.fetch(&what, &desc, source, &mut |blob_done| {
            (options.progress)(Progress {
                blob: desc.digest,
                blob_done,
                blob_size: desc.size,
                done: before + blob_done,
                total,
            });
        })?;
        done += desc.size;
        layers.push(Layer {
            digest: desc.digest,
            media_type,
            size: desc.size,
            path,
            diff_id: *diff_id,
        });
    }
    Ok(PulledImage {
        manifest_digest: doc.digest,
        config_digest: config_desc.digest,
        config,
        layers,
    })
}

fn parse_config(
    bytes: &[u8],
    location: &str,
    platform: &Platform,
) -> Result<ImageConfig, ImportError> {
    let wire: ConfigWire = parse_json(bytes, "image config", location)?;
    if wire.rootfs.kind != "layers" {
        return Err(ImportError::Malformed {
            what: "image config".into(),
            location: location.to_owned(),
            detail: format!("rootfs.type is {:?}, not \"layers\"", wire.rootfs.kind),
        });
    }
    let config = ImageConfig::try_from(wire)?;
    if !platform.matches(&config.os, &config.architecture, config.variant.as_deref()) {
        let found = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        return Err(ImportError::ArchitectureMismatch {
            wanted: platform.to_string(),
            found: found.to_string(),
        });
    }
    Ok(config)
}

fn check_diff_ids(config: &ImageConfig, layers: usize, location: &str) -> Result<(), ImportError> {
    if config.diff_ids.len() == layers {
        return Ok(());
    }
    Err(ImportError::Malformed {
        what: "image config".into(),
        location: location.to_owned(),
        detail: format!(
            "{} diff_ids for {layers} layers in the manifest",
            config.diff_ids.len()
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Local sources: OCI layouts in a directory or a tar, docker-archive

/// A file inside an archive: where its data starts and how long it is.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

/// The members of a tar archive, read once (headers only; data is seeked over).
#[derive(Debug)]
struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

/// Archive member names compared without `./` in front.
fn member_name(name: &str) -> String {
    let mut name = name;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    name.trim_start_matches('/').to_owned()
}

impl TarIndex {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let truncated = |detail: String| ImportError::TruncatedArchive {
            archive: path.to_owned(),
            detail,
        };
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let entries = archive
            .entries_with_seek()
            .map_err(|e| truncated(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| truncated(format!("unreadable header: {e}")))?;
            let name = member_name(&String::from_utf8_lossy(&entry.path_bytes()));
            let offset = entry.raw_file_position();
            let size = entry.size();
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().into_owned();
                    let base = if kind.is_symlink() {
                        name.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned()
                    } else {
                        String::new()
                    };
                    links.push((name, base, target));
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(truncated(format!(
                    "{name} needs {size} bytes from offset {offset}, the file has {file_len}"
                )));
            }
            members.insert(name, Member { offset, size });
        }
        // `docker save` links each `<id>/layer.tar` to a shared file; resolve those once.
        for (name, base, target) in links {
            let joined = resolve_link(&base, &target);
            if let Some(member) = members.get(&joined).copied() {
                members.insert(name, member);
            }
        }
        Ok(Self {
            path: path.to_owned(),
            members,
        })
    }

    fn location(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }
}

/// `base/target` with `.` and `..` applied (within the archive: `..` never leaves its root).
fn resolve_link(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// A file opened at some offset, and its whole length.
type OpenedFile = (Box<dyn Read>, u64);

/// The files of an OCI layout: a directory, or a tar of one.
#[derive(Debug)]
enum LayoutFiles {
    Dir(PathBuf),
    Tar(TarIndex),
}

impl LayoutFiles {
    fn location(&self, name: &str) -> String {
        match self {
            Self::Dir(dir) => dir.join(name).display().to_string(),
            Self::Tar(index) => index.location(name),
        }
    }

    /// The file `name` from byte `offset`, and its length; `None` when there is no such file.
    fn open(&self, name: &str, offset: u64) -> Result<Option<OpenedFile>, ImportError> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(name);
                let mut file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err(&path)(e)),
                };
                let meta = file.metadata().map_err(io_err(&path))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                file.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
                Ok(Some((Box::new(file), meta.len())))
            }
            Self::Tar(index) => {
                let Some(member) = index.members.get(name).copied() else {
                    return Ok(None);
                };
                let mut file = File::open(&index.path).map_err(io_err(&index.path))?;
                let start = member.offset + offset.min(member.size);
                file.seek(SeekFrom::Start(start))
                    .map_err(io_err(&index.path))?;
                let rest = member.size - offset.min(member.size);
                Ok(Some((Box::new(file.take(rest)), member.size)))
            }
        }
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => dir.join(name).is_file(),
            Self::Tar(index) => index.members.contains_key(name),
        }
    }

    fn read_document(&self, name: &str, what: &str) -> Result<Vec<u8>, ImportError> {
        let (mut reader, _) = self.open(name, 0)?.ok_or_else(|| ImportError::Malformed {
            what: what.to_owned(),
            location: self.location(name),
            detail: "missing".into(),
        })?;
        read_document(&mut reader, what, &self.location(name), MAX_DOCUMENT_BYTES)
    }
}

fn blob_name(digest: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", digest.to_hex())
}

/// An OCI image layout as a source of blobs.
#[derive(Debug)]
struct OciLayout {
    files: LayoutFiles,
}

impl BlobSource for OciLayout {
    fn location(&self, digest: &Sha256Digest) -> String {
        self.files.location(&blob_name(digest))
    }

    fn open_blob(
        &mut self,
        digest: &Sha256Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + '_>, u64), ImportError> {
        let name = blob_name(digest);
        match self.files.open(&name, offset)? {
            Some((reader, _)) => Ok((reader, offset)),
            None => Err(ImportError::MissingBlob {
                what: "blob".into(),
                digest: oci_digest(digest),
                location: match &self.files {
                    LayoutFiles::Dir(dir) => dir.display().to_string(),
                    LayoutFiles::Tar(index) => index.path.display().to_string(),
                },
            }),
        }
    }

    fn resumable(&self) -> bool {
        false
    }
}

/// How an image is picked out of an OCI layout's `index.json`.
enum Selector<'a> {
    /// Matched against `org.opencontainers.image.ref.name`.
    Tag(&'a str),
    /// A `docker save` name (`NAME:TAG`): matched against containerd's image name annotation
    /// or, by its tag, against the ref name.
    DockerName(&'a str),
    Only,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

impl OciLayout {
    /// Reads `oci-layout` and `index.json` and returns the top document `selector` names.
    fn top(
        &mut self,
        selector: Selector<'_>,
        platform: &Platform,
    ) -> Result<Document, ImportError> {
        let layout_bytes = self.files.read_document("oci-layout", "oci-layout file")?;
        #[derive(Deserialize)]
        struct LayoutWire {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let layout: LayoutWire = parse_json(
            &layout_bytes,
            "oci-layout file",
            &self.files.location("oci-layout"),
        )?;
        if !layout.version.starts_with("1.") {
            return Err(ImportError::Malformed {
                what: "oci-layout file".into(),
                location: self.files.location("oci-layout"),
                detail: format!("imageLayoutVersion {:?}, only 1.x is read", layout.version),
            });
        }
        let location = self.files.location("index.json");
        let bytes = self.files.read_document("index.json", "index.json")?;
        let index: IndexWire = parse_json(&bytes, "index.json", &location)?;
        check_schema(index.schema_version, "index.json", &location)?;
        let tags = || {
            list_or_none(
                index
                    .manifests
                    .iter()
                    .filter_map(|m| m.annotations.get(REF_NAME).cloned()),
            )
        };
        let chosen = match selector {
            Selector::Tag(tag) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME).is_some_and(|name| name == tag))
                .ok_or_else(|| ImportError::TagNotFound {
                    location: location.clone(),
                    tag: tag.to_owned(),
                    available: tags(),
                })?,
            Selector::DockerName(name) => {
                let tag = name.rsplit_once(':').map_or(name, |(_, tag)| tag);
                index
                    .manifests
                    .iter()
                    .find(|m| {
                        m.annotations
                            .get(CONTAINERD_NAME)
                            .is_some_and(|n| docker_names_match(n, name))
                    })
                    .or_else(|| {
                        index.manifests.iter().find(|m| {
                            m.annotations
                                .get(REF_NAME)
                                .is_some_and(|n| n == tag || n == name)
                        })
                    })
                    .ok_or_else(|| ImportError::TagNotFound {
                        location: location.clone(),
                        tag: name.to_owned(),
                        available: tags(),
                    })?
            }
            Selector::Only => match index.manifests.as_slice() {
                [only] => only,
                [] => {
                    return Err(ImportError::Malformed {
                        what: "index.json".into(),
                        location,
                        detail: "no manifests".into(),
                    });
                }
                // A layout holding one image per platform, untagged, is an index itself.
                many if many.iter().all(|m| m.platform.is_some()) => {
                    choose_platform(many, platform, &location)?
                }
                many => {
                    return Err(ImportError::AmbiguousImage {
                        location,
                        count: many.len(),
                        available: tags(),
                    });
                }
            },
        };
        let desc = Descriptor::from_wire(chosen, &location)?;
        fetch_manifest(self, &desc)
    }
}

/// Compares two Docker image names, with or without the implied `docker.io/` and `library/`.
fn docker_names_match(a: &str, b: &str) -> bool {
    fn normalise(name: &str) -> String {
        let name = name.strip_prefix("docker.io/").unwrap_or(name);
        let name = name.strip_prefix("library/").unwrap_or(name);
        if name
            .rsplit_once('/')
            .map_or(name, |(_, last)| last)
            .contains(':')
        {
            name.to_owned()
        } else {
            format!("{name}:latest")
        }
    }
    normalise(a) == normalise(b)
}

fn pull_docker_archive(
    file: &Path,
    reference: Option<&str>,
    cache: &BlobCache,
    options: &PullOptions<'_>,
) -> Result<PulledImage, ImportError> {
    let index = TarIndex::open(file)?;
    let files = LayoutFiles::Tar(index);
    // Docker 25 and later write an OCI layout beside manifest.json: its manifest is the
    // registry's, digest and all, so it is preferred.
    if files.exists("index.json") && files.exists("oci-layout") {
        let mut layout = OciLayout { files };
        let selector = reference.map_or(Selector::Only, Selector::DockerName);
        let top = layout.top(selector, &options.platform)?;
        return resolve(&mut layout, top, cache, options);
    }
    let manifest_location = files.location("manifest.json");
    let bytes = files.read_document("manifest.json", "docker-archive manifest.json")?;
    let entries: Vec<DockerArchiveEntry> =
        parse_json(&bytes, "docker-archive manifest.json", &manifest_location)?;
    let all_tags = || {
        list_or_none(
            entries
                .iter()
                .flat_map(|e| e.repo_tags.iter().flatten().cloned()),
        )
    };
    let entry = match (reference, entries.as_slice()) {
        (Some(name), _) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .iter()
                    .flatten()
                    .any(|t| docker_names_match(t, name))
            })
            .ok_or_else(|| ImportError::TagNotFound {
                location: manifest_location.clone(),
                tag: name.to_owned(),
                available: all_tags(),
            })?,
        (None, [only]) => only,
        (None, many) => {
            return Err(ImportError::AmbiguousImage {
                location: manifest_location,
                count: many.len(),
                available: all_tags(),
            });
        }
    };
    if entry.layers.len() > MAX_LAYERS {
        return Err(ImportError::TooManyLayers {
            count: entry.layers.len(),
            limit: MAX_LAYERS,
        });
    }

    let config_name = member_name(&entry.config);
    let config_location = files.location(&config_name);
    let config_bytes = files.read_document(&config_name, "config")?;
    let config_digest = Sha256Digest::of(&config_bytes);
    // The file is named by its digest (`<hex>.json`, or `blobs/sha256/<hex>`): check the claim.
    if let Some(named) = digest_in_name(&config_name)
        && named != config_digest
    {
        return Err(ImportError::DigestMismatch {
            what: "config".into(),
            location: config_location,
            expected: oci_digest(&named),
            actual: oci_digest(&config_digest),
        });
    }
    let config = parse_config(&config_bytes, &config_location, &options.platform)?;
    check_diff_ids(&config, entry.layers.len(), &config_location)?;
    cache.put(&config_digest, &config_bytes)?;

    let sizes: Vec<u64> = entry
        .layers
        .iter()
        .map(|name| {
            let name = member_name(name);
            match &files {
                LayoutFiles::Tar(index) => index.members.get(&name).map_or(0, |m| m.size),
                LayoutFiles::Dir(_) => 0,
            }
        })
        .collect();
    let total = config_bytes.len() as u64 + sizes.iter().sum::<u64>();
    let mut done = config_bytes.len() as u64;
    let count = entry.layers.len();
    let mut layers = Vec::with_capacity(count);
    for (i, (name, diff_id)) in entry.layers.iter().zip(&config.diff_ids).enumerate() {
        let name = member_name(name);
        let location = files.location(&name);
        let what = format!("layer {} of {count} ({name})", i + 1);
        let (mut reader, size) = files
            .open(&name, 0)?
            .ok_or_else(|| ImportError::MissingBlob {
                what: format!("layer {} of {count}", i + 1),
                digest: oci_digest(diff_id),
                location: location.clone(),
            })?;
        let before = done;
        let layer = copy_archive_layer(
            &mut reader,
            size,
            diff_id,
            &what,
            &location,
            cache,
            &mut |blob_done| {
                (options.progress)(Progress {
                    blob: *diff_id,
                    blob_done,
                    blob_size: size,
                    done: before + blob_done,
                    total,
                });
            },
        )?;
        done += size;
        layers.push(layer);
    }

    // No registry manifest exists for a plain docker-archive: the OCI manifest describing
    // exactly these blobs is written (compact JSON, fields in the spec's order) and cached, so
    // the image has a digest like any other.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": media_type::OCI_CONFIG,
            "digest": oci_digest(&config_digest),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type.as_str(),
            "digest": oci_digest(&l.digest),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| ImportError::Malformed {
        what: "manifest".into(),
        location: manifest_location,
        detail: e.to_string(),
    })?;
    let manifest_digest = Sha256Digest::of(&manifest_bytes);
    cache.put(&manifest_digest, &manifest_bytes)?;
    Ok(PulledImage {
        manifest_digest,
        config_digest,
        config,
        layers,
    })
}

/// The digest a file name claims: `<64 hex>[.ext]` as the last path component.
fn digest_in_name(name: &str) -> Option<Sha256Digest> {
    let last = name.rsplit('/').next()?;
    let stem = last.split('.').next()?;
    (stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| Sha256Digest::parse(stem).ok())
        .flatten()
}

/// Copies a docker-archive layer into the cache. Its only anchor is the config's diff_id, so
/// the layer is verified against that: directly when it is an uncompressed tar (as `docker
/// save` writes it), after decompressing otherwise.
fn copy_archive_layer(
    reader: &mut dyn Read,
    size: u64,
    diff_id: &Sha256Digest,
    what: &str,
    location: &str,
    cache: &BlobCache,
    progress: &mut dyn FnMut(u64),
) -> Result<Layer, ImportError> {
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&cache.dir)
        .map_err(io_err(&cache.dir))?;
    let mut hasher = Sha256::new();
    let copied =
        copy_bounded(reader, temp.as_file_mut(), &mut hasher, 0, size, progress).map_err(|e| {
            match e {
                CopyError::Read(source) => ImportError::Transfer {
                    what: what.to_owned(),
                    location: location.to_owned(),
                    source,
                },
                CopyError::Write(source) => io_err(&cache.dir)(source),
                CopyError::TooLong => ImportError::TooLarge {
                    what: what.to_owned(),
                    location: location.to_owned(),
                    limit: size,
                },
            }
        })?;
    if copied != size {
        return Err(ImportError::ShortBlob {
            what: what.to_owned(),
            location: location.to_owned(),
            expected: size,
            actual: copied,
        });
    }
    let digest = Sha256Digest(hasher.finalize().into());
    let file = temp.as_file_mut();
    file.seek(SeekFrom::Start(0)).map_err(io_err(&cache.dir))?;
    let mut head = [0u8; 4];
    let head_len = file.read(&mut head).map_err(io_err(&cache.dir))?;
    let compression = Compression::sniff(&head[..head_len]);
    let uncompressed = if compression == Compression::None {
        digest
    } else {
        file.seek(SeekFrom::Start(0)).map_err(io_err(&cache.dir))?;
        let mut decoder =
            compression
                .decoder(&mut *file)
                .map_err(|source| ImportError::Transfer {
                    what: what.to_owned(),
                    location: location.to_owned(),
                    source,
                })?;
        let mut hasher = Sha256::new();
        io::copy(&mut decoder, &mut hasher).map_err(|source| ImportError::Transfer {
            what: format!("{what}, decompressed"),
            location: location.to_owned(),
            source,
        })?;
        Sha256Digest(hasher.finalize().into())
    };
    if uncompressed != *diff_id {
        return Err(ImportError::DigestMismatch {
            what: format!("{what}: uncompressed tar against its diff_id"),
            location: location.to_owned(),
            expected: oci_digest(diff_id),
            actual: oci_digest(&uncompressed),
        });
    }
    let path = match cache.lookup(&digest, size)? {
        Some(path) => path,
        None => cache.put_file(&digest, temp)?,
    };
    Ok(Layer {
        digest,
        media_type: LayerMediaType::of_compression(compression),
        size,
        path,
        diff_id: *diff_id,
    })
}

// ---------------------------------------------------------------------------------------------
// The entry point

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
