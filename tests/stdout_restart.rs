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

    // A writer committing one row at a time; the crash cuts it (and walhook) mid-stream.
    let writer_db = db.clone();
    let writer = tokio::task::spawn_blocking(move || {
        common::cluster().psql(
            &writer_db,
            "DO $$ BEGIN
               FOR i IN 1..5000 LOOP
                 INSERT INTO items VALUES (i, repeat('x', 200));
                 COMMIT;
                 PERFORM pg_sleep(0.002);
               END LOOP;
             END $$;",
        )
    });
    walhook
        .wait_lines(WAIT, "100 rows before the crash", |l| l.len() >= 100)
        .await;
    tokio::task::spawn_blocking(|| common::cluster().restart_immediate())
        .await
        .unwrap()
        .expect("restart");
    let cut = writer.await.unwrap();
    assert!(cut.is_err(), "the writer finished before the crash");
    psql(
        &db,
        "INSERT INTO items SELECT g, 'after' FROM generate_series(100001, 100100) g",
    )
    .await;

    walhook
        .wait_lines(WAIT, "the last row written after the restart", |lines| {
            lines.iter().any(|l| l.contains("\"new\":{\"id\":100100,"))
        })
        .await;
    assert!(walhook.is_running(), "walhook exited: {}", walhook.stderr());
    // Every row the table holds (every committed insert) was printed.
    let committed: Vec<i64> = psql(&db, "SELECT id FROM items ORDER BY id")
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
    assert!(walhook.terminate().await.success());
}
