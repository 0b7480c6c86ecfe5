//! Scenario tests on virtual time: the client core against the server core in memory, with loss,
//! duplication and reordering, and exact timer checks.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use stampede_lab::rng::TestRng;

use super::*;
use crate::bootpath::PathRejection;
use crate::files::{BootFile, MemoryCatalog};

const CLIENT: &str = "198.18.0.2:50000";
const STRANGER: &str = "198.18.0.2:50001";
const LISTEN: &str = "198.18.0.1:69";
const TID: &str = "198.18.0.1:40000";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

fn catalog(files: &[(&str, &[u8])]) -> MemoryCatalog {
    let mut catalog = MemoryCatalog::new();
    for (name, data) in files {
        catalog.insert(name, BootFile::new(Bytes::copy_from_slice(data)));
    }
    catalog
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Delivered after the next packet (reordering).
    Delay,
}

/// Faults applied to every packet, from a seeded PRNG.
#[derive(Debug, Clone, Copy)]
struct Faults {
    loss: u64,
    duplicate: u64,
    reorder: u64,
}

const CLEAN: Faults = Faults {
    loss: 0,
    duplicate: 0,
    reorder: 0,
};

struct Sim {
    now: Instant,
    server: TftpServer<MemoryCatalog>,
    transfer: Option<Box<TftpTransfer>>,
    client: TftpClient,
    refusal: Option<Refusal>,
    faults: Faults,
    rng: TestRng,
    held: Option<(SocketAddr, SocketAddr, Vec<u8>)>,
    server_packets: u64,
    transfer_drops: Vec<TransferDrop>,
}

