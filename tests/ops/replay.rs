//! The operator API through `walhook run`: a dead-lettered batch replays to
//! the recovered endpoint and leaves walhook.dead_letters; pause holds a
//! strategy's deliveries (and `/status` says so) until resume.

use std::time::Duration;

use crate::support::walhook::admin_get;
use crate::support::{free_port, fresh_db, wait_until, Receiver, Walhook, WAIT};

const TOKEN: &str = "replay-admin-token-1234";

async fn call(method: reqwest::Method, port: u16, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("admin API answers");
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_dead_letter_replays_to_the_recovered_endpoint_and_pause_holds_deliveries() {
    let db = fresh_db("ops_replay").await;
    let url = db.url();
    db.psql("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    let admin = free_port();
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"ops_replay\"\npublication = \"ops_replay\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\n\
         [endpoints.hook]\nurl = \"{}\"\n\
         retry = {{ max_attempts = 1, initial = \"50ms\", max = \"100ms\", on_exhausted = \"dead_letter\" }}\n\n\
         [[strategies]]\nname = \"items\"\ntable = \"items\"\nendpoint = \"hook\"\non_insert = \"true\"\nlinger = \"10ms\"\n",
        receiver.url("/hook")
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "ops_replay").await;

    // The endpoint fails once: the batch becomes a dead letter, later ones flow.
    receiver.fail_next(1, 500);
    db.psql("INSERT INTO items VALUES (1, 'first')").await;
    wait_until(WAIT, "a dead letter", || async {
        db.psql("SELECT count(*) FROM walhook.dead_letters")
            .await
            .trim()
            == "1"
    })
    .await;
    db.psql("INSERT INTO items VALUES (2, 'second')").await;
    receiver.wait_accepted_records(1, WAIT).await;
    assert_eq!(receiver.accepted_record_ids().len(), 1);

    let (code, body) = call(reqwest::Method::GET, admin, "/dead-letters?strategy=items").await;
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = page["dead_letters"][0]["id"]
        .as_i64()
        .expect("a dead letter id");

    let (code, body) = call(
        reqwest::Method::POST,
        admin,
        &format!("/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(code, 200, "replay: {body}");
    receiver.wait_accepted_records(2, WAIT).await;
    let notes: Vec<String> = receiver
        .accepted()
        .iter()
        .flat_map(|r| {
            r.json()["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|rec| rec["new"]["note"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        notes,
        ["second", "first"],
        "the replay delivered the dead letter"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM walhook.dead_letters")
            .await
            .trim(),
        "0",
        "a delivered dead letter leaves the table"
    );

    // Pause: records queue, nothing is sent, /status says paused.
    let (code, body) = call(reqwest::Method::POST, admin, "/strategies/items/pause").await;
    assert_eq!(code, 200, "{body}");
    db.psql("INSERT INTO items VALUES (3, 'while paused')")
        .await;
    wait_until(
        WAIT,
        "the paused strategy to hold a queued record",
        || async {
            let Some((200, body)) = admin_get(admin, "/status").await else {
                return false;
            };
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            doc["strategies"][0]["state"] == "paused"
                && doc["strategies"][0]["queue_records"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;
    assert_eq!(
        receiver.accepted_record_ids().len(),
        2,
        "nothing sent while paused"
    );
    let (code, body) = call(reqwest::Method::POST, admin, "/strategies/items/resume").await;
    assert_eq!(code, 200, "{body}");
    receiver.wait_accepted_records(3, WAIT).await;

    walhook.stop().await;
}
