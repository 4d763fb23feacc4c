//! Setup never breaks the application, and runs twice: tables without a
//! primary key are refused before anything changes (with the three ways
//! out), partitioned tables survive a second run of the setup SQL, and a
//! publication that would hide a partitioned table's changes is a `check`
//! finding whose fix works.

use crate::support::walhook::base_config;
use crate::support::{fresh_db, Db, Walhook};

fn config(url: &str, name: &str, tables: &[&str]) -> String {
    let mut text = format!(
        "{}[endpoints.hook]\nurl = \"http://127.0.0.1:9/hook\"\n",
        base_config(url, name, name)
    );
    for (i, table) in tables.iter().enumerate() {
        text.push_str(&format!(
            "\n[[strategies]]\nname = \"s{i}\"\ntable = \"{table}\"\nendpoint = \"hook\"\non_insert = \"true\"\n"
        ));
    }
    text
}

/// Runs `walhook ARGS -c config.toml`: (exit code, stdout, stderr).
async fn walhook(args: &[&str], config: &str) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().copied().chain(["-c", "config.toml"]).collect();
    let out = Walhook::command(&args).config(config).output().await;
    (out.code().unwrap_or(-1), out.stdout, out.stderr)
}

async fn publications(db: &Db) -> String {
    db.psql("SELECT count(*) FROM pg_publication").await
}

/// The choices every refusal spells out, and what the third does to the
/// other strategies on a shared publication (issue 29).
const CHOICES: [&str; 4] = [
    "ADD PRIMARY KEY",
    "REPLICA IDENTITY FULL",
    "WITH (publish = 'insert')",
    "every other strategy on it would stop receiving updates and deletes",
];

/// The issue's `audit_log`: `check` reports it before setup; the printed
/// SQL, `walhook setup`, `sql/setup.sql` and `walhook run` all refuse it,
/// naming the choices, and create nothing; the application's DELETE keeps
/// working. With the third choice (an insert-only publication made first),
/// setup goes through and the DELETE still works.
#[tokio::test]
async fn a_table_without_a_primary_key_is_refused_and_the_application_keeps_deleting() {
    let db = fresh_db("nopk").await;
    db.psql(
        "CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric);
         CREATE TABLE public.audit_log (at timestamptz DEFAULT now(), msg text);
         INSERT INTO public.audit_log (msg) VALUES ('a'), ('b'), ('c');",
    )
    .await;
    let config = config(&db.url(), "nopk", &["public.orders", "public.audit_log"]);

    let (code, stdout, _) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 1, "{stdout}");
    let finding = stdout
        .lines()
        .find(|l| {
            l.starts_with("error replica_identity: table public.audit_log has no replica identity")
        })
        .unwrap_or_else(|| panic!("no finding before setup:\n{stdout}"));
    for choice in CHOICES {
        assert!(finding.contains(choice), "{choice}: {finding}");
    }

    let (code, sql, stderr) = walhook(&["setup", "--print-sql"], &config).await;
    assert_eq!(code, 0, "{stderr}");
    let err = db
        .try_psql(&sql)
        .await
        .expect_err("the printed SQL refuses");
    let err = err.to_string();
    assert!(
        err.contains("walhook setup refused, nothing was changed"),
        "{err}"
    );
    assert!(err.contains("public.audit_log"), "{err}");
    for choice in CHOICES {
        assert!(err.contains(choice), "{choice}: {err}");
    }
    assert_eq!(publications(&db).await, "0");

    let (code, stdout, stderr) = walhook(&["setup"], &config).await;
    assert_ne!(code, 0, "{stdout}");
    assert!(stderr.contains("walhook setup refused"), "{stderr}");

    let err = db
        .try_psql_file(
            "sql/setup.sql",
            &[
                ("tables", "public.orders, public.audit_log"),
                ("slot", "nopk"),
                ("publication", "nopk"),
            ],
        )
        .await
        .expect_err("sql/setup.sql refuses")
        .to_string();
    assert!(err.contains("public.audit_log"), "{err}");
    for choice in CHOICES {
        assert!(err.contains(choice), "{choice}: {err}");
    }

    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("walhook did not create publication nopk"),
        "{}",
        out.stderr
    );
    assert_eq!(publications(&db).await, "0");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'nopk'")
            .await,
        "0"
    );
    db.psql("DELETE FROM public.audit_log WHERE msg = 'a'")
        .await;

    // Choice 3: an insert-only publication, made before setup.
    db.psql("CREATE PUBLICATION nopk FOR TABLE public.orders, public.audit_log WITH (publish = 'insert')")
        .await;
    let (code, sql, _) = walhook(&["setup", "--print-sql"], &config).await;
    assert_eq!(code, 0);
    db.try_psql(&sql)
        .await
        .expect("setup with an insert-only publication");
    db.psql("DELETE FROM public.audit_log WHERE msg = 'b'; UPDATE public.audit_log SET msg = 'd'")
        .await;
    assert_eq!(
        db.psql("SELECT string_agg(msg, ',') FROM public.audit_log")
            .await,
        "d"
    );
}

