//! The fleet as the control plane stores it: machines, boot profiles, images.
//!
//! Each resource has a serde wire type (`*Spec`, what the API and `fleet.toml` accept) that is
//! validated by `TryFrom` into the domain type that is stored and published to the data plane.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use stampede_proto::dhcp::ClientArch;

/// Why a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error(transparent)]
    Mac(#[from] stampede_proto::MacParseError),
    #[error("invalid UUID {0:?}: expected 32 hex digits, optionally in 8-4-4-4-12 groups")]
    Uuid(String),
    #[error(
        "invalid hostname {0:?}: RFC 1123 labels of letters, digits and '-', at most 253 bytes"
    )]
    Hostname(String),
    #[error("invalid name {0:?}: 1 to 64 of [A-Za-z0-9._-], not starting with '.' or '-'")]
    Name(String),
    #[error("invalid label {key:?}: {reason}")]
    Label { key: String, reason: &'static str },
    #[error("profile {profile:?}: {reason}")]
    Profile {
        profile: String,
        reason: &'static str,
    },
    #[error(
        "invalid root name {0:?}: 1 to 128 of [A-Za-z0-9._:@/-], starting with a letter or \
         digit, without `..` or `//`, and not `sha256:` (that prefix names a root by digest)"
    )]
    RootName(String),
    #[error(
        "invalid SSH key {0}: one authorized_keys line of printable ASCII, at most 8192 bytes, at \
         most 64 keys"
    )]
    SshKey(usize),
}

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff` (lower case) on the wire and in keys: the
/// workspace's one MAC type, from proto.
pub use stampede_proto::MacAddr;

/// Firmware family a profile variant is chosen by. HTTP-boot flavours of an architecture boot the
/// same kernel, so they map to the same `Arch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86Bios,
    EfiIa32,
    EfiX64,
    EfiArm32,
    EfiArm64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86Bios => "x86_bios",
            Self::EfiIa32 => "efi_ia32",
            Self::EfiX64 => "efi_x64",
            Self::EfiArm32 => "efi_arm32",
            Self::EfiArm64 => "efi_arm64",
        }
    }

    /// The family of a DHCP option 93 value; `None` for architectures Stampede does not boot.
    pub fn from_client_arch(arch: ClientArch) -> Option<Self> {
        Some(match arch {
            ClientArch::X86Bios => Self::X86Bios,
            ClientArch::EfiIa32 | ClientArch::EfiIa32Http => Self::EfiIa32,
            // 9 is x64 in practice (see `ClientArch::EfiBc`).
            ClientArch::EfiX64
            | ClientArch::EfiBc
            | ClientArch::EfiX64Http
            | ClientArch::EfiBcHttp => Self::EfiX64,
            ClientArch::EfiArm32 | ClientArch::EfiArm32Http => Self::EfiArm32,
            ClientArch::EfiArm64 | ClientArch::EfiArm64Http => Self::EfiArm64,
            _ => return None,
        })
    }
}

/// Whether the data plane answers a machine at all. `Deny` keeps a machine that is known (and
/// audited) from booting, e.g. while it is being repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootPolicy {
    #[default]
    Allow,
    Deny,
}

/// A machine as the API and `fleet.toml` declare it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default)]
    pub boot: BootPolicy,
    /// Lines a diskless machine's node agent writes to `/root/.ssh/authorized_keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// A validated machine. Serialized form is the same shape as [`MachineSpec`], normalized (MAC and
/// UUID in lower case), so what the API returns can be sent back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default)]
    pub boot: BootPolicy,
    /// Lines a diskless machine's node agent writes to `/root/.ssh/authorized_keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

impl TryFrom<MachineSpec> for Machine {
    type Error = ValidationError;

