//! Manifests, indexes and configs: read bounded, verified against their descriptors, and
//! resolved to one platform's image.
use super::blob::naming;
use super::*;

/// Reads a whole document of at most `limit` bytes.
pub(super) fn read_document(
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
pub(super) fn verify_document(
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

pub(super) enum DocumentKind {
    Index,
    Manifest,
}

pub(super) fn classify(doc: &Document) -> Result<DocumentKind, ImportError> {
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
pub(super) fn fetch_manifest(
    source: &mut dyn BlobSource,
    desc: &Descriptor,
) -> Result<Document, ImportError> {
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
pub(super) fn choose_platform<'d>(
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

pub(super) fn list_or_none(items: impl Iterator<Item = String>) -> String {
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

pub(super) fn check_schema(version: u32, what: &str, location: &str) -> Result<(), ImportError> {
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

pub(super) fn image_from_manifest(
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

pub(super) fn parse_config(
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

pub(super) fn check_diff_ids(
    config: &ImageConfig,
    layers: usize,
    location: &str,
) -> Result<(), ImportError> {
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
