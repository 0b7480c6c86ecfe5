//! The XDP drop policy run by the kernel on crafted frames (BPF_PROG_TEST_RUN): every drop reason
//! with exact class and drop counters, the per-MAC DHCP token bucket (burst, refill, VLAN tags,
//! messages through a router), deny and allow lists updated live, known-only mode, TFTP
//! admission and its refill, what is never dropped (fragments, non-boot traffic, malformed non-boot
//! headers), policy read past IP options and VLAN tags, and the MAC lists synced to a wanted set.
mod support;

use std::time::{Duration, Instant};

use stampede_dataplane::xdp::{ClassCounters, DropCounters, XdpClassifier, XdpError, action};
use stampede_ebpf_common::{XdpConfig, XdpPolicy, class, drop_reason};
use support::frames::*;

const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0A];
const MAC_B: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0B];
const MAC_C: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0C];
const MAC_D: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0D];
const RELAY: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

fn classifier(test: &str, policy: XdpPolicy) -> Option<XdpClassifier> {
    if !stampede_lab::require(test, &[]) {
        return None;
    }
    let config = XdpConfig::new(XdpConfig::DEFAULT_HTTP_PORT).with_policy(policy);
    Some(XdpClassifier::load(config).unwrap_or_else(|err| {
        panic!(
            "{test}: loading the classifier failed: {}",
            stampede_dataplane::xdp::error_chain(&err)
        )
    }))
}

/// A policy whose buckets never refill, so counts do not depend on time.
fn no_refill(dhcp_burst: u32, tftp_burst: u32) -> XdpPolicy {
    XdpPolicy {
        dhcp_rate_per_sec: 0,
        dhcp_burst,
        tftp_rate_per_sec: 0,
        tftp_burst,
        known_only: 0,
    }
}

/// Runs `frame` once; asserts it was counted once in `class`, and either passed (`drop: None`)
/// or dropped and counted once under `drop`, nothing else moving.
fn expect(xdp: &XdpClassifier, name: &str, frame: &[u8], class: u32, drop: Option<u32>) {
    let before = xdp.counters().expect("counters");
    let drops_before = xdp.drops().expect("drops");
    let verdict = xdp
        .test_run(frame)
        .unwrap_or_else(|err| panic!("{name}: test run: {err}"));
    let counted = xdp.counters().expect("counters").since(&before);
    let dropped = xdp.drops().expect("drops").since(&drops_before);

    let mut want_counted = ClassCounters::default();
    want_counted.by_class[class as usize].packets = 1;
    want_counted.by_class[class as usize].bytes = frame.len() as u64;
    assert_eq!(
        counted,
        want_counted,
        "{name}: counted as [{counted}], expected class {}",
        class::NAMES[class as usize]
    );
    let mut want_dropped = DropCounters::default();
    if let Some(reason) = drop {
        want_dropped.by_reason[reason as usize].packets = 1;
        want_dropped.by_reason[reason as usize].bytes = frame.len() as u64;
    }
    assert_eq!(
        dropped,
        want_dropped,
        "{name}: drops [{dropped}], expected {:?}",
        drop.map(|r| drop_reason::NAMES[r as usize])
    );
    let want_verdict = if drop.is_some() {
        action::DROP
    } else {
        action::PASS
    };
    assert_eq!(verdict, want_verdict, "{name}: XDP action");
}

/// Runs `frame` `n` times, one run each; returns how many passed. Every run must pass or be
/// dropped as rate limited.
fn passes(xdp: &XdpClassifier, name: &str, frame: &[u8], n: u32) -> u32 {
    let mut passed = 0;
    for _ in 0..n {
        match xdp.test_run(frame).expect("test run") {
            action::PASS => passed += 1,
            action::DROP => {}
            other => panic!("{name}: unexpected XDP action {other}"),
        }
    }
    passed
}

fn dhcp_udp(dport: u16, body: &[u8]) -> Vec<u8> {
    ipv4(IPPROTO_UDP, 0, &[], &udp(68, dport, body))
}

