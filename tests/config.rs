//! `walhook run` with a bad configuration: exit 2, every problem printed with
//! its path, and nothing created in the database.

use crate::support::walhook::Exited;
use crate::support::{fresh_db, Db, Walhook};

/// `walhook ARGS` in a temp dir holding `config` as ./config.toml (if given).
async fn walhook(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Exited {
    let mut cmd = Walhook::command(args).envs(env);
    if let Some(text) = config {
        cmd = cmd.config(text);
    }
    cmd.output().await
}

#[tokio::test]
async fn bad_config_exits_2_listing_every_problem_and_creates_nothing() {
    let db = fresh_db("bad_config").await;
    let url = db.url();
    let config = r#"
[source]
url = "${WALHOOK_DATABASE_URL}"
slot = "bad_config_slot"

[endpoints.hook]
url = "http://127.0.0.1:9/hook"
timeout = "soon"

[[strategies]]
name = "orders"
table = "orders"
endpoint = "hook"
on_insert = "true"
on_updat = "true"

[[strategies]]
name = "items"
table = "items"
endpoint = "nowhere"
on_delete = "${ITEMS_FILTER}"
"#;
    let out = walhook(
        &["run"],
        Some(config),
        &[("WALHOOK_DATABASE_URL", url.as_str())],
    )
    .await;
    let err = &out.stderr;
    assert_eq!(out.code(), Some(2), "stderr: {err}");
    for expected in [
        "config.toml has 4 problems",
        "strategies[0].on_updat: unknown key `on_updat`: did you mean `on_update`?",
        "strategies[1].endpoint: no endpoint named \"nowhere\"",
        "strategies[1].on_delete: environment variable ITEMS_FILTER is not set",
        "endpoints.hook.timeout: invalid duration \"soon\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    let slots = Db::existing(db.cluster(), "postgres")
        .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bad_config_slot'")
        .await;
    assert_eq!(slots, "0", "a slot was created despite the bad config");
    let publications = db.psql("SELECT count(*) FROM pg_publication").await;
    assert_eq!(
        publications, "0",
        "a publication was created despite the bad config"
    );
}

#[tokio::test]
async fn reserved_body_keys_exit_2_naming_each_path_and_create_nothing() {
    let db = fresh_db("reserved_body").await;
    let url = db.url();
    db.psql("CREATE TABLE orders (id int PRIMARY KEY)").await;
    let config = r#"
[source]
url = "${WALHOOK_DATABASE_URL}"
slot = "reserved_body_slot"

[endpoints.hook]
url = "http://127.0.0.1:9/hook"

[[strategies]]
name = "orders"
table = "orders"
endpoint = "hook"
on_insert = "true"
body = { records = "x", strategy = { expr = "strategy" }, batch = 1, source = "erp" }
"#;
    for command in ["run", "setup"] {
        let out = walhook(
            &[command],
            Some(config),
            &[("WALHOOK_DATABASE_URL", url.as_str())],
        )
        .await;
        let err = &out.stderr;
        assert_eq!(out.code(), Some(2), "{command}: {err}");
        for key in ["records", "strategy", "batch"] {
            let expected = format!("strategies[0].body.{key}: `{key}` is part of every payload");
            assert!(
                err.contains(&expected),
                "{command}: missing {expected:?} in:\n{err}"
            );
        }
        assert!(err.contains("config.toml has 3 problems"), "{err}");
    }
    let slots = Db::existing(db.cluster(), "postgres")
        .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'reserved_body_slot'")
        .await;
    assert_eq!(slots, "0");
    let created = db
        .psql(
            "SELECT (SELECT count(*) FROM pg_publication) + \
             (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')",
        )
        .await;
    assert_eq!(
        created, "0",
        "a publication or the state schema was created"
    );
}

#[tokio::test]
async fn toml_syntax_error_exits_2_with_line_and_column() {
    let out = walhook(&["run"], Some("[source]\nurl = postgres://x\n"), &[]).await;
    let err = &out.stderr;
    assert_eq!(out.code(), Some(2), "stderr: {err}");
    assert!(err.contains("line 2, column 7"), "{err}");
}

#[tokio::test]
async fn missing_config_file_exits_2_naming_it() {
    let out = walhook(&["run", "-c", "missing.toml"], None, &[]).await;
    let err = &out.stderr;
    assert_eq!(out.code(), Some(2), "stderr: {err}");
    assert!(err.contains("cannot read missing.toml"), "{err}");

    // -c defaults to ./config.toml
    let out = walhook(&["run"], None, &[]).await;
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("cannot read config.toml"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out = walhook(&["frobnicate"], None, &[]).await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let out = walhook(&["run", "--log-format", "xml"], None, &[]).await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let out = walhook(&["--version"], None, &[]).await;
    assert_eq!(out.code(), Some(0));
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn invalid_log_filter_exits_2() {
    let out = walhook(&["run"], None, &[("WALHOOK_LOG", "walhook=loud")]).await;
    let err = &out.stderr;
    assert_eq!(out.code(), Some(2), "{err}");
    assert!(err.contains("invalid WALHOOK_LOG"), "{err}");
}
