//! Filters, mapping, decoration and routing over plain `RecordEvent`s.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::sync::mpsc;

use super::*;
use crate::batch::{BatchMeta, Decorate, WorkItem};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, ExprRole, FilterOp};
use crate::decode::{
    Cell, Column, Op, RecordEvent, Relation, ReplicaIdentity, SourceEvent, Tuple, TypeKind,
};
use crate::lsn::Lsn;

const TOAST: &str = "\u{0}toast";

fn config(strategies: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "postgres://walhook@127.0.0.1:5432/shop"

[endpoints.a]
url = "http://127.0.0.1:9000/a"
headers = {{ "X-Env" = "prod", "X-Count" = {{ expr = "batch.size" }}, "X-Keep" = "yes" }}
query = {{ tenant = "acme" }}

[endpoints.b]
url = "http://127.0.0.1:9000/b"

{strategies}
"#
    );
    Config::parse(&text, &|_| None).unwrap_or_else(|e| panic!("config: {e:?}"))
}

fn compile(config: &Config, i: usize) -> CompiledStrategy {
    CompiledStrategy::compile(config, i).unwrap_or_else(|e| panic!("{e}"))
}

fn orders(identity: ReplicaIdentity) -> Arc<Relation> {
    let col = |name: &str, kind: TypeKind, key: bool| Column {
        name: name.into(),
        type_oid: 0,
        type_modifier: -1,
        key,
        kind,
    };
    Arc::new(Relation {
        oid: 16384,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: identity,
        columns: vec![
            col("id", TypeKind::Int, true),
            col("amount", TypeKind::Numeric, false),
            col("status", TypeKind::Text, false),
            col("note", TypeKind::Text, false),
        ],
    })
}

fn tuple(cells: &[Option<&str>]) -> Tuple {
    Tuple(
        cells
            .iter()
            .map(|c| match c {
                None => Cell::Null,
                Some(t) if *t == TOAST => Cell::Unchanged,
                Some(t) => Cell::Text(Bytes::copy_from_slice(t.as_bytes())),
            })
            .collect(),
    )
}

fn event(
    rel: &Arc<Relation>,
    op: Op,
    new: Option<&[Option<&str>]>,
    old: Option<&[Option<&str>]>,
) -> RecordEvent {
    RecordEvent {
        relation: rel.clone(),
        op,
        commit_lsn: Lsn(0x16B3748),
        index: 0,
        xid: 750,
        commit_time: 1_795_849_440_123_456,
        new: new.map(tuple),
        old: old.map(tuple),
    }
}

fn insert(amount: Option<&str>, status: Option<&str>) -> RecordEvent {
    event(
        &orders(ReplicaIdentity::Default),
        Op::Insert,
        Some(&[Some("1"), amount, status, Some("n")]),
        None,
    )
}

fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

