//! A typed client of the control API over HTTP (what `stampede ctl` and the tests use), and the
//! [`http_client`] image imports fetch URLs with. [`sse`] reads `/api/v1/events`.
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api_types::{
    ErrorBody, ImportJob, ImportRequest, IssuedToken, NewToken, OUTCOME_HEADER, PutOutcome,
    TokenInfo,
};
use crate::audit::{AuditEntry, AuditReport};
use crate::leases::LeaseRecord;
use crate::model::{
    BootProfile, EntrySource, Image, LabelSelector, Machine, MachineSpec, ProfileSpec,
};
use crate::sessions::{SessionSummary, SessionTimeline};

mod error;
pub mod sse;

pub use error::ClientError;
pub use sse::{EventStream, SseMessage};

/// A typed client of the control API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An HTTP client for the API, with ring as rustls's crypto. With `cacert`, it trusts exactly
/// the CA certificates in that PEM file (an appliance's private CA), not the system's.
pub fn http_client(cacert: Option<&std::path::Path>) -> Result<reqwest::Client, ClientError> {
    // reqwest is built without a crypto provider of its own (that would be aws-lc-rs); it uses
    // the process default. Installing fails only if one is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder();
    if let Some(path) = cacert {
        let ca_err = |problem: String| ClientError::CaCert {
            path: path.to_owned(),
            problem,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM CERTIFICATE block in the file".into()));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(ClientError::ClientSetup)
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Self, ClientError> {
        Self::with_cacert(base, token, None)
    }

    /// A client that trusts only the CAs in `cacert` (see [`http_client`]).
    pub fn with_cacert(
        base: &str,
        token: &str,
        cacert: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            http: http_client(cacert)?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let response = req.send().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |b| b.error);
        Err(ClientError::Api {
            method: method_name(&method),
            path: path.to_owned(),
            status,
            message,
        })
    }

    /// `method path` with `body`, its answer read as JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(method, path, body)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Http { url, source })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<PutOutcome, ClientError> {
        let response = self.send(reqwest::Method::PUT, path, Some(body)).await?;
        Ok(PutOutcome::from_header(
            response
                .headers()
                .get(OUTCOME_HEADER)
                .and_then(|v| v.to_str().ok()),
        ))
    }

    pub async fn machines(&self) -> Result<Vec<Machine>, ClientError> {
        Ok(self
            .machines_listed(None)
            .await?
            .into_iter()
            .map(|l| l.item)
            .collect())
    }

    /// Machines (those `selector` matches, if given), each with where it is declared and why it
    /// is quarantined (left out of the boot plan), if it is.
    pub async fn machines_listed(
        &self,
        selector: Option<&LabelSelector>,
    ) -> Result<Vec<Listed<Machine>>, ClientError> {
        let Some(selector) = selector else {
            return self.listed("/api/v1/machines").await;
        };
        let path = format!(
            "/api/v1/machines?selector={}",
            query_value(&selector.to_string())
        );
        let mut machines: Vec<Listed<Machine>> = self.listed(&path).await?;
        // An appliance older than `?selector=` ignores it and answers every machine.
        machines.retain(|l| selector.matches(&l.item.labels));
        Ok(machines)
    }

    /// Profiles, each with where it is declared and why it is quarantined, if it is.
    pub async fn profiles_listed(&self) -> Result<Vec<Listed<BootProfile>>, ClientError> {
        self.listed("/api/v1/profiles").await
    }

    /// A list whose entries carry `"source"` and may carry `"quarantined": "<why>"` next to
    /// their own fields.
    async fn listed<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<Listed<T>>, ClientError> {
        let values: Vec<serde_json::Value> = self.get(path).await?;
        values
            .into_iter()
            .map(|mut value| {
                let fields = value.as_object_mut();
                let (why, source) = match fields {
                    Some(o) => (o.remove("quarantined"), o.remove("source")),
                    None => (None, None),
                };
                let bad = |e: serde_json::Error| ClientError::BadAnswer {
                    path: path.to_owned(),
                    problem: e.to_string(),
                };
                Ok(Listed {
                    item: serde_json::from_value(value).map_err(bad)?,
                    quarantined: why.and_then(|w| w.as_str().map(str::to_owned)),
                    source: source
                        .map(serde_json::from_value)
                        .transpose()
                        .map_err(bad)?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    pub async fn machine(&self, mac: &str) -> Result<Machine, ClientError> {
        self.get(&format!("/api/v1/machines/{mac}")).await
    }

    /// Creates or replaces a machine.
    pub async fn put_machine(&self, spec: &MachineSpec) -> Result<PutOutcome, ClientError> {
        self.put(&format!("/api/v1/machines/{}", spec.mac), spec)
            .await
    }

    pub async fn delete_machine(&self, mac: &str) -> Result<(), ClientError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/v1/machines/{mac}"),
            None::<&()>,
        )
        .await
        .map(drop)
    }

    pub async fn profile(&self, name: &str) -> Result<BootProfile, ClientError> {
        self.get(&format!("/api/v1/profiles/{name}")).await
    }

    pub async fn delete_profile(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/profiles/{name}")).await
    }

    pub async fn profiles(&self) -> Result<Vec<BootProfile>, ClientError> {
        Ok(self
            .profiles_listed()
            .await?
            .into_iter()
            .map(|l| l.item)
            .collect())
    }

    /// Creates or replaces a profile.
    pub async fn put_profile(&self, spec: &ProfileSpec) -> Result<PutOutcome, ClientError> {
        self.put(&format!("/api/v1/profiles/{}", spec.name), spec)
            .await
    }

    /// Opens `/api/v1/events` (optionally one machine's); read it with [`EventStream::next`].
    pub async fn events(&self, mac: Option<&str>) -> Result<EventStream, ClientError> {
        let path = match mac {
            Some(mac) => format!("/api/v1/events?mac={mac}"),
            None => "/api/v1/events".to_owned(),
        };
        let response = self.send(reqwest::Method::GET, &path, None::<&()>).await?;
        Ok(EventStream::new(format!("{}{path}", self.base), response))
    }

    /// Writes `GET /api/v1/backup` to `file`: through `FILE.partial`, checked
    /// ([`crate::backup::inspect`]) before it replaces `file`.
    pub async fn backup_to(
        &self,
        file: &std::path::Path,
    ) -> Result<crate::backup::BackupSummary, ClientError> {
        let path = "/api/v1/backup";
        let url = format!("{}{path}", self.base);
        let mut response = self.send(reqwest::Method::GET, path, None::<&()>).await?;
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let write_err = |source| ClientError::WriteFile {
            path: partial.clone(),
            source,
        };
        let mut out = std::fs::File::create(&partial).map_err(write_err)?;
        while let Some(chunk) = response.chunk().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })? {
            out.write_all(&chunk).map_err(write_err)?;
        }
        out.sync_all().map_err(write_err)?;
        drop(out);
        let summary = match crate::backup::inspect(&partial) {
            Ok(summary) => summary,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(ClientError::Backup(e));
            }
        };
        std::fs::rename(&partial, file).map_err(|source| ClientError::WriteFile {
            path: file.to_owned(),
            source,
        })?;
        Ok(summary)
    }

    pub async fn sessions(&self) -> Result<Vec<SessionSummary>, ClientError> {
        self.get("/api/v1/sessions").await
    }

    pub async fn session(&self, mac: &str) -> Result<SessionTimeline, ClientError> {
        self.get(&format!("/api/v1/sessions/{mac}")).await
    }

    pub async fn images(&self) -> Result<Vec<Image>, ClientError> {
        self.get("/api/v1/images").await
    }

    /// Forgets a root by name, or a file image by its hex SHA-256.
    pub async fn delete_image(&self, key: &str) -> Result<(), ClientError> {
        // A root name may hold `/` (`team/app:v2`): one path segment, percent-encoded.
        let segment = key.replace('%', "%25").replace('/', "%2F");
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/v1/images/{segment}"),
            None::<&()>,
        )
        .await
        .map(drop)
    }

    pub async fn imports(&self) -> Result<Vec<ImportJob>, ClientError> {
        self.get("/api/v1/images/imports").await
    }

    pub async fn import(&self, id: u64) -> Result<ImportJob, ClientError> {
        self.get(&format!("/api/v1/images/imports/{id}")).await
    }

    /// Starts an import; the job comes back running.
    pub async fn start_import(&self, req: &ImportRequest) -> Result<ImportJob, ClientError> {
        self.post("/api/v1/images/imports", req).await
    }

    pub async fn verify_audit(&self) -> Result<AuditReport, ClientError> {
        self.get("/api/v1/audit/verify").await
    }

    pub async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        self.get(&format!("/api/v1/audit?after={after}&limit={limit}"))
            .await
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, ClientError> {
        self.get("/api/v1/leases").await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get("/api/v1/tokens").await
    }

    /// Issues a token; the answer is the only time it is shown.
    pub async fn create_token(&self, req: &NewToken) -> Result<IssuedToken, ClientError> {
        self.post("/api/v1/tokens", req).await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/tokens/{name}")).await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(reqwest::Method::DELETE, path, None::<&()>)
            .await
            .map(drop)
    }
}

/// A machine or profile as lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    pub item: T,
    /// Why the appliance leaves it out of the boot plan.
    pub quarantined: Option<String>,
    pub source: EntrySource,
}

impl<T: Serialize> Listed<T> {
    /// The API's JSON for it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        crate::api_types::listed(&self.item, self.quarantined.as_deref(), self.source)
    }
}

/// `s` percent-encoded for a query string's value (RFC 3986 §3.4: unreserved characters stay).
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn method_name(m: &reqwest::Method) -> &'static str {
    match *m {
        reqwest::Method::GET => "GET",
        reqwest::Method::PUT => "PUT",
        reqwest::Method::POST => "POST",
        reqwest::Method::DELETE => "DELETE",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("rack=r1,!x"), "rack%3Dr1%2C%21x");
        assert_eq!(query_value("a.b_c-d~"), "a.b_c-d~");
    }
}
