//! Peers from Debian's packages, run in the lab beside (or instead of) Stampede: the reference
//! implementations the tests prove the lab with and the benchmarks compare against.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    LabError, Process,
    guest::{INITRD_NAME, Payload},
    qemu::{BootLab, MachineError, WorkDir},
    wait_for,
};

/// dnsmasq as DHCP + TFTP server in the lab's server namespace, logging to a file.
#[derive(Debug)]
pub struct Dnsmasq {
    _process: Process,
    log: PathBuf,
}

impl Dnsmasq {
    /// dnsmasq with `--no-ping`, its realistic fast setting (LAB.md: the ping before each offer
    /// costs ~3 s). BIOS PXE gets `undionly.kpxe`, UEFI PXE `snponly.efi` (both from
    /// `tftp_root`), UEFI HTTP Boot the URL of `snponly.efi` on the server, and iPXE (which sends
    /// option 175) `ipxe_script`: a TFTP name or an HTTP URL.
    pub fn start(
        lab: &BootLab,
        work: &WorkDir,
        tftp_root: &Path,
        ipxe_script: &str,
    ) -> Result<Self, MachineError> {
        let log = work.join("dnsmasq.log");
        let (low, high) = lab.dhcp_range();
        let server = lab.server_ip();
        let args = [
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--port=0".to_owned(), // no DNS
            format!("--interface={}", lab.server_if),
            "--bind-interfaces".to_owned(),
            format!("--dhcp-range={low},{high},255.255.255.0,10m"),
            format!("--dhcp-leasefile={}", work.join("leases").display()),
            "--no-ping".to_owned(),
            "--log-dhcp".to_owned(),
            format!("--log-facility={}", log.display()),
            "--enable-tftp".to_owned(),
            format!("--tftp-root={}", tftp_root.display()),
            // Stage 2 (iPXE, which sends option 175) gets the script; stage 1 gets iPXE itself.
            "--dhcp-match=set:ipxe,175".to_owned(),
            "--dhcp-match=set:efi64,option:client-arch,7".to_owned(),
            // UEFI HTTP Boot: the offer must echo vendor class `HTTPClient` and carry a URL.
            "--dhcp-vendorclass=set:http,HTTPClient".to_owned(),
            "--dhcp-option-force=tag:http,tag:!ipxe,60,HTTPClient".to_owned(),
            format!("--dhcp-boot=tag:ipxe,{ipxe_script}"),
            format!("--dhcp-boot=tag:!ipxe,tag:http,http://{server}/snponly.efi"),
            format!("--dhcp-boot=tag:!ipxe,tag:!http,tag:efi64,snponly.efi,,{server}"),
            format!("--dhcp-boot=tag:!ipxe,tag:!http,tag:!efi64,undionly.kpxe,,{server}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = lab.server.spawn("dnsmasq", &args)?;
        // dnsmasq creates the log at start-up; wait for it so a bad flag fails here.
        if wait_for(Duration::from_secs(10), || log.exists().then_some(())).is_none() {
            return Err(MachineError::Lab(LabError::Timeout {
                command: format!("dnsmasq (no {})", log.display()),
                timeout: Duration::from_secs(10),
            }));
        }
        Ok(Self {
            _process: process,
            log,
        })
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(no log: {err})"))
    }
}

/// The iPXE script dnsmasq hands out: kernel and initramfs from the same server (relative names
/// resolve against the script's own URL, TFTP or HTTP), marker on the command line.
pub fn boot_script(payload: &Payload, marker: &str) -> String {
    format!(
        "#!ipxe\necho Stampede lab: booting {marker}\nkernel vmlinuz {cmdline}\n\
         initrd {INITRD_NAME}\nboot\n",
        cmdline = payload.cmdline(marker)
    )
}

/// A TFTP root (world-readable: dnsmasq drops privileges) holding the payload, Debian's iPXE
/// builds and a `boot.ipxe` that boots the payload with `marker`.
pub fn tftp_root(work: &WorkDir, payload: &Payload, marker: &str) -> Result<PathBuf, MachineError> {
    let root = work.subdir("tftp")?;
    work.copy_in(&root, "vmlinuz", &payload.kernel)?;
    work.copy_in(&root, INITRD_NAME, &payload.initrd)?;
    work.copy_in(&root, "snponly.efi", Path::new("/usr/lib/ipxe/snponly.efi"))?;
    work.copy_in(
        &root,
        "undionly.kpxe",
        Path::new("/usr/lib/ipxe/undionly.kpxe"),
    )?;
    work.write(&root, "boot.ipxe", boot_script(payload, marker))?;
    Ok(root)
}
