//! The admin HTTP server: one port for Prometheus, health checks, status
//! and the operator API.
//!
//! ```text
//!  GET  /metrics   /healthz   /readyz   /activez   /status   open
//!  POST /strategies/{name}/pause | resume | retry | runs     Bearer token
//!  GET  /runs[?strategy=&limit=], GET|DELETE /runs/{id}      Bearer token
//!  GET  /dead-letters[?strategy=&after=&limit=]              Bearer token
//!  GET|DELETE /dead-letters/{id}, POST /dead-letters/{id}/replay
//!  GET  /ui, /config, /endpoints                             open (the console, [`ui`])
//! ```
//!
//! The server only reads state and forwards commands: the source's status
//! arrives on its watch channel, strategy status through [`StatusSource`],
//! commands go to a [`Control`] the application implements, and dead letters
//! are read and deleted straight in the state schema ([`StateStore`]).
//! That keeps this module free of pipeline internals and lets tests drive it
//! with small fakes of those two traits.
//!
//! Mutating endpoints need `Authorization: Bearer <[admin].token>`; without a
//! configured token they answer 403, and a non-loopback listen address
//! without a token is refused (by config validation, and again by [`serve`]).

mod auth;
mod dead_letters;
mod parking;
mod runs;
mod slot;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::control::{BoxFuture, Control, ControlError, RunMode, RunReply, RunRequest};
use dead_letters::DeadLetterQuery;
pub(crate) use ui::Console;
pub use ui::{ConsoleSource, DeliveryProgress};

use crate::config::{Config, Secret};
use crate::delivery::{EntryKind, StrategyStatus as WorkerStatus, WorkerHandles};
pub use crate::health::StrategyState;
use crate::health::{self, Health, Readiness, StrategyHealth};
use crate::pg::slot::SlotWatch;
use crate::reload::ReloadResult;
use crate::source::{LossReport, SourceState, SourceStatus};
use crate::state::{StateError, StateStore};

/// Why the admin server could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Binding the listen address failed (in use, not permitted, ...).
    #[error("cannot listen on {addr} for the admin API: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback address without a token.
    #[error("refusing to serve the admin API on {0} without [admin].token; set a token or listen on 127.0.0.1")]
    Unprotected(SocketAddr),
    /// The server failed while running.
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A strategy's parked work, for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParkingStatus {
    /// Batches, records and body bytes in `walhook.parked`.
    pub parked_batches: u64,
    pub parked_records: u64,
    pub parked_bytes: u64,
    /// `max_parked_bytes` (0: the strategy does not park).
    pub limit_bytes: u64,
    /// The bound is reached: a batch that should be parked waits.
    pub full: bool,
    /// Why the strategy is held, if it is.
    pub held: Option<String>,
}

/// One strategy's status.
#[derive(Debug, Clone, Default)]
pub struct StrategyStatus {
    /// The `[[strategies]]` name.
    pub name: String,
    /// What it is doing.
    pub state: StrategyState,
    /// Records queued or in flight.
    pub queue_records: u64,
    /// When a batch was last delivered.
    pub last_success: Option<SystemTime>,
    /// The last delivery error (never a secret); cleared by a success.
    pub last_error: Option<String>,
    /// When `last_error` was set.
    pub last_error_at: Option<SystemTime>,
    /// When a success last cleared an error.
    pub recovered_at: Option<SystemTime>,
    /// Attempts made for the batch in flight (0 when idle).
    pub attempts: u64,
    /// Batches in flight.
    pub in_flight: u64,
    /// Why it is paused (`admin`, `endpoint_gone`), when it is.
    pub pause_reason: Option<&'static str>,
    /// Counters and position, for rates and lag.
    pub progress: DeliveryProgress,
    /// Parked work.
    pub parking: ParkingStatus,
    /// The last state-store write that failed (cleared by the next success).
    pub state_error: Option<String>,
    /// Workers a reload replaced that still deliver what they were given.
    pub draining: Vec<StrategyStatus>,
}

