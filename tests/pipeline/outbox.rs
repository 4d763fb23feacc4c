//! The transactional outbox: a `messages` strategy receives the logical
//! messages (`pg_logical_emit_message`) of committed transactions, in
//! commit order, and none of a rolled-back one; kill -9 loses none.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::schema::validate_payload;
use crate::support::walhook::base_config;
use crate::support::{fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

async fn orders(prefix: &str) -> Db {
    let db = fresh_db(prefix).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2))")
        .await;
    db
}

/// `[[strategies]]` following messages with `prefix`, plus one for the
/// orders table's inserts on the same endpoint.
fn config(db: &Db, slot: &str, receiver: &Receiver, extra: &str) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"outbox\"\nmessages = \"outbox.\"\nendpoint = \"hook\"\n{extra}\n\
         [[strategies]]\nname = \"rows\"\ntable = \"orders\"\nendpoint = \"hook\"\non_insert = \"true\"\n",
        base_config(&db.url(), slot, slot),
        receiver.url("/hook"),
    )
}

/// The message records the receiver accepted, in arrival order.
fn messages(receiver: &Receiver) -> Vec<Value> {
    receiver
        .accepted()
        .iter()
        .filter(|r| r.json()["strategy"] == "outbox")
        .flat_map(|r| r.json()["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

async fn wait_messages(receiver: &Receiver, n: usize) -> Vec<Value> {
    wait_until(WAIT, &format!("{n} messages"), || async {
        messages(receiver).len() >= n
    })
    .await;
    messages(receiver)
}

#[tokio::test]
async fn outbox_messages_arrive_in_commit_order_with_parsed_content_and_never_when_rolled_back() {
    let db = orders("outbox_order").await;
    let receiver = Receiver::start().await;
    let config = config(&db, "outbox_order", &receiver, "");
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "outbox_order").await;

    // Three transactions, each writing a row and emitting a message; the
    // first to begin commits last.
    let a = connect(&db.url()).await;
    let b = connect(&db.url()).await;
    let emit = |id: i32, prefix: &str| {
        format!(
            "INSERT INTO orders VALUES ({id}, {id}.50); \
             SELECT pg_logical_emit_message(true, '{prefix}', '{{\"order\": {id}, \"lines\": [1, 2]}}')"
        )
    };
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute(&emit(1, "outbox.order_created"))
        .await
        .unwrap();
    b.batch_execute(&format!("BEGIN; {}; COMMIT", emit(2, "outbox.order_paid")))
        .await
        .unwrap();
    // A rolled-back transaction: its row and its message never arrive.
    b.batch_execute(&format!(
        "BEGIN; {}; ROLLBACK",
        emit(99, "outbox.order_created")
    ))
    .await
    .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    // Another prefix is not this strategy's; text content is kept as text.
    db.psql(&format!(
        "BEGIN; {}; SELECT pg_logical_emit_message(true, 'audit.x', '{{}}'); \
         SELECT pg_logical_emit_message(true, 'outbox.note', 'not json'); COMMIT",
        emit(3, "outbox.order_shipped")
    ))
    .await;

    let got = wait_messages(&receiver, 4).await;
    receiver.wait_accepted_records(7, WAIT).await;
    let summary: Vec<(String, Value)> = got
        .iter()
        .map(|m| {
            (
                m["prefix"].as_str().unwrap().to_string(),
                m["content"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "outbox.order_paid".to_string(),
                json!({"order": 2, "lines": [1, 2]})
            ),
            (
                "outbox.order_created".to_string(),
                json!({"order": 1, "lines": [1, 2]})
            ),
            (
                "outbox.order_shipped".to_string(),
                json!({"order": 3, "lines": [1, 2]})
            ),
            ("outbox.note".to_string(), json!("not json")),
        ],
        "commit order, parsed JSON, no rolled-back or foreign-prefix message"
    );
    assert_eq!(got[0]["op"], "message");
    assert_eq!(got[0]["transactional"], true);
    assert_eq!(got[0]["content_format"], "json");
    assert_eq!(got[3]["content_format"], "text");
    // Each message is in its transaction: same commit LSN as its row.
    let rows: Vec<Value> = receiver
        .accepted()
        .iter()
        .filter(|r| r.json()["strategy"] == "rows")
        .flat_map(|r| r.json()["records"].as_array().cloned().unwrap_or_default())
        .collect();
    let row_ids: Vec<i64> = rows
        .iter()
        .map(|r| r["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        row_ids,
        [2, 1, 3],
        "the rolled-back row never arrives either"
    );
    for (message, row) in got.iter().zip(&rows) {
        assert_eq!(message["lsn"], row["lsn"]);
        assert_eq!(message["xid"], row["xid"]);
        assert_ne!(
            message["id"], row["id"],
            "ids are unique within a transaction"
        );
    }
    // A non-transactional message is sent as decoded, even when its
    // transaction rolls back, and acknowledged once delivered.
    db.psql("BEGIN; SELECT pg_logical_emit_message(false, 'outbox.ping', '{\"n\": 1}'); ROLLBACK")
        .await;
    let end = db.current_wal_lsn().await;
    let got = wait_messages(&receiver, 5).await;
    assert_eq!(got[4]["prefix"], "outbox.ping");
    assert_eq!(got[4]["transactional"], false);
    assert_eq!(got[4]["xid"], Value::Null);
    assert_eq!(got[4]["content"], json!({"n": 1}));
    db.wait_confirmed("outbox_order", end).await;
    for request in receiver.accepted() {
        validate_payload(&request.json()).unwrap();
    }
    walhook.stop().await;
}

#[tokio::test]
async fn outbox_messages_survive_kill_9_and_a_restart() {
    const N: usize = 12;
    let db = orders("outbox_kill").await;
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(300));
    let config = config(
        &db,
        "outbox_kill",
        &receiver,
        "batch_size = 1\non_message = \"message.transactional && json(message.content, \\\"order\\\") > 0\"\n",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "outbox_kill").await;
    let writes: String = (1..=N)
        .map(|i| {
            format!(
                "BEGIN; INSERT INTO orders VALUES ({i}, 1); \
                 SELECT pg_logical_emit_message(true, 'outbox.order', '{{\"order\": {i}}}'); COMMIT;\n"
            )
        })
        .collect();
    db.psql(&writes).await;
    let end = db.current_wal_lsn().await;
    // Some delivered, one held by the slow receiver: kill then.
    wait_until(WAIT, "2 messages accepted and one in flight", || async {
        messages(&receiver).len() >= 2 && receiver.arrivals() > receiver.requests().len()
    })
    .await;
    walhook.kill9().await;
    let before = messages(&receiver).len();
    assert!(before < N, "everything went before the kill");
    receiver.set_delay(Duration::ZERO);

    let walhook = Walhook::run(&config).spawn();
    db.wait_confirmed("outbox_kill", end).await;
    let orders: Vec<i64> = messages(&receiver)
        .iter()
        .map(|m| m["content"]["order"].as_i64().unwrap())
        .collect();
    let (first, second) = orders.split_at(before);
    let ascending = |s: &[i64]| s.windows(2).all(|w| w[1] == w[0] + 1);
    assert!(
        ascending(first) && ascending(second),
        "each run delivers in commit order: {orders:?}"
    );
    // The restart resumes at or before the first message not yet delivered.
    assert!(
        second
            .first()
            .is_some_and(|&o| o <= first.last().map_or(1, |l| l + 1)),
        "a gap after the restart: {orders:?}"
    );
    assert_eq!(second.last(), Some(&(N as i64)), "none lost: {orders:?}");
    walhook.stop().await;
}
