//! What a storm records: the stages of a boot, each machine's run, the live progress counters, and
//! the references files are checked against.
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use serde::Serialize;

/// Length and digest of a file a machine must receive byte for byte, and with `--verify
/// compare` its content (HTTP downloads are then compared with it instead of hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub len: u64,
    pub sha256: [u8; 32],
    pub content: Option<Bytes>,
}

/// The stages of one boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// DISCOVER to ACK, as the PXE ROM.
    Dhcp,
    /// The network boot program over TFTP.
    Tftp,
    /// DISCOVER to ACK again, as iPXE.
    IpxeDhcp,
    /// The iPXE script over HTTP.
    Script,
    /// Every file the script names (kernel, initrds), over HTTP.
    Files,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Dhcp,
        Stage::Tftp,
        Stage::IpxeDhcp,
        Stage::Script,
        Stage::Files,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp",
            Stage::Tftp => "tftp",
            Stage::IpxeDhcp => "ipxe_dhcp",
            Stage::Script => "script",
            Stage::Files => "files",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// One stage as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub stage: Stage,
    /// Since the storm started.
    pub started_ms: f64,
    pub duration_ms: f64,
    pub bytes: u64,
    /// Messages sent again (DHCP retransmissions, TFTP RRQ/ACK retransmissions).
    pub retransmits: u64,
}

/// Where and why a machine did not boot.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub stage: Stage,
    pub reason: String,
}

/// One simulated machine's run.
#[derive(Debug, Clone, Serialize)]
pub struct MachineRecord {
    pub index: usize,
    pub mac: String,
    pub arch: &'static str,
    /// Power-on, since the storm started.
    pub started_ms: f64,
    pub stages: Vec<StageRecord>,
    /// Power-on to the last byte of the last file, if it booted.
    pub boot_ms: Option<f64>,
    pub failure: Option<Failure>,
}

/// Machines currently in each stage, and finished ones: what the progress line shows.
#[derive(Debug, Default)]
pub struct Progress {
    pub in_stage: [AtomicU64; 5],
    pub booted: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
    /// TFTP datagrams held back and delivered out of order (`--reorder`).
    pub reordered: AtomicU64,
    /// HTTP requests sent again on a new connection because their kept-alive one closed before
    /// the response began (the server timed it out as idle), as iPXE and curl do.
    pub http_retries: AtomicU64,
}
