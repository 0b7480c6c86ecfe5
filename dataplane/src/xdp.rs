//! The XDP classifier: load, attach (native mode, falling back to generic), read counters, change
//! the drop policy live (deny/allow lists, rate limits, known-only mode), detach.
//!
//! The eBPF object is built by this crate's `build.rs` from `ebpf/xdp` and embedded here, so the
//! binary carries its own programs.
use std::{collections::BTreeSet, fmt};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf, XskMap},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use stampede_ebpf_common::{
    AFXDP_MAP, AFXDP_PORTS_MAP, ALLOW_MACS_CAPACITY, ALLOW_MACS_MAP, AfXdpSteering,
    CLASS_COUNTERS_MAP, CLASSIFIER_PROGRAM, CONFIG_MAP, ClassCounter, DENY_MACS_CAPACITY,
    DENY_MACS_MAP, DROP_COUNTERS_MAP, MacKey, REFUSALS_MAP, STEER_COUNTERS_MAP, XSKS_MAP,
    XdpConfig, XdpPolicy, class, drop_reason, steer,
};

/// The eBPF object file built from `ebpf/xdp`.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stampede-xdp"))
}

/// How often the refusal ring is read: a refusal shows in `ctl watch` within a quarter second,
/// and the 64 KiB ring holds 4096 samples, far more than a quarter second of refused machines.
pub const REFUSAL_READ_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The program's sampled refusals ([`REFUSALS_MAP`]): frames dropped by MAC policy, at most one
/// per MAC per second, for user space to file under the machine.
pub struct RefusalRing {
    ring: RingBuf<MapData>,
}

impl fmt::Debug for RefusalRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefusalRing(..)")
    }
}

impl RefusalRing {
    /// Every refusal waiting in the ring, as (MAC, [`drop_reason`] name).
    pub fn drain(&mut self) -> Vec<([u8; 6], &'static str)> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            // A record shorter than a `Refusal` would come from another program version.
            let Some(record) = item.get(..8) else {
                continue;
            };
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&record[..6]);
            let reason = drop_reason::NAMES
                .get(usize::from(record[6]))
                .copied()
                .unwrap_or("unknown");
            out.push((mac, reason));
        }
        out
    }

    /// Files every refusal as a boot event ([`BootEventKind::Refused`] by XDP) from a thread
    /// that reads the ring every `every`, sampled again per MAC and reason as DHCP's refusals
    /// are ([`RefusalSampler`]). Stops when the returned reporter is dropped.
    ///
    /// [`BootEventKind::Refused`]: stampede_proto::events::BootEventKind::Refused
    /// [`RefusalSampler`]: stampede_proto::events::RefusalSampler
    pub fn report(
        mut self,
        events: stampede_proto::events::Events,
        every: std::time::Duration,
    ) -> std::io::Result<RefusalReporter> {
        use stampede_proto::events::{BootEvent, BootEventKind, RefusalSampler, RefusedBy};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("stampede-xdp-refusals".into())
            .spawn(move || {
                let mut sampler = RefusalSampler::new();
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = std::time::Instant::now();
                    for (mac, reason) in self.drain() {
                        if !sampler.sample(now, mac, reason) {
                            continue;
                        }
                        tracing::info!(
                            target: "stampede::boot",
                            mac = %stampede_proto::MacAddr(mac),
                            reason,
                            "dhcp refused by the XDP program"
                        );
                        events.record(BootEvent {
                            at_unix_ms: std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64),
                            mac: Some(mac),
                            // The frame's source is not sampled; a refused client has no
                            // address yet anyway.
                            client: std::net::SocketAddr::from((
                                std::net::Ipv4Addr::UNSPECIFIED,
                                stampede_proto::dhcp::CLIENT_PORT,
                            )),
                            kind: BootEventKind::Refused {
                                by: RefusedBy::Xdp,
                                reason: reason.into(),
                            },
                        });
                    }
                    std::thread::sleep(every);
                }
            })?;
        Ok(RefusalReporter {
            stop,
            thread: Some(thread),
        })
    }
}

