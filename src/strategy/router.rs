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

use std::collections::HashMap;
use std::sync::Arc;

use metrics::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::compiled::CompiledStrategy;
use crate::batch::WorkItem;
use crate::budget::{record_footprint, Budget};
use crate::checkpoint::Checkpoint;
use crate::decode::{Op, RecordEvent, SourceEvent};
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
    checkpoint: Arc<Checkpoint>,
    tables: HashMap<u32, TableRoutes>,
    /// Strategies that got records of the current transaction.
    touched: Vec<usize>,
    budget: Option<Budget>,
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
        Router {
            routes,
            checkpoint,
            tables: HashMap::new(),
            touched: Vec::new(),
            budget: None,
        }
    }

    /// Counts queued records against `budget`, and gives back what the
    /// source counted for each change once it is routed.
    pub(crate) fn with_budget(mut self, budget: Budget) -> Router {
        self.budget = Some(budget);
        self
    }

    /// Routes one event; returns when every matched record is queued
    /// (waiting while a queue is full).
    pub(crate) async fn route(&mut self, event: SourceEvent) -> Result<(), RouteError> {
        match event {
            SourceEvent::Record(record) => {
                let routed = self.record(&record).await;
                if let Some(budget) = &self.budget {
                    budget.release(record_footprint(&record));
                }
                routed
            }
            SourceEvent::Commit { end_lsn, .. } => {
                for i in self.touched.drain(..) {
                    let Some(route) = self.routes.get(i) else {
                        continue;
                    };
                    self.checkpoint.queued(i, end_lsn);
                    route
                        .tx
                        .send(WorkItem::TxEnd { end_lsn })
                        .await
                        .map_err(|_| RouteError::QueueClosed {
                            strategy: route.strategy.name().to_string(),
                        })?;
                }
                self.checkpoint.seen(end_lsn);
                Ok(())
            }
            SourceEvent::Begin { .. } | SourceEvent::Message { .. } => Ok(()),
        }
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
            let mut queued = route.strategy.queued_record(record);
            if let Some(budget) = &self.budget {
                // A large record's buffer may be twice its length: held for
                // a while, it would count twice what the source waited for.
                if queued.json.capacity() - queued.json.len() > SLACK {
                    queued.json.shrink_to_fit();
                }
                queued.charge = budget.charge(queued.json.capacity() + RECORD_OVERHEAD);
            }
            let item = WorkItem::Record(queued);
            route
                .tx
                .send(item)
                .await
                .map_err(|_| RouteError::QueueClosed {
                    strategy: route.strategy.name().to_string(),
                })?;
            if !self.touched.contains(&i) {
                self.touched.push(i);
            }
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
        loop {
            tokio::select! {
                biased;
                // 1. shutdown, even while waiting on a full queue.
                _ = shutdown.cancelled() => return Ok(()),
                // 2. the next event, routed to completion.
                result = async {
                    match rx.recv().await {
                        Some(event) => self.route(event).await.map(|()| true),
                        None => Ok(false),
                    }
                } => {
                    if !result? {
                        return Ok(());
                    }
                }
            }
        }
    }
}
