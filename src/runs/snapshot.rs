//! Reading a table's current rows for a run.
//!
//! One connection, one `REPEATABLE READ READ ONLY` transaction, so every page
//! comes from the same snapshot; `SET LOCAL ROLE run_as` first, so row-level
//! security applies exactly as it would to that role. Pages are read in
//! primary-key order with keyset pagination (`WHERE (pk) > (last) ORDER BY
//! pk LIMIT n`), which costs the same for the last page as for the first.
//!
//! Values are selected as text (through each type's output function, like
//! pgoutput) with the replication connection's session settings, and become the same `RecordEvent`s the decoder makes (op
//! `read`), so a row read by a run is written to JSON by the same code as a
//! row that arrived through the slot.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::Client;

use crate::config::TableName;
use crate::decode::relcache::{builtin_kind, kind_by_name};
use crate::decode::{Cell, Column, Op, RecordEvent, Relation, Tuple};
use crate::lsn::Lsn;
use crate::pg::{self, quote_ident, quote_table};

/// Rows per page.
pub(crate) const DEFAULT_PAGE: usize = 1000;

/// Tables up to this size on disk are counted exactly for a run's
/// estimate (a few milliseconds); larger ones use the planner's statistics.
pub const COUNT_UP_TO_BYTES: u64 = 16 * 1024 * 1024;

