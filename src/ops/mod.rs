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
use crate::pg::{self, ConnectError};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Connecting to the source database failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A statement failed (the server's message, detail and hint).
    #[error("{what} failed: {}", pg::describe(.source))]
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

/// Opens an ordinary SQL connection to the source database (same sslmode
/// handling as the replication connection, see [`crate::pg`]).
pub async fn connect(config: &Config) -> Result<Client, OpsError> {
    Ok(pg::connect(config.source.url.expose(), "walhook-ops").await?)
}

/// The strategies' tables, each once, sorted.
pub fn tables(config: &Config) -> Vec<TableName> {
    let set: BTreeSet<TableName> = config.strategies.iter().map(|s| s.table.clone()).collect();
    set.into_iter().collect()
}
