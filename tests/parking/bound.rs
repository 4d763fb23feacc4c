//! The parking bound: with the endpoint down and more to park than
//! `max_parked_bytes` allows, walhook blocks (the slot waits again), says
//! so in `/status`, the metrics and the log, and loses nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::{attached, config, copy, receiver, records, scrape, strategy_status, table, Writer};
use crate::support::walhook::metric_sum;
use crate::support::{free_port, wait_until, Walhook, WAIT};

const ROWS: i64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parking_bound_blocks_says_so_and_loses_nothing() {
    let name = "park_bound";
    let (db, url) = attached(name).await;
    let rx = receiver().await;
    let down = Arc::new(AtomicBool::new(true));
    let rule = down.clone();
    rx.set_rule(Some(Arc::new(move |_: &Value| {
        rule.load(Ordering::SeqCst).then_some(503)
    })));
    let port = free_port();
    let config = config(
        &url,
        name,
        port,
        &format!(
            r#"[endpoints.hook]
url = "{}"
retry = {{ initial = "100ms", max = "500ms", park_after = 2 }}

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "hook"
on_insert = "true"
batch_size = 20
linger = "10ms"
max_parked_bytes = "12KiB"
"#,
            rx.url("/hook")
        ),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    Writer::start(&db, 1, ROWS).finish().await;
    let end = db.current_wal_lsn().await;

    // Blocked, and shown as blocked: /status, the metric, the log.
    wait_until(
        WAIT,
        "the strategy to be blocked by the parking bound",
        || async {
            let orders = strategy_status(port, "orders").await;
            orders["state"] == "blocked" && orders["parked"]["full"] == true
        },
    )
    .await;
    let orders = strategy_status(port, "orders").await;
    let parked = orders["parked"]["parked_bytes"]
        .as_u64()
        .expect("parked_bytes");
    assert!(parked > 0 && parked <= 12 * 1024, "{orders}");
    assert_eq!(orders["parked"]["limit_bytes"], 12 * 1024);
    let metrics = scrape(port).await;
    assert_eq!(
        metric_sum(&metrics, "walhook_parking_full", &["strategy=\"orders\""]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "walhook_parked_bytes", &["strategy=\"orders\""])
            .is_some_and(|b| b > 0.0),
        "{metrics}"
    );
    walhook
        .wait_stderr("the log to say the bound is reached", |e| {
            e.contains("max_parked_bytes") && e.contains("nothing is dropped")
        })
        .await;
    // It holds the slot again, as without parking.
    let confirmed = db.confirmed_flush(name).await.expect("the slot");
    assert!(
        confirmed < end,
        "the slot passed records that are neither delivered nor parked"
    );

    // The endpoint is back: every row arrives, in commit order.
    down.store(false, Ordering::SeqCst);
    wait_until(WAIT, "every row", || async {
        let got: BTreeSet<i64> = rx
            .accepted()
            .iter()
            .flat_map(records)
            .map(|g| g.id)
            .collect();
        (1..=ROWS).all(|id| got.contains(&id))
    })
    .await;
    let positions: Vec<_> = rx
        .accepted()
        .iter()
        .flat_map(records)
        .map(|g| g.pos)
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of commit order"
    );
    assert_eq!(copy(&rx), table(&db).await);
    db.wait_confirmed(name, end).await;
    wait_until(WAIT, "the strategy to run again", || async {
        strategy_status(port, "orders").await["state"] == "running"
    })
    .await;
    walhook.stop().await;
}
