//! The appliance configuration: the TOML file of `stampede serve --config FILE`, and the same
//! configuration built from the command line of `stampede boot` ([`ApplianceConfig::quick`]).
//!
//! Two layers, as in dora: [`wire`] holds serde types that mirror the file one to one
//! (`deny_unknown_fields` everywhere, so a misspelt key is an error and not a silently ignored
//! setting), and [`ApplianceConfig`] is the validated domain type the engine and
//! [`crate::boot::BootPlan`] consume. `TryFrom<wire::Config>` is the only way from one to the
//! other; every check happens there, and every [`ConfigError`] names the key it is about:
//!
//! ```text
//! dhcp.pools[0].range: start 198.18.0.50 is after end 198.18.0.10
//! profiles[2].cmdline: unknown placeholder {macc}
//! machines[3].profile: no profile named "rescue"
//! ```
//!
//! # Public API
//! - [`ApplianceConfig::from_toml_str`]: parse and validate a file's text; syntax and type errors
//!   come back as [`ConfigError::Toml`] with line and column.
//! - [`ApplianceConfig::quick`]: the configuration `stampede boot KERNEL INITRD..` means
//!   ([`QuickBoot`]); goes through the same wire type and the same validation.
//! - The sections: [`ServerSettings`], [`DhcpSettings`] (with proto [`Pool`]s ready to use),
//!   [`BootSettings`], [`Profile`] (an [`ipxe::BootProfile`] already validated), [`Machine`],
//!   [`TftpSettings`], [`HttpSettings`], `xdp` as an optional [`AttachMode`], and
//!   [`XdpFilterSettings`] (the drop policy the XDP classifier enforces).
//!
//! The annotated example `docs/stampede.example.toml` lists every key with its default; a test
//! below parses it, so it cannot drift from this code.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use stampede_proto::bootpath::{BootPath, PathRejection};
use stampede_proto::dhcp::{Loaders, Pool};
use stampede_proto::ipxe::{self, Arch, BootFiles, ProfileError, Template};
use stampede_proto::{http, tftp};

use stampede_ebpf_common::XdpPolicy;

use crate::xdp::AttachMode;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceConfig {
    pub server: ServerSettings,
    pub dhcp: DhcpSettings,
    pub boot: BootSettings,
    /// In file order; names are unique.
    pub profiles: Vec<Profile>,
    /// In file order; MACs and UUIDs are unique.
    pub machines: Vec<Machine>,
    pub tftp: TftpSettings,
    pub http: HttpSettings,
    /// `None` when `xdp.mode = "off"`: everything is then served from sockets alone.
    pub xdp: Option<AttachMode>,
    /// `[xdp]` policy keys: what the classifier drops, whatever the attach mode.
    pub xdp_filter: XdpFilterSettings,
    /// `xdp.afxdp`: whether DHCP and TFTP are served through AF_XDP sockets.
    pub afxdp: AfXdpChoice,
}

/// `xdp.afxdp`: serve DHCP and TFTP through AF_XDP sockets the XDP program steers boot frames
/// into, instead of the io_uring UDP workers. HTTP stays on io_uring TCP either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfXdpChoice {
    /// io_uring sockets only. The default until the AF_XDP path has been measured against
    /// them on real NICs (docs/architecture.md).
    #[default]
    Off,
    /// AF_XDP when the classifier is attached and the sockets bind; otherwise the io_uring
    /// workers, with the reason logged.
    Auto,
    /// AF_XDP or refuse to start.
    On,
}

/// `[xdp] policy`: which machines may send DHCP at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacPolicy {
    /// Every MAC not denied (the default: a boot network usually boots new machines).
    #[default]
    Open,
    /// Only MACs the appliance knows (`[[machines]]`, `[[dhcp.reservations]]`, machines
    /// registered through the API); DHCP from any other MAC is dropped at the NIC.
    KnownOnly,
}

/// `[xdp]` drop policy: rate limits, the MAC policy and the operator's own deny list. The deny
/// and allow lists the classifier holds are computed from this and the machines
/// ([`ApplianceConfig::xdp_mac_lists`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpFilterSettings {
    pub policy: MacPolicy,
    /// DHCP and ProxyDHCP messages per second per MAC once the burst is spent.
    pub dhcp_rate_per_sec: u32,
    /// DHCP and ProxyDHCP messages one MAC may send back to back.
    pub dhcp_burst: u32,
    /// TFTP read requests per second admitted in total.
    pub tftp_rate_per_sec: u32,
    /// TFTP read requests admitted back to back in total.
    pub tftp_burst: u32,
    /// `xdp.deny`: MACs whose DHCP is dropped whatever else the configuration says.
    pub deny: Vec<[u8; 6]>,
}

impl Default for XdpFilterSettings {
    fn default() -> Self {
        let p = XdpPolicy::permissive();
        Self {
            policy: MacPolicy::Open,
            dhcp_rate_per_sec: p.dhcp_rate_per_sec,
            dhcp_burst: p.dhcp_burst,
            tftp_rate_per_sec: p.tftp_rate_per_sec,
            tftp_burst: p.tftp_burst,
            deny: Vec::new(),
        }
    }
}

impl XdpFilterSettings {
    /// The policy as the classifier's `CONFIG` map holds it.
    pub fn policy(&self) -> XdpPolicy {
        XdpPolicy {
            dhcp_rate_per_sec: self.dhcp_rate_per_sec,
            dhcp_burst: self.dhcp_burst,
            tftp_rate_per_sec: self.tftp_rate_per_sec,
            tftp_burst: self.tftp_burst,
            known_only: u32::from(self.policy == MacPolicy::KnownOnly),
        }
    }
}

/// The MACs the classifier must hold on its lists for a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpMacLists {
    /// `xdp.deny` and every machine with `allow = false`.
    pub deny: BTreeSet<[u8; 6]>,
    /// In known-only mode, every allowed machine's MAC and every reservation's; empty otherwise
    /// (the allow list means nothing in open mode).
    pub allow: BTreeSet<[u8; 6]>,
    /// Allowed machines known by UUID only: XDP sees MACs, so in known-only mode these are
    /// refused at the NIC. Listed so the appliance can say so.
    pub uuid_only: usize,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Boot networks. Empty means "the interface of the default route", which the engine
    /// resolves; only allowed when DHCP is not authoritative.
    pub interfaces: Vec<String>,
    /// This server's IPv4 address on the boot network; `None`: the engine takes the
    /// interface's own (one per interface).
    pub address: Option<Ipv4Addr>,
    pub http_port: u16,
    /// Where the control API listens.
    pub api: SocketAddr,
    /// HTTPS for the control API with this certificate and key; `None`: plain HTTP.
    pub api_tls: Option<ApiTlsFiles>,
    /// Worker threads (one io_uring each); `None`: one per core.
    pub workers: Option<NonZeroUsize>,
    /// Answer IPv6 router solicitations with an empty RA where no other router speaks, so
    /// firmware stops waiting for IPv6 autoconfiguration ([`stampede_proto::ndp`]).
    pub router_advertisements: bool,
}

/// `server.api_tls_cert` and `server.api_tls_key`: PEM files, read when the API starts (a bad
/// file stops the start with the file's name and the problem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[dhcp] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// ProxyDHCP (PXE 2.1 §2.2.3): boot instructions only, beside the LAN's DHCP server.
    Proxy,
    /// Addresses from [`DhcpSettings::pools`] as well as boot instructions.
    Authoritative,
    /// No DHCP at all (machines find the server some other way, e.g. a static iPXE script).
    Off,
}

impl DhcpMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Authoritative => "authoritative",
            Self::Off => "off",
        }
    }
}

/// `[dhcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSettings {
    pub mode: DhcpMode,
    /// Non-empty exactly when the mode is authoritative. Reservations are already sorted into
    /// the pool whose subnet holds their address.
    pub pools: Vec<Pool>,
    /// `[[dhcp.reservations]]` as written, for the facts they give scripts (IP, hostname).
    pub reservations: Vec<Reservation>,
}

impl DhcpSettings {
    /// Authoritative pools against the boot interface `iface`, which is `ip`/`prefix`: a
    /// machine on the link (no relay) gets an address from the pool whose subnet holds `ip`, so
    /// there must be one, and its range must lie in the interface's network. Pools of other
    /// subnets serve relayed networks and are left alone.
    pub fn check_link(&self, iface: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), ConfigError> {
        if self.mode != DhcpMode::Authoritative {
            return Ok(());
        }
        let network = network_of(ip, prefix);
        let network_text = format!("{network}/{prefix}");
        let Some(i) = self.pools.iter().position(|p| p.contains(ip)) else {
            return Err(ConfigError::invalid(
                "dhcp.pools",
                Problem::NoPoolOnLink {
                    iface: iface.to_owned(),
                    network: network_text,
                    pools: self
                        .pools
                        .iter()
                        .map(|p| format!("{}/{}", p.subnet, p.prefix_len))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            ));
        };
        let pool = &self.pools[i];
        if network_of(pool.first, prefix) != network || network_of(pool.last, prefix) != network {
            return Err(ConfigError::invalid(
                format!("dhcp.pools[{i}].range"),
                Problem::NotOnLink {
                    range: format!("{}-{}", pool.first, pool.last),
                    iface: iface.to_owned(),
                    network: network_text,
                },
            ));
        }
        Ok(())
    }
}

/// The network `ip` is in, with a prefix of `prefix` bits.
pub fn network_of(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// `[[dhcp.reservations]]`: a fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// `[boot]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// Directory whose files are served by TFTP (at their relative path) and by HTTP (under
    /// `/files/`).
    pub root: Option<PathBuf>,
    /// Single files served under a name of their own, looked up before `root` (this is how
    /// `stampede boot` serves a kernel from anywhere).
    pub files: BTreeMap<BootPath, PathBuf>,
    /// Where the iPXE builds named in `loaders` are read from.
    pub ipxe_dir: PathBuf,
    /// iPXE builds handed to firmware, by family.
    pub loaders: Loaders,
    /// Index into [`ApplianceConfig::profiles`] of the profile unknown machines boot; `None`:
    /// unknown machines do not boot.
    pub default_profile: Option<usize>,
    /// Hand an iPXE that runs from a NIC's option ROM the configured loader (by TFTP) instead
    /// of the script, so every BIOS machine boots the same iPXE build; the chainloaded iPXE
    /// then gets the script. Default: false (the ROM's iPXE boots the script directly).
    pub ipxe_chainload: bool,
    /// Where built diskless roots are served from: `roots/<id>/manifest` (signed) and
    /// `chunks/<sha256>`, by HTTP at those paths (not under `/files/`). Set by the appliance
    /// when it builds roots (`stampede boot --root`).
    pub roots_dir: Option<PathBuf>,
}

/// `[[profiles]]`: what a machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// Paths relative to the boot root; already checked by [`ipxe::BootProfile::validate`].
    pub boot: ipxe::BootProfile,
    /// `secure_boot = "shim"`: x86-64 UEFI PXE machines boot the distribution's signed chain
    /// (shim, then GRUB with a generated `grub.cfg`) instead of iPXE.
    pub secure_boot: Option<SecureBoot>,
}