/// Supplies strategy status on demand. Implemented for closures
/// `Fn() -> Vec<StrategyStatus>`.
pub trait StatusSource: Send + Sync + 'static {
    /// A snapshot of every strategy, in config order.
    fn strategies(&self) -> Vec<StrategyStatus>;
}

impl<F> StatusSource for F
where
    F: Fn() -> Vec<StrategyStatus> + Send + Sync + 'static,
{
    fn strategies(&self) -> Vec<StrategyStatus> {
        self()
    }
}

/// The live delivery workers' status, by strategy name, as `/status` and
/// `/readyz` show it (the list follows configuration reloads).
pub(crate) struct WorkerStatuses(WorkerHandles);

impl WorkerStatuses {
    pub(crate) fn new(workers: WorkerHandles) -> Self {
        WorkerStatuses(workers)
    }
}

impl StatusSource for WorkerStatuses {
    /// One entry per strategy; a worker a reload replaced that still
    /// delivers what it was given is shown inside its strategy's entry
    /// (`draining`), and the strategy is no healthier than it.
    fn strategies(&self) -> Vec<StrategyStatus> {
        let mut out: Vec<StrategyStatus> = Vec::new();
        let mut draining = Vec::new();
        for entry in self.0.list() {
            let mut worker = entry.status.snapshot();
            // The switch itself: a worker waiting for the source (a
            // standby) has not looked at it yet.
            worker.pause_reason = entry.pause.reason();
            worker.paused = worker.pause_reason.is_some();
            let status = StrategyStatus::of_worker(&entry.name, &worker);
            if entry.kind == EntryKind::Draining {
                draining.push(status);
            } else {
                out.push(status);
            }
        }
        for old in draining {
            match out.iter_mut().find(|s| s.name == old.name) {
                Some(main) => {
                    main.state = main.state.with_draining(old.state);
                    main.draining.push(old);
                }
                None => out.push(old),
            }
        }
        out
    }
}

impl StrategyStatus {
    /// A delivery worker's status: paused wins; retrying and blocked are failing.
    fn of_worker(name: &str, worker: &WorkerStatus) -> StrategyStatus {
        StrategyStatus {
            name: name.to_string(),
            state: health::worker_state(worker),
            queue_records: worker.queue_records,
            last_success: worker.last_success,
            last_error: worker.last_error.clone(),
            last_error_at: worker.last_error_at,
            recovered_at: worker.recovered_at,
            attempts: u64::from(worker.attempts),
            in_flight: u64::from(worker.in_flight),
            pause_reason: worker.pause_reason.map(|r| r.as_str()),
            progress: DeliveryProgress {
                delivered_records: worker.delivered_records,
                dead_lettered_records: worker.dead_lettered_records,
                last_lag: worker.last_lag,
                delivered_lsn: worker.delivered_lsn,
            },
            parking: ParkingStatus {
                parked_batches: worker.parked_batches,
                parked_records: worker.parked_records,
                parked_bytes: worker.parked_bytes,
                limit_bytes: worker.park_limit_bytes,
                full: worker.park_full,
                held: worker.held.clone(),
            },
            state_error: worker.state_error.clone(),
            draining: Vec::new(),
        }
    }
}

