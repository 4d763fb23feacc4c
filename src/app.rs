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
//! that kind exit 2 (see [`crate::error`]).
//!
//! Shutdown order: stop routing and let each worker finish its batch in
//! flight (its checkpoint advances), then stop the source, which sends the
//! final standby status with the last acknowledged position. The router's
//! receiver stays open until the source has stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminError, AdminState, WorkerStatuses};
use crate::batch::Decorate;
use crate::budget::Budget;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, Secret};
use crate::decode::SourceEvent;
use crate::delivery::worker::DEFAULT_QUEUE_CAPACITY;
use crate::delivery::{
    build_endpoints, Boundaries, DeliveryError, Endpoint, EndpointError, PauseHandle, RetryHandle,
    StatusHandle, StrategyWorker, WorkerOptions,
};
use crate::lsn::Lsn;
use crate::pg::{self, ConnectError};
use crate::runs::{schedule, spawn_pause_sync, AppControl, RunManager, ScheduleBoard};
use crate::source::{Backoff, Source, SourceError, SourceOptions, SourceStatus};
use crate::state::{StateError, StateStore};
use crate::strategy::{
    self, CompiledStrategy, PublicationOutcome, Route, RouteError, Router, SchemaError,
    SchemaProblem, StrategyError,
};
use crate::telemetry::{self, TelemetryError};

