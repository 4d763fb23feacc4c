//! What a valid configuration is turned into before anything runs, built
//! one way for `walhook run` at startup, for a reload and for
//! `walhook run-strategy`: three copies of this drifted apart once (a
//! reload compiled without the live schema's group columns on the async
//! thread; `run-strategy` skipped the schema checks), so a reload could
//! apply what startup would have refused or built differently.
//!
//! Nothing here changes the database: creating the publication and the
//! state schema is the caller's, after [`prepare`] has passed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinError;
use tokio_postgres::Client;

use crate::config::Config;
use crate::delivery::{build_endpoints, Endpoint, EndpointError};
use crate::error_class::{Classify, ErrorClass};
use crate::strategy::{self, CompiledStrategy, SchemaError, SchemaProblem, StrategyError};

/// A configuration's strategies and endpoints, checked against the live
/// schema.
pub(crate) struct Prepared {
    /// One per `[[strategies]]` entry, in the file's order, with the group
    /// columns the live schema gives `ordering = "key"`.
    pub(crate) strategies: Vec<Arc<CompiledStrategy>>,
    /// By name.
    pub(crate) endpoints: BTreeMap<String, Arc<Endpoint>>,
}

/// Why a configuration cannot be prepared. Every variant but
/// [`PrepareError::Task`] (and a catalog query that failed) means the
/// configuration or the database must change first ([`Classify`]).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// An expression does not compile.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The live schema could not be read.
    #[error(transparent)]
    Catalog(#[from] SchemaError),
    /// The live schema does not match the strategies.
    #[error("the database does not match the configuration:\n{}", list(.0))]
    Schema(Vec<SchemaProblem>),
    /// An endpoint cannot be built (TLS files, keys).
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The blocking task building the endpoints panicked or was cancelled.
    #[error("building the endpoints: {0}")]
    Task(#[from] JoinError),
}

impl Classify for PrepareError {
    fn class(&self) -> ErrorClass {
        match self {
            PrepareError::Strategy(_) | PrepareError::Schema(_) | PrepareError::Endpoint(_) => {
                ErrorClass::NeedsOperator
            }
            PrepareError::Catalog(err) => err.class(),
            PrepareError::Task(_) => ErrorClass::Fatal,
        }
    }
}

fn list(problems: &[SchemaProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compiles the expressions, checks the live schema (tables, columns,
/// replica identity, publication membership) and reads the group columns
/// over `client`, while the endpoints' HTTP clients are built on a blocking
/// thread (reading the CA roots blocks). Errors come in that order: an
/// endpoint's only once the checks passed.
pub(crate) async fn prepare(config: &Config, client: &Client) -> Result<Prepared, PrepareError> {
    let mut strategies = CompiledStrategy::compile_all(config)?;
    let owned = config.clone();
    let endpoints = tokio::task::spawn_blocking(move || build_endpoints(&owned));
    let problems = strategy::validate_schema(client, config).await?;
    if !problems.is_empty() {
        return Err(PrepareError::Schema(problems));
    }
    let columns = strategy::group_columns(client, config).await?;
    for (compiled, columns) in strategies.iter_mut().zip(columns) {
        compiled.set_group_columns(columns);
    }
    let endpoints = endpoints.await??;
    Ok(Prepared {
        strategies: strategies.into_iter().map(Arc::new).collect(),
        endpoints,
    })
}
