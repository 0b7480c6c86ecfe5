//! The boot plan: everything the engine needs to serve, derived once from a validated
//! [`ApplianceConfig`] and the server's address on one boot network.
//!
//! # Public API
//! - [`BootPlan::new`]`(&config, server_ip, root, ipxe)` with two [`SharedCatalog`]s: `root`
//!   serves the boot files (`boot.root` plus `boot.files`, looked up by the engine's store),
//!   `ipxe` the iPXE builds of `boot.ipxe_dir`.
//! - DHCP: [`BootPlan::dhcp_config`] / [`BootPlan::dhcp_server`] give the proto server in proxy
//!   or authoritative mode (`None` when `dhcp.mode = "off"`), its [`BootConfig`] mapping
//!   machines to scripts, and its [`dhcp::Admission`]: machines with `allow = false` (and, in
//!   proxy mode, machines no profile applies to) are refused by the server on the request it
//!   parsed to serve, each with a counted [`DhcpRefusal`].
//! - TFTP: [`BootPlan::tftp_server`] — a [`TftpServer`] over a [`BootCatalog`] that answers the
//!   loader names (`undionly.kpxe`, `snponly.efi`, ..) from the iPXE directory and every other
//!   name from the boot root.
//! - HTTP: [`BootPlan::http_connection`] — an [`HttpConnection`] for one accepted connection,
//!   with the [`ScriptRoute`] in front of a [`BootCatalog`]: `/<loader>` from the iPXE directory
//!   (UEFI HTTP Boot), `/files/<path>` from the boot root (what scripts reference), and the
//!   generated scripts below.
//! - [`BootPlan::missing_files`]: loaders and profile files the catalogs cannot open, for the
//!   engine to log at start-up.
//!
//! # URLs
//! DHCP hands iPXE `{http_base}/boot.ipxe?mac=aa-bb-cc-dd-ee-ff` (machines known by MAC and
//! unknown machines) or `{http_base}/uuid/<uuid>/boot.ipxe?mac=..` (machines known only by
//! UUID: the HTTP request carries no option 97, so the URL does). The [`ScriptRoute`] looks the
//! machine up again the same way (MAC first, then UUID, then the default profile), so DHCP and
//! HTTP cannot disagree.
//!
//! The DHCP URL says nothing about the architecture, which picks a profile's variant and fills
//! `{arch}`. So a request without `arch` (or iPXE's `platform` and `buildarch`) gets a two-line
//! probe script that chains back with iPXE's own `${platform}`, `${buildarch}` and `${ip}`;
//! the second request is answered with the machine's script. `{ip}` comes from that query, else
//! from a `[[dhcp.reservations]]` entry; `{hostname}` and `{uuid}` from the machine entry (or the
//! reservation's hostname, or the URL's UUID).
//!
//! # Secure Boot
//! A profile with `secure_boot = "shim"` hands x86-64 UEFI PXE machines (option 93 arch 7 or 9)
//! the signed shim ([`SHIM_NAME`]) instead of iPXE: firmware does not say in DHCP whether
//! Secure Boot is on, so the profile decides. Shim loads [`GRUB_NAME`] (the signed GRUB
//! netboot image) by TFTP from the same directory, and GRUB reads its configuration under
//! [`GRUB_DIR`]: first `grub.cfg-01-<mac with dashes>` (rendered per machine, like a script),
//! then the address in hex (not served), then `grub.cfg` (the default profile, when its
//! command line does not depend on the machine). Both by TFTP and by HTTP at the same paths.
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use stampede_proto::MacAddr;
use stampede_proto::bootpath::BootPath;
use stampede_proto::dhcp::{self, BootConfig, BootProfile as DhcpProfile, DhcpServer};
use stampede_proto::files::{BootFile, FileCatalog, OpenError};
use stampede_proto::http::{self, HttpConnection, Route};
use stampede_proto::ipxe::{self, Arch, MachineFacts, RenderError, ServerUrl, ValidProfile};
use stampede_proto::tftp::{self, TftpServer};

use crate::config::{ApplianceConfig, DhcpMode, GRUB_NAME, SHIM_NAME, parse_arch, parse_uuid};

mod catalog;

pub use catalog::BootCatalog;
use catalog::Namespace;

/// A file source shared by every worker and connection.
pub type SharedCatalog = Arc<dyn FileCatalog + Send + Sync>;

/// Where HTTP serves the boot root, so that boot files cannot shadow generated scripts or
/// loaders.
pub const FILES_PREFIX: &str = "files/";

/// Paths of built diskless roots (`boot.roots_dir`): signed manifests under `roots/<id>/` and
/// content-addressed chunks under `chunks/`. Served by HTTP at these paths, not under
/// [`FILES_PREFIX`], so a node's URLs do not depend on the boot root's layout.
pub const ROOT_PREFIXES: [&str; 2] = ["roots/", "chunks/"];

/// Where a node agent reports its steps: `GET /stampede/node/event?mac=..&event=root_chunks&..`
/// (answered `ok`; the HTTP worker files it as a boot event of the machine).
pub const NODE_EVENT_PATH: &str = "stampede/node/event";

/// Where a node agent asks for its per-machine files: `GET /stampede/node/config?mac=..`
/// answers `{"hostname": .., "machine_id": ..}` (JSON).
pub const NODE_CONFIG_PATH: &str = "stampede/node/config";

/// Longest detail kept from a node's report: it comes from the network.
pub const NODE_DETAIL_MAX: usize = 200;

/// A node agent's report from its request target (`/stampede/node/event?...`): the step and
/// what came with it, as `key=value` words, percent-decoded, with anything but printable ASCII
/// escaped (`\xNN`) and the whole bounded to [`NODE_DETAIL_MAX`]. `None`: not a report, or an
/// unknown step.
pub fn node_report(target: &str) -> Option<(stampede_proto::events::NodeStep, String)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path.trim_start_matches('/') != NODE_EVENT_PATH {
        return None;
    }
    let mut step = None;
    let mut detail = String::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = http::percent_decode(raw.as_bytes()).unwrap_or_else(|| raw.as_bytes().to_vec());
        match key {
            "event" => {
                step = stampede_proto::events::NodeStep::from_name(&String::from_utf8_lossy(&value))
            }
            "mac" => {}
            _ => {
                if !detail.is_empty() {
                    detail.push(' ');
                }
                escape_into(&mut detail, key.as_bytes());
                detail.push('=');
                escape_into(&mut detail, &value);
            }
        }
    }
    if detail.len() > NODE_DETAIL_MAX {
        let mut cut = NODE_DETAIL_MAX;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push_str("...");
    }
    Some((step?, detail))
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    use fmt::Write as _;
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Whether `path` names a part of a built root (see [`ROOT_PREFIXES`]).
pub fn is_root_path(path: &BootPath) -> bool {
    ROOT_PREFIXES.iter().any(|p| path.as_str().starts_with(p))
}
/// The script path DHCP hands to machines known by MAC and to unknown machines.
pub const SCRIPT_PATH: &str = "boot.ipxe";

/// Where GRUB's netboot image looks for its configuration: its prefix is `/grub` on the TFTP
/// server it was loaded from.
pub const GRUB_DIR: &str = "grub/";
/// GRUB's default configuration under [`GRUB_DIR`]; a machine's own is `grub.cfg-01-<mac>`.
pub const GRUB_CFG: &str = "grub.cfg";

/// Why a plan could not be built. Unreachable from a validated config in practice; kept as an
/// error rather than a panic because the proto checks are the authority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("DHCP configuration refused: {0}")]
    Dhcp(#[from] dhcp::ConfigError),
    #[error("profile {name:?} refused: {source}")]
    Profile {
        name: String,
        #[source]
        source: ipxe::ProfileError,
    },
}

/// Everything the engine serves on one boot network.
#[derive(Debug, Clone)]
pub struct BootPlan {
    server_ip: Ipv4Addr,
    http_base: String,
    dhcp: Option<dhcp::ServerConfig>,
    tftp: tftp::ServerConfig,
    tftp_catalog: BootCatalog,
    http: http::ServerConfig,
    http_catalog: BootCatalog,
    scripts: ScriptRoute,
    /// Every file the plan promises: (profile name or `None` for a loader, path).
    promised: Vec<(Option<String>, BootPath)>,
}

