//! The functions expressions may call: evalexpr's built-ins, walhook's
//! `changed("col")`, `is_null(x)`, `now()`, and the text and JSON functions
//! whose constant arguments (regular expressions, paths) compile at load.

use evalexpr::{EvalexprError, EvalexprResult, Node, Operator, Value};

use crate::config::{ExprRole, FilterOp};
use crate::decode::{Cell, Op, RecordEvent, ReplicaIdentity};

/// evalexpr 11.3.1's built-in functions (without the optional regex ones).
const BUILTINS: &[&str] = &[
    "math::ln",
    "math::log",
    "math::exp",
    "math::pow",
    "math::cos",
    "math::acos",
    "math::cosh",
    "math::acosh",
    "math::sin",
    "math::asin",
    "math::sinh",
    "math::asinh",
    "math::tan",
    "math::atan",
    "math::tanh",
    "math::atanh",
    "math::sqrt",
    "math::cbrt",
    "math::hypot",
    "floor",
    "round",
    "ceil",
    "math::is_nan",
    "math::is_finite",
    "math::is_infinite",
    "math::is_normal",
    "math::abs",
    "typeof",
    "min",
    "max",
    "if",
    "contains",
    "contains_any",
    "len",
    "str::to_lowercase",
    "str::to_uppercase",
    "str::trim",
    "str::from",
    "str::substring",
    "random",
    "bitand",
    "bitor",
    "bitxor",
    "bitnot",
    "shl",
    "shr",
];

/// walhook's text and JSON functions (see [`TextFunctions`]).
const TEXT_FUNCTIONS: &[&str] = &["starts_with", "ends_with", "contains", "matches", "json"];

/// Whether `role` may call `name`.
pub(super) fn check_function(name: &str, role: ExprRole) -> Result<(), String> {
    if BUILTINS.contains(&name) || TEXT_FUNCTIONS.contains(&name) {
        return Ok(());
    }
    match (name, role) {
        ("is_null", ExprRole::Batch) | ("changed", ExprRole::Batch) => Err(format!(
            "{name}() reads rows; header, query and body values are computed per batch"
        )),
        ("is_null", _) => Ok(()),
        ("changed", ExprRole::Filter(FilterOp::Update) | ExprRole::Record) => Ok(()),
        ("changed", _) => Err("changed(\"col\") applies to updates: use it in on_update".into()),
        ("now", ExprRole::Batch) => Ok(()),
        ("now", _) => Err("now() is available in header, query and body values only".into()),
        ("str::regex_matches" | "str::regex_replace", _) => Err(format!(
            "unknown function `{name}`: use matches(x, \"regex\")"
        )),
        _ => Err(format!(
            "unknown function `{name}`: use changed(\"col\"), is_null(x), now(), starts_with, \
             ends_with, contains, matches, json or an evalexpr built-in (min, max, len, floor, \
             str::to_lowercase, …)"
        )),
    }
}

/// The column names of every `changed("…")` call; an argument that is not
/// a quoted name is an error.
pub(super) fn changed_columns(tree: &Node) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for node in tree.iter() {
        let Operator::FunctionIdentifier { identifier } = node.operator() else {
            continue;
        };
        if identifier != "changed" {
            continue;
        }
        let mut arg = node.children().first();
        while let Some(n) = arg {
            match (n.operator(), n.children()) {
                (Operator::RootNode, [only]) => arg = Some(only),
                _ => break,
            }
        }
        match arg.map(|n| n.operator()) {
            Some(Operator::Const {
                value: Value::String(column),
            }) => out.push(column.clone()),
            _ => {
                return Err(
                    "changed() takes a column name in double quotes: changed(\"status\")".into(),
                )
            }
        }
    }
    Ok(out)
}

