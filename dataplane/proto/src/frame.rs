//! Ethernet II / IPv4 / UDP frames, for the AF_XDP path: zero-copy views of received frames and
//! headers written in front of a payload already in the transmit frame; and ARP requests for the
//! server's address with their replies ([`ArpRequest`], RFC 826).
//!
//! Guarantees: [`Udp4Frame::parse`] never panics and never allocates; when it returns `Ok`, every
//! length it reports lies inside the frame, the IPv4 header checksum is right, and the UDP
//! checksum is right or absent (zero, RFC 768). Everything it refuses has a [`FrameDrop`] reason
//! the engine counts. [`Udp4Repr::emit`] writes a frame any Linux stack accepts: IPv4 header
//! checksum (RFC 791 §3.1) and UDP checksum over the pseudo-header (RFC 768) filled in.
//!
//! Not handled (refused with a reason, never misparsed): VLAN tags, IPv4 options are skipped but
//! allowed, fragments (RFC 791: only the first carries the UDP header, and the AF_XDP path does
//! not reassemble), anything but UDP.
use std::net::Ipv4Addr;

/// Ethernet II header: destination, source, EtherType.
pub const ETH_HLEN: usize = 14;
/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// UDP header.
pub const UDP_HLEN: usize = 8;
/// Where the UDP payload starts in a frame [`Udp4Repr::emit`] writes (no VLAN, no IP options).
pub const UDP_PAYLOAD_OFFSET: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethernet/IPv4 ARP message (RFC 826): htype, ptype, hlen, plen, op, two MAC/IPv4 pairs.
pub const ARP_LEN: usize = 28;
/// Length of an ARP reply frame [`ArpRequest::emit_reply`] writes (unpadded; the NIC pads).
pub const ARP_FRAME_LEN: usize = ETH_HLEN + ARP_LEN;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
/// Time to live of frames we send; 64 is Linux's default (`net.ipv4.ip_default_ttl`).
const TTL: u8 = 64;

mod field {
    use std::ops::Range;
    // Ethernet II.
    pub const DST_MAC: Range<usize> = 0..6;
    pub const SRC_MAC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    // IPv4, from the start of its header (RFC 791 §3.1).
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const PROTOCOL: usize = 9;
    pub const IP_CHECKSUM: Range<usize> = 10..12;
    pub const SRC_IP: Range<usize> = 12..16;
    pub const DST_IP: Range<usize> = 16..20;
    // UDP, from the start of its header (RFC 768).
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const UDP_LEN: Range<usize> = 4..6;
    pub const UDP_CHECKSUM: Range<usize> = 6..8;
}

/// Why a received frame is not a UDP datagram the AF_XDP path serves. Every one is a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameDrop {
    /// Shorter than the headers it announces.
    Truncated,
    /// EtherType other than IPv4 (ARP, IPv6, ...).
    NotIpv4,
    /// 802.1Q / 802.1ad tagged: the AF_XDP path serves untagged boot networks only.
    Vlan,
    /// IP version not 4, header length below 20, or total length shorter than the header.
    BadIpHeader,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// A fragment (more-fragments set or an offset): not reassembled.
    Fragment,
    /// Not UDP.
    NotUdp,
    /// UDP length below 8 or past the IPv4 payload.
    BadUdpLength,
    /// UDP checksum present and wrong.
    BadUdpChecksum,
    /// ARP that is not an Ethernet/IPv4 request (wrong hardware or protocol type or lengths,
    /// a reply), or shorter than 28 bytes.
    NotArpRequest,
}

impl FrameDrop {
    pub const ALL: [Self; 10] = [
        Self::Truncated,
        Self::NotIpv4,
        Self::Vlan,
        Self::BadIpHeader,
        Self::BadIpChecksum,
        Self::Fragment,
        Self::NotUdp,
        Self::BadUdpLength,
        Self::BadUdpChecksum,
        Self::NotArpRequest,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::NotIpv4 => "not_ipv4",
            Self::Vlan => "vlan",
            Self::BadIpHeader => "bad_ip_header",
            Self::BadIpChecksum => "bad_ip_checksum",
            Self::Fragment => "fragment",
            Self::NotUdp => "not_udp",
            Self::BadUdpLength => "bad_udp_length",
            Self::BadUdpChecksum => "bad_udp_checksum",
            Self::NotArpRequest => "not_arp_request",
        }
    }
}

