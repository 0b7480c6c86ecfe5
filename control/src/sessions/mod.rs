//! Live boot sessions: the data plane's [`BootEvent`]s grouped per machine into the timeline an
//! operator reads to see where a boot's seconds went, plus a broadcast of every event for
//! `/api/v1/events` and `stampede ctl watch`.
//!
//! Sessions are keyed by MAC. DHCP replies carry it; TFTP and HTTP requests only carry the
//! client's address, which is mapped back through the `yiaddr` of the last DHCP reply sent to
//! that MAC. An event from an address no reply handed out is not attributed to a session (it is
//! still broadcast, and counted).
//!
//! Memory is bounded: at most [`SessionLimits::max_sessions`] machines (the one idle longest is
//! evicted) and [`SessionLimits::max_events`] events per session (the oldest are dropped); both
//! evictions are counters.
//!
//! Sessions survive a restart: the appliance writes the sessions that changed to the state file
//! every [`SAVE_INTERVAL`] and at a clean stop, off the data plane's path
//! ([`crate::ControlState::persist_sessions`]), and [`crate::ControlState::open`] loads them
//! back, events with their original times. A crash loses at most the last interval's events.
//!
//! Here the table and the event stream; one machine's session in `session`, the API form of an
//! event ([`EventView`]) in `view`, and what a session says about a boot ([`SessionTimeline`])
//! in `timeline`.
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stampede_proto::dhcp::MessageType;
use stampede_proto::events::{BootEvent, BootEventKind, BootStage, EventSink};
use tokio::sync::broadcast;

use crate::metrics::{Counter, Metrics};
use crate::model::MacAddr;

mod session;
mod timeline;
mod view;

pub(crate) use session::StoredSession;
use session::{Session, between_chain_links};
pub use timeline::{
    SessionOutcome, SessionSummary, SessionTimeline, StageGap, StageSpan, TimelineEntry,
};
use view::event_from_view;
pub use view::{EventKindView, EventView};

/// How often changed sessions are written to the state file. Five seconds: a storm of a
/// thousand machines changes every session in an interval, and one transaction of a few
/// megabytes every five seconds stays well below the lease commits' share of the disk; what a
/// crash loses (at most five seconds of events) is what an operator would re-read in `ctl watch`.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// How much boot history the control plane keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Machines with a session. 4096 covers a rack row re-imaging at once; a session is a few
    /// kilobytes, so the whole table stays in the tens of megabytes at worst.
    pub max_sessions: usize,
    /// Events kept per session. 256 holds a full PXE → iPXE → kernel + initrd boot with room for
    /// retries; a machine looping on failures keeps its newest events.
    pub max_events: usize,
    /// Events buffered for each live subscriber. A subscriber further behind than this misses
    /// events (and is told how many) instead of slowing the data plane down.
    pub live_buffer: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 4096,
            max_events: 256,
            live_buffer: 1024,
        }
    }
}

/// Every session and the live event stream; the data plane's [`EventSink`].
#[derive(Debug)]
pub struct BootSessions {
    limits: SessionLimits,
    table: Mutex<SessionTable>,
    live: broadcast::Sender<Arc<BootEvent>>,
    counters: SessionCounters,
    /// Held by a save from taking the changes to committing them, so two saves (the saver
    /// thread's and a backup's) cannot commit a session's older state after its newer one.
    saving: Mutex<()>,
}

#[derive(Debug)]
struct SessionCounters {
    events: Counter,
    unattributed: Counter,
    evicted_sessions: Counter,
    evicted_events: Counter,
    lagged: Counter,
}

#[derive(Debug, Default)]
struct SessionTable {
    by_mac: HashMap<MacAddr, Session>,
    /// Address → MAC, from DHCP replies' `yiaddr`. Only addresses of live sessions are kept.
    ip_to_mac: HashMap<Ipv4Addr, MacAddr>,
    /// Bumped on every event; the session with the smallest `touched` is the one idle longest.
    clock: u64,
    /// Sessions changed since the last save, and sessions evicted since then (to delete).
    dirty: HashSet<MacAddr>,
    removed: HashSet<MacAddr>,
}

impl SessionTable {
    /// Drops `ip → mac`, unless the address has since been handed to another machine.
    fn forget_ip(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        if self.ip_to_mac.get(&ip) == Some(&mac) {
            self.ip_to_mac.remove(&ip);
        }
    }
}

