use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use stampede_proto::bootpath::BootPath;
use stampede_proto::dhcp::Loaders;
use stampede_proto::ipxe;
use stampede_proto::{http, tftp};

use stampede_ebpf_common::XdpPolicy;

use crate::xdp::AttachMode;

use super::wire::line_column;
use super::*;

const EXAMPLE: &str = include_str!("../../../docs/stampede.example.toml");

const MINIMAL: &str = r#"
[boot]
root = "/srv/boot"
default_profile = "live"

[[profiles]]
name = "live"
kernel = "vmlinuz"
"#;

fn parse(text: &str) -> ApplianceConfig {
    ApplianceConfig::from_toml_str(text).unwrap_or_else(|e| panic!("config refused: {e}"))
}

/// The example, its root profile (resolved by the appliance) stood in for.
pub(crate) fn example_without_roots(text: &str) -> ApplianceConfig {
    let wire = wire::Config::from_toml_str(text)
        .unwrap_or_else(|e| panic!("example refused: {e}"))
        .with_root_placeholders();
    ApplianceConfig::try_from(wire).unwrap_or_else(|e| panic!("example refused: {e}"))
}

/// The error for `MINIMAL` with `extra` appended; panics if it is accepted.
fn refused(extra: &str) -> ConfigError {
    match ApplianceConfig::from_toml_str(&format!("{MINIMAL}\n{extra}")) {
        Ok(_) => panic!("accepted:\n{extra}"),
        Err(e) => e,
    }
}

#[test]
fn example_file_parses_and_validates() {
    assert!(
        ApplianceConfig::from_toml_str(EXAMPLE)
            .is_err_and(|e| e.key().is_some_and(|k| k.ends_with(".root"))),
        "the example's root profile is left for the appliance to resolve"
    );
    let c = example_without_roots(EXAMPLE);
    assert_eq!(c.server.interfaces, ["eth1"]);
    assert_eq!(c.dhcp.mode, DhcpMode::Authoritative);
    assert_eq!(c.dhcp.pools.len(), 1, "one pool in the example");
    assert!(c.profiles.len() >= 2, "example shows several profiles");
    assert!(
        c.machines.iter().any(|m| !m.allow),
        "example shows a denied machine"
    );
    assert!(
        c.profiles.iter().any(|p| !p.boot.variants.is_empty()),
        "example shows an arch variant"
    );
    assert_eq!(c.xdp, Some(AttachMode::Auto));
    assert_eq!(
        c.xdp_filter,
        XdpFilterSettings {
            deny: vec![[0x52, 0x54, 0x00, 0xde, 0xad, 0x01]],
            ..XdpFilterSettings::default()
        },
        "the example shows every default and one denied MAC"
    );
}

#[test]
fn api_tls_files_are_read_as_a_pair() {
    let text = format!(
        "[server]\napi = \"0.0.0.0:7443\"\napi_tls_cert = \"/etc/stampede/api.pem\"\n\
             api_tls_key = \"/etc/stampede/api.key\"\n{MINIMAL}"
    );
    let c = parse(&text);
    assert_eq!(
        c.server.api_tls,
        Some(ApiTlsFiles {
            cert: PathBuf::from("/etc/stampede/api.pem"),
            key: PathBuf::from("/etc/stampede/api.key"),
        })
    );
}