    fn try_from(spec: MachineSpec) -> Result<Self, Self::Error> {
        let mac = spec.mac.parse()?;
        let uuid = spec.uuid.map(|u| normalize_uuid(&u)).transpose()?;
        if let Some(host) = &spec.hostname {
            validate_hostname(host)?;
        }
        for (key, value) in &spec.labels {
            validate_label(key, value)?;
        }
        if let Some(profile) = &spec.profile {
            validate_name(profile)?;
        }
        // The appliance checks each line's form with the configuration's rules too (a key
        // type word); here what could break the file: a second line, control bytes, size.
        for (i, key) in spec.ssh_authorized_keys.iter().enumerate() {
            let key = key.trim();
            if i >= 64
                || key.is_empty()
                || key.len() > 8192
                || !key.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(ValidationError::SshKey(i));
            }
        }
        Ok(Self {
            mac,
            uuid,
            arch: spec.arch,
            hostname: spec.hostname.map(|h| h.to_ascii_lowercase()),
            labels: spec.labels,
            profile: spec.profile,
            boot: spec.boot,
            ssh_authorized_keys: spec
                .ssh_authorized_keys
                .iter()
                .map(|k| k.trim().to_owned())
                .collect(),
        })
    }
}

impl From<Machine> for MachineSpec {
    fn from(m: Machine) -> Self {
        Self {
            mac: m.mac.to_string(),
            uuid: m.uuid,
            arch: m.arch,
            hostname: m.hostname,
            labels: m.labels,
            profile: m.profile,
            boot: m.boot,
            ssh_authorized_keys: m.ssh_authorized_keys,
        }
    }
}

/// What to boot: a kernel, its initrds and command line, for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTarget {
    /// Empty only in a profile with a `root`: the root image's own kernel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrds: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
}

/// A boot profile as the API and `fleet.toml` declare it; also its stored form (validation does
/// not change its shape). Unknown fields are refused by the flattened [`BootTarget`] (serde does
/// not support `deny_unknown_fields` next to `flatten`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpec {
    pub name: String,
    /// A diskless root image (see [`RootImage`]) by name, or by digest as `sha256:HEX`: the
    /// machine boots the root's kernel (unless `kernel` overrides it) and node initramfs, with
    /// the manifest's URL added to the command line. Resolved by the appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(flatten)]
    pub default: BootTarget,
    /// iPXE script template; `None` means the data plane's built-in script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipxe_template: Option<String>,
    /// Per-architecture overrides of the default boot target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<Arch, BootTarget>,
    /// The signed chain x86-64 UEFI PXE machines of this profile boot when their firmware
    /// enforces Secure Boot (firmware does not say so in DHCP, so the profile decides), as the
    /// configuration file's `secure_boot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootChain>,
}

/// A Secure Boot chain a profile can hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureBootChain {
    /// The distribution's Microsoft-signed shim, its signed GRUB netboot image and the
    /// profile's signed kernel.
    Shim,
}

impl SecureBootChain {
    pub const ALL: [Self; 1] = [Self::Shim];

    /// The name the API and the configuration file use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Shim => "shim",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A validated boot profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootProfile(ProfileSpec);

impl BootProfile {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn spec(&self) -> &ProfileSpec {
        &self.0
    }

    pub fn ipxe_template(&self) -> Option<&str> {
        self.0.ipxe_template.as_deref()
    }

    /// The root image the profile boots, as written (a name or `sha256:HEX`).
    pub fn root(&self) -> Option<&str> {
        self.0.root.as_deref()
    }

    /// The boot target for a machine of `arch`: its variant if there is one, else the default.
    pub fn target(&self, arch: Option<Arch>) -> &BootTarget {
        arch.and_then(|a| self.0.variants.get(&a))
            .unwrap_or(&self.0.default)
    }
}

impl TryFrom<ProfileSpec> for BootProfile {
    type Error = ValidationError;