#[test]
fn malformed_boot_frames_are_dropped_malformed_non_boot_frames_pass() {
    let Some(xdp) = classifier(stampede_lab::test_name!(), XdpPolicy::permissive()) else {
        return;
    };
    let good = discover_frame(MAC_A, None, 67);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 20);
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 16]);
    let with_udp_len = |dport: u16, udp_len: u16| {
        let mut ip = dhcp_udp(dport, &dhcp_discover_relayed(MAC_A, [0; 4]));
        ip[24..26].copy_from_slice(&udp_len.to_be_bytes());
        ethernet_from(MAC_A, None, ETH_P_IP, &ip)
    };
    let mal = Some(drop_reason::MALFORMED_BOOT);
    let cases: Vec<(&str, Vec<u8>, u32, Option<u32>)> = vec![
        (
            "well-formed discover",
            good.clone(),
            class::DHCP_SERVER,
            None,
        ),
        (
            "ethernet padding after a discover",
            padded,
            class::DHCP_SERVER,
            None,
        ),
        (
            "ipv4 total length past the frame",
            truncated,
            class::DHCP_SERVER,
            mal,
        ),
        (
            "udp length below 8",
            with_udp_len(67, 4),
            class::DHCP_SERVER,
            mal,
        ),
        (
            "udp length past the ipv4 payload (proxydhcp)",
            with_udp_len(4011, 600),
            class::PROXY_DHCP,
            mal,
        ),
        (
            "dhcp body shorter than the bootp header",
            ethernet_from(
                MAC_A,
                None,
                ETH_P_IP,
                &dhcp_udp(67, &[1, 1, 6, 0, 0, 0, 0, 0]),
            ),
            class::DHCP_SERVER,
            mal,
        ),
        (
            "tftp datagram without an opcode",
            ethernet_from(
                MAC_A,
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, 0, &[], &udp(1024, 69, &[1])),
            ),
            class::TFTP,
            mal,
        ),
        (
            "tftp with udp length past the payload",
            with_udp_len(69, 1000),
            class::TFTP,
            mal,
        ),
        // Not boot traffic, or headers that cannot be read: passed to the kernel, as before.
        (
            "udp length past the payload, port 53",
            with_udp_len(53, 1000),
            class::OTHER,
            None,
        ),
        (
            "ihl below 5 on a discover",
            {
                let mut f = good.clone();
                f[14] = 0x44;
                f
            },
            class::MALFORMED,
            None,
        ),
        (
            "udp header cut short",
            ethernet(None, ETH_P_IP, &ipv4(IPPROTO_UDP, 0, &[], &[0, 68, 0, 67])),
            class::MALFORMED,
            None,
        ),
        (
            "first fragment to 67 with a short body",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, IP_MF, &[], &udp(68, 67, &[0; 8])),
            ),
            class::OTHER,
            None,
        ),
        (
            "later fragment with a bogus udp length",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, 185, &[], &[0, 68, 0, 67, 0, 2, 0, 0]),
            ),
            class::OTHER,
            None,
        ),
    ];
    for (name, frame, class, drop) in &cases {
        expect(&xdp, name, frame, *class, *drop);
    }
    let drops = xdp.drops().expect("drops");
    assert_eq!(drops.packets(drop_reason::MALFORMED_BOOT), 6, "{drops}");
    assert_eq!(drops.total_packets(), 6, "{drops}");
}

