//! Boot events: what the data plane tells the control plane about each machine's boot, one
//! message or transfer at a time.
//!
//! Plain data, no IO and no clock: the worker that produced the event stamps it with the time it
//! already read for its protocol core (`at_unix_ms`) and hands it to an [`EventSink`]. The
//! control plane turns events into per-machine timelines and a live stream; JSON mapping lives
//! there, so this crate stays free of serde.
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::dhcp::MessageType;

/// One step of one machine's boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Known for DHCP (`chaddr`); TFTP and HTTP only see the client's address, so it is `None`
    /// there and the control plane maps the address back to the MAC its DHCP reply handed out.
    pub mac: Option<[u8; 6]>,
    /// Where the request came from (for DHCP: where the reply went).
    pub client: SocketAddr,
    pub kind: BootEventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEventKind {
    /// The server answered a DHCP request.
    DhcpReply {
        /// Offer, Ack or Nak.
        message: MessageType,
        /// The address handed out (`0.0.0.0` in a Nak).
        yiaddr: Ipv4Addr,
        /// Option 67 / `file` as sent; empty if none.
        boot_file: String,
    },
    /// A TFTP read request was accepted, with the negotiated options (RFC 2348, RFC 7440).
    TftpStarted {
        file: String,
        blksize: u16,
        windowsize: u16,
    },
    /// A TFTP transfer's last block was acknowledged.
    TftpDone {
        file: String,
        bytes: u64,
        retransmits: u32,
        duration_ms: u64,
    },
    /// A TFTP transfer ended without the whole file acknowledged.
    TftpFailed {
        file: String,
        /// Bytes acknowledged before it failed.
        bytes: u64,
        /// The drop reason code, as counted in metrics (e.g. `timeout`, `not_found`). Borrowed
        /// on the data plane; owned once read back from the state file.
        reason: Cow<'static, str>,
    },
    /// An HTTP boot response was sent (or its body ended).
    HttpResponse {
        path: String,
        status: u16,
        bytes: u64,
    },
    /// A diskless machine's node agent reported a step of assembling its root.
    NodeStep {
        step: NodeStep,
        /// What the agent said with it (`bytes=.. ms=..`, a failure's reason), escaped and
        /// bounded by the data plane: it comes from the network.
        detail: String,
    },
    /// A machine was refused: its DHCP got no answer, or the XDP program dropped its frames, for
    /// a policy reason (deny list, unknown machine, no pool). Sampled: at most one per machine and
    /// reason every [`RefusalSampler`] interval, so a looping client cannot flood the sessions.
    Refused {
        /// Which layer refused it.
        by: RefusedBy,
        /// The reason code, as counted in metrics (`denied`, `unknown_machine`, `no_pool`,
        /// `denied_mac`, ..).
        reason: Cow<'static, str>,
    },
}

/// The layer that refused a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusedBy {
    /// The userspace DHCP server (its boot-plan pre-filter or the protocol core).
    Dhcp,
    /// The XDP program, before the frame reached userspace.
    Xdp,
}

impl RefusedBy {
    pub const ALL: [Self; 2] = [Self::Dhcp, Self::Xdp];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Xdp => "xdp",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Decides which refusals become events: the first for a (MAC, reason) pair, then at most one
/// per `interval`. A client retries DHCP every few seconds for minutes; one event per interval
/// says it is still being refused without filling its session's event limit. At most
/// `per_second` refusals are reported in any second, whatever their MACs: a flood of made-up
/// MACs cannot push real machines' boots out of the session table, nor make this sampler's
/// work grow. Memory is bounded: past `capacity` pairs, entries older than `interval` are swept,
/// and if none are, the new pair is not reported (the counters still see every refusal).
#[derive(Debug, Clone)]
pub struct RefusalSampler {
    interval: std::time::Duration,
    capacity: usize,
    per_second: u32,
    /// Start of the current one-second window and the reports in it.
    window: Option<(std::time::Instant, u32)>,
    last: std::collections::HashMap<([u8; 6], &'static str), std::time::Instant>,
}

impl RefusalSampler {
    /// 10 s: a PXE ROM's DHCP retries (4, 8, 16, 32 s apart) each show at first, and a tight
    /// loop shows six times a minute. 4096 pairs: the session table's machine limit. 64 a
    /// second: a rack of refused machines shows whole, a flood shows as a trickle.
    pub fn new() -> Self {
        Self::with_limits(std::time::Duration::from_secs(10), 4096).per_second(64)
    }

