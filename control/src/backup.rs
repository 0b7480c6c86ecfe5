//! A consistent copy of the state file while the appliance serves, and putting one back.
//!
//! **Backup** (`GET /api/v1/backup`, `stampede ctl backup FILE`): every table is copied from one
//! read transaction into a fresh redb file, so the copy is the state as of one commit (a lease
//! committed while the copy runs is in it entirely or not at all), and the appliance keeps
//! serving and committing meanwhile. The copy is itself a state file: `stampede serve --state
//! FILE` starts on it.
//!
//! **Restore** (`stampede ctl restore --state PATH FILE`) is offline, on purpose. A running
//! appliance holds its leases, tokens and fleet in memory as well as in the file (the DHCP
//! workers' lease tables, the published fleet snapshot, the audit chain's head, the caller's own
//! token); replacing the tables under it would let a worker hand out an address the restored
//! file gives to another machine, or keep serving a fleet the file no longer holds. Restore
//! therefore checks the backup (every record readable, the audit chain intact), refuses while
//! an appliance holds the state file (redb's lock on the file says so), keeps the replaced file
//! beside it as `PATH.before-restore`, and puts the backup in place with one rename; the
//! appliance started next reads it whole.
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase as _, TableDefinition, TableHandle as _};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::store::{
    self, AUDIT, DbContext, IMAGES, LEASES, MACHINES, META, PROFILES, ROOTS, SESSIONS, StoreError,
    TOKENS,
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file has a table this version does not know: copying the others would lose it.
    #[error("the state file has a table {0:?} this version of Stampede does not know")]
    UnknownTable(String),
    #[error("{path} is not a Stampede state file: {reason}")]
    NotAState { path: PathBuf, reason: String },
    #[error(
        "{path} is in use by a running appliance: stop it first (restore replaces the state \
         file, which a running appliance also holds in memory)"
    )]
    StateInUse { path: PathBuf },
    #[error("{path}: the audit log of the backup is damaged: {problem}")]
    AuditDamaged { path: PathBuf, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a backup holds, counted per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub machines: u64,
    pub profiles: u64,
    pub images: u64,
    pub roots: u64,
    pub tokens: u64,
    pub leases: u64,
    pub audit_entries: u64,
    pub sessions: u64,
}

/// Every table the state file has; a backup copies exactly these.
const TABLES: [&str; 9] = [
    "machines", "profiles", "images", "roots", "tokens", "leases", "audit", "meta", "sessions",
];

/// Copies every row of one table from `read` into `write`; returns the rows copied.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &ReadTransaction,
    write: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let from = read.open_table(def).db("opening a table to back up")?;
    let mut to = write.open_table(def).db("creating a table in the backup")?;
    let mut rows = 0;
    for row in redb::ReadableTable::iter(&from).db("iterating a table to back up")? {
        let (k, v) = row.db("reading a row to back up")?;
        to.insert(k.value(), v.value())
            .db("writing a row to the backup")?;
        rows += 1;
    }
    Ok(rows)
}