#[test]
fn dhcp_bucket_passes_the_burst_then_drops_per_mac() {
    let Some(xdp) = classifier(stampede_lab::test_name!(), no_refill(4, 1)) else {
        return;
    };
    let from_a = discover_frame(MAC_A, None, 67);
    for i in 0..4 {
        expect(&xdp, &format!("A #{i}"), &from_a, class::DHCP_SERVER, None);
    }
    let limited = Some(drop_reason::DHCP_RATE_LIMITED);
    for i in 4..10 {
        expect(
            &xdp,
            &format!("A #{i}"),
            &from_a,
            class::DHCP_SERVER,
            limited,
        );
    }
    // ProxyDHCP shares the MAC's bucket.
    expect(
        &xdp,
        "A to 4011",
        &discover_frame(MAC_A, None, 4011),
        class::PROXY_DHCP,
        limited,
    );
    // Another MAC has its own bucket.
    let from_b = discover_frame(MAC_B, None, 4011);
    for i in 0..4 {
        expect(&xdp, &format!("B #{i}"), &from_b, class::PROXY_DHCP, None);
    }
    expect(&xdp, "B #4", &from_b, class::PROXY_DHCP, limited);

    // A VLAN tag does not hide the MAC: A is still limited, C tagged gets its own burst.
    expect(
        &xdp,
        "A tagged",
        &discover_frame(MAC_A, Some((ETH_P_8021Q, 42)), 67),
        class::DHCP_SERVER,
        limited,
    );
    let tagged_c = discover_frame(MAC_C, Some((ETH_P_8021AD, 7)), 67);
    for i in 0..4 {
        expect(
            &xdp,
            &format!("C tagged #{i}"),
            &tagged_c,
            class::DHCP_SERVER,
            None,
        );
    }
    expect(&xdp, "C tagged #4", &tagged_c, class::DHCP_SERVER, limited);

    let drops = xdp.drops().expect("drops");
    assert_eq!(drops.packets(drop_reason::DHCP_RATE_LIMITED), 10, "{drops}");
    assert_eq!(drops.total_packets(), 10, "{drops}");
    let text = drops.to_string();
    assert!(
        text.starts_with("malformed_boot=0/0B dhcp_rate_limited=10/"),
        "{text}"
    );

    // The rest of the traffic from a limited MAC is untouched.
    expect(
        &xdp,
        "HTTP from A",
        &ethernet_from(
            MAC_A,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_TCP, IP_DF, &[], &tcp_syn(40000, 8080)),
        ),
        class::HTTP,
        None,
    );
    expect(
        &xdp,
        "DNS from A",
        &ethernet_from(
            MAC_A,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, &[], &udp(5353, 53, &[0; 12])),
        ),
        class::OTHER,
        None,
    );
    expect(
        &xdp,
        "fragment to 67 from A",
        &ethernet_from(
            MAC_A,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, IP_MF, &[], &udp(68, 67, &[0; 300])),
        ),
        class::OTHER,
        None,
    );
}

#[test]
fn routed_dhcp_is_keyed_by_chaddr_not_by_the_router() {
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), no_refill(2, 1)) else {
        return;
    };
    // From the router's MAC: relayed DISCOVERs (giaddr set) to 67, and unicasts to ProxyDHCP.
    let via_router = |chaddr, giaddr, dport| {
        ethernet_from(
            RELAY,
            None,
            ETH_P_IP,
            &dhcp_udp(dport, &dhcp_discover_relayed(chaddr, giaddr)),
        )
    };
    let limited = Some(drop_reason::DHCP_RATE_LIMITED);
    for (client, giaddr, dport, class) in [
        (MAC_A, [10, 0, 1, 1], 67, class::DHCP_SERVER),
        (MAC_B, [10, 0, 1, 1], 67, class::DHCP_SERVER),
        (MAC_C, [0; 4], 4011, class::PROXY_DHCP),
        (MAC_D, [0; 4], 4011, class::PROXY_DHCP),
    ] {
        let frame = via_router(client, giaddr, dport);
        expect(&xdp, "via router #0", &frame, class, None);
        expect(&xdp, "via router #1", &frame, class, None);
        expect(&xdp, "via router #2", &frame, class, limited);
    }
    xdp.deny_mac(RELAY).expect("deny the router");
    xdp.deny_mac(MAC_C).expect("deny C");
    expect(
        &xdp,
        "relayed for a denied client",
        &via_router(MAC_C, [10, 0, 1, 1], 67),
        class::DHCP_SERVER,
        Some(drop_reason::DENIED_MAC),
    );
    // The router's own MAC is not the machine: denying it does not deny clients behind it.
    xdp.remove_mac(MAC_C).expect("remove C");
    expect(
        &xdp,
        "relayed for a new client",
        &via_router([0x52, 0x54, 0, 0, 0, 0xE], [10, 0, 1, 1], 67),
        class::DHCP_SERVER,
        None,
    );
}

