//! The operator commands: `walhook check` (preflight findings with fixes),
//! `walhook setup` (publication, state schema, slot) and `walhook teardown`.
//!
//! Each command plans in plain code (SQL text, findings) and runs that plan
//! over one ordinary SQL connection, so `setup --print-sql` prints exactly
//! what `setup` would run, and the planning is unit-tested without a server.

pub mod check;
pub mod setup;
pub mod teardown;

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::config::{Config, TableName};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Connecting to the source database failed.
    #[error("{0}")]
    Connect(#[source] crate::db::DbError),
    /// A statement failed (the server's message, detail and hint).
    #[error("{what} failed: {message}")]
    Sql { what: String, message: String },
    /// The server or the slot is not in a state the command can act on.
    #[error("{0}")]
    Refused(String),
    /// `walhook check` found errors (they are printed on stdout).
    #[error("check found {errors} error{}", if *errors == 1 { "" } else { "s" })]
    CheckFailed { errors: usize },
}

impl OpsError {
    pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> OpsError {
        let what = what.into();
        move |err| OpsError::Sql {
            what,
            message: describe(&err),
        }
    }
}

/// A database error as the server worded it: message, detail, hint and
/// SQLSTATE; other errors with their causes.
pub fn describe(err: &tokio_postgres::Error) -> String {
    let Some(db) = err.as_db_error() else {
        return crate::delivery::sender::describe(err);
    };
    let mut out = db.message().to_string();
    if let Some(detail) = db.detail() {
        out.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; hint: {hint}"));
    }
    out.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
    out
}

/// Opens an ordinary SQL connection to the source database (same sslmode
/// handling as the replication connection, see [`crate::db`]).
pub async fn connect(config: &Config) -> Result<Client, OpsError> {
    crate::db::connect(config.source.url.expose(), "walhook-ops")
        .await
        .map_err(OpsError::Connect)
}

/// `walhook check`: prints every finding (one per line, or one JSON
/// document); an error when any finding is.
pub async fn check(config: &Config, opts: check::CheckOptions, json: bool) -> Result<(), OpsError> {
    let findings = check::run(config, opts).await;
    if json {
        println!("{:#}", check::to_json(&findings));
    } else {
        for finding in &findings {
            println!("{finding}");
        }
    }
    match check::error_count(&findings) {
        0 => Ok(()),
        errors => Err(OpsError::CheckFailed { errors }),
    }
}

/// `walhook setup`: creates what is missing, printing each step.
pub async fn setup(config: &Config) -> Result<(), OpsError> {
    let client = connect(config).await?;
    for step in setup::run(&client, config).await? {
        println!("ok    {step}");
    }
    Ok(())
}

/// `walhook teardown`: drops what `opts` asks for, printing each step.
pub async fn teardown(config: &Config, opts: teardown::TeardownOptions) -> Result<(), OpsError> {
    let client = connect(config).await?;
    for line in teardown::run(&client, config, opts).await? {
        println!("{line}");
    }
    Ok(())
}

/// The strategies' tables, each once, sorted.
pub fn tables(config: &Config) -> Vec<TableName> {
    let set: BTreeSet<TableName> = config.strategies.iter().map(|s| s.table.clone()).collect();
    set.into_iter().collect()
}

/// `"schema"."table"`.
pub fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        crate::cluster::quote_ident(&table.schema),
        crate::cluster::quote_ident(&table.name)
    )
}

/// Quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    crate::cluster::quote_ident(name)
}

/// Quotes an SQL string literal (standard_conforming_strings on).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(literal("it's"), "'it''s'");
        let table = TableName::parse("Sales.order\"s").expect("table");
        assert_eq!(qualified(&table), "\"Sales\".\"order\"\"s\"");
    }
}