/// The value of a counter line such as `walhook_filter_errors_total{strategy="s"}`.
fn counter(recorder: &PrometheusRecorder, line_start: &str) -> u64 {
    let text = recorder.handle().render();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const BIG: &str = r#"
[[strategies]]
name = "big"
table = "public.orders"
endpoint = "a"
on_insert = "new.amount > 100"
"#;

#[test]
fn insert_filter_passes_exactly_the_matching_rows() {
    let s = compile(&config(BIG), 0);
    let passed: Vec<&str> = ["50", "150", "100", "100.01", "99.99", "1e3"]
        .into_iter()
        .filter(|a| s.accepts(&insert(Some(a), Some("open"))))
        .collect();
    assert_eq!(passed, ["150", "100.01", "1e3"]);
}

#[test]
fn ops_without_a_filter_are_not_sent() {
    let s = compile(&config(BIG), 0);
    let rel = orders(ReplicaIdentity::Default);
    let delete = event(&rel, Op::Delete, None, Some(&[Some("1"), None, None, None]));
    let update = event(
        &rel,
        Op::Update,
        Some(&[Some("1"), Some("500"), Some("x"), None]),
        None,
    );
    assert!(!s.accepts(&delete));
    assert!(!s.accepts(&update));
}

#[test]
fn changed_passes_only_status_changes() {
    let cfg = config(
        r#"
[[strategies]]
name = "status"
table = "public.orders"
endpoint = "a"
on_update = 'changed("status")'
"#,
    );
    let s = compile(&cfg, 0);
    let rel = orders(ReplicaIdentity::Full);
    let upd = |old: &str, new: &str| {
        event(
            &rel,
            Op::Update,
            Some(&[Some("1"), Some("5"), Some(new), Some("n")]),
            Some(&[Some("1"), Some("4"), Some(old), Some("n")]),
        )
    };
    assert!(s.accepts(&upd("open", "shipped")));
    assert!(
        !s.accepts(&upd("open", "open")),
        "amount changed, status did not"
    );
    assert!(
        !s.accepts(&upd("open", TOAST)),
        "an unchanged TOASTed value is not changed"
    );
    let from_null = event(
        &rel,
        Op::Update,
        Some(&[Some("1"), Some("5"), Some("open"), None]),
        Some(&[Some("1"), Some("5"), None, None]),
    );
    assert!(s.accepts(&from_null), "NULL → 'open' is a change");
}

#[test]
fn changed_without_the_old_row_is_an_error_not_a_guess() {
    let cfg = config(
        r#"
[[strategies]]
name = "status"
table = "public.orders"
endpoint = "a"
on_update = 'changed("status") || changed("id")'
"#,
    );
    let rec = recorder();
    let s = metrics::with_local_recorder(&rec, || compile(&cfg, 0));
    let rel = orders(ReplicaIdentity::Default);
    let upd = event(
        &rel,
        Op::Update,
        Some(&[Some("1"), Some("5"), Some("open"), None]),
        None,
    );
    assert!(!s.accepts(&upd));
    assert_eq!(
        counter(&rec, "walhook_filter_errors_total{strategy=\"status\"}"),
        1
    );
}

#[test]
fn null_compared_with_a_number_is_not_matched_and_counted() {
    let rec = recorder();
    let s = metrics::with_local_recorder(&rec, || compile(&config(BIG), 0));
    assert!(!s.accepts(&insert(None, Some("open"))));
    assert!(s.accepts(&insert(Some("101"), Some("open"))));
    assert_eq!(
        counter(&rec, "walhook_filter_nulls_total{strategy=\"big\"}"),
        1
    );
    assert_eq!(
        counter(&rec, "walhook_filter_errors_total{strategy=\"big\"}"),
        0,
        "a NULL is SQL's unknown, not a failure"
    );
    assert_eq!(
        counter(
            &rec,
            "walhook_events_filtered_total{strategy=\"big\",op=\"insert\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &rec,
            "walhook_events_matched_total{strategy=\"big\",op=\"insert\"}"
        ),
        1
    );
}

fn filter(text: &str) -> Expr {
    Expr::compile(text, ExprRole::Filter(FilterOp::Insert)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn null_follows_sql_where() {
    let null_status = insert(Some("5"), None);
    let m = |text: &str| filter(text).matches(&null_status);
    assert!(m(r#"new.status == "open""#).is_err());
    assert!(
        m(r#"new.status != "open""#).is_err(),
        "NULL <> 'open' is unknown"
    );
    assert_eq!(m("is_null(new.status)"), Ok(true));
    assert_eq!(m("!is_null(new.status)"), Ok(false));
    assert_eq!(m(r#"is_null(new.status) || new.status == "x""#), Ok(true));
    assert_eq!(
        m(r#"new.status == "x" || true"#),
        Ok(true),
        "unknown OR true"
    );
    assert_eq!(
        m(r#"new.status == "x" && false"#),
        Ok(false),
        "unknown AND false"
    );
    assert!(
        m(r#"new.status == "x" || false"#).is_err(),
        "unknown OR false"
    );
    assert!(m(r#"!(new.status == "x")"#).is_err(), "NOT unknown");
    let err = m("new.status > 3").unwrap_err();
    assert!(!err.contains("open"), "no values in errors: {err}");
}

#[test]
fn values_have_their_types() {
    let e = insert(Some("100.00"), Some("open"));
    let m = |text: &str| filter(text).matches(&e);
    assert_eq!(
        m("new.amount == 100"),
        Ok(true),
        "numeric 100.00 equals 100"
    );
    assert_eq!(m("new.id == 1 && row.id == 1"), Ok(true));
    assert_eq!(
        m(r#"op == "insert" && table == "orders" && schema == "public""#),
        Ok(true)
    );
    assert_eq!(m(r#"str::to_uppercase(new.status) == "OPEN""#), Ok(true));
    assert_eq!(m("len(new.status) == 4"), Ok(true));
    assert!(m("new.amount").is_err(), "a number is not a filter result");
}

#[test]
fn text_and_json_functions() {
    let e = insert(
        Some("5"),
        Some(r#"{"customer":{"tier":"gold","score":7.5},"tags":["a"]}"#),
    );
    let m = |text: &str| filter(text).matches(&e);
    assert_eq!(m(r#"starts_with(new.status, "{\"cust")"#), Ok(true));
    assert_eq!(m(r#"ends_with(new.status, "]}")"#), Ok(true));
    assert_eq!(m(r#"contains(new.status, "gold")"#), Ok(true));
    assert_eq!(m(r#"contains(new.status, "silver")"#), Ok(false));
    assert_eq!(
        m(r#"contains((1, 2), 2)"#),
        Ok(true),
        "evalexpr's contains on tuples"
    );
    assert_eq!(m(r#"matches(new.status, "tier\":\"g[a-z]+")"#), Ok(true));
    assert_eq!(
        m(r#"json(new.status, "customer.tier") == "gold""#),
        Ok(true)
    );
    assert_eq!(m(r#"json(new.status, "customer.score") > 7"#), Ok(true));
    assert_eq!(m(r#"json(new.status, "tags.0") == "a""#), Ok(true));
    assert_eq!(m(r#"is_null(json(new.status, "tags.1"))"#), Ok(true));
    assert_eq!(
        m(r#"is_null(json(new.status, "customer.tier.x"))"#),
        Ok(true)
    );
    assert_eq!(
        m(r#"json(new.status, "customer") == "{\"score\":7.5,\"tier\":\"gold\"}""#),
        Ok(true)
    );
    assert!(m(r#"contains(new.amount, "5")"#).is_err(), "not text");

    let null = insert(Some("5"), None);
    let m = |text: &str| filter(text).matches(&null);
    for text in [
        r#"starts_with(new.status, "a")"#,
        r#"!contains(new.status, "a")"#,
        r#"matches(new.status, "a")"#,
        r#"json(new.status, "a") == 1"#,
    ] {
        assert!(m(text).is_err(), "{text} is unknown on NULL");
    }
    assert_eq!(m(r#"is_null(json(new.status, "a"))"#), Ok(true));
    assert_eq!(m(r#"is_null(starts_with(new.status, "a"))"#), Ok(true));

    let bad = |text: &str| Expr::compile(text, ExprRole::Filter(FilterOp::Insert)).unwrap_err();
    assert!(bad(r#"matches(new.status, "(")"#).contains("does not compile"));
    assert!(bad(r#"matches(new.status, new.note)"#).contains("as text in double quotes"));
    assert!(bad(r#"json(new.status, "")"#).contains("empty"));
    assert!(bad(r#"json(new.status, "a..b")"#).contains("empty key"));
    assert!(bad(r#"starts_with(new.status)"#).contains("two arguments"));
    assert!(bad(r#"str::regex_matches(new.status, "a")"#).contains("matches(x"));
}

#[test]
fn compile_errors_name_the_reason() {
    let role = |op| ExprRole::Filter(op);
    let err = |text: &str, r: ExprRole| Expr::compile(text, r).unwrap_err();
    assert!(err("old.amount > 1", role(FilterOp::Insert)).contains("inserts have no old row"));
    assert!(err("new.amount > 1", role(FilterOp::Delete)).contains("deletes have no new row"));
    assert!(err("row.id == 1", role(FilterOp::Truncate)).contains("truncates have no row"));
    assert!(err("amount > 1", role(FilterOp::Insert)).contains("unknown name `amount`"));
    assert!(err("new.x = 1", role(FilterOp::Insert)).contains("assignments"));
    assert!(err("new.x > (", role(FilterOp::Insert)).contains("does not compile"));
    assert!(err("new.x >", role(FilterOp::Insert)).contains("does not compile"));
    assert!(err("!", role(FilterOp::Insert)).contains("does not compile"));
    assert!(err(r#"changed("a")"#, role(FilterOp::Insert)).contains("on_update"));
    assert!(err("changed(1)", role(FilterOp::Update)).contains("double quotes"));
    assert!(err("frobnicate(1)", role(FilterOp::Update)).contains("unknown function"));
    assert!(err("row.id", ExprRole::Batch).contains("per batch"));
    assert!(err("now()", role(FilterOp::Insert)).contains("now()"));
    assert!(Expr::compile("batch.size * 2", ExprRole::Batch).is_ok());
}

#[test]
fn check_expression_is_the_config_hook() {
    let cfg = config(
        r#"
[[strategies]]
name = "bad"
table = "public.orders"
endpoint = "a"
on_insert = "new.amount >"
on_update = 'changed("status")'
record = { id = { expr = "row.id" }, x = { expr = "bogus" } }
"#,
    );
    let errors = cfg.check_expressions(check_expression);
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("strategies[0].on_insert: does not compile"));
    assert!(lines[1].starts_with("strategies[0].record.x: unknown name `bogus`"));
}

#[test]
fn referenced_columns_lists_what_is_read() {
    let cols =
        referenced_columns(r#"new.a > 1 && old.b == row.c || changed("d") || new.a < 9"#).unwrap();
    let text: Vec<String> = cols.iter().map(ToString::to_string).collect();
    assert_eq!(text, ["new.a", "old.b", "row.c", "old.d", "new.d"]);
}

#[test]
fn whole_row_record_is_the_decoder_payload() {
    let s = compile(&config(BIG), 0);
    let e = insert(Some("150.50"), Some("open"));
    let mut expected = Vec::new();
    e.write_json(&mut expected);
    let queued = s.queued_record(&e);
    assert_eq!(queued.json, expected);
    assert_eq!(
        (queued.commit_lsn.to_string(), queued.index),
        ("0/16B3748".to_string(), 0)
    );
}

#[test]
fn mapped_record_keeps_the_envelope() {
    let cfg = config(
        r#"
[[strategies]]
name = "mapped"
table = "public.orders"
endpoint = "a"
on_insert = "true"
on_delete = "true"
record = { id = { expr = "row.id" }, total = { expr = "row.amount * 2" }, exact = { expr = "row.amount" }, source = "erp", n = 3, missing = { expr = "row.note" } }
"#,
    );
    let s = compile(&cfg, 0);
    let e = insert(Some("12345678901234567890.25"), Some("open"));
    let v: serde_json::Value = serde_json::from_slice(&s.queued_record(&e).json).unwrap();
    assert_eq!(v["id"], "0/16B3748:0");
    assert_eq!(v["op"], "insert");
    assert_eq!(v["table"], "orders");
    assert_eq!(v["xid"], 750);
    assert_eq!(v["commit_time"], "2026-11-28T07:04:00.123456Z");
    assert_eq!(v["old"], serde_json::Value::Null);
    assert_eq!(v["new"]["id"], 1);
    assert_eq!(v["new"]["source"], "erp");
    assert_eq!(v["new"]["n"], 3);
    assert_eq!(v["new"]["missing"], "n");
    assert!(v["new"]["total"].is_f64());
    // The single-column field copies the exact numeric text.
    let raw = String::from_utf8(s.queued_record(&e).json).unwrap();
    assert!(raw.contains(r#""exact":12345678901234567890.25"#), "{raw}");

    let rel = orders(ReplicaIdentity::Default);
    let del = event(&rel, Op::Delete, None, Some(&[Some("7"), None, None, None]));
    let v: serde_json::Value = serde_json::from_slice(&s.queued_record(&del).json).unwrap();
    assert_eq!(v["new"], serde_json::Value::Null);
    assert_eq!(v["old"]["id"], 7);
    assert_eq!(v["old"]["source"], "erp");
    assert!(
        v["old"].get("exact").is_none(),
        "a non-key column of a key-only old row is left out: {v}"
    );
}

#[test]
fn a_flat_record_is_exactly_the_mapping_with_the_envelope_fields_it_names() {
    let cfg = config(
        r#"
[[strategies]]
name = "flat"
table = "public.orders"
endpoint = "a"
on_insert = "true"
on_update = "true"
on_delete = "true"
record_shape = "flat"
record = { key = { expr = "row.id" }, kind = { expr = "op" }, record_id = { expr = "id" }, at = { expr = "lsn" }, tx = { expr = "xid" }, time = { expr = "commit_time" }, total = { expr = "row.amount * 2" }, where = { expr = "schema + \".\" + table" }, label = { expr = "op + \":\" + id" }, source = "erp" }
"#,
    );
    let s = compile(&cfg, 0);
    assert_eq!(s.record_shape(), crate::config::RecordShape::Flat);
    let ins = insert(Some("150.5"), Some("open"));
    let raw = String::from_utf8(s.queued_record(&ins).json).unwrap();
    // BTreeMap order; each meta field as the envelope writes it.
    assert_eq!(
        raw,
        r#"{"at":"0/16B3748","key":1,"kind":"insert","label":"insert:0/16B3748:0","record_id":"0/16B3748:0","source":"erp","time":"2026-11-28T07:04:00.123456Z","total":301,"tx":750,"where":"public.orders"}"#
    );
    let rel = orders(ReplicaIdentity::Default);
    let upd = event(
        &rel,
        Op::Update,
        Some(&[Some("2"), Some("1"), Some("paid"), Some(TOAST)]),
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&s.queued_record(&upd).json).unwrap();
    assert_eq!(v["kind"], "update");
    assert_eq!(v["key"], 2);
    assert!(
        v.get("unchanged_toast").is_none() && v.get("new").is_none(),
        "{v}"
    );
    let del = event(&rel, Op::Delete, None, Some(&[Some("7"), None, None, None]));
    let v: serde_json::Value = serde_json::from_slice(&s.queued_record(&del).json).unwrap();
    assert_eq!(v["kind"], "delete");
    assert_eq!(v["key"], 7);
    assert_eq!(
        v["total"],
        serde_json::Value::Null,
        "old.amount is not sent: {v}"
    );
}

#[test]
fn envelope_names_compile_in_row_expressions_only() {
    for name in ["id", "lsn", "xid", "commit_time"] {
        Expr::compile(name, ExprRole::Record).unwrap();
        Expr::compile(
            &format!("is_null({name})"),
            ExprRole::Filter(FilterOp::Insert),
        )
        .unwrap();
        let err = Expr::compile(name, ExprRole::Batch).unwrap_err();
        assert!(err.contains("unknown name"), "{err}");
    }
}

#[test]
fn decoration_merges_endpoint_and_strategy() {
    let cfg = config(
        r#"
[[strategies]]
name = "deco"
table = "public.orders"
endpoint = "a"
on_insert = "true"
headers = { "x-env" = "staging", "X-Strategy" = { expr = "strategy" } }
query = { page = { expr = "batch.size + 1" } }
body = { source = "erp", range = { expr = 'batch.first_lsn + ".." + batch.last_lsn' }, at = { expr = "now()" } }
"#,
    );
    let s = compile(&cfg, 0);
    let meta = BatchMeta {
        strategy: "deco",
        id: "b1",
        size: 2,
        first_lsn: Lsn(0x10),
        last_lsn: Lsn(0x20),
    };
    let d = s.decorate(&meta).unwrap();
    let mut headers = d.headers.clone();
    headers.sort();
    assert_eq!(
        headers,
        [
            ("X-Count".to_string(), "2".to_string()),
            ("X-Keep".into(), "yes".into()),
            ("X-Strategy".into(), "deco".into()),
            ("x-env".into(), "staging".into()),
        ]
    );
    let mut query = d.query.clone();
    query.sort();
    assert_eq!(
        query,
        [
            ("page".to_string(), "3".to_string()),
            ("tenant".into(), "acme".into())
        ]
    );
    let body: std::collections::BTreeMap<_, _> = d.body.into_iter().collect();
    assert_eq!(body["source"], "erp");
    assert_eq!(body["range"], "0/10..0/20");
    let at = body["at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
}

/// Two strategies on one table and one on another, with their queues.
type Setup = (
    Router,
    Vec<mpsc::Receiver<WorkItem>>,
    Arc<Checkpoint>,
    Arc<Mutex<Vec<Lsn>>>,
);

fn routing_setup() -> Setup {
    let cfg = config(
        r#"
[[strategies]]
name = "big"
table = "public.orders"
endpoint = "a"
on_insert = "new.amount > 100"

[[strategies]]
name = "open"
table = "public.orders"
endpoint = "b"
on_insert = 'new.status == "open"'

[[strategies]]
name = "other"
table = "public.customers"
endpoint = "b"
on_insert = "true"
"#,
    );
    let acks = Arc::new(Mutex::new(Vec::new()));
    let sink = acks.clone();
    let checkpoint = Arc::new(Checkpoint::new(3, Lsn(1), move |lsn| {
        sink.lock().unwrap().push(lsn)
    }));
    let mut routes = Vec::new();
    let mut rxs = Vec::new();
    for i in 0..3 {
        let (tx, rx) = mpsc::channel(64);
        routes.push(Route {
            strategy: Arc::new(compile(&cfg, i)),
            tx,
        });
        rxs.push(rx);
    }
    (
        Router::new(routes, checkpoint.clone()),
        rxs,
        checkpoint,
        acks,
    )
}

fn drain(rx: &mut mpsc::Receiver<WorkItem>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(match item {
            WorkItem::Record(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
                format!(
                    "{}:{}",
                    v["new"]["amount"],
                    v["new"]["status"].as_str().unwrap()
                )
            }
            WorkItem::TxEnd { end_lsn } => format!("end {end_lsn}"),
        });
    }
    out
}

async fn transaction(router: &mut Router, commit: u64, rows: &[(&str, &str)]) {
    let rel = orders(ReplicaIdentity::Default);
    router
        .route(SourceEvent::Begin {
            xid: 1,
            commit_lsn: Lsn(commit),
            commit_time: 0,
        })
        .await
        .unwrap();
    for (i, (amount, status)) in rows.iter().enumerate() {
        let mut e = event(
            &rel,
            Op::Insert,
            Some(&[Some("1"), Some(amount), Some(status), None]),
            None,
        );
        e.commit_lsn = Lsn(commit);
        e.index = i as u32;
        router.route(SourceEvent::Record(e)).await.unwrap();
    }
    router
        .route(SourceEvent::Commit {
            commit_lsn: Lsn(commit),
            end_lsn: Lsn(commit + 8),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn two_strategies_on_one_table_get_their_own_subsets() {
    let (mut router, mut rxs, _, _) = routing_setup();
    transaction(
        &mut router,
        0x100,
        &[
            ("150", "open"),
            ("50", "open"),
            ("500", "done"),
            ("5", "done"),
        ],
    )
    .await;
    transaction(&mut router, 0x200, &[("1", "done")]).await;
    transaction(&mut router, 0x300, &[("200", "done")]).await;
    assert_eq!(
        drain(&mut rxs[0]),
        ["150:open", "500:done", "end 0/108", "200:done", "end 0/308"]
    );
    assert_eq!(drain(&mut rxs[1]), ["150:open", "50:open", "end 0/108"]);
    assert!(drain(&mut rxs[2]).is_empty(), "another table's strategy");
}

#[tokio::test]
async fn checkpoint_advances_past_filtered_only_transactions() {
    let (mut router, mut rxs, checkpoint, acks) = routing_setup();
    transaction(&mut router, 0x100, &[("1", "done")]).await;
    assert_eq!(
        checkpoint.acked(),
        Lsn(0x108),
        "nothing matched: done at once"
    );
    transaction(&mut router, 0x200, &[("150", "done")]).await;
    transaction(&mut router, 0x300, &[("2", "done")]).await;
    assert_eq!(
        checkpoint.acked(),
        Lsn(0x108),
        "strategy big has not delivered 0/208"
    );
    assert_eq!(checkpoint.position(0).unwrap().queued_through, Lsn(0x208));
    checkpoint.delivered(0, Lsn(0x208));
    assert_eq!(checkpoint.acked(), Lsn(0x308));
    assert_eq!(*acks.lock().unwrap(), [Lsn(0x108), Lsn(0x308)]);
    assert_eq!(drain(&mut rxs[0]), ["150:done", "end 0/208"]);
}

#[tokio::test]
async fn a_full_queue_blocks_the_router() {
    let cfg = config(BIG);
    let (tx, mut rx) = mpsc::channel(1);
    let checkpoint = Arc::new(Checkpoint::new(1, Lsn(1), |_| {}));
    let mut router = Router::new(
        vec![Route {
            strategy: Arc::new(compile(&cfg, 0)),
            tx,
        }],
        checkpoint,
    );
    let (events_tx, events_rx) = mpsc::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(router_run(
        router_take(&mut router),
        events_rx,
        shutdown.clone(),
    ));
    for i in 0..3 {
        let mut e = insert(Some("500"), Some("open"));
        e.index = i;
        events_tx.send(SourceEvent::Record(e)).await.unwrap();
    }
    // The queue holds one record; the router waits to queue the second.
    let first = rx.recv().await.unwrap();
    assert!(matches!(first, WorkItem::Record(ref r) if r.index == 0));
    let second = rx.recv().await.unwrap();
    assert!(matches!(second, WorkItem::Record(ref r) if r.index == 1));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

fn router_take(router: &mut Router) -> Router {
    std::mem::replace(
        router,
        Router::new(Vec::new(), Arc::new(Checkpoint::new(0, Lsn(0), |_| {}))),
    )
}

async fn router_run(
    router: Router,
    mut rx: mpsc::Receiver<SourceEvent>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), RouteError> {
    router.run(&mut rx, shutdown).await
}

#[test]
fn operations_without_a_filter_are_neither_matched_nor_filtered() {
    let rec = recorder();
    let delete_only = r#"
[[strategies]]
name = "gone"
table = "public.orders"
endpoint = "a"
on_delete = "true"
"#;
    let s = metrics::with_local_recorder(&rec, || compile(&config(delete_only), 0));
    assert!(!s.accepts(&insert(Some("5"), Some("open"))));
    for metric in [
        "walhook_events_filtered_total{strategy=\"gone\",op=\"insert\"}",
        "walhook_events_matched_total{strategy=\"gone\",op=\"insert\"}",
    ] {
        assert_eq!(counter(&rec, metric), 0, "{metric}");
    }
}

#[tokio::test]
async fn new_routes_apply_only_between_transactions() {
    let (router, mut rxs, checkpoint, _) = routing_setup();
    let (reroute_tx, reroute_rx) = mpsc::channel(1);
    let router = router.with_reroutes(reroute_rx);
    let (events, mut events_rx) = mpsc::channel(16);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { router.run(&mut events_rx, stop).await }
    });
    let rel = orders(ReplicaIdentity::Default);
    let record = |commit: u64| {
        let mut e = event(
            &rel,
            Op::Insert,
            Some(&[Some("1"), Some("150"), Some("open"), None]),
            None,
        );
        e.commit_lsn = Lsn(commit);
        SourceEvent::Record(e)
    };
    let begin = |commit: u64| SourceEvent::Begin {
        xid: 1,
        commit_lsn: Lsn(commit),
        commit_time: 0,
    };
    let commit = |commit: u64| SourceEvent::Commit {
        commit_lsn: Lsn(commit),
        end_lsn: Lsn(commit + 8),
    };
    events.send(begin(0x100)).await.unwrap();
    events.send(record(0x100)).await.unwrap();
    // The transaction is open once strategy 0 has its record.
    assert!(matches!(rxs[0].recv().await, Some(WorkItem::Record(_))));

    // New routes: strategy 0 alone, on a new queue and checkpoint index.
    let (new_tx, mut new_rx) = mpsc::channel(64);
    let slot = checkpoint.add();
    let (applied, boundary) = tokio::sync::oneshot::channel();
    let cfg = config(
        r#"
[[strategies]]
name = "everything"
table = "public.orders"
endpoint = "a"
on_insert = "true"
"#,
    );
    let route = Route {
        strategy: Arc::new(compile(&cfg, 0)),
        tx: new_tx,
    };
    reroute_tx
        .send(Reroute {
            routes: vec![(slot, route)],
            applied,
        })
        .await
        .unwrap();
    for event in [commit(0x100), begin(0x200), record(0x200), commit(0x200)] {
        events.send(event).await.unwrap();
    }
    assert_eq!(
        boundary.await.unwrap(),
        Lsn(0x108),
        "after the open transaction"
    );
    drop(events);
    task.await.unwrap().unwrap();
    assert_eq!(
        drain(&mut rxs[0]),
        ["end 0/108"],
        "the old route finished its transaction, then got nothing"
    );
    assert_eq!(
        drain(&mut rxs[1]),
        ["150:open", "end 0/108"],
        "no longer routed after the boundary"
    );
    assert_eq!(drain(&mut new_rx), ["150:open", "end 0/208"]);
    let position = checkpoint.position(slot).unwrap();
    assert_eq!(
        position.queued_through,
        Lsn(0x208),
        "queued under its own index"
    );
}

#[tokio::test]
async fn new_routes_nobody_waits_for_are_not_applied() {
    let (router, mut rxs, _, _) = routing_setup();
    let (reroute_tx, reroute_rx) = mpsc::channel(1);
    let router = router.with_reroutes(reroute_rx);
    let (events, mut events_rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        router
            .run(&mut events_rx, tokio_util::sync::CancellationToken::new())
            .await
    });
    let (applied, boundary) = tokio::sync::oneshot::channel();
    drop(boundary);
    reroute_tx
        .send(Reroute {
            routes: Vec::new(),
            applied,
        })
        .await
        .unwrap();
    let rel = orders(ReplicaIdentity::Default);
    let mut e = event(
        &rel,
        Op::Insert,
        Some(&[Some("1"), Some("150"), Some("open"), None]),
        None,
    );
    e.commit_lsn = Lsn(0x100);
    for event in [
        SourceEvent::Begin {
            xid: 1,
            commit_lsn: Lsn(0x100),
            commit_time: 0,
        },
        SourceEvent::Record(e),
        SourceEvent::Commit {
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x108),
        },
    ] {
        events.send(event).await.unwrap();
    }
    drop(events);
    task.await.unwrap().unwrap();
    assert_eq!(
        drain(&mut rxs[0]),
        ["150:open", "end 0/108"],
        "the old routes stay"
    );
}
