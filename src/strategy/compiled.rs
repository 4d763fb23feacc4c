//! One strategy compiled from its config: op filters, the record mapping and
//! the per-batch templates (the [`Decorate`] implementation).

use std::hash::{Hash, Hasher};
use std::io::Write as _;

use evalexpr::Value;
use metrics::Counter;

use super::expr::{describe, resolve, BatchValues, Expr, Image, MessageValues, Resolved, Verdict};
use super::summary::{Throttle, FAILURE_WARN_EVERY, NULL_SUMMARY_EVERY};
use super::StrategyError;
use std::sync::Arc;

use crate::batch::payload::{MessageRecord, Meta};
use crate::batch::{BatchMeta, Decorate, Decoration, Group, QueuedRecord, ReplyLog};
use crate::config::{Config, ExprRole, FilterOp, Ordering, RecordShape, TableName, Template};
use crate::decode::convert::{write_cell_json, write_json_string};
use crate::decode::{Cell, Op, RecordEvent, Tuple};
use crate::telemetry::names;

/// The four change operations a strategy can filter, in slot order.
const OPS: [(Op, FilterOp, &str); 4] = [
    (Op::Insert, FilterOp::Insert, "insert"),
    (Op::Update, FilterOp::Update, "update"),
    (Op::Delete, FilterOp::Delete, "delete"),
    (Op::Truncate, FilterOp::Truncate, "truncate"),
];

fn op_slot(op: Op) -> Option<usize> {
    OPS.iter().position(|(o, _, _)| *o == op)
}

/// A `record` field.
#[derive(Debug)]
struct Field {
    /// `"key":`, already escaped.
    key_json: Vec<u8>,
    path: String,
    value: FieldValue,
}

#[derive(Debug)]
enum FieldValue {
    /// Pre-serialised JSON.
    Literal(Vec<u8>),
    /// Exactly one column: its cell's exact JSON (numerics keep every digit,
    /// json stays embedded).
    Column(Image, String),
    /// Exactly one of the envelope's own fields (`op`, `id`, `lsn`, …),
    /// written as the envelope writes it.
    Meta(Meta),
    Expr(Expr),
}

/// A `headers`, `query` or `body` value.
#[derive(Debug)]
struct Part {
    key: String,
    path: String,
    value: PartValue,
}

#[derive(Debug)]
enum PartValue {
    Literal(serde_json::Value),
    Expr(Expr),
}

#[derive(Debug)]
struct Counters {
    matched: [Counter; 4],
    filtered: [Counter; 4],
    errors: Counter,
    /// `walhook_filter_nulls_total`: NULL outcomes (not failures).
    nulls: Counter,
}

/// The strategy's throttled log lines (see [`super::summary`]).
#[derive(Debug)]
struct Logs {
    nulls: Throttle,
    failures: Throttle,
}

/// How a record's [`Group`] is found (`ordering`, `group_by`).
#[derive(Debug)]
enum Grouping {
    /// `ordering = "commit"`: one group.
    Commit,
    /// `ordering = "key"` with `group_by`: the expression's value.
    Expr(Expr),
    /// `ordering = "key"`: these key columns (set at startup from the catalog).
    Columns(Vec<String>),
}

/// A strategy ready to filter, map and decorate. Shared (`Arc`) between the
/// router and the strategy's batch worker.
#[derive(Debug)]
pub struct CompiledStrategy {
    name: String,
    /// `None` for a `messages` strategy.
    table: Option<TableName>,
    /// The prefix of the logical messages it follows (`messages`).
    messages: Option<String>,
    on_message: Option<Expr>,
    filters: [Option<Expr>; 4],
    grouping: Grouping,
    record: Option<Vec<Field>>,
    record_shape: RecordShape,
    headers: Vec<Part>,
    query: Vec<Part>,
    body: Vec<Part>,
    counters: Counters,
    logs: Logs,
    /// Runs merged into this strategy's stream, keeping the answers to
    /// (or counting) the batches that hold their records.
    taps: std::sync::Mutex<Vec<Arc<ReplyLog>>>,
}

