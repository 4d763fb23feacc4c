//! `walhook.parked` and `walhook.holds`: batches parked behind a failing
//! one (see DESIGN.md "Parking" and `batch::park`), and strategies held
//! so that everything they get is parked.
//!
//! A row is written before the slot may be acknowledged past its records,
//! so it is committed the ordinary way (no `synchronous_commit = off`
//! here, unlike `walhook.batches`): a parked row is the only copy of its
//! changes once PostgreSQL has been told they are done.

use std::time::SystemTime;

use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::{StateError, StateStore};
use crate::lsn::{Lsn, ParseLsnError};

/// A batch to park.
#[derive(Debug, Clone)]
pub(crate) struct NewParked<'a> {
    pub(crate) strategy: &'a str,
    pub(crate) batch_id: &'a str,
    pub(crate) first_lsn: Lsn,
    pub(crate) last_lsn: Lsn,
    /// Every record id ([`super::record_list`]).
    pub(crate) records: String,
    pub(crate) size: usize,
    pub(crate) group_keys: Vec<i64>,
    pub(crate) all_groups: bool,
    pub(crate) key_hash: i64,
    pub(crate) body: &'a [u8],
    pub(crate) first_commit_time: i64,
    /// `failing`, `behind` or `held`.
    pub(crate) reason: &'static str,
    pub(crate) attempts: u32,
    pub(crate) last_status: Option<u16>,
    pub(crate) last_error: Option<&'a str>,
}

/// A parked row without its body (what a worker loads at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredParked {
    pub(crate) id: i64,
    pub(crate) batch_id: String,
    pub(crate) records: String,
    pub(crate) size: i32,
    pub(crate) group_keys: Vec<i64>,
    pub(crate) all_groups: bool,
    pub(crate) key_hash: i64,
    pub(crate) bytes: i64,
}

/// A parked row with what a delivery attempt needs.
#[derive(Debug, Clone)]
pub(crate) struct ParkedBatch {
    pub(crate) batch_id: String,
    pub(crate) first_lsn: Lsn,
    pub(crate) last_lsn: Lsn,
    pub(crate) records: String,
    pub(crate) size: i32,
    pub(crate) body: Vec<u8>,
    pub(crate) first_commit_time: i64,
    pub(crate) attempts: i32,
}

/// A parked row as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParkedSummary {
    pub id: i64,
    pub strategy: String,
    pub batch_id: String,
    pub first_lsn: String,
    pub last_lsn: String,
    pub records: i32,
    pub bytes: i64,
    pub reason: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_attempt_at: Option<String>,
    /// RFC 3339.
    pub parked_at: String,
}

fn lsn(what: &'static str, text: &str) -> Result<Lsn, StateError> {
    text.parse()
        .map_err(|e: ParseLsnError| StateError::Malformed {
            what,
            source: e.into(),
        })
}

const SUMMARY_COLUMNS: &str = "id, strategy, batch_id, first_lsn::text, last_lsn::text, size, \
     octet_length(body)::bigint, reason, attempts, last_status, last_error, \
     to_json(last_attempt_at) #>> '{}', to_json(parked_at) #>> '{}'";

fn summary(row: &Row) -> Result<ParkedSummary, tokio_postgres::Error> {
    Ok(ParkedSummary {
        id: row.try_get(0)?,
        strategy: row.try_get(1)?,
        batch_id: row.try_get(2)?,
        first_lsn: row.try_get(3)?,
        last_lsn: row.try_get(4)?,
        records: row.try_get(5)?,
        bytes: row.try_get(6)?,
        reason: row.try_get(7)?,
        attempts: row.try_get(8)?,
        last_status: row.try_get(9)?,
        last_error: row.try_get(10)?,
        last_attempt_at: row.try_get(11)?,
        parked_at: row.try_get(12)?,
    })
}

