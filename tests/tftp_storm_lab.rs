//! Storms of real TFTP clients against `stampede boot` (issue 18): hundreds of atftp processes,
//! each asking for blksize 1468 as a PXE ROM does. atftp 0.8 answers a second OACK with an
//! ERROR and gives up ("tftp: unexpected OACK"), and clients on a loaded host answer late: an
//! OACK resent after 1 s lost 31 of 400 machines. Every transfer must complete.
//!
//! With `STAMPEDE_TFTP_CALIBRATE=1` the same storms also run against dnsmasq's TFTP server, a
//! calibration printed beside Stampede's result as a table row (not asserted); with
//! `STAMPEDE_TFTP_STORM_CLIENTS=N` each storm has N clients (at most 1000) instead of 200. The
//! benchmark in docs/benchmarks/tftp-real-clients.md runs it so, in release mode.
mod support;

use std::{
    collections::HashMap,
    fs::File,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use stampede_lab::{Process, TwoHosts, require, wait_for};
use support::appliance::*;

/// Client processes per storm, unless `STAMPEDE_TFTP_STORM_CLIENTS` says otherwise.
const CLIENTS: usize = 200;

fn clients() -> usize {
    std::env::var("STAMPEDE_TFTP_STORM_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .map_or(CLIENTS, |n: usize| n.clamp(1, 1000))
}
/// The file each fetches: the size of an iPXE boot program.
const FILE_LEN: usize = 96 << 10;
/// How long the stalled clients sit on their OACK: longer than the 1 s after which the OACK used
/// to be resent, shorter than the 5 s after which atftp repeats its request.
const STALL: Duration = Duration::from_secs(2);
/// Each storm's bound; atftp gives up by itself after 5 timeouts of 5 s.
const STORM_DEADLINE: Duration = Duration::from_secs(40);

/// [`clients`] atftp processes in the client namespace, each fetching `vmlinuz` into /dev/null;
/// each is killed when its guard drops (on panic too).
struct Storm<'a> {
    clients: Vec<(usize, Process)>,
    logs: &'a Path,
    start: Instant,
}

/// What became of a storm: failures (client, exit code, what atftp said) and its duration.
struct StormResult {
    failed: Vec<(usize, Option<i32>, String)>,
    wall: Duration,
}

impl<'a> Storm<'a> {
    fn start(lab: &TwoHosts, logs: &'a Path) -> Self {
        let server = lab.server_ip().to_string();
        let start = Instant::now();
        let clients = (0..clients())
            .map(|i| {
                let stderr = File::create(logs.join(format!("atftp-{i}.err"))).expect("log file");
                let mut command = lab.client.command("atftp");
                command
                    .args(["--option", "blksize 1468", "--get", "-r", "vmlinuz"])
                    .args(["-l", "/dev/null", &server])
                    .stdout(Stdio::null())
                    .stderr(stderr);
                // `ip netns exec` execs atftp: the guard's PID is atftp's.
                (i, Process::spawn(command).expect("spawn atftp"))
            })
            .collect();
        Self {
            clients,
            logs,
            start,
        }
    }

    fn signal(&self, signal: Signal) {
        for (_, process) in &self.clients {
            process.signal(signal).expect("signal atftp");
        }
    }

    fn wait(mut self) -> StormResult {
        let mut failed = Vec::new();
        while !self.clients.is_empty() && self.start.elapsed() < STORM_DEADLINE {
            self.clients
                .retain_mut(|(i, process)| match process.try_status() {
                    Some(status) => {
                        if !status.success() {
                            let said =
                                std::fs::read_to_string(self.logs.join(format!("atftp-{i}.err")))
                                    .unwrap_or_default();
                            failed.push((*i, status.code(), said));
                        }
                        false
                    }
                    None => true,
                });
            std::thread::sleep(Duration::from_millis(20));
        }
        for (i, _) in &self.clients {
            failed.push((*i, None, format!("still running after {STORM_DEADLINE:?}")));
        }
        StormResult {
            failed,
            wall: self.start.elapsed(),
        }
    }
}

fn summary(label: &str, result: &StormResult) -> String {
    let mut out = format!(
        "{label}: {} atftp clients, {} failed, {:.2} s",
        clients(),
        result.failed.len(),
        result.wall.as_secs_f64()
    );
    for (i, code, said) in result.failed.iter().take(3) {
        out.push_str(&format!("\n  client {i} (exit {code:?}): {}", said.trim()));
    }
    out
}

/// UDP sockets open in the client namespace (one per started atftp).
fn client_sockets(lab: &TwoHosts) -> usize {
    lab.client
        .run("ss", &["-uanH"], Duration::from_secs(5))
        .map(|out| out.stdout.lines().count())
        .unwrap_or(0)
}

/// Two storms against the TFTP server `server` (stopped and resumed by signals):
/// * all clients at once;
/// * stalled clients: the server is held while every client sends its request, then every
///   client is held for [`STALL`] while the server answers, as a host loaded with boots delays
///   them; each reads its OACK 2 s late.
fn storms(lab: &TwoHosts, server: &Process, label: &str, logs: &Path) -> Vec<StormResult> {
    let at_once = logs.join(format!("{label}-at-once"));
    std::fs::create_dir_all(&at_once).expect("log dir");
    let first = Storm::start(lab, &at_once).wait();
    eprintln!("{}", summary(&format!("{label}, at once"), &first));

    let stalled = logs.join(format!("{label}-stalled"));
    std::fs::create_dir_all(&stalled).expect("log dir");
    server.signal(Signal::SIGSTOP).expect("hold the server");
    let storm = Storm::start(lab, &stalled);
    let all_asked = wait_for(Duration::from_secs(20), || {
        (client_sockets(lab) >= clients()).then_some(())
    });
    // A socket is made just before its request goes.
    std::thread::sleep(Duration::from_millis(300));
    storm.signal(Signal::SIGSTOP);
    server.signal(Signal::SIGCONT).expect("resume the server");
    std::thread::sleep(STALL);
    storm.signal(Signal::SIGCONT);
    let mut second = storm.wait();
    if all_asked.is_none() {
        second
            .failed
            .push((0, None, "not every client had started".to_owned()));
    }
    eprintln!(
        "{}",
        summary(&format!("{label}, stalled {STALL:?}"), &second)
    );
    vec![first, second]
}

const STORM_NAMES: [&str; 2] = ["at once", "stalled 2 s"];

#[test]
fn hundreds_of_atftp_clients_all_complete_even_when_late() {
    if !require!(&["atftp", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server: appliance,
    } = LabBoot::new(FILE_LEN, 4096)
        .client_address()
        .args(&["--api", "off", "--router-advertisements", "off"])
        .start();
    let logs = payload.dir.path().join("atftp");
    std::fs::create_dir_all(&logs).expect("log dir");
    let results = storms(&lab, &appliance, "stampede", &logs);
    let (out, stats) = stop(appliance);
    let counters: HashMap<&str, u64> = [
        "tftp_started",
        "tftp_completed",
        "tftp_retransmits",
        "tftp_dropped.duplicate_request",
        "tftp_failed.peer_error",
    ]
    .into_iter()
    .map(|key| (key, stats.get(key).copied().unwrap_or(0)))
    .collect();
    eprintln!("stampede counters: {counters:?}");

    if std::env::var_os("STAMPEDE_TFTP_CALIBRATE").is_some() {
        calibrate_with_dnsmasq(&lab, &payload, &results);
    }

    let failures: Vec<String> = results
        .iter()
        .zip(STORM_NAMES)
        .filter(|(result, _)| !result.failed.is_empty())
        .map(|(result, name)| summary(name, result))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        counters["tftp_completed"],
        2 * clients() as u64,
        "{}",
        out.stdout
    );
    assert_eq!(counters["tftp_failed.peer_error"], 0, "{}", out.stdout);
}

/// The same storms against dnsmasq's TFTP server (`--port=0`: no DNS, no DHCP), printed beside
/// Stampede's as markdown rows: clients, failures and seconds of each, and the time ratio.
fn calibrate_with_dnsmasq(lab: &TwoHosts, payload: &Payload, stampede: &[StormResult]) {
    if stampede_lab::which("dnsmasq").is_none() {
        eprintln!("calibration skipped: no dnsmasq");
        return;
    }
    let root = payload.dir.path().join("tftp-root");
    std::fs::create_dir_all(&root).expect("tftp root");
    std::fs::copy(&payload.kernel, root.join("vmlinuz")).expect("copy the file");
    let mut command = lab.server.command("dnsmasq");
    command
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            "--user=root",
            "--enable-tftp",
        ])
        .arg(format!("--interface={}", lab.server_if))
        .arg(format!("--tftp-root={}", root.display()))
        // Its default of 50 transfers at once would leave the rest to their 5 s retry.
        .arg(format!("--tftp-max={}", clients()))
        .arg(format!(
            "--pid-file={}",
            payload.dir.path().join("dnsmasq.pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let dnsmasq = Process::spawn(command).expect("dnsmasq");
    let bound = wait_for(Duration::from_secs(10), || {
        let out = lab
            .server
            .run("ss", &["-ulnH"], Duration::from_secs(5))
            .ok()?;
        out.stdout.contains(":69 ").then_some(())
    });
    if bound.is_none() {
        eprintln!("calibration skipped: dnsmasq did not bind port 69");
        return;
    }
    let logs = payload.dir.path().join("atftp");
    let peer = storms(lab, &dnsmasq, "dnsmasq", &logs);
    eprintln!(
        "| storm | clients | Stampede: failed, s | dnsmasq: failed, s | time, Stampede / dnsmasq |"
    );
    for ((name, ours), theirs) in STORM_NAMES.iter().zip(stampede).zip(&peer) {
        eprintln!(
            "| {name} | {} | {}, {:.2} | {}, {:.2} | {:.2} |",
            clients(),
            ours.failed.len(),
            ours.wall.as_secs_f64(),
            theirs.failed.len(),
            theirs.wall.as_secs_f64(),
            ours.wall.as_secs_f64() / theirs.wall.as_secs_f64()
        );
    }
}
