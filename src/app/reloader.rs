//! Applying a configuration reload to the running stages (see
//! [`crate::reload`] for the guarantees): validate and build the new
//! configuration, start the new workers, swap the routes at a transaction
//! boundary, retire the old workers, and update what serves the operator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::live::{LiveStrategy, Start, WorkerContext, WorkerEnd};
use crate::admin::Console;
use crate::config::Config;
use crate::delivery::{Endpoint, EntryKind, ReplayTarget, WorkerHandles};
use crate::lsn::Lsn;
use crate::pg::{self, ConnectError};
use crate::prepare::{prepare, PrepareError, Prepared};
use crate::reload::{self, Outcome, Plan, ReloadRequest, ReloadResult, Requests};
use crate::runs::{schedule, AppControl, RunManager, ScheduleBoard};
use crate::source::{SourceState, SourceStatus};
use crate::strategy::{CompiledStrategy, Reroute};
use crate::telemetry;

/// A strategy a reload took out of the routes, until its worker has ended.
#[derive(Debug)]
struct Retiring {
    slot: usize,
    /// Listed in `/status` while it drains (none for a worker of an
    /// abandoned reload, which was given nothing).
    entry: Option<crate::delivery::WorkerEntry>,
    /// Its strategy, settings and pause switch: a later reload changes the
    /// settings of every worker of the strategy still draining.
    name: String,
    settings: crate::delivery::SettingsHandle,
    pause: crate::delivery::PauseHandle,
}

/// A worker a reload started, until the reload is applied or abandoned.
#[derive(Debug)]
struct Started {
    slot: usize,
    name: String,
    pause: crate::delivery::PauseHandle,
    /// Lets a replacement send (see [`Reloader::apply`]).
    gate: CancellationToken,
}

/// Everything a reload changes, owned by the application's main loop.
pub(crate) struct Reloader {
    pub(crate) path: Option<PathBuf>,
    pub(crate) config: Config,
    pub(crate) live: Vec<LiveStrategy>,
    retiring: Vec<Retiring>,
    pub(crate) endpoints: BTreeMap<String, Arc<Endpoint>>,
    pub(crate) workers: WorkerContext,
    pub(crate) handles: WorkerHandles,
    pub(crate) reroute: mpsc::Sender<Reroute>,
    pub(crate) requests: Requests,
    pub(crate) control: Arc<AppControl>,
    pub(crate) runs: RunManager,
    pub(crate) board: ScheduleBoard,
    console: Arc<Console>,
    pub(crate) source: watch::Receiver<SourceStatus>,
    schedules: JoinSet<()>,
    schedules_stop: CancellationToken,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

/// What [`Reloader::new`] needs.
pub(crate) struct Parts {
    pub(crate) path: Option<PathBuf>,
    pub(crate) config: Config,
    pub(crate) live: Vec<LiveStrategy>,
    pub(crate) endpoints: BTreeMap<String, Arc<Endpoint>>,
    pub(crate) workers: WorkerContext,
    pub(crate) handles: WorkerHandles,
    pub(crate) reroute: mpsc::Sender<Reroute>,
    pub(crate) requests: Requests,
    pub(crate) control: Arc<AppControl>,
    pub(crate) runs: RunManager,
    pub(crate) board: ScheduleBoard,
    pub(crate) console: Arc<Console>,
    pub(crate) source: watch::Receiver<SourceStatus>,
}

impl Reloader {
    /// Takes over the running strategies and starts the schedules.
    pub(crate) fn new(parts: Parts) -> Reloader {
        let mut reloader = Reloader {
            path: parts.path,
            config: parts.config,
            live: parts.live,
            retiring: Vec::new(),
            endpoints: parts.endpoints,
            workers: parts.workers,
            handles: parts.handles,
            reroute: parts.reroute,
            requests: parts.requests,
            control: parts.control,
            runs: parts.runs,
            board: parts.board,
            console: parts.console,
            source: parts.source,
            schedules: JoinSet::new(),
            schedules_stop: CancellationToken::new(),
        };
        reloader.start_schedules();
        reloader
    }

    fn start_schedules(&mut self) {
        self.schedules_stop = CancellationToken::new();
        self.schedules = schedule::spawn(
            self.runs.clone(),
            self.board.clone(),
            &self.config,
            self.source.clone(),
            self.schedules_stop.clone(),
        );
    }

