//! The state store on the real throwaway PostgreSQL: schema, dead letters
//! (as the admin API lists, reads and deletes them) and batch boundaries
//! that survive a restart so redelivered batches keep their ids.

use std::time::Duration;

use walhook::config::OnExhausted;
use walhook::lsn::Lsn;
use walhook::state::{NewDeadLetter, StateStore, StoredBatch};

use super::{endpoint_config, fast_retry, rec, Setup};
use crate::support::{fresh_db, wait_until, Receiver, WAIT};

async fn store(prefix: &str) -> StateStore {
    let url = fresh_db(prefix).await.url();
    let state = StateStore::connect(&url, "walhook-state")
        .await
        .expect("state store");
    state.ensure_schema().await.expect("schema");
    state
        .ensure_schema()
        .await
        .expect("schema again is harmless");
    state
}

fn letter<'a>(strategy: &'a str, batch_id: &'a str, payload: &'a [u8]) -> NewDeadLetter<'a> {
    NewDeadLetter {
        strategy,
        batch_id,
        first_lsn: Lsn(0x16B3748),
        last_lsn: Lsn(0x16B3A10),
        payload,
        last_status: None,
        last_error: Some("connection failed: refused"),
        attempts: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_page_get_and_delete() {
    let state = store("dlv_state_dl").await;
    let payload = br#"{"strategy":"a","batch":{"id":"msg_1"},"records":[{"id":"0/16B3748:0"}]}"#;
    let a1 = state
        .insert_dead_letter(&letter("a", "msg_1", payload))
        .await
        .unwrap();
    let b1 = state
        .insert_dead_letter(&letter("b", "msg_2", payload))
        .await
        .unwrap();
    let a2 = state
        .insert_dead_letter(&letter("a", "msg_3", payload))
        .await
        .unwrap();

    let all = state.list_dead_letters(None, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|l| l.id).collect::<Vec<_>>(), [a1, b1, a2]);
    let of_a = state.list_dead_letters(Some("a"), 0, 100).await.unwrap();
    assert_eq!(of_a.iter().map(|l| l.id).collect::<Vec<_>>(), [a1, a2]);
    let page = state.list_dead_letters(None, a1, 1).await.unwrap();
    assert_eq!(page.iter().map(|l| l.id).collect::<Vec<_>>(), [b1]);

    let first = &all[0];
    assert_eq!(first.batch_id, "msg_1");
    assert_eq!(first.first_lsn, "0/16B3748");
    assert_eq!(first.last_lsn, "0/16B3A10");
    assert_eq!(first.last_status, None);
    assert_eq!(
        first.last_error.as_deref(),
        Some("connection failed: refused")
    );
    assert_eq!(first.attempts, 7);
    assert!(first.created_at.contains('T'), "{}", first.created_at);
    assert!(first.payload_bytes > 0);

    let got = state.get_dead_letter(b1).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&got.payload).unwrap();
    assert_eq!(v["records"][0]["id"], "0/16B3748:0");
    assert!(state.delete_dead_letter(b1).await.unwrap());
    assert!(!state.delete_dead_letter(b1).await.unwrap());
    assert!(state.get_dead_letter(b1).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_boundaries_are_stored_and_forgotten_once_acked() {
    let state = store("dlv_state_b").await;
    let batch = |id: &str, last: u64| StoredBatch {
        batch_id: id.into(),
        first_record_id: "0/100:0".into(),
        last_record_id: format!("{}:0", Lsn(last)),
        last_lsn: Lsn(last),
        records: None,
    };
    state
        .record_batch("s", &batch("msg_a", 0x100))
        .await
        .unwrap();
    state
        .record_batch("s", &batch("msg_a", 0x100))
        .await
        .unwrap();
    state
        .record_batch("s", &batch("msg_b", 0x300))
        .await
        .unwrap();
    state
        .record_batch("t", &batch("msg_c", 0x100))
        .await
        .unwrap();
    let stored = state.load_batches("s").await.unwrap();
    assert_eq!(stored, vec![batch("msg_a", 0x100), batch("msg_b", 0x300)]);
    assert_eq!(state.forget_batches("s", Lsn(0x200)).await.unwrap(), 1);
    assert_eq!(
        state.load_batches("s").await.unwrap(),
        vec![batch("msg_b", 0x300)]
    );
    assert_eq!(state.load_batches("t").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_reforms_unacknowledged_batches_with_the_same_ids() {
    let state = store("dlv_state_restart").await;
    let rx = Receiver::start().await;
    rx.fail_next(1000, 503);
    let records = || (0..5).map(|i| rec(0x100, i)).collect::<Vec<_>>();

    // First run: batches of 3; the first one never gets a 2xx.
    let w = Setup {
        batch_size: 3,
        state: Some(state.clone()),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    w.send_tx(records(), Lsn(0x200)).await;
    rx.wait_requests(2, WAIT).await;
    w.stop().await;
    let first_run = rx.requests();
    let stuck_id = first_run[0].header("webhook-id").unwrap().to_string();
    assert_eq!(first_run[0].record_ids(), ["0/100:0", "0/100:1", "0/100:2"]);

    // Second run, configured with batches of 2: the stored batch keeps its
    // boundaries and id; what follows is batched by the new size.
    let rx2 = Receiver::start().await;
    let w = Setup {
        batch_size: 2,
        state: Some(state.clone()),
        ..Setup::default()
    }
    .start(&rx2.url("/hook"));
    w.send_tx(records(), Lsn(0x200)).await;
    rx2.wait_accepted_records(5, WAIT).await;
    let second = rx2.accepted();
    assert_eq!(second[0].header("webhook-id"), Some(stuck_id.as_str()));
    assert_eq!(second[0].record_ids(), ["0/100:0", "0/100:1", "0/100:2"]);
    assert_eq!(second[1].record_ids(), ["0/100:3", "0/100:4"]);

    // Acked: the boundaries are forgotten.
    wait_until(WAIT, "stored batches to be forgotten", || async {
        state.load_batches("orders").await.unwrap().is_empty()
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_without_a_state_store_is_refused() {
    let rx = Receiver::start().await;
    let endpoint = walhook::delivery::Endpoint::new(
        "test",
        &endpoint_config(&rx.url("/"), fast_retry(1, OnExhausted::DeadLetter)),
        std::sync::Arc::new(walhook::delivery::NoPrepare),
    )
    .unwrap();
    let err = walhook::delivery::StrategyWorker::new(walhook::delivery::WorkerOptions {
        index: 0,
        name: "orders".into(),
        batch_size: 1,
        max_batch_bytes: 1,
        linger: Duration::ZERO,
        max_in_flight: 1,
        ordering: walhook::config::Ordering::Commit,
        retry: fast_retry(1, OnExhausted::DeadLetter),
        endpoint: std::sync::Arc::new(endpoint),
        decorate: std::sync::Arc::new(walhook::batch::NoDecoration),
        checkpoint: std::sync::Arc::new(walhook::checkpoint::Checkpoint::new(1, Lsn(0), |_| {})),
        state: None,
        boundaries: None,
        shutdown_timeout: Duration::ZERO,
        queue_capacity: 1,
    })
    .expect_err("refused");
    assert!(err.to_string().contains("strategy orders"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_deleted_only_after_a_2xx() {
    let state = store("dlv_state_replay").await;
    let payload = br#"{"strategy":"orders","batch":{"id":"msg_x","size":1,"first_lsn":"0/100","last_lsn":"0/100"},"records":[{"id":"0/100:0"}]}"#;
    let id = state
        .insert_dead_letter(&letter("orders", "msg_x", payload))
        .await
        .unwrap();
    let rx = Receiver::start().await;
    rx.fail_next(1, 503);
    let endpoint = walhook::delivery::Endpoint::new(
        "test",
        &endpoint_config(&rx.url("/hook"), fast_retry(0, OnExhausted::Block)),
        std::sync::Arc::new(walhook::delivery::NoPrepare),
    )
    .unwrap();
    let targets: Vec<walhook::delivery::ReplayTarget> = vec![(
        "orders".into(),
        std::sync::Arc::new(endpoint),
        std::sync::Arc::new(walhook::batch::NoDecoration),
    )];
    let replay = |id| walhook::delivery::replay_dead_letter(&state, id, &targets);
    let failed = replay(id).await.unwrap();
    assert!(!failed.delivered);
    assert_eq!(failed.status, Some(503));
    assert!(state.get_dead_letter(id).await.unwrap().is_some(), "kept");
    let ok = replay(id).await.unwrap();
    assert!(ok.delivered);
    assert!(
        state.get_dead_letter(id).await.unwrap().is_none(),
        "deleted"
    );
    let r = rx.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].header("webhook-id"), Some("msg_x"));
    assert_eq!(r[1].record_ids(), ["0/100:0"]);
    assert!(matches!(
        replay(id).await,
        Err(walhook::delivery::ReplayError::NotFound(_))
    ));
    let orphan = state
        .insert_dead_letter(&letter("gone", "msg_y", payload))
        .await
        .unwrap();
    assert!(matches!(
        replay(orphan).await,
        Err(walhook::delivery::ReplayError::UnknownStrategy { .. })
    ));
    assert_eq!(
        rx.requests().len(),
        2,
        "nothing sent for an unknown strategy"
    );
    assert!(state.get_dead_letter(orphan).await.unwrap().is_some());
}
