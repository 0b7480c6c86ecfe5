//! TLS for the API: the certificate and key files loaded into a rustls configuration (ring as
//! the crypto provider, so no C toolchain beyond what `ring` needs), and a listener that does
//! handshakes off the accept loop.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that has not finished by then is dropped: a client that connects and says
/// nothing must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key could not be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("API TLS certificate {path}: {problem}")]
    Certificate { path: PathBuf, problem: String },
    #[error("API TLS key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("API TLS: the key {key} does not go with the certificate {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider everything TLS in Stampede uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS identity, loaded from PEM files: a certificate chain (leaf first) and its
/// private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Clone)]
pub struct ApiTls {
    config: Arc<ServerConfig>,
    cert: PathBuf,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls").field("cert", &self.cert).finish()
    }
}

impl ApiTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_err = |problem: String| TlsError::Certificate {
            path: cert.to_owned(),
            problem,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| cert_err(pem_problem(e, "CERTIFICATE")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(pem_problem(e, "CERTIFICATE")))?;
        if chain.is_empty() {
            return Err(cert_err("no PEM CERTIFICATE block in the file".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            problem: pem_problem(e, "PRIVATE KEY"),
        })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_err(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|source| TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })?;
        // The API speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            cert: cert.to_owned(),
        })
    }

    /// Serves TLS on `listener`: handshakes run in their own tasks (bounded by
    /// [`HANDSHAKE_TIMEOUT`]) so one slow client never stalls the accept loop.
    pub fn listener(&self, listener: TcpListener) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        // A small queue: connections wait here only between handshake and axum's accept.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener { local, rx })
    }
}

/// `what`: the PEM block wanted, for the message when there is none.
fn pem_problem(e: rustls_pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => format!("no PEM {what} block in the file"),
        other => format!("not valid PEM: {other:?}"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // The server stopped: stop accepting.
            () = ready.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "control API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "control API TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "control API TLS handshake timed out"),
            }
        });
    }
}

/// Connections whose TLS handshake finished, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this receiver is gone, so this never happens;
            // waiting forever is what a listener with no more connections does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
