//! [`MacAddr`]: the one Ethernet address type of the workspace, as smoltcp has one
//! `EthernetAddress`.
//!
//! Printed `52:54:00:12:34:56` (lower case, as iPXE's `${mac}` and Linux's
//! `/sys/class/net/*/address` print it) in logs, JSON and the API; serde reads and writes that
//! text. Other notations exist only where a URL or a file name needs them, each as a named
//! method: [`MacAddr::dashed`] (`52-54-00-12-34-56`, iPXE script URLs) and [`MacAddr::bootif`]
//! (`01-52-54-00-12-34-56`, PXELINUX and GRUB per-machine file names, the `BOOTIF=` argument).
use std::fmt;
use std::str::FromStr;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Text that is not a MAC address; the message is the one the control API has always answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':' or '-'")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// `52-54-00-12-34-56`: the form iPXE script URLs carry (`?mac=`), where `:` would need
    /// escaping.
    pub fn dashed(self) -> impl fmt::Display {
        Separated(self, '-')
    }

    /// `01-52-54-00-12-34-56`: ARP hardware type 1 (Ethernet), then the address with dashes, as
    /// PXELINUX names per-machine files (`pxelinux.cfg/01-..`) and passes `BOOTIF=`; GRUB's
    /// per-machine configuration files use it too.
    pub fn bootif(self) -> impl fmt::Display {
        Bootif(self)
    }

    /// Reads the [`MacAddr::bootif`] form back.
    pub fn from_bootif(text: &str) -> Option<Self> {
        text.strip_prefix("01-")?.parse().ok()
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> Self {
        mac.0
    }
}

struct Separated(MacAddr, char);

impl fmt::Display for Separated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0.0;
        let s = self.1;
        write!(
            f,
            "{a:02x}{s}{b:02x}{s}{c:02x}{s}{d:02x}{s}{e:02x}{s}{g:02x}"
        )
    }
}

struct Bootif(MacAddr);

impl fmt::Display for Bootif {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "01-{}", Separated(self.0, '-'))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Separated(*self, ':').fmt(f)
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Six octets of two hex digits each (either case), separated by `:` or `-`.
impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(text: &str) -> Result<Self, MacParseError> {
        let bad = || MacParseError(text.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for octet in &mut octets {
            let part = parts
                .next()
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(bad)?;
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(octets))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0x0c, 0xff]);

    #[test]
    fn prints_each_notation() {
        assert_eq!(MAC.to_string(), "52:54:00:ab:0c:ff");
        assert_eq!(format!("{MAC:?}"), "MacAddr(52:54:00:ab:0c:ff)");
        assert_eq!(MAC.dashed().to_string(), "52-54-00-ab-0c-ff");
        assert_eq!(MAC.bootif().to_string(), "01-52-54-00-ab-0c-ff");
    }

    #[test]
    fn parses_either_separator_and_case() {
        for text in ["52:54:00:AB:0c:Ff", "52-54-00-ab-0C-ff"] {
            assert_eq!(text.parse::<MacAddr>(), Ok(MAC), "{text}");
        }
        assert_eq!(MacAddr::from_bootif("01-52-54-00-ab-0c-ff"), Some(MAC));
        assert_eq!(MacAddr::from_bootif("06-52-54-00-ab-0c-ff"), None);
    }

    #[test]
    fn refuses_what_is_not_six_hex_octets() {
        for bad in [
            "",
            "52:54:00:ab:0c",
            "52:54:00:ab:0c:ff:00",
            "5:54:00:ab:0c:ff",
            "zz:54:00:ab:0c:ff",
            "+a:54:00:ab:0c:ff",
            "5254.00ab.0cff",
            " 52:54:00:ab:0c:ff",
        ] {
            let e = bad.parse::<MacAddr>().expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid MAC address {bad:?}: expected six hex octets separated by ':' or '-'"
                )
            );
        }
    }
}
