//! One batch's delivery, in its own task: attempts with backoff until it is
//! delivered, dead-lettered, parked or stopped; and the same for a parked
//! row, retried from the store.
//!
//! ```text
//!  live batch ──attempt──▶ 2xx: delivered
//!      │  fails ──▶ backoff ──▶ attempt …      (settings read at every attempt)
//!      │  exhausted ─▶ dead letter
//!      └─ park_after reached, room under max_parked_bytes ─▶ walhook.parked: parked
//!  park-lane batch ──────────────────────────────────────────▶ walhook.parked (behind)
//!  parked row ──load──attempt──▶ 2xx: row deleted ... exhausted: moved to dead_letters
//! ```
//!
//! A batch is failing from its first failed attempt until it ends: its
//! state stays `retrying` (or `blocked`) while it is attempted again, so
//! the strategy's status does not flap between attempts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::handles::{DeliveryState, PauseHandle, RetryHandle, StatusHandle};
use super::parking::ParkBudget;
use super::retry::{self, Decision, Next as RetryNext};
use super::sender::AttemptResult;
use super::settings::Settings;
use crate::batch::park::{fingerprint, ParkKeys, ParkedRow};
use crate::batch::{Batch, Lane};
use crate::state::{
    parse_record_list, record_list, NewDeadLetter, NewParked, StateError, StateStore, StoredBatch,
};
use crate::telemetry::names;

/// How long recording a batch's records may delay its delivery.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Metric handles, registered once per strategy.
#[derive(Clone)]
pub(super) struct Metrics {
    delivered: Counter,
    dead_lettered: Counter,
    dead_letters: Counter,
    duration: Histogram,
    batch_records: Histogram,
    commit_to_delivery: Histogram,
    pub(super) queue: Gauge,
    pub(super) in_flight: Gauge,
    pub(super) parked_batches: Gauge,
    pub(super) parked_records: Gauge,
    pub(super) parked_bytes: Gauge,
    strategy: Arc<str>,
}

