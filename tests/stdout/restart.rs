//! `pg_ctl restart -m immediate` under a running `walhook run --stdout`:
//! walhook reconnects by itself and nothing committed is missing. On the
//! exclusive cluster, so the crash-restart disturbs no other test.

use std::collections::BTreeSet;

use super::{ids_of, start};
use crate::support::cluster::exclusive_cluster;
use crate::support::{Db, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restart_of_postgres_reconnects_and_loses_nothing() {
    let exclusive = exclusive_cluster().await;
    let cluster = exclusive.cluster();
    let db = Db::create(cluster, "e2e_restart").await;
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    let mut walhook = start(&db.url(), "e2e_restart", "pub");
    walhook.wait_streaming(&db, "e2e_restart").await;

    // A writer committing one row at a time; the crash cuts it (and walhook) mid-stream.
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        writer_db
            .try_psql(
                "DO $$ BEGIN
               FOR i IN 1..5000 LOOP
                 INSERT INTO items VALUES (i, repeat('x', 200));
                 COMMIT;
                 PERFORM pg_sleep(0.002);
               END LOOP;
             END $$;",
            )
            .await
    });
    walhook
        .wait_lines(WAIT, "100 rows before the crash", |l| l.len() >= 100)
        .await;
    tokio::task::spawn_blocking(move || cluster.restart_immediate())
        .await
        .unwrap()
        .expect("restart");
    let cut = writer.await.unwrap();
    assert!(cut.is_err(), "the writer finished before the crash");
    db.psql("INSERT INTO items SELECT g, 'after' FROM generate_series(100001, 100100) g")
        .await;

    walhook
        .wait_lines(WAIT, "the last row written after the restart", |lines| {
            lines.iter().any(|l| l.contains("\"new\":{\"id\":100100,"))
        })
        .await;
    assert!(walhook.is_running(), "walhook exited: {}", walhook.stderr());
    // Every row the table holds (every committed insert) was printed.
    let committed: Vec<i64> = db
        .psql("SELECT id FROM items ORDER BY id")
        .await
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(committed.len() > 200, "{} rows committed", committed.len());
    let printed: BTreeSet<i64> = ids_of(&walhook.records(), "items").into_iter().collect();
    let missing: Vec<&i64> = committed
        .iter()
        .filter(|id| !printed.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "committed but never printed: {missing:?}"
    );
    let stderr = walhook.stderr();
    assert!(
        stderr.contains("reconnecting"),
        "the connection loss was not logged:\n{stderr}"
    );
    walhook.stop().await;
}
