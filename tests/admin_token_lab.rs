//! `stampede boot` with a weak `STAMPEDE_ADMIN_TOKEN` refuses to start, saying why (issue 19.5).
mod support;

use std::time::Duration;

use stampede_lab::{TwoHosts, require};
use support::appliance::{Payload, STAMPEDE};

#[test]
fn a_weak_admin_token_stops_the_start_with_a_clear_error() {
    if !require!(&["ss"]) {
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

/// Without `STAMPEDE_ADMIN_TOKEN`, the generated token goes to `<state dir>/admin-token` (mode
/// 0600) and only that path to stdout, which a service's journal keeps (issue 18).
#[test]
fn a_generated_admin_token_is_written_to_a_private_file_not_to_stdout() {
    use std::os::unix::fs::PermissionsExt as _;

    if !require!(&["ss", "curl"]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(4096, 4096);
    let mut command = lab.server.command(STAMPEDE);
    command
        .args(["boot", "--iface", &lab.server_if, "--xdp-mode", "off"])
        .arg("--state")
        .arg(payload.dir.path().join("state.redb"))
        .env_remove("STAMPEDE_ADMIN_TOKEN")
        .arg(&payload.kernel)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let server = stampede_lab::Process::spawn(command).expect("start stampede boot");
    let path = payload.dir.path().join("admin-token");
    let token = stampede_lab::wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&path).ok()?;
        text.ends_with('\n').then(|| text.trim().to_owned())
    })
    .unwrap_or_else(|| panic!("no {}", path.display()));
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // The token in the file opens the API.
    let auth = format!("Authorization: Bearer {token}");
    let status = stampede_lab::wait_for(Duration::from_secs(10), || {
        let out = lab
            .server
            .run(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    &auth,
                    "http://127.0.0.1:7070/api/v1/machines",
                ],
                Duration::from_secs(5),
            )
            .ok()?;
        (out.stdout == "200").then_some(())
    });
    assert!(status.is_some(), "the file's token is refused");
    server
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let out = server
        .wait_output(Duration::from_secs(15))
        .expect("stampede exits");
    assert!(
        !out.stdout.contains(&token) && !out.stderr.contains(&token),
        "the token is printed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains(&format!(
            "admin token generated: written to {}",
            path.display()
        )),
        "{}",
        out.stdout
    );
}
