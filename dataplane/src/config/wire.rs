//! The file as serde sees it. Every section but `[boot]` and `[[profiles]]` may be left out.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use super::error::ConfigError;

impl Config {
    /// Stands in a placeholder kernel (`/dev/null`, under `roots/preview-<profile>/`) for
    /// every profile that names a root, so the rest validates before roots can be looked
    /// up: the appliance reads `[server]` before its state is open, and tests check the
    /// example file. A plan from such a configuration serves nothing useful to a root
    /// profile's machines.
    pub fn with_root_placeholders(mut self) -> Self {
        for profile in &mut self.profiles {
            if profile.root.take().is_some() {
                let name = format!("roots/preview-{}/vmlinuz", profile.name);
                self.boot
                    .files
                    .insert(name.clone(), PathBuf::from("/dev/null"));
                profile.kernel.get_or_insert(name);
                profile.initrds.clear();
                for v in profile.arch.values_mut() {
                    v.initrds = None;
                }
            }
        }
        self
    }

    /// Parses TOML into the wire form; syntax errors, unknown keys and wrong types are
    /// reported with their line and column.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Toml {
                line,
                column,
                message: e.message().trim_end().to_owned(),
            }
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
/// The file as written, before validation; [`crate::config::ApplianceConfig`] is made from it by
/// `TryFrom`. Machines and profiles declared through the control API are merged in at this
/// level, so they are validated exactly like the file's.
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub dhcp: Dhcp,
    pub boot: Boot,
    #[serde(default)]
    pub profiles: Vec<Profile>,
    #[serde(default)]
    pub machines: Vec<Machine>,
    #[serde(default)]
    pub tftp: Tftp,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub xdp: Xdp,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub address: Option<Ipv4Addr>,
    pub http_port: Option<u16>,
    pub api: Option<String>,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    pub workers: Option<u64>,
    pub router_advertisements: Option<RouterAdvertisements>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterAdvertisements {
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    #[default]
    Proxy,
    Authoritative,
    Off,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp {
    #[serde(default)]
    pub mode: DhcpMode,
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub reservations: Vec<Reservation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub range: String,
    pub subnet: String,
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    pub lease_time: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// Seconds as an integer, or text with units.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Duration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub root: Option<PathBuf>,
    /// Served name → file.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    pub ipxe_dir: Option<PathBuf>,
    pub default_profile: Option<String>,
    #[serde(default)]
    pub loaders: Loaders,
    #[serde(default)]
    pub ipxe_chainload: bool,
    /// See [`crate::config::BootSettings::roots_dir`].
    pub roots_dir: Option<PathBuf>,
    /// Signed shim for `secure_boot = "shim"` profiles; default [`crate::config::defaults::SHIM`].
    pub shim: Option<PathBuf>,
    /// Signed GRUB netboot image; default [`crate::config::defaults::GRUB`].
    pub grub: Option<PathBuf>,
}

/// Keys are [`stampede_proto::ipxe::Arch`] names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loaders {
    #[serde(rename = "x86-bios")]
    pub x86_bios: Option<String>,
    #[serde(rename = "x86_64-efi")]
    pub x86_64_efi: Option<String>,
    #[serde(rename = "arm64-efi")]
    pub arm64_efi: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// A diskless root image by name, or `sha256:DIGEST`. The appliance resolves it before
    /// validation: the root's kernel (unless `kernel` is given), its node initramfs, and the
    /// manifest's URL on the command line. Validation refuses one left unresolved.
    pub root: Option<String>,
    /// Needed unless `root` is given.
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrds: Vec<String>,
    #[serde(default)]
    pub cmdline: String,
    /// Architecture name → what differs for it.
    #[serde(default)]
    pub arch: BTreeMap<String, ArchVariant>,
    /// `"shim"`: see [`crate::config::SecureBoot`].
    pub secure_boot: Option<String>,
}

/// Keys left out are inherited from the profile.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchVariant {
    pub kernel: Option<String>,
    pub initrds: Option<Vec<String>>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    pub profile: Option<String>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    pub allow: Option<bool>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tftp {
    pub max_blksize: Option<u64>,
    pub max_windowsize: Option<u64>,
    pub retransmit_timeout: Option<Duration>,
    pub max_retries: Option<u64>,
    pub max_backoff: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub max_transfers: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub max_connections: Option<u64>,
    pub idle_timeout: Option<Duration>,
    pub header_timeout: Option<Duration>,
    pub max_pending: Option<u64>,
    pub max_request_line: Option<u64>,
    pub max_head: Option<u64>,
    pub max_headers: Option<u64>,
    /// HTTPS boot on this port beside plain HTTP; unset: no HTTPS.
    pub https_port: Option<u16>,
    /// The operator's certificate chain and key (PEM) for HTTPS boot; unset: the appliance
    /// CA issues one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `true`: iPXE scripts load kernels and initrds by `https://` (needs `https_port`).
    #[serde(default)]
    pub https_boot_urls: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MacPolicy {
    #[default]
    Open,
    KnownOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfXdp {
    #[default]
    Off,
    Auto,
    On,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    #[serde(default)]
    pub mode: XdpMode,
    #[serde(default)]
    pub policy: MacPolicy,
    pub dhcp_rate: Option<u64>,
    pub dhcp_burst: Option<u64>,
    pub tftp_rate: Option<u64>,
    pub tftp_burst: Option<u64>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub afxdp: AfXdp,
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
