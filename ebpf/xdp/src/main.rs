//! Stampede's XDP program: sorts boot traffic at the NIC, counts it per CPU, and drops what must
//! not reach user space, each drop counted under a reason.
//!
//! Every frame is counted by class whether it passes or not; a dropped frame is also counted under
//! its [`drop_reason`]. What is dropped (everything else is passed, `XDP_PASS`):
//! - boot frames (UDP to 67, 4011, 69) whose lengths do not add up (`MALFORMED_BOOT`);
//! - DHCP/ProxyDHCP from a denied MAC, or from an unknown MAC in known-only mode;
//! - DHCP/ProxyDHCP from a MAC whose token bucket is empty;
//! - TFTP read requests beyond the global admission bucket.
//!
//! Frames whose Ethernet/IPv4/L4 headers cannot be read (class `MALFORMED`) are *passed*, as
//! before: they are not known to be boot traffic, and the kernel's IPv4 input drops them anyway
//! while counting them in its own statistics (`IpInHdrErrors`, `IpInTruncatedPkts`), which an
//! operator already watches. Fragments are never parsed as UDP, so never dropped.
//!
//! With the AF_XDP path on (the `AFXDP` map), admitted boot frames (UDP to 67, 4011, 69 and to
//! the AF_XDP path's TFTP transfer ports), untagged, are redirected to the AF_XDP socket bound to the
//! frame's RX queue, and so are ARP requests for the server's address; when no socket is bound
//! there, they are passed to the kernel as before.
//!
//! Parsing follows the eBPF verifier's rules: every read is preceded by a bounds check against
//! `data_end`, and header lengths taken from the packet are masked to a small range first.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::num::NonZeroU64;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, XskMap},
    programs::XdpContext,
};
use stampede_ebpf_common::{
    AFXDP_PORTS_CAPACITY, ALLOW_MACS_CAPACITY, AfXdpSteering, ClassCounter, DENY_MACS_CAPACITY,
    DHCP_BUCKETS_CAPACITY, MacKey, REFUSAL_SAMPLE_INTERVAL_NS, REFUSAL_SAMPLES_CAPACITY,
    REFUSALS_RING_BYTES, Refusal, TokenBucket, XSKS_CAPACITY, XdpConfig, class, drop_reason, steer,
};

#[map(name = "CLASS_COUNTERS")]
static CLASS_COUNTERS: PerCpuArray<ClassCounter> = PerCpuArray::with_max_entries(class::COUNT, 0);

#[map(name = "DROP_COUNTERS")]
static DROP_COUNTERS: PerCpuArray<ClassCounter> =
    PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// Per-MAC DHCP buckets. Shared by all CPUs (not per-CPU, or the burst would multiply by the CPU
/// count); two CPUs updating one MAC's bucket at once may lose an update, which at worst lets a
/// frame more or less through, so no lock is taken.
#[map(name = "DHCP_BUCKETS")]
static DHCP_BUCKETS: LruHashMap<MacKey, TokenBucket> =
    LruHashMap::with_max_entries(DHCP_BUCKETS_CAPACITY, 0);

/// One global bucket for TFTP read requests, with the same benign races as `DHCP_BUCKETS`.
#[map(name = "TFTP_ADMISSION")]
static TFTP_ADMISSION: Array<TokenBucket> = Array::with_max_entries(1, 0);

#[map(name = "AFXDP")]
static AFXDP: Array<AfXdpSteering> = Array::with_max_entries(1, 0);

/// The AF_XDP path's live TFTP transfer ports, indexed by port: non-zero while a transfer of
/// the path runs from it. An array, so the lookup is one bounds-checked index, no hashing.
#[map(name = "AFXDP_PORTS")]
static AFXDP_PORTS: Array<u8> = Array::with_max_entries(AFXDP_PORTS_CAPACITY, 0);

/// AF_XDP sockets by RX queue. A socket only receives frames of the queue it is bound to, so the
/// index is the frame's `rx_queue_index`.
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(XSKS_CAPACITY, 0);

