//! Issue 2's acceptance list, end to end through the built binary: real
//! PostgreSQL writes, `walhook run --stdout`, and the JSON lines a user reads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use walhook::lsn::Lsn;

use super::{ids_of, start};
use crate::support::cluster::add_hba_lines;
use crate::support::{cluster, fresh_db, wait_until, Db, Walhook, WAIT};

/// A fresh database prepared with `sql`; returns (url, database).
async fn database(prefix: &str, sql: &str) -> (String, Db) {
    let db = fresh_db(prefix).await;
    db.psql(sql).await;
    (db.url(), db)
}

/// Starts walhook and waits until its walsender holds the slot.
async fn streaming(url: &str, db: &Db, slot: &str) -> Walhook {
    let mut walhook = start(url, slot, "pub");
    walhook.wait_streaming(db, slot).await;
    walhook
}

/// The record's `lsn` as an [`Lsn`].
fn lsn_of(record: &Value) -> Lsn {
    record["lsn"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no lsn in {record}"))
}

/// (op, new, old) of each record of `table`.
fn images(records: &[Value], table: &str) -> Vec<(String, Value, Value)> {
    records
        .iter()
        .filter(|r| r["table"] == table)
        .map(|r| {
            (
                r["op"].as_str().unwrap_or_default().to_string(),
                r["new"].clone(),
                r["old"].clone(),
            )
        })
        .collect()
}

/// Acceptance: inserts, updates and deletes under REPLICA IDENTITY DEFAULT
/// and FULL arrive with the right new and old images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_carry_the_replica_identity_images() {
    let (url, db) = database(
        "e2e_images",
        "CREATE TABLE dflt (id int PRIMARY KEY, v text, n int);
         CREATE TABLE full_ (id int PRIMARY KEY, v text, n int);
         ALTER TABLE full_ REPLICA IDENTITY FULL;
         CREATE PUBLICATION pub FOR TABLE dflt, full_;",
    )
    .await;
    let walhook = streaming(&url, &db, "e2e_images").await;
    for table in ["dflt", "full_"] {
        db.psql(&format!(
            "INSERT INTO {table} VALUES (1, 'a', 10), (2, 'b', NULL);
                 UPDATE {table} SET v = 'a2' WHERE id = 1;
                 UPDATE {table} SET id = 3 WHERE id = 2;
                 DELETE FROM {table} WHERE id = 1;"
        ))
        .await;
    }
    let records = walhook.wait_records(10).await;

    assert_eq!(
        images(&records, "dflt"),
        vec![
            (
                "insert".into(),
                json!({"id": 1, "v": "a", "n": 10}),
                Value::Null
            ),
            (
                "insert".into(),
                json!({"id": 2, "v": "b", "n": null}),
                Value::Null
            ),
            // DEFAULT: no old image when the key did not change…
            (
                "update".into(),
                json!({"id": 1, "v": "a2", "n": 10}),
                Value::Null
            ),
            // …the old key when it did, and the key of a deleted row.
            (
                "update".into(),
                json!({"id": 3, "v": "b", "n": null}),
                json!({"id": 2})
            ),
            ("delete".into(), Value::Null, json!({"id": 1})),
        ]
    );
    assert_eq!(
        images(&records, "full_"),
        vec![
            (
                "insert".into(),
                json!({"id": 1, "v": "a", "n": 10}),
                Value::Null
            ),
            (
                "insert".into(),
                json!({"id": 2, "v": "b", "n": null}),
                Value::Null
            ),
            // FULL: the whole old row every time.
            (
                "update".into(),
                json!({"id": 1, "v": "a2", "n": 10}),
                json!({"id": 1, "v": "a", "n": 10})
            ),
            (
                "update".into(),
                json!({"id": 3, "v": "b", "n": null}),
                json!({"id": 2, "v": "b", "n": null})
            ),
            (
                "delete".into(),
                Value::Null,
                json!({"id": 1, "v": "a2", "n": 10})
            ),
        ]
    );
    // Every record has the documented envelope.
    for r in &records {
        let lsn = r["lsn"].as_str().unwrap();
        assert!(
            r["id"].as_str().unwrap().starts_with(&format!("{lsn}:")),
            "{r}"
        );
        assert_eq!(r["schema"], "public");
        assert!(r["xid"].as_u64().is_some(), "{r}");
        assert!(r["commit_time"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    walhook.stop().await;
}

/// The all_types table and its rows, taken from the fixture script so the
/// decoder fixtures and this test agree on what "every type" is.
fn capture_sql() -> (String, String, String) {
    let script = include_str!("../fixtures/capture_v1.sql");
    let section = |from: &str, to: &str| -> String {
        let start = script
            .find(from)
            .unwrap_or_else(|| panic!("{from} in capture_v1.sql"));
        let end = script[start..]
            .find(to)
            .unwrap_or_else(|| panic!("{to} in capture_v1.sql"));
        script[start..start + end].to_string()
    };
    let ddl = section("CREATE TYPE mood", "CREATE TABLE toasty ");
    let inserts = section("-- 1: every type", "-- 2: updates");
    let updates = section("-- 2: updates", "-- 3: unchanged TOAST");
    (ddl, inserts, updates)
}

/// `to_jsonb(row)` of these all_types rows, in id order, as raw column texts.
async fn to_jsonb_rows(db: &Db, ids: &str) -> Vec<BTreeMap<String, Box<RawValue>>> {
    db.psql(&format!(
        "SET TimeZone = 'UTC';
         SELECT to_jsonb(a) FROM all_types a WHERE id IN ({ids}) ORDER BY id;"
    ))
    .await
    .lines()
    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("to_jsonb {l}: {e}")))
    .collect()
}

/// The `new` image of a printed line as raw column texts.
fn raw_new(line: &str) -> BTreeMap<String, Box<RawValue>> {
    let record: BTreeMap<String, Box<RawValue>> = serde_json::from_str(line).unwrap();
    serde_json::from_str(record["new"].get()).unwrap_or_else(|e| panic!("new of {line}: {e}"))
}

/// The number literals in a JSON text, outside strings, in order. Values
/// compare equal as f64 after parsing; this keeps exact digits honest.
fn number_tokens(json: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
        } else if c == '-' || c.is_ascii_digit() {
            let mut token = c.to_string();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_digit() || "+-.eE".contains(d) {
                    token.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(token);
        }
    }
    tokens
}

