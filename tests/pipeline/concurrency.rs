//! `walhook run` end to end with many batches in flight (`ordering = "key"`,
//! `max_in_flight`): order per key under a receiver with a real endpoint's
//! latency and failures, the slot never passing an undelivered record,
//! stable batch ids across kill -9, what 410 and other 4xx answers do, the
//! circuit breaker, the rate limit, and memory bounded in bytes. Also
//! `ordering = "commit"`, whose next batch is sealed and stored while the
//! one before is on the wire: still one request at a time, in order.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use walhook::lsn::Lsn;

use crate::support::walhook::{admin_call, admin_get, base_config_with_admin, metric_sum};
use crate::support::{
    free_port, fresh_db, wait_until, Db, Received, Receiver, Reply, Walhook, WAIT,
};

const TOKEN: &str = "conc-token";

/// A config with one endpoint `hook` (extra keys `endpoint`) and one
/// strategy `orders` on table `orders` (extra keys `strategy`), the admin
/// API on `port` with [`TOKEN`].
fn config(db: &Db, slot: &str, port: u16, url: &str, endpoint: &str, strategy: &str) -> String {
    let base = base_config_with_admin(&db.url(), slot, slot, port);
    format!(
        "{}\ntoken = \"{TOKEN}\"\n\n[endpoints.hook]\nurl = \"{url}\"\n{endpoint}\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\non_update = \"true\"\n{strategy}\n",
        base.trim_end()
    )
}

async fn orders(prefix: &str) -> Db {
    let db = fresh_db(prefix).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, v int NOT NULL, note text)")
        .await;
    db
}

async fn post(port: u16, path: &str) -> (u16, String) {
    admin_call(reqwest::Method::POST, port, path, TOKEN).await
}

async fn get(port: u16, path: &str) -> (u16, String) {
    admin_call(reqwest::Method::GET, port, path, TOKEN).await
}

async fn scrape(port: u16) -> String {
    admin_get(port, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

async fn status(port: u16) -> Value {
    let (_, body) = admin_get(port, "/status").await.expect("/status answers");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// A record's position: commit LSN and index, from its `id`.
type Pos = (Lsn, u32);

fn pos(record: &Value) -> Pos {
    let id = record["id"].as_str().expect("record id");
    let (lsn, index) = id.rsplit_once(':').expect("<lsn>:<index>");
    (lsn.parse().expect("lsn"), index.parse().expect("index"))
}

/// One record as the receiver got it.
struct Got {
    pos: Pos,
    key: i64,
    v: i64,
}

fn records(request: &Received) -> Vec<Got> {
    request.json()["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| Got {
            pos: pos(r),
            key: r["new"]["id"].as_i64().expect("new.id"),
            v: r["new"]["v"].as_i64().expect("new.v"),
        })
        .collect()
}

/// Requests in the order they arrived.
fn by_arrival(rx: &Receiver) -> Vec<Received> {
    let mut requests = rx.requests();
    requests.sort_by_key(|r| r.at);
    requests
}

/// For each key, the records in the order they first arrived (any answer):
/// asserts that is commit order, and that `v` grows with it.
fn assert_first_arrivals_in_commit_order(requests: &[Received]) -> usize {
    let mut seen = BTreeSet::new();
    let mut per_key: BTreeMap<i64, Vec<(Pos, i64)>> = BTreeMap::new();
    for request in requests {
        for got in records(request) {
            if seen.insert(got.pos) {
                per_key.entry(got.key).or_default().push((got.pos, got.v));
            }
        }
    }
    for (key, firsts) in &per_key {
        assert!(
            firsts
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "key {key}: first arrivals out of commit order: {firsts:?}"
        );
    }
    seen.len()
}

/// Checks redeliveries as a receiver de-duplicating on `webhook-id` alone
/// would: each webhook-id always carries the same records (and equals
/// `batch.id`), and each record only ever comes under one webhook-id.
/// Returns the records that came more than once.
fn assert_ids_are_stable(requests: &[Received]) -> usize {
    let mut batches: HashMap<String, Vec<String>> = HashMap::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut duplicates = 0;
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
            match owner.get(&record) {
                None => {
                    owner.insert(record, id.clone());
                }
                Some(other) if *other == id => duplicates += 1,
                Some(other) => panic!("record {record} came under {other} and then under {id}"),
            }
        }
    }
    duplicates
}