    /// Stops the schedules (at shutdown).
    pub(crate) async fn stop(&mut self) {
        self.schedules_stop.cancel();
        while self.schedules.join_next().await.is_some() {}
    }

    /// A worker ended: true when a reload retired it (not a failure); its
    /// checkpoint index is forgotten once it has delivered what it was given.
    pub(crate) fn worker_ended(&mut self, slot: usize) -> bool {
        let Some(at) = self.retiring.iter().position(|r| r.slot == slot) else {
            return false;
        };
        let retired = self.retiring.remove(at);
        if !self.workers.checkpoint.remove(slot) {
            tracing::warn!(
                slot,
                "a retired worker ended before delivering everything; it holds the slot"
            );
        }
        if let Some(entry) = retired.entry {
            tracing::info!(strategy = %entry.name, "retired worker delivered what it was given and stopped");
        }
        self.publish_handles();
        true
    }

    /// A reload that did not get applied: the workers it started (nothing
    /// was routed to them) are retired, the old ones run on.
    fn abandon(
        &mut self,
        live: Vec<LiveStrategy>,
        started: &[Started],
        old: Vec<Option<LiveStrategy>>,
    ) {
        for s in started {
            s.gate.cancel();
        }
        let (new_ones, kept): (Vec<_>, Vec<_>) = live
            .into_iter()
            .partition(|l| started.iter().any(|s| s.slot == l.slot));
        for l in new_ones {
            self.retiring.push(Retiring {
                slot: l.slot,
                entry: None,
                name: l.name.clone(),
                settings: l.settings.clone(),
                pause: l.pause.clone(),
            });
        }
        self.live = kept.into_iter().chain(old.into_iter().flatten()).collect();
    }

    fn publish_handles(&self) {
        let mut entries: Vec<_> = self.live.iter().map(|l| l.entry(EntryKind::Live)).collect();
        entries.extend(self.retiring.iter().filter_map(|r| r.entry.clone()));
        self.handles.set(entries);
    }

    /// Handles one request: validates, plans and (unless a dry run)
    /// applies; records the outcome (log, metric, `/status`) and answers.
    pub(crate) async fn handle(
        &mut self,
        request: ReloadRequest,
        tasks: &mut JoinSet<WorkerEnd>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) {
        let (outcome, sha256) = self.reload(request.dry_run, tasks, stop, shutdown).await;
        self.requests.record(&outcome, sha256);
        if let Some(reply) = request.reply {
            let _ = reply.send(outcome);
        }
    }

