//! TFTP options: the RFC 2347 extension mechanism and the options boot clients use: blksize
//! (RFC 2348), timeout and tsize (RFC 2349), windowsize (RFC 7440).
//!
//! Option names and values are NUL-terminated strings after a request's mode or an OACK's opcode.
//! Names are case-insensitive (RFC 2347); values here are decimal numbers.
use super::error::WireError;

/// Largest block size of all (RFC 2348): 65535 - 20 (IPv4) - 8 (UDP) - 4 (TFTP).
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest block size a client may ask for (RFC 2348).
pub const MIN_BLKSIZE: u16 = 8;
/// Block size without the option (RFC 1350 §2).
pub const DEFAULT_BLKSIZE: u16 = 512;

/// Options as received: a validated run of `name\0value\0` pairs, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawOptions<'a>(&'a [u8]);

impl<'a> RawOptions<'a> {
    /// Checks that `bytes` is a whole number of NUL-terminated name/value pairs.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.is_empty() {
            return Ok(Self(bytes));
        }
        if bytes.last() != Some(&0) {
            return Err(WireError::Unterminated);
        }
        let strings = bytes.iter().filter(|&&b| b == 0).count();
        if strings % 2 != 0 {
            return Err(WireError::OddOptions);
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The (name, value) pairs in wire order, without their NULs.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let bytes = self.0;
        let mut strings = bytes
            .strip_suffix(&[0])
            .unwrap_or(bytes)
            .split(|&b| b == 0)
            .filter(move |_| !bytes.is_empty());
        std::iter::from_fn(move || Some((strings.next()?, strings.next()?)))
    }
}

/// Upper bound of the RFC 7440 windowsize option.
pub const MAX_WINDOWSIZE: u16 = 65535;

/// The options this implementation understands, typed. `None` means "not present".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionSet {
    /// RFC 2348: 8..=65464 octets per DATA.
    pub blksize: Option<u16>,
    /// RFC 2349: 0 in a RRQ, the file size in the OACK.
    pub tsize: Option<u64>,
    /// RFC 2349: 1..=255 seconds.
    pub timeout: Option<u8>,
    /// RFC 7440: 1..=65535 blocks per ACK.
    pub windowsize: Option<u16>,
}

/// What interpreting received options left out. Each is counted, none refuses the request:
/// RFC 2347 lets the server ignore options it does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionNotes {
    /// Options not known here (ignored, RFC 2347).
    pub unknown: u8,
    /// Known options with a value that is not a number or out of range (ignored).
    pub invalid: u8,
    /// A known option given twice (the first one counts).
    pub duplicate: u8,
}

/// Parses a decimal value: ASCII digits only, no sign, no overflow.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn set_once<T>(slot: &mut Option<T>, value: Option<T>, notes: &mut OptionNotes) {
    match (slot.is_some(), value) {
        (true, _) => notes.duplicate = notes.duplicate.saturating_add(1),
        (false, Some(value)) => *slot = Some(value),
        (false, None) => notes.invalid = notes.invalid.saturating_add(1),
    }
}