impl Sim {
    fn new(catalog: MemoryCatalog, config: ServerConfig, file: &str, client: ClientConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            server: TftpServer::new(config, catalog),
            transfer: None,
            client: TftpClient::new(now, addr(LISTEN), file, client),
            refusal: None,
            faults: CLEAN,
            rng: TestRng::new(0x7F7B_1350_2347_7440),
            held: None,
            server_packets: 0,
            transfer_drops: Vec::new(),
        }
    }

    fn fate(&mut self) -> Fate {
        if self.rng.percent(self.faults.loss) {
            Fate::Drop
        } else if self.rng.percent(self.faults.duplicate) {
            Fate::Duplicate
        } else if self.rng.percent(self.faults.reorder) {
            Fate::Delay
        } else {
            Fate::Deliver
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let mut reply = [0u8; 128];
        if to == addr(CLIENT) {
            let _ = self.client.handle_datagram(self.now, from, bytes);
        } else if to == addr(LISTEN) {
            match self
                .server
                .handle_request(self.now, from, bytes, &mut reply)
            {
                Request::Accepted(transfer) => {
                    // One transfer per client in these tests (the engine dedups repeats).
                    if self.transfer.is_none() {
                        self.transfer = Some(transfer);
                    }
                }
                Request::Refused { reason, reply: tx } => {
                    self.refusal = Some(reason);
                    let _ = self
                        .client
                        .handle_datagram(self.now, addr(LISTEN), &reply[..tx.len]);
                }
                Request::Dropped(drop) => panic!("listener dropped a client packet: {drop}"),
            }
        } else if to == addr(TID)
            && let Some(transfer) = self.transfer.as_mut()
            && let Err(drop) = transfer.handle_datagram(self.now, from, bytes)
        {
            self.transfer_drops.push(drop);
        }
    }

    /// Sends everything both sides have, through the fault model. Returns whether anything moved.
    fn exchange(&mut self) -> bool {
        let mut buf = vec![0u8; 65536];
        let mut packets = Vec::new();
        while let Some(tx) = self.client.poll_transmit(self.now, &mut buf) {
            packets.push((addr(CLIENT), tx.dst, buf[..tx.len].to_vec()));
        }
        if let Some(transfer) = self.transfer.as_mut() {
            while let Some(tx) = transfer.poll_transmit(self.now, &mut buf) {
                self.server_packets += 1;
                packets.push((addr(TID), tx.dst, buf[..tx.len].to_vec()));
            }
        }
        let moved = !packets.is_empty() || self.held.is_some();
        for (from, to, bytes) in packets {
            match self.fate() {
                Fate::Drop => {}
                Fate::Deliver => self.deliver(from, to, &bytes),
                Fate::Duplicate => {
                    self.deliver(from, to, &bytes);
                    self.deliver(from, to, &bytes);
                }
                Fate::Delay => {
                    if let Some((f, t, b)) = self.held.replace((from, to, bytes)) {
                        self.deliver(f, t, &b);
                    }
                    continue;
                }
            }
            if let Some((f, t, b)) = self.held.take() {
                self.deliver(f, t, &b);
            }
        }
        if let Some((f, t, b)) = self.held.take() {
            self.deliver(f, t, &b);
        }
        moved
    }

    fn run(&mut self) -> ClientOutcome {
        for _ in 0..5_000_000 {
            if self.exchange() {
                continue;
            }
            let next = [
                self.client.poll_timeout(),
                self.transfer.as_ref().and_then(|t| t.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return self
                    .client
                    .is_finished()
                    .expect("client ends with an outcome");
            };
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            if let Some(transfer) = self.transfer.as_mut() {
                transfer.handle_timeout(self.now);
            }
        }
        panic!("simulation did not settle");
    }
}

fn download(
    data: &[u8],
    config: ServerConfig,
    mut client: ClientConfig,
    faults: Faults,
) -> (ClientOutcome, Option<Outcome>, Sim) {
    client.expected = Expected {
        len: Some(data.len() as u64),
        sha256: Some(Sha256::digest(data).into()),
    };
    let mut sim = Sim::new(catalog(&[("boot.efi", data)]), config, "boot.efi", client);
    sim.faults = faults;
    let outcome = sim.run();
    let server = sim.transfer.as_ref().and_then(|t| t.is_finished());
    (outcome, server, sim)
}

#[test]
fn clean_matrix_windowsize_and_blksize() {
    let data = pattern(200_000);
    for windowsize in [1u16, 16, 64] {
        for blksize in [512u16, 1468] {
            let mut client = ClientConfig::edk2();
            client.options.blksize = Some(blksize);
            client.options.windowsize = Some(windowsize);
            let (outcome, server, _) = download(&data, ServerConfig::default(), client, CLEAN);
            let label = format!("windowsize {windowsize} blksize {blksize}");
            assert_eq!(outcome.result, Ok(()), "{label}");
            assert_eq!(outcome.tsize, Some(200_000), "tsize answered: {label}");
            assert_eq!((outcome.blksize, outcome.windowsize), (blksize, windowsize));
            assert_eq!(outcome.retransmits, 0, "{label}");
            let server = server.expect("server transfer finished");
            assert_eq!(server.result, Ok(()), "{label}");
            assert_eq!(server.retransmits, 0, "{label}");
            assert_eq!(server.file_bytes, 200_000, "{label}");
            let blocks = 200_000 / u64::from(blksize) + 1;
            assert_eq!(server.packets_sent, blocks + 1, "blocks + OACK: {label}");
        }
    }
}

#[test]
fn lossy_duplicating_reordering_network_still_delivers() {
    let data = pattern(300_000);
    let faults = Faults {
        loss: 5,
        duplicate: 3,
        reorder: 3,
    };
    for windowsize in [1u16, 16, 64] {
        for blksize in [512u16, 1468] {
            for seed in 1..4u64 {
                let mut client = ClientConfig::edk2();
                client.options.blksize = Some(blksize);
                client.options.windowsize = Some(windowsize);
                client.expected = Expected {
                    len: Some(data.len() as u64),
                    sha256: Some(Sha256::digest(&data).into()),
                };
                let mut sim = Sim::new(
                    catalog(&[("boot.efi", &data)]),
                    ServerConfig::default(),
                    "boot.efi",
                    client,
                );
                sim.faults = faults;
                sim.rng = TestRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let outcome = sim.run();
                let label = format!("windowsize {windowsize} blksize {blksize} seed {seed}");
                assert_eq!(outcome.result, Ok(()), "{label}");
                let server = sim.transfer.as_ref().and_then(|t| t.is_finished());
                assert_eq!(
                    server.map(|o| o.result),
                    Some(Ok(())),
                    "server side completed: {label}"
                );
                assert!(
                    server.is_some_and(|o| o.retransmits > 0),
                    "losses caused retransmits: {label}"
                );
            }
        }
    }
}

#[test]
fn block_numbers_roll_over_past_65535() {
    // 65536 full blocks and a short one: block numbers go ..., 65535, 0, 1.
    let data = pattern(512 * 65_536 + 100);
    let mut client = ClientConfig::plain();
    client.options.windowsize = Some(64);
    client.options.tsize = Some(0);
    let (outcome, server, _) = download(&data, ServerConfig::default(), client, CLEAN);
    assert_eq!(outcome.result, Ok(()), "rolled-over download verifies");
    assert_eq!(outcome.len, data.len() as u64);
    let server = server.expect("server finished");
    assert_eq!(server.result, Ok(()));
    assert_eq!(server.packets_sent, 65_537 + 1, "blocks + OACK, no resend");
}

#[test]
fn plain_and_netascii_clients_without_options() {
    let text = include_bytes!("../../fixtures/tftp/netascii-source.txt");
    let mut client = ClientConfig::plain();
    client.mode = Mode::Netascii;
    client.keep_data = true;
    let (outcome, server, sim) = download(text, ServerConfig::default(), client, CLEAN);
    assert_eq!(outcome.result, Ok(()), "netascii decodes to the file");
    assert_eq!(sim.client.data(), Some(&text[..]));
    assert_eq!(
        outcome.wire_bytes,
        include_bytes!("../../fixtures/tftp/tftpd-hpa-netascii-stream.bin").len() as u64
    );
    assert_eq!(outcome.tsize, None, "no options, no OACK");
    assert_eq!(server.map(|o| o.packets_sent), Some(4), "4 DATA, no OACK");

    // netascii with tsize: the size as transferred.
    let mut client = ClientConfig::ipxe();
    client.mode = Mode::Netascii;
    let (outcome, _, _) = download(text, ServerConfig::default(), client, CLEAN);
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(outcome.tsize, Some(outcome.wire_bytes));
}

#[test]
fn blksize_clamped_to_path_mtu_and_windowsize_to_max() {
    let data = pattern(10_000);
    let mut config = ServerConfig::for_path_mtu(1000);
    config.max_windowsize = 8;
    assert_eq!(config.max_blksize, 968);
    let mut client = ClientConfig::edk2();
    client.options.windowsize = Some(32);
    let (outcome, _, _) = download(&data, config, client, CLEAN);
    assert_eq!(outcome.result, Ok(()));
    assert_eq!((outcome.blksize, outcome.windowsize), (968, 8));
}

#[test]
fn missing_file_is_error_1() {
    let mut sim = Sim::new(
        catalog(&[]),
        ServerConfig::default(),
        "nope.efi",
        ClientConfig::edk2(),
    );
    let outcome = sim.run();
    assert_eq!(
        outcome.result,
        Err(ClientFailure::ServerError(ErrorCode::FileNotFound))
    );
    assert_eq!(sim.refusal.map(|r| r.as_str()), Some("file_not_found"));
}

fn request(kind: u8, name: &[u8], mode: &[u8], options: &[u8]) -> Vec<u8> {
    [&[0, kind][..], name, b"\0", mode, b"\0", options].concat()
}

#[test]
fn hostile_names_wrq_and_bad_modes_are_refused() {
    let server = TftpServer::new(ServerConfig::default(), catalog(&[("a/b", b"x")]));
    let now = Instant::now();
    let cases: &[(Vec<u8>, ErrorCode, &str)] = &[
        (
            request(1, b"../etc/passwd", b"octet", b""),
            ErrorCode::AccessViolation,
            "path_rejected_parent_dir",
        ),
        (
            request(1, b"//etc/passwd", b"octet", b""),
            ErrorCode::AccessViolation,
            "path_rejected_absolute",
        ),
        (
            request(1, b"a\\b", b"octet", b""),
            ErrorCode::AccessViolation,
            "path_rejected_backslash",
        ),
        (
            request(2, b"a/b", b"octet", b""),
            ErrorCode::IllegalOperation,
            "write_request",
        ),
        (
            request(1, b"a/b", b"mail", b""),
            ErrorCode::IllegalOperation,
            "unsupported_mode",
        ),
        (
            b"\0\x01a/b\0octet".to_vec(),
            ErrorCode::IllegalOperation,
            "malformed_request",
        ),
    ];
    for (packet, code, label) in cases {
        let mut buf = [0u8; 128];
        let Request::Refused { reason, reply } =
            server.handle_request(now, addr(CLIENT), packet, &mut buf)
        else {
            panic!("{label}: not refused");
        };
        assert_eq!(reason.as_str(), *label);
        assert_eq!(reply.dst, addr(CLIENT));
        match Repr::parse_bytes(&buf[..reply.len]) {
            Ok(Repr::Error { code: got, .. }) => assert_eq!(got, *code, "{label}"),
            other => panic!("{label}: reply is not an ERROR: {other:?}"),
        }
    }
    let Request::Refused {
        reason: Refusal::PathRejected(why),
        ..
    } = server.handle_request(
        now,
        addr(CLIENT),
        &request(1, b"../x", b"octet", b""),
        &mut [0; 128],
    )
    else {
        panic!("../x not refused as a path");
    };
    assert_eq!(
        why,
        PathRejection::ParentDir,
        "the PathRejection reason is kept"
    );
    // Non-requests at the listening port get no answer.
    for (bytes, want) in [
        (&b"\0\x04\0\x01"[..], RequestDrop::NotARequest),
        (&b"\0"[..], RequestDrop::Malformed(WireError::Truncated)),
        (
            &b"\0\x63\0\x01"[..],
            RequestDrop::Malformed(WireError::UnknownOpcode),
        ),
    ] {
        match server.handle_request(now, addr(CLIENT), bytes, &mut [0; 128]) {
            Request::Dropped(drop) => assert_eq!(drop, want),
            other => panic!("{bytes:?} not dropped: {other:?}"),
        }
    }
}

/// A server transfer of `len` bytes accepted from `options`, started at `now`.
fn accept(now: Instant, len: usize, options: &[u8], limits: TransferLimits) -> TftpTransfer {
    let config = ServerConfig {
        limits,
        ..ServerConfig::default()
    };
    let server = TftpServer::new(config, catalog(&[("f", &pattern(len))]));
    match server.handle_request(
        now,
        addr(CLIENT),
        &request(1, b"f", b"octet", options),
        &mut [0; 128],
    ) {
        Request::Accepted(transfer) => *transfer,
        other => panic!("not accepted: {other:?}"),
    }
}

/// Sends everything due; returns the packets as parsed (opcode, block) pairs.
fn drain(transfer: &mut TftpTransfer, now: Instant) -> Vec<(Opcode, u16, SocketAddr)> {
    let mut buf = vec![0u8; transfer.max_datagram_len()];
    let mut out = Vec::new();
    while let Some(tx) = transfer.poll_transmit(now, &mut buf) {
        let packet = Packet::new_checked(&buf[..tx.len]).expect("valid packet");
        let block = match packet.opcode() {
            Opcode::Data | Opcode::Ack | Opcode::Error => packet.block(),
            _ => 0,
        };
        out.push((packet.opcode(), block, tx.dst));
    }
    out
}

fn ack(block: u16) -> [u8; 4] {
    let [hi, lo] = block.to_be_bytes();
    [0, 4, hi, lo]
}

const NO_IDLE: TransferLimits = TransferLimits {
    default_timeout: Duration::from_secs(1),
    oack_timeout: Duration::from_secs(4),
    min_timeout: Duration::from_millis(250),
    max_retries: 5,
    max_unverified_retries: 3,
    max_backoff: Duration::from_secs(8),
    idle_timeout: Duration::from_secs(3600),
    max_duration: Duration::from_secs(7200),
};

#[test]
fn server_retransmit_deadlines_are_exact() {
    let t0 = Instant::now();
    let mut transfer = accept(t0, 2000, b"", NO_IDLE);
    let client = addr(CLIENT);
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Data, 1, client)]);
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + secs(1)),
        "no round trip measured yet: the initial 1 s"
    );
    // The client answers at once (see the test after for one that never does): the measured
    // round trip is below the floor, so the floor is the timeout.
    transfer
        .handle_datagram(t0, client, &ack(1))
        .expect("ACK 1");
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Data, 2, client)]);
    assert_eq!(transfer.poll_timeout(), Some(t0 + ms(250)));
    assert_eq!(drain(&mut transfer, t0), [], "nothing before the timeout");
    // Backoff 0.25, 0.5, 1, 2, 4, 8 (capped), then give up.
    let mut at = t0;
    for (retry, rto) in [500u64, 1000, 2000, 4000, 8000].into_iter().enumerate() {
        at = transfer.poll_timeout().expect("timer armed");
        transfer.handle_timeout(at);
        assert_eq!(
            drain(&mut transfer, at),
            [(Opcode::Data, 2, client)],
            "retry {retry}"
        );
        assert_eq!(transfer.poll_timeout(), Some(at + ms(rto)), "retry {retry}");
    }
    assert_eq!(at, t0 + ms(250 + 500 + 1000 + 2000 + 4000));
    let last = transfer.poll_timeout().expect("timer armed");
    transfer.handle_timeout(last);
    assert_eq!(
        drain(&mut transfer, last),
        [(Opcode::Error, 0, client)],
        "ERROR 0 when giving up"
    );
    let outcome = transfer.is_finished().expect("finished");
    assert_eq!(outcome.result, Err(TransferFailure::RetriesExhausted));
    assert_eq!(outcome.retransmits, 5);
    assert_eq!(outcome.duration, ms(250 + 500 + 1000 + 2000 + 4000 + 8000));

    // An ACK resets the backoff: the next deadline is one base timeout after the next send. That
    // ACK followed a resend, so it gives no round-trip sample (Karn): still the initial 1 s.
    let mut transfer = accept(t0, 2000, b"", NO_IDLE);
    drain(&mut transfer, t0);
    transfer.handle_timeout(t0 + secs(1));
    drain(&mut transfer, t0 + secs(1));
    assert_eq!(transfer.poll_timeout(), Some(t0 + secs(3)));
    let t = t0 + secs(2);
    transfer.handle_datagram(t, client, &ack(1)).expect("ACK 1");
    assert_eq!(drain(&mut transfer, t), [(Opcode::Data, 2, client)]);
    assert_eq!(transfer.poll_timeout(), Some(t + secs(1)));
}

