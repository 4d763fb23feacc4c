//! Issue 5's operations acceptance through the built binary: what a scrape
//! of /metrics shows after a known workload, standby and takeover between
//! two `walhook run` on one slot, SIGTERM with a batch in flight, and the
//! operator API: dead-letter replay (the same batch again) and pause, which
//! holds the slot (ops::replay covers the same API more briefly).

use std::time::{Duration, Instant};

use walhook::lsn::Lsn;

use crate::support::receiver::new_ids;
use crate::support::walhook::{admin_get, base_config_with_admin, metric_sum};
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

async fn orders(prefix: &str) -> (String, Db) {
    let db = fresh_db(prefix).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        .await;
    (db.url(), db)
}

fn config(url: &str, slot: &str, port: u16, receiver: &Receiver, strategy: &str) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n\n[[strategies]]\nname = \"orders\"\n\
         table = \"orders\"\nendpoint = \"hook\"\n{strategy}\n",
        base_config_with_admin(url, slot, slot, port),
        receiver.url("/hook"),
    )
}

async fn scrape(port: u16) -> String {
    match admin_get(port, "/metrics").await {
        Some((200, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    }
}

/// 100 inserts, a filter passing 40: the counters say exactly that, batches,
/// attempts and the three histograms agree with what the receiver got, and
/// every metric carries HELP text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_shows_in_the_metrics_scrape() {
    let (url, db) = orders("ops_metrics").await;
    let receiver = Receiver::start().await;
    let port = free_port();
    // A linger longer than the workload takes, so only batch_size seals
    // batches even on a loaded machine (40 rows, 4 full batches, no wait).
    let mut walhook = Walhook::run(&config(
        &url,
        "ops_metrics",
        port,
        &receiver,
        "on_insert = \"new.id % 5 < 2\"\nbatch_size = 10\nlinger = \"5s\"",
    ))
    .spawn();
    walhook.wait_streaming(&db, "ops_metrics").await;
    db.psql("INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 100) g")
        .await;
    receiver.wait_accepted_records(40, WAIT).await;
    let accepted = receiver.accepted();
    let mut ids = new_ids(&accepted);
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=100).filter(|i| i % 5 < 2).collect::<Vec<i64>>(),
        "the 40 rows the filter passes"
    );
    let batches = accepted.len() as f64;
    assert_eq!(batches, 4.0, "40 records in batches of 10");

    // The counters are bumped right after the 2xx; wait for the last one.
    let delivered = |text: &str| {
        metric_sum(
            text,
            "walhook_batches_total",
            &["strategy=\"orders\"", "outcome=\"delivered\""],
        ) == Some(batches)
            && metric_sum(
                text,
                "walhook_commit_to_delivery_seconds_count",
                &["strategy=\"orders\""],
            ) == Some(batches)
    };
    wait_until(WAIT, "the delivered batches in /metrics", || async {
        delivered(&scrape(port).await)
    })
    .await;
    let text = scrape(port).await;
    let value = |name: &str, labels: &[&str]| {
        metric_sum(&text, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    let ins = "op=\"insert\"";
    let strategy = "strategy=\"orders\"";
    assert_eq!(value("walhook_events_total", &[ins]), 100.0, "{text}");
    assert_eq!(
        value("walhook_events_matched_total", &[strategy, ins]),
        40.0
    );
    assert_eq!(
        value("walhook_events_filtered_total", &[strategy, ins]),
        60.0
    );
    assert_eq!(
        value(
            "walhook_delivery_attempts_total",
            &[strategy, "status_class=\"2xx\""]
        ),
        batches
    );
    assert_eq!(
        value("walhook_delivery_attempts_total", &[strategy]),
        batches,
        "no failed attempt"
    );
    assert_eq!(value("walhook_batch_records_count", &[strategy]), batches);
    assert_eq!(value("walhook_batch_records_sum", &[strategy]), 40.0);
    assert_eq!(
        value("walhook_delivery_duration_seconds_count", &[strategy]),
        batches
    );
    assert!(value("walhook_delivery_duration_seconds_sum", &[strategy]) > 0.0);
    for histogram in [
        "walhook_batch_records",
        "walhook_delivery_duration_seconds",
        "walhook_commit_to_delivery_seconds",
    ] {
        assert_eq!(
            value(&format!("{histogram}_bucket"), &[strategy, "le=\"+Inf\""]),
            batches,
            "{histogram}"
        );
        assert!(
            text.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is a histogram:\n{text}"
        );
    }
    for name in [
        "walhook_events_total",
        "walhook_events_matched_total",
        "walhook_events_filtered_total",
        "walhook_batches_total",
        "walhook_delivery_attempts_total",
        "walhook_delivery_duration_seconds",
        "walhook_batch_records",
        "walhook_commit_to_delivery_seconds",
        "walhook_queue_records",
        "walhook_replication_lag_bytes",
        "walhook_acked_lsn",
        "walhook_received_lsn",
        "walhook_standby",
        "walhook_build_info",
    ] {
        let help = format!("# HELP {name} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&help))
            .unwrap_or_else(|| panic!("no HELP for {name}:\n{text}"));
        assert!(line.len() > help.len() + 10, "HELP text for {name}: {line}");
    }
    assert_eq!(value("walhook_standby", &[]), 0.0);
    walhook.stop().await;
}

/// The README's delete-only example: a strategy with only `on_delete`
/// counts its deletes as matched or filtered and does not count inserts
/// and updates at all (it has no filter for them), while `events_total`
/// counts every change decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_only_strategy_counts_only_deletes() {
    let (url, db) = orders("ops_delete_only").await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let mut walhook = Walhook::run(&config(
        &url,
        "ops_delete_only",
        port,
        &receiver,
        "on_delete = \"old.id % 2 == 0\"\nlinger = \"10ms\"",
    ))
    .spawn();
    walhook.wait_streaming(&db, "ops_delete_only").await;
    db.psql(
        "INSERT INTO orders SELECT g, 'n' FROM generate_series(1, 10) g;
         UPDATE orders SET note = 'changed' WHERE id <= 5;
         DELETE FROM orders WHERE id <= 6;",
    )
    .await;
    receiver.wait_accepted_records(3, WAIT).await;
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("ops_delete_only", end).await;
    let text = scrape(port).await;
    let value = |name: &str, labels: &[&str]| metric_sum(&text, name, labels).unwrap_or(0.0);
    let strategy = "strategy=\"orders\"";
    for (op, decoded) in [("insert", 10.0), ("update", 5.0), ("delete", 6.0)] {
        let op = format!("op=\"{op}\"");
        assert_eq!(
            value("walhook_events_total", &[&op]),
            decoded,
            "{op}\n{text}"
        );
    }
    let del = "op=\"delete\"";
    assert_eq!(value("walhook_events_matched_total", &[strategy, del]), 3.0);
    assert_eq!(
        value("walhook_events_filtered_total", &[strategy, del]),
        3.0
    );
    for op in ["op=\"insert\"", "op=\"update\""] {
        assert_eq!(
            value("walhook_events_matched_total", &[strategy, op]),
            0.0,
            "{op}\n{text}"
        );
        assert_eq!(
            value("walhook_events_filtered_total", &[strategy, op]),
            0.0,
            "no filter for {op}: not counted as filtered\n{text}"
        );
    }
    walhook.stop().await;
}

/// Two instances on one slot: one streams, the other waits as a standby
/// and says so; kill -9 the first and the second delivers what follows,
/// resuming from the acknowledged position, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_kill_9_and_nothing_is_lost() {
    let (url, db) = orders("ops_standby").await;
    let receiver = Receiver::start().await;
    let strategy = "on_insert = \"true\"\nbatch_size = 100\nlinger = \"20ms\"";
    let port_a = free_port();
    let mut first = Walhook::run(&config(&url, "ops_standby", port_a, &receiver, strategy)).spawn();
    first.wait_streaming(&db, "ops_standby").await;
    let port_b = free_port();
    let second = Walhook::run(&config(&url, "ops_standby", port_b, &receiver, strategy)).spawn();

    // Both are ready for the orchestrator's probe; exactly one is active.
    wait_until(WAIT, "the first instance ready and active", || async {
        admin_get(port_a, "/readyz").await == Some((200, "ready\n".to_string()))
            && admin_get(port_a, "/activez").await == Some((200, "active\n".to_string()))
    })
    .await;
    wait_until(WAIT, "the second instance a ready standby", || async {
        admin_get(port_b, "/readyz").await == Some((200, "ready: standby\n".to_string()))
            && admin_get(port_b, "/activez").await == Some((503, "standby\n".to_string()))
    })
    .await;
    for (port, role) in [(port_a, "active"), (port_b, "standby")] {
        let (_, status) = admin_get(port, "/status").await.expect("/status");
        let status: serde_json::Value = serde_json::from_str(&status).expect("json");
        assert_eq!(status["role"], role, "{status}");
    }
    wait_until(WAIT, "walhook_standby 1 on the second", || async {
        metric_sum(&scrape(port_b).await, "walhook_standby", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        metric_sum(&scrape(port_a).await, "walhook_standby", &[]),
        Some(0.0)
    );

    // The first delivers; only it does.
    db.psql("INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 50) g")
        .await;
    receiver.wait_accepted_records(50, WAIT).await;
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("ops_standby", end).await;
    assert_eq!(
        metric_sum(&scrape(port_b).await, "walhook_standby", &[]),
        Some(1.0),
        "still standby while the first streams"
    );
    let delivered_before = receiver.accepted().len();

    let killed = Instant::now();
    first.kill9().await;
    db.psql("INSERT INTO orders SELECT g, 'after' FROM generate_series(51, 100) g")
        .await;
    receiver.wait_accepted_records(100, WAIT).await;
    let takeover = killed.elapsed();
    eprintln!("standby takeover: kill -9 to delivery of the next changes in {takeover:?}");
    // Issue 5 asks for delivery within 10 s of the kill. Timing targets
    // belong in benchmarks, so the bound above is the generous WAIT and the
    // time is printed (about 0.3-0.6 s on the development machine: the
    // standby retries every second).
    let after = &receiver.accepted()[delivered_before..];
    let mut ids = new_ids(after);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids,
        (51..=100).collect::<Vec<_>>(),
        "the following changes, once each"
    );
    let mut all = new_ids(&receiver.accepted());
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (1..=100).collect::<Vec<_>>(), "nothing lost");
    wait_until(WAIT, "the second instance ready and active", || async {
        admin_get(port_b, "/readyz").await == Some((200, "ready\n".to_string()))
            && admin_get(port_b, "/activez").await == Some((200, "active\n".to_string()))
    })
    .await;
    assert_eq!(
        metric_sum(&scrape(port_b).await, "walhook_standby", &[]),
        Some(0.0)
    );
    second.stop().await;
}

