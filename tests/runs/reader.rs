//! Reading a table's rows for a run: chunks in primary-key order, each in
//! a transaction of its own, with row-level security of the run_as role.

use serde_json::Value;
use walhook::config::TableName;
use walhook::decode::RecordEvent;
use walhook::pg;
use walhook::runs::{SnapshotError, Start, TableReader, COUNT_UP_TO_BYTES};

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

/// Every chunk of `size` rows from the first key, each ended before the next.
async fn chunks(reader: &mut TableReader, size: usize) -> Vec<Vec<RecordEvent>> {
    let mut start = Start::First;
    let mut out = Vec::new();
    loop {
        let chunk = reader.read_chunk(&start, size).await.unwrap();
        reader.finish_chunk(None).await.unwrap();
        let full = chunk.rows.len() >= size;
        let last = chunk.last_key.clone();
        if !chunk.rows.is_empty() {
            out.push(chunk.rows.into_iter().map(|r| r.event).collect());
        }
        match last {
            Some(key) if full => start = Start::After(key),
            _ => return out,
        }
    }
}

#[tokio::test]
async fn chunks_cover_every_row_once_in_key_order_each_in_a_transaction_of_its_own() {
    let fresh = fresh_db("runs_reader").await;
    let url = fresh.url();
    fresh
        .psql(
            "CREATE TABLE t (a int, b text, v numeric, payload jsonb, PRIMARY KEY (a, b)); \
             INSERT INTO t SELECT i / 3, 'k' || (i % 3), i * 1.5, jsonb_build_object('i', i) \
             FROM generate_series(1, 2500) i;",
        )
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let mut reader = TableReader::open(client, &table("t"), None).await.unwrap();
    // The first chunk's transaction sees what was committed before it only;
    // a row committed after it, past its keys, is read by a later chunk.
    let first = reader.read_chunk(&Start::First, 700).await.unwrap();
    let other = pg::connect(&url, "writer").await.unwrap();
    other
        .batch_execute("INSERT INTO t VALUES (99999, 'late', 1, '{}')")
        .await
        .unwrap();
    assert_eq!(first.rows.len(), 700);
    reader.finish_chunk(None).await.unwrap();
    let open = fresh
        .psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'test' AND xact_start IS NOT NULL")
        .await;
    assert_eq!(open.trim(), "0", "no transaction outlives its chunk");
    let mut seen: Vec<(i64, String)> = first
        .rows
        .iter()
        .map(|r| json(&r.event))
        .map(|j| {
            (
                j["new"]["a"].as_i64().unwrap(),
                j["new"]["b"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut start = Start::After(first.last_key.clone().unwrap());
    let mut pages = 1;
    loop {
        let chunk = reader.read_chunk(&start, 700).await.unwrap();
        reader.finish_chunk(None).await.unwrap();
        if chunk.rows.is_empty() {
            break;
        }
        pages += 1;
        for row in &chunk.rows {
            let json = json(&row.event);
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
        if chunk.rows.len() < 700 {
            break;
        }
        start = Start::After(chunk.last_key.unwrap());
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 2501, "every row once, the late row too");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "primary-key order, no duplicates");
    // A run may start at a key.
    let from = reader
        .read_chunk(&Start::At(vec![Some("800".into()), Some("k1".into())]), 2)
        .await
        .unwrap();
    reader.finish_chunk(None).await.unwrap();
    let keys: Vec<Value> = from
        .rows
        .iter()
        .map(|r| json(&r.event)["new"].clone())
        .collect();
    assert_eq!(
        (keys[0]["a"].as_i64(), keys[0]["b"].as_str()),
        (Some(800), Some("k1"))
    );
    assert_eq!(
        (keys[1]["a"].as_i64(), keys[1]["b"].as_str()),
        (Some(800), Some("k2"))
    );
    let wrong = reader
        .read_chunk(&Start::At(vec![Some("1".into())]), 2)
        .await;
    assert!(
        matches!(wrong, Err(SnapshotError::From(_))),
        "a key of the wrong width is named"
    );
    reader.finish().await;
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
    let err = TableReader::open(client, &table("nokey"), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SnapshotError::NoPrimaryKey(_)), "{err}");
    assert!(err.to_string().contains("ADD PRIMARY KEY"), "{err}");

    let client = pg::connect(&url, "test").await.unwrap();
    let mut reader = TableReader::open(client, &table("accounts"), Some("runs_acme"))
        .await
        .unwrap();
    let mut count = 0;
    for page in chunks(&mut reader, 10).await {
        for event in page {
            assert_eq!(json(&event)["new"]["tenant"], "acme");
            count += 1;
        }
    }
    assert_eq!(count, 25, "the role sees only its tenant's rows");
    assert_eq!(
        reader.estimate(COUNT_UP_TO_BYTES).await,
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
    let reader = TableReader::open(client, &table("e"), None).await.unwrap();
    assert_eq!(reader.estimate(COUNT_UP_TO_BYTES).await, Some(3000));
    // Counting off: a table never analyzed has no estimate.
    assert_eq!(reader.estimate(0).await, None);
    reader.finish().await;

    fresh
        .psql("ANALYZE e; DELETE FROM e WHERE id > 2000;")
        .await;
    let client = pg::connect(&url, "test").await.unwrap();
    let mut reader = TableReader::open(client, &table("e"), None).await.unwrap();
    assert_eq!(reader.estimate(COUNT_UP_TO_BYTES).await, Some(2000));
    // The statistics are older than the delete: the run reads fewer rows.
    assert_eq!(reader.estimate(0).await, Some(3000));
    // The estimate leaves the reader usable.
    let rows: usize = chunks(&mut reader, 1000).await.iter().map(Vec::len).sum();
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
    let mut reader = TableReader::open(client, &table("v"), None).await.unwrap();
    let page = chunks(&mut reader, 10).await.remove(0);
    let rows: Vec<Value> = page.iter().map(|e| json(e)["new"].clone()).collect();
    assert_eq!(rows[0]["ok"], true);
    assert_eq!(rows[1]["ok"], false);
    assert_eq!(rows[0]["code"], "ab  ", "char(n) keeps its padding");
    assert_eq!(rows[0]["addr"], "10.0.0.1", "no /32 appended");
    assert!(rows[0]["note"].is_null(), "NULL stays null");
    assert_eq!(rows[1]["note"], "", "empty text is not NULL");
}

/// Keys with quotes and backslashes page exactly, also where a DBA turned
/// `standard_conforming_strings` off (a chunk's start key is written as a
/// quoted literal: under the old setting a backslash would be an escape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_quotes_and_backslashes_page_exactly_under_any_string_setting() {
    let fresh = fresh_db("runs_reader_keys").await;
    let keys = [
        "a", "a'b", "a\\", "a\\b", "a\\\\b", "a\\nb", "a\\x41", "b''", "\\", "z",
    ];
    let values = keys
        .iter()
        .map(|k| format!("(E'{}')", k.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(", ");
    fresh
        .psql(&format!(
            "CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t VALUES {values}; \
             DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET standard_conforming_strings = off', \
             current_database()); END $$;"
        ))
        .await;
    let client = pg::connect(&fresh.url(), "test-keys").await.unwrap();
    let mut reader = TableReader::open(client, &table("t"), None).await.unwrap();
    let mut seen = Vec::new();
    let mut start = Start::First;
    for _ in 0..=keys.len() {
        let chunk = reader.read_chunk(&start, 1).await.unwrap();
        reader.finish_chunk(None).await.unwrap();
        let Some(last) = chunk.last_key.clone() else {
            break;
        };
        seen.extend(
            chunk
                .rows
                .iter()
                .map(|r| json(&r.event)["new"]["k"].as_str().unwrap().to_string()),
        );
        start = Start::After(last);
    }
    let mut expected: Vec<String> = fresh
        .psql("SELECT string_agg(k, E'\\n' ORDER BY k) FROM t")
        .await
        .lines()
        .map(str::to_string)
        .collect();
    expected.retain(|k| !k.is_empty());
    assert_eq!(seen.len(), keys.len(), "{seen:?}");
    assert_eq!(seen, expected, "every key once, in key order");
}
