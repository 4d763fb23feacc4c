//! The delivery stage in-process: a strategy worker sending to the test
//! receiver, fed either with hand-made records or by a real replication
//! source through a minimal router. Batching, retries, signing, the state
//! store and the delivery metrics.

mod batching;
mod metrics;
mod retry;
mod signed;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::batch::{Decorate, NoDecoration, QueuedRecord, WorkItem};
use walhook::checkpoint::Checkpoint;
use walhook::config::{
    Auth, CircuitBreaker, EndpointConfig, OnClientError, OnExhausted, Ordering, Retry, Tls,
};
use walhook::decode::SourceEvent;
use walhook::delivery::NoPrepare;
use walhook::delivery::{
    Boundaries, DeliveryError, Endpoint, PauseHandle, StatusHandle, StrategyWorker, WorkerOptions,
};
use walhook::lsn::Lsn;
use walhook::state::StateStore;

use crate::support::source::{items_db, options, spawn, Running};
use crate::support::{Db, WAIT};

/// An endpoint configuration for `url` with this retry policy.
pub(crate) fn endpoint_config(url: &str, retry: Retry) -> EndpointConfig {
    EndpointConfig {
        url: url.to_string(),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        headers: BTreeMap::new(),
        query: BTreeMap::new(),
        auth: Auth::None,
        signing: None,
        tls: Tls::default(),
        retry,
        on_client_error: OnClientError::Retry,
        rate_limit: None,
        circuit_breaker: CircuitBreaker { failures: 0 },
    }
}

/// Short backoffs for tests.
pub(crate) fn fast_retry(max_attempts: u32, on_exhausted: OnExhausted) -> Retry {
    Retry {
        max_attempts,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        on_exhausted,
        park_after: Default::default(),
    }
}

/// A hand-made record: `{"id":"<lsn>:<index>","n":<n>}`.
pub(crate) fn rec(lsn: u64, index: u32) -> QueuedRecord {
    let commit_lsn = Lsn(lsn);
    QueuedRecord::new(
        commit_lsn,
        index,
        1_700_000_000_000_000,
        format!("{{\"id\":\"{commit_lsn}:{index}\",\"n\":{index}}}").into_bytes(),
    )
}

/// What a test worker looks like.
pub(crate) struct Setup {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) retry: Retry,
    pub(crate) decorate: Arc<dyn Decorate>,
    pub(crate) state: Option<StateStore>,
    pub(crate) start: Lsn,
    /// The endpoint's request timeout.
    pub(crate) timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) ordering: Ordering,
    /// The endpoint's `on_client_error`, `rate_limit` and `circuit_breaker`.
    pub(crate) endpoint: fn(&mut EndpointConfig),
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            name: "orders".into(),
            batch_size: 100,
            max_batch_bytes: 1 << 20,
            linger: Duration::from_millis(20),
            retry: fast_retry(0, OnExhausted::Block),
            decorate: Arc::new(NoDecoration),
            state: None,
            start: Lsn(0),
            timeout: Duration::from_secs(10),
            max_in_flight: 1,
            ordering: Ordering::Commit,
            endpoint: |_| {},
        }
    }
}

/// A running worker.
pub(crate) struct Worker {
    pub(crate) queue: mpsc::Sender<WorkItem>,
    pub(crate) checkpoint: Arc<Checkpoint>,
    pub(crate) status: StatusHandle,
    pub(crate) pause: PauseHandle,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), DeliveryError>>,
}

impl Worker {
    /// Queues one transaction's records and its end (as the router does).
    pub(crate) async fn send_tx(&self, records: Vec<QueuedRecord>, end_lsn: Lsn) {
        self.checkpoint.queued(0, end_lsn);
        for r in records {
            self.queue.send(WorkItem::Record(r)).await.expect("queue");
        }
        self.queue
            .send(WorkItem::TxEnd { end_lsn })
            .await
            .expect("queue");
        self.checkpoint.seen(end_lsn);
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker did not stop")
            .expect("worker panicked")
            .expect("worker failed");
    }
}

