//! Configuration reload under a steady stream of writes: a strategy added,
//! a filter changed, a strategy removed, a mapping changed by SIGHUP, a
//! broken file and a changed slot (both leave the old configuration
//! running). Each test checks against the database that the receiver got
//! every committed matching row exactly once, as the configuration in force
//! at its commit says: a control strategy receives every row with its
//! commit LSN, and the reload's boundary LSN splits the rows in two.
//! `walhook check --diff` is tested offline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::lsn::Lsn;

use crate::support::walhook::{admin_call, admin_get, base_config_with_admin, metric_sum};
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

const TOKEN: &str = "reload-admin-token-8080";

/// The strategy every test watches, sending to `/subject`, with `body`
/// (its filter and mapping) after the common fields.
fn subject(body: &str) -> String {
    format!(
        "[[strategies]]\nname = \"subject\"\ntable = \"items\"\nendpoint = \"subject\"\n\
         linger = \"10ms\"\n{body}\n\n"
    )
}

/// A running walhook with a control strategy (`all`, every insert, to
/// `/all`), a receiver answering in 50–300 ms and a writer inserting one
/// row per transaction (`n` = `id` = 1, 2, 3, …) until stopped.
struct Scene {
    db: Db,
    slot: String,
    port: u16,
    receiver: Receiver,
    walhook: Walhook,
    written: Arc<AtomicI64>,
    stop_writing: CancellationToken,
    writer: JoinHandle<()>,
}

impl Scene {
    async fn start(slot: &str, strategies: &str) -> Scene {
        let db = fresh_db(slot).await;
        db.psql("CREATE TABLE items (id bigint PRIMARY KEY, n bigint NOT NULL, note text)")
            .await;
        let receiver = Receiver::start().await;
        receiver.set_latency(Duration::from_millis(50), Duration::from_millis(300));
        let port = free_port();
        let mut scene_walhook =
            Walhook::run(&config(&db, slot, port, &receiver, strategies)).spawn();
        scene_walhook.wait_streaming(&db, slot).await;
        let written = Arc::new(AtomicI64::new(0));
        let stop_writing = CancellationToken::new();
        let writer = spawn_writer(db.url(), written.clone(), stop_writing.clone());
        let scene = Scene {
            db,
            slot: slot.to_string(),
            port,
            receiver,
            walhook: scene_walhook,
            written,
            stop_writing,
            writer,
        };
        scene.wait_written(20, "the first rows written").await;
        scene
    }

    /// The file with other strategies (same source, admin and endpoints).
    fn config(&self, strategies: &str) -> String {
        config(&self.db, &self.slot, self.port, &self.receiver, strategies)
    }

