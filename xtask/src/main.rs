//! `cargo xtask`: orchestration for Stampede: set up prerequisites, run the tests, run the demo.
//!
//! It builds nothing of the product by itself except through cargo, and compiles no eBPF (that is
//! `dataplane/build.rs`). Every subcommand runs `setup` first, so the README's two commands work
//! on a fresh machine.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

mod bench;
mod demo;
mod package;
mod setup;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install every prerequisite (Debian packages, nightly rust-src, bpf-linker); idempotent
  test    setup, then cargo fmt --check, clippy -D warnings, and every test of the workspace
  demo [--kernel-initrd]
          setup, then one QEMU machine boots diskless from `stampede boot --root`: an OCI
          image becomes its verified root file system (--kernel-initrd: the kernel and busybox
          initramfs boot of the loader stage instead)
  bench <storm|dhcp|tftp|http|flood> [--clients N,..] [--deadline SECS] [--peers LIST] ..
          setup, then the same load against Stampede and against peers (dnsmasq, nginx,
          tftpd-hpa, atftpd; perfdhcp and wrk as load generators) in a namespace lab, after
          measuring the lab link's ceiling; reports in target/bench/ (`cargo xtask bench` for
          every option)
  package setup, then the release build and the Debian package target/package/stampede_*.deb
          (binary, systemd unit, example config, completions, manual pages)
  fuzz [TARGET] [SECONDS]
          setup, then run one fuzz target (or all) for SECONDS each (default: the target's
          budget for the long run, docs/architecture.md, Fuzzing; all of them: about 3.75 h)

