//! The copy a receiver keeps: it applies records in arrival order ("the row
//! is now this"; a delete removes it), while a run goes over the table and a
//! writer updates, deletes and re-inserts random rows. When both are done
//! and the slot has caught up, the copy equals `SELECT *` of the table.
//!
//! walhook connects as README's least-privileged role (LOGIN, REPLICATION,
//! SELECT on the table) after the administrator ran the printed setup SQL;
//! the endpoint answers in 50–300 ms and fails some requests with 503.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use super::{call, wait_finished, TOKEN};
use crate::support::cluster::add_hba_lines;
use crate::support::walhook::admin_runs_printed_setup;
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

/// Rows in the table when the run starts.
const ROWS: i64 = 30_000;

/// A database with `accounts` and README's role, set up by the administrator.
pub(crate) struct Scene {
    pub(crate) db: Db,
    pub(crate) hook: Receiver,
    pub(crate) config: String,
    pub(crate) admin: String,
    pub(crate) slot: String,
}

impl Scene {
    /// `strategy_extra`: more lines for the strategy (ordering, backfill…).
    pub(crate) async fn new(prefix: &str, rows: i64, strategy_extra: &str) -> Scene {
        let db = fresh_db(prefix).await;
        db.psql(&format!(
            "CREATE TABLE public.accounts (id int PRIMARY KEY, balance int NOT NULL, note text);
             INSERT INTO public.accounts SELECT i, i % 1000, md5(i::text) FROM generate_series(1, {rows}) i;
             ANALYZE public.accounts;"
        ))
        .await;
        let role = format!("{prefix}_app");
        db.psql(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw-{role}';
             GRANT SELECT ON public.accounts TO {role};"
        ))
        .await;
        add_hba_lines(&[
            &format!("host all         {role} 127.0.0.1/32 scram-sha-256"),
            &format!("host replication {role} 127.0.0.1/32 scram-sha-256"),
        ])
        .await;
        let hook = Receiver::start().await;
        hook.set_latency(Duration::from_millis(50), Duration::from_millis(300));
        hook.set_failure_rate(Some((0.1, 503)));
        let port = free_port();
        let url = db.url_as(&role, &format!("pw-{role}"));
        let config = format!(
            r#"[source]
url = "{url}"
slot = "{prefix}"
publication = "{prefix}"

[admin]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[endpoints.hook]
url = "{}"
retry = {{ initial = "50ms", max = "200ms" }}

[[strategies]]
name = "copy"
table = "public.accounts"
endpoint = "hook"
on_insert = "true"
on_update = "true"
on_delete = "true"
batch_size = 500
linger = "10ms"
on_demand = {{ async = true, sync = true, sync_limit = 100000 }}
{strategy_extra}
"#,
            hook.url("/hook")
        );
        admin_runs_printed_setup(&db, &config).await;
        Scene {
            db,
            hook,
            config,
            admin: format!("http://127.0.0.1:{port}"),
            slot: prefix.to_string(),
        }
    }

    pub(crate) async fn start(&self) -> Walhook {
        let mut walhook = Walhook::run(&self.config).spawn();
        walhook.wait_streaming(&self.db, &self.slot).await;
        walhook
    }

    /// Waits until walhook confirmed everything committed so far.
    pub(crate) async fn caught_up(&self) {
        let end = self.db.current_wal_lsn().await;
        self.db.wait_confirmed(&self.slot, end).await;
    }

    /// The table as `id → {id, balance, note}`.
    pub(crate) async fn table(&self) -> BTreeMap<i64, Value> {
        let text = self
            .db
            .psql(
                "SELECT coalesce(json_agg(json_build_object('id', id, 'balance', balance, 'note', note) \
                 ORDER BY id), '[]') FROM public.accounts",
            )
            .await;
        let rows: Vec<Value> = serde_json::from_str(text.trim()).expect("JSON rows");
        rows.into_iter()
            .map(|r| (r["id"].as_i64().expect("id"), r))
            .collect()
    }
}

/// The receiver's copy after applying every accepted record in arrival order.
pub(crate) fn copy_of(hook: &Receiver) -> BTreeMap<i64, Value> {
    let mut copy = BTreeMap::new();
    for record in hook.accepted_records() {
        match record["op"].as_str() {
            Some("insert" | "update" | "read") => {
                let new = record["new"].clone();
                copy.insert(new["id"].as_i64().expect("new.id"), new);
            }
            Some("delete") => {
                copy.remove(&record["old"]["id"].as_i64().expect("old.id"));
            }
            Some("truncate") => copy.clear(),
            other => panic!("unexpected op {other:?}"),
        }
    }
    copy
}

