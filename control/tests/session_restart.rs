//! Boot sessions survive a restart (issue 18): what the saver wrote is what the next start
//! shows, events with their own times, and refusals among them; an address handed out before
//! the restart still attributes TFTP and HTTP events to its machine.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use stampede_control::{ControlState, MacAddr, Metrics, SessionLimits};
use stampede_proto::dhcp::MessageType;
use stampede_proto::events::{BootEvent, BootEventKind, EventSink, RefusedBy};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0, 1];
const DENIED: [u8; 6] = [0x52, 0x54, 0, 0x12, 0, 2];
const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

fn limits(max_sessions: usize) -> SessionLimits {
    SessionLimits {
        max_sessions,
        max_events: 64,
        live_buffer: 16,
    }
}

fn event(at: u64, mac: Option<[u8; 6]>, kind: BootEventKind) -> BootEvent {
    BootEvent {
        at_unix_ms: at,
        mac,
        client: SocketAddr::from((IP, 68)),
        kind,
    }
}

fn boot(state: &ControlState) {
    let s = state.sessions();
    s.record(event(
        1_000,
        Some(MAC),
        BootEventKind::DhcpReply {
            message: MessageType::Offer,
            yiaddr: IP,
            boot_file: "ipxe.efi".into(),
        },
    ));
    s.record(event(
        1_500,
        None,
        BootEventKind::TftpFailed {
            file: "ipxe.efi".into(),
            bytes: 512,
            reason: "timeout".into(),
        },
    ));
    s.record(event(
        2_000,
        Some(DENIED),
        BootEventKind::Refused {
            by: RefusedBy::Dhcp,
            reason: "denied".into(),
        },
    ));
}

#[test]
fn sessions_saved_before_a_stop_are_shown_after_the_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("state.redb");
    let (before, denied_before) = {
        let state =
            ControlState::open_with_sessions(&path, Metrics::new(), limits(8)).expect("open state");
        let saver = state
            .persist_sessions(Duration::from_secs(3600))
            .expect("saver starts");
        boot(&state);
        // Stopping the saver writes what changed since its last interval.
        saver.stop();
        let s = state.sessions();
        (
            s.timeline(MacAddr(MAC)).expect("session"),
            s.timeline(MacAddr(DENIED))
                .expect("refused machine's session"),
        )
    };
    let state =
        ControlState::open_with_sessions(&path, Metrics::new(), limits(8)).expect("reopen state");
    let s = state.sessions();
    assert_eq!(s.list().len(), 2);
    let after = s.timeline(MacAddr(MAC)).expect("session after restart");
    assert_eq!(after, before, "the same timeline, event times included");
    assert_eq!(after.timeline[1].event.kind.name(), "tftp_failed");
    let denied = s.timeline(MacAddr(DENIED)).expect("refusal after restart");
    assert_eq!(denied, denied_before);
    assert_eq!(denied.timeline[0].event.kind.describe(), "by dhcp: denied");

    // The address handed out before the restart still names its machine.
    s.record(event(
        90_000,
        None,
        BootEventKind::HttpResponse {
            path: "/boot.ipxe".into(),
            status: 200,
            bytes: 10,
        },
    ));
    let t = s.timeline(MacAddr(MAC)).expect("session");
    assert_eq!(t.summary.events, 3);
    assert_eq!(s.stats().unattributed_events, 0);
}

#[test]
fn only_changes_are_written_and_evicted_sessions_are_deleted() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("state.redb");
    {
        let state =
            ControlState::open_with_sessions(&path, Metrics::new(), limits(2)).expect("open state");
        boot(&state);
        assert_eq!(state.save_sessions().expect("save"), 2);
        assert_eq!(state.save_sessions().expect("save"), 0, "nothing changed");
        // A third machine evicts the idlest (MAC): one row written, one deleted.
        state.sessions().record(event(
            3_000,
            Some([0x52, 0x54, 0, 0x12, 0, 3]),
            BootEventKind::Refused {
                by: RefusedBy::Xdp,
                reason: "denied_mac".into(),
            },
        ));
        assert_eq!(state.save_sessions().expect("save"), 2);
    }
    let state =
        ControlState::open_with_sessions(&path, Metrics::new(), limits(8)).expect("reopen state");
    let macs: Vec<u8> = state.sessions().list().iter().map(|s| s.mac.0[5]).collect();
    assert_eq!(macs, [3, 2], "newest first, the evicted machine gone");

    // A smaller limit at the next start keeps the most recent machines.
    drop(state);
    let state =
        ControlState::open_with_sessions(&path, Metrics::new(), limits(1)).expect("reopen state");
    let macs: Vec<u8> = state.sessions().list().iter().map(|s| s.mac.0[5]).collect();
    assert_eq!(macs, [3]);
}
