//! Reading a table's current rows for a run: one snapshot, primary-key
//! order, row-level security of the run_as role.

use serde_json::Value;
use walhook::config::TableName;
use walhook::decode::RecordEvent;
use walhook::pg;
use walhook::runs::{Snapshot, SnapshotError, COUNT_UP_TO_BYTES};

use crate::support::fresh_db;

fn table(name: &str) -> TableName {
    TableName::parse(name).unwrap()
}

/// The record's object as written into a payload.
fn json(event: &RecordEvent) -> Value {
    let mut buf = Vec::new();
    event.write_json(&mut buf);
    serde_json::from_slice(&buf).unwrap()
}

#[tokio::test]
async fn pages_cover_every_row_once_in_key_order_within_one_snapshot() {
    let fresh = fresh_db("runs_snapshot").await;
    let url = fresh.url();
    fresh
        .psql(
            "CREATE TABLE t (a int, b text, v numeric, payload jsonb, PRIMARY KEY (a, b)); \
             INSERT INTO t SELECT i / 3, 'k' || (i % 3), i * 1.5, jsonb_build_object('i', i) \
             FROM generate_series(1, 2500) i;",
        )
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let mut snap = Snapshot::open(client, &table("t"), None, 700)
        .await
        .unwrap();
    // Rows written after the snapshot began are not in it.
    let other = pg::connect(&url, "writer").await.unwrap();
    other
        .batch_execute("INSERT INTO t VALUES (99999, 'late', 1, '{}')")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(page) = snap.next_page().await.unwrap() {
        pages += 1;
        for event in page {
            let json = json(&event);
            assert_eq!(json["op"], "read");
            assert!(json["old"].is_null());
            let new = &json["new"];
            seen.push((
                new["a"].as_i64().unwrap(),
                new["b"].as_str().unwrap().to_string(),
            ));
            if new["a"] == 1 && new["b"] == "k0" {
                assert_eq!(new["payload"], serde_json::json!({"i": 3}));
                assert_eq!(new["v"].to_string(), "4.5");
            }
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 2500, "every row once, the late row not at all");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "primary-key order, no duplicates");
    snap.finish().await;
}

#[tokio::test]
async fn a_table_without_primary_key_is_refused_and_rls_applies_to_run_as() {
    let fresh = fresh_db("runs_rls").await;
    let url = fresh.url();
    fresh
        .psql(
            "CREATE TABLE nokey (x int); \
             CREATE TABLE accounts (id int PRIMARY KEY, tenant text); \
             INSERT INTO accounts SELECT i, CASE WHEN i % 4 = 0 THEN 'acme' ELSE 'other' END FROM generate_series(1, 100) i; \
             ALTER TABLE accounts ENABLE ROW LEVEL SECURITY; \
             DO $$ BEGIN CREATE ROLE runs_acme NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT SELECT ON accounts TO runs_acme; \
             CREATE POLICY acme_only ON accounts FOR SELECT TO runs_acme USING (tenant = 'acme');",
        )
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let err = Snapshot::open(client, &table("nokey"), None, 100)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SnapshotError::NoPrimaryKey(_)), "{err}");
    assert!(err.to_string().contains("ADD PRIMARY KEY"), "{err}");

    let client = pg::connect(&url, "test").await.unwrap();
    let mut snap = Snapshot::open(client, &table("accounts"), Some("runs_acme"), 10)
        .await
        .unwrap();
    let mut count = 0;
    while let Some(page) = snap.next_page().await.unwrap() {
        for event in page {
            assert_eq!(json(&event)["new"]["tenant"], "acme");
            count += 1;
        }
    }
    assert_eq!(count, 25, "the role sees only its tenant's rows");
    let client = snap.finish().await;
    let snap = Snapshot::open(client, &table("accounts"), Some("runs_acme"), 10)
        .await
        .unwrap();
    assert_eq!(
        snap.estimate(COUNT_UP_TO_BYTES).await,
        Some(25),
        "counted as the role"
    );
}

#[tokio::test]
async fn the_estimate_counts_a_small_table_and_uses_statistics_for_a_large_one() {
    let fresh = fresh_db("runs_estimate").await;
    let url = fresh.url();
    // No autovacuum: the statistics are those of the ANALYZE below only.
    fresh
        .psql(
            "CREATE TABLE e (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = false); \
             INSERT INTO e SELECT i, repeat('x', 100) FROM generate_series(1, 3000) i;",
        )
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let snap = Snapshot::open(client, &table("e"), None, 1000)
        .await
        .unwrap();
    assert_eq!(snap.estimate(COUNT_UP_TO_BYTES).await, Some(3000));
    // Counting off: a table never analyzed has no estimate.
    assert_eq!(snap.estimate(0).await, None);
    snap.finish().await;

    fresh
        .psql("ANALYZE e; DELETE FROM e WHERE id > 2000;")
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let mut snap = Snapshot::open(client, &table("e"), None, 1000)
        .await
        .unwrap();
    assert_eq!(snap.estimate(COUNT_UP_TO_BYTES).await, Some(2000));
    // The statistics are older than the delete: the run reads fewer rows.
    assert_eq!(snap.estimate(0).await, Some(3000));
    // The estimate leaves the snapshot usable.
    let mut rows = 0;
    while let Some(page) = snap.next_page().await.unwrap() {
        rows += page.len();
    }
    assert_eq!(rows, 2000);
}

#[tokio::test]
async fn values_read_the_way_replication_sends_them() {
    let fresh = fresh_db("runs_values").await;
    let url = fresh.url();
    fresh
        .psql(
            "CREATE TABLE v (id int PRIMARY KEY, ok bool, code char(4), addr inet, note text); \
             INSERT INTO v VALUES (1, true, 'ab', '10.0.0.1', NULL), (2, false, 'abcd', '10.1.0.0/16', '');",
        )
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let mut snap = Snapshot::open(client, &table("v"), None, 10).await.unwrap();
    let page = snap.next_page().await.unwrap().unwrap();
    let rows: Vec<Value> = page.iter().map(|e| json(e)["new"].clone()).collect();
    assert_eq!(rows[0]["ok"], true);
    assert_eq!(rows[1]["ok"], false);
    assert_eq!(rows[0]["code"], "ab  ", "char(n) keeps its padding");
    assert_eq!(rows[0]["addr"], "10.0.0.1", "no /32 appended");
    assert!(rows[0]["note"].is_null(), "NULL stays null");
    assert_eq!(rows[1]["note"], "", "empty text is not NULL");
}
