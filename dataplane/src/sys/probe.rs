//! What this kernel's io_uring can do, checked once at start-up (as monoio and the io-uring
//! crate's `Probe` do): opcodes from `IORING_REGISTER_PROBE`, and what no opcode probe shows
//! (multishot flags, buffer-ring registration) by trying it on loopback.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use io_uring::{cqueue, opcode, register::Probe, types};

use super::{
    buf_ring::BufRing,
    ring::{Ring, UringError},
    uring_udp::{UdpWorker, UdpWorkerConfig},
};

/// What this kernel's io_uring can do, found by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub recvmsg: bool,
    /// Multishot `RECVMSG` with provided buffers (6.0), checked by receiving a datagram.
    pub recvmsg_multishot: bool,
    pub sendmsg: bool,
    pub recv: bool,
    pub send: bool,
    pub accept: bool,
    /// Multishot `ACCEPT` (5.19), checked by accepting a connection.
    pub accept_multishot: bool,
    pub splice: bool,
    pub timeout: bool,
    pub timeout_remove: bool,
    pub async_cancel: bool,
    pub provide_buffers: bool,
    /// `IORING_REGISTER_PBUF_RING` (5.19), checked by registering one.
    pub buf_ring: bool,
    /// Zero-copy send (6.0). Optional: the engine falls back to plain send without it.
    pub send_zc: bool,
    /// Zero-copy sendmsg (6.1). Optional, like `send_zc`.
    pub sendmsg_zc: bool,
}

impl Capabilities {
    /// Names of the required capabilities that are missing; empty when the engine can run.
    pub fn missing(&self) -> Vec<&'static str> {
        let required = [
            (self.recvmsg, "RecvMsg"),
            (self.recvmsg_multishot, "RecvMsg (multishot)"),
            (self.sendmsg, "SendMsg"),
            (self.recv, "Recv"),
            (self.send, "Send"),
            (self.accept, "Accept"),
            (self.accept_multishot, "Accept (multishot)"),
            (self.splice, "Splice"),
            (self.timeout, "Timeout"),
            (self.timeout_remove, "TimeoutRemove"),
            (self.async_cancel, "AsyncCancel"),
            (self.provide_buffers, "ProvideBuffers"),
            (
                self.buf_ring,
                "buffer ring registration (IORING_REGISTER_PBUF_RING)",
            ),
        ];
        required
            .into_iter()
            .filter(|(present, _)| !present)
            .map(|(_, name)| name)
            .collect()
    }

    /// Names of the optional capabilities that are missing (the engine degrades without them).
    pub fn missing_optional(&self) -> Vec<&'static str> {
        [(self.send_zc, "SendZc"), (self.sendmsg_zc, "SendMsgZc")]
            .into_iter()
            .filter(|(present, _)| !present)
            .map(|(_, name)| name)
            .collect()
    }
}

/// Checks at start-up that this kernel's io_uring has everything the engine needs.
///
/// Opcodes come from `IORING_REGISTER_PROBE`; what an opcode probe cannot show (multishot flags,
/// buffer-ring registration) is checked by doing it once on loopback: a buffer ring is registered,
/// a UDP datagram sent to ourselves on 127.0.0.1 is received through multishot recvmsg, and a TCP
/// connection to ourselves is accepted through multishot accept.
pub fn probe() -> Result<Capabilities, UringError> {
    let ring = Ring::new(8, 16).map_err(UringError::io(
        "creating an io_uring (is io_uring disabled by the kernel.io_uring_disabled sysctl?)",
    ))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringError::io("IORING_REGISTER_PROBE"))?;
    let has = |code: u8| probe.is_supported(code);
    let mut caps = Capabilities {
        recvmsg: has(opcode::RecvMsg::CODE),
        sendmsg: has(opcode::SendMsg::CODE),
        recv: has(opcode::Recv::CODE),
        send: has(opcode::Send::CODE),
        accept: has(opcode::Accept::CODE),
        splice: has(opcode::Splice::CODE),
        timeout: has(opcode::Timeout::CODE),
        timeout_remove: has(opcode::TimeoutRemove::CODE),
        async_cancel: has(opcode::AsyncCancel::CODE),
        provide_buffers: has(opcode::ProvideBuffers::CODE),
        send_zc: has(opcode::SendZc::CODE),
        sendmsg_zc: has(opcode::SendMsgZc::CODE),
        ..Capabilities::default()
    };
    drop(ring);

    caps.buf_ring = BufRing::new(2, 64)
        .and_then(|bufs| {
            let ring = Ring::new(2, 4)?;
            bufs.register(&ring, 0)?;
            ring.submitter().unregister_buf_ring(0)
        })
        .is_ok();
    if caps.buf_ring && caps.recvmsg && caps.timeout && caps.async_cancel {
        caps.recvmsg_multishot = probe_recvmsg_multishot().is_ok();
    }
    if caps.accept && caps.async_cancel {
        caps.accept_multishot = probe_accept_multishot().unwrap_or(false);
    }
    let missing = caps.missing();
    if missing.is_empty() {
        Ok(caps)
    } else {
        Err(UringError::Unsupported { missing })
    }
}