/// How a profile's machines boot under UEFI Secure Boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureBoot {
    /// Microsoft-signed shim ([`SHIM_NAME`] from `boot.shim`), which loads the signed GRUB
    /// netboot image ([`GRUB_NAME`] from `boot.grub`) from the same TFTP directory; GRUB reads
    /// the `grub/grub.cfg` Stampede writes and boots the profile's (signed) kernel.
    Shim,
}

/// The TFTP name of the signed shim handed to Secure Boot machines.
pub const SHIM_NAME: &str = "shimx64.efi";
/// The name shim loads next, from the directory it came from.
pub const GRUB_NAME: &str = "grubx64.efi";

/// `[[machines]]`: one known machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub mac: Option<[u8; 6]>,
    /// The 16 bytes of DHCP option 97 in wire order.
    pub uuid: Option<[u8; 16]>,
    /// Index into [`ApplianceConfig::profiles`]; `None` means the default profile (present
    /// whenever `allow` is true: checked at validation).
    pub profile: Option<usize>,
    pub hostname: Option<String>,
    pub labels: Vec<String>,
    /// `false`: the appliance ignores this machine entirely (no DHCP reply, no script).
    pub allow: bool,
    /// Lines of `authorized_keys` a diskless machine's node agent writes for root
    /// (`/root/.ssh/authorized_keys`), from `/stampede/node/config` (checked by
    /// [`check_ssh_key`]).
    pub ssh_authorized_keys: Vec<String>,
}

/// `[tftp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TftpSettings {
    pub server: tftp::ServerConfig,
    /// Transfers running at once; each holds a UDP port (its TID), so requests beyond this
    /// are dropped (the client retransmits its RRQ).
    pub max_transfers: usize,
}

/// `[http]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    pub server: http::ServerConfig,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Every default, with what it is tuned for.
pub mod defaults {
    use std::time::Duration;

    /// Unprivileged, and leaves 80 to a web server that may share the host. iPXE and UEFI HTTP
    /// Boot take any port in a URL.
    pub const HTTP_PORT: u16 = 8080;
    /// Loopback: the API has no authentication.
    pub const API: &str = "127.0.0.1:7070";
    /// The Debian/Ubuntu `ipxe` package's directory (undionly.kpxe, snponly.efi).
    pub const IPXE_DIR: &str = "/usr/lib/ipxe";
    /// Debian's Microsoft-signed shim (package `shim-signed`).
    pub const SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
    /// Debian's signed GRUB netboot image (package `grub-efi-amd64-signed`).
    pub const GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
    /// dnsmasq's default. Boot networks churn (machines reinstalled, replaced), and a short
    /// lease returns their addresses to the pool within the hour.
    pub const LEASE_TIME: Duration = Duration::from_secs(3600);
    /// Below this, renewals (at half the lease) would come faster than a slow PXE boot.
    pub const MIN_LEASE_TIME: Duration = Duration::from_secs(60);
    /// DHCP option 51 is 32-bit seconds; 0xffffffff means "infinite" (RFC 2131 §3.3).
    pub const MAX_LEASE_TIME: Duration = Duration::from_secs(u32::MAX as u64 - 1);
    /// 1500-byte Ethernet MTU minus IPv4 (20), UDP (8) and TFTP (4) headers: DATA never
    /// fragments on a standard LAN.
    pub const TFTP_MAX_BLKSIZE: u16 = 1468;
    /// RFC 7440 windows: 16 × 1468 B ≈ 23 KB in flight per transfer, which thousands of
    /// concurrent transfers can keep without overrunning shallow switch buffers, while still
    /// cutting the ACK round trips 16-fold. The proto core caps it at 64.
    pub const TFTP_MAX_WINDOWSIZE: u16 = 16;
    /// Below Linux's default ephemeral port range (32768-60999, 28232 ports): each transfer
    /// holds one port, and other sockets need some too.
    pub const TFTP_MAX_TRANSFERS: usize = 16_384;
    /// Generous for boot clients, which hold one or two connections each; a few thousand
    /// machines booting at once stay under it, and so does a raised `ulimit -n`.
    pub const HTTP_MAX_CONNECTIONS: usize = 16_384;
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("line {line}, column {column}: {message}")]
    Toml {
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parses but does not make sense.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: Problem },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: Problem) -> Self {
        Self::Invalid {
            key: key.into(),
            problem,
        }
    }

    /// The key path (`dhcp.pools[0].range`) of an [`ConfigError::Invalid`].
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Toml { .. } => None,
        }
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is not an interface name (1-15 bytes, no '/', ':' or whitespace)")]
    BadInterfaceName(String),
    #[error("{value} is already used by {first}")]
    Duplicate { value: String, first: String },
    #[error(
        "one address cannot belong to {0} interfaces; leave it out to use each interface's own"
    )]
    AddressNeedsOneInterface(usize),
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange { value: u64, min: u64, max: u64 },
    #[error("a certificate needs its key and a key its certificate: set both or neither")]
    TlsPairIncomplete,
    #[error("{0:?} is not a socket address like 127.0.0.1:7070")]
    BadSocketAddr(String),
    #[error("authoritative DHCP needs server.interfaces to name the boot network")]
    AuthoritativeNeedsInterface,
    #[error("authoritative mode needs at least one [[dhcp.pools]]")]
    NoPools,
    #[error("pools are only used with mode = \"authoritative\" (mode is {0:?})")]
    PoolsNeedAuthoritative(&'static str),
    #[error("{0:?} is not a range like 198.18.0.100-198.18.0.200")]
    BadRange(String),
    #[error("start {start} is after end {end}")]
    RangeReversed { start: Ipv4Addr, end: Ipv4Addr },
    #[error("{0:?} is not a subnet like 198.18.0.0/24")]
    BadSubnet(String),
    #[error("{given} has host bits set (did you mean {network}/{prefix}?)")]
    HostBitsSet {
        given: String,
        network: Ipv4Addr,
        prefix: u8,
    },
    #[error("{ip} is outside subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, subnet: String },
    #[error("{range} is not in {iface}'s network {network}")]
    NotOnLink {
        range: String,
        iface: String,
        network: String,
    },
    #[error(
        "no pool is on {iface}'s network {network} (the pools are on {pools}): machines on the \
         link would be handed addresses of another network"
    )]
    NoPoolOnLink {
        iface: String,
        network: String,
        pools: String,
    },
    #[error(
        "{{hostname}} needs each machine's host name, and quick mode knows none: use {{mac}} or \
         {{ip}}, or serve a config file (stampede serve --config) whose [[machines]] or \
         [[dhcp.reservations]] have host names"
    )]
    NoHostnames,
    #[error("subnet overlaps dhcp.pools[{0}]")]
    PoolsOverlap(usize),
    #[error("{0} is inside no pool's subnet")]
    NoPoolFor(Ipv4Addr),
    #[error("{0:?} is not a duration like 90, \"90s\", \"15m\", \"12h\" or \"1h30m\"")]
    BadDuration(String),
    #[error("{value:?} is out of range {min:?}..={max:?}")]
    DurationOutOfRange {
        value: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("{0:?} is not a MAC address like 52:54:00:12:34:56")]
    BadMac(String),
    #[error("{0:?} is not a UUID like 4c4c4544-004d-5910-8052-b2c04f353032")]
    BadUuid(String),
    #[error("{0:?} is not a host name (letters, digits, '-', dot-separated labels)")]
    BadHostname(String),
    #[error("not an authorized_keys line: {0}")]
    BadSshKey(String),
    #[error("{0:?} is not a name (letters, digits, '-', '_', '.')")]
    BadName(String),
    #[error(
        "{0:?} is not a label: a name, or key=value (key: letters, digits, '-', '_', '.', '/'; \
         value: letters, digits, '-', '_', '.'; each at most 63)"
    )]
    BadLabel(String),
    #[error("invalid path {path:?}: {reason}")]
    BadPath { path: String, reason: PathRejection },
    #[error("{0}")]
    Profile(ProfileError),
    #[error("unknown architecture {0:?}: expected x86-bios, x86_64-efi or arm64-efi")]
    UnknownArch(String),
    #[error("no profile named {0:?}")]
    UnknownProfile(String),
    #[error("at least one [[profiles]] is needed")]
    NoProfiles,
    #[error("missing: give a kernel, or a root image (root = \"NAME\")")]
    NoKernel,
    #[error(
        "root image {0:?} was not resolved: roots are imported images the appliance looks up \
         (stampede serve), not files"
    )]
    UnresolvedRoot(String),
    #[error("no profile given and boot.default_profile is not set")]
    NoProfile,
    #[error("{count} entries, at most {max} fit")]
    TooMany { count: usize, max: usize },
    #[error("a machine needs a mac or a uuid")]
    MachineWithoutKey,
    #[error("set boot.root (a directory) or boot.files")]
    NoBootFiles,
    #[error("{0:?} is not in boot.files, and boot.root is not set")]
    FileNotServed(String),
    #[error("{0:?} has no file name usable as a boot file name")]
    NoFileName(PathBuf),
    #[error("{0:?} is not a Secure Boot chain: expected \"shim\"")]
    UnknownSecureBoot(String),
}

// ---------------------------------------------------------------------------------------------
// Wire types

/// The file as serde sees it. Every section but `[boot]` and `[[profiles]]` may be left out.
pub mod wire {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use serde::Deserialize;

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
        pub fn from_toml_str(text: &str) -> Result<Self, super::ConfigError> {
            toml::from_str(text).map_err(|e| {
                let (line, column) = e
                    .span()
                    .map_or((0, 0), |span| super::line_column(text, span.start));
                super::ConfigError::Toml {
                    line,
                    column,
                    message: e.message().trim_end().to_owned(),
                }
            })
        }
    }

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    /// The file as written, before validation; [`super::ApplianceConfig`] is made from it by
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
        /// See [`super::BootSettings::roots_dir`].
        pub roots_dir: Option<PathBuf>,
        /// Signed shim for `secure_boot = "shim"` profiles; default [`super::defaults::SHIM`].
        pub shim: Option<PathBuf>,
        /// Signed GRUB netboot image; default [`super::defaults::GRUB`].
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
        /// `"shim"`: see [`super::SecureBoot`].
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
}

// ---------------------------------------------------------------------------------------------
// Validation

