//! `stampede bench root` against a real `stampede boot --root` in a namespace lab, with the small
//! image and a handful of machines: every simulated machine verifies the signed manifest and
//! every chunk, the JSON report has the shape `cargo xtask bench root` reads, the bench's routes
//! are gone afterwards, and a bench holding another key refuses every manifest. It keeps the
//! benchmark's harness from rotting; the measurement itself is `cargo xtask bench root`
//! (docs/benchmarks/root.md).
mod support;

use std::{fs, time::Duration};

use stampede_lab::{TwoHosts, require, root_image};
use support::appliance::{RootAppliance, STAMPEDE};

const CLIENTS: usize = 5;
/// What `stampede boot --root` printed about its root: id, chunks, bytes.
fn root_line(stdout: &str) -> Option<(String, u64, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("root "))?;
    let mut words = line.split_whitespace().skip(1);
    let id = words.next()?.to_owned();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((id, field("chunks=")?, field("bytes=")?))
}

fn bench(lab: &TwoHosts, args: &[&str]) -> stampede_lab::Output {
    let mut all = vec!["bench", "root", "--iface", &lab.client_if];
    all.extend_from_slice(args);
    lab.client
        .run(STAMPEDE, &all, Duration::from_secs(120))
        .expect("the bench runs")
}

fn local_routes(lab: &TwoHosts) -> String {
    lab.client
        .ip(&["route", "show", "table", "local"])
        .expect("ip route")
}

