//! The Router Advertisement responder's thread: a raw ICMPv6 socket on the boot interface
//! driving [`stampede_proto::ndp::RouterAdvertiser`]. Not on the hot path: a rack soliciting
//! at once is a few hundred tiny packets.
use std::{
    net::{Ipv6Addr, SocketAddrV6},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use stampede_proto::ndp::{AdvertiserConfig, AdvertiserState, AdvertiserStats, RouterAdvertiser};

use super::EngineError;

/// All-nodes (RA destination) and all-routers (RS destination), RFC 4291 §2.7.1.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// How long a receive waits before the thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(200);

/// The running responder.
#[derive(Debug)]
pub struct RaResponder {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<AdvertiserStats>>,
}

impl RaResponder {
    /// Opens the socket on `iface` and starts listening. Fails (and the caller logs why) where
    /// IPv6 is off on the interface.
    pub fn start(iface: &str, config: AdvertiserConfig) -> Result<Self, EngineError> {
        let fail = |problem: String| EngineError::Interface {
            iface: iface.to_owned(),
            problem,
        };
        let index = nix::net::if_::if_nametoindex(iface)
            .map_err(|e| fail(format!("no interface index: {e}")))?;
        let own = own_addresses(iface);
        if own.is_empty() {
            return Err(fail("has no IPv6 address (IPv6 is off on it)".into()));
        }
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(|e| fail(format!("raw ICMPv6 socket: {e}")))?;
        socket
            .bind_device(Some(iface.as_bytes()))
            .map_err(|e| fail(format!("SO_BINDTODEVICE: {e}")))?;
        // RFC 4861 §6.1.2: hosts drop an RA whose hop limit is not 255.
        socket
            .set_multicast_hops_v6(255)
            .map_err(|e| fail(format!("hop limit: {e}")))?;
        socket
            .set_unicast_hops_v6(255)
            .map_err(|e| fail(format!("hop limit: {e}")))?;
        socket
            .set_multicast_if_v6(index)
            .map_err(|e| fail(format!("multicast interface: {e}")))?;
        socket
            .join_multicast_v6(&ALL_ROUTERS, index)
            .map_err(|e| fail(format!("joining ff02::2: {e}")))?;
        socket
            .set_read_timeout(Some(TICK))
            .map_err(|e| fail(format!("timeout: {e}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(AdvertiserStats::default()));
        let thread = {
            let (stop, stats, iface) = (Arc::clone(&stop), Arc::clone(&stats), iface.to_owned());
            std::thread::Builder::new()
                .name("stampede-ra".into())
                .spawn(move || run(&socket, index, &iface, &own, config, &stop, &stats))
                .map_err(EngineError::Thread)?
        };
        tracing::info!(
            %iface,
            listen_s = config.listen.as_secs(),
            "listening for IPv6 routers before answering router solicitations"
        );
        Ok(Self {
            thread: Some(thread),
            stop,
            stats,
        })
    }

    pub fn stats(&self) -> AdvertiserStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RaResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This host's IPv6 addresses on `iface`: our own RAs come back on the raw socket.
fn own_addresses(iface: &str) -> Vec<Ipv6Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter(|a| a.interface_name == iface)
                .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in6().map(|s| s.ip())))
                .collect()
        })
        .unwrap_or_default()
}

fn run(
    socket: &Socket,
    index: u32,
    iface: &str,
    own: &[Ipv6Addr],
    config: AdvertiserConfig,
    stop: &AtomicBool,
    stats: &Mutex<AdvertiserStats>,
) {
    let mut advertiser = RouterAdvertiser::new(Instant::now(), config);
    let mut reported = AdvertiserState::Listening;
    let mut buf = [0u8; 1500];
    let destination = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    while !stop.load(Ordering::Relaxed) {
        match nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrIn6>(
            socket.as_raw_fd(),
            &mut buf,
        ) {
            Ok((len, Some(source))) => {
                let source = source.ip();
                advertiser.handle_icmpv6(
                    Instant::now(),
                    source,
                    own.contains(&source),
                    &buf[..len],
                );
            }
            Ok((_, None)) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(err) => {
                tracing::error!(%iface, error = %err, "router solicitations: receive failed; stopping");
                return;
            }
        }
        let now = Instant::now();
        let state = advertiser.state(now);
        if state != reported {
            log_state(iface, state, config);
            reported = state;
        }
        if let Some(ra) = advertiser.poll_transmit(now)
            && let Err(err) = socket.send_to(&ra, &destination)
        {
            tracing::warn!(%iface, error = %err, "sending a router advertisement failed");
        }
        *stats.lock().unwrap_or_else(PoisonError::into_inner) = advertiser.stats();
    }
}

fn log_state(iface: &str, state: AdvertiserState, config: AdvertiserConfig) {
    match state {
        AdvertiserState::Answering => tracing::info!(
            %iface,
            "no other IPv6 router seen: answering router solicitations with an empty RA \
             (router lifetime 0, no prefix), so firmware such as iPXE stops waiting for IPv6 \
             autoconfiguration"
        ),
        AdvertiserState::OtherRouter(router) => tracing::info!(
            %iface,
            %router,
            quiet_s = config.quiet_after_other.as_secs(),
            "another IPv6 router advertises here: not answering router solicitations"
        ),
        AdvertiserState::Listening => {}
    }
}
