//! Running `stampede boot` in a lab namespace, and reading what it reports.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;
use sha2::{Digest as _, Sha256};
use stampede_lab::{Netns, Output, Process, TwoHosts, wait_for};

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
    spawn_appliance(command, "stampede boot", || tftp_bound(ns))
}

/// `stampede serve --config CONFIG --state DIR/state.redb` in `ns` with the tests' admin token,
/// its output piped; not started, so a test can add arguments or expect the start to fail.
pub fn serve_command(ns: &Netns, config: &Path, dir: &Path) -> Command {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["serve", "--config"])
        .arg(config)
        .arg("--state")
        .arg(dir.join("state.redb"))
        .args(["--stats-interval", "60"])
        .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts the appliance `command` (named `what` in messages) and waits up to 20 s for `ready`;
/// when it exits first or is not ready in time, panics with what it printed.
pub fn spawn_appliance(command: Command, what: &str, mut ready: impl FnMut() -> bool) -> Process {
    let mut process = Process::spawn(command).unwrap_or_else(|err| panic!("start {what}: {err}"));
    let up = wait_for(Duration::from_secs(20), || {
        if process.try_status().is_some() {
            return Some(false);
        }
        ready().then_some(true)
    });
    if up != Some(true) {
        let out = process.wait_output(Duration::from_secs(5)).ok();
        panic!(
            "{what} did not come up: {:?}",
            out.map(|o| format!("{}\n{}", o.stdout, o.stderr))
        );
    }
    process
}

/// The appliance in `ns` has bound its TFTP port (UDP 69).
pub fn tftp_bound(ns: &Netns) -> bool {
    ns.run("ss", &["-ulnH"], Duration::from_secs(5))
        .is_ok_and(|out| out.stdout.contains(":69 "))
}

