//! Expressions: evalexpr trees compiled once, evaluated against one record
//! event (filters, `record` fields) or one batch (`headers`, `query`, `body`).
//!
//! Why evaluation goes through [`EventContext`] and not a `HashMapContext`:
//! an event carries its values as server text, and most filters read one or
//! two columns. The context converts a column only when the expression asks
//! for it, once per evaluation, into a slot of a small cache (a
//! [`OnceCell`] per distinct name the expression reads, resolved at compile
//! time). evalexpr's `Context::get_value` returns a reference, which the
//! `OnceCell` provides soundly without filling a map per event.
//!
//! Two evalexpr behaviours are changed at compile time, to give filters
//! SQL `WHERE` semantics (see the module doc of [`crate::strategy`]):
//! - `==` and `!=` are rewritten into internal functions that fail on NULL
//!   and compare integers with floats by value (`100 == 100.0`);
//! - `&&`, `||` and `!` at the top of the expression are evaluated here,
//!   short-circuiting, with a failed operand acting like SQL's unknown
//!   (`is_null(new.x) || new.x > 5` is true for NULL; `false && <error>` is false).

use std::cell::OnceCell;
use std::collections::BTreeSet;

use evalexpr::{Context, EvalexprError, EvalexprResult, Node, Operator, Value};

use crate::batch::payload::Meta;
use crate::config::{ExprRole, FilterOp};
use crate::decode::{Cell, Column, Op, RecordEvent, ReplicaIdentity, TypeKind};
use crate::timestamp;

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

const EQ: &str = "__walhook_eq";
const NEQ: &str = "__walhook_neq";

/// Which row image a column reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Image {
    /// `new.<col>`.
    New,
    /// `old.<col>` (and the old half of `changed("col")`).
    Old,
    /// `row.<col>`: new for inserts and updates, old for deletes.
    Row,
}

/// A column an expression reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ColumnRef {
    pub(crate) image: Image,
    pub(crate) column: String,
}

impl std::fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = match self.image {
            Image::New => "new",
            Image::Old => "old",
            Image::Row => "row",
        };
        write!(f, "{prefix}.{}", self.column)
    }
}

/// What a variable name in an expression stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Column(Image, String),
    Op,
    Table,
    Schema,
    RecordId,
    Lsn,
    Xid,
    CommitTime,
    BatchSize,
    BatchFirstLsn,
    BatchLastLsn,
    BatchId,
    Strategy,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    tree: Node,
    /// Every distinct variable name read, with its meaning; the position is
    /// the cache slot in [`EventContext`].
    names: Vec<(String, Name)>,
    /// The text, regular expressions and JSON paths the functions use,
    /// compiled once at load.
    functions: TextFunctions,
}

impl Expr {
    /// Compiles `text` for `role`; the error says what is wrong, never a value.
    pub fn compile(text: &str, role: ExprRole) -> Result<Expr, String> {
        let mut tree = evalexpr::build_operator_tree(text)
            .map_err(|err| format!("does not compile: {err}"))?;
        for node in tree.iter() {
            match node.operator() {
                Operator::Assign
                | Operator::AddAssign
                | Operator::SubAssign
                | Operator::MulAssign
                | Operator::DivAssign
                | Operator::ModAssign
                | Operator::ExpAssign
                | Operator::AndAssign
                | Operator::OrAssign
                | Operator::VariableIdentifierWrite { .. } => {
                    return Err("assignments are not allowed in expressions".into())
                }
                Operator::Chain => {
                    return Err("`;` chains are not allowed: write one expression".into())
                }
                op => {
                    let wanted = match op {
                        Operator::Neg | Operator::Not | Operator::FunctionIdentifier { .. } => 1,
                        Operator::RootNode
                        | Operator::Tuple
                        | Operator::Const { .. }
                        | Operator::VariableIdentifierRead { .. } => usize::MAX,
                        _ => 2,
                    };
                    if wanted != usize::MAX && node.children().len() != wanted {
                        return Err(format!("does not compile: `{op}` is missing an operand"));
                    }
                }
            }
        }
        let mut names: Vec<(String, Name)> = Vec::new();
        for ident in tree.iter_read_variable_identifiers() {
            if names.iter().any(|(n, _)| n == ident) {
                continue;
            }
            let name = parse_name(ident, role)?;
            names.push((ident.to_string(), name));
        }
        for function in tree.iter_function_identifiers() {
            check_function(function, role)?;
        }
        changed_columns(&tree)?;
        let functions = TextFunctions::compile(&tree)?;
        if let Some(tuple) = tuple_template() {
            rewrite_equality(&mut tree, &tuple);
        }
        Ok(Expr {
            tree,
            names,
            functions,
        })
    }