impl ControlError {
    fn status(&self) -> StatusCode {
        match self {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

/// The slot watcher's reads (see `source::SlotWatcher`).
#[derive(Clone, Debug)]
pub struct SlotFeed {
    reads: watch::Receiver<SlotWatch>,
    losses: watch::Receiver<Option<LossReport>>,
}

/// Everything the admin server reads and calls. Build it with
/// `AdminState::new` and the `with_*` methods.
#[derive(Clone)]
pub struct AdminState {
    /// The slot name shown in `/status`.
    pub slot: String,
    /// The source's status channel (from `Source::new`).
    pub source: watch::Receiver<SourceStatus>,
    /// Per-strategy status.
    pub strategies: Arc<dyn StatusSource>,
    /// Commands; `None` = those endpoints answer 503.
    pub control: Option<Arc<dyn Control>>,
    /// Dead letters in the state schema; `None` = those endpoints answer 503.
    pub dead_letters: Option<StateStore>,
    /// `[admin].token`; `None` = the mutating endpoints answer 403.
    pub token: Option<Secret>,
    /// Renders `/metrics` (from [`crate::telemetry::install_recorder`]).
    pub prom: PrometheusHandle,
    /// The console's masked configuration and endpoint stats; `None` =
    /// `/config` and `/endpoints` show nothing.
    pub console: Option<Arc<dyn ConsoleSource>>,
    /// The slot watcher's reads, for `/status`'s `replication_slot`;
    /// `None` = not shown.
    pub slot_watch: Option<SlotFeed>,
    /// The delivery workers (holds, parked work); `None` = those
    /// endpoints answer 503.
    pub workers: Option<WorkerHandles>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("slot", &self.slot)
            .field("control", &self.control.is_some())
            .field("dead_letters", &self.dead_letters.is_some())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// State with the slot, token and masked file from `config`, no
    /// strategies, endpoints, control or dead-letter access yet.
    pub(crate) fn new(
        config: &Config,
        source: watch::Receiver<SourceStatus>,
        prom: PrometheusHandle,
    ) -> Self {
        AdminState {
            slot: config.source.slot.clone(),
            source,
            strategies: Arc::new(Vec::new),
            control: None,
            dead_letters: None,
            token: config.admin.token.clone(),
            prom,
            console: Some(Arc::new(Console::new(config, Vec::new()))),
            slot_watch: None,
            workers: None,
        }
    }

    /// Sets the delivery workers' handles (holds, parked work).
    pub(crate) fn with_workers(mut self, workers: WorkerHandles) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Sets the slot watcher's reads shown in `/status`.
    pub(crate) fn with_slot(
        mut self,
        reads: watch::Receiver<SlotWatch>,
        losses: watch::Receiver<Option<LossReport>>,
    ) -> Self {
        self.slot_watch = Some(SlotFeed { reads, losses });
        self
    }

    /// Sets what the console shows beyond `/status` (by default the masked
    /// configuration and no endpoints); a reload updates it.
    pub(crate) fn with_console(mut self, console: Arc<Console>) -> Self {
        self.console = Some(console);
        self
    }

    /// Sets the strategy status source.
    pub(crate) fn with_strategies(mut self, strategies: Arc<dyn StatusSource>) -> Self {
        self.strategies = strategies;
        self
    }

    /// Sets the command handler.
    pub(crate) fn with_control(mut self, control: Arc<dyn Control>) -> Self {
        self.control = Some(control);
        self
    }

    /// Sets the dead-letter store.
    pub(crate) fn with_dead_letters(mut self, dead_letters: StateStore) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }
}

/// Binds the admin address, and logs it once: the socket outlives the
/// servers [`serve`] runs on it one after the other (early, then full).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "admin server listening");
    Ok(listener)
}

/// A second handle on the same listening socket: a server stopped on one
/// leaves the socket open for the next, so connections made in between wait
/// in the backlog instead of being refused.
pub(crate) fn share(listener: &TcpListener) -> Result<TcpListener, AdminError> {
    use std::os::fd::AsFd;
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(AdminError::Serve)?;
    TcpListener::from_std(std::net::TcpListener::from(fd)).map_err(AdminError::Serve)
}

/// Serves the admin API on `listener` until `shutdown`. Refuses a
/// non-loopback address without a token.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let addr = listener.local_addr().map_err(AdminError::Serve)?;
    if !addr.ip().is_loopback() && state.token.is_none() {
        return Err(AdminError::Unprotected(addr));
    }
    tracing::debug!(%addr, api = state.token.is_some(), "admin server serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(AdminError::Serve)
}

/// The routes, for [`serve`] or for embedding.
fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/activez", get(activez))
        .route("/status", get(status))
        .route("/strategies/{name}/pause", post(pause))
        .route("/strategies/{name}/resume", post(resume))
        .route("/strategies/{name}/retry", post(retry))
        .route("/strategies/{name}/runs", post(start_run))
        .route("/strategies/{name}/backfill", post(start_backfill))
        .route("/runs", get(ui::list_runs))
        .route("/runs/{id}", get(run).delete(cancel_run))
        .route("/runs/{id}/pause", post(runs::pause_run))
        .route("/runs/{id}/resume", post(runs::resume_run))
        .route("/dead-letters", get(list_dead_letters))
        .route(
            "/dead-letters/{id}",
            get(get_dead_letter).delete(delete_dead_letter),
        )
        .route("/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/config/reload", post(reload_config))
        .merge(parking::routes())
        .merge(ui::routes())
        .layer(axum::middleware::from_fn(ui::no_store))
        .with_state(state)
}

