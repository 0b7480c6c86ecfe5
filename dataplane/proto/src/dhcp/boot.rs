//! What each machine boots: a pure function from what the client says about itself to a
//! [`BootDecision`].
//!
//! The chain is firmware PXE ROM → iPXE (by TFTP) → iPXE script (by HTTP), or UEFI HTTP Boot →
//! iPXE (by HTTP) → script. A client that is already iPXE must get the script, not iPXE again, or it
//! chainloads itself forever; iPXE identifies itself with user class "iPXE" (option 77) and its own
//! option 175.
use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::options::{ClientArch, ClientUuid};
use super::wire::Repr;

/// Firmware family, from option 93 (RFC 4578 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    Bios,
    EfiIa32,
    EfiX64,
    EfiArm32,
    EfiArm64,
    Other(ClientArch),
}

impl Firmware {
    /// The family and whether the arch code is one of the UEFI HTTP Boot codes.
    pub fn from_arch(arch: ClientArch) -> (Self, bool) {
        match arch {
            ClientArch::X86Bios => (Self::Bios, false),
            ClientArch::EfiIa32 => (Self::EfiIa32, false),
            // 9 is what x64 firmware sends as "EFI BC" in the wild (RFC 4578 errata).
            ClientArch::EfiX64 | ClientArch::EfiBc => (Self::EfiX64, false),
            ClientArch::EfiArm32 => (Self::EfiArm32, false),
            ClientArch::EfiArm64 => (Self::EfiArm64, false),
            ClientArch::EfiIa32Http => (Self::EfiIa32, true),
            ClientArch::EfiX64Http | ClientArch::EfiBcHttp => (Self::EfiX64, true),
            ClientArch::EfiArm32Http => (Self::EfiArm32, true),
            ClientArch::EfiArm64Http => (Self::EfiArm64, true),
            other => (Self::Other(other), false),
        }
    }
}

/// What the decision needs to know about a client, read from its DISCOVER/REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootClient {
    pub mac: [u8; 6],
    pub arch: Option<ClientArch>,
    pub vendor_class: Vec<u8>,
    /// User class says "iPXE" or option 175 is present.
    pub is_ipxe: bool,
    /// This machine's iPXE ROM was told to chainload the loader moments ago, so this iPXE is
    /// the loader (stage 2). Set by the server from its own memory: the ROM's iPXE and a
    /// chainloaded `undionly.kpxe` send byte-identical options (user class `iPXE`, option 175
    /// with the same bus id `PCI 8086:100e` and features, option 94 `UNDI 2.1`, captured from
    /// QEMU's e1000 ROM and Debian's undionly.kpxe), so nothing in the packet tells them apart.
    pub loader_sent: bool,
    pub uuid: Option<ClientUuid>,
}

impl BootClient {
    pub fn from_request(req: &Repr) -> Option<Self> {
        let o = &req.options;
        let user_ipxe = o.user_class.as_deref().is_some_and(|u| {
            // iPXE sends the bare string; RFC 3004 user classes are length-prefixed.
            u == b"iPXE" || u.strip_prefix(&[4]) == Some(b"iPXE")
        });
        Some(Self {
            mac: req.mac()?,
            arch: o
                .arch()
                .or_else(|| arch_from_vendor_class(o.vendor_class.as_deref()?)),
            vendor_class: o.vendor_class.clone().unwrap_or_default(),
            is_ipxe: user_ipxe || o.ipxe_encap.is_some(),
            loader_sent: false,
            uuid: o.client_uuid,
        })
    }

    pub fn is_pxe(&self) -> bool {
        self.vendor_class.starts_with(b"PXEClient")
    }

    pub fn is_http_boot(&self) -> bool {
        self.vendor_class.starts_with(b"HTTPClient")
    }
}

/// Reads the arch from `PXEClient:Arch:00007:UNDI:003016` (PXE 2.1 §2.2.5), for clients that
/// leave out option 93.
pub fn arch_from_vendor_class(vc: &[u8]) -> Option<ClientArch> {
    let text = std::str::from_utf8(vc).ok()?;
    let mut parts = text.split(':');
    parts.next()?;
    if parts.next()? != "Arch" {
        return None;
    }
    parts.next()?.parse::<u16>().ok().map(ClientArch::from)
}

