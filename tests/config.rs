//! `walhook run` with a bad configuration: exit 2, every problem printed with
//! its path, and nothing created in the database.

mod common;

use std::process::{Command, Output, Stdio};

use walhook::config::Config;

fn walhook(args: &[&str], config: Option<&str>, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    if let Some(text) = config {
        std::fs::write(&path, text).unwrap();
    }
    let mut cmd = Command::new(common::walhook_bin());
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("WALHOOK_LOG")
        .env_remove("WALHOOK_DATABASE_URL")
        .env_remove("WALHOOK_ADMIN_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_exits_2_listing_every_problem_and_creates_nothing() {
    let url = common::fresh_db("bad_config");
    let dbname = url.rsplit('/').next().unwrap().to_string();
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
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for expected in [
        "config.toml has 4 problems",
        "strategies[0].on_updat: unknown field",
        "strategies[1].endpoint: no endpoint named \"nowhere\"",
        "strategies[1].on_delete: environment variable ITEMS_FILTER is not set",
        "endpoints.hook.timeout: invalid duration \"soon\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    let cluster = common::cluster();
    let slots = cluster
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bad_config_slot'",
        )
        .unwrap();
    assert_eq!(slots, "0", "a slot was created despite the bad config");
    let publications = cluster
        .psql(&dbname, "SELECT count(*) FROM pg_publication")
        .unwrap();
    assert_eq!(
        publications, "0",
        "a publication was created despite the bad config"
    );
}

#[test]
fn toml_syntax_error_exits_2_with_line_and_column() {
    let out = walhook(&["run"], Some("[source]\nurl = postgres://x\n"), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("line 2, column 7"), "{err}");
}

#[test]
fn missing_config_file_exits_2_naming_it() {
    let out = walhook(&["run", "-c", "missing.toml"], None, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("cannot read missing.toml"), "{err}");

    // -c defaults to ./config.toml
    let out = walhook(&["run"], None, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read config.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = walhook(&["frobnicate"], None, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = walhook(&["run", "--log-format", "xml"], None, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = walhook(&["--version"], None, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn invalid_log_filter_exits_2() {
    let out = walhook(&["run"], None, &[("WALHOOK_LOG", "walhook=loud")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid WALHOOK_LOG"), "{err}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let env = |name: &str| match name {
        "WALHOOK_DATABASE_URL" => Some("postgres://walhook@127.0.0.1:5432/shop".to_string()),
        _ => None,
    };
    let config = Config::parse(&text, &env).unwrap_or_else(|errors| panic!("{errors}"));
    assert!(!config.strategies.is_empty());
}
