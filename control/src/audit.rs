//! Append-only, hash-chained audit log.
//!
//! Entry `n` stores the SHA-256 of entry `n - 1` (`prev_hash`) and its own hash over its content
//! and `prev_hash`, so editing any entry breaks its own hash, and deleting one breaks the chain
//! after it. Sequence numbers are dense from 1 and the head (last sequence number and hash) is
//! kept in the meta table, so deleting the newest entries is detected too. An attacker who can
//! rewrite the whole file can rewrite the whole chain; anchoring the head outside the appliance
//! is what would stop that.
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{AUDIT, DbContext, META, META_AUDIT_HEAD, StoreError, decode, encode, now_ms};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// Name of the token that made the change.
    pub actor: String,
    /// What was done, e.g. `machine.put`.
    pub action: String,
    /// What it was done to, e.g. a MAC or a profile name.
    pub target: String,
    /// The new value, or `null` for deletions.
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// SHA-256 over every field but `hash`, in a fixed order.
    pub fn compute_hash(&self) -> String {
        #[derive(Serialize)]
        struct Hashed<'a> {
            seq: u64,
            at_ms: u64,
            actor: &'a str,
            action: &'a str,
            target: &'a str,
            detail: &'a serde_json::Value,
            prev_hash: &'a str,
        }
        let content = encode(&Hashed {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        });
        hex::encode(Sha256::digest(content))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AuditHead {
    seq: u64,
    hash: String,
}

/// What [`verify`] found wrong first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditProblem {
    #[error("entry {expected} is missing (next entry found is {found})")]
    Missing { expected: u64, found: u64 },
    #[error("entry {seq} was edited: its hash does not match its content")]
    Edited { seq: u64 },
    #[error("entry {seq} does not follow the entry before it (chain broken)")]
    ChainBroken { seq: u64 },
    #[error("entry {seq} cannot be read: {reason}")]
    Unreadable { seq: u64, reason: String },
    #[error("log ends at entry {last} but its head says {head}: newest entries were removed")]
    Truncated { last: u64, head: u64 },
}

/// Result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub entries: u64,
    pub head_hash: String,
    pub problem: Option<AuditProblem>,
}

impl AuditReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Appends one entry inside the caller's transaction, so the change and its audit entry commit
/// together or not at all.
pub(crate) fn append(
    txn: &WriteTransaction,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<AuditEntry, StoreError> {
    let mut meta = txn.open_table(META).db("opening meta")?;
    let head: AuditHead = match meta.get(META_AUDIT_HEAD).db("reading the audit head")? {
        Some(v) => decode("meta", META_AUDIT_HEAD, v.value())?,
        None => AuditHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        },
    };
    let mut entry = AuditEntry {
        seq: head.seq + 1,
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
        prev_hash: head.hash,
        hash: String::new(),
    };
    entry.hash = entry.compute_hash();
    let mut audit = txn.open_table(AUDIT).db("opening audit")?;
    audit
        .insert(entry.seq, encode(&entry).as_slice())
        .db("appending to audit")?;
    let new_head = AuditHead {
        seq: entry.seq,
        hash: entry.hash.clone(),
    };
    meta.insert(META_AUDIT_HEAD, encode(&new_head).as_slice())
        .db("moving the audit head")?;
    Ok(entry)
}

/// Entries with `seq > after`, oldest first, at most `limit`.
pub(crate) fn list(
    db: &redb::Database,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    use redb::ReadableDatabase as _;
    let txn = db.begin_read().db("beginning a read")?;
    let audit = txn.open_table(AUDIT).db("opening audit")?;
    let mut out = Vec::new();
    for row in audit.range(after.saturating_add(1)..).db("ranging audit")? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row.db("reading audit")?;
        out.push(decode("audit", k.value(), v.value())?);
    }
    Ok(out)
}

/// Walks the chain from the first entry and reports the first problem found.
pub fn verify(db: &redb::Database) -> Result<AuditReport, StoreError> {
    use redb::ReadableDatabase as _;
    let txn = db.begin_read().db("beginning a read")?;
    let audit = txn.open_table(AUDIT).db("opening audit")?;
    let meta = txn.open_table(META).db("opening meta")?;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let report = |entries, head_hash, problem| {
        Ok(AuditReport {
            entries,
            head_hash,
            problem,
        })
    };
    for row in audit.iter().db("iterating audit")? {
        let (k, v) = row.db("reading audit")?;
        let seq = k.value();
        let done = expected_seq - 1;
        if seq != expected_seq {
            let problem = AuditProblem::Missing {
                expected: expected_seq,
                found: seq,
            };
            return report(done, prev_hash, Some(problem));
        }
        let entry: AuditEntry = match serde_json::from_slice(v.value()) {
            Ok(e) => e,
            Err(e) => {
                let problem = AuditProblem::Unreadable {
                    seq,
                    reason: e.to_string(),
                };
                return report(done, prev_hash, Some(problem));
            }
        };
        if entry.seq != seq || entry.compute_hash() != entry.hash {
            return report(done, prev_hash, Some(AuditProblem::Edited { seq }));
        }
        if entry.prev_hash != prev_hash {
            return report(done, prev_hash, Some(AuditProblem::ChainBroken { seq }));
        }
        prev_hash = entry.hash;
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    let head: Option<AuditHead> = match meta.get(META_AUDIT_HEAD).db("reading the audit head")? {
        Some(v) => Some(decode("meta", META_AUDIT_HEAD, v.value())?),
        None => None,
    };
    let problem = match head {
        Some(h) if h.seq != last => Some(AuditProblem::Truncated { last, head: h.seq }),
        Some(h) if h.hash != prev_hash => Some(AuditProblem::ChainBroken { seq: last }),
        None if last != 0 => Some(AuditProblem::Truncated { last, head: 0 }),
        _ => None,
    };
    report(last, prev_hash, problem)
}
