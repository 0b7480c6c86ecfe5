//! The XDP classifier: load, attach (native mode, falling back to generic), read counters, detach.
//!
//! The eBPF object is built by this crate's `build.rs` from `ebpf/xdp` and embedded here, so the
//! binary carries its own programs.
use std::fmt;

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use stampede_ebpf_common::{
    CLASS_COUNTERS_MAP, CLASSIFIER_PROGRAM, CONFIG_MAP, ClassCounter, XdpConfig, class,
};

/// The eBPF object file built from `ebpf/xdp`.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stampede-xdp"))
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
        source: Box<aya::maps::MapError>,
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
}

impl XdpClassifier {
    /// Loads the classifier into the kernel (verifier included) and writes its configuration.
    pub fn load(config: XdpConfig) -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(ebpf_object()).map_err(|e| XdpError::Load(Box::new(e)))?;
        let map = ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(XdpError::Missing(CONFIG_MAP))?;
        let mut cfg: Array<_, XdpConfig> =
            Array::try_from(map).map_err(|source| XdpError::Map {
                name: CONFIG_MAP,
                source: Box::new(source),
            })?;
        cfg.set(0, config, 0).map_err(|source| XdpError::Map {
            name: CONFIG_MAP,
            source: Box::new(source),
        })?;
        let mut this = Self { ebpf, link: None };
        let program = this.program_mut()?;
        program.load().map_err(|source| XdpError::Program {
            name: CLASSIFIER_PROGRAM,
            source: Box::new(source),
        })?;
        Ok(this)
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

    /// Current counters, summed over every possible CPU.
    pub fn counters(&self) -> Result<ClassCounters, XdpError> {
        let name = CLASS_COUNTERS_MAP;
        let map = self.ebpf.map(name).ok_or(XdpError::Missing(name))?;
        let array: PerCpuArray<_, ClassCounter> =
            PerCpuArray::try_from(map).map_err(|source| XdpError::Map {
                name,
                source: Box::new(source),
            })?;
        let mut out = ClassCounters::default();
        for (index, slot) in out.by_class.iter_mut().enumerate() {
            let per_cpu = array
                .get(&(index as u32), 0)
                .map_err(|source| XdpError::Map {
                    name,
                    source: Box::new(source),
                })?;
            for value in per_cpu.iter() {
                slot.packets += value.packets;
                slot.bytes += value.bytes;
            }
        }
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
        out.push_str(": ");
        out.push_str(&cause.to_string());
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
