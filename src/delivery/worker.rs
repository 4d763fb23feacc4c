//! The per-strategy worker: reads the strategy's queue, forms batches with
//! the [`Dispatcher`] and sends up to `max_in_flight` of them at once, each
//! in its own task with its own retries (`attempt`); completions feed an
//! ordered [`Finaliser`] that tells the checkpoint how far everything is
//! done (delivered, dead-lettered or durably parked).
//!
//! ```text
//!  queue (WorkItem) ──▶ worker loop ── Dispatcher (order per group, linger) ──▶ delivery task ×N
//!                          ▲   │                                                │ attempts, backoff,
//!                          │   │ park lane ──▶ walhook.parked ◀── parked ───────┘ 410, dead letters
//!                          │   ▼                      │
//!                          │  ParkIndex ── drain task ×N (retried from the store, in order per key)
//!                          └──── Done / Drained (release groups, Finaliser, unpark)
//!                          │
//!                          ▼ checkpoint.delivered(index, through)
//! ```
//!
//! The loop never waits on HTTP: it keeps reading the queue (up to a
//! lookahead of pending records), so a slow endpoint fills batches instead of
//! sending many small ones, and under `ordering = "key"` records of other
//! groups are there to flow past a slow one. The tasks own retries; the
//! loop owns the checkpoint, the dispatcher and the parked index, so
//! "delivered through" and "what must follow parked work" are decided by
//! the one place that knows what is pending.
//!
//! Under `ordering = "commit"` one batch is sent at a time, but the next
//! full one is sealed and stored while it is on the wire, and goes the
//! moment it is done ([`Dispatcher::chained`]): a wide-row stream is then
//! bound by the endpoint, not by the state INSERT and the JSON in between.
//!
//! Parking (DESIGN.md "Parking"): a batch that keeps failing is stored in
//! `walhook.parked` with its exact bytes and ids, and counts as done for
//! the checkpoint, so the slot moves past it; every later record of its
//! groups goes to the park lane and is stored behind it; drain tasks
//! deliver the parked rows from the store in order per group, and once a
//! group has nothing parked its records go live again. At start the
//! parked rows are read back before anything is sent, so their groups keep
//! their place; records of a parked batch that Postgres streams again are
//! skipped (the parked row is their copy).
//!
//! Stable ids across restarts: before a batch's first attempt its records
//! are stored (`walhook.batches`); after a restart the batches whose records
//! Postgres streams again are re-formed exactly, and a stored batch whose
//! first records Postgres does not stream again (they are behind the
//! position the stream resumed from) was delivered or dead-lettered before:
//! its other records are not sent again. Stored batches are forgotten only
//! behind the slot's `confirmed_flush_lsn` as Postgres reports it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, Ended, Metrics, Outcome, SenderCtx};
use super::handles::{DeliveryState, PauseHandle, PauseReason, RetryHandle, StatusHandle};
use super::parking::{HoldHandle, ParkBudget};
use super::retry;
use super::sender::Endpoint;
use super::settings::SettingsHandle;
use super::DeliveryError;
use crate::batch::park::{fingerprint, ParkIndex, ParkKeys, ParkedRow};
use crate::batch::payload::parse_record_id;
use crate::batch::{
    Batch, BatcherOptions, Decorate, Dispatcher, Lane, Next, Pushed, Stored, WorkItem,
};
use crate::checkpoint::{Checkpoint, Finaliser};
use crate::config::{OnClientError, OnExhausted, Ordering, Retry};
use crate::lsn::Lsn;
use crate::state::{parse_record_list, StateStore, StoredBatch, StoredParked};

/// Everything a strategy's worker needs.
pub struct WorkerOptions {
    /// The strategy's position in the checkpoint.
    pub index: usize,
    /// The strategy's name.
    pub name: String,
    pub batch_size: usize,
    pub max_batch_bytes: usize,
    pub linger: Duration,
    /// Batches in flight at once (at least 1).
    pub max_in_flight: usize,
    /// What order the strategy keeps (the router sets each record's group).
    pub ordering: Ordering,
    /// The endpoint's retry policy.
    pub retry: Retry,
    pub endpoint: Arc<Endpoint>,
    pub decorate: Arc<dyn Decorate>,
    pub checkpoint: Arc<Checkpoint>,
    /// Needed for dead letters (`on_exhausted` or `on_client_error` =
    /// "dead_letter"), for `boundaries` and for parking.
    pub state: Option<StateStore>,
    /// Keep batch ids stable across restarts (live delivery; runs do not).
    pub boundaries: Option<Boundaries>,
    /// How long shutdown waits for the batches in flight.
    pub shutdown_timeout: Duration,
    /// Capacity of the strategy's queue (work items).
    pub queue_capacity: usize,
}