impl ApplianceConfig {
    /// Parses and validates the text of a configuration file.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::try_from(wire::Config::from_toml_str(text)?)
    }

    /// The configuration quick mode means, before validation (see [`ApplianceConfig::quick`]).
    pub fn quick_wire(q: QuickBoot) -> Result<wire::Config, ConfigError> {
        Self::quick_parts(q)
    }

    /// The deny and allow lists the XDP classifier must hold for this configuration (machines
    /// from the control API included, once merged).
    pub fn xdp_mac_lists(&self) -> XdpMacLists {
        let mut lists = XdpMacLists {
            deny: self.xdp_filter.deny.iter().copied().collect(),
            ..XdpMacLists::default()
        };
        let known_only = self.xdp_filter.policy == MacPolicy::KnownOnly;
        for machine in &self.machines {
            match (machine.mac, machine.allow) {
                (Some(mac), false) => {
                    lists.deny.insert(mac);
                }
                (Some(mac), true) if known_only => {
                    lists.allow.insert(mac);
                }
                (None, true) if known_only => lists.uuid_only += 1,
                _ => {}
            }
        }
        if known_only {
            lists
                .allow
                .extend(self.dhcp.reservations.iter().map(|r| r.mac));
        }
        lists
    }

    /// The profile a machine boots, if it boots: its own, else the default.
    pub fn profile_of(&self, machine: &Machine) -> Option<&Profile> {
        if !machine.allow {
            return None;
        }
        machine
            .profile
            .or(self.boot.default_profile)
            .and_then(|i| self.profiles.get(i))
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl TryFrom<wire::Config> for ApplianceConfig {
    type Error = ConfigError;

    fn try_from(w: wire::Config) -> Result<Self, ConfigError> {
        let dhcp_mode = match w.dhcp.mode {
            wire::DhcpMode::Proxy => DhcpMode::Proxy,
            wire::DhcpMode::Authoritative => DhcpMode::Authoritative,
            wire::DhcpMode::Off => DhcpMode::Off,
        };
        let server = server(&w.server, dhcp_mode)?;
        let profiles = profiles(&w.profiles)?;
        let boot = boot(&w.boot, &profiles)?;
        let dhcp = dhcp(&w.dhcp, dhcp_mode)?;
        let machines = machines(&w.machines, &profiles, boot.default_profile)?;
        Ok(Self {
            server,
            dhcp,
            boot,
            profiles,
            machines,
            tftp: tftp_settings(&w.tftp)?,
            http: http_settings(&w.http)?,
            xdp: match w.xdp.mode {
                wire::XdpMode::Auto => Some(AttachMode::Auto),
                wire::XdpMode::Native => Some(AttachMode::Native),
                wire::XdpMode::Generic => Some(AttachMode::Generic),
                wire::XdpMode::Off => None,
            },
            xdp_filter: xdp_filter(&w.xdp)?,
            afxdp: match w.xdp.afxdp {
                wire::AfXdp::Off => AfXdpChoice::Off,
                wire::AfXdp::Auto => AfXdpChoice::Auto,
                wire::AfXdp::On => AfXdpChoice::On,
            },
        })
    }
}

impl ApplianceConfig {
    /// Every error of `w`, not only the first (`stampede serve --check`): each section is
    /// validated on its own (a section of single settings, such as `[server]` or `[tftp]`,
    /// reports its first error), and where a list (profiles, pools, reservations, machines) is
    /// refused, each entry is validated alone so that every bad entry is named; errors between
    /// entries (a duplicate) come from the whole list. A refused profile is stood in for under
    /// its name, so the machines naming it are not reported for that. Empty: `TryFrom` accepts
    /// `w`.
    pub fn all_errors(w: &wire::Config) -> Vec<ConfigError> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut note = |e: ConfigError| {
            if !errors.contains(&e) {
                errors.push(e);
            }
        };
        let mode = match w.dhcp.mode {
            wire::DhcpMode::Proxy => DhcpMode::Proxy,
            wire::DhcpMode::Authoritative => DhcpMode::Authoritative,
            wire::DhcpMode::Off => DhcpMode::Off,
        };
        if let Err(e) = server(&w.server, mode) {
            note(e);
        }
        let profiles = profiles(&w.profiles).unwrap_or_else(|whole| {
            let mut each = Vec::new();
            let stand_ins = w
                .profiles
                .iter()
                .enumerate()
                .map(|(i, p)| match profiles(std::slice::from_ref(p)) {
                    Ok(mut valid) => valid.remove(0),
                    Err(e) => {
                        each.push(rekey(e, "profiles[0]", &format!("profiles[{i}]")));
                        stand_in_profile(&p.name)
                    }
                })
                .collect();
            each.push(whole);
            each.into_iter().for_each(&mut note);
            stand_ins
        });
        let default_profile = match boot(&w.boot, &profiles) {
            Ok(b) => b.default_profile,
            Err(e) => {
                note(e);
                w.boot
                    .default_profile
                    .as_ref()
                    .and_then(|n| profiles.iter().position(|p| &p.name == n))
            }
        };
        if let Err(whole) = dhcp(&w.dhcp, mode) {
            let mut valid_pools = Vec::new();
            for (i, pool) in w.dhcp.pools.iter().enumerate() {
                let alone = wire::Dhcp {
                    mode: w.dhcp.mode,
                    pools: vec![pool.clone()],
                    reservations: Vec::new(),
                };
                match dhcp(&alone, mode) {
                    Ok(_) => valid_pools.push(pool.clone()),
                    Err(e) => note(rekey(e, "dhcp.pools[0]", &format!("dhcp.pools[{i}]"))),
                }
            }
            if mode == DhcpMode::Authoritative && !valid_pools.is_empty() {
                for (i, r) in w.dhcp.reservations.iter().enumerate() {
                    let alone = wire::Dhcp {
                        mode: w.dhcp.mode,
                        pools: valid_pools.clone(),
                        reservations: vec![r.clone()],
                    };
                    if let Err(e) = dhcp(&alone, mode) {
                        let from = "dhcp.reservations[0]";
                        note(rekey(e, from, &format!("dhcp.reservations[{i}]")));
                    }
                }
            }
            note(whole);
        }
        if let Err(whole) = machines(&w.machines, &profiles, default_profile) {
            for (i, m) in w.machines.iter().enumerate() {
                if let Err(e) = machines(std::slice::from_ref(m), &profiles, default_profile) {
                    note(rekey(e, "machines[0]", &format!("machines[{i}]")));
                }
            }
            note(whole);
        }
        for section in [
            tftp_settings(&w.tftp).err(),
            http_settings(&w.http).err(),
            xdp_filter(&w.xdp).err(),
        ] {
            section.into_iter().for_each(&mut note);
        }
        // What the sections alone cannot see, if anything, `TryFrom` still does.
        if errors.is_empty()
            && let Err(e) = Self::try_from(w.clone())
        {
            errors.push(e);
        }
        errors
    }
}

/// `e` with its key's leading `from` (an entry validated alone, as the first of a list) put
/// back as `to` (where it is in the file).
fn rekey(e: ConfigError, from: &str, to: &str) -> ConfigError {
    match e {
        ConfigError::Invalid { key, problem } => ConfigError::Invalid {
            key: match key.strip_prefix(from) {
                Some(rest) => format!("{to}{rest}"),
                None => key,
            },
            problem,
        },
        toml => toml,
    }
}

/// A valid profile named `name`, standing in for a refused one while the rest is checked.
fn stand_in_profile(name: &str) -> Profile {
    Profile {
        name: name.to_owned(),
        boot: ipxe::BootProfile {
            default: BootFiles {
                kernel: "vmlinuz".into(),
                initrds: Vec::new(),
                cmdline: String::new(),
            },
            variants: Vec::new(),
        },
        secure_boot: None,
    }
}

fn server(w: &wire::Server, dhcp_mode: DhcpMode) -> Result<ServerSettings, ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in w.interfaces.iter().enumerate() {
        let key = format!("server.interfaces[{i}]");
        // IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' (aliases) and whitespace
        // (dev_valid_name in net/core/dev.c).
        let valid = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name.contains(['/', ':'])
            && !name.chars().any(char::is_whitespace);
        if !valid {
            return Err(ConfigError::invalid(
                key,
                Problem::BadInterfaceName(name.clone()),
            ));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(ConfigError::invalid(
                key,
                Problem::Duplicate {
                    value: format!("{name:?}"),
                    first: format!("server.interfaces[{first}]"),
                },
            ));
        }
    }
    if w.address.is_some() && w.interfaces.len() > 1 {
        return Err(ConfigError::invalid(
            "server.address",
            Problem::AddressNeedsOneInterface(w.interfaces.len()),
        ));
    }
    if dhcp_mode == DhcpMode::Authoritative && w.interfaces.is_empty() {
        // Handing out addresses on whatever network the default route is on could take over
        // an office LAN; the operator must name the boot network.
        return Err(ConfigError::invalid(
            "server.interfaces",
            Problem::AuthoritativeNeedsInterface,
        ));
    }
    let http_port = match w.http_port {
        None => defaults::HTTP_PORT,
        Some(0) => return Err(out_of_range("server.http_port", 0, 1, 65535)),
        Some(p) => p,
    };
    let api_text = w.api.as_deref().unwrap_or(defaults::API);
    let api = api_text.parse().map_err(|_| {
        ConfigError::invalid("server.api", Problem::BadSocketAddr(api_text.to_owned()))
    })?;
    let api_tls = match (&w.api_tls_cert, &w.api_tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ApiTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "server.api_tls_cert",
                Problem::TlsPairIncomplete,
            ));
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "server.api_tls_key",
                Problem::TlsPairIncomplete,
            ));
        }
    };
    let workers = match w.workers {
        None => None,
        Some(n) => Some(
            usize::try_from(n)
                .ok()
                .and_then(NonZeroUsize::new)
                .filter(|n| n.get() <= 4096)
                .ok_or_else(|| out_of_range("server.workers", n, 1, 4096))?,
        ),
    };
    Ok(ServerSettings {
        interfaces: w.interfaces.clone(),
        address: w.address,
        http_port,
        api,
        api_tls,
        workers,
        router_advertisements: w.router_advertisements.unwrap_or_default()
            == wire::RouterAdvertisements::Auto,
    })
}

fn out_of_range(key: &str, value: u64, min: u64, max: u64) -> ConfigError {
    ConfigError::invalid(key, Problem::OutOfRange { value, min, max })
}

fn number(
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(out_of_range(key, v, min, max))
    }
}

fn dhcp(w: &wire::Dhcp, mode: DhcpMode) -> Result<DhcpSettings, ConfigError> {
    if mode != DhcpMode::Authoritative && !w.pools.is_empty() {
        return Err(ConfigError::invalid(
            "dhcp.pools",
            Problem::PoolsNeedAuthoritative(mode.as_str()),
        ));
    }
    if mode == DhcpMode::Authoritative && w.pools.is_empty() {
        return Err(ConfigError::invalid("dhcp.pools", Problem::NoPools));
    }
    let mut pools: Vec<Pool> = Vec::new();
    for (i, p) in w.pools.iter().enumerate() {
        let key = |field: &str| format!("dhcp.pools[{i}].{field}");
        let (subnet, prefix_len) =
            parse_subnet(&p.subnet).map_err(|e| ConfigError::invalid(key("subnet"), e))?;
        let (first, last) =
            parse_range(&p.range).map_err(|e| ConfigError::invalid(key("range"), e))?;
        let pool = Pool {
            subnet,
            prefix_len,
            first,
            last,
            routers: p.router.into_iter().collect(),
            dns_servers: p.dns.clone(),
            lease_time: match &p.lease_time {
                None => defaults::LEASE_TIME,
                Some(d) => duration(
                    &key("lease_time"),
                    d,
                    defaults::MIN_LEASE_TIME,
                    defaults::MAX_LEASE_TIME,
                )?,
            },
            reservations: HashMap::new(),
        };
        let subnet_text = format!("{subnet}/{prefix_len}");
        for ip in [first, last] {
            if !pool.contains(ip) {
                return Err(ConfigError::invalid(
                    key("range"),
                    Problem::OutsideSubnet {
                        ip,
                        subnet: subnet_text,
                    },
                ));
            }
        }
        if let Some(r) = pool.routers.iter().find(|r| !pool.contains(**r)) {
            return Err(ConfigError::invalid(
                key("router"),
                Problem::OutsideSubnet {
                    ip: *r,
                    subnet: subnet_text,
                },
            ));
        }
        // Overlapping subnets would make the pool for a client depend on file order.
        if let Some(other) = pools
            .iter()
            .position(|q| q.contains(pool.subnet) || pool.contains(q.subnet))
        {
            return Err(ConfigError::invalid(
                key("subnet"),
                Problem::PoolsOverlap(other),
            ));
        }
        pools.push(pool);
    }

    let mut reservations = Vec::new();
    let mut by_mac: HashMap<[u8; 6], usize> = HashMap::new();
    let mut by_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, r) in w.reservations.iter().enumerate() {
        let key = |field: &str| format!("dhcp.reservations[{i}].{field}");
        let mac = parse_mac(&r.mac).map_err(|e| ConfigError::invalid(key("mac"), e))?;
        if let Some(first) = by_mac.insert(mac, i) {
            return Err(duplicate(
                key("mac"),
                &r.mac,
                format!("dhcp.reservations[{first}]"),
            ));
        }
        if let Some(first) = by_ip.insert(r.ip, i) {
            return Err(duplicate(
                key("ip"),
                &r.ip,
                format!("dhcp.reservations[{first}]"),
            ));
        }
        let hostname = r
            .hostname
            .as_deref()
            .map(|h| check_hostname(h).map_err(|e| ConfigError::invalid(key("hostname"), e)))
            .transpose()?;
        if mode == DhcpMode::Authoritative {
            let pool = pools
                .iter_mut()
                .find(|p| p.contains(r.ip))
                .ok_or_else(|| ConfigError::invalid(key("ip"), Problem::NoPoolFor(r.ip)))?;
            pool.reservations.insert(mac, r.ip);
        }
        reservations.push(Reservation {
            mac,
            ip: r.ip,
            hostname,
        });
    }
    Ok(DhcpSettings {
        mode,
        pools,
        reservations,
    })
}

