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
//!
//! Reloads (SIGHUP, `POST /config/reload`) are carried out by the
//! [`Reloader`] in the same loop that watches the stages; see
//! [`crate::reload`].

mod live;
mod reloader;
mod resync;
mod slot_record;

pub use resync::ResyncError;

use crate::error_class::{Classify, ErrorClass};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminError, AdminState, Console, WorkerStatuses};
use crate::backfill::{self, Backfills};
use crate::batch::Decorate;
use crate::budget::Budget;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::config::OnSlotLost;
use crate::decode::SourceEvent;
use crate::delivery::{DeliveryError, Endpoint, EndpointStats, WorkerHandles};
use crate::lsn::Lsn;
use crate::pg::{self, ConnectError, SlotLoss};
use crate::prepare::{prepare, PrepareError, Prepared};
use crate::reload::{self, ReloadHandle};
use crate::runs::{spawn_pause_sync, AppControl, Merge, RunManager, ScheduleBoard};
use crate::source::{
    Backoff, LossReport, SlotWatchHandle, SlotWatcher, Source, SourceError, SourceOptions,
    SourceState, SourceStatus,
};
use crate::state::{StateError, StateStore};
use crate::strategy::{
    self, CompiledStrategy, PublicationOutcome, RouteError, Router, SchemaError,
};
use crate::telemetry::{self, TelemetryError};
use live::{LiveStrategy, Start, WorkerContext, WorkerEnd};
use reloader::Reloader;

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
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Catalog(#[from] SchemaError),
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
    #[error(transparent)]
    Resync(#[from] ResyncError),
}

impl Classify for AppError {
    fn class(&self) -> ErrorClass {
        match self {
            AppError::Connect(err) => err.class(),
            AppError::Prepare(err) => err.class(),
            AppError::Catalog(err) => err.class(),
            AppError::State(err) => err.class(),
            AppError::Source(err) => err.class(),
            AppError::Resync(err) => err.class(),
            // A strategy that needs what the file does not give it (a state
            // store for parking, an endpoint).
            AppError::NoEndpoint { .. } | AppError::Worker(_) => ErrorClass::NeedsOperator,
            AppError::Telemetry(_)
            | AppError::Admin(_)
            | AppError::Route(_)
            | AppError::Delivery { .. }
            | AppError::WorkerStopped { .. }
            | AppError::Task(_) => ErrorClass::Fatal,
        }
    }
}

// Beside `AppError` rather than in resync.rs, which is being rewritten: a
// new variant fails to compile here until it is classed.
impl Classify for ResyncError {
    /// The changes in the lost range stay missing until a person re-syncs.
    fn class(&self) -> ErrorClass {
        match self {
            ResyncError::Unavailable { .. } => ErrorClass::NeedsOperator,
        }
    }
}

/// Runs the pipeline until `shutdown` is cancelled or a stage stops.
/// Reloads are refused: there is no file to read again (see [`run_with`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    run_with(config, Reload::default(), shutdown).await
}

/// Where a reload reads the configuration again, and the signals (SIGHUP)
/// that ask for one; `POST /config/reload` asks too.
#[derive(Debug, Default)]
pub struct Reload {
    /// The file `config` was loaded from.
    pub path: Option<PathBuf>,
    /// One `()` per SIGHUP.
    pub signals: Option<mpsc::Receiver<()>>,
}

