//! What a call to the API fails with.
use std::path::PathBuf;

use reqwest::StatusCode;

/// Why a request to the API did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--cacert {path}: {problem}")]
    CaCert { path: PathBuf, problem: String },
    #[error("cannot set up the HTTP client: {0}")]
    ClientSetup(#[source] reqwest::Error),
    #[error("cannot reach {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path}: {status}: {message}")]
    Api {
        method: &'static str,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("{path}: the answer is not what this ctl expects: {problem}")]
    BadAnswer { path: String, problem: String },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}
