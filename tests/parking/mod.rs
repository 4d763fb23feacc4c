//! Parking (DESIGN.md "Parking", README "Delivery guarantees"): one
//! failing receiver never holds the WAL. Run as a DBA attaches walhook: a
//! role with only LOGIN, REPLICATION and SELECT, the setup SQL run by an
//! administrator (`sql/setup.sql -v role=…`), receivers on 127.0.0.1 that
//! answer in 50–300 ms, a writer running. Each test checks what a user
//! would: the rows that arrived (applied in arrival order and compared with
//! `SELECT *`), their order, their ids, and the slot's
//! `confirmed_flush_lsn` as PostgreSQL reports it.

mod bound;
mod commit;
mod key;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use walhook::lsn::Lsn;

use crate::support::cluster::add_hba_lines;
use crate::support::walhook::{admin_call, admin_get};
use crate::support::{fresh_db, Db, Received, Receiver};

pub(crate) const TOKEN: &str = "parking-admin-token";

/// A database with `orders (id int PRIMARY KEY, v int NOT NULL, note text)`
/// and a least-privileged role `{name}_app`, attached with `sql/setup.sql`
/// (slot and publication `name`). Returns the database and the role's URL.
pub(crate) async fn attached(name: &str) -> (Db, String) {
    let db = fresh_db(name).await;
    db.psql("CREATE TABLE public.orders (id int PRIMARY KEY, v int NOT NULL, note text)")
        .await;
    let role = format!("{name}_app");
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw-{role}';
         GRANT SELECT ON public.orders TO {role};"
    ))
    .await;
    add_hba_lines(&[
        &format!("host all         {role} 127.0.0.1/32 scram-sha-256"),
        &format!("host replication {role} 127.0.0.1/32 scram-sha-256"),
    ])
    .await;
    db.try_psql_file(
        "sql/setup.sql",
        &[
            ("tables", "public.orders"),
            ("slot", name),
            ("publication", name),
            ("role", &role),
        ],
    )
    .await
    .expect("sql/setup.sql runs");
    let url = db.url_as(&role, &format!("pw-{role}"));
    (db, url)
}

/// `[source]` and `[admin]` (with [`TOKEN`]), then `rest`.
pub(crate) fn config(url: &str, name: &str, port: u16, rest: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n{rest}"
    )
}

/// A receiver answering in 50–300 ms, like a real endpoint.
pub(crate) async fn receiver() -> Receiver {
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    rx
}

pub(crate) async fn status(port: u16) -> Value {
    let (_, body) = admin_get(port, "/status").await.expect("/status answers");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// `/status`'s entry of `strategy`.
pub(crate) async fn strategy_status(port: u16, strategy: &str) -> Value {
    let doc = status(port).await;
    doc["strategies"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == strategy).cloned())
        .unwrap_or(Value::Null)
}

pub(crate) async fn scrape(port: u16) -> String {
    admin_get(port, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

pub(crate) async fn get(port: u16, path: &str) -> (u16, String) {
    admin_call(reqwest::Method::GET, port, path, TOKEN).await
}

pub(crate) async fn post(port: u16, path: &str) -> (u16, String) {
    admin_call(reqwest::Method::POST, port, path, TOKEN).await
}

/// A record as a receiver got it: its position, `new.id` and `new.v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Got {
    pub(crate) pos: (Lsn, u32),
    pub(crate) id: i64,
    pub(crate) v: i64,
}

pub(crate) fn records(request: &Received) -> Vec<Got> {
    request.json()["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let id = r["id"].as_str().expect("record id");
            let (lsn, index) = id.rsplit_once(':').expect("<lsn>:<index>");
            Got {
                pos: (lsn.parse().expect("lsn"), index.parse().expect("index")),
                id: r["new"]["id"].as_i64().expect("new.id"),
                v: r["new"]["v"].as_i64().expect("new.v"),
            }
        })
        .collect()
}

/// Applies the accepted requests' records in the order they were answered,
/// as a receiver keeping a copy does: `id → v`.
pub(crate) fn copy(rx: &Receiver) -> BTreeMap<i64, i64> {
    let mut rows = BTreeMap::new();
    for request in rx.accepted() {
        for got in records(&request) {
            rows.insert(got.id, got.v);
        }
    }
    rows
}

/// `SELECT id, v FROM orders` as `id → v`.
pub(crate) async fn table(db: &Db) -> BTreeMap<i64, i64> {
    db.psql("SELECT id || ',' || v FROM orders ORDER BY id")
        .await
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, v) = l.trim().split_once(',').expect("id,v");
            (id.parse().expect("id"), v.parse().expect("v"))
        })
        .collect()
}

/// As a receiver de-duplicating on `webhook-id` would check: each
/// webhook-id always carries the same records (and is `batch.id`), and each
/// record only ever comes under one webhook-id. Returns how many accepted
/// requests repeated a webhook-id accepted before.
pub(crate) fn assert_ids_are_stable(requests: &[Received]) -> usize {
    let mut batches: HashMap<String, Vec<String>> = HashMap::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut accepted: HashMap<String, usize> = HashMap::new();
    for request in requests {
        let id = request
            .header("webhook-id")
            .expect("webhook-id")
            .to_string();
        assert_eq!(request.json()["batch"]["id"].as_str(), Some(id.as_str()));
        let ids = request.record_ids();
        let first = batches.entry(id.clone()).or_insert_with(|| ids.clone());
        assert_eq!(first, &ids, "webhook-id {id} came with other records");
        for record in ids {
            let known = owner.entry(record.clone()).or_insert_with(|| id.clone());
            assert_eq!(
                *known, id,
                "record {record} came under {known} and then under {id}"
            );
        }
        if (200..300).contains(&request.answered) {
            *accepted.entry(id).or_default() += 1;
        }
    }
    accepted.values().map(|n| n - 1).sum()
}

/// Inserts rows `from..=to` into `orders` (`v` = 0), one transaction per
/// row, 25 rows per psql call, until done or stopped: a writer beside the
/// test.
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) fn start(db: &Db, from: i64, to: i64) -> Writer {
        Writer::paced(db, from, to, Duration::ZERO)
    }

    /// [`Writer::start`], waiting `pause` after each psql call (a steady
    /// writer of about 25 rows per `pause`).
    pub(crate) fn paced(db: &Db, from: i64, to: i64, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicI64::new(from - 1));
        let db = Db::existing(db.cluster(), db.name());
        let task = tokio::spawn({
            let (written, stop) = (written.clone(), stop.clone());
            async move {
                let mut next = from;
                while !stop.load(Ordering::SeqCst) && next <= to {
                    let last = (next + 24).min(to);
                    db.psql(&format!(
                        "DO $$ BEGIN FOR i IN {next}..{last} LOOP \
                         INSERT INTO orders VALUES (i, 0, 'r'); COMMIT; END LOOP; END $$"
                    ))
                    .await;
                    written.store(last, Ordering::SeqCst);
                    next = last + 1;
                    if !pause.is_zero() {
                        // The writer's pace, not a wait for anything.
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        });
        Writer {
            stop,
            written,
            task,
        }
    }

    /// The last id written so far.
    pub(crate) fn written(&self) -> i64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until it has written everything (or was stopped).
    pub(crate) async fn finish(self) -> i64 {
        self.task.await.expect("writer task");
        self.written.load(Ordering::SeqCst)
    }

    /// Stops it; the last id written.
    pub(crate) async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }
}
