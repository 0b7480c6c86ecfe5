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
//! - The sections: [`ServerSettings`], [`DhcpSettings`] (with proto
//!   [`Pool`](stampede_proto::dhcp::Pool)s ready to use), [`BootSettings`], [`Profile`] (an
//!   [`ipxe::BootProfile`](stampede_proto::ipxe::BootProfile) already validated), [`Machine`],
//!   [`TftpSettings`], [`HttpSettings`], `xdp` as an optional
//!   [`AttachMode`](crate::xdp::AttachMode), and [`XdpFilterSettings`] (the drop policy the XDP
//!   classifier enforces).
//!
//! The annotated example `docs/stampede.example.toml` lists every key with its default; a test
//! (`tests`) parses it, so it cannot drift from this code.
//!
//! # Layout
//! Parts import their siblings, never this module, which only names them:
//! - `wire`: the serde form of the file, and TOML errors with line and column;
//! - `settings`: the validated domain types ([`ApplianceConfig`] and its sections);
//! - `validate`: `TryFrom<wire::Config>` and [`ApplianceConfig::all_errors`];
//! - `parse`: value parsers (ranges, subnets, UUIDs, durations, names, SSH keys);
//! - `quick`: the configuration of `stampede boot` ([`QuickBoot`]);
//! - `error`: [`ConfigError`] and [`Problem`]; [`defaults`]: every default.

pub mod defaults;
mod error;
mod parse;
mod quick;
mod settings;
mod validate;
pub mod wire;

#[cfg(test)]
pub(crate) mod tests;

pub use error::{ConfigError, Problem};
pub use parse::{
    MAX_SSH_KEYS, check_ssh_key, parse_arch, parse_duration, parse_mac, parse_range, parse_subnet,
    parse_uuid,
};
pub use quick::{QUICK_PROFILE, QuickBoot};
pub use settings::{
    AfXdpChoice, ApiTlsFiles, ApplianceConfig, BootSettings, DhcpMode, DhcpSettings, GRUB_NAME,
    HttpSettings, HttpsSettings, MacPolicy, Machine, Profile, Reservation, SHIM_NAME, SecureBoot,
    ServerSettings, TftpSettings, TlsIdentity, XdpFilterSettings, XdpMacLists, network_of,
};
