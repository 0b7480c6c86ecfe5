//! Images: files in the content store, diskless roots by name, and the imports that make both.
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase as _, ReadableTable};
use sha2::{Digest, Sha256};

use super::{ControlError, ControlState, json, not_found};
use crate::api_types::{ImportJob, ImportRequest, PutOutcome};
use crate::audit;
use crate::auth::Caller;
use crate::imports::{
    ImageStore, ImageStoreError, ImportJobs, JobHandle, RootBuildProgress, RootBuildRequest,
    RootBuilder,
};
use crate::model::{Image, ImageKind, ImageSpec, RootImage, validate_name, validate_root_name};
use crate::store::{self, DbContext, IMAGES, ROOTS, decode, encode, read_all, write_entry};

/// A SHA-256 digest as bytes.
type Sha256Bytes = [u8; 32];

/// What a file import starts from: its name, the store, the digest it must have.
type FileImportPlan = (String, Arc<dyn ImageStore>, Option<Sha256Bytes>);

impl ControlState {
    /// Files in the content store, then diskless roots (by name).
    pub fn images(&self) -> Result<Vec<Image>, ControlError> {
        let txn = self.inner.db.begin_read().db("beginning a read")?;
        let table = txn.open_table(IMAGES).db("opening images")?;
        let mut images: Vec<Image> = read_all(&table, "images")?;
        images.extend(self.snapshot().roots.values().map(RootImage::as_image));
        Ok(images)
    }

    /// A file image by its hex SHA-256, else a root by name, else a root by image digest.
    pub fn image(&self, key: &str) -> Result<Image, ControlError> {
        let txn = self.inner.db.begin_read().db("beginning a read")?;
        let table = txn.open_table(IMAGES).db("opening images")?;
        let row = table.get(key).db("reading an image")?;
        if let Some(v) = row {
            return Ok(decode("images", key, v.value())?);
        }
        let snap = self.snapshot();
        let by_digest = format!("sha256:{}", key.trim_start_matches("sha256:"));
        snap.roots
            .get(key)
            .or_else(|| snap.root(&by_digest))
            .map(RootImage::as_image)
            .ok_or_else(|| not_found("image", key))
    }

    /// Diskless roots by name.
    pub fn roots(&self) -> Vec<RootImage> {
        self.snapshot().roots.values().cloned().collect()
    }

