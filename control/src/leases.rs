//! [`DurableLeaseStore`]: the DHCP server's [`LeaseStore`] backed by the redb file, with group
//! commit.
//!
//! `apply` changes the in-memory view and queues the change; it never touches the disk, so the
//! DHCP rate is not bound by fsync latency. A committer thread takes everything queued, writes it
//! in one transaction together with the highest sequence number in the batch, commits
//! (fsync), and only then advances `durable_seq`. While one batch is being committed the next one
//! queues up, so the batch size grows with load and the fsync rate stays constant.
//!
//! Crash safety: a lease the server acknowledged had `seq <= durable_seq`, so its batch had
//! committed; redb commits are atomic, so after a crash the file holds exactly the changes up
//! to some batch boundary, in order, and replaying them gives a state where one address has one
//! holder and one client one address (the same rules [`MemoryLeaseStore`] enforces).
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase as _, ReadableTable};
use serde::{Deserialize, Serialize};
use stampede_proto::dhcp::{
    ClientKey, CommitSeq, Lease, LeaseChange, LeaseState, LeaseStore, LeaseStoreError,
    MemoryLeaseStore,
};
use tokio::sync::watch;

use crate::store::{DbContext, LEASES, META, META_LEASE_SEQ, StoreError, decode, encode};

/// A lease as stored and as the API shows it. Expiry is wall-clock time because `Instant` does
/// not survive a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ip: Ipv4Addr,
    /// Hex of the [`ClientKey`] (option 61, or htype + chaddr); empty for a declined address.
    pub client: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub state: LeaseRecordState,
    /// Unix time in milliseconds.
    pub expires_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseRecordState {
    Offered,
    Bound,
    Declined,
}

/// Tuning for the committer.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// Most changes written in one transaction. 16 384 keeps one transaction's dirty pages in the
    /// low megabytes while an fsync every few milliseconds still carries millions of changes a
    /// second.
    pub max_batch: usize,
    /// Changes queued and not yet durable beyond which `apply` fails. A million (about 100 MB)
    /// is many seconds of a stalled disk at full DHCP rate: past that, answering clients with
    /// leases that cannot be made durable only grows the loss.
    pub max_backlog: usize,
    /// Wait before retrying a failed commit.
    pub retry_after: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 16_384,
            max_backlog: 1_000_000,
            retry_after: Duration::from_millis(100),
        }
    }
}

/// One change as the table sees it: rows to delete and to write.
#[derive(Debug)]
struct QueuedWrite {
    seq: CommitSeq,
    delete: Vec<Ipv4Addr>,
    put: Option<LeaseRecord>,
}

#[derive(Debug, Default)]
struct Queue {
    writes: VecDeque<QueuedWrite>,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    durable: AtomicU64,
    durable_tx: watch::Sender<CommitSeq>,
    /// Set while the last commit failed; cleared by the next success.
    failing: AtomicBool,
}

/// Converts between `Instant` (what the DHCP core uses) and Unix milliseconds (what is stored),
/// anchored at one moment taken when the store opened.
#[derive(Debug, Clone, Copy)]
struct Clock {
    instant: Instant,
    unix_ms: u64,
}

impl Clock {
    fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            instant: Instant::now(),
            unix_ms,
        }
    }

    fn to_unix_ms(self, t: Instant) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if t >= self.instant {
            self.unix_ms.saturating_add(ms(t - self.instant))
        } else {
            self.unix_ms.saturating_sub(ms(self.instant - t))
        }
    }

    fn to_instant(self, unix_ms: u64) -> Instant {
        if unix_ms >= self.unix_ms {
            self.instant + Duration::from_millis(unix_ms - self.unix_ms)
        } else {
            // An expired lease: any instant in the past will do, as late as the platform allows.
            self.instant
                .checked_sub(Duration::from_millis(self.unix_ms - unix_ms))
                .unwrap_or(self.instant)
        }
    }
}

fn record_of(lease: &Lease, clock: Clock) -> LeaseRecord {
    LeaseRecord {
        ip: lease.ip,
        client: hex::encode(&lease.client.0),
        mac: crate::model::MacAddr(lease.mac).to_string(),
        state: match lease.state {
            LeaseState::Offered => LeaseRecordState::Offered,
            LeaseState::Bound => LeaseRecordState::Bound,
            LeaseState::Declined => LeaseRecordState::Declined,
        },
        expires_ms: clock.to_unix_ms(lease.expires),
    }
}