fn duplicate(key: String, value: &dyn fmt::Display, first: String) -> ConfigError {
    ConfigError::invalid(
        key,
        Problem::Duplicate {
            value: value.to_string(),
            first,
        },
    )
}

fn boot(w: &wire::Boot, profiles: &[Profile]) -> Result<BootSettings, ConfigError> {
    if w.root.is_none() && w.files.is_empty() {
        return Err(ConfigError::invalid("boot.root", Problem::NoBootFiles));
    }
    if w.root.as_ref().is_some_and(|r| r.as_os_str().is_empty()) {
        return Err(ConfigError::invalid("boot.root", Problem::Empty));
    }
    let mut files = BTreeMap::new();
    if profiles.iter().any(|p| p.secure_boot.is_some()) {
        for (name, path, default) in [
            (SHIM_NAME, &w.shim, defaults::SHIM),
            (GRUB_NAME, &w.grub, defaults::GRUB),
        ] {
            let path = path.clone().unwrap_or_else(|| PathBuf::from(default));
            if let Ok(served) = BootPath::parse(name.as_bytes()) {
                files.insert(served, path);
            }
        }
    }
    for (name, path) in &w.files {
        let key = format!("boot.files.{name:?}");
        let served = parse_path(name).map_err(|e| ConfigError::invalid(&key, e))?;
        if path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(key, Problem::Empty));
        }
        if let Some(prev) = files.insert(served.clone(), path.clone()) {
            // Two spellings of one name ("a//b" and "a/b").
            return Err(duplicate(key, &served, format!("{}", prev.display())));
        }
    }
    // Without a root, a profile may only name listed files: catch the typo now, not at boot.
    if w.root.is_none() {
        for (i, p) in profiles.iter().enumerate() {
            let all =
                std::iter::once(&p.boot.default).chain(p.boot.variants.iter().map(|(_, f)| f));
            for f in all {
                for (field, path) in std::iter::once(("kernel", &f.kernel))
                    .chain(f.initrds.iter().map(|i| ("initrds", i)))
                {
                    let served = BootPath::parse(path.as_bytes()).ok();
                    if served.is_none_or(|s| !files.contains_key(&s)) {
                        return Err(ConfigError::invalid(
                            format!("profiles[{i}].{field}"),
                            Problem::FileNotServed(path.clone()),
                        ));
                    }
                }
            }
        }
    }
    let mut loaders = Loaders::default();
    for (key, value, slot) in [
        (
            "boot.loaders.x86-bios",
            &w.loaders.x86_bios,
            &mut loaders.bios,
        ),
        (
            "boot.loaders.x86_64-efi",
            &w.loaders.x86_64_efi,
            &mut loaders.efi_x64,
        ),
        (
            "boot.loaders.arm64-efi",
            &w.loaders.arm64_efi,
            &mut loaders.efi_arm64,
        ),
    ] {
        if let Some(name) = value {
            *slot = Some(
                parse_path(name)
                    .map_err(|e| ConfigError::invalid(key, e))?
                    .to_string(),
            );
        }
    }
    let default_profile = w
        .default_profile
        .as_deref()
        .map(|name| {
            profiles.iter().position(|p| p.name == name).ok_or_else(|| {
                ConfigError::invalid(
                    "boot.default_profile",
                    Problem::UnknownProfile(name.to_owned()),
                )
            })
        })
        .transpose()?;
    Ok(BootSettings {
        root: w.root.clone(),
        files,
        ipxe_dir: w
            .ipxe_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::IPXE_DIR)),
        loaders,
        default_profile,
        ipxe_chainload: w.ipxe_chainload,
        roots_dir: w.roots_dir.clone(),
    })
}

fn profiles(w: &[wire::Profile]) -> Result<Vec<Profile>, ConfigError> {
    if w.is_empty() {
        return Err(ConfigError::invalid("profiles", Problem::NoProfiles));
    }
    let mut out: Vec<Profile> = Vec::with_capacity(w.len());
    for (i, p) in w.iter().enumerate() {
        let at = format!("profiles[{i}]");
        check_name(&p.name).map_err(|e| ConfigError::invalid(format!("{at}.name"), e))?;
        if let Some(first) = out.iter().position(|q| q.name == p.name) {
            return Err(duplicate(
                format!("{at}.name"),
                &format!("{:?}", p.name),
                format!("profiles[{first}]"),
            ));
        }
        if let Some(root) = &p.root {
            return Err(ConfigError::invalid(
                format!("{at}.root"),
                Problem::UnresolvedRoot(root.clone()),
            ));
        }
        let kernel = p
            .kernel
            .clone()
            .ok_or_else(|| ConfigError::invalid(format!("{at}.kernel"), Problem::NoKernel))?;
        let default = BootFiles {
            kernel: kernel.clone(),
            initrds: p.initrds.clone(),
            cmdline: p.cmdline.clone(),
        };
        check_files(&at, &default)?;
        let mut variants = Vec::new();
        for (arch_name, v) in &p.arch {
            let vat = format!("{at}.arch.{arch_name}");
            let arch = parse_arch(arch_name).ok_or_else(|| {
                ConfigError::invalid(&vat, Problem::UnknownArch(arch_name.clone()))
            })?;
            let files = BootFiles {
                kernel: v.kernel.clone().unwrap_or_else(|| kernel.clone()),
                initrds: v.initrds.clone().unwrap_or_else(|| p.initrds.clone()),
                cmdline: v.cmdline.clone().unwrap_or_else(|| p.cmdline.clone()),
            };
            check_files(&vat, &files)?;
            variants.push((arch, files));
        }
        let secure_boot = match p.secure_boot.as_deref() {
            None => None,
            Some("shim") => Some(SecureBoot::Shim),
            Some(other) => {
                return Err(ConfigError::invalid(
                    format!("{at}.secure_boot"),
                    Problem::UnknownSecureBoot(other.to_owned()),
                ));
            }
        };
        let boot = ipxe::BootProfile { default, variants };
        // What the per-field checks above do not cover (initrd names: unique, plain).
        boot.validate()
            .map_err(|e| ConfigError::invalid(format!("{at}.initrds"), Problem::Profile(e)))?;
        out.push(Profile {
            name: p.name.clone(),
            boot,
            secure_boot,
        });
    }
    Ok(out)
}

/// Checks each field on its own so the error names it.
fn check_files(at: &str, f: &BootFiles) -> Result<(), ConfigError> {
    parse_path(&f.kernel).map_err(|e| ConfigError::invalid(format!("{at}.kernel"), e))?;
    for (j, initrd) in f.initrds.iter().enumerate() {
        parse_path(initrd).map_err(|e| ConfigError::invalid(format!("{at}.initrds[{j}]"), e))?;
    }
    Template::parse(&f.cmdline)
        .map_err(|e| ConfigError::invalid(format!("{at}.cmdline"), Problem::Profile(e)))?;
    Ok(())
}

/// The `{arch}` names of [`Arch::as_str`].
pub fn parse_arch(name: &str) -> Option<Arch> {
    [Arch::X86Bios, Arch::X86_64Efi, Arch::Arm64Efi]
        .into_iter()
        .find(|a| a.as_str() == name)
}

fn machines(
    w: &[wire::Machine],
    profiles: &[Profile],
    default_profile: Option<usize>,
) -> Result<Vec<Machine>, ConfigError> {
    let mut out = Vec::with_capacity(w.len());
    let mut by_mac: HashMap<[u8; 6], usize> = HashMap::new();
    let mut by_uuid: HashMap<[u8; 16], usize> = HashMap::new();
    for (i, m) in w.iter().enumerate() {
        let key = |field: &str| format!("machines[{i}].{field}");
        let mac = m
            .mac
            .as_deref()
            .map(|t| parse_mac(t).map_err(|e| ConfigError::invalid(key("mac"), e)))
            .transpose()?;
        let uuid = m
            .uuid
            .as_deref()
            .map(|t| parse_uuid(t).map_err(|e| ConfigError::invalid(key("uuid"), e)))
            .transpose()?;
        if mac.is_none() && uuid.is_none() {
            return Err(ConfigError::invalid(
                format!("machines[{i}]"),
                Problem::MachineWithoutKey,
            ));
        }
        if let Some(mac) = mac
            && let Some(first) = by_mac.insert(mac, i)
        {
            return Err(duplicate(
                key("mac"),
                &ipxe::format_mac(&mac),
                format!("machines[{first}]"),
            ));
        }
        if let Some(uuid) = uuid
            && let Some(first) = by_uuid.insert(uuid, i)
        {
            return Err(duplicate(
                key("uuid"),
                &ipxe::format_uuid(&uuid),
                format!("machines[{first}]"),
            ));
        }
        let allow = m.allow.unwrap_or(true);
        let profile =
            match m.profile.as_deref() {
                Some(name) => Some(profiles.iter().position(|p| p.name == name).ok_or_else(
                    || {
                        ConfigError::invalid(
                            key("profile"),
                            Problem::UnknownProfile(name.to_owned()),
                        )
                    },
                )?),
                None if allow && default_profile.is_none() => {
                    return Err(ConfigError::invalid(key("profile"), Problem::NoProfile));
                }
                None => None,
            };
        let hostname = m
            .hostname
            .as_deref()
            .map(|h| check_hostname(h).map_err(|e| ConfigError::invalid(key("hostname"), e)))
            .transpose()?;
        for (j, label) in m.labels.iter().enumerate() {
            check_label(label)
                .map_err(|e| ConfigError::invalid(format!("machines[{i}].labels[{j}]"), e))?;
        }
        if m.ssh_authorized_keys.len() > MAX_SSH_KEYS {
            return Err(ConfigError::invalid(
                key("ssh_authorized_keys"),
                Problem::BadSshKey(format!("at most {MAX_SSH_KEYS} keys per machine")),
            ));
        }
        for (j, line) in m.ssh_authorized_keys.iter().enumerate() {
            check_ssh_key(line).map_err(|e| {
                ConfigError::invalid(format!("machines[{i}].ssh_authorized_keys[{j}]"), e)
            })?;
        }
        out.push(Machine {
            mac,
            uuid,
            profile,
            hostname,
            labels: m.labels.clone(),
            allow,
            ssh_authorized_keys: m
                .ssh_authorized_keys
                .iter()
                .map(|k| k.trim().to_owned())
                .collect(),
        });
    }
    Ok(out)
}