impl BootPlan {
    /// The plan for `config` on the network where this server is `server_ip`.
    pub fn new(
        config: &ApplianceConfig,
        server_ip: Ipv4Addr,
        root: SharedCatalog,
        ipxe: SharedCatalog,
    ) -> Result<Self, PlanError> {
        let http_base = format!("http://{server_ip}:{}", config.server.http_port);
        let server_url = ServerUrl::new(IpAddr::V4(server_ip), config.server.http_port);

        let mut boot = BootConfig::new(server_ip, http_base.clone());
        // `http.https_boot_urls`: UEFI HTTP Boot firmware gets its loader by `https://`; iPXE
        // and its scripts stay on HTTP (Debian's iPXE has no HTTPS, and iPXE trusts only CAs
        // built into it).
        boot.http_boot_base = config
            .http
            .https
            .as_ref()
            .filter(|https| https.boot_urls)
            .map(|https| format!("https://{server_ip}:{}", https.port));
        boot.loaders = config.boot.loaders.clone();
        boot.ipxe_chainload = config.boot.ipxe_chainload;
        boot.default_profile = DhcpProfile {
            name: config
                .boot
                .default_profile
                .map_or("none", |i| &config.profiles[i].name)
                .to_owned(),
            ipxe_script: SCRIPT_PATH.into(),
            efi_x64_loader: config
                .boot
                .default_profile
                .and_then(|i| shim_loader(&config.profiles[i])),
        };
        let mut admission = dhcp::Admission {
            drop_unknown: config.dhcp.mode == DhcpMode::Proxy
                && config.boot.default_profile.is_none(),
            ..dhcp::Admission::default()
        };
        for m in &config.machines {
            let profile = config.profile_of(m);
            if let Some(mac) = m.mac {
                if m.allow {
                    admission.known_macs.insert(mac);
                } else {
                    admission.denied_macs.insert(mac);
                }
                if let Some(p) = profile {
                    boot.profiles_by_mac.insert(
                        mac,
                        DhcpProfile {
                            name: p.name.clone(),
                            ipxe_script: SCRIPT_PATH.into(),
                            efi_x64_loader: shim_loader(p),
                        },
                    );
                }
            }
            if let Some(uuid) = m.uuid {
                if m.allow {
                    admission.known_uuids.insert(uuid);
                } else {
                    admission.denied_uuids.insert(uuid);
                }
                if let Some(p) = profile {
                    boot.profiles_by_uuid.insert(
                        uuid,
                        DhcpProfile {
                            name: p.name.clone(),
                            ipxe_script: format!("uuid/{}/{SCRIPT_PATH}", ipxe::format_uuid(&uuid)),
                            efi_x64_loader: shim_loader(p),
                        },
                    );
                }
            }
        }
        let mut dhcp = match config.dhcp.mode {
            DhcpMode::Off => None,
            DhcpMode::Proxy => Some(dhcp::ServerConfig::proxy(server_ip, boot)),
            DhcpMode::Authoritative => Some(dhcp::ServerConfig::authoritative(
                server_ip,
                boot,
                config.dhcp.pools.clone(),
            )),
        };
        if let Some(d) = &mut dhcp {
            d.admission = Arc::new(admission);
        }
        if let Some(d) = &dhcp {
            d.validate()?;
        }

        let loaders: Arc<HashSet<BootPath>> = Arc::new(
            [
                &config.boot.loaders.bios,
                &config.boot.loaders.efi_ia32,
                &config.boot.loaders.efi_x64,
                &config.boot.loaders.efi_arm32,
                &config.boot.loaders.efi_arm64,
            ]
            .into_iter()
            .flatten()
            .filter_map(|name| BootPath::parse(name.as_bytes()).ok())
            .collect(),
        );
        // The arm64 loader is handed out to arm64 UEFI machines, which boot only where a
        // profile has an arm64-efi variant (or the operator named the loader): otherwise its
        // absence (the Debian ipxe package has none) is nothing to warn about.
        let arm64_machines = config.profiles.iter().any(|p| {
            p.boot
                .variants
                .iter()
                .any(|(arch, _)| *arch == Arch::Arm64Efi)
        }) || config.boot.loaders.efi_arm64
            != dhcp::Loaders::default().efi_arm64;
        let unpromised = config
            .boot
            .loaders
            .efi_arm64
            .as_deref()
            .filter(|_| !arm64_machines)
            .and_then(|name| BootPath::parse(name.as_bytes()).ok());
        let mut promised: Vec<(Option<String>, BootPath)> = loaders
            .iter()
            .filter(|l| Some(*l) != unpromised.as_ref())
            .map(|l| (None, l.clone()))
            .collect();
        for p in &config.profiles {
            let chain = Some([SHIM_NAME, GRUB_NAME]).filter(|_| p.secure_boot.is_some());
            for path in chain.into_iter().flatten() {
                if let Ok(path) = BootPath::parse(path.as_bytes())
                    && !promised.iter().any(|(_, q)| *q == path)
                {
                    promised.push((Some(p.name.clone()), path));
                }
            }
            let files =
                std::iter::once(&p.boot.default).chain(p.boot.variants.iter().map(|(_, f)| f));
            for f in files {
                for raw in std::iter::once(&f.kernel).chain(&f.initrds) {
                    if let Ok(path) = BootPath::parse(raw.as_bytes())
                        && !promised.iter().any(|(_, q)| *q == path)
                    {
                        promised.push((Some(p.name.clone()), path));
                    }
                }
            }
        }
        promised.sort_by(|a, b| a.1.cmp(&b.1));
        let scripts = ScriptRoute::new(config, server_ip, server_url)?;
        let catalog = |namespace| BootCatalog {
            namespace,
            loaders: loaders.clone(),
            ipxe: ipxe.clone(),
            root: root.clone(),
            scripts: scripts.clone(),
        };

        Ok(Self {
            server_ip,
            http_base,
            dhcp,
            tftp: config.tftp.server,
            tftp_catalog: catalog(Namespace::Tftp),
            http: config.http.server,
            http_catalog: catalog(Namespace::Http),
            scripts,
            promised,
        })
    }

    /// Files the plan hands out that its catalogs cannot open now: loaders (from the iPXE
    /// directory) and profile kernels and initrds (from the boot root). The engine logs these
    /// at start-up; they are not errors because the store may fill in later.
    pub fn missing_files(&self) -> Vec<MissingFile> {
        self.promised
            .iter()
            .filter_map(|(profile, path)| {
                let opened = match profile {
                    None => self.tftp_catalog.ipxe.open(path),
                    Some(_) => self.tftp_catalog.root.open(path),
                };
                opened.err().map(|error| MissingFile {
                    profile: profile.clone(),
                    path: path.clone(),
                    error,
                })
            })
            .collect()
    }

    pub fn server_ip(&self) -> Ipv4Addr {
        self.server_ip
    }

    /// `http://<server_ip>:<http_port>`, no trailing slash (as [`BootConfig::http_base`]).
    pub fn http_base(&self) -> &str {
        &self.http_base
    }

    /// The DHCP server's configuration; `None` when `dhcp.mode = "off"`.
    pub fn dhcp_config(&self) -> Option<&dhcp::ServerConfig> {
        self.dhcp.as_ref()
    }

    /// A DHCP server core for one worker; `Ok(None)` when `dhcp.mode = "off"`.
    pub fn dhcp_server(&self) -> Result<Option<DhcpServer>, dhcp::ConfigError> {
        self.dhcp.clone().map(DhcpServer::new).transpose()
    }

    /// The TFTP listening core (cheap to clone per worker).
    pub fn tftp_server(&self) -> TftpServer<BootCatalog> {
        TftpServer::new(self.tftp, self.tftp_catalog.clone())
    }

    pub fn tftp_catalog(&self) -> &BootCatalog {
        &self.tftp_catalog
    }

    /// The HTTP core for a connection accepted at `now`.
    pub fn http_connection(&self, now: Instant) -> HttpConnection<BootCatalog> {
        HttpConnection::new(now, self.http_catalog.clone(), self.http)
            .with_route(self.scripts.clone())
    }

    pub fn http_catalog(&self) -> &BootCatalog {
        &self.http_catalog
    }

    /// The script generator (shared by every connection: its counters are the plan's).
    pub fn scripts(&self) -> &ScriptRoute {
        &self.scripts
    }
}

/// The DHCP loader override of a Secure Boot profile: the signed shim.
fn shim_loader(p: &crate::config::Profile) -> Option<String> {
    p.secure_boot
        .map(|crate::config::SecureBoot::Shim| SHIM_NAME.to_owned())
}

/// A promised file that cannot be served (see [`BootPlan::missing_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFile {
    /// The first profile naming it; `None` for an iPXE loader.
    pub profile: Option<String>,
    pub path: BootPath,
    pub error: OpenError,
}

// ---------------------------------------------------------------------------------------------
// DHCP pre-filter

/// Why a machine's DHCP got no answer by its identity (the server's [`dhcp::Admission`]).
pub use stampede_proto::dhcp::Refusal as DhcpRefusal;

