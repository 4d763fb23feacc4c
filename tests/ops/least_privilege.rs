//! walhook as a DBA attaches it: it connects as a role with only LOGIN,
//! REPLICATION and SELECT on the published tables (password, scram), and
//! an administrator runs the setup SQL (`walhook setup --print-sql`, or
//! `sql/setup.sql`) with psql. Then `check` is clean, `run` streams, dead
//! letters and runs write their state, and the administrator's teardown
//! leaves nothing behind. Without the setup SQL, every refusal names the
//! object, the role and the fix.

use serde_json::Value;

use crate::runs::{call, wait_finished, TOKEN};
use crate::support::cluster::add_hba_lines;
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

/// A role as README's "Five minutes" step 2 creates it, allowed in by
/// password (scram-sha-256) for SQL and replication connections.
async fn least_privileged_role(db: &Db, role: &str) {
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw-{role}';
         GRANT SELECT ON public.orders TO {role};"
    ))
    .await;
    add_hba_lines(&[
        &format!("host all         {role} 127.0.0.1/32 scram-sha-256"),
        &format!("host replication {role} 127.0.0.1/32 scram-sha-256"),
    ])
    .await;
}

async fn orders_table(db: &Db) {
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY, status text, amount numeric)")
        .await;
}

/// Two strategies on `public.orders`: everything to `hook`, big orders to
/// `broken`, whose one attempt fails, so they become dead letters.
fn config(url: &str, name: &str, admin: u16, hook: &Receiver, broken: &Receiver) -> String {
    format!(
        r#"[source]
url = "{url}"
slot = "{name}"
publication = "{name}"

[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[endpoints.hook]
url = "{}"

[endpoints.broken]
url = "{}"
retry = {{ max_attempts = 1, initial = "50ms", max = "100ms", on_exhausted = "dead_letter" }}

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "hook"
on_insert = "true"
on_update = "true"
on_delete = "true"
linger = "10ms"
on_demand = {{ async = true }}

[[strategies]]
name = "big"
table = "public.orders"
endpoint = "broken"
on_insert = "new.amount > 100"
linger = "10ms"
"#,
        hook.url("/hook"),
        broken.url("/broken"),
    )
}

/// Runs `walhook ARGS -c config.toml`: (exit code, stdout, stderr).
async fn walhook(args: &[&str], config: &str) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().copied().chain(["-c", "config.toml"]).collect();
    let out = Walhook::command(&args).config(config).output().await;
    (out.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// What of walhook is left in the database: publications, slots, schemas.
async fn leftovers(db: &Db, name: &str) -> String {
    db.psql(&format!(
        "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = '{name}')
              + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}')
              + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')"
    ))
    .await
}

/// `check` exits 0 without an error finding; its output.
async fn check_is_clean(config: &str) -> String {
    let (code, stdout, stderr) = walhook(&["check"], config).await;
    assert_eq!(code, 0, "check:\n{stdout}{stderr}");
    assert!(
        stdout.lines().all(|l| !l.starts_with("error")),
        "check found errors:\n{stdout}"
    );
    stdout
}

/// `run` streams as the role; inserts arrive, a big one is dead-lettered
/// (stored in walhook.dead_letters, listed by the API), an on-demand run
/// is recorded in walhook.runs and delivered. Returns after stopping it.
async fn run_streams_and_writes_state(db: &Db, config: &str, name: &str, admin: u16) {
    run_streams_and_writes_state_in(db, (db, "walhook"), config, name, admin).await;
}

/// [`run_streams_and_writes_state`] with the state in schema `state.1` of
/// database `state.0`.
async fn run_streams_and_writes_state_in(
    db: &Db,
    state: (&Db, &str),
    config: &str,
    name: &str,
    admin: u16,
) {
    let (state, schema) = state;
    let mut running = Walhook::run(config).spawn();
    running.wait_streaming(db, name).await;
    db.psql("INSERT INTO public.orders VALUES (1, 'open', 50), (2, 'open', 500)")
        .await;
    wait_until(WAIT, "a dead letter in the state schema", || async {
        state
            .psql(&format!("SELECT count(*) FROM {schema}.dead_letters"))
            .await
            == "1"
    })
    .await;
    let base = format!("http://127.0.0.1:{admin}");
    let (status, body) = call("GET", &base, "/dead-letters?strategy=big").await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        page["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );

    let (status, body) = call("POST", &base, "/strategies/orders/runs?mode=async").await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
        .as_i64()
        .expect("run id");
    let run = wait_finished(&base, id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["counts"]["delivered"], 2, "{run}");
    assert_eq!(
        state
            .psql(&format!("SELECT state FROM {schema}.runs WHERE id = {id}"))
            .await,
        "succeeded"
    );
    let stderr = running.stop().await;
    assert!(!stderr.contains("permission denied"), "{stderr}");
    // `broken` allows one attempt: it is logged as the dead letter it leads to.
    let last = stderr
        .lines()
        .find(|l| l.contains("delivery attempt failed") && l.contains("strategy=big"))
        .unwrap_or_else(|| panic!("no failed attempt of big logged:\n{stderr}"));
    assert!(
        last.contains("decision=\"dead_letter\"") || last.contains("decision=dead_letter"),
        "{last}"
    );
}

/// The issue's reproduction: README's role, the printed setup SQL run by
/// the administrator, then check, run, dead letters, runs and teardown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privileged_role_runs_after_the_admin_ran_the_printed_setup_sql() {
    let db = fresh_db("lp_print").await;
    orders_table(&db).await;
    least_privileged_role(&db, "lp_print_app").await;
    let (hook, broken) = (Receiver::start().await, Receiver::start().await);
    broken.fail_next(1000, 500);
    let admin = free_port();
    let url = db.url_as("lp_print_app", "pw-lp_print_app");
    let config = config(&url, "lp_print", admin, &hook, &broken);

    let (code, sql, stderr) = walhook(&["setup", "--print-sql"], &config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(sql.contains("TO \"lp_print_app\";"), "{sql}");
    db.try_psql(&sql)
        .await
        .unwrap_or_else(|e| panic!("the admin runs the printed SQL: {e}\n{sql}"));

    let stdout = check_is_clean(&config).await;
    assert!(
        stdout.contains(&format!(
            "ok    state: state schema walhook in database {}: role lp_print_app may read and write its 7 tables",
            db.name()
        )),
        "{stdout}"
    );
    run_streams_and_writes_state(&db, &config, "lp_print", admin).await;
    assert!(
        hook.accepted_record_ids().len() >= 4,
        "2 live + 2 from the run"
    );
    assert_eq!(
        db.psql(
            "SELECT has_database_privilege('lp_print_app', current_database(), 'CREATE')::text
                    || ' ' || (SELECT count(*) FROM pg_class WHERE relowner = 'lp_print_app'::regrole)
                    || ' ' || (SELECT count(*) FROM pg_namespace WHERE nspowner = 'lp_print_app'::regrole)"
        )
        .await,
        "false 0 0",
        "the role needed no CREATE and owns nothing"
    );

    // Teardown as the role: the slot goes (REPLICATION may drop it), the
    // publication is refused with its owner named.
    let (code, stdout, stderr) = walhook(&["teardown", "--yes"], &config).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "publication lp_print is owned by role postgres, and role lp_print_app may not drop it: \
             run `walhook teardown --print-sql -c <config>` and have postgres (or a superuser) run the SQL"
        ),
        "{stderr}"
    );
    // The administrator's teardown leaves nothing behind.
    let (code, sql, stderr) = walhook(&["teardown", "--print-sql"], &config).await;
    assert_eq!(code, 0, "{stderr}");
    db.try_psql(&sql)
        .await
        .unwrap_or_else(|e| panic!("the admin runs the teardown SQL: {e}\n{sql}"));
    assert_eq!(leftovers(&db, "lp_print").await, "0");
}