/// The thread of [`RefusalRing::report`]; dropping it stops the thread.
#[derive(Debug)]
pub struct RefusalReporter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RefusalReporter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Errors loading, attaching or reading the classifier.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the eBPF object failed (is this root, with BPF enabled in the kernel?)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program or map named {0:?}")]
    Missing(&'static str),
    #[error("the kernel rejected the XDP program {name:?}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {name:?}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("invalid XDP policy: {0}")]
    InvalidPolicy(&'static str),
    #[error("cannot start the thread that reads the XDP program's refusals: {0}")]
    RefusalThread(#[source] std::io::Error),
    #[error("{count} MACs for map {name:?}, which holds at most {max}")]
    TooManyMacs {
        name: &'static str,
        count: usize,
        max: u32,
    },
    #[error("attaching to interface {iface:?} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching to {iface:?} failed in native mode ({native}) and in generic mode")]
    AttachAuto {
        iface: String,
        native: String,
        #[source]
        generic: Box<ProgramError>,
    },
}

/// How to attach: the operator's choice (`xdp.mode` in config, `--xdp-mode` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) mode when the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode only: fail if the NIC driver has no XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, after the kernel allocated an skb.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected auto, native or generic"
            )),
        }
    }
}

/// Packet and byte counts per traffic class, summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassCounters {
    pub by_class: [ClassCounter; class::COUNT as usize],
}

impl ClassCounters {
    /// Counts for one class (an index from [`class`]); zero for an unknown index.
    pub fn get(&self, class: u32) -> ClassCounter {
        self.by_class
            .get(class as usize)
            .copied()
            .unwrap_or_default()
    }

    pub fn packets(&self, class: u32) -> u64 {
        self.get(class).packets
    }

    /// Counts accumulated since `earlier` (saturating, in case the program was reloaded).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = *self;
        for (now, then) in out.by_class.iter_mut().zip(earlier.by_class.iter()) {
            now.packets = now.packets.saturating_sub(then.packets);
            now.bytes = now.bytes.saturating_sub(then.bytes);
        }
        out
    }
}

impl fmt::Display for ClassCounters {
    /// `dhcp_server=3/1032B proxy_dhcp=0/0B ...`: one token per class, stable for log scraping.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, counter)) in class::NAMES.iter().zip(self.by_class.iter()).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={}/{}B", counter.packets, counter.bytes)?;
        }
        Ok(())
    }
}

/// Packet and byte counts of dropped frames per [`drop_reason`], summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    pub by_reason: [ClassCounter; drop_reason::COUNT as usize],
}

impl DropCounters {
    /// Counts for one reason (an index from [`drop_reason`]); zero for an unknown index.
    pub fn get(&self, reason: u32) -> ClassCounter {
        self.by_reason
            .get(reason as usize)
            .copied()
            .unwrap_or_default()
    }

    pub fn packets(&self, reason: u32) -> u64 {
        self.get(reason).packets
    }

    /// Dropped frames, all reasons together.
    pub fn total_packets(&self) -> u64 {
        self.by_reason.iter().map(|c| c.packets).sum()
    }

    /// Counts accumulated since `earlier` (saturating, in case the program was reloaded).
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = *self;
        for (now, then) in out.by_reason.iter_mut().zip(earlier.by_reason.iter()) {
            now.packets = now.packets.saturating_sub(then.packets);
            now.bytes = now.bytes.saturating_sub(then.bytes);
        }
        out
    }
}

impl fmt::Display for DropCounters {
    /// `malformed_boot=0/0B dhcp_rate_limited=4/1368B ...`: one token per reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, counter)) in drop_reason::NAMES
            .iter()
            .zip(self.by_reason.iter())
            .enumerate()
        {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={}/{}B", counter.packets, counter.bytes)?;
        }
        Ok(())
    }
}

/// How many entries [`XdpClassifier::sync_mac_lists`] added to and removed from each list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacListChanges {
    pub denied: usize,
    pub undenied: usize,
    pub allowed: usize,
    pub unallowed: usize,
}

impl MacListChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the classifier is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    /// The mode actually in use (never `Auto`).
    pub mode: AttachMode,
    /// Why `Auto` fell back to generic mode, when it did.
    pub fallback_reason: Option<String>,
}

/// The loaded XDP classifier. Dropping it detaches and unloads the program.
#[derive(Debug)]
pub struct XdpClassifier {
    ebpf: Ebpf,
    link: Option<(XdpLinkId, Attachment)>,
    /// What was last written to the `CONFIG` map.
    config: XdpConfig,
    /// The AF_XDP path's transfer port map, once taken out of `ebpf` ([`Self::afxdp_ports`]).
    afxdp_ports: Option<AfXdpPorts>,
}

