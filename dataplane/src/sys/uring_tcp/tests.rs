//! The TCP worker on loopback.
use std::io::{Read, Write};

use super::*;
use crate::sys::probe::{probe, uring_available};

/// Runs the worker until `until` returns true for an event, collecting the events' kinds.
fn run_until(worker: &mut TcpWorker, mut on: impl FnMut(&TcpEvent<'_>, &mut TcpOutbox) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = false;
    while !done {
        assert!(Instant::now() < deadline, "event did not arrive in time");
        worker
            .run_once(Some(deadline), |event, outbox| done |= on(&event, outbox))
            .expect("run_once");
    }
}

#[test]
fn echo_close_and_stale_ids() {
    if !uring_available() {
        return;
    }
    let listener = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
    let address = listener.local_addr().expect("address");
    // SO_REUSEPORT: a second listener on the same port is allowed. Closed again before the
    // client connects, or the kernel could hand the connection to it.
    drop(reuseport_listener(address, 16).expect("second listener, same port"));
    let mut worker = TcpWorker::new(listener, TcpWorkerConfig::default()).expect("worker");
    let mut client = TcpStream::connect(address).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let client_addr = client.local_addr().expect("client address");
    let mut conn = None;
    run_until(&mut worker, |event, _| match event {
        TcpEvent::Accepted { conn: c, peer } => {
            assert_eq!(*peer, client_addr, "peer address");
            conn = Some(*c);
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    let conn = conn.expect("accepted");
    client.write_all(b"hello").expect("client write");
    run_until(&mut worker, |event, outbox| match event {
        TcpEvent::Data { conn: c, data } => {
            assert_eq!((*c, *data), (conn, &b"hello"[..]));
            // Head and body as two iovecs of one sendmsg.
            outbox.send(*c, b"he".to_vec(), Bytes::from_static(b"llo"));
            false
        }
        TcpEvent::Sent { conn: c } => {
            assert_eq!(*c, conn);
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"hello");
    assert_eq!(worker.stats().bytes_sent, 5);

    assert!(worker.close(conn).expect("close"), "live id closes");
    run_until(&mut worker, |event, _| match event {
        TcpEvent::Closed { conn: c, reason } => {
            assert_eq!((*c, *reason), (conn, CloseReason::Local));
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(client.read(&mut echo).expect("EOF after close"), 0);
    assert_eq!(worker.connections(), 0);
    assert!(
        !worker.send(conn, Vec::new(), Bytes::new()).expect("send"),
        "a dead id is refused"
    );
    assert!(!worker.close(conn).expect("close"), "a dead id is refused");

    // A new connection reuses the slot with a new generation: the old id stays dead.
    let _client2 = TcpStream::connect(address).expect("connect");
    let mut conn2 = None;
    run_until(&mut worker, |event, _| match event {
        TcpEvent::Accepted { conn: c, .. } => {
            conn2 = Some(*c);
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    let conn2 = conn2.expect("accepted");
    assert_eq!(conn2.index(), conn.index(), "slot reused");
    assert_ne!(conn2, conn, "new generation");
    assert!(!worker.close(conn).expect("close"), "old id still dead");
    // Dropping with a receive in flight cancels and drains it.
    drop(worker);
}

/// File bodies go out with sendfile from a sealed memfd: byte-exact ranges, in order behind
/// one another, through socket buffers far smaller than the body (so the worker waits for
/// POLLOUT), and a range past the file's end closes the connection instead of hanging it.
#[test]
fn send_file_streams_ranges_through_full_sockets() {
    if !uring_available() {
        return;
    }
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let (_, file) = super::super::memfile::seal("send-file-test", &data).expect("seal");
    let file = file.expect("a file");
    let listener = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
    let address = listener.local_addr().expect("address");
    let mut worker = TcpWorker::new(listener, TcpWorkerConfig::default()).expect("worker");
    // Per client: the ranges sent to it, one after another on one connection. The last
    // runs 90 bytes past the end of the file.
    let plans: Vec<Vec<(u64, u64)>> = vec![
        vec![(0, 4_000_000)],
        vec![(1_234_567, 2_000_000), (17, 1)],
        vec![(3_999_000, 1_000), (0, 300_000)],
        vec![(3_999_990, 100)],
    ];
    let past_end = plans.len() - 1;
    let mut peers = Vec::new();
    let clients: Vec<_> = plans
        .iter()
        .map(|plan| {
            let expected: Vec<u8> = plan
                .iter()
                .flat_map(|&(offset, len)| {
                    let end = (offset + len).min(data.len() as u64);
                    let mut part = b"HEAD".to_vec();
                    part.extend_from_slice(&data[offset as usize..end as usize]);
                    part
                })
                .collect();
            let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            // A small receive window keeps the server's socket buffer full.
            client.set_recv_buffer_size(8192).expect("SO_RCVBUF");
            client.connect(&address.into()).expect("connect");
            let mut client = TcpStream::from(client);
            peers.push(client.local_addr().expect("client address"));
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            std::thread::spawn(move || {
                let mut got = Vec::new();
                // Until EOF, or a reset (the past-the-end connection may be cut so).
                let _ = client.read_to_end(&mut got);
                (got.len(), got == expected)
            })
        })
        .collect();
    // Connection of each plan, matched by the client's address.
    let mut conns: Vec<Option<ConnId>> = vec![None; plans.len()];
    run_until(&mut worker, |event, _| match event {
        TcpEvent::Accepted { conn, peer } => {
            let i = peers.iter().position(|p| p == peer).expect("a test client");
            conns[i] = Some(*conn);
            conns.iter().all(Option::is_some)
        }
        other => panic!("unexpected {other:?}"),
    });
    let conns: Vec<ConnId> = conns.into_iter().flatten().collect();
    // Idle connections with receives armed on non-blocking sockets: io_uring must wait for
    // data, not bounce EAGAIN back at us.
    let idle_until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < idle_until {
        worker
            .run_once(Some(idle_until), |event, _| panic!("unexpected {event:?}"))
            .expect("run_once");
    }
    assert_eq!(worker.stats().eagain_retries, 0, "idle receives spun");
    for (conn, plan) in conns.iter().zip(&plans) {
        for &(offset, len) in plan {
            assert!(
                worker
                    .send_file(*conn, b"HEAD".to_vec(), file.clone(), offset, len)
                    .expect("send_file")
            );
        }
    }
    let mut sent = vec![0; plans.len()];
    let mut closed = 0;
    run_until(&mut worker, |event, outbox| {
        let i = match event {
            TcpEvent::Sent { conn } | TcpEvent::Closed { conn, .. } => {
                conns.iter().position(|c| c == conn).expect("known")
            }
            other => panic!("unexpected {other:?}"),
        };
        match event {
            TcpEvent::Sent { conn } => {
                assert_ne!(i, past_end, "a range past the end is never complete");
                sent[i] += 1;
                if sent[i] == plans[i].len() {
                    outbox.close(*conn);
                }
            }
            TcpEvent::Closed { reason, .. } => {
                let expected = if i == past_end {
                    CloseReason::Error(libc::EIO)
                } else {
                    CloseReason::Local
                };
                assert_eq!(*reason, expected, "connection {i}");
                closed += 1;
            }
            _ => unreachable!(),
        }
        closed == plans.len()
    });
    for (i, client) in clients.into_iter().enumerate() {
        let (len, exact) = client.join().expect("client thread");
        assert!(exact, "client {i} got {len} bytes, not exactly its ranges");
    }
    let stats = worker.stats();
    let body_bytes: u64 = plans.iter().flatten().map(|&(_, len)| len).sum::<u64>() - 90;
    assert_eq!(stats.sendfile_bytes, body_bytes);
    assert!(stats.sendfile_waits > 0, "socket buffers filled: {stats:?}");
}

#[test]
fn peer_close_is_reported() {
    if !uring_available() {
        return;
    }
    let listener = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
    let address = listener.local_addr().expect("address");
    let mut worker = TcpWorker::new(listener, TcpWorkerConfig::default()).expect("worker");
    let client = TcpStream::connect(address).expect("connect");
    run_until(&mut worker, |event, _| {
        matches!(event, TcpEvent::Accepted { .. })
    });
    drop(client);
    run_until(&mut worker, |event, _| match event {
        TcpEvent::Closed { reason, .. } => {
            assert_eq!(*reason, CloseReason::PeerClosed);
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(worker.stats().closed, 1);
}

#[test]
fn zero_copy_transfer_is_byte_exact() {
    if !uring_available() {
        return;
    }
    let caps = probe().expect("probe");
    if !caps.sendmsg_zc {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true and the kernel lacks IORING_OP_SENDMSG_ZC"
        );
        eprintln!("skipping: no IORING_OP_SENDMSG_ZC");
        return;
    }
    let listener = reuseport_listener(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("listener");
    let address = listener.local_addr().expect("address");
    let config = TcpWorkerConfig {
        zero_copy_min_len: Some(4096),
        ..TcpWorkerConfig::default()
    };
    let mut worker = TcpWorker::new(listener, config).expect("worker");
    assert!(worker.zero_copy_enabled());
    // 8 MiB overflows the socket buffer, so zero-copy short writes are resubmitted; the
    // second, short body goes out with plain SENDMSG behind it on the same connection.
    let big: Vec<u8> = (0..8 << 20)
        .map(|i: usize| (i * 31 + i / 997) as u8)
        .collect();
    let mut expected = b"head-1".to_vec();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"head-2tail");
    let want = expected.len();
    let reader = std::thread::spawn(move || {
        let mut client = TcpStream::connect(address).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = vec![0u8; want];
        client.read_exact(&mut got).expect("read all");
        got
    });
    let mut conn = None;
    let mut sent = 0;
    run_until(&mut worker, |event, outbox| match event {
        TcpEvent::Accepted { conn: c, .. } => {
            conn = Some(*c);
            outbox.send(*c, b"head-1".to_vec(), Bytes::from(big.clone()));
            outbox.send(*c, b"head-2".to_vec(), Bytes::from_static(b"tail"));
            false
        }
        TcpEvent::Sent { .. } => {
            sent += 1;
            sent == 2
        }
        other => panic!("unexpected {other:?}"),
    });
    let got = reader.join().expect("reader");
    assert!(got == expected, "bytes differ from what was sent");
    let conn = conn.expect("accepted");
    // Close at once: notifications still outstanding linger past the connection.
    assert!(worker.close(conn).expect("close"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    loop {
        let stats = worker.stats();
        if closed && stats.zero_copy_notifications == stats.zero_copy_sends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notifications missing: {stats:?}"
        );
        worker
            .run_once(
                Some(Instant::now() + Duration::from_millis(50)),
                |event, _| match event {
                    TcpEvent::Closed { conn: c, .. } => closed |= c == conn,
                    other => panic!("unexpected {other:?}"),
                },
            )
            .expect("run_once");
    }
    let stats = worker.stats();
    assert_eq!(stats.bytes_sent, want as u64);
    assert!(stats.zero_copy_sends >= 1, "{stats:?}");
    assert!(
        stats.short_writes >= 1,
        "8 MiB fits no socket buffer: {stats:?}"
    );
    // Loopback delivers to a local socket, which always copies (kernel
    // Documentation/networking/msg_zerocopy.rst, "Loopback").
    if worker.zero_copy_report_usage {
        assert_eq!(stats.zero_copy_copied, stats.zero_copy_notifications);
    }
    assert!(worker.lingering.is_empty(), "every hold released");
}

#[test]
fn worker_can_move_to_its_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<TcpWorker>();
}
