//! Issue 8: payloads walhook really delivers validate against the published
//! JSON Schema (schema/payload.schema.json): inserts, updates and deletes of
//! every type (the all_types table of tests/fixtures/capture_v1.sql),
//! unchanged TOAST under REPLICA IDENTITY DEFAULT, full old images under
//! FULL, and a truncate. Format assertions (date-time) are on.

use std::collections::BTreeSet;

use serde_json::{json, Value};

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
