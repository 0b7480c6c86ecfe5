//! `stampede ctl` covers what the API has: leases, tokens, the audit log, one machine or
//! profile, deletes, `apply --dry-run` and `--prune`, label selectors; and every time it or the
//! API shows is RFC 3339. Each against a real API server over HTTP.
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use stampede_control::client::ClientError;
use stampede_control::ctl::{
    self, AuditCommand, CtlCommand, CtlError, LeasesCommand, MachinesCommand, ProfilesCommand,
    TokensCommand,
};
use stampede_control::{DurableLeaseStore, GroupCommitConfig, Role};
use stampede_proto::dhcp::{ClientKey, Lease, LeaseChange, LeaseState, LeaseStore};
use support::{Server, start};

/// Runs one ctl command; its output, or its error.
async fn ctl(s: &Server, token: &str, json: bool, command: CtlCommand) -> Result<String, CtlError> {
    let mut out = Vec::new();
    ctl::run_to(s.ctl(token, json, command), &mut out).await?;
    Ok(String::from_utf8(out).expect("UTF-8 output"))
}

async fn ctl_ok(s: &Server, token: &str, json: bool, command: CtlCommand) -> String {
    let shown = format!("{command:?}");
    ctl(s, token, json, command)
        .await
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

/// `YYYY-MM-DDTHH:MM:SS(.mmm)Z`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    (s.len() == 20 || s.len() == 24)
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
}

fn add_machine(mac: &str, profile: &str, labels: &[(&str, &str)]) -> CtlCommand {
    CtlCommand::Machines(MachinesCommand::Add {
        mac: mac.into(),
        profile: Some(profile.into()),
        hostname: None,
        uuid: None,
        arch: None,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        deny: false,
        ssh_keys: Vec::new(),
    })
}

fn add_profile(name: &str) -> CtlCommand {
    CtlCommand::Profiles(ProfilesCommand::Add {
        name: name.into(),
        root: None,
        kernel: "vmlinuz".into(),
        initrds: vec!["initrd.img".into()],
        cmdline: String::new(),
        ipxe_template: None,
        secure_boot: None,
    })
}

fn status_of(err: &CtlError) -> Option<StatusCode> {
    match err {
        CtlError::Client(ClientError::Api { status, .. }) => Some(*status),
        _ => None,
    }
}

#[tokio::test]
async fn ctl_gets_and_deletes_single_machines_and_profiles() {
    let s = start().await;
    let op = s.token("operator", Role::Operator).await;
    ctl_ok(&s, &op, false, add_profile("live")).await;
    ctl_ok(
        &s,
        &op,
        false,
        add_machine("52:54:00:20:00:01", "live", &[]),
    )
    .await;

    let get = || {
        CtlCommand::Machines(MachinesCommand::Get {
            mac: "52-54-00-20-00-01".into(),
        })
    };
    let text = ctl_ok(&s, &op, false, get()).await;
    assert!(text.starts_with("MAC "), "{text}");
    assert!(
        text.contains("52:54:00:20:00:01") && text.contains("live"),
        "{text}"
    );
    let machine: Value = serde_json::from_str(&ctl_ok(&s, &op, true, get()).await).expect("JSON");
    assert_eq!(machine["mac"], "52:54:00:20:00:01");
    assert_eq!(machine["source"], "api");
    let profile: Value = serde_json::from_str(
        &ctl_ok(
            &s,
            &op,
            true,
            CtlCommand::Profiles(ProfilesCommand::Get {
                name: "live".into(),
            }),
        )
        .await,
    )
    .expect("JSON");
    assert_eq!(profile["kernel"], "vmlinuz");

    // A profile a machine boots is not deleted; once the machine is gone, it is.
    let rm_profile = || {
        CtlCommand::Profiles(ProfilesCommand::Rm {
            name: "live".into(),
        })
    };
    let err = ctl(&s, &op, false, rm_profile()).await.expect_err("in use");
    assert_eq!(status_of(&err), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.to_string().contains("52:54:00:20:00:01"), "{err}");
    ctl_ok(
        &s,
        &op,
        false,
        CtlCommand::Machines(MachinesCommand::Rm {
            mac: "52:54:00:20:00:01".into(),
        }),
    )
    .await;
    assert_eq!(
        ctl_ok(&s, &op, false, rm_profile()).await,
        "profile live removed\n"
    );
    assert!(s.state.profiles().is_empty(), "stored state changed");
    let err = ctl(&s, &op, false, get()).await.expect_err("gone");
    assert_eq!(status_of(&err), Some(StatusCode::NOT_FOUND), "{err}");
}

