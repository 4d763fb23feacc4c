//! `walhook run` end to end: committed changes through filters, batching
//! and delivery to a real receiver on 127.0.0.1.

use crate::support::walhook::base_config;
use crate::support::{fresh_db, Receiver, Walhook, WAIT};

#[tokio::test]
async fn inserts_matching_the_filter_arrive_as_one_batch_with_the_design_payload() {
    let db = fresh_db("pipe_smoke").await;
    let url = db.url();
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), status text)")
        .await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"big\"\ntable = \"orders\"\n\
         endpoint = \"hook\"\non_insert = \"new.amount > 100\"\nbody = {{ source = \"erp\" }}\n",
        base_config(&url, "pipe_smoke", "pipe_smoke"),
        receiver.url("/hook")
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_smoke").await;
    db.psql("INSERT INTO orders VALUES (1, 150.50, 'open'), (2, 20, 'open'), (3, 101, 'open')")
        .await;
    receiver.wait_accepted_records(2, WAIT).await;
    let requests = receiver.accepted();
    assert_eq!(requests.len(), 1, "one transaction, one batch");
    let body = requests[0].json();
    assert_eq!(body["strategy"], "big");
    assert_eq!(body["source"], "erp");
    assert_eq!(body["batch"]["size"], 2);
    assert_eq!(
        requests[0].header("webhook-id"),
        body["batch"]["id"].as_str()
    );
    let records = body["records"].as_array().unwrap();
    assert_eq!(records[0]["new"]["id"], 1);
    let raw = String::from_utf8_lossy(&requests[0].body);
    assert!(
        raw.contains(r#""amount":150.50"#),
        "numeric keeps its digits: {raw}"
    );
    assert_eq!(records[1]["new"]["id"], 3);
    assert_eq!(records[0]["op"], "insert");
    walhook.stop().await;
}
