//! `walhook run` end to end when the receiver fails or walhook dies:
//! retries with backoff, Retry-After, dead letters, the slot's confirmed
//! position while a batch is undelivered, and redelivery after kill -9.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use walhook::lsn::Lsn;

use crate::support::walhook::base_config;
use crate::support::{fresh_db, wait_until, Db, Received, Receiver, Reply, Walhook, WAIT};

fn config(url: &str, slot: &str, receiver: &Receiver, retry: &str, strategy: &str) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\nretry = {{ {retry} }}\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\n{strategy}\n",
        base_config(url, slot, slot),
        receiver.url("/hook"),
    )
}

async fn orders(prefix: &str) -> (String, Db) {
    let db = fresh_db(prefix).await;
    db.psql("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        .await;
    (db.url(), db)
}

/// Each delay is random in [initial * 2^(n-1), twice that] (capped at
/// `max`), so every run shows the delays growing from `initial`. The
/// distribution and the sequence on paused time are unit-tested in
/// delivery::retry.
#[tokio::test]
async fn five_500s_are_retried_with_backoff_then_delivered_and_the_slot_waits_for_it() {
    let (url, db) = orders("pipe_500").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(5, 500);
    let config = config(
        &url,
        "pipe_500",
        &receiver,
        "initial = \"100ms\", max = \"2s\"",
        "batch_size = 1\nlinger = \"5ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_500").await;
    let before = db.current_wal_lsn().await;
    db.psql("INSERT INTO orders VALUES (1, 'first'); INSERT INTO orders VALUES (2, 'second');")
        .await;

    // While nothing is accepted, sample the slot's confirmed position; read
    // it before looking at the receiver, so a sample never postdates a 200.
    let samples = RefCell::new(Vec::new());
    wait_until(WAIT, "the first accepted request", || async {
        let flushed = db.confirmed_flush("pipe_500").await.expect("slot");
        let failing = receiver.accepted().is_empty();
        if failing {
            samples.borrow_mut().push(flushed);
        }
        !failing
    })
    .await;
    let samples = samples.into_inner();
    receiver.wait_accepted_records(2, WAIT).await;
    let requests = receiver.requests();
    assert_eq!(
        requests.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![500, 500, 500, 500, 500, 200, 200],
        "five failures, then the first batch, then the second"
    );
    // The same batch every time, in order, nothing lost.
    let first_id = requests[0].header("webhook-id").expect("webhook-id");
    for request in &requests[..6] {
        assert_eq!(request.header("webhook-id"), Some(first_id));
        assert_eq!(request.new_ids(), vec![1]);
    }
    assert_eq!(requests[6].new_ids(), vec![2]);

    // Never acknowledged past the undelivered batch's commit while failing.
    let commit: Lsn = requests[0].json()["records"][0]["lsn"]
        .as_str()
        .expect("lsn")
        .parse()
        .expect("an LSN");
    assert!(commit > before);
    assert!(!samples.is_empty(), "no sample taken while failing");
    for sample in &samples {
        assert!(
            *sample <= commit,
            "confirmed_flush_lsn {sample} passed the undelivered commit {commit}"
        );
    }
    // Once delivered, it moves past it.
    db.wait_confirmed("pipe_500", Lsn(commit.0 + 1)).await;

    // Backoff: delay n is at least initial * 2^(n-1) (never sooner than
    // `initial`) and at most twice that, capped at max = 2 s; 500 ms of
    // slack above for a loaded machine.
    let floors = [100u64, 200, 400, 800, 1600];
    let ceilings = floors.map(|f| (2 * f).min(2000));
    for (n, pair) in requests[..6].windows(2).enumerate() {
        let gap = pair[1].at.duration_since(pair[0].at);
        eprintln!("delay after failure {}: {gap:?}", n + 1);
        assert!(
            gap >= Duration::from_millis(floors[n]),
            "delay after failure {} was {gap:?}, under its floor {} ms",
            n + 1,
            floors[n]
        );
        assert!(
            gap <= Duration::from_millis(ceilings[n] + 500),
            "delay after failure {} was {gap:?}, over its ceiling {} ms",
            n + 1,
            ceilings[n]
        );
    }
    walhook.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_2_delays_the_next_attempt_by_at_least_2_s() {
    let (url, db) = orders("pipe_429").await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::RetryAfter(429, "2".into())]);
    let config = config(
        &url,
        "pipe_429",
        &receiver,
        "initial = \"100ms\", max = \"2s\"",
        "",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_429").await;
    db.psql("INSERT INTO orders VALUES (1, 'x')").await;
    receiver.wait_accepted_records(1, WAIT).await;
    let requests = receiver.requests();
    assert_eq!(
        requests.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![429, 200]
    );
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "retried {gap:?} after a Retry-After: 2"
    );
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    walhook.stop().await;
}

