//! The servers under test: Stampede and its peers (dnsmasq, tftpd-hpa, atftpd, nginx), started
//! in the lab's server namespace and stopped on drop.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use stampede_lab::{Netns, Process, wait_for};

use super::{Files, Lab, SERVER_IP};

/// A server under test, stopped on drop.
pub(super) struct Server {
    pub(super) processes: Vec<Process>,
    pub(super) pids: Vec<u32>,
}

fn bound(ns: &Netns, what: &str) -> bool {
    wait_for(Duration::from_secs(20), || {
        let out = ns.run("ss", &["-ulntH"], Duration::from_secs(5)).ok()?;
        out.stdout.contains(what).then_some(())
    })
    .is_some()
}

/// A config file for `stampede serve`: the lab's pool, the storm's machines as the fleet and
/// XDP in known-only mode (what an operator facing floods runs).
pub(super) fn known_only_config(lab: &Lab, f: &Files, macs: &[String]) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "[server]\ninterfaces = [\"{iface}\"]\naddress = \"{SERVER_IP}\"\napi = \"127.0.0.1:7070\"\n\
         router_advertisements = \"off\"\n\n[dhcp]\nmode = \"authoritative\"\n\n[[dhcp.pools]]\n\
         range = \"198.19.1.0-198.19.254.254\"\nsubnet = \"198.19.0.0/16\"\nlease_time = \"1h\"\n\n\
         [boot]\nroot = \"{root}\"\nipxe_dir = \"{ipxe}\"\ndefault_profile = \"storm\"\n\n\
         [[profiles]]\nname = \"storm\"\nkernel = \"vmlinuz\"\ninitrds = [\"initrd.img\"]\n\n\
         [xdp]\nmode = \"auto\"\npolicy = \"known-only\"\n\n",
        iface = lab.server_if,
        root = f.kernel.parent().context("files dir")?.display(),
        ipxe = f.ipxe.display(),
    );
    for mac in macs {
        let _ = writeln!(text, "[[machines]]\nmac = \"{mac}\"\n");
    }
    let path = f.root.join("known-only.toml");
    fs::write(&path, text)?;
    Ok(path)
}

/// Starts Stampede in the server namespace: `serve --config` when given one, else `boot` with
/// the lab's range, the storm's files and `boot_extra` (more files, served at `/files/<name>`,
/// and flags). Its open-file limit is raised to the hard limit, as the peers'.
pub(super) fn start_stampede(
    lab: &Lab,
    f: &Files,
    binary: &Path,
    tag: &str,
    config: Option<&Path>,
    boot_extra: &[String],
) -> anyhow::Result<Server> {
    let state = f.root.join(format!("stampede-{tag}.redb"));
    let _ = fs::remove_file(&state);
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let mut command = lab.server.command("prlimit");
    command
        .arg(format!("--nofile={hard}:{hard}"))
        .arg(binary.to_str().context("UTF-8 path")?);
    match config {
        Some(config) => {
            command.args(["serve", "--config"]).arg(config);
        }
        None => {
            command
                .args(["boot", "--iface", &lab.server_if])
                .args(["--dhcp-range", "198.19.1.0-198.19.254.254"])
                .args(["--ipxe-dir"])
                .arg(&f.ipxe)
                .args(["--api", "off", "--router-advertisements", "off"])
                .args(["--xdp-mode", "auto"])
                .arg(&f.kernel)
                .arg(&f.initrd)
                .args(boot_extra);
        }
    }
    command
        .args(["--stats-interval", "3600"])
        .arg("--state")
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let process = Process::spawn(command)?;
    let pid = process.id().context("stampede pid")?;
    if !bound(&lab.server, &format!("{SERVER_IP}:69 ")) && !bound(&lab.server, ":69 ") {
        bail!("stampede did not come up");
    }
    Ok(Server {
        processes: vec![process],
        pids: vec![pid],
    })
}

