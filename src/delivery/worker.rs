//! The per-strategy worker: reads the strategy's queue, batches, and sends
//! one batch at a time in commit order while the next one fills.
//!
//! ```text
//!  queue (WorkItem) ──▶ worker loop: Batcher ──▶ capacity-1 channel ──▶ sender task
//!                          ▲                                              │ attempts, backoff,
//!                          └────────────── Done (complete_through) ◀──────┘ dead letters
//!                          │
//!                          ▼ checkpoint.delivered(index, lsn)
//! ```
//!
//! The worker loop never waits on HTTP: it keeps reading the queue (up to
//! two sealed batches ahead), so a slow endpoint fills batches instead of
//! sending many small ones. The sender task owns retries; the loop owns the
//! checkpoint, so "delivered through" is always decided by the one place
//! that knows what is still buffered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::retry::{self, Next};
use super::sender::{AttemptResult, Endpoint};
use super::DeliveryError;
use crate::batch::payload::parse_record_id;
use crate::batch::{Batch, Batcher, BatcherOptions, Boundary, Decorate, WorkItem};
use crate::checkpoint::Checkpoint;
use crate::config::{OnExhausted, Retry};
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
    /// The endpoint's retry policy.
    pub retry: Retry,
    pub endpoint: Arc<Endpoint>,
    pub decorate: Arc<dyn Decorate>,
    pub checkpoint: Arc<Checkpoint>,
    /// Needed for `on_exhausted = "dead_letter"`; also keeps batch
    /// boundaries across restarts.
    pub state: Option<StateStore>,
    /// How long shutdown waits for the in-flight batch.
    pub shutdown_timeout: Duration,
    /// Capacity of the strategy's queue (work items).
    pub queue_capacity: usize,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("linger", &self.linger)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

/// How often stored batch boundaries behind the acked position are deleted.
const FORGET_INTERVAL: Duration = Duration::from_secs(1);

/// How long recording a batch's boundaries may delay its delivery.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default capacity of a strategy's queue.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// What a strategy's delivery is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Nothing in flight.
    Idle,
    /// A batch is being sent.
    Delivering,
    /// The last attempt failed; waiting to retry.
    Retrying,
    /// Attempts are exhausted and `on_exhausted = "block"`: retrying while
    /// holding the slot.
    Blocked,
    /// The worker has stopped.
    Stopped,
}

/// A strategy's delivery status, for `/status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StrategyStatus {
    pub state: DeliveryState,
    /// Records buffered or in flight, plus the items waiting on the queue
    /// (records and transaction ends).
    pub queue_records: u64,
    /// When a batch was last delivered.
    pub last_success: Option<SystemTime>,
    /// Why the last attempt failed (no secrets, no values); cleared on success.
    pub last_error: Option<String>,
    /// Failed attempts of the batch in flight.
    pub attempts: u32,
    pub(crate) delivered_batches: u64,
    pub dead_lettered_batches: u64,
    /// Records in delivered batches (runs report progress with it).
    pub(crate) delivered_records: u64,
    /// Records in dead-lettered batches.
    pub(crate) dead_lettered_records: u64,
    /// Paused through the admin API: no new batch is sent.
    pub paused: bool,
}

/// Pauses a strategy's sending: the batch in flight finishes, no further
/// batch starts until resumed; the queue fills and then blocks the router
/// (so the slot holds WAL, nothing is dropped).
#[derive(Debug, Clone)]
pub struct PauseHandle(Arc<tokio::sync::watch::Sender<bool>>);

impl PauseHandle {
    pub fn pause(&self) {
        self.0.send_replace(true);
    }

    pub fn resume(&self) {
        self.0.send_replace(false);
    }
}

/// Shared view of a worker's [`StrategyStatus`].
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<StrategyStatus>>);

impl StatusHandle {
    fn new() -> Self {
        StatusHandle(Arc::new(Mutex::new(StrategyStatus {
            state: DeliveryState::Idle,
            queue_records: 0,
            last_success: None,
            last_error: None,
            attempts: 0,
            delivered_batches: 0,
            dead_lettered_batches: 0,
            delivered_records: 0,
            dead_lettered_records: 0,
            paused: false,
        })))
    }

    /// The current status.
    pub fn snapshot(&self) -> StrategyStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StrategyStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut StrategyStatus)) {
        f(&mut self.lock());
    }
}

/// Metric handles, registered once per strategy.
#[derive(Clone)]
struct Metrics {
    delivered: Counter,
    dead_lettered: Counter,
    dead_letters: Counter,
    attempts: [Counter; 6],
    duration: Histogram,
    batch_records: Histogram,
    commit_to_delivery: Histogram,
    queue: Gauge,
}