#[tokio::test]
async fn ctl_adds_a_secure_boot_profile() {
    let s = start().await;
    let op = s.token("operator", Role::Operator).await;
    let CtlCommand::Profiles(ProfilesCommand::Add {
        name,
        root,
        kernel,
        initrds,
        cmdline,
        ipxe_template,
        ..
    }) = add_profile("signed")
    else {
        unreachable!("add_profile adds a profile")
    };
    let add = CtlCommand::Profiles(ProfilesCommand::Add {
        name,
        root,
        kernel,
        initrds,
        cmdline,
        ipxe_template,
        secure_boot: Some("shim".into()),
    });
    ctl_ok(&s, &op, false, add).await;
    let profile: Value = serde_json::from_str(
        &ctl_ok(
            &s,
            &op,
            true,
            CtlCommand::Profiles(ProfilesCommand::Get {
                name: "signed".into(),
            }),
        )
        .await,
    )
    .expect("JSON");
    assert_eq!(profile["secure_boot"], "shim", "{profile}");
    let stored = s.state.profiles();
    assert_eq!(
        stored[0].spec().secure_boot,
        Some(stampede_control::model::SecureBootChain::Shim)
    );
}

#[tokio::test]
async fn ctl_manages_tokens() {
    let s = start().await;
    let admin = s.admin.clone();
    let create = |name: &str, role, expires_in| {
        CtlCommand::Tokens(TokensCommand::Create {
            name: name.into(),
            role,
            expires_in,
        })
    };
    // The token alone on stdout, ready for `$(...)`.
    let token = ctl_ok(&s, &admin, false, create("ci", Role::Read, None)).await;
    let token = token.trim_end().to_owned();
    assert!(token.len() >= 32 && !token.contains(' '), "{token:?}");
    let issued: Value = serde_json::from_str(
        &ctl_ok(
            &s,
            &admin,
            true,
            create("short", Role::Operator, Some(3600)),
        )
        .await,
    )
    .expect("JSON");
    assert_eq!(issued["role"], "operator");

    // The new token works.
    ctl_ok(
        &s,
        &token,
        false,
        CtlCommand::Machines(MachinesCommand::List { selector: None }),
    )
    .await;

    let list = ctl_ok(&s, &admin, false, CtlCommand::Tokens(TokensCommand::List)).await;
    assert!(list.starts_with("NAME "), "{list}");
    let ci = list
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_else(|| panic!("ci listed:\n{list}"));
    let cells: Vec<&str> = ci.split_whitespace().collect();
    assert_eq!(cells[1], "read", "{list}");
    assert!(is_rfc3339(cells[2]), "created as RFC 3339: {list}");
    assert_eq!(cells[3], "never", "{list}");
    let short = list
        .lines()
        .find(|l| l.starts_with("short "))
        .expect("short");
    assert!(
        is_rfc3339(short.split_whitespace().nth(3).expect("expiry")),
        "{list}"
    );
    assert!(!list.contains(&token), "a listed token is never shown");

    // A read token may not manage tokens.
    let err = ctl(&s, &token, false, CtlCommand::Tokens(TokensCommand::List))
        .await
        .expect_err("read token");
    assert_eq!(status_of(&err), Some(StatusCode::FORBIDDEN), "{err}");

    assert_eq!(
        ctl_ok(
            &s,
            &admin,
            false,
            CtlCommand::Tokens(TokensCommand::Revoke { name: "ci".into() })
        )
        .await,
        "token ci revoked\n"
    );
    let err = ctl(
        &s,
        &token,
        false,
        CtlCommand::Machines(MachinesCommand::List { selector: None }),
    )
    .await
    .expect_err("revoked");
    assert_eq!(status_of(&err), Some(StatusCode::UNAUTHORIZED), "{err}");
}

