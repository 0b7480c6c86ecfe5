//! A bounded flood of DHCP DISCOVERs, for the tests that prove a flood dies in XDP and for the
//! benchmarks that measure how fast it does.
//!
//! Frames are written whole (Ethernet, IPv4, UDP, BOOTP) and sent through an `AF_PACKET` socket
//! bound to one interface, in batches with `sendmmsg(2)`: no routing, no IP address needed, and
//! every frame can carry its own source MAC. Each DISCOVER comes from a fresh random
//! locally-administered MAC (Ethernet source and `chaddr` alike), as from a rogue host or a
//! misbehaving switch replaying traffic; optionally every `hot_every`-th one comes from one of a
//! few fixed "hot" MACs instead, which exercises the per-MAC token bucket.
//!
//! The flood always stops by itself: at `max_packets` frames sent or after `max_duration`,
//! whichever comes first. Run it inside a lab namespace with [`crate::Netns::flood`].
use std::{
    io::IoSlice,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, LinkAddr, MsgFlags, MultiHeaders, SockFlag, SockType, bind, sendmmsg, socket,
    },
};

use crate::{LabError, Netns, Result, rng::TestRng};

/// Ethernet (14) + IPv4 (20) + UDP (8) + BOOTP (300: the 236-byte fixed header and 64 bytes of
/// options, the classic minimum BOOTP size of RFC 951).
pub const FRAME_LEN: usize = 14 + 20 + 8 + BOOTP_LEN;
const BOOTP_LEN: usize = 300;
const ETH_SRC: usize = 6;
const BOOTP: usize = 14 + 20 + 8;
const XID: usize = BOOTP + 4;
const CHADDR: usize = BOOTP + 28;
/// The vendor class a PXE BIOS client sends (PXE 2.1 §2.2.1), so a ProxyDHCP server would
/// answer every one of them: the flood looks like machines trying to boot.
const VENDOR_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

/// What to send, and the bounds that stop the flood.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// The interface to send from (inside the namespace the flood runs in).
    pub iface: String,
    /// Stop after this many frames.
    pub max_packets: u64,
    /// Stop after this long, even if fewer frames were sent.
    pub max_duration: Duration,
    /// MACs that send again and again; empty: every frame from a new MAC.
    pub hot_macs: Vec<[u8; 6]>,
    /// Every `hot_every`-th frame comes from the next hot MAC (round robin); 0: none do.
    pub hot_every: u64,
    /// Seed of the random MACs and transaction IDs: the same seed sends the same frames.
    pub seed: u64,
    /// Frames per `sendmmsg` call.
    pub batch: usize,
}

impl FloodConfig {
    /// `max_packets` DISCOVERs from random MACs out of `iface`, for at most `max_duration`.
    pub fn new(iface: &str, max_packets: u64, max_duration: Duration) -> Self {
        Self {
            iface: iface.to_owned(),
            max_packets,
            max_duration,
            hot_macs: Vec::new(),
            hot_every: 0,
            seed: 0x5eed,
            batch: 64,
        }
    }
}

/// What a flood did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FloodReport {
    /// Frames the kernel accepted for transmission.
    pub sent: u64,
    /// Of those, frames from the hot MACs.
    pub hot_sent: u64,
    /// Frames the kernel refused (`ENOBUFS`: the device's queue was full); not in `sent`.
    pub refused: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// Frames sent per second over the whole flood.
    pub fn packets_per_sec(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A DHCP DISCOVER frame (RFC 2131 §4.4.1) from `mac`, broadcast, with transaction ID `xid`.
pub fn discover_frame(mac: [u8; 6], xid: u32) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xFF; 6]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + BOOTP_LEN) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[16..20].copy_from_slice(&[255; 4]);
    let sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&68u16.to_be_bytes());
    udp[2..4].copy_from_slice(&67u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + BOOTP_LEN) as u16).to_be_bytes());
    // UDP checksum 0: none (RFC 768), which every DHCP server accepts over IPv4.
    let bootp = &mut f[BOOTP..];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[10] = 0x80; // broadcast flag: the client has no address yet
    let mut options = vec![99, 130, 83, 99, 53, 1, 1, 60, VENDOR_CLASS.len() as u8];
    options.extend_from_slice(VENDOR_CLASS);
    options.push(255);
    bootp[236..236 + options.len()].copy_from_slice(&options);
    set_source(&mut f, mac, xid);
    f
}

