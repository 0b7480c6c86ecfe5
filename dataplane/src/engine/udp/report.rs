//! DHCP reporting: a log line and a boot event per reply the server sent and per machine it
//! refused.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use stampede_proto::{
    dhcp,
    events::{BootEvent, BootEventKind, Events, RefusedBy},
};

use super::WorkerState;

impl WorkerState {
    /// A log line and a boot event for a machine whose DHCP got no answer, sampled per MAC and
    /// reason: without them an operator sees only a counter move (issue 18).
    pub(super) fn report_refusal(
        &mut self,
        now: Instant,
        mac: [u8; 6],
        source: SocketAddrV4,
        reason: &'static str,
    ) {
        if !self.refusals.sample(now, mac, reason) {
            return;
        }
        tracing::info!(
            target: "stampede::boot",
            mac = %stampede_proto::MacAddr(mac),
            reason,
            "dhcp refused"
        );
        self.events.record(BootEvent {
            at_unix_ms: unix_ms(),
            mac: Some(mac),
            client: SocketAddr::V4(source),
            kind: BootEventKind::Refused {
                by: RefusedBy::Dhcp,
                reason: reason.into(),
            },
        });
    }
}

/// Server drops that refuse a machine for a reason an operator can act on (its MAC, a missing
/// pool, a lease the server has no record of, a full queue or store). Traffic that is simply not
/// ours (another server's, a non-boot client in proxy mode) is left to the counters: reporting it
/// would fill the session table with every host on the LAN.
pub(super) fn refuses_machine(reason: dhcp::DropReason) -> bool {
    use dhcp::DropReason as R;
    match reason {
        R::InvalidClientMac
        | R::UnsupportedArch
        | R::NoPool
        | R::PoolExhausted
        | R::UnknownClient
        | R::BadRequest
        | R::LeaseStoreFailed
        | R::QueueFull
        | R::Refused(_) => true,
        R::Malformed
        | R::NotARequest
        | R::NoMessageType
        | R::UnknownMessageType
        | R::UnexpectedMessageType
        | R::UnsupportedHardware
        | R::NotBootClient
        | R::NotForProxy
        | R::WrongServerId
        | R::NotClientsLease
        | R::BufferTooSmall => false,
    }
}

/// Milliseconds since the Unix epoch, for events (wall-clock: operators read these).
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One log line and one boot event per DHCP reply: which machine, what it was told. Parses our
/// own reply, which costs less than a microsecond and keeps the core free of logging.
/// A DHCP reply as the server reported it, with where the engine sent it.
pub(super) struct DhcpReply<'a> {
    pub(super) message: dhcp::MessageType,
    pub(super) mac: Option<[u8; 6]>,
    pub(super) yiaddr: Ipv4Addr,
    pub(super) boot_file: &'a [u8],
    pub(super) destination: Ipv4Addr,
}

impl DhcpReply<'_> {
    /// Files the boot event, and logs the reply: at INFO when `at_info` (the second's budget
    /// allows it), else at DEBUG. Nothing is formatted for a level that is off.
    pub(super) fn report(&self, events: &Events, at_info: bool) {
        let boot_file = stampede_proto::text::peer_text(self.boot_file);
        let info = at_info && tracing::enabled!(target: "stampede::boot", tracing::Level::INFO);
        if info || tracing::enabled!(target: "stampede::boot", tracing::Level::DEBUG) {
            let mac = self.mac.map(|m| stampede_proto::MacAddr(m).to_string());
            let mac = mac.as_deref().unwrap_or("?");
            // Not `message`: tracing's own field of that name is the line's text.
            let kind = self.message.as_str();
            if info {
                tracing::info!(target: "stampede::boot", mac, dhcp_message = kind, yiaddr = %self.yiaddr, to = %self.destination, boot_file = %boot_file, "dhcp reply");
            } else {
                tracing::debug!(target: "stampede::boot", mac, dhcp_message = kind, yiaddr = %self.yiaddr, to = %self.destination, boot_file = %boot_file, "dhcp reply");
            }
        }
        events.record(BootEvent {
            at_unix_ms: unix_ms(),
            mac: self.mac,
            client: SocketAddr::new(self.destination.into(), dhcp::CLIENT_PORT),
            kind: BootEventKind::DhcpReply {
                message: self.message,
                yiaddr: self.yiaddr,
                boot_file,
            },
        });
    }
}