    /// Hashes the file (blocking: call it off the async workers) and records it under its
    /// SHA-256. Registering the same content again is a no-op.
    pub fn register_image(
        &self,
        actor: &Caller,
        spec: ImageSpec,
    ) -> Result<(Image, PutOutcome), ControlError> {
        validate_name(&spec.name)?;
        let file_err = |source| ControlError::ImageFile {
            path: spec.path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&spec.path).map_err(file_err)?;
        // A device or FIFO (/dev/zero, a pipe) would be read forever.
        if !file.metadata().map_err(file_err)?.is_file() {
            return Err(file_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(file_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let sha256 = hex::encode(hasher.finalize());
        let image = Image {
            sha256: sha256.clone(),
            name: spec.name,
            path: spec.path,
            size,
            registered_at_ms: store::now_ms(),
            kind: ImageKind::File,
            root: None,
        };
        self.mutate(|txn, _| {
            let mut table = txn.open_table(IMAGES).db("opening images")?;
            if let Some(v) = table.get(sha256.as_str()).db("reading an image")? {
                let old: Image = decode("images", &sha256, v.value())?;
                return Ok((old, PutOutcome::Unchanged));
            }
            table
                .insert(sha256.as_str(), encode(&image).as_slice())
                .db("writing an image")?;
            drop(table);
            audit::append(txn, &actor.name, "image.register", &sha256, json(&image))?;
            Ok((image.clone(), PutOutcome::Created))
        })
    }

    /// Where imports copy to. Only the first call has an effect.
    pub fn attach_image_store(&self, store: Arc<dyn ImageStore>) {
        let _ = self.inner.image_store.set(store);
    }

    pub fn imports(&self) -> &ImportJobs {
        &self.inner.imports
    }

    /// Where root imports build. Only the first call has an effect. The builder's files that
    /// no recorded root names any more are collected then (see
    /// [`Self::collect_root_garbage`]).
    pub fn attach_root_builder(&self, builder: Arc<dyn RootBuilder>) {
        let _ = self.inner.root_builder.set(builder);
        self.collect_root_garbage();
    }

    /// Asks the root builder to remove the built roots (and their chunks) that no recorded root
    /// names: at start, and after a root is deleted. Failures are logged, never fatal: the
    /// files only take space.
    pub fn collect_root_garbage(&self) {
        let Some(builder) = self.inner.root_builder.get() else {
            return;
        };
        let keep = self.roots().into_iter().map(|r| r.root_id).collect();
        if let Err(err) = builder.collect_garbage(&keep) {
            tracing::warn!(error = %err.0, "could not collect unused roots");
        }
    }

    /// What every file import checks first: the name, the expected digest, that there is a
    /// store.
    fn import_precheck(&self, req: &ImportRequest) -> Result<FileImportPlan, ControlError> {
        let name = req.name.clone().ok_or_else(|| ControlError::ImportSource {
            source_path: req.source.clone(),
            problem: "a file or URL import needs a name".into(),
        })?;
        validate_name(&name)?;
        let root_only = [
            ("ca_pem", req.ca_pem.is_some()),
            ("credentials", req.credentials.is_some()),
            ("plain_http", req.plain_http),
        ];
        if let Some((field, _)) = root_only.iter().find(|(_, given)| *given) {
            return Err(ControlError::ImportSource {
                source_path: req.source.clone(),
                problem: format!("{field} is for docker:// sources only"),
            });
        }
        let expected = match &req.sha256 {
            None => None,
            Some(hex_digest) => {
                let mut bytes = [0u8; 32];
                if hex_digest.len() != 64 || hex::decode_to_slice(hex_digest, &mut bytes).is_err() {
                    return Err(ControlError::BadDigest(hex_digest.clone()));
                }
                Some(bytes)
            }
        };
        let store = Arc::clone(
            self.inner
                .image_store
                .get()
                .ok_or(ControlError::NoImageStore)?,
        );
        Ok((name, store, expected))
    }

    /// Starts importing `req.source`, a file on the appliance (an absolute path), an
    /// `http://`/`https://` URL, or an OCI image in skopeo's syntax (a diskless root, see
    /// [`Self::start_root_import`]); returns the running job at once. The copy runs on a thread
    /// of its own. Must be called on a tokio runtime (a URL's body is read by a task).
    pub async fn start_import(
        &self,
        actor: &Caller,
        req: ImportRequest,
    ) -> Result<ImportJob, ControlError> {
        if crate::imports::is_root_source(&req.source) {
            return self.start_root_import(actor, req);
        }
        let (name, store, expected) = self.import_precheck(&req)?;
        let source_err = |problem: String| ControlError::ImportSource {
            source_path: req.source.clone(),
            problem,
        };
        let (reader, total): (Box<dyn std::io::Read + Send>, Option<u64>) =
            if req.source.starts_with("http://") || req.source.starts_with("https://") {
                let (body, total) = crate::imports::fetch(&req.source)
                    .await
                    .map_err(source_err)?;
                (Box::new(body), total)
            } else {
                if !Path::new(&req.source).is_absolute() {
                    return Err(source_err(
                        "neither an absolute path to a file on the appliance, an http(s) URL, \
                         nor an OCI image (oci:DIR[:TAG], oci-archive:FILE[:TAG], \
                         docker-archive:FILE, docker://REGISTRY/REPO:TAG)"
                            .into(),
                    ));
                }
                let path = req.source.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path)?;
                    let meta = file.metadata()?;
                    Ok::<_, std::io::Error>((file, meta))
                })
                .await
                .map_err(|e| source_err(e.to_string()))?
                .map_err(|e| source_err(e.to_string()))?;
                let (file, meta) = opened;
                // A device or FIFO (/dev/zero, a pipe) would be read forever.
                if !meta.is_file() {
                    return Err(source_err("not a regular file".into()));
                }
                (Box::new(file), Some(meta.len()))
            };
        let state = self.clone();
        let actor = actor.clone();
        self.spawn_import(
            req,
            name,
            ImageKind::File,
            total,
            move |handle, req, name| {
                state.run_import(&actor, req, name, handle, reader, store.as_ref(), expected)
            },
        )
    }

