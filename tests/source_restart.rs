//! The source survives a crash-restart of PostgreSQL (its own cluster: the
//! restart would disturb other tests).

mod common;
mod source_common;

use source_common::*;
use walhook::source::SourceState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_an_immediate_restart_without_duplicates() {
    let (url, db) = published_db("src_restart").await;
    let mut src = spawn(options(&url, "s_restart"));
    src.wait_state(SourceState::Streaming).await;

    // Delivered but not acknowledged: the server will send it again after
    // the restart, and the source must not hand it down twice.
    psql(&db, "INSERT INTO items VALUES (1, 'before')").await;
    let (first_commit, _, records) = src.next_transaction().await;
    assert_insert(&records[0], 1);
    let pid = active_pid(&db, "s_restart").await;

    tokio::task::spawn_blocking(|| common::cluster().restart_immediate())
        .await
        .unwrap()
        .expect("restart");

    // The source reconnects on its own.
    common::wait_until(WAIT, "a new walsender on the slot", || async {
        let now = active_pid(&db, "s_restart").await;
        now.is_some() && now != pid
    })
    .await;
    src.wait_state(SourceState::Streaming).await;
    assert!(
        src.status.borrow().last_error.is_some(),
        "the connection loss was not reported"
    );

    psql(&db, "INSERT INTO items VALUES (2, 'after')").await;
    let (second_commit, end_lsn, records) = src.next_transaction().await;
    assert!(second_commit > first_commit);
    assert_eq!(records.len(), 1);
    assert_insert(&records[0], 2);

    src.acks.ack(end_lsn);
    wait_confirmed(&db, "s_restart", end_lsn).await;
    src.stop().await.unwrap();
}
