//! The client ring against loopback servers.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener},
};

use super::*;
use crate::sys::buf_ring::Consumption;

fn ring() -> ClientRing {
    ring_with_tcp_buffers(16, 4096)
}

fn ring_with_tcp_buffers(tcp_buffers: u16, tcp_buffer_size: u32) -> ClientRing {
    ClientRing::new(ClientRingConfig {
        ring_entries: 64,
        udp_buffers: 64,
        udp_buffer_size: 2048,
        tcp_buffers,
        tcp_buffer_size,
    })
    .expect("io_uring (this machine has it; CI must too)")
}

fn connect(ring: &mut ClientRing, server: SocketAddr) -> SockId {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_nonblocking(true).unwrap();
    ring.sockets()
        .connect(OwnedFd::from(socket), server)
        .unwrap()
}

fn run_until(ring: &mut ClientRing, mut done: impl FnMut(Event<'_>, &mut Sockets) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut finished = false;
    while !finished {
        assert!(Instant::now() < give_up, "no event in time");
        ring.run_once(Some(Instant::now() + Duration::from_millis(100)), |e, s| {
            finished |= done(e, s);
        })
        .unwrap();
    }
}

#[test]
fn udp_round_trip_and_close() {
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut ring = ring();
    let local = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let local_addr = local.local_addr().unwrap();
    let id = ring.sockets().add_udp(local).unwrap();
    ring.sockets()
        .send_to(id, peer.local_addr().unwrap(), Bytes::from_static(b"ping"))
        .unwrap();
    ring.run_once(Some(Instant::now()), |_, _| {}).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], local_addr));
    // Two replies: both arrive, in order, with their source.
    peer.send_to(b"one", local_addr).unwrap();
    peer.send_to(b"two", local_addr).unwrap();
    let mut got = Vec::new();
    run_until(&mut ring, |event, _| {
        if let Event::Datagram {
            socket,
            source,
            payload,
        } = event
        {
            assert_eq!(socket, id);
            assert_eq!(source, peer.local_addr().unwrap());
            got.push(payload.to_vec());
        }
        got.len() == 2
    });
    assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
    // Closed: the slot is freed once the receive is cancelled, the id is stale, and a
    // datagram to the old port produces nothing.
    ring.sockets().close(id).unwrap();
    let give_up = Instant::now() + Duration::from_secs(5);
    while ring.sockets().open() > 0 {
        assert!(
            Instant::now() < give_up,
            "the closed socket was not released"
        );
        ring.run_once(Some(Instant::now() + Duration::from_millis(50)), |e, _| {
            panic!("event after close: {e:?}")
        })
        .unwrap();
    }
    assert!(
        ring.sockets()
            .send_to(id, local_addr, Bytes::from_static(b"x"))
            .is_err()
    );
    let again = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let reused = ring.sockets().add_udp(again).unwrap();
    assert_eq!(reused.index(), id.index());
    assert_ne!(reused, id);
}

