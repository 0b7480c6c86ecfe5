//! The admin token across restarts (issue 19.5): a changed `STAMPEDE_ADMIN_TOKEN` replaces the
//! old bootstrap token, weak tokens are refused, a revoked bootstrap token stays revoked, and
//! tokens may expire.
use std::path::Path;
use std::time::Duration;

use stampede_control::{Caller, ControlError, ControlState, Metrics, Role};

/// One start of the appliance, as far as tokens go: the state opened and the environment's
/// token ensured.
fn start(path: &Path, env_token: &str) -> ControlState {
    let state = ControlState::open(path, Metrics::new()).expect("open the state file");
    state
        .ensure_admin_token(Some(env_token))
        .expect("the bootstrap token is accepted");
    state
}

fn works(state: &ControlState, token: &str) -> bool {
    state.authenticate(token).expect("authenticate").is_some()
}

fn bootstraps(state: &ControlState) -> usize {
    let tokens = state.tokens().expect("tokens");
    tokens.iter().filter(|t| t.name == "bootstrap").count()
}

const FIRST: &str = "first-admin-token-0001";
const SECOND: &str = "second-admin-token-0002";
const THIRD: &str = "third-admin-token-0003";

#[test]
fn a_changed_bootstrap_token_replaces_the_old_one() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("state.redb");
    let state = start(&path, FIRST);
    assert!(works(&state, FIRST));
    drop(state);
    let state = start(&path, SECOND);
    assert!(works(&state, SECOND), "the new value works");
    assert!(!works(&state, FIRST), "the old value no longer works");
    assert_eq!(bootstraps(&state), 1, "{:?}", state.tokens());
    drop(state);
    let state = start(&path, SECOND);
    assert!(
        works(&state, SECOND),
        "the same value again changes nothing"
    );
    assert_eq!(bootstraps(&state), 1);
}

#[test]
fn a_revoked_bootstrap_token_stays_revoked_until_a_new_value_is_set() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("state.redb");
    let state = start(&path, FIRST);
    let admin = state.authenticate(FIRST).expect("auth").expect("admin");
    let other = state
        .create_token(&admin, "ops", Role::Admin)
        .expect("another admin");
    state.revoke_token(&admin, "bootstrap").expect("revoked");
    assert!(!works(&state, FIRST));
    drop(state);
    let state = start(&path, FIRST);
    assert!(
        !works(&state, FIRST),
        "a restart with the same value does not revive it"
    );
    assert_eq!(bootstraps(&state), 0, "{:?}", state.tokens());
    assert!(works(&state, &other), "the other admin token still works");
    drop(state);
    let state = start(&path, THIRD);
    assert!(
        works(&state, THIRD),
        "a new value is the operator saying otherwise"
    );
    assert!(!works(&state, FIRST));
    assert_eq!(bootstraps(&state), 1);
}

#[test]
fn weak_tokens_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = ControlState::open(dir.path().join("state.redb"), Metrics::new()).expect("open");
    for weak in ["x", "fifteen-chars-x"] {
        let err = state
            .ensure_admin_token(Some(weak))
            .expect_err("a weak token is refused");
        assert!(matches!(err, ControlError::WeakToken { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("STAMPEDE_ADMIN_TOKEN") && message.contains("at least 16"),
            "{message}"
        );
        assert!(!works(&state, weak), "nothing was stored");
    }
    assert!(state.tokens().expect("tokens").is_empty());
}

#[test]
fn tokens_may_expire() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = start(&dir.path().join("state.redb"), FIRST);
    let admin = Caller {
        name: "bootstrap".into(),
        role: Role::Admin,
    };
    let brief = state
        .create_token_expiring(&admin, "brief", Role::Read, Some(Duration::from_millis(50)))
        .expect("created");
    let lasting = state
        .create_token_expiring(
            &admin,
            "lasting",
            Role::Read,
            Some(Duration::from_secs(3600)),
        )
        .expect("created");
    assert!(works(&state, &brief) && works(&state, &lasting));
    let listed = state.tokens().expect("tokens");
    assert!(
        listed
            .iter()
            .any(|t| t.name == "lasting" && t.expires_at_ms.is_some()),
        "{listed:?}"
    );
    std::thread::sleep(Duration::from_millis(80));
    assert!(!works(&state, &brief), "expired");
    assert!(works(&state, &lasting));
}
