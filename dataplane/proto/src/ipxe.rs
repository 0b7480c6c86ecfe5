//! Per-machine iPXE scripts.
//!
//! A [`BootProfile`] names a kernel, its initrds and a kernel command line, with optional
//! per-[`Arch`] variants. [`BootProfile::validate`] checks it once (paths, template, characters)
//! and gives a [`ValidProfile`]; [`ValidProfile::render`] then turns [`MachineFacts`] into a
//! script such as:
//!
//! ```text
//! #!ipxe
//! # stampede: 52:54:00:12:34:56 x86_64-efi
//! :stampede_fetch
//! kernel http://10.0.0.1:8080/efi/vmlinuz initrd=initrd.img console=ttyS0 ip=dhcp || goto stampede_retry
//! initrd --name initrd.img http://10.0.0.1:8080/efi/initrd.img || goto stampede_retry
//! boot || goto stampede_retry
//! :stampede_retry
//! echo stampede: download or boot failed, trying again in 5 s
//! imgfree
//! sleep 5
//! goto stampede_fetch
//! ```
//!
//! A failed `kernel`, `initrd` or `boot` (a download cut by an appliance restart: iPXE does not
//! resume HTTP downloads) frees the images fetched so far, waits [`RETRY_SECONDS`] and starts
//! over, without bound: a machine that cannot boot keeps trying while the appliance restarts.
//!
//! `initrd=<name>` is on the kernel line for every initrd because the Linux EFI stub loads
//! initrds by name from the command line; under BIOS iPXE's bzImage loader ignores it harmlessly.
//!
//! # Command-line templates
//!
//! The command line may hold `{mac}`, `{bootif}` (`01-52-54-00-12-34-56`, pxelinux's `BOOTIF=`
//! form), `{uuid}`, `{ip}`, `{hostname}` and `{arch}`; `{{`/`}}` are literal braces. Unknown
//! placeholders are refused at validation. iPXE splits command lines on whitespace and expands `${...}` settings, and treats quotes and backslashes specially, so
//! the literal text is limited to printable ASCII without `"`, `'`, `\`, `$`; runs of spaces
//! collapse to one (as iPXE would); `||` and `&&` standalone words (iPXE command chaining) are
//! refused. Substituted facts are formatted by this module (hex MAC, UUID, dotted IP) or checked
//! (hostname: letters, digits, `-`, `.`), so they cannot break the line either. File paths are
//! [`BootPath`]s, percent-encoded into the URL, so `$`, spaces and the like are inert there.
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};

use crate::MacAddr;
use crate::bootpath::{BootPath, PathRejection};

/// Client architecture (from DHCP option 93 / iPXE's `${platform}`/`${buildarch}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    X86Bios,
    X86_64Efi,
    Arm64Efi,
}

impl Arch {
    /// Stable name, also the value of `{arch}`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::X86Bios => "x86-bios",
            Self::X86_64Efi => "x86_64-efi",
            Self::Arm64Efi => "arm64-efi",
        }
    }
}

/// What the appliance knows about the machine asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineFacts {
    pub mac: [u8; 6],
    pub uuid: Option<[u8; 16]>,
    pub arch: Arch,
    pub ip: Option<Ipv4Addr>,
    pub hostname: Option<String>,
}

/// Kernel, initrds and command line (template) for one architecture. Paths are relative to the
/// HTTP root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: String,
    pub initrds: Vec<String>,
    pub cmdline: String,
}

/// What to boot: `default`, or the variant for the machine's architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootProfile {
    pub default: BootFiles,
    pub variants: Vec<(Arch, BootFiles)>,
}

/// Why a profile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown placeholder {{{0}}}")]
    UnknownPlaceholder(String),
    #[error("unclosed `{{` in command line")]
    UnclosedBrace,
    #[error("unmatched `}}` in command line")]
    StrayBrace,
    #[error("character {0:?} is not allowed in an iPXE command line")]
    ForbiddenChar(char),
    #[error("word {0:?} would chain iPXE commands")]
    ForbiddenWord(String),
    #[error("invalid file path {path:?}: {reason}")]
    BadPath { path: String, reason: PathRejection },
    #[error("initrd name {0:?} is not a plain file name")]
    BadInitrdName(String),
    #[error("two initrds are named {0:?}")]
    DuplicateInitrdName(String),
    #[error("architecture {0} has two variants")]
    DuplicateVariant(&'static str),
}

