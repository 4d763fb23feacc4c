//! The router: every committed change goes to the strategies of its table,
//! through their filters, onto their bounded queues.
//!
//! Awaiting a full queue is the backpressure: the router stops, the source
//! stops reading the socket. Memory is the other bound: each queued record
//! holds its bytes against the process's budget until its batch is done,
//! and the decoded change's bytes, counted by the source, are given back
//! once it is routed (see [`crate::budget`]). A transaction's end is queued only to the
//! strategies that got records of it; the checkpoint learns about every
//! transaction end, so filtered-out transactions are acknowledged at once.
//!
//! Logical messages go to the strategies whose `messages` prefix they start
//! with: a transactional one is a record of its transaction (acknowledged
//! with its commit), a non-transactional one is a transaction of its own
//! ending just after its LSN (acknowledged once delivered).
//!
//! A configuration reload swaps the routes between two transactions
//! ([`Reroute`]): no transaction is split between two configurations, and
//! the LSN it answers with is the boundary (transactions ending at or
//! before it went by the old routes, later ones by the new).

use std::collections::HashMap;
use std::sync::Arc;

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::compiled::CompiledStrategy;
use crate::backfill::{Backfills, ChunkOutcome, Emission, PREFIX};
use crate::batch::payload::MessageRecord;
use crate::batch::{QueuedRecord, WorkItem};
use crate::budget::{record_footprint, Budget};
use crate::checkpoint::Checkpoint;
use crate::decode::{Op, RecordEvent, SourceEvent};
use crate::lsn::Lsn;
use crate::telemetry::names;

/// Bytes counted per queued record besides its JSON (the record, its queue
/// slot, its place in a batch).
const RECORD_OVERHEAD: usize = 128;

/// Unused bytes a queued record's buffer may keep.
const SLACK: usize = 4096;

/// One strategy and the sending half of its queue. Its position in the
/// `Vec` given to [`Router::new`] is its index in the [`Checkpoint`].
#[derive(Debug, Clone)]
pub struct Route {
    pub strategy: Arc<CompiledStrategy>,
    pub tx: mpsc::Sender<WorkItem>,
}

/// New routes for the router, applied at the next transaction boundary
/// (see the module doc): each route with its index in the checkpoint.
/// Dropping a route closes its queue once its last items are queued, so its
/// worker delivers them and ends.
#[derive(Debug)]
pub(crate) struct Reroute {
    pub(crate) routes: Vec<(usize, Route)>,
    /// Answered with the boundary: the end LSN of the last transaction
    /// routed the old way. The routes are swapped only if the answer is
    /// taken: a reloader that stopped waiting (closed its receiver) gets
    /// nothing swapped.
    pub(crate) applied: oneshot::Sender<Lsn>,
}

/// Why routing stopped.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A strategy's worker is gone (it failed or shut down): fatal.
    #[error("the queue of strategy {strategy} is closed (its worker stopped)")]
    QueueClosed { strategy: String },
}

/// What the router knows about a table (by relation oid).
struct TableRoutes {
    schema: String,
    name: String,
    /// Indices into `routes` of the strategies following this table.
    routes: Vec<usize>,
    /// `walhook_events_total{table, op}` for insert, update, delete, truncate.
    events: [Counter; 4],
}

/// Routes [`SourceEvent`]s to strategy queues (see the module doc).
pub struct Router {
    routes: Vec<Route>,
    /// `routes[i]`'s index in the checkpoint.
    slots: Vec<usize>,
    /// The end LSN of the last transaction routed.
    routed_end: Lsn,
    reroutes: Option<mpsc::Receiver<Reroute>>,
    checkpoint: Arc<Checkpoint>,
    tables: HashMap<u32, TableRoutes>,
    /// Strategies that got records of the current transaction.
    touched: Vec<usize>,
    /// The open transaction's xid, commit LSN and commit time (for messages).
    txn: Option<(u32, Lsn, i64)>,
    budget: Option<Budget>,
    /// Runs' backfill windows (see [`crate::backfill`]).
    backfills: Option<Backfills>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// `routes[i]` is strategy `i` of `checkpoint`.
    pub fn new(routes: Vec<Route>, checkpoint: Arc<Checkpoint>) -> Router {
        let slots = (0..routes.len()).collect();
        Router {
            routes,
            slots,
            routed_end: Lsn::ZERO,
            reroutes: None,
            checkpoint,
            tables: HashMap::new(),
            touched: Vec::new(),
            txn: None,
            budget: None,
            backfills: None,
        }
    }

    /// Merges runs' chunks into the strategies' streams at their watermarks.
    pub(crate) fn with_backfills(mut self, backfills: Backfills) -> Router {
        self.backfills = Some(backfills);
        self
    }

    /// Counts queued records against `budget`, and gives back what the
    /// source counted for each change once it is routed.
    pub(crate) fn with_budget(mut self, budget: Budget) -> Router {
        self.budget = Some(budget);
        self
    }

