//! `walhook.dead_letters`: batches that ran out of delivery attempts with
//! `on_exhausted = "dead_letter"`, stored by the delivery worker, listed,
//! read and deleted by the admin API, deleted by a successful replay.

use tokio_postgres::Row;

use super::{StateError, StateStore};
use crate::lsn::Lsn;

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
    /// RFC 3339, as PostgreSQL writes a timestamptz in JSON.
    pub created_at: String,
    /// Size of the body as sent, in bytes.
    pub payload_bytes: i32,
}

/// A stored dead letter with its payload.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    #[serde(flatten)]
    pub(crate) info: DeadLetterInfo,
    /// The request body exactly as it was sent and signed (JSON text).
    pub payload: String,
}

/// The columns of [`DeadLetterInfo`], in field order.
const INFO_COLUMNS: &str = "id, strategy, batch_id, first_lsn::text, last_lsn::text, \
     last_status, last_error, attempts, to_json(created_at) #>> '{}', \
     COALESCE(octet_length(body), octet_length(payload::text))";

impl StateStore {
    /// Stores a dead letter; returns its id.
    pub async fn insert_dead_letter(&self, dl: &NewDeadLetter<'_>) -> Result<i64, StateError> {
        const WHAT: &str = "storing a dead letter in walhook.dead_letters";
        let payload = String::from_utf8_lossy(dl.payload);
        let row = self
            .client()
            .await?
            .query_one(
                &*self.sql("INSERT INTO walhook.dead_letters \
                 (strategy, batch_id, first_lsn, last_lsn, payload, last_status, last_error, attempts, body) \
                 VALUES ($1, $2, $3::text::pg_lsn, $4::text::pg_lsn, $5::text::jsonb, $6, $7, $8, $9) \
                 RETURNING id"),
                &[
                    &dl.strategy,
                    &dl.batch_id,
                    &dl.first_lsn.to_string(),
                    &dl.last_lsn.to_string(),
                    &payload.as_ref(),
                    &dl.last_status.map(i32::from),
                    &dl.last_error,
                    &i32::try_from(dl.attempts).unwrap_or(i32::MAX),
                    &dl.payload,
                ],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        row.try_get(0).map_err(StateError::query(WHAT))
    }

    /// Dead letters with `id > after_id`, oldest first, at most `limit`,
    /// optionally of one strategy.
    pub async fn list_dead_letters(
        &self,
        strategy: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetterInfo>, StateError> {
        const WHAT: &str = "listing walhook.dead_letters";
        let sql = format!(
            "SELECT {INFO_COLUMNS} FROM walhook.dead_letters \
             WHERE ($1::text IS NULL OR strategy = $1) AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = self
            .client()
            .await?
            .query(&*self.sql(&sql), &[&strategy, &after_id, &limit.max(0)])
            .await
            .map_err(StateError::query(WHAT))?;
        rows.iter()
            .map(|row| info_of(row).map_err(StateError::query(WHAT)))
            .collect()
    }

    /// One dead letter with its payload; `None` when there is no such id.
    pub async fn get_dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StateError> {
        const WHAT: &str = "reading walhook.dead_letters";
        let sql = format!(
            "SELECT {INFO_COLUMNS}, COALESCE(body, convert_to(payload::text, 'UTF8')) \
             FROM walhook.dead_letters WHERE id = $1"
        );
        let row = self
            .client()
            .await?
            .query_opt(&*self.sql(&sql), &[&id])
            .await
            .map_err(StateError::query(WHAT))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let info = info_of(&row).map_err(StateError::query(WHAT))?;
        let body: Vec<u8> = row.try_get(10).map_err(StateError::query(WHAT))?;
        let payload = String::from_utf8(body).map_err(|e| StateError::Malformed {
            what: WHAT,
            source: e.into(),
        })?;
        Ok(Some(DeadLetter { info, payload }))
    }

    /// Deletes a dead letter; false when there was none with that id.
    pub async fn delete_dead_letter(&self, id: i64) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute(
                &*self.sql("DELETE FROM walhook.dead_letters WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(StateError::query(
                "deleting a dead letter from walhook.dead_letters",
            ))?;
        Ok(n > 0)
    }
}

fn info_of(row: &Row) -> Result<DeadLetterInfo, tokio_postgres::Error> {
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
        payload_bytes: row.try_get(9)?,
    })
}
