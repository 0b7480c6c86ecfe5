//! Kernel interfaces the safe engine code is built on.
//!
//! - [`uring`]: one io_uring per worker: probing, a provided-buffer ring, multishot UDP receive,
//!   datagram send and deadline timers, behind a safe [`uring::UdpWorker`].
pub mod uring;
