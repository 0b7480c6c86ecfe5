//! CPU use of the server's process tree and of the host, sampled from `/proc`.
use super::*;

/// CPU seconds, peak and current RSS of `pid` and every descendant, and the pids counted.
pub(super) fn tree_usage(pid: u32) -> Option<(f64, f64, f64, Vec<u32>)> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() && pids.len() < 4096 {
        let p = pids[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children"));
                pids.extend(
                    children
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    let (cpu, peak, now) = report::proc_usage(pid)?;
    let rest = pids[1..].iter().filter_map(|&p| report::proc_usage(p));
    let (cpu, peak, now) = rest.fold((cpu, peak, now), |(c, p, n), (c2, p2, n2)| {
        (c + c2, p + p2, n + n2)
    });
    Some((cpu, peak, now, pids))
}

/// Seconds the host's CPUs were busy (everything but idle and iowait) and in softirq, since boot,
/// from the first line of `/proc/stat` (proc(5)).
pub(super) fn host_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: f64 = ticks.iter().take(8).sum();
    let busy = total - ticks.get(3)? - ticks.get(4)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((busy / hz, ticks.get(6)? / hz))
}