const STATUS_CLASSES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "other", "error"];

impl Metrics {
    fn new(strategy: &str) -> Self {
        let s = strategy.to_string();
        let attempts = STATUS_CLASSES.map(|class| {
            metrics::counter!(names::DELIVERY_ATTEMPTS_TOTAL, "strategy" => s.clone(), "status_class" => class)
        });
        Metrics {
            delivered: metrics::counter!(names::BATCHES_TOTAL, "strategy" => s.clone(), "outcome" => "delivered"),
            dead_lettered: metrics::counter!(names::BATCHES_TOTAL, "strategy" => s.clone(), "outcome" => "dead_lettered"),
            dead_letters: metrics::counter!(names::DEAD_LETTERS_TOTAL, "strategy" => s.clone()),
            attempts,
            duration: metrics::histogram!(names::DELIVERY_DURATION_SECONDS, "strategy" => s.clone()),
            batch_records: metrics::histogram!(names::BATCH_RECORDS, "strategy" => s.clone()),
            commit_to_delivery: metrics::histogram!(names::COMMIT_TO_DELIVERY_SECONDS, "strategy" => s.clone()),
            queue: metrics::gauge!(names::QUEUE_RECORDS, "strategy" => s),
        }
    }

    fn attempt(&self, result: &AttemptResult) {
        let class = result.status_class();
        if let Some(i) = STATUS_CLASSES.iter().position(|c| *c == class) {
            if let Some(counter) = self.attempts.get(i) {
                counter.increment(1);
            }
        }
        self.duration.record(result.elapsed.as_secs_f64());
    }
}

/// A strategy's delivery loop. Build with [`StrategyWorker::new`], then
/// `run(shutdown).await`.
pub struct StrategyWorker {
    index: usize,
    name: Arc<str>,
    batcher: Batcher,
    rx: mpsc::Receiver<WorkItem>,
    ctx: Arc<SenderCtx>,
    checkpoint: Arc<Checkpoint>,
    shutdown_timeout: Duration,
    paused: tokio::sync::watch::Receiver<bool>,
    pause: PauseHandle,
}

impl std::fmt::Debug for StrategyWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyWorker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct SenderCtx {
    name: Arc<str>,
    endpoint: Arc<Endpoint>,
    retry: Retry,
    state: Option<StateStore>,
    status: StatusHandle,
    metrics: Metrics,
    /// Soft stop: start no new batch, no new backoff.
    stop: CancellationToken,
    /// Hard stop: abandon the attempt in flight.
    abort: CancellationToken,
}

