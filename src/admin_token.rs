//! A generated first admin token goes to a file only its owner can read, not to stdout: a
//! service's stdout is the journal, which keeps it for anyone in `adm` or `systemd-journal`
//! (issue 18).
use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;

/// The file's name in the state directory.
pub const FILE_NAME: &str = "admin-token";

/// Writes `token` (and a newline) to `path` with mode 0600, replacing any earlier file whole:
/// it is written beside it first, so a reader never sees half a token or a looser mode.
pub fn write(path: &Path, token: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    // A leftover of an interrupted start may have any mode; mode() only applies on creation.
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("moving the admin token to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_token_file_is_private_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "old token, readable by all\n").expect("old file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write(&path, "stp_new-token-0123456789").expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "stp_new-token-0123456789\n"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(!path.with_extension("partial").exists());
    }
}