fn be16(bytes: &[u8], range: std::ops::Range<usize>) -> u16 {
    let mut out = [0u8; 2];
    out.copy_from_slice(&bytes[range]);
    u16::from_be_bytes(out)
}

fn mac(bytes: &[u8], range: std::ops::Range<usize>) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&bytes[range]);
    out
}

fn ipv4(bytes: &[u8], range: std::ops::Range<usize>) -> Ipv4Addr {
    let mut out = [0u8; 4];
    out.copy_from_slice(&bytes[range]);
    Ipv4Addr::from(out)
}

/// The Internet checksum's running sum (RFC 1071): 16-bit big-endian words added with carry.
#[derive(Debug, Clone, Copy, Default)]
struct Checksum(u32);

impl Checksum {
    fn add(mut self, bytes: &[u8]) -> Self {
        let mut chunks = bytes.chunks_exact(2);
        for pair in &mut chunks {
            self.0 += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            // Fold as we go, so no frame length can overflow the accumulator.
            self.0 = (self.0 & 0xFFFF) + (self.0 >> 16);
        }
        if let [last] = chunks.remainder() {
            self.0 += u32::from(*last) << 8;
            self.0 = (self.0 & 0xFFFF) + (self.0 >> 16);
        }
        self
    }

    fn add_u16(self, value: u16) -> Self {
        self.add(&value.to_be_bytes())
    }

    /// The one's complement of the folded sum: what goes into the header.
    fn finish(self) -> u16 {
        let mut sum = self.0;
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !(sum as u16)
    }
}

fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> Checksum {
    Checksum::default()
        .add(&src.octets())
        .add(&dst.octets())
        .add_u16(u16::from(IPPROTO_UDP))
        .add_u16(udp.len() as u16)
        .add(udp)
}

/// A received Ethernet/IPv4/UDP frame, checked; the payload borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4Frame<'a> {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> Udp4Frame<'a> {
    /// Checks every header and returns the view, or why the frame is not served.
    pub fn parse(frame: &'a [u8]) -> Result<Self, FrameDrop> {
        if frame.len() < ETH_HLEN {
            return Err(FrameDrop::Truncated);
        }
        match be16(frame, field::ETHERTYPE) {
            ETHERTYPE_IPV4 => {}
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => return Err(FrameDrop::Vlan),
            _ => return Err(FrameDrop::NotIpv4),
        }
        let ip = &frame[ETH_HLEN..];
        if ip.len() < IPV4_HLEN {
            return Err(FrameDrop::Truncated);
        }
        let ihl = usize::from(ip[field::VER_IHL] & 0x0F) * 4;
        if ip[field::VER_IHL] >> 4 != 4 || ihl < IPV4_HLEN {
            return Err(FrameDrop::BadIpHeader);
        }
        let total_len = usize::from(be16(ip, field::TOTAL_LEN));
        if total_len < ihl {
            return Err(FrameDrop::BadIpHeader);
        }
        // Ethernet pads short frames to 60 bytes: the IPv4 total length, not the frame, says
        // where the packet ends.
        if ip.len() < total_len {
            return Err(FrameDrop::Truncated);
        }
        let ip = &ip[..total_len];
        if Checksum::default().add(&ip[..ihl]).finish() != 0 {
            return Err(FrameDrop::BadIpChecksum);
        }
        if be16(ip, field::FLAGS_FRAG) & 0x3FFF != 0 {
            return Err(FrameDrop::Fragment);
        }
        if ip[field::PROTOCOL] != IPPROTO_UDP {
            return Err(FrameDrop::NotUdp);
        }
        let src_ip = ipv4(ip, field::SRC_IP);
        let dst_ip = ipv4(ip, field::DST_IP);
        let udp = &ip[ihl..];
        if udp.len() < UDP_HLEN {
            return Err(FrameDrop::BadUdpLength);
        }
        let udp_len = usize::from(be16(udp, field::UDP_LEN));
        if udp_len < UDP_HLEN || udp_len > udp.len() {
            return Err(FrameDrop::BadUdpLength);
        }
        let udp = &udp[..udp_len];
        // Zero means "no checksum" (RFC 768); a computed zero is sent as 0xFFFF, which sums the
        // same.
        if be16(udp, field::UDP_CHECKSUM) != 0 && udp_checksum(src_ip, dst_ip, udp).finish() != 0 {
            return Err(FrameDrop::BadUdpChecksum);
        }
        Ok(Self {
            dst_mac: mac(frame, field::DST_MAC),
            src_mac: mac(frame, field::SRC_MAC),
            src_ip,
            dst_ip,
            src_port: be16(udp, field::SRC_PORT),
            dst_port: be16(udp, field::DST_PORT),
            payload: &udp[UDP_HLEN..],
        })
    }
}

