//! `walhook check`, `setup` and `teardown` run as a user runs them: the
//! binary, a config file, a real throwaway PostgreSQL.

use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::replica_cluster;
use crate::support::{fresh_db, wait_until, Db, Walhook};

/// The text of a config file.
struct Setup(String);

fn config(url: &str, slot: &str, endpoint: &str, on_update: &str) -> Setup {
    let text = format!(
        r#"[source]
url = "{url}"
slot = "{slot}"
publication = "pub_{slot}"

[endpoints.hook]
url = "{endpoint}"

[[strategies]]
name = "orders"
table = "public.orders"
endpoint = "hook"
on_insert = "true"
on_update = {on_update:?}

[[strategies]]
name = "items"
table = "shop.items"
endpoint = "hook"
on_delete = "true"
"#
    );
    Setup(text)
}

async fn schema(db: &Db) {
    db.psql(
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text, amount numeric);
         CREATE SCHEMA shop;
         CREATE TABLE shop.items (id int PRIMARY KEY, name text);",
    )
    .await;
}

/// Runs `walhook <args> -c config.toml`; (exit code, stdout, stderr).
async fn walhook(args: &[&str], config: &Setup) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().copied().chain(["-c", "config.toml"]).collect();
    let out = Walhook::command(&args).config(&config.0).output().await;
    (out.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// A TCP listener standing in for the endpoint (check only connects).
fn endpoint() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    (listener, url)
}

/// What setup creates, as text to compare across databases.
async fn objects(db: &Db, slot: &str) -> String {
    db.psql(&format!(
        "SELECT (SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1)
                         FROM pg_publication_tables WHERE pubname = 'pub_{slot}')
                     || ' | ' ||
                     (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
                      WHERE relnamespace = 'walhook'::regnamespace AND relkind = 'r')
                     || ' | ' ||
                     (SELECT string_agg(plugin || ':' || slot_type || ':' || database, ',')
                      FROM pg_replication_slots WHERE slot_name = '{slot}')"
    ))
    .await
}

#[tokio::test]
async fn setup_twice_then_check_is_clean() {
    let db = fresh_db("ops_setup").await;
    let url = db.url();
    let db_name = db.name();
    schema(&db).await;
    // An existing publication missing one table: setup completes it.
    db.psql("CREATE PUBLICATION pub_s_setup FOR TABLE public.orders")
        .await;
    let (_listener, hook) = endpoint();
    let config = config(&url, "s_setup", &hook, "changed(\"id\")");

    let (code, stdout, stderr) = walhook(&["setup"], &config).await;
    assert_eq!(code, 0, "first setup: {stdout}{stderr}");
    let (code, stdout, stderr) = walhook(&["setup"], &config).await;
    assert_eq!(code, 0, "second setup: {stdout}{stderr}");
    assert_eq!(
        objects(&db, "s_setup").await,
        format!(
            "public.orders,shop.items | batches,dead_letters,holds,parked,pauses,runs,slots | pgoutput:logical:{db_name}"
        )
    );

    let (code, stdout, stderr) = walhook(&["check"], &config).await;
    assert_eq!(code, 0, "check on a ready database:\n{stdout}{stderr}");
    for line in [
        "ok    wal_level: wal_level = logical",
        "ok    role: role postgres has superuser",
        "ok    publication: publication pub_s_setup exists (2 of 2 strategy table(s) in it)",
        "ok    strategies: 2 strategies fit the tables, columns, publication and replica identity",
        "ok    table: public.orders: SELECT granted",
        "ok    endpoint hook: ",
        "warn  max_slot_wal_keep_size: -1 (unbounded)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("ok    slot: slot s_setup: inactive"),
        "{stdout}"
    );
    // Every line is one finding with a severity.
    for line in stdout.lines() {
        let severity = line.split_whitespace().next().unwrap_or("");
        assert!(
            ["error", "warn", "ok", "info"].contains(&severity),
            "{line}"
        );
    }
}

#[tokio::test]
async fn print_sql_into_psql_gives_the_same_objects() {
    let (_listener, hook) = endpoint();
    let by_setup = fresh_db("ops_by_setup").await;
    schema(&by_setup).await;
    let (code, out, err) =
        walhook(&["setup"], &config(&by_setup.url(), "s_run", &hook, "true")).await;
    assert_eq!(code, 0, "{out}{err}");

    let by_psql = fresh_db("ops_by_psql").await;
    schema(&by_psql).await;
    let printed = config(&by_psql.url(), "s_print", &hook, "true");
    let (code, sql, err) = walhook(&["setup", "--print-sql"], &printed).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        sql.contains("pg_create_logical_replication_slot('s_print', 'pgoutput')"),
        "{sql}"
    );
    assert_eq!(
        by_psql
            .psql(
                "SELECT (SELECT count(*) FROM pg_publication)
                      + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')
                      + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_print')"
            )
            .await,
        "0",
        "print-sql alone must not create anything"
    );
    by_psql
        .try_psql(&sql)
        .await
        .expect("the printed SQL runs in psql");
    // And again: the printed SQL is idempotent too.
    by_psql
        .try_psql(&sql)
        .await
        .expect("the printed SQL runs twice");

    let strip = |s: String, db: &str| s.replace(db, "DB");
    assert_eq!(
        strip(objects(&by_setup, "s_run").await, by_setup.name()),
        strip(objects(&by_psql, "s_print").await, by_psql.name()),
    );
}

