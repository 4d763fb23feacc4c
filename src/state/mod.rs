//! walhook's state (`sql/state.sql`): dead letters, the boundaries of
//! batches sent but not yet acknowledged, parked batches, runs and paused strategies, in schema `walhook` of
//! the source database unless `[state]` names another schema or database.
//! Delivery, replay, runs and the admin API all go through [`StateStore`],
//! so each table has one set of queries. The queries name the tables
//! `walhook.<table>`; [`StateStore::sql`] puts the configured schema there.
//!
//! Before use, [`StateStore::ensure_schema`] checks that the role can use
//! the schema and creates what is missing only when it may (see `schema`):
//! after the DBA ran the setup SQL, walhook runs no DDL and needs no CREATE.
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
mod parked;
mod pauses;
mod runs;
mod schema;
mod slots;

use crate::error_class::{Classify, ErrorClass};
use std::borrow::Cow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::config::{Config, Secret};
use crate::pg::{self, quote_ident, ConnectError};

pub use batches::StoredBatch;
pub(crate) use batches::{parse_record_list, record_list};
pub use dead_letters::{DeadLetter, DeadLetterInfo, NewDeadLetter};
pub use parked::ParkedSummary;
pub(crate) use parked::{NewParked, StoredParked};
pub use schema::StateProblem;
pub(crate) use schema::{inspect, setup_sql, Inspection, DEFAULT_SCHEMA};
pub(crate) use slots::{
    forget_script_sql as forget_slot_script_sql, forget_sql as forget_slot_sql,
    record_sql as record_slot_sql, RecordedLoss,
};

/// A connection unused this long is closed (and reopened on the next use).
const IDLE_CLOSE: Duration = Duration::from_secs(5);

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
    /// The role cannot use the state schema as it is (missing objects or
    /// privileges); each problem names the object, the role and the fix.
    #[error("the state schema is not ready:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    NotReady { problems: Vec<StateProblem> },
}

impl Classify for StateError {
    /// Needs the operator when an administrator must change the database
    /// first (missing objects or privileges): restarting will not help.
    fn class(&self) -> ErrorClass {
        match self {
            StateError::Connect(err) => err.class(),
            StateError::NotReady { .. } => ErrorClass::NeedsOperator,
            StateError::Query { .. } | StateError::Malformed { .. } => ErrorClass::Fatal,
        }
    }
}

impl StateError {
    /// True when the database lacks the state schema (run `walhook setup`).
    pub(crate) fn is_missing_schema(&self) -> bool {
        match self {
            StateError::Query { source, .. } => source.code().is_some_and(|c| {
                *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME
            }),
            StateError::Connect(_) | StateError::Malformed { .. } | StateError::NotReady { .. } => {
                false
            }
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
    /// The schema holding the tables (`[state] schema`).
    schema: String,
    application_name: &'static str,
    client: Mutex<Option<Open>>,
    /// Which strategies may still have stored batches.
    batches: batches::BatchLedger,
}

/// The open connection and when it was last handed out.
struct Open {
    client: Arc<Client>,
    used: Instant,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("schema", &self.inner.schema)
            .field("application_name", &self.inner.application_name)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Connects to `url`, state in the default schema `walhook`; the
    /// connection shows `application_name` (unless the URL sets one).
    pub async fn connect(
        url: &str,
        application_name: &'static str,
    ) -> Result<StateStore, StateError> {
        Self::connect_schema(url, DEFAULT_SCHEMA, application_name).await
    }

    /// Connects where the configuration keeps the state (`[state]`, by
    /// default the source database).
    pub(crate) async fn for_config(
        config: &Config,
        application_name: &'static str,
    ) -> Result<StateStore, StateError> {
        Self::connect_schema(
            config.state_url().expose(),
            &config.state.schema,
            application_name,
        )
        .await
    }

    /// [`StateStore::for_config`] without connecting: the connection opens
    /// on first use (for a store that may never be used, e.g. the admin
    /// API's, so that starting does not wait for it).
    pub(crate) fn for_config_unopened(
        config: &Config,
        application_name: &'static str,
    ) -> Result<StateStore, StateError> {
        Self::unopened(
            config.state_url().expose(),
            &config.state.schema,
            application_name,
        )
    }

    fn unopened(
        url: &str,
        schema: &str,
        application_name: &'static str,
    ) -> Result<StateStore, StateError> {
        pg::conninfo::parse(url).map_err(ConnectError::from)?;
        Ok(StateStore {
            inner: Arc::new(Inner {
                url: Secret::new(url),
                schema: schema.to_string(),
                application_name,
                client: Mutex::new(None),
                batches: Default::default(),
            }),
        })
    }

    async fn connect_schema(
        url: &str,
        schema: &str,
        application_name: &'static str,
    ) -> Result<StateStore, StateError> {
        let store = Self::unopened(url, schema, application_name)?;
        store.client().await?;
        Ok(store)
    }

    /// `query` (written with `walhook.<table>`) for the configured schema.
    fn sql<'q>(&self, query: &'q str) -> Cow<'q, str> {
        if self.inner.schema == DEFAULT_SCHEMA {
            Cow::Borrowed(query)
        } else {
            let prefix = format!("{}.", quote_ident(&self.inner.schema));
            Cow::Owned(query.replace("walhook.", &prefix))
        }
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

    /// Makes sure the role can use the state schema: creates what is
    /// missing when it may (no DDL at all when everything is there), and
    /// otherwise fails with [`StateError::NotReady`], naming each missing
    /// object or privilege with its fix.
    pub async fn ensure_schema(&self) -> Result<(), StateError> {
        let found = self.inspect().await;
        self.ensure_inspected(found).await
    }

    /// [`StateStore::ensure_schema`] after an [`StateStore::inspect`] made
    /// earlier (while the source's checks ran): when that found everything
    /// in place, nothing more is read.
    pub(crate) async fn ensure_inspected(
        &self,
        found: Result<Inspection, StateError>,
    ) -> Result<(), StateError> {
        const WHAT: &str = "inspecting the state schema";
        let schema = &self.inner.schema;
        let mut found = found?;
        if found.incomplete() && found.may_create() {
            let client = self.client().await?;
            if let Err(err) = schema::create(&client, schema, found.schema_exists).await {
                return Err(match err.code() {
                    Some(&SqlState::INSUFFICIENT_PRIVILEGE) => StateError::NotReady {
                        problems: vec![StateProblem {
                            object: format!("schema {schema}"),
                            problem: format!(
                                "role {} cannot create the missing state tables: {}",
                                found.role,
                                pg::describe(&err)
                            ),
                            fix:
                                "run the setup SQL as an administrator (walhook setup --print-sql)"
                                    .to_string(),
                        }],
                    },
                    _ => StateError::Query {
                        what: "creating the state schema",
                        source: err,
                    },
                });
            }
            tracing::info!(schema = %schema, "created the state schema's missing tables");
            found = inspect(&client, schema)
                .await
                .map_err(StateError::query(WHAT))?;
        }
        let problems = found.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StateError::NotReady { problems })
        }
    }

    /// What the state schema holds and what the role may do there (for
    /// `walhook check`, and `walhook run` before [`StateStore::ensure_inspected`]).
    pub(crate) async fn inspect(&self) -> Result<Inspection, StateError> {
        inspect(&*self.client().await?, &self.inner.schema)
            .await
            .map_err(StateError::query("inspecting the state schema"))
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
