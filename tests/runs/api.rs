//! On-demand runs through the admin API of a real `walhook run`: async with
//! a filter beside live changes, sync within and over `sync_limit`,
//! row-level security of `run_as`, cancelling.

use std::time::Duration;

use serde_json::Value;

use super::{call, config_with_token, encode, runs_rows, start_streaming, wait_finished};
use crate::support::schema::validate_payload;
use crate::support::{fresh_db, wait_until, Receiver, Reply, WAIT};

#[tokio::test]
async fn async_run_with_a_filter_delivers_exactly_the_matching_rows_in_key_order_beside_live_inserts(
) {
    let db = fresh_db("runs_async").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, kind text NOT NULL, amount int); \
         INSERT INTO items SELECT i, (ARRAY['a','b','c'])[1 + i % 3], i % 97 \
         FROM generate_series(1, 10000) i;",
    )
    .await;
    let receiver = Receiver::start().await;
    // Slow enough that the run is still delivering while live rows arrive.
    receiver.set_delay(Duration::from_millis(150));
    let (base, admin) = config_with_token(&url, "runs_async");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"items\"\ntable = \"items\"\n\
         endpoint = \"hook\"\non_insert = \"true\"\nbatch_size = 250\n\
         on_demand = {{ async = true }}\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_async").await;

    let filter = r#"row.kind == "a" && row.amount > 10"#;
    let (status, body) = call(
        "POST",
        &admin,
        &format!(
            "/strategies/items/runs?mode=async&filter={}",
            encode(filter)
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}\n{}", walhook.stderr());
    let started: Value = serde_json::from_str(&body).unwrap();
    let id = started["id"].as_i64().expect("run id");
    // Live inserts while the run goes on (kind "live": no run filter matches them).
    for i in 0..5 {
        db.psql(&format!(
            "INSERT INTO items VALUES ({}, 'live', 50)",
            20001 + i
        ))
        .await;
    }
    let run = wait_finished(&admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());

    let expected: Vec<i64> = db
        .psql("SELECT id FROM items WHERE kind = 'a' AND amount > 10 ORDER BY id")
        .await
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(
        expected.len() > 2500,
        "the filter keeps most 'a' rows: {}",
        expected.len()
    );
    // The filter is simple enough to be the chunks' SQL: only the matching
    // rows are read (the live ones do not match), and counted for the estimate.
    assert_eq!(run["counts"]["read"], expected.len(), "{run}");
    assert_eq!(run["counts"]["estimate"], expected.len(), "{run}");
    assert_eq!(run["progress"]["percent"], 100.0, "{run}");
    assert_eq!(run["counts"]["delivered"], expected.len(), "{run}");
    assert_eq!(run["counts"]["failed"], 0);

    receiver
        .wait_accepted_records(expected.len() + 5, WAIT)
        .await;
    let all = receiver.accepted_records();
    let read: Vec<&Value> = all.iter().filter(|r| r["op"] == "read").collect();
    let ids: Vec<i64> = read
        .iter()
        .map(|r| r["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, expected, "exactly the SQL WHERE's rows, in key order");
    assert!(read.iter().all(|r| r["new"]["kind"] == "a"));
    // Run batches (op "read") follow the published payload schema too.
    for request in receiver.accepted() {
        if let Err(e) = validate_payload(&request.json()) {
            panic!("a delivered payload does not match the schema: {e}");
        }
    }
    let live: Vec<i64> = all
        .iter()
        .filter(|r| r["op"] == "insert")
        .map(|r| r["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(live, vec![20001, 20002, 20003, 20004, 20005]);
    // Live changes are not queued behind the run: they arrive while it delivers.
    let requests = receiver.accepted();
    let first_live = requests
        .iter()
        .position(|r| r.json()["records"][0]["op"] == "insert")
        .unwrap();
    let last_read = requests
        .iter()
        .rposition(|r| r.json()["records"][0]["op"] == "read")
        .unwrap();
    assert!(
        first_live < last_read,
        "the first live batch came after the whole run (request {first_live} of {})",
        requests.len()
    );

    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("walhook_runs_total")
            && l.contains("trigger=\"async\"")
            && l.contains("outcome=\"succeeded\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("walhook_run_records_total")
                && l.ends_with(&format!(" {}", expected.len()))),
        "{metrics}"
    );
    walhook.stop().await;
}

#[tokio::test]
async fn sync_run_answers_after_delivery_and_over_the_limit_is_refused_before_sending() {
    let db = fresh_db("runs_sync").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;",
    )
    .await;
    let receiver = Receiver::start().await;
    let (base, admin) = config_with_token(&url, "runs_sync");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"t\"\ntable = \"t\"\n\
         endpoint = \"hook\"\nbatch_size = 15\nlinger = \"10s\"\non_demand = {{ sync = true, sync_limit = 50 }}\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_sync").await;

    let (status, body) = call(
        "POST",
        &admin,
        &format!(
            "/strategies/t/runs?mode=sync&filter={}",
            encode("row.id <= 40")
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", walhook.stderr());
    // Already delivered when the answer came: no waiting.
    let delivered: Vec<i64> = receiver
        .accepted_records()
        .iter()
        .map(|r| r["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(delivered, (1..=40).collect::<Vec<_>>());
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["records"], 40, "{summary}");
    assert_eq!(summary["batches"], 3, "{summary}");
    assert_eq!(summary["failures"], 0);
    assert!(summary["duration_ms"].is_u64());
    let id = summary["run_id"].as_i64().unwrap();
    let (status, body) = call("GET", &admin, &format!("/runs/{id}")).await;
    assert_eq!(status, 200);
    let run: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["trigger"], "sync");

    // Async is not enabled for this strategy.
    let (status, body) = call("POST", &admin, "/strategies/t/runs?mode=async").await;
    assert_eq!(status, 400, "{body}");

    let before = receiver.requests().len();
    let (status, body) = call("POST", &admin, "/strategies/t/runs?mode=sync").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("sync_limit = 50") && body.contains("async"),
        "{body}"
    );
    assert_eq!(receiver.requests().len(), before, "nothing was sent");
    assert_eq!(
        runs_rows(&db, "t").await.last().map(String::as_str),
        Some("sync|refused|true")
    );
    // A limit within sync_limit is allowed over a larger table.
    let (status, body) = call("POST", &admin, "/strategies/t/runs?mode=sync&limit=5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(receiver.accepted_record_ids().len(), 45);

    walhook.stop().await;
}

#[tokio::test]
async fn a_run_as_a_restricted_role_sends_only_the_rows_row_level_security_shows_it() {
    let db = fresh_db("runs_rls").await;
    let url = db.url();
    db.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'runs_rls_reader') \
         THEN CREATE ROLE runs_rls_reader NOLOGIN; END IF; END $$; \
         CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL); \
         INSERT INTO docs SELECT i, CASE WHEN i % 4 = 0 THEN 'alice' ELSE 'bob' END \
         FROM generate_series(1, 200) i; \
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY alice_only ON docs FOR SELECT TO runs_rls_reader USING (owner = 'alice'); \
         GRANT SELECT ON docs TO runs_rls_reader;",
    )
    .await;
    let receiver = Receiver::start().await;
    let (base, admin) = config_with_token(&url, "runs_rls");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"docs\"\ntable = \"docs\"\n\
         endpoint = \"hook\"\nrun_as = \"runs_rls_reader\"\n\
         on_demand = {{ sync = true, async = true }}\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_rls").await;
    let (status, body) = call("POST", &admin, "/strategies/docs/runs?mode=sync").await;
    assert_eq!(status, 200, "{body}\n{}", walhook.stderr());
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["records"], 50, "{summary}");
    let owners: Vec<Value> = receiver
        .accepted_records()
        .iter()
        .map(|r| r["new"]["owner"].clone())
        .collect();
    assert_eq!(owners.len(), 50);
    assert!(owners.iter().all(|o| o == "alice"), "{owners:?}");
    let id = summary["run_id"].as_i64().unwrap();
    let (_, body) = call("GET", &admin, &format!("/runs/{id}")).await;
    let run: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(run["counts"]["estimate"], 50, "counted as run_as: {run}");
    walhook.stop().await;
}

