//! Expressions: evalexpr trees compiled once, evaluated against one record
//! event (filters, `record` fields), one batch (`headers`, `query`, `body`)
//! or one logical decoding message (`on_message`).
//!
//! - `names`: what each variable stands for and which role may read it;
//! - `functions`: the callable functions and the constants they compile;
//! - `sql`: the SQL `WHERE` semantics (NULL, `==`, three-valued logic);
//! - `context`: the one evalexpr context over an event, a batch or a message;
//! - `parse`: size and nesting limits, so no expression exhausts a stack.
//!
//! Two evalexpr behaviours are changed at compile time, to give filters
//! SQL `WHERE` semantics (see the module doc of [`crate::strategy`]):
//! - `==` and `!=` are rewritten into internal functions that fail on NULL
//!   and compare integers with floats by value (`100 == 100.0`);
//! - `&&`, `||` and `!` at the top of the expression are evaluated here,
//!   short-circuiting, with a failed operand acting like SQL's unknown
//!   (`is_null(new.x) || new.x > 5` is true for NULL; `false && <error>` is false).

mod context;
mod functions;
mod names;
mod parse;
mod sql;

use std::collections::BTreeSet;

use evalexpr::{EvalexprError, EvalexprResult, Node, Operator, Value};

use crate::batch::payload::Meta;
use crate::config::ExprRole;
use crate::decode::RecordEvent;

pub(crate) use context::{resolve, BatchValues, MessageValues, Resolved};
use context::{BatchScope, EventScope, ExprContext, MessageScope};
use functions::{changed_columns, check_function, TextFunctions};
use names::{parse_name, split_column, Name};
pub(crate) use names::{ColumnRef, Image};
use sql::{eval3, is_null_outcome, rewrite_equality, tuple_template};

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    tree: Node,
    /// Every distinct variable name read, with its meaning; the position is
    /// the cache slot in [`EventScope`].
    names: Vec<(String, Name)>,
    /// The text, regular expressions and JSON paths the functions use,
    /// compiled once at load.
    functions: TextFunctions,
}

impl Expr {
    /// Compiles `text` for `role`; the error says what is wrong, never a value.
    pub fn compile(text: &str, role: ExprRole) -> Result<Expr, String> {
        let mut tree = parse::parse(text)?;
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
        let context = ExprContext {
            scope: EventScope::new(event, self.names.len()),
            names: &self.names,
            functions: &self.functions,
        };
        eval3(&self.tree, &context)
    }

    /// Evaluates a filter: `Ok(true)` only for a boolean true.
    pub fn matches(&self, event: &RecordEvent) -> Result<bool, String> {
        self.verdict(event).into_result()
    }

    /// Evaluates a filter, telling SQL's unknown (a NULL met) from a failure.
    pub(crate) fn verdict(&self, event: &RecordEvent) -> Verdict {
        Verdict::of(self.eval_event(event))
    }

    /// Evaluates an `on_message` filter.
    pub(crate) fn verdict_message(&self, message: &MessageValues) -> Verdict {
        let context = ExprContext {
            scope: MessageScope(message),
            names: &self.names,
            functions: &self.functions,
        };
        Verdict::of(eval3(&self.tree, &context))
    }

    /// Evaluates against a batch's names.
    pub(crate) fn eval_batch(&self, batch: &BatchValues) -> EvalexprResult<Value> {
        eval3(
            &self.tree,
            &ExprContext {
                scope: BatchScope(batch),
                names: &self.names,
                functions: &self.functions,
            },
        )
    }
}

/// A filter's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// True or false.
    Decided(bool),
    /// Unknown because of a NULL (SQL's `WHERE`): not matched, an expected
    /// outcome for a nullable column.
    Null,
    /// The evaluation failed (value-free description).
    Failed(String),
}

impl Verdict {
    fn of(result: EvalexprResult<Value>) -> Verdict {
        match result {
            Ok(Value::Boolean(b)) => Verdict::Decided(b),
            Ok(Value::Empty) => Verdict::Null,
            Ok(_) => Verdict::Failed("the filter did not produce true or false".into()),
            Err(err) => Verdict::failed(&err),
        }
    }

    /// An evaluation error: [`Verdict::Null`] when it is SQL's unknown.
    pub(crate) fn failed(err: &EvalexprError) -> Verdict {
        if is_null_outcome(err) {
            Verdict::Null
        } else {
            Verdict::Failed(describe(err))
        }
    }

    /// `Ok(true)` only for true; unknown and failures are errors.
    fn into_result(self) -> Result<bool, String> {
        match self {
            Verdict::Decided(b) => Ok(b),
            Verdict::Null => Err("a NULL makes the filter unknown (not matched, as in SQL's \
                                  WHERE); use is_null(x)"
                .into()),
            Verdict::Failed(reason) => Err(reason),
        }
    }
}

/// Compiles `expr` for its role (the hook for [`crate::config::Config::check_expressions`]).
pub fn check_expression(site: &crate::config::ExprSite<'_>) -> Result<(), String> {
    Expr::compile(site.expr, site.role).map(|_| ())
}

/// The `new.`/`old.`/`row.` columns an expression reads, in order, without
/// duplicates; `changed("col")` reads both `old.col` and `new.col`.
pub(crate) fn referenced_columns(expr: &str) -> Result<Vec<ColumnRef>, String> {
    let tree = parse::parse(expr)?;
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
