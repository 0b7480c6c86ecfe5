//! Boot events in their API form ([`EventView`]): what `/api/v1/events` streams, timelines
//! show and the state file stores, and back.
use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use stampede_proto::dhcp::MessageType;
use stampede_proto::events::{BootEvent, BootEventKind, NodeStep, RefusedBy};

use crate::model::MacAddr;

/// A boot event as JSON: the common fields, then `kind` and that kind's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub at_unix_ms: u64,
    pub mac: Option<MacAddr>,
    pub client: SocketAddr,
    #[serde(flatten)]
    pub kind: EventKindView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKindView {
    DhcpReply {
        /// `offer`, `ack` or `nak`.
        message: String,
        yiaddr: Ipv4Addr,
        boot_file: String,
    },
    TftpStarted {
        file: String,
        blksize: u16,
        windowsize: u16,
    },
    TftpDone {
        file: String,
        bytes: u64,
        retransmits: u32,
        duration_ms: u64,
    },
    TftpFailed {
        file: String,
        bytes: u64,
        reason: String,
    },
    HttpResponse {
        path: String,
        status: u16,
        bytes: u64,
    },
    /// A node agent's steps (diskless roots): what it said, escaped.
    RootManifest {
        detail: String,
    },
    RootChunks {
        detail: String,
    },
    RootMounted {
        detail: String,
    },
    SwitchRoot {
        detail: String,
    },
    RootFailed {
        detail: String,
    },
    /// The machine was refused (sampled): by `dhcp` or `xdp`, with the reason code counted in
    /// metrics.
    Refused {
        by: String,
        reason: String,
    },
}

impl EventKindView {
    /// The same name as [`BootEventKind::name`] (the SSE `event:` field).
    pub fn name(&self) -> &'static str {
        match self {
            Self::DhcpReply { .. } => "dhcp_reply",
            Self::TftpStarted { .. } => "tftp_started",
            Self::TftpDone { .. } => "tftp_done",
            Self::TftpFailed { .. } => "tftp_failed",
            Self::HttpResponse { .. } => "http_response",
            Self::RootManifest { .. } => "root_manifest",
            Self::RootChunks { .. } => "root_chunks",
            Self::RootMounted { .. } => "root_mounted",
            Self::SwitchRoot { .. } => "switch_root",
            Self::RootFailed { .. } => "root_failed",
            Self::Refused { .. } => "refused",
        }
    }

    /// One line for a person: what was sent or fetched and how it went.
    pub fn describe(&self) -> String {
        match self {
            Self::DhcpReply {
                message,
                yiaddr,
                boot_file,
            } => {
                let mut s = format!("{message} {yiaddr}");
                if !boot_file.is_empty() {
                    s.push_str(&format!(" file={boot_file}"));
                }
                s
            }
            Self::TftpStarted {
                file,
                blksize,
                windowsize,
            } => format!("{file} blksize={blksize} windowsize={windowsize}"),
            Self::TftpDone {
                file,
                bytes,
                retransmits,
                duration_ms,
            } => format!("{file} {bytes} B in {duration_ms} ms, {retransmits} retransmits"),
            Self::TftpFailed {
                file,
                bytes,
                reason,
            } => format!("{file} failed ({reason}) after {bytes} B"),
            Self::HttpResponse {
                path,
                status,
                bytes,
            } => format!("{path} {status} {bytes} B"),
            Self::RootManifest { detail }
            | Self::RootChunks { detail }
            | Self::RootMounted { detail }
            | Self::SwitchRoot { detail }
            | Self::RootFailed { detail } => detail.clone(),
            Self::Refused { by, reason } => format!("by {by}: {reason}"),
        }
    }
}

