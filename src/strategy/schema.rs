//! Startup checks of the strategies against the live schema, and creating
//! the publication when there is none.
//!
//! Why at startup: a filter on a column the table lacks, or on `old.status`
//! of a table that sends only its key, would otherwise fail on every change
//! (counted, logged, never matched). Checking the catalog first turns that
//! into one error that names the strategy, the field and the SQL that fixes it.
//!
//! walhook creates the publication `FOR TABLE <every strategy's table>` when
//! it does not exist, and never alters an existing one: a table missing from
//! it is a problem whose fix is the `ALTER PUBLICATION` to run.

use crate::error_class::{Classify, ErrorClass};
use std::collections::BTreeSet;
use std::fmt;

use tokio_postgres::Client;

use super::expr::{referenced_columns, ColumnRef, Image};
use crate::config::{Config, Ordering, StrategyConfig, TableName, Template};
use crate::decode::ReplicaIdentity;
use crate::pg::{self, readable_ident, readable_table, TableCatalog};

/// One mismatch between a strategy and the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    /// The strategy's name.
    pub strategy: String,
    /// The config field, e.g. `strategies[0].on_update` or `strategies[0].table`.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it (often the exact SQL).
    pub fix: String,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (strategy {}): {}; fix: {}",
            self.path, self.strategy, self.problem, self.fix
        )
    }
}

/// A catalog query or the publication's creation failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("reading the catalog failed: {}", pg::describe(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error("creating publication {publication} failed: {}{}", pg::describe(.source), create_hint(.source))]
    Create {
        publication: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Creating the publication would make the application's UPDATE and
    /// DELETE on these tables fail; walhook does not.
    #[error("walhook did not create publication {publication}: {problem}; fix: {fix}")]
    WouldBreakWrites {
        publication: String,
        problem: String,
        fix: String,
    },
}

impl Classify for SchemaError {
    /// Needs the operator when the database must change first (restarting
    /// will not help); a failed catalog query stops the process.
    fn class(&self) -> ErrorClass {
        match self {
            SchemaError::WouldBreakWrites { .. } => ErrorClass::NeedsOperator,
            SchemaError::Create { source, .. }
                if source.code()
                    == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                ErrorClass::NeedsOperator
            }
            SchemaError::Create { .. } | SchemaError::Query(_) => ErrorClass::Fatal,
        }
    }
}

/// What to do when the role may not create the publication.
fn create_hint(err: &tokio_postgres::Error) -> &'static str {
    if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        ". Creating a publication needs CREATE on the database and ownership of the tables, \
         which the role walhook runs as should not have: have an administrator run the SQL of \
         `walhook setup --print-sql -c <config>` (psql -v ON_ERROR_STOP=1 -f)"
    } else {
        ""
    }
}

/// What [`ensure_publication`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationOutcome {
    /// The publication did not exist and was created for these tables.
    Created { tables: Vec<TableName> },
    /// It exists; it was left as it is.
    Existing,
}

/// Checks every strategy against the database behind `client`: the table
/// exists, is in the publication (when it exists) and the publication sends
/// the strategy's operations, every referenced column exists, and reading
/// old values of non-key columns has REPLICA IDENTITY FULL. Expressions
/// that do not compile are skipped (config checking reports them).
pub async fn validate_schema(
    client: &Client,
    config: &Config,
) -> Result<Vec<SchemaProblem>, SchemaError> {
    let publication_name = &config.source.publication;
    let publication = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot \
             FROM pg_publication WHERE pubname = $1",
            &[publication_name],
        )
        .await
        .map_err(SchemaError::Query)?
        .map(|row| -> [bool; 5] { [row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)] });
    let generated = generated_columns(client, publication_name).await?;
    let mut problems = Vec::new();
    for (i, strategy) in config.strategies.iter().enumerate() {
        let base = format!("strategies[{i}]");
        let problem = |path: String, problem: String, fix: String| SchemaProblem {
            strategy: strategy.name.clone(),
            path,
            problem,
            fix,
        };
        let Some(table) = &strategy.table else {
            continue;
        };
        let Some(info) = pg::table_catalog(client, table)
            .await
            .map_err(SchemaError::Query)?
        else {
            problems.push(problem(
                format!("{base}.table"),
                format!("table {table} does not exist"),
                "create it, or correct `table` (schema.table, spelled as in the catalog)"
                    .to_string(),
            ));
            continue;
        };
        if let Some(actions) = publication {
            let published: bool = client
                .query_one(
                    &format!("SELECT {}", pg::publishes_table_sql("$1", "$2")),
                    &[publication_name, &pg::quote_table(table)],
                )
                .await
                .map_err(SchemaError::Query)?
                .get(0);
            if published && info.partitioned && !actions[4] {
                problems.push(problem(
                    format!("{base}.table"),
                    format!(
                        "{table} is partitioned, and publication {publication_name} publishes its \
                         partitions' changes under the partitions' own names \
                         (publish_via_partition_root is off), so this strategy would receive none"
                    ),
                    format!(
                        "ALTER PUBLICATION {} SET (publish_via_partition_root = true);",
                        readable_ident(publication_name)
                    ),
                ));
            }
            if !published {
                problems.push(problem(
                    format!("{base}.table"),
                    format!(
                        "table {table} is not in publication {publication_name} (walhook never \
                         alters an existing publication)"
                    ),
                    format!(
                        "ALTER PUBLICATION {} ADD TABLE {};",
                        readable_ident(publication_name),
                        readable_table(table)
                    ),
                ));
            }
            let wanted = [
                ("on_insert", strategy.on_insert.is_some(), actions[0]),
                ("on_update", strategy.on_update.is_some(), actions[1]),
                ("on_delete", strategy.on_delete.is_some(), actions[2]),
                ("on_truncate", strategy.on_truncate.is_some(), actions[3]),
            ];
            for (field, want, sent) in wanted {
                if want && !sent {
                    let op = field.trim_start_matches("on_");
                    problems.push(problem(
                        format!("{base}.{field}"),
                        format!("publication {publication_name} does not publish {op}s"),
                        format!(
                            "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                            readable_ident(publication_name)
                        ),
                    ));
                }
            }
        }
        check_columns(strategy, &base, &info, &generated, &mut problems);
        if strategy.ordering == Ordering::Key
            && strategy.group_by.is_none()
            && group_key(&info).is_empty()
        {
            problems.push(problem(
                format!("{base}.ordering"),
                format!(
                    "table {table} has no primary key and no REPLICA IDENTITY index, so there is \
                     no key to keep the order of"
                ),
                format!(
                    "set group_by (e.g. group_by = \"row.customer_id\"), add a primary key to \
                     {}, or use ordering = \"commit\"",
                    readable_table(table)
                ),
            ));
        }
    }
    Ok(problems)
}