/// Why a table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("table {0} does not exist (or the role cannot see it)")]
    NoTable(TableName),
    #[error("table {0} has no primary key: runs read in primary-key order; add one with ALTER TABLE {0} ADD PRIMARY KEY (...)")]
    NoPrimaryKey(TableName),
    #[error(transparent)]
    Connect(#[from] pg::ConnectError),
    #[error("cannot read {table}: {}", pg::describe(.source))]
    Query {
        table: TableName,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Reads one table page by page inside one snapshot. Dropping it mid-way
/// leaves the transaction open on its (dedicated) connection; call
/// [`Snapshot::finish`] to end it.
pub struct Snapshot {
    client: Client,
    table: TableName,
    relation: Arc<Relation>,
    /// Positions of the primary-key columns, in key order.
    key: Vec<usize>,
    /// `format_type` of each key column, for the keyset comparison.
    key_types: Vec<String>,
    select: String,
    page: usize,
    /// The last row's key values (text), once a page was read.
    after: Option<Vec<Option<String>>>,
    lsn: Lsn,
    read_time: i64,
    emitted: u64,
    done: bool,
}

/// Shows where the read is, never a row value.
impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("table", &self.table)
            .field("page", &self.page)
            .field("emitted", &self.emitted)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Begins the snapshot on `client` (which it takes over) as `run_as`.
    pub async fn open(
        client: Client,
        table: &TableName,
        run_as: Option<&str>,
        page: usize,
    ) -> Result<Snapshot, SnapshotError> {
        let query_err = |source| SnapshotError::Query {
            table: table.clone(),
            source,
        };
        let mut begin = String::from(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL datestyle = 'ISO'; SET LOCAL intervalstyle = 'postgres'; \
             SET LOCAL extra_float_digits = 3; SET LOCAL timezone = 'UTC'; \
             SET LOCAL bytea_output = 'hex';",
        );
        if let Some(role) = run_as {
            begin.push_str(&format!(" SET LOCAL ROLE {};", quote_ident(role)));
        }
        client.batch_execute(&begin).await.map_err(query_err)?;
        let catalog = pg::table_catalog(&client, table)
            .await
            .map_err(query_err)?
            .filter(|c| !c.columns.is_empty())
            .ok_or_else(|| SnapshotError::NoTable(table.clone()))?;
        let key = catalog.primary_key();
        if key.is_empty() {
            return Err(SnapshotError::NoPrimaryKey(table.clone()));
        }
        let key_types = key
            .iter()
            .map(|&k| catalog.columns[k].type_sql.clone())
            .collect();
        let cols: Vec<Column> = catalog
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                key: c.primary_key.is_some(),
                kind: builtin_kind(c.type_oid)
                    .unwrap_or_else(|| kind_by_name(&c.type_schema, &c.type_name)),
            })
            .collect();
        let lsn_row = client
            .query_one(
                "SELECT pg_current_wal_lsn()::text, (extract(epoch from now()) * 1000000)::int8",
                &[],
            )
            .await
            .map_err(query_err)?;
        // One byte before the insert position: WAL records start 8-byte
        // aligned, so no commit LSN (and no live record id) can equal it,
        // while a transaction committing right after the snapshot still
        // sorts after it.
        let lsn = lsn_row
            .get::<_, &str>(0)
            .parse()
            .map_or(Lsn::ZERO, |l: Lsn| Lsn(l.0.saturating_sub(1)));
        let read_time: i64 = lsn_row.get(1);
        let select_list = cols
            .iter()
            // The type's output function, exactly as pgoutput sends values:
            // `::text` differs for some types (bool gives "true", not "t";
            // bpchar drops trailing blanks; inet adds the netmask).
            .map(|c| {
                let col = quote_ident(&c.name);
                format!("CASE WHEN r.{col} IS NULL THEN NULL ELSE format('%s', r.{col}) END")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!("SELECT {select_list} FROM {} AS r", quote_table(table));
        Ok(Snapshot {
            client,
            table: table.clone(),
            relation: Arc::new(Relation {
                oid: catalog.oid,
                schema: table.schema.clone(),
                name: table.name.clone(),
                replica_identity: catalog.replica_identity,
                columns: cols,
            }),
            key,
            key_types,
            select,
            page: page.max(1),
            after: None,
            lsn,
            read_time,
            emitted: 0,
            done: false,
        })
    }

    /// The table's columns as the run sees them.
    pub(crate) fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// About how many rows the snapshot holds, for a run's progress: an
    /// exact `count(*)` in the snapshot (as `run_as`, so row-level security
    /// applies) when the table is at most `count_up_to` bytes on disk, else
    /// `pg_class.reltuples` scaled to the table's current size, as the
    /// planner does (no scan; it ignores row-level security). `None` when a
    /// large table was never analyzed, or the estimate cannot be had: it is
    /// only shown, so it never fails the run.
    pub async fn estimate(&self, count_up_to: u64) -> Option<u64> {
        // A failed query would abort the snapshot's transaction.
        self.client
            .batch_execute("SAVEPOINT walhook_estimate")
            .await
            .ok()?;
        let estimate = self.try_estimate(count_up_to).await;
        let end = match estimate {
            Ok(_) => "RELEASE SAVEPOINT walhook_estimate",
            Err(_) => "ROLLBACK TO SAVEPOINT walhook_estimate",
        };
        if let Err(e) = &estimate {
            tracing::debug!(table = %self.table, error = %pg::describe(e), "cannot estimate the table's rows");
        }
        self.client.batch_execute(end).await.ok()?;
        estimate.ok().flatten()
    }

    async fn try_estimate(&self, count_up_to: u64) -> Result<Option<u64>, tokio_postgres::Error> {
        // Each leaf partition (the table itself when not partitioned):
        // bytes on disk, and the statistics as of the last ANALYZE/VACUUM.
        let leaves = self
            .client
            .query(
                "SELECT pg_relation_size(c.oid)::int8, c.reltuples::float8, c.relpages::int8, \
                        current_setting('block_size')::int8 \
                 FROM pg_class c \
                 WHERE c.relkind = 'r' AND (c.oid = $1 \
                    OR c.oid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass)))",
                &[&self.relation.oid],
            )
            .await?;
        let bytes: i64 = leaves.iter().map(|r| r.get::<_, i64>(0)).sum();
        if u64::try_from(bytes).unwrap_or(u64::MAX) <= count_up_to {
            let row = self
                .client
                .query_one(
                    &format!("SELECT count(*) FROM {}", quote_table(&self.table)),
                    &[],
                )
                .await?;
            return Ok(u64::try_from(row.get::<_, i64>(0)).ok());
        }
        let mut rows = 0.0;
        for leaf in &leaves {
            let (bytes, tuples, pages, block): (i64, f64, i64, i64) =
                (leaf.get(0), leaf.get(1), leaf.get(2), leaf.get(3));
            let now_pages = (bytes / block.max(1)) as f64;
            rows += match (tuples, pages) {
                // Never analyzed (-1 from PostgreSQL 14; 0 pages before).
                (t, _) if t < 0.0 => return Ok(None),
                (_, 0) if now_pages > 0.0 => return Ok(None),
                (_, 0) => 0.0,
                (t, p) => t / p as f64 * now_pages,
            };
        }
        Ok(Some(rows.round() as u64))
    }

    /// The next page of rows, in primary-key order; `None` when done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<RecordEvent>>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let order = self
            .key
            .iter()
            // Qualified: a bare name would sort by the text output column.
            .map(|&k| format!("r.{}", quote_ident(&self.relation.columns[k].name)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = self.select.clone();
        let params: Vec<Option<String>> = self.after.clone().unwrap_or_default();
        if self.after.is_some() {
            let placeholders = self
                .key_types
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("${}::text::{ty}", i + 1))
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" WHERE ({order}) > ({placeholders})"));
        }
        sql.push_str(&format!(" ORDER BY {order} LIMIT {}", self.page));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = self
            .client
            .query(sql.as_str(), &refs)
            .await
            .map_err(|source| SnapshotError::Query {
                table: self.table.clone(),
                source,
            })?;
        if rows.len() < self.page {
            self.done = true;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let cells: Vec<Cell> = (0..self.relation.columns.len())
                .map(|i| match row.get::<_, Option<String>>(i) {
                    Some(text) => Cell::Text(Bytes::from(text)),
                    None => Cell::Null,
                })
                .collect();
            events.push(RecordEvent {
                relation: Arc::clone(&self.relation),
                op: Op::Read,
                commit_lsn: self.lsn,
                index: u32::try_from(self.emitted).unwrap_or(u32::MAX),
                xid: 0,
                commit_time: self.read_time,
                new: Some(Tuple(cells)),
                old: None,
            });
            self.emitted += 1;
        }
        if let Some(last) = rows.last() {
            self.after = Some(
                self.key
                    .iter()
                    .map(|&k| last.get::<_, Option<String>>(k))
                    .collect(),
            );
        }
        Ok(Some(events))
    }

    /// Ends the snapshot's transaction and gives the connection back.
    pub async fn finish(self) -> Client {
        let _ = self.client.batch_execute("COMMIT").await;
        self.client
    }
}
