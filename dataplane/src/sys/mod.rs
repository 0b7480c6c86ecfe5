//! Kernel interfaces the safe engine code is built on.
//!
//! - `ring`: the io_uring core the workers below are built on: the one `unsafe` push,
//!   submitting, reaping, and one deadline timer per ring. Beside it `buf_ring` (provided-buffer
//!   rings) and `recvmsg` (what a multishot receive writes, socket addresses in kernel layout).
//! - [`uring`]: what the engine starts from: [`uring::probe`] (this kernel's io_uring
//!   capabilities, from `probe`) and the UDP worker, one io_uring per worker thread (multishot UDP
//!   receive from a provided-buffer ring, datagram send), behind a safe [`uring::UdpWorker`]
//!   (from `uring_udp`).
//! - [`uring_tcp`]: one io_uring per worker driving a TCP listener (multishot accept with
//!   `SO_REUSEPORT`) and its connections (receive, vectored send of head and shared body,
//!   close after every operation completed), behind a safe [`uring_tcp::TcpWorker`].
//! - [`uring_client`]: one io_uring driving many client sockets (UDP and outgoing TCP, opened
//!   and closed as it goes), for the load generator, behind a safe [`uring_client::ClientRing`].
//! - `mmap`: memory mappings, unmapped on drop, for the buffer rings, the AF_XDP UMEM and
//!   rings, and sealed files.
//! - [`memfile`]: sealed memfds holding boot files, mapped as [`bytes::Bytes`] and sent with
//!   `sendfile`.
//! - [`afxdp`]: one AF_XDP socket (UMEM, fill/completion/RX/TX rings) bound to one RX queue,
//!   behind a safe [`afxdp::XskSocket`].
pub mod afxdp;
mod buf_ring;
pub mod memfile;
mod mmap;
mod probe;
mod recvmsg;
mod ring;
pub mod uring;
pub mod uring_client;
pub mod uring_tcp;
mod uring_udp;
