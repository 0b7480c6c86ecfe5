//! The UDP worker on loopback.
use std::{collections::HashSet, net::UdpSocket};

use super::*;
use crate::sys::probe::uring_available;

fn loopback_socket() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a loopback UDP socket")
}

fn worker(config: UdpWorkerConfig) -> (UdpWorker, SocketAddr) {
    let worker = UdpWorker::new(loopback_socket(), config).expect("creating the worker");
    let address = worker.local_addr().expect("worker address");
    (worker, address)
}

/// Runs the worker until `want` datagrams arrived in total or `within` passed, echoing each.
fn echo_until(worker: &mut UdpWorker, want: usize, within: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while seen.len() < want && Instant::now() < deadline {
        worker
            .run_once(Some(deadline), |d, out| {
                seen.push((d.source, d.payload.to_vec()));
                out.send_to(d.source, d.payload.to_vec());
            })
            .expect("run_once");
    }
    seen
}

fn payload(i: usize) -> Vec<u8> {
    // Distinct lengths and contents so a mixed-up buffer cannot pass.
    let len = 1 + (i * 37) % 1400;
    (0..len).map(|j| (i.wrapping_mul(31) + j) as u8).collect()
}

#[test]
fn udp_echo_of_a_thousand_datagrams() {
    if !uring_available() {
        return;
    }
    let (mut worker, address) = worker(UdpWorkerConfig {
        buffer_count: 256,
        ..UdpWorkerConfig::default()
    });
    let client = loopback_socket();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let client_address = client.local_addr().expect("client address");
    let mut echoed = Vec::new();
    // Rounds of 100, sent 20 at a time and drained before the next 20: that keeps what is in
    // flight well within the socket's receive buffer and the loopback backlog even when other
    // tests burst on loopback at the same moment (CI saw 30 of 100 lost so, on loaded cores),
    // so any loss is the ring's fault. The wait is generous: a lost datagram never comes.
    for round in 0..10 {
        let batch: Vec<usize> = (round * 100..(round + 1) * 100).collect();
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        for part in batch.chunks(20) {
            for &i in part {
                client.send_to(&payload(i), address).expect("client send");
            }
            let got = echo_until(&mut worker, part.len(), Duration::from_secs(30));
            for _ in 0..got.len() {
                let (n, from) = client.recv_from(&mut buf).expect("echo arrives");
                assert_eq!(from, address, "echo comes from the worker's socket");
                echoed.push(buf[..n].to_vec());
            }
            seen.extend(got);
        }
        assert_eq!(
            seen.len(),
            100,
            "round {round}: worker received {}",
            seen.len()
        );
        for (i, (source, data)) in batch.iter().zip(&seen) {
            assert_eq!(*source, client_address, "source address of datagram {i}");
            assert_eq!(
                *data,
                payload(*i),
                "datagram {i} received byte-exact, in order"
            );
        }
    }
    let want: HashSet<Vec<u8>> = (0..1000).map(payload).collect();
    let got: HashSet<Vec<u8>> = echoed.into_iter().collect();
    assert_eq!(got.len(), 1000, "1000 distinct echoes");
    assert_eq!(got, want, "every echo byte-exact");
    // Let the last sends complete.
    let deadline = Instant::now() + Duration::from_secs(2);
    while worker.sends_in_flight() > 0 && Instant::now() < deadline {
        worker
            .run_once(Some(Instant::now() + Duration::from_millis(10)), |_, _| {})
            .expect("run_once");
    }
    let stats = worker.stats();
    assert_eq!(stats.received, 1000, "{stats:?}");
    assert_eq!(stats.sent, 1000, "{stats:?}");
    assert_eq!(
        stats.send_errors + stats.truncated + stats.kernel_drops,
        0,
        "{stats:?}"
    );
}

