//! What the rest of the process holds of a strategy's delivery: its status
//! (for `/status`, `/readyz` and runs), its pause switch and its "retry
//! now" button (for the admin API).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metrics::Gauge;
use tokio::sync::watch;

use crate::lsn::Lsn;
use crate::telemetry::names;

/// What a strategy's delivery is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Nothing in flight.
    #[default]
    Idle,
    /// A batch is being sent.
    Delivering,
    /// A batch failed and has not been delivered since (waiting to retry,
    /// or being attempted again).
    Retrying,
    /// Attempts are exhausted and `on_exhausted = "block"` (retrying while
    /// holding the slot), or the endpoint answered 410 and the batch waits
    /// for the strategy to be resumed.
    Blocked,
    /// The worker has stopped.
    Stopped,
}

/// Why a strategy is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// `POST /strategies/{name}/pause`.
    Admin,
    /// Its endpoint answered 410 Gone (Standard Webhooks: stop sending).
    EndpointGone,
}

impl PauseReason {
    /// The `reason` label and the `/status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Admin => "admin",
            PauseReason::EndpointGone => "endpoint_gone",
        }
    }
}

/// A strategy's delivery status, for `/status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StrategyStatus {
    pub state: DeliveryState,
    /// Records waiting, being batched or in flight, plus the items waiting
    /// on the queue (records and transaction ends).
    pub queue_records: u64,
    /// Batches in flight (sent, or waiting to be retried).
    pub in_flight: u32,
    /// When a batch was last delivered.
    pub last_success: Option<SystemTime>,
    /// Why the last attempt failed (no secrets, no values); cleared on success.
    pub last_error: Option<String>,
    /// When `last_error` was set.
    pub last_error_at: Option<SystemTime>,
    /// When a success last cleared an error.
    pub recovered_at: Option<SystemTime>,
    /// Failed attempts of the batch that failed last.
    pub attempts: u32,
    pub(crate) delivered_batches: u64,
    pub dead_lettered_batches: u64,
    /// Records in delivered batches (runs report progress with it).
    pub(crate) delivered_records: u64,
    /// Records in dead-lettered batches.
    pub(crate) dead_lettered_records: u64,
    /// Commit to delivery of the last delivered batch's first record.
    pub(crate) last_lag: Option<Duration>,
    /// Every change of this strategy up to here is delivered (or dead-lettered).
    #[serde(skip)]
    pub(crate) delivered_lsn: Lsn,
    /// Paused: no new batch is sent.
    pub paused: bool,
    /// Why it is paused.
    pub pause_reason: Option<PauseReason>,
    /// Batches, records and body bytes parked in `walhook.parked`.
    pub parked_batches: u64,
    pub parked_records: u64,
    pub parked_bytes: u64,
    /// `max_parked_bytes` (0 = this worker does not park).
    pub park_limit_bytes: u64,
    /// The parking bound is reached: a batch that should be parked waits.
    pub park_full: bool,
    /// The first parked row (the next to go under `ordering = "commit"`).
    pub oldest_parked_id: Option<i64>,
    /// Why the strategy is held (everything it gets is parked), if it is.
    pub held: Option<String>,
    /// The last state-store write that failed (parking, dead letters,
    /// batch records); cleared by the next that succeeds.
    pub state_error: Option<String>,
}

/// Shared view of a worker's [`StrategyStatus`].
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<StrategyStatus>>);

impl StatusHandle {
    pub(crate) fn new() -> Self {
        StatusHandle(Arc::new(Mutex::new(StrategyStatus::default())))
    }

    /// The current status.
    pub fn snapshot(&self) -> StrategyStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StrategyStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut StrategyStatus)) {
        f(&mut self.lock());
    }
}

/// Pauses a strategy's sending: batches in flight finish, no further batch
/// starts until resumed; its queue fills and then blocks the router (so the
/// slot holds WAL, nothing is dropped). The admin API pauses with
/// [`PauseReason::Admin`]; a 410 from the endpoint pauses every strategy
/// using it with [`PauseReason::EndpointGone`]; `resume` lifts either.
#[derive(Debug, Clone)]
pub struct PauseHandle(Arc<PauseInner>);

#[derive(Debug)]
pub(crate) struct PauseInner {
    state: watch::Sender<Option<PauseReason>>,
    strategy: String,
    /// `walhook_strategy_paused{strategy, reason}` for admin, endpoint_gone.
    gauges: [Gauge; 2],
}

impl PauseHandle {
    pub(crate) fn new(strategy: &str) -> PauseHandle {
        let gauges = [PauseReason::Admin, PauseReason::EndpointGone].map(|r| {
            let g = metrics::gauge!(names::STRATEGY_PAUSED, "strategy" => strategy.to_string(), "reason" => r.as_str());
            g.set(0.0);
            g
        });
        PauseHandle(Arc::new(PauseInner {
            state: watch::channel(None).0,
            strategy: strategy.to_string(),
            gauges,
        }))
    }

    /// Pauses through the admin API.
    pub fn pause(&self) {
        self.pause_for(PauseReason::Admin);
    }

    /// Pauses for `reason` (a later reason replaces an earlier one).
    pub fn pause_for(&self, reason: PauseReason) {
        let before = self.0.state.send_replace(Some(reason));
        if before != Some(reason) {
            tracing::warn!(strategy = %self.0.strategy, reason = reason.as_str(), "strategy paused");
        }
        self.set_gauges(Some(reason));
    }

    /// Resumes, whatever paused it.
    pub fn resume(&self) {
        let before = self.0.state.send_replace(None);
        if before.is_some() {
            tracing::info!(strategy = %self.0.strategy, "strategy resumed");
        }
        self.set_gauges(None);
    }