#[test]
fn https_boot_is_off_by_default_and_uses_the_appliance_ca_unless_given_files() {
    assert_eq!(parse(MINIMAL).http.https, None, "plain HTTP only");
    let c = parse(&format!("[http]\nhttps_port = 8443\n{MINIMAL}"));
    assert_eq!(
        c.http.https,
        Some(HttpsSettings {
            port: 8443,
            identity: TlsIdentity::ApplianceCa,
            boot_urls: false,
        })
    );
    let c = parse(&format!(
        "[http]\nhttps_port = 8443\ntls_cert = \"/etc/stampede/boot.pem\"\n\
         tls_key = \"/etc/stampede/boot.key\"\nhttps_boot_urls = true\n{MINIMAL}"
    ));
    assert_eq!(
        c.http.https,
        Some(HttpsSettings {
            port: 8443,
            identity: TlsIdentity::Files {
                cert: PathBuf::from("/etc/stampede/boot.pem"),
                key: PathBuf::from("/etc/stampede/boot.key"),
            },
            boot_urls: true,
        })
    );
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = parse(MINIMAL);
    assert_eq!(c.server.http_port, 8080);
    assert_eq!(c.server.api, "127.0.0.1:7070".parse().expect("address"));
    assert_eq!(c.server.api_tls, None, "plain HTTP on loopback");
    assert_eq!(c.server.workers, None, "all cores");
    assert_eq!(
        c.dhcp.mode,
        DhcpMode::Proxy,
        "safe beside a LAN DHCP server"
    );
    assert_eq!(c.boot.ipxe_dir, PathBuf::from("/usr/lib/ipxe"));
    assert_eq!(c.boot.loaders, Loaders::default());
    assert_eq!(c.tftp.server.max_blksize, 1468);
    assert_eq!(c.tftp.server.max_windowsize, 16);
    assert_eq!(c.tftp.server.limits, tftp::TransferLimits::default());
    assert_eq!(c.http.server, http::ServerConfig::default());
    assert_eq!(c.xdp, Some(AttachMode::Auto));
    assert_eq!(c.boot.default_profile, Some(0));
}

#[test]
fn afxdp_is_off_unless_asked_for() {
    assert_eq!(parse(MINIMAL).afxdp, AfXdpChoice::Off);
    for (text, want) in [
        ("off", AfXdpChoice::Off),
        ("auto", AfXdpChoice::Auto),
        ("on", AfXdpChoice::On),
    ] {
        let c = parse(&format!(
            "{MINIMAL}\n[xdp]\nmode = \"native\"\nafxdp = \"{text}\"\n"
        ));
        assert_eq!(c.afxdp, want, "{text}");
        assert_eq!(c.xdp, Some(AttachMode::Native));
    }
    let e = refused("[xdp]\nafxdp = \"yes\"");
    assert!(e.to_string().contains("yes"), "{e}");
}

#[test]
fn syntax_and_unknown_keys_report_line_and_column() {
    let e = ApplianceConfig::from_toml_str("[server]\nhttp_port = 80\nhtp_port = 1\n")
        .expect_err("misspelt key");
    let ConfigError::Toml { line, message, .. } = &e else {
        panic!("expected a TOML error, got {e}");
    };
    assert_eq!(*line, 3, "{e}");
    assert!(message.contains("htp_port"), "{e}");
    let e = ApplianceConfig::from_toml_str("[boot\nroot = 1").expect_err("bad syntax");
    assert!(matches!(e, ConfigError::Toml { line: 1, .. }), "{e}");
    let e = refused("[dhcp]\nmode = \"dhcp\"");
    assert!(e.to_string().contains("dhcp"), "{e}");
}