impl From<&BootEvent> for EventView {
    fn from(e: &BootEvent) -> Self {
        let kind = match &e.kind {
            BootEventKind::DhcpReply {
                message,
                yiaddr,
                boot_file,
            } => EventKindView::DhcpReply {
                message: message.as_str().to_owned(),
                yiaddr: *yiaddr,
                boot_file: boot_file.clone(),
            },
            BootEventKind::TftpStarted {
                file,
                blksize,
                windowsize,
            } => EventKindView::TftpStarted {
                file: file.clone(),
                blksize: *blksize,
                windowsize: *windowsize,
            },
            BootEventKind::TftpDone {
                file,
                bytes,
                retransmits,
                duration_ms,
            } => EventKindView::TftpDone {
                file: file.clone(),
                bytes: *bytes,
                retransmits: *retransmits,
                duration_ms: *duration_ms,
            },
            BootEventKind::TftpFailed {
                file,
                bytes,
                reason,
            } => EventKindView::TftpFailed {
                file: file.clone(),
                bytes: *bytes,
                reason: reason.to_string(),
            },
            BootEventKind::HttpResponse {
                path,
                status,
                bytes,
            } => EventKindView::HttpResponse {
                path: path.clone(),
                status: *status,
                bytes: *bytes,
            },
            BootEventKind::NodeStep { step, detail } => {
                let detail = detail.clone();
                match step {
                    NodeStep::RootManifest => EventKindView::RootManifest { detail },
                    NodeStep::RootChunks => EventKindView::RootChunks { detail },
                    NodeStep::RootMounted => EventKindView::RootMounted { detail },
                    NodeStep::SwitchRoot => EventKindView::SwitchRoot { detail },
                    NodeStep::RootFailed => EventKindView::RootFailed { detail },
                }
            }
            BootEventKind::Refused { by, reason } => EventKindView::Refused {
                by: by.as_str().to_owned(),
                reason: reason.to_string(),
            },
        };
        Self {
            at_unix_ms: e.at_unix_ms,
            mac: e.mac.map(MacAddr),
            client: e.client,
            kind,
        }
    }
}

/// The event a stored [`EventView`] came from; `None` for a kind or name this version does not
/// know (a file written by a newer appliance), which is skipped rather than failing the start.
pub(super) fn event_from_view(mac: MacAddr, v: &EventView) -> Option<BootEvent> {
    let kind = match &v.kind {
        EventKindView::DhcpReply {
            message,
            yiaddr,
            boot_file,
        } => BootEventKind::DhcpReply {
            message: (1..=u8::MAX)
                .map(MessageType::from)
                .find(|m| m.as_str() == message)?,
            yiaddr: *yiaddr,
            boot_file: boot_file.clone(),
        },
        EventKindView::TftpStarted {
            file,
            blksize,
            windowsize,
        } => BootEventKind::TftpStarted {
            file: file.clone(),
            blksize: *blksize,
            windowsize: *windowsize,
        },
        EventKindView::TftpDone {
            file,
            bytes,
            retransmits,
            duration_ms,
        } => BootEventKind::TftpDone {
            file: file.clone(),
            bytes: *bytes,
            retransmits: *retransmits,
            duration_ms: *duration_ms,
        },
        EventKindView::TftpFailed {
            file,
            bytes,
            reason,
        } => BootEventKind::TftpFailed {
            file: file.clone(),
            bytes: *bytes,
            reason: Cow::Owned(reason.clone()),
        },
        EventKindView::HttpResponse {
            path,
            status,
            bytes,
        } => BootEventKind::HttpResponse {
            path: path.clone(),
            status: *status,
            bytes: *bytes,
        },
        EventKindView::RootManifest { detail }
        | EventKindView::RootChunks { detail }
        | EventKindView::RootMounted { detail }
        | EventKindView::SwitchRoot { detail }
        | EventKindView::RootFailed { detail } => BootEventKind::NodeStep {
            step: NodeStep::from_name(v.kind.name())?,
            detail: detail.clone(),
        },
        EventKindView::Refused { by, reason } => BootEventKind::Refused {
            by: RefusedBy::from_name(by)?,
            reason: Cow::Owned(reason.clone()),
        },
    };
    Some(BootEvent {
        at_unix_ms: v.at_unix_ms,
        mac: Some(mac.0),
        client: v.client,
        kind,
    })
}