/// The same with `sql/setup.sql -v role=…` and `sql/teardown.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privileged_role_runs_after_the_admin_ran_sql_setup_sql() {
    let db = fresh_db("lp_script").await;
    orders_table(&db).await;
    least_privileged_role(&db, "lp_script_app").await;
    let (hook, broken) = (Receiver::start().await, Receiver::start().await);
    broken.fail_next(1000, 500);
    let admin = free_port();
    let url = db.url_as("lp_script_app", "pw-lp_script_app");
    let config = config(&url, "lp_script", admin, &hook, &broken);
    let vars = [
        ("tables", "public.orders"),
        ("slot", "lp_script"),
        ("publication", "lp_script"),
        ("role", "lp_script_app"),
    ];
    db.try_psql_file("sql/setup.sql", &vars)
        .await
        .expect("sql/setup.sql runs");
    db.try_psql_file("sql/setup.sql", &vars)
        .await
        .expect("sql/setup.sql runs again");

    check_is_clean(&config).await;
    run_streams_and_writes_state(&db, &config, "lp_script", admin).await;

    db.try_psql_file(
        "sql/teardown.sql",
        &[
            ("slot", "lp_script"),
            ("publication", "lp_script"),
            ("drop_state", "1"),
        ],
    )
    .await
    .expect("sql/teardown.sql runs");
    assert_eq!(leftovers(&db, "lp_script").await, "0");
}