#[test]
fn buffer_exhaustion_rearms_and_loses_nothing() {
    if !uring_available() {
        return;
    }
    let (mut worker, address) = worker(UdpWorkerConfig {
        buffer_count: 8,
        buffer_size: 512,
        ..UdpWorkerConfig::default()
    });
    let client = loopback_socket();
    // Queue 64 datagrams for 8 buffers before the receive is even armed.
    for i in 0..64u32 {
        client
            .send_to(&i.to_be_bytes(), address)
            .expect("client send");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < 64 && Instant::now() < deadline {
        worker
            .run_once(Some(deadline), |d, _| {
                got.push(u32::from_be_bytes(d.payload.try_into().expect("4 bytes")));
            })
            .expect("run_once");
    }
    assert_eq!(got, (0..64).collect::<Vec<_>>(), "all datagrams, in order");
    let stats = worker.stats();
    assert!(
        stats.buffer_exhaustions >= 1 && stats.recv_rearms >= stats.buffer_exhaustions,
        "ran out of buffers and re-armed: {stats:?}"
    );
    assert_eq!(
        stats.kernel_drops, 0,
        "the socket queue held the overflow: {stats:?}"
    );
}

#[test]
fn socket_queue_overflow_is_counted() {
    if !uring_available() {
        return;
    }
    let socket = loopback_socket();
    // The smallest receive queue the kernel allows (it doubles and floors the value).
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &1024)
        .expect("SO_RCVBUF");
    let mut worker = UdpWorker::new(
        socket,
        UdpWorkerConfig {
            buffer_count: 4,
            ..UdpWorkerConfig::default()
        },
    )
    .expect("worker");
    let address = worker.local_addr().expect("address");
    let client = loopback_socket();
    for _ in 0..200 {
        client.send_to(&[0u8; 1000], address).expect("client send");
    }
    let mut received = 0u64;
    while worker
        .run_once(Some(Instant::now() + Duration::from_millis(200)), |_, _| {
            received += 1
        })
        .expect("run_once")
        .received
        > 0
    {}
    assert!(
        received < 200,
        "a tiny queue must have overflowed ({received} arrived)"
    );
    // Drop counts ride on datagrams queued after the drops (SO_RXQ_OVFL, socket(7)).
    client.send_to(b"marker", address).expect("marker");
    let got = echo_until(&mut worker, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the marker arrives");
    let stats = worker.stats();
    assert_eq!(
        received + 1 + stats.kernel_drops,
        201,
        "every datagram either arrived or was counted as dropped: {stats:?}"
    );
}

#[test]
fn timer_wakes_the_worker_at_its_deadline() {
    if !uring_available() {
        return;
    }
    let (mut worker, address) = worker(UdpWorkerConfig::default());
    let start = Instant::now();
    let report = worker
        .run_once(Some(start + Duration::from_millis(50)), |_, _| {
            panic!("no datagram was sent")
        })
        .expect("run_once");
    let waited = start.elapsed();
    assert!(report.timer_fired, "{report:?}");
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_secs(2),
        "woke after {waited:?}"
    );

    // A datagram before a far deadline returns early without the timer...
    let client = loopback_socket();
    client.send_to(b"hello", address).expect("send");
    let far = Instant::now() + Duration::from_secs(30);
    let report = worker.run_once(Some(far), |_, _| {}).expect("run_once");
    assert_eq!((report.received, report.timer_fired), (1, false));
    // ...and a nearer deadline replaces the far timer rather than waiting for it.
    let start = Instant::now();
    let report = worker
        .run_once(Some(start + Duration::from_millis(20)), |_, _| {})
        .expect("run_once");
    assert!(report.timer_fired, "{report:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Dropping with the receive armed and timers pending cancels and drains them.
    drop(worker);
}

#[test]
fn oversized_datagrams_are_flagged_and_counted() {
    if !uring_available() {
        return;
    }
    let config = UdpWorkerConfig {
        buffer_count: 4,
        buffer_size: 256,
        ..UdpWorkerConfig::default()
    };
    let max = config.max_payload();
    let (mut worker, address) = worker(config);
    let client = loopback_socket();
    client.send_to(&vec![1u8; max + 1], address).expect("send");
    client.send_to(&vec![2u8; max], address).expect("send");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 && Instant::now() < deadline {
        worker
            .run_once(Some(deadline), |d, _| {
                got.push((d.truncated, d.payload.to_vec()));
            })
            .expect("run_once");
    }
    assert_eq!(
        got,
        [(true, vec![1u8; max]), (false, vec![2u8; max])],
        "the long one flagged with its start (so its service can count it), the one that \
         fits whole"
    );
    assert_eq!(worker.stats().truncated, 1, "{:?}", worker.stats());
}

#[test]
fn sockets_are_added_and_closed_while_the_worker_runs() {
    if !uring_available() {
        return;
    }
    let (mut worker, _) = worker(UdpWorkerConfig::default());
    let extra = worker.add_socket(loopback_socket()).expect("add");
    assert_eq!(extra, 1);
    let address = worker.local_addr_of(extra).expect("address");
    let client = loopback_socket();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.send_to(b"hello", address).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.is_empty() && Instant::now() < deadline {
        worker
            .run_once(Some(deadline), |d, out| {
                seen.push(d.socket);
                out.send_to(d.source, b"reply".to_vec());
            })
            .expect("run");
    }
    assert_eq!(seen, [extra], "received on the added socket");
    // Closed right after queueing a reply from it: the reply still leaves.
    worker.close_socket(extra).expect("close");
    let deadline = Instant::now() + Duration::from_secs(2);
    while worker.open_sockets() > 1 && Instant::now() < deadline {
        worker
            .run_once(Some(Instant::now() + Duration::from_millis(10)), |_, _| {})
            .expect("run");
    }
    assert_eq!(worker.open_sockets(), 1, "the closed socket is gone");
    let mut buf = [0u8; 16];
    let (n, from) = client.recv_from(&mut buf).expect("the reply");
    assert_eq!((&buf[..n], from), (&b"reply"[..], address));
    // Its port is free again, and its slot is reused.
    let rebound = UdpSocket::bind(address).expect("the port was released");
    assert_eq!(worker.add_socket(rebound).expect("add"), extra);
    client.send_to(b"again", address).unwrap();
    let got = echo_until(&mut worker, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "the new socket in the reused slot receives");
}

#[test]
fn worker_can_move_to_its_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<UdpWorker>();
}

