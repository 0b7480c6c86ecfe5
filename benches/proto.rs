//! Per-packet cost of the sans-IO cores: parse and emit for each wire format, one TFTP block
//! served, one HTTP request answered. `cargo bench --bench proto`.
use std::{
    hint::black_box,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stampede_dataplane::{
    boot::BootPlan,
    config::{ApplianceConfig, QuickBoot},
};
use stampede_proto::{
    dhcp::{self, BootConfig, DhcpServer, MemoryLeaseStore, ServerConfig as DhcpConfig},
    files::{BootFile, MemoryCatalog},
    http::{
        HttpConnection, ServerConfig as HttpConfig,
        request::{Limits, Request},
    },
    tftp::{self, Request as TftpRequest, TftpServer},
};

const UEFI_DISCOVER: &[u8] =
    include_bytes!("../dataplane/proto/fixtures/dhcp/udhcpc_uefi_discover.bin");
const IPXE_DISCOVER: &[u8] =
    include_bytes!("../dataplane/proto/fixtures/dhcp/qemu_ipxe_discover.bin");
const ATFTP_RRQ: &[u8] =
    include_bytes!("../dataplane/proto/fixtures/tftp/atftp-rrq-blksize-tsize-windowsize.bin");
const CURL_GET: &[u8] = include_bytes!("../dataplane/proto/fixtures/http/curl-range.txt");

fn dhcp(c: &mut Criterion) {
    let mut group = c.benchmark_group("dhcp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_ipxe_discover", |b| {
        b.iter(|| dhcp::Repr::parse_bytes(black_box(IPXE_DISCOVER)).expect("parses"))
    });
    let repr = dhcp::Repr::parse_bytes(IPXE_DISCOVER).expect("parses");
    let mut buf = vec![0u8; 1500];
    group.bench_function("emit_ipxe_discover", |b| {
        b.iter(|| black_box(&repr).emit_bytes(&mut buf).expect("emits"))
    });
    // A ProxyDHCP answer: parse the DISCOVER, decide the boot file, emit the OFFER.
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    let mut server = DhcpServer::new(DhcpConfig::proxy(
        ip,
        BootConfig::new(ip, "http://198.18.0.1:8080"),
    ))
    .expect("config");
    let mut store = MemoryLeaseStore::new();
    let now = Instant::now();
    let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT);
    let local = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    group.bench_function("proxy_offer_uefi", |b| {
        b.iter(|| {
            let _ = server.handle_datagram(now, from, local, black_box(UEFI_DISCOVER), &mut store);
            server.poll_transmit(now, &mut buf).expect("an offer")
        })
    });
    group.finish();
}

/// What one DISCOVER costs the appliance as it serves it (`stampede boot --dhcp-range`): the
/// admission check, the server core, the OFFER written, and what the engine needs to log it and
/// file its boot event. Issue 22 item 2 compares this before (admission, server and the
/// engine's reply report each parsed the datagram) and after (one parse; the server reports
/// what it did); `docs/benchmarks/proto.md`.
fn dhcp_as_served(c: &mut Criterion) {
    let mut group = c.benchmark_group("dhcp");
    group.throughput(Throughput::Elements(1));
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    let config = ApplianceConfig::quick(QuickBoot {
        kernel: "/srv/vmlinuz".into(),
        initrds: vec!["/srv/initrd.img".into()],
        cmdline: "console=ttyS0".into(),
        dhcp_range: Some((
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 3, 250),
        )),
        link: Some((ip, 22)),
        iface: Some("eth0".into()),
        ..QuickBoot::default()
    })
    .expect("quick config");
    let mut files = MemoryCatalog::new();
    files.insert("vmlinuz", BootFile::new(b"KERNEL".to_vec()));
    files.insert("initrd.img", BootFile::new(b"INITRD".to_vec()));
    let mut loaders = MemoryCatalog::new();
    loaders.insert("undionly.kpxe", BootFile::new(b"UNDI".to_vec()));
    loaders.insert("snponly.efi", BootFile::new(b"SNP".to_vec()));
    let plan = BootPlan::new(&config, ip, Arc::new(files), Arc::new(loaders)).expect("plan");
    let mut server = plan.dhcp_server().expect("config").expect("DHCP on");
    let mut store = MemoryLeaseStore::new();
    let mut buf = vec![0u8; 1500];
    let now = Instant::now();
    let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT);
    let local = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    group.bench_function("discover_to_offer_as_served", |b| {
        b.iter(|| {
            // Admission is the server's, on the request it parses to serve.
            let _ = server.handle_datagram(now, from, local, black_box(IPXE_DISCOVER), &mut store);
            let transmit = server.poll_transmit(now, &mut buf).expect("an offer");
            // What the engine logs and files as the reply's boot event, as the server reports it.
            let Some(dhcp::ServerEvent::Replied {
                mac,
                yiaddr,
                boot_file,
                ..
            }) = server.poll_event()
            else {
                panic!("the reply is reported")
            };
            let boot_file = stampede_proto::text::peer_text(&boot_file);
            (transmit, mac, yiaddr, boot_file)
        })
    });
    group.finish();
}