fn lease_of(record: &LeaseRecord, clock: Clock) -> Option<Lease> {
    let mac: crate::model::MacAddr = record.mac.parse().ok()?;
    Some(Lease {
        ip: record.ip,
        client: ClientKey(hex::decode(&record.client).ok()?),
        mac: mac.0,
        state: match record.state {
            LeaseRecordState::Offered => LeaseState::Offered,
            LeaseRecordState::Bound => LeaseState::Bound,
            LeaseRecordState::Declined => LeaseState::Declined,
        },
        expires: clock.to_instant(record.expires_ms),
    })
}

/// Every stored lease, in address order, and the sequence number of the last committed batch.
pub fn read_leases(db: &Database) -> Result<(Vec<LeaseRecord>, CommitSeq), StoreError> {
    let txn = db.begin_read().db("beginning a read")?;
    let table = txn.open_table(LEASES).db("opening leases")?;
    let mut out = Vec::new();
    for row in table.iter().db("iterating leases")? {
        let (k, v) = row.db("reading a lease")?;
        out.push(decode("leases", Ipv4Addr::from(k.value()), v.value())?);
    }
    let meta = txn.open_table(META).db("opening meta")?;
    let seq = match meta.get(META_LEASE_SEQ).db("reading the lease sequence")? {
        Some(v) => decode("meta", META_LEASE_SEQ, v.value())?,
        None => 0,
    };
    Ok((out, seq))
}

/// The DHCP server's lease store: reads from memory, writes made durable in batches.
#[derive(Debug)]
pub struct DurableLeaseStore {
    memory: MemoryLeaseStore,
    /// Last sequence number handed out. Numbering continues from the file's, so sequence numbers
    /// stay comparable across restarts.
    seq: CommitSeq,
    clock: Clock,
    shared: Arc<Shared>,
    config: GroupCommitConfig,
    committer: Option<JoinHandle<()>>,
}

