//! Every default, with what it is tuned for.
use std::time::Duration;

/// Unprivileged, and leaves 80 to a web server that may share the host. iPXE and UEFI HTTP
/// Boot take any port in a URL.
pub const HTTP_PORT: u16 = 8080;
/// Loopback: the API has no authentication.
pub const API: &str = "127.0.0.1:7070";
/// The Debian/Ubuntu `ipxe` package's directory (undionly.kpxe, snponly.efi).
pub const IPXE_DIR: &str = "/usr/lib/ipxe";
/// Debian's Microsoft-signed shim (package `shim-signed`).
pub const SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
/// Debian's signed GRUB netboot image (package `grub-efi-amd64-signed`).
pub const GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
/// dnsmasq's default. Boot networks churn (machines reinstalled, replaced), and a short
/// lease returns their addresses to the pool within the hour.
pub const LEASE_TIME: Duration = Duration::from_secs(3600);
/// Below this, renewals (at half the lease) would come faster than a slow PXE boot.
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(60);
/// DHCP option 51 is 32-bit seconds; 0xffffffff means "infinite" (RFC 2131 §3.3).
pub const MAX_LEASE_TIME: Duration = Duration::from_secs(u32::MAX as u64 - 1);
/// 1500-byte Ethernet MTU minus IPv4 (20), UDP (8) and TFTP (4) headers: DATA never
/// fragments on a standard LAN.
pub const TFTP_MAX_BLKSIZE: u16 = 1468;
/// RFC 7440 windows: 16 × 1468 B ≈ 23 KB in flight per transfer, which thousands of
/// concurrent transfers can keep without overrunning shallow switch buffers, while still
/// cutting the ACK round trips 16-fold. The proto core caps it at 64.
pub const TFTP_MAX_WINDOWSIZE: u16 = 16;
/// Below Linux's default ephemeral port range (32768-60999, 28232 ports): each transfer
/// holds one port, and other sockets need some too.
pub const TFTP_MAX_TRANSFERS: usize = 16_384;
/// Generous for boot clients, which hold one or two connections each; a few thousand
/// machines booting at once stay under it, and so does a raised `ulimit -n`.
pub const HTTP_MAX_CONNECTIONS: usize = 16_384;
