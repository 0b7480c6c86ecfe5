//! Response heads: status codes, writing a head (server), parsing one (client), content types
//! and HTTP-dates (RFC 9110 §5.6.7) without a clock.
use std::fmt::Write as _;

use super::request::{find, line_without_cr, list_items, parse_u64, trim_ows};

/// The status codes this core sends (RFC 9110 §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const OK: Self = Self(200);
    pub const PARTIAL_CONTENT: Self = Self(206);
    pub const NOT_MODIFIED: Self = Self(304);
    pub const BAD_REQUEST: Self = Self(400);
    pub const NOT_FOUND: Self = Self(404);
    pub const METHOD_NOT_ALLOWED: Self = Self(405);
    pub const REQUEST_TIMEOUT: Self = Self(408);
    pub const CONTENT_TOO_LARGE: Self = Self(413);
    pub const URI_TOO_LONG: Self = Self(414);
    pub const RANGE_NOT_SATISFIABLE: Self = Self(416);
    pub const HEADERS_TOO_LARGE: Self = Self(431);
    pub const INTERNAL_ERROR: Self = Self(500);
    pub const VERSION_NOT_SUPPORTED: Self = Self(505);

    /// Reason phrase (RFC 9110 §15; RFC 6585 §5 for 431).
    pub const fn reason(self) -> &'static str {
        match self.0 {
            200 => "OK",
            206 => "Partial Content",
            304 => "Not Modified",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Content Too Large",
            414 => "URI Too Long",
            416 => "Range Not Satisfiable",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }
}

/// Content-Type by file extension. `.ipxe` is `text/plain`: iPXE recognises scripts by their
/// `#!ipxe` magic, not the type, and a browser then shows the script instead of downloading it.
pub fn content_type_for(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => return "application/octet-stream",
    };
    match ext.as_str() {
        "ipxe" | "txt" | "cfg" | "conf" | "cmdline" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "iso" => "application/x-iso9660-image",
        "html" | "htm" => "text/html; charset=utf-8",
        "torrent" => "application/x-bittorrent",
        _ => "application/octet-stream",
    }
}

/// Builder writing a response head into the engine's buffer. Always `HTTP/1.1`: a server sends
/// its own highest version (RFC 9110 §6.2, RFC 9112 §2.3).
#[derive(Debug)]
pub struct ResponseHead<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> ResponseHead<'b> {
    pub fn new(buf: &'b mut Vec<u8>, status: Status) -> Self {
        let start = buf.len();
        let _ = write!(Writer(buf), "HTTP/1.1 {} {}\r\n", status.0, status.reason());
        Self { buf, start }
    }

    /// Adds a field. Values come from this crate (numbers, validated etags, fixed strings), never
    /// unchecked client input.
    pub fn field(self, name: &str, value: impl std::fmt::Display) -> Self {
        let _ = write!(Writer(self.buf), "{name}: {value}\r\n");
        self
    }

    /// Ends the head; returns its length.
    pub fn finish(self) -> usize {
        self.buf.extend_from_slice(b"\r\n");
        self.buf.len() - self.start
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const LONG_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// IMF-fixdate (RFC 9110 §5.6.7) of a Unix time: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format_http_date(unix: u64) -> String {
    // Years past 9999 do not fit the four-digit grammar; clamp to the last representable second.
    let unix = unix.min(253_402_300_799);
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[((days + 4) % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses an HTTP-date in any of the three formats a recipient must accept (RFC 9110 §5.6.7):
/// IMF-fixdate, RFC 850 (two-digit year, read as 1970–2069) and asctime. `None` if invalid.
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(trim_ows(value)).ok()?;
    let parts: Vec<&str> = text.split(' ').collect();
    let (day_name, day, month, year, time) = match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [wd, d, m, y, t, "GMT"] if y.len() == 4 => {
            (wd.strip_suffix(',')?, *d, *m, y.parse::<i64>().ok()?, *t)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [wd, dmy, t, "GMT"] => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            if y.len() != 2 || it.next().is_some() {
                return None;
            }
            let y: i64 = y.parse().ok()?;
            let wd = wd.strip_suffix(',')?;
            if !LONG_DAYS.contains(&wd) {
                return None;
            }
            (&wd[..3], d, m, if y < 70 { 2000 + y } else { 1900 + y }, *t)
        }
        // Sun Nov  6 08:49:37 1994 (a one-digit day is padded with a space)
        [wd, m, "", d, t, y] if d.len() == 1 => (*wd, *d, *m, y.parse::<i64>().ok()?, *t),
        [wd, m, d, t, y] if d.len() == 2 => (*wd, *d, *m, y.parse::<i64>().ok()?, *t),
        _ => return None,
    };
    if !DAYS.contains(&day_name) || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut hms = time.split(':');
    let mut field = |max: u64| -> Option<u64> {
        let f = hms.next()?;
        (f.len() == 2).then_some(())?;
        parse_u64(f.as_bytes()).filter(|v| *v <= max)
    };
    let (h, mi, s) = (field(23)?, field(59)?, field(60)?);
    if !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None; // 31 Feb and friends
    }
    u64::try_from(days)
        .ok()?
        .checked_mul(86_400)?
        .checked_add(h * 3600 + mi * 60 + s)
}

