//! `walhook run` end to end, what reaches the receiver: per-operation
//! filters, several strategies on one table, the payload and its mappings,
//! and the startup checks (bad config, the publication) that exit 2 before
//! a slot exists.

use std::collections::BTreeMap;

use serde_json::Value;
use walhook::lsn::Lsn;

use crate::support::walhook::base_config;
use crate::support::{cluster, fresh_db, Db, Receiver, Walhook, WAIT};

/// (op, id) of every record the receiver accepted, in arrival order.
fn ops_and_ids(receiver: &Receiver) -> Vec<(String, i64)> {
    receiver
        .accepted()
        .iter()
        .flat_map(|r| {
            let body = r.json();
            body["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|rec| {
                    let image = if rec["op"] == "delete" {
                        &rec["old"]
                    } else {
                        &rec["new"]
                    };
                    (
                        rec["op"].as_str().expect("op").to_string(),
                        image["id"].as_i64().expect("id"),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn pairs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(op, id)| (op.to_string(), *id)).collect()
}

#[tokio::test]
async fn each_operation_passes_only_what_its_filter_matches_and_unconfigured_deletes_never_go_out()
{
    let db = fresh_db("pipe_ops").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), status text, note text);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"orders\"\ntable = \"orders\"\n\
         endpoint = \"hook\"\non_insert = \"new.amount > 100\"\non_update = 'changed(\"status\")'\n",
        base_config(&url, "pipe_ops", "pipe_ops"),
        receiver.url("/hook")
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_ops").await;
    db.psql(
        // Inserts: 1, 3 and 5 match; 4 is not > 100; 6's NULL amount is an
        // evaluation error, which counts as "not matched".
        "INSERT INTO orders VALUES (1, 150.50, 'open', 'a'), (2, 20, 'open', 'b'), (3, 101, 'open', 'c');
         INSERT INTO orders VALUES (4, 100, 'open', 'd'), (5, 500, 'open', 'e'), (6, NULL, 'open', 'f');
         UPDATE orders SET note = 'changed note only' WHERE id = 1;
         UPDATE orders SET status = 'paid' WHERE id = 2;
         UPDATE orders SET status = 'open', amount = 999 WHERE id = 3;
         UPDATE orders SET status = 'shipped', note = 'both' WHERE id = 5;
         DELETE FROM orders WHERE id IN (1, 4);
         UPDATE orders SET status = NULL WHERE id = 6;
         INSERT INTO orders VALUES (7, 700, 'open', 'last');",
    )
    .await;
    let end = db.current_wal_lsn().await;
    // Everything up to the last insert is acknowledged: every change before
    // it went through its filter.
    db.wait_confirmed("pipe_ops", end).await;
    let expected = pairs(&[
        ("insert", 1),
        ("insert", 3),
        ("insert", 5),
        ("update", 2),
        ("update", 5),
        ("update", 6),
        ("insert", 7),
    ]);
    assert_eq!(ops_and_ids(&receiver), expected);
    for request in receiver.accepted() {
        for record in request.json()["records"].as_array().unwrap() {
            if record["op"] == "update" {
                assert_ne!(
                    record["new"]["status"], record["old"]["status"],
                    "an update without a status change went out: {record}"
                );
            }
        }
    }
    walhook.stop().await;
}

#[tokio::test]
async fn two_strategies_on_one_table_each_send_their_own_subset_to_their_own_endpoint() {
    let db = fresh_db("pipe_two").await;
    let url = db.url();
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, amount int, status text)")
        .await;
    let big = Receiver::start().await;
    let vip = Receiver::start().await;
    let config = format!(
        "{}[endpoints.big]\nurl = \"{}\"\n\n[endpoints.vip]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"big\"\ntable = \"orders\"\nendpoint = \"big\"\non_insert = \"new.amount > 100\"\n\n\
         [[strategies]]\nname = \"vip\"\ntable = \"public.orders\"\nendpoint = \"vip\"\n\
         on_insert = 'new.status == \"vip\"'\non_delete = \"true\"\n",
        base_config(&url, "pipe_two", "pipe_two"),
        big.url("/big"),
        vip.url("/vip")
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_two").await;
    db.psql(
        "INSERT INTO orders VALUES (1, 500, 'vip'), (2, 500, 'std'), (3, 5, 'vip'), (4, 5, 'std');
         UPDATE orders SET amount = 1000;
         DELETE FROM orders WHERE id = 2;
         INSERT INTO orders VALUES (5, 101, 'std');",
    )
    .await;
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("pipe_two", end).await;
    assert_eq!(
        ops_and_ids(&big),
        pairs(&[("insert", 1), ("insert", 2), ("insert", 5)])
    );
    assert_eq!(
        ops_and_ids(&vip),
        pairs(&[("insert", 1), ("insert", 3), ("delete", 2)])
    );
    for request in big.accepted() {
        assert_eq!(request.json()["strategy"], "big");
        assert_eq!(request.path_and_query, "/big");
    }
    for request in vip.accepted() {
        assert_eq!(request.json()["strategy"], "vip");
        assert_eq!(request.path_and_query, "/vip");
    }
    walhook.stop().await;
}

fn query_pairs(path_and_query: &str) -> BTreeMap<String, String> {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    // The values here are plain ASCII: no percent-decoding needed.
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn body_record_header_and_query_mappings_and_the_design_payload_appear_as_configured() {
    let db = fresh_db("pipe_map").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, qty int, amount numeric(10,2), status text,
           paid boolean, meta jsonb, created timestamptz, photo bytea, tags int[], note text)",
    )
    .await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.mapped]\nurl = \"{}\"\n\
         headers = {{ \"X-Env\" = \"test\", \"X-Count\" = {{ expr = \"batch.size\" }} }}\n\
         query = {{ tenant = \"acme\", size = {{ expr = \"batch.size\" }} }}\n\n\
         [endpoints.plain]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"mapped\"\ntable = \"orders\"\nendpoint = \"mapped\"\non_insert = \"true\"\n\
         headers = {{ \"X-Strategy\" = \"mapped\", \"X-Env\" = \"strategy-wins\" }}\n\
         body = {{ source = \"erp\", first = {{ expr = \"batch.first_lsn\" }}, name = {{ expr = \"strategy\" }} }}\n\
         record = {{ id = {{ expr = \"row.id\" }}, double = {{ expr = \"new.qty * 2\" }}, \
         amount = {{ expr = \"row.amount\" }}, kind = \"order\" }}\n\n\
         [[strategies]]\nname = \"plain\"\ntable = \"orders\"\nendpoint = \"plain\"\non_insert = \"true\"\n",
        base_config(&url, "pipe_map", "pipe_map"),
        receiver.url("/mapped"),
        receiver.url("/plain"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_map").await;
    db.psql(
        "INSERT INTO orders VALUES
           (1, 3, 150.50, 'open', true, '{\"a\": [1, 2]}', '2026-11-22 07:04:00.123456+00', '\\x0102ff', '{1,2,3}', 'x'),
           (2, 4, 20.00, NULL, false, NULL, NULL, NULL, NULL, NULL)",
    )
    .await;
    receiver.wait_accepted_records(4, WAIT).await;
    let requests = receiver.accepted();
    assert_eq!(requests.len(), 2, "one batch per strategy");
    let mapped = requests
        .iter()
        .find(|r| r.path_and_query.starts_with("/mapped"))
        .expect("the mapped strategy's request");
    let plain = requests
        .iter()
        .find(|r| r.path_and_query.starts_with("/plain"))
        .expect("the plain strategy's request");

    // headers: the endpoint's, with the strategy's merged over them key by key
    assert_eq!(mapped.header("x-env"), Some("strategy-wins"));
    assert_eq!(mapped.header("x-count"), Some("2"));
    assert_eq!(mapped.header("x-strategy"), Some("mapped"));
    assert_eq!(
        plain.header("x-env"),
        None,
        "headers belong to the endpoint"
    );
    // query
    let query = query_pairs(&mapped.path_and_query);
    assert_eq!(query.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(query.get("size").map(String::as_str), Some("2"));
    assert_eq!(plain.path_and_query, "/plain");
    // body
    let body = mapped.json();
    assert_eq!(body["source"], "erp");
    assert_eq!(body["name"], "mapped");
    assert_eq!(body["first"], body["batch"]["first_lsn"]);
    // record: the envelope stays, `new` holds the mapped fields
    let records = body["records"].as_array().unwrap();
    assert_eq!(
        records[0]["new"],
        serde_json::json!({"id": 1, "double": 6, "amount": 150.50, "kind": "order"})
    );
    let raw = String::from_utf8_lossy(&mapped.body);
    assert!(
        raw.contains(r#""amount":150.50"#),
        "a single-column field keeps the numeric's digits: {raw}"
    );
    assert_eq!(records[1]["new"]["double"], 8);
    assert_eq!(records[0]["old"], Value::Null);

    // The whole-row payload, field by field as DESIGN.md shows it.
    for request in [mapped, plain] {
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("user-agent").map(String::from),
            Some(format!("walhook/{}", env!("CARGO_PKG_VERSION")))
        );
        assert!(request
            .header("webhook-timestamp")
            .is_some_and(|t| t.parse::<u64>().is_ok()));
        let body = request.json();
        assert_eq!(request.header("webhook-id"), body["batch"]["id"].as_str());
        assert_eq!(body["batch"]["size"], 2);
    }
    let body = plain.json();
    assert_eq!(body["strategy"], "plain");
    assert!(body.get("source").is_none(), "body fields are per strategy");
    let records = body["records"].as_array().unwrap();
    assert_eq!(body["batch"]["first_lsn"], records[0]["lsn"]);
    assert_eq!(body["batch"]["last_lsn"], records[1]["lsn"]);
    for (i, record) in records.iter().enumerate() {
        let lsn = record["lsn"].as_str().expect("lsn is text");
        lsn.parse::<Lsn>().expect("lsn is an LSN");
        assert_eq!(
            record["id"],
            format!("{lsn}:{i}"),
            "id = <commit lsn>:<index>"
        );
        assert_eq!(record["op"], "insert");
        assert_eq!(record["schema"], "public");
        assert_eq!(record["table"], "orders");
        assert!(
            record["xid"].as_u64().is_some(),
            "xid is a number: {record}"
        );
        assert!(is_rfc3339(&record["commit_time"]), "{record}");
        assert_eq!(record["old"], Value::Null, "old is null for inserts");
    }
    assert_eq!(
        records[0]["new"],
        serde_json::json!({
            "id": 1, "qty": 3, "amount": 150.50, "status": "open", "paid": true,
            "meta": {"a": [1, 2]}, "created": "2026-11-22T07:04:00.123456Z",
            "photo": "AQL/", "tags": [1, 2, 3], "note": "x"
        })
    );
    let raw = String::from_utf8_lossy(&plain.body);
    assert!(raw.contains(r#""amount":150.50"#), "{raw}");
    assert!(raw.contains(r#""amount":20.00"#), "{raw}");
    assert_eq!(
        records[1]["new"],
        serde_json::json!({
            "id": 2, "qty": 4, "amount": 20.0, "status": null, "paid": false,
            "meta": null, "created": null, "photo": null, "tags": null, "note": null
        })
    );
    walhook.stop().await;
}

async fn slot_count(slot: &str) -> String {
    Db::existing(cluster(), "postgres")
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
}

/// Runs `walhook run` with this config until it exits by itself; its exit
/// code and stderr.
async fn run_to_exit(config: &str) -> (Option<i32>, String) {
    let out = Walhook::run(config).output().await;
    (out.code(), out.stderr)
}

#[tokio::test]
async fn each_kind_of_bad_config_exits_2_naming_the_path_and_creates_no_slot_or_publication() {
    let db = fresh_db("pipe_bad").await;
    let url = db.url();
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, amount int)")
        .await;
    let strategy = |extra: &str, endpoint: &str, on_insert: &str| {
        format!(
            "[endpoints.hook]\nurl = \"http://127.0.0.1:9/hook\"\n\n[[strategies]]\nname = \"orders\"\n\
             table = \"orders\"\nendpoint = \"{endpoint}\"\non_insert = '{on_insert}'\n{extra}"
        )
    };
    let cases = [
        (
            "unknown key",
            strategy("colour = \"red\"\n", "hook", "true"),
            "strategies[0].colour: unknown key",
        ),
        (
            "missing endpoint",
            strategy("", "nowhere", "true"),
            "strategies[0].endpoint: no endpoint named \"nowhere\"",
        ),
        (
            "expression that does not compile",
            strategy("", "hook", "new.amount >"),
            "strategies[0].on_insert",
        ),
        (
            "column the table lacks",
            strategy("", "hook", "new.price > 100"),
            "strategies[0].on_insert",
        ),
        (
            "unset variable",
            strategy("", "hook", "${PIPE_BAD_FILTER}"),
            "strategies[0].on_insert: environment variable PIPE_BAD_FILTER is not set",
        ),
    ];
    for (i, (what, strategies, expected)) in cases.iter().enumerate() {
        let slot = format!("pipe_bad_{i}");
        let config = format!("{}{strategies}", base_config(&url, &slot, "pipe_bad"));
        let (code, stderr) = run_to_exit(&config).await;
        assert_eq!(code, Some(2), "{what}: stderr:\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: {expected:?} missing from:\n{stderr}"
        );
        if *what == "column the table lacks" {
            assert!(stderr.contains("price"), "{what}: {stderr}");
        }
        assert_eq!(slot_count(&slot).await, "0", "{what}: a slot was created");
        assert_eq!(
            db.psql("SELECT count(*) FROM pg_publication").await,
            "0",
            "{what}: a publication was created"
        );
    }
}

#[tokio::test]
async fn run_creates_the_missing_publication_for_the_strategies_tables_and_logs_it() {
    let db = fresh_db("pipe_pub_new").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE items (id int PRIMARY KEY);
         CREATE TABLE other (id int PRIMARY KEY);",
    )
    .await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\non_insert = \"true\"\n\n\
         [[strategies]]\nname = \"items\"\ntable = \"items\"\nendpoint = \"hook\"\non_insert = \"true\"\n",
        base_config(&url, "pipe_pub_new", "pipe_pub_new"),
        receiver.url("/hook")
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_pub_new").await;
    assert_eq!(
        db.psql(
            "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename) \
             FROM pg_publication_tables WHERE pubname = 'pipe_pub_new'"
        )
        .await,
        "public.items,public.orders"
    );
    // stderr is read by a task of this runtime: wait for it to catch up.
    walhook
        .wait_stderr("the log line about the new publication", |stderr| {
            stderr.contains("created the publication for the strategies' tables")
        })
        .await;
    db.psql(
        "INSERT INTO other VALUES (1); INSERT INTO orders VALUES (2); INSERT INTO items VALUES (3);",
    )
    .await;
    receiver.wait_accepted_records(2, WAIT).await;
    walhook.stop().await;
}

#[tokio::test]
async fn a_table_missing_from_an_existing_publication_exits_2_with_the_alter_publication_to_run() {
    let db = fresh_db("pipe_pub_old").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE items (id int PRIMARY KEY);
         CREATE PUBLICATION pipe_pub_old FOR TABLE items;",
    )
    .await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"http://127.0.0.1:9/hook\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\non_insert = \"true\"\n",
        base_config(&url, "pipe_pub_old", "pipe_pub_old"),
    );
    let (code, stderr) = run_to_exit(&config).await;
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("ALTER PUBLICATION pipe_pub_old ADD TABLE public.orders;"),
        "{stderr}"
    );
    assert!(stderr.contains("strategies[0]"), "{stderr}");
    assert_eq!(slot_count("pipe_pub_old").await, "0", "a slot was created");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pipe_pub_old'")
            .await,
        "1",
        "the existing publication was altered"
    );
}
