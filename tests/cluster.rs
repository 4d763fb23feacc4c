//! The throwaway cluster itself: logical WAL, SQL, crash restart, cleanup.

mod common;

use walhook::cluster::{Cluster, ClusterOptions};

#[test]
fn shared_cluster_has_logical_wal_and_fresh_databases() {
    let cluster = common::cluster();
    assert_eq!(
        cluster.psql("postgres", "SHOW wal_level").unwrap(),
        "logical"
    );
    let url = common::fresh_db("Cluster Test");
    let dbname = url.rsplit('/').next().unwrap();
    assert!(dbname.starts_with("cluster_test_"), "{url}");
    assert_eq!(
        cluster.psql(dbname, "SELECT current_database()").unwrap(),
        dbname
    );
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

#[test]
fn hba_lines_added_first_take_effect_after_reload() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .psql("postgres", "CREATE ROLE locked LOGIN PASSWORD 'right'")
        .unwrap();
    let connect = |password: &str| {
        std::process::Command::new(cluster.bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .arg(format!(
                "postgres://locked:{password}@127.0.0.1:{}/postgres",
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

    cluster
        .add_hba_line_first("host all locked 127.0.0.1/32 scram-sha-256")
        .unwrap();
    cluster.reload().unwrap();

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

#[test]
fn setup_and_teardown_scripts_create_and_drop_what_they_say() {
    let cluster = common::cluster();
    let url = common::fresh_db("scripts");
    let db = url.rsplit('/').next().unwrap();
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
    let owners = cluster
        .psql(
            db,
            "SELECT string_agg(tablename || ':' || tableowner, ',' ORDER BY tablename)
             FROM pg_tables WHERE schemaname = 'walhook'",
        )
        .unwrap();
    assert_eq!(
        owners,
        "batches:scripts_role,dead_letters:scripts_role,runs:scripts_role"
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

#[test]
fn setup_script_refuses_a_server_without_logical_wal() {
    let cluster =
        Cluster::start(ClusterOptions::default().setting("wal_level", "replica")).unwrap();
    cluster.psql("postgres", "CREATE TABLE t (id int)").unwrap();
    let out = run_script(&cluster, "postgres", "setup.sql", &[("tables", "public.t")]);
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
    let created = cluster
        .psql("postgres", "SELECT count(*) FROM pg_publication")
        .unwrap();
    assert_eq!(created, "0");
}
