//! Wires the stages together. Nothing here transforms data; each stage owns
//! its job, and this module only builds them from the configuration,
//! connects them with bounded channels and stops them in the right order:
//!
//! ```text
//! source ──events──▶ router ──WorkItem──▶ worker per strategy ──▶ endpoint
//!    ▲                  │ queued/seen            │ delivered
//!    └──── ack ◀── checkpoint ◀──────────────────┘
//! ```
//!
//! Startup checks everything it can before the slot is touched: the
//! configuration (main.rs), the expressions (compiled here), the live schema
//! (tables, columns, replica identity, publication membership). Problems of
//! that kind are [`AppError::is_config`] and exit 2.
//!
//! Shutdown order: stop routing and let each worker finish its batch in
//! flight (its checkpoint advances), then stop the source, which sends the
//! final standby status with the last acknowledged position.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, StrategyState, StrategyStatus};
use crate::batch::Decorate;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::decode::SourceEvent;
use crate::delivery::security::EndpointSecurity;
use crate::delivery::worker::{DeliveryState, StatusHandle, DEFAULT_QUEUE_CAPACITY};
use crate::delivery::{tls, Endpoint, StrategyWorker, WorkerOptions};
use crate::lsn::Lsn;
use crate::pg;
use crate::source::{Source, SourceError, SourceOptions};
use crate::state::StateStore;
use crate::strategy::{self, CompiledStrategy, Route, Router, SchemaProblem};
use crate::telemetry;

/// Events buffered between the source and the router.
pub(crate) const SOURCE_CHANNEL: usize = 1024;
/// How long a worker may take to finish its batch in flight at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `walhook run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print committed records to stdout as JSON lines instead of delivering them.
    pub stdout: bool,
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("{0}")]
    Database(String),
    #[error("the database does not match the configuration:\n{}", list(.0))]
    Schema(Vec<SchemaProblem>),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Startup(String),
    #[error("{0}")]
    Stage(String),
    #[error("a pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl AppError {
    /// A problem with the configuration or with the database objects it
    /// names: restarting will not fix it (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, AppError::Schema(_) | AppError::Config(_))
    }
}

fn list(problems: &[SchemaProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Source options from the configuration.
pub fn source_options(config: &Config) -> SourceOptions {
    SourceOptions::new(
        config.source.url.expose().to_string(),
        config.source.slot.clone(),
        vec![config.source.publication.clone()],
    )
}

/// Runs the pipeline until `shutdown` is cancelled or a fatal error.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    if opts.stdout {
        return crate::stdout_sink::run(config, shutdown).await;
    }
    let prom = telemetry::install_recorder().map_err(|e| AppError::Startup(e.to_string()))?;
    telemetry::describe();
    let pipeline = Pipeline::build(&config).await?;
    pipeline.run(&config, prom, shutdown).await
}

/// Everything built from the configuration before the slot is touched.
struct Pipeline {
    strategies: Vec<Arc<CompiledStrategy>>,
    endpoints: std::collections::BTreeMap<String, Arc<Endpoint>>,
    state: StateStore,
}

impl Pipeline {
    async fn build(config: &Config) -> Result<Pipeline, AppError> {
        let url = config.source.url.expose();
        let client = pg::connect(url, "walhook")
            .await
            .map_err(|e| AppError::Database(e.to_string()))?;
        let strategies = CompiledStrategy::compile_all(config)
            .map_err(|e| AppError::Config(e.to_string()))?
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>();
        let problems = strategy::validate_schema(&client, config)
            .await
            .map_err(|e| AppError::Database(e.to_string()))?;
        if !problems.is_empty() {
            return Err(AppError::Schema(problems));
        }
        let endpoints = build_endpoints(config)?;
        match strategy::ensure_publication(&client, config)
            .await
            .map_err(|e| AppError::Database(e.to_string()))?
        {
            strategy::PublicationOutcome::Created { tables } => {
                let tables: Vec<String> = tables.iter().map(ToString::to_string).collect();
                tracing::info!(publication = %config.source.publication, tables = ?tables, "created the publication for the strategies' tables");
            }
            strategy::PublicationOutcome::Existing => {}
        }
        let state = StateStore::connect(url, "walhook-state")
            .await
            .map_err(|e| AppError::Database(format!("state schema: {e}")))?;
        state
            .ensure_schema()
            .await
            .map_err(|e| AppError::Database(format!("creating the walhook state schema: {e}")))?;
        Ok(Pipeline {
            strategies,
            endpoints,
            state,
        })
    }

