//! Starting, tracking, pausing, resuming and cancelling runs.
//!
//! A run is recorded in `walhook.runs` before it reads anything, with how
//! it was asked for (`params`); its counts are written as it goes and its
//! progress (the last key of the last delivered chunk) after every
//! delivered chunk, with the state `running`, `paused`, `succeeded`,
//! `failed`, `cancelled` or `refused` (a sync run over `sync_limit`). When
//! walhook stops, its runs stay `running` (or `paused`): the instance that
//! streams next resumes them from their progress ([`RunManager::resume_stored`]).
//!
//! Inside `walhook run` the runs merge into their strategy's live stream
//! ([`RunManager::with_merge`], see `execute`); `walhook run-strategy`
//! without a running walhook delivers through a worker of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::execute::{self, Context, Merge, Sink};
use super::plan::{
    Catalog, Controls, Counts, Live, OnProgress, Params, Plan, RunError, Stored, Summary, Trigger,
};
use super::progress::Progress;
use super::reader::{KeyText, SnapshotError};
use crate::batch::{BatchMeta, Decorate, Decoration, ReplyLog};
use crate::config::{Config, ExprRole, FilterOp, RecordShape, TableName};
use crate::control::{ControlError, RunMode, RunReply};
use crate::delivery::Endpoint;
use crate::pg;
use crate::state::StateStore;
use crate::strategy::expr::Expr;
use crate::strategy::{referenced_columns, CompiledStrategy};
use crate::telemetry::names;

/// What a run is asked to read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ask {
    /// Which rows (`row.<col>`, `new.<col>`); `None` = all.
    pub(crate) filter: Option<String>,
    /// At most this many records.
    pub(crate) limit: Option<u64>,
    /// Start at this key (inclusive), the primary key's columns as text.
    pub(crate) from: Option<KeyText>,
}

/// A sync run's strategy: its templates, and a log of the endpoint's answers.
pub(crate) struct Answered {
    pub(crate) strategy: Arc<CompiledStrategy>,
    pub(crate) replies: Arc<ReplyLog>,
}

impl Decorate for Answered {
    fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String> {
        self.strategy.decorate(meta)
    }

    fn record_shape(&self) -> RecordShape {
        self.strategy.record_shape()
    }

    fn replies(&self, _records: &[(crate::lsn::Lsn, u32)]) -> Option<Arc<ReplyLog>> {
        Some(self.replies.clone())
    }
}

struct Active {
    controls: Controls,
    live: Arc<Live>,
    started: Instant,
}

/// Starts and tracks runs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RunManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by a reload; each run keeps the one it started with.
    catalog: Mutex<Arc<Catalog>>,
    state: StateStore,
    url: String,
    active: Mutex<HashMap<i64, Active>>,
    /// Set inside `walhook run`: runs merge into the live stream.
    merge: Mutex<Option<Merge>>,
    /// Async runs, waited for at shutdown.
    tasks: TaskTracker,
    /// walhook is stopping: runs stop where they are and resume later.
    stopping: CancellationToken,
}