/// [`run`], reloading the configuration from `reload.path` when asked.
pub async fn run_with(
    config: Config,
    reload: Reload,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let prom = telemetry::install_recorder()?;
    telemetry::describe();
    telemetry::register_reloads();
    let operations: Vec<&'static str> = crate::delivery::StateOp::ALL
        .iter()
        .map(|op| op.label())
        .collect();
    telemetry::register_state_errors(&operations);
    let listener = admin::bind(config.admin.listen).await?;
    let budget = Budget::new(config.source.max_buffer_bytes);
    let mut opts = SourceOptions::from_config(&config.source);
    opts.budget = Some(budget.clone());
    // Logical messages: the outbox strategies', and the runs' watermarks.
    opts.messages = true;
    let capacity = opts.channel_capacity;
    let (mut source, ack, source_status) = Source::new(opts);
    let (reload_handle, requests) = reload::channel(reload.path.as_deref());
    // SIGHUPs before the pipeline runs wait in the channel.
    let sighup = reload.signals.map(|signals| requests.forward(signals));
    // Probes and /status answer while the database is not up yet.
    let early = CancellationToken::new();
    let early_admin = tokio::spawn(admin::serve(
        admin::share(&listener)?,
        AdminState::new(&config, source_status.clone(), prom.clone()),
        early.clone(),
    ));
    let built = match wait_for_database(&config, &source, &shutdown).await {
        Ok(Some(client)) => {
            // The replication connection opens while the pipeline is built;
            // the slot is checked and streaming starts once it is ready.
            source.open_early();
            Pipeline::build(&config, client).await.map(Some)
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    early.cancel();
    early_admin.await??;
    let Some(pipeline) = built? else {
        tracing::info!("walhook stopped before the database was up");
        return Ok(());
    };
    let watcher_stop = CancellationToken::new();
    let watcher = SlotWatcher::spawn(
        config.source.url.expose(),
        &config.source.slot,
        watcher_stop.clone(),
    )?;
    let slot = watcher.handle();
    // The slot walhook recorded: the slot found is judged against it, and
    // no position reaches Postgres before it is recorded (source/gate.rs).
    let record = pipeline
        .state
        .slot_record(&config.source.slot)
        .await
        .map_err(AppError::State)?;
    let pending_loss = record
        .as_ref()
        .and_then(|r| r.loss.as_ref().map(|l| l.to_loss(&config.source.slot)));
    let recorder = source.with_gate(record.as_ref().map_or(Lsn::ZERO, |r| r.identity.confirmed));
    source.set_ledger(pipeline.state.clone());
    let losses = source.losses();
    let recorder_stop = CancellationToken::new();
    let sink = match &config.state.url {
        Some(_) => slot_record::Sink::Store(pipeline.state.clone()),
        None => slot_record::Sink::Watcher {
            watcher: watcher.handle(),
            schema: config.state.schema.clone(),
        },
    };
    let recorder = slot_record::spawn(sink, recorder, recorder_stop.clone());
    let checkpoint = Arc::new(Checkpoint::new(
        pipeline.strategies.len(),
        Lsn::ZERO,
        move |lsn| ack.ack(lsn),
    ));
    let context = WorkerContext {
        checkpoint: checkpoint.clone(),
        state: pipeline.state.clone(),
        confirmed: slot.confirmed(),
        resumed_from: source.resumed_from(),
    };
    let (workers, backfills) = Workers::start(&config, &pipeline, &context)?;
    let services = Services::start(
        &config,
        &pipeline,
        &workers,
        listener,
        Feeds {
            source: source_status.clone(),
            slot: slot.clone(),
            losses: losses.clone(),
        },
        prom,
        reload_handle,
    )
    .await;
    let (reroute, reroutes) = mpsc::channel(1);
    // At start each strategy's checkpoint index is its position.
    let routes = workers.live.iter().map(|l| l.route().1).collect();
    let mut reloader = Reloader::new(reloader::Parts {
        path: reload.path,
        config: config.clone(),
        live: workers.live,
        endpoints: pipeline.endpoints.clone(),
        workers: context,
        handles: workers.handles,
        reroute,
        requests,
        control: services.control.clone(),
        runs: services.runs.clone(),
        board: services.board.clone(),
        console: services.console.clone(),
        source: source_status.clone(),
    });
    // A repair a previous run began and did not finish starts again.
    let pending = match pending_loss {
        Some(loss) if config.source.on_slot_lost == OnSlotLost::Resync => {
            resync::start_resync_backfills(&loss, &services.runs, &pipeline.state)
                .await
                .err()
                .map(AppError::from)
        }
        Some(loss) => Some(AppError::Source(SourceError::SlotLost(Box::new(loss)))),
        None => None,
    };
    let failure = match pending {
        Some(failure) => Some(failure),
        None => {
            let mut stages = Stages::start(
                source,
                capacity,
                Router::new(routes, checkpoint)
                    .with_budget(budget)
                    .with_reroutes(reroutes)
                    .with_backfills(backfills),
                workers.tasks,
                workers.stop,
            );
            let mut repairs = Repairs {
                losses,
                runs: services.runs.clone(),
                state: pipeline.state.clone(),
            };
            let first = stages
                .until_one_stops(&shutdown, &mut reloader, &mut repairs)
                .await;
            stages.stop(first).await
        }
    };
    if let Some(task) = sighup {
        task.abort();
    }
    reloader.stop().await;
    services.stop().await;
    recorder_stop.cancel();
    let _ = recorder.await;
    watcher_stop.cancel();
    watcher.join().await;
    // What Postgres was last told (also when this process routed nothing).
    let acked = source_status.borrow().acked_lsn;
    tracing::info!(acked_lsn = %acked, "walhook stopped");
    failure.map_or(Ok(()), Err)
}

/// After a failure restarting cannot fix: serves the admin API with the
/// source `failed` and `error` (`/healthz` 200, `/readyz` 503 with it,
/// `/status`) until `shutdown`, so an orchestrator that restarts every
/// exited container (Kubernetes) does not restart walhook in a loop.
pub async fn hold(
    config: &Config,
    error: String,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let prom = telemetry::install_recorder()?;
    let listener = admin::bind(config.admin.listen).await?;
    let (_status, source) = watch::channel(SourceStatus {
        state: SourceState::Failed,
        last_error: Some(error),
        ..SourceStatus::default()
    });
    admin::serve(listener, AdminState::new(config, source, prom), shutdown).await?;
    Ok(())
}

/// Everything built from the configuration before the slot is touched.
struct Pipeline {
    strategies: Vec<Arc<CompiledStrategy>>,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    state: StateStore,
}

impl Pipeline {
    /// [`prepare`]s the configuration, then creates the publication and the
    /// state schema when missing. The state store's connection and
    /// inspection run beside `prepare`: neither changes the database, and
    /// their errors come after its (nothing is created before every check
    /// passed).
    async fn build(config: &Config, client: Client) -> Result<Pipeline, AppError> {
        // Only read: what is missing is created after the checks.
        let state = async {
            let store = StateStore::for_config(config, "walhook-state").await?;
            let found = store.inspect().await;
            Ok::<_, StateError>((store, found))
        };
        let (
            Prepared {
                strategies,
                endpoints,
            },
            state,
        ) = first_then(prepare(config, &client), state).await?;
        let (state, found) = state.map_err(AppError::State)?;
        if let PublicationOutcome::Created { tables } =
            strategy::ensure_publication(&client, config).await?
        {
            let tables: Vec<String> = tables.iter().map(ToString::to_string).collect();
            tracing::info!(publication = %config.source.publication, tables = ?tables, "created the publication for the strategies' tables");
        }
        state
            .ensure_inspected(found)
            .await
            .map_err(AppError::State)?;
        Ok(Pipeline {
            strategies,
            endpoints,
            state,
        })
    }
}

/// `first`'s result with `beside`'s output, both polled together; when
/// `first` fails, its error comes at once and `beside` is dropped.
async fn first_then<T, E, B: Future>(
    first: impl Future<Output = Result<T, E>>,
    beside: B,
) -> Result<(T, B::Output), E> {
    tokio::pin!(first, beside);
    let mut done = None;
    let value = loop {
        tokio::select! {
            result = &mut first => break result?,
            output = &mut beside, if done.is_none() => done = Some(output),
        }
    };
    let output = match done {
        Some(output) => output,
        None => beside.await,
    };
    Ok((value, output))
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
            Err(err) if err.class() == ErrorClass::Transient => err,
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

/// One delivery worker per strategy, and what the admin API needs of them.
struct Workers {
    tasks: JoinSet<WorkerEnd>,
    stop: CancellationToken,
    live: Vec<LiveStrategy>,
    handles: WorkerHandles,
    /// How runs merge into the workers' streams (the router has the other end).
    merge: Merge,
}

impl Workers {
    /// The workers, and the router's end of the runs' backfills.
    fn start(
        config: &Config,
        pipeline: &Pipeline,
        context: &WorkerContext,
    ) -> Result<(Workers, Backfills), AppError> {
        let mut tasks = JoinSet::new();
        let stop = CancellationToken::new();
        let mut live = Vec::new();
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
            let start = Start {
                cfg,
                compiled: compiled.clone(),
                endpoint,
                slot: index,
                by_reload: false,
                replacing: None,
            };
            live.push(
                context
                    .spawn(start, retry, &mut tasks, &stop)
                    .map_err(AppError::Worker)?,
            );
            let schedules: Vec<&str> = cfg.schedules.iter().map(|s| s.name()).collect();
            telemetry::register_strategy(&cfg.name, &schedules);
        }
        let handles = WorkerHandles::new(
            live.iter()
                .map(|l| l.entry(crate::delivery::EntryKind::Live))
                .collect(),
        );
        let (backfills, handle) = backfill::channel();
        let merge = Merge {
            backfills: handle,
            checkpoint: context.checkpoint.clone(),
            workers: handles.clone(),
        };
        Ok((
            Workers {
                tasks,
                stop,
                live,
                handles,
                merge,
            },
            backfills,
        ))
    }
}

/// What serves the operator beside the stages: the admin API, runs and
/// metrics upkeep. They stop after the stages. (Scheduled runs follow the
/// configuration, so the [`Reloader`] owns them.)
struct Services {
    stop: CancellationToken,
    admin: JoinHandle<Result<(), AdminError>>,
    runs: RunManager,
    control: Arc<AppControl>,
    board: ScheduleBoard,
    console: Arc<Console>,
    pause_sync: JoinHandle<()>,
    resume_runs: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    slot_metrics: JoinHandle<()>,
}

/// What the services read of the stages: the source's status and the
/// slot watcher's reads.
struct Feeds {
    source: watch::Receiver<SourceStatus>,
    slot: SlotWatchHandle,
    losses: watch::Receiver<Option<LossReport>>,
}

impl Services {
    async fn start(
        config: &Config,
        pipeline: &Pipeline,
        workers: &Workers,
        listener: TcpListener,
        feeds: Feeds,
        prom: PrometheusHandle,
        reload: ReloadHandle,
    ) -> Services {
        let Feeds {
            source: source_status,
            slot,
            losses,
        } = feeds;
        let stop = CancellationToken::new();
        let runs = RunManager::new(
            Arc::new(config.clone()),
            pipeline.strategies.clone(),
            pipeline.endpoints.clone(),
            pipeline.state.clone(),
            config.source.url.expose().to_string(),
        )
        .with_merge(workers.merge.clone());
        let replay_targets = workers
            .live
            .iter()
            .map(|l| {
                let decorate: Arc<dyn Decorate> = l.compiled.clone();
                (l.name.clone(), l.endpoint.clone(), decorate)
            })
            .collect();
        let board = ScheduleBoard::new(config);
        let control = Arc::new(
            AppControl::new(runs.clone(), config)
                .with_workers(workers.handles.clone(), pipeline.state.clone())
                .with_replay(pipeline.state.clone(), replay_targets)
                .with_schedules(board.clone())
                .with_reload(reload),
        );
        // Pauses kept from before a restart hold before anything streams.
        let applied = match control.apply_stored_pauses().await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the paused strategies");
                false
            }
        };
        let console = Arc::new(Console::new(config, endpoint_stats(&pipeline.endpoints)));
        let mut admin_state = AdminState::new(config, source_status.clone(), prom.clone())
            .with_strategies(Arc::new(WorkerStatuses::new(workers.handles.clone())))
            .with_workers(workers.handles.clone())
            .with_control(control.clone())
            .with_console(console.clone())
            .with_slot(slot.subscribe(), losses.clone());
        // Connects on the first request: nothing waits for it at start.
        match StateStore::for_config_unopened(config, "walhook-admin") {
            Ok(store) => admin_state = admin_state.with_dead_letters(store),
            Err(err) => tracing::warn!(error = %err, "dead-letter API unavailable"),
        }
        Services {
            admin: tokio::spawn(admin::serve(listener, admin_state, stop.clone())),
            pause_sync: spawn_pause_sync(
                control.clone(),
                source_status.clone(),
                applied,
                stop.clone(),
            ),
            resume_runs: spawn_resume_runs(runs.clone(), source_status.clone(), stop.clone()),
            upkeep: telemetry::spawn_upkeep(prom, source_status, stop.clone()),
            slot_metrics: telemetry::spawn_slot_metrics(slot.subscribe(), losses, stop.clone()),
            runs,
            control,
            board,
            console,
            stop,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.admin.await;
        self.runs.shutdown(RUNS_SHUTDOWN_TIMEOUT).await;
        let _ = self.pause_sync.await;
        let _ = self.resume_runs.await;
        let _ = self.upkeep.await;
        let _ = self.slot_metrics.await;
    }
}

/// Each time this instance starts streaming (at start, or when a standby
/// takes over), resumes the runs walhook.runs holds as unfinished and
/// starts the first backfills not done yet. Ends at `stop`.
fn spawn_resume_runs(
    runs: RunManager,
    mut source: watch::Receiver<SourceStatus>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut streaming = false;
        loop {
            let now = source.borrow_and_update().state == SourceState::Streaming;
            if now && !streaming {
                runs.resume_stored().await;
                runs.start_initial().await;
            }
            streaming = now;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = source.changed() => if changed.is_err() {
                    return;
                },
            }
        }
    })
}

