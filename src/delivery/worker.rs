//! The per-strategy worker: reads the strategy's queue, forms batches with
//! the [`Dispatcher`] and sends up to `max_in_flight` of them at once, each
//! in its own task with its own retries; completions feed an ordered
//! [`Finaliser`] that tells the checkpoint how far everything is done.
//!
//! ```text
//!  queue (WorkItem) ──▶ worker loop ── Dispatcher (order per group, linger) ──▶ delivery task ×N
//!                          ▲                                                    │ attempts, backoff,
//!                          └──── Done (release groups, Finaliser) ◀─────────────┘ 410 pause, dead letters
//!                          │
//!                          ▼ checkpoint.delivered(index, through)
//! ```
//!
//! The loop never waits on HTTP: it keeps reading the queue (up to a
//! lookahead of pending records), so a slow endpoint fills batches instead of
//! sending many small ones, and under `ordering = "key"` records of other
//! groups are there to flow past a slow one. The tasks own retries; the
//! loop owns the checkpoint, so "delivered through" is decided by the one
//! place that knows what is still pending.
//!
//! Under `ordering = "commit"` one batch is sent at a time, but the next
//! full one is sealed and stored while it is on the wire, and goes the
//! moment it is done ([`Dispatcher::chained`]): a wide-row stream is then
//! bound by the endpoint, not by the state INSERT and the JSON in between.
//!
//! Stable ids across restarts: before a batch's first attempt its records
//! are stored (`walhook.batches`); after a restart the batches whose records
//! Postgres streams again are re-formed exactly, and a stored batch whose
//! first records Postgres does not stream again (they are behind the
//! position the stream resumed from) was delivered or dead-lettered before:
//! its other records are not sent again. Stored batches are forgotten only
//! behind the slot's `confirmed_flush_lsn` as Postgres reports it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::handles::{DeliveryState, PauseHandle, PauseReason, RetryHandle, StatusHandle};
use super::retry::{self, Decision, Next as RetryNext};
use super::sender::{AttemptResult, Endpoint};
use super::DeliveryError;
use crate::batch::payload::parse_record_id;
use crate::batch::{Batch, BatcherOptions, Decorate, Dispatcher, Next, Pushed, Stored, WorkItem};
use crate::checkpoint::{Checkpoint, Finaliser};
use crate::config::{OnClientError, OnExhausted, Ordering, Retry};
use crate::lsn::Lsn;
use crate::state::{NewDeadLetter, StateStore, StoredBatch};
use crate::telemetry::names;

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
    /// "dead_letter") and for `boundaries`.
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

/// How long recording a batch's records may delay its delivery.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default capacity of a strategy's queue.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Records a worker holds pending (not yet in a batch) before it stops
/// reading its queue, at least: enough to fill every batch in flight and
/// the next, and under `ordering = "key"` to find other groups' records
/// behind a slow one. Bytes are bounded by the memory budget.
const LOOKAHEAD: usize = 10_000;

/// Metric handles, registered once per strategy.
#[derive(Clone)]
struct Metrics {
    delivered: Counter,
    dead_lettered: Counter,
    dead_letters: Counter,
    duration: Histogram,
    batch_records: Histogram,
    commit_to_delivery: Histogram,
    queue: Gauge,
    in_flight: Gauge,
    strategy: Arc<str>,
}

impl Metrics {
    fn new(strategy: &str) -> Self {
        let s = strategy.to_string();
        Metrics {
            delivered: metrics::counter!(names::BATCHES_TOTAL, "strategy" => s.clone(), "outcome" => "delivered"),
            dead_lettered: metrics::counter!(names::BATCHES_TOTAL, "strategy" => s.clone(), "outcome" => "dead_lettered"),
            dead_letters: metrics::counter!(names::DEAD_LETTERS_TOTAL, "strategy" => s.clone()),
            duration: metrics::histogram!(names::DELIVERY_DURATION_SECONDS, "strategy" => s.clone()),
            batch_records: metrics::histogram!(names::BATCH_RECORDS, "strategy" => s.clone()),
            commit_to_delivery: metrics::histogram!(names::COMMIT_TO_DELIVERY_SECONDS, "strategy" => s.clone()),
            queue: metrics::gauge!(names::QUEUE_RECORDS, "strategy" => s.clone()),
            in_flight: metrics::gauge!(names::IN_FLIGHT_BATCHES, "strategy" => s),
            strategy: strategy.into(),
        }
    }

