//! Value parsers: the text forms of ranges, subnets, MACs, UUIDs, durations and names.

use std::net::Ipv4Addr;
use std::time::Duration;

use stampede_proto::MacAddr;
use stampede_proto::bootpath::BootPath;
use stampede_proto::ipxe::Arch;

use super::error::Problem;

pub(super) fn parse_path(text: &str) -> Result<BootPath, Problem> {
    BootPath::parse(text.as_bytes()).map_err(|reason| Problem::BadPath {
        path: text.to_owned(),
        reason,
    })
}

/// `198.18.0.100-198.18.0.200`, spaces around `-` allowed.
pub fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), Problem> {
    let bad = || Problem::BadRange(text.to_owned());
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let start: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let end: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    if u32::from(start) > u32::from(end) {
        return Err(Problem::RangeReversed { start, end });
    }
    Ok((start, end))
}

/// `198.18.0.0/24`; host bits must be zero (a typo otherwise, more often than not).
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), Problem> {
    let bad = || Problem::BadSubnet(text.to_owned());
    let (a, p) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = p.trim().parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let network = Ipv4Addr::from(u32::from(ip) & mask);
    if network != ip {
        return Err(Problem::HostBitsSet {
            given: text.to_owned(),
            network,
            prefix,
        });
    }
    Ok((network, prefix))
}

/// `52:54:00:12:34:56` or `52-54-00-12-34-56`, any case.
pub fn parse_mac(text: &str) -> Result<[u8; 6], Problem> {
    text.parse::<MacAddr>()
        .map(MacAddr::octets)
        .map_err(|_| Problem::BadMac(text.to_owned()))
}

/// `8-4-4-4-12` hex or 32 hex digits, bytes in text order.
pub fn parse_uuid(text: &str) -> Result<[u8; 16], Problem> {
    let bad = || Problem::BadUuid(text.to_owned());
    let groups: Vec<&str> = text.split('-').collect();
    let shape_ok = match groups.len() {
        1 => groups[0].len() == 32,
        5 => groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]),
        _ => false,
    };
    let hex: String = groups.concat();
    if !shape_ok || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Keys per machine: far more than anyone lists, few enough to keep the node's config small.
pub const MAX_SSH_KEYS: usize = 64;

/// One `authorized_keys` line (sshd(8), "AUTHORIZED_KEYS FILE FORMAT": optional options, a key
/// type, the base64 key, a comment): one line of printable ASCII, at most 8 KiB, with a key
/// type word in it. Anything that could add a second line or a terminal escape is refused.
pub fn check_ssh_key(line: &str) -> Result<(), Problem> {
    let line = line.trim();
    let bad = |why: &str| Err(Problem::BadSshKey(why.to_owned()));
    if line.is_empty() {
        return bad("empty");
    }
    if line.len() > 8192 {
        return bad("longer than 8192 bytes");
    }
    if !line.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return bad("only printable ASCII on one line");
    }
    let typed = line
        .split_ascii_whitespace()
        .any(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-sha2-") || w.starts_with("sk-"));
    if !typed {
        return bad("no key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-..., sk-...)");
    }
    Ok(())
}

/// RFC 1123 §2.1 host names: what the iPXE `{hostname}` placeholder accepts, and stricter.
pub(super) fn check_hostname(h: &str) -> Result<String, Problem> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(h.to_owned())
    } else {
        Err(Problem::BadHostname(h.to_owned()))
    }
}

/// A machine's label: `name`, or `key=value` as the control API and `ctl machines add --label`
/// write them (the API's labels are merged into the file's in that form).
pub(super) fn check_label(label: &str) -> Result<(), Problem> {
    let part_ok = |part: &str, extra: &[u8], may_be_empty: bool| {
        (may_be_empty || !part.is_empty())
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
    };
    let ok = match label.split_once('=') {
        None => part_ok(label, b"", false),
        Some((key, value)) => part_ok(key, b"/", false) && part_ok(value, b"", true),
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::BadLabel(label.to_owned()))
    }
}

/// Profile names and labels: they show up in URLs, metrics and the API.
pub(super) fn check_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Problem::BadName(name.to_owned()))
    }
}

/// Integer seconds, or `<n><unit>` groups with units `ms`, `s`, `m`, `h`, `d` (`1h30m`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// The `{arch}` names of [`Arch::as_str`].
pub fn parse_arch(name: &str) -> Option<Arch> {
    [Arch::X86Bios, Arch::X86_64Efi, Arch::Arm64Efi]
        .into_iter()
        .find(|a| a.as_str() == name)
}
