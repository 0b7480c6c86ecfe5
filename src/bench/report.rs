//! What a storm measured: per-stage percentiles, failures by stage, throughput, CPU and memory;
//! printed as a table, written as JSON and drawn as an SVG.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::storm::{MachineRecord, Stage};

/// Percentiles of one series, in milliseconds (nearest rank).
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[i - 1]
        };
        Some(Self {
            count: values.len(),
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: values[values.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub stage: Stage,
    #[serde(flatten)]
    pub latency: Percentiles,
    pub retransmits: u64,
    pub bytes: u64,
}

/// CPU and memory of a process over the storm, from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub pids: Vec<u32>,
    pub cpu_s: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureExample {
    pub mac: String,
    pub stage: Stage,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub label: String,
    pub clients: usize,
    pub booted: usize,
    pub failed: usize,
    pub failures_by_stage: BTreeMap<&'static str, usize>,
    pub failure_examples: Vec<FailureExample>,
    /// Storm start to the last machine's last byte.
    pub time_to_last_boot_s: Option<f64>,
    pub elapsed_s: f64,
    pub boot: Option<Percentiles>,
    pub stages: Vec<StageSummary>,
    /// Boot-file bytes received (TFTP + HTTP).
    pub bytes: u64,
    /// `bytes` over the time to the last boot (or the elapsed time if some failed).
    pub throughput_mib_s: f64,
    /// CPU the simulated machines used (this process).
    pub client_cpu_s: f64,
    /// TFTP datagrams the machines received out of order (`--reorder`).
    pub reordered_datagrams: u64,
    /// Times a receive of the bench's rings found every buffer in use and had to be re-armed
    /// (summed over threads): a sign the bench, not the server, held data back.
    pub client_buffer_exhaustions: u64,
    /// HTTP requests sent again because their kept-alive connection closed before the response
    /// began (RFC 9112 §9.3.1; iPXE reopens its pooled connections the same way).
    pub http_retries: u64,
    pub server: Option<Usage>,
    pub machines: Vec<MachineRecord>,
}

impl Summary {
    pub fn new(
        label: String,
        machines: Vec<MachineRecord>,
        elapsed_s: f64,
        client_cpu_s: f64,
        server: Option<Usage>,
    ) -> Self {
        let booted: Vec<&MachineRecord> = machines.iter().filter(|m| m.boot_ms.is_some()).collect();
        let failed = machines.len() - booted.len();
        let mut failures_by_stage = BTreeMap::new();
        let mut failure_examples = Vec::new();
        for m in &machines {
            if let Some(f) = &m.failure {
                *failures_by_stage.entry(f.stage.name()).or_insert(0) += 1;
                if failure_examples.len() < 10 {
                    failure_examples.push(FailureExample {
                        mac: m.mac.clone(),
                        stage: f.stage,
                        reason: f.reason.clone(),
                    });
                }
            }
        }
        let time_to_last_boot_s = (failed == 0 && !booted.is_empty()).then(|| {
            booted
                .iter()
                .map(|m| m.started_ms + m.boot_ms.unwrap_or(0.0))
                .fold(0.0, f64::max)
                / 1e3
        });
        let stages = Stage::ALL
            .iter()
            .filter_map(|&stage| {
                let runs: Vec<_> = machines
                    .iter()
                    .flat_map(|m| m.stages.iter())
                    .filter(|s| s.stage == stage)
                    .collect();
                Some(StageSummary {
                    stage,
                    latency: Percentiles::of(runs.iter().map(|s| s.duration_ms).collect())?,
                    retransmits: runs.iter().map(|s| s.retransmits).sum(),
                    bytes: runs.iter().map(|s| s.bytes).sum(),
                })
            })
            .collect::<Vec<_>>();
        let bytes = stages
            .iter()
            .filter(|s| matches!(s.stage, Stage::Tftp | Stage::Files))
            .map(|s| s.bytes)
            .sum();
        let span = time_to_last_boot_s.unwrap_or(elapsed_s).max(1e-9);
        Self {
            label,
            clients: machines.len(),
            booted: booted.len(),
            failed,
            failures_by_stage,
            failure_examples,
            time_to_last_boot_s,
            elapsed_s,
            boot: Percentiles::of(booted.iter().filter_map(|m| m.boot_ms).collect()),
            stages,
            bytes,
            throughput_mib_s: bytes as f64 / span / (1024.0 * 1024.0),
            client_cpu_s,
            reordered_datagrams: 0,
            client_buffer_exhaustions: 0,
            http_retries: 0,
            server,
            machines,
        }
    }

    /// The table people read.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "storm {}: {} machines, {} booted, {} failed, time to last boot {}",
            self.label,
            self.clients,
            self.booted,
            self.failed,
            self.time_to_last_boot_s
                .map_or("-".to_owned(), |s| format!("{s:.2} s"))
        );
        let _ = writeln!(
            t,
            "{:<10} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10}",
            "stage", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "retrans", "MiB"
        );
        let row = |t: &mut String, name: &str, p: &Percentiles, re: u64, bytes: u64| {
            let _ = writeln!(
                t,
                "{:<10} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>10.1}",
                name,
                p.count,
                p.p50_ms,
                p.p95_ms,
                p.p99_ms,
                p.max_ms,
                re,
                bytes as f64 / (1024.0 * 1024.0)
            );
        };
        for s in &self.stages {
            row(&mut t, s.stage.name(), &s.latency, s.retransmits, s.bytes);
        }
        if let Some(b) = &self.boot {
            row(&mut t, "boot", b, 0, self.bytes);
        }
        let _ = writeln!(
            t,
            "throughput {:.1} MiB/s; bench CPU {:.1} s; bench receive buffers ran out {} times",
            self.throughput_mib_s, self.client_cpu_s, self.client_buffer_exhaustions
        );
        if self.http_retries > 0 {
            let _ = writeln!(
                t,
                "HTTP requests retried on a new connection (kept-alive one closed unanswered): {}",
                self.http_retries
            );
        }
        if self.reordered_datagrams > 0 {
            let _ = writeln!(
                t,
                "TFTP datagrams received out of order (--reorder): {}",
                self.reordered_datagrams
            );
        }
        if let Some(s) = &self.server {
            let _ = writeln!(
                t,
                "server pid {:?}: CPU {:.1} s, RSS peak {:.1} MiB, at end {:.1} MiB",
                s.pids, s.cpu_s, s.rss_peak_mib, s.rss_end_mib
            );
        }
        for (stage, n) in &self.failures_by_stage {
            let _ = writeln!(t, "failed in {stage}: {n}");
        }
        for f in &self.failure_examples {
            let _ = writeln!(t, "  {} in {}: {}", f.mac, f.stage.name(), f.reason);
        }
        t
    }
}

/// CPU seconds (user + system) of `pid`, with the children it has waited for (a server that
/// forks per request), and its RSS now and at peak, from `/proc`. Children of a process that
/// ignores SIGCHLD are reaped by the kernel and never counted (tftpd-hpa's).
pub fn proc_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime (proc(5)).
    let ticks: f64 = fields
        .get(11..15)?
        .iter()
        .map(|v| v.parse::<f64>().ok())
        .sum::<Option<f64>>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some((ticks / hz, kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        let p = Percentiles::of(vec![7.0]).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms), (7.0, 7.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }

    #[test]
    fn own_process_usage_is_readable() {
        let (cpu, peak, now) = proc_usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && peak >= now && now > 0.0);
    }
}
