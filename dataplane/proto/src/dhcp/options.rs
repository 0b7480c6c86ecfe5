//! DHCP options (RFC 2132, RFC 3046, RFC 4578, PXE 2.1) and their typed set [`DhcpOptions`].
//!
//! Options are read into a list in order of first appearance; an option that appears more than
//! once is concatenated (RFC 3396 §5), and an option longer than 255 bytes is split on emit. Unknown
//! codes and known codes with a length wrong for their type land in [`DhcpOptions::other`]: they are
//! kept and re-emitted, never an error.
use std::net::Ipv4Addr;

use super::error::{Error, Result};

macro_rules! code_enum {
    ($(#[$meta:meta])* $name:ident : $repr:ty { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                match v {
                    $($value => Self::$variant,)*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => $value,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

code_enum! {
    /// Option codes this crate knows by name.
    OptionCode: u8 {
        Pad = 0,
        SubnetMask = 1,
        Router = 3,
        DomainNameServer = 6,
        HostName = 12,
        VendorSpecific = 43,
        RequestedIp = 50,
        LeaseTime = 51,
        Overload = 52,
        MessageType = 53,
        ServerId = 54,
        ParameterRequest = 55,
        Message = 56,
        MaxMessageSize = 57,
        RenewalTime = 58,
        RebindingTime = 59,
        VendorClass = 60,
        ClientId = 61,
        TftpServerName = 66,
        BootfileName = 67,
        UserClass = 77,
        RelayAgentInfo = 82,
        ClientArch = 93,
        ClientNdi = 94,
        ClientUuid = 97,
        IpxeEncap = 175,
        End = 255,
    }
}

code_enum! {
    /// Option 53 (RFC 2132 §9.6, RFC 4388 for 10-13).
    MessageType: u8 {
        Discover = 1,
        Offer = 2,
        Request = 3,
        Decline = 4,
        Ack = 5,
        Nak = 6,
        Release = 7,
        Inform = 8,
        ForceRenew = 9,
        LeaseQuery = 10,
    }
}

impl MessageType {
    /// Stable name, for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discover => "discover",
            Self::Offer => "offer",
            Self::Request => "request",
            Self::Decline => "decline",
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Release => "release",
            Self::Inform => "inform",
            Self::ForceRenew => "force_renew",
            Self::LeaseQuery => "lease_query",
            Self::Unknown(_) => "unknown",
        }
    }
}

code_enum! {
    /// Option 93, client system architecture (RFC 4578 §2.1 and the IANA "Processor Architecture
    /// Types" registry).
    ClientArch: u16 {
        X86Bios = 0,
        NecPc98 = 1,
        EfiItanium = 2,
        DecAlpha = 3,
        ArcX86 = 4,
        IntelLeanClient = 5,
        EfiIa32 = 6,
        EfiX64 = 7,
        EfiXscale = 8,
        /// RFC 4578 calls 9 "EFI BC"; in practice x64 firmware sends it (the RFC swapped 7 and 9
        /// by mistake, see the IANA registry note), so it is treated as x64.
        EfiBc = 9,
        EfiArm32 = 10,
        EfiArm64 = 11,
        EfiIa32Http = 15,
        EfiX64Http = 16,
        EfiBcHttp = 17,
        EfiArm32Http = 18,
        EfiArm64Http = 19,
    }
}

/// PXE sub-options inside option 43 (PXE 2.1 spec, table 2-1).
pub mod pxe {
    /// PXE_DISCOVERY_CONTROL, a bit field: bit 0 disables broadcast discovery, bit 1 multicast
    /// discovery, bit 2 accepts only servers from PXE_BOOT_SERVERS, bit 3 means "a boot file name is
    /// in this packet: download it, no menu, no boot server discovery".
    pub const DISCOVERY_CONTROL: u8 = 6;
    pub const BOOT_SERVERS: u8 = 8;
    pub const BOOT_MENU: u8 = 9;
    pub const MENU_PROMPT: u8 = 10;
    pub const BOOT_ITEM: u8 = 71;
    /// Bit 3 of [`DISCOVERY_CONTROL`].
    pub const DOWNLOAD_BOOT_FILE: u8 = 0x08;
    /// Bits 0 and 1 too: the client must not go looking for boot servers on its own.
    pub const NO_DISCOVERY: u8 = 0x03;
}

/// iPXE's settings inside option 175 (iPXE's `include/ipxe/dhcp.h`, `DHCP_EB_*`), sent by a server
/// as sub-options: code, length, value.
pub mod ipxe {
    /// `175.176`, "no-pxedhcp": with 1 in a DHCPOFFER that carries an address, iPXE requests
    /// that address at once instead of collecting ProxyDHCP offers (`dhcp_discovery_rx`), and
    /// does not ask a ProxyDHCP server afterwards.
    pub const NO_PXEDHCP: u8 = 176;

    /// Option 175's value telling iPXE not to wait for or use ProxyDHCP.
    pub fn no_pxedhcp() -> Vec<u8> {
        vec![NO_PXEDHCP, 1, 1]
    }

    /// Reads `code`'s one-byte value from option 175 sent by a server, if present.
    pub fn setting_u8(encap: &[u8], code: u8) -> Option<u8> {
        let mut rest = encap;
        while let [c, len, tail @ ..] = rest {
            let len = usize::from(*len);
            let value = tail.get(..len)?;
            if *c == code {
                return value.first().copied().filter(|_| len == 1);
            }
            rest = &tail[len..];
        }
        None
    }
}

/// Option 97 (RFC 4578 §2.3): type 0 followed by a 16-byte GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientUuid {
    pub kind: u8,
    pub id: [u8; 16],
}