/// Rewrites the per-frame fields: Ethernet source, chaddr and xid (none is in the IPv4
/// checksum, and the UDP checksum is off, so nothing else changes).
fn set_source(frame: &mut [u8; FRAME_LEN], mac: [u8; 6], xid: u32) {
    frame[ETH_SRC..ETH_SRC + 6].copy_from_slice(&mac);
    frame[XID..XID + 4].copy_from_slice(&xid.to_be_bytes());
    frame[CHADDR..CHADDR + 6].copy_from_slice(&mac);
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn sys_error(what: String) -> impl FnOnce(Errno) -> LabError {
    move |errno| LabError::Spawn {
        command: what,
        source: errno.into(),
    }
}

/// The link-layer address of `iface` (its ifindex, for binding a packet socket), found without
/// `unsafe` through getifaddrs(3).
fn link_addr(iface: &str) -> Result<LinkAddr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(sys_error("getifaddrs".into()))?;
    for entry in addrs {
        if entry.interface_name != iface {
            continue;
        }
        if let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr()) {
            return Ok(*link);
        }
    }
    Err(LabError::BadName(iface.to_owned()))
}

/// Sends the flood from the calling thread's network namespace; returns when a bound is hit.
pub fn run(config: &FloodConfig) -> Result<FloodReport> {
    let batch = config.batch.clamp(1, 1024);
    let link = link_addr(&config.iface)?;
    // Protocol 0: this socket only sends, it receives nothing.
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys_error("socket(AF_PACKET)".into()))?;
    bind(fd.as_raw_fd(), &link).map_err(sys_error(format!("bind to {}", config.iface)))?;

    let mut rng = TestRng::new(config.seed | 1);
    let template = discover_frame([0x02, 0, 0, 0, 0, 0], 0);
    let mut frames = vec![template; batch];
    let mut headers = MultiHeaders::<LinkAddr>::preallocate(batch, None);
    let no_addresses: Vec<Option<LinkAddr>> = vec![None; batch];
    let mut report = FloodReport::default();
    let mut index = 0u64;
    let mut hot_index = 0usize;
    let start = Instant::now();
    while report.sent < config.max_packets && start.elapsed() < config.max_duration {
        let n = (config.max_packets - report.sent).min(batch as u64) as usize;
        let mut hot_in_batch = Vec::with_capacity(n);
        for frame in frames.iter_mut().take(n) {
            index += 1;
            let hot = !config.hot_macs.is_empty()
                && config.hot_every > 0
                && index.is_multiple_of(config.hot_every);
            let mac = if hot {
                hot_index = (hot_index + 1) % config.hot_macs.len();
                config.hot_macs[hot_index]
            } else {
                rng.mac()
            };
            hot_in_batch.push(hot);
            set_source(frame, mac, rng.next_u64() as u32);
        }
        let slices: Vec<[IoSlice<'_>; 1]> = frames[..n].iter().map(|f| [IoSlice::new(f)]).collect();
        let result = sendmmsg(
            fd.as_raw_fd(),
            &mut headers,
            &slices,
            &no_addresses[..n],
            [],
            MsgFlags::empty(),
        );
        match result {
            Ok(results) => {
                let done = results.count();
                report.sent += done as u64;
                report.hot_sent += hot_in_batch[..done].iter().filter(|h| **h).count() as u64;
                if done < n {
                    // The rest of the batch was refused by a full queue: counted, not resent.
                    report.refused += (n - done) as u64;
                }
            }
            Err(Errno::ENOBUFS | Errno::EAGAIN) => {
                report.refused += 1;
                std::thread::yield_now();
            }
            Err(errno) => return Err(sys_error(format!("sendmmsg on {}", config.iface))(errno)),
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

impl Netns {
    /// Runs a bounded DISCOVER flood from inside this namespace (see [`run`]).
    pub fn flood(&self, config: FloodConfig) -> Result<FloodReport> {
        self.in_namespace(move || run(&config))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_frame_has_consistent_lengths_and_a_valid_checksum() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = discover_frame(mac, 0xDEAD_BEEF);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[CHADDR..CHADDR + 6], &mac);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, FRAME_LEN - 14);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, FRAME_LEN - 34);
        assert_eq!(
            ipv4_checksum(&f[14..34]),
            0,
            "a header with its checksum sums to 0"
        );
        assert_eq!(&f[XID..XID + 4], &0xDEAD_BEEFu32.to_be_bytes());
        assert_eq!(&f[BOOTP + 236..BOOTP + 243], &[99, 130, 83, 99, 53, 1, 1]);
    }

    #[test]
    fn random_macs_are_unicast_locally_administered_and_distinct() {
        let mut rng = TestRng::new(7);
        let macs: std::collections::BTreeSet<_> = (0..10_000).map(|_| rng.mac()).collect();
        assert_eq!(macs.len(), 10_000);
        assert!(macs.iter().all(|m| m[0] & 0x03 == 0x02));
    }
}