/// What keeping batch ids stable across restarts needs to know from the source.
#[derive(Debug, Clone)]
pub struct Boundaries {
    /// The slot's `confirmed_flush_lsn` as Postgres reports it: stored
    /// batches wholly behind it are forgotten.
    pub confirmed: watch::Receiver<Lsn>,
    /// Where this process's stream started (`None` until it has): stored
    /// batches with records before it were delivered before the restart.
    pub resumed_from: watch::Receiver<Option<Lsn>>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("linger", &self.linger)
            .field("max_in_flight", &self.max_in_flight)
            .field("ordering", &self.ordering)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

/// Default capacity of a strategy's queue.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Records a worker holds pending (not yet in a batch) before it stops
/// reading its queue, at least: enough to fill every batch in flight and
/// the next, and under `ordering = "key"` to find other groups' records
/// behind a slow one. Bytes are bounded by the memory budget.
const LOOKAHEAD: usize = 10_000;

/// A strategy's delivery loop. Build with [`StrategyWorker::new`], then
/// `run(shutdown).await`.
pub struct StrategyWorker {
    index: usize,
    name: Arc<str>,
    dispatcher: Dispatcher,
    finaliser: Finaliser,
    rx: mpsc::Receiver<WorkItem>,
    ctx: Arc<SenderCtx>,
    settings: SettingsHandle,
    checkpoint: Arc<Checkpoint>,
    shutdown_timeout: Duration,
    paused: watch::Receiver<Option<PauseReason>>,
    max_in_flight: usize,
    /// Batches go strictly one after another (`ordering = "commit"`): the
    /// next is sealed ahead and waits for the one before it.
    chained: bool,
    /// What the batch sealed last will have come to (chained): the next
    /// one waits for it.
    last_sealed: Option<oneshot::Receiver<Outcome>>,
    lookahead: usize,
    boundaries: Option<Boundaries>,
    /// Sends nothing before this is cancelled (the worker it replaces has
    /// delivered everything it was given).
    after: Option<CancellationToken>,
    /// Re-form the batches stored before a restart (only a worker started
    /// with the stream: see [`StrategyWorker::started_by_reload`]).
    restore_stored: bool,
    /// The strategy's parked rows.
    park: ParkIndex,
    hold: HoldHandle,
    held: watch::Receiver<Option<String>>,
    /// Cancelled when a worker replacing this one will take its parked
    /// work over: once its own queue is done, it ends without draining.
    handoff: CancellationToken,
}

impl std::fmt::Debug for StrategyWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyWorker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A delivery task's report on a batch it is done with.
struct Done {
    batch: Batch,
    ended: Ended,
}

/// A drain task's report on a parked row.
struct Drained {
    id: i64,
    outcome: Outcome,
}

impl StrategyWorker {
    /// The worker and the sending end of its bounded queue (give it to the router).
    pub fn new(
        opts: WorkerOptions,
    ) -> Result<(StrategyWorker, mpsc::Sender<WorkItem>), DeliveryError> {
        let dead_letters = opts.retry.on_exhausted == OnExhausted::DeadLetter
            || opts.endpoint.on_client_error() == OnClientError::DeadLetter;
        if dead_letters && opts.state.is_none() {
            return Err(DeliveryError::NeedsStateStore {
                strategy: opts.name,
            });
        }
        let name: Arc<str> = opts.name.into();
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let pause = PauseHandle::new(&name);
        opts.endpoint.register(&pause);
        let max_in_flight = opts.max_in_flight.max(1);
        let chained = opts.ordering == Ordering::Commit;
        let dispatcher = Dispatcher::new(
            BatcherOptions {
                strategy: name.clone(),
                batch_size: opts.batch_size,
                max_batch_bytes: opts.max_batch_bytes,
                linger: opts.linger,
            },
            opts.decorate.clone(),
        );
        let dispatcher = if chained {
            dispatcher.chained()
        } else {
            dispatcher
        };
        let record_batches = opts.boundaries.is_some() && opts.state.is_some();
        let settings = SettingsHandle::new(opts.endpoint, opts.retry, opts.decorate);
        let hold = HoldHandle::new(&name, opts.state.clone());
        let ctx = Arc::new(SenderCtx {
            name: name.clone(),
            settings: settings.subscribe(),
            state: opts.state,
            record_batches,
            store_lists: opts.ordering == Ordering::Key,
            status: StatusHandle::new(),
            metrics: Metrics::new(&name),
            pause: pause.clone(),
            retry_now: RetryHandle::new(),
            parking: None,
            counts: Mutex::new((0, 0, 0)),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        let worker = StrategyWorker {
            index: opts.index,
            name,
            dispatcher,
            finaliser: Finaliser::default(),
            rx,
            ctx,
            settings,
            checkpoint: opts.checkpoint,
            shutdown_timeout: opts.shutdown_timeout,
            paused: pause.subscribe(),
            max_in_flight,
            chained,
            last_sealed: None,
            lookahead: LOOKAHEAD.max(opts.batch_size.saturating_mul(max_in_flight + 1)),
            boundaries: opts.boundaries,
            after: None,
            restore_stored: true,
            park: ParkIndex::default(),
            held: hold.subscribe(),
            hold,
            handoff: CancellationToken::new(),
        };
        Ok((worker, tx))
    }

    /// Parks batches that keep failing (the endpoint's `retry.park_after`),
    /// up to `max_parked_bytes` (0 = never). Needs the state store.
    pub(crate) fn with_parking(mut self, max_parked_bytes: u64) -> Self {
        if max_parked_bytes == 0 || self.ctx.state.is_none() {
            return self;
        }
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.parking = Some(ParkBudget::new(&self.name, max_parked_bytes));
        }
        self.ctx
            .status
            .update(|s| s.park_limit_bytes = max_parked_bytes);
        self
    }

    /// A reload started this worker while the stream runs: it keeps
    /// recording its batches, but re-forms none stored before. A stored
    /// batch's records may already have gone partly to the worker it
    /// replaces, so its remaining records go in new batches (their record
    /// ids stay the same).
    pub(crate) fn started_by_reload(mut self) -> Self {
        self.restore_stored = false;
        self
    }

    /// This worker replaces another of the same strategy (a reload changed
    /// it): it shares that one's pause switch and retry-now button (the
    /// operator acts on the strategy, whichever worker holds its failing
    /// batch), and sends nothing before `after` is cancelled, so the
    /// strategy's order holds across the two.
    pub(crate) fn replacing(
        mut self,
        pause: PauseHandle,
        retry: RetryHandle,
        after: CancellationToken,
    ) -> Self {
        self.settings.current().endpoint.register(&pause);
        self.paused = pause.subscribe();
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.pause = pause;
            ctx.retry_now = retry;
        }
        self.after = Some(after);
        self
    }