type Reply = Result<Response, Response>;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let source = state.source.borrow().clone();
    let strategies = state.strategies.strategies();
    let found = strategy_health(&strategies);
    health::record(&health::instance(&source, &found), &found);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.prom.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// What the instance's health rests on, per strategy.
fn strategy_health(strategies: &[StrategyStatus]) -> Vec<StrategyHealth<'_>> {
    strategies
        .iter()
        .map(|s| StrategyHealth {
            name: &s.name,
            state: s.state,
            last_error: s.last_error.as_deref(),
            parked_batches: s.parking.parked_batches,
            state_error: s
                .state_error
                .as_deref()
                .or_else(|| s.draining.iter().find_map(|d| d.state_error.as_deref())),
            draining: !s.draining.is_empty(),
        })
        .collect()
}

/// The instance's health (the one decision, [`health::instance`]).
fn instance_health(source: &SourceStatus, strategies: &[StrategyStatus]) -> Health {
    health::instance(source, &strategy_health(strategies))
}

/// 200 while ready or degraded (an endpoint outage does not make a
/// streaming instance unready), else 503; the body says which and why.
async fn readyz(State(state): State<AdminState>) -> Response {
    let source = state.source.borrow().clone();
    let health = instance_health(&source, &state.strategies.strategies());
    match health.readiness {
        Readiness::Ready | Readiness::Degraded => text(StatusCode::OK, health.text),
        Readiness::NotReady => text(StatusCode::SERVICE_UNAVAILABLE, health.text),
    }
}

/// 200 `active` while this instance streams from the slot, else 503 with
/// the reason (`standby`, `connecting…`, `failed: …`).
async fn activez(State(state): State<AdminState>) -> Response {
    let source = state.source.borrow().clone();
    let health = instance_health(&source, &state.strategies.strategies());
    if health.active {
        text(StatusCode::OK, "active")
    } else if source.state == SourceState::Standby {
        text(StatusCode::SERVICE_UNAVAILABLE, "standby")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, health.text)
    }
}

/// The instance's part in a pair on one slot.
fn role(state: SourceState) -> Option<&'static str> {
    match state {
        SourceState::Streaming => Some("active"),
        SourceState::Standby => Some("standby"),
        SourceState::Connecting | SourceState::Failed => None,
    }
}

fn rfc3339(time: SystemTime) -> String {
    let micros = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    crate::timestamp::format_rfc3339(micros)
}