/// The headers of a frame to send. The payload is written first, at [`UDP_PAYLOAD_OFFSET`] of
/// the transmit frame (straight from a protocol core); `emit` then writes the headers before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4Repr {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// The frame cannot hold the headers and payload, or the payload does not fit one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {payload_len}-byte UDP payload does not fit a {frame_len}-byte frame")]
pub struct FrameTooSmall {
    pub payload_len: usize,
    pub frame_len: usize,
}

impl Udp4Repr {
    /// Length of the frame carrying `payload_len` bytes.
    pub const fn frame_len(payload_len: usize) -> usize {
        UDP_PAYLOAD_OFFSET + payload_len
    }

    /// Writes the Ethernet, IPv4 and UDP headers in front of the `payload_len` bytes already at
    /// `frame[UDP_PAYLOAD_OFFSET..]`, with both checksums; returns the frame length.
    pub fn emit(&self, frame: &mut [u8], payload_len: usize) -> Result<usize, FrameTooSmall> {
        let too_small = FrameTooSmall {
            payload_len,
            frame_len: frame.len(),
        };
        let len = Self::frame_len(payload_len);
        let ip_len = u16::try_from(len - ETH_HLEN).map_err(|_| too_small)?;
        let frame = frame.get_mut(..len).ok_or(too_small)?;
        frame[field::DST_MAC].copy_from_slice(&self.dst_mac);
        frame[field::SRC_MAC].copy_from_slice(&self.src_mac);
        frame[field::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

        let (ip, udp) = frame[ETH_HLEN..].split_at_mut(IPV4_HLEN);
        ip[field::VER_IHL] = 0x45;
        ip[1] = 0; // DSCP/ECN
        ip[field::TOTAL_LEN].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&[0, 0]); // identification: unused with DF (RFC 6864 §4.1)
        ip[field::FLAGS_FRAG].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
        ip[8] = TTL;
        ip[field::PROTOCOL] = IPPROTO_UDP;
        ip[field::IP_CHECKSUM].copy_from_slice(&[0, 0]);
        ip[field::SRC_IP].copy_from_slice(&self.src_ip.octets());
        ip[field::DST_IP].copy_from_slice(&self.dst_ip.octets());
        let ip_sum = Checksum::default().add(ip).finish();
        ip[field::IP_CHECKSUM].copy_from_slice(&ip_sum.to_be_bytes());

        let udp_len = (UDP_HLEN + payload_len) as u16;
        udp[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        udp[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[field::UDP_LEN].copy_from_slice(&udp_len.to_be_bytes());
        udp[field::UDP_CHECKSUM].copy_from_slice(&[0, 0]);
        let mut udp_sum = udp_checksum(self.src_ip, self.dst_ip, udp).finish();
        if udp_sum == 0 {
            // RFC 768: a computed zero is transmitted as all ones.
            udp_sum = 0xFFFF;
        }
        udp[field::UDP_CHECKSUM].copy_from_slice(&udp_sum.to_be_bytes());
        Ok(len)
    }
}

/// Whether `frame` is an untagged ARP frame (to be parsed by [`ArpRequest::parse`]).
pub fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= ETH_HLEN && be16(frame, field::ETHERTYPE) == ETHERTYPE_ARP
}

/// A received Ethernet/IPv4 ARP request (RFC 826): who asks, and for which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl ArpRequest {
    /// Checks the Ethernet and ARP headers of an ARP request; trailing padding is ignored.
    pub fn parse(frame: &[u8]) -> Result<Self, FrameDrop> {
        if !is_arp(frame) {
            return Err(FrameDrop::NotIpv4);
        }
        let arp = frame
            .get(ETH_HLEN..ETH_HLEN + ARP_LEN)
            .ok_or(FrameDrop::Truncated)?;
        if be16(arp, 0..2) != 1
            || be16(arp, 2..4) != ETHERTYPE_IPV4
            || arp[4] != 6
            || arp[5] != 4
            || be16(arp, 6..8) != 1
        {
            return Err(FrameDrop::NotArpRequest);
        }
        Ok(Self {
            sender_mac: mac(arp, 8..14),
            sender_ip: ipv4(arp, 14..18),
            target_ip: ipv4(arp, 24..28),
        })
    }

