//! The OCI distribution API v2 as a blob source: manifests, blobs with Range resumption, and
//! the registry's authentication (anonymous, HTTP Basic, Bearer tokens).
//!
//! Authentication follows the challenge: a request goes out with what we already hold; a 401
//! names the scheme in `WWW-Authenticate` (RFC 9110 §11.6.1). `Basic` is answered with the
//! credentials (RFC 7617); `Bearer realm=..,service=..,scope=..` is traded for a token at the
//! realm (the distribution token spec), with the credentials as Basic if there are any, and the
//! request is sent again. A token that expires mid-pull is renewed the same way.
//!
//! https only unless the operator sets `plain_http`; that also holds for redirects (a registry
//! may send blobs from other storage with a 307) and token realms. reqwest drops the
//! Authorization header when a redirect leaves the host, so a registry token never reaches the
//! blob store.
use std::{fmt, io::Read, time::Duration};

use base64::Engine as _;
use reqwest::{
    StatusCode,
    blocking::{Client, Response},
    header::{
        ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, RANGE,
        WWW_AUTHENTICATE,
    },
    redirect,
};

use crate::manifest::Sha256Digest;
use crate::oci::{
    self, BlobCache, BlobSource, Document, ImageReference, ImportError, MAX_DOCUMENT_BYTES,
    PullOptions, PulledImage, Reference, media_type, oci_digest,
};

/// A stall this long while connecting or between reads ends the transfer (it resumes on the
/// next pull); the whole download of a large layer may take as long as it needs.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed per request (blob storage needs one; 10 is reqwest's own default).
const MAX_REDIRECTS: usize = 10;
/// Bytes of an error body quoted in a message.
const ERROR_BODY_BYTES: u64 = 1024;

/// What the manifest endpoint is asked for: both families' manifests and indexes.
const MANIFEST_ACCEPT: &str = concat!(
    "application/vnd.oci.image.index.v1+json, ",
    "application/vnd.oci.image.manifest.v1+json, ",
    "application/vnd.docker.distribution.manifest.list.v2+json, ",
    "application/vnd.docker.distribution.manifest.v2+json"
);

pub(crate) fn pull(
    reference: &ImageReference,
    cache: &BlobCache,
    options: &PullOptions<'_>,
) -> Result<PulledImage, ImportError> {
    let mut client = RegistryClient::new(reference, options)?;
    let top = client.top_manifest()?;
    oci::resolve(&mut client, top, cache, options)
}

/// A registry's authentication challenge, from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Other(String),
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic => f.write_str("Basic"),
            Self::Bearer { realm, .. } => write!(f, "a Bearer token from {realm}"),
            Self::Other(scheme) => write!(f, "{scheme}, which is not supported"),
        }
    }
}

/// Parses a challenge: `scheme` then `key=value` or `key="quoted, \"escaped\""` parameters
/// separated by commas (RFC 9110 §11.2). Only the first challenge of the header is read.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let params = parse_auth_params(rest);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        }),
        _ => Some(Challenge::Other(scheme.to_owned())),
    }
}

fn parse_auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars
            .next_if(|c| *c == ',' || c.is_ascii_whitespace())
            .is_some()
        {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if chars.next_if_eq(&'=').is_none() {
            return params;
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
            value.truncate(value.trim_end().len());
        }
        params.push((key.trim().to_owned(), value));
    }
}

/// Redirect policy error: a redirect from https to plain http.
#[derive(Debug)]
struct PlainHttpRedirect(String);

impl fmt::Display for PlainHttpRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redirect to plain http {}", self.0)
    }
}

impl std::error::Error for PlainHttpRedirect {}

struct RegistryClient {
    http: Client,
    /// `https://HOST/v2/REPOSITORY`.
    base: String,
    reference: ImageReference,
    credentials: Option<(String, String)>,
    authorization: Option<HeaderValue>,
    plain_http: bool,
}

