//! The AF_XDP path: the XDP program's steering decision under BPF_PROG_TEST_RUN (with and
//! without a socket bound), and real clients (busybox udhcpc, tftp-hpa, atftp) served by
//! `stampede boot --afxdp on` through AF_XDP sockets on a veth, with XDP in native and in
//! generic mode. The counters prove the frames went through AF_XDP: the io_uring UDP workers
//! do not run in this mode, and the XDP program counts every redirect.
mod support;

use std::{collections::HashMap, time::Duration};

use stampede_dataplane::{
    sys::afxdp::{XskBind, XskConfig, XskSocket},
    xdp::{XdpClassifier, action},
};
use stampede_ebpf_common::{AfXdpSteering, XdpConfig, steer};
use stampede_lab::{TwoHosts, require};
use support::{appliance::*, frames::*};

fn steered(xdp: &XdpClassifier) -> [u64; steer::COUNT as usize] {
    let counters = xdp.steer_counters().expect("steering counters");
    [
        counters[steer::REDIRECTED as usize].packets,
        counters[steer::NO_SOCKET as usize].packets,
    ]
}

/// Runs `frame` and returns the action and how the steering counters moved
/// (`[redirected, no_socket]`).
fn run(xdp: &XdpClassifier, frame: &[u8]) -> (u32, [u64; 2]) {
    let before = steered(xdp);
    let verdict = xdp.test_run(frame).expect("test run");
    let after = steered(xdp);
    (verdict, [after[0] - before[0], after[1] - before[1]])
}

/// An ARP message (RFC 826) from 198.18.0.2 about `target`; `op` 1 is a request, 2 a reply.
fn arp(op: u16, target: [u8; 4]) -> Vec<u8> {
    let mut body = vec![0, 1, 0x08, 0x00, 6, 4];
    body.extend_from_slice(&op.to_be_bytes());
    body.extend_from_slice(&SRC_MAC);
    body.extend_from_slice(&[198, 18, 0, 2]);
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&target);
    ethernet(None, ETH_P_ARP, &body)
}

fn boot_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(68, dport, payload)),
    )
}

