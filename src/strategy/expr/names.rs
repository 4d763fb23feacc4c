//! What the names in an expression stand for: `new.<col>`, `old.<col>`,
//! `row.<col>`, the envelope's values, a batch's values and a message's,
//! and which role may read which (checked once at compile time).

use crate::config::{ExprRole, FilterOp};

/// Which row image a column reference reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Image {
    /// `new.<col>`.
    New,
    /// `old.<col>` (and the old half of `changed("col")`).
    Old,
    /// `row.<col>`: new for inserts and updates, old for deletes.
    Row,
}

/// A column an expression reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ColumnRef {
    pub(crate) image: Image,
    pub(crate) column: String,
}

impl std::fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = match self.image {
            Image::New => "new",
            Image::Old => "old",
            Image::Row => "row",
        };
        write!(f, "{prefix}.{}", self.column)
    }
}

/// What a variable name in an expression stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Name {
    Column(Image, String),
    Op,
    Table,
    Schema,
    RecordId,
    Lsn,
    Xid,
    CommitTime,
    BatchSize,
    BatchFirstLsn,
    BatchLastLsn,
    BatchId,
    Strategy,
    MessagePrefix,
    MessageContent,
    MessageTransactional,
}

pub(super) fn split_column(ident: &str) -> Option<(Image, &str)> {
    let (prefix, column) = ident.split_once('.')?;
    let image = match prefix {
        "new" => Image::New,
        "old" => Image::Old,
        "row" => Image::Row,
        _ => return None,
    };
    Some((image, column))
}

pub(super) fn parse_name(ident: &str, role: ExprRole) -> Result<Name, String> {
    if role == ExprRole::Message {
        return match ident {
            "message.prefix" => Ok(Name::MessagePrefix),
            "message.content" => Ok(Name::MessageContent),
            "message.transactional" => Ok(Name::MessageTransactional),
            _ => Err(format!(
                "unknown name `{ident}`: on_message sees message.prefix, message.content (the \
                 content as text; json(message.content, \"path\") reads into JSON) and \
                 message.transactional (text needs double quotes: \"{ident}\")"
            )),
        };
    }
    let row_role = !matches!(role, ExprRole::Batch);
    if let Some((image, column)) = split_column(ident) {
        if column.is_empty() {
            return Err(format!("`{ident}` names no column"));
        }
        match (role, image) {
            (ExprRole::Batch, _) => {
                return Err(format!(
                    "`{ident}`: header, query and body values are computed per batch and see \
                     batch.size, batch.first_lsn, batch.last_lsn, batch.id, strategy and now(), \
                     not rows; map row values in `record`"
                ))
            }
            (ExprRole::Filter(FilterOp::Insert), Image::Old) => {
                return Err(format!(
                    "`{ident}`: inserts have no old row; use new.{column} or row.{column}"
                ))
            }
            (ExprRole::Filter(FilterOp::Delete), Image::New) => {
                return Err(format!(
                    "`{ident}`: deletes have no new row; use old.{column} or row.{column}"
                ))
            }
            (ExprRole::Filter(FilterOp::Truncate), _) => {
                return Err(format!(
                    "`{ident}`: truncates have no row; on_truncate sees op, table and schema"
                ))
            }
            (ExprRole::ScheduleFilter, Image::New | Image::Old) => {
                return Err(format!(
                    "`{ident}`: scheduled runs read current rows; use row.{column}"
                ))
            }
            _ => {}
        }
        return Ok(Name::Column(image, column.to_string()));
    }
    let name = match ident {
        "op" if row_role => Name::Op,
        "table" if row_role => Name::Table,
        "schema" if row_role => Name::Schema,
        "id" if row_role => Name::RecordId,
        "lsn" if row_role => Name::Lsn,
        "xid" if row_role => Name::Xid,
        "commit_time" if row_role => Name::CommitTime,
        "batch.size" if !row_role => Name::BatchSize,
        "batch.first_lsn" if !row_role => Name::BatchFirstLsn,
        "batch.last_lsn" if !row_role => Name::BatchLastLsn,
        "batch.id" if !row_role => Name::BatchId,
        "strategy" if !row_role => Name::Strategy,
        _ if row_role => {
            return Err(format!(
                "unknown name `{ident}`: expressions on rows see new.<column>, old.<column>, \
                 row.<column>, op, table, schema, id, lsn, xid and commit_time (text needs \
                 double quotes: \"{ident}\")"
            ))
        }
        _ => {
            return Err(format!(
                "unknown name `{ident}`: per-batch values see batch.size, batch.first_lsn, \
                 batch.last_lsn, batch.id, strategy and now() (text needs double quotes: \"{ident}\")"
            ))
        }
    };
    Ok(name)
}