impl CompiledStrategy {
    /// Compiles `config.strategies[index]` (with its endpoint's headers and
    /// query). Metric handles are registered here: install the metrics
    /// recorder before compiling.
    pub fn compile(config: &Config, index: usize) -> Result<CompiledStrategy, StrategyError> {
        let strategy = config
            .strategies
            .get(index)
            .ok_or(StrategyError::NoSuchStrategy(index))?;
        let base = format!("strategies[{index}]");
        let compile = |path: String, text: &str, role: ExprRole| {
            Expr::compile(text, role).map_err(|message| StrategyError::Expression { path, message })
        };
        let sources = [
            &strategy.on_insert,
            &strategy.on_update,
            &strategy.on_delete,
            &strategy.on_truncate,
        ];
        let mut filters: [Option<Expr>; 4] = Default::default();
        for ((slot, source), (_, op, field)) in filters.iter_mut().zip(sources).zip(OPS) {
            if let Some(text) = source {
                let path = format!("{base}.on_{field}");
                *slot = Some(compile(path, text, ExprRole::Filter(op))?);
            }
        }
        let on_message = match &strategy.on_message {
            Some(text) => Some(compile(
                format!("{base}.on_message"),
                text,
                ExprRole::Message,
            )?),
            None => None,
        };
        let record = match &strategy.record {
            None => None,
            Some(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, template) in map {
                    let path = format!("{base}.record.{key}");
                    let mut key_json = Vec::new();
                    write_json_string(key.as_bytes(), &mut key_json);
                    key_json.push(b':');
                    let value = match template {
                        Template::Literal(v) => FieldValue::Literal(
                            serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()),
                        ),
                        Template::Expr(text) => {
                            let expr = compile(path.clone(), text, ExprRole::Record)?;
                            match (expr.single_column(), expr.single_meta()) {
                                (Some((image, column)), _) => {
                                    FieldValue::Column(image, column.to_string())
                                }
                                (None, Some(meta)) => FieldValue::Meta(meta),
                                (None, None) => FieldValue::Expr(expr),
                            }
                        }
                    };
                    fields.push(Field {
                        key_json,
                        path,
                        value,
                    });
                }
                Some(fields)
            }
        };
        let endpoint = config.endpoint_of(strategy);
        let part = |path: String, key: &str, template: &Template| -> Result<Part, StrategyError> {
            let value = match template {
                Template::Literal(v) => PartValue::Literal(v.clone()),
                Template::Expr(text) => {
                    PartValue::Expr(compile(path.clone(), text, ExprRole::Batch)?)
                }
            };
            Ok(Part {
                key: key.to_string(),
                path,
                value,
            })
        };
        // Endpoint values first; the strategy's own replace them key by key
        // (header names compare case-insensitively).
        let mut headers: Vec<Part> = Vec::new();
        let mut query: Vec<Part> = Vec::new();
        if let Some(endpoint) = endpoint {
            let ep = format!("endpoints.{}", strategy.endpoint);
            for (key, t) in &endpoint.headers {
                headers.push(part(format!("{ep}.headers.{key}"), key, t)?);
            }
            for (key, t) in &endpoint.query {
                query.push(part(format!("{ep}.query.{key}"), key, t)?);
            }
        }
        for (key, t) in &strategy.headers {
            headers.retain(|p| !p.key.eq_ignore_ascii_case(key));
            headers.push(part(format!("{base}.headers.{key}"), key, t)?);
        }
        for (key, t) in &strategy.query {
            query.retain(|p| p.key != *key);
            query.push(part(format!("{base}.query.{key}"), key, t)?);
        }
        let mut body = Vec::new();
        for (key, t) in &strategy.body {
            body.push(part(format!("{base}.body.{key}"), key, t)?);
        }
        let grouping = match (strategy.ordering, &strategy.group_by) {
            (Ordering::Commit, _) => Grouping::Commit,
            (Ordering::Key, Some(text)) => {
                Grouping::Expr(compile(format!("{base}.group_by"), text, ExprRole::Record)?)
            }
            (Ordering::Key, None) => Grouping::Columns(Vec::new()),
        };
        let name = strategy.name.clone();
        let per_op = |metric: &'static str| -> [Counter; 4] {
            OPS.map(|(_, _, op)| metrics::counter!(metric, "strategy" => name.clone(), "op" => op))
        };
        let counters = Counters {
            matched: per_op(names::EVENTS_MATCHED_TOTAL),
            filtered: per_op(names::EVENTS_FILTERED_TOTAL),
            errors: metrics::counter!(names::FILTER_ERRORS_TOTAL, "strategy" => name.clone()),
            nulls: metrics::counter!(names::FILTER_NULLS_TOTAL, "strategy" => name.clone()),
        };
        Ok(CompiledStrategy {
            name,
            table: strategy.table.clone(),
            messages: strategy.messages.clone(),
            on_message,
            filters,
            grouping,
            record,
            record_shape: strategy.record_shape,
            headers,
            query,
            body,
            counters,
            logs: Logs {
                nulls: Throttle::new(NULL_SUMMARY_EVERY),
                failures: Throttle::new(FAILURE_WARN_EVERY),
            },
            taps: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// An expression met NULL: counted, and summarised at most once a minute.
    fn null_outcome(&self) {
        self.counters.nulls.increment(1);
        if let Some(count) = self.logs.nulls.hit(std::time::Instant::now()) {
            log_nulls(&self.name, count);
        }
    }

    /// An expression failed: counted, and logged at most every ten seconds
    /// with the number of failures the line stands for.
    fn failure(&self, record: &dyn std::fmt::Display, field: &str, reason: &str, outcome: &str) {
        self.counters.errors.increment(1);
        if let Some(count) = self.logs.failures.hit(std::time::Instant::now()) {
            tracing::warn!(
                strategy = %self.name,
                record = %record,
                field,
                error = %reason,
                count,
                "{outcome} (count: failures since the last such line)"
            );
        }
    }

    /// Compiles every strategy of `config`, in file order (the order is the
    /// strategy index used by [`crate::checkpoint::Checkpoint`]).
    pub(crate) fn compile_all(config: &Config) -> Result<Vec<CompiledStrategy>, StrategyError> {
        (0..config.strategies.len())
            .map(|i| CompiledStrategy::compile(config, i))
            .collect()
    }

    /// The strategy's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Under `ordering = "key"` without `group_by`: the key columns to group
    /// by (see [`super::group_columns`]).
    pub(crate) fn set_group_columns(&mut self, columns: Vec<String>) {
        if let Grouping::Columns(current) = &mut self.grouping {
            *current = columns;
        }
    }

    /// The record's group (see [`Group`]): one group under `ordering =
    /// "commit"`; under `"key"` a hash of the key columns' values (the new
    /// row's, the old row's for deletes; both when an update changed the
    /// key) or of `group_by`'s value. A truncate is ordered with everything.
    /// A `group_by` that fails puts the record in one group of failures,
    /// counted and logged like a filter error.
    fn group(&self, event: &RecordEvent) -> Group {
        if event.op == Op::Truncate && !matches!(self.grouping, Grouping::Commit) {
            return Group::All;
        }
        match &self.grouping {
            Grouping::Commit => Group::default(),
            Grouping::Expr(expr) => {
                let mut hasher = std::hash::DefaultHasher::new();
                match expr.eval_event(event) {
                    Ok(value) => hash_value(&value, &mut hasher),
                    Err(err) => {
                        match Verdict::failed(&err) {
                            Verdict::Failed(reason) => self.failure(
                                &event.id(),
                                "group_by",
                                &reason,
                                "group_by failed; the record is ordered with the other failures",
                            ),
                            _ => self.null_outcome(),
                        }
                        "\0group_by failed".hash(&mut hasher);
                    }
                }
                Group::Key(hasher.finish())
            }
            Grouping::Columns(columns) => {
                let new = key_hash(event, event.new.as_ref(), event.old.as_ref(), columns);
                let old = key_hash(event, event.old.as_ref(), None, columns);
                match (event.op, new, old) {
                    (Op::Delete, _, Some(old)) => Group::Key(old),
                    (_, Some(new), Some(old)) if new != old => Group::Keys(new, old),
                    (_, Some(new), _) => Group::Key(new),
                    (_, None, Some(old)) => Group::Key(old),
                    (_, None, None) => Group::default(),
                }
            }
        }
    }

    /// Whether the strategy follows the table `event` belongs to.
    pub(crate) fn follows(&self, event: &RecordEvent) -> bool {
        self.table
            .as_ref()
            .is_some_and(|t| t.schema == event.relation.schema && t.name == event.relation.name)
    }

    /// Whether the strategy follows logical messages with this prefix.
    pub(crate) fn follows_message(&self, prefix: &str) -> bool {
        self.messages
            .as_deref()
            .is_some_and(|p| prefix.starts_with(p))
    }

    /// Evaluates `on_message` (absent = every message is sent). An
    /// evaluation error = not matched, counted and logged without values.
    pub(crate) fn accepts_message(&self, message: &MessageRecord<'_>) -> bool {
        let Some(filter) = &self.on_message else {
            return true;
        };
        let values = MessageValues::new(message.prefix, message.content, message.txn.is_some());
        match filter.verdict_message(&values) {
            Verdict::Decided(b) => b,
            Verdict::Null => {
                self.null_outcome();
                false
            }
            Verdict::Failed(reason) => {
                self.failure(
                    &message.message_lsn,
                    "on_message",
                    &reason,
                    "on_message failed; the message counts as not matched",
                );
                false
            }
        }
    }

    /// The queue item for a matched logical message.
    pub(crate) fn queued_message(&self, message: &MessageRecord<'_>) -> QueuedRecord {
        let mut json = Vec::with_capacity(128 + message.prefix.len() + message.content.len());
        message.write_json(&mut json);
        let commit_time = message
            .txn
            .map_or_else(crate::timestamp::unix_now_micros, |(_, t)| t);
        QueuedRecord::new(message.commit_lsn, message.index, commit_time, json)
    }

    /// Evaluates the filter for `event`'s operation and counts the outcome.
    /// No filter for the op = not sent and not counted (a delete-only
    /// strategy does not count inserts as filtered). An evaluation error =
    /// not matched, counted in `walhook_filter_errors_total` and logged
    /// without values.
    pub fn accepts(&self, event: &RecordEvent) -> bool {
        let Some(slot) = op_slot(event.op) else {
            return false;
        };
        let matched = match self.filters.get(slot).and_then(Option::as_ref) {
            None => return false,
            Some(filter) => match filter.verdict(event) {
                Verdict::Decided(b) => b,
                Verdict::Null => {
                    self.null_outcome();
                    false
                }
                Verdict::Failed(reason) => {
                    let field = OPS.get(slot).map_or("", |(_, _, op)| op);
                    self.failure(
                        &event.id(),
                        &format!("on_{field}"),
                        &reason,
                        "filter failed; the change counts as not matched",
                    );
                    false
                }
            },
        };
        let counters = if matched {
            &self.counters.matched
        } else {
            &self.counters.filtered
        };
        if let Some(counter) = counters.get(slot) {
            counter.increment(1);
        }
        matched
    }

    /// Appends `event`'s record object (DESIGN.md payload record): the whole
    /// row, or with `record` the mapped fields in the envelope or alone
    /// (see [`RecordEvent::write_mapped_json`]).
    fn write_record(&self, event: &RecordEvent, out: &mut Vec<u8>) {
        match &self.record {
            None => event.write_json(out),
            Some(fields) => {
                event.write_mapped_json(
                    self.record_shape,
                    |out| self.write_fields(fields, event, out),
                    out,
                );
            }
        }
    }

    /// The queue item for a matched event.
    pub fn queued_record(&self, event: &RecordEvent) -> QueuedRecord {
        let capacity = match &self.record {
            None => event.json_len_hint(),
            Some(_) => 256,
        };
        let mut json = Vec::with_capacity(capacity);
        self.write_record(event, &mut json);
        let mut record = QueuedRecord::new(event.commit_lsn, event.index, event.commit_time, json);
        record.group = self.group(event);
        record
    }

    /// A mapped field that cannot be read (an unchanged TOASTed value, a
    /// column the server did not send) is left out; an expression that fails
    /// writes `null`, is counted as a filter error and logged without values.
    fn write_fields(&self, fields: &[Field], event: &RecordEvent, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for field in fields {
            let start = out.len();
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&field.key_json);
            let written = match &field.value {
                FieldValue::Literal(json) => {
                    out.extend_from_slice(json);
                    true
                }
                FieldValue::Meta(meta) => {
                    event.write_meta(*meta, out);
                    true
                }
                FieldValue::Column(image, column) => match resolve(event, *image, column) {
                    Resolved::Cell(col, cell) => {
                        write_cell_json(&col.kind, cell, out);
                        true
                    }
                    Resolved::Absent => {
                        out.extend_from_slice(b"null");
                        true
                    }
                    Resolved::Unavailable => false,
                },
                FieldValue::Expr(expr) => {
                    match expr.eval_event(event) {
                        Ok(value) => write_value_json(&value, out),
                        Err(err) => {
                            match Verdict::failed(&err) {
                                Verdict::Failed(reason) => self.failure(
                                    &event.id(),
                                    &field.path,
                                    &reason,
                                    "record field failed; it is null in this record",
                                ),
                                _ => self.null_outcome(),
                            }
                            out.extend_from_slice(b"null");
                        }
                    }
                    true
                }
            };
            if written {
                first = false;
            } else {
                out.truncate(start);
            }
        }
        out.push(b'}');
    }
}