/// Where walhook's JSON deliberately differs from `to_jsonb(row)` of the same
/// row (DESIGN.md "Payload"): (column, walhook, to_jsonb).
fn documented_differences() -> Vec<(&'static str, Value, Value)> {
    vec![
        // oid is an exact number, like the other integer types.
        ("o", json!(4294967295u64), json!("4294967295")),
        // bytea is base64, not PostgreSQL's hex text.
        ("by", json!("AP8AEA=="), json!("\\x00ff0010")),
        (
            "ba",
            json!(["AA==", "3q2+7w=="]),
            json!(["\\x00", "\\xdeadbeef"]),
        ),
        // timestamptz is RFC 3339 in UTC, ending in Z.
        (
            "tstz",
            json!("2026-11-22T07:04:00.123456Z"),
            json!("2026-11-22T07:04:00.123456+00:00"),
        ),
        (
            "tsa",
            json!(["2026-11-22T07:04:00.123456Z", "infinity"]),
            json!(["2026-11-22T07:04:00.123456+00:00", "infinity"]),
        ),
        (
            "tstz",
            json!("12345-06-07T08:09:10.5Z"),
            json!("12345-06-07T08:09:10.5+00:00"),
        ),
        // BC timestamps stay exactly as the server wrote them.
        (
            "tstz",
            json!("0044-03-15 12:00:00+00 BC"),
            json!("0044-03-15T12:00:00+00:00 BC"),
        ),
    ]
}

