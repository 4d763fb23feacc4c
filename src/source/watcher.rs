//! The slot watcher: ONE long-lived replication-mode connection that reads
//! the slot every [`READ_INTERVAL`] and publishes a [`SlotWatch`] (see
//! [`crate::pg::slot`] for why one watcher, and why on a replication
//! connection). It reconnects with backoff; between two reads it runs the
//! catalog queries callers hand it through [`SlotWatchHandle::query`], so
//! periodic catalog reads of other parts cost no connection of their own.
//!
//! ```text
//!   connect (replication=database) → IDENTIFY_SYSTEM
//!     └─ loop: select! { stop, a caller's query, every 5 s: read the slot }
//!          connection lost → publish the error, back off (100 ms → 5 s), reconnect
//! ```

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::conn::ReplConn;
use super::error::SourceError;
use super::protocol::SystemInfo;
use super::Backoff;
use crate::lsn::Lsn;
use crate::pg::conninfo::{self, ConnInfo};
use crate::pg::slot::{self, ServerIdentity, SlotWatch};
use crate::pg::TextRows;

/// How often the slot is read.
pub(crate) const READ_INTERVAL: Duration = Duration::from_secs(5);

/// The application_name the watcher's connection shows (one in the URL wins).
const APPLICATION_NAME: &str = "walhook-slot-watch";

/// Callers' queries waiting for the connection.
const QUERY_QUEUE: usize = 16;

/// Why a catalog query on the watcher's connection failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogQueryError {
    /// The watcher is reconnecting; try again at the next tick.
    #[error("the slot watcher's connection is not up: {0}")]
    NotConnected(String),
    /// The watcher has stopped (walhook is shutting down).
    #[error("the slot watcher has stopped")]
    Stopped,
    /// The server refused the statement (its message, detail and hint).
    #[error(transparent)]
    Failed(Box<SourceError>),
}

struct Query {
    sql: String,
    reply: oneshot::Sender<Result<TextRows, CatalogQueryError>>,
}

/// The running watcher; [`SlotWatcher::handle`] gives out what others read.
#[derive(Debug)]
pub struct SlotWatcher {
    handle: SlotWatchHandle,
    task: JoinHandle<()>,
}

/// What the watcher publishes, and its connection for other catalog reads.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct SlotWatchHandle {
    watch: watch::Receiver<SlotWatch>,
    confirmed: watch::Receiver<Lsn>,
    queries: mpsc::Sender<Query>,
}

impl SlotWatcher {
    /// Starts watching `slot` through `url` (source.url) until `stop`.
    pub(crate) fn spawn(
        url: &str,
        slot: &str,
        stop: CancellationToken,
    ) -> Result<SlotWatcher, SourceError> {
        let info = conninfo::parse(url)?;
        let application_name = info
            .application_name
            .clone()
            .unwrap_or_else(|| APPLICATION_NAME.to_string());
        let (tx, watch) = watch::channel(SlotWatch::default());
        let (confirmed_tx, confirmed) = watch::channel(Lsn::ZERO);
        let (queries_tx, queries) = mpsc::channel(QUERY_QUEUE);
        let task = tokio::spawn(
            Task {
                info,
                application_name,
                slot: slot.to_string(),
                tx,
                confirmed: confirmed_tx,
                queries,
                stop,
            }
            .run(),
        );
        Ok(SlotWatcher {
            handle: SlotWatchHandle {
                watch,
                confirmed,
                queries: queries_tx,
            },
            task,
        })
    }

    /// What the watcher publishes.
    pub(crate) fn handle(&self) -> SlotWatchHandle {
        self.handle.clone()
    }

    /// Waits for the watcher to end (after its stop token).
    pub(crate) async fn join(self) {
        let _ = self.task.await;
    }
}

impl SlotWatchHandle {
    /// The latest read, and each one after.
    pub(crate) fn subscribe(&self) -> watch::Receiver<SlotWatch> {
        self.watch.clone()
    }

    /// The slot's `confirmed_flush_lsn` as Postgres reports it: starts at
    /// [`Lsn::ZERO`] (nothing known) and only moves forward.
    pub(crate) fn confirmed(&self) -> watch::Receiver<Lsn> {
        self.confirmed.clone()
    }

    /// Runs one statement on the watcher's connection, between two slot
    /// reads (simple query protocol: no parameters, every value text).
    pub(crate) async fn query(
        &self,
        sql: impl Into<String>,
    ) -> Result<TextRows, CatalogQueryError> {
        let (reply, answer) = oneshot::channel();
        let query = Query {
            sql: sql.into(),
            reply,
        };
        self.queries
            .send(query)
            .await
            .map_err(|_| CatalogQueryError::Stopped)?;
        answer.await.unwrap_or(Err(CatalogQueryError::Stopped))
    }
}