    /// Writes the reply (RFC 826 "Packet Reception": op 2, we are the sender, the asker the
    /// target) saying `mac` has the requested address, unicast to the asker; returns its length.
    pub fn emit_reply(&self, mac: [u8; 6], frame: &mut [u8]) -> Result<usize, FrameTooSmall> {
        let frame_len = frame.len();
        let frame = frame.get_mut(..ARP_FRAME_LEN).ok_or(FrameTooSmall {
            payload_len: ARP_LEN,
            frame_len,
        })?;
        frame[field::DST_MAC].copy_from_slice(&self.sender_mac);
        frame[field::SRC_MAC].copy_from_slice(&mac);
        frame[field::ETHERTYPE].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        let arp = &mut frame[ETH_HLEN..];
        arp[0..2].copy_from_slice(&1u16.to_be_bytes());
        arp[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        arp[4] = 6;
        arp[5] = 4;
        arp[6..8].copy_from_slice(&2u16.to_be_bytes());
        arp[8..14].copy_from_slice(&mac);
        arp[14..18].copy_from_slice(&self.target_ip.octets());
        arp[18..24].copy_from_slice(&self.sender_mac);
        arp[24..28].copy_from_slice(&self.sender_ip.octets());
        Ok(ARP_FRAME_LEN)
    }
}

/// Parses `bytes` as an ARP request (which must not panic, and whose reply must fit) and as a
/// UDP frame; if it is a UDP frame, emits the same headers and payload and parses again;
/// panics if the second parse differs from the first or emit fails. Input that does not parse is
/// fine (returns `false`). The entry point for the fuzz target.
pub fn roundtrip_check(bytes: &[u8]) -> bool {
    if let Ok(request) = ArpRequest::parse(bytes) {
        let mut reply = [0u8; ARP_FRAME_LEN];
        request
            .emit_reply([2, 0, 0, 0, 0, 1], &mut reply)
            .unwrap_or_else(|e| panic!("emit of an ARP reply failed: {e}"));
    }
    let Ok(first) = Udp4Frame::parse(bytes) else {
        return false;
    };
    let repr = Udp4Repr {
        dst_mac: first.dst_mac,
        src_mac: first.src_mac,
        src_ip: first.src_ip,
        dst_ip: first.dst_ip,
        src_port: first.src_port,
        dst_port: first.dst_port,
    };
    let mut buf = vec![0u8; Udp4Repr::frame_len(first.payload.len())];
    buf[UDP_PAYLOAD_OFFSET..].copy_from_slice(first.payload);
    let len = repr
        .emit(&mut buf, first.payload.len())
        .unwrap_or_else(|e| panic!("emit of a parsed frame failed: {e}"));
    let second = Udp4Frame::parse(&buf[..len])
        .unwrap_or_else(|e| panic!("emitted frame does not parse: {e:?}"));
    assert_eq!(first, second, "parse(emit(parse(x))) != parse(x)");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DHCP-DISCOVER-shaped frame, shortened, written by hand: broadcast, 0.0.0.0:68 to
    /// 255.255.255.255:67, 4 payload bytes, checksums computed independently (Python, RFC 1071).
    const CLIENT_FRAME: [u8; 46] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08,
        0x00, // eth
        0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x3a, 0xce, 0x00, 0x00, 0x00,
        0x00, 0xff, 0xff, 0xff, 0xff, // ipv4
        0x00, 0x44, 0x00, 0x43, 0x00, 0x0c, 0xf8, 0x4e, // udp
        0x01, 0x01, 0x06, 0x00, // payload
    ];

