//! `cargo xtask demo`: one real machine boots diskless from Stampede.
//!
//! Builds Stampede (release), sets up a [`BootLab`] (a server namespace whose veth is bridged to
//! a tap in a rack namespace), starts `stampede boot --dhcp-range .. --root oci:LAYOUT:small`
//! with the lab's small OCI image (two layers: busybox, Debian's kernel and the modules a root
//! needs, an `/sbin/init` that prints `STAMPEDE-MARKER <value>` and powers off), and powers on
//! one QEMU machine (SeaBIOS with QEMU's iPXE ROM, `-accel tcg`) on the tap: firmware, iPXE,
//! the image's kernel and Stampede's node initramfs, whose agent fetches the signed manifest
//! and the verified chunks, mounts the root under a RAM overlay and starts the image's init.
//! `--kernel-initrd` boots the loader stage's tiny Linux instead (Debian's kernel and a busybox
//! initramfs). The `stampede::boot` log lines are shown as the machine goes
//! through DHCP and HTTP, then its console marker with the measured power-on-to-marker time.
//! XDP: `--xdp-mode auto` attaches the classifier on the server's veth when the kernel allows
//! it; its counters are part of the final stats. Everything is torn down afterwards (namespaces,
//! processes and files are RAII), also on failure. Bounded: every wait has a timeout.
use std::{
    fs,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use stampede_lab::{
    Process,
    guest::{MARKER_PARAM, Payload},
    qemu::{BootLab, Firmware, MachineError, MachineSpec, WorkDir},
    wait_for,
};

/// One SeaBIOS + iPXE ROM boot took 20-40 s under TCG in the lab tests.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let diskless = match args {
        [] => true,
        [flag] if flag == "--kernel-initrd" => false,
        other => bail!("cargo xtask demo [--kernel-initrd]: unexpected {other:?}"),
    };
    if let Some(reason) = stampede_lab::unavailable_reason() {
        bail!("the demo runs a network-namespace lab: {reason}");
    }
    for program in [stampede_lab::qemu::QEMU, "busybox"] {
        if stampede_lab::which(program).is_none() {
            bail!("the demo needs {program} (run `cargo xtask setup`)");
        }
    }
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "stampede"]);
    crate::run(build)?;
    let binary = crate::workspace_root().join("target/release/stampede");

    let what = if diskless {
        println!(
            "\n== the image: an OCI layout (umoci) with busybox, Debian's kernel and modules, and \
             an init that prints its marker"
        );
        let image = stampede_lab::root_image::small_image().context("building the image")?;
        println!("   {}", image.source());
        Boot::Root(image.source())
    } else {
        println!(
            "\n== the payload: Debian's kernel and a busybox initramfs that prints its marker"
        );
        let payload = Payload::prepare().context("preparing the payload")?;
        println!("   kernel {}", payload.kernel.display());
        println!("   initrd {}", payload.initrd.display());
        Boot::KernelInitrd(payload)
    };

    let mut lab = BootLab::new().context("creating the lab")?;
    let work = WorkDir::new("demo").context("work directory")?;
    let tap = lab.add_tap().context("tap")?;
    let (low, high) = lab.dhcp_range();
    println!(
        "\n== lab: server namespace {} ({} on {}), rack namespace {} (bridge {} with {} and tap {})",
        lab.server.name(),
        lab.server_ip(),
        lab.server_if,
        lab.rack.name(),
        lab.bridge,
        lab.rack_if,
        tap
    );

    let marker = format!("demo-{}", std::process::id());
    let cmdline = format!("console=ttyS0 panic=-1 {MARKER_PARAM}={marker}");
    let log = work.join("stampede.log");
    let mut command = lab
        .server
        .command(binary.to_str().context("path is UTF-8")?);
    command
        .args(["boot", "--iface", &lab.server_if])
        .args(["--dhcp-range", &format!("{low}-{high}")])
        .args([
            "--xdp-mode",
            "auto",
            "--api",
            DEMO_API,
            "--stats-interval",
            "60",
        ])
        .arg("--state")
        .arg(work.join("state.redb"))
        .args(["--cmdline", &cmdline]);
    match &what {
        Boot::Root(source) => command.args(["--root", source]),
        Boot::KernelInitrd(payload) => command.arg(&payload.kernel).arg(&payload.initrd),
    };
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("STAMPEDE_ADMIN_TOKEN", DEMO_TOKEN)
        .stdout(Stdio::from(
            fs::File::create(work.join("stampede.out")).context("stdout file")?,
        ))
        .stderr(Stdio::from(fs::File::create(&log).context("log file")?));
    println!(
        "\n== stampede boot --iface {} --dhcp-range {low}-{high} --cmdline {cmdline:?} {}",
        lab.server_if,
        match &what {
            Boot::Root(source) => format!("--root {source}"),
            Boot::KernelInitrd(payload) => format!(
                "vmlinuz {}",
                payload
                    .initrd
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
        }
    );
    let mut stampede = Process::spawn(command)?;
    let out_path = work.join("stampede.out");
    // A diskless root is built (pulled, flattened, written as erofs, chunked, signed) first.
    let ready = wait_for(Duration::from_secs(180), || {
        if stampede.try_status().is_some() {
            return Some(None);
        }
        let out = fs::read_to_string(&out_path).ok()?;
        out.lines()
            .find(|l| l.starts_with("ready "))
            .map(|_| Some(out.clone()))
    });
    let Some(Some(ready)) = ready else {
        bail!(
            "stampede boot did not come up:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    };
    for line in ready
        .lines()
        .filter(|l| l.starts_with("root ") || l.starts_with("ready "))
    {
        println!("   {line}");
    }

    println!("\n== power on: QEMU (SeaBIOS, e1000 with QEMU's iPXE ROM, -accel tcg) on {tap}");
    let spec = MachineSpec::network(Firmware::Bios, &tap, work.join("console.log"));
    println!(
        "   MAC {}; the appliance's stampede::boot log follows",
        spec.mac
    );
    let mut machine = lab.start_machine(spec).context("starting QEMU")?;
    let mut tail = LogTail::open(&log)?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let seen = loop {
        tail.print_new("stampede::boot");
        match machine.wait_for_marker(Duration::from_millis(250)) {
            Ok(seen) => break seen,
            Err(MachineError::MarkerTimeout { .. }) if Instant::now() < deadline => {}
            Err(err) => {
                tail.print_new("");
                bail!("the machine did not boot: {err}");
            }
        }
    };
    tail.print_new("stampede::boot");
    println!("\n== the machine's serial console");
    let console = machine.console();
    let shown: Vec<&str> = console
        .lines()
        .filter(|l| {
            l.contains("stampede-node:") || l.contains("STAMPEDE-") || l.contains("Linux version")
        })
        .collect();
    print!("{}", indent(&shown.join("\n")));
    // The small image's init prints its marker with its PID: 1, the image's own init.
    let expected = match &what {
        Boot::Root(_) => format!("{marker}-pid1"),
        Boot::KernelInitrd(_) => marker.clone(),
    };
    if seen.value != expected {
        bail!(
            "the console shows marker {:?}, not {expected:?}",
            seen.value
        );
    }
    println!(
        "\n== booted: power-on to {} printing {expected:?} in {:.1} s",
        match &what {
            Boot::Root(_) => "the OCI image's own init (PID 1, diskless root in RAM)",
            Boot::KernelInitrd(_) => "Linux userspace",
        },
        seen.elapsed_since_start.as_secs_f64()
    );
    if machine.wait_exit(Duration::from_secs(20)).is_none() {
        println!("   (the guest did not power off within 20 s; stopping QEMU)");
    }
    let mac = machine.spec().mac.clone();
    drop(machine);

    // The same boot as the control plane recorded it, as an operator would ask for it.
    println!("\n== the machine's boot session: stampede ctl sessions {mac}");
    let binary_path = binary.to_str().context("path is UTF-8")?;
    let api_url = format!("http://{DEMO_API}");
    let session = lab.server.run(
        binary_path,
        &[
            "ctl", "--url", &api_url, "--token", DEMO_TOKEN, "sessions", &mac,
        ],
        Duration::from_secs(10),
    );
    match session {
        Ok(out) if out.status.success() => print!("{}", indent(&out.stdout)),
        Ok(out) => println!("   (no session: {})", out.stderr.trim()),
        Err(err) => println!("   (ctl did not run: {err})"),
    }
    println!(
        "   Where to look on a running appliance: the API at http://{DEMO_API}/api/v1 \
         (openapi.json, machines, sessions, images), `stampede ctl sessions`, live boots with `stampede ctl watch`, \
         Prometheus counters at /metrics."
    );

    println!("\n== stopping stampede (SIGTERM): its final counters");
    stampede.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = stampede.wait_output(Duration::from_secs(15))?.status;
    let out = fs::read_to_string(&out_path).unwrap_or_default();
    for line in out
        .lines()
        .filter(|l| l.starts_with("final ") || l.starts_with("xdp "))
    {
        for chunk in line.split_whitespace().collect::<Vec<_>>().chunks(6) {
            println!("   {}", chunk.join(" "));
        }
    }
    if !status.success() {
        bail!("stampede exited with {status}");
    }
    drop(lab);
    println!("\n== lab torn down (namespaces, veth, bridge, tap, work directory)");
    Ok(())
}

/// What the demo machine boots.
enum Boot {
    /// `stampede boot --root SOURCE`.
    Root(String),
    /// `stampede boot KERNEL INITRD`.
    KernelInitrd(Payload),
}

/// Where the demo's appliance serves its control API (loopback of the server namespace).
const DEMO_API: &str = "127.0.0.1:7070";
/// The demo appliance's first admin token (`STAMPEDE_ADMIN_TOKEN`): throwaway, like the lab.
const DEMO_TOKEN: &str = "stampede-demo-token";

/// Follows a log file, printing the lines that contain a pattern.
struct LogTail {
    reader: BufReader<fs::File>,
}

impl LogTail {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let mut file = fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Self {
            reader: BufReader::new(file),
        })
    }

    fn print_new(&mut self, pattern: &str) {
        let mut line = String::new();
        // A line still being written has no newline yet: keep it for the next call.
        while self.reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if !line.ends_with('\n') {
                let _ = self
                    .reader
                    .seek_relative(-i64::try_from(line.len()).unwrap_or(0));
                return;
            }
            if line.contains(pattern) {
                print!("   | {}", shorten(&line));
            }
            line.clear();
        }
    }
}

/// Drops the date and the log target so the demo's lines fit a terminal.
fn shorten(line: &str) -> String {
    let line = match line.split_once('T') {
        Some((date, rest)) if date.len() == 10 => rest,
        _ => line,
    };
    line.replacen(" INFO stampede::boot:", "", 1)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   | {l}\n")).collect()
}
