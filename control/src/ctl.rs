//! `stampede ctl`: a client of the control API for people and scripts.
//!
//! The binary embeds [`CtlArgs`] as a subcommand and calls [`run`]. Output is a table unless
//! `--json` is given, in which case it is the API's JSON unchanged.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api_types::{ErrorBody, IssuedToken, NewToken, OUTCOME_HEADER, PutOutcome, TokenInfo};
use crate::audit::{AuditEntry, AuditReport};
use crate::auth::Role;
use crate::imports::{ImportJob, ImportRequest, ImportState};
use crate::leases::{LeaseRecord, LeaseRecordState};
use crate::model::{
    Arch, BootPolicy, BootProfile, BootTarget, Machine, MachineSpec, ProfileSpec, ValidationError,
};
use crate::model::{EntrySource, Image, ImageKind, LabelSelector};
use crate::sessions::{EventView, SessionSummary, SessionTimeline};
use crate::timestamp::{rfc3339, rfc3339_ms};

/// The environment variable ctl takes its token from.
pub const TOKEN_ENV: &str = "STAMPEDE_TOKEN";

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Control API base URL.
    #[arg(
        long,
        env = "STAMPEDE_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
    /// Bearer token. Without it, STAMPEDE_TOKEN is read, then STAMPEDE_ADMIN_TOKEN (the
    /// variable `serve` and `boot` take their first admin token from), so one exported variable
    /// serves both.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA(s) that signed the API's certificate (an `https://` URL); only these
    /// are trusted then. Without it, the system's trust store is used.
    #[arg(long, env = "STAMPEDE_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Machines known to the appliance.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Boot profiles.
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// DHCP leases.
    #[command(subcommand)]
    Leases(LeasesCommand),
    /// API tokens (needs an admin token).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Declare profiles and machines from a TOML file; applying it again changes nothing.
    /// Entries not in the file are left alone unless `--prune` is given.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print what would change (create, update, unchanged, delete per entry), change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the API's machines and profiles the file does not declare (entries of
        /// the appliance's configuration file are never touched).
        #[arg(long)]
        prune: bool,
    },
    /// Follow boots live: one line per DHCP reply, TFTP transfer and HTTP response (and image
    /// import progress), until Ctrl-C, `--count` events or `--timeout` seconds.
    Watch(WatchArgs),
    /// Images in the appliance's store.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Boot sessions: every machine's latest boot, or with MAC that machine's timeline (each
    /// event, the wait before it, the gaps between stages).
    Sessions {
        /// aa:bb:cc:dd:ee:ff
        mac: Option<String>,
    },
    /// Copy the appliance's state (machines, profiles, images, leases, tokens, audit log, boot
    /// sessions) to FILE while it serves: one consistent snapshot, itself a state file (needs an
    /// admin token; audited).
    Backup {
        /// Where to write the copy (replaced if it exists, once the copy is whole and checked).
        file: PathBuf,
    },
    /// Put a backup in place as the state file, offline: refused while an appliance holds the
    /// state file. The replaced file is kept as STATE.before-restore. Needs no token.
    Restore {
        /// The state file to replace (as `serve --state`).
        #[arg(long, default_value = "/var/lib/stampede/stampede.redb")]
        state: PathBuf,
        /// A file written by `stampede ctl backup`.
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImagesCommand {
    /// Files in the content store and diskless roots.
    List,
    /// Import SOURCE, showing progress until it is done (a bar on a terminal, lines otherwise;
    /// `--json`: the finished job). An OCI image (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
    /// `docker-archive:FILE`, `docker://REGISTRY/REPO:TAG`) becomes a diskless root a profile
    /// names with `root = "NAME"`; a file on the appliance or an http(s):// URL is copied into
    /// the content store. `import NAME SOURCE` is the older spelling of `import SOURCE --name
    /// NAME`.
    Import {
        /// SOURCE, or NAME SOURCE.
        #[arg(required = true, num_args = 1..=2, value_name = "SOURCE")]
        args: Vec<String>,
        /// The image's name (needed for files and URLs; a root defaults to its source's
        /// `repo:tag` or file name). Importing a root name again replaces what it points to.
        #[arg(long)]
        name: Option<String>,
        /// Files and URLs: fail, storing nothing, unless the content has this SHA-256 (hex).
        #[arg(long)]
        sha256: Option<String>,
        /// docker:// sources: trust the CA certificates in this PEM file for the registry's
        /// https (read here, sent to the appliance).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// docker:// sources: the registry's user and password.
        #[arg(
            long,
            value_name = "USER:PASSWORD",
            env = "STAMPEDE_REGISTRY_CREDS",
            hide_env_values = true
        )]
        creds: Option<String>,
        /// docker:// sources: speak plain http to the registry.
        #[arg(long)]
        plain_http: bool,
        /// Start the import and print its job without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Imports this appliance has run since it started.
    Imports,
    /// Forget an image: a root by name, or a file by its SHA-256. A root's served files stay on
    /// disk (no garbage collection yet).
    #[command(visible_alias = "delete")]
    Rm {
        /// Root name or file SHA-256.
        name: String,
    },
}

