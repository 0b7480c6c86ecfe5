//! The data plane's counters, published to the control plane's Prometheus registry
//! (`/metrics`). Workers keep their own counts and never touch the registry; this copies the
//! totals in once a second.
use stampede_control::Metrics;
use stampede_dataplane::{
    engine::UdpStats,
    engine::http::{HttpStats, RESPONSE_SECONDS_BOUNDS},
    engine::https::HttpsStats,
    xdp::{ClassCounters, DropCounters},
};
use stampede_ebpf_common::{class, drop_reason};
use stampede_proto::dhcp::server::Pool;

fn counter(metrics: &Metrics, name: &str, help: &str, labels: &[(&str, &str)], total: u64) {
    match metrics.counter(name, help, labels) {
        Ok(c) => c.set(total),
        Err(err) => tracing::warn!(%name, error = %err, "metric not published"),
    }
}

/// `name{reason}` for each reason counted so far; the family is declared even before any, so
/// dashboards find it.
fn by_reason(
    metrics: &Metrics,
    name: &str,
    help: &str,
    map: &std::collections::BTreeMap<&'static str, u64>,
) {
    if let Err(err) = metrics.declare(name, help, stampede_control::metrics::MetricKind::Counter) {
        tracing::warn!(%name, error = %err, "metric not published");
    }
    for (reason, n) in map {
        counter(metrics, name, help, &[("reason", reason)], *n);
    }
}

/// The HTTPS server's counters (`http.https_port`), when it runs: beside the plain server's,
/// under names of their own, and the handshakes that failed (a client that does not trust the
/// certificate: hand it the appliance CA).
pub fn publish_https(metrics: &Metrics, https: &HttpsStats) {
    let c = |name, help, total| counter(metrics, name, help, &[], total);
    c(
        "stampede_https_connections_accepted_total",
        "HTTPS connections accepted",
        https.http.accepted,
    );
    c(
        "stampede_https_connections_refused_total",
        "HTTPS connections refused at the limit",
        https.http.refused,
    );
    c(
        "stampede_https_handshake_failures_total",
        "HTTPS connections whose TLS handshake failed or timed out",
        https.handshake_failures,
    );
    c(
        "stampede_https_bytes_total",
        "HTTPS response bytes sent (before encryption)",
        https.http.bytes_sent,
    );
    for (class, n) in https.http.responses_by_class.iter().enumerate().skip(1) {
        let label = format!("{class}xx");
        counter(
            metrics,
            "stampede_https_responses_total",
            "HTTPS responses, by status class",
            &[("class", &label)],
            *n,
        );
    }
}

/// The XDP program's counters, when it is loaded.
#[derive(Debug, Clone, Copy)]
pub struct XdpTotals {
    pub classes: ClassCounters,
    pub drops: DropCounters,
}

