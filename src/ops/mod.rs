//! The operator commands: `walhook check` (preflight findings with fixes),
//! `walhook setup` (publication, state schema, slot) and `walhook teardown`.
//!
//! Each command plans in plain code (SQL text, findings) and runs that plan
//! over one ordinary SQL connection, so `setup --print-sql` prints exactly
//! what `setup` would run, and the planning is unit-tested without a server.

mod check;
mod setup;
mod teardown;

pub use check::CheckOptions;
pub use setup::script as setup_script;
pub use teardown::{script as teardown_script, TeardownOptions};

use crate::error_class::{Classify, ErrorClass};
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
    /// A statement needs privileges the connecting role lacks: an
    /// administrator has to run it.
    #[error(
        "{what} failed: {}; the role in the configuration may not do this. \
         Run `walhook setup --print-sql -c <config>` (or `walhook teardown --print-sql`) and have \
         an administrator run the SQL with psql -v ON_ERROR_STOP=1 -f",
        pg::describe(.source)
    )]
    NeedsAdmin {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Reading the replication slot failed.
    #[error(transparent)]
    Slot(#[from] pg::SlotReadError),
    /// The server or the slot is not in a state the command can act on.
    #[error("{0}")]
    Refused(String),
    /// `walhook check` found errors (they are printed on stdout);
    /// `slot_lost`: one is a lost slot, which restarting will not repair.
    #[error("check found {errors} error{}", if *errors == 1 { "" } else { "s" })]
    CheckFailed { errors: usize, slot_lost: bool },
}

impl Classify for OpsError {
    fn class(&self) -> ErrorClass {
        match self {
            OpsError::Connect(err) => err.class(),
            // Restarting will not help until an administrator runs the SQL.
            OpsError::NeedsAdmin { .. } => ErrorClass::NeedsOperator,
            OpsError::CheckFailed {
                slot_lost: true, ..
            } => ErrorClass::NeedsOperator,
            OpsError::Sql { .. }
            | OpsError::Slot(_)
            | OpsError::Refused(_)
            | OpsError::CheckFailed { .. } => ErrorClass::Fatal,
        }
    }
}

impl OpsError {
    fn slot(err: pg::SlotReadError) -> OpsError {
        OpsError::Slot(err)
    }

    fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> OpsError {
        let what = what.into();
        move |source| OpsError::Sql { what, source }
    }
}

/// Opens an ordinary SQL connection to the source database (same sslmode
/// handling as the replication connection, see [`crate::pg`]).
async fn connect(config: &Config) -> Result<Client, OpsError> {
    Ok(pg::connect(config.source.url.expose(), "walhook-ops").await?)
}

/// A connection to the database holding the state schema, when that is not
/// the source database (`[state] url`).
async fn connect_state(config: &Config) -> Result<Option<Client>, OpsError> {
    match &config.state.url {
        Some(url) => Ok(Some(pg::connect(url.expose(), "walhook-ops").await?)),
        None => Ok(None),
    }
}

/// `walhook check`: prints every finding (one per line, or one JSON
/// document); an error when any finding is.
pub async fn check(config: &Config, opts: CheckOptions, json: bool) -> Result<(), OpsError> {
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
        errors => Err(OpsError::CheckFailed {
            errors,
            slot_lost: check::slot_lost(&findings),
        }),
    }
}

/// `walhook setup`: creates what is missing, printing each step.
pub async fn setup(config: &Config) -> Result<(), OpsError> {
    let client = connect(config).await?;
    let state = connect_state(config).await?;
    for step in setup::run(&client, state.as_ref().unwrap_or(&client), config).await? {
        println!("ok    {step}");
    }
    Ok(())
}

/// `walhook teardown`: drops what `opts` asks for, printing each step.
pub async fn teardown(config: &Config, opts: TeardownOptions) -> Result<(), OpsError> {
    let client = connect(config).await?;
    let state = connect_state(config).await?;
    for line in teardown::run(&client, state.as_ref().unwrap_or(&client), config, opts).await? {
        println!("{line}");
    }
    Ok(())
}

/// The strategies' tables, each once, sorted.
fn tables(config: &Config) -> Vec<TableName> {
    let set: BTreeSet<TableName> = config
        .strategies
        .iter()
        .filter_map(|s| s.table.clone())
        .collect();
    set.into_iter().collect()
}
