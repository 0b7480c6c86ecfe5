//! The Linux capabilities `serve` and `boot` need, checked before the appliance does anything
//! else (opens its state, prints a token, pulls an image), so that an operator who starts it as
//! the wrong user reads which capability is missing, not the `EACCES` of some later step.
//!
//! What each capability is for was measured on Linux 6.18 by starting `stampede boot` as
//! `nobody` under `setpriv` with every subset of the five (tests/service_lab.rs starts it under
//! the unit's set, packaging/stampede.service):
//! - `CAP_NET_BIND_SERVICE`: DHCP (67) and TFTP (69) are below
//!   `net.ipv4.ip_unprivileged_port_start` (1024 by default; the PXE port 4011 is above it):
//!   without it the start fails.
//! - `CAP_BPF`: creating the classifier's maps; `CAP_PERFMON`: the verifier refuses the program
//!   without it (`BPF_PROG_LOAD`: EACCES); `CAP_NET_ADMIN`: the `XSKMAP` map and the attach to
//!   the interface, and `SO_RCVBUFFORCE` (32 MiB receive buffers instead of
//!   `net.core.rmem_max`). Without them the appliance serves from sockets alone.
//! - `CAP_NET_RAW`: the raw ICMPv6 socket that answers router solicitations.
//! - Not needed: `SO_BINDTODEVICE` (unprivileged since Linux 5.7 for a socket not yet bound to a
//!   device), io_uring, the open-file limit (the soft limit is raised to the hard one only).

use std::fmt;

use stampede_dataplane::config::{AfXdpChoice, ApplianceConfig, DhcpMode};

use crate::{BootArgs, ControlArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    NetBindService,
    NetAdmin,
    NetRaw,
    Bpf,
    Perfmon,
}

impl Capability {
    /// The capability's number (linux/capability.h), its bit in `CapEff`.
    const fn number(self) -> u32 {
        match self {
            Self::NetBindService => 10,
            Self::NetAdmin => 12,
            Self::NetRaw => 13,
            Self::Perfmon => 38,
            Self::Bpf => 39,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::NetBindService => "CAP_NET_BIND_SERVICE",
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::NetRaw => "CAP_NET_RAW",
            Self::Bpf => "CAP_BPF",
            Self::Perfmon => "CAP_PERFMON",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `CAP_SYS_ADMIN` also grants what `CAP_BPF` and `CAP_PERFMON` do (the kernel's
/// `bpf_capable()` and `perfmon_capable()`); before Linux 5.8 it was the only way.
const CAP_SYS_ADMIN: u32 = 21;

/// A process's effective capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilitySet(u64);

impl CapabilitySet {
    /// This process's, from the `CapEff` line of `/proc/self/status`.
    pub fn effective() -> anyhow::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| anyhow::anyhow!("reading /proc/self/status for the capabilities: {e}"))?;
        Self::from_status(&status)
            .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no readable CapEff line"))
    }

    fn from_status(status: &str) -> Option<Self> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok().map(Self)
    }

    fn bit(self, number: u32) -> bool {
        self.0 & (1 << number) != 0
    }

    pub fn has(self, capability: Capability) -> bool {
        self.bit(capability.number())
            || matches!(capability, Capability::Bpf | Capability::Perfmon)
                && self.bit(CAP_SYS_ADMIN)
    }
}

/// Whether a start without the XDP classifier's capabilities goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpDuty {
    Off,
    /// The appliance serves from sockets alone when the classifier cannot attach.
    BestEffort,
    /// It cannot start without it: `serve --iface` (the classifier is all it does) and
    /// `xdp.afxdp = on`.
    Required,
}

/// What a start will do that the kernel checks a capability for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duties {
    /// Ports bound, with what each is ("DHCP port 67").
    pub ports: Vec<(u16, &'static str)>,
    /// `net.ipv4.ip_unprivileged_port_start` of this network namespace: ports below it need
    /// `CAP_NET_BIND_SERVICE`.
    pub unprivileged_port_start: u16,
    pub xdp: XdpDuty,
    pub router_advertisements: bool,
    /// UDP sockets that ask for `SO_RCVBUFFORCE`.
    pub socket_buffers: bool,
}

/// One capability and what it is needed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub capability: Capability,
    /// What cannot be done without it ("bind DHCP port 67").
    pub purposes: Vec<String>,
    /// The start fails without it (otherwise that part is off).
    pub required: bool,
}

