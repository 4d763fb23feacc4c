//! `walhook.batches`: the records of batches sent but not yet confirmed by
//! Postgres, so that after a restart the delivery worker re-forms them with
//! the same records and ids.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::{StateError, StateStore};
use crate::lsn::{Lsn, ParseLsnError};

/// A record's position: (commit LSN, index in its transaction).
type RecordKey = (Lsn, u32);

/// A batch sent but not yet acknowledged (`walhook.batches`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub batch_id: String,
    pub first_record_id: String,
    pub last_record_id: String,
    pub last_lsn: Lsn,
    /// Every record id, when the batch is not a range of consecutive
    /// records (`ordering = "key"`); see `delivery::worker::record_list`.
    pub records: Option<String>,
}

impl StateStore {
    /// Records a batch's boundaries before it is sent (idempotent).
    ///
    /// Committed without waiting for the WAL flush (`synchronous_commit`
    /// off for this statement only): one insert per batch must not cost a
    /// disk flush each when many batches are in flight. A row lost in a
    /// crash of the database only gives its batch a new id when it is
    /// delivered again; nothing else depends on it.
    pub async fn record_batch(
        &self,
        strategy: &str,
        batch: &StoredBatch,
    ) -> Result<(), StateError> {
        // Typed parameters: parse, bind and execute go in one round trip
        // (a prepared statement would cost one more per batch, on the
        // delivery's critical path under `ordering = "commit"`).
        let last_lsn = batch.last_lsn.to_string();
        self.inner.batches.recorded(strategy);
        self.client()
            .await?
            .query_typed(
                &self.sql(
                    "WITH no_flush AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 INSERT INTO walhook.batches \
                 (strategy, batch_id, first_record_id, last_record_id, last_lsn, records) \
                 SELECT $1, $2, $3, $4, $5::pg_lsn, $6 FROM no_flush ON CONFLICT DO NOTHING",
                ),
                &[
                    (&strategy, Type::TEXT),
                    (&batch.batch_id, Type::TEXT),
                    (&batch.first_record_id, Type::TEXT),
                    (&batch.last_record_id, Type::TEXT),
                    (&last_lsn, Type::TEXT),
                    (&batch.records, Type::TEXT),
                ],
            )
            .await
            .map_err(StateError::query("recording a batch in walhook.batches"))?;
        Ok(())
    }