/// The AF_XDP path's live TFTP transfer ports ([`AFXDP_PORTS_MAP`]): frames to a marked port
/// are steered to the path (while steering is on), frames to any other port beyond the
/// services' stay with the kernel. Cloned handles share one map; the worker marks a port when a
/// transfer takes it and clears it when the transfer ends (a system call each, per transfer,
/// never per packet).
#[derive(Clone)]
pub struct AfXdpPorts {
    map: std::sync::Arc<std::sync::Mutex<Array<MapData, u8>>>,
}

impl fmt::Debug for AfXdpPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AfXdpPorts(..)")
    }
}

impl AfXdpPorts {
    fn set(&self, port: u16, live: u8) -> Result<(), XdpError> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set(u32::from(port), live, 0)
            .map_err(map_error(AFXDP_PORTS_MAP))
    }

    /// Steers frames to UDP `port` to the AF_XDP path from the next frame on.
    pub fn open(&self, port: u16) -> Result<(), XdpError> {
        self.set(port, 1)
    }

    /// Leaves frames to UDP `port` to the kernel from the next frame on.
    pub fn close(&self, port: u16) -> Result<(), XdpError> {
        self.set(port, 0)
    }

    /// Whether frames to `port` are steered (read back from the kernel's map).
    pub fn is_open(&self, port: u16) -> Result<bool, XdpError> {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&u32::from(port), 0)
            .map(|live| live != 0)
            .map_err(map_error(AFXDP_PORTS_MAP))
    }
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> XdpError {
    move |source| XdpError::Map {
        name,
        source: Box::new(source),
    }
}

fn validate(policy: &XdpPolicy) -> Result<(), XdpError> {
    if policy.dhcp_burst == 0 {
        return Err(XdpError::InvalidPolicy(
            "a DHCP burst of 0 would drop every DHCP message",
        ));
    }
    if policy.tftp_burst == 0 {
        return Err(XdpError::InvalidPolicy(
            "a TFTP burst of 0 would drop every TFTP read request",
        ));
    }
    Ok(())
}

impl XdpClassifier {
    /// Loads the classifier into the kernel (verifier included) and writes its configuration.
    pub fn load(config: XdpConfig) -> Result<Self, XdpError> {
        validate(&config.policy)?;
        let ebpf = Ebpf::load(ebpf_object()).map_err(|e| XdpError::Load(Box::new(e)))?;
        let mut this = Self {
            ebpf,
            link: None,
            config,
            afxdp_ports: None,
        };
        this.write_config(config)?;
        let program = this.program_mut()?;
        program.load().map_err(|source| XdpError::Program {
            name: CLASSIFIER_PROGRAM,
            source: Box::new(source),
        })?;
        Ok(this)
    }

