//! `walhook check`, `setup` and `teardown` run as a user runs them: the
//! binary, a config file, a real throwaway PostgreSQL.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use walhook::cluster::{Cluster, ClusterOptions};

/// A config file in a temp dir.
struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().expect("db name").to_string()
}

fn config(url: &str, slot: &str, endpoint: &str, on_update: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
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
    std::fs::write(&path, text).expect("write config");
    Setup { _dir: dir, path }
}

fn schema(db: &str, cluster: &Cluster) {
    cluster
        .psql(
            db,
            "CREATE TABLE public.orders (id int PRIMARY KEY, status text, amount numeric);
             CREATE SCHEMA shop;
             CREATE TABLE shop.items (id int PRIMARY KEY, name text);",
        )
        .expect("schema");
}

/// Runs `walhook <args> -c <config>`; (exit code, stdout, stderr).
fn walhook(args: &[&str], config: &Setup) -> (i32, String, String) {
    let out = Command::new(common::walhook_bin())
        .args(args)
        .arg("-c")
        .arg(&config.path)
        .output()
        .expect("run walhook");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP listener standing in for the endpoint (check only connects).
fn endpoint() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
    (listener, url)
}

/// What setup creates, as text to compare across databases.
fn objects(cluster: &Cluster, db: &str, slot: &str) -> String {
    cluster
        .psql(
            db,
            &format!(
                "SELECT (SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY 1)
                         FROM pg_publication_tables WHERE pubname = 'pub_{slot}')
                     || ' | ' ||
                     (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
                      WHERE relnamespace = 'walhook'::regnamespace AND relkind = 'r')
                     || ' | ' ||
                     (SELECT string_agg(plugin || ':' || slot_type || ':' || database, ',')
                      FROM pg_replication_slots WHERE slot_name = '{slot}')"
            ),
        )
        .expect("objects")
}

#[test]
fn setup_twice_then_check_is_clean() {
    let cluster = common::cluster();
    let url = common::fresh_db("ops_setup");
    let db = db_name(&url);
    schema(&db, cluster);
    // An existing publication missing one table: setup completes it.
    cluster
        .psql(
            &db,
            "CREATE PUBLICATION pub_s_setup FOR TABLE public.orders",
        )
        .expect("publication");
    let (_listener, hook) = endpoint();
    let config = config(&url, "s_setup", &hook, "changed(\"id\")");

    let (code, stdout, stderr) = walhook(&["setup"], &config);
    assert_eq!(code, 0, "first setup: {stdout}{stderr}");
    let (code, stdout, stderr) = walhook(&["setup"], &config);
    assert_eq!(code, 0, "second setup: {stdout}{stderr}");
    assert_eq!(
        objects(cluster, &db, "s_setup"),
        format!("public.orders,shop.items | batches,dead_letters,runs | pgoutput:logical:{db}")
    );

    let (code, stdout, stderr) = walhook(&["check"], &config);
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

#[test]
fn print_sql_into_psql_gives_the_same_objects() {
    let cluster = common::cluster();
    let (_listener, hook) = endpoint();
    let by_setup = common::fresh_db("ops_by_setup");
    schema(&db_name(&by_setup), cluster);
    let (code, out, err) = walhook(&["setup"], &config(&by_setup, "s_run", &hook, "true"));
    assert_eq!(code, 0, "{out}{err}");

    let by_psql = common::fresh_db("ops_by_psql");
    schema(&db_name(&by_psql), cluster);
    let printed = config(&by_psql, "s_print", &hook, "true");
    let (code, sql, err) = walhook(&["setup", "--print-sql"], &printed);
    assert_eq!(code, 0, "{err}");
    assert!(
        sql.contains("pg_create_logical_replication_slot('s_print', 'pgoutput')"),
        "{sql}"
    );
    assert_eq!(
        cluster
            .psql(
                &db_name(&by_psql),
                "SELECT (SELECT count(*) FROM pg_publication)
                      + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')
                      + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_print')"
            )
            .expect("query"),
        "0",
        "print-sql alone must not create anything"
    );
    cluster
        .psql(&db_name(&by_psql), &sql)
        .expect("the printed SQL runs in psql");
    // And again: the printed SQL is idempotent too.
    cluster
        .psql(&db_name(&by_psql), &sql)
        .expect("the printed SQL runs twice");

    let strip = |s: String, db: &str| s.replace(db, "DB");
    assert_eq!(
        strip(
            objects(cluster, &db_name(&by_setup), "s_run"),
            &db_name(&by_setup)
        ),
        strip(
            objects(cluster, &db_name(&by_psql), "s_print"),
            &db_name(&by_psql)
        ),
    );
}

#[test]
fn check_flags_old_reads_without_replica_identity_full() {
    let cluster = common::cluster();
    let url = common::fresh_db("ops_identity");
    let db = db_name(&url);
    schema(&db, cluster);
    let config = config(
        &url,
        "s_identity",
        "http://127.0.0.1:1/",
        "old.status != new.status",
    );
    let (code, _, err) = walhook(&["setup"], &config);
    assert_eq!(code, 0, "{err}");

    let (code, stdout, stderr) = walhook(&["check", "--json", "--no-network"], &config);
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
    cluster
        .psql(&db, "ALTER TABLE public.orders REPLICA IDENTITY FULL")
        .expect("alter");
    let (code, stdout, _) = walhook(&["check", "--no-network"], &config);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("ok    replica_identity: public.orders: REPLICA IDENTITY FULL: old rows carry every column"),
        "{stdout}"
    );
}

