//! Local image sources read with [`oci::pull`]: an OCI layout made by umoci, and the
//! oci-archive and docker-archive skopeo makes from it; then broken images, each refused with
//! the reason named and nothing but verified blobs left in the cache.
mod oci_support;

use std::{
    cell::{Cell, RefCell},
    fs,
    path::Path,
};

use oci_support::{
    ARM_TAG, Fixture, TAG, assert_cache_verified, assert_is_base_image, gunzip_digest, tools,
};
use stampede_rootfs::oci::{
    self, ImportError, LayerMediaType, Platform, Progress, PullOptions, Source, media_type,
};

const TOOLS: &[&str] = &["umoci", "skopeo"];

fn pull(source: &str, blob_dir: &Path) -> Result<oci::PulledImage, ImportError> {
    oci::pull(
        &Source::parse(source).expect("source"),
        &PullOptions::new(blob_dir),
    )
}

fn pull_for(
    source: &str,
    blob_dir: &Path,
    platform: &str,
) -> Result<oci::PulledImage, ImportError> {
    let mut options = PullOptions::new(blob_dir);
    options.platform = Platform::parse(platform).expect("platform");
    oci::pull(&Source::parse(source).expect("source"), &options)
}

#[test]
fn an_oci_layout_is_read_layer_by_layer_with_its_config() {
    if !tools("oci_layout", TOOLS) {
        return;
    }
    let fixture = Fixture::build();
    let cache = fixture.dir.path().join("cache");
    let reports = RefCell::new(Vec::<Progress>::new());
    let record = |p: Progress| reports.borrow_mut().push(p);
    let mut options = PullOptions::new(&cache);
    options.progress = &record;
    let source = Source::parse(&format!("oci:{}:{TAG}", fixture.layout.display())).unwrap();
    let image = oci::pull(&source, &options).expect("pull");

    assert_eq!(
        format!("sha256:{}", image.manifest_digest),
        fixture.manifest_digest(TAG)
    );
    let manifest = fixture.manifest(TAG);
    assert_eq!(
        format!("sha256:{}", image.config_digest),
        manifest["config"]["digest"].as_str().unwrap()
    );
    for (layer, listed) in image
        .layers
        .iter()
        .zip(manifest["layers"].as_array().unwrap())
    {
        assert_eq!(
            format!("sha256:{}", layer.digest),
            listed["digest"].as_str().unwrap()
        );
        assert_eq!(layer.size, listed["size"].as_u64().unwrap());
        assert_eq!(layer.media_type, LayerMediaType::OciTarGzip);
        assert!(layer.path.starts_with(&cache), "{}", layer.path.display());
        // The diff_id is the digest of the decompressed layer, checked here independently.
        assert_eq!(
            format!("sha256:{}", layer.diff_id),
            gunzip_digest(&layer.path)
        );
    }
    assert_is_base_image(&image, &fixture);
    assert_cache_verified(&cache);

    let reports = reports.into_inner();
    let last = reports.last().expect("progress reported");
    assert_eq!(last.done, last.total);
    let blobs: u64 = image.layers.iter().map(|l| l.size).sum();
    assert!(last.total > blobs, "the config counts too: {last:?}");
    assert!(
        reports.windows(2).all(|w| w[0].done <= w[1].done),
        "progress never goes back"
    );
    // The big layer (3 MiB incompressible) is reported more than once on the way.
    let big = image.layers.iter().max_by_key(|l| l.size).unwrap();
    assert!(reports.iter().filter(|p| p.blob == big.digest).count() >= 3);

    // A second pull finds everything in the cache and reads no blob from the layout.
    let blobs_dir = fixture.layout.join("blobs/sha256");
    for layer in &image.layers {
        fs::remove_file(blobs_dir.join(layer.digest.to_hex())).unwrap();
    }
    let again = oci::pull(&source, &PullOptions::new(&cache)).expect("pull from the cache");
    assert_eq!(again, image);
}