#[test]
fn dhcp_bucket_refills_over_time() {
    const RATE: u32 = 10;
    const BURST: u32 = 8;
    let policy = XdpPolicy {
        dhcp_rate_per_sec: RATE,
        dhcp_burst: BURST,
        ..XdpPolicy::permissive()
    };
    let Some(xdp) = classifier(stampede_lab::test_name!(), policy) else {
        return;
    };
    let frame = discover_frame(MAC_A, None, 67);
    // Drain: the burst passes, then runs are dropped until the bucket is empty. A refill between
    // runs (a slow machine) only adds passes, so drain until one is dropped.
    let mut drained = false;
    for _ in 0..1000 {
        if xdp.test_run(&frame).expect("test run") == action::DROP {
            drained = true;
            break;
        }
    }
    assert!(drained, "the bucket never ran dry");
    let emptied = Instant::now();
    std::thread::sleep(Duration::from_millis(450));
    // The kernel's clock advanced at least this much between the last drop and the next run.
    let slept = emptied.elapsed();
    let earned = (slept.as_nanos() * u128::from(RATE) / 1_000_000_000) as u32;
    let at_least = earned.min(BURST);
    assert!(at_least >= 4, "slept {slept:?}, earned {earned}");
    let passed = passes(&xdp, "after the pause", &frame, BURST + 4);
    assert!(
        passed >= at_least,
        "{passed} passed after {slept:?} at {RATE}/s, expected at least {at_least}"
    );
}

#[test]
fn deny_list_is_updated_live() {
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), XdpPolicy::permissive()) else {
        return;
    };
    let from_a = discover_frame(MAC_A, None, 67);
    let from_b = discover_frame(MAC_B, None, 67);
    expect(&xdp, "A before", &from_a, class::DHCP_SERVER, None);
    xdp.deny_mac(MAC_A).expect("deny A");
    let denied = Some(drop_reason::DENIED_MAC);
    expect(&xdp, "A denied", &from_a, class::DHCP_SERVER, denied);
    expect(
        &xdp,
        "A denied, tagged, to 4011",
        &discover_frame(MAC_A, Some((ETH_P_8021Q, 5)), 4011),
        class::PROXY_DHCP,
        denied,
    );
    expect(&xdp, "B not denied", &from_b, class::DHCP_SERVER, None);
    xdp.remove_mac(MAC_A).expect("remove A");
    expect(&xdp, "A after removal", &from_a, class::DHCP_SERVER, None);
    xdp.remove_mac(MAC_A)
        .expect("removing a MAC on no list is not an error");

    // A denied MAC spends no tokens: with a burst of 1, its first message after removal passes.
    xdp.set_policy(no_refill(1, 1)).expect("policy");
    xdp.deny_mac(MAC_C).expect("deny C");
    let from_c = discover_frame(MAC_C, None, 67);
    for _ in 0..3 {
        expect(&xdp, "C denied", &from_c, class::DHCP_SERVER, denied);
    }
    xdp.remove_mac(MAC_C).expect("remove C");
    expect(&xdp, "C's first", &from_c, class::DHCP_SERVER, None);
    expect(
        &xdp,
        "C's second",
        &from_c,
        class::DHCP_SERVER,
        Some(drop_reason::DHCP_RATE_LIMITED),
    );

    let drops = xdp.drops().expect("drops");
    assert_eq!(drops.packets(drop_reason::DENIED_MAC), 5, "{drops}");
    assert_eq!(drops.total_packets(), 6, "{drops}");
}

