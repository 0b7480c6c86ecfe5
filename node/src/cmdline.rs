//! The kernel command line contract between the appliance and its nodes.
//!
//! ```text
//! stampede.manifest=http://198.18.0.1:8080/roots/debian-12/manifest   (required)
//! stampede.server=http://198.18.0.1:8080      (chunks, events, config; default: the manifest's origin)
//! BOOTIF=01-52-54-00-12-34-56                 (pxelinux's boot NIC; absent: every Ethernet NIC)
//! stampede.init=/sbin/init                     (overrides the manifest's init)
//! stampede.debug                               (more console output)
//! stampede.swarm=off                           (plain HTTP only, even if the root has a torrent)
//! ```
//!
//! Words are separated by spaces; a value may be double-quoted as the kernel allows
//! (`Documentation/admin-guide/kernel-parameters.rst`). Unknown words are the kernel's business
//! and ignored here.

use crate::http::{HttpUrl, UrlError};

/// A MAC address, printed `52:54:00:12:34:56` as Linux does in `/sys/class/net/*/address`; read
/// from `BOOTIF=` by [`MacAddr::from_bootif`].
pub use stampede_proto::MacAddr;

/// What the command line tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub manifest: HttpUrl,
    /// Base of `/chunks/..`, `/stampede/node/..`.
    pub server: HttpUrl,
    pub boot_mac: Option<MacAddr>,
    pub init: Option<String>,
    pub debug: bool,
    /// Fetch the root from the machines booting with this one when its manifest names a
    /// torrent (the default); `stampede.swarm=off` keeps to plain HTTP from the appliance.
    pub swarm: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("no stampede.manifest=URL on the kernel command line")]
    NoManifest,
    #[error("stampede.manifest: {0}")]
    Manifest(UrlError),
    #[error("stampede.server: {0}")]
    Server(UrlError),
    #[error("BOOTIF={0:?} is not 01- followed by a MAC address")]
    BootIf(String),
    #[error("stampede.init={0:?} is not an absolute path")]
    Init(String),
}

/// Splits a command line into words, honouring double quotes around values (`a="b c"`).
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

impl BootParams {
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let mut manifest = None;
        let mut server = None;
        let mut boot_mac = None;
        let mut init = None;
        let mut debug = false;
        let mut swarm = true;
        // Later words win, as the kernel's own parameters do.
        for word in words(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("stampede.manifest", Some(v)) => {
                    manifest = Some(HttpUrl::parse(v).map_err(CmdlineError::Manifest)?)
                }
                ("stampede.server", Some(v)) => {
                    server = Some(HttpUrl::parse(v).map_err(CmdlineError::Server)?)
                }
                ("BOOTIF", Some(v)) => {
                    boot_mac = Some(
                        MacAddr::from_bootif(v).ok_or_else(|| CmdlineError::BootIf(v.into()))?,
                    )
                }
                ("stampede.init", Some(v)) => {
                    if !v.starts_with('/') {
                        return Err(CmdlineError::Init(v.into()));
                    }
                    init = Some(v.to_owned());
                }
                ("stampede.debug", None | Some("1" | "yes" | "true")) => debug = true,
                ("stampede.swarm", Some("off" | "0" | "no" | "false")) => swarm = false,
                ("stampede.swarm", None | Some("on" | "1" | "yes" | "true")) => swarm = true,
                _ => {}
            }
        }
        let manifest = manifest.ok_or(CmdlineError::NoManifest)?;
        let server = server.unwrap_or_else(|| manifest.origin());
        Ok(Self {
            manifest,
            server,
            boot_mac,
            init,
            debug,
            swarm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_command_line_parses() {
        let p = BootParams::parse(
            "BOOT_IMAGE=vmlinuz console=ttyS0 panic=-1 \
             stampede.manifest=http://198.18.0.1:8080/roots/abc/manifest \
             stampede.server=http://198.18.0.2:81/ BOOTIF=01-52-54-00-12-34-AB \
             stampede.init=/lib/systemd/systemd stampede.debug",
        )
        .expect("parses");
        assert_eq!(p.manifest.host, "198.18.0.1");
        assert_eq!(p.manifest.port, 8080);
        assert_eq!(p.manifest.target, "/roots/abc/manifest");
        assert_eq!(p.server.to_string(), "http://198.18.0.2:81");
        assert_eq!(
            p.boot_mac.map(|m| m.to_string()).as_deref(),
            Some("52:54:00:12:34:ab")
        );
        assert_eq!(p.init.as_deref(), Some("/lib/systemd/systemd"));
        assert!(p.debug);
    }

    #[test]
    fn the_server_defaults_to_the_manifest_origin() {
        let p = BootParams::parse("stampede.manifest=http://198.18.0.1/roots/x/manifest")
            .expect("parses");
        assert_eq!(p.server.to_string(), "http://198.18.0.1:80");
        assert_eq!(p.server.join("/chunks/ab").target, "/chunks/ab");
        assert_eq!(p.boot_mac, None);
        assert_eq!(p.init, None);
        assert!(!p.debug);
        assert!(p.swarm, "the swarm is on unless turned off");
        let off =
            BootParams::parse("stampede.manifest=http://h/m stampede.swarm=off").expect("off");
        assert!(!off.swarm);
    }

    #[test]
    fn missing_or_bad_values_say_which() {
        assert_eq!(
            BootParams::parse("console=ttyS0 quiet"),
            Err(CmdlineError::NoManifest)
        );
        assert!(matches!(
            BootParams::parse("stampede.manifest=https://h/m"),
            Err(CmdlineError::Manifest(UrlError::Scheme(_)))
        ));
        assert!(matches!(
            BootParams::parse("stampede.manifest=http://h/m BOOTIF=52-54-00-12-34-56"),
            Err(CmdlineError::BootIf(_))
        ));
        assert!(matches!(
            BootParams::parse("stampede.manifest=http://h/m stampede.init=sbin/init"),
            Err(CmdlineError::Init(_))
        ));
    }

    #[test]
    fn quoted_values_and_repeated_keys() {
        assert_eq!(
            words(r#"a "b c" d="e f" g"#),
            ["a", "b c", "d=e f", "g"].map(String::from)
        );
        let p = BootParams::parse(
            "stampede.manifest=http://a/1 stampede.manifest=http://b:9/2 stampede.debug=0",
        )
        .expect("parses");
        assert_eq!(p.manifest.host, "b");
        assert!(!p.debug, "stampede.debug=0 is off");
    }

    #[test]
    fn macs_parse_in_both_notations() {
        let m: MacAddr = "52-54-00-AA-bb-0c".parse().expect("dashes");
        assert_eq!(m, "52:54:00:aa:bb:0c".parse().expect("colons"));
        assert_eq!(m.to_string(), "52:54:00:aa:bb:0c");
        assert!("52:54:00:aa:bb".parse::<MacAddr>().is_err());
        assert!("52:54:00:aa:bb:0c:01".parse::<MacAddr>().is_err());
        assert!("52:54:00:aa:bb:0".parse::<MacAddr>().is_err());
        assert!(
            MacAddr::from_bootif("06-52-54-00-aa-bb-0c").is_none(),
            "not Ethernet"
        );
    }
}
