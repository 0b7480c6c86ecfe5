//! What a multishot `IORING_OP_RECVMSG` needs and writes (io_uring_prep_recvmsg_multishot(3)):
//! the `msghdr` that sizes each buffer's regions, and at the start of each buffer the
//! `io_uring_recvmsg_out` header and the source address, in kernel layout. Shared by the UDP
//! worker and the client ring, which also send to addresses in that layout.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Space for the source address in each received buffer: a `sockaddr_in6` holds either family.
pub(super) const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();

/// `struct io_uring_recvmsg_out`: four u32s (include/uapi/linux/io_uring.h).
pub(super) const RECVMSG_OUT_LEN: usize = 16;

/// A socket address in kernel layout.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub(super) struct SockAddrBytes {
    pub(super) bytes: [u8; NAME_LEN],
    pub(super) len: u32,
}

impl SockAddrBytes {
    pub(super) fn new(address: SocketAddr) -> Self {
        let mut bytes = [0u8; NAME_LEN];
        let len = match address {
            SocketAddr::V4(a) => {
                bytes[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                bytes[2..4].copy_from_slice(&a.port().to_be_bytes());
                bytes[4..8].copy_from_slice(&a.ip().octets());
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                bytes[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                bytes[2..4].copy_from_slice(&a.port().to_be_bytes());
                bytes[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                bytes[8..24].copy_from_slice(&a.ip().octets());
                bytes[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            bytes,
            len: len as u32,
        }
    }

    /// Reads a `sockaddr_in`/`sockaddr_in6` as the kernel wrote it.
    pub(super) fn parse(bytes: &[u8]) -> Option<SocketAddr> {
        let family = i32::from(u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?));
        let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
        if family == libc::AF_INET {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        } else if family == libc::AF_INET6 {
            let flowinfo = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(bytes.get(24..28)?.try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope).into())
        } else {
            None
        }
    }
}

/// The `msghdr` of a multishot receive: only `msg_namelen` and `msg_controllen` matter (they
/// size the regions of each buffer); the pointers stay null.
pub(super) struct RecvHeader(libc::msghdr);

impl RecvHeader {
    /// Room for a source address and `control_len` bytes of control data in each buffer.
    pub(super) fn new(control_len: usize) -> Box<Self> {
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_namelen = NAME_LEN as u32;
        header.msg_controllen = control_len;
        Box::new(Self(header))
    }

    pub(super) fn msghdr(&self) -> &libc::msghdr {
        &self.0
    }
}

impl std::fmt::Debug for RecvHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHeader")
            .field("namelen", &self.0.msg_namelen)
            .field("controllen", &self.0.msg_controllen)
            .finish()
    }
}

// SAFETY: the msghdr holds only null pointers.
unsafe impl Send for RecvHeader {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_kernel_layout() {
        for address in [
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 69)),
            SocketAddr::from(SocketAddrV6::new(
                "2001:db8::1".parse().unwrap(),
                4011,
                0x12345,
                3,
            )),
        ] {
            let raw = SockAddrBytes::new(address);
            let len = raw.len as usize;
            assert_eq!(SockAddrBytes::parse(&raw.bytes[..len]), Some(address));
        }
        assert_eq!(SockAddrBytes::parse(&[0u8; 16]), None, "AF_UNSPEC");
        assert_eq!(SockAddrBytes::parse(&[2, 0, 0]), None, "short");
    }
}
