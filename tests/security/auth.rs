//! Basic, bearer and API-key credentials arrive at a real receiver exactly
//! as configured, and never show in `Debug` output.

use walhook::delivery::EndpointSecurity;
use walhook::delivery::Prepare;

use super::{attempt, endpoint, send};
use crate::support::Receiver;

/// Prepares and sends one attempt with `auth`; returns the headers received.
async fn received_headers(auth: &str) -> (reqwest::header::HeaderMap, String) {
    let receiver = Receiver::start().await;
    let url = receiver.url("/hook");
    let config = endpoint(&format!("url = \"{url}\"\nauth = {auth}"));
    let security = EndpointSecurity::new("hook", &config, reqwest::Client::new()).unwrap();
    let mut attempt = attempt("batch-1");
    security.prepare(&mut attempt).await.unwrap();
    let debug = format!("{attempt:?} {security:?}");
    let response = send(&reqwest::Client::new(), &url, &attempt).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        !security.unauthorized(),
        "static credentials are not retried"
    );
    let headers = receiver.requests().pop().unwrap().headers;
    (headers, debug)
}

#[tokio::test]
async fn basic_auth_header_is_exact() {
    let (headers, debug) =
        received_headers(r#"{ type = "basic", username = "walhook", password = "p@ss:w0rd" }"#)
            .await;
    // base64("walhook:p@ss:w0rd")
    assert_eq!(headers["authorization"], "Basic d2FsaG9vazpwQHNzOncwcmQ=");
    assert!(
        !debug.contains("p@ss:w0rd") && !debug.contains("d2FsaG9vazpwQHNzOncwcmQ="),
        "{debug}"
    );
}

#[tokio::test]
async fn bearer_header_is_exact() {
    let (headers, debug) =
        received_headers(r#"{ type = "bearer", token = "eyJhbGciOi.static-token" }"#).await;
    assert_eq!(headers["authorization"], "Bearer eyJhbGciOi.static-token");
    assert!(!debug.contains("static-token"), "{debug}");
}

#[tokio::test]
async fn api_key_header_is_exact() {
    let (headers, debug) =
        received_headers(r#"{ type = "api_key", header = "X-Api-Key", value = "key-123-abc" }"#)
            .await;
    assert_eq!(headers["x-api-key"], "key-123-abc");
    assert!(headers.get("authorization").is_none());
    assert!(!debug.contains("key-123-abc"), "{debug}");
}

#[tokio::test]
async fn no_auth_sends_no_credentials() {
    let (headers, _) = received_headers(r#"{ type = "none" }"#).await;
    assert!(headers.get("authorization").is_none());
    assert_eq!(headers["webhook-id"], "batch-1");
}