    /// No limit per second until [`Self::per_second`] sets one.
    pub fn with_limits(interval: std::time::Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            per_second: u32::MAX,
            window: None,
            last: std::collections::HashMap::new(),
        }
    }

    pub fn per_second(self, per_second: u32) -> Self {
        Self { per_second, ..self }
    }

    /// Takes one report from this second's budget, if any is left.
    fn spend(&mut self, now: std::time::Instant) -> bool {
        let window = match self.window {
            Some((start, n))
                if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) =>
            {
                (start, n)
            }
            _ => (now, 0),
        };
        if window.1 >= self.per_second {
            self.window = Some(window);
            return false;
        }
        self.window = Some((window.0, window.1 + 1));
        true
    }

    /// Whether this refusal at `now` is to be reported.
    pub fn sample(&mut self, now: std::time::Instant, mac: [u8; 6], reason: &'static str) -> bool {
        let interval = self.interval;
        if let Some(at) = self.last.get(&(mac, reason)) {
            if now.saturating_duration_since(*at) < interval || !self.spend(now) {
                return false;
            }
            self.last.insert((mac, reason), now);
            return true;
        }
        if !self.spend(now) {
            return false;
        }
        if self.last.len() >= self.capacity {
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < interval);
            if self.last.len() >= self.capacity {
                return false;
            }
        }
        self.last.insert((mac, reason), now);
        true
    }
}

impl Default for RefusalSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// How many lines of one kind a worker writes in a second; lines over the budget are counted
/// and written as one summary. The DHCP reply line is the reason (issue 21): one INFO line per
/// reply, formatted and written on the worker's thread, made the appliance answer nothing at
/// 40,000 DISCOVERs a second, where with logging off it kept answering. A rack's boot still
/// shows machine by machine; a storm shows as a line a second.
#[derive(Debug, Clone)]
pub struct LogBudget {
    per_second: u32,
    /// Start of the current one-second window and the lines written in it.
    window: Option<(std::time::Instant, u32)>,
    /// Lines not written since the last summary.
    suppressed: u64,
    /// When the first of those was suppressed.
    since: Option<std::time::Instant>,
}

/// A summary of lines not written: `count` of them since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u64,
    pub since: std::time::Instant,
}

impl LogBudget {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: None,
            suppressed: 0,
            since: None,
        }
    }

    /// Whether a line may be written at `now`. A refused one is counted for [`Self::summary`].
    pub fn spend(&mut self, now: std::time::Instant) -> bool {
        let (start, n) = match self.window {
            Some((start, n))
                if now.saturating_duration_since(start) < std::time::Duration::from_secs(1) =>
            {
                (start, n)
            }
            _ => (now, 0),
        };
        if n >= self.per_second {
            self.window = Some((start, n));
            self.suppressed += 1;
            self.since.get_or_insert(now);
            return false;
        }
        self.window = Some((start, n + 1));
        true
    }

    /// The lines not written, once at least a second after the first of them; `None` when there
    /// is nothing to say yet. Call it on a timer so a storm's last second is told as well.
    pub fn summary(&mut self, now: std::time::Instant) -> Option<Suppressed> {
        let since = self.since?;
        if now.saturating_duration_since(since) < std::time::Duration::from_secs(1) {
            return None;
        }
        let count = std::mem::take(&mut self.suppressed);
        self.since = None;
        Some(Suppressed { count, since })
    }
}

/// The steps a node agent reports, in the order a diskless boot goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStep {
    /// The signed manifest was fetched and verified.
    RootManifest,
    /// Every chunk was fetched and verified (`bytes`, `ms`).
    RootChunks,
    /// The root is mounted read-only under a RAM overlay.
    RootMounted,
    /// The agent hands over to the image's init.
    SwitchRoot,
    /// Something failed; the agent retries (`reason`).
    RootFailed,
}