#[map(name = "STEER_COUNTERS")]
static STEER_COUNTERS: PerCpuArray<ClassCounter> = PerCpuArray::with_max_entries(steer::COUNT, 0);

#[map(name = "DENY_MACS")]
static DENY_MACS: HashMap<MacKey, u8> = HashMap::with_max_entries(DENY_MACS_CAPACITY, 0);

#[map(name = "ALLOW_MACS")]
static ALLOW_MACS: HashMap<MacKey, u8> = HashMap::with_max_entries(ALLOW_MACS_CAPACITY, 0);

/// Sampled refusals for user space, which files them as boot events.
#[map(name = "REFUSALS")]
static REFUSALS: RingBuf = RingBuf::with_byte_size(REFUSALS_RING_BYTES, 0);

/// When each MAC's last refusal was sampled; races between CPUs at worst sample twice.
#[map(name = "REFUSAL_SAMPLES")]
static REFUSAL_SAMPLES: LruHashMap<MacKey, u64> =
    LruHashMap::with_max_entries(REFUSAL_SAMPLES_CAPACITY, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// An Ethernet/IPv4 ARP message (RFC 826): 8 bytes of header, two MAC/IPv4 pairs.
const ARP_LEN: usize = 28;
const ARP_OP_REQUEST: u16 = 1;
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

/// BOOTP fixed header: op .. file, before the options (RFC 2131 §2, figure 1).
const BOOTP_FIXED_LEN: usize = 236;
/// The BOOTP fixed header up to the first six octets of chaddr (offset 28); htype and hlen are
/// octets 1 and 2.
const BOOTP_READ_LEN: usize = 34;
const BOOTP_HTYPE_ETHERNET: u8 = 1;
/// TFTP opcode of a read request (RFC 1350 §5).
const TFTP_OPCODE_RRQ: u16 = 1;
const NS_PER_SEC: u64 = 1_000_000_000;

#[xdp]
pub fn stampede_xdp(ctx: XdpContext) -> u32 {
    let verdict = match try_classify(&ctx) {
        Ok(verdict) => verdict,
        Err(Malformed) => Verdict::pass(class::MALFORMED),
    };
    let len = ctx.data_end() - ctx.data();
    count(&CLASS_COUNTERS, verdict.class, len);
    if let Some(reason) = verdict.drop {
        count(&DROP_COUNTERS, reason, len);
        return xdp_action::XDP_DROP;
    }
    if !verdict.steer {
        return xdp_action::XDP_PASS;
    }
    // The low bits of the flags are the action when the queue has no socket (bpf-helpers(7),
    // bpf_redirect_map): such frames go to the kernel's sockets as without AF_XDP.
    match XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            count(&STEER_COUNTERS, steer::REDIRECTED, len);
            action
        }
        Err(action) => {
            count(&STEER_COUNTERS, steer::NO_SOCKET, len);
            action
        }
    }
}

/// The frame's headers cannot be read (truncated or invalid): class `MALFORMED`, passed.
struct Malformed;

/// The class a frame is counted in, the reason it is dropped, if it is, and whether an admitted
/// frame goes to the AF_XDP path.
struct Verdict {
    class: u32,
    drop: Option<u32>,
    steer: bool,
}

impl Verdict {
    #[inline(always)]
    const fn pass(class: u32) -> Self {
        Self {
            class,
            drop: None,
            steer: false,
        }
    }

    #[inline(always)]
    const fn drop(class: u32, reason: u32) -> Self {
        Self {
            class,
            drop: Some(reason),
            steer: false,
        }
    }

    /// Admitted, and redirected to the AF_XDP socket of its queue if the path is on and the
    /// frame is untagged (the AF_XDP path serves untagged boot networks; tagged frames go to the
    /// kernel, whose VLAN devices know what to do with them).
    #[inline(always)]
    fn admit(class: u32, untagged: bool) -> Self {
        Self {
            class,
            drop: None,
            steer: untagged && afxdp_enabled(),
        }
    }
}