    fn try_from(spec: ProfileSpec) -> Result<Self, Self::Error> {
        validate_name(&spec.name)?;
        let bad = |reason| ValidationError::Profile {
            profile: spec.name.clone(),
            reason,
        };
        if let Some(root) = &spec.root {
            validate_root_ref(root)?;
        }
        for target in std::iter::once(&spec.default).chain(spec.variants.values()) {
            if target.kernel.trim().is_empty() && spec.root.is_none() {
                return Err(bad("kernel must not be empty (or name a root image)"));
            }
            if spec.root.is_some() && !target.initrds.is_empty() {
                return Err(bad(
                    "a profile with a root boots the root's node initramfs: give no initrds",
                ));
            }
            if target.initrds.iter().any(|i| i.trim().is_empty()) {
                return Err(bad("initrd paths must not be empty"));
            }
            // The command line ends up in an iPXE script line and a DHCP reply: a newline there
            // would inject script commands.
            if target.cmdline.contains(['\n', '\r']) {
                return Err(bad("cmdline must be one line"));
            }
        }
        Ok(Self(spec))
    }
}

/// A registered boot image: a file on the appliance, addressed by the SHA-256 of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Hex SHA-256 of the content; the image's key.
    pub sha256: String,
    pub name: String,
    pub path: String,
    pub size: u64,
    /// Unix time in milliseconds.
    pub registered_at_ms: u64,
    #[serde(default)]
    pub kind: ImageKind,
    /// Set for [`ImageKind::Root`]: `sha256` is the OCI image's digest, `size` the root file
    /// system's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootImage>,
}

/// What an image is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A file in the content store (a kernel, an initrd, a disk image).
    #[default]
    File,
    /// A diskless root built from an OCI image ([`RootImage`]).
    Root,
}

/// A diskless root built from an OCI image: what a profile's `root` names. Stored under its
/// name; importing the name again with another image replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootImage {
    pub name: String,
    /// The image manifest's digest, `sha256:HEX`.
    pub image: String,
    /// The root's id (the hex of `image`): its files are under `roots/<id>/` of `roots_dir`.
    pub root_id: String,
    /// Where it was imported from (skopeo syntax; never with credentials).
    pub source: String,
    /// The kernel's release (`uname -r`), whose modules the node initramfs carries.
    pub kernel_release: String,
    /// Chunks of the root file system image, and its size in bytes.
    pub chunks: u64,
    pub bytes: u64,
    pub initrd_bytes: u64,
    /// Absolute paths on the appliance.
    pub kernel: String,
    pub initrd: String,
    /// The directory the appliance serves (`boot.roots_dir`); the signed manifest is at
    /// `roots/<root_id>/manifest` in it and on the HTTP server.
    pub roots_dir: String,
    /// Unix time in milliseconds.
    pub imported_at_ms: u64,
}

impl RootImage {
    /// Whether `reference` (a profile's `root`) names this root: its name, or `sha256:HEX` of
    /// its image.
    pub fn is_named_by(&self, reference: &str) -> bool {
        match reference.strip_prefix("sha256:") {
            Some(hex) => hex.eq_ignore_ascii_case(&self.root_id),
            None => reference == self.name,
        }
    }

    /// The root as `GET /api/v1/images` lists it.
    pub fn as_image(&self) -> Image {
        Image {
            sha256: self.root_id.clone(),
            name: self.name.clone(),
            path: format!("{}/roots/{}", self.roots_dir, self.root_id),
            size: self.bytes,
            registered_at_ms: self.imported_at_ms,
            kind: ImageKind::Root,
            root: Some(self.clone()),
        }
    }
}

/// Request to register an image: a file already on the appliance's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: String,
    pub path: String,
}

/// What the data plane boots from: every machine and profile at one point in time. Replaced
/// whole on every change, so a reader never sees half a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSnapshot {
    /// Increases by one with every published change.
    pub generation: u64,
    pub machines: BTreeMap<MacAddr, Machine>,
    pub profiles: BTreeMap<String, BootProfile>,
    /// Diskless roots by name: what profiles' `root` resolves against.
    pub roots: BTreeMap<String, RootImage>,
    /// Stored entries the running appliance cannot serve, with why: kept in the state and
    /// listed, left out of the boot plan, until a write replaces or deletes them.
    pub quarantine: BTreeMap<FleetEntry, String>,
}