struct Task {
    info: ConnInfo,
    application_name: String,
    slot: String,
    tx: watch::Sender<SlotWatch>,
    confirmed: watch::Sender<Lsn>,
    queries: mpsc::Receiver<Query>,
    stop: CancellationToken,
}

/// Why a session ended.
enum Ended {
    Stopped,
    Lost(SourceError),
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let opened = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                opened = open(&self.info, &self.application_name) => opened,
            };
            let error = match opened {
                Ok((mut conn, server)) => {
                    backoff.reset();
                    match self.session(&mut conn, server).await {
                        Ended::Stopped => {
                            conn.close().await;
                            return;
                        }
                        Ended::Lost(error) => error,
                    }
                }
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            tracing::debug!(slot = %self.slot, error = %error, retry_in_ms = delay.as_millis() as u64, "slot watcher: connection failed; reconnecting");
            let text = error.to_string();
            self.tx.send_modify(|w| w.error = Some(text.clone()));
            if !self.wait(delay, &text).await {
                return;
            }
        }
    }

    /// Waits `delay`, answering queries that the connection is down;
    /// false when stopped.
    async fn wait(&mut self, delay: Duration, error: &str) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return false,
                _ = sleep_until(until) => return true,
                Some(query) = self.queries.recv() => {
                    let _ = query.reply.send(Err(CatalogQueryError::NotConnected(error.to_string())));
                }
            }
        }
    }

    async fn session(&mut self, conn: &mut ReplConn, server: ServerIdentity) -> Ended {
        let mut tick = tokio::time::interval(READ_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // 1. Shutdown.
                _ = self.stop.cancelled() => return Ended::Stopped,
                // 2. A caller's catalog query.
                Some(query) = self.queries.recv() => {
                    match conn.simple_query("a catalog query", &query.sql).await {
                        Ok(rows) => {
                            let _ = query.reply.send(Ok(rows));
                        }
                        Err(error) if keeps_connection(&error) => {
                            let _ = query.reply.send(Err(CatalogQueryError::Failed(Box::new(error))));
                        }
                        Err(error) => {
                            let _ = query.reply.send(Err(CatalogQueryError::NotConnected(error.to_string())));
                            return Ended::Lost(error);
                        }
                    }
                }
                // 3. The periodic read.
                _ = tick.tick() => {
                    if let Err(error) = self.read(conn, &server).await {
                        return Ended::Lost(error);
                    }
                }
            }
        }
    }

    /// Reads and publishes the slot. A server error that leaves the
    /// connection usable is published and the session goes on.
    async fn read(
        &mut self,
        conn: &mut ReplConn,
        server: &ServerIdentity,
    ) -> Result<(), SourceError> {
        let rows = match conn
            .simple_query("reading the replication slot", &slot::watch_sql(&self.slot))
            .await
        {
            Ok(rows) => rows,
            Err(error) if keeps_connection(&error) => {
                let text = error.to_string();
                self.tx.send_modify(|w| w.error = Some(text));
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        match slot::parse_watch(&rows, server.clone(), SystemTime::now()) {
            Ok(read) => {
                if let Some(lsn) = read.slot.as_ref().and_then(|s| s.confirmed_flush_lsn) {
                    self.confirmed.send_if_modified(|current| {
                        let moved = lsn > *current;
                        if moved {
                            *current = lsn;
                        }
                        moved
                    });
                }
                self.tx.send_modify(|w| {
                    w.read = Some(read);
                    w.error = None;
                });
            }
            Err(error) => {
                let text = error.to_string();
                self.tx.send_modify(|w| w.error = Some(text));
            }
        }
        Ok(())
    }
}

/// A statement the server refused at ERROR level: the session stays usable.
fn keeps_connection(error: &SourceError) -> bool {
    matches!(error, SourceError::Server { error, .. } if error.severity == "ERROR")
}

/// Connects and identifies the cluster.
async fn open(
    info: &ConnInfo,
    application_name: &str,
) -> Result<(ReplConn, ServerIdentity), SourceError> {
    let mut conn = ReplConn::connect(info, application_name).await?;
    let rows = conn
        .simple_query("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM")
        .await?;
    let system = SystemInfo::from_rows(&rows).map_err(|e| SourceError::Protocol {
        target: conn.target().to_string(),
        reason: e.0,
    })?;
    Ok((
        conn,
        ServerIdentity {
            system_id: system.system_id,
            timeline: system.timeline,
        },
    ))
}
