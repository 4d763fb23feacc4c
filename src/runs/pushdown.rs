//! The part of a run's filter the database can evaluate, as SQL.
//!
//! A run over a large table with a narrow filter ("the open orders") should
//! not read every row. The simple comparisons of a filter — a column
//! against a literal with `==`, `!=`, `<`, `<=`, `>`, `>=`,
//! `contains((…), column)` (SQL `IN`), `is_null(column)`, joined by `&&`
//! (and `||` when both sides translate) — become the chunk query's `WHERE`.
//! What does not translate is left out, and the whole filter is still
//! evaluated on every row read, so the SQL only has to keep every row the
//! filter keeps: it may keep more, never fewer. That is why a comparison
//! is translated only where SQL and the filter agree on the values' order:
//! integers and numerics with numbers, booleans with booleans, text with
//! text under `COLLATE "C"` (byte order, as the filter compares); nothing
//! of other types (timestamps compare as text in a filter, as times in SQL).

use evalexpr::{Node, Operator, Value};

use crate::decode::{Relation, TypeKind};
use crate::pg::{quote_ident, quote_literal};

/// The SQL (over the table aliased `r`) that keeps at least every row
/// `filter` keeps; `None` when no part of it translates.
pub(crate) fn to_sql(filter: &str, relation: &Relation) -> Option<String> {
    let tree = evalexpr::build_operator_tree(filter).ok()?;
    translate(&tree, relation)
}

/// The node a parenthesised group wraps (evalexpr puts a root node around it).
fn bare(node: &Node) -> &Node {
    match (node.operator(), node.children()) {
        (Operator::RootNode, [only]) => bare(only),
        _ => node,
    }
}

fn translate(node: &Node, rel: &Relation) -> Option<String> {
    let node = bare(node);
    match (node.operator(), node.children()) {
        (Operator::And, [left, right]) => match (translate(left, rel), translate(right, rel)) {
            (Some(l), Some(r)) => Some(format!("({l}) AND ({r})")),
            // Dropping a conjunct keeps more rows: still a superset.
            (Some(one), None) | (None, Some(one)) => Some(one),
            (None, None) => None,
        },
        (Operator::Or, [left, right]) => {
            let (l, r) = (translate(left, rel)?, translate(right, rel)?);
            Some(format!("({l}) OR ({r})"))
        }
        (
            op @ (Operator::Eq
            | Operator::Neq
            | Operator::Lt
            | Operator::Leq
            | Operator::Gt
            | Operator::Geq),
            [left, right],
        ) => {
            let (column, value, flipped) = match (column(left, rel), constant(right)) {
                (Some(c), Some(v)) => (c, v, false),
                _ => (column(right, rel)?, constant(left)?, true),
            };
            let sql_op = match (op, flipped) {
                (Operator::Eq, _) => "=",
                (Operator::Neq, _) => "<>",
                (Operator::Lt, false) | (Operator::Gt, true) => "<",
                (Operator::Leq, false) | (Operator::Geq, true) => "<=",
                (Operator::Gt, false) | (Operator::Lt, true) => ">",
                _ => ">=",
            };
            let ordering = !matches!(op, Operator::Eq | Operator::Neq);
            comparison(&column, sql_op, &value, ordering)
        }
        (Operator::FunctionIdentifier { identifier }, [args]) if identifier == "is_null" => {
            let col = column(args, rel)?;
            Some(format!("r.{} IS NULL", quote_ident(&col.0)))
        }
        (Operator::FunctionIdentifier { identifier }, [args]) if identifier == "contains" => {
            let [list, needle] = bare(args).children() else {
                return None;
            };
            let col = column(needle, rel)?;
            let list = bare(list);
            if *list.operator() != Operator::Tuple {
                return None;
            }
            let items: Option<Vec<String>> = list
                .children()
                .iter()
                .map(|item| literal(&col.1, &constant(item)?))
                .collect();
            let items = items?;
            if items.is_empty() {
                return None;
            }
            Some(format!(
                "r.{} IN ({})",
                quote_ident(&col.0),
                items.join(", ")
            ))
        }
        _ => None,
    }
}

/// `row.<col>` or `new.<col>` of a column the table has: its name and kind.
fn column(node: &Node, rel: &Relation) -> Option<(String, TypeKind)> {
    let Operator::VariableIdentifierRead { identifier } = bare(node).operator() else {
        return None;
    };
    let name = identifier
        .strip_prefix("row.")
        .or_else(|| identifier.strip_prefix("new."))?;
    let index = rel.column_index(name)?;
    let kind = rel.columns.get(index)?.kind.clone();
    Some((name.to_string(), kind))
}

