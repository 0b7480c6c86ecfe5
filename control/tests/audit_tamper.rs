//! Editing or deleting audit entries directly in the redb file is detected.
use redb::{ReadableTable, TableDefinition};
use stampede_control::model::{BootTarget, ProfileSpec};
use stampede_control::{
    AuditProblem, BootProfile, Caller, ControlState, Machine, MachineSpec, Metrics, Role,
};

/// The audit table as stored (the crate's own definition is private on purpose).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

fn state_with_history() -> (tempfile::TempDir, ControlState) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = ControlState::open(dir.path().join("state.redb"), Metrics::new()).expect("open");
    let actor = Caller {
        name: "ops".into(),
        role: Role::Operator,
    };
    let profile = BootProfile::try_from(ProfileSpec {
        name: "rescue".into(),
        root: None,
        default: BootTarget {
            kernel: "vmlinuz".into(),
            initrds: vec![],
            cmdline: String::new(),
        },
        ipxe_template: None,
        variants: Default::default(),
        secure_boot: None,
    })
    .expect("valid profile");
    state.put_profile(&actor, profile, true).expect("profile");
    for i in 1..=4u8 {
        let machine = Machine::try_from(MachineSpec {
            mac: format!("52:54:00:00:00:{i:02x}"),
            uuid: None,
            arch: None,
            hostname: Some(format!("node{i}")),
            labels: Default::default(),
            profile: Some("rescue".into()),
            boot: Default::default(),
            ssh_authorized_keys: Vec::new(),
        })
        .expect("valid machine");
        state.put_machine(&actor, machine, true).expect("machine");
    }
    let report = state.verify_audit().expect("verify");
    assert!(report.is_intact(), "untouched log verifies: {report:?}");
    assert_eq!(report.entries, 5);
    (dir, state)
}

fn tamper(state: &ControlState, f: impl FnOnce(&mut redb::Table<'_, u64, &[u8]>)) {
    let txn = state.db().begin_write().expect("write");
    {
        let mut table = txn.open_table(AUDIT).expect("audit table");
        f(&mut table);
    }
    txn.commit().expect("commit tampering");
}

fn problem(state: &ControlState) -> AuditProblem {
    state
        .verify_audit()
        .expect("verify")
        .problem
        .expect("tampering must be detected")
}

#[test]
fn edited_entry_is_detected() {
    let (_dir, state) = state_with_history();
    tamper(&state, |t| {
        let raw = t.get(3).expect("read").expect("entry 3").value().to_vec();
        let mut entry: serde_json::Value = serde_json::from_slice(&raw).expect("json entry");
        entry["actor"] = "someone-else".into();
        t.insert(3, serde_json::to_vec(&entry).expect("json").as_slice())
            .expect("rewrite entry 3");
    });
    assert_eq!(problem(&state), AuditProblem::Edited { seq: 3 });
}

#[test]
fn edited_entry_with_recomputed_hash_breaks_the_chain() {
    let (_dir, state) = state_with_history();
    tamper(&state, |t| {
        let raw = t.get(2).expect("read").expect("entry 2").value().to_vec();
        let mut entry: stampede_control::AuditEntry = serde_json::from_slice(&raw).expect("entry");
        entry.detail = serde_json::json!({ "forged": true });
        entry.hash = entry.compute_hash();
        t.insert(2, serde_json::to_vec(&entry).expect("json").as_slice())
            .expect("rewrite entry 2");
    });
    assert_eq!(problem(&state), AuditProblem::ChainBroken { seq: 3 });
}

#[test]
fn deleted_entry_is_detected() {
    let (_dir, state) = state_with_history();
    tamper(&state, |t| {
        t.remove(2).expect("delete entry 2");
    });
    assert_eq!(
        problem(&state),
        AuditProblem::Missing {
            expected: 2,
            found: 3
        }
    );
}

#[test]
fn deleted_newest_entry_is_detected() {
    let (_dir, state) = state_with_history();
    tamper(&state, |t| {
        t.remove(5).expect("delete entry 5");
    });
    assert_eq!(
        problem(&state),
        AuditProblem::Truncated { last: 4, head: 5 }
    );
}

#[test]
fn renumbered_log_is_detected() {
    // Deleting entry 2 and shifting the rest down keeps the numbers dense; the hashes do not fit.
    let (_dir, state) = state_with_history();
    tamper(&state, |t| {
        let rows: Vec<(u64, Vec<u8>)> = t
            .iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                (k.value(), v.value().to_vec())
            })
            .collect();
        for (k, _) in &rows {
            t.remove(*k).expect("remove");
        }
        for (k, v) in rows.into_iter().filter(|(k, _)| *k != 2) {
            let new = if k > 2 { k - 1 } else { k };
            t.insert(new, v.as_slice()).expect("insert");
        }
    });
    let p = problem(&state);
    assert!(
        matches!(p, AuditProblem::Edited { seq: 2 }),
        "renumbering detected at entry 2, got {p:?}"
    );
}