#[test]
fn negotiated_timeout_oack_retransmit_and_idle_limit() {
    let t0 = Instant::now();
    let limits = TransferLimits {
        idle_timeout: secs(20),
        ..NO_IDLE
    };
    let mut transfer = accept(t0, 100, b"timeout\x003\x00tsize\x000\x00", limits);
    let client = addr(CLIENT);
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Oack, 0, client)]);
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + secs(3)),
        "timeout option"
    );
    transfer.handle_timeout(t0 + secs(3));
    assert_eq!(
        drain(&mut transfer, t0 + secs(3)),
        [(Opcode::Oack, 0, client)]
    );
    assert_eq!(transfer.poll_timeout(), Some(t0 + secs(9)), "3 s doubled");
    assert_eq!(
        transfer.handle_datagram(t0 + secs(4), client, &ack(1)),
        Err(TransferDrop::AckBeforeOack)
    );
    transfer.handle_timeout(t0 + secs(9));
    drain(&mut transfer, t0 + secs(9));
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + secs(17)),
        "12 s capped at 8 s"
    );
    transfer.handle_timeout(t0 + secs(17));
    assert_eq!(
        drain(&mut transfer, t0 + secs(17)),
        [(Opcode::Oack, 0, client)]
    );
    // 17 + 8 = 25 > idle limit 20: the idle limit fires first.
    assert_eq!(transfer.poll_timeout(), Some(t0 + secs(20)));
    transfer.handle_timeout(t0 + secs(20));
    assert_eq!(
        drain(&mut transfer, t0 + secs(20)),
        [],
        "no ERROR to a client that never answered (it may be a spoofed victim)"
    );
    let outcome = transfer.is_finished().expect("finished");
    assert_eq!(outcome.result, Err(TransferFailure::Idle));
    assert_eq!(outcome.retransmits, 3, "three OACK resends");
}