/// Upper bounds of the `[xdp]` rate keys: far beyond any real boot network, low enough that the
/// token arithmetic in the XDP program (`burst * 1e9` in a `u64`) cannot overflow.
const MAX_DHCP_RATE: u64 = 100_000;
const MAX_TFTP_RATE: u64 = 1_000_000;

fn xdp_filter(w: &wire::Xdp) -> Result<XdpFilterSettings, ConfigError> {
    let d = XdpFilterSettings::default();
    // A rate of 0 would never refill a bucket and a burst of 0 would drop everything: both are
    // refused (min 1) rather than silently turning the limit into a wall.
    let n = |key, value, default: u32, max| {
        number(key, value, u64::from(default), 1, max).map(|v| v as u32)
    };
    let mut deny = Vec::with_capacity(w.deny.len());
    let mut seen: HashMap<[u8; 6], usize> = HashMap::new();
    for (i, text) in w.deny.iter().enumerate() {
        let key = format!("xdp.deny[{i}]");
        let mac = parse_mac(text).map_err(|e| ConfigError::invalid(key.clone(), e))?;
        if let Some(first) = seen.insert(mac, i) {
            return Err(duplicate(
                key,
                &ipxe::format_mac(&mac),
                format!("xdp.deny[{first}]"),
            ));
        }
        deny.push(mac);
    }
    if deny.len() > stampede_ebpf_common::DENY_MACS_CAPACITY as usize {
        return Err(ConfigError::invalid(
            "xdp.deny",
            Problem::TooMany {
                count: deny.len(),
                max: stampede_ebpf_common::DENY_MACS_CAPACITY as usize,
            },
        ));
    }
    Ok(XdpFilterSettings {
        policy: match w.policy {
            wire::MacPolicy::Open => MacPolicy::Open,
            wire::MacPolicy::KnownOnly => MacPolicy::KnownOnly,
        },
        dhcp_rate_per_sec: n(
            "xdp.dhcp_rate",
            w.dhcp_rate,
            d.dhcp_rate_per_sec,
            MAX_DHCP_RATE,
        )?,
        dhcp_burst: n("xdp.dhcp_burst", w.dhcp_burst, d.dhcp_burst, MAX_DHCP_RATE)?,
        tftp_rate_per_sec: n(
            "xdp.tftp_rate",
            w.tftp_rate,
            d.tftp_rate_per_sec,
            MAX_TFTP_RATE,
        )?,
        tftp_burst: n("xdp.tftp_burst", w.tftp_burst, d.tftp_burst, MAX_TFTP_RATE)?,
        deny,
    })
}

fn tftp_settings(w: &wire::Tftp) -> Result<TftpSettings, ConfigError> {
    let d = tftp::TransferLimits::default();
    let dur =
        |key: &str, v: &Option<wire::Duration>, default: Duration, min: Duration, max: Duration| {
            v.as_ref()
                .map_or(Ok(default), |v| duration(key, v, min, max))
        };
    let s = Duration::from_secs;
    let limits = tftp::TransferLimits {
        // RFC 2349 allows 1..=255 s when a client asks; the server's own may be finer.
        default_timeout: dur(
            "tftp.retransmit_timeout",
            &w.retransmit_timeout,
            d.default_timeout,
            Duration::from_millis(100),
            s(255),
        )?,
        // Not configurable: tuned for real clients under load (atftp aborts on a second OACK)
        // and the round trips each transfer measures (issue 18).
        oack_timeout: d.oack_timeout,
        min_timeout: d.min_timeout,
        max_retries: number(
            "tftp.max_retries",
            w.max_retries,
            d.max_retries.into(),
            0,
            100,
        )? as u32,
        // Not configurable: it bounds what a spoofed request can draw (issue 19).
        max_unverified_retries: d.max_unverified_retries,
        max_backoff: dur(
            "tftp.max_backoff",
            &w.max_backoff,
            d.max_backoff,
            Duration::from_millis(100),
            s(255),
        )?,
        idle_timeout: dur(
            "tftp.idle_timeout",
            &w.idle_timeout,
            d.idle_timeout,
            s(1),
            s(3600),
        )?,
        max_duration: dur(
            "tftp.max_duration",
            &w.max_duration,
            d.max_duration,
            s(1),
            s(86_400),
        )?,
    };
    let server = tftp::ServerConfig {
        // RFC 2348 §2: blksize 8..=65464.
        max_blksize: number(
            "tftp.max_blksize",
            w.max_blksize,
            defaults::TFTP_MAX_BLKSIZE.into(),
            8,
            65464,
        )? as u16,
        max_windowsize: number(
            "tftp.max_windowsize",
            w.max_windowsize,
            defaults::TFTP_MAX_WINDOWSIZE.into(),
            1,
            tftp::server::MAX_SERVER_WINDOWSIZE.into(),
        )? as u16,
        limits,
    };
    Ok(TftpSettings {
        server,
        max_transfers: number(
            "tftp.max_transfers",
            w.max_transfers,
            defaults::TFTP_MAX_TRANSFERS as u64,
            1,
            1 << 20,
        )? as usize,
    })
}

fn http_settings(w: &wire::Http) -> Result<HttpSettings, ConfigError> {
    let d = http::ServerConfig::default();
    let s = Duration::from_secs;
    let dur = |key: &str, v: &Option<wire::Duration>, default: Duration| {
        v.as_ref()
            .map_or(Ok(default), |v| duration(key, v, s(1), s(3600)))
    };
    let server = http::ServerConfig {
        limits: http::Limits {
            max_request_line: number(
                "http.max_request_line",
                w.max_request_line,
                d.limits.max_request_line as u64,
                64,
                1 << 16,
            )? as usize,
            max_head: number(
                "http.max_head",
                w.max_head,
                d.limits.max_head as u64,
                256,
                1 << 20,
            )? as usize,
            max_headers: number(
                "http.max_headers",
                w.max_headers,
                d.limits.max_headers as u64,
                8,
                1024,
            )? as usize,
        },
        idle_timeout: dur("http.idle_timeout", &w.idle_timeout, d.idle_timeout)?,
        header_timeout: dur("http.header_timeout", &w.header_timeout, d.header_timeout)?,
        max_pending: number(
            "http.max_pending",
            w.max_pending,
            d.max_pending as u64,
            1,
            1024,
        )? as usize,
    };
    Ok(HttpSettings {
        server,
        max_connections: number(
            "http.max_connections",
            w.max_connections,
            defaults::HTTP_MAX_CONNECTIONS as u64,
            1,
            1 << 20,
        )? as usize,
    })
}

// ---------------------------------------------------------------------------------------------
// Value parsers

fn parse_path(text: &str) -> Result<BootPath, Problem> {
    BootPath::parse(text.as_bytes()).map_err(|reason| Problem::BadPath {
        path: text.to_owned(),
        reason,
    })
}

/// `198.18.0.100-198.18.0.200`, spaces around `-` allowed.
pub fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), Problem> {
    let bad = || Problem::BadRange(text.to_owned());
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let start: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let end: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    if u32::from(start) > u32::from(end) {
        return Err(Problem::RangeReversed { start, end });
    }
    Ok((start, end))
}

/// `198.18.0.0/24`; host bits must be zero (a typo otherwise, more often than not).
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), Problem> {
    let bad = || Problem::BadSubnet(text.to_owned());
    let (a, p) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = p.trim().parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let network = Ipv4Addr::from(u32::from(ip) & mask);
    if network != ip {
        return Err(Problem::HostBitsSet {
            given: text.to_owned(),
            network,
            prefix,
        });
    }
    Ok((network, prefix))
}

/// `52:54:00:12:34:56` or `52-54-00-12-34-56`, any case.
pub fn parse_mac(text: &str) -> Result<[u8; 6], Problem> {
    let bad = || Problem::BadMac(text.to_owned());
    let sep = if text.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut parts = text.split(sep);
    for b in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// `8-4-4-4-12` hex or 32 hex digits, bytes in text order.
pub fn parse_uuid(text: &str) -> Result<[u8; 16], Problem> {
    let bad = || Problem::BadUuid(text.to_owned());
    let groups: Vec<&str> = text.split('-').collect();
    let shape_ok = match groups.len() {
        1 => groups[0].len() == 32,
        5 => groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]),
        _ => false,
    };
    let hex: String = groups.concat();
    if !shape_ok || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Keys per machine: far more than anyone lists, few enough to keep the node's config small.
pub const MAX_SSH_KEYS: usize = 64;

/// One `authorized_keys` line (sshd(8), "AUTHORIZED_KEYS FILE FORMAT": optional options, a key
/// type, the base64 key, a comment): one line of printable ASCII, at most 8 KiB, with a key
/// type word in it. Anything that could add a second line or a terminal escape is refused.
pub fn check_ssh_key(line: &str) -> Result<(), Problem> {
    let line = line.trim();
    let bad = |why: &str| Err(Problem::BadSshKey(why.to_owned()));
    if line.is_empty() {
        return bad("empty");
    }
    if line.len() > 8192 {
        return bad("longer than 8192 bytes");
    }
    if !line.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return bad("only printable ASCII on one line");
    }
    let typed = line
        .split_ascii_whitespace()
        .any(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-sha2-") || w.starts_with("sk-"));
    if !typed {
        return bad("no key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-..., sk-...)");
    }
    Ok(())
}

/// RFC 1123 §2.1 host names: what the iPXE `{hostname}` placeholder accepts, and stricter.
fn check_hostname(h: &str) -> Result<String, Problem> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(h.to_owned())
    } else {
        Err(Problem::BadHostname(h.to_owned()))
    }
}

/// A machine's label: `name`, or `key=value` as the control API and `ctl machines add --label`
/// write them (the API's labels are merged into the file's in that form).
fn check_label(label: &str) -> Result<(), Problem> {
    let part_ok = |part: &str, extra: &[u8], may_be_empty: bool| {
        (may_be_empty || !part.is_empty())
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
    };
    let ok = match label.split_once('=') {
        None => part_ok(label, b"", false),
        Some((key, value)) => part_ok(key, b"/", false) && part_ok(value, b"", true),
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::BadLabel(label.to_owned()))
    }
}

/// Profile names and labels: they show up in URLs, metrics and the API.
fn check_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Problem::BadName(name.to_owned()))
    }
}

/// Integer seconds, or `<n><unit>` groups with units `ms`, `s`, `m`, `h`, `d` (`1h30m`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