impl RunManager {
    /// `strategies` in config order; `endpoints` by name; `state` stores
    /// runs and their dead letters; `url` is the source database (each run
    /// reads on a connection of its own).
    pub(crate) fn new(
        config: Arc<Config>,
        strategies: Vec<Arc<CompiledStrategy>>,
        endpoints: std::collections::BTreeMap<String, Arc<Endpoint>>,
        state: StateStore,
        url: String,
    ) -> Self {
        RunManager {
            inner: Arc::new(Inner {
                catalog: Mutex::new(Arc::new(Catalog {
                    config,
                    strategies,
                    endpoints,
                })),
                state,
                url,
                active: Mutex::new(HashMap::new()),
                merge: Mutex::new(None),
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// Runs from now on merge into the live stream through `merge`.
    pub(crate) fn with_merge(self, merge: Merge) -> Self {
        *lock(&self.inner.merge) = Some(merge);
        self
    }

    fn sink(&self) -> Sink {
        match lock(&self.inner.merge).clone() {
            Some(merge) => Sink::Merged(merge),
            None => Sink::Direct,
        }
    }

    /// Starts a run of `strategy`. Sync: answers after delivery (or refuses
    /// with 422 before sending anything when more than `sync_limit` records
    /// would be sent). Async: answers at once with the run id. The API
    /// triggers (`Sync`, `Async`) need the strategy's `on_demand` to allow
    /// them; a schedule, the CLI and walhook itself do not.
    pub(crate) async fn start(
        &self,
        strategy: &str,
        mode: RunMode,
        ask: Ask,
        trigger: Trigger,
    ) -> Result<RunReply, ControlError> {
        let plan = self
            .prepare(strategy, mode, ask, trigger)
            .await
            .map_err(|e| e.to_control())?;
        match mode {
            RunMode::Sync => {
                let summary = self
                    .clone()
                    .execute(plan)
                    .await
                    .map_err(|e| e.to_control())?;
                Ok(RunReply::Completed(summary.to_json()))
            }
            RunMode::Async => {
                let id = plan.id;
                self.spawn(plan);
                Ok(RunReply::Started { id })
            }
        }
    }

    fn spawn(&self, plan: Plan) {
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            let _ = me.execute(plan).await;
        });
    }

    /// Runs `strategy` to the end in this task (the CLI), reporting progress.
    pub(crate) async fn run_to_end(
        &self,
        strategy: &str,
        ask: Ask,
        progress: OnProgress,
    ) -> Result<Summary, RunError> {
        let mut plan = self
            .prepare(strategy, RunMode::Async, ask, Trigger::Cli)
            .await?;
        plan.progress = Some(progress);
        self.clone().execute(plan).await
    }

    /// A reload applied `config`: runs started from now on use it; runs
    /// going on keep the configuration they started with.
    pub(crate) fn reconfigure(
        &self,
        config: Arc<Config>,
        strategies: Vec<Arc<CompiledStrategy>>,
        endpoints: std::collections::BTreeMap<String, Arc<Endpoint>>,
    ) {
        *lock(&self.inner.catalog) = Arc::new(Catalog {
            config,
            strategies,
            endpoints,
        });
    }

    fn catalog(&self) -> Arc<Catalog> {
        lock(&self.inner.catalog).clone()
    }

    /// True while run `id` is going on in this process.
    pub(crate) fn is_active(&self, id: i64) -> bool {
        self.lock_active().contains_key(&id)
    }

    /// Stops every run where it is (they stay `running` or `paused` in
    /// walhook.runs, and the next start resumes them) and waits up to
    /// `timeout` until they have written their counts.
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        self.inner.stopping.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(timeout, self.inner.tasks.wait()).await;
    }

    /// A run's record, with live counts while it runs here, and its
    /// `progress` (see [`Progress::to_json`]).
    pub(crate) async fn get(&self, id: i64) -> Result<Value, ControlError> {
        let row = self
            .inner
            .state
            .get_run(id)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let Some(row) = row else {
            return Err(ControlError::NotFound(format!("no run {id}")));
        };
        Ok(self.with_progress(row))
    }

    /// The latest `limit` runs (of `strategy`, if given), newest first, each
    /// as [`RunManager::get`] shows it.
    pub(crate) async fn list(
        &self,
        strategy: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Value>, ControlError> {
        let rows = self
            .inner
            .state
            .list_runs(strategy, limit)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|row| self.with_progress(row))
            .collect())
    }

