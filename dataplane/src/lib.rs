//! Stampede's data plane.
//!
//! - [`xdp`]: loads the XDP classifier built from `ebpf/xdp`, attaches it, reads its counters, and
//!   runs it on crafted frames with `BPF_PROG_TEST_RUN`.
//! - [`config`]: the appliance's TOML configuration, validated into domain types; quick mode.
//! - [`boot`]: the boot plan: the protocol cores configured from the appliance config.
//! - [`engine`]: the worker threads driving the protocol cores: UDP (DHCP, TFTP) on io_uring or
//!   AF_XDP, and the HTTP boot server ([`engine::http`]), one ring per worker thread.
//! - [`swarm`]: each root's BitTorrent swarm as the HTTP workers see it: the tracker and the
//!   roots' torrents.
//! - [`store`]: boot files from a served directory and a content-addressed store, read once and
//!   shared by every transfer.
//! - [`sys`]: the only place with `unsafe`: io_uring rings and their buffers, AF_XDP sockets and
//!   their UMEM.
//! - [`proto`]: the sans-IO protocol cores (DHCP, TFTP, HTTP, iPXE), re-exported.

pub mod boot;
pub mod config;
pub mod engine;
pub mod store;
pub mod swarm;
// The syscall layer: io_uring submission and the memory the kernel writes into cannot be expressed
// in safe Rust. Every unsafe block inside carries a `// SAFETY:` comment
// (`clippy::undocumented_unsafe_blocks`); everything outside `sys` stays unsafe-free (the crate
// denies `unsafe_code`).
#[expect(
    unsafe_code,
    reason = "io_uring ring memory, SQE submission and AF_XDP rings/UMEM need unsafe; confined to this module"
)]
pub mod sys;
pub mod xdp;

pub use stampede_proto as proto;