impl Metrics {
    pub(super) fn new(strategy: &str) -> Self {
        let s = strategy.to_string();
        let parked_batches = metrics::gauge!(names::PARKED_BATCHES, "strategy" => s.clone());
        let parked_records = metrics::gauge!(names::PARKED_RECORDS, "strategy" => s.clone());
        let parked_bytes = metrics::gauge!(names::PARKED_BYTES, "strategy" => s.clone());
        // At zero from the start, so rate() and alerts see the first one.
        for reason in ["failing", "behind", "held"] {
            metrics::counter!(names::PARKED_TOTAL, "strategy" => s.clone(), "reason" => reason)
                .increment(0);
        }
        Metrics {
            delivered: metrics::counter!(names::BATCHES_TOTAL, "strategy" => s.clone(), "outcome" => "delivered"),
            dead_lettered: metrics::counter!(names::BATCHES_TOTAL, "strategy" => s.clone(), "outcome" => "dead_lettered"),
            dead_letters: metrics::counter!(names::DEAD_LETTERS_TOTAL, "strategy" => s.clone()),
            duration: metrics::histogram!(names::DELIVERY_DURATION_SECONDS, "strategy" => s.clone()),
            batch_records: metrics::histogram!(names::BATCH_RECORDS, "strategy" => s.clone()),
            commit_to_delivery: metrics::histogram!(names::COMMIT_TO_DELIVERY_SECONDS, "strategy" => s.clone()),
            queue: metrics::gauge!(names::QUEUE_RECORDS, "strategy" => s.clone()),
            in_flight: metrics::gauge!(names::IN_FLIGHT_BATCHES, "strategy" => s),
            parked_batches,
            parked_records,
            parked_bytes,
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

    fn parked(&self, reason: &'static str) {
        metrics::counter!(names::PARKED_TOTAL, "strategy" => self.strategy.to_string(), "reason" => reason)
            .increment(1);
    }
}

/// What every delivery task of a strategy shares.
pub(super) struct SenderCtx {
    pub(super) name: Arc<str>,
    /// The endpoint, retry policy and templates: read at every attempt.
    pub(super) settings: watch::Receiver<Settings>,
    pub(super) state: Option<StateStore>,
    /// Store each batch's records before sending it.
    pub(super) record_batches: bool,
    /// Store the list of records (under `ordering = "key"` a batch is not a
    /// range of consecutive records).
    pub(super) store_lists: bool,
    pub(super) status: StatusHandle,
    pub(super) metrics: Metrics,
    pub(super) pause: PauseHandle,
    pub(super) retry_now: RetryHandle,
    /// The bound of parked bytes; `None` = this worker never parks.
    pub(super) parking: Option<ParkBudget>,
    /// Batches in flight that are sending, retrying, blocked.
    pub(super) counts: Mutex<(u32, u32, u32)>,
    /// Soft stop: start no new batch, no new backoff.
    pub(super) stop: CancellationToken,
    /// Hard stop: abandon the attempts in flight.
    pub(super) abort: CancellationToken,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Delivered,
    DeadLettered,
    /// Stored in `walhook.parked` (the row is in [`Ended::parked`]).
    Parked,
    Cancelled,
}

/// What a delivery task hands back.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) outcome: Outcome,
    pub(super) parked: Option<ParkedRow>,
}

impl Ended {
    fn of(outcome: Outcome) -> Ended {
        Ended {
            outcome,
            parked: None,
        }
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
    fn start(ctx: &'a SenderCtx, state: TaskState) -> Self {
        let flying = Flying {
            ctx,
            state: Mutex::new(state),
        };
        flying.count(state, 1);
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

/// Delivers one batch sealed by the dispatcher: stores its records (for
/// stable ids), waits for the batch sealed before it when there is one
/// (`after`, chained), then attempts until delivered, dead-lettered, parked
/// or stopped. A park-lane batch, or one whose predecessor was parked
/// (chained), is stored behind the parked work instead of sent.
pub(super) async fn deliver(
    ctx: &SenderCtx,
    batch: &mut Batch,
    after: Option<oneshot::Receiver<Outcome>>,
) -> Ended {
    let park_lane = batch.lane == Lane::Park;
    if ctx.record_batches && !park_lane {
        record_batch(ctx, batch).await;
    }
    let mut behind = park_lane;
    if let Some(after) = after {
        let before = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Ended::of(Outcome::Cancelled),
            // Its task ended without a word: it was dropped at shutdown.
            r = after => r.unwrap_or(Outcome::Cancelled),
        };
        // Stopping starts no new batch; a batch not sent must not go ahead
        // of it.
        if before == Outcome::Cancelled || ctx.stop.is_cancelled() {
            return Ended::of(Outcome::Cancelled);
        }
        // The batch before it is parked: this one must follow it.
        behind |= before == Outcome::Parked;
        if !behind {
            // Paused while the batch before was in flight: hold until resumed.
            let mut paused = ctx.pause.subscribe();
            tokio::select! {
                biased;
                _ = ctx.stop.cancelled() => return Ended::of(Outcome::Cancelled),
                _ = paused.wait_for(Option::is_none) => {}
            }
        }
    }
    if behind {
        return park_behind(ctx, batch).await;
    }
    attempts(ctx, batch, Kind::Live).await
}

/// Delivers parked row `id` from the store: the same attempts, backoff
/// and `webhook-id`; deleted once delivered, moved to the dead letters
/// when the retry policy says so.
pub(super) async fn drain(ctx: &SenderCtx, id: i64) -> Outcome {
    let Some(state) = ctx.state.clone() else {
        return Outcome::Cancelled;
    };
    let mut failures = 0u32;
    let row = loop {
        match state.parked_batch(id).await {
            Ok(Some(row)) => break row,
            // Gone (dead-lettered or delivered by another instance).
            Ok(None) => return Outcome::Delivered,
            Err(e) => {
                failures = failures.saturating_add(1);
                state_failed(ctx, StateOp::ReadParked, &e);
                let delay = retry::delay(
                    &ctx.settings.borrow().retry,
                    failures,
                    None,
                    &mut rand::rng(),
                );
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    state_ok(ctx);
    let keys_list = parse_record_list(&row.records).unwrap_or_default();
    let decorate = ctx.settings.borrow().decorate.clone();
    let mut batch = Batch::stored(
        &ctx.name,
        row.batch_id,
        usize::try_from(row.size).unwrap_or(0),
        row.first_lsn,
        row.last_lsn,
        keys_list,
        row.first_commit_time,
        Bytes::from(row.body),
        decorate.as_ref(),
    );
    let attempts_before = u32::try_from(row.attempts).unwrap_or(0);
    attempts(
        ctx,
        &mut batch,
        Kind::Parked {
            id,
            attempts: attempts_before,
        },
    )
    .await
    .outcome
}

/// Whose attempts these are.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A batch of the live stream: it may be parked.
    Live,
    /// Parked row `id`, attempted `attempts` times before.
    Parked { id: i64, attempts: u32 },
}

/// Attempts until the batch is delivered, dead-lettered, parked or stopped.
async fn attempts(ctx: &SenderCtx, batch: &mut Batch, kind: Kind) -> Ended {
    let (mut failures, parked_id) = match kind {
        Kind::Live => (0, None),
        Kind::Parked { id, attempts } => (attempts, Some(id)),
    };
    // Attempts that reached the endpoint: refusals by the open circuit
    // back off like failures but do not use up `max_attempts`.
    let mut sent_failures = failures;
    let mut first_failure: Option<Instant> = None;
    let flying = Flying::start(
        ctx,
        if failures > 0 {
            TaskState::Retrying
        } else {
            TaskState::Sending
        },
    );
    let mut wake = ctx.retry_now.subscribe();
    let mut skip = ctx.retry_now.subscribe_skip();
    let first = batch.keys.first().copied().unwrap_or((batch.first_lsn, 0));
    // Counted by retry-now (and a candidate for dead-letter-head) from its
    // first failure until it ends; a wake during an attempt ends the next
    // backoff at once.
    let mut failing = (failures > 0).then(|| ctx.retry_now.failing(first, &batch.id));
    let mut settings_rx = ctx.settings.clone();
    settings_rx.borrow_and_update();
    let mut decorated = settings_rx.borrow().generation;
    // A row parked after failing waits out its backoff first (the same
    // backoff goes on from the store).
    if failures > 0 {
        let delay = retry::delay(
            &ctx.settings.borrow().retry,
            failures,
            None,
            &mut rand::rng(),
        );
        let number = failing.as_ref().map_or(0, |f| f.number());
        match backoff(
            ctx,
            batch,
            &mut wake,
            &mut settings_rx,
            &mut skip,
            number,
            None,
            delay,
        )
        .await
        {
            Waited::Go => {}
            Waited::Stop => return Ended::of(Outcome::Cancelled),
            Waited::DeadLetter => {
                let error = "dead-lettered by the admin API (dead-letter-head)";
                let outcome =
                    dead_letter(ctx, &flying, batch, None, Some(error), failures, parked_id);
                return Ended::of(outcome.await);
            }
        }
    }
    loop {
        wake.borrow_and_update();
        let settings = settings_rx.borrow_and_update().clone();
        if settings.generation != decorated {
            batch.decorate(settings.decorate.as_ref());
            decorated = settings.generation;
        }
        let endpoint = settings.endpoint.clone();
        let result = tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return Ended::of(Outcome::Cancelled),
            r = endpoint.attempt(batch) => r,
        };
        let decision = if result.refused {
            Decision::Retry
        } else {
            retry::decide(result.status, endpoint.on_client_error())
        };
        // The last attempt a retry policy allows is logged and counted as
        // what it leads to: a dead letter, not another retry.
        let told = if decision == Decision::Retry
            && !result.refused
            && retry::next(&settings.retry, sent_failures.saturating_add(1))
                == RetryNext::DeadLetter
        {
            Decision::DeadLetter
        } else {
            decision
        };
        ctx.metrics.attempt(&result, told);
        let error = result.error.clone().unwrap_or_default();
        if decision != Decision::Delivered {
            tracing::warn!(
                strategy = %ctx.name,
                endpoint = endpoint.name(),
                host = %endpoint.host(),
                batch_id = %batch.id,
                first_lsn = %batch.first_lsn,
                parked = parked_id.is_some(),
                attempt = failures + 1,
                status = result.status,
                decision = told.label(),
                error = %error,
                "delivery attempt failed"
            );
        }
        match decision {
            Decision::Delivered => {
                if let Some(id) = parked_id {
                    unpark_delivered(ctx, id, batch).await;
                }
                delivered(ctx, batch);
                return Ended::of(Outcome::Delivered);
            }
            Decision::DeadLetter => {
                failures = failures.saturating_add(1);
                let outcome = dead_letter(
                    ctx,
                    &flying,
                    batch,
                    result.status,
                    result.error.as_deref(),
                    failures,
                    parked_id,
                );
                return Ended::of(outcome.await);
            }
            Decision::Pause => {
                failures = failures.saturating_add(1);
                failing.get_or_insert_with(|| ctx.retry_now.failing(first, &batch.id));
                endpoint.gone(&ctx.name);
                failed(ctx, failures, error);
                flying.set(TaskState::Blocked);
                if let Some(id) = parked_id {
                    record_parked_attempt(ctx, id, failures, &result).await;
                }
                // Held until the strategy is resumed; then tried at once.
                let mut paused = ctx.pause.subscribe();
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Ended::of(Outcome::Cancelled),
                    _ = paused.wait_for(Option::is_none) => {}
                }
            }
            Decision::Retry => {
                failures = failures.saturating_add(1);
                failing.get_or_insert_with(|| ctx.retry_now.failing(first, &batch.id));
                if !result.refused {
                    sent_failures = sent_failures.saturating_add(1);
                }
                let since = *first_failure.get_or_insert_with(Instant::now);
                let next = if sent_failures == 0 {
                    RetryNext::Retry
                } else {
                    retry::next(&settings.retry, sent_failures)
                };
                if next == RetryNext::DeadLetter {
                    let outcome = dead_letter(
                        ctx,
                        &flying,
                        batch,
                        result.status,
                        result.error.as_deref(),
                        sent_failures,
                        parked_id,
                    );
                    return Ended::of(outcome.await);
                }
                let delay = retry::delay(
                    &settings.retry,
                    failures,
                    result.retry_after,
                    &mut rand::rng(),
                );
                failed(ctx, failures, error);
                flying.set(if next == RetryNext::RetryBlocked {
                    TaskState::Blocked
                } else {
                    TaskState::Retrying
                });
                match parked_id {
                    Some(id) => record_parked_attempt(ctx, id, failures, &result).await,
                    // Parked once the next attempt would come after `park_after`.
                    None if settings
                        .retry
                        .park_after
                        .reached(failures, since.elapsed() + delay) =>
                    {
                        if let Some(row) = park_failing(ctx, batch, failures, &result).await {
                            return Ended {
                                outcome: Outcome::Parked,
                                parked: Some(row),
                            };
                        }
                    }
                    None => {}
                }
                let recovered = endpoint.recovered();
                let number = failing.as_ref().map_or(0, |f| f.number());
                let waited = backoff(
                    ctx,
                    batch,
                    &mut wake,
                    &mut settings_rx,
                    &mut skip,
                    number,
                    Some(recovered),
                    delay,
                )
                .await;
                match waited {
                    Waited::Go => {}
                    Waited::Stop => return Ended::of(Outcome::Cancelled),
                    Waited::DeadLetter => {
                        tracing::warn!(strategy = %ctx.name, batch_id = %batch.id, "dead-lettering the head batch (admin API)");
                        let outcome = dead_letter(
                            ctx,
                            &flying,
                            batch,
                            result.status,
                            result.error.as_deref(),
                            failures,
                            parked_id,
                        );
                        return Ended::of(outcome.await);
                    }
                }
            }
        }
    }
}

/// How a backoff wait ended.
enum Waited {
    /// Attempt again.
    Go,
    /// Stopped.
    Stop,
    /// The admin API asked to dead-letter this batch.
    DeadLetter,
}

/// Waits `delay` before the next attempt; ends early when the admin API
/// asks (asked) to retry now since the last attempt started, or to
/// dead-letter this batch (`number`), the endpoint's circuit closes or a
/// reload changes the settings.
#[allow(clippy::too_many_arguments)]
async fn backoff(
    ctx: &SenderCtx,
    batch: &Batch,
    wake: &mut watch::Receiver<u64>,
    settings: &mut watch::Receiver<Settings>,
    skip: &mut watch::Receiver<u64>,
    number: u64,
    recovered: Option<watch::Receiver<u64>>,
    delay: Duration,
) -> Waited {
    let mut recovered = recovered;
    if let Some(r) = &mut recovered {
        r.borrow_and_update();
    }
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        if number != 0 && *skip.borrow_and_update() == number {
            return Waited::DeadLetter;
        }
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return Waited::Stop,
            Ok(()) = skip.changed() => continue,
            _ = wake.changed() => {
                tracing::info!(strategy = %ctx.name, batch_id = %batch.id, "retrying now (admin API)");
            }
            Ok(()) = settings.changed() => {
                tracing::info!(strategy = %ctx.name, batch_id = %batch.id, "settings changed by a reload; attempting again now");
            }
            // The endpoint's circuit closed: it answers again.
            Ok(()) = changed(&mut recovered) => {}
            _ = &mut sleep => {}
        }
        return Waited::Go;
    }
}

async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Stores the batch's records before its first attempt, so a redelivery
/// after a restart re-forms it with the same id. Best effort: a slow or
/// absent state database must not stop delivery (the status and the
/// metrics show it).
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
    match recorded {
        Ok(Ok(())) => state_ok(ctx),
        Ok(Err(e)) => {
            state_failed(ctx, StateOp::RecordBatch, &e);
            tracing::warn!(strategy = %ctx.name, batch_id = %batch.id, error = %e, "cannot record the batch's records; a redelivery may get a new batch id");
        }
        Err(_) => {
            let error = format!("no answer within {STATE_TIMEOUT:?}");
            ctx.status
                .update(|s| s.state_error = Some(format!("recording a batch's records: {error}")));
            tracing::warn!(strategy = %ctx.name, batch_id = %batch.id, error = %error, "cannot record the batch's records; a redelivery may get a new batch id");
        }
    }
}