/// The parts of a response head a boot client needs (RFC 9112 §4, §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedResponse {
    pub status: u16,
    /// Head length in bytes, including the blank line.
    pub head_len: usize,
    pub content_length: Option<u64>,
    /// `Content-Range: bytes a-b/len` as (a, b inclusive, len); `None` if absent.
    pub content_range: Option<(u64, u64, Option<u64>)>,
    pub etag: Option<String>,
    pub chunked: bool,
    /// The server said `Connection: close` (or answered HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Why a response head could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed status line")]
    BadStatusLine,
    #[error("line not terminated by CRLF")]
    BadLineEnding,
    #[error("malformed header field")]
    BadHeader,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("response head too large")]
    TooLarge,
}

impl ResponseError {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadStatusLine => "bad_status_line",
            Self::BadLineEnding => "bad_line_ending",
            Self::BadHeader => "bad_header",
            Self::BadContentLength => "bad_content_length",
            Self::TooLarge => "too_large",
        }
    }
}

impl ParsedResponse {
    /// Parses a response head at the start of `buf`; `Ok(None)` if incomplete. Heads longer
    /// than `max_head` are refused.
    pub fn parse(buf: &[u8], max_head: usize) -> Result<Option<Self>, ResponseError> {
        let Some(nl) = find(buf, b'\n') else {
            return if buf.len() > max_head {
                Err(ResponseError::TooLarge)
            } else {
                Ok(None)
            };
        };
        let line = line_without_cr(&buf[..nl]).map_err(|_| ResponseError::BadLineEnding)?;
        // status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4)
        let (version, rest) = line
            .split_at_checked(8)
            .ok_or(ResponseError::BadStatusLine)?;
        let http10 = match version {
            b"HTTP/1.1" => false,
            b"HTTP/1.0" => true,
            _ => return Err(ResponseError::BadStatusLine),
        };
        let code = match rest {
            [b' ', a, b, c] | [b' ', a, b, c, b' ', ..] => [*a, *b, *c],
            _ => return Err(ResponseError::BadStatusLine),
        };
        let status = parse_u64(&code).ok_or(ResponseError::BadStatusLine)? as u16;
        if !(100..=599).contains(&status) {
            return Err(ResponseError::BadStatusLine);
        }
        let mut resp = Self {
            status,
            head_len: 0,
            content_length: None,
            content_range: None,
            etag: None,
            chunked: false,
            close: http10,
        };
        let mut pos = nl + 1;
        loop {
            let Some(nl) = find(&buf[pos..], b'\n') else {
                return if buf.len() > max_head {
                    Err(ResponseError::TooLarge)
                } else {
                    Ok(None)
                };
            };
            let end = pos + nl + 1;
            if end > max_head {
                return Err(ResponseError::TooLarge);
            }
            let line =
                line_without_cr(&buf[pos..pos + nl]).map_err(|_| ResponseError::BadLineEnding)?;
            if line.is_empty() {
                resp.head_len = end;
                return Ok(Some(resp));
            }
            let colon = find(line, b':').ok_or(ResponseError::BadHeader)?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| super::is_tchar(b)) {
                return Err(ResponseError::BadHeader);
            }
            let value = trim_ows(&line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_u64(value).ok_or(ResponseError::BadContentLength)?;
                if resp.content_length.is_some_and(|v| v != n) {
                    return Err(ResponseError::BadContentLength);
                }
                resp.content_length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                resp.chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for opt in list_items(value) {
                    if opt.eq_ignore_ascii_case(b"close") {
                        resp.close = true;
                    } else if opt.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        resp.close = false;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"content-range") {
                resp.content_range = parse_content_range(value);
            } else if name.eq_ignore_ascii_case(b"etag") {
                resp.etag = Some(String::from_utf8_lossy(value).into_owned());
            }
            pos = end;
        }
    }
}

