//! `walhook setup`: the publication for the strategies' tables, the state
//! schema and the replication slot, created if missing and left alone if
//! present, so running it twice is harmless.
//!
//! The plan is SQL text. `--print-sql` prints it for a DBA to review and
//! run with psql; `setup` runs the very same statements one by one (each in
//! its own transaction: a slot cannot be created in a transaction that has
//! written). The slot comes last, because from then on the server keeps WAL
//! for it.

use tokio_postgres::Client;

use super::{tables, OpsError};
use crate::config::Config;
use crate::pg::{create_publication_sql, quote_ident, quote_literal, quote_table};

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// What it does, in a few words (printed as an SQL comment).
    what: String,
    /// The SQL, idempotent on its own.
    sql: String,
}

/// The steps, in order.
fn plan(config: &Config) -> Vec<Step> {
    let publication = &config.source.publication;
    let slot = &config.source.slot;
    let tables = tables(config);
    let mut steps = vec![Step {
        what: "refuse early unless wal_level = logical".to_string(),
        sql: "DO $walhook$ BEGIN\n  \
              IF current_setting('wal_level') <> 'logical' THEN\n    \
              RAISE EXCEPTION 'wal_level is %, walhook needs logical', current_setting('wal_level')\n      \
              USING HINT = 'Run ALTER SYSTEM SET wal_level = logical; and restart the server.';\n  \
              END IF;\nEND $walhook$;"
            .to_string(),
    }];

    // The publication: created with every table, then completed with any
    // that an existing one lacks (FOR ALL TABLES already lists them all).
    let mut body = format!(
        "DO $walhook$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {}) THEN\n    ",
        quote_literal(publication)
    );
    body.push_str(&create_publication_sql(publication, &tables));
    body.push_str(";\n");
    body.push_str("  END IF;\n");
    for table in &tables {
        body.push_str(&format!(
            "  IF NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = {} \
             AND schemaname = {} AND tablename = {}) THEN\n    ALTER PUBLICATION {} ADD TABLE {};\n  END IF;\n",
            quote_literal(publication),
            quote_literal(&table.schema),
            quote_literal(&table.name),
            quote_ident(publication),
            quote_table(table)
        ));
    }
    body.push_str("END $walhook$;");
    steps.push(Step {
        what: format!("publication {publication} for the strategies' tables"),
        sql: body,
    });

    steps.push(Step {
        what: "state schema walhook (dead letters, runs, batches)".to_string(),
        sql: crate::state::SCHEMA_SQL.trim().to_string(),
    });
    steps.push(Step {
        what: format!(
            "logical replication slot {slot} (pgoutput); from now on the server keeps WAL for it"
        ),
        sql: format!(
            "SELECT slot_name, lsn AS consistent_point\n\
             FROM pg_create_logical_replication_slot({}, 'pgoutput')\n\
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {});",
            quote_literal(slot),
            quote_literal(slot)
        ),
    });
    steps
}

/// The plan as one SQL script (what `--print-sql` prints).
pub fn script(config: &Config) -> String {
    let mut out = String::from(
        "-- walhook setup: review, then run with psql -v ON_ERROR_STOP=1 -f <this file>\n\
         -- (each statement on its own, outside a transaction block).\n",
    );
    for step in plan(config) {
        out.push_str(&format!("\n-- {}\n{}\n", step.what, step.sql));
    }
    out
}

/// Runs the plan on `client`, logging each step; returns the steps' names.
pub(crate) async fn run(client: &Client, config: &Config) -> Result<Vec<String>, OpsError> {
    let mut done = Vec::new();
    for step in plan(config) {
        client
            .batch_execute(&step.sql)
            .await
            .map_err(OpsError::sql(step.what.clone()))?;
        tracing::info!(step = %step.what, "setup step done");
        done.push(step.what);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(strategies: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://u@localhost/db\"\nslot = \"wh\"\npublication = \"pub\"\n\
             [endpoints.e]\nurl = \"http://localhost:1/\"\n{strategies}"
        );
        Config::parse(&text, &|_| None).expect("config")
    }

    #[test]
    fn plan_creates_publication_schema_then_slot() {
        let config = config(
            "[[strategies]]\nname = \"a\"\ntable = \"public.orders\"\nendpoint = \"e\"\non_insert = \"true\"\n\
             [[strategies]]\nname = \"b\"\ntable = \"orders\"\nendpoint = \"e\"\non_delete = \"true\"\n\
             [[strategies]]\nname = \"c\"\ntable = \"shop.items\"\nendpoint = \"e\"\non_delete = \"true\"\n",
        );
        let steps = plan(&config);
        assert_eq!(steps.len(), 4);
        assert!(steps[1].sql.contains(
            "CREATE PUBLICATION \"pub\" FOR TABLE \"public\".\"orders\", \"shop\".\"items\";"
        ));
        assert!(steps[1]
            .sql
            .contains("ALTER PUBLICATION \"pub\" ADD TABLE \"shop\".\"items\";"));
        assert!(steps[2]
            .sql
            .contains("CREATE TABLE IF NOT EXISTS walhook.dead_letters"));
        assert!(steps[3]
            .sql
            .contains("pg_create_logical_replication_slot('wh', 'pgoutput')"));
        let script = script(&config);
        assert!(script.contains("-- publication pub"));
    }
}
