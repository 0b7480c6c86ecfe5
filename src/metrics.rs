//! The data plane's counters, published to the control plane's Prometheus registry
//! (`/metrics`). Workers keep their own counts and never touch the registry; this copies the
//! totals in once a second.
use stampede_control::Metrics;
use stampede_dataplane::{
    engine::UdpStats,
    http_server::HttpStats,
    xdp::{ClassCounters, DropCounters},
};
use stampede_ebpf_common::{class, drop_reason};

fn counter(metrics: &Metrics, name: &str, help: &str, labels: &[(&str, &str)], total: u64) {
    match metrics.counter(name, help, labels) {
        Ok(c) => c.set(total),
        Err(err) => tracing::warn!(%name, error = %err, "metric not published"),
    }
}

fn by_reason(
    metrics: &Metrics,
    name: &str,
    help: &str,
    map: &std::collections::BTreeMap<&'static str, u64>,
) {
    for (reason, n) in map {
        counter(metrics, name, help, &[("reason", reason)], *n);
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
    by_reason(
        metrics,
        "stampede_dhcp_refused_total",
        "DHCP datagrams kept from the server by policy",
        &udp.dhcp_refused,
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
