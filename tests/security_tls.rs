//! TLS to endpoints, against real rustls servers with rcgen certificates:
//! refused by default with an explanation, trusted with `ca_file`, mutual
//! TLS with `client_cert` + `client_key`.

mod security_common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use security_common::{recorder_app, Received};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use walhook::config::Tls;
use walhook::delivery::tls::{configure, explain, TlsError};

/// A private CA, a server certificate for 127.0.0.1 and a client
/// certificate, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    server_cert: String,
    server_key: String,
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "walhook test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "walhook");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
        Pki {
            dir,
            ca_pem: ca.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A TLS listener for axum: handshakes in `accept`, records failures.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    failures: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(err) => self.failures.lock().unwrap().push(err.to_string()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

struct Server {
    url: String,
    received: Received,
    failures: Arc<Mutex<Vec<String>>>,
}

/// An HTTPS receiver with the PKI's server certificate; with
/// `require_client_cert` it demands a client certificate from the CA.
async fn start_server(pki: &Pki, require_client_cert: bool) -> Server {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = vec![CertificateDer::from_pem_slice(pki.server_cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap()
    } else {
        builder
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap()
    };
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        failures: failures.clone(),
    };
    let received: Received = Arc::default();
    let app = recorder_app(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        url: format!("https://127.0.0.1:{}/hook", addr.port()),
        received,
        failures,
    }
}

fn client(tls: &Tls) -> reqwest::Client {
    configure(reqwest::Client::builder(), tls, "orders_api")
        .unwrap()
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    client.post(url).body("{}").send().await
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_an_explanation() {
    let pki = Pki::new();
    let server = start_server(&pki, false).await;
    let err = post(&client(&Tls::default()), &server.url)
        .await
        .expect_err("a certificate from an unknown CA is refused by default");
    let why = explain(&err);
    assert!(
        why.contains("not trusted (UnknownIssuer)") && why.contains("tls.ca_file"),
        "{why}"
    );
    assert!(!why.contains(&server.url), "{why}");
    assert!(server.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn ca_file_makes_the_certificate_trusted() {
    let pki = Pki::new();
    let server = start_server(&pki, false).await;
    let tls = Tls {
        ca_file: Some(pki.path("ca.pem")),
        ..Tls::default()
    };
    let response = post(&client(&tls), &server.url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn danger_accept_invalid_certs_accepts_any_certificate() {
    let pki = Pki::new();
    let server = start_server(&pki, false).await;
    let tls = Tls {
        danger_accept_invalid_certs: true,
        ..Tls::default()
    };
    let response = post(&client(&tls), &server.url).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn mutual_tls_sends_the_client_certificate() {
    let pki = Pki::new();
    let server = start_server(&pki, true).await;

    // Without a client certificate the server refuses the handshake.
    let without = Tls {
        ca_file: Some(pki.path("ca.pem")),
        ..Tls::default()
    };
    let err = post(&client(&without), &server.url)
        .await
        .expect_err("the server requires a client certificate");
    let why = explain(&err);
    eprintln!("without a client certificate: {why}");
    assert!(
        why.contains("client certificate") || why.contains("client_cert"),
        "{why}"
    );
    assert!(server.received.lock().unwrap().is_empty());
    assert!(!server.failures.lock().unwrap().is_empty());

    // With one, the request arrives.
    let with = Tls {
        ca_file: Some(pki.path("ca.pem")),
        client_cert: Some(pki.path("client.pem")),
        client_key: Some(pki.path("client.key")),
        danger_accept_invalid_certs: false,
    };
    let response = post(&client(&with), &server.url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.received.lock().unwrap().len(), 1);
}

#[test]
fn unusable_files_are_named_by_field() {
    let pki = Pki::new();
    let cases = [
        (
            Tls {
                ca_file: Some(pki.path("garbage.pem")),
                ..Tls::default()
            },
            "endpoints.orders_api.tls.ca_file",
        ),
        (
            Tls {
                ca_file: Some(pki.path("missing.pem")),
                ..Tls::default()
            },
            "endpoints.orders_api.tls.ca_file",
        ),
        (
            Tls {
                client_cert: Some(pki.path("client.key")),
                client_key: Some(pki.path("client.key")),
                ..Tls::default()
            },
            "endpoints.orders_api.tls.client_cert",
        ),
        (
            Tls {
                client_cert: Some(pki.path("client.pem")),
                client_key: Some(pki.path("client.pem")),
                ..Tls::default()
            },
            "endpoints.orders_api.tls.client_key",
        ),
        (
            Tls {
                client_cert: Some(pki.path("client.pem")),
                ..Tls::default()
            },
            "endpoints.orders_api.tls",
        ),
    ];
    for (tls, field) in cases {
        let err: TlsError = configure(reqwest::Client::builder(), &tls, "orders_api")
            .err()
            .unwrap_or_else(|| panic!("{tls:?} was accepted"));
        let text = err.to_string();
        assert!(text.starts_with(field), "{text}");
        assert!(!text.contains("PRIVATE KEY-----\n"), "{text}");
    }
}
