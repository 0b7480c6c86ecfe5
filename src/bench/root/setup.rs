//! The run's setup from its arguments: the machines' addresses, the trusted key and the source.
use super::*;

/// `FIRST/PREFIX`.
pub(super) fn parse_sources(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = text
        .split_once('/')
        .with_context(|| format!("--sources {text:?}: want FIRST/PREFIX, e.g. 198.19.1.1/16"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("--sources {text:?}: {ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .with_context(|| format!("--sources {text:?}: the prefix must be 8 to 30"))?;
    Ok((ip, prefix))
}

pub(super) fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)))
}

pub(super) fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let m = u32::from(mask(prefix));
    u32::from(a) & m == u32::from(b) & m
}

/// Machine i's address: FIRST + i, checked to stay a host of the subnet and off the server.
pub(super) fn machine_addresses(
    first: Ipv4Addr,
    prefix: u8,
    server: Ipv4Addr,
    clients: usize,
) -> anyhow::Result<Vec<Ipv4Addr>> {
    if !same_subnet(first, server, prefix) {
        bail!(
            "--sources {first}/{prefix} does not hold the server's address {server}: the \
             machines reach the server on the link, without a router"
        );
    }
    let host_mask = !u32::from(mask(prefix));
    let mut out = Vec::with_capacity(clients);
    for i in 0..clients {
        let ip = u32::from(first)
            .checked_add(i as u32)
            .map(Ipv4Addr::from)
            .filter(|&ip| same_subnet(ip, first, prefix))
            .filter(|&ip| u32::from(ip) & host_mask != 0 && u32::from(ip) & host_mask != host_mask)
            .with_context(|| {
                format!("--sources {first}/{prefix} has no room for {clients} machines")
            })?;
        if ip == server {
            bail!("machine {i}'s address {ip} is the server's: start --sources past it");
        }
        out.push(ip);
    }
    Ok(out)
}

pub(super) fn trusted_key(args: &RootArgs) -> anyhow::Result<ManifestVerifyingKey> {
    match (&args.key, &args.key_file) {
        (Some(hex), None) => verifying_key_from_hex(hex).map_err(|e| anyhow::anyhow!("--key: {e}")),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .with_context(|| format!("{} is not a 64-digit hex key", path.display()))?;
            Ok(ManifestSigningKey::from_bytes(&seed).verifying_key())
        }
        _ => bail!("chunks mode needs the appliance's key: --key HEX or --key-file PATH"),
    }
}

/// The server's address, the `Host` it is asked by, and what the machines fetch.
pub(super) fn source(args: &RootArgs) -> anyhow::Result<(SocketAddrV4, String, Source)> {
    let bad = |e: String| anyhow::anyhow!("{e}");
    match (&args.whole_file, &args.server, &args.manifest) {
        (Some(url), None, None) => {
            let (server, authority, target) = split_http_url(url).map_err(bad)?;
            let text = args
                .sha256
                .as_deref()
                .context("--whole-file needs --sha256")?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut sha256)
                .with_context(|| format!("--sha256 {text:?}: want 64 hex digits"))?;
            Ok((server, authority, Source::WholeFile { target, sha256 }))
        }
        (None, Some(base), Some(manifest)) => {
            let (server, authority, _) = split_http_url(base).map_err(bad)?;
            if !manifest.starts_with('/') || !args.chunks_path.starts_with('/') {
                bail!(
                    "--manifest and --chunks-path are absolute HTTP paths (/roots/<id>/manifest)"
                );
            }
            let key = trusted_key(args)?;
            let source = Source::Chunks {
                manifest: manifest.clone(),
                chunks_path: args.chunks_path.clone(),
                key,
            };
            Ok((server, authority, source))
        }
        _ => bail!(
            "say what the machines fetch: --server URL --manifest PATH (with --key or \
             --key-file), or --whole-file URL --sha256 HEX"
        ),
    }
}
