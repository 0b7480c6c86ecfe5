//! The data plane's counters as `key=value` tokens.
use super::*;

pub fn format_http_stats(s: &HttpStats) -> String {
    let mut out = format!(
        "http_accepted={} http_closed={} http_refused={} http_1xx={} http_2xx={} http_3xx={} \
         http_4xx={} http_5xx={} http_bytes={} http_sendfile_bytes={} http_idle_timeouts={} \
         http_aborted_at_stop={} http_closed_on_error={} http_closed_by_peer={}",
        s.accepted,
        s.closed,
        s.refused,
        s.responses_by_class[1],
        s.responses_by_class[2],
        s.responses_by_class[3],
        s.responses_by_class[4],
        s.responses_by_class[5],
        s.bytes_sent,
        s.sendfile_bytes,
        s.idle_timeouts,
        s.aborted_at_stop,
        s.closed_on_error,
        s.closed_by_peer
    );
    for (reason, n) in &s.rejections {
        out.push_str(&format!(" http_rejected.{reason}={n}"));
    }
    out
}

/// `key=value` tokens, stable for scripts and tests.
pub fn format_stats(s: &UdpStats) -> String {
    let mut out = format!(
        "dhcp_received={} dhcp_replies={} tftp_requests={} tftp_started={} tftp_completed={} \
         tftp_active={} tftp_sockets={} tftp_bytes={} tftp_retransmits={} kernel_drops={} \
         udp_unreadable={} send_errors={} afxdp_rx={} afxdp_tx={} afxdp_arp_replies={}",
        s.dhcp_received,
        s.dhcp_replies,
        s.tftp_requests,
        s.tftp_transfers_started,
        s.tftp_transfers_completed,
        s.tftp_transfers_active,
        s.tftp_transfer_sockets,
        s.tftp_bytes,
        s.tftp_retransmits,
        s.kernel_drops,
        s.unreadable,
        s.send_errors,
        s.afxdp_frames_received,
        s.afxdp_frames_sent,
        s.afxdp_arp_replies
    );
    for (prefix, map) in [
        ("dhcp_refused", &s.dhcp_refused),
        ("dhcp_dropped", &s.dhcp_dropped),
        ("tftp_refused", &s.tftp_refused),
        ("tftp_dropped", &s.tftp_dropped),
        ("tftp_failed", &s.tftp_transfers_failed),
        ("tftp_stray", &s.tftp_stray),
        ("afxdp_dropped", &s.afxdp_dropped),
    ] {
        for (reason, n) in map {
            out.push_str(&format!(" {prefix}.{reason}={n}"));
        }
    }
    out
}
