//! Reading a table's rows for a run, one chunk per transaction.
//!
//! Each chunk is its own `REPEATABLE READ READ ONLY` transaction (`SET
//! LOCAL ROLE run_as` first, so row-level security applies exactly as it
//! would to that role): the snapshot (`pg_current_snapshot()`, taken by the
//! transaction's first statement), then the rows in primary-key order with
//! keyset pagination (`WHERE (pk) > (last) ORDER BY pk LIMIT n`, which costs
//! the same for the last chunk as for the first) and each row's `xmin`,
//! then — still inside the transaction, after the run registered the rows
//! with the router — the chunk's high watermark, a non-transactional logical
//! message (see [`crate::backfill`]). No transaction outlives its chunk, so
//! a run over a large table holds back neither vacuum nor the xmin horizon.
//!
//! Values are selected as text (through each type's output function, like
//! pgoutput) with the replication connection's session settings, and become
//! the same `RecordEvent`s the decoder makes (op `read`), so a row read by a
//! run is written to JSON by the same code as a row that arrived through the
//! slot, and its key compares equal to the key of a change of that row.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::backfill::{encode_key, RowVersion, SnapshotInfo, PREFIX};
use crate::config::TableName;
use crate::decode::relcache::{builtin_kind, kind_by_name};
use crate::decode::{Cell, Column, Op, RecordEvent, Relation, Tuple};
use crate::lsn::Lsn;
use crate::pg::{self, quote_ident, quote_literal, quote_table};

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
    #[error("`from`: {0}")]
    From(String),
    #[error(transparent)]
    Connect(#[from] pg::ConnectError),
    #[error("cannot read {table}: {}", pg::describe(.source))]
    Query {
        table: TableName,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot read {table}: the server answered {what} that walhook cannot parse")]
    Malformed {
        table: TableName,
        what: &'static str,
    },
}

/// A primary key's column texts (the last row of a chunk: where the next
/// one starts).
pub type KeyText = Vec<Option<String>>;

/// A key (`?from=`, `--from`) as its column texts: a JSON array (`["eu", "42"]`, one
/// text per primary-key column, in key order) or, for a one-column key, the
/// text itself.
pub fn parse_key(text: &str) -> Result<Vec<Option<String>>, String> {
    if !text.trim_start().starts_with('[') {
        return Ok(vec![Some(text.to_string())]);
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        format!("bad from: {e}; use a JSON array of the key's columns, e.g. [\"eu\", 42]")
    })?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(Some(s)),
            serde_json::Value::Number(n) => Ok(Some(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(format!(
                "bad from: {other} is not a key column's value (text, number or boolean)"
            )),
        })
        .collect()
}

/// For each column type that is a domain: (the domain, its base type's oid,
/// schema and name), through domains over domains.
async fn base_types(
    client: &Client,
    catalog: &pg::TableCatalog,
) -> Result<Vec<(u32, u32, String, String)>, tokio_postgres::Error> {
    let oids: Vec<u32> = catalog.columns.iter().map(|c| c.type_oid).collect();
    let rows = client
        .query(
            "WITH RECURSIVE b(of, base) AS ( \
                 SELECT t.oid, t.typbasetype FROM pg_type t \
                 WHERE t.oid = ANY($1::oid[]) AND t.typtype = 'd' \
               UNION ALL \
                 SELECT b.of, t.typbasetype FROM b JOIN pg_type t ON t.oid = b.base \
                 WHERE t.typtype = 'd') \
             SELECT b.of, t.oid, n.nspname::text, t.typname::text FROM b \
             JOIN pg_type t ON t.oid = b.base JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype <> 'd'",
            &[&oids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// The fields of one line of COPY's text format: `\N` is NULL, backslash
/// escapes are undone (COPY TO writes `\\`, `\b`, `\f`, `\n`, `\r`, `\t`,
/// `\v`); a field without a backslash is a slice of the line, not a copy.
fn copy_fields(line: &Bytes) -> impl Iterator<Item = Cell> + '_ {
    let mut at = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = line.get(at..)?;
        let len = rest.iter().position(|&b| b == b'\t').unwrap_or_else(|| {
            done = true;
            rest.len()
        });
        let field = line.slice(at..at + len);
        at += len + 1;
        if &field[..] == b"\\N" {
            return Some(Cell::Null);
        }
        if !field.contains(&b'\\') {
            return Some(Cell::Text(field));
        }
        let mut out = Vec::with_capacity(field.len());
        let mut bytes = field.iter().copied();
        while let Some(b) = bytes.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match bytes.next() {
                Some(b'b') => out.push(0x08),
                Some(b'f') => out.push(0x0c),
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                Some(b't') => out.push(b'\t'),
                Some(b'v') => out.push(0x0b),
                Some(other) => out.push(other),
                None => out.push(b'\\'),
            }
        }
        Some(Cell::Text(Bytes::from(out)))
    })
}