fn constant(node: &Node) -> Option<Value> {
    let node = bare(node);
    match node.operator() {
        Operator::Const { value } => Some(value.clone()),
        // `-5` parses as negation of a constant.
        Operator::Neg => match node.children() {
            [only] => match constant(only)? {
                Value::Int(i) => Some(Value::Int(i.checked_neg()?)),
                Value::Float(f) => Some(Value::Float(-f)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// `value` as an SQL literal for a column of `kind`, when SQL compares the
/// two as the filter does.
fn literal(kind: &TypeKind, value: &Value) -> Option<String> {
    match (kind, value) {
        (TypeKind::Int | TypeKind::Numeric | TypeKind::Float, Value::Int(i)) => Some(i.to_string()),
        (TypeKind::Numeric | TypeKind::Float, Value::Float(f)) if f.is_finite() => {
            Some(format!("{f:?}"))
        }
        (TypeKind::Bool, Value::Boolean(b)) => Some(b.to_string()),
        (TypeKind::Text, Value::String(s)) if !s.contains('\0') => Some(quote_literal(s)),
        _ => None,
    }
}

fn comparison(
    (name, kind): &(String, TypeKind),
    op: &str,
    value: &Value,
    ordering: bool,
) -> Option<String> {
    // An integer column against a fraction: compared as numeric.
    let (cast, literal) = match (kind, value) {
        (TypeKind::Int, Value::Float(f)) if f.is_finite() => ("::numeric", format!("{f:?}")),
        _ => ("", literal(kind, value)?),
    };
    let collate = if ordering && *kind == TypeKind::Text {
        " COLLATE \"C\""
    } else {
        ""
    };
    Some(format!(
        "r.{}{cast}{collate} {op} {literal}",
        quote_ident(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Column, ReplicaIdentity};

    fn relation() -> Relation {
        let column = |name: &str, kind| Column {
            name: name.into(),
            type_oid: 0,
            type_modifier: -1,
            key: false,
            kind,
        };
        Relation {
            oid: 1,
            schema: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", TypeKind::Int),
                column("status", TypeKind::Text),
                column("amount", TypeKind::Numeric),
                column("paid", TypeKind::Bool),
                column("at", TypeKind::Timestamptz),
            ],
        }
    }

    fn sql(filter: &str) -> Option<String> {
        to_sql(filter, &relation())
    }

    #[test]
    fn simple_comparisons_become_the_where_clause() {
        assert_eq!(
            sql(r#"row.status == "open""#).as_deref(),
            Some("r.\"status\" = 'open'")
        );
        assert_eq!(
            sql(r#"row.status == "open" && new.amount > 100"#).as_deref(),
            Some("(r.\"status\" = 'open') AND (r.\"amount\" > 100)")
        );
        assert_eq!(
            sql("100 < row.amount").as_deref(),
            Some("r.\"amount\" > 100")
        );
        assert_eq!(sql("row.id >= -5").as_deref(), Some("r.\"id\" >= -5"));
        assert_eq!(
            sql("row.id > 2.5").as_deref(),
            Some("r.\"id\"::numeric > 2.5")
        );
        assert_eq!(
            sql("row.paid == true").as_deref(),
            Some("r.\"paid\" = true")
        );
        assert_eq!(
            sql(r#"row.status < "m""#).as_deref(),
            Some("r.\"status\" COLLATE \"C\" < 'm'")
        );
        assert_eq!(
            sql(r#"contains(("open", "held"), row.status)"#).as_deref(),
            Some("r.\"status\" IN ('open', 'held')")
        );
        assert_eq!(
            sql("is_null(row.amount)").as_deref(),
            Some("r.\"amount\" IS NULL")
        );
        assert_eq!(
            sql(r#"row.status == "o'k""#).as_deref(),
            Some("r.\"status\" = 'o''k'")
        );
    }

    #[test]
    fn what_does_not_translate_is_left_to_the_filter_and_never_narrows() {
        // One side of && translates: the other is evaluated on the rows read.
        assert_eq!(
            sql(r#"row.status == "open" && len(row.status) > 2"#).as_deref(),
            Some("r.\"status\" = 'open'")
        );
        // One side of || does not: nothing can be pushed.
        assert_eq!(sql(r#"row.status == "open" || len(row.status) > 2"#), None);
        // Types SQL orders differently from the filter.
        assert_eq!(sql(r#"row.at > "2026-01-01""#), None);
        assert_eq!(sql(r#"row.amount > "100""#), None);
        assert_eq!(sql(r#"row.status > 5"#), None);
        // Negation, unknown columns, old.*.
        assert_eq!(sql(r#"!(row.status == "open")"#), None);
        assert_eq!(sql(r#"row.nope == 1"#), None);
        assert_eq!(sql(r#"old.id == 1"#), None);
        assert_eq!(sql("not a filter ((("), None);
    }
}
