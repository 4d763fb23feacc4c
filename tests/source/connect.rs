//! Authentication against a real throwaway PostgreSQL: trust, cleartext,
//! md5 and SCRAM-SHA-256 roles connect; a wrong password fails clearly.

use walhook::source::{Disposition, SourceState};

use crate::support::cluster::add_hba_lines;
use crate::support::source::{assert_insert, items_db, options, spawn};
use crate::support::{cluster, wait_until, Db, WAIT};

/// Creates a REPLICATION role whose password is stored with `encryption`,
/// and puts an hba line with `method` for it first.
async fn role(db: &Db, name: &str, encryption: &str, method: &str) {
    db.psql(&format!(
        "SET password_encryption = '{encryption}';
         CREATE ROLE {name} LOGIN REPLICATION PASSWORD 'pw of {name}';
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name};"
    ))
    .await;
    let stored = db
        .psql(&format!(
            "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{name}'"
        ))
        .await;
    let expected = if encryption == "md5" { "md5" } else { "SCR" };
    assert_eq!(stored, expected, "password of {name} stored as {stored}");
    add_hba_lines(&[&format!("host all {name} 127.0.0.1/32 {method}")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_cleartext_md5_and_scram_roles_stream() {
    let db = items_db("src_auth").await;
    let url = db.url();
    role(&db, "walhook_md5", "md5", "md5").await;
    role(&db, "walhook_scram", "scram-sha-256", "scram-sha-256").await;
    role(&db, "walhook_clear", "scram-sha-256", "password").await;

    let mut cases = vec![("trust".to_string(), url.clone(), "s_trust")];
    for (user, slot) in [
        ("walhook_md5", "s_md5"),
        ("walhook_scram", "s_scram"),
        ("walhook_clear", "s_clear"),
    ] {
        cases.push((
            user.to_string(),
            db.url_as(user, &format!("pw of {user}")),
            slot,
        ));
    }
    for (i, (who, url, slot)) in cases.into_iter().enumerate() {
        let mut src = spawn(options(&url, slot));
        src.wait_state(SourceState::Streaming).await;
        db.psql(&format!("INSERT INTO items VALUES ({i}, '{who}')"))
            .await;
        let (_, end, records) = src.next_transaction().await;
        assert_insert(&records[0], i as i32);
        src.acks.ack(end);
        src.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_names_role_and_host_and_is_fatal() {
    let db = items_db("src_badpw").await;
    role(&db, "walhook_wrong", "scram-sha-256", "scram-sha-256").await;
    role(&db, "walhook_wrong_md5", "md5", "md5").await;

    for user in ["walhook_wrong", "walhook_wrong_md5"] {
        let url = db.url_as(user, "not the password");
        let mut src = spawn(options(&url, "s_badpw"));
        let err = tokio::time::timeout(WAIT, &mut src.task)
            .await
            .expect("a wrong password must not be retried forever")
            .unwrap()
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.disposition(), Disposition::Fatal, "{text}");
        assert!(text.contains("(SQLSTATE 28P01)"), "{text}");
        assert!(text.contains(&format!("role \"{user}\"")), "{text}");
        assert!(
            text.contains(&format!("127.0.0.1:{}", cluster().port())),
            "{text}"
        );
        assert!(!text.contains("not the password"), "{text}");
        let status = src.status.borrow().clone();
        assert_eq!(status.state, SourceState::Failed);
        assert!(!format!("{status:?}").contains("not the password"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_password_and_refused_tls_are_explained() {
    let fresh = items_db("src_nopw").await;
    role(&fresh, "walhook_nopw", "scram-sha-256", "scram-sha-256").await;
    let port = cluster().port();
    let db = fresh.name();

    let url = format!("postgres://walhook_nopw@127.0.0.1:{port}/{db}");
    let err = spawn(options(&url, "s_nopw"))
        .task
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("has none"), "{err}");

    // This cluster has ssl = off.
    let url = format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=require");
    let err = spawn(options(&url, "s_notls"))
        .task
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("refused TLS"), "{err}");
    // prefer falls back to plaintext.
    let url = format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=prefer");
    let src = spawn(options(&url, "s_prefer"));
    src.wait_state(SourceState::Streaming).await;
    src.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_retried_not_fatal() {
    // A port nobody listens on: connection refused, retried with backoff.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let src = spawn(options(
        &format!("postgres://u@127.0.0.1:{port}/db"),
        "s_unreach",
    ));
    wait_until(WAIT, "a reported connection error", || {
        let status = src.status.borrow().clone();
        async move { status.last_error.is_some() }
    })
    .await;
    let status = src.status.borrow().clone();
    assert_eq!(status.state, SourceState::Connecting);
    assert!(status
        .last_error
        .unwrap()
        .contains(&format!("127.0.0.1:{port}")));
    assert!(!src.task.is_finished());
    src.stop().await.unwrap();
}