/// Option 43 for a PXE client: the sub-options the server sets, the rest kept opaque.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PxeVendorOptions {
    pub discovery_control: Option<u8>,
    /// Boot servers (8), menu (9), prompt (10), boot item (71) and anything else, raw.
    pub other: Vec<(u8, Vec<u8>)>,
}

impl PxeVendorOptions {
    /// Reads sub-options; a truncated tail is ignored (option 43 is advisory for the server).
    pub fn parse(bytes: &[u8]) -> Self {
        let mut out = Self::default();
        let mut i = 0;
        while i < bytes.len() {
            let code = bytes[i];
            if code == 0 {
                i += 1;
                continue;
            }
            if code == 255 || i + 1 >= bytes.len() {
                break;
            }
            let len = usize::from(bytes[i + 1]);
            let Some(data) = bytes.get(i + 2..i + 2 + len) else {
                break;
            };
            match (code, data) {
                (pxe::DISCOVERY_CONTROL, [v]) => out.discovery_control = Some(*v),
                _ => out.other.push((code, data.to_vec())),
            }
            i += 2 + len;
        }
        out
    }

    /// Encodes with a closing END, as the PXE spec requires inside option 43.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(v) = self.discovery_control {
            out.extend_from_slice(&[pxe::DISCOVERY_CONTROL, 1, v]);
        }
        for (code, data) in &self.other {
            let len = data.len().min(255);
            out.push(*code);
            out.push(len as u8);
            out.extend_from_slice(&data[..len]);
        }
        out.push(255);
        out
    }
}

/// Collects raw options from one or more areas (options field, then overloaded `file`/`sname`).
#[derive(Debug, Default)]
pub(crate) struct OptionReader {
    entries: Vec<(u8, Vec<u8>)>,
}

impl OptionReader {
    pub(crate) fn read(&mut self, area: &[u8]) -> Result<()> {
        let mut i = 0;
        while i < area.len() {
            let code = area[i];
            if code == 0 {
                i += 1;
                continue;
            }
            if code == 255 {
                return Ok(());
            }
            let Some(&len) = area.get(i + 1) else {
                return Err(Error::OptionOverrun { code, len: 1 });
            };
            let len = usize::from(len);
            let Some(data) = area.get(i + 2..i + 2 + len) else {
                return Err(Error::OptionOverrun { code, len });
            };
            // RFC 3396 §5: several instances of one code are one option, concatenated.
            match self.entries.iter_mut().find(|(c, _)| *c == code) {
                Some((_, existing)) => existing.extend_from_slice(data),
                None => self.entries.push((code, data.to_vec())),
            }
            i += 2 + len;
        }
        // No END: tolerated, many embedded clients stop at the last option.
        Ok(())
    }

    pub(crate) fn take(&mut self, code: OptionCode) -> Option<Vec<u8>> {
        let code = u8::from(code);
        let at = self.entries.iter().position(|(c, _)| *c == code)?;
        Some(self.entries.remove(at).1)
    }
}