/// One machine or profile of the fleet, as the quarantine and validation errors name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FleetEntry {
    Machine(MacAddr),
    Profile(String),
}

impl fmt::Display for FleetEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Machine(mac) => write!(f, "machine {mac}"),
            Self::Profile(name) => write!(f, "profile {name:?}"),
        }
    }
}

impl FleetSnapshot {
    /// The profile a machine boots, if it is known, allowed, and its profile exists.
    pub fn boot_profile(&self, mac: MacAddr) -> Option<(&Machine, &BootProfile)> {
        let machine = self.machines.get(&mac)?;
        if machine.boot == BootPolicy::Deny {
            return None;
        }
        let profile = self.profiles.get(machine.profile.as_deref()?)?;
        Some((machine, profile))
    }

    /// Why `entry` is quarantined, if it is.
    pub fn quarantined(&self, entry: &FleetEntry) -> Option<&str> {
        self.quarantine.get(entry).map(String::as_str)
    }

    /// The root a profile's `root` names: by name, or by `sha256:HEX` (any name holding it).
    pub fn root(&self, reference: &str) -> Option<&RootImage> {
        match reference.strip_prefix("sha256:") {
            None => self.roots.get(reference),
            Some(_) => self.roots.values().find(|r| r.is_named_by(reference)),
        }
    }
}

/// Names of roots: `small`, `debian:12`, `team/app:v2` (what `repo:tag` looks like). Slashes
/// are allowed; a client puts such a name in a URL path percent-encoded.
pub fn validate_root_name(name: &str) -> Result<(), ValidationError> {
    let ok = (1..=128).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with('/')
        && !name.starts_with("sha256:")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::RootName(name.to_owned()))
    }
}

/// A profile's `root`: a root name, or `sha256:` and 64 hex digits.
pub fn validate_root_ref(reference: &str) -> Result<(), ValidationError> {
    match reference.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Some(_) => Err(ValidationError::RootName(reference.to_owned())),
        None => validate_root_name(reference),
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), ValidationError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Name(name.to_owned()))
    }
}

fn validate_hostname(host: &str) -> Result<(), ValidationError> {
    // RFC 1123 §2.1: labels of letters, digits and hyphens, not starting or ending with a hyphen.
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() <= 253 && host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ValidationError::Hostname(host.to_owned()))
    }
}

fn validate_label(key: &str, value: &str) -> Result<(), ValidationError> {
    let bad = |reason| ValidationError::Label {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() || key.len() > 63 {
        return Err(bad("key must be 1 to 63 bytes"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return Err(bad("key may hold only [A-Za-z0-9._/-]"));
    }
    // The configuration's own rule for `key=value` labels (the API's are merged into it).
    if value.len() > 63
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad("value may hold only [A-Za-z0-9._-], at most 63 bytes"));
    }
    Ok(())
}

/// Where a listed machine or profile is declared. File entries come from the appliance's
/// configuration file (`serve --config`) and change only with it; an API entry with the same
/// MAC or name replaces one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntrySource {
    #[default]
    Api,
    File,
}

impl EntrySource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::File => "file",
        }
    }
}

/// The machines and profiles of the appliance's configuration file, as the control plane lists
/// them next to its own. Read-only here: they change with the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFleet {
    pub machines: BTreeMap<MacAddr, Machine>,
    pub profiles: BTreeMap<String, BootProfile>,
}