/// A write (or read) of the state store that delivery depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StateOp {
    RecordBatch,
    Park,
    ReadParked,
    DeleteParked,
    RecordAttempt,
    DeadLetter,
}

impl StateOp {
    pub(crate) const ALL: [StateOp; 6] = [
        StateOp::RecordBatch,
        StateOp::Park,
        StateOp::ReadParked,
        StateOp::DeleteParked,
        StateOp::RecordAttempt,
        StateOp::DeadLetter,
    ];

    /// The `operation` label of `walhook_state_errors_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            StateOp::RecordBatch => "record_batch",
            StateOp::Park => "park",
            StateOp::ReadParked => "read_parked",
            StateOp::DeleteParked => "delete_parked",
            StateOp::RecordAttempt => "record_attempt",
            StateOp::DeadLetter => "dead_letter",
        }
    }

    fn what(self) -> &'static str {
        match self {
            StateOp::RecordBatch => "recording a batch's records",
            StateOp::Park => "parking a batch",
            StateOp::ReadParked => "reading a parked batch",
            StateOp::DeleteParked => "deleting a delivered parked batch",
            StateOp::RecordAttempt => "recording a parked batch's attempt",
            StateOp::DeadLetter => "storing a dead letter",
        }
    }
}

/// A state-store write failed: shown in `/status` until one succeeds.
fn state_failed(ctx: &SenderCtx, op: StateOp, err: &StateError) {
    let what = op.what();
    tracing::error!(strategy = %ctx.name, operation = op.label(), error = %err, "{what} in the state store failed");
    metrics::counter!(names::STATE_ERRORS_TOTAL, "operation" => op.label()).increment(1);
    ctx.status
        .update(|s| s.state_error = Some(format!("{what}: {err}")));
}