/// The peers a storm runs against: dnsmasq for DHCP and TFTP, nginx for HTTP.
pub(super) fn start_peers(lab: &Lab, f: &Files, clients: usize) -> anyhow::Result<Server> {
    let dnsmasq = start_dnsmasq(lab, f, clients, true)?;
    let nginx = start_nginx(lab, f, None, clients as u64 + 1000)?;
    Ok(dnsmasq.with(nginx))
}

/// dnsmasq for DHCP (the lab's pool; PXE and iPXE boot files as in a real deployment) and, with
/// `tftp`, TFTP from the iPXE directory. Without `tftp` it answers DHCP only and names this
/// server as the TFTP server (another peer serves TFTP).
pub(super) fn start_dnsmasq(
    lab: &Lab,
    f: &Files,
    clients: usize,
    tftp: bool,
) -> anyhow::Result<Server> {
    // dnsmasq as a boot server is usually run with its defaults; two would make a storm of
    // this size fail outright, so they are raised to fit it (and said so in the report):
    // --dhcp-lease-max (default 1000) and --tftp-max (default 50), with the open-file limit
    // its TFTP sockets need.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let mut args = vec![
        format!("--nofile={hard}:{hard}"),
        "dnsmasq".to_owned(),
        "--keep-in-foreground".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        "--port=0".to_owned(),
        format!("--interface={}", lab.server_if),
        "--bind-interfaces".to_owned(),
        "--dhcp-range=198.19.1.0,198.19.254.254,255.255.0.0,1h".to_owned(),
        format!("--dhcp-lease-max={}", clients + 1000),
        format!(
            "--dhcp-leasefile={}",
            f.root.join("dnsmasq.leases").display()
        ),
        "--no-ping".to_owned(),
        "--dhcp-match=set:ipxe,175".to_owned(),
        "--dhcp-match=set:efi64,option:client-arch,7".to_owned(),
        format!("--dhcp-boot=tag:ipxe,http://{SERVER_IP}/boot.ipxe"),
        format!("--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,{SERVER_IP}"),
        format!("--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,{SERVER_IP}"),
        "--log-facility=/dev/null".to_owned(),
    ];
    if tftp {
        args.extend([
            "--enable-tftp".to_owned(),
            format!("--tftp-root={}", f.ipxe.display()),
            format!("--tftp-max={}", clients.max(50)),
        ]);
    }
    let _ = fs::remove_file(f.root.join("dnsmasq.leases"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dnsmasq = lab.server.spawn("prlimit", &args)?;
    if !bound(&lab.server, ":67 ") || (tftp && !bound(&lab.server, ":69 ")) {
        bail!("dnsmasq did not come up");
    }
    let pid = dnsmasq.id().context("dnsmasq pid")?;
    Ok(Server {
        processes: vec![dnsmasq],
        pids: vec![pid],
    })
}

/// A TFTP server from Debian serving the iPXE directory on the lab address: tftpd-hpa
/// (`in.tftpd`, one process forked per transfer; no windowsize, RFC 7440) or atftpd (threads,
/// windowsize; unpacked by setup beside tftpd-hpa, whose package conflicts with it).
pub(super) fn start_tftp_peer(
    lab: &Lab,
    f: &Files,
    peer: &str,
    clients: usize,
) -> anyhow::Result<Server> {
    let root = f.ipxe.display().to_string();
    let process = match peer {
        "tftpd-hpa" => lab.server.spawn(
            "in.tftpd",
            &[
                "--foreground",
                "--address",
                &format!("{SERVER_IP}:69"),
                "--secure",
                &root,
            ],
        )?,
        "atftpd" => {
            let binary = Path::new(crate::setup::EXTRACTED_DIR).join("atftpd/usr/sbin/atftpd");
            lab.server.spawn(
                binary.to_str().context("UTF-8 path")?,
                &[
                    "--daemon",
                    "--no-fork",
                    "--port",
                    "69",
                    "--bind-address",
                    SERVER_IP,
                    "--maxthread",
                    &clients.max(100).to_string(),
                    "--logfile",
                    "/dev/null",
                    &root,
                ],
            )?
        }
        other => bail!("unknown TFTP peer {other}"),
    };
    if !bound(&lab.server, &format!("{SERVER_IP}:69 ")) {
        bail!("{peer} did not come up (run `cargo xtask setup`)");
    }
    let pid = process.id().context("TFTP peer pid")?;
    Ok(Server {
        processes: vec![process],
        pids: vec![pid],
    })
}

/// nginx serving `www/` on port 80 with sendfile, `workers` worker processes (default: one per
/// core) and room for `connections` connections.
pub(super) fn start_nginx(
    lab: &Lab,
    f: &Files,
    workers: Option<usize>,
    connections: u64,
) -> anyhow::Result<Server> {
    start_nginx_at(lab, &f.root, &f.www, workers, connections)
}

/// [`start_nginx`] serving `www`, its configuration and temporary files in `dir`.
pub(super) fn start_nginx_at(
    lab: &Lab,
    dir: &Path,
    www: &Path,
    workers: Option<usize>,
    connections: u64,
) -> anyhow::Result<Server> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes {workers};\nworker_rlimit_nofile {hard};\n\
             error_log stderr error;\npid {pid};\n\
             events {{ worker_connections {conns}; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
               client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n\
               uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
               types {{ application/octet-stream img; }}\n  default_type application/octet-stream;\n\
               server {{ listen {SERVER_IP}:80 reuseport; root {www}; }}\n}}\n",
            workers = workers.map_or("auto".to_owned(), |n| n.to_string()),
            pid = dir.join("nginx.pid").display(),
            conns = hard.saturating_sub(100).min(connections),
            tmp = dir.display(),
            www = www.display(),
        ),
    )?;
    let nginx = lab.server.spawn(
        "nginx",
        &["-c", conf.to_str().context("UTF-8")?, "-e", "stderr"],
    )?;
    if !bound(&lab.server, &format!("{SERVER_IP}:80 ")) {
        bail!("nginx did not come up");
    }
    // CPU is counted for nginx's master and its workers.
    let master = nginx.id().context("nginx pid")?;
    let mut pids = vec![master];
    // The workers are forked once the master has read its configuration; wait for them.
    let want = workers.unwrap_or(1);
    let children = wait_for(Duration::from_secs(10), || {
        let text = fs::read_to_string(format!("/proc/{master}/task/{master}/children")).ok()?;
        let pids: Vec<u32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        (pids.len() >= want).then_some(pids)
    })
    .context("nginx started no workers")?;
    pids.extend(children);
    Ok(Server {
        processes: vec![nginx],
        pids,
    })
}

impl Server {
    /// This server and `other` as one (e.g. DHCP from one program, TFTP from another).
    pub(super) fn with(mut self, mut other: Server) -> Server {
        self.processes.append(&mut other.processes);
        self.pids.append(&mut other.pids);
        self
    }

    /// Stops the server (SIGTERM, then waits up to 15 s) and returns what the first process
    /// printed (Stampede's final stats and XDP counters).
    pub(super) fn stop(mut self) -> String {
        for p in &self.processes {
            let _ = p.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let mut processes = std::mem::take(&mut self.processes).into_iter();
        let first = processes
            .next()
            .and_then(|p| p.wait_output(Duration::from_secs(15)).ok())
            .map(|o| o.stdout)
            .unwrap_or_default();
        for p in processes {
            let _ = p.wait_output(Duration::from_secs(15));
        }
        first
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for p in &self.processes {
            let _ = p.signal(nix::sys::signal::Signal::SIGTERM);
        }
        // nginx's master stops its workers before it exits: killing it early would orphan
        // them. Process's Drop kills what did not exit in time.
        let _ = wait_for(Duration::from_secs(10), || {
            self.processes
                .iter_mut()
                .all(|p| p.try_status().is_some())
                .then_some(())
        });
        self.processes.clear();
    }
}