/// How long a worker may take to finish its batch in flight at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long runs in progress get to record their outcome at shutdown.
const RUNS_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("connecting to the source database: {0}")]
    Connect(#[source] ConnectError),
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    #[error(transparent)]
    Catalog(#[from] SchemaError),
    #[error("the database does not match the configuration:\n{}", list(.0))]
    Schema(Vec<SchemaProblem>),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("strategies[{index}].endpoint: no endpoint named {name:?}")]
    NoEndpoint { index: usize, name: String },
    #[error("the walhook state schema: {0}")]
    State(#[source] StateError),
    #[error(transparent)]
    Worker(DeliveryError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("strategy {strategy}: {source}")]
    Delivery {
        strategy: String,
        #[source]
        source: DeliveryError,
    },
    #[error("strategy {strategy}: worker stopped")]
    WorkerStopped { strategy: String },
    #[error("a pipeline task failed: {0}")]
    Task(#[from] JoinError),
}

fn list(problems: &[SchemaProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the pipeline until `shutdown` is cancelled or a stage stops.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let prom = telemetry::install_recorder()?;
    telemetry::describe();
    let listener = admin::bind(config.admin.listen).await?;
    let budget = Budget::new(config.source.max_buffer_bytes);
    let mut opts = SourceOptions::from_config(&config.source);
    opts.budget = Some(budget.clone());
    opts.messages = config.strategies.iter().any(|s| s.messages.is_some());
    let capacity = opts.channel_capacity;
    let (source, ack, source_status) = Source::new(opts);
    // Probes and /status answer while the database is not up yet.
    let early = CancellationToken::new();
    let early_admin = tokio::spawn(admin::serve(
        admin::share(&listener)?,
        AdminState::new(&config, source_status.clone(), prom.clone()),
        early.clone(),
    ));
    let built = match wait_for_database(&config, &source, &shutdown).await {
        Ok(Some(client)) => Pipeline::build(&config, client).await.map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    early.cancel();
    early_admin.await??;
    let Some(pipeline) = built? else {
        tracing::info!("walhook stopped before the database was up");
        return Ok(());
    };
    let checkpoint = Arc::new(Checkpoint::new(
        pipeline.strategies.len(),
        Lsn::ZERO,
        move |lsn| ack.ack(lsn),
    ));
    let confirmed_stop = CancellationToken::new();
    let (confirmed, confirmed_task) = checkpoint::watch_confirmed(
        config.source.url.expose().to_string(),
        config.source.slot.clone(),
        confirmed_stop.clone(),
    );
    let boundaries = Boundaries {
        confirmed,
        resumed_from: source.resumed_from(),
    };
    let workers = Workers::start(&config, &pipeline, &checkpoint, &boundaries)?;
    let services = Services::start(
        &config,
        &pipeline,
        &workers,
        listener,
        source_status.clone(),
        prom,
    )
    .await;
    let mut stages = Stages::start(source, capacity, workers, checkpoint, budget);
    let first = stages.until_one_stops(&shutdown).await;
    let failure = stages.stop(first).await;
    confirmed_stop.cancel();
    let _ = confirmed_task.await;
    services.stop().await;
    // What Postgres was last told (also when this process routed nothing).
    let acked = source_status.borrow().acked_lsn;
    tracing::info!(acked_lsn = %acked, "walhook stopped");
    failure.map_or(Ok(()), Err)
}

/// Everything built from the configuration before the slot is touched.
struct Pipeline {
    strategies: Vec<Arc<CompiledStrategy>>,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    state: StateStore,
}

impl Pipeline {
    async fn build(config: &Config, client: Client) -> Result<Pipeline, AppError> {
        let mut strategies = CompiledStrategy::compile_all(config)?;
        let problems = strategy::validate_schema(&client, config).await?;
        if !problems.is_empty() {
            return Err(AppError::Schema(problems));
        }
        let columns = strategy::group_columns(&client, config).await?;
        for (compiled, columns) in strategies.iter_mut().zip(columns) {
            compiled.set_group_columns(columns);
        }
        let strategies: Vec<Arc<CompiledStrategy>> = strategies.into_iter().map(Arc::new).collect();
        let endpoints = build_endpoints(config)?;
        if let PublicationOutcome::Created { tables } =
            strategy::ensure_publication(&client, config).await?
        {
            let tables: Vec<String> = tables.iter().map(ToString::to_string).collect();
            tracing::info!(publication = %config.source.publication, tables = ?tables, "created the publication for the strategies' tables");
        }
        let state = StateStore::for_config(config, "walhook-state")
            .await
            .map_err(AppError::State)?;
        state.ensure_schema().await.map_err(AppError::State)?;
        Ok(Pipeline {
            strategies,
            endpoints,
            state,
        })
    }
}

/// Connects to the source database, waiting with backoff while it is not
/// up yet (a pod started before its database, a host reboot): the wait is
/// logged and shown in `/readyz` and `/status`. What waiting cannot fix (a
/// refused login, a missing database, TLS settings) fails at once. `None`
/// when `shutdown` came first.
async fn wait_for_database(
    config: &Config,
    source: &Source,
    shutdown: &CancellationToken,
) -> Result<Option<Client>, AppError> {
    let url = config.source.url.expose();
    let mut backoff = Backoff::default();
    let mut waited = false;
    loop {
        let connected = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            connected = pg::connect(url, "walhook") => connected,
        };
        let err = match connected {
            Ok(client) => {
                if waited {
                    tracing::info!("the database is up");
                }
                return Ok(Some(client));
            }
            Err(err) if err.is_transient() => err,
            Err(err) => return Err(AppError::Connect(err)),
        };
        waited = true;
        let delay = backoff.next_delay();
        tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "waiting for the database");
        source.report_waiting(format!("waiting for the database: {err}"));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One delivery worker per strategy, and what the router and the admin API
/// need of them.
struct Workers {
    tasks: JoinSet<(String, Result<(), DeliveryError>)>,
    stop: CancellationToken,
    routes: Vec<Route>,
    statuses: Vec<(String, StatusHandle)>,
    pauses: Vec<(String, PauseHandle)>,
    retries: Vec<(String, RetryHandle)>,
}

impl Workers {
    fn start(
        config: &Config,
        pipeline: &Pipeline,
        checkpoint: &Arc<Checkpoint>,
        boundaries: &Boundaries,
    ) -> Result<Workers, AppError> {
        let mut workers = Workers {
            tasks: JoinSet::new(),
            stop: CancellationToken::new(),
            routes: Vec::new(),
            statuses: Vec::new(),
            pauses: Vec::new(),
            retries: Vec::new(),
        };
        for (index, compiled) in pipeline.strategies.iter().enumerate() {
            let cfg = &config.strategies[index];
            let endpoint = pipeline
                .endpoints
                .get(&cfg.endpoint)
                .cloned()
                .ok_or_else(|| AppError::NoEndpoint {
                    index,
                    name: cfg.endpoint.clone(),
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
                max_in_flight: cfg.max_in_flight,
                ordering: cfg.ordering,
                retry,
                endpoint,
                decorate,
                checkpoint: checkpoint.clone(),
                state: Some(pipeline.state.clone()),
                boundaries: Some(boundaries.clone()),
                shutdown_timeout: SHUTDOWN_TIMEOUT,
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
            })
            .map_err(AppError::Worker)?;
            let schedules: Vec<&str> = cfg.schedules.iter().map(|s| s.name()).collect();
            telemetry::register_strategy(&cfg.name, &schedules);
            workers.statuses.push((cfg.name.clone(), worker.status()));
            workers
                .pauses
                .push((cfg.name.clone(), worker.pause_handle()));
            workers
                .retries
                .push((cfg.name.clone(), worker.retry_handle()));
            workers.routes.push(Route {
                strategy: compiled.clone(),
                tx,
            });
            let stop = workers.stop.clone();
            let name = cfg.name.clone();
            workers
                .tasks
                .spawn(async move { (name, worker.run(stop).await) });
        }
        Ok(workers)
    }
}

/// What serves the operator beside the stages: the admin API, scheduled
/// runs and metrics upkeep. They stop after the stages.
struct Services {
    stop: CancellationToken,
    admin: JoinHandle<Result<(), AdminError>>,
    schedules: JoinSet<()>,
    runs: RunManager,
    pause_sync: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    slot_watch: JoinHandle<()>,
}

impl Services {
    async fn start(
        config: &Config,
        pipeline: &Pipeline,
        workers: &Workers,
        listener: TcpListener,
        source_status: watch::Receiver<SourceStatus>,
        prom: PrometheusHandle,
    ) -> Services {
        let stop = CancellationToken::new();
        let runs = RunManager::new(
            Arc::new(config.clone()),
            pipeline.strategies.clone(),
            pipeline.endpoints.clone(),
            pipeline.state.clone(),
            config.source.url.expose().to_string(),
        );
        let replay_targets = config
            .strategies
            .iter()
            .zip(&pipeline.strategies)
            .filter_map(|(cfg, compiled)| {
                let endpoint = pipeline.endpoints.get(&cfg.endpoint)?.clone();
                let decorate: Arc<dyn Decorate> = compiled.clone();
                Some((cfg.name.clone(), endpoint, decorate))
            })
            .collect();
        let board = ScheduleBoard::new(config);
        let control = Arc::new(
            AppControl::new(runs.clone(), config)
                .with_pauses(workers.pauses.clone(), pipeline.state.clone())
                .with_retries(workers.retries.clone())
                .with_replay(pipeline.state.clone(), replay_targets)
                .with_schedules(board.clone()),
        );
        // Pauses kept from before a restart hold before anything streams.
        if let Err(err) = control.apply_stored_pauses().await {
            tracing::warn!(error = %err, "cannot read the paused strategies");
        }
        let mut admin_state = AdminState::new(config, source_status.clone(), prom.clone())
            .with_strategies(Arc::new(WorkerStatuses::new(
                workers.statuses.clone(),
                &workers.pauses,
            )))
            .with_control(control.clone())
            .with_endpoints(
                config,
                pipeline
                    .endpoints
                    .iter()
                    .map(|(name, endpoint)| (name.clone(), endpoint.stats()))
                    .collect(),
            );
        match StateStore::for_config(config, "walhook-admin").await {
            Ok(store) => admin_state = admin_state.with_dead_letters(store),
            Err(err) => tracing::warn!(error = %err, "dead-letter API unavailable"),
        }
        Services {
            schedules: schedule::spawn(
                runs.clone(),
                board,
                config,
                source_status.clone(),
                stop.clone(),
            ),
            admin: tokio::spawn(admin::serve(listener, admin_state, stop.clone())),
            pause_sync: spawn_pause_sync(control, source_status.clone(), stop.clone()),
            upkeep: telemetry::spawn_upkeep(prom, source_status, stop.clone()),
            slot_watch: telemetry::spawn_slot_watch(
                Secret::new(config.source.url.expose()),
                config.source.slot.clone(),
                stop.clone(),
            ),
            runs,
            stop,
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        let _ = self.admin.await;
        while self.schedules.join_next().await.is_some() {}
        self.runs.shutdown(RUNS_SHUTDOWN_TIMEOUT).await;
        let _ = self.pause_sync.await;
        let _ = self.upkeep.await;
        let _ = self.slot_watch.await;
    }
}

/// What the router task hands back: its result, and the events receiver
/// (kept open until the source has stopped).
type Routed = (Result<(), RouteError>, mpsc::Receiver<SourceEvent>);
type WorkerJoined = Result<(String, Result<(), DeliveryError>), JoinError>;

/// The running stages, each with its own stop token.
struct Stages {
    source: JoinHandle<Result<(), SourceError>>,
    source_stop: CancellationToken,
    router: JoinHandle<Routed>,
    router_stop: CancellationToken,
    workers: JoinSet<(String, Result<(), DeliveryError>)>,
    workers_stop: CancellationToken,
}

/// What ended [`Stages::until_one_stops`].
enum First {
    Shutdown,
    Source(Result<Result<(), SourceError>, JoinError>),
    Router(Result<Routed, JoinError>),
    Worker(WorkerJoined),
}

impl Stages {
    /// Connects source → router (a channel of `capacity` events) → the
    /// workers' queues and starts the source and the router.
    fn start(
        source: Source,
        capacity: usize,
        workers: Workers,
        checkpoint: Arc<Checkpoint>,
        budget: Budget,
    ) -> Stages {
        let (events_tx, mut events_rx) = mpsc::channel::<SourceEvent>(capacity);
        let router = Router::new(workers.routes, checkpoint).with_budget(budget);
        let source_stop = CancellationToken::new();
        let router_stop = CancellationToken::new();
        let stop = router_stop.clone();
        Stages {
            source: tokio::spawn(source.run(events_tx, source_stop.clone())),
            source_stop,
            // The router task hands the receiver back (see `Routed`).
            router: tokio::spawn(
                async move { (router.run(&mut events_rx, stop).await, events_rx) },
            ),
            router_stop,
            workers: workers.tasks,
            workers_stop: workers.stop,
        }
    }

    /// Waits for `shutdown` or for a stage that stops on its own.
    async fn until_one_stops(&mut self, shutdown: &CancellationToken) -> First {
        tokio::select! {
            _ = shutdown.cancelled() => First::Shutdown,
            result = &mut self.source => First::Source(result),
            result = &mut self.router => First::Router(result),
            Some(joined) = self.workers.join_next() => First::Worker(joined),
        }
    }

    /// Stops the stages in order and returns the first failure: routing
    /// stops and every worker finishes its batch in flight (its checkpoint
    /// advances), then the source stops and sends the last acknowledged
    /// position. A stage that already stopped (`first`) is not awaited again.
    async fn stop(mut self, first: First) -> Option<AppError> {
        let mut failure = None;
        let mut source_done = false;
        let mut routed = None;
        match first {
            First::Shutdown => {}
            First::Source(joined) => {
                source_done = true;
                failure = source_failure(joined);
            }
            First::Router(joined) => routed = Some(joined),
            First::Worker(joined) => failure = Some(worker_failure(joined)),
        }
        // 1. Stop routing and let every worker finish its batch in flight.
        self.router_stop.cancel();
        self.workers_stop.cancel();
        let routed = match routed {
            Some(joined) => joined,
            None => self.router.await,
        };
        // Held until the source has stopped (see the module doc).
        let events = match routed {
            Ok((result, events)) => {
                if let Err(e) = result {
                    failure.get_or_insert(e.into());
                }
                Some(events)
            }
            Err(e) => {
                failure.get_or_insert(e.into());
                None
            }
        };
        while let Some(joined) = self.workers.join_next().await {
            match joined {
                Ok((name, Err(e))) => {
                    tracing::warn!(strategy = %name, error = %e, "strategy worker stopped with an error");
                }
                Ok((_, Ok(()))) => {}
                Err(e) => {
                    failure.get_or_insert(e.into());
                }
            }
        }
        // 2. Stop the source: it sends the last acknowledged position.
        self.source_stop.cancel();
        if !source_done {
            if let Some(e) = source_failure(self.source.await) {
                failure.get_or_insert(e);
            }
        }
        drop(events);
        failure
    }
}

fn source_failure(joined: Result<Result<(), SourceError>, JoinError>) -> Option<AppError> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.into()),
        Err(e) => Some(e.into()),
    }
}

/// A worker that stopped before it was told to is a failure, also without an error.
fn worker_failure(joined: WorkerJoined) -> AppError {
    match joined {
        Ok((strategy, Err(source))) => AppError::Delivery { strategy, source },
        Ok((strategy, Ok(()))) => AppError::WorkerStopped { strategy },
        Err(e) => AppError::Task(e),
    }
}