/// Inserts rows `from..=to`, one transaction per row, 25 rows per statement, until
/// stopped, as a steady writer beside kill -9.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(db: &Db, from: i64, to: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicI64::new(from - 1));
        let db = Db::existing(db.cluster(), db.name());
        let task = tokio::spawn({
            let (written, stop) = (written.clone(), stop.clone());
            async move {
                let mut next = from;
                while !stop.load(Ordering::SeqCst) && next <= to {
                    db.psql(&insert_rows(next, next + 24)).await;
                    next += 25;
                    written.store(next - 1, Ordering::SeqCst);
                }
            }
        });
        Writer {
            stop,
            written,
            task,
        }
    }

    /// Stops it; the last id written.
    async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.written.load(Ordering::SeqCst)
    }
}

/// Every row 1..=rows reached the receiver with a 2xx.
fn assert_nothing_lost(rx: &Receiver, rows: i64) {
    let seen: BTreeSet<i64> = rx.accepted().iter().flat_map(Received::new_ids).collect();
    let lost: Vec<i64> = (1..=rows).filter(|id| !seen.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {rows} rows lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Rows inserted by [`insert_rows`], one transaction each.
fn insert_rows(from: i64, to: i64) -> String {
    format!(
        "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
         INSERT INTO orders VALUES (i, 1, 'r'); COMMIT; END LOOP; END $$"
    )
}

#[tokio::test]
async fn key_order_with_8_in_flight_under_latency_and_failures_never_lets_the_slot_pass_a_record() {
    const KEYS: i64 = 40;
    const UPDATE_TXS: i64 = 60;
    let db = orders("conc_key").await;
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    rx.set_failure_rate(Some((0.2, 503)));
    let port = free_port();
    let config = config(
        &db,
        "conc_key",
        port,
        &rx.url("/hook"),
        "retry = { initial = \"50ms\", max = \"400ms\" }",
        "ordering = \"key\"\nmax_in_flight = 8\nbatch_size = 10\nlinger = \"10ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_key").await;
    let start = db.confirmed_flush("conc_key").await.expect("slot");

    // The writer: every key inserted, then transactions updating 5 keys each.
    let writer = {
        let db = Db::existing(db.cluster(), db.name());
        tokio::spawn(async move {
            db.psql(&format!(
                "INSERT INTO orders SELECT i, 0, 'r' FROM generate_series(1, {KEYS}) i"
            ))
            .await;
            for chunk in 0..UPDATE_TXS / 10 {
                let sql: String = (chunk * 10..chunk * 10 + 10)
                    .map(|t| {
                        let keys: Vec<String> = (0..5)
                            .map(|j| ((t * 7 + j * 13) % KEYS + 1).to_string())
                            .collect();
                        format!(
                            "UPDATE orders SET v = v + 1 WHERE id IN ({});\n",
                            keys.join(",")
                        )
                    })
                    .collect();
                db.psql(&sql).await;
            }
        })
    };
    let total = (KEYS + UPDATE_TXS * 5) as usize;

    // While it runs: what Postgres has confirmed, then what had a 2xx.
    let samples: RefCell<Vec<(Lsn, BTreeSet<Pos>)>> = RefCell::default();
    let done = crate::support::poll_until(WAIT * 2, || {
        let samples = &samples;
        let db = &db;
        let rx = &rx;
        async move {
            let confirmed = db.confirmed_flush("conc_key").await.expect("slot");
            let accepted: BTreeSet<Pos> = rx
                .accepted()
                .iter()
                .flat_map(records)
                .map(|g| g.pos)
                .collect();
            let all = accepted.len() >= total;
            samples.borrow_mut().push((confirmed, accepted));
            all
        }
    })
    .await;
    assert!(
        done,
        "not every record arrived; stderr:\n{}",
        walhook.stderr()
    );
    writer.await.unwrap();

    let requests = by_arrival(&rx);
    let distinct = assert_first_arrivals_in_commit_order(&requests);
    assert_eq!(distinct, total, "every record arrived");
    let all: BTreeSet<Pos> = rx
        .accepted()
        .iter()
        .flat_map(records)
        .map(|g| g.pos)
        .collect();
    let samples = samples.into_inner();
    let mut while_pending = 0;
    for (confirmed, accepted) in &samples {
        for p in all.iter().filter(|p| p.0 < *confirmed) {
            assert!(
                accepted.contains(p),
                "confirmed_flush_lsn {confirmed} passed record {}:{} before its 2xx",
                p.0,
                p.1
            );
        }
        if *confirmed > start && accepted.len() < total {
            while_pending += 1;
        }
    }
    eprintln!(
        "{} requests, {} samples ({while_pending} with the slot moving while records were pending), \
         at most {} requests at once",
        requests.len(),
        samples.len(),
        rx.peak_in_flight()
    );
    assert!(
        while_pending > 0,
        "the slot never moved while records were pending"
    );
    assert!(
        (2..=8).contains(&rx.peak_in_flight()),
        "batches in flight at once: {}",
        rx.peak_in_flight()
    );
    assert!(
        requests.iter().any(|r| r.answered == 503),
        "the receiver failed some batches"
    );
    walhook.stop().await;
}

/// Under `ordering = "commit"` the next full batch is sealed and stored
/// while the one before is at the endpoint. What the receiver sees must not
/// change: one request at a time, and a batch only after every batch before
/// it got its 2xx (a retried batch holds the rest); after kill -9 nothing is
/// lost and every record keeps its first webhook-id.
#[tokio::test]
async fn commit_order_sends_one_batch_at_a_time_in_order_and_keeps_ids_across_kill_9() {
    let db = orders("conc_commit").await;
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    rx.set_failure_rate(Some((0.2, 503)));
    let port = free_port();
    let config = config(
        &db,
        "conc_commit",
        port,
        &rx.url("/hook"),
        "retry = { initial = \"50ms\", max = \"400ms\" }",
        "batch_size = 50\nlinger = \"10ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_commit").await;

    // 1. No kills: 600 rows in 25-row transactions, written faster than the
    //    receiver answers, so full batches wait behind the one in flight.
    db.psql(
        "DO $$ BEGIN FOR b IN 0..23 LOOP \
         INSERT INTO orders SELECT i, 1, 'r' FROM generate_series(b*25+1, b*25+25) i; \
         COMMIT; END LOOP; END $$",
    )
    .await;
    wait_until(WAIT * 2, "600 rows accepted", || async {
        rx.accepted().iter().flat_map(Received::new_ids).count() >= 600
    })
    .await;
    let requests = by_arrival(&rx);
    assert_eq!(rx.peak_in_flight(), 1, "one request at a time");
    // When a batch arrives, every batch that starts before it has had its 2xx.
    let mut delivered: BTreeSet<String> = BTreeSet::new();
    let mut sent: Vec<(Pos, String)> = Vec::new();
    for request in &requests {
        let id = request
            .header("webhook-id")
            .expect("webhook-id")
            .to_string();
        let first = pos(&request.json()["records"][0]);
        for (earlier, other) in &sent {
            assert!(
                *earlier >= first || *other == id || delivered.contains(other),
                "batch {id} (from {}:{}) arrived before batch {other} (from {}:{}) was delivered",
                first.0,
                first.1,
                earlier.0,
                earlier.1
            );
        }
        if request.answered == 200 {
            delivered.insert(id.clone());
        }
        if !sent.iter().any(|(_, other)| *other == id) {
            sent.push((first, id));
        }
    }
    let firsts: Vec<Pos> = sent.iter().map(|(p, _)| *p).collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "batches went out of commit order: {firsts:?}"
    );
    assert!(
        requests.iter().any(|r| r.answered == 503),
        "the receiver failed some batches"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.answered == 200)
            .any(|r| r.new_ids().len() == 50),
        "full batches went"
    );

    // 2. Kill -9 four times under a writer: batches stored ahead of their
    //    turn are re-formed with their ids.
    let writer = Writer::start(&db, 601, 1800);
    for _ in 0..4 {
        let target = rx.arrivals() + rand::random_range(1..8);
        wait_until(WAIT, "more requests", || async { rx.arrivals() >= target }).await;
        walhook.kill9().await;
        walhook = Walhook::run(&config).spawn();
        walhook.wait_streaming(&db, "conc_commit").await;
    }
    let rows = writer.stop().await;
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("conc_commit", end).await;
    assert_nothing_lost(&rx, rows);
    let duplicates = assert_ids_are_stable(&by_arrival(&rx));
    eprintln!(
        "{rows} rows, {} requests, {duplicates} records delivered again (all under their first webhook-id)",
        rx.requests().len()
    );
    walhook.stop().await;
}