    fn repr() -> Udp4Repr {
        Udp4Repr {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_ip: Ipv4Addr::new(198, 18, 0, 1),
            dst_ip: Ipv4Addr::new(198, 18, 0, 2),
            src_port: 69,
            dst_port: 40_000,
        }
    }

    fn emitted(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 2048];
        frame[UDP_PAYLOAD_OFFSET..][..payload.len()].copy_from_slice(payload);
        let len = repr().emit(&mut frame, payload.len()).expect("fits");
        frame.truncate(len);
        frame
    }

    #[test]
    fn parses_a_reference_frame() {
        let parsed = Udp4Frame::parse(&CLIENT_FRAME).expect("valid frame");
        assert_eq!(parsed.src_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(parsed.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!((parsed.src_port, parsed.dst_port), (68, 67));
        assert_eq!(parsed.src_mac, [0x02, 0, 0, 0, 0, 0x01]);
        assert_eq!(parsed.payload, &[1, 1, 6, 0]);
    }

    #[test]
    fn emit_then_parse_round_trips_with_valid_checksums() {
        for len in [0usize, 1, 4, 5, 512, 1_468] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let frame = emitted(&payload);
            let parsed = Udp4Frame::parse(&frame).expect("own frame parses");
            assert_eq!(parsed.payload, payload.as_slice(), "payload of {len}");
            assert_eq!(parsed.src_ip, repr().src_ip);
            assert_eq!(parsed.dst_port, 40_000);
            assert_eq!(parsed.dst_mac, repr().dst_mac);
        }
    }

    #[test]
    fn round_trip_check_holds_for_the_fixtures() {
        assert!(roundtrip_check(&CLIENT_FRAME));
        assert!(roundtrip_check(&emitted(b"a reply")));
        assert!(!roundtrip_check(&CLIENT_FRAME[..20]));
    }

    /// An ARP request as Linux sends it: 198.18.0.2 (02:00:00:00:00:01) asks for 198.18.0.1.
    const ARP_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08,
        0x06, // eth
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 198, 18, 0, 2, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 1, // target
    ];

    #[test]
    fn arp_requests_are_parsed_and_answered() {
        let mut padded = ARP_REQUEST.to_vec();
        padded.resize(60, 0);
        let request = ArpRequest::parse(&padded).expect("request");
        assert_eq!(request.sender_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(request.target_ip, Ipv4Addr::new(198, 18, 0, 1));
        let ours = [0x02, 0, 0, 0, 0, 0x09];
        let mut reply = [0u8; 64];
        let len = request.emit_reply(ours, &mut reply).expect("fits");
        let want: [u8; 42] = [
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x09, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // reply
            0x02, 0x00, 0x00, 0x00, 0x00, 0x09, 198, 18, 0, 1, // we have 198.18.0.1
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 198, 18, 0, 2, // to the asker
        ];
        assert_eq!(&reply[..len], &want);
        assert!(request.emit_reply(ours, &mut [0u8; 41]).is_err());
    }

    #[test]
    fn other_arp_is_refused() {
        let mut reply = ARP_REQUEST;
        reply[21] = 2;
        assert_eq!(ArpRequest::parse(&reply), Err(FrameDrop::NotArpRequest));
        let mut ipv6 = ARP_REQUEST;
        ipv6[16..18].copy_from_slice(&[0x86, 0xDD]);
        assert_eq!(ArpRequest::parse(&ipv6), Err(FrameDrop::NotArpRequest));
        for len in 0..ARP_FRAME_LEN {
            assert!(
                ArpRequest::parse(&ARP_REQUEST[..len]).is_err(),
                "prefix {len}"
            );
        }
        assert_eq!(ArpRequest::parse(&CLIENT_FRAME), Err(FrameDrop::NotIpv4));
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut frame = CLIENT_FRAME.to_vec();
        frame.resize(60, 0);
        assert_eq!(Udp4Frame::parse(&frame).expect("padded").payload.len(), 4);
    }

    #[test]
    fn zero_udp_checksum_means_none() {
        let mut frame = CLIENT_FRAME;
        frame[40..42].copy_from_slice(&[0, 0]);
        assert!(Udp4Frame::parse(&frame).is_ok());
    }

    #[test]
    fn corrupted_frames_are_refused_with_their_reason() {
        type Corruption = fn(&mut Vec<u8>);
        let cases: [(Corruption, FrameDrop); 10] = [
            (|f| f.truncate(13), FrameDrop::Truncated),
            (|f| f.truncate(30), FrameDrop::Truncated),
            (
                |f| f[12..14].copy_from_slice(&[0x08, 0x06]),
                FrameDrop::NotIpv4,
            ),
            (
                |f| f[12..14].copy_from_slice(&[0x81, 0x00]),
                FrameDrop::Vlan,
            ),
            (|f| f[14] = 0x44, FrameDrop::BadIpHeader),
            (|f| f[14] = 0x65, FrameDrop::BadIpHeader),
            (|f| f[17] = 0xff, FrameDrop::Truncated),
            (|f| f[26] ^= 1, FrameDrop::BadIpChecksum),
            (|f| f[45] ^= 1, FrameDrop::BadUdpChecksum),
            (
                |f| f[38..40].copy_from_slice(&[0, 7]),
                FrameDrop::BadUdpLength,
            ),
        ];
        for (i, (corrupt, reason)) in cases.into_iter().enumerate() {
            let mut frame = CLIENT_FRAME.to_vec();
            corrupt(&mut frame);
            assert_eq!(Udp4Frame::parse(&frame), Err(reason), "case {i}");
        }
    }

    #[test]
    fn fragments_and_other_protocols_are_refused() {
        // Re-emit with the flags changed and a fixed-up IP checksum, so only the checked field
        // differs.
        let fix_ip_checksum = |f: &mut [u8]| {
            f[24..26].copy_from_slice(&[0, 0]);
            let sum = Checksum::default().add(&f[14..34]).finish();
            f[24..26].copy_from_slice(&sum.to_be_bytes());
        };
        let mut fragment = emitted(b"data");
        fragment[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // more fragments
        fix_ip_checksum(&mut fragment);
        assert_eq!(Udp4Frame::parse(&fragment), Err(FrameDrop::Fragment));

        let mut tcp = emitted(b"data");
        tcp[23] = 6;
        fix_ip_checksum(&mut tcp);
        assert_eq!(Udp4Frame::parse(&tcp), Err(FrameDrop::NotUdp));
    }

    #[test]
    fn every_prefix_of_a_frame_is_refused_without_panic() {
        let frame = emitted(b"a payload of some length");
        for len in 0..frame.len() {
            assert!(Udp4Frame::parse(&frame[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep (the tests' seeded RNG) over random frames and single-byte
        // flips of a valid one; the fuzz target covers the rest.
        let mut rng = stampede_lab::rng::TestRng::new(0x2545_F491_4F6C_DD1D);
        let mut next = || rng.next_u64();
        let valid = emitted(b"boot");
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = Udp4Frame::parse(&random);
            let mut flipped = valid.clone();
            let at = (next() as usize) % flipped.len();
            flipped[at] ^= (next() as u8) | 1;
            let _ = Udp4Frame::parse(&flipped);
        }
    }

    #[test]
    fn emit_refuses_a_frame_too_small() {
        let mut frame = [0u8; 50];
        assert_eq!(
            repr().emit(&mut frame, 10),
            Err(FrameTooSmall {
                payload_len: 10,
                frame_len: 50
            })
        );
        let mut huge = vec![0u8; 70_000];
        // 20 + 8 + 65_508 is one byte past the largest IPv4 total length.
        assert!(repr().emit(&mut huge, 65_507).is_ok());
        assert!(repr().emit(&mut huge, 65_508).is_err());
    }
}