    /// Why it is paused, if it is.
    pub fn reason(&self) -> Option<PauseReason> {
        *self.0.state.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<PauseReason>> {
        self.0.state.subscribe()
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<PauseInner> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<PauseInner>) -> Option<PauseHandle> {
        weak.upgrade().map(PauseHandle)
    }

    fn set_gauges(&self, reason: Option<PauseReason>) {
        let [admin, gone] = &self.0.gauges;
        admin.set(if reason == Some(PauseReason::Admin) {
            1.0
        } else {
            0.0
        });
        gone.set(if reason == Some(PauseReason::EndpointGone) {
            1.0
        } else {
            0.0
        });
    }
}

/// Ends a strategy's backoff waits at once (`POST /strategies/{name}/retry`):
/// every failing batch is attempted now. Also dead-letters the strategy's
/// head batch on request (`POST /strategies/{name}/dead-letter-head`): the
/// failing batch whose first record is oldest. A worker a reload replaced
/// shares its successor's handle, so both answer.
#[derive(Debug, Clone)]
pub struct RetryHandle(Arc<RetryInner>);

/// Failing batches by (first record, number), with their batch ids.
type Failing = BTreeMap<((Lsn, u32), u64), String>;

#[derive(Debug)]
struct RetryInner {
    wake: watch::Sender<u64>,
    /// Batches failing now, by first record (and a number telling equal
    /// ones apart), with their batch ids.
    failing: Mutex<Failing>,
    next: AtomicU64,
    /// The number of the batch to dead-letter (0: none).
    skip: watch::Sender<u64>,
}

impl RetryHandle {
    pub(crate) fn new() -> RetryHandle {
        RetryHandle(Arc::new(RetryInner {
            wake: watch::channel(0).0,
            failing: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            skip: watch::channel(0).0,
        }))
    }

    fn failing_map(&self) -> std::sync::MutexGuard<'_, Failing> {
        self.0.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every failing batch (in a backoff wait now, or at the end of
    /// the attempt it is in); returns how many there are.
    pub fn retry_now(&self) -> usize {
        let failing = self.failing_map().len();
        self.0.wake.send_modify(|n| *n = n.wrapping_add(1));
        failing
    }

    /// Asks the oldest failing batch to become a dead letter; its batch id,
    /// or `None` when no batch fails.
    pub fn dead_letter_head(&self) -> Option<String> {
        let failing = self.failing_map();
        let (&(_, number), batch_id) = failing.iter().next()?;
        self.0.skip.send_replace(number);
        Some(batch_id.clone())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.wake.subscribe()
    }

    pub(crate) fn subscribe_skip(&self) -> watch::Receiver<u64> {
        self.0.skip.subscribe()
    }

    /// Counts a failing batch (first record `first`) while the guard lives.
    pub(crate) fn failing(&self, first: (Lsn, u32), batch_id: &str) -> FailingGuard<'_> {
        let number = self.0.next.fetch_add(1, Ordering::AcqRel);
        self.failing_map()
            .insert((first, number), batch_id.to_string());
        FailingGuard {
            handle: self,
            key: (first, number),
        }
    }
}

/// See [`RetryHandle::failing`].
pub(crate) struct FailingGuard<'a> {
    handle: &'a RetryHandle,
    key: ((Lsn, u32), u64),
}

impl FailingGuard<'_> {
    /// Its number (what [`RetryHandle::dead_letter_head`] asks for).
    pub(crate) fn number(&self) -> u64 {
        self.key.1
    }
}

impl Drop for FailingGuard<'_> {
    fn drop(&mut self) {
        self.handle.failing_map().remove(&self.key);
    }
}

/// Which worker of a strategy an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// The strategy's current worker.
    Live,
    /// A worker a reload replaced that still delivers what it was given
    /// (with the new settings from its next attempt on).
    Draining,
    /// The worker of a strategy a reload removed, still delivering.
    Removed,
}

/// What the admin API reaches of one strategy's worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerEntry {
    /// The `[[strategies]]` name.
    pub(crate) name: String,
    pub(crate) status: StatusHandle,
    pub(crate) pause: PauseHandle,
    pub(crate) retry: RetryHandle,
    pub(crate) hold: super::parking::HoldHandle,
    pub(crate) kind: EntryKind,
    /// Set for a retired worker: listed (and can be acted on) until it has
    /// delivered what it was given and this is cancelled.
    pub(crate) finished: Option<tokio_util::sync::CancellationToken>,
}

/// The live workers' handles, in config order, then the retired ones still
/// draining. A reload replaces the list; the admin API reads it.
#[derive(Debug, Clone, Default)]
pub struct WorkerHandles(Arc<Mutex<Vec<WorkerEntry>>>);

impl WorkerHandles {
    pub(crate) fn new(entries: Vec<WorkerEntry>) -> Self {
        WorkerHandles(Arc::new(Mutex::new(entries)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WorkerEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the list.
    pub(crate) fn set(&self, entries: Vec<WorkerEntry>) {
        *self.lock() = entries;
    }

    /// Every entry, without the retired workers that are done.
    pub(crate) fn list(&self) -> Vec<WorkerEntry> {
        let mut entries = self.lock();
        entries.retain(|e| e.finished.as_ref().is_none_or(|done| !done.is_cancelled()));
        entries.clone()
    }

    /// The entry of `name`: its live worker, else a removed one still draining.
    pub(crate) fn find(&self, name: &str) -> Option<WorkerEntry> {
        let entries = self.list();
        entries
            .iter()
            .find(|e| e.name == name && e.kind == EntryKind::Live)
            .or_else(|| {
                entries
                    .iter()
                    .find(|e| e.name == name && e.kind == EntryKind::Removed)
            })
            .cloned()
    }

    /// True when there are no workers (a process without live delivery).
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
