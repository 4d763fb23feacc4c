//! `walhook run-strategy NAME`: one run without the admin server (seeding a
//! receiver from a shell or a job). Progress goes to stdout, one line per
//! page, rewritten in place on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use super::manager::{Counts, RunError, RunManager};
use crate::config::Config;
use crate::delivery::{build_endpoints, EndpointError};
use crate::state::{StateError, StateStore};
use crate::strategy::{CompiledStrategy, StrategyError};

/// What `run-strategy` was asked to do.
#[derive(Debug, Clone)]
pub struct RunStrategyOptions {
    /// The `[[strategies]]` name.
    pub strategy: String,
    /// Which rows (`row.<col>`, `new.<col>`); `None` = all.
    pub filter: Option<String>,
    /// At most this many records.
    pub limit: Option<u64>,
}

/// Why `run-strategy` stopped (see `crate::error` for the exit codes).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No such strategy.
    #[error("no strategy named {name:?}; the configuration has {known:?}")]
    NoStrategy { name: String, known: Vec<String> },
    /// A strategy's expressions do not compile.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// An endpoint cannot be built from its configuration.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// `--filter` does not compile or names a column the table lacks.
    #[error("--filter: {0}")]
    Filter(String),
    /// The state store cannot be reached or set up.
    #[error("the walhook state schema: {0}")]
    State(#[source] StateError),
    /// The run failed.
    #[error("run failed: {0}")]
    Run(#[source] RunError),
    /// The run ended, but records were dead-lettered.
    #[error("run {id}: {failed} records failed (dead-lettered)")]
    Failed { id: i64, failed: u64 },
}

/// Runs the strategy once, printing progress; an error also when records
/// were dead-lettered.
pub async fn run_strategy(config: Config, opts: RunStrategyOptions) -> Result<(), CliError> {
    if !config.strategies.iter().any(|s| s.name == opts.strategy) {
        return Err(CliError::NoStrategy {
            name: opts.strategy,
            known: config.strategies.iter().map(|s| s.name.clone()).collect(),
        });
    }
    let strategies = CompiledStrategy::compile_all(&config)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let endpoints = build_endpoints(&config)?;
    let url = config.source.url.expose().to_string();
    let state = StateStore::for_config(&config, "walhook-state")
        .await
        .map_err(CliError::State)?;
    state.ensure_schema().await.map_err(CliError::State)?;
    let manager = RunManager::new(Arc::new(config), strategies, endpoints, state, url);
    let terminal = std::io::stdout().is_terminal();
    let progress = Arc::new(move |id: i64, c: &Counts| {
        let line = format!(
            "run {id}: {} rows read, {} records sent, {} delivered, {} failed, {} batches",
            c.read, c.sent, c.delivered, c.failed, c.batches
        );
        let mut out = std::io::stdout().lock();
        let _ = if terminal {
            write!(out, "\r{line}\x1b[K")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    });
    let result = manager
        .run_to_end(&opts.strategy, opts.filter, opts.limit, progress)
        .await;
    if terminal {
        println!();
    }
    match result {
        Ok(summary) if summary.counts.failed == 0 => Ok(()),
        Ok(summary) => Err(CliError::Failed {
            id: summary.id,
            failed: summary.counts.failed,
        }),
        Err(RunError::Filter(e)) => Err(CliError::Filter(e)),
        Err(e) => Err(CliError::Run(e)),
    }
}
