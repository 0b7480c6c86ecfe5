//! Boot sessions in the state file, so `ctl sessions` shows the boots from before a restart.
//!
//! The data plane never waits on this: events go to the in-memory [`BootSessions`] as before, and
//! a [`SessionSaver`] thread writes the sessions that changed since its last save in one write
//! transaction every interval, and once more when it is stopped. A crash between two saves
//! loses at most one interval of events; sessions are history, not state the boot depends on.
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase as _};

use crate::model::MacAddr;
use crate::sessions::{BootSessions, StoredSession};
use crate::store::{DbContext, SESSIONS, StoreError, encode};

/// Every session the file holds. A record this version cannot read is skipped with a warning
/// (and replaced by the next save): losing one machine's history must not stop a start.
pub(crate) fn load(db: &Database) -> Result<Vec<(MacAddr, StoredSession)>, StoreError> {
    let txn = db.begin_read().db("beginning a read")?;
    let table = txn.open_table(SESSIONS).db("opening sessions")?;
    let mut out = Vec::new();
    for row in redb::ReadableTable::iter(&table).db("iterating sessions")? {
        let (k, v) = row.db("reading a session")?;
        let key = k.value();
        let parsed = key
            .parse::<MacAddr>()
            .ok()
            .zip(serde_json::from_slice::<StoredSession>(v.value()).ok());
        match parsed {
            Some(entry) => out.push(entry),
            None => tracing::warn!(key, "unreadable boot session in the state file skipped"),
        }
    }
    Ok(out)
}

/// Writes the sessions changed since the last save in one transaction; returns how many rows
/// were written or deleted. On failure the changes are kept for the next save.
pub(crate) fn save(db: &Database, sessions: &BootSessions) -> Result<usize, StoreError> {
    let _saving = sessions.saving();
    let changes = sessions.take_changes();
    if changes.is_empty() {
        return Ok(0);
    }
    let write = || -> Result<usize, StoreError> {
        let txn = db.begin_write().db("beginning a session save")?;
        {
            let mut table = txn.open_table(SESSIONS).db("opening sessions")?;
            for mac in &changes.removed {
                table
                    .remove(mac.to_string().as_str())
                    .db("deleting a session")?;
            }
            for (mac, stored) in &changes.changed {
                table
                    .insert(mac.to_string().as_str(), encode(stored).as_slice())
                    .db("writing a session")?;
            }
        }
        txn.commit().db("committing sessions")?;
        Ok(changes.changed.len() + changes.removed.len())
    };
    write().inspect_err(|_| sessions.requeue(&changes))
}

/// The thread that saves sessions; stopping it (or dropping it) saves once more and waits.
#[derive(Debug)]
pub struct SessionSaver {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SessionSaver {
    pub(crate) fn start(
        db: Arc<Database>,
        sessions: Arc<BootSessions>,
        every: Duration,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("stampede-sessions".into())
            .spawn(move || {
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(every),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    );
                    if let Err(err) = save(&db, &sessions) {
                        tracing::warn!(
                            error = %crate::error_chain(&err),
                            "boot sessions not saved; retrying at the next interval"
                        );
                    }
                    if last {
                        break;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Saves what changed since the last interval and stops the thread.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the boot session saver panicked");
        }
    }
}

impl Drop for SessionSaver {
    fn drop(&mut self) {
        self.finish();
    }
}