/// The `/status` document.
fn status_json(slot: &str, source: &SourceStatus, strategies: &[StrategyStatus]) -> Value {
    let now = SystemTime::now();
    let health = instance_health(source, strategies);
    let strategies: Vec<Value> = strategies
        .iter()
        .map(|s| {
            let (lag_bytes, lag_seconds) = ui::lag(s, source, now);
            json!({
                "name": s.name,
                "state": s.state.as_str(),
                "queue_records": s.queue_records,
                "last_success": s.last_success.map(rfc3339),
                "last_error": s.last_error,
                "last_error_at": s.last_error_at.map(rfc3339),
                "recovered_at": s.recovered_at.map(rfc3339),
                "attempts": s.attempts,
                "in_flight": s.in_flight,
                "pause_reason": s.pause_reason,
                "delivered_records": s.progress.delivered_records,
                "dead_lettered_records": s.progress.dead_lettered_records,
                "lag_bytes": lag_bytes,
                "lag_seconds": lag_seconds,
                "parked": s.parking,
                "state_error": s.state_error,
                "delivered_lsn": s.progress.delivered_lsn.to_string(),
                "draining": s.draining.iter().map(|d| json!({
                    "state": d.state.as_str(),
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "in_flight": d.in_flight,
                    "queue_records": d.queue_records,
                    "delivered_lsn": d.progress.delivered_lsn.to_string(),
                    "parked": d.parking,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "slot": slot,
        "state": source.state.as_str(),
        "role": role(source.state),
        "received_lsn": source.received_lsn.to_string(),
        "acked_lsn": source.acked_lsn.to_string(),
        "server_wal_end": source.server_wal_end.to_string(),
        "lag_bytes": source.server_wal_end.0.saturating_sub(source.acked_lsn.0),
        "last_error": source.last_error,
        "last_error_at": source.last_error_at.map(rfc3339),
        "recovered_at": source.recovered_at.map(rfc3339),
        "health": {
            "state": health.readiness.as_str(),
            "text": health.text,
            "reasons": health.reasons,
        },
        "strategies": strategies,
    })
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let source = state.source.borrow().clone();
    let mut doc = status_json(&state.slot, &source, &state.strategies.strategies());
    if let (Some(strategies), Some(control)) = (doc["strategies"].as_array_mut(), &state.control) {
        for strategy in strategies {
            let name = strategy["name"].as_str().unwrap_or_default().to_string();
            strategy["schedules"] = Value::Array(control.schedules(&name));
        }
    }
    if let Some(config) = state.control.as_ref().and_then(|c| c.config_status()) {
        doc["config"] = config;
    }
    if let Some(slot) = &state.slot_watch {
        doc["replication_slot"] =
            slot::slot_json(&slot.reads.borrow(), slot.losses.borrow().as_ref());
    }
    Json(doc)
}

#[derive(Debug, serde::Deserialize)]
struct ReloadParams {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /config/reload`: re-reads the file and applies it (200), or says
/// why not: 422 invalid, 409 refused (a setting only read at start).
/// `?dry_run=true` validates and plans without applying.
async fn reload_config(
    State(state): State<AdminState>,
    headers: HeaderMap,
    params: Result<Query<ReloadParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let control = control(&state, &headers)?;
    let Query(params) =
        params.map_err(|err| text(StatusCode::BAD_REQUEST, format!("{err}; use ?dry_run=true")))?;
    let outcome = control
        .reload(params.dry_run)
        .await
        .map_err(IntoResponse::into_response)?;
    let code = match outcome.result {
        ReloadResult::Applied | ReloadResult::Unchanged => StatusCode::OK,
        ReloadResult::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ReloadResult::Refused => StatusCode::CONFLICT,
    };
    Ok((code, Json(outcome)).into_response())
}

/// The token check, then the control handle.
// A ready response as the error keeps handlers short; it is cold-path.
#[allow(clippy::result_large_err)]
fn control(state: &AdminState, headers: &HeaderMap) -> Result<Arc<dyn Control>, Response> {
    auth::authorize(state.token.as_ref(), headers).map_err(IntoResponse::into_response)?;
    state.control.clone().ok_or_else(|| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: commands are not wired in this process",
        )
    })
}

// A ready response as the error keeps handlers short; it is cold-path.
#[allow(clippy::result_large_err)]
fn store(state: &AdminState, headers: &HeaderMap) -> Result<StateStore, Response> {
    auth::authorize(state.token.as_ref(), headers).map_err(IntoResponse::into_response)?;
    state.dead_letters.clone().ok_or_else(|| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: the state schema is not connected in this process",
        )
    })
}

// A ready response as the error keeps handlers short; it is cold-path.
#[allow(clippy::result_large_err)]
fn parse_id(id: &str) -> Result<i64, Response> {
    id.parse::<i64>().map_err(|_| {
        text(
            StatusCode::BAD_REQUEST,
            format!("bad id {id:?}: expected an integer"),
        )
    })
}

/// Longest strategy name the API takes.
const MAX_NAME_BYTES: usize = 1024;
/// Longest run filter the API takes.
const MAX_FILTER_BYTES: usize = 16 * 1024;

/// Refuses, with 400 naming `param`, a text value Postgres cannot take
/// (a NUL byte) or longer than `max` bytes.
// A ready response as the error keeps handlers short; it is cold-path.
#[allow(clippy::result_large_err)]
fn text_param(param: &str, value: &str, max: usize) -> Result<(), Response> {
    let why = if value.contains('\0') {
        "contains a NUL byte"
    } else if value.len() > max {
        "is too long"
    } else {
        return Ok(());
    };
    Err(text(
        StatusCode::BAD_REQUEST,
        format!("bad {param}: {why} (at most {max} bytes, no NUL)"),
    ))
}

fn state_error(err: StateError) -> Response {
    if err.is_missing_schema() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable: the state schema walhook is missing; run walhook setup",
        )
    } else {
        tracing::warn!(error = %err, "admin state query failed");
        text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
    }
}

async fn pause(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    text_param("strategy name", &name, MAX_NAME_BYTES)?;
    control
        .pause(&name)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(strategy = %name, "strategy paused by the admin API");
    Ok(Json(json!({ "strategy": name, "state": "paused" })).into_response())
}

async fn resume(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    text_param("strategy name", &name, MAX_NAME_BYTES)?;
    control
        .resume(&name)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(strategy = %name, "strategy resumed by the admin API");
    Ok(Json(json!({ "strategy": name, "state": "running" })).into_response())
}

async fn retry(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    text_param("strategy name", &name, MAX_NAME_BYTES)?;
    let woken = control
        .retry(&name)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(strategy = %name, woken, "backoff ended by the admin API");
    Ok(Json(json!({ "strategy": name, "retrying": woken })).into_response())
}

/// `?mode=sync|async&limit=N&filter=EXPR&from=KEY`.
#[derive(Debug, serde::Deserialize)]
struct RunParams {
    mode: Option<RunMode>,
    limit: Option<u64>,
    filter: Option<String>,
    from: Option<String>,
}

async fn start_run(
    state: State<AdminState>,
    name: Path<String>,
    headers: HeaderMap,
    params: Result<Query<RunParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    start(state, name, headers, params, false).await
}

/// `POST /strategies/{name}/backfill`: what `walhook run-strategy` asks of
/// the walhook that streams; an async run `on_demand` does not gate.
async fn start_backfill(
    state: State<AdminState>,
    name: Path<String>,
    headers: HeaderMap,
    params: Result<Query<RunParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    start(state, name, headers, params, true).await
}

async fn start(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<RunParams>, axum::extract::rejection::QueryRejection>,
    operator: bool,
) -> Reply {
    let control = control(&state, &headers)?;
    text_param("strategy name", &name, MAX_NAME_BYTES)?;
    let Query(params) = params.map_err(|err| {
        text(
            StatusCode::BAD_REQUEST,
            format!("{err}; use ?mode=sync|async&limit=N&filter=EXPR"),
        )
    })?;
    if let Some(filter) = &params.filter {
        text_param("filter", filter, MAX_FILTER_BYTES)?;
    }
    if params.limit.is_some_and(|l| i64::try_from(l).is_err()) {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("bad limit: use 0 to {}", i64::MAX),
        ));
    }
    let from = match &params.from {
        None => None,
        Some(text) => {
            text_param("from", text, MAX_FILTER_BYTES)?;
            Some(crate::runs::parse_key(text).map_err(|e| self::text(StatusCode::BAD_REQUEST, e))?)
        }
    };
    let request = RunRequest {
        mode: if operator {
            Some(RunMode::Async)
        } else {
            params.mode
        },
        limit: params.limit,
        filter: params.filter.filter(|f| !f.trim().is_empty()),
        from,
        operator,
    };
    match control
        .start_run(&name, request)
        .await
        .map_err(IntoResponse::into_response)?
    {
        RunReply::Completed(result) => Ok(Json(result).into_response()),
        RunReply::Started { id } => {
            let location = format!("/runs/{id}");
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location.clone())],
                Json(json!({ "id": id, "strategy": name, "status_url": location })),
            )
                .into_response())
        }
    }
}

async fn run(State(state): State<AdminState>, Path(id): Path<String>, headers: HeaderMap) -> Reply {
    let control = control(&state, &headers)?;
    let id = parse_id(&id)?;
    let run = control.run(id).await.map_err(IntoResponse::into_response)?;
    Ok(Json(run).into_response())
}

async fn cancel_run(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    let id = parse_id(&id)?;
    let run = control
        .cancel_run(id)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(run = id, "run cancelled by the admin API");
    Ok(Json(run).into_response())
}

/// `?strategy=&after=&limit=`.
#[derive(Debug, serde::Deserialize)]
struct DeadLetterParams {
    strategy: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_dead_letters(
    State(state): State<AdminState>,
    headers: HeaderMap,
    params: Result<Query<DeadLetterParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let store = store(&state, &headers)?;
    let Query(params) = params.map_err(|err| {
        text(
            StatusCode::BAD_REQUEST,
            format!("{err}; use ?strategy=NAME&after=ID&limit=N"),
        )
    })?;
    if let Some(strategy) = &params.strategy {
        text_param("strategy", strategy, MAX_NAME_BYTES)?;
    }
    if params.after.is_some_and(|a| a < 0) {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "bad after: use a dead-letter id (0 or more), e.g. the previous page's next_after",
        ));
    }
    if params
        .limit
        .is_some_and(|l| !(1..=dead_letters::MAX_PAGE).contains(&l))
    {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("bad limit: use 1 to {}", dead_letters::MAX_PAGE),
        ));
    }
    let query = DeadLetterQuery {
        strategy: params.strategy,
        after: params.after,
        limit: params.limit,
    };
    let page = dead_letters::page(&store, &query)
        .await
        .map_err(state_error)?;
    Ok(Json(page).into_response())
}

async fn get_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let store = store(&state, &headers)?;
    let id = parse_id(&id)?;
    match dead_letters::letter(&store, id)
        .await
        .map_err(state_error)?
    {
        Some(letter) => Ok(Json(letter).into_response()),
        None => Err(text(StatusCode::NOT_FOUND, format!("no dead letter {id}"))),
    }
}

async fn delete_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let store = store(&state, &headers)?;
    let id = parse_id(&id)?;
    if store.delete_dead_letter(id).await.map_err(state_error)? {
        tracing::info!(dead_letter = id, "dead letter deleted by the admin API");
        Ok(Json(json!({ "id": id, "deleted": true })).into_response())
    } else {
        Err(text(StatusCode::NOT_FOUND, format!("no dead letter {id}")))
    }
}

async fn replay_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let control = control(&state, &headers)?;
    let id = parse_id(&id)?;
    let outcome = control
        .replay_dead_letter(id)
        .await
        .map_err(IntoResponse::into_response)?;
    tracing::info!(dead_letter = id, "dead letter replayed by the admin API");
    Ok(Json(outcome).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::DeliveryState;
    use crate::lsn::Lsn;

    fn strategy(state: StrategyState) -> StrategyStatus {
        StrategyStatus {
            name: "orders".into(),
            state,
            queue_records: 3,
            last_success: Some(SystemTime::UNIX_EPOCH),
            last_error: Some("HTTP 503".into()),
            attempts: 2,
            in_flight: 1,
            pause_reason: None,
            progress: DeliveryProgress::default(),
            ..Default::default()
        }
    }

    #[test]
    fn a_draining_workers_state_store_error_makes_the_strategy_unready() {
        let source = SourceStatus {
            state: SourceState::Streaming,
            ..SourceStatus::default()
        };
        let mut orders = strategy(StrategyState::Running);
        orders.last_error = None;
        assert_eq!(instance_health(&source, &[orders.clone()]).text, "ready");
        orders.draining.push(StrategyStatus {
            state_error: Some("parking a batch: permission denied".into()),
            ..strategy(StrategyState::Failing)
        });
        let health = instance_health(&source, &[orders]);
        assert_eq!(health.readiness, Readiness::NotReady);
        assert!(health.text.contains("permission denied"), "{}", health.text);
    }

    #[test]
    fn a_workers_status_is_shown_typed_paused_first_then_failing() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let worker = |state, paused: bool| WorkerStatus {
            state,
            queue_records: 4,
            in_flight: 1,
            last_success: Some(at),
            last_error: Some("HTTP 502".into()),
            attempts: 2,
            delivered_batches: 0,
            dead_lettered_batches: 0,
            delivered_records: 0,
            dead_lettered_records: 0,
            last_lag: None,
            delivered_lsn: Lsn::ZERO,
            paused,
            pause_reason: paused.then_some(crate::delivery::PauseReason::EndpointGone),
            ..Default::default()
        };
        let cases = [
            (DeliveryState::Idle, false, StrategyState::Running),
            (DeliveryState::Delivering, false, StrategyState::Running),
            (DeliveryState::Stopped, false, StrategyState::Running),
            (DeliveryState::Retrying, false, StrategyState::Failing),
            (DeliveryState::Blocked, false, StrategyState::Failing),
            (DeliveryState::Blocked, true, StrategyState::Paused),
        ];
        for (delivery, paused, shown) in cases {
            let status = StrategyStatus::of_worker("orders", &worker(delivery, paused));
            assert_eq!(status.state, shown, "{delivery:?} paused={paused}");
            assert_eq!(status.name, "orders");
            assert_eq!(status.last_success, Some(at), "the time itself, not text");
            assert_eq!(status.queue_records, 4);
            assert_eq!(status.attempts, 2);
            assert_eq!(status.last_error.as_deref(), Some("HTTP 502"));
            assert_eq!(status.in_flight, 1);
            assert_eq!(status.pause_reason, paused.then_some("endpoint_gone"));
        }
        let status = StrategyStatus::of_worker("orders", &worker(DeliveryState::Idle, false));
        let doc = status_json("walhook", &SourceStatus::default(), &[status]);
        assert_eq!(
            doc["strategies"][0]["last_success"],
            "2023-11-14T22:13:20.123456Z"
        );
    }

    #[test]
    fn status_reports_lag_and_strategies() {
        let source = SourceStatus {
            state: SourceState::Streaming,
            received_lsn: Lsn(0x1_0000_0010),
            acked_lsn: Lsn(0x1_0000_0000),
            server_wal_end: Lsn(0x1_0000_0100),
            last_error: None,
            ..Default::default()
        };
        let doc = status_json("walhook", &source, &[strategy(StrategyState::Paused)]);
        assert_eq!(doc["slot"], "walhook");
        assert_eq!(doc["state"], "streaming");
        assert_eq!(doc["acked_lsn"], "1/0");
        assert_eq!(doc["received_lsn"], "1/10");
        assert_eq!(doc["lag_bytes"], 256);
        assert_eq!(doc["strategies"][0]["state"], "paused");
        assert_eq!(doc["strategies"][0]["queue_records"], 3);
        assert_eq!(doc["strategies"][0]["attempts"], 2);
        assert_eq!(
            doc["strategies"][0]["last_success"],
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
