//! The XDP classifier run by the kernel on crafted frames (BPF_PROG_TEST_RUN): every class, VLAN
//! tags, IP options, fragments and malformed headers, with exact per-class counters. Under the
//! default (permissive) policy none of these frames is dropped; drops are in `xdp_policy.rs`.
mod support;

use stampede_dataplane::xdp::{ClassCounters, XdpClassifier, action};
use stampede_ebpf_common::{XdpConfig, XdpPolicy, class};
use support::frames::*;

fn classifier(test: &str, http_port: u16) -> Option<XdpClassifier> {
    if !stampede_lab::require(test, &[]) {
        return None;
    }
    Some(
        XdpClassifier::load(XdpConfig::new(http_port)).unwrap_or_else(|err| {
            panic!(
                "{test}: loading the classifier failed: {}",
                stampede_dataplane::xdp::error_chain(&err)
            )
        }),
    )
}

/// Runs `frame` once and asserts that exactly one packet of `frame.len()` bytes was counted, in
/// `want`, and that the frame was passed without a drop being counted.
fn assert_class(xdp: &XdpClassifier, name: &str, frame: &[u8], want: u32) {
    let before = xdp.counters().expect("counters");
    let drops_before = xdp.drops().expect("drops");
    let verdict = xdp
        .test_run(frame)
        .unwrap_or_else(|err| panic!("{name}: test run: {err}"));
    assert_eq!(
        verdict,
        action::PASS,
        "{name}: the default policy passes this frame"
    );
    let drops = xdp.drops().expect("drops").since(&drops_before);
    assert_eq!(drops.total_packets(), 0, "{name}: dropped as [{drops}]");
    let delta = xdp.counters().expect("counters").since(&before);
    let mut expected = ClassCounters::default();
    expected.by_class[want as usize].packets = 1;
    expected.by_class[want as usize].bytes = frame.len() as u64;
    assert_eq!(
        delta,
        expected,
        "{name}: counted as [{delta}], expected class {}",
        class::NAMES[want as usize]
    );
}

fn ip_udp(dport: u16) -> Vec<u8> {
    ipv4(IPPROTO_UDP, 0, &[], &udp(68, dport, &dhcp_discover()))
}

