//! Builds the node agent (`node/`, PID 1 of the node initramfs) as a static binary for
//! `x86_64-unknown-linux-musl`, so `cargo build` builds everything and the appliance carries the
//! agent it puts into every node initramfs (`src/roots.rs` embeds it from `OUT_DIR`).
//!
//! The agent is built by a nested cargo in a target directory of its own (`target/node-agent`):
//! the outer build holds the lock of its own target directory. `STAMPEDE_NODE_AGENT=FILE` takes a
//! prebuilt agent instead (packaging, or a build machine without the musl target).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

const TARGET: &str = "x86_64-unknown-linux-musl";
const PROFILE: &str = "node-agent";

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?).join("stampede-node");
    println!("cargo:rerun-if-env-changed=STAMPEDE_NODE_AGENT");
    if let Some(prebuilt) = std::env::var_os("STAMPEDE_NODE_AGENT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        std::fs::copy(&prebuilt, &out)
            .with_context(|| format!("copying STAMPEDE_NODE_AGENT {}", prebuilt.display()))?;
        return Ok(());
    }
    let workspace = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("manifest dir")?);
    for watched in [
        "node",
        "rootfs/src/manifest.rs",
        "dataplane/proto/src",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let target_dir = target_dir(&workspace).join("node-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--package", "stampede-node", "--target", TARGET])
        .args(["--profile", PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer build sets for itself (clippy's wrapper, the host's flags, a coverage or
    // fuzzing configuration) is not for the agent.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .context("running cargo to build the node agent")?;
    if !status.success() {
        bail!(
            "building the node agent for {TARGET} failed ({status}); `cargo xtask setup` adds the \
             target (`rustup target add {TARGET}`), or set STAMPEDE_NODE_AGENT to a prebuilt agent"
        );
    }
    let built = target_dir.join(TARGET).join(PROFILE).join("stampede-node");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// The outer build's target directory: `CARGO_TARGET_DIR`, else `target/` of the workspace.
fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}