/// Every validation error names its key; the message says what is wrong.
#[test]
fn each_invalid_value_names_its_key() {
    let pool = |range: &str, subnet: &str| {
        format!(
            "[server]\ninterfaces = [\"eth1\"]\n[dhcp]\nmode = \"authoritative\"\n\
                 [[dhcp.pools]]\nrange = \"{range}\"\nsubnet = \"{subnet}\"\n"
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
            (
                pool("198.18.0.50-198.18.0.10", "198.18.0.0/24"),
                "dhcp.pools[0].range",
                "start 198.18.0.50 is after end 198.18.0.10",
            ),
            (pool("198.18.1.1-198.18.1.9", "198.18.0.0/24"), "dhcp.pools[0].range", "outside subnet"),
            (pool("198.18.0.1-198.18.0.9", "198.18.0.5/24"), "dhcp.pools[0].subnet", "did you mean 198.18.0.0/24"),
            (pool("198.18.0.1", "198.18.0.0/24"), "dhcp.pools[0].range", "not a range"),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24") + "lease_time = \"12 parsecs\"",
                "dhcp.pools[0].lease_time",
                "not a duration",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24") + "lease_time = 5",
                "dhcp.pools[0].lease_time",
                "out of range",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24") + "router = \"10.0.0.1\"",
                "dhcp.pools[0].router",
                "outside subnet",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24")
                    + "[[dhcp.pools]]\nrange = \"198.18.0.10-198.18.0.20\"\nsubnet = \"198.18.0.0/25\"",
                "dhcp.pools[1].subnet",
                "overlaps dhcp.pools[0]",
            ),
            (
                pool("198.18.0.1-198.18.0.9", "198.18.0.0/24")
                    + "[[dhcp.reservations]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.1.1.1\"",
                "dhcp.reservations[0].ip",
                "inside no pool",
            ),
            (
                "[dhcp]\nmode = \"authoritative\"\n[[dhcp.pools]]\nrange = \"198.18.0.1-198.18.0.9\"\nsubnet = \"198.18.0.0/24\"".into(),
                "server.interfaces",
                "needs server.interfaces",
            ),
            ("[server]\ninterfaces = [\"eth1\"]\n[dhcp]\nmode = \"authoritative\"".into(), "dhcp.pools", "at least one"),
            (
                "[[dhcp.pools]]\nrange = \"198.18.0.1-198.18.0.9\"\nsubnet = \"198.18.0.0/24\"".into(),
                "dhcp.pools",
                "only used with mode = \"authoritative\"",
            ),
            (
                "[[dhcp.reservations]]\nmac = \"52:54:00:00:00\"\nip = \"10.1.1.1\"".into(),
                "dhcp.reservations[0].mac",
                "not a MAC",
            ),
            ("[server]\ninterfaces = [\"eth1\", \"eth1\"]".into(), "server.interfaces[1]", "already used by server.interfaces[0]"),
            ("[server]\ninterfaces = [\"a very long name\"]".into(), "server.interfaces[0]", "not an interface name"),
            (
                "[server]\ninterfaces = [\"eth1\", \"eth2\"]\naddress = \"198.18.0.1\"".into(),
                "server.address",
                "2 interfaces",
            ),
            ("[server]\nhttp_port = 0".into(), "server.http_port", "out of range"),
            ("[server]\nworkers = 0".into(), "server.workers", "out of range"),
            ("[server]\napi = \"localhost\"".into(), "server.api", "not a socket address"),
            ("[server]\napi_tls_cert = \"/etc/stampede/api.pem\"".into(), "server.api_tls_key", "set both or neither"),
            ("[server]\napi_tls_key = \"/etc/stampede/api.key\"".into(), "server.api_tls_cert", "set both or neither"),
            ("[http]\ntls_cert = \"/etc/stampede/boot.pem\"".into(), "http.tls_cert", "only means something with http.https_port set"),
            ("[http]\nhttps_boot_urls = true".into(), "http.https_boot_urls", "only means something with http.https_port set"),
            ("[http]\nhttps_port = 0".into(), "http.https_port", "out of range"),
            ("[http]\nhttps_port = 8443\ntls_cert = \"/etc/stampede/boot.pem\"".into(), "http.tls_key", "set both or neither"),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\ncmdline = \"ip={macc}\"".into(),
                "profiles[1].cmdline",
                "unknown placeholder {macc}",
            ),
            ("[[profiles]]\nname = \"x\"\nkernel = \"../etc/passwd\"".into(), "profiles[1].kernel", "`..`"),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\ninitrds = [\"a/i.img\", \"b/i.img\"]".into(),
                "profiles[1].initrds",
                "two initrds",
            ),
            ("[[profiles]]\nname = \"live\"\nkernel = \"k\"".into(), "profiles[1].name", "already used by profiles[0]"),
            ("[[profiles]]\nname = \"x\"".into(), "profiles[1].kernel", "give a kernel, or a root image"),
            ("[[profiles]]\nname = \"x\"\nroot = \"small\"".into(), "profiles[1].root", "\"small\" was not resolved"),
            ("[[profiles]]\nname = \"a b\"\nkernel = \"k\"".into(), "profiles[1].name", "not a name"),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\n[profiles.arch.efi-x64]\nkernel = \"k2\"".into(),
                "profiles[1].arch.efi-x64",
                "expected x86-bios, x86_64-efi or arm64-efi",
            ),
            (
                "[[profiles]]\nname = \"x\"\nkernel = \"k\"\n[profiles.arch.x86_64-efi]\ncmdline = \"a\\\\b\"".into(),
                "profiles[1].arch.x86_64-efi.cmdline",
                "not allowed",
            ),
            ("[[machines]]\nmac = \"52:54:00:00:00:01\"\nprofile = \"rescue\"".into(), "machines[0].profile", "no profile named \"rescue\""),
            ("[[machines]]\nprofile = \"live\"".into(), "machines[0]", "needs a mac or a uuid"),
            ("[[machines]]\nuuid = \"1234\"".into(), "machines[0].uuid", "not a UUID"),
            ("[[machines]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"-bad\"".into(), "machines[0].hostname", "not a host name"),
            (
                "[[machines]]\nmac = \"52:54:00:00:00:01\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA x\\nssh-rsa BBBB y\"]".into(),
                "machines[0].ssh_authorized_keys[0]",
                "only printable ASCII on one line",
            ),
            (
                "[[machines]]\nmac = \"52:54:00:00:00:01\"\nssh_authorized_keys = [\"just words\"]".into(),
                "machines[0].ssh_authorized_keys[0]",
                "no key type",
            ),
            (
                "[[machines]]\nmac = \"52:54:00:00:00:01\"\n[[machines]]\nmac = \"52-54-00-00-00-01\"".into(),
                "machines[1].mac",
                "52:54:00:00:00:01 is already used by machines[0]",
            ),
            ("[tftp]\nmax_windowsize = 65".into(), "tftp.max_windowsize", "65 is out of range 1..=64"),
            ("[tftp]\nmax_blksize = 4".into(), "tftp.max_blksize", "out of range 8..=65464"),
            ("[tftp]\nidle_timeout = \"2x\"".into(), "tftp.idle_timeout", "not a duration"),
            ("[http]\nmax_connections = 0".into(), "http.max_connections", "out of range"),
            ("[xdp]\ndhcp_rate = 0".into(), "xdp.dhcp_rate", "0 is out of range 1..=100000"),
            ("[xdp]\ndhcp_burst = 0".into(), "xdp.dhcp_burst", "out of range"),
            ("[xdp]\ntftp_rate = 2000000".into(), "xdp.tftp_rate", "out of range 1..=1000000"),
            ("[xdp]\ntftp_burst = 0".into(), "xdp.tftp_burst", "out of range"),
            ("[xdp]\ndeny = [\"52:54:00:00:00\"]".into(), "xdp.deny[0]", "not a MAC"),
            (
                "[xdp]\ndeny = [\"52:54:00:00:00:01\", \"52-54-00-00-00-01\"]".into(),
                "xdp.deny[1]",
                "52:54:00:00:00:01 is already used by xdp.deny[0]",
            ),
        ];
    for (extra, key, text) in cases {
        let e = refused(&extra);
        assert_eq!(e.key(), Some(key), "wrong key for:\n{extra}\nerror: {e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{key}: ")), "{msg}");
        assert!(msg.contains(text), "{msg:?} should say {text:?}");
    }
}

