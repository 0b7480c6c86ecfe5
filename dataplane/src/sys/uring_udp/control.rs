//! Control data (cmsg(3)) the UDP worker asks of its sockets and reads with each datagram: the
//! kernel's drop counter (`SO_RXQ_OVFL`) and the destination address (`IP_PKTINFO`).
use std::{
    io,
    net::{Ipv4Addr, UdpSocket},
};

use nix::sys::socket::{setsockopt, sockopt};

use crate::sys::ring::UringError;

/// `CMSG_SPACE(sizeof(u32))` for the `SO_RXQ_OVFL` drop counter, plus
/// `CMSG_SPACE(sizeof(struct in_pktinfo))` for `IP_PKTINFO` (the address a datagram was sent to:
/// a DHCP server must tell a broadcast from a unicast, RFC 2131 §4.3.2).
pub(super) const CONTROL_LEN: usize = cmsg_align(size_of::<libc::cmsghdr>())
    + cmsg_align(size_of::<u32>())
    + cmsg_align(size_of::<libc::cmsghdr>())
    + cmsg_align(size_of::<libc::in_pktinfo>());

const fn cmsg_align(len: usize) -> usize {
    (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

/// The control data every socket of a worker delivers with its datagrams.
pub(super) fn enable_control_data(socket: &UdpSocket) -> Result<(), UringError> {
    enable_drop_counter(socket).map_err(UringError::io("setting SO_RXQ_OVFL"))?;
    if socket.local_addr().is_ok_and(|a| a.is_ipv4()) {
        enable_pktinfo(socket).map_err(UringError::io("setting IP_PKTINFO"))?;
    }
    Ok(())
}

/// Asks the kernel to attach its count of dropped datagrams to each one received
/// (`SO_RXQ_OVFL`, socket(7)).
fn enable_drop_counter(socket: &UdpSocket) -> io::Result<()> {
    Ok(setsockopt(socket, sockopt::RxqOvfl, &1)?)
}

/// Asks the kernel for each datagram's destination address (`IP_PKTINFO`, ip(7)).
fn enable_pktinfo(socket: &UdpSocket) -> io::Result<()> {
    Ok(setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?)
}

/// What the control messages of one datagram said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Control {
    /// `SO_RXQ_OVFL`: datagrams the socket dropped so far.
    pub(super) rxq_overflow: Option<u32>,
    /// `IP_PKTINFO`'s `ipi_addr`: the destination address in the IP header.
    pub(super) destination: Option<Ipv4Addr>,
}

/// Reads the control messages (cmsg(3)) the kernel wrote. Parsed by hand from bytes, not through
/// `CMSG_*` pointer walks, so no unsafe is needed and a short buffer cannot be over-read.
pub(super) fn parse_control(control: &[u8]) -> Control {
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } (glibc and musl).
    const W: usize = size_of::<usize>();
    let header = size_of::<libc::cmsghdr>();
    let mut out = Control::default();
    let mut rest = control;
    while rest.len() >= header {
        let word = |at: usize, n: usize| rest.get(at..at + n);
        let (Some(len), Some(level), Some(kind)) = (word(0, W), word(W, 4), word(W + 4, 4)) else {
            break;
        };
        let len = usize::from_ne_bytes(len.try_into().unwrap_or([0; W]));
        let level = i32::from_ne_bytes(level.try_into().unwrap_or([0; 4]));
        let kind = i32::from_ne_bytes(kind.try_into().unwrap_or([0; 4]));
        if len < header || len > rest.len() {
            break;
        }
        let data = &rest[header..len];
        if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL && data.len() >= 4 {
            out.rxq_overflow = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
        }
        // struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
        if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO && data.len() >= 12 {
            out.destination = Some(Ipv4Addr::new(data[8], data[9], data[10], data[11]));
        }
        rest = &rest[cmsg_align(len).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counter_is_found_in_control_data() {
        let mut control = vec![0u8; CONTROL_LEN];
        let header = size_of::<libc::cmsghdr>();
        control[..8].copy_from_slice(&(header + 4).to_ne_bytes());
        control[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        control[12..16].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        control[16..20].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(parse_control(&control).rxq_overflow, Some(77));
        assert_eq!(parse_control(&control[..10]).rxq_overflow, None, "short");
        assert_eq!(parse_control(&[]).rxq_overflow, None, "absent");
        control[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(
            parse_control(&control).rxq_overflow,
            None,
            "length past the end"
        );
    }
}
