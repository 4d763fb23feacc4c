//! walhook started before its database (a pod starting before the
//! database, a host reboot): it waits with backoff, says so in its log,
//! `/readyz` and `/status`, and streams once the server is up. What waiting
//! cannot fix, a wrong password, still fails at once.

use std::time::{Duration, Instant};

use walhook::cluster::StopMode;

use crate::support::cluster::{add_hba_lines, exclusive_cluster, fresh_db};
use crate::support::receiver::new_ids;
use crate::support::walhook::{admin_get, base_config_with_admin};
use crate::support::{free_port, wait_until, Db, Receiver, Walhook, WAIT};

/// How long before its database walhook starts.
const EARLY: Duration = Duration::from_secs(10);

fn config(url: &str, name: &str, port: u16, receiver: &Receiver) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nbatch_size = 5\nlinger = \"10ms\"\n",
        base_config_with_admin(url, name, name, port),
        receiver.url("/hook"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_before_its_database_it_waits_and_then_streams() {
    let exclusive = exclusive_cluster().await;
    let cluster = exclusive.cluster();
    let name = "late_database";
    let db = Db::create(cluster, name).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    let port = free_port();
    tokio::task::spawn_blocking(move || cluster.shut_down(StopMode::Fast))
        .await
        .unwrap()
        .expect("stopping the server");

    let started = Instant::now();
    let mut walhook = Walhook::run(&config(&db.url(), name, port, &receiver)).spawn();
    walhook
        .wait_stderr("a line saying it waits", |e| {
            e.contains("waiting for the database")
        })
        .await;
    wait_until(WAIT, "/readyz names the wait", || async {
        matches!(admin_get(port, "/readyz").await,
            Some((503, body)) if body.contains("waiting for the database"))
    })
    .await;
    let (code, status) = admin_get(port, "/status").await.expect("/status");
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["state"], "connecting", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("waiting for the database")),
        "{status}"
    );

    // The scenario: the database comes up 10 s after walhook.
    tokio::time::sleep(EARLY.saturating_sub(started.elapsed())).await;
    assert!(
        walhook.is_running(),
        "walhook gave up on a database that was not up yet:\n{}",
        walhook.stderr()
    );
    tokio::task::spawn_blocking(move || cluster.start_again())
        .await
        .unwrap()
        .expect("starting the server");
    walhook.wait_streaming(&db, name).await;
    db.psql("INSERT INTO orders SELECT i, 'row ' || i FROM generate_series(1, 20) i")
        .await;
    wait_until(WAIT, "all 20 rows at the receiver", || async {
        new_ids(&receiver.accepted()).len() == 20
    })
    .await;
    wait_until(WAIT, "/readyz ready", || async {
        matches!(admin_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    let stderr = walhook.stop().await;
    assert!(stderr.contains("the database is up"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_still_exits_at_once() {
    let db = fresh_db("late_badpw").await;
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         CREATE ROLE late_badpw LOGIN REPLICATION PASSWORD 'the right one';",
    )
    .await;
    add_hba_lines(&["host all late_badpw 127.0.0.1/32 scram-sha-256"]).await;
    let receiver = Receiver::start().await;
    let url = db.url_as("late_badpw", "not_the_password");
    let mut walhook = Walhook::run(&config(&url, "late_badpw", free_port(), &receiver)).spawn();
    let status = walhook.wait_exit(WAIT).await;
    let stderr = walhook.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("password authentication failed for user \"late_badpw\""),
        "{stderr}"
    );
    assert!(!stderr.contains("waiting for the database"), "{stderr}");
    assert!(!stderr.contains("not_the_password"), "{stderr}");
}
