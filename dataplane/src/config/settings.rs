//! The validated configuration: what the engine and [`crate::boot::BootPlan`] consume.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;

use stampede_proto::bootpath::BootPath;
use stampede_proto::dhcp::{Loaders, Pool};
use stampede_proto::ipxe::{self};
use stampede_proto::{http, tftp};

use stampede_ebpf_common::XdpPolicy;

use crate::xdp::AttachMode;

use super::error::{ConfigError, Problem};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub server: http::ServerConfig,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// HTTPS boot beside plain HTTP; `None`: plain HTTP only (the default).
    pub https: Option<HttpsSettings>,
}

/// `http.https_port`, `http.tls_cert`, `http.tls_key`, `http.https_boot_urls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsSettings {
    pub port: u16,
    pub identity: TlsIdentity,
    /// iPXE scripts name kernels and initrds by `https://` URLs.
    pub boot_urls: bool,
}

/// Whose certificate HTTPS boot presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsIdentity {
    /// Issued at each start by the appliance CA (`<state dir>/ca/`) for the boot address.
    ApplianceCa,
    /// The operator's PEM certificate chain and key, read when the server starts.
    Files { cert: PathBuf, key: PathBuf },
}

impl ApplianceConfig {
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