    /// A root import: the source's syntax and the name are checked now (4xx), the pull and
    /// build run on a thread of their own, and only a finished, verified root is recorded.
    fn start_root_import(
        &self,
        actor: &Caller,
        req: ImportRequest,
    ) -> Result<ImportJob, ControlError> {
        let source_err = |problem: String| ControlError::ImportSource {
            source_path: req.source.clone(),
            problem,
        };
        if req.sha256.is_some() {
            return Err(source_err(
                "sha256 is for files and URLs: an OCI image is verified by its own digests \
                 (pin one with docker://REGISTRY/REPO@sha256:HEX)"
                    .into(),
            ));
        }
        let builder = Arc::clone(
            self.inner
                .root_builder
                .get()
                .ok_or(ControlError::NoRootBuilder)?,
        );
        let default_name = builder.check_source(&req.source).map_err(source_err)?;
        let name = req.name.clone().unwrap_or(default_name);
        validate_root_name(&name)?;
        let credentials = match &req.credentials {
            None => None,
            Some(text) => {
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| source_err("credentials must be USER:PASSWORD".into()))?;
                Some((user.to_owned(), password.to_owned()))
            }
        };
        let state = self.clone();
        let actor = actor.clone();
        self.spawn_import(
            req,
            name,
            ImageKind::Root,
            None,
            move |handle, req, name| {
                let request = RootBuildRequest {
                    source: &req.source,
                    credentials,
                    ca_pem: req.ca_pem.as_deref(),
                    plain_http: req.plain_http,
                };
                let progress = |p: RootBuildProgress| match p {
                    RootBuildProgress::Pulling { done, total } => handle.pulled(done, total),
                    RootBuildProgress::Building => handle.stage("building"),
                };
                builder
                    .build(&request, &progress)
                    .map_err(|e| ControlError::ImportSource {
                        source_path: req.source.clone(),
                        problem: e.0,
                    })
                    .and_then(|built| {
                        let root = RootImage {
                            name: name.to_owned(),
                            image: built.image,
                            root_id: built.root_id,
                            source: req.source.clone(),
                            kernel_release: built.kernel_release,
                            chunks: built.chunks,
                            bytes: built.bytes,
                            initrd_bytes: built.initrd_bytes,
                            kernel: built.kernel.to_string_lossy().into_owned(),
                            initrd: built.initrd.to_string_lossy().into_owned(),
                            roots_dir: built.roots_dir.to_string_lossy().into_owned(),
                            imported_at_ms: store::now_ms(),
                        };
                        let outcome = state.record_root(&actor, &root, handle.id())?;
                        let id = root.root_id.clone();
                        handle.finish_root(root);
                        Ok((id, outcome))
                    })
            },
        )
    }

    /// Registers an import job and runs `work` on a thread of its own (`image-import-ID`,
    /// `root-import-ID`); the job ends with `work`'s result, or at once when no thread starts.
    fn spawn_import(
        &self,
        req: ImportRequest,
        name: String,
        kind: ImageKind,
        total: Option<u64>,
        work: impl FnOnce(
            &JobHandle,
            &ImportRequest,
            &str,
        ) -> Result<(String, PutOutcome), ControlError>
        + Send
        + 'static,
    ) -> Result<ImportJob, ControlError> {
        let handle = self
            .inner
            .imports
            .start(&req, &name, kind, total, store::now_ms())
            .ok_or(ControlError::TooManyImports(
                crate::imports::MAX_RUNNING_IMPORTS,
            ))?;
        let handle = Arc::new(handle);
        let job = handle.snapshot();
        let what = match kind {
            ImageKind::File => "image",
            ImageKind::Root => "root",
        };
        let worker = Arc::clone(&handle);
        let spawned = std::thread::Builder::new()
            .name(format!("{what}-import-{}", job.id))
            .spawn(move || {
                let result = work(&worker, &req, &name);
                if let Err(e) = &result {
                    tracing::warn!(job = worker.id(), source = %req.source, error = %e, "{what} import failed");
                }
                worker.finish(result.map_err(|e| e.to_string()), store::now_ms());
            });
        if let Err(e) = spawned {
            handle.finish(
                Err(format!("cannot start the import thread: {e}")),
                store::now_ms(),
            );
            return Err(ControlError::ImportThread(e));
        }
        Ok(job)
    }

    /// Records a built root under its name: created, updated (the name now points at another
    /// image, or the same image built again differently) or unchanged. Audited as
    /// `image.root`, with the image it replaced.
    pub fn record_root(
        &self,
        actor: &Caller,
        root: &RootImage,
        job: u64,
    ) -> Result<PutOutcome, ControlError> {
        validate_root_name(&root.name)?;
        self.mutate(|txn, snap| {
            let old = snap.roots.get(&root.name);
            let same = old.is_some_and(|o| {
                RootImage {
                    imported_at_ms: root.imported_at_ms,
                    source: root.source.clone(),
                    ..o.clone()
                } == *root
            });
            if same {
                return Ok(PutOutcome::Unchanged);
            }
            // A profile pinning the old image by digest would be left naming nothing.
            if let Some(old) = old.filter(|o| o.root_id != root.root_id) {
                let pinned = format!("sha256:{}", old.root_id);
                let held_elsewhere = snap
                    .roots
                    .values()
                    .any(|r| r.name != old.name && r.root_id == old.root_id);
                let pinning: Vec<&str> = snap
                    .profiles
                    .values()
                    .filter(|p| {
                        p.root()
                            .is_some_and(|r| old.is_named_by(r) && r != old.name)
                    })
                    .map(|p| p.name())
                    .collect();
                if !held_elsewhere && !pinning.is_empty() {
                    return Err(ControlError::InUse {
                        kind: "root image",
                        key: root.name.clone(),
                        reason: format!(
                            "profiles {} pin its image {pinned}, which no other name holds: \
                             import the new image under another name, or change them first",
                            pinning.join(", ")
                        ),
                    });
                }
            }
            let outcome = PutOutcome::of_write(old.is_some());
            let detail = serde_json::json!({
                "image": root.image, "root_id": root.root_id, "source": root.source,
                "kernel_release": root.kernel_release, "chunks": root.chunks,
                "bytes": root.bytes, "job": job,
                "replaced": old.map(|o| o.image.clone()),
            });
            write_entry(
                txn,
                ROOTS,
                ("opening roots", "writing a root"),
                &root.name,
                root,
            )?;
            audit::append(txn, &actor.name, "image.root", &root.name, detail)?;
            snap.roots.insert(root.name.clone(), root.clone());
            Ok(outcome)
        })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site: the import thread, handing over what it owns"
    )]
    fn run_import(
        &self,
        actor: &Caller,
        req: &ImportRequest,
        name: &str,
        handle: &JobHandle,
        source: Box<dyn std::io::Read + Send>,
        store: &dyn ImageStore,
        expected: Option<[u8; 32]>,
    ) -> Result<(String, PutOutcome), ControlError> {
        let mut reader = handle.reader(source);
        let stored = store.import(&mut reader, expected).map_err(|e| match e {
            ImageStoreError::Mismatch { .. } => ControlError::ImportSource {
                source_path: req.source.clone(),
                problem: e.to_string(),
            },
            ImageStoreError::Other(e) => ControlError::ImportSource {
                source_path: req.source.clone(),
                problem: crate::error_chain(e.as_ref()),
            },
        })?;
        let sha256 = hex::encode(stored.sha256);
        let size = handle.snapshot().bytes_done;
        let image = Image {
            sha256: sha256.clone(),
            name: name.to_owned(),
            path: stored.path.to_string_lossy().into_owned(),
            size,
            registered_at_ms: store::now_ms(),
            kind: ImageKind::File,
            root: None,
        };
        let detail = serde_json::json!({
            "name": image.name, "path": image.path, "size": size,
            "source": req.source, "job": handle.id(),
        });
        let outcome = self.mutate(|txn, _| {
            let mut table = txn.open_table(IMAGES).db("opening images")?;
            if table.get(sha256.as_str()).db("reading an image")?.is_some() {
                return Ok(PutOutcome::Unchanged);
            }
            table
                .insert(sha256.as_str(), encode(&image).as_slice())
                .db("writing an image")?;
            drop(table);
            audit::append(txn, &actor.name, "image.import", &sha256, detail)?;
            Ok(PutOutcome::Created)
        })?;
        Ok((sha256, outcome))
    }

    /// Forgets a root by name, else a file image by its hex SHA-256. A root a profile of the
    /// control API still boots is refused (the files a root is served from stay on disk).
    pub fn delete_image(&self, actor: &Caller, key: &str) -> Result<(), ControlError> {
        self.mutate(|txn, snap| {
            if let Some(root) = snap.roots.get(key).cloned() {
                let still_named = |reference: &str| {
                    snap.roots
                        .values()
                        .any(|r| r.name != root.name && r.is_named_by(reference))
                };
                let users: Vec<String> = snap
                    .profiles
                    .values()
                    .filter(|p| {
                        p.root()
                            .is_some_and(|r| root.is_named_by(r) && !still_named(r))
                    })
                    .map(|p| p.name().to_owned())
                    .collect();
                if !users.is_empty() {
                    return Err(ControlError::InUse {
                        kind: "root image",
                        key: key.to_owned(),
                        reason: format!("profiles {} boot it", users.join(", ")),
                    });
                }
                snap.roots.remove(key);
                txn.open_table(ROOTS)
                    .db("opening roots")?
                    .remove(key)
                    .db("removing a root")?;
                let detail = serde_json::json!({ "image": root.image, "root_id": root.root_id });
                audit::append(txn, &actor.name, "image.delete", key, detail)?;
                return Ok(());
            }
            let removed = txn
                .open_table(IMAGES)
                .db("opening images")?
                .remove(key)
                .db("removing an image")?
                .is_some();
            if !removed {
                return Err(not_found("image", key));
            }
            audit::append(
                txn,
                &actor.name,
                "image.delete",
                key,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }
}
