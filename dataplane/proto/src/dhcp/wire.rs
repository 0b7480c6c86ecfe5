//! The BOOTP/DHCP message (RFC 2131 §2, RFC 951): a zero-copy [`Packet`] view over the bytes and an
//! owned [`Repr`] that the server and client work with.
//!
//! Guarantees: [`Packet::new_checked`] accepts a buffer only if it holds the fixed header and the
//! magic cookie; after that no accessor panics. [`Repr::parse`] never panics on any input: an
//! option it does not understand, or one whose length is wrong for its type, is kept raw rather than
//! failing the message.
use std::net::Ipv4Addr;
use std::ops::Range;

pub use super::error::{Error, Result};
use super::options::{DhcpOptions, OptionCode, OptionReader};

/// Field offsets of the fixed BOOTP header (RFC 2131 §2, figure 1).
pub mod field {
    use std::ops::Range;

    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    pub const COOKIE: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

/// RFC 2131 §3: the first four octets of the options field.
pub const MAGIC_COOKIE: u32 = 0x6382_5363;
/// Fixed header plus cookie.
pub const HEADER_LEN: usize = field::OPTIONS;
/// RFC 1542 §2.1: BOOTP relays and old clients expect messages of at least 300 bytes, so replies
/// are padded to this length.
pub const MIN_MESSAGE_LEN: usize = 300;
/// The broadcast bit of `flags` (RFC 2131 §2, figure 2).
pub const FLAG_BROADCAST: u16 = 0x8000;
/// `htype` for Ethernet (RFC 1700 ARP hardware types).
pub const HTYPE_ETHERNET: u8 = 1;

/// BOOTP `op` (RFC 951).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    BootRequest,
    BootReply,
    Unknown(u8),
}

impl From<u8> for OpCode {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::BootRequest,
            2 => Self::BootReply,
            other => Self::Unknown(other),
        }
    }
}