impl Duties {
    /// `stampede boot`: DHCP (proxy or authoritative) and TFTP always.
    pub fn for_boot(args: &BootArgs) -> Self {
        let http = args
            .http_port
            .unwrap_or(stampede_dataplane::config::defaults::HTTP_PORT);
        let xdp = match (args.xdp_mode.as_str(), args.afxdp.as_str()) {
            ("off", _) => XdpDuty::Off,
            (_, "on") => XdpDuty::Required,
            _ => XdpDuty::BestEffort,
        };
        Self {
            ports: serving_ports(true, http, api_port(&args.control, None)),
            unprivileged_port_start: unprivileged_port_start(),
            xdp,
            router_advertisements: args.router_advertisements != "off",
            socket_buffers: true,
        }
    }

    /// `stampede serve --config FILE`.
    pub fn for_config(config: &ApplianceConfig, control: &ControlArgs) -> Self {
        let xdp = match (config.xdp, config.afxdp) {
            (None, _) => XdpDuty::Off,
            (Some(_), AfXdpChoice::On) => XdpDuty::Required,
            (Some(_), _) => XdpDuty::BestEffort,
        };
        Self {
            ports: serving_ports(
                config.dhcp.mode != DhcpMode::Off,
                config.server.http_port,
                api_port(control, Some(config.server.api.port())),
            ),
            unprivileged_port_start: unprivileged_port_start(),
            xdp,
            router_advertisements: config.server.router_advertisements,
            socket_buffers: true,
        }
    }

    /// `stampede serve --iface IF`: the XDP classifier and its counters, nothing else.
    pub fn classifier_only() -> Self {
        Self {
            ports: Vec::new(),
            unprivileged_port_start: unprivileged_port_start(),
            xdp: XdpDuty::Required,
            router_advertisements: false,
            socket_buffers: false,
        }
    }

    /// Every capability these duties need, in a stable order, each once.
    pub fn needs(&self) -> Vec<Need> {
        let mut needs: Vec<Need> = Vec::new();
        let mut add = |capability, purpose: &str, required| match needs
            .iter_mut()
            .find(|n| n.capability == capability)
        {
            Some(need) => {
                if !need.purposes.iter().any(|p| p == purpose) {
                    need.purposes.push(purpose.to_owned());
                }
                need.required |= required;
            }
            None => needs.push(Need {
                capability,
                purposes: vec![purpose.to_owned()],
                required,
            }),
        };
        let privileged: Vec<String> = self
            .ports
            .iter()
            .filter(|(port, _)| *port != 0 && *port < self.unprivileged_port_start)
            .map(|(port, what)| format!("{what} {port}"))
            .collect();
        if !privileged.is_empty() {
            add(
                Capability::NetBindService,
                &format!("bind {}", and_list(&privileged)),
                true,
            );
        }
        if self.xdp != XdpDuty::Off {
            let required = self.xdp == XdpDuty::Required;
            add(Capability::Bpf, "load the XDP classifier", required);
            add(Capability::Perfmon, "load the XDP classifier", required);
            add(Capability::NetAdmin, "attach XDP", required);
        }
        if self.socket_buffers {
            add(
                Capability::NetAdmin,
                "32 MiB socket receive buffers past net.core.rmem_max",
                false,
            );
        }
        if self.router_advertisements {
            add(
                Capability::NetRaw,
                "answer IPv6 router solicitations",
                false,
            );
        }
        needs
    }
}

/// DHCP binds its port and the PXE port whenever it runs (proxy or authoritative); TFTP and
/// HTTP always; the API unless it is off.
fn serving_ports(dhcp: bool, http: u16, api: Option<u16>) -> Vec<(u16, &'static str)> {
    let ports = stampede_dataplane::engine::Ports::default();
    let mut out = Vec::new();
    if dhcp {
        out.push((ports.dhcp, "DHCP port"));
        out.push((ports.proxy_dhcp, "PXE port"));
    }
    out.push((ports.tftp, "TFTP port"));
    out.push((http, "HTTP port"));
    if let Some(api) = api {
        out.push((api, "control API port"));
    }
    out
}

/// The API's port from `--api` (which the start checks later), else the configuration's.
fn api_port(control: &ControlArgs, configured: Option<u16>) -> Option<u16> {
    match control.api.as_deref() {
        Some("off") => None,
        Some(addr) => addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port()),
        None => configured.or_else(|| {
            stampede_dataplane::config::defaults::API
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        }),
    }
}

/// Linux's default when the sysctl cannot be read.
const DEFAULT_UNPRIVILEGED_PORT_START: u16 = 1024;

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(DEFAULT_UNPRIVILEGED_PORT_START)
}

/// The start was refused: capabilities it cannot do without are missing. `main` exits with
/// [`MissingCapabilities::EXIT_STATUS`], which the unit does not restart on.
#[derive(Debug)]
pub struct MissingCapabilities(pub Vec<Need>);

impl fmt::Display for MissingCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let them = if self.0.len() == 1 { "it" } else { "them" };
        write!(
            f,
            "missing {}; run as root or grant {them} (see packaging/stampede.service)",
            describe(&self.0)
        )
    }
}