#[test]
fn an_oci_archive_reads_as_its_layout() {
    if !tools("oci_archive", TOOLS) {
        return;
    }
    let fixture = Fixture::build();
    let cache = fixture.dir.path().join("cache");
    let from_layout = pull(&format!("oci:{}:{TAG}", fixture.layout.display()), &cache).unwrap();
    let other_cache = fixture.dir.path().join("cache2");
    let archive = fixture.oci_archive.display();
    for text in [
        format!("oci-archive:{archive}:{TAG}"),
        format!("oci-archive:{archive}"),
    ] {
        let image = pull(&text, &other_cache).expect(&text);
        assert_is_base_image(&image, &fixture);
        assert_eq!(image.manifest_digest, from_layout.manifest_digest);
        assert_eq!(image.config, from_layout.config);
        let digests = |i: &oci::PulledImage| i.layers.iter().map(|l| l.digest).collect::<Vec<_>>();
        assert_eq!(digests(&image), digests(&from_layout));
    }
    assert_cache_verified(&other_cache);
    let err = pull(&format!("oci-archive:{archive}:nope"), &other_cache).unwrap_err();
    assert!(matches!(err, ImportError::TagNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("\"nope\"") && err.to_string().contains(TAG),
        "{err}"
    );
}

#[test]
fn a_docker_archive_yields_the_same_config_and_uncompressed_layers() {
    if !tools("docker_archive", TOOLS) {
        return;
    }
    let fixture = Fixture::build();
    let cache = fixture.dir.path().join("cache");
    let archive = fixture.docker_archive.display();
    let image = pull(&format!("docker-archive:{archive}"), &cache).expect("docker-archive");
    assert_is_base_image(&image, &fixture);
    // `docker save` layers are plain tars: digest and diff_id are one.
    for layer in &image.layers {
        assert_eq!(layer.media_type, LayerMediaType::OciTar);
        assert_eq!(layer.digest, layer.diff_id);
    }
    let manifest = fixture.manifest(TAG);
    assert_eq!(
        format!("sha256:{}", image.config_digest),
        manifest["config"]["digest"].as_str().unwrap(),
        "skopeo keeps the config's bytes"
    );
    // The manifest written for it is in the cache and describes these blobs.
    let written =
        oci_support::read_json(&cache.join("sha256").join(image.manifest_digest.to_hex()));
    assert_eq!(written["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(
        written["layers"][1]["digest"],
        format!("sha256:{}", image.layers[1].digest)
    );
    assert_cache_verified(&cache);

    // By name, as skopeo writes it in RepoTags (`docker.io/` implied).
    let named = pull(
        &format!("docker-archive:{archive}:example/img:{TAG}"),
        &cache,
    )
    .unwrap();
    assert_eq!(named, image);
    let err = pull(
        &format!("docker-archive:{archive}:example/img:other"),
        &cache,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("docker.io/example/img:base"),
        "{err}"
    );
}

#[test]
fn image_indexes_resolve_to_the_platform_asked_for() {
    if !tools("image_index", TOOLS) {
        return;
    }
    let fixture = Fixture::build();
    let cache = fixture.dir.path().join("cache");
    let entry = |tag: &str, arch: &str| {
        let digest = fixture.manifest_digest(tag);
        let size = fs::metadata(fixture.blob(&digest)).unwrap().len();
        serde_json::json!({
            "mediaType": media_type::OCI_MANIFEST, "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_INDEX,
        "manifests": [entry(ARM_TAG, "arm64"), entry(TAG, "amd64")],
    });
    fixture.put_manifest("multi", &index, media_type::OCI_INDEX);
    let source = format!("oci:{}:multi", fixture.layout.display());

    let amd64 = pull(&source, &cache).expect("default platform");
    assert_eq!(
        format!("sha256:{}", amd64.manifest_digest),
        fixture.manifest_digest(TAG)
    );
    assert_eq!(amd64.config.architecture, "amd64");
    let arm64 = pull_for(&source, &cache, "linux/arm64").expect("arm64");
    assert_eq!(
        format!("sha256:{}", arm64.manifest_digest),
        fixture.manifest_digest(ARM_TAG)
    );
    assert_eq!(arm64.config.architecture, "arm64");

    let err = pull_for(&source, &cache, "linux/s390x").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ImportError::NoMatchingPlatform { .. }),
        "{text}"
    );
    assert!(
        text.contains("linux/s390x")
            && text.contains("linux/arm64")
            && text.contains("linux/amd64"),
        "{text}"
    );
    assert_cache_verified(&cache);
}

#[test]
fn broken_images_are_refused_by_name_and_leave_only_verified_blobs() {
    if !tools("broken_images", TOOLS) {
        return;
    }
    let fixture = Fixture::build();
    let cache = fixture.dir.path().join("cache");
    let layout = fixture.layout.display().to_string();
    let manifest = fixture.manifest(TAG);
    let layer = |i: usize| manifest["layers"][i]["digest"].as_str().unwrap().to_owned();

    // Another architecture, named with both.
    let err = pull(&format!("oci:{layout}:{ARM_TAG}"), &cache).unwrap_err();
    assert!(
        matches!(err, ImportError::ArchitectureMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("arm64") && err.to_string().contains("amd64"),
        "{err}"
    );
    pull_for(&format!("oci:{layout}:{ARM_TAG}"), &cache, "linux/arm64").expect("arm64 allowed");

    // Two images and no tag.
    let err = pull(&format!("oci:{layout}"), &cache).unwrap_err();
    assert!(
        matches!(err, ImportError::AmbiguousImage { count: 2, .. }),
        "{err}"
    );

    // A layer media type that is not ours to fetch.
    let mut foreign = manifest.clone();
    foreign["layers"][1]["mediaType"] =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into();
    fixture.put_manifest("foreign", &foreign, media_type::OCI_MANIFEST);
    let err = pull(&format!("oci:{layout}:foreign"), &cache).unwrap_err();
    assert!(
        matches!(err, ImportError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nondistributable"), "{err}");

    // Another digest algorithm.
    let mut sha512 = manifest.clone();
    sha512["layers"][0]["digest"] = format!("sha512:{}", "ab".repeat(64)).into();
    fixture.put_manifest("sha512", &sha512, media_type::OCI_MANIFEST);
    let err = pull(&format!("oci:{layout}:sha512"), &cache).unwrap_err();
    assert!(
        matches!(err, ImportError::UnsupportedDigest { .. }),
        "{err}"
    );

    // A descriptor smaller than its blob: the extra bytes are refused.
    let mut small = manifest.clone();
    let size = small["layers"][1]["size"].as_u64().unwrap();
    small["layers"][1]["size"] = (size - 1).into();
    fixture.put_manifest("small", &small, media_type::OCI_MANIFEST);
    let err = pull(&format!("oci:{layout}:small"), &cache).unwrap_err();
    assert!(matches!(err, ImportError::TooLarge { .. }), "{err}");

    // The manifest is itself checked: index.json naming a digest its blob does not have.
    let mut index = fixture.index();
    let lying = manifest["layers"][0]["digest"].clone();
    for entry in index["manifests"].as_array_mut().unwrap() {
        if entry["annotations"]["org.opencontainers.image.ref.name"] == TAG {
            let size = fs::metadata(fixture.blob(lying.as_str().unwrap()))
                .unwrap()
                .len();
            entry["size"] = size.into();
            entry["digest"] = lying.clone();
        }
    }
    let good_index = fs::read(fixture.layout.join("index.json")).unwrap();
    fs::write(
        fixture.layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let err = pull(&format!("oci:{layout}:{TAG}"), &cache).unwrap_err();
    assert!(
        matches!(err, ImportError::Malformed { .. }),
        "a layer is no manifest: {err}"
    );
    fs::write(fixture.layout.join("index.json"), good_index).unwrap();

    // A corrupt layer (same size, one byte flipped): expected and actual digests named. A fresh
    // cache, or the layers verified by the arm64 pull would be used.
    let cache = fixture.dir.path().join("fresh-cache");
    let path = fixture.blob(&layer(0));
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    fs::write(&path, &bad).unwrap();
    let err = pull(&format!("oci:{layout}:{TAG}"), &cache).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImportError::DigestMismatch { .. }), "{text}");
    assert!(
        text.contains(&layer(0))
            && text.contains(&format!("sha256:{}", oci_support::sha256_hex(&bad))),
        "{text}"
    );
    assert!(!cache.join("sha256").join(&layer(0)[7..]).exists());

    // A missing layer, named by digest.
    fs::remove_file(&path).unwrap();
    let err = pull(&format!("oci:{layout}:{TAG}"), &cache).unwrap_err();
    assert!(matches!(err, ImportError::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains(&layer(0)), "{err}");
    fs::write(&path, &good).unwrap();
    assert_cache_verified(&cache);
    pull(&format!("oci:{layout}:{TAG}"), &cache).expect("repaired layout");
}

/// Cuts `archive` in the middle of its largest member.
fn truncate_in_largest_member(archive: &Path) {
    let mut tar = tar::Archive::new(fs::File::open(archive).unwrap());
    let (offset, size) = tar
        .entries_with_seek()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.raw_file_position(), e.size())
        })
        .max_by_key(|&(_, size)| size)
        .unwrap();
    let file = fs::OpenOptions::new().write(true).open(archive).unwrap();
    file.set_len(offset + size / 2).unwrap();
}

#[test]
fn truncated_archives_are_refused() {
    if !tools("truncated_archives", TOOLS) {
        return;
    }
    let fixture = Fixture::build();
    let cache = fixture.dir.path().join("cache");
    let done = Cell::new(false);
    for (transport, archive) in [
        ("oci-archive", &fixture.oci_archive),
        ("docker-archive", &fixture.docker_archive),
    ] {
        truncate_in_largest_member(archive);
        let err = pull(&format!("{transport}:{}", archive.display()), &cache).unwrap_err();
        assert!(
            matches!(err, ImportError::TruncatedArchive { .. }),
            "{transport}: {err}"
        );
        assert!(err.to_string().contains("truncated archive"), "{err}");
        done.set(true);
    }
    assert!(done.get());
    assert_cache_verified(&cache);
}

#[test]
fn unknown_sources_are_refused_before_reading() {
    for (text, needle) in [
        ("docker-daemon:img:latest", "not supported"),
        ("img.tar", "no transport"),
        ("s3://bucket/img", "unknown transport"),
    ] {
        let err = Source::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let err = pull("oci:/nonexistent/stampede-layout", dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/stampede-layout"),
        "{err}"
    );
}
