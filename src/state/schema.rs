//! The state schema itself: the SQL that creates it (`sql/state.sql`, the
//! one schema file, read here and by `sql/setup.sql`), and the inspection
//! that tells `walhook run` and `walhook check` alike whether the role
//! walhook connects as can use it.
//!
//! Why an inspection and not just `CREATE … IF NOT EXISTS`: PostgreSQL
//! checks the privilege before the existence, so `CREATE SCHEMA IF NOT
//! EXISTS` fails without CREATE on the database even when the schema is
//! there. A DBA who ran the setup SQL gives walhook's role only USAGE on the
//! schema and SELECT, INSERT, UPDATE, DELETE on its tables; walhook then
//! runs no DDL at all. It creates what is missing only when it may (its own
//! schema, or CREATE on the database), and otherwise names the object, the
//! role and the statement that fixes it.

use std::fmt;

use tokio_postgres::Client;

use crate::pg::{quote_ident, readable_ident};

/// `sql/state.sql`, with psql variables (`:"state_schema"`, `:"state_role"`)
/// and meta-commands.
const SCHEMA_FILE: &str = include_str!("../../sql/state.sql");

/// The default schema name.
pub(crate) const DEFAULT_SCHEMA: &str = "walhook";

/// Privileges the role needs on every table of the schema.
const TABLE_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// What a statement of the schema file creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `CREATE SCHEMA`, `COMMENT ON SCHEMA`: need CREATE on the database or
    /// ownership; skipped when the schema exists.
    Schema,
    /// Tables and indexes.
    Objects,
    /// The grants to the role walhook runs as.
    Grants,
}

/// The statements of `sql/state.sql` for `schema`, with the grants to
/// `role` when one is given; psql meta-commands left out.
fn statements(schema: &str, role: Option<&str>) -> Vec<(Part, String)> {
    let schema_ident = quote_ident(schema);
    let role_ident = role.map(quote_ident);
    let mut out = Vec::new();
    let mut grants = false;
    let mut current = String::new();
    for line in SCHEMA_FILE.lines() {
        let trimmed = line.trim();
        if let Some(meta) = trimmed.strip_prefix('\\') {
            if meta.starts_with("if :{?state_role}") {
                grants = true;
            } else if meta.starts_with("endif") {
                grants = false;
            }
            continue;
        }
        if grants && role_ident.is_none() {
            continue;
        }
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with("--")) {
            continue;
        }
        let mut line = line.replace(":\"state_schema\"", &schema_ident);
        if let Some(role) = &role_ident {
            line = line.replace(":\"state_role\"", role);
        }
        current.push_str(&line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let sql = std::mem::take(&mut current).trim_end().to_string();
            let part = if grants {
                Part::Grants
            } else if sql.starts_with("CREATE SCHEMA") || sql.starts_with("COMMENT ON SCHEMA") {
                Part::Schema
            } else {
                Part::Objects
            };
            out.push((part, sql));
        }
    }
    out
}

/// The whole schema SQL for `schema`, granting `role` what it needs (for
/// `walhook setup` and its `--print-sql`).
pub(crate) fn setup_sql(schema: &str, role: &str) -> String {
    statements(schema, Some(role))
        .into_iter()
        .map(|(_, sql)| sql)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tables the schema file creates, each with its columns, in file
/// order (`CREATE TABLE` column lines and `ALTER TABLE … ADD COLUMN`).
fn expected_tables() -> Vec<(String, Vec<String>)> {
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for (part, sql) in statements(DEFAULT_SCHEMA, None) {
        if part != Part::Objects {
            continue;
        }
        let prefix = "CREATE TABLE IF NOT EXISTS \"walhook\".";
        if let Some(rest) = sql.strip_prefix(prefix) {
            let name = rest.split([' ', '(']).next().unwrap_or("").to_string();
            let mut columns = Vec::new();
            for line in sql.lines().skip(1) {
                let word = line.split_whitespace().next().unwrap_or("");
                let is_column = word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !word.is_empty()
                    && !["primary", "unique", "constraint", "check", "foreign"].contains(&word);
                if is_column {
                    columns.push(word.to_string());
                }
            }
            tables.push((name, columns));
        } else if let Some(rest) = sql.strip_prefix("ALTER TABLE \"walhook\".") {
            let name = rest.split_whitespace().next().unwrap_or("");
            let added = rest
                .split("ADD COLUMN IF NOT EXISTS ")
                .skip(1)
                .filter_map(|c| c.split_whitespace().next());
            if let Some((_, columns)) = tables.iter_mut().find(|(t, _)| t == name) {
                for column in added {
                    if !columns.iter().any(|c| c == column) {
                        columns.push(column.to_string());
                    }
                }
            }
        }
    }
    tables
}

/// One thing in the way of using the state schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateProblem {
    /// The object: `schema walhook`, `table walhook.runs`, …
    pub object: String,
    /// What is wrong, naming the role.
    pub problem: String,
    /// The statement (or command) that fixes it.
    pub fix: String,
}