/// Float columns: equal values, but PostgreSQL's to_jsonb writes them in
/// positional notation (-0.000…0123) where walhook keeps the server's
/// shortest exact text (-1.2345678901234568e-300).
const FLOAT_COLUMNS: [&str; 2] = ["f4", "f8"];

/// Acceptance: a table holding every type of item 6 round-trips through the
/// binary to the documented JSON; compared with `to_jsonb(row)` from the
/// same database, listing the documented differences explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_matches_to_jsonb_except_the_documented_differences() {
    let (ddl, inserts, updates) = capture_sql();
    let (url, db) = database(
        "e2e_types",
        &format!("{ddl}\nCREATE PUBLICATION pub FOR TABLE all_types;"),
    )
    .await;
    let walhook = streaming(&url, &db, "e2e_types").await;

    db.psql(&inserts).await;
    let inserted = to_jsonb_rows(&db, "1, 2, 3").await;
    db.psql(&updates).await;
    let updated = to_jsonb_rows(&db, "2, 20").await;
    walhook.wait_records(6).await;
    let lines = walhook.lines();
    let records = walhook.records();
    let ops: Vec<&str> = records.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["insert", "insert", "insert", "update", "update", "delete"]
    );

    let theirs: Vec<&BTreeMap<String, Box<RawValue>>> = inserted.iter().chain(&updated).collect();
    let ours: Vec<BTreeMap<String, Box<RawValue>>> =
        lines[..5].iter().map(|l| raw_new(l)).collect();
    let differences = documented_differences();
    let mut used = vec![false; differences.len()];
    let mut compared = BTreeSet::new();
    for (ours, theirs) in ours.iter().zip(theirs) {
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "the same columns"
        );
        for (column, their_raw) in theirs {
            let (mine_raw, their_raw) = (ours[column].get(), their_raw.get());
            let mine: Value = serde_json::from_str(mine_raw).unwrap();
            let value: Value = serde_json::from_str(their_raw).unwrap();
            compared.insert(column.clone());
            if mine == value {
                if !FLOAT_COLUMNS.contains(&column.as_str()) {
                    assert_eq!(
                        number_tokens(mine_raw),
                        number_tokens(their_raw),
                        "{column}: exact digits of {mine_raw} vs to_jsonb {their_raw}"
                    );
                }
                continue;
            }
            let documented = differences
                .iter()
                .position(|(c, m, t)| c == column && *m == mine && *t == value)
                .unwrap_or_else(|| {
                    panic!("{column}: walhook {mine_raw} vs to_jsonb {their_raw} is not documented")
                });
            used[documented] = true;
        }
    }
    assert_eq!(
        compared.len(),
        38,
        "every column of all_types: {compared:?}"
    );
    assert!(
        used.iter().all(|u| *u),
        "a documented difference no longer occurs: {used:?}"
    );
    // The exact texts the issue names.
    for part in [
        r#""n":123456789012345678901234567890.123456789"#,
        r#""tstz":"2026-11-22T07:04:00.123456Z""#,
        r#""by":"AP8AEA==""#,
        r#""ta":["plain","with \"quote\"","back\\slash","NULL",null,"","a,b","{x}"]"#,
        r#""ia":[1,null,3]"#,
    ] {
        assert!(lines[0].contains(part), "{part} not in {}", lines[0]);
    }
    assert_eq!(records[1]["new"]["b"], Value::Null, "NULL is null");
    assert_eq!(records[5]["old"], json!({"id": 1}));
    walhook.stop().await;
}