    /// When the expression is exactly one column (`row.id`), that column:
    /// mappings then copy the cell's exact JSON instead of evaluating.
    pub(crate) fn single_column(&self) -> Option<(Image, &str)> {
        let mut node = &self.tree;
        loop {
            match (node.operator(), node.children()) {
                (Operator::RootNode, [only]) => node = only,
                (Operator::VariableIdentifierRead { .. }, []) => break,
                _ => return None,
            }
        }
        match self.names.as_slice() {
            [(_, Name::Column(image, column))] => Some((*image, column)),
            _ => None,
        }
    }

    /// When the expression is exactly one of the envelope's own names
    /// (`op`, `id`, `lsn`, …), that field: mappings then write it as the
    /// envelope does instead of evaluating.
    pub(crate) fn single_meta(&self) -> Option<Meta> {
        let mut node = &self.tree;
        loop {
            match (node.operator(), node.children()) {
                (Operator::RootNode, [only]) => node = only,
                (Operator::VariableIdentifierRead { .. }, []) => break,
                _ => return None,
            }
        }
        match self.names.as_slice() {
            [(_, name)] => match name {
                Name::Op => Some(Meta::Op),
                Name::Table => Some(Meta::Table),
                Name::Schema => Some(Meta::Schema),
                Name::RecordId => Some(Meta::Id),
                Name::Lsn => Some(Meta::Lsn),
                Name::Xid => Some(Meta::Xid),
                Name::CommitTime => Some(Meta::CommitTime),
                _ => None,
            },
            _ => None,
        }
    }

    /// Evaluates against one record event.
    pub(crate) fn eval_event(&self, event: &RecordEvent) -> EvalexprResult<Value> {
        let cache: Vec<OnceCell<Option<Value>>> =
            self.names.iter().map(|_| OnceCell::new()).collect();
        let context = EventContext {
            event,
            names: &self.names,
            cache: &cache,
            functions: &self.functions,
        };
        eval3(&self.tree, &context)
    }

    /// Evaluates a filter: `Ok(true)` only for a boolean true.
    pub fn matches(&self, event: &RecordEvent) -> Result<bool, String> {
        match self.eval_event(event) {
            Ok(Value::Boolean(b)) => Ok(b),
            Ok(_) => Err("the filter did not produce true or false".into()),
            Err(err) => Err(describe(&err)),
        }
    }

    /// Evaluates against a batch's names.
    pub(crate) fn eval_batch(&self, batch: &BatchValues) -> EvalexprResult<Value> {
        eval3(
            &self.tree,
            &BatchContext {
                batch,
                names: &self.names,
                functions: &self.functions,
            },
        )
    }
}

/// Compiles `expr` for its role (the hook for [`crate::config::Config::check_expressions`]).
pub fn check_expression(site: &crate::config::ExprSite<'_>) -> Result<(), String> {
    Expr::compile(site.expr, site.role).map(|_| ())
}

/// The `new.`/`old.`/`row.` columns an expression reads, in order, without
/// duplicates; `changed("col")` reads both `old.col` and `new.col`.
pub(crate) fn referenced_columns(expr: &str) -> Result<Vec<ColumnRef>, String> {
    let tree =
        evalexpr::build_operator_tree(expr).map_err(|err| format!("does not compile: {err}"))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut push = |r: ColumnRef| {
        if seen.insert(r.clone()) {
            out.push(r);
        }
    };
    for ident in tree.iter_read_variable_identifiers() {
        if let Some((image, column)) = split_column(ident) {
            push(ColumnRef {
                image,
                column: column.to_string(),
            });
        }
    }
    for column in changed_columns(&tree)? {
        push(ColumnRef {
            image: Image::Old,
            column: column.clone(),
        });
        push(ColumnRef {
            image: Image::New,
            column,
        });
    }
    Ok(out)
}