#[test]
fn structural_errors_name_their_key() {
    let e = ApplianceConfig::from_toml_str("[boot]\nroot = \"/srv\"\n").expect_err("no profiles");
    assert_eq!(
        e.to_string(),
        "profiles: at least one [[profiles]] is needed"
    );
    let e = ApplianceConfig::from_toml_str(
        "[boot]\ndefault_profile = \"x\"\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\n",
    )
    .expect_err("nothing to serve");
    assert_eq!(e.key(), Some("boot.root"), "{e}");
    let e = ApplianceConfig::from_toml_str(
            "[boot]\nfiles = { k = \"/tmp/k\" }\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\ninitrds = [\"i\"]\n",
        )
        .expect_err("initrd not listed");
    assert_eq!(
        e.to_string(),
        "profiles[0].initrds: \"i\" is not in boot.files, and boot.root is not set"
    );
    let e = ApplianceConfig::from_toml_str(
            "[boot]\nroot = \"/srv\"\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\n[[machines]]\nmac = \"52:54:00:00:00:01\"\n",
        )
        .expect_err("machine without a profile and no default");
    assert_eq!(
        e.to_string(),
        "machines[0].profile: no profile given and boot.default_profile is not set"
    );
    parse(MINIMAL);
}

#[test]
fn xdp_policy_keys_and_mac_lists() {
    let e = refused("[xdp]\npolicy = \"closed\"");
    assert!(
        e.to_string().contains("open") && e.to_string().contains("known-only"),
        "the error lists the choices: {e}"
    );
    let c = parse(MINIMAL);
    assert_eq!(c.xdp_filter, XdpFilterSettings::default());
    assert_eq!(c.xdp_filter.policy(), XdpPolicy::permissive());
    assert_eq!(
        c.xdp_mac_lists(),
        XdpMacLists::default(),
        "open, nothing denied"
    );

    let text = format!(
        "{MINIMAL}\n[xdp]\npolicy = \"known-only\"\ndhcp_rate = 2\ndhcp_burst = 4\n\
             tftp_rate = 100\ntftp_burst = 50\ndeny = [\"52:54:00:00:00:0f\"]\n\
             [[machines]]\nmac = \"52:54:00:00:00:01\"\n\
             [[machines]]\nmac = \"52:54:00:00:00:02\"\nallow = false\n\
             [[machines]]\nuuid = \"4c4c4544-004d-5910-8052-b2c04f353032\"\n"
    );
    let c = parse(&text);
    assert_eq!(
        c.xdp_filter.policy(),
        XdpPolicy {
            dhcp_rate_per_sec: 2,
            dhcp_burst: 4,
            tftp_rate_per_sec: 100,
            tftp_burst: 50,
            known_only: 1,
        }
    );
    let lists = c.xdp_mac_lists();
    let mac = |last| [0x52, 0x54, 0, 0, 0, last];
    assert_eq!(lists.deny, BTreeSet::from([mac(0x0f), mac(0x02)]));
    assert_eq!(lists.allow, BTreeSet::from([mac(0x01)]));
    assert_eq!(lists.uuid_only, 1);

    // Open mode: the same machines, no allow list; denied machines are still denied.
    let c = parse(&text.replace("known-only", "open"));
    let lists = c.xdp_mac_lists();
    assert_eq!(lists.deny.len(), 2);
    assert!(lists.allow.is_empty());
    assert_eq!(lists.uuid_only, 0);
}

