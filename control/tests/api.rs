//! The API over real HTTP on 127.0.0.1 (ephemeral port), as the data plane and `stampede ctl`
//! see it.
mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use stampede_control::api::{self, RouteSpec};
use stampede_control::ctl::{self, CtlCommand};
use stampede_control::{DurableLeaseStore, GroupCommitConfig, Role, SessionLimits, openapi};
use stampede_proto::dhcp::{ClientKey, Lease, LeaseChange, LeaseState, LeaseStore, MessageType};
use stampede_proto::events::{BootEvent, BootEventKind, EventSink};
use support::{start, start_with};

fn profile(name: &str) -> Value {
    json!({ "name": name, "kernel": "vmlinuz", "initrds": ["initrd.img"], "cmdline": "quiet",
            "variants": { "efi_arm64": { "kernel": "Image" } } })
}

#[tokio::test]
async fn unauthenticated_and_wrong_role_are_rejected() {
    let s = start().await;
    let read = s.token("dashboard", Role::Read).await;
    let operator = s.token("provisioner", Role::Operator).await;

    let (status, _) = s.call("GET", "/api/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "health is public");

    let resp = s
        .http
        .get(format!("{}/api/v1/machines", s.url))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no token");
    assert!(
        resp.headers().get("www-authenticate").is_some(),
        "401 names the Bearer scheme"
    );
    let (status, _) = s
        .call("GET", "/api/v1/machines", Some("stp_not-a-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown token");
    let (status, _) = s.call("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "metrics need a token");

    let (status, _) = s.call("GET", "/api/v1/machines", Some(&read), None).await;
    assert_eq!(status, StatusCode::OK, "read may list");
    let (status, body) = s
        .call("POST", "/api/v1/profiles", Some(&read), Some(profile("p")))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "read may not mutate: {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("operator"),
        "{body}"
    );
    let (status, _) = s
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&operator),
            Some(json!({ "name": "x", "role": "admin" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "operator may not issue tokens"
    );
    let (status, _) = s.call("GET", "/api/v1/tokens", Some(&read), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "read may not list tokens");
    let (status, _) = s
        .call(
            "POST",
            "/api/v1/profiles",
            Some(&operator),
            Some(profile("p")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "operator may mutate");

    // Only hashes are stored: the token text is nowhere in the file.
    let (status, tokens) = s.call("GET", "/api/v1/tokens", Some(&s.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !tokens.to_string().contains(&operator),
        "listing never shows a token"
    );
    let file = std::fs::read(s.dir.path().join("state.redb")).expect("read state file");
    let needle = operator.as_bytes();
    assert!(
        !file.windows(needle.len()).any(|w| w == needle),
        "the token itself is not stored"
    );

    // Revoked tokens stop working.
    let (status, _) = s
        .call("DELETE", "/api/v1/tokens/provisioner", Some(&s.admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s
        .call("GET", "/api/v1/machines", Some(&operator), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked token refused");
}

#[tokio::test]
async fn machine_crud_round_trip() {
    let s = start().await;
    let op = s.token("provisioner", Role::Operator).await;
    let mac = "52:54:00:aa:bb:01";
    let machine = json!({ "mac": "52-54-00-AA-BB-01", "hostname": "node01", "profile": "rescue",
                          "arch": "efi_x64", "labels": { "rack": "r3" } });

    let (status, body) = s
        .call("POST", "/api/v1/machines", Some(&op), Some(machine.clone()))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown profile refused: {body}"
    );
    let (status, _) = s
        .call(
            "POST",
            "/api/v1/profiles",
            Some(&op),
            Some(profile("rescue")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, created) = s
        .call("POST", "/api/v1/machines", Some(&op), Some(machine.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["mac"], mac, "MAC normalized");
    let (status, _) = s
        .call("POST", "/api/v1/machines", Some(&op), Some(machine.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "POST of an existing machine");

    let (status, got) = s
        .call("GET", &format!("/api/v1/machines/{mac}"), Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created, "GET returns what POST stored");
    let (status, _) = s
        .call("GET", "/api/v1/machines/not-a-mac", Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut changed = got.clone();
    changed["boot"] = json!("deny");
    let (status, _) = s
        .call(
            "PUT",
            &format!("/api/v1/machines/{mac}"),
            Some(&op),
            Some(changed.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "PUT replaces");
    let (_, list) = s.call("GET", "/api/v1/machines", Some(&op), None).await;
    let mut listed = changed.clone();
    listed["source"] = json!("api");
    assert_eq!(
        list,
        json!([listed]),
        "list shows the replaced machine, and where it is declared"
    );

    let (status, body) = s
        .call("DELETE", "/api/v1/profiles/rescue", Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "profile in use: {body}");
    let (status, _) = s
        .call(
            "DELETE",
            &format!("/api/v1/machines/{mac}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s
        .call("GET", &format!("/api/v1/machines/{mac}"), Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call("DELETE", "/api/v1/profiles/rescue", Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "unused profile can go");

    // Every change above is in the audit log, attributed, and the chain verifies.
    let (_, entries) = s.call("GET", "/api/v1/audit", Some(&op), None).await;
    let actions: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["actor"] == "provisioner")
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "profile.put",
            "machine.put",
            "machine.put",
            "machine.delete",
            "profile.delete"
        ]
    );
    let (_, report) = s.call("GET", "/api/v1/audit/verify", Some(&op), None).await;
    assert_eq!(report["problem"], Value::Null, "{report}");
}

#[tokio::test]
async fn a_change_publishes_a_new_snapshot() {
    let s = start().await;
    let op = s.token("provisioner", Role::Operator).await;
    let mut rx = s.state.subscribe();
    let before = s.state.snapshot().generation;

    let (status, _) = s
        .call(
            "PUT",
            "/api/v1/profiles/rescue",
            Some(&op),
            Some(profile("rescue")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = s
        .call(
            "PUT",
            "/api/v1/machines/52:54:00:00:00:01",
            Some(&op),
            Some(json!({ "mac": "52:54:00:00:00:01", "profile": "rescue", "arch": "efi_arm64" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a snapshot is published within 5 s")
        .expect("sender alive");
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.generation, before + 2, "one generation per change");
    let mac = "52:54:00:00:00:01".parse().expect("mac");
    let (machine, boot) = snap
        .boot_profile(mac)
        .expect("the data plane can boot the machine");
    assert_eq!(
        boot.target(machine.arch).kernel,
        "Image",
        "arm64 variant chosen"
    );
    assert!(
        Arc::ptr_eq(&snap, &s.state.snapshot()),
        "snapshot() is the published one"
    );

    // A PUT that changes nothing publishes nothing.
    let (status, _) = s
        .call(
            "PUT",
            "/api/v1/machines/52:54:00:00:00:01",
            Some(&op),
            Some(json!({ "mac": "52:54:00:00:00:01", "profile": "rescue", "arch": "efi_arm64" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !rx.has_changed().expect("sender alive"),
        "no-op PUT publishes nothing"
    );
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let s = start().await;
    let (status, doc) = s.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc, openapi::document(), "served document is the built one");
    let (_, routes) = api::router(s.state.clone());
    let paths = doc["paths"].as_object().expect("paths object");
    for RouteSpec { method, path, role } in &routes {
        let op = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from OpenAPI"))
            [method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} missing from OpenAPI");
        let documented = op["x-stampede-role"].as_str();
        assert_eq!(
            documented,
            role.map(|r| r.as_str()),
            "{method} {path}: documented role"
        );
    }
    let served: usize = paths
        .values()
        .map(|p| p.as_object().expect("path item").len())
        .sum();
    assert_eq!(
        served,
        routes.len(),
        "OpenAPI documents no route the router lacks"
    );

    // Every documented operation really is served (not 404/405).
    for RouteSpec { method, path, .. } in &routes {
        let concrete = path
            .replace("{mac}", "52:54:00:00:00:09")
            .replace("{name}", "nothing")
            .replace("{sha256}", "00")
            .replace("{id}", "1");
        let status = if *path == "/api/v1/events" {
            // A stream never ends: read the status, not the body.
            s.http
                .get(format!("{}{concrete}", s.url))
                .bearer_auth(&s.admin)
                .send()
                .await
                .expect("event stream answers")
                .status()
        } else {
            s.call(method.as_str(), &concrete, Some(&s.admin), None)
                .await
                .0
        };
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED
                && !(status == StatusCode::NOT_FOUND && concrete == *path),
            "{method} {path} is routed (got {status})"
        );
    }
}

fn write_fleet(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        r#"
[[profiles]]
name = "ubuntu"
kernel = "ubuntu/vmlinuz"
initrds = ["ubuntu/initrd"]
cmdline = "ip=dhcp"

[profiles.variants.efi_arm64]
kernel = "ubuntu/Image"

[[machines]]
mac = "52:54:00:10:00:01"
hostname = "web01"
profile = "ubuntu"
labels = { role = "web" }

[[machines]]
mac = "52-54-00-10-00-02"
uuid = "4C4C4544-0042-3510-8052-B4C04F4E4B32"
profile = "ubuntu"
boot = "deny"
"#,
    )
    .expect("write fleet.toml");
    path
}

#[tokio::test]
async fn apply_is_idempotent() {
    let s = start().await;
    let op = s.token("gitops", Role::Operator).await;
    let fleet = write_fleet(s.dir.path());
    let apply = || CtlCommand::Apply {
        file: fleet.clone(),
        dry_run: false,
        prune: false,
    };

    let mut out = Vec::new();
    ctl::run_to(s.ctl(&op, true, apply()), &mut out)
        .await
        .expect("first apply");
    let first: ctl::ApplyReport = serde_json::from_slice(&out).expect("JSON report");
    assert_eq!(
        (first.profiles.created, first.machines.created),
        (1, 2),
        "{first:?}"
    );
    let generation = s.state.snapshot().generation;
    let audit_len = s.state.audit_entries(0, 10_000).expect("audit").len();

    let mut out = Vec::new();
    ctl::run_to(s.ctl(&op, false, apply()), &mut out)
        .await
        .expect("second apply");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.contains("profiles  0        0        1"),
        "table output:\n{text}"
    );
    assert!(
        text.contains("machines  0        0        2"),
        "table output:\n{text}"
    );
    assert_eq!(
        s.state.snapshot().generation,
        generation,
        "second apply publishes nothing"
    );
    assert_eq!(
        s.state.audit_entries(0, 10_000).expect("audit").len(),
        audit_len,
        "second apply audits nothing"
    );

    // And people can see the result.
    let mut out = Vec::new();
    ctl::run_to(
        s.ctl(
            &op,
            false,
            CtlCommand::Machines(ctl::MachinesCommand::List { selector: None }),
        ),
        &mut out,
    )
    .await
    .expect("machines list");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.starts_with("MAC "), "table header:\n{text}");
    assert!(text.contains("52:54:00:10:00:01  web01"), "{text}");
    assert!(text.contains("deny"), "{text}");

    // ctl add and rm.
    let add = CtlCommand::Machines(ctl::MachinesCommand::Add {
        mac: "52:54:00:10:00:03".into(),
        profile: Some("ubuntu".into()),
        hostname: None,
        uuid: None,
        arch: None,
        labels: vec![("rack".into(), "r1".into())],
        deny: false,
        ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEE ops@r1".into()],
    });
    let mut out = Vec::new();
    ctl::run_to(s.ctl(&op, false, add), &mut out)
        .await
        .expect("machines add");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "machine 52:54:00:10:00:03 created\n"
    );
    // --ssh-key is stored with the machine.
    let get = CtlCommand::Machines(ctl::MachinesCommand::Get {
        mac: "52:54:00:10:00:03".into(),
    });
    let mut out = Vec::new();
    ctl::run_to(s.ctl(&op, true, get), &mut out)
        .await
        .expect("machines get");
    let got: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(
        got["ssh_authorized_keys"][0], "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEE ops@r1",
        "{got}"
    );
    let rm = CtlCommand::Machines(ctl::MachinesCommand::Rm {
        mac: "52:54:00:10:00:03".into(),
    });
    ctl::run_to(s.ctl(&op, false, rm.clone()), &mut Vec::new())
        .await
        .expect("machines rm");
    let err = ctl::run_to(s.ctl(&op, false, rm), &mut Vec::new())
        .await
        .expect_err("second rm finds nothing");
    assert!(err.to_string().contains("404"), "{err}");

    // A read token cannot apply.
    let read = s.token("viewer", Role::Read).await;
    let err = ctl::run_to(s.ctl(&read, false, apply()), &mut Vec::new())
        .await
        .expect_err("read token cannot apply");
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn images_are_content_addressed() {
    let s = start().await;
    let op = s.token("provisioner", Role::Operator).await;
    let file = s.dir.path().join("vmlinuz");
    std::fs::write(&file, b"not really a kernel").expect("write image");
    let body = json!({ "name": "vmlinuz-6.8", "path": file.to_str().expect("utf-8 path") });
    let (status, image) = s
        .call("POST", "/api/v1/images", Some(&op), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{image}");
    // sha256("not really a kernel")
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"not really a kernel"))
    };
    assert_eq!(image["sha256"], expected.as_str());
    assert_eq!(image["size"], 19);
    let registered = image["registered_at"].as_str().unwrap_or_default();
    assert!(
        registered.len() == 24 && registered.ends_with('Z') && registered.as_bytes()[10] == b'T',
        "registered_at_ms has an RFC 3339 twin: {image}"
    );
    let (status, _) = s
        .call("POST", "/api/v1/images", Some(&op), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "same content registers once");
    let (status, got) = s
        .call(
            "GET",
            &format!("/api/v1/images/{expected}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!((status, &got), (StatusCode::OK, &image));
    let (status, _) = s
        .call(
            "POST",
            "/api/v1/images",
            Some(&op),
            Some(json!({ "name": "gone", "path": "/nonexistent/stampede-image" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing file refused"
    );
    // A device would be read forever; it is refused at once.
    let (status, err) = s
        .call(
            "POST",
            "/api/v1/images",
            Some(&op),
            Some(json!({ "name": "zero", "path": "/dev/zero" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a regular file")),
        "{err}"
    );
}

/// Requests axum refuses before a handler runs still get the API's JSON error body (found by
/// schemathesis: they were plain text, and their statuses were not in the OpenAPI document).
#[tokio::test]
async fn rejected_requests_get_json_errors() {
    let s = start().await;
    let admin = s.admin.clone();
    let send = |req: reqwest::RequestBuilder| {
        let admin = admin.clone();
        async move {
            let resp = req.bearer_auth(&admin).send().await.expect("answer");
            let status = resp.status();
            let ctype = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body: Value = resp.json().await.expect("a JSON body");
            (status, ctype, body)
        }
    };
    let url = |p: &str| format!("{}{p}", s.url);
    let cases = [
        (
            s.http.post(url("/api/v1/machines")).body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            s.http
                .post(url("/api/v1/machines"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            s.http
                .post(url("/api/v1/tokens"))
                .header("content-type", "application/json")
                .body(r#"{"name": 5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            s.http.get(url("/api/v1/audit?limit=-1")),
            StatusCode::BAD_REQUEST,
        ),
        (
            s.http.get(url("/api/v1/machines/%FF")),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let doc = openapi::document();
    for (req, want) in cases {
        let (status, ctype, body) = send(req).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(ctype, "application/json", "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // Each of those statuses is documented for its operation.
    for (path, method, status) in [
        ("/api/v1/machines", "post", "415"),
        ("/api/v1/machines", "post", "400"),
        ("/api/v1/tokens", "post", "422"),
        ("/api/v1/audit", "get", "400"),
        ("/api/v1/machines/{mac}", "get", "400"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]
                .get(status)
                .is_some(),
            "{method} {path} documents {status}"
        );
    }
}

#[tokio::test]
async fn metrics_and_leases_reach_the_api() {
    let s = start().await;
    let read = s.token("prometheus", Role::Read).await;

    // The data plane feeds the registry through a handle.
    s.state
        .metrics()
        .counter(
            "stampede_dhcp_drops_total",
            "DHCP datagrams dropped",
            &[("reason", "malformed")],
        )
        .expect("counter")
        .add(7);
    // The data plane's lease store shares the state file.
    let mut leases = DurableLeaseStore::open(s.state.db().clone(), GroupCommitConfig::default())
        .expect("lease store");
    let seq = leases
        .apply(LeaseChange::Put(Lease {
            ip: Ipv4Addr::new(198, 18, 0, 10),
            client: ClientKey(vec![1, 0x52, 0x54, 0, 0, 0, 1]),
            mac: [0x52, 0x54, 0, 0, 0, 1],
            state: LeaseState::Bound,
            expires: Instant::now() + Duration::from_secs(600),
        }))
        .expect("apply");
    assert!(leases.flush(Duration::from_secs(10)), "lease committed");
    assert!(leases.durable_seq() >= seq);

    let (status, list) = s.call("GET", "/api/v1/leases", Some(&read), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["ip"], "198.18.0.10", "{list}");
    assert_eq!(list[0]["mac"], "52:54:00:00:00:01", "{list}");
    assert_eq!(list[0]["state"], "bound", "{list}");

    let resp = s
        .http
        .get(format!("{}/metrics", s.url))
        .bearer_auth(&read)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4"),
        "Prometheus content type"
    );
    let text = resp.text().await.expect("body");
    assert!(
        text.contains("stampede_dhcp_drops_total{reason=\"malformed\"} 7\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE stampede_control_machines gauge\n"),
        "{text}"
    );
    assert!(text.contains("stampede_api_requests_total{"), "{text}");
}

#[tokio::test]
async fn ctl_audit_verify_reports_tampering() {
    let s = start().await;
    let op = s.token("provisioner", Role::Operator).await;
    let verify = || CtlCommand::Audit(ctl::AuditCommand::Verify);
    let mut out = Vec::new();
    ctl::run_to(s.ctl(&op, false, verify()), &mut out)
        .await
        .expect("intact log verifies");
    assert!(
        String::from_utf8_lossy(&out).starts_with("audit log intact: 2 entries"),
        "bootstrap token and issued token are audited: {}",
        String::from_utf8_lossy(&out)
    );

    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let txn = s.state.db().begin_write().expect("write");
    txn.open_table(table)
        .expect("audit table")
        .remove(1)
        .expect("delete the first entry");
    txn.commit().expect("commit");

    let err = ctl::run_to(s.ctl(&op, true, verify()), &mut Vec::new())
        .await
        .expect_err("tampered log fails verification");
    assert!(
        matches!(
            err,
            ctl::CtlError::AuditDamaged(stampede_control::AuditProblem::Missing {
                expected: 1,
                ..
            })
        ),
        "{err}"
    );
}

const BOOT_MAC: [u8; 6] = [0x52, 0x54, 0, 0xbb, 0, 1];

fn dhcp_reply(at: u64, mac: [u8; 6], message: MessageType, ip: Ipv4Addr) -> BootEvent {
    BootEvent {
        at_unix_ms: at,
        mac: Some(mac),
        client: std::net::SocketAddr::from((ip, 68)),
        kind: BootEventKind::DhcpReply {
            message,
            yiaddr: ip,
            boot_file: "ipxe.efi".into(),
        },
    }
}

/// A TFTP or HTTP event: only the client's address, as the data plane sees it.
fn from_addr(at: u64, ip: Ipv4Addr, kind: BootEventKind) -> BootEvent {
    BootEvent {
        at_unix_ms: at,
        mac: None,
        client: std::net::SocketAddr::from((ip, 2070)),
        kind,
    }
}

fn tftp_done(file: &str, bytes: u64) -> BootEventKind {
    BootEventKind::TftpDone {
        file: file.into(),
        bytes,
        retransmits: 1,
        duration_ms: 120,
    }
}

/// One PXE boot as the data plane reports it, with a slow gap before the HTTP stage.
fn record_boot(sink: &dyn EventSink, mac: [u8; 6], ip: Ipv4Addr, t0: u64) {
    sink.record(dhcp_reply(t0, mac, MessageType::Offer, ip));
    sink.record(dhcp_reply(t0 + 20, mac, MessageType::Ack, ip));
    sink.record(from_addr(
        t0 + 300,
        ip,
        BootEventKind::TftpStarted {
            file: "ipxe.efi".into(),
            blksize: 1468,
            windowsize: 8,
        },
    ));
    // Reported late by another worker: must still land before the HTTP fetch.
    sink.record(from_addr(
        t0 + 2_500,
        ip,
        BootEventKind::HttpResponse {
            path: "/boot.ipxe".into(),
            status: 200,
            bytes: 420,
        },
    ));
    sink.record(from_addr(t0 + 420, ip, tftp_done("ipxe.efi", 1_048_576)));
}

#[tokio::test]
async fn sessions_show_each_machine_timeline_with_gaps() {
    let s = start_with(SessionLimits {
        max_sessions: 2,
        max_events: 4,
        live_buffer: 64,
    })
    .await;
    let read = s.token("noc", Role::Read).await;
    let sink: &dyn EventSink = &**s.state.sessions();
    let ip = Ipv4Addr::new(198, 18, 1, 10);
    record_boot(sink, BOOT_MAC, ip, 1_000_000);

    let (status, t) = s
        .call(
            "GET",
            "/api/v1/sessions/52:54:00:bb:00:01",
            Some(&read),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["ip"], "198.18.1.10");
    assert_eq!(t["events"], 4, "bounded to 4 events: {t}");
    assert_eq!(t["dropped_events"], 1, "the Offer was dropped: {t}");
    assert_eq!(t["first_unix_ms"], 1_000_000, "the boot began at the Offer");
    let kinds: Vec<&str> = t["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        ["dhcp_reply", "tftp_started", "tftp_done", "http_response"],
        "ordered by time, not by arrival"
    );
    assert!(
        t["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .all(|e| e["mac"] == "52:54:00:bb:00:01"),
        "TFTP and HTTP events mapped to the MAC through the DHCP yiaddr: {t}"
    );
    assert_eq!(t["timeline"][2]["bytes"], 1_048_576);
    assert_eq!(t["timeline"][2]["since_prev_ms"], 120);
    let gaps: Vec<(&str, &str, u64)> = t["gaps"]
        .as_array()
        .expect("gaps")
        .iter()
        .map(|g| {
            (
                g["from"].as_str().expect("from"),
                g["to"].as_str().expect("to"),
                g["gap_ms"].as_u64().expect("gap"),
            )
        })
        .collect();
    assert_eq!(gaps, [("dhcp", "tftp", 280), ("tftp", "http", 2_080)]);
    assert_eq!(t["longest_wait"]["kind"], "http_response");
    assert_eq!(t["outcome"], "ok");

    // Two more machines: the idlest (the first) is evicted.
    record_boot(
        sink,
        [0x52, 0x54, 0, 0xbb, 0, 2],
        Ipv4Addr::new(198, 18, 1, 11),
        2_000_000,
    );
    sink.record(dhcp_reply(
        3_000_000,
        [0x52, 0x54, 0, 0xbb, 0, 3],
        MessageType::Nak,
        Ipv4Addr::UNSPECIFIED,
    ));
    let (status, list) = s.call("GET", "/api/v1/sessions", Some(&read), None).await;
    assert_eq!(status, StatusCode::OK);
    let macs: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["mac"].as_str().expect("mac"))
        .collect();
    assert_eq!(
        macs,
        ["52:54:00:bb:00:03", "52:54:00:bb:00:02"],
        "newest first"
    );
    assert_eq!(list[0]["outcome"], "failed", "a Nak: {list}");
    assert_eq!(list[1]["stages"][1]["stage"], "tftp");
    assert_eq!(list[1]["stages"][1]["bytes"], 1_048_576);
    let stats = s.state.sessions().stats();
    assert_eq!(stats.evicted_sessions, 1);
    assert!(stats.evicted_events >= 2, "{stats:?}");

    let (status, _) = s
        .call(
            "GET",
            "/api/v1/sessions/52:54:00:bb:00:01",
            Some(&read),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "evicted");
    let (status, _) = s
        .call("GET", "/api/v1/sessions/not-a-mac", Some(&read), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.call("GET", "/api/v1/sessions", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Reads SSE messages (`event`, parsed `data`) from a raw response until `n` have arrived.
async fn read_sse(resp: &mut reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut buf = String::new();
    let mut messages = Vec::new();
    while messages.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .expect("stream readable")
            .expect("stream still open");
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                messages.push((event, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    messages
}

#[tokio::test]
async fn events_stream_boot_events_as_server_sent_events() {
    let s = start().await;
    let read = s.token("dashboard", Role::Read).await;
    let sink: &dyn EventSink = &**s.state.sessions();

    let resp = s
        .http
        .get(format!("{}/api/v1/events", s.url))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "events need a token"
    );

    let ip = Ipv4Addr::new(198, 18, 2, 10);
    // Before anyone subscribes: not replayed on the stream.
    sink.record(dhcp_reply(1, BOOT_MAC, MessageType::Offer, ip));

    let mut resp = s
        .http
        .get(format!("{}/api/v1/events", s.url))
        .bearer_auth(&read)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The subscription exists once the headers are back.
    sink.record(dhcp_reply(2, BOOT_MAC, MessageType::Ack, ip));
    sink.record(from_addr(3, ip, tftp_done("ipxe.efi", 4096)));
    let got = read_sse(&mut resp, 2).await;
    assert_eq!(got[0].0, "dhcp_reply");
    assert_eq!(got[0].1["message"], "ack", "{:?}", got[0]);
    assert_eq!(got[1].0, "tftp_done");
    assert_eq!(
        got[1].1["mac"], "52:54:00:bb:00:01",
        "resolved from the address"
    );
    assert_eq!(got[1].1["bytes"], 4096);
    assert_eq!(got[1].1["client"], "198.18.2.10:2070");

    // ?mac= keeps one machine's events.
    let mut one = s
        .http
        .get(format!("{}/api/v1/events?mac=52:54:00:bb:00:02", s.url))
        .bearer_auth(&read)
        .send()
        .await
        .expect("answer");
    assert_eq!(one.status(), StatusCode::OK);
    sink.record(from_addr(4, ip, tftp_done("other", 1)));
    sink.record(dhcp_reply(
        5,
        [0x52, 0x54, 0, 0xbb, 0, 2],
        MessageType::Ack,
        ip,
    ));
    let got = read_sse(&mut one, 1).await;
    assert_eq!(got[0].1["mac"], "52:54:00:bb:00:02", "{got:?}");
}

#[tokio::test]
async fn ctl_watch_prints_events_as_they_arrive() {
    let s = start().await;
    let read = s.token("operator-laptop", Role::Read).await;
    let watch = |count, timeout, json| {
        let args = s.ctl(
            &read,
            json,
            CtlCommand::Watch(ctl::WatchArgs {
                mac: None,
                count: Some(count),
                timeout: Some(timeout),
            }),
        );
        tokio::spawn(async move {
            let mut out = Vec::new();
            let result = ctl::run_to(args, &mut out).await;
            (result, String::from_utf8(out).expect("UTF-8"))
        })
    };
    let sessions = s.state.sessions().clone();
    let wait_for_watchers = |n| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sessions.subscribers() < n {
            assert!(Instant::now() < deadline, "watch did not subscribe");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let table = watch(3, 10.0, false);
    let json = watch(3, 10.0, true);
    wait_for_watchers(2).await;
    let sink: &dyn EventSink = &**s.state.sessions();
    let ip = Ipv4Addr::new(198, 18, 3, 10);
    sink.record(dhcp_reply(
        1_700_000_000_000,
        BOOT_MAC,
        MessageType::Ack,
        ip,
    ));
    sink.record(from_addr(
        1_700_000_000_300,
        ip,
        tftp_done("ipxe.efi", 2048),
    ));
    sink.record(from_addr(
        1_700_000_002_000,
        ip,
        BootEventKind::TftpFailed {
            file: "undionly.kpxe".into(),
            bytes: 512,
            reason: "timeout".into(),
        },
    ));

    let (result, out) = table.await.expect("watch task");
    result.expect("watch ends after --count events");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("2023-11-14T22:13:20.000Z  52:54:00:bb:00:01"),
        "{out}"
    );
    assert!(
        lines[0].contains("dhcp_reply") && lines[0].contains("ack 198.18.3.10"),
        "{out}"
    );
    assert!(
        lines[1].contains("ipxe.efi 2048 B in 120 ms, 1 retransmits"),
        "{out}"
    );
    assert!(
        lines[2].contains("tftp_failed") && lines[2].contains("(timeout)"),
        "{out}"
    );

    let (result, out) = json.await.expect("watch task");
    result.expect("watch --json");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["reason"], "timeout");
    assert_eq!(
        events[0]["at"], "2023-11-14T22:13:20.000Z",
        "each millisecond time has its RFC 3339 twin"
    );

    // Fewer events than --count before --timeout is an error a script can see.
    let (result, out) = watch(1, 0.2, false).await.expect("watch task");
    assert!(
        matches!(
            result,
            Err(ctl::CtlError::WatchTimeout {
                seen: 0,
                wanted: 1,
                ..
            })
        ),
        "{result:?} {out}"
    );
}

/// A stand-in for the appliance's configuration validation: refuses `..` in a kernel path.
#[derive(Debug)]
struct NoDotDot;

impl stampede_control::validation::FleetValidator for NoDotDot {
    fn validate(&self, fleet: &stampede_control::FleetSnapshot) -> Result<(), String> {
        for (name, p) in &fleet.profiles {
            let quarantined = stampede_control::model::FleetEntry::Profile(name.clone());
            if fleet.quarantined(&quarantined).is_none() && p.spec().default.kernel.contains("..") {
                return Err(format!(
                    "profiles[{name}].kernel: contains a `..` component"
                ));
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn writes_are_validated_stored_bad_entries_quarantined_and_reloads_reported() {
    let s = start().await;
    let system = stampede_control::Caller {
        name: "earlier-version".into(),
        role: Role::Admin,
    };
    let mut bad = profile("bad");
    bad["kernel"] = json!("../../etc/shadow");
    let bad: stampede_control::BootProfile = serde_json::from_value(bad).expect("profile");
    s.state
        .put_profile(&system, bad, true)
        .expect("stored before validation");
    let quarantined = s.state.attach_fleet_validator(Arc::new(NoDotDot));
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    let (_, health) = s.call("GET", "/api/v1/health", None, None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["quarantined"], 1, "{health}");
    let (_, listed) = s
        .call("GET", "/api/v1/profiles", Some(&s.admin), None)
        .await;
    assert!(
        listed[0]["quarantined"]
            .as_str()
            .is_some_and(|w| w.contains("`..`")),
        "{listed}"
    );

    let generation = s.state.snapshot().generation;
    let mut hostile = profile("h");
    hostile["kernel"] = json!("../x");
    let (status, answer) = s
        .call("POST", "/api/v1/profiles", Some(&s.admin), Some(hostile))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("kernel"),
        "{answer}"
    );
    assert_eq!(
        s.state.snapshot().generation,
        generation,
        "nothing published"
    );
    let (status, _) = s
        .call("GET", "/api/v1/profiles/h", Some(&s.admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");

    s.state
        .record_reload(Err("profiles[0].kernel: missing".into()));
    let (_, health) = s.call("GET", "/api/v1/health", None, None).await;
    assert_eq!(
        health["reload_error"], "profiles[0].kernel: missing",
        "{health}"
    );
    let metrics = s
        .http
        .get(format!("{}/metrics", s.url))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("stampede_reload_failures_total 1"),
        "{metrics}"
    );
    // The quarantined profile replaced by a good one, and a reload that succeeds: ok again.
    let (status, answer) = s
        .call(
            "PUT",
            "/api/v1/profiles/bad",
            Some(&s.admin),
            Some(profile("bad")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    s.state.record_reload(Ok(()));
    let (_, health) = s.call("GET", "/api/v1/health", None, None).await;
    assert_eq!(health["status"], "ok", "{health}");
}