#[test]
fn known_only_mode_passes_allowed_macs_only() {
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), XdpPolicy::permissive()) else {
        return;
    };
    let from_a = discover_frame(MAC_A, None, 67);
    let from_b = discover_frame(MAC_B, Some((ETH_P_8021Q, 9)), 4011);
    // Allowing a MAC means nothing while known-only mode is off.
    xdp.allow_mac(MAC_A).expect("allow A");
    expect(&xdp, "B, mode off", &from_b, class::PROXY_DHCP, None);

    xdp.set_policy(XdpPolicy {
        known_only: 1,
        ..XdpPolicy::permissive()
    })
    .expect("known-only on");
    let unknown = Some(drop_reason::UNKNOWN_MAC);
    expect(&xdp, "A allowed", &from_a, class::DHCP_SERVER, None);
    expect(&xdp, "B unknown", &from_b, class::PROXY_DHCP, unknown);
    xdp.allow_mac(MAC_B).expect("allow B");
    expect(&xdp, "B allowed", &from_b, class::PROXY_DHCP, None);
    // The deny list wins over the allow list.
    xdp.deny_mac(MAC_A).expect("deny A");
    expect(
        &xdp,
        "A allowed and denied",
        &from_a,
        class::DHCP_SERVER,
        Some(drop_reason::DENIED_MAC),
    );
    // Removal takes a MAC off both lists: A is now unknown.
    xdp.remove_mac(MAC_A).expect("remove A");
    expect(&xdp, "A removed", &from_a, class::DHCP_SERVER, unknown);
    // Non-DHCP traffic from an unknown MAC is untouched.
    expect(
        &xdp,
        "TFTP RRQ from unknown A",
        &ethernet_from(
            MAC_A,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &tftp_rrq("ipxe.efi"))),
        ),
        class::TFTP,
        None,
    );

    xdp.set_policy(XdpPolicy::permissive())
        .expect("known-only off");
    expect(&xdp, "A, mode off again", &from_a, class::DHCP_SERVER, None);

    let drops = xdp.drops().expect("drops");
    assert_eq!(drops.packets(drop_reason::UNKNOWN_MAC), 2, "{drops}");
    assert_eq!(drops.packets(drop_reason::DENIED_MAC), 1, "{drops}");
    assert_eq!(drops.total_packets(), 3, "{drops}");
}

#[test]
fn tftp_read_requests_beyond_admission_are_dropped() {
    let Some(xdp) = classifier(stampede_lab::test_name!(), no_refill(16, 3)) else {
        return;
    };
    let rrq = |mac, file| {
        ethernet_from(
            mac,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &tftp_rrq(file))),
        )
    };
    // The admission bucket is global: requests from different machines share it.
    expect(&xdp, "RRQ 1", &rrq(MAC_A, "ipxe.efi"), class::TFTP, None);
    expect(&xdp, "RRQ 2", &rrq(MAC_B, "ipxe.efi"), class::TFTP, None);
    expect(
        &xdp,
        "RRQ 3",
        &rrq(MAC_C, "undionly.kpxe"),
        class::TFTP,
        None,
    );
    let refused = Some(drop_reason::TFTP_ADMISSION);
    expect(&xdp, "RRQ 4", &rrq(MAC_A, "ipxe.efi"), class::TFTP, refused);
    expect(
        &xdp,
        "RRQ 5, tagged",
        &{
            let mut f = rrq(MAC_B, "x");
            // Re-frame with an 802.1Q tag.
            let payload = f.split_off(14);
            ethernet_from(MAC_B, Some((ETH_P_8021Q, 3)), ETH_P_IP, &payload)
        },
        class::TFTP,
        refused,
    );
    // Only read requests take a token: a write request or a stray ACK to 69 goes to user space,
    // which answers it with an error.
    let mut wrq = tftp_rrq("upload");
    wrq[1] = 2;
    expect(
        &xdp,
        "WRQ",
        &ethernet_from(
            MAC_A,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &wrq)),
        ),
        class::TFTP,
        None,
    );
    expect(
        &xdp,
        "ACK to 69",
        &ethernet_from(
            MAC_A,
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &[0, 4, 0, 1])),
        ),
        class::TFTP,
        None,
    );
    let drops = xdp.drops().expect("drops");
    assert_eq!(drops.packets(drop_reason::TFTP_ADMISSION), 2, "{drops}");
    assert_eq!(drops.total_packets(), 2, "{drops}");
}