#[tokio::test]
async fn an_async_run_shows_its_estimate_and_progress_while_it_runs() {
    let db = fresh_db("runs_progress").await;
    db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 3000);")
        .await;
    let receiver = Receiver::start().await;
    receiver.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    let (base, admin) = config_with_token(&db.url(), "runs_progress");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"t\"\ntable = \"t\"\n\
         endpoint = \"hook\"\nbatch_size = 100\non_demand = {{ async = true }}\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_progress").await;
    let (status, body) = call("POST", &admin, "/strategies/t/runs?mode=async").await;
    assert_eq!(status, 202, "{body}\n{}", walhook.stderr());
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();

    // What a console draws while the run goes on: done rows of the estimate.
    let seen = std::cell::RefCell::new(Value::Null);
    wait_until(WAIT, "the run part-way, with its progress", || async {
        let (_, body) = call("GET", &admin, &format!("/runs/{id}")).await;
        let run: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let done = run["progress"]["done"].as_u64().unwrap_or(0);
        let partway = run["state"] == "running" && (1..3000).contains(&done);
        *seen.borrow_mut() = run;
        partway
    })
    .await;
    let run = seen.into_inner();
    assert_eq!(run["counts"]["estimate"], 3000, "{run}");
    let done = run["progress"]["done"].as_u64().unwrap();
    assert_eq!(
        done,
        run["counts"]["delivered"].as_u64().unwrap(),
        "no filter: a row is done once delivered: {run}"
    );
    let percent = run["progress"]["percent"].as_f64().unwrap();
    assert!(percent > 0.0 && percent < 100.0, "{run}");
    assert!(
        run["progress"]["rows_per_second"].as_f64().unwrap() > 0.0,
        "{run}"
    );
    assert!(run["progress"]["eta_seconds"].is_u64(), "{run}");

    let run = wait_finished(&admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        run["counts"]["estimate"], 3000,
        "kept with the counts: {run}"
    );
    assert_eq!(run["progress"]["done"], 3000, "{run}");
    assert_eq!(run["progress"]["percent"], 100.0, "{run}");
    assert!(run["progress"]["eta_seconds"].is_null(), "{run}");

    // A limit caps the estimate.
    let (status, body) = call("POST", &admin, "/strategies/t/runs?mode=async&limit=500").await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    let run = wait_finished(&admin, id).await;
    assert_eq!(run["counts"]["estimate"], 500, "{run}");
    assert_eq!(run["counts"]["delivered"], 500, "{run}");
    walhook.stop().await;
}

