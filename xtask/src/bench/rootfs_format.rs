//! `cargo xtask bench root-format`: which read-only file system a diskless root should be, by
//! measurement. For each test tree (the small lab image and the debootstrap Debian root) it
//! builds the same tree as
//!
//! - Stampede's own uncompressed erofs (`stampede_rootfs`: the OCI layers flattened, then
//!   `write_erofs`: exactly what `stampede boot --root` serves),
//! - `mkfs.erofs` uncompressed and `mkfs.erofs -zlz4hc` (erofs-utils),
//! - `mksquashfs` with gzip, xz, zstd and lz4 (squashfs-tools, default block size and levels),
//!
//! and measures each image's size, its build time, and the "node CPU": the CPU time a machine
//! spends reading the whole tree once from a cold mount (`tar -cf - .` into a pipe this process
//! drains; user + system time of tar, from `getrusage(RUSAGE_CHILDREN)`), repeated. Decompression
//! in the kernel shows as tar's system time when the kernel decompresses in the reading task.
//!
//! Like the node, the image sits in RAM (a ramfs here, a brd RAM disk on the node) and only the
//! file system's caches are cold (`drop_caches` between runs does not drop ramfs pages). erofs is
//! mounted file-backed (Linux 6.12+, `CONFIG_EROFS_FS_BACKED_BY_FILE`): its reads of the image and
//! its lz4 decompression run in the reading task and are all counted. squashfs needs a block
//! device, so it goes through a loop device: it decompresses in the reading task too, but the loop
//! worker's copy of the compressed bytes out of the ramfs file is not counted (one memcpy; small
//! next to decompression, and in squashfs's favour). Stampede's image is also read through a loop
//! device, to show what that uncounted copy is worth. This host's kernel has no brd.
//!
//! Also: what compressing each 1 MiB chunk of Stampede's erofs on the wire would save (gzip -6,
//! zstd -3, zstd -19; one process per codec over all chunks) and the node's cost to decompress
//! them; and the node initramfs Stampede builds for each tree, with and without modules.
//!
//! Reports in `target/bench/<date>/root-format.{md,json}`.
use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sys::resource::{UsageWho, getrusage};
use stampede_rootfs::{flatten::Tree, initramfs, oci};

const USAGE: &str = "\
usage: cargo xtask bench root-format [--trees small,debian] [--runs N]

  --trees LIST  which trees: small (the lab's busybox image), debian (debootstrap minbase with
                systemd and Debian's kernel; built and cached the first time: minutes, ~170 MB
                from the Debian mirror) (default: both)
  --runs N      cold reads of each image (default 3)";

/// Wire chunk size: the manifest's (`CHUNK_SIZE`), 1 MiB.
const CHUNK: usize = 1 << 20;

/// A file system image format under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Stampede's writer (`stampede_rootfs::erofs`), what the appliance serves today.
    Stampede,
    MkfsErofs,
    MkfsErofsLz4hc,
    Squashfs(&'static str),
}

impl Format {
    const ALL: [Format; 7] = [
        Format::Stampede,
        Format::MkfsErofs,
        Format::MkfsErofsLz4hc,
        Format::Squashfs("gzip"),
        Format::Squashfs("xz"),
        Format::Squashfs("zstd"),
        Format::Squashfs("lz4"),
    ];

    fn name(self) -> String {
        match self {
            Format::Stampede => "erofs (Stampede, uncompressed)".into(),
            Format::MkfsErofs => "erofs (mkfs.erofs, uncompressed)".into(),
            Format::MkfsErofsLz4hc => "erofs (mkfs.erofs -zlz4hc)".into(),
            Format::Squashfs(comp) => format!("squashfs {comp}"),
        }
    }

    fn file(self) -> String {
        match self {
            Format::Stampede => "stampede.erofs".into(),
            Format::MkfsErofs => "mkfs.erofs".into(),
            Format::MkfsErofsLz4hc => "mkfs-lz4hc.erofs".into(),
            Format::Squashfs(comp) => format!("{comp}.squashfs"),
        }
    }
}

/// CPU seconds (user, system) of children reaped, or of this process.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user: f64,
    sys: f64,
}