fn counter(metrics: &Metrics, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
    metrics.counter(name, help, labels).unwrap_or_else(|e| {
        tracing::warn!(error = %e, name, "boot session counter not exported");
        Metrics::new()
            .counter(name, help, labels)
            .expect("a fresh registry accepts a name the code spells")
    })
}

impl BootSessions {
    /// Sessions whose counters are exported through `metrics`.
    pub fn new(limits: SessionLimits, metrics: &Metrics) -> Self {
        let (live, _) = broadcast::channel(limits.live_buffer.max(1));
        let evicted = "stampede_boot_session_evictions_total";
        let evicted_help = "Boot history dropped to stay within the session limits";
        Self {
            limits,
            table: Mutex::new(SessionTable::default()),
            saving: Mutex::new(()),
            live,
            counters: SessionCounters {
                events: counter(
                    metrics,
                    "stampede_boot_events_total",
                    "Boot events reported by the data plane",
                    &[],
                ),
                unattributed: counter(
                    metrics,
                    "stampede_boot_events_unattributed_total",
                    "Boot events from an address no DHCP reply handed out",
                    &[],
                ),
                evicted_sessions: counter(metrics, evicted, evicted_help, &[("what", "session")]),
                evicted_events: counter(metrics, evicted, evicted_help, &[("what", "event")]),
                lagged: counter(
                    metrics,
                    "stampede_boot_events_missed_by_subscribers_total",
                    "Live events a slow subscriber missed",
                    &[],
                ),
            },
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// A receiver of every event recorded from now on (with its MAC resolved when known).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BootEvent>> {
        self.live.subscribe()
    }

    /// Live subscribers right now (tests wait for a watcher to connect).
    pub fn subscribers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Counts events a subscriber missed because it fell behind.
    pub fn note_missed(&self, n: u64) {
        self.counters.lagged.add(n);
    }

    pub fn stats(&self) -> SessionStats {
        let sessions = self.lock().by_mac.len();
        SessionStats {
            sessions,
            events: self.counters.events.get(),
            unattributed_events: self.counters.unattributed.get(),
            evicted_sessions: self.counters.evicted_sessions.get(),
            evicted_events: self.counters.evicted_events.get(),
        }
    }

    /// Every session, most recently active first.
    pub fn list(&self) -> Vec<SessionSummary> {
        let table = self.lock();
        let mut sessions: Vec<_> = table.by_mac.iter().collect();
        sessions.sort_by_key(|(_, s)| std::cmp::Reverse(s.touched));
        sessions
            .into_iter()
            .map(|(mac, s)| timeline::summarize(*mac, s))
            .collect()
    }

    /// One machine's current boot, event by event.
    pub fn timeline(&self, mac: MacAddr) -> Option<SessionTimeline> {
        let table = self.lock();
        let session = table.by_mac.get(&mac)?;
        Some(timeline::timeline(mac, session))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A panic while holding the lock leaves at worst one half-inserted event; keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files the event under its machine; returns it with the MAC filled in when known.
    fn file(&self, mut event: BootEvent) -> Arc<BootEvent> {
        let mut table = self.lock();
        let table = &mut *table;
        let mac = match event.mac {
            Some(mac) => Some(MacAddr(mac)),
            None => event
                .client_ipv4()
                .and_then(|ip| table.ip_to_mac.get(&ip).copied()),
        };
        let Some(mac) = mac else {
            self.counters.unattributed.inc();
            return Arc::new(event);
        };
        event.mac = Some(mac.0);
        let event = Arc::new(event);
        table.clock += 1;
        let touched = table.clock;
        if !table.by_mac.contains_key(&mac)
            && table.by_mac.len() >= self.limits.max_sessions
            && let Some((&idle, _)) = table.by_mac.iter().min_by_key(|(_, s)| s.touched)
        {
            let evicted = table.by_mac.remove(&idle);
            if let Some(ip) = evicted.and_then(|s| s.ip) {
                table.forget_ip(ip, idle);
            }
            table.dirty.remove(&idle);
            table.removed.insert(idle);
            self.counters.evicted_sessions.inc();
        }
        let session = table
            .by_mac
            .entry(mac)
            .or_insert_with(|| Session::new(event.at_unix_ms));
        session.touched = touched;
        // (previous address, new address) once a DHCP reply hands one out.
        let mut readdressed = None;
        if let BootEventKind::DhcpReply {
            message, yiaddr, ..
        } = &event.kind
        {
            // An offer without a boot file went to a client that is not firmware or a loader:
            // the booted system's own DHCP (a diskless node's agent, the OS), which continues
            // the boot it belongs to.
            let firmware_offer = match &event.kind {
                BootEventKind::DhcpReply { boot_file, .. } => !boot_file.is_empty(),
                _ => false,
            };
            let new_boot = *message == MessageType::Offer
                && firmware_offer
                && session
                    .events
                    .iter()
                    .any(|e| e.kind.stage() != BootStage::Dhcp)
                && !between_chain_links(session);
            if new_boot {
                session.restart(event.at_unix_ms);
            }
            if *message != MessageType::Nak && !yiaddr.is_unspecified() {
                readdressed = Some((session.ip.replace(*yiaddr), *yiaddr));
            }
        }
        let dropped = session.insert(event.clone(), self.limits.max_events);
        self.counters.evicted_events.add(dropped);
        if let Some((old, new)) = readdressed {
            if let Some(old) = old.filter(|old| *old != new) {
                table.forget_ip(old, mac);
            }
            table.ip_to_mac.insert(new, mac);
        }
        table.dirty.insert(mac);
        table.removed.remove(&mac);
        event
    }

    /// Held while a save takes and commits changes (see [`Self::take_changes`]).
    pub(crate) fn saving(&self) -> std::sync::MutexGuard<'_, ()> {
        self.saving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sessions changed and evicted since the last call, for the state file. The lock is
    /// held only to clone the events' `Arc`s; the JSON form is built after it is released.
    pub(crate) fn take_changes(&self) -> SessionChanges {
        let (changed, removed) = {
            let mut table = self.lock();
            let table = &mut *table;
            let changed: Vec<_> = table
                .dirty
                .drain()
                .filter_map(|mac| {
                    let s = table.by_mac.get(&mac)?;
                    Some((
                        mac,
                        s.stored_header(),
                        s.events.iter().cloned().collect::<Vec<_>>(),
                    ))
                })
                .collect();
            (changed, table.removed.drain().collect())
        };
        let changed = changed
            .into_iter()
            .map(|(mac, mut stored, events)| {
                stored.events = events.iter().map(|e| EventView::from(&**e)).collect();
                (mac, stored)
            })
            .collect();
        SessionChanges { changed, removed }
    }

    /// Puts changes a failed save did not write back, so the next save tries again (unless the
    /// session changed or went meanwhile, which the table already knows).
    pub(crate) fn requeue(&self, changes: &SessionChanges) {
        let mut table = self.lock();
        for (mac, _) in &changes.changed {
            if table.by_mac.contains_key(mac) {
                table.dirty.insert(*mac);
            }
        }
        for mac in &changes.removed {
            if !table.by_mac.contains_key(mac) {
                table.removed.insert(*mac);
            }
        }
    }

    /// Loads sessions saved by an earlier run, within this run's limits: the machines active
    /// most recently and each one's newest events. Sessions that do not fit are deleted from the
    /// file by the next save. Returns how many were loaded.
    pub(crate) fn restore(&self, mut stored: Vec<(MacAddr, StoredSession)>) -> usize {
        stored.sort_by_key(|(_, s)| std::cmp::Reverse(s.touched));
        let mut table = self.lock();
        let table = &mut *table;
        let mut loaded = 0;
        for (i, (mac, s)) in stored.into_iter().enumerate() {
            if i >= self.limits.max_sessions || table.by_mac.contains_key(&mac) {
                table.removed.insert(mac);
                continue;
            }
            let mut events: VecDeque<Arc<BootEvent>> = s
                .events
                .iter()
                .filter_map(|v| event_from_view(mac, v))
                .map(Arc::new)
                .collect();
            let mut dropped_events = s.dropped_events;
            while events.len() > self.limits.max_events.max(1) {
                events.pop_front();
                dropped_events += 1;
            }
            if let Some(ip) = s.ip {
                table.ip_to_mac.insert(ip, mac);
            }
            table.clock = table.clock.max(s.touched);
            table.by_mac.insert(
                mac,
                Session {
                    ip: s.ip,
                    boot: s.boot,
                    first_unix_ms: s.first_unix_ms,
                    last_unix_ms: s.last_unix_ms,
                    events,
                    dropped_events,
                    touched: s.touched,
                },
            );
            loaded += 1;
        }
        loaded
    }
}

/// What changed since the last save.
#[derive(Debug, Default)]
pub(crate) struct SessionChanges {
    pub(crate) changed: Vec<(MacAddr, StoredSession)>,
    pub(crate) removed: Vec<MacAddr>,
}

impl SessionChanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

impl EventSink for BootSessions {
    /// One short critical section and a non-blocking broadcast; never waits on a reader.
    fn record(&self, event: BootEvent) {
        self.counters.events.inc();
        let event = self.file(event);
        // No subscriber is not an error: nobody is watching.
        let _ = self.live.send(event);
    }
}

/// Totals for `/api/v1/sessions` consumers and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    pub sessions: usize,
    pub events: u64,
    pub unattributed_events: u64,
    pub evicted_sessions: u64,
    pub evicted_events: u64,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use stampede_proto::events::NodeStep;

    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

    fn dhcp(at: u64, mac: [u8; 6], message: MessageType, ip: Ipv4Addr) -> BootEvent {
        BootEvent {
            at_unix_ms: at,
            mac: Some(mac),
            client: SocketAddr::from((ip, 68)),
            kind: BootEventKind::DhcpReply {
                message,
                yiaddr: ip,
                boot_file: "ipxe.efi".into(),
            },
        }
    }

    /// A 200 for `path` to [`IP`], 100 bytes.
    fn http_ok(at: u64, path: &str) -> BootEvent {
        from_ip(
            at,
            IP,
            BootEventKind::HttpResponse {
                path: path.into(),
                status: 200,
                bytes: 100,
            },
        )
    }

    fn from_ip(at: u64, ip: Ipv4Addr, kind: BootEventKind) -> BootEvent {
        BootEvent {
            at_unix_ms: at,
            mac: None,
            client: SocketAddr::from((ip, 2070)),
            kind,
        }
    }

    fn started(file: &str) -> BootEventKind {
        BootEventKind::TftpStarted {
            file: file.into(),
            blksize: 1468,
            windowsize: 4,
        }
    }

    fn done(file: &str, bytes: u64) -> BootEventKind {
        BootEventKind::TftpDone {
            file: file.into(),
            bytes,
            retransmits: 2,
            duration_ms: 40,
        }
    }

    fn sessions(max_sessions: usize, max_events: usize) -> BootSessions {
        BootSessions::new(
            SessionLimits {
                max_sessions,
                max_events,
                live_buffer: 16,
            },
            &Metrics::new(),
        )
    }

    #[test]
    fn a_full_boot_reads_as_stages_with_gaps() {
        let s = sessions(8, 64);
        s.record(dhcp(1_000, MAC, MessageType::Offer, IP));
        s.record(dhcp(1_010, MAC, MessageType::Ack, IP));
        s.record(from_ip(1_500, IP, started("ipxe.efi")));
        s.record(from_ip(1_540, IP, done("ipxe.efi", 1_000_000)));
        s.record(from_ip(
            4_540,
            IP,
            BootEventKind::HttpResponse {
                path: "/boot.ipxe".into(),
                status: 200,
                bytes: 300,
            },
        ));
        let t = s.timeline(MacAddr(MAC)).expect("session exists");
        assert_eq!(t.summary.ip, Some(IP));
        assert_eq!(t.summary.events, 5);
        assert_eq!(t.summary.duration_ms, 3_540);
        assert_eq!(t.summary.outcome, SessionOutcome::Ok);
        let stages: Vec<_> = t.summary.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["dhcp", "tftp", "http"]);
        assert_eq!(t.summary.stages[1].bytes, 1_000_000);
        assert_eq!(t.summary.stages[1].retransmits, 2);
        let gaps: Vec<_> = t.gaps.iter().map(|g| g.gap_ms).collect();
        assert_eq!(gaps, [490, 3_000], "DHCP→TFTP, TFTP→HTTP");
        let wait = t.longest_wait.expect("a longest wait");
        assert_eq!(wait.since_prev_ms, 3_000);
        assert_eq!(wait.event.kind.name(), "http_response");
        assert!(
            t.timeline.iter().all(|e| e.event.mac == Some(MacAddr(MAC))),
            "TFTP and HTTP events are attributed through the yiaddr"
        );
    }

