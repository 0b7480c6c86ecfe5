//! Types shared by Stampede's XDP programs and the user-space loader.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and laid out without implicit padding, because the
//! same bytes are written by the eBPF program into a map and read by user space.
#![no_std]

/// Classes of traffic the XDP classifier counts, as indices into [`CLASS_COUNTERS_MAP`].
///
/// Kept as plain integers (not a Rust enum) because the eBPF side indexes a map with them and the
/// user side must never transmute map memory into an enum.
pub mod class {
    /// UDP to the DHCP server port, 67 (RFC 2131 §4.1).
    pub const DHCP_SERVER: u32 = 0;
    /// UDP to the PXE boot-server (ProxyDHCP) port, 4011 (PXE 2.1 §2.2.2).
    pub const PROXY_DHCP: u32 = 1;
    /// UDP to the TFTP server port, 69 (RFC 1350 §4).
    pub const TFTP: u32 = 2;
    /// TCP to the configured HTTP boot port.
    pub const HTTP: u32 = 3;
    /// Anything else: other protocols, other ports, IP fragments, non-IPv4.
    pub const OTHER: u32 = 4;
    /// Frames whose headers are truncated or invalid (e.g. IHL below 5, IP header past the end).
    pub const MALFORMED: u32 = 5;
    /// Number of classes; the size of the counter map.
    pub const COUNT: u32 = 6;

    /// Human names, in index order, as used in logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "dhcp_server",
        "proxy_dhcp",
        "tftp",
        "http",
        "other",
        "malformed",
    ];
}

/// Name of the per-CPU array of [`ClassCounter`], indexed by [`class`].
pub const CLASS_COUNTERS_MAP: &str = "CLASS_COUNTERS";
/// Name of the one-entry array holding the [`XdpConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the XDP program that classifies boot traffic.
pub const CLASSIFIER_PROGRAM: &str = "stampede_classify";

/// Per-CPU packet and byte counts for one traffic class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// Runtime configuration of the classifier, written by user space into [`CONFIG_MAP`] index 0.
///
/// All ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// TCP port HTTP boot is served on.
    pub http_port: u16,
    /// Explicit padding so the layout is identical on both sides and fully initialised.
    pub _pad: [u8; 6],
}

impl XdpConfig {
    /// Default HTTP boot port: 8080, so the appliance does not need port 80 by default.
    pub const DEFAULT_HTTP_PORT: u16 = 8080;

    pub const fn new(http_port: u16) -> Self {
        Self {
            http_port,
            _pad: [0; 6],
        }
    }
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self::new(Self::DEFAULT_HTTP_PORT)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `ClassCounter` is `repr(C)`, `Copy`, made of two `u64`s with no padding, and every
    // bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::ClassCounter {}
    // SAFETY: `XdpConfig` is `repr(C)`, `Copy`, a `u16` and an explicit `[u8; 6]` pad (8 bytes,
    // no implicit padding), and every bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::XdpConfig {}
}
