//! Running `stampede boot` in a lab namespace, and reading what it reports.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::sys::signal::Signal;
use sha2::{Digest as _, Sha256};
use stampede_lab::{Netns, Output, Process, wait_for};

pub const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

/// The first admin token the tests' appliances start with (`STAMPEDE_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A kernel and an initrd of deterministic pseudo-random bytes, in a directory removed on drop.
#[derive(Debug)]
pub struct Payload {
    pub dir: tempfile::TempDir,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub use stampede_lab::pseudo_random;

impl Payload {
    pub fn new(kernel_len: usize, initrd_len: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stampede-payload-")
            .tempdir()
            .expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&kernel, pseudo_random(kernel_len, 1)).expect("write kernel");
        std::fs::write(&initrd, pseudo_random(initrd_len, 2)).expect("write initrd");
        Self {
            dir,
            kernel,
            initrd,
        }
    }
}

pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts `stampede boot` in `ns` on `iface` and waits until its TFTP port is bound.
pub fn start_boot(ns: &Netns, iface: &str, extra: &[&str], payload: &Payload) -> Process {
    start_boot_xdp(ns, iface, "off", extra, payload)
}

/// [`start_boot`] with the XDP classifier in `xdp_mode` (auto, native, generic or off).
pub fn start_boot_xdp(
    ns: &Netns,
    iface: &str,
    xdp_mode: &str,
    extra: &[&str],
    payload: &Payload,
) -> Process {
    let mut command = ns.command(STAMPEDE);
    command
        .args([
            "boot",
            "--iface",
            iface,
            "--xdp-mode",
            xdp_mode,
            "--stats-interval",
            "60",
        ])
        .arg("--state")
        .arg(payload.dir.path().join("state.redb"))
        .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(extra)
        .arg(&payload.kernel)
        .arg(&payload.initrd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Process::spawn(command).expect("start stampede boot");
    let bound = wait_for(Duration::from_secs(20), || {
        if process.try_status().is_some() {
            return Some(false);
        }
        let out = ns.run("ss", &["-ulnH"], Duration::from_secs(5)).ok()?;
        out.stdout.contains(":69 ").then_some(true)
    });
    if bound != Some(true) {
        let out = process.wait_output(Duration::from_secs(5)).ok();
        panic!(
            "stampede boot did not come up: {:?}",
            out.map(|o| format!("{}\n{}", o.stdout, o.stderr))
        );
    }
    process
}

/// Stops the appliance (SIGTERM) and returns its output and the `final stats` counters.
pub fn stop(process: Process) -> (Output, HashMap<String, u64>) {
    process.signal(Signal::SIGTERM).expect("SIGTERM");
    let out = process
        .wait_output(Duration::from_secs(15))
        .expect("stampede exits after SIGTERM");
    assert!(
        out.status.success(),
        "stampede failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("final stats "))
        .unwrap_or_else(|| panic!("no final stats in:\n{}", out.stdout))
        .to_owned();
    let stats = line
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter(|(k, _)| *k != "at")
        .map(|(k, v)| (k.to_owned(), v.parse().expect("a count")))
        .collect();
    (out, stats)
}

/// A udhcpc script that prints what it was given and configures the address.
pub fn udhcpc_script(dir: &Path) -> PathBuf {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         if [ \"$1\" = bound ]; then\n\
           ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n\
           echo \"BOUND ip=$ip serverid=$serverid siaddr=$siaddr boot_file=$boot_file\"\n\
         fi\n\
         exit 0\n",
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    script
}

/// `key=value` pairs of the BOUND line a [`udhcpc_script`] printed.
pub fn bound(stdout: &str) -> HashMap<String, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BOUND "))
        .unwrap_or_else(|| panic!("udhcpc got no lease:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Where the tests' appliances serve their control API (loopback of their namespace).
pub const API: &str = "http://127.0.0.1:7070";

/// Waits until the appliance in `ns` answers `/api/v1/health`.
pub fn wait_for_api(ns: &Netns) {
    let up = wait_for(Duration::from_secs(10), || {
        let url = format!("{API}/api/v1/health");
        let out = ns
            .run("curl", &["-sf", &url], Duration::from_secs(5))
            .ok()?;
        out.status.success().then_some(())
    });
    assert!(up.is_some(), "the control API did not answer on {API}");
}

/// `stampede ctl ARGS` against the appliance in `ns` with the admin token; its stdout.
pub fn ctl(ns: &Netns, args: &[&std::ffi::OsStr]) -> String {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["ctl", "--url", API, "--token", ADMIN_TOKEN])
        .args(args);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(15)).expect("ctl runs");
    assert!(
        out.status.success(),
        "ctl {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}
