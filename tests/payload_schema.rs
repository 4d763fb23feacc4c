//! Issue 8: payloads walhook really delivers validate against the published
//! JSON Schema (schema/payload.schema.json): inserts, updates and deletes of
//! every type (the all_types table of tests/fixtures/capture_v1.sql),
//! unchanged TOAST under REPLICA IDENTITY DEFAULT, full old images under
//! FULL, and a truncate. Format assertions (date-time) are on.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::runs::{call, config_with_token};
use crate::support::schema::{validate_payload, SCHEMA_PATH};
use crate::support::walhook::base_config;
use crate::support::{fresh_db, Receiver, Walhook, WAIT};

/// The fixture script's parts: the tables, the every-type rows, the
/// updates and delete, the TOAST statements.
fn fixture() -> (String, String, String, String) {
    let script = include_str!("fixtures/capture_v1.sql");
    let section = |from: &str, to: &str| -> String {
        let start = script
            .find(from)
            .unwrap_or_else(|| panic!("{from} in capture_v1.sql"));
        let end = script[start..]
            .find(to)
            .unwrap_or_else(|| panic!("{to} in capture_v1.sql"));
        script[start..start + end].to_string()
    };
    (
        section("CREATE TYPE mood", "CREATE TABLE alt "),
        section("-- 1: every type", "-- 2: updates"),
        section("-- 2: updates", "-- 3: unchanged TOAST"),
        section("-- 3: unchanged TOAST", "-- 4: ALTER TABLE"),
    )
}

#[test]
fn the_schema_rejects_what_it_should() {
    let good = json!({
        "strategy": "s",
        "batch": {"id": "b1", "size": 1, "first_lsn": "0/16B3748", "last_lsn": "0/16B3748"},
        "records": [{
            "id": "0/16B3748:0", "op": "insert", "schema": "public", "table": "t",
            "lsn": "0/16B3748", "xid": 740, "commit_time": "2026-11-22T07:04:00.123456Z",
            "new": {"id": 1}, "old": null
        }]
    });
    validate_payload(&good).expect("a well-formed payload");
    let mut flat = good.clone();
    flat["batch"]["record_shape"] = json!("flat");
    flat["records"] = json!([{"key": 1, "kind": "insert"}, {"anything": [null]}]);
    validate_payload(&flat).expect("a well-formed flat payload");
    flat["records"] = json!([1]);
    assert!(
        validate_payload(&flat).is_err(),
        "a flat record is an object"
    );
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut bad = good.clone();
        f(&mut bad);
        bad
    };
    for (what, bad) in [
        (
            "no op",
            mutate(&|v| {
                v["records"][0].as_object_mut().unwrap().remove("op");
            }),
        ),
        (
            "unknown op",
            mutate(&|v| v["records"][0]["op"] = json!("upsert")),
        ),
        (
            "lower-case LSN",
            mutate(&|v| v["records"][0]["lsn"] = json!("0/16b3748")),
        ),
        (
            "not a date-time",
            mutate(&|v| v["records"][0]["commit_time"] = json!("yesterday")),
        ),
        (
            "an image that is a list",
            mutate(&|v| v["records"][0]["new"] = json!([1])),
        ),
        ("no records", mutate(&|v| v["records"] = json!([]))),
        (
            "flat records in an envelope batch",
            mutate(&|v| v["records"][0] = json!({"key": 1})),
        ),
        (
            "an unknown record shape",
            mutate(&|v| v["batch"]["record_shape"] = json!("nested")),
        ),
        (
            "an unknown record field",
            mutate(&|v| v["records"][0]["extra"] = json!(1)),
        ),
    ] {
        assert!(
            validate_payload(&bad).is_err(),
            "the schema accepted a payload with {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_payloads_of_every_kind_validate_against_the_schema() {
    let (tables, every_type, updates, toast) = fixture();
    let db = fresh_db("payload_schema").await;
    let url = db.url();
    db.psql(&tables).await;
    let receiver = Receiver::start().await;
    let strategy = |name: &str, table: &str, extra: &str| {
        format!(
            "[[strategies]]\nname = \"{name}\"\ntable = \"{table}\"\nendpoint = \"hook\"\n\
             on_insert = \"true\"\non_update = \"true\"\non_delete = \"true\"\n{extra}\
             linger = \"20ms\"\n\n"
        )
    };
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n{}{}{}",
        base_config(&url, "payload_schema", "payload_schema"),
        receiver.url("/hook"),
        strategy("types", "all_types", "body = { source = \"erp\" }\n"),
        strategy("toast", "toasty", "on_truncate = \"true\"\n"),
        strategy("toast_full", "toasty_full", ""),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "payload_schema").await;
    db.psql(&every_type).await;
    db.psql(&updates).await;
    db.psql(&toast).await;
    db.psql("TRUNCATE toasty").await;
    // all_types: 3 inserts, 2 updates, 1 delete; toasty: insert, update,
    // truncate; toasty_full: insert, update, delete.
    receiver.wait_accepted_records(12, WAIT).await;

    let mut kinds = BTreeSet::new();
    for request in receiver.accepted() {
        let body = request.json();
        if let Err(error) = validate_payload(&body) {
            panic!(
                "a delivered payload does not match {SCHEMA_PATH}:\n{error}\n{}",
                serde_json::to_string_pretty(&body).unwrap()
            );
        }
        for record in body["records"].as_array().expect("records") {
            let op = record["op"].as_str().expect("op").to_string();
            kinds.insert(format!("{}:{op}", record["table"].as_str().expect("table")));
            if record.get("unchanged_toast").is_some() {
                kinds.insert("unchanged_toast".to_string());
            }
        }
    }
    let expected: BTreeSet<String> = [
        "all_types:insert",
        "all_types:update",
        "all_types:delete",
        "toasty:insert",
        "toasty:update",
        "toasty:truncate",
        "toasty_full:insert",
        "toasty_full:update",
        "toasty_full:delete",
        "unchanged_toast",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds, expected, "every kind of payload was checked");

    walhook.stop().await;
}