fn split_column(ident: &str) -> Option<(Image, &str)> {
    let (prefix, column) = ident.split_once('.')?;
    let image = match prefix {
        "new" => Image::New,
        "old" => Image::Old,
        "row" => Image::Row,
        _ => return None,
    };
    Some((image, column))
}

fn parse_name(ident: &str, role: ExprRole) -> Result<Name, String> {
    let row_role = !matches!(role, ExprRole::Batch);
    if let Some((image, column)) = split_column(ident) {
        if column.is_empty() {
            return Err(format!("`{ident}` names no column"));
        }
        match (role, image) {
            (ExprRole::Batch, _) => {
                return Err(format!(
                    "`{ident}`: header, query and body values are computed per batch and see \
                     batch.size, batch.first_lsn, batch.last_lsn, batch.id, strategy and now(), \
                     not rows; map row values in `record`"
                ))
            }
            (ExprRole::Filter(FilterOp::Insert), Image::Old) => {
                return Err(format!(
                    "`{ident}`: inserts have no old row; use new.{column} or row.{column}"
                ))
            }
            (ExprRole::Filter(FilterOp::Delete), Image::New) => {
                return Err(format!(
                    "`{ident}`: deletes have no new row; use old.{column} or row.{column}"
                ))
            }
            (ExprRole::Filter(FilterOp::Truncate), _) => {
                return Err(format!(
                    "`{ident}`: truncates have no row; on_truncate sees op, table and schema"
                ))
            }
            (ExprRole::ScheduleFilter, Image::New | Image::Old) => {
                return Err(format!(
                    "`{ident}`: scheduled runs read current rows; use row.{column}"
                ))
            }
            _ => {}
        }
        return Ok(Name::Column(image, column.to_string()));
    }
    let name = match ident {
        "op" if row_role => Name::Op,
        "table" if row_role => Name::Table,
        "schema" if row_role => Name::Schema,
        "id" if row_role => Name::RecordId,
        "lsn" if row_role => Name::Lsn,
        "xid" if row_role => Name::Xid,
        "commit_time" if row_role => Name::CommitTime,
        "batch.size" if !row_role => Name::BatchSize,
        "batch.first_lsn" if !row_role => Name::BatchFirstLsn,
        "batch.last_lsn" if !row_role => Name::BatchLastLsn,
        "batch.id" if !row_role => Name::BatchId,
        "strategy" if !row_role => Name::Strategy,
        _ if row_role => {
            return Err(format!(
                "unknown name `{ident}`: expressions on rows see new.<column>, old.<column>, \
                 row.<column>, op, table, schema, id, lsn, xid and commit_time (text needs \
                 double quotes: \"{ident}\")"
            ))
        }
        _ => {
            return Err(format!(
                "unknown name `{ident}`: per-batch values see batch.size, batch.first_lsn, \
                 batch.last_lsn, batch.id, strategy and now() (text needs double quotes: \"{ident}\")"
            ))
        }
    };
    Ok(name)
}

