//! The small diskless-root test image is a real OCI image: skopeo reads it, it has the two
//! layers the flattening tests rely on, and it carries the kernel and its module dependencies.
use std::process::Command;

use stampede_lab::{require, root_image};

#[test]
fn small_image_is_an_oci_image_with_two_layers_a_kernel_and_modules() {
    if !require(
        "small_image_is_an_oci_image_with_two_layers_a_kernel_and_modules",
        &["umoci", "skopeo", "depmod", "apt-get", "dpkg-deb"],
    ) {
        return;
    }
    let image = root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"));
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!(
            "oci:{}:{}",
            image.layout.display(),
            root_image::SMALL_TAG
        ))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let inspect: serde_json_lite::Value = serde_json_lite::parse(&text);
    assert_eq!(inspect.layers, 2, "two layers: {text}");
    assert!(text.contains("\"Architecture\": \"amd64\""), "{text}");
    let dep = std::fs::read_to_string(
        image
            .kernel
            .dir
            .join("lib/modules")
            .join(&image.kernel.release)
            .join("modules.dep"),
    )
    .expect("modules.dep");
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/drivers/net/virtio_net.ko:") && l.contains("failover")),
        "virtio_net with its dependencies: {dep}"
    );
    assert!(image.kernel.vmlinuz().is_file());
}

/// Just enough of skopeo's JSON: the number of layers.
mod serde_json_lite {
    pub struct Value {
        pub layers: usize,
    }

    pub fn parse(text: &str) -> Value {
        let at = text.find("\"Layers\"").expect("Layers in skopeo's output");
        let rest = &text[at..];
        let end = rest.find(']').expect("end of Layers");
        Value {
            layers: rest[..end].matches("sha256:").count(),
        }
    }
}