#[inline(always)]
fn afxdp_enabled() -> bool {
    AFXDP.get(0).is_some_and(|s| s.enabled != 0)
}

/// Whether `port` is one of the AF_XDP path's TFTP transfer ports (only while the path is on).
#[inline(always)]
fn is_afxdp_transfer_port(port: u16) -> bool {
    afxdp_enabled()
        && AFXDP_PORTS
            .get(u32::from(port))
            .is_some_and(|live| *live != 0)
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
fn header<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Malformed> {
    bytes_at::<N>(ctx, offset).ok_or(Malformed)
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
fn try_classify(ctx: &XdpContext) -> Result<Verdict, Malformed> {
    let eth = header::<ETH_HLEN>(ctx, 0)?;
    let src_mac = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(header::<2>(ctx, ETH_HLEN + 2)?);
        l3 += VLAN_HLEN;
    }
    if ethertype == ETH_P_ARP && l3 == ETH_HLEN {
        return Ok(arp_verdict(ctx));
    }
    if ethertype != ETH_P_IP {
        return Ok(Verdict::pass(class::OTHER));
    }

    let ip = header::<IPV4_MIN_HLEN>(ctx, l3)?;
    if ip[0] >> 4 != 4 {
        return Err(Malformed);
    }
    // Masked to 4 bits, so the verifier knows `ihl` is at most 60.
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Malformed);
    }
    let total_len = usize::from(be16([ip[2], ip[3]]));
    if total_len < ihl {
        return Err(Malformed);
    }
    if be16([ip[6], ip[7]]) & IP_FRAG_MASK != 0 {
        return Ok(Verdict::pass(class::OTHER));
    }
    let l4 = l3 + ihl;
    let untagged = l3 == ETH_HLEN;
    match ip[9] {
        IPPROTO_UDP => {
            let udp = header::<UDP_HLEN>(ctx, l4)?;
            let class = match be16([udp[2], udp[3]]) {
                PORT_DHCP_SERVER => class::DHCP_SERVER,
                PORT_PROXY_DHCP => class::PROXY_DHCP,
                PORT_TFTP => class::TFTP,
                // TFTP ACKs to a transfer of the AF_XDP path: counted as other traffic (the
                // class table is per well-known port), but theirs to handle.
                port if is_afxdp_transfer_port(port) => {
                    return Ok(Verdict::admit(class::OTHER, untagged));
                }
                _ => return Ok(Verdict::pass(class::OTHER)),
            };
            // A boot datagram must fit its IPv4 packet, and that packet the frame (trailing
            // Ethernet padding is fine). User space would discard it anyway; here it costs less.
            let frame_len = ctx.data_end() - ctx.data();
            let udp_len = usize::from(be16([udp[4], udp[5]]));
            if l3 + total_len > frame_len || udp_len < UDP_HLEN || udp_len > total_len - ihl {
                return Ok(Verdict::drop(class, drop_reason::MALFORMED_BOOT));
            }
            let payload = l4 + UDP_HLEN;
            let payload_len = udp_len - UDP_HLEN;
            let Some(config) = CONFIG.get(0) else {
                return Ok(Verdict::admit(class, untagged));
            };
            let reason = if class == class::TFTP {
                tftp_drop(ctx, config, payload, payload_len)
            } else {
                dhcp_drop(ctx, config, src_mac, payload, payload_len)
            };
            Ok(match reason {
                Some(reason) => Verdict::drop(class, reason),
                None => Verdict::admit(class, untagged),
            })
        }
        IPPROTO_TCP => {
            let tcp = header::<TCP_MIN_HLEN>(ctx, l4)?;
            let http_port = CONFIG.get(0).map_or(0, |c| c.http_port);
            let dport = be16([tcp[2], tcp[3]]);
            Ok(Verdict::pass(if http_port != 0 && dport == http_port {
                class::HTTP
            } else {
                class::OTHER
            }))
        }
        _ => Ok(Verdict::pass(class::OTHER)),
    }
}