#[test]
fn duration_limit_ends_a_slow_transfer() {
    let t0 = Instant::now();
    let limits = TransferLimits {
        max_duration: secs(5),
        ..NO_IDLE
    };
    let mut transfer = accept(t0, 100_000, b"", limits);
    let client = addr(CLIENT);
    let mut t = t0;
    for block in 1..=4u16 {
        drain(&mut transfer, t);
        t += secs(1);
        transfer
            .handle_datagram(t, client, &ack(block))
            .expect("ACK");
    }
    drain(&mut transfer, t);
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + secs(5)),
        "duration limit before rto"
    );
    transfer.handle_timeout(t0 + secs(5));
    assert_eq!(
        drain(&mut transfer, t0 + secs(5)),
        [(Opcode::Error, 0, client)]
    );
    assert_eq!(
        transfer.is_finished().map(|o| o.result),
        Some(Err(TransferFailure::DurationExceeded))
    );
}

#[test]
fn duplicate_ack_never_resends() {
    let t0 = Instant::now();
    let mut transfer = accept(t0, 5000, b"", NO_IDLE);
    let client = addr(CLIENT);
    drain(&mut transfer, t0);
    transfer
        .handle_datagram(t0, client, &ack(1))
        .expect("ACK 1");
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Data, 2, client)]);
    for _ in 0..3 {
        assert_eq!(
            transfer.handle_datagram(t0, client, &ack(1)),
            Err(TransferDrop::DuplicateAck)
        );
        assert_eq!(drain(&mut transfer, t0), [], "no Sorcerer's Apprentice");
    }
    assert_eq!(
        transfer.handle_datagram(t0, client, &ack(7)),
        Err(TransferDrop::AckOutOfWindow)
    );
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + ms(250)),
        "timer untouched"
    );
}