/// Each endpoint's stats handle, for the console.
fn endpoint_stats(endpoints: &BTreeMap<String, Arc<Endpoint>>) -> Vec<(String, EndpointStats)> {
    endpoints
        .iter()
        .map(|(name, endpoint)| (name.clone(), endpoint.stats()))
        .collect()
}

/// What the router task hands back: its result, and the events receiver
/// (kept open until the source has stopped).
type Routed = (Result<(), RouteError>, mpsc::Receiver<SourceEvent>);
type WorkerJoined = Result<WorkerEnd, JoinError>;

/// The running stages, each with its own stop token.
struct Stages {
    source: JoinHandle<Result<(), SourceError>>,
    source_stop: CancellationToken,
    router: JoinHandle<Routed>,
    router_stop: CancellationToken,
    workers: JoinSet<WorkerEnd>,
    workers_stop: CancellationToken,
}

/// What ended [`Stages::until_one_stops`].
enum First {
    Shutdown,
    Source(Result<Result<(), SourceError>, JoinError>),
    Router(Result<Routed, JoinError>),
    Worker(WorkerJoined),
    /// A lost slot was replaced, and its repair could not start.
    Resync(ResyncError),
}

/// Losses of the slot the source repaired (`on_slot_lost = "resync"`),
/// and what starting their backfills needs.
struct Repairs {
    losses: watch::Receiver<Option<LossReport>>,
    runs: RunManager,
    state: StateStore,
}