fn ip(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

fn ips(data: &[u8]) -> Option<Vec<Ipv4Addr>> {
    if data.is_empty() || !data.len().is_multiple_of(4) {
        return None;
    }
    Some(data.chunks_exact(4).filter_map(ip).collect())
}

fn u32_of(data: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(data).ok().map(u32::from_be_bytes)
}

/// The options of one message, typed where the server or client reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpOptions {
    pub message_type: Option<MessageType>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub hostname: Option<Vec<u8>>,
    /// Option 43, raw; [`PxeVendorOptions::parse`] reads it for PXE clients.
    pub vendor_specific: Option<Vec<u8>>,
    pub requested_ip: Option<Ipv4Addr>,
    /// Seconds.
    pub lease_time: Option<u32>,
    pub server_id: Option<Ipv4Addr>,
    pub parameter_request: Vec<u8>,
    pub message: Option<Vec<u8>>,
    pub max_message_size: Option<u16>,
    /// T1, seconds.
    pub renewal_time: Option<u32>,
    /// T2, seconds.
    pub rebinding_time: Option<u32>,
    pub vendor_class: Option<Vec<u8>>,
    pub client_id: Option<Vec<u8>>,
    pub tftp_server: Option<Vec<u8>>,
    pub bootfile: Option<Vec<u8>>,
    pub user_class: Option<Vec<u8>>,
    /// Option 82, opaque: a server echoes it verbatim (RFC 3046 §2.2).
    pub relay_agent_info: Option<Vec<u8>>,
    pub client_arch: Vec<ClientArch>,
    /// Option 94: interface type, major, minor (RFC 4578 §2.2).
    pub client_ndi: Option<[u8; 3]>,
    pub client_uuid: Option<ClientUuid>,
    /// Option 175, iPXE's encapsulated options: from a client its presence (and feature list),
    /// from this server [`ipxe::no_pxedhcp`].
    pub ipxe_encap: Option<Vec<u8>>,
    /// Everything else, in order of appearance.
    pub other: Vec<(u8, Vec<u8>)>,
}

impl DhcpOptions {
    pub(crate) fn from_reader(reader: OptionReader) -> Self {
        let mut o = Self::default();
        for (code, data) in reader.entries {
            if !o.accept(code, &data) {
                o.other.push((code, data));
            }
        }
        o
    }

    /// Stores a typed option; false when the code is not modelled or the value is malformed.
    fn accept(&mut self, code: u8, data: &[u8]) -> bool {
        fn set<T>(slot: &mut Option<T>, v: Option<T>) -> bool {
            match v {
                Some(v) => {
                    *slot = Some(v);
                    true
                }
                None => false,
            }
        }
        fn set_vec<T>(slot: &mut Vec<T>, v: Option<Vec<T>>) -> bool {
            match v {
                Some(v) => {
                    *slot = v;
                    true
                }
                None => false,
            }
        }
        let bytes = || Some(data.to_vec());
        match OptionCode::from(code) {
            OptionCode::MessageType => match data {
                [v] => set(&mut self.message_type, Some(MessageType::from(*v))),
                _ => false,
            },
            OptionCode::SubnetMask => set(&mut self.subnet_mask, ip(data)),
            OptionCode::Router => set_vec(&mut self.routers, ips(data)),
            OptionCode::DomainNameServer => set_vec(&mut self.dns_servers, ips(data)),
            OptionCode::HostName => set(&mut self.hostname, bytes()),
            OptionCode::VendorSpecific => set(&mut self.vendor_specific, bytes()),
            OptionCode::RequestedIp => set(&mut self.requested_ip, ip(data)),
            OptionCode::LeaseTime => set(&mut self.lease_time, u32_of(data)),
            OptionCode::ServerId => set(&mut self.server_id, ip(data)),
            OptionCode::ParameterRequest if !data.is_empty() => {
                set_vec(&mut self.parameter_request, bytes())
            }
            OptionCode::Message => set(&mut self.message, bytes()),
            OptionCode::MaxMessageSize => set(
                &mut self.max_message_size,
                <[u8; 2]>::try_from(data).ok().map(u16::from_be_bytes),
            ),
            OptionCode::RenewalTime => set(&mut self.renewal_time, u32_of(data)),
            OptionCode::RebindingTime => set(&mut self.rebinding_time, u32_of(data)),
            OptionCode::VendorClass => set(&mut self.vendor_class, bytes()),
            OptionCode::ClientId => set(&mut self.client_id, bytes()),
            OptionCode::TftpServerName => set(&mut self.tftp_server, bytes()),
            OptionCode::BootfileName => set(&mut self.bootfile, bytes()),
            OptionCode::UserClass => set(&mut self.user_class, bytes()),
            OptionCode::RelayAgentInfo => set(&mut self.relay_agent_info, bytes()),
            OptionCode::ClientArch if !data.is_empty() && data.len().is_multiple_of(2) => set_vec(
                &mut self.client_arch,
                Some(
                    data.chunks_exact(2)
                        .map(|c| ClientArch::from(u16::from_be_bytes([c[0], c[1]])))
                        .collect(),
                ),
            ),
            OptionCode::ClientNdi => set(&mut self.client_ndi, <[u8; 3]>::try_from(data).ok()),
            OptionCode::ClientUuid => set(
                &mut self.client_uuid,
                match data {
                    [kind, id @ ..] => <[u8; 16]>::try_from(id)
                        .ok()
                        .map(|id| ClientUuid { kind: *kind, id }),
                    [] => None,
                },
            ),
            OptionCode::IpxeEncap => set(&mut self.ipxe_encap, bytes()),
            _ => false,
        }
    }