impl DurableLeaseStore {
    /// Loads every stored lease and starts the committer thread.
    pub fn open(db: Arc<Database>, config: GroupCommitConfig) -> Result<Self, StoreError> {
        crate::store::create_tables(&db)?;
        let clock = Clock::now();
        let (records, base_seq) = read_leases(&db)?;
        let mut memory = MemoryLeaseStore::new();
        for record in &records {
            match lease_of(record, clock) {
                Some(lease) => {
                    // Memory stores cannot fail.
                    let _ = memory.apply(LeaseChange::Put(lease));
                }
                None => tracing::warn!(ip = %record.ip, "skipping unreadable stored lease"),
            }
        }
        let (durable_tx, _) = watch::channel(base_seq);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            durable: AtomicU64::new(base_seq),
            durable_tx,
            failing: AtomicBool::new(false),
        });
        let committer = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("lease-commit".into())
                .spawn(move || commit_loop(&db, &shared, &config))
                .map_err(|e| StoreError::Db {
                    context: "starting the lease committer",
                    source: e.into(),
                })?
        };
        Ok(Self {
            memory,
            seq: base_seq,
            clock,
            shared,
            config,
            committer: Some(committer),
        })
    }

    /// Sequence number of the last applied change (durable or not).
    pub fn applied_seq(&self) -> CommitSeq {
        self.seq
    }

    /// Follows `durable_seq`; the data plane calls `DhcpServer::handle_lease_durable` with each
    /// new value to release the ACKs it held.
    pub fn subscribe_durable(&self) -> watch::Receiver<CommitSeq> {
        self.shared.durable_tx.subscribe()
    }

    /// Every lease in memory (durable or not).
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.memory.leases()
    }

    pub fn len(&self) -> usize {
        self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// Blocks until everything applied so far is durable, or `timeout` passes; returns whether it
    /// got there.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.applied_seq();
        let deadline = Instant::now() + timeout;
        while self.durable_seq() < target {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

impl LeaseStore for DurableLeaseStore {
    fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.memory.by_ip(ip)
    }

    fn by_client(&self, client: &ClientKey) -> Option<Lease> {
        self.memory.by_client(client)
    }

    fn apply(&mut self, change: LeaseChange) -> Result<CommitSeq, LeaseStoreError> {
        let pending = self.applied_seq() - self.durable_seq();
        if usize::try_from(pending).unwrap_or(usize::MAX) >= self.config.max_backlog {
            return Err(LeaseStoreError::Write(format!(
                "{pending} lease changes wait for the disk (commits failing: {})",
                self.shared.failing.load(Ordering::Relaxed)
            )));
        }
        // Mirror what the memory store will do to its address index, as row writes.
        let (delete, put) = match &change {
            LeaseChange::Put(lease) => {
                let displaced = (!lease.client.0.is_empty())
                    .then(|| self.memory.by_client(&lease.client))
                    .flatten()
                    .map(|old| old.ip)
                    .filter(|&ip| ip != lease.ip);
                (
                    displaced.into_iter().collect(),
                    Some(record_of(lease, self.clock)),
                )
            }
            LeaseChange::Remove(ip) => (vec![*ip], None),
        };
        self.memory.apply(change)?;
        self.seq += 1;
        let seq = self.seq;
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.writes.push_back(QueuedWrite { seq, delete, put });
        drop(queue);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    fn durable_seq(&self) -> CommitSeq {
        self.shared.durable.load(Ordering::Acquire)
    }
}

impl Drop for DurableLeaseStore {
    /// Commits what is queued before returning.
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.shutdown = true;
        drop(queue);
        self.shared.wake.notify_one();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

fn commit_loop(db: &Database, shared: &Shared, config: &GroupCommitConfig) {
    loop {
        let batch: Vec<QueuedWrite> = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            while queue.writes.is_empty() && !queue.shutdown {
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            if queue.writes.is_empty() {
                return;
            }
            let n = queue.writes.len().min(config.max_batch);
            queue.writes.drain(..n).collect()
        };
        let Some(last) = batch.last().map(|w| w.seq) else {
            continue;
        };
        loop {
            match write_batch(db, &batch, last) {
                Ok(()) => {
                    shared.failing.store(false, Ordering::Relaxed);
                    shared.durable.store(last, Ordering::Release);
                    shared.durable_tx.send_replace(last);
                    break;
                }
                Err(e) => {
                    shared.failing.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, batch = batch.len(), "lease commit failed; retrying");
                    // Give up only when asked to stop and the disk still refuses.
                    if shared
                        .queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .shutdown
                    {
                        return;
                    }
                    std::thread::sleep(config.retry_after);
                }
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[QueuedWrite], last: CommitSeq) -> Result<(), StoreError> {
    let txn = db.begin_write().db("beginning a lease batch")?;
    {
        let mut leases = txn.open_table(LEASES).db("opening leases")?;
        for write in batch {
            for ip in &write.delete {
                leases.remove(u32::from(*ip)).db("removing a lease")?;
            }
            if let Some(record) = &write.put {
                leases
                    .insert(u32::from(record.ip), encode(record).as_slice())
                    .db("writing a lease")?;
            }
        }
        let mut meta = txn.open_table(META).db("opening meta")?;
        meta.insert(META_LEASE_SEQ, encode(&last).as_slice())
            .db("writing the lease sequence")?;
    }
    txn.commit().db("committing a lease batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: [u8; 4], client: u8, expires: Instant) -> Lease {
        Lease {
            ip: Ipv4Addr::from(ip),
            client: ClientKey(vec![1, client]),
            mac: [2, 0, 0, 0, 0, client],
            state: LeaseState::Bound,
            expires,
        }
    }

    #[test]
    fn leases_survive_reopen_and_clients_move() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("state.redb");
        let now = Instant::now();
        {
            let db = Arc::new(Database::create(&path).expect("create db"));
            let mut store =
                DurableLeaseStore::open(db, GroupCommitConfig::default()).expect("open store");
            let expires = now + Duration::from_secs(3600);
            store
                .apply(LeaseChange::Put(lease([10, 0, 0, 1], 1, expires)))
                .expect("put");
            store
                .apply(LeaseChange::Put(lease([10, 0, 0, 2], 2, expires)))
                .expect("put");
            // Client 1 moves: 10.0.0.1 must go from the file too.
            let seq = store
                .apply(LeaseChange::Put(lease([10, 0, 0, 3], 1, expires)))
                .expect("put");
            store
                .apply(LeaseChange::Remove(Ipv4Addr::new(10, 0, 0, 2)))
                .expect("remove");
            assert!(store.flush(Duration::from_secs(10)), "batch commits");
            assert!(store.durable_seq() >= seq);
        }
        let db = Arc::new(Database::open(&path).expect("reopen db"));
        let (records, seq) = read_leases(&db).expect("read leases");
        assert_eq!(seq, 4, "the sequence number is durable too");
        let ips: Vec<_> = records.iter().map(|r| r.ip).collect();
        assert_eq!(
            ips,
            [Ipv4Addr::new(10, 0, 0, 3)],
            "only the moved lease is left"
        );
        let store = DurableLeaseStore::open(db, GroupCommitConfig::default()).expect("reopen");
        assert_eq!(store.applied_seq(), 4, "numbering continues");
        let l = store
            .by_client(&ClientKey(vec![1, 1]))
            .expect("client 1 has its lease after restart");
        assert_eq!(l.ip, Ipv4Addr::new(10, 0, 0, 3));
        let drift = l
            .expires
            .saturating_duration_since(now + Duration::from_secs(3600))
            .max((now + Duration::from_secs(3600)).saturating_duration_since(l.expires));
        assert!(
            drift < Duration::from_secs(1),
            "expiry survives: off by {drift:?}"
        );
    }
}