impl Repairs {
    /// The next repaired loss (a refused one ends the source instead).
    async fn next(&mut self) -> Option<SlotLoss> {
        loop {
            self.losses.changed().await.ok()?;
            if let Some(report) = self.losses.borrow_and_update().as_ref() {
                if report.repaired {
                    return Some(report.loss.clone());
                }
            }
        }
    }
}

impl Stages {
    /// Connects source → router (a channel of `capacity` events) → the
    /// workers' queues and starts the source and the router.
    fn start(
        source: Source,
        capacity: usize,
        router: Router,
        workers: JoinSet<WorkerEnd>,
        workers_stop: CancellationToken,
    ) -> Stages {
        let (events_tx, mut events_rx) = mpsc::channel::<SourceEvent>(capacity);
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
            workers,
            workers_stop,
        }
    }

    /// Waits for `shutdown` or for a stage that stops on its own; carries
    /// out reloads meanwhile (a worker a reload retired may end).
    async fn until_one_stops(
        &mut self,
        shutdown: &CancellationToken,
        reloader: &mut Reloader,
        repairs: &mut Repairs,
    ) -> First {
        loop {
            tokio::select! {
                biased;
                // 1. Shutdown.
                _ = shutdown.cancelled() => return First::Shutdown,
                // 2. A stage that stopped on its own: the source first (its
                //    error is the cause when the others stop behind it).
                result = &mut self.source => return First::Source(result),
                result = &mut self.router => return First::Router(result),
                Some(joined) = self.workers.join_next() => {
                    if let Ok((_, slot, Ok(()))) = &joined {
                        if reloader.worker_ended(*slot) {
                            continue;
                        }
                    }
                    return First::Worker(joined);
                }
                // 3. A lost slot the source replaced: start its repair.
                Some(loss) = repairs.next() => {
                    if let Err(err) =
                        resync::start_resync_backfills(&loss, &repairs.runs, &repairs.state).await
                    {
                        return First::Resync(err);
                    }
                }
                // 4. Reload requests.
                Some(request) = reloader.requests.recv() => {
                    reloader
                        .handle(request, &mut self.workers, &self.workers_stop, shutdown)
                        .await;
                }
            }
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
            First::Resync(err) => failure = Some(err.into()),
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
                Ok((name, _, Err(e))) => {
                    tracing::warn!(strategy = %name, error = %e, "strategy worker stopped with an error");
                }
                Ok((_, _, Ok(()))) => {}
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
        Ok((strategy, _, Err(source))) => AppError::Delivery { strategy, source },
        Ok((strategy, _, Ok(()))) => AppError::WorkerStopped { strategy },
        Err(e) => AppError::Task(e),
    }
}