#[tokio::test]
async fn ctl_lists_the_audit_log_and_leases_with_rfc3339_times() {
    let s = start().await;
    let op = s.token("gitops", Role::Operator).await;
    ctl_ok(&s, &op, false, add_profile("live")).await;
    ctl_ok(
        &s,
        &op,
        false,
        add_machine("52:54:00:20:00:02", "live", &[]),
    )
    .await;

    let audit = |after| CtlCommand::Audit(AuditCommand::List { after, limit: 1000 });
    let text = ctl_ok(&s, &op, false, audit(0)).await;
    assert!(text.starts_with("SEQ "), "{text}");
    let put = text
        .lines()
        .find(|l| l.contains("machine.put"))
        .unwrap_or_else(|| panic!("machine.put listed:\n{text}"));
    let cells: Vec<&str> = put.split_whitespace().collect();
    assert!(is_rfc3339(cells[1]), "{put}");
    assert_eq!(cells[2..], ["gitops", "machine.put", "52:54:00:20:00:02"]);
    let entries: Vec<Value> =
        serde_json::from_str(&ctl_ok(&s, &op, true, audit(0)).await).expect("JSON");
    let last_seq = entries.last().expect("entries")["seq"]
        .as_u64()
        .expect("seq");
    assert!(
        entries
            .iter()
            .all(|e| is_rfc3339(e["at"].as_str().unwrap_or_default())),
        "{entries:?}"
    );
    let later: Vec<Value> =
        serde_json::from_str(&ctl_ok(&s, &op, true, audit(last_seq)).await).expect("JSON");
    assert!(later.is_empty(), "--after skips what was seen: {later:?}");

    // The API's answer: the millisecond field and its RFC 3339 twin; the chain still verifies.
    let (status, api) = s.call("GET", "/api/v1/audit", Some(&op), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(api[0]["at_ms"].is_u64() && is_rfc3339(api[0]["at"].as_str().unwrap_or_default()));
    let (_, verify) = s.call("GET", "/api/v1/audit/verify", Some(&op), None).await;
    assert!(verify["problem"].is_null(), "{verify}");

    let mut leases = DurableLeaseStore::open(s.state.db().clone(), GroupCommitConfig::default())
        .expect("lease store");
    leases
        .apply(LeaseChange::Put(Lease {
            ip: Ipv4Addr::new(198, 18, 0, 20),
            client: ClientKey(vec![1, 0x52, 0x54, 0, 0x20, 0, 2]),
            mac: [0x52, 0x54, 0, 0x20, 0, 2],
            state: LeaseState::Bound,
            expires: Instant::now() + Duration::from_secs(600),
        }))
        .expect("apply");
    assert!(leases.flush(Duration::from_secs(10)), "lease committed");
    let text = ctl_ok(&s, &op, false, CtlCommand::Leases(LeasesCommand::List)).await;
    let row = text
        .lines()
        .find(|l| l.starts_with("198.18.0.20"))
        .unwrap_or_else(|| panic!("lease listed:\n{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..3], ["52:54:00:20:00:02", "bound"], "{text}");
    assert!(is_rfc3339(cells[3]), "{text}");
    let (_, api) = s.call("GET", "/api/v1/leases", Some(&op), None).await;
    assert!(
        is_rfc3339(api[0]["expires_at"].as_str().unwrap_or_default()),
        "{api}"
    );
    let (_, tokens) = s.call("GET", "/api/v1/tokens", Some(&s.admin), None).await;
    assert!(
        is_rfc3339(tokens[0]["created_at"].as_str().unwrap_or_default()),
        "{tokens}"
    );
}

#[tokio::test]
async fn machines_list_by_label_selector() {
    let s = start().await;
    let op = s.token("operator", Role::Operator).await;
    ctl_ok(&s, &op, false, add_profile("live")).await;
    for (mac, rack, role) in [
        ("52:54:00:30:00:01", "r1", "db"),
        ("52:54:00:30:00:02", "r1", "web"),
        ("52:54:00:30:00:03", "r2", "db"),
    ] {
        ctl_ok(
            &s,
            &op,
            false,
            add_machine(mac, "live", &[("rack", rack), ("role", role)]),
        )
        .await;
    }
    let list = |selector: &str| {
        CtlCommand::Machines(MachinesCommand::List {
            selector: Some(selector.parse().expect("selector")),
        })
    };
    let macs = |text: String| -> Vec<String> {
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        macs(ctl_ok(&s, &op, false, list("rack=r1")).await),
        ["52:54:00:30:00:01", "52:54:00:30:00:02"]
    );
    assert_eq!(
        macs(ctl_ok(&s, &op, false, list("rack=r1,role=db")).await),
        ["52:54:00:30:00:01"]
    );
    assert_eq!(
        macs(ctl_ok(&s, &op, false, list("role!=db")).await),
        ["52:54:00:30:00:02"]
    );
    assert!(macs(ctl_ok(&s, &op, false, list("zone")).await).is_empty());

    // The API filters too, and refuses a selector it cannot read.
    let (status, body) = s
        .call(
            "GET",
            "/api/v1/machines?selector=rack%3Dr2",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body[0]["mac"], "52:54:00:30:00:03");
    let (status, body) = s
        .call(
            "GET",
            "/api/v1/machines?selector=rack%3Dr%201",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("selector"),
        "{body}"
    );
}

fn write_fleet(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write fleet file");
    path
}

#[tokio::test]
async fn apply_dry_run_shows_the_diff_and_prune_deletes_what_the_file_leaves_out() {
    let s = start().await;
    let op = s.token("gitops", Role::Operator).await;
    // What the API holds: a profile and two machines, one of them to be changed by the file.
    ctl_ok(&s, &op, false, add_profile("old")).await;
    ctl_ok(&s, &op, false, add_profile("live")).await;
    ctl_ok(
        &s,
        &op,
        false,
        add_machine("52:54:00:40:00:01", "live", &[]),
    )
    .await;
    ctl_ok(&s, &op, false, add_machine("52:54:00:40:00:02", "old", &[])).await;
    let fleet = write_fleet(
        s.dir.path(),
        "fleet.toml",
        r#"
[[profiles]]
name = "live"
kernel = "vmlinuz"
initrds = ["initrd.img"]

[[profiles]]
name = "rescue"
kernel = "rescue/vmlinuz"

[[machines]]
mac = "52:54:00:40:00:01"
profile = "live"

[[machines]]
mac = "52:54:00:40:00:03"
profile = "rescue"
hostname = "new01"
"#,
    );
    let apply = |dry_run, prune| CtlCommand::Apply {
        file: fleet.clone(),
        dry_run,
        prune,
    };
    let generation = s.state.snapshot().generation;
    let audit_len = s.state.audit_entries(0, 10_000).expect("audit").len();

    let text = ctl_ok(&s, &op, false, apply(true, false)).await;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["ACTION", "KIND", "NAME"],
            vec!["unchanged", "profile", "live"],
            vec!["create", "profile", "rescue"],
            vec!["unchanged", "machine", "52:54:00:40:00:01"],
            vec!["create", "machine", "52:54:00:40:00:03"],
        ],
        "{text}"
    );
    let plan: Vec<Value> =
        serde_json::from_str(&ctl_ok(&s, &op, true, apply(true, true)).await).expect("JSON");
    let deletes: Vec<(&str, &str)> = plan
        .iter()
        .filter(|c| c["action"] == "delete")
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or_default(),
                c["key"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        deletes,
        [("profile", "old"), ("machine", "52:54:00:40:00:02")],
        "{plan:?}"
    );
    assert_eq!(
        (
            s.state.snapshot().generation,
            s.state.audit_entries(0, 10_000).expect("audit").len()
        ),
        (generation, audit_len),
        "a dry run changes nothing"
    );

    // A changed entry shows as update.
    let changed = write_fleet(
        s.dir.path(),
        "changed.toml",
        "[[machines]]\nmac = \"52:54:00:40:00:01\"\nprofile = \"live\"\nhostname = \"renamed\"\n",
    );
    let plan: Vec<Value> = serde_json::from_str(
        &ctl_ok(
            &s,
            &op,
            true,
            CtlCommand::Apply {
                file: changed,
                dry_run: true,
                prune: false,
            },
        )
        .await,
    )
    .expect("JSON");
    assert_eq!(
        plan,
        [json!({ "kind": "machine", "key": "52:54:00:40:00:01", "action": "update" })]
    );

    // Applying with --prune: the file's entries, and nothing else.
    let report: ctl::ApplyReport =
        serde_json::from_str(&ctl_ok(&s, &op, true, apply(false, true)).await).expect("JSON");
    assert_eq!(
        (report.profiles.created, report.profiles.deleted),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(
        (report.machines.created, report.machines.deleted),
        (1, 1),
        "{report:?}"
    );
    let macs: Vec<String> = s
        .state
        .machines()
        .iter()
        .map(|m| m.mac.to_string())
        .collect();
    assert_eq!(macs, ["52:54:00:40:00:01", "52:54:00:40:00:03"]);
    let profiles: Vec<String> = s
        .state
        .profiles()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(profiles, ["live", "rescue"]);
    // And then there is nothing left to do.
    let text = ctl_ok(&s, &op, false, apply(true, true)).await;
    assert!(
        text.lines().skip(1).all(|l| l.starts_with("unchanged")),
        "{text}"
    );
}

/// The appliance's configuration as the control plane sees it: a file declaring profile `live`
/// and machine 52:54:00:50:00:01; every fleet validates.
#[derive(Debug)]
struct ConfigFile;

impl stampede_control::validation::FleetValidator for ConfigFile {
    fn validate(&self, _fleet: &stampede_control::FleetSnapshot) -> Result<(), String> {
        Ok(())
    }

    fn file_fleet(&self) -> stampede_control::model::FileFleet {
        let live = stampede_control::BootProfile::try_from(stampede_control::ProfileSpec {
            name: "live".into(),
            root: None,
            default: stampede_control::model::BootTarget {
                kernel: "live/vmlinuz".into(),
                initrds: vec![],
                cmdline: String::new(),
            },
            ipxe_template: None,
            variants: Default::default(),
            secure_boot: None,
        })
        .expect("profile");
        let node = stampede_control::Machine::try_from(stampede_control::MachineSpec {
            mac: "52:54:00:50:00:01".into(),
            uuid: None,
            arch: None,
            hostname: Some("file01".into()),
            labels: [("rack".to_owned(), "r9".to_owned())].into(),
            profile: Some("live".into()),
            boot: Default::default(),
            ssh_authorized_keys: Vec::new(),
        })
        .expect("machine");
        stampede_control::model::FileFleet {
            machines: [(node.mac, node)].into(),
            profiles: [("live".to_owned(), live)].into(),
        }
    }
}

#[tokio::test]
async fn file_defined_entries_are_listed_as_such_and_api_machines_may_boot_their_profiles() {
    let s = start().await;
    s.state
        .attach_fleet_validator(std::sync::Arc::new(ConfigFile));
    let op = s.token("operator", Role::Operator).await;

    // An API machine may name the file's profile (this was 422 "names profile "live", which
    // does not exist").
    ctl_ok(
        &s,
        &op,
        false,
        add_machine("52:54:00:50:00:02", "live", &[]),
    )
    .await;

    let text = ctl_ok(
        &s,
        &op,
        false,
        CtlCommand::Machines(MachinesCommand::List { selector: None }),
    )
    .await;
    let source_of = |text: &str, key: &str| -> String {
        let header: Vec<&str> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let column = header
            .iter()
            .position(|h| *h == "SOURCE")
            .expect("SOURCE column");
        let row = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} listed:\n{text}"));
        // Empty cells (no arch) shift columns; count from the end: SOURCE, STATE.
        let cells: Vec<&str> = row.split_whitespace().collect();
        let from_end = header.len() - column;
        cells[cells.len() - from_end].to_owned()
    };
    assert_eq!(source_of(&text, "52:54:00:50:00:01"), "file", "{text}");
    assert_eq!(source_of(&text, "52:54:00:50:00:02"), "api", "{text}");
    let profiles = ctl_ok(&s, &op, false, CtlCommand::Profiles(ProfilesCommand::List)).await;
    assert_eq!(source_of(&profiles, "live"), "file", "{profiles}");

    // Selectors see the file's machines too; so does GET of one machine.
    let (_, body) = s
        .call(
            "GET",
            "/api/v1/machines?selector=rack%3Dr9",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        body,
        json!([{ "mac": "52:54:00:50:00:01", "hostname": "file01",
        "labels": { "rack": "r9" }, "profile": "live", "boot": "allow", "source": "file" }])
    );
    let (status, body) = s
        .call("GET", "/api/v1/machines/52:54:00:50:00:01", Some(&op), None)
        .await;
    assert_eq!(
        (status, &body["hostname"]),
        (StatusCode::OK, &json!("file01"))
    );

    // The file's entries are not the API's to delete, and --prune leaves them alone.
    let err = ctl(
        &s,
        &op,
        false,
        CtlCommand::Machines(MachinesCommand::Rm {
            mac: "52:54:00:50:00:01".into(),
        }),
    )
    .await
    .expect_err("a file machine");
    assert_eq!(status_of(&err), Some(StatusCode::CONFLICT), "{err}");
    assert!(err.to_string().contains("configuration file"), "{err}");
    let empty = write_fleet(s.dir.path(), "empty.toml", "");
    let plan: Vec<Value> = serde_json::from_str(
        &ctl_ok(
            &s,
            &op,
            true,
            CtlCommand::Apply {
                file: empty,
                dry_run: true,
                prune: true,
            },
        )
        .await,
    )
    .expect("JSON");
    assert_eq!(
        plan,
        [json!({ "kind": "machine", "key": "52:54:00:50:00:02", "action": "delete" })]
    );

    // An API entry with the file's key replaces it, in the list as in the boot plan.
    ctl_ok(
        &s,
        &op,
        false,
        add_machine("52:54:00:50:00:01", "live", &[]),
    )
    .await;
    let text = ctl_ok(
        &s,
        &op,
        false,
        CtlCommand::Machines(MachinesCommand::List { selector: None }),
    )
    .await;
    assert_eq!(text.matches("52:54:00:50:00:01").count(), 1, "{text}");
    assert_eq!(source_of(&text, "52:54:00:50:00:01"), "api", "{text}");
}