#[test]
fn tcp_connect_stream_and_eof() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let server_addr = listener.local_addr().unwrap();
    // A server that reads a request line and answers with 200 KiB then closes: more than
    // all the ring's TCP buffers at once, so receives must re-arm after running out.
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 5];
        conn.read_exact(&mut req).unwrap();
        assert_eq!(&req, b"hello");
        let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        conn.write_all(&body).unwrap();
    });
    let mut ring = ring();
    let id = connect(&mut ring, server_addr);
    let mut received = Vec::new();
    let mut connected = false;
    run_until(&mut ring, |event, sockets| match event {
        Event::Connected { socket, result } => {
            assert_eq!(socket, id);
            result.unwrap();
            connected = true;
            sockets.send(id, Bytes::from_static(b"hello")).unwrap();
            false
        }
        Event::Stream { data, .. } => {
            received.extend_from_slice(data);
            false
        }
        Event::Closed { error, .. } => {
            assert!(error.is_none(), "{error:?}");
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    server.join().unwrap();
    assert!(connected);
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(received.len(), body.len());
    assert!(received == body, "bytes arrived out of order or changed");
    ring.sockets().close(id).unwrap();
}

#[test]
fn tcp_receives_share_buffers_incrementally() {
    // Six connections sent 1 to 700 bytes at a time, received through four 4 KiB buffers.
    // Taken whole, every short receive would use up a buffer (and 4 buffers cannot give
    // each connection one); consumed incrementally, a buffer goes back to the ring only
    // once receives have filled it, and its bytes must be read where each receive put them.
    const CONNECTIONS: usize = 6;
    const LEN: usize = 50_000;
    const BUFFER: usize = 4096;
    fn body(connection: usize) -> Vec<u8> {
        (0..LEN)
            .map(|i| ((i * 7 + connection * 31) % 251) as u8)
            .collect()
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut conns: Vec<_> = (0..CONNECTIONS)
            .map(|_| listener.accept().unwrap().0)
            .collect();
        let bodies: Vec<_> = (0..CONNECTIONS).map(body).collect();
        let mut sent = [0; CONNECTIONS];
        let mut round = 0;
        while sent.iter().any(|&s| s < LEN) {
            for (i, conn) in conns.iter_mut().enumerate() {
                conn.set_nodelay(true).unwrap();
                let n = (1 + (round * 37 + i * 101) % 700).min(LEN - sent[i]);
                conn.write_all(&bodies[i][sent[i]..sent[i] + n]).unwrap();
                sent[i] += n;
            }
            round += 1;
            if round % 4 == 0 {
                // Let the ring catch up, so that receives stay short.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut ring = ring_with_tcp_buffers(4, BUFFER as u32);
    assert_eq!(
        ring.tcp_buffers.consumption(),
        Consumption::Incremental,
        "IOU_PBUF_RING_INC needs kernel 6.12"
    );
    let ids: Vec<SockId> = (0..CONNECTIONS)
        .map(|_| connect(&mut ring, server_addr))
        .collect();
    let mut received = vec![Vec::new(); CONNECTIONS];
    let mut receives = 0u64;
    let mut closed = 0;
    run_until(&mut ring, |event, _| {
        let i = ids
            .iter()
            .position(|&id| id == event.socket())
            .expect("an event on one of the connections");
        match event {
            Event::Connected { result, .. } => result.unwrap(),
            Event::Stream { data, .. } => {
                received[i].extend_from_slice(data);
                receives += 1;
            }
            Event::Closed { error, .. } => {
                assert!(error.is_none(), "{error:?}");
                closed += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        closed == CONNECTIONS
    });
    server.join().unwrap();
    for (i, bytes) in received.iter().enumerate() {
        assert_eq!(bytes.len(), LEN, "connection {i}");
        assert!(
            *bytes == body(i),
            "connection {i}: bytes arrived out of order or changed"
        );
    }
    // Every byte went into a buffer right behind the previous receive's: the buffers lent
    // back are exactly the full ones, the rest sits in the one the kernel still fills.
    let total = CONNECTIONS * LEN;
    let recycled = ring.tcp_buffers.recycled();
    assert_eq!(
        recycled,
        (total / BUFFER) as u64,
        "{receives} receives of {total} bytes"
    );
    assert_eq!(ring.tcp_buffers.partly_consumed(), (total % BUFFER) as u64);
    assert!(
        receives > recycled,
        "{receives} receives, {recycled} buffers: no buffer took several receives"
    );
    assert_eq!(ring.stats().stream_bytes, total as u64);
    for id in ids {
        ring.sockets().close(id).unwrap();
    }
}

#[test]
fn a_refused_connect_is_reported() {
    // A port just released: nothing listens there.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut ring = ring();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let id = ring.sockets().connect(OwnedFd::from(socket), port).unwrap();
    run_until(&mut ring, |event, _| match event {
        Event::Connected { socket, result } => {
            assert_eq!(socket, id);
            let err = result.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
            true
        }
        other => panic!("unexpected {other:?}"),
    });
    ring.sockets().close(id).unwrap();
    // Dropping with a closing socket drains cleanly.
    drop(ring);
}
