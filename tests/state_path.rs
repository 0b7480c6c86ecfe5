//! `--state` takes a file path; a URL (`postgres://...`) is refused before anything is created
//! (issue 18: it used to become a directory `postgres:/` in the working directory).
use std::process::Command;

const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

#[test]
fn a_state_url_is_refused_and_creates_nothing() {
    for state in [
        "postgres://stampede@db.example/stampede",
        "postgresql://localhost/stampede",
        "file:///var/lib/stampede/stampede.redb",
    ] {
        for command in [
            &[
                "boot",
                "--iface",
                "stampede-none0",
                "--state",
                state,
                "vmlinuz",
            ][..],
            &["serve", "--config", "stampede.toml", "--state", state][..],
        ] {
            let cwd = tempfile::tempdir().expect("temporary directory");
            let out = Command::new(STAMPEDE)
                .args(command)
                .current_dir(cwd.path())
                .env_remove("STAMPEDE_ADMIN_TOKEN")
                .output()
                .expect("stampede runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command:?} is refused: {stderr}");
            assert!(
                stderr.contains("PostgreSQL state is not supported by this version")
                    && stderr.contains("--state takes a file path"),
                "{command:?}: {stderr}"
            );
            let left: Vec<_> = std::fs::read_dir(cwd.path())
                .expect("read the working directory")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert!(left.is_empty(), "{command:?} created {left:?}");
        }
    }
}