    #[test]
    fn out_of_order_events_are_placed_by_time() {
        let s = sessions(8, 64);
        s.record(dhcp(1_000, MAC, MessageType::Ack, IP));
        s.record(from_ip(1_200, IP, done("a", 10)));
        s.record(from_ip(1_100, IP, started("a")));
        let t = s.timeline(MacAddr(MAC)).expect("session");
        let kinds: Vec<_> = t.timeline.iter().map(|e| e.event.kind.name()).collect();
        assert_eq!(kinds, ["dhcp_reply", "tftp_started", "tftp_done"]);
    }

    #[test]
    fn unknown_addresses_are_counted_not_filed() {
        let s = sessions(8, 64);
        let mut live = s.subscribe();
        s.record(from_ip(1, Ipv4Addr::new(10, 9, 9, 9), started("x")));
        assert!(s.list().is_empty());
        assert_eq!(s.stats().unattributed_events, 1);
        let e = live.try_recv().expect("still broadcast");
        assert_eq!(e.mac, None);
    }

    #[test]
    fn limits_evict_the_idlest_session_and_the_oldest_events() {
        let s = sessions(2, 3);
        for i in 0..3u8 {
            s.record(dhcp(
                u64::from(i),
                [2, 0, 0, 0, 0, i],
                MessageType::Ack,
                Ipv4Addr::new(10, 0, 0, i),
            ));
        }
        let macs: Vec<_> = s.list().iter().map(|x| x.mac.0[5]).collect();
        assert_eq!(macs, [2, 1], "newest first; machine 0 was evicted");
        assert_eq!(s.stats().evicted_sessions, 1);
        // The evicted machine's address no longer maps to it.
        s.record(from_ip(10, Ipv4Addr::new(10, 0, 0, 0), started("x")));
        assert_eq!(s.stats().unattributed_events, 1);

        let ip = Ipv4Addr::new(10, 0, 0, 2);
        for at in 10..15 {
            s.record(from_ip(at, ip, started("f")));
        }
        let t = s.timeline(MacAddr([2, 0, 0, 0, 0, 2])).expect("session");
        assert_eq!(t.summary.events, 3);
        assert_eq!(t.summary.dropped_events, 3);
        assert_eq!(
            t.summary.first_unix_ms, 2,
            "the boot began before the kept events"
        );
        assert_eq!(t.timeline[0].event.at_unix_ms, 12);
        assert_eq!(s.stats().evicted_events, 3);
    }