#[test]
fn default_policy_lets_clients_boot_and_stops_a_flood() {
    let Some(xdp) = classifier(stampede_lab::test_name!(), XdpPolicy::permissive()) else {
        return;
    };
    // A client's whole exchange, repeated: well inside the default burst.
    let from_a = discover_frame(MAC_A, None, 67);
    let burst = XdpPolicy::DEFAULT_DHCP_BURST;
    assert_eq!(passes(&xdp, "client", &from_a, burst), burst);
    // Many TFTP requests pass.
    let rrq = ethernet_from(
        MAC_B,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &tftp_rrq("ipxe.efi"))),
    );
    let (verdict, _) = xdp.test_run_repeat(&rrq, 5000).expect("test run");
    assert_eq!(verdict, action::PASS);
    assert_eq!(xdp.drops().expect("drops").total_packets(), 0);

    // A flood from one MAC: at most the refill over the flood's duration passes.
    let flood = discover_frame(MAC_C, None, 67);
    let started = Instant::now();
    let (_, _) = xdp.test_run_repeat(&flood, 10_000).expect("test run");
    let took = started.elapsed();
    let refill =
        (took.as_secs_f64() * f64::from(XdpPolicy::DEFAULT_DHCP_RATE_PER_SEC)).ceil() as u64;
    let passed_at_most = u64::from(burst) + refill + 1;
    let drops = xdp.drops().expect("drops");
    assert!(
        drops.packets(drop_reason::DHCP_RATE_LIMITED) >= 10_000 - passed_at_most,
        "flood of 10000 over {took:?}: {drops}"
    );
    assert_eq!(
        xdp.counters()
            .expect("counters")
            .packets(class::DHCP_SERVER),
        u64::from(burst) + 10_000,
        "dropped frames are still counted by class"
    );
}

#[test]
fn a_zero_burst_is_refused() {
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), XdpPolicy::permissive()) else {
        return;
    };
    let err = xdp
        .set_policy(XdpPolicy {
            dhcp_burst: 0,
            ..XdpPolicy::permissive()
        })
        .expect_err("zero DHCP burst");
    assert!(matches!(err, XdpError::InvalidPolicy(_)), "{err}");
    let err = xdp
        .set_policy(XdpPolicy {
            tftp_burst: 0,
            ..XdpPolicy::permissive()
        })
        .expect_err("zero TFTP burst");
    assert!(matches!(err, XdpError::InvalidPolicy(_)), "{err}");
    assert_eq!(xdp.config().policy, XdpPolicy::permissive());
}

#[test]
fn mac_lists_are_synced_to_exactly_what_is_wanted() {
    use stampede_dataplane::xdp::MacListChanges;
    use std::collections::BTreeSet;

    let known_only = XdpPolicy {
        known_only: 1,
        ..XdpPolicy::permissive()
    };
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), known_only) else {
        return;
    };
    // Something put there by hand beforehand: a sync reads the kernel's maps, not a memory.
    xdp.deny_mac(MAC_D).expect("deny D");
    let deny = BTreeSet::from([MAC_A]);
    let allow = BTreeSet::from([MAC_B, MAC_C]);
    let changes = xdp.sync_mac_lists(&deny, &allow).expect("sync");
    assert_eq!(
        changes,
        MacListChanges {
            denied: 1,
            undenied: 1,
            allowed: 2,
            unallowed: 0
        }
    );
    assert_eq!(xdp.denied_macs().expect("deny list"), deny);
    assert_eq!(xdp.allowed_macs().expect("allow list"), allow);
    let denied = Some(drop_reason::DENIED_MAC);
    let unknown = Some(drop_reason::UNKNOWN_MAC);
    let frame = |mac| discover_frame(mac, None, 67);
    expect(&xdp, "A denied", &frame(MAC_A), class::DHCP_SERVER, denied);
    expect(&xdp, "B allowed", &frame(MAC_B), class::DHCP_SERVER, None);
    expect(
        &xdp,
        "D unknown",
        &frame(MAC_D),
        class::DHCP_SERVER,
        unknown,
    );

    // The same lists again change nothing.
    assert!(
        xdp.sync_mac_lists(&deny, &allow)
            .expect("sync again")
            .is_empty()
    );
    // A moves from the deny list to the allow list, C leaves, D is denied.
    let deny = BTreeSet::from([MAC_D]);
    let allow = BTreeSet::from([MAC_A, MAC_B]);
    let changes = xdp.sync_mac_lists(&deny, &allow).expect("sync");
    assert_eq!(
        changes,
        MacListChanges {
            denied: 1,
            undenied: 1,
            allowed: 1,
            unallowed: 1
        }
    );
    expect(
        &xdp,
        "A allowed now",
        &frame(MAC_A),
        class::DHCP_SERVER,
        None,
    );
    expect(
        &xdp,
        "C unknown now",
        &frame(MAC_C),
        class::DHCP_SERVER,
        unknown,
    );
    expect(
        &xdp,
        "D denied now",
        &frame(MAC_D),
        class::DHCP_SERVER,
        denied,
    );
    // Empty lists empty the maps.
    xdp.sync_mac_lists(&BTreeSet::new(), &BTreeSet::new())
        .expect("sync to empty");
    assert!(xdp.denied_macs().expect("deny list").is_empty());
    assert!(xdp.allowed_macs().expect("allow list").is_empty());
    expect(
        &xdp,
        "A unknown",
        &frame(MAC_A),
        class::DHCP_SERVER,
        unknown,
    );
}

