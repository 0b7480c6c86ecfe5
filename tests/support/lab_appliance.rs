//! `stampede` running in a QEMU lab's server namespace (firmware and diskless-root tests), its
//! output going to files so that a failing test can show the log while the appliance still runs.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{collections::HashMap, fs, path::PathBuf, process::Stdio, time::Duration};

use nix::sys::signal::Signal;
use stampede_lab::{
    Process,
    qemu::{BootLab, WorkDir},
    wait_for,
};

use super::appliance::STAMPEDE;

/// The benchmark's API token (the API listens only inside the lab's server namespace).
pub const BENCH_TOKEN: &str = "boot-time-benchmark";
/// Where the benchmark's appliance serves its API, inside the server namespace.
pub const BENCH_API: &str = "127.0.0.1:8931";

/// A running appliance in the lab's server namespace, its output going to files so that a
/// failing test can show the log while the appliance still runs.
pub struct Appliance {
    pub process: Option<Process>,
    /// `tcpdump --immediate-mode -w $STAMPEDE_LAB_CAPTURE/<work dir name>.pcap` on the server
    /// veth, for debugging (without --immediate-mode short captures come out empty).
    _capture: Option<Process>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The API is up on [`BENCH_API`].
    pub api: bool,
}

impl Appliance {
    /// Runs `stampede <args> --api off --stats-interval 60 --state <work>/state.redb` and waits
    /// for `ready`.
    pub fn start(lab: &BootLab, work: &WorkDir, args: &[String]) -> Self {
        Self::start_with_api(lab, work, args, None)
    }

    /// [`Appliance::start`] with the control API on `api` (in the server namespace) and
    /// [`BENCH_TOKEN`] as its admin token, or off.
    pub fn start_with_api(
        lab: &BootLab,
        work: &WorkDir,
        args: &[String],
        api: Option<&str>,
    ) -> Self {
        Self::start_waiting(lab, work, args, api, Duration::from_secs(20))
    }

    /// [`Appliance::start_with_api`], waiting up to `ready` for the appliance to come up (a
    /// diskless root is built before `ready`).
    pub fn start_waiting(
        lab: &BootLab,
        work: &WorkDir,
        args: &[String],
        api: Option<&str>,
        ready: Duration,
    ) -> Self {
        let stdout = work.join("stampede.out");
        let stderr = work.join("stampede.log");
        let mut command = lab.server.command(STAMPEDE);
        command
            .args(args)
            .args(["--api", api.unwrap_or("off"), "--stats-interval", "60"])
            .env("STAMPEDE_ADMIN_TOKEN", BENCH_TOKEN)
            .arg("--state")
            .arg(work.join("state.redb"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(fs::File::create(&stdout).expect("stdout file")))
            .stderr(Stdio::from(fs::File::create(&stderr).expect("stderr file")));
        let capture = std::env::var_os("STAMPEDE_LAB_CAPTURE").map(|dir| {
            let name = work.path().file_name().expect("work dir name");
            let file = PathBuf::from(dir).join(name).with_extension("pcap");
            let mut tcpdump = lab.server.command("tcpdump");
            tcpdump
                .args(["--immediate-mode", "-n", "-i", &lab.server_if, "-w"])
                .arg(file)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Process::spawn(tcpdump).unwrap_or_else(|err| panic!("tcpdump: {err}"))
        });
        let process = Process::spawn(command).unwrap_or_else(|err| panic!("stampede: {err}"));
        let mut appliance = Self {
            process: Some(process),
            _capture: capture,
            stdout,
            stderr,
            api: api.is_some(),
        };
        let ready = wait_for(ready, || {
            if appliance
                .process
                .as_mut()
                .and_then(Process::try_status)
                .is_some()
            {
                return Some(false);
            }
            let out = fs::read_to_string(&appliance.stdout).ok()?;
            out.lines().any(|l| l.starts_with("ready ")).then_some(true)
        });
        assert_eq!(
            ready,
            Some(true),
            "stampede did not come up:\n{}",
            appliance.log()
        );
        appliance
    }

    /// stdout then stderr (the `stampede::boot` lines) so far.
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// The `stampede::boot` lines so far, without the timestamps' noise.
    pub fn boot_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("stampede::boot"))
            .map(str::to_owned)
            .collect()
    }

    /// SIGTERM, then the `final stats` counters.
    pub fn stop(mut self) -> HashMap<String, u64> {
        let process = self.process.take().expect("running");
        process.signal(Signal::SIGTERM).expect("SIGTERM");
        let out = process
            .wait_output(Duration::from_secs(15))
            .expect("stampede exits after SIGTERM");
        assert!(out.status.success(), "stampede failed:\n{}", self.log());
        let text = fs::read_to_string(&self.stdout).unwrap_or_default();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("final stats "))
            .unwrap_or_else(|| panic!("no final stats in:\n{text}"));
        line.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }
}