    /// A stored run with live counts while it runs here, and `progress`.
    fn with_progress(&self, mut row: Value) -> Value {
        let id = row["id"].as_i64().unwrap_or_default();
        let live = self
            .lock_active()
            .get(&id)
            .map(|a| (a.live.get(), a.started.elapsed()));
        let (counts, elapsed) = match live {
            Some((counts, elapsed)) => {
                row["counts"] = json!(counts);
                (counts, elapsed)
            }
            None => (
                serde_json::from_value(row["counts"].clone()).unwrap_or_default(),
                stored_elapsed(&row),
            ),
        };
        let ended = match row["state"].as_str() {
            Some("running" | "paused") | None => None,
            Some("succeeded") => Some("succeeded"),
            Some(_) => Some("ended"),
        };
        row["progress"] = Progress::new(id, counts, elapsed, ended).to_json();
        row["duration_ms"] = json!(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        row
    }

    /// Cancels run `id` (`DELETE /runs/{id}`).
    pub(crate) async fn cancel(&self, id: i64) -> Result<Value, ControlError> {
        if let Some(active) = self.lock_active().get(&id) {
            active.controls.cancel.cancel();
            return Ok(json!({ "id": id, "state": "cancelling" }));
        }
        Err(self.not_here(id).await)
    }

    /// Pauses run `id` after the chunk it is reading (`POST /runs/{id}/pause`).
    pub(crate) async fn pause(&self, id: i64) -> Result<Value, ControlError> {
        self.set_paused(id, true).await
    }

    /// Resumes a paused run (`POST /runs/{id}/resume`).
    pub(crate) async fn resume(&self, id: i64) -> Result<Value, ControlError> {
        self.set_paused(id, false).await
    }

    async fn set_paused(&self, id: i64, paused: bool) -> Result<Value, ControlError> {
        let sent = self
            .lock_active()
            .get(&id)
            .map(|active| active.controls.paused.send_replace(paused));
        match sent {
            Some(_) => {
                let state = if paused { "pausing" } else { "running" };
                Ok(json!({ "id": id, "state": state }))
            }
            None => Err(self.not_here(id).await),
        }
    }

    /// The answer for a run that is not going on in this process.
    async fn not_here(&self, id: i64) -> ControlError {
        match self.inner.state.get_run(id).await {
            Err(e) => ControlError::Unavailable(e.to_string()),
            Ok(None) => ControlError::NotFound(format!("no run {id}")),
            Ok(Some(row)) => {
                let state = row["state"].as_str().unwrap_or("unknown").to_string();
                ControlError::Conflict(format!("run {id} is not running here (state {state})"))
            }
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Active>> {
        lock(&self.inner.active)
    }

    /// Resumes the runs walhook.runs records as `running` or `paused`
    /// (walhook stopped, was killed, or another instance streamed before):
    /// from the last key of their last delivered chunk. Runs of strategies
    /// no longer configured end as `failed`. Call it on the instance that
    /// streams, when it starts streaming.
    pub(crate) async fn resume_stored(&self) {
        let rows = match self.inner.state.unfinished_runs().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the runs to resume from walhook.runs");
                return;
            }
        };
        for row in rows {
            let id = row["id"].as_i64().unwrap_or_default();
            if self.is_active(id) {
                continue;
            }
            match self.prepare_stored(&row) {
                Ok(plan) => {
                    tracing::info!(run = id, strategy = %plan.compiled.name(), after = plan.resume.after.is_some(), "resuming a run");
                    self.spawn(plan);
                }
                Err(e) => {
                    tracing::warn!(run = id, error = %e, "a stored run cannot resume");
                    let counts = row["counts"].clone();
                    let _ = self
                        .inner
                        .state
                        .finish_run(id, e.outcome(), &counts, Some(&e.to_string()))
                        .await;
                }
            }
        }
    }

    /// Starts the first backfill of every strategy with `backfill.initial`
    /// that has none recorded yet (a new deployment, or a reload that added
    /// it). Call it on the instance that streams.
    pub(crate) async fn start_initial(&self) {
        let catalog = self.catalog();
        for strategy in &catalog.config.strategies {
            if !strategy.backfill.initial || strategy.table.is_none() {
                continue;
            }
            match self.inner.state.has_run(&strategy.name, "initial").await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(strategy = %strategy.name, error = %e, "cannot tell whether the strategy's first backfill ran");
                    continue;
                }
            }
            match self
                .start(
                    &strategy.name,
                    RunMode::Async,
                    Ask::default(),
                    Trigger::Initial,
                )
                .await
            {
                Ok(_) => tracing::info!(strategy = %strategy.name, "first backfill started"),
                Err(e) => {
                    tracing::warn!(strategy = %strategy.name, error = %e, "the first backfill could not start")
                }
            }
        }
    }

    async fn prepare(
        &self,
        strategy: &str,
        mode: RunMode,
        ask: Ask,
        trigger: Trigger,
    ) -> Result<Plan, RunError> {
        let catalog = self.catalog();
        let index = catalog
            .config
            .strategies
            .iter()
            .position(|s| s.name == strategy)
            .ok_or_else(|| RunError::NoStrategy(strategy.to_string()))?;
        let cfg = &catalog.config.strategies[index];
        match trigger {
            Trigger::Sync if !cfg.on_demand.sync => {
                return Err(RunError::NotAllowed {
                    strategy: strategy.to_string(),
                    mode: "sync",
                })
            }
            Trigger::Async if !cfg.on_demand.r#async => {
                return Err(RunError::NotAllowed {
                    strategy: strategy.to_string(),
                    mode: "async",
                })
            }
            _ => {}
        }
        if cfg.table.is_none() {
            return Err(RunError::NoTable(strategy.to_string()));
        }
        let filter = compile_filter(ask.filter)?;
        // Refused before it is recorded: a filter on a column the table lacks.
        if let (Some((text, _)), Some(table)) = (&filter, &cfg.table) {
            self.check_filter_columns(table, text).await?;
        }
        let params = Params {
            limit: ask.limit,
            from: ask.from,
            sync: mode == RunMode::Sync,
        };
        let id = self
            .inner
            .state
            .insert_run(
                strategy,
                &trigger.record(),
                filter.as_ref().map(|(t, _)| t.as_str()),
                &json!(Counts::default()),
                &json!(params),
            )
            .await?;
        tracing::info!(
            run = id,
            strategy,
            trigger = trigger.as_str(),
            schedule = trigger.schedule(),
            "run started"
        );
        Ok(self.plan(
            id,
            catalog,
            index,
            trigger,
            filter,
            params,
            Stored::default(),
            false,
        ))
    }

    /// Every column `filter` reads exists in `table` (a table walhook
    /// cannot see is left to the run, which names the problem).
    async fn check_filter_columns(&self, table: &TableName, filter: &str) -> Result<(), RunError> {
        let client = pg::connect(&self.inner.url, "walhook-run")
            .await
            .map_err(SnapshotError::Connect)?;
        let catalog =
            pg::table_catalog(&client, table)
                .await
                .map_err(|source| SnapshotError::Query {
                    table: table.clone(),
                    source,
                })?;
        let Some(catalog) = catalog else {
            return Ok(());
        };
        for column in referenced_columns(filter).map_err(RunError::Filter)? {
            if !catalog.columns.iter().any(|c| c.name == column.column) {
                return Err(RunError::Filter(format!(
                    "`{column}`: {table} has no column {:?}",
                    column.column
                )));
            }
        }
        Ok(())
    }

    /// A plan for a run stored as `running` or `paused`.
    fn prepare_stored(&self, row: &Value) -> Result<Plan, RunError> {
        let id = row["id"].as_i64().unwrap_or_default();
        let strategy = row["strategy"].as_str().unwrap_or_default();
        let catalog = self.catalog();
        let index = catalog
            .config
            .strategies
            .iter()
            .position(|s| s.name == strategy)
            .ok_or_else(|| RunError::Removed(strategy.to_string()))?;
        let filter = compile_filter(row["filter"].as_str().map(str::to_string))?;
        let params: Params = serde_json::from_value(row["params"].clone()).unwrap_or_default();
        let resume: Stored = serde_json::from_value(row["progress"].clone()).unwrap_or_default();
        let trigger = Trigger::parse(row["trigger"].as_str().unwrap_or("async"));
        let paused = row["state"].as_str() == Some("paused");
        let plan = self.plan(id, catalog, index, trigger, filter, params, resume, paused);
        // Counted on from its last delivered chunk; rows read since are
        // read again (and counted again in `read`).
        let counts: Counts = serde_json::from_value(row["counts"].clone()).unwrap_or_default();
        plan.live.update(|c| {
            *c = Counts {
                read: counts.read,
                reread: counts.reread + counts.read.saturating_sub(plan.resume.counts.read),
                ..plan.resume.counts
            }
        });
        Ok(plan)
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        id: i64,
        catalog: Arc<Catalog>,
        index: usize,
        trigger: Trigger,
        filter: Option<(String, Expr)>,
        params: Params,
        resume: Stored,
        paused: bool,
    ) -> Plan {
        let cfg = &catalog.config.strategies[index];
        let compiled = catalog.strategies[index].clone();
        let sync_cap = match params.sync {
            // A limit within sync_limit can never go over it.
            true if params.limit.is_some_and(|l| l <= cfg.on_demand.sync_limit) => None,
            true => Some(cfg.on_demand.sync_limit),
            false => None,
        };
        let controls = Controls::new(paused);
        let live = Arc::new(Live::default());
        let started = Instant::now();
        self.lock_active().insert(
            id,
            Active {
                controls: controls.clone(),
                live: live.clone(),
                started,
            },
        );
        Plan {
            id,
            index,
            trigger,
            compiled,
            sync_cap,
            chunk_size: cfg.backfill.chunk_size.max(1),
            rate: cfg.backfill.max_rows_per_second,
            replies: params.sync.then(Arc::default),
            filter,
            params,
            controls,
            live,
            started,
            resume,
            progress: None,
            catalog,
        }
    }

    /// Runs `plan` to its end and records the outcome.
    async fn execute(self, plan: Plan) -> Result<Summary, RunError> {
        let cx = Context {
            url: &self.inner.url,
            state: &self.inner.state,
            stopping: &self.inner.stopping,
        };
        let result = execute::execute(&plan, self.sink(), &cx).await;
        let counts = plan.live.get();
        let (state, error) = match &result {
            Ok(()) if counts.failed == 0 => ("succeeded", None),
            Ok(()) => (
                "failed",
                Some(format!("{} records failed (dead-lettered)", counts.failed)),
            ),
            Err(e) => (e.outcome(), Some(e.to_string())),
        };
        let recorded = if matches!(result, Err(RunError::Stopping)) {
            // Stays as it is in walhook.runs; the next start resumes it.
            self.inner
                .state
                .update_run_counts(plan.id, &json!(counts))
                .await
        } else {
            self.inner
                .state
                .finish_run(plan.id, state, &json!(counts), error.as_deref())
                .await
        };
        if let Err(e) = recorded {
            tracing::warn!(run = plan.id, error = %e, "cannot record the run's outcome in walhook.runs");
        }
        // Only now: a schedule's next run starts after this one is recorded as done.
        self.lock_active().remove(&plan.id);
        let strategy = plan.compiled.name().to_string();
        metrics::counter!(names::RUNS_TOTAL, "strategy" => strategy.clone(), "trigger" => plan.trigger.as_str(), "schedule" => plan.trigger.schedule().to_string(), "outcome" => state)
            .increment(1);
        metrics::counter!(names::RUN_RECORDS_TOTAL, "strategy" => strategy.clone())
            .increment(counts.delivered);
        plan.report(Some(state));
        let duration = plan.started.elapsed();
        match &error {
            None => {
                tracing::info!(run = plan.id, strategy = %strategy, read = counts.read, delivered = counts.delivered, superseded = counts.superseded, duration_ms = duration.as_millis() as u64, "run succeeded")
            }
            Some(e) => {
                tracing::warn!(run = plan.id, strategy = %strategy, state, error = %e, "run ended")
            }
        }
        result?;
        Ok(Summary {
            id: plan.id,
            counts,
            duration,
            replies: plan
                .replies
                .as_ref()
                .map(|log| log.replies())
                .unwrap_or_default(),
        })
    }
}

/// The run filter's text and compiled form; blank = none.
fn compile_filter(filter: Option<String>) -> Result<Option<(String, Expr)>, RunError> {
    match filter {
        Some(text) if !text.trim().is_empty() => {
            // Runs read current rows: row.<col> and new.<col>, as for inserts.
            let expr = Expr::compile(&text, ExprRole::Filter(FilterOp::Insert))
                .map_err(RunError::Filter)?;
            Ok(Some((text, expr)))
        }
        _ => Ok(None),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a run not going on in this process ran: until it ended, or
/// until now (by this host's clock) while another process runs it.
fn stored_elapsed(row: &Value) -> Duration {
    let time = |key: &str| {
        row[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let Some(started) = time("started_at") else {
        return Duration::ZERO;
    };
    let end = time("finished_at").unwrap_or_else(chrono::Utc::now);
    (end - started).to_std().unwrap_or_default()
}
