//! Benchmarks of the XDP classifier, run by hand (ignored tests, not timed assertions):
//!
//! ```text
//! cargo test --release -p stampede --test xdp_bench_lab -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `per_packet_cost`: the program's mean cost per frame, as the kernel measures it with
//!   `BPF_PROG_TEST_RUN` and `repeat`, for every class and every drop reason.
//! - `flood_drop_rate`: a bounded DISCOVER flood ([`stampede_lab::flood`]) over a veth pair, with
//!   the classifier attached to the receiving end natively and generically (and not at all, for
//!   the baseline): frames per second sent and dropped in XDP.
//!
//! Results go to stdout as Markdown tables; `docs/benchmarks/xdp.md` records them.
mod support;

use std::time::Duration;

use stampede_dataplane::xdp::{AttachMode, XdpClassifier, action};
use stampede_ebpf_common::{XdpConfig, XdpPolicy, drop_reason};
use stampede_lab::{TwoHosts, flood::FloodConfig, require};
use support::frames::*;

const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0A];
const RELAY: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

/// A bucket that never runs dry within a benchmark (4 billion tokens), so "admitted" stays
/// admitted for every repeat.
fn endless() -> XdpPolicy {
    XdpPolicy {
        dhcp_rate_per_sec: 1,
        dhcp_burst: u32::MAX,
        tftp_rate_per_sec: 1,
        tftp_burst: u32::MAX,
        known_only: 0,
    }
}

fn load(policy: XdpPolicy) -> XdpClassifier {
    let config = XdpConfig::new(XdpConfig::DEFAULT_HTTP_PORT).with_policy(policy);
    XdpClassifier::load(config).unwrap_or_else(|e| {
        panic!(
            "loading the classifier: {}",
            stampede_dataplane::xdp::error_chain(&e)
        )
    })
}

/// Median and minimum of the kernel's mean ns per run over [`ROUNDS`] rounds of [`REPEAT`].
fn measure(xdp: &XdpClassifier, frame: &[u8], want: u32, name: &str) -> (f64, f64) {
    // One run first, so a bucket is created and spent as it will be in the measured runs.
    xdp.test_run(frame).expect("warm-up run");
    let mut samples: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let (verdict, ns) = xdp.test_run_repeat(frame, REPEAT).expect("test run");
            assert_eq!(verdict, want, "{name}: unexpected XDP action");
            ns as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[ROUNDS / 2], samples[0])
}

/// Name, classifier (with its policy and lists), frame, expected action, expected drop reason.
type Case<'a> = (&'static str, &'a XdpClassifier, Vec<u8>, u32, Option<u32>);

#[test]
#[ignore = "benchmark: run by hand with --release --ignored --nocapture"]
fn per_packet_cost() {
    if !require!(&[]) {
        return;
    }
    let dhcp = |mac, tag, options: &[u8]| {
        let body = dhcp_discover_relayed(mac, [0; 4]);
        ethernet_from(
            mac,
            tag,
            ETH_P_IP,
            &ipv4(IPPROTO_UDP, 0, options, &udp(68, 67, &body)),
        )
    };
    let rrq = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(2000, 69, &tftp_rrq("ipxe.efi"))),
    );
    let dns = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(5353, 53, &[0; 32])),
    );
    let ssh = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, 0, &[], &tcp_syn(40000, 22)),
    );
    let http = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, 0, &[], &tcp_syn(40000, 8080)),
    );
    let ipv6 = ethernet(None, ETH_P_IPV6, &[0x60; 60]);
    let fragment = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(
            IPPROTO_UDP,
            IP_MF,
            &[],
            &udp(68, 67, &dhcp_discover_relayed(MAC_A, [0; 4])),
        ),
    );
    let short_dhcp = ethernet_from(
        MAC_A,
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(68, 67, &[1, 1, 6, 0])),
    );
    let nops = [1u8; 40];

    let open = load(endless());
    let mut known = load(XdpPolicy {
        known_only: 1,
        ..endless()
    });
    known.allow_mac(MAC_A).expect("allow");
    let mut denying = load(endless());
    denying.deny_mac(MAC_A).expect("deny");
    let limited = load(XdpPolicy {
        dhcp_rate_per_sec: 0,
        dhcp_burst: 1,
        tftp_rate_per_sec: 0,
        tftp_burst: 1,
        known_only: 0,
    });

    let cases: Vec<Case<'_>> = vec![
        (
            "DHCP admitted (open)",
            &open,
            dhcp(MAC_A, None, &[]),
            action::PASS,
            None,
        ),
        (
            "DHCP admitted (known-only, allowed)",
            &known,
            dhcp(MAC_A, None, &[]),
            action::PASS,
            None,
        ),
        (
            "DHCP admitted, 802.1Q tag",
            &open,
            dhcp(MAC_A, Some((ETH_P_8021Q, 5)), &[]),
            action::PASS,
            None,
        ),
        (
            "DHCP admitted, 40 B of IP options",
            &open,
            dhcp(MAC_A, None, &nops),
            action::PASS,
            None,
        ),
        (
            "DHCP relayed (chaddr ≠ source)",
            &open,
            {
                let body = dhcp_discover_relayed(MAC_A, [198, 18, 0, 1]);
                ethernet_from(
                    RELAY,
                    None,
                    ETH_P_IP,
                    &ipv4(IPPROTO_UDP, 0, &[], &udp(67, 67, &body)),
                )
            },
            action::PASS,
            None,
        ),
        (
            "DHCP dropped: rate limited",
            &limited,
            dhcp(MAC_A, None, &[]),
            action::DROP,
            Some(drop_reason::DHCP_RATE_LIMITED),
        ),
        (
            "DHCP dropped: unknown MAC",
            &known,
            dhcp([0x02, 9, 9, 9, 9, 9], None, &[]),
            action::DROP,
            Some(drop_reason::UNKNOWN_MAC),
        ),
        (
            "DHCP dropped: denied MAC",
            &denying,
            dhcp(MAC_A, None, &[]),
            action::DROP,
            Some(drop_reason::DENIED_MAC),
        ),
        (
            "DHCP dropped: malformed",
            &open,
            short_dhcp,
            action::DROP,
            Some(drop_reason::MALFORMED_BOOT),
        ),
        ("TFTP RRQ admitted", &open, rrq.clone(), action::PASS, None),
        (
            "TFTP RRQ dropped: admission",
            &limited,
            rrq,
            action::DROP,
            Some(drop_reason::TFTP_ADMISSION),
        ),
        (
            "HTTP SYN (counted, passed)",
            &open,
            http,
            action::PASS,
            None,
        ),
        ("non-boot UDP (DNS), passed", &open, dns, action::PASS, None),
        (
            "non-boot TCP (SSH SYN), passed",
            &open,
            ssh,
            action::PASS,
            None,
        ),
        ("IPv6, passed", &open, ipv6, action::PASS, None),
        (
            "IPv4 fragment to 67, passed",
            &open,
            fragment,
            action::PASS,
            None,
        ),
    ];
    println!("\n| case | frame bytes | ns/frame (median of {ROUNDS}) | min |");
    println!("|---|---|---|---|");
    for (name, xdp, frame, want, reason) in cases {
        let drops_before = reason.map(|r| xdp.drops().expect("drops").packets(r));
        let (median, min) = measure(xdp, &frame, want, name);
        if let (Some(r), Some(before)) = (reason, drops_before) {
            let counted = xdp.drops().expect("drops").packets(r) - before;
            assert!(
                counted >= u64::from(REPEAT) * ROUNDS as u64,
                "{name}: drops counted under the wrong reason"
            );
        }
        println!("| {name} | {} | {median:.1} | {min:.1} |", frame.len());
    }
}