#[test]
fn steering_redirects_admitted_boot_frames_to_the_queue_socket() {
    if !require!(&[]) {
        return;
    }
    let mut xdp = XdpClassifier::load(XdpConfig::default()).expect("load the classifier");
    let discover = boot_udp(67, &dhcp_discover());
    let rrq = boot_udp(69, &tftp_rrq("undionly.kpxe"));
    let transfer_ack = boot_udp(40_000, &[0, 4, 0, 1]);
    let other_udp = boot_udp(5353, b"mdns");
    let http = ethernet(
        None,
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, 0, &[], &tcp_syn(40_000, 8080)),
    );
    let short_dhcp = boot_udp(67, b"too short for BOOTP");

    // Steering off (the initial map value): everything admitted is passed, nothing counted.
    assert_eq!(run(&xdp, &discover), (action::PASS, [0, 0]));

    // On, with no socket on queue 0: admitted boot frames fall back to the kernel, counted.
    // Port 40000 is a running transfer's; 40001, next to it, is nobody's.
    let ports = xdp.afxdp_ports().expect("the transfer port map");
    ports.open(40_000).expect("steer port 40000");
    assert!(ports.is_open(40_000).expect("read the map"));
    xdp.set_afxdp_steering(AfXdpSteering {
        enabled: 1,
        server_ip: [198, 18, 0, 1],
    })
    .expect("steering on");
    assert_eq!(run(&xdp, &discover), (action::PASS, [0, 1]));
    assert_eq!(run(&xdp, &transfer_ack), (action::PASS, [0, 1]));
    let neighbour_port = boot_udp(40_001, &[0, 4, 0, 1]);
    assert_eq!(run(&xdp, &neighbour_port), (action::PASS, [0, 0]));

    // A socket bound to queue 0 of a veth, registered: test runs are on queue 0.
    let lab = TwoHosts::new().expect("lab");
    let iface = lab.server_if.clone();
    let socket = lab
        .server
        .in_namespace(move || {
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).expect("ifindex");
            XskSocket::bind(
                ifindex,
                0,
                XskConfig {
                    bind: XskBind::Copy,
                    ..XskConfig::default()
                },
            )
        })
        .expect("enter the namespace")
        .expect("bind an AF_XDP socket to the veth's queue 0");
    assert!(!socket.zero_copy(), "copy mode was asked for");
    xdp.register_xsk(0, std::os::fd::AsFd::as_fd(&socket))
        .expect("register the socket");

    let arp_for_us = arp(1, [198, 18, 0, 1]);
    for (name, frame) in [
        ("DHCP", &discover),
        ("TFTP RRQ", &rrq),
        ("transfer ACK", &transfer_ack),
        ("ARP request for the server", &arp_for_us),
    ] {
        assert_eq!(
            run(&xdp, frame),
            (action::REDIRECT, [1, 0]),
            "{name} goes to the socket"
        );
    }
    let tagged_discover = ethernet(
        Some((ETH_P_8021Q, 42)),
        ETH_P_IP,
        &ipv4(IPPROTO_UDP, 0, &[], &udp(68, 67, &dhcp_discover())),
    );
    for (name, frame) in [
        ("other UDP", &other_udp),
        ("UDP to a port no transfer holds", &neighbour_port),
        ("HTTP", &http),
        ("VLAN-tagged DHCP", &tagged_discover),
        ("ARP request for another host", &arp(1, [198, 18, 0, 7])),
        ("ARP reply", &arp(2, [198, 18, 0, 1])),
    ] {
        assert_eq!(
            run(&xdp, frame),
            (action::PASS, [0, 0]),
            "{name} stays in the kernel"
        );
    }
    // Dropped frames are never steered.
    assert_eq!(run(&xdp, &short_dhcp), (action::DROP, [0, 0]));

    // Off again: passed, not counted.
    xdp.set_afxdp_steering(AfXdpSteering::default())
        .expect("steering off");
    assert_eq!(run(&xdp, &discover), (action::PASS, [0, 0]));
    assert_eq!(run(&xdp, &transfer_ack), (action::PASS, [0, 0]));

    // A finished transfer's port is the kernel's again.
    xdp.set_afxdp_steering(AfXdpSteering {
        enabled: 1,
        server_ip: [198, 18, 0, 1],
    })
    .expect("steering on again");
    assert_eq!(run(&xdp, &transfer_ack), (action::REDIRECT, [1, 0]));
    ports.close(40_000).expect("release port 40000");
    assert!(!ports.is_open(40_000).expect("read the map"));
    assert_eq!(run(&xdp, &transfer_ack), (action::PASS, [0, 0]));

    // Unregistered (or closed): back to the fallback.
    xdp.set_afxdp_steering(AfXdpSteering {
        enabled: 1,
        server_ip: [0; 4],
    })
    .expect("steering on, no server address");
    xdp.unregister_xsk(0).expect("unregister");
    assert_eq!(run(&xdp, &discover), (action::PASS, [0, 1]));
    assert_eq!(run(&xdp, &transfer_ack), (action::PASS, [0, 0]));
    assert_eq!(
        run(&xdp, &arp_for_us),
        (action::PASS, [0, 0]),
        "no server address: ARP stays with the kernel"
    );
}

/// Starts `count` transfers from `client` (a socket each, asking for `blksize` so the server
/// answers with an OACK), ends each with an ERROR, and returns the distinct server ports the
/// OACKs came from.
fn transfer_ports(
    client: &stampede_lab::Netns,
    server: std::net::SocketAddr,
    count: usize,
) -> Vec<u16> {
    client
        .in_namespace(move || {
            let mut request = tftp_rrq("vmlinuz");
            request.extend_from_slice(b"blksize\x001468\x00");
            let mut ports = Vec::new();
            for _ in 0..count {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("client socket");
                socket
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                socket.send_to(&request, server).expect("send the RRQ");
                let mut buf = [0u8; 64];
                let (n, from) = socket.recv_from(&mut buf).expect("the OACK");
                assert_eq!(buf[..2], [0, 6], "an OACK: {:?}", &buf[..n]);
                socket
                    .send_to(b"\0\x05\0\0done\0", from)
                    .expect("send the ERROR");
                if !ports.contains(&from.port()) {
                    ports.push(from.port());
                }
            }
            ports
        })
        .expect("enter the client namespace")
}

