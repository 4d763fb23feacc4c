//! Filter throughput: evaluates `new.amount > 100 && new.status == "open"`
//! on one million synthetic insert events of a ten-column table, three ways,
//! and prints events per second:
//!
//! 1. walhook's `EventScope` (columns converted lazily, per event, only
//!    when the expression reads them),
//! 2. a `HashMapContext` filled per event with the two referenced columns
//!    (the alternative the strategy stage rejected),
//! 3. the whole router step: filter plus mapping the record to JSON.
//!
//! `cargo run --release --example strategy_filter`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use evalexpr::{ContextWithMutableVariables, HashMapContext, Value};
use walhook::config::{Config, ExprRole, FilterOp};
use walhook::decode::{Cell, Column, Op, RecordEvent, Relation, ReplicaIdentity, Tuple, TypeKind};
use walhook::lsn::Lsn;
use walhook::strategy::CompiledStrategy;
use walhook::strategy::Expr;

const FILTER: &str = r#"new.amount > 100 && new.status == "open""#;

fn main() {
    const N: usize = 1_000_000;
    let kinds = [
        ("id", TypeKind::Int),
        ("amount", TypeKind::Numeric),
        ("status", TypeKind::Text),
        ("created", TypeKind::Timestamptz),
        ("payload", TypeKind::Json),
        ("c5", TypeKind::Text),
        ("c6", TypeKind::Int),
        ("c7", TypeKind::Bool),
        ("c8", TypeKind::Float),
        ("c9", TypeKind::Text),
    ];
    let relation = Arc::new(Relation {
        oid: 16384,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: kinds
            .iter()
            .enumerate()
            .map(|(i, (name, kind))| Column {
                name: (*name).into(),
                type_oid: 0,
                type_modifier: -1,
                key: i == 0,
                kind: kind.clone(),
            })
            .collect(),
    });
    let events: Vec<RecordEvent> = (0..N)
        .map(|i| {
            let amount = (i % 300).to_string() + ".50";
            let status = if i % 3 == 0 { "open" } else { "done" };
            let values = [
                i.to_string(),
                amount,
                status.to_string(),
                "2026-11-22 07:04:00.123456+00".into(),
                r#"{"a":1}"#.into(),
                "text".into(),
                "42".into(),
                "t".into(),
                "1.5".into(),
                "more text".into(),
            ];
            RecordEvent {
                relation: relation.clone(),
                op: Op::Insert,
                commit_lsn: Lsn(i as u64),
                index: 0,
                xid: 1,
                commit_time: 0,
                new: Some(Tuple(
                    values
                        .into_iter()
                        .map(|v| Cell::Text(Bytes::from(v)))
                        .collect(),
                )),
                old: None,
            }
        })
        .collect();

    let expr = Expr::compile(FILTER, ExprRole::Filter(FilterOp::Insert)).expect("compiles");
    let start = Instant::now();
    let matched = events
        .iter()
        .filter(|e| expr.matches(e) == Ok(true))
        .count();
    report(
        "EventScope (lazy, per referenced column)",
        N,
        matched,
        start,
    );

    let tree = evalexpr::build_operator_tree(FILTER).expect("compiles");
    let start = Instant::now();
    let mut context = HashMapContext::new();
    let mut matched = 0;
    for e in &events {
        let cells = e.new.as_ref().expect("insert");
        for (name, index) in [("new.amount", 1), ("new.status", 2)] {
            let text = match cells.get(index) {
                Some(Cell::Text(t)) => std::str::from_utf8(t).unwrap_or(""),
                _ => "",
            };
            let value = if index == 1 {
                Value::Float(text.parse().unwrap_or(0.0))
            } else {
                Value::String(text.to_string())
            };
            context.set_value(name.into(), value).expect("same type");
        }
        if tree.eval_boolean_with_context(&context) == Ok(true) {
            matched += 1;
        }
    }
    report("HashMapContext filled per event", N, matched, start);

    let config = Config::parse(
        &format!(
            r#"
[source]
url = "postgres://u@127.0.0.1/db"
[endpoints.a]
url = "http://127.0.0.1:9000/"
[[strategies]]
name = "s"
table = "orders"
endpoint = "a"
on_insert = '{FILTER}'
"#
        ),
        &|_| None,
    )
    .expect("config");
    let strategy = CompiledStrategy::compile(&config, 0).expect("strategy");
    let start = Instant::now();
    let mut matched = 0;
    for e in &events {
        if strategy.accepts(e) {
            black_box(strategy.queued_record(e));
            matched += 1;
        }
    }
    report(
        "accepts + queued_record (whole row JSON)",
        N,
        matched,
        start,
    );
}

fn report(what: &str, n: usize, matched: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what:45} {:>12.0} events/s ({matched} of {n} matched)",
        n as f64 / secs
    );
}
