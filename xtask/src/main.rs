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

mod demo;
mod setup;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install every prerequisite (Debian packages, nightly rust-src, bpf-linker); idempotent
  test    setup, then cargo fmt --check, clippy -D warnings, and every test of the workspace
  demo    setup, then a lab where `stampede serve` watches real DHCP/TFTP/HTTP clients";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("test") => setup::run().and_then(|()| test(&args[1..])),
        Some("demo") => setup::run().and_then(|()| demo::run()),
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
    test.args(["test", "--workspace", "--exclude", "stampede-ebpf"]);
    test.args(extra.iter().skip_while(|a| *a == "--"));
    run(test)
}