    /// Pauses and resumes sending (for the admin API).
    pub fn pause_handle(&self) -> PauseHandle {
        self.ctx.pause.clone()
    }

    /// Ends backoff waits at once (for the admin API).
    pub fn retry_handle(&self) -> RetryHandle {
        self.ctx.retry_now.clone()
    }

    /// Holds the strategy (everything it gets is parked) and releases it.
    pub fn hold_handle(&self) -> HoldHandle {
        self.hold.clone()
    }

    /// Changes the endpoint, retry policy and templates of a running worker.
    pub(crate) fn settings_handle(&self) -> SettingsHandle {
        self.settings.clone()
    }

    /// Cancel it when a worker replacing this one takes its parked work over.
    pub(crate) fn handoff(&self) -> CancellationToken {
        self.handoff.clone()
    }

    /// The strategy's status, updated while the worker runs.
    pub fn status(&self) -> StatusHandle {
        self.ctx.status.clone()
    }

    /// Runs until `shutdown` is cancelled (then finishes the batches in
    /// flight within the shutdown timeout) or the queue's senders are all
    /// dropped (then delivers everything queued first, and its parked work
    /// unless a successor takes that over).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DeliveryError> {
        if !self.restore(&shutdown).await || !self.wait_for_predecessor(&shutdown).await {
            self.ctx.status.update(|s| s.state = DeliveryState::Stopped);
            return Ok(());
        }
        if !self.restore_stored && !self.load_parked(&shutdown, None).await.0 {
            self.ctx.status.update(|s| s.state = DeliveryState::Stopped);
            return Ok(());
        }
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut drains: JoinSet<Drained> = JoinSet::new();
        let drain_stop = CancellationToken::new();
        let mut input_open = true;
        let mut forgotten = Lsn::ZERO;
        let mut confirmed = self.boundaries.as_ref().map(|b| b.confirmed.clone());
        let mut panicked = false;
        let handoff = self.handoff.clone();
        let mut park_full = self.ctx.parking.as_ref().map(ParkBudget::subscribe_full);
        self.update_parked();

