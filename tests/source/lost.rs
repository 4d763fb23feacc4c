//! A slot the server invalidated (`wal_status = lost`) is a fatal error that
//! says so, and walhook does not recreate it. On the exclusive cluster: it
//! sets max_slot_wal_keep_size for the whole server.

use walhook::source::Disposition;

use crate::support::cluster::exclusive_cluster;
use crate::support::source::{options, publish_items, spawn};
use crate::support::{wait_until, Db, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_slot_is_fatal_and_not_recreated() {
    let exclusive = exclusive_cluster().await;
    let db = Db::create(exclusive.cluster(), "src_lost").await;
    publish_items(&db).await;
    db.psql("SELECT pg_create_logical_replication_slot('s_lost', 'pgoutput')")
        .await;
    Db::existing(exclusive.cluster(), "postgres")
        .psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; SELECT pg_reload_conf();")
        .await;

    // Write WAL past the limit until a checkpoint invalidates the idle slot.
    wait_until(WAIT, "wal_status = lost", || async {
        db.psql(
            "INSERT INTO unpublished (pad) SELECT repeat('x', 500) FROM generate_series(1, 3000);
             SELECT pg_switch_wal();
             CHECKPOINT;",
        )
        .await;
        db.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's_lost'")
            .await
            == "lost"
    })
    .await;

    let src = spawn(options(&db.url(), "s_lost"));
    let err = tokio::time::timeout(WAIT, src.task)
        .await
        .expect("a lost slot must not be retried")
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.disposition(), Disposition::Fatal);
    assert!(
        text.contains("\"s_lost\"") && text.contains("wal_status = lost"),
        "{text}"
    );
    assert!(text.contains("never recreates"), "{text}");
    assert_eq!(
        db.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's_lost'")
            .await,
        "lost",
        "the slot was touched"
    );
}