#[test]
fn tftp_admission_refills_over_time() {
    const RATE: u32 = 20;
    const BURST: u32 = 5;
    let policy = XdpPolicy {
        tftp_rate_per_sec: RATE,
        tftp_burst: BURST,
        ..XdpPolicy::permissive()
    };
    let Some(xdp) = classifier(stampede_lab::test_name!(), policy) else {
        return;
    };
    let rrq = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &tftp_rrq("ipxe.efi"))),
    );
    let mut drained = false;
    for _ in 0..1000 {
        if xdp.test_run(&rrq).expect("test run") == action::DROP {
            drained = true;
            break;
        }
    }
    assert!(drained, "the admission bucket never ran dry");
    let emptied = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let slept = emptied.elapsed();
    let earned = (slept.as_nanos() * u128::from(RATE) / 1_000_000_000) as u32;
    let at_least = earned.min(BURST);
    assert!(at_least >= 5, "slept {slept:?}, earned {earned}");
    let passed = passes(&xdp, "after the pause", &rrq, BURST + 5);
    assert!(
        passed >= at_least,
        "{passed} admitted after {slept:?} at {RATE}/s, expected at least {at_least}"
    );
    // Never more than a full bucket, however long the pause: 600 ms earn 12 tokens at 20/s,
    // and the bucket holds 5.
    std::thread::sleep(Duration::from_millis(600));
    let runs = Instant::now();
    let passed = passes(&xdp, "after a long pause", &rrq, BURST * 4);
    // Plus what the runs themselves earned while they went on (well under one token here).
    let during = (runs.elapsed().as_nanos() * u128::from(RATE) / 1_000_000_000) as u32 + 1;
    assert!(
        (BURST..=BURST + during).contains(&passed),
        "{passed} admitted after a long pause with a burst of {BURST}"
    );
    assert_eq!(
        xdp.drops().expect("drops").total_packets(),
        xdp.drops()
            .expect("drops")
            .packets(drop_reason::TFTP_ADMISSION)
    );
}

