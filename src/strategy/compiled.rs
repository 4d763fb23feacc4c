//! One strategy compiled from its config: op filters, the record mapping and
//! the per-batch templates (the [`Decorate`] implementation).

use std::io::Write as _;

use evalexpr::Value;
use metrics::Counter;

use super::expr::{describe, resolve, BatchValues, Expr, Image, Resolved};
use super::StrategyError;
use crate::batch::payload::Meta;
use crate::batch::{BatchMeta, Decorate, Decoration, QueuedRecord};
use crate::config::{Config, ExprRole, FilterOp, RecordShape, TableName, Template};
use crate::decode::convert::{write_cell_json, write_json_string};
use crate::decode::{Op, RecordEvent};
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
}

/// A strategy ready to filter, map and decorate. Shared (`Arc`) between the
/// router and the strategy's batch worker.
#[derive(Debug)]
pub struct CompiledStrategy {
    name: String,
    table: TableName,
    filters: [Option<Expr>; 4],
    record: Option<Vec<Field>>,
    record_shape: RecordShape,
    headers: Vec<Part>,
    query: Vec<Part>,
    body: Vec<Part>,
    counters: Counters,
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
        let name = strategy.name.clone();
        let per_op = |metric: &'static str| -> [Counter; 4] {
            OPS.map(|(_, _, op)| metrics::counter!(metric, "strategy" => name.clone(), "op" => op))
        };
        let counters = Counters {
            matched: per_op(names::EVENTS_MATCHED_TOTAL),
            filtered: per_op(names::EVENTS_FILTERED_TOTAL),
            errors: metrics::counter!(names::FILTER_ERRORS_TOTAL, "strategy" => name.clone()),
        };
        Ok(CompiledStrategy {
            name,
            table: strategy.table.clone(),
            filters,
            record,
            record_shape: strategy.record_shape,
            headers,
            query,
            body,
            counters,
        })
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

    /// Whether the strategy follows the table `event` belongs to.
    pub(crate) fn follows(&self, event: &RecordEvent) -> bool {
        self.table.schema == event.relation.schema && self.table.name == event.relation.name
    }

    /// Evaluates the filter for `event`'s operation and counts the outcome.
    /// No filter for the op = not sent. An evaluation error = not matched,
    /// counted in `walhook_filter_errors_total` and logged without values.
    pub fn accepts(&self, event: &RecordEvent) -> bool {
        let Some(slot) = op_slot(event.op) else {
            return false;
        };
        let matched = match self.filters.get(slot).and_then(Option::as_ref) {
            None => false,
            Some(filter) => match filter.matches(event) {
                Ok(b) => b,
                Err(reason) => {
                    self.counters.errors.increment(1);
                    tracing::warn!(
                        strategy = %self.name,
                        record = %event.id(),
                        op = event.op.as_str(),
                        error = %reason,
                        "filter failed; the change counts as not matched"
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
        let mut json = Vec::with_capacity(256);
        self.write_record(event, &mut json);
        QueuedRecord {
            commit_lsn: event.commit_lsn,
            index: event.index,
            commit_time: event.commit_time,
            json,
        }
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
                            self.counters.errors.increment(1);
                            tracing::warn!(
                                strategy = %self.name,
                                record = %event.id(),
                                field = %field.path,
                                error = %describe(&err),
                                "record field failed; it is null in this record"
                            );
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

impl Decorate for CompiledStrategy {
    fn record_shape(&self) -> RecordShape {
        self.record_shape
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