/// `key=N` counts of the `xdp_steer` line (`redirected=3/1032B ...`).
fn steer_line(stdout: &str) -> HashMap<String, u64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("xdp_steer "))
        .unwrap_or_else(|| panic!("no xdp_steer line in:\n{stdout}"))
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            let packets = v.split('/').next().unwrap_or(v);
            (k.to_owned(), packets.parse().expect("a count"))
        })
        .collect()
}

fn real_clients_are_served_through_afxdp(test: &str, xdp_mode: &str) {
    if !require(test, &["busybox", "tftp", "atftp", "ss", "ethtool"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(1 << 20, 256 << 10)
        .dhcp_range(100, 150)
        .xdp_mode(xdp_mode)
        .args(&["--afxdp", "on"])
        .start();

    // DHCP: a full DORA with busybox udhcpc; its script puts the address on the interface.
    let script = udhcpc_script(payload.dir.path());
    let out = udhcpc(&lab.client, &lab.client_if, 4, &script, UDHCPC_BIOS);
    let lease = bound(&out.combined());
    assert_eq!(lease["serverid"], lab.server_ip().to_string());

    // A datagram from the client's kernel while veth checksum offload is still on: its UDP
    // checksum is only the pseudo-header's, so the AF_XDP path must count it as a drop (and
    // answer nothing) rather than serve or crash.
    let server_69 = std::net::SocketAddr::from((lab.server_ip(), 69));
    lab.client
        .in_namespace(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("client socket");
            socket
                .send_to(&tftp_rrq("vmlinuz"), server_69)
                .expect("send a stray RRQ");
        })
        .expect("enter the client namespace");

    // veth hands frames over with the UDP checksum still to be filled (checksum offload); a
    // real NIC puts the final one on the wire. Turning the offload off makes the client's
    // frames what they would be on a cable, which the AF_XDP path verifies.
    let out = lab
        .client
        .run(
            "ethtool",
            &["-K", &lab.client_if, "tx", "off"],
            Duration::from_secs(10),
        )
        .expect("ethtool");
    assert!(
        out.status.success(),
        "ethtool: {}{}",
        out.stdout,
        out.stderr
    );

    // TFTP: tftp-hpa (no options, 512-byte lock-step) and atftp (blksize, windowsize).
    let ip = lab.server_ip().to_string();
    let dir = payload.dir.path();
    let got = dir.join("hpa.vmlinuz");
    let out = lab
        .client
        .run(
            "tftp",
            &[
                &ip,
                "-m",
                "binary",
                "-c",
                "get",
                "vmlinuz",
                got.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        )
        .expect("tftp");
    assert!(
        out.status.success(),
        "tftp-hpa: {}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        sha256_file(&got),
        sha256_file(&payload.kernel),
        "tftp-hpa vmlinuz"
    );

    let got = dir.join("atftp.initrd");
    let out = lab
        .client
        .run(
            "atftp",
            &[
                "--option",
                "blksize 1468",
                "--option",
                "windowsize 8",
                "-g",
                "-r",
                "initrd.img",
                "-l",
                got.to_str().unwrap(),
                &ip,
            ],
            Duration::from_secs(60),
        )
        .expect("atftp");
    assert!(out.status.success(), "atftp: {}{}", out.stdout, out.stderr);
    assert_eq!(
        sha256_file(&got),
        sha256_file(&payload.initrd),
        "atftp initrd"
    );

    // Issue 19: each transfer answers from a port of its own drawn from all unprivileged ports
    // (1024-65535), as on the io_uring path: an off-path guess hits a transfer about once in
    // 64,512. (The path used to draw from the 4,535 ports above the kernel's ephemeral range.)
    let ports = transfer_ports(&lab.client, server_69, 32);
    eprintln!("AF_XDP transfer ports: {ports:?}");
    assert!(
        ports.len() >= 30,
        "32 transfers should have (nearly) 32 ports: {ports:?}"
    );
    assert!(ports.iter().all(|p| *p >= 1024), "{ports:?}");
    // Uniform over 1024-65535: all 32 above 60999 by chance is about 1e-37.
    assert!(
        ports.iter().any(|p| *p <= 60_999),
        "every transfer port is above the kernel's ephemeral range: {ports:?}"
    );

    let (out, stats) = stop(server);
    let context = format!("{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("afxdp iface=")),
        "the AF_XDP path did not start:\n{context}"
    );
    // In: DISCOVER, REQUEST, two RRQs, tftp-hpa's ACK of each of its 512-byte blocks (atftp
    // acknowledges once per window). Out: OFFER, ACK, every DATA block of both transfers.
    let received = stats["afxdp_rx"];
    let sent = stats["afxdp_tx"];
    let hpa_blocks = (1u64 << 20) / 512;
    let atftp_blocks = (256u64 << 10) / 1468;
    assert!(
        received >= 4 + hpa_blocks,
        "afxdp_rx={received}:\n{context}"
    );
    assert!(
        sent >= 2 + hpa_blocks + atftp_blocks,
        "afxdp_tx={sent}:\n{context}"
    );
    assert!(stats["dhcp_replies"] >= 2, "{context}");
    // The client resolved the server's address before its first RRQ: answered by the path.
    assert!(stats["afxdp_arp_replies"] >= 1, "{context}");
    assert_eq!(stats["tftp_completed"], 2, "{context}");
    // The probes' transfers, each ended by the client's ERROR after the OACK.
    assert!(stats["tftp_started"] >= 2 + 32, "{context}");
    let drops: Vec<_> = stats
        .iter()
        .filter(|(k, _)| k.starts_with("afxdp_dropped."))
        .collect();
    assert_eq!(
        drops,
        vec![(&"afxdp_dropped.bad_udp_checksum".to_owned(), &1)],
        "exactly the stray datagram is dropped on the AF_XDP path:\n{context}"
    );
    let steer = steer_line(&out.stdout);
    assert_eq!(steer["no_socket"], 0, "{context}");
    assert!(
        steer["redirected"] >= received,
        "redirected {steer:?} < received {received}"
    );
}

#[test]
fn real_clients_are_served_through_afxdp_in_native_mode() {
    real_clients_are_served_through_afxdp(stampede_lab::test_name!(), "native");
}

#[test]
fn real_clients_are_served_through_afxdp_in_generic_mode() {
    real_clients_are_served_through_afxdp(stampede_lab::test_name!(), "generic");
}

#[test]
fn auto_falls_back_to_io_uring_sockets_and_says_why() {
    if !require!(&["tftp", "ss"]) {
        return;
    }
    // No classifier, so nothing can steer frames to AF_XDP sockets.
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(64 << 10, 1 << 10)
        .client_address()
        .xdp_mode("off")
        .args(&["--afxdp", "auto"])
        .start();
    let got = payload.dir.path().join("vmlinuz");
    let out = lab
        .client
        .run(
            "tftp",
            &[
                &lab.server_ip().to_string(),
                "-m",
                "binary",
                "-c",
                "get",
                "vmlinuz",
                got.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .expect("tftp");
    assert!(
        out.status.success(),
        "tftp-hpa: {}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(sha256_file(&got), sha256_file(&payload.kernel));
    let (out, stats) = stop(server);
    let context = format!("{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("AF_XDP path not used")
            && out.stderr.contains("the XDP classifier is not attached"),
        "the fallback is logged with its reason:\n{context}"
    );
    assert_eq!(stats["tftp_completed"], 1, "{context}");
    assert_eq!(stats["afxdp_rx"], 0, "{context}");
}

#[test]
fn on_refuses_to_start_without_the_afxdp_path() {
    if !require!(&[]) {
        return;
    }
    let lab = TwoHosts::new().expect("lab");
    let payload = Payload::new(1 << 10, 1 << 10);
    let mut command = lab.server.command(STAMPEDE);
    command
        .args([
            "boot",
            "--iface",
            &lab.server_if,
            "--xdp-mode",
            "off",
            "--afxdp",
            "on",
        ])
        .args(["--api", "off", "--state"])
        .arg(payload.dir.path().join("state.redb"))
        .arg(&payload.kernel)
        .arg(&payload.initrd);
    let out = stampede_lab::run_with_timeout(command, Duration::from_secs(20)).expect("runs");
    assert!(!out.status.success(), "started anyway: {}", out.stdout);
    assert!(
        out.stderr.contains("xdp.afxdp = on") && out.stderr.contains("not attached"),
        "the refusal says why: {}",
        out.stderr
    );
}

/// Milliseconds of each of `runs` atftp downloads of the payload's kernel (blksize 1468,
/// windowsize 16) from `stampede boot` with `xdp_mode` and `--afxdp afxdp`, checked byte-exact.
fn timed_downloads(xdp_mode: &str, afxdp: &str, payload: &Payload, runs: usize) -> Vec<f64> {
    let lab = TwoHosts::new().expect("lab");
    lab.client
        .ip(&["addr", "add", &lab.subnet.cidr(2), "dev", &lab.client_if])
        .expect("addr");
    let out = lab
        .client
        .run(
            "ethtool",
            &["-K", &lab.client_if, "tx", "off"],
            Duration::from_secs(10),
        )
        .expect("ethtool");
    assert!(
        out.status.success(),
        "ethtool: {}{}",
        out.stdout,
        out.stderr
    );
    let server = start_boot_xdp(
        &lab.server,
        &lab.server_if,
        xdp_mode,
        &["--afxdp", afxdp],
        payload,
    );
    let ip = lab.server_ip().to_string();
    let want = sha256_file(&payload.kernel);
    let mut times = Vec::new();
    for run in 0..runs {
        let got = payload
            .dir
            .path()
            .join(format!("bench-{xdp_mode}-{afxdp}-{run}"));
        let started = std::time::Instant::now();
        let out = lab
            .client
            .run(
                "atftp",
                &[
                    "--option",
                    "blksize 1468",
                    "--option",
                    "windowsize 16",
                    "-g",
                    "-r",
                    "vmlinuz",
                    "-l",
                    got.to_str().unwrap(),
                    &ip,
                ],
                Duration::from_secs(120),
            )
            .expect("atftp");
        times.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(out.status.success(), "atftp: {}{}", out.stdout, out.stderr);
        assert_eq!(sha256_file(&got), want, "download {run}");
        std::fs::remove_file(&got).expect("remove the download");
    }
    let (_, stats) = stop(server);
    let via_afxdp = stats["afxdp_rx"] > 0;
    assert_eq!(
        via_afxdp,
        afxdp == "on",
        "served by the path asked for: {stats:?}"
    );
    times
}

/// A benchmark, not a test: `cargo test --release --test afxdp_lab -- --ignored --nocapture
/// bench_`. One 32 MiB TFTP download (atftp, blksize 1468, windowsize 16) over a veth, five times
/// per path: io_uring sockets (no XDP), io_uring behind the classifier (native XDP), AF_XDP with
/// native XDP, AF_XDP with generic XDP. Prints each path's median and its ratio to io_uring.
#[test]
#[ignore = "a benchmark; run by hand"]
fn bench_tftp_download_afxdp_against_io_uring() {
    if !require!(&["atftp", "ss", "ethtool"]) {
        return;
    }
    let payload = Payload::new(32 << 20, 1 << 10);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let paths = [
        ("io_uring, no XDP", "off", "off"),
        ("io_uring, native XDP", "native", "off"),
        ("AF_XDP, native XDP (copy)", "native", "on"),
        ("AF_XDP, generic XDP (copy)", "generic", "on"),
    ];
    let mut baseline = None;
    for (name, xdp_mode, afxdp) in paths {
        let times = timed_downloads(xdp_mode, afxdp, &payload, 5);
        let m = median(times.clone());
        let base = *baseline.get_or_insert(m);
        println!(
            "{name:<28} median {m:8.1} ms  {:6.1} MiB/s  ratio to io_uring {:.2}  runs {times:.1?}",
            32.0 / (m / 1e3),
            m / base
        );
    }
}