#[tokio::test]
async fn check_flags_old_reads_without_replica_identity_full() {
    let db = fresh_db("ops_identity").await;
    schema(&db).await;
    let config = config(
        &db.url(),
        "s_identity",
        "http://127.0.0.1:1/",
        "old.status != new.status",
    );
    let (code, _, err) = walhook(&["setup"], &config).await;
    assert_eq!(code, 0, "{err}");

    let (code, stdout, stderr) = walhook(&["check", "--json", "--no-network"], &config).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let doc: Value = serde_json::from_str(&stdout).expect("check --json prints JSON");
    assert_eq!(doc["ok"], false);
    let findings = doc["findings"].as_array().expect("findings");
    let errors: Vec<&Value> = findings
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{findings:#?}");
    assert_eq!(errors[0]["check"], "strategies[0].on_update");
    let message = errors[0]["message"].as_str().unwrap_or("");
    assert!(message.contains("REPLICA IDENTITY DEFAULT"), "{message}");
    assert!(message.contains("old.status"), "{message}");
    assert!(
        errors[0]["fix"]
            .as_str()
            .unwrap_or("")
            .replace('"', "")
            .starts_with("ALTER TABLE public.orders REPLICA IDENTITY FULL;"),
        "{:?}",
        errors[0]["fix"]
    );
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "endpoints" && f["severity"] == "info"),
        "--no-network skips the endpoints"
    );

    // Applying the fix clears the error.
    db.psql("ALTER TABLE public.orders REPLICA IDENTITY FULL")
        .await;
    let (code, stdout, _) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("ok    replica_identity: public.orders: REPLICA IDENTITY FULL: old rows carry every column"),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_reports_problems_with_their_fixes() {
    let db = fresh_db("ops_problems").await;
    // orders without a primary key; shop.items missing; no publication; an
    // unreachable endpoint; a role without REPLICATION.
    db.psql(
        "CREATE TABLE public.orders (id int, status text);
         CREATE ROLE ops_plain LOGIN;
         GRANT SELECT ON public.orders TO ops_plain;",
    )
    .await;
    let plain = db.url().replace("postgres@", "ops_plain@");
    let config = config(&plain, "s_problems", "http://127.0.0.1:1/", "new.nope == 1");
    let (code, stdout, stderr) = walhook(&["check"], &config).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    for expected in [
        "error role: role ops_plain lacks the REPLICATION attribute needed to stream from a slot — fix: ALTER ROLE \"ops_plain\" WITH REPLICATION;",
        "error strategies[0].on_update: table public.orders has no column \"nope\" — fix: use one of its columns: id, status",
        "error strategies[1].table: table shop.items does not exist",
        "error publication: publication pub_s_problems does not exist — fix: CREATE PUBLICATION \"pub_s_problems\" FOR TABLE \"public\".\"orders\", \"shop\".\"items\" WITH (publish_via_partition_root = true);",
        "error replica_identity: table public.orders has no replica identity (no primary key, or REPLICA IDENTITY NOTHING): in publication pub_s_problems, which publishes updates and deletes, the application's UPDATE and DELETE on it fail",
        "— fix: choose one: (1) a primary key: ALTER TABLE public.orders ADD PRIMARY KEY (…); (2) every column as the identity: ALTER TABLE public.orders REPLICA IDENTITY FULL; (3) if only the inserts of these tables are needed, follow them with a second walhook, its own slot and its own publication: CREATE PUBLICATION <another name> FOR TABLE … WITH (publish = 'insert'); not on publication pub_s_problems: publish applies to every table of a publication, so every other strategy on it would stop receiving updates and deletes",
        "error state: schema walhook: the state schema does not exist in database ops_problems_",
        "and role ops_plain may not create it (no CREATE on the database; walhook never needs that) — fix: run the setup SQL as an administrator (walhook setup --print-sql -c config.toml, then psql -v ON_ERROR_STOP=1 -f); or, as an administrator in database ops_problems_",
        ": CREATE SCHEMA walhook AUTHORIZATION ops_plain;",
        "warn  slot: slot s_problems does not exist yet",
        "error endpoint hook: cannot connect to 127.0.0.1:1",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn check_on_wal_level_replica_reports_the_fix() {
    let cluster = tokio::task::spawn_blocking(replica_cluster).await.unwrap();
    let db = Db::create(cluster, "ops_replica").await;
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY, status text)")
        .await;
    let config = config(&db.url(), "s_replica", "http://127.0.0.1:1/", "true");
    let (code, stdout, stderr) = walhook(&["check", "--no-network"], &config).await;
    let (setup_code, setup_out, setup_err) = walhook(&["setup"], &config).await;
    assert_eq!(setup_code, 1, "setup refuses: {setup_out}{setup_err}");
    assert!(
        setup_err.contains("wal_level is replica, walhook needs logical; hint: Run ALTER SYSTEM SET wal_level = logical;"),
        "{setup_err}"
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "error wal_level: wal_level is replica; walhook needs logical — fix: ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL"
        ),
        "{stdout}"
    );
}