#[tokio::test]
async fn an_async_run_can_be_cancelled_and_unknown_runs_are_404() {
    let db = fresh_db("runs_cancel").await;
    let url = db.url();
    db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5000);")
        .await;
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(200));
    let (base, admin) = config_with_token(&url, "runs_cancel");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"t\"\ntable = \"t\"\n\
         endpoint = \"hook\"\nbatch_size = 10\non_demand = {{ async = true }}\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_cancel").await;
    let (status, body) = call("POST", &admin, "/strategies/t/runs").await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    receiver.wait_requests(1, WAIT).await;
    let (status, body) = call("DELETE", &admin, &format!("/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let run = wait_finished(&admin, id).await;
    assert_eq!(run["state"], "cancelled", "{run}");
    assert!(run["counts"]["delivered"].as_u64().unwrap() < 5000);
    let (status, _) = call("DELETE", &admin, &format!("/runs/{id}")).await;
    assert_eq!(status, 409, "a finished run cannot be cancelled");
    let (status, _) = call("GET", &admin, "/runs/999999").await;
    assert_eq!(status, 404);
    let (status, body) = call(
        "POST",
        &admin,
        &format!("/strategies/t/runs?filter={}", encode("row.nope > 1")),
    )
    .await;
    // Refused before it is recorded: no started-then-failed run.
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has no column \"nope\""), "{body}");
    assert_eq!(
        db.psql("SELECT count(*) FROM walhook.runs WHERE filter LIKE '%nope%'")
            .await
            .trim(),
        "0"
    );
    walhook.stop().await;
}

#[tokio::test]
async fn a_sync_run_answers_with_the_endpoints_status_and_body_per_batch() {
    let db = fresh_db("runs_replies").await;
    db.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5);")
        .await;
    let receiver = Receiver::start().await;
    let big = "x".repeat(70 * 1024);
    receiver.script([
        Reply::Body(500, "boom".into()),
        Reply::Body(200, r#"{"accepted":2,"ref":"A-1"}"#.into()),
        Reply::Body(202, "queued as B-2".into()),
        Reply::Body(200, big.clone()),
    ]);
    let (base, admin) = config_with_token(&db.url(), "runs_replies");
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\nretry = {{ initial = \"10ms\", max = \"10ms\" }}\n\n\
         [[strategies]]\nname = \"t\"\ntable = \"t\"\nendpoint = \"hook\"\nbatch_size = 2\n\
         on_demand = {{ sync = true }}\n",
        receiver.url("/hook")
    );
    let walhook = start_streaming(&config, &db, "runs_replies").await;
    let (status, body) = call("POST", &admin, "/strategies/t/runs?mode=sync").await;
    assert_eq!(status, 200, "{body}\n{}", walhook.stderr());
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["records"], 5, "{summary}");
    assert_eq!(summary["batches"], 3, "{summary}");

    // One entry per batch, in order, with the last answer to it.
    let batch_ids: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    let responses = summary["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3, "{summary}");
    let ids: Vec<&str> = responses
        .iter()
        .map(|r| r["batch_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, batch_ids);
    assert_eq!(responses[0]["status"], 200);
    assert_eq!(responses[0]["body"], r#"{"accepted":2,"ref":"A-1"}"#);
    assert_eq!(responses[0]["truncated"], false);
    assert_eq!(responses[1]["status"], 202);
    assert_eq!(responses[1]["body"], "queued as B-2");
    assert_eq!(responses[2]["status"], 200);
    assert_eq!(responses[2]["body"], &big[..64 * 1024]);
    assert_eq!(responses[2]["truncated"], true);
    walhook.stop().await;
}
