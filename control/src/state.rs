//! [`ControlState`]: the fleet in the redb file, the snapshot the data plane reads, and every
//! mutation (each one committed together with its audit entry, then published).
use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use redb::{Database, ReadableDatabase as _, ReadableTable, WriteTransaction};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::api_types::{ImportJob, ImportRequest, PutOutcome, TokenInfo};
use crate::audit::{self, AuditEntry, AuditReport};
use crate::auth::{self, Caller, RandomError, Role, TokenRecord};
use crate::imports::{
    ImageStore, ImageStoreError, ImportJobs, RootBuildProgress, RootBuildRequest, RootBuilder,
};
use crate::leases::{self, LeaseRecord};
use crate::metrics::Metrics;
use crate::model::{
    BootProfile, FileFleet, FleetEntry, FleetSnapshot, Image, ImageKind, ImageSpec, MacAddr,
    Machine, RootImage, ValidationError, validate_name, validate_root_name,
};
use crate::sessions::{BootSessions, SessionLimits};
use crate::store::{
    self, DbContext, IMAGES, MACHINES, PROFILES, ROOTS, StoreError, TOKENS, decode, encode,
    read_all,
};
use crate::validation::{FleetValidator, find_unservable};

/// A SHA-256 digest as bytes.
type Sha256Bytes = [u8; 32];

/// What a file import starts from: its name, the store, the digest it must have.
type FileImportPlan = (String, Arc<dyn ImageStore>, Option<Sha256Bytes>);

