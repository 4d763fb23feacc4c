//! The one evalexpr [`Context`] and the three scopes it reads from: a
//! record event (filters and `record` fields), a batch (`headers`, `query`,
//! `body`) and a logical decoding message (`on_message`).
//!
//! Why an event is read through [`EventScope`] and not a `HashMapContext`:
//! an event carries its values as server text, and most filters read one or
//! two columns. The scope converts a column only when the expression asks
//! for it, once per evaluation, into a slot of a small cache (a
//! [`OnceCell`] per distinct name the expression reads, resolved at compile
//! time). evalexpr's `Context::get_value` returns a reference, which the
//! `OnceCell` provides soundly without filling a map per event.

use std::cell::OnceCell;

use evalexpr::{Context, EvalexprError, EvalexprResult, Value};

use super::functions::{changed, TextFunctions};
use super::names::{Image, Name};
use super::sql::{sql_eq, EQ, NEQ};
use crate::decode::{Cell, Column, Op, RecordEvent, ReplicaIdentity, TypeKind};
use crate::timestamp;

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

/// What one evaluation reads: the value of each name, and the functions
/// only this scope has (the rest are shared, in [`ExprContext`]).
pub(super) trait Scope {
    /// The value of `name`, the `slot`-th distinct name of the expression;
    /// `None` when this change does not have it.
    fn value(&self, slot: usize, name: &Name) -> Option<&Value>;
    /// A function of this scope, or `None` when it has no such function.
    fn function(&self, identifier: &str, argument: &Value) -> Option<EvalexprResult<Value>>;
}

/// The evalexpr context of one evaluation: an expression's names and
/// compiled function constants over one scope.
pub(super) struct ExprContext<'a, S> {
    pub(super) scope: S,
    pub(super) names: &'a [(String, Name)],
    pub(super) functions: &'a TextFunctions,
}

impl<S: Scope> Context for ExprContext<'_, S> {
    fn get_value(&self, identifier: &str) -> Option<&Value> {
        let slot = self.names.iter().position(|(n, _)| n == identifier)?;
        let (_, name) = self.names.get(slot)?;
        self.scope.value(slot, name)
    }

    fn call_function(&self, identifier: &str, argument: &Value) -> EvalexprResult<Value> {
        match identifier {
            EQ => sql_eq(argument).map(Value::Boolean),
            NEQ => sql_eq(argument).map(|b| Value::Boolean(!b)),
            _ => match self.scope.function(identifier, argument) {
                Some(result) => result,
                None => self.functions.call(identifier, argument),
            },
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

/// One record event, its columns converted when first read (see the module doc).
pub(super) struct EventScope<'a> {
    event: &'a RecordEvent,
    cache: Vec<OnceCell<Option<Value>>>,
}

impl<'a> EventScope<'a> {
    /// A scope for an expression reading `names` distinct names.
    pub(super) fn new(event: &'a RecordEvent, names: usize) -> EventScope<'a> {
        EventScope {
            event,
            cache: (0..names).map(|_| OnceCell::new()).collect(),
        }
    }
}

impl Scope for EventScope<'_> {
    fn value(&self, slot: usize, name: &Name) -> Option<&Value> {
        self.cache
            .get(slot)?
            .get_or_init(|| name_value(self.event, name))
            .as_ref()
    }

    fn function(&self, identifier: &str, argument: &Value) -> Option<EvalexprResult<Value>> {
        match identifier {
            "is_null" => Some(Ok(Value::Boolean(argument.is_empty()))),
            "changed" => Some(match argument {
                Value::String(column) => changed(self.event, column).map(Value::Boolean),
                _ => Err(EvalexprError::CustomMessage(
                    "changed() takes a column name".into(),
                )),
            }),
            _ => None,
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

/// The values an `on_message` filter sees.
#[derive(Debug, Clone)]
pub(crate) struct MessageValues {
    prefix: Value,
    content: Value,
    transactional: Value,
}

/// One batch.
pub(super) struct BatchScope<'a>(pub(super) &'a BatchValues);

impl Scope for BatchScope<'_> {
    fn value(&self, _slot: usize, name: &Name) -> Option<&Value> {
        let batch = self.0;
        match name {
            Name::BatchSize => Some(&batch.size),
            Name::BatchFirstLsn => Some(&batch.first_lsn),
            Name::BatchLastLsn => Some(&batch.last_lsn),
            Name::BatchId => Some(&batch.id),
            Name::Strategy => Some(&batch.strategy),
            _ => None,
        }
    }

    fn function(&self, identifier: &str, _argument: &Value) -> Option<EvalexprResult<Value>> {
        match identifier {
            "now" => Some(Ok(Value::String(timestamp::format_rfc3339(
                timestamp::unix_now_micros(),
            )))),
            _ => None,
        }
    }
}

impl MessageValues {
    /// The content as text (invalid UTF-8 replaced, for filtering only).
    pub(crate) fn new(prefix: &str, content: &[u8], transactional: bool) -> MessageValues {
        MessageValues {
            prefix: Value::String(prefix.to_string()),
            content: Value::String(String::from_utf8_lossy(content).into_owned()),
            transactional: Value::Boolean(transactional),
        }
    }
}

/// One logical decoding message.
pub(super) struct MessageScope<'a>(pub(super) &'a MessageValues);

impl Scope for MessageScope<'_> {
    fn value(&self, _slot: usize, name: &Name) -> Option<&Value> {
        let message = self.0;
        match name {
            Name::MessagePrefix => Some(&message.prefix),
            Name::MessageContent => Some(&message.content),
            Name::MessageTransactional => Some(&message.transactional),
            _ => None,
        }
    }

    fn function(&self, identifier: &str, argument: &Value) -> Option<EvalexprResult<Value>> {
        match identifier {
            "is_null" => Some(Ok(Value::Boolean(argument.is_empty()))),
            _ => None,
        }
    }
}