/// `changed("col")`: on updates, whether the column's text differs between
/// the old and new images. An unchanged TOASTed value is not changed. A key
/// column of an update without an old image did not change. A non-key
/// column without a full old image (REPLICA IDENTITY not FULL) is an error.
pub(super) fn changed(event: &RecordEvent, column: &str) -> EvalexprResult<bool> {
    if event.op != Op::Update {
        return Ok(false);
    }
    let rel = &*event.relation;
    let unknown = || EvalexprError::CustomMessage(format!("changed(\"{column}\"): no such column"));
    let index = rel.column_index(column).ok_or_else(unknown)?;
    let col = rel.columns.get(index).ok_or_else(unknown)?;
    let new = event.new.as_ref().and_then(|t| t.get(index));
    if matches!(new, Some(Cell::Unchanged)) {
        return Ok(false);
    }
    let full = rel.replica_identity == ReplicaIdentity::Full;
    let needs_full = || {
        EvalexprError::CustomMessage(format!(
            "changed(\"{column}\") needs the old row: the table's REPLICA IDENTITY is not FULL"
        ))
    };
    match event.old.as_ref() {
        None if col.key && !full => Ok(false),
        None => Err(needs_full()),
        Some(_) if !full && !col.key => Err(needs_full()),
        Some(old) => match (old.get(index), new) {
            (Some(Cell::Unchanged), _) | (None, _) | (_, None) => Err(needs_full()),
            (Some(o), Some(n)) => Ok(o != n),
        },
    }
}

/// `starts_with(x, "p")`, `ends_with(x, "s")`, `contains(x, "t")` on text
/// (`contains` on a tuple stays evalexpr's), `matches(x, "regex")` and
/// `json(x, "a.b.0")`: the regular expressions and paths are constants,
/// compiled here once at load, so a bad one is a config error. NULL in,
/// NULL out (as SQL's `LIKE`, `~` and `#>>`: a filter that ends in NULL is
/// not matched); `json` also gives NULL for a JSON null or a missing path.
#[derive(Debug, Clone, Default)]
pub(super) struct TextFunctions {
    regexes: Vec<(String, regex::Regex)>,
    paths: Vec<(String, Vec<String>)>,
}

impl TextFunctions {
    pub(super) fn compile(tree: &Node) -> Result<TextFunctions, String> {
        let mut out = TextFunctions::default();
        for node in tree.iter() {
            let Operator::FunctionIdentifier { identifier } = node.operator() else {
                continue;
            };
            let name = identifier.as_str();
            if !TEXT_FUNCTIONS.contains(&name) {
                continue;
            }
            let args = arguments(node);
            if name == "contains" && args.len() != 2 {
                // evalexpr's contains((1, 2), 1) reads as one tuple argument.
                continue;
            }
            let [_, second] = args.as_slice() else {
                return Err(format!(
                    "{name}() takes two arguments: {name}(new.col, \"text\")"
                ));
            };
            let constant = match second.operator() {
                Operator::Const {
                    value: Value::String(text),
                } => Some(text.as_str()),
                _ => None,
            };
            match (name, constant) {
                ("matches", Some(pattern)) => {
                    let regex = regex::Regex::new(pattern).map_err(|err| {
                        format!("matches(): the regular expression does not compile: {err}")
                    })?;
                    out.regexes.push((pattern.to_string(), regex));
                }
                ("matches", None) => {
                    return Err(
                        "matches() takes the regular expression as text in double quotes: \
                         matches(new.col, \"^A[0-9]+$\")"
                            .into(),
                    )
                }
                ("json", Some(path)) => out.paths.push((path.to_string(), json_path(path)?)),
                ("json", None) => {
                    return Err("json() takes the path as text in double quotes: \
                         json(new.col, \"customer.tier\")"
                        .into())
                }
                _ => {}
            }
        }
        Ok(out)
    }