#[test]
fn secure_boot_is_a_profile_setting_with_the_chain_served_by_name() {
    let c = parse(&format!("{MINIMAL}secure_boot = \"shim\"\n"));
    assert_eq!(c.profiles[0].secure_boot, Some(SecureBoot::Shim));
    let shim = BootPath::parse(SHIM_NAME.as_bytes()).expect("path");
    assert_eq!(
        c.boot.files.get(&shim),
        Some(&PathBuf::from(defaults::SHIM))
    );
    assert_eq!(
        refused("secure_boot = \"tpm\"\n").to_string(),
        "profiles[0].secure_boot: \"tpm\" is not a Secure Boot chain: expected \"shim\""
    );
    // Without a Secure Boot profile the chain is not served.
    assert!(parse(MINIMAL).boot.files.is_empty());
    let q = ApplianceConfig::quick(QuickBoot {
        kernel: "/k/vmlinuz".into(),
        secure_boot: Some(SecureBoot::Shim),
        grub: Some("/g/grubnetx64.efi.signed".into()),
        ..QuickBoot::default()
    })
    .expect("valid");
    let grub = BootPath::parse(GRUB_NAME.as_bytes()).expect("path");
    assert_eq!(
        q.boot.files.get(&grub),
        Some(&PathBuf::from("/g/grubnetx64.efi.signed"))
    );
    assert_eq!(
        q.boot.files.get(&shim),
        Some(&PathBuf::from(defaults::SHIM))
    );
}

