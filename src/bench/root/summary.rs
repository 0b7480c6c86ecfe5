//! What a run measured, as a table and an SVG.
use super::*;

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RootSummary {
    pub label: String,
    /// `chunks` (manifest and chunks) or `whole_file`.
    pub mode: &'static str,
    pub clients: usize,
    /// Requests in flight per machine.
    pub parallel: usize,
    pub threads: usize,
    /// Machines whose whole root was fetched and verified.
    pub verified: usize,
    pub failed: usize,
    pub failures_by_phase: BTreeMap<&'static str, usize>,
    pub failure_examples: Vec<RootRecord>,
    /// Run start to the last machine's last verified byte, when every machine got its root.
    pub time_to_last_root_s: Option<f64>,
    pub elapsed_s: f64,
    /// First request to last verified chunk, over the machines that got their root.
    pub time_to_root: Option<Percentiles>,
    /// First request to verified manifest (chunks mode).
    pub manifest: Option<Percentiles>,
    /// Bytes of one machine's root as it fetched them (the largest over machines).
    pub root_bytes: u64,
    /// Body bytes every machine received, manifests included.
    pub bytes: u64,
    pub requests: u64,
    pub http_retries: u64,
    /// The node agent's retries (see `NodeRetry`): runs that failed or stalled and were
    /// fetched chunk by chunk, chunks fetched again on their own, root steps started again.
    pub runs_failed: u64,
    pub chunk_retries: u64,
    pub root_restarts: u64,
    /// `bytes` over the time to the last root (or the elapsed time if some failed).
    pub throughput_mib_s: f64,
    /// CPU the simulated machines used (this process).
    pub client_cpu_s: f64,
    /// CPU the whole host was busy for over the run (all cores, `/proc/stat`): the server, the
    /// bench, the kernel's network work between them (softirq, much of it charged to no
    /// process) and anything else running.
    pub host_busy_cpu_s: Option<f64>,
    /// Of `host_busy_cpu_s`, time in softirq (the veth's receive path, TCP).
    pub host_softirq_s: Option<f64>,
    /// Times a receive of the bench's rings found every buffer in use (summed over threads):
    /// a sign the bench, not the server, held data back.
    pub client_buffer_exhaustions: u64,
    pub server: Option<Usage>,
    /// Server CPU seconds per 10^9 body bytes served.
    pub server_cpu_s_per_gb: Option<f64>,
    pub machines: Vec<RootRecord>,
}

impl RootSummary {
    pub(super) fn new(
        label: String,
        mode: &'static str,
        (parallel, threads): (usize, usize),
        machines: Vec<RootRecord>,
        elapsed_s: f64,
        client_cpu_s: f64,
        server: Option<Usage>,
    ) -> Self {
        let verified = machines.iter().filter(|m| m.root_ms.is_some()).count();
        let failed = machines.len() - verified;
        let mut failures_by_phase = BTreeMap::new();
        for m in &machines {
            if let Some(f) = &m.failure {
                *failures_by_phase.entry(f.phase.name()).or_insert(0) += 1;
            }
        }
        let failure_examples = machines
            .iter()
            .filter(|m| m.failure.is_some())
            .take(10)
            .cloned()
            .collect();
        let time_to_last_root_s = (failed == 0 && verified > 0).then(|| {
            machines
                .iter()
                .filter_map(|m| m.root_ms.map(|r| m.started_ms + r))
                .fold(0.0, f64::max)
                / 1e3
        });
        let bytes: u64 = machines.iter().map(|m| m.bytes).sum();
        let span = time_to_last_root_s.unwrap_or(elapsed_s).max(1e-9);
        let server_cpu_s_per_gb = server
            .as_ref()
            .filter(|_| bytes > 0)
            .map(|s| s.cpu_s / (bytes as f64 / 1e9));
        Self {
            label,
            mode,
            clients: machines.len(),
            parallel,
            threads,
            verified,
            failed,
            failures_by_phase,
            failure_examples,
            time_to_last_root_s,
            elapsed_s,
            time_to_root: Percentiles::of(machines.iter().filter_map(|m| m.root_ms).collect()),
            manifest: Percentiles::of(machines.iter().filter_map(|m| m.manifest_ms).collect()),
            root_bytes: machines
                .iter()
                .filter(|m| m.root_ms.is_some())
                .map(|m| m.bytes)
                .max()
                .unwrap_or(0),
            bytes,
            requests: machines.iter().map(|m| m.requests).sum(),
            http_retries: 0,
            runs_failed: 0,
            chunk_retries: 0,
            root_restarts: 0,
            throughput_mib_s: bytes as f64 / span / (1024.0 * 1024.0),
            client_cpu_s,
            host_busy_cpu_s: None,
            host_softirq_s: None,
            client_buffer_exhaustions: 0,
            server,
            server_cpu_s_per_gb,
            machines,
        }
    }

    /// The table people read.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "root {} ({}, {} in flight per machine): {} machines, {} roots verified, {} failed, \
             time to last root {}",
            self.label,
            self.mode,
            self.parallel,
            self.clients,
            self.verified,
            self.failed,
            self.time_to_last_root_s
                .map_or("-".to_owned(), |s| format!("{s:.2} s"))
        );
        let _ = writeln!(
            t,
            "{:<13} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for (name, p) in [
            ("manifest", &self.manifest),
            ("time to root", &self.time_to_root),
        ] {
            if let Some(p) = p {
                let _ = writeln!(
                    t,
                    "{name:<13} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    p.count, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
                );
            }
        }
        let _ = writeln!(
            t,
            "{:.1} MiB received in {} requests ({:.1} MiB per root), {:.1} MiB/s; bench CPU {:.1} s; \
             bench receive buffers ran out {} times",
            self.bytes as f64 / 1048576.0,
            self.requests,
            self.root_bytes as f64 / 1048576.0,
            self.throughput_mib_s,
            self.client_cpu_s,
            self.client_buffer_exhaustions
        );
        if let (Some(busy), Some(softirq)) = (self.host_busy_cpu_s, self.host_softirq_s) {
            let _ = writeln!(
                t,
                "host CPU busy {busy:.1} s over the run (softirq {softirq:.1} s), all processes"
            );
        }
        if self.http_retries > 0 {
            let _ = writeln!(
                t,
                "requests retried on a new connection (kept-alive one closed unanswered): {}",
                self.http_retries
            );
        }
        if self.runs_failed + self.chunk_retries + self.root_restarts > 0 {
            let _ = writeln!(
                t,
                "the node agent's retries: {} runs failed (fetched chunk by chunk), {} chunks fetched again, {} root steps started again",
                self.runs_failed, self.chunk_retries, self.root_restarts
            );
        }
        if let Some(s) = &self.server {
            let _ = writeln!(
                t,
                "server pids {:?}: CPU {:.2} s ({} per GB served), RSS peak {:.1} MiB, at end {:.1} MiB",
                s.pids,
                s.cpu_s,
                self.server_cpu_s_per_gb
                    .map_or("-".to_owned(), |c| format!("{c:.3} s")),
                s.rss_peak_mib,
                s.rss_end_mib
            );
        }
        for (phase, n) in &self.failures_by_phase {
            let _ = writeln!(t, "failed in {phase}: {n}");
        }
        for m in &self.failure_examples {
            if let Some(f) = &m.failure {
                let _ = writeln!(t, "  machine {} ({}): {}", m.index, m.source, f.reason);
            }
        }
        t
    }
}
