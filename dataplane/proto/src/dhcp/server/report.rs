//! What the DHCP server core reports: why a datagram got no reply ([`DropReason`]), its
//! counters ([`ServerStats`]), where a reply goes ([`Transmit`]) and what it did
//! ([`ServerEvent`]).
use std::net::Ipv4Addr;

use crate::dhcp::admission::Refusal;
use crate::dhcp::options::MessageType;

/// Why a datagram got no reply (or a reply was not sent). Each is a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    Malformed,
    /// BOOTREPLY or an unknown op: another server's traffic.
    NotARequest,
    NoMessageType,
    UnknownMessageType,
    /// OFFER/ACK/NAK sent to a server.
    UnexpectedMessageType,
    /// Not Ethernet (we key boot decisions and unicast replies on a 6-byte MAC).
    UnsupportedHardware,
    /// chaddr all zeros or all ones (ff:ff:ff:ff:ff:ff): no machine has it, and a lease or a
    /// boot decision keyed on it would be shared by every client sending it (issue 19).
    InvalidClientMac,
    /// Proxy mode: not PXE, iPXE or HTTP Boot, so the LAN's DHCP server's business.
    NotBootClient,
    /// A boot client whose architecture has no loader configured.
    UnsupportedArch,
    /// Proxy mode on port 67: only DISCOVER is ours (PXE 2.1 §2.2.3).
    NotForProxy,
    /// REQUEST/DECLINE/RELEASE naming another server (the client chose someone else).
    WrongServerId,
    /// No pool serves the client's subnet (relay or ciaddr elsewhere).
    NoPool,
    PoolExhausted,
    /// INIT-REBOOT/RENEW from a client we have no record of: RFC 2131 §4.3.2 says stay silent.
    UnknownClient,
    /// REQUEST without server id, ciaddr or requested address.
    BadRequest,
    /// RELEASE/DECLINE of an address the client does not hold.
    NotClientsLease,
    LeaseStoreFailed,
    QueueFull,
    /// The caller's transmit buffer could not hold the reply.
    BufferTooSmall,
    /// Refused by its identity ([`ServerConfig::admission`](super::ServerConfig::admission)); counted apart from the drops in
    /// [`DropReason::ALL`], by [`Refusal`].
    Refused(Refusal),
}

impl DropReason {
    pub const ALL: [Self; 19] = [
        Self::Malformed,
        Self::NotARequest,
        Self::NoMessageType,
        Self::UnknownMessageType,
        Self::UnexpectedMessageType,
        Self::UnsupportedHardware,
        Self::InvalidClientMac,
        Self::NotBootClient,
        Self::UnsupportedArch,
        Self::NotForProxy,
        Self::WrongServerId,
        Self::NoPool,
        Self::PoolExhausted,
        Self::UnknownClient,
        Self::BadRequest,
        Self::NotClientsLease,
        Self::LeaseStoreFailed,
        Self::QueueFull,
        Self::BufferTooSmall,
    ];

    /// Stable metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotARequest => "not_a_request",
            Self::NoMessageType => "no_message_type",
            Self::UnknownMessageType => "unknown_message_type",
            Self::UnexpectedMessageType => "unexpected_message_type",
            Self::UnsupportedHardware => "unsupported_hardware",
            Self::InvalidClientMac => "invalid_client_mac",
            Self::NotBootClient => "not_boot_client",
            Self::UnsupportedArch => "unsupported_arch",
            Self::NotForProxy => "not_for_proxy",
            Self::WrongServerId => "wrong_server_id",
            Self::NoPool => "no_pool",
            Self::PoolExhausted => "pool_exhausted",
            Self::UnknownClient => "unknown_client",
            Self::BadRequest => "bad_request",
            Self::NotClientsLease => "not_clients_lease",
            Self::LeaseStoreFailed => "lease_store_failed",
            Self::QueueFull => "queue_full",
            Self::BufferTooSmall => "buffer_too_small",
            Self::Refused(refusal) => refusal.as_str(),
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Self::Refused(refusal) => Self::ALL.len() + refusal.index(),
            _ => Self::ALL.iter().position(|r| *r == self).unwrap_or(0),
        }
    }
}

/// Counters. Monotonic; the caller exports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub received: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub informs: u64,
    pub releases: u64,
    /// DHCPDECLINEs accepted: each is an address conflict on the network.
    pub declines: u64,
    pub transmitted: u64,
    /// Events dropped unread because [`DhcpServer::poll_event`](super::DhcpServer::poll_event) fell behind by
    /// [`ServerConfig::max_queued`](super::ServerConfig::max_queued).
    pub events_lost: u64,
    pub(super) dropped: [u64; DropReason::ALL.len() + Refusal::ALL.len()],
}

impl ServerStats {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.dropped(*r)))
    }

    /// Requests refused by their machine's identity, by reason.
    pub fn refusals(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .iter()
            .map(|r| (*r, self.dropped(DropReason::Refused(*r))))
    }

    /// Drops and refusals.
    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// Where a reply goes. `len` bytes at the start of the lent buffer are the UDP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    /// The port the reply must leave from (67, or 4011 for PXE boot server replies).
    pub src_port: u16,
    /// Set when the client has no address yet and the reply is unicast to it: the engine must
    /// send the frame to this MAC without ARP (RFC 2131 §4.1).
    pub dst_mac: Option<[u8; 6]>,
    /// Limited broadcast (255.255.255.255, Ethernet ff:ff:ff:ff:ff:ff).
    pub broadcast: bool,
    pub len: usize,
}

/// What the server did, reported so the caller can log it and file boot events without parsing
/// the request or the reply again (issue 22), in the spirit of quinn-proto's `poll()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A reply left through [`DhcpServer::poll_transmit`](super::DhcpServer::poll_transmit) (the transmit returned with it).
    Replied {
        message: MessageType,
        /// The client's hardware address, when it is Ethernet.
        mac: Option<[u8; 6]>,
        yiaddr: Ipv4Addr,
        /// Option 67, else the `file` field, as sent; empty when the reply names none.
        boot_file: Vec<u8>,
    },
    /// A request that parsed got no reply.
    Dropped {
        reason: DropReason,
        mac: Option<[u8; 6]>,
    },
}