impl Cpu {
    fn now(who: UsageWho) -> anyhow::Result<Self> {
        let usage = getrusage(who)?;
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Ok(Self {
            user: secs(usage.user_time()),
            sys: secs(usage.system_time()),
        })
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            sys: self.sys - before.sys,
        }
    }

    fn total(self) -> f64 {
        self.user + self.sys
    }
}

/// One cold read of a mounted image.
#[derive(Debug, Clone, Copy)]
struct ColdRead {
    cpu: Cpu,
    wall: Duration,
    tar_bytes: u64,
}

#[derive(Debug)]
struct Measured {
    format: Format,
    bytes: u64,
    build_wall: Duration,
    build_cpu: Cpu,
    reads: Vec<ColdRead>,
    /// Erofs images read through a loop device instead (Stampede's only).
    loop_reads: Vec<ColdRead>,
}

impl Measured {
    /// The run with the median total CPU.
    fn median(&self) -> ColdRead {
        median(&self.reads)
    }
}

fn median(reads: &[ColdRead]) -> ColdRead {
    let mut reads = reads.to_vec();
    reads.sort_by(|a, b| a.cpu.total().total_cmp(&b.cpu.total()));
    reads[reads.len() / 2]
}

fn spread(reads: &[ColdRead]) -> String {
    let totals: Vec<f64> = reads.iter().map(|x| x.cpu.total()).collect();
    let lo = totals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = totals.iter().copied().fold(0.0, f64::max);
    format!("{lo:.3}–{hi:.3}")
}

/// Chunk compression on the wire: bytes after compressing every 1 MiB chunk alone.
#[derive(Debug)]
struct Wire {
    codec: &'static str,
    bytes: u64,
    compress_cpu: Cpu,
    decompress_cpu: Cpu,
}

#[derive(Debug)]
struct TreeReport {
    name: &'static str,
    source: String,
    tree_bytes: u64,
    files: u64,
    flatten_wall: Duration,
    flatten_cpu: Cpu,
    measured: Vec<Measured>,
    wire: Vec<Wire>,
    initrd_without_modules: usize,
    initrd_with_modules: usize,
    modules: usize,
    kernel_release: String,
}

