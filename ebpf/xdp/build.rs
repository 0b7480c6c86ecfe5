//! The eBPF object is linked by `bpf-linker`; rebuild when that binary changes.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