#[test]
fn denied_machine_needs_no_profile() {
    let c = ApplianceConfig::from_toml_str(
        "[boot]\nroot = \"/srv\"\n[[profiles]]\nname = \"x\"\nkernel = \"k\"\n\
             [[machines]]\nmac = \"52:54:00:00:00:01\"\nallow = false\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.machines[0].allow);
    assert_eq!(c.profile_of(&c.machines[0]), None);
}

#[test]
fn value_parsers() {
    assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
    for bad in ["", "h", "1y", "1.5h", "-1s", "1h 30m"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    assert_eq!(
        parse_mac("52:54:00:AB:cd:ef"),
        Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
    );
    assert!(parse_mac("52:54:00:ab:cd:ef:00").is_err());
    assert!(parse_mac("5254.00ab.cdef").is_err());
    let uuid = parse_uuid("4c4c4544-004d-5910-8052-b2c04f353032").expect("uuid");
    assert_eq!(
        ipxe::format_uuid(&uuid),
        "4c4c4544-004d-5910-8052-b2c04f353032"
    );
    assert_eq!(parse_uuid("4c4c4544004d59108052b2c04f353032"), Ok(uuid));
    assert_eq!(
        parse_subnet("10.0.0.0/8"),
        Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
    );
    assert_eq!(parse_subnet("0.0.0.0/0"), Ok((Ipv4Addr::UNSPECIFIED, 0)));
    assert!(parse_subnet("10.0.0.0/33").is_err());
    assert_eq!(line_column("ab\ncde\nf", 5), (2, 3));
}

#[test]
fn quick_mode_is_proxy_unless_given_a_range() {
    let q = QuickBoot {
        kernel: "/tmp/build/vmlinuz".into(),
        initrds: vec!["/tmp/build/initrd.img".into(), "/opt/x/modules.cpio".into()],
        cmdline: "console=ttyS0 host={mac}".into(),
        ..QuickBoot::default()
    };
    let c = ApplianceConfig::quick(q.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
    assert!(c.server.interfaces.is_empty());
    assert_eq!(c.profiles[0].boot.default.kernel, "vmlinuz");
    assert_eq!(
        c.profiles[0].boot.default.initrds,
        ["initrd.img", "modules.cpio"]
    );
    assert_eq!(
        c.boot
            .files
            .get(&BootPath::parse(b"modules.cpio").expect("path")),
        Some(&PathBuf::from("/opt/x/modules.cpio"))
    );
    assert_eq!(c.boot.default_profile, Some(0));
    assert!(!c.boot.ipxe_chainload, "off unless asked for");
    let chained = ApplianceConfig::quick(QuickBoot {
        chainload: true,
        ..q.clone()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(chained.boot.ipxe_chainload);

    let e = ApplianceConfig::quick(QuickBoot {
        dhcp_range: Some((
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 0, 200),
        )),
        ..q.clone()
    })
    .expect_err("authoritative without an interface");
    assert_eq!(e.key(), Some("server.interfaces"));

    let c = ApplianceConfig::quick(QuickBoot {
        iface: Some("eth1".into()),
        dhcp_range: Some((
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 0, 200),
        )),
        ..q.clone()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dhcp.mode, DhcpMode::Authoritative);
    let pool = &c.dhcp.pools[0];
    assert_eq!(
        (pool.subnet, pool.prefix_len),
        (Ipv4Addr::new(198, 18, 0, 0), 24)
    );

    let e = ApplianceConfig::quick(QuickBoot {
        initrds: vec!["/a/vmlinuz".into()],
        ..q.clone()
    })
    .expect_err("two files named vmlinuz");
    assert_eq!(e.key(), Some("initrds[0]"), "{e}");
    let e = ApplianceConfig::quick(QuickBoot {
        cmdline: "root=$x".into(),
        ..q
    })
    .expect_err("hostile cmdline");
    assert_eq!(e.key(), Some("profiles[0].cmdline"), "{e}");
}

#[test]
fn a_dhcp_range_or_pool_off_the_link_is_refused_naming_both_networks() {
    let q = QuickBoot {
        iface: Some("eth1".into()),
        kernel: "/tmp/build/vmlinuz".into(),
        dhcp_range: Some((Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 50))),
        link: Some((Ipv4Addr::new(198, 18, 0, 1), 24)),
        ..QuickBoot::default()
    };
    let e = ApplianceConfig::quick(q.clone()).expect_err("a range of another network");
    assert_eq!(
        e.to_string(),
        "--dhcp-range: 10.0.0.10-10.0.0.50 is not in eth1's network 198.18.0.0/24"
    );
    let e = ApplianceConfig::quick(QuickBoot {
        dhcp_range: Some((
            Ipv4Addr::new(198, 18, 0, 200),
            Ipv4Addr::new(198, 18, 1, 20),
        )),
        ..q.clone()
    })
    .expect_err("a range running past the network");
    assert_eq!(e.key(), Some("--dhcp-range"), "{e}");
    // On the link, the pool takes the interface's prefix (not the /24 the range suggests).
    let c = ApplianceConfig::quick(QuickBoot {
        dhcp_range: Some((Ipv4Addr::new(198, 18, 5, 10), Ipv4Addr::new(198, 18, 5, 50))),
        link: Some((Ipv4Addr::new(198, 18, 0, 1), 16)),
        ..q
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let pool = &c.dhcp.pools[0];
    assert_eq!(
        (pool.subnet, pool.prefix_len),
        (Ipv4Addr::new(198, 18, 0, 0), 16)
    );
    c.dhcp
        .check_link("eth1", Ipv4Addr::new(198, 18, 0, 1), 16)
        .unwrap_or_else(|e| panic!("{e}"));

    let file = |subnet: &str, range: &str| {
        parse(&format!(
            "{MINIMAL}\n[server]\ninterfaces = [\"eth1\"]\n[dhcp]\nmode = \"authoritative\"\n\
                 [[dhcp.pools]]\nsubnet = \"{subnet}\"\nrange = \"{range}\"\n\
                 [[dhcp.pools]]\nsubnet = \"198.19.7.0/24\"\nrange = \"198.19.7.10-198.19.7.20\"\n"
        ))
    };
    let server = Ipv4Addr::new(198, 18, 0, 1);
    let e = file("10.0.0.0/24", "10.0.0.10-10.0.0.50")
        .dhcp
        .check_link("eth1", server, 24)
        .expect_err("no pool on the link");
    assert_eq!(
        e.to_string(),
        "dhcp.pools: no pool is on eth1's network 198.18.0.0/24 (the pools are on \
             10.0.0.0/24, 198.19.7.0/24): machines on the link would be handed addresses of \
             another network"
    );
    let e = file("198.18.0.0/16", "198.18.3.10-198.18.3.50")
        .dhcp
        .check_link("eth1", server, 24)
        .expect_err("a range beyond the interface's network");
    assert_eq!(
        e.to_string(),
        "dhcp.pools[0].range: 198.18.3.10-198.18.3.50 is not in eth1's network 198.18.0.0/24"
    );
    // A relayed network's pool beside the link's own is fine.
    file("198.18.0.0/24", "198.18.0.10-198.18.0.50")
        .dhcp
        .check_link("eth1", server, 24)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn quick_mode_refuses_a_hostname_it_cannot_know() {
    let q = QuickBoot {
        kernel: "/tmp/build/vmlinuz".into(),
        cmdline: "console=ttyS0 hostname={hostname}".into(),
        ..QuickBoot::default()
    };
    let e = ApplianceConfig::quick(q.clone()).expect_err("no host names in quick mode");
    assert_eq!(e.key(), Some("--cmdline"), "{e}");
    assert!(
        e.to_string()
            .contains("{hostname} needs each machine's host name"),
        "{e}"
    );
    for fine in [
        "literal={{hostname}}",
        "host={mac} ip={ip} arch={arch} id={uuid}",
    ] {
        ApplianceConfig::quick(QuickBoot {
            cmdline: fine.into(),
            ..q.clone()
        })
        .unwrap_or_else(|e| panic!("{fine}: {e}"));
    }
}

#[test]
fn every_error_of_a_file_is_reported_not_only_the_first() {
    let text = r#"
[server]
interfaces = ["eth1"]
http_port = 0
[dhcp]
mode = "authoritative"
[[dhcp.pools]]
subnet = "198.18.0.0/24"
range = "198.18.0.50-198.18.0.10"
[[dhcp.pools]]
subnet = "198.18.9.0/24"
range = "198.18.9.10-198.18.9.20"
[[dhcp.reservations]]
mac = "52:54:00:00:00:zz"
ip = "198.18.9.5"
[boot]
root = "/srv/boot"
default_profile = "live"
[[profiles]]
name = "live"
kernel = "vmlinuz"
cmdline = "console=ttyS0 {macc}"
[[profiles]]
name = "rescue"
kernel = "../etc/shadow"
[[machines]]
mac = "52:54:00:00:00:01"
profile = "live"
[[machines]]
mac = "not-a-mac"
[[machines]]
mac = "52:54:00:00:00:03"
profile = "nope"
[tftp]
max_blksize = 1
"#;
    let wire = wire::Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
    let errors = ApplianceConfig::all_errors(&wire);
    let keys: Vec<&str> = errors.iter().filter_map(ConfigError::key).collect();
    assert_eq!(
        keys,
        [
            "server.http_port",
            "profiles[0].cmdline",
            "profiles[1].kernel",
            "dhcp.pools[0].range",
            "dhcp.reservations[0].mac",
            "machines[1].mac",
            "machines[2].profile",
            "tftp.max_blksize",
        ],
        "{errors:#?}"
    );
    let first = ApplianceConfig::try_from(wire).expect_err("refused");
    assert_eq!(first, errors[0], "the first is the one TryFrom reports");
    let fine = wire::Config::from_toml_str(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ApplianceConfig::all_errors(&fine), []);
}