#[tokio::test]
async fn a_receiver_failing_one_key_holds_only_that_key_in_order() {
    let db = orders("conc_onekey").await;
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(50), Duration::from_millis(100));
    let failing = Arc::new(AtomicBool::new(true));
    rx.set_rule(Some(Arc::new({
        let failing = failing.clone();
        move |body: &Value| {
            let has_7 = body["records"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["new"]["id"] == 7));
            (has_7 && failing.load(Ordering::SeqCst)).then_some(503)
        }
    })));
    let port = free_port();
    let config = config(
        &db,
        "conc_onekey",
        port,
        &rx.url("/hook"),
        "retry = { initial = \"100ms\", max = \"1s\" }",
        "ordering = \"key\"\nmax_in_flight = 4\nbatch_size = 10\nlinger = \"10ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_onekey").await;
    // Key 7 first, alone: its batch fails and is retried.
    db.psql("INSERT INTO orders VALUES (7, 1, 'r')").await;
    wait_until(WAIT, "key 7 failing", || async {
        rx.requests().iter().filter(|r| r.answered == 503).count() >= 2
    })
    .await;
    let held_at = pos(&rx.requests()[0].json()["records"][0]);
    // Then 20 keys, each inserted and updated, with key 7 updated in between.
    let mut sql = String::new();
    for k in 1..=20 {
        if k != 7 {
            sql.push_str(&format!("INSERT INTO orders VALUES ({k}, 1, 'r');\n"));
        }
    }
    for round in 2..=4 {
        sql.push_str(&format!("UPDATE orders SET v = {round} WHERE id = 7;\n"));
        sql.push_str(&format!("UPDATE orders SET v = {round} WHERE id <> 7;\n"));
    }
    db.psql(&sql).await;
    // Everything but key 7 arrives while key 7 keeps failing.
    let others = 19 * 4;
    wait_until(WAIT, "every other key's records", || async {
        rx.accepted()
            .iter()
            .flat_map(records)
            .filter(|g| g.key != 7)
            .count()
            >= others
    })
    .await;
    assert!(
        rx.accepted().iter().flat_map(records).all(|g| g.key != 7),
        "key 7 was never accepted"
    );
    let confirmed = db.confirmed_flush("conc_onekey").await.expect("slot");
    assert!(
        confirmed <= held_at.0,
        "confirmed_flush_lsn {confirmed} passed key 7's undelivered record at {}",
        held_at.0
    );
    // The endpoint recovers; "retry now" ends the backoff.
    failing.store(false, Ordering::SeqCst);
    let (code, body) = post(port, "/strategies/orders/retry").await;
    assert_eq!(code, 200, "{body}");
    wait_until(WAIT, "key 7's four records", || async {
        rx.accepted()
            .iter()
            .flat_map(records)
            .filter(|g| g.key == 7)
            .count()
            >= 4
    })
    .await;
    let sevens: Vec<i64> = by_arrival(&rx)
        .iter()
        .filter(|r| r.answered == 200)
        .flat_map(records)
        .filter(|g| g.key == 7)
        .map(|g| g.v)
        .collect();
    assert_eq!(sevens, [1, 2, 3, 4], "key 7 in commit order");
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("conc_onekey", end).await;
    walhook.stop().await;
}