    pub(super) fn call(&self, identifier: &str, argument: &Value) -> EvalexprResult<Value> {
        let pair = match argument {
            Value::Tuple(pair) if pair.len() == 2 => pair.as_slice(),
            _ if TEXT_FUNCTIONS.contains(&identifier) && identifier != "contains" => {
                return Err(EvalexprError::CustomMessage(format!(
                    "{identifier}() takes two arguments"
                )))
            }
            _ => {
                return Err(EvalexprError::FunctionIdentifierNotFound(
                    identifier.to_string(),
                ))
            }
        };
        let (subject, operand) = (&pair[0], &pair[1]);
        if identifier == "contains" && matches!(subject, Value::Tuple(_)) {
            // evalexpr's own contains((…), x).
            return Err(EvalexprError::FunctionIdentifierNotFound(
                identifier.to_string(),
            ));
        }
        if !TEXT_FUNCTIONS.contains(&identifier) {
            return Err(EvalexprError::FunctionIdentifierNotFound(
                identifier.to_string(),
            ));
        }
        let text = match subject {
            Value::String(text) => text.as_str(),
            // SQL: `NULL LIKE …`, `NULL ~ …` and `NULL #>> …` are NULL.
            Value::Empty => return Ok(Value::Empty),
            _ => {
                return Err(EvalexprError::CustomMessage(format!(
                    "{identifier}() reads text; this value is not text"
                )))
            }
        };
        let Value::String(operand) = operand else {
            return Err(EvalexprError::CustomMessage(format!(
                "{identifier}()'s second argument must be text"
            )));
        };
        match identifier {
            "starts_with" => Ok(Value::Boolean(text.starts_with(operand.as_str()))),
            "ends_with" => Ok(Value::Boolean(text.ends_with(operand.as_str()))),
            "contains" => Ok(Value::Boolean(text.contains(operand.as_str()))),
            "matches" => {
                let regex = self
                    .regexes
                    .iter()
                    .find(|(p, _)| p == operand)
                    .map(|(_, r)| r)
                    .ok_or_else(|| {
                        EvalexprError::CustomMessage("matches(): an uncompiled pattern".into())
                    })?;
                Ok(Value::Boolean(regex.is_match(text)))
            }
            _ => {
                let path = self
                    .paths
                    .iter()
                    .find(|(p, _)| p == operand)
                    .map(|(_, p)| p)
                    .ok_or_else(|| {
                        EvalexprError::CustomMessage("json(): an uncompiled path".into())
                    })?;
                let document: serde_json::Value = serde_json::from_str(text).map_err(|_| {
                    EvalexprError::CustomMessage("json() of text that is not JSON".into())
                })?;
                Ok(json_value(lookup(&document, path)))
            }
        }
    }
}

/// `n` without the root nodes parentheses wrap it in.
fn unwrap_root(mut n: &Node) -> &Node {
    while let (Operator::RootNode, [only]) = (n.operator(), n.children()) {
        n = only;
    }
    n
}

/// A function call's argument nodes (`f(a, b)` → `[a, b]`).
fn arguments(call: &Node) -> Vec<&Node> {
    let mut node = call.children().first();
    while let Some(n) = node {
        match (n.operator(), n.children()) {
            (Operator::RootNode, [only]) => node = Some(only),
            _ => break,
        }
    }
    let Some(node) = node else {
        return Vec::new();
    };
    match node.operator() {
        Operator::Tuple => node.children().iter().map(unwrap_root).collect(),
        _ => vec![node],
    }
}

/// `"customer.tier"` → `["customer", "tier"]`; `"items.0.sku"` indexes an
/// array with `0`. Keys with dots or empty keys cannot be written.
fn json_path(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Err("json(): the path is empty; write json(new.col, \"key.subkey\")".into());
    }
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!(
            "json(): the path {path:?} has an empty key; separate keys with single dots"
        ));
    }
    Ok(segments)
}

fn lookup<'a>(document: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(document, |value, key| match value {
        serde_json::Value::Object(map) => map.get(key),
        serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A JSON value as an evalexpr value: null and missing are NULL, objects
/// and arrays their JSON text.
fn json_value(value: Option<&serde_json::Value>) -> Value {
    match value {
        None | Some(serde_json::Value::Null) => Value::Empty,
        Some(serde_json::Value::Bool(b)) => Value::Boolean(*b),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => n.as_f64().map_or(Value::Empty, Value::Float),
        },
        Some(serde_json::Value::String(s)) => Value::String(s.clone()),
        Some(other) => Value::String(other.to_string()),
    }
}
