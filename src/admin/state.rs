//! Dead letters (and run records) read straight from the state schema
//! (`sql/state.sql`, schema `walhook`), so the admin API can list and delete
//! them without going through the pipeline. Replaying goes through
//! [`super::Control`], because it must deliver with the strategy's endpoint.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::config::Secret;

/// Most rows one list request returns.
pub const MAX_PAGE: i64 = 1000;
/// Rows one list request returns when no limit is given.
pub const DEFAULT_PAGE: i64 = 100;

/// A query on the state schema failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The query failed (the message is the server's, never a secret).
    #[error("state schema query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] crate::pg::ConnectError),
    /// A row did not hold what the query promised.
    #[error("state schema row is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl StateError {
    /// True when the database is missing the state schema (run `walhook setup`).
    pub fn is_missing_schema(&self) -> bool {
        match self {
            StateError::Query(err) => err.code().is_some_and(|code| {
                *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE
                    || *code == tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME
            }),
            StateError::Connect(_) | StateError::Malformed(_) => false,
        }
    }
}

/// Which dead letters to list: by strategy, after an id, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only this strategy's.
    pub strategy: Option<String>,
    /// Only ids above this one (the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size, 1 to [`MAX_PAGE`]; default [`DEFAULT_PAGE`].
    pub limit: Option<i64>,
}

/// One page of dead letters (without payloads).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterPage {
    /// The rows, by id.
    pub dead_letters: Vec<Value>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next_after: Option<i64>,
}

/// Direct access to `walhook.dead_letters` and `walhook.runs`. Built with
/// [`StateControl::connect`] it reconnects on the next request after the
/// connection drops (a database restart needs no walhook restart).
pub struct StateControl {
    /// The connection string, when reconnecting is possible.
    url: Option<Secret>,
    client: Mutex<Option<Arc<Client>>>,
}

/// The columns of a dead letter as JSON, payload optional.
const DEAD_LETTER_JSON: &str = "jsonb_build_object(
    'id', id, 'strategy', strategy, 'batch_id', batch_id,
    'first_lsn', first_lsn::text, 'last_lsn', last_lsn::text,
    'last_status', last_status, 'last_error', last_error,
    'attempts', attempts, 'created_at', created_at,
    'payload_bytes', octet_length(payload::text))";

impl StateControl {
    /// Uses `client` (connected to the source database); no reconnecting.
    pub fn new(client: Client) -> Self {
        StateControl {
            url: None,
            client: Mutex::new(Some(Arc::new(client))),
        }
    }

    /// Connects to `url` (a libpq URL; sslmode as for the source).
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        let control = StateControl {
            url: Some(Secret::new(url)),
            client: Mutex::new(None),
        };
        control.client().await?;
        Ok(control)
    }

    /// The open connection, reopened when it has closed and the URL is known.
    async fn client(&self) -> Result<Arc<Client>, StateError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.is_closed() || self.url.is_none() {
                return Ok(client.clone());
            }
        }
        let url = self.url.as_ref().map(Secret::expose).unwrap_or_default();
        let client = Arc::new(crate::pg::connect(url, "walhook-admin").await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// A page of dead letters, oldest first, without payloads.
    pub async fn list(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StateError> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let after = query.after.unwrap_or(0);
        let sql = format!(
            "SELECT {DEAD_LETTER_JSON}::text FROM walhook.dead_letters \
             WHERE ($1::text IS NULL OR strategy = $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&query.strategy, &after, &limit])
            .await?;
        let mut dead_letters = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: &str = row.try_get(0)?;
            dead_letters.push(serde_json::from_str::<Value>(text)?);
        }
        let next_after = if dead_letters.len() as i64 == limit {
            dead_letters
                .last()
                .and_then(|row| row.get("id"))
                .and_then(Value::as_i64)
        } else {
            None
        };
        Ok(DeadLetterPage {
            dead_letters,
            next_after,
        })
    }

    /// One dead letter with its payload; `None` when there is no such id.
    pub async fn get(&self, id: i64) -> Result<Option<Value>, StateError> {
        let sql = format!(
            "SELECT ({DEAD_LETTER_JSON} || jsonb_build_object('payload', payload))::text \
             FROM walhook.dead_letters WHERE id = $1"
        );
        match self.client().await?.query_opt(&sql, &[&id]).await? {
            Some(row) => {
                let text: &str = row.try_get(0)?;
                Ok(Some(serde_json::from_str(text)?))
            }
            None => Ok(None),
        }
    }

    /// Deletes one dead letter; false when there was no such id.
    pub async fn delete(&self, id: i64) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM walhook.dead_letters WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    /// One run record from `walhook.runs`; `None` when there is no such id.
    /// For [`super::Control::run`] implementations.
    pub async fn run(&self, id: i64) -> Result<Option<Value>, StateError> {
        let sql = "SELECT jsonb_build_object('id', id, 'strategy', strategy, 'trigger', trigger, \
                   'filter', filter, 'state', state, 'counts', counts, 'started_at', started_at, \
                   'finished_at', finished_at, 'error', error)::text \
                   FROM walhook.runs WHERE id = $1";
        match self.client().await?.query_opt(sql, &[&id]).await? {
            Some(row) => {
                let text: &str = row.try_get(0)?;
                Ok(Some(serde_json::from_str(text)?))
            }
            None => Ok(None),
        }
    }
}