fn tftp(c: &mut Criterion) {
    let mut group = c.benchmark_group("tftp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_atftp_rrq", |b| {
        b.iter(|| tftp::Repr::parse_bytes(black_box(ATFTP_RRQ)).expect("parses"))
    });
    // One block served: ACK in, next DATA out, 1468-byte blocks, windowsize 1.
    const FILE_LEN: usize = 64 << 20;
    let mut catalog = MemoryCatalog::new();
    catalog.insert("big.img", BootFile::new(vec![0xA5u8; FILE_LEN]));
    let server = TftpServer::new(tftp::ServerConfig::default(), catalog);
    let client = SocketAddr::from((Ipv4Addr::new(198, 18, 0, 50), 2070));
    let rrq = b"\x00\x01big.img\x00octet\x00blksize\x001468\x00";
    let mut buf = vec![0u8; 1600];
    let start = Instant::now();
    let TftpRequest::Accepted(mut transfer) = server.handle_request(start, client, rrq, &mut buf)
    else {
        panic!("request refused")
    };
    transfer.poll_transmit(start, &mut buf).expect("OACK");
    let mut block: u16 = 0;
    let mut ack = [0u8, 4, 0, 0];
    group.throughput(Throughput::Bytes(1468));
    group.bench_function("serve_block_1468", |b| {
        b.iter(|| {
            ack[2..4].copy_from_slice(&block.to_be_bytes());
            let _ = transfer.handle_datagram(start, client, &ack);
            let sent = transfer.poll_transmit(start, &mut buf).expect("DATA");
            block = block.wrapping_add(1);
            // Start over before the file ends so every iteration serves a full block.
            if u64::from(block) * 1468 >= (FILE_LEN as u64) - 1468 {
                let TftpRequest::Accepted(t) = server.handle_request(start, client, rrq, &mut buf)
                else {
                    panic!("request refused")
                };
                transfer = t;
                transfer.poll_transmit(start, &mut buf).expect("OACK");
                block = 0;
            }
            sent
        })
    });
    group.finish();
}

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    let limits = Limits::default();
    group.bench_function("parse_curl_range", |b| {
        b.iter(|| Request::parse(black_box(CURL_GET), &limits).expect("parses"))
    });
    let mut catalog = MemoryCatalog::new();
    catalog.insert("boot/vmlinuz", BootFile::new(vec![1u8; 8 << 20]));
    let request =
        b"GET /boot/vmlinuz HTTP/1.1\r\nHost: 198.18.0.1:8080\r\nRange: bytes=0-65535\r\n\r\n";
    let now = Instant::now();
    let mut conn = HttpConnection::new(now, catalog, HttpConfig::default());
    let mut out = Vec::with_capacity(512);
    group.bench_function("answer_range_request", |b| {
        b.iter(|| {
            let consumed = conn.handle_input(now, black_box(request));
            assert_eq!(consumed, request.len());
            out.clear();
            let transmit = conn.poll_output(now, &mut out).expect("a response");
            conn.transmit_done(now);
            transmit
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = dhcp, dhcp_as_served, tftp, http
}
criterion_main!(benches);
