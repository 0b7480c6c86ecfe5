//! The Debian package: built by xtask's own packaging code (around the debug binary, which the
//! test has; `cargo xtask package` wraps the release one), installed on this machine with
//! `dpkg -i`, checked, and purged at the end, also when the test fails: the files, the
//! conffile, the `stampede` user made by postinst, the unit (`systemd-analyze verify`) and the
//! installed binary. Skipped when a `stampede` package is already installed (an operator's).
#[path = "../xtask/src/package.rs"]
mod package;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use stampede_lab::{require, run_with_timeout, wait_for};

const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

fn run(program: &str, args: &[&str]) -> stampede_lab::Output {
    let mut command = Command::new(program);
    command.args(args);
    run_with_timeout(command, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

/// dpkg's status of the package: `installed`, `config-files`, ...; `not-installed` also when
/// dpkg has forgotten it (after a purge).
fn package_status() -> String {
    let status = run("dpkg-query", &["-W", "-f=${db:Status-Status}", "stampede"]);
    match status.stdout.trim() {
        "" => "not-installed".to_owned(),
        other => other.to_owned(),
    }
}

/// The package installed by this test; purged on drop, with the user postinst made when it
/// did not exist before.
struct Installed {
    made_user: bool,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Installed {
    fn install(deb: &Path, lock: nix::fcntl::Flock<std::fs::File>) -> Self {
        let made_user = nix::unistd::User::from_name(package::USER)
            .expect("users")
            .is_none();
        let guard = Self {
            made_user,
            _lock: lock,
        };
        let deb = deb.to_str().expect("utf-8 path");
        // dpkg refuses at once while apt or another dpkg holds its lock: wait for it.
        let installed = wait_for(Duration::from_secs(120), || {
            let out = run("dpkg", &["-i", deb]);
            if out.status.success() {
                return Some(Ok(()));
            }
            if out.stderr.contains("lock") {
                return None;
            }
            Some(Err(format!("{}{}", out.stdout, out.stderr)))
        });
        match installed {
            Some(Ok(())) => guard,
            Some(Err(out)) => panic!("dpkg -i {deb}: {out}"),
            None => panic!("dpkg -i {deb}: the dpkg lock stayed taken for 120 s"),
        }
    }

    fn purge(&self) -> stampede_lab::Output {
        let out = run("dpkg", &["--purge", "stampede"]);
        if self.made_user
            && nix::unistd::User::from_name(package::USER)
                .ok()
                .flatten()
                .is_some()
        {
            run("deluser", &["--quiet", "--system", package::USER]);
            if nix::unistd::Group::from_name(package::USER)
                .ok()
                .flatten()
                .is_some()
            {
                run("delgroup", &["--quiet", "--system", package::USER]);
            }
        }
        out
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status() != "not-installed" {
            let out = self.purge();
            if !out.status.success() {
                eprintln!("package test: dpkg --purge stampede: {}", out.stderr);
            }
        }
    }
}

/// One run at a time on this machine: the package and its user are machine-wide.
fn machine_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::File::create("/run/lock/stampede-package-test.lock")
        .or_else(|_| std::fs::File::create(std::env::temp_dir().join("stampede-package-test.lock")))
        .expect("lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock: {e}"))
}

#[test]
fn the_debian_package_installs_a_working_service_and_purges_clean() {
    if !require!(&[
        "dpkg",
        "dpkg-deb",
        "dpkg-query",
        "strip",
        "objdump",
        "gzip",
        "adduser",
        "deluser",
    ]) {
        return;
    }
    let lock = machine_lock();
    if package_status() == "installed" {
        eprintln!("debian_package: skipped: a stampede package is installed on this machine");
        return;
    }
    let out_dir = tempfile::Builder::new()
        .prefix("stampede-package-")
        .tempdir()
        .expect("tempdir");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let version = env!("CARGO_PKG_VERSION");
    let deb = package::build_deb(&package::PackageInputs {
        workspace,
        binary: Path::new(STAMPEDE),
        version,
        out_dir: out_dir.path(),
        compression: package::Compression::Fast,
    })
    .unwrap_or_else(|e| panic!("building the package: {e:#}"));

    let info = run("dpkg-deb", &["--info", deb.to_str().expect("utf-8")]);
    assert!(info.status.success(), "{}", info.stderr);
    for field in [
        "Package: stampede",
        &format!("Version: {version}"),
        "Depends: adduser, libc6 (>= 2.",
        "postinst",
    ] {
        assert!(info.stdout.contains(field), "{field}:\n{}", info.stdout);
    }

    let installed = Installed::install(&deb, lock);
    let root = Path::new("/");
    let man = |page: &str| format!("{}/{page}.1.gz", package::MAN_DIR);
    for path in [
        package::BINARY.to_owned(),
        package::UNIT.to_owned(),
        package::CONFIG.to_owned(),
        package::BASH_COMPLETION.to_owned(),
        package::ZSH_COMPLETION.to_owned(),
        package::FISH_COMPLETION.to_owned(),
        man("stampede"),
        man("stampede-serve"),
        man("stampede-boot"),
        man("stampede-ctl"),
        format!("{}/copyright", package::DOC_DIR),
        format!("{}/stampede.json", package::DASHBOARD_DIR),
    ] {
        assert!(root.join(&path).is_file(), "/{path} installed");
    }
    assert_eq!(
        std::fs::read(root.join(package::UNIT)).expect("unit"),
        std::fs::read(workspace.join("packaging/stampede.service")).expect("unit"),
        "the unit is the repository's"
    );
    assert_eq!(
        std::fs::read(root.join(package::CONFIG)).expect("config"),
        std::fs::read(workspace.join("docs/stampede.example.toml")).expect("example"),
        "the example configuration"
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "stampede"]);
    assert!(
        conffiles.stdout.contains(&format!("/{}", package::CONFIG)),
        "a conffile: {}",
        conffiles.stdout
    );

    let version_line = run(&format!("/{}", package::BINARY), &["--version"]);
    assert!(version_line.status.success(), "{}", version_line.stderr);
    assert_eq!(version_line.stdout.trim(), format!("stampede {version}"));

    let user = nix::unistd::User::from_name(package::USER)
        .expect("users")
        .expect("postinst made the user");
    assert!(user.uid.as_raw() < 1000, "a system user: {user:?}");
    assert!(
        user.shell.ends_with("nologin") || user.shell.ends_with("false"),
        "no login: {user:?}"
    );
    assert_eq!(user.dir, PathBuf::from("/var/lib/stampede"));
    assert!(
        nix::unistd::Group::from_name(package::USER)
            .expect("groups")
            .is_some()
    );

    if stampede_lab::which("systemd-analyze").is_some() {
        let verify = run(
            "systemd-analyze",
            &["verify", &format!("/{}", package::UNIT)],
        );
        assert!(
            verify.status.success() && verify.stderr.trim().is_empty(),
            "systemd-analyze verify: {}{}",
            verify.stdout,
            verify.stderr
        );
    }
    if stampede_lab::which("man").is_some() {
        let found = run("man", &["-w", "stampede-serve"]);
        assert!(
            found.stdout.trim().ends_with("stampede-serve.1.gz"),
            "man finds the page: {}{}",
            found.stdout,
            found.stderr
        );
    }

    let purged = installed.purge();
    assert!(purged.status.success(), "dpkg --purge: {}", purged.stderr);
    assert_eq!(package_status(), "not-installed");
    for gone in [
        package::BINARY,
        package::UNIT,
        "etc/stampede",
        "var/lib/stampede",
    ] {
        assert!(!root.join(gone).exists(), "/{gone} removed by purge");
    }
}