/// Whether the stream carries generated columns: only from PostgreSQL 18,
/// and only when the publication says `publish_generated_columns = stored`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GeneratedColumns {
    /// `server_version` (text), for the message.
    version: String,
    version_num: i32,
    published: bool,
    /// The publication's name, for the fix.
    publication: String,
}

async fn generated_columns(
    client: &Client,
    publication: &str,
) -> Result<GeneratedColumns, SchemaError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(SchemaError::Query)?;
    let version: String = row.get(0);
    let version_num: i32 = row.get(1);
    let published = version_num >= 180_000
        && client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1 AND pubgencols::text = 's'",
                &[&publication],
            )
            .await
            .map_err(SchemaError::Query)?
            .is_some();
    Ok(GeneratedColumns {
        version,
        version_num,
        published,
        publication: publication.to_string(),
    })
}

/// The strategy's table for messages (checks run on table strategies only).
fn display_table(strategy: &StrategyConfig) -> String {
    strategy
        .table
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// A stream expression reads a generated column that is not sent.
fn generated_problem(
    strategy: &StrategyConfig,
    path: &str,
    column: &str,
    generated: &GeneratedColumns,
) -> SchemaProblem {
    let table = display_table(strategy);
    let (problem, fix) = if generated.version_num < 180_000 {
        (
            format!(
                "column {column} of table {table} is a generated column, and logical replication \
                 does not send generated columns before PostgreSQL 18 (this server runs {}), so \
                 the expression cannot read it",
                generated.version
            ),
            "compute the value in the expression from the columns it is generated from, or \
             upgrade to PostgreSQL 18 and publish generated columns"
                .to_string(),
        )
    } else {
        (
            format!(
                "column {column} of table {table} is a generated column, and publication {} \
                 does not publish generated columns, so the expression cannot read it",
                readable_ident(&generated.publication)
            ),
            format!(
                "ALTER PUBLICATION {} SET (publish_generated_columns = stored); or compute the \
                 value in the expression from the columns it is generated from",
                readable_ident(&generated.publication)
            ),
        )
    };
    SchemaProblem {
        strategy: strategy.name.clone(),
        path: path.to_string(),
        problem,
        fix,
    }
}

/// The key `ordering = "key"` groups by when there is no `group_by`: the
/// REPLICA IDENTITY index's columns, else the primary key's (deletes and
/// key-changing updates send exactly these in their old row).
fn group_key(info: &TableCatalog) -> Vec<usize> {
    if info.replica_identity == ReplicaIdentity::Index {
        let index: Vec<usize> = info
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.identity_index)
            .map(|(i, _)| i)
            .collect();
        if !index.is_empty() {
            return index;
        }
    }
    info.primary_key()
}

/// For each strategy (in config order), the columns it groups by under
/// `ordering = "key"` without `group_by` (empty for the others).
pub(crate) async fn group_columns(
    client: &Client,
    config: &Config,
) -> Result<Vec<Vec<String>>, SchemaError> {
    let mut out = Vec::with_capacity(config.strategies.len());
    for strategy in &config.strategies {
        let Some(table) = &strategy.table else {
            out.push(Vec::new());
            continue;
        };
        if strategy.ordering != Ordering::Key || strategy.group_by.is_some() {
            out.push(Vec::new());
            continue;
        }
        let info = pg::table_catalog(client, table)
            .await
            .map_err(SchemaError::Query)?;
        out.push(info.map_or_else(Vec::new, |info| {
            group_key(&info)
                .into_iter()
                .filter_map(|i| info.columns.get(i).map(|c| c.name.clone()))
                .collect()
        }));
    }
    Ok(out)
}