/// Acceptance: a 20 KB incompressible TOAST value, then an update of another
/// column: `unchanged_toast` under DEFAULT, the full value under FULL; never null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_named_under_default_and_full_under_full() {
    let (url, db) = database(
        "e2e_toast",
        "CREATE TABLE tdef (id int PRIMARY KEY, big text, note text);
         CREATE TABLE tfull (id int PRIMARY KEY, big text, note text);
         ALTER TABLE tfull REPLICA IDENTITY FULL;
         CREATE TABLE bigvalue AS
           SELECT string_agg(md5(random()::text || g), '') AS v FROM generate_series(1, 640) g;
         CREATE PUBLICATION pub FOR TABLE tdef, tfull;",
    )
    .await;
    let walhook = streaming(&url, &db, "e2e_toast").await;
    db.psql(
        "INSERT INTO tdef SELECT 1, v, 'n1' FROM bigvalue;
         INSERT INTO tfull SELECT 1, v, 'n1' FROM bigvalue;
         UPDATE tdef SET note = 'n2';
         UPDATE tfull SET note = 'n2';
         DELETE FROM tfull;",
    )
    .await;
    let stored: Vec<u64> = db
        .psql("SELECT pg_column_size(big) FROM tdef UNION ALL SELECT octet_length(v) FROM bigvalue")
        .await
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        stored[0] >= stored[1] && stored[1] == 20480,
        "the value is stored uncompressed out of line: {stored:?}"
    );
    let big: Value = db.psql("SELECT v FROM bigvalue").await.into();

    walhook.wait_records(5).await;
    let lines = walhook.lines();
    let records = walhook.records();
    assert_eq!(records[0]["new"]["big"], big);
    assert_eq!(records[1]["new"]["big"], big);

    let default = &records[2];
    assert_eq!(
        (&default["table"], &default["op"]),
        (&json!("tdef"), &json!("update"))
    );
    assert_eq!(default["new"], json!({"id": 1, "note": "n2"}));
    assert_eq!(default["unchanged_toast"], json!(["big"]));
    assert_eq!(default["old"], Value::Null);

    let full = &records[3];
    assert_eq!(full["table"], "tfull");
    assert_eq!(full["new"], json!({"id": 1, "big": big, "note": "n2"}));
    assert_eq!(full["old"], json!({"id": 1, "big": big, "note": "n1"}));
    assert!(full.get("unchanged_toast").is_none(), "{}", lines[3]);
    assert_eq!(
        records[4]["old"],
        json!({"id": 1, "big": big, "note": "n2"})
    );

    for line in &lines {
        assert!(
            !line.contains(r#""big":null"#),
            "an unchanged value is never null"
        );
    }
    walhook.stop().await;
}

/// Acceptance: ALTER TABLE add, drop and rename column mid-stream, also
/// inside a transaction with DML before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_mid_stream_changes_the_columns_from_the_next_row_on() {
    let (url, db) = database(
        "e2e_alter",
        "CREATE TABLE alt (id int PRIMARY KEY, a text, b int);
         CREATE PUBLICATION pub FOR TABLE alt;",
    )
    .await;
    let walhook = streaming(&url, &db, "e2e_alter").await;
    // One statement per transaction while walhook streams…
    db.psql(
        "INSERT INTO alt VALUES (1, 'one', 1);
         ALTER TABLE alt ADD COLUMN c text;
         INSERT INTO alt VALUES (2, 'two', 2, 'c2');
         ALTER TABLE alt DROP COLUMN b;
         INSERT INTO alt VALUES (3, 'three', 'c3');
         ALTER TABLE alt RENAME COLUMN a TO a2;
         INSERT INTO alt VALUES (4, 'four', 'c4');",
    )
    .await;
    walhook.wait_records(4).await;
    // …and all of it inside one transaction.
    db.psql(
        "BEGIN;
         INSERT INTO alt VALUES (5, 'five', 'c5');
         ALTER TABLE alt ADD COLUMN d int DEFAULT 0;
         INSERT INTO alt VALUES (6, 'six', 'c6', 6);
         ALTER TABLE alt DROP COLUMN c;
         INSERT INTO alt VALUES (7, 'seven', 7);
         ALTER TABLE alt RENAME COLUMN a2 TO a3;
         UPDATE alt SET d = 70 WHERE id = 7;
         ALTER TABLE alt ALTER COLUMN d TYPE text;
         INSERT INTO alt VALUES (8, 'eight', 'text now');
         COMMIT;",
    )
    .await;
    let records = walhook.wait_records(9).await;
    let news: Vec<&Value> = records.iter().map(|r| &r["new"]).collect();
    assert_eq!(
        news,
        vec![
            &json!({"id": 1, "a": "one", "b": 1}),
            &json!({"id": 2, "a": "two", "b": 2, "c": "c2"}),
            &json!({"id": 3, "a": "three", "c": "c3"}),
            &json!({"id": 4, "a2": "four", "c": "c4"}),
            &json!({"id": 5, "a2": "five", "c": "c5"}),
            &json!({"id": 6, "a2": "six", "c": "c6", "d": 6}),
            &json!({"id": 7, "a2": "seven", "d": 7}),
            &json!({"id": 7, "a3": "seven", "d": 70}),
            &json!({"id": 8, "a3": "eight", "d": "text now"}),
        ]
    );
    // The last five are one transaction: one commit LSN, indexes 0..5.
    let lsn = records[4]["lsn"].as_str().unwrap();
    for (i, r) in records[4..].iter().enumerate() {
        assert_eq!(r["id"], format!("{lsn}:{i}"));
    }
    walhook.stop().await;
}

