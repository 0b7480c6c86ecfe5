//! The engine: worker threads that drive the sans-IO protocol cores with io_uring (or AF_XDP):
//! the UDP workers (DHCP, TFTP; [`udp`], [`afxdp`]) and the HTTP boot server's ([`http`]).
//!
//! Thread-per-core: each UDP worker owns one ring ([`crate::sys::uring::UdpWorker`]) and the
//! sockets it serves, and shares nothing mutable with the others on the hot path. Worker 0 also
//! serves DHCP (ports 67 and 4011) so lease state lives in one place; every worker serves TFTP
//! requests on port 69 (`SO_REUSEPORT` spreads clients over workers) and runs the transfers they
//! start from a transfer port of its own.
//!
//! TFTP transfer ports: RFC 1350 §4 has the server answer from a new port (its TID) per
//! transfer, and it must be unpredictable: a fixed port, learnt from one request of one's own,
//! let an off-path attacker acknowledge a request spoofed from a victim's address and turn a
//! 52-byte request into 141 KB towards the victim (issue 19). On io_uring each transfer has a
//! socket of its own on a port drawn at random from 1024-65535 (not the kernel's smaller
//! ephemeral range), registered with the worker's ring
//! while it runs and closed after; on the AF_XDP path a transfer draws its port the same way,
//! holds it with a kernel socket that sees no frame, and marks it in the XDP program's port map
//! (`AFXDP_PORTS`) while it runs, so the program steers that port's frames to the path.
pub mod afxdp;
pub mod http;
pub mod https;
pub mod ra;
pub mod udp;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use stampede_proto::dhcp::LeaseStore;

use crate::boot::BootPlan;

pub use udp::{UdpStats, UdpWorkerSet};

/// Errors starting the engine, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("io_uring is not usable: {0}")]
    Uring(#[from] crate::sys::uring::UringError),
    #[error("binding {what} ({addr}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {iface:?}: {problem}")]
    Interface { iface: String, problem: String },
    #[error("the DHCP configuration was refused: {0}")]
    Dhcp(#[from] stampede_proto::dhcp::ConfigError),
    #[error("starting a worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("AF_XDP socket on queue {queue}: {source}")]
    AfXdp {
        queue: u32,
        #[source]
        source: crate::sys::afxdp::XskError,
    },
    #[error("steering to AF_XDP: {0}")]
    Steering(#[source] crate::xdp::XdpError),
}

/// Where and how the engine serves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The boot network's interface (sockets are bound to it with `SO_BINDTODEVICE`); `None`
    /// serves on every interface (tests on loopback).
    pub iface: Option<String>,
    /// UDP workers (rings). At least 1.
    pub workers: usize,
    /// Port numbers, overridable so tests can run without the privileged ones.
    pub ports: Ports,
    /// Transfers one worker runs at once; requests beyond it are dropped (the client retries).
    pub max_transfers_per_worker: usize,
    /// Where each boot stage is reported (DHCP replies, TFTP transfers): the control plane's
    /// per-machine sessions. Discarded by default.
    pub events: stampede_proto::events::Events,
}

/// The well-known ports, as numbers the engine binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub dhcp: u16,
    pub proxy_dhcp: u16,
    pub tftp: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            dhcp: 67,
            proxy_dhcp: 4011,
            tftp: 69,
        }
    }
}

/// A running engine. Stop it with [`Engine::stop`]; dropping it stops it too.
#[derive(Debug)]
pub struct Engine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    udp: UdpWorkerSet,
    plan: Arc<Mutex<Arc<BootPlan>>>,
}

impl Engine {
    /// Binds every socket and starts the workers. Binding happens before any thread starts, so
    /// a port in use or a missing interface is reported here, not logged from a thread.
    ///
    /// `leases` is where the DHCP server keeps leases: an ACK leaves only once the store reports
    /// its change durable (`LeaseStore::durable_seq`).
    pub fn start(
        plan: Arc<BootPlan>,
        config: EngineConfig,
        leases: Box<dyn LeaseStore + Send>,
    ) -> Result<Self, EngineError> {
        crate::sys::uring::probe()?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared_plan = Arc::new(Mutex::new(plan));
        let (udp, threads) = udp::start(&shared_plan, &config, &stop, leases)?;
        Ok(Self {
            stop,
            threads,
            udp,
            plan: shared_plan,
        })
    }

