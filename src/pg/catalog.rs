//! Catalog queries more than one part of walhook needs: a table's columns
//! with its primary key and replica identity (`walhook check`, the strategy
//! checks at startup, runs), which of a table's partitions lack a replica
//! identity, whether a publication carries a table, and the `CREATE
//! PUBLICATION` statement (`walhook setup`, its `check` fix, and the
//! publication created at startup).

use tokio_postgres::Client;

use super::quote::{quote_ident, quote_table};
use crate::config::TableName;
use crate::replica_identity::ReplicaIdentity;

/// A table's columns and what its old rows carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableCatalog {
    pub(crate) oid: u32,
    /// A partitioned table (its rows live in its partitions).
    pub(crate) partitioned: bool,
    pub(crate) replica_identity: ReplicaIdentity,
    /// In `attnum` order (dropped columns left out).
    pub(crate) columns: Vec<CatalogColumn>,
}

/// One column of a [`TableCatalog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogColumn {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
    pub(crate) type_modifier: i32,
    /// The type's schema and name (for types that are not built in).
    pub(crate) type_schema: String,
    pub(crate) type_name: String,
    /// `format_type(type, NULL)`: the type as SQL, for casts.
    pub(crate) type_sql: String,
    /// Where the column sits in the primary key (orders the key columns).
    pub(crate) primary_key: Option<i32>,
    /// Part of the index chosen by `REPLICA IDENTITY USING INDEX`.
    pub(crate) identity_index: bool,
    /// A generated column (`GENERATED ALWAYS AS … STORED`): logical
    /// replication sends it only from PostgreSQL 18, and only when asked.
    pub(crate) generated: bool,
}

impl TableCatalog {
    /// Positions (into `columns`) of the primary-key columns, in key order.
    pub(crate) fn primary_key(&self) -> Vec<usize> {
        let mut key: Vec<(i32, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(pos, c)| c.primary_key.map(|k| (k, pos)))
            .collect();
        key.sort_unstable();
        key.into_iter().map(|(_, pos)| pos).collect()
    }

    /// True when an UPDATE or DELETE sends the column's old value as part
    /// of the key (the primary key under DEFAULT, the index under USING
    /// INDEX; FULL sends every column, NOTHING none, neither as a key).
    pub(crate) fn in_identity_key(&self, column: &CatalogColumn) -> bool {
        match self.replica_identity {
            ReplicaIdentity::Default => column.primary_key.is_some(),
            ReplicaIdentity::Index => column.identity_index,
            ReplicaIdentity::Full | ReplicaIdentity::Nothing => false,
        }
    }

    /// The setting as `ALTER TABLE … REPLICA IDENTITY` spells it.
    pub(crate) fn identity_label(&self) -> &'static str {
        match self.replica_identity {
            ReplicaIdentity::Default => "DEFAULT",
            ReplicaIdentity::Nothing => "NOTHING",
            ReplicaIdentity::Full => "FULL",
            ReplicaIdentity::Index => "USING INDEX",
        }
    }
}

/// The columns, primary key and replica identity of an ordinary or
/// partitioned table; `None` when there is no such table.
pub(crate) async fn table_catalog(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableCatalog>, tokio_postgres::Error> {
    // One row per column; a table without columns still gives one row.
    let rows = client
        .query(
            "SELECT c.oid, c.relreplident::text, a.attname::text, a.atttypid, a.atttypmod, \
                    tn.nspname::text, t.typname::text, format_type(a.atttypid, NULL), \
                    array_position(pk.indkey::int2[], a.attnum), \
                    COALESCE(a.attnum = ANY (ri.indkey), false), c.relkind = 'p', \
                    COALESCE(a.attgenerated <> '', false) \
             FROM pg_class c \
             JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             LEFT JOIN (pg_attribute a \
                   JOIN pg_type t ON t.oid = a.atttypid \
                   JOIN pg_namespace tn ON tn.oid = t.typnamespace) \
               ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary \
             LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident \
             WHERE cn.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let identity: &str = first.try_get(1)?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(name) = row.try_get::<_, Option<String>>(2)? else {
            continue;
        };
        columns.push(CatalogColumn {
            name,
            type_oid: row.try_get(3)?,
            type_modifier: row.try_get(4)?,
            type_schema: row.try_get(5)?,
            type_name: row.try_get(6)?,
            type_sql: row.try_get(7)?,
            primary_key: row.try_get(8)?,
            identity_index: row.try_get(9)?,
            generated: row.try_get(11)?,
        });
    }
    Ok(Some(TableCatalog {
        oid: first.try_get(0)?,
        partitioned: first.try_get(10)?,
        replica_identity: match identity {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        },
        columns,
    }))
}

/// The leaf tables of `table` (itself when it is not partitioned) whose
/// UPDATE and DELETE a publication that carries them would make fail: no
/// primary key under REPLICA IDENTITY DEFAULT, or REPLICA IDENTITY NOTHING.
/// Empty when the table does not exist.
pub(crate) async fn leaves_without_identity(
    client: &Client,
    table: &TableName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!("{NO_IDENTITY_SQL} ORDER BY 1"),
            &[&quote_table(table)],
        )
        .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// The leaves without a replica identity of the table named by `$1`
/// (text), one name per row.
const NO_IDENTITY_SQL: &str = "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name \
     FROM (SELECT to_regclass($1) AS relid UNION SELECT relid FROM pg_partition_tree(to_regclass($1))) t \
     JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
       (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))";

