//! PostgreSQL shut down and started again while walhook streams (on the
//! exclusive cluster): a restart for a setting or a minor upgrade
//! (`pg_ctl stop -m fast`), a smart shutdown and a crash-like immediate one.
//! walhook must keep running, reconnect once the server is back, and every
//! committed row must arrive.

use std::collections::BTreeSet;
use std::time::Duration;

use walhook::cluster::StopMode;

use crate::support::cluster::exclusive_cluster;
use crate::support::receiver::new_ids;
use crate::support::walhook::base_config;
use crate::support::{wait_until, Db, Receiver, Walhook, WAIT};

/// How long the server stays down: long enough for several reconnect
/// attempts to be refused.
const DOWNTIME: Duration = Duration::from_secs(5);

/// One row per transaction, ids `from..=to`.
fn insert_rows(from: i32, to: i32) -> String {
    format!(
        "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
         INSERT INTO orders VALUES (i, 'row ' || i); COMMIT; END LOOP; END $$"
    )
}

async fn survives(mode: StopMode, name: &str) {
    let exclusive = exclusive_cluster().await;
    let cluster = exclusive.cluster();
    let db = Db::create(cluster, name).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    // A real endpoint takes its time: batches are still in flight when the
    // server goes down.
    receiver.set_delay(Duration::from_millis(100));
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nbatch_size = 5\nlinger = \"10ms\"\n",
        base_config(&db.url(), name, name),
        receiver.url("/hook"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, name).await;

    db.psql(&insert_rows(1, 100)).await;
    receiver.wait_accepted_records(1, WAIT).await;
    tokio::task::spawn_blocking(move || cluster.shut_down(mode))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("pg_ctl stop -m {mode:?}: {e}"));
    // The deliberate downtime: walhook must ride it out.
    tokio::time::sleep(DOWNTIME).await;
    assert!(
        walhook.is_running(),
        "walhook exited while the server was down:\n{}",
        walhook.stderr()
    );
    tokio::task::spawn_blocking(move || cluster.start_again())
        .await
        .unwrap()
        .expect("starting the server again");

    walhook.wait_streaming(&db, name).await;
    db.psql(&insert_rows(101, 150)).await;
    let want: BTreeSet<i64> = (1..=150).collect();
    wait_until(WAIT, "all 150 rows at the receiver", || async {
        new_ids(&receiver.accepted())
            .into_iter()
            .collect::<BTreeSet<_>>()
            == want
    })
    .await;
    let end = db.current_wal_lsn().await;
    db.wait_confirmed(name, end).await;

    let stderr = walhook.stop().await;
    assert!(
        !stderr.contains("protocol error"),
        "the shutdown was taken for a protocol error:\n{stderr}"
    );
    assert!(
        stderr.contains("reconnecting"),
        "no reconnect was logged:\n{stderr}"
    );
    // The last line names the position Postgres has confirmed, not 0/0.
    let confirmed = db.confirmed_flush(name).await.expect("the slot");
    let stopped = stderr
        .lines()
        .find(|l| l.contains("walhook stopped"))
        .unwrap_or_else(|| panic!("no stop line:\n{stderr}"));
    assert!(
        stopped.contains(&format!("acked_lsn={confirmed}")),
        "{stopped}, but confirmed_flush_lsn is {confirmed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_shutdown_and_start_is_a_reconnect() {
    survives(StopMode::Fast, "shutdown_fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_shutdown_and_start_is_a_reconnect() {
    survives(StopMode::Smart, "shutdown_smart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_shutdown_and_start_is_a_reconnect() {
    survives(StopMode::Immediate, "shutdown_immediate").await;
}