fn check_function(name: &str, role: ExprRole) -> Result<(), String> {
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
fn changed_columns(tree: &Node) -> Result<Vec<String>, String> {
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

/// A `Tuple` node, to wrap the operands of a rewritten comparison (evalexpr
/// builds nodes only by parsing).
fn tuple_template() -> Option<Node> {
    let tree = evalexpr::build_operator_tree("(0, 0)").ok()?;
    let found = tree
        .iter()
        .find(|n| *n.operator() == Operator::Tuple)
        .cloned();
    found
}

/// `a == b` → `__walhook_eq((a, b))`, `a != b` → `__walhook_neq((a, b))`.
fn rewrite_equality(node: &mut Node, tuple: &Node) {
    for child in node.children_mut() {
        rewrite_equality(child, tuple);
    }
    let name = match node.operator() {
        Operator::Eq => EQ,
        Operator::Neq => NEQ,
        _ => return,
    };
    let operands = std::mem::take(node.children_mut());
    let mut args = tuple.clone();
    *args.children_mut() = operands;
    *node.operator_mut() = Operator::FunctionIdentifier {
        identifier: name.to_string(),
    };
    *node.children_mut() = vec![args];
}

/// Evaluates with short-circuit three-valued `&&`, `||` and `!`: an error
/// operand is "unknown" and decides only when the other does not.
fn eval3<C: Context>(node: &Node, context: &C) -> EvalexprResult<Value> {
    match (node.operator(), node.children()) {
        (Operator::RootNode, [only]) => eval3(only, context),
        (op @ (Operator::And | Operator::Or), [left, right]) => {
            let decisive = matches!(op, Operator::Or);
            let l = eval3(left, context).and_then(|v| v.as_boolean());
            if matches!(l, Ok(b) if b == decisive) {
                return Ok(Value::Boolean(decisive));
            }
            let r = eval3(right, context).and_then(|v| v.as_boolean());
            match (l, r) {
                (_, Ok(b)) if b == decisive => Ok(Value::Boolean(decisive)),
                (Ok(_), Ok(_)) => Ok(Value::Boolean(!decisive)),
                (Err(err), _) | (_, Err(err)) => Err(err),
            }
        }
        (Operator::Not, [only]) => Ok(Value::Boolean(!eval3(only, context)?.as_boolean()?)),
        _ => node.eval_with_context(context),
    }
}

/// SQL-like equality: NULL fails (unknown), integers equal floats by value.
fn sql_eq(argument: &Value) -> EvalexprResult<bool> {
    let Value::Tuple(pair) = argument else {
        return Err(EvalexprError::CustomMessage(
            "comparison without operands".into(),
        ));
    };
    let [a, b] = pair.as_slice() else {
        return Err(EvalexprError::CustomMessage(
            "comparison without operands".into(),
        ));
    };
    match (a, b) {
        (Value::Empty, _) | (_, Value::Empty) => Err(EvalexprError::CustomMessage(
            "a NULL in a comparison (== or !=) is unknown; use is_null(x)".into(),
        )),
        (Value::Int(i), Value::Float(f)) | (Value::Float(f), Value::Int(i)) => Ok(*i as f64 == *f),
        _ => Ok(a == b),
    }
}

/// A value-free description of an evaluation error, for logs.
pub(crate) fn describe(err: &EvalexprError) -> String {
    match err {
        EvalexprError::VariableIdentifierNotFound(name) => {
            format!("{name} is not available for this change")
        }
        EvalexprError::FunctionIdentifierNotFound(name) => format!("unknown function {name}"),
        EvalexprError::CustomMessage(message) => message.clone(),
        EvalexprError::AdditionError { .. }
        | EvalexprError::SubtractionError { .. }
        | EvalexprError::NegationError { .. }
        | EvalexprError::MultiplicationError { .. }
        | EvalexprError::DivisionError { .. }
        | EvalexprError::ModulationError { .. } => {
            "arithmetic failed (overflow or division by zero)".into()
        }
        EvalexprError::WrongOperatorArgumentAmount { .. }
        | EvalexprError::WrongFunctionArgumentAmount { .. } => "wrong number of arguments".into(),
        _ => "a value of the wrong type (for example NULL where a number or text is needed)".into(),
    }
}

/// What a column reference resolves to in one event.
pub(crate) enum Resolved<'a> {
    /// A cell of the event, with its column.
    Cell(&'a Column, &'a Cell),
    /// There is no such image for this change (new.* of a delete, old.* of
    /// an insert): NULL.
    Absent,
    /// The value exists but the server did not send it (unchanged TOAST, a
    /// non-key column of a key-only old image) or the column is unknown.
    Unavailable,
}

/// Finds the cell `image.column` reads in `event`.
pub(crate) fn resolve<'a>(event: &'a RecordEvent, image: Image, column: &str) -> Resolved<'a> {
    let rel = &*event.relation;
    let Some(index) = rel.column_index(column) else {
        return Resolved::Unavailable;
    };
    let Some(col) = rel.columns.get(index) else {
        return Resolved::Unavailable;
    };
    let image = match (image, event.op) {
        (Image::Row, Op::Delete) => Image::Old,
        (Image::Row, _) => Image::New,
        (image, _) => image,
    };
    let full = rel.replica_identity == ReplicaIdentity::Full;
    match image {
        Image::New | Image::Row => {
            let Some(new) = event.new.as_ref() else {
                return Resolved::Absent;
            };
            match new.get(index) {
                Some(Cell::Unchanged) => match event.old.as_ref().and_then(|o| o.get(index)) {
                    Some(cell @ (Cell::Text(_) | Cell::Binary(_) | Cell::Null)) if full => {
                        Resolved::Cell(col, cell)
                    }
                    _ => Resolved::Unavailable,
                },
                Some(cell) => Resolved::Cell(col, cell),
                None => Resolved::Unavailable,
            }
        }
        Image::Old => match (event.old.as_ref(), event.op) {
            (Some(old), _) => {
                if !full && !col.key {
                    return Resolved::Unavailable;
                }
                match old.get(index) {
                    Some(Cell::Unchanged) | None => Resolved::Unavailable,
                    Some(cell) => Resolved::Cell(col, cell),
                }
            }
            // An update without an old image did not change its key.
            (None, Op::Update) if col.key && !full => {
                match event.new.as_ref().and_then(|n| n.get(index)) {
                    Some(cell @ (Cell::Text(_) | Cell::Binary(_) | Cell::Null)) => {
                        Resolved::Cell(col, cell)
                    }
                    _ => Resolved::Unavailable,
                }
            }
            (None, Op::Insert | Op::Truncate | Op::Read) => Resolved::Absent,
            (None, _) => Resolved::Unavailable,
        },
    }
}

