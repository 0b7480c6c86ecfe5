//! `cargo xtask demo`: the main job, as far as the product goes today.
//!
//! Builds Stampede, makes a two-host lab (a server namespace and a client namespace joined by a
//! veth), runs `stampede serve` on the server side, and drives real clients from the other side:
//! busybox udhcpc (DHCP DISCOVERs, as a PXE ROM sends), a TFTP read request and an HTTP request.
//! The XDP classifier's per-class counters are printed live and at the end; everything is torn
//! down afterwards, also on failure. Bounded: every step has a timeout.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use stampede_lab::{Process, TwoHosts, wait_for};

pub fn run() -> anyhow::Result<()> {
    if let Some(reason) = stampede_lab::unavailable_reason() {
        bail!("the demo runs a network-namespace lab: {reason}");
    }
    let mut build = crate::cargo();
    build.args(["build", "--release", "--package", "stampede"]);
    crate::run(build)?;
    let binary = crate::workspace_root().join("target/release/stampede");

    let lab = TwoHosts::new().context("creating the lab")?;
    let server_ip = lab.server_ip().to_string();
    println!(
        "\n== lab: server namespace {} ({} on {}), client namespace {} ({})",
        lab.server.name(),
        server_ip,
        lab.server_if,
        lab.client.name(),
        lab.client_if
    );

    let mut serve_cmd: Command = lab
        .server
        .command(binary.to_str().context("path is UTF-8")?);
    serve_cmd
        .args(["serve", "--iface", &lab.server_if, "--stats-interval", "1"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let serve = Process::spawn(serve_cmd)?;
    let attached = wait_for(Duration::from_secs(15), || {
        let link = lab
            .server
            .ip(&["link", "show", "dev", &lab.server_if])
            .ok()?;
        link.contains("xdp").then_some(())
    });
    if attached.is_none() {
        bail!("stampede serve did not attach its XDP program within 15 s");
    }

    println!("\n== a machine without an address broadcasts DHCP DISCOVERs (busybox udhcpc)");
    let udhcpc = lab.client.run(
        "busybox",
        &[
            "udhcpc",
            "-i",
            &lab.client_if,
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ],
        Duration::from_secs(15),
    )?;
    print!("{}", indent(&udhcpc.stderr));

    lab.client
        .ip(&["addr", "add", &lab.subnet.cidr(2), "dev", &lab.client_if])?;
    println!("\n== it asks for a boot program over TFTP (busybox tftp; nothing serves it yet)");
    // busybox tftp retries for a long time when nobody answers; three seconds show enough.
    match lab.client.run(
        "busybox",
        &[
            "tftp",
            "-g",
            "-r",
            "undionly.kpxe",
            "-l",
            "/dev/null",
            &server_ip,
        ],
        Duration::from_secs(3),
    ) {
        Ok(tftp) => print!("{}", indent(&format!("{}{}", tftp.stdout, tftp.stderr))),
        Err(stampede_lab::LabError::Timeout { .. }) => {
            print!(
                "{}",
                indent("no answer after 3 s (no TFTP server yet): stopped")
            );
        }
        Err(err) => return Err(err.into()),
    }

    println!("\n== and for its iPXE script over HTTP (curl; nothing serves it yet)");
    let url = format!("http://{server_ip}:8080/boot.ipxe");
    let curl = lab.client.run(
        "curl",
        &["-sS", "--max-time", "3", &url],
        Duration::from_secs(10),
    )?;
    print!("{}", indent(&format!("{}{}", curl.stdout, curl.stderr)));

    // Let one more counter report go by so the live output shows the last requests.
    std::thread::sleep(Duration::from_millis(1200));
    println!("\n== stopping stampede serve (SIGTERM): it prints its final counters and detaches");
    serve.signal(nix::sys::signal::Signal::SIGTERM)?;
    let out = serve.wait_output(Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("stampede serve exited with {}", out.status);
    }
    drop(lab);
    println!(
        "\n== lab torn down. The dhcp_server, tftp and http counters above are the requests the \
         clients sent, classified by the XDP program at the NIC before the kernel's stack saw them."
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   | {l}\n")).collect()
}
