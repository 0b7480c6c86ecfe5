//! DHCPv4 and PXE (RFC 2131, RFC 2132, RFC 4578, PXE 2.1): wire format, server and client cores.
pub mod boot;
pub mod client;
pub mod lease;
pub mod options;
pub mod server;
pub mod wire;

pub use boot::{
    BootClient, BootConfig, BootDecision, BootProfile, Firmware, Loaders, NoBoot, decide,
};
pub use client::{Backoff, ClientConfig, ClientLease, ClientState, DhcpClient};
pub use lease::{
    ClientKey, CommitSeq, Lease, LeaseChange, LeaseState, LeaseStore, LeaseStoreError,
    MemoryLeaseStore,
};
pub use options::{ClientArch, ClientUuid, DhcpOptions, MessageType, OptionCode, PxeVendorOptions};
pub use server::{
    CLIENT_PORT, ConfigError, DhcpServer, DropReason, Handled, PXE_PORT, Pool, RequestState,
    SERVER_PORT, ServerConfig, ServerMode, ServerStats, Transmit,
};
pub use wire::{Error, OpCode, Packet, Repr};