    /// Takes new routes from `reroutes` between transactions.
    pub(crate) fn with_reroutes(mut self, reroutes: mpsc::Receiver<Reroute>) -> Router {
        self.reroutes = Some(reroutes);
        self
    }

    /// Route `i`'s index in the checkpoint.
    fn slot(&self, i: usize) -> usize {
        self.slots.get(i).copied().unwrap_or(i)
    }

    /// Swaps the routes (between transactions) and answers with the
    /// boundary, unless the reloader stopped waiting.
    fn reroute(&mut self, reroute: Reroute) {
        let boundary = self.routed_end.max(self.checkpoint.seen_end());
        if reroute.applied.send(boundary).is_err() {
            return;
        }
        (self.slots, self.routes) = reroute.routes.into_iter().unzip();
        self.tables.clear();
        self.touched.clear();
    }

    /// Routes one event; returns when every matched record is queued
    /// (waiting while a queue is full).
    pub(crate) async fn route(&mut self, event: SourceEvent) -> Result<(), RouteError> {
        match event {
            SourceEvent::Record(record) => {
                if let (Some(backfills), Some((xid, _, _))) = (&mut self.backfills, self.txn) {
                    backfills.record(&record, xid);
                }
                let routed = self.record(&record).await;
                if let Some(budget) = &self.budget {
                    budget.release(record_footprint(&record));
                }
                routed
            }
            SourceEvent::Commit { end_lsn, .. } => {
                if let (Some(backfills), Some((xid, _, _))) = (&mut self.backfills, self.txn) {
                    backfills.committed(xid);
                }
                self.txn = None;
                for i in self.touched.drain(..) {
                    let Some(route) = self.routes.get(i) else {
                        continue;
                    };
                    let slot = self.slots.get(i).copied().unwrap_or(i);
                    self.checkpoint.queued(slot, end_lsn);
                    route
                        .tx
                        .send(WorkItem::TxEnd { end_lsn })
                        .await
                        .map_err(|_| RouteError::QueueClosed {
                            strategy: route.strategy.name().to_string(),
                        })?;
                }
                self.checkpoint.seen(end_lsn);
                self.routed_end = end_lsn;
                Ok(())
            }
            SourceEvent::Begin {
                xid,
                commit_lsn,
                commit_time,
            } => {
                self.txn = Some((xid, commit_lsn, commit_time));
                Ok(())
            }
            SourceEvent::Message {
                transactional,
                lsn,
                index,
                prefix,
                content,
            } => {
                if prefix == PREFIX {
                    // Transactional ones only make the server flush the WAL.
                    let emission = self
                        .backfills
                        .as_mut()
                        .filter(|_| !transactional)
                        .and_then(|b| b.watermark(lsn, &content));
                    if let Some(emission) = emission {
                        self.emit(emission).await?;
                    }
                    return Ok(());
                }
                let txn = self.txn.filter(|_| transactional);
                let message = MessageRecord {
                    commit_lsn: txn.map_or(lsn, |(_, commit_lsn, _)| commit_lsn),
                    index,
                    txn: txn.map(|(xid, _, commit_time)| (xid, commit_time)),
                    message_lsn: lsn,
                    prefix: &prefix,
                    content: &content,
                };
                self.message(&message).await
            }
        }
    }

    /// Queues a run's chunk to its strategy at the chunk's watermark, as a
    /// transaction of its own, and answers the run.
    async fn emit(&mut self, emission: Emission) -> Result<(), RouteError> {
        let Emission {
            strategy,
            events,
            dropped,
            end_lsn,
            reply,
        } = emission;
        let Some(i) = self
            .routes
            .iter()
            .position(|r| r.strategy.name() == &*strategy)
        else {
            if let Some(reply) = reply {
                let _ = reply.send(ChunkOutcome::NoStrategy);
            }
            return Ok(());
        };
        if let Some(route) = self.routes.get(i) {
            for event in &events {
                let queued = route.strategy.queued_record(event);
                Self::send(route, self.budget.as_ref(), &mut self.touched, i, queued).await?;
            }
        }
        let slot = self.slot(i);
        self.touched.retain(|&t| t != i);
        if !events.is_empty() {
            self.checkpoint.queued(slot, end_lsn);
            self.send_end(i, end_lsn).await?;
        }
        self.checkpoint.seen(end_lsn);
        if let Some(reply) = reply {
            let _ = reply.send(ChunkOutcome::Queued {
                slot,
                end_lsn,
                sent: events.len() as u64,
                dropped,
            });
        }
        Ok(())
    }