fn duration(
    key: &str,
    w: &wire::Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let value = match w {
        wire::Duration::Seconds(s) => Duration::from_secs(*s),
        wire::Duration::Text(t) => parse_duration(t)
            .ok_or_else(|| ConfigError::invalid(key, Problem::BadDuration(t.clone())))?,
    };
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            Problem::DurationOutOfRange { value, min, max },
        ));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Quick mode

/// What `stampede boot [--iface IF] [--dhcp-range START-END] [--cmdline STR] [--ipxe-dir DIR]
/// KERNEL INITRD...` asks for: boot every machine on the network into one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuickBoot {
    /// `None`: the interface of the default route (proxy mode only).
    pub iface: Option<String>,
    pub kernel: PathBuf,
    pub initrds: Vec<PathBuf>,
    pub cmdline: String,
    /// `None`: [`defaults::IPXE_DIR`].
    pub ipxe_dir: Option<PathBuf>,
    /// `Some`: authoritative DHCP handing out this range; `None`: ProxyDHCP beside the LAN's
    /// own DHCP server.
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `None`: [`defaults::HTTP_PORT`].
    pub http_port: Option<u16>,
    /// `boot.ipxe_chainload`: iPXE option ROMs get the loader, not the script.
    pub chainload: bool,
    /// `boot.roots_dir`: built diskless roots served by HTTP (`stampede boot --root`).
    pub roots_dir: Option<PathBuf>,
    /// The boot interface's address and prefix length, when known: `dhcp_range` must lie in
    /// its network, which becomes the pool's subnet.
    pub link: Option<(Ipv4Addr, u8)>,
    /// `--secure-boot shim`: x86-64 UEFI machines boot `shim` → `grub` → the kernel.
    pub secure_boot: Option<SecureBoot>,
    /// `--shim`, `--grub`: `None` is [`defaults::SHIM`], [`defaults::GRUB`].
    pub shim: Option<PathBuf>,
    pub grub: Option<PathBuf>,
}

/// Whether the command-line template `cmdline` fills in `{hostname}` (not the literal
/// `{{hostname}}`): rendered for a machine with every other fact known.
fn needs_hostname(cmdline: &str) -> bool {
    Template::parse(cmdline).is_ok_and(|t| {
        let facts = ipxe::MachineFacts {
            mac: [0; 6],
            uuid: Some([0; 16]),
            arch: Arch::X86_64Efi,
            ip: Some(Ipv4Addr::UNSPECIFIED),
            hostname: None,
        };
        t.render(&facts) == Err(ipxe::RenderError::MissingFact("hostname"))
    })
}

/// Name of the single profile quick mode makes.
pub const QUICK_PROFILE: &str = "quick";

impl ApplianceConfig {
    /// The configuration quick mode means, as a file would give it. The kernel and initrds are
    /// served by their file names (`/files/vmlinuz`), every machine boots them, the subnet of
    /// `dhcp_range` is the smallest one holding both ends but at least a /24 (the engine checks
    /// it against the interface's own prefix).
    pub fn quick(q: QuickBoot) -> Result<Self, ConfigError> {
        Self::try_from(Self::quick_parts(q)?)
    }

