//! `stampede boot` with a weak `STAMPEDE_ADMIN_TOKEN` refuses to start, saying why (issue 19.5).
mod support;

use std::time::Duration;

use stampede_lab::{TwoHosts, require};
use support::appliance::{Payload, STAMPEDE};

#[test]
fn a_weak_admin_token_stops_the_start_with_a_clear_error() {
    if !require("admin_token", &["ss"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(4096, 4096);
    let mut command = lab.server.command(STAMPEDE);
    command
        .args(["boot", "--iface", &lab.server_if, "--xdp-mode", "off"])
        .arg("--state")
        .arg(payload.dir.path().join("state.redb"))
        .env("STAMPEDE_ADMIN_TOKEN", "x")
        .arg(&payload.kernel)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = stampede_lab::Process::spawn(command)
        .expect("start stampede boot")
        .wait_output(Duration::from_secs(20))
        .expect("stampede exits");
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("STAMPEDE_ADMIN_TOKEN is 1 characters long")
            && out.stderr.contains("at least 16"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("ready"), "{}", out.stdout);
}