    /// A strategy's stored batches, in commit order.
    pub async fn load_batches(&self, strategy: &str) -> Result<Vec<StoredBatch>, StateError> {
        const WHAT: &str = "reading walhook.batches";
        let rows = self
            .client()
            .await?
            .query(
                &*self.sql(
                    "SELECT batch_id, first_record_id, last_record_id, last_lsn::text, records \
                 FROM walhook.batches WHERE strategy = $1 ORDER BY last_lsn, created_at",
                ),
                &[&strategy],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        rows.iter()
            .map(|row| {
                let column = StateError::query(WHAT);
                let lsn: String = row.try_get(3).map_err(&column)?;
                Ok(StoredBatch {
                    batch_id: row.try_get(0).map_err(&column)?,
                    first_record_id: row.try_get(1).map_err(&column)?,
                    last_record_id: row.try_get(2).map_err(&column)?,
                    last_lsn: lsn
                        .parse()
                        .map_err(|e: ParseLsnError| StateError::Malformed {
                            what: WHAT,
                            source: e.into(),
                        })?,
                    records: row.try_get(4).map_err(&column)?,
                })
            })
            .collect()
    }

    /// Forgets a strategy's batches wholly before `confirmed` (the slot's
    /// confirmed position: Postgres will not stream them again).
    ///
    /// Once a forget left none of the strategy's batches, later ones run
    /// no statement until this store records another batch: the confirmed
    /// position moves while walhook idles (it follows the server's WAL
    /// end), and an idle walhook should not reconnect to delete nothing.
    pub async fn forget_batches(&self, strategy: &str, confirmed: Lsn) -> Result<u64, StateError> {
        const WHAT: &str = "forgetting acknowledged walhook.batches";
        let Some(generation) = self.inner.batches.may_hold(strategy) else {
            return Ok(0);
        };
        let row = self
            .client()
            .await?
            .query_one(
                &*self.sql(
                    "WITH gone AS (DELETE FROM walhook.batches \
                         WHERE strategy = $1 AND last_lsn < $2::text::pg_lsn RETURNING 1) \
                     SELECT (SELECT count(*) FROM gone), EXISTS (SELECT 1 FROM walhook.batches \
                         WHERE strategy = $1 AND last_lsn >= $2::text::pg_lsn)",
                ),
                &[&strategy, &confirmed.to_string()],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        let gone: i64 = row.try_get(0).map_err(StateError::query(WHAT))?;
        let left: bool = row.try_get(1).map_err(StateError::query(WHAT))?;
        if !left {
            self.inner.batches.emptied(strategy, generation);
        }
        Ok(u64::try_from(gone).unwrap_or(0))
    }
}

/// Per strategy: how many batches this store recorded, and at which of
/// those counts a forget found none left (see
/// [`StateStore::forget_batches`]).
#[derive(Debug, Default)]
pub(super) struct BatchLedger(std::sync::Mutex<HashMap<String, (u64, Option<u64>)>>);

impl BatchLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Option<u64>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recorded(&self, strategy: &str) {
        self.lock().entry(strategy.to_string()).or_default().0 += 1;
    }

    /// The current count, or `None` when no batch can be left.
    fn may_hold(&self, strategy: &str) -> Option<u64> {
        let ledger = self.lock();
        match ledger.get(strategy) {
            Some((count, Some(empty_at))) if count == empty_at => None,
            Some((count, _)) => Some(*count),
            None => Some(0),
        }
    }

    /// A forget that started at `count` left nothing (unless a batch was
    /// recorded meanwhile).
    fn emptied(&self, strategy: &str, count: u64) {
        let mut ledger = self.lock();
        let entry = ledger.entry(strategy.to_string()).or_default();
        if entry.0 == count {
            entry.1 = Some(count);
        }
    }
}

/// `walhook.batches.records`: record ids separated by spaces, runs of one
/// transaction's consecutive records written `<lsn>:<first>-<last>`.
pub(crate) fn record_list(keys: &[RecordKey]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut i = 0;
    while let Some(&(lsn, first)) = keys.get(i) {
        let mut last = first;
        while keys
            .get(i + 1)
            .is_some_and(|&(l, n)| l == lsn && Some(n) == last.checked_add(1))
        {
            i += 1;
            last += 1;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = if last == first {
            write!(out, "{lsn}:{first}")
        } else {
            write!(out, "{lsn}:{first}-{last}")
        };
        i += 1;
    }
    out
}

/// Parses [`record_list`]'s text back, sorted; `None` when malformed.
pub(crate) fn parse_record_list(text: &str) -> Option<Vec<RecordKey>> {
    let mut keys = Vec::new();
    for item in text.split_whitespace() {
        let (lsn, range) = item.rsplit_once(':')?;
        let lsn: Lsn = lsn.parse().ok()?;
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = range.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if last < first {
            return None;
        }
        keys.extend((first..=last).map(|n| (lsn, n)));
    }
    keys.sort_unstable();
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lists_round_trip_compactly() {
        let keys = vec![
            (Lsn(0x100), 0),
            (Lsn(0x100), 1),
            (Lsn(0x100), 2),
            (Lsn(0x100), 7),
            (Lsn(0x200), 0),
            (Lsn(0x300), 4),
            (Lsn(0x300), 5),
        ];
        let text = record_list(&keys);
        assert_eq!(text, "0/100:0-2 0/100:7 0/200:0 0/300:4-5");
        assert_eq!(parse_record_list(&text), Some(keys));
        assert_eq!(parse_record_list(""), Some(vec![]));
        assert_eq!(parse_record_list("0/100:5-2"), None);
        assert_eq!(parse_record_list("nonsense"), None);
    }
}
