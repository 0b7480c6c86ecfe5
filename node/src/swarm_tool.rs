//! `stampede-node swarm-fetch`: the agent's swarm fetch run on a host, not as PID 1, so the
//! lab can put it beside real BitTorrent clients (and other agents) in namespaces.
//!
//! ```text
//! stampede-node swarm-fetch --manifest URL --key HEX --out FILE
//!     [--server URL] [--peers-only] [--v1-only] [--port N] [--seed-secs N] [--timeout-secs N]
//! ```
//!
//! It fetches and verifies the signed manifest as the agent does, joins the root's swarm,
//! writes the image to FILE, prints a `swarm done:` line with where the bytes came from, seeds
//! for `--seed-secs` and exits 0; any failure exits 1 with the reason. `--peers-only` takes no
//! byte from the web seed (the appliance serves the manifest and the tracker only);
//! `--v1-only` joins the v1-only twin's swarm, the one Debian 12's aria2c can join.
use std::{fs, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use stampede_rootfs::manifest::{MAX_MANIFEST_BYTES, SignedManifest, verifying_key_from_hex};

use crate::{
    http::{HttpConnection, HttpUrl},
    swarm::{self, SwarmNode, SwarmNote, SwarmPlan},
};

/// Runs the tool; the process's exit code.
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("swarm-fetch: {err:#}");
            1
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let mut manifest_url = None;
    let mut server = None;
    let mut key = None;
    let mut out = None;
    let (mut peers_only, mut v1_only) = (false, false);
    let mut port = swarm::DEFAULT_PORT;
    let mut seed_secs = 0u64;
    let mut timeout_secs = 120u64;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .with_context(|| format!("{word} needs a value"))
        };
        match word.as_str() {
            "--manifest" => manifest_url = Some(HttpUrl::parse(value()?)?),
            "--server" => server = Some(HttpUrl::parse(value()?)?),
            "--key" => key = Some(verifying_key_from_hex(value()?)?),
            "--out" => out = Some(value()?.clone()),
            "--peers-only" => peers_only = true,
            "--v1-only" => v1_only = true,
            "--port" => port = value()?.parse().context("--port")?,
            "--seed-secs" => seed_secs = value()?.parse().context("--seed-secs")?,
            "--timeout-secs" => timeout_secs = value()?.parse().context("--timeout-secs")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let manifest_url = manifest_url.context("--manifest URL is required")?;
    let key = key.context("--key HEX is required")?;
    let out = out.context("--out FILE is required")?;
    let server = server.unwrap_or_else(|| manifest_url.origin());

    let mut conn = HttpConnection::new(&manifest_url, Duration::from_secs(10));
    let bytes = conn.get_ok(&manifest_url, MAX_MANIFEST_BYTES)?;
    let manifest = SignedManifest::from_bytes(&bytes)?
        .verify(&key)
        .context("the manifest's signature")?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&out)
        .with_context(|| format!("creating {out}"))?;
    file.set_len(manifest.size)?;
    let web_seed = (!peers_only)
        .then(|| crate::agent::image_url(&manifest_url))
        .flatten();
    let seed = std::process::id() as u64 ^ (port as u64) << 32;
    let mut plan =
        SwarmPlan::for_manifest(&manifest, &server, web_seed, v1_only, swarm::peer_id(seed))?;
    plan.port = port;
    let node = SwarmNode::start(&manifest, plan, file, Box::new(print_note))?;
    let report = node.wait_complete(Duration::from_secs(timeout_secs))?;
    // Read back and check every chunk once more, as the agent checks the assembled root.
    let image = fs::read(&out)?;
    for (i, chunk) in manifest.chunks.iter().enumerate() {
        let at = manifest.offset(i) as usize;
        chunk
            .check(&image[at..at + chunk.size as usize])
            .with_context(|| format!("chunk {i} as written"))?;
    }
    let banned: Vec<String> = report.banned.iter().map(IpAddr::to_string).collect();
    println!(
        "swarm done: {} bytes in {} ms: {} from peers ({} pieces), {} from the appliance ({} pieces), {} uploaded, banned [{}]",
        manifest.size,
        report.elapsed.as_millis(),
        report.bytes_from_peers,
        report.pieces_from_peers,
        report.bytes_from_appliance,
        report.pieces_from_appliance,
        report.bytes_uploaded,
        banned.join(" ")
    );
    std::thread::sleep(Duration::from_secs(seed_secs));
    let report = node.report();
    println!("swarm seeded: {} uploaded", report.bytes_uploaded);
    drop(node);
    Ok(())
}

fn print_note(note: SwarmNote) {
    match note {
        SwarmNote::Announced { peers } => println!("swarm: announced, {peers} peers listed"),
        SwarmNote::AnnounceFailed { reason } => println!("swarm: announce failed: {reason}"),
        SwarmNote::PeerBanned { addr, piece } => {
            println!("swarm: banned {addr}: piece {piece} failed its SHA-256")
        }
        SwarmNote::WebSeedFailed { piece, reason } => {
            println!("swarm: web seed, piece {piece}: {reason}")
        }
    }
}