/// The rows where `copy` and `table` differ: (stale values, rows brought
/// back, rows missing).
pub(crate) fn differences(
    copy: &BTreeMap<i64, Value>,
    table: &BTreeMap<i64, Value>,
) -> (usize, usize, usize) {
    let stale = table
        .iter()
        .filter(|(id, row)| copy.get(id).is_some_and(|c| c != *row))
        .count();
    let back = copy.keys().filter(|id| !table.contains_key(id)).count();
    let missing = table.keys().filter(|id| !copy.contains_key(id)).count();
    (stale, back, missing)
}

/// Live records (not `read`) that arrived between the run's first and last
/// `read` record: the proof that the run and the writes overlapped.
pub(crate) fn live_records_inside_the_run(hook: &Receiver) -> usize {
    let ops: Vec<String> = hook
        .accepted_records()
        .iter()
        .map(|r| r["op"].as_str().unwrap_or("").to_string())
        .collect();
    let first = ops.iter().position(|op| op == "read");
    let last = ops.iter().rposition(|op| op == "read");
    match (first, last) {
        (Some(a), Some(b)) => ops[a..b].iter().filter(|op| *op != "read").count(),
        _ => 0,
    }
}

/// A writer committing single-row transactions on random rows: updates,
/// deletes and (re-)inserts, `total` transactions.
pub(crate) struct Writer {
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) async fn start(db: &Db, rows: i64, total: u64) -> Writer {
        let client = walhook::pg::connect(&db.url(), "copy-writer")
            .await
            .expect("writer connects");
        let done = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let done = done.clone();
            async move {
                while done.load(Ordering::SeqCst) < total {
                    let (kind, id, value) = {
                        let mut rng = rand::rng();
                        (
                            rng.random_range(0..4u8),
                            rng.random_range(1..=rows + rows / 20) as i32,
                            rng.random_range(0..1_000_000i32),
                        )
                    };
                    let sql = match kind {
                        0 | 1 => "UPDATE public.accounts SET balance = $2::int, note = md5($2::int::text) WHERE id = $1",
                        2 => "DELETE FROM public.accounts WHERE id = $1 AND $2::int IS NOT NULL",
                        _ => "INSERT INTO public.accounts VALUES ($1, $2, 'again') \
                              ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, note = 'again'",
                    };
                    client
                        .execute(sql, &[&id, &value])
                        .await
                        .expect("the writer's transaction");
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Writer { done, task }
    }

    /// Transactions committed so far.
    pub(crate) fn committed(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until it wrote them all.
    pub(crate) async fn finish(self) -> u64 {
        self.task.await.expect("writer task");
        self.done.load(Ordering::SeqCst)
    }
}

/// Starts a run (`mode`) beside a writer of 6,000 transactions; returns the
/// run's record once both are done and the slot has caught up.
async fn run_beside_the_writer(scene: &Scene, mode: &str) -> Value {
    let writer = Writer::start(&scene.db, ROWS, 6_000).await;
    // The run starts once the writer is going.
    wait_until(WAIT, "the writer under way", || async {
        writer.committed() > 100
    })
    .await;
    let (status, body) = call(
        "POST",
        &scene.admin,
        &format!("/strategies/copy/runs?mode={mode}"),
    )
    .await;
    let run = match mode {
        "sync" => {
            assert_eq!(status, 200, "{body}");
            let answer: Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(answer["state"], "succeeded", "{answer}");
            assert!(
                answer["responses"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()),
                "the endpoint's answers: {answer}"
            );
            let id = answer["run_id"].as_i64().expect("run_id");
            wait_finished(&scene.admin, id).await
        }
        _ => {
            assert_eq!(status, 202, "{body}");
            let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
                .as_i64()
                .expect("id");
            wait_finished(&scene.admin, id).await
        }
    };
    assert_eq!(run["state"], "succeeded", "{run}");
    let written = writer.finish().await;
    assert_eq!(written, 6_000);
    scene.caught_up().await;
    run
}

/// Asserts the copy is exact, and that run and writes overlapped.
async fn assert_exact(scene: &Scene, run: &Value, what: &str) {
    let table = scene.table().await;
    let copy = copy_of(&scene.hook);
    let overlap = live_records_inside_the_run(&scene.hook);
    let (stale, back, missing) = differences(&copy, &table);
    eprintln!(
        "{what}: {} rows; live records inside the run: {overlap}; read {}, sent {}, superseded {}; \
         differences: {stale} stale, {back} brought back, {missing} missing",
        table.len(),
        run["counts"]["read"],
        run["counts"]["sent"],
        run["counts"]["superseded"],
    );
    assert!(overlap > 0, "{what}: the run and the writes overlapped");
    assert_eq!(
        (stale, back, missing),
        (0, 0, 0),
        "{what}: the receiver's copy equals the table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_run_beside_a_writer_leaves_an_exact_copy_under_commit_order() {
    let scene = Scene::new("copy_commit", ROWS, "").await;
    let walhook = scene.start().await;
    let run = run_beside_the_writer(&scene, "async").await;
    assert_exact(&scene, &run, "commit order, async").await;
    walhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_run_beside_a_writer_leaves_an_exact_copy_under_key_order_8_in_flight() {
    let scene = Scene::new("copy_key", ROWS, "ordering = \"key\"\nmax_in_flight = 8").await;
    let walhook = scene.start().await;
    let run = run_beside_the_writer(&scene, "async").await;
    assert_exact(&scene, &run, "key order, 8 in flight, async").await;
    walhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_run_beside_a_writer_leaves_an_exact_copy_under_both_orders() {
    let scene = Scene::new("copy_sync_c", ROWS, "").await;
    let walhook = scene.start().await;
    let run = run_beside_the_writer(&scene, "sync").await;
    assert_exact(&scene, &run, "commit order, sync").await;
    walhook.stop().await;

    let scene = Scene::new("copy_sync_k", ROWS, "ordering = \"key\"\nmax_in_flight = 8").await;
    let walhook = scene.start().await;
    let run = run_beside_the_writer(&scene, "sync").await;
    assert_exact(&scene, &run, "key order, 8 in flight, sync").await;
    walhook.stop().await;
}

/// walhook killed (-9) twice while the run goes on: each time it starts
/// again, the run continues after its last delivered chunk, and the copy
/// ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_twice_continues_from_its_last_chunk_and_the_copy_ends_exact() {
    let scene = Scene::new(
        "copy_kill",
        ROWS,
        "ordering = \"key\"\nmax_in_flight = 8\nbackfill = { chunk_size = 2000 }",
    )
    .await;
    let mut walhook = scene.start().await;
    let writer = Writer::start(&scene.db, ROWS, 6_000).await;
    let (status, body) = call("POST", &scene.admin, "/strategies/copy/runs?mode=async").await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    let mut resumed_from = Vec::new();
    for kill in 1..=2 {
        // Killed once the run has stored progress beyond the last kill's.
        let before = resumed_from.last().copied().unwrap_or(0);
        wait_until(WAIT, "the run's progress stored", || async {
            stored_after(&scene.db, id).await > before
        })
        .await;
        walhook.kill9().await;
        let after = stored_after(&scene.db, id).await;
        resumed_from.push(after);
        eprintln!("kill {kill}: the run had stored its progress up to key {after}");
        walhook = scene.start().await;
    }
    let run = wait_finished(&scene.admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());
    assert_eq!(writer.finish().await, 6_000);
    scene.caught_up().await;
    eprintln!(
        "kill -9 twice: resumed after keys {resumed_from:?}; rows read {}, of them read again after a restart {}",
        run["counts"]["read"], run["counts"]["reread"]
    );
    assert!(
        // Four chunks of 2,000 ahead of delivery, at each of two kills.
        run["counts"]["reread"]
            .as_u64()
            .is_some_and(|r| r <= 2 * 4 * 2000),
        "at most the chunks in the stream at each kill are read again: {run}"
    );
    assert_exact(&scene, &run, "kill -9 twice").await;
    walhook.stop().await;
}

/// The last key of the run's last delivered chunk, as stored (0 before any).
async fn stored_after(db: &Db, id: i64) -> i64 {
    db.psql(&format!(
        "SELECT coalesce((progress->'after'->>0)::int, 0) FROM walhook.runs WHERE id = {id}"
    ))
    .await
    .trim()
    .parse()
    .unwrap_or(0)
}