/// Kills walhook 10 times at random moments (the first with 8 batches at
/// the receiver at once) under a steady writer and a receiver failing 10%
/// of requests: nothing is lost, and a receiver de-duplicating on
/// `webhook-id` alone sees every record once.
#[tokio::test]
async fn kill_9_ten_times_with_8_in_flight_loses_nothing_and_keeps_every_batch_id() {
    let db = orders("conc_kill").await;
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    rx.set_failure_rate(Some((0.1, 503)));
    let port = free_port();
    let config = config(
        &db,
        "conc_kill",
        port,
        &rx.url("/hook"),
        "retry = { initial = \"50ms\", max = \"400ms\" }",
        "ordering = \"key\"\nmax_in_flight = 8\nbatch_size = 5\nlinger = \"10ms\"",
    );
    // The first run creates the slot; the writer starts once it streams.
    let mut first = Walhook::run(&config).spawn();
    first.wait_streaming(&db, "conc_kill").await;
    let mut first = Some(first);
    let writer = Writer::start(&db, 1, 3000);
    for round in 0..10 {
        let mut walhook = match first.take() {
            Some(walhook) => walhook,
            None => {
                let mut walhook = Walhook::run(&config).spawn();
                walhook.wait_streaming(&db, "conc_kill").await;
                walhook
            }
        };
        if round == 0 {
            rx.reset_peak();
            wait_until(WAIT, "8 batches at the receiver at once", || async {
                rx.in_flight() >= 8
            })
            .await;
        } else {
            let target = rx.arrivals() + rand::random_range(1..20);
            wait_until(WAIT, "more requests", || async { rx.arrivals() >= target }).await;
        }
        walhook.kill9().await;
    }
    let rows = writer.stop().await;

    let walhook = Walhook::run(&config).spawn();
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("conc_kill", end).await;
    let requests = by_arrival(&rx);
    assert_nothing_lost(&rx, rows);
    let duplicates = assert_ids_are_stable(&requests);
    eprintln!(
        "{rows} rows, {} requests, {duplicates} records delivered again (all under their first webhook-id)",
        requests.len()
    );
    assert!(
        duplicates > 0,
        "ten kills redelivered nothing: the check proved nothing"
    );
    walhook.stop().await;
}

