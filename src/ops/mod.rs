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
    #[error("cannot connect to the source database: {0}")]
    Connect(#[source] tokio_postgres::Error),
    /// A statement failed.
    #[error("{what} failed: {source}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server or the slot is not in a state the command can act on.
    #[error("{0}")]
    Refused(String),
}

impl OpsError {
    pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> OpsError {
        let what = what.into();
        move |source| OpsError::Sql { what, source }
    }
}

/// Opens an ordinary SQL connection to the source database (no TLS yet:
/// `sslmode=require` and stricter fail here with tokio-postgres's message).
pub async fn connect(config: &Config) -> Result<Client, OpsError> {
    let mut pg: tokio_postgres::Config = config
        .source
        .url
        .expose()
        .parse()
        .map_err(OpsError::Connect)?;
    pg.application_name("walhook-ops");
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(10));
    }
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(OpsError::Connect)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "ops connection closed");
        }
    });
    Ok(client)
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
