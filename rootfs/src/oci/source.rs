//! Where an image comes from: a source's text (`oci-layout:`, `docker-archive:`, a registry
//! reference) parsed and shown, and the platform chosen from an index.
use super::*;

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

pub(super) fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(super) fn valid_repository(repository: &str) -> bool {
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

    pub(super) fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
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