/// SIGTERM while the receiver is still answering a batch: the batch
/// completes with a 2xx, the slot is confirmed exactly at the end of the
/// delivered transaction, and walhook exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_batch_in_flight_finishes_it_and_confirms_its_end() {
    let (url, db) = orders("ops_sigterm").await;
    db.psql("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let mut walhook = Walhook::run(&config(
        &url,
        "ops_sigterm",
        port,
        &receiver,
        "on_insert = \"true\"\nlinger = \"10ms\"",
    ))
    .spawn();
    walhook.wait_streaming(&db, "ops_sigterm").await;
    // An earlier transaction, delivered and confirmed at once.
    db.psql("INSERT INTO orders VALUES (1, 'first')").await;
    receiver.wait_accepted_records(1, WAIT).await;

    receiver.set_delay(Duration::from_secs(2));
    db.psql("INSERT INTO orders SELECT g, 'in flight' FROM generate_series(2, 11) g")
        .await;
    wait_until(WAIT, "the batch to reach the receiver", || async {
        receiver.arrivals() >= 2
    })
    .await;
    let signalled = Instant::now();
    walhook.signal(libc::SIGTERM);
    let status = walhook.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", walhook.stderr());

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "no new batch after the signal");
    let last = &requests[1];
    assert_eq!(last.answered, 200, "the batch in flight completed");
    assert!(
        signalled.elapsed() >= Duration::from_millis(500),
        "walhook waited for the slow receiver"
    );
    assert_eq!(
        new_ids(std::slice::from_ref(last)),
        (2..=11).collect::<Vec<_>>()
    );

    // The transaction's end: the end of its commit record, which the
    // payload's lsn (the commit LSN) names.
    let commit_lsn = last.json()["records"][0]["lsn"]
        .as_str()
        .expect("record lsn")
        .to_string();
    let end: Lsn = db
        .psql(&format!(
            "SELECT end_lsn FROM pg_get_wal_record_info('{commit_lsn}')"
        ))
        .await
        .parse()
        .expect("end_lsn");
    let confirmed = db.confirmed_flush("ops_sigterm").await.expect("slot");
    // walhook records each batch in walhook.batches before sending it, and
    // once nothing is pending its confirmed position follows the server's
    // WAL end (which the other tests move too); so the slot may stand past
    // `end` by WAL that holds no change of a published table. Check exactly
    // that: confirmed is `end`, or no record between them touches `orders`.
    assert!(
        confirmed >= end,
        "confirmed {confirmed} before the end {end} of the delivered transaction"
    );
    let orders_file = db
        .psql(
            "SELECT '/' || d.oid || '/' || pg_relation_filenode('orders') \
             FROM pg_database d WHERE d.datname = current_database()",
        )
        .await;
    let records_between = db
        .psql(&format!(
            "SELECT coalesce(string_agg(resource_manager || ' ' || record_type || ' ' || \
             coalesce(block_ref, ''), E'\\n'), '') \
             FROM pg_get_wal_records_info('{end}', '{confirmed}')"
        ))
        .await;
    let touching: Vec<&str> = records_between
        .lines()
        .filter(|l| l.contains(&format!("{orders_file} ")) || l.ends_with(&orders_file))
        .collect();
    assert!(
        touching.is_empty(),
        "the slot was confirmed past a change to orders that was not delivered:\n{}",
        touching.join("\n")
    );
    eprintln!(
        "confirmed_flush_lsn {confirmed}, the delivered transaction ended at {end}; {} WAL records between them",
        records_between.lines().count()
    );

    // A restart sends nothing again, and what follows arrives.
    let before = receiver.requests().len();
    receiver.set_delay(Duration::ZERO);
    let mut again = Walhook::run(&config(
        &url,
        "ops_sigterm",
        free_port(),
        &receiver,
        "on_insert = \"true\"\nlinger = \"10ms\"",
    ))
    .spawn();
    again.wait_streaming(&db, "ops_sigterm").await;
    db.psql("INSERT INTO orders VALUES (12, 'after the restart')")
        .await;
    receiver.wait_accepted_records(12, WAIT).await;
    assert_eq!(
        new_ids(&receiver.requests()[before..]),
        vec![12],
        "a cleanly stopped walhook delivered something again"
    );
    again.stop().await;
}

