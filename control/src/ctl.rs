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

use crate::api::{ErrorBody, OUTCOME_HEADER};
use crate::audit::AuditReport;
use crate::imports::{ImportJob, ImportRequest, ImportState};
use crate::model::{
    Arch, BootPolicy, BootProfile, BootTarget, Machine, MachineSpec, ProfileSpec, ValidationError,
};
use crate::model::{Image, ImageKind};
use crate::sessions::{EventView, SessionSummary, SessionTimeline};
use crate::state::PutOutcome;

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
    /// Bearer token.
    #[arg(long, env = "STAMPEDE_TOKEN", hide_env_values = true, global = true)]
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
    /// Declare profiles and machines from a TOML file; applying it again changes nothing.
    /// Resources not in the file are left alone.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
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
    List,
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
    },
    Rm {
        mac: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ProfilesCommand {
    List,
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
        Ok(
            match response
                .headers()
                .get(OUTCOME_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                Some("created") => PutOutcome::Created,
                Some("unchanged") => PutOutcome::Unchanged,
                _ => PutOutcome::Updated,
            },
        )
    }

    pub async fn machines(&self) -> Result<Vec<Machine>, CtlError> {
        Ok(self
            .machines_listed()
            .await?
            .into_iter()
            .map(|(m, _)| m)
            .collect())
    }

    /// Machines, each with why it is quarantined (left out of the boot plan), if it is.
    pub async fn machines_listed(&self) -> Result<Vec<(Machine, Option<String>)>, CtlError> {
        self.listed("/api/v1/machines").await
    }

    /// Profiles, each with why it is quarantined, if it is.
    pub async fn profiles_listed(&self) -> Result<Vec<(BootProfile, Option<String>)>, CtlError> {
        self.listed("/api/v1/profiles").await
    }

    /// A list whose entries may carry `"quarantined": "<why>"` next to their own fields.
    async fn listed<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<(T, Option<String>)>, CtlError> {
        let values: Vec<serde_json::Value> = self.get(path).await?;
        values
            .into_iter()
            .map(|mut value| {
                let why = value
                    .as_object_mut()
                    .and_then(|o| o.remove("quarantined"))
                    .and_then(|w| w.as_str().map(str::to_owned));
                let item = serde_json::from_value(value).map_err(|e| CtlError::BadAnswer {
                    path: path.to_owned(),
                    problem: e.to_string(),
                })?;
                Ok((item, why))
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

    pub async fn profiles(&self) -> Result<Vec<BootProfile>, CtlError> {
        Ok(self
            .profiles_listed()
            .await?
            .into_iter()
            .map(|(p, _)| p)
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

    /// Declares everything in `fleet`: profiles first (machines name them), then machines.
    /// Everything is validated before the first request, so a bad file changes nothing.
    pub async fn apply(&self, fleet: &FleetFile) -> Result<ApplyReport, CtlError> {
        for p in &fleet.profiles {
            BootProfile::try_from(p.clone())?;
        }
        for m in &fleet.machines {
            Machine::try_from(m.clone())?;
        }
        let mut report = ApplyReport::default();
        for p in &fleet.profiles {
            report.profiles.count(self.put_profile(p).await?);
        }
        for m in &fleet.machines {
            report.machines.count(self.put_machine(m).await?);
        }
        Ok(report)
    }
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

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock_time(unix_ms: u64) -> String {
    let ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// One line of `stampede ctl watch`.
pub fn watch_line(event: &EventView) -> String {
    let mac = event.mac.map_or_else(|| "-".to_owned(), |m| m.to_string());
    format!(
        "{}  {:<17}  {:<21}  {:<13}  {}",
        clock_time(event.at_unix_ms),
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
        clock_time(at),
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

/// [`run`] writing to `out` (tests read what a person would see).
pub async fn run_to(args: CtlArgs, out: &mut impl Write) -> Result<(), CtlError> {
    run_with(args, out, false).await
}

/// `tty`: `out` is a terminal, so progress may redraw one line.
async fn run_with(args: CtlArgs, out: &mut impl Write, tty: bool) -> Result<(), CtlError> {
    let token = args.token.as_deref().ok_or(CtlError::NoToken)?;
    let client = Client::with_cacert(&args.url, token, args.cacert.as_deref())?;
    match args.command {
        CtlCommand::Machines(MachinesCommand::List) => {
            let machines = client.machines_listed().await?;
            if args.json {
                let values: Vec<_> = machines
                    .iter()
                    .map(|(m, why)| crate::api::listed(m, why.as_deref()))
                    .collect();
                return print_json(out, &values);
            }
            let rows = machines
                .iter()
                .map(|(m, why)| {
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
                        quarantine_cell(why.as_deref()),
                    ]
                })
                .collect();
            print_table(
                out,
                &[
                    "MAC", "HOSTNAME", "PROFILE", "ARCH", "BOOT", "LABELS", "STATE",
                ],
                rows,
            )
        }
        CtlCommand::Machines(MachinesCommand::Add {
            mac,
            profile,
            hostname,
            uuid,
            arch,
            labels,
            deny,
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
            if args.json {
                let values: Vec<_> = profiles
                    .iter()
                    .map(|(p, why)| crate::api::listed(p, why.as_deref()))
                    .collect();
                return print_json(out, &values);
            }
            let rows = profiles
                .iter()
                .map(|(p, why)| {
                    let s = p.spec();
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
                        quarantine_cell(why.as_deref()),
                    ]
                })
                .collect();
            print_table(
                out,
                &[
                    "NAME", "ROOT", "KERNEL", "INITRDS", "CMDLINE", "VARIANTS", "STATE",
                ],
                rows,
            )
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
                return print_json(out, &images);
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
                return print_json(out, &jobs);
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
                return print_json(out, &job);
            }
            follow_import(&client, job, args.json, tty, out).await
        }
        CtlCommand::Sessions { mac: None } => {
            let sessions = client.sessions().await?;
            if args.json {
                return print_json(out, &sessions);
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
                return print_json(out, &timeline);
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
        CtlCommand::Apply { file } => {
            let fleet = FleetFile::parse(&file)?;
            let report = client.apply(&fleet).await?;
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
                    ]
                })
                .collect();
            print_table(out, &["KIND", "CREATED", "UPDATED", "UNCHANGED"], rows)
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
        print_json(out, &job)?;
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
        clock_time(s.first_unix_ms),
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
                clock_time(e.event.at_unix_ms),
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
    let word = match outcome {
        PutOutcome::Created => "created",
        PutOutcome::Updated => "updated",
        PutOutcome::Unchanged => "unchanged",
    };
    writeln!(out, "{kind} {key} {word}")?;
    Ok(())
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