#[test]
fn ack_inside_the_window_slides_it() {
    let t0 = Instant::now();
    let mut transfer = accept(t0, 512 * 10, b"windowsize\x004\x00", NO_IDLE);
    let client = addr(CLIENT);
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Oack, 0, client)]);
    transfer
        .handle_datagram(t0, client, &ack(0))
        .expect("ACK 0");
    let blocks = |v: Vec<(Opcode, u16, SocketAddr)>| v.into_iter().map(|p| p.1).collect::<Vec<_>>();
    assert_eq!(blocks(drain(&mut transfer, t0)), [1, 2, 3, 4]);
    // Block 3 lost: the client acknowledges 2; the window restarts at 3.
    transfer
        .handle_datagram(t0, client, &ack(2))
        .expect("ACK 2");
    assert_eq!(blocks(drain(&mut transfer, t0)), [3, 4, 5, 6]);
    transfer
        .handle_datagram(t0, client, &ack(6))
        .expect("ACK 6");
    assert_eq!(blocks(drain(&mut transfer, t0)), [7, 8, 9, 10]);
    transfer
        .handle_datagram(t0, client, &ack(10))
        .expect("ACK 10");
    assert_eq!(
        blocks(drain(&mut transfer, t0)),
        [11],
        "the empty last block"
    );
    transfer
        .handle_datagram(t0, client, &ack(11))
        .expect("ACK 11");
    let outcome = transfer.is_finished().expect("finished");
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(outcome.retransmits, 2, "blocks 3 and 4 again");
    assert_eq!(outcome.file_bytes, 5120);
}

#[test]
fn wrong_tid_gets_error_5_and_the_transfer_goes_on() {
    let t0 = Instant::now();
    let mut transfer = accept(t0, 1000, b"", NO_IDLE);
    let client = addr(CLIENT);
    drain(&mut transfer, t0);
    assert_eq!(
        transfer.handle_datagram(t0, addr(STRANGER), &ack(1)),
        Err(TransferDrop::UnknownTid)
    );
    let mut buf = [0u8; 600];
    let tx = transfer.poll_transmit(t0, &mut buf).expect("ERROR 5");
    assert_eq!(tx.dst, addr(STRANGER));
    assert!(
        matches!(
            Repr::parse_bytes(&buf[..tx.len]),
            Ok(Repr::Error {
                code: ErrorCode::UnknownTid,
                ..
            })
        ),
        "ERROR 5 to the stranger"
    );
    assert_eq!(transfer.is_finished(), None, "transfer not disturbed");
    transfer
        .handle_datagram(t0, client, &ack(1))
        .expect("ACK 1");
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Data, 2, client)]);
    transfer
        .handle_datagram(t0, client, &ack(2))
        .expect("ACK 2");
    assert_eq!(transfer.is_finished().map(|o| o.result), Some(Ok(())));
}

#[test]
fn client_refusing_the_oack_ends_the_transfer() {
    let t0 = Instant::now();
    let mut transfer = accept(t0, 1000, b"blksize\x001024\x00", NO_IDLE);
    drain(&mut transfer, t0);
    transfer
        .handle_datagram(t0, addr(CLIENT), b"\0\x05\0\x08no\0")
        .expect("ERROR handled");
    let outcome = transfer.is_finished().expect("finished");
    assert_eq!(
        outcome.result,
        Err(TransferFailure::PeerError(ErrorCode::OptionRefused))
    );
    assert_eq!(outcome.result.unwrap_err().as_str(), "peer_refused_options");
}

#[test]
fn client_retransmit_deadlines_are_exact() {
    let t0 = Instant::now();
    let mut client = TftpClient::new(t0, addr(LISTEN), "f", ClientConfig::edk2());
    let mut buf = [0u8; 512];
    let tx = client.poll_transmit(t0, &mut buf).expect("RRQ");
    assert_eq!(tx.dst, addr(LISTEN));
    assert_eq!(
        &buf[..tx.len],
        b"\0\x01f\0octet\0blksize\x001468\0tsize\x000\0windowsize\x001\0"
    );
    assert_eq!(client.poll_timeout(), Some(t0 + secs(1)));
    let mut at = t0;
    for rto in [2u64, 4, 8, 8, 8] {
        at = client.poll_timeout().expect("armed");
        client.handle_timeout(at);
        let tx = client.poll_transmit(at, &mut buf).expect("RRQ again");
        assert_eq!(tx.dst, addr(LISTEN));
        assert_eq!(client.poll_timeout(), Some(at + secs(rto)));
    }
    let last = client.poll_timeout().expect("armed");
    client.handle_timeout(last);
    assert_eq!(
        client.is_finished().map(|o| o.result),
        Some(Err(ClientFailure::TimedOut))
    );
    assert!(client.is_closed());
    assert_eq!(at, t0 + secs(15 + 8));

    // OACK from the new TID: ACK 0 back to it, and the ACK timer starts.
    let mut client = TftpClient::new(t0, addr(LISTEN), "f", ClientConfig::edk2());
    client.poll_transmit(t0, &mut buf);
    let t = t0 + Duration::from_millis(10);
    client
        .handle_datagram(t, addr(TID), b"\0\x06blksize\x001468\0tsize\x00600\0")
        .expect("OACK");
    let tx = client.poll_transmit(t, &mut buf).expect("ACK 0");
    assert_eq!((&buf[..tx.len], tx.dst), (&ack(0)[..], addr(TID)));
    assert_eq!(client.poll_timeout(), Some(t + secs(1)));
    client.handle_timeout(t + secs(1));
    let tx = client
        .poll_transmit(t + secs(1), &mut buf)
        .expect("ACK 0 again");
    assert_eq!(&buf[..tx.len], ack(0));
    // A packet from another port of the server is a stranger now.
    assert_eq!(
        client.handle_datagram(t, addr("198.18.0.1:40001"), b"\0\x03\0\x01x"),
        Err(ClientDrop::UnknownTid)
    );
    let tx = client.poll_transmit(t, &mut buf).expect("ERROR 5");
    assert_eq!(tx.dst, addr("198.18.0.1:40001"));
}