/// The appliance in `ns` answers `/api/v1/health` on [`API`].
pub fn api_answers(ns: &Netns) -> bool {
    let url = format!("{API}/api/v1/health");
    ns.run("curl", &["-sf", &url], Duration::from_secs(5))
        .is_ok_and(|out| out.status.success())
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

/// A two-host lab and a payload for `stampede serve --config`: the test writes the file
/// ([`ServeLab::write`]), then starts the appliance on it ([`ServeLab::serve`]).
#[derive(Debug)]
pub struct ServeLab {
    pub lab: TwoHosts,
    pub payload: Payload,
    /// `stampede.toml` in the payload's directory.
    pub config: PathBuf,
}

impl ServeLab {
    pub fn new() -> Self {
        let lab = TwoHosts::new().expect("lab");
        let payload = Payload::new(4096, 4096);
        let config = payload.dir.path().join("stampede.toml");
        Self {
            lab,
            payload,
            config,
        }
    }

    /// Writes the configuration: the lab's server interface under `[server]`, then `body`
    /// (TOML sections), then `[xdp] mode = "off"`. `{kernel}` in `body` stands for the
    /// payload's kernel file.
    pub fn write(&self, body: &str) {
        let text = format!(
            "[server]\ninterfaces = [\"{}\"]\n{}\n[xdp]\nmode = \"off\"\n",
            self.lab.server_if,
            body.replace("{kernel}", &self.payload.kernel.display().to_string()),
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// `stampede serve --config` on the file, its state beside it; returns once the control
    /// API answers.
    pub fn serve(&self) -> Process {
        let command = serve_command(&self.lab.server, &self.config, self.payload.dir.path());
        let server = Process::spawn(command).expect("serve");
        wait_for_api(&self.lab.server);
        server
    }
}

/// A two-host lab whose server side runs `stampede boot` on `payload`: what most lab tests start
/// from. Made by [`LabBoot::start`].
#[derive(Debug)]
pub struct ApplianceLab {
    pub lab: TwoHosts,
    pub payload: Payload,
    /// `stampede boot`, its TFTP port bound (and its API answering, when asked for).
    pub server: Process,
}

/// How to start an [`ApplianceLab`]: the payload's sizes, the appliance's arguments, and what
/// the lab needs before the appliance starts.
#[derive(Debug)]
#[must_use = "nothing starts before `start`"]
pub struct LabBoot {
    payload: Option<Payload>,
    kernel_len: usize,
    initrd_len: usize,
    client_address: bool,
    dhcp_range: Option<(u8, u8)>,
    xdp_mode: String,
    args: Vec<String>,
    api: bool,
}

impl LabBoot {
    /// `stampede boot` (XDP off) serving a kernel and an initrd of these sizes.
    pub fn new(kernel_len: usize, initrd_len: usize) -> Self {
        Self {
            payload: None,
            kernel_len,
            initrd_len,
            client_address: false,
            dhcp_range: None,
            xdp_mode: "off".to_owned(),
            args: Vec::new(),
            api: false,
        }
    }

    /// `stampede boot` serving `payload`, which the test prepared (files or a state file beside
    /// the kernel, read at start).
    pub fn with_payload(payload: Payload) -> Self {
        Self {
            payload: Some(payload),
            ..Self::new(0, 0)
        }
    }

    /// The client has host address 2 of the lab's subnet before the appliance starts (a machine
    /// that talks TFTP or HTTP without a DHCP exchange first).
    pub fn client_address(mut self) -> Self {
        self.client_address = true;
        self
    }

    /// `--dhcp-range` from host `first` to host `last` of the lab's subnet: authoritative DHCP.
    pub fn dhcp_range(mut self, first: u8, last: u8) -> Self {
        self.dhcp_range = Some((first, last));
        self
    }

    /// The XDP classifier in `mode` (auto, native, generic or off).
    pub fn xdp_mode(mut self, mode: &str) -> Self {
        self.xdp_mode = mode.to_owned();
        self
    }

    /// More arguments for `stampede boot`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Waits for the control API to answer too ([`wait_for_api`]).
    pub fn api(mut self) -> Self {
        self.api = true;
        self
    }

    /// Creates the lab (and the client's address), then the payload, then starts the appliance
    /// and waits until it is up.
    pub fn start(self) -> ApplianceLab {
        let lab = TwoHosts::new().expect("lab");
        if self.client_address {
            lab.client
                .ip(&["addr", "add", &lab.subnet.cidr(2), "dev", &lab.client_if])
                .expect("client address");
        }
        let payload = self
            .payload
            .unwrap_or_else(|| Payload::new(self.kernel_len, self.initrd_len));
        let mut args = Vec::new();
        if let Some((first, last)) = self.dhcp_range {
            let range = format!("{}-{}", lab.subnet.host(first), lab.subnet.host(last));
            args.extend(["--dhcp-range".to_owned(), range]);
        }
        args.extend(self.args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = start_boot_xdp(&lab.server, &lab.server_if, &self.xdp_mode, &args, &payload);
        if self.api {
            wait_for_api(&lab.server);
        }
        ApplianceLab {
            lab,
            payload,
            server,
        }
    }
}

/// Options of busybox udhcpc that make it present itself as a PXE ROM of a BIOS machine (PXE
/// 2.1 §2.2.1: option 60).
pub const UDHCPC_BIOS: &[&str] = &["-V", "PXEClient:Arch:00000:UNDI:002001"];
/// ... of a UEFI machine: option 93, client system architecture 7 (RFC 4578 §2.1).
pub const UDHCPC_UEFI: &[&str] = &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"];
/// ... of iPXE on a BIOS machine: option 77 (user class) "iPXE", as iPXE sends it.
pub const UDHCPC_IPXE: &[&str] = &[
    "-V",
    "PXEClient:Arch:00000:UNDI:002001",
    "-x",
    "0x4d:69505845",
];

/// busybox udhcpc on `iface` in `ns`, in the foreground, once (`-f -q -n`): `tries` DISCOVERs a
/// second apart, `script` run on its events (a [`udhcpc_script`], or `/bin/true`), and `extra`
/// options after it (the client class: [`UDHCPC_BIOS`], ...). What it printed.
pub fn udhcpc(ns: &Netns, iface: &str, tries: u32, script: &Path, extra: &[&str]) -> Output {
    let tries = tries.to_string();
    let mut args = vec![
        "udhcpc", "-i", iface, "-f", "-q", "-n", "-t", &tries, "-T", "1", "-s",
    ];
    args.push(script.to_str().expect("utf-8 path"));
    args.extend_from_slice(extra);
    ns.run("busybox", &args, Duration::from_secs(30))
        .expect("udhcpc runs")
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
    let up = wait_for(Duration::from_secs(10), || api_answers(ns).then_some(()));
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

/// `stampede boot --root SOURCE` in `ns` (API, router advertisements and XDP off, state in
/// `dir`), its output in files under `dir`: a root's build prints much and may take minutes
/// on busy cores. [`start`](Self::start) returns once it printed `ready`.
pub struct RootAppliance {
    pub process: Process,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl RootAppliance {
    /// A root's build can take minutes on shared cores under TCG load.
    const READY_TIMEOUT: Duration = Duration::from_secs(240);

    pub fn start(ns: &Netns, iface: &str, source: &str, dir: &Path, extra: &[&str]) -> Self {
        let stdout = dir.join("stampede.out");
        let stderr = dir.join("stampede.log");
        let mut command = ns.command(STAMPEDE);
        command
            .args(["boot", "--iface", iface, "--root", source])
            .args(extra)
            .args(["--api", "off", "--router-advertisements", "off"])
            .args(["--xdp-mode", "off", "--stats-interval", "60", "--state"])
            .arg(dir.join("state.redb"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(
                std::fs::File::create(&stdout).expect("stdout file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("stderr file"),
            ));
        let mut process = Process::spawn(command).expect("stampede starts");
        let ready = wait_for(Self::READY_TIMEOUT, || {
            if process.try_status().is_some() {
                return Some(false);
            }
            let out = std::fs::read_to_string(&stdout).ok()?;
            out.lines().any(|l| l.starts_with("ready ")).then_some(true)
        });
        let appliance = Self {
            process,
            stdout,
            stderr,
        };
        assert_eq!(
            ready,
            Some(true),
            "stampede did not come up:\n{}",
            appliance.log()
        );
        appliance
    }

    /// Everything it printed so far, stdout then stderr.
    pub fn log(&self) -> String {
        (self.logger())()
    }

    /// [`log`](Self::log) that outlives `self` (the process may be waited for, consuming it).
    pub fn logger(&self) -> impl Fn() -> String + use<> {
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        move || {
            format!(
                "{}{}",
                std::fs::read_to_string(&stdout).unwrap_or_default(),
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        }
    }
}
