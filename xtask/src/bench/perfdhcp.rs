//! DORA per second at <= 2.5% drops, measured by Kea's `perfdhcp` (Debian's `kea-admin`): an
//! independent DHCP load generator beside the storm's own DHCP clients.
//!
//! perfdhcp acts as a relay: it sends from port 67 of the client namespace's own address
//! (198.19.255.254) with that address as `giaddr`, unicast to the server, and the server answers
//! the relay. Both servers' pools cover the relay's subnet (198.19.0.0/16). A short search finds
//! the highest offered rate whose exchanges complete with at most 2.5% lost: doubling from
//! [`START_RATE`] until a trial fails, then a few bisection steps. Every trial is bounded in time
//! ([`TRIAL_SECONDS`]) and the search in trials ([`MAX_TRIALS`]).
//!
//! Where exchanges were lost is read from each namespace's UDP counters (`/proc/net/snmp`,
//! per network namespace): `RcvbufErrors` on the server side are requests the server's socket
//! had no room for, on the client side answers perfdhcp's socket had no room for (the load
//! generator, not the server, was then the limit).
use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::Context as _;

use super::{Lab, SERVER_IP, http::ClientAddress};

/// Distinct clients (MACs) perfdhcp picks from at random. Many, so that no MAC renews faster
/// than a real machine would (Stampede's XDP admits 8 DHCP messages a second per MAC) and the
/// lease table holds a site's worth of machines; fewer than the lab pool's 65,024 addresses.
pub(super) const CLIENTS: u32 = 50_000;
/// First offered rate, DORA exchanges per second.
const START_RATE: u32 = 1_000;
/// Highest offered rate tried.
const MAX_RATE: u32 = 256_000;
const TRIAL_SECONDS: u64 = 5;
const MAX_TRIALS: usize = 12;
/// The issue's bar: at most 2.5% of exchanges lost.
const MAX_DROP_SHARE: f64 = 0.025;

#[derive(Debug, Clone)]
pub(super) struct Trial {
    rate: u32,
    discovers: u64,
    acks: u64,
    dora_per_s: f64,
    drop_share: f64,
    /// Datagrams dropped for want of receive-buffer room in the server's namespace.
    server_rcvbuf_drops: u64,
    /// The same in perfdhcp's namespace: answers that reached it too fast for it.
    client_rcvbuf_drops: u64,
}

#[derive(Debug)]
pub(super) struct DoraResult {
    server: String,
    trials: Vec<Trial>,
    command: String,
    /// What the server itself counted over the whole search (Stampede's final counters).
    pub server_counters: Option<String>,
}

impl DoraResult {
    /// The passing trial with the most completed exchanges per second.
    fn best(&self) -> Option<&Trial> {
        self.trials
            .iter()
            .filter(|t| t.drop_share <= MAX_DROP_SHARE)
            .max_by(|a, b| a.dora_per_s.total_cmp(&b.dora_per_s))
    }
}