    /// Starts the AF_XDP path instead of the io_uring UDP workers, over sockets bound by
    /// [`AfXdpSockets::bind`].
    pub fn start_afxdp(
        plan: Arc<BootPlan>,
        config: EngineConfig,
        leases: Box<dyn LeaseStore + Send>,
        sockets: AfXdpSockets,
    ) -> Result<Self, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared_plan = Arc::new(Mutex::new(plan));
        let (udp, threads) = afxdp::start(&shared_plan, &config, &stop, leases, sockets)?;
        Ok(Self {
            stop,
            threads,
            udp,
            plan: shared_plan,
        })
    }

    /// Counters of the UDP side, summed over workers.
    pub fn udp_stats(&self) -> UdpStats {
        self.udp.stats()
    }

    /// Replaces the boot plan (config reload). Transfers in progress keep the files they have;
    /// new requests use the new plan; DHCP leases are kept.
    pub fn reload(&self, plan: Arc<BootPlan>) {
        *self
            .plan
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = plan;
        self.udp.notify_reload();
    }

    /// Stops the workers, waits for them, and returns their final counters (each worker
    /// publishes its last ones as it exits).
    pub fn stop(mut self) -> UdpStats {
        self.shutdown();
        self.udp.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The AF_XDP path's sockets, bound and steered to, before any worker runs: one AF_XDP socket
/// per RX queue, registered in the classifier's XSKMAP, and kernel UDP sockets holding the
/// service ports so no other program on the host takes them (each transfer holds its own port
/// the same way while it runs).
#[derive(Debug)]
pub struct AfXdpSockets {
    pub(crate) sockets: Vec<crate::sys::afxdp::XskSocket>,
    pub(crate) link: afxdp::Link,
    pub(crate) ports: Ports,
    /// The XDP program's map of transfer ports steered to the path.
    pub(crate) transfer_ports: crate::xdp::AfXdpPorts,
    /// The boot interface, which transfers' port-holding sockets are bound to.
    pub(crate) iface: String,
    pub(crate) reservations: Vec<std::net::UdpSocket>,
}

impl AfXdpSockets {
    /// Binds one AF_XDP socket per RX queue of `iface`, registers them in `classifier`, and
    /// turns steering on. On error nothing stays steered (registered sockets leave the XSKMAP as
    /// they close), so the caller can start the io_uring workers instead.
    pub fn bind(
        iface: &str,
        ports: Ports,
        classifier: &mut crate::xdp::XdpClassifier,
        xsk: crate::sys::afxdp::XskConfig,
    ) -> Result<Self, EngineError> {
        let interface_error = |problem: String| EngineError::Interface {
            iface: iface.to_owned(),
            problem,
        };
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|e| interface_error(format!("no index: {e}")))?;
        let (ip, prefix) = interface_ipv4(iface)?;
        let mac = interface_mac(iface)?;
        let queues = rx_queues(iface).min(stampede_ebpf_common::XSKS_CAPACITY);
        let mut sockets = Vec::new();
        for queue in 0..queues {
            let socket = crate::sys::afxdp::XskSocket::bind(ifindex, queue, xsk)
                .map_err(|source| EngineError::AfXdp { queue, source })?;
            classifier
                .register_xsk(queue, std::os::fd::AsFd::as_fd(&socket))
                .map_err(EngineError::Steering)?;
            sockets.push(socket);
        }
        let mut reservations = Vec::new();
        for (port, what) in [
            (ports.dhcp, "the DHCP port"),
            (ports.proxy_dhcp, "the PXE port"),
            (ports.tftp, "the TFTP port"),
        ] {
            reservations.push(udp::udp_socket(port, Some(iface), false, what)?);
        }
        let transfer_ports = classifier.afxdp_ports().map_err(EngineError::Steering)?;
        classifier
            .set_afxdp_steering(stampede_ebpf_common::AfXdpSteering {
                enabled: 1,
                server_ip: ip.octets(),
            })
            .map_err(EngineError::Steering)?;
        tracing::info!(
            %iface,
            queues,
            zero_copy = sockets.iter().all(|s| s.zero_copy()),
            "AF_XDP path bound; boot frames are steered to it"
        );
        Ok(Self {
            sockets,
            link: afxdp::Link { mac, ip, prefix },
            ports,
            transfer_ports,
            iface: iface.to_owned(),
            reservations,
        })
    }

    /// Whether every socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.sockets.iter().all(|s| s.zero_copy())
    }

    pub fn queues(&self) -> usize {
        self.sockets.len()
    }
}

/// The Ethernet address of `iface`.
pub fn interface_mac(iface: &str) -> Result<[u8; 6], EngineError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| EngineError::Interface {
        iface: iface.to_owned(),
        problem: format!("listing addresses failed: {e}"),
    })?;
    addrs
        .filter(|ifa| ifa.interface_name == iface)
        .find_map(|ifa| ifa.address.as_ref()?.as_link_addr()?.addr())
        .ok_or_else(|| EngineError::Interface {
            iface: iface.to_owned(),
            problem: "has no Ethernet address".into(),
        })
}

