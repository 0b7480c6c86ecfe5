//! The Debian root is a real OCI image of a debootstrap minbase with systemd, Debian's kernel
//! and its whole module tree, and the marker unit enabled.
//!
//! Ignored by default: the first build downloads about 170 MB from the Debian mirror and takes
//! minutes. `cargo xtask bench root-format` builds it; this test checks what it built:
//! `cargo test -p stampede-lab --test debian_root_lab -- --ignored`.
use std::{fs, process::Command};

use stampede_lab::{debian_root, require};

#[test]
#[ignore = "downloads ~170 MB and runs debootstrap (minutes) the first time"]
fn debian_root_is_a_minbase_with_systemd_a_kernel_and_the_marker_unit() {
    if !require(
        "debian_root_is_a_minbase_with_systemd_a_kernel_and_the_marker_unit",
        &[
            "debootstrap",
            "umoci",
            "skopeo",
            "depmod",
            "apt-get",
            "dpkg-deb",
        ],
    ) {
        return;
    }
    let root = debian_root::debian_root().unwrap_or_else(|e| panic!("debian root: {e}"));
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(root.source())
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"Architecture\": \"amd64\""), "{text}");

    let tree = &root.tree;
    assert!(root.vmlinuz().is_file(), "{}", root.vmlinuz().display());
    let modules = tree.join("lib/modules").join(&root.kernel_release);
    let dep = fs::read_to_string(modules.join("modules.dep")).expect("modules.dep");
    for module in [
        "virtio_net.ko",
        "e1000.ko",
        "erofs.ko",
        "overlay.ko",
        "brd.ko",
    ] {
        assert!(
            dep.lines()
                .any(|l| l.split(':').next().is_some_and(|m| m.ends_with(module))),
            "{module} in modules.dep"
        );
    }
    let init = fs::read_link(tree.join("sbin/init"))
        .or_else(|_| fs::read_link(tree.join("usr/sbin/init")))
        .expect("/sbin/init is a link");
    assert!(init.to_string_lossy().contains("systemd"), "{init:?}");
    assert!(
        tree.join("etc/systemd/system/multi-user.target.wants/stampede-marker.service")
            .symlink_metadata()
            .is_ok(),
        "marker unit enabled"
    );
    assert_eq!(
        fs::read_link(tree.join("lib")).expect("merged /usr: /lib is a link"),
        std::path::Path::new("usr/lib"),
        "the kernel's unpacking kept merged /usr"
    );
    let shadow = fs::read_to_string(tree.join("etc/shadow")).expect("shadow");
    let root_password = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .and_then(|rest| rest.split(':').next())
        .expect("root in shadow");
    assert!(
        root_password.is_empty()
            || root_password.starts_with('*')
            || root_password.starts_with('!'),
        "root's password is empty or locked, not {root_password:?}"
    );
    assert_eq!(
        fs::read(tree.join("etc/machine-id")).expect("machine-id"),
        b"",
        "every machine gets its own machine-id"
    );
}
