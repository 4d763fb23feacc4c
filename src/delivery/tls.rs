//! TLS for webhook endpoints: certificates are verified against the system
//! roots by default; `ca_file` adds a private CA, `client_cert` +
//! `client_key` give mutual TLS, and `danger_accept_invalid_certs` switches
//! verification off (with a warning at start, as it defeats TLS).
//!
//! Loading the system roots takes milliseconds (some 150 files parsed), so
//! the clients built together (every endpoint's, and its token client) that
//! verify against them alone share one rustls configuration
//! ([`SystemRoots`]): the roots are read once per build, not per client.
//!
//! A failed handshake surfaces from reqwest as a generic "error sending
//! request"; [`explain`] digs the rustls error out of the cause chain and
//! says what to change.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use reqwest::{Certificate, ClientBuilder, Identity};
use rustls::{AlertDescription, CertificateError};

use crate::config::Tls;

/// Why an endpoint's TLS settings cannot be used. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("endpoints.{endpoint}.tls.{field}: cannot read {path}: {source}")]
    Read {
        /// The endpoint's name.
        endpoint: String,
        /// `ca_file`, `client_cert` or `client_key`.
        field: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM.
    #[error("endpoints.{endpoint}.tls.{field}: {path} {reason}")]
    Pem {
        /// The endpoint's name.
        endpoint: String,
        /// `ca_file`, `client_cert` or `client_key`.
        field: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Only one of `client_cert` and `client_key`.
    #[error("endpoints.{0}.tls: client_cert and client_key go together: set both or neither")]
    HalfIdentity(String),
    /// The system's CA certificates cannot be loaded.
    #[error("endpoints.{endpoint}: cannot load the system's CA certificates: {reason}; install them (e.g. the ca-certificates package) or set tls.ca_file")]
    SystemRoots {
        /// The endpoint's name.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

/// The TLS configuration of clients that verify servers against the
/// system roots alone (no `ca_file`, no client certificate, verification
/// on), built on first use and shared by every client built with it.
#[derive(Debug, Default)]
pub(crate) struct SystemRoots {
    config: OnceLock<Result<rustls::ClientConfig, String>>,
}

impl SystemRoots {
    /// What reqwest builds itself for such a client (the platform verifier
    /// over the system roots, TLS 1.2 and 1.3, ALPN h2 and http/1.1), once.
    fn config(&self, endpoint: &str) -> Result<rustls::ClientConfig, TlsError> {
        self.config
            .get_or_init(|| {
                let provider = rustls::crypto::CryptoProvider::get_default()
                    .cloned()
                    .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
                let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
                    .map_err(|e| e.to_string())?;
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(rustls::ALL_VERSIONS)
                    .map_err(|e| e.to_string())?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Ok(config)
            })
            .clone()
            .map_err(|reason| TlsError::SystemRoots {
                endpoint: endpoint.to_string(),
                reason,
            })
    }
}

/// [`configure`], with `roots`' shared configuration when `tls` asks for
/// nothing but the system roots.
pub(crate) fn configure_shared(
    builder: ClientBuilder,
    tls: &Tls,
    endpoint: &str,
    roots: &SystemRoots,
) -> Result<ClientBuilder, TlsError> {
    let system_only = tls.ca_file.is_none()
        && tls.client_cert.is_none()
        && tls.client_key.is_none()
        && !tls.danger_accept_invalid_certs;
    if system_only {
        Ok(builder.tls_backend_preconfigured(roots.config(endpoint)?))
    } else {
        configure(builder, tls, endpoint)
    }
}

fn read(endpoint: &str, field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        endpoint: endpoint.to_string(),
        field,
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(endpoint: &str, field: &'static str, path: &Path, reason: &str) -> TlsError {
    TlsError::Pem {
        endpoint: endpoint.to_string(),
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Applies `tls` to a client builder for endpoint `endpoint` (its name).
pub fn configure(
    mut builder: ClientBuilder,
    tls: &Tls,
    endpoint: &str,
) -> Result<ClientBuilder, TlsError> {
    builder = builder.tls_backend_rustls();
    if let Some(path) = &tls.ca_file {
        let pem = read(endpoint, "ca_file", path)?;
        let certs = Certificate::from_pem_bundle(&pem)
            .map_err(|_| pem_error(endpoint, "ca_file", path, "is not a PEM certificate bundle"))?;
        if certs.is_empty() {
            return Err(pem_error(
                endpoint,
                "ca_file",
                path,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read(endpoint, "client_cert", cert_path)?;
            if !contains(&cert, b"-----BEGIN CERTIFICATE-----") {
                return Err(pem_error(
                    endpoint,
                    "client_cert",
                    cert_path,
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            let key = read(endpoint, "client_key", key_path)?;
            if !contains(&key, b"PRIVATE KEY-----") {
                return Err(pem_error(
                    endpoint,
                    "client_key",
                    key_path,
                    "holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
                ));
            }
            let mut pem = key;
            pem.push(b'\n');
            pem.extend_from_slice(&cert);
            let identity = Identity::from_pem(&pem).map_err(|_| {
                pem_error(
                    endpoint,
                    "client_key",
                    key_path,
                    "with client_cert is not a usable PEM key and certificate pair",
                )
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => return Err(TlsError::HalfIdentity(endpoint.to_string())),
    }
    if tls.danger_accept_invalid_certs {
        tracing::warn!(
            endpoint,
            "tls.danger_accept_invalid_certs is set: the endpoint's certificate is not verified, \
             so anyone on the network path can read and change batches; use tls.ca_file instead"
        );
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why a request failed, with TLS causes spelled out and a fix where one is
/// known, e.g. "certificate is not trusted (UnknownIssuer): …; set
/// tls.ca_file". Never contains the URL.
pub fn explain(err: &reqwest::Error) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut tls: Option<String> = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = source {
        if tls.is_none() {
            tls = rustls_error(cause).map(explain_rustls);
        }
        let text = cause.to_string();
        if !chain.iter().any(|c| c.contains(&text)) {
            chain.push(text);
        }
        source = cause.source();
    }
    if let Some(tls) = tls {
        return format!("TLS handshake failed: {tls}");
    }
    let head = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    if chain.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {}", chain.join(": "))
    }
}

/// The rustls error in `cause`, itself or wrapped in (possibly nested)
/// `io::Error`s, whose `source()` skips the wrapped error, so they are
/// unwrapped by hand.
fn rustls_error<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = cause;
    for _ in 0..8 {
        if let Some(err) = current.downcast_ref::<rustls::Error>() {
            return Some(err);
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
    None
}

fn explain_rustls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => explain_certificate(cert),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate (CertificateRequired): \
             set tls.client_cert and tls.client_key"
                .to_string()
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked),
        ) => format!(
            "the server rejected walhook's client certificate ({alert:?}): \
             check that tls.client_cert is signed by a CA the server trusts and still valid"
        ),
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure) => {
            "the server refused the handshake (HandshakeFailure): no common TLS version or \
             cipher, or it wants a client certificate (tls.client_cert)"
                .to_string()
        }
        other => format!("{other}"),
    }
}

fn explain_certificate(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "the server's certificate is not trusted (UnknownIssuer): it is self-signed or \
             issued by a private CA; set tls.ca_file to that CA's PEM file"
                .to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate is not valid for this host name (NotValidForName): \
                 use the name the certificate was issued for in the URL ({err})"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "the server's certificate has expired (Expired): renew it on the server ({err})"
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
            "the server's certificate is not valid yet (NotValidYet): check both clocks ({err})"
        ),
        CertificateError::Revoked => {
            "the server's certificate has been revoked (Revoked)".to_string()
        }
        CertificateError::BadSignature => {
            "the server's certificate has a bad signature (BadSignature)".to_string()
        }
        other => format!("the server's certificate was refused ({other:?})"),
    }
}