    async fn run(
        self,
        config: &Config,
        prom: metrics_exporter_prometheus::PrometheusHandle,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let listener = admin::bind(config.admin.listen)
            .await
            .map_err(|e| AppError::Startup(e.to_string()))?;
        let (source, ack, status) = Source::new(source_options(config));
        let checkpoint = Arc::new(Checkpoint::new(
            self.strategies.len(),
            Lsn::ZERO,
            move |lsn| ack.ack(lsn),
        ));

        let workers_stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        let mut routes = Vec::new();
        let mut statuses: Vec<(String, StatusHandle)> = Vec::new();
        let mut pauses = Vec::new();
        for (index, compiled) in self.strategies.iter().enumerate() {
            let cfg = &config.strategies[index];
            let endpoint = self.endpoints.get(&cfg.endpoint).cloned().ok_or_else(|| {
                AppError::Config(format!(
                    "strategies[{index}].endpoint: no endpoint named {:?}",
                    cfg.endpoint
                ))
            })?;
            let retry = config
                .endpoint_of(cfg)
                .map(|e| e.retry.clone())
                .unwrap_or_default();
            let decorate: Arc<dyn Decorate> = compiled.clone();
            let (worker, tx) = StrategyWorker::new(WorkerOptions {
                index,
                name: cfg.name.clone(),
                batch_size: cfg.batch_size,
                max_batch_bytes: cfg.max_batch_bytes,
                linger: cfg.linger,
                retry,
                endpoint,
                decorate,
                checkpoint: checkpoint.clone(),
                state: Some(self.state.clone()),
                shutdown_timeout: SHUTDOWN_TIMEOUT,
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
            })
            .map_err(|e| AppError::Config(e.to_string()))?;
            telemetry::register_strategy(&cfg.name);
            statuses.push((cfg.name.clone(), worker.status()));
            pauses.push((cfg.name.clone(), worker.pause_handle()));
            routes.push(Route {
                strategy: compiled.clone(),
                tx,
            });
            let stop = workers_stop.clone();
            let name = cfg.name.clone();
            workers.spawn(async move { (name, worker.run(stop).await) });
        }
        let router = Router::new(routes, checkpoint.clone());

        let admin_stop = CancellationToken::new();
        let statuses = Arc::new(statuses);
        let strategies_status = {
            let statuses = statuses.clone();
            move || {
                statuses
                    .iter()
                    .map(|(name, handle)| admin_status(name, handle))
                    .collect::<Vec<_>>()
            }
        };
        let mut admin_state = AdminState::new(config, status.clone(), prom.clone())
            .with_strategies(Arc::new(strategies_status));
        match StateStore::connect(config.source.url.expose(), "walhook-admin").await {
            Ok(store) => admin_state = admin_state.with_dead_letters(store),
            Err(err) => tracing::warn!(error = %err, "dead-letter API unavailable"),
        }
        let replay_targets = config
            .strategies
            .iter()
            .zip(&self.strategies)
            .filter_map(|(cfg, compiled)| {
                let endpoint = self.endpoints.get(&cfg.endpoint)?.clone();
                let decorate: Arc<dyn Decorate> = compiled.clone();
                Some((cfg.name.clone(), endpoint, decorate))
            })
            .collect();
        let runs = crate::runs::RunManager::new(
            Arc::new(config.clone()),
            self.strategies.clone(),
            self.endpoints.clone(),
            self.state.clone(),
            config.source.url.expose().to_string(),
        );
        admin_state = admin_state.with_control(Arc::new(
            crate::runs::AppControl::new(runs.clone(), config)
                .with_pauses(pauses)
                .with_replay(self.state.clone(), replay_targets),
        ));
        let mut schedules =
            crate::runs::schedule::spawn(runs.clone(), config, status.clone(), admin_stop.clone());
        let admin_task = tokio::spawn(admin::serve(listener, admin_state, admin_stop.clone()));
        let upkeep = telemetry::spawn_upkeep(prom, status.clone(), admin_stop.clone());

        let (events_tx, events_rx) = mpsc::channel::<SourceEvent>(SOURCE_CHANNEL);
        let source_stop = CancellationToken::new();
        let mut source_task = tokio::spawn(source.run(events_tx, source_stop.clone()));
        let router_stop = CancellationToken::new();
        let mut router_task = tokio::spawn(route_events(router, events_rx, router_stop.clone()));

        // Run until a signal or until a stage stops on its own.
        let mut failure: Option<AppError> = None;
        let mut source_done = false;
        let mut router_done = false;
        // The router's receiver stays open until the source has stopped: a
        // source that found it closed would stop with "downstream closed".
        let mut events_keep: Option<mpsc::Receiver<SourceEvent>> = None;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            result = &mut source_task => {
                source_done = true;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(AppError::Source(e)),
                    Err(e) => failure = Some(AppError::Task(e)),
                }
            }
            result = &mut router_task => {
                router_done = true;
                match result {
                    Ok((Ok(()), rx)) => events_keep = Some(rx),
                    Ok((Err(e), rx)) => {
                        events_keep = Some(rx);
                        failure = Some(AppError::Stage(e.to_string()));
                    }
                    Err(e) => failure = Some(AppError::Task(e)),
                }
            }
            Some(joined) = workers.join_next() => {
                match joined {
                    Ok((name, Err(e))) => failure = Some(AppError::Stage(format!("strategy {name}: {e}"))),
                    Ok((name, Ok(()))) => failure = Some(AppError::Stage(format!("strategy {name}: worker stopped"))),
                    Err(e) => failure = Some(AppError::Task(e)),
                }
            }
        }

        // 1. Stop routing and let every worker finish its batch in flight.
        router_stop.cancel();
        workers_stop.cancel();
        if !router_done {
            match router_task.await {
                Ok((result, rx)) => {
                    events_keep = Some(rx);
                    if let Err(e) = result {
                        failure.get_or_insert(AppError::Stage(e.to_string()));
                    }
                }
                Err(e) => {
                    failure.get_or_insert(AppError::Task(e));
                }
            }
        }
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok((name, Err(e))) => {
                    tracing::warn!(strategy = %name, error = %e, "strategy worker stopped with an error");
                }
                Ok((_, Ok(()))) => {}
                Err(e) if failure.is_none() => failure = Some(AppError::Task(e)),
                Err(_) => {}
            }
        }
        // 2. Stop the source: it sends the last acknowledged position.
        source_stop.cancel();
        if !source_done {
            match source_task.await {
                Ok(Err(e)) if failure.is_none() => failure = Some(AppError::Source(e)),
                Err(e) if failure.is_none() => failure = Some(AppError::Task(e)),
                _ => {}
            }
        }
        drop(events_keep);
        admin_stop.cancel();
        let _ = admin_task.await;
        while schedules.join_next().await.is_some() {}
        runs.shutdown(Duration::from_secs(10)).await;
        let _ = upkeep.await;
        tracing::info!(acked_lsn = %checkpoint.acked(), "walhook stopped");
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// One [`Endpoint`] (auth, signing, TLS) per endpoint a strategy uses.
pub fn build_endpoints(
    config: &Config,
) -> Result<std::collections::BTreeMap<String, Arc<Endpoint>>, AppError> {
    let mut endpoints = std::collections::BTreeMap::new();
    for (name, cfg) in &config.endpoints {
        if !config.strategies.iter().any(|s| &s.endpoint == name) {
            continue;
        }
        let token_client = tls::configure(
            reqwest::Client::builder()
                .timeout(cfg.timeout)
                .connect_timeout(cfg.connect_timeout)
                .redirect(reqwest::redirect::Policy::none()),
            &cfg.tls,
            name,
        )
        .map_err(|e| AppError::Config(format!("endpoints.{name}.tls: {e}")))?
        .build()
        .map_err(|e| AppError::Config(format!("endpoints.{name}: HTTP client: {e}")))?;
        let security = EndpointSecurity::new(name, cfg, token_client)
            .map_err(|e| AppError::Config(e.to_string()))?;
        let endpoint = Endpoint::with_tls(name, cfg, Arc::new(security), |b| {
            tls::configure(b, &cfg.tls, name)
        })
        .map_err(|e| AppError::Config(e.to_string()))?;
        endpoints.insert(name.clone(), Arc::new(endpoint));
    }
    Ok(endpoints)
}