    #[test]
    fn an_offer_after_downloads_starts_a_new_boot() {
        let s = sessions(8, 64);
        s.record(dhcp(1_000, MAC, MessageType::Offer, IP));
        s.record(from_ip(1_100, IP, started("ipxe.efi")));
        s.record(from_ip(
            1_200,
            IP,
            BootEventKind::TftpFailed {
                file: "ipxe.efi".into(),
                bytes: 512,
                reason: "timeout".into(),
            },
        ));
        assert_eq!(s.list()[0].outcome, SessionOutcome::Failed);
        s.record(dhcp(9_000, MAC, MessageType::Offer, IP));
        s.record(from_ip(9_100, IP, started("ipxe.efi")));
        let t = s.timeline(MacAddr(MAC)).expect("session");
        assert_eq!(t.summary.boot, 2);
        assert_eq!(t.summary.first_unix_ms, 9_000);
        assert_eq!(t.summary.events, 2);
        assert_eq!(t.summary.outcome, SessionOutcome::Transferring);
    }

    /// OVMF's PXE client downloads `snponly.efi` (after a size query it aborts), iPXE asks DHCP
    /// again and fetches its script, kernel and initrd: one boot, with the gap between the
    /// download and iPXE's DHCP; the machine's next power-on is the next boot.
    #[test]
    fn a_loader_s_own_dhcp_continues_the_boot_and_a_reboot_starts_the_next() {
        let s = sessions(8, 64);
        let reply = |at: u64, message: MessageType, boot_file: &str| BootEvent {
            kind: BootEventKind::DhcpReply {
                message,
                yiaddr: IP,
                boot_file: boot_file.into(),
            },
            ..dhcp(at, MAC, message, IP)
        };
        let script = "http://198.18.0.1:8080/boot.ipxe?mac=52-54-00-00-00-01";
        s.record(reply(4_000, MessageType::Offer, "snponly.efi"));
        s.record(reply(7_800, MessageType::Ack, "snponly.efi"));
        s.record(from_ip(7_810, IP, started("snponly.efi")));
        s.record(from_ip(
            7_811,
            IP,
            BootEventKind::TftpFailed {
                file: "snponly.efi".into(),
                bytes: 0,
                reason: "client_error".into(),
            },
        ));
        s.record(from_ip(7_820, IP, started("snponly.efi")));
        s.record(from_ip(7_840, IP, done("snponly.efi", 173_792)));
        s.record(reply(9_840, MessageType::Offer, script));
        s.record(reply(9_860, MessageType::Ack, script));
        s.record(http_ok(9_900, "/boot.ipxe?mac=52-54-00-00-00-01"));
        s.record(http_ok(10_300, "/files/initrd.gz"));
        let t = s.timeline(MacAddr(MAC)).expect("session");
        assert_eq!(t.summary.boot, 1);
        assert_eq!(t.summary.first_unix_ms, 4_000);
        assert_eq!(t.summary.events, 10);
        let gaps: Vec<_> = t
            .gaps
            .iter()
            .map(|g| (g.from.as_str(), g.to.as_str(), g.gap_ms))
            .collect();
        assert_eq!(gaps, [("dhcp", "tftp", 0), ("tftp", "http", 2_060)]);
        // The same machine powered on again.
        s.record(reply(60_000, MessageType::Offer, "snponly.efi"));
        let t = s.timeline(MacAddr(MAC)).expect("session");
        assert_eq!((t.summary.boot, t.summary.events), (2, 1));

        // UEFI HTTP Boot: the loader by URL, then iPXE's DHCP; still one boot.
        let s = sessions(8, 64);
        s.record(reply(
            1_000,
            MessageType::Offer,
            "http://198.18.0.1:8080/snponly.efi",
        ));
        s.record(http_ok(1_100, "/snponly.efi"));
        s.record(reply(3_000, MessageType::Offer, script));
        let t = s.timeline(MacAddr(MAC)).expect("session");
        assert_eq!((t.summary.boot, t.summary.events), (1, 3));
    }