#[test]
fn every_class_is_counted_exactly() {
    let Some(xdp) = classifier(stampede_lab::test_name!(), 8080) else {
        return;
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "dhcp discover",
            ethernet(None, ETH_P_IP, &ip_udp(67)),
            class::DHCP_SERVER,
        ),
        (
            "proxydhcp",
            ethernet(None, ETH_P_IP, &ip_udp(4011)),
            class::PROXY_DHCP,
        ),
        (
            "tftp rrq",
            ethernet(None, ETH_P_IP, &ip_udp(69)),
            class::TFTP,
        ),
        (
            "http syn",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_TCP, IP_DF, &[], &tcp_syn(40000, 8080)),
            ),
            class::HTTP,
        ),
        (
            "tcp to another port",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_TCP, IP_DF, &[], &tcp_syn(40000, 22)),
            ),
            class::OTHER,
        ),
        (
            "dhcp reply to client port",
            ethernet(None, ETH_P_IP, &ip_udp(68)),
            class::OTHER,
        ),
        (
            "udp elsewhere",
            ethernet(None, ETH_P_IP, &ip_udp(53)),
            class::OTHER,
        ),
        (
            "icmp",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_ICMP, 0, &[], &[8, 0, 0, 0, 0, 0, 0, 0]),
            ),
            class::OTHER,
        ),
        ("arp", ethernet(None, ETH_P_ARP, &[0u8; 28]), class::OTHER),
        (
            "ipv6",
            ethernet(None, ETH_P_IPV6, &[0x60; 48]),
            class::OTHER,
        ),
        (
            "802.1Q tagged dhcp",
            ethernet(Some((ETH_P_8021Q, 42)), ETH_P_IP, &ip_udp(67)),
            class::DHCP_SERVER,
        ),
        (
            "802.1ad tagged tftp",
            ethernet(Some((ETH_P_8021AD, 7)), ETH_P_IP, &ip_udp(69)),
            class::TFTP,
        ),
        (
            "ip options then dhcp",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(
                    IPPROTO_UDP,
                    0,
                    &[0x94, 0x04, 0, 0, 1, 1, 1, 0],
                    &udp(68, 67, &dhcp_discover()),
                ),
            ),
            class::DHCP_SERVER,
        ),
        (
            "first fragment to 67 is not parsed as UDP",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, IP_MF, &[], &udp(68, 67, &[0; 32])),
            ),
            class::OTHER,
        ),
        (
            "later fragment is not parsed as UDP",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_UDP, 185, &[], &udp(68, 67, &[0; 32])),
            ),
            class::OTHER,
        ),
        (
            "ethernet only",
            ethernet(None, ETH_P_IP, &[]),
            class::MALFORMED,
        ),
        (
            "vlan tag cut short",
            ethernet(None, ETH_P_8021Q, &[0x00]),
            class::MALFORMED,
        ),
        (
            "ipv4 header cut short",
            ethernet(None, ETH_P_IP, &ip_udp(67)[..12]),
            class::MALFORMED,
        ),
        (
            "ihl below 5",
            ethernet(None, ETH_P_IP, &{
                let mut p = ip_udp(67);
                p[0] = 0x44;
                p
            }),
            class::MALFORMED,
        ),
        (
            "ihl past the end",
            ethernet(None, ETH_P_IP, &{
                let mut p = ipv4(IPPROTO_UDP, 0, &[], &[]);
                p[0] = 0x4F;
                p
            }),
            class::MALFORMED,
        ),
        (
            "version 6 in an ipv4 frame",
            ethernet(None, ETH_P_IP, &{
                let mut p = ip_udp(67);
                p[0] = 0x65;
                p
            }),
            class::MALFORMED,
        ),
        (
            "total length below header length",
            ethernet(None, ETH_P_IP, &{
                let mut p = ip_udp(67);
                p[2..4].copy_from_slice(&12u16.to_be_bytes());
                p
            }),
            class::MALFORMED,
        ),
        (
            "udp header cut short",
            ethernet(None, ETH_P_IP, &ipv4(IPPROTO_UDP, 0, &[], &[0, 68, 0, 67])),
            class::MALFORMED,
        ),
        (
            "tcp header cut short",
            ethernet(
                None,
                ETH_P_IP,
                &ipv4(IPPROTO_TCP, 0, &[], &tcp_syn(1, 8080)[..12]),
            ),
            class::MALFORMED,
        ),
    ];
    for (name, frame, want) in &cases {
        assert_class(&xdp, name, frame, *want);
    }
    // The totals are the sum of the cases: nothing was counted twice or dropped.
    let total = xdp.counters().expect("counters");
    let packets: u64 = total.by_class.iter().map(|c| c.packets).sum();
    assert_eq!(packets, cases.len() as u64, "{total}");
}

#[test]
fn http_port_comes_from_the_config_map() {
    let Some(xdp) = classifier(stampede_lab::test_name!(), 9090) else {
        return;
    };
    let syn = |port| {
        ethernet(
            None,
            ETH_P_IP,
            &ipv4(IPPROTO_TCP, IP_DF, &[], &tcp_syn(5000, port)),
        )
    };
    assert_class(&xdp, "configured port", &syn(9090), class::HTTP);
    assert_class(
        &xdp,
        "default port is not special",
        &syn(8080),
        class::OTHER,
    );
}

#[test]
fn counters_accumulate_over_repeated_runs() {
    let Some(mut xdp) = classifier(stampede_lab::test_name!(), 8080) else {
        return;
    };
    // 1000 DISCOVERs from one MAC are a flood the default per-MAC bucket stops; this test is
    // about counting, so the bucket is made deep enough.
    xdp.set_policy(XdpPolicy {
        dhcp_burst: 1000,
        ..XdpPolicy::permissive()
    })
    .expect("set policy");
    let frame = ethernet(None, ETH_P_IP, &ip_udp(67));
    let (verdict, _ns) = xdp.test_run_repeat(&frame, 1000).expect("test run");
    assert_eq!(verdict, action::PASS);
    let c = xdp.counters().expect("counters").get(class::DHCP_SERVER);
    assert_eq!(c.packets, 1000);
    assert_eq!(c.bytes, 1000 * frame.len() as u64);
}