fn admin_status(name: &str, handle: &StatusHandle) -> StrategyStatus {
    let s = handle.snapshot();
    StrategyStatus {
        name: name.to_string(),
        state: match s.state {
            _ if s.paused => StrategyState::Paused,
            DeliveryState::Retrying | DeliveryState::Blocked => StrategyState::Failing,
            DeliveryState::Idle | DeliveryState::Delivering | DeliveryState::Stopped => {
                StrategyState::Running
            }
        },
        queue_records: s.queue_records,
        last_success: s
            .last_success
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(SystemTime::from),
        last_error: s.last_error,
        attempts: u64::from(s.attempts),
    }
}

/// Routes source events until `stop`, also while waiting on a full queue.
/// Returns the receiver so the caller can keep it open while the source stops.
async fn route_events(
    mut router: Router,
    mut rx: mpsc::Receiver<SourceEvent>,
    stop: CancellationToken,
) -> (
    Result<(), strategy::RouteError>,
    mpsc::Receiver<SourceEvent>,
) {
    let result = loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            event = rx.recv() => match event {
                Some(event) => event,
                None => break Ok(()),
            },
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            routed = router.route(event) => if let Err(e) = routed { break Err(e) },
        }
    };
    // Dropping the router closes the strategies' queues.
    drop(router);
    (result, rx)
}