#[tokio::test]
async fn a_410_pauses_the_endpoints_strategies_until_resumed() {
    let db = orders("conc_gone").await;
    let rx = Receiver::start().await;
    rx.script([Reply::Status(410)]);
    let port = free_port();
    let base = base_config_with_admin(&db.url(), "conc_gone", "conc_gone", port);
    let config = format!(
        "{}\ntoken = \"{TOKEN}\"\n\n[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"inserts\"\ntable = \"orders\"\nendpoint = \"hook\"\non_insert = \"true\"\n\n\
         [[strategies]]\nname = \"updates\"\ntable = \"orders\"\nendpoint = \"hook\"\non_update = \"true\"\n",
        base.trim_end(),
        rx.url("/hook"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_gone").await;
    db.psql("INSERT INTO orders VALUES (1, 1, 'r')").await;
    rx.wait_requests(1, WAIT).await;
    let gone_id = rx.requests()[0].header("webhook-id").unwrap().to_string();
    wait_until(WAIT, "both strategies paused by the 410", || async {
        let s = status(port).await;
        s["strategies"]
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s["pause_reason"] == "endpoint_gone"))
    })
    .await;
    let metrics = scrape(port).await;
    for strategy in ["inserts", "updates"] {
        let label = format!("strategy=\"{strategy}\"");
        assert_eq!(
            metric_sum(
                &metrics,
                "walhook_strategy_paused",
                &[&label, "reason=\"endpoint_gone\""]
            ),
            Some(1.0),
            "{strategy}"
        );
    }
    assert_eq!(
        metric_sum(
            &metrics,
            "walhook_delivery_decisions_total",
            &["status_class=\"4xx\"", "decision=\"pause\""]
        ),
        Some(1.0)
    );
    // An update while paused: held too (its strategy shares the endpoint).
    db.psql("UPDATE orders SET v = 2 WHERE id = 1").await;
    let held = db.current_wal_lsn().await;
    assert!(db.confirmed_flush("conc_gone").await.expect("slot") < held);
    assert_eq!(rx.requests().len(), 1, "nothing sent while paused");

    for strategy in ["inserts", "updates"] {
        let (code, body) = post(port, &format!("/strategies/{strategy}/resume")).await;
        assert_eq!(code, 200, "{body}");
    }
    rx.wait_accepted_records(2, WAIT).await;
    let accepted = rx.accepted();
    assert!(
        accepted
            .iter()
            .any(|r| r.header("webhook-id") == Some(gone_id.as_str())),
        "the held batch went again with its id"
    );
    db.wait_confirmed("conc_gone", held).await;
    let metrics = scrape(port).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "walhook_strategy_paused",
            &["reason=\"endpoint_gone\""]
        ),
        Some(0.0)
    );
    walhook.stop().await;
}

