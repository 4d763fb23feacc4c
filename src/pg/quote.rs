//! SQL quoting. Every identifier walhook sends or prints goes through
//! [`quote_ident`]; [`readable_ident`] leaves plain names bare for the fixes
//! shown in error messages, quoting with [`quote_ident`] when needed.

use crate::config::TableName;

/// `"name"` with embedded quotes doubled: the name means exactly itself
/// (case, reserved words, any character).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard-conforming strings; the
/// replication grammar has no backslash escapes either).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"schema"."table"`.
pub(crate) fn quote_table(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// An identifier for a message a person reads: bare when it is a plain
/// lower-case name that is not a reserved word, [`quote_ident`] otherwise.
pub(crate) fn readable_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain && !RESERVED.contains(&name) {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// `schema.table`, each part as [`readable_ident`].
pub(crate) fn readable_table(table: &TableName) -> String {
    format!(
        "{}.{}",
        readable_ident(&table.schema),
        readable_ident(&table.name)
    )
}

/// PostgreSQL's reserved key words (those that cannot be a bare column or
/// table name).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "system_user",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_with_quotes_doubled() {
        assert_eq!(quote_ident("orders"), r#""orders""#);
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_ident(""), r#""""#);
        let table = TableName::parse("Sales.order\"s").expect("table");
        assert_eq!(quote_table(&table), "\"Sales\".\"order\"\"s\"");
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"back\slash"), r"'back\slash'");
    }

    #[test]
    fn readable_identifiers_stay_bare_only_when_safe() {
        assert_eq!(readable_ident("orders"), "orders");
        assert_eq!(readable_ident("_x1$"), "_x1$");
        assert_eq!(readable_ident("Orders"), r#""Orders""#);
        assert_eq!(readable_ident("user"), r#""user""#);
        assert_eq!(readable_ident("1st"), r#""1st""#);
        assert_eq!(readable_ident("a b"), r#""a b""#);
        assert_eq!(readable_ident(r#"q"t"#), r#""q""t""#);
        let table = TableName::parse("public.Orders").expect("table");
        assert_eq!(readable_table(&table), r#"public."Orders""#);
    }
}
