//! The admin API's commands ([`Control`]) for `walhook run`: runs go to the
//! [`RunManager`], pause and resume to the live workers' pause switches,
//! retry-now to their retry buttons ([`WorkerHandles`], which follow reloads),
//! dead-letter replays to the strategy's endpoint ([`replay_dead_letter`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::manager::{Ask, RunManager};
use super::plan::Trigger;
use super::schedule::ScheduleBoard;
use crate::config::Config;
use crate::control::{BoxFuture, Control, ControlError, RunMode, RunReply, RunRequest};
use crate::delivery::replay::{replay_dead_letter, ReplayError, ReplayTarget};
use crate::delivery::{PauseReason, WorkerEntry, WorkerHandles};
use crate::reload::{Outcome, ReloadHandle};
use crate::source::{SourceState, SourceStatus};
use crate::state::{StateError, StateStore};

/// [`Control`] over a [`RunManager`].
pub(crate) struct AppControl {
    runs: RunManager,
    /// (name, sync allowed, async allowed) per strategy, for the default
    /// mode; replaced by a reload.
    modes: Mutex<Vec<(String, bool, bool)>>,
    /// The live workers' pause switches and retry-now buttons, by strategy name.
    workers: WorkerHandles,
    /// Where pauses are kept (`walhook.pauses`); `None` = in memory only.
    pause_store: Option<StateStore>,
    /// Where dead letters live, and each strategy's endpoint and templates.
    replay: Option<Replay>,
    /// The schedules `/status` shows.
    schedules: ScheduleBoard,
    /// Configuration reloads (`POST /config/reload`).
    reload: Option<ReloadHandle>,
}

struct Replay {
    state: StateStore,
    strategies: Mutex<Vec<ReplayTarget>>,
}

/// (name, sync allowed, async allowed) of each strategy.
fn modes(config: &Config) -> Vec<(String, bool, bool)> {
    config
        .strategies
        .iter()
        .map(|s| (s.name.clone(), s.on_demand.sync, s.on_demand.r#async))
        .collect()
}

impl AppControl {
    /// Commands for `config`'s strategies.
    pub(crate) fn new(runs: RunManager, config: &Config) -> Self {
        AppControl {
            runs,
            modes: Mutex::new(modes(config)),
            workers: WorkerHandles::default(),
            pause_store: None,
            replay: None,
            schedules: ScheduleBoard::default(),
            reload: None,
        }
    }

    /// Enables `POST /config/reload` and `/status`'s `config`.
    pub(crate) fn with_reload(mut self, reload: ReloadHandle) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Lets `/status` show the schedules' names, next times and last runs.
    pub(crate) fn with_schedules(mut self, schedules: ScheduleBoard) -> Self {
        self.schedules = schedules;
        self
    }

    /// Lets `pause`/`resume`/`retry` reach the live workers, and keeps
    /// pauses in `store` so that they outlive restarts and failover.
    pub(crate) fn with_workers(mut self, workers: WorkerHandles, store: StateStore) -> Self {
        self.workers = workers;
        self.pause_store = Some(store);
        self
    }

    /// A reload applied `config`: the strategies' run modes and replay
    /// targets follow it (the workers' handles are updated by the reloader).
    pub(crate) fn reconfigure(&self, config: &Config, replay_targets: Vec<ReplayTarget>) {
        *lock(&self.modes) = modes(config);
        if let Some(replay) = &self.replay {
            *lock(&replay.strategies) = replay_targets;
        }
    }

    /// Pauses the strategies `walhook.pauses` names and lifts admin pauses
    /// it no longer names (a pause or resume made through another
    /// instance); a pause for a 410 from the endpoint stays as it is.
    pub(crate) async fn apply_stored_pauses(&self) -> Result<(), StateError> {
        let Some(store) = &self.pause_store else {
            return Ok(());
        };
        let paused = store.paused_strategies().await?;
        for entry in self.workers.list() {
            let handle = &entry.pause;
            match (paused.contains(&entry.name), handle.reason()) {
                (true, None) => handle.pause(),
                (false, Some(PauseReason::Admin)) => handle.resume(),
                _ => {}
            }
        }
        Ok(())
    }

    /// Enables `POST /dead-letters/{id}/replay`: each strategy's endpoint and
    /// templates, by name.
    pub(crate) fn with_replay(mut self, state: StateStore, strategies: Vec<ReplayTarget>) -> Self {
        self.replay = Some(Replay {
            state,
            strategies: Mutex::new(strategies),
        });
        self
    }

    fn worker(&self, strategy: &str, what: &str) -> Result<WorkerEntry, ControlError> {
        if self.workers.is_empty() {
            return Err(unsupported(what));
        }
        self.workers
            .find(strategy)
            .ok_or_else(|| ControlError::NotFound(format!("no strategy named {strategy:?}")))
    }
}

/// How often a standby re-reads the pauses while it waits.
const STANDBY_PAUSE_SYNC: Duration = Duration::from_secs(5);

/// Keeps this instance's pauses in step with `walhook.pauses` when another
/// instance may have changed them: every [`STANDBY_PAUSE_SYNC`] while a
/// standby, and when the source starts streaming (a takeover or a
/// reconnect), except the first start when the caller `applied` the stored
/// pauses just before the source ran and it was no standby in between (a
/// standby lasts at least a second, so this task sees it). Ends at `stop`.
pub(crate) fn spawn_pause_sync(
    control: Arc<AppControl>,
    mut source: watch::Receiver<SourceStatus>,
    applied: bool,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut streaming = false;
        let mut fresh = applied;
        let mut tick = tokio::time::interval(STANDBY_PAUSE_SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sync = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = source.changed() => {
                    if changed.is_err() {
                        // The source is gone: nothing streams any more.
                        stop.cancelled().await;
                        return;
                    }
                    let state = source.borrow_and_update().state;
                    let now = state == SourceState::Streaming;
                    let started = now && !streaming;
                    streaming = now;
                    let skip = started && fresh;
                    fresh = fresh && !started && state != SourceState::Standby;
                    started && !skip
                }
                _ = tick.tick() => source.borrow().state == SourceState::Standby,
            };
            if sync {
                if let Err(err) = control.apply_stored_pauses().await {
                    tracing::warn!(error = %err, "cannot read the paused strategies");
                }
            }
        }
    })
}