/// The sender task's report on a batch it is done with.
struct Done {
    size: usize,
    complete_through: Option<Lsn>,
}

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
        if opts.retry.on_exhausted == OnExhausted::DeadLetter && opts.state.is_none() {
            return Err(DeliveryError::NeedsStateStore {
                strategy: opts.name,
            });
        }
        let name: Arc<str> = opts.name.into();
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let (pause_tx, pause_rx) = tokio::sync::watch::channel(false);
        let batcher = Batcher::new(
            BatcherOptions {
                strategy: name.clone(),
                batch_size: opts.batch_size,
                max_batch_bytes: opts.max_batch_bytes,
                linger: opts.linger,
            },
            opts.decorate,
        );
        let ctx = Arc::new(SenderCtx {
            name: name.clone(),
            endpoint: opts.endpoint,
            retry: opts.retry,
            state: opts.state,
            status: StatusHandle::new(),
            metrics: Metrics::new(&name),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        let worker = StrategyWorker {
            index: opts.index,
            name,
            batcher,
            rx,
            ctx,
            checkpoint: opts.checkpoint,
            shutdown_timeout: opts.shutdown_timeout,
            paused: pause_rx,
            pause: PauseHandle(Arc::new(pause_tx)),
        };
        Ok((worker, tx))
    }

    /// Pauses and resumes sending (for the admin API).
    pub fn pause_handle(&self) -> PauseHandle {
        self.pause.clone()
    }

    /// The strategy's status, updated while the worker runs.
    pub fn status(&self) -> StatusHandle {
        self.ctx.status.clone()
    }

    /// Runs until `shutdown` is cancelled (then finishes the batch in
    /// flight within the shutdown timeout) or the queue's senders are all
    /// dropped (then delivers everything queued first).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DeliveryError> {
        self.restore_boundaries().await;
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let sender = tokio::spawn(sender_loop(self.ctx.clone(), batch_rx, done_tx));
        let mut outstanding = 0usize;
        let mut outstanding_records = 0usize;
        let mut input_open = true;
        let mut forget = tokio::time::interval(FORGET_INTERVAL);
        forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut forgotten = Lsn::ZERO;

        loop {
            if !input_open && self.batcher.is_empty() && outstanding == 0 {
                break;
            }
            let deadline = self.batcher.deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                // 1. shutdown
                _ = shutdown.cancelled() => break,
                // 2. a batch finished: advance the checkpoint
                Some(done) = done_rx.recv() => {
                    outstanding = outstanding.saturating_sub(1);
                    outstanding_records = outstanding_records.saturating_sub(done.size);
                    self.finished(done, outstanding);
                    self.update_queue(outstanding_records);
                }
                // 3. paused or resumed (the watch sender lives in
                //    `self.pause`, so `changed` cannot fail)
                Ok(()) = self.paused.changed() => {
                    let paused = *self.paused.borrow_and_update();
                    self.ctx.status.update(|s| s.paused = paused);
                    tracing::info!(strategy = %self.name, paused, "delivery paused or resumed");
                }
                // 4. hand the next sealed batch to the sender, unless paused
                permit = batch_tx.reserve(), if self.batcher.ready_len() > 0 && !*self.paused.borrow() => {
                    let Ok(permit) = permit else { break };
                    if let Some(batch) = self.batcher.pop_ready() {
                        outstanding += 1;
                        outstanding_records += batch.size;
                        permit.send(batch);
                        self.update_queue(outstanding_records);
                    }
                }
                // 5. linger deadline
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.batcher.poll_linger(Instant::now());
                    self.update_queue(outstanding_records);
                }
                // 6. forget stored batches Postgres has acknowledged
                _ = forget.tick(), if self.ctx.state.is_some() => self.forget_acked(&mut forgotten),
                // 7. new input, while fewer than two sealed batches wait
                item = self.rx.recv(), if input_open && self.batcher.ready_len() < 2 => match item {
                    Some(WorkItem::Record(record)) => self.batcher.push(record, Instant::now()),
                    Some(WorkItem::TxEnd { end_lsn }) => {
                        self.batcher.tx_end(end_lsn);
                        if self.batcher.is_empty() && outstanding == 0 {
                            self.checkpoint.delivered(self.index, end_lsn);
                        }
                        self.update_queue(outstanding_records);
                    }
                    None => {
                        input_open = false;
                        self.batcher.flush();
                    }
                },
            }
        }

        // Shutdown: no new batches; let the one in flight finish in time.
        self.ctx.stop.cancel();
        drop(batch_tx);
        let drain = async {
            while let Some(done) = done_rx.recv().await {
                outstanding = outstanding.saturating_sub(1);
                self.finished(done, outstanding);
            }
        };
        if tokio::time::timeout(self.shutdown_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                strategy = %self.name,
                timeout = ?self.shutdown_timeout,
                "the batch in flight did not finish before the shutdown timeout; it will be sent again after a restart"
            );
            self.ctx.abort.cancel();
        }
        let joined = sender.await;
        self.ctx.status.update(|s| s.state = DeliveryState::Stopped);
        match joined {
            Err(e) if e.is_panic() => Err(DeliveryError::SenderFailed {
                strategy: self.name.to_string(),
            }),
            _ => Ok(()),
        }
    }

    async fn restore_boundaries(&mut self) {
        let Some(state) = &self.ctx.state else { return };
        match state.load_batches(&self.name).await {
            Ok(stored) => {
                let boundaries: Vec<Boundary> = stored
                    .iter()
                    .filter_map(|b| {
                        Some(Boundary {
                            first: parse_record_id(&b.first_record_id)?,
                            last: parse_record_id(&b.last_record_id)?,
                        })
                    })
                    .collect();
                if !boundaries.is_empty() {
                    tracing::info!(strategy = %self.name, batches = boundaries.len(), "re-forming batches sent before the restart");
                }
                self.batcher.restore_boundaries(boundaries);
            }
            Err(e) => {
                tracing::warn!(strategy = %self.name, error = %e, "cannot load stored batch boundaries; redelivered batches may get new ids");
            }
        }
    }

    fn finished(&self, done: Done, outstanding: usize) {
        // With nothing buffered or in flight, every transaction end seen so
        // far is complete, not only the one the batch was sealed after.
        let through = if outstanding == 0 && self.batcher.is_empty() {
            done.complete_through.max(self.batcher.last_tx_end())
        } else {
            done.complete_through
        };
        if let Some(lsn) = through {
            self.checkpoint.delivered(self.index, lsn);
        }
    }

    fn forget_acked(&self, forgotten: &mut Lsn) {
        let Some(state) = self.ctx.state.clone() else {
            return;
        };
        let acked = self.checkpoint.acked();
        if acked <= *forgotten {
            return;
        }
        *forgotten = acked;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = state.forget_batches(&name, acked).await {
                tracing::debug!(strategy = %name, error = %e, "cannot forget acknowledged batches");
            }
        });
    }

    fn update_queue(&self, outstanding_records: usize) {
        let n = self.rx.len()
            + self.batcher.pending_len()
            + self.batcher.ready_records()
            + outstanding_records;
        self.ctx.metrics.queue.set(n as f64);
        self.ctx.status.update(|s| s.queue_records = n as u64);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn sender_loop(
    ctx: Arc<SenderCtx>,
    mut batches: mpsc::Receiver<Batch>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(batch) = batches.recv().await {
        if ctx.stop.is_cancelled() {
            break;
        }
        match deliver(&ctx, &batch).await {
            Outcome::Delivered | Outcome::DeadLettered => {
                let _ = done.send(Done {
                    size: batch.size,
                    complete_through: batch.complete_through,
                });
            }
            Outcome::Cancelled => break,
        }
    }
    ctx.status.update(|s| {
        if s.state == DeliveryState::Delivering {
            s.state = DeliveryState::Idle;
        }
    });
}

async fn deliver(ctx: &SenderCtx, batch: &Batch) -> Outcome {
    if let Some(state) = &ctx.state {
        let stored = StoredBatch {
            batch_id: batch.id.clone(),
            first_record_id: batch.first_record_id(),
            last_record_id: batch.last_record_id(),
            last_lsn: batch.last_lsn,
        };
        // Best effort: a slow or absent state database must not stop delivery.
        let recorded =
            tokio::time::timeout(STATE_TIMEOUT, state.record_batch(&ctx.name, &stored)).await;
        let error = match recorded {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {STATE_TIMEOUT:?}")),
        };
        if let Some(error) = error {
            tracing::warn!(strategy = %ctx.name, batch_id = %batch.id, error = %error, "cannot record the batch's boundaries; a redelivery may get a new batch id");
        }
    }
    ctx.status.update(|s| {
        s.state = DeliveryState::Delivering;
        s.attempts = 0;
    });
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Outcome::Cancelled,
            r = ctx.endpoint.attempt(batch) => r,
        };
        ctx.metrics.attempt(&result);
        if result.delivered() {
            delivered(ctx, batch);
            return Outcome::Delivered;
        }
        failures = failures.saturating_add(1);
        let error = result.error.clone().unwrap_or_default();
        tracing::warn!(
            strategy = %ctx.name,
            batch_id = %batch.id,
            first_lsn = %batch.first_lsn,
            attempt = failures,
            status = result.status,
            error = %error,
            "delivery attempt failed"
        );
        let next = retry::next(&ctx.retry, failures);
        if next == Next::DeadLetter {
            return dead_letter(ctx, batch, &result, failures).await;
        }
        let delay = retry::delay(&ctx.retry, failures, result.retry_after, &mut rand::rng());
        ctx.status.update(|s| {
            s.state = if next == Next::RetryBlocked {
                DeliveryState::Blocked
            } else {
                DeliveryState::Retrying
            };
            s.attempts = failures;
            s.last_error = Some(error);
        });
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return Outcome::Cancelled,
            _ = tokio::time::sleep(delay) => {}
        }
        ctx.status.update(|s| s.state = DeliveryState::Delivering);
    }
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
        s.state = DeliveryState::Idle;
        s.attempts = 0;
        s.last_error = None;
        s.last_success = Some(now);
        s.delivered_batches += 1;
        s.delivered_records += batch.size as u64;
    });
}

async fn dead_letter(
    ctx: &SenderCtx,
    batch: &Batch,
    last: &AttemptResult,
    attempts: u32,
) -> Outcome {
    let Some(state) = &ctx.state else {
        // StrategyWorker::new refuses dead_letter without a state store.
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
                    "attempts exhausted; batch stored as a dead letter"
                );
                ctx.metrics.dead_lettered.increment(1);
                ctx.metrics.dead_letters.increment(1);
                ctx.status.update(|s| {
                    s.state = DeliveryState::Idle;
                    s.attempts = 0;
                    s.dead_lettered_batches += 1;
                    s.dead_lettered_records += batch.size as u64;
                });
                return Outcome::DeadLettered;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::error!(strategy = %ctx.name, batch_id = %batch.id, error = %e, "cannot store the dead letter; retrying");
                ctx.status.update(|s| {
                    s.state = DeliveryState::Blocked;
                    s.last_error = Some(format!("storing the dead letter: {e}"));
                });
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