/// One row of a chunk.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    /// Op `read`, LSN and index not set yet.
    pub event: RecordEvent,
    pub(crate) version: RowVersion,
}

/// One chunk, read in one snapshot; its transaction stays open until
/// [`TableReader::finish_chunk`].
#[derive(Debug)]
pub struct Chunk {
    pub rows: Vec<ChunkRow>,
    pub(crate) snapshot: SnapshotInfo,
    /// The last row's key, where the next chunk starts; `None` when empty.
    pub last_key: Option<KeyText>,
}

/// Where a chunk starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// At the table's first key.
    First,
    /// At this key (`from`).
    At(KeyText),
    /// After this key (the last row of the chunk before).
    After(KeyText),
}

/// Reads one table chunk by chunk (see the module doc).
pub struct TableReader {
    client: Client,
    table: TableName,
    relation: Arc<Relation>,
    /// Positions of the primary-key columns, in key order.
    key: Vec<usize>,
    /// `format_type` of each key column, for the keyset comparison.
    key_types: Vec<String>,
    select: String,
    /// `SET LOCAL ROLE …;` or nothing.
    role: String,
    /// The run's filter as SQL (`AND …`), or nothing.
    pushdown: String,
    /// A chunk's transaction is open.
    open: bool,
    /// PostgreSQL 17+: `pg_logical_emit_message` can flush the WAL itself.
    emit_flushes: bool,
}

/// Shows where the read is, never a row value.
impl std::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableReader")
            .field("table", &self.table)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

/// The session settings pgoutput's text output is made with, and the one
/// the start key's quoted literals need (a DBA may have turned it off).
const SETTINGS: &str = "SET LOCAL datestyle = 'ISO'; SET LOCAL intervalstyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL timezone = 'UTC'; \
     SET LOCAL bytea_output = 'hex'; \
     SET LOCAL standard_conforming_strings = on;";