/// Acceptance: one 200k-row transaction streams through `--stdout` with the
/// process's peak RSS under 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_transaction_streams_in_under_100_mb() {
    const ROWS: usize = 200_000;
    const LIMIT_KIB: u64 = 100_000_000 / 1024;
    let (url, db) = database(
        "e2e_big",
        "CREATE TABLE big (id int PRIMARY KEY, note text, at timestamptz);
         CREATE PUBLICATION pub FOR TABLE big;",
    )
    .await;
    let walhook = streaming(&url, &db, "e2e_big").await;
    db.psql(&format!(
        "INSERT INTO big SELECT g, 'row number ' || g, now() FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    walhook
        .wait_lines(Duration::from_secs(300), "200k lines", |l| l.len() >= ROWS)
        .await;
    // Read before the process exits: VmHWM is gone afterwards.
    let peak = walhook.peak_rss_kib();
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {peak} KiB >= {LIMIT_KIB} KiB (100 MB)"
    );

    let lines = walhook.lines();
    assert_eq!(lines.len(), ROWS);
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    let lsn = first["lsn"].as_str().unwrap().to_string();
    for (i, line) in lines.iter().enumerate() {
        // Cheap checks on every line; full parses on a sample.
        let expected = format!("{{\"id\":\"{lsn}:{i}\",");
        assert!(line.starts_with(&expected), "line {i}: {line}");
        if i % 9973 == 0 || i == ROWS - 1 {
            let r: Value = serde_json::from_str(line).unwrap();
            assert_eq!(r["new"]["id"], i + 1);
            assert_eq!(r["new"]["note"], format!("row number {}", i + 1));
        }
    }
    walhook.stop().await;
}

