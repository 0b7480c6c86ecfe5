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
use crate::model::{
    Arch, BootPolicy, BootProfile, BootTarget, Machine, MachineSpec, ProfileSpec, ValidationError,
};
use crate::sessions::EventView;
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
    /// Follow boots live: one line per DHCP reply, TFTP transfer and HTTP response, until
    /// Ctrl-C, `--count` events or `--timeout` seconds.
    Watch(WatchArgs),
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
        /// `key=value`, repeatable.
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
        #[arg(long)]
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

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no token: pass --token or set STAMPEDE_TOKEN")]
    NoToken,
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
    #[error("invalid --timeout {0}: expected a number of seconds")]
    BadTimeout(f64),
}

/// A typed client of the control API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
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
        self.get("/api/v1/machines").await
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
        self.get("/api/v1/profiles").await
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
    if matches!(args.command, CtlCommand::Watch(_)) {
        // Lines must appear as events arrive, not when the command ends.
        return run_to(args, &mut std::io::stdout()).await;
    }
    let mut out = Vec::new();
    let result = run_to(args, &mut out).await;
    std::io::stdout().write_all(&out)?;
    result
}

/// [`run`] writing to `out` (tests read what a person would see).
pub async fn run_to(args: CtlArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let token = args.token.as_deref().ok_or(CtlError::NoToken)?;
    let client = Client::new(&args.url, token);
    match args.command {
        CtlCommand::Machines(MachinesCommand::List) => {
            let machines = client.machines().await?;
            if args.json {
                return print_json(out, &machines);
            }
            let rows = machines
                .iter()
                .map(|m| {
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
                    ]
                })
                .collect();
            print_table(
                out,
                &["MAC", "HOSTNAME", "PROFILE", "ARCH", "BOOT", "LABELS"],
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
            let profiles = client.profiles().await?;
            if args.json {
                return print_json(out, &profiles);
            }
            let rows = profiles
                .iter()
                .map(|p| {
                    let s = p.spec();
                    vec![
                        s.name.clone(),
                        s.default.kernel.clone(),
                        s.default.initrds.join(","),
                        s.default.cmdline.clone(),
                        s.variants
                            .keys()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            print_table(
                out,
                &["NAME", "KERNEL", "INITRDS", "CMDLINE", "VARIANTS"],
                rows,
            )
        }
        CtlCommand::Profiles(ProfilesCommand::Add {
            name,
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