#[test]
fn client_refuses_an_oack_granting_more_than_asked() {
    let t0 = Instant::now();
    let mut client = TftpClient::new(t0, addr(LISTEN), "f", ClientConfig::ipxe());
    let mut buf = [0u8; 512];
    client.poll_transmit(t0, &mut buf);
    client
        .handle_datagram(t0, addr(TID), b"\0\x06blksize\x009000\0")
        .expect("OACK handled");
    let tx = client.poll_transmit(t0, &mut buf).expect("ERROR 8");
    assert_eq!(tx.dst, addr(TID));
    assert_eq!(&buf[..4], b"\0\x05\0\x08");
    assert_eq!(
        client.is_finished().map(|o| o.result),
        Some(Err(ClientFailure::BadOack))
    );
}

#[test]
fn client_detects_a_wrong_digest() {
    let data = pattern(3000);
    let mut client = ClientConfig::edk2();
    client.expected.sha256 = Some([0; 32]);
    let mut sim = Sim::new(
        catalog(&[("boot.efi", &data)]),
        ServerConfig::default(),
        "boot.efi",
        client,
    );
    let outcome = sim.run();
    assert_eq!(outcome.result, Err(ClientFailure::DigestMismatch));
    assert_eq!(outcome.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
}

#[test]
fn final_ack_lost_is_recovered_by_the_dally() {
    let data = pattern(1000);
    let mut sim = Sim::new(
        catalog(&[("boot.efi", &data)]),
        ServerConfig::default(),
        "boot.efi",
        ClientConfig::plain(),
    );
    // Deliver everything but the first ACK 2 (the final one).
    let mut buf = [0u8; 600];
    let mut dropped = false;
    for _ in 0..100 {
        let mut moved = false;
        while let Some(tx) = sim.client.poll_transmit(sim.now, &mut buf) {
            moved = true;
            if !dropped && buf[..tx.len] == ack(2) {
                dropped = true;
                continue;
            }
            let bytes = buf[..tx.len].to_vec();
            sim.deliver(addr(CLIENT), tx.dst, &bytes);
        }
        if let Some(transfer) = sim.transfer.as_mut() {
            let mut out = Vec::new();
            while let Some(tx) = transfer.poll_transmit(sim.now, &mut buf) {
                out.push(buf[..tx.len].to_vec());
            }
            moved |= !out.is_empty();
            for bytes in out {
                sim.deliver(addr(TID), addr(CLIENT), &bytes);
            }
        }
        if !moved {
            let next = [
                sim.client.poll_timeout(),
                sim.transfer.as_ref().and_then(|t| t.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            sim.now = next;
            sim.client.handle_timeout(next);
            if let Some(transfer) = sim.transfer.as_mut() {
                transfer.handle_timeout(next);
            }
        }
    }
    assert!(dropped);
    assert_eq!(sim.client.is_finished().map(|o| o.result), Some(Ok(())));
    let server = sim
        .transfer
        .as_ref()
        .and_then(|t| t.is_finished())
        .expect("server done");
    assert_eq!(server.result, Ok(()), "the dallying client re-acknowledged");
    assert_eq!(server.retransmits, 1);
    assert_eq!(
        server.duration,
        ms(250),
        "one retransmission timeout: the measured round trip's floor"
    );
}

#[test]
fn rollover_under_loss_with_tiny_blocks() {
    // blksize 8 makes 65537 blocks out of half a megabyte: the 16-bit ACK numbers wrap while
    // windows are being resent.
    let data = pattern(8 * 65_536 + 3);
    let mut client = ClientConfig::plain();
    client.options.blksize = Some(8);
    client.options.windowsize = Some(16);
    let faults = Faults {
        loss: 2,
        duplicate: 2,
        reorder: 2,
    };
    let (outcome, server, _) = download(&data, ServerConfig::default(), client, faults);
    assert_eq!(outcome.result, Ok(()), "download across the wrap verifies");
    let server = server.expect("server finished");
    assert_eq!(server.result, Ok(()));
    assert_eq!(server.file_bytes, data.len() as u64);
}

#[test]
fn no_oack_without_an_accepted_option() {
    let t0 = Instant::now();
    let client = addr(CLIENT);
    for options in [
        &b"multicast\x00\x00"[..],
        b"blksize\x004\x00",
        b"timeout\x000\x00windowsize\x00x\x00",
    ] {
        let mut transfer = accept(t0, 600, options, NO_IDLE);
        assert_eq!(
            drain(&mut transfer, t0),
            [(Opcode::Data, 1, client)],
            "{options:?}: plain DATA 1"
        );
        assert_eq!(transfer.params().blksize, 512);
    }
    // Mixed: the valid one is acknowledged, with the server's limit applied.
    let mut transfer = accept(t0, 600, b"BLKSIZE\x0065464\x00foo\x00bar\x00", NO_IDLE);
    let mut buf = [0u8; 2048];
    let tx = transfer.poll_transmit(t0, &mut buf).expect("OACK");
    assert_eq!(&buf[..tx.len], b"\x00\x06blksize\x001468\x00");
}

#[test]
fn per_transfer_state_is_small() {
    // A Bytes handle, addresses, timers, the round-trip estimate, counters and the window
    // position: no buffers. 520 bytes on x86_64 today; the bound catches a buffer or a
    // collection sneaking in.
    let size = size_of::<TftpTransfer>();
    assert!(size <= 576, "TftpTransfer is {size} bytes");
}

#[test]
fn random_datagrams_never_panic_any_core() {
    let t0 = Instant::now();
    let mut rng = TestRng::new(0xF022_1350);
    let server = TftpServer::new(ServerConfig::default(), catalog(&[("f", &pattern(5000))]));
    let mut transfer = accept(t0, 5000, b"windowsize\x008\x00tsize\x000\x00", NO_IDLE);
    let mut client = TftpClient::new(t0, addr(LISTEN), "f", ClientConfig::edk2());
    let mut buf = vec![0u8; 2048];
    let seeds: [&[u8]; 6] = [
        b"\0\x04\0\x00",
        b"\0\x03\0\x01abc",
        b"\0\x06blksize\x00512\0windowsize\x002\0",
        b"\0\x05\0\x01x\0",
        b"\0\x01f\0octet\0tsize\x000\0",
        b"\0\x01../f\0NETASCII\0",
    ];
    let mut now = t0;
    for i in 0..50_000u64 {
        let mut bytes = seeds[(i % 6) as usize].to_vec();
        for _ in 0..rng.next_u64() % 3 {
            let at = (rng.next_u64() as usize) % (bytes.len() + 1);
            match rng.next_u64() % 3 {
                0 if at < bytes.len() => bytes[at] = rng.next_u64() as u8,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, rng.next_u64() as u8),
            }
        }
        let from = if rng.percent(90) {
            addr(CLIENT)
        } else {
            addr(STRANGER)
        };
        now += Duration::from_millis(rng.next_u64() % 700);
        let _ = server.handle_request(now, from, &bytes, &mut buf);
        let _ = transfer.handle_datagram(now, from, &bytes);
        let server_from = if rng.percent(90) {
            addr(TID)
        } else {
            addr(LISTEN)
        };
        let _ = client.handle_datagram(now, server_from, &bytes);
        transfer.handle_timeout(now);
        client.handle_timeout(now);
        while transfer.poll_transmit(now, &mut buf).is_some() {}
        while client.poll_transmit(now, &mut buf).is_some() {}
        // Tiny buffers are refused, not overrun.
        let _ = transfer.poll_transmit(now, &mut [0u8; 3]);
        let _ = client.poll_transmit(now, &mut [0u8; 3]);
    }
}

/// Issue 19: an RRQ spoofed from a victim's address draws, until the client answers from that
/// address, the transfer's first datagram and its backed-off retransmissions, and nothing else:
/// no farewell ERROR, no more than `max_unverified_retries` resends.
#[test]
fn an_unanswered_transfer_sends_its_first_datagram_a_few_times_only() {
    let t0 = Instant::now();
    let victim = addr(CLIENT);
    for (options, first) in [
        (&b""[..], Opcode::Data),
        (
            &b"windowsize\x0064\x00blksize\x001468\x00tsize\x000\x00"[..],
            Opcode::Oack,
        ),
    ] {
        let mut transfer = accept(t0, 1 << 20, options, NO_IDLE);
        let mut sent = drain(&mut transfer, t0);
        let mut at = t0;
        while let Some(next) = transfer.poll_timeout() {
            assert!(next > at, "time moves on");
            at = next;
            transfer.handle_timeout(at);
            sent.extend(drain(&mut transfer, at));
        }
        let resends = NO_IDLE.max_unverified_retries as usize;
        assert_eq!(
            sent,
            vec![(first, if first == Opcode::Data { 1 } else { 0 }, victim); 1 + resends],
            "{options:?}: the first datagram and its resends, nothing else"
        );
        let backoff = if first == Opcode::Data {
            secs(1 + 2 + 4 + 8)
        } else {
            secs(4 + 8 + 8 + 8)
        };
        assert_eq!(
            at,
            t0 + backoff,
            "{options:?}: backoff 1, 2, 4 (an OACK's 4, 8, 8), then give up"
        );
        let outcome = transfer.is_finished().expect("finished");
        assert_eq!(outcome.result, Err(TransferFailure::RetriesExhausted));
    }
}

/// After the client has answered, a window lost whole is resent from its first block only (the
/// loss window), and the next ACK opens the negotiated window again.
#[test]
fn a_timeout_resends_the_window_start_and_an_ack_reopens_the_window() {
    let t0 = Instant::now();
    let mut transfer = accept(t0, 512 * 20, b"windowsize\x004\x00", NO_IDLE);
    let client = addr(CLIENT);
    let blocks = |v: Vec<(Opcode, u16, SocketAddr)>| v.into_iter().map(|p| p.1).collect::<Vec<_>>();
    drain(&mut transfer, t0);
    transfer
        .handle_datagram(t0, client, &ack(0))
        .expect("ACK 0");
    assert_eq!(blocks(drain(&mut transfer, t0)), [1, 2, 3, 4]);
    let t1 = transfer.poll_timeout().expect("armed");
    transfer.handle_timeout(t1);
    assert_eq!(
        blocks(drain(&mut transfer, t1)),
        [1],
        "loss window: one block"
    );
    assert_eq!(t1, t0 + ms(250), "the measured round trip's floor");
    let t2 = transfer.poll_timeout().expect("armed");
    assert_eq!(t2, t1 + ms(500), "backed off");
    transfer.handle_timeout(t2);
    assert_eq!(blocks(drain(&mut transfer, t2)), [1]);
    transfer
        .handle_datagram(t2, client, &ack(1))
        .expect("ACK 1");
    assert_eq!(
        blocks(drain(&mut transfer, t2)),
        [2, 3, 4, 5],
        "window open again"
    );
}

/// Issue 18: a loaded client (a storm of boots on two cores) answers late; its transfer's
/// timeout follows the round trips it measures (RFC 6298), and a sample is only taken from a
/// datagram sent once (Karn).
#[test]
fn the_timeout_follows_the_measured_round_trip() {
    let t0 = Instant::now();
    let client = addr(CLIENT);
    let mut transfer = accept(t0, 512 * 10, b"", NO_IDLE);
    let mut t = t0;
    drain(&mut transfer, t);
    // Each block is acknowledged 400 ms after it went out.
    for block in 1..=3u16 {
        t += ms(400);
        transfer
            .handle_datagram(t, client, &ack(block))
            .expect("ACK");
        assert_eq!(drain(&mut transfer, t), [(Opcode::Data, block + 1, client)]);
    }
    // SRTT 400 ms; RTTVAR 200, 150, 112.5 ms: RTO = 400 + 4 × 112.5 = 850 ms.
    assert_eq!(transfer.srtt(), Some(ms(400)));
    assert_eq!(transfer.poll_timeout(), Some(t + ms(850)));
    // A timeout, then the ACK of the resent block: no sample from it (Karn).
    let at = transfer.poll_timeout().expect("armed");
    transfer.handle_timeout(at);
    assert_eq!(drain(&mut transfer, at), [(Opcode::Data, 4, client)]);
    let late = at + ms(100);
    transfer
        .handle_datagram(late, client, &ack(4))
        .expect("ACK 4");
    assert_eq!(
        transfer.srtt(),
        Some(ms(400)),
        "no sample from a resent block"
    );
    assert_eq!(drain(&mut transfer, late), [(Opcode::Data, 5, client)]);
    assert_eq!(transfer.poll_timeout(), Some(late + ms(850)));

    // The ACK 0 of an OACK is a sample too.
    let mut transfer = accept(t0, 5000, b"blksize\x001468\x00", NO_IDLE);
    drain(&mut transfer, t0);
    transfer
        .handle_datagram(t0 + secs(2), client, &ack(0))
        .expect("ACK 0");
    assert_eq!(transfer.srtt(), Some(secs(2)));
    drain(&mut transfer, t0 + secs(2));
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + secs(2) + secs(1)),
        "2 s + 4 × 1 s, capped at the initial timeout: a sample only shortens it"
    );
}