const TOKEN: &str = "ops-e2e-admin-token";

/// `method path` on the admin server with the token: status and body.
async fn admin_call(port: u16, method: &str, path: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = reqwest::Client::new()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("admin request");
    let code = response.status().as_u16();
    (code, response.text().await.expect("admin body"))
}

fn config_with_token(
    url: &str,
    slot: &str,
    port: u16,
    receiver: &Receiver,
    retry: &str,
    strategy: &str,
) -> String {
    format!(
        "{}token = \"{TOKEN}\"\n\n[endpoints.hook]\nurl = \"{}\"\n{retry}\n\n[[strategies]]\nname = \"orders\"\n\
         table = \"orders\"\nendpoint = \"hook\"\n{strategy}\n",
        base_config_with_admin(url, slot, slot, port),
        receiver.url("/hook"),
    )
}

/// A batch whose attempts ran out is a dead letter; once the endpoint has
/// recovered, `POST /dead-letters/{id}/replay` delivers it (same batch id)
/// and it leaves walhook.dead_letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replays_to_the_recovered_endpoint_and_leaves_the_table() {
    let (url, db) = orders("ops_dead_replay").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(2, 503);
    let port = free_port();
    let mut walhook = Walhook::run(&config_with_token(
        &url,
        "ops_dead_replay",
        port,
        &receiver,
        "retry = { max_attempts = 2, initial = \"50ms\", max = \"100ms\", on_exhausted = \"dead_letter\" }",
        "on_insert = \"true\"\nbatch_size = 1\nlinger = \"10ms\"",
    ))
    .spawn();
    walhook.wait_streaming(&db, "ops_dead_replay").await;
    db.psql("INSERT INTO orders VALUES (1, 'dead')").await;
    db.psql("INSERT INTO orders VALUES (2, 'next')").await;
    receiver.wait_accepted_records(1, WAIT).await;
    wait_until(WAIT, "the dead letter stored", || async {
        db.psql("SELECT count(*) FROM walhook.dead_letters").await == "1"
    })
    .await;
    let failed = receiver.requests()[0].clone();
    assert_eq!(failed.answered, 503);
    assert_eq!(new_ids(&receiver.accepted()), vec![2]);
    let id = db.psql("SELECT id FROM walhook.dead_letters").await;

    let (code, body) = admin_call(port, "POST", &format!("/dead-letters/{id}/replay")).await;
    assert_eq!(code, 200, "replay: {body}");
    let replayed = receiver
        .accepted()
        .last()
        .cloned()
        .expect("the replayed batch");
    assert_eq!(new_ids(std::slice::from_ref(&replayed)), vec![1]);
    assert_eq!(
        replayed.header("webhook-id"),
        failed.header("webhook-id"),
        "the replay is the same batch"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM walhook.dead_letters").await,
        "0"
    );
    let (code, _) = admin_call(port, "GET", &format!("/dead-letters/{id}")).await;
    assert_eq!(code, 404, "the dead letter is gone");
    walhook.stop().await;
}

