//! rustls client configuration for libpq's sslmode semantics.
//!
//! - prefer / allow / require: encrypted, the certificate is not checked
//!   (libpq does the same; only the handshake signatures are verified).
//! - verify-ca: the chain must lead to a trusted root; the name is not checked.
//! - verify-full: the chain must be trusted and the certificate must name the host.
//!
//! Roots come from `sslrootcert` (a PEM file) or the system store. The
//! system store is read once per process (some 150 files, milliseconds)
//! and shared by every connection: the state store and the slot watchers
//! reconnect often.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::{RootCerts, SslMode};

/// A TLS configuration or handshake problem; not transient (the settings
/// or the certificates must change).
#[derive(Debug, thiserror::Error)]
#[error("TLS with {target} failed: {reason}; sslmode and sslrootcert in source.url decide what is verified (verify-full needs the URL's host name in the server certificate)")]
pub struct TlsError {
    /// The server, as `host:port`.
    pub(crate) target: String,
    /// What went wrong.
    pub(crate) reason: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_error(target: &str, reason: impl Into<String>) -> TlsError {
    TlsError {
        target: target.to_string(),
        reason: reason.into(),
    }
}

/// The system's roots, once loaded (a failed load is tried again).
static SYSTEM_ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();

/// Loads the trusted roots for verify-ca / verify-full.
fn root_store(roots: &RootCerts, target: &str) -> Result<Arc<RootCertStore>, TlsError> {
    if let (RootCerts::System, Some(store)) = (roots, SYSTEM_ROOTS.get()) {
        return Ok(store.clone());
    }
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_error(
                        target,
                        format!("cannot read sslrootcert {}: {e}", path.display()),
                    )
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(tls_error(
                    target,
                    format!("sslrootcert {} holds no usable certificate", path.display()),
                ));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(tls_error(
                    target,
                    "no system root certificates found; set sslrootcert=/path/to/root.crt in source.url",
                ));
            }
            return Ok(SYSTEM_ROOTS.get_or_init(|| Arc::new(store)).clone());
        }
    }
    Ok(Arc::new(store))
}

/// The client configuration for `mode` (which must not be `disable`).
pub(crate) fn client_config(
    mode: SslMode,
    roots: &RootCerts,
    target: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(target, e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::VerifyFull | SslMode::VerifyCa => {
            let store = root_store(roots, target)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| tls_error(target, e.to_string()))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => {
            Arc::new(Unverified(provider))
        }
    };
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// The name the certificate is checked against (and sent as SNI).
pub(crate) fn server_name(
    host: &str,
    mode: SslMode,
    target: &str,
) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(host.to_string()) {
        Ok(name) => Ok(name),
        Err(_) if mode != SslMode::VerifyFull => {
            Ok(ServerName::try_from("localhost").map_err(|e| tls_error(target, e.to_string()))?)
        }
        Err(e) => Err(tls_error(
            target,
            format!("host {host:?} is not a valid DNS name or IP address for verify-full: {e}"),
        )),
    }
}

/// verify-ca: a trusted chain, any name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the
        // chain itself is trusted.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer / require: encryption without authentication of the server.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_for_unverified_modes() {
        for mode in [SslMode::Prefer, SslMode::Require] {
            assert!(client_config(mode, &RootCerts::System, "h:5432").is_ok());
        }
    }

    #[test]
    fn the_system_roots_are_read_once() {
        let first = root_store(&RootCerts::System, "h:5432").expect("the system's roots");
        let again = root_store(&RootCerts::System, "h:5432").expect("the system's roots");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(client_config(SslMode::VerifyFull, &RootCerts::System, "h:5432").is_ok());
    }

    #[test]
    fn missing_root_file_is_a_clear_error() {
        let err = client_config(
            SslMode::VerifyFull,
            &RootCerts::File("/nonexistent/root.crt".into()),
            "h:5432",
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root.crt"), "{err}");
    }

    #[test]
    fn server_names() {
        assert!(server_name("db.example.com", SslMode::VerifyFull, "t").is_ok());
        assert!(server_name("127.0.0.1", SslMode::VerifyFull, "t").is_ok());
        assert!(server_name("bad name", SslMode::VerifyFull, "t").is_err());
        assert!(server_name("bad name", SslMode::Require, "t").is_ok());
    }
}