    async fn wait_written(&self, more: i64, what: &str) {
        let target = self.written.load(Ordering::SeqCst) + more;
        wait_until(WAIT, what, || async {
            self.written.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    /// Rewrites the file and asks for a reload: the status and the answer.
    async fn reload(&self, text: &str) -> (u16, Value) {
        self.walhook.rewrite_config(text);
        let (code, body) =
            admin_call(reqwest::Method::POST, self.port, "/config/reload", TOKEN).await;
        let doc = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
        (code, doc)
    }

    async fn status(&self) -> Value {
        match admin_get(self.port, "/status").await {
            Some((200, body)) => serde_json::from_str(&body).expect("status JSON"),
            other => panic!("/status: {other:?}"),
        }
    }

    async fn reloads(&self, result: &str) -> f64 {
        let (_, scrape) = admin_get(self.port, "/metrics").await.expect("metrics");
        metric_sum(
            &scrape,
            "walhook_config_reload_total",
            &[&format!("result=\"{result}\"")],
        )
        .unwrap_or(0.0)
    }

    /// Stops writing, waits until the control strategy has every row, and
    /// returns each row's commit LSN by id and the subject's ids as they
    /// arrived. Every row must reach the control strategy exactly once.
    async fn finish(self) -> Finished {
        self.stop_writing.cancel();
        self.writer.await.expect("writer");
        let written = self.written.load(Ordering::SeqCst);
        let count: i64 = self
            .db
            .psql("SELECT count(*) FROM items")
            .await
            .trim()
            .parse()
            .expect("count");
        assert_eq!(count, written, "every insert the writer made committed");
        wait_until(WAIT, "every row at the control strategy", || async {
            records(&self.receiver, "/all").len() as i64 >= written
        })
        .await;
        let mut lsns = BTreeMap::new();
        for record in records(&self.receiver, "/all") {
            let id = record["new"]["id"].as_i64().expect("new.id");
            let lsn: Lsn = record["lsn"].as_str().expect("lsn").parse().expect("LSN");
            assert!(lsns.insert(id, lsn).is_none(), "row {id} twice at /all");
        }
        assert_eq!(lsns.len() as i64, written, "no row missing at /all");
        // Everything delivered is acknowledged: the slot does not hold WAL.
        let end = self.db.current_wal_lsn().await;
        self.db.wait_confirmed(&self.slot, end).await;
        let subject = records(&self.receiver, "/subject");
        let stderr = self.walhook.stop().await;
        Finished {
            lsns,
            subject,
            stderr,
        }
    }
}

struct Finished {
    /// Each row's commit LSN, by id.
    lsns: BTreeMap<i64, Lsn>,
    /// The subject strategy's records in arrival order.
    subject: Vec<Value>,
    stderr: String,
}

impl Finished {
    /// Asserts rows committed on both sides of the boundary `at`: the
    /// reload happened while rows were being written.
    fn assert_spans(&self, at: Lsn) {
        assert!(self.lsns.values().any(|l| *l < at), "rows before {at}");
        assert!(self.lsns.values().any(|l| *l >= at), "rows after {at}");
    }

    /// Asserts the subject got exactly the rows `expected` picks from
    /// (id, commit LSN), in commit order, each once.
    fn assert_subject(&self, expected: impl Fn(i64, Lsn) -> bool) {
        let got: Vec<i64> = self
            .subject
            .iter()
            .map(|r| r["new"]["id"].as_i64().expect("new.id"))
            .collect();
        let want: Vec<i64> = self
            .lsns
            .iter()
            .filter(|(id, lsn)| expected(**id, **lsn))
            .map(|(id, _)| *id)
            .collect();
        assert!(
            !want.is_empty(),
            "the test wrote rows the subject should get"
        );
        assert_eq!(got, want, "the subject's rows, in commit order, each once");
    }
}

/// Every record posted to `path`, in arrival order.
fn records(receiver: &Receiver, path: &str) -> Vec<Value> {
    receiver
        .accepted()
        .iter()
        .filter(|r| r.path_and_query == path)
        .flat_map(|r| r.json()["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn config(db: &Db, slot: &str, port: u16, receiver: &Receiver, strategies: &str) -> String {
    format!(
        "{}token = \"{TOKEN}\"\n\n\
         [endpoints.all]\nurl = \"{}\"\n\n[endpoints.subject]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"all\"\ntable = \"items\"\nendpoint = \"all\"\n\
         on_insert = \"true\"\nlinger = \"10ms\"\n\n{strategies}",
        base_config_with_admin(&db.url(), slot, slot, port).replace("\n\n", "\n"),
        receiver.url("/all"),
        receiver.url("/subject"),
    )
}

/// Inserts rows 1, 2, 3, … one transaction each (paced, not as fast as
/// possible, so the machine stays usable) until `stop`.
fn spawn_writer(url: String, written: Arc<AtomicI64>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = walhook::pg::connect(&url, "reload-test-writer")
            .await
            .expect("writer connects");
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut n = 0i64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            n += 1;
            client
                .execute(
                    "INSERT INTO items (id, n, note) VALUES ($1, $1, 'row')",
                    &[&n],
                )
                .await
                .expect("insert");
            written.store(n, Ordering::SeqCst);
        }
    })
}

/// The boundary LSN of an applied reload's answer.
fn boundary(doc: &Value) -> Lsn {
    assert_eq!(doc["result"], "applied", "{doc}");
    doc["boundary_lsn"]
        .as_str()
        .expect("boundary_lsn")
        .parse()
        .expect("LSN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_filter_applies_to_transactions_after_the_boundary() {
    let scene = Scene::start(
        "ops_reload_filter",
        &subject("on_insert = \"new.n % 2 == 0\""),
    )
    .await;
    // The unchanged strategy keeps its worker: paused before, paused after.
    let pause = |action: &'static str| {
        let path = format!("/strategies/all/{action}");
        async move { admin_call(reqwest::Method::POST, scene.port, &path, TOKEN).await }
    };
    assert_eq!(pause("pause").await.0, 200);
    let (code, doc) = scene
        .reload(&scene.config(&subject("on_insert = \"new.n % 3 == 0\"")))
        .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["plan"]["changed"][0]["name"], "subject", "{doc}");
    assert_eq!(
        doc["plan"]["changed"].as_array().map(Vec::len),
        Some(1),
        "{doc}"
    );
    assert_eq!(scene.status().await["strategies"][0]["state"], "paused");
    assert_eq!(pause("resume").await.0, 200);
    assert_eq!(doc["plan"]["changed"][0]["fields"][0], "on_insert", "{doc}");
    let at = boundary(&doc);
    let status = scene.status().await;
    assert_eq!(status["config"]["last_reload"]["result"], "applied");
    assert_eq!(scene.reloads("applied").await, 1.0);
    scene
        .wait_written(100, "rows written after the reload")
        .await;
    let done = scene.finish().await;
    done.assert_spans(at);
    done.assert_subject(|id, lsn| if lsn < at { id % 2 == 0 } else { id % 3 == 0 });
    assert!(
        done.stderr.contains("configuration reloaded"),
        "{}",
        done.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_strategy_starts_at_the_boundary() {
    let scene = Scene::start("ops_reload_add", "").await;
    let (code, doc) = scene
        .reload(&scene.config(&subject("on_insert = \"new.n % 2 == 0\"")))
        .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["plan"]["added"][0], "subject", "{doc}");
    let at = boundary(&doc);
    scene
        .wait_written(100, "rows written after the reload")
        .await;
    let names: Vec<Value> = scene.status().await["strategies"]
        .as_array()
        .expect("strategies")
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, ["all", "subject"]);
    let done = scene.finish().await;
    done.assert_spans(at);
    done.assert_subject(|id, lsn| lsn >= at && id % 2 == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_strategy_delivers_what_it_was_given_and_stops_holding_the_slot() {
    let scene = Scene::start(
        "ops_reload_remove",
        &subject("on_insert = \"new.n % 2 == 0\""),
    )
    .await;
    let (code, doc) = scene.reload(&scene.config("")).await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["plan"]["removed"][0], "subject", "{doc}");
    let at = boundary(&doc);
    scene
        .wait_written(100, "rows written after the reload")
        .await;
    wait_until(WAIT, "the removed strategy gone from /status", || async {
        scene.status().await["strategies"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    // `finish` waits for the slot to confirm everything written.
    let done = scene.finish().await;
    done.assert_spans(at);
    done.assert_subject(|id, lsn| lsn < at && id % 2 == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_changed_mapping() {
    let scene = Scene::start("ops_reload_hup", &subject("on_insert = \"new.n % 2 == 0\"")).await;
    scene.walhook.rewrite_config(&scene.config(&subject(
        "on_insert = \"new.n % 2 == 0\"\nrecord = { id = { expr = \"row.id\" }, mapped = true }",
    )));
    scene.walhook.signal(libc::SIGHUP);
    wait_until(WAIT, "the SIGHUP reload in /status", || async {
        scene.status().await["config"]["last_reload"]["result"] == "applied"
    })
    .await;
    let status = scene.status().await;
    let at: Lsn = status["config"]["last_reload"]["boundary_lsn"]
        .as_str()
        .expect("boundary_lsn")
        .parse()
        .expect("LSN");
    assert!(
        status["config"]["sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64),
        "{status}"
    );
    scene
        .wait_written(100, "rows written after the reload")
        .await;
    let done = scene.finish().await;
    done.assert_spans(at);
    done.assert_subject(|id, _| id % 2 == 0);
    // The mapping applies from the boundary on, never to a row before it.
    for record in &done.subject {
        let lsn: Lsn = record["lsn"].as_str().expect("lsn").parse().expect("LSN");
        let mapped = record["new"]["mapped"] == true;
        assert_eq!(mapped, lsn >= at, "{record}");
    }
    assert!(done.stderr.contains("SIGHUP"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_says_why() {
    let scene = Scene::start(
        "ops_reload_broken",
        &subject("on_insert = \"new.n % 2 == 0\""),
    )
    .await;
    // An expression that does not compile.
    let (code, doc) = scene
        .reload(&scene.config(&subject("on_insert = \"new.n % \"")))
        .await;
    assert_eq!(code, 422, "{doc}");
    assert_eq!(doc["result"], "invalid", "{doc}");
    let error = doc["error"].as_str().expect("error");
    assert!(error.contains("strategies[1].on_insert"), "{error}");
    // A column the table lacks: the live schema check.
    let (code, doc) = scene
        .reload(&scene.config(&subject("on_insert = \"new.missing % 2 == 0\"")))
        .await;
    assert_eq!(code, 422, "{doc}");
    let error = doc["error"].as_str().expect("error");
    assert!(error.contains("missing"), "{error}");
    let status = scene.status().await;
    assert_eq!(
        status["config"]["last_reload"]["result"], "invalid",
        "{status}"
    );
    assert!(status["config"]["last_reload"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("missing")));
    assert_eq!(scene.reloads("invalid").await, 2.0);
    assert_eq!(scene.reloads("applied").await, 0.0);
    scene
        .wait_written(100, "rows written after the broken reloads")
        .await;
    let done = scene.finish().await;
    done.assert_subject(|id, _| id % 2 == 0);
    assert!(
        done.stderr.contains("the running configuration stays"),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains(TOKEN), "no secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_slot_is_refused_and_the_old_configuration_runs_on() {
    let scene = Scene::start(
        "ops_reload_slot",
        &subject("on_insert = \"new.n % 2 == 0\""),
    )
    .await;
    let text = scene
        .config(&subject("on_insert = \"new.n % 3 == 0\""))
        .replace("slot = \"ops_reload_slot\"", "slot = \"ops_reload_other\"");
    let (code, doc) = scene.reload(&text).await;
    assert_eq!(code, 409, "{doc}");
    assert_eq!(doc["result"], "refused", "{doc}");
    let error = doc["error"].as_str().expect("error");
    assert!(
        error.contains("source.slot") && error.contains("restart"),
        "{error}"
    );
    assert_eq!(scene.reloads("refused").await, 1.0);
    scene
        .wait_written(100, "rows written after the refused reload")
        .await;
    let done = scene.finish().await;
    done.assert_subject(|id, _| id % 2 == 0);
}

#[tokio::test]
async fn check_diff_prints_the_plan_with_its_exit_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = "[source]\nurl = \"postgres://u:pw@127.0.0.1:1/db\"\nslot = \"s\"\n\n\
                [endpoints.hook]\nurl = \"http://127.0.0.1:1/hook\"\n\n";
    let strategy = |name: &str, filter: &str| {
        format!("[[strategies]]\nname = \"{name}\"\ntable = \"t\"\nendpoint = \"hook\"\non_insert = \"{filter}\"\n\n")
    };
    let running = format!("{base}{}{}", strategy("a", "true"), strategy("b", "true"));
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let old = write("running.toml", &running);
    let changed = write(
        "changed.toml",
        &format!(
            "{base}{}{}",
            strategy("a", "new.id > 1"),
            strategy("c", "true")
        ),
    );
    let out = Walhook::command(&["check", "-c", &changed, "--diff", &old])
        .output()
        .await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("add       strategy c"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("remove    strategy b"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("change    strategy a: on_insert"),
        "{}",
        out.stdout
    );
    // It says it did not ask the database: a reload may still refuse it.
    assert!(
        out.stdout
            .contains("compared offline (the two files, not the database)"),
        "{}",
        out.stdout
    );

    let same = Walhook::command(&["check", "-c", &old, "--diff", &old])
        .output()
        .await;
    assert_eq!(same.code(), Some(0), "{}", same.stderr);
    assert_eq!(same.stdout, "no changes\n");

    let slot = write(
        "slot.toml",
        &running.replace("slot = \"s\"", "slot = \"t\""),
    );
    let refused = Walhook::command(&["check", "-c", &slot, "--diff", &old])
        .output()
        .await;
    assert_eq!(refused.code(), Some(3), "{}", refused.stderr);
    assert!(
        refused.stdout.contains("refused   source.slot"),
        "{}",
        refused.stdout
    );
    assert!(!refused.stdout.contains("pw@"), "no secret printed");

    let broken = write("broken.toml", &running.replace("true", "new.id >"));
    let invalid = Walhook::command(&["check", "-c", &broken, "--diff", &old])
        .output()
        .await;
    assert_eq!(invalid.code(), Some(2), "{}", invalid.stderr);
    assert!(
        invalid.stderr.contains("strategies[0].on_insert"),
        "{}",
        invalid.stderr
    );
}