#[test]
fn root_bench_verifies_every_machines_root() {
    if !require!(&["ip", "umoci", "depmod", "apt-get", "dpkg-deb"]) {
        return;
    }
    let image = root_image::small_image().unwrap_or_else(|e| panic!("small image: {e}"));
    let lab = TwoHosts::new().expect("lab");
    let dir = tempfile::Builder::new()
        .prefix("stampede-root-bench-")
        .tempdir()
        .expect("tempdir");
    let appliance = RootAppliance::start(
        &lab.server,
        &lab.server_if,
        &image.source(),
        dir.path(),
        &[],
    );
    let log = appliance.logger();
    let (id, chunks, bytes) =
        root_line(&log()).unwrap_or_else(|| panic!("no root line:\n{}", log()));
    assert!(
        chunks > 0 && bytes > 0,
        "{id}: {chunks} chunks, {bytes} bytes"
    );

    let pid = appliance.process.id().expect("server pid").to_string();
    let sources = format!("{}/{}", lab.subnet.host(100), lab.subnet.prefix_len());
    let server_url = format!("http://{}:8080", lab.server_ip());
    let manifest = format!("/roots/{id}/manifest");
    let key_file = dir.path().join("manifest.key");
    let json = dir.path().join("root.json");
    let svg = dir.path().join("root.svg");
    let clients = CLIENTS.to_string();
    let routes_before = local_routes(&lab);
    let common = [
        "--sources",
        &sources,
        "--server",
        &server_url,
        "--manifest",
        &manifest,
        "--clients",
        &clients,
        "--parallel",
        "3",
        "--deadline",
        "90",
    ];
    // Chunk by chunk first (`--run 1`); runs by Range further down.
    let mut args = common.to_vec();
    args.extend([
        "--run",
        "1",
        "--key-file",
        key_file.to_str().unwrap(),
        "--server-pid",
        &pid,
        "--label",
        "stampede",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let out = bench(&lab, &args);
    assert!(
        out.status.success(),
        "bench failed:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        log()
    );
    assert!(
        out.stdout.contains(&format!(
            "{CLIENTS} machines, {CLIENTS} roots verified, 0 failed"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        local_routes(&lab),
        routes_before,
        "the bench's routes are gone"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(&json).unwrap()).expect("JSON report");
    assert_eq!(report["mode"], "chunks");
    assert_eq!(report["clients"], CLIENTS);
    assert_eq!(report["verified"], CLIENTS);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["parallel"], 3);
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(report["time_to_root"][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(report["manifest"]["p50_ms"].is_number());
    assert!(report["time_to_last_root_s"].as_f64().unwrap() > 0.0);
    // Every byte of the root, plus one manifest, per machine.
    let root_bytes = report["root_bytes"].as_u64().unwrap();
    assert!(
        root_bytes > bytes && root_bytes < bytes + (1 << 20),
        "{root_bytes} vs {bytes}"
    );
    assert_eq!(
        report["bytes"].as_u64().unwrap(),
        root_bytes * CLIENTS as u64
    );
    assert!(report["server"]["cpu_s"].as_f64().unwrap() > 0.0);
    assert!(report["server_cpu_s_per_gb"].is_number());
    assert!(report["client_cpu_s"].as_f64().unwrap() > 0.0);
    let machines = report["machines"].as_array().unwrap();
    assert_eq!(machines.len(), CLIENTS);
    let sources: std::collections::HashSet<&str> = machines
        .iter()
        .map(|m| m["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), CLIENTS, "a source address per machine");
    for m in machines {
        assert_eq!(m["chunks"].as_u64(), Some(chunks), "{m}");
        assert!(m["root_ms"].is_number() && m["failure"].is_null(), "{m}");
        // One manifest and every chunk: no request lost or repeated.
        assert_eq!(m["requests"].as_u64(), Some(chunks + 1), "{m}");
    }
    assert!(fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    // The node agent's way: runs of chunks from the root's image, one Range request each.
    let runs_json = dir.path().join("runs.json");
    let mut args = common.to_vec();
    args.extend([
        "--run",
        "4",
        "--key-file",
        key_file.to_str().unwrap(),
        "--json",
        runs_json.to_str().unwrap(),
    ]);
    let out = bench(&lab, &args);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(&runs_json).unwrap()).expect("JSON report");
    assert_eq!(report["mode"], "chunk_runs");
    assert_eq!(report["verified"], CLIENTS, "{report}");
    for m in report["machines"].as_array().unwrap() {
        assert_eq!(m["chunks"].as_u64(), Some(chunks), "{m}");
        // One manifest, then one request per run of 4.
        assert_eq!(m["requests"].as_u64(), Some(1 + chunks.div_ceil(4)), "{m}");
    }

    // A run that fails (here the image is gone: 404) is fetched chunk by chunk, as the node
    // agent does, and every root is still verified, the retries counted.
    let image_file = dir.path().join(format!("roots/serve/roots/{id}/image"));
    fs::rename(&image_file, image_file.with_extension("gone")).expect("hiding the image");
    let mut args = common.to_vec();
    args.extend([
        "--run",
        "4",
        "--key-file",
        key_file.to_str().unwrap(),
        "--json",
        runs_json.to_str().unwrap(),
    ]);
    let out = bench(&lab, &args);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(&runs_json).unwrap()).expect("JSON report");
    assert_eq!(report["verified"], CLIENTS, "{report}");
    let runs = chunks.div_ceil(4);
    assert_eq!(report["runs_failed"].as_u64(), Some(runs * CLIENTS as u64));
    assert_eq!(report["root_restarts"], 0);
    for m in report["machines"].as_array().unwrap() {
        assert_eq!(m["chunks"].as_u64(), Some(chunks), "{m}");
        // The manifest, every run (404), then every chunk on its own.
        assert_eq!(m["requests"].as_u64(), Some(1 + runs + chunks), "{m}");
        assert_eq!(m["runs_failed"].as_u64(), Some(runs), "{m}");
        let reason = m["last_retry_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("404"), "{m}");
    }

    // A bench that trusts another key refuses every manifest and fetches no chunk; like the
    // agent, each machine tries its root step again after a backoff until the deadline.
    let other_key = dir.path().join("other.key");
    fs::write(&other_key, format!("{}\n", "5a".repeat(32))).unwrap();
    let mut args = common.to_vec();
    let deadline = args.iter().position(|a| *a == "--deadline").unwrap() + 1;
    args[deadline] = "5";
    args.extend([
        "--key-file",
        other_key.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = bench(&lab, &args);
    assert!(
        !out.status.success(),
        "a foreign key passed:\n{}",
        out.stdout
    );
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(&json).unwrap()).expect("JSON report");
    assert_eq!(report["verified"], 0);
    assert_eq!(report["failures_by_phase"]["manifest"], CLIENTS);
    let reason = report["failure_examples"][0]["failure"]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("signature"), "{reason}");
    for m in report["machines"].as_array().unwrap() {
        // Tried at 0 s and again after about 2 s (the agent's first backoff), never a chunk.
        assert_eq!(m["chunks"], 0, "{m}");
        assert!(m["requests"].as_u64().unwrap() >= 2, "{m}");
        assert_eq!(m["requests"], m["root_restarts"], "{m}");
    }
    assert_eq!(local_routes(&lab), routes_before);

    appliance
        .process
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let out = appliance
        .process
        .wait_output(Duration::from_secs(15))
        .expect("stampede exits");
    assert!(out.status.success(), "stampede failed:\n{}", log());
}