/// Without the setup SQL the role cannot start, and says why: the state
/// schema it may not create, then (once the schema exists) the publication
/// it may not create, each with the object, the role and the fix; `check`
/// reports the same beforehand. Nothing is created.
#[tokio::test]
async fn without_the_setup_sql_run_names_what_the_role_may_not_create() {
    let db = fresh_db("lp_none").await;
    orders_table(&db).await;
    least_privileged_role(&db, "lp_none_app").await;
    let (hook, broken) = (Receiver::start().await, Receiver::start().await);
    let url = db.url_as("lp_none_app", "pw-lp_none_app");
    let config = config(&url, "lp_none", free_port(), &hook, &broken);

    let (code, stdout, stderr) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "error state: schema walhook: the state schema does not exist in database {0}, and role \
             lp_none_app may not create it (no CREATE on the database; walhook never needs that) — fix: \
             run the setup SQL as an administrator (walhook setup --print-sql -c config.toml, then psql \
             -v ON_ERROR_STOP=1 -f); or, as an administrator in database {0}: CREATE SCHEMA walhook \
             AUTHORIZATION lp_none_app;",
            db.name()
        )),
        "{stdout}"
    );

    // The publication comes first at start: Postgres's own message, and the fix.
    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "creating publication lp_none failed: permission denied for database {} [SQLSTATE 42501]. \
             Creating a publication needs CREATE on the database and ownership of the tables",
            db.name()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("walhook setup --print-sql"),
        "{}",
        out.stderr
    );

    // With the publication there, the state schema is next.
    db.psql("CREATE PUBLICATION lp_none FOR TABLE public.orders")
        .await;
    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the state schema is not ready:\n  - schema walhook: the state schema does not exist in database"
        ) && out.stderr.contains("CREATE SCHEMA walhook AUTHORIZATION lp_none_app;"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.psql(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'lp_none')
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')"
        )
        .await,
        "0",
        "nothing was created"
    );

    // A schema the role may use but whose tables it lacks privileges on:
    // each GRANT is named.
    let (code, sql, _) = walhook(&["setup", "--print-sql"], &config).await;
    assert_eq!(code, 0);
    let state_sql: String = sql
        .split("-- state schema walhook")
        .nth(1)
        .expect("the state step")
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("GRANT"))
        .collect::<Vec<_>>()
        .join("\n");
    db.psql(&state_sql).await;
    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    for expected in [
        "schema walhook: role lp_none_app has no USAGE on the state schema; fix: GRANT USAGE ON SCHEMA walhook TO lp_none_app;",
        "table walhook.dead_letters: role lp_none_app lacks SELECT, INSERT, UPDATE, DELETE on it; fix: GRANT SELECT, INSERT, UPDATE, DELETE ON walhook.dead_letters TO lp_none_app;",
        "sequence walhook.runs_id_seq: role lp_none_app has no USAGE on it (it numbers new rows of its table); fix: GRANT USAGE, SELECT ON SEQUENCE walhook.runs_id_seq TO lp_none_app;",
    ] {
        assert!(out.stderr.contains(expected), "missing {expected:?}:\n{}", out.stderr);
    }
}

