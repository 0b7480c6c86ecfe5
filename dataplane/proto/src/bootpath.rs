//! Names of boot files as clients ask for them (TFTP file names, HTTP request paths), checked
//! before anything touches the file system.
//!
//! A [`BootPath`] is a relative path made only of normal components: it cannot name anything
//! outside the served root *lexically*. Symlinks that leave the root are a property of the file
//! system, not of the name, so the store that opens the file checks those (it resolves the path
//! and refuses any result outside its root).
use std::fmt;

/// Longest name accepted, in bytes. TFTP names fit in one 512-byte request (RFC 1350 §5) and
/// boot file names are short; anything longer is hostile or broken.
pub const MAX_LEN: usize = 1024;

/// A lexically safe, normalised, relative path: components separated by `/`, none of them empty,
/// `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootPath(String);

/// Why a requested name was refused. Each variant is a counted drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PathRejection {
    #[error("empty file name")]
    Empty,
    #[error("file name longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("file name is not UTF-8")]
    NotUtf8,
    #[error("file name contains NUL")]
    Nul,
    #[error("file name contains a control character")]
    ControlChar,
    #[error("file name contains a backslash")]
    Backslash,
    #[error("absolute file name")]
    Absolute,
    #[error("file name contains a `..` component")]
    ParentDir,
}

impl PathRejection {
    /// Every reason, for registering counters.
    pub const ALL: [Self; 8] = [
        Self::Empty,
        Self::TooLong,
        Self::NotUtf8,
        Self::Nul,
        Self::ControlChar,
        Self::Backslash,
        Self::Absolute,
        Self::ParentDir,
    ];

    /// Stable short name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::NotUtf8 => "not_utf8",
            Self::Nul => "nul",
            Self::ControlChar => "control_char",
            Self::Backslash => "backslash",
            Self::Absolute => "absolute",
            Self::ParentDir => "parent_dir",
        }
    }
}

impl BootPath {
    /// Checks and normalises a name: `a//b/./c` becomes `a/b/c`. Refuses `..` anywhere (even
    /// where it would stay inside the root: no legitimate boot client sends it), absolute names,
    /// backslashes (Windows-style traversal), NUL and other control characters.
    pub fn parse(raw: &[u8]) -> Result<Self, PathRejection> {
        if raw.is_empty() {
            return Err(PathRejection::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(PathRejection::TooLong);
        }
        let text = std::str::from_utf8(raw).map_err(|_| PathRejection::NotUtf8)?;
        if text.contains('\0') {
            return Err(PathRejection::Nul);
        }
        if text.chars().any(char::is_control) {
            return Err(PathRejection::ControlChar);
        }
        if text.contains('\\') {
            return Err(PathRejection::Backslash);
        }
        if text.starts_with('/') {
            return Err(PathRejection::Absolute);
        }
        let mut out = String::with_capacity(text.len());
        for component in text.split('/') {
            match component {
                "" | "." => continue,
                ".." => return Err(PathRejection::ParentDir),
                normal => {
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(normal);
                }
            }
        }
        if out.is_empty() {
            return Err(PathRejection::Empty);
        }
        Ok(Self(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for BootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for BootPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_names_normalise() {
        assert_eq!(
            BootPath::parse(b"undionly.kpxe").unwrap().as_str(),
            "undionly.kpxe"
        );
        assert_eq!(
            BootPath::parse(b"efi//x64/./snponly.efi").unwrap().as_str(),
            "efi/x64/snponly.efi"
        );
        assert_eq!(
            BootPath::parse(b"a/b/")
                .unwrap()
                .components()
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn hostile_names_are_refused_with_their_reason() {
        let cases: &[(&[u8], PathRejection)] = &[
            (b"", PathRejection::Empty),
            (b"./", PathRejection::Empty),
            (b"../etc/passwd", PathRejection::ParentDir),
            (b"a/../../b", PathRejection::ParentDir),
            (b"a/..", PathRejection::ParentDir),
            (b"/etc/passwd", PathRejection::Absolute),
            (b"..\\windows", PathRejection::Backslash),
            (b"a\0b", PathRejection::Nul),
            (b"a\nb", PathRejection::ControlChar),
            (b"\xff\xfe", PathRejection::NotUtf8),
        ];
        for (raw, want) in cases {
            assert_eq!(
                BootPath::parse(raw),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            BootPath::parse(&[b'a'; MAX_LEN + 1]),
            Err(PathRejection::TooLong)
        );
        assert!(BootPath::parse(&[b'a'; MAX_LEN]).is_ok());
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(
            BootPath::parse(b"..hidden/x..y").unwrap().as_str(),
            "..hidden/x..y"
        );
    }
}
