//! A reload reaches work in flight (the scenario measured on main): an
//! endpoint answers 500 under `max_attempts = 0, on_exhausted = "block"`.
//! A first reload changes the endpoint's timeout: the strategy's old worker
//! still holds the failing batch; `/status` shows it (draining, with its
//! attempts and error), the console's endpoint table shows the endpoint
//! down, and retry-now reaches it. A second reload sets `max_attempts = 2,
//! on_exhausted = "dead_letter"`: the batch is dead-lettered within 15 s.
//! Sampled every 200 ms throughout, `/status` never shows the strategy
//! running while its batch fails.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::parking::{attached, config, get, post, strategy_status};
use crate::support::walhook::admin_get;
use crate::support::{free_port, wait_until, Walhook, WAIT};

fn endpoint(url: &str, timeout: &str, retry: &str) -> String {
    format!(
        r#"[endpoints.hook]
url = "{url}"
timeout = "{timeout}"
retry = {{ initial = "1s", max = "5s", park_after = "never", {retry} }}
circuit_breaker = {{ failures = 0 }}

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "hook"
on_insert = "true"
linger = "10ms"
"#
    )
}

/// Whether `orders` has a dead letter.
async fn dead_lettered(port: u16) -> bool {
    let (_, body) = get(port, "/dead-letters?strategy=orders").await;
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|d| d["dead_letters"].as_array().map(|a| !a.is_empty()))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_the_failing_batch_and_status_never_shows_it_healthy() {
    let name = "health_reload";
    let (db, url) = attached(name).await;
    let rx = crate::parking::receiver().await;
    rx.set_rule(Some(Arc::new(|_: &Value| Some(500))));
    let port = free_port();
    let block = "max_attempts = 0, on_exhausted = \"block\"";
    let hook = rx.url("/hook");
    let mut walhook =
        Walhook::run(&config(&url, name, port, &endpoint(&hook, "30s", block))).spawn();
    walhook.wait_streaming(&db, name).await;
    db.psql("INSERT INTO orders VALUES (1, 0, 'x')").await;
    wait_until(WAIT, "the batch to fail", || async {
        strategy_status(port, "orders").await["state"] == "failing"
    })
    .await;

    // Every 200 ms: the strategy's state, then whether its batch is a dead
    // letter yet (asked after: "running" before the dead letter exists is
    // a lie).
    let samples: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let sampler = tokio::spawn({
        let samples = samples.clone();
        async move {
            loop {
                let state = strategy_status(port, "orders").await["state"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let stored = dead_lettered(port).await;
                samples.lock().unwrap().push((state, stored));
                // The sampling period of the scenario.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    // 1. Another timeout: the strategy gets a new worker; the old one keeps
    //    the failing batch, with the new settings, and is shown and reachable.
    walhook.rewrite_config(&config(&url, name, port, &endpoint(&hook, "20s", block)));
    let (code, body) = post(port, "/config/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"applied\""), "{body}");
    let orders = strategy_status(port, "orders").await;
    assert_eq!(orders["state"], "failing", "{orders}");
    let draining = &orders["draining"][0];
    assert_eq!(draining["state"], "failing", "{orders}");
    assert!(draining["attempts"].as_u64() >= Some(1), "{orders}");
    assert!(
        draining["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 500")),
        "{orders}"
    );
    assert!(draining["delivered_lsn"].is_string(), "{orders}");
    let (code, body) = post(port, "/strategies/orders/retry").await;
    assert_eq!(code, 200, "{body}");
    let retrying: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        retrying["retrying"], 1,
        "retry-now reaches the draining worker"
    );
    let retried_at = rx.requests().len();
    wait_until(WAIT, "the retried attempt", || async {
        rx.requests().len() > retried_at
    })
    .await;
    let (_, endpoints) = admin_get(port, "/endpoints").await.expect("/endpoints");
    let endpoints: Value = serde_json::from_str(&endpoints).expect("JSON");
    let shown = endpoints["endpoints"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == "hook").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(
        shown["up"], false,
        "the endpoint in use is shown down: {endpoints}"
    );

    // 2. A policy that dead-letters: the failing batch goes within 15 s.
    let dead_letter = "max_attempts = 2, on_exhausted = \"dead_letter\"";
    walhook.rewrite_config(&config(
        &url,
        name,
        port,
        &endpoint(&hook, "20s", dead_letter),
    ));
    let reloaded = Instant::now();
    let (code, body) = post(port, "/config/reload").await;
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(15), "the dead letter", || async {
        dead_lettered(port).await
    })
    .await;
    eprintln!("dead-lettered {:?} after the reload", reloaded.elapsed());
    wait_until(WAIT, "a sample after the dead letter", || async {
        samples.lock().unwrap().iter().any(|(_, stored)| *stored)
    })
    .await;
    sampler.abort();
    let samples = samples.lock().unwrap().clone();
    assert!(
        samples.iter().any(|(_, stored)| !stored),
        "no sample while it failed: {samples:?}"
    );
    assert!(
        samples
            .iter()
            .all(|(state, stored)| state != "running" || *stored),
        "shown running while its batch failed: {samples:?}"
    );
    wait_until(WAIT, "the strategy to run again", || async {
        strategy_status(port, "orders").await["state"] == "running"
    })
    .await;
    walhook.stop().await;
}

/// The operator acts on a failing batch: `dead-letter-head` stores it as a
/// dead letter at once (what a policy would do after `max_attempts`), and
/// the strategy goes on; with nothing failing it answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_batch_is_dead_lettered_on_request() {
    let name = "health_head";
    let (db, url) = attached(name).await;
    let rx = crate::parking::receiver().await;
    let rejecting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let rule = rejecting.clone();
    rx.set_rule(Some(Arc::new(move |payload: &Value| {
        let first = payload["records"][0]["new"]["id"] == 1;
        (first && rule.load(std::sync::atomic::Ordering::SeqCst)).then_some(500)
    })));
    let port = free_port();
    let block = "max_attempts = 0, on_exhausted = \"block\"";
    let config = config(&url, name, port, &endpoint(&rx.url("/hook"), "30s", block));
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    db.psql("INSERT INTO orders VALUES (1, 0, 'poison')").await;
    wait_until(WAIT, "the batch to fail", || async {
        strategy_status(port, "orders").await["state"] == "failing"
    })
    .await;
    let batch_id = rx.requests()[0]
        .header("webhook-id")
        .expect("webhook-id")
        .to_string();
    let (code, body) = post(port, "/strategies/orders/dead-letter-head").await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["dead_lettering"], batch_id.as_str());
    wait_until(WAIT, "the dead letter", || async {
        dead_lettered(port).await
    })
    .await;
    let (_, body) = get(port, "/dead-letters?strategy=orders").await;
    let letters: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(letters["dead_letters"][0]["batch_id"], batch_id.as_str());
    // The strategy goes on.
    db.psql("INSERT INTO orders VALUES (2, 0, 'fine')").await;
    wait_until(WAIT, "the next row", || async {
        rx.accepted()
            .iter()
            .any(|r| r.json()["records"][0]["new"]["id"] == 2)
    })
    .await;
    let (code, _) = post(port, "/strategies/orders/dead-letter-head").await;
    assert_eq!(code, 409);
    walhook.stop().await;
}