/// `record_shape = "flat"`: each record is exactly the mapped keys and
/// values (the envelope's own fields only where mapped in), for inserts,
/// updates, deletes and a run's batches; every payload validates.
#[tokio::test]
async fn flat_records_are_exactly_the_mapping_for_changes_and_runs() {
    let db = fresh_db("flat_records").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric, status text, note text); \
         ALTER TABLE orders REPLICA IDENTITY FULL; \
         INSERT INTO orders VALUES (1, 10.50, 'open', 'seed');",
    )
    .await;
    let receiver = Receiver::start().await;
    let (base, admin) = config_with_token(&url, "flat_records");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"flat\"\ntable = \"orders\"\n\
         endpoint = \"hook\"\non_insert = \"true\"\non_update = \"true\"\non_delete = \"true\"\n\
         record_shape = \"flat\"\n\
         record = {{ key = {{ expr = \"row.id\" }}, total = {{ expr = \"row.amount\" }}, \
         status = {{ expr = \"row.status\" }}, kind = {{ expr = \"op\" }}, id = {{ expr = \"id\" }}, \
         lsn = {{ expr = \"lsn\" }}, source = \"erp\" }}\n\
         on_demand = {{ sync = true }}\nbody = {{ origin = \"shop\" }}\n",
        receiver.url("/hook")
    );
    let walhook = crate::runs::start_streaming(&config, &db, "flat_records").await;
    db.psql("INSERT INTO orders VALUES (2, 99.95, 'new', 'n')")
        .await;
    db.psql("UPDATE orders SET status = 'paid' WHERE id = 2")
        .await;
    db.psql("DELETE FROM orders WHERE id = 1").await;
    receiver.wait_accepted_records(3, WAIT).await;
    let (status, body) = call("POST", &admin, "/strategies/flat/runs?mode=sync").await;
    assert_eq!(status, 200, "{body}\n{}", walhook.stderr());
    receiver.wait_accepted_records(4, WAIT).await;

    let keys: BTreeSet<&str> = ["key", "total", "status", "kind", "id", "lsn", "source"]
        .into_iter()
        .collect();
    let mut records = Vec::new();
    for request in receiver.accepted() {
        let body = request.json();
        validate_payload(&body).unwrap_or_else(|e| panic!("{e}\n{body:#}"));
        assert_eq!(body["batch"]["record_shape"], "flat", "{body}");
        assert_eq!(body["origin"], "shop");
        for record in body["records"].as_array().expect("records") {
            let got: BTreeSet<&str> = record
                .as_object()
                .expect("a record object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(got, keys, "exactly the mapped keys: {record}");
            records.push(record.clone());
        }
    }
    let lsn = |r: &Value| r["lsn"].as_str().expect("lsn").to_string();
    for r in &records {
        let id = r["id"].as_str().expect("id");
        assert!(id.starts_with(&format!("{}:", lsn(r))), "{r}");
        assert_eq!(r["source"], "erp");
    }
    let summary: Vec<Value> = records
        .iter()
        .map(|r| json!([r["kind"], r["key"], r["total"], r["status"]]))
        .collect();
    assert_eq!(
        summary,
        vec![
            json!(["insert", 2, 99.95, "new"]),
            json!(["update", 2, 99.95, "paid"]),
            json!(["delete", 1, 10.5, "open"]),
            json!(["read", 2, 99.95, "paid"]),
        ]
    );
    // Exact numerics: the single-column mapping copies the payload text.
    let raw: String = receiver
        .accepted()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(raw.contains(r#""total":10.50"#), "{raw}");
    walhook.stop().await;
}
