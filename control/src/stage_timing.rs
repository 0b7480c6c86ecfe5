//! How long boots and their stages take, as Prometheus histograms, measured from the boot events
//! the sessions broadcast (MACs resolved). It runs on the control plane's runtime from the live
//! stream, so the data plane's workers pay nothing for it.
//!
//! - DHCP exchange: a machine's Offer to its Ack. The Offer goes out as the Discover is read, so
//!   this is the client's Discover → Ack, less one reply's latency.
//! - TFTP transfer: the duration a completed transfer reports.
//! - Whole boot: a machine's first event to its last, observed once the machine has been quiet
//!   for [`BootTimings::settle`] or its node agent switched root. A chain of loaders (firmware
//!   PXE → iPXE → kernel) is one boot; a machine that starts again within the settle time
//!   continues the boot it was in.
//!
//! HTTP response times are measured by the HTTP workers themselves (the events carry no
//! duration) and published with the data plane's counters.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stampede_proto::dhcp::MessageType;
use stampede_proto::events::{BootEvent, BootEventKind, NodeStep};
use tokio::sync::broadcast;

use crate::metrics::{Histogram, Metrics};
use crate::model::MacAddr;

/// Bucket bounds in seconds for a DHCP exchange: a local server answers in milliseconds; held
/// Acks wait for the lease commit; seconds mean a client retrying.
pub const DHCP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds in seconds for a TFTP transfer: a loader of a few hundred kilobytes takes tens
/// of milliseconds on a quiet link; a storm stretches it to seconds.
pub const TFTP_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds in seconds for a whole boot, firmware DHCP to the last request: seconds for a
/// small image, minutes for a large one under a storm.
pub const BOOT_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Quiet time after which a machine's boot is taken as over. 20 s outlasts the gaps inside a
/// boot (iPXE's start-up, a kernel unpacking its initrd before the OS's own DHCP) on lab VMs.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(20);

/// Machines with a boot in progress that are followed at once. A flood of new MACs (each
/// offered an address) beyond this is not timed rather than growing the table without bound;
/// 16384 is four times the sessions' own limit.
pub const MAX_MACHINES: usize = 16_384;

/// The histograms and what each machine's boot has done so far.
#[derive(Debug)]
pub struct BootTimings {
    settle_ms: u64,
    dhcp: Histogram,
    tftp: Histogram,
    /// By outcome: `ok` unless the boot's last event was a failure.
    boot_ok: Histogram,
    boot_failed: Histogram,
    machines: HashMap<MacAddr, BootInProgress>,
}

#[derive(Debug, Clone, Copy)]
struct BootInProgress {
    first_ms: u64,
    last_ms: u64,
    /// When the Offer of an exchange not yet acknowledged went out.
    offered_ms: Option<u64>,
    failed: bool,
}

fn histogram(
    metrics: &Metrics,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    buckets: &[f64],
) -> Histogram {
    metrics
        .histogram(name, help, labels, buckets)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, name, "boot timing histogram not exported");
            Metrics::new()
                .histogram(name, help, labels, buckets)
                .expect("a fresh registry accepts a name the code spells")
        })
}

impl BootTimings {
    /// Histograms registered in `metrics`; a boot ends after `settle` without events.
    pub fn new(metrics: &Metrics, settle: Duration) -> Self {
        let boot = "stampede_boot_duration_seconds";
        let boot_help = "Whole boots, a machine's first DHCP reply to its last request, by outcome";
        Self {
            settle_ms: settle.as_millis() as u64,
            dhcp: histogram(
                metrics,
                "stampede_dhcp_exchange_duration_seconds",
                "DHCP exchanges, a machine's Offer to its Ack",
                &[],
                DHCP_BUCKETS,
            ),
            tftp: histogram(
                metrics,
                "stampede_tftp_transfer_duration_seconds",
                "Completed TFTP transfers, read request to last acknowledgement",
                &[],
                TFTP_BUCKETS,
            ),
            boot_ok: histogram(metrics, boot, boot_help, &[("outcome", "ok")], BOOT_BUCKETS),
            boot_failed: histogram(
                metrics,
                boot,
                boot_help,
                &[("outcome", "failed")],
                BOOT_BUCKETS,
            ),
            machines: HashMap::new(),
        }
    }