/// `bytes a-b/len` or `bytes a-b/*` (RFC 9110 §14.4).
fn parse_content_range(value: &[u8]) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.strip_prefix(b"bytes ")?;
    let slash = find(rest, b'/')?;
    let (range, len) = (&rest[..slash], &rest[slash + 1..]);
    let dash = find(range, b'-')?;
    let a = parse_u64(&range[..dash])?;
    let b = parse_u64(&range[dash + 1..])?;
    let len = if len == b"*" {
        None
    } else {
        Some(parse_u64(len)?)
    };
    Some((a, b, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_format_and_parse() {
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_http_date(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        for raw in [
            &b"Sun, 06 Nov 1994 08:49:37 GMT"[..],
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_http_date(raw),
                Some(784_111_777),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        for bad in [
            &b"Sun, 31 Feb 1994 08:49:37 GMT"[..],
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"yesterday",
            b"",
        ] {
            assert_eq!(
                parse_http_date(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut t = 0u64;
        while t < 5_000_000_000 {
            assert_eq!(
                parse_http_date(format_http_date(t).as_bytes()),
                Some(t),
                "round trip of {t}"
            );
            t += 7_777_777;
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("boot.ipxe"), "text/plain; charset=utf-8");
        assert_eq!(
            content_type_for("efi/x64/snponly.EFI"),
            "application/octet-stream"
        );
        assert_eq!(content_type_for("vmlinuz"), "application/octet-stream");
        assert_eq!(content_type_for("a.b/c"), "application/octet-stream");
    }

    #[test]
    fn response_heads_parse() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\
            Content-Range: bytes 0-9/100\r\nETag: \"x\"\r\n\r\nbody";
        let r = ParsedResponse::parse(raw, 4096).unwrap().expect("complete");
        assert_eq!(r.status, 206);
        assert_eq!(r.head_len, raw.len() - 4);
        assert_eq!(r.content_length, Some(10));
        assert_eq!(r.content_range, Some((0, 9, Some(100))));
        assert_eq!(r.etag.as_deref(), Some("\"x\""));
        assert!(!r.close);
        for cut in 0..raw.len() - 4 {
            assert_eq!(
                ParsedResponse::parse(&raw[..cut], 4096),
                Ok(None),
                "cut {cut}"
            );
        }
        let r = ParsedResponse::parse(b"HTTP/1.0 200\r\n\r\n", 4096)
            .unwrap()
            .unwrap();
        assert!(r.close, "HTTP/1.0 closes by default");
        assert_eq!(
            ParsedResponse::parse(b"HTTP/1.1 20 OK\r\n\r\n", 4096),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(
            ParsedResponse::parse(b"HTTP/1.1 200 OK\r\nX: 1\r\n", 8),
            Err(ResponseError::TooLarge)
        );
    }

    #[test]
    fn head_builder() {
        let mut buf = b"prefix".to_vec();
        let n = ResponseHead::new(&mut buf, Status::NOT_FOUND)
            .field("Content-Length", 0)
            .finish();
        assert_eq!(
            &buf[6..],
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(n, buf.len() - 6);
    }
}