/// A partitioned table: the printed setup SQL and `sql/setup.sql` each run
/// twice; `check` is clean; a publication made by hand without
/// publish_via_partition_root is a finding whose fix makes `check` clean.
#[tokio::test]
async fn the_setup_sql_runs_twice_with_a_partitioned_table() {
    let db = fresh_db("part_twice").await;
    db.psql(
        "CREATE TABLE public.payments (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE public.payments_2025 PARTITION OF public.payments FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE public.payments_2026 PARTITION OF public.payments FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
    )
    .await;
    let config = config(&db.url(), "part_twice", &["public.payments"]);
    let (code, sql, stderr) = walhook(&["setup", "--print-sql"], &config).await;
    assert_eq!(code, 0, "{stderr}");
    for run in 0..2 {
        db.try_psql(&sql)
            .await
            .unwrap_or_else(|e| panic!("printed setup SQL, run {run}: {e}"));
    }
    let vars = [
        ("tables", "public.payments"),
        ("slot", "part_twice"),
        ("publication", "part_twice"),
    ];
    for run in 0..2 {
        db.try_psql_file("sql/setup.sql", &vars)
            .await
            .unwrap_or_else(|e| panic!("sql/setup.sql, run {run}: {e}"));
    }
    let (code, stdout, _) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 0, "{stdout}");

    // By hand, without publish_via_partition_root: the strategy would get nothing.
    db.psql("DROP PUBLICATION part_twice; CREATE PUBLICATION part_twice FOR TABLE public.payments")
        .await;
    let (code, stdout, _) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 1, "{stdout}");
    let finding: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(finding.len(), 1, "one finding for one problem:\n{stdout}");
    assert!(
        finding[0].contains("public.payments is partitioned")
            && finding[0].ends_with(
                "— fix: ALTER PUBLICATION part_twice SET (publish_via_partition_root = true);"
            ),
        "{stdout}"
    );
    db.psql("ALTER PUBLICATION part_twice SET (publish_via_partition_root = true)")
        .await;
    let (code, stdout, _) = walhook(&["check", "--no-network"], &config).await;
    assert_eq!(code, 0, "{stdout}");
}

/// `walhook run` checks the schema while it builds the endpoints' clients
/// and connects to the state database; whichever of them fails, the error
/// names it, a schema problem still comes first, and the publication and
/// the state schema are not created.
#[tokio::test]
async fn run_names_what_failed_at_start_and_creates_nothing() {
    let db = fresh_db("startfail").await;
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric)")
        .await;
    let created = "SELECT (SELECT count(*) FROM pg_publication) || ' ' || \
                   (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')";
    // The config file itself is no PEM bundle: the endpoint cannot be built.
    let bad_ca = |tables: &[&str]| {
        config(&db.url(), "startfail", tables).replace(
            "url = \"http://127.0.0.1:9/hook\"\n",
            "url = \"http://127.0.0.1:9/hook\"\ntls = { ca_file = \"config.toml\" }\n",
        )
    };

    let out = Walhook::run(&bad_ca(&["public.orders", "public.missing"]))
        .output()
        .await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("table public.missing does not exist"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("ca_file"), "{}", out.stderr);
    assert_eq!(db.psql(created).await, "0 0");

    let out = Walhook::run(&bad_ca(&["public.orders"])).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("endpoints.hook.tls.ca_file: config.toml"),
        "{}",
        out.stderr
    );
    assert_eq!(db.psql(created).await, "0 0");

    let no_state_db = format!(
        "{}\n[state]\nurl = \"{}\"\n",
        config(&db.url(), "startfail", &["public.orders"]),
        db.url().replace("/startfail", "/startfail_no_such_db"),
    );
    let out = Walhook::run(&no_state_db).output().await;
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("the walhook state schema")
            && out.stderr.contains("startfail_no_such_db"),
        "{}",
        out.stderr
    );
    assert_eq!(db.psql(created).await, "0 0");
}
