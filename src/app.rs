//! Wires the stages together.

use crate::config::Config;
use tokio_util::sync::CancellationToken;

/// Options of `walhook run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print batches to stdout instead of POSTing them (a debug sink).
    pub stdout: bool,
}

/// Runs the pipeline until `shutdown` is cancelled or a fatal error.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = (config, opts, shutdown);
    anyhow::bail!("walhook run is not wired yet")
}
