//! Readiness and errors as a user sees them in `/readyz`, `/status`, the
//! metrics and the log: an endpoint outage is "degraded" (still ready),
//! steadily while it lasts; the error names the strategy, the endpoint and
//! its host and quotes the start of the response body, and clears when the
//! endpoint recovers, with when; a connect timeout says so; a lost GRANT on
//! the state schema makes the instance unready, until it is granted again.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::parking::{attached, config, records, scrape, status, strategy_status};
use crate::support::walhook::{admin_get, metric_sum};
use crate::support::{free_port, wait_until, Reply, Walhook, WAIT};

fn strategy(endpoint: &str, url: &str, extra: &str) -> String {
    format!(
        r#"[endpoints.{endpoint}]
url = "{url}"
{extra}

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "{endpoint}"
on_insert = "true"
linger = "10ms"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_outage_is_degraded_steadily_named_and_cleared_with_when() {
    let name = "health_outage";
    let (db, url) = attached(name).await;
    let rx = crate::parking::receiver().await;
    let port = free_port();
    let config = config(
        &url,
        name,
        port,
        &strategy(
            "orders_api",
            &rx.url("/hook"),
            "retry = { initial = \"100ms\", max = \"300ms\", park_after = \"never\" }\n\
             circuit_breaker = { failures = 0 }",
        ),
    );
    // 500s answered with a body, as an application server's error page.
    rx.script(std::iter::repeat_n(
        Reply::Body(500, "upstream database timeout\n(pool exhausted)".into()),
        100_000,
    ));
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    db.psql("INSERT INTO orders VALUES (1, 0, 'x')").await;
    wait_until(WAIT, "the first failed attempt", || async {
        strategy_status(port, "orders").await["state"] == "failing"
    })
    .await;

    // Steadily degraded, never unready and never healthy, between attempts too.
    let host = rx.url("").trim_start_matches("http://").to_string();
    let until = Instant::now() + Duration::from_secs(3);
    let mut samples = 0;
    while Instant::now() < until {
        let (code, body) = admin_get(port, "/readyz").await.expect("/readyz answers");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.starts_with("ready: degraded: strategy orders failing: "),
            "{body}"
        );
        let orders = strategy_status(port, "orders").await;
        assert_eq!(orders["state"], "failing", "{orders}");
        samples += 1;
        // Sampling pace, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples >= 10);
    let doc = status(port).await;
    assert_eq!(doc["health"]["state"], "degraded", "{doc}");
    let error = strategy_status(port, "orders").await["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        error,
        format!(
            "endpoint orders_api ({host}): HTTP 500 Internal Server Error: upstream database timeout (pool exhausted)"
        )
    );
    assert!(strategy_status(port, "orders").await["last_error_at"].is_string());
    let metrics = scrape(port).await;
    assert_eq!(
        metric_sum(&metrics, "walhook_health", &["state=\"degraded\""]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "walhook_strategy_state",
            &["strategy=\"orders\"", "state=\"failing\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    // The log line names the strategy, the endpoint and the host.
    let stderr = walhook.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("delivery attempt failed"))
        .expect("a failed attempt is logged");
    for field in [
        "strategy=orders".to_string(),
        "endpoint=\"orders_api\"".to_string(),
        format!("host={host}"),
        "upstream database timeout".to_string(),
    ] {
        assert!(line.contains(&field), "{field} not in: {line}");
    }

    // Recovery (a rule answers before the scripted 500s): delivered, the
    // error cleared, with when; ready again.
    rx.set_rule(Some(Arc::new(|_: &Value| Some(200))));
    wait_until(WAIT, "the row", || async {
        rx.accepted().iter().flat_map(records).any(|g| g.id == 1)
    })
    .await;
    wait_until(WAIT, "/readyz ready", || async {
        admin_get(port, "/readyz").await == Some((200, "ready\n".to_string()))
    })
    .await;
    let orders = strategy_status(port, "orders").await;
    assert_eq!(orders["state"], "running", "{orders}");
    assert_eq!(orders["last_error"], Value::Null, "{orders}");
    assert!(orders["recovered_at"].is_string(), "{orders}");
    assert!(
        orders["recovered_at"].as_str() >= orders["last_error_at"].as_str(),
        "{orders}"
    );
    walhook.stop().await;
}

/// A listener that completes no more handshakes: its backlog is full, so
/// a new connection's SYN is dropped and connecting times out.
fn full_backlog() -> (socket2::Socket, Vec<TcpStream>, u16) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(0).expect("listen");
    let port = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let mut held = Vec::new();
    for _ in 0..3 {
        if let Ok(c) = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().expect("addr"),
            Duration::from_millis(500),
        ) {
            held.push(c);
        }
    }
    (socket, held, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_reported_as_one() {
    let name = "health_connect";
    let (db, url) = attached(name).await;
    let (_listener, _held, hook_port) = full_backlog();
    let port = free_port();
    let config = config(
        &url,
        name,
        port,
        &strategy(
            "slow_net",
            &format!("http://127.0.0.1:{hook_port}/hook"),
            "connect_timeout = \"1s\"\ntimeout = \"30s\"\n\
             retry = { initial = \"100ms\", max = \"200ms\", park_after = \"never\" }",
        ),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    db.psql("INSERT INTO orders VALUES (1, 0, 'x')").await;
    wait_until(WAIT, "a failed attempt", || async {
        strategy_status(port, "orders").await["last_error"].is_string()
    })
    .await;
    let error = strategy_status(port, "orders").await["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        error,
        format!("endpoint slow_net (127.0.0.1:{hook_port}): connect timed out after 1s (connect_timeout)")
    );
    walhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_grant_on_the_state_schema_is_an_error_until_granted_again() {
    let name = "health_grant";
    let (db, url) = attached(name).await;
    let rx = crate::parking::receiver().await;
    let port = free_port();
    let config = config(&url, name, port, &strategy("hook", &rx.url("/hook"), ""));
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    db.psql("INSERT INTO orders VALUES (1, 0, 'x')").await;
    rx.wait_accepted_records(1, WAIT).await;
    wait_until(WAIT, "/readyz ready", || async {
        admin_get(port, "/readyz").await == Some((200, "ready\n".to_string()))
    })
    .await;

    // A DBA's cleanup takes a privilege walhook needs.
    let role = format!("{name}_app");
    db.psql(&format!("REVOKE INSERT ON walhook.batches FROM {role}"))
        .await;
    db.psql("INSERT INTO orders VALUES (2, 0, 'x')").await;
    wait_until(WAIT, "the state-store error in /status", || async {
        strategy_status(port, "orders").await["state_error"].is_string()
    })
    .await;
    let orders = strategy_status(port, "orders").await;
    let error = orders["state_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("permission denied") && error.contains("batches"),
        "{orders}"
    );
    let (code, body) = admin_get(port, "/readyz").await.expect("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: state store: strategy orders: "),
        "{body}"
    );
    let metrics = scrape(port).await;
    assert!(
        metric_sum(&metrics, "walhook_state_errors_total", &[]).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "walhook_health", &["state=\"not_ready\""]),
        Some(1.0)
    );
    // Delivery went on meanwhile (the record of batch boundaries is best effort).
    rx.wait_accepted_records(2, WAIT).await;

    db.psql(&format!("GRANT INSERT ON walhook.batches TO {role}"))
        .await;
    db.psql("INSERT INTO orders VALUES (3, 0, 'x')").await;
    wait_until(WAIT, "the error to clear", || async {
        strategy_status(port, "orders").await["state_error"].is_null()
            && admin_get(port, "/readyz").await == Some((200, "ready\n".to_string()))
    })
    .await;
    walhook.stop().await;
}
