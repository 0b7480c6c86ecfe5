//! [`ControlState`]: the fleet in the redb file, the snapshot the data plane reads, and every
//! mutation (each one committed together with its audit entry, then published).
//!
//! The methods are in `impl` blocks by what they change: machines, profiles and reload
//! reports in `fleet`, images, roots and imports in `images`, API tokens in `tokens`; the
//! store, the snapshot and the one write path ([`ControlState`]'s private `mutate`) here.
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use redb::{Database, ReadableDatabase as _, WriteTransaction};
use serde::Serialize;
use tokio::sync::watch;

use crate::audit::{self, AuditEntry, AuditReport};
use crate::auth::{self, Caller, RandomError};
use crate::imports::{ImageStore, ImportJobs, RootBuilder};
use crate::leases::{self, LeaseRecord};
use crate::metrics::Metrics;
use crate::model::{BootProfile, FleetEntry, FleetSnapshot, Machine, RootImage, ValidationError};
use crate::sessions::{BootSessions, SessionLimits};
use crate::store::{self, DbContext, MACHINES, PROFILES, ROOTS, StoreError, read_all};
use crate::validation::FleetValidator;

mod fleet;
mod images;
mod tokens;

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
            if let Err(reason) = validator.validate_write(&current, &next) {
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
    use crate::api_types::PutOutcome;
    use crate::auth::Role;
    use crate::model::{ImageKind, MachineSpec};

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
                secure_boot: None,
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
