//! `walhook run-strategy NAME`: one run without the admin server (seeding a
//! receiver from a shell or a job). Progress goes to stdout, one line per
//! page, rewritten in place on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use super::manager::{Counts, RunError, RunManager, Summary};
use crate::app::{self, AppError};
use crate::config::Config;
use crate::state::StateStore;
use crate::strategy::CompiledStrategy;

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

/// Why `run-strategy` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The strategy, filter or configuration is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Setting up failed (exit 1).
    #[error(transparent)]
    App(#[from] AppError),
    /// The run failed (exit 1).
    #[error("run failed: {0}")]
    Run(RunError),
}

impl CliError {
    /// A usage or configuration problem: exit 2.
    pub fn is_usage(&self) -> bool {
        match self {
            CliError::Usage(_) => true,
            CliError::App(e) => e.is_config(),
            CliError::Run(_) => false,
        }
    }
}

/// Runs the strategy once; `Ok` with its summary when every record was
/// delivered (a summary with failures is `Ok` too: the caller exits 1).
pub async fn run_strategy(config: Config, opts: RunStrategyOptions) -> Result<Summary, CliError> {
    if !config.strategies.iter().any(|s| s.name == opts.strategy) {
        let names: Vec<&str> = config.strategies.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::Usage(format!(
            "no strategy named {:?}; the configuration has {names:?}",
            opts.strategy
        )));
    }
    let strategies = CompiledStrategy::compile_all(&config)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .into_iter()
        .map(Arc::new)
        .collect();
    let endpoints = app::build_endpoints(&config)?;
    let url = config.source.url.expose().to_string();
    let state = StateStore::connect(&url, "walhook-state")
        .await
        .map_err(|e| AppError::Database(format!("state schema: {e}")))?;
    state
        .ensure_schema()
        .await
        .map_err(|e| AppError::Database(format!("creating the walhook state schema: {e}")))?;
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
        Ok(summary) => Ok(summary),
        Err(RunError::Filter(e)) => Err(CliError::Usage(format!("--filter: {e}"))),
        Err(e) => Err(CliError::Run(e)),
    }
}