/// An untagged ARP request for the server's address goes to the AF_XDP path while it is on (it
/// answers for the address); every other ARP message stays with the kernel.
#[inline(always)]
fn arp_verdict(ctx: &XdpContext) -> Verdict {
    let Some(steering) = AFXDP.get(0) else {
        return Verdict::pass(class::OTHER);
    };
    if steering.enabled == 0 || steering.server_ip == [0; 4] {
        return Verdict::pass(class::OTHER);
    }
    let Some(arp) = bytes_at::<ARP_LEN>(ctx, ETH_HLEN) else {
        return Verdict::pass(class::OTHER);
    };
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request; the target address at 24..28.
    let is_request_for_us = be16([arp[0], arp[1]]) == 1
        && be16([arp[2], arp[3]]) == ETH_P_IP
        && arp[4] == 6
        && arp[5] == 4
        && be16([arp[6], arp[7]]) == ARP_OP_REQUEST
        && [arp[24], arp[25], arp[26], arp[27]] == steering.server_ip;
    Verdict {
        class: class::OTHER,
        drop: None,
        steer: is_request_for_us,
    }
}

/// Why a DHCP or ProxyDHCP datagram is dropped, if it is. Policy comes before the rate limit, so
/// a denied machine spends no tokens.
///
/// The machine is its chaddr (RFC 2131 §2) when that is an Ethernet address, else the Ethernet
/// source. Not the Ethernet source first: a relayed message (giaddr set, RFC 2131 §4.1) or a
/// routed unicast to ProxyDHCP carries the router's MAC, shared by a whole subnet, which would put
/// every machine behind it in one bucket. For a directly attached client the two are the same.
#[inline(always)]
fn dhcp_drop(
    ctx: &XdpContext,
    config: &XdpConfig,
    src_mac: [u8; 6],
    payload: usize,
    payload_len: usize,
) -> Option<u32> {
    if payload_len < BOOTP_FIXED_LEN {
        return Some(drop_reason::MALFORMED_BOOT);
    }
    let Some(bootp) = bytes_at::<BOOTP_READ_LEN>(ctx, payload) else {
        return Some(drop_reason::MALFORMED_BOOT);
    };
    let mac = if bootp[1] == BOOTP_HTYPE_ETHERNET && bootp[2] == 6 {
        [
            bootp[28], bootp[29], bootp[30], bootp[31], bootp[32], bootp[33],
        ]
    } else {
        src_mac
    };
    let key = MacKey::new(mac);
    let policy = &config.policy;
    if DENY_MACS.get_ptr(key).is_some() {
        sample_refusal(key, mac, drop_reason::DENIED_MAC);
        return Some(drop_reason::DENIED_MAC);
    }
    if policy.known_only != 0 && ALLOW_MACS.get_ptr(key).is_none() {
        sample_refusal(key, mac, drop_reason::UNKNOWN_MAC);
        return Some(drop_reason::UNKNOWN_MAC);
    }
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rate = u64::from(policy.dhcp_rate_per_sec);
    let burst = u64::from(policy.dhcp_burst);
    let admitted = match DHCP_BUCKETS.get_ptr_mut(key) {
        // SAFETY: the pointer comes from the map lookup and stays valid while the program runs
        // (map values are freed only after an RCU grace period); a concurrent update from another
        // CPU can only make the count slightly off, see `DHCP_BUCKETS`.
        Some(bucket) => take_token(unsafe { &mut *bucket }, now, rate, burst),
        None => {
            let mut bucket = TokenBucket::default();
            let admitted = take_token(&mut bucket, now, rate, burst);
            // A full map evicts its least recently used entry. Should the insert still fail
            // (or race with another CPU inserting the same MAC), this frame passes: fail open.
            let _ = DHCP_BUCKETS.insert(key, bucket, u64::from(BPF_NOEXIST));
            admitted
        }
    };
    (!admitted).then_some(drop_reason::DHCP_RATE_LIMITED)
}