impl fmt::Display for StateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.object, self.problem, self.fix)
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
pub(crate) struct Inspection {
    pub(crate) role: String,
    pub(crate) database: String,
    pub(crate) schema: String,
    pub(crate) schema_exists: bool,
    /// The role may create what is missing: CREATE on the schema when it
    /// exists, on the database when it does not.
    may_create: bool,
    /// Tables (and `table.column`s) the schema file creates that are not there.
    missing: Vec<String>,
    /// Objects the role lacks privileges on, with the GRANT for each.
    privileges: Vec<StateProblem>,
}

impl Inspection {
    /// True when tables or columns (or the schema) are missing.
    pub(crate) fn incomplete(&self) -> bool {
        !self.schema_exists || !self.missing.is_empty()
    }

    /// True when the role can create what is missing itself.
    pub(crate) fn may_create(&self) -> bool {
        self.may_create
    }

    /// How many tables the schema holds of those walhook needs.
    pub(crate) fn table_count(&self) -> usize {
        expected_tables().len()
    }

    /// Everything that stops the role from using the schema, each with its fix.
    pub(crate) fn problems(&self) -> Vec<StateProblem> {
        let schema = readable_ident(&self.schema);
        let role = readable_ident(&self.role);
        let database = readable_ident(&self.database);
        let setup =
            "run the setup SQL as an administrator (walhook setup --print-sql -c config.toml, \
                     then psql -v ON_ERROR_STOP=1 -f)";
        let mut out = Vec::new();
        if !self.schema_exists {
            if !self.may_create {
                out.push(StateProblem {
                    object: format!("schema {schema}"),
                    problem: format!(
                        "the state schema does not exist in database {database}, and role {role} \
                         may not create it (no CREATE on the database; walhook never needs that)"
                    ),
                    fix: format!(
                        "{setup}; or, as an administrator in database {database}: \
                         CREATE SCHEMA {schema} AUTHORIZATION {role};"
                    ),
                });
            }
            return out;
        }
        if !self.missing.is_empty() && !self.may_create {
            out.push(StateProblem {
                object: format!("schema {schema}"),
                problem: format!(
                    "{} missing (an older setup, or another walhook version), and role {role} \
                     may not create tables in schema {schema}",
                    self.missing
                        .iter()
                        .map(|m| format!("{schema}.{m}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if self.missing.len() == 1 {
                            " is"
                        } else {
                            " are"
                        }
                ),
                fix: setup.to_string(),
            });
        }
        out.extend(self.privileges.iter().cloned());
        out
    }
}

/// Reads what the schema holds and what the current role may do with it.
pub(crate) async fn inspect(
    client: &Client,
    schema: &str,
) -> Result<Inspection, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, n.oid IS NOT NULL, \
                    CASE WHEN n.oid IS NULL \
                         THEN has_database_privilege(current_database(), 'CREATE') \
                         ELSE has_schema_privilege(n.oid, 'CREATE') END, \
                    COALESCE(has_schema_privilege(n.oid, 'USAGE'), false) \
             FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = $1",
            &[&schema],
        )
        .await?;
    let role: String = row.try_get(0)?;
    let database: String = row.try_get(1)?;
    let schema_exists: bool = row.try_get(2)?;
    let may_create: bool = row.try_get(3)?;
    let usage: bool = row.try_get(4)?;
    let mut inspection = Inspection {
        role,
        database,
        schema: schema.to_string(),
        schema_exists,
        may_create,
        missing: Vec::new(),
        privileges: Vec::new(),
    };
    if !schema_exists {
        inspection.missing = expected_tables().into_iter().map(|(t, _)| t).collect();
        return Ok(inspection);
    }
    let role = readable_ident(&inspection.role);
    let schema_name = readable_ident(schema);
    if !usage {
        inspection.privileges.push(StateProblem {
            object: format!("schema {schema_name}"),
            problem: format!("role {role} has no USAGE on the state schema"),
            fix: format!("GRANT USAGE ON SCHEMA {schema_name} TO {role};"),
        });
    }
    // Tables with their columns and privileges, and every sequence.
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind::text, \
                    ARRAY(SELECT a.attname::text FROM pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
                    CASE WHEN c.relkind = 'S' THEN ARRAY[has_sequence_privilege(c.oid, 'USAGE')] \
                         ELSE ARRAY[has_table_privilege(c.oid, 'SELECT'), \
                                    has_table_privilege(c.oid, 'INSERT'), \
                                    has_table_privilege(c.oid, 'UPDATE'), \
                                    has_table_privilege(c.oid, 'DELETE')] END \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'S') ORDER BY c.relname",
            &[&schema],
        )
        .await?;
    let mut found = Vec::new();
    for row in &rows {
        let name: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let columns: Vec<String> = row.try_get(2)?;
        let granted: Vec<bool> = row.try_get(3)?;
        let object = format!("{schema_name}.{}", readable_ident(&name));
        if kind == "S" {
            if !granted.first().copied().unwrap_or(false) {
                inspection.privileges.push(StateProblem {
                    object: format!("sequence {object}"),
                    problem: format!(
                        "role {role} has no USAGE on it (it numbers new rows of its table)"
                    ),
                    fix: format!("GRANT USAGE, SELECT ON SEQUENCE {object} TO {role};"),
                });
            }
            continue;
        }
        let lacking: Vec<&str> = TABLE_PRIVILEGES
            .iter()
            .zip(&granted)
            .filter(|(_, ok)| !**ok)
            .map(|(p, _)| *p)
            .collect();
        found.push((name, columns, lacking));
    }
    for (table, columns) in expected_tables() {
        match found.iter().find(|(name, _, _)| *name == table) {
            None => inspection.missing.push(table),
            Some((_, present, lacking)) => {
                for column in columns {
                    if !present.contains(&column) {
                        inspection.missing.push(format!("{table}.{column}"));
                    }
                }
                if !lacking.is_empty() {
                    let object = format!("{schema_name}.{}", readable_ident(&table));
                    inspection.privileges.push(StateProblem {
                        object: format!("table {object}"),
                        problem: format!("role {role} lacks {} on it", lacking.join(", ")),
                        fix: format!(
                            "GRANT {} ON {object} TO {role};",
                            TABLE_PRIVILEGES.join(", ")
                        ),
                    });
                }
            }
        }
    }
    Ok(inspection)
}

