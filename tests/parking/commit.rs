//! `ordering = "commit"`: one strategy's endpoint is down for 60 s under a
//! steady writer, a second strategy on the same table sends to a healthy
//! endpoint. The slot keeps moving, the healthy strategy keeps delivering,
//! and when the endpoint is back everything arrives once per id, in commit
//! order.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    assert_ids_are_stable, attached, config, copy, receiver, records, strategy_status, table,
    Writer,
};
use crate::support::{free_port, wait_until, Walhook, WAIT};

/// How long the endpoint is down.
const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_a_minute_costs_its_parked_bytes_not_the_slot() {
    let name = "park_commit";
    let (db, url) = attached(name).await;
    let (down, healthy) = (receiver().await, receiver().await);
    let outage = Arc::new(AtomicBool::new(false));
    let rule = outage.clone();
    down.set_rule(Some(Arc::new(move |_: &Value| {
        rule.load(Ordering::SeqCst).then_some(503)
    })));
    let port = free_port();
    let config = config(
        &url,
        name,
        port,
        &format!(
            r#"[endpoints.down]
url = "{}"
retry = {{ initial = "200ms", max = "2s", park_after = 3 }}

[endpoints.healthy]
url = "{}"

[[strategies]]
name = "mirror"
table = "public.orders"
endpoint = "down"
on_insert = "true"
batch_size = 100
linger = "20ms"

[[strategies]]
name = "audit"
table = "public.orders"
endpoint = "healthy"
on_insert = "true"
batch_size = 100
linger = "20ms"
"#,
            down.url("/down"),
            healthy.url("/healthy")
        ),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    // About 50 rows a second, one transaction per row.
    let writer = Writer::paced(&db, 1, i64::MAX, Duration::from_millis(500));
    wait_until(WAIT, "the first rows to arrive", || async {
        down.accepted().len() >= 3
    })
    .await;

    outage.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let at_start = db.current_wal_lsn().await;
    // The slot keeps moving while the endpoint is down: past where the
    // outage began, and then past where it was half-way.
    db.wait_confirmed(name, at_start).await;
    // The outage's length is the scenario (not a wait for a condition).
    tokio::time::sleep_until((started + OUTAGE / 2).into()).await;
    let (halfway_lsn, halfway_row) = (db.current_wal_lsn().await, writer.written());
    tokio::time::sleep_until((started + OUTAGE).into()).await;
    let confirmed = db.confirmed_flush(name).await.expect("the slot");
    assert!(
        confirmed >= halfway_lsn,
        "the slot stopped at {confirmed} (half-way through the outage the WAL was at {halfway_lsn})"
    );
    let mirror = strategy_status(port, "mirror").await;
    assert!(
        mirror["parked"]["parked_batches"].as_u64() > Some(0),
        "{mirror}"
    );
    // The healthy strategy was not held: it has every row written by half-way.
    let audited: BTreeSet<i64> = healthy
        .accepted()
        .iter()
        .flat_map(records)
        .map(|g| g.id)
        .collect();
    assert!(
        (1..=halfway_row).all(|id| audited.contains(&id)),
        "the healthy strategy is missing rows written before half-way through the outage"
    );

    // The endpoint is back: everything arrives, once per id, in commit order.
    outage.store(false, Ordering::SeqCst);
    let last = writer.stop().await;
    wait_until(WAIT, "every row at the endpoint that was down", || async {
        let got: BTreeSet<i64> = down
            .accepted()
            .iter()
            .flat_map(records)
            .map(|g| g.id)
            .collect();
        (1..=last).all(|id| got.contains(&id))
    })
    .await;
    let accepted = down.accepted();
    assert_eq!(
        assert_ids_are_stable(&down.requests()),
        0,
        "a batch came twice"
    );
    let positions: Vec<_> = accepted.iter().flat_map(records).map(|g| g.pos).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "records out of commit order (or repeated)"
    );
    assert_eq!(copy(&down), table(&db).await);
    assert_eq!(copy(&healthy), table(&db).await);
    walhook.stop().await;
}