impl std::error::Error for MissingCapabilities {}

impl MissingCapabilities {
    /// sysexits.h `EX_NOPERM`; `RestartPreventExitStatus=` in packaging/stampede.service.
    pub const EXIT_STATUS: u8 = 77;
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn describe(needs: &[Need]) -> String {
    let parts: Vec<String> = needs
        .iter()
        .map(|n| format!("{} ({})", n.capability, n.purposes.join(", ")))
        .collect();
    and_list(&parts)
}

/// What a start with `have` may do: `Err` with the capabilities it cannot do without, or the
/// ones whose parts will be off.
pub fn verdict(needs: Vec<Need>, have: CapabilitySet) -> Result<Vec<Need>, MissingCapabilities> {
    let (required, optional): (Vec<Need>, Vec<Need>) = needs
        .into_iter()
        .filter(|n| !have.has(n.capability))
        .partition(|n| n.required);
    if required.is_empty() {
        Ok(optional)
    } else {
        Err(MissingCapabilities(required))
    }
}

/// Checks this process's capabilities against `duties`: refuses the start when one it cannot
/// do without is missing, and says which parts will be off otherwise.
pub fn check(duties: &Duties) -> anyhow::Result<()> {
    let have = CapabilitySet::effective()?;
    let degraded = verdict(duties.needs(), have)?;
    if !degraded.is_empty() {
        tracing::warn!(
            "running without {}: those parts are off; run as root or grant them (see \
             packaging/stampede.service)",
            describe(&degraded)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapabilitySet {
        CapabilitySet(caps.iter().fold(0, |acc, c| acc | 1 << c.number()))
    }

    fn boot_duties() -> Duties {
        Duties {
            ports: serving_ports(true, 8080, Some(7070)),
            unprivileged_port_start: 1024,
            xdp: XdpDuty::BestEffort,
            router_advertisements: true,
            socket_buffers: true,
        }
    }

    #[test]
    fn cap_eff_is_read_from_proc_status() {
        let status = "Name:\tstampede\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                      CapEff:\t0000000000003400\nCapBnd:\t000001fffeffffff\n";
        let caps = CapabilitySet::from_status(status).expect("CapEff");
        assert!(caps.has(Capability::NetBindService));
        assert!(caps.has(Capability::NetAdmin));
        assert!(caps.has(Capability::NetRaw));
        assert!(!caps.has(Capability::Bpf));
        assert_eq!(CapabilitySet::from_status("Name:\tx\n"), None);
        assert_eq!(CapabilitySet::from_status("CapEff:\tzz\n"), None);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let caps = CapabilitySet(1 << CAP_SYS_ADMIN);
        assert!(caps.has(Capability::Bpf) && caps.has(Capability::Perfmon));
        assert!(!caps.has(Capability::NetAdmin));
    }

    #[test]
    fn no_capabilities_refuses_naming_the_ports() {
        let err = verdict(boot_duties().needs(), set(&[])).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "missing CAP_NET_BIND_SERVICE (bind DHCP port 67 and TFTP port 69); run as root or \
             grant it (see packaging/stampede.service)"
        );
    }

    #[test]
    fn without_the_optional_ones_the_start_goes_on_and_names_them() {
        let degraded =
            verdict(boot_duties().needs(), set(&[Capability::NetBindService])).expect("starts");
        assert_eq!(
            describe(&degraded),
            "CAP_BPF (load the XDP classifier), CAP_PERFMON (load the XDP classifier), \
             CAP_NET_ADMIN (attach XDP, 32 MiB socket receive buffers past net.core.rmem_max) \
             and CAP_NET_RAW (answer IPv6 router solicitations)"
        );
        let all = set(&[
            Capability::NetBindService,
            Capability::NetAdmin,
            Capability::NetRaw,
            Capability::Bpf,
            Capability::Perfmon,
        ]);
        assert_eq!(verdict(boot_duties().needs(), all).expect("starts"), vec![]);
    }

    #[test]
    fn ports_above_the_unprivileged_start_need_nothing() {
        let mut duties = boot_duties();
        duties.unprivileged_port_start = 0;
        duties.xdp = XdpDuty::Off;
        duties.router_advertisements = false;
        duties.socket_buffers = false;
        assert_eq!(duties.needs(), vec![]);
    }

    #[test]
    fn required_xdp_refuses_naming_each_capability() {
        let duties = Duties::classifier_only();
        let err = verdict(duties.needs(), set(&[Capability::Bpf])).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "missing CAP_PERFMON (load the XDP classifier) and CAP_NET_ADMIN (attach XDP); run \
             as root or grant them (see packaging/stampede.service)"
        );
    }
}
