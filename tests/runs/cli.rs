//! `walhook run-strategy`: one run without the admin server; exit 0 when
//! delivered, non-zero when delivery fails past the retry policy.

use crate::support::walhook::{base_config, Exited};
use crate::support::{fresh_db, Db, Receiver, Walhook};

/// `walhook run-strategy ARGS -c config.toml` until it exits by itself.
async fn run_strategy(config: &str, args: &[&str]) -> Exited {
    let args: Vec<&str> = ["run-strategy"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["-c", "config.toml"])
        .collect();
    Walhook::command(&args).config(config).output().await
}

async fn setup(prefix: &str) -> (String, Db) {
    let db = fresh_db(prefix).await;
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 2500) i;",
    )
    .await;
    (db.url(), db)
}

#[tokio::test]
async fn run_strategy_delivers_the_filtered_rows_and_exits_zero() {
    let (url, _db) = setup("runs_cli_ok").await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"seed\"\ntable = \"t\"\n\
         endpoint = \"hook\"\non_insert = \"true\"\nbatch_size = 200\n",
        base_config(&url, "runs_cli_ok", "runs_cli_ok"),
        receiver.url("/hook")
    );
    let out = run_strategy(
        &config,
        &["seed", "--filter", "row.id > 100", "--limit", "2000"],
    )
    .await;
    assert_eq!(
        out.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let ids: Vec<i64> = receiver
        .accepted()
        .iter()
        .flat_map(|r| r.json()["records"].as_array().cloned().unwrap())
        .map(|r| {
            assert_eq!(r["op"], "read");
            r["new"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        (101..=2100).collect::<Vec<_>>(),
        "filter, limit, key order"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() >= 3, "a progress line per page: {}", out.stdout);
    assert!(
        lines.last().unwrap().contains("2000 delivered, 0 failed"),
        "{}",
        out.stdout
    );

    let out = run_strategy(&config, &["nope"]).await;
    assert_eq!(
        out.code(),
        Some(2),
        "unknown strategy is a usage error: {}",
        out.stderr
    );
    let out = run_strategy(&config, &["seed", "--filter", "row.id >"]).await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--filter"), "{}", out.stderr);
}

#[tokio::test]
async fn run_strategy_exits_non_zero_when_attempts_are_exhausted() {
    let (url, _db) = setup("runs_cli_fail").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(1000, 500);
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\nretry = {{ max_attempts = 2, initial = \"10ms\", max = \"50ms\" }}\n\n\
         [[strategies]]\nname = \"seed\"\ntable = \"t\"\nendpoint = \"hook\"\non_insert = \"true\"\n",
        base_config(&url, "runs_cli_fail", "runs_cli_fail"),
        receiver.url("/hook")
    );
    let out = run_strategy(&config, &["seed"]).await;
    assert_eq!(
        out.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("attempts exhausted"), "{}", out.stderr);
    assert!(receiver.arrivals() >= 2);
    assert!(receiver.accepted().is_empty());
}

#[tokio::test]
async fn dead_lettered_batches_count_as_failed_records_and_exit_non_zero() {
    let (url, db) = setup("runs_cli_dead").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(1, 500);
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\
         retry = {{ max_attempts = 1, initial = \"10ms\", on_exhausted = \"dead_letter\" }}\n\n\
         [[strategies]]\nname = \"seed\"\ntable = \"t\"\nendpoint = \"hook\"\non_insert = \"true\"\n\
         batch_size = 1000\nlinger = \"10s\"\n",
        base_config(&url, "runs_cli_dead", "runs_cli_dead"),
        receiver.url("/hook")
    );
    let out = run_strategy(&config, &["seed"]).await;
    assert_eq!(
        out.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .contains("1500 delivered, 1000 failed"),
        "{}",
        out.stdout
    );
    let stored = db
        .psql(
            "SELECT count(*), sum(jsonb_array_length(payload->'records')) FROM walhook.dead_letters",
        )
        .await;
    assert_eq!(stored.trim(), "1|1000");
    let run = db
        .psql("SELECT trigger || '|' || state FROM walhook.runs")
        .await;
    assert_eq!(run.trim(), "cli|failed");
}
