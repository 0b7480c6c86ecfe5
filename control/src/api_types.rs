//! The API's wire types that both sides use: the server ([`crate::api`], [`crate::state`])
//! writes them and the client ([`crate::client`], `stampede ctl`) reads them. Kept apart from
//! either side so that neither imports the other.
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::model::{EntrySource, ImageKind, RootImage};

/// Header that tells whether a PUT created, updated or left a resource unchanged.
pub const OUTCOME_HEADER: &str = "stampede-outcome";

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What a PUT did; an unchanged PUT writes nothing, audits nothing and publishes nothing, which
/// is what makes `apply` idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    Created,
    Updated,
    Unchanged,
}

impl PutOutcome {
    /// The word in JSON and in the [`OUTCOME_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        }
    }

    /// What a write that changes the stored entry did: `Updated` when one was there before.
    pub fn of_write(existed: bool) -> Self {
        if existed {
            Self::Updated
        } else {
            Self::Created
        }
    }

    /// From the [`OUTCOME_HEADER`] of a successful PUT. An appliance that does not send it (or
    /// sends a word this one does not know) stored the resource: `Updated`.
    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some("created") => Self::Created,
            Some("unchanged") => Self::Unchanged,
            _ => Self::Updated,
        }
    }
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    /// Seconds until the token stops authenticating; none: it lasts until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
}

/// Answer to `POST /api/v1/tokens`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// Body of `POST /api/v1/images/imports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The image's name. Needed for a file or URL; a root defaults to its source's
    /// `repo:tag` or file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absolute path of a file on the appliance, an `http://` / `https://` URL, or an OCI image
    /// in skopeo's syntax (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE`,
    /// `docker://REGISTRY/REPO:TAG`), which becomes a diskless root.
    pub source: String,
    /// Hex SHA-256 the content must have; the import fails (storing nothing) otherwise. Files
    /// and URLs only (an OCI image is verified by its own digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `docker://`: PEM text of the CA certificates the registry's https is trusted by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// `docker://`: `USER:PASSWORD` for the registry. Never stored, logged or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// `docker://`: plain http to the registry (https otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    Running,
    Done,
    Failed,
}

/// One import as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportJob {
    pub id: u64,
    pub name: String,
    pub source: String,
    #[serde(default)]
    pub kind: ImageKind,
    pub state: ImportState,
    /// A root import's step while running: `pulling`, then `building`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Set when a root import is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootImage>,
    pub bytes_done: u64,
    /// The source's size when the import started; `None` when an HTTP server did not say.
    pub bytes_total: Option<u64>,
    /// Set when done.
    pub sha256: Option<String>,
    pub expected_sha256: Option<String>,
    /// Set when done: `created`, or `unchanged` when the store already had this content.
    pub outcome: Option<PutOutcome>,
    /// Set when failed.
    pub error: Option<String>,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

/// A listed entry with `"source": "api"|"file"`, and `"quarantined": "<why>"` when the
/// appliance leaves it out of the boot plan.
pub(crate) fn listed<T: Serialize>(
    item: &T,
    why: Option<&str>,
    source: EntrySource,
) -> serde_json::Value {
    let mut value = serde_json::to_value(item).unwrap_or(serde_json::Value::Null);
    if let Some(fields) = value.as_object_mut() {
        fields.insert("source".into(), source.as_str().into());
        if let Some(why) = why {
            fields.insert("quarantined".into(), why.into());
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_header_reads_back_what_the_server_writes() {
        for outcome in [
            PutOutcome::Created,
            PutOutcome::Updated,
            PutOutcome::Unchanged,
        ] {
            assert_eq!(PutOutcome::from_header(Some(outcome.as_str())), outcome);
            let json = serde_json::to_value(outcome).expect("serializes");
            assert_eq!(json, outcome.as_str());
        }
        assert_eq!(PutOutcome::from_header(None), PutOutcome::Updated);
    }
}
