//! Why a configuration cannot be used: every error names the key it is about.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use stampede_proto::bootpath::PathRejection;
use stampede_proto::ipxe::ProfileError;

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
    pub(super) fn invalid(key: impl Into<String>, problem: Problem) -> Self {
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
    #[error("only means something with {0} set")]
    Requires(&'static str),
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