    /// Quiet time after which a boot is taken as over.
    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }

    /// Takes one event (its MAC resolved; events without one are not a machine's).
    pub fn observe(&mut self, event: &BootEvent) {
        let Some(mac) = event.mac.map(MacAddr) else {
            return;
        };
        let at = event.at_unix_ms;
        if self.machines.len() >= MAX_MACHINES && !self.machines.contains_key(&mac) {
            return;
        }
        let boot = self.machines.entry(mac).or_insert(BootInProgress {
            first_ms: at,
            last_ms: at,
            offered_ms: None,
            failed: false,
        });
        boot.first_ms = boot.first_ms.min(at);
        boot.last_ms = boot.last_ms.max(at);
        boot.failed = event.kind.is_failure();
        match &event.kind {
            BootEventKind::DhcpReply { message, .. } => match *message {
                MessageType::Offer => boot.offered_ms = Some(at),
                MessageType::Ack => {
                    if let Some(offered) = boot.offered_ms.take() {
                        self.dhcp.observe(seconds(at.saturating_sub(offered)));
                    }
                }
                _ => boot.offered_ms = None,
            },
            BootEventKind::TftpDone { duration_ms, .. } => self.tftp.observe(seconds(*duration_ms)),
            BootEventKind::NodeStep {
                step: NodeStep::SwitchRoot,
                ..
            } => {
                // The node agent's last word: the boot is done.
                if let Some(done) = self.machines.remove(&mac) {
                    self.finish(done);
                }
            }
            _ => {}
        }
    }

    /// Ends the boots quiet since `now_unix_ms - settle`; returns how many ended.
    pub fn sweep(&mut self, now_unix_ms: u64) -> usize {
        let settle = self.settle_ms;
        let mut ended = Vec::new();
        self.machines.retain(|_, boot| {
            let quiet = now_unix_ms.saturating_sub(boot.last_ms) >= settle;
            if quiet {
                ended.push(*boot);
            }
            !quiet
        });
        let n = ended.len();
        for boot in ended {
            self.finish(boot);
        }
        n
    }

    fn finish(&self, boot: BootInProgress) {
        let took = seconds(boot.last_ms.saturating_sub(boot.first_ms));
        if boot.failed {
            self.boot_failed.observe(took);
        } else {
            self.boot_ok.observe(took);
        }
    }

    /// Follows `events` until the sender is gone, sweeping for ended boots once a second.
    pub async fn run(mut self, mut events: broadcast::Receiver<Arc<BootEvent>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => self.observe(&event),
                    // Missed events leave some durations unmeasured; the sessions count them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    self.sweep(unix_ms_now());
                }
            }
        }
    }
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    fn event(at_unix_ms: u64, kind: BootEventKind) -> BootEvent {
        BootEvent {
            at_unix_ms,
            mac: Some(MAC),
            client: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 10), 68)),
            kind,
        }
    }

    fn reply(message: MessageType) -> BootEventKind {
        BootEventKind::DhcpReply {
            message,
            yiaddr: Ipv4Addr::new(10, 0, 0, 10),
            boot_file: "undionly.kpxe".into(),
        }
    }

    #[test]
    fn stage_and_boot_durations_become_histograms() {
        let metrics = Metrics::new();
        let mut timings = BootTimings::new(&metrics, Duration::from_secs(20));
        timings.observe(&event(1_000, reply(MessageType::Offer)));
        timings.observe(&event(1_004, reply(MessageType::Ack)));
        // A renewal's Ack without an Offer is not an exchange.
        timings.observe(&event(1_500, reply(MessageType::Ack)));
        timings.observe(&event(
            1_600,
            BootEventKind::TftpDone {
                file: "undionly.kpxe".into(),
                bytes: 70_000,
                retransmits: 0,
                duration_ms: 80,
            },
        ));
        timings.observe(&event(
            4_000,
            BootEventKind::HttpResponse {
                path: "/initrd".into(),
                status: 200,
                bytes: 1 << 20,
            },
        ));
        assert_eq!(timings.sweep(10_000), 0, "not quiet long enough");
        assert_eq!(timings.sweep(24_000), 1);
        let text = metrics.render();
        for line in [
            "stampede_dhcp_exchange_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "stampede_dhcp_exchange_duration_seconds_bucket{le=\"0.001\"} 0\n",
            "stampede_dhcp_exchange_duration_seconds_count 1\n",
            "stampede_tftp_transfer_duration_seconds_bucket{le=\"0.1\"} 1\n",
            "stampede_tftp_transfer_duration_seconds_bucket{le=\"0.05\"} 0\n",
            "stampede_boot_duration_seconds_bucket{outcome=\"ok\",le=\"2.5\"} 0\n",
            "stampede_boot_duration_seconds_bucket{outcome=\"ok\",le=\"5\"} 1\n",
            "stampede_boot_duration_seconds_sum{outcome=\"ok\"} 3.0\n",
            "stampede_boot_duration_seconds_count{outcome=\"failed\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn a_flood_of_new_macs_stays_within_the_limit() {
        let metrics = Metrics::new();
        let mut timings = BootTimings::new(&metrics, Duration::from_secs(20));
        for i in 0..MAX_MACHINES as u32 + 10 {
            let [a, b, c, d] = i.to_be_bytes();
            let mut e = event(1_000, reply(MessageType::Offer));
            e.mac = Some([0x52, 0x54, a, b, c, d]);
            timings.observe(&e);
        }
        assert_eq!(timings.machines.len(), MAX_MACHINES);
        assert_eq!(timings.sweep(30_000), MAX_MACHINES);
        assert!(timings.machines.is_empty());
    }

    #[test]
    fn a_failed_boot_and_a_switched_root_end_their_boots() {
        let metrics = Metrics::new();
        let mut timings = BootTimings::new(&metrics, Duration::from_secs(20));
        timings.observe(&event(0, reply(MessageType::Offer)));
        timings.observe(&event(
            300,
            BootEventKind::HttpResponse {
                path: "/missing".into(),
                status: 404,
                bytes: 0,
            },
        ));
        assert_eq!(timings.sweep(20_300), 1);
        timings.observe(&event(30_000, reply(MessageType::Offer)));
        timings.observe(&event(
            42_000,
            BootEventKind::NodeStep {
                step: NodeStep::SwitchRoot,
                detail: String::new(),
            },
        ));
        assert_eq!(timings.sweep(42_001), 0, "already ended at switch_root");
        let text = metrics.render();
        assert!(
            text.contains("stampede_boot_duration_seconds_count{outcome=\"failed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("stampede_boot_duration_seconds_sum{outcome=\"ok\"} 12.0\n"),
            "{text}"
        );
    }
}
