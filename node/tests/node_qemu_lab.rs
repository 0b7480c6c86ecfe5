//! The node agent end to end: Debian's kernel boots an initramfs whose `/init` is the agent
//! (built static for musl), on a lab network with dnsmasq for DHCP and a small HTTP server in
//! this process playing the appliance (manifest, chunks, per-machine config, events). The root
//! is an erofs image of busybox whose own `/sbin/init` prints a marker and powers off.
//!
//! * `boots_a_verified_root_and_refetches_a_corrupt_chunk`: the chunks come as one `Range` of
//!   the whole image (`/roots/<id>/image`), one of them corrupt in it; the agent refetches that
//!   one from `/chunks/<sha256>`, mounts the root, writes the machine's files and the image's
//!   init runs as PID 1.
//! * `without_the_image_every_chunk_comes_from_its_own_url`: an appliance older than ranges
//!   answers 404 for the image; the agent says so once and fetches chunk by chunk, the corrupt
//!   chunk twice.
//! * `a_manifest_signed_with_another_key_never_mounts`: the agent refuses the manifest, reports
//!   `root_failed`, retries, and never asks for a chunk.
use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use stampede_lab::{
    Process,
    guest::{self, CpioEntry, kernel_package, newc_archive},
    pseudo_random,
    qemu::{BootLab, Firmware, MachineSpec, QemuMachine, WorkDir, machine_slot, unique_mac},
    require, run_with_timeout, wait_for,
};
use stampede_rootfs::manifest::{ManifestSigningKey, RootFormat, RootManifest, SignedManifest};

const TRUSTED_SEED: [u8; 32] = [7; 32];
const OTHER_SEED: [u8; 32] = [9; 32];
const ROOT_ID: &str = "node-lab";
const HOSTNAME: &str = "node-lab-7";
const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";
/// The chunk served corrupt on its first request.
const CORRUPT_CHUNK: usize = 1;

/// Modules the initramfs loads, dependencies first (paths in the kernel package). erofs needs
/// libcrc32c, which needs a crc32c implementation; with no modprobe in the initramfs the
/// kernel cannot fetch crc32c_generic on demand, so it is listed first.
const MODULES: &[&str] = &[
    "kernel/crypto/crc32c_generic.ko",
    "kernel/lib/libcrc32c.ko",
    "kernel/fs/erofs/erofs.ko",
    "kernel/fs/overlayfs/overlay.ko",
    "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
    "kernel/drivers/block/brd.ko",
];

/// `/sbin/init` of the root image: reports what the agent prepared, then powers off.
const ROOT_INIT: &str = r#"#!/bin/sh
marker=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    stampede.marker=*) marker="${word#stampede.marker=}" ;;
  esac
done
echo "NODE-ROOT pid=$$ hostname=$(cat /etc/hostname) machine_id=$(cat /etc/machine-id)"
echo "NODE-ROOT resolv=$(grep nameserver /etc/resolv.conf | head -n 1)"
if [ -L /etc/resolv.conf ]; then echo "NODE-ROOT resolv-is-a-symlink"; fi
echo "NODE-ROOT lease $(grep '^ip=' /run/stampede/lease)"
echo overlay > /var/probe && echo "NODE-ROOT wrote $(cat /var/probe)"
echo "STAMPEDE-MARKER $marker-pid$$"
sync
poweroff -f
"#;

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "grep", "head", "mount", "poweroff", "sync", "ls",
];

/// Everything both tests share: the agent, the kernel, the initramfs, the root image.
struct Artifacts {
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    image: Vec<u8>,
}

fn artifacts() -> &'static Artifacts {
    static ONCE: OnceLock<Artifacts> = OnceLock::new();
    ONCE.get_or_init(|| {
        let agent = build_agent();
        let (vmlinuz, release, modules) = kernel_and_modules();
        let dir = guest::cache_dir().join("node-agent");
        fs::create_dir_all(&dir).expect("cache dir");
        // Built under a private name, then renamed: a concurrent test process reads either
        // the old archive or the new one, never half of one.
        let initramfs = dir.join("initramfs.cpio");
        let tmp = dir.join(format!("initramfs.cpio.{}", std::process::id()));
        build_initramfs(&agent, &release, &modules, &tmp);
        fs::rename(&tmp, &initramfs).expect("rename the initramfs into place");
        let image = build_root_image(&dir);
        Artifacts {
            vmlinuz,
            initramfs,
            image,
        }
    })
}