    fn quick_parts(q: QuickBoot) -> Result<wire::Config, ConfigError> {
        let mut files = BTreeMap::new();
        let mut served = |key: String, path: &PathBuf| -> Result<String, ConfigError> {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| BootPath::parse(n.as_bytes()).is_ok())
                .ok_or_else(|| ConfigError::invalid(&key, Problem::NoFileName(path.clone())))?
                .to_owned();
            if files.insert(name.clone(), path.clone()).is_some() {
                return Err(duplicate(
                    key,
                    &format!("file name {name:?}"),
                    "another file".into(),
                ));
            }
            Ok(name)
        };
        if needs_hostname(&q.cmdline) {
            return Err(ConfigError::invalid("--cmdline", Problem::NoHostnames));
        }
        let kernel = served("kernel".into(), &q.kernel)?;
        let initrds = q
            .initrds
            .iter()
            .enumerate()
            .map(|(i, p)| served(format!("initrds[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let dhcp = match q.dhcp_range {
            None => wire::Dhcp::default(),
            Some((start, end)) => {
                let subnet = match q.link {
                    Some((ip, prefix)) => {
                        let network = network_of(ip, prefix);
                        if network_of(start, prefix) != network
                            || network_of(end, prefix) != network
                        {
                            return Err(ConfigError::invalid(
                                "--dhcp-range",
                                Problem::NotOnLink {
                                    range: format!("{start}-{end}"),
                                    iface: q.iface.clone().unwrap_or_default(),
                                    network: format!("{network}/{prefix}"),
                                },
                            ));
                        }
                        format!("{network}/{prefix}")
                    }
                    None => {
                        let common = (u32::from(start) ^ u32::from(end)).leading_zeros().min(24);
                        format!("{}/{common}", network_of(start, common as u8))
                    }
                };
                wire::Dhcp {
                    mode: wire::DhcpMode::Authoritative,
                    pools: vec![wire::Pool {
                        range: format!("{start}-{end}"),
                        subnet,
                        ..wire::Pool::default()
                    }],
                    reservations: Vec::new(),
                }
            }
        };
        let wire = wire::Config {
            server: wire::Server {
                interfaces: q.iface.into_iter().collect(),
                http_port: q.http_port,
                ..wire::Server::default()
            },
            dhcp,
            boot: wire::Boot {
                files,
                ipxe_dir: q.ipxe_dir,
                default_profile: Some(QUICK_PROFILE.into()),
                ipxe_chainload: q.chainload,
                roots_dir: q.roots_dir,
                shim: q.shim,
                grub: q.grub,
                ..wire::Boot::default()
            },
            profiles: vec![wire::Profile {
                name: QUICK_PROFILE.into(),
                root: None,
                kernel: Some(kernel),
                initrds,
                cmdline: q.cmdline,
                arch: BTreeMap::new(),
                secure_boot: q.secure_boot.map(|SecureBoot::Shim| "shim".into()),
            }],
            ..wire::Config::default()
        };
        Ok(wire)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/stampede.example.toml");

    const MINIMAL: &str = r#"
[boot]
root = "/srv/boot"
default_profile = "live"

[[profiles]]
name = "live"
kernel = "vmlinuz"
"#;

    fn parse(text: &str) -> ApplianceConfig {
        ApplianceConfig::from_toml_str(text).unwrap_or_else(|e| panic!("config refused: {e}"))
    }

    /// The example, its root profile (resolved by the appliance) stood in for.
    pub(crate) fn example_without_roots(text: &str) -> ApplianceConfig {
        let wire = wire::Config::from_toml_str(text)
            .unwrap_or_else(|e| panic!("example refused: {e}"))
            .with_root_placeholders();
        ApplianceConfig::try_from(wire).unwrap_or_else(|e| panic!("example refused: {e}"))
    }

    /// The error for `MINIMAL` with `extra` appended; panics if it is accepted.
    fn refused(extra: &str) -> ConfigError {
        match ApplianceConfig::from_toml_str(&format!("{MINIMAL}\n{extra}")) {
            Ok(_) => panic!("accepted:\n{extra}"),
            Err(e) => e,
        }
    }

    #[test]
    fn example_file_parses_and_validates() {
        assert!(
            ApplianceConfig::from_toml_str(EXAMPLE)
                .is_err_and(|e| e.key().is_some_and(|k| k.ends_with(".root"))),
            "the example's root profile is left for the appliance to resolve"
        );
        let c = example_without_roots(EXAMPLE);
        assert_eq!(c.server.interfaces, ["eth1"]);
        assert_eq!(c.dhcp.mode, DhcpMode::Authoritative);
        assert_eq!(c.dhcp.pools.len(), 1, "one pool in the example");
        assert!(c.profiles.len() >= 2, "example shows several profiles");
        assert!(
            c.machines.iter().any(|m| !m.allow),
            "example shows a denied machine"
        );
        assert!(
            c.profiles.iter().any(|p| !p.boot.variants.is_empty()),
            "example shows an arch variant"
        );
        assert_eq!(c.xdp, Some(AttachMode::Auto));
        assert_eq!(
            c.xdp_filter,
            XdpFilterSettings {
                deny: vec![[0x52, 0x54, 0x00, 0xde, 0xad, 0x01]],
                ..XdpFilterSettings::default()
            },
            "the example shows every default and one denied MAC"
        );
    }

    #[test]
    fn api_tls_files_are_read_as_a_pair() {
        let text = format!(
            "[server]\napi = \"0.0.0.0:7443\"\napi_tls_cert = \"/etc/stampede/api.pem\"\n\
             api_tls_key = \"/etc/stampede/api.key\"\n{MINIMAL}"
        );
        let c = parse(&text);
        assert_eq!(
            c.server.api_tls,
            Some(ApiTlsFiles {
                cert: PathBuf::from("/etc/stampede/api.pem"),
                key: PathBuf::from("/etc/stampede/api.key"),
            })
        );
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = parse(MINIMAL);
        assert_eq!(c.server.http_port, 8080);
        assert_eq!(c.server.api, "127.0.0.1:7070".parse().expect("address"));
        assert_eq!(c.server.api_tls, None, "plain HTTP on loopback");
        assert_eq!(c.server.workers, None, "all cores");
        assert_eq!(
            c.dhcp.mode,
            DhcpMode::Proxy,
            "safe beside a LAN DHCP server"
        );
        assert_eq!(c.boot.ipxe_dir, PathBuf::from("/usr/lib/ipxe"));
        assert_eq!(c.boot.loaders, Loaders::default());
        assert_eq!(c.tftp.server.max_blksize, 1468);
        assert_eq!(c.tftp.server.max_windowsize, 16);
        assert_eq!(c.tftp.server.limits, tftp::TransferLimits::default());
        assert_eq!(c.http.server, http::ServerConfig::default());
        assert_eq!(c.xdp, Some(AttachMode::Auto));
        assert_eq!(c.boot.default_profile, Some(0));
    }

    #[test]
    fn afxdp_is_off_unless_asked_for() {
        assert_eq!(parse(MINIMAL).afxdp, AfXdpChoice::Off);
        for (text, want) in [
            ("off", AfXdpChoice::Off),
            ("auto", AfXdpChoice::Auto),
            ("on", AfXdpChoice::On),
        ] {
            let c = parse(&format!(
                "{MINIMAL}\n[xdp]\nmode = \"native\"\nafxdp = \"{text}\"\n"
            ));
            assert_eq!(c.afxdp, want, "{text}");
            assert_eq!(c.xdp, Some(AttachMode::Native));
        }
        let e = refused("[xdp]\nafxdp = \"yes\"");
        assert!(e.to_string().contains("yes"), "{e}");
    }

    #[test]
    fn syntax_and_unknown_keys_report_line_and_column() {
        let e = ApplianceConfig::from_toml_str("[server]\nhttp_port = 80\nhtp_port = 1\n")
            .expect_err("misspelt key");
        let ConfigError::Toml { line, message, .. } = &e else {
            panic!("expected a TOML error, got {e}");
        };
        assert_eq!(*line, 3, "{e}");
        assert!(message.contains("htp_port"), "{e}");
        let e = ApplianceConfig::from_toml_str("[boot\nroot = 1").expect_err("bad syntax");
        assert!(matches!(e, ConfigError::Toml { line: 1, .. }), "{e}");
        let e = refused("[dhcp]\nmode = \"dhcp\"");
        assert!(e.to_string().contains("dhcp"), "{e}");
    }

    /// Every validation error names its key; the message says what is wrong.
    #[test]
    fn each_invalid_value_names_its_key() {
        let pool = |range: &str, subnet: &str| {
            format!(
                "[server]\ninterfaces = [\"eth1\"]\n[dhcp]\nmode = \"authoritative\"\n\
                 [[dhcp.pools]]\nrange = \"{range}\"\nsubnet = \"{subnet}\"\n"
            )
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (
                pool("198.18.0.50-198.18.0.10", "198.18.0.0/24"),
                "dhcp.pools[0].range",
                "start 198.18.0.50 is after end 198.18.0.10",
            ),
            (pool("198.18.1.1-198.18.1.9", "198.18.0.0/24"), "dhcp.pools[0].range", "outside subnet"),
            (pool("198.18.0.1-198.18.0.9", "198.18.0.5/24"), "dhcp.pools[0].subnet", "did you mean 198.18.0.0/24"),
            (pool("198.18.0.1", "198.18.0.0/24"), "dhcp.pools[0].range", "not a range"),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24") + "lease_time = \"12 parsecs\"",
                "dhcp.pools[0].lease_time",
                "not a duration",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24") + "lease_time = 5",
                "dhcp.pools[0].lease_time",
                "out of range",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24") + "router = \"10.0.0.1\"",
                "dhcp.pools[0].router",
                "outside subnet",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24")
                    + "[[dhcp.pools]]\nrange = \"198.18.0.10-198.18.0.20\"\nsubnet = \"198.18.0.0/25\"",
                "dhcp.pools[1].subnet",
                "overlaps dhcp.pools[0]",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24")
                    + "[[dhcp.reservations]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.1.1.1\"",
                "dhcp.reservations[0].ip",
                "inside no pool",
            ),
            (
                "[dhcp]\nmode = \"authoritative\"\n[[dhcp.pools]]\nrange = \"198.18.0.1-198.18.0.9\"\nsubnet = \"198.18.0.0/24\"".into(),
                "server.interfaces",
                "needs server.interfaces",
            ),
            ("[server]\ninterfaces = [\"eth1\"]\n[dhcp]\nmode = \"authoritative\"".into(), "dhcp.pools", "at least one"),
            (
                "[[dhcp.pools]]\nrange = \"198.18.0.1-198.18.0.9\"\nsubnet = \"198.18.0.0/24\"".into(),
                "dhcp.pools",
                "only used with mode = \"authoritative\"",
            ),
            (
                "[[dhcp.reservations]]\nmac = \"52:54:00:00:00\"\nip = \"10.1.1.1\"".into(),
                "dhcp.reservations[0].mac",
                "not a MAC",
            ),
            ("[server]\ninterfaces = [\"eth1\", \"eth1\"]".into(), "server.interfaces[1]", "already used by server.interfaces[0]"),
            ("[server]\ninterfaces = [\"a very long name\"]".into(), "server.interfaces[0]", "not an interface name"),
            (
                "[server]\ninterfaces = [\"eth1\", \"eth2\"]\naddress = \"198.18.0.1\"".into(),
                "server.address",
                "2 interfaces",
            ),
            ("[server]\nhttp_port = 0".into(), "server.http_port", "out of range"),
            ("[server]\nworkers = 0".into(), "server.workers", "out of range"),
            ("[server]\napi = \"localhost\"".into(), "server.api", "not a socket address"),
            ("[server]\napi_tls_cert = \"/etc/stampede/api.pem\"".into(), "server.api_tls_key", "set both or neither"),
            ("[server]\napi_tls_key = \"/etc/stampede/api.key\"".into(), "server.api_tls_cert", "set both or neither"),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\ncmdline = \"ip={macc}\"".into(),
                "profiles[1].cmdline",
                "unknown placeholder {macc}",
            ),
            ("[[profiles]]\nname = \"x\"\nkernel = \"../etc/passwd\"".into(), "profiles[1].kernel", "`..`"),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\ninitrds = [\"a/i.img\", \"b/i.img\"]".into(),
                "profiles[1].initrds",
                "two initrds",
            ),
            ("[[profiles]]\nname = \"live\"\nkernel = \"k\"".into(), "profiles[1].name", "already used by profiles[0]"),
            ("[[profiles]]\nname = \"x\"".into(), "profiles[1].kernel", "give a kernel, or a root image"),
            ("[[profiles]]\nname = \"x\"\nroot = \"small\"".into(), "profiles[1].root", "\"small\" was not resolved"),
            ("[[profiles]]\nname = \"a b\"\nkernel = \"k\"".into(), "profiles[1].name", "not a name"),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\n[profiles.arch.efi-x64]\nkernel = \"k2\"".into(),
                "profiles[1].arch.efi-x64",
                "expected x86-bios, x86_64-efi or arm64-efi",
            ),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\n[profiles.arch.x86_64-efi]\ncmdline = \"a\\\\b\"".into(),
                "profiles[1].arch.x86_64-efi.cmdline",
                "not allowed",
            ),
            ("[[machines]]\nmac = \"52:54:00:00:00:01\"\nprofile = \"rescue\"".into(), "machines[0].profile", "no profile named \"rescue\""),
            ("[[machines]]\nprofile = \"live\"".into(), "machines[0]", "needs a mac or a uuid"),
            ("[[machines]]\nuuid = \"1234\"".into(), "machines[0].uuid", "not a UUID"),
            ("[[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"-bad\"".into(), "machines[0].hostname", "not a host name"),
            (
                "[[machines]]\nmac = \"52:54:00:00:00:01\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA x\\nssh-rsa BBBB y\"]".into(),
                "machines[0].ssh_authorized_keys[0]",
                "only printable ASCII on one line",
            ),
            (
                "[[machines]]\nmac = \"52:54:00:00:00:01\"\nssh_authorized_keys = [\"just words\"]".into(),
                "machines[0].ssh_authorized_keys[0]",
                "no key type",
            ),
            (
                "[[machines]]\nmac = \"52:54:00:00:00:01\"\n[[machines]]\nmac = \"52-54-00-00-00-01\"".into(),
                "machines[1].mac",
                "52:54:00:00:00:01 is already used by machines[0]",
            ),
            ("[tftp]\nmax_windowsize = 65".into(), "tftp.max_windowsize", "65 is out of range 1..=64"),
            ("[tftp]\nmax_blksize = 4".into(), "tftp.max_blksize", "out of range 8..=65464"),
            ("[tftp]\nidle_timeout = \"2x\"".into(), "tftp.idle_timeout", "not a duration"),
            ("[http]\nmax_connections = 0".into(), "http.max_connections", "out of range"),
            ("[xdp]\ndhcp_rate = 0".into(), "xdp.dhcp_rate", "0 is out of range 1..=100000"),
            ("[xdp]\ndhcp_burst = 0".into(), "xdp.dhcp_burst", "out of range"),
            ("[xdp]\ntftp_rate = 2000000".into(), "xdp.tftp_rate", "out of range 1..=1000000"),
            ("[xdp]\ntftp_burst = 0".into(), "xdp.tftp_burst", "out of range"),
            ("[xdp]\ndeny = [\"52:54:00:00:00\"]".into(), "xdp.deny[0]", "not a MAC"),
            (
                "[xdp]\ndeny = [\"52:54:00:00:00:01\", \"52-54-00-00-00-01\"]".into(),
                "xdp.deny[1]",
                "52:54:00:00:00:01 is already used by xdp.deny[0]",
            ),
        ];
        for (extra, key, text) in cases {
            let e = refused(&extra);
            assert_eq!(e.key(), Some(key), "wrong key for:\n{extra}\nerror: {e}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{key}: ")), "{msg}");
            assert!(msg.contains(text), "{msg:?} should say {text:?}");
        }
    }

    #[test]
    fn structural_errors_name_their_key() {
        let e =
            ApplianceConfig::from_toml_str("[boot]\nroot = \"/srv\"\n").expect_err("no profiles");
        assert_eq!(
            e.to_string(),
            "profiles: at least one [[profiles]] is needed"
        );
        let e = ApplianceConfig::from_toml_str(
            "[boot]\ndefault_profile = \"x\"\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\n",
        )
        .expect_err("nothing to serve");
        assert_eq!(e.key(), Some("boot.root"), "{e}");
        let e = ApplianceConfig::from_toml_str(
            "[boot]\nfiles = { k = \"/tmp/k\" }\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\ninitrds = [\"i\"]\n",
        )
        .expect_err("initrd not listed");
        assert_eq!(
            e.to_string(),
            "profiles[0].initrds: \"i\" is not in boot.files, and boot.root is not set"
        );
        let e = ApplianceConfig::from_toml_str(
            "[boot]\nroot = \"/srv\"\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\n[[machines]]\nmac = \"52:54:00:00:00:01\"\n",
        )
        .expect_err("machine without a profile and no default");
        assert_eq!(
            e.to_string(),
            "machines[0].profile: no profile given and boot.default_profile is not set"
        );
        parse(MINIMAL);
    }

    #[test]
    fn xdp_policy_keys_and_mac_lists() {
        let e = refused("[xdp]\npolicy = \"closed\"");
        assert!(
            e.to_string().contains("open") && e.to_string().contains("known-only"),
            "the error lists the choices: {e}"
        );
        let c = parse(MINIMAL);
        assert_eq!(c.xdp_filter, XdpFilterSettings::default());
        assert_eq!(c.xdp_filter.policy(), XdpPolicy::permissive());
        assert_eq!(
            c.xdp_mac_lists(),
            XdpMacLists::default(),
            "open, nothing denied"
        );

        let text = format!(
            "{MINIMAL}\n[xdp]\npolicy = \"known-only\"\ndhcp_rate = 2\ndhcp_burst = 4\n\
             tftp_rate = 100\ntftp_burst = 50\ndeny = [\"52:54:00:00:00:0f\"]\n\
             [[machines]]\nmac = \"52:54:00:00:00:01\"\n\
             [[machines]]\nmac = \"52:54:00:00:00:02\"\nallow = false\n\
             [[machines]]\nuuid = \"4c4c4544-004d-5910-8052-b2c04f353032\"\n"
        );
        let c = parse(&text);
        assert_eq!(
            c.xdp_filter.policy(),
            XdpPolicy {
                dhcp_rate_per_sec: 2,
                dhcp_burst: 4,
                tftp_rate_per_sec: 100,
                tftp_burst: 50,
                known_only: 1,
            }
        );
        let lists = c.xdp_mac_lists();
        let mac = |last| [0x52, 0x54, 0, 0, 0, last];
        assert_eq!(lists.deny, BTreeSet::from([mac(0x0f), mac(0x02)]));
        assert_eq!(lists.allow, BTreeSet::from([mac(0x01)]));
        assert_eq!(lists.uuid_only, 1);

        // Open mode: the same machines, no allow list; denied machines are still denied.
        let c = parse(&text.replace("known-only", "open"));
        let lists = c.xdp_mac_lists();
        assert_eq!(lists.deny.len(), 2);
        assert!(lists.allow.is_empty());
        assert_eq!(lists.uuid_only, 0);
    }

    #[test]
    fn secure_boot_is_a_profile_setting_with_the_chain_served_by_name() {
        let c = parse(&format!("{MINIMAL}secure_boot = \"shim\"\n"));
        assert_eq!(c.profiles[0].secure_boot, Some(SecureBoot::Shim));
        let shim = BootPath::parse(SHIM_NAME.as_bytes()).expect("path");
        assert_eq!(
            c.boot.files.get(&shim),
            Some(&PathBuf::from(defaults::SHIM))
        );
        assert_eq!(
            refused("secure_boot = \"tpm\"\n").to_string(),
            "profiles[0].secure_boot: \"tpm\" is not a Secure Boot chain: expected \"shim\""
        );
        // Without a Secure Boot profile the chain is not served.
        assert!(parse(MINIMAL).boot.files.is_empty());
        let q = ApplianceConfig::quick(QuickBoot {
            kernel: "/k/vmlinuz".into(),
            secure_boot: Some(SecureBoot::Shim),
            grub: Some("/g/grubnetx64.efi.signed".into()),
            ..QuickBoot::default()
        })
        .expect("valid");
        let grub = BootPath::parse(GRUB_NAME.as_bytes()).expect("path");
        assert_eq!(
            q.boot.files.get(&grub),
            Some(&PathBuf::from("/g/grubnetx64.efi.signed"))
        );
        assert_eq!(
            q.boot.files.get(&shim),
            Some(&PathBuf::from(defaults::SHIM))
        );
    }

    #[test]
    fn denied_machine_needs_no_profile() {
        let c = ApplianceConfig::from_toml_str(
            "[boot]\nroot = \"/srv\"\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\n\
             [[machines]]\nmac = \"52:54:00:00:00:01\"\nallow = false\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.machines[0].allow);
        assert_eq!(c.profile_of(&c.machines[0]), None);
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in ["", "h", "1y", "1.5h", "-1s", "1h 30m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_mac("52:54:00:AB:cd:ef"),
            Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert!(parse_mac("52:54:00:ab:cd:ef:00").is_err());
        assert!(parse_mac("5254.00ab.cdef").is_err());
        let uuid = parse_uuid("4c4c4544-004d-5910-8052-b2c04f353032").expect("uuid");
        assert_eq!(
            ipxe::format_uuid(&uuid),
            "4c4c4544-004d-5910-8052-b2c04f353032"
        );
        assert_eq!(parse_uuid("4c4c4544004d59108052b2c04f353032"), Ok(uuid));
        assert_eq!(
            parse_subnet("10.0.0.0/8"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(parse_subnet("0.0.0.0/0"), Ok((Ipv4Addr::UNSPECIFIED, 0)));
        assert!(parse_subnet("10.0.0.0/33").is_err());
        assert_eq!(line_column("ab\ncde\nf", 5), (2, 3));
    }

    #[test]
    fn quick_mode_is_proxy_unless_given_a_range() {
        let q = QuickBoot {
            kernel: "/tmp/build/vmlinuz".into(),
            initrds: vec!["/tmp/build/initrd.img".into(), "/opt/x/modules.cpio".into()],
            cmdline: "console=ttyS0 host={mac}".into(),
            ..QuickBoot::default()
        };
        let c = ApplianceConfig::quick(q.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
        assert!(c.server.interfaces.is_empty());
        assert_eq!(c.profiles[0].boot.default.kernel, "vmlinuz");
        assert_eq!(
            c.profiles[0].boot.default.initrds,
            ["initrd.img", "modules.cpio"]
        );
        assert_eq!(
            c.boot
                .files
                .get(&BootPath::parse(b"modules.cpio").expect("path")),
            Some(&PathBuf::from("/opt/x/modules.cpio"))
        );
        assert_eq!(c.boot.default_profile, Some(0));
        assert!(!c.boot.ipxe_chainload, "off unless asked for");
        let chained = ApplianceConfig::quick(QuickBoot {
            chainload: true,
            ..q.clone()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(chained.boot.ipxe_chainload);

        let e = ApplianceConfig::quick(QuickBoot {
            dhcp_range: Some((
                Ipv4Addr::new(198, 18, 0, 100),
                Ipv4Addr::new(198, 18, 0, 200),
            )),
            ..q.clone()
        })
        .expect_err("authoritative without an interface");
        assert_eq!(e.key(), Some("server.interfaces"));

        let c = ApplianceConfig::quick(QuickBoot {
            iface: Some("eth1".into()),
            dhcp_range: Some((
                Ipv4Addr::new(198, 18, 0, 100),
                Ipv4Addr::new(198, 18, 0, 200),
            )),
            ..q.clone()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.dhcp.mode, DhcpMode::Authoritative);
        let pool = &c.dhcp.pools[0];
        assert_eq!(
            (pool.subnet, pool.prefix_len),
            (Ipv4Addr::new(198, 18, 0, 0), 24)
        );

        let e = ApplianceConfig::quick(QuickBoot {
            initrds: vec!["/a/vmlinuz".into()],
            ..q.clone()
        })
        .expect_err("two files named vmlinuz");
        assert_eq!(e.key(), Some("initrds[0]"), "{e}");
        let e = ApplianceConfig::quick(QuickBoot {
            cmdline: "root=$x".into(),
            ..q
        })
        .expect_err("hostile cmdline");
        assert_eq!(e.key(), Some("profiles[0].cmdline"), "{e}");
    }

    #[test]
    fn a_dhcp_range_or_pool_off_the_link_is_refused_naming_both_networks() {
        let q = QuickBoot {
            iface: Some("eth1".into()),
            kernel: "/tmp/build/vmlinuz".into(),
            dhcp_range: Some((Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 50))),
            link: Some((Ipv4Addr::new(198, 18, 0, 1), 24)),
            ..QuickBoot::default()
        };
        let e = ApplianceConfig::quick(q.clone()).expect_err("a range of another network");
        assert_eq!(
            e.to_string(),
            "--dhcp-range: 10.0.0.10-10.0.0.50 is not in eth1's network 198.18.0.0/24"
        );
        let e = ApplianceConfig::quick(QuickBoot {
            dhcp_range: Some((
                Ipv4Addr::new(198, 18, 0, 200),
                Ipv4Addr::new(198, 18, 1, 20),
            )),
            ..q.clone()
        })
        .expect_err("a range running past the network");
        assert_eq!(e.key(), Some("--dhcp-range"), "{e}");
        // On the link, the pool takes the interface's prefix (not the /24 the range suggests).
        let c = ApplianceConfig::quick(QuickBoot {
            dhcp_range: Some((Ipv4Addr::new(198, 18, 5, 10), Ipv4Addr::new(198, 18, 5, 50))),
            link: Some((Ipv4Addr::new(198, 18, 0, 1), 16)),
            ..q
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let pool = &c.dhcp.pools[0];
        assert_eq!(
            (pool.subnet, pool.prefix_len),
            (Ipv4Addr::new(198, 18, 0, 0), 16)
        );
        c.dhcp
            .check_link("eth1", Ipv4Addr::new(198, 18, 0, 1), 16)
            .unwrap_or_else(|e| panic!("{e}"));

        let file = |subnet: &str, range: &str| {
            parse(&format!(
                "{MINIMAL}\n[server]\ninterfaces = [\"eth1\"]\n[dhcp]\nmode = \"authoritative\"\n\
                 [[dhcp.pools]]\nsubnet = \"{subnet}\"\nrange = \"{range}\"\n\
                 [[dhcp.pools]]\nsubnet = \"198.19.7.0/24\"\nrange = \"198.19.7.10-198.19.7.20\"\n"
            ))
        };
        let server = Ipv4Addr::new(198, 18, 0, 1);
        let e = file("10.0.0.0/24", "10.0.0.10-10.0.0.50")
            .dhcp
            .check_link("eth1", server, 24)
            .expect_err("no pool on the link");
        assert_eq!(
            e.to_string(),
            "dhcp.pools: no pool is on eth1's network 198.18.0.0/24 (the pools are on \
             10.0.0.0/24, 198.19.7.0/24): machines on the link would be handed addresses of \
             another network"
        );
        let e = file("198.18.0.0/16", "198.18.3.10-198.18.3.50")
            .dhcp
            .check_link("eth1", server, 24)
            .expect_err("a range beyond the interface's network");
        assert_eq!(
            e.to_string(),
            "dhcp.pools[0].range: 198.18.3.10-198.18.3.50 is not in eth1's network 198.18.0.0/24"
        );
        // A relayed network's pool beside the link's own is fine.
        file("198.18.0.0/24", "198.18.0.10-198.18.0.50")
            .dhcp
            .check_link("eth1", server, 24)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn quick_mode_refuses_a_hostname_it_cannot_know() {
        let q = QuickBoot {
            kernel: "/tmp/build/vmlinuz".into(),
            cmdline: "console=ttyS0 hostname={hostname}".into(),
            ..QuickBoot::default()
        };
        let e = ApplianceConfig::quick(q.clone()).expect_err("no host names in quick mode");
        assert_eq!(e.key(), Some("--cmdline"), "{e}");
        assert!(
            e.to_string()
                .contains("{hostname} needs each machine's host name"),
            "{e}"
        );
        for fine in [
            "literal={{hostname}}",
            "host={mac} ip={ip} arch={arch} id={uuid}",
        ] {
            ApplianceConfig::quick(QuickBoot {
                cmdline: fine.into(),
                ..q.clone()
            })
            .unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
    }

    #[test]
    fn every_error_of_a_file_is_reported_not_only_the_first() {
        let text = r#"
[server]
interfaces = ["eth1"]
http_port = 0
[dhcp]
mode = "authoritative"
[[dhcp.pools]]
subnet = "198.18.0.0/24"
range = "198.18.0.50-198.18.0.10"
[[dhcp.pools]]
subnet = "198.18.9.0/24"
range = "198.18.9.10-198.18.9.20"
[[dhcp.reservations]]
mac = "52:54:00:00:00:zz"
ip = "198.18.9.5"
[boot]
root = "/srv/boot"
default_profile = "live"
[[profiles]]
name = "live"
kernel = "vmlinuz"
cmdline = "console=ttyS0 {macc}"
[[profiles]]
name = "rescue"
kernel = "../etc/shadow"
[[machines]]
mac = "52:54:00:00:00:01"
profile = "live"
[[machines]]
mac = "not-a-mac"
[[machines]]
mac = "52:54:00:00:00:03"
profile = "nope"
[tftp]
max_blksize = 1
"#;
        let wire = wire::Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
        let errors = ApplianceConfig::all_errors(&wire);
        let keys: Vec<&str> = errors.iter().filter_map(ConfigError::key).collect();
        assert_eq!(
            keys,
            [
                "server.http_port",
                "profiles[0].cmdline",
                "profiles[1].kernel",
                "dhcp.pools[0].range",
                "dhcp.reservations[0].mac",
                "machines[1].mac",
                "machines[2].profile",
                "tftp.max_blksize",
            ],
            "{errors:#?}"
        );
        let first = ApplianceConfig::try_from(wire).expect_err("refused");
        assert_eq!(first, errors[0], "the first is the one TryFrom reports");
        let fine = wire::Config::from_toml_str(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ApplianceConfig::all_errors(&fine), []);
    }
}
