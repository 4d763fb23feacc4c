//! `walhook setup`: the publication for the strategies' tables, SELECT on
//! them and the state schema for the role walhook runs as, and the
//! replication slot, created if missing and left alone if present, so
//! running it twice is harmless.
//!
//! The plan is SQL text. `--print-sql` prints it for a DBA to review and
//! run with psql as an administrator; `setup` runs the very same statements
//! one by one (each in its own transaction: a slot cannot be created in a
//! transaction that has written). After it, the role in `source.url` needs
//! nothing else: no CREATE on the database, no ownership.
//!
//! Setup refuses, before it changes anything, a table without a replica
//! identity that the publication would carry with its updates and deletes:
//! from then on the application's own UPDATE and DELETE on it would fail.
//!
//! The slot comes after the source's objects, because from then on the
//! server keeps WAL for it. When the state lives in another database
//! (`[state] url`), its part comes last, after a psql `\connect`.

use tokio_postgres::Client;

use super::{tables, OpsError};
use crate::config::{Config, TableName};
use crate::pg::{
    self, conninfo, create_publication_sql, no_identity_list_sql, no_identity_problem,
    publishes_table_sql, quote_ident, quote_literal, quote_table, readable_table,
};

/// Which database a step runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The source database (`source.url`).
    Source,
    /// The database holding the state schema (`[state] url`, when set).
    State,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// What it does, in a few words (printed as an SQL comment).
    what: String,
    /// The SQL, idempotent on its own.
    sql: String,
    target: Target,
}

/// The roles the setup SQL grants to: the user of `source.url` and that
/// of the state database's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Roles {
    source: String,
    state: String,
}

fn roles(config: &Config) -> Result<Roles, OpsError> {
    let user = |url: &str| -> Result<String, OpsError> {
        Ok(conninfo::parse(url).map_err(pg::ConnectError::from)?.user)
    };
    Ok(Roles {
        source: user(config.source.url.expose())?,
        state: user(config.state_url().expose())?,
    })
}

/// The steps, in order.
fn plan(config: &Config, roles: &Roles) -> Vec<Step> {
    let publication = &config.source.publication;
    let slot = &config.source.slot;
    let tables = tables(config);
    let source = |what: String, sql: String| Step {
        what,
        sql,
        target: Target::Source,
    };
    let mut steps = vec![source(
        "refuse early unless wal_level = logical".to_string(),
        "DO $walhook$ BEGIN\n  \
         IF current_setting('wal_level') <> 'logical' THEN\n    \
         RAISE EXCEPTION 'wal_level is %, walhook needs logical', current_setting('wal_level')\n      \
         USING HINT = 'Run ALTER SYSTEM SET wal_level = logical; and restart the server.';\n  \
         END IF;\nEND $walhook$;"
            .to_string(),
    )];
    if !tables.is_empty() {
        steps.push(source(
            "refuse tables whose UPDATE and DELETE the publication would make fail".to_string(),
            identity_guard(publication, &tables),
        ));
    }

    // The publication: created with every table, then completed with any
    // that an existing one does not carry yet.
    let mut body = format!(
        "DO $walhook$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {}) THEN\n    ",
        quote_literal(publication)
    );
    body.push_str(&create_publication_sql(publication, &tables));
    body.push_str(";\n  END IF;\n");
    for table in &tables {
        body.push_str(&format!(
            "  IF NOT {} THEN\n    ALTER PUBLICATION {} ADD TABLE {};\n  END IF;\n",
            publishes_table_sql(
                &quote_literal(publication),
                &quote_literal(&quote_table(table))
            ),
            quote_ident(publication),
            quote_table(table)
        ));
    }
    body.push_str("END $walhook$;");
    steps.push(source(
        format!("publication {publication} for the strategies' tables"),
        body,
    ));
    if !tables.is_empty() {
        let list: Vec<String> = tables.iter().map(quote_table).collect();
        steps.push(source(
            format!(
                "SELECT on the strategies' tables for role {} (runs read them)",
                roles.source
            ),
            format!(
                "GRANT SELECT ON TABLE {} TO {};",
                list.join(", "),
                quote_ident(&roles.source)
            ),
        ));
    }

    let schema = &config.state.schema;
    let state = Step {
        what: format!(
            "state schema {schema} (dead letters, runs, batches); role {} may use it, nothing more",
            roles.state
        ),
        sql: crate::state::setup_sql(schema, &roles.state),
        target: Target::State,
    };
    let elsewhere = config.state.url.is_some();
    if !elsewhere {
        steps.push(Step {
            target: Target::Source,
            ..state.clone()
        });
    }
    steps.push(source(
        format!(
            "logical replication slot {slot} (pgoutput); from now on the server keeps WAL for it"
        ),
        pg::slot::create_sql(slot),
    ));
    if elsewhere {
        steps.push(state);
    }
    steps
}

