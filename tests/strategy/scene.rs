//! The harness of the tests about what changes under a running walhook:
//! a fresh database, README's least-privileged role (LOGIN, REPLICATION,
//! SELECT on the tables; the administrator ran `walhook setup --print-sql`),
//! walhook run as that role with an admin token, one receiver answering in
//! 50–300 ms, and a writer committing one row per transaction.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::add_hba_lines;
use crate::support::walhook::{admin_call, admin_get, admin_runs_printed_setup, metric_sum};
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

pub(crate) const TOKEN: &str = "schema-admin-token-2929";

/// A database, its role and walhook's file; walhook not started yet.
pub(crate) struct Scene {
    pub(crate) db: Db,
    /// Slot, publication and role prefix.
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) receiver: Receiver,
    /// The role's connection string.
    url: String,
    endpoints: Vec<String>,
}

impl Scene {
    /// Creates the database with `tables` (SQL), README's role with SELECT
    /// on `granted`, and runs the printed setup SQL for `strategies` (TOML
    /// `[[strategies]]`; endpoint `e` posts to `/e` for each of `endpoints`).
    pub(crate) async fn new(
        name: &str,
        tables: &str,
        granted: &[&str],
        endpoints: &[&str],
        strategies: &str,
    ) -> Scene {
        let db = fresh_db(name).await;
        db.psql(tables).await;
        let role = format!("{name}_app");
        db.psql(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw-{role}';
             GRANT SELECT ON {} TO {role};",
            granted.join(", ")
        ))
        .await;
        add_hba_lines(&[
            &format!("host all         {role} 127.0.0.1/32 scram-sha-256"),
            &format!("host replication {role} 127.0.0.1/32 scram-sha-256"),
        ])
        .await;
        let receiver = Receiver::start().await;
        receiver.set_latency(Duration::from_millis(50), Duration::from_millis(300));
        let scene = Scene {
            url: db.url_as(&role, &format!("pw-{role}")),
            db,
            name: name.to_string(),
            port: free_port(),
            receiver,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        };
        admin_runs_printed_setup(&scene.db, &scene.config(strategies)).await;
        scene
    }

    /// The file with these strategies.
    pub(crate) fn config(&self, strategies: &str) -> String {
        let endpoints: String = self
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "[endpoints.{e}]\nurl = \"{}\"\n\n",
                    self.receiver.url(&format!("/{e}"))
                )
            })
            .collect();
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{n}\"\npublication = \"{n}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\ntoken = \"{TOKEN}\"\n\n{endpoints}{strategies}",
            self.url,
            self.port,
            n = self.name,
        )
    }

    /// `walhook run` with these strategies, streaming.
    pub(crate) async fn start(&self, strategies: &str) -> Walhook {
        let mut walhook = Walhook::run(&self.config(strategies)).spawn();
        walhook.wait_streaming(&self.db, &self.name).await;
        walhook
    }

    /// Rewrites the file of `walhook` and asks for a reload over the API:
    /// the HTTP status and the answer.
    pub(crate) async fn reload(&self, walhook: &Walhook, strategies: &str) -> (u16, Value) {
        walhook.rewrite_config(&self.config(strategies));
        let (code, body) =
            admin_call(reqwest::Method::POST, self.port, "/config/reload", TOKEN).await;
        let doc = serde_json::from_str(&body).unwrap_or_else(|_| Value::String(body.clone()));
        (code, doc)
    }

    pub(crate) async fn status(&self) -> Value {
        match admin_get(self.port, "/status").await {
            Some((200, body)) => serde_json::from_str(&body).expect("status JSON"),
            other => panic!("/status: {other:?}"),
        }
    }

    pub(crate) async fn scrape(&self) -> String {
        admin_get(self.port, "/metrics").await.expect("metrics").1
    }

    /// The sum of metric `name` with these labels (0 when absent).
    pub(crate) async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.scrape().await, name, labels).unwrap_or(0.0)
    }

    /// Every record posted to `/endpoint`, in arrival order.
    pub(crate) fn records(&self, endpoint: &str) -> Vec<Value> {
        let path = format!("/{endpoint}");
        self.receiver
            .accepted()
            .iter()
            .filter(|r| r.path_and_query == path)
            .flat_map(|r| r.json()["records"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The `new.id` (or `old.id`) of each record posted to `/endpoint`, in
    /// arrival order.
    pub(crate) fn ids(&self, endpoint: &str) -> Vec<i64> {
        self.records(endpoint)
            .iter()
            .filter_map(|r| r["new"]["id"].as_i64().or_else(|| r["old"]["id"].as_i64()))
            .collect()
    }

    /// A writer committing `sql` (with `{n}` = 1, 2, 3, …) one row per
    /// transaction, every few milliseconds, until stopped; a statement that
    /// fails (the table is being altered) is retried with the same `n`.
    pub(crate) fn writer(&self, sql: &str) -> Writer {
        let sql = Arc::new(Mutex::new(sql.to_string()));
        let written = Arc::new(AtomicI64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (url, sql, written, stop) =
                (self.db.url(), sql.clone(), written.clone(), stop.clone());
            tokio::spawn(async move {
                let client = walhook::pg::connect(&url, "schema-test-writer")
                    .await
                    .expect("writer connects");
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let mut n = 1i64;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let statement = sql.lock().unwrap().replace("{n}", &n.to_string());
                    if client.batch_execute(&statement).await.is_ok() {
                        written.store(n, Ordering::SeqCst);
                        n += 1;
                    }
                }
            })
        };
        Writer {
            sql,
            written,
            stop,
            task,
        }
    }
}

/// A running writer (see [`Scene::writer`]).
pub(crate) struct Writer {
    sql: Arc<Mutex<String>>,
    written: Arc<AtomicI64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Writer {
    /// The last `n` committed.
    pub(crate) fn written(&self) -> i64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until `more` rows are committed after the current one;
    /// returns the last `n` committed then.
    pub(crate) async fn wait_more(&self, more: i64, what: &str) -> i64 {
        let target = self.written() + more;
        wait_until(WAIT, what, || async { self.written() >= target }).await;
        self.written()
    }

    /// From now on, writes `sql` instead.
    #[allow(dead_code)] // The schema-change tests use it.
    pub(crate) fn set_sql(&self, sql: &str) {
        *self.sql.lock().unwrap() = sql.to_string();
    }

    /// Stops; returns the last `n` committed.
    pub(crate) async fn stop(self) -> i64 {
        self.stop.cancel();
        let written = self.written.clone();
        self.task.await.expect("writer");
        written.load(Ordering::SeqCst)
    }
}
