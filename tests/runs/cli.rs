//! `walhook run-strategy`: one run without the admin server; exit 0 when
//! delivered, non-zero when delivery fails past the retry policy.

use std::time::Duration;

use regex::Regex;
use serde_json::Value;

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

/// A strategy `seed` over `t` (2500 rows) to a receiver that answers in
/// 50–300 ms, in batches of 250.
async fn seeded(prefix: &str) -> (Db, Receiver, String) {
    let (url, db) = setup(prefix).await;
    let receiver = Receiver::start().await;
    receiver.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"seed\"\ntable = \"t\"\n\
         endpoint = \"hook\"\non_insert = \"true\"\nbatch_size = 250\n",
        base_config(&url, prefix, prefix),
        receiver.url("/hook")
    );
    (db, receiver, config)
}

/// The text without colour and style codes (`ESC [ … m`).
fn strip_style(text: &str) -> String {
    Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(text, "")
        .into_owned()
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
    // stderr: progress as log lines, no terminal control sequences; the
    // estimate is the table's 2500 rows capped by --limit.
    let progress: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("run progress"))
        .collect();
    assert!(
        progress
            .first()
            .is_some_and(|l| l.contains("estimate=2000")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\x1b'), "{:?}", out.stderr);
    // stdout: the one-line summary, for scripts.
    let summary = out.stdout.trim();
    assert!(
        summary.starts_with("run ")
            && summary.contains(
                // The filter is the chunks' SQL: rows 1 to 100 are not read.
                " succeeded: 2000 rows read, 2000 records sent, 2000 delivered, 0 failed, "
            ),
        "{summary}"
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
        out.stdout.contains(
            " failed: 2500 rows read, 2500 records sent, 1500 delivered, 1000 failed, 3 batches in "
        ),
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

#[tokio::test]
async fn on_a_terminal_run_strategy_draws_a_progress_bar_up_to_every_row() {
    let (_db, receiver, config) = seeded("runs_cli_tty").await;
    let on_a_terminal = |env: &[(&str, &str)]| {
        let command = Walhook::command(&["run-strategy", "seed", "-c", "config.toml"])
            .config(&config)
            .envs(env);
        async move {
            let (status, screen) = command.on_a_terminal().await;
            assert!(status.success(), "{status:?}: {screen}");
            screen
        }
    };
    let coloured = on_a_terminal(&[]).await;
    assert_eq!(receiver.accepted_record_ids().len(), 2500);
    assert!(coloured.contains("\x1b[3"), "a coloured bar: {coloured:?}");
    let plain = on_a_terminal(&[("NO_COLOR", "1")]).await;
    assert_eq!(receiver.accepted_record_ids().len(), 5000);
    assert_eq!(
        strip_style(&plain),
        plain,
        "NO_COLOR: no colour, still a bar"
    );

    // Refused before it began: the reason, and no bar.
    let (status, screen) = Walhook::command(&[
        "run-strategy",
        "seed",
        "--filter",
        "row.nope > 1",
        "-c",
        "config.toml",
    ])
    .config(&config)
    .on_a_terminal()
    .await;
    assert_eq!(status.code(), Some(2), "{screen}");
    assert!(screen.contains("has no column \"nope\""), "{screen:?}");
    assert!(!screen.contains("rows"), "{screen:?}");

    let frame = Regex::new(r"run (\d+) \[([=> ]{25})\] (\d+)/2500 rows \((\d+)%\)").unwrap();
    for screen in [strip_style(&coloured), plain] {
        let frames: Vec<(String, u64)> = frame
            .captures_iter(&screen)
            .map(|c| (c[2].to_string(), c[3].parse().unwrap()))
            .collect();
        // Redrawn as batches are delivered: a part of the bar, then all of it.
        assert!(
            frames
                .iter()
                .any(|(bar, done)| (1..2500).contains(done) && bar.contains('>')),
            "no partial bar in {screen:?}"
        );
        assert_eq!(
            frames.last(),
            Some(&("=".repeat(25), 2500)),
            "the bar ends full: {screen:?}"
        );
        let done: Vec<u64> = frames.iter().map(|f| f.1).collect();
        assert!(done.is_sorted(), "the count only grows: {done:?}");
        assert!(
            screen.contains("2500/2500 rows (100%) · 2500 delivered, 0 failed"),
            "{screen:?}"
        );
        // The logs stay readable beside the bar; the summary follows it.
        assert!(screen.contains("run succeeded"), "{screen:?}");
        assert!(
            screen.contains(
                " succeeded: 2500 rows read, 2500 records sent, 2500 delivered, 0 failed, "
            ),
            "{screen:?}"
        );
    }
}

#[tokio::test]
async fn without_a_terminal_run_strategy_logs_plain_progress_lines_in_the_log_format() {
    let (_db, receiver, config) = seeded("runs_cli_lines").await;
    let out = run_strategy(&config, &["seed", "--log-format", "json"]).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(receiver.accepted_record_ids().len(), 2500);
    assert!(!out.stderr.contains('\x1b'), "{:?}", out.stderr);
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let progress: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "run progress")
        .collect();
    assert!(!progress.is_empty(), "{}", out.stderr);
    for line in &progress {
        assert_eq!(line["fields"]["estimate"], 2500, "{line}");
        assert!(line["fields"]["rows"].as_u64().unwrap() <= 2500, "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "run succeeded" && l["fields"]["delivered"] == 2500),
        "{}",
        out.stderr
    );
    let summary: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(summary.len(), 1, "{}", out.stdout);
    assert!(
        summary[0]
            .contains(" succeeded: 2500 rows read, 2500 records sent, 2500 delivered, 0 failed, "),
        "{}",
        out.stdout
    );
}

/// `walhook run-strategy` while another walhook streams the slot but its
/// admin API is not where `-c` says: the CLI names the walsender streaming
/// the slot (read through `pg::slot`) and starts nothing of its own.
#[tokio::test]
async fn run_strategy_refuses_when_a_walhook_streams_the_slot_out_of_reach() {
    let (db, receiver, config) = seeded("runs_cli_elsewhere").await;
    let walhook = super::start_streaming(&config, &db, "runs_cli_elsewhere").await;
    let elsewhere = config.replace(
        "[admin]\nlisten = \"127.0.0.1:",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n# was 127.0.0.1:",
            crate::support::free_port()
        ),
    );
    assert_ne!(elsewhere, config);
    let out = run_strategy(&elsewhere, &["seed"]).await;
    assert_ne!(out.code(), Some(0), "{}", out.stderr);
    let pid = db
        .psql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'runs_cli_elsewhere'")
        .await;
    let pid = pid.trim();
    assert!(
        out.stderr
            .contains("a walhook streams from slot runs_cli_elsewhere")
            && out.stderr.contains(&format!("walsender pid {pid}")),
        "{}",
        out.stderr
    );
    assert_eq!(receiver.arrivals(), 0, "the CLI sent nothing");
    walhook.stop().await;
}

/// `walhook run-strategy` checks the file against the live schema as
/// `walhook run` does (one `prepare` path): a filter on a column the table
/// lacks is refused with exit 2 and the field, before anything is sent or
/// created in the database.
#[tokio::test]
async fn run_strategy_refuses_what_walhook_run_would_refuse_before_changing_anything() {
    let (url, db) = setup("runs_cli_prepare").await;
    let receiver = Receiver::start().await;
    let config = format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"seed\"\ntable = \"t\"\n\
         endpoint = \"hook\"\non_insert = \"new.missing % 2 == 0\"\n",
        base_config(&url, "runs_cli_prepare", "runs_cli_prepare"),
        receiver.url("/hook")
    );
    let out = run_strategy(&config, &["seed"]).await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the database does not match the configuration")
            && out.stderr.contains("strategies[0]")
            && out.stderr.contains("missing"),
        "{}",
        out.stderr
    );
    assert_eq!(receiver.arrivals(), 0, "the CLI sent nothing");
    let schemas = db
        .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'")
        .await;
    assert_eq!(schemas.trim(), "0", "no state schema was created");
}