/// The same as an SQL expression for a DO block: the leaves of `table` (a
/// text literal naming it) without a replica identity, comma-separated, or
/// NULL when there are none.
pub(crate) fn no_identity_list_sql(table_literal: &str) -> String {
    format!(
        "(SELECT string_agg(name, ', ' ORDER BY name) FROM ({}) AS leaves)",
        NO_IDENTITY_SQL.replace("$1", table_literal)
    )
}

/// The problem and the three ways out for tables without a replica
/// identity (`leaves`, as SQL names) that publication `publication` would
/// carry with its updates and deletes: shared by `walhook setup` (which
/// refuses), `walhook check` and `walhook run` (which does not create such
/// a publication).
pub(crate) fn no_identity_problem(leaves: &[String], publication: &str) -> (String, String) {
    let list = leaves.join(", ");
    let (noun, verb) = if leaves.len() == 1 {
        ("table", "has")
    } else {
        ("tables", "have")
    };
    let problem = format!(
        "{noun} {list} {verb} no replica identity (no primary key, or REPLICA IDENTITY NOTHING): \
         in publication {publication}, which publishes updates and deletes, the application's \
         UPDATE and DELETE on it fail (\"cannot update table … because it does not have a \
         replica identity and publishes updates\")"
    );
    let each = |what: &str| {
        leaves
            .iter()
            .map(|t| format!("ALTER TABLE {t} {what};"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let fix = format!(
        "choose one: (1) a primary key: {} (2) every column as the identity: {} \
         (3) if only the inserts of these tables are needed, follow them with a second \
         walhook, its own slot and its own publication: CREATE PUBLICATION <another name> FOR \
         TABLE … WITH (publish = 'insert'); not on publication {}: publish applies to every \
         table of a publication, so every other strategy on it would stop receiving updates \
         and deletes",
        each("ADD PRIMARY KEY (…)"),
        each("REPLICA IDENTITY FULL"),
        super::quote::readable_ident(publication),
    );
    (problem, fix)
}

/// SQL that is true when publication `publication` (a literal) carries
/// the changes of table `table` (a text literal naming it): the table
/// itself, one of its partitions or a partitioned ancestor is in it
/// (`pg_partition_tree` and `pg_partition_ancestors` list nothing for a
/// table that is not partitioned, hence the table itself).
/// `pg_publication_tables` alone is not enough: it lists a partitioned
/// table's leaves or its root, depending on publish_via_partition_root,
/// and `ALTER PUBLICATION … ADD TABLE` of an already covered table fails.
/// The publication must exist.
pub(crate) fn publishes_table_sql(publication: &str, table: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_get_publication_tables({publication}) AS p \
         WHERE p.relid IN (SELECT to_regclass({table}) \
                           UNION SELECT relid FROM pg_partition_tree(to_regclass({table})) \
                           UNION SELECT relid FROM pg_partition_ancestors(to_regclass({table}))))"
    )
}

/// `CREATE PUBLICATION "name" FOR TABLE "s"."t", … WITH
/// (publish_via_partition_root = true)` (no `FOR` clause without tables),
/// without a trailing semicolon. Partitioned tables' changes then arrive
/// under the partitioned table's name, the one strategies use.
pub(crate) fn create_publication_sql(name: &str, tables: &[TableName]) -> String {
    let mut sql = format!("CREATE PUBLICATION {}", quote_ident(name));
    if !tables.is_empty() {
        let list: Vec<String> = tables.iter().map(quote_table).collect();
        sql.push_str(" FOR TABLE ");
        sql.push_str(&list.join(", "));
    }
    sql.push_str(" WITH (publish_via_partition_root = true)");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, primary_key: Option<i32>, identity_index: bool) -> CatalogColumn {
        CatalogColumn {
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
            type_schema: "pg_catalog".into(),
            type_name: "int4".into(),
            type_sql: "integer".into(),
            primary_key,
            identity_index,
            generated: false,
        }
    }

    #[test]
    fn publication_sql_quotes_every_name() {
        let tables = [
            TableName::parse("public.orders").expect("table"),
            TableName::parse("Shop.it\"ems").expect("table"),
        ];
        assert_eq!(
            create_publication_sql("pub", &tables),
            r#"CREATE PUBLICATION "pub" FOR TABLE "public"."orders", "Shop"."it""ems" WITH (publish_via_partition_root = true)"#
        );
        assert_eq!(
            create_publication_sql("P b", &[]),
            r#"CREATE PUBLICATION "P b" WITH (publish_via_partition_root = true)"#
        );
    }

    #[test]
    fn key_columns_follow_the_replica_identity() {
        let mut table = TableCatalog {
            oid: 1,
            partitioned: false,
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("b", Some(2), false),
                column("x", None, true),
                column("a", Some(1), false),
            ],
        };
        assert_eq!(table.primary_key(), [2, 0]);
        let keys = |t: &TableCatalog| -> Vec<bool> {
            t.columns.iter().map(|c| t.in_identity_key(c)).collect()
        };
        assert_eq!(keys(&table), [true, false, true]);
        assert_eq!(table.identity_label(), "DEFAULT");
        table.replica_identity = ReplicaIdentity::Index;
        assert_eq!(keys(&table), [false, true, false]);
        assert_eq!(table.identity_label(), "USING INDEX");
        table.replica_identity = ReplicaIdentity::Full;
        assert_eq!(keys(&table), [false, false, false]);
        table.replica_identity = ReplicaIdentity::Nothing;
        assert_eq!(keys(&table), [false, false, false]);
    }
}
