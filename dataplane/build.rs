//! Builds the eBPF programs of `ebpf/xdp` for the BPF target, so a plain `cargo build` builds
//! everything. The object lands in `OUT_DIR` and `src/xdp.rs` embeds it.
use std::path::Path;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .context("dataplane has a parent")?;
    let program_dir = workspace.join("ebpf/xdp");
    let common_dir = workspace.join("ebpf/common");
    // aya-build watches the program crate; the shared types crate feeds it too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=PATH");

    if which("bpf-linker").is_none() {
        bail!(
            "bpf-linker is not on PATH: the XDP programs cannot be linked. \
             Run `cargo xtask setup`, which installs it (with nightly's rust-src)."
        );
    }
    let root_dir = program_dir.to_str().context("program path is UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "stampede-xdp",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