pub fn publish(metrics: &Metrics, udp: &UdpStats, http: &HttpStats, xdp: Option<&XdpTotals>) {
    let c = |name, help, total| counter(metrics, name, help, &[], total);
    c(
        "stampede_dhcp_received_total",
        "DHCP datagrams received",
        udp.dhcp_received,
    );
    c(
        "stampede_dhcp_replies_total",
        "DHCP replies sent",
        udp.dhcp_replies,
    );
    by_reason(
        metrics,
        "stampede_dhcp_dropped_total",
        "DHCP datagrams dropped, by reason",
        &udp.dhcp_dropped,
    );
    // Every policy reason exists from the start: an operator's alert on denied machines
    // needs a series at zero, not a missing one.
    let mut refused = udp.dhcp_refused.clone();
    for reason in stampede_dataplane::boot::DhcpRefusal::ALL {
        refused.entry(reason.as_str()).or_default();
    }
    by_reason(
        metrics,
        "stampede_dhcp_refused_total",
        "DHCP datagrams kept from the server by policy, by reason",
        &refused,
    );
    c(
        "stampede_afxdp_frames_received_total",
        "Frames the AF_XDP path received from its sockets",
        udp.afxdp_frames_received,
    );
    c(
        "stampede_afxdp_frames_sent_total",
        "Frames the AF_XDP path queued for transmission",
        udp.afxdp_frames_sent,
    );
    by_reason(
        metrics,
        "stampede_afxdp_dropped_total",
        "Frames the AF_XDP path dropped, by reason",
        &udp.afxdp_dropped,
    );
    c(
        "stampede_tftp_requests_total",
        "TFTP requests received",
        udp.tftp_requests,
    );
    c(
        "stampede_tftp_transfers_started_total",
        "TFTP transfers started",
        udp.tftp_transfers_started,
    );
    c(
        "stampede_tftp_transfers_completed_total",
        "TFTP transfers completed",
        udp.tftp_transfers_completed,
    );
    by_reason(
        metrics,
        "stampede_tftp_transfers_failed_total",
        "TFTP transfers that failed, by reason",
        &udp.tftp_transfers_failed,
    );
    by_reason(
        metrics,
        "stampede_tftp_refused_total",
        "TFTP requests answered with an error, by reason",
        &udp.tftp_refused,
    );
    by_reason(
        metrics,
        "stampede_tftp_dropped_total",
        "TFTP requests dropped, by reason",
        &udp.tftp_dropped,
    );
    c(
        "stampede_tftp_bytes_total",
        "TFTP file bytes acknowledged by clients",
        udp.tftp_bytes,
    );
    c(
        "stampede_tftp_retransmits_total",
        "TFTP blocks sent again",
        udp.tftp_retransmits,
    );
    c(
        "stampede_udp_kernel_drops_total",
        "Datagrams the kernel dropped for a full socket queue",
        udp.kernel_drops,
    );
    c(
        "stampede_udp_unreadable_total",
        "Datagrams dropped because the kernel reported no readable source address",
        udp.unreadable,
    );
    c(
        "stampede_udp_send_errors_total",
        "Datagrams the kernel failed to send",
        udp.send_errors,
    );
    by_reason(
        metrics,
        "stampede_tftp_stray_total",
        "Datagrams at a transfer port no transfer used, by reason",
        &udp.tftp_stray,
    );
    match metrics.gauge(
        "stampede_tftp_transfer_sockets",
        "TFTP transfer sockets open (one per transfer, and those closing)",
        &[],
    ) {
        Ok(g) => g.set(udp.tftp_transfer_sockets as f64),
        Err(err) => tracing::warn!(error = %err, "metric not published"),
    }
    match metrics.gauge(
        "stampede_tftp_transfers_active",
        "TFTP transfers running",
        &[],
    ) {
        Ok(g) => g.set(udp.tftp_transfers_active as f64),
        Err(err) => tracing::warn!(error = %err, "metric not published"),
    }
    c(
        "stampede_http_connections_accepted_total",
        "HTTP connections accepted",
        http.accepted,
    );
    c(
        "stampede_http_connections_refused_total",
        "HTTP connections refused at the limit",
        http.refused,
    );
    c(
        "stampede_http_bytes_total",
        "HTTP bytes sent",
        http.bytes_sent,
    );
    c(
        "stampede_http_sendfile_bytes_total",
        "HTTP body bytes sent with sendfile from sealed files (not copied)",
        http.sendfile_bytes,
    );
    for (class, n) in http.responses_by_class.iter().enumerate().skip(1) {
        let label = format!("{class}xx");
        counter(
            metrics,
            "stampede_http_responses_total",
            "HTTP responses, by status class",
            &[("class", &label)],
            *n,
        );
    }
    by_reason(
        metrics,
        "stampede_http_rejected_total",
        "HTTP requests refused, by reason",
        &http.rejections,
    );
    match metrics.histogram(
        "stampede_http_response_duration_seconds",
        "HTTP responses, queued to the last byte taken by the kernel",
        &[],
        &RESPONSE_SECONDS_BOUNDS,
    ) {
        Ok(h) => h.set(
            &http.response_seconds,
            http.response_micros_sum as f64 / 1e6,
        ),
        Err(err) => tracing::warn!(error = %err, "metric not published"),
    }
    if let Some(xdp) = xdp {
        for (index, name) in drop_reason::NAMES.iter().enumerate() {
            counter(
                metrics,
                "stampede_xdp_dropped_total",
                "Packets dropped by the XDP program, by reason",
                &[("reason", name)],
                xdp.drops.packets(index as u32),
            );
        }
        for (index, name) in class::NAMES.iter().enumerate() {
            let counts = xdp.classes.get(index as u32);
            counter(
                metrics,
                "stampede_xdp_packets_total",
                "Packets seen by the XDP classifier, by class",
                &[("class", name)],
                counts.packets,
            );
            counter(
                metrics,
                "stampede_xdp_bytes_total",
                "Bytes seen by the XDP classifier, by class",
                &[("class", name)],
                counts.bytes,
            );
        }
    }
}

fn gauge(metrics: &Metrics, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
    match metrics.gauge(name, help, labels) {
        Ok(g) => g.set(v),
        Err(err) => tracing::warn!(%name, error = %err, "metric not published"),
    }
}

