//! SQL connections opened from `source.url` (`walhook::pg`).

use walhook::pg;

use crate::support::cluster::add_hba_lines;
use crate::support::{cluster, fresh_db, Db};

#[tokio::test]
async fn connects_with_the_source_url_with_and_without_tls_preference() {
    let url = fresh_db("db_connect").await.url();
    for suffix in ["", "?sslmode=disable", "?sslmode=prefer"] {
        let client = pg::connect(&format!("{url}{suffix}"), "walhook-test")
            .await
            .unwrap_or_else(|e| panic!("connect with {suffix:?}: {e}"));
        let row = client
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "walhook-test");
    }
}

#[tokio::test]
async fn a_wrong_password_names_role_and_host_but_not_the_password() {
    let cluster = cluster();
    Db::existing(cluster, "postgres")
        .psql("DO $$ BEGIN CREATE ROLE db_pw_role LOGIN PASSWORD 'right-pw-123'; EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        .await;
    add_hba_lines(&["host all db_pw_role 127.0.0.1/32 scram-sha-256"]).await;
    let url = format!(
        "postgres://db_pw_role:wrong-pw-456@127.0.0.1:{}/postgres?sslmode=disable",
        cluster.port()
    );
    let err = pg::connect(&url, "walhook").await.unwrap_err().to_string();
    assert!(err.contains("db_pw_role"), "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!err.contains("wrong-pw-456"), "{err}");
    let ok = format!(
        "postgres://db_pw_role:right-pw-123@127.0.0.1:{}/postgres?sslmode=disable",
        cluster.port()
    );
    pg::connect(&ok, "walhook").await.unwrap();
}