// ---------------------------------------------------------------------------------------------
// Scripts

/// Why no script was served. Each is a counter; all but `RenderFailed` answer 404, which
/// answers 500 (a configuration problem, not the client's) with this text in the body and in
/// the log, naming the machine and what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptRefusal {
    /// No `mac`, or a value that does not parse.
    #[error("missing or malformed query")]
    BadQuery,
    #[error("unknown machine and no default profile")]
    UnknownMachine,
    #[error("machine is not allowed to boot")]
    Denied,
    /// `platform`/`buildarch` name an architecture no profile can describe (e.g. 32-bit EFI).
    #[error("unsupported architecture")]
    UnsupportedArch,
    #[error("machine {machine}, profile {profile:?}: {error}")]
    RenderFailed {
        machine: String,
        profile: String,
        error: RenderError,
    },
}

impl ScriptRefusal {
    /// Stable metrics labels, in counter order.
    pub const LABELS: [&'static str; 5] = [
        "bad_query",
        "unknown_machine",
        "denied",
        "unsupported_arch",
        "render_failed",
    ];

    const fn index(&self) -> usize {
        match self {
            Self::BadQuery => 0,
            Self::UnknownMachine => 1,
            Self::Denied => 2,
            Self::UnsupportedArch => 3,
            Self::RenderFailed { .. } => 4,
        }
    }

    pub const fn as_str(&self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// A snapshot of the script counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScriptCounts {
    /// Machine scripts served.
    pub scripts: u64,
    /// Architecture probes served (first request of a boot).
    pub probes: u64,
    refused: [u64; 5],
}

impl ScriptCounts {
    pub fn refused(&self, reason: &ScriptRefusal) -> u64 {
        self.refused[reason.index()]
    }

    /// `(label, count)` for every refusal reason.
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ScriptRefusal::LABELS.into_iter().zip(self.refused)
    }
}

#[derive(Debug, Default)]
struct ScriptCounters {
    scripts: AtomicU64,
    probes: AtomicU64,
    refused: [AtomicU64; 5],
}

#[derive(Debug)]
struct ScriptMachine {
    uuid: Option<[u8; 16]>,
    /// Index into `profiles`; `None` with `allow`: the default.
    profile: Option<usize>,
    hostname: Option<String>,
    allow: bool,
    /// `authorized_keys` lines for the node agent (checked printable ASCII, one line each).
    ssh_authorized_keys: Vec<String>,
}

#[derive(Debug)]
struct ScriptBook {
    server: ServerUrl,
    /// Where GRUB fetches kernels and initrds: `(tftp,<this>)`.
    tftp_server: Ipv4Addr,
    /// For each profile, index for index: its x86-64 UEFI files (boot root paths) if it is a
    /// Secure Boot profile, else `None`.
    grub: Vec<Option<ipxe::BootFiles>>,
    /// Profiles with paths under [`FILES_PREFIX`], as the scripts reference them.
    profiles: Vec<ValidProfile>,
    /// Their names, index for index.
    profile_names: Vec<String>,
    default_profile: Option<usize>,
    machines: Vec<ScriptMachine>,
    by_mac: HashMap<[u8; 6], usize>,
    by_uuid: HashMap<[u8; 16], usize>,
    reservations: HashMap<[u8; 6], (Ipv4Addr, Option<String>)>,
    counters: ScriptCounters,
}

/// What a script request asks for, from its path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRequest {
    pub mac: [u8; 6],
    /// From a `uuid/<uuid>/boot.ipxe` path.
    pub uuid: Option<[u8; 16]>,
    /// `None`: not known yet, answer with the probe.
    pub arch: Option<Arch>,
    pub ip: Option<Ipv4Addr>,
}

/// The [`Route`] that renders per-machine iPXE scripts. Cloning shares the profiles and the
/// counters.
#[derive(Debug, Clone)]
pub struct ScriptRoute {
    book: Arc<ScriptBook>,
}

