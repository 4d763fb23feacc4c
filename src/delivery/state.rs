//! walhook's state in the source database (schema `walhook`, sql/state.sql):
//! dead letters and the boundaries of batches sent but not yet acknowledged.
//!
//! An ordinary SQL connection (tokio-postgres), reopened on the next call
//! when it drops, so a database restart does not need a walhook restart.
//! It speaks plain TCP: a server that insists on TLS for this connection is
//! an error here (the replication connection has its own TLS).

use std::sync::Arc;

use tokio_postgres::Client;

use crate::lsn::Lsn;

/// The state schema, applied by [`StateStore::ensure_schema`].
pub const STATE_SQL: &str = include_str!("../../sql/state.sql");

/// Errors of the state store. Messages never hold the password.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store connection string: {0}")]
    Url(String),
    #[error("state store: {0}")]
    Db(String),
}

impl StateError {
    /// A database error may pass (reconnect, retry); a bad URL does not.
    pub fn is_transient(&self) -> bool {
        matches!(self, StateError::Db(_))
    }
}

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> Self {
        StateError::Db(crate::pg::describe(&e))
    }
}

/// A dead letter to store.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    pub strategy: &'a str,
    pub batch_id: &'a str,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// The request body as serialised by the batcher (JSON).
    pub payload: &'a [u8],
    pub last_status: Option<u16>,
    pub last_error: Option<&'a str>,
    pub attempts: u32,
}

/// A stored dead letter without its payload (for listings).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterInfo {
    pub id: i64,
    pub strategy: String,
    pub batch_id: String,
    pub first_lsn: String,
    pub last_lsn: String,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub attempts: i32,
    /// RFC 3339.
    pub created_at: String,
}

/// A stored dead letter with its payload.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    #[serde(flatten)]
    pub info: DeadLetterInfo,
    /// The JSON body (as jsonb normalised it: key order and spacing may differ
    /// from the bytes first sent; the values and ids do not).
    pub payload: String,
}

/// A batch sent but not yet acknowledged (`walhook.batches`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub batch_id: String,
    pub first_record_id: String,
    pub last_record_id: String,
    pub last_lsn: Lsn,
}

/// Handle to the state schema; cheap to clone and share.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

const INFO_COLUMNS: &str = "id, strategy, batch_id, first_lsn::text, last_lsn::text, \
     last_status, last_error, attempts, to_json(created_at) #>> '{}'";

impl StateStore {
    /// Connects with the source's connection string, with the same
    /// sslmode semantics as the replication connection ([`crate::pg`]).
    pub async fn connect(url: &str) -> Result<StateStore, StateError> {
        let store = Self::lazy(url)?;
        store.client().await?;
        Ok(store)
    }

    /// Like [`StateStore::connect`], but connects on first use.
    pub fn lazy(url: &str) -> Result<StateStore, StateError> {
        crate::pg::conninfo::parse(url).map_err(|e| StateError::Url(e.to_string()))?;
        Ok(StateStore {
            inner: Arc::new(Inner {
                url: url.to_string(),
                client: tokio::sync::Mutex::new(None),
            }),
        })
    }

    async fn client(&self) -> Result<Arc<Client>, StateError> {
        let mut slot = self.inner.client.lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let client = crate::pg::connect(&self.inner.url, "walhook-state")
            .await
            .map_err(|e| StateError::Db(e.to_string()))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Creates the `walhook` schema and its tables if missing (idempotent).
    pub async fn ensure_schema(&self) -> Result<(), StateError> {
        self.client().await?.batch_execute(STATE_SQL).await?;
        Ok(())
    }

    /// Stores a dead letter; returns its id.
    pub async fn insert_dead_letter(&self, dl: &NewDeadLetter<'_>) -> Result<i64, StateError> {
        let payload = String::from_utf8_lossy(dl.payload);
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO walhook.dead_letters \
                 (strategy, batch_id, first_lsn, last_lsn, payload, last_status, last_error, attempts) \
                 VALUES ($1, $2, $3::text::pg_lsn, $4::text::pg_lsn, $5::text::jsonb, $6, $7, $8) \
                 RETURNING id",
                &[
                    &dl.strategy,
                    &dl.batch_id,
                    &dl.first_lsn.to_string(),
                    &dl.last_lsn.to_string(),
                    &payload.as_ref(),
                    &dl.last_status.map(i32::from),
                    &dl.last_error,
                    &i32::try_from(dl.attempts).unwrap_or(i32::MAX),
                ],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Dead letters with `id > after_id`, oldest first, at most `limit`,
    /// optionally of one strategy.
    pub async fn list_dead_letters(
        &self,
        strategy: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetterInfo>, StateError> {
        let sql = format!(
            "SELECT {INFO_COLUMNS} FROM walhook.dead_letters \
             WHERE ($1::text IS NULL OR strategy = $1) AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&strategy, &after_id, &limit.max(0)])
            .await?;
        rows.iter().map(info_of).collect()
    }

    /// One dead letter with its payload.
    pub async fn get_dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StateError> {
        let sql =
            format!("SELECT {INFO_COLUMNS}, payload::text FROM walhook.dead_letters WHERE id = $1");
        let row = self.client().await?.query_opt(&sql, &[&id]).await?;
        row.map(|row| {
            Ok(DeadLetter {
                info: info_of(&row)?,
                payload: row.try_get(9)?,
            })
        })
        .transpose()
    }

    /// Deletes a dead letter; false when there was none with that id.
    pub async fn delete_dead_letter(&self, id: i64) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM walhook.dead_letters WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    /// Records a batch's boundaries before it is sent (idempotent).
    pub async fn record_batch(
        &self,
        strategy: &str,
        batch: &StoredBatch,
    ) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO walhook.batches \
                 (strategy, batch_id, first_record_id, last_record_id, last_lsn) \
                 VALUES ($1, $2, $3, $4, $5::text::pg_lsn) ON CONFLICT DO NOTHING",
                &[
                    &strategy,
                    &batch.batch_id,
                    &batch.first_record_id,
                    &batch.last_record_id,
                    &batch.last_lsn.to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    /// A strategy's stored batches, in commit order.
    pub async fn load_batches(&self, strategy: &str) -> Result<Vec<StoredBatch>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT batch_id, first_record_id, last_record_id, last_lsn::text \
                 FROM walhook.batches WHERE strategy = $1 ORDER BY last_lsn, created_at",
                &[&strategy],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let lsn: String = row.try_get(3)?;
                Ok(StoredBatch {
                    batch_id: row.try_get(0)?,
                    first_record_id: row.try_get(1)?,
                    last_record_id: row.try_get(2)?,
                    last_lsn: lsn.parse().map_err(|e| StateError::Db(format!("{e}")))?,
                })
            })
            .collect()
    }

    /// Forgets a strategy's batches wholly before `acked` (Postgres will not
    /// stream them again).
    pub async fn forget_batches(&self, strategy: &str, acked: Lsn) -> Result<u64, StateError> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM walhook.batches WHERE strategy = $1 AND last_lsn < $2::text::pg_lsn",
                &[&strategy, &acked.to_string()],
            )
            .await?)
    }
}

fn info_of(row: &tokio_postgres::Row) -> Result<DeadLetterInfo, StateError> {
    Ok(DeadLetterInfo {
        id: row.try_get(0)?,
        strategy: row.try_get(1)?,
        batch_id: row.try_get(2)?,
        first_lsn: row.try_get(3)?,
        last_lsn: row.try_get(4)?,
        last_status: row.try_get(5)?,
        last_error: row.try_get(6)?,
        attempts: row.try_get(7)?,
        created_at: row.try_get(8)?,
    })
}
