//! Endpoint security through the real delivery sender (`delivery::Endpoint`):
//! signed batches verify with the specification's library and with
//! `walhook receive`; OAuth2's 401 flow gives one refresh and one retry; a
//! token endpoint that is down is a failed attempt, then delivery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use standardwebhooks::Webhook;
use walhook::batch::build;
use walhook::batch::{Batch, NoDecoration, QueuedRecord};
use walhook::config::EndpointConfig;
use walhook::delivery::configure_tls;
use walhook::delivery::Endpoint;
use walhook::delivery::EndpointSecurity;
use walhook::lsn::Lsn;

use super::{endpoint, WHSEC};
use crate::support::Receiver;

fn batch(n: u32) -> Batch {
    let records = (0..n)
        .map(|i| {
            QueuedRecord::new(
                Lsn(0x16B_3748),
                i,
                1_700_000_000_000_000,
                format!(r#"{{"id":"0/16B3748:{i}","op":"insert","new":{{"n":{i}}}}}"#).into_bytes(),
            )
        })
        .collect();
    build(&Arc::from("big_orders"), records, &NoDecoration)
}

fn sender(name: &str, config: &EndpointConfig) -> (Endpoint, Arc<EndpointSecurity>) {
    let security = Arc::new(EndpointSecurity::new(name, config, reqwest::Client::new()).unwrap());
    let endpoint = Endpoint::with_tls(name, config, security.clone(), |b| {
        configure_tls(b, &config.tls, name)
    })
    .unwrap();
    (endpoint, security)
}

#[tokio::test]
async fn batches_sent_by_the_sender_verify_with_standardwebhooks() {
    let receiver = Receiver::start().await;
    let config = endpoint(&format!(
        "url = \"{}\"\nsigning = {{ secret = \"{WHSEC}\", include_token = true }}",
        receiver.url("/hook")
    ));
    let (endpoint, _) = sender("orders_api", &config);
    let batch = batch(3);
    let result = endpoint.attempt(&batch).await;
    assert!(result.delivered(), "{result:?}");

    let received = receiver.requests().pop().unwrap();
    let (headers, body) = (received.headers, received.body);
    assert_eq!(headers["webhook-id"], batch.id.as_str());
    Webhook::new(WHSEC)
        .unwrap()
        .verify(&body, &headers)
        .expect("the spec's library verifies a batch walhook sent");
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["batch"]["size"], 3);
    assert!(payload["token"].is_string());

    let changed = String::from_utf8(body.to_vec())
        .unwrap()
        .replace(r#""n":2"#, r#""n":20"#);
    assert!(Webhook::new(WHSEC)
        .unwrap()
        .verify(changed.as_bytes(), &headers)
        .is_err());
}

/// A token server issuing `tok-<n>` and a resource server accepting only
/// the token it is told to.
#[derive(Default)]
struct Auth {
    token_requests: AtomicU64,
    token_down: AtomicBool,
    valid_token: Mutex<String>,
    hook_requests: AtomicU64,
    delivered: AtomicU64,
}

async fn token(State(auth): State<Arc<Auth>>) -> (StatusCode, Json<serde_json::Value>) {
    let n = auth.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    if auth.token_down.load(Ordering::SeqCst) {
        return (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({ "error": "server_error" })),
        );
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({
            "access_token": format!("tok-{n}"), "token_type": "bearer", "expires_in": 3600
        })),
    )
}

async fn hook(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> StatusCode {
    auth.hook_requests.fetch_add(1, Ordering::SeqCst);
    let expected = format!("Bearer {}", auth.valid_token.lock().unwrap());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
        auth.delivered.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

async fn start_auth_servers() -> (Arc<Auth>, String) {
    let auth = Arc::new(Auth::default());
    let app = Router::new()
        .route("/token", post(token))
        .route("/hook", post(hook))
        .with_state(auth.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (auth, format!("http://{addr}"))
}

fn oauth2_config(base: &str) -> EndpointConfig {
    endpoint(&format!(
        "url = \"{base}/hook\"\ntimeout = \"5s\"\n\
         auth = {{ type = \"oauth2\", token_url = \"{base}/token\", client_id = \"walhook\", \
         client_secret = \"sender-test-secret\" }}"
    ))
}

#[tokio::test]
async fn a_401_gives_one_refresh_and_one_retry_then_delivery() {
    let (auth, base) = start_auth_servers().await;
    let (endpoint, _) = sender("orders_api", &oauth2_config(&base));

    // The endpoint knows the first token.
    *auth.valid_token.lock().unwrap() = "tok-1".into();
    assert!(endpoint.attempt(&batch(1)).await.delivered());
    assert!(endpoint.attempt(&batch(2)).await.delivered());
    assert_eq!(auth.token_requests.load(Ordering::SeqCst), 1);

    // The endpoint revoked it: 401, one refresh, one retry, delivered.
    *auth.valid_token.lock().unwrap() = "tok-2".into();
    let hooks_before = auth.hook_requests.load(Ordering::SeqCst);
    let result = endpoint.attempt(&batch(3)).await;
    assert!(result.delivered(), "{result:?}");
    assert_eq!(auth.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(auth.hook_requests.load(Ordering::SeqCst) - hooks_before, 2);
    assert_eq!(auth.delivered.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_fails_the_attempt_until_it_is_back() {
    let (auth, base) = start_auth_servers().await;
    *auth.valid_token.lock().unwrap() = "tok-3".into();
    let (endpoint, _) = sender("orders_api", &oauth2_config(&base));

    auth.token_down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let result = endpoint.attempt(&batch(1)).await;
        assert!(!result.delivered());
        let error = result.error.unwrap();
        assert!(error.contains("502"), "{error}");
        assert!(!error.contains("sender-test-secret"), "{error}");
    }
    assert_eq!(auth.hook_requests.load(Ordering::SeqCst), 0);

    // Back: the next attempt (the sender's retry) delivers the same batch.
    auth.token_down.store(false, Ordering::SeqCst);
    let result = endpoint.attempt(&batch(1)).await;
    assert!(result.delivered(), "{result:?}");
    assert_eq!(auth.delivered.load(Ordering::SeqCst), 1);
}