/// Creates what is missing: the whole file, without the schema statements
/// when the schema exists and without grants (the role owns what it creates).
pub(crate) async fn create(
    client: &Client,
    schema: &str,
    schema_exists: bool,
) -> Result<(), tokio_postgres::Error> {
    let sql: Vec<String> = statements(schema, None)
        .into_iter()
        .filter(|(part, _)| !(schema_exists && *part == Part::Schema))
        .map(|(_, sql)| sql)
        .collect();
    client.batch_execute(&sql.join("\n")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_becomes_statements_for_any_schema_and_role() {
        let plain = statements("wh_state", None);
        assert!(plain.iter().all(|(part, _)| *part != Part::Grants));
        assert_eq!(plain[0].0, Part::Schema);
        assert_eq!(plain[0].1, "CREATE SCHEMA IF NOT EXISTS \"wh_state\";");
        assert!(plain.iter().all(|(_, sql)| !sql.contains(":\"")
            && !sql.contains('\\')
            && !sql.contains("walhook.")));
        let with_role = setup_sql("walhook", "app");
        assert!(with_role.contains("CREATE TABLE IF NOT EXISTS \"walhook\".dead_letters ("));
        assert!(with_role
            .ends_with("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA \"walhook\" TO \"app\";"));
        assert!(with_role.contains(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"walhook\" TO \"app\";"
        ));
    }

    #[test]
    fn the_expected_tables_and_columns_come_from_the_schema_file() {
        let tables = expected_tables();
        let names: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "dead_letters",
                "runs",
                "batches",
                "pauses",
                "parked",
                "holds",
                "slots"
            ]
        );
        assert!(
            tables[0].1.contains(&"body".to_string()),
            "added by ALTER TABLE"
        );
        let batches = &tables[2].1;
        assert_eq!(
            batches,
            &[
                "strategy",
                "batch_id",
                "first_record_id",
                "last_record_id",
                "last_lsn",
                "created_at",
                "records"
            ]
        );
        assert!(tables[0].1.contains(&"payload".to_string()));
        assert!(tables[1].1.contains(&"finished_at".to_string()));
    }

    #[test]
    fn problems_name_the_object_the_role_and_the_fix() {
        let missing = Inspection {
            role: "app".into(),
            database: "shop".into(),
            schema: "walhook".into(),
            schema_exists: false,
            may_create: false,
            missing: vec![],
            privileges: vec![],
        };
        let problems = missing.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "schema walhook");
        assert!(problems[0].problem.contains("role app may not create it"));
        assert!(problems[0]
            .fix
            .contains("CREATE SCHEMA walhook AUTHORIZATION app;"));
        let creatable = Inspection {
            may_create: true,
            ..missing
        };
        assert!(creatable.problems().is_empty());
    }
}