/// `stampede_build_info{version=..} 1`, so dashboards can show what runs and when it changed.
pub fn publish_build_info(metrics: &Metrics) {
    gauge(
        metrics,
        "stampede_build_info",
        "The running build: always 1, its version as a label",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
}

/// How full each DHCP pool is: addresses in `first..=last` held by an unexpired lease (offered
/// or bound), and the pool's size. A pool is labelled by its range.
pub fn publish_pools(
    metrics: &Metrics,
    pools: &[Pool],
    leases: &[stampede_control::LeaseRecord],
    now_unix_ms: u64,
) {
    for pool in pools {
        let (first, last) = (u32::from(pool.first), u32::from(pool.last));
        let label = format!("{}-{}", pool.first, pool.last);
        let labels = [("pool", label.as_str())];
        let leased = leases
            .iter()
            .filter(|l| l.expires_ms > now_unix_ms)
            .filter(|l| l.state != stampede_control::leases::LeaseRecordState::Declined)
            .filter(|l| (first..=last).contains(&u32::from(l.ip)))
            .count();
        gauge(
            metrics,
            "stampede_dhcp_pool_addresses",
            "Addresses a DHCP pool hands out",
            &labels,
            f64::from(last.saturating_sub(first).saturating_add(1)),
        );
        gauge(
            metrics,
            "stampede_dhcp_pool_leased",
            "Addresses of a DHCP pool held by an unexpired lease (offered or bound)",
            &labels,
            leased as f64,
        );
    }
}

/// The process's own figures, read from `/proc/self` (the names the Prometheus client
/// libraries use, so stock dashboards work).
pub fn publish_process(metrics: &Metrics) {
    let Some(process) = ProcessFigures::read() else {
        return;
    };
    let g = |name, help, v| gauge(metrics, name, help, &[], v);
    g(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        process.resident_bytes,
    );
    g(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        process.virtual_bytes,
    );
    g(
        "process_open_fds",
        "Open file descriptors",
        process.open_fds,
    );
    g(
        "process_max_fds",
        "Limit of open file descriptors",
        process.max_fds,
    );
    g(
        "process_start_time_seconds",
        "Start time since the Unix epoch in seconds",
        process.start_time_seconds,
    );
    // A counter in Prometheus's sense; kept as a gauge here because the registry's counters
    // are whole numbers and CPU time is not.
    g(
        "process_cpu_seconds_total",
        "User and system CPU time spent in seconds",
        process.cpu_seconds,
    );
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessFigures {
    resident_bytes: f64,
    virtual_bytes: f64,
    cpu_seconds: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: f64,
}

impl ProcessFigures {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        // `/proc/self/fd` lists itself while being read: one entry too many.
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1);
        Self::parse(&stat, &status, &boot_time, &limits, open_fds)
    }

    /// `stat` is `/proc/self/stat` (proc(5)): the fields after the command's closing `)`
    /// start at field 3, state. Memory comes from `status` in kB, whatever the page size.
    fn parse(
        stat: &str,
        status: &str,
        proc_stat: &str,
        limits: &str,
        open_fds: usize,
    ) -> Option<Self> {
        // Times in /proc are in clock ticks of USER_HZ, which the kernel's ABI fixes at 100 on
        // every architecture (times(2)).
        const TICKS_PER_SECOND: f64 = 100.0;
        let kb = |key: &str| -> Option<f64> {
            let line = status.lines().find_map(|l| l.strip_prefix(key))?;
            Some(line.split_whitespace().next()?.parse::<f64>().ok()? * 1024.0)
        };
        let after_comm = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Field n of proc(5) is fields[n - 3].
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let boot_time: f64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|soft| soft.parse().ok())
            .unwrap_or(f64::INFINITY);
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            start_time_seconds: boot_time + field(22)? / TICKS_PER_SECOND,
            virtual_bytes: kb("VmSize:")?,
            resident_bytes: kb("VmRSS:")?,
            open_fds: open_fds as f64,
            max_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use stampede_control::leases::{LeaseRecord, LeaseRecordState};

    use super::*;

    #[test]
    fn process_figures_come_from_proc() {
        // A command with spaces and a parenthesis, as proc(5) warns.
        let stat = "4242 (stam (pede) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    9 0 12000 104857600 2560 18446744073709551615";
        let status = "Name:\tstampede\nVmSize:\t  102400 kB\nVmRSS:\t    10240 kB\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let p = ProcessFigures::parse(stat, status, proc_stat, limits, 17).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_120.0);
        assert_eq!(p.virtual_bytes, 104_857_600.0);
        assert_eq!(p.resident_bytes, 10_485_760.0);
        assert_eq!(p.open_fds, 17.0);
        assert_eq!(p.max_fds, 1024.0);
        // This process's own figures read.
        let me = ProcessFigures::read().expect("/proc/self readable");
        assert!(me.resident_bytes > 0.0 && me.open_fds >= 3.0, "{me:?}");
    }

    #[test]
    fn pool_usage_counts_live_leases_in_the_range() {
        let pool = Pool {
            subnet: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 24,
            first: Ipv4Addr::new(10, 0, 0, 100),
            last: Ipv4Addr::new(10, 0, 0, 199),
            routers: vec![],
            dns_servers: vec![],
            lease_time: std::time::Duration::from_secs(3600),
            reservations: Default::default(),
        };
        let lease = |last_octet, state, expires_ms| LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, last_octet),
            client: String::new(),
            mac: "52:54:00:00:00:01".into(),
            state,
            expires_ms,
        };
        let leases = [
            lease(100, LeaseRecordState::Bound, 2_000),
            lease(150, LeaseRecordState::Offered, 2_000),
            lease(151, LeaseRecordState::Bound, 500),
            lease(152, LeaseRecordState::Declined, 2_000),
            lease(20, LeaseRecordState::Bound, 2_000),
        ];
        let metrics = Metrics::new();
        publish_pools(&metrics, &[pool], &leases, 1_000);
        publish_build_info(&metrics);
        let text = metrics.render();
        for line in [
            "stampede_dhcp_pool_addresses{pool=\"10.0.0.100-10.0.0.199\"} 100\n",
            "stampede_dhcp_pool_leased{pool=\"10.0.0.100-10.0.0.199\"} 2\n",
            "stampede_build_info{version=\"0.1.0\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
