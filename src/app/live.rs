//! The running strategies: one delivery worker each, with what the router
//! and the admin API hold of it. Used at start and by every reload.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{Decorate, WorkItem};
use crate::checkpoint::Checkpoint;
use crate::config::StrategyConfig;
use crate::delivery::worker::DEFAULT_QUEUE_CAPACITY;
use crate::delivery::{
    Boundaries, DeliveryError, Endpoint, EntryKind, HoldHandle, PauseHandle, RetryHandle,
    SettingsHandle, StatusHandle, StrategyWorker, WorkerEntry, WorkerOptions,
};
use crate::lsn::Lsn;
use crate::state::StateStore;
use crate::strategy::{CompiledStrategy, Route};

/// How long a worker may take to finish its batch in flight at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a worker task hands back when it ends: its strategy, its index in
/// the checkpoint and how it ended.
pub(crate) type WorkerEnd = (String, usize, Result<(), DeliveryError>);

/// One running strategy.
#[derive(Debug)]
pub(crate) struct LiveStrategy {
    pub(crate) name: String,
    /// Its index in the checkpoint.
    pub(crate) slot: usize,
    pub(crate) compiled: Arc<CompiledStrategy>,
    pub(crate) endpoint: Arc<Endpoint>,
    /// Its queue; dropped (with the router's route) to let the worker finish.
    pub(crate) tx: tokio::sync::mpsc::Sender<WorkItem>,
    pub(crate) status: StatusHandle,
    pub(crate) pause: PauseHandle,
    pub(crate) retry: RetryHandle,
    pub(crate) hold: HoldHandle,
    /// Its endpoint, retry policy and templates, changed under it by a
    /// reload that replaces it while it still drains.
    pub(crate) settings: SettingsHandle,
    /// Cancelled when a worker replacing it takes its parked work over.
    pub(crate) handoff: CancellationToken,
    /// Cancelled when its worker has ended.
    pub(crate) finished: CancellationToken,
}

impl LiveStrategy {
    pub(crate) fn route(&self) -> (usize, Route) {
        (
            self.slot,
            Route {
                strategy: self.compiled.clone(),
                tx: self.tx.clone(),
            },
        )
    }

    /// Its handles for the admin API: a live worker, or one a reload
    /// retired that still delivers what it was given.
    pub(crate) fn entry(&self, kind: EntryKind) -> WorkerEntry {
        WorkerEntry {
            name: self.name.clone(),
            status: self.status.clone(),
            pause: self.pause.clone(),
            retry: self.retry.clone(),
            hold: self.hold.clone(),
            kind,
            finished: (kind != EntryKind::Live).then(|| self.finished.clone()),
        }
    }
}

/// What every live worker shares.
#[derive(Debug, Clone)]
pub(crate) struct WorkerContext {
    pub(crate) checkpoint: Arc<Checkpoint>,
    pub(crate) state: StateStore,
    pub(crate) confirmed: watch::Receiver<Lsn>,
    /// Where the source's stream started (`None` until it has).
    pub(crate) resumed_from: watch::Receiver<Option<Lsn>>,
}

/// How a worker starts.
pub(crate) struct Start<'a> {
    pub(crate) cfg: &'a StrategyConfig,
    pub(crate) compiled: Arc<CompiledStrategy>,
    pub(crate) endpoint: Arc<Endpoint>,
    /// Its index in the checkpoint.
    pub(crate) slot: usize,
    /// Started by a reload (not with the stream).
    pub(crate) by_reload: bool,
    /// The worker of the same strategy this one replaces: its pause switch,
    /// its retry-now button and the token cancelled when it has ended.
    pub(crate) replacing: Option<(PauseHandle, RetryHandle, CancellationToken)>,
}

impl std::fmt::Debug for Start<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start")
            .field("strategy", &self.cfg.name)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl WorkerContext {
    /// Builds a strategy's worker and spawns it into `tasks`, stopped by `stop`.
    pub(crate) fn spawn(
        &self,
        start: Start<'_>,
        retry: crate::config::Retry,
        tasks: &mut JoinSet<WorkerEnd>,
        stop: &CancellationToken,
    ) -> Result<LiveStrategy, DeliveryError> {
        let cfg = start.cfg;
        let decorate: Arc<dyn Decorate> = start.compiled.clone();
        let (mut worker, tx) = StrategyWorker::new(WorkerOptions {
            index: start.slot,
            name: cfg.name.clone(),
            batch_size: cfg.batch_size,
            max_batch_bytes: cfg.max_batch_bytes,
            linger: cfg.linger,
            max_in_flight: cfg.max_in_flight,
            ordering: cfg.ordering,
            retry,
            endpoint: start.endpoint.clone(),
            decorate,
            checkpoint: self.checkpoint.clone(),
            state: Some(self.state.clone()),
            boundaries: Some(Boundaries {
                confirmed: self.confirmed.clone(),
                resumed_from: self.resumed_from.clone(),
            }),
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        })?;
        worker = worker.with_parking(cfg.max_parked_bytes as u64);
        if start.by_reload {
            worker = worker.started_by_reload();
        }
        if let Some((pause, retry, after)) = start.replacing {
            worker = worker.replacing(pause, retry, after);
        }
        let finished = CancellationToken::new();
        let live = LiveStrategy {
            name: cfg.name.clone(),
            slot: start.slot,
            compiled: start.compiled,
            endpoint: start.endpoint,
            tx,
            status: worker.status(),
            pause: worker.pause_handle(),
            retry: worker.retry_handle(),
            hold: worker.hold_handle(),
            settings: worker.settings_handle(),
            handoff: worker.handoff(),
            finished: finished.clone(),
        };
        let name = cfg.name.clone();
        let slot = start.slot;
        let stop = stop.clone();
        tasks.spawn(async move {
            let _finished = finished.drop_guard();
            let result = worker.run(stop).await;
            (name, slot, result)
        });
        Ok(live)
    }
}