    fn write_config(&mut self, config: XdpConfig) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(XdpError::Missing(CONFIG_MAP))?;
        let mut cfg: Array<_, XdpConfig> = Array::try_from(map).map_err(map_error(CONFIG_MAP))?;
        cfg.set(0, config, 0).map_err(map_error(CONFIG_MAP))?;
        self.config = config;
        Ok(())
    }

    /// Takes the ring of sampled refusals out of the classifier (once; `None` after that).
    pub fn take_refusals(&mut self) -> Result<Option<RefusalRing>, XdpError> {
        let Some(map) = self.ebpf.take_map(REFUSALS_MAP) else {
            return Ok(None);
        };
        let ring = RingBuf::try_from(map).map_err(map_error(REFUSALS_MAP))?;
        Ok(Some(RefusalRing { ring }))
    }

    /// Files the program's sampled refusals as boot events from a thread of their own, reading
    /// the ring every [`REFUSAL_READ_INTERVAL`] (see [`RefusalRing::report`]); `None` if the
    /// ring was taken already.
    pub fn report_refusals(
        &mut self,
        events: stampede_proto::events::Events,
    ) -> Result<Option<RefusalReporter>, XdpError> {
        let Some(ring) = self.take_refusals()? else {
            return Ok(None);
        };
        ring.report(events, REFUSAL_READ_INTERVAL)
            .map(Some)
            .map_err(XdpError::RefusalThread)
    }

    /// The configuration in force (HTTP port and drop policy).
    pub fn config(&self) -> XdpConfig {
        self.config
    }

    /// Replaces the drop policy (rate limits, known-only mode) while the program runs: the next
    /// frame sees it. Buckets keep their tokens, capped at a lowered burst.
    pub fn set_policy(&mut self, policy: XdpPolicy) -> Result<(), XdpError> {
        validate(&policy)?;
        self.write_config(self.config.with_policy(policy))
    }

    fn mac_set(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, MacKey, u8>, XdpError> {
        let map = self.ebpf.map_mut(name).ok_or(XdpError::Missing(name))?;
        HashMap::try_from(map).map_err(map_error(name))
    }

    /// Puts `mac` on the deny list: its DHCP and ProxyDHCP messages are dropped from the next
    /// frame on (the deny list wins over the allow list).
    pub fn deny_mac(&mut self, mac: [u8; 6]) -> Result<(), XdpError> {
        self.mac_set(DENY_MACS_MAP)?
            .insert(MacKey::new(mac), 1, 0)
            .map_err(map_error(DENY_MACS_MAP))
    }

    /// Puts `mac` on the allow list, which matters in known-only mode.
    pub fn allow_mac(&mut self, mac: [u8; 6]) -> Result<(), XdpError> {
        self.mac_set(ALLOW_MACS_MAP)?
            .insert(MacKey::new(mac), 1, 0)
            .map_err(map_error(ALLOW_MACS_MAP))
    }

    /// Takes `mac` off both lists. Removing a MAC that is on neither is not an error.
    pub fn remove_mac(&mut self, mac: [u8; 6]) -> Result<(), XdpError> {
        self.remove_from(DENY_MACS_MAP, mac)?;
        self.remove_from(ALLOW_MACS_MAP, mac)
    }

    /// Makes the deny and allow lists hold exactly `deny` and `allow`, changing only the entries
    /// that differ, while the program runs. What is in the kernel's maps is read back first, so
    /// this is right whatever was done to them before (a previous sync, a failed one, `deny_mac`).
    ///
    /// New entries go in before stale ones come out, denials first: a MAC moving between lists
    /// is never briefly on neither.
    pub fn sync_mac_lists(
        &mut self,
        deny: &BTreeSet<[u8; 6]>,
        allow: &BTreeSet<[u8; 6]>,
    ) -> Result<MacListChanges, XdpError> {
        for (name, want, max) in [
            (DENY_MACS_MAP, deny, DENY_MACS_CAPACITY),
            (ALLOW_MACS_MAP, allow, ALLOW_MACS_CAPACITY),
        ] {
            if want.len() > max as usize {
                return Err(XdpError::TooManyMacs {
                    name,
                    count: want.len(),
                    max,
                });
            }
        }
        let have_deny = self.mac_list(DENY_MACS_MAP)?;
        let have_allow = self.mac_list(ALLOW_MACS_MAP)?;
        let mut changes = MacListChanges::default();
        for mac in deny.difference(&have_deny) {
            self.deny_mac(*mac)?;
            changes.denied += 1;
        }
        for mac in allow.difference(&have_allow) {
            self.allow_mac(*mac)?;
            changes.allowed += 1;
        }
        for mac in have_allow.difference(allow) {
            self.remove_from(ALLOW_MACS_MAP, *mac)?;
            changes.unallowed += 1;
        }
        for mac in have_deny.difference(deny) {
            self.remove_from(DENY_MACS_MAP, *mac)?;
            changes.undenied += 1;
        }
        Ok(changes)
    }

    /// The MACs on one list, as the kernel holds it.
    fn mac_list(&mut self, name: &'static str) -> Result<BTreeSet<[u8; 6]>, XdpError> {
        self.mac_set(name)?
            .keys()
            .map(|key| key.map(|k| k.octets).map_err(map_error(name)))
            .collect()
    }

    /// The MACs on the deny list, as the kernel holds it.
    pub fn denied_macs(&mut self) -> Result<BTreeSet<[u8; 6]>, XdpError> {
        self.mac_list(DENY_MACS_MAP)
    }

    /// The MACs on the allow list, as the kernel holds it.
    pub fn allowed_macs(&mut self) -> Result<BTreeSet<[u8; 6]>, XdpError> {
        self.mac_list(ALLOW_MACS_MAP)
    }

    fn remove_from(&mut self, name: &'static str, mac: [u8; 6]) -> Result<(), XdpError> {
        match self.mac_set(name)?.remove(&MacKey::new(mac)) {
            Ok(()) => Ok(()),
            // aya reports a missing key as the syscall's ENOENT.
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            Err(err) => Err(map_error(name)(err)),
        }
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        let program = self
            .ebpf
            .program_mut(CLASSIFIER_PROGRAM)
            .ok_or(XdpError::Missing(CLASSIFIER_PROGRAM))?;
        program.try_into().map_err(|source| XdpError::Program {
            name: CLASSIFIER_PROGRAM,
            source: Box::new(source),
        })
    }

    fn program(&self) -> Result<&Xdp, XdpError> {
        let program = self
            .ebpf
            .program(CLASSIFIER_PROGRAM)
            .ok_or(XdpError::Missing(CLASSIFIER_PROGRAM))?;
        program.try_into().map_err(|source| XdpError::Program {
            name: CLASSIFIER_PROGRAM,
            source: Box::new(source),
        })
    }

    /// Attaches to `iface`. In `Auto` mode a driver without native XDP support makes it fall back
    /// to generic mode; the reason is kept in the returned [`Attachment`] for the log.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attachment, XdpError> {
        self.detach()?;
        let program = self.program_mut()?;
        let (id, attachment) = match mode {
            AttachMode::Native | AttachMode::Generic => {
                let kernel_mode = if mode == AttachMode::Native {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                let id = program
                    .attach(iface, kernel_mode)
                    .map_err(|source| XdpError::Attach {
                        iface: iface.to_owned(),
                        mode,
                        source: Box::new(source),
                    })?;
                (
                    id,
                    Attachment {
                        iface: iface.to_owned(),
                        mode,
                        fallback_reason: None,
                    },
                )
            }
            AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
                Ok(id) => (
                    id,
                    Attachment {
                        iface: iface.to_owned(),
                        mode: AttachMode::Native,
                        fallback_reason: None,
                    },
                ),
                Err(native) => {
                    let native = error_chain(&native);
                    let id = program.attach(iface, XdpMode::Skb).map_err(|generic| {
                        XdpError::AttachAuto {
                            iface: iface.to_owned(),
                            native: native.clone(),
                            generic: Box::new(generic),
                        }
                    })?;
                    (
                        id,
                        Attachment {
                            iface: iface.to_owned(),
                            mode: AttachMode::Generic,
                            fallback_reason: Some(native),
                        },
                    )
                }
            },
        };
        self.link = Some((id, attachment.clone()));
        Ok(attachment)
    }

    /// Detaches from the interface, if attached. Idempotent.
    pub fn detach(&mut self) -> Result<(), XdpError> {
        if let Some((id, _)) = self.link.take() {
            self.program_mut()?
                .detach(id)
                .map_err(|source| XdpError::Program {
                    name: CLASSIFIER_PROGRAM,
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    pub fn attachment(&self) -> Option<&Attachment> {
        self.link.as_ref().map(|(_, a)| a)
    }

    /// Current counters per class (every frame, passed or dropped), summed over every possible
    /// CPU.
    pub fn counters(&self) -> Result<ClassCounters, XdpError> {
        let mut out = ClassCounters::default();
        self.sum_counters(CLASS_COUNTERS_MAP, &mut out.by_class)?;
        Ok(out)
    }

    /// Current counters of dropped frames per reason, summed over every possible CPU.
    pub fn drops(&self) -> Result<DropCounters, XdpError> {
        let mut out = DropCounters::default();
        self.sum_counters(DROP_COUNTERS_MAP, &mut out.by_reason)?;
        Ok(out)
    }

    fn sum_counters(&self, name: &'static str, out: &mut [ClassCounter]) -> Result<(), XdpError> {
        let map = self.ebpf.map(name).ok_or(XdpError::Missing(name))?;
        let array: PerCpuArray<_, ClassCounter> =
            PerCpuArray::try_from(map).map_err(map_error(name))?;
        for (index, slot) in out.iter_mut().enumerate() {
            let per_cpu = array.get(&(index as u32), 0).map_err(map_error(name))?;
            for value in per_cpu.iter() {
                slot.packets += value.packets;
                slot.bytes += value.bytes;
            }
        }
        Ok(())
    }

    /// The AF_XDP path's transfer port map (a shared handle; taken out of the object on the
    /// first call).
    pub fn afxdp_ports(&mut self) -> Result<AfXdpPorts, XdpError> {
        if let Some(ports) = &self.afxdp_ports {
            return Ok(ports.clone());
        }
        let map = self
            .ebpf
            .take_map(AFXDP_PORTS_MAP)
            .ok_or(XdpError::Missing(AFXDP_PORTS_MAP))?;
        let array = Array::try_from(map).map_err(map_error(AFXDP_PORTS_MAP))?;
        let ports = AfXdpPorts {
            map: std::sync::Arc::new(std::sync::Mutex::new(array)),
        };
        self.afxdp_ports = Some(ports.clone());
        Ok(ports)
    }

    /// Turns steering to AF_XDP sockets on or off and sets the server address whose ARP
    /// requests the path answers; the next frame sees it.
    pub fn set_afxdp_steering(&mut self, steering: AfXdpSteering) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(AFXDP_MAP)
            .ok_or(XdpError::Missing(AFXDP_MAP))?;
        let mut array: Array<_, AfXdpSteering> =
            Array::try_from(map).map_err(map_error(AFXDP_MAP))?;
        array.set(0, steering, 0).map_err(map_error(AFXDP_MAP))
    }

    /// Puts the AF_XDP socket `socket`, bound to RX queue `queue`, into the XSKMAP: admitted
    /// boot frames of that queue go to it from the next frame on (while steering is on).
    pub fn register_xsk(
        &mut self,
        queue: u32,
        socket: impl std::os::fd::AsRawFd,
    ) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(XSKS_MAP)
            .ok_or(XdpError::Missing(XSKS_MAP))?;
        let mut xsks = XskMap::try_from(map).map_err(map_error(XSKS_MAP))?;
        xsks.set(queue, socket, 0).map_err(map_error(XSKS_MAP))
    }

    /// Takes the socket of RX queue `queue` out of the XSKMAP: its frames pass to the kernel.
    pub fn unregister_xsk(&mut self, queue: u32) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(XSKS_MAP)
            .ok_or(XdpError::Missing(XSKS_MAP))?;
        let mut xsks = XskMap::try_from(map).map_err(map_error(XSKS_MAP))?;
        xsks.unset(queue).map_err(map_error(XSKS_MAP))
    }

    /// Steering outcomes per [`steer`] index (redirected, no socket), summed over all CPUs.
    pub fn steer_counters(&self) -> Result<[ClassCounter; steer::COUNT as usize], XdpError> {
        let mut out = [ClassCounter::default(); steer::COUNT as usize];
        self.sum_counters(STEER_COUNTERS_MAP, &mut out)?;
        Ok(out)
    }

    /// Runs the program once over `frame` with `BPF_PROG_TEST_RUN`; returns the XDP action.
    /// Counters move exactly as for a received frame.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        let result = self.test_run_repeat(frame, 1)?;
        Ok(result.0)
    }

    /// Runs the program `repeat` times over `frame`; returns the action and the kernel's mean
    /// time per run in nanoseconds (for benchmarks).
    pub fn test_run_repeat(&self, frame: &[u8], repeat: u32) -> Result<(u32, u64), XdpError> {
        let program = self.program()?;
        // XDP test runs need an output buffer at least as large as the frame.
        let mut out = vec![0u8; frame.len().max(64) + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let result = program.test_run(opts).map_err(|source| XdpError::Program {
            name: CLASSIFIER_PROGRAM,
            source: Box::new(source),
        })?;
        Ok((result.return_value, result.duration.as_nanos() as u64))
    }
}

impl Drop for XdpClassifier {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(error = %error_chain(&err), "detaching the XDP classifier failed");
        }
    }
}

/// An error and its sources on one line, for logs.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // An error whose message already ends with its source's (`"binding ..: {source}"`)
        // would say it twice.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// XDP action codes (from the kernel's `enum xdp_action`), as returned by [`XdpClassifier::test_run`].
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Shows its source in its message and also returns it from `source()`.
        #[error("binding tftp (0.0.0.0:69): {source}")]
        Shown {
            #[source]
            source: std::io::Error,
        },
        #[error("starting the engine")]
        Hidden(#[source] std::io::Error),
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let busy = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        assert_eq!(
            error_chain(&Outer::Shown { source: busy() }),
            "binding tftp (0.0.0.0:69): address in use"
        );
        assert_eq!(
            error_chain(&Outer::Hidden(busy())),
            "starting the engine: address in use"
        );
    }
}
