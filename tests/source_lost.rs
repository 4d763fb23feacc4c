//! A slot the server invalidated (`wal_status = lost`) is a fatal error that
//! says so, and walhook does not recreate it. Its own test binary: it sets
//! max_slot_wal_keep_size for the whole cluster.

mod common;
mod source_common;

use source_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_slot_is_fatal_and_not_recreated() {
    let (url, db) = published_db("src_lost").await;
    psql(
        &db,
        "SELECT pg_create_logical_replication_slot('s_lost', 'pgoutput')",
    )
    .await;
    psql(
        "postgres",
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; SELECT pg_reload_conf();",
    )
    .await;

    // Write WAL past the limit until a checkpoint invalidates the idle slot.
    common::wait_until(WAIT, "wal_status = lost", || async {
        psql(
            &db,
            "INSERT INTO unpublished (pad) SELECT repeat('x', 500) FROM generate_series(1, 3000);
             SELECT pg_switch_wal();
             CHECKPOINT;",
        )
        .await;
        psql(
            &db,
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's_lost'",
        )
        .await
            == "lost"
    })
    .await;

    let src = spawn(options(&url, "s_lost"));
    let err = tokio::time::timeout(WAIT, src.task)
        .await
        .expect("a lost slot must not be retried")
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient());
    assert!(
        text.contains("\"s_lost\"") && text.contains("wal_status = lost"),
        "{text}"
    );
    assert!(text.contains("never recreates"), "{text}");
    assert_eq!(
        psql(
            &db,
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's_lost'"
        )
        .await,
        "lost",
        "the slot was touched"
    );
}