/// Microseconds since 1970, for `since`/`until` filters.
fn micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl StateStore {
    /// Parks a batch; returns its id (its place in the delivery order).
    pub(crate) async fn insert_parked(&self, p: &NewParked<'_>) -> Result<i64, StateError> {
        const WHAT: &str = "parking a batch in walhook.parked";
        let first = p.first_lsn.to_string();
        let last = p.last_lsn.to_string();
        let size = i32::try_from(p.size).unwrap_or(i32::MAX);
        let attempts = i32::try_from(p.attempts).unwrap_or(i32::MAX);
        let status = p.last_status.map(i32::from);
        let rows = self
            .client()
            .await?
            .query_typed(
                &self.sql(
                    "INSERT INTO walhook.parked (strategy, batch_id, first_lsn, last_lsn, records, \
                     size, group_keys, all_groups, key_hash, body, first_commit_time, reason, \
                     attempts, last_status, last_error, last_attempt_at) \
                     VALUES ($1, $2, $3::pg_lsn, $4::pg_lsn, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15, CASE WHEN $13 > 0 THEN now() END) RETURNING id",
                ),
                &[
                    (&p.strategy, Type::TEXT),
                    (&p.batch_id, Type::TEXT),
                    (&first, Type::TEXT),
                    (&last, Type::TEXT),
                    (&p.records, Type::TEXT),
                    (&size, Type::INT4),
                    (&p.group_keys, Type::INT8_ARRAY),
                    (&p.all_groups, Type::BOOL),
                    (&p.key_hash, Type::INT8),
                    (&p.body, Type::BYTEA),
                    (&p.first_commit_time, Type::INT8),
                    (&p.reason, Type::TEXT),
                    (&attempts, Type::INT4),
                    (&status, Type::INT4),
                    (&p.last_error, Type::TEXT),
                ],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        rows.first()
            .ok_or_else(|| StateError::Malformed {
                what: WHAT,
                source: "no id returned".into(),
            })?
            .try_get(0)
            .map_err(StateError::query(WHAT))
    }

    /// A strategy's parked rows, without bodies, in id order.
    pub(crate) async fn load_parked(
        &self,
        strategy: &str,
    ) -> Result<Vec<StoredParked>, StateError> {
        const WHAT: &str = "reading walhook.parked";
        let rows = self
            .client()
            .await?
            .query(
                &*self.sql(
                    "SELECT id, batch_id, records, size, group_keys, all_groups, key_hash, \
                     octet_length(body)::bigint FROM walhook.parked WHERE strategy = $1 ORDER BY id",
                ),
                &[&strategy],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        rows.iter()
            .map(|row| {
                let column = StateError::query(WHAT);
                Ok(StoredParked {
                    id: row.try_get(0).map_err(&column)?,
                    batch_id: row.try_get(1).map_err(&column)?,
                    records: row.try_get(2).map_err(&column)?,
                    size: row.try_get(3).map_err(&column)?,
                    group_keys: row.try_get(4).map_err(&column)?,
                    all_groups: row.try_get(5).map_err(&column)?,
                    key_hash: row.try_get(6).map_err(&column)?,
                    bytes: row.try_get(7).map_err(&column)?,
                })
            })
            .collect()
    }

    /// One parked row with its body; `None` when it is gone.
    pub(crate) async fn parked_batch(&self, id: i64) -> Result<Option<ParkedBatch>, StateError> {
        const WHAT: &str = "reading a parked batch";
        let row = self
            .client()
            .await?
            .query_opt(
                &*self.sql(
                    "SELECT id, batch_id, first_lsn::text, last_lsn::text, records, size, body, \
                     first_commit_time, attempts FROM walhook.parked WHERE id = $1",
                ),
                &[&id],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let column = StateError::query(WHAT);
        let first: String = row.try_get(2).map_err(&column)?;
        let last: String = row.try_get(3).map_err(&column)?;
        Ok(Some(ParkedBatch {
            batch_id: row.try_get(1).map_err(&column)?,
            first_lsn: lsn(WHAT, &first)?,
            last_lsn: lsn(WHAT, &last)?,
            records: row.try_get(4).map_err(&column)?,
            size: row.try_get(5).map_err(&column)?,
            body: row.try_get(6).map_err(&column)?,
            first_commit_time: row.try_get(7).map_err(&column)?,
            attempts: row.try_get(8).map_err(&column)?,
        }))
    }

    /// Keeps how the latest attempt of a parked row went.
    pub(crate) async fn record_parked_attempt(
        &self,
        id: i64,
        attempts: u32,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let status = status.map(i32::from);
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "UPDATE walhook.parked SET attempts = $2, last_status = $3, last_error = $4, \
                     last_attempt_at = now(), reason = CASE WHEN reason = 'held' THEN reason \
                     ELSE 'failing' END WHERE id = $1",
                ),
                &[&id, &attempts, &status, &error],
            )
            .await
            .map_err(StateError::query("recording an attempt in walhook.parked"))?;
        Ok(())
    }

    /// Deletes a parked row (it was delivered); false when it was gone.
    pub(crate) async fn delete_parked(&self, id: i64) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute(
                &*self.sql("DELETE FROM walhook.parked WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(StateError::query(
                "deleting a delivered batch from walhook.parked",
            ))?;
        Ok(n > 0)
    }

    /// Moves a parked row to `walhook.dead_letters` in one statement;
    /// returns the dead letter's id (`None` when the row was gone).
    pub(crate) async fn dead_letter_parked(
        &self,
        id: i64,
        attempts: u32,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Result<Option<i64>, StateError> {
        const WHAT: &str = "moving a parked batch to walhook.dead_letters";
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let status = status.map(i32::from);
        let row = self
            .client()
            .await?
            .query_opt(
                &*self.sql(
                    "WITH moved AS (DELETE FROM walhook.parked WHERE id = $1 \
                     RETURNING strategy, batch_id, first_lsn, last_lsn, body) \
                     INSERT INTO walhook.dead_letters \
                     (strategy, batch_id, first_lsn, last_lsn, payload, last_status, last_error, attempts, body) \
                     SELECT strategy, batch_id, first_lsn, last_lsn, convert_from(body, 'UTF8')::jsonb, \
                     $2, $3, $4, body FROM moved RETURNING id",
                ),
                &[&id, &status, &error, &attempts],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        row.map(|r| r.try_get(0).map_err(StateError::query(WHAT)))
            .transpose()
    }

    /// Parked rows, oldest first, optionally of one strategy and parked in
    /// `[since, until)`, at most `limit`.
    pub(crate) async fn list_parked(
        &self,
        strategy: Option<&str>,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
        limit: i64,
    ) -> Result<Vec<ParkedSummary>, StateError> {
        const WHAT: &str = "listing walhook.parked";
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM walhook.parked \
             WHERE ($1::text IS NULL OR strategy = $1) \
             AND ($2::bigint IS NULL OR parked_at >= to_timestamp($2::bigint / 1e6)) \
             AND ($3::bigint IS NULL OR parked_at < to_timestamp($3::bigint / 1e6)) \
             ORDER BY id LIMIT $4"
        );
        let rows = self
            .client()
            .await?
            .query(
                &*self.sql(&sql),
                &[
                    &strategy,
                    &since.map(micros),
                    &until.map(micros),
                    &limit.max(0),
                ],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        rows.iter()
            .map(|row| summary(row).map_err(StateError::query(WHAT)))
            .collect()
    }

    /// Holds `strategy` (kept across restarts) with a reason.
    pub(crate) async fn record_hold(&self, strategy: &str, reason: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "INSERT INTO walhook.holds (strategy, reason) VALUES ($1, $2) \
                     ON CONFLICT (strategy) DO UPDATE SET reason = EXCLUDED.reason",
                ),
                &[&strategy, &reason],
            )
            .await
            .map_err(StateError::query("recording a hold in walhook.holds"))?;
        Ok(())
    }

    /// Releases a held strategy.
    pub(crate) async fn clear_hold(&self, strategy: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql("DELETE FROM walhook.holds WHERE strategy = $1"),
                &[&strategy],
            )
            .await
            .map_err(StateError::query("releasing a hold in walhook.holds"))?;
        Ok(())
    }

    /// The reason `strategy` is held, if it is.
    pub(crate) async fn hold_of(&self, strategy: &str) -> Result<Option<String>, StateError> {
        const WHAT: &str = "reading walhook.holds";
        let row = self
            .client()
            .await?
            .query_opt(
                &*self.sql("SELECT reason FROM walhook.holds WHERE strategy = $1"),
                &[&strategy],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        row.map(|r| r.try_get(0).map_err(StateError::query(WHAT)))
            .transpose()
    }
}