/// Tells user space that `mac` was refused, unless it was told less than
/// [`REFUSAL_SAMPLE_INTERVAL_NS`] ago. A full ring loses the sample (the drop is counted anyway).
#[inline(always)]
fn sample_refusal(key: MacKey, mac: [u8; 6], reason: u32) {
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match REFUSAL_SAMPLES.get_ptr_mut(key) {
        Some(last) => {
            // SAFETY: the pointer comes from the map lookup and stays valid while the program
            // runs; a concurrent update from another CPU at worst samples twice.
            let last = unsafe { &mut *last };
            if now.wrapping_sub(*last) < REFUSAL_SAMPLE_INTERVAL_NS {
                return;
            }
            *last = now;
        }
        None => {
            let _ = REFUSAL_SAMPLES.insert(key, now, u64::from(BPF_NOEXIST));
        }
    }
    let record = Refusal {
        mac,
        reason: reason as u8,
        _pad: 0,
    };
    let _ = REFUSALS.output::<Refusal>(&record, 0);
}

/// Why a TFTP datagram to port 69 is dropped, if it is. Only read requests take an admission
/// token: they are what starts a transfer (RFC 1350 §4); other opcodes go to user space, which
/// answers them with an error.
#[inline(always)]
fn tftp_drop(
    ctx: &XdpContext,
    config: &XdpConfig,
    payload: usize,
    payload_len: usize,
) -> Option<u32> {
    if payload_len < 2 {
        return Some(drop_reason::MALFORMED_BOOT);
    }
    let Some(opcode) = bytes_at::<2>(ctx, payload) else {
        return Some(drop_reason::MALFORMED_BOOT);
    };
    if be16(opcode) != TFTP_OPCODE_RRQ {
        return None;
    }
    let bucket = TFTP_ADMISSION.get_ptr_mut(0)?;
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let policy = &config.policy;
    // SAFETY: the pointer comes from the array lookup and is valid while the program runs; races
    // with other CPUs are benign, see `TFTP_ADMISSION`.
    let bucket = unsafe { &mut *bucket };
    let admitted = take_token(
        bucket,
        now,
        u64::from(policy.tftp_rate_per_sec),
        u64::from(policy.tftp_burst),
    );
    (!admitted).then_some(drop_reason::TFTP_ADMISSION)
}

/// Refills `bucket` for the time elapsed since it was last credited, then takes one token if
/// there is one. Integer arithmetic only: refills are credited in whole tokens, and the time
/// credited advances by exactly what those tokens cost, so fractions carry over to the next frame.
#[inline(always)]
fn take_token(bucket: &mut TokenBucket, now: u64, rate: u64, burst: u64) -> bool {
    if bucket.last_ns == 0 {
        // Never used: start full.
        bucket.tokens = burst;
        bucket.last_ns = now;
    } else if let Some(rate) = NonZeroU64::new(rate) {
        let elapsed = now.saturating_sub(bucket.last_ns);
        // Time to fill an empty bucket; past it the bucket is full whatever it held. Below it,
        // `elapsed * rate < burst * 1e9 < 2^63`, so the product cannot overflow.
        let fill_ns = burst * NS_PER_SEC / rate;
        if elapsed >= fill_ns {
            bucket.tokens = burst;
            bucket.last_ns = now;
        } else {
            let earned = elapsed * rate.get() / NS_PER_SEC;
            if earned > 0 {
                bucket.tokens += earned;
                bucket.last_ns += earned * NS_PER_SEC / rate;
            }
        }
    }
    // The burst may have been lowered since the bucket was filled.
    if bucket.tokens > burst {
        bucket.tokens = burst;
    }
    if bucket.tokens == 0 {
        return false;
    }
    bucket.tokens -= 1;
    true
}

#[inline(always)]
fn count(counters: &PerCpuArray<ClassCounter>, index: u32, len: usize) {
    if let Some(counter) = counters.get_ptr_mut(index) {
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