impl NodeStep {
    pub const ALL: [Self; 5] = [
        Self::RootManifest,
        Self::RootChunks,
        Self::RootMounted,
        Self::SwitchRoot,
        Self::RootFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RootManifest => "root_manifest",
            Self::RootChunks => "root_chunks",
            Self::RootMounted => "root_mounted",
            Self::SwitchRoot => "switch_root",
            Self::RootFailed => "root_failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Stage of a boot an event belongs to, in the order a machine normally goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BootStage {
    Dhcp,
    Tftp,
    Http,
    /// A diskless root being fetched, verified and started by the node agent.
    Root,
}

impl BootStage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Tftp => "tftp",
            Self::Http => "http",
            Self::Root => "root",
        }
    }
}

impl BootEventKind {
    /// Stable snake_case name, for the SSE `event:` field, logs and JSON tags.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::DhcpReply { .. } => "dhcp_reply",
            Self::TftpStarted { .. } => "tftp_started",
            Self::TftpDone { .. } => "tftp_done",
            Self::TftpFailed { .. } => "tftp_failed",
            Self::HttpResponse { .. } => "http_response",
            Self::NodeStep { step, .. } => step.as_str(),
            Self::Refused { .. } => "refused",
        }
    }

    pub const fn stage(&self) -> BootStage {
        match self {
            Self::DhcpReply { .. } | Self::Refused { .. } => BootStage::Dhcp,
            Self::TftpStarted { .. } | Self::TftpDone { .. } | Self::TftpFailed { .. } => {
                BootStage::Tftp
            }
            Self::HttpResponse { .. } => BootStage::Http,
            Self::NodeStep { .. } => BootStage::Root,
        }
    }

    /// Whether this event reports something going wrong: a DHCP Nak, a failed TFTP transfer, an
    /// HTTP status of 400 or more.
    pub fn is_failure(&self) -> bool {
        match self {
            Self::DhcpReply { message, .. } => *message == MessageType::Nak,
            Self::TftpFailed { .. } | Self::Refused { .. } => true,
            Self::HttpResponse { status, .. } => *status >= 400,
            Self::NodeStep { step, .. } => *step == NodeStep::RootFailed,
            Self::TftpStarted { .. } | Self::TftpDone { .. } => false,
        }
    }
}

impl BootEvent {
    /// The client's IPv4 address, which TFTP and HTTP events are matched on.
    pub fn client_ipv4(&self) -> Option<Ipv4Addr> {
        match self.client.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(ip) => ip.to_ipv4_mapped(),
        }
    }
}

/// Where the data plane reports boot events.
///
/// Workers call [`EventSink::record`] on their hot path, so an implementation must be cheap and
/// must never block on IO or on a slow reader: drop (and count) rather than wait.
pub trait EventSink: Send + Sync {
    fn record(&self, event: BootEvent);
}

/// Discards every event, for a data plane that runs without a control plane (benchmarks, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn record(&self, _event: BootEvent) {}
}

/// A shared sink as configuration carries it: cloneable, printable, and discarding by default.
#[derive(Clone)]
pub struct Events(pub std::sync::Arc<dyn EventSink>);

impl Events {
    pub fn record(&self, event: BootEvent) {
        self.0.record(event);
    }
}

impl Default for Events {
    fn default() -> Self {
        Self(std::sync::Arc::new(NoEvents))
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events(..)")
    }
}

impl<T: EventSink + ?Sized> EventSink for std::sync::Arc<T> {
    fn record(&self, event: BootEvent) {
        (**self).record(event);
    }
}