impl ScriptRoute {
    fn new(
        config: &ApplianceConfig,
        tftp_server: Ipv4Addr,
        server: ServerUrl,
    ) -> Result<Self, PlanError> {
        let profiles = config
            .profiles
            .iter()
            .map(|p| {
                let prefixed = |f: &ipxe::BootFiles| ipxe::BootFiles {
                    kernel: format!("{FILES_PREFIX}{}", f.kernel),
                    initrds: f
                        .initrds
                        .iter()
                        .map(|i| format!("{FILES_PREFIX}{i}"))
                        .collect(),
                    cmdline: f.cmdline.clone(),
                };
                ipxe::BootProfile {
                    default: prefixed(&p.boot.default),
                    variants: p
                        .boot
                        .variants
                        .iter()
                        .map(|(a, f)| (*a, prefixed(f)))
                        .collect(),
                }
                .validate()
                .map_err(|source| PlanError::Profile {
                    name: p.name.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_mac = HashMap::new();
        let mut by_uuid = HashMap::new();
        let machines = config
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if let Some(mac) = m.mac {
                    by_mac.insert(mac, i);
                }
                if let Some(uuid) = m.uuid {
                    by_uuid.insert(uuid, i);
                }
                ScriptMachine {
                    uuid: m.uuid,
                    profile: m.profile,
                    hostname: m.hostname.clone(),
                    allow: m.allow,
                    ssh_authorized_keys: m.ssh_authorized_keys.clone(),
                }
            })
            .collect();
        let reservations = config
            .dhcp
            .reservations
            .iter()
            .map(|r| (r.mac, (r.ip, r.hostname.clone())))
            .collect();
        Ok(Self {
            book: Arc::new(ScriptBook {
                server,
                tftp_server,
                grub: config
                    .profiles
                    .iter()
                    .map(|p| {
                        p.secure_boot?;
                        let efi = p.boot.variants.iter().find(|(a, _)| *a == Arch::X86_64Efi);
                        Some(efi.map_or(&p.boot.default, |(_, f)| f).clone())
                    })
                    .collect(),
                profiles,
                profile_names: config.profiles.iter().map(|p| p.name.clone()).collect(),
                default_profile: config.boot.default_profile,
                machines,
                by_mac,
                by_uuid,
                reservations,
                counters: ScriptCounters::default(),
            }),
        })
    }

    /// Parses a script request: `boot.ipxe` or `uuid/<uuid>/boot.ipxe`, with the query string
    /// (percent-encoded, without `?`). `None`: the path is not a script (the catalog's business).
    pub fn parse_request(
        path: &BootPath,
        query: Option<&str>,
    ) -> Option<Result<ScriptRequest, ScriptRefusal>> {
        let uuid = match path.as_str() {
            SCRIPT_PATH => None,
            other => {
                let text = other
                    .strip_prefix("uuid/")?
                    .strip_suffix(&format!("/{SCRIPT_PATH}"))?;
                match parse_uuid(text) {
                    Ok(u) => Some(u),
                    Err(_) => return Some(Err(ScriptRefusal::BadQuery)),
                }
            }
        };
        Some(parse_query(query.unwrap_or("")).map(|req| ScriptRequest { uuid, ..req }))
    }

    /// The script for a request: the machine's, or the architecture probe when `arch` is not
    /// known yet. Counts the outcome.
    pub fn render(&self, req: &ScriptRequest) -> Result<String, ScriptRefusal> {
        let result = self.render_uncounted(req);
        let c = &self.book.counters;
        match &result {
            Ok(_) if req.arch.is_none() => c.probes.fetch_add(1, Ordering::Relaxed),
            Ok(_) => c.scripts.fetch_add(1, Ordering::Relaxed),
            Err(e) => c.refused[e.index()].fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn render_uncounted(&self, req: &ScriptRequest) -> Result<String, ScriptRefusal> {
        let book = &*self.book;
        let machine = book
            .by_mac
            .get(&req.mac)
            .or_else(|| req.uuid.and_then(|u| book.by_uuid.get(&u)))
            .map(|i| &book.machines[*i]);
        let profile_index = match machine {
            Some(m) if !m.allow => return Err(ScriptRefusal::Denied),
            Some(m) => m.profile.or(book.default_profile),
            None => book.default_profile,
        };
        let profile = profile_index
            .and_then(|i| book.profiles.get(i))
            .ok_or(ScriptRefusal::UnknownMachine)?;
        let Some(arch) = req.arch else {
            return Ok(self.probe(req));
        };
        let reservation = book.reservations.get(&req.mac);
        let facts = MachineFacts {
            mac: req.mac,
            uuid: machine.and_then(|m| m.uuid).or(req.uuid),
            arch,
            ip: req.ip.or(reservation.map(|r| r.0)),
            hostname: machine
                .and_then(|m| m.hostname.clone())
                .or_else(|| reservation.and_then(|r| r.1.clone())),
        };
        profile
            .render(&facts, &book.server)
            .map_err(|error| ScriptRefusal::RenderFailed {
                machine: MacAddr(req.mac).to_string(),
                profile: profile_index
                    .and_then(|i| book.profile_names.get(i))
                    .cloned()
                    .unwrap_or_default(),
                error,
            })
    }

    /// Chains back to the same script with iPXE's own view of the architecture and address.
    fn probe(&self, req: &ScriptRequest) -> String {
        let path = match req.uuid {
            Some(u) => format!("uuid/{}/{SCRIPT_PATH}", ipxe::format_uuid(&u)),
            None => SCRIPT_PATH.to_owned(),
        };
        let url = BootPath::parse(path.as_bytes())
            .map(|p| self.book.server.url(&p))
            .unwrap_or_default();
        let mac = MacAddr(req.mac).dashed();
        format!(
            "#!ipxe\n# stampede: {} architecture probe\n\
             chain {url}?mac={mac}&platform=${{platform}}&buildarch=${{buildarch}}&ip=${{ip}}\n",
            MacAddr(req.mac)
        )
    }

    /// A diskless node's per-machine files (Warewulf's "overlays"): its host name from the
    /// machine record or reservation, and a machine-id stable for its MAC. Unknown machines get
    /// only the machine-id; denied ones nothing.
    fn node_config(&self, query: &str) -> Result<BootFile, OpenError> {
        use fmt::Write as _;

        use sha2::Digest as _;
        let req = parse_query(query).map_err(|_| OpenError::NotFound)?;
        let book = &*self.book;
        let machine = book.by_mac.get(&req.mac).map(|i| &book.machines[*i]);
        if machine.is_some_and(|m| !m.allow) {
            return Err(OpenError::NotFound);
        }
        let hostname = machine
            .and_then(|m| m.hostname.clone())
            .or_else(|| book.reservations.get(&req.mac).and_then(|r| r.1.clone()));
        // systemd's machine-id(5): 32 lowercase hex digits, not all zero; derived from the MAC
        // so a diskless machine keeps its identity across boots without storing anything.
        let digest = sha2::Sha256::digest([b"stampede machine-id ".as_slice(), &req.mac].concat());
        let mut machine_id = String::with_capacity(32);
        for b in &digest[..16] {
            let _ = write!(machine_id, "{b:02x}");
        }
        let mut json = format!("{{\"machine_id\": \"{machine_id}\"");
        if let Some(h) = hostname {
            // Host names were checked at validation (RFC 1123 characters only).
            let _ = write!(json, ", \"hostname\": \"{h}\"");
        }
        let keys = machine.map_or(&[][..], |m| &m.ssh_authorized_keys[..]);
        if !keys.is_empty() {
            json.push_str(", \"ssh_authorized_keys\": [");
            for (i, key) in keys.iter().enumerate() {
                // Printable ASCII on one line (checked at validation): only `"` and `\` need
                // escaping in a JSON string.
                let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = write!(json, "{}\"{escaped}\"", if i == 0 { "" } else { ", " });
            }
            json.push(']');
        }
        json.push_str("}\n");
        Ok(BootFile::new(json))
    }

    /// A GRUB configuration under [`GRUB_DIR`]. `grub.cfg-01-<mac>` (dashes or colons) is the
    /// machine's own for a Secure Boot profile (its profile, else the default profile).
    /// `grub.cfg`, the one file Debian's signed netboot image reads (its prefix is `/grub`
    /// without a device, so GRUB's search by MAC and address is off), loads the machine's own
    /// by GRUB's `$net_default_mac`. `None`: not one of these, or no Secure Boot profile (the
    /// boot root may have the file). A denied machine gets a configuration that says so and
    /// boots nothing.
    pub fn grub_config(&self, path: &BootPath) -> Option<Result<BootFile, OpenError>> {
        let rest = path
            .as_str()
            .strip_prefix(GRUB_DIR)?
            .strip_prefix(GRUB_CFG)?;
        let book = &*self.book;
        if rest.is_empty() {
            book.grub.iter().any(Option::is_some).then_some(())?;
            return Some(Ok(BootFile::new(format!(
                "# stampede: each machine's own configuration, by MAC\n\
                 configfile \"/{GRUB_DIR}{GRUB_CFG}-01-$net_default_mac\"\n\
                 echo \"stampede: nothing booted for $net_default_mac: rebooting in 10 s\"\n\
                 sleep 10\nreboot\n"
            ))));
        }
        let mac = MacAddr::from_bootif(rest.strip_prefix('-')?)?.octets();
        let machine = book.by_mac.get(&mac).map(|i| &book.machines[*i]);
        let profile_index = match machine {
            Some(m) if !m.allow => {
                return Some(Ok(BootFile::new(format!(
                    "# stampede: {}\necho 'stampede: this machine is not allowed to boot'\n\
                     sleep 10\nhalt\n",
                    MacAddr(mac)
                ))));
            }
            Some(m) => m.profile.or(book.default_profile),
            None => book.default_profile,
        }?;
        let files = book.grub.get(profile_index)?.as_ref()?;
        let reservation = book.reservations.get(&mac);
        let facts = MachineFacts {
            mac,
            uuid: machine.and_then(|m| m.uuid),
            arch: Arch::X86_64Efi,
            ip: reservation.map(|r| r.0),
            hostname: machine
                .and_then(|m| m.hostname.clone())
                .or_else(|| reservation.and_then(|r| r.1.clone())),
        };
        let name = book
            .profile_names
            .get(profile_index)
            .map_or("", String::as_str);
        Some(
            grub_render(files, &facts, book.tftp_server, &MacAddr(mac).to_string())
                .map(BootFile::new)
                .map_err(|error| {
                    let e = format!("machine {} (profile {name:?}): {error}", MacAddr(mac));
                    tracing::warn!(error = %e, "no GRUB configuration");
                    OpenError::Unreadable(e)
                }),
        )
    }

    pub fn counts(&self) -> ScriptCounts {
        let c = &self.book.counters;
        ScriptCounts {
            scripts: c.scripts.load(Ordering::Relaxed),
            probes: c.probes.load(Ordering::Relaxed),
            refused: std::array::from_fn(|i| c.refused[i].load(Ordering::Relaxed)),
        }
    }
}

/// GRUB's single quotes: everything inside is literal, and a `'` is written `'\''`. Control
/// characters (a newline would end the command) have no quoting: `None`.
fn grub_quote(text: &str) -> Option<String> {
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(format!("'{}'", text.replace('\'', "'\\''")))
}

/// The GRUB configuration that boots `files` (boot root paths, fetched by TFTP from
/// `tftp_server`) with the command line rendered for `facts`.
fn grub_render(
    files: &ipxe::BootFiles,
    facts: &MachineFacts,
    tftp_server: Ipv4Addr,
    title: &str,
) -> Result<String, String> {
    use fmt::Write as _;
    // The command line was checked at validation; the quoting refuses what it cannot carry.
    let unquotable = || "a control character cannot be quoted for GRUB".to_owned();
    let cmdline = ipxe::Template::parse(&files.cmdline)
        .map_err(|e| e.to_string())?
        .render(facts)
        .map_err(|e| e.to_string())?;
    let at =
        |path: &str| grub_quote(&format!("(tftp,{tftp_server})/{path}")).ok_or_else(unquotable);
    let mut cfg = format!("# stampede: {title} x86_64-efi\nset timeout=0\n");
    let mut linux = format!("linux {}", at(&files.kernel)?);
    // One GRUB word per kernel argument: GRUB joins its words with spaces and puts a word
    // with a space in double quotes.
    for word in cmdline.split_ascii_whitespace() {
        linux.push(' ');
        linux.push_str(&grub_quote(word).ok_or_else(unquotable)?);
    }
    let _ = writeln!(cfg, "{linux}");
    if !files.initrds.is_empty() {
        let mut initrd = String::from("initrd");
        for i in &files.initrds {
            initrd.push(' ');
            initrd.push_str(&at(i)?);
        }
        let _ = writeln!(cfg, "{initrd}");
    }
    cfg.push_str("boot\n");
    Ok(cfg)
}

/// `mac=aa-bb-..` (required), then `arch=x86_64-efi` or iPXE's `platform=efi&buildarch=x86_64`,
/// and `ip=` (empty: iPXE had no address setting). Other keys are ignored.
fn parse_query(query: &str) -> Result<ScriptRequest, ScriptRefusal> {
    let (mut mac, mut arch, mut platform, mut buildarch, mut ip) = (None, None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = http::percent_decode(raw.as_bytes())
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or(ScriptRefusal::BadQuery)?;
        match key {
            "mac" => {
                mac = Some(
                    value
                        .parse::<MacAddr>()
                        .map_err(|_| ScriptRefusal::BadQuery)?
                        .0,
                )
            }
            "arch" => arch = Some(parse_arch(&value).ok_or(ScriptRefusal::UnsupportedArch)?),
            "platform" => platform = Some(value),
            "buildarch" => buildarch = Some(value),
            "ip" if value.is_empty() => {}
            "ip" => ip = Some(value.parse().map_err(|_| ScriptRefusal::BadQuery)?),
            _ => {}
        }
    }
    let mac = mac.ok_or(ScriptRefusal::BadQuery)?;
    if arch.is_none()
        && let Some(platform) = platform
    {
        // iPXE's ${platform} is pcbios or efi; ${buildarch} i386, x86_64, arm64, ..
        arch = Some(match (platform.as_str(), buildarch.as_deref()) {
            ("pcbios", _) => Arch::X86Bios,
            ("efi", Some("x86_64")) => Arch::X86_64Efi,
            ("efi", Some("arm64")) => Arch::Arm64Efi,
            _ => return Err(ScriptRefusal::UnsupportedArch),
        });
    }
    Ok(ScriptRequest {
        mac,
        uuid: None,
        arch,
        ip,
    })
}

impl Route for ScriptRoute {
    fn route(&self, path: &BootPath, query: Option<&str>) -> Option<Result<BootFile, OpenError>> {
        match path.as_str() {
            NODE_EVENT_PATH => return Some(Ok(BootFile::new("ok\n"))),
            NODE_CONFIG_PATH => return Some(self.node_config(query.unwrap_or(""))),
            _ => {}
        }
        let req = Self::parse_request(path, query)?;
        let rendered = match req {
            Ok(req) => self.render(&req),
            Err(e) => {
                self.book.counters.refused[e.index()].fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        };
        Some(match rendered {
            Ok(script) => Ok(BootFile::new(script)),
            Err(e @ ScriptRefusal::RenderFailed { .. }) => {
                tracing::warn!(error = %e, "no boot script: the machine lacks a fact its profile's command line needs");
                Err(OpenError::Unreadable(e.to_string()))
            }
            Err(_) => Err(OpenError::NotFound),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, SocketAddrV4};

    use stampede_proto::dhcp::{
        ClientArch, ClientUuid, DropReason, Handled, MemoryLeaseStore, MessageType, Repr,
        SERVER_PORT,
    };
    use stampede_proto::files::MemoryCatalog;
    use stampede_proto::http::Status;
    use stampede_proto::tftp::Request;

    use super::*;
    use crate::config::QuickBoot;

    const EXAMPLE: &str = include_str!("../../docs/stampede.example.toml");
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    /// `machines[0]` of the example: profile "rescue", hostname node-010, reserved 198.18.0.10.
    const KNOWN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const DENIED_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x66, 0x66, 0x66];
    const UEFI_DISCOVER: &[u8] = include_bytes!("../proto/fixtures/dhcp/udhcpc_uefi_discover.bin");
    const IPXE_DISCOVER: &[u8] = include_bytes!("../proto/fixtures/dhcp/qemu_ipxe_discover.bin");

    fn catalog(files: &[(&str, &str)]) -> SharedCatalog {
        let mut c = MemoryCatalog::new();
        for (name, data) in files {
            c.insert(name, BootFile::new(data.as_bytes().to_vec()));
        }
        Arc::new(c)
    }

    fn ipxe_dir() -> SharedCatalog {
        catalog(&[("undionly.kpxe", "UNDI"), ("snponly.efi", "SNP")])
    }

    fn plan_for(config: &ApplianceConfig, root: SharedCatalog) -> BootPlan {
        BootPlan::new(config, SERVER, root, ipxe_dir()).unwrap_or_else(|e| panic!("plan: {e}"))
    }

    fn example_plan_from(text: &str) -> BootPlan {
        let config = crate::config::tests::example_without_roots(text);
        plan_for(
            &config,
            catalog(&[
                ("rescue/vmlinuz", "RESCUE KERNEL"),
                ("rescue/initrd.img", "RESCUE INITRD"),
                ("ubuntu/24.04/vmlinuz", "UBUNTU KERNEL"),
            ]),
        )
    }

    fn example_plan() -> BootPlan {
        example_plan_from(EXAMPLE)
    }

    fn quick_plan() -> BootPlan {
        let config = ApplianceConfig::quick(QuickBoot {
            kernel: "/build/out/vmlinuz".into(),
            initrds: vec!["/build/out/initrd.img".into()],
            cmdline: "console=ttyS0 node={mac}".into(),
            ..QuickBoot::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        plan_for(
            &config,
            catalog(&[("vmlinuz", "QUICK KERNEL"), ("initrd.img", "QUICK INITRD")]),
        )
    }

    /// A DHCP message from a fixture, edited, emitted again.
    fn edited(fixture: &[u8], edit: impl FnOnce(&mut Repr)) -> Vec<u8> {
        let mut repr = Repr::parse_bytes(fixture).expect("fixture parses");
        edit(&mut repr);
        let mut buf = vec![0u8; repr.buffer_len()];
        let len = repr.emit_bytes(&mut buf).expect("emit");
        buf.truncate(len);
        buf
    }

    fn bios_pxe_discover() -> Vec<u8> {
        edited(UEFI_DISCOVER, |r| {
            r.options.vendor_class = Some(b"PXEClient:Arch:00000:UNDI:002001".to_vec());
            r.options.client_arch = vec![ClientArch::X86Bios];
        })
    }

    /// Whether the plan's DHCP server answers `datagram`'s machine at all.
    fn admit(plan: &BootPlan, datagram: &[u8]) -> Result<(), DhcpRefusal> {
        let mut server = plan
            .dhcp_server()
            .expect("valid DHCP config")
            .expect("DHCP on");
        match server.handle_datagram(
            Instant::now(),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
            datagram,
            &mut MemoryLeaseStore::new(),
        ) {
            Err(DropReason::Refused(refusal)) => Err(refusal),
            _ => Ok(()),
        }
    }

    /// Runs one datagram through the plan's DHCP server; the reply, if any.
    fn dhcp_exchange(plan: &BootPlan, datagram: &[u8]) -> Result<Repr, String> {
        admit(plan, datagram).map_err(|r| format!("refused: {}", r.as_str()))?;
        let mut server = plan
            .dhcp_server()
            .expect("valid DHCP config")
            .expect("DHCP on");
        let mut store = MemoryLeaseStore::new();
        let now = Instant::now();
        let handled = server.handle_datagram(
            now,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
            datagram,
            &mut store,
        );
        assert_eq!(
            handled,
            Ok(Handled::Replied(MessageType::Offer)),
            "server outcome"
        );
        let mut buf = [0u8; 1500];
        let t = server.poll_transmit(now, &mut buf).expect("an OFFER");
        Ok(Repr::parse_bytes(&buf[..t.len]).expect("reply parses"))
    }

    fn bootfile(reply: &Repr) -> String {
        String::from_utf8(reply.options.bootfile.clone().expect("option 67")).expect("utf-8")
    }

    struct Reply {
        status: Status,
        head: String,
        body: Vec<u8>,
    }

    fn http_get(plan: &BootPlan, target: &str) -> Reply {
        let now = Instant::now();
        let mut conn = plan.http_connection(now);
        let request = format!("GET {target} HTTP/1.1\r\nHost: 198.18.0.1\r\n\r\n");
        assert_eq!(conn.handle_input(now, request.as_bytes()), request.len());
        let mut buf = Vec::new();
        let t = conn.poll_output(now, &mut buf).expect("a response");
        Reply {
            status: t.status,
            head: String::from_utf8_lossy(&buf[..t.head_len]).into_owned(),
            body: t.body.bytes().to_vec(),
        }
    }

    fn text(reply: &Reply) -> String {
        String::from_utf8(reply.body.clone()).expect("utf-8 body")
    }

    fn rrq(name: &str) -> Vec<u8> {
        let mut d = vec![0, 1];
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(b"\0octet\0blksize\x001468\0");
        d
    }

    #[test]
    fn pxe_roms_get_the_loader_for_their_firmware() {
        let plan = example_plan();
        assert!(
            matches!(
                plan.dhcp_config().map(|c| &c.mode),
                Some(dhcp::ServerMode::Authoritative { .. })
            ),
            "the example is authoritative"
        );
        let offer = dhcp_exchange(&plan, &bios_pxe_discover()).expect("offer");
        assert_eq!(bootfile(&offer), "undionly.kpxe");
        assert_eq!(offer.siaddr, SERVER, "next-server is us");
        assert!(!offer.yiaddr.is_unspecified(), "authoritative: an address");

        let offer = dhcp_exchange(&plan, UEFI_DISCOVER).expect("offer");
        assert_eq!(bootfile(&offer), "snponly.efi");

        let plan = quick_plan();
        assert!(matches!(
            plan.dhcp_config().map(|c| &c.mode),
            Some(dhcp::ServerMode::Proxy)
        ));
        let offer = dhcp_exchange(&plan, &bios_pxe_discover()).expect("proxy offer");
        assert_eq!(bootfile(&offer), "undionly.kpxe");
        assert!(offer.yiaddr.is_unspecified(), "proxy: no address");
    }

    const SECURE: &str = r#"
[boot]
files = { "vmlinuz" = "/srv/vmlinuz", "initrd.img" = "/srv/initrd.img" }
default_profile = "signed"
shim = "/srv/shimx64.efi.signed"

[[profiles]]
name = "signed"
kernel = "vmlinuz"
initrds = ["initrd.img"]
cmdline = "console=ttyS0 node={mac} quiet"
secure_boot = "shim"

[[profiles]]
name = "plain"
kernel = "vmlinuz"

[[machines]]
mac = "52:54:00:00:00:02"
profile = "plain"

[[machines]]
mac = "52:54:00:00:00:03"
allow = false
"#;

    fn secure_plan(root: &[(&str, &str)]) -> BootPlan {
        let config = crate::config::tests::example_without_roots(SECURE);
        assert_eq!(
            config
                .boot
                .files
                .get(&BootPath::parse(b"shimx64.efi").expect("path")),
            Some(&std::path::PathBuf::from("/srv/shimx64.efi.signed"))
        );
        assert_eq!(
            config
                .boot
                .files
                .get(&BootPath::parse(b"grubx64.efi").expect("path")),
            Some(&std::path::PathBuf::from(crate::config::defaults::GRUB)),
            "boot.grub defaults to Debian's signed netboot image"
        );
        plan_for(&config, catalog(root))
    }

    fn open_text(catalog: &BootCatalog, path: &str) -> Result<String, OpenError> {
        let file = catalog.open(&BootPath::parse(path.as_bytes()).expect("path"))?;
        Ok(String::from_utf8(file.data.to_vec()).expect("utf-8"))
    }

    #[test]
    fn secure_boot_profiles_hand_uefi_x64_pxe_the_signed_shim() {
        let plan = secure_plan(&[]);
        let with_mac = |fixture: &[u8], mac: [u8; 6]| {
            edited(fixture, |r| {
                r.chaddr = [0; 16];
                r.chaddr[..6].copy_from_slice(&mac);
            })
        };
        let unknown = [0x52, 0x54, 0, 0, 0, 1];
        let offer = dhcp_exchange(&plan, &with_mac(UEFI_DISCOVER, unknown)).expect("offer");
        assert_eq!(bootfile(&offer), "shimx64.efi");
        assert_eq!(offer.siaddr, SERVER, "shim comes by TFTP from us");
        // arch 9 ("EFI BC", what much x64 firmware sends) is x64 UEFI too.
        let bc = edited(&with_mac(UEFI_DISCOVER, unknown), |r| {
            r.options.client_arch = vec![ClientArch::EfiBc];
        });
        assert_eq!(
            bootfile(&dhcp_exchange(&plan, &bc).expect("offer")),
            "shimx64.efi"
        );
        // BIOS machines of the same profile, and UEFI machines of another, get iPXE.
        let bios = with_mac(&bios_pxe_discover(), unknown);
        assert_eq!(
            bootfile(&dhcp_exchange(&plan, &bios).expect("offer")),
            "undionly.kpxe"
        );
        let plain = with_mac(UEFI_DISCOVER, [0x52, 0x54, 0, 0, 0, 2]);
        assert_eq!(
            bootfile(&dhcp_exchange(&plan, &plain).expect("offer")),
            "snponly.efi"
        );
        // Without secure_boot, nothing changes.
        let offer = dhcp_exchange(&quick_plan(), UEFI_DISCOVER).expect("offer");
        assert_eq!(bootfile(&offer), "snponly.efi");

        // The chain's files are promised by the profile: missing, they are named at start.
        let missing: Vec<_> = plan
            .missing_files()
            .into_iter()
            .filter(|m| m.path.as_str().ends_with(".efi"))
            .map(|m| (m.profile, m.path.to_string()))
            .collect();
        assert_eq!(
            missing,
            [
                (Some("signed".to_owned()), "grubx64.efi".to_owned()),
                (Some("signed".to_owned()), "shimx64.efi".to_owned()),
            ]
        );
        let plan = secure_plan(&[("shimx64.efi", "SHIM"), ("grubx64.efi", "GRUB")]);
        assert_eq!(
            open_text(plan.tftp_catalog(), "shimx64.efi"),
            Ok("SHIM".into())
        );
        assert_eq!(
            open_text(plan.tftp_catalog(), "grubx64.efi"),
            Ok("GRUB".into())
        );
    }

    #[test]
    fn grub_configs_are_generated_per_machine_over_tftp_and_http() {
        let plan = secure_plan(&[]);
        let expected = r#"# stampede: 52:54:00:00:00:01 x86_64-efi
set timeout=0
linux '(tftp,198.18.0.1)/vmlinuz' 'console=ttyS0' 'node=52:54:00:00:00:01' 'quiet'
initrd '(tftp,198.18.0.1)/initrd.img'
boot
"#;
        let per_mac = "grub/grub.cfg-01-52-54-00-00-00-01";
        assert_eq!(
            open_text(plan.tftp_catalog(), per_mac).as_deref(),
            Ok(expected)
        );
        let reply = http_get(&plan, &format!("/{per_mac}"));
        assert_eq!(reply.status, Status::OK);
        assert_eq!(text(&reply), expected);
        // GRUB's netboot image reads only grub/grub.cfg, which loads the machine's own by MAC,
        // as GRUB spells it.
        let dispatch = open_text(plan.tftp_catalog(), "grub/grub.cfg").expect("grub.cfg");
        assert!(
            dispatch.contains("configfile \"/grub/grub.cfg-01-$net_default_mac\"\n"),
            "{dispatch}"
        );
        assert_eq!(
            open_text(plan.tftp_catalog(), "grub/grub.cfg-01-52:54:00:00:00:01").as_deref(),
            Ok(expected)
        );
        // The address in hex is not served; a machine of a profile without Secure Boot has no
        // GRUB configuration; a denied machine gets one that boots nothing.
        for path in ["grub/grub.cfg-C612", "grub/grub.cfg-01-52-54-00-00-00-02"] {
            assert_eq!(
                open_text(plan.tftp_catalog(), path),
                Err(OpenError::NotFound),
                "{path}"
            );
        }
        let denied = open_text(plan.tftp_catalog(), "grub/grub.cfg-01-52-54-00-00-00-03")
            .expect("a configuration");
        assert!(
            denied.contains("not allowed") && !denied.contains("linux"),
            "{denied}"
        );

        // Quick mode: every machine boots the quick profile; without Secure Boot no GRUB.
        let quick = |secure_boot| {
            let config = ApplianceConfig::quick(QuickBoot {
                kernel: "/b/vmlinuz".into(),
                initrds: vec!["/b/initrd.img".into()],
                cmdline: "console=ttyS0".into(),
                secure_boot,
                ..QuickBoot::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
            plan_for(&config, catalog(&[]))
        };
        let plan = quick(Some(crate::config::SecureBoot::Shim));
        let expected = "# stampede: 52:54:00:ab:cd:ef x86_64-efi\nset timeout=0\n\
            linux '(tftp,198.18.0.1)/vmlinuz' 'console=ttyS0'\n\
            initrd '(tftp,198.18.0.1)/initrd.img'\nboot\n";
        let per_mac = "/grub/grub.cfg-01-52:54:00:ab:cd:ef";
        assert_eq!(
            open_text(plan.tftp_catalog(), &per_mac[1..]).as_deref(),
            Ok(expected)
        );
        assert_eq!(text(&http_get(&plan, per_mac)), expected);
        assert!(text(&http_get(&plan, "/grub/grub.cfg")).contains("configfile"));
        // Absolute, as GRUB asks: relative to the TFTP root.
        let server = plan.tftp_server();
        let from: SocketAddr = "198.18.0.100:2070".parse().expect("addr");
        let mut buf = [0u8; 128];
        let got = server.handle_request(Instant::now(), from, &rrq(per_mac), &mut buf);
        assert!(matches!(got, Request::Accepted(_)), "{got:?}");
        assert_eq!(
            open_text(quick(None).tftp_catalog(), "grub/grub.cfg"),
            Err(OpenError::NotFound)
        );
        assert_eq!(
            bootfile(&dhcp_exchange(&plan, UEFI_DISCOVER).expect("offer")),
            "shimx64.efi"
        );
    }

    #[test]
    fn grub_quoting() {
        assert_eq!(grub_quote("a b").as_deref(), Some("'a b'"));
        assert_eq!(grub_quote("$x;y").as_deref(), Some("'$x;y'"));
        assert_eq!(grub_quote("it's").as_deref(), Some(r"'it'\''s'"));
        assert_eq!(grub_quote("a\nboot"), None);
    }

    #[test]
    fn ipxe_gets_the_script_url_the_route_answers() {
        let plan = example_plan();
        let offer = dhcp_exchange(&plan, IPXE_DISCOVER).expect("offer");
        let url = bootfile(&offer);
        assert_eq!(
            url,
            "http://198.18.0.1:8080/boot.ipxe?mac=52-54-00-ab-cd-ef"
        );
        let target = url.strip_prefix(plan.http_base()).expect("our base");

        // First request: the architecture probe, chaining back to the same script.
        let probe = http_get(&plan, target);
        assert_eq!(probe.status, Status::OK, "{}", probe.head);
        let probe = text(&probe);
        assert!(
            probe.contains(&format!(
                "chain {url}&platform=${{platform}}&buildarch=${{buildarch}}&ip=${{ip}}\n"
            )),
            "{probe}"
        );
        // Second: what iPXE asks after expanding the settings. Unknown MAC → default profile.
        let reply = http_get(
            &plan,
            &format!("{target}&platform=efi&buildarch=x86_64&ip="),
        );
        assert_eq!(reply.status, Status::OK, "{}", reply.head);
        assert_eq!(
            text(&reply),
            "#!ipxe\n# stampede: 52:54:00:ab:cd:ef x86_64-efi\n:stampede_fetch\n\
             kernel http://198.18.0.1:8080/files/ubuntu/24.04/vmlinuz initrd=initrd \
             console=ttyS0,115200 ip=dhcp stampede.mac=52:54:00:ab:cd:ef arch=x86_64-efi || goto stampede_retry\n\
             initrd --name initrd http://198.18.0.1:8080/files/ubuntu/24.04/initrd || goto stampede_retry\n\
             boot || goto stampede_retry\n:stampede_retry\n\
             echo stampede: download or boot failed, trying again in 5 s\n\
             imgfree\nsleep 5\ngoto stampede_fetch\n"
        );
        let counts = plan.scripts().counts();
        assert_eq!((counts.probes, counts.scripts), (1, 1));
    }

    #[test]
    fn known_machine_script_has_its_profile_and_facts() {
        let plan = example_plan();
        let reply = http_get(
            &plan,
            "/boot.ipxe?mac=52-54-00-12-34-56&platform=pcbios&buildarch=i386&ip=",
        );
        assert_eq!(reply.status, Status::OK, "{}", reply.head);
        assert!(reply.head.contains("text/plain"), "{}", reply.head);
        let script = text(&reply);
        assert_eq!(
            script,
            "#!ipxe\n# stampede: 52:54:00:12:34:56 x86-bios\n:stampede_fetch\n\
             kernel http://198.18.0.1:8080/files/rescue/vmlinuz initrd=initrd.img \
             initrd=firmware.cpio console=ttyS0 rescue hostname=node-010 ip=198.18.0.10 || goto stampede_retry\n\
             initrd --name initrd.img http://198.18.0.1:8080/files/rescue/initrd.img || goto stampede_retry\n\
             initrd --name firmware.cpio http://198.18.0.1:8080/files/rescue/firmware.cpio || goto stampede_retry\n\
             boot || goto stampede_retry\n:stampede_retry\n\
             echo stampede: download or boot failed, trying again in 5 s\n\
             imgfree\nsleep 5\ngoto stampede_fetch\n"
        );
        // The address iPXE reports wins over the reservation.
        let req = ScriptRequest {
            mac: KNOWN_MAC,
            uuid: None,
            arch: Some(Arch::X86Bios),
            ip: Some(Ipv4Addr::new(198, 18, 0, 77)),
        };
        let script = plan.scripts().render(&req).expect("script");
        assert!(
            script.contains(" ip=198.18.0.77 || goto stampede_retry\n"),
            "{script}"
        );
        // The arm64 variant of the default profile.
        let script = plan
            .scripts()
            .render(&ScriptRequest {
                mac: [2; 6],
                arch: Some(Arch::Arm64Efi),
                ..req
            })
            .expect("script");
        assert!(
            script.contains("files/ubuntu/24.04/arm64/vmlinuz initrd=initrd console=ttyAMA0"),
            "{script}"
        );
    }

    #[test]
    fn diskless_nodes_get_their_files_and_their_reports_are_read_escaped() {
        let plan = example_plan();
        let reply = http_get(&plan, "/stampede/node/config?mac=52-54-00-12-34-56");
        assert_eq!(reply.status, Status::OK, "{}", reply.head);
        let json = text(&reply);
        assert!(json.contains("\"hostname\": \"node-010\""), "{json}");
        assert!(
            json.contains(
                "\"ssh_authorized_keys\": [\"ssh-ed25519 \
                 AAAAC3NzaC1lZDI1NTE5AAAAIHN0YW1wZWRlLWV4YW1wbGUta2V5 ops@example\"]"
            ),
            "{json}"
        );
        let id = json
            .split("\"machine_id\": \"")
            .nth(1)
            .and_then(|r| r.get(..32))
            .unwrap_or_else(|| panic!("machine_id in {json}"));
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{json}");
        // Stable per MAC, different between MACs.
        assert_eq!(
            text(&http_get(
                &plan,
                "/stampede/node/config?mac=52-54-00-12-34-56"
            )),
            json
        );
        let other = text(&http_get(
            &plan,
            "/stampede/node/config?mac=52-54-00-00-00-99",
        ));
        assert!(
            !other.contains(id) && !other.contains("hostname"),
            "{other}"
        );
        // The denied machine gets nothing.
        let denied = http_get(&plan, "/stampede/node/config?mac=52-54-00-66-66-66");
        assert_eq!(denied.status, Status::NOT_FOUND);
        assert_eq!(
            http_get(
                &plan,
                "/stampede/node/event?mac=52-54-00-12-34-56&event=root_chunks"
            )
            .status,
            Status::OK
        );

        let (step, detail) = node_report(
            "/stampede/node/event?mac=52:54:00:12:34:56&event=root_chunks&bytes=1048576&ms=812",
        )
        .expect("a report");
        assert_eq!(step, stampede_proto::events::NodeStep::RootChunks);
        assert_eq!(detail, "bytes=1048576 ms=812");
        let (step, detail) =
            node_report("/stampede/node/event?event=root_failed&reason=bad%0Aline%1b%5B31m%5C")
                .expect("a report");
        assert_eq!(step, stampede_proto::events::NodeStep::RootFailed);
        assert_eq!(detail, "reason=bad\\x0aline\\x1b[31m\\x5c");
        let long = format!(
            "/stampede/node/event?event=root_failed&reason={}",
            "x".repeat(500)
        );
        let (_, detail) = node_report(&long).expect("a report");
        assert_eq!(detail.len(), NODE_DETAIL_MAX + 3, "bounded: {detail}");
        assert_eq!(node_report("/stampede/node/event?event=format_disk"), None);
        assert_eq!(node_report("/boot.ipxe?event=root_failed"), None);
    }

    #[test]
    fn per_mac_profile_change_changes_the_script() {
        let req = ScriptRequest {
            mac: KNOWN_MAC,
            uuid: None,
            arch: Some(Arch::X86_64Efi),
            ip: None,
        };
        let before = example_plan().scripts().render(&req).expect("script");
        let edited = EXAMPLE.replacen("profile = \"rescue\"", "profile = \"ubuntu\"", 1);
        assert_ne!(edited, EXAMPLE, "the example assigns rescue to a MAC");
        let after = example_plan_from(&edited)
            .scripts()
            .render(&req)
            .expect("script");
        assert!(before.contains("/files/rescue/vmlinuz"), "{before}");
        assert!(after.contains("/files/ubuntu/24.04/vmlinuz"), "{after}");
    }

    #[test]
    fn boot_files_and_loaders_are_served_over_http() {
        let plan = example_plan();
        let kernel = http_get(&plan, "/files/rescue/vmlinuz");
        assert_eq!(kernel.status, Status::OK, "{}", kernel.head);
        assert_eq!(kernel.body, b"RESCUE KERNEL");
        let loader = http_get(&plan, "/snponly.efi");
        assert_eq!(loader.body, b"SNP", "UEFI HTTP Boot fetches the loader");
        for missing in [
            "/rescue/vmlinuz",
            "/files/undionly.kpxe",
            "/files/nope",
            "/boot.ipxe",
        ] {
            assert_eq!(
                http_get(&plan, missing).status,
                Status::NOT_FOUND,
                "{missing}"
            );
        }
        let plan = quick_plan();
        assert_eq!(http_get(&plan, "/files/vmlinuz").body, b"QUICK KERNEL");
        assert_eq!(http_get(&plan, "/files/initrd.img").body, b"QUICK INITRD");
        let script = plan
            .scripts()
            .render(&ScriptRequest {
                mac: KNOWN_MAC,
                uuid: None,
                arch: Some(Arch::X86Bios),
                ip: None,
            })
            .expect("quick script");
        assert!(
            script.contains(
                "kernel http://198.18.0.1:8080/files/vmlinuz initrd=initrd.img \
                 console=ttyS0 node=52:54:00:12:34:56 || goto stampede_retry\n"
            ),
            "{script}"
        );
    }

    #[test]
    fn tftp_serves_loaders_from_the_ipxe_dir_and_the_root() {
        let plan = example_plan();
        let server = plan.tftp_server();
        assert_eq!(server.config().max_blksize, 1468);
        let from: SocketAddr = "198.18.0.100:2070".parse().expect("addr");
        let mut buf = [0u8; 128];
        for name in ["undionly.kpxe", "snponly.efi", "rescue/vmlinuz"] {
            let got = server.handle_request(Instant::now(), from, &rrq(name), &mut buf);
            assert!(matches!(got, Request::Accepted(_)), "{name}: {got:?}");
        }
        let got =
            server.handle_request(Instant::now(), from, &rrq("files/rescue/vmlinuz"), &mut buf);
        assert!(
            matches!(got, Request::Refused { .. }),
            "TFTP has no /files/ prefix: {got:?}"
        );
    }

    #[test]
    fn denied_and_unknown_machines_do_not_boot_and_are_counted() {
        let plan = example_plan();
        let denied = edited(IPXE_DISCOVER, |r| {
            r.chaddr[..6].copy_from_slice(&DENIED_MAC)
        });
        assert_eq!(admit(&plan, &denied), Err(DhcpRefusal::Denied));
        let reply = http_get(&plan, "/boot.ipxe?mac=52-54-00-66-66-66&arch=x86-bios");
        assert_eq!(reply.status, Status::NOT_FOUND);
        assert_eq!(plan.scripts().counts().refused(&ScriptRefusal::Denied), 1);
        assert_eq!(
            http_get(&plan, "/boot.ipxe?arch=x86-bios").status,
            Status::NOT_FOUND,
            "no mac"
        );
        assert_eq!(
            http_get(
                &plan,
                "/boot.ipxe?mac=52-54-00-12-34-56&platform=efi&buildarch=i386"
            )
            .status,
            Status::NOT_FOUND,
            "32-bit EFI"
        );
        let counts = plan.scripts().counts();
        assert_eq!(counts.refused(&ScriptRefusal::BadQuery), 1);
        assert_eq!(counts.refused(&ScriptRefusal::UnsupportedArch), 1);

        // No default profile, proxy mode: unknown machines are refused by the server.
        let config = ApplianceConfig::from_toml_str(
            "[boot]\nroot = \"/srv\"\n[[profiles]]\nname = \"p\"\nkernel = \"k\"\n\
             [[machines]]\nmac = \"52:54:00:12:34:56\"\nprofile = \"p\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_for(&config, catalog(&[("k", "K")]));
        assert_eq!(
            admit(&plan, IPXE_DISCOVER),
            Err(DhcpRefusal::UnknownMachine)
        );
        assert_eq!(
            admit(&plan, UEFI_DISCOVER),
            Ok(()),
            "known MAC 52:54:00:12:34:56"
        );
        let reply = http_get(&plan, "/boot.ipxe?mac=52-54-00-ab-cd-ef&arch=x86-bios");
        assert_eq!(reply.status, Status::NOT_FOUND);
        assert_eq!(
            plan.scripts()
                .counts()
                .refused(&ScriptRefusal::UnknownMachine),
            1
        );
    }

    #[test]
    fn machines_known_by_uuid_get_a_uuid_url() {
        let plan = example_plan();
        let uuid = parse_uuid("4c4c4544-004d-5910-8052-b2c04f353032").expect("uuid");
        let discover = edited(IPXE_DISCOVER, |r| {
            r.options.client_uuid = Some(ClientUuid { kind: 0, id: uuid });
        });
        let url = bootfile(&dhcp_exchange(&plan, &discover).expect("offer"));
        assert_eq!(
            url,
            "http://198.18.0.1:8080/uuid/4c4c4544-004d-5910-8052-b2c04f353032/boot.ipxe\
             ?mac=52-54-00-ab-cd-ef"
        );
        let target = url.strip_prefix(plan.http_base()).expect("our base");
        let probe = text(&http_get(&plan, target));
        assert!(probe.contains(&format!("chain {url}&platform=")), "{probe}");
        let script = text(&http_get(&plan, &format!("{target}&arch=x86_64-efi")));
        assert!(script.contains("files/ubuntu/24.04/vmlinuz"), "{script}");
        assert_eq!(
            http_get(&plan, "/uuid/zz/boot.ipxe?mac=52-54-00-ab-cd-ef").status,
            Status::NOT_FOUND
        );
    }

    #[test]
    fn missing_files_are_listed() {
        let missing: Vec<(Option<String>, String)> = example_plan()
            .missing_files()
            .into_iter()
            .map(|m| (m.profile, m.path.to_string()))
            .collect();
        let want = [
            (Some("rescue"), "rescue/firmware.cpio"),
            // The example's root profile, stood in for (the appliance resolves roots).
            (Some("compute"), "roots/preview-compute/vmlinuz"),
            (None, "snponly-arm64.efi"),
            (Some("ubuntu"), "ubuntu/24.04/arm64/initrd"),
            (Some("ubuntu"), "ubuntu/24.04/arm64/vmlinuz"),
            (Some("ubuntu"), "ubuntu/24.04/initrd"),
        ]
        .map(|(p, f)| (p.map(String::from), f.to_owned()));
        assert_eq!(missing, want);
        // Quick mode has no arm64 variant: no arm64 machine boots, and the arm64 loader the
        // Debian package lacks is not missing (issue 18: every start warned about it).
        let quick = quick_plan().missing_files();
        assert!(quick.is_empty(), "quick mode: {quick:?}");
    }

    #[test]
    fn dhcp_off_has_no_server() {
        let config = ApplianceConfig::from_toml_str(
            "[dhcp]\nmode = \"off\"\n[boot]\nroot = \"/srv\"\ndefault_profile = \"p\"\n\
             [[profiles]]\nname = \"p\"\nkernel = \"k\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_for(&config, catalog(&[]));
        assert!(plan.dhcp_config().is_none());
        assert!(matches!(plan.dhcp_server(), Ok(None)));
    }

    #[test]
    fn a_machine_without_the_hostname_its_script_needs_is_told_which_and_what() {
        let config = ApplianceConfig::from_toml_str(
            "[boot]\nroot = \"/srv\"\ndefault_profile = \"install\"\n\
             [[profiles]]\nname = \"install\"\nkernel = \"vmlinuz\"\n\
             cmdline = \"console=ttyS0 hostname={hostname}\"\n\
             [[machines]]\nmac = \"52:54:00:aa:00:01\"\nhostname = \"node-01\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_for(&config, catalog(&[("vmlinuz", "K")]));
        let named = http_get(&plan, "/boot.ipxe?mac=52-54-00-aa-00-01&arch=x86_64-efi");
        assert_eq!(named.status, Status::OK, "{}", named.head);
        let reply = http_get(&plan, "/boot.ipxe?mac=52-54-00-aa-00-02&arch=x86_64-efi");
        assert_eq!(reply.status, Status::INTERNAL_ERROR, "{}", reply.head);
        assert_eq!(
            text(&reply),
            "500 Internal Server Error\nmachine 52:54:00:aa:00:02, profile \"install\": the \
             command line needs {hostname} but the machine has none\n"
        );
        assert_eq!(
            plan.scripts()
                .counts()
                .refused(&ScriptRefusal::RenderFailed {
                    machine: String::new(),
                    profile: String::new(),
                    error: RenderError::MissingFact("hostname"),
                }),
            1
        );
    }
}