impl Setup {
    /// Starts a worker sending to `url`; `on_ack` sees each acked LSN.
    pub(crate) fn start_with(
        self,
        url: &str,
        on_ack: impl Fn(Lsn) + Send + Sync + 'static,
    ) -> Worker {
        let mut config = endpoint_config(url, self.retry.clone());
        config.timeout = self.timeout;
        (self.endpoint)(&mut config);
        let endpoint = Endpoint::new("test", &config, Arc::new(NoPrepare)).expect("endpoint");
        // With a state store, batch ids are kept across restarts: the stream
        // "resumes" at `start`, and what the checkpoint acks stands in for
        // what Postgres confirmed (the real process reads the slot).
        let (confirmed_tx, confirmed) = watch::channel(self.start);
        let boundaries = self.state.is_some().then(|| Boundaries {
            confirmed,
            resumed_from: watch::channel(Some(self.start)).1,
        });
        let checkpoint = Arc::new(Checkpoint::new(1, self.start, move |lsn| {
            confirmed_tx.send_replace(lsn);
            on_ack(lsn);
        }));
        let (worker, queue) = StrategyWorker::new(WorkerOptions {
            index: 0,
            name: self.name,
            batch_size: self.batch_size,
            max_batch_bytes: self.max_batch_bytes,
            linger: self.linger,
            max_in_flight: self.max_in_flight,
            ordering: self.ordering,
            retry: self.retry,
            endpoint: Arc::new(endpoint),
            decorate: self.decorate,
            checkpoint: checkpoint.clone(),
            state: self.state,
            boundaries,
            shutdown_timeout: Duration::from_secs(5),
            queue_capacity: 1000,
        })
        .expect("worker");
        let status = worker.status();
        let pause = worker.pause_handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Worker {
            queue,
            checkpoint,
            status,
            pause,
            shutdown,
            task,
        }
    }

    pub(crate) fn start(self, url: &str) -> Worker {
        self.start_with(url, |_| {})
    }
}

/// A real source on a fresh database (table `items` published as `pub`,
/// slot `slot`), routed into a worker whose checkpoint acks the source.
pub(crate) struct Pipeline {
    pub(crate) db: Db,
    pub(crate) slot: String,
    pub(crate) worker: Worker,
    source_shutdown: CancellationToken,
    source_task: JoinHandle<Result<(), walhook::source::SourceError>>,
    router: JoinHandle<()>,
}

impl Pipeline {
    pub(crate) async fn start(prefix: &str, setup: Setup, url: &str) -> Pipeline {
        let db = items_db(prefix).await;
        let slot = format!("{prefix}_slot");
        let Running {
            events,
            acks,
            status,
            shutdown,
            task,
        } = spawn(options(&db.url(), &slot));
        let mut st = status.clone();
        tokio::time::timeout(
            WAIT,
            st.wait_for(|s| s.state == walhook::source::SourceState::Streaming),
        )
        .await
        .expect("source streaming")
        .expect("source status");
        let start = db.confirmed_flush(&slot).await.expect("slot exists");
        let worker = Setup { start, ..setup }.start_with(url, move |lsn| acks.ack(lsn));
        let router = tokio::spawn(route(
            events,
            worker.queue.clone(),
            worker.checkpoint.clone(),
        ));
        Pipeline {
            db,
            slot,
            worker,
            source_shutdown: shutdown,
            source_task: task,
            router,
        }
    }

    pub(crate) async fn stop(self) {
        self.source_shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.source_task).await;
        let _ = self.router.await;
        self.worker.stop().await;
    }
}

/// The router's job in miniature: every record to the one strategy, and
/// the checkpoint told about each transaction.
async fn route(
    mut events: mpsc::Receiver<SourceEvent>,
    queue: mpsc::Sender<WorkItem>,
    checkpoint: Arc<Checkpoint>,
) {
    let mut had_records = false;
    while let Some(event) = events.recv().await {
        match event {
            SourceEvent::Record(r) => {
                let mut json = Vec::new();
                r.write_json(&mut json);
                let item = WorkItem::Record(QueuedRecord::new(
                    r.commit_lsn,
                    r.index,
                    r.commit_time,
                    json,
                ));
                if queue.send(item).await.is_err() {
                    return;
                }
                had_records = true;
            }
            SourceEvent::Commit { end_lsn, .. } => {
                if had_records {
                    checkpoint.queued(0, end_lsn);
                    if queue.send(WorkItem::TxEnd { end_lsn }).await.is_err() {
                        return;
                    }
                }
                checkpoint.seen(end_lsn);
                had_records = false;
            }
            SourceEvent::Begin { .. } | SourceEvent::Message { .. } => {}
        }
    }
}