#[test]
fn check_reports_problems_with_their_fixes() {
    let cluster = common::cluster();
    let url = common::fresh_db("ops_problems");
    let db = db_name(&url);
    // orders without a primary key; shop.items missing; no publication; an
    // unreachable endpoint; a role without REPLICATION.
    cluster
        .psql(
            &db,
            "CREATE TABLE public.orders (id int, status text);
             CREATE ROLE ops_plain LOGIN;
             GRANT SELECT ON public.orders TO ops_plain;",
        )
        .expect("schema");
    let plain = url.replace("postgres@", "ops_plain@");
    let config = config(&plain, "s_problems", "http://127.0.0.1:1/", "new.nope == 1");
    let (code, stdout, stderr) = walhook(&["check"], &config);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for expected in [
        "error role: role ops_plain lacks the REPLICATION attribute needed to stream from a slot — fix: ALTER ROLE \"ops_plain\" WITH REPLICATION;",
        "error strategies[0].on_update: table public.orders has no column \"nope\" — fix: use one of its columns: id, status",
        "error strategies[1].table: table shop.items does not exist",
        "error publication: publication pub_s_problems does not exist — fix: CREATE PUBLICATION \"pub_s_problems\" FOR TABLE \"public\".\"orders\", \"shop\".\"items\";",
        "error replica_identity: public.orders has no primary key and REPLICA IDENTITY DEFAULT",
        "warn  slot: slot s_problems does not exist yet",
        "error endpoint hook: cannot connect to 127.0.0.1:1",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[test]
fn check_on_wal_level_replica_reports_the_fix() {
    let cluster = Cluster::start(ClusterOptions::default().setting("wal_level", "replica"))
        .expect("second cluster");
    cluster.create_database("plain").expect("db");
    cluster
        .psql(
            "plain",
            "CREATE TABLE public.orders (id int PRIMARY KEY, status text)",
        )
        .expect("table");
    let config = config(
        &cluster.url("plain"),
        "s_replica",
        "http://127.0.0.1:1/",
        "true",
    );
    let (code, stdout, stderr) = walhook(&["check", "--no-network"], &config);
    let (setup_code, setup_out, setup_err) = walhook(&["setup"], &config);
    cluster.destroy();
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

fn slot_row(cluster: &Cluster, db: &str, slot: &str) -> String {
    cluster
        .psql(
            db,
            &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        )
        .expect("slot query")
}

#[tokio::test]
async fn teardown_drops_the_slot_and_refuses_an_active_one() {
    let cluster = common::cluster();
    let url = common::fresh_db("ops_teardown");
    let db = db_name(&url);
    schema(&db, cluster);
    let config = config(&url, "s_teardown", "http://127.0.0.1:1/", "true");
    let (code, _, err) = walhook(&["setup"], &config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(slot_row(cluster, &db, "s_teardown"), "f");

    // A walhook streaming from the slot makes it active.
    let mut running = tokio::process::Command::new(common::walhook_bin())
        .args(["run", "--stdout", "-c"])
        .arg(&config.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("walhook run");
    common::wait_until(
        Duration::from_secs(20),
        "the slot to become active",
        || async { slot_row(cluster, &db, "s_teardown") == "t" },
    )
    .await;
    let (code, stdout, stderr) = walhook(&["teardown"], &config);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("slot s_teardown is active"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(slot_row(cluster, &db, "s_teardown"), "t");

    let (code, stdout, stderr) = walhook(&["teardown", "--force"], &config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("slot s_teardown: dropped"), "{stdout}");
    assert_eq!(slot_row(cluster, &db, "s_teardown"), "", "the slot is gone");
    assert!(stdout.contains("pass --yes to drop them too"), "{stdout}");
    assert_eq!(
        cluster
            .psql(
                &db,
                "SELECT count(*) FROM pg_publication WHERE pubname = 'pub_s_teardown'"
            )
            .expect("query"),
        "1",
        "without --yes the publication stays"
    );
    let _ = running.kill().await;

    let (code, stdout, stderr) = walhook(&["teardown", "--yes"], &config);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("slot s_teardown: not found"), "{stdout}");
    assert_eq!(
        cluster
            .psql(
                &db,
                "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = 'pub_s_teardown')
                      + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')"
            )
            .expect("query"),
        "0"
    );
}

#[test]
fn logs_follow_log_format_and_walhook_log() {
    let cluster = common::cluster();
    let url = common::fresh_db("ops_logs");
    schema(&db_name(&url), cluster);
    let config = config(&url, "s_logs", "http://127.0.0.1:1/", "true");
    let run = |args: &[&str], filter: Option<&str>| {
        let mut command = Command::new(common::walhook_bin());
        command.args(args).arg("-c").arg(&config.path);
        match filter {
            Some(filter) => command.env("WALHOOK_LOG", filter),
            None => command.env_remove("WALHOOK_LOG"),
        };
        let out = command.output().expect("run walhook");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let stderr = run(&["--log-format", "json", "setup"], None);
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

    let stderr = run(&["setup"], None);
    assert!(
        stderr.contains("setup step done"),
        "text logs by default: {stderr}"
    );
    assert!(stderr.lines().all(|l| !l.starts_with('{')), "{stderr}");

    let stderr = run(&["setup"], Some("warn"));
    assert_eq!(stderr, "", "WALHOOK_LOG=warn hides info lines");
}

#[test]
fn check_reports_an_unreachable_database() {
    let config = config(
        "postgres://walhook:hunter2-secret@127.0.0.1:1/nowhere",
        "s_down",
        "http://127.0.0.1:1/",
        "true",
    );
    let (code, stdout, stderr) = walhook(&["check", "--no-network"], &config);
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