#[tokio::test]
async fn a_400_is_dead_lettered_with_on_client_error_and_retried_by_default() {
    for (on_client_error, slot) in [("dead_letter", "conc_400_dl"), ("retry", "conc_400_rt")] {
        let db = orders(slot).await;
        let rx = Receiver::start().await;
        rx.script([Reply::Status(400)]);
        let port = free_port();
        let endpoint = if on_client_error == "dead_letter" {
            "on_client_error = \"dead_letter\"\nretry = { initial = \"50ms\" }"
        } else {
            "retry = { initial = \"50ms\" }"
        };
        let config = config(&db, slot, port, &rx.url("/hook"), endpoint, "");
        let mut walhook = Walhook::run(&config).spawn();
        walhook.wait_streaming(&db, slot).await;
        db.psql("INSERT INTO orders VALUES (1, 1, 'r')").await;
        rx.wait_requests(1, WAIT).await;
        let rejected = rx.requests()[0].header("webhook-id").unwrap().to_string();
        db.psql("INSERT INTO orders VALUES (2, 1, 'r')").await;
        let end = db.current_wal_lsn().await;
        db.wait_confirmed(slot, end).await;
        let accepted = rx.accepted();
        let ids: Vec<i64> = accepted.iter().flat_map(Received::new_ids).collect();
        let (_, body) = get(port, "/dead-letters?strategy=orders").await;
        let page: Value = serde_json::from_str(&body).expect("dead letters JSON");
        let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
        if on_client_error == "dead_letter" {
            assert_eq!(
                ids,
                [2],
                "the rejected batch is not retried; the next flows"
            );
            assert_eq!(letters.len(), 1, "{body}");
            assert_eq!(letters[0]["batch_id"], rejected.as_str());
            assert_eq!(letters[0]["last_status"], 400);
        } else {
            assert_eq!(ids, [1, 2], "retried, then delivered, in order");
            assert_eq!(accepted[0].header("webhook-id"), Some(rejected.as_str()));
            assert!(letters.is_empty(), "{body}");
        }
        walhook.stop().await;
    }
}

#[tokio::test]
async fn an_open_circuit_lets_one_probe_at_a_time_through_and_closes_when_the_endpoint_is_back() {
    let db = orders("conc_breaker").await;
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(100), Duration::from_millis(200));
    rx.set_failure_rate(Some((1.0, 503)));
    let port = free_port();
    let config = config(
        &db,
        "conc_breaker",
        port,
        &rx.url("/hook"),
        "retry = { initial = \"20ms\", max = \"100ms\" }\ncircuit_breaker = { failures = 3 }",
        "ordering = \"key\"\nmax_in_flight = 8\nbatch_size = 1\nlinger = \"5ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_breaker").await;
    db.psql("INSERT INTO orders SELECT i, 1, 'r' FROM generate_series(1, 20) i")
        .await;
    wait_until(WAIT, "walhook_endpoint_up to drop to 0", || async {
        metric_sum(
            &scrape(port).await,
            "walhook_endpoint_up",
            &["endpoint=\"hook\""],
        ) == Some(0.0)
    })
    .await;
    // Requests sent before the circuit opened finish; from then on only
    // probes. Waiting for every request that had arrived by now to be
    // answered (not for "at most one in flight", which a pre-open request
    // still being answered also satisfies) leaves only probes in flight.
    let arrived_when_open = rx.arrivals();
    wait_until(WAIT, "the requests sent before it opened", || async {
        rx.answered_first(arrived_when_open)
    })
    .await;
    rx.reset_peak();
    let probes_from = rx.arrivals();
    wait_until(WAIT, "10 probes", || async {
        rx.arrivals() >= probes_from + 10
    })
    .await;
    assert_eq!(
        rx.peak_in_flight(),
        1,
        "one probe at a time while the circuit is open"
    );
    rx.set_failure_rate(None);
    wait_until(WAIT, "walhook_endpoint_up back to 1", || async {
        metric_sum(
            &scrape(port).await,
            "walhook_endpoint_up",
            &["endpoint=\"hook\""],
        ) == Some(1.0)
    })
    .await;
    rx.wait_accepted_records(20, WAIT).await;
    let metrics = scrape(port).await;
    assert!(
        metric_sum(
            &metrics,
            "walhook_delivery_attempts_total",
            &["status_class=\"circuit_open\""]
        )
        .is_some_and(|n| n > 0.0),
        "attempts refused by the open circuit are counted"
    );
    walhook.stop().await;
}