struct Options {
    trees: Vec<String>,
    runs: usize,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        trees: vec!["small".into(), "debian".into()],
        runs: 3,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--trees" => o.trees = value.split(',').map(str::to_owned).collect(),
            "--runs" => o.runs = value.parse().context("--runs")?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if o.runs == 0 || o.runs > 50 {
        bail!("--runs: 1 to 50");
    }
    for tree in &o.trees {
        if !matches!(tree.as_str(), "small" | "debian") {
            bail!("unknown tree {tree:?} (small, debian)\n{USAGE}");
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("bench root-format mounts images and drops caches: it needs root");
    }
    for tool in [
        "mkfs.erofs",
        "mksquashfs",
        "umoci",
        "tar",
        "gzip",
        "zstd",
        "mount",
    ] {
        if stampede_lab::which(tool).is_none() {
            bail!("`{tool}` is not installed (run `cargo xtask setup`)");
        }
    }
    let agent = node_agent()?;
    let date = command_text(Command::new("date").args(["-u", "+%Y-%m-%dT%H%MZ"]))?;
    let out = crate::workspace_root().join("target/bench").join(&date);
    fs::create_dir_all(&out)?;
    let work = super::tempdir()?;

    let mut reports = Vec::new();
    for tree in &options.trees {
        let report = match tree.as_str() {
            "small" => {
                let image =
                    stampede_lab::root_image::small_image().context("building the small image")?;
                let bundle = work.path().join("small-bundle");
                let mut unpack = Command::new("umoci");
                unpack
                    .args(["unpack", "--image"])
                    .arg(format!(
                        "{}:{}",
                        image.layout.display(),
                        stampede_lab::root_image::SMALL_TAG
                    ))
                    .arg(&bundle);
                crate::run(unpack)?;
                measure_tree(
                    "small",
                    &image.source(),
                    &bundle.join("rootfs"),
                    work.path(),
                    &agent,
                    options.runs,
                )?
            }
            _ => {
                let root =
                    stampede_lab::debian_root::debian_root().context("building the Debian root")?;
                println!(
                    "Debian root: {} (kernel {})",
                    root.dir.display(),
                    root.kernel_release
                );
                measure_tree(
                    "debian",
                    &root.source(),
                    &root.tree,
                    work.path(),
                    &agent,
                    options.runs,
                )?
            }
        };
        reports.push(report);
    }

    let md = summary(&reports, args, &date, options.runs)?;
    fs::write(out.join("root-format.md"), &md)?;
    fs::write(
        out.join("root-format.json"),
        serde_json::to_string_pretty(&json(&reports))?,
    )?;
    println!("\n{md}");
    println!("reports: {}", out.display());
    Ok(())
}

/// The node agent as `build.rs` builds it (static, musl, its own profile and target dir).
fn node_agent() -> anyhow::Result<Vec<u8>> {
    let target_dir = crate::workspace_root().join("target/node-agent");
    let mut build = crate::cargo();
    build
        .args(["build", "--package", "stampede-node"])
        .args([
            "--target",
            "x86_64-unknown-linux-musl",
            "--profile",
            "node-agent",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    crate::run(build)?;
    let path = target_dir.join("x86_64-unknown-linux-musl/node-agent/stampede-node");
    fs::read(&path).with_context(|| format!("reading the node agent {}", path.display()))
}

fn command_text(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output()?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Runs `command` to completion and returns its wall time and CPU (it must be the only child
/// reaped meanwhile: `RUSAGE_CHILDREN` counts every waited-for descendant).
fn timed(command: &mut Command) -> anyhow::Result<(Duration, Cpu)> {
    let shown = format!("{command:?}");
    let before = Cpu::now(UsageWho::RUSAGE_CHILDREN)?;
    let start = Instant::now();
    let out = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    let wall = start.elapsed();
    let cpu = Cpu::now(UsageWho::RUSAGE_CHILDREN)?.since(before);
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((wall, cpu))
}

fn measure_tree(
    name: &'static str,
    source: &str,
    tree_dir: &Path,
    work: &Path,
    agent: &[u8],
    runs: usize,
) -> anyhow::Result<TreeReport> {
    let dir = work.join(name);
    fs::create_dir_all(&dir)?;
    let (tree_bytes, files) = du(tree_dir)?;
    println!(
        "{name}: {} ({:.1} MiB in {files} files)",
        tree_dir.display(),
        tree_bytes as f64 / 1048576.0
    );

    // Stampede: pull (verify) and flatten as `stampede boot --root` does, then write.
    let blobs = work.join("blobs");
    let image = oci::pull(
        &oci::Source::parse(source).map_err(|e| anyhow::anyhow!("{e}"))?,
        &oci::PullOptions::new(&blobs),
    )
    .with_context(|| format!("pulling {source}"))?;
    let spool = dir.join("spool");
    fs::create_dir_all(&spool)?;
    let flatten_cpu_before = Cpu::now(UsageWho::RUSAGE_SELF)?;
    let flatten_start = Instant::now();
    let mut tree = Tree::new(&spool)?;
    for (i, layer) in image.layers.iter().enumerate() {
        let file = fs::File::open(&layer.path)?;
        tree.apply_layer(
            &format!("layer {i}"),
            stampede_rootfs::layer::decompressed(file)?,
        )
        .with_context(|| format!("flattening layer {i} of {source}"))?;
    }
    let flatten_wall = flatten_start.elapsed();
    let flatten_cpu = Cpu::now(UsageWho::RUSAGE_SELF)?.since(flatten_cpu_before);

    let mut measured = Vec::new();
    {
        let path = dir.join(Format::Stampede.file());
        let before = Cpu::now(UsageWho::RUSAGE_SELF)?;
        let start = Instant::now();
        let mut file = std::io::BufWriter::new(fs::File::create(&path)?);
        let bytes = stampede_rootfs::erofs::write_erofs(&tree, &mut file)
            .with_context(|| format!("writing Stampede's erofs of {source}"))?;
        std::io::Write::flush(&mut file)?;
        drop(file);
        let build_wall = start.elapsed();
        let build_cpu = Cpu::now(UsageWho::RUSAGE_SELF)?.since(before);
        measured.push(Measured {
            format: Format::Stampede,
            bytes,
            build_wall,
            build_cpu,
            reads: Vec::new(),
            loop_reads: Vec::new(),
        });
    }

    // The node initramfs for this tree's kernel: what `stampede boot --root` builds.
    let release = kernel_release(&tree)?;
    // Resolved first: in a merged-/usr root (Debian 12) `/lib` is a link to `usr/lib`.
    let read = |p: &str| {
        tree.resolve(p)
            .and_then(|p| tree.read_file(&p))
            .and_then(Result::ok)
    };
    let modules = initramfs::choose_modules(&release, &read)
        .with_context(|| format!("choosing modules from {source}"))?;
    let spec = initramfs::NodeInitramfs {
        agent,
        manifest_key_hex: &"0".repeat(64),
        kernel_release: &release,
    };
    let initrd_without_modules = initramfs::build(&spec, &[]).len();
    let initrd_with_modules = initramfs::build(&spec, &modules).len();
    drop(tree);
    fs::remove_dir_all(&spool)?;

    for format in Format::ALL.into_iter().skip(1) {
        let path = dir.join(format.file());
        let mut command = match format {
            Format::MkfsErofs => {
                let mut c = Command::new("mkfs.erofs");
                c.arg("--quiet").arg(&path).arg(tree_dir);
                c
            }
            Format::MkfsErofsLz4hc => {
                let mut c = Command::new("mkfs.erofs");
                c.arg("--quiet").arg("-zlz4hc").arg(&path).arg(tree_dir);
                c
            }
            Format::Squashfs(comp) => {
                let mut c = Command::new("mksquashfs");
                c.arg(tree_dir).arg(&path).args([
                    "-comp",
                    comp,
                    "-noappend",
                    "-no-progress",
                    "-quiet",
                ]);
                c
            }
            Format::Stampede => unreachable!("written above"),
        };
        println!("{name}: building {}", format.name());
        let (build_wall, build_cpu) = timed(&mut command)?;
        measured.push(Measured {
            format,
            bytes: fs::metadata(&path)?.len(),
            build_wall,
            build_cpu,
            reads: Vec::new(),
            loop_reads: Vec::new(),
        });
    }

    // Cold reads, each image copied into RAM first as the node has it.
    let ram = Mounted::ramfs(&dir.join("ram"))?;
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt)?;
    for m in &mut measured {
        let in_ram = ram.path.join(m.format.file());
        fs::copy(dir.join(m.format.file()), &in_ram)?;
        // Stampede's image also through a loop device, as squashfs must be read.
        let loop_too = m.format == Format::Stampede;
        for (via_loop, run) in (0..runs)
            .map(|run| (false, run))
            .chain((0..runs).filter(|_| loop_too).map(|run| (true, run)))
        {
            let mounted = match (m.format, via_loop) {
                (Format::Squashfs(_), _) => Mounted::via_loop(&in_ram, "squashfs", &mnt)?,
                (_, true) => Mounted::via_loop(&in_ram, "erofs", &mnt)?,
                (_, false) => Mounted::erofs_file(&in_ram, &mnt)?,
            };
            let read = cold_read(&mounted.path)?;
            drop(mounted);
            println!(
                "{name}: {}{} read {}: {:.3} s CPU (user {:.3}, sys {:.3}), {:.3} s wall, {} tar bytes",
                m.format.name(),
                if via_loop { " via loop" } else { "" },
                run + 1,
                read.cpu.total(),
                read.cpu.user,
                read.cpu.sys,
                read.wall.as_secs_f64(),
                read.tar_bytes
            );
            if via_loop {
                m.loop_reads.push(read);
            } else {
                m.reads.push(read);
            }
        }
        fs::remove_file(&in_ram)?;
    }
    drop(ram);

    let wire = wire_sizes(&dir.join(Format::Stampede.file()), &dir.join("chunks"))?;
    for m in &measured {
        if m.format != Format::Stampede {
            let _ = fs::remove_file(dir.join(m.format.file()));
        }
    }
    Ok(TreeReport {
        name,
        source: source.to_owned(),
        tree_bytes,
        files,
        flatten_wall,
        flatten_cpu,
        measured,
        wire,
        initrd_without_modules,
        initrd_with_modules,
        modules: modules.len(),
        kernel_release: release,
    })
}

/// The release of the tree's `/boot/vmlinuz-<release>` that has `/lib/modules/<release>`.
fn kernel_release(tree: &Tree) -> anyhow::Result<String> {
    let boot = tree.list_dir("/boot").context("the tree has no /boot")?;
    boot.iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .find(|r| {
            tree.resolve(&format!("/lib/modules/{r}/modules.dep"))
                .is_some()
        })
        .map(str::to_owned)
        .context("no /boot/vmlinuz-<release> with /lib/modules/<release>/modules.dep")
}

/// Apparent bytes of regular files and the number of entries under `dir` (`du`, `find`).
fn du(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let bytes = command_text(
        Command::new("du")
            .args(["-s", "-b", "--apparent-size"])
            .arg(dir),
    )?;
    let bytes = bytes
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .context("du output")?;
    let files = command_text(
        Command::new("sh")
            .args(["-c", r#"find "$1" | wc -l"#, "count"])
            .arg(dir),
    )?
    .parse()
    .context("find | wc")?;
    Ok((bytes, files))
}

/// A mount made by the benchmark, unmounted on drop (also on failure).
struct Mounted {
    path: PathBuf,
}

impl Mounted {
    /// ramfs, not tmpfs: erofs mounts a file only when its file system reads through the page
    /// cache (`read_folio`), which tmpfs does not have; and ramfs pages are never dropped.
    fn ramfs(path: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(path)?;
        mount(&["-t", "ramfs", "-o", "mode=0700", "bench-ram"], path)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// erofs straight on the image file (no loop device; Linux 6.12+). util-linux 2.38 would
    /// set up a loop device for a regular file, so this calls mount(2) itself.
    fn erofs_file(image: &Path, path: &Path) -> anyhow::Result<Self> {
        drop_caches()?;
        nix::mount::mount(
            Some(image),
            path,
            Some("erofs"),
            nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mounting {} file-backed (erofs on a file needs Linux 6.12+ with \
                 CONFIG_EROFS_FS_BACKED_BY_FILE)",
                image.display()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    fn via_loop(image: &Path, fstype: &str, path: &Path) -> anyhow::Result<Self> {
        drop_caches()?;
        let image = image.to_str().context("UTF-8 path")?;
        mount(&["-t", fstype, "-o", "ro,loop", image], path)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A loop device goes with its mount (util-linux sets autoclear), but the kernel lets go
        // of its backing file a moment later: the ramfs under it is busy until then.
        let unmounted =
            stampede_lab::wait_for(Duration::from_secs(10), || {
                match nix::mount::umount(&self.path) {
                    Err(nix::errno::Errno::EBUSY) => None,
                    other => Some(other),
                }
            });
        match unmounted {
            Some(Ok(())) => {}
            Some(Err(err)) => eprintln!("bench: unmounting {} failed: {err}", self.path.display()),
            None => {
                eprintln!(
                    "bench: {} still busy after 10 s: detached (lazy unmount)",
                    self.path.display()
                );
                let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn mount(args: &[&str], target: &Path) -> anyhow::Result<()> {
    let out = Command::new("mount").args(args).arg(target).output()?;
    if !out.status.success() {
        bail!(
            "mount {} {} failed: {}",
            args.join(" "),
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes dirty pages back, then drops the page cache, dentries and inodes of every file system
/// (ramfs pages stay: they are the image, in RAM as on the node).
fn drop_caches() -> anyhow::Result<()> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}

/// Reads every file under `mnt` once: `tar -cf - .` into a pipe this process drains. (tar
/// writing to /dev/null would read no file contents: GNU tar skips them for /dev/null.)
fn cold_read(mnt: &Path) -> anyhow::Result<ColdRead> {
    let before = Cpu::now(UsageWho::RUSAGE_CHILDREN)?;
    let start = Instant::now();
    let mut child = Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(mnt)
        .arg(".")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tar")?;
    let mut stdout = child.stdout.take().context("tar stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut tar_bytes = 0u64;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        tar_bytes += n as u64;
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    let status = child.wait()?;
    let wall = start.elapsed();
    let cpu = Cpu::now(UsageWho::RUSAGE_CHILDREN)?.since(before);
    if !status.success() {
        bail!(
            "tar -cf - -C {} . failed ({status}): {stderr}",
            mnt.display()
        );
    }
    Ok(ColdRead {
        cpu,
        wall,
        tar_bytes,
    })
}

/// Every 1 MiB chunk of `image` compressed alone by each codec: total bytes, the CPU to
/// compress (once, on the appliance) and to decompress (on every node).
fn wire_sizes(image: &Path, chunks: &Path) -> anyhow::Result<Vec<Wire>> {
    fs::create_dir_all(chunks)?;
    let mut file = fs::File::open(image)?;
    let mut names = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut got = 0;
        while got < CHUNK {
            let n = file.read(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        let name = chunks.join(format!("{:06}", names.len()));
        fs::write(&name, &buf[..got])?;
        names.push(name);
        if got < CHUNK {
            break;
        }
    }
    let mut wires = Vec::new();
    for (codec, program, level, suffix) in [
        ("gzip -6", "gzip", "-6", "gz"),
        ("zstd -3", "zstd", "-3", "zst"),
        ("zstd -19", "zstd", "-19", "zst"),
    ] {
        let mut compress = Command::new(program);
        compress.args([level, "-k", "-f", "-q"]).args(&names);
        let (_, compress_cpu) = timed(&mut compress)?;
        let packed: Vec<PathBuf> = names
            .iter()
            .map(|n| PathBuf::from(format!("{}.{suffix}", n.display())))
            .collect();
        let mut bytes = 0;
        for p in &packed {
            bytes += fs::metadata(p)?.len();
        }
        let mut decompress = Command::new(program);
        decompress.args(["-d", "-c", "-q"]).args(&packed);
        let (_, decompress_cpu) = timed(&mut decompress)?;
        for p in &packed {
            fs::remove_file(p)?;
        }
        wires.push(Wire {
            codec,
            bytes,
            compress_cpu,
            decompress_cpu,
        });
    }
    fs::remove_dir_all(chunks)?;
    Ok(wires)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn summary(
    reports: &[TreeReport],
    args: &[String],
    date: &str,
    runs: usize,
) -> anyhow::Result<String> {
    let mut md = String::new();
    let machine = command_text(Command::new("uname").arg("-srm"))?;
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l[13..].trim().to_owned())
        })
        .unwrap_or_default();
    let tools = command_text(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Package} ${Version}, ",
        "erofs-utils",
        "squashfs-tools",
        "tar",
    ]))?;
    let _ = writeln!(
        md,
        "`cargo xtask bench root-format {}` on {date} ({} cores, {cpu}, {}; {})\n",
        args.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        machine,
        tools.trim_end_matches([',', ' ']),
    );
    for r in reports {
        let base = r
            .measured
            .iter()
            .find(|m| m.format == Format::Stampede)
            .context("Stampede's image")?;
        let base_read = base.median().cpu.total();
        let _ = writeln!(
            md,
            "### {} tree: {:.1} MiB in {} entries, kernel {}\n\n`{}`; Stampede's flatten of \
             the OCI layers (decompress, check, spool; before its write below): {:.1} s wall, \
             {:.1} s CPU\n",
            r.name,
            mib(r.tree_bytes),
            r.files,
            r.kernel_release,
            r.source,
            r.flatten_wall.as_secs_f64(),
            r.flatten_cpu.total()
        );
        let _ = writeln!(
            md,
            "| format | image MiB | size vs Stampede | build wall s | build CPU s | cold read CPU s, median of {runs} (user + sys) | read CPU vs Stampede | read wall s | tar bytes |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let tar_bytes = base.median().tar_bytes;
        for m in &r.measured {
            let med = m.median();
            let runs_spread = spread(&m.reads);
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.3} ({:.3} + {:.3}; runs {runs_spread}) | {:.2} | {:.3} | {}{} |",
                m.format.name(),
                mib(m.bytes),
                m.bytes as f64 / base.bytes as f64,
                m.build_wall.as_secs_f64(),
                m.build_cpu.total(),
                med.cpu.total(),
                med.cpu.user,
                med.cpu.sys,
                med.cpu.total() / base_read,
                med.wall.as_secs_f64(),
                med.tar_bytes,
                if med.tar_bytes == tar_bytes {
                    ""
                } else {
                    " (differs!)"
                },
            );
            if !m.loop_reads.is_empty() {
                let med = median(&m.loop_reads);
                let _ = writeln!(
                    md,
                    "| {} via a loop device | | | | | {:.3} ({:.3} + {:.3}; runs {}) | {:.2} | {:.3} | {} |",
                    m.format.name(),
                    med.cpu.total(),
                    med.cpu.user,
                    med.cpu.sys,
                    spread(&m.loop_reads),
                    med.cpu.total() / base_read,
                    med.wall.as_secs_f64(),
                    med.tar_bytes,
                );
            }
        }
        let _ = writeln!(
            md,
            "\nEach 1 MiB chunk of Stampede's erofs ({:.1} MiB) compressed alone, as chunk \
             compression on the wire would:\n\n\
             | codec | wire MiB | vs uncompressed | compress CPU s (appliance, once) | decompress CPU s (each node) |\n\
             |---|---:|---:|---:|---:|",
            mib(base.bytes)
        );
        for w in &r.wire {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.2} | {:.1} | {:.3} |",
                w.codec,
                mib(w.bytes),
                w.bytes as f64 / base.bytes as f64,
                w.compress_cpu.total(),
                w.decompress_cpu.total()
            );
        }
        let _ = writeln!(
            md,
            "\nNode initramfs for this tree: {} bytes ({:.2} MiB) without modules, {} bytes \
             ({:.2} MiB) with its {} modules\n",
            r.initrd_without_modules,
            mib(r.initrd_without_modules as u64),
            r.initrd_with_modules,
            mib(r.initrd_with_modules as u64),
            r.modules
        );
    }
    Ok(md)
}

fn json(reports: &[TreeReport]) -> serde_json::Value {
    let secs = |d: Duration| d.as_secs_f64();
    serde_json::Value::Array(
        reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "tree": r.name,
                    "source": r.source,
                    "tree_bytes": r.tree_bytes,
                    "entries": r.files,
                    "kernel_release": r.kernel_release,
                    "flatten_seconds": secs(r.flatten_wall),
                    "flatten_cpu": r.flatten_cpu.total(),
                    "initrd_bytes_without_modules": r.initrd_without_modules,
                    "initrd_bytes_with_modules": r.initrd_with_modules,
                    "modules": r.modules,
                    "formats": r.measured.iter().map(|m| serde_json::json!({
                        "format": m.format.name(),
                        "bytes": m.bytes,
                        "build_wall_seconds": secs(m.build_wall),
                        "build_cpu_user": m.build_cpu.user,
                        "build_cpu_sys": m.build_cpu.sys,
                        "reads": reads_json(&m.reads),
                        "loop_reads": reads_json(&m.loop_reads),
                    })).collect::<Vec<_>>(),
                    "wire": r.wire.iter().map(|w| serde_json::json!({
                        "codec": w.codec,
                        "bytes": w.bytes,
                        "compress_cpu": w.compress_cpu.total(),
                        "decompress_cpu": w.decompress_cpu.total(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn reads_json(reads: &[ColdRead]) -> Vec<serde_json::Value> {
    reads
        .iter()
        .map(|x| {
            serde_json::json!({
                "cpu_user": x.cpu.user,
                "cpu_sys": x.cpu.sys,
                "wall_seconds": x.wall.as_secs_f64(),
                "tar_bytes": x.tar_bytes,
            })
        })
        .collect()
}