/// Which machines a list keeps, by label, as `kubectl -l` writes it: comma-separated terms, each
/// `key=value` (or `key==value`), `key!=value`, `key` (has the label) or `!key` (lacks it); a
/// machine must match every term.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelTerm>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|term| match term {
            LabelTerm::Equals(k, v) => labels.get(k) == Some(v),
            LabelTerm::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelTerm::Exists(k) => labels.contains_key(k),
            LabelTerm::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match term {
                LabelTerm::Equals(k, v) => write!(f, "{k}={v}")?,
                LabelTerm::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                LabelTerm::Exists(k) => f.write_str(k)?,
                LabelTerm::Absent(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let parsed = if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                LabelTerm::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::Absent(k.trim().to_owned())
            } else {
                LabelTerm::Exists(term.to_owned())
            };
            let (key, value) = match &parsed {
                LabelTerm::Equals(k, v) | LabelTerm::NotEquals(k, v) => (k, v.as_str()),
                LabelTerm::Exists(k) | LabelTerm::Absent(k) => (k, ""),
            };
            validate_label(key, value)?;
            terms.push(parsed);
        }
        Ok(Self(terms))
    }
}

fn normalize_uuid(uuid: &str) -> Result<String, ValidationError> {
    let digits: String = uuid.chars().filter(|&c| c != '-').collect();
    let grouped = uuid.len() == 36
        && [8, 13, 18, 23]
            .iter()
            .all(|&i| uuid.as_bytes().get(i) == Some(&b'-'));
    if digits.len() != 32
        || !digits.chars().all(|c| c.is_ascii_hexdigit())
        || !(uuid.len() == 32 || grouped)
    {
        return Err(ValidationError::Uuid(uuid.to_owned()));
    }
    let d = digits.to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &d[..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mac: &str) -> MachineSpec {
        MachineSpec {
            mac: mac.into(),
            uuid: None,
            arch: None,
            hostname: None,
            labels: BTreeMap::new(),
            profile: None,
            boot: BootPolicy::Allow,
            ssh_authorized_keys: Vec::new(),
        }
    }

    #[test]
    fn mac_parses_both_separators_and_prints_lower_case() {
        let mac: MacAddr = "AA-bb-0C-dd-ee-FF".parse().expect("dash form parses");
        assert_eq!(mac.to_string(), "aa:bb:0c:dd:ee:ff");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "a:bb:cc:dd:ee:ff",
            "zz:bb:cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn machine_validation_normalizes_and_refuses() {
        let mut s = spec("AA:BB:CC:DD:EE:01");
        s.uuid = Some("4C4C4544-0042-3510-8052-B4C04F4E4B32".into());
        s.hostname = Some("Node-01.rack3".into());
        let m = Machine::try_from(s).expect("valid machine");
        assert_eq!(m.mac.to_string(), "aa:bb:cc:dd:ee:01");
        assert_eq!(
            m.uuid.as_deref(),
            Some("4c4c4544-0042-3510-8052-b4c04f4e4b32")
        );
        assert_eq!(m.hostname.as_deref(), Some("node-01.rack3"));

        let mut s = spec("aa:bb:cc:dd:ee:01");
        s.hostname = Some("-bad".into());
        assert!(matches!(
            Machine::try_from(s),
            Err(ValidationError::Hostname(_))
        ));
        let mut s = spec("aa:bb:cc:dd:ee:01");
        s.uuid = Some("1234".into());
        assert!(matches!(
            Machine::try_from(s),
            Err(ValidationError::Uuid(_))
        ));
    }

    #[test]
    fn profile_variant_chosen_by_arch() {
        let target = |k: &str| BootTarget {
            kernel: k.into(),
            initrds: vec![],
            cmdline: String::new(),
        };
        let profile = BootProfile::try_from(ProfileSpec {
            name: "rescue".into(),
            root: None,
            default: target("vmlinuz"),
            ipxe_template: None,
            secure_boot: None,
            variants: [(Arch::EfiArm64, target("Image"))].into(),
        })
        .expect("valid profile");
        assert_eq!(profile.target(Some(Arch::EfiArm64)).kernel, "Image");
        assert_eq!(profile.target(Some(Arch::EfiX64)).kernel, "vmlinuz");
        assert_eq!(profile.target(None).kernel, "vmlinuz");

        let injected = ProfileSpec {
            name: "evil".into(),
            root: None,
            default: BootTarget {
                kernel: "k".into(),
                initrds: vec![],
                cmdline: "quiet\nshell".into(),
            },
            ipxe_template: None,
            secure_boot: None,
            variants: BTreeMap::new(),
        };
        assert!(
            BootProfile::try_from(injected).is_err(),
            "multi-line cmdline refused"
        );
    }

    #[test]
    fn a_root_profile_needs_no_kernel_and_takes_no_initrds() {
        let spec = |root: Option<&str>, kernel: &str, initrds: Vec<String>| ProfileSpec {
            name: "diskless".into(),
            root: root.map(str::to_owned),
            default: BootTarget {
                kernel: kernel.into(),
                initrds,
                cmdline: "console=ttyS0".into(),
            },
            ipxe_template: None,
            secure_boot: None,
            variants: BTreeMap::new(),
        };
        let p = BootProfile::try_from(spec(Some("debian:12"), "", vec![])).expect("root only");
        assert_eq!(p.root(), Some("debian:12"));
        let text = serde_json::to_string(p.spec()).expect("json");
        assert!(
            !text.contains("kernel"),
            "an empty kernel is left out: {text}"
        );
        let back: ProfileSpec = serde_json::from_str(&text).expect("round trip");
        assert_eq!(&back, p.spec());
        BootProfile::try_from(spec(
            Some(&format!("sha256:{}", "ab".repeat(32))),
            "k",
            vec![],
        ))
        .expect("by digest, with a kernel override");
        for (bad, why) in [
            (spec(None, "", vec![]), "neither kernel nor root"),
            (
                spec(Some("small"), "", vec!["i".into()]),
                "initrds with a root",
            ),
            (spec(Some("sha256:abc"), "", vec![]), "short digest"),
            (spec(Some("../x"), "", vec![]), "dots"),
            (spec(Some("a b"), "", vec![]), "space"),
        ] {
            assert!(BootProfile::try_from(bad).is_err(), "{why} must be refused");
        }
        for good in ["small", "debian:12", "team/app:v2", "small.tar", "x@1"] {
            validate_root_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "/abs", "a//b", "a/", "sha256:ab", ".x", "-x", "a..b"] {
            assert!(validate_root_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn label_selectors_match_as_kubectl_does() {
        let labels: BTreeMap<String, String> = [("rack", "r1"), ("role", "db")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (selector, want) in [
            ("rack=r1", true),
            ("rack==r1", true),
            ("rack=r1,role=db", true),
            ("rack=r1,role=web", false),
            ("rack!=r2", true),
            ("rack", true),
            ("!rack", false),
            ("!zone", true),
            ("", true),
        ] {
            let parsed: LabelSelector = selector.parse().expect(selector);
            assert_eq!(parsed.matches(&labels), want, "{selector:?}");
        }
        for bad in ["rack=r 1", "ra ck", "=r1"] {
            assert!(
                bad.parse::<LabelSelector>().is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn secure_boot_is_shim_or_refused_by_name() {
        let spec: ProfileSpec =
            serde_json::from_str(r#"{"name":"p","kernel":"k","secure_boot":"shim"}"#)
                .expect("shim");
        assert_eq!(spec.secure_boot, Some(SecureBootChain::Shim));
        let err =
            serde_json::from_str::<ProfileSpec>(r#"{"name":"p","kernel":"k","secure_boot":"tpm"}"#)
                .expect_err("tpm is no chain");
        assert!(err.to_string().contains("tpm"), "{err}");
        let back = serde_json::to_value(&spec).expect("JSON");
        assert_eq!(back["secure_boot"], "shim");
        let plain: ProfileSpec =
            serde_json::from_str(r#"{"name":"p","kernel":"k"}"#).expect("none");
        assert!(
            serde_json::to_value(&plain)
                .expect("JSON")
                .get("secure_boot")
                .is_none(),
            "absent stays absent"
        );
    }
}
