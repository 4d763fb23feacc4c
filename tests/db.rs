//! SQL connections opened from `source.url`.

mod common;

use walhook::pg;

#[tokio::test]
async fn connects_with_the_source_url_with_and_without_tls_preference() {
    let url = common::fresh_db("db_connect");
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
    let cluster = common::cluster();
    cluster
        .psql("postgres", "DO $$ BEGIN CREATE ROLE db_pw_role LOGIN PASSWORD 'right-pw-123'; EXCEPTION WHEN duplicate_object THEN NULL; END $$;")
        .unwrap();
    cluster
        .add_hba_line_first("host all db_pw_role 127.0.0.1/32 scram-sha-256")
        .unwrap();
    cluster.reload().unwrap();
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
