//! QEMU machines that network-boot through real firmware, and the bridged topology they boot on.
//!
//! ```text
//!  server netns                     rack netns
//!  ┌──────────────────┐  veth   ┌──────────────────────────────┐
//!  │ server_if .1/24  ├─────────┤ rack_if ─┐                   │
//!  │ (DHCP/TFTP/HTTP) │         │          bridge ── tap ── QEMU │
//!  └──────────────────┘         │                 └─ tap ── QEMU │
//!                               └──────────────────────────────┘
//! ```
//!
//! * [`BootLab::new`] builds the picture above (IPv6 off in the rack namespace so only the
//!   guests speak there; on at the server, as on a real boot server, so firmware's router
//!   solicitations can be answered); [`BootLab::add_tap`] adds one tap per machine.
//! * [`QemuMachine::start`] runs `qemu-system-x86_64` inside a namespace with the command line
//!   [`MachineSpec::args`] builds for a [`Firmware`]: SeaBIOS with QEMU's iPXE NIC ROM, OVMF's own
//!   UEFI PXE client, or OVMF with only UEFI HTTP Boot left. Under TCG (no KVM here); the serial
//!   console goes to [`MachineSpec::serial_log`].
//! * [`QemuMachine::wait_for_marker`] polls the console for the payload's marker
//!   ([`crate::guest`]) and reports the time since QEMU started; [`QemuMachine::console_tail`] is
//!   for failure messages. The machine is killed when dropped.
//! * [`WorkDir`] is a world-readable scratch directory (server roots, logs) removed on drop:
//!   servers that drop privileges, like dnsmasq, must be able to read it.
use std::{
    fmt, fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{
    LabError, Netns, Process, Subnet, bridge,
    console::{ConsoleStamper, StampedLine},
    enslave, guest, next_seq, tap, veth_pair,
};

/// OVMF's code, mapped read-only and shared by every UEFI machine.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template; each machine boots from its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot and SMM (needs q35 with `smm=on` and secure pflash).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// A variable store with Microsoft's keys enrolled and Secure Boot on.
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// The emulator binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Errors running machines.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no marker on the console within {timeout:?}; last console lines:\n{tail}")]
    MarkerTimeout { timeout: Duration, tail: String },
    #[error("QEMU exited ({status}) without printing a marker; last console lines:\n{tail}")]
    ExitedWithoutMarker { status: ExitStatus, tail: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MachineError + '_ {
    move |source| MachineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which firmware boots the machine, and so which client the server meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// SeaBIOS, `-boot n`, e1000 with QEMU's default NIC ROM, which is iPXE: DHCP with option
    /// 175 and user class `iPXE` from the first packet.
    Bios,
    /// OVMF, virtio-net without option ROM, so OVMF's own EDK2 PXE client boots (vendor class
    /// `PXEClient:Arch:00007`): TFTP a boot file such as `snponly.efi`, which then runs iPXE.
    UefiPxe,
    /// OVMF with IPv4/IPv6 PXE switched off through fw_cfg, leaving UEFI HTTP Boot (vendor
    /// class `HTTPClient`; the offer must echo option 60 and carry a URL as boot file).
    UefiHttp,
    /// [`Firmware::UefiPxe`] with Secure Boot enforced and Microsoft's keys enrolled (q35 with
    /// SMM, [`OVMF_CODE_SECBOOT`], a copy of [`OVMF_VARS_MS`]): only signed boot files run.
    /// Not in [`Firmware::ALL`].
    UefiSecureBoot,
}

impl Firmware {
    pub const ALL: [Firmware; 3] = [Firmware::Bios, Firmware::UefiPxe, Firmware::UefiHttp];

    pub fn is_uefi(self) -> bool {
        !matches!(self, Firmware::Bios)
    }

    /// Short lowercase name for logs, markers and file names.
    pub fn tag(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::UefiPxe => "uefipxe",
            Firmware::UefiHttp => "uefihttp",
            Firmware::UefiSecureBoot => "uefisecureboot",
        }
    }

    /// OVMF's code and variable store template; `None` for SeaBIOS.
    pub fn ovmf(self) -> Option<(&'static str, &'static str)> {
        match self {
            Firmware::Bios => None,
            Firmware::UefiPxe | Firmware::UefiHttp => Some((OVMF_CODE, OVMF_VARS)),
            Firmware::UefiSecureBoot => Some((OVMF_CODE_SECBOOT, OVMF_VARS_MS)),
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// A locally administered unicast MAC (QEMU's `52:54:00` prefix), unique in this process.
pub fn unique_mac() -> String {
    let seq = next_seq();
    let pid = std::process::id();
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        pid & 0xFF,
        (seq >> 8) & 0xFF,
        seq & 0xFF
    )
}

/// How to build one machine.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub firmware: Firmware,
    /// NIC MAC address (`52:54:00:..`); see [`unique_mac`].
    pub mac: String,
    /// Tap the NIC is wired to (in the namespace the machine runs in); `None` for no NIC.
    pub tap: Option<String>,
    /// Serial console transcript. QEMU's own stdout/stderr go next to it (`<log>.qemu`), and
    /// UEFI machines keep their variable store there too (`<log>.vars.fd`).
    pub serial_log: PathBuf,
    pub memory_mb: u32,
    /// Extra QEMU arguments, appended last.
    pub extra: Vec<String>,
}

impl MachineSpec {
    /// A network-booting machine on `tap` with a fresh MAC and 512 MiB (enough for Debian's
    /// kernel to unpack the initramfs; the EDK2 HTTP client wants RAM for the download too).
    pub fn network(firmware: Firmware, tap: &str, serial_log: impl Into<PathBuf>) -> Self {
        Self {
            firmware,
            mac: unique_mac(),
            tap: Some(tap.to_owned()),
            serial_log: serial_log.into(),
            memory_mb: 512,
            extra: Vec::new(),
        }
    }

    /// A machine without NIC that boots `payload` directly (`-kernel/-initrd/-append`).
    pub fn direct_kernel(
        payload: &guest::Payload,
        cmdline: &str,
        serial_log: impl Into<PathBuf>,
    ) -> Self {
        let mut spec = Self {
            firmware: Firmware::Bios,
            mac: unique_mac(),
            tap: None,
            serial_log: serial_log.into(),
            memory_mb: 512,
            extra: Vec::new(),
        };
        spec.extra.extend([
            "-kernel".to_owned(),
            payload.kernel.display().to_string(),
            "-initrd".to_owned(),
            payload.initrd.display().to_string(),
            "-append".to_owned(),
            cmdline.to_owned(),
        ]);
        spec
    }

    /// Where a UEFI machine's private copy of the variable store lives.
    pub fn vars_path(&self) -> PathBuf {
        suffixed(&self.serial_log, ".vars.fd")
    }

    /// Where QEMU's own stdout and stderr go.
    pub fn qemu_log(&self) -> PathBuf {
        suffixed(&self.serial_log, ".qemu")
    }

    /// The full QEMU argument list (without the program).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-m",
            &self.memory_mb.to_string(),
            "-nographic",
            "-monitor",
            "none",
            // Power-off and reboot both end QEMU, so a finished or crashed guest never loops.
            "-no-reboot",
            "-serial",
            &format!("file:{}", self.serial_log.display()),
        ]
        .map(str::to_owned)
        .into();
        if self.firmware == Firmware::UefiSecureBoot {
            // The secure build keeps its variables behind SMM: the flash must be "secure".
            args.extend(
                [
                    "-machine",
                    "q35,smm=on",
                    "-global",
                    "driver=cfi.pflash01,property=secure,value=on",
                ]
                .map(str::to_owned),
            );
        }
        if let Some((code, _)) = self.firmware.ovmf() {
            args.extend([
                "-drive".to_owned(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
                "-drive".to_owned(),
                format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    self.vars_path().display()
                ),
            ]);
        }
        if self.firmware == Firmware::UefiHttp {
            for knob in ["IPv4PXESupport", "IPv6PXESupport"] {
                args.push("-fw_cfg".to_owned());
                args.push(format!("name=opt/org.tianocore/{knob},string=no"));
            }
        }
        match &self.tap {
            None => args.extend(["-nic".to_owned(), "none".to_owned()]),
            Some(tap) => {
                args.push("-netdev".to_owned());
                args.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
                args.push("-device".to_owned());
                args.push(match self.firmware {
                    // e1000's default ROM is iPXE (ipxe-qemu's pxe-e1000.rom).
                    Firmware::Bios => format!("e1000,netdev=n0,mac={},bootindex=1", self.mac),
                    // No option ROM: OVMF's VirtioNetDxe and EDK2 network stack do the boot.
                    Firmware::UefiPxe | Firmware::UefiHttp | Firmware::UefiSecureBoot => format!(
                        "virtio-net-pci,netdev=n0,mac={},romfile=,bootindex=1",
                        self.mac
                    ),
                });
                if self.firmware == Firmware::Bios {
                    args.extend(["-boot".to_owned(), "n".to_owned()]);
                }
            }
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// What [`QemuMachine::wait_for_marker`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSeen {
    pub value: String,
    /// From just before QEMU was spawned to the poll that found the marker (50 ms resolution).
    pub elapsed_since_start: Duration,
}

/// A running QEMU, killed when dropped (its variable store copy is removed then too).
#[derive(Debug)]
pub struct QemuMachine {
    process: Process,
    spec: MachineSpec,
    started: Instant,
    stamper: ConsoleStamper,
}

impl QemuMachine {
    /// Starts QEMU inside `ns` (the namespace holding `spec.tap`).
    pub fn start(ns: &Netns, spec: MachineSpec) -> Result<Self, MachineError> {
        if let Some((_, template)) = spec.firmware.ovmf() {
            let vars = spec.vars_path();
            fs::copy(template, &vars).map_err(io_err(&vars))?;
        }
        // A stale transcript from an earlier run must not satisfy wait_for_marker.
        fs::write(&spec.serial_log, b"").map_err(io_err(&spec.serial_log))?;
        let qemu_log = spec.qemu_log();
        let out = fs::File::create(&qemu_log).map_err(io_err(&qemu_log))?;
        let err = out.try_clone().map_err(io_err(&qemu_log))?;
        let mut command = ns.command(QEMU);
        command
            .args(spec.args())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let started = Instant::now();
        let process = Process::spawn(command)?;
        let stamper = ConsoleStamper::follow(spec.serial_log.clone(), started);
        Ok(Self {
            process,
            spec,
            started,
            stamper,
        })
    }

    pub fn spec(&self) -> &MachineSpec {
        &self.spec
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.id()
    }

    /// Time since QEMU was spawned.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far (lossy UTF-8; firmware prints escape sequences).
    pub fn console(&self) -> String {
        fs::read(&self.spec.serial_log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The console lines so far, each with the time since QEMU started that its first and last
    /// byte appeared (10 ms resolution).
    pub fn console_lines(&self) -> Vec<StampedLine> {
        self.stamper.lines()
    }

    /// The last `n` console lines, then QEMU's own messages if it printed any.
    pub fn console_tail(&self, n: usize) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        let mut tail = lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|line| line.trim_end_matches('\r'))
            .collect::<Vec<_>>()
            .join("\n");
        let qemu = fs::read_to_string(self.spec.qemu_log()).unwrap_or_default();
        if !qemu.trim().is_empty() {
            tail.push_str("\n--- qemu stdout/stderr ---\n");
            tail.push_str(qemu.trim());
        }
        tail
    }

    /// Has QEMU exited? (Non-blocking.)
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// Polls the console until the payload prints its marker, QEMU exits, or `timeout` passes.
    pub fn wait_for_marker(&mut self, timeout: Duration) -> Result<MarkerSeen, MachineError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = guest::parse_marker(&self.console()) {
                return Ok(MarkerSeen {
                    value,
                    elapsed_since_start: self.started.elapsed(),
                });
            }
            if let Some(status) = self.process.try_status() {
                // The guest may have printed and powered off between the two checks.
                if let Some(value) = guest::parse_marker(&self.console()) {
                    return Ok(MarkerSeen {
                        value,
                        elapsed_since_start: self.started.elapsed(),
                    });
                }
                return Err(MachineError::ExitedWithoutMarker {
                    status,
                    tail: self.console_tail(30),
                });
            }
            if Instant::now() >= deadline {
                return Err(MachineError::MarkerTimeout {
                    timeout,
                    tail: self.console_tail(30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for QEMU to exit by itself (the payload powers off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::wait_for(timeout, || self.process.try_status())
    }
}

impl Drop for QemuMachine {
    fn drop(&mut self) {
        // `process` is killed by its own Drop right after this; unlinking a file QEMU still
        // has open is fine.
        if self.spec.firmware.is_uefi() {
            let _ = fs::remove_file(self.spec.vars_path());
        }
    }
}

/// The bridged boot topology: a server namespace and a "rack" namespace whose bridge joins the
/// server's veth with one tap per machine.
#[derive(Debug)]
pub struct BootLab {
    // Field order is drop order: interfaces go with their namespaces.
    pub server: Netns,
    pub rack: Netns,
    /// The server's veth end, addressed `subnet.host(1)/24`.
    pub server_if: String,
    /// The veth end on the rack bridge.
    pub rack_if: String,
    pub bridge: String,
    pub subnet: Subnet,
    taps: Vec<String>,
}

impl BootLab {
    pub fn new() -> Result<Self, LabError> {
        let server = Netns::new("bootsrv")?;
        let rack = Netns::new("rack")?;
        // The rack carries only the guests' own traffic. The server keeps IPv6, as a real boot
        // server does: firmware solicits routers there (and Stampede may answer), with
        // duplicate address detection off so its link-local address is usable at once.
        rack.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        rack.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        server.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        server.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        let (server_if, rack_if) = veth_pair(&server, &rack)?;
        let subnet = Subnet::allocate();
        server.ip(&["addr", "add", &subnet.cidr(1), "dev", &server_if])?;
        let bridge = bridge(&rack)?;
        enslave(&rack, &rack_if, &bridge)?;
        Ok(Self {
            server,
            rack,
            server_if,
            rack_if,
            bridge,
            subnet,
            taps: Vec::new(),
        })
    }

    /// The server's address, `subnet.host(1)`.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.subnet.host(1)
    }

    /// A dynamic range for a DHCP server: `(.100, .199)`.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.subnet.host(100), self.subnet.host(199))
    }

    /// Creates a tap in the rack, on the bridge and up; pass it to [`MachineSpec::network`].
    pub fn add_tap(&mut self) -> Result<String, LabError> {
        let tap = tap(&self.rack)?;
        enslave(&self.rack, &tap, &self.bridge)?;
        self.taps.push(tap.clone());
        Ok(tap)
    }

    pub fn taps(&self) -> &[String] {
        &self.taps
    }

    /// Starts a machine in the rack namespace.
    pub fn start_machine(&self, spec: MachineSpec) -> Result<QemuMachine, MachineError> {
        QemuMachine::start(&self.rack, spec)
    }
}

/// A scratch directory under [`guest::cache_dir`]`/run`, mode 0755 (dnsmasq reads its TFTP root
/// after dropping to `nobody`), removed with its contents on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `<cache>/run/<pid>-<seq>-<tag>`. The first call in a process also removes the
    /// directories of processes that no longer exist (a run killed before its drops ran).
    pub fn new(tag: &str) -> Result<Self, MachineError> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        let run = guest::cache_dir().join("run");
        SWEEP.call_once(|| remove_stale_work_dirs(&run));
        let path = run.join(format!("{}-{}-{tag}", std::process::id(), next_seq()));
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        let dir = Self { path };
        // Every ancestor must be traversable by `nobody` too; target/ normally is (0755).
        dir.make_world_readable(&dir.path)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Creates a subdirectory, mode 0755.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, MachineError> {
        let path = self.path.join(name);
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        self.make_world_readable(&path)?;
        Ok(path)
    }

    /// Copies `from` to `<dir>/<name>`, mode 0644.
    pub fn copy_in(&self, dir: &Path, name: &str, from: &Path) -> Result<PathBuf, MachineError> {
        let to = dir.join(name);
        fs::copy(from, &to).map_err(io_err(from))?;
        self.make_world_readable(&to)?;
        Ok(to)
    }

    /// Writes `contents` to `<dir>/<name>`, mode 0644.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        contents: impl AsRef<[u8]>,
    ) -> Result<PathBuf, MachineError> {
        let to = dir.join(name);
        fs::write(&to, contents).map_err(io_err(&to))?;
        self.make_world_readable(&to)?;
        Ok(to)
    }

    fn make_world_readable(&self, path: &Path) -> Result<(), MachineError> {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
    }
}

fn remove_stale_work_dirs(run: &Path) {
    let Ok(entries) = fs::read_dir(run) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("STAMPEDE_LAB_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            eprintln!("lab: keeping {}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(firmware: Firmware) -> MachineSpec {
        MachineSpec::network(firmware, "tap9", "/tmp/x.log")
    }

    #[test]
    fn bios_boots_from_the_e1000_ipxe_rom() {
        let args = spec(Firmware::Bios).args().join(" ");
        assert!(args.contains("-accel tcg"), "{args}");
        assert!(args.contains("-no-reboot"), "{args}");
        assert!(args.contains("-serial file:/tmp/x.log"), "{args}");
        assert!(args.contains("-boot n"), "{args}");
        assert!(
            args.contains("-device e1000,netdev=n0,mac=52:54:00:"),
            "{args}"
        );
        assert!(!args.contains("pflash"), "{args}");
        assert!(
            !args.contains("romfile="),
            "BIOS keeps the iPXE ROM: {args}"
        );
    }

    #[test]
    fn uefi_pxe_uses_ovmf_and_no_option_rom() {
        let args = spec(Firmware::UefiPxe).args().join(" ");
        assert!(
            args.contains(&format!("readonly=on,file={OVMF_CODE}")),
            "{args}"
        );
        assert!(args.contains("unit=1,file=/tmp/x.log.vars.fd"), "{args}");
        assert!(args.contains("virtio-net-pci,netdev=n0"), "{args}");
        assert!(args.contains("romfile=,"), "{args}");
        assert!(!args.contains("PXESupport"), "{args}");
    }

    #[test]
    fn uefi_http_switches_pxe_off() {
        let args = spec(Firmware::UefiHttp).args().join(" ");
        assert!(args.contains("name=opt/org.tianocore/IPv4PXESupport,string=no"));
        assert!(args.contains("name=opt/org.tianocore/IPv6PXESupport,string=no"));
    }

    #[test]
    fn direct_kernel_has_no_nic() {
        let payload = guest::Payload {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let args = MachineSpec::direct_kernel(&payload, "console=ttyS0", "/tmp/d.log").args();
        let joined = args.join(" ");
        assert!(joined.contains("-nic none"), "{joined}");
        assert!(joined.contains("-kernel /k -initrd /i -append"), "{joined}");
        assert_eq!(args.last().map(String::as_str), Some("console=ttyS0"));
    }

    #[test]
    fn macs_are_unique_and_locally_administered() {
        let a = unique_mac();
        assert_ne!(a, unique_mac());
        assert!(a.starts_with("52:54:00:"));
        assert_eq!(a.len(), 17);
    }
}

/// QEMU machines one process runs at once: software emulation (TCG) on this project's two cores;
/// a third guest only makes all of them slower.
pub const MAX_MACHINES: usize = 2;

static FREE_SLOTS: std::sync::Mutex<usize> = std::sync::Mutex::new(MAX_MACHINES);
static SLOT_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// Permission to run one machine, held for its lifetime: cargo runs tests on parallel threads,
/// and at most [`MAX_MACHINES`] of them boot at once.
#[derive(Debug)]
pub struct MachineSlot(());

/// Waits for a free slot.
pub fn machine_slot() -> MachineSlot {
    let mut free = FREE_SLOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while *free == 0 {
        free = SLOT_FREED
            .wait(free)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    *free -= 1;
    MachineSlot(())
}

impl Drop for MachineSlot {
    fn drop(&mut self) {
        *FREE_SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        SLOT_FREED.notify_one();
    }
}