impl ProfileError {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::UnknownPlaceholder(_) => "unknown_placeholder",
            Self::UnclosedBrace => "unclosed_brace",
            Self::StrayBrace => "stray_brace",
            Self::ForbiddenChar(_) => "forbidden_char",
            Self::ForbiddenWord(_) => "forbidden_word",
            Self::BadPath { .. } => "bad_path",
            Self::BadInitrdName(_) => "bad_initrd_name",
            Self::DuplicateInitrdName(_) => "duplicate_initrd_name",
            Self::DuplicateVariant(_) => "duplicate_variant",
        }
    }
}

/// Why a script could not be rendered for a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the command line needs {{{0}}} but the machine has none")]
    MissingFact(&'static str),
    #[error("hostname {0:?} is not a valid host name")]
    BadHostname(String),
}

impl RenderError {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::MissingFact(_) => "missing_fact",
            Self::BadHostname(_) => "bad_hostname",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    Mac,
    /// The MAC as pxelinux's `BOOTIF=` gives it to a kernel: hardware type 01 (Ethernet), then
    /// the address with dashes (`01-52-54-00-12-34-56`). Initramfs tools (and Stampede's node
    /// agent) find the boot NIC by it.
    BootIf,
    Uuid,
    Ip,
    Hostname,
    Arch,
}

impl Fact {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "mac" => Self::Mac,
            "bootif" => Self::BootIf,
            "uuid" => Self::Uuid,
            "ip" => Self::Ip,
            "hostname" => Self::Hostname,
            "arch" => Self::Arch,
            _ => return None,
        })
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Mac => "mac",
            Self::BootIf => "bootif",
            Self::Uuid => "uuid",
            Self::Ip => "ip",
            Self::Hostname => "hostname",
            Self::Arch => "arch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Fact(Fact),
}

/// A checked command-line template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(ProfileError::StrayBrace),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(ProfileError::UnclosedBrace),
                        }
                    }
                    let fact =
                        Fact::from_name(&name).ok_or(ProfileError::UnknownPlaceholder(name))?;
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                    parts.push(Part::Fact(fact));
                }
                ' ' => lit.push(' '),
                c if c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '$') => lit.push(c),
                c => return Err(ProfileError::ForbiddenChar(c)),
            }
        }
        parts.push(Part::Lit(lit));
        parts.retain(|p| !matches!(p, Part::Lit(l) if l.is_empty()));
        let template = Self { parts };
        // Words are checked on the literal text: facts cannot form `||`/`&&`.
        for part in &template.parts {
            if let Part::Lit(l) = part
                && let Some(w) = l.split(' ').find(|w| *w == "||" || *w == "&&")
            {
                return Err(ProfileError::ForbiddenWord(w.to_owned()));
            }
        }
        Ok(template)
    }

    /// Substitutes the facts; whitespace runs collapse to single spaces.
    pub fn render(&self, facts: &MachineFacts) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Fact(f) => out.push_str(&fact_value(*f, facts)?),
            }
        }
        Ok(out
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" "))
    }
}

fn fact_value(fact: Fact, facts: &MachineFacts) -> Result<String, RenderError> {
    let missing = RenderError::MissingFact(fact.name());
    Ok(match fact {
        Fact::Mac => MacAddr(facts.mac).to_string(),
        Fact::BootIf => MacAddr(facts.mac).bootif().to_string(),
        Fact::Uuid => format_uuid(&facts.uuid.ok_or(missing)?),
        Fact::Ip => facts.ip.ok_or(missing)?.to_string(),
        Fact::Arch => facts.arch.as_str().to_owned(),
        Fact::Hostname => {
            let h = facts.hostname.as_deref().ok_or(missing)?;
            // RFC 1123 host name characters only.
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return Err(RenderError::BadHostname(h.to_owned()));
            }
            h.to_owned()
        }
    })
}

