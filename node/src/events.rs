//! Progress reports to the appliance: `GET {server}/stampede/node/event?mac=..&event=..&..`.
//!
//! A GET with a query, not a JSON POST, so an operator can replay one with `curl` and the
//! appliance can log it from its access path alone. Reporting never holds a boot up: short
//! timeouts, failures ignored (the route to the appliance may not even exist yet).
use std::time::Duration;

use crate::{
    cmdline::MacAddr,
    http::{HttpConnection, HttpUrl, encode_query_value},
};

/// Longest `reason` sent, in characters: enough for an error chain, short enough for a log line.
pub const MAX_REASON_CHARS: usize = 200;

/// Per-request timeout of a report.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A verified manifest: how much is about to be fetched.
    RootManifest {
        chunks: usize,
        bytes: u64,
    },
    /// Every chunk fetched, verified and written.
    RootChunks {
        bytes: u64,
        ms: u64,
        /// Chunks that came in a run's `Range` answer, and those fetched from their own URL.
        by_range: usize,
        by_chunk: usize,
        /// Bytes from the root's swarm (other machines) and from the appliance; bytes this
        /// machine uploaded to the swarm meanwhile.
        from_peers: u64,
        from_appliance: u64,
        uploaded: u64,
        /// Swarm peers banned for a piece that failed its SHA-256, space-separated.
        banned: String,
    },
    RootMounted,
    SwitchRoot {
        init: String,
    },
    /// Any step failed; the agent retries it.
    RootFailed {
        reason: String,
    },
}

impl NodeEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RootManifest { .. } => "root_manifest",
            Self::RootChunks { .. } => "root_chunks",
            Self::RootMounted => "root_mounted",
            Self::SwitchRoot { .. } => "switch_root",
            Self::RootFailed { .. } => "root_failed",
        }
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::RootManifest { chunks, bytes } => {
                vec![("chunks", chunks.to_string()), ("bytes", bytes.to_string())]
            }
            Self::RootChunks {
                bytes,
                ms,
                by_range,
                by_chunk,
                from_peers,
                from_appliance,
                uploaded,
                banned,
            } => vec![
                ("bytes", bytes.to_string()),
                ("ms", ms.to_string()),
                ("by_range", by_range.to_string()),
                ("by_chunk", by_chunk.to_string()),
                ("from_peers", from_peers.to_string()),
                ("from_appliance", from_appliance.to_string()),
                ("uploaded", uploaded.to_string()),
                ("banned", banned.clone()),
            ],
            Self::RootMounted => vec![],
            Self::SwitchRoot { init } => vec![("init", init.clone())],
            Self::RootFailed { reason } => {
                vec![("reason", reason.chars().take(MAX_REASON_CHARS).collect())]
            }
        }
    }

    /// The report's URL under `server`.
    pub fn url(&self, server: &HttpUrl, mac: MacAddr) -> HttpUrl {
        let mut target = format!(
            "/stampede/node/event?mac={}&event={}",
            encode_query_value(&mac.to_string()),
            self.kind()
        );
        for (key, value) in self.fields() {
            target.push('&');
            target.push_str(key);
            target.push('=');
            target.push_str(&encode_query_value(&value));
        }
        server.join(&target)
    }
}

/// Sends reports; remembers nothing but where to.
#[derive(Debug, Clone)]
pub struct EventReporter {
    pub server: HttpUrl,
    pub mac: MacAddr,
}

impl EventReporter {
    /// Sends `event`, returning whether the appliance took it (callers may ignore it).
    pub fn report(&self, event: &NodeEvent) -> bool {
        let url = event.url(&self.server, self.mac);
        let mut conn = HttpConnection::new(&self.server, REPORT_TIMEOUT);
        conn.get_ok(&url, 4096).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> HttpUrl {
        HttpUrl::parse("http://198.18.0.1:8080").expect("url")
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    #[test]
    fn events_encode_their_fields() {
        let url = NodeEvent::RootManifest {
            chunks: 3,
            bytes: 2_100_000,
        }
        .url(&server(), MAC);
        assert_eq!(
            url.to_string(),
            "http://198.18.0.1:8080/stampede/node/event?mac=52%3A54%3A00%3A12%3A34%3A56\
             &event=root_manifest&chunks=3&bytes=2100000"
        );
        let url = NodeEvent::SwitchRoot {
            init: "/sbin/init".into(),
        }
        .url(&server(), MAC);
        assert!(
            url.target
                .ends_with("&event=switch_root&init=%2Fsbin%2Finit"),
            "{url}"
        );
        let url = NodeEvent::RootMounted.url(&server(), MAC);
        assert!(url.target.ends_with("&event=root_mounted"), "{url}");
    }

    #[test]
    fn reasons_are_bounded_and_escaped() {
        let long = "é & x=y ".repeat(100);
        let url = NodeEvent::RootFailed { reason: long }.url(&server(), MAC);
        let reason = url.target.split("&reason=").nth(1).expect("reason");
        assert!(!reason.contains(['&', '=', ' ']), "{reason}");
        // 200 characters: 25 repetitions of the 8-character pattern.
        let decoded_chars = 25 * 8;
        assert_eq!(decoded_chars, MAX_REASON_CHARS);
        assert_eq!(reason, encode_query_value(&"é & x=y ".repeat(25)));
    }

    #[test]
    fn an_unreachable_appliance_is_not_an_error() {
        let reporter = EventReporter {
            // Port 9 on loopback: nothing listens, the connect is refused at once.
            server: HttpUrl::parse("http://127.0.0.1:9").expect("url"),
            mac: MAC,
        };
        assert!(!reporter.report(&NodeEvent::RootMounted));
    }
}
