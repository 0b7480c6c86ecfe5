//! The io_uring entry points the engine starts from, under the path they have always had:
//! [`probe`] (what this kernel can do), the UDP worker ([`UdpWorker`], from `sys::uring_udp`)
//! and the error type of every ring ([`UringError`], from the ring core, `sys::ring`). The TCP
//! worker and the client ring are [`super::uring_tcp`] and [`super::uring_client`].
pub use super::{
    probe::{Capabilities, probe},
    ring::UringError,
    uring_udp::{Outbox, Received, RunReport, UdpWorker, UdpWorkerConfig, WorkerStats},
};
