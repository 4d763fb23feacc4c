//! Carrying out a run: chunk after chunk, into the strategy's live stream.
//!
//! Merged (inside `walhook run`): each chunk's rows are registered with the
//! router and its high watermark written; the router queues what is left of
//! them at that point of the stream, to the strategy's own live worker (see
//! [`crate::backfill`]). A chunk is done once the strategy has delivered
//! everything up to its watermark; then its last key is stored, so a run
//! cut short (kill -9, a restart, the standby taking over) continues after
//! the last delivered chunk. Pausing ends the segment; resuming opens a new
//! one. Nothing waits for the run but the run: the live stream goes on.
//!
//! Direct (`walhook run-strategy` while no walhook streams the slot): the
//! rows go to a worker of the run's own, as there is no stream to merge
//! into; when walhook next streams, the changes committed meanwhile follow
//! them in commit order, so a copy still converges.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, RunError, Stored, Trigger};
use super::reader::{Chunk, KeyText, Start, TableReader, COUNT_UP_TO_BYTES};
use crate::backfill::{self, BackfillHandle, ChunkOutcome, SegmentId, Watermark};
use crate::batch::{Decorate, QueuedRecord, ReplyLog, WorkItem};
use crate::checkpoint::Checkpoint;
use crate::config::{OnExhausted, Ordering};
use crate::delivery::{DeliveryState, StatusHandle, StrategyWorker, WorkerHandles, WorkerOptions};
use crate::lsn::Lsn;
use crate::pg;
use crate::state::StateStore;
use crate::strategy::referenced_columns;

/// How long a cancelled or failed run waits for its batch in flight.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a run looks at its delivery while it waits.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// Chunks a run reads ahead of its delivery.
const MAX_AHEAD: usize = 4;
/// How often a running run writes its counts.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// What a run needs of the running walhook to merge into its stream.
#[derive(Debug, Clone)]
pub(crate) struct Merge {
    pub(crate) backfills: BackfillHandle,
    pub(crate) checkpoint: Arc<Checkpoint>,
    /// The live workers, to see a strategy whose delivery is blocked.
    pub(crate) workers: WorkerHandles,
}

/// Where a run's records go.
pub(crate) enum Sink {
    Merged(Merge),
    Direct,
}

/// What the executor needs besides the plan.
pub(crate) struct Context<'a> {
    pub(crate) url: &'a str,
    pub(crate) state: &'a StateStore,
    /// walhook is stopping: the run stays `running` and resumes later.
    pub(crate) stopping: &'a CancellationToken,
}

/// A chunk in the stream, not yet delivered.
struct InStream {
    end_lsn: Lsn,
    slot: usize,
    last_key: Option<KeyText>,
    sent: u64,
    /// The run's rows read once this chunk was read.
    read_through: u64,
}

impl InStream {
    /// Its watermark: the LSN its records carry.
    fn lsn(&self) -> Lsn {
        Lsn(self.end_lsn.0.saturating_sub(1))
    }
}

