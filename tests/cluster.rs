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