/// Number of RX queues of `iface` (`/sys/class/net/IFACE/queues/rx-N`); 1 when unknown.
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// The first IPv4 address of `iface`.
pub fn interface_ipv4(iface: &str) -> Result<(Ipv4Addr, u8), EngineError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| EngineError::Interface {
        iface: iface.to_owned(),
        problem: format!("listing addresses failed: {e}"),
    })?;
    let mut exists = false;
    for ifa in addrs {
        if ifa.interface_name != iface {
            continue;
        }
        exists = true;
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let prefix = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map_or(32, |m| m.ip().to_bits().count_ones() as u8);
        return Ok((addr.ip(), prefix));
    }
    Err(EngineError::Interface {
        iface: iface.to_owned(),
        problem: if exists {
            "has no IPv4 address: give it one, or set server.address".into()
        } else {
            "no such interface".into()
        },
    })
}

/// The catalogs a boot plan serves from, as the configuration names them: the boot root
/// directory and the single files of `[boot] files` (looked up first), and the iPXE directory.
pub fn catalogs(
    config: &crate::config::ApplianceConfig,
) -> Result<(crate::boot::SharedCatalog, crate::boot::SharedCatalog), crate::store::StoreError> {
    let root = match &config.boot.root {
        // Content-addressed and renamed into place, never rewritten: served from the files
        // themselves (page cache, no copy), see `BootRoot::in_place`.
        Some(dir) => Some(crate::store::BootRoot::new(dir)?.in_place()),
        None => None,
    };
    let mut files = std::collections::HashMap::new();
    for (name, path) in &config.boot.files {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| stampede_proto::bootpath::BootPath::parse(n.as_bytes()).ok())
            .ok_or_else(|| crate::store::StoreError::Io {
                op: "serving a file whose name is not a valid boot file name",
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })?;
        files.insert(
            name.clone(),
            (crate::store::BootRoot::new(parent)?, file_name),
        );
    }
    let ipxe = crate::store::BootRoot::new(&config.boot.ipxe_dir)?;
    let roots = match &config.boot.roots_dir {
        // Content-addressed and renamed into place, never rewritten: served from the files
        // themselves (page cache, no copy), see `BootRoot::in_place`.
        Some(dir) => Some(crate::store::BootRoot::new(dir)?.in_place()),
        None => None,
    };
    Ok((Arc::new(FileMap { files, root, roots }), Arc::new(ipxe)))
}

/// Named single files, then a directory.
#[derive(Debug)]
struct FileMap {
    files: std::collections::HashMap<
        stampede_proto::bootpath::BootPath,
        (crate::store::BootRoot, stampede_proto::bootpath::BootPath),
    >,
    root: Option<crate::store::BootRoot>,
    /// Built diskless roots: paths under [`crate::boot::ROOT_PREFIXES`].
    roots: Option<crate::store::BootRoot>,
}

impl stampede_proto::files::FileCatalog for FileMap {
    fn open(
        &self,
        path: &stampede_proto::bootpath::BootPath,
    ) -> Result<stampede_proto::files::BootFile, stampede_proto::files::OpenError> {
        if let Some((dir, name)) = self.files.get(path) {
            return dir.open(name);
        }
        if crate::boot::is_root_path(path) {
            return match &self.roots {
                Some(roots) => roots.open(path),
                None => Err(stampede_proto::files::OpenError::NotFound),
            };
        }
        match &self.root {
            Some(root) => root.open(path),
            None => Err(stampede_proto::files::OpenError::NotFound),
        }
    }
}

/// The HTTP side's view of the boot plan: every request reads the engine's current plan, so a
/// reload reaches HTTP at the next request, and a response already being sent keeps its bytes.
#[derive(Debug, Clone)]
pub struct CurrentPlan(Arc<Mutex<Arc<BootPlan>>>);

impl CurrentPlan {
    /// The plan in force now (a reload replaces it).
    pub fn get(&self) -> Arc<BootPlan> {
        Arc::clone(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl stampede_proto::files::FileCatalog for CurrentPlan {
    fn open(
        &self,
        path: &stampede_proto::bootpath::BootPath,
    ) -> Result<stampede_proto::files::BootFile, stampede_proto::files::OpenError> {
        self.get().http_catalog().open(path)
    }
}

impl stampede_proto::http::Route for CurrentPlan {
    fn route(
        &self,
        path: &stampede_proto::bootpath::BootPath,
        query: Option<&str>,
    ) -> Option<Result<stampede_proto::files::BootFile, stampede_proto::files::OpenError>> {
        self.get().scripts().route(path, query)
    }
}

impl Engine {
    /// What the HTTP server serves from: the engine's current boot plan.
    pub fn current_plan(&self) -> CurrentPlan {
        CurrentPlan(Arc::clone(&self.plan))
    }
}