/// Acceptance: with no published table changing for 30 s while an
/// unpublished table writes, confirmed_flush_lsn keeps advancing and the
/// walsender never times out (the cluster's wal_sender_timeout is 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_slot_keeps_advancing_and_the_walsender_never_times_out() {
    let (url, db) = database(
        "e2e_quiet",
        "CREATE TABLE items (id int PRIMARY KEY);
         CREATE TABLE unpublished (id bigserial PRIMARY KEY, pad text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    let timeout = db.psql("SHOW wal_sender_timeout").await;
    assert_eq!(timeout, "5s");
    let mut walhook = streaming(&url, &db, "e2e_quiet").await;
    let pid = db.active_pid("e2e_quiet").await.expect("walsender pid");
    let started = db.confirmed_flush("e2e_quiet").await.unwrap();

    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        writer_db
            .psql(
                "DO $$ BEGIN
               FOR i IN 1..300 LOOP
                 INSERT INTO unpublished (pad) VALUES (repeat('x', 100));
                 COMMIT;
                 PERFORM pg_sleep(0.1);
               END LOOP;
             END $$;",
            )
            .await
    });
    let begun = tokio::time::Instant::now();
    let mut rounds = 0;
    let mut last = started;
    while !writer.is_finished() {
        let point = db.current_wal_lsn().await;
        wait_until(WAIT, "confirmed_flush_lsn to pass the WAL end", || async {
            db.confirmed_flush("e2e_quiet")
                .await
                .is_some_and(|c| c >= point)
        })
        .await;
        let now = db.confirmed_flush("e2e_quiet").await.unwrap();
        assert!(now >= last, "confirmed_flush_lsn went back: {last} → {now}");
        last = now;
        rounds += 1;
        assert_eq!(
            db.active_pid("e2e_quiet").await,
            Some(pid),
            "the walsender changed: it timed out or walhook reconnected"
        );
    }
    writer.await.unwrap();
    assert!(begun.elapsed() >= Duration::from_secs(30));
    assert!(rounds >= 6, "only {rounds} rounds in 30 s");
    assert!(last > started);
    let walsenders = db
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE pid = {pid} AND state = 'streaming'"
        ))
        .await;
    assert_eq!(walsenders, "1");
    assert!(walhook.is_running());
    assert_eq!(walhook.line_count(), 0, "unpublished changes were printed");
    let stderr = walhook.stderr();
    assert!(!stderr.contains("reconnecting"), "{stderr}");
    walhook.stop().await;
}

/// Acceptance: kill -9 of walhook mid-stream and a restart: every committed
/// change is printed at least once, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_prints_every_committed_change() {
    const ROWS: i64 = 400;
    let (url, db) = database(
        "e2e_kill",
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    let mut first = streaming(&url, &db, "e2e_kill").await;
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        writer_db
            .psql(&format!(
                "DO $$ BEGIN
                   FOR i IN 1..{ROWS} LOOP
                     INSERT INTO items VALUES (i, repeat('x', 200));
                     COMMIT;
                     PERFORM pg_sleep(0.01);
                   END LOOP;
                 END $$;"
            ))
            .await
    });
    first
        .wait_lines(WAIT, "50 rows before the kill", |l| l.len() >= 50)
        .await;
    let status = first.kill9().await;
    assert_eq!(status.code(), None, "killed by a signal");
    let before = first.records();
    assert!(
        !writer.is_finished(),
        "the writer finished before the kill: not mid-stream"
    );

    let second = start(&url, "e2e_kill", "pub");
    writer.await.unwrap();
    second
        .wait_lines(WAIT, "the last row after the restart", |lines| {
            lines
                .iter()
                .any(|l| l.contains(&format!("\"new\":{{\"id\":{ROWS},")))
        })
        .await;
    let after = second.records();
    let printed: BTreeSet<i64> = ids_of(&before, "items")
        .into_iter()
        .chain(ids_of(&after, "items"))
        .collect();
    let missing: Vec<i64> = (1..=ROWS).filter(|id| !printed.contains(id)).collect();
    assert!(missing.is_empty(), "never printed: {missing:?}");
    // The restart resumed from an acknowledged position, not from the start.
    let resumed_at = ids_of(&after, "items")[0];
    assert!(resumed_at > 1, "the restart printed everything again");
}

/// Creates a REPLICATION role whose password is stored with `encryption`
/// and an hba line requiring `method` for it.
async fn role(db: &Db, name: &str, encryption: &str, method: &str) {
    db.psql(&format!(
        "SET password_encryption = '{encryption}';
         CREATE ROLE {name} LOGIN REPLICATION PASSWORD 'pw_of_{name}';
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name};"
    ))
    .await;
    add_hba_lines(&[&format!("host all {name} 127.0.0.1/32 {method}")]).await;
}