    /// Visits every option as (code, value) in emit order: message type first (some clients
    /// look for it there), relay agent information last (RFC 3046 §2.1 places it last).
    fn for_each(&self, mut f: impl FnMut(u8, &[u8])) {
        fn ipv(v: &[Ipv4Addr]) -> Vec<u8> {
            v.iter().flat_map(|a| a.octets()).collect()
        }
        if let Some(v) = self.message_type {
            f(OptionCode::MessageType.into(), &[v.into()]);
        }
        if let Some(v) = self.server_id {
            f(OptionCode::ServerId.into(), &v.octets());
        }
        if let Some(v) = self.lease_time {
            f(OptionCode::LeaseTime.into(), &v.to_be_bytes());
        }
        if let Some(v) = self.renewal_time {
            f(OptionCode::RenewalTime.into(), &v.to_be_bytes());
        }
        if let Some(v) = self.rebinding_time {
            f(OptionCode::RebindingTime.into(), &v.to_be_bytes());
        }
        if let Some(v) = self.subnet_mask {
            f(OptionCode::SubnetMask.into(), &v.octets());
        }
        if !self.routers.is_empty() {
            f(OptionCode::Router.into(), &ipv(&self.routers));
        }
        if !self.dns_servers.is_empty() {
            f(OptionCode::DomainNameServer.into(), &ipv(&self.dns_servers));
        }
        let raw: [(OptionCode, &Option<Vec<u8>>); 5] = [
            (OptionCode::HostName, &self.hostname),
            (OptionCode::VendorSpecific, &self.vendor_specific),
            (OptionCode::Message, &self.message),
            (OptionCode::VendorClass, &self.vendor_class),
            (OptionCode::ClientId, &self.client_id),
        ];
        for (code, v) in raw {
            if let Some(v) = v {
                f(code.into(), v);
            }
        }
        if let Some(v) = self.requested_ip {
            f(OptionCode::RequestedIp.into(), &v.octets());
        }
        if !self.parameter_request.is_empty() {
            f(OptionCode::ParameterRequest.into(), &self.parameter_request);
        }
        if let Some(v) = self.max_message_size {
            f(OptionCode::MaxMessageSize.into(), &v.to_be_bytes());
        }
        let raw: [(OptionCode, &Option<Vec<u8>>); 3] = [
            (OptionCode::TftpServerName, &self.tftp_server),
            (OptionCode::BootfileName, &self.bootfile),
            (OptionCode::UserClass, &self.user_class),
        ];
        for (code, v) in raw {
            if let Some(v) = v {
                f(code.into(), v);
            }
        }
        if !self.client_arch.is_empty() {
            let v: Vec<u8> = self
                .client_arch
                .iter()
                .flat_map(|a| u16::from(*a).to_be_bytes())
                .collect();
            f(OptionCode::ClientArch.into(), &v);
        }
        if let Some(v) = self.client_ndi {
            f(OptionCode::ClientNdi.into(), &v);
        }
        if let Some(u) = self.client_uuid {
            let mut v = [0u8; 17];
            v[0] = u.kind;
            v[1..].copy_from_slice(&u.id);
            f(OptionCode::ClientUuid.into(), &v);
        }
        if let Some(v) = &self.ipxe_encap {
            f(OptionCode::IpxeEncap.into(), v);
        }
        for (code, v) in &self.other {
            f(*code, v);
        }
        if let Some(v) = &self.relay_agent_info {
            f(OptionCode::RelayAgentInfo.into(), v);
        }
    }

    /// Encoded length of one option, split into 255-byte pieces (RFC 3396 §4).
    fn encoded_len(len: usize) -> usize {
        if len == 0 {
            2
        } else {
            len + 2 * len.div_ceil(255)
        }
    }

    /// Bytes [`DhcpOptions::emit`] writes (without END).
    pub fn buffer_len(&self) -> usize {
        let mut n = 0;
        self.for_each(|_, v| n += Self::encoded_len(v.len()));
        n
    }

