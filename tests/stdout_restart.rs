//! `pg_ctl restart -m immediate` under a running `walhook run --stdout`:
//! walhook reconnects by itself and nothing committed is missing. Its own
//! test binary, so the crash-restart of its cluster disturbs no other test.

mod common;
mod source_common;
mod stdout_common;

use std::collections::BTreeSet;

use source_common::{db_of, psql};
use stdout_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restart_of_postgres_reconnects_and_loses_nothing() {
    let url = common::fresh_db("e2e_restart");
    let db = db_of(&url);
    psql(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    let mut walhook = Walhook::start(&url, "e2e_restart", "pub");
    walhook.wait_streaming(&db, "e2e_restart").await;

    // 200 committed transactions, then a crash while walhook may still be printing them.
    psql(
        &db,
        "DO $$ BEGIN
           FOR i IN 1..200 LOOP
             INSERT INTO items VALUES (i, repeat('x', 200));
             COMMIT;
           END LOOP;
         END $$;",
    )
    .await;
    tokio::task::spawn_blocking(|| common::cluster().restart_immediate())
        .await
        .unwrap()
        .expect("restart");
    psql(
        &db,
        "INSERT INTO items SELECT g, 'after' FROM generate_series(201, 300) g",
    )
    .await;

    walhook
        .wait_lines(WAIT, "row 300 after the restart", |lines| {
            lines.iter().any(|l| l.contains("\"new\":{\"id\":300,"))
        })
        .await;
    assert!(walhook.is_running(), "walhook exited: {}", walhook.stderr());
    let printed: BTreeSet<i64> = ids_of(&walhook.records(), "items").into_iter().collect();
    let missing: Vec<i64> = (1..=300).filter(|id| !printed.contains(id)).collect();
    assert!(missing.is_empty(), "never printed: {missing:?}");
    let stderr = walhook.stderr();
    assert!(
        stderr.contains("reconnecting"),
        "the connection loss was not logged:\n{stderr}"
    );
    assert!(walhook.terminate().await.success());
}
