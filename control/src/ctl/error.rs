//! What a `stampede ctl` command fails with.
use std::path::PathBuf;

use crate::client::ClientError;
use crate::model::ValidationError;

/// Why a `stampede ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no token: pass --token or set STAMPEDE_TOKEN")]
    NoToken,
    /// The API's answer, or no answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid fleet file: {source}")]
    FleetFile {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("audit log is damaged: {0}")]
    AuditDamaged(crate::audit::AuditProblem),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("--timeout {timeout_s} s passed after {seen} of {wanted} events")]
    WatchTimeout {
        timeout_s: f64,
        seen: u64,
        wanted: u64,
    },
    #[error("the event stream sent something that is not a boot event: {0}")]
    BadEvent(String),
    #[error("invalid --timeout {0}: expected a number of seconds")]
    BadTimeout(f64),
    #[error("import {id} failed: {error}")]
    ImportFailed { id: u64, error: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}