async fn slot_row(db: &Db, slot: &str) -> String {
    db.psql(&format!(
        "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .await
}

#[tokio::test]
async fn teardown_drops_the_slot_and_refuses_an_active_one() {
    let db = fresh_db("ops_teardown").await;
    schema(&db).await;
    let config = config(&db.url(), "s_teardown", "http://127.0.0.1:1/", "true");
    let (code, _, err) = walhook(&["setup"], &config).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(slot_row(&db, "s_teardown").await, "f");

    // A walhook streaming from the slot makes it active.
    let mut running = Walhook::command(&["run", "--stdout", "-c", "config.toml"])
        .config(&config.0)
        .spawn();
    wait_until(
        Duration::from_secs(20),
        "the slot to become active",
        || async { slot_row(&db, "s_teardown").await == "t" },
    )
    .await;
    let (code, stdout, stderr) = walhook(&["teardown"], &config).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("slot s_teardown is active"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(slot_row(&db, "s_teardown").await, "t");

    let (code, stdout, stderr) = walhook(&["teardown", "--force"], &config).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("slot s_teardown: dropped"), "{stdout}");
    assert_eq!(slot_row(&db, "s_teardown").await, "", "the slot is gone");
    assert!(stdout.contains("pass --yes to drop them too"), "{stdout}");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_publication WHERE pubname = 'pub_s_teardown'")
            .await,
        "1",
        "without --yes the publication stays"
    );
    running.kill9().await;

    let (code, stdout, stderr) = walhook(&["teardown", "--yes"], &config).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("slot s_teardown: not found"), "{stdout}");
    assert_eq!(
        db.psql(
            "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = 'pub_s_teardown')
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')"
        )
        .await,
        "0"
    );
}

#[tokio::test]
async fn logs_follow_log_format_and_walhook_log() {
    let db = fresh_db("ops_logs").await;
    schema(&db).await;
    let config = config(&db.url(), "s_logs", "http://127.0.0.1:1/", "true");
    let run = |args: &[&str], filter: Option<&str>| {
        let args: Vec<&str> = args.iter().copied().chain(["-c", "config.toml"]).collect();
        let mut command = Walhook::command(&args).config(&config.0);
        if let Some(filter) = filter {
            command = command.env("WALHOOK_LOG", filter);
        }
        async move {
            let out = command.output().await;
            assert_eq!(out.code(), Some(0), "{out:?}");
            out.stderr
        }
    };

    let stderr = run(&["--log-format", "json", "setup"], None).await;
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(!lines.is_empty(), "setup logs its steps");
    assert!(
        lines.iter().all(|l| l["level"] == "INFO"
            && l["fields"]["message"] == "setup step done"
            && l["fields"]["step"].is_string()),
        "{stderr}"
    );

    let stderr = run(&["setup"], None).await;
    assert!(
        stderr.contains("setup step done"),
        "text logs by default: {stderr}"
    );
    assert!(stderr.lines().all(|l| !l.starts_with('{')), "{stderr}");

    let stderr = run(&["setup"], Some("warn")).await;
    assert_eq!(stderr, "", "WALHOOK_LOG=warn hides info lines");
}

#[tokio::test]
async fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let db = fresh_db("ops_colour").await;
    schema(&db).await;
    let config = config(&db.url(), "s_colour", "http://127.0.0.1:1/", "true");

    // A pipe (systemd, Kubernetes, `2>file`): plain text.
    let out = Walhook::command(&["setup", "-c", "config.toml"])
        .config(&config.0)
        .output()
        .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("setup step done"), "{}", out.stderr);
    assert!(
        !out.stderr.contains('\x1b'),
        "escape codes in logs to a pipe: {:?}",
        out.stderr
    );

    let on_a_terminal = |env: &[(&str, &str)]| {
        let command = Walhook::command(&["setup", "-c", "config.toml"])
            .config(&config.0)
            .envs(env);
        async move {
            let (status, text) = command.on_a_terminal().await;
            assert!(status.success(), "{status:?}: {text}");
            text
        }
    };
    let coloured = on_a_terminal(&[]).await;
    let plain = on_a_terminal(&[("NO_COLOR", "1")]).await;
    assert!(coloured.contains("setup step done"), "{coloured:?}");
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colour: {coloured:?}"
    );
    assert!(plain.contains("setup step done"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "NO_COLOR=1 on a terminal: {plain:?}"
    );
}

#[tokio::test]
async fn check_reports_an_unreachable_database() {
    let config = config(
        "postgres://walhook:hunter2-secret@127.0.0.1:1/nowhere",
        "s_down",
        "http://127.0.0.1:1/",
        "true",
    );
    let (code, stdout, stderr) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let first = stdout.lines().next().unwrap_or("");
    assert!(first.starts_with("error connect: "), "{stdout}");
    assert!(first.contains("127.0.0.1:1"), "{stdout}");
    assert!(first.contains("— fix: "), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "the password never shows: {stdout}{stderr}"
    );
}
