//! The source survives a crash-restart of PostgreSQL (on the exclusive
//! cluster: the restart would disturb other tests).

use walhook::source::SourceState;

use crate::support::cluster::exclusive_cluster;
use crate::support::source::{assert_insert, options, publish_items, spawn};
use crate::support::{wait_until, Db, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_an_immediate_restart_without_duplicates() {
    let exclusive = exclusive_cluster().await;
    let cluster = exclusive.cluster();
    let db = Db::create(cluster, "src_restart").await;
    publish_items(&db).await;
    let mut src = spawn(options(&db.url(), "s_restart"));
    src.wait_state(SourceState::Streaming).await;

    // Delivered but not acknowledged: the server will send it again after
    // the restart, and the source must not hand it down twice.
    db.psql("INSERT INTO items VALUES (1, 'before')").await;
    let (first_commit, _, records) = src.next_transaction().await;
    assert_insert(&records[0], 1);
    let pid = db.active_pid("s_restart").await;
    // Every error the status shows while it happens.
    let mut watched = src.status.clone();
    let seen = tokio::spawn(async move {
        let mut errors = Vec::new();
        while watched.changed().await.is_ok() {
            let status = watched.borrow_and_update().clone();
            if let Some(error) = status.last_error {
                errors.push((error, status.last_error_at));
            }
            if status.state == SourceState::Streaming && status.recovered_at.is_some() {
                break;
            }
        }
        errors
    });

    tokio::task::spawn_blocking(move || cluster.restart_immediate())
        .await
        .unwrap()
        .expect("restart");

    // The source reconnects on its own.
    wait_until(WAIT, "a new walsender on the slot", || async {
        let now = db.active_pid("s_restart").await;
        now.is_some() && now != pid
    })
    .await;
    src.wait_state(SourceState::Streaming).await;
    let errors = tokio::time::timeout(WAIT, seen)
        .await
        .expect("the status recovers")
        .expect("watch task");
    assert!(
        errors.iter().any(|(_, at)| at.is_some()),
        "the connection loss was not reported (with when): {errors:?}"
    );
    // Streaming again: the error is gone from the status, with when it went.
    let status = src.status.borrow().clone();
    assert_eq!(
        status.last_error, None,
        "a stale error stayed after recovery"
    );
    let (recovered, failed) = (
        status.recovered_at.expect("recovered_at"),
        status.last_error_at.expect("last_error_at"),
    );
    assert!(recovered >= failed, "{recovered:?} < {failed:?}");

    db.psql("INSERT INTO items VALUES (2, 'after')").await;
    let (second_commit, end_lsn, records) = src.next_transaction().await;
    assert!(second_commit > first_commit);
    assert_eq!(records.len(), 1);
    assert_insert(&records[0], 2);

    src.acks.ack(end_lsn);
    db.wait_confirmed("s_restart", end_lsn).await;
    src.stop().await.unwrap();
}
