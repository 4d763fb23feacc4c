//! Batching and the request as a receiver sees it: batch_size, linger,
//! max_batch_bytes, payload shape, batch ids, headers, redirects, order.
//! Real HTTP receiver on 127.0.0.1; the payload and order tests stream from
//! the real throwaway PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use walhook::batch::{BatchMeta, Decorate, Decoration};
use walhook::lsn::Lsn;

use super::{rec, Pipeline, Setup};
use crate::support::{wait_until, Receiver, Reply, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_records_in_one_transaction_arrive_as_ceil_n_over_batch_size_requests() {
    let rx = Receiver::start().await;
    let w = Setup {
        batch_size: 10,
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    let records: Vec<_> = (0..95).map(|i| rec(0x100, i)).collect();
    w.send_tx(records, Lsn(0x200)).await;
    rx.wait_accepted_records(95, WAIT).await;
    let requests = rx.accepted();
    assert_eq!(requests.len(), 10, "ceil(95 / 10) requests");
    let sizes: Vec<u64> = requests
        .iter()
        .map(|r| r.json()["batch"]["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [10, 10, 10, 10, 10, 10, 10, 10, 10, 5]);
    let expected: Vec<String> = (0..95).map(|i| format!("0/100:{i}")).collect();
    assert_eq!(rx.accepted_record_ids(), expected);
    wait_until(WAIT, "checkpoint at the transaction end", || async {
        w.checkpoint.acked() == Lsn(0x200)
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_is_sent_once_linger_has_passed() {
    let rx = Receiver::start().await;
    let linger = Duration::from_millis(400);
    let w = Setup {
        linger,
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    let sent = Instant::now();
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    rx.wait_requests(1, WAIT).await;
    let waited = rx.requests()[0].at - sent;
    assert!(waited >= linger, "sent after {waited:?}, before linger");
    assert!(waited < linger + Duration::from_secs(5), "{waited:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_bytes_splits_batches_and_a_larger_record_goes_alone() {
    let rx = Receiver::start().await;
    let w = Setup {
        max_batch_bytes: 70,
        linger: Duration::from_millis(50),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    // Each hand-made record is 22 bytes: three fit in 70, four do not.
    let mut records: Vec<_> = (0..7).map(|i| rec(0x100, i)).collect();
    let mut big = rec(0x100, 7);
    big.json = format!("{{\"id\":\"0/100:7\",\"pad\":\"{}\"}}", "x".repeat(500)).into_bytes();
    records.push(big);
    records.push(rec(0x100, 8));
    w.send_tx(records, Lsn(0x200)).await;
    rx.wait_accepted_records(9, WAIT).await;
    let batches: Vec<Vec<String>> = rx.accepted().iter().map(|r| r.record_ids()).collect();
    let ids = |r: std::ops::Range<u32>| r.map(|i| format!("0/100:{i}")).collect::<Vec<_>>();
    assert_eq!(
        batches,
        vec![ids(0..3), ids(3..6), ids(6..7), ids(7..8), ids(8..9)]
    );
    w.stop().await;
}

struct Templates;

impl Decorate for Templates {
    fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String> {
        Ok(Decoration {
            headers: vec![
                ("X-Env".into(), "prod".into()),
                ("X-Count".into(), meta.size.to_string()),
            ],
            query: vec![
                ("tenant".into(), "acme & co".into()),
                ("last".into(), meta.last_lsn.to_string()),
            ],
            body: vec![
                ("source".into(), serde_json::json!("erp")),
                ("strategy_of".into(), serde_json::json!(meta.strategy)),
            ],
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_query_and_body_fields_come_from_the_strategy_templates() {
    let rx = Receiver::start().await;
    let w = Setup {
        decorate: Arc::new(Templates),
        ..Setup::default()
    }
    .start(&rx.url("/hook?fixed=1"));
    w.send_tx(vec![rec(0x100, 0), rec(0x100, 1)], Lsn(0x200))
        .await;
    rx.wait_requests(1, WAIT).await;
    let r = &rx.requests()[0];
    assert_eq!(
        r.path_and_query,
        "/hook?fixed=1&tenant=acme+%26+co&last=0%2F100"
    );
    assert_eq!(r.header("x-env"), Some("prod"));
    assert_eq!(r.header("x-count"), Some("2"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("user-agent"),
        Some(concat!("walhook/", env!("CARGO_PKG_VERSION")))
    );
    let body = r.json();
    assert_eq!(r.header("webhook-id"), body["batch"]["id"].as_str());
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() < 60, "webhook-timestamp {ts} vs now {now}");
    assert_eq!(body["source"], "erp");
    assert_eq!(body["strategy_of"], "orders");
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(
        text.starts_with("{\"strategy\":\"orders\",\"batch\":{\"id\":"),
        "{text}"
    );
    assert!(
        text.ends_with("],\"source\":\"erp\",\"strategy_of\":\"orders\"}"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_get_the_same_batch_id_on_redelivery() {
    let rx = Receiver::start().await;
    let records = || (0..3).map(|i| rec(0x100, i)).collect::<Vec<_>>();
    // Two runs over the same records, as after a restart.
    for _ in 0..2 {
        let w = Setup::default().start(&rx.url("/hook"));
        w.send_tx(records(), Lsn(0x200)).await;
        let before = rx.requests().len();
        rx.wait_requests(before + 1, WAIT).await;
        w.stop().await;
    }
    let other = Setup {
        name: "other".into(),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    other.send_tx(records(), Lsn(0x200)).await;
    rx.wait_requests(3, WAIT).await;
    other.stop().await;

    let r = rx.requests();
    let ids: Vec<&str> = r.iter().map(|r| r.header("webhook-id").unwrap()).collect();
    assert_eq!(ids[0], ids[1], "same strategy, same records: same id");
    assert_ne!(ids[0], ids[2], "another strategy: another id");
    assert!(ids[0].starts_with("msg_"));
    assert_eq!(r[0].record_ids(), r[1].record_ids());
    assert_eq!(r[0].json()["batch"]["id"], ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let rx = Receiver::start().await;
    rx.script([Reply::Redirect("/elsewhere".into())]);
    let w = Setup::default().start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    rx.wait_accepted_records(1, WAIT).await;
    let paths: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths,
        ["/hook", "/hook"],
        "the 307 was retried, not followed"
    );
    assert_eq!(rx.requests()[0].answered, 307);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_from_postgres_has_the_documented_fields_and_types() {
    let rx = Receiver::start().await;
    let p = Pipeline::start("dlv_payload", Setup::default(), &rx.url("/hook")).await;
    p.db.psql("INSERT INTO items VALUES (1, 'first'), (2, NULL)")
        .await;
    rx.wait_accepted_records(2, WAIT).await;
    let r = &rx.accepted()[0];
    let v = r.json();
    assert_eq!(v["strategy"], "orders");
    let batch = &v["batch"];
    assert!(batch["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(batch["size"], 2);
    let first_lsn: Lsn = batch["first_lsn"].as_str().unwrap().parse().unwrap();
    let last_lsn: Lsn = batch["last_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(first_lsn, last_lsn, "one transaction");
    let records = v["records"].as_array().unwrap();
    let rec0 = &records[0];
    assert_eq!(rec0["id"], format!("{first_lsn}:0"));
    assert_eq!(records[1]["id"], format!("{first_lsn}:1"));
    assert_eq!(rec0["op"], "insert");
    assert_eq!(rec0["schema"], "public");
    assert_eq!(rec0["table"], "items");
    assert_eq!(rec0["lsn"], first_lsn.to_string());
    assert!(rec0["xid"].is_u64());
    let commit_time = rec0["commit_time"].as_str().unwrap();
    assert!(
        commit_time.ends_with('Z') && commit_time.contains('T'),
        "{commit_time}"
    );
    assert_eq!(rec0["new"], serde_json::json!({"id": 1, "note": "first"}));
    assert_eq!(
        records[1]["new"],
        serde_json::json!({"id": 2, "note": null})
    );
    assert!(rec0["old"].is_null());
    // Delivered, so the slot moves past the transaction.
    wait_until(WAIT, "confirmed_flush_lsn past the batch", || async {
        p.db.confirmed_flush(&p.slot).await.expect("slot") > last_lsn
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_over_500_transactions_arrive_in_commit_order() {
    let rx = Receiver::start().await;
    let p = Pipeline::start("dlv_order", Setup::default(), &rx.url("/hook")).await;
    p.db.psql(
        "DO $$ BEGIN
           FOR t IN 0..499 LOOP
             INSERT INTO items SELECT t * 20 + g, 'n' FROM generate_series(0, 19) g;
             COMMIT;
           END LOOP;
         END $$;",
    )
    .await;
    rx.wait_accepted_records(10_000, Duration::from_secs(120))
        .await;
    let mut row_ids = Vec::with_capacity(10_000);
    let mut keys: Vec<(Lsn, u32)> = Vec::with_capacity(10_000);
    for request in rx.accepted() {
        for r in request.json()["records"].as_array().unwrap() {
            row_ids.push(r["new"]["id"].as_i64().unwrap());
            let (lsn, index) = r["id"].as_str().unwrap().split_once(':').unwrap();
            keys.push((lsn.parse().unwrap(), index.parse().unwrap()));
        }
    }
    assert_eq!(
        row_ids,
        (0..10_000).collect::<Vec<i64>>(),
        "no gaps, no reordering"
    );
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "record ids increase");
    let transactions = keys
        .iter()
        .map(|k| k.0)
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(transactions.len(), 500);
    let last = keys.last().unwrap().0;
    wait_until(
        WAIT,
        "confirmed_flush_lsn past the last transaction",
        || async { p.db.confirmed_flush(&p.slot).await.expect("slot") > last },
    )
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_strategy_sends_nothing_until_resumed() {
    let rx = Receiver::start().await;
    let w = Setup::default().start(&rx.url("/hook"));
    let pause = w.pause.clone();
    pause.pause();
    wait_until(WAIT, "/status to show the pause", || async {
        w.status.snapshot().paused
    })
    .await;
    w.send_tx(vec![rec(0x100, 0)], Lsn(0x200)).await;
    w.send_tx(vec![rec(0x300, 0)], Lsn(0x400)).await;
    wait_until(WAIT, "both records in the queue", || async {
        w.status.snapshot().queue_records == 2
    })
    .await;
    // Checking that nothing happens needs some time: 10 lingers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.arrivals(), 0, "nothing sent while paused");
    assert_eq!(w.checkpoint.acked(), Lsn(0));
    pause.resume();
    rx.wait_accepted_records(2, WAIT).await;
    assert_eq!(rx.accepted_record_ids(), ["0/100:0", "0/300:0"]);
    wait_until(WAIT, "the checkpoint", || async {
        w.checkpoint.acked() == Lsn(0x400)
    })
    .await;
    w.stop().await;
}
