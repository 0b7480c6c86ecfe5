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

/// Why the XDP program dropped a frame, as indices into [`DROP_COUNTERS_MAP`].
///
/// Every `XDP_DROP` is counted under exactly one reason (STYLE principle 4: an operator must be
/// able to see why a machine did not boot). Plain integers for the same reason as [`class`].
pub mod drop_reason {
    /// A frame to a boot port (UDP 67, 4011, 69) whose lengths do not add up: IPv4 total length
    /// past the end of the frame, UDP length below 8 or past the IPv4 payload, a DHCP body shorter
    /// than the BOOTP fixed header (RFC 2131 §2, 236 bytes), a TFTP datagram without an opcode.
    pub const MALFORMED_BOOT: u32 = 0;
    /// DHCP or ProxyDHCP from a MAC whose token bucket is empty.
    pub const DHCP_RATE_LIMITED: u32 = 1;
    /// DHCP or ProxyDHCP from a MAC on the deny list.
    pub const DENIED_MAC: u32 = 2;
    /// DHCP or ProxyDHCP from a MAC not on the allow list while "known machines only" is on.
    pub const UNKNOWN_MAC: u32 = 3;
    /// A TFTP read request (RRQ to port 69) beyond the admission limit.
    pub const TFTP_ADMISSION: u32 = 4;
    /// Number of reasons; the size of the drop counter map.
    pub const COUNT: u32 = 5;

    /// Human names, in index order, as used in logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "malformed_boot",
        "dhcp_rate_limited",
        "denied_mac",
        "unknown_mac",
        "tftp_admission",
    ];
}

/// Name of the per-CPU array of [`ClassCounter`], indexed by [`class`].
pub const CLASS_COUNTERS_MAP: &str = "CLASS_COUNTERS";
/// Name of the per-CPU array of [`ClassCounter`] for dropped frames, indexed by [`drop_reason`].
pub const DROP_COUNTERS_MAP: &str = "DROP_COUNTERS";
/// Name of the LRU hash of per-MAC DHCP [`TokenBucket`]s, keyed by [`MacKey`].
pub const DHCP_BUCKETS_MAP: &str = "DHCP_BUCKETS";
/// Name of the one-entry array holding the global TFTP admission [`TokenBucket`].
pub const TFTP_ADMISSION_MAP: &str = "TFTP_ADMISSION";
/// Name of the hash of denied MACs ([`MacKey`] to a `u8` that is always 1).
pub const DENY_MACS_MAP: &str = "DENY_MACS";
/// Name of the hash of known MACs ([`MacKey`] to a `u8` that is always 1).
pub const ALLOW_MACS_MAP: &str = "ALLOW_MACS";

/// Name of the ring buffer of [`Refusal`]s: DHCP and ProxyDHCP frames dropped by MAC policy
/// (deny list, known-only mode), at most one per MAC every [`REFUSAL_SAMPLE_INTERVAL_NS`], so
/// user space can file them under the machine (issue 18). A full ring loses samples, never
/// frames: the drop counters count every one.
pub const REFUSALS_MAP: &str = "REFUSALS";
/// Bytes of [`REFUSALS_MAP`]: 4096 records of 16 bytes (8 of ring header, 8 of [`Refusal`]),
/// a second of refused machines at a rack-row scale between two reads by user space.
pub const REFUSALS_RING_BYTES: u32 = 64 * 1024;
/// Name of the LRU hash of when each MAC's last refusal was sampled ([`MacKey`] to
/// `bpf_ktime_get_ns` nanoseconds).
pub const REFUSAL_SAMPLES_MAP: &str = "REFUSAL_SAMPLES";
/// Capacity of [`REFUSAL_SAMPLES_MAP`]: an evicted MAC is only sampled again sooner.
pub const REFUSAL_SAMPLES_CAPACITY: u32 = 16_384;
/// At most one sample per MAC per second: a looping client is seen, a flood is not copied.
pub const REFUSAL_SAMPLE_INTERVAL_NS: u64 = 1_000_000_000;

/// One sampled refusal in [`REFUSALS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// The machine: its chaddr, or the frame's Ethernet source (see the program's `dhcp_drop`).
    pub mac: [u8; 6],
    /// A [`drop_reason`] (`DENIED_MAC` or `UNKNOWN_MAC`), as a byte.
    pub reason: u8,
    /// Explicit padding so the record is fully initialised.
    pub _pad: u8,
}

