//! Quick mode: the configuration `stampede boot KERNEL INITRD..` means.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use stampede_proto::bootpath::BootPath;
use stampede_proto::ipxe::{self, Arch, Template};

use super::error::{ConfigError, Problem};
use super::settings::{ApplianceConfig, SecureBoot, network_of};
use super::validate::duplicate;
use super::wire;

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
    /// `--https-port`: HTTPS boot beside HTTP (`http.https_port`).
    pub https_port: Option<u16>,
    /// `--tls-cert`, `--tls-key`: the operator's certificate instead of the appliance CA's.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--https-boot-urls`: hand out `https://` boot URLs (`http.https_boot_urls`).
    pub https_boot_urls: bool,
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

    /// The configuration quick mode means, before validation (see [`ApplianceConfig::quick`]).
    pub fn quick_wire(q: QuickBoot) -> Result<wire::Config, ConfigError> {
        Self::quick_parts(q)
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
            http: wire::Http {
                https_port: q.https_port,
                tls_cert: q.tls_cert,
                tls_key: q.tls_key,
                https_boot_urls: q.https_boot_urls,
                ..wire::Http::default()
            },
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