/// A DO block that raises, naming every table and the three ways out,
/// when the publication (existing, or the one about to be created, which
/// publishes everything) carries updates or deletes and a table (or one of
/// its partitions) has no replica identity.
fn identity_guard(publication: &str, tables: &[TableName]) -> String {
    let mut sql = format!(
        "DO $walhook$\nDECLARE\n  found text;\n  problems text := '';\n  hints text := '';\nBEGIN\n  \
         IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {0} AND NOT pubupdate AND NOT pubdelete) THEN\n    \
         RETURN;  -- it carries only inserts (and truncates): nothing breaks\n  END IF;\n",
        quote_literal(publication)
    );
    for table in tables {
        let (problem, fix) = no_identity_problem(&[readable_table(table)], publication);
        let leaves = no_identity_list_sql(&quote_literal(&quote_table(table)));
        sql.push_str(&format!(
            "  found := {leaves};\n  IF found IS NOT NULL THEN\n    \
             problems := problems || E'\\n' || {} || ' [without one: ' || found || ']';\n    \
             hints := hints || E'\\n' || {};\n  END IF;\n",
            quote_literal(&problem),
            quote_literal(&fix),
        ));
    }
    sql.push_str(
        "  IF problems <> '' THEN\n    \
         RAISE EXCEPTION 'walhook setup refused, nothing was changed:%', problems\n      \
         USING HINT = 'For each table,' || hints;\n  END IF;\nEND $walhook$;",
    );
    sql
}

/// The plan as one SQL script (what `--print-sql` prints).
pub fn script(config: &Config) -> Result<String, OpsError> {
    let mut out = String::from(
        "-- walhook setup: review, then run as an administrator with\n\
         --   psql -v ON_ERROR_STOP=1 -f <this file>\n\
         -- (each statement on its own, outside a transaction block). Safe to run again.\n",
    );
    let mut at = Target::Source;
    for step in plan(config, &roles(config)?) {
        if step.target != at {
            at = step.target;
            out.push_str(&format!(
                "\n-- The state schema lives in another database ([state] url): connect there,\n\
                 -- keeping this session's user and password.\n{}\n",
                connect_line(config.state_url().expose())?
            ));
        }
        out.push_str(&format!("\n-- {}\n{}\n", step.what, step.sql));
    }
    Ok(out)
}

