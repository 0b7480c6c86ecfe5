//! Hand-built Ethernet frames for the XDP tests: each builder writes exactly the bytes a header
//! layout says, so a test can corrupt one field at a time.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub const SRC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const BROADCAST: [u8; 6] = [0xFF; 6];

/// Ethernet header from [`SRC_MAC`] with an optional 802.1Q/802.1ad tag.
pub fn ethernet(tag: Option<(u16, u16)>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    ethernet_from(SRC_MAC, tag, ethertype, payload)
}

/// Ethernet header from `src` with an optional 802.1Q/802.1ad tag.
pub fn ethernet_from(
    src: [u8; 6],
    tag: Option<(u16, u16)>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&src);
    if let Some((tpid, vid)) = tag {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header (with `options` appended, IHL set from their length) followed by `payload`.
pub fn ipv4(proto: u8, flags_frag: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options come in 32-bit words");
    let ihl = 5 + options.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | ihl as u8;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[0, 0, 0, 0]);
    h[16..20].copy_from_slice(&[255, 255, 255, 255]);
    h.extend_from_slice(options);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A bare TCP SYN header (20 bytes).
pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

/// A minimal BOOTP/DHCP DISCOVER body (fixed header + magic cookie + option 53 + end).
pub fn dhcp_discover() -> Vec<u8> {
    dhcp_discover_relayed(SRC_MAC, [0; 4])
}

/// A DISCOVER body for client `chaddr`, relayed by `giaddr` (all zero: not relayed).
pub fn dhcp_discover_relayed(chaddr: [u8; 6], giaddr: [u8; 4]) -> Vec<u8> {
    let mut d = vec![0u8; 236];
    d[0] = 1;
    d[1] = 1;
    d[2] = 6;
    d[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    d[10] = 0x80;
    d[24..28].copy_from_slice(&giaddr);
    d[28..34].copy_from_slice(&chaddr);
    d.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
    d
}

/// A complete Ethernet/IPv4/UDP DHCP DISCOVER from `mac` (Ethernet source and chaddr) to `dport`.
pub fn discover_frame(mac: [u8; 6], tag: Option<(u16, u16)>, dport: u16) -> Vec<u8> {
    let body = dhcp_discover_relayed(mac, [0; 4]);
    ethernet_from(
        mac,
        tag,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(68, dport, &body)),
    )
}

/// A TFTP read request body (RFC 1350 §5): opcode 1, file name, mode "octet".
pub fn tftp_rrq(file: &str) -> Vec<u8> {
    let mut t = vec![0, 1];
    t.extend_from_slice(file.as_bytes());
    t.push(0);
    t.extend_from_slice(b"octet\0");
    t
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 "more fragments" flag.
pub const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag (not a fragment).
pub const IP_DF: u16 = 0x4000;

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}