/// Pause holds deliveries (the changes queue, /status says "paused", the
/// slot is not confirmed past them); resume delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_deliveries_and_resume_delivers_them() {
    let (url, db) = orders("ops_pause").await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let mut walhook = Walhook::run(&config_with_token(
        &url,
        "ops_pause",
        port,
        &receiver,
        "",
        "on_insert = \"true\"\nlinger = \"10ms\"",
    ))
    .spawn();
    walhook.wait_streaming(&db, "ops_pause").await;
    db.psql("INSERT INTO orders VALUES (1, 'before')").await;
    receiver.wait_accepted_records(1, WAIT).await;

    let (code, body) = admin_call(port, "POST", "/strategies/orders/pause").await;
    assert_eq!(code, 200, "pause: {body}");
    let strategy_state = || async {
        let (_, body) = admin_get(port, "/status").await.expect("/status");
        let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        status["strategies"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "orders"))
            .map(|s| {
                (
                    s["state"].as_str().unwrap_or_default().to_string(),
                    s["queue_records"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or_default()
    };
    assert_eq!(strategy_state().await.0, "paused");

    let held_from = db.confirmed_flush("ops_pause").await.expect("slot");
    db.psql("INSERT INTO orders SELECT g, 'paused' FROM generate_series(2, 6) g")
        .await;
    let end = db.current_wal_lsn().await;
    wait_until(WAIT, "the paused strategy to queue the changes", || async {
        strategy_state().await == ("paused".to_string(), 5)
    })
    .await;
    assert_eq!(receiver.arrivals(), 1, "nothing delivered while paused");
    let confirmed = db.confirmed_flush("ops_pause").await.expect("slot");
    assert!(
        confirmed < end,
        "the slot was confirmed past undelivered changes ({confirmed} >= {end}, held from {held_from})"
    );

    let (code, body) = admin_call(port, "POST", "/strategies/orders/resume").await;
    assert_eq!(code, 200, "resume: {body}");
    receiver.wait_accepted_records(6, WAIT).await;
    let mut ids = new_ids(&receiver.accepted());
    ids.sort_unstable();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    db.wait_confirmed("ops_pause", end).await;
    assert_ne!(strategy_state().await.0, "paused");
    walhook.stop().await;
}