    /// The outcome, and the hash of the file read.
    async fn reload(
        &mut self,
        dry_run: bool,
        tasks: &mut JoinSet<WorkerEnd>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> (Outcome, Option<String>) {
        let Some(path) = self.path.clone() else {
            let error = "this walhook was not started from a configuration file".into();
            return (Outcome::failed(ReloadResult::Refused, error, None), None);
        };
        let (new, sha256) = match reload::read(&path) {
            (Ok(new), sha256) => (new, sha256),
            (Err(errors), sha256) => {
                let error = format!("{}: {errors}", path.display());
                return (Outcome::failed(ReloadResult::Invalid, error, None), sha256);
            }
        };
        let mut outcome = self
            .plan_and_apply(new, dry_run, tasks, stop, shutdown)
            .await;
        outcome.dry_run = dry_run;
        (outcome, sha256)
    }

    async fn plan_and_apply(
        &mut self,
        new: Config,
        dry_run: bool,
        tasks: &mut JoinSet<WorkerEnd>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let plan = Plan::between(&self.config, &new);
        if !plan.refused.is_empty() {
            let error = plan
                .refused
                .iter()
                .map(|r| format!("{}: {}", r.path, r.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Outcome::failed(ReloadResult::Refused, error, Some(plan));
        }
        if plan.is_empty() {
            return Outcome {
                result: ReloadResult::Unchanged,
                dry_run: false,
                error: None,
                plan: Some(plan),
                boundary_lsn: None,
            };
        }
        let built = match build(&new).await {
            Ok(built) => built,
            Err(error) => {
                return Outcome::failed(ReloadResult::Invalid, error.to_string(), Some(plan))
            }
        };
        if dry_run {
            return Outcome {
                result: ReloadResult::Applied,
                dry_run: false,
                error: None,
                plan: Some(plan),
                boundary_lsn: None,
            };
        }
        match self.apply(new, built, &plan, tasks, stop, shutdown).await {
            Ok(boundary) => Outcome {
                result: ReloadResult::Applied,
                dry_run: false,
                error: None,
                plan: Some(plan),
                // 0/0: no transaction went through the router yet, so
                // every change walhook will stream comes under the new one.
                boundary_lsn: (boundary != Lsn::ZERO).then(|| boundary.to_string()),
            },
            Err((result, error)) => Outcome::failed(result, error, Some(plan)),
        }
    }

    /// Starts the new workers, swaps the routes at the next transaction
    /// boundary, retires the old workers and updates the rest.
    async fn apply(
        &mut self,
        new: Config,
        built: Prepared,
        plan: &Plan,
        tasks: &mut JoinSet<WorkerEnd>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Lsn, (ReloadResult, String)> {
        let restarted = plan.restarted();
        // Unchanged endpoints keep their state (circuit, tokens).
        let changed_endpoints: Vec<&str> = plan.endpoints.iter().map(|e| e.name.as_str()).collect();
        let mut endpoints = built.endpoints;
        for (name, endpoint) in endpoints.iter_mut() {
            if !changed_endpoints.contains(&name.as_str()) {
                if let Some(old) = self.endpoints.get(name) {
                    *endpoint = old.clone();
                }
            }
        }
        let mut old: Vec<Option<LiveStrategy>> = std::mem::take(&mut self.live)
            .into_iter()
            .map(Some)
            .collect();
        let mut live = Vec::with_capacity(new.strategies.len());
        let mut started = Vec::new();
        for (cfg, compiled) in new.strategies.iter().zip(built.strategies) {
            let previous = old
                .iter_mut()
                .find(|l| l.as_ref().is_some_and(|l| l.name == cfg.name));
            let kept = previous.filter(|_| !restarted.contains(cfg.name.as_str()));
            if let Some(kept) = kept.and_then(Option::take) {
                live.push(kept);
                continue;
            }
            // A replacement sends once its predecessor has ended (or at
            // once when the reload is abandoned: it was given nothing).
            let gate = CancellationToken::new();
            let replacing = old.iter().flatten().find(|l| l.name == cfg.name).map(|l| {
                let (finished, open) = (l.finished.clone(), gate.clone());
                tokio::spawn(async move {
                    finished.cancelled().await;
                    open.cancel();
                });
                (l.pause.clone(), l.retry.clone(), gate.clone())
            });
            let retry = new
                .endpoint_of(cfg)
                .map(|e| e.retry.clone())
                .unwrap_or_default();
            let spawned = match endpoints.get(&cfg.endpoint).cloned() {
                Some(endpoint) => {
                    let start = Start {
                        cfg,
                        compiled,
                        endpoint,
                        slot: self.workers.checkpoint.add(),
                        by_reload: true,
                        replacing,
                    };
                    self.workers
                        .spawn(start, retry, tasks, stop)
                        .map_err(|e| e.to_string())
                }
                // Validation makes this unreachable; still, never half-applied.
                None => Err(format!("no endpoint named {:?}", cfg.endpoint)),
            };
            let spawned = match spawned {
                Ok(spawned) => spawned,
                Err(err) => {
                    self.abandon(live, &started, old);
                    let error = format!("strategy {}: {err}", cfg.name);
                    return Err((ReloadResult::Invalid, error));
                }
            };
            let schedules: Vec<&str> = cfg.schedules.iter().map(|s| s.name()).collect();
            telemetry::register_strategy(&cfg.name, &schedules);
            started.push(Started {
                slot: spawned.slot,
                name: spawned.name.clone(),
                pause: spawned.pause.clone(),
                gate,
            });
            live.push(spawned);
        }
        // Stored pauses hold an added strategy before it sends anything
        // (nothing is routed to it before the swap below).
        match self.workers.state.paused_strategies().await {
            Ok(paused) => {
                for s in &started {
                    if paused.contains(&s.name) && s.pause.reason().is_none() {
                        s.pause.pause();
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read the paused strategies"),
        }

        // The swap, between two transactions.
        let (applied, boundary) = oneshot::channel();
        let routes = live.iter().map(LiveStrategy::route).collect();
        let sent = self.reroute.send(Reroute { routes, applied }).await.is_ok();
        let mut boundary = boundary;
        let waited = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = tokio::time::sleep(SWAP_TIMEOUT) => None,
            lsn = &mut boundary, if sent => lsn.ok(),
        };
        // Stopped waiting: the router swaps nothing from now on, unless it
        // already did.
        boundary.close();
        let Some(boundary) = waited.or_else(|| boundary.try_recv().ok()) else {
            self.abandon(live, &started, old);
            let error = if shutdown.is_cancelled() {
                "walhook is stopping; the reload was not applied".into()
            } else {
                format!(
                    "the stream did not reach the end of a transaction within {SWAP_TIMEOUT:?} \
                     (a paused strategy with a full queue holds it?); nothing changed, try again"
                )
            };
            return Err((ReloadResult::Refused, error));
        };
        // Only this loop still holds the old queues: dropping them lets the
        // old workers deliver what they hold and end.
        // A replaced worker still delivering what it was given does so with
        // the new endpoint, retry policy and templates from its next
        // attempt on, and leaves its parked work to its successor; it is
        // listed (and can be acted on) until it ends.
        for retired in old.into_iter().flatten() {
            let kind = if live.iter().any(|l| l.name == retired.name) {
                retired.handoff.cancel();
                EntryKind::Draining
            } else {
                EntryKind::Removed
            };
            self.retiring.push(Retiring {
                slot: retired.slot,
                entry: Some(retired.entry(kind)),
                name: retired.name.clone(),
                settings: retired.settings.clone(),
                pause: retired.pause.clone(),
            });
        }
        for retiring in &self.retiring {
            let Some(next) = live.iter().find(|l| l.name == retiring.name) else {
                continue;
            };
            let retry = new
                .strategies
                .iter()
                .find(|s| s.name == next.name)
                .and_then(|cfg| new.endpoint_of(cfg))
                .map(|e| e.retry.clone())
                .unwrap_or_default();
            let decorate: Arc<dyn crate::batch::Decorate> = next.compiled.clone();
            retiring
                .settings
                .update(next.endpoint.clone(), retry, decorate, &retiring.pause);
        }
        self.live = live;
        self.publish_handles();

        let config = Arc::new(new.clone());
        let compiled: Vec<Arc<CompiledStrategy>> =
            self.live.iter().map(|l| l.compiled.clone()).collect();
        let targets: Vec<ReplayTarget> = self
            .live
            .iter()
            .map(|l| {
                let decorate: Arc<dyn crate::batch::Decorate> = l.compiled.clone();
                (l.name.clone(), l.endpoint.clone(), decorate)
            })
            .collect();
        self.control.reconfigure(&new, targets);
        self.runs.reconfigure(config, compiled, endpoints.clone());
        // A strategy the reload added with `backfill.initial` gets its first
        // backfill now (a standby's, when it takes over).
        if self.source.borrow().state == SourceState::Streaming {
            let runs = self.runs.clone();
            tokio::spawn(async move { runs.start_initial().await });
        }
        self.console
            .reconfigure(&new, super::endpoint_stats(&endpoints));
        self.endpoints = endpoints;
        self.config = new;
        // Schedules follow the file; times missed meanwhile are not caught up.
        self.schedules_stop.cancel();
        while self.schedules.join_next().await.is_some() {}
        self.board.reset(&self.config);
        self.start_schedules();
        Ok(boundary)
    }
}

/// How long a reload waits for the router to reach a transaction boundary.
const SWAP_TIMEOUT: Duration = Duration::from_secs(20);

/// The startup checks, as startup runs them ([`prepare`]), on a
/// connection of their own. The error names each problem's field.
async fn build(config: &Config) -> Result<Prepared, ReloadBuildError> {
    let client = pg::connect(config.source.url.expose(), "walhook-reload")
        .await
        .map_err(ReloadBuildError::Connect)?;
    Ok(prepare(config, &client).await?)
}

/// Why a reload's configuration could not be built.
#[derive(Debug, thiserror::Error)]
enum ReloadBuildError {
    #[error("connecting to the source database: {0}")]
    Connect(#[source] ConnectError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
}
