//! `stampede ctl` against a real `stampede serve --config` (issue 18, "A complete ctl"): the
//! file's machines and profiles are listed, marked as the file's, and an API machine may boot a
//! profile the file declares; ctl finds the token in the variable the appliance reads.
mod support;

use std::time::Duration;

use stampede_lab::{Netns, require};
use support::appliance::{ADMIN_TOKEN, API, STAMPEDE, ServeLab};

/// `stampede ctl ARGS` in `ns` with no token on the command line and `env` set.
fn ctl_env(ns: &Netns, env: &[(&str, &str)], args: &[&str]) -> stampede_lab::Output {
    let mut command = ns.command(STAMPEDE);
    command
        .args(["ctl", "--url", API])
        .args(args)
        .env_remove("STAMPEDE_TOKEN")
        .env_remove("STAMPEDE_ADMIN_TOKEN");
    for (k, v) in env {
        command.env(k, v);
    }
    stampede_lab::run_with_timeout(command, Duration::from_secs(15)).expect("ctl runs")
}

fn ctl(ns: &Netns, args: &[&str]) -> String {
    let out = ctl_env(ns, &[("STAMPEDE_TOKEN", ADMIN_TOKEN)], args);
    assert!(
        out.status.success(),
        "ctl {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The cell under `column` in the row starting with `key` (cells may be empty, so it counts
/// from the end of the row: `column` must be among the last, non-empty columns).
fn cell(table: &str, key: &str, column: &str) -> String {
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let at = header
        .iter()
        .position(|h| *h == column)
        .unwrap_or_else(|| panic!("no {column} column:\n{table}"));
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} listed:\n{table}"))
        .split_whitespace()
        .collect();
    row[row.len() - (header.len() - at)].to_owned()
}

#[test]
fn file_entries_are_listed_and_api_machines_may_boot_file_profiles() {
    if !require!(&["curl", "ss"]) {
        return;
    }
    let fixture = ServeLab::new();
    let lab = &fixture.lab;
    fixture.write(
        "[boot]\nfiles = { \"vmlinuz\" = \"{kernel}\" }\n\
         [[profiles]]\nname = \"live\"\nkernel = \"vmlinuz\"\n\
         [[machines]]\nmac = \"52:54:00:60:00:01\"\nhostname = \"file01\"\n\
         profile = \"live\"\nlabels = [\"rack=r1\"]",
    );
    let server = fixture.serve();

    // An API machine boots the file's profile (was 422: "names profile "live", which does not
    // exist").
    let added = ctl(
        &lab.server,
        &[
            "machines",
            "add",
            "52:54:00:60:00:02",
            "--profile",
            "live",
            "--label",
            "rack=r1",
        ],
    );
    assert_eq!(added, "machine 52:54:00:60:00:02 created\n");

    let machines = ctl(&lab.server, &["machines", "list"]);
    assert_eq!(cell(&machines, "52:54:00:60:00:01", "SOURCE"), "file");
    assert_eq!(cell(&machines, "52:54:00:60:00:02", "SOURCE"), "api");
    assert!(machines.contains("file01"), "{machines}");
    let profiles = ctl(&lab.server, &["profiles", "list"]);
    assert_eq!(cell(&profiles, "live", "SOURCE"), "file");
    let json: serde_json::Value = serde_json::from_str(&ctl(
        &lab.server,
        &["--json", "machines", "list", "-l", "rack=r1"],
    ))
    .expect("JSON");
    let sources: Vec<(&str, &str)> = json
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            (
                m["mac"].as_str().unwrap_or_default(),
                m["source"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [("52:54:00:60:00:01", "file"), ("52:54:00:60:00:02", "api")]
    );

    // The file's machine is changed in the file, not through the API.
    let rm = ctl_env(
        &lab.server,
        &[("STAMPEDE_TOKEN", ADMIN_TOKEN)],
        &["machines", "rm", "52:54:00:60:00:01"],
    );
    assert!(!rm.status.success(), "{}", rm.stdout);
    assert!(
        rm.stderr.contains("409") && rm.stderr.contains("configuration file"),
        "{}",
        rm.stderr
    );

    // ctl takes the token from the variable the appliance reads, when STAMPEDE_TOKEN is unset;
    // STAMPEDE_TOKEN wins when both are set; with neither it says which variable to set.
    let by_admin_env = ctl_env(
        &lab.server,
        &[("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["profiles", "list"],
    );
    assert!(by_admin_env.status.success(), "{}", by_admin_env.stderr);
    let both = ctl_env(
        &lab.server,
        &[
            ("STAMPEDE_TOKEN", "not-the-token-0123456789"),
            ("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
        &["profiles", "list"],
    );
    assert!(
        !both.status.success() && both.stderr.contains("401"),
        "{}",
        both.stderr
    );
    let none = ctl_env(&lab.server, &[], &["profiles", "list"]);
    assert!(
        !none.status.success() && none.stderr.contains("STAMPEDE_TOKEN"),
        "{}",
        none.stderr
    );
    let help = ctl_env(&lab.server, &[], &["--help"]);
    assert!(
        help.stdout.contains("STAMPEDE_TOKEN") && help.stdout.contains("STAMPEDE_ADMIN_TOKEN"),
        "{}",
        help.stdout
    );

    server
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let out = server
        .wait_output(Duration::from_secs(15))
        .expect("serve exits");
    assert!(out.status.success(), "{}", out.stderr);
}