#[test]
fn policy_reads_past_ip_options_and_tags_and_never_parses_fragments() {
    let known_only = XdpPolicy {
        known_only: 1,
        ..no_refill(2, 1)
    };
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), known_only) else {
        return;
    };
    xdp.allow_mac(MAC_A).expect("allow A");
    // Router alert (RFC 2113) padded to a word; and the longest header, 40 bytes of NOPs.
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let nops = [0x01; 40];
    let dhcp = |mac, options: &[u8], tag| {
        let body = dhcp_discover_relayed(mac, [0; 4]);
        ethernet_from(
            RELAY,
            tag,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, options, &udp(68, 67, &body)),
        )
    };
    let unknown = Some(drop_reason::UNKNOWN_MAC);
    // The chaddr is found after the options and the tag, so A (known) passes and B does not,
    // whatever the Ethernet source.
    expect(
        &xdp,
        "A, router alert",
        &dhcp(MAC_A, &router_alert, None),
        class::DHCP_SERVER,
        None,
    );
    expect(
        &xdp,
        "B, router alert",
        &dhcp(MAC_B, &router_alert, None),
        class::DHCP_SERVER,
        unknown,
    );
    expect(
        &xdp,
        "A, 40 bytes of options, 802.1ad",
        &dhcp(MAC_A, &nops, Some((ETH_P_8021AD, 100))),
        class::DHCP_SERVER,
        None,
    );
    expect(
        &xdp,
        "B, 40 bytes of options, 802.1Q",
        &dhcp(MAC_B, &nops, Some((ETH_P_8021Q, 4094))),
        class::DHCP_SERVER,
        unknown,
    );
    // A's bucket (burst 2) is spent by now: the tag and the options do not give A a new one.
    expect(
        &xdp,
        "A, third message",
        &dhcp(MAC_A, &router_alert, Some((ETH_P_8021Q, 1))),
        class::DHCP_SERVER,
        Some(drop_reason::DHCP_RATE_LIMITED),
    );
    // Fragments of a DHCP datagram from an unknown MAC: not parsed as UDP, so passed as
    // "other" whatever their bytes say, with options or without.
    let body = dhcp_discover_relayed(MAC_B, [0; 4]);
    let first = ethernet_from(
        MAC_B,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, IP_MF, &router_alert, &udp(68, 67, &body)),
    );
    expect(
        &xdp,
        "first fragment, unknown MAC",
        &first,
        class::OTHER,
        None,
    );
    let later = ethernet_from(
        MAC_B,
        Some((ETH_P_8021Q, 7)),
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 185, &nops, &udp(68, 67, &body)),
    );
    expect(&xdp, "later fragment, tagged", &later, class::OTHER, None);
    let drops = xdp.drops().expect("drops");
    assert_eq!(drops.packets(drop_reason::UNKNOWN_MAC), 2, "{drops}");
    assert_eq!(drops.total_packets(), 3, "{drops}");
}

/// Drops by MAC policy are sampled to user space through the `REFUSALS` ring buffer (issue 18):
/// one record per machine and second, with the reason; rate-limit drops and passed frames leave
/// none.
#[test]
fn refusals_by_mac_policy_are_sampled_to_user_space() {
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), no_refill(1, 1)) else {
        return;
    };
    let mut ring = xdp
        .take_refusals()
        .expect("the ring opens")
        .expect("the program has a refusal ring");
    assert!(xdp.take_refusals().expect("second take").is_none());
    xdp.deny_mac(MAC_A).expect("deny A");
    let from_a = discover_frame(MAC_A, None, 67);
    for _ in 0..5 {
        expect(
            &xdp,
            "A denied",
            &from_a,
            class::DHCP_SERVER,
            Some(drop_reason::DENIED_MAC),
        );
    }
    // B passes once, then is rate limited: neither is a refusal by policy.
    let from_b = discover_frame(MAC_B, None, 67);
    expect(&xdp, "B", &from_b, class::DHCP_SERVER, None);
    expect(
        &xdp,
        "B limited",
        &from_b,
        class::DHCP_SERVER,
        Some(drop_reason::DHCP_RATE_LIMITED),
    );
    assert_eq!(
        ring.drain(),
        [(MAC_A, "denied_mac")],
        "one sample for five drops within a second"
    );

    // Known-only mode: an unknown machine is sampled with its own reason.
    xdp.set_policy(XdpPolicy {
        known_only: 1,
        ..no_refill(1, 1)
    })
    .expect("policy");
    expect(
        &xdp,
        "C unknown",
        &discover_frame(MAC_C, None, 4011),
        class::PROXY_DHCP,
        Some(drop_reason::UNKNOWN_MAC),
    );
    assert_eq!(ring.drain(), [(MAC_C, "unknown_mac")]);

    // A second later A is sampled again.
    std::thread::sleep(Duration::from_millis(1_100));
    xdp.set_policy(no_refill(1, 1)).expect("policy");
    expect(
        &xdp,
        "A denied again",
        &from_a,
        class::DHCP_SERVER,
        Some(drop_reason::DENIED_MAC),
    );
    assert_eq!(ring.drain(), [(MAC_A, "denied_mac")]);
}