impl TableReader {
    /// Reads the table's columns on `client` (which it takes over) as `run_as`.
    pub async fn open(
        client: Client,
        table: &TableName,
        run_as: Option<&str>,
    ) -> Result<TableReader, SnapshotError> {
        let query_err = |source| SnapshotError::Query {
            table: table.clone(),
            source,
        };
        let role = run_as
            .map(|r| format!(" SET LOCAL ROLE {};", quote_ident(r)))
            .unwrap_or_default();
        client
            .batch_execute(&format!("BEGIN READ ONLY;{role}"))
            .await
            .map_err(query_err)?;
        let catalog = pg::table_catalog(&client, table).await;
        let bases = match &catalog {
            Ok(Some(c)) => base_types(&client, c).await,
            _ => Ok(Vec::new()),
        };
        let version = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map(|row| row.get::<_, i32>(0));
        let _ = client.batch_execute("COMMIT").await;
        let catalog = catalog
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
        let bases = bases.map_err(query_err)?;
        // A domain's values are its base type's, as pgoutput describes the
        // column (its Relation message names the base type).
        let cols: Vec<Column> = catalog
            .columns
            .iter()
            .map(|c| {
                let (oid, schema, name) = bases
                    .iter()
                    .find(|(of, ..)| *of == c.type_oid)
                    .map(|(_, oid, schema, name)| (*oid, schema.as_str(), name.as_str()))
                    .unwrap_or((c.type_oid, &c.type_schema, &c.type_name));
                Column {
                    name: c.name.clone(),
                    type_oid: oid,
                    type_modifier: c.type_modifier,
                    key: c.primary_key.is_some(),
                    kind: builtin_kind(oid).unwrap_or_else(|| kind_by_name(schema, name)),
                }
            })
            .collect();
        // COPY writes each value with its type's output function, exactly as
        // pgoutput sends it (`::text` would differ for some types: bool gives
        // "true", not "t"; bpchar drops trailing blanks; inet adds a netmask).
        let select_list = cols
            .iter()
            .map(|c| format!("r.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!(
            "SELECT r.xmin, {select_list} FROM {} AS r",
            quote_table(table)
        );
        Ok(TableReader {
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
            role,
            pushdown: String::new(),
            open: false,
            emit_flushes: version.is_ok_and(|v| v >= 170_000),
        })
    }

    /// Reads only rows matching `sql` (a boolean SQL expression over the
    /// table's columns, alias `r`; see `runs::pushdown`).
    pub(crate) fn with_pushdown(mut self, sql: Option<String>) -> Self {
        self.pushdown = sql.map(|s| format!(" AND ({s})")).unwrap_or_default();
        self
    }

    /// The table's columns as the run sees them.
    pub(crate) fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// The primary-key columns, in key order.
    pub(crate) fn key_columns(&self) -> Vec<String> {
        self.key
            .iter()
            .filter_map(|&k| self.relation.columns.get(k))
            .map(|c| c.name.clone())
            .collect()
    }

    fn query_err(&self) -> impl Fn(tokio_postgres::Error) -> SnapshotError + '_ {
        |source| SnapshotError::Query {
            table: self.table.clone(),
            source,
        }
    }

    /// Writes a watermark now, outside any chunk (a segment's start), and
    /// makes sure it reaches the stream.
    pub(crate) async fn mark(&self, content: &str) -> Result<Lsn, SnapshotError> {
        let lsn = self.emit(content).await?;
        self.flush().await?;
        Ok(lsn)
    }

    /// Writes a watermark (a non-transactional message: it is in the stream
    /// at once, in WAL order, whatever the transaction around it does).
    async fn emit(&self, content: &str) -> Result<Lsn, SnapshotError> {
        let sql = if self.emit_flushes {
            "SELECT pg_logical_emit_message(false, $1, $2, true)::text"
        } else {
            "SELECT pg_logical_emit_message(false, $1, $2)::text"
        };
        let row = self
            .client
            .query_one(sql, &[&PREFIX, &content])
            .await
            .map_err(self.query_err())?;
        row.get::<_, &str>(0)
            .parse()
            .map_err(|_| SnapshotError::Malformed {
                table: self.table.clone(),
                what: "a message LSN",
            })
    }