#[tokio::test]
async fn an_exhausted_batch_becomes_a_dead_letter_and_later_batches_flow() {
    let (url, db) = orders("pipe_dead").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(2, 500);
    let config = config(
        &url,
        "pipe_dead",
        &receiver,
        "max_attempts = 2, initial = \"100ms\", max = \"1s\", on_exhausted = \"dead_letter\"",
        "batch_size = 1\nlinger = \"5ms\"",
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_dead").await;
    db.psql(
        "INSERT INTO orders VALUES (1, 'lost?'); INSERT INTO orders VALUES (2, 'next');
         INSERT INTO orders VALUES (3, 'after');",
    )
    .await;
    let end = db.current_wal_lsn().await;
    receiver.wait_accepted_records(2, WAIT).await;
    db.wait_confirmed("pipe_dead", end).await;
    let requests = receiver.requests();
    assert_eq!(
        requests.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![500, 500, 200, 200]
    );
    let accepted: Vec<i64> = receiver
        .accepted()
        .iter()
        .flat_map(Received::new_ids)
        .collect();
    assert_eq!(accepted, vec![2, 3]);
    let letter = db
        .psql(
            "SELECT strategy || '|' || batch_id || '|' || attempts || '|' || last_status || '|' || \
         (payload -> 'records' -> 0 -> 'new' ->> 'id') || '|' || first_lsn \
         FROM walhook.dead_letters",
        )
        .await;
    let dead_first_lsn = requests[0].json()["records"][0]["lsn"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        letter,
        format!(
            "orders|{}|2|500|1|{dead_first_lsn}",
            requests[0].header("webhook-id").unwrap()
        )
    );
    walhook.stop().await;
}

/// Checks one receiver after the restart: every row at least once, and every
/// record delivered again came in a batch with the same webhook-id, batch id
/// and record ids as its first delivery. Returns the number of duplicates.
fn check_redeliveries(receiver: &Receiver, rows: i64) -> usize {
    let mut seen: Vec<i64> = receiver
        .accepted()
        .iter()
        .flat_map(Received::new_ids)
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=rows).collect::<Vec<_>>(), "a row was lost");

    let mut first: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut duplicates = 0;
    for request in &receiver.requests() {
        let webhook_id = request
            .header("webhook-id")
            .expect("webhook-id")
            .to_string();
        let ids = request.record_ids();
        assert_eq!(
            request.json()["batch"]["id"].as_str(),
            Some(webhook_id.as_str())
        );
        for id in &ids {
            match first.get(id) {
                None => {
                    first.insert(id.clone(), (webhook_id.clone(), ids.clone()));
                }
                Some((first_webhook_id, first_ids)) => {
                    duplicates += 1;
                    assert_eq!(
                        (&webhook_id, &ids),
                        (first_webhook_id, first_ids),
                        "record {id} redelivered in a different batch"
                    );
                }
            }
        }
    }
    duplicates
}

/// kill -9 while a slow receiver holds a batch, then a restart on the same
/// slot. Two strategies on one table: "fast" has delivered everything, but
/// the acknowledged position is the minimum over strategies, held back by
/// "slow"; so Postgres streams again what "fast" delivered after that point
/// and redelivery is certain, not a race. walhook re-forms the batches it had
/// sent with the same boundaries, so they carry the same ids.
#[tokio::test]
async fn after_kill_9_and_a_restart_every_row_arrives_and_duplicates_repeat_their_ids() {
    const ROWS: i64 = 100;
    let (url, db) = orders("pipe_kill").await;
    let fast = Receiver::start().await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_millis(800));
    let config = format!(
        "{}[endpoints.fast]\nurl = \"{}\"\n\n[endpoints.slow]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"fast\"\ntable = \"orders\"\nendpoint = \"fast\"\n\
         on_insert = \"true\"\nbatch_size = 5\nlinger = \"50ms\"\n\n\
         [[strategies]]\nname = \"slow\"\ntable = \"orders\"\nendpoint = \"slow\"\n\
         on_insert = \"true\"\nbatch_size = 5\nlinger = \"50ms\"\n",
        base_config(&url, "pipe_kill", "pipe_kill"),
        fast.url("/fast"),
        slow.url("/slow"),
    );
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "pipe_kill").await;
    // 20 transactions of 5 rows.
    let writes: String = (0..ROWS / 5)
        .map(|t| {
            format!(
                "INSERT INTO orders SELECT i, 'r' FROM generate_series({}, {}) i;\n",
                t * 5 + 1,
                t * 5 + 5
            )
        })
        .collect();
    db.psql(&writes).await;
    let end = db.current_wal_lsn().await;
    // "fast" has everything; "slow" has some and holds one batch: kill then.
    wait_until(
        WAIT,
        "fast done, slow with 2 accepted and one in flight",
        || async {
            fast.accepted_record_ids().len() >= ROWS as usize
                && slow.accepted().len() >= 2
                && slow.arrivals() > slow.requests().len()
        },
    )
    .await;
    walhook.kill9().await;
    let fast_before = fast.requests().len();
    let slow_before = slow.accepted().len();
    slow.set_delay(Duration::ZERO);

    let walhook = Walhook::run(&config).spawn();
    db.wait_confirmed("pipe_kill", end).await;

    let fast_duplicates = check_redeliveries(&fast, ROWS);
    let slow_duplicates = check_redeliveries(&slow, ROWS);
    eprintln!(
        "fast: {fast_before} requests before the kill, {} after, {fast_duplicates} duplicate records; \
         slow: {slow_before} accepted before, {slow_duplicates} duplicate records",
        fast.requests().len() - fast_before
    );
    assert!(
        fast_duplicates >= 1,
        "nothing was redelivered to fast although slow held the acknowledged position"
    );
    walhook.stop().await;
}
