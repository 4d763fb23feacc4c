//! Decodes the real pgoutput messages PostgreSQL 15 sent for
//! tests/fixtures/capture_v1.sql and capture_v2.sql, and checks the records
//! a user would receive.

use serde_json::{json, Value};

use super::pgoutput::tests::fixture;
use super::{Decoder, SourceEvent};

fn decode_all(hex: &str) -> Vec<SourceEvent> {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for (i, m) in fixture(hex).into_iter().enumerate() {
        decoder
            .decode(m, &mut out)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    out
}

fn record_lines(events: &[SourceEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Record(r) => {
                let mut buf = Vec::new();
                r.write_json(&mut buf);
                Some(String::from_utf8(buf).expect("utf-8"))
            }
            _ => None,
        })
        .collect()
}

/// Record JSON lines plus the parsed form of each.
fn records(events: &[SourceEvent]) -> Vec<(String, Value)> {
    record_lines(events)
        .into_iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l} is not JSON: {e}"));
            (l, v)
        })
        .collect()
}

/// Every type of issue 2 item 6, as PostgreSQL sent it and as walhook writes it.
const ALL_TYPES_ROW_1: &str = concat!(
    r#""new":{"id":1,"b":true,"i2":-32768,"i4":2147483647,"o":4294967295,"f4":1.5,"#,
    r#""f8":-1.2345678901234568e-300,"n":123456789012345678901234567890.123456789,"#,
    r#""t":"quote \" backslash \\ newline \n tab \t bell \u0007 é 😀","vc":"varchar","bp":"ab   ","#,
    r#""nm":"name","j":{"a": [1, 2.50, null], "b": "x\"y"},"jb":{"a": [1, 2.50], "b": 2},"#,
    r#""u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","d":"2026-11-22","tm":"07:04:00.5","#,
    r#""ttz":"07:04:00+02:30","ts":"2026-11-22T07:04:00.123456","tstz":"2026-11-22T07:04:00.123456Z","#,
    r#""iv":"1 year 2 mons 3 days 04:05:06.7","by":"AP8AEA==","ip":"192.168.0.1/24","cn":"10.0.0.0/8","#,
    r#""mac":"08:00:2b:01:02:03","mac8":"08:00:2b:01:02:03:04:05","ia":[1,null,3],"#,
    r#""ta":["plain","with \"quote\"","back\\slash","NULL",null,"","a,b","{x}"],"#,
    r#""na":[1.5,"NaN","-Infinity",123456789012345678901234567890],"nested":[[1,2],[3,4]],"#,
    r#""ba":["AA==","3q2+7w=="],"mo":"happy","moa":["sad","happy"],"dp":42,"dt":["red","green"],"#,
    r#""tsa":["2026-11-22T07:04:00.123456Z","infinity"],"ja":[{"k": [1]},null],"m":"$12.34"}"#,
);