impl CompiledStrategy {
    /// Keeps the endpoint's answers to batches holding records `log` watches.
    pub(crate) fn tap(&self, log: Arc<ReplyLog>) {
        self.taps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log);
    }

    /// Stops keeping answers for `log`.
    pub(crate) fn untap(&self, log: &Arc<ReplyLog>) {
        self.taps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| !Arc::ptr_eq(t, log));
    }
}

/// The summary of NULL outcomes: `count` since the last one.
fn log_nulls(strategy: &str, count: u64) {
    tracing::info!(
        strategy = %strategy,
        count,
        "expressions met NULL: those changes are not matched (SQL's WHERE) and mapped values are \
         null; walhook_filter_nulls_total counts each, this line comes at most once a minute"
    );
}

impl Drop for CompiledStrategy {
    /// The NULL outcomes since the last summary, when a reload or shutdown
    /// retires the strategy.
    fn drop(&mut self) {
        let count = self.logs.nulls.take_pending();
        if count > 0 {
            log_nulls(&self.name, count);
        }
    }
}

impl Decorate for CompiledStrategy {
    fn record_shape(&self) -> RecordShape {
        self.record_shape
    }

    fn replies(&self, records: &[(crate::lsn::Lsn, u32)]) -> Option<Arc<ReplyLog>> {
        let taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        taps.iter().find(|log| log.watches(records)).cloned()
    }

    fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String> {
        if self.headers.is_empty() && self.query.is_empty() && self.body.is_empty() {
            return Ok(Decoration::default());
        }
        let values = BatchValues::new(meta);
        let eval = |part: &Part| -> Result<serde_json::Value, String> {
            match &part.value {
                PartValue::Literal(v) => Ok(v.clone()),
                PartValue::Expr(expr) => expr
                    .eval_batch(&values)
                    .map(|v| value_to_json(&v))
                    .map_err(|err| format!("{}: {}", part.path, describe(&err))),
            }
        };
        let text = |part: &Part| -> Result<(String, String), String> {
            let text = match eval(part)? {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            Ok((part.key.clone(), text))
        };
        Ok(Decoration {
            headers: self.headers.iter().map(text).collect::<Result<_, _>>()?,
            query: self.query.iter().map(text).collect::<Result<_, _>>()?,
            body: self
                .body
                .iter()
                .map(|p| Ok((p.key.clone(), eval(p)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

/// A hash of the key `columns` in `tuple` (an unchanged TOASTed value taken
/// from `fallback`); `None` without a tuple.
fn key_hash(
    event: &RecordEvent,
    tuple: Option<&Tuple>,
    fallback: Option<&Tuple>,
    columns: &[String],
) -> Option<u64> {
    let tuple = tuple?;
    let mut hasher = std::hash::DefaultHasher::new();
    for column in columns {
        let index = event.relation.column_index(column);
        let mut cell = index.and_then(|i| tuple.get(i));
        if cell == Some(&Cell::Unchanged) {
            cell = index.and_then(|i| fallback?.get(i));
        }
        match cell {
            Some(Cell::Text(b) | Cell::Binary(b)) => {
                1u8.hash(&mut hasher);
                b.hash(&mut hasher);
            }
            Some(Cell::Null) | None => 0u8.hash(&mut hasher),
            Some(Cell::Unchanged) => 2u8.hash(&mut hasher),
        }
    }
    Some(hasher.finish())
}

/// Hashes an evalexpr value with its type, so `1` and `"1"` differ.
fn hash_value(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::String(s) => (0u8, s).hash(hasher),
        Value::Int(i) => (1u8, i).hash(hasher),
        Value::Float(f) => (2u8, f.to_bits()).hash(hasher),
        Value::Boolean(b) => (3u8, b).hash(hasher),
        Value::Empty => 4u8.hash(hasher),
        Value::Tuple(items) => {
            5u8.hash(hasher);
            items.len().hash(hasher);
            for item in items {
                hash_value(item, hasher);
            }
        }
    }
}

/// Appends an evalexpr value as JSON: `()` (NULL) → null, tuples → arrays,
/// non-finite floats → strings as in payload values.
fn write_value_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::String(s) => write_json_string(s.as_bytes(), out),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => write_float(*f, out),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Empty => out.extend_from_slice(b"null"),
        Value::Tuple(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value_json(item, out);
            }
            out.push(b']');
        }
    }
}

fn write_float(f: f64, out: &mut Vec<u8>) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 {
            b"\"Infinity\""
        } else {
            b"\"-Infinity\""
        });
    } else {
        let _ = write!(out, "{f}");
    }
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| {
                let mut buf = Vec::new();
                write_float(*f, &mut buf);
                serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
            }),
        Value::Boolean(b) => (*b).into(),
        Value::Empty => serde_json::Value::Null,
        Value::Tuple(items) => items.iter().map(value_to_json).collect(),
    }
}
