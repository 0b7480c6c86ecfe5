//! Stampede's XDP classifier: sorts boot traffic at the NIC and counts it per CPU.
//!
//! Walking-skeleton stage: every frame is passed on (`XDP_PASS`); the program only classifies and
//! counts. Parsing follows the eBPF verifier's rules: every read is preceded by a bounds check
//! against `data_end`, and header lengths taken from the packet are masked to a small range first.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use stampede_ebpf_common::{ClassCounter, XdpConfig, class};

#[map(name = "CLASS_COUNTERS")]
static CLASS_COUNTERS: PerCpuArray<ClassCounter> = PerCpuArray::with_max_entries(class::COUNT, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
/// 802.1Q customer tag and 802.1ad service tag: one tag is looked through.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
const TCP_MIN_HLEN: usize = 20;
/// More-fragments flag and fragment offset (RFC 791 §3.1): any of these bits set means the
/// datagram is a fragment, whose L4 header (if any) must not be trusted.
const IP_FRAG_MASK: u16 = 0x3FFF;

const PORT_DHCP_SERVER: u16 = 67;
const PORT_PROXY_DHCP: u16 = 4011;
const PORT_TFTP: u16 = 69;

#[xdp]
pub fn stampede_classify(ctx: XdpContext) -> u32 {
    let class = classify(&ctx);
    count(class, ctx.data_end() - ctx.data());
    xdp_action::XDP_PASS
}

/// Returns the bytes `[offset, offset + N)` of the frame, or `None` when they are not all there.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    let ptr = (start + offset) as *const [u8; N];
    // SAFETY: the check above proves `[start + offset, start + offset + N)` lies inside the frame,
    // and `[u8; N]` has alignment 1, so an unaligned read of it is valid.
    Some(unsafe { ptr.read_unaligned() })
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> u32 {
    classify_frame(ctx).unwrap_or(class::MALFORMED)
}

/// `None` means the frame is malformed (truncated or invalid header).
#[inline(always)]
fn classify_frame(ctx: &XdpContext) -> Option<u32> {
    let mut ethertype = be16(bytes_at::<2>(ctx, 12)?);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(bytes_at::<2>(ctx, ETH_HLEN + 2)?);
        l3 += VLAN_HLEN;
    }
    if ethertype != ETH_P_IP {
        return Some(class::OTHER);
    }

    let ip = bytes_at::<IPV4_MIN_HLEN>(ctx, l3)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    // Masked to 4 bits, so the verifier knows `ihl` is at most 60.
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    if ihl < IPV4_MIN_HLEN {
        return None;
    }
    let total_len = usize::from(be16([ip[2], ip[3]]));
    if total_len < ihl {
        return None;
    }
    if be16([ip[6], ip[7]]) & IP_FRAG_MASK != 0 {
        return Some(class::OTHER);
    }
    let l4 = l3 + ihl;
    match ip[9] {
        IPPROTO_UDP => {
            let udp = bytes_at::<UDP_HLEN>(ctx, l4)?;
            Some(match be16([udp[2], udp[3]]) {
                PORT_DHCP_SERVER => class::DHCP_SERVER,
                PORT_PROXY_DHCP => class::PROXY_DHCP,
                PORT_TFTP => class::TFTP,
                _ => class::OTHER,
            })
        }
        IPPROTO_TCP => {
            let tcp = bytes_at::<TCP_MIN_HLEN>(ctx, l4)?;
            let http_port = CONFIG.get(0).map_or(0, |c| c.http_port);
            let dport = be16([tcp[2], tcp[3]]);
            Some(if http_port != 0 && dport == http_port {
                class::HTTP
            } else {
                class::OTHER
            })
        }
        _ => Some(class::OTHER),
    }
}

#[inline(always)]
fn count(class: u32, len: usize) {
    if let Some(counter) = CLASS_COUNTERS.get_ptr_mut(class) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU's slot while the
        // program runs; per-CPU values are never touched concurrently by another CPU.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += len as u64;
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic; this is never executed.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Host builds (`cargo clippy --workspace`) type-check the program; it only runs in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
