//! Checks and settings of the host the appliance runs on: other DHCP servers, the neighbour
//! table, open-file limits and the default route.
use super::*;

/// Authoritative DHCP beside another server on the link gives each machine whichever answers
/// first: probe for one (before our own workers answer) and say so, naming it.
pub(super) fn warn_of_other_dhcp_servers(iface: &str, own: std::net::Ipv4Addr) {
    let probe = engine::interface_mac(iface)
        .map_err(anyhow::Error::from)
        .and_then(|mac| {
            crate::dhcp_probe::other_servers(iface, mac, own, crate::dhcp_probe::PROBE_WAIT)
        });
    match probe {
        Ok(servers) => {
            for server in servers {
                match server.offered {
                    Some(offered) => tracing::warn!(
                        %iface,
                        server = %server.address,
                        %offered,
                        "another DHCP server answers on this link and hands out addresses: \
                         machines take whichever offer comes first; stop one of them"
                    ),
                    None => tracing::warn!(
                        %iface,
                        server = %server.address,
                        "a ProxyDHCP server answers on this link beside this authoritative one"
                    ),
                }
            }
        }
        Err(err) => tracing::warn!(
            %iface,
            error = %error_chain(err.as_ref()),
            "could not probe for another DHCP server on the link"
        ),
    }
}

/// Every machine that fetches over TFTP or HTTP needs an entry in the kernel's ARP table.
/// Above `gc_thresh3` (1024 by default) new entries fail ("neighbour table overflow") and the
/// replies to those machines are dropped: a storm larger than that loses machines until the
/// table is raised. The benchmark harness found this at 1,100 machines.
pub(super) fn warn_if_neighbour_table_small(config: &ApplianceConfig) {
    let addresses: u64 = config
        .dhcp
        .pools
        .iter()
        .map(|p| u64::from(u32::from(p.last).saturating_sub(u32::from(p.first))) + 1)
        .sum();
    // Only the host's namespace shows the (global) setting.
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3") else {
        return;
    };
    let Ok(limit) = text.trim().parse::<u64>() else {
        return;
    };
    if addresses > limit {
        tracing::warn!(
            pool_addresses = addresses,
            gc_thresh3 = limit,
            "the DHCP pools are larger than the kernel's ARP table: in a boot storm of more than \
             {limit} machines replies will be dropped; raise net.ipv4.neigh.default.gc_thresh3 \
             (and gc_thresh1/2) above the fleet size"
        );
    }
}

/// Every machine booting over HTTP holds a connection: the usual soft limit of 1024 open files
/// (systemd's default for services) would refuse the rest of a rack with `EMFILE`. Raise the soft
/// limit to the hard one, as nginx's `worker_rlimit_nofile` does, and say so when even the hard
/// limit is below what the HTTP server may hold.
pub(super) fn raise_open_files(config: &ApplianceConfig) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(err) => tracing::warn!(%err, soft, hard, "cannot raise the open-file limit"),
        }
    }
    let want = config.http.max_connections as u64 + 1024;
    if hard < want {
        tracing::warn!(
            limit = hard,
            http_max_connections = config.http.max_connections,
            "the open-file limit is below http.max_connections: connections beyond it fail \
             (raise LimitNOFILE or lower http.max_connections)"
        );
    }
}

/// The interface of the IPv4 default route, from /proc/net/route.
pub(super) fn default_route_interface() -> anyhow::Result<String> {
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let iface = fields.next()?;
            let destination = fields.next()?;
            (destination == "00000000").then(|| iface.to_owned())
        })
        .next()
        .context("no default route: name the boot interface with --iface")
}