/// Capacity of [`DHCP_BUCKETS_MAP`]: the least recently seen MAC is evicted beyond it, which only
/// hands that MAC a full bucket when it comes back.
pub const DHCP_BUCKETS_CAPACITY: u32 = 65_536;
/// Capacity of [`DENY_MACS_MAP`].
pub const DENY_MACS_CAPACITY: u32 = 16_384;
/// Capacity of [`ALLOW_MACS_MAP`]: the known-machines inventory.
pub const ALLOW_MACS_CAPACITY: u32 = 65_536;
/// Name of the one-entry array holding the [`XdpConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the XDP program that classifies boot traffic.
pub const CLASSIFIER_PROGRAM: &str = "stampede_xdp";

/// Name of the XSKMAP of AF_XDP sockets, indexed by RX queue (one socket per queue).
pub const XSKS_MAP: &str = "XSKS";
/// Capacity of [`XSKS_MAP`]: the most RX queues the AF_XDP path serves.
pub const XSKS_CAPACITY: u32 = 64;
/// Name of the one-entry array holding the [`AfXdpSteering`].
///
/// A map of its own rather than fields of [`XdpConfig`]: the drop policy and the steering are
/// written by different parts of the loader, and [`XdpConfig`]'s layout stays as it is.
pub const AFXDP_MAP: &str = "AFXDP";
/// Name of the array, indexed by UDP port, marking the AF_XDP path's live TFTP transfer ports
/// (non-zero: steered). User space marks a port when a transfer takes it and clears it when the
/// transfer ends, so each transfer has a port drawn from all unprivileged ports (RFC 1350's
/// random TID, issue 19) rather than from a fixed range an attacker could guess within.
pub const AFXDP_PORTS_MAP: &str = "AFXDP_PORTS";
/// Capacity of [`AFXDP_PORTS_MAP`]: one entry per UDP port.
pub const AFXDP_PORTS_CAPACITY: u32 = 65_536;
/// Name of the per-CPU array of [`ClassCounter`] for steering outcomes, indexed by [`steer`].
pub const STEER_COUNTERS_MAP: &str = "STEER_COUNTERS";

/// What became of an admitted boot frame while the AF_XDP path is on, as indices into
/// [`STEER_COUNTERS_MAP`].
pub mod steer {
    /// Redirected to the AF_XDP socket of the frame's RX queue.
    pub const REDIRECTED: u32 = 0;
    /// No socket is bound to the frame's RX queue: passed to the kernel (`XDP_PASS`) instead.
    pub const NO_SOCKET: u32 = 1;
    /// Number of outcomes; the size of the steering counter map.
    pub const COUNT: u32 = 2;

    /// Human names, in index order, as used in logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = ["redirected", "no_socket"];
}

/// Whether admitted boot frames go to AF_XDP sockets, and which address's ARP requests the
/// AF_XDP path answers. Written by user space into [`AFXDP_MAP`] index 0; all zero (the initial
/// value) means off. The path's TFTP transfer ports are in [`AFXDP_PORTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfXdpSteering {
    /// Non-zero: redirect admitted boot frames to [`XSKS_MAP`].
    pub enabled: u32,
    /// The server's IPv4 address, in network order: ARP requests for it are steered too, so
    /// the AF_XDP path answers them. All zero: ARP stays with the kernel.
    pub server_ip: [u8; 4],
}

/// Per-CPU packet and byte counts for one traffic class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// A MAC address as a hash map key: six octets and explicit zero padding, so the key bytes the
/// kernel hashes are fully initialised on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub octets: [u8; 6],
    pub _pad: [u8; 2],
}

impl MacKey {
    pub const fn new(octets: [u8; 6]) -> Self {
        Self {
            octets,
            _pad: [0; 2],
        }
    }
}

