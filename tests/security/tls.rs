//! TLS to endpoints, against real rustls servers with rcgen certificates:
//! refused by default with an explanation, trusted with `ca_file`, mutual
//! TLS with `client_cert` + `client_key`.

use tokio::net::TcpListener;
use walhook::config::Tls;
use walhook::delivery::{configure_tls, explain_request_error, TlsError};

use super::pki::{start_server, Pki};

fn client(tls: &Tls) -> reqwest::Client {
    configure_tls(reqwest::Client::builder(), tls, "orders_api")
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
    let err = post(&client(&Tls::default()), &server.url("/hook"))
        .await
        .expect_err("a certificate from an unknown CA is refused by default");
    let why = explain_request_error(&err);
    assert!(
        why.contains("not trusted (UnknownIssuer)") && why.contains("tls.ca_file"),
        "{why}"
    );
    assert!(!why.contains(&server.url("/hook")), "{why}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn ca_file_makes_the_certificate_trusted() {
    let pki = Pki::new();
    let server = start_server(&pki, false).await;
    let tls = Tls {
        ca_file: Some(pki.path("ca.pem")),
        ..Tls::default()
    };
    let response = post(&client(&tls), &server.url("/hook")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn danger_accept_invalid_certs_accepts_any_certificate() {
    let pki = Pki::new();
    let server = start_server(&pki, false).await;
    let tls = Tls {
        danger_accept_invalid_certs: true,
        ..Tls::default()
    };
    let response = post(&client(&tls), &server.url("/hook")).await.unwrap();
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
    let err = post(&client(&without), &server.url("/hook"))
        .await
        .expect_err("the server requires a client certificate");
    let why = explain_request_error(&err);
    eprintln!("without a client certificate: {why}");
    assert!(
        why.contains("client certificate") || why.contains("client_cert"),
        "{why}"
    );
    assert!(server.requests().is_empty());
    assert!(!server.tls_failures().is_empty());

    // With one, the request arrives.
    let with = Tls {
        ca_file: Some(pki.path("ca.pem")),
        client_cert: Some(pki.path("client.pem")),
        client_key: Some(pki.path("client.key")),
        danger_accept_invalid_certs: false,
    };
    let response = post(&client(&with), &server.url("/hook")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.requests().len(), 1);
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
        let err: TlsError = configure_tls(reqwest::Client::builder(), &tls, "orders_api")
            .err()
            .unwrap_or_else(|| panic!("{tls:?} was accepted"));
        let text = err.to_string();
        assert!(text.starts_with(field), "{text}");
        assert!(!text.contains("PRIVATE KEY-----\n"), "{text}");
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_with_an_explanation() {
    let pki = Pki::for_names(&["orders.internal"]);
    let server = start_server(&pki, false).await;
    let tls = Tls {
        ca_file: Some(pki.path("ca.pem")),
        ..Tls::default()
    };
    let err = post(&client(&tls), &server.url("/hook")).await.unwrap_err();
    let why = explain_request_error(&err);
    assert!(why.contains("not valid for this host name"), "{why}");
}

#[tokio::test]
async fn errors_without_tls_are_described_without_the_url() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let url = format!("http://127.0.0.1:{}/hook?key=in-query", addr.port());
    let err = post(&client(&Tls::default()), &url).await.unwrap_err();
    let why = explain_request_error(&err);
    assert!(why.starts_with("cannot connect"), "{why}");
    assert!(!why.contains("in-query"), "{why}");
}
