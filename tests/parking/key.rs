//! `ordering = "key"`, 8 in flight: a receiver rejects the one batch that
//! holds row 5. Every other row arrives; while the rejection holds the
//! slot's `confirmed_flush_lsn` passes the end of the writes (the batch is
//! parked); a later change of a held key waits behind it, also across a
//! kill -9; once the receiver accepts, the parked batch arrives with its
//! original `webhook-id`, then the change. Nothing is lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::{
    assert_ids_are_stable, attached, config, copy, get, receiver, records, strategy_status, table,
    Writer,
};
use crate::support::{free_port, wait_until, Walhook, WAIT};

const ROWS: i64 = 2000;

fn holds_row_5(payload: &Value) -> bool {
    payload["records"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["new"]["id"] == 5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_batch_is_parked_the_slot_passes_it_and_its_key_waits_behind_it_across_kill_9() {
    let name = "park_key";
    let (db, url) = attached(name).await;
    let rx = receiver().await;
    let rejecting = Arc::new(AtomicBool::new(true));
    let rule = rejecting.clone();
    rx.set_rule(Some(Arc::new(move |payload: &Value| {
        (rule.load(Ordering::SeqCst) && holds_row_5(payload)).then_some(500)
    })));
    let port = free_port();
    let config = config(
        &url,
        name,
        port,
        &format!(
            r#"[endpoints.hook]
url = "{}"
retry = {{ initial = "100ms", max = "500ms", park_after = 3 }}
circuit_breaker = {{ failures = 0 }}

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "hook"
on_insert = "true"
on_update = "true"
ordering = "key"
max_in_flight = 8
batch_size = 20
linger = "10ms"
"#,
            rx.url("/hook")
        ),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;

    let writer = Writer::start(&db, 1, ROWS);
    writer.finish().await;
    let end = db.current_wal_lsn().await;

    // The rejected batch: the first request that held row 5.
    let rejected = || {
        rx.requests()
            .into_iter()
            .find(|r| r.answered == 500 && holds_row_5(&r.json()))
    };
    wait_until(WAIT, "the batch holding row 5 to be rejected", || async {
        rejected().is_some()
    })
    .await;
    let first = rejected().expect("rejected");
    let parked_id = first.header("webhook-id").expect("webhook-id").to_string();
    let held: BTreeSet<i64> = records(&first).iter().map(|g| g.id).collect();
    // Every other row arrives while the rejection holds.
    wait_until(WAIT, "every row but the rejected batch's", || async {
        let seen: BTreeSet<i64> = rx
            .accepted()
            .iter()
            .flat_map(|r| records(r).into_iter().map(|g| g.id))
            .collect();
        (1..=ROWS).all(|id| seen.contains(&id) || held.contains(&id))
    })
    .await;
    // The slot passes the end of the writes: the batch is parked.
    db.wait_confirmed(name, end).await;
    let orders = strategy_status(port, "orders").await;
    assert!(
        orders["parked"]["parked_batches"].as_u64() >= Some(1),
        "{orders}"
    );
    assert!(
        ["failing", "parked"].contains(&orders["state"].as_str().unwrap_or("")),
        "{orders}"
    );
    let (code, body) = get(port, "/strategies/orders/parked").await;
    assert_eq!(code, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    let row = listed["parked"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["batch_id"] == parked_id.as_str()))
        .unwrap_or_else(|| panic!("the parked batch is not listed: {listed}"));
    assert_eq!(row["reason"], "failing", "{row}");
    assert_eq!(row["records"], held.len(), "{row}");
    assert!(row["attempts"].as_i64() >= Some(3), "{row}");

    // A later change of a held key waits behind it, and the slot passes it too.
    db.psql("UPDATE orders SET v = 1 WHERE id = 5").await;
    let updated = db.current_wal_lsn().await;
    db.wait_confirmed(name, updated).await;

    // kill -9 while parked; the parked work survives in walhook.parked.
    walhook.kill9().await;
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;
    // Retried from the store after the restart, still rejected.
    let attempts_before = rx
        .requests()
        .iter()
        .filter(|r| r.header("webhook-id") == Some(parked_id.as_str()))
        .count();
    wait_until(
        WAIT,
        "the parked batch to be retried after the restart",
        || async {
            rx.requests()
                .iter()
                .filter(|r| r.header("webhook-id") == Some(parked_id.as_str()))
                .count()
                > attempts_before
        },
    )
    .await;
    let changed_early = rx.accepted().iter().flat_map(records).any(|g| g.id == 5);
    assert!(!changed_early, "row 5 arrived while its batch was rejected");

    // The receiver accepts: the parked batch arrives with its original
    // webhook-id, then the change of row 5.
    rejecting.store(false, Ordering::SeqCst);
    wait_until(WAIT, "row 5's change", || async {
        rx.accepted()
            .iter()
            .flat_map(records)
            .any(|g| g.id == 5 && g.v == 1)
    })
    .await;
    let accepted = rx.accepted();
    let batch_at = accepted
        .iter()
        .position(|r| r.header("webhook-id") == Some(parked_id.as_str()))
        .expect("the parked batch arrived with its original webhook-id");
    assert_eq!(
        accepted[batch_at].record_ids(),
        first.record_ids(),
        "the same records"
    );
    assert_eq!(accepted[batch_at].body, first.body, "the exact bytes");
    let change_at = accepted
        .iter()
        .position(|r| records(r).iter().any(|g| g.id == 5 && g.v == 1))
        .expect("the change arrived");
    assert!(
        change_at > batch_at,
        "the change came before the parked batch"
    );

    // Nothing lost, ids stable; the receiver's copy is the table.
    wait_until(WAIT, "the copy to equal the table", || async {
        copy(&rx) == table(&db).await
    })
    .await;
    assert_ids_are_stable(&rx.requests());
    wait_until(WAIT, "the park to be empty", || async {
        strategy_status(port, "orders").await["parked"]["parked_batches"] == 0
    })
    .await;
    walhook.stop().await;
}
