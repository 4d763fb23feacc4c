//! The record event model shared by every later stage.

use std::sync::Arc;

use bytes::Bytes;

use crate::lsn::Lsn;
pub use crate::replica_identity::ReplicaIdentity;

/// What happened to a row.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A row read by an on-demand or scheduled run, not a change.
    Read,
}

impl Op {
    /// The payload spelling: `insert`, `update`, `delete`, `truncate`, `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Read => "read",
        }
    }
}

/// How a column's text value becomes JSON (and a filter value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    /// int2, int4, int8, oid: exact JSON integers.
    Int,
    /// float4, float8: JSON numbers; NaN and ±Infinity as strings.
    Float,
    /// numeric: exact JSON number text; NaN and ±Infinity as strings.
    Numeric,
    /// json, jsonb: embedded as-is.
    Json,
    /// bytea: `\x…` hex → base64 string.
    Bytea,
    /// timestamp without time zone: `YYYY-MM-DDTHH:MM:SS[.ffffff]` (no offset).
    Timestamp,
    /// timestamptz: RFC 3339 in UTC (`…Z`).
    Timestamptz,
    /// Any type whose text form is used unchanged as a JSON string (text,
    /// varchar, uuid, date, time, interval, inet, enums, unknown types…).
    Text,
    /// An array whose elements are of the inner kind.
    Array(Box<TypeKind>),
}

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub key: bool,
    pub kind: TypeKind,
}

/// A published table, as the latest Relation message described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl Relation {
    /// Position of the column with this name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// An unchanged TOASTed value the server did not send.
    Unchanged,
    /// The type's text output, UTF-8; a slice of the received buffer.
    Text(Bytes),
    /// The type's binary send() output (binary mode only).
    Binary(Bytes),
}

/// A row image: one cell per column of the relation, in column order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Cell>);

impl Tuple {
    /// The cell at a column position (see [`Relation::column_index`]).
    pub fn get(&self, index: usize) -> Option<&Cell> {
        self.0.get(index)
    }
}

/// One committed change to one row (or one truncated table). Its payload
/// form (`id()`, `write_json()`) is written by `batch/payload.rs`, the one
/// place that knows the payload's shape.
#[derive(Clone, Debug)]
pub struct RecordEvent {
    pub relation: Arc<Relation>,
    pub op: Op,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Position of this change in its transaction, from 0.
    pub index: u32,
    pub xid: u32,
    /// Commit time, µs since the Unix epoch.
    pub commit_time: i64,
    /// New image: inserts and updates (and reads).
    pub new: Option<Tuple>,
    /// Old image: deletes, and updates when the replica identity sends one.
    /// Under DEFAULT/INDEX identity only key columns are present; the
    /// others are `Cell::Null` meaning "not sent", see `RecordEvent::old_is_key_only`.
    pub old: Option<Tuple>,
}

impl RecordEvent {
    /// True when `old` holds only the replica identity key columns.
    pub(crate) fn old_is_key_only(&self) -> bool {
        self.relation.replica_identity != ReplicaIdentity::Full
    }

    /// Names of the columns whose new value is an unchanged TOASTed value
    /// the server did not send (the payload's `unchanged_toast`).
    pub(crate) fn unchanged_toast(&self) -> impl Iterator<Item = &str> {
        let cells = self.new.as_ref().map_or(&[][..], |t| &t.0[..]);
        self.relation
            .columns
            .iter()
            .zip(cells)
            .filter(|(_, cell)| **cell == Cell::Unchanged)
            .map(|(col, _)| col.name.as_str())
    }
}

/// What the decoder hands downstream, in WAL order.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// A transaction starts. Its changes follow, then `Commit`.
    Begin {
        xid: u32,
        commit_lsn: Lsn,
        /// µs since the Unix epoch.
        commit_time: i64,
    },
    /// One change of the current transaction.
    Record(RecordEvent),
    /// The current transaction ends. `end_lsn` is the position to acknowledge
    /// once everything in it has been delivered.
    Commit { commit_lsn: Lsn, end_lsn: Lsn },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: Lsn,
        /// Position in its transaction among records and messages (so the
        /// delivered id `<commit LSN>:<index>` is unique); 0 when not
        /// transactional.
        index: u32,
        prefix: String,
        content: Bytes,
    },
}
