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

/// A dead letter keeps the bytes that were sent: numerics as written
/// (`50.00`), the column order of the keys, unicode and escapes. The API
/// shows them unchanged, and the replay sends them again, signed anew and
/// verified by the receiver.
#[tokio::test]
async fn a_dead_letter_keeps_and_replays_the_exact_bytes_sent() {
    use std::collections::HashMap;

    use serde_json::value::RawValue;
    use standardwebhooks::Webhook;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let db = fresh_db("ops_dl_bytes").await;
    // Keys in an order jsonb would change (it sorts by length, then bytes).
    db.psql(
        "CREATE TABLE prices (id int PRIMARY KEY, zeta text, unit_price numeric(10,2), \
         a double precision)",
    )
    .await;
    let receiver = Receiver::start().await;
    let admin = free_port();
    let config = format!(
        "[source]\nurl = \"{}\"\nslot = \"ops_dl_bytes\"\npublication = \"ops_dl_bytes\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\n\
         [endpoints.hook]\nurl = \"{}\"\nsigning = {{ secret = \"{SECRET}\" }}\n\
         retry = {{ max_attempts = 1, initial = \"50ms\", max = \"100ms\", on_exhausted = \"dead_letter\" }}\n\n\
         [[strategies]]\nname = \"prices\"\ntable = \"prices\"\nendpoint = \"hook\"\non_insert = \"true\"\nlinger = \"10ms\"\n",
        db.url(),
        receiver.url("/hook")
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "ops_dl_bytes").await;

    receiver.fail_next(1, 500);
    db.psql(
        "INSERT INTO prices VALUES (1, 'Grüße, \"quoted\" \\ and 🚀', 50.00, 1e-7), \
         (2, E'tab\\there', 1234567.10, 0.1)",
    )
    .await;
    wait_until(WAIT, "a dead letter", || async {
        db.psql("SELECT count(*) FROM walhook.dead_letters")
            .await
            .trim()
            == "1"
    })
    .await;
    let sent = receiver.requests().remove(0);
    assert_eq!(sent.answered, 500);
    let sent_body = String::from_utf8(sent.body.to_vec()).expect("UTF-8 body");
    assert!(sent_body.contains("\"unit_price\":50.00"), "{sent_body}");

    // The API shows the bytes unchanged.
    let (code, body) = call(reqwest::Method::GET, admin, "/dead-letters?strategy=prices").await;
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = page["dead_letters"][0]["id"].as_i64().expect("an id");
    assert_eq!(
        page["dead_letters"][0]["payload_bytes"].as_u64(),
        Some(sent.body.len() as u64)
    );
    let (code, body) = call(reqwest::Method::GET, admin, &format!("/dead-letters/{id}")).await;
    assert_eq!(code, 200, "{body}");
    let letter: HashMap<String, Box<RawValue>> = serde_json::from_str(&body).expect("JSON");
    assert_eq!(letter["payload"].get(), sent_body, "the stored payload");

    // The replay sends the same bytes, freshly signed.
    let (code, body) = call(
        reqwest::Method::POST,
        admin,
        &format!("/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(code, 200, "replay: {body}");
    let replayed = receiver.accepted().remove(0);
    assert_eq!(replayed.body, sent.body, "the replay's body");
    assert_eq!(
        replayed.header("webhook-id"),
        sent.header("webhook-id"),
        "the same batch id"
    );
    Webhook::new(SECRET)
        .expect("secret")
        .verify(&replayed.body, &replayed.headers)
        .expect("the replay's signature verifies");
    walhook.stop().await;
}
