//! The redb file: table layout and the few helpers every table uses.
//!
//! Values are JSON so a stored record can be read (and, in tests, tampered with) without this
//! crate's types; keys are the resource's natural key.
use redb::{ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Key: MAC `aa:bb:cc:dd:ee:ff`; value: [`crate::model::Machine`].
pub(crate) const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");
/// Key: profile name; value: [`crate::model::BootProfile`].
pub(crate) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// Key: hex SHA-256 of the content; value: [`crate::model::Image`].
pub(crate) const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Key: root name; value: [`crate::model::RootImage`].
pub(crate) const ROOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("roots");
/// Key: hex SHA-256 of the bearer token; value: [`crate::auth::TokenRecord`].
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Key: IPv4 address as a big-endian u32; value: [`crate::leases::LeaseRecord`].
pub(crate) const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
/// Key: entry sequence number from 1; value: [`crate::audit::AuditEntry`].
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Key: MAC `aa:bb:cc:dd:ee:ff`; value: [`crate::sessions::StoredSession`] (boot history kept
/// across restarts, written every [`crate::sessions::SAVE_INTERVAL`]).
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Single values: the audit head, the last durable lease sequence number.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(crate) const META_AUDIT_HEAD: &str = "audit_head";
pub(crate) const META_LEASE_SEQ: &str = "lease_seq";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("corrupt record in table {table} under key {key}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Attaches what was being done to any redb error.
pub(crate) trait DbContext<T> {
    fn db(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbContext<T> for Result<T, E> {
    fn db(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db {
            context,
            source: e.into(),
        })
    }
}

/// Writes `value` under `key` in `table`; `context` names the two steps for errors
/// (`("opening machines", "writing a machine")`).
pub(crate) fn write_entry<T: Serialize>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    context: (&'static str, &'static str),
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    txn.open_table(table)
        .db(context.0)?
        .insert(key, encode(value).as_slice())
        .db(context.1)?;
    Ok(())
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (string keys, no maps with non-string keys) cannot fail.
    serde_json::to_vec(value).expect("records serialize to JSON")
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl ToString,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table,
        key: key.to_string(),
        source,
    })
}

/// Every record of a string-keyed JSON table, in key order.
pub(crate) fn read_all<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().db("iterating a table")? {
        let (k, v) = row.db("reading a row")?;
        out.push(decode(name, k.value(), v.value())?);
    }
    Ok(out)
}

/// Creates every table so readers never meet a missing one.
pub(crate) fn create_tables(db: &redb::Database) -> Result<(), StoreError> {
    let txn = db.begin_write().db("beginning the schema transaction")?;
    txn.open_table(MACHINES).db("creating machines")?;
    txn.open_table(PROFILES).db("creating profiles")?;
    txn.open_table(IMAGES).db("creating images")?;
    txn.open_table(ROOTS).db("creating roots")?;
    txn.open_table(TOKENS).db("creating tokens")?;
    txn.open_table(LEASES).db("creating leases")?;
    txn.open_table(AUDIT).db("creating audit")?;
    txn.open_table(META).db("creating meta")?;
    txn.open_table(SESSIONS).db("creating sessions")?;
    txn.commit().db("committing the schema")
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