/// Runs one flood over a fresh lab with the classifier attached in `mode` (`None`: no XDP) and
/// returns (sent/s, dropped-in-XDP/s, sent, dropped).
fn flood_once(
    mode: Option<AttachMode>,
    policy: XdpPolicy,
    hot: bool,
    packets: u64,
) -> (f64, f64, u64, u64) {
    let lab = TwoHosts::new().expect("lab");
    let iface = lab.server_if.clone();
    let classifier = mode.map(|mode| {
        lab.server
            .in_namespace(move || {
                let mut xdp = load(policy);
                let attachment = xdp.attach(&iface, mode).expect("attach");
                assert_eq!(attachment.mode, mode, "attached in the mode asked for");
                xdp
            })
            .expect("in the server namespace")
    });
    let mut config = FloodConfig::new(&lab.client_if, packets, Duration::from_secs(20));
    if hot {
        config.hot_macs = (1..=4).map(|i| [0x52, 0x54, 0, 0, 0xF0, i]).collect();
        config.hot_every = 1;
    }
    let report = lab.client.flood(config).expect("flood");
    // Let the receiving side finish what is queued before the counters are read.
    std::thread::sleep(Duration::from_millis(200));
    let dropped = classifier
        .as_ref()
        .map_or(0, |x| x.drops().expect("drops").total_packets());
    if let Some(xdp) = classifier {
        lab.server
            .in_namespace(move || drop(xdp))
            .expect("detach in the server namespace");
    }
    let secs = report.elapsed.as_secs_f64();
    (
        report.sent as f64 / secs,
        dropped as f64 / secs,
        report.sent,
        dropped,
    )
}

#[test]
#[ignore = "benchmark: run by hand with --release --ignored --nocapture"]
fn flood_drop_rate() {
    if !require!(&[]) {
        return;
    }
    const PACKETS: u64 = 3_000_000;
    let known_only = XdpPolicy {
        known_only: 1,
        ..XdpPolicy::permissive()
    };
    let cases: [(&str, Option<AttachMode>, XdpPolicy, bool); 5] = [
        (
            "no XDP (kernel drops: no socket on 67)",
            None,
            XdpPolicy::permissive(),
            false,
        ),
        (
            "generic, known-only (unknown_mac)",
            Some(AttachMode::Generic),
            known_only,
            false,
        ),
        (
            "native, known-only (unknown_mac)",
            Some(AttachMode::Native),
            known_only,
            false,
        ),
        (
            "native, open, random MACs (all passed)",
            Some(AttachMode::Native),
            XdpPolicy::permissive(),
            false,
        ),
        (
            "native, open, 4 hot MACs (dhcp_rate_limited)",
            Some(AttachMode::Native),
            XdpPolicy::permissive(),
            true,
        ),
    ];
    println!(
        "\n| attach, policy | frames sent | sent/s | dropped in XDP | dropped/s | dropped/sent |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, mode, policy, hot) in cases {
        let (sent_rate, drop_rate, sent, dropped) = flood_once(mode, policy, hot, PACKETS);
        println!(
            "| {name} | {sent} | {sent_rate:.0} | {dropped} | {drop_rate:.0} | {:.3} |",
            dropped as f64 / sent as f64
        );
    }
}