/// A cell as an evalexpr value: NULL = `Empty`; `None` when it cannot be read.
fn cell_value(kind: &TypeKind, cell: &Cell) -> Option<Value> {
    let text = match cell {
        Cell::Null => return Some(Value::Empty),
        Cell::Text(bytes) => std::str::from_utf8(bytes).ok()?,
        Cell::Unchanged | Cell::Binary(_) => return None,
    };
    Some(text_value(kind, text))
}

fn text_value(kind: &TypeKind, text: &str) -> Value {
    match kind {
        TypeKind::Bool => match text {
            "t" => Value::Boolean(true),
            "f" => Value::Boolean(false),
            _ => Value::String(text.to_string()),
        },
        TypeKind::Int | TypeKind::Float | TypeKind::Numeric => {
            let integral = !text.contains(['.', 'e', 'E', 'n', 'N', 'i', 'I']);
            if integral {
                if let Ok(i) = text.parse::<i64>() {
                    return Value::Int(i);
                }
            }
            match text.parse::<f64>() {
                Ok(f) => Value::Float(f),
                Err(_) => Value::String(text.to_string()),
            }
        }
        _ => Value::String(text.to_string()),
    }
}

fn name_value(event: &RecordEvent, name: &Name) -> Option<Value> {
    match name {
        Name::Op => Some(Value::String(event.op.as_str().to_string())),
        Name::Table => Some(Value::String(event.relation.name.clone())),
        Name::Schema => Some(Value::String(event.relation.schema.clone())),
        Name::RecordId => Some(Value::String(event.id())),
        Name::Lsn => Some(Value::String(event.commit_lsn.to_string())),
        Name::Xid => Some(Value::Int(i64::from(event.xid))),
        Name::CommitTime => Some(Value::String(timestamp::format_rfc3339(event.commit_time))),
        Name::Column(image, column) => match resolve(event, *image, column) {
            Resolved::Cell(col, cell) => cell_value(&col.kind, cell),
            Resolved::Absent => Some(Value::Empty),
            Resolved::Unavailable => None,
        },
        _ => None,
    }
}

/// `changed("col")`: on updates, whether the column's text differs between
/// the old and new images. An unchanged TOASTed value is not changed. A key
/// column of an update without an old image did not change. A non-key
/// column without a full old image (REPLICA IDENTITY not FULL) is an error.
fn changed(event: &RecordEvent, column: &str) -> EvalexprResult<bool> {
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

/// The evalexpr context over one record event (see the module doc).
struct EventContext<'a> {
    event: &'a RecordEvent,
    names: &'a [(String, Name)],
    cache: &'a [OnceCell<Option<Value>>],
    functions: &'a TextFunctions,
}

