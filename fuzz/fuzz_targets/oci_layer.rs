//! An OCI layer as hostile input: any byte stream, as a gzip, zstd or plain tar layer, applied
//! on top of a first layer and written as erofs. Nothing panics; a refused layer leaves an error,
//! never a crash, and whatever tree is left still writes as an image.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stampede_rootfs::{erofs, flatten::Tree, layer};

/// One spool directory for the whole run (a fresh tree per input spools into it).
fn spool() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("spool directory"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut tree) = Tree::new(spool()) else {
        return;
    };
    let Ok(reader) = layer::decompressed(data) else {
        return;
    };
    let _ = tree.apply_layer("fuzz", reader);
    let _ = erofs::write_erofs(&tree, &mut std::io::sink());
});