#[test]
fn every_type_converts_to_the_documented_json() {
    let recs = records(&decode_all(include_str!(
        "../../tests/fixtures/pgoutput_v1.hex"
    )));
    let (line, v) = &recs[0];
    assert_eq!(
        (v["op"].as_str(), v["table"].as_str()),
        (Some("insert"), Some("all_types"))
    );
    assert!(line.contains(ALL_TYPES_ROW_1), "got {line}");
    assert!(line.ends_with(r#","old":null}"#));

    // Special values: NaN/±Infinity, infinite and BC timestamps, 5-digit years, lower bounds.
    let specials = |v: &Value| {
        json!([
            v["new"]["f4"],
            v["new"]["f8"],
            v["new"]["n"],
            v["new"]["d"],
            v["new"]["ts"],
            v["new"]["tstz"],
            v["new"]["nested"]
        ])
    };
    assert_eq!(
        specials(&recs[1].1),
        json!([
            "NaN",
            "-Infinity",
            "NaN",
            "-infinity",
            "infinity",
            "0044-03-15 12:00:00+00 BC",
            [7, 8]
        ])
    );
    assert_eq!(
        specials(&recs[2].1),
        json!([
            "Infinity",
            1e300,
            "-Infinity",
            "10000-01-01",
            "10000-01-01T00:00:00",
            "12345-06-07T08:09:10.5Z",
            []
        ])
    );
    assert!(recs[2].0.contains(r#""f8":1e+300"#));
    assert_eq!(recs[1].1["new"]["b"], Value::Null);
}

#[test]
fn updates_and_deletes_carry_the_replica_identity_images() {
    let recs = records(&decode_all(include_str!(
        "../../tests/fixtures/pgoutput_v1.hex"
    )));
    let (_, key_kept) = &recs[3];
    assert_eq!(
        (key_kept["op"].as_str(), &key_kept["new"]["t"]),
        (Some("update"), &json!("changed"))
    );
    assert_eq!(
        key_kept["old"],
        Value::Null,
        "DEFAULT identity sends no old row when the key is unchanged"
    );
    let (_, key_changed) = &recs[4];
    assert_eq!(key_changed["new"]["id"], 20);
    assert_eq!(
        key_changed["old"],
        json!({"id": 3}),
        "only the key under DEFAULT identity"
    );
    let (_, deleted) = &recs[5];
    assert_eq!(deleted["op"], "delete");
    assert_eq!(deleted["new"], Value::Null);
    assert_eq!(deleted["old"], json!({"id": 1}));
    // One transaction: one commit LSN, consecutive indexes.
    let lsn = key_kept["lsn"].as_str().unwrap();
    for (i, (_, r)) in recs[3..6].iter().enumerate() {
        assert_eq!(r["lsn"], lsn);
        assert_eq!(r["id"], format!("{lsn}:{i}"));
        assert_eq!(r["xid"], key_kept["xid"]);
        assert_eq!(r["commit_time"], key_kept["commit_time"]);
    }
}

#[test]
fn unchanged_toast_is_named_under_default_and_filled_under_full() {
    let recs = records(&decode_all(include_str!(
        "../../tests/fixtures/pgoutput_v1.hex"
    )));
    let big = recs[6].1["new"]["big"]
        .as_str()
        .expect("toasted value inserted");
    assert_eq!(big.len(), 3200);
    assert_eq!(recs[7].1["new"]["big"], big);

    let (line, default) = &recs[8];
    assert_eq!(
        (default["table"].as_str(), default["op"].as_str()),
        (Some("toasty"), Some("update"))
    );
    assert_eq!(default["new"], json!({"id": 1, "note": "n2"}));
    assert!(
        !line.contains(r#""big":null"#),
        "an unchanged value is never null"
    );
    assert_eq!(default["unchanged_toast"], json!(["big"]));

    let (_, full) = &recs[9];
    assert_eq!(full["table"], "toasty_full");
    assert_eq!(full["new"], json!({"id": 1, "big": big, "note": "n2"}));
    assert_eq!(full["old"], json!({"id": 1, "big": big, "note": "n1"}));
    assert!(full.get("unchanged_toast").is_none());

    let (_, deleted) = &recs[10];
    assert_eq!(
        deleted["old"],
        json!({"id": 1, "big": big, "note": "n2"}),
        "FULL identity: whole old row"
    );
}

#[test]
fn alter_table_inside_a_transaction_changes_columns_from_the_next_row_on() {
    let recs = records(&decode_all(include_str!(
        "../../tests/fixtures/pgoutput_v1.hex"
    )));
    let alt: Vec<&Value> = recs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["table"] == "alt" && v["op"] == "insert")
        .collect();
    let news: Vec<&Value> = alt.iter().map(|v| &v["new"]).collect();
    assert_eq!(
        news,
        vec![
            &json!({"id": 1, "a": "before", "b": 10}),
            &json!({"id": 2, "a": "after add", "b": 20, "c": "c2"}),
            &json!({"id": 3, "a": "after drop", "c": "c3"}),
            &json!({"id": 4, "a2": "after rename", "c": 44}),
        ]
    );
    let indexes: Vec<String> = alt
        .iter()
        .map(|v| {
            v["id"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(indexes, ["0", "1", "2", "3"]);
}

#[test]
fn truncate_and_logical_messages() {
    let events = decode_all(include_str!("../../tests/fixtures/pgoutput_v1.hex"));
    let recs = records(&events);
    let truncated: Vec<(&Value, &Value)> = recs
        .iter()
        .filter(|(_, v)| v["op"] == "truncate")
        .map(|(_, v)| (&v["table"], &v["id"]))
        .collect();
    assert_eq!(truncated.len(), 2);
    assert_eq!(truncated[0].0, "toasty");
    assert_eq!(truncated[1].0, "alt");
    assert!(
        truncated[0].1.as_str().unwrap().ends_with(":0")
            && truncated[1].1.as_str().unwrap().ends_with(":1")
    );
    let last = &recs.last().unwrap().1;
    assert_eq!((&last["new"], &last["old"]), (&Value::Null, &Value::Null));

    let messages: Vec<(bool, &str, &[u8])> = events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Message {
                transactional,
                prefix,
                content,
                ..
            } => Some((*transactional, prefix.as_str(), &content[..])),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            (true, "walhook", &b"transactional"[..]),
            (false, "walhook", &[0u8, 255][..])
        ]
    );
}

#[test]
fn every_transaction_is_framed_by_begin_and_commit() {
    for hex in [
        include_str!("../../tests/fixtures/pgoutput_v1.hex"),
        include_str!("../../tests/fixtures/pgoutput_v2_stream.hex"),
    ] {
        let mut open = None;
        let mut commits = 0;
        for e in decode_all(hex) {
            match e {
                SourceEvent::Begin { commit_lsn, .. } => {
                    assert!(open.is_none(), "nested Begin");
                    open = Some((commit_lsn, 0u32));
                }
                SourceEvent::Record(r) => {
                    let (lsn, next) = open.as_mut().expect("record outside a transaction");
                    assert_eq!(r.commit_lsn, *lsn);
                    assert_eq!(r.index, *next);
                    *next += 1;
                }
                SourceEvent::Commit {
                    commit_lsn,
                    end_lsn,
                } => {
                    let (lsn, _) = open.take().expect("Commit without Begin");
                    assert_eq!(commit_lsn, lsn);
                    assert!(end_lsn > commit_lsn);
                    commits += 1;
                }
                SourceEvent::Message { .. } => {}
            }
        }
        assert!(open.is_none());
        assert!(commits >= 3);
    }
}

#[test]
fn streamed_transactions_arrive_whole_at_their_commit() {
    let recs = records(&decode_all(include_str!(
        "../../tests/fixtures/pgoutput_v2_stream.hex"
    )));
    // Committed stream: 800 rows, a savepoint rolled back (800 rows gone), then one more row.
    let streamed: Vec<&Value> = recs
        .iter()
        .map(|(_, v)| v)
        .take_while(|v| v["new"]["id"] != 901)
        .collect();
    let ids: Vec<i64> = streamed
        .iter()
        .map(|v| v["new"]["id"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=800).chain([900]).collect();
    assert_eq!(ids, expected);
    assert!(streamed
        .iter()
        .all(|v| v["lsn"] == streamed[0]["lsn"] && v["op"] == "insert"));
    assert_eq!(
        streamed[800]["id"],
        format!("{}:800", streamed[0]["lsn"].as_str().unwrap())
    );

    let rest: Vec<&Value> = recs[801..].iter().map(|(_, v)| v).collect();
    assert_eq!(rest.len(), 2, "the aborted stream sends nothing");
    assert_eq!(
        (&rest[0]["op"], &rest[0]["new"]),
        (&json!("insert"), &json!({"id": 901, "v": "small"}))
    );
    assert_eq!(
        (&rest[1]["op"], &rest[1]["new"]),
        (&json!("update"), &json!({"id": 901, "v": "last"}))
    );
    assert!(recs
        .iter()
        .all(|(l, _)| !l.contains("rolled back") && !l.contains("aborted")));
}

/// Where walhook's JSON deliberately differs from PostgreSQL's `to_jsonb(row)`
/// for the same row: (column, walhook, to_jsonb).
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
        // timestamptz in UTC ends in Z.
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

#[test]
fn every_type_matches_to_jsonb_except_the_documented_differences() {
    let recs = records(&decode_all(include_str!(
        "../../tests/fixtures/pgoutput_v1.hex"
    )));
    let theirs: Vec<Value> = include_str!("../../tests/fixtures/all_types_to_jsonb.jsonl")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| serde_json::from_str(l).expect("to_jsonb fixture"))
        .collect();
    // Row 1 as inserted; rows 2 and 20 as last updated.
    let ours = [&recs[0].1["new"], &recs[3].1["new"], &recs[4].1["new"]];
    let differences = documented_differences();
    let mut used = vec![false; differences.len()];
    for (ours, theirs) in ours.iter().zip(&theirs) {
        let ours = ours.as_object().expect("new is an object");
        let theirs = theirs.as_object().expect("to_jsonb is an object");
        assert_eq!(ours.len(), theirs.len());
        for (column, value) in theirs {
            let mine = &ours[column];
            if mine == value {
                continue;
            }
            let documented = differences
                .iter()
                .position(|(c, m, t)| c == column && m == mine && t == value)
                .unwrap_or_else(|| {
                    panic!("{column}: walhook {mine} vs to_jsonb {value} is not documented")
                });
            used[documented] = true;
        }
    }
    assert!(
        used.iter().all(|u| *u),
        "a documented difference no longer occurs: {used:?}"
    );
}