/// A token bucket as kept in a map: whole tokens and the `bpf_ktime_get_ns` time up to which
/// refills have been credited. `last_ns == 0` means "never used": the bucket starts full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Drop policy of the XDP program, part of [`XdpConfig`] so user space can change it live.
///
/// Rates are tokens per second; a rate of 0 means the bucket never refills (only `burst` frames
/// ever pass), which tests use to be independent of time. A burst of 0 drops everything it
/// governs; the loader refuses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpPolicy {
    /// DHCP and ProxyDHCP messages per second per MAC, once the burst is spent.
    pub dhcp_rate_per_sec: u32,
    /// DHCP and ProxyDHCP messages a MAC may send back to back.
    pub dhcp_burst: u32,
    /// TFTP read requests per second admitted in total (all clients, all CPUs).
    pub tftp_rate_per_sec: u32,
    /// TFTP read requests admitted back to back in total.
    pub tftp_burst: u32,
    /// Non-zero: DHCP and ProxyDHCP only from MACs on the allow list ("known machines only").
    pub known_only: u32,
}

impl XdpPolicy {
    /// 8 DHCP messages per second per MAC after a burst of 16. Tuned for real clients: a PXE ROM
    /// sends DISCOVER/REQUEST with 4, 8, 16, 32 s back-off (PXE 2.1), and a full
    /// DORA plus a ProxyDHCP exchange is about 6 messages, so even a client that restarts its
    /// boot several times in a second stays inside the burst; a flood from one MAC does not.
    pub const DEFAULT_DHCP_RATE_PER_SEC: u32 = 8;
    pub const DEFAULT_DHCP_BURST: u32 = 16;
    /// 10,000 new TFTP transfers per second after a burst of 20,000: far above what the TFTP
    /// workers serve, so by default the limit only stops floods, never a booting stampede.
    pub const DEFAULT_TFTP_RATE_PER_SEC: u32 = 10_000;
    pub const DEFAULT_TFTP_BURST: u32 = 20_000;

    /// The permissive defaults: generous rate limits, known-only mode off.
    pub const fn permissive() -> Self {
        Self {
            dhcp_rate_per_sec: Self::DEFAULT_DHCP_RATE_PER_SEC,
            dhcp_burst: Self::DEFAULT_DHCP_BURST,
            tftp_rate_per_sec: Self::DEFAULT_TFTP_RATE_PER_SEC,
            tftp_burst: Self::DEFAULT_TFTP_BURST,
            known_only: 0,
        }
    }
}

impl Default for XdpPolicy {
    fn default() -> Self {
        Self::permissive()
    }
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
    pub _pad: [u8; 2],
    pub policy: XdpPolicy,
}

impl XdpConfig {
    /// Default HTTP boot port: 8080, so the appliance does not need port 80 by default.
    pub const DEFAULT_HTTP_PORT: u16 = 8080;

    /// The given HTTP port and the permissive [`XdpPolicy`].
    pub const fn new(http_port: u16) -> Self {
        Self {
            http_port,
            _pad: [0; 2],
            policy: XdpPolicy::permissive(),
        }
    }

    pub const fn with_policy(self, policy: XdpPolicy) -> Self {
        Self { policy, ..self }
    }
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self::new(Self::DEFAULT_HTTP_PORT)
    }
}

// The layouts both sides rely on: no implicit padding anywhere.
const _: () = assert!(core::mem::size_of::<XdpPolicy>() == 20);
const _: () = assert!(core::mem::size_of::<XdpConfig>() == 24);
const _: () = assert!(core::mem::size_of::<MacKey>() == 8);
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);
const _: () = assert!(core::mem::size_of::<AfXdpSteering>() == 8);
const _: () = assert!(core::mem::size_of::<Refusal>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `ClassCounter` is `repr(C)`, `Copy`, made of two `u64`s with no padding, and every
    // bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::ClassCounter {}
    // SAFETY: `XdpConfig` is `repr(C)`, `Copy`, a `u16`, an explicit `[u8; 2]` pad and an
    // `XdpPolicy` (align 4, so 24 bytes with no implicit padding), and every bit pattern is valid.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: `XdpPolicy` is `repr(C)`, `Copy`, five `u32`s with no padding, and every bit
    // pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::XdpPolicy {}
    // SAFETY: `MacKey` is `repr(C)`, `Copy`, eight `u8`s (the padding is an explicit field), and
    // every bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::MacKey {}
    // SAFETY: `TokenBucket` is `repr(C)`, `Copy`, two `u64`s with no padding, and every bit
    // pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::TokenBucket {}
    // SAFETY: `AfXdpSteering` is `repr(C)`, `Copy`, a `u32`, two `u16`s and a `[u8; 4]` (12
    // bytes, no padding), and every bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::AfXdpSteering {}
}