impl RegistryClient {
    fn new(reference: &ImageReference, options: &PullOptions<'_>) -> Result<Self, ImportError> {
        // reqwest is built without a crypto provider of its own; it uses the process default.
        // Installing fails only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain_http = options.plain_http;
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if !plain_http && attempt.url().scheme() != "https" {
                let url = attempt.url().to_string();
                attempt.error(PlainHttpRedirect(url))
            } else {
                attempt.follow()
            }
        });
        let mut builder = Client::builder()
            .timeout(STALL_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(policy)
            .https_only(!plain_http)
            .user_agent(concat!("stampede/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            let ca_err = |detail: String| ImportError::CaFile {
                path: path.clone(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM CERTIFICATE block in the file".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| ImportError::Http {
            url: reference.to_string(),
            detail: format!("HTTP client setup: {}", chain(&e)),
        })?;
        let scheme = if plain_http { "http" } else { "https" };
        Ok(Self {
            http,
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository
            ),
            reference: reference.clone(),
            credentials: options.credentials.clone(),
            authorization: None,
            plain_http,
        })
    }

    /// GET `url`, answering one authentication challenge.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        offset: u64,
    ) -> Result<Response, ImportError> {
        let mut renewed = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if offset > 0 {
                request = request.header(RANGE, format!("bytes={offset}-"));
            }
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            let response = request.send().map_err(|e| transport_error(url, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let header = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let challenge = parse_challenge(&header);
            let unauthorized = |challenge: String| ImportError::Unauthorized {
                url: url.to_owned(),
                challenge,
                credentials_given: self.credentials.is_some(),
            };
            if renewed {
                return Err(unauthorized(describe_challenge(
                    challenge.as_ref(),
                    &header,
                )));
            }
            renewed = true;
            self.authorization = Some(match &challenge {
                Some(Challenge::Basic) => match &self.credentials {
                    Some((user, password)) => basic(user, password),
                    None => return Err(unauthorized("Basic".into())),
                },
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => self.token(realm, service.as_deref(), scope.as_deref())?,
                other => return Err(unauthorized(describe_challenge(other.as_ref(), &header))),
            });
        }
    }

    /// Trades the credentials (or nothing, for anonymous pulls) for a token at `realm`.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<HeaderValue, ImportError> {
        let default_scope = format!("repository:{}:pull", self.reference.repository);
        let mut params = vec![("scope", scope.unwrap_or(&default_scope))];
        if let Some(service) = service {
            params.push(("service", service));
        }
        let url =
            reqwest::Url::parse_with_params(realm, &params).map_err(|e| ImportError::Http {
                url: realm.to_owned(),
                detail: format!("the token realm is not a URL: {e}"),
            })?;
        match url.scheme() {
            "https" => {}
            "http" if self.plain_http => {}
            _ => {
                return Err(ImportError::PlainHttpRefused {
                    url: url.to_string(),
                });
            }
        }
        let url_text = url.to_string();
        let mut request = self.http.get(url);
        if let Some((user, password)) = &self.credentials {
            request = request.header(AUTHORIZATION, basic(user, password));
        }
        let response = request.send().map_err(|e| transport_error(&url_text, &e))?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(ImportError::Unauthorized {
                url: url_text,
                challenge: "a Bearer token".into(),
                credentials_given: self.credentials.is_some(),
            });
        }
        let response = check_status(response)?;
        #[derive(serde::Deserialize)]
        struct TokenWire {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = read_limited(response, "token response", &url_text)?;
        let wire: TokenWire =
            serde_json::from_slice(&bytes).map_err(|e| ImportError::Malformed {
                what: "token response".into(),
                location: url_text.clone(),
                detail: e.to_string(),
            })?;
        let token = wire
            .token
            .or(wire.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ImportError::Malformed {
                what: "token response".into(),
                location: url_text.clone(),
                detail: "neither token nor access_token".into(),
            })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ImportError::Malformed {
                what: "token response".into(),
                location: url_text,
                detail: "the token is not a header value".into(),
            }
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The manifest or index the reference names, checked against its digest when it is one.
    fn top_manifest(&mut self) -> Result<Document, ImportError> {
        let url = format!(
            "{}/manifests/{}",
            self.base,
            self.reference.reference_text()
        );
        let response = self.get(&url, Some(MANIFEST_ACCEPT), 0)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(ImportError::MissingBlob {
                what: "manifest".into(),
                digest: self.reference.reference_text(),
                location: url,
            });
        }
        let response = check_status(response)?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .filter(|v| is_manifest_media_type(v));
        let bytes = read_limited(response, "manifest", &url)?;
        let digest = Sha256Digest::of(&bytes);
        if let Reference::Digest(expected) = &self.reference.reference
            && *expected != digest
        {
            return Err(ImportError::DigestMismatch {
                what: "manifest".into(),
                location: url,
                expected: oci_digest(expected),
                actual: oci_digest(&digest),
            });
        }
        Ok(Document {
            bytes,
            digest,
            media_type,
            location: url,
        })
    }

    fn blob_url(&self, digest: &Sha256Digest) -> String {
        format!("{}/blobs/{}", self.base, oci_digest(digest))
    }
}

/// A registry may label a manifest `application/json` or `text/plain`; only a manifest media
/// type is taken as the document's (else the document's own `mediaType` decides).
fn is_manifest_media_type(text: &str) -> bool {
    matches!(
        text,
        media_type::OCI_MANIFEST
            | media_type::OCI_INDEX
            | media_type::DOCKER_MANIFEST
            | media_type::DOCKER_MANIFEST_LIST
    ) || text.starts_with("application/vnd.docker.distribution.manifest.v1")
}

impl BlobSource for RegistryClient {
    fn location(&self, digest: &Sha256Digest) -> String {
        self.blob_url(digest)
    }

