//! Stampede's data plane.
//!
//! - [`xdp`]: loads the XDP classifier built from `ebpf/xdp`, attaches it, reads its counters, and
//!   runs it on crafted frames with `BPF_PROG_TEST_RUN`.
//! - [`proto`]: the sans-IO protocol cores (DHCP, TFTP, HTTP, iPXE), re-exported.

pub mod boot;
pub mod config;
pub mod xdp;

pub use stampede_proto as proto;