fn workspace() -> PathBuf {
    let node = Path::new(env!("CARGO_MANIFEST_DIR"));
    node.parent().unwrap_or(node).to_path_buf()
}

/// The agent as the appliance embeds it: the same target directory and profile as the root
/// crate's build.rs (`target/node-agent`, profile `node-agent`), so a workspace build has already
/// built it and this is a no-op. Its own target directory: the `cargo test` running this holds
/// the lock on the usual one.
fn build_agent() -> PathBuf {
    let target = guest::cache_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace().join("target"))
        .join("node-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "-p",
            "stampede-node",
            "--profile",
            "node-agent",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace());
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    run_with_timeout(build, Duration::from_secs(1500))
        .and_then(stampede_lab::Output::ok)
        .unwrap_or_else(|e| panic!("building the musl agent: {e}"));
    let binary = target.join("x86_64-unknown-linux-musl/node-agent/stampede-node");
    let size = fs::metadata(&binary).expect("agent binary").len();
    eprintln!("node agent: {} ({size} bytes)", binary.display());
    binary
}

/// Debian's kernel and the modules above, extracted once from the package into the lab cache.
/// Returns the kernel, its release and the extraction root (holding `lib/modules/...`).
fn kernel_and_modules() -> (PathBuf, String, PathBuf) {
    let package = kernel_package().unwrap_or_else(|e| panic!("kernel package: {e}"));
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let dir = guest::cache_dir().join("node-agent-kernel").join(&package);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    let complete = vmlinuz.is_file()
        && MODULES
            .iter()
            .all(|m| dir.join(format!("lib/modules/{release}/{m}")).is_file());
    if !complete {
        let work = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).expect("work dir");
        let mut download = Command::new("apt-get");
        download
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&work);
        run_with_timeout(download, Duration::from_secs(600))
            .and_then(stampede_lab::Output::ok)
            .unwrap_or_else(|e| panic!("apt-get download {package}: {e}"));
        let deb = fs::read_dir(&work)
            .expect("work dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("a .deb");
        let mut members = vec![format!("./boot/vmlinuz-{release}")];
        members.extend(
            MODULES
                .iter()
                .map(|m| format!("./lib/modules/{release}/{m}")),
        );
        let mut tar = Command::new("sh");
        tar.args([
            "-c",
            r#"deb="$1"; dir="$2"; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -f - -C "$dir" "$@""#,
            "extract",
        ])
        .arg(&deb)
        .arg(&work)
        .args(&members);
        run_with_timeout(tar, Duration::from_secs(300))
            .and_then(stampede_lab::Output::ok)
            .unwrap_or_else(|e| panic!("extracting {}: {e}", deb.display()));
        let _ = fs::remove_file(&deb);
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&work, &dir).expect("rename into the cache");
    }
    (vmlinuz, release, dir)
}