fn probe_recvmsg_multishot() -> Result<(), UringError> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let socket = UdpSocket::bind(loopback).map_err(UringError::io("binding probe socket"))?;
    let address = socket
        .local_addr()
        .map_err(UringError::io("probe socket address"))?;
    let sender = UdpSocket::bind(loopback).map_err(UringError::io("binding probe socket"))?;
    let config = UdpWorkerConfig {
        ring_entries: 8,
        buffer_count: 2,
        buffer_size: 256,
        ..UdpWorkerConfig::default()
    };
    let mut worker = UdpWorker::new(socket, config)?;
    sender
        .send_to(b"probe", address)
        .map_err(UringError::io("sending probe datagram"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = false;
    while !got && Instant::now() < deadline {
        worker.run_once(Some(deadline), |d, _| got |= d.payload == b"probe")?;
    }
    if got {
        Ok(())
    } else {
        Err(UringError::Unsupported {
            missing: vec!["RecvMsg (multishot)"],
        })
    }
}

/// Arms a multishot accept on a loopback listener and connects to it once. A kernel without
/// `IORING_ACCEPT_MULTISHOT` fails the request with `EINVAL`.
fn probe_accept_multishot() -> Result<bool, UringError> {
    const ACCEPT: u64 = 1;
    const CANCEL: u64 = 2;
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(UringError::io("binding probe listener"))?;
    let mut ring = Ring::new(4, 8).map_err(UringError::io("creating an io_uring"))?;
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    // SAFETY: multishot accept points at no user memory (no address buffer); the listener fd
    // outlives the request because the ring is dropped (cancelling the request) before it.
    unsafe { ring.push(&accept)? };
    ring.submit(0)?;
    let _client = listener
        .local_addr()
        .and_then(std::net::TcpStream::connect)
        .map_err(UringError::io("connecting to the probe listener"))?;
    ring.submit(1)?;
    ring.reap();
    let cqe = ring.pop().ok_or_else(|| UringError::Io {
        op: "probing multishot accept",
        source: io::Error::other("no accept completion"),
    })?;
    if cqe.result < 0 {
        // EINVAL: the kernel does not know IORING_ACCEPT_MULTISHOT. The request is over.
        return Ok(false);
    }
    // SAFETY: a non-negative accept result is a new file descriptor the kernel gave us and
    // nobody else owns; OwnedFd closes it.
    drop(unsafe { OwnedFd::from_raw_fd(cqe.result) });
    if !cqueue::more(cqe.flags) {
        return Ok(false);
    }
    let cancel = opcode::AsyncCancel::new(ACCEPT).build().user_data(CANCEL);
    // SAFETY: async cancel refers to no memory.
    unsafe { ring.push(&cancel)? };
    // The cancel's completion and the accept's final one (ECANCELED).
    ring.submit(2)?;
    Ok(true)
}

/// Whether io_uring tests can run. Outside CI a kernel without the features is a skip; under
/// `CI=true` it is a failure, so a misconfigured CI machine cannot pass by skipping.
#[cfg(test)]
pub(super) fn uring_available() -> bool {
    match probe() {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping io_uring test: {e}");
            false
        }
        Err(e) => panic!("CI=true and io_uring is not usable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_succeeds_on_this_kernel() {
        match probe() {
            Ok(caps) => {
                assert!(caps.missing().is_empty(), "probe returned Ok with {caps:?}");
                if std::env::var("CI").as_deref() == Ok("true") {
                    assert!(
                        caps.missing_optional().is_empty(),
                        "CI kernels must support zero-copy send: missing {:?}",
                        caps.missing_optional()
                    );
                }
            }
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("io_uring probe failed (not CI, not failing): {e}");
            }
            Err(e) => panic!("io_uring probe failed: {e}"),
        }
    }

    #[test]
    fn missing_capabilities_are_all_named() {
        let caps = Capabilities {
            recvmsg_multishot: false,
            buf_ring: false,
            ..probe().unwrap_or(Capabilities {
                recvmsg: true,
                sendmsg: true,
                recv: true,
                send: true,
                accept: true,
                accept_multishot: true,
                splice: true,
                timeout: true,
                timeout_remove: true,
                async_cancel: true,
                provide_buffers: true,
                send_zc: true,
                sendmsg_zc: true,
                recvmsg_multishot: true,
                buf_ring: true,
            })
        };
        assert_eq!(
            caps.missing(),
            [
                "RecvMsg (multishot)",
                "buffer ring registration (IORING_REGISTER_PBUF_RING)"
            ]
        );
        let error = UringError::Unsupported {
            missing: caps.missing(),
        };
        assert_eq!(
            error.to_string(),
            "this kernel's io_uring lacks RecvMsg (multishot), buffer ring registration \
             (IORING_REGISTER_PBUF_RING)"
        );
    }
}