        loop {
            // Send every batch that may go now; learn when to look again.
            let mut deadline = None;
            let paused = self.paused.borrow().is_some();
            if !paused {
                loop {
                    let now = Instant::now();
                    let next = if tasks.len() < self.max_in_flight {
                        self.dispatcher.next(now, !input_open)
                    } else if self.chained && tasks.len() < self.max_in_flight + 1 {
                        self.dispatcher.next_ahead(now, !input_open)
                    } else {
                        break;
                    };
                    match next {
                        Next::Batch(batch) => {
                            self.spawn(&mut tasks, batch);
                            self.update_queue(tasks.len());
                        }
                        Next::Wait(at) => {
                            deadline = at.map(tokio::time::Instant::from_std);
                            break;
                        }
                    }
                }
            }
            // Parked rows, in order per group, while not paused or held.
            let held = self.held.borrow().is_some();
            let handed_off = handoff.is_cancelled() && !input_open;
            if !paused && !held && !handed_off {
                while drains.len() < self.max_in_flight {
                    let Some(id) = self.park.next_ready() else {
                        break;
                    };
                    let ctx = self.ctx.clone();
                    let stop = drain_stop.clone();
                    drains.spawn(async move {
                        let outcome = tokio::select! {
                            biased;
                            _ = stop.cancelled() => Outcome::Cancelled,
                            outcome = attempt::drain(&ctx, id) => outcome,
                        };
                        Drained { id, outcome }
                    });
                }
            }
            if !input_open && self.dispatcher.is_empty() && tasks.is_empty() {
                // A successor takes the parked work over; otherwise (a
                // removed strategy, a run) it is delivered first.
                if handoff.is_cancelled() || self.park.is_empty() {
                    break;
                }
            }
            tokio::select! {
                biased;
                // 1. shutdown
                _ = shutdown.cancelled() => break,
                // 2. a batch finished: free its groups, advance the checkpoint
                Some(joined) = tasks.join_next() => {
                    match joined {
                        Ok(done) => self.finished(done),
                        Err(e) if e.is_panic() => {
                            panicked = true;
                            break;
                        }
                        Err(_) => {}
                    }
                    self.update_queue(tasks.len());
                }
                // 3. a parked row is done with: free its groups
                Some(joined) = drains.join_next() => {
                    match joined {
                        Ok(drained) => self.drained(drained),
                        Err(e) if e.is_panic() => {
                            panicked = true;
                            break;
                        }
                        Err(_) => {}
                    }
                }
                // 4. paused or resumed, held or released (the watch senders
                //    live in handles this worker holds, so `changed` cannot fail)
                Ok(()) = self.paused.changed() => {
                    let reason = *self.paused.borrow_and_update();
                    self.ctx.status.update(|s| {
                        s.paused = reason.is_some();
                        s.pause_reason = reason;
                    });
                }
                Ok(()) = self.held.changed() => {
                    let reason = self.held.borrow_and_update().clone();
                    // Only a worker that parks can hold (the API refuses otherwise).
                    self.dispatcher.hold(reason.is_some() && self.ctx.parking.is_some());
                    self.ctx.status.update(|s| s.held = reason);
                }
                Ok(()) = changed(&mut park_full) => {
                    let full = park_full.as_mut().is_some_and(|f| *f.borrow_and_update());
                    self.ctx.status.update(|s| s.park_full = full);
                    if full {
                        tracing::warn!(strategy = %self.name, "the parking bound (max_parked_bytes) is reached: walhook blocks this strategy (and holds the slot) until parked work is delivered; nothing is dropped");
                    } else {
                        tracing::info!(strategy = %self.name, "room under max_parked_bytes again");
                    }
                }
                // 5. a successor takes the parked work over: stop draining
                _ = handoff.cancelled(), if !input_open && !drains.is_empty() => {
                    drain_stop.cancel();
                }
                // 6. linger deadline
                _ = sleep_until(deadline), if deadline.is_some() => {}
                // 7. Postgres confirmed more: forget stored batches behind it
                Ok(()) = changed(&mut confirmed) => {
                    let lsn = confirmed.as_mut().map_or(Lsn::ZERO, |c| *c.borrow_and_update());
                    self.forget(lsn, &mut forgotten);
                }
                // 8. new input, while the lookahead has room
                item = self.rx.recv(), if input_open && self.dispatcher.pending_len() < self.lookahead => match item {
                    Some(WorkItem::Record(record)) => {
                        self.finaliser.open(record.commit_lsn);
                        let lsn = record.commit_lsn;
                        if let Pushed::Skipped = self.dispatcher.push(record, Instant::now()) {
                            let through = self.finaliser.done([lsn]);
                            self.advance(through);
                        }
                    }
                    Some(WorkItem::TxEnd { end_lsn }) => {
                        self.dispatcher.tx_end(end_lsn);
                        let through = self.finaliser.tx_end(end_lsn);
                        self.advance(through);
                        self.update_queue(tasks.len());
                    }
                    None => input_open = false,
                },
            }
        }