/// `sent packets` and `received packets` of one exchange's statistics block.
fn exchange(output: &str, name: &str) -> Option<(u64, u64)> {
    let block = output
        .split(&format!("***Statistics for: {name}***"))
        .nth(1)?;
    let value = |key: &str| {
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((value("sent packets:")?, value("received packets:")?))
}

fn args(lab: &Lab, rate: u32, seconds: u64) -> Vec<String> {
    vec![
        "-4".into(),
        "-l".into(),
        lab.client_if.clone(),
        "-r".into(),
        rate.to_string(),
        "-R".into(),
        CLIENTS.to_string(),
        "-p".into(),
        seconds.to_string(),
        // Wait a second after the period for answers still on their way, so the last
        // exchanges are not counted as lost.
        "-W".into(),
        "1000000".into(),
        // The same clients in the same order in every trial.
        "-s".into(),
        "1".into(),
        SERVER_IP.into(),
    ]
}

/// `Udp: RcvbufErrors` of the namespace `ns` (proc(5): /proc/net/snmp is per namespace).
fn rcvbuf_errors(ns: &stampede_lab::Netns) -> anyhow::Result<u64> {
    let out = ns
        .run("cat", &["/proc/net/snmp"], Duration::from_secs(5))?
        .ok()?;
    let mut udp = out.stdout.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("/proc/net/snmp: no Udp lines");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .context("/proc/net/snmp: no Udp RcvbufErrors")
}

fn trial(lab: &Lab, rate: u32) -> anyhow::Result<Trial> {
    let args = args(lab, rate, TRIAL_SECONDS);
    let server_before = rcvbuf_errors(&lab.server)?;
    let client_before = rcvbuf_errors(&lab.client)?;
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // perfdhcp exits non-zero when it saw drops; the statistics say how many.
    let out = lab
        .client
        .run("perfdhcp", &refs, Duration::from_secs(TRIAL_SECONDS + 30))
        .context("perfdhcp (run `cargo xtask setup`: Debian's kea-admin)")?;
    let (discovers, _) = exchange(&out.stdout, "DISCOVER-OFFER").with_context(|| {
        format!(
            "perfdhcp printed no statistics ({}):\n{}{}",
            out.status, out.stdout, out.stderr
        )
    })?;
    let acks = exchange(&out.stdout, "REQUEST-ACK").map_or(0, |(_, received)| received);
    let server_rcvbuf_drops = rcvbuf_errors(&lab.server)? - server_before;
    let client_rcvbuf_drops = rcvbuf_errors(&lab.client)? - client_before;
    let t = Trial {
        rate,
        discovers,
        acks,
        dora_per_s: acks as f64 / TRIAL_SECONDS as f64,
        drop_share: if discovers == 0 {
            1.0
        } else {
            1.0 - acks as f64 / discovers as f64
        },
        server_rcvbuf_drops,
        client_rcvbuf_drops,
    };
    eprintln!(
        "xtask: bench: perfdhcp -r {rate}: {} DISCOVERs, {} ACKs ({:.0} DORA/s, {:.2}% lost; \
         receive-buffer drops: server {}, perfdhcp {})",
        t.discovers,
        t.acks,
        t.dora_per_s,
        t.drop_share * 100.0,
        t.server_rcvbuf_drops,
        t.client_rcvbuf_drops
    );
    Ok(t)
}

/// The rate search against the server running in the lab now.
pub(super) fn search(lab: &Lab, out: &Path, label: &str) -> anyhow::Result<DoraResult> {
    let _address = ClientAddress::add(lab)?;
    // A second at a low rate first, not counted: the relay's address gets resolved (ARP) and
    // the server's first leases written before anything is measured.
    let warm = args(lab, 100, 1);
    let warm: Vec<&str> = warm.iter().map(String::as_str).collect();
    lab.client
        .run("perfdhcp", &warm, Duration::from_secs(30))
        .context("perfdhcp (run `cargo xtask setup`: Debian's kea-admin)")?;
    let mut trials: Vec<Trial> = Vec::new();
    let pass = |t: &Trial| t.drop_share <= MAX_DROP_SHARE;
    // Doubling (or halving, when the first rate already fails) to bracket the limit.
    let mut rate = START_RATE;
    let (mut good, mut bad): (Option<u32>, Option<u32>) = (None, None);
    while trials.len() < MAX_TRIALS {
        let t = trial(lab, rate)?;
        let ok = pass(&t);
        trials.push(t);
        if ok {
            good = Some(rate);
            if bad.is_some() || rate >= MAX_RATE {
                break;
            }
            rate = (rate * 2).min(MAX_RATE);
        } else {
            bad = Some(rate);
            if good.is_some() || rate <= 100 {
                break;
            }
            rate /= 2;
        }
        // Let the server drain what the last trial left queued.
        std::thread::sleep(Duration::from_secs(1));
    }
    // Bisection between the best passing and the lowest failing rate, to within 10%.
    while let (Some(lo), Some(hi)) = (good, bad) {
        if trials.len() >= MAX_TRIALS || f64::from(hi) / f64::from(lo) < 1.1 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        let mid = (lo + hi) / 2;
        let t = trial(lab, mid)?;
        if pass(&t) {
            good = Some(mid);
        } else {
            bad = Some(mid);
        }
        trials.push(t);
    }
    let result = DoraResult {
        server: label.to_owned(),
        command: format!(
            "perfdhcp {}",
            args(lab, good.unwrap_or(START_RATE), TRIAL_SECONDS).join(" ")
        ),
        trials,
        server_counters: None,
    };
    let json = serde_json::json!({
        "server": result.server,
        "clients": CLIENTS,
        "trial_seconds": TRIAL_SECONDS,
        "max_drop_share": MAX_DROP_SHARE,
        "best_dora_per_s": result.best().map(|t| t.dora_per_s),
        "best_offered_rate": result.best().map(|t| t.rate),
        "trials": result.trials.iter().map(|t| serde_json::json!({
            "offered_rate": t.rate,
            "discovers": t.discovers,
            "acks": t.acks,
            "dora_per_s": t.dora_per_s,
            "drop_share": t.drop_share,
            "server_rcvbuf_drops": t.server_rcvbuf_drops,
            "perfdhcp_rcvbuf_drops": t.client_rcvbuf_drops,
        })).collect::<Vec<_>>(),
        "command": result.command,
    });
    fs::write(
        out.join(format!("perfdhcp-{}.json", label.replace(['+', ' '], "-"))),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(result)
}

/// The summary's section: per server the best rate and every trial, then the ratio.
pub(super) fn summary(md: &mut String, results: &[DoraResult]) {
    let _ = writeln!(
        md,
        "\nperfdhcp (Kea's load generator, relayed DORA from {CLIENTS} random clients, {TRIAL_SECONDS} s \
         per trial): highest DORA/s with <= {:.1}% of exchanges lost\n",
        MAX_DROP_SHARE * 100.0
    );
    let _ = writeln!(
        md,
        "| server | DORA/s | offered rate | trials (offered rate: DORA/s, lost; receive-buffer drops server/perfdhcp) |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for r in results {
        let trials: Vec<String> = r
            .trials
            .iter()
            .map(|t| {
                format!(
                    "{}: {:.0}, {:.1}%; {}/{}",
                    t.rate,
                    t.dora_per_s,
                    t.drop_share * 100.0,
                    t.server_rcvbuf_drops,
                    t.client_rcvbuf_drops
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.server,
            r.best()
                .map_or("none passed".into(), |t| format!("{:.0}", t.dora_per_s)),
            r.best().map_or("-".into(), |t| t.rate.to_string()),
            trials.join("; ")
        );
    }
    if let Some(s) = results.iter().find(|r| r.server == "stampede")
        && let Some(sb) = s.best()
    {
        for p in results.iter().filter(|r| r.server != "stampede") {
            if let Some(pb) = p.best() {
                let _ = writeln!(
                    md,
                    "\n- Stampede/{}: {:.2}x the DORA/s",
                    p.server,
                    sb.dora_per_s / pb.dora_per_s
                );
            }
        }
    }
    for r in results {
        if let Some(counters) = &r.server_counters {
            let _ = writeln!(md, "\n- {} counted over its search: {counters}", r.server);
        }
    }
    let _ = writeln!(
        md,
        "\nReceive-buffer drops are the UDP RcvbufErrors of each namespace over the trial: \
         where they are on perfdhcp's side, the load generator (on the same cores as the server) \
         was the limit, not the server."
    );
    let _ = writeln!(md, "\nperfdhcp commands (in the client namespace):\n");
    for r in results {
        let _ = writeln!(md, "    {}", r.command);
    }
}