/// `8-4-4-4-12` lowercase hex, bytes in the order given (as iPXE's `${uuid}`).
pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Where the scripts point: `http://host:port/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    base: String,
}

impl ServerUrl {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        let base = match ip {
            IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"), // RFC 3986 §3.2.2
        };
        Self { base }
    }

    /// Absolute URL of a boot file; the path is percent-encoded (RFC 3986 §2.1) except
    /// unreserved characters and `/`.
    pub fn url(&self, path: &BootPath) -> String {
        let mut url = self.base.clone();
        for b in path.as_str().bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                url.push(char::from(b));
            } else {
                let _ = write!(url, "%{b:02X}");
            }
        }
        url
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ValidFiles {
    kernel: BootPath,
    /// (name given to iPXE, path)
    initrds: Vec<(String, BootPath)>,
    cmdline: Template,
}

/// A checked profile, ready to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidProfile {
    default: ValidFiles,
    variants: Vec<(Arch, ValidFiles)>,
}

fn boot_path(path: &str) -> Result<BootPath, ProfileError> {
    BootPath::parse(path.as_bytes()).map_err(|reason| ProfileError::BadPath {
        path: path.to_owned(),
        reason,
    })
}

impl BootFiles {
    fn validate(&self) -> Result<ValidFiles, ProfileError> {
        let kernel = boot_path(&self.kernel)?;
        let mut initrds: Vec<(String, BootPath)> = Vec::new();
        for raw in &self.initrds {
            let path = boot_path(raw)?;
            let name = path.components().last().unwrap_or_default().to_owned();
            // iPXE image names: kept to characters that need no quoting anywhere.
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._+".contains(&b))
            {
                return Err(ProfileError::BadInitrdName(name));
            }
            if initrds.iter().any(|(n, _)| *n == name) {
                return Err(ProfileError::DuplicateInitrdName(name));
            }
            initrds.push((name, path));
        }
        Ok(ValidFiles {
            kernel,
            initrds,
            cmdline: Template::parse(&self.cmdline)?,
        })
    }
}

impl BootProfile {
    pub fn validate(&self) -> Result<ValidProfile, ProfileError> {
        let mut variants: Vec<(Arch, ValidFiles)> = Vec::new();
        for (arch, files) in &self.variants {
            if variants.iter().any(|(a, _)| a == arch) {
                return Err(ProfileError::DuplicateVariant(arch.as_str()));
            }
            variants.push((*arch, files.validate()?));
        }
        Ok(ValidProfile {
            default: self.default.validate()?,
            variants,
        })
    }
}

/// Label of the script's first download.
const FETCH_LABEL: &str = "stampede_fetch";
/// Label of the script's retry path.
const RETRY_LABEL: &str = "stampede_retry";
/// Seconds a script waits before fetching again after a failed download or boot.
pub const RETRY_SECONDS: u32 = 5;

impl ValidProfile {
    /// The script for one machine.
    pub fn render(&self, facts: &MachineFacts, server: &ServerUrl) -> Result<String, RenderError> {
        let files = self
            .variants
            .iter()
            .find(|(a, _)| *a == facts.arch)
            .map_or(&self.default, |(_, f)| f);
        let cmdline = files.cmdline.render(facts)?;
        let mut kernel_line = format!("kernel {}", server.url(&files.kernel));
        for (name, _) in &files.initrds {
            let _ = write!(kernel_line, " initrd={name}");
        }
        if !cmdline.is_empty() {
            kernel_line.push(' ');
            kernel_line.push_str(&cmdline);
        }
        let mut script = String::from("#!ipxe\n");
        let _ = writeln!(
            script,
            "# stampede: {} {}",
            MacAddr(facts.mac),
            facts.arch.as_str()
        );
        // A download cut (the appliance restarting mid-storm) fails the `kernel`/`initrd`
        // command; iPXE does not resume it, and an unhandled failure ends the script in a shell.
        // So every download and the boot go to a retry that frees what was fetched, waits and
        // starts over, forever: a machine that cannot boot keeps trying while the appliance
        // comes back, as the node agent does.
        let _ = writeln!(script, ":{FETCH_LABEL}");
        let _ = writeln!(script, "{kernel_line} || goto {RETRY_LABEL}");
        for (name, path) in &files.initrds {
            let _ = writeln!(
                script,
                "initrd --name {name} {} || goto {RETRY_LABEL}",
                server.url(path)
            );
        }
        let _ = writeln!(script, "boot || goto {RETRY_LABEL}");
        let _ = writeln!(script, ":{RETRY_LABEL}");
        let _ = writeln!(
            script,
            "echo stampede: download or boot failed, trying again in {RETRY_SECONDS} s"
        );
        script.push_str("imgfree\n");
        let _ = writeln!(script, "sleep {RETRY_SECONDS}");
        let _ = writeln!(script, "goto {FETCH_LABEL}");
        Ok(script)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One download an iPXE script asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptFetch {
    /// `chain`: the image is executed next (another script, or a binary).
    pub chain: bool,
    /// Absolute URL.
    pub url: String,
}

/// The files an iPXE script makes the machine download, in order: what a simulated machine
/// fetches after the script. Reads `kernel`, `initrd`, `chain`, `module`, `imgfetch` and their
/// aliases, skipping their options (`--name x`, `-n x`, `--autofree`); relative names resolve
/// against `base` (the script's own URL), as iPXE resolves them. Every other line (`echo`,
/// `boot`, comments, `#!ipxe`) is ignored. Settings (`${ip}`) must be expanded first
/// ([`expand_settings`]).
pub fn script_downloads(script: &str, base: &str) -> Vec<ScriptFetch> {
    const FETCHERS: &[&str] = &[
        "kernel",
        "initrd",
        "chain",
        "module",
        "imgfetch",
        "fetch",
        "imgexec",
        "imgload",
        "imgselect",
        "imgargs",
    ];
    let mut urls = Vec::new();
    for line in script.lines() {
        let mut words = line.split_whitespace();
        let Some(command) = words.next() else {
            continue;
        };
        // `imgargs` names an image already fetched; it downloads nothing.
        if !FETCHERS.contains(&command) || command == "imgargs" {
            continue;
        }
        while let Some(word) = words.next() {
            if let Some(option) = word.strip_prefix('-') {
                // Options taking a value as the next word.
                if matches!(option, "n" | "-name" | "t" | "-timeout") {
                    words.next();
                }
                continue;
            }
            urls.push(ScriptFetch {
                chain: command == "chain",
                url: resolve_url(base, word),
            });
            break;
        }
    }
    urls
}

