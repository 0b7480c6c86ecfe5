//! What a session says about a boot: its stages, the gaps between them, its outcome, and the
//! timeline of `GET /api/v1/sessions/{mac}`.
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use stampede_proto::events::{BootEventKind, BootStage};

use super::session::Session;
use super::view::EventView;
use crate::model::MacAddr;

/// How a session stands, judged from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOutcome {
    /// The newest event is a failure: a DHCP Nak, a failed TFTP transfer, an HTTP error.
    Failed,
    /// A TFTP transfer started and has not ended.
    Transferring,
    /// Nothing has gone wrong so far (the appliance cannot see the OS come up).
    Ok,
}

/// One stage's share of a boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpan {
    /// `dhcp`, `tftp` or `http`.
    pub stage: String,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    pub events: usize,
    /// Bytes delivered (TFTP transfers done or failed, HTTP bodies).
    pub bytes: u64,
    pub failures: usize,
    pub retransmits: u64,
}

/// Time between the end of one stage and the start of the next (0 if they overlap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageGap {
    pub from: String,
    pub to: String,
    pub gap_ms: u64,
}

/// A line of `GET /api/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub mac: MacAddr,
    /// The address the last DHCP reply handed out.
    pub ip: Option<Ipv4Addr>,
    /// 1 for the first boot seen, then one more each time the machine starts over with DHCP
    /// (the DHCP of a loader the boot just downloaded, such as iPXE, is part of the same boot).
    pub boot: u32,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    pub duration_ms: u64,
    pub events: usize,
    /// Events of this boot dropped to stay within the per-session limit.
    pub dropped_events: u64,
    pub stages: Vec<StageSpan>,
    pub outcome: SessionOutcome,
    /// The newest event, described for a person.
    pub last_event: String,
}

/// An event in a timeline, with the time since the previous one and since the boot began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(flatten)]
    pub event: EventView,
    pub since_prev_ms: u64,
    pub since_start_ms: u64,
}

/// `GET /api/v1/sessions/{mac}`: where the seconds of a boot went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTimeline {
    #[serde(flatten)]
    pub summary: SessionSummary,
    pub gaps: Vec<StageGap>,
    /// The longest wait between two consecutive events, and the event it preceded.
    pub longest_wait: Option<TimelineEntry>,
    pub timeline: Vec<TimelineEntry>,
}

fn delivered_bytes(kind: &BootEventKind) -> u64 {
    match kind {
        BootEventKind::TftpDone { bytes, .. }
        | BootEventKind::TftpFailed { bytes, .. }
        | BootEventKind::HttpResponse { bytes, .. } => *bytes,
        BootEventKind::DhcpReply { .. }
        | BootEventKind::TftpStarted { .. }
        | BootEventKind::NodeStep { .. }
        | BootEventKind::Refused { .. } => 0,
    }
}

/// Stage spans in the order the stages began.
fn stage_spans(session: &Session) -> Vec<StageSpan> {
    let mut spans: Vec<(BootStage, StageSpan)> = Vec::new();
    for e in &session.events {
        let stage = e.kind.stage();
        let i = match spans.iter().position(|(s, _)| *s == stage) {
            Some(i) => i,
            None => {
                spans.push((
                    stage,
                    StageSpan {
                        stage: stage.as_str().to_owned(),
                        first_unix_ms: e.at_unix_ms,
                        last_unix_ms: e.at_unix_ms,
                        events: 0,
                        bytes: 0,
                        failures: 0,
                        retransmits: 0,
                    },
                ));
                spans.len() - 1
            }
        };
        let span = &mut spans[i].1;
        span.last_unix_ms = span.last_unix_ms.max(e.at_unix_ms);
        span.events += 1;
        span.bytes += delivered_bytes(&e.kind);
        span.failures += usize::from(e.kind.is_failure());
        if let BootEventKind::TftpDone { retransmits, .. } = e.kind {
            span.retransmits += u64::from(retransmits);
        }
    }
    spans.into_iter().map(|(_, s)| s).collect()
}

fn outcome(session: &Session) -> SessionOutcome {
    let Some(last) = session.events.back() else {
        return SessionOutcome::Ok;
    };
    if last.kind.is_failure() {
        return SessionOutcome::Failed;
    }
    // A transfer is open if its start is newer than every end for the same file from the same
    // client port (TFTP's transfer identifier, RFC 1350 §4).
    let mut open: Vec<(&str, SocketAddr)> = Vec::new();
    for e in &session.events {
        match &e.kind {
            BootEventKind::TftpStarted { file, .. } => open.push((file, e.client)),
            BootEventKind::TftpDone { file, .. } | BootEventKind::TftpFailed { file, .. } => {
                if let Some(i) = open.iter().position(|(f, c)| f == file && *c == e.client) {
                    open.remove(i);
                }
            }
            BootEventKind::DhcpReply { .. }
            | BootEventKind::HttpResponse { .. }
            | BootEventKind::NodeStep { .. }
            | BootEventKind::Refused { .. } => {}
        }
    }
    if open.is_empty() {
        SessionOutcome::Ok
    } else {
        SessionOutcome::Transferring
    }
}

pub(super) fn summarize(mac: MacAddr, s: &Session) -> SessionSummary {
    SessionSummary {
        mac,
        ip: s.ip,
        boot: s.boot,
        first_unix_ms: s.first_unix_ms,
        last_unix_ms: s.last_unix_ms,
        duration_ms: s.last_unix_ms - s.first_unix_ms,
        events: s.events.len(),
        dropped_events: s.dropped_events,
        stages: stage_spans(s),
        outcome: outcome(s),
        last_event: s
            .events
            .back()
            .map(|e| {
                let v = EventView::from(&**e);
                format!("{} {}", v.kind.name(), v.kind.describe())
            })
            .unwrap_or_default(),
    }
}

pub(super) fn timeline(mac: MacAddr, s: &Session) -> SessionTimeline {
    let summary = summarize(mac, s);
    let gaps = summary
        .stages
        .windows(2)
        .map(|w| StageGap {
            from: w[0].stage.clone(),
            to: w[1].stage.clone(),
            gap_ms: w[1].first_unix_ms.saturating_sub(w[0].last_unix_ms),
        })
        .collect();
    let mut prev = s.first_unix_ms;
    let timeline: Vec<TimelineEntry> = s
        .events
        .iter()
        .map(|e| {
            let entry = TimelineEntry {
                event: EventView::from(&**e),
                since_prev_ms: e.at_unix_ms - prev,
                since_start_ms: e.at_unix_ms - s.first_unix_ms,
            };
            prev = e.at_unix_ms;
            entry
        })
        .collect();
    let longest_wait = timeline
        .iter()
        .skip(1)
        .filter(|e| e.since_prev_ms > 0)
        .max_by_key(|e| e.since_prev_ms)
        .cloned();
    SessionTimeline {
        summary,
        gaps,
        longest_wait,
        timeline,
    }
}