/// Acceptance: md5 and SCRAM-SHA-256 roles connect; a wrong password gives a
/// clear error naming the role and host and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_scram_roles_connect_and_a_wrong_password_exits_1() {
    let (_, db) = database(
        "e2e_auth",
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    role(&db, "e2e_md5", "md5", "md5").await;
    role(&db, "e2e_scram", "scram-sha-256", "scram-sha-256").await;
    let stored = db
        .psql(
            "SELECT rolname || ' ' || left(rolpassword, 6) FROM pg_authid
         WHERE rolname IN ('e2e_md5', 'e2e_scram') ORDER BY 1",
        )
        .await;
    let stored: Vec<&str> = stored.lines().collect();
    assert!(stored[0].starts_with("e2e_md5 md5"), "{stored:?}");
    assert_eq!(stored[1], "e2e_scram SCRAM-", "{stored:?}");

    for (i, user) in ["e2e_md5", "e2e_scram"].into_iter().enumerate() {
        let slot = format!("{user}_slot");
        let url = db.url_as(user, &format!("pw_of_{user}"));
        let mut walhook = start(&url, &slot, "pub");
        walhook.wait_streaming(&db, &slot).await;
        db.psql(&format!("INSERT INTO items VALUES ({i}, '{user}')"))
            .await;
        let records = walhook.wait_records(1).await;
        assert_eq!(records[0]["new"], json!({"id": i, "note": user}));
        walhook.stop().await;
    }

    for user in ["e2e_md5", "e2e_scram"] {
        let url = db.url_as(user, "not_the_password");
        let mut walhook = start(&url, "e2e_badpw", "pub");
        let status = walhook.wait_exit(WAIT).await;
        let stderr = walhook.stderr();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("role \"{user}\"")), "{stderr}");
        let host = format!("127.0.0.1:{}", cluster().port());
        assert!(stderr.contains(&host), "{stderr}");
        assert!(
            stderr.contains("password authentication failed"),
            "{stderr}"
        );
        assert!(!stderr.contains("not_the_password"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(walhook.line_count(), 0);
    }
}

/// SIGTERM while a transaction is being printed: walhook finishes it,
/// acknowledges it and exits 0; a restart does not print it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_transaction_acknowledges_it_and_exits_0() {
    const ROWS: usize = 20_000;
    let (url, db) = database(
        "e2e_term",
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    let mut walhook = streaming(&url, &db, "e2e_term").await;
    db.psql(&format!(
        "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    walhook
        .wait_lines(WAIT, "the transaction's first lines", |l| !l.is_empty())
        .await;
    walhook.signal(libc::SIGTERM);
    let status = walhook.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", walhook.stderr());
    let lines = walhook.lines();
    assert_eq!(lines.len(), ROWS, "the whole transaction, once");
    let commit = lsn_of(&serde_json::from_str(&lines[0]).unwrap());

    // Its acknowledgement reached PostgreSQL before the exit.
    let confirmed = db.confirmed_flush("e2e_term").await.unwrap();
    assert!(
        confirmed > commit,
        "confirmed {confirmed} <= commit {commit}"
    );

    let second = streaming(&url, &db, "e2e_term").await;
    db.psql("INSERT INTO items VALUES (0, 'after the restart')")
        .await;
    let records = second.wait_records(1).await;
    assert_eq!(
        ids_of(&records, "items"),
        [0],
        "a cleanly stopped walhook printed something again"
    );
}

/// A consumer that closes stdout: walhook exits 1 with a clear message, no
/// panic, and acknowledges nothing it could not print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_stdout_pipe_exits_1_without_acknowledging() {
    let (url, db) = database(
        "e2e_pipe",
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    let mut walhook = streaming(&url, &db, "e2e_pipe").await;
    walhook.close_stdout().await;
    db.psql("INSERT INTO items VALUES (1, 'nobody reads this')")
        .await;
    let commit = db.current_wal_lsn().await;
    let status = walhook.wait_exit(WAIT).await;
    let stderr = walhook.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to stdout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let confirmed = db.confirmed_flush("e2e_pipe").await.unwrap();
    assert!(
        confirmed < commit,
        "acknowledged {confirmed} past the unprinted row at {commit}"
    );
}