/// Per-machine (or default) choice of iPXE script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootProfile {
    pub name: String,
    /// Path of the iPXE script under [`BootConfig::http_base`], e.g. `boot.ipxe`.
    pub ipxe_script: String,
    /// `Some`: x86-64 UEFI PXE clients (option 93 arch 7 or 9) get this file by TFTP instead
    /// of iPXE: Secure Boot's signed shim (`shimx64.efi`). Firmware does not say in DHCP
    /// whether Secure Boot is on, so the profile decides.
    pub efi_x64_loader: Option<String>,
}

/// iPXE builds handed to firmware, by family. `None` means that family is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaders {
    pub bios: Option<String>,
    pub efi_ia32: Option<String>,
    pub efi_x64: Option<String>,
    pub efi_arm32: Option<String>,
    pub efi_arm64: Option<String>,
}

impl Default for Loaders {
    /// The Debian `ipxe` package names: `undionly.kpxe` uses the ROM's UNDI driver (works on any
    /// NIC with a PXE ROM), `snponly.efi` the firmware's SNP driver (any UEFI NIC).
    fn default() -> Self {
        Self {
            bios: Some("undionly.kpxe".into()),
            efi_ia32: None,
            efi_x64: Some("snponly.efi".into()),
            efi_arm32: None,
            efi_arm64: Some("snponly-arm64.efi".into()),
        }
    }
}

impl Loaders {
    pub fn for_firmware(&self, fw: Firmware) -> Option<&str> {
        match fw {
            Firmware::Bios => self.bios.as_deref(),
            Firmware::EfiIa32 => self.efi_ia32.as_deref(),
            Firmware::EfiX64 => self.efi_x64.as_deref(),
            Firmware::EfiArm32 => self.efi_arm32.as_deref(),
            Firmware::EfiArm64 => self.efi_arm64.as_deref(),
            Firmware::Other(_) => None,
        }
    }
}

/// Where boot files come from and which machine gets which profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// TFTP server given as `siaddr` (next-server).
    pub tftp_server: Ipv4Addr,
    /// Base URL of the HTTP server without a trailing slash, e.g. `http://198.18.0.1:8080`.
    pub http_base: String,
    /// Base URL UEFI HTTP Boot clients get their loader from, when not [`Self::http_base`]:
    /// the HTTPS server's (`https://198.18.0.1:8443`). iPXE keeps `http_base`: its builds
    /// trust only the CAs compiled into them.
    pub http_boot_base: Option<String>,
    pub loaders: Loaders,
    pub default_profile: BootProfile,
    pub profiles_by_mac: HashMap<[u8; 6], BootProfile>,
    /// Keyed by the 16-byte GUID of option 97.
    pub profiles_by_uuid: HashMap<[u8; 16], BootProfile>,
    /// An iPXE option ROM gets the loader by TFTP, like a PXE ROM, instead of the script; the
    /// loader's own iPXE ([`BootClient::loader_sent`]) then gets the script.
    pub ipxe_chainload: bool,
}

impl BootConfig {
    pub fn new(tftp_server: Ipv4Addr, http_base: impl Into<String>) -> Self {
        Self {
            tftp_server,
            http_base: http_base.into(),
            http_boot_base: None,
            loaders: Loaders::default(),
            default_profile: BootProfile {
                name: "default".into(),
                ipxe_script: "boot.ipxe".into(),
                efi_x64_loader: None,
            },
            profiles_by_mac: HashMap::new(),
            profiles_by_uuid: HashMap::new(),
            ipxe_chainload: false,
        }
    }

    /// MAC first (the operator's most specific key), then UUID, then the default. An all-zero
    /// GUID (QEMU's default) identifies nothing.
    pub fn profile_for(&self, client: &BootClient) -> &BootProfile {
        if let Some(p) = self.profiles_by_mac.get(&client.mac) {
            return p;
        }
        client
            .uuid
            .filter(|u| u.id != [0; 16])
            .and_then(|u| self.profiles_by_uuid.get(&u.id))
            .unwrap_or(&self.default_profile)
    }
}