#[tokio::test]
async fn rate_limit_5_holds_a_burst_to_5_requests_per_second() {
    let db = orders("conc_rate").await;
    let rx = Receiver::start().await;
    let port = free_port();
    let config = config(
        &db,
        "conc_rate",
        port,
        &rx.url("/hook"),
        "rate_limit = 5",
        "ordering = \"key\"\nmax_in_flight = 8\nbatch_size = 1\nlinger = \"1ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_rate").await;
    db.psql("INSERT INTO orders SELECT i, 1, 'r' FROM generate_series(1, 16) i")
        .await;
    rx.wait_accepted_records(16, WAIT).await;
    let at: Vec<_> = by_arrival(&rx).iter().map(|r| r.at).collect();
    let span = *at.last().unwrap() - at[0];
    eprintln!("16 requests over {span:?}");
    // 200 ms apart: 15 gaps take at least 3 s; any 1 s holds at most 6.
    assert!(
        span >= Duration::from_millis(2900),
        "16 requests in {span:?}"
    );
    for (i, first) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .filter(|t| **t - *first < Duration::from_secs(1))
            .count();
        assert!(within <= 6, "{within} requests within 1 s");
    }
    walhook.stop().await;
}

/// A 300 ms endpoint and 600 rows of 200 KB (120 MB decoded) with a 16 MiB
/// budget: walhook's peak RSS grows less than the budget + 6 MiB over idle, the walsender
/// (whose timeout is 5 s here) never times out while walhook waits for
/// room, and every row arrives.
#[tokio::test]
async fn a_backlog_of_200_kb_rows_to_a_slow_endpoint_stays_within_the_memory_budget() {
    const ROWS: i64 = 600;
    let db = orders("conc_rss").await;
    db.psql(&format!(
        "ALTER DATABASE {} SET wal_sender_timeout = '5s'",
        db.name()
    ))
    .await;
    let rx = Receiver::start().await;
    rx.set_delay(Duration::from_millis(300));
    let port = free_port();
    let base = base_config_with_admin(&db.url(), "conc_rss", "conc_rss", port).replacen(
        "\n\n[admin]",
        "\nmax_buffer_bytes = \"16MiB\"\n\n[admin]",
        1,
    );
    let config = format!(
        "{base}[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nordering = \"key\"\nmax_in_flight = 4\nmax_batch_bytes = 2097152\n",
        rx.url("/hook"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "conc_rss").await;
    let idle_kib = walhook.peak_rss_kib();
    // 200 KB of text per row (compressed in WAL, 200 KB decoded).
    for chunk in 0..ROWS / 100 {
        db.psql(&format!(
            "INSERT INTO orders SELECT i, 1, repeat(md5(i::text), 6250) \
             FROM generate_series({}, {}) i",
            chunk * 100 + 1,
            chunk * 100 + 100
        ))
        .await;
    }
    let end = db.current_wal_lsn().await;
    let peak_buffer = Cell::new(0.0f64);
    let done = crate::support::poll_until(WAIT * 3, || {
        let peak = &peak_buffer;
        let db = &db;
        async move {
            if let Some(b) = metric_sum(&scrape(port).await, "walhook_buffer_bytes", &[]) {
                peak.set(peak.get().max(b));
            }
            db.confirmed_flush("conc_rss")
                .await
                .is_some_and(|c| c >= end)
        }
    })
    .await;
    assert!(
        done,
        "the backlog was not delivered; stderr:\n{}",
        walhook.stderr()
    );
    let mut ids: Vec<i64> = rx.accepted().iter().flat_map(Received::new_ids).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ROWS as usize, "every row arrived");
    let peak_kib = walhook.peak_rss_kib();
    // Growth over the idle process, whose RSS (28-30 MiB in a debug build)
    // is mostly the binary's own pages and grows with every feature: the
    // budget + 6 MiB (requests in flight, decoding, the allocator).
    let limit_kib = idle_kib + (16 + 6) * 1024;
    eprintln!(
        "peak RSS {} MiB (limit {} MiB, {} MiB when idle), peak walhook_buffer_bytes seen {:.1} MiB",
        peak_kib / 1024,
        limit_kib / 1024,
        idle_kib / 1024,
        peak_buffer.get() / f64::from(1 << 20)
    );
    assert!(
        peak_kib <= limit_kib,
        "peak RSS {peak_kib} KiB over {limit_kib} KiB"
    );
    let stderr = walhook.stop().await;
    assert!(
        !stderr.contains("reconnecting"),
        "the stream was interrupted:\n{stderr}"
    );
}

