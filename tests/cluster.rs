//! The throwaway cluster itself: logical WAL, SQL, crash restart, cleanup.

use walhook::cluster::{Cluster, ClusterOptions};

use crate::support::cluster::{add_hba_lines, replica_cluster};
use crate::support::{cluster, fresh_db, Db};

#[tokio::test]
async fn shared_cluster_has_logical_wal_and_fresh_databases() {
    let cluster = cluster();
    assert_eq!(
        cluster.psql("postgres", "SHOW wal_level").unwrap(),
        "logical"
    );
    let db = fresh_db("Cluster Test").await;
    let url = db.url();
    let dbname = url.rsplit('/').next().unwrap();
    assert_eq!(dbname, db.name());
    assert!(dbname.starts_with("cluster_test_"), "{url}");
    assert_eq!(db.psql("SELECT current_database()").await, dbname);
}

#[test]
fn own_cluster_survives_a_crash_restart_and_is_removed_on_drop() {
    let cluster =
        Cluster::start(ClusterOptions::default().setting("max_wal_senders", "7")).unwrap();
    assert_eq!(
        cluster.psql("postgres", "SHOW max_wal_senders").unwrap(),
        "7"
    );
    assert!(cluster
        .url("db")
        .ends_with(&format!(":{}/db", cluster.port())));
    cluster.create_database("kept").unwrap();
    cluster
        .psql(
            "kept",
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
    let pid_before = cluster
        .psql("postgres", "SELECT pg_postmaster_start_time()")
        .unwrap();

    cluster.restart_immediate().unwrap();

    let pid_after = cluster
        .psql("postgres", "SELECT pg_postmaster_start_time()")
        .unwrap();
    assert_ne!(pid_before, pid_after, "the server did not restart");
    assert_eq!(cluster.psql("kept", "SELECT count(*) FROM t").unwrap(), "2");

    let err = cluster
        .psql("kept", "SELECT * FROM missing_table")
        .unwrap_err();
    assert!(err.to_string().contains("missing_table"), "{err}");

    let dir = cluster.dir().to_path_buf();
    let port = cluster.port();
    assert!(dir.join("data").is_dir());
    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "postgres still listens on {port} after drop"
    );
}

/// On the shared cluster: the line is for a role of this test only.
#[tokio::test]
async fn hba_lines_added_first_take_effect_after_reload() {
    let cluster = cluster();
    let postgres = Db::existing(cluster, "postgres");
    postgres
        .psql("CREATE ROLE cluster_locked LOGIN PASSWORD 'right'")
        .await;
    let connect = |password: &str| {
        std::process::Command::new(cluster.bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .arg(format!(
                "postgres://cluster_locked:{password}@127.0.0.1:{}/postgres",
                cluster.port()
            ))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        connect("wrong"),
        "trust should admit any password before the hba change"
    );

    add_hba_lines(&["host all cluster_locked 127.0.0.1/32 scram-sha-256"]).await;

    assert!(
        !connect("wrong"),
        "a wrong password was accepted after reload"
    );
    assert!(connect("right"), "the right password was refused");
}

/// Runs one of the shipped `sql/` scripts with psql variables.
fn run_script(
    cluster: &Cluster,
    dbname: &str,
    script: &str,
    vars: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(cluster.bin_dir().join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg(cluster.url(dbname))
        .arg("-f")
        .arg(format!("{}/sql/{script}", env!("CARGO_MANIFEST_DIR")))
        .stdin(std::process::Stdio::null());
    for (name, value) in vars {
        cmd.arg("-v").arg(format!("{name}={value}"));
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn setup_and_teardown_scripts_create_and_drop_what_they_say() {
    let cluster = cluster();
    let fresh = fresh_db("scripts").await;
    let db = fresh.name();
    cluster
        .psql(
            db,
            "CREATE TABLE orders (id int PRIMARY KEY, amount numeric);
             CREATE TABLE items (id int PRIMARY KEY);
             CREATE ROLE scripts_role LOGIN REPLICATION;",
        )
        .unwrap();
    let vars = [
        ("tables", "public.orders, public.items"),
        ("slot", "scripts_slot"),
        ("publication", "scripts_pub"),
        ("role", "scripts_role"),
    ];

    let missing_tables = run_script(cluster, db, "setup.sql", &vars[1..]);
    assert!(!missing_tables.status.success());
    assert!(String::from_utf8_lossy(&missing_tables.stderr).contains("-v tables="));
    assert_eq!(
        cluster
            .psql(db, "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "0"
    );

    for run in 0..2 {
        let out = run_script(cluster, db, "setup.sql", &vars);
        assert!(
            out.status.success(),
            "setup run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let slot = cluster
        .psql(
            db,
            "SELECT plugin || ' ' || database FROM pg_replication_slots WHERE slot_name = 'scripts_slot'",
        )
        .unwrap();
    assert_eq!(slot, format!("pgoutput {db}"));
    let tables = cluster
        .psql(
            db,
            "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename)
             FROM pg_publication_tables WHERE pubname = 'scripts_pub'",
        )
        .unwrap();
    assert_eq!(tables, "public.items,public.orders");
    // The role owns nothing: it is granted what it needs on each table.
    let grants = cluster
        .psql(
            db,
            "SELECT string_agg(tablename || ':' || tableowner || ':'
                    || (SELECT bool_and(has_table_privilege('scripts_role', 'walhook.' || tablename, p))
                        FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p)::text,
                    ',' ORDER BY tablename)
             FROM pg_tables WHERE schemaname = 'walhook'",
        )
        .unwrap();
    assert_eq!(
        grants,
        "batches:postgres:true,dead_letters:postgres:true,holds:postgres:true,parked:postgres:true,\
         pauses:postgres:true,runs:postgres:true,slots:postgres:true"
    );
    cluster
        .psql(
            db,
            "SET ROLE scripts_role;
             SELECT count(*) FROM public.orders;
             INSERT INTO walhook.dead_letters (strategy, batch_id, first_lsn, last_lsn, payload, attempts)
             VALUES ('s', 'b', '0/1', '0/2', '{}', 3);",
        )
        .unwrap();

    let out = run_script(
        cluster,
        db,
        "teardown.sql",
        &[("slot", "scripts_slot"), ("publication", "scripts_pub")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = cluster
        .psql(
            db,
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'scripts_slot')
                  || ' ' || (SELECT count(*) FROM pg_publication)
                  || ' ' || (SELECT count(*) FROM walhook.dead_letters)",
        )
        .unwrap();
    assert_eq!(left, "0 0 1", "slot, publication gone; dead letters kept");

    let out = run_script(
        cluster,
        db,
        "teardown.sql",
        &[
            ("slot", "scripts_slot"),
            ("publication", "scripts_pub"),
            ("drop_state", "1"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schema = cluster
        .psql(
            db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'",
        )
        .unwrap();
    assert_eq!(schema, "0");
}

#[tokio::test]
async fn setup_script_refuses_a_server_without_logical_wal() {
    let cluster = tokio::task::spawn_blocking(replica_cluster).await.unwrap();
    let fresh = Db::create(cluster, "scripts_replica").await;
    let db = fresh.name();
    fresh.psql("CREATE TABLE t (id int)").await;
    let out = run_script(cluster, db, "setup.sql", &[("tables", "public.t")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wal_level is replica, walhook needs logical"),
        "{err}"
    );
    assert!(
        err.contains("wal_level = logical in postgresql.conf"),
        "{err}"
    );
    let created = fresh.psql("SELECT count(*) FROM pg_publication").await;
    assert_eq!(created, "0");
}