    /// Counts an attempt and what its answer decided. Attempts are per
    /// batch, not per record, so looking the counter up here is cheap.
    fn attempt(&self, result: &AttemptResult, decision: Decision) {
        let class = result.status_class();
        metrics::counter!(names::DELIVERY_ATTEMPTS_TOTAL, "strategy" => self.strategy.to_string(), "status_class" => class)
            .increment(1);
        metrics::counter!(
            names::DELIVERY_DECISIONS_TOTAL,
            "strategy" => self.strategy.to_string(),
            "status_class" => class,
            "decision" => decision.label()
        )
        .increment(1);
        if result.sent {
            self.duration.record(result.elapsed.as_secs_f64());
        }
    }
}

/// A strategy's delivery loop. Build with [`StrategyWorker::new`], then
/// `run(shutdown).await`.
pub struct StrategyWorker {
    index: usize,
    name: Arc<str>,
    dispatcher: Dispatcher,
    finaliser: Finaliser,
    rx: mpsc::Receiver<WorkItem>,
    ctx: Arc<SenderCtx>,
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
}

impl std::fmt::Debug for StrategyWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyWorker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What every delivery task of a strategy shares.
struct SenderCtx {
    name: Arc<str>,
    endpoint: Arc<Endpoint>,
    retry: Retry,
    state: Option<StateStore>,
    /// Store each batch's records before sending it.
    record_batches: bool,
    /// Store the list of records (under `ordering = "key"` a batch is not a
    /// range of consecutive records).
    store_lists: bool,
    status: StatusHandle,
    metrics: Metrics,
    pause: PauseHandle,
    retry_now: RetryHandle,
    /// Batches in flight that are sending, retrying, blocked.
    counts: Mutex<(u32, u32, u32)>,
    /// Soft stop: start no new batch, no new backoff.
    stop: CancellationToken,
    /// Hard stop: abandon the attempts in flight.
    abort: CancellationToken,
}

