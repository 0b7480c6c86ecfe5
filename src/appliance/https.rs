//! HTTPS boot beside the plain HTTP workers (`http.https_port`): the certificate, from the
//! operator's files or issued by the appliance CA in the state directory, and the server.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use stampede_control::ca::{ApplianceCa, boot_server_config, load_identity};
use stampede_dataplane::config::{HttpsSettings, TlsIdentity};
use stampede_dataplane::engine::https::{HttpsServer, HttpsServerConfig, HttpsStats};
use stampede_proto::files::FileCatalog;
use stampede_proto::http::Route;

/// Where the appliance CA lives under the state directory.
pub(crate) const CA_DIR: &str = "ca";

/// Starts HTTPS boot on `server_ip:settings.port`.
pub(super) fn start(
    settings: &HttpsSettings,
    state_dir: &Path,
    server_ip: Ipv4Addr,
    config: HttpsServerConfig,
    catalog: Arc<dyn FileCatalog + Send + Sync>,
    route: Option<Arc<dyn Route + Send + Sync>>,
) -> anyhow::Result<HttpsServer> {
    let (chain, key) = match &settings.identity {
        TlsIdentity::Files { cert, key } => {
            load_identity(cert, key).with_context(|| format!("http.tls_cert {}", cert.display()))?
        }
        TlsIdentity::ApplianceCa => {
            let dir = state_dir.join(CA_DIR);
            let ca = ApplianceCa::open_or_create(&dir)
                .with_context(|| format!("the appliance CA in {}", dir.display()))?;
            ca.issue_server(&[IpAddr::V4(server_ip)], &[])
                .context("issuing the boot server's certificate")?
        }
    };
    let tls = boot_server_config(chain, key).context("the HTTPS boot certificate and key")?;
    let listen = SocketAddr::new(server_ip.into(), settings.port);
    HttpsServer::bind(listen, config, tls, catalog, route)
        .with_context(|| format!("starting the HTTPS server on {listen}"))
}

/// `https_stats ...`: the counters on the stats lines.
pub(super) fn format_https_stats(stats: &HttpsStats) -> String {
    let h = &stats.http;
    format!(
        "https_conns={} https_refused={} https_handshake_failures={} https_2xx={} https_4xx={} \
         https_5xx={} https_bytes={}",
        h.accepted,
        h.refused,
        stats.handshake_failures,
        h.responses_by_class[2],
        h.responses_by_class[4],
        h.responses_by_class[5],
        h.bytes_sent
    )
}
