//! Endpoint security end to end through `walhook run`: signed batches that
//! the specification's library and `walhook receive` verify, OAuth2's 401
//! flow, and secrets absent from TRACE logs through failing deliveries and a
//! failing token endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use standardwebhooks::Webhook;

use super::pki::{start_server, Pki};
use super::WHSEC;
use crate::support::walhook::base_config;
use crate::support::{fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

async fn orders_db(prefix: &str) -> (String, Db) {
    let db = fresh_db(prefix).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), status text)")
        .await;
    (db.url(), db)
}

fn strategy(name: &str, endpoint: &str) -> String {
    format!(
        "[[strategies]]\nname = \"{name}\"\ntable = \"orders\"\nendpoint = \"{endpoint}\"\non_insert = \"true\"\n\n"
    )
}

#[tokio::test]
async fn batches_from_walhook_run_verify_and_a_changed_one_does_not() {
    let (url, db) = orders_db("sec_e2e_sign").await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\nsigning = {{ secret = \"${{SEC_WHSEC}}\", include_token = true }}\n\n{}",
        base_config(&url, "sec_e2e_sign", "sec_e2e_sign"),
        receiver.url("/hook"),
        strategy("signed", "hook"),
    );
    let mut walhook = Walhook::run(&config).env("SEC_WHSEC", WHSEC).spawn();
    walhook.wait_streaming(&db, "sec_e2e_sign").await;
    db.psql("INSERT INTO orders VALUES (1, 150.50, 'open')")
        .await;
    receiver.wait_accepted_records(1, WAIT).await;
    let request = receiver.accepted().remove(0);

    let webhook = Webhook::new(WHSEC).unwrap();
    webhook
        .verify(&request.body, &request.headers)
        .expect("the spec's library verifies walhook's batch");
    let body = request.json();
    assert!(body["token"].is_string());
    let changed = String::from_utf8(request.body.to_vec())
        .unwrap()
        .replace("150.50", "1500.50");
    assert!(webhook
        .verify(changed.as_bytes(), &request.headers)
        .is_err());

    // `walhook receive` accepts the batch as sent and refuses it changed.
    let mut receive = Walhook::command(&["receive", "--listen", "127.0.0.1:0"])
        .env("WALHOOK_RECEIVE_SECRET", WHSEC)
        .spawn();
    receive
        .wait_lines(WAIT, "the listening line", |lines| !lines.is_empty())
        .await;
    let addr = receive.lines()[0]
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let forward = |body: Vec<u8>| {
        http.post(format!("http://{addr}/hook"))
            .headers(request.headers.clone())
            .body(body)
            .send()
    };
    assert_eq!(forward(request.body.to_vec()).await.unwrap().status(), 200);
    assert_eq!(forward(changed.into_bytes()).await.unwrap().status(), 401);
    receive.kill9().await;

    walhook.stop().await;
}

/// A token server issuing `tok-<n>` and a hook accepting only `valid`.
#[derive(Default)]
struct OAuth {
    token_requests: AtomicU64,
    /// Token requests answered 503 before the server works.
    token_failures: AtomicU64,
    valid: Mutex<String>,
    hook_requests: AtomicU64,
    delivered: Mutex<Vec<serde_json::Value>>,
}

async fn token(State(oauth): State<Arc<OAuth>>) -> (StatusCode, Json<serde_json::Value>) {
    let n = oauth.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= oauth.token_failures.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "temporarily_unavailable" })),
        );
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({
            "access_token": format!("tok-{n}-SecretToken"), "token_type": "Bearer", "expires_in": 3600
        })),
    )
}

async fn hook(
    State(oauth): State<Arc<OAuth>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    oauth.hook_requests.fetch_add(1, Ordering::SeqCst);
    let expected = format!("Bearer {}", oauth.valid.lock().unwrap());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return StatusCode::UNAUTHORIZED;
    }
    oauth
        .delivered
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