/// The expressions of a strategy that read rows, with their paths and
/// whether `row.*` can mean the old row (a delete).
fn row_expressions<'a>(strategy: &'a StrategyConfig, base: &str) -> Vec<(String, &'a str, bool)> {
    let mut out = Vec::new();
    let deletes = strategy.on_delete.is_some();
    for (field, filter, row_is_old) in [
        ("on_insert", &strategy.on_insert, false),
        ("on_update", &strategy.on_update, false),
        ("on_delete", &strategy.on_delete, true),
        ("on_truncate", &strategy.on_truncate, false),
    ] {
        if let Some(expr) = filter {
            out.push((format!("{base}.{field}"), expr.as_str(), row_is_old));
        }
    }
    for (key, template) in strategy.record.iter().flatten() {
        if let Template::Expr(expr) = template {
            out.push((format!("{base}.record.{key}"), expr.as_str(), deletes));
        }
    }
    if let Some(expr) = &strategy.group_by {
        out.push((format!("{base}.group_by"), expr.as_str(), deletes));
    }
    for (j, schedule) in strategy.schedules.iter().enumerate() {
        if let Some(expr) = &schedule.filter {
            out.push((
                format!("{base}.schedules[{j}].filter"),
                expr.as_str(),
                false,
            ));
        }
    }
    out
}

fn check_columns(
    strategy: &StrategyConfig,
    base: &str,
    info: &TableCatalog,
    generated: &GeneratedColumns,
    problems: &mut Vec<SchemaProblem>,
) {
    let Some(table) = &strategy.table else {
        return;
    };
    let full = info.replica_identity == ReplicaIdentity::Full;
    let identity = info.identity_label();
    for (path, expr, row_is_old) in row_expressions(strategy, base) {
        let Ok(columns) = referenced_columns(expr) else {
            continue;
        };
        let mut reported = BTreeSet::new();
        for ColumnRef { image, column } in columns {
            let Some(found) = info.columns.iter().find(|c| c.name == column) else {
                if reported.insert(column.clone()) {
                    let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
                    problems.push(SchemaProblem {
                        strategy: strategy.name.clone(),
                        path: path.clone(),
                        problem: format!("table {table} has no column {column:?}"),
                        fix: format!("use one of its columns: {}", names.join(", ")),
                    });
                }
                continue;
            };
            // Scheduled runs read the table with SQL, where generated
            // columns are there; the stream has them only when published.
            let streamed = !path.contains(".schedules[");
            if found.generated
                && streamed
                && !generated.published
                && reported.insert(column.clone())
            {
                problems.push(generated_problem(strategy, &path, &column, generated));
                continue;
            }
            let reads_old = image == Image::Old || (image == Image::Row && row_is_old);
            let key = info.in_identity_key(found);
            if reads_old && !key && !full && reported.insert(column.clone()) {
                let how = if image == Image::Old {
                    format!("old.{column} (or changed(\"{column}\"))")
                } else {
                    format!("row.{column} of deletes")
                };
                problems.push(SchemaProblem {
                    strategy: strategy.name.clone(),
                    path: path.clone(),
                    problem: format!(
                        "table {table} has REPLICA IDENTITY {identity}, so the old value of \
                         non-key column {column} is not sent and {how} cannot be read"
                    ),
                    fix: format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL; or use new.* only",
                        readable_table(table)
                    ),
                });
            }
        }
    }
}

/// Creates `config.source.publication` for every strategy's table when it
/// does not exist; never alters an existing one. Run [`validate_schema`]
/// first so missing tables are reported as problems, not as a failed CREATE.
pub async fn ensure_publication(
    client: &Client,
    config: &Config,
) -> Result<PublicationOutcome, SchemaError> {
    let name = &config.source.publication;
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(SchemaError::Query)?
        .is_some();
    if exists {
        return Ok(PublicationOutcome::Existing);
    }
    let tables: Vec<TableName> = config
        .strategies
        .iter()
        .filter_map(|s| s.table.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A table without a replica identity in a publication that carries
    // updates and deletes makes the application's UPDATE and DELETE fail.
    let mut leaves = Vec::new();
    for table in &tables {
        leaves.extend(
            pg::leaves_without_identity(client, table)
                .await
                .map_err(SchemaError::Query)?,
        );
    }
    if !leaves.is_empty() {
        let (problem, fix) = pg::no_identity_problem(&leaves, name);
        return Err(SchemaError::WouldBreakWrites {
            publication: name.clone(),
            problem,
            fix,
        });
    }
    let sql = pg::create_publication_sql(name, &tables);
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(PublicationOutcome::Created { tables }),
        // Another instance created it meanwhile.
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            Ok(PublicationOutcome::Existing)
        }
        Err(source) => Err(SchemaError::Create {
            publication: name.clone(),
            source,
        }),
    }
}