impl<T: EventSink + ?Sized> EventSink for &T {
    fn record(&self, event: BootEvent) {
        (**self).record(event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<BootEvent>>);

    impl EventSink for Collect {
        fn record(&self, event: BootEvent) {
            self.0.lock().expect("not poisoned").push(event);
        }
    }

    fn event(kind: BootEventKind) -> BootEvent {
        BootEvent {
            at_unix_ms: 1,
            mac: None,
            client: SocketAddr::from(([10, 0, 0, 5], 2070)),
            kind,
        }
    }

    #[test]
    fn names_stages_and_failures() {
        let nak = BootEventKind::DhcpReply {
            message: MessageType::Nak,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            boot_file: String::new(),
        };
        assert_eq!(nak.name(), "dhcp_reply");
        assert_eq!(nak.stage(), BootStage::Dhcp);
        assert!(nak.is_failure(), "a Nak is a failure");
        let done = BootEventKind::TftpDone {
            file: "ipxe.efi".into(),
            bytes: 1024,
            retransmits: 0,
            duration_ms: 3,
        };
        assert_eq!((done.name(), done.stage()), ("tftp_done", BootStage::Tftp));
        assert!(!done.is_failure());
        let not_found = BootEventKind::HttpResponse {
            path: "/x".into(),
            status: 404,
            bytes: 0,
        };
        assert!(not_found.is_failure(), "HTTP 404 is a failure");
        assert!(BootStage::Dhcp < BootStage::Tftp && BootStage::Tftp < BootStage::Http);
    }

    #[test]
    fn refusals_are_sampled_per_machine_and_reason() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut sampler = RefusalSampler::with_limits(s(10), 2);
        let (a, b, c) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3]);
        assert!(sampler.sample(t0, a, "denied"));
        assert!(
            !sampler.sample(t0 + s(3), a, "denied"),
            "within the interval"
        );
        assert!(sampler.sample(t0 + s(3), b, "denied"), "another machine");
        assert!(
            !sampler.sample(t0 + s(4), c, "denied"),
            "full, nothing old to sweep"
        );
        assert!(
            sampler.sample(t0 + s(11), a, "denied"),
            "the interval passed"
        );
        assert!(
            sampler.sample(t0 + s(14), c, "no_pool"),
            "b's entry was swept"
        );
        let refused = BootEventKind::Refused {
            by: RefusedBy::Dhcp,
            reason: "denied".into(),
        };
        assert_eq!(refused.name(), "refused");
        assert_eq!(refused.stage(), BootStage::Dhcp);
        assert!(refused.is_failure());
        assert_eq!(RefusedBy::from_name("xdp"), Some(RefusedBy::Xdp));

        // A flood of made-up MACs is reported at most `per_second` times a second.
        let mut sampler = RefusalSampler::with_limits(s(10), 4096).per_second(3);
        let reported = (0..100u8)
            .filter(|i| sampler.sample(t0, [2, 0, 0, 0, 1, *i], "denied"))
            .count();
        assert_eq!(reported, 3);
        assert!(
            sampler.sample(t0 + s(1), [2, 0, 0, 0, 2, 0], "denied"),
            "next second"
        );
    }

    #[test]
    fn mapped_ipv6_clients_have_an_ipv4_address() {
        let mut e = event(BootEventKind::TftpStarted {
            file: "a".into(),
            blksize: 1468,
            windowsize: 1,
        });
        assert_eq!(e.client_ipv4(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        e.client = "[::ffff:10.0.0.6]:69".parse().expect("socket address");
        assert_eq!(e.client_ipv4(), Some(Ipv4Addr::new(10, 0, 0, 6)));
    }

    #[test]
    fn sinks_compose_through_arc_and_references() {
        let collect = Arc::new(Collect::default());
        let as_dyn: Arc<dyn EventSink> = collect.clone();
        as_dyn.record(event(BootEventKind::HttpResponse {
            path: "/boot.ipxe".into(),
            status: 200,
            bytes: 10,
        }));
        fn feed(sink: impl EventSink, e: BootEvent) {
            sink.record(e);
        }
        feed(
            &*collect,
            event(BootEventKind::TftpFailed {
                file: "a".into(),
                bytes: 0,
                reason: "timeout".into(),
            }),
        );
        NoEvents.record(event(BootEventKind::TftpStarted {
            file: "a".into(),
            blksize: 512,
            windowsize: 1,
        }));
        assert_eq!(collect.0.lock().expect("not poisoned").len(), 2);
    }

    #[test]
    fn a_log_budget_writes_a_burst_then_one_summary() {
        let t0 = std::time::Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        let mut budget = LogBudget::new(3);
        let written = (0..10).filter(|i| budget.spend(ms(*i))).count();
        assert_eq!(written, 3, "three lines in the first second");
        assert_eq!(
            budget.summary(ms(500)),
            None,
            "not a second since the first suppressed"
        );
        assert_eq!(
            budget.summary(ms(1003)),
            Some(Suppressed {
                count: 7,
                since: ms(3)
            })
        );
        assert_eq!(budget.summary(ms(5000)), None, "told once");
        assert!(budget.spend(ms(1100)), "a new second, a new budget");
    }
}