/// Expands iPXE settings in `text` as iPXE does: `${name}` and `${name:type}` become
/// `value(name)`, or nothing when it has no value; a `${` without its `}` stays as is.
pub fn expand_settings(text: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].split(':').next().unwrap_or("");
        if let Some(v) = value(name) {
            out.push_str(&v);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `name` against `base` (an absolute URL): absolute names stay, `/path` keeps the scheme and
/// authority, anything else replaces the last path segment.
pub fn resolve_url(base: &str, name: &str) -> String {
    if name.contains("://") {
        return name.to_owned();
    }
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    if name.starts_with('/') {
        return format!("{}{name}", &base[..authority_end]);
    }
    let path = base[authority_end..].split(['?', '#']).next().unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{}{dir}{name}", &base[..authority_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> BootProfile {
        BootProfile {
            default: BootFiles {
                kernel: "bios/vmlinuz".into(),
                initrds: vec!["bios/initrd.img".into()],
                cmdline: "console=ttyS0,115200  ip=dhcp hostname={hostname}".into(),
            },
            variants: vec![(
                Arch::X86_64Efi,
                BootFiles {
                    kernel: "efi/x86_64/vmlinuz".into(),
                    initrds: vec![
                        "efi/x86_64/initrd.img".into(),
                        "common/firmware.cpio".into(),
                    ],
                    cmdline: "console=ttyS0 machine={mac} BOOTIF={bootif} uuid={uuid} ip={ip} arch={arch} {{x}}"
                        .into(),
                },
            )],
        }
    }

    fn facts(arch: Arch) -> MachineFacts {
        MachineFacts {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            uuid: Some([
                0x4c, 0x4c, 0x45, 0x44, 0x00, 0x4d, 0x59, 0x10, 0x80, 0x52, 0xb2, 0xc0, 0x4f, 0x35,
                0x30, 0x32,
            ]),
            arch,
            ip: Some(Ipv4Addr::new(10, 0, 0, 42)),
            hostname: Some("node-042.rack1".into()),
        }
    }

    fn server() -> ServerUrl {
        ServerUrl::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080)
    }

    #[test]
    fn bios_script_is_exact() {
        let script = profile()
            .validate()
            .unwrap()
            .render(&facts(Arch::X86Bios), &server());
        assert_eq!(
            script.unwrap(),
            "#!ipxe\n\
             # stampede: 52:54:00:12:34:56 x86-bios\n\
             :stampede_fetch\n\
             kernel http://10.0.0.1:8080/bios/vmlinuz initrd=initrd.img console=ttyS0,115200 ip=dhcp hostname=node-042.rack1 || goto stampede_retry\n\
             initrd --name initrd.img http://10.0.0.1:8080/bios/initrd.img || goto stampede_retry\n\
             boot || goto stampede_retry\n\
             :stampede_retry\n\
             echo stampede: download or boot failed, trying again in 5 s\n\
             imgfree\n\
             sleep 5\n\
             goto stampede_fetch\n"
        );
    }

    #[test]
    fn uefi_script_is_exact() {
        let script = profile()
            .validate()
            .unwrap()
            .render(&facts(Arch::X86_64Efi), &server());
        assert_eq!(
            script.unwrap(),
            "#!ipxe\n\
             # stampede: 52:54:00:12:34:56 x86_64-efi\n\
             :stampede_fetch\n\
             kernel http://10.0.0.1:8080/efi/x86_64/vmlinuz initrd=initrd.img initrd=firmware.cpio console=ttyS0 machine=52:54:00:12:34:56 BOOTIF=01-52-54-00-12-34-56 uuid=4c4c4544-004d-5910-8052-b2c04f353032 ip=10.0.0.42 arch=x86_64-efi {x} || goto stampede_retry\n\
             initrd --name initrd.img http://10.0.0.1:8080/efi/x86_64/initrd.img || goto stampede_retry\n\
             initrd --name firmware.cpio http://10.0.0.1:8080/common/firmware.cpio || goto stampede_retry\n\
             boot || goto stampede_retry\n\
             :stampede_retry\n\
             echo stampede: download or boot failed, trying again in 5 s\n\
             imgfree\n\
             sleep 5\n\
             goto stampede_fetch\n"
        );
    }

    /// Every line is a command iPXE knows, with the argument shapes iPXE accepts.
    #[test]
    fn every_line_is_known_ipxe_syntax() {
        let p = profile().validate().unwrap();
        for arch in [Arch::X86Bios, Arch::X86_64Efi, Arch::Arm64Efi] {
            let script = p.render(&facts(arch), &server()).unwrap();
            let lines: Vec<&str> = script.lines().collect();
            assert_eq!(lines[0], "#!ipxe", "magic first");
            assert_eq!(
                *lines.last().unwrap(),
                "goto stampede_fetch",
                "the retry loops back"
            );
            assert!(script.ends_with('\n'));
            for line in &lines[1..] {
                assert!(
                    !line.contains("${") && !line.contains(['"', '\'', '\\', '\r', '\t']),
                    "{line}"
                );
                assert!(
                    !line.contains("  ") && !line.ends_with(' '),
                    "single spaces: {line:?}"
                );
                // Every download and the boot fall to the retry path on failure.
                let fetches = ["kernel", "initrd", "boot"]
                    .iter()
                    .any(|c| line.starts_with(c));
                let line = match line.strip_suffix(" || goto stampede_retry") {
                    Some(command) => command,
                    None => {
                        assert!(!fetches, "a failure must retry: {line}");
                        line
                    }
                };
                let words: Vec<&str> = line.split(' ').collect();
                match words[0] {
                    w if w.starts_with('#') => {}
                    ":stampede_fetch" | ":stampede_retry" | "imgfree" => {
                        assert_eq!(words.len(), 1, "{line}");
                    }
                    "echo" => {}
                    "sleep" => assert_eq!(words, ["sleep", "5"]),
                    "goto" => assert_eq!(words, ["goto", "stampede_fetch"]),
                    "kernel" => {
                        assert!(words[1].starts_with("http://10.0.0.1:8080/"), "{line}");
                        assert!(words[2].starts_with("initrd="), "{line}");
                    }
                    "initrd" => {
                        assert_eq!(words[1], "--name", "{line}");
                        assert_eq!(words.len(), 4, "{line}");
                        assert!(words[3].starts_with("http://10.0.0.1:8080/"), "{line}");
                        assert!(line_has(&script, &format!("initrd={}", words[2])), "{line}");
                    }
                    "boot" => assert_eq!(words.len(), 1),
                    other => panic!("unknown iPXE command {other:?} in {script}"),
                }
            }
        }
    }

    fn line_has(script: &str, word: &str) -> bool {
        script
            .lines()
            .any(|l| l.starts_with("kernel ") && l.split(' ').any(|w| w == word))
    }

    #[test]
    fn bad_profiles_are_refused() {
        let with = |cmdline: &str| {
            let mut p = profile();
            p.default.cmdline = cmdline.into();
            p.validate().map(|_| ()).map_err(|e| e.as_str())
        };
        assert_eq!(with("root={disk}"), Err("unknown_placeholder"));
        assert_eq!(with("root={mac"), Err("unclosed_brace"));
        assert_eq!(with("a}b"), Err("stray_brace"));
        assert_eq!(with("a\nkernel http://evil/"), Err("forbidden_char"));
        assert_eq!(with("a\tb"), Err("forbidden_char"));
        assert_eq!(with("x=${net0/ip}"), Err("forbidden_char"));
        assert_eq!(with("root=\"LABEL=a b\""), Err("forbidden_char"));
        assert_eq!(with("quiet || shell"), Err("forbidden_word"));
        assert_eq!(with("a||b {{ok}}"), Ok(()), "|| inside a word is inert");
        let mut p = profile();
        p.default.kernel = "../etc/passwd".into();
        assert_eq!(
            p.validate().map(|_| ()).map_err(|e| e.as_str()),
            Err("bad_path")
        );
        let mut p = profile();
        p.default.initrds = vec!["a/initrd.img".into(), "b/initrd.img".into()];
        assert_eq!(
            p.validate().map(|_| ()).map_err(|e| e.as_str()),
            Err("duplicate_initrd_name")
        );
        let mut p = profile();
        p.default.initrds = vec!["a/in$it".into()];
        assert_eq!(
            p.validate().map(|_| ()).map_err(|e| e.as_str()),
            Err("bad_initrd_name")
        );
    }

    #[test]
    fn render_refuses_missing_or_hostile_facts_and_encodes_paths() {
        let p = profile().validate().unwrap();
        let mut f = facts(Arch::X86_64Efi);
        f.uuid = None;
        assert_eq!(
            p.render(&f, &server()),
            Err(RenderError::MissingFact("uuid"))
        );
        let mut f = facts(Arch::X86Bios);
        f.hostname = Some("evil\nboot".into());
        assert_eq!(
            p.render(&f, &server()).map_err(|e| e.as_str()),
            Err("bad_hostname")
        );
        f.hostname = Some("a b".into());
        assert!(
            p.render(&f, &server()).is_err(),
            "spaces in a fact are refused"
        );

        let path = BootPath::parse("dir with space/$x.img".as_bytes()).unwrap();
        assert_eq!(
            server().url(&path),
            "http://10.0.0.1:8080/dir%20with%20space/%24x.img"
        );
        let v6 = ServerUrl::new("fd00::1".parse().unwrap(), 80);
        assert_eq!(v6.url(&path).split('/').nth(2), Some("[fd00::1]:80"));
    }

    #[test]
    fn script_downloads_follow_ipxe_resolution() {
        let script = "#!ipxe\necho hi\nkernel vmlinuz console=ttyS0 initrd=initrd.img\n\
                      initrd --name initrd.img /boot/initrd.img\n  initrd -n x http://h:81/a/b\n\
                      imgargs vmlinuz quiet\nchain --autofree next.ipxe?x=1\nboot\n";
        let fetches = script_downloads(script, "http://198.18.0.1:8080/d/boot.ipxe?mac=1");
        let urls: Vec<&str> = fetches.iter().map(|f| f.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://198.18.0.1:8080/d/vmlinuz",
                "http://198.18.0.1:8080/boot/initrd.img",
                "http://h:81/a/b",
                "http://198.18.0.1:8080/d/next.ipxe?x=1",
            ]
        );
        let chains: Vec<bool> = fetches.iter().map(|f| f.chain).collect();
        assert_eq!(chains, [false, false, false, true]);
        assert_eq!(resolve_url("http://h", "k"), "http://h/k");
        assert_eq!(resolve_url("tftp://h/x/y", "/k"), "tftp://h/k");
        assert!(script_downloads("kernel\ninitrd --name\n\u{0}", "http://h/").is_empty());
    }

    #[test]
    fn settings_expand_like_ipxe() {
        let value = |name: &str| match name {
            "ip" => Some("198.18.0.9".to_owned()),
            "platform" => Some("efi".to_owned()),
            _ => None,
        };
        assert_eq!(
            expand_settings("a?p=${platform}&ip=${ip:ipv4}&h=${hostname}&x", value),
            "a?p=efi&ip=198.18.0.9&h=&x"
        );
        assert_eq!(expand_settings("open ${ip", value), "open ${ip");
        assert_eq!(expand_settings("", value), "");
    }
}
