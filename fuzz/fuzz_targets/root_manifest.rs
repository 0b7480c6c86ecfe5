//! Signed root manifests as a node receives them: any bytes parse or are refused without a
//! panic; a manifest that verifies has chunks that add up (the node places chunks by them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stampede_rootfs::manifest::{ManifestSigningKey, RootManifest, SignedManifest};

fuzz_target!(|data: &[u8]| {
    let key = ManifestSigningKey::from_bytes(&[7; 32]);
    if let Ok(signed) = SignedManifest::from_bytes(data)
        && let Ok(manifest) = signed.verify(&key.verifying_key())
    {
        assert!(manifest.check_layout().is_ok());
    }
    // The manifest text itself, as if its signature were good: layout checks never panic.
    if let Ok(manifest) = serde_json::from_slice::<RootManifest>(data) {
        let _ = manifest.check_layout();
        // Re-signed, it verifies exactly when its layout is right.
        let resigned = SignedManifest::sign(&manifest, &key);
        assert_eq!(
            resigned.verify(&key.verifying_key()).is_ok(),
            manifest.check_layout().is_ok()
        );
    }
});
