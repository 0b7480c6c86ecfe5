//! What an operator's Prometheus and Grafana see of a running `stampede boot` (issue 18): stage
//! durations as histograms fed by a real client's DHCP, TFTP and HTTP, pool usage, the build and
//! the process; and every metric the shipped dashboard (`packaging/grafana/stampede.json`)
//! queries is one the appliance exports.
mod support;

use std::{collections::BTreeSet, time::Duration};

use stampede_lab::{Netns, require, wait_for};
use support::appliance::*;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/grafana/stampede.json"
);

fn scrape(ns: &Netns) -> String {
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    ns.run(
        "curl",
        &["-sf", "-H", &auth, &format!("{API}/metrics")],
        Duration::from_secs(5),
    )
    .expect("curl /metrics")
    .stdout
}

/// Waits until `/metrics` has every line of `wants` (whole samples, `name{labels} value`).
fn wait_for_samples(ns: &Netns, within: Duration, wants: &[&str]) -> String {
    let mut last = String::new();
    let found = wait_for(within, || {
        last = scrape(ns);
        wants
            .iter()
            .all(|want| last.lines().any(|l| l == *want))
            .then_some(())
    });
    assert!(found.is_some(), "{wants:#?} not all in /metrics:\n{last}");
    last
}

/// The value of the sample `series` (`name{labels}`), if exported.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every metric name a dashboard's queries use: identifiers of our families in its `expr`s.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn exprs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    let mut names = BTreeSet::new();
    for expr in all {
        let idents = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        for ident in idents {
            if ident.starts_with("stampede_") || ident.starts_with("process_") {
                names.insert(ident.to_owned());
            }
        }
    }
    names
}

#[test]
fn stage_histograms_pools_and_the_dashboard_match_a_running_appliance() {
    if !require!(&["busybox", "curl", "tftp", "ss"]) {
        return;
    }
    // XDP in generic mode, so the classifier's counters are exported too.
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(256 << 10, 64 << 10)
        .dhcp_range(100, 149)
        .xdp_mode("generic")
        .api()
        .start();
    let (first, last) = (lab.subnet.host(100), lab.subnet.host(149));

    // One machine: DHCP (Discover, Offer, Request, Ack), then its kernel by TFTP and HTTP.
    let script = udhcpc_script(payload.dir.path());
    let out = udhcpc(&lab.client, &lab.client_if, 4, &script, UDHCPC_BIOS);
    let lease = bound(&out.combined());
    let got = payload.dir.path().join("got-vmlinuz");
    let tftp = lab
        .client
        .run(
            "tftp",
            &[
                &lab.server_ip().to_string(),
                "-c",
                "get",
                "vmlinuz",
                got.to_str().expect("utf-8 path"),
            ],
            Duration::from_secs(20),
        )
        .expect("tftp runs");
    assert_eq!(
        sha256_file(&got),
        sha256_file(&payload.kernel),
        "tftp: {tftp:?}, lease {lease:?}"
    );
    let url = format!("http://{}:8080/files/vmlinuz", lab.server_ip());
    let http = lab
        .client
        .run(
            "curl",
            &["-sf", "-o", "/dev/null", &url],
            Duration::from_secs(20),
        )
        .expect("curl runs");
    assert!(http.status.success(), "{http:?}");

    let pool = format!("pool=\"{first}-{last}\"");
    let metrics = wait_for_samples(
        &lab.server,
        Duration::from_secs(10),
        &[
            "stampede_dhcp_exchange_duration_seconds_count 1",
            "stampede_tftp_transfer_duration_seconds_count 1",
            "stampede_http_response_duration_seconds_count 1",
            &format!("stampede_dhcp_pool_addresses{{{pool}}} 50"),
            &format!("stampede_dhcp_pool_leased{{{pool}}} 1"),
            &format!(
                "stampede_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ],
    );
    // A local exchange and a 256 KiB transfer take well under a second each.
    let le_1s = |name: &str| sample(&metrics, &format!("{name}_bucket{{le=\"1\"}}"));
    assert_eq!(
        le_1s("stampede_dhcp_exchange_duration_seconds"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        le_1s("stampede_tftp_transfer_duration_seconds"),
        Some(1.0),
        "{metrics}"
    );
    let rss = sample(&metrics, "process_resident_memory_bytes").expect("resident memory");
    let fds = sample(&metrics, "process_open_fds").expect("open fds");
    let started = sample(&metrics, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(rss > 1e6 && fds > 3.0, "rss {rss} fds {fds}");
    assert!(
        (now - 300.0..=now + 5.0).contains(&started),
        "started {started}, now {now}"
    );
    assert!(
        sample(&metrics, "process_cpu_seconds_total").is_some(),
        "{metrics}"
    );

    // The machine goes quiet: its boot ends and is counted whole.
    wait_for_samples(
        &lab.server,
        Duration::from_secs(40),
        &["stampede_boot_duration_seconds_count{outcome=\"ok\"} 1"],
    );

    // Every metric the dashboard uses is exported (a histogram by its `_bucket`/`_count`).
    assert!(
        metrics
            .lines()
            .any(|l| l == "stampede_dhcp_refused_total{reason=\"denied\"} 0"),
        "DHCP refusal reasons exist at zero"
    );
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboard in the repo");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 15, "the dashboard queries only {used:?}");
    let metrics = scrape(&lab.server);
    // Samples' names, and families declared before any sample (reasons not seen yet).
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(declared) => declared.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    let missing: Vec<_> = used
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not export"
    );
    stop(server);
}

#[test]
fn json_logs_name_the_dhcp_message_and_stats_lines_carry_a_time() {
    if !require!(&["busybox", "ss"]) {
        return;
    }
    let ApplianceLab {
        lab,
        payload,
        server,
    } = LabBoot::new(4096, 4096)
        .dhcp_range(100, 149)
        .args(&["--log-format", "json"])
        .start();
    let script = udhcpc_script(payload.dir.path());
    let out = udhcpc(&lab.client, &lab.client_if, 4, &script, &[]);
    bound(&out.combined());
    let (out, _) = stop(server);

    // Every log line is one JSON object; the DHCP reply's kind is its own field, not tracing's
    // `message` (the line's text).
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let replies: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "dhcp reply")
        .collect();
    let kinds: Vec<&str> = replies
        .iter()
        .filter_map(|l| l["fields"]["dhcp_message"].as_str())
        .collect();
    assert_eq!(kinds, ["offer", "ack"], "{}", out.stderr);
    assert!(
        replies.iter().all(|l| l["timestamp"].is_string()),
        "{replies:?}"
    );

    // `final stats at=2026-12-07T18:40:00Z ...`
    let at = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("final stats at="))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no time on the final stats line:\n{}", out.stdout));
    let shape = |i: usize, c: char| at.chars().nth(i) == Some(c);
    assert!(
        at.len() == 20 && shape(4, '-') && shape(10, 'T') && shape(19, 'Z'),
        "{at} is not RFC 3339 UTC"
    );
}
