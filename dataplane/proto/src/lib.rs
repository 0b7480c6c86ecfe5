//! Sans-IO protocol cores for network boot.
//!
//! No sockets, no clock, no globals: every core takes `now` and input bytes through
//! `handle_*(now, ..)`, writes its output into a buffer the caller lends through
//! `poll_*(now, buf)`, and says when it next needs to run through `poll_timeout()`. The same cores
//! serve real machines in the appliance and drive simulated machines in the benchmark harness.
#![forbid(unsafe_code)]

pub mod bencode;
pub mod bootpath;
pub mod dhcp;
pub mod events;
pub mod files;
pub mod frame;
pub mod http;
pub mod ipxe;
pub mod mac;
pub mod ndp;
pub mod peerwire;
pub mod text;
pub mod tftp;
pub mod tracker;

pub use mac::{MacAddr, MacParseError};
