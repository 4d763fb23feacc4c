//! OAuth2 client credentials against a real local token server: caching,
//! refresh, single flight, 401 handling, failures that name no secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use walhook::delivery::EndpointSecurity;
use walhook::delivery::Prepare;

use super::{attempt, endpoint, LogCapture};
use crate::support::wait_until;

const CLIENT_SECRET: &str = "cs-Very-Secret-9f8e7d";

/// A token server: counts requests, issues `tok-<n>`, can be made to fail.
#[derive(Default)]
struct TokenServer {
    requests: AtomicU64,
    expires_in: AtomicU64,
    failing: AtomicBool,
    delay_ms: AtomicU64,
    /// The last request's form fields and Authorization header.
    last: Mutex<Option<TokenRequest>>,
}

/// A token request's form fields and Authorization header.
type TokenRequest = (HashMap<String, String>, Option<String>);

async fn issue(
    State(server): State<Arc<TokenServer>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<serde_json::Value>) {
    let n = server.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let form: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    *server.last.lock().unwrap() = Some((form, authorization));
    let delay = server.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if server.failing.load(Ordering::SeqCst) {
        // A provider that (badly) echoes the credentials in its error.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "error": "temporarily_unavailable",
                "error_description": format!("try later (client_secret={CLIENT_SECRET})"),
            })),
        );
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": server.expires_in.load(Ordering::SeqCst),
        })),
    )
}

async fn start_token_server(expires_in: u64) -> (Arc<TokenServer>, SocketAddr) {
    let server = Arc::new(TokenServer::default());
    server.expires_in.store(expires_in, Ordering::SeqCst);
    let app = Router::new()
        .route("/token", post(issue))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, addr)
}

fn oauth2_security(token_url: &str, extra: &str) -> Arc<EndpointSecurity> {
    let config = endpoint(&format!(
        "url = \"http://127.0.0.1:1/hook\"\ntimeout = \"2s\"\n\
         auth = {{ type = \"oauth2\", token_url = \"{token_url}\", client_id = \"walhook-client\", \
         client_secret = \"{CLIENT_SECRET}\", scope = \"orders.write\" {extra} }}"
    ));
    Arc::new(EndpointSecurity::new("orders_api", &config, reqwest::Client::new()).unwrap())
}

async fn bearer(security: &EndpointSecurity) -> String {
    let mut attempt = attempt("batch-1");
    security.prepare(&mut attempt).await.unwrap();
    attempt.headers["authorization"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_hundred_batches_share_one_token() {
    let (server, addr) = start_token_server(3600).await;
    let security = oauth2_security(&format!("http://{addr}/token"), "");
    for _ in 0..100 {
        assert_eq!(bearer(&security).await, "Bearer tok-1");
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // client_secret_basic (the default): form-encoded id and secret in Basic.
    let (form, authorization) = server.last.lock().unwrap().clone().unwrap();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "orders.write");
    assert!(!form.contains_key("client_secret"));
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("walhook-client:{CLIENT_SECRET}"));
    assert_eq!(authorization.unwrap(), format!("Basic {expected}"));
}

#[tokio::test]
async fn concurrent_callers_wait_for_one_fetch() {
    let (server, addr) = start_token_server(3600).await;
    server.delay_ms.store(300, Ordering::SeqCst);
    let security = oauth2_security(&format!("http://{addr}/token"), "");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let security = security.clone();
            tokio::spawn(async move { bearer(&security).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "Bearer tok-1");
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_before_it_expires() {
    let (server, addr) = start_token_server(2).await;
    let security = oauth2_security(&format!("http://{addr}/token"), "");
    let started = Instant::now();
    assert_eq!(bearer(&security).await, "Bearer tok-1");
    assert_eq!(bearer(&security).await, "Bearer tok-1");
    wait_until(Duration::from_secs(10), "a refreshed token", || async {
        bearer(&security).await == "Bearer tok-2"
    })
    .await;
    let elapsed = started.elapsed();
    // Refreshed once it neared expiry, not at every call.
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_401_gives_exactly_one_refresh() {
    let (server, addr) = start_token_server(3600).await;
    let security = oauth2_security(&format!("http://{addr}/token"), "");
    assert_eq!(bearer(&security).await, "Bearer tok-1");
    assert!(
        security.unauthorized(),
        "oauth2 asks the sender to retry at once"
    );
    assert_eq!(bearer(&security).await, "Bearer tok-2");
    assert_eq!(bearer(&security).await, "Bearer tok-2");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn client_secret_post_and_extra_parameters() {
    let (server, addr) = start_token_server(3600).await;
    let security = oauth2_security(
        &format!("http://{addr}/token"),
        ", auth_method = \"post\", audience = \"https://orders\", params = { resource = \"r 1\" }",
    );
    assert_eq!(bearer(&security).await, "Bearer tok-1");
    let (form, authorization) = server.last.lock().unwrap().clone().unwrap();
    assert_eq!(authorization, None);
    assert_eq!(form["client_id"], "walhook-client");
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(form["audience"], "https://orders");
    assert_eq!(form["resource"], "r 1");
    assert_eq!(form["scope"], "orders.write");
}

#[test]
fn a_failing_token_endpoint_is_a_retryable_error_without_secrets() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (logs, _guard) = LogCapture::start();
    runtime.block_on(async {
        let (server, addr) = start_token_server(3600).await;
        let security = oauth2_security(&format!("http://{addr}/token"), "");

        // The token endpoint answers 503 (and echoes the secret).
        server.failing.store(true, Ordering::SeqCst);
        let mut failed = attempt("batch-1");
        let err = security.prepare(&mut failed).await.unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");
        assert!(err.contains("temporarily_unavailable"), "{err}");
        assert!(!err.contains(CLIENT_SECRET), "{err}");
        assert!(failed.headers.get("authorization").is_none());

        // It recovers: the next attempt gets a token.
        server.failing.store(false, Ordering::SeqCst);
        assert_eq!(bearer(&security).await, "Bearer tok-2");

        // The token endpoint is down (nothing listens there).
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let security = oauth2_security(&format!("http://user:pw-in-url@{dead}/token"), "");
        let err = security
            .prepare(&mut attempt("batch-2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot connect"), "{err}");
        assert!(
            !err.contains(CLIENT_SECRET) && !err.contains("pw-in-url"),
            "{err}"
        );
    });
    let logs = logs.text();
    assert!(logs.contains("oauth2"), "trace logs were captured: {logs}");
    for secret in [CLIENT_SECRET, "tok-1", "tok-2", "pw-in-url"] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
    }
}

#[tokio::test]
async fn debug_output_of_a_prepared_attempt_hides_the_token() {
    let (_server, addr) = start_token_server(3600).await;
    let security = oauth2_security(&format!("http://{addr}/token"), "");
    let mut attempt = attempt("batch-1");
    security.prepare(&mut attempt).await.unwrap();
    let debug = format!("{attempt:?} {security:?}");
    assert!(!debug.contains("tok-1"), "{debug}");
    assert!(!debug.contains(CLIENT_SECRET), "{debug}");
}