/// The bytes of a redb file built in memory: the backup is sent from here, so serving one
/// needs no temporary file (nor a writable temporary directory).
#[derive(Debug, Clone, Default)]
struct MemoryFile(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl MemoryFile {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl redb::StorageBackend for MemoryFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.bytes().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let bytes = self.bytes();
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src = start
            .checked_add(out.len())
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| std::io::Error::other("read past the end of the backup"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        self.bytes().resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut bytes = self.bytes();
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start
            .checked_add(data.len())
            .ok_or_else(|| std::io::Error::other("write past the addressable end"))?;
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}

/// A copy of `db` as of one read transaction: the bytes of a state file, and what it holds.
pub(crate) fn copy(db: &Database) -> Result<(BackupSummary, Vec<u8>), BackupError> {
    let file = MemoryFile::default();
    let copy = Database::builder()
        .create_with_backend(file.clone())
        .map_err(|e| {
            BackupError::Store(StoreError::Db {
                context: "creating the backup",
                source: e.into(),
            })
        })?;
    let summary = write_copy(db, &copy)?;
    drop(copy);
    let bytes = std::mem::take(&mut *file.bytes());
    Ok((summary, bytes))
}

/// Copies `db`, as of one read transaction, into the empty database `copy`.
fn write_copy(db: &Database, copy: &Database) -> Result<BackupSummary, BackupError> {
    let read = db.begin_read().db("beginning the backup's read")?;
    for table in read.list_tables().db("listing tables")? {
        if !TABLES.contains(&table.name()) {
            return Err(BackupError::UnknownTable(table.name().to_owned()));
        }
    }
    let write = copy.begin_write().db("beginning the backup's write")?;
    let summary = BackupSummary {
        machines: copy_table(&read, &write, MACHINES)?,
        profiles: copy_table(&read, &write, PROFILES)?,
        images: copy_table(&read, &write, IMAGES)?,
        roots: copy_table(&read, &write, ROOTS)?,
        tokens: copy_table(&read, &write, TOKENS)?,
        leases: copy_table(&read, &write, LEASES)?,
        audit_entries: copy_table(&read, &write, AUDIT)?,
        sessions: copy_table(&read, &write, SESSIONS)?,
    };
    copy_table(&read, &write, META)?;
    write.commit().db("committing the backup")?;
    Ok(summary)
}

/// Checks that `path` is a whole Stampede state file: every record decodes and the audit chain
/// verifies. Returns what it holds.
pub fn inspect(path: &Path) -> Result<BackupSummary, BackupError> {
    let not_a_state = |reason: String| BackupError::NotAState {
        path: path.to_owned(),
        reason,
    };
    if !path.is_file() {
        return Err(not_a_state("no such file".into()));
    }
    let db = Database::open(path).map_err(|e| not_a_state(e.to_string()))?;
    let read = db.begin_read().db("beginning a read")?;
    let names: Vec<String> = read
        .list_tables()
        .db("listing tables")?
        .map(|t| t.name().to_owned())
        .collect();
    if let Some(unknown) = names.iter().find(|n| !TABLES.contains(&n.as_str())) {
        return Err(BackupError::UnknownTable(unknown.clone()));
    }
    for needed in ["machines", "profiles", "tokens", "leases", "audit", "meta"] {
        if !names.iter().any(|n| n == needed) {
            return Err(not_a_state(format!("it has no {needed} table")));
        }
    }
    fn json_rows<T: serde::de::DeserializeOwned>(
        read: &ReadTransaction,
        def: TableDefinition<&'static str, &'static [u8]>,
        name: &'static str,
    ) -> Result<u64, StoreError> {
        match read.open_table(def) {
            Ok(table) => Ok(store::read_all::<T>(&table, name)?.len() as u64),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e).db("opening a table"),
        }
    }
    let summary = BackupSummary {
        machines: json_rows::<crate::model::Machine>(&read, MACHINES, "machines")?,
        profiles: json_rows::<crate::model::BootProfile>(&read, PROFILES, "profiles")?,
        images: json_rows::<crate::model::Image>(&read, IMAGES, "images")?,
        roots: json_rows::<crate::model::RootImage>(&read, ROOTS, "roots")?,
        tokens: json_rows::<crate::auth::TokenRecord>(&read, TOKENS, "tokens")?,
        leases: crate::leases::read_leases(&db)?.0.len() as u64,
        audit_entries: 0,
        sessions: json_rows::<crate::sessions::StoredSession>(&read, SESSIONS, "sessions")?,
    };
    drop(read);
    let report = audit::verify(&db)?;
    if let Some(problem) = &report.problem {
        return Err(BackupError::AuditDamaged {
            path: path.to_owned(),
            problem: problem.to_string(),
        });
    }
    Ok(BackupSummary {
        audit_entries: report.entries,
        ..summary
    })
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub state: PathBuf,
    /// Where the replaced state file was kept, if there was one.
    pub previous: Option<PathBuf>,
    pub restored: BackupSummary,
}

/// Puts the backup `from` in place as the state file `state` (see the module documentation).
pub fn restore(from: &Path, state: &Path) -> Result<RestoreReport, BackupError> {
    let restored = inspect(from)?;
    let dir = state
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Held until the rename: an appliance starting meanwhile finds the old file locked and
    // stops, rather than serving a file about to be replaced.
    let held = if state.exists() {
        match Database::open(state) {
            Ok(db) => Some(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(BackupError::StateInUse {
                    path: state.to_owned(),
                });
            }
            Err(e) => {
                tracing::warn!(state = %state.display(), error = %e, "replacing an unreadable state file");
                None
            }
        }
    } else {
        None
    };
    let mut staged = state.as_os_str().to_owned();
    staged.push(".restoring");
    let staged = PathBuf::from(staged);
    std::fs::copy(from, &staged).map_err(io(&staged))?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(io(&staged))?;
    let previous = if state.exists() {
        let mut kept = state.as_os_str().to_owned();
        kept.push(".before-restore");
        let kept = PathBuf::from(kept);
        std::fs::copy(state, &kept).map_err(io(&kept))?;
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staged, state).map_err(io(state))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // The rename is durable once the directory is; a failure here leaves it to the kernel.
        let _ = d.sync_all();
    }
    drop(held);
    Ok(RestoreReport {
        state: state.to_owned(),
        previous,
        restored,
    })
}