impl Context for EventContext<'_> {
    fn get_value(&self, identifier: &str) -> Option<&Value> {
        let slot = self.names.iter().position(|(n, _)| n == identifier)?;
        let (_, name) = self.names.get(slot)?;
        self.cache
            .get(slot)?
            .get_or_init(|| name_value(self.event, name))
            .as_ref()
    }

    fn call_function(&self, identifier: &str, argument: &Value) -> EvalexprResult<Value> {
        match identifier {
            EQ => sql_eq(argument).map(Value::Boolean),
            NEQ => sql_eq(argument).map(|b| Value::Boolean(!b)),
            "is_null" => Ok(Value::Boolean(argument.is_empty())),
            "changed" => match argument {
                Value::String(column) => changed(self.event, column).map(Value::Boolean),
                _ => Err(EvalexprError::CustomMessage(
                    "changed() takes a column name".into(),
                )),
            },
            _ => self.functions.call(identifier, argument),
        }
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, disabled: bool) -> EvalexprResult<()> {
        if disabled {
            Err(EvalexprError::BuiltinFunctionsCannotBeDisabled)
        } else {
            Ok(())
        }
    }
}

/// The values per-batch expressions see.
#[derive(Debug, Clone)]
pub(crate) struct BatchValues {
    size: Value,
    first_lsn: Value,
    last_lsn: Value,
    id: Value,
    strategy: Value,
}

impl BatchValues {
    pub(crate) fn new(meta: &crate::batch::BatchMeta<'_>) -> BatchValues {
        BatchValues {
            size: Value::Int(i64::try_from(meta.size).unwrap_or(i64::MAX)),
            first_lsn: Value::String(meta.first_lsn.to_string()),
            last_lsn: Value::String(meta.last_lsn.to_string()),
            id: Value::String(meta.id.to_string()),
            strategy: Value::String(meta.strategy.to_string()),
        }
    }
}

struct BatchContext<'a> {
    batch: &'a BatchValues,
    names: &'a [(String, Name)],
    functions: &'a TextFunctions,
}

impl Context for BatchContext<'_> {
    fn get_value(&self, identifier: &str) -> Option<&Value> {
        let (_, name) = self.names.iter().find(|(n, _)| n == identifier)?;
        match name {
            Name::BatchSize => Some(&self.batch.size),
            Name::BatchFirstLsn => Some(&self.batch.first_lsn),
            Name::BatchLastLsn => Some(&self.batch.last_lsn),
            Name::BatchId => Some(&self.batch.id),
            Name::Strategy => Some(&self.batch.strategy),
            _ => None,
        }
    }

    fn call_function(&self, identifier: &str, argument: &Value) -> EvalexprResult<Value> {
        match identifier {
            EQ => sql_eq(argument).map(Value::Boolean),
            NEQ => sql_eq(argument).map(|b| Value::Boolean(!b)),
            "now" => Ok(Value::String(timestamp::format_rfc3339(
                timestamp::unix_now_micros(),
            ))),
            _ => self.functions.call(identifier, argument),
        }
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, disabled: bool) -> EvalexprResult<()> {
        if disabled {
            Err(EvalexprError::BuiltinFunctionsCannotBeDisabled)
        } else {
            Ok(())
        }
    }
}

/// `starts_with(x, "p")`, `ends_with(x, "s")`, `contains(x, "t")` on text
/// (`contains` on a tuple stays evalexpr's), `matches(x, "regex")` and
/// `json(x, "a.b.0")`: the regular expressions and paths are constants,
/// compiled here once at load, so a bad one is a config error. NULL in,
/// NULL out (as SQL's `LIKE`, `~` and `#>>`: a filter that ends in NULL is
/// not matched); `json` also gives NULL for a JSON null or a missing path.
#[derive(Debug, Clone, Default)]
struct TextFunctions {
    regexes: Vec<(String, regex::Regex)>,
    paths: Vec<(String, Vec<String>)>,
}

impl TextFunctions {
    fn compile(tree: &Node) -> Result<TextFunctions, String> {
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

    fn call(&self, identifier: &str, argument: &Value) -> EvalexprResult<Value> {
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
