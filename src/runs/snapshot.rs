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

use crate::cluster::quote_ident;
use crate::config::TableName;
use crate::decode::relcache::{builtin_kind, kind_by_name};
use crate::decode::{Cell, Column, Op, RecordEvent, Relation, ReplicaIdentity, Tuple};
use crate::lsn::Lsn;

/// Rows per page.
pub const DEFAULT_PAGE: usize = 1000;

/// Why a table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("table {0} does not exist (or the role cannot see it)")]
    NoTable(TableName),
    #[error("table {0} has no primary key: runs read in primary-key order; add one with ALTER TABLE {0} ADD PRIMARY KEY (...)")]
    NoPrimaryKey(TableName),
    #[error("cannot read {table}: {reason}")]
    Query { table: TableName, reason: String },
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

impl Snapshot {
    /// Begins the snapshot on `client` (which it takes over) as `run_as`.
    pub async fn open(
        client: Client,
        table: &TableName,
        run_as: Option<&str>,
        page: usize,
    ) -> Result<Snapshot, SnapshotError> {
        let query_err = |e: tokio_postgres::Error| SnapshotError::Query {
            table: table.clone(),
            reason: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string()),
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
        let columns = client
            .query(
                "SELECT a.attname::text, a.atttypid::oid, a.atttypmod, n.nspname::text, t.typname::text, \
                        format_type(a.atttypid, NULL), \
                        array_position(i.indkey::int2[], a.attnum), c.relreplident::text, c.oid::oid \
                 FROM pg_class c \
                 JOIN pg_namespace cn ON cn.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 JOIN pg_namespace n ON n.oid = t.typnamespace \
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
                 WHERE cn.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                 ORDER BY a.attnum",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(query_err)?;
        if columns.is_empty() {
            return Err(SnapshotError::NoTable(table.clone()));
        }
        let mut cols = Vec::with_capacity(columns.len());
        let mut key: Vec<(i32, usize, String)> = Vec::new();
        let mut identity = ReplicaIdentity::Default;
        let mut oid = 0;
        for (pos, row) in columns.iter().enumerate() {
            let type_oid: u32 = row.get(1);
            let kind = builtin_kind(type_oid)
                .unwrap_or_else(|| kind_by_name(row.get::<_, &str>(3), row.get::<_, &str>(4)));
            let key_pos: Option<i32> = row.get(6);
            if let Some(k) = key_pos {
                key.push((k, pos, row.get::<_, String>(5)));
            }
            identity = match row.get::<_, &str>(7) {
                "f" => ReplicaIdentity::Full,
                "n" => ReplicaIdentity::Nothing,
                "i" => ReplicaIdentity::Index,
                _ => ReplicaIdentity::Default,
            };
            oid = row.get(8);
            cols.push(Column {
                name: row.get(0),
                type_oid,
                type_modifier: row.get(2),
                key: key_pos.is_some(),
                kind,
            });
        }
        if key.is_empty() {
            return Err(SnapshotError::NoPrimaryKey(table.clone()));
        }
        key.sort();
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
        let select = format!(
            "SELECT {select_list} FROM {}.{} AS r",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        Ok(Snapshot {
            client,
            table: table.clone(),
            relation: Arc::new(Relation {
                oid,
                schema: table.schema.clone(),
                name: table.name.clone(),
                replica_identity: identity,
                columns: cols,
            }),
            key: key.iter().map(|(_, pos, _)| *pos).collect(),
            key_types: key.into_iter().map(|(_, _, ty)| ty).collect(),
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
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// Just before the WAL position when the snapshot was taken (never a
    /// commit LSN, so run record ids never equal live ones).
    pub fn lsn(&self) -> Lsn {
        self.lsn
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
        let rows =
            self.client
                .query(sql.as_str(), &refs)
                .await
                .map_err(|e| SnapshotError::Query {
                    table: self.table.clone(),
                    reason: e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string()),
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
