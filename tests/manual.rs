//! `stampede completions SHELL` and `stampede man`: generated from the CLI itself, complete and
//! well-formed (the Debian package ships what they print).
use std::process::Command;

const STAMPEDE: &str = env!("CARGO_BIN_EXE_stampede");

fn stampede(args: &[&str]) -> String {
    let out = Command::new(STAMPEDE)
        .args(args)
        .output()
        .expect("stampede runs");
    assert!(
        out.status.success(),
        "stampede {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completions_cover_every_subcommand_for_each_packaged_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _stampede"),
        ("zsh", "#compdef stampede"),
        ("fish", "complete -c stampede"),
    ] {
        let script = stampede(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {marker} missing");
        // fish spells a long option `-l dhcp-range`.
        for word in ["serve", "boot", "ctl", "bench", "dhcp-range", "xdp-mode"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
}

#[test]
fn the_generators_stay_out_of_the_help() {
    let help = stampede(&["--help"]);
    assert!(help.contains("serve") && help.contains("boot"), "{help}");
    assert!(
        !help.contains("completions") && !help.contains("\n  man "),
        "hidden: {help}"
    );
}

#[test]
fn man_pages_are_roff_one_per_command() {
    let page = stampede(&["man"]);
    assert!(page.contains(".TH stampede 1"), "{page}");
    assert!(page.contains("stampede\\-serve(1)"), "{page}");
    let dir = tempfile::tempdir().expect("tempdir");
    stampede(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    for name in [
        "stampede.1",
        "stampede-serve.1",
        "stampede-boot.1",
        "stampede-ctl.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".SH SYNOPSIS"), "{name}");
    }
    let boot = std::fs::read_to_string(dir.path().join("stampede-boot.1")).expect("boot page");
    assert!(boot.contains("\\-\\-dhcp\\-range"), "{boot}");
    assert!(
        !dir.path().join("stampede-man.1").exists(),
        "no page for the hidden subcommands"
    );
}