impl From<OpCode> for u8 {
    fn from(v: OpCode) -> Self {
        match v {
            OpCode::BootRequest => 1,
            OpCode::BootReply => 2,
            OpCode::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of a DHCP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn ip_at(bytes: &[u8], range: Range<usize>) -> Ipv4Addr {
    let b = &bytes[range];
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; use [`Packet::new_checked`] on untrusted input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and checks that every fixed-offset accessor is in bounds.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the length and the magic cookie: a BOOTP message without the cookie carries no DHCP
    /// options and this server does not speak plain BOOTP.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated {
                len,
                min: HEADER_LEN,
            });
        }
        let cookie = self.cookie();
        if cookie != MAGIC_COOKIE {
            return Err(Error::BadCookie(cookie));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn op(&self) -> OpCode {
        OpCode::from(self.b()[field::OP])
    }
    pub fn htype(&self) -> u8 {
        self.b()[field::HTYPE]
    }
    pub fn hlen(&self) -> u8 {
        self.b()[field::HLEN]
    }
    pub fn hops(&self) -> u8 {
        self.b()[field::HOPS]
    }
    pub fn xid(&self) -> u32 {
        let b = &self.b()[field::XID];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn secs(&self) -> u16 {
        let b = &self.b()[field::SECS];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn flags(&self) -> u16 {
        let b = &self.b()[field::FLAGS];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn ciaddr(&self) -> Ipv4Addr {
        ip_at(self.b(), field::CIADDR)
    }
    pub fn yiaddr(&self) -> Ipv4Addr {
        ip_at(self.b(), field::YIADDR)
    }
    pub fn siaddr(&self) -> Ipv4Addr {
        ip_at(self.b(), field::SIADDR)
    }
    pub fn giaddr(&self) -> Ipv4Addr {
        ip_at(self.b(), field::GIADDR)
    }
    /// The whole 16-byte `chaddr` field; only the first `hlen` bytes are the hardware address.
    pub fn chaddr(&self) -> &[u8] {
        &self.b()[field::CHADDR]
    }
    pub fn sname(&self) -> &[u8] {
        &self.b()[field::SNAME]
    }
    pub fn file(&self) -> &[u8] {
        &self.b()[field::FILE]
    }
    pub fn cookie(&self) -> u32 {
        let b = &self.b()[field::COOKIE];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    /// The variable options area after the cookie.
    pub fn options(&self) -> &[u8] {
        &self.b()[field::OPTIONS..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_op(&mut self, v: OpCode) {
        self.bm()[field::OP] = v.into();
    }
    pub fn set_htype(&mut self, v: u8) {
        self.bm()[field::HTYPE] = v;
    }
    pub fn set_hlen(&mut self, v: u8) {
        self.bm()[field::HLEN] = v;
    }
    pub fn set_hops(&mut self, v: u8) {
        self.bm()[field::HOPS] = v;
    }
    pub fn set_xid(&mut self, v: u32) {
        self.bm()[field::XID].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_secs(&mut self, v: u16) {
        self.bm()[field::SECS].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_flags(&mut self, v: u16) {
        self.bm()[field::FLAGS].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_ciaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::CIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_yiaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::YIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_siaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::SIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_giaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::GIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_chaddr(&mut self, v: &[u8; 16]) {
        self.bm()[field::CHADDR].copy_from_slice(v);
    }
    /// Writes a NUL-padded string field (a name filling the whole field has no NUL, as RFC 2131
    /// allows); longer input is cut.
    fn set_cstr(&mut self, range: Range<usize>, v: &[u8]) {
        let dst = &mut self.bm()[range];
        dst.fill(0);
        let n = v.len().min(dst.len());
        dst[..n].copy_from_slice(&v[..n]);
    }
    pub fn set_sname(&mut self, v: &[u8]) {
        self.set_cstr(field::SNAME, v);
    }
    pub fn set_file(&mut self, v: &[u8]) {
        self.set_cstr(field::FILE, v);
    }
    pub fn set_cookie(&mut self) {
        self.bm()[field::COOKIE].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    }
    pub fn options_mut(&mut self) -> &mut [u8] {
        &mut self.bm()[field::OPTIONS..]
    }
}

/// Where option 52 (RFC 2132 §9.3) says more options live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overload {
    file: bool,
    sname: bool,
}

/// Up to the first NUL: `sname` and `file` are C strings.
fn cstr(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// A parsed DHCP message.
///
/// When the sender overloaded `sname`/`file` with options (option 52), those options are merged
/// into [`Repr::options`] and the fields read as empty; [`Repr::emit`] never overloads, it lets
/// the options area grow instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub op: OpCode,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// Server host name, without the NUL padding.
    pub sname: Vec<u8>,
    /// Boot file name, without the NUL padding.
    pub file: Vec<u8>,
    pub options: DhcpOptions,
}

impl Repr {
    /// An empty message of the given direction, Ethernet hardware type.
    pub fn new(op: OpCode, xid: u32, mac: [u8; 6]) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        Self {
            op,
            htype: HTYPE_ETHERNET,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options: DhcpOptions::default(),
        }
    }

    /// Parses a checked packet, collecting options from the options area and, when option 52
    /// says so, from `file` then `sname` (RFC 3396 §6 gives that order for concatenation).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        let mut reader = OptionReader::default();
        reader.read(packet.options())?;
        let overload = match reader.take(OptionCode::Overload) {
            Some(v) if v.len() == 1 => Overload {
                file: v[0] & 1 != 0,
                sname: v[0] & 2 != 0,
            },
            _ => Overload {
                file: false,
                sname: false,
            },
        };
        if overload.file {
            reader.read(packet.file())?;
        }
        if overload.sname {
            reader.read(packet.sname())?;
        }
        // Option 52 is structural and only means something in the options area (RFC 2132
        // §9.3): one found inside `file` or `sname` is discarded, never kept as a raw option,
        // or emitting it into the options area would change what the message means.
        let _ = reader.take(OptionCode::Overload);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(packet.chaddr());
        Ok(Self {
            op: packet.op(),
            htype: packet.htype(),
            hlen: packet.hlen(),
            hops: packet.hops(),
            xid: packet.xid(),
            secs: packet.secs(),
            flags: packet.flags(),
            ciaddr: packet.ciaddr(),
            yiaddr: packet.yiaddr(),
            siaddr: packet.siaddr(),
            giaddr: packet.giaddr(),
            chaddr,
            sname: if overload.sname {
                Vec::new()
            } else {
                cstr(packet.sname()).to_vec()
            },
            file: if overload.file {
                Vec::new()
            } else {
                cstr(packet.file()).to_vec()
            },
            options: DhcpOptions::from_reader(reader),
        })
    }

    /// Parses raw bytes: [`Packet::new_checked`] then [`Repr::parse`].
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    /// Bytes [`Repr::emit`] writes: header, options, END, padded to [`MIN_MESSAGE_LEN`].
    pub fn buffer_len(&self) -> usize {
        (HEADER_LEN + self.options.buffer_len() + 1).max(MIN_MESSAGE_LEN)
    }

    /// Writes the message at the start of the packet's buffer and returns its length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<usize> {
        let need = self.buffer_len();
        let have = packet.buffer.as_ref().len();
        if have < need {
            return Err(Error::BufferTooSmall { have, need });
        }
        packet.buffer.as_mut()[..need].fill(0);
        packet.set_op(self.op);
        packet.set_htype(self.htype);
        packet.set_hlen(self.hlen);
        packet.set_hops(self.hops);
        packet.set_xid(self.xid);
        packet.set_secs(self.secs);
        packet.set_flags(self.flags);
        packet.set_ciaddr(self.ciaddr);
        packet.set_yiaddr(self.yiaddr);
        packet.set_siaddr(self.siaddr);
        packet.set_giaddr(self.giaddr);
        packet.set_chaddr(&self.chaddr);
        packet.set_sname(&self.sname);
        packet.set_file(&self.file);
        packet.set_cookie();
        let written = self.options.emit(packet.options_mut());
        packet.options_mut()[written] = OptionCode::End.into();
        Ok(need)
    }

    /// Emits into a plain byte buffer.
    pub fn emit_bytes(&self, buf: &mut [u8]) -> Result<usize> {
        self.emit(&mut Packet::new_unchecked(buf))
    }

    /// The client's Ethernet address, when `htype`/`hlen` say it is one.
    pub fn mac(&self) -> Option<[u8; 6]> {
        if self.htype != HTYPE_ETHERNET || self.hlen != 6 {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.chaddr[..6]);
        Some(mac)
    }

    pub fn broadcast(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::options::{ClientArch, MessageType};

    const UDHCPC_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/udhcpc_discover.bin");
    const UEFI_REQUEST: &[u8] = include_bytes!("../../fixtures/dhcp/udhcpc_uefi_request.bin");
    const IPXE_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/qemu_ipxe_discover.bin");
    const DHCLIENT_REQUEST: &[u8] = include_bytes!("../../fixtures/dhcp/dhclient_request.bin");
    const DNSMASQ_ACK: &[u8] = include_bytes!("../../fixtures/dhcp/qemu_ipxe_ack.bin");
    const OVMF_PXE_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/ovmf_pxe_discover.bin");
    const OVMF_PXE_REQUEST: &[u8] = include_bytes!("../../fixtures/dhcp/ovmf_pxe_request.bin");
    const OVMF_HTTP_DISCOVER: &[u8] = include_bytes!("../../fixtures/dhcp/ovmf_http_discover.bin");
    const OVMF_HTTP_REQUEST: &[u8] = include_bytes!("../../fixtures/dhcp/ovmf_http_request.bin");

    fn parse(bytes: &[u8]) -> Repr {
        Repr::parse_bytes(bytes).unwrap_or_else(|e| panic!("fixture does not parse: {e}"))
    }

    #[test]
    fn udhcpc_discover_fields() {
        let r = parse(UDHCPC_DISCOVER);
        assert_eq!(r.op, OpCode::BootRequest);
        assert_eq!(r.xid, 0xbf39_337b);
        assert_eq!(r.mac(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(r.options.message_type, Some(MessageType::Discover));
        assert_eq!(r.options.max_message_size, Some(576));
        assert_eq!(r.options.hostname.as_deref(), Some(&b"fxhost"[..]));
        assert_eq!(
            r.options.vendor_class.as_deref(),
            Some(&b"udhcp 1.35.0"[..])
        );
        assert_eq!(
            r.options.client_id.as_deref(),
            Some(&[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..])
        );
        assert_eq!(r.options.parameter_request, [1, 3, 6, 12, 15, 28, 42]);
        assert!(r.ciaddr.is_unspecified() && !r.broadcast());
    }

    #[test]
    fn uefi_like_request_fields() {
        let r = parse(UEFI_REQUEST);
        assert_eq!(r.options.message_type, Some(MessageType::Request));
        assert_eq!(r.options.requested_ip, Some(Ipv4Addr::new(198, 18, 0, 157)));
        assert_eq!(r.options.server_id, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(r.options.client_arch, [ClientArch::EfiX64]);
        assert_eq!(
            r.options.vendor_class.as_deref(),
            Some(&b"PXEClient:Arch:00007:UNDI:003016"[..])
        );
    }

    #[test]
    fn ipxe_rom_discover_fields() {
        let r = parse(IPXE_DISCOVER);
        assert_eq!(r.mac(), Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
        assert_eq!(r.options.client_arch, [ClientArch::X86Bios]);
        assert_eq!(r.options.client_ndi, Some([1, 2, 1]));
        assert_eq!(r.options.user_class.as_deref(), Some(&b"iPXE"[..]));
        assert_eq!(r.options.max_message_size, Some(1472));
        let ipxe = r.options.ipxe_encap.as_deref().expect("option 175");
        assert_eq!(ipxe.len(), 48);
        let uuid = r.options.client_uuid.expect("option 97");
        assert_eq!((uuid.kind, uuid.id), (0, [0; 16]));
        assert!(r.options.parameter_request.contains(&175));
        assert!(r.options.other.is_empty(), "{:?}", r.options.other);
    }

    #[test]
    fn dhclient_and_dnsmasq_fields() {
        let r = parse(DHCLIENT_REQUEST);
        assert_eq!(r.options.requested_ip, Some(Ipv4Addr::new(198, 18, 0, 157)));
        assert_eq!(r.options.hostname.as_deref(), Some(&b"vm"[..]));
        let ack = parse(DNSMASQ_ACK);
        assert_eq!(ack.op, OpCode::BootReply);
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, Ipv4Addr::new(198, 18, 0, 195));
        assert_eq!(ack.siaddr, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(ack.options.lease_time, Some(3600));
        assert_eq!(ack.options.renewal_time, Some(1800));
        assert_eq!(ack.options.rebinding_time, Some(3150));
        assert_eq!(
            ack.options.subnet_mask,
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(ack.options.routers, [Ipv4Addr::new(198, 18, 0, 1)]);
        assert_eq!(
            ack.options.bootfile.as_deref(),
            Some(&b"undionly.kpxe\0"[..])
        );
        // Option 28 (broadcast address) is not modelled: kept raw.
        assert_eq!(ack.options.other, [(28, vec![198, 18, 0, 255])]);
    }

    /// What OVMF's EDK2 DHCP client puts in every DISCOVER and REQUEST, PXE or HTTP Boot.
    fn assert_edk2_client(r: &Repr, mac: [u8; 6], xid: u32) {
        assert_eq!(r.op, OpCode::BootRequest);
        assert_eq!(r.xid, xid);
        assert_eq!(r.mac(), Some(mac));
        assert!(r.broadcast(), "EDK2 sets the broadcast flag");
        assert!(r.ciaddr.is_unspecified() && r.giaddr.is_unspecified());
        assert!(r.sname.is_empty() && r.file.is_empty());
        // UNDI 3.0 (RFC 4578 §2.2: type 1, major 3, minor 0).
        assert_eq!(r.options.client_ndi, Some([1, 3, 0]));
        // Type 0 + the SMBIOS UUID, all zero because QEMU ran without -uuid.
        let uuid = r.options.client_uuid.expect("option 97");
        assert_eq!((uuid.kind, uuid.id), (0, [0; 16]));
        assert_eq!(r.options.client_id, None);
        assert_eq!(r.options.hostname, None);
        assert_eq!(r.options.user_class, None);
        assert_eq!(r.options.ipxe_encap, None);
        assert!(r.options.other.is_empty(), "{:?}", r.options.other);
    }

    #[test]
    fn ovmf_pxe_discover_and_request_fields() {
        let mac = [0x52, 0x54, 0, 0xc3, 0, 0x08];
        let d = parse(OVMF_PXE_DISCOVER);
        assert_edk2_client(&d, mac, 0xe6e6_e9b8);
        assert_eq!(d.options.message_type, Some(MessageType::Discover));
        assert_eq!(d.options.client_arch, [ClientArch::EfiX64]);
        assert_eq!(
            d.options.vendor_class.as_deref(),
            Some(&b"PXEClient:Arch:00007:UNDI:003000"[..])
        );
        assert_eq!(d.options.max_message_size, Some(1472));
        assert_eq!(d.options.requested_ip, None);
        assert_eq!(d.options.server_id, None);
        // The PXE client also asks for 66/67 (TFTP server, boot file) and 128-135 (PXE).
        assert_eq!(
            d.options.parameter_request,
            [
                1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135
            ]
        );

        let r = parse(OVMF_PXE_REQUEST);
        assert_edk2_client(&r, mac, 0xe6e6_e9b8);
        assert_eq!(r.options.message_type, Some(MessageType::Request));
        assert_eq!(r.options.requested_ip, Some(Ipv4Addr::new(198, 18, 4, 117)));
        assert_eq!(r.options.server_id, Some(Ipv4Addr::new(198, 18, 4, 1)));
        assert_eq!(r.options.client_arch, d.options.client_arch);
        assert_eq!(r.options.vendor_class, d.options.vendor_class);
        assert_eq!(r.options.parameter_request, d.options.parameter_request);
        // The REQUEST announces a maximum message size of 65280, the DISCOVER 1472.
        assert_eq!(r.options.max_message_size, Some(0xff00));
    }

    #[test]
    fn ovmf_http_discover_and_request_fields() {
        let mac = [0x52, 0x54, 0, 0xc3, 0, 0x11];
        let d = parse(OVMF_HTTP_DISCOVER);
        assert_edk2_client(&d, mac, 0xe503_a29f);
        assert_eq!(d.options.message_type, Some(MessageType::Discover));
        assert_eq!(d.options.client_arch, [ClientArch::EfiX64Http]);
        assert_eq!(
            d.options.vendor_class.as_deref(),
            Some(&b"HTTPClient:Arch:00016:UNDI:003000"[..])
        );
        assert_eq!(d.options.max_message_size, Some(1472));
        // Boot file (67) but neither 66 nor the PXE options; 235 is EDK2's own.
        assert_eq!(
            d.options.parameter_request,
            [
                1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                59, 60, 235, 67, 97
            ]
        );

        let r = parse(OVMF_HTTP_REQUEST);
        assert_edk2_client(&r, mac, 0xe503_a29f);
        assert_eq!(r.options.message_type, Some(MessageType::Request));
        assert_eq!(
            r.options.requested_ip,
            Some(Ipv4Addr::new(198, 18, 13, 126))
        );
        assert_eq!(r.options.server_id, Some(Ipv4Addr::new(198, 18, 13, 1)));
        assert_eq!(r.options.client_arch, d.options.client_arch);
        assert_eq!(r.options.vendor_class, d.options.vendor_class);
        assert_eq!(r.options.parameter_request, d.options.parameter_request);
        assert_eq!(r.options.max_message_size, Some(1472));
    }

    #[test]
    fn fixtures_round_trip() {
        for bytes in [
            UDHCPC_DISCOVER,
            UEFI_REQUEST,
            IPXE_DISCOVER,
            DHCLIENT_REQUEST,
            DNSMASQ_ACK,
            OVMF_PXE_DISCOVER,
            OVMF_PXE_REQUEST,
            OVMF_HTTP_DISCOVER,
            OVMF_HTTP_REQUEST,
        ] {
            let first = parse(bytes);
            let mut buf = vec![0u8; first.buffer_len()];
            let n = first.emit_bytes(&mut buf).expect("emit");
            assert_eq!(parse(&buf[..n]), first);
        }
    }

    #[test]
    fn short_and_cookieless_input_is_refused() {
        assert_eq!(
            Repr::parse_bytes(&[1u8; 100]),
            Err(Error::Truncated { len: 100, min: 240 })
        );
        let mut bytes = UDHCPC_DISCOVER.to_vec();
        bytes[236] = 0;
        assert!(matches!(
            Repr::parse_bytes(&bytes),
            Err(Error::BadCookie(_))
        ));
    }

    #[test]
    fn missing_end_and_padding_are_tolerated() {
        let mut bytes = vec![0u8; 240];
        bytes[0] = 1;
        bytes[236..240].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 53, 1, 3, 0]);
        let r = parse(&bytes);
        assert_eq!(r.options.message_type, Some(MessageType::Request));
        bytes.extend_from_slice(&[61, 40, 1]);
        assert_eq!(
            Repr::parse_bytes(&bytes),
            Err(Error::OptionOverrun { code: 61, len: 40 })
        );
    }

    #[test]
    fn overloaded_file_and_sname_carry_options() {
        let mut bytes = vec![0u8; 240];
        bytes[0] = 1;
        bytes[236..240].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&[52, 1, 3, 53, 1, 1, 255]);
        // file: host name in two pieces (RFC 3396 concatenation), sname: vendor class.
        bytes[field::FILE.start..field::FILE.start + 5].copy_from_slice(&[12, 3, b'a', b'b', b'c']);
        bytes[field::FILE.start + 5..field::FILE.start + 8].copy_from_slice(&[255, 0, 0]);
        bytes[field::SNAME.start..field::SNAME.start + 6]
            .copy_from_slice(&[60, 3, b'P', b'X', b'E', 255]);
        let r = parse(&bytes);
        assert_eq!(r.options.hostname.as_deref(), Some(&b"abc"[..]));
        assert_eq!(r.options.vendor_class.as_deref(), Some(&b"PXE"[..]));
        assert!(r.file.is_empty() && r.sname.is_empty());
    }

    /// Found by the `dhcp_message` fuzz target: an option 52 inside the overloaded `file` field
    /// was kept as a raw option and re-emitted into the options area, changing the message.
    #[test]
    fn overload_option_inside_file_is_discarded() {
        let bytes = include_bytes!("../../fixtures/dhcp/fuzz/overload-inside-file.bin");
        let first = Repr::parse_bytes(bytes).expect("parses");
        assert!(
            first.options.other.iter().all(|(code, _)| *code != 52),
            "option 52 kept raw: {:?}",
            first.options.other
        );
        assert!(crate::dhcp::roundtrip_check(bytes));
    }
}