    /// Before PostgreSQL 17 a message is not flushed by itself: the
    /// walsender sends only flushed WAL, and an idle server may not flush it
    /// for seconds. A transaction of one transactional message, committed
    /// synchronously, flushes everything before it.
    async fn flush(&self) -> Result<(), SnapshotError> {
        if self.emit_flushes {
            return Ok(());
        }
        self.client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL synchronous_commit = on; \
                 SELECT pg_logical_emit_message(true, '{PREFIX}', 'flush'); COMMIT;"
            ))
            .await
            .map_err(self.query_err())
    }

    /// One byte before the server's WAL insert position: WAL records start
    /// 8-byte aligned, so no commit LSN (and no live record id) equals it,
    /// while a transaction committing after it sorts after it. The ids of
    /// a run without a stream to merge into start there.
    pub(crate) async fn id_lsn(&self) -> Result<Lsn, SnapshotError> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(self.query_err())?;
        Ok(row
            .get::<_, &str>(0)
            .parse()
            .map_or(Lsn::ZERO, |l: Lsn| Lsn(l.0.saturating_sub(1))))
    }

    /// About how many rows a run will read, for its progress: an exact
    /// `count(*)` (as `run_as`, so row-level security applies, and with the
    /// pushed-down filter) when the table is at most `count_up_to` bytes on
    /// disk, else `pg_class.reltuples` scaled to the table's current size,
    /// as the planner does (no scan; it ignores row-level security and the
    /// filter). `None` when a large table was never analyzed, or the
    /// estimate cannot be had: it is only shown, so it never fails the run.
    pub async fn estimate(&self, count_up_to: u64) -> Option<u64> {
        self.client
            .batch_execute(&format!("BEGIN READ ONLY;{}", self.role))
            .await
            .ok()?;
        let estimate = self.try_estimate(count_up_to).await;
        if let Err(e) = &estimate {
            tracing::debug!(table = %self.table, error = %pg::describe(e), "cannot estimate the table's rows");
        }
        let _ = self.client.batch_execute("COMMIT").await;
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
                    &format!(
                        "SELECT count(*) FROM {} AS r WHERE true{}",
                        quote_table(&self.table),
                        self.pushdown
                    ),
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

    /// Reads up to `limit` rows from `start` in a new transaction, which
    /// stays open: end it with [`TableReader::finish_chunk`].
    ///
    /// The rows come by `COPY … TO STDOUT` (text format): each value through
    /// its type's output function, as pgoutput sends it, at a fraction of a
    /// row-by-row query's cost on both sides. COPY takes no parameters, so
    /// the start key is written as quoted literals cast to the key's types.
    pub async fn read_chunk(
        &mut self,
        start: &Start,
        limit: usize,
    ) -> Result<Chunk, SnapshotError> {
        if self.open {
            let _ = self.client.batch_execute("ROLLBACK").await;
            self.open = false;
        }
        let order = self
            .key
            .iter()
            .map(|&k| format!("r.{}", quote_ident(&self.relation.columns[k].name)))
            .collect::<Vec<_>>()
            .join(", ");
        let (op, key) = match start {
            Start::First => (None, Vec::new()),
            Start::At(key) => (Some(">="), key.clone()),
            Start::After(key) => (Some(">"), key.clone()),
        };
        let mut sql = format!("COPY ({} WHERE true", self.select);
        if let Some(op) = op {
            if key.len() != self.key.len() {
                return Err(SnapshotError::From(format!(
                    "{} has {} primary-key columns ({}), the key given has {}",
                    self.table,
                    self.key.len(),
                    self.key_columns().join(", "),
                    key.len()
                )));
            }
            let literals = self
                .key_types
                .iter()
                .zip(&key)
                .map(|(ty, value)| match value {
                    Some(text) => format!("{}::{ty}", quote_literal(text)),
                    None => format!("NULL::{ty}"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" AND ({order}) {op} ({literals})"));
        }
        sql.push_str(&self.pushdown);
        sql.push_str(&format!(
            " ORDER BY {order} LIMIT {}) TO STDOUT",
            limit.max(1)
        ));
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SETTINGS}{}",
                self.role
            ))
            .await
            .map_err(self.query_err())?;
        self.open = true;
        // The transaction's first statement takes its snapshot.
        let head = self
            .client
            .query_one(
                "SELECT pg_current_snapshot()::text, (extract(epoch from now()) * 1000000)::int8",
                &[],
            )
            .await
            .map_err(self.query_err())?;
        let snapshot = SnapshotInfo::parse(head.get::<_, &str>(0)).ok_or_else(|| {
            SnapshotError::Malformed {
                table: self.table.clone(),
                what: "a snapshot",
            }
        })?;
        let read_time: i64 = head.get(1);
        let stream = self
            .client
            .copy_out(sql.as_str())
            .await
            .map_err(self.query_err())?;
        let mut stream = std::pin::pin!(stream);
        let width = self.relation.columns.len();
        let mut rows = Vec::with_capacity(limit.min(100_000));
        // PostgreSQL sends a row per message: its cells are slices of it,
        // uncopied. Only a row split across messages is put together.
        let mut carry = BytesMut::new();
        while let Some(data) = stream.next().await {
            let mut data = data.map_err(self.query_err())?;
            if !carry.is_empty() {
                carry.extend_from_slice(&data);
                data = carry.split().freeze();
            }
            while let Some(end) = data.iter().position(|&b| b == b'\n') {
                let line = data.split_to(end + 1);
                rows.push(self.row(line.slice(..end), width, read_time)?);
            }
            carry.extend_from_slice(&data);
        }
        if !carry.is_empty() {
            rows.push(self.row(carry.freeze(), width, read_time)?);
        }
        let last_key = rows.last().map(|row: &ChunkRow| {
            self.key
                .iter()
                .map(|&k| match row.event.new.as_ref().and_then(|t| t.get(k)) {
                    Some(Cell::Text(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect()
        });
        Ok(Chunk {
            rows,
            snapshot,
            last_key,
        })
    }

    /// One line of COPY text: `xmin`, then the table's columns.
    fn row(&self, line: Bytes, width: usize, read_time: i64) -> Result<ChunkRow, SnapshotError> {
        let malformed = || SnapshotError::Malformed {
            table: self.table.clone(),
            what: "a COPY row",
        };
        let mut fields = copy_fields(&line);
        let xmin: u32 = fields
            .next()
            .and_then(|f| match f {
                Cell::Text(b) => std::str::from_utf8(&b).ok()?.parse().ok(),
                _ => None,
            })
            .ok_or_else(malformed)?;
        let cells: Vec<Cell> = fields.collect();
        if cells.len() != width {
            return Err(malformed());
        }
        let key = encode_key(self.key.iter().map(|&k| match cells.get(k) {
            Some(Cell::Text(b)) => Some(&b[..]),
            _ => None,
        }));
        Ok(ChunkRow {
            event: RecordEvent {
                relation: Arc::clone(&self.relation),
                op: Op::Read,
                commit_lsn: Lsn::ZERO,
                index: 0,
                xid: 0,
                commit_time: read_time,
                new: Some(Tuple(cells)),
                old: None,
            },
            version: RowVersion { key, xmin },
        })
    }

    /// Writes the chunk's high watermark (when given) inside its
    /// transaction, then ends it. The watermark's LSN when one was written.
    pub async fn finish_chunk(
        &mut self,
        watermark: Option<&str>,
    ) -> Result<Option<Lsn>, SnapshotError> {
        let lsn = match watermark {
            Some(content) => Some(self.emit(content).await),
            None => None,
        };
        let ended = self.client.batch_execute("COMMIT").await;
        self.open = false;
        let lsn = lsn.transpose()?;
        ended.map_err(self.query_err())?;
        if lsn.is_some() {
            self.flush().await?;
        }
        Ok(lsn)
    }

    /// Waits until none of `xids` (64-bit) is in progress any more.
    pub(crate) async fn wait_finished(&self, xids: &[u64]) -> Result<(), SnapshotError> {
        for &xid in xids {
            let mut every = std::time::Duration::from_millis(2);
            loop {
                let row = self
                    .client
                    .query_one(
                        "SELECT coalesce(pg_xact_status($1::text::xid8), 'aborted') <> 'in progress'",
                        &[&xid.to_string()],
                    )
                    .await
                    .map_err(self.query_err())?;
                if row.get::<_, bool>(0) {
                    break;
                }
                tokio::time::sleep(every).await;
                every = (every * 2).min(std::time::Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Gives the connection back, ending a chunk left open.
    pub async fn finish(self) -> Client {
        if self.open {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.client
    }
}

#[cfg(test)]
mod tests {
    use super::parse_key;

    #[test]
    fn copy_text_fields_are_unescaped_and_null_is_null() {
        let line = bytes::Bytes::from_static(b"12\\tplain\t\\N\ta\\tb\\\\c\\nd\t");
        let cells: Vec<crate::decode::Cell> = super::copy_fields(&line).collect();
        let text = |s: &str| crate::decode::Cell::Text(bytes::Bytes::from(s.to_string()));
        assert_eq!(
            cells,
            vec![
                text("12\tplain"),
                crate::decode::Cell::Null,
                text("a\tb\\c\nd"),
                text(""),
            ]
        );
    }

    #[test]
    fn a_key_is_its_text_or_a_json_array_of_its_columns() {
        assert_eq!(parse_key("42"), Ok(vec![Some("42".into())]));
        assert_eq!(
            parse_key(r#"["eu", 42]"#),
            Ok(vec![Some("eu".into()), Some("42".into())])
        );
        assert!(parse_key("[null]").is_err());
        assert!(parse_key("[1,").is_err());
    }
}
