//! `TryFrom<wire::Config>`: every check between the file and [`ApplianceConfig`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use stampede_proto::MacAddr;
use stampede_proto::bootpath::BootPath;
use stampede_proto::dhcp::{Loaders, Pool};
use stampede_proto::ipxe::{self, BootFiles, Template};
use stampede_proto::{http, tftp};

use crate::xdp::AttachMode;

use super::defaults;
use super::error::{ConfigError, Problem};
use super::parse::{
    MAX_SSH_KEYS, check_hostname, check_label, check_name, check_ssh_key, parse_arch,
    parse_duration, parse_mac, parse_path, parse_range, parse_subnet, parse_uuid,
};
use super::settings::{
    AfXdpChoice, ApiTlsFiles, ApplianceConfig, BootSettings, DhcpMode, DhcpSettings, GRUB_NAME,
    HttpSettings, HttpsSettings, MacPolicy, Machine, Profile, Reservation, SHIM_NAME, SecureBoot,
    ServerSettings, TftpSettings, TlsIdentity, XdpFilterSettings,
};
use super::wire;

impl ApplianceConfig {
    /// Parses and validates the text of a configuration file.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::try_from(wire::Config::from_toml_str(text)?)
    }
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

pub(super) fn duplicate(key: String, value: &dyn fmt::Display, first: String) -> ConfigError {
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
                &MacAddr(mac),
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
            return Err(duplicate(key, &MacAddr(mac), format!("xdp.deny[{first}]")));
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
    let https = match (w.https_port, &w.tls_cert, &w.tls_key) {
        (None, None, None) if !w.https_boot_urls => None,
        (None, ..) => {
            let key = if w.https_boot_urls {
                "http.https_boot_urls"
            } else if w.tls_cert.is_some() {
                "http.tls_cert"
            } else {
                "http.tls_key"
            };
            return Err(ConfigError::invalid(
                key,
                Problem::Requires("http.https_port"),
            ));
        }
        (Some(0), ..) => return Err(out_of_range("http.https_port", 0, 1, 65535)),
        (Some(port), cert, key) => Some(HttpsSettings {
            port,
            boot_urls: w.https_boot_urls,
            identity: match (cert, key) {
                (None, None) => TlsIdentity::ApplianceCa,
                (Some(cert), Some(key)) => TlsIdentity::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        "http.tls_key",
                        Problem::TlsPairIncomplete,
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        "http.tls_cert",
                        Problem::TlsPairIncomplete,
                    ));
                }
            },
        }),
    };
    Ok(HttpSettings {
        https,
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