#[derive(Debug, Clone, Default, Args)]
pub struct WatchArgs {
    /// Only this machine (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    pub mac: Option<String>,
    /// Stop after this many events; fewer before `--timeout` is an error.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum MachinesCommand {
    List {
        /// Only machines whose labels match: `key=value`, `key!=value`, `key`, `!key`,
        /// comma-separated, all must hold (e.g. `-l rack=r1,role=db`).
        #[arg(short = 'l', long, value_name = "SELECTOR")]
        selector: Option<LabelSelector>,
    },
    /// One machine.
    Get { mac: String },
    /// Add or replace a machine.
    Add {
        mac: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// `key=value`, repeatable (key: letters, digits, `._/-`; value: letters, digits,
        /// `._-`; at most 63 bytes each).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Known but not allowed to boot.
        #[arg(long)]
        deny: bool,
        /// A line for root's `authorized_keys` on a diskless machine (repeat for several).
        #[arg(long = "ssh-key", value_name = "KEY")]
        ssh_keys: Vec<String>,
    },
    #[command(visible_alias = "delete")]
    Rm { mac: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ProfilesCommand {
    List,
    /// One profile.
    Get {
        name: String,
    },
    /// Remove a profile no machine boots.
    #[command(visible_alias = "delete")]
    Rm {
        name: String,
    },
    /// Add or replace a profile.
    Add {
        name: String,
        /// Boot this diskless root (an imported root's name, or sha256:DIGEST); the kernel
        /// defaults to the root's own.
        #[arg(long)]
        root: Option<String>,
        /// The kernel (needed without --root; with it, overrides the root's kernel and must
        /// be of the same release).
        #[arg(long, required_unless_present = "root", default_value = "")]
        kernel: String,
        /// Repeatable, in load order.
        #[arg(long = "initrd")]
        initrds: Vec<String>,
        #[arg(long, default_value = "")]
        cmdline: String,
        /// File holding an iPXE script template.
        #[arg(long)]
        ipxe_template: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; exits with an error if anything was edited or removed.
    Verify,
    /// Audit entries, oldest first.
    List {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries (the API's cap is 1000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum LeasesCommand {
    /// Committed leases: address, machine, state and expiry.
    List,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokensCommand {
    /// Tokens by name and role (never the tokens themselves).
    List,
    /// Issue a token; it is printed once and cannot be shown again.
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Seconds until it stops authenticating; without it, it lasts until revoked.
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
    /// Revoke a token by name.
    #[command(visible_alias = "rm")]
    Revoke { name: String },
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!("unknown arch {s:?} (x86_bios, efi_ia32, efi_x64, efi_arm32, efi_arm64)")
    })
}

/// `serving`, or `quarantined: <why>` for a stored entry the appliance leaves out.
fn quarantine_cell(why: Option<&str>) -> String {
    match why {
        None => "serving".into(),
        Some(why) => format!("quarantined: {why}"),
    }
}

fn machine_row(l: &Listed<Machine>) -> Vec<String> {
    let m = &l.item;
    vec![
        m.mac.to_string(),
        m.hostname.clone().unwrap_or_default(),
        m.profile.clone().unwrap_or_default(),
        m.arch.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        match m.boot {
            BootPolicy::Allow => "allow".into(),
            BootPolicy::Deny => "deny".into(),
        },
        m.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        l.source.as_str().to_owned(),
        quarantine_cell(l.quarantined.as_deref()),
    ]
}

const MACHINE_HEADER: &[&str] = &[
    "MAC", "HOSTNAME", "PROFILE", "ARCH", "BOOT", "LABELS", "SOURCE", "STATE",
];

fn profile_row(l: &Listed<BootProfile>) -> Vec<String> {
    let s = l.item.spec();
    vec![
        s.name.clone(),
        s.root.clone().unwrap_or_default(),
        s.default.kernel.clone(),
        s.default.initrds.join(","),
        s.default.cmdline.clone(),
        s.variants
            .keys()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(","),
        l.source.as_str().to_owned(),
        quarantine_cell(l.quarantined.as_deref()),
    ]
}

const PROFILE_HEADER: &[&str] = &[
    "NAME", "ROOT", "KERNEL", "INITRDS", "CMDLINE", "VARIANTS", "SOURCE", "STATE",
];

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no token: pass --token or set STAMPEDE_TOKEN")]
    NoToken,
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
    #[error("{path}: the answer is not what this ctl expects: {problem}")]
    BadAnswer { path: String, problem: String },
    #[error("invalid --timeout {0}: expected a number of seconds")]
    BadTimeout(f64),
    #[error("import {id} failed: {error}")]
    ImportFailed { id: u64, error: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

/// A typed client of the control API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An HTTP client for the API, with ring as rustls's crypto. With `cacert`, it trusts exactly
/// the CA certificates in that PEM file (an appliance's private CA), not the system's.
pub fn http_client(cacert: Option<&std::path::Path>) -> Result<reqwest::Client, CtlError> {
    // reqwest is built without a crypto provider of its own (that would be aws-lc-rs); it uses
    // the process default. Installing fails only if one is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder();
    if let Some(path) = cacert {
        let ca_err = |problem: String| CtlError::CaCert {
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
    builder.build().map_err(CtlError::ClientSetup)
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Self, CtlError> {
        Self::with_cacert(base, token, None)
    }

    /// A client that trusts only the CAs in `cacert` (see [`http_client`]).
    pub fn with_cacert(
        base: &str,
        token: &str,
        cacert: Option<&std::path::Path>,
    ) -> Result<Self, CtlError> {
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
    ) -> Result<reqwest::Response, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let response = req.send().await.map_err(|source| CtlError::Http {
            url: url.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |b| b.error);
        Err(CtlError::Api {
            method: method_name(&method),
            path: path.to_owned(),
            status,
            message,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let url = format!("{}{path}", self.base);
        self.send(reqwest::Method::GET, path, None::<&()>)
            .await?
            .json()
            .await
            .map_err(|source| CtlError::Http { url, source })
    }

    async fn put<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<PutOutcome, CtlError> {
        let response = self.send(reqwest::Method::PUT, path, Some(body)).await?;
        Ok(PutOutcome::from_header(
            response
                .headers()
                .get(OUTCOME_HEADER)
                .and_then(|v| v.to_str().ok()),
        ))
    }

    pub async fn machines(&self) -> Result<Vec<Machine>, CtlError> {
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
    ) -> Result<Vec<Listed<Machine>>, CtlError> {
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
    pub async fn profiles_listed(&self) -> Result<Vec<Listed<BootProfile>>, CtlError> {
        self.listed("/api/v1/profiles").await
    }

    /// A list whose entries carry `"source"` and may carry `"quarantined": "<why>"` next to
    /// their own fields.
    async fn listed<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<Listed<T>>, CtlError> {
        let values: Vec<serde_json::Value> = self.get(path).await?;
        values
            .into_iter()
            .map(|mut value| {
                let fields = value.as_object_mut();
                let (why, source) = match fields {
                    Some(o) => (o.remove("quarantined"), o.remove("source")),
                    None => (None, None),
                };
                let bad = |e: serde_json::Error| CtlError::BadAnswer {
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

    pub async fn machine(&self, mac: &str) -> Result<Machine, CtlError> {
        self.get(&format!("/api/v1/machines/{mac}")).await
    }

    /// Creates or replaces a machine.
    pub async fn put_machine(&self, spec: &MachineSpec) -> Result<PutOutcome, CtlError> {
        self.put(&format!("/api/v1/machines/{}", spec.mac), spec)
            .await
    }

    pub async fn delete_machine(&self, mac: &str) -> Result<(), CtlError> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/v1/machines/{mac}"),
            None::<&()>,
        )
        .await
        .map(drop)
    }

    pub async fn profile(&self, name: &str) -> Result<BootProfile, CtlError> {
        self.get(&format!("/api/v1/profiles/{name}")).await
    }

    pub async fn delete_profile(&self, name: &str) -> Result<(), CtlError> {
        self.delete(&format!("/api/v1/profiles/{name}")).await
    }

    pub async fn profiles(&self) -> Result<Vec<BootProfile>, CtlError> {
        Ok(self
            .profiles_listed()
            .await?
            .into_iter()
            .map(|l| l.item)
            .collect())
    }

    /// Creates or replaces a profile.
    pub async fn put_profile(&self, spec: &ProfileSpec) -> Result<PutOutcome, CtlError> {
        self.put(&format!("/api/v1/profiles/{}", spec.name), spec)
            .await
    }

    /// Opens `/api/v1/events` (optionally one machine's); read it with [`EventStream::next`].
    pub async fn events(&self, mac: Option<&str>) -> Result<EventStream, CtlError> {
        let path = match mac {
            Some(mac) => format!("/api/v1/events?mac={mac}"),
            None => "/api/v1/events".to_owned(),
        };
        let response = self.send(reqwest::Method::GET, &path, None::<&()>).await?;
        Ok(EventStream {
            url: format!("{}{path}", self.base),
            response,
            buf: Vec::new(),
        })
    }

    /// Writes `GET /api/v1/backup` to `file`: through `FILE.partial`, checked
    /// ([`crate::backup::inspect`]) before it replaces `file`.
    pub async fn backup_to(
        &self,
        file: &std::path::Path,
    ) -> Result<crate::backup::BackupSummary, CtlError> {
        let path = "/api/v1/backup";
        let url = format!("{}{path}", self.base);
        let mut response = self.send(reqwest::Method::GET, path, None::<&()>).await?;
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let write_err = |source| CtlError::WriteFile {
            path: partial.clone(),
            source,
        };
        let mut out = std::fs::File::create(&partial).map_err(write_err)?;
        while let Some(chunk) = response.chunk().await.map_err(|source| CtlError::Http {
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
                return Err(CtlError::Backup(e));
            }
        };
        std::fs::rename(&partial, file).map_err(|source| CtlError::WriteFile {
            path: file.to_owned(),
            source,
        })?;
        Ok(summary)
    }

    pub async fn sessions(&self) -> Result<Vec<SessionSummary>, CtlError> {
        self.get("/api/v1/sessions").await
    }

    pub async fn session(&self, mac: &str) -> Result<SessionTimeline, CtlError> {
        self.get(&format!("/api/v1/sessions/{mac}")).await
    }

    pub async fn images(&self) -> Result<Vec<Image>, CtlError> {
        self.get("/api/v1/images").await
    }

    /// Forgets a root by name, or a file image by its hex SHA-256.
    pub async fn delete_image(&self, key: &str) -> Result<(), CtlError> {
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

    pub async fn imports(&self) -> Result<Vec<ImportJob>, CtlError> {
        self.get("/api/v1/images/imports").await
    }

    pub async fn import(&self, id: u64) -> Result<ImportJob, CtlError> {
        self.get(&format!("/api/v1/images/imports/{id}")).await
    }

    /// Starts an import; the job comes back running.
    pub async fn start_import(&self, req: &ImportRequest) -> Result<ImportJob, CtlError> {
        let path = "/api/v1/images/imports";
        self.send(reqwest::Method::POST, path, Some(req))
            .await?
            .json()
            .await
            .map_err(|source| CtlError::Http {
                url: format!("{}{path}", self.base),
                source,
            })
    }

    pub async fn verify_audit(&self) -> Result<AuditReport, CtlError> {
        self.get("/api/v1/audit/verify").await
    }

    pub async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, CtlError> {
        self.get(&format!("/api/v1/audit?after={after}&limit={limit}"))
            .await
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, CtlError> {
        self.get("/api/v1/leases").await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, CtlError> {
        self.get("/api/v1/tokens").await
    }

    /// Issues a token; the answer is the only time it is shown.
    pub async fn create_token(&self, req: &NewToken) -> Result<IssuedToken, CtlError> {
        let path = "/api/v1/tokens";
        self.send(reqwest::Method::POST, path, Some(req))
            .await?
            .json()
            .await
            .map_err(|source| CtlError::Http {
                url: format!("{}{path}", self.base),
                source,
            })
    }

    pub async fn revoke_token(&self, name: &str) -> Result<(), CtlError> {
        self.delete(&format!("/api/v1/tokens/{name}")).await
    }

    async fn delete(&self, path: &str) -> Result<(), CtlError> {
        self.send(reqwest::Method::DELETE, path, None::<&()>)
            .await
            .map(drop)
    }

    /// Declares everything in `fleet`: profiles first (machines name them), then machines.
    /// Everything is validated before the first request, so a bad file changes nothing.
    pub async fn apply(&self, fleet: &FleetFile) -> Result<ApplyReport, CtlError> {
        self.apply_pruning(fleet, false).await
    }

    /// [`Client::apply`], and with `prune` then deletes the API's machines and profiles the file
    /// does not declare: machines first, so no deleted profile is still booted.
    pub async fn apply_pruning(
        &self,
        fleet: &FleetFile,
        prune: bool,
    ) -> Result<ApplyReport, CtlError> {
        fleet.validate()?;
        let mut report = ApplyReport::default();
        for p in &fleet.profiles {
            report.profiles.count(self.put_profile(p).await?);
        }
        for m in &fleet.machines {
            report.machines.count(self.put_machine(m).await?);
        }
        if prune {
            let plan = self.plan(fleet, true).await?;
            for change in plan.iter().filter(|c| c.action == ApplyAction::Delete) {
                if change.kind == EntryKind::Machine {
                    self.delete_machine(&change.key).await?;
                    report.machines.deleted += 1;
                }
            }
            for change in plan.iter().filter(|c| c.action == ApplyAction::Delete) {
                if change.kind == EntryKind::Profile {
                    self.delete_profile(&change.key).await?;
                    report.profiles.deleted += 1;
                }
            }
        }
        Ok(report)
    }

    /// What applying `fleet` would do to each entry, changing nothing: the file's profiles and
    /// machines in its order, then (with `prune`) the API entries it would delete. Entries of
    /// the appliance's configuration file are not the API's to change: a file entry with the
    /// same key is created over, and never deleted.
    pub async fn plan(
        &self,
        fleet: &FleetFile,
        prune: bool,
    ) -> Result<Vec<PlannedChange>, CtlError> {
        fleet.validate()?;
        let profiles: BTreeMap<String, Listed<BootProfile>> = self
            .profiles_listed()
            .await?
            .into_iter()
            .filter(|l| l.source == EntrySource::Api)
            .map(|l| (l.item.name().to_owned(), l))
            .collect();
        let machines: BTreeMap<crate::model::MacAddr, Listed<Machine>> = self
            .machines_listed(None)
            .await?
            .into_iter()
            .filter(|l| l.source == EntrySource::Api)
            .map(|l| (l.item.mac, l))
            .collect();
        let mut plan = Vec::new();
        for spec in &fleet.profiles {
            let wanted = BootProfile::try_from(spec.clone())?;
            plan.push(PlannedChange {
                kind: EntryKind::Profile,
                key: spec.name.clone(),
                action: ApplyAction::compare(profiles.get(&spec.name), &wanted),
            });
        }
        for spec in &fleet.machines {
            let wanted = Machine::try_from(spec.clone())?;
            plan.push(PlannedChange {
                kind: EntryKind::Machine,
                key: wanted.mac.to_string(),
                action: ApplyAction::compare(machines.get(&wanted.mac), &wanted),
            });
        }
        if prune {
            let declared: std::collections::BTreeSet<&str> =
                plan.iter().map(|c| c.key.as_str()).collect();
            let stale_profiles: Vec<PlannedChange> = profiles
                .keys()
                .filter(|name| !declared.contains(name.as_str()))
                .map(|name| PlannedChange {
                    kind: EntryKind::Profile,
                    key: name.clone(),
                    action: ApplyAction::Delete,
                })
                .collect();
            let stale_machines: Vec<PlannedChange> = machines
                .keys()
                .map(ToString::to_string)
                .filter(|mac| !declared.contains(mac.as_str()))
                .map(|mac| PlannedChange {
                    kind: EntryKind::Machine,
                    key: mac,
                    action: ApplyAction::Delete,
                })
                .collect();
            plan.extend(stale_profiles);
            plan.extend(stale_machines);
        }
        Ok(plan)
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
    fn to_json(&self) -> serde_json::Value {
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

/// One message of a Server-Sent Events stream (WHATWG HTML §9.2.6), as far as the API uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// `event:`; `message` when absent.
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// A response body read as Server-Sent Events.
#[derive(Debug)]
pub struct EventStream {
    url: String,
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next message with data, or `None` when the server ends the stream. Keep-alive
    /// comments are skipped.
    pub async fn next(&mut self) -> Result<Option<SseMessage>, CtlError> {
        loop {
            if let Some(message) = take_sse_message(&mut self.buf) {
                if message.data.is_empty() {
                    continue;
                }
                return Ok(Some(message));
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|source| CtlError::Http {
                    url: self.url.clone(),
                    source,
                })?;
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// Removes the first complete message (ended by a blank line) from `buf`.
fn take_sse_message(buf: &mut Vec<u8>) -> Option<SseMessage> {
    // Lines end in \n, \r\n or \r; axum sends \n, so normalize CRs before looking for a blank line.
    if buf.contains(&b'\r') {
        let text = String::from_utf8_lossy(buf)
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        *buf = text.into_bytes();
    }
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let block: Vec<u8> = buf.drain(..end + 2).collect();
    let text = String::from_utf8_lossy(&block);
    let mut message = SseMessage {
        event: "message".to_owned(),
        data: String::new(),
    };
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => message.event = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    message.data = data.join("\n");
    Some(message)
}

/// One line of `stampede ctl watch`.
pub fn watch_line(event: &EventView) -> String {
    let mac = event.mac.map_or_else(|| "-".to_owned(), |m| m.to_string());
    format!(
        "{}  {:<17}  {:<21}  {:<13}  {}",
        rfc3339_ms(event.at_unix_ms),
        mac,
        event.client,
        event.kind.name(),
        event.kind.describe()
    )
}

/// One line of `stampede ctl watch` for an image import's progress.
pub fn import_line(job: &ImportJob) -> String {
    let at = job.finished_at_ms.unwrap_or(job.started_at_ms);
    let mut line = format!(
        "{}  image import {} {} {}: {}",
        rfc3339_ms(at),
        job.id,
        job.name,
        state_word(job.state),
        import_progress(job)
    );
    if let Some(sha) = &job.sha256 {
        line.push_str(&format!(" sha256={sha}"));
    }
    if let Some(e) = &job.error {
        line.push_str(&format!(" error={e}"));
    }
    line
}

async fn watch(
    client: &Client,
    args: WatchArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let deadline = match args.timeout {
        Some(t) if t.is_finite() && t >= 0.0 => {
            Some(tokio::time::Instant::now() + std::time::Duration::from_secs_f64(t))
        }
        Some(t) => return Err(CtlError::BadTimeout(t)),
        None => None,
    };
    let mut stream = client.events(args.mac.as_deref()).await?;
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let next = async {
            tokio::select! {
                m = stream.next() => m,
                _ = tokio::signal::ctrl_c() => Ok(None),
            }
        };
        let message = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(m) => m?,
                Err(_) => break,
            },
            None => next.await?,
        };
        let Some(message) = message else { break };
        if message.event == "lagged" {
            writeln!(out, "# fell behind: {}", message.data)?;
            out.flush()?;
            continue;
        }
        if message.event == "image_import" {
            let job: ImportJob = serde_json::from_str(&message.data)
                .map_err(|e| CtlError::BadEvent(format!("{e}: {}", message.data)))?;
            if json {
                let job = serde_json::to_value(&job).map_err(std::io::Error::from)?;
                let job = crate::timestamp::with_rfc3339(job);
                serde_json::to_writer(&mut *out, &job).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", import_line(&job))?;
            }
            out.flush()?;
            seen += 1;
            continue;
        }
        let event: EventView = serde_json::from_str(&message.data)
            .map_err(|e| CtlError::BadEvent(format!("{e}: {}", message.data)))?;
        if json {
            let event = serde_json::to_value(&event).map_err(std::io::Error::from)?;
            let event = crate::timestamp::with_rfc3339(event);
            serde_json::to_writer(&mut *out, &event).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", watch_line(&event))?;
        }
        out.flush()?;
        seen += 1;
    }
    match (args.count, args.timeout) {
        (Some(wanted), Some(timeout_s)) if seen < wanted => Err(CtlError::WatchTimeout {
            timeout_s,
            seen,
            wanted,
        }),
        _ => Ok(()),
    }
}

/// `ctl restore`: the backup replaces the state file, not through the API (see
/// [`crate::backup`] for why).
fn restore_offline(
    state: &std::path::Path,
    file: &std::path::Path,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let report = crate::backup::restore(file, state)?;
    if json {
        return print_json(out, &report);
    }
    writeln!(
        out,
        "restored {} from {}: {}",
        report.state.display(),
        file.display(),
        describe_backup(&report.restored)
    )?;
    if let Some(previous) = &report.previous {
        writeln!(out, "the replaced state is kept as {}", previous.display())?;
    }
    Ok(())
}

/// `3 machines, 2 profiles, ..` for a person.
fn describe_backup(s: &crate::backup::BackupSummary) -> String {
    format!(
        "{} machines, {} profiles, {} images, {} roots, {} tokens, {} leases, \
         {} audit entries, {} boot sessions",
        s.machines, s.profiles, s.images, s.roots, s.tokens, s.leases, s.audit_entries, s.sessions
    )
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

/// `fleet.toml`: `[[profiles]]` and `[[machines]]` tables with the API's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    #[serde(default)]
    pub machines: Vec<MachineSpec>,
}

impl FleetFile {
    /// Every entry as the API will validate it, so a bad file is refused before any request.
    pub fn validate(&self) -> Result<(), CtlError> {
        for p in &self.profiles {
            BootProfile::try_from(p.clone())?;
        }
        for m in &self.machines {
            Machine::try_from(m.clone())?;
        }
        Ok(())
    }

    pub fn parse(path: &std::path::Path) -> Result<Self, CtlError> {
        let text = std::fs::read_to_string(path).map_err(|source| CtlError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| CtlError::FleetFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCounts {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Deleted by `--prune`.
    #[serde(default)]
    pub deleted: usize,
}

/// What `apply` does to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyAction {
    Create,
    Update,
    Unchanged,
    Delete,
}

impl ApplyAction {
    /// Creating or replacing `current` with `wanted`. A quarantined entry sent again is
    /// validated again and stored (the API answers `updated`), even when it is the same.
    fn compare<T: PartialEq>(current: Option<&Listed<T>>, wanted: &T) -> Self {
        match current {
            None => Self::Create,
            Some(c) if c.item == *wanted && c.quarantined.is_none() => Self::Unchanged,
            Some(_) => Self::Update,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Unchanged => "unchanged",
            Self::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Profile,
    Machine,
}

/// One line of `apply --dry-run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChange {
    pub kind: EntryKind,
    /// The profile's name or the machine's MAC.
    pub key: String,
    pub action: ApplyAction,
}

impl ApplyCounts {
    fn count(&mut self, outcome: PutOutcome) {
        match outcome {
            PutOutcome::Created => self.created += 1,
            PutOutcome::Updated => self.updated += 1,
            PutOutcome::Unchanged => self.unchanged += 1,
        }
    }

    pub fn changed(&self) -> usize {
        self.created + self.updated
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub profiles: ApplyCounts,
    pub machines: ApplyCounts,
}

/// Runs one `stampede ctl` command, printing to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    if matches!(
        args.command,
        CtlCommand::Watch(_) | CtlCommand::Images(ImagesCommand::Import { .. })
    ) {
        // Lines must appear as events arrive, not when the command ends.
        use std::io::IsTerminal as _;
        let tty = std::io::stdout().is_terminal();
        return run_with(args, &mut std::io::stdout(), tty).await;
    }
    let mut out = Vec::new();
    let result = run_to(args, &mut out).await;
    std::io::stdout().write_all(&out)?;
    result
}

/// `--token` or STAMPEDE_TOKEN (clap reads both into `flag`), else the server's
/// STAMPEDE_ADMIN_TOKEN: an operator who exported the one the appliance started with needs no
/// second variable.
fn token_or(flag: Option<String>, admin_env: Option<String>) -> Option<String> {
    let given = |t: Option<String>| t.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    given(flag).or_else(|| given(admin_env))
}

/// [`run`] writing to `out` (tests read what a person would see).
pub async fn run_to(args: CtlArgs, out: &mut impl Write) -> Result<(), CtlError> {
    run_with(args, out, false).await
}

/// `tty`: `out` is a terminal, so progress may redraw one line.
async fn run_with(args: CtlArgs, out: &mut impl Write, tty: bool) -> Result<(), CtlError> {
    if let CtlCommand::Restore { state, file } = &args.command {
        // Offline, and so without a token.
        return restore_offline(state, file, args.json, out);
    }
    let token = token_or(
        args.token.clone(),
        std::env::var(crate::ADMIN_TOKEN_ENV).ok(),
    )
    .ok_or(CtlError::NoToken)?;
    let client = Client::with_cacert(&args.url, &token, args.cacert.as_deref())?;
    match args.command {
        CtlCommand::Machines(MachinesCommand::List { selector }) => {
            let machines = client.machines_listed(selector.as_ref()).await?;
            print_listed(out, args.json, MACHINE_HEADER, &machines, machine_row)
        }
        CtlCommand::Machines(MachinesCommand::Get { mac }) => {
            let mac: crate::model::MacAddr = mac.parse()?;
            // From the list, which also says where the machine is declared and whether it
            // serves; a machine of the configuration file has no API resource of its own.
            let machine = client
                .machines_listed(None)
                .await?
                .into_iter()
                .find(|l| l.item.mac == mac)
                .ok_or_else(|| CtlError::Api {
                    method: "GET",
                    path: format!("/api/v1/machines/{mac}"),
                    status: StatusCode::NOT_FOUND,
                    message: format!("machine {mac} not found"),
                })?;
            print_one(out, args.json, MACHINE_HEADER, &machine, machine_row)
        }
        CtlCommand::Machines(MachinesCommand::Add {
            mac,
            profile,
            hostname,
            uuid,
            arch,
            labels,
            deny,
            ssh_keys,
        }) => {
            let spec = MachineSpec {
                mac,
                uuid,
                arch,
                hostname,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                profile,
                boot: if deny {
                    BootPolicy::Deny
                } else {
                    BootPolicy::Allow
                },
                ssh_authorized_keys: ssh_keys,
            };
            // Validate here so a typo gets a local message, not a round trip.
            let machine = Machine::try_from(spec.clone())?;
            let outcome = client.put_machine(&spec).await?;
            print_outcome(out, args.json, "machine", &machine.mac.to_string(), outcome)
        }
        CtlCommand::Machines(MachinesCommand::Rm { mac }) => {
            client.delete_machine(&mac).await?;
            if args.json {
                return print_json(out, &serde_json::json!({ "deleted": mac }));
            }
            writeln!(out, "machine {mac} removed")?;
            Ok(())
        }
        CtlCommand::Profiles(ProfilesCommand::List) => {
            let profiles = client.profiles_listed().await?;
            print_listed(out, args.json, PROFILE_HEADER, &profiles, profile_row)
        }
        CtlCommand::Profiles(ProfilesCommand::Get { name }) => {
            let profile = client
                .profiles_listed()
                .await?
                .into_iter()
                .find(|l| l.item.name() == name)
                .ok_or_else(|| CtlError::Api {
                    method: "GET",
                    path: format!("/api/v1/profiles/{name}"),
                    status: StatusCode::NOT_FOUND,
                    message: format!("profile {name} not found"),
                })?;
            print_one(out, args.json, PROFILE_HEADER, &profile, profile_row)
        }
        CtlCommand::Profiles(ProfilesCommand::Rm { name }) => {
            client.delete_profile(&name).await?;
            if args.json {
                return print_json(out, &serde_json::json!({ "deleted": name }));
            }
            writeln!(out, "profile {name} removed")?;
            Ok(())
        }
        CtlCommand::Leases(LeasesCommand::List) => {
            let leases = client.leases().await?;
            if args.json {
                return print_timed_json(out, &leases);
            }
            let rows = leases
                .iter()
                .map(|l| {
                    vec![
                        l.ip.to_string(),
                        l.mac.clone(),
                        match l.state {
                            LeaseRecordState::Offered => "offered",
                            LeaseRecordState::Bound => "bound",
                            LeaseRecordState::Declined => "declined",
                        }
                        .to_owned(),
                        rfc3339(l.expires_ms),
                        l.client.clone(),
                    ]
                })
                .collect();
            print_table(out, &["IP", "MAC", "STATE", "EXPIRES", "CLIENT"], rows)
        }
        CtlCommand::Tokens(TokensCommand::List) => {
            let tokens = client.tokens().await?;
            if args.json {
                return print_timed_json(out, &tokens);
            }
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.role.to_string(),
                        rfc3339(t.created_at_ms),
                        t.expires_at_ms.map_or_else(|| "never".to_owned(), rfc3339),
                    ]
                })
                .collect();
            print_table(out, &["NAME", "ROLE", "CREATED", "EXPIRES"], rows)
        }
        CtlCommand::Tokens(TokensCommand::Create {
            name,
            role,
            expires_in,
        }) => {
            let issued = client
                .create_token(&NewToken {
                    name,
                    role,
                    expires_in_s: expires_in,
                })
                .await?;
            if args.json {
                return print_json(out, &issued);
            }
            // The token alone on stdout, so `TOKEN=$(stampede ctl tokens create ...)` works.
            writeln!(out, "{}", issued.token)?;
            Ok(())
        }
        CtlCommand::Tokens(TokensCommand::Revoke { name }) => {
            client.revoke_token(&name).await?;
            if args.json {
                return print_json(out, &serde_json::json!({ "revoked": name }));
            }
            writeln!(out, "token {name} revoked")?;
            Ok(())
        }
        CtlCommand::Audit(AuditCommand::List { after, limit }) => {
            let entries = client.audit_entries(after, limit).await?;
            if args.json {
                return print_timed_json(out, &entries);
            }
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        rfc3339(e.at_ms),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                    ]
                })
                .collect();
            print_table(out, &["SEQ", "TIME", "ACTOR", "ACTION", "TARGET"], rows)
        }
        CtlCommand::Profiles(ProfilesCommand::Add {
            name,
            root,
            kernel,
            initrds,
            cmdline,
            ipxe_template,
        }) => {
            let ipxe_template = match ipxe_template {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|source| CtlError::ReadFile { path, source })?,
                ),
                None => None,
            };
            let spec = ProfileSpec {
                name,
                root,
                default: BootTarget {
                    kernel,
                    initrds,
                    cmdline,
                },
                ipxe_template,
                variants: BTreeMap::new(),
            };
            BootProfile::try_from(spec.clone())?;
            let outcome = client.put_profile(&spec).await?;
            print_outcome(out, args.json, "profile", &spec.name, outcome)
        }
        CtlCommand::Watch(watch_args) => watch(&client, watch_args, args.json, out).await,
        CtlCommand::Images(ImagesCommand::List) => {
            let images = client.images().await?;
            if args.json {
                return print_timed_json(out, &images);
            }
            let rows = images
                .iter()
                .map(|i| {
                    let (kind, detail) = match (&i.kind, &i.root) {
                        (ImageKind::Root, Some(r)) => (
                            "root",
                            format!(
                                "root {} kernel {} chunks {} initrd {} bytes",
                                r.root_id, r.kernel_release, r.chunks, r.initrd_bytes
                            ),
                        ),
                        _ => ("file", i.path.clone()),
                    };
                    vec![
                        i.name.clone(),
                        kind.to_owned(),
                        format!("sha256:{}", i.sha256),
                        i.size.to_string(),
                        detail,
                    ]
                })
                .collect();
            print_table(out, &["NAME", "KIND", "DIGEST", "BYTES", "DETAIL"], rows)
        }
        CtlCommand::Images(ImagesCommand::Imports) => {
            let jobs = client.imports().await?;
            if args.json {
                return print_timed_json(out, &jobs);
            }
            let rows = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.name.clone(),
                        j.stage
                            .clone()
                            .unwrap_or_else(|| state_word(j.state).to_owned()),
                        import_progress(j),
                        j.sha256.clone().unwrap_or_default(),
                        j.error.clone().unwrap_or_else(|| j.source.clone()),
                    ]
                })
                .collect();
            print_table(
                out,
                &["ID", "NAME", "STATE", "BYTES", "SHA256", "SOURCE/ERROR"],
                rows,
            )
        }
        CtlCommand::Images(ImagesCommand::Rm { name }) => {
            client.delete_image(&name).await?;
            if args.json {
                return print_json(out, &serde_json::json!({ "deleted": name }));
            }
            writeln!(out, "image {name} removed")?;
            Ok(())
        }
        CtlCommand::Images(ImagesCommand::Import {
            args: positional,
            name,
            sha256,
            ca,
            creds,
            plain_http,
            detach,
        }) => {
            let (name, source) = match <[String; 2]>::try_from(positional) {
                Ok([_, _]) if name.is_some() => {
                    return Err(CtlError::Usage(
                        "give the name once: `import SOURCE --name NAME` or `import NAME SOURCE`"
                            .into(),
                    ));
                }
                Ok([legacy_name, source]) => (Some(legacy_name), source),
                Err(mut one) => (name, one.pop().unwrap_or_default()),
            };
            let ca_pem = match ca {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|source| CtlError::ReadFile { path, source })?,
                ),
                None => None,
            };
            // Credentials from the environment are for registries only: a file import with
            // STAMPEDE_REGISTRY_CREDS set must not fail for it.
            let credentials = creds.filter(|_| source.starts_with("docker://"));
            let req = ImportRequest {
                name,
                source,
                sha256,
                ca_pem,
                credentials,
                plain_http,
            };
            let job = client.start_import(&req).await?;
            if detach {
                return print_timed_json(out, &job);
            }
            follow_import(&client, job, args.json, tty, out).await
        }
        CtlCommand::Backup { file } => {
            let summary = client.backup_to(&file).await?;
            if args.json {
                return print_json(out, &summary);
            }
            writeln!(
                out,
                "backup written to {}: {}",
                file.display(),
                describe_backup(&summary)
            )?;
            Ok(())
        }
        CtlCommand::Restore { state, file } => restore_offline(&state, &file, args.json, out),
        CtlCommand::Sessions { mac: None } => {
            let sessions = client.sessions().await?;
            if args.json {
                return print_timed_json(out, &sessions);
            }
            let rows = sessions.iter().map(session_row).collect();
            print_table(
                out,
                &[
                    "MAC",
                    "IP",
                    "BOOT",
                    "OUTCOME",
                    "STARTED",
                    "DURATION",
                    "STAGES",
                    "LAST EVENT",
                ],
                rows,
            )
        }
        CtlCommand::Sessions { mac: Some(mac) } => {
            let timeline = client.session(&mac).await?;
            if args.json {
                return print_timed_json(out, &timeline);
            }
            print_timeline(out, &timeline)
        }
        CtlCommand::Audit(AuditCommand::Verify) => {
            let report = client.verify_audit().await?;
            if args.json {
                print_json(out, &report)?;
            } else if report.is_intact() {
                writeln!(
                    out,
                    "audit log intact: {} entries, head {}",
                    report.entries, report.head_hash
                )?;
            }
            match report.problem {
                Some(problem) => Err(CtlError::AuditDamaged(problem)),
                None => Ok(()),
            }
        }
        CtlCommand::Apply {
            file,
            dry_run: true,
            prune,
        } => {
            let fleet = FleetFile::parse(&file)?;
            let plan = client.plan(&fleet, prune).await?;
            if args.json {
                return print_json(out, &plan);
            }
            let rows = plan
                .iter()
                .map(|c| {
                    vec![
                        c.action.as_str().to_owned(),
                        match c.kind {
                            EntryKind::Profile => "profile",
                            EntryKind::Machine => "machine",
                        }
                        .to_owned(),
                        c.key.clone(),
                    ]
                })
                .collect();
            print_table(out, &["ACTION", "KIND", "NAME"], rows)
        }
        CtlCommand::Apply {
            file,
            dry_run: false,
            prune,
        } => {
            let fleet = FleetFile::parse(&file)?;
            let report = client.apply_pruning(&fleet, prune).await?;
            if args.json {
                return print_json(out, &report);
            }
            let rows = [("profiles", report.profiles), ("machines", report.machines)]
                .iter()
                .map(|(kind, c)| {
                    vec![
                        (*kind).to_owned(),
                        c.created.to_string(),
                        c.updated.to_string(),
                        c.unchanged.to_string(),
                        c.deleted.to_string(),
                    ]
                })
                .collect();
            print_table(
                out,
                &["KIND", "CREATED", "UPDATED", "UNCHANGED", "DELETED"],
                rows,
            )
        }
    }
}

fn state_word(s: ImportState) -> &'static str {
    match s {
        ImportState::Running => "running",
        ImportState::Done => "done",
        ImportState::Failed => "failed",
    }
}

/// How often `ctl images import` asks how far the import is.
const IMPORT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Line mode prints at most one progress line per this interval.
const IMPORT_LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// `None` when the size is unknown (an HTTP source that did not say).
fn percent(job: &ImportJob) -> Option<u64> {
    let total = job.bytes_total?;
    // An empty source is complete from the start.
    Some(
        (job.bytes_done.min(total) * 100)
            .checked_div(total)
            .unwrap_or(100),
    )
}

/// `1048576/4194304 bytes (25%)`, or `1048576 bytes` when the size is unknown.
fn import_progress(job: &ImportJob) -> String {
    match (job.bytes_total, percent(job)) {
        (Some(total), Some(pct)) => format!("{}/{total} bytes ({pct}%)", job.bytes_done),
        _ => format!("{} bytes", job.bytes_done),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One redrawn terminal line: `[#####.....]  45%  28.8/64.0 MiB`.
fn progress_bar(job: &ImportJob) -> String {
    const WIDTH: u64 = 30;
    let (Some(pct), Some(total)) = (percent(job), job.bytes_total) else {
        return format!("\r{:.1} MiB", mib(job.bytes_done));
    };
    let filled = (pct * WIDTH / 100) as usize;
    format!(
        "\r[{}{}] {pct:>3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        mib(job.bytes_done),
        mib(total)
    )
}

/// Polls the job until it ends, showing progress; fails if the import failed.
async fn follow_import(
    client: &Client,
    mut job: ImportJob,
    json: bool,
    tty: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let mut last_line: Option<std::time::Instant> = None;
    let mut last_shown = None;
    loop {
        let shown = (job.bytes_done, job.state, job.stage.clone());
        if !json && last_shown.as_ref() != Some(&shown) {
            if tty {
                let stage = job.stage.as_deref().unwrap_or_default();
                write!(out, "{}  {stage:<9}", progress_bar(&job))?;
                out.flush()?;
                last_shown = Some(shown);
            } else if job.state != ImportState::Running
                || last_line.is_none_or(|t| t.elapsed() >= IMPORT_LINE_INTERVAL)
            {
                let word = match (&job.stage, job.state) {
                    (Some(stage), ImportState::Running) => stage.as_str(),
                    _ => state_word(job.state),
                };
                writeln!(out, "import {} {word}: {}", job.id, import_progress(&job))?;
                out.flush()?;
                last_line = Some(std::time::Instant::now());
                last_shown = Some(shown);
            }
        }
        if job.state != ImportState::Running {
            break;
        }
        tokio::time::sleep(IMPORT_POLL).await;
        job = client.import(job.id).await?;
    }
    if json {
        print_timed_json(out, &job)?;
    } else {
        if tty {
            writeln!(out)?;
        }
        if job.state == ImportState::Done
            && let Some(root) = &job.root
        {
            let outcome = match job.outcome {
                Some(PutOutcome::Unchanged) => "unchanged",
                Some(PutOutcome::Updated) => "replaced",
                _ => "stored",
            };
            writeln!(
                out,
                "root {} image {} root {} kernel {} chunks {} ({} bytes) {outcome}",
                job.name, root.image, root.root_id, root.kernel_release, root.chunks, root.bytes
            )?;
        } else if job.state == ImportState::Done {
            let outcome = match job.outcome {
                Some(PutOutcome::Unchanged) => "already in the store",
                _ => "stored",
            };
            writeln!(
                out,
                "image {} sha256 {} ({} bytes) {outcome}",
                job.name,
                job.sha256.as_deref().unwrap_or("?"),
                job.bytes_done
            )?;
        }
    }
    match job.state {
        ImportState::Failed => Err(CtlError::ImportFailed {
            id: job.id,
            error: job.error.unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

/// A duration for a person: `38ms`, `12.345s`.
fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

fn session_row(s: &SessionSummary) -> Vec<String> {
    let outcome = serde_json::to_value(s.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    vec![
        s.mac.to_string(),
        s.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        s.boot.to_string(),
        outcome,
        rfc3339_ms(s.first_unix_ms),
        seconds(s.duration_ms),
        s.stages
            .iter()
            .map(|st| format!("{}:{}", st.stage, st.events))
            .collect::<Vec<_>>()
            .join(" "),
        s.last_event.clone(),
    ]
}

fn print_timeline(out: &mut impl Write, t: &SessionTimeline) -> Result<(), CtlError> {
    let s = &t.summary;
    let row = session_row(s);
    writeln!(
        out,
        "{}  ip {}  boot {}  {}  {} over {} events{}",
        row[0],
        if row[1].is_empty() { "-" } else { &row[1] },
        s.boot,
        row[3],
        row[5],
        s.events,
        if s.dropped_events > 0 {
            format!(" ({} dropped)", s.dropped_events)
        } else {
            String::new()
        }
    )?;
    writeln!(out)?;
    let rows = t
        .timeline
        .iter()
        .map(|e| {
            vec![
                rfc3339_ms(e.event.at_unix_ms),
                format!("+{}", seconds(e.since_start_ms)),
                seconds(e.since_prev_ms),
                e.event.kind.name().to_owned(),
                e.event.kind.describe(),
            ]
        })
        .collect();
    print_table(
        out,
        &["TIME", "SINCE START", "WAIT", "EVENT", "DETAIL"],
        rows,
    )?;
    if !s.stages.is_empty() {
        writeln!(out)?;
        let rows = s
            .stages
            .iter()
            .map(|st| {
                vec![
                    st.stage.clone(),
                    seconds(st.last_unix_ms.saturating_sub(st.first_unix_ms)),
                    st.events.to_string(),
                    st.bytes.to_string(),
                    st.failures.to_string(),
                    st.retransmits.to_string(),
                ]
            })
            .collect();
        print_table(
            out,
            &[
                "STAGE",
                "TOOK",
                "EVENTS",
                "BYTES",
                "FAILURES",
                "RETRANSMITS",
            ],
            rows,
        )?;
    }
    for gap in &t.gaps {
        writeln!(
            out,
            "wait {} -> {}: {}",
            gap.from,
            gap.to,
            seconds(gap.gap_ms)
        )?;
    }
    if let Some(w) = &t.longest_wait {
        writeln!(
            out,
            "longest wait: {} before {} {}",
            seconds(w.since_prev_ms),
            w.event.kind.name(),
            w.event.kind.describe()
        )?;
    }
    Ok(())
}

/// [`print_json`] with the RFC 3339 twin of each millisecond time field, as the API answers.
fn print_timed_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), CtlError> {
    let value = serde_json::to_value(value).map_err(std::io::Error::from)?;
    print_json(out, &crate::timestamp::with_rfc3339(value))
}

fn print_json(out: &mut impl Write, value: &impl Serialize) -> Result<(), CtlError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn print_outcome(
    out: &mut impl Write,
    json: bool,
    kind: &str,
    key: &str,
    outcome: PutOutcome,
) -> Result<(), CtlError> {
    if json {
        return print_json(out, &serde_json::json!({ kind: key, "outcome": outcome }));
    }
    writeln!(out, "{kind} {key} {}", outcome.as_str())?;
    Ok(())
}

/// Listed machines or profiles: the API's JSON array, or a table of `row`s.
fn print_listed<T: Serialize>(
    out: &mut impl Write,
    json: bool,
    header: &[&str],
    items: &[Listed<T>],
    row: fn(&Listed<T>) -> Vec<String>,
) -> Result<(), CtlError> {
    if json {
        let values: Vec<_> = items.iter().map(Listed::to_json).collect();
        return print_json(out, &values);
    }
    print_table(out, header, items.iter().map(row).collect())
}

/// One listed machine or profile: its JSON object, or a one-row table.
fn print_one<T: Serialize>(
    out: &mut impl Write,
    json: bool,
    header: &[&str],
    item: &Listed<T>,
    row: fn(&Listed<T>) -> Vec<String>,
) -> Result<(), CtlError> {
    if json {
        return print_json(out, &item.to_json());
    }
    print_table(out, header, vec![row(item)])
}

/// Left-aligned columns two spaces apart, like `kubectl get`.
fn print_table(
    out: &mut impl Write,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), CtlError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_flag_then_the_servers_variable() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(token_or(some("flag"), some("admin")), some("flag"));
        assert_eq!(token_or(None, some("admin")), some("admin"));
        // An empty STAMPEDE_TOKEN is no token: the next source is read.
        assert_eq!(token_or(some(" "), some("admin")), some("admin"));
        assert_eq!(token_or(None, None), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("rack=r1,!x"), "rack%3Dr1%2C%21x");
        assert_eq!(query_value("a.b_c-d~"), "a.b_c-d~");
    }
}