fn pause_error(err: StateError) -> ControlError {
    tracing::warn!(error = %err, "cannot keep a pause in the state schema");
    ControlError::Unavailable(err.to_string())
}

fn unsupported(what: &str) -> ControlError {
    ControlError::Unavailable(format!("{what}: not supported yet"))
}

impl Control for AppControl {
    fn schedules(&self, strategy: &str) -> Vec<Value> {
        self.schedules.json_for(strategy)
    }

    fn reload(&self, dry_run: bool) -> BoxFuture<'_, Result<Outcome, ControlError>> {
        Box::pin(async move {
            let Some(reload) = &self.reload else {
                return Err(unsupported("configuration reload"));
            };
            reload
                .reload(dry_run)
                .await
                .ok_or_else(|| ControlError::Unavailable("walhook is stopping".into()))
        })
    }

    fn config_status(&self) -> Option<Value> {
        self.reload.as_ref().map(ReloadHandle::status_json)
    }

    fn pause<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let handle = self.worker(strategy, "pause and resume")?.pause;
            // Kept first: a pause that would not survive a restart is refused.
            if let Some(store) = &self.pause_store {
                store.record_pause(strategy).await.map_err(pause_error)?;
            }
            handle.pause();
            Ok(())
        })
    }

    fn resume<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            let handle = self.worker(strategy, "pause and resume")?.pause;
            if let Some(store) = &self.pause_store {
                store.clear_pause(strategy).await.map_err(pause_error)?;
            }
            handle.resume();
            Ok(())
        })
    }

    fn retry<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<usize, ControlError>> {
        Box::pin(async move { Ok(self.worker(strategy, "retry")?.retry.retry_now()) })
    }

    fn start_run<'a>(
        &'a self,
        strategy: &'a str,
        request: RunRequest,
    ) -> BoxFuture<'a, Result<RunReply, ControlError>> {
        Box::pin(async move {
            let Some(sync) = lock(&self.modes)
                .iter()
                .find(|(n, _, _)| n == strategy)
                .map(|(_, sync, _)| *sync)
            else {
                return Err(ControlError::NotFound(format!(
                    "no strategy named {strategy:?}"
                )));
            };
            // No mode given: async when allowed, else sync.
            let mode = request
                .mode
                .unwrap_or(if sync && !self.allows_async(strategy) {
                    RunMode::Sync
                } else {
                    RunMode::Async
                });
            let trigger = match mode {
                _ if request.operator => Trigger::Cli,
                RunMode::Sync => Trigger::Sync,
                RunMode::Async => Trigger::Async,
            };
            self.runs
                .start(
                    strategy,
                    mode,
                    Ask {
                        filter: request.filter,
                        limit: request.limit,
                        from: request.from,
                    },
                    trigger,
                )
                .await
        })
    }

    fn run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move { self.runs.get(id).await })
    }

    fn cancel_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move { self.runs.cancel(id).await })
    }

    fn pause_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move { self.runs.pause(id).await })
    }

    fn resume_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move { self.runs.resume(id).await })
    }

    fn runs<'a>(
        &'a self,
        strategy: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Value>, ControlError>> {
        Box::pin(async move { self.runs.list(strategy, limit).await })
    }

    fn replay_dead_letter(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            let Some(replay) = &self.replay else {
                return Err(unsupported("replaying dead letters"));
            };
            let targets = lock(&replay.strategies).clone();
            let outcome = replay_dead_letter(&replay.state, id, &targets)
                .await
                .map_err(|e| match e {
                    ReplayError::NotFound(_) => ControlError::NotFound(format!("dead letter {id}")),
                    ReplayError::UnknownStrategy { .. } => ControlError::Conflict(e.to_string()),
                    ReplayError::Invalid { .. } | ReplayError::State(_) => {
                        ControlError::Failed(e.to_string())
                    }
                })?;
            if !outcome.delivered {
                return Err(ControlError::Unavailable(format!(
                    "dead letter {id} was not delivered: {}; it stays stored",
                    outcome
                        .error
                        .clone()
                        .or(outcome.status.map(|s| format!("HTTP {s}")))
                        .unwrap_or_else(|| "no 2xx".into())
                )));
            }
            serde_json::to_value(&outcome).map_err(|e| ControlError::Failed(e.to_string()))
        })
    }
}

impl AppControl {
    fn allows_async(&self, strategy: &str) -> bool {
        lock(&self.modes)
            .iter()
            .any(|(n, _, a)| n == strategy && *a)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