/// Issue 18: atftp answers a second OACK with ERROR 0 and aborts. The OACK is not resent before
/// `oack_timeout` (4 s, below atftp's own 5 s), so a client that is merely slow to answer gets
/// one; a client that lost it and says so by repeating its request gets it again at once.
#[test]
fn the_oack_waits_for_a_slow_client_and_answers_a_repeated_request() {
    let t0 = Instant::now();
    let client = addr(CLIENT);
    let options = b"blksize\x001468\x00tsize\x000\x00";
    let mut transfer = accept(t0, 5000, options, NO_IDLE);
    assert_eq!(drain(&mut transfer, t0), [(Opcode::Oack, 0, client)]);
    assert_eq!(transfer.poll_timeout(), Some(t0 + secs(4)));
    // A client loaded for 3.5 s still gets its DATA 1, without a second OACK.
    transfer.handle_timeout(t0 + ms(3500));
    assert_eq!(drain(&mut transfer, t0 + ms(3500)), []);
    transfer
        .handle_datagram(t0 + ms(3500), client, &ack(0))
        .expect("ACK 0");
    assert_eq!(
        drain(&mut transfer, t0 + ms(3500)),
        [(Opcode::Data, 1, client)]
    );
    assert!(
        !transfer.handle_repeated_request(t0 + secs(5)),
        "a repeat after the client answered is stale"
    );

    // The OACK was lost: the client repeats its request (atftp after 5 s, iPXE sooner).
    let mut transfer = accept(t0, 5000, options, NO_IDLE);
    drain(&mut transfer, t0);
    assert!(
        !transfer.handle_repeated_request(t0 + ms(100)),
        "a repeat within the floor may have crossed the OACK"
    );
    assert_eq!(drain(&mut transfer, t0 + ms(100)), []);
    assert!(transfer.handle_repeated_request(t0 + secs(1)));
    assert_eq!(
        drain(&mut transfer, t0 + secs(1)),
        [(Opcode::Oack, 0, client)]
    );
    assert_eq!(
        transfer.poll_timeout(),
        Some(t0 + secs(1) + secs(8)),
        "counted as a timeout: backed off"
    );
    // Repeats share the limit of resends to an address that never answered (issue 19).
    let mut at = t0 + secs(1);
    let mut sent = 2;
    for _ in 0..10 {
        at += secs(1);
        if transfer.handle_repeated_request(at) {
            sent += drain(&mut transfer, at).len();
        }
    }
    assert_eq!(sent, 1 + NO_IDLE.max_unverified_retries as usize);
    let outcome = transfer.is_finished();
    assert_eq!(outcome, None, "the timer ends it");
    while let Some(next) = transfer.poll_timeout() {
        transfer.handle_timeout(next);
        assert_eq!(
            drain(&mut transfer, next),
            [],
            "nothing more to the address"
        );
    }
    assert_eq!(
        transfer.is_finished().map(|o| (o.result, o.retransmits)),
        Some((Err(TransferFailure::RetriesExhausted), 3))
    );

    // A plain request's DATA 1 is answered the same way.
    let mut transfer = accept(t0, 5000, b"", NO_IDLE);
    drain(&mut transfer, t0);
    assert!(transfer.handle_repeated_request(t0 + ms(500)));
    assert_eq!(
        drain(&mut transfer, t0 + ms(500)),
        [(Opcode::Data, 1, client)]
    );
}
