//! DHCPv4 and PXE (RFC 2131, RFC 2132, RFC 4578, PXE 2.1): wire format, server and client cores.
pub mod options;
pub mod wire;

pub use options::{ClientArch, ClientUuid, DhcpOptions, MessageType, OptionCode, PxeVendorOptions};
pub use wire::{Error, OpCode, Packet, Repr};