environment:
  STAMPEDE_FUZZ_SECONDS  seconds per fuzz target in `cargo xtask test` (default 10; 0 skips)";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("test") => setup::run().and_then(|()| test(&args[1..])),
        Some("demo") => setup::run().and_then(|()| demo::run(&args[1..])),
        Some("fuzz") => setup::run().and_then(|()| fuzz(&args[1..])),
        Some("bench") => setup::run().and_then(|()| bench::run(&args[1..])),
        Some("package") => setup::run().and_then(|()| package()),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("{USAGE}");
            if let Some(other) = other {
                eprintln!("\nunknown command {other:?}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Runs a command in the workspace root, streaming its output; fails with the command line.
pub fn run(mut command: Command) -> anyhow::Result<()> {
    command.current_dir(workspace_root());
    let shown = format!("{command:?}");
    let start = Instant::now();
    eprintln!("xtask: $ {shown}");
    let status = command
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status}) after {:.0?}", start.elapsed());
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo xtask package`: the release binary, then the Debian package around it.
fn package() -> anyhow::Result<()> {
    let mut build = cargo();
    build.args(["build", "--release", "--package", "stampede"]);
    run(build)?;
    let root = workspace_root();
    let out_dir = root.join("target/package");
    std::fs::create_dir_all(&out_dir)?;
    let deb = package::build_deb(&package::PackageInputs {
        workspace: &root,
        binary: &root.join("target/release/stampede"),
        version: env!("CARGO_PKG_VERSION"),
        out_dir: &out_dir,
        compression: package::Compression::Xz,
    })?;
    println!("{}", deb.display());
    Ok(())
}

/// `cargo xtask test [-- extra cargo test args]`.
fn test(extra: &[String]) -> anyhow::Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt).context("formatting differs: run `cargo fmt --all`")?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;

    let mut test = cargo();
    // The eBPF program crate only builds for the BPF target (dataplane/build.rs does that).
    test.args(["test", "--workspace", "--exclude", "stampede-xdp"]);
    test.args(extra.iter().skip_while(|a| *a == "--"));
    run(test)?;

    // A short run of every fuzz target from its checked-in corpus: catches regressions in the
    // parsers' no-panic and round-trip guarantees. Longer runs: `cargo xtask fuzz`.
    let seconds: u64 = match std::env::var("STAMPEDE_FUZZ_SECONDS") {
        Ok(v) => v
            .parse()
            .context("STAMPEDE_FUZZ_SECONDS must be a whole number")?,
        Err(_) => 10,
    };
    if seconds == 0 {
        eprintln!("xtask: fuzzing skipped (STAMPEDE_FUZZ_SECONDS=0)");
        return Ok(());
    }
    for target in fuzz_targets()? {
        fuzz_run(&target, seconds)?;
    }
    Ok(())
}

/// Seconds per target for the long run (`cargo xtask fuzz` without SECONDS). Why each budget is
/// what it is: the table in docs/architecture.md ("Fuzzing"), which a test keeps equal to this
/// one. Parsers with big input spaces (compressed archives, TLV options, signed manifests) and
/// slow executions get longer; fixed-layout headers shorter.
const FUZZ_BUDGETS: &[(&str, u64)] = &[
    ("oci_layer", 3600),
    ("dhcp_message", 1800),
    ("dhcp_server", 1800),
    ("root_manifest", 1800),
    ("http_server", 1200),
    ("tftp_transfer", 1200),
    ("http_request", 900),
    ("peerwire", 900),
    ("tftp_packet", 600),
    ("udp4_frame", 600),
    ("tracker_announce", 600),
    ("bencode", 300),
];

/// The long-run budget of a target not (yet) in [`FUZZ_BUDGETS`].
const UNLISTED_FUZZ_SECONDS: u64 = 900;

fn fuzz_budget(target: &str) -> u64 {
    FUZZ_BUDGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map_or_else(
            || {
                eprintln!(
                    "xtask: fuzz target {target} has no budget in FUZZ_BUDGETS \
                     (xtask/src/main.rs, docs/architecture.md); running it {UNLISTED_FUZZ_SECONDS} s"
                );
                UNLISTED_FUZZ_SECONDS
            },
            |(_, s)| *s,
        )
}

/// `cargo xtask fuzz [TARGET] [SECONDS]`: SECONDS for each target, or each target's budget.
fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let targets = match args.first() {
        Some(target) => vec![target.clone()],
        None => fuzz_targets()?,
    };
    let seconds: Option<u64> = match args.get(1) {
        Some(s) => Some(s.parse().context("SECONDS must be a whole number")?),
        None => None,
    };
    let plan: Vec<(String, u64)> = targets
        .into_iter()
        .map(|t| {
            let budget = seconds.unwrap_or_else(|| fuzz_budget(&t));
            (t, budget)
        })
        .collect();
    let total: u64 = plan.iter().map(|(_, s)| s).sum();
    eprintln!("xtask: fuzzing {} target(s), {total} s in all", plan.len());
    for (target, seconds) in plan {
        fuzz_run(&target, seconds)?;
    }
    Ok(())
}

fn fuzz_targets() -> anyhow::Result<Vec<String>> {
    let out = cargo_fuzz()
        .arg("list")
        .current_dir(workspace_root().join("fuzz"))
        .output()
        .context("cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// `cargo fuzz` on the nightly toolchain. Through `rustup run` because `$CARGO` (what
/// `cargo xtask` runs under) is the stable toolchain's own cargo, which knows no `+nightly`.
fn cargo_fuzz() -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", "cargo", "fuzz"]);
    command
}

/// Runs one target for `seconds`. New inputs go to a scratch directory, so the checked-in corpus
/// (read-only here) only changes when someone decides to add to it.
fn fuzz_run(target: &str, seconds: u64) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("stampede-fuzz-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let corpus = workspace_root().join("fuzz/corpus").join(target);
    let mut command = cargo_fuzz();
    command
        .args(["run", target])
        .arg(&scratch)
        .arg(&corpus)
        .args(["--", &format!("-max_total_time={seconds}")]);
    command.current_dir(workspace_root().join("fuzz"));
    let shown = format!("{command:?}");
    eprintln!("xtask: $ {shown}");
    let status = command
        .status()
        .with_context(|| format!("starting {shown}"));
    let _ = std::fs::remove_dir_all(&scratch);
    if !status?.success() {
        bail!(
            "fuzz target {target} failed: the crashing input is in fuzz/artifacts/{target}/; \
             reproduce with `cd fuzz && rustup run nightly cargo fuzz run {target} <file>`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget table in docs/architecture.md ("Fuzzing") is [`FUZZ_BUDGETS`], row for row,
    /// and every budgeted target exists.
    #[test]
    fn fuzz_budgets_are_documented_and_name_real_targets() {
        let doc = std::fs::read_to_string(workspace_root().join("docs/architecture.md"))
            .expect("docs/architecture.md");
        let rows: Vec<(String, u64)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let target = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let seconds = cells.get(2)?.parse().ok()?;
                Some((target.to_owned(), seconds))
            })
            .collect();
        let table: Vec<(String, u64)> = FUZZ_BUDGETS
            .iter()
            .map(|(t, s)| ((*t).to_owned(), *s))
            .collect();
        assert_eq!(rows, table, "docs/architecture.md's fuzz budget table");
        for (target, _) in FUZZ_BUDGETS {
            let file = workspace_root().join(format!("fuzz/fuzz_targets/{target}.rs"));
            assert!(
                file.exists(),
                "{target} has a budget but no {}",
                file.display()
            );
        }
    }
}