/// A restart with a narrower filter in the middle of a big transaction whose
/// first batch was sent but not delivered: that stored batch's last record
/// no longer passes, and the records behind it must not wait for the
/// transaction's end (the memory budget fills long before it).
#[tokio::test]
async fn a_restart_with_a_narrower_filter_inside_a_big_transaction_delivers_what_passes() {
    let db = orders("conc_refilter").await;
    let rx = Receiver::start().await;
    rx.set_latency(Duration::from_millis(50), Duration::from_millis(100));
    rx.set_failure_rate(Some((1.0, 503)));
    let port = free_port();
    let base = base_config_with_admin(&db.url(), "conc_refilter", "conc_refilter", port).replacen(
        "\n\n[admin]",
        "\nmax_buffer_bytes = \"1MiB\"\n\n[admin]",
        1,
    );
    let config = |on_insert: &str| {
        format!(
            "{base}[endpoints.hook]\nurl = \"{}\"\nretry = {{ initial = \"50ms\", max = \"200ms\" }}\n\n\
             [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
             on_insert = \"{on_insert}\"\nbatch_size = 10\nlinger = \"5ms\"\n",
            rx.url("/hook"),
        )
    };
    let mut first = Walhook::run(&config("true")).spawn();
    first.wait_streaming(&db, "conc_refilter").await;
    // 20,000 rows of ~1 KB in one transaction: 2,000 pass the second filter,
    // about 2.5 MB of records against a 1 MiB budget.
    db.psql("INSERT INTO orders SELECT i, i, repeat('x', 1000) FROM generate_series(1, 20000) i")
        .await;
    // The first batch (ids 1..=10) is stored and failing.
    wait_until(WAIT, "the first batch to be tried", || async {
        rx.arrivals() >= 2
    })
    .await;
    first.kill9().await;

    rx.set_failure_rate(None);
    // Of the stored batch only id 1 passes now; its last record (10) is gone.
    let mut second = Walhook::run(&config("row.id % 10 == 1")).spawn();
    second.wait_streaming(&db, "conc_refilter").await;
    let want: BTreeSet<i64> = (0..2000).map(|i| i * 10 + 1).collect();
    wait_until(WAIT, "every row that passes the new filter", || async {
        rx.accepted()
            .iter()
            .flat_map(Received::new_ids)
            .collect::<BTreeSet<_>>()
            == want
    })
    .await;
    // The stored batch was re-formed: what still passes of it (id 1) went
    // first and alone, not merged into the next batch. (Its batch id is new:
    // a batch id names its records, and these are fewer.)
    let delivered: Vec<Vec<i64>> = rx
        .requests()
        .iter()
        .filter(|r| r.answered / 100 == 2)
        .map(Received::new_ids)
        .collect();
    assert_eq!(delivered.first(), Some(&vec![1]), "{delivered:?}");
    second.stop().await;
}