    /// Queues a message to the strategies following its prefix. Outside a
    /// transaction it is acknowledged on its own, at the byte after it.
    async fn message(&mut self, message: &MessageRecord<'_>) -> Result<(), RouteError> {
        let standalone = message.txn.is_none();
        let end_lsn = Lsn(message.message_lsn.0.saturating_add(1));
        let mut matched = false;
        for i in 0..self.routes.len() {
            let Some(route) = self.routes.get(i) else {
                continue;
            };
            if !route.strategy.follows_message(message.prefix)
                || !route.strategy.accepts_message(message)
            {
                continue;
            }
            let queued = route.strategy.queued_message(message);
            Self::send(route, self.budget.as_ref(), &mut self.touched, i, queued).await?;
            matched = true;
            if standalone {
                self.touched.retain(|&t| t != i);
                self.checkpoint.queued(self.slot(i), end_lsn);
                self.send_end(i, end_lsn).await?;
            }
        }
        if standalone && matched {
            self.checkpoint.seen(end_lsn);
        }
        Ok(())
    }

    /// Queues one record to route `i`, charging the budget, and notes that
    /// `i` got a record of the current transaction.
    async fn send(
        route: &Route,
        budget: Option<&Budget>,
        touched: &mut Vec<usize>,
        i: usize,
        mut queued: QueuedRecord,
    ) -> Result<(), RouteError> {
        if let Some(budget) = budget {
            // A large record's buffer may be twice its length: held for
            // a while, it would count twice what the source waited for.
            if queued.json.capacity() - queued.json.len() > SLACK {
                queued.json.shrink_to_fit();
            }
            queued.charge = budget.charge(queued.json.capacity() + RECORD_OVERHEAD);
        }
        route
            .tx
            .send(WorkItem::Record(queued))
            .await
            .map_err(|_| RouteError::QueueClosed {
                strategy: route.strategy.name().to_string(),
            })?;
        if !touched.contains(&i) {
            touched.push(i);
        }
        Ok(())
    }

    async fn send_end(&self, i: usize, end_lsn: Lsn) -> Result<(), RouteError> {
        let Some(route) = self.routes.get(i) else {
            return Ok(());
        };
        route
            .tx
            .send(WorkItem::TxEnd { end_lsn })
            .await
            .map_err(|_| RouteError::QueueClosed {
                strategy: route.strategy.name().to_string(),
            })
    }

    async fn record(&mut self, record: &RecordEvent) -> Result<(), RouteError> {
        let rel = &*record.relation;
        let known = self
            .tables
            .get(&rel.oid)
            .is_some_and(|t| t.schema == rel.schema && t.name == rel.name);
        if !known {
            let routes = self
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.strategy.follows(record))
                .map(|(i, _)| i)
                .collect();
            let table = format!("{}.{}", rel.schema, rel.name);
            let events = ["insert", "update", "delete", "truncate"].map(
                |op| metrics::counter!(names::EVENTS_TOTAL, "table" => table.clone(), "op" => op),
            );
            self.tables.insert(
                rel.oid,
                TableRoutes {
                    schema: rel.schema.clone(),
                    name: rel.name.clone(),
                    routes,
                    events,
                },
            );
        }
        let Some(table) = self.tables.get(&rel.oid) else {
            return Ok(());
        };
        let slot = match record.op {
            Op::Insert => Some(0),
            Op::Update => Some(1),
            Op::Delete => Some(2),
            Op::Truncate => Some(3),
            Op::Read => None,
        };
        if let Some(counter) = slot.and_then(|s| table.events.get(s)) {
            counter.increment(1);
        }
        for &i in &table.routes {
            let Some(route) = self.routes.get(i) else {
                continue;
            };
            if !route.strategy.accepts(record) {
                continue;
            }
            let queued = route.strategy.queued_record(record);
            Self::send(route, self.budget.as_ref(), &mut self.touched, i, queued).await?;
        }
        Ok(())
    }

    /// Routes events from `rx` until it closes or `shutdown` fires (also
    /// while waiting on a full queue). A transaction cut short by shutdown is
    /// not acknowledged, so it is read again after a restart.
    ///
    /// Returning drops the router, which closes the strategies' queues. The
    /// caller keeps `rx`: a source that found its channel closed would stop
    /// with an error, so the receiver stays open until the source stopped.
    pub async fn run(
        mut self,
        rx: &mut mpsc::Receiver<SourceEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), RouteError> {
        let mut reroutes = self.reroutes.take();
        loop {
            let between = self.txn.is_none();
            let event = tokio::select! {
                biased;
                // 1. shutdown.
                _ = shutdown.cancelled() => return Ok(()),
                // 2. new routes, only between transactions.
                Some(reroute) = next_reroute(&mut reroutes), if between => {
                    self.reroute(reroute);
                    continue;
                }
                // 3. the next event.
                event = rx.recv() => match event {
                    Some(event) => event,
                    None => return Ok(()),
                },
            };
            // Routed to completion; only shutdown interrupts a full queue.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                result = self.route(event) => result?,
            }
        }
    }
}

async fn next_reroute(reroutes: &mut Option<mpsc::Receiver<Reroute>>) -> Option<Reroute> {
    match reroutes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
