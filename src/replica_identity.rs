//! A table's `REPLICA IDENTITY`, a PostgreSQL value both the catalog reads
//! (`pg::catalog`) and the stream's Relation messages (`decode`) carry.
//! A leaf module, so `pg/` need not import `decode/` for it.

/// A table's REPLICA IDENTITY setting, as the catalog (`relreplident`) and
/// the Relation message report it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: primary key columns in the old image.
    Default,
    /// `n`: no old image.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}
