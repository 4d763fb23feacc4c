//! Backfills as a DBA and a receiver meet them: a strategy's first backfill
//! (a new deployment, a strategy added by SIGHUP) leaves an exact copy
//! while a writer runs; a run over a large table holds no transaction
//! longer than a chunk; a filtered run reads only the rows it sends.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::copy::{copy_of, differences, Scene, Writer};
use super::{call, wait_finished};
use crate::support::{wait_until, Receiver, WAIT};

/// The first run with trigger `initial` of `strategy`, once it ended.
async fn initial_run(scene: &Scene, strategy: &str) -> Value {
    let id = std::cell::Cell::new(0);
    wait_until(
        WAIT,
        &format!("the first backfill of {strategy}"),
        || async {
            let found: Option<i64> = scene
                .db
                .try_psql(&format!(
                "SELECT id FROM walhook.runs WHERE strategy = '{strategy}' AND trigger = 'initial'"
            ))
                .await
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let Some(found) = found {
                id.set(found);
            }
            found.is_some()
        },
    )
    .await;
    wait_finished(&scene.admin, id.get()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_backfill_on_a_new_deployment_and_one_added_by_sighup_leave_exact_copies() {
    // A new deployment: the strategy's first run backfills it, under a writer.
    let scene = Scene::new("bf_initial", 20_000, "backfill = { initial = true }").await;
    let writer = Writer::start(&scene.db, 20_000, 3_000).await;
    let walhook = scene.start().await;
    let run = initial_run(&scene, "copy").await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());
    assert_eq!(writer.finish().await, 3_000);
    scene.caught_up().await;
    let (stale, back, missing) = differences(&copy_of(&scene.hook), &scene.table().await);
    assert_eq!(
        (stale, back, missing),
        (0, 0, 0),
        "the first copy equals the table"
    );

    // A strategy added by SIGHUP, while the writer goes on.
    let second = Receiver::start().await;
    second.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    let added = format!(
        "{}\n[endpoints.second]\nurl = \"{}\"\n\n[[strategies]]\nname = \"added\"\n\
         table = \"public.accounts\"\nendpoint = \"second\"\non_insert = \"true\"\n\
         on_update = \"true\"\non_delete = \"true\"\nbatch_size = 500\nlinger = \"10ms\"\n\
         backfill = {{ initial = true, chunk_size = 1000 }}\n",
        scene.config,
        second.url("/second")
    );
    let writer = Writer::start(&scene.db, 20_000, 3_000).await;
    wait_until(WAIT, "the writer under way", || async {
        writer.committed() > 100
    })
    .await;
    walhook.rewrite_config(&added);
    walhook.signal(libc::SIGHUP);
    let run = initial_run(&scene, "added").await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());
    assert_eq!(writer.finish().await, 3_000);
    scene.caught_up().await;
    let table = scene.table().await;
    let (stale, back, missing) = differences(&copy_of(&second), &table);
    assert_eq!(
        (stale, back, missing),
        (0, 0, 0),
        "the added strategy's copy equals the table"
    );
    let (stale, back, missing) = differences(&copy_of(&scene.hook), &table);
    assert_eq!(
        (stale, back, missing),
        (0, 0, 0),
        "the first strategy's still does"
    );

    // A restart does not backfill again.
    walhook.stop().await;
    let walhook = scene.start().await;
    scene
        .db
        .psql("UPDATE public.accounts SET balance = 7 WHERE id = 1")
        .await;
    scene.caught_up().await;
    assert_eq!(
        scene
            .db
            .psql("SELECT count(*) FROM walhook.runs WHERE trigger = 'initial'")
            .await
            .trim(),
        "2",
        "one first backfill per strategy"
    );
    walhook.stop().await;
}

