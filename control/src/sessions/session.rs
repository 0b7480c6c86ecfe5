//! One machine's boot as the session table keeps it, and as the state file stores it.
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stampede_proto::events::{BootEvent, BootEventKind};

use super::view::EventView;

#[derive(Debug)]
pub(super) struct Session {
    pub(super) ip: Option<Ipv4Addr>,
    /// Boots seen for this machine; a DHCP Offer after TFTP or HTTP activity starts a new one,
    /// unless that activity was only the download of the boot file ([`between_chain_links`]).
    pub(super) boot: u32,
    pub(super) first_unix_ms: u64,
    pub(super) last_unix_ms: u64,
    /// Ordered by `at_unix_ms`; events from different workers may arrive slightly out of order.
    pub(super) events: VecDeque<Arc<BootEvent>>,
    pub(super) dropped_events: u64,
    pub(super) touched: u64,
}

impl Session {
    pub(super) fn new(first_unix_ms: u64) -> Self {
        Self {
            ip: None,
            boot: 1,
            first_unix_ms,
            last_unix_ms: first_unix_ms,
            events: VecDeque::new(),
            dropped_events: 0,
            touched: 0,
        }
    }

    pub(super) fn restart(&mut self, at_unix_ms: u64) {
        self.boot += 1;
        self.first_unix_ms = at_unix_ms;
        self.last_unix_ms = at_unix_ms;
        self.events.clear();
        self.dropped_events = 0;
    }

    pub(super) fn insert(&mut self, event: Arc<BootEvent>, max_events: usize) -> u64 {
        self.first_unix_ms = self.first_unix_ms.min(event.at_unix_ms);
        self.last_unix_ms = self.last_unix_ms.max(event.at_unix_ms);
        // After any event with the same time, so equal stamps keep arrival order.
        let at = self
            .events
            .partition_point(|e| e.at_unix_ms <= event.at_unix_ms);
        self.events.insert(at, event);
        let mut dropped = 0;
        while self.events.len() > max_events.max(1) {
            self.events.pop_front();
            dropped += 1;
        }
        self.dropped_events += dropped;
        dropped
    }
}

impl Session {
    /// Everything but the events.
    pub(super) fn stored_header(&self) -> StoredSession {
        StoredSession {
            ip: self.ip,
            boot: self.boot,
            first_unix_ms: self.first_unix_ms,
            last_unix_ms: self.last_unix_ms,
            dropped_events: self.dropped_events,
            touched: self.touched,
            events: Vec::new(),
        }
    }
}

/// A session as the state file keeps it: its events in their API form, which owns its strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) boot: u32,
    pub(crate) first_unix_ms: u64,
    pub(crate) last_unix_ms: u64,
    pub(crate) dropped_events: u64,
    /// Recency among sessions, for eviction after a restart.
    pub(crate) touched: u64,
    pub(crate) events: Vec<EventView>,
}

/// Whether the machine is between two links of a boot chain rather than done with a boot: all it
/// fetched since DHCP is the boot file its latest DHCP answer named, and that arrived whole. Its
/// next DHCP is then the loader's own (firmware PXE → `snponly.efi` → iPXE asks again), and the
/// boot's timeline goes on through it, so the gap between the download and the loader's DHCP
/// (iPXE's start-up) shows. A failed download followed by DHCP is a new attempt.
pub(super) fn between_chain_links(session: &Session) -> bool {
    let Some(boot_file) = session.events.iter().rev().find_map(|e| match &e.kind {
        BootEventKind::DhcpReply { boot_file, .. } if !boot_file.is_empty() => {
            Some(boot_file.as_str())
        }
        _ => None,
    }) else {
        return false;
    };
    // `http://host:port/path?query` is fetched as `/path?query`; a TFTP name as itself.
    let url_target = boot_file
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]));
    let is_boot_file =
        |file: &str| file.trim_start_matches('/') == boot_file.trim_start_matches('/');
    let mut delivered = false;
    for e in &session.events {
        match &e.kind {
            BootEventKind::DhcpReply { .. } => {}
            BootEventKind::TftpStarted { file, .. } | BootEventKind::TftpFailed { file, .. } => {
                if !is_boot_file(file) {
                    return false;
                }
            }
            BootEventKind::TftpDone { file, .. } => {
                if !is_boot_file(file) {
                    return false;
                }
                delivered = true;
            }
            BootEventKind::HttpResponse { path, status, .. } => {
                if url_target != Some(path.as_str()) {
                    return false;
                }
                delivered |= *status == 200;
            }
            BootEventKind::NodeStep { .. } | BootEventKind::Refused { .. } => return false,
        }
    }
    delivered
}