/// A delivery task's report on a batch it is done with.
struct Done {
    batch: Batch,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    DeadLettered,
    Cancelled,
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
            opts.decorate,
        );
        let dispatcher = if chained {
            dispatcher.chained()
        } else {
            dispatcher
        };
        let record_batches = opts.boundaries.is_some() && opts.state.is_some();
        let ctx = Arc::new(SenderCtx {
            name: name.clone(),
            endpoint: opts.endpoint,
            retry: opts.retry,
            state: opts.state,
            record_batches,
            store_lists: opts.ordering == Ordering::Key,
            status: StatusHandle::new(),
            metrics: Metrics::new(&name),
            pause: pause.clone(),
            retry_now: RetryHandle::new(),
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
        };
        Ok((worker, tx))
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
    /// it): it shares that one's pause switch, and sends nothing before
    /// `after` is cancelled, so the strategy's order holds across the two.
    pub(crate) fn replacing(mut self, pause: PauseHandle, after: CancellationToken) -> Self {
        self.ctx.endpoint.register(&pause);
        self.paused = pause.subscribe();
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.pause = pause;
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

    /// The strategy's status, updated while the worker runs.
    pub fn status(&self) -> StatusHandle {
        self.ctx.status.clone()
    }

    /// Runs until `shutdown` is cancelled (then finishes the batches in
    /// flight within the shutdown timeout) or the queue's senders are all
    /// dropped (then delivers everything queued first).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DeliveryError> {
        if !self.restore(&shutdown).await || !self.wait_for_predecessor(&shutdown).await {
            self.ctx.status.update(|s| s.state = DeliveryState::Stopped);
            return Ok(());
        }
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut input_open = true;
        let mut forgotten = Lsn::ZERO;
        let mut confirmed = self.boundaries.as_ref().map(|b| b.confirmed.clone());
        let mut panicked = false;

        loop {
            // Send every batch that may go now; learn when to look again.
            let mut deadline = None;
            if self.paused.borrow().is_none() {
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
            if !input_open && self.dispatcher.is_empty() && tasks.is_empty() {
                break;
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
                // 3. paused or resumed (the watch sender lives in the pause
                //    handle this worker holds, so `changed` cannot fail)
                Ok(()) = self.paused.changed() => {
                    let reason = *self.paused.borrow_and_update();
                    self.ctx.status.update(|s| {
                        s.paused = reason.is_some();
                        s.pause_reason = reason;
                    });
                }
                // 4. linger deadline
                _ = sleep_until(deadline), if deadline.is_some() => {}
                // 5. Postgres confirmed more: forget stored batches behind it
                Ok(()) = changed(&mut confirmed) => {
                    let lsn = confirmed.as_mut().map_or(Lsn::ZERO, |c| *c.borrow_and_update());
                    self.forget(lsn, &mut forgotten);
                }
                // 6. new input, while the lookahead has room
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
        self.ctx.stop.cancel();
        let shutdown_timeout = self.shutdown_timeout;
        let drain = async {
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(done) => self.finished(done),
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
    /// sealed before it (see [`deliver`]).
    fn spawn(&mut self, tasks: &mut JoinSet<Done>, batch: Box<Batch>) {
        let ctx = self.ctx.clone();
        let (after, done_tx) = if self.chained {
            let (tx, rx) = oneshot::channel();
            (self.last_sealed.replace(rx), Some(tx))
        } else {
            (None, None)
        };
        tasks.spawn(async move {
            let outcome = deliver(&ctx, &batch, after).await;
            if let Some(tx) = done_tx {
                // The next batch may have been dropped at shutdown.
                let _ = tx.send(outcome);
            }
            Done {
                batch: *batch,
                outcome,
            }
        });
    }

    /// Loads the batches stored before a restart, once the stream has
    /// started (its start tells which of them were delivered). False when
    /// shut down while waiting.
    async fn restore(&mut self, shutdown: &CancellationToken) -> bool {
        let (Some(boundaries), Some(state)) = (&self.boundaries, &self.ctx.state) else {
            return true;
        };
        if !self.restore_stored {
            return true;
        }
        let mut resumed = boundaries.resumed_from.clone();
        let resumed_from = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            r = resumed.wait_for(Option::is_some) => match r {
                Ok(lsn) => (*lsn).unwrap_or(Lsn::ZERO),
                // The source is gone before it streamed: nothing will come.
                Err(_) => Lsn::ZERO,
            },
        };
        let stored = match state.load_batches(&self.name).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(strategy = %self.name, error = %e, "cannot load stored batches; redelivered batches may get new ids");
                return true;
            }
        };
        let mut reform = Vec::new();
        let mut skip = Vec::new();
        for batch in &stored {
            let Some(members) = stored_members(batch) else {
                continue;
            };
            // Postgres streams again every transaction committed at or
            // after the position it resumed from, and none before.
            match members.first() {
                Some((lsn, _)) if lsn < resumed_from => skip.push(members),
                Some(_) => reform.push(members),
                None => {}
            }
        }
        if !reform.is_empty() || !skip.is_empty() {
            tracing::info!(
                strategy = %self.name,
                reformed = reform.len(),
                delivered = skip.len(),
                resumed_from = %resumed_from,
                "re-forming batches sent before the restart"
            );
        }
        self.dispatcher.restore(reform, skip);
        true
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
        if done.outcome == Outcome::Cancelled {
            return;
        }
        let through = self
            .finaliser
            .done(done.batch.keys.iter().map(|(lsn, _)| *lsn));
        self.advance(through);
        // Dropping the batch releases its bytes from the memory budget.
        drop(done);
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

/// `walhook.batches.records`: record ids separated by spaces, runs of one
/// transaction's consecutive records written `<lsn>:<first>-<last>`.
fn record_list(keys: &[(Lsn, u32)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut i = 0;
    while let Some(&(lsn, first)) = keys.get(i) {
        let mut last = first;
        while keys
            .get(i + 1)
            .is_some_and(|&(l, n)| l == lsn && Some(n) == last.checked_add(1))
        {
            i += 1;
            last += 1;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = if last == first {
            write!(out, "{lsn}:{first}")
        } else {
            write!(out, "{lsn}:{first}-{last}")
        };
        i += 1;
    }
    out
}

/// Parses [`record_list`]'s text back, sorted; `None` when malformed.
fn parse_record_list(text: &str) -> Option<Vec<(Lsn, u32)>> {
    let mut keys = Vec::new();
    for item in text.split_whitespace() {
        let (lsn, range) = item.rsplit_once(':')?;
        let lsn: Lsn = lsn.parse().ok()?;
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = range.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if last < first {
            return None;
        }
        keys.extend((first..=last).map(|n| (lsn, n)));
    }
    keys.sort_unstable();
    Some(keys)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for a change of an optional watch (never, when there is none).
async fn changed(rx: &mut Option<watch::Receiver<Lsn>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// What one batch in flight is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Sending,
    Retrying,
    Blocked,
}

/// A batch in flight, counted in the strategy's status while it lives: the
/// strategy shows blocked if any batch is, else retrying if any is, else
/// delivering.
struct Flying<'a> {
    ctx: &'a SenderCtx,
    state: Mutex<TaskState>,
}

impl<'a> Flying<'a> {
    fn start(ctx: &'a SenderCtx) -> Self {
        let flying = Flying {
            ctx,
            state: Mutex::new(TaskState::Sending),
        };
        flying.count(TaskState::Sending, 1);
        flying
    }

    fn set(&self, state: TaskState) {
        let before = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            state,
        );
        if before != state {
            self.count(before, -1);
            self.count(state, 1);
        }
    }

    fn count(&self, state: TaskState, delta: i32) {
        let mut counts = self.ctx.counts.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match state {
            TaskState::Sending => &mut counts.0,
            TaskState::Retrying => &mut counts.1,
            TaskState::Blocked => &mut counts.2,
        };
        *slot = slot.saturating_add_signed(delta);
        let (sending, retrying, blocked) = *counts;
        let shown = if blocked > 0 {
            DeliveryState::Blocked
        } else if retrying > 0 {
            DeliveryState::Retrying
        } else if sending > 0 {
            DeliveryState::Delivering
        } else {
            DeliveryState::Idle
        };
        self.ctx.status.update(|s| {
            if s.state != DeliveryState::Stopped {
                s.state = shown;
            }
        });
    }
}

impl Drop for Flying<'_> {
    fn drop(&mut self) {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.count(state, -1);
    }
}

/// Delivers one batch: stores its records (for stable ids), waits for the
/// batch sealed before it when there is one (`after`, chained), then
/// attempts until delivered, dead-lettered or stopped.
async fn deliver(
    ctx: &SenderCtx,
    batch: &Batch,
    after: Option<oneshot::Receiver<Outcome>>,
) -> Outcome {
    if ctx.record_batches {
        record_batch(ctx, batch).await;
    }
    if let Some(after) = after {
        let before = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Outcome::Cancelled,
            // Its task ended without a word: it was dropped at shutdown.
            r = after => r.unwrap_or(Outcome::Cancelled),
        };
        // Stopping starts no new batch; a batch not sent must not go ahead
        // of it.
        if before == Outcome::Cancelled || ctx.stop.is_cancelled() {
            return Outcome::Cancelled;
        }
        // Paused while the batch before was in flight: hold until resumed.
        let mut paused = ctx.pause.subscribe();
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return Outcome::Cancelled,
            _ = paused.wait_for(Option::is_none) => {}
        }
    }
    let flying = Flying::start(ctx);
    let mut wake = ctx.retry_now.subscribe();
    let mut recovered = ctx.endpoint.recovered();
    let mut failures = 0u32;
    // Attempts that reached the endpoint: refusals by the open circuit
    // back off like failures but do not use up `max_attempts`.
    let mut sent_failures = 0u32;
    loop {
        let result = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Outcome::Cancelled,
            r = ctx.endpoint.attempt(batch) => r,
        };
        let decision = if result.refused {
            Decision::Retry
        } else {
            retry::decide(result.status, ctx.endpoint.on_client_error())
        };
        ctx.metrics.attempt(&result, decision);
        let error = result.error.clone().unwrap_or_default();
        if decision != Decision::Delivered {
            tracing::warn!(
                strategy = %ctx.name,
                batch_id = %batch.id,
                first_lsn = %batch.first_lsn,
                attempt = failures + 1,
                status = result.status,
                decision = decision.label(),
                error = %error,
                "delivery attempt failed"
            );
        }
        match decision {
            Decision::Delivered => {
                delivered(ctx, batch);
                return Outcome::Delivered;
            }
            Decision::DeadLetter => {
                failures = failures.saturating_add(1);
                return dead_letter(ctx, &flying, batch, &result, failures).await;
            }
            Decision::Pause => {
                failures = failures.saturating_add(1);
                ctx.endpoint.gone(&ctx.name);
                failed(ctx, failures, error);
                flying.set(TaskState::Blocked);
                // Held until the strategy is resumed; then tried at once.
                let mut paused = ctx.pause.subscribe();
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    _ = paused.wait_for(Option::is_none) => {}
                }
            }
            Decision::Retry => {
                failures = failures.saturating_add(1);
                if !result.refused {
                    sent_failures = sent_failures.saturating_add(1);
                }
                let next = if sent_failures == 0 {
                    RetryNext::Retry
                } else {
                    retry::next(&ctx.retry, sent_failures)
                };
                if next == RetryNext::DeadLetter {
                    return dead_letter(ctx, &flying, batch, &result, sent_failures).await;
                }
                let delay =
                    retry::delay(&ctx.retry, failures, result.retry_after, &mut rand::rng());
                failed(ctx, failures, error);
                flying.set(if next == RetryNext::RetryBlocked {
                    TaskState::Blocked
                } else {
                    TaskState::Retrying
                });
                let _waiting = ctx.retry_now.waiting();
                wake.borrow_and_update();
                recovered.borrow_and_update();
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    _ = wake.changed() => {
                        tracing::info!(strategy = %ctx.name, batch_id = %batch.id, "retrying now (admin API)");
                    }
                    // The endpoint's circuit closed: it answers again.
                    Ok(()) = recovered.changed() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        flying.set(TaskState::Sending);
    }
}

/// Stores the batch's records before its first attempt, so a redelivery
/// after a restart re-forms it with the same id. Best effort: a slow or
/// absent state database must not stop delivery.
async fn record_batch(ctx: &SenderCtx, batch: &Batch) {
    let Some(state) = &ctx.state else { return };
    let stored = StoredBatch {
        batch_id: batch.id.clone(),
        first_record_id: batch.first_record_id(),
        last_record_id: batch.last_record_id(),
        last_lsn: batch.last_lsn,
        records: ctx.store_lists.then(|| record_list(&batch.keys)),
    };
    let recorded =
        tokio::time::timeout(STATE_TIMEOUT, state.record_batch(&ctx.name, &stored)).await;
    let error = match recorded {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {STATE_TIMEOUT:?}")),
    };
    if let Some(error) = error {
        tracing::warn!(strategy = %ctx.name, batch_id = %batch.id, error = %error, "cannot record the batch's records; a redelivery may get a new batch id");
    }
}

fn failed(ctx: &SenderCtx, failures: u32, error: String) {
    ctx.status.update(|s| {
        s.attempts = failures;
        s.last_error = Some(error);
    });
}

fn delivered(ctx: &SenderCtx, batch: &Batch) {
    ctx.metrics.delivered.increment(1);
    ctx.metrics.batch_records.record(batch.size as f64);
    let now = SystemTime::now();
    let now_us = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let lag = (now_us - batch.first_commit_time).max(0) as f64 / 1e6;
    ctx.metrics.commit_to_delivery.record(lag);
    ctx.status.update(|s| {
        s.last_lag = Some(Duration::from_secs_f64(lag));
        s.attempts = 0;
        s.last_error = None;
        s.last_success = Some(now);
        s.delivered_batches += 1;
        s.delivered_records += batch.size as u64;
    });
}

async fn dead_letter(
    ctx: &SenderCtx,
    flying: &Flying<'_>,
    batch: &Batch,
    last: &AttemptResult,
    attempts: u32,
) -> Outcome {
    let Some(state) = &ctx.state else {
        // StrategyWorker::new refuses dead letters without a state store.
        return Outcome::Cancelled;
    };
    let letter = NewDeadLetter {
        strategy: &ctx.name,
        batch_id: &batch.id,
        first_lsn: batch.first_lsn,
        last_lsn: batch.last_lsn,
        payload: &batch.body,
        last_status: last.status,
        last_error: last.error.as_deref(),
        attempts,
    };
    let mut failures = 0u32;
    loop {
        match state.insert_dead_letter(&letter).await {
            Ok(id) => {
                tracing::warn!(
                    strategy = %ctx.name,
                    batch_id = %batch.id,
                    dead_letter_id = id,
                    attempts,
                    "batch stored as a dead letter"
                );
                ctx.metrics.dead_lettered.increment(1);
                ctx.metrics.dead_letters.increment(1);
                ctx.status.update(|s| {
                    s.attempts = 0;
                    s.dead_lettered_batches += 1;
                    s.dead_lettered_records += batch.size as u64;
                });
                return Outcome::DeadLettered;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::error!(strategy = %ctx.name, batch_id = %batch.id, error = %e, "cannot store the dead letter; retrying");
                failed(ctx, attempts, format!("storing the dead letter: {e}"));
                flying.set(TaskState::Blocked);
                let delay = retry::delay(&ctx.retry, failures, None, &mut rand::rng());
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lists_round_trip_compactly() {
        let keys = vec![
            (Lsn(0x100), 0),
            (Lsn(0x100), 1),
            (Lsn(0x100), 2),
            (Lsn(0x100), 7),
            (Lsn(0x200), 0),
            (Lsn(0x300), 4),
            (Lsn(0x300), 5),
        ];
        let text = record_list(&keys);
        assert_eq!(text, "0/100:0-2 0/100:7 0/200:0 0/300:4-5");
        assert_eq!(parse_record_list(&text), Some(keys));
        assert_eq!(parse_record_list(""), Some(vec![]));
        assert_eq!(parse_record_list("0/100:5-2"), None);
        assert_eq!(parse_record_list("nonsense"), None);
    }
}