/// The longest transaction open on a run's connection while it backfills a
/// million rows stays a small part of the run (each chunk is its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_a_million_rows_holds_no_transaction_longer_than_a_chunk() {
    // Every thousandth row is sent: the run reads them all (`%` is not
    // pushed down) without a million records to receive.
    let scene = Scene::new("bf_long", 1_000_000, "").await;
    let walhook = scene.start().await;
    let (status, body) = call(
        "POST",
        &scene.admin,
        "/strategies/copy/runs?mode=async&filter=row.id%20%25%201000%20%3D%3D%200",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    let sampler = walhook::pg::connect(&scene.db.url(), "sampler")
        .await
        .expect("the sampler connects");
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    let mut samples = 0;
    loop {
        let row = sampler
            .query_one(
                "SELECT coalesce(max(extract(epoch from clock_timestamp() - xact_start)), 0)::float8 \
                 FROM pg_stat_activity WHERE application_name = 'walhook-run' AND xact_start IS NOT NULL",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        longest = longest.max(Duration::from_secs_f64(row.get::<_, f64>(0)));
        samples += 1;
        let (_, body) = call("GET", &scene.admin, &format!("/runs/{id}")).await;
        let run: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if run["state"] != "running" {
            assert_eq!(run["state"], "succeeded", "{run}");
            assert_eq!(run["counts"]["read"], 1_000_000, "{run}");
            assert_eq!(run["counts"]["delivered"], 1_000, "{run}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run ended"
        );
    }
    let run_time = started.elapsed();
    eprintln!(
        "1,000,000 rows in {run_time:?}: the longest transaction a run held open was {longest:?} ({samples} samples)"
    );
    assert!(samples > 10, "sampled while the run went on");
    assert!(
        longest * 10 < run_time,
        "no transaction near the run's length: longest {longest:?} of {run_time:?}"
    );
    walhook.stop().await;
}

/// What `accounts` rows the database fetched (sequentially or by index).
async fn tuples_read(scene: &Scene) -> i64 {
    scene
        .db
        .psql(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) \
             FROM pg_stat_user_tables WHERE relname = 'accounts'",
        )
        .await
        .trim()
        .parse()
        .expect("a number")
}

/// Runs `filter` to its end; the rows the database fetched for it.
async fn fetched_by(scene: &Scene, filter: &str) -> (i64, Value) {
    let before = tuples_read(scene).await;
    let (status, body) = call(
        "POST",
        &scene.admin,
        &format!(
            "/strategies/copy/runs?mode=async&filter={}",
            super::encode(filter)
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    let run = wait_finished(&scene.admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    // Statistics reach the server when the run's connection ends.
    let fetched = std::cell::Cell::new(0);
    wait_until(WAIT, "the run's reads in pg_stat_user_tables", || async {
        fetched.set(tuples_read(scene).await - before);
        fetched.get() > 0
    })
    .await;
    (fetched.get(), run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_run_over_a_large_table_reads_only_the_matching_rows() {
    let scene = Scene::new("bf_narrow", 200_000, "").await;
    // 1% of the rows, and an index a DBA would have for them.
    scene
        .db
        .psql(
            "ALTER TABLE public.accounts ADD COLUMN status text NOT NULL DEFAULT 'closed';
             UPDATE public.accounts SET status = 'open' WHERE id % 100 = 0;
             CREATE INDEX accounts_status_id ON public.accounts (status, id);
             ANALYZE public.accounts;",
        )
        .await;
    let walhook = scene.start().await;
    let (narrow, run) = fetched_by(&scene, r#"row.status == "open""#).await;
    assert_eq!(run["counts"]["delivered"], 2_000, "{run}");
    // The same rows, with a filter nothing of which becomes SQL.
    let (wide, run) = fetched_by(&scene, r#"row.status == "open" || len(row.status) < 0"#).await;
    assert_eq!(run["counts"]["delivered"], 2_000, "{run}");
    eprintln!("rows the database fetched: {narrow} with the filter as SQL, {wide} without");
    assert!(
        narrow * 10 < wide,
        "only the matching rows were read: {narrow} against {wide}"
    );
    assert!(wide >= 200_000, "without it, every row: {wide}");
    walhook.stop().await;
}

/// A run's `read` records carry exactly the values the live stream sends
/// for the same rows: every type of the capture fixture, read by COPY,
/// written by the same code as a decoded change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_rows_are_the_values_the_stream_sends_for_every_type() {
    let script = include_str!("../fixtures/capture_v1.sql");
    let section = |from: &str, to: &str| {
        let start = script.find(from).expect("section start");
        let end = script[start..].find(to).expect("section end");
        script[start..start + end].to_string()
    };
    let scene = Scene::new("bf_types", 1, "").await;
    scene
        .db
        .psql(&section("CREATE TYPE mood", "CREATE TABLE toasty "))
        .await;
    scene
        .db
        .psql(
            "GRANT SELECT ON all_types TO bf_types_app; ALTER PUBLICATION bf_types ADD TABLE all_types;",
        )
        .await;
    let config = format!(
        "{}\n[[strategies]]\nname = \"types\"\ntable = \"public.all_types\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nbatch_size = 500\nlinger = \"10ms\"\non_demand = {{ async = true }}\n",
        scene.config
    );
    let mut walhook = crate::support::Walhook::run(&config).spawn();
    walhook.wait_streaming(&scene.db, &scene.slot).await;
    scene
        .db
        .psql(&section("-- 1: every type", "-- 2: updates"))
        .await;
    scene.caught_up().await;
    let (status, body) = call("POST", &scene.admin, "/strategies/types/runs?mode=async").await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    let run = wait_finished(&scene.admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());
    let records: Vec<Value> = scene
        .hook
        .accepted_records()
        .into_iter()
        .filter(|r| r["table"] == "all_types")
        .collect();
    let by_op = |op: &str| -> std::collections::BTreeMap<i64, Value> {
        records
            .iter()
            .filter(|r| r["op"] == op)
            .map(|r| (r["new"]["id"].as_i64().expect("id"), r["new"].clone()))
            .collect()
    };
    let (live, read) = (by_op("insert"), by_op("read"));
    assert!(live.len() >= 3, "{records:?}");
    assert_eq!(
        live, read,
        "a read record's values are the live insert's, column for column"
    );
    walhook.stop().await;
}