fn state_ok(ctx: &SenderCtx) {
    ctx.status.update(|s| {
        if s.state_error.is_some() {
            s.state_error = None;
        }
    });
}

fn new_parked<'a>(
    ctx: &'a SenderCtx,
    batch: &'a Batch,
    keys: &ParkKeys,
    reason: &'static str,
    attempts: u32,
    last: Option<&'a AttemptResult>,
) -> NewParked<'a> {
    NewParked {
        strategy: &ctx.name,
        batch_id: &batch.id,
        first_lsn: batch.first_lsn,
        last_lsn: batch.last_lsn,
        records: record_list(&batch.keys),
        size: batch.size,
        group_keys: keys.stored(),
        all_groups: keys.all,
        key_hash: fingerprint(),
        body: &batch.body,
        first_commit_time: batch.first_commit_time,
        reason,
        attempts,
        last_status: last.and_then(|r| r.status),
        last_error: last.and_then(|r| r.error.as_deref()),
    }
}

fn row_of(id: i64, batch: &Batch, keys: ParkKeys) -> ParkedRow {
    ParkedRow {
        id,
        keys,
        bytes: batch.body.len() as u64,
        records: batch.size as u64,
    }
}

/// Parks a failing batch when there is room under `max_parked_bytes`;
/// `None` when it stays (no room, no parking here, the store failed): it
/// then goes on failing where it is.
async fn park_failing(
    ctx: &SenderCtx,
    batch: &Batch,
    attempts: u32,
    last: &AttemptResult,
) -> Option<ParkedRow> {
    let (Some(budget), Some(state)) = (&ctx.parking, &ctx.state) else {
        return None;
    };
    let bytes = batch.body.len() as u64;
    if !budget.try_reserve(bytes) {
        tracing::warn!(
            strategy = %ctx.name,
            batch_id = %batch.id,
            limit_bytes = budget.limit(),
            "parking is full (max_parked_bytes): the failing batch holds its strategy and the slot until parked work is delivered"
        );
        return None;
    }
    let keys = ParkKeys::of(&batch.groups);
    match state
        .insert_parked(&new_parked(
            ctx,
            batch,
            &keys,
            "failing",
            attempts,
            Some(last),
        ))
        .await
    {
        Ok(id) => {
            state_ok(ctx);
            ctx.metrics.parked("failing");
            tracing::warn!(
                strategy = %ctx.name,
                batch_id = %batch.id,
                parked_id = id,
                attempts,
                records = batch.size,
                "failing batch parked: the slot moves past it; it is retried from walhook.parked"
            );
            Some(row_of(id, batch, keys))
        }
        Err(e) => {
            budget.release(bytes);
            state_failed(ctx, StateOp::Park, &e);
            None
        }
    }
}