/// `[state] url` names another database, where the run role owns the state
/// schema; on the source database the role may write nothing at all (not
/// even TEMP or CREATE on schema public). The printed setup SQL (which
/// `\connect`s to the state database for its last part) is run by the
/// administrator; check, run, dead letters and runs work; the state lands
/// in the state database only; the administrator's teardown SQL removes
/// everything from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_state_in_another_database_the_role_writes_nothing_on_the_source() {
    let db = fresh_db("lp_src").await;
    let state = fresh_db("lp_state").await;
    orders_table(&db).await;
    least_privileged_role(&db, "lp_src_app").await;
    db.psql(&format!(
        "REVOKE ALL ON DATABASE {0} FROM PUBLIC;
         GRANT CONNECT ON DATABASE {0} TO lp_src_app;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        db.name()
    ))
    .await;
    state
        .psql("CREATE SCHEMA wh_state AUTHORIZATION lp_src_app")
        .await;
    let (hook, broken) = (Receiver::start().await, Receiver::start().await);
    broken.fail_next(1000, 500);
    let admin = free_port();
    let config = format!(
        "{}\n[state]\nurl = \"{}\"\nschema = \"wh_state\"\n",
        config(
            &db.url_as("lp_src_app", "pw-lp_src_app"),
            "lp_src",
            admin,
            &hook,
            &broken
        ),
        state.url_as("lp_src_app", "pw-lp_src_app"),
    );

    let (code, sql, stderr) = walhook(&["setup", "--print-sql"], &config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(sql.contains("\\connect -reuse-previous=on"), "{sql}");
    db.try_psql(&sql)
        .await
        .unwrap_or_else(|e| panic!("the admin runs the printed SQL: {e}\n{sql}"));
    assert_eq!(
        db.psql(
            "SELECT has_database_privilege('lp_src_app', current_database(), 'CREATE')::text
                    || ' ' || has_database_privilege('lp_src_app', current_database(), 'TEMP')
                    || ' ' || has_schema_privilege('lp_src_app', 'public', 'CREATE')
                    || ' ' || (SELECT count(*) FROM pg_class c
                               JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                                 AND (has_table_privilege('lp_src_app', c.oid, 'INSERT')
                                   OR has_table_privilege('lp_src_app', c.oid, 'UPDATE')
                                   OR has_table_privilege('lp_src_app', c.oid, 'DELETE')))
                    || ' ' || (SELECT count(*) FROM pg_namespace WHERE nspname IN ('walhook', 'wh_state'))"
        )
        .await,
        "false false false 0 0",
        "no write privilege and no state on the source database"
    );

    let stdout = check_is_clean(&config).await;
    assert!(
        stdout.contains(&format!(
            "ok    state: state schema wh_state in database {}: role lp_src_app may read and write its 7 tables",
            state.name()
        )),
        "{stdout}"
    );
    run_streams_and_writes_state_in(&db, (&state, "wh_state"), &config, "lp_src", admin).await;
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname IN ('walhook', 'wh_state')")
            .await,
        "0",
        "nothing of the state on the source database"
    );

    let (code, sql, stderr) = walhook(&["teardown", "--print-sql"], &config).await;
    assert_eq!(code, 0, "{stderr}");
    db.try_psql(&sql)
        .await
        .unwrap_or_else(|e| panic!("the admin runs the teardown SQL: {e}\n{sql}"));
    assert_eq!(leftovers(&db, "lp_src").await, "0");
    assert_eq!(
        state
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'wh_state'")
            .await,
        "0"
    );
}
