//! Local images: OCI image layouts (a directory or a tar of one) and `docker save` archives.
use super::blob::{CopyError, copy_bounded};
use super::document::{
    check_diff_ids, check_schema, choose_platform, fetch_manifest, list_or_none, parse_config,
    read_document,
};
use super::*;

/// A file inside an archive: where its data starts and how long it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member {
    pub(super) offset: u64,
    pub(super) size: u64,
}

/// The members of a tar archive, read once (headers only; data is seeked over).
#[derive(Debug)]
pub(super) struct TarIndex {
    pub(super) path: PathBuf,
    pub(super) members: HashMap<String, Member>,
}

/// Archive member names compared without `./` in front.
pub(super) fn member_name(name: &str) -> String {
    let mut name = name;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    name.trim_start_matches('/').to_owned()
}

impl TarIndex {
    pub(super) fn open(path: &Path) -> Result<Self, ImportError> {
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

    pub(super) fn location(&self, name: &str) -> String {
        format!("{}:{name}", self.path.display())
    }
}

/// `base/target` with `.` and `..` applied (within the archive: `..` never leaves its root).
pub(super) fn resolve_link(base: &str, target: &str) -> String {
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
pub(super) type OpenedFile = (Box<dyn Read>, u64);

/// The files of an OCI layout: a directory, or a tar of one.
#[derive(Debug)]
pub(super) enum LayoutFiles {
    Dir(PathBuf),
    Tar(TarIndex),
}

impl LayoutFiles {
    pub(super) fn location(&self, name: &str) -> String {
        match self {
            Self::Dir(dir) => dir.join(name).display().to_string(),
            Self::Tar(index) => index.location(name),
        }
    }

    /// The file `name` from byte `offset`, and its length; `None` when there is no such file.
    pub(super) fn open(&self, name: &str, offset: u64) -> Result<Option<OpenedFile>, ImportError> {
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

    pub(super) fn exists(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => dir.join(name).is_file(),
            Self::Tar(index) => index.members.contains_key(name),
        }
    }

    pub(super) fn read_document(&self, name: &str, what: &str) -> Result<Vec<u8>, ImportError> {
        let (mut reader, _) = self.open(name, 0)?.ok_or_else(|| ImportError::Malformed {
            what: what.to_owned(),
            location: self.location(name),
            detail: "missing".into(),
        })?;
        read_document(&mut reader, what, &self.location(name), MAX_DOCUMENT_BYTES)
    }
}

pub(super) fn blob_name(digest: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", digest.to_hex())
}

/// An OCI image layout as a source of blobs.
#[derive(Debug)]
pub(super) struct OciLayout {
    pub(super) files: LayoutFiles,
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
pub(super) enum Selector<'a> {
    /// Matched against `org.opencontainers.image.ref.name`.
    Tag(&'a str),
    /// A `docker save` name (`NAME:TAG`): matched against containerd's image name annotation
    /// or, by its tag, against the ref name.
    DockerName(&'a str),
    Only,
}

pub(super) const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(super) const CONTAINERD_NAME: &str = "io.containerd.image.name";

impl OciLayout {
    /// Reads `oci-layout` and `index.json` and returns the top document `selector` names.
    pub(super) fn top(
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
pub(super) fn docker_names_match(a: &str, b: &str) -> bool {
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

pub(super) fn pull_docker_archive(
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
pub(super) fn digest_in_name(name: &str) -> Option<Sha256Digest> {
    let last = name.rsplit('/').next()?;
    let stem = last.split('.').next()?;
    (stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| Sha256Digest::parse(stem).ok())
        .flatten()
}

/// Copies a docker-archive layer into the cache. Its only anchor is the config's diff_id, so
/// the layer is verified against that: directly when it is an uncompressed tar (as `docker
/// save` writes it), after decompressing otherwise.
pub(super) fn copy_archive_layer(
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