    /// Writes the options (no END) into `area`, which must hold [`DhcpOptions::buffer_len`]
    /// bytes; returns the bytes written.
    pub fn emit(&self, area: &mut [u8]) -> usize {
        let mut at = 0;
        self.for_each(|code, v| {
            let mut put = |piece: &[u8]| {
                area[at] = code;
                area[at + 1] = piece.len() as u8;
                area[at + 2..at + 2 + piece.len()].copy_from_slice(piece);
                at += 2 + piece.len();
            };
            if v.is_empty() {
                put(v);
            }
            for piece in v.chunks(255) {
                put(piece);
            }
        });
        at
    }

    /// PXE sub-options of option 43, if present.
    pub fn pxe(&self) -> Option<PxeVendorOptions> {
        self.vendor_specific.as_deref().map(PxeVendorOptions::parse)
    }

    /// The first architecture the client listed (RFC 4578 §2.1 allows several).
    pub fn arch(&self) -> Option<ClientArch> {
        self.client_arch.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipxe_settings_read_back_and_survive_junk() {
        assert_eq!(
            ipxe::setting_u8(&ipxe::no_pxedhcp(), ipxe::NO_PXEDHCP),
            Some(1)
        );
        // Priority (175.1) first, then no-pxedhcp.
        assert_eq!(ipxe::setting_u8(&[1, 1, 0x7f, 176, 1, 1], 176), Some(1));
        assert_eq!(ipxe::setting_u8(&[1, 1, 0x7f], 176), None);
        // Truncated, or the wrong length for a one-byte setting.
        assert_eq!(ipxe::setting_u8(&[176, 2, 1], 176), None);
        assert_eq!(ipxe::setting_u8(&[176, 2, 1, 1], 176), None);
        assert_eq!(ipxe::setting_u8(&[176], 176), None);
    }

    #[test]
    fn code_enums_keep_unknown_values() {
        assert_eq!(MessageType::from(42), MessageType::Unknown(42));
        assert_eq!(u8::from(MessageType::Unknown(42)), 42);
        assert_eq!(ClientArch::from(7), ClientArch::EfiX64);
        assert_eq!(ClientArch::from(0x1234), ClientArch::Unknown(0x1234));
        assert_eq!(u16::from(ClientArch::EfiX64Http), 16);
        assert_eq!(OptionCode::from(82), OptionCode::RelayAgentInfo);
    }

    #[test]
    fn long_options_split_and_concatenate() {
        let opts = DhcpOptions {
            relay_agent_info: Some(vec![7u8; 300]),
            hostname: Some(Vec::new()),
            ..DhcpOptions::default()
        };
        assert_eq!(opts.buffer_len(), 2 + (300 + 4));
        let mut area = vec![0u8; opts.buffer_len()];
        assert_eq!(opts.emit(&mut area), area.len());
        assert_eq!(&area[..2], &[12, 0]);
        assert_eq!(&area[2..4], &[82, 255]);
        assert_eq!(&area[259..261], &[82, 45]);
        let mut reader = OptionReader::default();
        reader.read(&area).expect("read");
        assert_eq!(DhcpOptions::from_reader(reader), opts);
    }

    #[test]
    fn malformed_typed_options_are_kept_raw() {
        let mut reader = OptionReader::default();
        reader
            .read(&[
                53, 2, 1, 1, 54, 3, 1, 2, 3, 93, 1, 7, 97, 2, 0, 1, 200, 1, 9,
            ])
            .expect("read");
        let o = DhcpOptions::from_reader(reader);
        assert_eq!(o.message_type, None);
        assert_eq!(o.server_id, None);
        assert!(o.client_arch.is_empty());
        assert_eq!(
            o.other.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [53, 54, 93, 97, 200]
        );
    }

    #[test]
    fn pxe_vendor_options() {
        let v = PxeVendorOptions {
            discovery_control: Some(pxe::DOWNLOAD_BOOT_FILE | pxe::NO_DISCOVERY),
            other: vec![(pxe::MENU_PROMPT, vec![0, b'x'])],
        };
        let bytes = v.to_bytes();
        assert_eq!(bytes, [6, 1, 0x0b, 10, 2, 0, b'x', 255]);
        assert_eq!(PxeVendorOptions::parse(&bytes), v);
        // Truncated sub-option: what came before survives.
        assert_eq!(
            PxeVendorOptions::parse(&[6, 1, 8, 9, 40, 1]).discovery_control,
            Some(8)
        );
    }
}