/// `\connect -reuse-previous=on '<host, port and database of url>'` (psql
/// keeps the current user and password).
pub(super) fn connect_line(url: &str) -> Result<String, OpsError> {
    let info = conninfo::parse(url).map_err(pg::ConnectError::from)?;
    // conninfo quoting ('…' with \' and \\), then psql's ('' and \\).
    let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for target in &info.targets {
        match target {
            conninfo::Target::Tcp { host, port, .. } => {
                hosts.push(host.clone());
                ports.push(port.to_string());
            }
            conninfo::Target::Unix { dir, port } => {
                hosts.push(dir.display().to_string());
                ports.push(port.to_string());
            }
        }
    }
    parts.push(format!("dbname={}", value(&info.dbname)));
    parts.push(format!("host={}", value(&hosts.join(","))));
    parts.push(format!("port={}", value(&ports.join(","))));
    let conninfo = parts.join(" ");
    Ok(format!(
        "\\connect -reuse-previous=on '{}'",
        conninfo.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// Runs the plan (steps in the state database over `state`, or over
/// `source` when it is the same), logging each step; returns the steps'
/// names.
pub(crate) async fn run(
    source: &Client,
    state: &Client,
    config: &Config,
) -> Result<Vec<String>, OpsError> {
    let mut done = Vec::new();
    for step in plan(config, &roles(config)?) {
        let client = match step.target {
            Target::Source => source,
            Target::State => state,
        };
        client.batch_execute(&step.sql).await.map_err(|source| {
            if source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                OpsError::NeedsAdmin {
                    what: step.what.clone(),
                    source,
                }
            } else {
                OpsError::sql(step.what.clone())(source)
            }
        })?;
        tracing::info!(step = %step.what, "setup step done");
        done.push(step.what);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, strategies: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://app@localhost/db\"\nslot = \"wh\"\npublication = \"pub\"\n\
             {extra}\n[endpoints.e]\nurl = \"http://localhost:1/\"\n{strategies}"
        );
        Config::parse(&text, &|_| None).expect("config")
    }

    const STRATEGIES: &str = "[[strategies]]\nname = \"a\"\ntable = \"public.orders\"\nendpoint = \"e\"\non_insert = \"true\"\n\
         [[strategies]]\nname = \"b\"\ntable = \"orders\"\nendpoint = \"e\"\non_delete = \"true\"\n\
         [[strategies]]\nname = \"c\"\ntable = \"shop.items\"\nendpoint = \"e\"\non_delete = \"true\"\n";

    #[test]
    fn plan_guards_then_creates_publication_grants_schema_then_slot() {
        let config = config("", STRATEGIES);
        let steps = plan(&config, &roles(&config).expect("roles"));
        let whats: Vec<&str> = steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(steps.len(), 6, "{whats:#?}");
        assert!(steps.iter().all(|s| s.target == Target::Source));
        assert!(steps[1]
            .sql
            .contains("RAISE EXCEPTION 'walhook setup refused"));
        assert!(steps[1]
            .sql
            .contains("table public.orders has no replica identity"));
        assert!(steps[2].sql.contains(
            "CREATE PUBLICATION \"pub\" FOR TABLE \"public\".\"orders\", \"shop\".\"items\" \
             WITH (publish_via_partition_root = true);"
        ));
        assert!(steps[2]
            .sql
            .contains("ALTER PUBLICATION \"pub\" ADD TABLE \"shop\".\"items\";"));
        assert!(steps[2].sql.contains("pg_get_publication_tables('pub')"));
        assert_eq!(
            steps[3].sql,
            "GRANT SELECT ON TABLE \"public\".\"orders\", \"shop\".\"items\" TO \"app\";"
        );
        assert!(steps[4]
            .sql
            .contains("CREATE TABLE IF NOT EXISTS \"walhook\".dead_letters"));
        assert!(steps[4]
            .sql
            .contains("GRANT USAGE ON SCHEMA \"walhook\" TO \"app\";"));
        assert!(steps[5]
            .sql
            .contains("pg_create_logical_replication_slot('wh', 'pgoutput')"));
        let script = script(&config).expect("script");
        assert!(script.contains("-- publication pub"));
        assert!(!script.contains("\\connect"));
    }

    #[test]
    fn state_elsewhere_comes_last_after_a_connect() {
        let config = config(
            "[state]\nurl = \"postgres://keeper:pw@state.example:5433/wh_state\"\nschema = \"wh\"\n",
            STRATEGIES,
        );
        let steps = plan(&config, &roles(&config).expect("roles"));
        let last = steps.last().expect("steps");
        assert_eq!(last.target, Target::State);
        assert!(last.sql.contains("CREATE SCHEMA IF NOT EXISTS \"wh\";"));
        assert!(last.sql.contains("TO \"keeper\";"));
        let script = script(&config).expect("script");
        let connect = script.find("\\connect").expect("a \\connect");
        assert!(script[connect..].starts_with(
            "\\connect -reuse-previous=on 'dbname=''wh_state'' host=''state.example'' port=''5433'''"
        ));
        assert!(connect > script.find("pg_create_logical_replication_slot").unwrap());
        assert!(!script.contains("pw"), "no password in the script");
    }
}
