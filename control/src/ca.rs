//! The appliance's own certificate authority for HTTPS boot: made at first start in the state
//! directory (`ca/ca.pem`, `ca/ca.key`), it issues the boot server's certificate for the boot
//! interface's addresses at every start. Operators hand `ca.pem` to firmware (OVMF's
//! `etc/edk2/https/cacerts`, iPXE's trust list) and to curl (`--cacert`).
//!
//! ECDSA P-256: `ring` (the crypto provider everything TLS here uses) cannot generate RSA keys,
//! and P-256 is the curve EDK2's TLS accepts beside RSA.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;

/// The CA certificate's file in the CA directory (PEM).
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file (PKCS#8 PEM, mode 0600).
pub const CA_KEY: &str = "ca.key";

/// How long the CA certificate is valid: 20 years, longer than the appliance's life, so
/// firmware that was handed the CA once never needs it again.
const CA_YEARS: i32 = 20;
/// How long an issued server certificate is valid: 2 years. It is issued again at each start.
const SERVER_YEARS: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA key {path} cannot be read: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("CA certificate {path} has no PEM CERTIFICATE block")]
    Certificate { path: PathBuf },
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The appliance CA: its certificate (as stored) and its signing key.
pub struct ApplianceCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ApplianceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceCa").finish_non_exhaustive()
    }
}

/// The subject of the CA whose key is `key`: named after its public key, so it is the same
/// every time the key is loaded and certificates issued later chain to the stored certificate.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, rcgen::Error> {
    let digest = sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(key));
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Stampede");
    name.push(
        DnType::CommonName,
        format!("Stampede appliance CA {}", hex::encode(&digest[..6])),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time_now();
    params.not_before = now;
    params.not_after = now.replace_year(now.year() + CA_YEARS).unwrap_or(now);
    Ok(params)
}

fn time_now() -> time::OffsetDateTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Yesterday: a machine whose clock runs a little behind still accepts the certificate.
    time::OffsetDateTime::from_unix_timestamp(secs as i64 - 86_400)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

impl ApplianceCa {
    /// Loads the CA from `dir`, or makes it there if `dir` holds neither file.
    pub fn open_or_create(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        if !cert_path.exists() && !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params(&key)?.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            tracing::info!(path = %cert_path.display(), "made the appliance CA");
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::Key {
            path: key_path.clone(),
            source,
        })?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(CaError::Certificate { path: cert_path });
        }
        let issuer = Issuer::new(ca_params(&key)?, key);
        Ok(Self { cert_pem, issuer })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `addresses` (and `names`, DNS names), signed by the CA, with a
    /// fresh key: the chain (server certificate first) and the key.
    pub fn issue_server(
        &self,
        addresses: &[IpAddr],
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .subject_alt_names
            .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "Stampede boot server");
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time_now();
        params.not_before = now;
        params.not_after = now.replace_year(now.year() + SERVER_YEARS).unwrap_or(now);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    }
}

/// The operator's certificate chain (leaf first) and key, PEM files.
pub fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
    let pem = |path: &Path, what: &str, e: rustls_pki_types::pem::Error| CaError::Pem {
        path: path.to_owned(),
        problem: match e {
            rustls_pki_types::pem::Error::Io(io) => io.to_string(),
            rustls_pki_types::pem::Error::NoItemsFound => format!("no PEM {what} block"),
            other => format!("not valid PEM: {other:?}"),
        },
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, "CERTIFICATE", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, "CERTIFICATE", e))?;
    if chain.is_empty() {
        return Err(CaError::Pem {
            path: cert.to_owned(),
            problem: "no PEM CERTIFICATE block".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, "PRIVATE KEY", e))?;
    Ok((chain, key_der))
}

/// A rustls server configuration for HTTPS boot: TLS 1.3 and 1.2 (EDK2 firmware speaks only
/// 1.2), HTTP/1.1 only.
pub fn boot_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, CaError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes `bytes` to a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded_and_issued_certificates_chain_to_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = ApplianceCa::open_or_create(dir.path()).expect("CA made");
        let again = ApplianceCa::open_or_create(dir.path()).expect("CA loaded");
        assert_eq!(ca.certificate_pem(), again.certificate_pem());
        let (chain, key) = again
            .issue_server(&["198.18.0.1".parse().expect("address")], &[])
            .expect("issued");
        let config = boot_server_config(chain.clone(), key).expect("server config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        // A client trusting only the stored CA accepts the issued certificate.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).expect("CA PEM");
        roots.add(ca_der).expect("CA added");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .expect("verifier");
        let name = rustls_pki_types::ServerName::try_from("198.18.0.1").expect("name");
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .expect("the issued certificate chains to the stored CA");
        let other = rustls_pki_types::ServerName::try_from("198.18.0.2").expect("name");
        assert!(
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &other,
                    &[],
                    rustls_pki_types::UnixTime::now()
                )
                .is_err(),
            "another address is not in the certificate"
        );
    }

    #[test]
    fn a_damaged_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(CA_KEY), "not a key").expect("write");
        std::fs::write(dir.path().join(CA_CERT), "not a cert").expect("write");
        let err = ApplianceCa::open_or_create(dir.path()).expect_err("damaged key");
        assert!(err.to_string().contains(CA_KEY), "{err}");
    }

    use rustls::client::danger::ServerCertVerifier as _;
}