/// Stores a batch behind the parked work it must follow, waiting for room
/// and retrying the store until it is kept (or stopped).
async fn park_behind(ctx: &SenderCtx, batch: &Batch) -> Ended {
    let (Some(budget), Some(state)) = (&ctx.parking, &ctx.state) else {
        // The dispatcher parks only where parking is on.
        return Ended::of(Outcome::Cancelled);
    };
    let bytes = batch.body.len() as u64;
    if !budget.try_reserve(bytes) {
        tracing::warn!(
            strategy = %ctx.name,
            batch_id = %batch.id,
            limit_bytes = budget.limit(),
            "parking is full (max_parked_bytes): records waiting behind parked work stay in memory; the slot waits"
        );
        if !budget.reserve(bytes, &ctx.stop).await {
            return Ended::of(Outcome::Cancelled);
        }
    }
    let keys = ParkKeys::of(&batch.groups);
    let reason = if ctx.status.snapshot().held.is_some() {
        "held"
    } else {
        "behind"
    };
    let mut failures = 0u32;
    loop {
        match state
            .insert_parked(&new_parked(ctx, batch, &keys, reason, 0, None))
            .await
        {
            Ok(id) => {
                state_ok(ctx);
                ctx.metrics.parked(reason);
                tracing::debug!(strategy = %ctx.name, batch_id = %batch.id, parked_id = id, "batch parked behind parked work");
                return Ended {
                    outcome: Outcome::Parked,
                    parked: Some(row_of(id, batch, keys)),
                };
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                state_failed(ctx, StateOp::Park, &e);
                let delay = retry::delay(
                    &ctx.settings.borrow().retry,
                    failures,
                    None,
                    &mut rand::rng(),
                );
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => {
                        budget.release(bytes);
                        return Ended::of(Outcome::Cancelled);
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A parked row was delivered: its row goes. A row the store does not
/// delete now is delivered again later (same `webhook-id`).
async fn unpark_delivered(ctx: &SenderCtx, id: i64, batch: &Batch) {
    let Some(state) = &ctx.state else { return };
    let mut failures = 0u32;
    loop {
        match state.delete_parked(id).await {
            Ok(_) => {
                state_ok(ctx);
                tracing::info!(strategy = %ctx.name, batch_id = %batch.id, parked_id = id, "parked batch delivered");
                return;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                state_failed(ctx, StateOp::DeleteParked, &e);
                if failures >= 5 {
                    tracing::warn!(strategy = %ctx.name, batch_id = %batch.id, parked_id = id, "the delivered parked batch stays in walhook.parked; it will be delivered again (same webhook-id)");
                    return;
                }
                let delay = retry::delay(
                    &ctx.settings.borrow().retry,
                    failures,
                    None,
                    &mut rand::rng(),
                );
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn record_parked_attempt(ctx: &SenderCtx, id: i64, attempts: u32, result: &AttemptResult) {
    let Some(state) = &ctx.state else { return };
    match state
        .record_parked_attempt(id, attempts, result.status, result.error.as_deref())
        .await
    {
        Ok(()) => state_ok(ctx),
        Err(e) => state_failed(ctx, StateOp::RecordAttempt, &e),
    }
}

fn failed(ctx: &SenderCtx, failures: u32, error: String) {
    let now = SystemTime::now();
    ctx.status.update(|s| {
        s.attempts = failures;
        s.last_error = Some(error);
        s.last_error_at = Some(now);
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
        if s.last_error.take().is_some() {
            s.recovered_at = Some(now);
        }
        s.last_success = Some(now);
        s.delivered_batches += 1;
        s.delivered_records += batch.size as u64;
    });
}

async fn dead_letter(
    ctx: &SenderCtx,
    flying: &Flying<'_>,
    batch: &Batch,
    last_status: Option<u16>,
    last_error: Option<&str>,
    attempts: u32,
    parked_id: Option<i64>,
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
        last_status,
        last_error,
        attempts,
    };
    let mut failures = 0u32;
    loop {
        let stored = match parked_id {
            // One statement: the row moves, it is never in both tables.
            Some(id) => state
                .dead_letter_parked(id, attempts, last_status, last_error)
                .await
                .map(|id| id.unwrap_or(0)),
            None => state.insert_dead_letter(&letter).await,
        };
        match stored {
            Ok(id) => {
                state_ok(ctx);
                if let Some(log) = &batch.replies {
                    log.dead_lettered(&batch.keys);
                }
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
                state_failed(ctx, StateOp::DeadLetter, &e);
                failed(ctx, attempts, format!("storing the dead letter: {e}"));
                flying.set(TaskState::Blocked);
                let delay = retry::delay(
                    &ctx.settings.borrow().retry,
                    failures,
                    None,
                    &mut rand::rng(),
                );
                tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