async fn start_oauth() -> (Arc<OAuth>, String) {
    let oauth = Arc::new(OAuth::default());
    let app = Router::new()
        .route("/token", post(token))
        .route("/hook", post(hook))
        .with_state(oauth.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (oauth, format!("http://{addr}"))
}

fn oauth_endpoint(base: &str) -> String {
    format!(
        "[endpoints.oauth]\nurl = \"{base}/hook\"\n\
         auth = {{ type = \"oauth2\", token_url = \"{base}/token\", client_id = \"walhook\", \
         client_secret = \"${{SEC_CLIENT_SECRET}}\" }}\n\
         retry = {{ initial = \"100ms\", max = \"300ms\" }}\n\n"
    )
}

const CLIENT_SECRET: &str = "ClientSecret-e2e-5150";

#[tokio::test]
async fn a_401_from_the_endpoint_gives_one_refresh_and_one_retry() {
    let (url, db) = orders_db("sec_e2e_401").await;
    let (oauth, base) = start_oauth().await;
    // The endpoint only knows the second token walhook will get.
    *oauth.valid.lock().unwrap() = "tok-2-SecretToken".into();
    let config = format!(
        "{}{}{}",
        base_config(&url, "sec_e2e_401", "sec_e2e_401"),
        oauth_endpoint(&base),
        strategy("oauthed", "oauth"),
    );
    let mut walhook = Walhook::run(&config)
        .env("SEC_CLIENT_SECRET", CLIENT_SECRET)
        .spawn();
    walhook.wait_streaming(&db, "sec_e2e_401").await;
    db.psql("INSERT INTO orders VALUES (1, 10, 'open')").await;
    wait_until(WAIT, "the first batch delivered", || async {
        oauth.delivered.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(oauth.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(oauth.hook_requests.load(Ordering::SeqCst), 2);

    // Later batches reuse the refreshed token.
    db.psql("INSERT INTO orders VALUES (2, 20, 'open')").await;
    wait_until(WAIT, "the second batch delivered", || async {
        oauth.delivered.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(oauth.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(oauth.hook_requests.load(Ordering::SeqCst), 3);
    let ids: Vec<serde_json::Value> = oauth
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["records"][0]["new"]["id"].clone())
        .collect();
    assert_eq!(ids, [1, 2]);
    walhook.stop().await;
}

#[tokio::test]
async fn trace_logs_through_failures_hold_no_secret() {
    let (url, db) = orders_db("sec_e2e_trace").await;
    let (oauth, base) = start_oauth().await;
    // The token endpoint fails twice, then works.
    oauth.token_failures.store(2, Ordering::SeqCst);
    *oauth.valid.lock().unwrap() = "tok-3-SecretToken".into();
    // A bearer endpoint that fails twice with 500, then accepts.
    let receiver = Receiver::start().await;
    receiver.fail_next(2, 500);
    let config = format!(
        "{}{}[endpoints.bearer]\nurl = \"{}\"\n\
         auth = {{ type = \"bearer\", token = \"${{SEC_BEARER}}\" }}\n\
         signing = {{ secret = \"${{SEC_WHSEC}}\", include_token = true }}\n\
         retry = {{ initial = \"100ms\", max = \"300ms\" }}\n\n{}{}",
        base_config(&url, "sec_e2e_trace", "sec_e2e_trace"),
        oauth_endpoint(&base),
        receiver.url("/hook"),
        strategy("oauthed", "oauth"),
        strategy("bearer", "bearer"),
    );
    let bearer = "BearerToken-e2e-8080";
    let mut walhook = Walhook::run(&config)
        .envs(&[
            ("WALHOOK_LOG", "trace"),
            ("SEC_CLIENT_SECRET", CLIENT_SECRET),
            ("SEC_BEARER", bearer),
            ("SEC_WHSEC", WHSEC),
        ])
        .spawn();
    walhook.wait_streaming(&db, "sec_e2e_trace").await;
    db.psql("INSERT INTO orders VALUES (1, 10, 'open')").await;
    receiver.wait_accepted_records(1, WAIT).await;
    wait_until(WAIT, "the oauth batch delivered", || async {
        oauth.delivered.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(oauth.token_requests.load(Ordering::SeqCst), 3);
    assert_eq!(receiver.arrivals(), 3);
    assert_eq!(
        receiver.accepted()[0].header("authorization"),
        Some(format!("Bearer {bearer}").as_str())
    );

    let stderr = walhook.stop().await;
    assert!(stderr.contains("TRACE"), "logs ran at trace level");
    assert!(stderr.contains("503"), "the token failure was logged");
    for secret in [
        CLIENT_SECRET,
        bearer,
        "SecretToken",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ] {
        assert!(
            !stderr.contains(secret),
            "{secret} appears in the TRACE logs"
        );
    }
}

#[tokio::test]
async fn mutual_tls_through_walhook_run() {
    let (url, db) = orders_db("sec_e2e_mtls").await;
    let pki = Pki::new();
    let server = start_server(&pki, true).await;
    let config = format!(
        "{}[endpoints.mtls]\nurl = \"{}\"\n\
         tls = {{ ca_file = \"{}\", client_cert = \"{}\", client_key = \"{}\" }}\n\n{}",
        base_config(&url, "sec_e2e_mtls", "sec_e2e_mtls"),
        server.url("/hook"),
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display(),
        strategy("mutual", "mtls"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "sec_e2e_mtls").await;
    db.psql("INSERT INTO orders VALUES (1, 10, 'open')").await;
    wait_until(WAIT, "the batch over mutual TLS", || async {
        server.requests().len() == 1
    })
    .await;
    let body = server.requests()[0].json();
    assert_eq!(body["records"][0]["new"]["id"], 1);
    walhook.stop().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_log_says_why() {
    let (url, db) = orders_db("sec_e2e_untrusted").await;
    let pki = Pki::new();
    let server = start_server(&pki, false).await;
    let config = format!(
        "{}[endpoints.private]\nurl = \"{}\"\nretry = {{ initial = \"100ms\", max = \"200ms\" }}\n\n{}",
        base_config(&url, "sec_e2e_untrusted", "sec_e2e_untrusted"),
        server.url("/hook"),
        strategy("untrusted", "private"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "sec_e2e_untrusted").await;
    db.psql("INSERT INTO orders VALUES (1, 10, 'open')").await;
    walhook
        .wait_stderr("a logged delivery failure", |stderr| {
            stderr.contains("delivery attempt failed")
        })
        .await;
    let stderr = walhook.stderr();
    let failure = stderr
        .lines()
        .find(|l| l.contains("delivery attempt failed"))
        .unwrap();
    assert!(failure.contains("UnknownIssuer"), "{failure}");
    assert!(server.requests().is_empty());
    walhook.kill9().await;
}
