//! A pause outlives the process: paused through one instance, the strategy
//! stays paused on the standby that takes over after a kill -9 and on the
//! instance started after that one stops, until it is resumed.

use serde_json::Value;
use walhook::lsn::Lsn;

use crate::support::receiver::new_ids;
use crate::support::walhook::{admin_call, admin_get};
use crate::support::{free_port, fresh_db, wait_until, Receiver, Walhook, WAIT};

const TOKEN: &str = "pause-admin-token-4321";

fn config(url: &str, port: u16, receiver: &Receiver) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"ops_pauses\"\npublication = \"ops_pauses\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n\
         [endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"items\"\ntable = \"items\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nlinger = \"10ms\"\n",
        receiver.url("/hook")
    )
}

async fn post(port: u16, path: &str) -> (u16, String) {
    admin_call(reqwest::Method::POST, port, path, TOKEN).await
}

/// The strategy's entry in `/status`.
async fn strategy(port: u16) -> Value {
    match admin_get(port, "/status").await {
        Some((200, body)) => {
            serde_json::from_str::<Value>(&body).expect("json")["strategies"][0].clone()
        }
        _ => Value::Null,
    }
}

/// Waits until the instance on `port` streams and holds `queued` records of
/// the paused strategy.
async fn wait_paused_holding(port: u16, queued: u64, what: &str) {
    wait_until(WAIT, what, || async {
        let active = matches!(admin_get(port, "/activez").await, Some((200, _)));
        let s = strategy(port).await;
        active && s["state"] == "paused" && s["queue_records"].as_u64() == Some(queued)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_failover_and_restart_until_resumed() {
    let db = fresh_db("ops_pauses").await;
    db.psql("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    let (port_a, port_b) = (free_port(), free_port());
    let mut first = Walhook::run(&config(&db.url(), port_a, &receiver)).spawn();
    first.wait_streaming(&db, "ops_pauses").await;
    let second = Walhook::run(&config(&db.url(), port_b, &receiver)).spawn();
    wait_until(WAIT, "the second instance a standby", || async {
        matches!(admin_get(port_b, "/activez").await, Some((503, body)) if body.contains("standby"))
    })
    .await;

    db.psql("INSERT INTO items VALUES (1, 'before the pause')")
        .await;
    receiver.wait_accepted_records(1, WAIT).await;

    // Paused through the active instance; the standby learns it while it
    // waits.
    let (code, body) = post(port_a, "/strategies/items/pause").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        db.psql("SELECT strategy FROM walhook.pauses").await.trim(),
        "items"
    );
    wait_until(WAIT, "the standby to show the pause", || async {
        strategy(port_b).await["state"] == "paused"
    })
    .await;
    db.psql("INSERT INTO items VALUES (2, 'while paused')")
        .await;
    wait_paused_holding(port_a, 1, "the active instance to hold the row").await;
    // The held change is received but not acknowledged: /status says so.
    wait_until(WAIT, "/status to show the held change as lag", || async {
        let Some((200, body)) = admin_get(port_a, "/status").await else {
            return false;
        };
        let doc: Value = serde_json::from_str(&body).unwrap_or_default();
        let lsn = |key: &str| doc[key].as_str().and_then(|v| v.parse::<Lsn>().ok());
        doc["lag_bytes"].as_u64().is_some_and(|l| l > 0)
            && matches!((lsn("received_lsn"), lsn("acked_lsn")), (Some(r), Some(a)) if r > a)
    })
    .await;

    // Failover: the standby takes over and still holds the row.
    first.kill9().await;
    wait_paused_holding(port_b, 1, "the new active instance to hold the row").await;
    assert_eq!(
        new_ids(&receiver.accepted()),
        [1],
        "nothing sent while paused"
    );

    // Restart: a new process reads the pause before it streams.
    second.stop().await;
    let port_c = free_port();
    let third = Walhook::run(&config(&db.url(), port_c, &receiver)).spawn();
    wait_paused_holding(port_c, 1, "the restarted instance to hold the row").await;
    assert_eq!(
        new_ids(&receiver.accepted()),
        [1],
        "nothing sent while paused"
    );

    // Resume: the row goes out, and the pause is forgotten.
    let (code, body) = post(port_c, "/strategies/items/resume").await;
    assert_eq!(code, 200, "{body}");
    wait_until(WAIT, "the held row at the receiver", || async {
        new_ids(&receiver.accepted()).contains(&2)
    })
    .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM walhook.pauses").await.trim(),
        "0"
    );
    third.stop().await;
}