#[test]
fn bad_configs_are_refused() {
    for (config, why) in [
        (
            UdpWorkerConfig {
                buffer_count: 100,
                ..UdpWorkerConfig::default()
            },
            "power of two",
        ),
        (
            UdpWorkerConfig {
                buffer_size: 64,
                ..UdpWorkerConfig::default()
            },
            "no room",
        ),
    ] {
        match UdpWorker::new(loopback_socket(), config) {
            Err(UringError::Config(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("expected a config error about {why}, got {other:?}"),
        }
    }
}

#[test]
fn several_sockets_share_one_ring_and_reply_from_the_chosen_one() {
    if !uring_available() {
        return;
    }
    let (a, b) = (loopback_socket(), loopback_socket());
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut worker =
        UdpWorker::with_sockets(vec![a, b], UdpWorkerConfig::default()).expect("worker");
    let client = loopback_socket();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.send_to(b"to-a", addr_a).unwrap();
    client.send_to(b"to-b", addr_b).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen.len() < 2 && Instant::now() < deadline {
        worker
            .run_once(Some(deadline), |d, out| {
                seen.push((d.socket, d.destination, d.payload.to_vec()));
                // Every answer leaves from socket 1, whichever socket the request reached.
                out.send_from(1, d.source, d.payload.to_vec());
            })
            .expect("run");
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (0, Some(Ipv4Addr::LOCALHOST), b"to-a".to_vec()),
            (1, Some(Ipv4Addr::LOCALHOST), b"to-b".to_vec()),
        ]
    );
    worker.flush().expect("flush");
    let mut buf = [0u8; 16];
    for _ in 0..2 {
        let (_, from) = client.recv_from(&mut buf).expect("reply");
        assert_eq!(from, addr_b, "replies come from the chosen socket");
    }
}