/// Environment variable that may hold the first admin token.
pub const ADMIN_TOKEN_ENV: &str = "STAMPEDE_ADMIN_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{kind} {key} not found")]
    NotFound { kind: &'static str, key: String },
    #[error("{kind} {key} already exists")]
    Exists { kind: &'static str, key: String },
    #[error("{kind} {key} is in use: {reason}")]
    InUse {
        kind: &'static str,
        key: String,
        reason: String,
    },
    #[error("machine {mac} names profile {profile:?}, which does not exist")]
    UnknownProfile { mac: String, profile: String },
    #[error(
        "{kind} {key} is declared in the appliance's configuration file: change it there \
         (an API {kind} with the same key would replace it)"
    )]
    FileDefined { kind: &'static str, key: String },
    #[error(
        "profile {profile:?} names root {root:?}, which is not an imported root image \
         (stampede ctl images list)"
    )]
    UnknownRoot { profile: String, root: String },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The configuration's own validation refused the fleet with this change.
    #[error("the appliance cannot serve this change: {0}")]
    Unservable(String),
    #[error("cannot read image file {path}: {source}")]
    ImageFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot import {source_path}: {problem}")]
    ImportSource {
        source_path: String,
        problem: String,
    },
    #[error("invalid sha256 {0:?}: expected 64 hex digits")]
    BadDigest(String),
    #[error("this appliance has no image store (imports need a running appliance)")]
    NoImageStore,
    #[error("this appliance builds no diskless roots (root imports need a running appliance)")]
    NoRootBuilder,
    #[error("{0} imports are running; start another when one has finished")]
    TooManyImports(usize),
    #[error("cannot start the import thread: {0}")]
    ImportThread(#[source] std::io::Error),
    #[error(
        "{what} is {len} characters long; a token needs at least {min} \
         (for example `openssl rand -hex 32`)",
        min = auth::MIN_TOKEN_LEN
    )]
    WeakToken { what: &'static str, len: usize },
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

#[derive(Debug)]
struct Inner {
    db: Arc<Database>,
    snapshot: watch::Sender<Arc<FleetSnapshot>>,
    /// Serializes commit + publish so snapshots are published in commit order.
    writer: Mutex<()>,
    metrics: Metrics,
    sessions: Arc<BootSessions>,
    imports: ImportJobs,
    /// Set once by the appliance; imports are refused until then.
    image_store: OnceLock<Arc<dyn ImageStore>>,
    /// Set once by the appliance; root imports are refused until then.
    root_builder: OnceLock<Arc<dyn RootBuilder>>,
    /// Set once by the appliance; until then writes are checked by the model alone.
    validator: OnceLock<Arc<dyn FleetValidator>>,
    /// Why the last reload of the data plane was refused; `None` once one succeeds.
    reload_error: Mutex<Option<String>>,
}

/// Shared handle to the control plane's state; cloning is cheap.
#[derive(Debug, Clone)]
pub struct ControlState {
    inner: Arc<Inner>,
}

impl ControlState {
    /// Opens (or creates) the state file.
    pub fn open(path: impl AsRef<Path>, metrics: Metrics) -> Result<Self, StoreError> {
        Self::open_with_sessions(path, metrics, SessionLimits::default())
    }

    /// [`Self::open`] keeping boot history within `limits`.
    pub fn open_with_sessions(
        path: impl AsRef<Path>,
        metrics: Metrics,
        limits: SessionLimits,
    ) -> Result<Self, StoreError> {
        let db = Database::create(path).db("opening the state file")?;
        Self::from_db_with_sessions(Arc::new(db), metrics, limits)
    }

    /// Uses an open database, e.g. one shared with a [`leases::DurableLeaseStore`].
    pub fn from_db(db: Arc<Database>, metrics: Metrics) -> Result<Self, StoreError> {
        Self::from_db_with_sessions(db, metrics, SessionLimits::default())
    }

    /// [`Self::from_db`] keeping boot history within `limits`.
    pub fn from_db_with_sessions(
        db: Arc<Database>,
        metrics: Metrics,
        limits: SessionLimits,
    ) -> Result<Self, StoreError> {
        store::create_tables(&db)?;
        let sessions = Arc::new(BootSessions::new(limits, &metrics));
        let loaded = sessions.restore(crate::session_store::load(&db)?);
        if loaded > 0 {
            tracing::debug!(
                sessions = loaded,
                "boot sessions from before the restart loaded"
            );
        }
        let snapshot = load_snapshot(&db)?;
        let (tx, _) = watch::channel(Arc::new(snapshot));
        let state = Self {
            inner: Arc::new(Inner {
                db,
                snapshot: tx,
                writer: Mutex::new(()),
                metrics,
                sessions,
                imports: ImportJobs::new(),
                image_store: OnceLock::new(),
                root_builder: OnceLock::new(),
                validator: OnceLock::new(),
                reload_error: Mutex::new(None),
            }),
        };
        state.update_fleet_gauges();
        Ok(state)
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.inner.db
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Boot sessions and live events; hand a clone to the data plane as its
    /// [`EventSink`](stampede_proto::events::EventSink).
    pub fn sessions(&self) -> &Arc<BootSessions> {
        &self.inner.sessions
    }

    /// A consistent copy of the state file while serving, as the bytes of a state file (see
    /// [`crate::backup`]), audited as `state.backup` by `actor` (the entry is in the copy).
    pub fn backup(
        &self,
        actor: &Caller,
    ) -> Result<(crate::backup::BackupSummary, Vec<u8>), ControlError> {
        self.mutate(|txn, _| {
            audit::append(
                txn,
                &actor.name,
                "state.backup",
                "state",
                serde_json::Value::Null,
            )?;
            Ok(())
        })?;
        // Sessions as of now, so the copy shows the latest boots too.
        if let Err(err) = self.save_sessions() {
            tracing::warn!(error = %crate::error_chain(&err), "boot sessions not saved before a backup");
        }
        Ok(crate::backup::copy(&self.inner.db)?)
    }

    /// Writes the boot sessions changed since the last save to the state file (the saver
    /// thread's job; tests call it directly). Returns the rows written or deleted.
    pub fn save_sessions(&self) -> Result<usize, StoreError> {
        crate::session_store::save(&self.inner.db, &self.inner.sessions)
    }

    /// Starts the thread that saves boot sessions every `every` (see
    /// [`crate::sessions::SAVE_INTERVAL`]) and once more when the returned saver is stopped or
    /// dropped: stop it after the data plane, so its last events are kept.
    pub fn persist_sessions(
        &self,
        every: std::time::Duration,
    ) -> std::io::Result<crate::session_store::SessionSaver> {
        crate::session_store::SessionSaver::start(
            Arc::clone(&self.inner.db),
            Arc::clone(&self.inner.sessions),
            every,
        )
    }

    /// The fleet as of the last change.
    pub fn snapshot(&self) -> Arc<FleetSnapshot> {
        self.inner.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot (or at least the newest, if it falls behind).
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetSnapshot>> {
        self.inner.snapshot.subscribe()
    }

    // --- machines ---

    pub fn machines(&self) -> Vec<Machine> {
        self.snapshot().machines.values().cloned().collect()
    }

    pub fn machine(&self, mac: MacAddr) -> Result<Machine, ControlError> {
        self.snapshot()
            .machines
            .get(&mac)
            .cloned()
            .ok_or_else(|| not_found("machine", mac))
    }

    /// Creates or replaces a machine. `must_be_new` turns an existing one into an error (POST).
    pub fn put_machine(
        &self,
        actor: &Caller,
        machine: Machine,
        must_be_new: bool,
    ) -> Result<PutOutcome, ControlError> {
        self.mutate(|txn, snap| {
            let key = machine.mac.to_string();
            let old = snap.machines.get(&machine.mac);
            if must_be_new && old.is_some() {
                return Err(ControlError::Exists {
                    kind: "machine",
                    key,
                });
            }
            let entry = FleetEntry::Machine(machine.mac);
            // A quarantined entry sent again unchanged is validated again, not waved through.
            if old == Some(&machine) && snap.quarantined(&entry).is_none() {
                return Ok(PutOutcome::Unchanged);
            }
            snap.quarantine.remove(&entry);
            if let Some(profile) = &machine.profile
                && !snap.profiles.contains_key(profile)
                && !self.file_fleet().profiles.contains_key(profile)
            {
                return Err(ControlError::UnknownProfile {
                    mac: key,
                    profile: profile.clone(),
                });
            }
            let outcome = if old.is_some() {
                PutOutcome::Updated
            } else {
                PutOutcome::Created
            };
            txn.open_table(MACHINES)
                .db("opening machines")?
                .insert(key.as_str(), encode(&machine).as_slice())
                .db("writing a machine")?;
            audit::append(txn, &actor.name, "machine.put", &key, json(&machine))?;
            snap.machines.insert(machine.mac, machine.clone());
            Ok(outcome)
        })
    }

    pub fn delete_machine(&self, actor: &Caller, mac: MacAddr) -> Result<(), ControlError> {
        self.mutate(|txn, snap| {
            let key = mac.to_string();
            if snap.machines.remove(&mac).is_none() {
                if self.file_fleet().machines.contains_key(&mac) {
                    return Err(ControlError::FileDefined {
                        kind: "machine",
                        key,
                    });
                }
                return Err(not_found("machine", mac));
            }
            snap.quarantine.remove(&FleetEntry::Machine(mac));
            txn.open_table(MACHINES)
                .db("opening machines")?
                .remove(key.as_str())
                .db("removing a machine")?;
            audit::append(
                txn,
                &actor.name,
                "machine.delete",
                &key,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }

    // --- profiles ---

    pub fn profiles(&self) -> Vec<BootProfile> {
        self.snapshot().profiles.values().cloned().collect()
    }

    pub fn profile(&self, name: &str) -> Result<BootProfile, ControlError> {
        self.snapshot()
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("profile", name))
    }

    pub fn put_profile(
        &self,
        actor: &Caller,
        profile: BootProfile,
        must_be_new: bool,
    ) -> Result<PutOutcome, ControlError> {
        self.mutate(|txn, snap| {
            let key = profile.name().to_owned();
            let old = snap.profiles.get(&key);
            if must_be_new && old.is_some() {
                return Err(ControlError::Exists {
                    kind: "profile",
                    key,
                });
            }
            let entry = FleetEntry::Profile(key.clone());
            if old == Some(&profile) && snap.quarantined(&entry).is_none() {
                return Ok(PutOutcome::Unchanged);
            }
            snap.quarantine.remove(&entry);
            if let Some(root) = profile.root()
                && snap.root(root).is_none()
            {
                return Err(ControlError::UnknownRoot {
                    profile: key,
                    root: root.to_owned(),
                });
            }
            let outcome = if old.is_some() {
                PutOutcome::Updated
            } else {
                PutOutcome::Created
            };
            txn.open_table(PROFILES)
                .db("opening profiles")?
                .insert(key.as_str(), encode(&profile).as_slice())
                .db("writing a profile")?;
            audit::append(txn, &actor.name, "profile.put", &key, json(&profile))?;
            snap.profiles.insert(key, profile.clone());
            Ok(outcome)
        })
    }

    /// Refused while a machine still boots the profile: deleting it would silently stop those
    /// machines from booting.
    pub fn delete_profile(&self, actor: &Caller, name: &str) -> Result<(), ControlError> {
        self.mutate(|txn, snap| {
            if !snap.profiles.contains_key(name) {
                if self.file_fleet().profiles.contains_key(name) {
                    return Err(ControlError::FileDefined {
                        kind: "profile",
                        key: name.to_owned(),
                    });
                }
                return Err(not_found("profile", name));
            }
            let users: Vec<String> = snap
                .machines
                .values()
                .filter(|m| m.profile.as_deref() == Some(name))
                .map(|m| m.mac.to_string())
                .collect();
            if !users.is_empty() {
                return Err(ControlError::InUse {
                    kind: "profile",
                    key: name.to_owned(),
                    reason: format!("machines {} boot it", users.join(", ")),
                });
            }
            snap.profiles.remove(name);
            snap.quarantine
                .remove(&FleetEntry::Profile(name.to_owned()));
            txn.open_table(PROFILES)
                .db("opening profiles")?
                .remove(name)
                .db("removing a profile")?;
            audit::append(
                txn,
                &actor.name,
                "profile.delete",
                name,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }

    // --- images ---

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

    /// How every later write is checked: the configuration's own validation. Stored entries it
    /// refuses now are quarantined (listed with why, left out of the boot plan) and returned, so
    /// the rest of the fleet serves. Only the first call has an effect.
    pub fn attach_fleet_validator(
        &self,
        validator: Arc<dyn FleetValidator>,
    ) -> Vec<(FleetEntry, String)> {
        if self.inner.validator.set(Arc::clone(&validator)).is_err() {
            return Vec::new();
        }
        // Both reload counters exist from the start, so a query for them finds zero.
        for outcome in [Ok(()), Err(String::new())] {
            let _ = self.reload_counter(&outcome);
        }
        let _writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let quarantine = find_unservable(validator.as_ref(), &current);
        if quarantine != current.quarantine {
            let next = FleetSnapshot {
                generation: current.generation + 1,
                quarantine: quarantine.clone(),
                ..FleetSnapshot::clone(&current)
            };
            self.inner.snapshot.send_replace(Arc::new(next));
            self.update_fleet_gauges();
        }
        quarantine.into_iter().collect()
    }

    /// The configuration file's own machines and profiles (none until the appliance attaches
    /// its validator, or when it serves a command-line configuration). Reads the file.
    pub fn file_fleet(&self) -> FileFleet {
        self.inner
            .validator
            .get()
            .map(|v| v.file_fleet())
            .unwrap_or_default()
    }

    /// What the appliance reports after each reload of the data plane: health shows the last
    /// refusal until a reload succeeds, and `stampede_reload_failures_total` counts them.
    pub fn record_reload(&self, outcome: Result<(), String>) {
        if let Some(c) = self.reload_counter(&outcome) {
            c.inc();
        }
        *self
            .inner
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = outcome.err();
    }

    fn reload_counter(&self, outcome: &Result<(), String>) -> Option<crate::metrics::Counter> {
        let (name, help) = match outcome {
            Ok(()) => (
                "stampede_reloads_total",
                "Reloads of the boot plan that were applied",
            ),
            Err(_) => (
                "stampede_reload_failures_total",
                "Reloads of the boot plan that were refused (the previous plan kept serving)",
            ),
        };
        self.inner.metrics.counter(name, help, &[]).ok()
    }

    /// Why the last reload was refused, while no later one succeeded.
    pub fn reload_error(&self) -> Option<String> {
        self.inner
            .reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let handle = self
            .inner
            .imports
            .start(&req, &name, ImageKind::File, total, store::now_ms())
            .ok_or(ControlError::TooManyImports(
                crate::imports::MAX_RUNNING_IMPORTS,
            ))?;
        let handle = Arc::new(handle);
        let job = handle.snapshot();
        let state = self.clone();
        let actor = actor.clone();
        let worker = Arc::clone(&handle);
        let spawned = std::thread::Builder::new()
            .name(format!("image-import-{}", job.id))
            .spawn(move || {
                let handle = worker;
                let result = state.run_import(
                    &actor,
                    &req,
                    &name,
                    &handle,
                    reader,
                    store.as_ref(),
                    expected,
                );
                if let Err(e) = &result {
                    tracing::warn!(job = handle.id(), source = %req.source, error = %e, "image import failed");
                }
                handle.finish(result.map_err(|e| e.to_string()), store::now_ms());
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
        let handle = self
            .inner
            .imports
            .start(&req, &name, ImageKind::Root, None, store::now_ms())
            .ok_or(ControlError::TooManyImports(
                crate::imports::MAX_RUNNING_IMPORTS,
            ))?;
        let handle = Arc::new(handle);
        let job = handle.snapshot();
        let state = self.clone();
        let actor = actor.clone();
        let worker = Arc::clone(&handle);
        let spawned = std::thread::Builder::new()
            .name(format!("root-import-{}", job.id))
            .spawn(move || {
                let handle = worker;
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
                let result = builder
                    .build(&request, &progress)
                    .map_err(|e| ControlError::ImportSource {
                        source_path: req.source.clone(),
                        problem: e.0,
                    })
                    .and_then(|built| {
                        let root = RootImage {
                            name: name.clone(),
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
                    });
                if let Err(e) = &result {
                    tracing::warn!(job = handle.id(), source = %req.source, error = %e, "root import failed");
                }
                handle.finish(result.map_err(|e| e.to_string()), store::now_ms());
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
            let outcome = if old.is_some() {
                PutOutcome::Updated
            } else {
                PutOutcome::Created
            };
            let detail = serde_json::json!({
                "image": root.image, "root_id": root.root_id, "source": root.source,
                "kernel_release": root.kernel_release, "chunks": root.chunks,
                "bytes": root.bytes, "job": job,
                "replaced": old.map(|o| o.image.clone()),
            });
            txn.open_table(ROOTS)
                .db("opening roots")?
                .insert(root.name.as_str(), encode(root).as_slice())
                .db("writing a root")?;
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
        handle: &crate::imports::JobHandle,
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

    // --- leases, audit ---

    /// Leases as last committed by the data plane's [`leases::DurableLeaseStore`].
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, ControlError> {
        Ok(leases::read_leases(&self.inner.db)?.0)
    }

    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, ControlError> {
        Ok(audit::list(&self.inner.db, after, limit)?)
    }

    /// Walks the audit chain; see [`audit`] for what it detects.
    pub fn verify_audit(&self) -> Result<AuditReport, ControlError> {
        Ok(audit::verify(&self.inner.db)?)
    }

    // --- tokens ---

    /// The caller a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Result<Option<Caller>, ControlError> {
        let hash = auth::hash_token(token);
        let txn = self.inner.db.begin_read().db("beginning a read")?;
        let table = txn.open_table(TOKENS).db("opening tokens")?;
        let row = table.get(hash.as_str()).db("reading a token")?;
        let Some(v) = row else { return Ok(None) };
        let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
        if !record.is_active(store::now_ms()) {
            return Ok(None);
        }
        Ok(Some(Caller {
            name: record.name,
            role: record.role,
        }))
    }

    /// Makes sure an admin can log in. With `token` (from `STAMPEDE_ADMIN_TOKEN`) that token is
    /// the admin `bootstrap`, replacing an earlier bootstrap token (the variable changed);
    /// a bootstrap token revoked through the API stays revoked when the same value comes again
    /// (a new value is the operator's way to bring one back). Without one, when no admin token
    /// exists yet, a new one is generated and returned so the caller can print it once (it is
    /// not stored anywhere).
    pub fn ensure_admin_token(&self, token: Option<&str>) -> Result<Option<String>, ControlError> {
        let system = Caller {
            name: "system".into(),
            role: Role::Admin,
        };
        if let Some(token) = token {
            self.set_bootstrap_token(&system, token)?;
            return Ok(None);
        }
        if self.tokens()?.iter().any(|t| t.role == Role::Admin) {
            return Ok(None);
        }
        let token = auth::generate_token()?;
        self.store_token(&system, "bootstrap", Role::Admin, &token, None)?;
        Ok(Some(token))
    }

    /// [`Self::ensure_admin_token`] with the token from the `STAMPEDE_ADMIN_TOKEN` environment
    /// variable, if set. The binary prints a returned token once, at start-up.
    pub fn ensure_admin_token_from_env(&self) -> Result<Option<String>, ControlError> {
        let token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty());
        self.ensure_admin_token(token.as_deref())
    }

    fn set_bootstrap_token(&self, actor: &Caller, token: &str) -> Result<(), ControlError> {
        check_strength(ADMIN_TOKEN_ENV, token)?;
        let hash = auth::hash_token(token);
        let revoked = self.mutate(|txn, _| {
            let mut table = txn.open_table(TOKENS).db("opening tokens")?;
            if let Some(v) = table.get(hash.as_str()).db("reading a token")? {
                let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
                return Ok(record.revoked);
            }
            let mut replaced = Vec::new();
            for row in table.iter().db("iterating tokens")? {
                let (k, v) = row.db("reading a token")?;
                let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
                if record.name == "bootstrap" && !record.revoked {
                    replaced.push(k.value().to_owned());
                }
            }
            for old in &replaced {
                table.remove(old.as_str()).db("removing a token")?;
            }
            let record = TokenRecord {
                name: "bootstrap".into(),
                role: Role::Admin,
                created_at_ms: store::now_ms(),
                expires_at_ms: None,
                revoked: false,
            };
            table
                .insert(hash.as_str(), encode(&record).as_slice())
                .db("writing a token")?;
            drop(table);
            let detail = serde_json::json!({
                "name": "bootstrap", "role": Role::Admin, "replaced": replaced.len()
            });
            audit::append(txn, &actor.name, "token.bootstrap", "bootstrap", detail)?;
            Ok(false)
        })?;
        if revoked {
            tracing::warn!(
                "{ADMIN_TOKEN_ENV} holds a bootstrap token that was revoked; it stays revoked \
                 (set a new value to have a bootstrap token again)"
            );
        }
        Ok(())
    }

    /// Creates a token and returns it; only its hash is kept.
    pub fn create_token(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
    ) -> Result<String, ControlError> {
        self.create_token_expiring(actor, name, role, None)
    }

    /// [`Self::create_token`] that stops authenticating `expires_in` from now, if given.
    pub fn create_token_expiring(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
        expires_in: Option<std::time::Duration>,
    ) -> Result<String, ControlError> {
        validate_name(name)?;
        if self.tokens()?.iter().any(|t| t.name == name) {
            return Err(ControlError::Exists {
                kind: "token",
                key: name.to_owned(),
            });
        }
        let token = auth::generate_token()?;
        let expires_at_ms = expires_in.map(|d| {
            store::now_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        self.store_token(actor, name, role, &token, expires_at_ms)?;
        Ok(token)
    }

    fn store_token(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
        token: &str,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ControlError> {
        check_strength("the token", token)?;
        let record = TokenRecord {
            name: name.to_owned(),
            role,
            created_at_ms: store::now_ms(),
            expires_at_ms,
            revoked: false,
        };
        self.mutate(|txn, _| {
            txn.open_table(TOKENS)
                .db("opening tokens")?
                .insert(auth::hash_token(token).as_str(), encode(&record).as_slice())
                .db("writing a token")?;
            let detail = serde_json::json!({ "name": name, "role": role });
            audit::append(txn, &actor.name, "token.create", name, detail)?;
            Ok(())
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, ControlError> {
        let txn = self.inner.db.begin_read().db("beginning a read")?;
        let table = txn.open_table(TOKENS).db("opening tokens")?;
        let records: Vec<TokenRecord> = read_all(&table, "tokens")?;
        let now = store::now_ms();
        let mut out: Vec<TokenInfo> = records
            .into_iter()
            .filter(|r| r.is_active(now))
            .map(|r| TokenInfo {
                name: r.name,
                role: r.role,
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Revokes every token with this name. Bootstrap tokens are kept, marked revoked, so the
    /// same `STAMPEDE_ADMIN_TOKEN` at the next start does not bring them back.
    pub fn revoke_token(&self, actor: &Caller, name: &str) -> Result<(), ControlError> {
        self.mutate(|txn, _| {
            let mut table = txn.open_table(TOKENS).db("opening tokens")?;
            let mut doomed = Vec::new();
            for row in table.iter().db("iterating tokens")? {
                let (k, v) = row.db("reading a token")?;
                let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
                if record.name == name && !record.revoked {
                    doomed.push((k.value().to_owned(), record));
                }
            }
            if doomed.is_empty() {
                return Err(not_found("token", name));
            }
            for (hash, mut record) in doomed {
                if name == "bootstrap" {
                    record.revoked = true;
                    table
                        .insert(hash.as_str(), encode(&record).as_slice())
                        .db("revoking a token")?;
                } else {
                    table.remove(hash.as_str()).db("removing a token")?;
                }
            }
            drop(table);
            audit::append(
                txn,
                &actor.name,
                "token.revoke",
                name,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }

    /// Runs `change` in one write transaction on a copy of the snapshot. On success the
    /// transaction commits and, if the fleet changed, the copy is published; on error nothing is
    /// written.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&WriteTransaction, &mut FleetSnapshot) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let _writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let mut next = FleetSnapshot::clone(&current);
        let txn = self.inner.db.begin_write().db("beginning a write")?;
        let out = match change(&txn, &mut next) {
            Ok(out) => out,
            Err(e) => {
                let _ = txn.abort();
                return Err(e);
            }
        };
        let changed = next.machines != current.machines
            || next.profiles != current.profiles
            || next.roots != current.roots
            || next.quarantine != current.quarantine;
        if changed && let Some(validator) = self.inner.validator.get() {
            if let Err(reason) = validator.validate(&next) {
                let _ = txn.abort();
                return Err(ControlError::Unservable(reason));
            }
            // A change can make a quarantined entry servable (its missing profile was added):
            // it rejoins the plan.
            let waiting: Vec<FleetEntry> = next.quarantine.keys().cloned().collect();
            for entry in waiting {
                let why = next.quarantine.remove(&entry).unwrap_or_default();
                if validator.validate(&next).is_err() {
                    next.quarantine.insert(entry, why);
                }
            }
        }
        txn.commit().db("committing a change")?;
        if changed {
            next.generation = current.generation + 1;
            self.inner.snapshot.send_replace(Arc::new(next));
            self.update_fleet_gauges();
        }
        Ok(out)
    }

    fn update_fleet_gauges(&self) {
        let snap = self.snapshot();
        let m = &self.inner.metrics;
        let set = |name: &str, help: &str, v: usize| {
            if let Ok(g) = m.gauge(name, help, &[]) {
                g.set(v as f64);
            }
        };
        set(
            "stampede_control_machines",
            "Machines known to the control plane",
            snap.machines.len(),
        );
        set(
            "stampede_control_profiles",
            "Boot profiles known to the control plane",
            snap.profiles.len(),
        );
        set(
            "stampede_control_quarantined",
            "Stored machines and profiles left out of the boot plan because validation refuses them",
            snap.quarantine.len(),
        );
        set(
            "stampede_control_snapshot_generation",
            "Generation of the fleet snapshot last published to the data plane",
            usize::try_from(snap.generation).unwrap_or(usize::MAX),
        );
    }
}

fn check_strength(what: &'static str, token: &str) -> Result<(), ControlError> {
    let len = token.chars().count();
    if len < auth::MIN_TOKEN_LEN {
        return Err(ControlError::WeakToken { what, len });
    }
    Ok(())
}

fn not_found(kind: &'static str, key: impl ToString) -> ControlError {
    ControlError::NotFound {
        kind,
        key: key.to_string(),
    }
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn load_snapshot(db: &Database) -> Result<FleetSnapshot, StoreError> {
    let txn = db.begin_read().db("beginning a read")?;
    let machines: Vec<Machine> = read_all(
        &txn.open_table(MACHINES).db("opening machines")?,
        "machines",
    )?;
    let profiles: Vec<BootProfile> = read_all(
        &txn.open_table(PROFILES).db("opening profiles")?,
        "profiles",
    )?;
    let roots: Vec<RootImage> = read_all(&txn.open_table(ROOTS).db("opening roots")?, "roots")?;
    Ok(FleetSnapshot {
        generation: 0,
        roots: roots.into_iter().map(|r| (r.name.clone(), r)).collect(),
        quarantine: Default::default(),
        machines: machines.into_iter().map(|m| (m.mac, m)).collect(),
        profiles: profiles
            .into_iter()
            .map(|p| (p.name().to_owned(), p))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MachineSpec;

    fn root(name: &str, digit: char) -> RootImage {
        let id: String = std::iter::repeat_n(digit, 64).collect();
        RootImage {
            name: name.into(),
            image: format!("sha256:{id}"),
            root_id: id,
            source: format!("oci-archive:/srv/{name}.tar"),
            kernel_release: "6.1.0-1-amd64".into(),
            chunks: 3,
            bytes: 3 << 20,
            initrd_bytes: 1 << 20,
            kernel: "/k".into(),
            initrd: "/i".into(),
            roots_dir: "/var/lib/stampede/roots/serve".into(),
            imported_at_ms: 1,
        }
    }

    #[test]
    fn roots_are_named_replaced_resolved_and_guarded() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("state.redb");
        let ops = Caller {
            name: "ops".into(),
            role: Role::Operator,
        };
        let state = ControlState::open(&path, Metrics::new()).expect("open");
        let profile = |root: &str| {
            BootProfile::try_from(crate::model::ProfileSpec {
                name: "diskless".into(),
                root: Some(root.into()),
                default: crate::model::BootTarget {
                    kernel: String::new(),
                    initrds: vec![],
                    cmdline: String::new(),
                },
                ipxe_template: None,
                variants: Default::default(),
            })
            .expect("valid profile")
        };

        // A profile naming no root is refused, naming both; nothing is stored.
        let err = state
            .put_profile(&ops, profile("small"), false)
            .expect_err("unknown root");
        assert!(
            matches!(&err, ControlError::UnknownRoot { profile, root }
                if profile == "diskless" && root == "small"),
            "{err}"
        );
        assert!(state.profiles().is_empty());

        let generation = state.snapshot().generation;
        assert_eq!(
            state
                .record_root(&ops, &root("small", 'a'), 1)
                .expect("record"),
            PutOutcome::Created
        );
        assert!(
            state.snapshot().generation > generation,
            "roots are published"
        );
        let mut again = root("small", 'a');
        again.imported_at_ms = 99;
        assert_eq!(
            state.record_root(&ops, &again, 2).expect("record"),
            PutOutcome::Unchanged,
            "the same image again changes nothing"
        );
        state
            .put_profile(&ops, profile("small"), false)
            .expect("by name");
        state
            .put_profile(&ops, profile(&format!("sha256:{}", "A".repeat(64))), false)
            .expect("by digest, any case");

        // Another image under the name: refused while a profile pins the old one by digest
        // (the last put named it so), then it replaces it.
        let err = state
            .record_root(&ops, &root("small", 'b'), 3)
            .expect_err("pinned");
        assert!(matches!(err, ControlError::InUse { .. }), "{err}");
        state
            .put_profile(&ops, profile("small"), false)
            .expect("by name");
        assert_eq!(
            state
                .record_root(&ops, &root("small", 'b'), 3)
                .expect("record"),
            PutOutcome::Updated
        );
        let snap = state.snapshot();
        assert_eq!(
            snap.root("small").map(|r| r.root_id.as_str()),
            Some(&*"b".repeat(64))
        );
        assert!(snap.root(&format!("sha256:{}", "a".repeat(64))).is_none());
        let listed = state.images().expect("images");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kind, ImageKind::Root);
        assert_eq!(listed[0].sha256, "b".repeat(64));
        let audit = state.audit_entries(0, 100).expect("audit");
        let roots: Vec<_> = audit.iter().filter(|e| e.action == "image.root").collect();
        assert_eq!(
            roots.len(),
            2,
            "created and replaced are audited, unchanged is not"
        );
        assert_eq!(
            roots[1].detail["replaced"],
            format!("sha256:{}", "a".repeat(64))
        );

        // In use by name.
        let err = state.delete_image(&ops, "small").expect_err("in use");
        assert!(matches!(err, ControlError::InUse { .. }), "{err}");
        state
            .delete_profile(&ops, "diskless")
            .expect("profile gone");
        state.delete_image(&ops, "small").expect("root gone");
        assert!(state.images().expect("images").is_empty());
        drop(state);
        let state = ControlState::open(&path, Metrics::new()).expect("reopen");
        assert!(state.roots().is_empty(), "the removal is durable");
        assert!(state.verify_audit().expect("verify").is_intact());
    }

    #[test]
    fn admin_bootstrap_and_fleet_survive_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("state.redb");
        let admin = {
            let state = ControlState::open(&path, Metrics::new()).expect("open");
            let token = state
                .ensure_admin_token(None)
                .expect("bootstrap")
                .expect("first start generates a token");
            assert_eq!(
                state.ensure_admin_token(None).expect("bootstrap"),
                None,
                "an admin exists: nothing is generated again"
            );
            let caller = state.authenticate(&token).expect("auth").expect("known");
            // The environment's token becomes the bootstrap token, replacing the generated one.
            state
                .ensure_admin_token(Some("stp_from-env-0123456"))
                .expect("env token");
            let machine = Machine::try_from(MachineSpec {
                mac: "52:54:00:00:00:01".into(),
                uuid: None,
                arch: None,
                hostname: None,
                labels: Default::default(),
                profile: None,
                boot: Default::default(),
                ssh_authorized_keys: Vec::new(),
            })
            .expect("valid");
            state.put_machine(&caller, machine, true).expect("put");
            token
        };
        let state = ControlState::open(&path, Metrics::new()).expect("reopen");
        assert_eq!(
            state.machines().len(),
            1,
            "machines are loaded from the file"
        );
        let env = state
            .authenticate("stp_from-env-0123456")
            .expect("auth")
            .expect("env token stored");
        assert_eq!(env.role, Role::Admin);
        assert_eq!(
            state.authenticate(&admin).expect("auth"),
            None,
            "the generated bootstrap token was replaced"
        );
        assert!(state.verify_audit().expect("verify").is_intact());
    }
}