/// What a boot client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// A firmware PXE ROM: fetch iPXE by TFTP from `next_server`.
    Chainload { next_server: Ipv4Addr, file: String },
    /// iPXE: fetch the profile's script by HTTP.
    IpxeScript { url: String },
    /// UEFI HTTP Boot: fetch iPXE by HTTP; the reply echoes vendor class `HTTPClient` (UEFI 2.5
    /// §24.7.2), without which the firmware ignores the offer.
    HttpBoot { url: String },
}

impl BootDecision {
    pub fn boot_file(&self) -> &str {
        match self {
            Self::Chainload { file, .. } => file,
            Self::IpxeScript { url } | Self::HttpBoot { url } => url,
        }
    }

    /// Option 60 to put in the reply.
    pub fn vendor_class(&self) -> &'static [u8] {
        match self {
            Self::HttpBoot { .. } => b"HTTPClient",
            _ => b"PXEClient",
        }
    }
}

/// Why a client gets no boot instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoBoot {
    #[error("client is neither PXE, iPXE nor UEFI HTTP Boot")]
    NotBootClient,
    #[error("no loader configured for architecture {0:?}")]
    UnsupportedArch(Option<ClientArch>),
}

/// Decides what `client` boots. Pure: same inputs, same answer.
///
/// iPXE is checked first because iPXE also calls itself `PXEClient` in option 60.
pub fn decide(client: &BootClient, config: &BootConfig) -> Result<BootDecision, NoBoot> {
    // With `ipxe_chainload`, an iPXE that is not the loader is the NIC's ROM (stage 1): it is
    // treated like a PXE ROM. The loader must be another file than the ROM, or stage 2 would
    // not exist; a family without a loader boots the script from its ROM.
    let firmware = client
        .arch
        .map_or(Firmware::Bios, |arch| Firmware::from_arch(arch).0);
    let rom_to_chainload = config.ipxe_chainload
        && client.is_ipxe
        && !client.loader_sent
        && config.loaders.for_firmware(firmware).is_some();
    if client.is_ipxe && !rom_to_chainload {
        let profile = config.profile_for(client);
        return Ok(BootDecision::IpxeScript {
            url: format!(
                "{}/{}?mac={}",
                config.http_base,
                profile.ipxe_script,
                crate::MacAddr(client.mac).dashed()
            ),
        });
    }
    if !client.is_pxe() && !client.is_http_boot() && !rom_to_chainload {
        return Err(NoBoot::NotBootClient);
    }
    let (firmware, http_arch) = match client.arch {
        Some(arch) => Firmware::from_arch(arch),
        // No option 93 and no Arch in option 60: PXE 2.1 predates UEFI, so a BIOS ROM.
        None => (Firmware::Bios, false),
    };
    let http = client.is_http_boot() || http_arch;
    if firmware == Firmware::EfiX64
        && !http
        && let Some(shim) = &config.profile_for(client).efi_x64_loader
    {
        return Ok(BootDecision::Chainload {
            next_server: config.tftp_server,
            file: shim.clone(),
        });
    }
    let loader = config
        .loaders
        .for_firmware(firmware)
        .ok_or(NoBoot::UnsupportedArch(client.arch))?;
    if http {
        return Ok(BootDecision::HttpBoot {
            url: format!(
                "{}/{}",
                config
                    .http_boot_base
                    .as_deref()
                    .unwrap_or(&config.http_base),
                loader
            ),
        });
    }
    Ok(BootDecision::Chainload {
        next_server: config.tftp_server,
        file: loader.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];

    fn client(vc: &str, arch: Option<u16>, ipxe: bool) -> BootClient {
        BootClient {
            mac: MAC,
            arch: arch.map(ClientArch::from),
            vendor_class: vc.as_bytes().to_vec(),
            is_ipxe: ipxe,
            loader_sent: false,
            uuid: None,
        }
    }

    #[test]
    fn decision_table() {
        let config = BootConfig::new(Ipv4Addr::new(198, 18, 0, 1), "http://198.18.0.1:8080");
        let tftp = |f: &str| {
            Ok(BootDecision::Chainload {
                next_server: Ipv4Addr::new(198, 18, 0, 1),
                file: f.into(),
            })
        };
        let http = |f: &str| {
            Ok(BootDecision::HttpBoot {
                url: format!("http://198.18.0.1:8080/{f}"),
            })
        };
        let script = Ok(BootDecision::IpxeScript {
            url: "http://198.18.0.1:8080/boot.ipxe?mac=52-54-00-ab-cd-ef".into(),
        });
        let cases = [
            (
                "PXEClient:Arch:00000:UNDI:002001",
                Some(0),
                false,
                tftp("undionly.kpxe"),
            ),
            (
                "PXEClient:Arch:00007:UNDI:003016",
                Some(7),
                false,
                tftp("snponly.efi"),
            ),
            (
                "PXEClient:Arch:00009:UNDI:003016",
                Some(9),
                false,
                tftp("snponly.efi"),
            ),
            (
                "PXEClient:Arch:00007:UNDI:003016",
                None,
                false,
                tftp("snponly.efi"),
            ),
            ("PXEClient", None, false, tftp("undionly.kpxe")),
            (
                "PXEClient:Arch:00011:UNDI:003000",
                Some(11),
                false,
                tftp("snponly-arm64.efi"),
            ),
            (
                "PXEClient:Arch:00006:UNDI:003016",
                Some(6),
                false,
                Err(NoBoot::UnsupportedArch(Some(ClientArch::EfiIa32))),
            ),
            (
                "HTTPClient:Arch:00016:UNDI:003001",
                Some(16),
                false,
                http("snponly.efi"),
            ),
            ("HTTPClient", Some(19), false, http("snponly-arm64.efi")),
            (
                "PXEClient:Arch:00000:UNDI:002001",
                Some(0),
                true,
                script.clone(),
            ),
            (
                "PXEClient:Arch:00007:UNDI:003016",
                Some(7),
                true,
                script.clone(),
            ),
            ("", None, true, script),
            ("udhcp 1.35.0", None, false, Err(NoBoot::NotBootClient)),
            ("", Some(7), false, Err(NoBoot::NotBootClient)),
        ];
        for (vc, arch, ipxe, want) in cases {
            let mut c = client(vc, arch, ipxe);
            if c.arch.is_none() {
                c.arch = arch_from_vendor_class(vc.as_bytes());
            }
            assert_eq!(decide(&c, &config), want, "{vc} {arch:?} ipxe={ipxe}");
        }
    }

    #[test]
    fn chainload_sends_ipxe_roms_to_the_loader_and_the_loader_to_the_script() {
        let server = Ipv4Addr::new(198, 18, 0, 1);
        let mut config = BootConfig::new(server, "http://198.18.0.1:8080");
        config.ipxe_chainload = true;
        let script = Ok(BootDecision::IpxeScript {
            url: "http://198.18.0.1:8080/boot.ipxe?mac=52-54-00-ab-cd-ef".into(),
        });
        let tftp = |f: &str| {
            Ok(BootDecision::Chainload {
                next_server: server,
                file: f.into(),
            })
        };
        let bios_rom = client("PXEClient:Arch:00000:UNDI:002001", Some(0), true);
        assert_eq!(decide(&bios_rom, &config), tftp("undionly.kpxe"));
        let efi_rom = client("PXEClient:Arch:00007:UNDI:003016", Some(7), true);
        assert_eq!(decide(&efi_rom, &config), tftp("snponly.efi"));
        // An iPXE without option 60 or 93 (a bare build) is taken for BIOS.
        assert_eq!(
            decide(&client("", None, true), &config),
            tftp("undionly.kpxe")
        );
        let loader = BootClient {
            loader_sent: true,
            ..bios_rom.clone()
        };
        assert_eq!(decide(&loader, &config), script);
        // No loader for the family: the ROM boots the script itself rather than nothing.
        config.loaders.bios = None;
        assert_eq!(decide(&bios_rom, &config), script);
        // PXE ROMs and UEFI HTTP Boot are not affected.
        config.loaders = Loaders::default();
        let pxe = client("PXEClient:Arch:00000:UNDI:002001", Some(0), false);
        assert_eq!(decide(&pxe, &config), tftp("undionly.kpxe"));
    }

    #[test]
    fn profiles_by_mac_then_uuid() {
        let mut config = BootConfig::new(Ipv4Addr::new(198, 18, 0, 1), "http://h");
        let profile = |n: &str| BootProfile {
            name: n.into(),
            ipxe_script: format!("{n}.ipxe"),
            efi_x64_loader: None,
        };
        config.profiles_by_uuid.insert([7; 16], profile("by-uuid"));
        let mut c = client("PXEClient", None, true);
        c.uuid = Some(ClientUuid {
            kind: 0,
            id: [7; 16],
        });
        assert_eq!(config.profile_for(&c).name, "by-uuid");
        config.profiles_by_mac.insert(MAC, profile("by-mac"));
        assert_eq!(config.profile_for(&c).name, "by-mac");
        assert_eq!(
            decide(&c, &config).expect("boots").boot_file(),
            "http://h/by-mac.ipxe?mac=52-54-00-ab-cd-ef"
        );
        c.mac = [1; 6];
        c.uuid = Some(ClientUuid {
            kind: 0,
            id: [0; 16],
        });
        assert_eq!(config.profile_for(&c).name, "default");
    }

    #[test]
    fn ipxe_rom_fixture_is_stage_two() {
        let req = Repr::parse_bytes(include_bytes!("../../fixtures/dhcp/qemu_ipxe_discover.bin"))
            .expect("fixture parses");
        let c = BootClient::from_request(&req).expect("ethernet client");
        assert!(c.is_ipxe && c.is_pxe());
        assert_eq!(c.arch, Some(ClientArch::X86Bios));
        let uefi = Repr::parse_bytes(include_bytes!(
            "../../fixtures/dhcp/udhcpc_uefi_discover.bin"
        ))
        .expect("fixture parses");
        let c = BootClient::from_request(&uefi).expect("ethernet client");
        assert!(!c.is_ipxe);
        assert_eq!(c.arch, Some(ClientArch::EfiX64));
    }

    /// Real UEFI firmware (OVMF under QEMU): its own PXE client chainloads `snponly.efi` by
    /// TFTP, HTTP Boot gets a URL and the `HTTPClient` echo. Both send an all-zero UUID, which
    /// must not select a profile.
    #[test]
    fn ovmf_fixtures_decide() {
        let mut config = BootConfig::new(Ipv4Addr::new(198, 18, 0, 1), "http://198.18.0.1:8080");
        config.profiles_by_uuid.insert(
            [0; 16],
            BootProfile {
                name: "zero-uuid".into(),
                ipxe_script: "zero-uuid.ipxe".into(),
                efi_x64_loader: None,
            },
        );
        for bytes in [
            &include_bytes!("../../fixtures/dhcp/ovmf_pxe_discover.bin")[..],
            include_bytes!("../../fixtures/dhcp/ovmf_pxe_request.bin"),
        ] {
            let req = Repr::parse_bytes(bytes).expect("fixture parses");
            let c = BootClient::from_request(&req).expect("ethernet client");
            assert!(c.is_pxe() && !c.is_http_boot() && !c.is_ipxe);
            assert_eq!(c.arch, Some(ClientArch::EfiX64));
            assert_eq!(config.profile_for(&c).name, "default");
            let d = decide(&c, &config).expect("boots");
            assert_eq!(
                d,
                BootDecision::Chainload {
                    next_server: Ipv4Addr::new(198, 18, 0, 1),
                    file: "snponly.efi".into(),
                }
            );
            assert_eq!(d.vendor_class(), b"PXEClient");
        }
        for bytes in [
            &include_bytes!("../../fixtures/dhcp/ovmf_http_discover.bin")[..],
            include_bytes!("../../fixtures/dhcp/ovmf_http_request.bin"),
        ] {
            let req = Repr::parse_bytes(bytes).expect("fixture parses");
            let c = BootClient::from_request(&req).expect("ethernet client");
            assert!(c.is_http_boot() && !c.is_pxe() && !c.is_ipxe);
            assert_eq!(c.arch, Some(ClientArch::EfiX64Http));
            let d = decide(&c, &config).expect("boots");
            assert_eq!(
                d,
                BootDecision::HttpBoot {
                    url: "http://198.18.0.1:8080/snponly.efi".into(),
                }
            );
            assert_eq!(d.vendor_class(), b"HTTPClient");
        }
    }
}
