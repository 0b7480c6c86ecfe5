//! `stampede ctl backup` while the API serves and `stampede ctl restore` into a new state file
//! (issue 18): the restored file holds the same machines, profiles, leases, tokens, audit log
//! and boot sessions; restore refuses a state file an appliance holds; backup is admin only and
//! audited.
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use stampede_control::ctl::{self, CtlCommand};
use stampede_control::{ControlState, DurableLeaseStore, GroupCommitConfig, Metrics, Role};
use stampede_proto::dhcp::{ClientKey, Lease, LeaseChange, LeaseState, LeaseStore, MessageType};
use stampede_proto::events::{BootEvent, BootEventKind, EventSink};

#[tokio::test]
async fn a_backup_taken_while_serving_restores_the_same_state() {
    let s = support::start().await;
    let (status, body) = s
        .call(
            "POST",
            "/api/v1/profiles",
            Some(&s.admin),
            Some(json!({ "name": "live", "kernel": "vmlinuz", "initrds": ["initrd.img"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = s
        .call(
            "POST",
            "/api/v1/machines",
            Some(&s.admin),
            Some(json!({ "mac": "52:54:00:70:00:01", "hostname": "n01", "profile": "live" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let operator = s.token("provisioner", Role::Operator).await;
    let mut leases = DurableLeaseStore::open(s.state.db().clone(), GroupCommitConfig::default())
        .expect("lease store");
    leases
        .apply(LeaseChange::Put(Lease {
            ip: Ipv4Addr::new(198, 18, 0, 10),
            client: ClientKey(vec![1, 0x52, 0x54, 0, 0x70, 0, 1]),
            mac: [0x52, 0x54, 0, 0x70, 0, 1],
            state: LeaseState::Bound,
            expires: Instant::now() + Duration::from_secs(600),
        }))
        .expect("apply");
    assert!(leases.flush(Duration::from_secs(10)), "lease committed");
    s.state.sessions().record(BootEvent {
        at_unix_ms: 1_000,
        mac: Some([0x52, 0x54, 0, 0x70, 0, 1]),
        client: (Ipv4Addr::new(198, 18, 0, 10), 68).into(),
        kind: BootEventKind::DhcpReply {
            message: MessageType::Ack,
            yiaddr: Ipv4Addr::new(198, 18, 0, 10),
            boot_file: "ipxe.efi".into(),
        },
    });

    // Only an admin may take one.
    let (status, _) = s.call("GET", "/api/v1/backup", Some(&operator), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let file = s.dir.path().join("backup.redb");
    let mut out = Vec::new();
    ctl::run_to(
        s.ctl(&s.admin, false, CtlCommand::Backup { file: file.clone() }),
        &mut out,
    )
    .await
    .expect("ctl backup");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.contains("1 machines, 1 profiles") && text.contains("1 leases"),
        "{text}"
    );
    // The service went on meanwhile and the backup is in the audit log.
    let (status, audit) = s.call("GET", "/api/v1/audit", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(audit.to_string().contains("state.backup"), "{audit}");

    // Restore refuses the state file the running server holds.
    let mut out = Vec::new();
    let err = ctl::run_to(
        s.ctl(
            "",
            false,
            CtlCommand::Restore {
                state: s.dir.path().join("state.redb"),
                file: file.clone(),
            },
        ),
        &mut out,
    )
    .await
    .expect_err("the state file is in use");
    assert!(err.to_string().contains("running appliance"), "{err}");

    // Into a new state file, with no token.
    let restored = s.dir.path().join("restored/state.redb");
    let mut out = Vec::new();
    ctl::run_to(
        s.ctl(
            "",
            false,
            CtlCommand::Restore {
                state: restored.clone(),
                file: file.clone(),
            },
        ),
        &mut out,
    )
    .await
    .expect("ctl restore");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.starts_with("restored "), "{text}");

    let back = ControlState::open(&restored, Metrics::new()).expect("open restored state");
    let original = &s.state;
    assert_eq!(back.snapshot().machines, original.snapshot().machines);
    assert_eq!(back.snapshot().profiles, original.snapshot().profiles);
    assert_eq!(
        back.leases().expect("leases"),
        original.leases().expect("leases")
    );
    assert_eq!(
        back.tokens().expect("tokens"),
        original.tokens().expect("tokens")
    );
    assert!(
        back.authenticate(&operator)
            .expect("authenticate")
            .is_some(),
        "tokens still work"
    );
    assert!(back.verify_audit().expect("audit").is_intact());
    assert_eq!(
        back.sessions()
            .timeline(stampede_control::MacAddr([0x52, 0x54, 0, 0x70, 0, 1]))
            .map(|t| t.timeline.len()),
        Some(1),
        "boot sessions are in the backup"
    );

    // Restoring over an existing (stopped) state keeps the old file beside it.
    drop(back);
    let mut out = Vec::new();
    ctl::run_to(
        s.ctl(
            "",
            true,
            CtlCommand::Restore {
                state: restored.clone(),
                file: file.clone(),
            },
        ),
        &mut out,
    )
    .await
    .expect("restore over a stopped state");
    let report: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(report["restored"]["machines"], 1, "{report}");
    let kept = report["previous"].as_str().expect("previous kept");
    assert!(std::path::Path::new(kept).is_file());

    // Something that is not a backup is refused before anything is replaced.
    let junk = s.dir.path().join("junk.redb");
    std::fs::write(&junk, b"not a database").expect("write");
    let err = ctl::run_to(
        s.ctl(
            "",
            false,
            CtlCommand::Restore {
                state: restored.clone(),
                file: junk,
            },
        ),
        &mut Vec::new(),
    )
    .await
    .expect_err("junk refused");
    assert!(
        err.to_string().contains("not a Stampede state file"),
        "{err}"
    );
}