    fn open_blob(
        &mut self,
        digest: &Sha256Digest,
        offset: u64,
    ) -> Result<(Box<dyn Read + '_>, u64), ImportError> {
        let url = self.blob_url(digest);
        let response = self.get(&url, None, offset)?;
        match response.status() {
            StatusCode::OK => Ok((Box::new(response), 0)),
            StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    return Err(ImportError::Http {
                        url: response.url().to_string(),
                        detail: format!(
                            "asked for bytes from {offset}, the 206 answer has Content-Range {:?}",
                            response.headers().get(CONTENT_RANGE)
                        ),
                    });
                }
                Ok((Box::new(response), offset))
            }
            // The partial file is longer than the blob: start over.
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => self.open_blob(digest, 0),
            StatusCode::NOT_FOUND => Err(ImportError::MissingBlob {
                what: "blob".into(),
                digest: oci_digest(digest),
                location: response.url().to_string(),
            }),
            _ => Err(check_status(response)
                .err()
                .unwrap_or_else(|| ImportError::Http {
                    url,
                    detail: "unexpected answer".into(),
                })),
        }
    }

    fn open_manifest(&mut self, digest: &Sha256Digest) -> Result<Box<dyn Read + '_>, ImportError> {
        let url = format!("{}/manifests/{}", self.base, oci_digest(digest));
        let response = self.get(&url, Some(MANIFEST_ACCEPT), 0)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(ImportError::MissingBlob {
                what: "manifest".into(),
                digest: oci_digest(digest),
                location: url,
            });
        }
        Ok(Box::new(check_status(response)?))
    }

    fn resumable(&self) -> bool {
        true
    }
}

/// `bytes START-END/TOTAL` -> START (RFC 9110 §14.4).
fn content_range_start(text: &str) -> Option<u64> {
    let range = text.trim().strip_prefix("bytes ")?;
    range.split_once('-')?.0.trim().parse().ok()
}

fn basic(user: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

fn describe_challenge(challenge: Option<&Challenge>, header: &str) -> String {
    match challenge {
        Some(challenge) => challenge.to_string(),
        None if header.is_empty() => {
            "authentication without saying how (no WWW-Authenticate)".into()
        }
        None => format!("{header:?}"),
    }
}

/// A success status, or the error it means (with the registry's own error text if any).
fn check_status(response: Response) -> Result<Response, ImportError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().to_string();
    let mut body = Vec::new();
    let _ = response.take(ERROR_BODY_BYTES).read_to_end(&mut body);
    // Distribution spec, "Error Codes": {"errors": [{"code": .., "message": ..}]}.
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorWire>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorWire {
        code: String,
        #[serde(default)]
        message: String,
    }
    let detail = match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) if !errors.errors.is_empty() => {
            let list: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message))
                .collect();
            format!(": {}", list.join("; "))
        }
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                String::new()
            } else {
                format!(": {}", text.chars().take(200).collect::<String>())
            }
        }
    };
    Err(ImportError::HttpStatus {
        url,
        status: status.as_u16(),
        detail,
    })
}

/// A document body of at most [`MAX_DOCUMENT_BYTES`], refused early when the server says it is
/// longer.
fn read_limited(response: Response, what: &str, url: &str) -> Result<Vec<u8>, ImportError> {
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ImportError::TooLarge {
        what: what.to_owned(),
        location: url.to_owned(),
        limit: MAX_DOCUMENT_BYTES,
    };
    if declared.is_some_and(|len| len > MAX_DOCUMENT_BYTES) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    response
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImportError::Transfer {
            what: what.to_owned(),
            location: url.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// An error and its causes, joined: reqwest's own message alone is often "error sending request".
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

/// The rustls error `err` is or wraps. io::Error needs unwrapping by hand: its `source()`
/// skips the error it carries (tokio-rustls and hyper each wrap one io::Error in another).
fn find_rustls_error<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut current = err;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
}

/// Names what failed: TLS (the rustls error, found down the cause chain), a refused plain-http
/// redirect, or the connection.
fn transport_error(url: &str, err: &reqwest::Error) -> ImportError {
    let mut cause: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = cause {
        if let Some(tls) = find_rustls_error(e) {
            let hint = match tls {
                rustls::Error::InvalidMessage(_) => {
                    " (the server did not answer in TLS: is it plain http? Use plain_http only \
                     for a registry meant to be reached without TLS)"
                }
                _ => "",
            };
            return ImportError::Tls {
                url: url.to_owned(),
                detail: format!("{tls}{hint}"),
            };
        }
        if let Some(redirect) = e.downcast_ref::<PlainHttpRedirect>() {
            return ImportError::PlainHttpRefused {
                url: redirect.0.clone(),
            };
        }
        cause = e.source();
    }
    ImportError::Http {
        url: url.to_owned(),
        detail: chain(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quotes_and_commas() {
        let header = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:team/app:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="stampede test""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge("bearer Realm=https://a/t, service = x"),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("x".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: None
            })
        );
        // Bearer without a realm cannot be answered.
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(
            parse_challenge("Negotiate"),
            Some(Challenge::Other("Negotiate".into()))
        );
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn content_ranges_give_their_start() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn basic_credentials_are_base64_and_sensitive() {
        let value = basic("user", "pa:ss");
        assert_eq!(value.to_str().unwrap(), "Basic dXNlcjpwYTpzcw==");
        assert!(value.is_sensitive());
    }
}