fn trusted_key_hex() -> String {
    let key = ManifestSigningKey::from_bytes(&TRUSTED_SEED);
    key.verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The layout the agent expects: `/init`, `/dev/console`, `/stampede/{manifest.pub,modules}`,
/// `/lib/modules/<release>/...`.
fn build_initramfs(agent: &Path, release: &str, modules_root: &Path, out: &Path) {
    let agent_bytes = fs::read(agent).expect("agent");
    let key = format!("{}\n", trusted_key_hex());
    let module_paths: Vec<String> = MODULES
        .iter()
        .map(|m| format!("lib/modules/{release}/{m}"))
        .collect();
    let module_bytes: Vec<Vec<u8>> = module_paths
        .iter()
        .map(|p| fs::read(modules_root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect();
    let list = format!("# load order\n{}\n", module_paths.join("\n"));
    let mut dirs: Vec<String> = [
        "dev",
        "proc",
        "sys",
        "run",
        "sysroot",
        "stampede",
        "lib",
        "lib/modules",
    ]
    .map(String::from)
    .into();
    for path in &module_paths {
        let mut at = Path::new(path).parent();
        let mut chain = Vec::new();
        while let Some(dir) = at.filter(|d| !d.as_os_str().is_empty()) {
            chain.push(dir.to_string_lossy().into_owned());
            at = dir.parent();
        }
        for dir in chain.into_iter().rev() {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    let mut entries: Vec<CpioEntry<'_>> = dirs.iter().map(|d| CpioEntry::Dir { path: d }).collect();
    entries.push(CpioEntry::CharDevice {
        path: "dev/console",
        major: 5,
        minor: 1,
    });
    entries.push(CpioEntry::File {
        path: "init",
        mode: 0o755,
        data: &agent_bytes,
    });
    entries.push(CpioEntry::File {
        path: "stampede/manifest.pub",
        mode: 0o644,
        data: key.as_bytes(),
    });
    entries.push(CpioEntry::File {
        path: "stampede/modules",
        mode: 0o644,
        data: list.as_bytes(),
    });
    for (path, data) in module_paths.iter().zip(&module_bytes) {
        entries.push(CpioEntry::File {
            path,
            mode: 0o644,
            data,
        });
    }
    let archive = newc_archive(&entries);
    fs::write(out, &archive).expect("initramfs");
    eprintln!("node initramfs: {} bytes", archive.len());
}

/// An erofs image: busybox, the init above, an `/etc/resolv.conf` symlink into `/run` (the agent
/// must replace it, not write through it), and 1.5 MiB of noise so the image spans 4 chunks.
fn build_root_image(cache: &Path) -> Vec<u8> {
    let dir = cache.join(format!("root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "run", "var", "root", "tmp",
    ] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    fs::copy(guest::BUSYBOX, dir.join("bin/busybox")).expect("busybox");
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet)).expect("applet");
    }
    fs::write(dir.join("sbin/init"), ROOT_INIT).expect("init");
    fs::set_permissions(dir.join("sbin/init"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(dir.join("etc/hostname"), "image-default\n").expect("hostname");
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        dir.join("etc/resolv.conf"),
    )
    .expect("link");
    fs::write(dir.join("var/noise"), pseudo_random(1536 * 1024, 42)).expect("noise");
    let image = cache.join(format!("root-{}.erofs", std::process::id()));
    let mut mkfs = Command::new("mkfs.erofs");
    mkfs.args(["--all-root", "-T0", "--quiet"])
        .arg(&image)
        .arg(&dir);
    run_with_timeout(mkfs, Duration::from_secs(120))
        .and_then(stampede_lab::Output::ok)
        .unwrap_or_else(|e| panic!("mkfs.erofs: {e}"));
    let bytes = fs::read(&image).expect("image");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(&image);
    bytes
}

/// What the fake appliance serves and saw.
#[derive(Default)]
struct Appliance {
    files: HashMap<String, Vec<u8>>,
    /// The whole image at `/roots/<id>/image`, answering `Range` (`None`: 404, an appliance
    /// older than ranges).
    image: Option<Vec<u8>>,
    /// An offset in the image whose byte is served flipped once, by whichever answer first holds
    /// it (a range of the image or the chunk's own URL), then right.
    corrupt_once: Option<(usize, String)>,
    /// The corrupt chunk's own URL path.
    corrupt_path: String,
    config: Option<Vec<u8>>,
    requests: Vec<String>,
    /// `Range` headers of the image's requests.
    ranges: Vec<String>,
}

impl Appliance {
    /// The status, a `Content-Range` if any, and the body.
    fn respond(&mut self, target: &str, range: Option<&str>) -> (u16, Option<String>, Vec<u8>) {
        self.requests.push(target.to_owned());
        let path = target.split('?').next().unwrap_or(target);
        if path == format!("/roots/{ROOT_ID}/image") {
            return self.respond_image(range);
        }
        let (status, body) = self.respond_file(path);
        (status, None, body)
    }

    fn respond_image(&mut self, range: Option<&str>) -> (u16, Option<String>, Vec<u8>) {
        let Some(image) = &self.image else {
            return (404, None, b"not found\n".to_vec());
        };
        let len = image.len();
        self.ranges.push(range.unwrap_or("-").to_owned());
        let Some(spec) = range else {
            return (200, None, image.clone());
        };
        let span = spec
            .strip_prefix("bytes=")
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            .filter(|(a, b)| a <= b && *a < len);
        let Some((first, last)) = span else {
            return (416, Some(format!("bytes */{len}")), Vec::new());
        };
        let last = last.min(len - 1);
        let mut body = image[first..=last].to_vec();
        if let Some((at, _)) = self.corrupt_once
            && (first..=last).contains(&at)
        {
            self.corrupt_once = None;
            body[at - first] ^= 0xff;
        }
        (206, Some(format!("bytes {first}-{last}/{len}")), body)
    }

    fn respond_file(&mut self, path: &str) -> (u16, Vec<u8>) {
        if path == "/stampede/node/event" {
            return (200, b"ok\n".to_vec());
        }
        if path == "/stampede/node/config" {
            return match &self.config {
                Some(c) => (200, c.clone()),
                None => (404, b"no config\n".to_vec()),
            };
        }
        let Some(body) = self.files.get(path) else {
            return (404, b"not found\n".to_vec());
        };
        let mut body = body.clone();
        if let Some((at, chunk_path)) = &self.corrupt_once
            && chunk_path == path
        {
            // The same byte: chunks are 1 MiB.
            body[*at % (1 << 20)] ^= 0xff;
            self.corrupt_once = None;
        }
        (200, body)
    }

    fn count(&self, prefix: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    fn events(&self) -> Vec<String> {
        self.requests
            .iter()
            .filter(|r| r.starts_with("/stampede/node/event"))
            .cloned()
            .collect()
    }
}

/// A keep-alive HTTP/1.1 server, a thread per connection, on a listener made in the lab's
/// server namespace.
fn serve(listener: TcpListener, state: Arc<Mutex<Appliance>>) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let state = state.clone();
            thread::spawn(move || serve_connection(stream, &state));
        }
    });
}

fn serve_connection(stream: TcpStream, state: &Mutex<Appliance>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                range = Some(value.trim().to_owned());
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (status, content_range, body) = state
            .lock()
            .expect("state")
            .respond(&target, range.as_deref());
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            416 => "Range Not Satisfiable",
            _ => "Not Found",
        };
        let content_range = content_range
            .map(|r| format!("Content-Range: {r}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\n{content_range}Content-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

/// One machine's world: the lab network, dnsmasq, the appliance, and the QEMU machine.
struct Rig {
    // Drop order: the machine first, then the servers, then the network.
    machine: QemuMachine,
    _slot: stampede_lab::qemu::MachineSlot,
    _dnsmasq: Process,
    state: Arc<Mutex<Appliance>>,
    work: WorkDir,
    _lab: BootLab,
}

fn start(tag: &str, signing_seed: [u8; 32], corrupt: bool, serve_image: bool) -> Rig {
    let artifacts = artifacts();
    let slot = machine_slot();
    let mut lab = BootLab::new().unwrap_or_else(|e| panic!("lab: {e}"));
    let work = WorkDir::new(tag).unwrap_or_else(|e| panic!("work dir: {e}"));
    let server_ip = lab.server_ip();

    let manifest = RootManifest::describe(
        ROOT_ID,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        RootFormat::Erofs,
        &artifacts.image,
        "/sbin/init",
        None,
    );
    assert!(manifest.chunks.len() >= 3, "the image spans several chunks");
    let signed = SignedManifest::sign(&manifest, &ManifestSigningKey::from_bytes(&signing_seed));
    let mut appliance = Appliance::default();
    appliance
        .files
        .insert(format!("/roots/{ROOT_ID}/manifest"), signed.to_bytes());
    for (i, chunk) in manifest.chunks.iter().enumerate() {
        let start = manifest.offset(i) as usize;
        appliance.files.insert(
            format!("/chunks/{}", chunk.sha256.to_hex()),
            artifacts.image[start..start + chunk.size as usize].to_vec(),
        );
    }
    if serve_image {
        appliance.image = Some(artifacts.image.clone());
    }
    if corrupt {
        appliance.corrupt_path =
            format!("/chunks/{}", manifest.chunks[CORRUPT_CHUNK].sha256.to_hex());
        appliance.corrupt_once = Some((
            manifest.offset(CORRUPT_CHUNK) as usize + 100,
            appliance.corrupt_path.clone(),
        ));
    }
    appliance.config = Some(
        format!(
            r#"{{"hostname":"{HOSTNAME}","machine_id":"{MACHINE_ID}","ssh_authorized_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKexample lab@stampede"]}}"#
        )
        .into_bytes(),
    );
    let state = Arc::new(Mutex::new(appliance));
    let listener = lab
        .server
        .in_namespace(move || TcpListener::bind((server_ip, 0)))
        .unwrap_or_else(|e| panic!("namespace: {e}"))
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().expect("addr").port();
    serve(listener, state.clone());

    let dnsmasq = start_dnsmasq(&lab, &work, server_ip);
    let tap = lab.add_tap().unwrap_or_else(|e| panic!("tap: {e}"));
    let mac = unique_mac();
    let bootif = format!("01-{}", mac.replace(':', "-"));
    let cmdline = format!(
        "console=ttyS0 panic=-1 stampede.manifest=http://{server_ip}:{port}/roots/{ROOT_ID}/manifest \
         BOOTIF={bootif} stampede.marker={tag} stampede.debug stampede.swarm=off"
    );
    let spec = MachineSpec {
        firmware: Firmware::Bios,
        mac: mac.clone(),
        // The NIC is added below without an option ROM: the kernel is loaded directly.
        tap: None,
        serial_log: work.join("console.log"),
        memory_mb: 512,
        extra: [
            "-kernel".to_owned(),
            artifacts.vmlinuz.display().to_string(),
            "-initrd".to_owned(),
            artifacts.initramfs.display().to_string(),
            "-append".to_owned(),
            cmdline,
            "-netdev".to_owned(),
            format!("tap,id=n1,ifname={tap},script=no,downscript=no"),
            "-device".to_owned(),
            format!("e1000,netdev=n1,mac={mac},romfile="),
        ]
        .into(),
    };
    let machine = lab
        .start_machine(spec)
        .unwrap_or_else(|e| panic!("qemu: {e}"));
    Rig {
        machine,
        _slot: slot,
        _dnsmasq: dnsmasq,
        state,
        work,
        _lab: lab,
    }
}

fn start_dnsmasq(lab: &BootLab, work: &WorkDir, server_ip: Ipv4Addr) -> Process {
    let log = work.join("dnsmasq.log");
    let (low, high) = lab.dhcp_range();
    let args = [
        "--keep-in-foreground".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        "--port=0".to_owned(),
        format!("--interface={}", lab.server_if),
        "--bind-interfaces".to_owned(),
        format!("--dhcp-range={low},{high},255.255.255.0,10m"),
        format!("--dhcp-leasefile={}", work.join("leases").display()),
        "--no-ping".to_owned(),
        "--log-dhcp".to_owned(),
        format!("--log-facility={}", log.display()),
        format!("--dhcp-option=3,{server_ip}"),
        format!("--dhcp-option=6,{server_ip}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Up is when its log file exists. A start that dies (once in CI, on loaded cores) is tried
    // again, and a last failure says what dnsmasq said.
    let mut said = String::new();
    for _ in 0..3 {
        let mut process = lab
            .server
            .spawn("dnsmasq", &args)
            .unwrap_or_else(|e| panic!("dnsmasq: {e}"));
        let up = wait_for(Duration::from_secs(30), || {
            if log.exists() {
                Some(true)
            } else if process.try_status().is_some() {
                Some(false)
            } else {
                None
            }
        });
        if up == Some(true) {
            return process;
        }
        said = match process.wait_output(Duration::from_secs(5)) {
            Ok(out) => format!("{}: {}{}", out.status, out.stdout, out.stderr),
            Err(e) => e.to_string(),
        };
        thread::sleep(Duration::from_secs(1));
    }
    panic!("dnsmasq did not start: {said}");
}

impl Rig {
    fn diagnostics(&self) -> String {
        let state = self.state.lock().expect("state");
        format!(
            "console:\n{}\nrequests: {:#?}\nimage ranges: {:?}\ndnsmasq:\n{}",
            self.machine.console_tail(80),
            state.requests,
            state.ranges,
            fs::read_to_string(self.work.join("dnsmasq.log")).unwrap_or_default()
        )
    }
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn boots_a_verified_root_and_refetches_a_corrupt_chunk() {
    boots_and_refetches_the_corrupt_chunk(
        "boots_a_verified_root_and_refetches_a_corrupt_chunk",
        "node",
        true,
    );
}

#[test]
fn without_the_image_every_chunk_comes_from_its_own_url() {
    boots_and_refetches_the_corrupt_chunk(
        "without_the_image_every_chunk_comes_from_its_own_url",
        "noimg",
        false,
    );
}

/// One boot with [`CORRUPT_CHUNK`] served corrupt once: by range from the image when
/// `serve_image`, else (the image a 404) chunk by chunk.
fn boots_and_refetches_the_corrupt_chunk(test: &str, tag: &str, serve_image: bool) {
    if !require(
        test,
        &[
            "qemu-system-x86_64",
            "dnsmasq",
            "mkfs.erofs",
            "apt-get",
            "dpkg-deb",
        ],
    ) {
        return;
    }
    let tag = format!("{tag}{}", std::process::id() % 10_000);
    let mut rig = start(&tag, TRUSTED_SEED, true, serve_image);
    let seen = rig
        .machine
        .wait_for_marker(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.diagnostics()));
    let diagnostics = rig.diagnostics();
    assert_eq!(
        seen.value,
        format!("{tag}-pid1"),
        "the image's init runs as PID 1\n{diagnostics}"
    );
    eprintln!(
        "root init ran {:?} after QEMU started",
        seen.elapsed_since_start
    );
    let console = rig.machine.console();
    let has = |needle: &str| console.contains(needle);
    assert!(
        has(&format!("chunk {CORRUPT_CHUNK}: chunk ")) && has("corrupt (try 1); fetching it again"),
        "the corrupt chunk was caught\n{diagnostics}"
    );
    assert!(
        has("(1 refetched, 1 corrupt)"),
        "counted once\n{diagnostics}"
    );
    assert!(
        has(&format!(
            "NODE-ROOT pid=1 hostname={HOSTNAME} machine_id={MACHINE_ID}"
        )),
        "per-machine files\n{diagnostics}"
    );
    assert!(
        has("NODE-ROOT resolv=nameserver 198."),
        "resolv.conf from the lease\n{diagnostics}"
    );
    assert!(
        !has("resolv-is-a-symlink"),
        "the image's symlink replaced\n{diagnostics}"
    );
    assert!(
        has("NODE-ROOT lease ip=198."),
        "lease record in /run\n{diagnostics}"
    );
    assert!(
        has("NODE-ROOT wrote overlay"),
        "root writable through the overlay\n{diagnostics}"
    );

    let state = rig.state.lock().expect("state");
    let chunk_fetches = state
        .requests
        .iter()
        .filter(|r| r.starts_with("/chunks/"))
        .fold(HashMap::<&str, usize>::new(), |mut m, r| {
            *m.entry(r.as_str()).or_default() += 1;
            m
        });
    let image_fetches = state.count(&format!("/roots/{ROOT_ID}/image"));
    let (by_range, by_chunk) = if serve_image {
        // The 4 chunks are one run (of up to 16): one range for all of them, the whole image;
        // then the corrupt chunk alone from its own URL.
        assert_eq!(image_fetches, 1, "{diagnostics}");
        let last = artifacts().image.len() - 1;
        assert_eq!(state.ranges, [format!("bytes=0-{last}")], "{diagnostics}");
        assert_eq!(
            chunk_fetches.keys().collect::<Vec<_>>(),
            [&state.corrupt_path.as_str()],
            "only the corrupt chunk by its URL, once: {chunk_fetches:?}"
        );
        assert_eq!(
            chunk_fetches.values().sum::<usize>(),
            1,
            "{chunk_fetches:?}"
        );
        assert!(!has("not served by range"), "{diagnostics}");
        (3, 1)
    } else {
        // Asked for once by each of the two run workers at most, said once.
        assert!((1..=2).contains(&image_fetches), "{diagnostics}");
        assert_eq!(
            console
                .matches("the image is not served by range (HTTP 404); fetching chunk by chunk")
                .count(),
            1,
            "{diagnostics}"
        );
        assert_eq!(chunk_fetches.len(), 4, "{chunk_fetches:?}");
        assert_eq!(
            chunk_fetches.values().filter(|n| **n == 2).count(),
            1,
            "exactly one chunk fetched twice: {chunk_fetches:?}"
        );
        assert!(chunk_fetches.values().all(|n| *n <= 2), "{chunk_fetches:?}");
        (0, 4)
    };
    let runs = usize::from(serve_image);
    assert!(
        has(&format!(
            ": {by_range} by range in {runs} requests, {by_chunk} by chunk URL (1 refetched"
        )),
        "{diagnostics}"
    );
    let events = state.events();
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e.split("&event=").nth(1))
        .map(|rest| rest.split('&').next().unwrap_or(rest))
        .collect();
    assert_eq!(
        kinds,
        [
            "root_manifest",
            "root_chunks",
            "root_mounted",
            "switch_root"
        ],
        "{events:#?}"
    );
    assert!(events[0].contains("&chunks=4&"), "{events:#?}");
    assert!(
        // The plain HTTP path (the swarm is off): every byte from the appliance.
        events[1].contains(&format!(
            "&by_range={by_range}&by_chunk={by_chunk}&from_peers=0&from_appliance={}&uploaded=0",
            artifacts().image.len()
        )),
        "{events:#?}"
    );
    assert!(events[3].ends_with("&init=%2Fsbin%2Finit"), "{events:#?}");
    assert_eq!(state.count("/stampede/node/config?mac="), 1);
    drop(state);
    assert!(
        rig.machine.wait_exit(Duration::from_secs(30)).is_some(),
        "the root's init powered the machine off"
    );
}

#[test]
fn a_manifest_signed_with_another_key_never_mounts() {
    if !require(
        "a_manifest_signed_with_another_key_never_mounts",
        &[
            "qemu-system-x86_64",
            "dnsmasq",
            "mkfs.erofs",
            "apt-get",
            "dpkg-deb",
        ],
    ) {
        return;
    }
    let tag = format!("badkey{}", std::process::id() % 10_000);
    let rig = start(&tag, OTHER_SEED, false, true);
    let started = Instant::now();
    // Two refusals: the first, and the retry after the step's backoff.
    let failures = wait_for(BOOT_TIMEOUT, || {
        let state = rig.state.lock().expect("state");
        let failed = state
            .events()
            .into_iter()
            .filter(|e| e.contains("&event=root_failed&"))
            .collect::<Vec<_>>();
        (failed.len() >= 2).then_some(failed)
    })
    .unwrap_or_else(|| panic!("no two root_failed events\n{}", rig.diagnostics()));
    let diagnostics = rig.diagnostics();
    eprintln!("two refusals after {:?}", started.elapsed());
    assert!(
        failures[0].contains("signature%20does%20not%20verify"),
        "the reason is reported: {failures:#?}"
    );
    let console = rig.machine.console();
    assert!(
        console.contains("refused: the manifest's signature does not verify"),
        "{diagnostics}"
    );
    assert!(console.contains("retrying the root in"), "{diagnostics}");
    assert!(!console.contains("root mounted"), "{diagnostics}");
    assert!(guest::parse_marker(&console).is_none(), "{diagnostics}");
    let state = rig.state.lock().expect("state");
    assert_eq!(
        state.count("/chunks/") + state.count(&format!("/roots/{ROOT_ID}/image")),
        0,
        "no chunk fetched: {diagnostics}"
    );
    assert_eq!(state.count("/stampede/node/config"), 0, "{diagnostics}");
    assert!(
        !state
            .events()
            .iter()
            .any(|e| e.contains("event=root_manifest")),
        "{diagnostics}"
    );
}