/// Runs `plan` until every record it sent was delivered.
pub(crate) async fn execute(plan: &Plan, sink: Sink, cx: &Context<'_>) -> Result<(), RunError> {
    let cfg = plan.config();
    let Some(table) = &cfg.table else {
        return Err(RunError::NoTable(cfg.name.clone()));
    };
    let client = pg::connect(cx.url, "walhook-run")
        .await
        .map_err(super::reader::SnapshotError::Connect)?;
    let reader = TableReader::open(client, table, cfg.run_as.as_deref()).await?;
    // The database reads only rows the filter's simple comparisons keep.
    let pushdown = plan
        .filter
        .as_ref()
        .and_then(|(text, _)| super::pushdown::to_sql(text, reader.relation()));
    if let Some(sql) = &pushdown {
        tracing::debug!(run = plan.id, r#where = %sql, "the run's filter, in part, as the chunks' WHERE");
    }
    let mut reader = reader.with_pushdown(pushdown);
    if let Some((text, _)) = &plan.filter {
        for column in referenced_columns(text).map_err(RunError::Filter)? {
            if reader.relation().column_index(&column.column).is_none() {
                return Err(RunError::Filter(format!(
                    "`{column}`: {table} has no column {:?}",
                    column.column
                )));
            }
        }
    }
    let estimate = reader.estimate(COUNT_UP_TO_BYTES).await;
    plan.live.update(|c| {
        c.estimate = match (estimate, plan.params.limit) {
            (Some(rows), Some(limit)) => Some(rows.min(limit)),
            (rows, _) => rows,
        };
    });
    plan.report(None);
    if let Some(cap) = plan.sync_cap {
        count_within(plan, &mut reader, cap, cx).await?;
    }
    let result = match sink {
        Sink::Merged(merge) => {
            // Answers kept for sync runs; only counted for the others.
            let log = plan
                .replies
                .clone()
                .unwrap_or_else(|| Arc::new(ReplyLog::counting()));
            plan.compiled.tap(log.clone());
            let merged = merged(plan, &mut reader, &merge, &log, cx).await;
            plan.compiled.untap(&log);
            merged
        }
        Sink::Direct => direct(plan, &mut reader, cx).await,
    };
    reader.finish().await;
    result
}

/// Where the first chunk starts.
fn first_start(plan: &Plan) -> Start {
    match (&plan.resume.after, &plan.params.from) {
        (Some(after), _) => Start::After(after.clone()),
        (None, Some(from)) => Start::At(from.clone()),
        (None, None) => Start::First,
    }
}

/// The chunk's rows that match the run's filter (the part the database
/// could not evaluate).
fn matching(plan: &Plan, chunk: Chunk, warned: &mut bool) -> Vec<backfill::ChunkRow> {
    chunk
        .rows
        .into_iter()
        .filter(|row| match &plan.filter {
            None => true,
            Some((_, expr)) => match expr.matches(&row.event) {
                Ok(b) => b,
                Err(reason) => {
                    if !*warned {
                        *warned = true;
                        tracing::warn!(run = plan.id, strategy = %plan.compiled.name(), error = %reason, "run filter failed; such rows count as not matched");
                    }
                    false
                }
            },
        })
        .map(|row| backfill::ChunkRow {
            version: row.version,
            event: row.event,
        })
        .collect()
}

/// Sync runs: refuses before anything is sent when more than `cap`
/// records would be (each chunk read in its own transaction, as later).
async fn count_within(
    plan: &Plan,
    reader: &mut TableReader,
    cap: u64,
    cx: &Context<'_>,
) -> Result<(), RunError> {
    let mut start = first_start(plan);
    let mut count = 0u64;
    let mut warned = false;
    let size = plan.chunk_size;
    loop {
        let chunk = guarded(plan, cx, reader.read_chunk(&start, size)).await??;
        reader.finish_chunk(None).await?;
        let read = chunk.rows.len();
        let next = chunk.last_key.clone();
        count += matching(plan, chunk, &mut warned).len() as u64;
        if plan.params.limit.is_some_and(|l| count >= l) {
            return Ok(());
        }
        if count > cap {
            return Err(RunError::OverLimit { limit: cap });
        }
        match next {
            Some(key) if read >= size => start = Start::After(key),
            _ => return Ok(()),
        }
    }
}

/// `work`, unless the run is cancelled or walhook stops first.
async fn guarded<T>(
    plan: &Plan,
    cx: &Context<'_>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, RunError> {
    tokio::select! {
        biased;
        _ = plan.controls.cancel.cancelled() => Err(RunError::Cancelled),
        _ = cx.stopping.cancelled() => Err(RunError::Stopping),
        out = work => Ok(out),
    }
}

/// Waits out the rate limit: `read` rows so far since `since`.
async fn pace(plan: &Plan, cx: &Context<'_>, read: u64, since: Instant) -> Result<(), RunError> {
    if plan.rate == 0 {
        return Ok(());
    }
    let due = since + Duration::from_secs_f64(read as f64 / plan.rate as f64);
    guarded(plan, cx, tokio::time::sleep_until(due.into())).await
}

/// How many rows the next chunk may have (the limit counts matching rows).
fn next_size(plan: &Plan, taken: u64) -> usize {
    let left = plan
        .params
        .limit
        .map_or(u64::MAX, |l| l.saturating_sub(taken));
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .min(plan.chunk_size)
}

async fn merged(
    plan: &Plan,
    reader: &mut TableReader,
    merge: &Merge,
    log: &Arc<ReplyLog>,
    cx: &Context<'_>,
) -> Result<(), RunError> {
    let name: Arc<str> = Arc::from(plan.compiled.name());
    let table = plan
        .config()
        .table
        .clone()
        .ok_or_else(|| RunError::NoTable(name.to_string()))?;
    let mut start = first_start(plan);
    let mut segment: Option<SegmentId> = None;
    let mut first_segment = true;
    let mut chunk_no = 0u64;
    let mut in_stream: VecDeque<InStream> = VecDeque::new();
    let mut taken = plan.resume.counts.sent;
    let mut reading = true;
    let mut warned = false;
    let mut last_write = Instant::now();
    let paced_from = Instant::now();
    let mut paced_rows = 0u64;
    let mut done = Done {
        delivered: plan.resume.counts.delivered,
        failed: plan.resume.counts.failed,
        parked: plan.resume.counts.parked,
    };
    let outcome = loop {
        collect_delivered(plan, merge, log, &mut in_stream, &mut done, cx).await;
        if last_write.elapsed() >= WRITE_EVERY {
            last_write = Instant::now();
            write_counts(plan, cx.state).await;
        }
        if let Err(e) = delivery_blocked(plan, merge) {
            break Err(e);
        }
        // At most MAX_AHEAD chunks in the stream and not yet delivered: what
        // a restart reads again, and what waits in memory.
        if !reading || in_stream.len() >= MAX_AHEAD {
            if !reading && in_stream.is_empty() {
                break Ok(());
            }
            if let Err(e) = guarded(plan, cx, tokio::time::sleep(TICK)).await {
                break Err(e);
            }
            plan.report(None);
            continue;
        }
        if *plan.controls.paused.borrow() {
            if let Some(id) = segment.take() {
                merge.backfills.close(id);
            }
            if let Err(e) = wait_resumed(plan, cx).await {
                break Err(e);
            }
            continue;
        }
        let size = next_size(plan, taken);
        if size == 0 {
            reading = false;
            continue;
        }
        if let Err(e) = pace(plan, cx, paced_rows, paced_from).await {
            break Err(e);
        }
        let id = match segment {
            Some(id) => id,
            None => {
                // A re-sync after lost changes begins with a truncate record,
                // once (not again when it resumes past its first chunk): the
                // gap may hold deletes no stream will bring.
                let reset = (first_segment
                    && plan.trigger == Trigger::Resync
                    && plan.resume.after.is_none()
                    && plan.config().on_delete.is_some())
                .then(|| reader.relation().clone());
                first_segment = false;
                match open_segment(plan, reader, merge, &name, &table, reset, cx).await {
                    Ok(id) => {
                        segment = Some(id);
                        id
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        let chunk = match guarded(plan, cx, reader.read_chunk(&start, size)).await {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => break Err(e.into()),
            Err(e) => break Err(e),
        };
        let read = chunk.rows.len();
        paced_rows += read as u64;
        let last_key = chunk.last_key.clone();
        let snapshot = chunk.snapshot.clone();
        let rows = matching(plan, chunk, &mut warned);
        let matched = rows.len() as u64;
        let answer = match merge
            .backfills
            .chunk(id, chunk_no, rows, snapshot, Some(log.clone()))
        {
            Ok(answer) => answer,
            Err(_) => break Err(RunError::Stopping),
        };
        let mark = Watermark {
            segment: id,
            chunk: Some(chunk_no),
        };
        chunk_no += 1;
        if let Err(e) = reader.finish_chunk(Some(&mark.to_json())).await {
            break Err(e.into());
        }
        let outcome = match guarded(plan, cx, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => break Err(RunError::Stopping),
            Err(e) => break Err(e),
        };
        plan.live.update(|c| c.read += read as u64);
        match outcome {
            ChunkOutcome::Retry { wait_for } => {
                tracing::debug!(
                    run = plan.id,
                    waiting_for = wait_for.len(),
                    "chunk read again after transactions that were committing finished"
                );
                if let Err(e) = guarded(plan, cx, reader.wait_finished(&wait_for)).await {
                    break Err(e);
                }
            }
            ChunkOutcome::NoStrategy => break Err(RunError::Removed(name.to_string())),
            ChunkOutcome::Queued {
                slot,
                end_lsn,
                sent,
                dropped,
            } => {
                taken += matched;
                plan.live.update(|c| {
                    c.sent += sent;
                    c.superseded += dropped;
                    c.chunks += 1;
                });
                in_stream.push_back(InStream {
                    end_lsn,
                    slot,
                    last_key: last_key.clone(),
                    sent,
                    read_through: plan.live.get().read,
                });
                match last_key {
                    Some(key) if read >= size => start = Start::After(key),
                    _ => reading = false,
                }
                // After every chunk read: a restart counts what it reads again
                // from these counts and the stored progress.
                last_write = Instant::now();
                write_counts(plan, cx.state).await;
            }
        }
        plan.report(None);
    };
    if let Some(id) = segment {
        merge.backfills.close(id);
    }
    outcome
}

/// Registers a new segment and writes its start marker.
async fn open_segment(
    plan: &Plan,
    reader: &TableReader,
    merge: &Merge,
    name: &Arc<str>,
    table: &crate::config::TableName,
    reset: Option<Arc<crate::decode::Relation>>,
    cx: &Context<'_>,
) -> Result<SegmentId, RunError> {
    let (id, started) = merge
        .backfills
        .open(name.clone(), table.clone(), reader.key_columns(), reset)
        .map_err(|_| RunError::Stopping)?;
    let mark = Watermark {
        segment: id,
        chunk: None,
    };
    if let Err(e) = reader.mark(&mark.to_json()).await {
        merge.backfills.close(id);
        return Err(e.into());
    }
    // Not needed for correctness (the stream brings the start before any
    // chunk's watermark); it keeps a stalled stream from piling up chunks.
    let _ = guarded(plan, cx, started).await?;
    Ok(id)
}

/// Records of the chunks the strategy is done with.
struct Done {
    delivered: u64,
    failed: u64,
    parked: u64,
}

/// Pops the chunks the strategy is done with up to their watermark
/// (delivered; what was not delivered was dead-lettered), counts delivered
/// records (of chunks still in the stream too, batch by batch), and stores
/// how far the run got.
async fn collect_delivered(
    plan: &Plan,
    merge: &Merge,
    log: &ReplyLog,
    in_stream: &mut VecDeque<InStream>,
    done: &mut Done,
    cx: &Context<'_>,
) {
    let mut after = None;
    let mut read_through = 0;
    while let Some(front) = in_stream.front() {
        // A strategy a reload removed was forgotten only once caught up.
        let finished = merge
            .checkpoint
            .done_through(front.slot)
            .is_none_or(|done| done >= front.end_lsn);
        if !finished {
            break;
        }
        if let Some(chunk) = in_stream.pop_front() {
            let (delivered, dead) = log.ended_at(chunk.lsn());
            let delivered = delivered.min(chunk.sent);
            let dead = dead.min(chunk.sent - delivered);
            done.delivered += delivered;
            done.failed += dead;
            // Acknowledged, neither delivered nor dead-lettered: parked.
            done.parked += chunk.sent - delivered - dead;
            after = chunk.last_key.or(after);
            read_through = chunk.read_through;
        }
    }
    let going: u64 = in_stream
        .iter()
        .map(|c| log.ended_at(c.lsn()).0.min(c.sent))
        .sum();
    plan.live.update(|c| {
        c.delivered = done.delivered + going;
        c.failed = done.failed;
        c.parked = done.parked;
    });
    if let Some(after) = after {
        let live = plan.live.get();
        // What a resumed run counts on from: the chunks after this one are
        // read again.
        let mut counts = live;
        counts.sent = counts.delivered;
        counts.read = read_through;
        let stored = Stored {
            after: Some(after),
            counts,
        };
        if let Err(e) = cx
            .state
            .record_run_progress(plan.id, &stored, &serde_json::json!(live))
            .await
        {
            tracing::warn!(run = plan.id, error = %e, "cannot store the run's progress in walhook.runs; after a restart it reads again from the last stored chunk");
        }
    }
}

/// Sync runs fail when the strategy's delivery is blocked (attempts
/// exhausted): the request would otherwise wait as long as the endpoint
/// fails. Async runs wait, like the live changes beside them.
fn delivery_blocked(plan: &Plan, merge: &Merge) -> Result<(), RunError> {
    if !plan.params.sync {
        return Ok(());
    }
    let Some(entry) = merge.workers.find(plan.compiled.name()) else {
        return Ok(());
    };
    let status = entry.status.snapshot();
    if status.state == DeliveryState::Blocked && entry.pause.reason().is_none() {
        return Err(RunError::Exhausted {
            last_error: status
                .last_error
                .unwrap_or_else(|| "delivery failing".into()),
        });
    }
    Ok(())
}

/// Waits while the run is paused (its state `paused` in walhook.runs).
async fn wait_resumed(plan: &Plan, cx: &Context<'_>) -> Result<(), RunError> {
    write_counts(plan, cx.state).await;
    if let Err(e) = cx.state.set_run_state(plan.id, "paused").await {
        tracing::warn!(run = plan.id, error = %e, "cannot record the pause in walhook.runs");
    }
    tracing::info!(run = plan.id, strategy = %plan.compiled.name(), "run paused");
    let mut paused = plan.controls.paused.subscribe();
    guarded(plan, cx, paused.wait_for(|p| !*p)).await?.ok();
    if let Err(e) = cx.state.set_run_state(plan.id, "running").await {
        tracing::warn!(run = plan.id, error = %e, "cannot record the resume in walhook.runs");
    }
    tracing::info!(run = plan.id, strategy = %plan.compiled.name(), "run resumed");
    Ok(())
}

/// Writes a running run's counts; best effort, as the outcome written
/// when it ends has the final counts.
pub(crate) async fn write_counts(plan: &Plan, state: &StateStore) {
    let counts = serde_json::json!(plan.live.get());
    if let Err(e) = state.update_run_counts(plan.id, &counts).await {
        tracing::debug!(run = plan.id, error = %e, "cannot write the run's counts to walhook.runs");
    }
}

async fn direct(plan: &Plan, reader: &mut TableReader, cx: &Context<'_>) -> Result<(), RunError> {
    let mut run = RunWorker::start(plan, cx.state, reader.id_lsn().await?)?;
    let mut start = first_start(plan);
    let mut taken = plan.resume.counts.sent;
    let mut warned = false;
    let mut last_write = Instant::now();
    let paced_from = Instant::now();
    loop {
        let size = next_size(plan, taken);
        if size == 0 {
            break;
        }
        pace(plan, cx, plan.live.get().read, paced_from).await?;
        let chunk = guarded(plan, cx, reader.read_chunk(&start, size)).await??;
        reader.finish_chunk(None).await?;
        let read = chunk.rows.len();
        let last_key = chunk.last_key.clone();
        let rows = matching(plan, chunk, &mut warned);
        taken += rows.len() as u64;
        plan.live.update(|c| {
            c.read += read as u64;
            c.sent += rows.len() as u64;
            c.chunks += 1;
        });
        for (i, row) in rows.into_iter().enumerate() {
            let mut event = row.event;
            // Ids `<LSN when the run began>:<row number>`.
            event.commit_lsn = run.lsn;
            event.index = u32::try_from(run.emitted + i as u64).unwrap_or(u32::MAX);
            run.send(plan.compiled.queued_record(&event), plan, cx)
                .await?;
        }
        run.emitted = plan.live.get().sent;
        run.refresh(plan)?;
        plan.report(None);
        if last_write.elapsed() >= WRITE_EVERY {
            last_write = Instant::now();
            write_counts(plan, cx.state).await;
        }
        match last_key {
            Some(key) if read >= size => start = Start::After(key),
            _ => break,
        }
    }
    run.finish(plan, cx).await
}

/// A run's own delivery worker (direct runs).
struct RunWorker {
    tx: Option<mpsc::Sender<WorkItem>>,
    /// The first record (and the transaction end after it) was queued.
    opened: bool,
    status: StatusHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), crate::delivery::DeliveryError>>,
    /// The LSN the run's record ids start with.
    lsn: Lsn,
    emitted: u64,
}

impl RunWorker {
    fn start(plan: &Plan, state: &StateStore, lsn: Lsn) -> Result<RunWorker, RunError> {
        let catalog = &plan.catalog;
        let cfg = plan.config();
        let endpoint = catalog
            .endpoints
            .get(&cfg.endpoint)
            .cloned()
            .ok_or_else(|| RunError::NoEndpoint(cfg.endpoint.clone()))?;
        let retry = catalog
            .config
            .endpoint_of(cfg)
            .map(|e| e.retry.clone())
            .unwrap_or_default();
        // A run only needs the state store for dead letters.
        let dead_letters = retry.on_exhausted == OnExhausted::DeadLetter
            || endpoint.on_client_error() == crate::config::OnClientError::DeadLetter;
        let decorate: Arc<dyn Decorate> = match &plan.replies {
            Some(replies) => Arc::new(super::manager::Answered {
                strategy: plan.compiled.clone(),
                replies: replies.clone(),
            }),
            None => plan.compiled.clone(),
        };
        let (worker, tx) = StrategyWorker::new(WorkerOptions {
            index: 0,
            name: cfg.name.clone(),
            batch_size: cfg.batch_size,
            max_batch_bytes: cfg.max_batch_bytes,
            linger: cfg.linger,
            retry,
            endpoint,
            decorate,
            max_in_flight: 1,
            ordering: Ordering::Commit,
            // Runs never acknowledge WAL.
            checkpoint: Arc::new(Checkpoint::new(1, Lsn::ZERO, |_| {})),
            state: dead_letters.then(|| state.clone()),
            // Stored batches belong to live delivery.
            boundaries: None,
            shutdown_timeout: STOP_TIMEOUT,
            queue_capacity: plan.chunk_size.max(1000) * 2,
        })
        .map_err(RunError::Delivery)?;
        let status = worker.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        Ok(RunWorker {
            tx: Some(tx),
            opened: false,
            status,
            stop,
            task,
            lsn,
            emitted: 0,
        })
    }

    /// Queues one record, giving up when the run is cancelled or delivery
    /// is blocked.
    async fn send(
        &mut self,
        record: QueuedRecord,
        plan: &Plan,
        cx: &Context<'_>,
    ) -> Result<(), RunError> {
        let Some(tx) = &self.tx else {
            return Err(RunError::WorkerStopped);
        };
        let tx = tx.clone();
        let mut item = Some(WorkItem::Record(record));
        loop {
            let Some(next) = item.take() else {
                return Ok(());
            };
            let sent = guarded(plan, cx, tx.send_timeout(next, TICK)).await;
            match sent {
                Err(e) => return Err(self.abort(e).await),
                Ok(Ok(())) if !self.opened => {
                    // One transaction end closes the first batch boundary.
                    self.opened = true;
                    item = Some(WorkItem::TxEnd {
                        end_lsn: Lsn(u64::MAX),
                    });
                }
                Ok(Ok(())) => return Ok(()),
                Ok(Err(mpsc::error::SendTimeoutError::Timeout(back))) => {
                    item = Some(back);
                    if let Err(e) = self.refresh(plan) {
                        return Err(self.abort(e).await);
                    }
                    plan.report(None);
                }
                Ok(Err(mpsc::error::SendTimeoutError::Closed(_))) => {
                    return Err(RunError::WorkerStopped)
                }
            }
        }
    }

    /// Copies delivery counts into the run; an error when delivery is blocked.
    fn refresh(&self, plan: &Plan) -> Result<(), RunError> {
        let s = self.status.snapshot();
        plan.live.update(|c| {
            c.delivered = s.delivered_records;
            c.failed = s.dead_lettered_records;
            c.batches = s.delivered_batches + s.dead_lettered_batches;
        });
        if s.state == DeliveryState::Blocked {
            let last_error = s.last_error.unwrap_or_else(|| "delivery failing".into());
            return Err(RunError::Exhausted { last_error });
        }
        Ok(())
    }

    async fn abort(&mut self, error: RunError) -> RunError {
        self.tx = None;
        self.stop.cancel();
        let _ = (&mut self.task).await;
        error
    }

    /// Closes the queue and waits until everything queued was delivered.
    async fn finish(mut self, plan: &Plan, cx: &Context<'_>) -> Result<(), RunError> {
        self.tx = None;
        let mut last_write = Instant::now();
        loop {
            let joined = guarded(plan, cx, tokio::time::timeout(TICK, &mut self.task)).await;
            match joined {
                Err(e) => return Err(self.abort(e).await),
                Ok(Ok(joined)) => {
                    let _ = self.refresh(plan);
                    return match joined {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(RunError::Delivery(e)),
                        Err(e) => Err(RunError::WorkerTask(e)),
                    };
                }
                Ok(Err(_elapsed)) => {
                    if let Err(e) = self.refresh(plan) {
                        return Err(self.abort(e).await);
                    }
                    plan.report(None);
                    if last_write.elapsed() >= WRITE_EVERY {
                        last_write = Instant::now();
                        write_counts(plan, cx.state).await;
                    }
                }
            }
        }
    }
}