    /// A diskless machine: firmware and iPXE fetch the kernel and node initramfs, the node
    /// agent asks DHCP again (no boot file in its offer) and reports its root's steps: one
    /// boot, with a `root` stage.
    #[test]
    fn a_diskless_node_s_own_dhcp_and_steps_continue_its_boot() {
        let s = sessions(8, 64);
        let step = |at: u64, step: NodeStep, detail: &str| {
            from_ip(
                at,
                IP,
                BootEventKind::NodeStep {
                    step,
                    detail: detail.into(),
                },
            )
        };
        s.record(dhcp(1_000, MAC, MessageType::Offer, IP));
        s.record(http_ok(2_000, "/files/vmlinuz"));
        s.record(http_ok(3_000, "/files/node-initrd.img"));
        let agent_offer = BootEvent {
            kind: BootEventKind::DhcpReply {
                message: MessageType::Offer,
                yiaddr: IP,
                boot_file: String::new(),
            },
            ..dhcp(6_000, MAC, MessageType::Offer, IP)
        };
        s.record(agent_offer);
        s.record(step(
            6_500,
            NodeStep::RootManifest,
            "chunks=3 bytes=3000000",
        ));
        s.record(step(8_000, NodeStep::RootChunks, "bytes=3000000 ms=1400"));
        s.record(step(8_100, NodeStep::RootMounted, ""));
        s.record(step(8_200, NodeStep::SwitchRoot, "init=/sbin/init"));
        let t = s.timeline(MacAddr(MAC)).expect("session");
        assert_eq!(t.summary.boot, 1, "the agent's DHCP is part of the boot");
        assert_eq!(t.summary.outcome, SessionOutcome::Ok);
        let stages: Vec<&str> = t.summary.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["dhcp", "http", "root"]);
        let names: Vec<&str> = t.timeline.iter().map(|e| e.event.kind.name()).collect();
        assert_eq!(
            &names[names.len() - 4..],
            [
                "root_manifest",
                "root_chunks",
                "root_mounted",
                "switch_root"
            ]
        );
        let json =
            serde_json::to_string(&t.timeline.last().expect("an event").event).expect("json");
        assert!(json.contains("\"kind\":\"switch_root\""), "{json}");
        assert!(json.contains("\"detail\":\"init=/sbin/init\""), "{json}");
        // A failure shows as one.
        s.record(step(9_000, NodeStep::RootFailed, "reason=chunk"));
        assert_eq!(s.list()[0].outcome, SessionOutcome::Failed);
        // The machine's next power-on (firmware: an offer with a boot file) is the next boot.
        s.record(dhcp(60_000, MAC, MessageType::Offer, IP));
        assert_eq!(s.timeline(MacAddr(MAC)).expect("session").summary.boot, 2);
    }

    #[test]
    fn json_names_the_kind_and_round_trips() {
        let e = from_ip(5, IP, done("ipxe.efi", 99));
        let v = EventView::from(&e);
        let json = serde_json::to_value(&v).expect("serialize");
        assert_eq!(json["kind"], "tftp_done");
        assert_eq!(json["bytes"], 99);
        assert_eq!(json["client"], "10.0.0.50:2070");
        let back: EventView = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, v);
    }
}