        // Shutdown: no new batches; let those in flight finish in time.
        // Parked rows stay parked: they are retried after the restart.
        self.ctx.stop.cancel();
        drain_stop.cancel();
        let shutdown_timeout = self.shutdown_timeout;
        let drain = async {
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(done) => self.finished(done),
                    Err(e) if e.is_panic() => panicked = true,
                    Err(_) => {}
                }
            }
            while let Some(joined) = drains.join_next().await {
                match joined {
                    Ok(drained) => self.drained(drained),
                    Err(e) if e.is_panic() => panicked = true,
                    Err(_) => {}
                }
            }
        };
        if tokio::time::timeout(shutdown_timeout, drain).await.is_err() {
            tracing::warn!(
                strategy = %self.name,
                timeout = ?shutdown_timeout,
                "batches in flight did not finish before the shutdown timeout; they will be sent again after a restart"
            );
            self.ctx.abort.cancel();
            while tasks.join_next().await.is_some() {}
            drains.abort_all();
            while drains.join_next().await.is_some() {}
        }
        self.ctx.metrics.in_flight.set(0.0);
        self.ctx.status.update(|s| {
            s.state = DeliveryState::Stopped;
            s.in_flight = 0;
        });
        if panicked {
            return Err(DeliveryError::SenderFailed {
                strategy: self.name.to_string(),
            });
        }
        Ok(())
    }

    /// Starts a batch's delivery task. Chained, it waits for the batch
    /// sealed before it (see [`attempt::deliver`]).
    fn spawn(&mut self, tasks: &mut JoinSet<Done>, batch: Box<Batch>) {
        let ctx = self.ctx.clone();
        let (after, done_tx) = if self.chained {
            let (tx, rx) = oneshot::channel();
            (self.last_sealed.replace(rx), Some(tx))
        } else {
            (None, None)
        };
        tasks.spawn(async move {
            let mut batch = *batch;
            let ended = attempt::deliver(&ctx, &mut batch, after).await;
            if let Some(tx) = done_tx {
                // Only a live batch that got parked makes the next one
                // follow it: a park-lane batch was sealed while its group
                // was parked, so one sealed live after it found the park
                // drained. The next batch may have been dropped at shutdown.
                let told = match (ended.outcome, batch.lane) {
                    (Outcome::Parked, Lane::Park) => Outcome::Delivered,
                    (outcome, _) => outcome,
                };
                let _ = tx.send(told);
            }
            Done { batch, ended }
        });
    }

    /// Loads the batches stored before a restart, once the stream has
    /// started (its start tells which of them were delivered), and the
    /// parked rows. False when shut down while waiting.
    async fn restore(&mut self, shutdown: &CancellationToken) -> bool {
        if !self.restore_stored {
            return true;
        }
        let resumed_from = match &self.boundaries {
            Some(boundaries) if self.ctx.state.is_some() => {
                let mut resumed = boundaries.resumed_from.clone();
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return false,
                    r = resumed.wait_for(Option::is_some) => match r {
                        Ok(lsn) => (*lsn).unwrap_or(Lsn::ZERO),
                        // The source is gone before it streamed: nothing will come.
                        Err(_) => Lsn::ZERO,
                    },
                }
            }
            _ => return true,
        };
        let (loaded, mut skip, parked_ids) = self.load_parked(shutdown, Some(resumed_from)).await;
        if !loaded {
            return false;
        }
        let Some(state) = self.ctx.state.clone() else {
            return true;
        };
        let stored = match state.load_batches(&self.name).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(strategy = %self.name, error = %e, "cannot load stored batches; redelivered batches may get new ids");
                self.dispatcher.restore(Vec::new(), skip);
                return true;
            }
        };
        let mut reform = Vec::new();
        let mut delivered = 0;
        for batch in &stored {
            // A parked batch's records are skipped: the row is their copy.
            if parked_ids.contains(&batch.batch_id) {
                continue;
            }
            let Some(members) = stored_members(batch) else {
                continue;
            };
            // Postgres streams again every transaction committed at or
            // after the position it resumed from, and none before.
            match members.first() {
                Some((lsn, _)) if lsn < resumed_from => {
                    skip.push(members);
                    delivered += 1;
                }
                Some(_) => reform.push(members),
                None => {}
            }
        }
        if !reform.is_empty() || delivered > 0 {
            tracing::info!(
                strategy = %self.name,
                reformed = reform.len(),
                delivered,
                resumed_from = %resumed_from,
                "re-forming batches sent before the restart"
            );
        }
        self.dispatcher.restore(reform, skip);
        true
    }

    /// Reads the strategy's parked rows and hold before anything is sent
    /// (retrying while the store fails: sending records of a parked group
    /// ahead of its parked rows would break their order). With
    /// `resumed_from`, also returns the records of parked rows Postgres
    /// streams again (to skip) and the parked batch ids. False when shut
    /// down first.
    async fn load_parked(
        &mut self,
        shutdown: &CancellationToken,
        resumed_from: Option<Lsn>,
    ) -> (bool, Vec<Stored>, HashSet<String>) {
        let mut skip = Vec::new();
        let mut ids = HashSet::new();
        let (Some(_), Some(state)) = (&self.ctx.parking, self.ctx.state.clone()) else {
            return (true, skip, ids);
        };
        let mut failures = 0u32;
        let (rows, hold) = loop {
            let loaded = async {
                let rows = state.load_parked(&self.name).await?;
                let hold = state.hold_of(&self.name).await?;
                Ok::<_, crate::state::StateError>((rows, hold))
            };
            match loaded.await {
                Ok(found) => break found,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::error!(strategy = %self.name, error = %e, "cannot read the parked batches; nothing is sent until they are read");
                    self.ctx.status.update(|s| {
                        s.state_error = Some(format!("reading the parked batches: {e}"))
                    });
                    let delay = retry::delay(
                        &self.settings.current().retry,
                        failures,
                        None,
                        &mut rand::rng(),
                    );
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return (false, skip, ids),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        if failures > 0 {
            self.ctx.status.update(|s| s.state_error = None);
        }
        let ours = fingerprint();
        let mut bytes = 0u64;
        for row in &rows {
            let keys = parked_keys(row, ours);
            self.dispatcher.park(&keys);
            let size = u64::try_from(row.bytes).unwrap_or(0);
            bytes += size;
            self.park.insert(ParkedRow {
                id: row.id,
                keys,
                bytes: size,
                records: u64::try_from(row.size).unwrap_or(0),
            });
            if let Some(resumed_from) = resumed_from {
                ids.insert(row.batch_id.clone());
                if let Some(list) = parse_record_list(&row.records) {
                    if list.last().is_some_and(|(lsn, _)| *lsn >= resumed_from) {
                        skip.push(Stored::List(list));
                    }
                }
            }
        }
        if let Some(budget) = &self.ctx.parking {
            budget.add(bytes);
        }
        if let Some(reason) = hold {
            self.hold.set(Some(reason));
        }
        if !rows.is_empty() {
            tracing::info!(strategy = %self.name, parked = rows.len(), bytes, "parked batches found; they are retried from walhook.parked before later records of their keys");
        }
        (true, skip, ids)
    }

    /// Waits until the worker this one replaces is done. False when shut
    /// down first.
    async fn wait_for_predecessor(&mut self, shutdown: &CancellationToken) -> bool {
        let Some(after) = self.after.take() else {
            return true;
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = after.cancelled() => true,
        }
    }

    fn finished(&mut self, mut done: Done) {
        self.dispatcher.release(&done.batch);
        self.dispatcher
            .recycle(std::mem::take(&mut done.batch.body));
        if done.ended.outcome == Outcome::Cancelled {
            return;
        }
        if let Some(row) = done.ended.parked.take() {
            // A park-lane batch's groups were counted when it was sealed.
            if done.batch.lane == Lane::Live {
                self.dispatcher.park(&row.keys);
            }
            self.park.insert(row);
            self.update_parked();
        }
        let through = self
            .finaliser
            .done(done.batch.keys.iter().map(|(lsn, _)| *lsn));
        self.advance(through);
        // Dropping the batch releases its bytes from the memory budget.
        drop(done);
    }

    fn drained(&mut self, drained: Drained) {
        if drained.outcome == Outcome::Cancelled {
            self.park.release(drained.id);
            return;
        }
        if let Some(row) = self.park.remove(drained.id) {
            self.dispatcher.unpark(&row.keys);
            if let Some(budget) = &self.ctx.parking {
                budget.release(row.bytes);
            }
            if self.park.is_empty() {
                tracing::info!(strategy = %self.name, "every parked batch is delivered; records go live again");
            }
        }
        self.update_parked();
    }

    fn advance(&self, through: Option<Lsn>) {
        if let Some(lsn) = through {
            self.checkpoint.delivered(self.index, lsn);
            self.ctx.status.update(|s| s.delivered_lsn = lsn);
        }
    }

    fn forget(&self, confirmed: Lsn, forgotten: &mut Lsn) {
        let Some(state) = self.ctx.state.clone() else {
            return;
        };
        if confirmed <= *forgotten {
            return;
        }
        *forgotten = confirmed;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = state.forget_batches(&name, confirmed).await {
                tracing::debug!(strategy = %name, error = %e, "cannot forget confirmed batches");
            }
        });
    }

    fn update_queue(&self, tasks: usize) {
        // A batch sealed ahead is not in flight until the one before is done.
        let in_flight = tasks.min(self.max_in_flight);
        let n = self.rx.len() + self.finaliser.open_records();
        self.ctx.metrics.queue.set(n as f64);
        self.ctx.metrics.in_flight.set(in_flight as f64);
        self.ctx.status.update(|s| {
            s.queue_records = n as u64;
            s.in_flight = u32::try_from(in_flight).unwrap_or(u32::MAX);
        });
    }

    fn update_parked(&self) {
        let (batches, records, bytes) = (self.park.len(), self.park.records(), self.park.bytes());
        self.ctx.metrics.parked_batches.set(batches as f64);
        self.ctx.metrics.parked_records.set(records as f64);
        self.ctx.metrics.parked_bytes.set(bytes as f64);
        let first = self.park.first().map(|r| r.id);
        self.ctx.status.update(|s| {
            s.parked_batches = batches as u64;
            s.parked_records = records;
            s.parked_bytes = bytes;
            s.oldest_parked_id = first;
        });
    }
}

/// A parked row's group keys; a row hashed by another build holds every group.
fn parked_keys(row: &StoredParked, ours: i64) -> ParkKeys {
    if row.key_hash == ours {
        ParkKeys::from_stored(&row.group_keys, row.all_groups)
    } else {
        ParkKeys::everything()
    }
}

/// The records of a stored batch.
fn stored_members(batch: &StoredBatch) -> Option<Stored> {
    match &batch.records {
        Some(list) => Some(Stored::List(parse_record_list(list)?)),
        None => Some(Stored::Range {
            first: parse_record_id(&batch.first_record_id)?,
            last: parse_record_id(&batch.last_record_id)?,
        }),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for a change of an optional watch (never, when there is none).
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}