impl OptionSet {
    /// Interprets received options: names case-insensitive, values range-checked per RFC.
    pub fn from_raw(raw: RawOptions<'_>) -> (Self, OptionNotes) {
        let mut set = Self::default();
        let mut notes = OptionNotes::default();
        for (name, value) in raw.pairs() {
            let number = decimal(value);
            if name.eq_ignore_ascii_case(b"blksize") {
                let value = number
                    .filter(|n| *n >= u64::from(MIN_BLKSIZE))
                    // Larger requests are legal: the server answers with what it can do.
                    .map(|n| n.min(u64::from(MAX_BLKSIZE)) as u16);
                set_once(&mut set.blksize, value, &mut notes);
            } else if name.eq_ignore_ascii_case(b"tsize") {
                set_once(&mut set.tsize, number, &mut notes);
            } else if name.eq_ignore_ascii_case(b"timeout") {
                let value = number.filter(|n| (1..=255).contains(n)).map(|n| n as u8);
                set_once(&mut set.timeout, value, &mut notes);
            } else if name.eq_ignore_ascii_case(b"windowsize") {
                let value = number
                    .filter(|n| (1..=u64::from(MAX_WINDOWSIZE)).contains(n))
                    .map(|n| n as u16);
                set_once(&mut set.windowsize, value, &mut notes);
            } else {
                notes.unknown = notes.unknown.saturating_add(1);
            }
        }
        (set, notes)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn entries(&self) -> [(&'static [u8], Option<u64>); 4] {
        [
            (b"blksize", self.blksize.map(u64::from)),
            (b"tsize", self.tsize),
            (b"timeout", self.timeout.map(u64::from)),
            (b"windowsize", self.windowsize.map(u64::from)),
        ]
    }

    /// Length of the emitted `name\0value\0` pairs.
    pub fn buffer_len(&self) -> usize {
        self.entries()
            .iter()
            .filter_map(|(name, value)| Some(name.len() + 1 + decimal_len((*value)?) + 1))
            .sum()
    }

    /// Writes the present options, in the order blksize, tsize, timeout, windowsize; `buf` must
    /// be at least [`OptionSet::buffer_len`] long. Returns the length written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut at = 0;
        for (name, value) in self.entries() {
            let Some(value) = value else { continue };
            buf[at..at + name.len()].copy_from_slice(name);
            at += name.len();
            buf[at] = 0;
            at += 1;
            let digits = decimal_len(value);
            let mut rest = value;
            for slot in buf[at..at + digits].iter_mut().rev() {
                *slot = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            at += digits;
            buf[at] = 0;
            at += 1;
        }
        at
    }
}

fn decimal_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 10 {
        value /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(bytes: &[u8]) -> RawOptions<'_> {
        RawOptions::parse(bytes).expect("well-formed options")
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_ignored() {
        let (set, notes) =
            OptionSet::from_raw(raw(b"BlkSize\x001432\x00TSIZE\x000\x00multicast\x00\x00"));
        assert_eq!(set.blksize, Some(1432));
        assert_eq!(set.tsize, Some(0));
        assert_eq!(notes.unknown, 1, "multicast is not supported here");
    }

    #[test]
    fn invalid_values_are_noted_and_ignored() {
        let (set, notes) = OptionSet::from_raw(raw(
            b"blksize\x007\x00timeout\x000\x00windowsize\x0065536\x00tsize\x00-1\x00",
        ));
        assert!(set.is_empty(), "nothing valid: {set:?}");
        assert_eq!(notes.invalid, 4);
        let (set, _) = OptionSet::from_raw(raw(b"blksize\x00100000\x00timeout\x00255\x00"));
        assert_eq!(set.blksize, Some(MAX_BLKSIZE), "oversized blksize clamps");
        assert_eq!(set.timeout, Some(255));
        let (set, notes) = OptionSet::from_raw(raw(b"blksize\x00600\x00BLKSIZE\x00900\x00"));
        assert_eq!((set.blksize, notes.duplicate), (Some(600), 1), "first wins");
        assert_eq!(
            decimal(b"99999999999999999999"),
            None,
            "overflow is not a number"
        );
    }

    #[test]
    fn emit_formats_decimals() {
        let set = OptionSet {
            blksize: Some(8),
            tsize: Some(u64::MAX),
            timeout: Some(10),
            windowsize: Some(64),
        };
        let mut buf = vec![0u8; set.buffer_len()];
        assert_eq!(set.emit(&mut buf), buf.len());
        assert_eq!(
            buf,
            b"blksize\x008\x00tsize\x0018446744073709551615\x00timeout\x0010\x00windowsize\x0064\x00"
        );
        assert_eq!(OptionSet::from_raw(raw(&buf)).0, set);
        assert_eq!(OptionSet::default().buffer_len(), 0);
    }

    #[test]
    fn pairs_of_empty_strings() {
        let pairs: Vec<_> = raw(b"\x00\x00").pairs().collect();
        assert_eq!(pairs, [(&b""[..], &b""[..])]);
        assert_eq!(raw(b"").pairs().count(), 0);
    }
}
