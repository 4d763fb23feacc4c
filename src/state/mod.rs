//! walhook's state in the source database (schema `walhook`,
//! `sql/state.sql`): dead letters, the boundaries of batches sent but not yet
//! acknowledged, and runs. Delivery, replay, runs and the admin API all go
//! through [`StateStore`], so each table has one set of queries.
//!
//! A store holds one ordinary SQL connection ([`crate::pg::connect`], same
//! sslmode semantics as the replication connection), opened on first use and
//! reopened on the next call after it drops, so a database restart needs no
//! walhook restart. It is closed after [`IDLE_CLOSE`] unused: a smart
//! shutdown (`pg_ctl stop -m smart`) waits for every session but walsenders
//! to end, and an idle walhook must not hold it up. Each store is its own
//! connection: the application name tells them apart in `pg_stat_activity`.

mod batches;
mod dead_letters;
mod runs;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::config::Secret;
use crate::pg::{self, ConnectError};

pub use batches::StoredBatch;
pub use dead_letters::{DeadLetter, DeadLetterInfo, NewDeadLetter};

/// A connection unused this long is closed (and reopened on the next use).
const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// The state schema, applied by [`StateStore::ensure_schema`] and printed
/// by `walhook setup --print-sql`.
pub(crate) const SCHEMA_SQL: &str = include_str!("../../sql/state.sql");

/// Why the state schema could not be read or written. Messages never hold
/// the password.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Connecting failed: a bad connection string or TLS setting, or the
    /// server could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A statement failed (the server's message, detail and hint).
    #[error("{what} failed: {}", pg::describe(.source))]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A row did not hold what the query promised.
    #[error("{what}: malformed value: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StateError {
    /// True when the database lacks the state schema (run `walhook setup`).
    pub(crate) fn is_missing_schema(&self) -> bool {
        match self {
            StateError::Query { source, .. } => source.code().is_some_and(|c| {
                *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME
            }),
            StateError::Connect(_) | StateError::Malformed { .. } => false,
        }
    }

    /// Wraps a failed statement: `map_err(StateError::query("…"))`.
    fn query(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StateError {
        move |source| StateError::Query { what, source }
    }
}

/// Handle to the state schema; cheap to clone and share (clones share the
/// connection).
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: Secret,
    application_name: &'static str,
    client: Mutex<Option<Open>>,
}

/// The open connection and when it was last handed out.
struct Open {
    client: Arc<Client>,
    used: Instant,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("application_name", &self.inner.application_name)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Connects with the source's connection string; the connection shows
    /// `application_name` (unless the URL sets one).
    pub async fn connect(
        url: &str,
        application_name: &'static str,
    ) -> Result<StateStore, StateError> {
        let store = Self::lazy(url, application_name)?;
        store.client().await?;
        Ok(store)
    }

    /// Like [`StateStore::connect`], but connects on first use (the URL is
    /// checked now).
    fn lazy(url: &str, application_name: &'static str) -> Result<StateStore, StateError> {
        pg::conninfo::parse(url).map_err(ConnectError::from)?;
        Ok(StateStore {
            inner: Arc::new(Inner {
                url: Secret::new(url),
                application_name,
                client: Mutex::new(None),
            }),
        })
    }

    /// The open connection, reopened when it has closed.
    async fn client(&self) -> Result<Arc<Client>, StateError> {
        // A tokio mutex: callers wait here while one of them reconnects.
        let mut slot = self.inner.client.lock().await;
        if let Some(open) = slot.as_mut() {
            if !open.client.is_closed() {
                open.used = Instant::now();
                return Ok(open.client.clone());
            }
        }
        let client =
            Arc::new(pg::connect(self.inner.url.expose(), self.inner.application_name).await?);
        *slot = Some(Open {
            client: client.clone(),
            used: Instant::now(),
        });
        tokio::spawn(close_when_idle(Arc::downgrade(&self.inner)));
        Ok(client)
    }

    /// Creates the `walhook` schema and its tables if missing (idempotent).
    pub async fn ensure_schema(&self) -> Result<(), StateError> {
        self.client()
            .await?
            .batch_execute(SCHEMA_SQL)
            .await
            .map_err(StateError::query("creating the state schema walhook"))
    }
}

/// Drops the store's connection once it has been unused for [`IDLE_CLOSE`]
/// (queries still running keep their own handle to it); ends when the
/// connection is dropped or replaced, or the store is gone.
async fn close_when_idle(inner: Weak<Inner>) {
    let mut check = IDLE_CLOSE;
    loop {
        tokio::time::sleep(check).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut slot = inner.client.lock().await;
        let Some(open) = slot.as_ref() else {
            return;
        };
        let idle = open.used.elapsed();
        if idle >= IDLE_CLOSE || open.client.is_closed() {
            *slot = None;
            tracing::debug!(
                application_name = inner.application_name,
                "closed the idle state connection"
            );
            return;
        }
        check = IDLE_CLOSE - idle;
    }
}
